//! `[worker]`: the consumer-group member's settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// `[worker]`: the consumer-group member that calls the backend.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Listen address for /metrics, /healthz and /readyz. Default `0.0.0.0:9090`.
    pub admin_listen: SocketAddr,
    /// Hard cap on concurrent backend calls (and so on messages held) per worker. Default 256.
    pub max_in_flight: usize,
    /// On SIGTERM, how long in-flight calls may take to finish before the worker
    /// leaves without committing them (they are re-delivered). Default 30 s.
    pub shutdown_grace_ms: u64,
    /// Identity written to dead letters and logs. Default `<hostname>-<pid>`.
    pub worker_id: Option<String>,
    /// Messages buffered per lane between Kafka and the backend; a full lane's partitions
    /// are paused, so memory stays bounded whatever the lag. Default 64.
    pub lane_buffer: usize,
    /// Minimum share of dispatches each lower lane keeps while higher lanes have work,
    /// in [0, 1]. Default 0.1.
    pub lane_min_share: f64,
    /// Write final replies and commit the consumed offsets in one Kafka transaction, so a
    /// `read_committed` reader sees each final reply once even when a worker dies
    /// mid-flight. Needs real Kafka; see docs/delivery.md. Default false.
    pub exactly_once: bool,
    /// Exactly-once only: how long replies gather before their transaction commits.
    /// Default 100 ms.
    pub transaction_linger_ms: u64,
    /// Pace the backend together with the other workers of the group through
    /// `kafka.control_topic` (one capacity estimate, shares by demand). Off: each worker
    /// finds its own limit. Default true.
    pub group_pacing: bool,
    /// Streamed answers: how long tokens gather into one chunk record on the reply topic
    /// after the first (which goes at once). Default 30 ms.
    pub stream_linger_ms: u64,
    /// Within a lane, tenants take turns over what is buffered, by these weights (a
    /// tenant not listed weighs 1). Default: none listed.
    pub tenant_weights: BTreeMap<String, u32>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_in_flight: 256,
            shutdown_grace_ms: 30_000,
            worker_id: None,
            lane_buffer: 64,
            lane_min_share: 0.1,
            exactly_once: false,
            transaction_linger_ms: 100,
            group_pacing: true,
            stream_linger_ms: 30,
            tenant_weights: BTreeMap::new(),
        }
    }
}
