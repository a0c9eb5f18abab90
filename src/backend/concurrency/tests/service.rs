//! The service and its future alone, against `tower_test`'s mock: permits are reserved,
//! spent and returned exactly once, whatever happens to the call. The harness is shared
//! with the tests of group pacing's rules (`crate::group::context`).

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
pub(crate) type Svc = AdaptiveConcurrency<Inner>;

fn unbox(error: MockError) -> BackendError {
    *error
        .downcast::<BackendError>()
        .expect("these tests only send BackendError")
}

pub(crate) type Harness = (
    Spawn<Svc>,
    Handle<ChatRequest, ChatResponse>,
    Arc<Controller>,
);

/// The layer over `tower_test`'s mock, with its controller.
fn with_settings(settings: ConcurrencySettings) -> Harness {
    let controller = Arc::new(Controller::new(settings));
    let shared = Arc::clone(&controller);
    let (service, handle) = mock::spawn_with(move |mock: Mock<ChatRequest, ChatResponse>| {
        let inner: Inner = mock.map_err(unbox as fn(MockError) -> BackendError);
        AdaptiveConcurrency::new(inner, Arc::clone(&shared))
    });
    (service, handle, controller)
}

/// Starts at `initial`, free to move within `[1, max]`.
pub(crate) fn ranging(initial: usize, max: usize) -> Harness {
    with_settings(ConcurrencySettings {
        initial,
        max,
        ..ConcurrencySettings::default()
    })
}

/// A limit that stays at `limit` unless back-pressure lowers it.
pub(crate) fn fixed(limit: usize) -> Harness {
    ranging(limit, limit)
}

pub(crate) fn request() -> ChatRequest {
    ChatRequest::new(serde_json::Map::new(), None)
}

pub(crate) fn ok() -> ChatResponse {
    ChatResponse {
        body: serde_json::json!({}),
        usage: None,
    }
}

pub(crate) fn status(status: u16, retry_after: Option<Duration>) -> BackendError {
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
    let (mut calls, mut replies) = send(&mut service, &mut handle, 4).await;
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
    let (mut service, mut handle, controller) = ranging(1, 4);
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

#[tokio::test(start_paused = true)]
async fn a_retry_after_window_holds_every_increase() {
    let (mut service, mut handle, controller) = ranging(2, 8);
    // Two in flight; the second is refused with Retry-After 5 s: the limit drops to 1.
    assert!(service.poll_ready().is_ready());
    let first = service.call(request());
    assert!(service.poll_ready().is_ready());
    let second = service.call(request());
    let (_, first_reply) = handle.next_request().await.expect("first call");
    let (_, second_reply) = handle.next_request().await.expect("second call");
    second_reply.send_error(status(429, Some(Duration::from_secs(5))));
    assert!(second.await.is_err());
    tokio::time::advance(Duration::from_millis(100)).await;
    first_reply.send_response(ok());
    assert!(first.await.is_ok());
    assert_eq!(controller.limit(), 1);

    // One clean round trip after another at the limit: no increase while the window is
    // open, the usual doubling once it has closed.
    let mut limits = Vec::new();
    for _ in 0..60 {
        assert!(service.poll_ready().is_ready());
        let call = service.call(request());
        let (_, reply) = handle.next_request().await.expect("call reached the mock");
        tokio::time::advance(Duration::from_millis(100)).await;
        reply.send_response(ok());
        assert!(call.await.is_ok());
        limits.push(controller.limit());
    }
    assert!(limits[..45].iter().all(|&limit| limit == 1), "{limits:?}");
    assert!(limits[55..].iter().all(|&limit| limit >= 2), "{limits:?}");
}

/// Random calls, answers, drops, clones and time: the permits in existence always match
/// the limit, however it moved (shrinks forget permits lazily, growth is paced).
#[tokio::test(start_paused = true)]
async fn permits_always_match_the_limit() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let (service, mut handle, controller) = ranging(2, 12);
    let mut rng = StdRng::seed_from_u64(42);
    // Each clone and whether it holds a reserved permit.
    let mut clones: Vec<(Spawn<Svc>, bool)> = (0..6)
        .map(|_| (Spawn::new(service.get_ref().clone()), false))
        .collect();
    let mut calls = Vec::new();
    let mut limits = std::collections::BTreeSet::new();
    for step in 0..3000 {
        let i = rng.random_range(0..clones.len());
        match rng.random_range(0..6) {
            0 | 1 => {
                let (clone, reserved) = &mut clones[i];
                if !*reserved {
                    *reserved = clone.poll_ready().is_ready();
                } else {
                    let call = clone.call(request());
                    *reserved = false;
                    let (_, reply) = handle.next_request().await.expect("call reached the mock");
                    calls.push((call, reply));
                }
            }
            2 if !calls.is_empty() => {
                let (call, reply) = calls.swap_remove(rng.random_range(0..calls.len()));
                match rng.random_range(0..20) {
                    0 => reply.send_error(status(429, None)),
                    1 => reply.send_error(BackendError::Transport("reset".into())),
                    _ => reply.send_response(ok()),
                }
                let _ = call.await;
            }
            3 if !calls.is_empty() => drop(calls.swap_remove(rng.random_range(0..calls.len()))),
            4 => clones[i] = (Spawn::new(service.get_ref().clone()), false),
            _ => tokio::time::advance(Duration::from_millis(rng.random_range(0..150))).await,
        }
        // A waiting clone may have been handed a permit; claim it so it is counted.
        for (clone, reserved) in &mut clones {
            if !*reserved {
                *reserved = clone.poll_ready().is_ready();
            }
        }
        let held = calls.len() + clones.iter().filter(|(_, reserved)| *reserved).count();
        assert!(controller.permits_match_limit(held), "step {step}");
        assert_eq!(controller.in_flight(), calls.len(), "step {step}");
        limits.insert(controller.limit());
    }
    assert!(limits.len() >= 3, "the limit should have moved: {limits:?}");
}

