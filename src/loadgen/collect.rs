//! The reply-topic reader. No consumer group ([`crate::kafka::reader`]): every partition
//! is assigned at a concrete offset looked up BEFORE the first send, so each reply to this
//! run is read and older ones are mostly skipped; the ledger ignores whatever older
//! replies remain.
//!
//! The start offset of a partition is the lower of two lookups: the first record at or
//! after "now minus a margin" (`offsets_for_times`, exact on Apache Kafka) and the high
//! watermark. Neither is exact on tansu — its high watermark is the base offset of the
//! last batch plus one, and a time lookup answers 0 — but both err low, never high, so
//! on tansu the reader re-reads (and ignores) older replies and misses none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, Outcome};
use crate::config::KafkaConfig;
use crate::envelope::{now_ms, Reply, Status};
use crate::kafka::reader::{Start, TopicReader};
use crate::kafka::reply_record::{self, ReplyRecord};

/// Time limit of one blocking metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How far back the time lookup starts, to absorb clock skew between this host and
/// the broker or the workers that stamp replies.
const CLOCK_MARGIN_MS: u64 = 5_000;
/// Pause after a failed receive.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

/// A reader positioned on every partition of the reply topic.
pub(crate) struct ReplyReader {
    reader: TopicReader,
    pub partitions: usize,
}

impl ReplyReader {
    /// Looks up start offsets and assigns every partition of `topic`. Call before sending.
    pub async fn position(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<ReplyReader> {
        let mut reader = TopicReader::new(
            kafka,
            topic,
            "loadgen",
            &[
                ("fetch.wait.max.ms", "50"),
                ("auto.offset.reset", "earliest"),
            ],
            LOOKUP_TIMEOUT,
        )
        .context("creating the reply-topic consumer")?;
        let since = now_ms().saturating_sub(CLOCK_MARGIN_MS);
        let partitions = match reader
            .assign_new(Start::SinceNoLaterThanNow { ms: since })
            .await
        {
            Ok(partitions) => partitions,
            Err(e) if e.is_absent() => anyhow::bail!(
                "reply topic {topic} does not exist (or has no partitions); create it or start a worker first"
            ),
            Err(e) => return Err(e.into()),
        };
        Ok(ReplyReader { reader, partitions })
    }

    /// Feeds final replies into `ledger` until `stop`.
    pub async fn run(self, ledger: Arc<Ledger>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = self.reader.recv_or_pause(ERROR_PAUSE, |e| {
                    tracing::warn!(error = %e, "reading the reply topic failed; retrying");
                }) => {
                    if let Some(message) = message {
                        record(&message, &ledger);
                    }
                }
            }
        }
    }
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
            served_by: None,
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
