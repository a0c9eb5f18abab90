//! Latency noise: queueing-like latency that cutting the limit does not remove. A real
//! queue shrinks as the limit falls; what survives a run of cuts is learned as noise and
//! subtracted from later measurements, so the cuts stop before they reach `min`.

use tokio::time::Instant;

/// Queueing that survives cuts down to this fraction of the limit is noise: a real queue
/// would have shrunk to a third of its share by then, unless it was over 60% of the RTT.
const NOISE_DEPTH: f64 = 0.6;
/// Queueing still at this fraction of the first measurement of a run of cuts is the
/// same queue: the cuts did not shorten it.
const UNSHORTENED: f64 = 0.8;

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct NoiseFilter {
    /// The share of the round trip that may be queueing (`queue_tolerance`).
    tolerance: f64,
    /// How long it takes the learned noise to halve, in ms (`baseline_window_ms`).
    half_life_ms: f64,
    /// The learned noise (share of the round trip) and when it was learned.
    noise: (f64, Instant),
    /// The current run of queueing cuts, until the limit holds steady: the queueing
    /// measured at its first cut and the limit before it.
    cuts: Option<(f64, usize)>,
}

impl NoiseFilter {
    pub(super) fn new(tolerance: f64, half_life_ms: u64, now: Instant) -> Self {
        Self {
            tolerance,
            half_life_ms: half_life_ms as f64,
            noise: (0.0, now),
            cuts: None,
        }
    }

    pub(super) fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// The learned noise, halving every half-life so a backend that became steadier is
    /// judged more finely again.
    pub(super) fn level(&self, now: Instant) -> f64 {
        let (noise, at) = self.noise;
        let halvings = now.duration_since(at).as_secs_f64() * 1e3 / self.half_life_ms;
        noise * 0.5f64.powf(halvings)
    }

    /// A window measured `measured` queueing under `limit`: if a run of cuts went deep
    /// without shortening it, it is noise. Learns it and returns the limit the run began
    /// at, to go back to.
    pub(super) fn learn(&mut self, limit: usize, measured: f64, now: Instant) -> Option<usize> {
        let (first, from) = self.cuts?;
        let deep = (limit as f64) <= NOISE_DEPTH * from as f64;
        if !(deep && measured > self.tolerance + self.level(now) && measured >= UNSHORTENED * first)
        {
            return None;
        }
        self.noise = (measured - self.tolerance / 2.0, now);
        self.cuts = None;
        tracing::debug!(
            noise = self.noise.0,
            limit = from,
            "adaptive concurrency: noise"
        );
        Some(from)
    }

    /// The limit was cut from `from` to `limit` for `measured` queueing: the first cut of a
    /// run remembers both.
    pub(super) fn cut(&mut self, measured: f64, from: usize, limit: usize) {
        if limit < from && self.cuts.is_none() {
            self.cuts = Some((measured, from));
        }
    }

    /// A window without queueing: the run of cuts ends once the limit holds `steady` or
    /// is back where the run began.
    pub(super) fn settle(&mut self, limit: usize, steady: bool) {
        if steady || self.cuts.is_some_and(|(_, from)| limit >= from) {
            self.cuts = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queueing_that_cuts_do_not_shorten_is_learned_as_noise_and_fades() {
        let now = Instant::now();
        let mut filter = NoiseFilter::new(0.1, 60_000, now);
        filter.cut(0.3, 40, 30);
        assert_eq!(filter.learn(30, 0.3, now), None, "not deep yet");
        filter.cut(0.3, 30, 20);
        assert_eq!(
            filter.learn(20, 0.3, now),
            Some(40),
            "back to where the run began"
        );
        assert!((filter.level(now) - 0.25).abs() < 1e-9);
        let later = now + std::time::Duration::from_secs(60);
        assert!(
            (filter.level(later) - 0.125).abs() < 1e-9,
            "halves every window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_shrinks_with_the_cuts_is_real() {
        let now = Instant::now();
        let mut filter = NoiseFilter::new(0.1, 60_000, now);
        filter.cut(0.5, 40, 20);
        assert_eq!(filter.learn(20, 0.2, now), None);
        filter.settle(40, false);
        filter.cut(0.5, 40, 20);
        assert_eq!(
            filter.learn(20, 0.5, now),
            Some(40),
            "a new run began at 40"
        );
    }
}
