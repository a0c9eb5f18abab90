//! `POST /v1/requests:batch`: up to `ingress.max_batch_items` submissions in one call,
//! `{"requests": [<a /v1/requests body>, ...]}`, answered `207` with one result per item
//! in order: `{"index", "status", "id", "body"}` for an accepted item (status 202, as
//! Kafka acknowledged it), `{"index", "status", "id"?, "error"}` for a refused one (its
//! own 4xx, or 503 when Kafka did not take it). Nothing is answered 202 that was not
//! stored. A body that is not such a list of JSON objects is a plain 400.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::api::{Accepted, BatchRequest, BatchResponse, BatchResult, ErrorBody};
use super::enqueue::{self, Then};
use super::error::AppError;
use super::metrics::StatusLabel;
use super::state::IngressState;
use super::submit::{self, SubmitBody};
use crate::config::Config;
use crate::envelope::Request;

/// The route: every valid item is written at once (concurrently), each answered by
/// its own outcome.
#[utoipa::path(post, path = "/v1/requests:batch", tag = "requests", request_body = BatchRequest,
    responses(
        (status = 207, description = "One result per item, in order", body = BatchResponse),
        (status = 400, description = "Not a batch", body = ErrorBody),
        (status = 401, description = "No valid API key (ingress.auth on)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let tenant = state.tenants.identify(&headers)?;
        let bytes = submit::json_body(&state.config, &headers, body)?;
        let items = parse(&bytes, &state.config, tenant.as_ref().map(|t| &*t.name))?;
        let accepted = items.into_iter().enumerate().map(|(index, item)| {
            let (state, tenant) = (&state, tenant.as_deref());
            async move {
                let id = item.as_ref().ok().map(|r| r.id.clone());
                let outcome = match item {
                    Ok(request) => enqueue::accept(state, tenant, request, Then::Poll)
                        .await
                        .map(|enqueued| enqueued.body),
                    Err(e) => Err(e),
                };
                let status = outcome
                    .as_ref()
                    .map_or_else(|e| e.status(), |_| StatusCode::ACCEPTED);
                state
                    .metrics
                    .submissions
                    .get_or_create(&StatusLabel {
                        status: status.as_u16().to_string(),
                    })
                    .inc();
                result(index, id.as_deref(), outcome)
            }
        });
        let results = futures::future::join_all(accepted).await;
        Ok::<_, AppError>((StatusCode::MULTI_STATUS, Json(BatchResponse { results })))
    }
    .await;
    answer.into_response()
}

/// The items of a batch body: each parsed into a request or refused with its reason.
pub fn parse(
    bytes: &[u8],
    config: &Config,
    tenant: Option<&str>,
) -> Result<Vec<Result<Request, AppError>>, AppError> {
    let max = config.ingress.max_batch_items;
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| AppError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let not_a_batch = || {
        AppError::BadRequest(
            "a batch is a JSON object {\"requests\": [...]} whose items are \
             POST /v1/requests bodies (JSON objects), and nothing else"
                .into(),
        )
    };
    let batch: BatchRequest = serde_json::from_value(body).map_err(|_| not_a_batch())?;
    let items = batch.requests;
    if let Some(index) = items.iter().position(|item| !item.is_object()) {
        return Err(AppError::BadRequest(format!(
            "requests[{index}] is not a JSON object; each item is a POST /v1/requests body"
        )));
    }
    if items.is_empty() {
        return Err(AppError::BadRequest("requests must not be empty".into()));
    }
    if items.len() > max {
        return Err(AppError::BadRequest(format!(
            "a batch holds at most {max} requests (ingress.max_batch_items); this one has {}",
            items.len()
        )));
    }
    let mut seen = HashSet::new();
    Ok(items
        .iter()
        .map(|item| {
            let request = parse_item(item, config, tenant)?;
            if !seen.insert(request.id.clone()) {
                return Err(AppError::BadRequest(format!(
                    "id {:?} appears more than once in this batch",
                    request.id
                )));
            }
            Ok(request)
        })
        .collect())
}

fn parse_item(item: &Value, config: &Config, tenant: Option<&str>) -> Result<Request, AppError> {
    let submit: SubmitBody = serde_json::from_value(item.clone())
        .map_err(|e| AppError::BadRequest(format!("invalid request: {e}")))?;
    submit::into_request(submit, config, tenant.map(str::to_string))
}

/// One item's entry in the 207 body.
pub fn result(index: usize, id: Option<&str>, outcome: Result<Accepted, AppError>) -> BatchResult {
    let (status, body, error) = match outcome {
        Ok(body) => (StatusCode::ACCEPTED, Some(body), None),
        Err(e) => {
            let detail = ErrorBody::new(e.kind(), e.to_string(), e.kind()).error;
            (e.status(), None, Some(detail))
        }
    };
    BatchResult {
        index,
        status: status.as_u16(),
        id: id.map(str::to_string),
        body,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

    fn config(max: usize) -> Config {
        let mut config = Config::default();
        config.ingress.max_batch_items = max;
        config
    }

    #[test]
    fn good_and_bad_items_keep_their_places() {
        let body = format!(
            r#"{{"requests":[{{"id":"a","body":{CHAT}}},{{"body":{{}}}},{{"body":{CHAT},"extra":1}},{{"id":"a","body":{CHAT}}},{{"body":{CHAT},"lane":"x"}}]}}"#
        );
        let items = parse(body.as_bytes(), &config(10), Some("acme")).unwrap();
        assert_eq!(items.len(), 5);
        let first = items[0].as_ref().unwrap();
        assert_eq!(
            (first.id.as_str(), first.tenant.as_deref()),
            ("a", Some("acme"))
        );
        let errors: Vec<String> = items[1..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            errors[0].contains("body.messages is required"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("unknown field `extra`"), "{}", errors[1]);
        assert!(errors[2].contains("more than once"), "{}", errors[2]);
        assert!(errors[3].contains("unknown lane"), "{}", errors[3]);
    }

    #[test]
    fn a_body_that_is_no_batch_is_refused_whole() {
        for (body, says) in [
            ("[]", "a batch is a JSON object"),
            (r#"{"requests":[]}"#, "must not be empty"),
            (r#"{"requests":{}}"#, "a batch is a JSON object"),
            (r#"{"requests":[],"extra":1}"#, "a batch is a JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"requests":[{"body":{}},7]}"#,
                "requests[1] is not a JSON object",
            ),
        ] {
            let e = parse(body.as_bytes(), &config(10), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let three =
            format!(r#"{{"requests":[{{"body":{CHAT}}},{{"body":{CHAT}}},{{"body":{CHAT}}}]}}"#);
        let e = parse(three.as_bytes(), &config(2), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 2"), "{e}");
    }
}
