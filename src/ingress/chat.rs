//! `POST /v1/chat/completions`, the OpenAI-compatible front door: the request goes
//! through Kafka like any other (acks=all), the route waits for its final reply (woken
//! by the reply reader, no polling) and answers as the backend would, or relays the
//! stream ([`super::stream`]). Every answer carries `x-request-id`, the sluice id, so a
//! client that stopped waiting can still fetch the result with `GET /v1/requests/{id}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::api::{ChatCompletionRequest, ErrorBody};
use super::enqueue::{self, Then};
use super::error::AppError;
use super::metrics::CompletionLabel;
use super::openai::{openai_error, reply_response};
use super::state::IngressState;
use super::submit::{self, SubmitBody};
use super::waiters::{ReplyEvent, Waiter};
use crate::envelope;
use crate::telemetry::semconv;

/// Per-request wait, in milliseconds (overrides `ingress.sync_timeout_ms`).
pub(crate) const TIMEOUT_HEADER: &str = "x-sluice-timeout-ms";
/// Priority lane of the request (one of `kafka.lanes`).
pub(crate) const LANE_HEADER: &str = "x-sluice-lane";
/// Requests with the same ordering key are processed in order.
pub(crate) const ORDERING_KEY_HEADER: &str = "x-sluice-ordering-key";
/// `off`: the request is served only by the model it names, never by its fallback chain.
pub(crate) const FALLBACK_HEADER: &str = "x-sluice-fallback";
/// The sluice id of the request, on every answer.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The route. Its span ([`super::traced`]) and metric cover the answer's head; a stream
/// goes on after.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = ChatCompletionRequest,
    params(
        ("x-sluice-timeout-ms" = Option<u64>, Header, minimum = 1000, maximum = 86_400_000,
         description = "How long to wait for the reply, 1 s to 1 day (default ingress.sync_timeout_ms); also the request's deadline"),
        ("x-sluice-lane" = Option<String>, Header, description = "Priority lane"),
        ("x-sluice-ordering-key" = Option<String>, Header, description = "Requests with the same key are processed in order"),
        ("x-sluice-fallback" = Option<String>, Header, description = "`off`: served only by the model named, never by its fallback chain ([models.fallbacks]); `on` (the default): the chain applies"),
    ),
    responses(
        (status = 200, description = "The backend's completion, or with `stream: true` its chunks as server-sent events ending in `data: [DONE]`",
         headers(("x-request-id" = String, description = "The sluice id: GET /v1/requests/{id}"),
                 ("x-sluice-backend" = String, description = "The backend that answered, by its configured name (not on a stream: its head comes before the call ends)")),
         content((Object = "application/json"), (serde_json::Value = "text/event-stream"))),
        (status = 400, description = "Malformed request, or the backend's 400", body = ErrorBody),
        (status = 401, description = "No valid API key (ingress.auth on), or the backend's 401", body = ErrorBody),
        (status = 404, description = "No backend serves the model (`model_not_found`), or the backend's 404", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "The backend's 422", body = ErrorBody),
        (status = 429, description = "The tenant is over a limit, or the backend's 429 after retries", body = ErrorBody),
        (status = 502, description = "The backend failed without a status", body = ErrorBody),
        (status = 503, description = "Kafka did not take it, or its deadline ends before its expected turn", body = ErrorBody),
        (status = 504, description = "No reply within the wait, or it expired", body = ErrorBody),
    ))]
pub async fn completions(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (id, streamed, result) = answer(&state, &headers, body).await;
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            semconv::record_error(&tracing::Span::current(), e.kind());
            e.into_response()
        }
    };
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    state
        .metrics
        .completions
        .get_or_create(&CompletionLabel {
            status: response.status().as_u16().to_string(),
            stream: streamed.to_string(),
        })
        .inc();
    response
}

