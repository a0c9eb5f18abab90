//! The reply-topic reader. Each ingress instance reads every partition of the reply
//! topic itself (no consumer group, no commits), starting one result-TTL back in time
//! so a restarted instance can still answer for recent requests, and feeds the cache.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::kafka::log::KafkaLog;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::cache::{Recorded, ReplyCache};
use super::metrics::{IngressMetrics, StatusLabel};
use crate::admin::Readiness;
use crate::config::Config;
use crate::envelope::{headers, now_ms, Reply};
use crate::telemetry::{propagation, semconv};

/// How often the reader checks whether the reply topic gained partitions.
const PARTITION_REFRESH: Duration = Duration::from_secs(30);
/// Pause between attempts while the reply topic is missing or Kafka is down.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Time limit of one blocking metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the reply topic into `cache` until `shutdown`; `assigned` turns true once
/// every partition is being read.
pub async fn run(
    config: Arc<Config>,
    cache: Arc<ReplyCache>,
    metrics: IngressMetrics,
    assigned: Readiness,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let topic = config.kafka.reply_topic.clone();
    let consumer: Arc<StreamConsumer<KafkaLog>> = Arc::new(crate::kafka::log::create(
        crate::kafka::unjoined_reader_config(
            &config.kafka,
            "ingress",
            &[("fetch.wait.max.ms", "100")],
            false,
        ),
        &config.kafka.bootstrap_servers,
    )?);
    let since_ms = now_ms().saturating_sub(config.ingress.result_ttl_ms);
    let mut partitions = 0;
    let mut waiting_said = false;
    let mut refresh = tokio::time::interval(PARTITION_REFRESH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = refresh.tick() => {
                let added = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    added = add_new_partitions(&consumer, &topic, partitions, since_ms) => added,
                };
                match added {
                    Ok(now) if now > 0 => {
                        if now != partitions {
                            tracing::info!(topic = %topic, partitions = now, "reading reply topic");
                        }
                        partitions = now;
                        assigned.set(true);
                    }
                    Ok(_) => {
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
            message = consumer.recv(), if partitions > 0 => match message {
                Ok(message) => handle(&message, &cache, &metrics),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the reply topic failed");
                    sleep_or_cancel(&shutdown).await;
                }
            },
        }
    }
}

async fn sleep_or_cancel(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

/// Starts reading partitions `known..` of `topic`; returns the partition count.
async fn add_new_partitions(
    consumer: &Arc<StreamConsumer<KafkaLog>>,
    topic: &str,
    known: usize,
    since_ms: u64,
) -> Result<usize, KafkaError> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if count <= known {
            return Ok(known.max(count));
        }
        let mut wanted = TopicPartitionList::new();
        for partition in known..count {
            wanted.add_partition_offset(&topic, partition as i32, Offset::Offset(since_ms as i64))?;
        }
        // Start one TTL back; partitions with nothing that recent start at their end.
        let assignment = match consumer.offsets_for_times(wanted.clone(), LOOKUP_TIMEOUT) {
            Ok(found) => {
                let mut assignment = TopicPartitionList::new();
                for element in found.elements() {
                    let offset = match element.offset() {
                        Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                        _ => Offset::End,
                    };
                    assignment.add_partition_offset(&topic, element.partition(), offset)?;
                }
                assignment
            }
            Err(e) => {
                tracing::warn!(error = %e, "offset lookup by time failed; reading new replies only");
                let mut assignment = TopicPartitionList::new();
                for partition in known..count {
                    assignment.add_partition_offset(&topic, partition as i32, Offset::End)?;
                }
                assignment
            }
        };
        consumer.incremental_assign(&assignment)?;
        Ok(count)
    })
    .await
    .expect("the partition lookup task does not panic")
}

/// Records one reply-topic message in the cache. Chunks are not final replies.
fn handle(message: &BorrowedMessage<'_>, cache: &ReplyCache, metrics: &IngressMetrics) {
    let kind = message.headers().and_then(|h| {
        h.iter()
            .find(|header| header.key == headers::KIND)
            .and_then(|header| header.value)
    });
    if kind == Some(headers::KIND_CHUNK.as_bytes()) {
        return;
    }
    let span = semconv::kafka_process_span(&semconv::Consumed {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        group: None,
    });
    propagation::adopt_remote_parent(&span, propagation::extract_kafka(message.headers()));
    let _entered = span.enter();
    let reply: Reply = match message.payload().map(serde_json::from_slice) {
        Some(Ok(reply)) => reply,
        Some(Err(e)) => {
            metrics.undecodable_replies.inc();
            tracing::warn!(error = %e, offset = message.offset(), "skipping an undecodable reply");
            return;
        }
        None => {
            metrics.undecodable_replies.inc();
            return;
        }
    };
    span.record("request_id", reply.id.as_str());
    metrics
        .replies
        .get_or_create(&StatusLabel {
            status: reply.status.as_str().into(),
        })
        .inc();
    if cache.record_final(reply) == Recorded::Duplicate {
        metrics.duplicate_replies.inc();
    }
    metrics.cached.set(cache.len() as i64);
}
