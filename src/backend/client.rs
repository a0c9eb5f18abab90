//! The OpenAI-compatible HTTP client: `POST {backend.url}/v1/chat/completions` over a
//! pooled reqwest client, one CLIENT span per attempt with `traceparent` forwarded.
//! Prompts and the API key never reach logs or spans.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};
use tracing::Instrument;

use super::stream::{Assembler, ChunkSink, SseReader};
use super::{BackendError, ChatRequest, ChatResponse};
use crate::config::BackendConfig;
use crate::envelope::Usage;
use crate::telemetry::{propagation, semconv};

/// Most bytes of an error body kept for the reply's message.
const MAX_ERROR_BODY: usize = 1024;

/// A client for one backend base URL.
#[derive(Clone)]
pub(crate) struct OpenAiClient {
    http: reqwest::Client,
    /// `{base}/v1/chat/completions`.
    endpoint: String,
    /// `{base}/v1/models`: what the circuit breaker's probe asks.
    models: String,
    /// `Bearer <key>`, marked sensitive so it is never printed.
    authorization: Option<HeaderValue>,
    /// Reported in timeout errors from the transport (the Timeout layer bounds attempts).
    timeout: Duration,
    /// `gen_ai.provider.name` for spans.
    provider: String,
}

impl OpenAiClient {
    pub fn new(config: &BackendConfig) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BackendError::Transport(format!("building the HTTP client: {e}")))?;
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    BackendError::Transport(
                        "backend.api_key holds characters not allowed in a header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            http,
            endpoint: format!("{}/v1/chat/completions", config.url.trim_end_matches('/')),
            models: format!("{}/v1/models", config.url.trim_end_matches('/')),
            authorization,
            timeout: Duration::from_millis(config.timeout_ms),
            provider: config.provider.clone(),
        })
    }

    /// The circuit breaker's probe: `GET {base}/v1/models`. Any answer below 500 (a 404
    /// or 401 included) comes from a live server; no answer within `timeout`, a transport
    /// error or a 5xx means it is still down. Costs no request's attempt and no tokens.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let mut request = self.http.get(&self.models).timeout(timeout);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        match request.send().await {
            Ok(response) if response.status().is_server_error() => {
                Err(format!("GET /v1/models answered {}", response.status()))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(format!("GET /v1/models: {}", self.transport_error(e))),
        }
    }

    /// One attempt, inside a `chat {model}` CLIENT span.
    pub(crate) async fn send_chat(
        &self,
        request: &ChatRequest,
    ) -> Result<ChatResponse, BackendError> {
        let span = semconv::chat_span(request.model(), &self.provider, request.max_tokens());
        let result = self.send(request, &span).instrument(span.clone()).await;
        match &result {
            Ok(response) => {
                let finish: Vec<String> = response.body["choices"]
                    .as_array()
                    .map(|choices| {
                        choices
                            .iter()
                            .filter_map(|c| c["finish_reason"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                semconv::record_chat_response(
                    &span,
                    response.body["model"].as_str(),
                    response.usage.map(|u| u.prompt_tokens),
                    response.usage.map(|u| u.completion_tokens),
                    finish,
                );
            }
            Err(e) => semconv::record_error(&span, e.kind()),
        }
        result
    }

    async fn send(
        &self,
        request: &ChatRequest,
        span: &tracing::Span,
    ) -> Result<ChatResponse, BackendError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        for (key, value) in propagation::context_fields(span) {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
        let body = match &request.stream {
            Some(_) => Cow::Owned(streaming_body(&request.body)),
            None => Cow::Borrowed(&request.body),
        };
        let response = self
            .http
            .post(&self.endpoint)
            .headers(headers)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if let (Some(sink), true) = (&request.stream, status.is_success()) {
            return self.read_stream(response, sink).await;
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(BackendError::Status {
                status: status.as_u16(),
                message: error_message(&bytes),
                retry_after,
            });
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::InvalidResponse(format!("not JSON: {e}")))?;
        if !body.is_object() {
            return Err(BackendError::InvalidResponse("not a JSON object".into()));
        }
        let usage = parse_usage(&body);
        Ok(ChatResponse { body, usage })
    }

    /// Reads a streamed answer: each chunk goes to `sink` as it arrives, and the whole
    /// completion is assembled from them. An error event or a stream that ends without
    /// `[DONE]` is a failure (the sink knows how much was already passed on).
    async fn read_stream(
        &self,
        response: reqwest::Response,
        sink: &ChunkSink,
    ) -> Result<ChatResponse, BackendError> {
        use futures::StreamExt as _;
        let mut bytes = response.bytes_stream();
        let mut reader = SseReader::default();
        let mut assembler = Assembler::default();
        let mut done = false;
        while !done {
            let events = match bytes.next().await {
                Some(read) => reader.feed(&read.map_err(|e| self.transport_error(e))?),
                None => {
                    let last = reader.finish();
                    if last.is_none() {
                        return Err(BackendError::Transport(
                            "the stream ended before [DONE]".into(),
                        ));
                    }
                    last.into_iter().collect()
                }
            };
            for data in events {
                if data.trim() == "[DONE]" {
                    done = true;
                    break;
                }
                let chunk: Value = serde_json::from_str(&data).map_err(|e| {
                    BackendError::InvalidResponse(format!("a stream event is not JSON: {e}"))
                })?;
                if let Some(error) = chunk.get("error") {
                    let message = error["message"].as_str().unwrap_or("no message");
                    return Err(BackendError::InvalidResponse(format!(
                        "the stream ended in an error event: {}",
                        truncate(message)
                    )));
                }
                assembler.add(&chunk);
                sink.send(&chunk);
            }
        }
        let body = assembler.completion();
        let usage = parse_usage(&body);
        Ok(ChatResponse { body, usage })
    }

    fn transport_error(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout(self.timeout)
        } else {
            // Without the URL: it may carry credentials in userinfo.
            BackendError::Transport(e.without_url().to_string())
        }
    }
}

/// The innermost service of the stack; the Timeout layer bounds each attempt.
impl tower::Service<ChatRequest> for OpenAiClient {
    type Response = ChatResponse;
    type Error = BackendError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ChatResponse, BackendError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BackendError>> {
        // reqwest's pool has no limit of its own; the layers above decide how many calls run.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.send_chat(&request).await })
    }
}

/// The body of a streamed call: `stream` on, and the usage chunk asked for (the worker
/// counts tokens; the caller gets that chunk only if it asked).
fn streaming_body(body: &Map<String, Value>) -> Map<String, Value> {
    let mut body = body.clone();
    body.insert("stream".into(), Value::Bool(true));
    let options = body
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(options) = options.as_object_mut() {
        options.insert("include_usage".into(), Value::Bool(true));
    }
    body
}

/// `usage.prompt_tokens` / `usage.completion_tokens` of a completion or final chunk.
pub(crate) fn parse_usage(body: &Value) -> Option<Usage> {
    let usage = body.get("usage")?;
    Some(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        completion_tokens: usage
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// The OpenAI error message (`error.message`) or the start of the body.
fn error_message(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        if let Some(message) = value["error"]["message"].as_str() {
            return truncate(message);
        }
    }
    truncate(&String::from_utf8_lossy(bytes))
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

/// `retry-after-ms` (OpenAI, Azure) wins over `Retry-After` (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let parsed = retry_after(&headers(&[("retry-after", &future)])).unwrap();
        assert!(
            parsed > Duration::from_secs(27) && parsed <= Duration::from_secs(30),
            "{parsed:?}"
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn error_message_prefers_openai_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"too long","type":"x"}}"#),
            "too long"
        );
        assert_eq!(error_message(b"plain failure\n"), "plain failure");
        assert_eq!(error_message(&vec![b'a'; 5000]).len(), MAX_ERROR_BODY);
    }

    #[test]
    fn usage_is_read_from_completion() {
        let body = serde_json::json!({"usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(
            parse_usage(&body),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert_eq!(parse_usage(&serde_json::json!({})), None);
    }
}
