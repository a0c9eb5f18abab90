//! A streamed answer relayed as server-sent events: the chunk records of the reply
//! topic in `seq` order (held back until the gap before them fills, repeats dropped),
//! then `data: [DONE]`; `: keep-alive` comments while nothing else is sent.
//!
//! The answer's head waits for the first event up to one keep-alive interval, so that a
//! request refused at once (a backend 400) is answered with its status, as the backend
//! would. After that the stream is open (200) and later failures are error events,
//! `data: {"error": {...}}`, which OpenAI's SDKs raise. A stream never replays tokens: a
//! chunk from another generation of the answer (a worker restarted it) ends the stream
//! with an error event instead.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::api::ErrorBody;
use super::openai::reply_response;
use super::waiters::{ReplyEvent, Waiter};
use crate::envelope::{Chunk, Reply, Status};

/// The response for a streamed request, once its first event came or a keep-alive
/// interval passed.
pub(crate) async fn respond(
    waiter: Waiter,
    until: Instant,
    keepalive: Duration,
    first_chunk: Histogram,
) -> Response {
    let mut relay = Relay::new(waiter, until, first_chunk);
    let head_until = until.min(Instant::now() + keepalive);
    match tokio::time::timeout_at(head_until, relay.waiter.next()).await {
        Ok(Some(ReplyEvent::Final(reply))) if reply.status != Status::Ok => {
            return reply_response(&reply);
        }
        Ok(Some(event)) => relay.take(event),
        Ok(None) => relay.finished = true,
        Err(_) => {}
    }
    let sse = Sse::new(relay.into_stream())
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"));
    let mut response = sse.into_response();
    // Proxies such as nginx buffer responses unless told not to.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// The ordering and ending of one relayed stream.
struct Relay {
    waiter: Waiter,
    until: Instant,
    started: Instant,
    first_chunk: Option<Histogram>,
    next_seq: u64,
    /// Chunks that came before one they follow.
    held: BTreeMap<u64, Arc<Chunk>>,
    /// The backend's completion id of the chunks relayed, to tell a restarted answer.
    generation: Option<String>,
    /// `data:` of the events ready to send.
    out: VecDeque<String>,
    finished: bool,
}

impl Relay {
    fn new(waiter: Waiter, until: Instant, first_chunk: Histogram) -> Self {
        Self {
            waiter,
            until,
            started: Instant::now(),
            first_chunk: Some(first_chunk),
            next_seq: 0,
            held: BTreeMap::new(),
            generation: None,
            out: VecDeque::new(),
            finished: false,
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut relay| async move {
            loop {
                if let Some(data) = relay.out.pop_front() {
                    return Some((Ok(Event::default().data(data)), relay));
                }
                if relay.finished {
                    return None;
                }
                match tokio::time::timeout_at(relay.until, relay.waiter.next()).await {
                    Ok(Some(event)) => relay.take(event),
                    Ok(None) => relay.finished = true,
                    Err(_) => relay.fail(
                        "timeout",
                        "sync_timeout",
                        format!(
                            "no final reply in time; the request (id {}) may still finish: \
                             GET /v1/requests/{}",
                            relay.waiter.id(),
                            relay.waiter.id()
                        ),
                    ),
                }
            }
        })
    }

    /// Turns one reply-topic event into the SSE events it releases.
    fn take(&mut self, event: ReplyEvent) {
        if self.finished {
            return;
        }
        match event {
            ReplyEvent::Chunk(chunk) => {
                // Any chunk of another generation, even one whose seq was relayed
                // already, means the answer was restarted.
                if !self.same_generation(&chunk.chunk) {
                    self.fail(
                        "api_error",
                        "stream_restarted",
                        "the answer was restarted after part of it was sent (a worker \
                         stopped mid-stream); its final reply is at GET /v1/requests/{id}"
                            .replace("{id}", self.waiter.id()),
                    );
                    return;
                }
                if chunk.seq >= self.next_seq {
                    self.held.entry(chunk.seq).or_insert(chunk);
                }
                while let Some(chunk) = self.held.remove(&self.next_seq) {
                    self.send(&chunk.chunk);
                    self.next_seq += 1;
                }
            }
            ReplyEvent::Final(reply) => self.finish(&reply),
        }
    }

    fn finish(&mut self, reply: &Reply) {
        if !self.held.is_empty() {
            let missing = self
                .held
                .keys()
                .next()
                .map_or(0, |first| first - self.next_seq);
            return self.fail(
                "api_error",
                "stream_gap",
                format!(
                    "{missing} chunk records of this answer are missing from the reply topic; \
                     the whole answer is at GET /v1/requests/{}",
                    self.waiter.id()
                ),
            );
        }
        match (&reply.status, &reply.body, &reply.error) {
            (Status::Ok, Some(body), _) => {
                if self.next_seq == 0 {
                    // No chunk came (a worker that does not stream): the whole answer
                    // as one chunk.
                    self.send(&as_chunk(body));
                }
                self.out.push_back("[DONE]".into());
                self.finished = true;
            }
            (status, _, error) => {
                let (kind, message) = match error {
                    Some(e) => (e.kind.clone(), e.message.clone()),
                    None => (status.as_str().to_string(), "the request failed".into()),
                };
                self.fail("api_error", &kind, message);
            }
        }
    }

    fn same_generation(&mut self, chunk: &Value) -> bool {
        match (chunk["id"].as_str(), &self.generation) {
            (Some(id), Some(known)) => id == known,
            (Some(id), None) => {
                self.generation = Some(id.to_string());
                true
            }
            (None, _) => true,
        }
    }

    fn send(&mut self, chunk: &Value) {
        if let Some(histogram) = self.first_chunk.take() {
            histogram.observe(self.started.elapsed().as_secs_f64());
        }
        self.out.push_back(chunk.to_string());
    }

    fn fail(&mut self, kind: &str, code: &str, message: String) {
        let error = ErrorBody::new(kind, message, code);
        let data = serde_json::to_string(&error).expect("an error body always serializes");
        self.out.push_back(data);
        self.finished = true;
    }
}

/// A whole completion as one `chat.completion.chunk`: each choice's message as its delta.
pub(crate) fn as_chunk(completion: &Value) -> Value {
    let choices: Vec<Value> = completion["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|choice| {
            json!({
                "index": choice["index"],
                "delta": choice["message"],
                "finish_reason": choice["finish_reason"],
            })
        })
        .collect();
    json!({
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "choices": choices,
    })
}

#[cfg(test)]
mod tests;
