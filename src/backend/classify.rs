//! The one classifier: every backend outcome is a success, a retryable failure, a sign
//! of back-pressure (retryable, and the backend is at capacity), or fatal. Retry and
//! flow control both read it, so they never disagree about what an answer means.

use super::{BackendError, ChatResponse};

/// What an outcome means for retry and flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Transient failure unrelated to load (5xx, connection reset): retry.
    Retry,
    /// The backend is saturated (429, 503, timeout): retry later and slow down.
    BackPressure,
    /// Retrying cannot help (4xx other than 408/409/429): answer `error` now.
    Fatal,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry => "retry",
            Outcome::BackPressure => "back_pressure",
            Outcome::Fatal => "fatal",
        }
    }

    pub(crate) fn is_retryable(self) -> bool {
        matches!(self, Outcome::Retry | Outcome::BackPressure)
    }
}

/// Classifies one attempt's result.
pub(crate) fn classify(result: &Result<ChatResponse, BackendError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(BackendError::Status { status, .. }) => classify_status(*status),
        Err(BackendError::Timeout(_)) => Outcome::BackPressure,
        Err(BackendError::Transport(_)) => Outcome::Retry,
        Err(BackendError::InvalidResponse(_)) => Outcome::Retry,
        // The backend was not asked: not a sign of its load, but worth another try later.
        Err(BackendError::CircuitOpen { .. }) => Outcome::Retry,
        Err(BackendError::DeadlineExceeded) => Outcome::Fatal,
        // Its cause was classified when the attempt failed; what is left is final.
        Err(BackendError::StreamInterrupted { .. }) => Outcome::Fatal,
    }
}

/// Classifies an HTTP status from the backend.
pub(crate) fn classify_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        429 | 503 => Outcome::BackPressure,
        408 | 409 => Outcome::Retry,
        500..=599 => Outcome::Retry,
        _ => Outcome::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(code: u16) -> Result<ChatResponse, BackendError> {
        Err(BackendError::Status {
            status: code,
            message: String::new(),
            retry_after: None,
        })
    }

    #[test]
    fn every_outcome_class() {
        let ok = Ok(ChatResponse {
            body: serde_json::json!({}),
            usage: None,
        });
        assert_eq!(classify(&ok), Outcome::Success);
        for code in [429, 503] {
            assert_eq!(classify(&status(code)), Outcome::BackPressure, "{code}");
        }
        for code in [408, 409, 500, 502, 504] {
            assert_eq!(classify(&status(code)), Outcome::Retry, "{code}");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert_eq!(classify(&status(code)), Outcome::Fatal, "{code}");
        }
        assert_eq!(
            classify(&Err(BackendError::Timeout(Duration::from_secs(1)))),
            Outcome::BackPressure
        );
        assert_eq!(
            classify(&Err(BackendError::Transport("reset".into()))),
            Outcome::Retry
        );
        assert!(!Outcome::Fatal.is_retryable());
        assert!(Outcome::BackPressure.is_retryable());
    }
}
