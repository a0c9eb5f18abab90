//! A reader of every partition of one topic outside any consumer group: it assigns the
//! partitions itself, never commits and never joins, so any number of them read the
//! same records without moving anyone's position (the ingress's reply reader, loadgen's,
//! the group's control-topic reader). The shared mechanics live here: partitions from
//! metadata and start offsets looked up off the async threads, the assignment, a receive
//! that pauses after an error, a drop off the async threads. What differs between
//! readers is a parameter: where they start ([`Start`]), their client overrides, how long
//! a lookup may take, and what a missing topic or a failed receive means to them.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::log::KafkaLog;
use super::metadata::{partition_ids, TopicError};
use super::unjoined_reader_config;
use super::watermarks::listed_watermarks;
use crate::config::KafkaConfig;

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Its first record.
    Beginning,
    /// What is written after the first fetch.
    End,
    /// The first record stamped at or after `ms` (unix milliseconds); a partition with
    /// nothing that recent starts at its end, and every new partition does (with a
    /// warning) when the broker cannot answer the lookup.
    Since { ms: u64 },
    /// A concrete offset looked up now, never the logical end (resolved only at the first
    /// fetch, so a record written in between would be missed): the lower of the first
    /// record at or after `ms` and the high watermark ([`listed_watermarks`]). Both err
    /// low on tansu, never high, so nothing written after this call is missed. A failed
    /// lookup is an error.
    SinceNoLaterThanNow { ms: u64 },
}

/// Why partitions could not be assigned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReaderError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("looking up offsets by time on {topic}")]
    ByTime {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading the high watermark of {topic}/{partition}")]
    Watermark {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("assigning the partitions of {topic}")]
    Assign {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

impl ReaderError {
    /// The broker has no partitions of the topic to give (it does not exist yet).
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, ReaderError::Topic(e) if e.is_absent())
    }
}

/// A consumer assigned to every partition of one topic.
pub(crate) struct TopicReader {
    /// Shared with the blocking lookups; dropped off the async threads by [`Self::close`].
    consumer: Arc<StreamConsumer<KafkaLog>>,
    topic: String,
    /// Longest wait of one metadata or offset lookup.
    lookup_timeout: Duration,
    /// How many partitions are assigned: the topic's first ones by id (partitions are
    /// only ever added).
    assigned: usize,
}

impl TopicReader {
    /// A reader of `topic` with nothing assigned yet; `overrides` are its client defaults
    /// (the operator's `kafka.client` still wins), `purpose` names its throwaway group id.
    pub fn new(
        kafka: &KafkaConfig,
        topic: &str,
        purpose: &str,
        overrides: &[(&str, &str)],
        lookup_timeout: Duration,
    ) -> KafkaResult<Self> {
        let config = unjoined_reader_config(kafka, purpose, overrides, false);
        Ok(Self {
            consumer: Arc::new(super::log::create(config, &kafka.bootstrap_servers)?),
            topic: topic.to_string(),
            lookup_timeout,
            assigned: 0,
        })
    }

