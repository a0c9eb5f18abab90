//! The controller: the shared handle to the limit, the permits that enforce it and the
//! policy that moves it ([`State`], behind one std mutex never held across an `.await`).
//! The service and its future only take and return permits and report each call's
//! classified outcome here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::evidence::Gauges;
use super::peers::Peers;
use super::policy::Estimate;
use super::state::State;
use super::stats::ControllerStats;
use super::ticket::CallTicket;
use super::ConcurrencySettings;
use crate::backend::classify::{classify, Outcome};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// Shared by every clone of one [`AdaptiveConcurrency`](super::AdaptiveConcurrency)
/// service; read it for metrics.
#[derive(Debug)]
pub struct Controller {
    /// The permits' semaphore (also inside `state`): waited on without the lock.
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    /// Woken when this controller changes its estimate, so peers hear of it at once.
    changed: Notify,
    /// Permits of refused calls not given back yet ([`Controller::give_back_after`]).
    held_back: AtomicUsize,
    /// A task hands out a paced increase on time ([`Controller::keep_pacing`]).
    pacing_timer: AtomicBool,
}

impl Controller {
    /// A controller at `settings.initial`. Out-of-range settings are clamped (they are
    /// rejected at start-up by [`ConcurrencySettings::validate`]).
    pub fn new(settings: ConcurrencySettings) -> Self {
        let state = State::new(settings, Instant::now());
        Self {
            semaphore: state.permits.semaphore(),
            state: Mutex::new(state),
            changed: Notify::new(),
            held_back: AtomicUsize::new(0),
            pacing_timer: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> usize {
        self.lock().policy.limit()
    }

    /// This worker's permits (the limit alone, its share of it with peers).
    pub fn permits(&self) -> usize {
        self.lock().permits.count()
    }

    /// The estimate to share with peers.
    pub fn estimate(&self) -> Estimate {
        self.lock().estimate()
    }

    /// Takes a peer's estimate if it is newer; see [`Estimate`].
    pub(crate) fn adopt(&self, remote: Estimate) -> bool {
        self.lock().adopt(remote, Instant::now())
    }

    /// Takes the peers' estimate whatever its version: on joining them again after pacing
    /// alone (this worker's own estimate then describes only itself).
    pub(crate) fn rejoin(&self, estimate: Estimate) {
        self.lock().rejoin(estimate, Instant::now());
    }

    /// Paces with `peers` from now on: the limit is then theirs and this worker's together,
    /// and this worker's permits its part of it. With `None`, alone again (back to a limit
    /// of its own).
    pub(crate) fn set_peers(&self, peers: Option<Box<dyn Peers>>) {
        self.lock().set_peers(peers, Instant::now());
    }

    /// A reading of the backend's own saturation gauges (`None`: none to read).
    pub(crate) fn on_saturation(&self, gauges: Option<Gauges>) {
        let mut state = self.lock();
        let version = state.policy.version();
        state.on_gauges(gauges, Instant::now());
        if state.policy.version() != version {
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Completes when this controller next changes its estimate by itself.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight()
    }

    pub(crate) fn stats(&self) -> ControllerStats {
        self.lock().stats(Instant::now())
    }

    /// Whether the permits in existence match the limit, given how many are held now.
    #[cfg(test)]
    pub(crate) fn permits_match_limit(&self, held: usize) -> bool {
        let held = held + self.held_back.load(Ordering::SeqCst);
        self.lock().permits.match_count(held)
    }

    pub(super) fn semaphore(&self) -> Arc<Semaphore> {
        Arc::clone(&self.semaphore)
    }

    /// Gives `permit` back once `hold` has passed (at once when it is zero).
    pub(super) fn give_back_after(self: &Arc<Self>, permit: Permit, hold: Duration) {
        if hold.is_zero() {
            return drop(permit);
        }
        self.held_back.fetch_add(1, Ordering::SeqCst);
        let controller = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            drop(permit);
            controller.held_back.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Hands a paced increase to the semaphore on time. Calls starting and finishing hand
    /// it out as they go, but a burst's first calls all finish together, and then nothing
    /// happens for a round trip: the increase came out at its end, in one piece, and the
    /// limit grew by half a step per round trip instead of a whole one. Called after
    /// anything that may raise the limit; one task at a time.
    pub(crate) fn keep_pacing(self: &Arc<Self>) {
        if self.lock().next_release(Instant::now()).is_none()
            || self.pacing_timer.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let controller = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let wait = {
                    let mut state = controller.lock();
                    let now = Instant::now();
                    state.permits.release_due(now);
                    state.next_release(now)
                };
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break,
                }
            }
            controller.pacing_timer.store(false, Ordering::SeqCst);
            // An increase that came while this task was ending found it still running.
            controller.keep_pacing();
        });
    }

