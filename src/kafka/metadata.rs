//! What cluster metadata says of one topic: its partition ids, or why there are none.
//! The one lookup behind every reader that assigns partitions itself ([`super::reader`],
//! [`super::watermarks`], the dead-letter tools); each decides what a missing topic
//! means to it (wait for it, or stop).

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Why a topic's partitions could not be listed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TopicError {
    /// The metadata request itself failed (a broker away, a timeout).
    #[error("reading metadata of topic {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist")]
    Missing(String),
    /// The broker named the topic with an error (not yet created, not authorised, ...).
    #[error("topic {topic}: {code}")]
    Broker {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
}

impl TopicError {
    /// The broker answered and has no partitions of the topic to give (as opposed to
    /// not answering): a reader that waits for the topic to be created waits on.
    pub(crate) fn is_absent(&self) -> bool {
        !matches!(self, TopicError::Metadata { .. })
    }
}

/// The partition ids of `topic`, in order, from a metadata request. Blocking: call it
/// off the async threads.
pub(crate) fn partition_ids<C, K>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, TopicError>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| TopicError::Metadata {
            topic: topic.to_string(),
            source,
        })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(TopicError::Missing(topic.to_string()));
    };
    if let Some(error) = found.error() {
        return Err(TopicError::Broker {
            topic: topic.to_string(),
            code: RDKafkaErrorCode::from(error),
        });
    }
    let mut ids: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(TopicError::NoPartitions(topic.to_string()));
    }
    Ok(ids)
}
