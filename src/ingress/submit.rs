//! Reading a submission off HTTP: the body of a JSON route (its content type and size
//! checked), then a `POST /v1/requests` body made into a version-1 request envelope,
//! with a clear 4xx message for every way the body can be wrong.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::error::AppError;
use crate::config::Config;
use crate::envelope::{self, Request};

/// The body of `POST /v1/requests` ([`super::api::Submission`]). Unknown fields are
/// rejected so a misspelt `deadline_ms` fails loudly instead of being ignored.
pub(crate) use super::api::Submission as SubmitBody;

/// Parses and validates a submission into the envelope written to Kafka.
pub fn parse(bytes: &[u8], config: &Config, tenant: Option<String>) -> Result<Request, AppError> {
    let submit: SubmitBody = serde_json::from_slice(bytes).map_err(|e| {
        AppError::BadRequest(match e.classify() {
            serde_json::error::Category::Data if !is_object(bytes) => format!(
                "the request body must be a JSON object such as {{\"body\": {{\"messages\": [...]}}}}, \
                 not {}",
                top_level_kind(bytes)
            ),
            serde_json::error::Category::Data => format!("invalid request: {e}"),
            _ => format!("request body is not valid JSON: {e}"),
        })
    })?;
    into_request(submit, config, tenant)
}

/// The body of a JSON route: no content type is taken as JSON (as sent by many simple
/// clients); any other than JSON (curl's form default, text/plain) is refused rather
/// than guessed at.
pub(crate) fn json_body(
    config: &Config,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, AppError> {
    if let Some(value) = headers.get(CONTENT_TYPE) {
        let value = String::from_utf8_lossy(value.as_bytes());
        if !is_json_content_type(&value) {
            return Err(AppError::UnsupportedMediaType(value.into_owned()));
        }
    }
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge {
            limit: config.ingress.max_body_bytes,
        },
        _ => AppError::BadRequest(format!("could not read the request body: {rejection}")),
    })
}

/// Whether the content type names JSON (`application/json`, `application/*+json`), by
/// its media type alone (parameters such as `charset` do not count).
pub(crate) fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// A submission's identity for idempotency: a hash of the envelope as written to Kafka,
/// which is canonical (fields in a fixed order, object keys sorted, no whitespace). Two
/// submissions are the same when their JSON values are: key order and spacing do not
/// count, `1` and `1.0` do.
pub(crate) fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn is_object(bytes: &[u8]) -> bool {
    first_byte(bytes) == Some(b'{')
}

fn top_level_kind(bytes: &[u8]) -> &'static str {
    match first_byte(bytes) {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

pub(crate) fn into_request(
    submit: SubmitBody,
    config: &Config,
    tenant: Option<String>,
) -> Result<Request, AppError> {
    let bad = |m: String| Err(AppError::BadRequest(m));
    let id = match submit.id {
        Some(id) if !envelope::is_valid_id(&id) => {
            return bad(format!(
                "id must be 1-{} characters without '/' or control characters",
                envelope::MAX_ID_LEN
            ))
        }
        Some(id) => id,
        None => envelope::new_id(),
    };
    match submit.body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => {}
        Some(Value::Array(_)) => return bad("body.messages must not be empty".into()),
        Some(_) => return bad("body.messages must be an array of chat messages".into()),
        None => {
            return bad("body.messages is required (an OpenAI chat.completions request)".into())
        }
    }
    if let Some(deadline) = submit.deadline_ms {
        if deadline <= envelope::now_ms() {
            return bad(format!("deadline_ms {deadline} is already in the past"));
        }
    }
    if let Some(lane) = &submit.lane {
        if !config.kafka.lanes.iter().any(|l| l == lane) {
            return bad(if config.kafka.lanes.is_empty() {
                format!("unknown lane {lane:?}: no lanes are configured")
            } else {
                format!(
                    "unknown lane {lane:?}; configured lanes: {}",
                    config.kafka.lanes.join(", ")
                )
            });
        }
    }
    if let Some(key) = &submit.ordering_key {
        if key.is_empty() || key.len() > envelope::MAX_ID_LEN {
            return bad(format!(
                "ordering_key must be 1-{} characters",
                envelope::MAX_ID_LEN
            ));
        }
    }
    if let Some(topic) = &submit.reply_to {
        if !is_valid_topic(topic) {
            return bad("reply_to must be a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)".into());
        }
    }
    Ok(Request {
        v: envelope::VERSION,
        id,
        tenant,
        deadline_ms: submit.deadline_ms,
        lane: submit.lane,
        reply_to: submit.reply_to,
        ordering_key: submit.ordering_key,
        fallback: submit.fallback,
        body: submit.body,
        metadata: submit.metadata,
    })
}

