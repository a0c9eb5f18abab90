//! Streamed replies in OpenAI's server-sent-events format: `data: {chunk}\n\n` events, the
//! role chunk after the base latency, one content chunk per token every `per_token`, the
//! finish chunk, the usage chunk if asked for, then `data: [DONE]`. The slot is held until
//! the last event, or until the client goes away: dropping the body drops the stream and
//! with it the slot.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use futures::{stream, Stream};

use super::capacity::SlotGuard;
use super::completion::Reply;
use super::metrics::Tally;

/// How fast a stream is generated; together they make up the capacity model's service time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// Before the first event.
    pub latency: Duration,
    /// Before each content event.
    pub per_token: Duration,
}

/// The SSE response for `reply`, generated at `pace` while holding `slot`.
pub(crate) fn respond(
    reply: Reply,
    slot: SlotGuard,
    tally: Tally,
    pace: Pace,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let generation = Generation {
        reply,
        pace,
        step: Step::Role,
        slot: Some(slot),
        tally: Some(tally),
    };
    Sse::new(stream::unfold(generation, Generation::next))
}

/// The next event a stream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Role,
    Token(u64),
    Finish,
    Usage,
    Done,
    End,
}

/// One stream in progress; lives as long as the response body.
struct Generation {
    reply: Reply,
    pace: Pace,
    step: Step,
    /// Held until `[DONE]` is sent; `None` after.
    slot: Option<SlotGuard>,
    /// Settled `ok` when `[DONE]` is sent; dropped unsettled (so `cancelled`) if the
    /// client leaves first.
    tally: Option<Tally>,
}

impl Generation {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        let tokens = self.reply.completion_tokens;
        let after_tokens = |next: u64| {
            if next < tokens {
                Step::Token(next)
            } else {
                Step::Finish
            }
        };
        let chunk = match self.step {
            Step::Role => {
                tokio::time::sleep(self.pace.latency).await;
                self.step = after_tokens(0);
                self.reply.role_chunk()
            }
            Step::Token(index) => {
                tokio::time::sleep(self.pace.per_token).await;
                self.step = after_tokens(index + 1);
                self.reply.content_chunk(index)
            }
            Step::Finish => {
                self.step = if self.reply.include_usage {
                    Step::Usage
                } else {
                    Step::Done
                };
                self.reply.finish_chunk()
            }
            Step::Usage => {
                self.step = Step::Done;
                self.reply.usage_chunk()
            }
            Step::Done => {
                self.step = Step::End;
                self.slot = None;
                if let Some(tally) = self.tally.take() {
                    tally.ok(tokens);
                }
                return Some((Ok(Event::default().data("[DONE]")), self));
            }
            Step::End => return None,
        };
        Some((Ok(Event::default().data(chunk.to_string())), self))
    }
}
