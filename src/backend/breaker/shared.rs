//! The state every service of one breaker shares with the worker's handle: the policy
//! behind a std Mutex (never held across an `.await`), the watch channel, the counters,
//! and the task that ends an open period with the breaker's own probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::state::Policy;
use super::{BreakerSettings, BreakerState};

/// Asks the backend whether it is up, without spending anyone's request on it (for the
/// HTTP backend, `GET /v1/models`): `Ok` when it answered as a live server does, else
/// why not.
pub(crate) type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// After a probe that could not say (it panicked or its task was cancelled), the next one.
const PROBE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) struct Shared {
    policy: Mutex<Policy>,
    /// Woken on every transition.
    pub changed: Arc<Notify>,
    /// The state as last published; sent under the policy lock, so in order.
    state: watch::Sender<BreakerState>,
    /// Transitions to open so far.
    opens: AtomicU64,
    /// Sent when an open period ends; its answer alone closes or reopens the breaker.
    probe: Probe,
}

impl Shared {
    pub(super) fn new(settings: &BreakerSettings, probe: Probe) -> Self {
        Self {
            policy: Mutex::new(Policy::new(settings)),
            changed: Arc::default(),
            state: watch::Sender::new(BreakerState::Closed),
            opens: AtomicU64::new(0),
            probe,
        }
    }

    pub(super) fn state(&self) -> BreakerState {
        *self.state.borrow()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }

    pub(super) fn opens_total(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

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
            self.state.send_replace(after);
            tracing::info!(state = after.label(), "circuit breaker");
            if after == BreakerState::Open {
                self.opens.fetch_add(1, Ordering::Relaxed);
                opened_until = policy.open_until();
            }
            self.changed.notify_waiters();
        }
        drop(policy);
        if let Some(until) = opened_until {
            self.end_open_period_at(until);
        }
        out
    }

    /// At `until`, turns the breaker half-open and sends the probe; its answer closes the
    /// breaker or opens it again (and then this runs again for the next period). Runs on
    /// its own, so the watch channel reports every transition even when nothing calls.
    fn end_open_period_at(self: &Arc<Self>, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("circuit breaker opened outside a tokio runtime; it cannot probe");
            return;
        };
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            loop {
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                strong.with(|policy| policy.advance(Instant::now()));
                let probe = (strong.probe)();
                drop(strong);
                // Its own task: a probe that panics says nothing, it does not stop probing.
                let answer = tokio::spawn(probe).await;
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                match answer {
                    Ok(answer) => {
                        if let Err(reason) = &answer {
                            tracing::info!(%reason, "circuit breaker probe: backend still down");
                        }
                        strong.with(|policy| policy.probed(Instant::now(), answer.is_ok()));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "circuit breaker probe did not finish; probing again");
                        tokio::time::sleep(PROBE_RETRY).await;
                    }
                }
            }
        });
    }
}
