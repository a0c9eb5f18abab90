//! Fallback chains in the worker (`[models.fallbacks]`): when a trigger of the request's
//! model fires, the request is served by the first model of its chain that can take it
//! ([`crate::routing::Routes::fallbacks`]), and its reply says so (`served_by.fallback_from`
//! and `fallback_reason`). Where each trigger is seen:
//!
//! - `deadline`: as the request enters the worker's buffer ([`by_deadline`]): the
//!   expected wait for its pool (what is ahead of it over the pool's recent pace) is
//!   longer than the time left to its deadline, and a model of the chain can start it in
//!   time (a request moved so, and read back from that model's overflow topic, stays
//!   moved: [`moved_to`]);
//! - `breaker_open`: as its turn comes, every backend of its pool has its breaker open
//!   ([`super::dispatch`]); or the breaker opens while its call waits to retry;
//! - `retries_exhausted` and `context_too_long`: after the call, by the error it ended in
//!   ([`trigger_after`]); a stream only while none of its tokens has been passed on.
//!
//! A request with `"fallback": false` (header `x-sluice-fallback: off`) never falls back,
//! and each model of a chain is tried at most once, in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backend::classify::classify;
use crate::backend::BackendError;
use crate::config::FallbackTrigger;
use crate::envelope::{now_ms, Request};
use crate::routing::{Route, Routes};

/// How far back a pool's pace is measured.
const PACE_WINDOW: Duration = Duration::from_secs(10);
/// Fewest answers a pace is read from.
const PACE_MIN_SAMPLES: usize = 4;
/// Requests a pool whose pace is not measured yet is taken to start at once: the
/// default initial concurrency (`concurrency.initial`).
const UNMEASURED_ROOM: usize = 8;
/// Words a backend's 400 uses when a prompt is longer than its context: OpenAI's
/// `context_length_exceeded`, vLLM's "maximum context length", llama.cpp's "context size".
const CONTEXT_WORDS: [&str; 4] = [
    "context_length",
    "context length",
    "context size",
    "context window",
];

/// Whether `request` may be served by its model's fallback chain.
pub(crate) fn allowed(request: &Request) -> bool {
    request.fallback != Some(false)
}

/// The trigger a failed call's error fires, if any: the breaker opened while it waited,
/// a 400 (or 413) whose message says the prompt is longer than the context, or an error
/// retries were spent on (transport, timeout, 5xx, 429).
pub(crate) fn trigger_after(error: &BackendError) -> Option<FallbackTrigger> {
    if let BackendError::CircuitOpen { .. } = error {
        return Some(FallbackTrigger::BreakerOpen);
    }
    if let BackendError::Status {
        status: 400 | 413,
        message,
        ..
    } = error
    {
        let message = message.to_ascii_lowercase();
        if CONTEXT_WORDS.iter().any(|w| message.contains(w)) {
            return Some(FallbackTrigger::ContextTooLong);
        }
    }
    let retried = classify(&Err(error.clone())).is_retryable();
    retried.then_some(FallbackTrigger::RetriesExhausted)
}

/// The recent pace of one pool on this worker: when its last answers ended.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    ended: VecDeque<Instant>,
}

impl Pace {
    /// One more answer ended at `at`.
    pub(crate) fn ended(&mut self, at: Instant) {
        self.ended.push_back(at);
        while self
            .ended
            .front()
            .is_some_and(|first| at.duration_since(*first) > PACE_WINDOW)
        {
            self.ended.pop_front();
        }
    }

    /// Answers per second over the window up to `now`; `None` with too few to tell.
    pub(crate) fn per_second(&self, now: Instant) -> Option<f64> {
        let recent = self
            .ended
            .iter()
            .filter(|at| now.duration_since(**at) <= PACE_WINDOW)
            .count();
        if recent < PACE_MIN_SAMPLES {
            return None;
        }
        let first = self
            .ended
            .iter()
            .find(|at| now.duration_since(**at) <= PACE_WINDOW)?;
        let span = now.duration_since(*first).max(Duration::from_millis(100));
        Some(recent as f64 / span.as_secs_f64())
    }
}

/// How long a request waits behind `ahead` others at `pace` per second: zero with fewer
/// ahead than [`UNMEASURED_ROOM`] while the pace is not measured yet, unknown with more.
pub(crate) fn expected_wait(ahead: usize, pace: Option<f64>) -> Option<Duration> {
    match pace.filter(|p| *p > 0.0) {
        Some(pace) => Some(Duration::from_secs_f64(ahead as f64 / pace)),
        None => (ahead < UNMEASURED_ROOM).then_some(Duration::ZERO),
    }
}

/// The route a request with `deadline_ms` takes as it enters the buffer: `route`, unless
/// its pool is known to be too slow for the deadline, and then the first of its
/// `deadline` chain not known to be too slow as well; or unless its pool's wait is not
/// known (a cold pool with many ahead), and then the first of the chain known to be in
/// time. (`wait_for` gives a pool's expected wait, `None` when unknown.)
pub(crate) fn by_deadline(
    routes: &Routes,
    route: Route,
    deadline_ms: Option<u64>,
    wait_for: impl Fn(&[usize]) -> Option<Duration>,
) -> Route {
    let Some(deadline_ms) = deadline_ms else {
        return route;
    };
    if !routes.falls_back_on(&route.model, FallbackTrigger::Deadline) {
        return route;
    }
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
    let known_late = match wait_for(&route.pool) {
        Some(wait) if wait <= left => return route,
        Some(_) => true,
        None => false,
    };
    let in_time = |next: &Route| match wait_for(&next.pool) {
        Some(wait) => wait <= left,
        // Where the primary will surely be late, a pool of unknown wait may still make it.
        None => known_late,
    };
    routes
        .fallbacks(&route, FallbackTrigger::Deadline)
        .into_iter()
        .find(in_time)
        .unwrap_or(route)
}

