//! The capacity model in virtual time: every latency below is exact because the clock only
//! moves when every task is idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::*;

const LATENCY: Duration = Duration::from_millis(100);
const PER_TOKEN: Duration = Duration::from_millis(2);

fn model(slots: usize, overflow: Overflow) -> Arc<CapacityModel> {
    Arc::new(CapacityModel::new(CapacitySettings {
        slots,
        latency: LATENCY,
        per_token: PER_TOKEN,
        overflow,
        retry_after: Duration::from_millis(250),
    }))
}

/// Starts `n` calls of `tokens` tokens at the same instant; returns each outcome.
async fn burst(
    model: &Arc<CapacityModel>,
    n: usize,
    tokens: u64,
) -> Vec<Result<Served, Overloaded>> {
    join_all((0..n).map(|_| {
        let model = Arc::clone(model);
        tokio::spawn(async move { model.serve(tokens).await })
    }))
    .await
    .into_iter()
    .map(|joined| joined.expect("serve does not panic"))
    .collect()
}

#[test]
fn service_time_is_latency_plus_per_token_times_tokens() {
    let m = model(1, Overflow::Queue);
    assert_eq!(m.service_time(0), Duration::from_millis(100));
    assert_eq!(m.service_time(1), Duration::from_millis(102));
    assert_eq!(m.service_time(50), Duration::from_millis(200));
    assert_eq!(
        m.service_time(u64::MAX),
        LATENCY + Duration::from_nanos(u64::MAX),
        "the per-token part saturates rather than overflows"
    );
}

#[test]
#[should_panic(expected = "between 1 and")]
fn zero_slots_is_refused() {
    model(0, Overflow::Queue);
}

#[tokio::test(start_paused = true)]
async fn n_concurrent_requests_complete_in_one_service_time() {
    let m = model(4, Overflow::Queue);
    let start = Instant::now();
    let served = burst(&m, 4, 10).await;
    assert_eq!(start.elapsed(), Duration::from_millis(120));
    for s in served {
        let s = s.expect("queue mode never rejects");
        assert_eq!(s.queued, Duration::ZERO);
        assert_eq!(s.service, Duration::from_millis(120));
    }
}

#[tokio::test(start_paused = true)]
async fn in_queue_mode_the_extra_request_waits_one_service_time() {
    let m = model(2, Overflow::Queue);
    let start = Instant::now();
    let served = burst(&m, 3, 10).await;
    assert_eq!(start.elapsed(), Duration::from_millis(240));
    let mut queued: Vec<_> = served
        .iter()
        .map(|s| s.expect("queue mode never rejects").queued)
        .collect();
    queued.sort();
    assert_eq!(
        queued,
        [Duration::ZERO, Duration::ZERO, Duration::from_millis(120)]
    );
    assert_eq!(m.stats().rejections, 0);
}

#[tokio::test(start_paused = true)]
async fn in_reject_mode_the_extra_request_is_refused_with_the_retry_after() {
    let m = model(2, Overflow::Reject);
    let a = m.admit().await.expect("slot 1 of 2 is free");
    let _b = m.admit().await.expect("slot 2 of 2 is free");
    let refused = m.admit().await.expect_err("both slots are held");
    assert_eq!(
        refused,
        Overloaded {
            slots: 2,
            retry_after: Duration::from_millis(250)
        }
    );
    assert_eq!(m.stats().rejections, 1);
    drop(a);
    m.admit().await.expect("a slot was freed");
}

#[tokio::test(start_paused = true)]
async fn in_reject_mode_a_burst_serves_exactly_the_slots() {
    let m = model(3, Overflow::Reject);
    let outcomes = burst(&m, 10, 5).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 3);
    let stats = m.stats();
    assert_eq!(stats.rejections, 7);
    assert_eq!(stats.served, 3);
    assert_eq!(stats.peak_in_flight, 3);
}

