//! CircuitBreaker: stops calling a backend that is down. (Being built.)

use serde::Deserialize;

/// `[backend.breaker]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Opens after this many failures in a row. Default 5.
    pub consecutive_failures: u32,
    /// Opens when at least this fraction of calls in the window failed. Default 0.5.
    pub error_ratio: f64,
    /// The ratio is only judged over at least this many calls. Default 20.
    pub min_calls: u32,
    /// Length of the sliding window for the ratio. Default 10,000 ms.
    pub window_ms: u64,
    /// How long it stays open before a half-open probe. Default 5,000 ms.
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_ratio: 0.5,
            min_calls: 20,
            window_ms: 10_000,
            open_ms: 5_000,
        }
    }
}
