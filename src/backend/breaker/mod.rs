//! CircuitBreaker: stops calling a backend that is down, and stops the worker pulling
//! from Kafka meanwhile. Guarantee: while open, no call starts (calls already in flight
//! finish); once the open period ends, the breaker asks the backend itself whether it is
//! back ([`Probe`]: for the HTTP backend `GET /v1/models`), and that answer alone decides.
//! No request's attempt is spent on finding out.
//!
//! - Closed: calls pass. It opens after `consecutive_failures` failures in a row, or
//!   when at least `error_ratio` of the calls over the last `window_ms` failed (judged
//!   from `min_calls` calls on).
//! - Open: `poll_ready` is Pending (woken at the next transition), so the worker takes no
//!   message; a call already past `poll_ready` fails fast with
//!   `BackendError::CircuitOpen { retry_in }` without reaching the backend.
//! - Half-open: the probe is out and `poll_ready` stays Pending. A live answer closes the
//!   breaker; no answer (or a 5xx) re-opens it for twice the previous period, capped at
//!   `max_open_ms` (a backend that stays down is probed ever less often, without the wait
//!   growing unbounded once it is back).
//!
//! Every call that reached the backend returns its real answer, also the one that opened
//! the breaker: retry counts it as an attempt, the rate layer keeps its cost, the
//! concurrency controller learns from it, and a request whose own calls keep failing ends
//! `error` after `backend.max_attempts`. Only a call refused by the open breaker without
//! reaching the backend (`CircuitOpen`) is not an attempt.
//!
//! What counts, by the shared classifier: `Retry` and `BackPressure` outcomes are
//! failures, except HTTP 429 (the backend is alive and busy; the concurrency controller
//! answers that, and opening here would idle a working backend). `Fatal` answers are
//! about the request, not the backend, and count as healthy, like successes. Results of
//! calls started before the last close, or finishing while open, are ignored.
//!
//! The worker watches [`BreakerHandle::subscribe`]: pause the partitions on `Open`,
//! resume on anything else. The breaker's own task ends each open period and probes, so
//! the channel reports every transition even when nothing polls the service.

mod layer;
mod service;
mod state;
#[cfg(test)]
mod tests;

pub use layer::{BreakerHandle, CircuitBreakerLayer, Probe};
pub use service::{CircuitBreaker, ResponseFuture};

use serde::Deserialize;

use crate::config::ConfigError;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// The backend is not called until the open period ends.
    Open,
    /// One probe is allowed to decide.
    HalfOpen,
}

impl BreakerState {
    /// Gauge value for /metrics, higher is worse: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    /// Metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// `[backend.breaker]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Opens after this many failures in a row; 0 disables this trigger. Default 5.
    pub consecutive_failures: u32,
    /// Opens when at least this fraction of calls in the window failed, in (0, 1];
    /// above 1 disables this trigger. Default 0.5.
    pub error_ratio: f64,
    /// The ratio is only judged over at least this many calls (at least 1). Default 20.
    pub min_calls: u32,
    /// Length of the sliding window for the ratio (kept in tenths, so calls leave it up
    /// to a tenth early). At least 10 ms. Default 10,000 ms.
    pub window_ms: u64,
    /// How long it stays open before a half-open probe. At least 1 ms. Default 5,000 ms.
    pub open_ms: u64,
    /// Longest open period: each failed probe doubles the previous one, up to this.
    /// At least `open_ms`; equal to it disables the growth. Default 60,000 ms.
    pub max_open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_ratio: 0.5,
            min_calls: 20,
            window_ms: 10_000,
            open_ms: 5_000,
            max_open_ms: 60_000,
        }
    }
}

impl BreakerSettings {
    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.error_ratio.is_nan() || self.error_ratio <= 0.0 {
            return invalid("backend.breaker.error_ratio", "must be above 0");
        }
        if self.min_calls == 0 {
            return invalid("backend.breaker.min_calls", "must be at least 1");
        }
        if self.window_ms < 10 {
            return invalid("backend.breaker.window_ms", "must be at least 10");
        }
        if self.open_ms == 0 {
            return invalid("backend.breaker.open_ms", "must be at least 1");
        }
        if self.max_open_ms < self.open_ms {
            return invalid(
                "backend.breaker.max_open_ms",
                "must be at least backend.breaker.open_ms",
            );
        }
        Ok(())
    }
}
