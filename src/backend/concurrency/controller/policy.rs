//! The policy: what each outcome proves about the backend's capacity, and how the limit
//! moves. Pure state under the controller's lock; the only side effect is resizing the
//! semaphore.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

mod judge;
mod refusal;
mod resize;
#[cfg(test)]
mod tests;

use judge::Window;
use resize::Pacing;

use super::{BackPressureCounts, CallTicket, ControllerStats, Estimate};
use crate::backend::concurrency::baseline::Baseline;
use crate::backend::concurrency::share::GroupShare;
use crate::backend::concurrency::ConcurrencySettings;
use crate::backend::saturation::Signal;

/// A failed probe's penalty halves after this long without another failed probe.
pub(super) const PROBE_BACKOFF_DECAY: Duration = Duration::from_secs(10);

/// Weight of a new round trip in the smoothed RTT (TCP's 1/8).
const SRTT_GAIN: f64 = 0.125;

/// The last reading of the backend's own gauges.
#[derive(Debug, Clone, Copy)]
pub(super) struct Saturation {
    /// Requests waiting inside the server at the last reading.
    waiting: f64,
    /// The KV cache was (nearly) full at the last reading: no increase.
    full: bool,
}

/// KV-cache use above which a vLLM server is about to preempt: no increase.
const KV_CACHE_FULL: f64 = 0.95;

/// The controller's whole state. Created with the controller, lives as long as it.
#[derive(Debug)]
pub(super) struct State {
    /// Clamped copy of the settings.
    settings: ConcurrencySettings,
    /// The limit: what the backend is believed to take from us. Alone, this worker's own;
    /// in a group, the whole group's (see `group`).
    limit: usize,
    /// Bumped by every change of `limit` or `recover_to` made here; a newer estimate from
    /// another member of the group replaces ours ([`State::adopt`]).
    version: u64,
    /// This worker's part of the limit when it paces the backend with a group; `None`
    /// alone. Set by the group-pacing task, lives until replaced.
    pub(super) group: Option<GroupShare>,
    /// Permits this worker may use: the limit alone, its share of it in a group.
    permits: usize,
    /// The backend's own gauges, while they are read (see `backend::saturation`); they
    /// replace the latency signal as the measure of queueing at the backend.
    saturation: Option<Saturation>,
    in_flight: usize,
    /// Permits to forget as they come back, because `permits` fell below those in use.
    to_forget: usize,
    /// Permits of an increase not yet given to the semaphore.
    pacing: Pacing,
    /// The highest limit known to be good: below it the limit doubles per round trip,
    /// above it every increase is a probe. Starts at `max` (nothing known).
    recover_to: usize,
    /// Probe spacing factor: doubles with each failed probe, up to `max_probe_backoff`;
    /// back to 1 when a probe holds, halved after every [`PROBE_BACKOFF_DECAY`] without
    /// a failed one (capacity freed by another worker is then found again).
    probe_backoff: u32,
    /// The good level before the capacity last fell, and when it fell: while the limit is
    /// below it, probes come at least every `judge::FORMER_PROBE_EVERY` (every
    /// `judge::FORMER_PROBE_EVERY_IN_GROUP` in a group), so capacity given back is found
    /// in seconds. Forgotten after `judge::FORMER_KEPT` or once reached.
    former: Option<(usize, Instant)>,
    /// The lowest level a probe failed at since the capacity fell below `former`: once
    /// probes hold at it again, capacity came back (before that, probes that hold may
    /// only be climbing back from a cut that went too low).
    failed_below_former: Option<usize>,
    /// When the limit last changed.
    changed_at: Instant,
    /// Probes in a row that held, up to 4: each doubles the next probe's step and halves
    /// its wait. Reset by a failed probe and by any cut.
    probe_streak: u32,
    /// When `probe_backoff` last grew or decayed.
    probe_backoff_changed: Instant,
    /// Successful calls since the limit last changed...
    calls_since_change: u64,
    /// ...and the group's, as this worker reckons them (its own, times the limit over its
    /// permits): a probe falls due after as many calls as one worker's would.
    group_calls_since_change: f64,
    /// No increase before this instant (the latest Retry-After window).
    hold_until: Instant,
    /// Bumped when the limit changes (after in-flight calls drain below a cut), so a
    /// window only judges calls sent under the current limit.
    epoch: u64,
    /// A cut is waiting for in-flight calls to drain before the next epoch.
    epoch_pending: bool,
    /// When the current run of back-pressure began; ended by a clean window.
    episode: Option<Instant>,
    /// The current run lowers `recover_to` (it confirmed a loss of capacity).
    episode_lowers: bool,
    /// When the limit was last cut; refusals of calls sent before then are stale.
    last_cut: Option<Instant>,
    /// Refused below `recover_to` since the limit was last clean at it: one more such
    /// refusal before getting back there lowers `recover_to`.
    suspect: bool,
    /// `recover_to` was set by the first refusal of the first search, from one reading:
    /// probes above it come eight times as often until one fails (then it is confirmed).
    /// Going back up to a level that high by doubling would risk a second overshoot.
    tentative: bool,
    /// The level the first search last proved good (the limit a clean window doubled),
    /// and when its first refusal ended it (this worker's, or another member's as this
    /// worker heard of it): in a group, no reading of that search's overshoot (a refusal
    /// of a call sent before then, or up to a round trip after) goes below that level.
    proven: usize,
    search_ended: Option<Instant>,
    /// A run of queueing cuts, until the limit holds steady: the queueing measured at the
    /// first and the limit before it, to check that the cuts shorten the queue.
    queue_cuts: Option<(f64, usize)>,
    /// Queueing-like latency that cutting the limit did not remove (fraction of the round
    /// trip), and when it was learned; subtracted from later measurements.
    noise: (f64, Instant),
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
            version: 0,
            group: None,
            permits: settings.initial,
            saturation: None,
            in_flight: 0,
            to_forget: 0,
            pacing: Pacing::default(),
            recover_to: settings.max,
            probe_backoff: 1,
            probe_streak: 0,
            former: None,
            failed_below_former: None,
            changed_at: now,
            probe_backoff_changed: now,
            calls_since_change: 0,
            group_calls_since_change: 0.0,
            hold_until: now,
            epoch: 0,
            epoch_pending: false,
            episode: None,
            episode_lowers: false,
            last_cut: None,
            suspect: false,
            tentative: false,
            proven: 0,
            search_ended: None,
            queue_cuts: None,
            noise: (0.0, now),
            srtt: None,
            window: Window::new(now),
            baseline: Baseline::new(
                Duration::from_millis(settings.baseline_window_ms),
                settings.queue_tolerance / 2.0,
            ),
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

