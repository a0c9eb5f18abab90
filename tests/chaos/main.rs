//! Chaos tests: sluice as separate processes against a real broker while something
//! breaks, each asserting the delivery guarantees of docs/DESIGN ("Delivery guarantees")
//! with measured figures, which every test also prints (`--nocapture` shows them).
//!
//! - [`crash`]: workers `kill -9`ed and restarted under 5,000 requests.
//! - [`broker_outage`]: the broker (librdkafka's mock cluster) goes down and comes back.
//! - [`backend_outage`]: the LLM backend disappears for 30 s.
//! - [`poison`]: 10,000 malformed messages among 1,000 valid ones.
//! - [`outcomes`]: every terminal path of a request, exactly one outcome each.
//! - [`sigterm`]: a graceful stop with calls in flight.
//!
//! The long ones are `#[ignore]`d and run by `make test-chaos`. The tests of this binary
//! take turns ([`serial`]): they time things on a small shared machine.

#[path = "../support/mod.rs"]
mod support;

mod backend_outage;
mod broker_outage;
mod crash;
mod outcomes;
mod poison;
mod sigterm;

use tokio::sync::{Mutex, MutexGuard};

/// Held for the whole of each test, so the tests of this binary never overlap.
/// (A tokio mutex: it works across the tests' separate runtimes and is not poisoned by
/// a failed test.)
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}
