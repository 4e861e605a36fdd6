//! The Kafka harness of the end-to-end rows (throughput, latency, restore, failover): the
//! clusters to run against, sends that wait out a full producer queue, the service running in
//! this process with its configuration, and the pieces of the plain consume-and-produce copy
//! that is the limit of the throughput and latency rows.

use crate::workload;
use futures::future::join_all;
use journeyd::app;
use journeyd::config::{Config, Encoding, Guarantee, InputConfig};
use journeyd::metrics::Metrics;
use journeyd::service::{self, Shared};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A Kafka cluster to run against.
pub trait Cluster {
    /// Where clients connect.
    fn bootstrap(&self) -> String;
    /// Creates a topic.
    fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()>;
}

/// librdkafka's mock cluster, in this process (what `journeyd run --embedded-kafka` uses).
#[derive(Debug)]
pub struct Mock(journeyd::embedded::Embedded);

impl Mock {
    /// Starts one.
    pub fn start() -> anyhow::Result<Mock> {
        Ok(Mock(journeyd::embedded::Embedded::start(&[])?))
    }

    /// Starts one whose broker answers every request `delay` late, as a broker further away.
    pub fn far(delay: Duration) -> anyhow::Result<Mock> {
        let mock = Mock::start()?;
        mock.0.set_round_trip(delay)?;
        Ok(mock)
    }
}

impl Cluster for Mock {
    fn bootstrap(&self) -> String {
        self.0.bootstrap_servers()
    }
    fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        Ok(self.0.create_topic(name, partitions)?)
    }
}

/// tansu, a Kafka-compatible broker written independently of this project, on loopback (the
/// helper of the end-to-end suites, `journeyd_tests::tansu`).
pub struct Tansu(journeyd_tests::tansu::Broker);

fn unpanic<T>(what: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        anyhow::anyhow!("{what}: {why}")
    })
}

impl std::fmt::Debug for Tansu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tansu({})", self.0.bootstrap())
    }
}

impl Tansu {
    /// Starts one, or says why it cannot.
    pub fn start() -> anyhow::Result<Tansu> {
        journeyd_tests::tansu::binary().map_err(anyhow::Error::msg)?;
        Ok(Tansu(unpanic(
            "tansu did not start",
            journeyd_tests::tansu::Broker::start,
        )?))
    }
}

impl Cluster for Tansu {
    fn bootstrap(&self) -> String {
        self.0.bootstrap()
    }
    fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        unpanic("tansu topic create", || {
            self.0.create_topic(name, partitions)
        })
    }
}

/// Starts a fresh cluster of one kind.
pub type ClusterFactory = dyn Fn() -> anyhow::Result<Box<dyn Cluster>>;

/// Queues one message, waiting while the producer's queue is full, and serves delivery reports.
pub(crate) fn send_waiting<C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    key: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    send_record_waiting(
        producer,
        BaseRecord::<str, [u8]>::to(topic).key(key).payload(value),
    )
}

/// [`send_waiting`] for a record made by the caller (a partition, byte keys).
pub(crate) fn send_record_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P>,
) -> anyhow::Result<()>
where
    C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// `fetch.wait.max.ms` of every consumer of the harness and the service (see [`service_config`]).
pub const FETCH_WAIT_MS: &str = "5";

/// The service's configuration for a run: defaults, with topics and group under `prefix`, its
/// store and journeys (written there) under `dir`.
pub fn service_config(
    bootstrap: &str,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let mut c = Config::default();
    c.kafka
        .insert("bootstrap.servers".into(), bootstrap.to_owned());
    c.kafka
        .insert("group.id".into(), format!("{prefix}journeyd"));
    // Neither broker here answers a fetch early when data arrives: the mock cluster holds an
    // empty fetch for the whole wait, tansu 0.6 sleeps through (half) the wait even when it
    // has data. Apache Kafka answers a long poll as soon as data comes; these two need a short
    // wait, or every fetch costs librdkafka's default 500 ms.
    c.kafka
        .insert("fetch.wait.max.ms".into(), FETCH_WAIT_MS.into());
    c.inputs = vec![InputConfig {
        topic: format!("{prefix}touchpoints"),
        format: Encoding::Avro,
    }];
    c.outputs.actions_topic = format!("{prefix}actions.{{channel}}");
    c.outputs.dead_letter_topic = format!("{prefix}touchpoints.dlq");
    // The rows measure the service as it was measured before the changelog (one replica).
    c.store.changelog = false;
    // The example journeys, in a zone where it is noon (see `workload::noon_zone`).
    c.journeys.dir = dir.join("journeys");
    let zone = workload::noon_zone(journeyd::clock::wall_now());
    workload::example_journeys_in_zone(&c.journeys.dir, &zone)?;
    c.store.path = dir.join("store");
    c.http.listen = String::new();
    c.admin.listen = String::new();
    Ok(c)
}

