//! The policy: what each outcome proves about the backend's capacity, and how the limit
//! moves. Pure state under the controller's lock; the only side effect is resizing the
//! semaphore.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{BackPressureCounts, CallTicket, ControllerStats};
use crate::backend::concurrency::baseline::Baseline;
use crate::backend::concurrency::ConcurrencySettings;
use crate::backend::BackendError;

/// Weight of a new round trip in the smoothed RTT (TCP's 1/8).
const SRTT_GAIN: f64 = 0.125;
/// Most current-epoch samples a judging window waits for.
const MAX_WINDOW_SAMPLES: usize = 32;

/// The controller's whole state. Created with the controller, lives as long as it.
#[derive(Debug)]
pub(super) struct State {
    /// Clamped copy of the settings.
    settings: ConcurrencySettings,
    limit: usize,
    in_flight: usize,
    /// Permits to forget as they come back, because the limit fell below those in use.
    to_forget: usize,
    /// The highest limit known to be good: below it the limit doubles per round trip,
    /// above it every increase is a probe. Starts at `max` (nothing known).
    recover_to: usize,
    /// Probe spacing factor: doubles with each failed probe, up to `max_probe_backoff`.
    probe_backoff: u32,
    /// Successful calls since the limit last changed.
    calls_since_change: u64,
    /// No increase before this instant (the latest Retry-After window).
    hold_until: Instant,
    /// Bumped when the limit changes (after in-flight calls drain below a cut), so a
    /// window only judges calls sent under the current limit.
    epoch: u64,
    /// A cut is waiting for in-flight calls to drain before the next epoch.
    epoch_pending: bool,
    /// When the current run of back-pressure began; ended by a clean window.
    episode: Option<Instant>,
    /// Smoothed round-trip time of successes, seconds: the length of a judging window.
    srtt: Option<f64>,
    window: Window,
    baseline: Baseline,
    /// Integral of the limit over time up to `accounted_at`.
    limit_seconds: f64,
    accounted_at: Instant,
    created: Instant,
    back_pressure: BackPressureCounts,
    probes: u64,
    failed_probes: u64,
}

/// Evidence gathered since the last judgement.
#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Current-epoch successes and their sums (seconds, seconds, calls).
    samples: usize,
    rtt: f64,
    queueing: f64,
    level: f64,
    /// Demand reached the limit: an increase would be used.
    reached_limit: bool,
    back_pressure: bool,
}

impl Window {
    fn new(opened: Instant) -> Self {
        Self {
            opened,
            samples: 0,
            rtt: 0.0,
            queueing: 0.0,
            level: 0.0,
            reached_limit: false,
            back_pressure: false,
        }
    }
}

