//! End offsets (high watermarks) of partitions, and the committed offsets of a group,
//! read without joining it: the one place sluice finds out where a log ends. Three ways,
//! each where it is right:
//!
//! - [`Sampler`]: exact on every broker, for figures that are reported (`sluice lag`, the
//!   ingress's admission control and status page). The high watermark that Fetch
//!   responses carry, read from librdkafka's statistics (`hi_offset`) of a probe consumer
//!   assigned at the end of every partition. librdkafka sets `hi_offset` only from Fetch
//!   responses, so a value >= 0 is the broker's own answer. ListOffsets is not used:
//!   tansu answers it wrongly once a record batch holds more than one record (measured:
//!   11 for 12 records in three batches, 1 for 5 in one), and `fetch_watermarks` is built
//!   on it; `offsets_for_times` past the last record gives 0 on tansu and, on Kafka (and
//!   librdkafka's mock cluster), no offset at all (-1, the logical end), never the end
//!   offset's number. At the end of the log a Fetch returns no records on Kafka; on tansu
//!   it returns the tail after the wrong ListOffsets answer, which the probe drops.
//!   tests/ops.rs checks the method on both brokers. Committed offsets:
//!   `committed_offsets` (OffsetFetch) from a consumer configured with the group id that
//!   never subscribes or commits, so the group never sees a new member.
//! - [`cached_high_watermark`]: free (no request), from a consumer's own latest Fetch
//!   response, so right on every broker but only as current as that fetch.
//! - [`listed_watermarks`]: ListOffsets (`fetch_watermarks`), one request. Exact on Kafka,
//!   low on tansu (above), never high: for callers that take the lower or higher of it
//!   and something else, where low is the safe side (the worker's lag takes the larger
//!   with the cached one; loadgen starts reading no later than it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::log::KafkaLog;
use super::metadata::{partition_ids, TopicError};
use super::{client_config, unjoined_group_id, ClientKind};
use crate::config::KafkaConfig;

