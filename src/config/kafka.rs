//! `[kafka]`: brokers, topics and pass-through librdkafka properties (checked with
//! librdkafka itself).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// `[kafka]`: brokers, topics and pass-through librdkafka properties.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Request topic; priority lanes add `.<lane>`. Default `sluice.requests`.
    pub request_topic: String,
    /// Reply topic for final replies and streamed chunks. Default `sluice.replies`.
    pub reply_topic: String,
    /// Dead-letter topic for messages that cannot be processed. Default `sluice.dlq`.
    pub dlq_topic: String,
    /// Consumer group of the workers. Default `sluice-workers`.
    pub group_id: String,
    /// Compacted topic where the workers share what they know of each backend (group
    /// pacing). Created (compacted, 7 days' retention) when missing and the cluster allows.
    /// Default `sluice.control`.
    pub control_topic: String,
    /// Priority lanes, highest first. A request with `lane = "x"` goes to
    /// `<request_topic>.x`; a lane not listed here is rejected. The name `default` stands
    /// for the plain request topic (requests without a lane) and places it in the order;
    /// when it is not listed the plain topic ranks last. Default: none.
    pub lanes: Vec<String>,
    /// Arbitrary librdkafka properties applied to every client (SASL, SSL, ...).
    /// In environment variables `_` stands for `.`:
    /// `SLUICE__KAFKA__CLIENT__SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            request_topic: "sluice.requests".into(),
            reply_topic: "sluice.replies".into(),
            dlq_topic: "sluice.dlq".into(),
            group_id: "sluice-workers".into(),
            control_topic: "sluice.control".into(),
            lanes: Vec::new(),
            client: BTreeMap::new(),
        }
    }
}

/// Checks `kafka.client` with librdkafka itself: an unknown property or a bad value is
/// named with librdkafka's reason.
pub(crate) fn check_client_properties(client: &BTreeMap<String, String>) -> Result<(), String> {
    let mut config = ClientConfig::new();
    for (key, value) in client {
        config.set(key, value);
    }
    match config.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, key, value)) => Err(format!(
            "librdkafka refuses {key} = {value:?}: {description}"
        )),
        Err(e) => Err(e.to_string()),
    }
}
