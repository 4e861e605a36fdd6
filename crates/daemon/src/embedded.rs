//! The embedded default: librdkafka's mock cluster in the process, with the topics created.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock Kafka cluster running inside the process.
pub struct Embedded {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedded({})", self.bootstrap_servers())
    }
}

impl Embedded {
    /// Starts a one-broker mock cluster and creates the topics.
    pub fn start(topics: &[(String, i32)]) -> Result<Embedded, rdkafka::error::KafkaError> {
        let cluster = MockCluster::new(1)?;
        for (topic, partitions) in topics {
            cluster.create_topic(topic, *partitions, 1)?;
        }
        Ok(Embedded { cluster })
    }

    /// Creates one more topic.
    pub fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.create_topic(topic, partitions, 1)
    }

    /// Makes the broker answer every request this much later, as a broker further away would
    /// (benchmarks).
    pub fn set_round_trip(
        &self,
        delay: std::time::Duration,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.broker_round_trip_time(1, delay)
    }

    /// The mock cluster itself (tests inject broker errors through it).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    /// The address other Kafka clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
