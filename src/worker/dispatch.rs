//! One dispatcher per pool of backends: it waits for an in-flight slot, the pool's next
//! buffered message, and a ready backend of the pool, then starts the message. A pool
//! whose backends are full or down only holds back its own messages. The empty pool
//! (messages that do not decode, or name a model nothing serves) needs no backend. When
//! every backend of the pool has its breaker open, a message whose model falls back on
//! `breaker_open` is started on the first model of its chain with a backend that is not
//! ([`super::fallback`]).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backends::Backends;
use super::fallback;
use super::intake::{Intake, PoolKey, Taken};
use super::outbox::Outbox;
use super::process::{self, Call, Shared};
use crate::backend::stack::BackendStack;
use crate::backend::BackendError;
use crate::config::FallbackTrigger;

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
            let mut entry = tokio::select! {
                _ = stop.cancelled() => return,
                entry = self.intake.next(&pool) => entry,
            };
            let (call, index) = if pool.is_empty() {
                (None, None)
            } else {
                let Some(ready) = self.ready_for(&pool, &mut entry.item, &stop).await else {
                    return;
                };
                match ready {
                    Ok((index, service)) => {
                        let backend = self.backends.get(index);
                        backend.begin();
                        let call = Call {
                            backend: backend.name.clone(),
                            service,
                            breaker: backend.handles.breaker.clone(),
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
                intake.ended(&pool);
                intake.finished(&pool, key.as_deref());
            });
        }
    }

    /// A ready backend for `taken`, of `pool`, or of its `breaker_open` chain when every
    /// backend of `pool` has its breaker open, before or while it waits; `None` on `stop`.
    async fn ready_for(
        &self,
        pool: &[usize],
        taken: &mut Taken,
        stop: &CancellationToken,
    ) -> Option<Result<(usize, BackendStack), BackendError>> {
        let called = self.around_open_breakers(pool, taken);
        let leaves_when_open = called == pool && self.can_leave(taken);
        let ready = tokio::select! {
            _ = stop.cancelled() => return None,
            ready = self.backends.ready(&called) => Some(ready),
            _ = self.backends.until_all_open(pool), if leaves_when_open => None,
        };
        if ready.is_some() {
            return ready;
        }
        // The breakers opened while it waited: its chain, then.
        let called = self.around_open_breakers(pool, taken);
        tokio::select! {
            _ = stop.cancelled() => None,
            ready = self.backends.ready(&called) => Some(ready),
        }
    }

    /// Whether `taken` falls back on `breaker_open`.
    fn can_leave(&self, taken: &Taken) -> bool {
        let allowed = taken.request.as_ref().is_ok_and(fallback::allowed);
        taken.route.as_ref().is_some_and(|route| {
            allowed
                && !self
                    .shared
                    .routes
                    .fallbacks(route, FallbackTrigger::BreakerOpen)
                    .is_empty()
        })
    }

    /// The pool to call for `taken`: its own, or, when every backend of it has its
    /// breaker open, the first model of its `breaker_open` chain with a backend whose
    /// breaker is not (the message's route becomes that model's).
    fn around_open_breakers(&self, pool: &[usize], taken: &mut Taken) -> PoolKey {
        let route = match &taken.route {
            Some(route) if self.can_leave(taken) && self.backends.all_open(pool) => route,
            _ => return pool.to_vec(),
        };
        let next = self
            .shared
            .routes
            .fallbacks(route, FallbackTrigger::BreakerOpen)
            .into_iter()
            .find(|next| !self.backends.all_open(&next.pool));
        match next {
            Some(next) => {
                let called = next.pool.clone();
                taken.route = Some(next);
                called
            }
            None => pool.to_vec(),
        }
    }
}
