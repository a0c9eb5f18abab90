//! `[ingress]`: the HTTP API's settings and their defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use super::TenantConfig;

/// `[ingress]`: the HTTP API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Listen address for the API, /metrics, /healthz and /readyz. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (413 above). Default 960 KiB (983,040), so
    /// that the envelope written to Kafka fits librdkafka's default `message.max.bytes`
    /// (1,000,000); must be at least [`KAFKA_RECORD_HEADROOM`](super::KAFKA_RECORD_HEADROOM) below the effective
    /// `message.max.bytes` (checked at start-up).
    pub max_body_bytes: usize,
    /// How long a write to Kafka may take before the ingress answers 503.
    /// Also librdkafka's `message.timeout.ms`, so a refused write is never stored later.
    /// Default 1000 ms.
    pub enqueue_timeout_ms: u64,
    /// `Retry-After` seconds sent with a 503. Default 1.
    pub retry_after_secs: u64,
    /// How long a final reply stays readable through `GET /v1/requests/{id}`. Default 10 min.
    pub result_ttl_ms: u64,
    /// Most requests the result cache holds; the oldest are evicted first. Default 100,000.
    pub result_cache_capacity: usize,
    /// How long `POST /v1/chat/completions` waits for the reply (the header
    /// `x-sluice-timeout-ms` overrides it per request); also the request's deadline
    /// unless it has one. Default 120 s.
    pub sync_timeout_ms: u64,
    /// How often a streamed answer sends a `: keep-alive` comment while nothing else is
    /// sent, so that proxies keep the connection open. Default 10 s.
    pub stream_keepalive_ms: u64,
    /// Require `Authorization: Bearer <key>` with a key of `ingress.tenants`; each
    /// request is stamped with its tenant, which alone may read its results. Default false.
    pub auth: bool,
    /// Ingress instances sharing the tenants' limits: each enforces its part
    /// (limit / replicas), so together they hold the limit when load is spread evenly,
    /// as a load balancer does. Default 1.
    pub replicas: u32,
    /// Tenants by name: API key hashes and limits ([`TenantConfig`]). Default none.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Most requests in one `POST /v1/requests:batch`. Default 100.
    pub max_batch_items: usize,
    /// Refuse (503, Retry-After) a request whose deadline ends before its expected turn:
    /// the backlog ahead of it over the workers' measured drain rate. Default true.
    pub admission: bool,
    /// How often the backlog and the drain rate are sampled for admission. Default 1 s.
    pub admission_interval_ms: u64,
    /// Origins a browser may call the API from (CORS), e.g. `https://app.example.com`;
    /// `*` for any. Default none: no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Compress answers with gzip when the client accepts it (never streams). Default false.
    pub gzip: bool,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 960 * 1024,
            enqueue_timeout_ms: 1000,
            retry_after_secs: 1,
            result_ttl_ms: 10 * 60 * 1000,
            result_cache_capacity: 100_000,
            sync_timeout_ms: 120_000,
            stream_keepalive_ms: 10_000,
            auth: false,
            replicas: 1,
            tenants: BTreeMap::new(),
            max_batch_items: 100,
            admission: true,
            admission_interval_ms: 1000,
            cors_allowed_origins: Vec::new(),
            gzip: false,
        }
    }
}
