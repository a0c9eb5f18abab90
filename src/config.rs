//! Typed configuration: built-in defaults -> optional TOML file -> `SLUICE__SECTION__KEY`
//! environment variables, layered with the `config` crate and validated at start-up.
//!
//! Every field documents its meaning and default; unknown keys are rejected so a typo
//! fails loudly instead of being ignored. Key names are part of sluice's interface
//! (see docs/configuration.md) and do not change.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// Environment variable prefix; `SLUICE__KAFKA__GROUP_ID` sets `kafka.group_id`.
pub const ENV_PREFIX: &str = "SLUICE";
/// Separator between prefix, section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Configuration failures, each naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: config::ConfigError,
    },
    #[error("configuration from the environment (SLUICE__*): {0}")]
    Env(config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration of every role. Each role reads the sections it needs.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub ingress: IngressConfig,
    pub worker: WorkerConfig,
    pub backend: BackendConfig,
    pub telemetry: TelemetryConfig,
}

/// `[kafka]`: brokers, topics and pass-through librdkafka properties.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Request topic; priority lanes add `.<lane>`. Default `sluice.requests`.
    pub request_topic: String,
    /// Reply topic for final replies and streamed chunks. Default `sluice.replies`.
    pub reply_topic: String,
    /// Dead-letter topic for messages that cannot be processed. Default `sluice.dlq`.
    pub dlq_topic: String,
    /// Consumer group of the workers. Default `sluice-workers`.
    pub group_id: String,
    /// Compacted topic where the workers share what they know of each backend (group
    /// pacing). Created (compacted, 1 h retention) when missing and the cluster allows.
    /// Default `sluice.control`.
    pub control_topic: String,
    /// Priority lanes, highest first. A request with `lane = "x"` goes to
    /// `<request_topic>.x`; a lane not listed here is rejected. The name `default` stands
    /// for the plain request topic (requests without a lane) and places it in the order;
    /// when it is not listed the plain topic ranks last. Default: none.
    pub lanes: Vec<String>,
    /// Arbitrary librdkafka properties applied to every client (SASL, SSL, ...).
    /// In environment variables `_` stands for `.`:
    /// `SLUICE__KAFKA__CLIENT__SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
    pub client: BTreeMap<String, String>,
}

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

/// `[backend]`: the OpenAI-compatible LLM server.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL; `/v1/chat/completions` is appended. Default `http://127.0.0.1:8000`.
    pub url: String,
    /// Bearer token sent to the backend. Never logged. Default unset.
    pub api_key: Option<String>,
    /// Per-attempt timeout. Default 120,000 ms.
    pub timeout_ms: u64,
    /// Value of `gen_ai.provider.name` on client spans. Default `openai`.
    pub provider: String,
    /// Most backend calls per request (first try included) before it ends `error`.
    /// Default 6.
    pub max_attempts: u32,
    /// First retry backoff; each retry doubles it (full jitter). Default 200 ms.
    pub retry_initial_backoff_ms: u64,
    /// Largest backoff between two attempts, and cap on a backend's Retry-After. Default 30,000 ms.
    pub retry_max_backoff_ms: u64,
    /// Retry budget: retries may add at most this fraction of the calls made over the
    /// last ten seconds (so a degraded backend is not stormed). Default 0.2.
    pub retry_budget_ratio: f32,
    /// Retry budget floor: this many retries per second are always allowed. Default 10.
    pub retry_budget_min_per_second: u32,
    /// Which signal paces the backend: `auto` (the backend's own gauges when
    /// `metrics_url` publishes vLLM's or llama.cpp's, else latency), `latency`, `vllm` or
    /// `llamacpp`. Default `auto`.
    pub saturation: crate::backend::saturation::SaturationSource,
    /// Where the backend publishes its Prometheus gauges. Default `{backend.url}/metrics`.
    pub metrics_url: Option<String>,
    /// How often those gauges are read. At least 100 ms. Default 500 ms.
    pub metrics_interval_ms: u64,
    /// `[backend.concurrency]`: the adaptive concurrency limit.
    pub concurrency: crate::backend::concurrency::ConcurrencySettings,
    /// `[backend.rate]`: group-wide request and token rates.
    pub rate: crate::backend::rate::RateSettings,
    /// `[backend.breaker]`: the circuit breaker.
    pub breaker: crate::backend::breaker::BreakerSettings,
}

