//! The RateLimit service: `poll_ready` reserves one request (Pending, with one reused
//! `Sleep`, until a request is available and the token budget is out of debt), `call`
//! charges the estimated tokens, and the response future settles them against `usage`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::bucket::Limiter;
use super::share::{RateShare, RateStats};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// State every clone of one layer's services shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// Held only for arithmetic, never across an `.await` or a poll of another future.
    pub buckets: Mutex<Scaled>,
    pub share: RateShare,
    pub stats: RateStats,
}

/// The buckets and the share generation they were last scaled to.
#[derive(Debug)]
pub(super) struct Scaled {
    pub limiter: Limiter,
    pub generation: u64,
}

impl Shared {
    /// Locks the buckets, first rescaling them if the share changed since they last looked.
    /// A panic elsewhere cannot leave the buckets half-updated (every update is one
    /// assignment), so a poisoned lock is still safe to use.
    fn buckets(&self, now: Instant) -> MutexGuard<'_, Scaled> {
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.share.generation();
        if guard.generation != generation {
            let change = self.share.latest_change();
            guard.limiter.set_share(change.at.min(now), change.share);
            guard.generation = generation;
        }
        guard
    }
}

/// See [`super::RateLimitLayer`]. Clones share the buckets; each clone holds at most one
/// reserved request, returned if the clone is dropped without calling.
#[derive(Debug)]
pub(crate) struct RateLimit<S> {
    inner: S,
    /// `None` when no limit is configured: every method goes straight to `inner`.
    shared: Option<Arc<Shared>>,
    /// This clone took a request in `poll_ready` and has not spent it in `call` yet.
    reserved: bool,
    /// When this clone started waiting for the current reservation.
    waiting_since: Option<Instant>,
    /// Reused across waits (reset, not reallocated), created on the first wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Completes when the share changes; kept while waiting so no change is missed.
    share_changed: Option<Pin<Box<OwnedNotified>>>,
}

impl<S> RateLimit<S> {
    pub(super) fn new(inner: S, shared: Option<Arc<Shared>>) -> Self {
        Self {
            inner,
            shared,
            reserved: false,
            waiting_since: None,
            sleep: None,
            share_changed: None,
        }
    }

    /// Reserves a request, or registers `cx` to be woken when one may be available.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
        loop {
            let now = Instant::now();
            let (reserved, generation) = {
                let mut guard = shared.buckets(now);
                (guard.limiter.try_reserve(now), guard.generation)
            };
            let wake_at = match reserved {
                Ok(()) => {
                    if let Some(since) = self.waiting_since.take() {
                        shared.stats.record_wait(now - since);
                    }
                    return Poll::Ready(());
                }
                Err(wake_at) => wake_at,
            };
            self.waiting_since.get_or_insert(now);
            // Registered before the generation is compared, so a change between the
            // check above and now either shows in the generation or wakes this future.
            let changed = self
                .share_changed
                .get_or_insert_with(|| Box::pin(shared.share.changed()));
            if shared.share.generation() != generation || changed.as_mut().poll(cx).is_ready() {
                self.share_changed = None;
                continue;
            }
            if let Some(wake_at) = wake_at {
                let sleep = match &mut self.sleep {
                    Some(sleep) => {
                        sleep.as_mut().reset(wake_at);
                        sleep
                    }
                    None => self
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(wake_at))),
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone shares the buckets but holds no reservation of its own.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S> Drop for RateLimit<S> {
    fn drop(&mut self) {
        if let (true, Some(shared)) = (self.reserved, &self.shared) {
            let now = Instant::now();
            shared.buckets(now).limiter.unreserve(now);
        }
    }
}

impl<S> Service<ChatRequest> for RateLimit<S>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError>,
{
    type Response = ChatResponse;
    type Error = BackendError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        // Rate first, inner second: a clone waiting for rate must not sit on a
        // concurrency permit the backend could be using.
        if let (false, Some(shared)) = (self.reserved, self.shared.clone()) {
            std::task::ready!(self.poll_reserve(cx, &shared));
            self.reserved = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::new(self.inner.call(request), None);
        };
        assert!(
            self.reserved,
            "tower contract: call only after poll_ready returned Ready"
        );
        self.reserved = false;
        let charged = request.estimated_tokens();
        let now = Instant::now();
        shared.buckets(now).limiter.charge(now, charged);
        let settle = Settle {
            shared: shared.clone(),
            charged,
        };
        ResponseFuture::new(self.inner.call(request), Some(settle))
    }
}

/// What a finished call still owes the buckets.
#[derive(Debug)]
struct Settle {
    shared: Arc<Shared>,
    /// Tokens charged in `call` (the estimate).
    charged: u64,
}

impl Settle {
    /// Replaces the estimate by the call's real cost:
    /// - a success with `usage`: prompt + completion tokens;
    /// - the backend not called (`CircuitOpen`, `DeadlineExceeded`): nothing, and the
    ///   request is returned too;
    /// - an error status: nothing (the backend answered without generating);
    /// - a success without `usage`, a timeout, a transport or invalid answer: the estimate
    ///   stands, since the backend may have done the work.
    fn settle(self, result: &Result<ChatResponse, BackendError>) {
        let (tokens, not_called) = match result {
            Ok(response) => (
                response
                    .usage
                    .as_ref()
                    .map_or(self.charged, |u| u.prompt_tokens + u.completion_tokens),
                false,
            ),
            Err(BackendError::CircuitOpen { .. } | BackendError::DeadlineExceeded) => (0, true),
            Err(BackendError::Status { .. }) => (0, false),
            Err(_) => (self.charged, false),
        };
        let now = Instant::now();
        let mut guard = self.shared.buckets(now);
        guard.limiter.settle(now, self.charged, tokens);
        if not_called {
            guard.limiter.unreserve(now);
        }
    }
}

/// The inner call, settling its token cost when it completes. A call abandoned before it
/// completes keeps its estimate.
#[derive(Debug)]
pub(crate) struct ResponseFuture<F> {
    inner: Pin<Box<F>>,
    settle: Option<Settle>,
}

impl<F> ResponseFuture<F> {
    fn new(inner: F, settle: Option<Settle>) -> Self {
        Self {
            inner: Box::pin(inner),
            settle,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatResponse, BackendError>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        if let Some(settle) = self.settle.take() {
            settle.settle(&result);
        }
        Poll::Ready(result)
    }
}