/// The request id once known, whether the caller asked for a stream, and the answer.
async fn answer(
    state: &IngressState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (Option<String>, bool, Result<Response, AppError>) {
    let config = &state.config;
    let tenant = match state.tenants.identify(headers) {
        Ok(tenant) => tenant,
        Err(e) => return (None, false, Err(e)),
    };
    let parsed = submit::json_body(config, headers, body).and_then(|bytes| {
        let options = CallOptions::from_headers(headers, config.ingress.sync_timeout_ms)?;
        parse(
            &bytes,
            config,
            options,
            tenant.as_ref().map(|t| t.name.to_string()),
        )
    });
    let (request, wait) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return (None, false, Err(e)),
    };
    let id = request.id.clone();
    let streamed = request.body.get("stream") == Some(&Value::Bool(true));
    tracing::Span::current().record("request_id", id.as_str());
    let enqueued = match enqueue::accept(state, tenant.as_deref(), request, Then::Wait).await {
        Ok(enqueued) => enqueued,
        Err(e) => return (Some(id), streamed, Err(e)),
    };
    let waiter = enqueued
        .waiter
        .expect("enqueue::accept registers a waiter for Then::Wait");
    let wait_until = Instant::now() + wait;
    let mut response = if streamed {
        let keepalive = Duration::from_millis(config.ingress.stream_keepalive_ms);
        let first_chunk = state.metrics.first_chunk_seconds.clone();
        super::stream::respond(waiter, wait_until, keepalive, first_chunk).await
    } else {
        wait_for_final(waiter, wait_until, wait).await
    };
    enqueued.quota.apply(response.headers_mut());
    (Some(id), streamed, Ok(response))
}

/// What the headers say about the call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOptions {
    pub wait: Duration,
    pub lane: Option<String>,
    pub ordering_key: Option<String>,
    /// `Some(false)` from `x-sluice-fallback: off`.
    pub fallback: Option<bool>,
}

impl CallOptions {
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        default_wait_ms: u64,
    ) -> Result<Self, AppError> {
        let text = |name: &str| -> Result<Option<String>, AppError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str().map(str::to_string).map_err(|_| {
                        AppError::BadRequest(format!("header {name} is not visible ASCII"))
                    })
                })
                .transpose()
        };
        let wait_ms = match text(TIMEOUT_HEADER)? {
            None => default_wait_ms,
            Some(value) => match value.trim().parse::<u64>() {
                Ok(ms) if (MIN_WAIT_MS..=MAX_WAIT_MS).contains(&ms) => ms,
                _ => {
                    return Err(AppError::BadRequest(format!(
                        "header {TIMEOUT_HEADER} must be a whole number of milliseconds, \
                         {MIN_WAIT_MS} to {MAX_WAIT_MS}; got {value:?}"
                    )))
                }
            },
        };
        let fallback = match text(FALLBACK_HEADER)?.map(|v| v.trim().to_ascii_lowercase()) {
            None => None,
            Some(v) if v == "on" => Some(true),
            Some(v) if v == "off" => Some(false),
            Some(v) => {
                return Err(AppError::BadRequest(format!(
                    "header {FALLBACK_HEADER} must be `on` or `off`; got {v:?}"
                )))
            }
        };
        Ok(Self {
            wait: Duration::from_millis(wait_ms),
            lane: text(LANE_HEADER)?,
            ordering_key: text(ORDERING_KEY_HEADER)?,
            fallback,
        })
    }
}

/// The shortest wait a header may ask for: one second (less is no time for a round
/// trip through Kafka and an LLM).
const MIN_WAIT_MS: u64 = 1000;
/// The longest wait a header may ask for: one day.
const MAX_WAIT_MS: u64 = 24 * 60 * 60 * 1000;

