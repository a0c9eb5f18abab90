//! Judging a window of evidence: cut on queueing (unless it is noise), recover fast
//! below the level known to be good, probe above it when due.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::State;

/// Below the level the capacity fell from, a probe is due at least this often...
const FORMER_PROBE_EVERY: Duration = Duration::from_secs(2);
/// ...and this often in a group, whose members take turns for it (any member's probe
/// restarts every member's wait). Workers that pace alone cannot take turns: were each to
/// probe every second, a group whose control topic is down would probe several times a
/// second, and every probe another worker's refusal reads as capacity lost.
const FORMER_PROBE_EVERY_IN_GROUP: Duration = Duration::from_secs(1);
/// In a group, each busy member after the first waits this much longer for that probe.
const FORMER_TURN: Duration = Duration::from_millis(500);
/// For this long after the fall, probes below that level climb only as fast as others.
pub(super) const FORMER_SETTLES: Duration = Duration::from_secs(3);
/// How long that level is remembered.
const FORMER_KEPT: Duration = Duration::from_secs(120);
/// Below that level, a probe proves itself, and the next comes, after this fraction of
/// `probe_after_calls`.
const FORMER_QUICK: u64 = 16;

/// Queueing that survives cuts down to this fraction of the limit is noise: a real queue
/// would have shrunk to a third of its share by then, unless it was over 60% of the RTT.
const NOISE_DEPTH: f64 = 0.6;

/// Evidence gathered since the last judgement.
#[derive(Debug)]
pub(super) struct Window {
    opened: Instant,
    /// Current-epoch successes and their sums (seconds, seconds, calls).
    samples: usize,
    rtt: f64,
    queueing: f64,
    level: f64,
    /// The highest level a success was sent at.
    top_level: usize,
    /// Sum of this worker's own calls in flight at each send (in a group, fewer than the
    /// level): how many completions a window needs.
    own: f64,
    /// Demand reached the limit: an increase would be used.
    reached_limit: bool,
    back_pressure: bool,
}

impl Window {
    pub(super) fn new(opened: Instant) -> Self {
        Self {
            opened,
            samples: 0,
            rtt: 0.0,
            queueing: 0.0,
            level: 0.0,
            top_level: 0,
            own: 0.0,
            reached_limit: false,
            back_pressure: false,
        }
    }

    /// One success of the current epoch.
    pub(super) fn record(&mut self, rtt: f64, queueing: f64, level: usize, own: usize) {
        self.samples += 1;
        self.rtt += rtt;
        self.queueing += queueing;
        self.level += level as f64;
        self.top_level = self.top_level.max(level);
        self.own += own as f64;
    }

    pub(super) fn note_reached_limit(&mut self, reached: bool) {
        self.reached_limit |= reached;
    }

    pub(super) fn note_back_pressure(&mut self) {
        self.back_pressure = true;
    }
}

impl State {
    /// Once a window is one smoothed RTT long and holds back half this worker's calls in flight
    /// (completions bunch up: calls sent together finish together, and a smaller sample
    /// reads the bunching as queueing): judge it, unless back-pressure already did.
    pub(super) fn judge(&mut self, semaphore: &Semaphore, now: Instant) {
        let Some(srtt) = self.srtt else { return };
        let samples = self.window.samples as f64;
        let elapsed = now.duration_since(self.window.opened).as_secs_f64();
        if samples < 1.0 || samples < self.window.own / samples / 2.0 || elapsed < srtt {
            return;
        }
        // An increase still being paced out has not been tried yet: the window stays open
        // until it is (or trouble closes it), so the next step comes as soon as this one
        // is proven rather than a whole window later.
        if !self.window.reached_limit && self.pacing.unreleased() > 0 && !self.window.back_pressure
        {
            return;
        }
        // Released but not yet taken up (the calls it was raised for are a moment from
        // starting): closed now, the window would prove nothing and cost a round trip
        // before the next step. It stays open up to a second round trip.
        let just_raised = self.window.opened == self.changed_at;
        if just_raised
            && !self.window.reached_limit
            && !self.window.back_pressure
            && elapsed < 2.0 * srtt
        {
            return;
        }
        let window = std::mem::replace(&mut self.window, Window::new(now));
        tracing::trace!(
            t = now.duration_since(self.created).as_secs_f64(),
            samples,
            elapsed,
            reached = window.reached_limit,
            back_pressure = window.back_pressure,
            limit = self.limit,
            permits = self.permits,
            in_flight = self.in_flight,
            unreleased = self.pacing.unreleased(),
            "adaptive concurrency: window"
        );
        if window.back_pressure {
            return;
        }
        self.episode = None;
        let tolerance = self.settings.queue_tolerance;
        let level = window.level / samples;
        let measured = if window.rtt > 0.0 {
            window.queueing / window.rtt
        } else {
            0.0
        };
        if let Some((first, from)) = self.queue_cuts {
            let deep = (self.limit as f64) <= NOISE_DEPTH * from as f64;
            if deep && measured > tolerance + self.noise(now) && measured >= 0.8 * first {
                // Cut after cut did not shorten the "queue": it is latency noise the
                // baseline does not cover (a queue shrinks as the limit falls). Learn it
                // and undo the cuts, else they would go on down to `min`.
                self.noise = (measured - tolerance / 2.0, now);
                self.queue_cuts = None;
                tracing::debug!(
                    noise = self.noise.0,
                    limit = from,
                    "adaptive concurrency: noise"
                );
                self.recover_to = self.recover_to.max(from);
                self.set_limit(semaphore, from, now);
                return;
            }
        }
        if self.gauged() {
            // The server says itself what waits inside it (`on_saturation`): latency,
            // which also grows as a batching server's batch fills, decides nothing.
            if window.reached_limit && now >= self.hold_until && !self.saturated() {
                self.on_clean(semaphore, window.top_level, now);
            }
            return;
        }
        let queueing = (measured - self.noise(now)).max(0.0);
        // Queueing while calls were sent well below the limit (a crowd of retries after an
        // outage, another tenant's burst) says nothing about the limit.
        if queueing > tolerance && level >= self.limit as f64 * (1.0 - tolerance) {
            self.on_queueing(semaphore, level, queueing, measured, now);
        } else if queueing <= tolerance {
            // A run of cuts ends once the limit holds steady (or is back where it began).
            let steady = self.calls_since_change >= u64::from(self.settings.probe_after_calls);
            if steady || self.queue_cuts.is_some_and(|(_, from)| self.limit >= from) {
                self.queue_cuts = None;
            }
            if window.reached_limit && now >= self.hold_until {
                self.on_clean(semaphore, window.top_level, now);
            }
        }
    }

