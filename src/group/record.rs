//! The state record every worker publishes on the control topic (`kafka.control_topic`),
//! version 1, JSON. Keyed by backend and worker, so a compacted topic keeps each worker's
//! latest; every worker reads every record.

use serde::{Deserialize, Serialize};

use crate::backend::concurrency::Estimate;

/// Version of this record's shape.
pub const VERSION: u32 = 1;

/// One worker's state for one backend, as of `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub v: u32,
    /// The backend this state is about (its URL).
    pub backend: String,
    /// The writer's `worker_id`.
    pub worker: String,
    /// Writer's clock, unix ms.
    pub at_ms: u64,
    /// Counts the writer's records: a worker that reads its own back knows the topic works.
    pub seq: u64,
    /// Calls in flight plus messages buffered for the backend.
    pub demand: usize,
    pub in_flight: usize,
    /// Calls the writer may have in flight now (its share).
    pub permits: usize,
    /// The writer's estimate of the backend's capacity for the whole group.
    pub estimate: EstimateRecord,
    /// False while the writer paces on its own (the control topic failed it): its estimate
    /// is then its own, not the group's, and nobody adopts it.
    pub grouped: bool,
    /// The writer is leaving: its share is free now.
    #[serde(default)]
    pub leaving: bool,
    /// The writer's circuit breaker for the backend, when not closed (`open`,
    /// `half_open`): for the status page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
}

/// [`Estimate`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EstimateRecord {
    pub limit: usize,
    pub recover_to: usize,
    pub version: u64,
}

impl From<Estimate> for EstimateRecord {
    fn from(e: Estimate) -> Self {
        Self {
            limit: e.limit,
            recover_to: e.recover_to,
            version: e.version,
        }
    }
}

impl From<EstimateRecord> for Estimate {
    fn from(e: EstimateRecord) -> Self {
        Self {
            limit: e.limit,
            recover_to: e.recover_to,
            version: e.version,
        }
    }
}

impl StateRecord {
    /// The Kafka key: one per backend and worker, so compaction keeps each one's latest.
    pub fn key(&self) -> String {
        key(&self.backend, &self.worker)
    }

    /// What the writer holds: permits, or more while calls of a larger share finish.
    pub fn held(&self) -> usize {
        self.permits.max(self.in_flight)
    }
}

/// The key of `worker`'s records about `backend`.
pub fn key(backend: &str, worker: &str) -> String {
    format!("{backend} {worker}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_missing_leaving_flag() {
        let record = StateRecord {
            v: VERSION,
            backend: "http://llm:8000".into(),
            worker: "w-1".into(),
            at_ms: 1,
            seq: 2,
            demand: 3,
            in_flight: 4,
            permits: 5,
            estimate: EstimateRecord {
                limit: 16,
                recover_to: 16,
                version: 7,
            },
            grouped: true,
            leaving: false,
            breaker: None,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["estimate"]["limit"], 16);
        let mut without = json.clone();
        without.as_object_mut().unwrap().remove("leaving");
        let back: StateRecord = serde_json::from_value(without).unwrap();
        assert_eq!(back, record);
        assert_eq!(record.key(), "http://llm:8000 w-1");
        assert_eq!(record.held(), 5);
    }
}
