//! The CircuitBreaker service: `poll_ready` is Pending while the breaker is open or its
//! probe is out, `call` fails fast (`CircuitOpen`, the backend not called) if it opened
//! meanwhile, and the response future reports the result's verdict and returns the
//! result itself, whatever it did to the breaker: every call made is an attempt with its
//! real answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::shared::Shared;
use super::state::{verdict, Admitted, Verdict, Wait};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// See [`super::CircuitBreakerLayer`]. Clones share the breaker.
pub(crate) struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Reused across waits for the end of an open period; created on the first one.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Completes at the next transition; registered under the policy lock while waiting.
    changed: Option<Pin<Box<OwnedNotified>>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> CircuitBreaker<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            sleep: None,
            changed: None,
        }
    }

    /// Ready while closed; otherwise registers `cx` to be woken at the next transition
    /// (or the end of the open period).
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let changed = &mut self.changed;
            let notify = &self.shared.changed;
            let reserved = self.shared.with(|policy| {
                let reserved = policy.reserve();
                // Registered under the lock that transitions take, so none is missed.
                if reserved.is_err() && changed.is_none() {
                    *changed = Some(Box::pin(notify.clone().notified_owned()));
                }
                reserved
            });
            let wait = match reserved {
                Ok(()) => {
                    self.changed = None;
                    return Poll::Ready(());
                }
                Err(wait) => wait,
            };
            let changed = self
                .changed
                .as_mut()
                .expect("registered above whenever the reservation failed");
            if changed.as_mut().poll(cx).is_ready() {
                self.changed = None;
                continue;
            }
            if let Wait::Until(until) = wait {
                let sleep = match &mut self.sleep {
                    Some(sleep) => {
                        sleep.as_mut().reset(until);
                        sleep
                    }
                    None => self.sleep.insert(Box::pin(tokio::time::sleep_until(until))),
                };
                // The breaker's own task turns it half-open at `until`; the transition
                // wakes this caller. The sleep only guards against a missed wake-up.
                if sleep.as_mut().poll(cx).is_ready() {
                    self.sleep = None;
                    return Poll::Pending;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    /// A clone shares the breaker.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S> Service<ChatRequest> for CircuitBreaker<S>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError>,
{
    type Response = ChatResponse;
    type Error = BackendError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        std::task::ready!(self.poll_closed(cx));
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let now = Instant::now();
        match self.shared.with(|policy| policy.admit(now)) {
            Ok(admitted) => ResponseFuture {
                kind: Kind::Called {
                    inner: Box::pin(self.inner.call(request)),
                    report: Some(Report {
                        shared: self.shared.clone(),
                        admitted,
                    }),
                },
            },
            Err(retry_in) => ResponseFuture {
                kind: Kind::Failed(Some(BackendError::CircuitOpen { retry_in })),
            },
        }
    }
}

/// A call in flight, to be reported to the breaker when it ends.
struct Report {
    shared: Arc<Shared>,
    admitted: Admitted,
}

impl Report {
    fn send(self, verdict: Verdict) {
        let now = Instant::now();
        self.shared
            .with(|policy| policy.record(now, self.admitted, verdict));
    }
}

/// The backend's answer, or `CircuitOpen` without calling it.
pub(crate) struct ResponseFuture<F> {
    kind: Kind<F>,
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

enum Kind<F> {
    /// `None` once returned.
    Failed(Option<BackendError>),
    Called {
        inner: Pin<Box<F>>,
        /// `None` once reported.
        report: Option<Report>,
    },
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatResponse, BackendError>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a ResponseFuture is not polled after it completed"))),
            Kind::Called { inner, report } => {
                let result = std::task::ready!(inner.as_mut().poll(cx));
                if let Some(report) = report.take() {
                    report.send(verdict(&result));
                }
                // The true answer, even when it opened the breaker: the attempt was made,
                // and retry, rate and the concurrency controller all need its outcome.
                // While the breaker stays open, the next attempt waits in `poll_ready`.
                Poll::Ready(result)
            }
        }
    }
}
