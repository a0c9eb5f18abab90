//! The policy: what each piece of evidence proves about the backend's capacity, and where
//! the limit goes. Pure state: no semaphore, no clock (time comes in as an argument), so
//! every transition can be tested as a function. The controller applies what it decides.
//!
//! The limit moves between a level known to be good and what the evidence allows:
//! - a refusal (429, 503, timeout) of a call sent as the k-th in flight proves the backend
//!   holds fewer than k, so the limit drops to k - 1, not by a ratio (`refusal`);
//! - a window whose latency was mostly queueing cuts the limit to the calls the backend
//!   was serving (Little's law), plus a little queue (`on_queueing`);
//! - a clean window climbs back to the good level by doubling, or probes above it when due
//!   (`climb`), by the rule of the current [`Phase`] (`phase`) and the probe schedule
//!   (`schedule`).

mod climb;
mod phase;
mod refusal;
mod schedule;
#[cfg(test)]
mod tests;

use tokio::time::Instant;

use super::evidence::{Gauges, Verdict};
use super::peers::Peers;
use super::ConcurrencySettings;
use phase::Phase;

/// While the good level rests on one reading, probes come this many times as often.
const UNCONFIRMED_QUICKENING: u64 = 4;
use refusal::{Overshoot, Refusals};
use schedule::ProbeSchedule;

/// What a controller believes about the backend, as the workers pacing it share it.
/// Newer versions win; of two estimates with one version, the lower limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The limit: calls the backend takes at once (from every worker sharing it).
    pub limit: usize,
    /// The highest limit known to be good.
    pub recover_to: usize,
    pub version: u64,
}

/// The calls since the limit last changed.
#[derive(Debug, Clone, Copy)]
struct SinceChange {
    at: Instant,
    /// This worker's successes...
    calls: u64,
    /// ...and the backend's calls they stand for (see [`Peers::calls_per_success`]).
    reckoned: f64,
}

impl SinceChange {
    fn new(at: Instant) -> Self {
        Self {
            at,
            calls: 0,
            reckoned: 0.0,
        }
    }
}

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct Policy {
    /// Clamped copy of the settings.
    settings: ConcurrencySettings,
    /// The limit: calls the backend is believed to take (from this worker and its peers
    /// together, when it shares the backend with them).
    limit: usize,
    /// The highest limit known to be good: below it the limit doubles per round trip,
    /// above it every increase is a probe. `max` while nothing is known (`Search`).
    good: usize,
    /// False while `good` rests on one reading, the first refusal of the search: probes
    /// above it then come [`UNCONFIRMED_QUICKENING`] times as often, and every refusal
    /// of the overshoot lowers it to the lowest level read, until a probe fails.
    confirmed: bool,
    /// Bumped by every change of `limit` decided here; a newer estimate from a peer
    /// replaces ours ([`Policy::adopt`]).
    version: u64,
    phase: Phase,
    change: SinceChange,
    /// No increase before this instant (the latest Retry-After window).
    hold_until: Instant,
    schedule: ProbeSchedule,
    refusals: Refusals,
    overshoot: Overshoot,
    /// For the trace's timestamps.
    born: Instant,
}

impl Policy {
    pub(super) fn new(mut settings: ConcurrencySettings, now: Instant) -> Self {
        settings.min = settings.min.max(1);
        settings.max = settings.max.max(settings.min);
        settings.initial = settings.initial.clamp(settings.min, settings.max);
        settings.probe_after_calls = settings.probe_after_calls.max(1);
        settings.max_probe_backoff = settings.max_probe_backoff.max(1);
        settings.queue_tolerance = settings.queue_tolerance.clamp(0.01, 0.5);
        Self {
            limit: settings.initial,
            good: settings.max,
            confirmed: true,
            version: 0,
            phase: Phase::Search,
            change: SinceChange::new(now),
            hold_until: now,
            schedule: ProbeSchedule::new(now),
            refusals: Refusals::default(),
            overshoot: Overshoot::default(),
            born: now,
            settings,
        }
    }

