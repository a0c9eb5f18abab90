//! RateLimit against a `tower_test` mock backend, in paused time.

use std::future::Ready;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::{advance, Instant};
use tower::util::{AndThen, MapErr};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

use super::service::{RateLimit, ResponseFuture};
use super::*;
use crate::backend::{BackendError, ChatRequest, ChatResponse};
use crate::envelope::Usage;

type Reply = Result<ChatResponse, BackendError>;
type Handle = mock::Handle<ChatRequest, Reply>;
/// The mock, typed as a backend: its replies are `Result`s, its own errors transport errors.
type Backend = AndThen<
    MapErr<mock::Mock<ChatRequest, Reply>, fn(BoxError) -> BackendError>,
    fn(Reply) -> Ready<Reply>,
>;

fn backend() -> (Backend, Handle) {
    let (mock, handle) = mock::pair();
    let backend = mock
        .map_err((|e| BackendError::Transport(e.to_string())) as fn(BoxError) -> BackendError)
        .and_then(std::future::ready as fn(Reply) -> Ready<Reply>);
    (backend, handle)
}

/// Answers every request the backend receives with `reply(request)`.
fn answer_all(mut handle: Handle, reply: impl Fn(&ChatRequest) -> Reply + Send + 'static) {
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            send.send_response(reply(&request));
        }
    });
}

/// Estimated at `prompt_chars / 4` (at least 1) + `max_tokens` tokens.
fn request(prompt_chars: usize, max_tokens: u64) -> ChatRequest {
    let body = json!({
        "messages": [{"role": "user", "content": "x".repeat(prompt_chars)}],
        "max_tokens": max_tokens,
    });
    let serde_json::Value::Object(body) = body else {
        unreachable!("a json! object literal is an object")
    };
    ChatRequest::new(body, None)
}

fn ok(usage: Option<(u64, u64)>) -> Reply {
    Ok(ChatResponse {
        body: json!({}),
        usage: usage.map(|(prompt_tokens, completion_tokens)| Usage {
            prompt_tokens,
            completion_tokens,
        }),
    })
}

