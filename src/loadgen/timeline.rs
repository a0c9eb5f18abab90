//! The run over time, for `--plot`: every [`INTERVAL`] the ledger's counts and, when
//! `--backend-metrics` is given, the backend's counters and in-flight. Sampling runs beside
//! the load and never holds the ledger's lock across a scrape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::scrape::{self, BackendSample};

/// Time between two samples.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);
/// How long one in-run scrape may take before the point goes without backend figures.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// One instant of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// Seconds since sampling started (just before the first send).
    pub t: f64,
    /// Requests sent so far.
    pub sent: u64,
    /// Requests the target took so far.
    pub accepted: u64,
    /// Requests with their final outcome so far.
    pub finished: u64,
    /// The backend's counters at this instant, if it could be scraped.
    pub backend: Option<BackendSample>,
}

/// Samples `ledger` (and the backend at `backend_metrics`) until `stop`, then returns the
/// points in time order.
pub async fn record(
    ledger: Arc<Ledger>,
    http: reqwest::Client,
    backend_metrics: Option<String>,
    stop: CancellationToken,
) -> Vec<Point> {
    let started = Instant::now();
    let mut points = Vec::new();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let backend = match &backend_metrics {
            Some(url) => tokio::time::timeout(SCRAPE_TIMEOUT, scrape::scrape(&http, url))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let progress = ledger.progress();
        points.push(Point {
            t: started.elapsed().as_secs_f64(),
            sent: progress.sent,
            accepted: progress.accepted,
            finished: progress.finished,
            backend,
        });
    }
    points
}
