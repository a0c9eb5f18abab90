//! The ingress's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// A request topic.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// A gauge of seconds.
pub(crate) type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// `POST /v1/chat/completions` answers: the HTTP status and whether it was streamed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletionLabel {
    pub status: String,
    pub stream: String,
}

/// Counters and histograms the ingress updates.
#[derive(Clone)]
pub struct IngressMetrics {
    /// Submissions by HTTP status answered.
    pub submissions: Family<StatusLabel, Counter>,
    /// Time from receiving a submission to Kafka's acknowledgement.
    pub enqueue_seconds: Histogram,
    /// Final replies read from the reply topic, by reply status.
    pub replies: Family<StatusLabel, Counter>,
    /// Final replies for an id that already had one (kept: the first).
    pub duplicate_replies: Counter,
    /// Reply-topic messages that could not be decoded (skipped).
    pub undecodable_replies: Counter,
    /// Stream chunk records read from the reply topic (every instance reads them all).
    pub chunks_read: Counter,
    /// Ids held in the result cache.
    pub cached: Gauge,
    /// `POST /v1/chat/completions` answers, by status and streaming.
    pub completions: Family<CompletionLabel, Counter>,
    /// Requests a caller is waiting on (sync or streamed).
    pub waiters: Gauge,
    /// Streamed requests: from the request to its first chunk sent to the caller.
    pub first_chunk_seconds: Histogram,
    /// Admission's expected wait of a new request, per request topic (+Inf: stalled).
    pub expected_wait_seconds: Family<TopicLabel, SecondsGauge>,
}

impl IngressMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            submissions: Family::default(),
            enqueue_seconds: crate::metrics::latency_histogram(),
            replies: Family::default(),
            duplicate_replies: Counter::default(),
            undecodable_replies: Counter::default(),
            chunks_read: Counter::default(),
            cached: Gauge::default(),
            completions: Family::default(),
            waiters: Gauge::default(),
            first_chunk_seconds: crate::metrics::latency_histogram(),
            expected_wait_seconds: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("sluice_ingress");
        r.register(
            "submissions",
            "Submissions by HTTP status answered",
            m.submissions.clone(),
        );
        r.register(
            "enqueue_seconds",
            "Time until Kafka acknowledged a submission",
            m.enqueue_seconds.clone(),
        );
        r.register(
            "replies",
            "Final replies read, by status",
            m.replies.clone(),
        );
        r.register(
            "duplicate_replies",
            "Final replies for an id that already had one",
            m.duplicate_replies.clone(),
        );
        r.register(
            "undecodable_replies",
            "Reply-topic messages that could not be decoded",
            m.undecodable_replies.clone(),
        );
        r.register(
            "chunks_read",
            "Stream chunk records read from the reply topic",
            m.chunks_read.clone(),
        );
        r.register(
            "cached_results",
            "Request ids held in the result cache",
            m.cached.clone(),
        );
        r.register(
            "completions",
            "POST /v1/chat/completions answers, by HTTP status and streaming",
            m.completions.clone(),
        );
        r.register(
            "waiters",
            "Requests a caller is waiting on (sync or streamed)",
            m.waiters.clone(),
        );
        r.register(
            "first_chunk_seconds",
            "Streamed requests: time from the request to its first chunk sent",
            m.first_chunk_seconds.clone(),
        );
        r.register(
            "expected_wait_seconds",
            "Expected wait of a new request (backlog ahead / drain rate), per request topic",
            m.expected_wait_seconds.clone(),
        );
        m
    }
}