fn settings(requests_per_second: Option<f64>, tokens_per_minute: Option<u64>) -> RateSettings {
    RateSettings {
        requests_per_second,
        tokens_per_minute,
        ..RateSettings::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Calls as fast as the service admits them until `until`; returns the start times.
async fn saturate<S>(service: &mut S, until: Instant) -> Vec<Instant>
where
    S: Service<ChatRequest, Response = ChatResponse, Error = BackendError>,
{
    let mut starts = Vec::new();
    loop {
        service.ready().await.expect("the mock backend stays open");
        if Instant::now() >= until {
            return starts;
        }
        starts.push(Instant::now());
        service.call(request(4, 10)).await.expect("mock answers ok");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_per_second_are_enforced() {
    let layer = RateLimitLayer::new(&settings(Some(10.0), None));
    layer.share().set_share(3, 3);
    let (inner, handle) = backend();
    answer_all(handle, |_| ok(None));
    let mut service = layer.layer(inner);

    let start = Instant::now();
    let starts = saturate(&mut service, start + Duration::from_secs(10)).await;
    // The bucket starts empty at the first assignment: calls at 0.1 s, 0.2 s, ... 9.9 s.
    assert_eq!(starts.len(), 99, "10 requests/s over 10 s");
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= ms(99), "{:?}", pair[1] - pair[0]);
    }
    let stats = layer.stats();
    assert_eq!(
        stats.waits_total(),
        100,
        "every call waited, the last one too"
    );
    assert!((stats.wait_seconds_total() - 10.0).abs() < 0.05);
}

#[tokio::test(start_paused = true)]
async fn token_debt_blocks_readiness_until_refilled() {
    // 6,000 tokens/min = 100 tokens/s.
    let layer = RateLimitLayer::new(&settings(None, Some(6_000)));
    layer.share().set_share(1, 1);
    let (inner, _handle) = backend();
    let mut service = mock::Spawn::new(layer.layer(inner));

    assert!(
        service.poll_ready().is_ready(),
        "not in debt: a call may go"
    );
    let _unanswered = service.call(request(4, 500)); // 501 tokens: 5.01 s of debt
    assert!(service.poll_ready().is_pending());
    advance(ms(5_000)).await;
    assert!(!service.is_woken());
    assert!(service.poll_ready().is_pending(), "1 token still owed");
    advance(ms(10)).await;
    assert!(service.is_woken(), "woken exactly when the debt is repaid");
    assert!(service.poll_ready().is_ready());
}

#[tokio::test(start_paused = true)]
async fn usage_refunds_or_charges_the_difference() {
    let layer = RateLimitLayer::new(&settings(None, Some(6_000)));
    layer.share().set_share(1, 1);
    let (inner, mut handle) = backend();
    let mut service = mock::Spawn::new(layer.layer(inner));

    // Estimated 501, used 101: 400 refunded, 1.01 s of debt left.
    assert!(service.poll_ready().is_ready());
    let call = service.call(request(4, 500));
    let (_, send) = handle
        .next_request()
        .await
        .expect("call reached the backend");
    send.send_response(ok(Some((1, 100))));
    call.await.expect("answered ok");
    assert!(service.poll_ready().is_pending());
    advance(ms(1_000)).await;
    assert!(service.poll_ready().is_pending());
    advance(ms(10)).await;
    assert!(service.poll_ready().is_ready());

    // Estimated 501, used 1,001: 500 more charged, 10.01 s of debt.
    let call = service.call(request(4, 500));
    let (_, send) = handle
        .next_request()
        .await
        .expect("call reached the backend");
    send.send_response(ok(Some((1, 1_000))));
    call.await.expect("answered ok");
    advance(ms(10_000)).await;
    assert!(service.poll_ready().is_pending());
    advance(ms(10)).await;
    assert!(service.poll_ready().is_ready());
}

#[tokio::test(start_paused = true)]
async fn errors_settle_by_what_the_backend_did() {
    let layer = RateLimitLayer::new(&settings(None, Some(6_000)));
    layer.share().set_share(1, 1);
    let (inner, mut handle) = backend();
    let mut service = mock::Spawn::new(layer.layer(inner));

    // An error status: the backend generated nothing, the estimate is refunded.
    assert!(service.poll_ready().is_ready());
    let call = service.call(request(4, 500));
    let (_, send) = handle
        .next_request()
        .await
        .expect("call reached the backend");
    send.send_response(Err(BackendError::Status {
        status: 429,
        message: "busy".into(),
        retry_after: None,
    }));
    assert!(call.await.is_err());
    assert!(service.poll_ready().is_ready(), "refunded: not in debt");

    // A timeout: the backend may have done the work, the estimate stands.
    let call = service.call(request(4, 500));
    let (_, send) = handle
        .next_request()
        .await
        .expect("call reached the backend");
    send.send_response(Err(BackendError::Timeout(ms(1))));
    assert!(call.await.is_err());
    assert!(service.poll_ready().is_pending(), "501 tokens of debt");
    advance(ms(5_010)).await;
    assert!(service.poll_ready().is_ready());
}

#[tokio::test(start_paused = true)]
async fn share_changes_take_effect() {
    let layer = RateLimitLayer::new(&settings(Some(100.0), None));
    let share = layer.share();
    let (inner, handle) = backend();
    answer_all(handle, |_| ok(None));
    let mut spawned = mock::Spawn::new(layer.layer(inner.clone()));

    // No assignment yet: share 0, nothing passes, however long.
    assert!(spawned.poll_ready().is_pending());
    advance(Duration::from_secs(60)).await;
    assert!(spawned.poll_ready().is_pending());
    share.set_share(1, 4);
    assert!(spawned.is_woken(), "a share change wakes waiters");
    drop(spawned);

    let mut service = layer.layer(inner);
    let start = Instant::now();
    let quarter = saturate(&mut service, start + Duration::from_secs(4)).await;
    assert!(
        (99..=101).contains(&quarter.len()),
        "25/s: {}",
        quarter.len()
    );

    share.set_share(4, 4);
    let start = Instant::now();
    let whole = saturate(&mut service, start + Duration::from_secs(4)).await;
    assert!((399..=401).contains(&whole.len()), "100/s: {}", whole.len());

    share.set_share(0, 4);
    drop(service); // it holds the reservation `saturate` took last
    advance(ms(500)).await;
    let (inner, _handle) = backend();
    let mut spawned = mock::Spawn::new(layer.layer(inner));
    assert!(spawned.poll_ready().is_pending(), "partitions revoked");
}

#[tokio::test(start_paused = true)]
async fn unlimited_passes_straight_through() {
    let layer = RateLimitLayer::new(&RateSettings::default());
    let (inner, handle) = backend();
    answer_all(handle, |_| ok(Some((1_000_000, 1_000_000))));
    let mut service = layer.layer(inner);
    let start = Instant::now();
    for _ in 0..1_000 {
        service.ready().await.expect("mock stays open");
        service.call(request(4_000, 100_000)).await.expect("ok");
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no share needed, no waiting"
    );
    assert_eq!(layer.stats().waits_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_reservation_is_returned() {
    let layer = RateLimitLayer::new(&settings(Some(1.0), None));
    layer.share().set_share(1, 1);
    let (inner, _handle) = backend();
    let mut first = mock::Spawn::new(layer.layer(inner.clone()));
    let mut second = mock::Spawn::new(layer.layer(inner));
    assert!(first.poll_ready().is_pending(), "the bucket starts empty");
    advance(Duration::from_secs(5)).await;
    assert!(first.poll_ready().is_ready(), "the one saved request");
    assert!(second.poll_ready().is_pending());
    drop(first);
    assert!(second.poll_ready().is_ready(), "the reservation came back");
}

/// The group-wide guarantee: two workers with half the partitions each, idle long enough
/// to fill their buckets, then saturated with four callers each for a minute. Every 10 s
/// window of calls seen by the shared backend stays within 5% of the global limit.
#[tokio::test(start_paused = true)]
async fn two_workers_with_half_shares_stay_within_the_global_limit() {
    const GLOBAL: f64 = 50.0;
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let backend = {
        let seen = seen.clone();
        tower::service_fn(move |_: ChatRequest| {
            seen.lock().expect("test lock").push(Instant::now());
            async {
                tokio::time::sleep(ms(40)).await;
                ok(Some((10, 10)))
            }
        })
    };
    let start = Instant::now();
    let load_from = start + Duration::from_secs(5);
    let until = start + Duration::from_secs(65);
    let mut callers = Vec::new();
    for _worker in 0..2 {
        let layer = RateLimitLayer::new(&settings(Some(GLOBAL), None));
        layer.share().set_share(6, 12);
        let service = layer.layer(backend.clone());
        for _ in 0..4 {
            let mut service = service.clone();
            callers.push(tokio::spawn(async move {
                tokio::time::sleep_until(load_from).await;
                saturate(&mut service, until).await
            }));
        }
    }
    for caller in callers {
        caller.await.expect("caller task");
    }

    let seen = seen.lock().expect("test lock").clone();
    let limit = GLOBAL * 10.0;
    let mut busiest = 0;
    for (i, &from) in seen.iter().enumerate() {
        if from + Duration::from_secs(10) > until {
            break;
        }
        let in_window = seen[i..]
            .iter()
            .take_while(|&&t| t < from + Duration::from_secs(10))
            .count();
        busiest = busiest.max(in_window);
    }
    let steady = seen
        .iter()
        .filter(|&&t| t >= load_from + Duration::from_secs(10))
        .count() as f64
        / 50.0;
    println!(
        "two workers at 1/2 of {GLOBAL}/s: busiest 10 s window {busiest} calls \
         ({:.1}% of the limit), steady rate {steady:.2}/s",
        100.0 * busiest as f64 / limit
    );
    assert!(busiest as f64 <= limit * 1.05, "busiest window {busiest}");
    assert!(busiest as f64 >= limit, "saturated: the limit is reached");
    assert!((steady - GLOBAL).abs() < GLOBAL * 0.01, "steady {steady}/s");
}

#[test]
fn services_and_futures_can_move_to_tasks() {
    fn send<T: Send + 'static>() {}
    send::<RateLimit<Backend>>();
    send::<ResponseFuture<<Backend as Service<ChatRequest>>::Future>>();
    send::<RateShare>();
    send::<RateStats>();
}

#[test]
fn settings_are_validated_by_key() {
    assert!(RateSettings::default().validate("backend").is_ok());
    for (bad, key) in [
        (
            settings(Some(0.0), None),
            "backend.rate.requests_per_second",
        ),
        (
            settings(Some(f64::NAN), None),
            "backend.rate.requests_per_second",
        ),
        (settings(None, Some(0)), "backend.rate.tokens_per_minute"),
    ] {
        let error = bad.validate("backend").expect_err("invalid").to_string();
        assert!(error.contains(key), "{error}");
    }
}
