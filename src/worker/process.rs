//! Handling one request message to its one final output: a reply (`ok`, `error`,
//! `expired`, `rejected`) on the reply topic, or a dead letter when it does not decode.
//! `handle` decides the output, then hands it to the [`Outbox`], which writes it and
//! makes the message's offset committable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::backends::Backends;
use super::chunks;
use super::dead_letter::{DeadLetter, Reason};
use super::fallback;
use super::intake::Taken;
use super::metrics::WorkerMetrics;
use super::outbox::Outbox;
use super::output::Output;
use crate::backend::breaker::{BreakerHandle, BreakerState};
use crate::backend::retry::Finished;
use crate::backend::stack::BackendStack;
use crate::backend::stream::ChunkSink;
use crate::backend::{BackendError, ChatRequest, ChatResponse};
use crate::config::{Config, FallbackTrigger};
use crate::envelope::{self, now_ms, Reply, ReplyError, Request, ServedBy, Status, Timing};
use crate::kafka::producer::Producer;
use crate::routing::{Route, Routes};
use crate::telemetry::{propagation, semconv};

/// What every message task shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// Written into dead letters and logs.
    pub worker_id: String,
    pub metrics: WorkerMetrics,
    /// Every request topic this worker reads; `reply_to` may not name one of them.
    pub request_topics: Vec<String>,
    /// Writes the chunks of streamed answers.
    pub chunk_producer: Producer,
    /// Which backends serve which model, and the fallback chains.
    pub routes: Arc<Routes>,
    /// Every backend, for a fallback's call.
    pub backends: Arc<Backends>,
}

/// The backend a message is sent to: its name and a ready instance of its call path.
pub struct Call {
    pub backend: String,
    pub service: BackendStack,
    /// The backend's circuit breaker: a call that waits for it to close gives up when it
    /// opens, if the request falls back on `breaker_open`.
    pub breaker: BreakerHandle,
}

/// Processes one message inside a `process <topic>` CONSUMER span that continues the
/// producer's trace, calling the backend of `call` (`None`: the message needs none, as
/// it does not decode or no backend serves its model). Returns true once the output is
/// delivered, false if abandoned.
pub async fn handle(shared: &Shared, outbox: &Outbox, taken: Taken, call: Option<Call>) -> bool {
    let Taken {
        message,
        request,
        ticket,
        route,
    } = taken;
    let span = semconv::kafka_process_span(&semconv::Consumed {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        group: Some(&shared.config.kafka.group_id),
    });
    propagation::adopt_remote_parent(&span, propagation::extract_kafka(message.headers()));
    async {
        let output = decide(shared, &message, request, route, call).await;
        let enqueued_ms = match &output {
            Output::Reply { reply, .. } => Some(reply.timing.enqueued_ms),
            Output::DeadLetter(_) | Output::Forward(_) => None,
        };
        outbox.deliver(output, enqueued_ms, ticket).await
    }
    .instrument(span)
    .await
}

