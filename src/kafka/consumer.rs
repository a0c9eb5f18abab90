//! The worker's consumer-group member. Offsets are *stored* only when a message's final
//! output was delivered (see `offsets`), and librdkafka commits what was stored in the
//! background and on revoke; a revoke also drops the tracker's state for the partition
//! so late completions from the old assignment commit nothing.

use std::sync::{Arc, Mutex};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

use super::log::{KafkaLog, STATS_INTERVAL_MS};

use super::offsets::OffsetTracker;
use crate::admin::Readiness;
use crate::config::KafkaConfig;

/// Consumer callbacks: keeps the offset tracker in step with the assignment.
pub struct WorkerContext {
    /// Shared with the pull loop, which begins and completes tickets.
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// True while this member holds an assignment (possibly empty): it has joined the group.
    pub joined: Readiness,
    /// Told the partitions assigned after every rebalance (none on revoke), e.g. to
    /// recompute this worker's share of group-wide rate limits.
    pub on_assignment: Box<dyn Fn(&TopicPartitionList) + Send + Sync>,
    /// librdkafka's logs, connection failures summarised.
    pub log: KafkaLog,
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.on_log(level, facility, message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.log.on_stats(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.on_error(error, reason);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let mut tracker = self
                    .tracker
                    .lock()
                    .expect("offset tracker lock is never poisoned: no panics while held");
                for p in partitions.elements() {
                    tracker.revoke(p.topic(), p.partition());
                }
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    /// After the assignment changed: with the cooperative protocol (the default) a revoke
    /// takes some partitions and the member stays in the group with the rest; with the
    /// eager one it takes them all until the next assignment.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let held = consumer.assignment().unwrap_or_default();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match rebalance {
            Rebalance::Assign(_) => {
                self.joined.set(true);
                (self.on_assignment)(&held);
            }
            Rebalance::Revoke(_) if cooperative => (self.on_assignment)(&held),
            Rebalance::Revoke(_) => {
                self.joined.set(false);
                (self.on_assignment)(&TopicPartitionList::new());
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// The worker's consumer type.
pub(crate) type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Creates the consumer; the caller subscribes. Fetch buffers are bounded so memory
/// does not grow with lag.
pub(crate) fn worker_consumer(
    kafka: &KafkaConfig,
    tracker: Arc<Mutex<OffsetTracker>>,
    joined: Readiness,
    on_assignment: Box<dyn Fn(&TopicPartitionList) + Send + Sync>,
    exactly_once: bool,
) -> Result<WorkerConsumer, KafkaError> {
    // Exactly-once: offsets are committed only inside the reply transactions.
    let auto_commit = if exactly_once { "false" } else { "true" };
    super::client_config(
        kafka,
        super::ClientKind::Consumer,
        &[
            ("auto.offset.reset", "earliest"),
            ("auto.commit.interval.ms", "1000"),
            ("queued.max.messages.kbytes", "8192"),
            ("queued.min.messages", "1000"),
            ("session.timeout.ms", "10000"),
            ("fetch.max.bytes", "8388608"),
            // How long a broker may hold a fetch when there is nothing new. Kafka answers
            // as soon as data arrives; some brokers (tansu) hold the fetch to its end, so
            // librdkafka's 500 ms would delay a request on an idle worker by up to that.
            // The cost is an idle fetch every 20 ms per broker.
            ("fetch.wait.max.ms", "20"),
            // Incremental rebalances: a worker joining or leaving moves only the partitions
            // that change hands, and the rest go on being served (the eager protocol stops
            // every member for the whole rebalance).
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("topic.metadata.refresh.interval.ms", "10000"),
        ],
        &[
            ("group.id", &kafka.group_id),
            ("enable.auto.commit", auto_commit),
            ("isolation.level", "read_committed"),
            ("enable.auto.offset.store", "false"),
            ("statistics.interval.ms", STATS_INTERVAL_MS),
        ],
    )
    .create_with_context(WorkerContext {
        tracker,
        joined,
        on_assignment,
        log: KafkaLog::new(&kafka.bootstrap_servers),
    })
}
