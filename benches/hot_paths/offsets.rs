//! The offset tracker: a worker's batch of a few hundred messages from two partitions,
//! taken in order and finished out of order, each completion asking for the committable
//! position.

use std::hint::black_box;

use gungraun::{library_benchmark, library_benchmark_group};
use sluice::kafka::offsets::OffsetTracker;

/// Messages taken from each partition.
const PER_PARTITION: i64 = 256;
const PARTITIONS: i32 = 2;

/// The order in which the messages finish: a fixed shuffle (a linear congruential
/// generator), so every run does the same work.
fn completion_order() -> Vec<usize> {
    let count = (PER_PARTITION * i64::from(PARTITIONS)) as usize;
    let mut order: Vec<usize> = (0..count).collect();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..count).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order
}

// Takes every message (partitions interleaved, as a consumer delivers them), then
// completes them in `order`; returns the positions that became committable.
#[library_benchmark]
#[bench::out_of_order_512(completion_order())]
fn begin_and_complete(order: Vec<usize>) -> usize {
    let mut tracker = OffsetTracker::new();
    let mut tickets = Vec::with_capacity(order.len());
    for offset in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            tickets.push(tracker.begin(black_box("sluice.requests"), partition, 1_000 + offset));
        }
    }
    let mut commits = 0;
    for &i in black_box(&order) {
        if tracker.complete(&tickets[i]).is_some() {
            commits += 1;
        }
    }
    black_box(commits)
}

library_benchmark_group!(name = offsets_group, benchmarks = [begin_and_complete]);
