//! The HTTP routes of the ingress: enqueue (`POST /v1/requests`) and results
//! (`GET /v1/requests/{id}`), plus the admin routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

use super::admission::Admission;
use super::api::{Accepted, ErrorBody, RequestStatus, Submission};
use super::cache::{Entry, ReplyCache};
use super::error::AppError;
use super::group_watch::GroupWatch;
use super::metrics::{IngressMetrics, StatusLabel};
use super::submit;
use super::tenants::{Quota, Tenant, Tenants};
use super::waiters::Waiters;
use super::{batch, chat};
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::envelope::{headers, Request};
use crate::kafka::producer::{is_too_large, Outgoing, Producer};
use crate::telemetry::semconv;

/// Everything a route needs; cheap to clone.
#[derive(Clone)]
pub struct IngressState {
    pub config: Arc<Config>,
    pub producer: Producer,
    pub cache: Arc<ReplyCache>,
    pub waiters: Arc<Waiters>,
    pub tenants: Arc<Tenants>,
    pub admission: Arc<Admission>,
    /// The workers' view of each backend, from the control topic (status page).
    pub group: Arc<GroupWatch>,
    pub metrics: IngressMetrics,
}

/// The ingress router: API routes plus `/healthz`, `/readyz`, `/metrics`, with CORS and
/// gzip when configured.
pub fn app(state: IngressState, admin: AdminState) -> Router {
    let config = state.config.clone();
    let limit = config.ingress.max_body_bytes;
    let mut router = Router::new()
        .route("/v1/requests", post(submit_request))
        .route("/v1/requests:batch", post(batch::submit))
        // Under `/v1` as an SDK's `base_url` of `.../v1` implies, and without it.
        .route("/v1/chat/completions", post(chat::completions))
        .route("/chat/completions", post(chat::completions))
        // A trace per request, not per poll of its status: only the routes above.
        .route_layer(axum::middleware::from_fn(super::traced::span))
        .route("/v1/requests/{id}", get(get_request))
        .route("/openapi.json", get(super::openapi::serve))
        .route("/status", get(super::status::page))
        .route("/status.json", get(super::status::json))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(admin::routes(admin))
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed });
    if let Some(cors) = cors(&config.ingress.cors_allowed_origins) {
        router = router.layer(cors);
    }
    if config.ingress.gzip {
        // tower-http's default predicate leaves server-sent events and tiny bodies alone.
        router = router.layer(CompressionLayer::new().gzip(true));
    }
    router
}

