//! Assembles the backend call path from configuration, in one place:
//! `Retry -> RateLimit -> AdaptiveConcurrency -> CircuitBreaker -> Timeout -> OpenAiClient`.

use std::time::Duration;

use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use std::sync::Arc;

use super::breaker::{BreakerHandle, CircuitBreakerLayer};
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
pub type BackendStack = Retry<Attempts>;

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
pub fn build_stack(
    config: &BackendConfig,
    observer: AttemptObserver,
) -> Result<Stack, BackendError> {
    let client = OpenAiClient::new(config)?;
    Ok(build_stack_over(config, observer, client))
}

/// Builds the stack over any innermost service (simulations and tests use a model).
pub fn build_stack_over<S>(config: &BackendConfig, observer: AttemptObserver, innermost: S) -> Stack
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
    let breaker = CircuitBreakerLayer::new(&config.breaker);
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
