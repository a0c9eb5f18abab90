//! Handling one request message to its one final output: a reply (`ok`, `error`,
//! `expired`, `rejected`) on the reply topic, or a dead letter when it does not decode.
//! `handle` returns only once that output is acknowledged by Kafka (or the worker's
//! grace period ran out), so its caller may then commit the offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::dead_letter::{DeadLetter, Reason};
use super::intake::Taken;
use super::metrics::WorkerMetrics;
use super::transactions::{Transactions, TxnOutput};
use crate::backend::retry::Finished;
use crate::backend::stack::BackendStack;
use crate::backend::{BackendError, ChatRequest};
use crate::config::Config;
use crate::envelope::{self, headers, now_ms, Reply, ReplyError, Request, Status, Timing};
use crate::kafka::offsets::Ticket;
use crate::kafka::producer::{is_too_large, Outgoing, Producer};
use crate::telemetry::{propagation, semconv};

/// What every message task shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// Written into dead letters and logs.
    pub worker_id: String,
    pub producer: Producer,
    pub metrics: WorkerMetrics,
    /// Every request topic this worker reads; `reply_to` may not name one of them.
    pub request_topics: Vec<String>,
    /// Cancelled when the shutdown grace period is over: stop retrying writes.
    pub hard_stop: CancellationToken,
    /// `worker.exactly_once`: outputs go through transactions that also commit offsets.
    pub transactions: Option<Transactions>,
}

/// The one output a message ends in.
enum Output {
    Reply { topic: String, reply: Reply },
    DeadLetter(DeadLetter),
}