/// CORS for `origins` (`*`: any); `None` when there are none.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::any())
            .max_age(Duration::from_secs(600)),
    )
}

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
pub async fn submit_request(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = enqueue(&state, &headers, body).await;
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

async fn enqueue(
    state: &IngressState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let config = &state.config;
    let tenant = state.tenants.identify(headers)?;
    let bytes = json_body(config, headers, body)?;
    let request = submit::parse(&bytes, config, tenant.as_ref().map(|t| t.name.to_string()))?;
    tracing::Span::current().record("request_id", request.id.as_str());
    let (body, quota) = accept(state, tenant.as_deref(), &request).await?;
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    quota.apply(response.headers_mut());
    Ok(response)
}

/// Accepts one parsed submission: the body of its 202 once Kafka acknowledged it (or
/// at once for an idempotent repeat), and what its tenant has left.
pub(super) async fn accept(
    state: &IngressState,
    tenant: Option<&Tenant>,
    request: &Request,
) -> Result<(Accepted, Quota), AppError> {
    let payload =
        serde_json::to_vec(request).expect("a Request always serializes: string keys, no NaN");
    let fingerprint = submit::fingerprint(&payload);

    // An id this instance already accepted is not written again (idempotent retries),
    // unless it came with a different submission (or from another tenant). A final reply
    // from a request another instance accepted carries no fingerprint: taken as a repeat.
    if let Some(known) = state.cache.lookup(&request.id) {
        let other_tenant = known.tenant.as_deref() != request.tenant.as_deref();
        if other_tenant || known.fingerprint.is_some_and(|f| f != fingerprint) {
            return Err(AppError::Conflict(request.id.clone()));
        }
        return Ok((accepted_body(&request.id, &known.entry), Quota::default()));
    }
    let topic = state.config.request_topic_for(request.lane.as_deref());
    state.admission.check(&topic, request.deadline_ms)?;
    let quota = admit(state, tenant, request)?;
    write_request(state, request, &payload)
        .await
        .inspect_err(|_| release(tenant, &request.id))?;
    let entry = match &request.reply_to {
        Some(other) if *other != state.config.kafka.reply_topic => {
            Entry::Elsewhere(other.as_str().into())
        }
        _ => Entry::Queued,
    };
    let tenant_name = tenant.map(|t| t.name.clone());
    state
        .cache
        .mark_accepted(&request.id, entry.clone(), fingerprint, tenant_name);
    state.metrics.cached.set(state.cache.len() as i64);
    Ok((accepted_body(&request.id, &entry), quota))
}

/// Takes the request from its tenant's limits (nothing without a tenant).
pub(super) fn admit(
    state: &IngressState,
    tenant: Option<&Tenant>,
    request: &Request,
) -> Result<Quota, AppError> {
    match tenant {
        Some(tenant) => tenant.admit(
            &request.id,
            crate::backend::estimated_tokens(&request.body),
            state.tenants.queued_ttl(),
        ),
        None => Ok(Quota::default()),
    }
}

/// Gives back a request's queued place: it was not stored.
pub(super) fn release(tenant: Option<&Tenant>, id: &str) {
    if let Some(tenant) = tenant {
        tenant.release(id);
    }
}

/// The body of a JSON route: no content type is taken as JSON (as sent by many simple
/// clients); any other than JSON (curl's form default, text/plain) is refused rather
/// than guessed at.
pub(super) fn json_body(
    config: &Config,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, AppError> {
    if let Some(value) = headers.get(CONTENT_TYPE) {
        let value = String::from_utf8_lossy(value.as_bytes());
        if !submit::is_json_content_type(&value) {
            return Err(AppError::UnsupportedMediaType(value.into_owned()));
        }
    }
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge {
            limit: config.ingress.max_body_bytes,
        },
        _ => AppError::BadRequest(format!("could not read the request body: {rejection}")),
    })
}

/// Writes `request` (serialized as `payload`) to its request topic; `Ok` once Kafka
/// acknowledged it (acks=all), within `ingress.enqueue_timeout_ms`.
pub(super) async fn write_request(
    state: &IngressState,
    request: &Request,
    payload: &[u8],
) -> Result<(), AppError> {
    let config = &state.config;
    let topic = config.request_topic_for(request.lane.as_deref());
    let key = request.ordering_key.as_deref().unwrap_or(&request.id);
    let started = Instant::now();
    // librdkafka times a write out at `message.timeout.ms` (the same figure) but checks
    // only about once a second, so the bound is kept here; the write may still land
    // later, as any unacknowledged write may (the 503 says to retry with the same id).
    let enqueue_timeout = Duration::from_millis(config.ingress.enqueue_timeout_ms);
    let sent = tokio::time::timeout(
        enqueue_timeout,
        state.producer.send(Outgoing {
            topic: &topic,
            key,
            payload,
            headers: vec![(headers::ID, Some(request.id.as_bytes()))],
        }),
    )
    .await
    .unwrap_or(Err(KafkaError::MessageProduction(
        RDKafkaErrorCode::MessageTimedOut,
    )));
    state
        .metrics
        .enqueue_seconds
        .observe(started.elapsed().as_secs_f64());
    match sent {
        Ok(_) => Ok(()),
        // Not a passing condition: a 503 would have the client retry it for ever.
        Err(e) if is_too_large(&e) => Err(AppError::TooLargeForKafka {
            bytes: payload.len(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, topic = %topic, "Kafka did not acknowledge a submission; answering 503");
            Err(AppError::Unavailable {
                message: format!(
                    "Kafka did not acknowledge the request within {} ms, so it was not accepted; \
                     retry later with the same id",
                    config.ingress.enqueue_timeout_ms
                ),
                retry_after_secs: config.ingress.retry_after_secs,
            })
        }
    }
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

/// The 202 body: `{id, status}`, plus `reply_to` and `tracked: false` when the reply goes
/// to a topic this ingress does not read (GET will not know its outcome).
pub(super) fn accepted_body(id: &str, entry: &Entry) -> Accepted {
    let elsewhere = match entry {
        Entry::Elsewhere(topic) => Some(topic.to_string()),
        _ => None,
    };
    Accepted {
        id: id.to_string(),
        status: "queued".into(),
        tracked: elsewhere.as_ref().map(|_| false),
        reply_to: elsewhere,
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
