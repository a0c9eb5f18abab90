//! The worker's lag: messages of its assigned request partitions not yet done (waiting in
//! Kafka, fetched, buffered or in flight), measured every housekeeping tick so the gauge
//! that autoscaling reads follows the backlog within a second both ways.
//!
//! Per partition it is the end of the log (high watermark) minus the first offset not yet
//! done. The end of the log is the larger of librdkafka's cached watermark (refreshed by
//! every fetch response, so current while the worker fetches) and one queried from the
//! broker every [`REFRESH`] (current when fetching has stopped because the local queue is
//! full; low on tansu, never high: see [`crate::kafka::watermarks`]). The first offset
//! not done is the offset tracker's, else the consumer's position,
//! else the committed offset. librdkafka's statistics (`consumer_lag`) are not used: they
//! come every few seconds and measure against the committed offset, and on some brokers
//! they lack the watermark altogether.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::watermarks::{cached_high_watermark, listed_watermarks};

/// How often the broker is asked for watermarks and committed offsets.
const REFRESH: Duration = Duration::from_secs(1);
/// Longest one broker query may block.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

type Partition = (String, i32);

/// What the broker said at the last refresh.
#[derive(Debug, Default)]
struct Queried {
    /// High watermark per partition.
    high: HashMap<Partition, i64>,
    /// Committed offset per partition (absent: none committed yet).
    committed: HashMap<Partition, i64>,
    /// Low watermark per partition, where nothing was committed.
    low: HashMap<Partition, i64>,
}

/// Measures the lag of the request partitions assigned to this worker.
pub struct LagMeter {
    consumer: Arc<WorkerConsumer>,
    topics: Vec<String>,
    tracker: Arc<Mutex<OffsetTracker>>,
    queried: Arc<Mutex<Queried>>,
    refreshing: bool,
    refreshed_at: Option<Instant>,
    refresh_done: Arc<std::sync::atomic::AtomicBool>,
}

impl LagMeter {
    pub fn new(
        consumer: Arc<WorkerConsumer>,
        topics: Vec<String>,
        tracker: Arc<Mutex<OffsetTracker>>,
    ) -> Self {
        Self {
            consumer,
            topics,
            tracker,
            queried: Arc::default(),
            refreshing: false,
            refreshed_at: None,
            refresh_done: Arc::default(),
        }
    }

    /// The lag now; starts a broker query in the background when one is due.
    pub(crate) fn measure(&mut self) -> i64 {
        let assigned = self.assigned();
        self.refresh_if_due(&assigned);
        let positions = self.consumer.position().ok();
        let queried = lock(&self.queried);
        let tracker = self
            .tracker
            .lock()
            .expect("offset tracker lock is never poisoned: no panics while held");
        assigned
            .iter()
            .map(|key| {
                let (topic, partition) = (key.0.as_str(), key.1);
                let cached = cached_high_watermark(&*self.consumer, topic, partition);
                let high = cached.max(queried.high.get(key).copied().unwrap_or(-1));
                let position = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                let done_below = tracker
                    .first_not_done(topic, partition)
                    .or(position)
                    .or_else(|| queried.committed.get(key).copied())
                    .or_else(|| queried.low.get(key).copied());
                match done_below {
                    Some(done_below) if high >= 0 => (high - done_below).max(0),
                    _ => 0,
                }
            })
            .sum()
    }

    /// The request partitions assigned now.
    fn assigned(&self) -> Vec<Partition> {
        self.consumer
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .filter(|e| self.topics.iter().any(|t| t == e.topic()))
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn refresh_if_due(&mut self, assigned: &[Partition]) {
        use std::sync::atomic::Ordering;
        if self.refreshing && self.refresh_done.swap(false, Ordering::AcqRel) {
            self.refreshing = false;
        }
        let due = self.refreshed_at.is_none_or(|at| at.elapsed() >= REFRESH);
        if self.refreshing || !due || assigned.is_empty() {
            return;
        }
        self.refreshing = true;
        self.refreshed_at = Some(Instant::now());
        let (consumer, queried, done) = (
            self.consumer.clone(),
            self.queried.clone(),
            self.refresh_done.clone(),
        );
        let assigned = assigned.to_vec();
        tokio::task::spawn_blocking(move || {
            let fresh = query(&consumer, &assigned);
            *lock(&queried) = fresh;
            done.store(true, Ordering::Release);
        });
    }
}

/// Asks the broker for the watermarks and committed offsets of `assigned` (blocking).
fn query(consumer: &WorkerConsumer, assigned: &[Partition]) -> Queried {
    let mut queried = Queried::default();
    for key in assigned {
        if let Ok((low, high)) = listed_watermarks(consumer, &key.0, key.1, QUERY_TIMEOUT) {
            queried.high.insert(key.clone(), high);
            queried.low.insert(key.clone(), low);
        }
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition) in assigned {
        list.add_partition(topic, *partition);
    }
    if let Ok(committed) = consumer.committed_offsets(list, QUERY_TIMEOUT) {
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                queried
                    .committed
                    .insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }
    queried
}

fn lock(queried: &Mutex<Queried>) -> std::sync::MutexGuard<'_, Queried> {
    queried
        .lock()
        .expect("lag lock is never poisoned: no panics while held")
}
