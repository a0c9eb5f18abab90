//! Reads a dead-letter topic from the beginning to its end, without a consumer group:
//! every partition is assigned from its first offset and nothing is ever committed, so
//! reading never disturbs the workers or another reader.
//!
//! "The end" is where librdkafka reports partition EOF: the fetch position has reached
//! the high watermark of a Fetch response. That works on Kafka and on tansu alike (tansu's
//! ListOffsets answer is wrong, its Fetch high watermark is right) and skips transaction
//! markers that would keep a "last offset + 1" comparison waiting forever.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::rfc3339::parse_rfc3339_ms;
use crate::config::KafkaConfig;
use crate::envelope::headers;
use crate::kafka::metadata::partition_ids;
use crate::kafka::{header_pairs, unjoined_reader_config};

/// How long a read may go without a record or an EOF before it stops where it is.
const IDLE_LIMIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(200);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// One dead letter as read from the DLQ topic, owned.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DlqRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's own timestamp, unix ms.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Every header in record order: the original request's, then sluice's error headers,
    /// then whatever the dead-letter write itself added (its trace context).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Headers that describe the dead-lettering, not the request.
pub(crate) fn is_dead_letter_header(key: &str) -> bool {
    key.starts_with("sluice-error-") || key.starts_with("sluice-source-") || key == headers::WORKER
}

impl DlqRecord {
    pub(crate) fn from_message<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: header_pairs(message.headers()),
        }
    }

    /// The first header named `key`, as text (lossy for non-UTF-8 bytes).
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn reason(&self) -> Option<String> {
        self.header(headers::ERROR_REASON)
    }

    pub fn class(&self) -> Option<String> {
        self.header(headers::ERROR_CLASS)
    }

    pub fn attempts(&self) -> Option<u32> {
        self.header(headers::ERROR_ATTEMPTS)?.parse().ok()
    }

    pub fn worker(&self) -> Option<String> {
        self.header(headers::WORKER)
    }

    pub(crate) fn source_topic(&self) -> Option<String> {
        self.header(headers::SOURCE_TOPIC).filter(|t| !t.is_empty())
    }

    pub(crate) fn source_partition(&self) -> Option<i32> {
        self.header(headers::SOURCE_PARTITION)?.parse().ok()
    }

    pub(crate) fn source_offset(&self) -> Option<i64> {
        self.header(headers::SOURCE_OFFSET)?.parse().ok()
    }

    /// When it was dead-lettered: `sluice-error-at`, else the record timestamp.
    pub fn at_ms(&self) -> Option<i64> {
        self.header(headers::ERROR_AT)
            .and_then(|at| parse_rfc3339_ms(&at).ok())
            .or(self.timestamp_ms)
    }

    /// The request id: the `sluice-id` header, else the `id` of a JSON value.
    pub fn id(&self) -> Option<String> {
        self.header(headers::ID)
            .filter(|id| !id.is_empty())
            .or_else(|| {
                let value: serde_json::Value =
                    serde_json::from_slice(self.value.as_deref()?).ok()?;
                value.get("id")?.as_str().map(str::to_string)
            })
    }

    /// The request's own headers: those before sluice's first dead-letter header (what
    /// the dead-letter write appended after them, such as its trace context, is not the
    /// request's), without any dead-letter header. All headers if there is none.
    pub(crate) fn original_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let end = self
            .headers
            .iter()
            .position(|(k, _)| is_dead_letter_header(k))
            .unwrap_or(self.headers.len());
        self.headers[..end]
            .iter()
            .filter(|(k, _)| !is_dead_letter_header(k))
            .cloned()
            .collect()
    }
}

/// Reader callbacks: partition EOF is how the reader knows it is done, not an error.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error != KafkaError::Global(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// What a read covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadSummary {
    pub partitions: usize,
    /// Records read (matching or not).
    pub read: u64,
    /// Whether every partition was read to its end (false after a stop, a cancel, or a
    /// partition that stayed silent for [`IDLE_LIMIT`]).
    pub complete: bool,
}

/// Reads `topic` from the beginning, calling `visit` for each record until it breaks,
/// `cancel` fires or every partition reached its end. Blocking: run it on a blocking thread.
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    cancel: &CancellationToken,
    mut visit: impl FnMut(DlqRecord) -> ControlFlow<()>,
) -> anyhow::Result<ReadSummary> {
    let consumer: BaseConsumer<ReaderContext> =
        unjoined_reader_config(kafka, "ops", &[("auto.offset.reset", "earliest")], true)
            .create_with_context(ReaderContext)
            .context("creating the dead-letter reader")?;
    let partitions = partition_ids(&consumer, topic, METADATA_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let mut pending: BTreeSet<i32> = partitions.iter().copied().collect();
    let mut summary = ReadSummary {
        partitions: partitions.len(),
        read: 0,
        complete: false,
    };
    let mut last_event = Instant::now();
    while !pending.is_empty() {
        if cancel.is_cancelled() {
            return Ok(summary);
        }
        match consumer.poll(POLL) {
            None if last_event.elapsed() >= IDLE_LIMIT => {
                tracing::warn!(topic, partitions = ?pending, idle_s = IDLE_LIMIT.as_secs(),
                    "no end reported for these partitions; stopping the read here");
                return Ok(summary);
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                pending.remove(&partition);
                last_event = Instant::now();
            }
            // Logged by ReaderContext::error; librdkafka retries on its own.
            Some(Err(_)) => {}
            Some(Ok(message)) => {
                last_event = Instant::now();
                summary.read += 1;
                if visit(DlqRecord::from_message(&message)).is_break() {
                    return Ok(summary);
                }
            }
        }
    }
    summary.complete = true;
    Ok(summary)
}

#[cfg(test)]
mod tests;
