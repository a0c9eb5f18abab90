//! A window of evidence: the successes of calls sent under the current limit since the
//! last judgement, summed so that a window costs nothing per call but a few additions.

use tokio::time::Instant;

/// See the module documentation. Replaced by a fresh one at every judgement and whenever
/// the limit rises.
#[derive(Debug)]
pub(in crate::backend::concurrency) struct Window {
    pub(super) opened: Instant,
    /// Current-epoch successes and their sums (seconds, seconds, calls).
    pub(in crate::backend::concurrency) samples: usize,
    rtt: f64,
    queueing: f64,
    level: f64,
    /// The highest level a success was sent at.
    pub(in crate::backend::concurrency) top_level: usize,
    /// Sum of this worker's own calls in flight at each send (with others at the backend,
    /// fewer than the level): how many completions a window needs.
    pub(super) own: f64,
    /// Demand reached the limit: an increase would be used.
    pub(in crate::backend::concurrency) reached_limit: bool,
    /// A call sent in it was refused: the refusal has judged it already.
    pub(in crate::backend::concurrency) back_pressure: bool,
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

    /// The mean level its successes were sent at.
    pub(super) fn mean_level(&self) -> f64 {
        self.level / self.samples as f64
    }

    /// The share of the round trip spent queueing at the backend.
    pub(super) fn queueing_share(&self) -> f64 {
        if self.rtt > 0.0 {
            self.queueing / self.rtt
        } else {
            0.0
        }
    }
}