    /// Returns a permit, or forgets it while the limit is still shrinking.
    pub(super) fn release(&self, permit: OwnedSemaphorePermit) {
        if self.lock().permits.take_forget() {
            permit.forget();
        }
    }

    /// A call is being sent. Public only for the hot-path benchmarks; callers go through
    /// the service, which holds a permit for the call.
    #[doc(hidden)]
    pub fn start(&self, request: &ChatRequest) -> CallTicket {
        let now = Instant::now();
        let (level, own, epoch) = self.lock().start(now);
        CallTicket {
            level,
            own,
            started: now,
            tokens: request.estimated_tokens(),
            epoch,
        }
    }

    /// A call ended with `result`, or was dropped unfinished (`None`). Public only for the
    /// hot-path benchmarks, like [`Controller::start`]. Returns how long the call's permit
    /// stays out before it is given back: zero, except for a refusal that peers' rules
    /// hold back (see [`Peers::refusal_hold`]).
    #[doc(hidden)]
    pub fn finish(
        &self,
        ticket: CallTicket,
        result: Option<&Result<ChatResponse, BackendError>>,
    ) -> Duration {
        let now = Instant::now();
        let mut hold = Duration::ZERO;
        let mut state = self.lock();
        let version = state.policy.version();
        match result {
            // Dropped (cancelled by a caller or a timeout above): nothing was learned.
            None => {}
            // The breaker answered; the backend was never asked.
            Some(Err(BackendError::CircuitOpen { .. })) => {}
            Some(result) => match (classify(result), result) {
                (Outcome::Success, Ok(response)) => {
                    // Decoding dominates a call's time, so the completion tokens the
                    // backend reports are the best measure of its length.
                    let tokens = response
                        .usage
                        .as_ref()
                        .map(|usage| usage.completion_tokens)
                        .filter(|&tokens| tokens > 0)
                        .unwrap_or(ticket.tokens);
                    state.succeeded(&ticket, tokens, now);
                }
                (Outcome::BackPressure, Err(error)) => hold = state.refused(&ticket, error, now),
                // 5xx, transport and fatal answers say nothing about load: counted as
                // success they would raise the limit on a broken backend, as
                // back-pressure they would collapse it on one bad prompt.
                _ => {}
            },
        }
        state.finished(now);
        if state.policy.version() != version {
            drop(state);
            self.changed.notify_one();
        }
        hold
    }

    /// The state stays consistent at every await-free step, so a panic elsewhere while
    /// the lock was held leaves nothing half-done: a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reserved permit; dropping it gives it back through the controller, so a permit of a
/// shrinking limit is forgotten rather than reused.
#[derive(Debug)]
pub(super) struct Permit {
    /// `Some` until dropped.
    permit: Option<OwnedSemaphorePermit>,
    controller: Arc<Controller>,
}

impl Permit {
    pub(super) fn new(permit: OwnedSemaphorePermit, controller: Arc<Controller>) -> Self {
        Self {
            permit: Some(permit),
            controller,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.controller.release(permit);
        }
    }
}