/// Pause before the first retry of a failed Kafka write; doubles up to the cap.
const WRITE_RETRY_INITIAL: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Processes one message inside a `process <topic>` CONSUMER span that continues the
/// producer's trace, calling the backend through `backend` (a ready instance of the
/// stack). Returns true once the output is delivered, false if abandoned.
pub async fn handle(shared: &Shared, taken: Taken, backend: BackendStack) -> bool {
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
        deliver(shared, output, enqueued_ms, ticket).await
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

/// An output as a record to write.
struct Record {
    /// Metric label: the reply status or `dead_letter`.
    outcome: &'static str,
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Output {
    fn to_record(&self, dlq_topic: &str) -> Record {
        match self {
            Output::Reply { topic, reply } => Record {
                outcome: reply.status.as_str(),
                payload: serde_json::to_vec(reply).expect("a Reply always serializes"),
                headers: vec![
                    (headers::ID.into(), Some(reply.id.clone().into_bytes())),
                    (
                        headers::KIND.into(),
                        Some(headers::KIND_FINAL.as_bytes().to_vec()),
                    ),
                ],
                key: reply.id.clone(),
                topic: topic.clone(),
            },
            Output::DeadLetter(dl) => Record {
                outcome: "dead_letter",
                topic: dlq_topic.to_string(),
                key: dl.key_text(),
                payload: dl.value.clone(),
                headers: dl.headers.clone(),
            },
        }
    }

    /// A smaller output for a cluster that refused this one as too large, still the one
    /// outcome of its message; `None` when nothing is left to drop. A dead letter sheds
    /// its value, then the original key and headers ([`DeadLetter::shrink`]); a reply
    /// becomes an `error` reply of type `reply_too_large` without body and metadata (the
    /// metadata is echoed from the request, so request and completion together can
    /// exceed what Kafka takes although each alone did not).
    fn shrink(&self) -> Option<Output> {
        match self {
            Output::DeadLetter(dl) => dl.shrink().map(Output::DeadLetter),
            Output::Reply { reply, .. } if reply.body.is_none() && reply.metadata.is_none() => None,
            Output::Reply { topic, reply } => Some(Output::Reply {
                topic: topic.clone(),
                reply: Reply {
                    status: Status::Error,
                    body: None,
                    metadata: None,
                    error: Some(ReplyError {
                        kind: "reply_too_large".into(),
                        message: format!(
                            "the {} reply was larger than Kafka accepts (message.max.bytes); \
                             its body and metadata were dropped",
                            reply.status.as_str()
                        ),
                        status: None,
                    }),
                    ..reply.clone()
                },
            }),
        }
    }
}

/// Writes the output, retrying until Kafka acknowledges it or the hard stop; with
/// exactly-once, inside a transaction that also commits the message's offset. An output
/// the cluster refuses as too large is written smaller instead ([`Output::shrink`]):
/// retrying it as it is could never succeed and would hold back the partition's commits
/// for good.
async fn deliver(
    shared: &Shared,
    output: Output,
    enqueued_ms: Option<u64>,
    ticket: Ticket,
) -> bool {
    let dlq_topic = &shared.config.kafka.dlq_topic;
    let mut output = output;
    let mut record = output.to_record(dlq_topic);
    if let Some(transactions) = &shared.transactions {
        let outcome = record.outcome;
        let committed = transactions
            .write(TxnOutput {
                topic: record.topic,
                key: record.key,
                payload: record.payload,
                headers: record.headers,
                ticket,
            })
            .await;
        if committed {
            record_finished(shared, outcome, enqueued_ms);
        }
        return committed;
    }
    let mut wait = WRITE_RETRY_INITIAL;
    loop {
        let sent = shared
            .producer
            .send(Outgoing {
                topic: &record.topic,
                key: &record.key,
                payload: &record.payload,
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
            })
            .await;
        let e = match sent {
            Ok(_) => break,
            Err(e) => e,
        };
        shared.metrics.produce_failures.inc();
        if let Some(smaller) = is_too_large(&e).then(|| output.shrink()).flatten() {
            tracing::warn!(error = %e, topic = %record.topic, bytes = record.payload.len(),
                "outcome too large for the topic; writing it without what does not fit");
            output = smaller;
            record = output.to_record(dlq_topic);
            continue;
        }
        tracing::warn!(error = %e, topic = %record.topic, retry_in_ms = wait.as_millis() as u64,
            "writing the outcome to Kafka failed; retrying");
        tokio::select! {
            _ = shared.hard_stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(WRITE_RETRY_MAX);
    }
    record_finished(shared, record.outcome, enqueued_ms);
    true
}

fn record_finished(shared: &Shared, outcome: &str, enqueued_ms: Option<u64>) {
    shared.metrics.finished(outcome);
    match enqueued_ms {
        Some(enqueued) => {
            let e2e_ms = now_ms().saturating_sub(enqueued);
            shared
                .metrics
                .end_to_end_seconds
                .observe(e2e_ms as f64 / 1000.0);
        }
        None => {
            shared.metrics.dead_letters.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_reply() -> Reply {
        Reply {
            v: 1,
            id: "r1".into(),
            status: Status::Ok,
            attempts: 2,
            body: Some(serde_json::json!({"object": "chat.completion"})),
            error: None,
            usage: Some(envelope::Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
            timing: Timing::default(),
            metadata: Some(serde_json::json!({"blob": "x"})),
        }
    }

    #[test]
    fn a_reply_too_large_becomes_an_error_reply_without_body_and_metadata() {
        let output = Output::Reply {
            topic: "replies".into(),
            reply: ok_reply(),
        };
        let Some(Output::Reply { topic, reply }) = output.shrink() else {
            panic!("a reply with a body can shrink");
        };
        assert_eq!(topic, "replies");
        assert_eq!(reply.status, Status::Error);
        assert!(reply.body.is_none() && reply.metadata.is_none());
        let error = reply.error.clone().unwrap();
        assert_eq!(error.kind, "reply_too_large");
        assert!(error.message.contains("the ok reply"), "{}", error.message);
        assert_eq!((reply.id.as_str(), reply.attempts), ("r1", 2));
        let again = Output::Reply {
            topic,
            reply: reply.clone(),
        };
        assert!(again.shrink().is_none(), "nothing left to drop");
        let record = again.to_record("dlq");
        assert_eq!(record.outcome, "error");
        assert_eq!(record.key, "r1");
    }
}