/// Checks an OpenAI chat request and makes it the envelope written to Kafka. The wait
/// is also the deadline, so work nobody waits for any more never reaches the backend.
pub fn parse(
    bytes: &[u8],
    config: &crate::config::Config,
    options: CallOptions,
    tenant: Option<String>,
) -> Result<(envelope::Request, Duration), AppError> {
    let body: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
        AppError::BadRequest(match e.classify() {
            serde_json::error::Category::Data => {
                "the request body must be a JSON object: an OpenAI chat.completions request"
                    .to_string()
            }
            _ => format!("request body is not valid JSON: {e}"),
        })
    })?;
    // The documented shape ([`ChatCompletionRequest`]) first; the envelope keeps the
    // body as it came.
    serde_json::from_value::<ChatCompletionRequest>(Value::Object(body.clone()))
        .map_err(|e| AppError::BadRequest(format!("invalid chat completions request: {e}")))?;
    let deadline_ms = envelope::now_ms() + options.wait.as_millis() as u64;
    let submit = SubmitBody {
        id: None,
        body,
        deadline_ms: Some(deadline_ms),
        lane: options.lane,
        ordering_key: options.ordering_key,
        reply_to: None,
        metadata: None,
        fallback: options.fallback,
        tenant: None,
    };
    Ok((submit::into_request(submit, config, tenant)?, options.wait))
}

/// Waits for the final reply (chunks are not asked for) and answers with it.
async fn wait_for_final(mut waiter: Waiter, until: Instant, wait: Duration) -> Response {
    loop {
        match tokio::time::timeout_at(until, waiter.next()).await {
            Ok(Some(ReplyEvent::Final(reply))) => return reply_response(&reply),
            Ok(Some(ReplyEvent::Chunk(_))) => continue,
            Ok(None) | Err(_) => return not_answered(waiter.id(), wait),
        }
    }
}

/// The answer for a wait that ran out: the request may still be served (the deadline
/// is the same moment, so it will not start later).
fn not_answered(id: &str, wait: Duration) -> Response {
    openai_error(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "no reply within {} ms; the request (id {id}) may still finish: \
             GET /v1/requests/{id}",
            wait.as_millis()
        ),
        "timeout",
        "sync_timeout",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_set_the_wait_lane_and_ordering_key() {
        let mut headers = HeaderMap::new();
        let defaults = CallOptions::from_headers(&headers, 5000).unwrap();
        assert_eq!(defaults.wait, Duration::from_millis(5000));
        assert_eq!((defaults.lane, defaults.ordering_key), (None, None));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("2500"));
        headers.insert(LANE_HEADER, HeaderValue::from_static("interactive"));
        headers.insert(ORDERING_KEY_HEADER, HeaderValue::from_static("conv-1"));
        let given = CallOptions::from_headers(&headers, 5000).unwrap();
        assert_eq!(given.wait, Duration::from_millis(2500));
        assert_eq!(given.lane.as_deref(), Some("interactive"));
        assert_eq!(given.ordering_key.as_deref(), Some("conv-1"));
        for bad in ["0", "999", "soon", "-5", "99999999999"] {
            headers.insert(TIMEOUT_HEADER, HeaderValue::from_static(bad));
            let e = CallOptions::from_headers(&headers, 5000).unwrap_err();
            assert!(e.to_string().contains(TIMEOUT_HEADER), "{bad}: {e}");
        }
    }

    #[test]
    fn the_wait_becomes_the_deadline() {
        let config = crate::config::Config::default();
        let options = CallOptions {
            wait: Duration::from_secs(30),
            lane: None,
            ordering_key: None,
            fallback: Some(false),
        };
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let (request, wait) = parse(body, &config, options.clone(), None).unwrap();
        let deadline = request.deadline_ms.unwrap();
        let expected = envelope::now_ms() + 30_000;
        assert!(
            deadline.abs_diff(expected) < 1000,
            "{deadline} vs {expected}"
        );
        assert_eq!(wait, Duration::from_secs(30));
        assert_eq!(request.body["stream"], json!(true));
        for (bad, says) in [
            (&b"[1]"[..], "must be a JSON object"),
            (b"{", "not valid JSON"),
            (br#"{"model":"m"}"#, "missing field `messages`"),
            (
                br#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                br#"{"messages":["hi"]}"#,
                "invalid type: string \"hi\", expected a map",
            ),
            (br#"{"messages":[]}"#, "must not be empty"),
        ] {
            let e = parse(bad, &config, options.clone(), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
