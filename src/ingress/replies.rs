//! The reply-topic reader. Each ingress instance reads every partition of the reply
//! topic itself (no consumer group, no commits), starting one result-TTL back in time
//! so a restarted instance can still answer for recent requests, and feeds the cache.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::kafka::log::KafkaLog;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::cache::{Recorded, ReplyCache};
use super::metrics::{IngressMetrics, StatusLabel};
use super::tenants::Tenants;
use super::waiters::{ReplyEvent, Waiters};
use crate::admin::Readiness;
use crate::config::Config;
use crate::envelope::now_ms;
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
    let consumer: Arc<StreamConsumer<KafkaLog>> = Arc::new(crate::kafka::log::create(
        crate::kafka::unjoined_reader_config(
            &config.kafka,
            "ingress",
            // A sync or streamed caller waits on this reader: an idle fetch is held
            // at most 10 ms (the cost: an idle fetch every 10 ms per broker).
            &[("fetch.wait.max.ms", "10")],
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
                Ok(message) => handle(&message, &sink),
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
