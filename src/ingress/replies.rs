//! The reply-topic reader. Each ingress instance reads every partition of the reply
//! topic itself (no consumer group, no commits: [`crate::kafka::reader`]), starting one
//! result-TTL back in time so a restarted instance can still answer for recent requests,
//! and feeds the cache and the waiters.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::cache::{Recorded, ReplyCache};
use super::metrics::{IngressMetrics, StatusLabel};
use super::tenants::Tenants;
use super::waiters::{ReplyEvent, Waiters};
use crate::admin::Readiness;
use crate::config::Config;
use crate::envelope::now_ms;
use crate::kafka::reader::{Start, TopicReader};
use crate::kafka::reply_record::{self, ReplyRecord};
use crate::telemetry::{propagation, semconv};

/// How often the reader checks whether the reply topic gained partitions.
const PARTITION_REFRESH: Duration = Duration::from_secs(30);
/// Pause between attempts while the reply topic is missing or Kafka is down.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Time limit of one blocking metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the reader puts what it reads.
#[derive(Clone)]
pub struct ReplySink {
    pub cache: Arc<ReplyCache>,
    pub waiters: Arc<Waiters>,
    pub tenants: Arc<Tenants>,
    pub metrics: IngressMetrics,
}

/// Reads the reply topic into `sink` until `shutdown`; `assigned` turns true once
/// every partition is being read.
pub async fn run(
    config: Arc<Config>,
    sink: ReplySink,
    assigned: Readiness,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let topic = config.kafka.reply_topic.clone();
    let mut reader = TopicReader::new(
        &config.kafka,
        &topic,
        "ingress",
        // A sync or streamed caller waits on this reader: an idle fetch is held
        // at most 10 ms (the cost: an idle fetch every 10 ms per broker).
        &[("fetch.wait.max.ms", "10")],
        LOOKUP_TIMEOUT,
    )?;
    // Start one TTL back, so a restarted instance can still answer for recent requests.
    let since = Start::Since {
        ms: now_ms().saturating_sub(config.ingress.result_ttl_ms),
    };
    let mut partitions = 0;
    let mut waiting_said = false;
    let mut refresh = tokio::time::interval(PARTITION_REFRESH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = refresh.tick() => {
                let added = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    added = reader.assign_new(since) => added,
                };
                match added {
                    Ok(now) => {
                        if now != partitions {
                            tracing::info!(topic = %topic, partitions = now, "reading reply topic");
                        }
                        partitions = now;
                        assigned.set(true);
                    }
                    Err(e) if e.is_absent() => {
                        if !waiting_said {
                            tracing::info!(topic = %topic, "reply topic not there yet; waiting for it");
                            waiting_said = true;
                        }
                        sleep_or_cancel(&shutdown).await;
                        refresh.reset_immediately();
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic, error = %e, "reply topic lookup failed; retrying");
                        sleep_or_cancel(&shutdown).await;
                        refresh.reset_immediately();
                    }
                }
            }
            message = reader.recv_or_pause(RETRY_PAUSE, |e| {
                tracing::warn!(error = %e, "reading the reply topic failed");
            }), if partitions > 0 => {
                if let Some(message) = message {
                    handle(&message, &sink);
                }
            }
        }
    }
}

async fn sleep_or_cancel(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

/// Records one reply-topic message: a final reply goes into the cache, and both finals
/// and chunks go to whoever waits for their id.
fn handle(message: &BorrowedMessage<'_>, sink: &ReplySink) {
    let record = match reply_record::decode(message) {
        Ok(ReplyRecord::Chunk(chunk)) => {
            sink.metrics.chunks_read.inc();
            let id = chunk.id.clone();
            sink.waiters.notify(&id, ReplyEvent::Chunk(Arc::new(chunk)));
            return;
        }
        Ok(ReplyRecord::Final(reply)) => Ok(reply),
        Err(e) => Err(e),
    };
    let span = semconv::kafka_process_span(&semconv::Consumed {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        group: None,
    });
    propagation::adopt_remote_parent(&span, propagation::extract_kafka(message.headers()));
    let _entered = span.enter();
    let reply = match record {
        Ok(reply) => reply,
        Err(e) => {
            sink.metrics.undecodable_replies.inc();
            tracing::warn!(error = %e, offset = message.offset(), "skipping an undecodable reply");
            return;
        }
    };
    span.record("request_id", reply.id.as_str());
    let metrics = &sink.metrics;
    metrics
        .replies
        .get_or_create(&StatusLabel {
            status: reply.status.as_str().into(),
        })
        .inc();
    let id = reply.id.clone();
    sink.tenants.finished(reply.tenant.as_deref(), &id);
    let reply = Arc::new(reply);
    if sink.cache.record_final(reply.clone()) == Recorded::Duplicate {
        metrics.duplicate_replies.inc();
    }
    sink.waiters.notify(&id, ReplyEvent::Final(reply));
    metrics.cached.set(sink.cache.len() as i64);
}
