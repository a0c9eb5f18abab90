//! An in-process Kafka-protocol broker for `sluice dev` and hermetic tests: librdkafka's
//! mock cluster. Real TCP listeners on 127.0.0.1, so any Kafka client can connect.
//!
//! Limits, stated plainly: everything is in memory and lost on exit; each partition keeps
//! only about 5 MiB (older records are dropped); no transactions isolation. For anything
//! beyond a first run, point sluice at a real cluster.

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::ClientConfig;

/// A running mock cluster; dropped, it stops.
pub struct EmbeddedBroker {
    /// The client that owns the mock cluster; the cluster lives as long as it does.
    owner: BaseProducer,
    bootstrap_servers: String,
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers with group rebalances made immediate.
    pub fn start(brokers: u32) -> Result<Self, KafkaError> {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("log_level", "3")
            .create()?;
        let bootstrap_servers = owner
            .client()
            .mock_cluster()
            .ok_or(KafkaError::ClientCreation(
                "mock cluster did not start".into(),
            ))?
            .bootstrap_servers();
        // SAFETY: the handle belongs to `owner`, which is alive for this call; the
        // function only sets an integer on the cluster.
        unsafe {
            let handle =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            if !handle.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(handle, 0);
            }
        }
        Ok(Self {
            owner,
            bootstrap_servers,
        })
    }

    /// Makes broker `broker_id` tell clients to connect to `host:port` (something there
    /// must forward to it: see `dev`'s fixed address).
    pub(crate) fn advertise(
        &mut self,
        broker_id: i32,
        host: &str,
        port: u16,
    ) -> Result<(), KafkaError> {
        let host_c = std::ffi::CString::new(host)
            .map_err(|_| KafkaError::ClientCreation("host contains a NUL byte".into()))?;
        // SAFETY: the handle belongs to `owner`, alive for this call; librdkafka copies
        // the host string.
        unsafe {
            let handle =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr());
            if handle.is_null() {
                return Err(KafkaError::ClientCreation("no mock cluster".into()));
            }
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                handle,
                broker_id,
                host_c.as_ptr(),
                i32::from(port),
            );
        }
        self.bootstrap_servers = format!("{host}:{port}");
        Ok(())
    }

    /// `host:port` list clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Creates a topic (the mock cluster has no CreateTopics API and no auto-create for consumers).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        let mock = self
            .owner
            .client()
            .mock_cluster()
            .expect("the owner client was created with test.mock.num.brokers");
        mock.create_topic(name, partitions, 1)
    }

    /// For fault injection in tests: puts `topic`'s `partition` on broker `broker_id`
    /// (1-based), so that taking that broker down takes only what it leads.
    pub fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker_id: i32,
    ) -> Result<(), KafkaError> {
        self.mock()
            .partition_leader(topic, partition, Some(broker_id))
    }

    /// For fault injection in tests: broker `broker_id` (1-based) answers every request
    /// `delay` late (zero: at once again). Connections stay up.
    pub fn set_broker_delay(
        &self,
        broker_id: i32,
        delay: std::time::Duration,
    ) -> Result<(), KafkaError> {
        self.mock().broker_round_trip_time(broker_id, delay)
    }

    /// For fault injection in tests: `group`'s coordinator on broker `broker_id` (1-based).
    pub fn set_group_coordinator(&self, group: &str, broker_id: i32) -> Result<(), KafkaError> {
        self.mock().coordinator(
            rdkafka::mocking::MockCoordinator::Group(group.to_string()),
            broker_id,
        )
    }

    fn mock(&self) -> rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext> {
        self.owner
            .client()
            .mock_cluster()
            .expect("the owner client was created with test.mock.num.brokers")
    }

    /// Fault injection for tests: take a broker (1-based id) down or bring it back.
    pub fn set_broker_up(&self, broker_id: i32, up: bool) -> Result<(), KafkaError> {
        let mock = self
            .owner
            .client()
            .mock_cluster()
            .expect("the owner client was created with test.mock.num.brokers");
        if up {
            mock.broker_up(broker_id)
        } else {
            mock.broker_down(broker_id)
        }
    }
}
