//! Streamed completions: the sink a streaming call hands its chunks to, the reader of
//! the backend's server-sent events, and the assembly of those chunks into the
//! `chat.completion` the final reply carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

/// Where a streaming call puts each `chat.completion.chunk` as it arrives. Counts what
/// it passed on: once a chunk has left, a retry would replay tokens, so none is made.
#[derive(Debug, Clone)]
pub struct ChunkSink {
    sender: mpsc::UnboundedSender<Value>,
    relayed: Arc<AtomicU64>,
    /// Whether the caller asked for the usage chunk (`stream_options.include_usage`);
    /// the backend is always asked for it, so that the worker can count tokens.
    pub include_usage: bool,
}

impl ChunkSink {
    /// A sink and the receiving end its chunks arrive at.
    pub fn new(include_usage: bool) -> (Self, mpsc::UnboundedReceiver<Value>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sink = Self {
            sender,
            relayed: Arc::new(AtomicU64::new(0)),
            include_usage,
        };
        (sink, receiver)
    }

    /// Passes one chunk on, unless it only carries the usage the caller did not ask for.
    pub fn send(&self, chunk: &Value) {
        let usage_only =
            chunk["choices"].as_array().is_some_and(Vec::is_empty) && !chunk["usage"].is_null();
        if usage_only && !self.include_usage {
            return;
        }
        if self.sender.send(chunk.clone()).is_ok() {
            self.relayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Chunks passed on so far, by every attempt.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

/// Splits a server-sent-events byte stream into the `data:` payloads of its events.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    buffer: Vec<u8>,
    data: String,
}

impl SseReader {
    /// Feeds bytes as they come; returns the data of every event they completed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
            // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing for us.
        }
        events
    }

    /// The data of an event the stream ended without a blank line after, if any.
    pub fn finish(&mut self) -> Option<String> {
        if let Some(rest) = std::str::from_utf8(&self.buffer)
            .ok()
            .map(str::trim)
            .and_then(|line| line.strip_prefix("data:"))
        {
            let rest = rest.trim_start().to_string();
            self.buffer.clear();
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(&rest);
        }
        (!self.data.is_empty()).then(|| std::mem::take(&mut self.data))
    }
}

/// Builds the `chat.completion` a stream amounts to, chunk by chunk: each choice's
/// role, content (and reasoning content), tool calls and finish reason, plus the usage.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    head: Map<String, Value>,
    choices: Vec<Choice>,
    usage: Option<Value>,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Vec<Map<String, Value>>,
    finish_reason: Value,
}

impl Assembler {
    pub fn add(&mut self, chunk: &Value) {
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(value) = chunk.get(key).filter(|v| !v.is_null()) {
                self.head
                    .entry(key.to_string())
                    .or_insert_with(|| value.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap_or(0) as usize;
            if self.choices.len() <= index {
                self.choices.resize_with(index + 1, Choice::default);
            }
            self.choices[index].add(choice);
        }
    }

    /// The whole completion.
    pub fn completion(self) -> Value {
        let mut body = self.head;
        body.insert("object".into(), json!("chat.completion"));
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| choice.into_value(index))
            .collect();
        body.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            body.insert("usage".into(), usage);
        }
        Value::Object(body)
    }
}

impl Choice {
    fn add(&mut self, choice: &Value) {
        let delta = &choice["delta"];
        if let Some(role) = delta["role"].as_str() {
            self.role.get_or_insert_with(|| role.to_string());
        }
        if let Some(text) = delta["content"].as_str() {
            self.content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(text) = delta["reasoning_content"].as_str() {
            self.reasoning
                .get_or_insert_with(String::new)
                .push_str(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.add_tool_call(call);
        }
        if !choice["finish_reason"].is_null() {
            self.finish_reason = choice["finish_reason"].clone();
        }
    }

    /// Tool calls stream as pieces keyed by `index`: the first carries id, type and name,
    /// later ones more of the arguments.
    fn add_tool_call(&mut self, piece: &Value) {
        let index = piece["index"].as_u64().unwrap_or(0) as usize;
        if self.tool_calls.len() <= index {
            self.tool_calls.resize_with(index + 1, Map::new);
        }
        let call = &mut self.tool_calls[index];
        for key in ["id", "type"] {
            if let Some(value) = piece.get(key).filter(|v| !v.is_null()) {
                call.insert(key.into(), value.clone());
            }
        }
        let function = call
            .entry("function")
            .or_insert_with(|| json!({"name": "", "arguments": ""}));
        for key in ["name", "arguments"] {
            if let Some(text) = piece["function"][key].as_str() {
                let joined = format!("{}{text}", function[key].as_str().unwrap_or(""));
                function[key] = Value::String(joined);
            }
        }
    }

    fn into_value(self, index: usize) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".into(),
            json!(self.role.unwrap_or_else(|| "assistant".into())),
        );
        message.insert("content".into(), json!(self.content));
        if let Some(reasoning) = self.reasoning {
            message.insert("reasoning_content".into(), json!(reasoning));
        }
        if !self.tool_calls.is_empty() {
            message.insert("tool_calls".into(), json!(self.tool_calls));
        }
        json!({
            "index": index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_reads_and_comments_skipped() {
        let mut reader = SseReader::default();
        assert!(reader.feed(b": ping\n\ndata: {\"a\"").is_empty());
        assert_eq!(reader.feed(b":1}\r\n\r\ndata: x\n"), vec!["{\"a\":1}"]);
        assert_eq!(reader.feed(b"data: y\n\n"), vec!["x\ny"]);
        assert_eq!(reader.feed(b"data: [DONE]"), Vec::<String>::new());
        assert_eq!(reader.finish().as_deref(), Some("[DONE]"));
        assert_eq!(reader.finish(), None);
    }

    #[test]
    fn chunks_assemble_into_the_completion() {
        let mut assembler = Assembler::default();
        let chunks = [
            json!({"id":"c1","created":5,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
            json!({"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}),
            json!({"id":"c1","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}),
            json!({"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]}),
            json!({"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"stop"}]}),
            json!({"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}),
        ];
        for chunk in &chunks {
            assembler.add(chunk);
        }
        let body = assembler.completion();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "m");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn the_usage_chunk_goes_only_to_callers_who_asked() {
        let usage = json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}});
        let token = json!({"choices":[{"index":0,"delta":{"content":"a"}}]});
        for (asked, expected) in [(false, 1), (true, 2)] {
            let (sink, mut receiver) = ChunkSink::new(asked);
            sink.send(&token);
            sink.send(&usage);
            assert_eq!(sink.relayed(), expected);
            drop(sink);
            let mut got = 0;
            while receiver.try_recv().is_ok() {
                got += 1;
            }
            assert_eq!(got, expected);
        }
    }
}
