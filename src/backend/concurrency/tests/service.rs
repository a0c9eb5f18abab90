//! The service and its future alone, against `tower_test`'s mock: permits are reserved,
//! spent and returned exactly once, whatever happens to the call.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tower::ServiceExt;
use tower_test::mock::{self, Handle, Mock, Spawn};

use crate::backend::concurrency::{AdaptiveConcurrency, ConcurrencySettings, Controller};
use crate::backend::{BackendError, ChatRequest, ChatResponse};

/// What `tower_test`'s mock fails with.
type MockError = Box<dyn std::error::Error + Send + Sync>;
type Inner = tower::util::MapErr<Mock<ChatRequest, ChatResponse>, fn(MockError) -> BackendError>;
type Svc = AdaptiveConcurrency<Inner>;

fn unbox(error: MockError) -> BackendError {
    *error
        .downcast::<BackendError>()
        .expect("these tests only send BackendError")
}

/// A service whose limit stays at `limit` unless back-pressure lowers it.
fn fixed(
    limit: usize,
) -> (
    Spawn<Svc>,
    Handle<ChatRequest, ChatResponse>,
    Arc<Controller>,
) {
    let settings = ConcurrencySettings {
        initial: limit,
        max: limit,
        ..ConcurrencySettings::default()
    };
    let controller = Arc::new(Controller::new(settings));
    let shared = Arc::clone(&controller);
    let (service, handle) = mock::spawn_with(move |mock: Mock<ChatRequest, ChatResponse>| {
        let inner: Inner = mock.map_err(unbox as fn(MockError) -> BackendError);
        AdaptiveConcurrency::new(inner, Arc::clone(&shared))
    });
    (service, handle, controller)
}

fn request() -> ChatRequest {
    ChatRequest::new(serde_json::Map::new(), None)
}

fn ok() -> ChatResponse {
    ChatResponse {
        body: serde_json::json!({}),
        usage: None,
    }
}

