//! `POST /v1/requests` and `GET /v1/requests/{id}`: a request handed over for later
//! (`202` once Kafka acknowledged it, through [`super::enqueue`]) and its status, then
//! its reply, from the reply cache.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{Accepted, ErrorBody, RequestStatus, Submission};
use super::cache::Entry;
use super::enqueue::{self, Then};
use super::error::AppError;
use super::metrics::StatusLabel;
use super::state::IngressState;
use super::submit;
use crate::telemetry::semconv;

/// Enqueue a request: `202` once Kafka acknowledged it (acks=all).
#[utoipa::path(post, path = "/v1/requests", tag = "requests", request_body = Submission,
    responses(
        (status = 202, description = "In Kafka; its result will be at GET /v1/requests/{id}", body = Accepted),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "No valid API key (ingress.auth on)", body = ErrorBody),
        (status = 409, description = "The id was used for another request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "The tenant is over a limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "Kafka did not take it, or its deadline ends before its expected turn; see Retry-After", body = ErrorBody),
    ))]
pub(crate) async fn submit_request(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = submit_one(&state, &headers, body).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => {
            semconv::record_error(&tracing::Span::current(), e.kind());
            if e.status().is_client_error() {
                tracing::debug!(status = e.status().as_u16(), error = %e, "submission refused");
            }
            e.status()
        }
    };
    state
        .metrics
        .submissions
        .get_or_create(&StatusLabel {
            status: status.as_u16().to_string(),
        })
        .inc();
    result.into_response()
}

async fn submit_one(
    state: &IngressState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let config = &state.config;
    let tenant = state.tenants.identify(headers)?;
    let bytes = submit::json_body(config, headers, body)?;
    let request = submit::parse(&bytes, config, tenant.as_ref().map(|t| t.name.to_string()))?;
    tracing::Span::current().record("request_id", request.id.as_str());
    let enqueued = enqueue::accept(state, tenant.as_deref(), request, Then::Poll).await?;
    let mut response = (StatusCode::ACCEPTED, Json(enqueued.body)).into_response();
    enqueued.quota.apply(response.headers_mut());
    Ok(response)
}

/// A request's status, and its reply once finished.
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 200, description = "Queued, or finished with its reply", body = RequestStatus),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No valid API key (ingress.auth on)", body = ErrorBody),
        (status = 404, description = "Not known here (or another tenant's), or its reply goes to another topic", body = ErrorBody),
    ))]
pub async fn get_request(
    State(state): State<IngressState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RequestStatus>, AppError> {
    let tenant = state.tenants.identify(&headers)?;
    let Path(id) =
        id.map_err(|e| AppError::BadRequest(format!("invalid request id in the path: {e}")))?;
    let known = state.cache.lookup(&id).filter(|known| {
        // With auth on, another tenant's request is as unknown as no request.
        !state.tenants.auth() || known.tenant.as_deref() == tenant.as_ref().map(|t| &*t.name)
    });
    match known.map(|known| known.entry) {
        Some(Entry::Elsewhere(topic)) => Err(AppError::NotTracked {
            id,
            topic: topic.to_string(),
        }),
        Some(entry) => Ok(Json(status_body(&id, &entry))),
        None => Err(AppError::NotFound(id)),
    }
}

/// `{id, status}` for a queued request, `{id, status, reply}` for a finished one.
fn status_body(id: &str, entry: &Entry) -> RequestStatus {
    let reply = match entry {
        Entry::Queued | Entry::Elsewhere(_) => None,
        Entry::Final(reply) => Some(reply.as_ref().clone()),
    };
    RequestStatus {
        id: id.to_string(),
        status: reply
            .as_ref()
            .map_or("queued", |r| r.status.as_str())
            .to_string(),
        reply,
    }
}
