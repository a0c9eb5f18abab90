//! The CircuitBreaker service: `poll_ready` takes a ticket (Pending while open, or while
//! another caller holds the half-open probe), `call` fails fast if the breaker opened
//! meanwhile, and the response future reports the result's verdict.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::layer::Shared;
use super::state::{verdict, Admitted, Ticket, Verdict, Wait};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// See [`super::CircuitBreakerLayer`]. Clones share the breaker.
#[derive(Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Taken in `poll_ready`, spent in `call`. Only a probe ticket is kept across polls
    /// (a closed one is re-checked, so an opening stops this caller too).
    ticket: Option<Ticket>,
    /// Reused across waits for the end of an open period; created on the first one.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Completes at the next transition; registered under the policy lock while waiting.
    changed: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> CircuitBreaker<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            ticket: None,
            sleep: None,
            changed: None,
        }
    }

    /// Takes a ticket, or registers `cx` to be woken at the next chance of one.
    fn poll_ticket(&mut self, cx: &mut Context<'_>) -> Poll<Ticket> {
        loop {
            let now = Instant::now();
            let changed = &mut self.changed;
            let notify = &self.shared.changed;
            let reserved = self.shared.with(|policy| {
                let reserved = policy.reserve(now);
                // Registered under the lock that transitions take, so none is missed.
                if reserved.is_err() && changed.is_none() {
                    *changed = Some(Box::pin(notify.clone().notified_owned()));
                }
                reserved
            });
            let wait = match reserved {
                Ok(ticket) => return Poll::Ready(ticket),
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
                if sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    /// A clone shares the breaker but holds no ticket of its own.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S> Drop for CircuitBreaker<S> {
    fn drop(&mut self) {
        if self.ticket == Some(Ticket::Probe) {
            self.shared.with(|policy| policy.give_back(Ticket::Probe));
        }
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
        if self.ticket != Some(Ticket::Probe) {
            self.ticket = None;
            self.ticket = Some(std::task::ready!(self.poll_ticket(cx)));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let ticket = self.ticket.take();
        let ticket = ticket.expect("tower contract: call only after poll_ready returned Ready");
        let now = Instant::now();
        match self.shared.with(|policy| policy.admit(now, ticket)) {
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
#[derive(Debug)]
struct Report {
    shared: Arc<Shared>,
    admitted: Admitted,
}

impl Report {
    /// Records the call's verdict; returns how long the breaker is now open for, when
    /// this failure left it open (it opened it, or it was the failed probe).
    fn send(self, verdict: Verdict) -> Option<std::time::Duration> {
        let now = Instant::now();
        self.shared.with(|policy| {
            policy.record(now, self.admitted, verdict);
            let failed = matches!(verdict, Verdict::Failure);
            policy
                .open_until()
                .filter(|_| failed)
                .map(|until| until.saturating_duration_since(now))
        })
    }
}

/// The backend's answer, or `CircuitOpen` without calling it.
#[derive(Debug)]
pub struct ResponseFuture<F> {
    kind: Kind<F>,
}

#[derive(Debug)]
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
                let opened = report
                    .take()
                    .and_then(|report| report.send(verdict(&result)));
                // A failure that leaves the breaker open (it opened it, or a probe found
                // the backend still down) is reported as the open breaker: the backend is
                // known to be down, so the caller waits for it rather than spend one of
                // the request's attempts (a request alone during an outage would
                // otherwise run out of attempts in seconds).
                match opened {
                    Some(retry_in) => Poll::Ready(Err(BackendError::CircuitOpen { retry_in })),
                    None => Poll::Ready(result),
                }
            }
        }
    }
}

impl<F> Drop for ResponseFuture<F> {
    /// An abandoned probe says nothing about the backend: give the probe to the next
    /// caller rather than stay half-open for good.
    fn drop(&mut self) {
        if let Kind::Called { report, .. } = &mut self.kind {
            if let Some(report) = report.take() {
                report.send(Verdict::NotAsked);
            }
        }
    }
}
