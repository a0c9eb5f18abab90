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
mod shared;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use crate::config::BreakerSettings;
pub(crate) use layer::{BreakerHandle, CircuitBreakerLayer};
pub(crate) use shared::Probe;

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
    pub(crate) fn as_gauge(self) -> i64 {
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
