//! Topic administration for first runs and tests: create what is missing, leave what
//! exists alone. Production operators usually create topics themselves.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Creates each `(name, partitions)` topic that does not exist yet.
pub async fn ensure_topics(
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
