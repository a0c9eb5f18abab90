//! Reading a refusal (429, 503, a timeout): where the capacity is, whether a probe
//! failed, and how far the limit falls; and the probe backoff that failures build up.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{State, PROBE_BACKOFF_DECAY};
use crate::backend::concurrency::controller::CallTicket;
use crate::backend::BackendError;

impl State {
    /// A call sent as the `level`-th in flight was refused: the backend holds fewer than
    /// `level` of ours, so the limit drops to `level - 1` (not by a ratio: in reject mode
    /// that level is the capacity, and halving would waste a quarter of it on average).
    pub(in crate::backend::concurrency::controller) fn on_back_pressure(
        &mut self,
        semaphore: &Semaphore,
        ticket: CallTicket,
        error: &BackendError,
        now: Instant,
    ) {
        match error {
            BackendError::Status { status: 429, .. } => self.back_pressure.too_many_requests += 1,
            BackendError::Timeout(_) => self.back_pressure.timeouts += 1,
            _ => self.back_pressure.unavailable += 1,
        }
        if let Some(wait) = error.retry_after() {
            self.back_pressure.with_retry_after += 1;
            self.hold_until = self.hold_until.max(now + wait);
        }
        self.window.note_back_pressure();
        let mut bound = ticket.level.saturating_sub(1).max(self.settings.min);
        // Calls sent up to a round trip after the search ended still meet the overshoot:
        // the other members go on pacing their doubling in until they hear of the end.
        let settling = Duration::from_secs_f64(self.srtt.unwrap_or(0.0));
        let overshoot = self.recover_to >= self.settings.max
            || self
                .search_ended
                .is_some_and(|ended| ticket.started <= ended + settling);
        if overshoot && self.reckons_others() {
            // The first search's overshoot, in a group: the level a refusal reads counts
            // the others' calls as reckoned, and while the members pace an increase in
            // it reads low (13 where a moment before 16 had held, in a bench-group run of
            // 4 workers at 16 slots: the probes took 3 s to climb back). The level the
            // search last proved is a floor. (Only for calls sent in the overshoot: the
            // capacity may fall later, and then nothing the search proved holds.)
            bound = bound.max(self.proven);
        }
        if self.last_cut.is_some_and(|cut| ticket.started < cut) {
            // Sent under a higher limit than the current one: already acted upon (one
            // cut per round of evidence, as TCP cuts once per window of losses). Except
            // in the first search: the overshoot's refusals come back together, in any
            // order, and the lowest level among them is the reading of the capacity. Cut
            // to it now, or every refusal frees a permit for another call into the same
            // full backend.
            if self.tentative && bound < self.limit {
                self.recover_to = self.recover_to.min(bound);
                self.set_limit(semaphore, bound, now);
            }
            return;
        }
        let mut cut = bound;
        match self.episode {
            None => {
                self.episode = Some(now);
                self.episode_lowers = false;
                if bound >= self.recover_to {
                    // A failed probe. In a group it goes one further down, to no lower
                    // than the level known to be good: there the level a refusal reads
                    // counts the others' calls as reckoned, not as sent, and one below it
                    // was often refused as well (two overload answers for one probe).
                    if !self.tentative && self.reckons_others() {
                        cut = bound.saturating_sub(1).max(self.recover_to);
                    }
                    self.tentative = false;
                    self.failed_probe(now);
                } else if self.recover_to >= self.settings.max {
                    // The first refusal of the first search: no level was known to be
                    // good, so there is none to go back to (TCP's slow start ends at its
                    // first loss). Probes above it come quickly until one fails.
                    self.episode_lowers = true;
                    self.recover_to = bound;
                    self.tentative = true;
                    self.search_ended = Some(now);
                } else if self.suspect {
                    // Refused below the good level twice before getting back to it: the
                    // capacity did fall. Remember how high it was: another tenant may give
                    // it back.
                    self.remember_former(bound, now);
                    self.episode_lowers = true;
                    self.recover_to = bound;
                    self.probe_backoff = 1;
                } else {
                    // Refused below the good level: a burst, a rate limit's edge, an
                    // outage starting, or less capacity. The limit falls now; the next
                    // recovery towards the good level tells which.
                    self.suspect = true;
                }
            }
            // Sent before the run began: the same evidence as its first refusal. Calls
            // sent later, at lower levels, mostly show an outage deepening, which must
            // not erase what the capacity was (the limit still falls).
            Some(began) if self.episode_lowers && ticket.started <= began => {
                self.recover_to = self.recover_to.min(bound);
            }
            // The first search's refusals keep coming as the calls sent into the overshoot
            // return: the lowest is the best reading of where it ended.
            Some(_) if self.tentative => {
                self.recover_to = self.recover_to.min(bound);
            }
            Some(_) => {}
        }
        let cut = cut.min(if self.episode_lowers {
            self.recover_to
        } else {
            usize::MAX
        });
        if cut < self.limit {
            tracing::debug!(
                t = now.duration_since(self.created).as_secs_f64(),
                limit = cut,
                level = ticket.level,
                recover_to = self.recover_to,
                suspect = self.suspect,
                "adaptive concurrency: back-pressure cut"
            );
            self.set_limit(semaphore, cut, now);
        }
    }

    /// The capacity fell to `to`: keep the good level it fell from (the highest of recent
    /// falls), if the fall was a large one (a tenant taking slots; not the small steps a
    /// rate limiter's edge makes, which would only buy overload answers).
    pub(super) fn remember_former(&mut self, to: usize, now: Instant) {
        let level = self
            .recover_to
            .max(self.former.map_or(0, |(level, _)| level));
        if level < self.settings.max && to * 5 <= level * 4 {
            self.former = Some((level, now));
            self.failed_below_former = None;
        }
    }

    pub(super) fn failed_probe(&mut self, now: Instant) {
        if self.former.is_some() {
            let at = self
                .failed_below_former
                .map_or(self.limit, |at| at.min(self.limit));
            self.failed_below_former = Some(at);
        }
        self.failed_probes += 1;
        self.probe_streak = 0;
        self.probe_backoff = self
            .probe_backoff
            .saturating_mul(2)
            .min(self.settings.max_probe_backoff);
        self.probe_backoff_changed = now;
    }

    /// Halves the probe spacing for every [`PROBE_BACKOFF_DECAY`] since it last changed.
    pub(super) fn decay_probe_backoff(&mut self, now: Instant) {
        while self.probe_backoff > 1 && now >= self.probe_backoff_changed + PROBE_BACKOFF_DECAY {
            self.probe_backoff /= 2;
            self.probe_backoff_changed += PROBE_BACKOFF_DECAY;
        }
    }
}
