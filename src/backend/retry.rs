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
pub struct RetryPolicy {
    /// Most attempts, the first included.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles per retry.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff, and cap on a backend's Retry-After.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &BackendConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(config.retry_max_backoff_ms),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based). A Retry-After from the
    /// backend is obeyed (plus up to 10% jitter so waiters do not return in lockstep);
    /// otherwise full jitter over the exponential bound.
    pub fn backoff(
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
        let exponent = attempt.saturating_sub(1).min(30);
        let bound = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        Duration::from_secs_f64(rng.random_range(0.0..=1.0) * bound.as_secs_f64())
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
pub type RetryBudget = Arc<TpsBudget>;

/// Builds a budget from `[backend]` settings (10-second memory, as tower's default).
pub fn budget_from_config(config: &BackendConfig) -> RetryBudget {
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        config.retry_budget_min_per_second,
        config.retry_budget_ratio,
    ))
}

/// Called with the classified outcome of every attempt (for metrics).
pub type AttemptObserver = Arc<dyn Fn(Outcome) + Send + Sync>;

/// Retries a request through the layers below it.
#[derive(Clone)]
pub struct RetryLayer {
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
        if !outcome.is_retryable() || attempts >= policy.max_attempts {
            return Ok(Finished::Answered { result, attempts });
        }
        let error = result.expect_err("a retryable outcome is always an error");
        // An empty budget slows retries to the longest backoff instead of failing the
        // request: the backend is spared a storm, and the request still gets its attempts.
        let wait = if budget.withdraw() {
            policy.backoff(attempts, error.retry_after(), &mut rand::rng())
        } else {
            tracing::debug!(attempts, error = %error, "retry budget spent; backing off fully");
            policy.max_backoff
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
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_is_bounded_by_the_doubling_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let bound =
                Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
            let mut max_seen = Duration::ZERO;
            for _ in 0..200 {
                let d = policy().backoff(attempt, None, &mut rng);
                assert!(d <= bound, "attempt {attempt}: {d:?} > {bound:?}");
                max_seen = max_seen.max(d);
            }
            assert!(
                max_seen > bound / 2,
                "full jitter should spread up to the bound"
            );
        }
    }

    /// A backend that answers from a script and counts calls.
    fn scripted(
        answers: Vec<Result<ChatResponse, BackendError>>,
    ) -> (
        impl Service<ChatRequest, Response = ChatResponse, Error = BackendError, Future = impl Send>
            + Clone
            + Send,
        Arc<std::sync::Mutex<usize>>,
    ) {
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            answers,
        )));
        let calls = Arc::new(std::sync::Mutex::new(0));
        let counter = calls.clone();
        let service = tower::service_fn(move |_: ChatRequest| {
            *counter.lock().unwrap() += 1;
            let answer = script
                .lock()
                .unwrap()
                .pop_front()
                .expect("the script covers every call");
            async move { answer }
        });
        (service, calls)
    }

    fn ok() -> Result<ChatResponse, BackendError> {
        Ok(ChatResponse {
            body: serde_json::json!({"ok": true}),
            usage: None,
        })
    }

    fn status(code: u16, retry_after_ms: Option<u64>) -> Result<ChatResponse, BackendError> {
        Err(BackendError::Status {
            status: code,
            message: "no".into(),
            retry_after: retry_after_ms.map(Duration::from_millis),
        })
    }

    fn retry_layer(
        max_attempts: u32,
        budget_ratio: f32,
        budget_floor: u32,
    ) -> (RetryLayer, Arc<std::sync::Mutex<Vec<Outcome>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let policy = RetryPolicy {
            max_attempts,
            ..policy()
        };
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            budget_floor,
            budget_ratio,
        ));
        (
            RetryLayer::new(
                policy,
                budget,
                Arc::new(move |o| record.lock().unwrap().push(o)),
            ),
            seen,
        )
    }

    fn request(deadline_ms: Option<u64>) -> ChatRequest {
        ChatRequest::new(serde_json::Map::new(), deadline_ms)
    }

    #[tokio::test(start_paused = true)]
    async fn back_pressure_is_retried_after_retry_after() {
        let (backend, calls) = scripted(vec![status(429, Some(700)), status(503, None), ok()]);
        let (layer, seen) = retry_layer(5, 0.2, 10);
        let started = tokio::time::Instant::now();
        let finished = layer.layer(backend).oneshot(request(None)).await.unwrap();
        match finished {
            Finished::Answered {
                result: Ok(_),
                attempts,
            } => assert_eq!(attempts, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 3);
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                Outcome::BackPressure,
                Outcome::BackPressure,
                Outcome::Success
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_answers_are_not_retried() {
        let (backend, calls) = scripted(vec![status(400, None)]);
        let (layer, _) = retry_layer(5, 0.2, 10);
        match layer.layer(backend).oneshot(request(None)).await.unwrap() {
            Finished::Answered {
                result: Err(e),
                attempts: 1,
            } => assert_eq!(e.status(), Some(400)),
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let (backend, calls) = scripted(vec![
            status(500, None),
            status(502, None),
            status(504, None),
        ]);
        let (layer, _) = retry_layer(3, 0.2, 10);
        match layer.layer(backend).oneshot(request(None)).await.unwrap() {
            Finished::Answered {
                result: Err(e),
                attempts: 3,
            } => assert_eq!(e.status(), Some(504)),
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_slows_retries_to_the_longest_backoff() {
        let (backend, calls) = scripted(vec![status(503, None), ok()]);
        let (layer, _) = retry_layer(5, 0.0, 0);
        let started = tokio::time::Instant::now();
        match layer.layer(backend).oneshot(request(None)).await.unwrap() {
            Finished::Answered {
                result: Ok(_),
                attempts: 2,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 2);
        assert_eq!(
            started.elapsed(),
            policy().max_backoff,
            "waited the longest backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_does_not_use_up_attempts() {
        let open = || {
            Err(BackendError::CircuitOpen {
                retry_in: Duration::from_secs(1),
            })
        };
        let (backend, calls) = scripted(vec![status(503, None), open(), open(), open(), ok()]);
        let (layer, seen) = retry_layer(2, 0.2, 10);
        match layer.layer(backend).oneshot(request(None)).await.unwrap() {
            Finished::Answered {
                result: Ok(_),
                attempts: 2,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 5);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Outcome::BackPressure, Outcome::Success]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_stop_attempts() {
        let (backend, calls) = scripted(vec![]);
        let (layer, _) = retry_layer(5, 0.2, 10);
        let past = now_ms() - 1;
        match layer
            .layer(backend)
            .oneshot(request(Some(past)))
            .await
            .unwrap()
        {
            Finished::Expired {
                attempts: 0,
                last_error: None,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 0, "never called past the deadline");

        // The backend asks for 5 s; the deadline is 1 s away: no second attempt.
        let (backend, calls) = scripted(vec![status(429, Some(5_000))]);
        let (layer, _) = retry_layer(5, 0.2, 10);
        match layer
            .layer(backend)
            .oneshot(request(Some(now_ms() + 1_000)))
            .await
            .unwrap()
        {
            Finished::Expired {
                attempts: 1,
                last_error: Some(e),
            } => assert_eq!(e.status(), Some(429)),
            other => panic!("{other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    /// Readiness that takes `wait` each time after the first (as behind an open breaker).
    struct SlowReadiness<S> {
        inner: S,
        /// Readiness granted so far, shared by clones.
        granted: Arc<std::sync::atomic::AtomicUsize>,
        wait: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl<S: Clone> Clone for SlowReadiness<S> {
        fn clone(&self) -> Self {
            Self {
                inner: self.inner.clone(),
                granted: self.granted.clone(),
                wait: self.wait,
                sleep: None,
            }
        }
    }

    impl<S: Service<ChatRequest>> Service<ChatRequest> for SlowReadiness<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.granted.load(SeqCst) > 0 {
                let wait = self.wait;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                std::task::ready!(sleep.as_mut().poll(cx));
            }
            std::task::ready!(self.inner.poll_ready(cx))?;
            self.sleep = None;
            self.granted.fetch_add(1, SeqCst);
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: ChatRequest) -> S::Future {
            self.inner.call(request)
        }
    }

    // Real time: deadlines are wall-clock milliseconds.
    #[tokio::test]
    async fn a_deadline_passing_while_waiting_for_readiness_stops_attempts() {
        let (backend, calls) = scripted(vec![status(503, None), ok()]);
        let slow = SlowReadiness {
            inner: backend,
            granted: Arc::default(),
            wait: Duration::from_millis(600),
            sleep: None,
        };
        let (layer, _) = retry_layer(5, 0.2, 10);
        match layer
            .layer(slow)
            .oneshot(request(Some(now_ms() + 300)))
            .await
            .unwrap()
        {
            Finished::Expired {
                attempts: 1,
                last_error: Some(e),
            } => assert_eq!(e.status(), Some(503)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            *calls.lock().unwrap(),
            1,
            "not called again once the deadline passed"
        );
    }

    #[test]
    fn retry_after_is_obeyed_and_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = policy().backoff(1, Some(Duration::from_millis(700)), &mut rng);
        assert!(
            d >= Duration::from_millis(700) && d <= Duration::from_millis(770),
            "{d:?}"
        );
        let capped = policy().backoff(1, Some(Duration::from_secs(3600)), &mut rng);
        assert!(capped <= Duration::from_millis(2200), "{capped:?}");
    }
}
