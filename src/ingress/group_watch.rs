//! The workers' shared view of each backend, as the status page shows it: the ingress
//! reads the control topic (`kafka.control_topic`) like a worker does and keeps every
//! worker's latest state record, for the group's capacity estimate and calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::group::control_topic;
use crate::group::record::StateRecord;

/// A worker silent this long is taken as gone.
const STALE: Duration = Duration::from_secs(10);

/// Latest record per (backend, worker).
#[derive(Debug, Default)]
pub struct GroupWatch {
    latest: Mutex<HashMap<(String, String), (StateRecord, Instant)>>,
}

/// One backend as the group sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendView {
    pub backend: String,
    /// Workers that published within the last 10 s and are not leaving.
    pub workers: usize,
    /// Calls in flight, over the workers.
    pub in_flight: usize,
    /// Calls in flight plus messages buffered, over the workers.
    pub demand: usize,
    /// The newest capacity estimate of the group (calls the backend takes at once).
    pub capacity_estimate: Option<usize>,
    /// `in_flight / capacity_estimate`.
    pub utilisation: Option<f64>,
}

impl GroupWatch {
    /// Reads the control topic into `self` until `shutdown`; a topic that cannot be read
    /// leaves the view empty (the status page says so), nothing else.
    pub fn start(self: &Arc<Self>, kafka: &KafkaConfig, topic: &str, shutdown: CancellationToken) {
        let mut records = match control_topic::start_reader(kafka, topic, shutdown) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot read the control topic; the status page shows no backend view");
                return;
            }
        };
        let watch = self.clone();
        tokio::spawn(async move {
            while let Some(record) = records.recv().await {
                watch.observe(record, Instant::now());
            }
        });
    }

    pub fn observe(&self, record: StateRecord, now: Instant) {
        let key = (record.backend.clone(), record.worker.clone());
        let mut latest = self.lock();
        match latest.get(&key) {
            Some((known, _)) if known.seq > record.seq && known.at_ms >= record.at_ms => {}
            _ => {
                latest.insert(key, (record, now));
            }
        }
    }

    /// Every backend with a live worker.
    pub fn backends(&self, now: Instant) -> Vec<BackendView> {
        let latest = self.lock();
        let mut by_backend: HashMap<&str, Vec<&StateRecord>> = HashMap::new();
        for ((backend, _), (record, seen)) in latest.iter() {
            if now.duration_since(*seen) < STALE && !record.leaving {
                by_backend.entry(backend).or_default().push(record);
            }
        }
        let mut views: Vec<BackendView> = by_backend
            .into_iter()
            .map(|(backend, records)| {
                let in_flight = records.iter().map(|r| r.in_flight).sum();
                let capacity_estimate = records
                    .iter()
                    .max_by_key(|r| (r.grouped, r.estimate.version, r.at_ms))
                    .map(|r| r.estimate.limit);
                BackendView {
                    backend: backend.to_string(),
                    workers: records.len(),
                    in_flight,
                    demand: records.iter().map(|r| r.demand).sum(),
                    capacity_estimate,
                    utilisation: capacity_estimate
                        .filter(|c| *c > 0)
                        .map(|c| in_flight as f64 / c as f64),
                }
            })
            .collect();
        views.sort_by(|a, b| a.backend.cmp(&b.backend));
        views
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (StateRecord, Instant)>> {
        self.latest
            .lock()
            .expect("group watch lock is never poisoned: no code panics while holding it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::record::{EstimateRecord, VERSION};

    fn record(worker: &str, seq: u64, in_flight: usize, limit: usize, version: u64) -> StateRecord {
        StateRecord {
            v: VERSION,
            backend: "http://llm".into(),
            worker: worker.into(),
            at_ms: seq,
            seq,
            demand: in_flight + 3,
            in_flight,
            permits: in_flight,
            estimate: EstimateRecord {
                limit,
                recover_to: limit,
                version,
            },
            grouped: true,
            leaving: false,
        }
    }

    #[test]
    fn the_group_sums_in_flight_and_takes_the_newest_estimate() {
        let watch = GroupWatch::default();
        let now = Instant::now();
        watch.observe(record("a", 1, 6, 16, 3), now);
        watch.observe(record("b", 1, 4, 14, 2), now);
        watch.observe(record("a", 2, 8, 16, 3), now);
        let views = watch.backends(now);
        assert_eq!(views.len(), 1);
        let view = &views[0];
        assert_eq!((view.workers, view.in_flight, view.demand), (2, 12, 18));
        assert_eq!(view.capacity_estimate, Some(16));
        assert_eq!(view.utilisation, Some(0.75));
        assert!(
            watch.backends(now + STALE).is_empty(),
            "silent workers drop out"
        );
    }
}
