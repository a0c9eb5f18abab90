//! Handles the worker holds outside the stack: [`RateShare`] (its fraction of the group's
//! limits, set from the rebalance callback) and [`RateStats`] (counters for /metrics).
//! Both are cheap clones of an `Arc` of atomics (the share adds a lock held only to copy
//! two numbers); neither ever waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// This worker's fraction of the group-wide rate limits: its assigned partitions over the
/// request topics' total. Starts at 0 (nothing passes) until the first assignment.
#[derive(Debug, Clone)]
pub struct RateShare {
    inner: Arc<ShareInner>,
}

#[derive(Debug)]
struct ShareInner {
    /// The latest change; read by the limiter only when `generation` moved.
    latest: Mutex<ShareChange>,
    /// Bumped after every change, so a limiter can tell its buckets are stale.
    generation: AtomicU64,
    /// Wakes services waiting on a rate that was just changed (or was 0).
    changed: Arc<Notify>,
}

/// A share and when it was set: buckets rescale as of that instant, however much later
/// they are next used, so an idle worker's budget accrues from its assignment on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShareChange {
    pub share: f64,
    pub at: Instant,
}

impl Default for RateShare {
    fn default() -> Self {
        Self {
            inner: Arc::new(ShareInner {
                latest: Mutex::new(ShareChange {
                    share: 0.0,
                    at: Instant::now(),
                }),
                generation: AtomicU64::new(0),
                changed: Arc::default(),
            }),
        }
    }
}

impl RateShare {
    /// Sets the share to `assigned / total` partitions (0 when `total` is 0). Call it from
    /// the rebalance callback on every assignment *and* revocation, so a worker losing
    /// partitions slows down before a newcomer speeds up.
    pub(crate) fn set_share(&self, assigned: usize, total: usize) {
        let share = if total == 0 {
            0.0
        } else {
            assigned.min(total) as f64 / total as f64
        };
        *self.latest() = ShareChange {
            share,
            at: Instant::now(),
        };
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.notify_waiters();
    }

    /// The current share, 0..=1.
    pub fn share(&self) -> f64 {
        self.latest().share
    }

    /// A plain value, valid whatever a panicking holder left, so poisoning is ignored.
    fn latest(&self) -> std::sync::MutexGuard<'_, ShareChange> {
        self.inner
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest change.
    pub(super) fn latest_change(&self) -> ShareChange {
        *self.latest()
    }

    /// Changes so far. Read it before [`RateShare::latest_change`]: the change read
    /// after it is never older than the generation.
    pub(super) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// A future that completes at the next [`RateShare::set_share`] after this call.
    pub(super) fn changed(&self) -> OwnedNotified {
        self.inner.changed.clone().notified_owned()
    }
}

/// Counters of time spent waiting for rate, for the `rate-limit waits` metrics.
#[derive(Debug, Clone, Default)]
pub struct RateStats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    /// Calls that had to wait for the rate limit at least once.
    waits: AtomicU64,
    /// Total time those calls waited, in nanoseconds.
    waited_nanos: AtomicU64,
}

impl RateStats {
    /// Calls that had to wait for the rate limit (a counter).
    pub(crate) fn waits_total(&self) -> u64 {
        self.inner.waits.load(Ordering::Relaxed)
    }

    /// Seconds spent waiting for the rate limit, summed over calls (a counter).
    pub(crate) fn wait_seconds_total(&self) -> f64 {
        self.inner.waited_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub(super) fn record_wait(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
        self.inner.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}
