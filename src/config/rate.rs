//! `[backend.rate]`: its settings, their defaults and ranges (validated at start-up,
//! naming the bad key).

use serde::Deserialize;

use super::error::ConfigError;

/// `[backend.rate]`: limits for the whole consumer group, split between workers by their
/// share of the assigned partitions.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Requests per second for the whole group; must be > 0. Default: unlimited.
    pub requests_per_second: Option<f64>,
    /// Tokens (estimated prompt + max_tokens, reconciled with usage) per minute for the
    /// whole group; must be > 0. Default: unlimited.
    pub tokens_per_minute: Option<u64>,
    /// How much unused budget a worker may save up and spend at once, as a duration of
    /// its rate (the requests bucket holds at least one request). 0..=60,000.
    /// Default 250 ms: any 10 s window stays within 2.5% of the limits.
    pub burst_ms: u64,
}

impl RateSettings {
    /// Checks what types alone cannot; the error names the key.
    /// `section` is the backend's (`backend`, or `backends.<name>`), for the key named.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::invalid(
                format!("{section}.{key}"),
                reason.replace("{section}", section),
            ))
        };
        if let Some(rps) = self.requests_per_second {
            if !(rps.is_finite() && rps > 0.0) {
                return invalid("rate.requests_per_second", "must be a number above 0");
            }
        }
        if self.tokens_per_minute == Some(0) {
            return invalid("rate.tokens_per_minute", "must be at least 1");
        }
        if self.burst_ms > 60_000 {
            return invalid("rate.burst_ms", "must be at most 60000");
        }
        Ok(())
    }
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            requests_per_second: None,
            tokens_per_minute: None,
            burst_ms: 250,
        }
    }
}
