//! The worker's backends, by name, each with its own call path (retry, rate, adaptive
//! concurrency, breaker), its own saturation poller and its own group pacing: a backend
//! is paced on its own, whatever else the worker calls. [`Backends::ready`] finds the one
//! to call for a pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{select_all, FutureExt};
use tower::ServiceExt;

use super::housekeeping::StackHandles;
use super::metrics::WorkerMetrics;
use crate::backend::breaker::BreakerState;
use crate::backend::concurrency::Controller;
use crate::backend::stack::{build_stack, BackendStack};
use crate::backend::BackendError;
use crate::config::Config;

/// One backend of the worker.
pub struct Backend {
    /// Its configured name: the `backend` label of metrics, spans and replies, and its
    /// key on the control topic.
    pub name: String,
    /// Its call path, cloned for each call (under a lock only to be shared between the
    /// dispatchers: a clone is all that is taken).
    service: Mutex<BackendStack>,
    /// What is observed and steered of it.
    pub handles: StackHandles,
    /// Messages sent to it and not finished: calling, or waiting to retry. Its demand for
    /// group pacing, with its part of what is buffered.
    busy: AtomicUsize,
}

impl Backend {
    /// See [`Backend::busy`].
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// One more message is sent to it; `finish` it when its output is decided.
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    fn service(&self) -> BackendStack {
        self.service
            .lock()
            .expect("never poisoned: a clone does not panic")
            .clone()
    }
}

/// Every backend, in configuration order (the order routes index them by).
pub struct Backends(Vec<Backend>);

impl Backends {
    /// One stack per backend of `config`, every attempt counted by `metrics`.
    pub fn build(config: &Config, metrics: &WorkerMetrics) -> Result<Self, BackendError> {
        config
            .named_backends()
            .into_iter()
            .map(|(name, backend)| {
                let stack = build_stack(backend, super::count_attempts(metrics.clone(), name))?;
                Ok(Backend {
                    name: name.to_string(),
                    handles: StackHandles::of(&stack),
                    service: Mutex::new(stack.service),
                    busy: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Backends)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.0.iter()
    }

    pub fn get(&self, index: usize) -> &Backend {
        &self.0[index]
    }

    /// A ready call path of one backend of `pool`, and which: of those ready at once, the
    /// one with the fewest calls in flight for its limit (so a backend twice as large gets
    /// twice the work); else the first to become ready. The others keep nothing reserved.
    pub async fn ready(&self, pool: &[usize]) -> Result<(usize, BackendStack), BackendError> {
        if let [only] = pool {
            let mut service = self.0[*only].service();
            service.ready().await?;
            return Ok((*only, service));
        }
        let mut ready_now = Vec::new();
        for &index in pool {
            let mut service = self.0[index].service();
            if let Some(ready) = service.ready().now_or_never() {
                ready?;
                ready_now.push((index, service));
            }
        }
        if let Some(best) = ready_now
            .into_iter()
            .min_by(|(a, _), (b, _)| self.load(*a).total_cmp(&self.load(*b)))
        {
            return Ok(best);
        }
        let waiting = pool.iter().map(|&index| {
            let service = self.0[index].service();
            async move { service.ready_oneshot().await.map(|ready| (index, ready)) }.boxed()
        });
        select_all(waiting).await.0
    }

    /// Whether every backend of `pool` has its circuit breaker open.
    pub fn all_open(&self, pool: &[usize]) -> bool {
        pool.iter()
            .all(|&index| self.0[index].handles.breaker.state() == BreakerState::Open)
    }

    /// Completes once every backend of `pool` has its circuit breaker open.
    pub async fn until_all_open(&self, pool: &[usize]) {
        let mut states: Vec<_> = pool
            .iter()
            .map(|&index| self.0[index].handles.breaker.subscribe())
            .collect();
        loop {
            if states.iter().all(|s| *s.borrow() == BreakerState::Open) {
                return;
            }
            let changes = states.iter_mut().map(|s| Box::pin(s.changed()));
            if select_all(changes).await.0.is_err() {
                // A breaker is gone (the worker is stopping): it never opens again.
                return std::future::pending().await;
            }
        }
    }

    /// Calls in flight for the limit.
    fn load(&self, index: usize) -> f64 {
        let controller: &Arc<Controller> = &self.0[index].handles.concurrency;
        controller.in_flight() as f64 / controller.permits().max(1) as f64
    }
}
