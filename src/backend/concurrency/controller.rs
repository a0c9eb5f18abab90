//! The controller: the limit, the permits that enforce it and every policy decision, behind
//! one std mutex that is never held across an `.await`. The service and its future only
//! take and return permits and report each call's classified outcome here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::share::GroupShare;
use super::ConcurrencySettings;
use crate::backend::classify::{classify, Outcome};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

mod policy;

use policy::State;

/// Shared by every clone of one [`AdaptiveConcurrency`](super::AdaptiveConcurrency)
/// service; read it for metrics.
#[derive(Debug)]
pub struct Controller {
    /// One permit per call the limit allows. Shrinking forgets free permits at once and the
    /// rest as they come back (`State::to_forget`). Never closed.
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    /// Woken when this controller changes its estimate, so the group hears of it at once.
    changed: Notify,
    /// Permits of refused calls not given back yet ([`Controller::give_back_after`]).
    held_back: AtomicUsize,
    /// A task hands out a paced increase on time ([`Controller::keep_pacing`]).
    pacing_timer: AtomicBool,
}

/// What a controller believes about the backend, as the members of a group share it.
/// Newer versions win; of two estimates with one version, the lower limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The limit: calls the backend takes at once (the whole group's, in a group).
    pub limit: usize,
    /// The highest limit known to be good.
    pub recover_to: usize,
    pub version: u64,
}

/// Back-pressure answers seen, by kind (each is also one overload response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackPressureCounts {
    /// HTTP 429.
    pub too_many_requests: u64,
    /// HTTP 503.
    pub unavailable: u64,
    /// No answer within the per-attempt timeout.
    pub timeouts: u64,
    /// Of the above, those that carried a Retry-After (each holds increases back).
    pub with_retry_after: u64,
}

impl BackPressureCounts {
    pub fn total(&self) -> u64 {
        self.too_many_requests + self.unavailable + self.timeouts
    }
}

/// A snapshot for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerStats {
    /// The current limit (in a group, the whole group's).
    pub limit: usize,
    /// This worker's permits: the limit alone, its share of it in a group.
    pub permits: usize,
    /// Version of the estimate (see [`Estimate`]).
    pub version: u64,
    /// Calls sent and not yet finished.
    pub in_flight: usize,
    /// Time-weighted mean of the limit since the controller was created.
    pub mean_limit: f64,
    /// Integral of the limit over time (limit × seconds) since creation: the difference of
    /// two snapshots divided by the time between them is the mean over that window.
    pub limit_seconds: f64,
    /// Time since creation.
    pub elapsed: Duration,
    pub back_pressure: BackPressureCounts,
    /// Increases above the last level known to be good.
    pub probes: u64,
    /// Probes answered with back-pressure or queueing.
    pub failed_probes: u64,
}

/// What the controller keeps about one call between [`Controller::start`] and
/// [`Controller::finish`]. Public only for the hot-path benchmarks (`benches/hot_paths`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallTicket {
    /// Calls in flight once this one was sent, itself included (in a group, the whole
    /// group's, as far as this worker can tell).
    level: usize,
    /// This worker's own calls in flight once this one was sent, itself included.
    own: usize,

    started: Instant,
    /// Estimated tokens, used when the answer carries no usage.
    tokens: u64,
    /// The limit's epoch when sent: only calls sent under the current limit judge it.
    epoch: u64,
}

