//! Assembles the backend call path from configuration, in one place:
//! `Retry -> RateLimit -> AdaptiveConcurrency -> CircuitBreaker -> Timeout -> OpenAiClient`.

use std::time::Duration;

use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use std::sync::Arc;

use super::breaker::{BreakerHandle, CircuitBreakerLayer, Probe};
use super::client::OpenAiClient;
use super::concurrency::{AdaptiveConcurrencyLayer, Controller};
use super::rate::{RateLimitLayer, RateShare, RateStats};
use super::retry::{budget_from_config, AttemptObserver, Retry, RetryLayer, RetryPolicy};
use super::timeout::TimeoutLayer;
use super::{BackendError, ChatRequest, ChatResponse};
use crate::config::BackendConfig;

/// The layers under Retry, boxed so the stack has one nameable type.
pub type Attempts = BoxCloneService<ChatRequest, ChatResponse, BackendError>;

/// The whole call path; `ready()` it before taking a message, then `call` it.
pub(crate) type BackendStack = Retry<Attempts>;

/// The stack and the handles the worker uses to steer and observe it.
pub struct Stack {
    pub service: BackendStack,
    /// Set on every rebalance: this worker's share of the group-wide rate limits.
    pub rate_share: RateShare,
    pub rate_stats: RateStats,
    pub breaker: BreakerHandle,
    /// The adaptive concurrency controller (its limit and statistics).
    pub concurrency: Arc<Controller>,
}

/// Builds the stack over the real HTTP client.
pub(crate) fn build_stack(
    config: &BackendConfig,
    observer: AttemptObserver,
) -> Result<Stack, BackendError> {
    let client = OpenAiClient::new(config)?;
    let probe: Probe = {
        let (client, timeout) = (
            client.clone(),
            Duration::from_millis(config.timeout_ms).min(PROBE_TIMEOUT),
        );
        Arc::new(move || {
            let client = client.clone();
            Box::pin(async move { client.probe(timeout).await })
        })
    };
    Ok(build_stack_over(config, observer, client, probe))
}

/// Longest the breaker's probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the stack over any innermost service (simulations and tests use a model), with
/// `probe` for the circuit breaker to ask whether the backend is back.
pub(crate) fn build_stack_over<S>(
    config: &BackendConfig,
    observer: AttemptObserver,
    innermost: S,
    probe: Probe,
) -> Stack
where
    S: tower::Service<ChatRequest, Response = ChatResponse, Error = BackendError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let rate = RateLimitLayer::new(&config.rate);
    let concurrency = AdaptiveConcurrencyLayer::new(config.concurrency.clone());
    let controller = concurrency.controller();
    let breaker = CircuitBreakerLayer::new(&config.breaker, probe);
    let (rate_share, rate_stats, breaker_handle) = (rate.share(), rate.stats(), breaker.handle());
    let attempts = ServiceBuilder::new()
        .layer(rate)
        .layer(concurrency)
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_millis(config.timeout_ms)))
        .service(innermost);
    let retry = RetryLayer::new(
        RetryPolicy::from_config(config),
        budget_from_config(config),
        observer,
    );
    Stack {
        service: tower::Layer::layer(&retry, BoxCloneService::new(attempts)),
        rate_share,
        rate_stats,
        breaker: breaker_handle,
        concurrency: controller,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tower::ServiceExt;

    use super::*;
    use crate::backend::retry::Finished;

    /// A backend that answers every chat call with 500 and counts them; its probe says it
    /// is up (it is: it answers, just not this request).
    fn failing_backend() -> (
        tower::util::BoxCloneService<ChatRequest, ChatResponse, BackendError>,
        Arc<AtomicU32>,
        Probe,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let service = tower::service_fn(move |_request: ChatRequest| {
            counted.fetch_add(1, Ordering::Relaxed);
            async {
                Err::<ChatResponse, _>(BackendError::Status {
                    status: 500,
                    message: "model crashed on this prompt".into(),
                    retry_after: None,
                })
            }
        });
        let probe: Probe = Arc::new(|| Box::pin(async { Ok(()) }));
        (tower::util::BoxCloneService::new(service), calls, probe)
    }

    /// Its own failures open the breaker (5 in a row) before its attempts run out (6): each
    /// call made still counts, the breaker's probe finds the backend up, and the request
    /// ends `error` with the backend's real answer after exactly `max_attempts` calls.
    #[tokio::test(start_paused = true)]
    async fn a_lone_request_the_backend_always_fails_ends_after_max_attempts() {
        let config = BackendConfig::default();
        assert!(config.breaker.consecutive_failures < config.max_attempts);
        let (backend, calls, probe) = failing_backend();
        let stack = build_stack_over(&config, Arc::new(|_| {}), backend, probe);
        let request = ChatRequest::new(serde_json::Map::new(), None);
        let finished =
            tokio::time::timeout(Duration::from_secs(600), stack.service.oneshot(request))
                .await
                .expect("the request ends instead of retrying without end")
                .expect("the stack does not fail readiness");
        let Finished::Answered { result, attempts } = finished else {
            panic!("no deadline: it is answered, not expired");
        };
        assert_eq!(attempts, config.max_attempts, "every call made counts");
        assert_eq!(calls.load(Ordering::Relaxed), config.max_attempts);
        let error = result.expect_err("the backend always fails it");
        assert_eq!(error.status(), Some(500), "the real error: {error}");
        assert!(error.to_string().contains("model crashed"), "{error}");
    }
}
