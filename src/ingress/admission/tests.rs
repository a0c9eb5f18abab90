//! Admission's estimate and decisions from synthetic samples.
use super::*;

fn admission(topics: &[&str]) -> Admission {
    Admission {
        enabled: true,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        overflow: Vec::new(),
        dlq_topic: "dlq".into(),
        state: Mutex::default(),
        gauges: Family::default(),
    }
}

fn sample(topic: &str, partition: i32, committed: i64, high: i64) -> PartitionSample {
    PartitionSample {
        topic: topic.into(),
        partition,
        committed: Some(committed),
        low: 0,
        high,
    }
}

fn busy(seconds: u64, drained: u64) -> VecDeque<Interval> {
    VecDeque::from([Interval {
        at: Instant::now(),
        length: Duration::from_secs(seconds),
        drained,
    }])
}

fn in_seconds(s: u64) -> Option<u64> {
    Some(now_ms() + s * 1000)
}

#[test]
fn nothing_is_refused_before_a_rate_is_known_or_without_a_deadline() {
    let a = admission(&["req"]);
    a.update(
        &[sample("req", 0, 0, 10_000)],
        &VecDeque::new(),
        Instant::now(),
    );
    assert_eq!(a.expected_wait("req"), None);
    assert!(a.check("req", in_seconds(1)).is_ok());
    a.update(
        &[sample("req", 0, 0, 10_000)],
        &busy(2, 100),
        Instant::now(),
    );
    assert!(a.check("req", None).is_ok(), "no deadline: it may wait");
}

#[test]
fn a_deadline_before_the_expected_turn_is_refused_with_when_to_retry() {
    let a = admission(&["req"]);
    // 3,000 waiting over two partitions, drained at 100/s: a 30 s wait.
    let samples = [sample("req", 0, 500, 2000), sample("req", 1, 500, 2000)];
    a.update(&samples, &busy(4, 400), Instant::now());
    let gauge = a
        .gauges
        .get_or_create(&TopicLabel {
            topic: "req".into(),
        })
        .get();
    assert!(
        (29.0..=31.0).contains(&gauge),
        "the metric shows it: {gauge}"
    );
    let wait = a.expected_wait("req").unwrap();
    assert!((29.0..=31.0).contains(&wait.as_secs_f64()), "{wait:?}");
    match a.check("req", in_seconds(5)) {
        Err(AppError::Unavailable {
            retry_after_secs,
            message,
        }) => {
            assert!((24..=26).contains(&retry_after_secs), "{retry_after_secs}");
            assert!(message.contains("expected wait"), "{message}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(a.check("req", in_seconds(60)).is_ok(), "time enough");
}

#[test]
fn only_the_backlog_ahead_counts_by_lane() {
    // Highest lane first: interactive is ahead of the plain topic.
    let a = admission(&["req.interactive", "req"]);
    let samples = [
        sample("req.interactive", 0, 0, 100),
        sample("req", 0, 0, 5000),
    ];
    a.update(&samples, &busy(5, 500), Instant::now());
    let first = a.expected_wait("req.interactive").unwrap();
    let last = a.expected_wait("req").unwrap();
    assert!((0.9..=1.1).contains(&first.as_secs_f64()), "{first:?}");
    assert!((50.0..=52.0).contains(&last.as_secs_f64()), "{last:?}");
    assert!(a.check("req.interactive", in_seconds(5)).is_ok());
    assert!(a.check("req", in_seconds(5)).is_err());
}

#[test]
fn a_stalled_group_refuses_every_deadline_and_an_idle_one_none() {
    let a = admission(&["req"]);
    a.update(&[sample("req", 0, 10, 500)], &busy(6, 0), Instant::now());
    assert_eq!(a.expected_wait("req"), Some(Duration::MAX));
    let e = a.check("req", in_seconds(3600)).unwrap_err().to_string();
    assert!(e.contains("have not drained"), "{e}");
    a.update(&[sample("req", 0, 500, 500)], &busy(6, 0), Instant::now());
    assert_eq!(
        a.expected_wait("req"),
        Some(Duration::ZERO),
        "no backlog, no wait"
    );
}

#[test]
fn the_snapshot_shows_backlog_rate_and_dead_letters() {
    let a = admission(&["req.hi", "req"]);
    let dead = PartitionSample {
        topic: "dlq".into(),
        partition: 0,
        committed: None,
        low: 2,
        high: 9,
    };
    a.update(
        &[sample("req.hi", 0, 0, 10), sample("req", 0, 5, 25), dead],
        &busy(4, 40),
        Instant::now(),
    );
    let snapshot = a.snapshot();
    assert_eq!(
        snapshot.backlog,
        [("req.hi".to_string(), 10), ("req".to_string(), 20)]
    );
    assert_eq!(snapshot.drain_rate, Some(10.0));
    assert_eq!(snapshot.dead_letters, Some(7));
    assert!(snapshot.age_ms.is_some());
}

#[test]
fn switched_off_it_admits_everything() {
    let mut a = admission(&["req"]);
    a.enabled = false;
    a.update(&[sample("req", 0, 0, 10_000)], &busy(6, 0), Instant::now());
    assert!(a.check("req", in_seconds(1)).is_ok());
}

#[test]
fn an_overflow_topics_backlog_is_shown_but_not_ahead_of_another_pools_requests() {
    let mut a = admission(&["req"]);
    a.overflow = vec!["req.pool.big".into()];
    let samples = [
        sample("req", 0, 900, 1000),
        sample("req.pool.big", 0, 0, 4000),
    ];
    a.update(&samples, &busy(1, 100), Instant::now());
    let snapshot = a.snapshot();
    assert_eq!(
        snapshot.backlog,
        [("req".to_string(), 100), ("req.pool.big".to_string(), 4000)]
    );
    let wait = a.expected_wait("req").unwrap();
    assert!(
        (0.9..=1.1).contains(&wait.as_secs_f64()),
        "the lane's 100 only: {wait:?}"
    );
    // 1,000 taken from the lane, 600 of them forwarded; 400 served from the overflow topic.
    let before = [sample("req", 0, 0, 1000), sample("req.pool.big", 0, 0, 0)];
    let after = [
        sample("req", 0, 1000, 1000),
        sample("req.pool.big", 0, 400, 600),
    ];
    assert_eq!(
        drained(&a.overflow, &before, &after),
        800,
        "served: 400 from the lane, 400 from the overflow topic; 600 forwarded"
    );
}
