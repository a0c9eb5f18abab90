//! Reading a `POST /v1/chat/completions` body: only the fields the mock acts on, checked
//! the way OpenAI checks them, each error naming the parameter at fault. Prompt text is
//! measured, never kept.

use serde_json::{Map, Value};

/// A client error in the request body, answered 400 `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    /// The parameter at fault (`messages`, `max_tokens`, ...), when there is one.
    pub param: Option<String>,
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: param.map(str::to_owned),
    }
}

/// What the mock reads from a chat request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatRequest {
    /// `model`, echoed in the reply; `None` when absent.
    pub model: Option<String>,
    /// Characters in all message contents, for the prompt-token estimate.
    pub prompt_chars: u64,
    /// `max_completion_tokens`, else `max_tokens`; `None` when neither is set.
    pub max_tokens: Option<u64>,
    /// `stream`: answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: end a stream with a usage chunk.
    pub include_usage: bool,
}

impl ChatRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidRequest> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            invalid(
                format!("We could not parse the JSON body of your request: {e}."),
                None,
            )
        })?;
        let Value::Object(body) = value else {
            return Err(invalid("The request body must be a JSON object.", None));
        };
        let messages =
            match body.get("messages") {
                None | Some(Value::Null) => {
                    return Err(invalid(
                        "Missing required parameter: 'messages'.",
                        Some("messages"),
                    ))
                }
                Some(Value::Array(messages)) if messages.is_empty() => return Err(invalid(
                    "Invalid 'messages': empty array. Expected an array with at least one message.",
                    Some("messages"),
                )),
                Some(Value::Array(messages)) => messages,
                Some(_) => {
                    return Err(invalid(
                        "Invalid type for 'messages': expected an array.",
                        Some("messages"),
                    ))
                }
            };
        let mut prompt_chars = 0;
        for (i, message) in messages.iter().enumerate() {
            let Value::Object(message) = message else {
                let param = format!("messages[{i}]");
                return Err(invalid(
                    format!("Invalid type for '{param}': expected an object."),
                    Some(&param),
                ));
            };
            prompt_chars += content_chars(message.get("content"));
        }
        let model = match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(model)) => Some(model.clone()),
            Some(_) => {
                return Err(invalid(
                    "Invalid type for 'model': expected a string.",
                    Some("model"),
                ))
            }
        };
        let max_tokens = positive_integer(&body, "max_completion_tokens")?;
        let max_tokens = max_tokens.or(positive_integer(&body, "max_tokens")?);
        let stream = boolean(&body, "stream", "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => {
                boolean(options, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
            }
            Some(_) => {
                return Err(invalid(
                    "Invalid type for 'stream_options': expected an object.",
                    Some("stream_options"),
                ))
            }
        };
        Ok(Self {
            model,
            prompt_chars,
            max_tokens,
            stream,
            include_usage,
        })
    }
}

/// Characters of a message's `content`: a string, or an array of parts whose `text` counts.
fn content_chars(content: Option<&Value>) -> u64 {
    let chars = |text: &str| text.chars().count() as u64;
    match content {
        Some(Value::String(text)) => chars(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(chars)
            .sum(),
        _ => 0,
    }
}

fn positive_integer(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(
                format!("Invalid '{key}': expected a positive integer, got {value}."),
                Some(key),
            )),
        },
    }
}

fn boolean(
    body: &Map<String, Value>,
    key: &str,
    param: &str,
) -> Result<Option<bool>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(
            format!("Invalid type for '{param}': expected a boolean."),
            Some(param),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, InvalidRequest> {
        ChatRequest::parse(body.as_bytes())
    }

    fn param_of(body: &str) -> Option<String> {
        parse(body).expect_err("the body is invalid").param
    }

    #[test]
    fn reads_the_fields_the_mock_acts_on() {
        let body = r#"{"model": "m1", "messages": [{"role": "user", "content": "héllo"},
            {"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url"}]}],
            "max_tokens": 7, "stream": true, "stream_options": {"include_usage": true}}"#;
        let request = parse(body).expect("the body is valid");
        assert_eq!(
            request,
            ChatRequest {
                model: Some("m1".into()),
                prompt_chars: 8,
                max_tokens: Some(7),
                stream: true,
                include_usage: true,
            }
        );
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let body =
            r#"{"messages": [{"role": "user"}], "max_tokens": 7, "max_completion_tokens": 3}"#;
        assert_eq!(parse(body).expect("the body is valid").max_tokens, Some(3));
    }

    #[test]
    fn optional_fields_default() {
        let request =
            parse(r#"{"messages": [{"role": "user", "content": null}], "max_tokens": null}"#)
                .expect("the body is valid");
        assert_eq!(request, ChatRequest::default());
    }

    #[test]
    fn malformed_json_is_refused() {
        let error = parse(r#"{"messages": ["#).expect_err("the body is cut short");
        assert!(
            error
                .message
                .starts_with("We could not parse the JSON body"),
            "{}",
            error.message
        );
        assert_eq!(error.param, None);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        let error = parse("[1, 2]").expect_err("an array is not a request");
        assert_eq!(error.message, "The request body must be a JSON object.");
    }

    #[test]
    fn messages_must_be_a_non_empty_array_of_objects() {
        let error = parse(r#"{"model": "m"}"#).expect_err("messages is missing");
        assert_eq!(error.message, "Missing required parameter: 'messages'.");
        assert_eq!(param_of(r#"{"messages": []}"#).as_deref(), Some("messages"));
        assert_eq!(
            param_of(r#"{"messages": "hi"}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(r#"{"messages": [{}, 3]}"#).as_deref(),
            Some("messages[1]")
        );
    }

    #[test]
    fn max_tokens_must_be_a_positive_integer() {
        for bad in ["0", "-1", "2.5", "\"10\""] {
            let body = format!(r#"{{"messages": [{{}}], "max_tokens": {bad}}}"#);
            let error = parse(&body).expect_err("max_tokens is not a positive integer");
            assert_eq!(
                error.param.as_deref(),
                Some("max_tokens"),
                "max_tokens = {bad}"
            );
            assert!(
                error.message.contains("positive integer"),
                "{}",
                error.message
            );
        }
        let body = r#"{"messages": [{}], "max_completion_tokens": 0}"#;
        assert_eq!(param_of(body).as_deref(), Some("max_completion_tokens"));
    }

    #[test]
    fn flags_must_have_their_types() {
        assert_eq!(
            param_of(r#"{"messages": [{}], "model": 3}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            param_of(r#"{"messages": [{}], "stream": "yes"}"#).as_deref(),
            Some("stream")
        );
        let body = r#"{"messages": [{}], "stream_options": {"include_usage": 1}}"#;
        assert_eq!(
            param_of(body).as_deref(),
            Some("stream_options.include_usage")
        );
    }
}