async fn decide(
    shared: &Shared,
    message: &OwnedMessage,
    request: Result<Request, envelope::DecodeError>,
    route: Option<Route>,
    call: Option<Call>,
) -> Output {
    let started_ms = now_ms();
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(error = %e, topic = message.topic(), partition = message.partition(),
                offset = message.offset(), "undecodable request; dead-lettering it");
            let reason = Reason {
                class: e.class(),
                message: e.to_string(),
                attempts: 0,
            };
            return Output::DeadLetter(DeadLetter::new(message, &reason, &shared.worker_id));
        }
    };
    let span = tracing::Span::current();
    span.record("request_id", request.id.as_str());
    let enqueued_ms = message
        .timestamp()
        .to_millis()
        .map(|ms| ms.max(0) as u64)
        .unwrap_or(started_ms);
    let queue_ms = started_ms.saturating_sub(enqueued_ms);
    span.set_attribute(semconv::SLUICE_QUEUE_MS, queue_ms as i64);
    shared
        .metrics
        .queue_wait_seconds
        .observe(queue_ms as f64 / 1000.0);
    let mut timing = Timing {
        enqueued_ms,
        started_ms,
        queue_ms,
        ..Timing::default()
    };

    let default_topic = shared.config.kafka.reply_topic.clone();
    if let Some(topic) = &request.reply_to {
        if shared.request_topics.contains(topic) || *topic == shared.config.kafka.dlq_topic {
            let error = ReplyError {
                kind: "invalid_request".into(),
                message: format!("reply_to {topic:?} names a request or dead-letter topic"),
                status: None,
            };
            return reply_output(
                default_topic,
                &request,
                Status::Rejected,
                0,
                Err(error),
                timing,
                None,
            );
        }
    }
    let topic = request.reply_to.clone().unwrap_or(default_topic);

    let (Some(route), Some(call)) = (route, call) else {
        let model = request.body.get("model").and_then(Value::as_str);
        let error = ReplyError {
            kind: "model_not_found".into(),
            message: format!(
                "The model `{}` does not exist or you do not have access to it.",
                model.unwrap_or_default()
            ),
            status: Some(404),
        };
        return reply_output(
            topic,
            &request,
            Status::Rejected,
            0,
            Err(error),
            timing,
            None,
        );
    };
    span.set_attribute(semconv::SLUICE_BACKEND, call.backend.clone());

    if request.deadline_ms.is_some_and(|d| started_ms >= d) {
        tracing::debug!(id = %request.id, model = %route.model, backend = %call.backend,
            fallback = route.fell_back.is_some(), "expired in the queue of its pool");
        let error = ReplyError {
            kind: "expired".into(),
            message: "the deadline passed before the backend was called".into(),
            status: None,
        };
        return reply_output(
            topic,
            &request,
            Status::Expired,
            0,
            Err(error),
            timing,
            None,
        );
    }

    let mut called = call_backend(shared, &request, &route, call, &topic).await;
    let mut attempts = called.attempts;
    let mut backend_time = called.elapsed;
    let mut route = route;
    while let Some((next, ready)) = next_in_chain(shared, &request, &route, &called).await {
        let backend = shared.backends.get(ready.0);
        backend.begin();
        let call = Call {
            backend: backend.name.clone(),
            service: ready.1,
            breaker: backend.handles.breaker.clone(),
        };
        span.set_attribute(semconv::SLUICE_BACKEND, call.backend.clone());
        called = call_backend(shared, &request, &next, call, &topic).await;
        backend.finish();
        attempts += called.attempts;
        backend_time += called.elapsed;
        route = next;
    }
    timing.backend_ms = backend_time.as_millis() as u64;
    shared
        .metrics
        .backend_seconds
        .observe(backend_time.as_secs_f64());
    if let Some(fell_back) = &route.fell_back {
        span.set_attribute(semconv::SLUICE_FALLBACK_FROM, fell_back.from.clone());
        span.set_attribute(semconv::SLUICE_FALLBACK_REASON, fell_back.reason.label());
        shared
            .metrics
            .fell_back(&fell_back.from, &route.model, fell_back.reason);
    }

    let status = match &called.result {
        Ok(response) => {
            if let Some(usage) = response.usage {
                shared.metrics.prompt_tokens.inc_by(usage.prompt_tokens);
                shared
                    .metrics
                    .completion_tokens
                    .inc_by(usage.completion_tokens);
            }
            Status::Ok
        }
        Err(Ended::Failed(_)) => Status::Error,
        Err(Ended::Expired(_)) => Status::Expired,
    };
    if attempts > 1 {
        shared.metrics.retries.inc_by(u64::from(attempts - 1));
    }
    let result = match called.result {
        Ok(response) => Ok((response.body, response.usage)),
        Err(Ended::Failed(e)) => Err(reply_error(&e)),
        Err(Ended::Expired(error)) => Err(error),
    };
    let served_by = ServedBy {
        backend: called.backend,
        fallback_from: route.fell_back.as_ref().map(|f| f.from.clone()),
        fallback_reason: route
            .fell_back
            .as_ref()
            .map(|f| f.reason.label().to_string()),
        model: route.model,
    };
    reply_output(
        topic,
        &request,
        status,
        attempts,
        result,
        timing,
        Some(Box::new(served_by)),
    )
}

/// How one call of a backend ended.
struct Called {
    /// The backend's name.
    backend: String,
    result: Result<ChatResponse, Ended>,
    attempts: u32,
    elapsed: Duration,
    /// Chunk records of a stream written to the reply topic (0 for others).
    relayed: u64,
}

/// A call that did not answer.
enum Ended {
    Failed(BackendError),
    /// The deadline passed, before or between attempts.
    Expired(ReplyError),
}

/// Calls `call`'s backend for `request` as `route`'s model, relaying a stream's chunks
/// to `topic` as they come.
async fn call_backend(
    shared: &Shared,
    request: &Request,
    route: &Route,
    call: Call,
    topic: &str,
) -> Called {
    let Call {
        backend: name,
        service: mut backend,
        breaker,
    } = call;
    // A request that falls back on `breaker_open` stops waiting when the breaker opens
    // (its retries would wait for the backend to come back) and takes its chain.
    let leaves_when_open = fallback::allowed(request)
        && !shared
            .routes
            .fallbacks(route, FallbackTrigger::BreakerOpen)
            .is_empty();
    let chat = ChatRequest::new(backend_body(request, &route.model), request.deadline_ms);
    let (chat, relay) = if is_streamed(request) {
        let (sink, receiver) = ChunkSink::new(asks_for_usage(request));
        let relay = tokio::spawn(chunks::relay(
            shared.chunk_producer.clone(),
            topic.to_string(),
            request.id.clone(),
            receiver,
            Duration::from_millis(shared.config.worker.stream_linger_ms),
        ));
        (chat.streaming(sink), Some(relay))
    } else {
        (chat, None)
    };
    let call_started = Instant::now();
    let called = tower::Service::call(&mut backend, chat);
    let finished = if leaves_when_open {
        let mut state = breaker.subscribe();
        tokio::select! {
            finished = called => finished,
            _ = state.wait_for(|s| *s == BreakerState::Open) => Ok(Finished::Answered {
                result: Err(BackendError::CircuitOpen { retry_in: Duration::ZERO }),
                attempts: 0,
            }),
        }
    } else {
        called.await
    }
    .unwrap_or_else(|error| Finished::Answered {
        result: Err(error),
        attempts: 0,
    });
    // Every chunk is written before the final reply, so a reader meets them first.
    let mut relayed = 0;
    if let Some(relay) = relay {
        let done = relay.await.unwrap_or_default();
        shared.metrics.stream_chunks.inc_by(done.records);
        shared.metrics.stream_chunks_lost.inc_by(done.lost);
        relayed = done.records + done.lost;
    }
    let elapsed = call_started.elapsed();
    let (result, attempts) = match finished {
        Finished::Answered { result, attempts } => (result.map_err(Ended::Failed), attempts),
        Finished::Expired {
            attempts,
            last_error,
        } => {
            let message = match last_error {
                Some(e) => format!("the deadline passed while retrying; last error: {e}"),
                None => "the deadline passed before the backend was called".into(),
            };
            let error = ReplyError {
                kind: "expired".into(),
                message,
                status: None,
            };
            (Err(Ended::Expired(error)), attempts)
        }
    };
    Called {
        backend: name,
        result,
        attempts,
        elapsed,
        relayed,
    }
}

