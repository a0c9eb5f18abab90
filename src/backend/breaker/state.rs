//! The breaker's policy as a pure state machine over a clock the caller passes in: when
//! to open, when to probe, what each result means. No locks, no timers, no channels.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{BreakerSettings, BreakerState};
use crate::backend::classify::{classify, Outcome};
use crate::backend::{BackendError, ChatResponse};

/// What one call's result says about the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It answered as a working server does: a success, a 429 (alive, just busy: the
    /// concurrency controller's business), or a 4xx about the request itself.
    Healthy,
    /// Any other retryable or back-pressure outcome: 5xx, 503, timeout, transport error,
    /// an answer that is not a chat completion.
    Failure,
    /// It was not asked: the deadline had passed, or a breaker below answered.
    NotAsked,
}

/// Judges one result with the shared classifier.
pub(super) fn verdict(result: &Result<ChatResponse, BackendError>) -> Verdict {
    match result {
        Err(BackendError::CircuitOpen { .. } | BackendError::DeadlineExceeded) => Verdict::NotAsked,
        Err(error) if error.status() == Some(429) => Verdict::Healthy,
        result => match classify(result) {
            Outcome::Success | Outcome::Fatal => Verdict::Healthy,
            Outcome::Retry | Outcome::BackPressure => Verdict::Failure,
        },
    }
}

/// Why `poll_ready` has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Open until then.
    Until(Instant),
    /// Half-open: until the breaker's probe answers.
    ForProbe,
}

/// A call that went to the backend, to be reported with its verdict.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admitted {
    /// The closed period it started in; results from earlier periods are stale.
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// The breaker's own probe is out; no call goes until it answers.
    HalfOpen,
}

/// Closed / open / half-open, with the counts that decide the transitions.
#[derive(Debug)]
pub(super) struct Policy {
    settings: BreakerSettings,
    phase: Phase,
    /// Failures in a row in the current closed period.
    consecutive: u32,
    /// Calls and failures over the last `window_ms` of the current closed period.
    window: Window,
    /// Length of the next open period: `open_ms`, doubled by each failed probe up to
    /// `max_open_ms`, back to `open_ms` on close.
    open_for: Duration,
    /// Bumped on every close.
    epoch: u64,
}

