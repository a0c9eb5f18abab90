//! `[backend.concurrency]`: its settings, their defaults and ranges (validated at start-up,
//! naming the bad key).

use serde::Deserialize;

use super::error::ConfigError;

/// `[backend.concurrency]`: the adaptive concurrency limit of one worker.
///
/// The defaults were chosen from the simulation in this module's tests (backends of 4, 32
/// and 256 slots that queue or reject, rate-limited, mixed lengths, halving, outages).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencySettings {
    /// Limit at start-up, before anything is measured; the limit then doubles every round
    /// trip until the backend pushes back. Between `min` and `max`. Default 8.
    pub initial: usize,
    /// The limit never goes below this. At least 1. Default 1.
    pub min: usize,
    /// The limit never goes above this (also capped by `worker.max_in_flight`). At least
    /// `min`. Default 256.
    pub max: usize,
    /// Fraction of the round trip that may be spent queueing at the backend (latency above
    /// its no-load baseline for the same number of tokens) before the limit is cut to the
    /// number of calls being served. Also the noise the latency signal tolerates: raise it
    /// for backends whose latency jitters by more than this. Range (0, 0.5]. Default 0.1.
    pub queue_tolerance: f64,
    /// Successful calls at a steady limit before it probes one call higher. A probe that
    /// fails costs about one overload answer, so this bounds the steady overload rate to
    /// 1 / `probe_after_calls`. At least 1. Default 100.
    pub probe_after_calls: u32,
    /// Each probe that fails at the same level doubles the calls before the next one, up to
    /// this factor. At least 1. Default 64.
    pub max_probe_backoff: u32,
    /// How long a no-load latency measurement is trusted before a fresh one replaces it,
    /// so a backend that becomes slower for good is relearned. At least 1,000 ms.
    /// Default 60,000 ms.
    pub baseline_window_ms: u64,
}

impl ConcurrencySettings {
    /// Checks the ranges documented on each field, naming the bad key.
    /// `section` is the backend's (`backend`, or `backends.<name>`), for the key named.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::invalid(
                format!("{section}.{key}"),
                reason.replace("{section}", section),
            ))
        };
        if self.min == 0 {
            return invalid("concurrency.min", "must be at least 1");
        }
        if self.max < self.min {
            return invalid("concurrency.max", "must not be below min");
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return invalid("concurrency.initial", "must be between min and max");
        }
        if !(self.queue_tolerance > 0.0 && self.queue_tolerance <= 0.5) {
            return invalid("concurrency.queue_tolerance", "must be in (0, 0.5]");
        }
        if self.probe_after_calls == 0 {
            return invalid("concurrency.probe_after_calls", "must be at least 1");
        }
        if self.max_probe_backoff == 0 {
            return invalid("concurrency.max_probe_backoff", "must be at least 1");
        }
        if self.baseline_window_ms < 1000 {
            return invalid("concurrency.baseline_window_ms", "must be at least 1000");
        }
        Ok(())
    }
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 1,
            max: 256,
            queue_tolerance: 0.1,
            probe_after_calls: 100,
            max_probe_backoff: 64,
            baseline_window_ms: 60_000,
        }
    }
}
