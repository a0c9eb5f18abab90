//! The lane scheduler's pick: a worker holding 600 messages in three lanes, from six
//! tenants of unequal weight, a quarter of them with ordering keys, dispatching with 16
//! calls in flight (each finished call lets the next one with its key start).

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::Arc;

use gungraun::{library_benchmark, library_benchmark_group};
use sluice::worker::scheduler::{Entry, Scheduler};

const MESSAGES: u32 = 600;
const IN_FLIGHT: usize = 16;
const TENANTS: [&str; 6] = ["bookshop", "travel", "bank", "search", "games", "news"];

fn filled() -> Scheduler<u32> {
    let weights: HashMap<String, u32> = [("bookshop".to_string(), 3), ("bank".to_string(), 2)]
        .into_iter()
        .collect();
    let mut scheduler = Scheduler::with_weights(3, 0.1, Arc::new(weights));
    let tenants: Vec<Arc<str>> = TENANTS.iter().map(|&t| Arc::from(t)).collect();
    for i in 0..MESSAGES {
        scheduler.push(Entry {
            // Mostly batch work, some interactive, a little of the middle lane.
            lane: match i % 10 {
                0..=1 => 0,
                2 => 1,
                _ => 2,
            },
            ordering_key: (i % 4 == 0).then(|| format!("conversation-{}", i % 20)),
            tenant: Some(Arc::clone(&tenants[(i as usize * 7) % tenants.len()])),
            item: i,
        });
    }
    scheduler
}

// Pops until everything ran; returns the sum of the items, in pick order weighted so a
// different order gives a different result.
#[library_benchmark]
#[bench::lanes_3_tenants_6_keyed(filled())]
fn pick(mut scheduler: Scheduler<u32>) -> u64 {
    let mut running: VecDeque<Option<String>> = VecDeque::with_capacity(IN_FLIGHT);
    let mut checksum = 0u64;
    let mut rank = 0u64;
    loop {
        match scheduler.pop() {
            Some(entry) => {
                rank += 1;
                checksum = checksum.wrapping_add(rank * u64::from(entry.item));
                running.push_back(entry.ordering_key);
                if running.len() == IN_FLIGHT {
                    let done = running.pop_front().expect("IN_FLIGHT > 0");
                    scheduler.finished(done.as_deref());
                }
            }
            None => match running.pop_front() {
                Some(done) => scheduler.finished(done.as_deref()),
                None => break,
            },
        }
    }
    black_box(checksum)
}

library_benchmark_group!(name = scheduler_group, benchmarks = [pick]);
