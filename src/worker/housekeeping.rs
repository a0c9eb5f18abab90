//! Periodic upkeep beside the pull loop: keeps this worker's share of each backend's
//! group-wide rate limits equal to its share of the request topics' partitions, copies
//! each backend stack's state (breaker, rate waits, limit, group figures) into the
//! metrics by backend, and writes the periodic summary line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use super::intake::Intake;
use super::lag::LagMeter;
use super::metrics::{BackendLabel, WorkerMetrics};
use super::summary::Summary;
use crate::backend::stack::Stack;
use crate::group::GroupStatus;
use crate::kafka::consumer::WorkerConsumer;

/// How often metrics are sampled and the share re-applied.
const TICK: Duration = Duration::from_millis(250);
/// How often the total partition count is re-read from the cluster.
const METADATA_REFRESH: Duration = Duration::from_secs(30);

/// Total partitions of the request topics, shared with the rebalance callback.
#[derive(Clone, Default)]
pub struct PartitionTotal(Arc<AtomicUsize>);

impl PartitionTotal {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the upkeep task reads and writes.
pub struct Upkeep {
    pub consumer: Arc<WorkerConsumer>,
    pub topics: Vec<String>,
    pub total: PartitionTotal,
    /// Every backend, by its configured name (the `backend` label).
    pub backends: Vec<Observed>,
    pub intake: Arc<Intake>,
    pub metrics: WorkerMetrics,
    /// Measures this worker's lag each tick.
    pub lag: LagMeter,
    /// `worker.max_in_flight`, for `desired_workers`.
    pub max_in_flight: usize,
}

/// One backend as the upkeep sees it.
pub struct Observed {
    /// Its configured name.
    pub name: String,
    pub stack: StackHandles,
    /// Group pacing's figures, when it is on.
    pub group: Option<Arc<GroupStatus>>,
    /// Last values of the stack's running totals, to feed counters by difference.
    seen: Seen,
}

impl Observed {
    pub fn new(name: &str, stack: StackHandles, group: Option<Arc<GroupStatus>>) -> Self {
        Self {
            name: name.to_string(),
            stack,
            group,
            seen: Seen::default(),
        }
    }
}

/// The parts of the stack that are observed (the service itself goes to the pull loop).
#[derive(Clone)]
pub struct StackHandles {
    pub rate_share: crate::backend::rate::RateShare,
    pub rate_stats: crate::backend::rate::RateStats,
    pub breaker: crate::backend::breaker::BreakerHandle,
    pub concurrency: std::sync::Arc<crate::backend::concurrency::Controller>,
}

impl StackHandles {
    pub fn of(stack: &Stack) -> Self {
        Self {
            rate_share: stack.rate_share.clone(),
            rate_stats: stack.rate_stats.clone(),
            breaker: stack.breaker.clone(),
            concurrency: stack.concurrency.clone(),
        }
    }
}

/// Runs until `shutdown`.
pub async fn run(mut upkeep: Upkeep, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    let mut refreshed: Option<tokio::time::Instant> = None;
    let mut summary = Summary::new(&upkeep.metrics);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if refreshed.is_none_or(|at| at.elapsed() >= METADATA_REFRESH) {
            let counted = tokio::select! {
                _ = shutdown.cancelled() => return,
                counted = count_partitions(&upkeep.consumer, &upkeep.topics) => counted,
            };
            if let Some(total) = counted {
                upkeep.total.0.store(total, Ordering::Relaxed);
                refreshed = Some(tokio::time::Instant::now());
            }
        }
        let assigned = upkeep
            .consumer
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .filter(|e| upkeep.topics.iter().any(|t| t == e.topic()))
                    .count()
            })
            .unwrap_or(0);
        if upkeep.total.get() > 0 {
            for backend in &upkeep.backends {
                backend
                    .stack
                    .rate_share
                    .set_share(assigned, upkeep.total.get());
            }
        }
        sample(&mut upkeep);
        let limit = upkeep
            .backends
            .iter()
            .map(|b| b.stack.concurrency.permits())
            .sum();
        summary.tick(&upkeep.metrics, limit);
    }
}

/// Last values of a stack's running totals, to feed counters by difference.
#[derive(Default)]
struct Seen {
    opens: u64,
    waits: u64,
    wait_seconds: f64,
}

fn sample(upkeep: &mut Upkeep) {
    let (m, max_in_flight) = (&upkeep.metrics, upkeep.max_in_flight);
    for backend in &mut upkeep.backends {
        sample_backend(m, backend, max_in_flight);
    }
    m.buffered.set(upkeep.intake.buffered() as i64);
    m.lag.set(upkeep.lag.measure());
}

/// One backend's figures, labelled with its name.
fn sample_backend(m: &WorkerMetrics, backend: &mut Observed, max_in_flight: usize) {
    let label = BackendLabel {
        backend: backend.name.clone(),
    };
    let (stack, seen) = (&backend.stack, &mut backend.seen);
    m.breaker_state
        .get_or_create(&label)
        .set(stack.breaker.state().as_gauge());
    let opens = stack.breaker.opens_total();
    m.breaker_opens
        .get_or_create(&label)
        .inc_by(opens.saturating_sub(seen.opens));
    seen.opens = opens;
    let waits = stack.rate_stats.waits_total();
    m.rate_limit_waits
        .get_or_create(&label)
        .inc_by(waits.saturating_sub(seen.waits));
    seen.waits = waits;
    let wait_seconds = stack.rate_stats.wait_seconds_total();
    m.rate_limit_wait_seconds
        .get_or_create(&label)
        .inc_by((wait_seconds - seen.wait_seconds).max(0.0));
    seen.wait_seconds = wait_seconds;
    m.rate_share
        .get_or_create(&label)
        .set(stack.rate_share.share());
    let concurrency = stack.concurrency.stats();
    m.concurrency_limit
        .get_or_create(&label)
        .set(concurrency.permits as i64);
    let (estimate, share, members, paced) = match &backend.group {
        Some(group) => (
            group.estimate(),
            group.permits(),
            group.members(),
            group.grouped(),
        ),
        None => (concurrency.limit, concurrency.permits, 1, false),
    };
    m.group_capacity_estimate
        .get_or_create(&label)
        .set(estimate as i64);
    m.group_share.get_or_create(&label).set(share as i64);
    m.group_members.get_or_create(&label).set(members as i64);
    m.group_paced.get_or_create(&label).set(i64::from(paced));
    m.desired_workers
        .get_or_create(&label)
        .set(desired_workers(estimate, max_in_flight) as i64);
}

/// Workers the backend can keep busy: `estimate` calls at once over workers of
/// `max_in_flight` each, rounded up, at least 1.
pub fn desired_workers(estimate: usize, max_in_flight: usize) -> usize {
    estimate.div_ceil(max_in_flight.max(1)).max(1)
}

/// Sum of the partitions of `topics`, from cluster metadata (blocking call, off the
/// async threads). `None` when the cluster did not answer.
async fn count_partitions(consumer: &Arc<WorkerConsumer>, topics: &[String]) -> Option<usize> {
    let consumer = consumer.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .filter(|t| topics.iter().any(|name| name == t.name()))
                .map(|t| t.partitions().len())
                .sum(),
        )
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn desired_workers_rounds_up_and_is_never_zero() {
        assert_eq!(super::desired_workers(16, 256), 1);
        assert_eq!(super::desired_workers(0, 256), 1);
        assert_eq!(super::desired_workers(48, 16), 3);
        assert_eq!(super::desired_workers(49, 16), 4);
    }
}