impl Policy {
    pub fn new(settings: &BreakerSettings) -> Self {
        Self {
            settings: settings.clone(),
            phase: Phase::Closed,
            consecutive: 0,
            window: Window::new(Duration::from_millis(settings.window_ms)),
            open_for: Duration::from_millis(settings.open_ms),
            epoch: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// The state: any change may unblock a waiter.
    pub(crate) fn snapshot(&self) -> BreakerState {
        self.state()
    }

    /// When the current open period ends, if open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Turns half-open once the open period is over; true when it did just now (the
    /// caller then sends the probe).
    pub fn advance(&mut self, now: Instant) -> bool {
        if matches!(self.phase, Phase::Open { until } if now >= until) {
            self.phase = Phase::HalfOpen;
            return true;
        }
        false
    }

    /// For `poll_ready`: go ahead (closed), or what to wait for.
    pub(crate) fn reserve(&self) -> Result<(), Wait> {
        match self.phase {
            Phase::Closed => Ok(()),
            Phase::Open { until } => Err(Wait::Until(until)),
            Phase::HalfOpen => Err(Wait::ForProbe),
        }
    }

    /// For `call`: admits the call, or says when the next chance may come (`CircuitOpen`).
    pub(crate) fn admit(&self, now: Instant) -> Result<Admitted, Duration> {
        match self.phase {
            Phase::Closed => Ok(Admitted { epoch: self.epoch }),
            Phase::Open { until } => Err(until.saturating_duration_since(now)),
            Phase::HalfOpen => Err(Duration::ZERO),
        }
    }

    /// The probe's answer: healthy closes the breaker, a failure opens it again for twice
    /// the previous period (capped).
    pub(crate) fn probed(&mut self, now: Instant, healthy: bool) {
        if self.phase != Phase::HalfOpen {
            return;
        }
        if healthy {
            self.close();
        } else {
            let longest = Duration::from_millis(self.settings.max_open_ms);
            self.open_for = (self.open_for * 2).min(longest);
            self.open(now);
        }
    }

    /// Takes a finished call into account. Results of calls that started before the
    /// last close, or that finish while open or half-open, are ignored: only the probe
    /// speaks for the backend then.
    pub fn record(&mut self, now: Instant, call: Admitted, verdict: Verdict) {
        if self.phase != Phase::Closed || call.epoch != self.epoch {
            return;
        }
        match verdict {
            Verdict::NotAsked => {}
            Verdict::Healthy => {
                self.consecutive = 0;
                self.window.record(now, false);
            }
            Verdict::Failure => {
                self.consecutive += 1;
                self.window.record(now, true);
                if self.should_open(now) {
                    self.open(now);
                }
            }
        }
    }

    fn should_open(&self, now: Instant) -> bool {
        let s = &self.settings;
        let (calls, failures) = self.window.totals(now);
        (s.consecutive_failures > 0 && self.consecutive >= s.consecutive_failures)
            || (calls > 0
                && calls >= s.min_calls
                && f64::from(failures) >= s.error_ratio * f64::from(calls))
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open {
            until: now + self.open_for,
        };
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive = 0;
        self.window.clear();
        self.open_for = Duration::from_millis(self.settings.open_ms);
        self.epoch += 1;
    }
}

/// Counts over a sliding window, kept as ten slots of a tenth of it each: calls leave
/// the window up to one slot early, in exchange for constant memory at any call rate.
#[derive(Debug)]
struct Window {
    span: Duration,
    /// Oldest first; none older than `span`.
    slots: VecDeque<Slot>,
}

#[derive(Debug)]
struct Slot {
    start: Instant,
    calls: u32,
    failures: u32,
}

impl Window {
    const SLOTS: u32 = 10;

    fn new(span: Duration) -> Self {
        Self {
            span,
            slots: VecDeque::new(),
        }
    }

    fn evict(&mut self, now: Instant) {
        while self
            .slots
            .front()
            .is_some_and(|slot| slot.start + self.span <= now)
        {
            self.slots.pop_front();
        }
    }

    fn record(&mut self, now: Instant, failed: bool) {
        self.evict(now);
        let width = self.span / Self::SLOTS;
        let slot = match self.slots.back_mut() {
            Some(slot) if now < slot.start + width => slot,
            _ => {
                self.slots.push_back(Slot {
                    start: now,
                    calls: 0,
                    failures: 0,
                });
                self.slots
                    .back_mut()
                    .expect("a slot was pushed on the line above")
            }
        };
        slot.calls += 1;
        slot.failures += u32::from(failed);
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        self.slots
            .iter()
            .filter(|slot| slot.start + self.span > now)
            .fold((0, 0), |(c, f), slot| (c + slot.calls, f + slot.failures))
    }

    fn clear(&mut self) {
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Result<ChatResponse, BackendError> {
        Err(BackendError::Status {
            status: code,
            message: String::new(),
            retry_after: None,
        })
    }

    #[test]
    fn verdicts_follow_the_classifier_except_429() {
        for code in [500, 502, 503, 504, 408] {
            assert_eq!(verdict(&status(code)), Verdict::Failure, "{code}");
        }
        for code in [429, 400, 401, 404, 422] {
            assert_eq!(verdict(&status(code)), Verdict::Healthy, "{code}");
        }
        let timeout = Err(BackendError::Timeout(Duration::from_secs(1)));
        assert_eq!(verdict(&timeout), Verdict::Failure);
        let unasked = Err(BackendError::DeadlineExceeded);
        assert_eq!(verdict(&unasked), Verdict::NotAsked);
    }

    #[test]
    fn window_forgets_old_calls() {
        let t0 = Instant::now();
        let mut window = Window::new(Duration::from_secs(10));
        for i in 0..20 {
            window.record(t0 + Duration::from_millis(500 * i), i % 2 == 0);
        }
        assert_eq!(window.totals(t0 + Duration::from_millis(9_999)), (20, 10));
        // At 15 s only the calls of the last 10 s (give or take one slot) remain.
        let (calls, _) = window.totals(t0 + Duration::from_secs(15));
        assert!((8..=9).contains(&calls), "{calls}");
        assert_eq!(window.totals(t0 + Duration::from_secs(30)), (0, 0));
    }
}
