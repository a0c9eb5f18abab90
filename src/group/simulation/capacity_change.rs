//! `bench/capacity_change.py` in virtual time: two workers drain a backlog from a backend of
//! 32 slots that falls to 16 ten seconds in and is back at 32 ten seconds later. The
//! answers are cut into 1 s buckets from each change, as the benchmark cuts its samples.

use super::{run_recorded, trace_if_asked, Case, Dip, WARM_UP_SECS};
use crate::backend::concurrency::tests::sim_backend::Record;

const SLOTS: usize = 32;
const LOW: usize = 16;
const PHASE_SECS: f64 = 10.0;

/// What the benchmark reports of one run.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    /// From the drop to the end of the last bucket before the rise with more than 1% of
    /// calls refused (0: none).
    overload_stops_after: f64,
    /// From the rise to the end of the first bucket with 90% of the slots busy.
    back_after: f64,
}

/// (refused share, busy slots on average) of the 1 s bucket from `from` (seconds since the
/// backend's start).
fn bucket(record: &Record, from: f64) -> (f64, f64) {
    let until = from + 1.0;
    let refused = record
        .overloads
        .iter()
        .filter(|t| (from..until).contains(*t))
        .count();
    // A call is counted when its answer comes, as the mock counts it.
    let answered = record
        .successes
        .iter()
        .filter(|(done, _)| (from..until).contains(done))
        .count();
    let busy: f64 = record
        .successes
        .iter()
        .map(|(done, service)| (done.min(until) - (done - service).max(from)).max(0.0))
        .sum();
    let calls = refused + answered;
    let share = if calls == 0 {
        0.0
    } else {
        refused as f64 / calls as f64
    };
    (share, busy)
}

fn recovery(record: &Record, drop: f64) -> Recovery {
    let rise = drop + PHASE_SECS;
    let late = (0..PHASE_SECS as usize)
        .rev()
        .find(|k| bucket(record, drop + *k as f64).0 > 0.01);
    let back =
        (0..PHASE_SECS as usize).find(|k| bucket(record, rise + *k as f64).1 >= 0.9 * SLOTS as f64);
    Recovery {
        overload_stops_after: late.map_or(0.0, |k| k as f64 + 1.0),
        back_after: back.map_or(f64::INFINITY, |k| k as f64 + 1.0),
    }
}

/// The benchmark's targets are that overload answers stop within 2 s of the drop and 90%
/// of the slots are busy again within 3 s of the rise. Bands of what this simulation
/// shows today: each of 10 runs is back within 3 s, and the overload stops within 2 s in
/// at least 8 of them. Over 80 seeds 79 and 79 meet the targets (at 80 ms one way
/// through the control topic 78 and 80, at 150 ms 53 and 67); before the group's probes
/// were reworked for this, 30 and 64. `SLUICE_SIM_SEEDS` runs more seeds,
/// `SLUICE_SIM_PROPAGATION_MS` slows the control topic.
#[tokio::test(start_paused = true)]
async fn a_group_follows_the_backend_down_and_back_up() {
    trace_if_asked();
    let seeds: u64 = std::env::var("SLUICE_SIM_SEEDS").map_or(10, |s| s.parse().expect("seeds"));
    // One way through the control topic; on tansu, tens of milliseconds.
    let propagation_ms = std::env::var("SLUICE_SIM_PROPAGATION_MS")
        .map_or(30, |ms| ms.parse().expect("milliseconds"));
    let mut missed = Vec::new();
    let mut overload_late = 0;
    for seed in 1..=seeds {
        let case = Case {
            workers: 2,
            slots: SLOTS,
            requests: 9000,
            propagation_ms,
            network_ms: 1.0,
            seed,
            first_of_four: 0,
            grouped: true,
            dip: Some(Dip {
                low: LOW,
                after_secs: PHASE_SECS,
            }),
        };
        let (outcome, record, burst) = run_recorded(case).await;
        // The drain begins with the first call, about a fetch after the burst.
        let drain = record
            .successes
            .iter()
            .map(|(done, service)| done - service)
            .chain(record.overloads.iter().copied())
            .filter(|t| *t >= burst)
            .fold(f64::INFINITY, f64::min);
        let drop = WARM_UP_SECS + PHASE_SECS;
        let got = recovery(&record, drop);
        let lows: Vec<String> = (0..PHASE_SECS as usize)
            .map(|k| {
                let (share, busy) = bucket(&record, drop + k as f64);
                format!("{k}s:{:.1}%/{busy:.1}", 100.0 * share)
            })
            .collect();
        let highs: Vec<String> = (0..PHASE_SECS as usize)
            .map(|k| {
                let (share, busy) = bucket(&record, drop + PHASE_SECS + k as f64);
                format!("{k}s:{:.1}%/{busy:.1}", 100.0 * share)
            })
            .collect();
        println!(
            "capacity 2 workers, seed {seed}: overload stops {:.0} s after the drop, back at 90% \
             {:.0} s after the rise (drain began {:.2} s after the burst; {outcome:?})\n  low: {}\n  high: {}",
            got.overload_stops_after,
            got.back_after,
            drain - burst,
            lows.join("  "),
            highs.join("  ")
        );
        if got.back_after > 3.0 || outcome.failed > 0 {
            missed.push(format!("seed {seed}: {got:?}, failed {}", outcome.failed));
        }
        overload_late += usize::from(got.overload_stops_after > 2.0);
    }
    assert!(missed.is_empty(), "{missed:#?}");
    assert!(
        overload_late * 5 <= seeds as usize,
        "the overload went on past 2 s after the drop in {overload_late} of {seeds} runs"
    );
}
