//! RateLimit: token buckets for requests/s and tokens/min. (Being built.)

use serde::Deserialize;

/// `[backend.rate]`: limits for the whole consumer group, split between workers by their
/// share of the assigned partitions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Requests per second for the whole group. Default: unlimited.
    pub requests_per_second: Option<f64>,
    /// Tokens (estimated prompt + max_tokens, reconciled with usage) per minute for the
    /// whole group. Default: unlimited.
    pub tokens_per_minute: Option<u64>,
}
