//! AdaptiveConcurrency: finds how many calls the backend can take at once, with no
//! knowledge of its capacity, and never lets more than that many be in flight.
//!
//! - `layer`: [`AdaptiveConcurrencyLayer`], configuration and the shared controller.
//! - `service`: [`AdaptiveConcurrency`], reserves a permit in `poll_ready`, spends it in `call`.
//! - `future`: [`ResponseFuture`], times the call and reports its classified outcome.
//! - `controller`: the shared handle; `state`: what it holds under one lock, and the path
//!   every event takes through it:
//!   - `evidence`: what the calls and the backend's gauges say (round trip, windows, the
//!     no-load baseline, learned noise), ending in a verdict per window;
//!   - `policy`: what the evidence proves and where the limit goes, phase by phase
//!     (`Search`, `Settle`, `Steady`, `Regain`); pure, tested without a semaphore;
//!   - `permits`: the semaphore that enforces the limit (paced increases, forgetting);
//!   - `peers`: what sharing the backend with other workers changes ([`Peers`]; group
//!     pacing implements it, a worker alone uses its provided answers);
//!   - `stats`: counters for metrics.
//!
//! The policy. A back-pressure answer (429, 503, timeout) to a call sent as the k-th in
//! flight proves the backend holds fewer than k of ours, so the limit drops to k - 1, not
//! by a ratio; answers to calls sent before the last cut are stale and ignored. Latency
//! above its token-normalised no-load baseline is queueing at the backend: when more than
//! `queue_tolerance` of the round trip is queueing, the limit drops to the calls actually
//! being served (Little's law) plus a little queue; queueing that cuts do not shrink is
//! learned as noise instead. Above the last level known to be good the limit probes one
//! call higher after `probe_after_calls` clean calls, twice as long after each probe that
//! fails; below it (after an outage, a burst, a drain) it doubles every round trip, paced
//! so the new calls never arrive as a burst. A level is only forgotten as good after a
//! second refusal below it before getting back (one refusal may be a burst or an outage).
//! A Retry-After window blocks every increase. Other failures say nothing about load and
//! leave the limit alone; a call the circuit breaker refused was never sent and is ignored.

mod controller;
mod evidence;
mod future;
mod layer;
mod peers;
mod permits;
mod policy;
mod service;
mod state;
mod stats;
mod ticket;

#[cfg(test)]
pub(crate) mod tests;

pub use controller::Controller;
pub use evidence::Gauges;
pub use future::ResponseFuture;
pub use layer::AdaptiveConcurrencyLayer;
pub use peers::{Peers, REGAIN_PROBE_EVERY};
pub use policy::Estimate;
pub use service::AdaptiveConcurrency;
pub use stats::{BackPressureCounts, ControllerStats};
pub use ticket::CallTicket;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[backend.concurrency]`: the adaptive concurrency limit of one worker.
///
/// The defaults were chosen from the simulation in this module's tests (backends of 4, 32
/// and 256 slots that queue or reject, rate-limited, mixed lengths, halving, outages).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencySettings {
    /// Limit at start-up, before anything is measured; the limit then doubles every round
    /// trip until the backend pushes back. Between `min` and `max`. Default 8.
    pub initial: usize,
    /// The limit never goes below this. At least 1. Default 1.
    pub min: usize,
    /// The limit never goes above this (also capped by `worker.max_in_flight`). At least
    /// `min`. Default 256.
    pub max: usize,
    /// Fraction of the round trip that may be spent queueing at the backend (latency above
    /// its no-load baseline for the same number of tokens) before the limit is cut to the
    /// number of calls being served. Also the noise the latency signal tolerates: raise it
    /// for backends whose latency jitters by more than this. Range (0, 0.5]. Default 0.1.
    pub queue_tolerance: f64,
    /// Successful calls at a steady limit before it probes one call higher. A probe that
    /// fails costs about one overload answer, so this bounds the steady overload rate to
    /// 1 / `probe_after_calls`. At least 1. Default 100.
    pub probe_after_calls: u32,
    /// Each probe that fails at the same level doubles the calls before the next one, up to
    /// this factor. At least 1. Default 64.
    pub max_probe_backoff: u32,
    /// How long a no-load latency measurement is trusted before a fresh one replaces it,
    /// so a backend that becomes slower for good is relearned. At least 1,000 ms.
    /// Default 60,000 ms.
    pub baseline_window_ms: u64,
}

impl ConcurrencySettings {
    /// Checks the ranges documented on each field, naming the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.min == 0 {
            return invalid("backend.concurrency.min", "must be at least 1");
        }
        if self.max < self.min {
            return invalid("backend.concurrency.max", "must not be below min");
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return invalid("backend.concurrency.initial", "must be between min and max");
        }
        if !(self.queue_tolerance > 0.0 && self.queue_tolerance <= 0.5) {
            return invalid("backend.concurrency.queue_tolerance", "must be in (0, 0.5]");
        }
        if self.probe_after_calls == 0 {
            return invalid(
                "backend.concurrency.probe_after_calls",
                "must be at least 1",
            );
        }
        if self.max_probe_backoff == 0 {
            return invalid(
                "backend.concurrency.max_probe_backoff",
                "must be at least 1",
            );
        }
        if self.baseline_window_ms < 1000 {
            return invalid(
                "backend.concurrency.baseline_window_ms",
                "must be at least 1000",
            );
        }
        Ok(())
    }
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 1,
            max: 256,
            queue_tolerance: 0.1,
            probe_after_calls: 100,
            max_probe_backoff: 64,
            baseline_window_ms: 60_000,
        }
    }
}