impl State {
    pub(super) fn new(mut settings: ConcurrencySettings, now: Instant) -> Self {
        settings.min = settings.min.max(1);
        settings.max = settings.max.max(settings.min);
        settings.initial = settings.initial.clamp(settings.min, settings.max);
        settings.probe_after_calls = settings.probe_after_calls.max(1);
        settings.max_probe_backoff = settings.max_probe_backoff.max(1);
        settings.queue_tolerance = settings.queue_tolerance.clamp(0.01, 0.5);
        Self {
            limit: settings.initial,
            in_flight: 0,
            to_forget: 0,
            recover_to: settings.max,
            probe_backoff: 1,
            calls_since_change: 0,
            hold_until: now,
            epoch: 0,
            epoch_pending: false,
            episode: None,
            srtt: None,
            window: Window::new(now),
            baseline: Baseline::new(Duration::from_millis(settings.baseline_window_ms)),
            limit_seconds: 0.0,
            accounted_at: now,
            created: now,
            back_pressure: BackPressureCounts::default(),
            probes: 0,
            failed_probes: 0,
            settings,
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn stats(&mut self, now: Instant) -> ControllerStats {
        self.account(now);
        let elapsed = now.duration_since(self.created);
        let secs = elapsed.as_secs_f64();
        let mean_limit = if secs > 0.0 {
            self.limit_seconds / secs
        } else {
            self.limit as f64
        };
        ControllerStats {
            limit: self.limit,
            in_flight: self.in_flight,
            mean_limit,
            limit_seconds: self.limit_seconds,
            elapsed,
            back_pressure: self.back_pressure,
            probes: self.probes,
            failed_probes: self.failed_probes,
        }
    }

    /// Whether a returning permit must be forgotten (and counts it).
    pub(super) fn take_forget(&mut self) -> bool {
        let forget = self.to_forget > 0;
        self.to_forget -= usize::from(forget);
        forget
    }

    /// A call is sent: returns its level (in flight, itself included) and epoch.
    pub(super) fn start(&mut self) -> (usize, u64) {
        self.in_flight += 1;
        self.window.reached_limit |= self.in_flight >= self.limit;
        (self.in_flight, self.epoch)
    }

    /// After every finished call, whatever its outcome.
    pub(super) fn on_finished(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.epoch_pending && self.in_flight <= self.limit {
            self.epoch += 1;
            self.epoch_pending = false;
            self.window = Window::new(now);
        }
    }

    pub(super) fn on_success(
        &mut self,
        semaphore: &Semaphore,
        ticket: CallTicket,
        tokens: u64,
        now: Instant,
    ) {
        let rtt = ticket.rtt(now);
        self.srtt = Some(self.srtt.map_or(rtt, |s| s + SRTT_GAIN * (rtt - s)));
        let base = self.baseline.observe(tokens, rtt, now);
        self.calls_since_change += 1;
        if ticket.epoch == self.epoch && !self.epoch_pending {
            let w = &mut self.window;
            w.samples += 1;
            w.rtt += rtt;
            w.queueing += rtt - base;
            w.level += ticket.level as f64;
        }
        self.judge(semaphore, now);
    }

    /// A call sent as the `level`-th in flight was refused: the backend holds fewer than
    /// `level` of ours, so the limit drops to `level - 1` (not by a ratio: in reject mode
    /// that level is the capacity, and halving would waste a quarter of it on average).
    pub(super) fn on_back_pressure(
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
        self.window.back_pressure = true;
        let bound = ticket.level.saturating_sub(1).max(self.settings.min);
        match self.episode {
            None => {
                self.episode = Some(now);
                if bound >= self.recover_to {
                    self.failed_probe();
                } else {
                    self.recover_to = bound;
                    self.probe_backoff = 1;
                }
            }
            // Sent before the run began: the same evidence as its first refusal. Calls
            // sent later, at lower levels, mostly show an outage deepening, which must
            // not erase what the capacity was (the limit still falls).
            Some(began) if ticket.started <= began => {
                self.recover_to = self.recover_to.min(bound);
            }
            Some(_) => {}
        }
        if bound < self.limit {
            self.set_limit(semaphore, bound, now);
        }
    }

    /// Once a window is one smoothed RTT long and holds enough current-epoch successes:
    /// cut on queueing, else recover fast below `recover_to`, else probe when due.
    fn judge(&mut self, semaphore: &Semaphore, now: Instant) {
        let Some(srtt) = self.srtt else { return };
        let needed = (self.limit / 4).clamp(1, MAX_WINDOW_SAMPLES);
        let elapsed = now.duration_since(self.window.opened).as_secs_f64();
        if self.window.samples < needed || elapsed < srtt {
            return;
        }
        let window = std::mem::replace(&mut self.window, Window::new(now));
        if window.back_pressure {
            return;
        }
        self.episode = None;
        let tolerance = self.settings.queue_tolerance;
        let queueing = if window.rtt > 0.0 {
            window.queueing / window.rtt
        } else {
            0.0
        };
        if queueing > tolerance {
            // Little's law: the share of the round trip not spent queueing is the share
            // of the calls in flight that the backend is serving.
            let serving = window.level / window.samples as f64 * (1.0 - queueing);
            let target = (serving / (1.0 - tolerance / 2.0)).floor() as usize;
            let target = target.max(self.settings.min);
            if target < self.limit {
                if self.limit > self.recover_to {
                    self.failed_probe();
                    self.recover_to = self.recover_to.min(target);
                } else {
                    self.recover_to = target;
                    self.probe_backoff = 1;
                }
                self.set_limit(semaphore, target, now);
            }
        } else if window.reached_limit && now >= self.hold_until {
            if self.limit > self.recover_to {
                // A probe held for a whole clean window: the new level is good.
                self.recover_to = self.limit;
                self.probe_backoff = 1;
            }
            let due = u64::from(self.settings.probe_after_calls) * u64::from(self.probe_backoff);
            if self.limit < self.recover_to {
                let doubled = self.limit.saturating_mul(2).min(self.recover_to);
                self.set_limit(semaphore, doubled, now);
            } else if self.calls_since_change >= due && self.limit < self.settings.max {
                self.probes += 1;
                self.set_limit(semaphore, self.limit + 1, now);
            }
        }
    }

    fn failed_probe(&mut self) {
        self.failed_probes += 1;
        self.probe_backoff = self
            .probe_backoff
            .saturating_mul(2)
            .min(self.settings.max_probe_backoff);
    }

    /// Moves the limit and resizes the semaphore to match.
    fn set_limit(&mut self, semaphore: &Semaphore, new: usize, now: Instant) {
        let new = new.clamp(self.settings.min, self.settings.max);
        if new == self.limit {
            return;
        }
        self.account(now);
        if new > self.limit {
            let up = new - self.limit;
            let cancelled = up.min(self.to_forget);
            self.to_forget -= cancelled;
            semaphore.add_permits(up - cancelled);
            self.epoch += 1;
            self.epoch_pending = false;
            self.window = Window::new(now);
        } else {
            let down = self.limit - new;
            self.to_forget += down - semaphore.forget_permits(down);
            self.epoch_pending = true;
        }
        self.limit = new;
        self.calls_since_change = 0;
    }

    fn account(&mut self, now: Instant) {
        let secs = now.duration_since(self.accounted_at).as_secs_f64();
        self.limit_seconds += self.limit as f64 * secs;
        self.accounted_at = now;
    }
}
