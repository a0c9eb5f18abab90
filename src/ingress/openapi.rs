//! `GET /openapi.json`: the OpenAPI 3.1 document of the ingress, generated from the
//! route handlers' annotations and the API's Rust types ([`super::api`]).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api;
use crate::envelope;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluice ingress",
        description = "Kafka-backed peak shaving for LLM calls: requests go through Kafka to \
                       workers that pace the backend; results come back through the reply topic.",
    ),
    paths(
        super::chat::completions,
        super::requests::submit_request,
        super::requests::get_request,
        super::batch::submit,
        super::models::list,
        crate::admin::healthz,
        crate::admin::readyz,
        crate::admin::metrics,
        super::status::page,
        super::status::json,
        serve,
    ),
    components(schemas(
        api::ErrorBody,
        api::ErrorDetail,
        api::Accepted,
        api::RequestStatus,
        api::Submission,
        api::ChatCompletionRequest,
        api::BatchRequest,
        api::BatchResponse,
        api::BatchResult,
        envelope::Reply,
        envelope::ReplyError,
        envelope::Usage,
        envelope::Timing,
        envelope::Status,
        envelope::ServedBy,
        super::models::ModelList,
        super::models::Model,
        super::status::StatusBody,
        super::status::TopicQueued,
    )),
    modifiers(&BearerKeys),
    security((), ("api_key" = [])),
)]
pub(crate) struct ApiDoc;

/// `Authorization: Bearer <key>`, required when `ingress.auth` is on.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
