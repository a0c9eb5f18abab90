//! The arithmetic of the rate limit, over a clock the caller passes in: a token bucket
//! that may go into debt, and the pair of buckets (requests, tokens) one worker spends.
//! Nothing here sleeps or locks, so every rule is testable without a runtime.

use std::time::Duration;

use tokio::time::Instant;

/// Slack for float rounding, so a wake-up at the computed instant finds the tokens there.
const EPSILON: f64 = 1e-9;

/// A token bucket whose level may go below zero (debt, repaid only by refills).
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    /// Tokens added per second; 0 means it never refills.
    rate: f64,
    /// Most tokens it holds: the burst it can pay out at once after being idle.
    capacity: f64,
    /// Tokens now; negative is debt owed by calls already made.
    level: f64,
    /// When `level` was last brought up to date.
    updated: Instant,
}

impl Bucket {
    /// An empty bucket that never refills until [`Bucket::set_rate`].
    pub fn empty(now: Instant) -> Self {
        Self {
            rate: 0.0,
            capacity: 0.0,
            level: 0.0,
            updated: now,
        }
    }

    /// Brings `level` up to `now`. Clocks read by different clones may be slightly out of
    /// order; an earlier `now` adds nothing rather than counting an interval twice.
    fn refill(&mut self, now: Instant) {
        if now <= self.updated {
            return;
        }
        let elapsed = (now - self.updated).as_secs_f64();
        self.updated = now;
        if self.level < self.capacity {
            self.level = (self.level + elapsed * self.rate).min(self.capacity);
        }
    }

    /// Changes rate and capacity from `at` on (from the last update, if that is later).
    /// The saved level is kept (clamped to the new capacity) and debt is kept, so a change
    /// never mints a burst.
    pub(crate) fn set_rate(&mut self, at: Instant, rate: f64, capacity: f64) {
        self.refill(at);
        self.rate = rate;
        self.capacity = capacity;
        self.level = self.level.min(capacity);
    }

    /// When the level reaches `need`: `now` if it already has, `None` if it never will at
    /// the current rate.
    pub(crate) fn ready_at(&mut self, now: Instant, need: f64) -> Option<Instant> {
        self.refill(now);
        let missing = need - self.level;
        if missing <= EPSILON {
            return Some(now);
        }
        if self.rate <= 0.0 || need > self.capacity + EPSILON {
            return None;
        }
        // At least a microsecond, so a rounding-to-zero wait cannot spin.
        let wait = Duration::try_from_secs_f64(missing / self.rate).ok()?;
        now.checked_add(wait.max(Duration::from_micros(1)))
    }

    /// Takes `amount` tokens; the level may go negative.
    pub fn take(&mut self, now: Instant, amount: f64) {
        self.refill(now);
        self.level -= amount;
    }

    /// Gives back `amount` tokens, never above capacity.
    pub fn give(&mut self, now: Instant, amount: f64) {
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
    }

    #[cfg(test)]
    pub(crate) fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }
}

/// One worker's buckets: its share of the group's requests/s and tokens/min.
/// `None` for a limit that is not configured.
#[derive(Debug)]
pub(super) struct Limiter {
    /// Requests per second for the whole group, and this worker's bucket of them.
    requests: Option<(f64, Bucket)>,
    /// Tokens per second for the whole group, and this worker's bucket of them.
    tokens: Option<(f64, Bucket)>,
    /// Capacity of each bucket, as a duration of its rate.
    burst: Duration,
}

impl Limiter {
    /// Buckets start empty at share 0: nothing passes until the first [`Limiter::set_share`].
    pub fn new(
        requests_per_second: Option<f64>,
        tokens_per_second: Option<f64>,
        burst: Duration,
        now: Instant,
    ) -> Self {
        Self {
            requests: requests_per_second.map(|r| (r, Bucket::empty(now))),
            tokens: tokens_per_second.map(|r| (r, Bucket::empty(now))),
            burst,
        }
    }

    /// Scales both buckets to `share` (0..=1) of the group's limits from `at` on. The
    /// requests bucket holds at least one request, or no request could ever pass.
    pub(crate) fn set_share(&mut self, at: Instant, share: f64) {
        let burst = self.burst.as_secs_f64();
        if let Some((global, bucket)) = &mut self.requests {
            let rate = *global * share;
            let capacity = if rate > 0.0 {
                (rate * burst).max(1.0)
            } else {
                0.0
            };
            bucket.set_rate(at, rate, capacity);
        }
        if let Some((global, bucket)) = &mut self.tokens {
            let rate = *global * share;
            bucket.set_rate(at, rate, rate * burst);
        }
    }