    /// Assigns, at `start`, the partitions the topic gained since the last call (every
    /// one the first time); returns how many are assigned now. A topic that cannot be
    /// found once some are assigned keeps them (a metadata answer without it changes
    /// nothing being read).
    pub(crate) async fn assign_new(&mut self, start: Start) -> Result<usize, ReaderError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let (known, timeout) = (self.assigned, self.lookup_timeout);
        let assigned = tokio::task::spawn_blocking(move || {
            assign_new_blocking(&consumer, &topic, known, start, timeout)
        })
        .await
        .expect("the partition lookup task does not panic");
        match assigned {
            Ok(count) => {
                self.assigned = count;
                Ok(count)
            }
            Err(e) if e.is_absent() && self.assigned > 0 => Ok(self.assigned),
            Err(e) => Err(e),
        }
    }

    /// The next message. A failed receive (a broker away fails every one at once) goes
    /// to `on_error`, for each reader to log at its own level, and is followed by `pause`
    /// before `None`, so a reader that loops on this does not spin.
    pub(crate) async fn recv_or_pause(
        &self,
        pause: Duration,
        on_error: impl FnOnce(&KafkaError),
    ) -> Option<BorrowedMessage<'_>> {
        match self.consumer.recv().await {
            Ok(message) => Some(message),
            Err(e) => {
                on_error(&e);
                tokio::time::sleep(pause).await;
                None
            }
        }
    }

    /// Drops the consumer off the async threads: closing it blocks on librdkafka.
    pub async fn close(self) {
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

/// [`TopicReader::assign_new`]'s lookups and assignment. Blocking.
fn assign_new_blocking(
    consumer: &StreamConsumer<KafkaLog>,
    topic: &str,
    known: usize,
    start: Start,
    timeout: Duration,
) -> Result<usize, ReaderError> {
    let ids = partition_ids(consumer, topic, timeout)?;
    if ids.len() <= known {
        return Ok(known);
    }
    let new = &ids[known..];
    let offsets = start_offsets(consumer, topic, new, start, timeout)?;
    let assign_error = |source| ReaderError::Assign {
        topic: topic.to_string(),
        source,
    };
    let mut assignment = TopicPartitionList::new();
    for (&partition, offset) in new.iter().zip(offsets) {
        assignment
            .add_partition_offset(topic, partition, offset)
            .map_err(assign_error)?;
    }
    tracing::debug!(topic, ?assignment, "reader start offsets");
    // Adds to what is assigned; with nothing assigned yet it is a plain assign.
    consumer
        .incremental_assign(&assignment)
        .map_err(assign_error)?;
    Ok(ids.len())
}

/// Where each of `partitions` starts. Blocking.
fn start_offsets(
    consumer: &StreamConsumer<KafkaLog>,
    topic: &str,
    partitions: &[i32],
    start: Start,
    timeout: Duration,
) -> Result<Vec<Offset>, ReaderError> {
    let every = |offset: Offset| vec![offset; partitions.len()];
    match start {
        Start::Beginning => Ok(every(Offset::Beginning)),
        Start::End => Ok(every(Offset::End)),
        Start::Since { ms } => match by_time(consumer, topic, partitions, ms, timeout) {
            Ok(found) => Ok(found
                .into_iter()
                .map(|o| o.map_or(Offset::End, Offset::Offset))
                .collect()),
            Err(e) => {
                tracing::warn!(topic, error = %e, "offset lookup by time failed; reading new records only");
                Ok(every(Offset::End))
            }
        },
        Start::SinceNoLaterThanNow { ms } => {
            let found = by_time(consumer, topic, partitions, ms, timeout).map_err(|source| {
                ReaderError::ByTime {
                    topic: topic.to_string(),
                    source,
                }
            })?;
            partitions
                .iter()
                .zip(found)
                .map(|(&partition, by_time)| {
                    let (_, high) = listed_watermarks(consumer, topic, partition, timeout)
                        .map_err(|source| ReaderError::Watermark {
                            topic: topic.to_string(),
                            partition,
                            source,
                        })?;
                    let start = by_time.map_or(high, |o| o.min(high)).max(0);
                    Ok(Offset::Offset(start))
                })
                .collect()
        }
    }
}

/// The first offset at or after `ms` of each of `partitions`: `None` where nothing is
/// that recent. Blocking.
fn by_time(
    consumer: &StreamConsumer<KafkaLog>,
    topic: &str,
    partitions: &[i32],
    ms: u64,
    timeout: Duration,
) -> KafkaResult<Vec<Option<i64>>> {
    let mut wanted = TopicPartitionList::new();
    for &partition in partitions {
        wanted.add_partition_offset(topic, partition, Offset::Offset(ms as i64))?;
    }
    let found = consumer.offsets_for_times(wanted, timeout)?;
    Ok(partitions
        .iter()
        .map(|&partition| {
            found
                .find_partition(topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
        })
        .collect())
}
