//! The CircuitBreaker layer and the state every service it wraps shares with the
//! worker's [`BreakerHandle`]: the policy behind a std Mutex (never held across an
//! `.await`), the watch channel, the counters, and the timer that ends an open period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::Layer;

use super::service::CircuitBreaker;
use super::state::Policy;
use super::{BreakerSettings, BreakerState};

/// Applies [`BreakerSettings`]. Every service made by one layer (and their clones)
/// shares one breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    pub fn new(settings: &BreakerSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy: Mutex::new(Policy::new(settings)),
                changed: Arc::default(),
                state: watch::Sender::new(BreakerState::Closed),
                opens: AtomicU64::new(0),
            }),
        }
    }

    /// What the worker observes.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.shared.clone())
    }
}

/// The worker's view of the breaker: current state, a channel of transitions, counters.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The state now (an open period that has just ended reads as half-open).
    pub fn state(&self) -> BreakerState {
        self.shared.with(|policy| policy.advance(Instant::now()));
        *self.shared.state.borrow()
    }

    /// Every transition, latest value first. Pause Kafka partitions on `Open`, resume
    /// on anything else.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.shared.state.subscribe()
    }

    /// Times it opened, re-openings after a failed probe included (a counter).
    pub fn opens_total(&self) -> u64 {
        self.shared.opens.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    policy: Mutex<Policy>,
    /// Woken on every transition and when the probe is given back.
    pub changed: Arc<Notify>,
    /// The state as last published; sent under the policy lock, so in order.
    state: watch::Sender<BreakerState>,
    /// Transitions to open so far.
    opens: AtomicU64,
}

impl Shared {
    /// Runs `f` on the policy, then publishes whatever it changed: the watch channel,
    /// the counter, a wake-up for waiters, and a timer for a new open period. The
    /// policy is plain data that every method leaves consistent, so a poisoned lock is
    /// still safe to use.
    pub fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut Policy) -> T) -> T {
        let mut policy = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let before = policy.snapshot();
        let out = f(&mut policy);
        let after = policy.snapshot();
        let mut opened_until = None;
        if after != before {
            if after.0 != before.0 {
                self.state.send_replace(after.0);
                tracing::info!(state = after.0.label(), "circuit breaker");
                if after.0 == BreakerState::Open {
                    self.opens.fetch_add(1, Ordering::Relaxed);
                    opened_until = policy.open_until();
                }
            }
            self.changed.notify_waiters();
        }
        drop(policy);
        if let Some(until) = opened_until {
            self.end_open_period_at(until);
        }
        out
    }

    /// Turns the breaker half-open at `until` even if no service is polled by then, so
    /// the watch channel tells the worker to resume and send a probe.
    fn end_open_period_at(self: &Arc<Self>, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a synchronous caller): `state()` and `poll_ready` still turn
            // it half-open when they look.
            return;
        };
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(shared) = shared.upgrade() {
                shared.with(|policy| policy.advance(Instant::now()));
            }
        });
    }
}