/// `[telemetry]`: traces and logs.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (`/v1/traces` is appended). Unset: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is honoured; neither set means no exporter.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource. Default: the role name (`sluice-ingress`, ...).
    pub service_name: Option<String>,
    /// Log format: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            request_topic: "sluice.requests".into(),
            reply_topic: "sluice.replies".into(),
            dlq_topic: "sluice.dlq".into(),
            group_id: "sluice-workers".into(),
            control_topic: "sluice.control".into(),
            lanes: Vec::new(),
            client: BTreeMap::new(),
        }
    }
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

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".into(),
            api_key: None,
            timeout_ms: 120_000,
            provider: "openai".into(),
            max_attempts: 6,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 10,
            saturation: Default::default(),
            metrics_url: None,
            metrics_interval_ms: 500,
            concurrency: Default::default(),
            rate: Default::default(),
            breaker: Default::default(),
        }
    }
}

impl Config {
    /// Checks what types alone cannot: non-empty names, positive limits, parseable URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.bootstrap_servers", &k.bootstrap_servers),
            ("kafka.request_topic", &k.request_topic),
            ("kafka.reply_topic", &k.reply_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.group_id", &k.group_id),
            ("kafka.control_topic", &k.control_topic),
        ] {
            if value.trim().is_empty() {
                return invalid(key, "must not be empty");
            }
        }
        if let Err(reason) = crate::kafka::check_client_properties(&k.client) {
            return Err(ConfigError::Invalid {
                key: "kafka.client",
                reason,
            });
        }
        if let Some(lane) = k.lanes.iter().find(|l| !is_valid_lane(l)) {
            return Err(ConfigError::Invalid {
                key: "kafka.lanes",
                reason: format!("lane {lane:?} must be 1-64 characters of a-z, 0-9, '-' or '_'"),
            });
        }
        if self.worker.lane_buffer == 0 {
            return invalid("worker.lane_buffer", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.worker.lane_min_share) {
            return invalid("worker.lane_min_share", "must be between 0 and 1");
        }
        if self.worker.max_in_flight == 0 {
            return invalid("worker.max_in_flight", "must be at least 1");
        }
        if self.ingress.max_body_bytes == 0 {
            return invalid("ingress.max_body_bytes", "must be at least 1");
        }
        let kafka_max = self.kafka_message_max_bytes()?;
        if self.ingress.max_body_bytes + KAFKA_RECORD_HEADROOM > kafka_max {
            return invalid(
                "ingress.max_body_bytes",
                &format!(
                    "{} bytes would not fit in a Kafka record: the producer's message.max.bytes \
                     is {kafka_max}, and the envelope, headers and record overhead need up to \
                     {KAFKA_RECORD_HEADROOM} more; lower it to at most {}, or raise \
                     kafka.client.message.max.bytes (and the topics' max.message.bytes on the \
                     brokers)",
                    self.ingress.max_body_bytes,
                    kafka_max.saturating_sub(KAFKA_RECORD_HEADROOM)
                ),
            );
        }
        if let Some(bad) = self.ingress.cors_allowed_origins.iter().find(|o| {
            !(*o == "*" || o.starts_with("http://") || o.starts_with("https://"))
                || axum::http::HeaderValue::from_str(o).is_err()
        }) {
            return invalid(
                "ingress.cors_allowed_origins",
                &format!("{bad:?} is not an origin such as https://app.example.com (or *)"),
            );
        }
        if self.ingress.admission_interval_ms < 100 {
            return invalid("ingress.admission_interval_ms", "must be at least 100");
        }
        if self.ingress.max_batch_items == 0 {
            return invalid("ingress.max_batch_items", "must be at least 1");
        }
        if self.ingress.replicas == 0 {
            return invalid("ingress.replicas", "must be at least 1");
        }
        if self.ingress.auth && self.ingress.tenants.is_empty() {
            return invalid(
                "ingress.tenants",
                "ingress.auth is on but no tenant is configured, so every request would get 401",
            );
        }
        for (name, tenant) in &self.ingress.tenants {
            if let Some(problem) = tenant.problem() {
                return invalid("ingress.tenants", &format!("tenant {name:?}: {problem}"));
            }
        }
        if self.ingress.sync_timeout_ms == 0 {
            return invalid("ingress.sync_timeout_ms", "must be at least 1");
        }
        if self.ingress.stream_keepalive_ms == 0 {
            return invalid("ingress.stream_keepalive_ms", "must be at least 1");
        }
        if self.ingress.enqueue_timeout_ms == 0 {
            return invalid("ingress.enqueue_timeout_ms", "must be at least 1");
        }
        if self.ingress.result_cache_capacity == 0 {
            return invalid("ingress.result_cache_capacity", "must be at least 1");
        }
        if self.backend.max_attempts == 0 {
            return invalid("backend.max_attempts", "must be at least 1");
        }
        if self.backend.retry_initial_backoff_ms > self.backend.retry_max_backoff_ms {
            return invalid(
                "backend.retry_initial_backoff_ms",
                "must not exceed backend.retry_max_backoff_ms",
            );
        }
        self.backend.rate.validate()?;
        self.backend.concurrency.validate()?;
        self.backend.breaker.validate()?;
        if self.backend.timeout_ms == 0 {
            return invalid("backend.timeout_ms", "must be at least 1");
        }
        match reqwest::Url::parse(&self.backend.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => return invalid("backend.url", "must be an http:// or https:// URL"),
            Err(e) => return invalid("backend.url", &format!("not a URL: {e}")),
        }
        if let Some(url) = &self.backend.metrics_url {
            if reqwest::Url::parse(url).is_err() {
                return invalid("backend.metrics_url", "not a URL");
            }
        }
        if self.backend.metrics_interval_ms < 100 {
            return invalid("backend.metrics_interval_ms", "must be at least 100");
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if reqwest::Url::parse(endpoint).is_err() {
                return invalid("telemetry.otlp_endpoint", "not a URL");
            }
        }
        Ok(())
    }

