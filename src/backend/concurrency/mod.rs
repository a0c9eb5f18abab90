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

pub use crate::config::ConcurrencySettings;
pub use controller::Controller;
pub(crate) use evidence::Gauges;
pub(crate) use future::ResponseFuture;
pub(crate) use layer::AdaptiveConcurrencyLayer;
pub(crate) use peers::{Peers, REGAIN_PROBE_EVERY};
pub(crate) use policy::Estimate;
pub(crate) use service::AdaptiveConcurrency;
