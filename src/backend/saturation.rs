//! The backend's own saturation signal, where it publishes one: vLLM's and llama.cpp
//! server's Prometheus gauges of requests running and requests waiting inside the server.
//! A request waiting there can no longer be reprioritised, expired at its deadline or
//! sent elsewhere; one still in Kafka can. So the concurrency controller keeps the
//! server's own queue near empty while its slots stay busy ([`Signal`] goes to
//! `Controller::on_saturation`).
//!
//! A poller reads `backend.metrics_url` every `backend.metrics_interval_ms`. With
//! `backend.saturation = auto` it uses whichever gauges it finds (and keeps looking while
//! it finds none); opaque backends such as OpenAI keep the latency and 429 controller.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::concurrency::{Controller, Gauges};
pub(crate) use crate::config::SaturationSource;

/// Which server's gauges a scrape held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publisher {
    Vllm,
    Llamacpp,
}

impl Publisher {
    pub fn label(self) -> &'static str {
        match self {
            Publisher::Vllm => "vllm",
            Publisher::Llamacpp => "llamacpp",
        }
    }

    /// How long after a cut the publisher's gauges may still show the old load: vLLM
    /// refreshes its gauges every few seconds, llama.cpp at every scrape.
    pub fn lag(self) -> Duration {
        match self {
            Publisher::Vllm => Duration::from_secs(6),
            Publisher::Llamacpp => Duration::from_millis(1_000),
        }
    }
}

/// One reading of the server's own load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Signal {
    pub publisher: Publisher,
    /// Requests the server is serving now (all its clients').
    pub running: f64,
    /// Requests waiting inside the server for a slot.
    pub waiting: f64,
    /// Fraction of the KV cache in use (vLLM), in [0, 1].
    pub kv_cache_usage: Option<f64>,
}

impl Signal {
    /// The reading as the concurrency controller takes it.
    pub(crate) fn gauges(self) -> Gauges {
        Gauges {
            running: self.running,
            waiting: self.waiting,
            kv_cache_usage: self.kv_cache_usage,
            lag: self.publisher.lag(),
        }
    }
}

/// Reads the gauges of `source` (any known publisher for `Auto`) from Prometheus text.
/// `None` when they are not there.
pub fn parse(text: &str, source: SaturationSource) -> Option<Signal> {
    let wanted = |publisher| match source {
        SaturationSource::Auto => true,
        SaturationSource::Latency => false,
        SaturationSource::Vllm => publisher == Publisher::Vllm,
        SaturationSource::Llamacpp => publisher == Publisher::Llamacpp,
    };
    let sum = |name: &str| -> Option<f64> {
        let mut total = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `name{labels} value` or `name value`, and not a longer name.
            let rest = match rest.as_bytes().first() {
                Some(b'{') => rest.split_once('}').map_or("", |(_, after)| after),
                Some(b' ') => rest,
                _ => continue,
            };
            let Some(value) = rest
                .split_whitespace()
                .next()
                .and_then(|v| f64::from_str(v).ok())
            else {
                continue;
            };
            *total.get_or_insert(0.0) += value;
        }
        total
    };
    if wanted(Publisher::Vllm) {
        if let (Some(running), Some(waiting)) = (
            sum("vllm:num_requests_running"),
            sum("vllm:num_requests_waiting"),
        ) {
            let kv = sum("vllm:kv_cache_usage_perc").or_else(|| sum("vllm:gpu_cache_usage_perc"));
            return Some(Signal {
                publisher: Publisher::Vllm,
                running,
                waiting,
                kv_cache_usage: kv,
            });
        }
    }
    if wanted(Publisher::Llamacpp) {
        if let (Some(running), Some(waiting)) = (
            sum("llamacpp:requests_processing"),
            sum("llamacpp:requests_deferred"),
        ) {
            return Some(Signal {
                publisher: Publisher::Llamacpp,
                running,
                waiting,
                kv_cache_usage: None,
            });
        }
    }
    None
}