    pub(super) fn settings(&self) -> &ConcurrencySettings {
        &self.settings
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// When the limit last changed.
    pub(super) fn changed_at(&self) -> Instant {
        self.change.at
    }

    /// Whether the limit is at or below the good level (climbing back to it, or holding):
    /// not probing above it.
    pub(super) fn at_or_below_good(&self) -> bool {
        self.limit <= self.good
    }

    /// Whether the limit has carried `probe_after_calls` since it last changed.
    pub(super) fn steady(&self) -> bool {
        self.change.calls >= u64::from(self.settings.probe_after_calls)
    }

    /// `(sent, failed)` probes since creation.
    pub(super) fn probe_counts(&self) -> (u64, u64) {
        self.schedule.counts()
    }

    pub(super) fn estimate(&self) -> Estimate {
        Estimate {
            limit: self.limit,
            recover_to: self.good,
            version: self.version,
        }
    }

    /// A success, standing for `reckoned` of the backend's calls.
    pub(super) fn count_success(&mut self, reckoned: f64) {
        self.change.calls += 1;
        self.change.reckoned += reckoned;
    }

    /// A window without refusals was judged (a window with refusals was judged by them).
    pub(super) fn on_window(
        &mut self,
        verdict: Verdict,
        srtt: f64,
        peers: &dyn Peers,
        now: Instant,
    ) {
        self.refusals.end_episode();
        match verdict {
            Verdict::Noise { from } => {
                // Undo the cuts, else they would go on down to `min`.
                self.set_good(self.good.max(from));
                self.set_limit(from, now);
            }
            Verdict::Queueing {
                level, queueing, ..
            } => self.on_queueing(level, queueing, now),
            Verdict::Clean {
                reached: true,
                top_level,
            } if now >= self.hold_until => self.on_clean(top_level, srtt, peers, now),
            Verdict::Clean { .. } | Verdict::Unclear => {}
        }
    }

    /// Too much of the round trip was queueing at the backend, `level` calls in flight.
    fn on_queueing(&mut self, level: f64, queueing: f64, now: Instant) {
        let tolerance = self.settings.queue_tolerance;
        // Little's law: the share of the round trip not spent queueing is the share of the
        // calls in flight that the backend is serving; keep a little queue above it.
        let serving = level * (1.0 - queueing);
        let target = ((serving / (1.0 - tolerance / 2.0)).round() as usize).max(self.settings.min);
        tracing::debug!(
            t = self.t(now),
            limit = self.limit,
            queueing,
            serving,
            target,
            recover_to = self.good,
            "adaptive concurrency: queueing cut"
        );
        if self.limit > self.good {
            // A failed probe: back to the level known to be good. Should the backend have
            // slowed down meanwhile, the next window says so.
            self.probe_failed(false, now);
            let back = target.max(self.good).min(self.limit - 1);
            self.set_limit(back, now);
        } else if target < self.limit {
            if target < self.good {
                self.phase.fell(self.good, target, self.settings.max, now);
            }
            self.set_good(target);
            self.schedule.restart_backoff();
            self.set_limit(target, now);
        }
    }

    /// A reading of the backend's own gauges: requests waiting inside the server mean the
    /// limit is that many too high. Cut it by them, unless a cut is so recent that the
    /// gauges (which lag) cannot show it yet.
    pub(super) fn on_gauges(&mut self, gauges: &Gauges, now: Instant) {
        let settled = self
            .refusals
            .last_cut()
            .is_none_or(|cut| now >= cut + gauges.lag);
        if gauges.waiting < 1.0 || !settled {
            return;
        }
        let cut = self.limit.saturating_sub(gauges.waiting.round() as usize);
        let cut = cut.max(self.settings.min);
        if cut < self.limit {
            tracing::debug!(
                t = self.t(now),
                limit = cut,
                waiting = gauges.waiting,
                running = gauges.running,
                "adaptive concurrency: the backend's own queue"
            );
            self.set_good(cut);
            self.confirmed = true;
            self.set_limit(cut, now);
        }
    }

    /// Takes a peer's estimate when it is newer than ours (or as new and lower: of two
    /// concurrent changes the more cautious wins). Returns whether it was taken.
    pub(super) fn adopt(&mut self, remote: Estimate, now: Instant) -> bool {
        let (limit, good) = if remote.version > self.version {
            (remote.limit, remote.recover_to)
        } else if remote.version == self.version {
            (
                remote.limit.min(self.limit),
                remote.recover_to.min(self.good),
            )
        } else {
            return false;
        };
        let good = good.clamp(self.settings.min, self.settings.max);
        if self.phase == Phase::Search && good < self.settings.max {
            // A peer's refusal ended the first search for everyone.
            self.overshoot.ended = Some(now);
        }
        if limit == self.limit && good == self.good {
            // A peer moved it and back (a failed probe): the counts start again, so the
            // peers together probe no more often than one worker would.
            if remote.version > self.version {
                self.version = remote.version;
                self.change = SinceChange::new(now);
            }
            return false;
        }
        if self.limit > self.good && limit <= self.good {
            // This worker's probe, ended by a peer's refusal: failed all the same (the
            // calls are shared, so whose call met the full backend is chance). Else a
            // worker whose probes the others paid for went on probing at the search's pace.
            self.probe_failed(true, now);
        }
        self.set_limit(limit, now);
        self.set_good(good);
        self.version = remote.version;
        true
    }

    /// Takes `estimate` whatever its version (the peers', on joining them again).
    pub(super) fn rejoin(&mut self, estimate: Estimate, now: Instant) {
        self.set_limit(estimate.limit, now);
        self.set_good(
            estimate
                .recover_to
                .clamp(self.settings.min, self.settings.max),
        );
        self.version = estimate.version;
    }

    /// Paces alone from now on, with `own` calls: what this worker held of the peers'
    /// limit, so no worker jumps to the whole of it.
    pub(super) fn go_alone(&mut self, own: usize, now: Instant) {
        self.set_limit(own, now);
        self.set_good(self.good.min(own));
    }

    /// A probe failed, by a refusal or a peer's cut (`confirms`: the good level's reading
    /// is confirmed) or by queueing.
    fn probe_failed(&mut self, confirms: bool, now: Instant) {
        self.confirmed |= confirms;
        self.phase.probe_failed(self.limit);
        self.schedule.failed(self.settings.max_probe_backoff, now);
    }

    /// Sets the good level; at `max` nothing is known (`Search`), and below it the search
    /// is over.
    fn set_good(&mut self, good: usize) {
        self.good = good;
        if good >= self.settings.max {
            self.phase = Phase::Search;
        } else if self.phase == Phase::Search {
            self.phase = Phase::Steady;
        }
    }

    /// Moves the limit (a decision of this worker's: the version moves too).
    fn set_limit(&mut self, new: usize, now: Instant) {
        let new = new.clamp(self.settings.min, self.settings.max);
        if new == self.limit {
            return;
        }
        if new < self.limit {
            self.refusals.cut_at(now);
            self.schedule.end_streak();
        }
        self.limit = new;
        self.version += 1;
        self.change = SinceChange::new(now);
    }

    /// Seconds since creation, for the trace.
    fn t(&self, now: Instant) -> f64 {
        now.duration_since(self.born).as_secs_f64()
    }
}
