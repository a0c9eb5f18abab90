//! CircuitBreaker against a `tower_test` mock backend, in paused time.

use std::future::Ready;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::{advance, Instant};
use tower::util::{AndThen, MapErr};
use tower::{BoxError, Layer, ServiceExt};
use tower_test::mock;

use super::service::{CircuitBreaker, ResponseFuture};
use super::*;
use crate::backend::{BackendError, ChatRequest, ChatResponse};

type Reply = Result<ChatResponse, BackendError>;
type Handle = mock::Handle<ChatRequest, Reply>;
/// The mock, typed as a backend: its replies are `Result`s, its own errors transport errors.
type Backend = AndThen<
    MapErr<mock::Mock<ChatRequest, Reply>, fn(BoxError) -> BackendError>,
    fn(Reply) -> Ready<Reply>,
>;
type Breaker = mock::Spawn<CircuitBreaker<Backend>>;

fn settings() -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: 5,
        error_ratio: 0.5,
        min_calls: 10,
        window_ms: 10_000,
        open_ms: 5_000,
        max_open_ms: 12_000,
    }
}

/// The test's side of the breaker's probe: each probe waits for the next answer sent here.
type Answers = tokio::sync::mpsc::UnboundedSender<Result<(), String>>;

/// A breaker over a mock backend, its handle, the mock's handle, and the probe's answers.
fn breaker(settings: &BreakerSettings) -> (Breaker, BreakerHandle, Handle, Answers) {
    let (mock, handle) = mock::pair();
    let backend: Backend = mock
        .map_err((|e| BackendError::Transport(e.to_string())) as fn(BoxError) -> BackendError)
        .and_then(std::future::ready as fn(Reply) -> Ready<Reply>);
    let (answers, received) = tokio::sync::mpsc::unbounded_channel();
    let received = Arc::new(tokio::sync::Mutex::new(received));
    let probe: Probe = Arc::new(move || {
        let received = received.clone();
        Box::pin(async move {
            match received.lock().await.recv().await {
                Some(Err(reason)) if reason == "panic" => panic!("the probe panicked"),
                Some(answer) => answer,
                None => Err("no more answers".into()),
            }
        })
    });
    let layer = CircuitBreakerLayer::new(settings, probe);
    (
        mock::Spawn::new(layer.layer(backend)),
        layer.handle(),
        handle,
        answers,
    )
}

/// Lets the breaker's own task (the open-period timer and its probe) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn request() -> ChatRequest {
    ChatRequest::new(serde_json::Map::new(), None)
}

fn ok() -> Reply {
    Ok(ChatResponse {
        body: json!({}),
        usage: None,
    })
}

