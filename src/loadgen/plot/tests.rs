//! The plot's lines from samples, and the drawn document.

use super::*;
use crate::loadgen::scrape::BackendSample;

/// A run sampled every 250 ms for 4 s: 100 requests/s sent and taken; the backend (8
/// slots, 0.1 s a call) answers 80/s with 8 in flight.
fn run() -> Vec<Point> {
    (0..=16)
        .map(|i| {
            let t = i as f64 * 0.25;
            let ok = 80.0 * t;
            Point {
                t,
                sent: (100.0 * t) as u64,
                accepted: (100.0 * t) as u64,
                finished: ok as u64,
                backend: Some(BackendSample {
                    slots: 8.0,
                    busy_seconds: 0.1 * ok,
                    calls: ok + 5.0 * t,
                    ok_calls: ok,
                    in_flight: 8.0,
                    ..Default::default()
                }),
            }
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn a_steady_counter_has_a_steady_rate() {
    let line = rate((0..=8).map(|i| (i as f64 * 0.25, 40.0 * i as f64 * 0.25)));
    assert_eq!(line.len(), 8);
    assert!(line.iter().all(|(_, r)| close(*r, 40.0)), "{line:?}");
    // Averaged over a second once a second has passed: a spike in one sample is spread.
    let spiky = rate(
        [
            (0.0, 0.0),
            (0.25, 0.0),
            (0.5, 10.0),
            (0.75, 10.0),
            (1.0, 10.0),
            (1.25, 10.0),
        ]
        .into_iter(),
    );
    assert!(close(spiky.last().unwrap().1, 10.0), "{spiky:?}");
}

#[test]
fn lines_come_from_the_ledger_and_the_backend() {
    let series = Series::from_points(&run(), true);
    assert!(
        series.arrivals.iter().all(|(_, r)| (r - 100.0).abs() < 5.0),
        "{:?}",
        series.arrivals
    );
    assert!(
        series.calls.iter().all(|(_, r)| (r - 85.0).abs() < 5.0),
        "{:?}",
        series.calls
    );
    // 8 slots at 0.1 s a call: 80/s.
    assert!(
        series.capacity.iter().all(|(_, c)| close(*c, 80.0)),
        "{:?}",
        series.capacity
    );
    // At 4 s: 400 taken, 320 answered, 8 at the backend: 72 wait in Kafka.
    let (t, backlog) = *series.backlog.last().unwrap();
    assert_eq!((t, backlog), (4.0, 72.0));
    assert_eq!(series.in_flight.len(), 17);
    assert!(series.slots.iter().all(|(_, s)| *s == 8.0));
}

#[test]
fn direct_runs_have_no_backlog_and_missing_scrapes_leave_gaps() {
    let mut points = run();
    points[3].backend = None;
    let series = Series::from_points(&points, false);
    assert!(series.backlog.is_empty());
    assert_eq!(series.in_flight.len(), 16);
    assert_eq!(series.arrivals.len(), 16);
}

#[test]
fn the_picture_has_every_line_and_its_legend() {
    let svg = render(&Series::from_points(&run(), true), "a test run").unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    for text in [
        "a test run",
        "requests arriving /s",
        "backend calls /s",
        "backend capacity /s",
        "backlog in Kafka",
        "backend in flight",
        "backend slots",
    ] {
        assert!(svg.contains(text), "no {text:?} in the picture");
    }
    // Six lines (arrivals, calls, capacity, backlog, in flight, slots), each with its
    // legend mark; the grid is drawn thinner.
    assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 12);
}
