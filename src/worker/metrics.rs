//! The worker's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::config::FallbackTrigger;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `error`, `expired`, `rejected` or `dead_letter`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The backend's configured name (`default` for `[backend]`).
    pub backend: String,
    /// The classifier's verdict: `success`, `retry`, `back_pressure`, `fatal`.
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabel {
    /// The model the request named.
    pub from: String,
    /// The model that served it instead.
    pub to: String,
    /// `breaker_open`, `deadline`, `retries_exhausted` or `context_too_long`.
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// The backend's configured name (`default` for `[backend]`), never its URL.
    pub backend: String,
}

/// Counters, gauges and histograms the worker updates.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Messages finished, by outcome.
    pub messages: Family<OutcomeLabel, Counter>,
    /// Backend attempts, by classified outcome.
    pub backend_calls: Family<ClassLabel, Counter>,
    /// Attempts after the first.
    pub retries: Counter,
    /// Dead letters written.
    pub dead_letters: Counter,
    /// Requests forwarded to their pool's overflow topic (the pool was full).
    pub forwarded: Counter,
    /// Requests served by their model's fallback chain.
    pub fallbacks: Family<FallbackLabel, Counter>,
    /// Messages taken and not yet finished.
    pub in_flight: Gauge,
    /// The configured cap on in-flight messages.
    pub max_in_flight: Gauge,
    /// Time a request waited in Kafka before a worker took it.
    pub queue_wait_seconds: Histogram,
    /// Time spent in backend calls per request (all attempts).
    pub backend_seconds: Histogram,
    /// From enqueue to final reply delivered.
    pub end_to_end_seconds: Histogram,
    /// Tokens reported by the backend.
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    /// Failed writes of replies or dead letters to Kafka (each retried).
    pub produce_failures: Counter,
    /// Chunk records of streamed answers written to the reply topic.
    pub stream_chunks: Counter,
    /// Chunk records Kafka did not take (not retried: a reader sees a gap).
    pub stream_chunks_lost: Counter,
    /// Messages buffered between Kafka and the backend (bounded per lane).
    pub buffered: Gauge,
    /// Circuit breaker: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<BackendLabel, Gauge>,
    /// Times the breaker opened.
    pub breaker_opens: Family<BackendLabel, Counter>,
    /// Calls that waited for the rate limit, and the seconds they waited.
    pub rate_limit_waits: Family<BackendLabel, Counter>,
    pub rate_limit_wait_seconds: Family<BackendLabel, Counter<f64, AtomicU64>>,
    /// This worker's share of the group-wide rate limits (its share of partitions).
    pub rate_share: Family<BackendLabel, Gauge<f64, AtomicU64>>,
    /// Calls this worker may have in flight now: its adaptive limit alone, its share of
    /// the group's in a group.
    pub concurrency_limit: Family<BackendLabel, Gauge>,
    /// The group's estimate of the backend's capacity (calls at once, all workers).
    pub group_capacity_estimate: Family<BackendLabel, Gauge>,
    /// This worker's share of that estimate.
    pub group_share: Family<BackendLabel, Gauge>,
    /// Live workers pacing the backend, this one included.
    pub group_members: Family<BackendLabel, Gauge>,
    /// 1 while this worker paces with the group, 0 while on its own controller.
    pub group_paced: Family<BackendLabel, Gauge>,
    /// Workers the backend can keep busy: the estimate over `worker.max_in_flight`,
    /// rounded up (at least 1). More workers than this add lag consumers, not throughput.
    pub desired_workers: Family<BackendLabel, Gauge>,
    /// Messages behind the end of this worker's partitions (consumer lag).
    pub lag: Gauge,
}