/// How long one sample may wait for a Fetch answer from every partition.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(15);
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the partitions of a sampled topic.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Why a [`Sampler`] could not start or sample.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SampleError {
    #[error("creating the committed-offsets client")]
    GroupClient(#[source] KafkaError),
    #[error("creating the end-offset probe")]
    Probe(#[source] KafkaError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("assigning the probe")]
    Assign(#[source] KafkaError),
    #[error("reading the group's committed offsets")]
    Committed(#[source] KafkaError),
    #[error("no end offset within {timeout:?} for {missing}")]
    NoEndOffset { timeout: Duration, missing: String },
    #[error("interrupted")]
    Interrupted,
}

/// One partition at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None` when it has none.
    pub committed: Option<i64>,
    /// Log start offset.
    pub low: i64,
    /// End offset (high watermark): the offset the next record will get.
    pub high: i64,
}

/// The latest statistics of the probe: `(topic, partition) -> (low, high)`.
#[derive(Debug, Default)]
struct Marks {
    /// Statistics emissions seen so far; tells a fresh emission from an old one.
    seq: u64,
    marks: HashMap<(String, i32), (i64, i64)>,
}

/// Probe context: keeps the watermarks of the latest statistics emission, and logs as
/// every other client does ([`KafkaLog`]: an outage is summarised, not an error a line).
struct StatsContext {
    marks: Mutex<Marks>,
    log: KafkaLog,
}

impl ClientContext for StatsContext {
    /// Parsed by hand, field by field: a statistics layout the typed parser does not
    /// know would otherwise drop every emission.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.on_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.on_error(error, reason);
    }

    fn stats_raw(&self, raw: &[u8]) {
        self.log.on_stats(raw);
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(raw) else {
            return;
        };
        let mut marks = HashMap::new();
        for (topic, t) in stats["topics"].as_object().into_iter().flatten() {
            for p in t["partitions"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
            {
                let field = |k: &str| p[k].as_i64();
                if let (Some(partition), Some(low), Some(high)) =
                    (field("partition"), field("lo_offset"), field("hi_offset"))
                {
                    if let Ok(partition @ 0..) = i32::try_from(partition) {
                        marks.insert((topic.clone(), partition), (low, high));
                    }
                }
            }
        }
        let mut latest = self
            .marks
            .lock()
            .expect("marks lock is never poisoned: no panics while held");
        latest.seq += 1;
        latest.marks = marks;
    }
}

impl ConsumerContext for StatsContext {}

/// Samples committed and end offsets of every partition of some topics.
pub(crate) struct Sampler {
    /// Carries the group id; only ever asked for committed offsets.
    group: BaseConsumer<KafkaLog>,
    /// Assigned at the end of every partition, never commits; feeds [`StatsContext`].
    probe: BaseConsumer<StatsContext>,
    partitions: TopicPartitionList,
}

impl Sampler {
    /// Looks the partitions of `topics` up, and of each of `optional` the cluster has (a
    /// pool's overflow topic before a worker created it), and starts the probe. Blocking.
    pub fn new(
        kafka: &KafkaConfig,
        group: &str,
        topics: &[String],
        optional: &[String],
    ) -> Result<Self, SampleError> {
        let no_commits = [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ];
        let mut with_group = no_commits.to_vec();
        with_group.push(("group.id", group));
        let group: BaseConsumer<KafkaLog> = crate::kafka::log::create(
            client_config(kafka, ClientKind::Consumer, &[], &with_group),
            &kafka.bootstrap_servers,
        )
        .map_err(SampleError::GroupClient)?;
        let probe_group = unjoined_group_id("watermarks");
        let mut probe_enforced = no_commits.to_vec();
        probe_enforced.push(("statistics.interval.ms", "100"));
        probe_enforced.push(("group.id", &probe_group));
        let probe: BaseConsumer<StatsContext> = client_config(
            kafka,
            ClientKind::Consumer,
            &[
                ("fetch.wait.max.ms", "100"),
                ("queued.max.messages.kbytes", "1024"),
                ("auto.offset.reset", "earliest"),
            ],
            &probe_enforced,
        )
        .create_with_context(StatsContext {
            marks: Mutex::default(),
            log: KafkaLog::new(&kafka.bootstrap_servers),
        })
        .map_err(SampleError::Probe)?;
        let mut partitions = TopicPartitionList::new();
        let mut at_end = TopicPartitionList::new();
        let present = optional.iter().filter_map(|topic| {
            match partition_ids(&probe, topic, METADATA_TIMEOUT) {
                Err(e) if e.is_absent() => None,
                found => Some((topic, found)),
            }
        });
        let required = topics
            .iter()
            .map(|topic| (topic, partition_ids(&probe, topic, METADATA_TIMEOUT)));
        for (topic, ids) in required.chain(present) {
            for id in ids? {
                partitions.add_partition(topic, id);
                at_end
                    .add_partition_offset(topic, id, Offset::End)
                    .map_err(SampleError::Assign)?;
            }
        }
        probe.assign(&at_end).map_err(SampleError::Assign)?;
        Ok(Self {
            group,
            probe,
            partitions,
        })
    }

    /// Committed offsets now, then end offsets from the first statistics emitted after
    /// that read (a high watermark at most one Fetch round trip old); lags that come out
    /// negative are reported as 0. Returns the instant of the committed read. Blocking.
    pub fn sample(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Instant, Vec<PartitionSample>), SampleError> {
        // Statistics queued while nobody polled are old; consume them first. (A poll
        // that only served statistics returns None too, so watch the counter.)
        for _ in 0..100_000 {
            let seen = self.marks(|m| m.seq);
            if self.probe.poll(Duration::ZERO).is_none() && self.marks(|m| m.seq) == seen {
                break;
            }
        }
        let seq = self.marks(|m| m.seq);
        let committed = self
            .group
            .committed_offsets(self.partitions.clone(), COMMITTED_TIMEOUT)
            .map_err(SampleError::Committed)?;
        let at = Instant::now();
        loop {
            let found = self.marks(|m| {
                (m.seq > seq).then(|| {
                    let missing: Vec<String> = self
                        .partitions
                        .elements()
                        .iter()
                        .filter(|e| {
                            !m.marks
                                .get(&(e.topic().to_string(), e.partition()))
                                .is_some_and(|&(low, high)| low >= 0 && high >= 0)
                        })
                        .map(|e| format!("{}/{}", e.topic(), e.partition()))
                        .collect();
                    (missing, m.marks.clone())
                })
            });
            match found {
                Some((missing, marks)) if missing.is_empty() => {
                    return Ok((at, samples(&committed, &marks)));
                }
                Some((missing, _)) if at.elapsed() >= SAMPLE_TIMEOUT => {
                    return Err(SampleError::NoEndOffset {
                        timeout: SAMPLE_TIMEOUT,
                        missing: missing.join(", "),
                    });
                }
                _ if cancel.is_cancelled() => return Err(SampleError::Interrupted),
                _ => self.idle(POLL),
            }
        }
    }

    /// Keeps the probe served for `duration`. Blocking.
    pub fn idle(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while let Some(left) = until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            // Records at the tail are not needed; only the statistics are.
            if let Some(Err(e)) = self.probe.poll(left.min(POLL)) {
                tracing::debug!(error = %e, "end-offset probe");
            }
        }
    }

    fn marks<T>(&self, f: impl FnOnce(&Marks) -> T) -> T {
        f(&self
            .probe
            .context()
            .marks
            .lock()
            .expect("marks lock is never poisoned: no panics while held"))
    }
}

fn samples(
    committed: &TopicPartitionList,
    marks: &HashMap<(String, i32), (i64, i64)>,
) -> Vec<PartitionSample> {
    committed
        .elements()
        .iter()
        .map(|e| {
            let key = (e.topic().to_string(), e.partition());
            let (low, high) = *marks
                .get(&key)
                .expect("every partition has marks: sample() waits for them");
            PartitionSample {
                topic: key.0,
                partition: key.1,
                committed: match e.offset() {
                    Offset::Offset(n) if n >= 0 => Some(n),
                    _ => None,
                },
                low,
                high,
            }
        })
        .collect()
}

/// librdkafka's last-known high watermark of a partition, from `consumer`'s latest Fetch
/// response (no broker request); -1 when unknown.
pub(crate) fn cached_high_watermark<C, K>(consumer: &K, topic: &str, partition: i32) -> i64
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let Ok(topic) = std::ffi::CString::new(topic) else {
        return -1;
    };
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid C
    // string for the call; librdkafka only writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        high
    } else {
        -1
    }
}

/// A partition's `(low, high)` watermarks by ListOffsets: exact on Kafka, low on tansu
/// (see the module comment), never high. Blocking.
pub(crate) fn listed_watermarks<C, K>(
    consumer: &K,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> KafkaResult<(i64, i64)>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    consumer.fetch_watermarks(topic, partition, timeout)
}
