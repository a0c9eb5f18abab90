//! What a tenant has left of its limits, and how it is told: OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, on a 202 and on the
//! 429 that refuses it ([`super::error::AppError::RateLimited`] carries one).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// What a tenant has left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub requests: Option<Level>,
    pub tokens: Option<Level>,
}

/// One limit's state: its size, what is left, and when it is full again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl Quota {
    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (what, level) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(level) = level else { continue };
            for (part, value) in [
                ("limit", level.limit.to_string()),
                ("remaining", level.remaining.to_string()),
                ("reset", openai_duration(level.reset)),
            ] {
                let name = HeaderName::try_from(format!("x-ratelimit-{part}-{what}"))
                    .expect("x-ratelimit-* names are lowercase ASCII");
                headers.insert(
                    name,
                    HeaderValue::try_from(value)
                        .expect("digits and unit letters are valid header text"),
                );
            }
        }
    }
}

/// A duration as OpenAI writes it in rate-limit headers: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    let whole = d.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_openais() {
        let quota = Quota {
            requests: Some(Level {
                limit: 60,
                remaining: 59,
                reset: Duration::from_millis(1000),
            }),
            tokens: Some(Level {
                limit: 1000,
                remaining: 0,
                reset: Duration::from_secs(360),
            }),
        };
        let mut headers = HeaderMap::new();
        quota.apply(&mut headers);
        for (name, value) in [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ] {
            assert_eq!(headers[name], value, "{name}");
        }
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
    }
}
