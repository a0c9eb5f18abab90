//! The baseline without sluice (`--direct`): each request goes straight to the
//! OpenAI-compatible backend as a naive client would send it — open loop, no limit on
//! concurrency, and by default no retry. `--direct-retries N` retries 429, 5xx and
//! transport errors up to N times with exponential backoff (100 ms doubling, full jitter,
//! at least the server's `retry-after-ms`/`Retry-After`), for a baseline like a client
//! with a stock retry helper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Map, Value};

use super::ledger::{Ledger, Outcome};
use super::report::DirectCalls;

/// First retry backoff; doubled per retry.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Largest backoff between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A direct client and the calls it made.
pub struct Direct {
    client: reqwest::Client,
    /// `{base}/v1/chat/completions`.
    url: String,
    retries: u32,
    calls: AtomicU64,
    retried: AtomicU64,
    overloads: AtomicU64,
}

/// How one attempt ended.
enum Attempt {
    Ok,
    /// Worth another try, after at least this long (the server's hint).
    Retry {
        reason: String,
        hint: Option<Duration>,
    },
    Fatal(String),
}

impl Direct {
    pub fn new(client: reqwest::Client, base: &str, retries: u32) -> Direct {
        Direct {
            client,
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
            retries,
            calls: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Totals so far.
    pub fn calls(&self) -> DirectCalls {
        DirectCalls {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retried.load(Ordering::Relaxed),
            overload_responses: self.overloads.load(Ordering::Relaxed),
        }
    }

    /// Sends `body` (retrying as configured) and records its one outcome under `id`,
    /// which the caller has already entered as sending.
    pub async fn call(&self, id: &str, body: Map<String, Value>, ledger: &Ledger) {
        // A direct call has no queue to accept it: it is in flight at once.
        ledger.accepted(id);
        let mut retry = 0;
        let failure = loop {
            let (reason, hint) = match self.attempt(&body).await {
                Attempt::Ok => break None,
                Attempt::Fatal(reason) => break Some(reason),
                Attempt::Retry { reason, hint } => (reason, hint),
            };
            if retry >= self.retries {
                break Some(reason);
            }
            retry += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(retry, hint)).await;
        };
        let outcome = Outcome {
            status: if failure.is_none() { "ok" } else { "error" },
            failure,
            queue_ms: None,
        };
        ledger.finish(id, outcome, Instant::now());
    }

    async fn attempt(&self, body: &Map<String, Value>) -> Attempt {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = match self.client.post(&self.url).json(body).send().await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(error = %e, "direct call failed");
                return Attempt::Retry {
                    reason: "transport".into(),
                    hint: None,
                };
            }
        };
        let status = response.status();
        let hint = retry_hint(response.headers());
        // Read the whole answer: the call is over when the body is.
        if let Err(e) = response.bytes().await {
            tracing::debug!(error = %e, "reading a direct answer failed");
            return Attempt::Retry {
                reason: "transport".into(),
                hint: None,
            };
        }
        match status.as_u16() {
            200..=299 => Attempt::Ok,
            429 => {
                self.overloads.fetch_add(1, Ordering::Relaxed);
                Attempt::Retry {
                    reason: "429".into(),
                    hint,
                }
            }
            code @ (408 | 500..=599) => Attempt::Retry {
                reason: code.to_string(),
                hint,
            },
            code => Attempt::Fatal(code.to_string()),
        }
    }
}

/// `retry-after-ms`, else `Retry-After` in seconds.
fn retry_hint(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    number("retry-after-ms")
        .map(Duration::from_millis)
        .or_else(|| number("retry-after").map(Duration::from_secs))
}

/// Full-jitter exponential backoff for retry number `retry` (from 1), at least `hint`.
fn backoff(retry: u32, hint: Option<Duration>) -> Duration {
    let ceiling = BACKOFF_INITIAL
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jittered = ceiling.mul_f64(rand::rng().random::<f64>());
    jittered.max(hint.unwrap_or_default().min(BACKOFF_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_the_hint() {
        for _ in 0..100 {
            assert!(backoff(1, None) <= BACKOFF_INITIAL);
            assert!(backoff(3, None) <= BACKOFF_INITIAL * 4);
            assert!(backoff(30, None) <= BACKOFF_MAX);
            assert!(backoff(1, Some(Duration::from_millis(250))) >= Duration::from_millis(250));
            assert!(backoff(1, Some(Duration::from_secs(60))) <= BACKOFF_MAX);
        }
    }

    #[test]
    fn retry_hints_prefer_milliseconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_hint(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_hint(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_hint(&headers), Some(Duration::from_millis(150)));
    }
}
