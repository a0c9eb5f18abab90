//! Tests of the adaptive concurrency layer: the service and future alone (`service`), the
//! latency baseline and settings (here), and the controller driven against simulated
//! backends in virtual time (`simulation`, scenarios in `tests/data/adaptive-concurrency/`).

mod report;
pub(crate) mod scenario;
mod service;
pub(crate) mod sim_backend;
mod simulation;

use std::time::Duration;

use tokio::time::Instant;

use super::baseline::Baseline;
use super::ConcurrencySettings;

#[tokio::test(start_paused = true)]
async fn baseline_interpolates_the_no_load_line_between_token_buckets() {
    // No-load RTT = 100 ms + 1 ms per token.
    let rtt = |tokens: u64| 0.1 + 0.001 * tokens as f64;
    let mut baseline = Baseline::new(Duration::from_secs(60), 0.1);
    let now = Instant::now();
    for tokens in [16, 64, 256, 1024] {
        assert_eq!(baseline.observe(tokens, rtt(tokens), now), rtt(tokens));
    }
    for tokens in [20, 100, 500, 900, 2000] {
        let estimate = baseline.estimate(tokens).expect("points are known");
        assert!(
            (estimate - rtt(tokens)).abs() < 1e-9,
            "{tokens}: {estimate}"
        );
    }
    // A queued call: its baseline is the no-load time, so the excess is the wait.
    let base = baseline.observe(256, rtt(256) + 0.5, now);
    assert!((base - rtt(256)).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn baseline_forgets_points_older_than_its_window() {
    let mut baseline = Baseline::new(Duration::from_secs(10), 0.1);
    baseline.observe(100, 0.2, Instant::now());
    assert_eq!(baseline.observe(100, 0.3, Instant::now()), 0.2);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(baseline.observe(100, 0.3, Instant::now()), 0.3, "relearned");
}

#[test]
fn settings_parse_with_defaults_and_reject_unknown_keys() {
    let parsed: ConcurrencySettings =
        toml::from_str("initial = 4\nmax = 64\n").expect("valid settings");
    assert_eq!(parsed.initial, 4);
    assert_eq!(parsed.max, 64);
    assert_eq!(
        parsed.queue_tolerance,
        ConcurrencySettings::default().queue_tolerance
    );
    assert!(toml::from_str::<ConcurrencySettings>("maximum = 3\n").is_err());
    assert!(ConcurrencySettings::default().validate().is_ok());
}

#[test]
fn settings_validation_names_the_bad_key() {
    let cases = [
        (
            ConcurrencySettings {
                min: 0,
                ..Default::default()
            },
            "backend.concurrency.min",
        ),
        (
            ConcurrencySettings {
                max: 0,
                ..Default::default()
            },
            "backend.concurrency.max",
        ),
        (
            ConcurrencySettings {
                initial: 1000,
                ..Default::default()
            },
            "backend.concurrency.initial",
        ),
        (
            ConcurrencySettings {
                queue_tolerance: 0.0,
                ..Default::default()
            },
            "backend.concurrency.queue_tolerance",
        ),
        (
            ConcurrencySettings {
                probe_after_calls: 0,
                ..Default::default()
            },
            "backend.concurrency.probe_after_calls",
        ),
        (
            ConcurrencySettings {
                max_probe_backoff: 0,
                ..Default::default()
            },
            "backend.concurrency.max_probe_backoff",
        ),
        (
            ConcurrencySettings {
                baseline_window_ms: 10,
                ..Default::default()
            },
            "backend.concurrency.baseline_window_ms",
        ),
    ];
    for (settings, key) in cases {
        let error = settings.validate().expect_err(key).to_string();
        assert!(error.contains(key), "{error}");
    }
}