/// The route of a request read back from the overflow topic of `pool`: when `pool` is
/// not its model's own but that of a model of its `deadline` chain, the request was moved
/// there as it first entered a worker, and keeps that route (judged again, it could go
/// back to the pool it was moved away from, and expire there).
pub(crate) fn moved_to(routes: &Routes, route: &Route, pool: &[usize]) -> Option<Route> {
    if route.pool == pool {
        return None;
    }
    routes
        .fallbacks(route, FallbackTrigger::Deadline)
        .into_iter()
        .find(|next| next.pool == pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Config, FallbackConfig};

    fn status(status: u16, message: &str) -> BackendError {
        BackendError::Status {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn errors_fire_their_triggers() {
        let vllm = "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens";
        let openai = r#"{"error":{"code":"context_length_exceeded"}}"#;
        let llama = "the request exceeds the available context size, try increasing it";
        for message in [vllm, openai, llama] {
            assert_eq!(
                trigger_after(&status(400, message)),
                Some(FallbackTrigger::ContextTooLong),
                "{message}"
            );
        }
        assert_eq!(trigger_after(&status(400, "messages: required")), None);
        assert_eq!(trigger_after(&status(401, "bad key")), None);
        for retried in [
            status(503, "busy"),
            status(429, "slow down"),
            BackendError::Transport("refused".into()),
            BackendError::Timeout(Duration::from_secs(1)),
        ] {
            assert_eq!(
                trigger_after(&retried),
                Some(FallbackTrigger::RetriesExhausted)
            );
        }
        assert_eq!(trigger_after(&BackendError::DeadlineExceeded), None);
        let open = BackendError::CircuitOpen {
            retry_in: Duration::ZERO,
        };
        assert_eq!(trigger_after(&open), Some(FallbackTrigger::BreakerOpen));
    }

    #[test]
    fn a_pool_s_pace_is_its_recent_answers_per_second() {
        let mut pace = Pace::default();
        let start = Instant::now();
        assert_eq!(pace.per_second(start), None);
        for i in 0..20 {
            pace.ended(start + Duration::from_millis(100 * i));
        }
        let now = start + Duration::from_secs(2);
        let rate = pace.per_second(now).unwrap();
        assert!((9.0..=11.0).contains(&rate), "{rate}");
        assert_eq!(
            expected_wait(50, Some(rate)).map(|w| w.as_secs()),
            Some(5),
            "50 ahead at 10/s"
        );
        assert_eq!(expected_wait(0, None), Some(Duration::ZERO));
        assert_eq!(
            expected_wait(UNMEASURED_ROOM - 1, None),
            Some(Duration::ZERO),
            "a pool not measured yet starts a few at once"
        );
        assert_eq!(expected_wait(UNMEASURED_ROOM, None), None);
        assert_eq!(pace.per_second(now + PACE_WINDOW * 2), None, "forgotten");
    }

    fn routes() -> Routes {
        let mut config = Config::default();
        for (name, model) in [("big", "big-m"), ("small", "small-m")] {
            config.backends.insert(
                name.into(),
                BackendConfig {
                    models: vec![model.into()],
                    ..BackendConfig::default()
                },
            );
        }
        config.models.fallbacks.insert(
            "big-m".into(),
            FallbackConfig {
                to: vec!["small-m".into()],
                on: vec![FallbackTrigger::Deadline],
            },
        );
        Routes::from_config(&config)
    }

    #[test]
    fn a_request_read_back_from_its_fallback_s_overflow_topic_keeps_its_move() {
        let routes = routes();
        let big = routes.resolve(Some("big-m")).unwrap();
        let kept = moved_to(&routes, &big, &[1]).expect("small's pool is of its chain");
        assert_eq!(kept.model, "small-m");
        assert_eq!(kept.fell_back.unwrap().reason, FallbackTrigger::Deadline);
        assert_eq!(
            moved_to(&routes, &big, &[0]),
            None,
            "its own pool: judged again"
        );
        assert_eq!(
            moved_to(&routes, &big, &[0, 1]),
            None,
            "no model of its chain"
        );
    }

    #[test]
    fn a_deadline_the_pool_cannot_meet_goes_to_a_model_that_can() {
        let routes = routes();
        let big = routes.resolve(Some("big-m")).unwrap();
        let in_5_s = Some(now_ms() + 5_000);
        let waits = |big_s: Option<u64>, small_s: Option<u64>| {
            move |pool: &[usize]| {
                let wait = if pool == [0] { big_s } else { small_s };
                wait.map(Duration::from_secs)
            }
        };
        let moved = by_deadline(&routes, big.clone(), in_5_s, waits(Some(20), Some(1)));
        assert_eq!(moved.model, "small-m");
        assert_eq!(moved.fell_back.unwrap().reason, FallbackTrigger::Deadline);
        let unknown = by_deadline(&routes, big.clone(), in_5_s, waits(Some(20), None));
        assert_eq!(
            unknown.model, "small-m",
            "may make it where the big one will not"
        );
        let cold = by_deadline(&routes, big.clone(), in_5_s, waits(None, Some(1)));
        assert_eq!(
            cold.model, "small-m",
            "a cold big pool: to one known to be in time"
        );
        for (why, big_s, small_s, deadline) in [
            ("the big pool makes it", Some(2), Some(0), in_5_s),
            ("the small one would not", Some(20), Some(10), in_5_s),
            ("neither wait is known", None, None, in_5_s),
            ("no deadline", Some(20), Some(0), None),
        ] {
            let kept = by_deadline(&routes, big.clone(), deadline, waits(big_s, small_s));
            assert_eq!(kept.model, "big-m", "{why}");
        }
    }
}
