//! `[backend]`: the OpenAI-compatible LLM server and the call path's settings (the
//! subsections `[backend.concurrency]`, `[backend.rate]`, `[backend.breaker]` have files
//! of their own).

use serde::Deserialize;

use super::breaker::BreakerSettings;
use super::concurrency::ConcurrencySettings;
use super::rate::RateSettings;

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
