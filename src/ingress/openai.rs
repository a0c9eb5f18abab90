//! A sluice reply as an OpenAI-compatible HTTP answer: the completion with 200, or the
//! error in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) with the
//! backend's status, so an OpenAI SDK raises what it would have raised against the
//! backend itself. The backend that was called is named in `x-sluice-backend`. Used by the
//! synchronous answer ([`super::chat`]) and the head of a streamed one ([`super::stream`]).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::ErrorBody;
use crate::envelope::{Reply, ReplyError, Status};

/// The response header that names the backend a request was sent to (`served_by`).
pub(crate) const BACKEND_HEADER: &str = "x-sluice-backend";

/// A final reply as the backend would have answered it: the completion, or the error
/// with the backend's status (502 or 504 when there was none), with the backend that was
/// called in [`BACKEND_HEADER`].
pub(crate) fn reply_response(reply: &Reply) -> Response {
    let mut response = answer(reply);
    let backend = reply.served_by.as_ref().map(|s| s.backend.as_str());
    if let Some(value) = backend.and_then(|b| HeaderValue::from_str(b).ok()) {
        response.headers_mut().insert(BACKEND_HEADER, value);
    }
    response
}

fn answer(reply: &Reply) -> Response {
    match (reply.status, &reply.body, &reply.error) {
        (Status::Ok, Some(body), _) => (StatusCode::OK, Json(body.clone())).into_response(),
        (status, _, error) => {
            let fallback = ReplyError {
                kind: "invalid_response".into(),
                message: "the reply carried no completion".into(),
                status: None,
            };
            let error = error.as_ref().unwrap_or(&fallback);
            let http = match (status, error.status) {
                (Status::Rejected, Some(404)) => StatusCode::NOT_FOUND,
                (Status::Rejected, _) => StatusCode::BAD_REQUEST,
                (Status::Expired, _) => StatusCode::GATEWAY_TIMEOUT,
                (_, Some(code)) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                _ if error.kind == "timeout" => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            openai_error(http, &error.message, openai_type(http), &error.kind)
        }
    }
}

/// OpenAI's `error.type` for a status.
pub(crate) fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 415 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        504 => "timeout",
        _ => "api_error",
    }
}

/// `{"error": {"message", "type", "param", "code"}}` with `status`.
pub(crate) fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    (
        status,
        Json(ErrorBody::new(kind, message.to_string(), code)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Timing;
    use serde_json::{json, Value};

    fn reply(status: Status, body: Option<Value>, error: Option<ReplyError>) -> Reply {
        Reply {
            tenant: None,
            v: 1,
            id: "r".into(),
            status,
            attempts: 1,
            body,
            error,
            usage: None,
            timing: Timing::default(),
            metadata: None,
            served_by: None,
        }
    }

    fn error(kind: &str, status: Option<u16>) -> Option<ReplyError> {
        Some(ReplyError {
            kind: kind.into(),
            message: format!("{kind} happened"),
            status,
        })
    }

    #[test]
    fn replies_answer_as_the_backend_would() {
        let ok = reply(Status::Ok, Some(json!({"choices": []})), None);
        assert_eq!(reply_response(&ok).status(), StatusCode::OK);
        for (r, expected) in [
            (
                reply(Status::Error, None, error("backend_status", Some(400))),
                400,
            ),
            (
                reply(Status::Error, None, error("backend_status", Some(429))),
                429,
            ),
            (reply(Status::Error, None, error("timeout", None)), 504),
            (reply(Status::Error, None, error("transport", None)), 502),
            (reply(Status::Expired, None, error("expired", None)), 504),
            (
                reply(Status::Rejected, None, error("invalid_request", None)),
                400,
            ),
            (
                reply(Status::Rejected, None, error("model_not_found", Some(404))),
                404,
            ),
            (reply(Status::Ok, None, None), 502),
        ] {
            assert_eq!(reply_response(&r).status().as_u16(), expected, "{r:?}");
        }
    }

    #[test]
    fn the_answer_names_the_backend_that_was_called() {
        let mut ok = reply(Status::Ok, Some(json!({"choices": []})), None);
        assert!(reply_response(&ok).headers().get(BACKEND_HEADER).is_none());
        ok.served_by = Some(Box::new(crate::envelope::ServedBy {
            backend: "small-1".into(),
            model: "smollm2-135m".into(),
            fallback_from: None,
            fallback_reason: None,
        }));
        let response = reply_response(&ok);
        assert_eq!(response.headers()[BACKEND_HEADER], "small-1");
        let mut failed = reply(Status::Error, None, error("backend_status", Some(500)));
        failed.served_by = ok.served_by.clone();
        assert_eq!(reply_response(&failed).headers()[BACKEND_HEADER], "small-1");
    }
}
