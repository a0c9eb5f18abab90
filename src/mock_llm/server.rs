//! The mock's HTTP routes: OpenAI's `POST /v1/chat/completions` and `GET /v1/models`, plus
//! the shared `/healthz`, `/readyz` and `/metrics`, and `POST /admin/slots` (benchmarks
//! change the capacity at run time, as another tenant taking slots would). A chat request holds a capacity slot for
//! its whole service time; bad input gets a 400 and overload a 429 with Retry-After, both in
//! OpenAI's error shape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::capacity::{CapacityModel, Overloaded};
use super::completion::{Reply, TokenLimits, DEFAULT_MODEL};
use super::metrics::MockMetrics;
use super::request::{ChatRequest, InvalidRequest};
use super::stream::{self, Pace};
use super::MockLlmArgs;
use crate::admin::{self, AdminState, Readiness};

/// `retry-after-ms`: the retry delay in milliseconds, as OpenAI sends it next to `Retry-After`.
pub(crate) const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// What the routes share: the capacity model, the settings and the metrics. Cheap to clone.
#[derive(Clone)]
pub struct MockState(Arc<Inner>);

struct Inner {
    args: MockLlmArgs,
    capacity: Arc<CapacityModel>,
    limits: TokenLimits,
    pace: Pace,
    metrics: MockMetrics,
    registry: Arc<Registry>,
    /// Numbers the `chatcmpl-<n>` ids, from 1, for the life of the server.
    next_id: AtomicU64,
}

impl MockState {
    /// A fresh mock backend: idle slots, zeroed metrics.
    pub fn new(args: &MockLlmArgs) -> Self {
        let capacity = Arc::new(CapacityModel::new(args.capacity_settings()));
        let (metrics, registry) = MockMetrics::new(Arc::clone(&capacity));
        let pace = Pace {
            latency: capacity.settings().latency,
            per_token: capacity.settings().per_token,
        };
        Self(Arc::new(Inner {
            args: args.clone(),
            capacity,
            limits: args.token_limits(),
            pace,
            metrics,
            registry: Arc::new(registry),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn args(&self) -> &MockLlmArgs {
        &self.0.args
    }

    /// The capacity model, for reading its stats in-process.
    pub fn capacity(&self) -> &Arc<CapacityModel> {
        &self.0.capacity
    }

    /// The `sluice_mock_*` metrics registry served on `/metrics`.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.0.registry
    }

    fn plan(&self, request: &ChatRequest) -> Reply {
        let seq = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Reply::plan(request, self.0.limits, seq, created)
    }
}

/// The mock's router; serve it with `axum::serve`.
pub fn app(state: MockState) -> Router {
    let ready = Readiness::default();
    ready.set(true);
    let admin = admin::routes(AdminState {
        registry: Arc::clone(state.registry()),
        ready,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/admin/slots", post(set_slots))
        .with_state(state)
        .merge(admin)
}

async fn chat_completions(
    State(state): State<MockState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tally = state.0.metrics.begin();
    let request = match ChatRequest::parse(&body) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(param = ?error.param, %error, "chat completion refused: invalid");
            tally.invalid();
            return Err(error.into());
        }
    };
    let reply = state.plan(&request);
    if let Some(context) = state.args().context_tokens {
        if reply.prompt_tokens > context {
            tally.invalid();
            return Err(InvalidRequest {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, your \
                     messages resulted in {} tokens. Please reduce the length of the messages.",
                    reply.prompt_tokens
                ),
                param: Some("messages".into()),
            }
            .into());
        }
    }
    let slot = match state.0.capacity.admit().await {
        Ok(slot) => slot,
        Err(overloaded) => {
            tracing::debug!(id = %reply.id, "chat completion refused: every slot is busy");
            tally.rejected();
            return Err(overloaded.into());
        }
    };
    tracing::debug!(
        id = %reply.id,
        model = %reply.model,
        stream = request.stream,
        prompt_tokens = reply.prompt_tokens,
        completion_tokens = reply.completion_tokens,
        "chat completion admitted"
    );
    if request.stream {
        return Ok(stream::respond(reply, slot, tally, state.0.pace).into_response());
    }
    tokio::time::sleep(state.0.capacity.service_time(reply.completion_tokens)).await;
    drop(slot);
    tally.ok(reply.completion_tokens);
    Ok(Json(reply.completion()).into_response())
}

/// `POST /admin/slots {"slots": N}`: the capacity from now on (at least 1).
async fn set_slots(State(state): State<MockState>, body: Bytes) -> Response {
    let slots = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["slots"].as_u64())
        .filter(|&n| n >= 1);
    match slots {
        Some(slots) => {
            state.capacity().set_slots(slots as usize);
            tracing::info!(slots, "slots changed");
            Json(json!({ "slots": state.capacity().stats().slots })).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            Json(error_body(
                "expected {\"slots\": N} with N at least 1",
                "invalid_request_error",
                Some("slots"),
                None,
            )),
        )
            .into_response(),
    }
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "sluice"}],
    }))
}

/// Every refusal of a chat request, answered in OpenAI's error shape.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400 `invalid_request_error`.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// 429 `rate_limit_exceeded` with `retry-after-ms` and `Retry-After` (whole seconds,
    /// rounded up).
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Invalid(error) => {
                let body = error_body(
                    &error.message,
                    "invalid_request_error",
                    error.param.as_deref(),
                    None,
                );
                (StatusCode::BAD_REQUEST, Json(body)).into_response()
            }
            Self::Overloaded(overloaded) => {
                let ms = overloaded.retry_after.as_millis();
                let message = format!(
                    "Rate limit reached: all {} slots of the mock backend are busy. \
                     Please try again in {ms}ms.",
                    overloaded.slots
                );
                let headers = [
                    (RETRY_AFTER_MS, ms.to_string()),
                    (
                        axum::http::header::RETRY_AFTER,
                        ms.div_ceil(1000).to_string(),
                    ),
                ];
                let body = error_body(&message, "requests", None, Some("rate_limit_exceeded"));
                (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
            }
        }
    }
}

fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[cfg(test)]
mod tests;
