//! One INFO line about the worker's work every [`EVERY`] while it is busy (something
//! finished, is in flight or waits), so a log shows life without a line per request.

use std::time::Duration;

use tokio::time::Instant;

use super::metrics::{OutcomeLabel, WorkerMetrics};

/// How often the line is written while busy.
pub(crate) const EVERY: Duration = Duration::from_secs(30);

/// Final outcomes, in the order the line gives them.
const OUTCOMES: [&str; 5] = ["ok", "error", "expired", "rejected", "dead_letter"];

/// Counts at the last line, to report the difference.
pub(crate) struct Summary {
    last: [u64; 5],
    at: Instant,
}

impl Summary {
    pub fn new(metrics: &WorkerMetrics) -> Self {
        Self {
            last: totals(metrics),
            at: Instant::now(),
        }
    }

    /// Writes the line when [`EVERY`] has passed since the last one and the worker was busy;
    /// `limit`: the concurrency limits of its backends, added up.
    pub fn tick(&mut self, metrics: &WorkerMetrics, limit: usize) {
        if self.at.elapsed() < EVERY {
            return;
        }
        let now = totals(metrics);
        let done: Vec<u64> = now.iter().zip(self.last).map(|(n, l)| n - l).collect();
        let finished: u64 = done.iter().sum();
        let (in_flight, buffered, lag) = (
            metrics.in_flight.get(),
            metrics.buffered.get(),
            metrics.lag.get(),
        );
        if finished > 0 || in_flight > 0 || buffered > 0 || lag > 0 {
            tracing::info!(
                finished, ok = done[0], error = done[1], expired = done[2], rejected = done[3],
                dead_lettered = done[4], in_flight, buffered, lag,
                limit,
                "last {} s: {finished} finished ({} ok, {} error, {} expired, {} rejected, {} dead-lettered); \
                 {in_flight} in flight, {buffered} buffered, lag {lag}, concurrency limit {}",
                EVERY.as_secs(), done[0], done[1], done[2], done[3], done[4], limit
            );
        }
        self.last = now;
        self.at = Instant::now();
    }
}

fn totals(metrics: &WorkerMetrics) -> [u64; 5] {
    OUTCOMES.map(|outcome| {
        metrics
            .messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_what_finished_since_the_last_line() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = WorkerMetrics::register(&mut registry);
        metrics.finished("ok");
        let mut summary = Summary::new(&metrics);
        metrics.finished("ok");
        metrics.finished("error");
        assert_eq!(totals(&metrics), [2, 1, 0, 0, 0]);
        summary.at -= EVERY;
        summary.tick(&metrics, 16);
        assert_eq!(summary.last, [2, 1, 0, 0, 0], "the line moved the mark");
        assert!(summary.at.elapsed() < EVERY);
    }
}