fn status(status: u16, retry_after: Option<Duration>) -> BackendError {
    BackendError::Status {
        status,
        message: String::new(),
        retry_after,
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_pending_at_the_limit_and_woken_when_a_call_completes() {
    let (mut service, mut handle, controller) = fixed(2);
    assert!(service.poll_ready().is_ready());
    let first = service.call(request());
    assert!(service.poll_ready().is_ready());
    let _second = service.call(request());
    assert_eq!(controller.in_flight(), 2);
    assert!(service.poll_ready().is_pending(), "two of two in flight");

    let (_, reply) = handle
        .next_request()
        .await
        .expect("first call reached the mock");
    reply.send_response(ok());
    assert_eq!(first.await, Ok(ok()));
    assert!(
        service.is_woken(),
        "a finished call wakes the waiting poll_ready"
    );
    assert!(service.poll_ready().is_ready());
    assert_eq!(controller.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_future_releases_its_permit() {
    let (mut service, _handle, controller) = fixed(1);
    assert!(service.poll_ready().is_ready());
    let call = service.call(request());
    assert!(service.poll_ready().is_pending());
    drop(call);
    assert!(service.is_woken());
    assert!(service.poll_ready().is_ready());
    assert_eq!(controller.in_flight(), 0);
    assert_eq!(controller.limit(), 1, "a dropped call is not evidence");
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_limit_and_start_without_a_permit() {
    let (mut service, _handle, controller) = fixed(1);
    assert!(service.poll_ready().is_ready());
    let mut clone = Spawn::new(service.get_ref().clone());
    assert!(
        clone.poll_ready().is_pending(),
        "the only permit is reserved"
    );
    drop(service);
    assert!(clone.is_woken(), "dropping a reserved permit gives it back");
    assert!(clone.poll_ready().is_ready());
    let _call = clone.call(request());
    assert_eq!(controller.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn back_pressure_sets_the_limit_below_the_level_it_was_sent_at() {
    let (mut service, mut handle, controller) = fixed(4);
    let mut calls = Vec::new();
    for _ in 0..4 {
        assert!(service.poll_ready().is_ready());
        calls.push(service.call(request()));
    }
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(
            handle
                .next_request()
                .await
                .expect("call reached the mock")
                .1,
        );
    }
    let fourth = calls.pop().expect("four calls");
    replies
        .pop()
        .expect("four replies")
        .send_error(status(429, Some(Duration::from_secs(1))));
    assert!(fourth.await.is_err());
    assert_eq!(controller.limit(), 3, "refused as the 4th in flight");
    let stats = controller.stats();
    assert_eq!(stats.back_pressure.too_many_requests, 1);
    assert_eq!(stats.back_pressure.with_retry_after, 1);

    // Three still in flight hold the three permits left: the shrink forgot the 4th.
    assert!(service.poll_ready().is_pending());
    for (call, reply) in calls.into_iter().zip(replies) {
        reply.send_response(ok());
        assert!(call.await.is_ok());
    }
    // The waiting service was handed the first permit back; two more exist, not three.
    assert!(service.poll_ready().is_ready());
    let mut reserved = Vec::new();
    for _ in 0..2 {
        let mut clone = Spawn::new(service.get_ref().clone());
        assert!(clone.poll_ready().is_ready());
        reserved.push(clone);
    }
    let mut fourth = Spawn::new(service.get_ref().clone());
    assert!(
        fourth.poll_ready().is_pending(),
        "only three permits exist now"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_that_are_not_back_pressure_leave_the_limit_alone() {
    let (mut service, mut handle, controller) = fixed(2);
    for error in [
        status(500, None),
        status(400, None),
        BackendError::Transport("reset".into()),
        BackendError::CircuitOpen {
            retry_in: Duration::from_secs(5),
        },
    ] {
        assert!(service.poll_ready().is_ready());
        let _hold = service.call(request());
        assert!(service.poll_ready().is_ready());
        let call = service.call(request());
        let _ = handle
            .next_request()
            .await
            .expect("first call reached the mock");
        let (_, reply) = handle
            .next_request()
            .await
            .expect("second call reached the mock");
        reply.send_error(error.clone());
        assert_eq!(call.await, Err(error.clone()));
        assert_eq!(controller.limit(), 2, "{error}");
    }
    assert_eq!(controller.stats().back_pressure.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clean_round_trip_at_the_limit_doubles_it_for_waiting_callers() {
    let settings = ConcurrencySettings {
        initial: 1,
        max: 4,
        ..ConcurrencySettings::default()
    };
    let controller = Arc::new(Controller::new(settings));
    let shared = Arc::clone(&controller);
    let (mut service, mut handle) =
        mock::spawn_with(move |mock: Mock<ChatRequest, ChatResponse>| {
            let inner: Inner = mock.map_err(unbox as fn(MockError) -> BackendError);
            AdaptiveConcurrency::new(inner, Arc::clone(&shared))
        });
    let mut waiter = Spawn::new(service.get_ref().clone());
    assert!(service.poll_ready().is_ready());
    let call = service.call(request());
    assert_eq!(waiter.poll_ready(), Poll::Pending);
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle
        .next_request()
        .await
        .expect("call reached the mock")
        .1
        .send_response(ok());
    assert!(call.await.is_ok());
    // Demand reached the limit and the round trip was clean: nothing is known about the
    // backend yet, so the limit doubles.
    assert_eq!(controller.limit(), 2);
    assert!(waiter.is_woken());
    assert!(waiter.poll_ready().is_ready());
    // The increase is paced over one round trip, handed out as calls start and finish.
    assert!(service.poll_ready().is_pending());
    tokio::time::advance(Duration::from_millis(100)).await;
    let _second = waiter.call(request());
    assert!(service.is_woken());
    assert!(service.poll_ready().is_ready(), "two permits now");
}
