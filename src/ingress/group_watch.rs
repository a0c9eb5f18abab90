//! The workers' shared view of each backend, as the status page shows it: the ingress
//! reads the control topic (`kafka.control_topic`) like a worker does, into one
//! [`GroupView`] per backend seen from outside the group, so the page shows the members
//! the workers count and the estimate they use (the same TTL, the same tie rule).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::envelope::now_ms;
use crate::group::control_topic;
use crate::group::record::StateRecord;
use crate::group::view::GroupView;

/// Every backend's group, by backend.
#[derive(Debug, Default)]
pub struct GroupWatch {
    views: Mutex<HashMap<String, GroupView>>,
}

/// One backend as the group sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendView {
    pub backend: String,
    /// Live workers (heard from within `group::view::MEMBER_TTL`, not leaving).
    pub workers: usize,
    /// Calls in flight, over the workers.
    pub in_flight: usize,
    /// Calls in flight plus messages buffered, over the workers.
    pub demand: usize,
    /// The group's estimate of the backend's capacity (calls it takes at once), as the
    /// workers adopt it.
    pub capacity_estimate: Option<usize>,
    /// `in_flight / capacity_estimate`.
    pub utilisation: Option<f64>,
    /// The worst of the workers' circuit breakers for it: `closed`, `half_open` or `open`.
    pub breaker: &'static str,
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
                watch.observe(record, Instant::now(), now_ms());
            }
        });
    }

    /// Takes a record read at `now` (`now_ms` on the wall clock).
    pub(crate) fn observe(&self, record: StateRecord, now: Instant, now_ms: u64) {
        let mut views = self.lock();
        let view = views
            .entry(record.backend.clone())
            .or_insert_with(|| GroupView::observer(&record.backend));
        view.observe(record, now, now_ms);
    }

    /// Every backend with a live worker, now.
    pub fn backends(&self) -> Vec<BackendView> {
        self.backends_at(Instant::now(), now_ms())
    }

    fn backends_at(&self, now: Instant, now_ms: u64) -> Vec<BackendView> {
        let mut views = self.lock();
        let mut backends: Vec<BackendView> = views
            .iter_mut()
            .filter_map(|(backend, view)| {
                view.expire(now);
                let workers = view.others().count();
                if workers == 0 {
                    return None;
                }
                let in_flight = view.others().map(|r| r.in_flight).sum();
                let capacity_estimate = view.newest_estimate(now_ms).map(|e| e.limit);
                Some(BackendView {
                    backend: backend.clone(),
                    workers,
                    in_flight,
                    demand: view.others().map(|r| r.demand).sum(),
                    capacity_estimate,
                    utilisation: capacity_estimate
                        .filter(|c| *c > 0)
                        .map(|c| in_flight as f64 / c as f64),
                    breaker: worst_breaker(view.others().map(|r| r.breaker.as_deref())),
                })
            })
            .collect();
        backends.sort_by(|a, b| a.backend.cmp(&b.backend));
        backends
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupView>> {
        self.views
            .lock()
            .expect("group watch lock is never poisoned: no code panics while holding it")
    }
}

/// The worst of the breakers the workers report (`None`: closed): one worker that cannot
/// reach the backend is worth seeing.
fn worst_breaker<'a>(states: impl Iterator<Item = Option<&'a str>>) -> &'static str {
    let mut worst = "closed";
    for state in states.flatten() {
        match state {
            "open" => return "open",
            "half_open" => worst = "half_open",
            _ => {}
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::record::{EstimateRecord, VERSION};
    use crate::group::view::MEMBER_TTL;

    fn record(worker: &str, seq: u64, in_flight: usize, limit: usize, version: u64) -> StateRecord {
        StateRecord {
            v: VERSION,
            backend: "http://llm".into(),
            worker: worker.into(),
            at_ms: 1_000 + seq,
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
            breaker: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_group_sums_in_flight_and_shows_the_estimate_the_workers_adopt() {
        let watch = GroupWatch::default();
        let (now, ms) = (Instant::now(), 2_000);
        watch.observe(record("a", 1, 6, 16, 3), now, ms);
        watch.observe(record("b", 1, 4, 14, 3), now, ms);
        watch.observe(record("a", 2, 8, 16, 3), now, ms);
        let views = watch.backends_at(now, ms);
        assert_eq!(views.len(), 1);
        let view = &views[0];
        assert_eq!((view.workers, view.in_flight, view.demand), (2, 12, 18));
        // Of two estimates of one version the workers take the lower (the maximum
        // version and time used to win here, so the page showed 16).
        assert_eq!(view.capacity_estimate, Some(14));
        assert_eq!(view.utilisation, Some(12.0 / 14.0));
        assert_eq!(view.breaker, "closed");
        let open = StateRecord {
            breaker: Some("open".into()),
            ..record("b", 2, 0, 14, 3)
        };
        watch.observe(open, now, ms);
        assert_eq!(
            watch.backends_at(now, ms)[0].breaker,
            "open",
            "one worker's is shown"
        );
        assert!(
            watch.backends_at(now + MEMBER_TTL, ms).is_empty(),
            "silent workers drop out when the workers drop them"
        );
    }
}
