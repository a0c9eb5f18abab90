//! The permits that enforce a limit, in the manner of vector's shrinkable semaphore: an
//! increase is handed to the semaphore evenly over a round trip, a decrease forgets free
//! permits at once and the rest as they come back. Knows nothing of why the limit moved.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// An increase handed out evenly over one smoothed RTT, never as a burst: a rate-limited
/// backend would refuse the burst, and the refusals would read as a loss of capacity.
#[derive(Debug, Default)]
struct Pacing {
    owed: usize,
    released: usize,
    from: Option<Instant>,
    /// Seconds.
    over: f64,
}

impl Pacing {
    fn unreleased(&self) -> usize {
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

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct Permits {
    /// One permit per call allowed. Never closed.
    semaphore: Arc<Semaphore>,
    /// Permits this worker may use now (some may still be paced or due to be forgotten).
    count: usize,
    /// Permits to forget as they come back, because `count` fell below those in use.
    to_forget: usize,
    /// Permits of an increase not yet given to the semaphore.
    pacing: Pacing,
}

impl Permits {
    pub(super) fn new(count: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(count)),
            count,
            to_forget: 0,
            pacing: Pacing::default(),
        }
    }

    pub(super) fn semaphore(&self) -> Arc<Semaphore> {
        Arc::clone(&self.semaphore)
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Permits of an increase still being paced out.
    pub(super) fn unreleased(&self) -> usize {
        self.pacing.unreleased()
    }

    /// Brings the permits to `target`: an increase paced over `over_secs` when given (the
    /// limit rose), at once otherwise (another member gave up its share).
    pub(super) fn resize(&mut self, target: usize, over_secs: Option<f64>, now: Instant) {
        if target > self.count {
            let up = target - self.count;
            let cancelled = up.min(self.to_forget);
            self.to_forget -= cancelled;
            let up = up - cancelled;
            match over_secs {
                Some(over) => {
                    self.release_due(now);
                    self.pacing = Pacing {
                        owed: self.pacing.unreleased() + up,
                        released: 0,
                        from: Some(now),
                        over,
                    };
                    self.release_due(now);
                }
                None => self.semaphore.add_permits(up),
            }
        } else if target < self.count {
            let down = self.count - target;
            let unpaid = down.min(self.pacing.unreleased());
            self.pacing.owed -= unpaid;
            let down = down - unpaid;
            self.to_forget += down - self.semaphore.forget_permits(down);
        }
        self.count = target;
    }

    /// Gives the semaphore the share of the current increase that is due by `now`, and
    /// collects permits still owed to a shrink from those free now (a permit handed to a
    /// waiter that was then dropped returns to the semaphore without passing
    /// [`Self::take_forget`]).
    pub(super) fn release_due(&mut self, now: Instant) {
        if self.to_forget > 0 {
            self.to_forget -= self.semaphore.forget_permits(self.to_forget);
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
            self.semaphore.add_permits(due - pacing.released);
            pacing.released = due;
        }
        if pacing.released == pacing.owed {
            *pacing = Pacing::default();
        }
    }

    /// How long until the next paced permit is due, if one is owed.
    pub(super) fn next_due(&self, now: Instant) -> Option<Duration> {
        self.pacing.next_due(now)
    }

    /// Whether a returning permit must be forgotten (and counts it).
    pub(super) fn take_forget(&mut self) -> bool {
        let forget = self.to_forget > 0;
        self.to_forget -= usize::from(forget);
        forget
    }

    /// Whether the permits in existence match `count`, `held` being out now.
    #[cfg(test)]
    pub(super) fn match_count(&self, held: usize) -> bool {
        self.semaphore.available_permits() + held == self.count - self.unreleased() + self.to_forget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_increase_is_paced_over_the_round_trip_and_a_decrease_forgets_what_is_free() {
        let now = Instant::now();
        let mut permits = Permits::new(4);
        permits.resize(8, Some(0.1), now);
        // The four new permits come out evenly over the 100 ms, none at once.
        assert_eq!(permits.semaphore.available_permits(), 4);
        assert_eq!(permits.unreleased(), 4);
        assert_eq!(permits.next_due(now), Some(Duration::from_micros(1)));
        permits.release_due(now + Duration::from_millis(50));
        assert_eq!(permits.semaphore.available_permits(), 6);
        permits.release_due(now + Duration::from_millis(100));
        assert_eq!(permits.semaphore.available_permits(), 8);
        assert!(permits.next_due(now).is_none());
        // Two in use, a cut to 1: the six free are forgotten now, one more as it comes back.
        let held = permits
            .semaphore()
            .try_acquire_many_owned(2)
            .expect("8 are free");
        permits.resize(1, None, now);
        assert_eq!(permits.semaphore.available_permits(), 0);
        assert!(permits.match_count(2));
        assert!(permits.take_forget(), "one of those in use is owed");
        assert!(!permits.take_forget());
        held.forget();
    }
}
