//! One dispatcher per pool of backends: it waits for an in-flight slot, the pool's next
//! buffered message, and a ready backend of the pool, then starts the message. A pool
//! whose backends are full or down only holds back its own messages. The empty pool
//! (messages that do not decode, or name a model nothing serves) needs no backend.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backends::Backends;
use super::intake::{Intake, PoolKey};
use super::outbox::Outbox;
use super::process::{self, Call, Shared};

/// What every dispatcher shares.
pub struct Dispatch {
    pub shared: Arc<Shared>,
    pub outbox: Arc<Outbox>,
    pub intake: Arc<Intake>,
    pub backends: Arc<Backends>,
    /// `worker.max_in_flight` slots, over every pool.
    pub slots: Arc<Semaphore>,
    /// Where the started messages run, drained at shutdown.
    pub tasks: TaskTracker,
}

impl Dispatch {
    /// Starts the messages of `pool` until `stop`.
    pub async fn run(self: Arc<Self>, pool: PoolKey, stop: CancellationToken) {
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                permit = self.slots.clone().acquire_owned() => {
                    permit.expect("the in-flight semaphore is never closed")
                }
            };
            let entry = tokio::select! {
                _ = stop.cancelled() => return,
                entry = self.intake.next(&pool) => entry,
            };
            let (call, index) = if pool.is_empty() {
                (None, None)
            } else {
                let ready = tokio::select! {
                    _ = stop.cancelled() => return,
                    ready = self.backends.ready(&pool) => ready,
                };
                match ready {
                    Ok((index, service)) => {
                        let backend = self.backends.get(index);
                        backend.begin();
                        let call = Call {
                            backend: backend.name.clone(),
                            service,
                        };
                        (Some(call), Some(index))
                    }
                    Err(e) => {
                        // No layer fails readiness today; if one does, the message is
                        // re-delivered.
                        tracing::error!(error = %e, "backend stack failed; stopping");
                        stop.cancel();
                        return;
                    }
                }
            };
            let key = entry.ordering_key;
            let (shared, outbox, intake, backends) = (
                self.shared.clone(),
                self.outbox.clone(),
                self.intake.clone(),
                self.backends.clone(),
            );
            let pool = pool.clone();
            shared.metrics.in_flight.inc();
            self.tasks.spawn(async move {
                process::handle(&shared, &outbox, entry.item, call).await;
                if let Some(index) = index {
                    backends.get(index).finish();
                }
                shared.metrics.in_flight.dec();
                drop(permit);
                intake.finished(&pool, key.as_deref());
            });
        }
    }
}