    /// Too much of the round trip was queueing at the backend.
    fn on_queueing(
        &mut self,
        semaphore: &Semaphore,
        level: f64,
        queueing: f64,
        measured: f64,
        now: Instant,
    ) {
        let tolerance = self.settings.queue_tolerance;
        // Little's law: the share of the round trip not spent queueing is the share of the
        // calls in flight that the backend is serving; keep a little queue above it.
        let serving = level * (1.0 - queueing);
        let target = ((serving / (1.0 - tolerance / 2.0)).round() as usize).max(self.settings.min);
        tracing::debug!(
            t = now.duration_since(self.created).as_secs_f64(),
            limit = self.limit,
            queueing,
            serving,
            target,
            recover_to = self.recover_to,
            "adaptive concurrency: queueing cut"
        );
        let from = self.limit;
        if self.limit > self.recover_to {
            // A failed probe: back to the level known to be good. Should the backend have
            // slowed down meanwhile, the next window says so.
            self.failed_probe(now);
            let back = target.max(self.recover_to).min(self.limit - 1);
            self.set_limit(semaphore, back, now);
        } else if target < self.limit {
            if target < self.recover_to {
                self.remember_former(target, now);
            }
            self.recover_to = target;
            self.probe_backoff = 1;
            self.set_limit(semaphore, target, now);
        }
        if self.limit < from && self.queue_cuts.is_none() {
            self.queue_cuts = Some((measured, from));
        }
    }