/// The service, running in this process.
pub struct Service {
    /// Its shared state (metrics, store).
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Service")
    }
}

impl Service {
    /// Creates the service's topics on `cluster` (inputs with 4 partitions, as
    /// `--embedded-kafka` does), runs `before` (to fill the input topic), and starts it with
    /// `in_flight` batches on their way to Kafka at most (`processing.batches_in_flight`).
    pub fn start(
        cluster: &dyn Cluster,
        prefix: &str,
        in_flight: usize,
        before: impl FnOnce(&Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Service, Config)> {
        Service::start_logged(
            cluster,
            prefix,
            in_flight,
            false,
            Guarantee::AtLeastOnce,
            before,
        )
    }

    /// [`Service::start`], with the changelog on when `changelog` (its topic created here:
    /// the mock cluster cannot create topics for a client).
    pub fn start_logged(
        cluster: &dyn Cluster,
        prefix: &str,
        in_flight: usize,
        changelog: bool,
        guarantee: Guarantee,
        before: impl FnOnce(&Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Service, Config)> {
        let dir = tempfile::tempdir()?;
        let mut config = service_config(&cluster.bootstrap(), prefix, dir.path())?;
        config.processing.batches_in_flight = in_flight;
        config.store.changelog = changelog;
        config.processing.guarantee = guarantee;
        let opened = app::open(&config)?;
        for i in &config.inputs {
            cluster.create_topic(&i.topic, 4)?;
        }
        if let Some(topic) = config.changelog_topic() {
            cluster.create_topic(&topic, 4)?;
        }
        if let Some(topic) = config.control_topic() {
            cluster.create_topic(&topic, 1)?;
        }
        cluster.create_topic(&config.outputs.dead_letter_topic, 1)?;
        for c in app::channels(&opened.engine) {
            cluster.create_topic(&config.actions_topic(&c), 1)?;
        }
        before(&config)?;
        let shared = app::shared(config.clone(), opened)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(service::run(shared.clone(), stop.clone()));
        Ok((
            Service {
                shared,
                stop,
                task,
                _dir: dir,
            },
            config,
        ))
    }

    /// Events consumed and written so far.
    pub fn consumed(&self) -> u64 {
        Metrics::total(&self.shared.metrics.events_consumed)
    }

    /// Stops it and waits for the loop to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// The service's default `processing.batches_in_flight`.
pub(crate) fn default_in_flight() -> usize {
    Config::default().processing.batches_in_flight
}

/// One batch, collected exactly as the service collects it (with the service's function).
pub(crate) async fn collect(
    consumer: &StreamConsumer<service::Context>,
    config: &Config,
) -> Vec<OwnedMessage> {
    service::collect(consumer, config, Duration::from_millis(100))
        .await
        .0
}

/// One batch of the plain copy: every message `forward` takes produced to `output` (same key
/// and payload), every send acknowledged, then the offsets of all committed asynchronously.
/// Returns the messages produced.
pub(crate) async fn copy_batch(
    consumer: &StreamConsumer<service::Context>,
    producer: &FutureProducer,
    output: &str,
    msgs: &[OwnedMessage],
    forward: fn(&OwnedMessage) -> bool,
) -> anyhow::Result<u64> {
    let sends = msgs.iter().filter(|m| forward(m)).map(|m| {
        let record = FutureRecord::<[u8], [u8]>::to(output)
            .key(m.key().unwrap_or_default())
            .payload(m.payload().unwrap_or_default());
        producer.send(record, Duration::from_secs(30))
    });
    let results = join_all(sends).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "the copy lost {failed} messages");
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in msgs {
        let e = next
            .entry((m.topic().to_owned(), m.partition()))
            .or_default();
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    let _ = consumer.commit(&tpl, CommitMode::Async);
    Ok(results.len() as u64)
}

/// The copy's configuration (the service's, in a group of its own) and its topics, created:
/// the input with 4 partitions, as the service's, and the output with 1. Returns the
/// configuration, the input topic and the output topic.
pub(crate) fn copy_topics(
    cluster: &dyn Cluster,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(Config, String, String)> {
    let mut config = service_config(&cluster.bootstrap(), prefix, dir)?;
    config
        .kafka
        .insert("group.id".into(), format!("{prefix}copy"));
    let input = config.inputs[0].topic.clone();
    let output = format!("{prefix}copy");
    cluster.create_topic(&input, 4)?;
    cluster.create_topic(&output, 1)?;
    Ok((config, input, output))
}

/// The service's own clients (`service::clients`), for the copy.
pub(crate) fn copy_clients(
    config: &Config,
) -> anyhow::Result<(StreamConsumer<service::Context>, FutureProducer)> {
    // A Shared only to get them (its store seeds the offsets: empty).
    let shared = app::shared(config.clone(), app::open(config)?)?;
    Ok(service::clients(&shared)?)
}
