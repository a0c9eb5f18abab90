//! `[backend.breaker]`: its settings, their defaults and ranges (validated at start-up,
//! naming the bad key).

use serde::Deserialize;

use super::error::ConfigError;

/// `[backend.breaker]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Opens after this many failures in a row; 0 disables this trigger. Default 5.
    pub consecutive_failures: u32,
    /// Opens when at least this fraction of calls in the window failed, in (0, 1];
    /// above 1 disables this trigger. Default 0.5.
    pub error_ratio: f64,
    /// The ratio is only judged over at least this many calls (at least 1). Default 20.
    pub min_calls: u32,
    /// Length of the sliding window for the ratio (kept in tenths, so calls leave it up
    /// to a tenth early). At least 10 ms. Default 10,000 ms.
    pub window_ms: u64,
    /// How long it stays open before a half-open probe. At least 1 ms. Default 5,000 ms.
    pub open_ms: u64,
    /// Longest open period: each failed probe doubles the previous one, up to this.
    /// At least `open_ms`; equal to it disables the growth. Default 60,000 ms.
    pub max_open_ms: u64,
}

impl BreakerSettings {
    /// Checks what types alone cannot; the error names the key.
    /// `section` is the backend's (`backend`, or `backends.<name>`), for the key named.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::invalid(
                format!("{section}.{key}"),
                reason.replace("{section}", section),
            ))
        };
        if self.error_ratio.is_nan() || self.error_ratio <= 0.0 {
            return invalid("breaker.error_ratio", "must be above 0");
        }
        if self.min_calls == 0 {
            return invalid("breaker.min_calls", "must be at least 1");
        }
        if self.window_ms < 10 {
            return invalid("breaker.window_ms", "must be at least 10");
        }
        if self.open_ms == 0 {
            return invalid("breaker.open_ms", "must be at least 1");
        }
        if self.max_open_ms < self.open_ms {
            return invalid(
                "breaker.max_open_ms",
                "must be at least {section}.breaker.open_ms",
            );
        }
        Ok(())
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_ratio: 0.5,
            min_calls: 20,
            window_ms: 10_000,
            open_ms: 5_000,
            max_open_ms: 60_000,
        }
    }
}
