//! Reads the mock backend's `/metrics` (Prometheus text) before and after a run, so the
//! report can say how busy the backend was and how often it refused work meanwhile.

use std::time::Duration;

use anyhow::Context as _;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `sluice_mock_*` figures a report needs, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BackendSample {
    /// `sluice_mock_slots`: requests the backend serves at once.
    pub slots: f64,
    /// `sluice_mock_busy_seconds_total`: slot-seconds spent on released slots.
    pub busy_seconds: f64,
    /// `sluice_mock_overload_rejections_total`: 429s for want of a free slot.
    pub overload_rejections: f64,
    /// Sum of `sluice_mock_requests_total` over every outcome: calls received.
    pub calls: f64,
    /// `sluice_mock_requests_total{outcome="ok"}`.
    pub ok_calls: f64,
    /// `sluice_mock_peak_in_flight`: most slots ever held at once (not a delta).
    pub peak_in_flight: f64,
    /// `sluice_mock_in_flight`: slots held at this instant.
    pub in_flight: f64,
}

impl BackendSample {
    /// Picks the figures out of a Prometheus text exposition; unknown lines are skipped.
    pub fn parse(text: &str) -> Result<BackendSample, String> {
        let mut sample = BackendSample::default();
        let mut seen_slots = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            match name {
                "sluice_mock_slots" => {
                    sample.slots = value;
                    seen_slots = true;
                }
                "sluice_mock_busy_seconds_total" => sample.busy_seconds = value,
                "sluice_mock_overload_rejections_total" => sample.overload_rejections = value,
                "sluice_mock_peak_in_flight" => sample.peak_in_flight = value,
                "sluice_mock_in_flight" => sample.in_flight = value,
                "sluice_mock_requests_total" => {
                    sample.calls += value;
                    if labels.contains("outcome=\"ok\"") {
                        sample.ok_calls += value;
                    }
                }
                _ => {}
            }
        }
        if !seen_slots {
            return Err("no sluice_mock_slots metric: is this sluice mock-llm's /metrics?".into());
        }
        Ok(sample)
    }
}

/// Fetches and parses `url`.
pub async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<BackendSample> {
    let response = client
        .get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("scraping backend metrics at {url}"))?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "backend metrics at {url}: HTTP {status}"
    );
    let text = response
        .text()
        .await
        .with_context(|| format!("reading backend metrics at {url}"))?;
    BackendSample::parse(&text).map_err(|e| anyhow::anyhow!("backend metrics at {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP sluice_mock_requests Chat completion requests by outcome.
# TYPE sluice_mock_requests counter
sluice_mock_requests_total{outcome=\"ok\"} 120
sluice_mock_requests_total{outcome=\"rejected\"} 30
sluice_mock_requests_total{outcome=\"invalid\"} 0
sluice_mock_requests_total{outcome=\"cancelled\"} 1
sluice_mock_completion_tokens_total 3840
# TYPE sluice_mock_slots gauge
sluice_mock_slots 32
sluice_mock_peak_in_flight 32
sluice_mock_in_flight 17
sluice_mock_overload_rejections_total 30
sluice_mock_busy_seconds_total 19.68
# EOF
";

    #[test]
    fn picks_the_backend_figures() {
        let sample = BackendSample::parse(EXPOSITION).unwrap();
        assert_eq!(
            sample,
            BackendSample {
                slots: 32.0,
                busy_seconds: 19.68,
                overload_rejections: 30.0,
                calls: 151.0,
                ok_calls: 120.0,
                peak_in_flight: 32.0,
                in_flight: 17.0,
            }
        );
    }

    #[test]
    fn another_exposition_is_refused() {
        let err = BackendSample::parse("process_cpu_seconds_total 3\n").unwrap_err();
        assert!(err.contains("sluice_mock_slots"), "{err}");
    }
}
