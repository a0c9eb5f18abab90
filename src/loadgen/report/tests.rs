//! Percentiles, backend deltas and the report's JSON shape.

use std::time::{Duration, Instant};

use super::*;
use crate::loadgen::ledger::{Ledger, Outcome};

#[test]
fn nearest_rank_percentiles() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    let p = Percentiles::of(&values);
    assert_eq!(
        (p.count, p.p50, p.p95, p.p99, p.max),
        (100, 50.0, 95.0, 99.0, 100.0)
    );
    // Order does not matter; small samples round up to a real observation.
    let p = Percentiles::of(&[30.0, 10.0, 20.0]);
    assert_eq!((p.p50, p.p95, p.p99, p.max), (20.0, 30.0, 30.0, 30.0));
    let one = Percentiles::of(&[7.0]);
    assert_eq!((one.p50, one.p99), (7.0, 7.0));
    assert_eq!(Percentiles::of(&[]), Percentiles::default());
}

#[test]
fn backend_deltas_give_utilisation_and_overload_rate() {
    let before = BackendSample {
        slots: 32.0,
        busy_seconds: 10.0,
        overload_rejections: 5.0,
        calls: 100.0,
        ok_calls: 95.0,
        peak_in_flight: 32.0,
        in_flight: 0.0,
    };
    let after = BackendSample {
        busy_seconds: 10.0 + 32.0 * 9.0,
        overload_rejections: 25.0,
        calls: 2100.0,
        ok_calls: 2075.0,
        ..before
    };
    let b = BackendReport::between(&before, &after, 10.0);
    assert!((b.utilisation - 0.9).abs() < 1e-9, "{b:?}");
    assert_eq!(b.calls, 2000.0);
    assert_eq!(b.overload_responses, 20.0);
    assert!((b.overload_per_1000_calls - 10.0).abs() < 1e-9);
    let idle = BackendReport::between(&before, &before, 0.0);
    assert_eq!((idle.utilisation, idle.overload_per_1000_calls), (0.0, 0.0));
}

#[test]
fn report_counts_lost_duplicates_and_drain() {
    let ledger = Ledger::default();
    for id in ["a", "b", "c", "d"] {
        ledger.sending(id);
    }
    ledger.accepted("a");
    ledger.accepted("b");
    ledger.accepted("c");
    ledger.refused("d", "503".into());
    let t0 = Instant::now();
    let ok = |q| Outcome {
        status: "ok",
        failure: None,
        queue_ms: Some(q),
    };
    ledger.finish("a", ok(10), t0);
    ledger.finish("b", ok(30), t0 + Duration::from_secs(2));
    ledger.finish("a", ok(99), t0 + Duration::from_secs(3));
    ledger.finish("zz", ok(1), t0);
    let report = Report::new("kafka", "t".into(), &ledger.snapshot(), None, None);
    assert_eq!(report.lost, 1, "c was accepted and never answered");
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.ignored_replies, 1);
    assert_eq!(report.completed["ok"], 2);
    assert_eq!(report.completed["error"], 0);
    assert!(report.timed_out);
    assert_eq!(report.drain_seconds, 2.0);
    assert_eq!(report.drain_per_second, 1.0);
    assert_eq!(report.queue_wait_ms.map(|q| q.max), Some(30.0));
    assert!(
        report.text().contains("lost                1"),
        "{}",
        report.text()
    );
}

#[test]
fn json_has_the_documented_fields() {
    let ledger = Ledger::default();
    ledger.sending("a");
    ledger.accepted("a");
    ledger.finish(
        "a",
        Outcome {
            status: "error",
            failure: Some("429".into()),
            queue_ms: None,
        },
        Instant::now(),
    );
    let sample = BackendSample {
        slots: 4.0,
        ..Default::default()
    };
    let direct = DirectCalls {
        calls: 3,
        retries: 2,
        overload_responses: 3,
    };
    let report = Report::new(
        "direct",
        "http://x".into(),
        &ledger.snapshot(),
        Some((sample, sample)),
        Some(direct),
    );
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "mode",
        "target",
        "sent",
        "accepted",
        "refused",
        "completed",
        "failed",
        "lost",
        "duplicates",
        "ignored_replies",
        "latency_ms",
        "ok_latency_ms",
        "queue_wait_ms",
        "send_seconds",
        "drain_seconds",
        "drain_per_second",
        "timed_out",
        "backend",
        "direct",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["completed"]["error"], 1);
    assert_eq!(json["failed"]["429"], 1);
    assert!(json["queue_wait_ms"].is_null());
    assert_eq!(json["backend"]["slots"], 4.0);
    assert_eq!(json["direct"]["retries"], 2);
    assert_eq!(json["latency_ms"]["count"], 1);
    assert_eq!(
        json["ok_latency_ms"]["count"], 0,
        "an error is not an ok latency"
    );
}
