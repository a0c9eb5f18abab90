//! The Retry layer against scripted backends, in paused time.
use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
    }
}

#[test]
fn backoff_is_bounded_by_the_doubling_cap() {
    let mut rng = StdRng::seed_from_u64(7);
    for attempt in 1..=10 {
        let bound = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = policy().backoff(attempt, None, &mut rng);
            assert!(d <= bound, "attempt {attempt}: {d:?} > {bound:?}");
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > bound / 2,
            "full jitter should spread up to the bound"
        );
    }
}

/// A backend that answers from a script and counts calls.
fn scripted(
    answers: Vec<Result<ChatResponse, BackendError>>,
) -> (
    impl Service<ChatRequest, Response = ChatResponse, Error = BackendError, Future = impl Send>
        + Clone
        + Send,
    Arc<std::sync::Mutex<usize>>,
) {
    let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        answers,
    )));
    let calls = Arc::new(std::sync::Mutex::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_: ChatRequest| {
        *counter.lock().unwrap() += 1;
        let answer = script
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script covers every call");
        async move { answer }
    });
    (service, calls)
}

fn ok() -> Result<ChatResponse, BackendError> {
    Ok(ChatResponse {
        body: serde_json::json!({"ok": true}),
        usage: None,
    })
}

fn status(code: u16, retry_after_ms: Option<u64>) -> Result<ChatResponse, BackendError> {
    Err(BackendError::Status {
        status: code,
        message: "no".into(),
        retry_after: retry_after_ms.map(Duration::from_millis),
    })
}

fn retry_layer(
    max_attempts: u32,
    budget_ratio: f32,
    budget_floor: u32,
) -> (RetryLayer, Arc<std::sync::Mutex<Vec<Outcome>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let policy = RetryPolicy {
        max_attempts,
        ..policy()
    };
    let budget = Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        budget_floor,
        budget_ratio,
    ));
    (
        RetryLayer::new(
            policy,
            budget,
            Arc::new(move |o| record.lock().unwrap().push(o)),
        ),
        seen,
    )
}

fn request(deadline_ms: Option<u64>) -> ChatRequest {
    ChatRequest::new(serde_json::Map::new(), deadline_ms)
}

