//! The scenario files of `tests/data/adaptive-concurrency/`: a backend, a load, settings
//! overrides and the `[lo, hi]` bands a run must land in.

use serde::Deserialize;

use crate::backend::concurrency::ConcurrencySettings;

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Scenario {
    pub description: String,
    pub duration_secs: f64,
    /// Steady-state figures are measured from here to the end.
    pub measure_from_secs: f64,
    pub backend: BackendParams,
    pub load: Load,
    /// Overrides of the defaults.
    #[serde(default)]
    pub settings: ConcurrencySettings,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Load {
    /// Each request's `max_tokens`, uniform in this range.
    pub max_tokens: [u64; 2],
    /// Messages the worker holds at once, in flight or waiting to retry.
    #[serde(default = "default_worker_max_in_flight")]
    pub worker_max_in_flight: usize,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

const fn default_worker_max_in_flight() -> usize {
    1024
}
const fn default_max_attempts() -> u32 {
    50
}

/// Bands over the measured window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expect {
    /// Useful work as a fraction of the capacity available to us.
    pub throughput: [f64; 2],
    /// Time-weighted mean of the limit.
    pub mean_limit: [f64; 2],
    /// Overload answers (429 for lack of slots or rate) as a fraction of calls.
    pub overload: [f64; 2],
    /// After the first capacity change, every 1 s bucket from then on this far after it
    /// has at most 1% overload answers.
    pub overload_stops_within_secs: Option<f64>,
    /// After the last outage, throughput over a 1 s bucket is back to 90% this fast.
    pub recovers_within_secs: Option<f64>,
    /// After the last change, when it added slots, a 1 s bucket reaches 90% of the new
    /// capacity this fast.
    pub grows_within_secs: Option<f64>,
}

/// `[backend]` of a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendParams {
    pub slots: usize,
    /// `queue` (vLLM, llama.cpp) or `reject` (429 above the slots).
    pub overflow: OverflowParam,
    pub latency_ms: f64,
    pub per_token_ms: f64,
    /// Retry-After sent with a 429.
    #[serde(default = "default_retry_after_ms")]
    pub retry_after_ms: u64,
    /// One-way network time, each way.
    #[serde(default = "default_network_ms")]
    pub network_ms: f64,
    /// Service times vary uniformly by ± this fraction.
    #[serde(default)]
    pub jitter: f64,
    /// Batching slows every call down as more slots are busy (vLLM decodes a bigger batch
    /// per step): service time × (1 + this × busy slots / slots), measured at admission.
    #[serde(default)]
    pub batch_slowdown: f64,
    #[serde(default)]
    pub seed: u64,
    /// A 429 above this many requests per second (token bucket), whatever the slots.
    pub rate_per_second: Option<f64>,
    #[serde(default = "default_rate_burst")]
    pub rate_burst: f64,
    /// The slots available to us change at these times.
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(default)]
    pub outages: Vec<Outage>,
    /// The backend publishes its own gauges (requests running and waiting), read every
    /// this many ms, as llama.cpp's and vLLM's `/metrics` are (`backend::saturation`).
    #[serde(default)]
    pub gauges_every_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OverflowParam {
    Queue,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    pub at_secs: f64,
    pub slots: usize,
}

/// Every call arriving in `[from_secs, until_secs)` fails after `latency_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outage {
    pub from_secs: f64,
    pub until_secs: f64,
    /// `unavailable` (503, back-pressure) or `transport` (connection refused: retry).
    pub answer: OutageAnswer,
    pub latency_ms: f64,
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutageAnswer {
    Unavailable,
    Transport,
}

const fn default_retry_after_ms() -> u64 {
    1000
}
const fn default_network_ms() -> f64 {
    1.0
}
const fn default_rate_burst() -> f64 {
    1.0
}

impl BackendParams {
    /// Slots available to us at `secs` after the start.
    pub(crate) fn slots_at(&self, secs: f64) -> usize {
        self.changes
            .iter()
            .rev()
            .find(|change| change.at_secs <= secs)
            .map_or(self.slots, |change| change.slots)
    }

    pub(crate) fn most_slots(&self) -> usize {
        self.changes
            .iter()
            .map(|change| change.slots)
            .fold(self.slots, usize::max)
    }
}
