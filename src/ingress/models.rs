//! `GET /v1/models`: the models this deployment serves, as OpenAI lists its own, so an
//! SDK's `client.models.list()` works: every model a backend names, and every alias.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::ErrorBody;
use super::error::AppError;
use super::state::IngressState;

/// OpenAI's list of models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Model>,
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    /// The name to put in a request's `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds; sluice does not know when a model was made: 0.
    pub created: u64,
    /// Always `sluice`.
    pub owned_by: String,
}

/// The served models. Models a backend serves by pattern only (`llama-3-*`, or `*`) are
/// not listed: a pattern names no model.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "Every model served by name, and every alias", body = ModelList),
        (status = 401, description = "No valid API key (ingress.auth on)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<IngressState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, AppError> {
    state.tenants.identify(&headers)?;
    let data = state
        .routes
        .models()
        .into_iter()
        .map(|id| Model {
            id,
            object: "model".into(),
            created: 0,
            owned_by: "sluice".into(),
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}
