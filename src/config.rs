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
    /// The one backend (named `default`, serving every model) when `backends` is empty.
    pub backend: BackendConfig,
    /// Several backends by name, each serving the models its `models` names. Replaces
    /// `backend` when set.
    pub backends: std::collections::BTreeMap<String, BackendConfig>,
    /// `[models]`: other names for the models the backends serve.
    pub models: ModelsConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Checks what types alone cannot: non-empty names, positive limits, parseable URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| Err(ConfigError::invalid(key, reason));
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
            return Err(ConfigError::invalid("kafka.client", reason));
        }
        if let Some(lane) = k.lanes.iter().find(|l| !is_valid_lane(l)) {
            return Err(ConfigError::invalid(
                "kafka.lanes",
                format!("lane {lane:?} must be 1-64 characters of a-z, 0-9, '-' or '_'"),
            ));
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
        self.validate_backends()?;
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if reqwest::Url::parse(endpoint).is_err() {
                return invalid("telemetry.otlp_endpoint", "not a URL");
            }
        }
        Ok(())
    }

    /// The backends, each by name: `[backends.<name>]`, or `[backend]` alone as the one
    /// named `default` serving every model (the single-backend setup).
    pub(crate) fn named_backends(&self) -> Vec<(&str, &BackendConfig)> {
        if self.backends.is_empty() {
            vec![(DEFAULT_BACKEND, &self.backend)]
        } else {
            self.backends
                .iter()
                .map(|(name, backend)| (name.as_str(), backend))
                .collect()
        }
    }

    /// `[backend]` or `[backends.*]`, each backend's settings, and the model aliases.
    fn validate_backends(&self) -> Result<(), ConfigError> {
        if !self.backends.is_empty() && self.backend != BackendConfig::default() {
            return Err(ConfigError::invalid(
                "backend",
                "set [backend] (SLUICE__BACKEND__*) for one backend, or [backends.<name>] for \
                 several, not both: with [backends.*] the [backend] settings would be ignored",
            ));
        }
        for (name, backend) in self.named_backends() {
            if !is_valid_lane(name) {
                return Err(ConfigError::invalid(
                    format!("backends.{name}"),
                    "a backend's name must be 1-64 characters of a-z, 0-9, '-' or '_'",
                ));
            }
            let section = if self.backends.is_empty() {
                "backend".to_string()
            } else {
                format!("backends.{name}")
            };
            backend.validate(&section)?;
        }
        let patterns: Vec<&String> = self
            .named_backends()
            .into_iter()
            .flat_map(|(_, backend)| &backend.models)
            .collect();
        for (alias, model) in &self.models.aliases {
            let key = || format!("models.aliases.{alias}");
            if alias.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "models.aliases",
                    "an alias must not be empty",
                ));
            }
            if patterns.contains(&alias) {
                return Err(ConfigError::invalid(
                    key(),
                    format!("{alias:?} is a model a backend serves by that name; an alias may not hide it"),
                ));
            }
            if self.models.aliases.contains_key(model) {
                return Err(ConfigError::invalid(
                    key(),
                    format!("{model:?} is an alias itself; name the model it stands for"),
                ));
            }
            if !patterns.iter().any(|p| model_matches(p, model)) {
                return Err(ConfigError::invalid(
                    key(),
                    format!("no backend serves {model:?} (see each backend's `models`)"),
                ));
            }
        }
        self.validate_fallbacks(&patterns)
    }

    /// `[models.fallbacks.*]`: every model named is served, and no chain loops back to
    /// its own model (a chain is followed as written; a fallback's own chain is not).
    fn validate_fallbacks(&self, patterns: &[&String]) -> Result<(), ConfigError> {
        let aliases = &self.models.aliases;
        let resolve = |name: &str| aliases.get(name).map_or(name, String::as_str).to_string();
        let served = |name: &str| {
            let model = resolve(name);
            patterns.iter().any(|p| model_matches(p, &model))
        };
        for (model, chain) in &self.models.fallbacks {
            let key = |field: &str| format!("models.fallbacks.{model}{field}");
            if !served(model) {
                return Err(ConfigError::invalid(
                    key(""),
                    format!("no backend serves {model:?}, so it has no requests to fall back"),
                ));
            }
            if chain.to.is_empty() || chain.on.is_empty() {
                return Err(ConfigError::invalid(
                    key(""),
                    "a chain needs `to` (the models to try instead, in order) and `on` (what \
                     sends a request down it: breaker_open, deadline, retries_exhausted, \
                     context_too_long)",
                ));
            }
            let mut seen = vec![resolve(model)];
            for next in &chain.to {
                if !served(next) {
                    return Err(ConfigError::invalid(
                        key(".to"),
                        format!("no backend serves {next:?} (see each backend's `models`)"),
                    ));
                }
                let resolved = resolve(next);
                if seen.contains(&resolved) {
                    return Err(ConfigError::invalid(
                        key(".to"),
                        format!(
                            "{next:?} ({resolved}) comes round again: a chain may name each \
                             model once, and not the model it is for"
                        ),
                    ));
                }
                seen.push(resolved);
            }
        }
        Ok(())
    }

    /// The producer's largest record: `kafka.client`'s `message.max.bytes`, else
    /// librdkafka's default.
    pub(crate) fn kafka_message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.kafka.client.get("message.max.bytes") {
            None => Ok(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            Some(value) => value.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "kafka.client.message.max.bytes",
                    format!("{value:?} is not a number of bytes"),
                )
            }),
        }
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

/// The name of the one backend of `[backend]` (the single-backend setup).
pub(crate) const DEFAULT_BACKEND: &str = "default";

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
mod models;
mod rate;
mod telemetry;
pub mod tenants;
#[cfg(test)]
mod tests;
mod worker;

pub use backend::BackendConfig;
pub(crate) use backend::SaturationSource;
pub(crate) use breaker::BreakerSettings;
pub use concurrency::ConcurrencySettings;
pub(crate) use error::ConfigError;
pub(crate) use ingress::IngressConfig;
pub(crate) use kafka::{check_client_properties, KafkaConfig};
pub use keys::unknown_env_warnings;
#[cfg(test)]
pub(crate) use models::FallbackConfig;
pub(crate) use models::{model_matches, FallbackTrigger, ModelsConfig};
pub(crate) use rate::RateSettings;
pub(crate) use telemetry::{LogFormat, TelemetryConfig};
pub use tenants::TenantConfig;
pub(crate) use worker::WorkerConfig;
