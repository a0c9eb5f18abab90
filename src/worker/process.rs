//! Handling one request message to its one final output: a reply (`ok`, `error`,
//! `expired`, `rejected`) on the reply topic, or a dead letter when it does not decode.
//! `handle` decides the output, then hands it to the [`Outbox`], which writes it and
//! makes the message's offset committable.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::dead_letter::{DeadLetter, Reason};
use super::intake::Taken;
use super::metrics::WorkerMetrics;
use super::outbox::Outbox;
use super::output::Output;
use crate::backend::retry::Finished;
use crate::backend::stack::BackendStack;
use crate::backend::{BackendError, ChatRequest};
use crate::config::Config;
use crate::envelope::{self, now_ms, Reply, ReplyError, Request, Status, Timing};
use crate::telemetry::{propagation, semconv};

/// What every message task shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// Written into dead letters and logs.
    pub worker_id: String,
    pub metrics: WorkerMetrics,
    /// Every request topic this worker reads; `reply_to` may not name one of them.
    pub request_topics: Vec<String>,
}

/// Processes one message inside a `process <topic>` CONSUMER span that continues the
/// producer's trace, calling the backend through `backend` (a ready instance of the
/// stack). Returns true once the output is delivered, false if abandoned.
pub async fn handle(shared: &Shared, outbox: &Outbox, taken: Taken, backend: BackendStack) -> bool {
    let Taken {
        message,
        request,
        ticket,
    } = taken;
    let span = semconv::kafka_process_span(&semconv::Consumed {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        group: Some(&shared.config.kafka.group_id),
    });
    propagation::adopt_remote_parent(&span, propagation::extract_kafka(message.headers()));
    async {
        let output = decide(shared, &message, request, backend).await;
        let enqueued_ms = match &output {
            Output::Reply { reply, .. } => Some(reply.timing.enqueued_ms),
            Output::DeadLetter(_) => None,
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
    mut backend: BackendStack,
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
            );
        }
    }
    let topic = request.reply_to.clone().unwrap_or(default_topic);

    if request.deadline_ms.is_some_and(|d| started_ms >= d) {
        let error = ReplyError {
            kind: "expired".into(),
            message: "the deadline passed before the backend was called".into(),
            status: None,
        };
        return reply_output(topic, &request, Status::Expired, 0, Err(error), timing);
    }

    let chat = ChatRequest::new(backend_body(&request), request.deadline_ms);
    let call_started = Instant::now();
    let finished = tower::Service::call(&mut backend, chat)
        .await
        .unwrap_or_else(|error| Finished::Answered {
            result: Err(error),
            attempts: 0,
        });
    let backend = call_started.elapsed();
    timing.backend_ms = backend.as_millis() as u64;
    shared
        .metrics
        .backend_seconds
        .observe(backend.as_secs_f64());

    let (status, attempts, result) = match finished {
        Finished::Answered {
            result: Ok(response),
            attempts,
        } => {
            if let Some(usage) = response.usage {
                shared.metrics.prompt_tokens.inc_by(usage.prompt_tokens);
                shared
                    .metrics
                    .completion_tokens
                    .inc_by(usage.completion_tokens);
            }
            (Status::Ok, attempts, Ok(response))
        }
        Finished::Answered {
            result: Err(e),
            attempts,
        } => (Status::Error, attempts, Err(reply_error(&e))),
        Finished::Expired {
            attempts,
            last_error,
        } => {
            let message = match last_error {
                Some(e) => format!("the deadline passed while retrying; last error: {e}"),
                None => "the deadline passed before the backend was called".into(),
            };
            (
                Status::Expired,
                attempts,
                Err(ReplyError {
                    kind: "expired".into(),
                    message,
                    status: None,
                }),
            )
        }
    };
    if attempts > 1 {
        shared.metrics.retries.inc_by(u64::from(attempts - 1));
    }
    let result = result.map(|response| (response.body, response.usage));
    reply_output(topic, &request, status, attempts, result, timing)
}

/// The body sent to the backend. Streaming is relayed by a later version of the worker;
/// until then the backend is always asked for a whole completion.
fn backend_body(request: &Request) -> serde_json::Map<String, Value> {
    let mut body = request.body.clone();
    body.remove("stream");
    body.remove("stream_options");
    body
}

fn reply_error(e: &BackendError) -> ReplyError {
    ReplyError {
        kind: e.kind().into(),
        message: e.to_string(),
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
            body,
            error,
            usage,
            timing,
            metadata: request.metadata.clone(),
        },
    }
}
