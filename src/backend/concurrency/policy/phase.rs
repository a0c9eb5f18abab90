//! The controller's phases, and the rule each one adds to probing: how fast a probe
//! proves itself, when the next one falls due, how far it steps.
//!
//! - `Search`: nothing is known; the limit doubles every clean round trip until the first
//!   refusal or queueing (TCP's slow start).
//! - `Steady`: a level is known good; the limit climbs back to it by doubling after a cut
//!   and probes one step above it when due, backing off after each failure. (While the
//!   good level rests on the search's one reading, probes come more often: see the
//!   policy's `confirmed`.)
//! - `Regain`: the capacity fell a long way (another tenant took slots, and may give them
//!   back): below the former level, probes come by time as well as by count, step by one,
//!   and climb back at once once two in a row held past a failed one.

use std::time::Duration;

use tokio::time::Instant;

use super::schedule::MAX_STREAK;

/// A fall to this fraction of the good level or below is remembered (`Regain`); the small
/// steps a rate limiter's edge makes are not, they would only buy overload answers.
const REGAIN_FALL: (usize, usize) = (4, 5);
/// For this long after the fall, probes below the former level climb only as fast as
/// others: peers' view of each other's calls is noisiest then.
pub(super) const REGAIN_SETTLES: Duration = Duration::from_secs(3);
/// How long the former level is remembered.
const REGAIN_KEPT: Duration = Duration::from_secs(120);
/// Below the former level, a probe proves itself, and the next comes, after this
/// fraction of `probe_after_calls`: one window of proof instead of a hundred calls.
pub(super) const REGAIN_QUICKENING: u64 = 16;

/// See the module documentation. Only the policy moves from one to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Search,
    Steady,
    Regain(Regain),
}

/// What `Regain` remembers of the fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Regain {
    /// The good level before the capacity fell...
    pub(super) former: usize,
    /// ...and when it fell (the latest fall, if several).
    pub(super) since: Instant,
    /// The lowest level a probe failed at since: once probes hold at it again, capacity
    /// came back (before that, probes that hold may only be climbing back from a cut
    /// that went too low).
    pub(super) failed_below: Option<usize>,
}

impl Phase {
    /// Whether `limit` is below the former level, the fall having settled.
    pub(super) fn regaining(&self, limit: usize, now: Instant) -> bool {
        match self {
            Phase::Regain(r) => limit < r.former && now >= r.since + REGAIN_SETTLES,
            _ => false,
        }
    }

    /// The capacity fell from `good` (or the level of an earlier fall, if higher) to `to`:
    /// a large fall is remembered, `max` meaning nothing was known.
    pub(super) fn fell(&mut self, good: usize, to: usize, max: usize, now: Instant) {
        let earlier = match self {
            Phase::Regain(r) => r.former,
            _ => 0,
        };
        let former = good.max(earlier);
        let (num, den) = REGAIN_FALL;
        if former < max && to * den <= former * num {
            *self = Phase::Regain(Regain {
                former,
                since: now,
                failed_below: None,
            });
        }
    }

    /// A probe at `limit` failed: below a former level the lowest failure is kept.
    pub(super) fn probe_failed(&mut self, limit: usize) {
        if let Phase::Regain(r) = self {
            r.failed_below = Some(r.failed_below.map_or(limit, |at| at.min(limit)));
        }
    }

    /// `Regain` ends once the limit is back at the former level or the fall is old.
    pub(super) fn forget_former(&mut self, limit: usize, now: Instant) {
        if let Phase::Regain(r) = self {
            if limit >= r.former || now >= r.since + REGAIN_KEPT {
                *self = Phase::Steady;
            }
        }
    }

    /// Whether a probe falls due by time now: below a former level, `every` after the
    /// limit last changed at `changed_at`, once it has carried `quick_due` calls.
    pub(super) fn timed_probe_due(
        &self,
        now: Instant,
        changed_at: Instant,
        every: Duration,
        calls: u64,
        quick_due: u64,
    ) -> bool {
        matches!(self, Phase::Regain(_)) && now >= changed_at + every && calls >= quick_due
    }

    /// How far a probe from `limit` steps, after `streak` probes in a row held; `timed`,
    /// whether it came by time rather than by count.
    pub(super) fn probe_step(&self, limit: usize, streak: u32, timed: bool) -> usize {
        match self {
            // Below the level the capacity fell from, probes step by one: a step of two
            // against a backend still at the lower capacity cost two overload answers,
            // one for each member whose share grew. Once two in a row have held, at least
            // one at a level a probe had failed at since the fall, the capacity came
            // back, and given-back capacity comes back whole, as a rule: the next goes
            // back to that level at once (should only part have come back, that increase
            // is paced, and its first refusals read the rest). A probe by time tests
            // whether capacity came back at all: it steps by one whatever the streak.
            Phase::Regain(r)
                if streak >= 2 && !timed && r.failed_below.is_some_and(|f| limit >= f) =>
            {
                r.former - limit
            }
            Phase::Regain(_) => 1,
            _ => 1 << streak.min(MAX_STREAK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_a_large_fall_is_remembered_and_the_highest_former_level_is_kept() {
        let now = Instant::now();
        let mut phase = Phase::Steady;
        phase.fell(32, 30, 256, now);
        assert_eq!(phase, Phase::Steady, "a rate limiter's edge, not a fall");
        phase.fell(32, 16, 256, now);
        assert!(matches!(phase, Phase::Regain(r) if r.former == 32));
        phase.fell(16, 8, 256, now);
        assert!(
            matches!(phase, Phase::Regain(r) if r.former == 32),
            "the fall from 32 is the one to regain"
        );
        let mut searching = Phase::Search;
        searching.fell(256, 16, 256, now);
        assert_eq!(searching, Phase::Search, "nothing was known to fall from");
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_former_level_probes_step_by_one_until_two_held_past_a_failure() {
        let now = Instant::now();
        let mut phase = Phase::Steady;
        phase.fell(32, 16, 256, now);
        assert_eq!(
            phase.probe_step(16, 3, false),
            1,
            "no probe has failed since"
        );
        phase.probe_failed(17);
        assert_eq!(phase.probe_step(17, 1, false), 1, "one held");
        assert_eq!(phase.probe_step(17, 2, false), 15, "back to 32 at once");
        assert_eq!(
            phase.probe_step(17, 2, true),
            1,
            "a timed probe steps by one"
        );
        assert_eq!(Phase::Steady.probe_step(16, 3, false), 8);
        phase.forget_former(32, now);
        assert_eq!(phase, Phase::Steady);
    }
}
