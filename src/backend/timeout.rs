//! Timeout, the innermost layer: one attempt may take at most `backend.timeout_ms`.
//! Unlike tower's own timeout it keeps the typed error (`BackendError::Timeout`), so
//! the classifier can call it back-pressure.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use super::{BackendError, ChatRequest};

/// Applies a per-attempt time limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<ChatRequest> for Timeout<S>
where
    S: Service<ChatRequest, Error = BackendError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BackendError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let limit = self.limit;
        let call = self.inner.call(request);
        Box::pin(async move {
            tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(BackendError::Timeout(limit)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn request() -> ChatRequest {
        ChatRequest::new(serde_json::Map::new(), None)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_attempt_times_out_with_a_typed_error() {
        let slow = tower::service_fn(|_: ChatRequest| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BackendError>(())
        });
        let service = TimeoutLayer::new(Duration::from_secs(2)).layer(slow);
        let started = tokio::time::Instant::now();
        let result = service.oneshot(request()).await;
        assert_eq!(result, Err(BackendError::Timeout(Duration::from_secs(2))));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_attempt_passes_through() {
        let fast = tower::service_fn(|_: ChatRequest| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BackendError>(7)
        });
        let service = TimeoutLayer::new(Duration::from_secs(2)).layer(fast);
        assert_eq!(service.oneshot(request()).await, Ok(7));
    }
}
