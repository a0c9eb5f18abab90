//! Hot-path benchmarks in instruction counts (gungraun, on Valgrind's Callgrind): the
//! envelope's decode and encode, the offset tracker, the lane scheduler's pick, the
//! adaptive controller's update and the ingress body parse. `make bench-check` compares
//! them with `bench/baseline/hot-paths.json` (scripts/bench_check.py).
//!
//! Each benchmark does one realistic piece of work once; its inputs are built in setup
//! (the `#[bench]` arguments), which Callgrind does not count.

mod controller;
mod envelope;
mod fixtures;
mod ingress;
mod offsets;
mod scheduler;

use controller::controller_group;
use envelope::envelope_group;
use gungraun::main;
use ingress::ingress_group;
use offsets::offsets_group;
use scheduler::scheduler_group;

main!(
    library_benchmark_groups = envelope_group,
    offsets_group,
    scheduler_group,
    controller_group,
    ingress_group
);