    /// A clean window in which demand reached the limit (`top_level`: the highest level a
    /// success in it was sent at): recover fast below the level known to be good, else
    /// probe above it when due.
    fn on_clean(&mut self, semaphore: &Semaphore, top_level: usize, now: Instant) {
        self.decay_probe_backoff(now);
        // A level is good once it has carried as many calls as a probe must wait for: a
        // rate limiter's bucket can hide an excess for a window or two.
        // In a group each member counts its own calls for that, and any member's change
        // starts every count again. When the next probe falls due, each counts the group's
        // calls (its own, times the limit over its permits): the group probes as often as
        // one worker would, not once per member's share of the calls.
        // Probes that keep holding come faster and climb further (capacity given back by
        // another tenant is found in a few round trips, not one call at a time).
        let quick = |streak: u32| if self.tentative { 4 } else { 1 } * (1u64 << streak.min(4));
        // Below the level the capacity fell from, a probe whose own level was answered
        // for a clean window is taken as capacity coming back, and the climb goes on at the
        // next one: one window of proof instead of a hundred calls. (One that fails costs a
        // refusal, ends the streak and waits FORMER_PROBE_EVERY.) A window whose calls never
        // reached the probe's level proves nothing (in a group, a share can sit idle), nor
        // does one while the fall settles, when a group's view of its calls is noisiest.
        let below_former = self
            .former
            .is_some_and(|(level, since)| self.limit < level && now >= since + FORMER_SETTLES);
        let proof = if below_former && top_level >= self.limit {
            FORMER_QUICK
        } else {
            quick(self.probe_streak)
        };
        let probe_after_calls = u64::from(self.settings.probe_after_calls);
        let quick_due = probe_after_calls.div_ceil(FORMER_QUICK);
        let mut due =
            (probe_after_calls * u64::from(self.probe_backoff)).div_ceil(quick(self.probe_streak));
        // In a group, the first of those probes (whether capacity came back at all) holds
        // only once another member's refusal of it would have been heard: the others hear
        // of the probe a control-topic echo after it, their calls meet the full backend,
        // and their cut comes back an echo later. Meanwhile this worker's calls, counted
        // with the others' as reckoned, may all have been answered: taken as held, the
        // next step went two above the capacity, two overload answers.
        let srtt = Duration::from_secs_f64(self.srtt.unwrap_or(0.0));
        let heard = self.group.as_ref().is_none_or(|group| {
            group.others.is_empty()
                || !below_former
                || self.probe_streak > 0
                || now >= self.changed_at + srtt + 2 * group.echo
        });
        let held = heard && self.calls_since_change >= probe_after_calls.div_ceil(proof);
        if self.limit > self.recover_to && held {
            // The probe held: the next one need not wait out earlier failures.
            self.recover_to = self.limit;
            self.probe_backoff = 1;
            self.probe_streak += 1;
        }
        if below_former && self.probe_streak > 0 {
            due = quick_due;
        }
        // In a group the busy members take turns by key for a probe at a steady level: each
        // after the first waits half a count longer, and the first one's probe restarts
        // every count. The counts all restart at the same change, so without turns two
        // members reached theirs together and probed in the same millisecond: two overload
        // answers. (A climb's probes, which come quickly, are left to whoever is first.)
        let turn = self.group.as_ref().map_or(0, |group| group.turn()) as u32;
        if !self.tentative && self.probe_streak == 0 {
            due += due / 2 * u64::from(turn);
        }
        if self.limit >= self.recover_to && held {
            self.suspect = false;
        }
        if self
            .former
            .is_some_and(|(level, since)| self.limit >= level || now >= since + FORMER_KEPT)
        {
            self.former = None;
        }
        // Below the level the capacity fell from, probing waits at most FORMER_PROBE_EVERY
        // (FORMER_PROBE_EVERY_IN_GROUP in a group: utilisation back within 3 s of the
        // capacity's return takes a probe within about a second of it):
        // a probe that fails costs one overload answer, one that holds finds the capacity
        // given back (and the streak climbs the rest in a few round trips). In a group the
        // busy members take turns by key: the first one's wait runs out first, and its probe
        // restarts everyone's, so the group pays one overload answer per probe, not one per
        // member. Such a probe tests whether capacity came back: it steps by one whatever
        // the streak (a return to a level the group had just cut below is no climb).
        let former_level = self.former.map(|(level, _)| level);
        let former_every = if self.reckons_others() {
            FORMER_PROBE_EVERY_IN_GROUP
        } else {
            FORMER_PROBE_EVERY
        };
        let due_now = former_level.is_some()
            && now >= self.changed_at + former_every + FORMER_TURN * turn
            && self.calls_since_change >= quick_due;
        if self.limit < self.recover_to {
            if self.recover_to >= self.settings.max {
                self.proven = self.limit;
            }
            let doubled = self.limit.saturating_mul(2).min(self.recover_to);
            tracing::debug!(
                t = now.duration_since(self.created).as_secs_f64(),
                limit = doubled,
                recover_to = self.recover_to,
                "adaptive concurrency: recovering"
            );
            self.set_limit(semaphore, doubled, now);
        } else if self.limit == self.recover_to
            && (self.group_calls_since_change >= due as f64 || due_now)
            && self.limit < self.settings.max
        {
            self.probes += 1;
            let timed = due_now && self.group_calls_since_change < due as f64;
            let step = match former_level {
                // Below the level the capacity fell from, probes step by one: a step of two
                // against a backend still at the lower capacity cost two overload answers,
                // one for each member whose share grew. Once two in a row have held, at
                // least one at a level a probe had failed at since the fall, the capacity
                // came back, and given-back capacity comes back whole, as a rule: the next
                // goes back to that level at once (should only part have come back, that
                // increase is paced, and its first refusals read the rest). Probes that
                // hold below any failed one may only be climbing back from a cut that went
                // too low (a group's readings right after a fall are its noisiest).
                Some(level)
                    if self.probe_streak >= 2
                        && !timed
                        && self
                            .failed_below_former
                            .is_some_and(|failed| self.limit >= failed) =>
                {
                    level - self.limit
                }
                Some(_) => 1,
                None => 1usize << self.probe_streak.min(4),
            };
            tracing::debug!(
                t = now.duration_since(self.created).as_secs_f64(),
                limit = self.limit + step,
                "adaptive concurrency: probe"
            );
            self.set_limit(semaphore, self.limit + step, now);
        }
    }

    /// The learned latency noise, halving every baseline window so a backend that became
    /// steadier is judged more finely again.
    fn noise(&self, now: Instant) -> f64 {
        let (noise, at) = self.noise;
        let windows =
            now.duration_since(at).as_secs_f64() * 1e3 / self.settings.baseline_window_ms as f64;
        noise * 0.5f64.powf(windows)
    }
}
