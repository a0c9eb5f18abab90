//! The reply-topic reader. No consumer group: every partition is assigned at a concrete
//! offset looked up BEFORE the first send, so each reply to this run is read and older
//! ones are mostly skipped; the ledger ignores whatever older replies remain.
//!
//! The start offset of a partition is the lower of two lookups: the first record at or
//! after "now minus a margin" (`offsets_for_times`, exact on Apache Kafka) and the high
//! watermark. Neither is exact on tansu — its high watermark is the base offset of the
//! last batch plus one, and a time lookup answers 0 — but both err low, never high, so
//! on tansu the reader re-reads (and ignores) older replies and misses none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, Outcome};
use crate::config::KafkaConfig;
use crate::envelope::{now_ms, Reply, Status};
use crate::kafka::reply_record::{self, ReplyRecord};

/// Time limit of one blocking metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How far back the time lookup starts, to absorb clock skew between this host and
/// the broker or the workers that stamp replies.
const CLOCK_MARGIN_MS: u64 = 5_000;

/// A reader positioned on every partition of the reply topic.
pub struct ReplyReader {
    consumer: StreamConsumer,
    pub partitions: usize,
}

impl ReplyReader {
    /// Looks up start offsets and assigns every partition of `topic`. Call before sending.
    pub async fn position(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<ReplyReader> {
        let consumer: StreamConsumer = crate::kafka::unjoined_reader_config(
            kafka,
            "loadgen",
            &[
                ("fetch.wait.max.ms", "50"),
                ("auto.offset.reset", "earliest"),
            ],
            false,
        )
        .create()
        .context("creating the reply-topic consumer")?;
        let topic = topic.to_string();
        let (consumer, partitions) = tokio::task::spawn_blocking(move || {
            start_at_now(&consumer, &topic).map(|partitions| (consumer, partitions))
        })
        .await
        .expect("the offset lookup task does not panic")?;
        Ok(ReplyReader {
            consumer,
            partitions,
        })
    }

    /// Feeds final replies into `ledger` until `stop`.
    pub async fn run(self, ledger: Arc<Ledger>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = self.consumer.recv() => match message {
                    Ok(message) => record(&message, &ledger),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the reply topic failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
    }
}

/// Assigns every partition of `topic` at its start offset; returns the partition count.
fn start_at_now(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .with_context(|| format!("reading metadata of reply topic {topic}"))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        count > 0,
        "reply topic {topic} does not exist (or has no partitions); create it or start a worker first"
    );
    let since = now_ms().saturating_sub(CLOCK_MARGIN_MS) as i64;
    let mut by_time = TopicPartitionList::new();
    for partition in 0..count as i32 {
        by_time.add_partition_offset(topic, partition, Offset::Offset(since))?;
    }
    let found = consumer
        .offsets_for_times(by_time, LOOKUP_TIMEOUT)
        .with_context(|| format!("looking up offsets by time on {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..count as i32 {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)
            .with_context(|| format!("reading the high watermark of {topic}/{partition}"))?;
        let by_time = found
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            });
        let start = by_time.map_or(high, |o| o.min(high)).max(0);
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    }
    tracing::debug!(topic, ?assignment, "reply reader start offsets");
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of {topic}"))?;
    Ok(count)
}

/// Records one reply-topic message; chunks and undecodable values are skipped.
fn record(message: &BorrowedMessage<'_>, ledger: &Ledger) {
    let seen_at = Instant::now();
    match reply_record::decode(message) {
        Ok(ReplyRecord::Final(reply)) => {
            ledger.finish(&reply.id, outcome(&reply), seen_at);
        }
        Ok(ReplyRecord::Chunk(_)) => {}
        Err(e) => {
            tracing::debug!(offset = message.offset(), error = %e, "skipping an undecodable reply")
        }
    }
}

/// A reply as the ledger keeps it.
pub fn outcome(reply: &Reply) -> Outcome {
    let failure = match reply.status {
        Status::Ok => None,
        Status::Error => Some(match &reply.error {
            Some(e) => e.status.map_or_else(|| e.kind.clone(), |s| s.to_string()),
            None => "error".into(),
        }),
        other => Some(other.as_str().to_string()),
    };
    Outcome {
        status: reply.status.as_str(),
        failure,
        queue_ms: Some(reply.timing.queue_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ReplyError, Timing};

    fn reply(status: Status, error: Option<ReplyError>) -> Reply {
        Reply {
            tenant: None,
            v: 1,
            id: "x".into(),
            status,
            attempts: 1,
            body: None,
            error,
            usage: None,
            timing: Timing {
                queue_ms: 42,
                ..Timing::default()
            },
            metadata: None,
        }
    }

    #[test]
    fn failures_are_named_by_backend_status_then_error_type() {
        let status_429 = ReplyError {
            kind: "backend_status".into(),
            message: "busy".into(),
            status: Some(429),
        };
        let timeout = ReplyError {
            kind: "timeout".into(),
            message: "slow".into(),
            status: None,
        };
        let named = |r: Reply| outcome(&r).failure;
        assert_eq!(named(reply(Status::Ok, None)), None);
        assert_eq!(
            named(reply(Status::Error, Some(status_429))).as_deref(),
            Some("429")
        );
        assert_eq!(
            named(reply(Status::Error, Some(timeout))).as_deref(),
            Some("timeout")
        );
        assert_eq!(
            named(reply(Status::Expired, None)).as_deref(),
            Some("expired")
        );
        assert_eq!(outcome(&reply(Status::Ok, None)).queue_ms, Some(42));
    }
}
