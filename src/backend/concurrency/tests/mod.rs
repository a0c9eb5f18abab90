//! Tests of the adaptive concurrency layer: the service and future alone (`service`), the
//! settings (here), and the controller driven against simulated
//! backends in virtual time (`simulation`, scenarios in `tests/data/adaptive-concurrency/`).

mod report;
pub(crate) mod scenario;
pub(crate) mod service;
pub(crate) mod sim_backend;
mod simulation;

use super::ConcurrencySettings;

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
    assert!(ConcurrencySettings::default().validate("backend").is_ok());
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
        let error = settings.validate("backend").expect_err(key).to_string();
        assert!(error.contains(key), "{error}");
    }
}
