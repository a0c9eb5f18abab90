//! Moving the limit and the permits that enforce it: the semaphore grows paced over a
//! round trip and shrinks at once where permits are free, lazily where they are in use;
//! a refused call's permit may stay out a while; the limit's time integral.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::judge::Window;
use super::State;

/// An increase is handed to the semaphore evenly over one smoothed RTT, never as a
/// burst: a rate-limited backend would refuse the burst, and the refusals would read as
/// a loss of capacity. Permits are released as calls start and finish, so no timer is
/// needed (at least the old permits are always usable).
#[derive(Debug, Default)]
pub(super) struct Pacing {
    owed: usize,
    released: usize,
    from: Option<Instant>,
    /// Seconds.
    over: f64,
}

impl Pacing {
    pub(super) fn unreleased(&self) -> usize {
        self.owed - self.released
    }

    /// How long until the next permit of the increase is due (`None`: none is owed).
    fn next_due(&self, now: Instant) -> Option<Duration> {
        let from = self.from?;
        if self.unreleased() == 0 {
            return None;
        }
        let at = self.released as f64 * self.over / self.owed as f64;
        let at = from + Duration::from_secs_f64(at) + Duration::from_micros(1);
        Some(at.saturating_duration_since(now))
    }
}

impl State {
    /// Whether a returning permit must be forgotten (and counts it).
    pub(in crate::backend::concurrency::controller) fn take_forget(&mut self) -> bool {
        let forget = self.to_forget > 0;
        self.to_forget -= usize::from(forget);
        forget
    }

    /// Permits that exist beyond those allowed (to be forgotten) and permits allowed that
    /// do not exist yet (paced): for the permit-accounting test.
    #[cfg(test)]
    pub(in crate::backend::concurrency::controller) fn permit_debt(&self) -> (usize, usize) {
        (self.to_forget, self.pacing.unreleased())
    }

    /// How long a refused call's permit stays out: unless the refusal took permits from
    /// this worker (`permits_fell`), until a smoothed round trip after the call was sent. A
    /// refusal comes back in a millisecond; were its permit free at once, a worker whose
    /// share meets a backend the other members fill (their calls reckoned at their shares,
    /// so its refusals read a level above the limit and cut nothing) would send hundreds of
    /// calls a second into it, every one refused, until the retry budget is empty. So
    /// would one whose cut came out of another member's share: that member fills the
    /// backend until it hears of the cut. A refusal that took this worker's permits needs
    /// no hold: its permit is one of those taken, or was freed by it. Nor does a worker
    /// alone (or a group's only member): its refusals' levels are counted, and held
    /// permits would only cost a rate limiter's edge more overload answers.
    pub(in crate::backend::concurrency::controller) fn refusal_hold(
        &self,
        rtt: f64,
        permits_fell: bool,
    ) -> Duration {
        if permits_fell || !self.reckons_others() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((self.srtt.unwrap_or(0.0) - rtt).max(0.0))
    }

    /// Moves the limit (a decision of this worker's: the version moves too) and the
    /// permits with it, an increase paced.
    pub(super) fn set_limit(&mut self, semaphore: &Semaphore, new: usize, now: Instant) {
        let new = new.clamp(self.settings.min, self.settings.max);
        if new == self.limit {
            return;
        }
        self.account(now);
        if new > self.limit {
            self.epoch += 1;
            self.epoch_pending = false;
            self.window = Window::new(now);
        } else {
            self.epoch_pending = true;
            self.last_cut = Some(now);
            self.probe_streak = 0;
        }
        self.limit = new;
        self.version += 1;
        self.calls_since_change = 0;
        self.group_calls_since_change = 0.0;
        self.changed_at = now;
        self.resize(semaphore, now, true);
    }

    /// This worker's permits under the current limit: all of it alone, its share in a group.
    fn target_permits(&self) -> usize {
        match &self.group {
            None => self.limit,
            Some(group) => group.permits(self.limit),
        }
    }

    /// Brings the semaphore to [`Self::target_permits`]: an increase paced over a round trip
    /// when `paced` (the limit rose), at once otherwise (another member gave up its share).
    pub(super) fn resize(&mut self, semaphore: &Semaphore, now: Instant, paced: bool) {
        let new = self.target_permits();
        if new > self.permits {
            let up = new - self.permits;
            let cancelled = up.min(self.to_forget);
            self.to_forget -= cancelled;
            let up = up - cancelled;
            if paced {
                self.release_due(semaphore, now);
                self.pacing = Pacing {
                    owed: self.pacing.unreleased() + up,
                    released: 0,
                    from: Some(now),
                    over: self.srtt.unwrap_or(0.0),
                };
                self.release_due(semaphore, now);
            } else {
                semaphore.add_permits(up);
            }
        } else if new < self.permits {
            let down = self.permits - new;
            let unpaid = down.min(self.pacing.unreleased());
            self.pacing.owed -= unpaid;
            let down = down - unpaid;
            self.to_forget += down - semaphore.forget_permits(down);
        }
        self.permits = new;
    }

    /// Gives the semaphore the share of the current increase that is due by `now`, and
    /// collects permits still owed to a shrink from those free now (a permit handed to a
    /// waiter that was then dropped returns to the semaphore without passing `release`).
    pub(in crate::backend::concurrency::controller) fn release_due(
        &mut self,
        semaphore: &Semaphore,
        now: Instant,
    ) {
        if self.to_forget > 0 {
            self.to_forget -= semaphore.forget_permits(self.to_forget);
        }
        let Some(from) = self.pacing.from else { return };
        let pacing = &mut self.pacing;
        let elapsed = now.duration_since(from).as_secs_f64();
        let due = if elapsed >= pacing.over {
            pacing.owed
        } else {
            ((pacing.owed as f64 * elapsed / pacing.over).ceil() as usize).min(pacing.owed)
        };
        if due > pacing.released {
            semaphore.add_permits(due - pacing.released);
            pacing.released = due;
        }
        if pacing.released == pacing.owed {
            *pacing = Pacing::default();
        }
    }

    /// How long until the next permit of a paced increase is due, if one is owed and is
    /// to be handed out on time: in a group, a climb to a level known (or not yet known
    /// not) to be good. A probe's step comes out as calls start and finish, which under a
    /// steady load is about as soon, and against a rate limiter's edge a little more
    /// gently (`rate_limited`: 1.03% overload answers on time, 0.95% as calls go).
    /// Alone, on time made the first search reach a queueing backend of 256 slots sooner,
    /// before its latency baseline had a clean window, and the limit then sat higher above
    /// the slots (`capacity_256_queue`: mean 292 against 284, outside its band of 250-290).
    pub(in crate::backend::concurrency::controller) fn next_release(
        &self,
        now: Instant,
    ) -> Option<Duration> {
        if self.limit > self.recover_to || !self.reckons_others() {
            return None;
        }
        self.pacing.next_due(now)
    }

    pub(super) fn account(&mut self, now: Instant) {
        let secs = now.duration_since(self.accounted_at).as_secs_f64();
        self.limit_seconds += self.limit as f64 * secs;
        self.accounted_at = now;
    }
}
