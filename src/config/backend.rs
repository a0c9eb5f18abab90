//! `[backend]`: the OpenAI-compatible LLM server and the call path's settings (the
//! subsections `[backend.concurrency]`, `[backend.rate]`, `[backend.breaker]` have files
//! of their own).

use serde::Deserialize;

use super::breaker::BreakerSettings;
use super::concurrency::ConcurrencySettings;
use super::error::ConfigError;
use super::rate::RateSettings;

/// `[backend]`: the OpenAI-compatible LLM server.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL; `/v1/chat/completions` is appended. Default `http://127.0.0.1:8000`.
    pub url: String,
    /// The models this backend serves: names, or patterns with `*` (`llama-3-*`). A
    /// request goes to the backends that serve its `model`; with several, to the one with
    /// the most room. Default `["*"]`: every model.
    pub models: Vec<String>,
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
    pub saturation: SaturationSource,
    /// Where the backend publishes its Prometheus gauges. Default `{backend.url}/metrics`.
    pub metrics_url: Option<String>,
    /// How often those gauges are read. At least 100 ms. Default 500 ms.
    pub metrics_interval_ms: u64,
    /// `[backend.concurrency]`: the adaptive concurrency limit.
    pub concurrency: ConcurrencySettings,
    /// `[backend.rate]`: group-wide request and token rates.
    pub rate: RateSettings,
    /// `[backend.breaker]`: the circuit breaker.
    pub breaker: BreakerSettings,
}

/// `backend.saturation`: which signal paces the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaturationSource {
    /// The server's gauges when `metrics_url` has vLLM's or llama.cpp's, else latency.
    #[default]
    Auto,
    /// Latency and back-pressure answers only.
    Latency,
    /// vLLM: `vllm:num_requests_running`, `vllm:num_requests_waiting`,
    /// `vllm:kv_cache_usage_perc`.
    Vllm,
    /// llama.cpp server (`--metrics`): `llamacpp:requests_processing`,
    /// `llamacpp:requests_deferred`.
    Llamacpp,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".into(),
            models: vec!["*".into()],
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

impl BackendConfig {
    /// Checks what types alone cannot, naming keys under `section` (`backend`, or
    /// `backends.<name>`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::invalid(format!("{section}.{key}"), reason))
        };
        if self.models.is_empty() || self.models.iter().any(|m| m.trim().is_empty()) {
            return invalid(
                "models",
                "must name at least one model (or \"*\" for every one), none empty".into(),
            );
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1".into());
        }
        if self.retry_initial_backoff_ms > self.retry_max_backoff_ms {
            return invalid(
                "retry_initial_backoff_ms",
                format!("must not exceed {section}.retry_max_backoff_ms"),
            );
        }
        self.rate.validate(section)?;
        self.concurrency.validate(section)?;
        self.breaker.validate(section)?;
        if self.timeout_ms == 0 {
            return invalid("timeout_ms", "must be at least 1".into());
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => return invalid("url", "must be an http:// or https:// URL".into()),
            Err(e) => return invalid("url", format!("not a URL: {e}")),
        }
        if let Some(url) = &self.metrics_url {
            if reqwest::Url::parse(url).is_err() {
                return invalid("metrics_url", "not a URL".into());
            }
        }
        if self.metrics_interval_ms < 100 {
            return invalid("metrics_interval_ms", "must be at least 100".into());
        }
        Ok(())
    }

    /// Where the backend's gauges are read: `metrics_url`, else `{url}/metrics`.
    pub(crate) fn metrics_url(&self) -> String {
        self.metrics_url
            .clone()
            .unwrap_or_else(|| format!("{}/metrics", self.url.trim_end_matches('/')))
    }
}
