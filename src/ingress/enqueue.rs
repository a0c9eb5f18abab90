//! The one way a request enters Kafka from the HTTP API, for every route that takes
//! one (`POST /v1/requests`, each item of a batch, `POST /v1/chat/completions`): an
//! model nobody serves is refused, an idempotent repeat is answered from the cache, then
//! admission control and the tenant's limits, then the write, answered only once Kafka acknowledged it (acks=all).
//! A write that fails gives the tenant's place back; one that succeeds is in the cache
//! before the caller hears of it. Every route updates the same metrics here.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::Value;

use super::api::Accepted;
use super::cache::Entry;
use super::error::AppError;
use super::quota::Quota;
use super::state::IngressState;
use super::submit;
use super::tenants::Tenant;
use super::waiters::Waiter;
use crate::envelope::{headers, Request};
use crate::kafka::producer::{is_too_large, Outgoing};

/// How the caller learns the request's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Later, from `GET /v1/requests/{id}`.
    Poll,
    /// From the reply reader, through a waiter registered before the write so that not
    /// even an instant reply is missed. A final reply already read is not handed to it
    /// again, so such a request's id is fresh (the chat route makes its own).
    Wait,
}

/// A request Kafka holds: written now, or before (an idempotent repeat).
#[derive(Debug)]
pub struct Enqueued {
    /// The body of its 202.
    pub body: Accepted,
    /// What its tenant has left (nothing is taken for a repeat).
    pub quota: Quota,
    /// With [`Then::Wait`], the waiter for its reply; `None` with [`Then::Poll`].
    pub waiter: Option<Waiter>,
}

/// Accepts one parsed request: `Ok` once Kafka acknowledged it (or at once for an
/// idempotent repeat), else the refusal, with nothing taken from its tenant.
pub async fn accept(
    state: &IngressState,
    tenant: Option<&Tenant>,
    mut request: Request,
    then: Then,
) -> Result<Enqueued, AppError> {
    route(state, &mut request)?;
    let request = &request;
    let payload =
        serde_json::to_vec(request).expect("a Request always serializes: string keys, no NaN");
    let fingerprint = submit::fingerprint(&payload);
    let register = || (then == Then::Wait).then(|| state.waiters.register(&request.id));

    // An id this instance already accepted is not written again (idempotent retries),
    // unless it came with a different submission (or from another tenant). A final reply
    // from a request another instance accepted carries no fingerprint: taken as a repeat.
    if let Some(known) = state.cache.lookup(&request.id) {
        let other_tenant = known.tenant.as_deref() != request.tenant.as_deref();
        if other_tenant || known.fingerprint.is_some_and(|f| f != fingerprint) {
            return Err(AppError::Conflict(request.id.clone()));
        }
        return Ok(Enqueued {
            body: accepted_body(&request.id, &known.entry),
            quota: Quota::default(),
            waiter: register(),
        });
    }
    let topic = state.config.request_topic_for(request.lane.as_deref());
    state.admission.check(&topic, request.deadline_ms)?;
    let quota = admit(state, tenant, request)?;
    let waiter = register();
    write(state, request, &payload)
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
    Ok(Enqueued {
        body: accepted_body(&request.id, &entry),
        quota,
        waiter,
    })
}

/// A model no backend serves is refused here (404 `model_not_found`, as OpenAI answers)
/// rather than after a trip through Kafka; an alias becomes the model it stands for, so
/// the worker, the backend and the reply all see the model's own name.
fn route(state: &IngressState, request: &mut Request) -> Result<(), AppError> {
    let asked = request.body.get("model").and_then(Value::as_str);
    let Some(route) = state.routes.resolve(asked) else {
        return Err(AppError::ModelNotFound(
            asked.unwrap_or_default().to_string(),
        ));
    };
    if asked.is_some_and(|asked| asked != route.model) {
        request
            .body
            .insert("model".into(), Value::String(route.model));
    }
    Ok(())
}

/// Takes the request from its tenant's limits (nothing without a tenant).
fn admit(
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
fn release(tenant: Option<&Tenant>, id: &str) {
    if let Some(tenant) = tenant {
        tenant.release(id);
    }
}

/// Writes `request` (serialized as `payload`) to its request topic; `Ok` once Kafka
/// acknowledged it (acks=all), within `ingress.enqueue_timeout_ms`.
async fn write(state: &IngressState, request: &Request, payload: &[u8]) -> Result<(), AppError> {
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
            timestamp: None,
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

/// The 202 body: `{id, status}`, plus `reply_to` and `tracked: false` when the reply goes
/// to a topic this ingress does not read (GET will not know its outcome).
fn accepted_body(id: &str, entry: &Entry) -> Accepted {
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
