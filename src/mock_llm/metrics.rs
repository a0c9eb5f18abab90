//! The mock's Prometheus metrics, prefixed `sluice_mock_`: request outcomes and generated
//! tokens are counted here; capacity figures are read from the model's own counters at
//! each scrape, so the two can never disagree.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::capacity::CapacityModel;

/// Prefix of every mock metric name.
pub(crate) const PREFIX: &str = "sluice_mock";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Every outcome of a chat request, pre-registered so each appears at 0 from the start.
const OUTCOMES: [&str; 4] = ["ok", "rejected", "invalid", "cancelled"];

/// The counters the request handlers update.
#[derive(Debug, Clone)]
pub(crate) struct MockMetrics {
    requests: Family<OutcomeLabel, Counter>,
    completion_tokens: Counter,
}

impl MockMetrics {
    /// Registers the request counters and a collector reading `capacity` in a new
    /// registry prefixed [`PREFIX`].
    pub fn new(capacity: Arc<CapacityModel>) -> (Self, Registry) {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<OutcomeLabel, Counter>::default();
        for outcome in OUTCOMES {
            // Creating the child is the point; the guard it returns is not needed.
            let _ = requests.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "requests",
            "Chat completion requests by outcome: ok (answered to the end), rejected (429), \
             invalid (400), cancelled (the client left first)",
            requests.clone(),
        );
        let completion_tokens = Counter::default();
        registry.register(
            "completion_tokens",
            "Tokens generated in completed replies",
            completion_tokens.clone(),
        );
        registry.register_collector(Box::new(CapacityCollector(capacity)));
        let metrics = Self {
            requests,
            completion_tokens,
        };
        (metrics, registry)
    }

    /// Starts counting one request; it counts as `cancelled` unless settled otherwise.
    pub fn begin(&self) -> Tally {
        Tally {
            metrics: self.clone(),
            settled: false,
        }
    }

    fn count(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// One request's entry in `requests_total`: exactly one outcome per request, `cancelled`
/// when the handler or the stream is dropped before it settles.
#[derive(Debug)]
pub(crate) struct Tally {
    metrics: MockMetrics,
    settled: bool,
}

impl Tally {
    /// The reply was sent to the end with `tokens` generated tokens.
    pub fn ok(mut self, tokens: u64) {
        self.settled = true;
        self.metrics.completion_tokens.inc_by(tokens);
        self.metrics.count("ok");
    }

    /// Refused with 429 because every slot was busy.
    pub fn rejected(mut self) {
        self.settled = true;
        self.metrics.count("rejected");
    }

    /// Refused with 400.
    pub fn invalid(mut self) {
        self.settled = true;
        self.metrics.count("invalid");
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !self.settled {
            self.metrics.count("cancelled");
        }
    }
}

/// Reads the capacity model's counters at scrape time.
#[derive(Debug)]
struct CapacityCollector(Arc<CapacityModel>);

impl Collector for CapacityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.0.stats();
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: usize| {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            &mut encoder,
            "slots",
            "Requests served at once.",
            stats.slots,
        )?;
        gauge(
            &mut encoder,
            "in_flight",
            "Slots held now.",
            stats.in_flight,
        )?;
        gauge(
            &mut encoder,
            "peak_in_flight",
            "Most slots ever held at once.",
            stats.peak_in_flight,
        )?;
        gauge(
            &mut encoder,
            "queued",
            "Requests waiting for a slot now.",
            stats.queued,
        )?;
        let rejections = ConstCounter::new(stats.rejections);
        rejections.encode(encoder.encode_descriptor(
            "overload_rejections",
            "Requests refused because every slot was busy.",
            None,
            rejections.metric_type(),
        )?)?;
        let busy = ConstCounter::new(stats.busy.as_secs_f64());
        busy.encode(encoder.encode_descriptor(
            "busy_seconds",
            "Slot-time spent serving released slots; utilisation = rate / slots.",
            None,
            busy.metric_type(),
        )?)?;
        Ok(())
    }
}
