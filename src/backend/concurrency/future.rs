//! [`ResponseFuture`]: times one call, reports its classified outcome to the controller
//! and gives its permit back when it completes (a refused call's maybe later, as the
//! peers' rules say: `Peers::refusal_hold`), or when it is dropped unfinished (then
//! nothing is learned from it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use super::controller::Permit;
use super::ticket::CallTicket;
use super::Controller;
use crate::backend::{BackendError, ChatResponse};

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ResponseFuture<F> {
    /// Boxed so this future is `Unpin` and can report on drop; one allocation per call
    /// is nothing next to an LLM call.
    inner: Pin<Box<F>>,
    /// `Some` until reported (on completion or drop).
    call: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    ticket: CallTicket,
    controller: Arc<Controller>,
    /// Released after the outcome is reported, so a waiter sees the updated limit.
    permit: Permit,
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(
        inner: F,
        permit: Permit,
        ticket: CallTicket,
        controller: Arc<Controller>,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
            call: Some(InFlight {
                ticket,
                controller,
                permit,
            }),
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatResponse, BackendError>>,
{
    type Output = Result<ChatResponse, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.inner.as_mut().poll(cx));
        if let Some(call) = self.call.take() {
            let hold = call.controller.finish(call.ticket, Some(&result));
            call.controller.give_back_after(call.permit, hold);
            call.controller.keep_pacing();
        }
        Poll::Ready(result)
    }
}

impl<F> Drop for ResponseFuture<F> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.controller.finish(call.ticket, None);
        }
    }
}