#[tokio::test(start_paused = true)]
async fn peak_in_flight_never_exceeds_the_slots() {
    let m = model(3, Overflow::Queue);
    let watcher = {
        let m = Arc::clone(&m);
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                most = most.max(m.stats().in_flight);
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            most
        })
    };
    let tokens = (0..20u64).map(|i| i * 13 % 40);
    let calls = tokens.map(|t| {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.serve(t).await })
    });
    join_all(calls).await;
    assert_eq!(watcher.await.expect("the watcher does not panic"), 3);
    assert_eq!(m.stats().peak_in_flight, 3);
    assert_eq!(m.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_first_in_first_out() {
    let m = model(1, Overflow::Queue);
    let held = m.admit().await.expect("the only slot is free");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for name in ["a", "b", "c"] {
        let (m, order) = (Arc::clone(&m), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let _slot = m.admit().await.expect("queue mode never rejects");
            order.lock().expect("no holder panics").push(name);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }));
        // Let this waiter join the queue before the next one is spawned.
        tokio::task::yield_now().await;
    }
    assert_eq!(m.stats().queued, 3);
    drop(held);
    join_all(waiters).await;
    assert_eq!(*order.lock().expect("no holder panics"), ["a", "b", "c"]);
    assert_eq!(m.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_while_queued_leaves_the_queue() {
    let m = model(1, Overflow::Queue);
    let held = m.admit().await.expect("the only slot is free");
    let waiter = {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.admit().await.map(drop) })
    };
    tokio::task::yield_now().await;
    assert_eq!(m.stats().queued, 1);
    waiter.abort();
    assert!(waiter.await.expect_err("it was aborted").is_cancelled());
    assert_eq!(m.stats().queued, 0);
    drop(held);
    assert_eq!(m.stats().served, 1, "only the held slot was ever served");
}

#[tokio::test(start_paused = true)]
async fn stats_count_served_requests_and_busy_slot_time() {
    let m = model(2, Overflow::Queue);
    let start = Instant::now();
    // Four 120 ms calls on two slots: two rounds, both slots busy the whole time.
    burst(&m, 4, 10).await;
    let wall = start.elapsed();
    let stats = m.stats();
    assert_eq!(wall, Duration::from_millis(240));
    assert_eq!(stats.served, 4);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.peak_in_flight, 2);
    assert_eq!(stats.busy, Duration::from_millis(480));
    let utilisation =
        |busy: Duration, wall: Duration| busy.as_secs_f64() / (2.0 * wall.as_secs_f64());
    assert!((utilisation(stats.busy, wall) - 1.0).abs() < 1e-9);
    // Idle for as long again: half the slot-time was used.
    tokio::time::sleep(wall).await;
    assert!((utilisation(m.stats().busy, start.elapsed()) - 0.5).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn a_slot_guard_counts_the_time_it_was_held() {
    let m = model(1, Overflow::Queue);
    let slot = m.admit().await.expect("the only slot is free");
    tokio::time::sleep(Duration::from_millis(37)).await;
    assert_eq!(m.stats().in_flight, 1);
    drop(slot);
    let stats = m.stats();
    assert_eq!(
        (stats.served, stats.in_flight, stats.busy),
        (1, 0, Duration::from_millis(37))
    );
}

#[tokio::test(start_paused = true)]
async fn slots_change_at_run_time_without_cutting_requests_short() {
    let model = CapacityModel::new(CapacitySettings {
        slots: 4,
        latency: Duration::from_millis(100),
        per_token: Duration::ZERO,
        overflow: Overflow::Reject,
        retry_after: Duration::from_millis(100),
    });
    let held: Vec<SlotGuard> = futures_all(&model, 4).await;
    model.set_slots(2);
    assert_eq!(model.stats().slots, 2);
    assert!(model.admit().await.is_err(), "4 held, 2 slots");
    drop(held);
    let two = futures_all(&model, 2).await;
    assert!(
        model.admit().await.is_err(),
        "the shrink took effect as slots came back"
    );
    model.set_slots(5);
    let three = futures_all(&model, 3).await;
    assert!(model.admit().await.is_err(), "5 slots, 5 held");
    assert_eq!(model.stats().in_flight, 5);
    drop((two, three));
    // A shrink, then a growth before the held slots came back: they cancel out.
    let held = futures_all(&model, 5).await;
    model.set_slots(1);
    model.set_slots(5);
    drop(held);
    assert_eq!(futures_all(&model, 5).await.len(), 5);
}

async fn futures_all(model: &CapacityModel, n: usize) -> Vec<SlotGuard> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(model.admit().await.expect("a free slot"));
    }
    held
}