    pub(super) fn permits(&self) -> usize {
        self.permits
    }

    pub(super) fn estimate(&self) -> Estimate {
        Estimate {
            limit: self.limit,
            recover_to: self.recover_to,
            version: self.version,
        }
    }

    /// Takes another member's estimate when it is newer than ours (or as new and lower:
    /// of two concurrent changes the more cautious wins). Returns whether it was taken.
    pub(super) fn adopt(&mut self, semaphore: &Semaphore, remote: Estimate, now: Instant) -> bool {
        let (limit, recover_to) = if remote.version > self.version {
            (remote.limit, remote.recover_to)
        } else if remote.version == self.version {
            // Changed concurrently by two members: the more cautious of each figure.
            let limit = remote.limit.min(self.limit);
            (limit, remote.recover_to.min(self.recover_to))
        } else {
            return false;
        };
        let recover_to = recover_to.clamp(self.settings.min, self.settings.max);
        if self.recover_to >= self.settings.max && recover_to < self.settings.max {
            // Another member's refusal ended the first search for the group.
            self.search_ended = Some(now);
        }
        if limit == self.limit && recover_to == self.recover_to {
            // A member moved it and back (a failed probe): the group's counts start again,
            // so the group probes no more often than one worker would.
            if remote.version > self.version {
                (self.version, self.changed_at) = (remote.version, now);
                (self.calls_since_change, self.group_calls_since_change) = (0, 0.0);
            }
            return false;
        }
        if self.limit > self.recover_to && limit <= self.recover_to {
            // This worker's probe, ended by another member's refusal: failed all the same
            // (the group's calls are shared, so whose call met the full backend is chance).
            // Else a member whose probes the others paid for went on probing at the first
            // search's pace.
            self.tentative = false;
            self.failed_probe(now);
        }
        self.set_limit(semaphore, limit, now);
        self.recover_to = recover_to;
        self.version = remote.version;
        true
    }