    /// The producer's largest record: `kafka.client`'s `message.max.bytes`, else
    /// librdkafka's default.
    pub fn kafka_message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.kafka.client.get("message.max.bytes") {
            None => Ok(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "kafka.client.message.max.bytes",
                reason: format!("{value:?} is not a number of bytes"),
            }),
        }
    }

    /// Where the backend's gauges are read: `backend.metrics_url`, else `{backend.url}/metrics`.
    pub fn backend_metrics_url(&self) -> String {
        self.backend
            .metrics_url
            .clone()
            .unwrap_or_else(|| format!("{}/metrics", self.backend.url.trim_end_matches('/')))
    }

    /// The identity this worker writes into dead letters and logs.
    pub fn worker_id(&self) -> String {
        self.worker.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "sluice".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The Kafka topic a request in `lane` (or the default lane) is written to.
    pub fn request_topic_for(&self, lane: Option<&str>) -> String {
        match lane {
            Some(lane) if lane != DEFAULT_LANE => format!("{}.{lane}", self.kafka.request_topic),
            _ => self.kafka.request_topic.clone(),
        }
    }

    /// Every request topic, highest priority first (see `kafka.lanes`).
    pub fn lane_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .kafka
            .lanes
            .iter()
            .map(|lane| self.request_topic_for(Some(lane)))
            .collect();
        if !self.kafka.lanes.iter().any(|l| l == DEFAULT_LANE) {
            topics.push(self.request_topic_for(None));
        }
        topics
    }
}

/// librdkafka's default `message.max.bytes`.
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room a Kafka record needs beyond the submitted body: the envelope's own fields (id,
/// version, tenant), the id and trace headers, the key and the record batch overhead.
pub const KAFKA_RECORD_HEADROOM: usize = 16 * 1024;

/// The lane name that stands for the plain request topic.
pub const DEFAULT_LANE: &str = "default";

/// Lane names become topic-name suffixes, so they are kept to a safe alphabet.
pub fn is_valid_lane(lane: &str) -> bool {
    (1..=64).contains(&lane.len())
        && lane
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub mod help;
mod ingress;
mod keys;
mod load;
pub mod tenants;
#[cfg(test)]
mod tests;

pub use ingress::IngressConfig;
pub use keys::{env_names, unknown_env_warnings};
pub use tenants::TenantConfig;
