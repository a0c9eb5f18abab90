//! The OpenAI shapes the mock answers with, as pure functions: a `chat.completion`, and
//! the `chat.completion.chunk`s of a stream. The content is exactly `tokens` words from a
//! fixed cycle, so tests can count tokens by splitting on spaces.

use serde_json::{json, Value};

use super::request::ChatRequest;

/// Model name echoed when a request names none, and listed by `GET /v1/models`.
pub(crate) const DEFAULT_MODEL: &str = "mock";

/// The words generated, in order, cycling; one word is one token.
const WORDS: [&str; 8] = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs",
];

/// How many tokens a request generates when it does not say, and at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenLimits {
    /// Tokens generated when the request sets neither `max_completion_tokens` nor `max_tokens`.
    pub default: u64,
    /// Most tokens generated for one request, whatever it asks.
    pub cap: u64,
}

/// Why generation stopped, as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The reply hit the request's token limit.
    Length,
    /// The reply ended by itself (the default length, or the mock's cap).
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
        }
    }
}

/// Everything about one reply, decided when the request is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `chatcmpl-<n>`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: FinishReason,
    /// Whether a stream ends with a usage chunk (and carries `"usage": null` before it).
    pub include_usage: bool,
}

impl Reply {
    /// Plans the reply to `request`; `seq` numbers the id.
    pub(crate) fn plan(request: &ChatRequest, limits: TokenLimits, seq: u64, created: u64) -> Self {
        let wanted = request.max_tokens.unwrap_or(limits.default);
        let completion_tokens = wanted.min(limits.cap);
        let finish_reason = match request.max_tokens {
            Some(max) if completion_tokens == max => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        Self {
            id: format!("chatcmpl-{seq}"),
            created,
            model: request
                .model
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            prompt_tokens: prompt_tokens(request.prompt_chars),
            completion_tokens,
            finish_reason,
            include_usage: request.include_usage,
        }
    }

    /// The whole answer to a non-streaming request.
    pub fn completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content(self.completion_tokens)},
                "logprobs": null,
                "finish_reason": self.finish_reason.as_str(),
            }],
            "usage": self.usage(),
        })
    }

    /// The first chunk of a stream: the role, no content yet.
    pub(crate) fn role_chunk(&self) -> Value {
        self.chunk(json!({"role": "assistant"}), None)
    }

    /// The chunk carrying token `index` (from 0); their contents concatenate to
    /// [`content`]`(completion_tokens)`.
    pub(crate) fn content_chunk(&self, index: u64) -> Value {
        let text = if index == 0 {
            word(index).to_owned()
        } else {
            format!(" {}", word(index))
        };
        self.chunk(json!({"content": text}), None)
    }

    /// The chunk saying why generation stopped.
    pub(crate) fn finish_chunk(&self) -> Value {
        self.chunk(json!({}), Some(self.finish_reason))
    }

    /// The last chunk when the request asked for `stream_options.include_usage`.
    pub(crate) fn usage_chunk(&self) -> Value {
        let mut chunk = self.chunk_frame(json!([]));
        chunk["usage"] = self.usage();
        chunk
    }

    fn chunk(&self, delta: Value, finish_reason: Option<FinishReason>) -> Value {
        self.chunk_frame(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason.map(FinishReason::as_str),
        }]))
    }

    fn chunk_frame(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Token `index` of every reply.
pub fn word(index: u64) -> &'static str {
    // The remainder is below WORDS.len(), so it fits in usize.
    WORDS[(index % WORDS.len() as u64) as usize]
}

/// The generated text: exactly `tokens` words separated by single spaces.
pub fn content(tokens: u64) -> String {
    let mut text = String::new();
    for index in 0..tokens {
        if index > 0 {
            text.push(' ');
        }
        text.push_str(word(index));
    }
    text
}

/// Prompt tokens estimated as one per four characters, at least one.
pub fn prompt_tokens(prompt_chars: u64) -> u64 {
    (prompt_chars / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TokenLimits = TokenLimits {
        default: 5,
        cap: 10,
    };

    fn request(max_tokens: Option<u64>) -> ChatRequest {
        ChatRequest {
            model: Some("m1".into()),
            prompt_chars: 41,
            max_tokens,
            ..ChatRequest::default()
        }
    }

    #[test]
    fn tokens_are_the_requested_limit_or_the_default_and_never_above_the_cap() {
        let plan = |max| Reply::plan(&request(max), LIMITS, 1, 0);
        assert_eq!(
            (plan(Some(3)).completion_tokens, plan(Some(3)).finish_reason),
            (3, FinishReason::Length)
        );
        assert_eq!(
            (plan(None).completion_tokens, plan(None).finish_reason),
            (5, FinishReason::Stop)
        );
        assert_eq!(
            (
                plan(Some(99)).completion_tokens,
                plan(Some(99)).finish_reason
            ),
            (10, FinishReason::Stop)
        );
        assert_eq!(plan(Some(10)).finish_reason, FinishReason::Length);
    }

    #[test]
    fn content_is_exactly_the_token_count_in_words() {
        assert_eq!(content(0), "");
        assert_eq!(content(3), "the quick brown");
        assert_eq!(content(20).split(' ').count(), 20);
        assert_eq!(word(8), "the", "the words cycle");
    }

    #[test]
    fn prompt_tokens_are_a_quarter_of_the_characters_at_least_one() {
        assert_eq!(prompt_tokens(0), 1);
        assert_eq!(prompt_tokens(7), 1);
        assert_eq!(prompt_tokens(41), 10);
    }

    #[test]
    fn a_completion_has_the_openai_shape() {
        let reply = Reply::plan(&request(Some(4)), LIMITS, 7, 1_700_000_000);
        assert_eq!(
            reply.completion(),
            json!({
                "id": "chatcmpl-7",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "m1",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "the quick brown fox"},
                    "logprobs": null,
                    "finish_reason": "length",
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
            })
        );
    }

    #[test]
    fn the_model_defaults_to_mock() {
        let reply = Reply::plan(&ChatRequest::default(), LIMITS, 1, 0);
        assert_eq!(reply.completion()["model"], "mock");
    }

    #[test]
    fn chunks_have_the_openai_shape_and_concatenate_to_the_content() {
        let reply = Reply::plan(&request(Some(3)), LIMITS, 2, 5);
        let role = reply.role_chunk();
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["id"], "chatcmpl-2");
        assert_eq!(role["choices"][0]["delta"], json!({"role": "assistant"}));
        assert_eq!(role["choices"][0]["finish_reason"], Value::Null);
        assert!(
            role.get("usage").is_none(),
            "usage is only present when asked for"
        );
        let text: String = (0..3)
            .map(|i| {
                reply.content_chunk(i)["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, content(3));
        let finish = reply.finish_chunk();
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn the_usage_chunk_has_no_choices() {
        let mut request = request(None);
        request.include_usage = true;
        let reply = Reply::plan(&request, LIMITS, 3, 5);
        assert_eq!(
            reply.role_chunk()["usage"],
            Value::Null,
            "OpenAI sends usage: null before the last chunk"
        );
        let usage = reply.usage_chunk();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
        );
    }
}
