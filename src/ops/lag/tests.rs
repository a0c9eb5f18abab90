use super::*;

fn sample(partition: i32, committed: Option<i64>, low: i64, high: i64) -> PartitionSample {
    PartitionSample {
        topic: "req".into(),
        partition,
        committed,
        low,
        high,
    }
}

#[test]
fn lag_counts_from_the_committed_offset_or_the_log_start() {
    let last = [
        sample(0, Some(3), 0, 12),
        sample(1, None, 0, 5),
        sample(2, Some(2), 4, 10), // committed offset fell out of retention
        sample(3, Some(9), 0, 9),
    ];
    let r = report("g", None, &last, Duration::ZERO);
    let lags: Vec<i64> = r.partitions.iter().map(|p| p.lag).collect();
    assert_eq!(lags, [9, 5, 6, 0]);
    assert_eq!(r.total_lag, 20);
    assert_eq!(r.partitions[1].committed, None);
    assert_eq!(r.partitions[0].end, 12);
    assert_eq!(
        (r.interval_s, r.drain_rate_per_s, r.time_to_drain_s),
        (None, None, None)
    );
}

#[test]
fn rates_come_from_two_samples() {
    let first = [sample(0, Some(0), 0, 100), sample(1, None, 0, 50)];
    let last = [sample(0, Some(20), 0, 110), sample(1, Some(10), 0, 50)];
    let r = report("g", Some(&first), &last, Duration::from_secs(2));
    assert_eq!(r.total_lag, 90 + 40);
    assert_eq!(r.drain_rate_per_s, Some(15.0));
    assert_eq!(r.incoming_rate_per_s, Some(5.0));
    assert_eq!(r.time_to_drain_s, Some(130.0 / 15.0));
    assert_eq!(r.interval_s, Some(2.0));
}

#[test]
fn nothing_draining_means_no_eta_and_no_lag_means_zero() {
    let still = [sample(0, Some(1), 0, 5)];
    let r = report("g", Some(&still), &still, Duration::from_secs(1));
    assert_eq!((r.drain_rate_per_s, r.time_to_drain_s), (Some(0.0), None));
    assert!(render(&r).contains("never at this pace"), "{}", render(&r));
    let done = [sample(0, Some(5), 0, 5)];
    let r = report("g", Some(&done), &done, Duration::from_secs(1));
    assert_eq!(r.time_to_drain_s, Some(0.0));
}

#[test]
fn text_report_is_a_table_with_totals() {
    let first = [sample(0, Some(0), 0, 10), sample(1, None, 0, 4)];
    let last = [sample(0, Some(4), 0, 10), sample(1, None, 0, 4)];
    let text = render(&report(
        "workers",
        Some(&first),
        &last,
        Duration::from_secs(2),
    ));
    let expected = "\
consumer group workers, sampled 2.0 s apart

TOPIC  PARTITION     COMMITTED           END           LAG
req            0             4            10             6
req            1             -             4             4
total                                                   10

drain rate     2.0/s  (committed offsets advanced)
incoming       0.0/s  (end offsets advanced)
time to drain  5 s  (lag / drain rate)
";
    assert_eq!(text, expected);
}

#[test]
fn json_report_has_stable_field_names() {
    let last = [sample(0, None, 0, 3)];
    let value = serde_json::to_value(report("g", None, &last, Duration::ZERO)).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "group": "g", "interval_s": null, "total_lag": 3,
            "partitions": [{"topic": "req", "partition": 0, "committed": null, "end": 3, "lag": 3}],
            "drain_rate_per_s": null, "incoming_rate_per_s": null, "time_to_drain_s": null,
        })
    );
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    for bad in ["", "-1s", "soon", "5h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(human_duration(42.4), "42 s");
    assert_eq!(human_duration(250.0), "4 min 10 s");
    assert_eq!(human_duration(7500.0), "2 h 5 min");
}