/// Polls the backend's metrics and hands each reading to the controller until `stop`.
pub(crate) struct Poller {
    pub url: String,
    pub source: SaturationSource,
    pub interval: Duration,
    pub api_key: Option<String>,
    pub controller: Arc<Controller>,
}

/// While `auto` finds no gauges, it looks again this often.
const AUTO_RETRY: Duration = Duration::from_secs(30);

impl Poller {
    pub async fn run(self, stop: CancellationToken) {
        if self.source == SaturationSource::Latency {
            return;
        }
        let http = match reqwest::Client::builder()
            .timeout(self.interval.max(Duration::from_secs(1)))
            .build()
        {
            Ok(http) => http,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the metrics client; pacing on latency");
                return;
            }
        };
        let mut found: Option<Publisher> = None;
        let mut failing = false;
        loop {
            let text = self.scrape(&http).await;
            let signal = text.as_deref().and_then(|text| parse(text, self.source));
            match (&signal, found) {
                (Some(signal), None) => {
                    found = Some(signal.publisher);
                    tracing::info!(publisher = signal.publisher.label(), url = %self.url,
                        "pacing on the backend's own saturation gauges");
                }
                (None, Some(publisher)) if !failing => {
                    failing = true;
                    tracing::warn!(publisher = publisher.label(), url = %self.url,
                        "the backend's saturation gauges are gone; pacing on latency until they return");
                }
                (Some(_), Some(_)) if failing => {
                    failing = false;
                    tracing::info!(url = %self.url, "the backend's saturation gauges are back");
                }
                _ => {}
            }
            self.controller.on_saturation(signal.map(Signal::gauges));
            let wait = if found.is_none() && self.source == SaturationSource::Auto {
                AUTO_RETRY
            } else {
                self.interval
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn scrape(&self, http: &reqwest::Client) -> Option<String> {
        let mut request = http.get(&self.url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMACPP: &str = "\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
llamacpp:requests_deferred_total_seen 99
";

    const VLLM: &str = r#"
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.97
"#;

    #[test]
    fn reads_llamacpp_gauges() {
        let signal = parse(LLAMACPP, SaturationSource::Auto).expect("llama.cpp gauges");
        assert_eq!(signal.publisher, Publisher::Llamacpp);
        assert_eq!((signal.running, signal.waiting), (4.0, 3.0));
        assert!(parse(LLAMACPP, SaturationSource::Vllm).is_none());
        assert!(parse(LLAMACPP, SaturationSource::Latency).is_none());
    }

    #[test]
    fn reads_vllm_gauges_summed_over_engines() {
        let signal = parse(VLLM, SaturationSource::Vllm).expect("vLLM gauges");
        assert_eq!(signal.publisher, Publisher::Vllm);
        assert_eq!((signal.running, signal.waiting), (16.0, 2.0));
        assert_eq!(signal.kv_cache_usage, Some(0.97));
        assert_eq!(parse(VLLM, SaturationSource::Auto), Some(signal));
    }

    #[test]
    fn other_metrics_are_no_signal() {
        let mock = "sluice_mock_in_flight 3\nsluice_mock_slots 16\n";
        assert!(parse(mock, SaturationSource::Auto).is_none());
        assert!(parse("", SaturationSource::Llamacpp).is_none());
    }

    #[test]
    fn source_names_parse_from_config() {
        for (text, source) in [
            ("auto", SaturationSource::Auto),
            ("latency", SaturationSource::Latency),
            ("vllm", SaturationSource::Vllm),
            ("llamacpp", SaturationSource::Llamacpp),
        ] {
            let parsed: SaturationSource =
                serde_json::from_value(serde_json::json!(text)).expect("a source name");
            assert_eq!(parsed, source);
        }
        assert!(serde_json::from_value::<SaturationSource>(serde_json::json!("tgi")).is_err());
    }
}