    /// A reading of the backend's own gauges (`None`: there are none, or they are gone).
    /// Requests waiting inside the server mean the limit is that many too high: cut it by
    /// them, unless a cut is so recent that the gauges (which lag) cannot show it yet.
    pub(super) fn on_saturation(
        &mut self,
        semaphore: &Semaphore,
        signal: Option<Signal>,
        now: Instant,
    ) {
        let Some(signal) = signal else {
            self.saturation = None;
            return;
        };
        self.saturation = Some(Saturation {
            waiting: signal.waiting,
            full: signal
                .kv_cache_usage
                .is_some_and(|usage| usage >= KV_CACHE_FULL),
        });
        let settled = self
            .last_cut
            .is_none_or(|cut| now >= cut + signal.publisher.lag());
        if signal.waiting < 1.0 || !settled {
            return;
        }
        let cut = self.limit.saturating_sub(signal.waiting.round() as usize);
        let cut = cut.max(self.settings.min);
        if cut < self.limit {
            tracing::debug!(
                t = now.duration_since(self.created).as_secs_f64(),
                limit = cut,
                waiting = signal.waiting,
                running = signal.running,
                "adaptive concurrency: the backend's own queue"
            );
            self.recover_to = cut;
            self.tentative = false;
            self.set_limit(semaphore, cut, now);
        }
    }

    /// Whether the backend's own gauges say an increase would only queue inside it.
    pub(super) fn saturated(&self) -> bool {
        self.saturation.is_some_and(|s| s.waiting >= 1.0 || s.full)
    }

    /// Whether the backend's gauges stand in for the latency signal now.
    pub(super) fn gauged(&self) -> bool {
        self.saturation.is_some()
    }

    /// Takes `estimate` whatever its version (the group's, on joining it again).
    pub(super) fn rejoin(&mut self, semaphore: &Semaphore, estimate: Estimate, now: Instant) {
        self.set_limit(semaphore, estimate.limit, now);
        self.recover_to = estimate
            .recover_to
            .clamp(self.settings.min, self.settings.max);
        self.version = estimate.version;
    }

    /// Joins (`Some`) or leaves (`None`) a group; the permits follow at once. Leaving keeps
    /// what this worker held as its own limit, so no member jumps to the whole group's.
    pub(super) fn set_group(
        &mut self,
        semaphore: &Semaphore,
        group: Option<GroupShare>,
        now: Instant,
    ) {
        if group.is_none() && self.group.is_some() {
            let own = self.permits.max(self.in_flight).max(self.settings.min);
            self.group = None;
            self.set_limit(semaphore, own, now);
            self.recover_to = self.recover_to.min(own);
        }
        self.group = group;
        self.resize(semaphore, now, false);
    }

    /// The other members' calls at the backend (0 alone): added to this worker's own, the
    /// level at which a call reaches the backend.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the level of this worker's calls counts other members' calls too.
    pub(super) fn reckons_others(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(|group| !group.others.is_empty())
    }

    fn others_in_flight(&self) -> usize {
        self.group.as_ref().map_or(0, |group| {
            group.others_in_flight(self.limit, self.in_flight)
        })
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
            permits: self.permits,
            version: self.version,
            in_flight: self.in_flight,
            mean_limit,
            limit_seconds: self.limit_seconds,
            elapsed,
            back_pressure: self.back_pressure,
            probes: self.probes,
            failed_probes: self.failed_probes,
        }
    }

    /// A call is sent: returns its level (in flight, itself included, plus what the rest
    /// of the group holds), this worker's own calls in flight, and the epoch.
    pub(super) fn start(&mut self, semaphore: &Semaphore, now: Instant) -> (usize, usize, u64) {
        self.release_due(semaphore, now);
        self.in_flight += 1;
        // Only a level actually reached counts: with part of an increase still paced, a
        // window judged clean would double a limit never tried.
        let reached = self.pacing.unreleased() == 0 && self.in_flight >= self.permits;
        self.window.note_reached_limit(reached);
        (
            self.in_flight + self.others_in_flight(),
            self.in_flight,
            self.epoch,
        )
    }

    /// After every finished call, whatever its outcome.
    pub(super) fn on_finished(&mut self, semaphore: &Semaphore, now: Instant) {
        self.release_due(semaphore, now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.epoch_pending && self.in_flight <= self.permits {
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
        self.group_calls_since_change += if self.reckons_others() {
            self.limit as f64 / self.permits.max(1) as f64
        } else {
            1.0
        };
        if ticket.epoch == self.epoch && !self.epoch_pending {
            self.window
                .record(rtt, rtt - base, ticket.level, ticket.own);
        }
        self.judge(semaphore, now);
    }
}