/// After a failed call: the next model of the route's chain for the trigger the error
/// fires, and a ready backend of it (index, call path); `None` when the request does
/// not fall back (no trigger, no chain, not allowed, a stream already under way, the
/// deadline passed, or no model of the chain got ready before it).
async fn next_in_chain(
    shared: &Shared,
    request: &Request,
    route: &Route,
    called: &Called,
) -> Option<(Route, (usize, BackendStack))> {
    let Err(Ended::Failed(error)) = &called.result else {
        return None;
    };
    let trigger = fallback::trigger_after(error)?;
    if !fallback::allowed(request) || called.relayed > 0 {
        return None;
    }
    let left = match request.deadline_ms {
        Some(deadline) => Duration::from_millis(deadline.checked_sub(now_ms())?),
        None => Duration::MAX,
    };
    for next in shared.routes.fallbacks(route, trigger) {
        if shared.backends.all_open(&next.pool) {
            continue;
        }
        let ready = shared.backends.ready(&next.pool);
        match tokio::time::timeout(left, ready).await {
            Ok(Ok(ready)) => return Some((next, ready)),
            Ok(Err(e)) => tracing::warn!(error = %e, "a fallback backend failed readiness"),
            Err(_) => return None,
        }
    }
    None
}

/// The body sent to the backend, for `model` (a model its alias named, sent as the model
/// the backend serves), without the streaming fields: the client sets them itself for a
/// streamed call ([`ChatRequest::streaming`]).
fn backend_body(request: &Request, model: &str) -> serde_json::Map<String, Value> {
    let mut body = request.body.clone();
    body.remove("stream");
    body.remove("stream_options");
    if body
        .get("model")
        .and_then(Value::as_str)
        .is_some_and(|m| m != model)
    {
        body.insert("model".into(), Value::String(model.into()));
    }
    body
}

/// Whether the caller asked for the answer as a stream (`"stream": true`).
fn is_streamed(request: &Request) -> bool {
    request.body.get("stream") == Some(&Value::Bool(true))
}

/// Whether a streamed caller asked for the usage chunk.
fn asks_for_usage(request: &Request) -> bool {
    request
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true))
}

/// A failed call as the reply says it. A backend's error answer keeps its own message
/// (its status is in `status`), so the OpenAI front door can pass it on as it was.
fn reply_error(e: &BackendError) -> ReplyError {
    let message = match e {
        BackendError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    };
    ReplyError {
        kind: e.kind().into(),
        message,
        status: e.status(),
    }
}

fn reply_output(
    topic: String,
    request: &Request,
    status: Status,
    attempts: u32,
    result: Result<(Value, Option<envelope::Usage>), ReplyError>,
    mut timing: Timing,
    served_by: Option<Box<ServedBy>>,
) -> Output {
    timing.finished_ms = now_ms();
    let (body, usage, error) = match result {
        Ok((body, usage)) => (Some(body), usage, None),
        Err(error) => (None, None, Some(error)),
    };
    if let Some(e) = &error {
        // Never the prompt: the id, the outcome and why.
        // (Not the error's message either: a backend's may quote the request.)
        tracing::info!(id = %request.id, status = status.as_str(), reason = %e.kind,
            backend_status = e.status, attempts, "request ended without a result");
    }
    let span = tracing::Span::current();
    span.set_attribute(semconv::SLUICE_STATUS, status.as_str());
    span.set_attribute(semconv::SLUICE_ATTEMPTS, i64::from(attempts));
    if let Some(e) = &error {
        semconv::record_error(&span, &e.kind);
    }
    Output::Reply {
        topic,
        reply: Reply {
            v: envelope::VERSION,
            id: request.id.clone(),
            status,
            attempts,
            tenant: request.tenant.clone(),
            body,
            error,
            usage,
            timing,
            metadata: request.metadata.clone(),
            served_by,
        },
    }
}
