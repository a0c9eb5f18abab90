//! Retrying one request: exponential backoff with full jitter, the backend's
//! Retry-After honoured (capped), a bounded number of attempts, and never past the
//! request's deadline. The classifier decides what is retryable.

use std::time::Duration;

use rand::Rng;

use super::classify::{classify, Outcome};
use super::client::OpenAiClient;
use super::{BackendError, ChatRequest, ChatResponse};
use crate::config::BackendConfig;
use crate::envelope::now_ms;

/// How a request is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Most attempts, the first included.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles per retry.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff, and cap on a backend's Retry-After.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &BackendConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(config.retry_max_backoff_ms),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based). A Retry-After from the
    /// backend is obeyed (plus up to 10% jitter so waiters do not return in lockstep);
    /// otherwise full jitter over the exponential bound.
    pub fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(wait) = retry_after {
            let wait = wait.min(self.max_backoff);
            let jitter = rng.random_range(0.0..=0.1) * wait.as_secs_f64();
            return wait + Duration::from_secs_f64(jitter);
        }
        let exponent = attempt.saturating_sub(1).min(30);
        let bound = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        Duration::from_secs_f64(rng.random_range(0.0..=1.0) * bound.as_secs_f64())
    }
}

/// How a retried call ended.
#[derive(Debug)]
pub enum Finished {
    /// Success, a fatal answer, or the last retryable failure once attempts ran out.
    Answered {
        result: Result<ChatResponse, BackendError>,
        attempts: u32,
    },
    /// The deadline passed (or would pass during the next backoff) before success.
    Expired {
        attempts: u32,
        last_error: Option<BackendError>,
    },
}

/// Calls the backend until success, a fatal answer, attempts run out, or the deadline.
/// `on_attempt` sees the classified outcome of every attempt (for metrics).
pub async fn call_with_retry(
    client: &OpenAiClient,
    request: &ChatRequest,
    policy: RetryPolicy,
    deadline_ms: Option<u64>,
    on_attempt: impl Fn(Outcome),
) -> Finished {
    let mut attempts = 0;
    let mut last_error = None;
    loop {
        if deadline_ms.is_some_and(|d| now_ms() >= d) {
            return Finished::Expired {
                attempts,
                last_error,
            };
        }
        attempts += 1;
        let result = client.send_chat(request).await;
        let outcome = classify(&result);
        on_attempt(outcome);
        if !outcome.is_retryable() || attempts >= policy.max_attempts {
            return Finished::Answered { result, attempts };
        }
        let error = result.expect_err("a retryable outcome is always an error");
        let wait = policy.backoff(attempts, error.retry_after(), &mut rand::rng());
        if deadline_ms.is_some_and(|d| now_ms() + wait.as_millis() as u64 >= d) {
            return Finished::Expired {
                attempts,
                last_error: Some(error),
            };
        }
        tracing::debug!(attempt = attempts, wait_ms = wait.as_millis() as u64, error = %error,
            back_pressure = (outcome == Outcome::BackPressure), "retrying backend call");
        last_error = Some(error);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
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
            let bound =
                Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
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
}
