//! Topic administration for first runs and tests: create what is missing, leave what
//! exists alone. Production operators usually create topics themselves.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Creates each `(name, partitions)` topic that does not exist yet.
pub(crate) async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[(String, i32)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        super::client_config(kafka, super::ClientKind::Admin, &[], &[]).create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, error = %code, "creating a topic failed");
                })
            }
        }
    }
    Ok(())
}

/// Creates the compacted control topic (`kafka.control_topic`) when it is missing: one
/// partition, each key's latest record kept, records older than a week dropped (a group
/// that starts again begins at the estimate it last wrote, up to a week old:
/// `group::view::REMEMBERED_MAX_AGE_MS`; the week also clears the keys of workers long
/// gone). Best
/// effort: a cluster that refuses (no rights, no CreateTopics) leaves it to the
/// operator, and the workers say so if they cannot use it.
pub(crate) async fn ensure_control_topic(kafka: &KafkaConfig) {
    let topic = &kafka.control_topic;
    let created = async {
        let admin: AdminClient<DefaultClientContext> =
            super::client_config(kafka, super::ClientKind::Admin, &[], &[]).create()?;
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact,delete")
            .set("retention.ms", "604800000")
            .set("segment.ms", "600000");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        admin.create_topics([&new], &options).await
    };
    match tokio::time::timeout(Duration::from_secs(10), created).await {
        Ok(Ok(results)) => match results.into_iter().next() {
            Some(Ok(_)) => tracing::info!(topic = %topic, "control topic created"),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => {}
            Some(Err((_, code))) => {
                tracing::debug!(topic = %topic, error = %code, "control topic not created")
            }
        },
        Ok(Err(e)) => tracing::debug!(topic = %topic, error = %e, "control topic not created"),
        Err(_) => tracing::debug!(topic = %topic, "control topic not created: no answer"),
    }
}
