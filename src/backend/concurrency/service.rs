//! [`AdaptiveConcurrency`]: at most `limit` calls in flight. A permit is reserved in
//! `poll_ready` (pending at the limit; woken when a call finishes or the limit grows) and
//! spent in `call`. Clones share the controller and start without a permit, so the Retry
//! layer above can clone it per attempt.

use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio_util::sync::PollSemaphore;
use tower::Service;

use super::controller::Permit;
use super::{Controller, ResponseFuture};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct AdaptiveConcurrency<S> {
    inner: S,
    controller: Arc<Controller>,
    semaphore: PollSemaphore,
    /// Reserved by `poll_ready`, taken by `call`; `None` in a fresh clone.
    permit: Option<Permit>,
}

impl<S> AdaptiveConcurrency<S> {
    pub fn new(inner: S, controller: Arc<Controller>) -> Self {
        Self {
            inner,
            semaphore: PollSemaphore::new(controller.semaphore()),
            controller,
            permit: None,
        }
    }
}

impl<S: Clone> Clone for AdaptiveConcurrency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            controller: Arc::clone(&self.controller),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S> Service<ChatRequest> for AdaptiveConcurrency<S>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError>,
{
    type Response = ChatResponse;
    type Error = BackendError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        if self.permit.is_none() {
            let permit = ready!(self.semaphore.poll_acquire(cx))
                .expect("the controller never closes its semaphore");
            self.permit = Some(Permit::new(permit, Arc::clone(&self.controller)));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("tower's contract: poll_ready returned Ready (reserving a permit) before call");
        let ticket = self.controller.start(&request);
        let future = self.inner.call(request);
        ResponseFuture::new(future, permit, ticket, Arc::clone(&self.controller))
    }
}
