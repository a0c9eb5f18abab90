//! What sharing the backend with other workers changes in the controller's rules. Each
//! method is one named decision; its provided body is the answer for a worker alone
//! ([`Alone`]). Group pacing (`crate::group::GroupContext`) overrides them: the limit is
//! then the whole group's, this worker holds a share of it, and the levels its calls
//! reach the backend at count the others' calls as reckoned, not as sent.

use std::fmt;
use std::time::Duration;

/// Below a level the capacity fell from, a probe falls due at least this often, whatever
/// the count of calls, so capacity given back is found in seconds.
pub(crate) const REGAIN_PROBE_EVERY: Duration = Duration::from_secs(2);

/// See the module documentation. Set on the controller by whoever paces the backend with
/// others; replaced whenever their view changes.
pub(crate) trait Peers: fmt::Debug + Send {
    /// This worker's permits under `limit`.
    fn permits(&self, limit: usize) -> usize {
        limit
    }

    /// The others' calls at the backend now, this worker having `in_flight` under `limit`:
    /// added to its own, the level at which a call of this worker reaches the backend.
    fn others_in_flight(&self, _limit: usize, _in_flight: usize) -> usize {
        0
    }

    /// Calls at the backend that one success of this worker stands for, holding `permits`
    /// of `limit`: a probe falls due after as many of the backend's calls as one worker's.
    fn calls_per_success(&self, _limit: usize, _permits: usize) -> f64 {
        1.0
    }

    /// The lowest level a refusal of the first search's overshoot may read, the search
    /// having last proved `proven` (0: no floor, the level read is the level sent at).
    fn overshoot_floor(&self, _proven: usize) -> usize {
        0
    }

    /// Where a probe refused at level `bound + 1` cuts the limit to, `good` being the
    /// level known to be good (never below it).
    fn failed_probe_cut(&self, bound: usize, _good: usize) -> usize {
        bound
    }

    /// How long after a change a probe below a fallen level may count as held (its
    /// refusal, had there been one, could still be on its way).
    fn probe_heard_after(&self, _srtt: Duration) -> Duration {
        Duration::ZERO
    }

    /// Reckoned calls before a probe at a steady level, `due` being one worker's.
    fn steady_probe_due(&self, due: u64) -> u64 {
        due
    }

    /// Below a fallen level, how long after a change a probe falls due whatever the count.
    fn regain_probe_every(&self) -> Duration {
        REGAIN_PROBE_EVERY
    }

    /// How long a refused call's permit stays out before it is given back: `srtt` and the
    /// call's `rtt` in seconds; `permits_fell`, whether the refusal took permits from this
    /// worker.
    fn refusal_hold(&self, _srtt: f64, _rtt: f64, _permits_fell: bool) -> Duration {
        Duration::ZERO
    }

    /// Whether a climb's new permits are handed out on a timer rather than only as calls
    /// start and finish.
    fn paces_climbs_on_time(&self) -> bool {
        false
    }
}

/// A worker pacing the backend by itself: every provided answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Alone;

impl Peers for Alone {}
