//! The one output a message ends in, as the record written for it: a final reply on its
//! reply topic, or a dead letter. An output too large for its topic becomes a smaller one
//! that is still the message's one outcome ([`Output::shrink`]). A request forwarded to
//! its pool's overflow topic ([`super::overflow`]) ends here too: its outcome comes later,
//! from the forwarded copy.

use super::dead_letter::DeadLetter;
use crate::envelope::{headers, Reply, ReplyError, Status};

/// The one output a message ends in.
pub enum Output {
    Reply { topic: String, reply: Reply },
    DeadLetter(DeadLetter),
    Forward(Forward),
}

/// A request moved, as it is, to the overflow topic of its pool.
pub struct Forward {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The original record's timestamp, when the request was enqueued.
    pub timestamp: Option<i64>,
}

/// The outcome label of [`Output::Forward`]: not a finished message.
pub(crate) const FORWARDED: &str = "forwarded";

/// An output as a record to write.
pub struct Record {
    /// Metric label: the reply status or `dead_letter`.
    pub outcome: &'static str,
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Output {
    pub fn to_record(&self, dlq_topic: &str) -> Record {
        match self {
            Output::Reply { topic, reply } => Record {
                outcome: reply.status.as_str(),
                payload: serde_json::to_vec(reply).expect("a Reply always serializes"),
                headers: vec![
                    (headers::ID.into(), Some(reply.id.clone().into_bytes())),
                    (
                        headers::KIND.into(),
                        Some(headers::KIND_FINAL.as_bytes().to_vec()),
                    ),
                ],
                key: reply.id.clone(),
                topic: topic.clone(),
                timestamp: None,
            },
            Output::DeadLetter(dl) => Record {
                outcome: "dead_letter",
                topic: dlq_topic.to_string(),
                key: dl.key_text(),
                payload: dl.value.clone(),
                headers: dl.headers.clone(),
                timestamp: None,
            },
            Output::Forward(forward) => Record {
                outcome: FORWARDED,
                topic: forward.topic.clone(),
                key: forward.key.clone(),
                payload: forward.payload.clone(),
                headers: forward.headers.clone(),
                timestamp: forward.timestamp,
            },
        }
    }

    /// A smaller output for a cluster that refused this one as too large, still the one
    /// outcome of its message; `None` when nothing is left to drop. A dead letter sheds
    /// its value, then the original key and headers ([`DeadLetter::shrink`]); a reply
    /// becomes an `error` reply of type `reply_too_large` without body and metadata (the
    /// metadata is echoed from the request, so request and completion together can
    /// exceed what Kafka takes although each alone did not). A forwarded request cannot
    /// shrink (only requests well below the limit are forwarded).
    pub(crate) fn shrink(&self) -> Option<Output> {
        match self {
            Output::Forward(_) => None,
            Output::DeadLetter(dl) => dl.shrink().map(Output::DeadLetter),
            Output::Reply { reply, .. } if reply.body.is_none() && reply.metadata.is_none() => None,
            Output::Reply { topic, reply } => Some(Output::Reply {
                topic: topic.clone(),
                reply: Reply {
                    status: Status::Error,
                    body: None,
                    metadata: None,
                    error: Some(ReplyError {
                        kind: "reply_too_large".into(),
                        message: format!(
                            "the {} reply was larger than Kafka accepts (message.max.bytes); \
                             its body and metadata were dropped",
                            reply.status.as_str()
                        ),
                        status: None,
                    }),
                    ..reply.clone()
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, Timing};

    fn ok_reply() -> Reply {
        Reply {
            tenant: None,
            v: 1,
            id: "r1".into(),
            status: Status::Ok,
            attempts: 2,
            body: Some(serde_json::json!({"object": "chat.completion"})),
            error: None,
            usage: Some(envelope::Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
            timing: Timing::default(),
            metadata: Some(serde_json::json!({"blob": "x"})),
            served_by: None,
        }
    }

    #[test]
    fn a_reply_too_large_becomes_an_error_reply_without_body_and_metadata() {
        let output = Output::Reply {
            topic: "replies".into(),
            reply: ok_reply(),
        };
        let Some(Output::Reply { topic, reply }) = output.shrink() else {
            panic!("a reply with a body can shrink");
        };
        assert_eq!(topic, "replies");
        assert_eq!(reply.status, Status::Error);
        assert!(reply.body.is_none() && reply.metadata.is_none());
        let error = reply.error.clone().unwrap();
        assert_eq!(error.kind, "reply_too_large");
        assert!(error.message.contains("the ok reply"), "{}", error.message);
        assert_eq!((reply.id.as_str(), reply.attempts), ("r1", 2));
        let again = Output::Reply {
            topic,
            reply: reply.clone(),
        };
        assert!(again.shrink().is_none(), "nothing left to drop");
        let record = again.to_record("dlq");
        assert_eq!(record.outcome, "error");
        assert_eq!(record.key, "r1");
    }
}
