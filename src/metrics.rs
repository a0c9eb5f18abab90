//! Prometheus metrics: each role registers its own families in a `Registry` and serves
//! them as text on `/metrics` (see `admin`). Names are prefixed `sluice_`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Renders the registry in the Prometheus text exposition format.
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// Latency histogram in seconds from 1 ms to about 10 min.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}