#[tokio::test(start_paused = true)]
async fn back_pressure_is_retried_after_retry_after() {
    let (backend, calls) = scripted(vec![status(429, Some(700)), status(503, None), ok()]);
    let (layer, seen) = retry_layer(5, 0.2, 10);
    let started = tokio::time::Instant::now();
    let finished = layer.layer(backend).oneshot(request(None)).await.unwrap();
    match finished {
        Finished::Answered {
            result: Ok(_),
            attempts,
        } => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Outcome::BackPressure,
            Outcome::BackPressure,
            Outcome::Success
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn fatal_answers_are_not_retried() {
    let (backend, calls) = scripted(vec![status(400, None)]);
    let (layer, _) = retry_layer(5, 0.2, 10);
    match layer.layer(backend).oneshot(request(None)).await.unwrap() {
        Finished::Answered {
            result: Err(e),
            attempts: 1,
        } => assert_eq!(e.status(), Some(400)),
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded() {
    let (backend, calls) = scripted(vec![
        status(500, None),
        status(502, None),
        status(504, None),
    ]);
    let (layer, _) = retry_layer(3, 0.2, 10);
    match layer.layer(backend).oneshot(request(None)).await.unwrap() {
        Finished::Answered {
            result: Err(e),
            attempts: 3,
        } => assert_eq!(e.status(), Some(504)),
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_slows_other_failures_to_the_longest_backoff() {
    let (backend, calls) = scripted(vec![status(500, None), ok()]);
    let (layer, _) = retry_layer(5, 0.0, 0);
    let started = tokio::time::Instant::now();
    match layer.layer(backend).oneshot(request(None)).await.unwrap() {
        Finished::Answered {
            result: Ok(_),
            attempts: 2,
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(
        started.elapsed(),
        policy().max_backoff,
        "waited the longest backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_slows_back_pressure_to_its_attempts_whole_backoff() {
    // Refused twice, then served: the waits are the first two attempts' whole bounds
    // (100 ms, then 200 ms), not the longest backoff twice.
    let (backend, calls) = scripted(vec![status(429, None), status(503, None), ok()]);
    let (layer, _) = retry_layer(5, 0.0, 0);
    let started = tokio::time::Instant::now();
    match layer.layer(backend).oneshot(request(None)).await.unwrap() {
        Finished::Answered {
            result: Ok(_),
            attempts: 3,
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    // A Retry-After is still obeyed (without jitter), capped at the longest backoff.
    let (backend, _) = scripted(vec![status(429, Some(700)), status(429, Some(9_000)), ok()]);
    let (layer, _) = retry_layer(5, 0.0, 0);
    let started = tokio::time::Instant::now();
    layer.layer(backend).oneshot(request(None)).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(700) + policy().max_backoff
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_does_not_use_up_attempts() {
    let open = || {
        Err(BackendError::CircuitOpen {
            retry_in: Duration::from_secs(1),
        })
    };
    let (backend, calls) = scripted(vec![status(503, None), open(), open(), open(), ok()]);
    let (layer, seen) = retry_layer(2, 0.2, 10);
    match layer.layer(backend).oneshot(request(None)).await.unwrap() {
        Finished::Answered {
            result: Ok(_),
            attempts: 2,
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 5);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Outcome::BackPressure, Outcome::Success]
    );
}

#[tokio::test(start_paused = true)]
async fn deadlines_stop_attempts() {
    let (backend, calls) = scripted(vec![]);
    let (layer, _) = retry_layer(5, 0.2, 10);
    let past = now_ms() - 1;
    match layer
        .layer(backend)
        .oneshot(request(Some(past)))
        .await
        .unwrap()
    {
        Finished::Expired {
            attempts: 0,
            last_error: None,
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 0, "never called past the deadline");

    // The backend asks for 5 s; the deadline is 1 s away: no second attempt.
    let (backend, calls) = scripted(vec![status(429, Some(5_000))]);
    let (layer, _) = retry_layer(5, 0.2, 10);
    match layer
        .layer(backend)
        .oneshot(request(Some(now_ms() + 1_000)))
        .await
        .unwrap()
    {
        Finished::Expired {
            attempts: 1,
            last_error: Some(e),
        } => assert_eq!(e.status(), Some(429)),
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 1);
}

/// Readiness that takes `wait` each time after the first (as behind an open breaker).
struct SlowReadiness<S> {
    inner: S,
    /// Readiness granted so far, shared by clones.
    granted: Arc<std::sync::atomic::AtomicUsize>,
    wait: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Clone> Clone for SlowReadiness<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            granted: self.granted.clone(),
            wait: self.wait,
            sleep: None,
        }
    }
}

impl<S: Service<ChatRequest>> Service<ChatRequest> for SlowReadiness<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.granted.load(SeqCst) > 0 {
            let wait = self.wait;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        std::task::ready!(self.inner.poll_ready(cx))?;
        self.sleep = None;
        self.granted.fetch_add(1, SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> S::Future {
        self.inner.call(request)
    }
}

// Real time: deadlines are wall-clock milliseconds.
#[tokio::test]
async fn a_deadline_passing_while_waiting_for_readiness_stops_attempts() {
    let (backend, calls) = scripted(vec![status(503, None), ok()]);
    let slow = SlowReadiness {
        inner: backend,
        granted: Arc::default(),
        wait: Duration::from_millis(600),
        sleep: None,
    };
    let (layer, _) = retry_layer(5, 0.2, 10);
    match layer
        .layer(slow)
        .oneshot(request(Some(now_ms() + 300)))
        .await
        .unwrap()
    {
        Finished::Expired {
            attempts: 1,
            last_error: Some(e),
        } => assert_eq!(e.status(), Some(503)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "not called again once the deadline passed"
    );
}

#[test]
fn retry_after_is_obeyed_and_capped() {
    let mut rng = StdRng::seed_from_u64(1);
    let d = policy().backoff(1, Some(Duration::from_millis(700)), &mut rng);
    assert!(
        d >= Duration::from_millis(700) && d <= Duration::from_millis(770),
        "{d:?}"
    );
    let capped = policy().backoff(1, Some(Duration::from_secs(3600)), &mut rng);
    assert!(capped <= Duration::from_millis(2200), "{capped:?}");
}
