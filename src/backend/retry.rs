//! Retry, the outermost layer: exponential backoff with full jitter, the backend's
//! Retry-After honoured (capped), a bounded number of attempts, a retry budget so a
//! degraded backend is not stormed, and never an attempt past the request's deadline.
//! The classifier decides what is retryable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use super::classify::{classify, Outcome};
use super::{BackendError, ChatRequest, ChatResponse};
use crate::config::BackendConfig;
use crate::envelope::now_ms;

/// How a request is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Most attempts, the first included.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles per retry.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff, and cap on a backend's Retry-After.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub(crate) fn from_config(config: &BackendConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(config.retry_max_backoff_ms),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based). A Retry-After from the
    /// backend is obeyed (plus up to 10% jitter so waiters do not return in lockstep);
    /// otherwise full jitter over the exponential bound.
    pub(crate) fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(wait) = retry_after {
            let wait = wait.min(self.max_backoff);
            let jitter = rng.random_range(0.0..=0.1) * wait.as_secs_f64();
            return wait + Duration::from_secs_f64(jitter);
        }
        Duration::from_secs_f64(rng.random_range(0.0..=1.0) * self.bound(attempt).as_secs_f64())
    }

    /// The wait after failed attempt number `attempt` when the retry budget is spent.
    /// Back-pressure waits its attempt's whole exponential bound (or the Retry-After): its
    /// retries also wait for permits of the concurrency and rate layers below, so they
    /// cannot storm the backend, and the longest backoff would idle them for seconds after
    /// a moment of refusals. Any other failure waits the longest backoff.
    pub(crate) fn slowed(
        &self,
        attempt: u32,
        outcome: Outcome,
        retry_after: Option<Duration>,
    ) -> Duration {
        if outcome != Outcome::BackPressure {
            return self.max_backoff;
        }
        retry_after.map_or_else(|| self.bound(attempt), |wait| wait.min(self.max_backoff))
    }

    /// Upper bound of the backoff after failed attempt number `attempt`.
    fn bound(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff)
    }
}

/// How a retried call ended.
#[derive(Debug)]
pub enum Finished {
    /// Success, a fatal answer, or the last retryable failure once attempts ran out.
    Answered {
        result: Result<ChatResponse, BackendError>,
        attempts: u32,
    },
    /// The deadline passed (or would pass during the next backoff) before success.
    Expired {
        attempts: u32,
        last_error: Option<BackendError>,
    },
}

/// Shared retry budget: every request deposits, every retry withdraws, so retries add
/// at most `retry_budget_ratio` of recent traffic (plus a small floor).
pub(crate) type RetryBudget = Arc<TpsBudget>;

/// Builds a budget from `[backend]` settings (10-second memory, as tower's default).
pub(crate) fn budget_from_config(config: &BackendConfig) -> RetryBudget {
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        config.retry_budget_min_per_second,
        config.retry_budget_ratio,
    ))
}

/// Called with the classified outcome of every attempt (for metrics).
pub(crate) type AttemptObserver = Arc<dyn Fn(Outcome) + Send + Sync>;

/// Retries a request through the layers below it.
#[derive(Clone)]
pub(crate) struct RetryLayer {
    policy: RetryPolicy,
    budget: RetryBudget,
    observer: AttemptObserver,
}

impl RetryLayer {
    pub fn new(policy: RetryPolicy, budget: RetryBudget, observer: AttemptObserver) -> Self {
        Self {
            policy,
            budget,
            observer,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy,
            budget: self.budget.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// See [`RetryLayer`]. Its response is how the request ended ([`Finished`]), attempts
/// counted; its error only comes from a layer's readiness.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    budget: RetryBudget,
    observer: AttemptObserver,
}

impl<S> Service<ChatRequest> for Retry<S>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Finished;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<Finished, BackendError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        // The ready instance (holding what poll_ready reserved) serves the first attempt;
        // a fresh clone stays behind for the next poll_ready.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let (policy, budget, observer) = (self.policy, self.budget.clone(), self.observer.clone());
        Box::pin(attempt_until_done(ready, request, policy, budget, observer))
    }
}

async fn attempt_until_done<S>(
    mut service: S,
    request: ChatRequest,
    policy: RetryPolicy,
    budget: RetryBudget,
    observer: AttemptObserver,
) -> Result<Finished, BackendError>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError>,
{
    budget.deposit();
    let deadline_ms = request.deadline_ms;
    let mut attempts = 0;
    let mut last_error = None;
    let mut first = true;
    loop {
        if !first {
            service.ready().await?;
        }
        first = false;
        // Checked after the wait for readiness, which can outlast the deadline by far (an
        // open circuit breaker waits for the backend to come back).
        if deadline_ms.is_some_and(|d| now_ms() >= d) {
            return Ok(Finished::Expired {
                attempts,
                last_error,
            });
        }
        let result = service.call(request.clone()).await;
        if let Err(open @ BackendError::CircuitOpen { .. }) = result {
            // Not an attempt: the backend was not called. Readiness waits out the open
            // breaker, so a long outage does not use up the request's attempts.
            last_error = Some(open);
            continue;
        }
        attempts += 1;
        let outcome = classify(&result);
        observer(outcome);
        let relayed = request.chunks_relayed();
        if outcome.is_retryable() && relayed > 0 {
            let cause = result.expect_err("a retryable outcome is always an error");
            let result = Err(BackendError::StreamInterrupted {
                chunks: relayed,
                cause: cause.to_string(),
            });
            return Ok(Finished::Answered { result, attempts });
        }
        if !outcome.is_retryable() || attempts >= policy.max_attempts {
            return Ok(Finished::Answered { result, attempts });
        }
        let error = result.expect_err("a retryable outcome is always an error");
        // An empty budget slows retries instead of failing the request: the backend is
        // spared a storm, and the request still gets its attempts.
        let wait = if budget.withdraw() {
            policy.backoff(attempts, error.retry_after(), &mut rand::rng())
        } else {
            tracing::debug!(attempts, error = %error, "retry budget spent; backing off fully");
            policy.slowed(attempts, outcome, error.retry_after())
        };
        if deadline_ms.is_some_and(|d| now_ms() + wait.as_millis() as u64 >= d) {
            return Ok(Finished::Expired {
                attempts,
                last_error: Some(error),
            });
        }
        tracing::debug!(attempt = attempts, wait_ms = wait.as_millis() as u64, error = %error,
            back_pressure = (outcome == Outcome::BackPressure), "retrying backend call");
        last_error = Some(error);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
