//! What the controller reports for metrics and tests: back-pressure answers by kind, and
//! the limit's integral over time (so a mean over any window can be read from two
//! snapshots).

use std::time::Duration;

use tokio::time::Instant;

/// Back-pressure answers seen, by kind (each is also one overload response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BackPressureCounts {
    /// HTTP 429.
    pub too_many_requests: u64,
    /// HTTP 503.
    pub unavailable: u64,
    /// No answer within the per-attempt timeout.
    pub timeouts: u64,
    /// Of the above, those that carried a Retry-After (each holds increases back).
    pub with_retry_after: u64,
}

impl BackPressureCounts {}

/// A snapshot for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ControllerStats {
    /// The current limit (all the peers' together, when shared with peers).
    pub limit: usize,
    /// This worker's permits: the limit alone, its share of it with peers.
    pub permits: usize,
    /// Version of the estimate (see [`super::Estimate`]).
    pub version: u64,
    /// Calls sent and not yet finished.
    pub in_flight: usize,
    /// Time-weighted mean of the limit since the controller was created.
    pub mean_limit: f64,
    /// Integral of the limit over time (limit × seconds) since creation: the difference of
    /// two snapshots divided by the time between them is the mean over that window.
    pub limit_seconds: f64,
    /// Time since creation.
    pub elapsed: Duration,
    pub back_pressure: BackPressureCounts,
    /// Increases above the last level known to be good.
    pub probes: u64,
    /// Probes answered with back-pressure or queueing.
    pub failed_probes: u64,
}

/// The tallies behind [`ControllerStats`]. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct Tallies {
    created: Instant,
    /// Integral of the limit over time up to `accounted_at`.
    limit_seconds: f64,
    accounted_at: Instant,
    pub(super) back_pressure: BackPressureCounts,
}

impl Tallies {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            created: now,
            limit_seconds: 0.0,
            accounted_at: now,
            back_pressure: BackPressureCounts::default(),
        }
    }

    /// The limit was `limit` from the last accounting until `now`.
    pub(super) fn account(&mut self, limit: usize, now: Instant) {
        let secs = now.duration_since(self.accounted_at).as_secs_f64();
        self.limit_seconds += limit as f64 * secs;
        self.accounted_at = now;
    }

    /// `(limit_seconds, elapsed, mean_limit)` up to `now`, the limit being `limit` since
    /// the last accounting.
    pub(super) fn integral(&mut self, limit: usize, now: Instant) -> (f64, Duration, f64) {
        self.account(limit, now);
        let elapsed = now.duration_since(self.created);
        let secs = elapsed.as_secs_f64();
        let mean = if secs > 0.0 {
            self.limit_seconds / secs
        } else {
            limit as f64
        };
        (self.limit_seconds, elapsed, mean)
    }
}

#[cfg(test)]
impl BackPressureCounts {
    pub(crate) fn total(&self) -> u64 {
        self.too_many_requests + self.unavailable + self.timeouts
    }
}
