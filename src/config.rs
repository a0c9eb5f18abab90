//! Typed configuration: built-in defaults -> optional TOML file -> `SLUICE__SECTION__KEY`
//! environment variables, layered with the `config` crate and validated at start-up.
//!
//! Every field documents its meaning and default; unknown keys are rejected so a typo
//! fails loudly instead of being ignored. Key names are part of sluice's interface
//! (see docs/configuration.md) and do not change.
//!
//! Each section's settings have a file of their own under `config/` (`kafka`, `backend`
//! with `concurrency`, `rate` and `breaker`, `worker`, `ingress`, `telemetry`), and each
//! component re-exports its own. Config is the bottom layer: it imports no component, and
//! [`ConfigError`] (`error`) imports nothing of the crate.

use serde::Deserialize;

/// Environment variable prefix; `SLUICE__KAFKA__GROUP_ID` sets `kafka.group_id`.
pub(crate) const ENV_PREFIX: &str = "SLUICE";
/// Separator between prefix, section and key in environment variable names.
pub(crate) const ENV_SEPARATOR: &str = "__";

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
        if let Err(reason) = check_client_properties(&k.client) {
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
    pub(crate) fn kafka_message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.kafka.client.get("message.max.bytes") {
            None => Ok(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "kafka.client.message.max.bytes",
                reason: format!("{value:?} is not a number of bytes"),
            }),
        }
    }

    /// Where the backend's gauges are read: `backend.metrics_url`, else `{backend.url}/metrics`.
    pub(crate) fn backend_metrics_url(&self) -> String {
        self.backend
            .metrics_url
            .clone()
            .unwrap_or_else(|| format!("{}/metrics", self.backend.url.trim_end_matches('/')))
    }

    /// The identity this worker writes into dead letters and logs.
    pub(crate) fn worker_id(&self) -> String {
        self.worker.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "sluice".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The Kafka topic a request in `lane` (or the default lane) is written to.
    pub(crate) fn request_topic_for(&self, lane: Option<&str>) -> String {
        match lane {
            Some(lane) if lane != DEFAULT_LANE => format!("{}.{lane}", self.kafka.request_topic),
            _ => self.kafka.request_topic.clone(),
        }
    }

    /// Every request topic, highest priority first (see `kafka.lanes`).
    pub(crate) fn lane_topics(&self) -> Vec<String> {
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
pub(crate) const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room a Kafka record needs beyond the submitted body: the envelope's own fields (id,
/// version, tenant), the id and trace headers, the key and the record batch overhead.
pub(crate) const KAFKA_RECORD_HEADROOM: usize = 16 * 1024;

/// The lane name that stands for the plain request topic.
pub(crate) const DEFAULT_LANE: &str = "default";

/// Lane names become topic-name suffixes, so they are kept to a safe alphabet.
pub(crate) fn is_valid_lane(lane: &str) -> bool {
    (1..=64).contains(&lane.len())
        && lane
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

mod backend;
mod breaker;
mod concurrency;
pub mod error;
pub mod help;
mod ingress;
mod kafka;
mod keys;
mod load;
mod rate;
mod telemetry;
pub mod tenants;
#[cfg(test)]
mod tests;
mod worker;

pub(crate) use backend::{BackendConfig, SaturationSource};
pub(crate) use breaker::BreakerSettings;
pub use concurrency::ConcurrencySettings;
pub(crate) use error::ConfigError;
pub(crate) use ingress::IngressConfig;
pub(crate) use kafka::{check_client_properties, KafkaConfig};
pub use keys::unknown_env_warnings;
pub(crate) use rate::RateSettings;
pub(crate) use telemetry::{LogFormat, TelemetryConfig};
pub use tenants::TenantConfig;
pub(crate) use worker::WorkerConfig;
