//! What the controller keeps about one call between [`Controller::start`] and
//! [`Controller::finish`]: where it stood when it was sent.
//!
//! [`Controller::start`]: super::Controller::start
//! [`Controller::finish`]: super::Controller::finish

use tokio::time::Instant;

/// See the module documentation. Public only for the hot-path benchmarks
/// (`benches/hot_paths`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallTicket {
    /// Calls in flight once this one was sent, itself included (with peers, theirs too,
    /// as far as this worker can tell).
    pub(super) level: usize,
    /// This worker's own calls in flight once this one was sent, itself included.
    pub(super) own: usize,
    pub(super) started: Instant,
    /// Estimated tokens, used when the answer carries no usage.
    pub(super) tokens: u64,
    /// The limit's epoch when sent: only calls sent under the current limit judge it.
    pub(super) epoch: u64,
}

impl CallTicket {
    /// Seconds since it was sent.
    pub(super) fn rtt(&self, now: Instant) -> f64 {
        now.duration_since(self.started).as_secs_f64()
    }
}