/// Kafka's own rule for topic names.
pub(crate) fn is_valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::default();
        c.kafka.lanes = vec!["interactive".into()];
        c
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes(), &config(), None)
            .unwrap_err()
            .to_string()
    }

    const MESSAGES: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json_content_type(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ] {
            assert!(!is_json_content_type(no), "{no}");
        }
    }

    #[test]
    fn the_same_submission_has_the_same_fingerprint() {
        let envelope = |text: &str| {
            let request = parse(text.as_bytes(), &config(), None).unwrap();
            fingerprint(&serde_json::to_vec(&request).unwrap())
        };
        let a =
            envelope(r#"{"id":"r","body":{"messages":[{"role":"user","content":"hi"}],"n":1}}"#);
        let spaced = envelope(
            r#"{ "body" : { "n" : 1, "messages" : [ {"content":"hi", "role":"user"} ] }, "id":"r" }"#,
        );
        let other =
            envelope(r#"{"id":"r","body":{"messages":[{"role":"user","content":"ho"}],"n":1}}"#);
        assert_eq!(a, spaced, "key order and whitespace do not count");
        assert_ne!(a, other);
    }

    #[test]
    fn minimal_body_gets_a_uuid_v7_id() {
        let request = parse(
            format!(r#"{{"body":{{{MESSAGES}}}}}"#).as_bytes(),
            &config(),
            None,
        )
        .unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(&request.id)
                .unwrap()
                .get_version_num(),
            7
        );
        assert_eq!(request.v, 1);
    }

    #[test]
    fn all_fields_are_carried() {
        let deadline = envelope::now_ms() + 60_000;
        let text = format!(
            r#"{{"id":"req-1","body":{{{MESSAGES}}},"deadline_ms":{deadline},"lane":"interactive",
               "ordering_key":"conv","reply_to":"my.replies","metadata":{{"k":[1]}}}}"#
        );
        let r = parse(text.as_bytes(), &config(), Some("acme".into())).unwrap();
        assert_eq!(r.id, "req-1");
        assert_eq!(r.deadline_ms, Some(deadline));
        assert_eq!(r.lane.as_deref(), Some("interactive"));
        assert_eq!(r.ordering_key.as_deref(), Some("conv"));
        assert_eq!(r.reply_to.as_deref(), Some("my.replies"));
        assert_eq!(r.tenant.as_deref(), Some("acme"));
        assert_eq!(r.metadata, Some(serde_json::json!({"k": [1]})));
    }

    #[test]
    fn every_bad_body_has_a_message() {
        for (body, expected) in [
            ("{not json", "not valid JSON"),
            ("", "not valid JSON"),
            ("[]", "must be a JSON object such as"),
            (r#"[{"body":{}}]"#, "not an array"),
            ("\"text\"", "not a string"),
            ("42", "not a number"),
            (r#"{"id":"x"}"#, "missing field `body`"),
            (r#"{"body":"text"}"#, "invalid type"),
            (r#"{"body":{}}"#, "body.messages is required"),
            (r#"{"body":{"messages":[]}}"#, "must not be empty"),
            (r#"{"body":{"messages":"hi"}}"#, "must be an array"),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"id":""}}"#),
                "id must be",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"id":7}}"#),
                "invalid type",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"deadline_ms":"soon"}}"#),
                "invalid type",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"deadline_ms":1}}"#),
                "in the past",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"lane":"gold"}}"#),
                "unknown lane",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"reply_to":"a b"}}"#),
                "reply_to",
            ),
            (
                &format!(r#"{{"body":{{{MESSAGES}}},"dedline_ms":5}}"#),
                "unknown field `dedline_ms`",
            ),
        ] {
            let message = err(body);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }
}
