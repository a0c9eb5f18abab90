//! Reading a refusal (429, 503, a timeout): where the capacity is, whether a probe
//! failed, and how far the limit falls. A refusal of a call sent as the `level`-th in
//! flight proves the backend holds fewer than `level`, so the limit drops to `level - 1`
//! (not by a ratio: in reject mode that level is the capacity, and halving would waste a
//! quarter of it on average).

use std::time::Duration;

use tokio::time::Instant;

use super::phase::Phase;
use super::Policy;
use crate::backend::concurrency::peers::Peers;

/// A run of refusals and what it has shown so far. Lives as long as the controller.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// When the current run began; ended by a window free of refusals.
    episode: Option<Instant>,
    /// The current run lowers the good level (it confirmed a loss of capacity).
    lowers: bool,
    /// When the limit was last cut; refusals of calls sent before then are stale.
    last_cut: Option<Instant>,
    /// Refused below the good level since the limit was last clean at it: one more such
    /// refusal before getting back there shows the capacity fell.
    pub(super) suspect: bool,
}

impl Refusals {
    pub(super) fn end_episode(&mut self) {
        self.episode = None;
    }

    pub(super) fn cut_at(&mut self, now: Instant) {
        self.last_cut = Some(now);
    }

    pub(super) fn last_cut(&self) -> Option<Instant> {
        self.last_cut
    }
}

/// The first search's overshoot: the calls sent into it come back refused together, and
/// where peers reckon each other's calls their levels read low while everyone paces the
/// last doubling in.
#[derive(Debug, Default)]
pub(super) struct Overshoot {
    /// The level the search last proved good (the limit a clean window doubled).
    pub(super) proven: usize,
    /// When its first refusal ended it (this worker's, or a peer's as heard).
    pub(super) ended: Option<Instant>,
}

impl Policy {
    /// A call sent at `started` as the `level`-th in flight was refused, asking for
    /// `retry_after` if it said.
    pub(in crate::backend::concurrency) fn on_refusal(
        &mut self,
        (level, started): (usize, Instant),
        retry_after: Option<Duration>,
        srtt: f64,
        peers: &dyn Peers,
        now: Instant,
    ) {
        if let Some(wait) = retry_after {
            self.hold_until = self.hold_until.max(now + wait);
        }
        let mut bound = level.saturating_sub(1).max(self.settings.min);
        if self.in_overshoot(started, srtt) {
            bound = bound.max(peers.overshoot_floor(self.overshoot.proven));
        }
        if self.refusals.last_cut.is_some_and(|cut| started < cut) {
            return self.stale_refusal(bound, now);
        }
        let cut = match self.refusals.episode {
            None => self.first_refusal(bound, peers, now),
            Some(began) => {
                // Sent before the run began: the same evidence as its first refusal; and
                // while the search's reading is unconfirmed, the lowest of the overshoot's
                // refusals is the best reading. Calls sent later, at lower levels, mostly show an outage
                // deepening, which must not erase what the capacity was.
                let same = self.refusals.lowers && started <= began;
                if same || !self.confirmed {
                    self.set_good(self.good.min(bound));
                }
                bound
            }
        };
        let cut = if self.refusals.lowers {
            cut.min(self.good)
        } else {
            cut
        };
        if cut < self.limit {
            tracing::debug!(
                t = self.t(now),
                limit = cut,
                level,
                recover_to = self.good,
                suspect = self.refusals.suspect,
                "adaptive concurrency: back-pressure cut"
            );
            self.set_limit(cut, now);
        }
    }

    /// A refusal of a call sent under a higher limit than the current one: already acted
    /// upon (one cut per round of evidence, as TCP cuts once per window of losses).
    /// Except while the search's reading is unconfirmed: the overshoot's refusals come
    /// back together, in any order, and the lowest level among them is the reading of the
    /// capacity. Cut to it now, or every refusal frees a permit for another call into the
    /// same full backend.
    fn stale_refusal(&mut self, bound: usize, now: Instant) {
        if !self.confirmed && bound < self.limit {
            self.set_good(self.good.min(bound));
            self.set_limit(bound, now);
        }
    }

    /// Calls sent up to a round trip after the search ended still meet the overshoot:
    /// peers go on pacing their doubling in until they hear of the end.
    fn in_overshoot(&self, started: Instant, srtt: f64) -> bool {
        let settling = Duration::from_secs_f64(srtt);
        self.phase == Phase::Search
            || self
                .overshoot
                .ended
                .is_some_and(|ended| started <= ended + settling)
    }

    /// The first refusal of a run, read at `bound`: returns where the limit goes.
    fn first_refusal(&mut self, bound: usize, peers: &dyn Peers, now: Instant) -> usize {
        let refusals = &mut self.refusals;
        refusals.episode = Some(now);
        refusals.lowers = false;
        if bound >= self.good {
            // A failed probe. Peers may read it one further down (see the trait).
            let cut = if self.confirmed {
                peers.failed_probe_cut(bound, self.good)
            } else {
                bound
            };
            self.probe_failed(true, now);
            cut
        } else if self.phase == Phase::Search {
            // The first refusal of the search: no level was known to be good, so there is
            // none to go back to (TCP's slow start ends at its first loss).
            self.refusals.lowers = true;
            self.set_good(bound);
            self.confirmed = false;
            self.overshoot.ended = Some(now);
            bound
        } else if self.refusals.suspect {
            // Refused below the good level twice before getting back to it: the capacity
            // did fall. Remember how high it was: another tenant may give it back.
            self.phase.fell(self.good, bound, self.settings.max, now);
            self.refusals.lowers = true;
            self.set_good(bound);
            self.schedule.restart_backoff();
            bound
        } else {
            // Refused below the good level: a burst, a rate limit's edge, an outage
            // starting, or less capacity. The limit falls now; the next climb back towards
            // the good level tells which.
            self.refusals.suspect = true;
            bound
        }
    }
}