impl Controller {
    /// A controller at `settings.initial`. Out-of-range settings are clamped (they are
    /// rejected at start-up by [`ConcurrencySettings::validate`]).
    pub fn new(settings: ConcurrencySettings) -> Self {
        let state = State::new(settings, Instant::now());
        Self {
            semaphore: Arc::new(Semaphore::new(state.limit())),
            state: Mutex::new(state),
            changed: Notify::new(),
            held_back: AtomicUsize::new(0),
            pacing_timer: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> usize {
        self.lock().limit()
    }

    /// This worker's permits (the limit alone, its share in a group).
    pub fn permits(&self) -> usize {
        self.lock().permits()
    }

    /// The estimate to share with the group.
    pub fn estimate(&self) -> Estimate {
        self.lock().estimate()
    }

    /// Takes a group member's estimate if it is newer; see [`Estimate`].
    pub fn adopt(&self, remote: Estimate) -> bool {
        self.lock().adopt(&self.semaphore, remote, Instant::now())
    }

    /// Takes the group's estimate whatever its version: on joining it again after pacing
    /// alone (this worker's own estimate then describes only itself).
    pub fn rejoin(&self, estimate: Estimate) {
        self.lock()
            .rejoin(&self.semaphore, estimate, Instant::now());
    }

    /// Joins a group (this worker's permits become its share of the limit, which is then
    /// the group's) or, with `None`, leaves it (back to a limit of its own).
    pub fn set_group(&self, group: Option<GroupShare>) {
        self.lock()
            .set_group(&self.semaphore, group, Instant::now());
    }

    /// A reading of the backend's own saturation gauges (`None`: none to read).
    pub fn on_saturation(&self, signal: Option<crate::backend::saturation::Signal>) {
        let mut state = self.lock();
        let version = state.estimate().version;
        state.on_saturation(&self.semaphore, signal, Instant::now());
        if state.estimate().version != version {
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

    /// Time-weighted mean of the limit since creation.
    pub fn mean_limit(&self) -> f64 {
        self.stats().mean_limit
    }

    pub fn stats(&self) -> ControllerStats {
        self.lock().stats(Instant::now())
    }

    /// Whether the permits in existence match the limit, given how many are held now.
    #[cfg(test)]
    pub(super) fn permits_match_limit(&self, held: usize) -> bool {
        let state = self.lock();
        let (to_forget, unreleased) = state.permit_debt();
        let held = held + self.held_back.load(Ordering::SeqCst);
        self.semaphore.available_permits() + held == state.permits() - unreleased + to_forget
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
    pub fn keep_pacing(self: &Arc<Self>) {
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
                    state.release_due(&controller.semaphore, now);
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
        let forget = self.lock().take_forget();
        if forget {
            permit.forget();
        }
    }

    /// A call is being sent. Public only for the hot-path benchmarks; callers go through
    /// the service, which holds a permit for the call.
    #[doc(hidden)]
    pub fn start(&self, request: &ChatRequest) -> CallTicket {
        let now = Instant::now();
        let (level, own, epoch) = self.lock().start(&self.semaphore, now);
        CallTicket {
            level,
            own,
            started: now,
            tokens: estimated_tokens(request),
            epoch,
        }
    }

    /// A call ended with `result`, or was dropped unfinished (`None`). Public only for the
    /// hot-path benchmarks, like [`Controller::start`]. Returns how long the call's permit
    /// stays out before it is given back: zero, except for a refusal in a group that
    /// took none of this worker's permits (see `State::refusal_hold`).
    #[doc(hidden)]
    pub fn finish(
        &self,
        ticket: CallTicket,
        result: Option<&Result<ChatResponse, BackendError>>,
    ) -> Duration {
        let now = Instant::now();
        let mut hold = Duration::ZERO;
        let mut state = self.lock();
        let version = state.estimate().version;
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
                    state.on_success(&self.semaphore, ticket, tokens, now);
                }
                (Outcome::BackPressure, Err(error)) => {
                    let (rtt, before) = (ticket.rtt(now), state.permits());
                    state.on_back_pressure(&self.semaphore, ticket, error, now);
                    hold = state.refusal_hold(rtt, state.permits() < before);
                }
                // 5xx, transport and fatal answers say nothing about load: counted as
                // success they would raise the limit on a broken backend, as
                // back-pressure they would collapse it on one bad prompt.
                _ => {}
            },
        }
        state.on_finished(&self.semaphore, now);
        if state.estimate().version != version {
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

impl CallTicket {
    fn rtt(&self, now: Instant) -> f64 {
        now.duration_since(self.started).as_secs_f64()
    }
}

/// [`ChatRequest::estimated_tokens`], which indexes `messages` and so panics on a body
/// without them; such a body still deserves an answer (a 400) rather than a crash here.
fn estimated_tokens(request: &ChatRequest) -> u64 {
    if request.body.contains_key("messages") {
        request.estimated_tokens()
    } else {
        request
            .max_tokens()
            .unwrap_or(crate::backend::DEFAULT_MAX_TOKENS_ESTIMATE)
    }
}