impl WorkerMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            messages: Family::default(),
            backend_calls: Family::default(),
            retries: Counter::default(),
            dead_letters: Counter::default(),
            forwarded: Counter::default(),
            fallbacks: Family::default(),
            in_flight: Gauge::default(),
            max_in_flight: Gauge::default(),
            queue_wait_seconds: crate::metrics::latency_histogram(),
            backend_seconds: crate::metrics::latency_histogram(),
            end_to_end_seconds: crate::metrics::latency_histogram(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            produce_failures: Counter::default(),
            stream_chunks: Counter::default(),
            stream_chunks_lost: Counter::default(),
            buffered: Gauge::default(),
            breaker_state: Family::default(),
            breaker_opens: Family::default(),
            rate_limit_waits: Family::default(),
            rate_limit_wait_seconds: Family::default(),
            rate_share: Family::default(),
            concurrency_limit: Family::default(),
            group_capacity_estimate: Family::default(),
            group_share: Family::default(),
            group_members: Family::default(),
            group_paced: Family::default(),
            desired_workers: Family::default(),
            lag: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("sluice_worker");
        r.register(
            "messages",
            "Messages finished, by outcome",
            m.messages.clone(),
        );
        r.register(
            "backend_calls",
            "Backend attempts, by classified outcome",
            m.backend_calls.clone(),
        );
        r.register(
            "retries",
            "Backend attempts after the first",
            m.retries.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters written",
            m.dead_letters.clone(),
        );
        r.register(
            "forwarded",
            "Requests forwarded to their pool's overflow topic while the pool was full",
            m.forwarded.clone(),
        );
        r.register(
            "fallbacks",
            "Requests served by another model of their model's fallback chain",
            m.fallbacks.clone(),
        );
        r.register(
            "in_flight",
            "Messages taken and not yet finished",
            m.in_flight.clone(),
        );
        r.register(
            "max_in_flight",
            "Configured cap on in-flight messages",
            m.max_in_flight.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time a request waited in Kafka",
            m.queue_wait_seconds.clone(),
        );
        r.register(
            "backend_seconds",
            "Time in backend calls per request",
            m.backend_seconds.clone(),
        );
        r.register(
            "end_to_end_seconds",
            "Enqueue to final reply delivered",
            m.end_to_end_seconds.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens reported by the backend",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Completion tokens reported by the backend",
            m.completion_tokens.clone(),
        );
        r.register(
            "produce_failures",
            "Failed writes to Kafka (retried)",
            m.produce_failures.clone(),
        );
        r.register(
            "stream_chunks",
            "Chunk records of streamed answers written to the reply topic",
            m.stream_chunks.clone(),
        );
        r.register(
            "stream_chunks_lost",
            "Chunk records of streamed answers Kafka did not take (a gap in the stream)",
            m.stream_chunks_lost.clone(),
        );
        r.register(
            "buffered",
            "Messages buffered between Kafka and the backend",
            m.buffered.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        r.register(
            "breaker_opens",
            "Times the circuit breaker opened",
            m.breaker_opens.clone(),
        );
        r.register(
            "rate_limit_waits",
            "Calls that waited for the rate limit",
            m.rate_limit_waits.clone(),
        );
        r.register(
            "rate_limit_wait_seconds",
            "Seconds calls waited for the rate limit",
            m.rate_limit_wait_seconds.clone(),
        );
        r.register(
            "rate_share",
            "Share of the group-wide rate limits",
            m.rate_share.clone(),
        );
        r.register(
            "concurrency_limit",
            "Adaptive concurrency limit",
            m.concurrency_limit.clone(),
        );
        r.register(
            "group_capacity_estimate",
            "The group's estimate of the backend's capacity, in calls at once",
            m.group_capacity_estimate.clone(),
        );
        r.register(
            "group_share",
            "This worker's share of the group's capacity estimate",
            m.group_share.clone(),
        );
        r.register(
            "group_members",
            "Live workers pacing the backend together, this one included",
            m.group_members.clone(),
        );
        r.register(
            "group_paced",
            "1 while pacing with the group, 0 while on this worker's own controller",
            m.group_paced.clone(),
        );
        r.register(
            "desired_workers",
            "Workers the backend can keep busy: capacity estimate / worker.max_in_flight, rounded up",
            m.desired_workers.clone(),
        );
        r.register(
            "lag",
            "Messages behind the end of this worker's partitions",
            m.lag.clone(),
        );
        m
    }

    pub fn finished(&self, outcome: &str) {
        self.messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A request for `from` was served by `to` of its chain, because of `reason`.
    pub(crate) fn fell_back(&self, from: &str, to: &str, reason: FallbackTrigger) {
        self.fallbacks
            .get_or_create(&FallbackLabel {
                from: from.into(),
                to: to.into(),
                reason: reason.label().into(),
            })
            .inc();
    }
}
