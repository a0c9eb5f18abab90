//! AdaptiveConcurrency: finds how many calls the backend can take at once, with no
//! knowledge of its capacity. (Being built; see the layer and controller modules.)

use serde::Deserialize;

/// `[backend.concurrency]`: the adaptive concurrency limit of one worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencySettings {
    /// Limit at start-up, before anything is measured. Default 8.
    pub initial: usize,
    /// The limit never goes below this. Default 1.
    pub min: usize,
    /// The limit never goes above this (also capped by `worker.max_in_flight`). Default 256.
    pub max: usize,
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 1,
            max: 256,
        }
    }
}