fn status(code: u16) -> Reply {
    Err(BackendError::Status {
        status: code,
        message: String::new(),
        retry_after: None,
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One call through the breaker, answered by the backend with `reply`.
async fn call(service: &mut Breaker, backend: &mut Handle, reply: Reply) -> Reply {
    assert!(service.poll_ready().is_ready(), "the breaker admits a call");
    let response = service.call(request());
    let (_, send) = backend.next_request().await.expect("reached the backend");
    send.send_response(reply);
    response.await
}

/// Opens the breaker with `consecutive_failures` 500s.
async fn trip(service: &mut Breaker, backend: &mut Handle) {
    for _ in 0..settings().consecutive_failures {
        let _ = call(service, backend, status(500)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    for _ in 0..4 {
        let _ = call(&mut service, &mut backend, status(500)).await;
    }
    call(&mut service, &mut backend, ok()).await.expect("ok");
    for _ in 0..4 {
        let _ = call(&mut service, &mut backend, status(502)).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "a success resets the run"
    );
    let _ = call(
        &mut service,
        &mut backend,
        Err(BackendError::Timeout(ms(1))),
    )
    .await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.opens_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_failure_that_opens_it_is_returned_as_it_was() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    for _ in 0..5 {
        let result = call(&mut service, &mut backend, status(500)).await;
        assert_eq!(
            result.unwrap_err().status(),
            Some(500),
            "the real answer, the fifth (which opens it) included: it was an attempt"
        );
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert!(service.poll_ready().is_pending(), "the next attempt waits");
}

#[tokio::test(start_paused = true)]
async fn opens_on_the_error_ratio() {
    let settings = BreakerSettings {
        consecutive_failures: 0,
        ..settings()
    };
    let (mut service, handle, mut backend, _answers) = breaker(&settings);
    for i in 0..9 {
        let reply = if i % 2 == 0 { ok() } else { status(503) };
        let _ = call(&mut service, &mut backend, reply).await;
        advance(ms(100)).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "4 of 9: too few calls"
    );
    let _ = call(&mut service, &mut backend, status(503)).await;
    assert_eq!(handle.state(), BreakerState::Open, "5 of 10 failed");
}

#[tokio::test(start_paused = true)]
async fn old_failures_leave_the_window() {
    let settings = BreakerSettings {
        consecutive_failures: 0,
        ..settings()
    };
    let (mut service, handle, mut backend, _answers) = breaker(&settings);
    for _ in 0..5 {
        let _ = call(&mut service, &mut backend, status(500)).await;
    }
    advance(ms(11_000)).await;
    for i in 0..10 {
        let reply = if i < 6 { ok() } else { status(500) };
        let _ = call(&mut service, &mut backend, reply).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed, "4 of the last 10");
}

#[tokio::test(start_paused = true)]
async fn fails_fast_while_open_without_calling_the_backend() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    let mut readied_before = service.clone();
    assert!(readied_before.poll_ready().is_ready());
    trip(&mut service, &mut backend).await;
    advance(ms(1_000)).await;

    let result = readied_before.call(request()).await;
    assert_eq!(
        result,
        Err(BackendError::CircuitOpen {
            retry_in: ms(4_000)
        })
    );
    assert!(
        backend.poll_request().is_pending(),
        "the backend was not called"
    );
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_while_open_and_while_the_probe_is_out() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    trip(&mut service, &mut backend).await;
    let mut other = service.clone();
    assert!(service.poll_ready().is_pending());
    assert!(other.poll_ready().is_pending());

    advance(ms(4_999)).await;
    settle().await;
    assert!(!service.is_woken());
    assert!(service.poll_ready().is_pending());
    advance(ms(1)).await;
    settle().await;
    assert!(service.is_woken(), "woken when the open period ends");
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert!(service.poll_ready().is_pending(), "the probe is out");
    assert!(other.poll_ready().is_pending(), "for everyone");
    assert!(
        backend.poll_request().is_pending(),
        "the probe is not a chat call: no request spends an attempt on it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_probe_closes() {
    let (mut service, handle, mut backend, answers) = breaker(&settings());
    trip(&mut service, &mut backend).await;
    advance(ms(5_000)).await;
    settle().await;
    assert!(service.poll_ready().is_pending(), "waits for the probe");
    answers.send(Ok(())).expect("the breaker is alive");
    settle().await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert!(service.is_woken(), "the close wakes waiters");
    call(&mut service, &mut backend, ok()).await.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
    let (mut service, handle, mut backend, answers) = breaker(&settings());
    trip(&mut service, &mut backend).await;
    // Open periods: 5 s, then 10 s, then 12 s (capped, not 20 s).
    for period in [5_000, 10_000, 12_000] {
        assert!(service.poll_ready().is_pending());
        advance(ms(period - 1)).await;
        settle().await;
        assert_eq!(handle.state(), BreakerState::Open, "after {period} - 1 ms");
        advance(ms(1)).await;
        settle().await;
        assert_eq!(handle.state(), BreakerState::HalfOpen, "after {period} ms");
        answers
            .send(Err("connection refused".into()))
            .expect("the breaker is alive");
        settle().await;
        assert_eq!(handle.state(), BreakerState::Open);
    }
    assert_eq!(handle.opens_total(), 4);

    // A healthy probe resets the period.
    advance(ms(12_000)).await;
    settle().await;
    answers.send(Ok(())).expect("the breaker is alive");
    settle().await;
    assert_eq!(handle.state(), BreakerState::Closed);
    trip(&mut service, &mut backend).await;
    advance(ms(5_000)).await;
    settle().await;
    assert_eq!(handle.state(), BreakerState::HalfOpen, "back to 5 s");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_finish_is_sent_again() {
    let (mut service, handle, mut backend, answers) = breaker(&settings());
    trip(&mut service, &mut backend).await;
    answers
        .send(Err("panic".into()))
        .expect("the breaker is alive");
    advance(ms(5_000)).await;
    settle().await;
    assert_eq!(handle.state(), BreakerState::HalfOpen, "no answer yet");
    answers.send(Ok(())).expect("the breaker is alive");
    advance(ms(1_000)).await;
    settle().await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "the second probe answered"
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_never_open_it() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    for _ in 0..100 {
        let _ = call(&mut service, &mut backend, status(429)).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.opens_total(), 0);
    for _ in 0..5 {
        let _ = call(&mut service, &mut backend, status(503)).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "503 is a failure, 429 is not"
    );
}

#[tokio::test(start_paused = true)]
async fn request_errors_never_open_it() {
    let (mut service, handle, mut backend, _answers) = breaker(&settings());
    for i in 0..100 {
        let code = [400, 401, 404, 413, 422][i % 5];
        let _ = call(&mut service, &mut backend, status(code)).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.opens_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_watch_channel_reports_every_transition() {
    let (mut service, handle, mut backend, answers) = breaker(&settings());
    let mut states = handle.subscribe();
    assert_eq!(*states.borrow_and_update(), BreakerState::Closed);

    trip(&mut service, &mut backend).await;
    states.changed().await.expect("the breaker is alive");
    assert_eq!(*states.borrow_and_update(), BreakerState::Open);

    // Nothing polls the service: the breaker's own task turns it half-open, on time.
    let opened = Instant::now();
    tokio::time::timeout(ms(60_000), states.changed())
        .await
        .expect("turns half-open on its own")
        .expect("the breaker is alive");
    assert_eq!(*states.borrow_and_update(), BreakerState::HalfOpen);
    assert_eq!(opened.elapsed(), ms(5_000));

    answers.send(Ok(())).expect("the breaker is alive");
    states.changed().await.expect("the breaker is alive");
    assert_eq!(*states.borrow_and_update(), BreakerState::Closed);
    assert_eq!(BreakerState::Closed.as_gauge(), 0);
    assert_eq!(BreakerState::Open.as_gauge(), 2);
}

#[tokio::test(start_paused = true)]
async fn results_from_before_an_opening_are_ignored() {
    let (mut service, handle, mut backend, answers) = breaker(&settings());
    let mut slow = service.clone();
    assert!(slow.poll_ready().is_ready());
    let slow_call = slow.call(request());
    let (_, slow_send) = backend.next_request().await.expect("reached the backend");

    trip(&mut service, &mut backend).await;
    advance(ms(5_000)).await;
    settle().await;
    answers.send(Ok(())).expect("the breaker is alive");
    settle().await;
    assert_eq!(handle.state(), BreakerState::Closed);
    for _ in 0..4 {
        let _ = call(&mut service, &mut backend, status(500)).await;
    }

    // Started in the previous closed period: not the fifth failure in a row of this one.
    slow_send.send_response(status(500));
    let _ = slow_call.await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[test]
fn settings_are_validated_by_key() {
    assert!(BreakerSettings::default().validate("backend").is_ok());
    let bad = BreakerSettings {
        max_open_ms: 1_000,
        ..BreakerSettings::default()
    };
    let error = bad
        .validate("backend")
        .expect_err("max below open")
        .to_string();
    assert!(error.contains("backend.breaker.max_open_ms"), "{error}");
}

#[test]
fn services_and_futures_can_move_to_tasks() {
    fn send<T: Send + 'static>() {}
    send::<CircuitBreaker<Backend>>();
    send::<ResponseFuture<<Backend as tower::Service<ChatRequest>>::Future>>();
    send::<BreakerHandle>();
}