    /// Takes one request if a request is available and the token bucket is not in debt.
    /// Otherwise says when to look again (`None`: not until the share changes).
    pub(crate) fn try_reserve(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        let requests_at = match &mut self.requests {
            Some((_, bucket)) => bucket.ready_at(now, 1.0),
            None => Some(now),
        };
        let tokens_at = match &mut self.tokens {
            Some((_, bucket)) => bucket.ready_at(now, 0.0),
            None => Some(now),
        };
        match (requests_at, tokens_at) {
            (Some(r), Some(t)) if r <= now && t <= now => {
                if let Some((_, bucket)) = &mut self.requests {
                    bucket.take(now, 1.0);
                }
                Ok(())
            }
            (Some(r), Some(t)) => Err(Some(r.max(t))),
            _ => Err(None),
        }
    }

    /// Returns a request taken by [`Limiter::try_reserve`] that was never sent.
    pub(crate) fn unreserve(&mut self, now: Instant) {
        if let Some((_, bucket)) = &mut self.requests {
            bucket.give(now, 1.0);
        }
    }

    /// Debits a call's estimated tokens; the bucket may go into debt.
    pub(crate) fn charge(&mut self, now: Instant, tokens: u64) {
        if let Some((_, bucket)) = &mut self.tokens {
            bucket.take(now, tokens as f64);
        }
    }

    /// Replaces a call's `charged` estimate by what it `actually` cost: a refund (capped at
    /// capacity) or an extra debit.
    pub fn settle(&mut self, now: Instant, charged: u64, actually: u64) {
        if let Some((_, bucket)) = &mut self.tokens {
            if actually < charged {
                bucket.give(now, (charged - actually) as f64);
            } else {
                bucket.take(now, (actually - charged) as f64);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn token_level(&mut self, now: Instant) -> Option<f64> {
        self.tokens.as_mut().map(|(_, bucket)| bucket.level(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn refills_at_the_rate_up_to_capacity() {
        let t0 = Instant::now();
        let mut bucket = Bucket::empty(t0);
        bucket.set_rate(t0, 10.0, 5.0);
        assert!((bucket.level(t0 + secs(0.3)) - 3.0).abs() < 1e-6);
        assert!((bucket.level(t0 + secs(60.0)) - 5.0).abs() < 1e-6);
    }

    #[test]
    fn debt_is_repaid_only_by_refills() {
        let t0 = Instant::now();
        let mut bucket = Bucket::empty(t0);
        bucket.set_rate(t0, 100.0, 10.0);
        bucket.take(t0, 500.0);
        assert_eq!(bucket.ready_at(t0, 0.0), Some(t0 + secs(5.0)));
        bucket.give(t0, 1_000.0);
        assert!(
            (bucket.level(t0) - 10.0).abs() < 1e-6,
            "refunds stop at capacity"
        );
    }

    #[test]
    fn share_change_keeps_debt_and_clamps_savings() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(None, Some(100.0), secs(1.0), t0);
        limiter.set_share(t0, 1.0);
        let t1 = t0 + secs(10.0);
        assert!((limiter.token_level(t1).expect("a tokens limit is set") - 100.0).abs() < 1e-6);
        limiter.set_share(t1, 0.5);
        assert!((limiter.token_level(t1).expect("a tokens limit is set") - 50.0).abs() < 1e-6);
        limiter.charge(t1, 150);
        limiter.set_share(t1, 1.0);
        assert!((limiter.token_level(t1).expect("a tokens limit is set") + 100.0).abs() < 1e-6);
    }

    #[test]
    fn zero_share_never_admits() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(Some(10.0), None, secs(1.0), t0);
        assert_eq!(limiter.try_reserve(t0 + secs(3600.0)), Err(None));
    }

    #[test]
    fn requests_bucket_holds_at_least_one_request() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(Some(0.5), None, secs(0.25), t0);
        limiter.set_share(t0, 1.0);
        assert_eq!(limiter.try_reserve(t0), Err(Some(t0 + secs(2.0))));
        assert_eq!(limiter.try_reserve(t0 + secs(2.0)), Ok(()));
        assert_eq!(
            limiter.try_reserve(t0 + secs(2.0)),
            Err(Some(t0 + secs(4.0)))
        );
    }
}
