//! A clean window in which demand reached the limit: below the level known to be good the
//! limit climbs back to it by doubling; at it, a probe above it comes when due; above it,
//! the probe under way may be proven held.
//!
//! A level is good once it has carried as many calls as a probe must wait for: a rate
//! limiter's bucket can hide an excess for a window or two. Calls are counted as the
//! backend's ([`Peers::calls_per_success`]), so peers together probe as often as one
//! worker would, not once per worker's share of the calls.

use std::time::Duration;

use tokio::time::Instant;

use super::phase::{Phase, REGAIN_QUICKENING};
use super::{Policy, UNCONFIRMED_QUICKENING};
use crate::backend::concurrency::peers::Peers;

impl Policy {
    /// See the module documentation. `top_level`: the highest level a success of the
    /// window was sent at.
    pub(super) fn on_clean(
        &mut self,
        top_level: usize,
        srtt: f64,
        peers: &dyn Peers,
        now: Instant,
    ) {
        self.schedule.decay(now);
        let regaining = self.phase.regaining(self.limit, now);
        let due = self
            .schedule
            .due(self.probe_after_calls(), self.quickening());
        let held = self.level_held(top_level, regaining, srtt, peers, now);
        if held && self.limit > self.good {
            // The probe held.
            self.set_good(self.limit);
            self.schedule.held();
        }
        if held && self.limit >= self.good {
            self.refusals.suspect = false;
        }
        let due = self.next_probe_due(due, regaining, peers);
        self.phase.forget_former(self.limit, now);
        if self.limit < self.good {
            self.climb(now);
        } else if self.limit == self.good && self.limit < self.settings.max {
            let timed = self.phase.timed_probe_due(
                now,
                self.change.at,
                peers.regain_probe_every(),
                self.change.calls,
                self.regain_due(),
            );
            let by_count = self.change.reckoned >= due as f64;
            if by_count || timed {
                self.probe(!by_count, now);
            }
        }
    }

    /// Whether the level the limit is at held: it carried enough calls (fewer below a
    /// former level, once a call was answered at it) and any refusal of it would have
    /// been heard by now.
    fn level_held(
        &self,
        top_level: usize,
        regaining: bool,
        srtt: f64,
        peers: &dyn Peers,
        now: Instant,
    ) -> bool {
        // Below the level the capacity fell from, a probe whose own level was answered for
        // a clean window is taken as capacity coming back, and the climb goes on at the
        // next one. A window whose calls never reached the probe's level proves nothing
        // (a share can sit idle), nor does one while the fall settles.
        let proof = if regaining && top_level >= self.limit {
            REGAIN_QUICKENING
        } else {
            self.quickening()
        };
        let streak = self.schedule.streak();
        let heard = !regaining
            || streak > 0
            || now >= self.change.at + peers.probe_heard_after(Duration::from_secs_f64(srtt));
        heard && self.change.calls >= self.probe_after_calls().div_ceil(proof)
    }

    /// When the next probe falls due, by count, `due` being the schedule's before this
    /// window: below a former level, once a probe held, the next comes after the quick
    /// count; at a steady level peers take turns.
    fn next_probe_due(&self, due: u64, regaining: bool, peers: &dyn Peers) -> u64 {
        let streak = self.schedule.streak();
        if regaining && streak > 0 {
            self.regain_due()
        } else if self.confirmed && streak == 0 {
            peers.steady_probe_due(due)
        } else {
            due
        }
    }

    /// Doubles the limit towards the good level (in the search, towards `max`).
    fn climb(&mut self, now: Instant) {
        if self.phase == Phase::Search {
            self.overshoot.proven = self.limit;
        }
        let doubled = self.limit.saturating_mul(2).min(self.good);
        tracing::debug!(
            t = self.t(now),
            limit = doubled,
            recover_to = self.good,
            "adaptive concurrency: recovering"
        );
        self.set_limit(doubled, now);
    }

    /// One step above the good level; `timed`, due by time rather than by count.
    fn probe(&mut self, timed: bool, now: Instant) {
        self.schedule.probe_sent();
        let step = self
            .phase
            .probe_step(self.limit, self.schedule.streak(), timed);
        tracing::debug!(
            t = self.t(now),
            limit = self.limit + step,
            "adaptive concurrency: probe"
        );
        self.set_limit(self.limit + step, now);
    }

    /// How many times as often as `probe_after_calls` a probe comes now.
    fn quickening(&self) -> u64 {
        let unconfirmed = if self.confirmed {
            1
        } else {
            UNCONFIRMED_QUICKENING
        };
        unconfirmed * self.schedule.streak_quickening()
    }

    /// Below a former level, calls that prove a probe and bring the next.
    fn regain_due(&self) -> u64 {
        self.probe_after_calls().div_ceil(REGAIN_QUICKENING)
    }

    fn probe_after_calls(&self) -> u64 {
        u64::from(self.settings.probe_after_calls)
    }
}
