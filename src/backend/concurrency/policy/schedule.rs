//! When the next probe falls due: the backoff that failed probes build up and time wears
//! down, and the streak of probes that held, which makes the next come sooner and step
//! further (capacity given back by another tenant is found in a few round trips, not one
//! call at a time).

use std::time::Duration;

use tokio::time::Instant;

/// A failed probe's penalty halves after this long without another failed probe, so
/// capacity freed by another worker is found again.
const BACKOFF_DECAY: Duration = Duration::from_secs(10);
/// Probes in a row that held count up to this many: each doubles the next probe's step
/// and halves its wait, up to 16 times.
pub(super) const MAX_STREAK: u32 = 4;

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct ProbeSchedule {
    /// Probe spacing factor: doubles with each failed probe, up to `max_probe_backoff`;
    /// back to 1 when a probe holds or the capacity is found to have fallen.
    backoff: u32,
    /// When `backoff` last grew or decayed.
    backoff_changed: Instant,
    /// Probes in a row that held; ended by a failed probe and by any cut.
    streak: u32,
    /// Probes sent, and of those, failed (back-pressure or queueing), since creation.
    sent: u64,
    failed: u64,
}

impl ProbeSchedule {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            backoff: 1,
            backoff_changed: now,
            streak: 0,
            sent: 0,
            failed: 0,
        }
    }

    pub(super) fn streak(&self) -> u32 {
        self.streak
    }

    /// `(sent, failed)` probes since creation.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.sent, self.failed)
    }

    /// How many times as often as `probe_after_calls` the streak makes probes come.
    pub(super) fn streak_quickening(&self) -> u64 {
        1 << self.streak.min(MAX_STREAK)
    }

    /// Calls a steady level must carry before the next probe: `probe_after_calls`, times
    /// the backoff, over `quickening`.
    pub(super) fn due(&self, probe_after_calls: u64, quickening: u64) -> u64 {
        (probe_after_calls * u64::from(self.backoff)).div_ceil(quickening)
    }

    pub(super) fn probe_sent(&mut self) {
        self.sent += 1;
    }

    /// A probe held: the next one need not wait out earlier failures.
    pub(super) fn held(&mut self) {
        self.backoff = 1;
        self.streak += 1;
    }

    /// A probe failed: the next waits twice as long, up to `max_backoff`.
    pub(super) fn failed(&mut self, max_backoff: u32, now: Instant) {
        self.failed += 1;
        self.streak = 0;
        self.backoff = self.backoff.saturating_mul(2).min(max_backoff);
        self.backoff_changed = now;
    }

    /// The capacity was found lower: failures above the old level say nothing of the new.
    pub(super) fn restart_backoff(&mut self) {
        self.backoff = 1;
    }

    /// The limit was cut: the streak is over.
    pub(super) fn end_streak(&mut self) {
        self.streak = 0;
    }

    /// Halves the backoff for every [`BACKOFF_DECAY`] since it last changed.
    pub(super) fn decay(&mut self, now: Instant) {
        while self.backoff > 1 && now >= self.backoff_changed + BACKOFF_DECAY {
            self.backoff /= 2;
            self.backoff_changed += BACKOFF_DECAY;
        }
    }
}