#[tokio::test(start_paused = true)]
async fn an_increase_taken_up_a_moment_late_is_still_judged_within_two_round_trips() {
    let controller = Controller::new(ConcurrencySettings {
        initial: 2,
        max: 64,
        ..ConcurrencySettings::default()
    });
    let round_trip = Duration::from_millis(100);
    let calls = |n: usize| {
        (0..n)
            .map(|_| controller.start(&request()))
            .collect::<Vec<_>>()
    };
    let answer = |tickets: Vec<_>| {
        for ticket in tickets {
            controller.finish(ticket, Some(&Ok(ok())));
        }
    };
    // A clean round trip at the limit: 2 -> 4.
    let first = calls(2);
    tokio::time::advance(round_trip).await;
    answer(first);
    assert_eq!(controller.limit(), 4);
    // Only two calls come at first (the rest of the demand is a moment late): a window
    // a round trip long has not reached the new limit and proves nothing.
    let early = calls(2);
    tokio::time::advance(round_trip).await;
    answer(early);
    assert_eq!(controller.limit(), 4);
    // Then the demand fills it, and a clean answer half a round trip later proves it.
    let full = calls(4);
    tokio::time::advance(round_trip / 2).await;
    answer(full);
    assert_eq!(
        controller.limit(),
        8,
        "the next doubling waits no further round trip"
    );
}

pub(crate) type Call = <Svc as tower::Service<ChatRequest>>::Future;
pub(crate) type Reply = tower_test::mock::SendResponse<ChatResponse>;

/// Sends `n` calls, each with a permit free at once, and takes them at the mock.
pub(crate) async fn send(
    service: &mut Spawn<Svc>,
    handle: &mut Handle<ChatRequest, ChatResponse>,
    n: usize,
) -> (Vec<Call>, Vec<Reply>) {
    let mut calls = Vec::new();
    for _ in 0..n {
        assert!(service.poll_ready().is_ready());
        calls.push(service.call(request()));
    }
    let mut replies = Vec::new();
    for _ in 0..n {
        let (_, reply) = handle.next_request().await.expect("call reached the mock");
        replies.push(reply);
    }
    (calls, replies)
}
