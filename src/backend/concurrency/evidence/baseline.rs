//! The backend's no-load round-trip time as a function of a call's tokens, learned from
//! the fastest calls seen, so latency can be judged whatever each call's length.
//!
//! An LLM call takes about `a + b × tokens` when nothing waits ahead of it; queueing adds
//! the same wait to every call whatever its length. So the floor for `t` tokens is read
//! off the lower envelope of observed (tokens, rtt) points, one point per quarter-octave
//! of tokens, linearly interpolated between points. A floor made of the fastest calls sits
//! below a typical unqueued call by the backend's jitter, which would read as queueing; so
//! the baseline is the floor times the mean ratio of calls near it (within the queueing
//! tolerance). `rtt - baseline` is the queueing.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per doubling of the token count.
const BUCKETS_PER_OCTAVE: f64 = 4.0;
/// Weight of one near-floor call in the jitter ratio.
const RATIO_GAIN: f64 = 0.05;

/// The fastest recent call of one token bucket.
#[derive(Debug, Clone, Copy)]
struct Point {
    tokens: u64,
    /// Seconds.
    rtt: f64,
    /// When it was measured; older than the window, the next sample replaces it.
    at: Instant,
}

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct Baseline {
    /// How long a point is trusted.
    window: Duration,
    /// Keyed by bucket; points' token counts increase with the key.
    points: BTreeMap<u32, Point>,
    /// Calls at most this much above the floor (as a fraction) count as unqueued.
    band: f64,
    /// Mean rtt / floor of unqueued calls: the jitter above the floor, at least 1.
    ratio: f64,
}

impl Baseline {
    pub(super) fn new(window: Duration, band: f64) -> Self {
        Self {
            window,
            points: BTreeMap::new(),
            band,
            ratio: 1.0,
        }
    }

    /// Records a successful call and returns its no-load round-trip time in seconds
    /// (never above `rtt`, so the queueing `rtt - baseline` is never negative).
    pub(super) fn observe(&mut self, tokens: u64, rtt: f64, now: Instant) -> f64 {
        let tokens = tokens.max(1);
        let bucket = ((tokens as f64).log2() * BUCKETS_PER_OCTAVE) as u32;
        let sample = Point {
            tokens,
            rtt,
            at: now,
        };
        let replace = match self.points.get(&bucket) {
            None => true,
            Some(point) if now.duration_since(point.at) > self.window => true,
            Some(_) => self.estimate(tokens).is_some_and(|base| rtt < base),
        };
        if replace {
            self.points.insert(bucket, sample);
        }
        let floor = self.estimate(tokens).unwrap_or(rtt).min(rtt);
        if floor > 0.0 && rtt <= floor * (1.0 + self.band) {
            self.ratio += RATIO_GAIN * (rtt / floor - self.ratio);
        }
        (floor * self.ratio).min(rtt)
    }

    /// The floor at `tokens`, if any point is known.
    pub(super) fn estimate(&self, tokens: u64) -> Option<f64> {
        let mut below: [Option<&Point>; 2] = [None, None];
        let mut above: [Option<&Point>; 2] = [None, None];
        for point in self.points.values() {
            if point.tokens <= tokens {
                below = [below[1], Some(point)];
            } else if above[0].is_none() {
                above[0] = Some(point);
            } else if above[1].is_none() {
                above[1] = Some(point);
            }
        }
        let estimate = match (below[1], above[0]) {
            (Some(lo), Some(hi)) => line(lo, hi, tokens),
            (Some(lo), None) => below[0].map_or(lo.rtt, |prev| line(prev, lo, tokens)),
            (None, Some(hi)) => above[1].map_or(hi.rtt, |next| line(hi, next, tokens)),
            (None, None) => return None,
        };
        Some(estimate.max(0.0))
    }
}

/// The value at `tokens` of the line through `a` and `b` (never sloping down: a longer
/// call is never faster), extrapolated beyond them when needed.
fn line(a: &Point, b: &Point, tokens: u64) -> f64 {
    let (a, b) = if a.tokens <= b.tokens { (a, b) } else { (b, a) };
    if a.tokens == b.tokens {
        return a.rtt.min(b.rtt);
    }
    let slope = ((b.rtt - a.rtt) / (b.tokens - a.tokens) as f64).max(0.0);
    a.rtt + slope * (tokens as f64 - a.tokens as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn baseline_interpolates_the_no_load_line_between_token_buckets() {
        // No-load RTT = 100 ms + 1 ms per token.
        let rtt = |tokens: u64| 0.1 + 0.001 * tokens as f64;
        let mut baseline = Baseline::new(Duration::from_secs(60), 0.1);
        let now = Instant::now();
        for tokens in [16, 64, 256, 1024] {
            assert_eq!(baseline.observe(tokens, rtt(tokens), now), rtt(tokens));
        }
        for tokens in [20, 100, 500, 900, 2000] {
            let estimate = baseline.estimate(tokens).expect("points are known");
            assert!(
                (estimate - rtt(tokens)).abs() < 1e-9,
                "{tokens}: {estimate}"
            );
        }
        // A queued call: its baseline is the no-load time, so the excess is the wait.
        let base = baseline.observe(256, rtt(256) + 0.5, now);
        assert!((base - rtt(256)).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn baseline_forgets_points_older_than_its_window() {
        let mut baseline = Baseline::new(Duration::from_secs(10), 0.1);
        baseline.observe(100, 0.2, Instant::now());
        assert_eq!(baseline.observe(100, 0.3, Instant::now()), 0.2);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(baseline.observe(100, 0.3, Instant::now()), 0.3, "relearned");
    }
}
