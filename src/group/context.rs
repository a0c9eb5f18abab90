//! What pacing with a group means for one worker's concurrency controller, all in one
//! place: the limit is the group's and this worker holds a share of it; the level a call
//! reaches the backend at counts the others' calls as reckoned, not as sent (their records
//! are up to a publish interval old), so refusals read low and probes are counted for the
//! group; busy members take turns for what one member does for all; a change is heard by
//! the others an echo through the control topic later. With no other member, every
//! answer is the one of a worker alone.

use std::time::Duration;

use super::share::GroupShare;
use crate::backend::concurrency::{Peers, REGAIN_PROBE_EVERY};

/// Below the level capacity fell from, a probe is due at least this often in a group,
/// whose members take turns for it (any member's probe restarts every member's wait):
/// utilisation back within 3 s of the capacity's return takes a probe within about a
/// second of it. Workers that pace alone cannot take turns: were each to probe every
/// second, a group whose control topic is down would probe several times a second, and
/// every probe another worker's refusal reads as capacity lost.
const REGAIN_PROBE_EVERY_IN_GROUP: Duration = Duration::from_secs(1);
/// Each busy member after the first by key waits this much longer for that probe, so the
/// group pays one overload answer per probe, not one per member.
const REGAIN_TURN: Duration = Duration::from_millis(500);

/// This worker's place in its group, as the controller's [`Peers`]. Built by the pacer
/// from the group's view at every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupContext {
    share: GroupShare,
}

impl GroupContext {
    pub fn new(share: GroupShare) -> Self {
        Self { share }
    }

    /// Whether other members share the backend now (else this worker is alone in it).
    fn crowded(&self) -> bool {
        !self.share.others.is_empty()
    }

    /// This worker's place among the busy members, by key (0: first).
    fn turn(&self) -> u32 {
        self.share.turn() as u32
    }
}

impl Peers for GroupContext {
    fn permits(&self, limit: usize) -> usize {
        self.share.permits(limit)
    }

    fn others_in_flight(&self, limit: usize, in_flight: usize) -> usize {
        self.share.others_in_flight(limit, in_flight)
    }

    /// Each member counts the group's calls (its own, times the limit over its permits),
    /// so the group probes as often as one worker would, not once per member's share.
    fn calls_per_success(&self, limit: usize, permits: usize) -> f64 {
        if self.crowded() {
            limit as f64 / permits.max(1) as f64
        } else {
            1.0
        }
    }

    /// The first search's overshoot: the level a refusal reads counts the others' calls as
    /// reckoned, and while the members pace an increase in it reads low (13 where a moment
    /// before 16 had held, in a bench-group run of 4 workers at 16 slots: the probes took
    /// 3 s to climb back). The level the search last proved is a floor.
    fn overshoot_floor(&self, proven: usize) -> usize {
        if self.crowded() {
            proven
        } else {
            0
        }
    }

    /// A failed probe goes one further down, to no lower than the level known to be good:
    /// the level a refusal reads counts the others' calls as reckoned, not as sent, and
    /// one below it was often refused as well (two overload answers for one probe).
    fn failed_probe_cut(&self, bound: usize, good: usize) -> usize {
        if self.crowded() {
            bound.saturating_sub(1).max(good)
        } else {
            bound
        }
    }

    /// The first probe below a fallen level (whether capacity came back at all) holds only
    /// once another member's refusal of it would have been heard: the others hear of the
    /// probe an echo after it, their calls meet the full backend, and their cut comes back
    /// an echo later. Meanwhile this worker's calls may all have been answered: taken as
    /// held, the next step went two above the capacity, two overload answers.
    fn probe_heard_after(&self, srtt: Duration) -> Duration {
        if self.crowded() {
            srtt + 2 * self.share.echo
        } else {
            Duration::ZERO
        }
    }

    /// The busy members take turns by key for a probe at a steady level: each after the
    /// first waits half a count longer, and the first one's probe restarts every count.
    /// The counts all restart at the same change, so without turns two members reached
    /// theirs together and probed in the same millisecond: two overload answers.
    fn steady_probe_due(&self, due: u64) -> u64 {
        due + due / 2 * u64::from(self.turn())
    }

    fn regain_probe_every(&self) -> Duration {
        let every = if self.crowded() {
            REGAIN_PROBE_EVERY_IN_GROUP
        } else {
            REGAIN_PROBE_EVERY
        };
        every + REGAIN_TURN * self.turn()
    }

    /// Unless the refusal took permits from this worker, its permit stays out until a
    /// smoothed round trip after the call was sent. A refusal comes back in a millisecond;
    /// were its permit free at once, a worker whose share meets a backend the other
    /// members fill (their calls reckoned at their shares, so its refusals read a level
    /// above the limit and cut nothing) would send hundreds of calls a second into it,
    /// every one refused, until the retry budget is empty. So would one whose cut came out
    /// of another member's share: that member fills the backend until it hears of the cut.
    /// A refusal that took this worker's permits needs no hold: its permit is one of those
    /// taken, or was freed by it.
    fn refusal_hold(&self, srtt: f64, rtt: f64, permits_fell: bool) -> Duration {
        if permits_fell || !self.crowded() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((srtt - rtt).max(0.0))
    }

    /// A climb's permits come out on a timer: a burst's first calls finish together and
    /// then nothing happens for a round trip, so an increase handed out only as calls start
    /// and finish came out at its end, and the group's limit grew by half a step per round
    /// trip.
    fn paces_climbs_on_time(&self) -> bool {
        self.crowded()
    }
}

#[cfg(test)]
mod tests;
