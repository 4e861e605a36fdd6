//! Row 3: end to end through Kafka (librdkafka's mock cluster in the process, and tansu on
//! loopback): touchpoints in, actions out, against a plain consume-and-produce copy of the
//! same messages with the same client settings and batching.
//!
//! Throughput: N Avro touchpoints of the mix (times in the last ten minutes, so none is "in the
//! future" for the service's real clock) are produced to the input topic first; then the
//! service (`journeyd::app::open`, `app::shared`, `service::run`, in this process, default
//! configuration) consumes them, and the clock runs from the first batch it writes to the last
//! (the group join before the first batch is left out, and reported apart). A batch counts when
//! its actions are acknowledged by Kafka and its states written to RocksDB.
//!
//! The limit is the copy: the same messages in another topic, consumed and produced one for
//! one to an output topic by a loop with the service's consumer and producer
//! (`journeyd::service::clients`: same librdkafka settings, idempotent `acks=all` producer,
//! `linger.ms=1`, lz4), batches collected the same way (at most `batch_max_messages`, at most
//! `batch_linger_ms` after the first), every send acknowledged before the next batch, offsets
//! committed asynchronously after each batch. Clocked the same way.
//!
//! Latency: the rows at a half and a tenth of the measured maximum are in
//! [`crate::latency_row`]; their limit is the same copy, running live.

use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use futures::future::join_all;
use journeyd::app;
use journeyd::config::{Config, Encoding, Guarantee, InputConfig};
use journeyd::metrics::Metrics;
use journeyd::service::{self, Shared};
use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_types::time;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// A message to produce: key (the customer id) and value (the Avro touchpoint).
pub type Payload = (String, Vec<u8>);

/// N touchpoints of the mix, Avro-encoded, with times in the last ten minutes.
pub fn touchpoints(n: usize) -> anyhow::Result<Vec<Payload>> {
    let engine = workload::engine_for(&workload::example_journeys())?;
    let now = journeyd::clock::wall_now();
    let span = 10 * time::MINUTE;
    Ok(
        workload::events_in_zone(&engine, n, now - span, span, &workload::noon_zone(now))
            .into_iter()
            .map(|e| {
                let bytes = encode_touchpoint(&e, Framing::SingleObject);
                (e.customer_id, bytes)
            })
            .collect(),
    )
}

/// Counts the messages Kafka did not acknowledge.
#[derive(Debug, Default)]
struct Failures(AtomicU64);

impl rdkafka::ClientContext for Failures {}

impl rdkafka::producer::ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

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

/// Produces every payload to `topic` and waits until all are acknowledged.
pub fn produce_all(bootstrap: &str, topic: &str, payloads: &[Payload]) -> anyhow::Result<()> {
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Failures::default())?;
    for (key, value) in payloads {
        send_waiting(&producer, topic, key, value)?;
    }
    producer.flush(Duration::from_secs(300))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} messages to {topic} were not acknowledged",
        payloads.len()
    );
    Ok(())
}

/// The service's batch stages (`journeyd_batch_seconds{stage}`) a "ms per batch" line reports,
/// in its order.
pub const STAGES: [&str; 7] = [
    "collect",
    "prepare",
    "process",
    "produce",
    "write",
    "produce_wait",
    "write_wait",
];

/// What a "ms per batch" line says, after its count of batches.
pub const STAGES_LINE: &str = "all / collect / decode + due-timer scan / process / produce + acks / write / waiting for the previous batch's acks / for its write (sends and writes overlap the next batch)";

/// A "ms per batch" line's figures: ms per batch in all, then per stage of [`STAGES`].
pub fn stages_figures(all_ms: f64, stage_ms: [f64; STAGES.len()]) -> String {
    std::iter::once(all_ms)
        .chain(stage_ms)
        .map(|ms| format!("{ms:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
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

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Messages per second, from the end of the first batch to the end of the last.
    pub eps: f64,
    /// Seconds from start to the end of the first batch (group join, first fetch).
    pub startup: f64,
    /// Messages produced by the loop (actions for the service, copies for the copy).
    pub produced: u64,
    /// Messages processed.
    pub done: u64,
    /// Batches, and the seconds they spent in the service's stages (process, produce, write),
    /// from `journeyd_batch_seconds`; all zero for the copy.
    pub batches: u64,
    /// Seconds in each of [`STAGES`].
    pub stages: [f64; STAGES.len()],
    /// Seconds from start to the end of the last batch.
    pub wall: f64,
    /// Changelog records produced (0 without the changelog).
    pub changelog: u64,
}

fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n as u64 / 2)
}

fn rate(n: u64, first: Option<(Instant, u64)>, end: Instant, start: Instant) -> f64 {
    match first {
        Some((t, at)) if n > at && end > t => (n - at) as f64 / (end - t).as_secs_f64(),
        _ => n as f64 / (end - start).as_secs_f64(),
    }
}

/// The service over `payloads` (produced to its input topic first), with `in_flight` batches
/// on their way to Kafka at most.
pub async fn service_run(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
    in_flight: usize,
) -> anyhow::Result<Run> {
    service_run_logged(
        cluster,
        prefix,
        payloads,
        in_flight,
        false,
        Guarantee::AtLeastOnce,
    )
    .await
}

/// [`service_run`], with the changelog on when `changelog`, under `guarantee`.
pub async fn service_run_logged(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
    in_flight: usize,
    changelog: bool,
    guarantee: Guarantee,
) -> anyhow::Result<Run> {
    // Every message is in before the service starts, so that producing never limits it.
    let bootstrap = cluster.bootstrap();
    let (service, _) =
        Service::start_logged(cluster, prefix, in_flight, changelog, guarantee, |config| {
            let topic = &config.inputs[0].topic;
            tokio::task::block_in_place(|| produce_all(&bootstrap, topic, payloads))
        })?;
    let n = payloads.len() as u64;
    let start = Instant::now();
    let deadline = start + deadline_for(payloads.len());
    let mut first = None;
    let mut done = 0;
    while done < n && Instant::now() < deadline {
        done = service.consumed();
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = Instant::now();
    let stage = |name: &str| {
        let h = service
            .shared
            .metrics
            .batch_seconds
            .with_label_values(&[name]);
        (h.get_sample_sum(), h.get_sample_count())
    };
    let batches = stage("process").1;
    let stages = STAGES.map(|s| stage(s).0);
    let produced = Metrics::total(&service.shared.metrics.actions);
    let changelog = service.shared.metrics.changelog_records.get();
    let rejected = Metrics::total(&service.shared.metrics.events_rejected);
    service.stop().await?;
    anyhow::ensure!(
        done >= n,
        "the service consumed {done} of {n} events in {:.0} s",
        (end - start).as_secs_f64()
    );
    anyhow::ensure!(
        rejected == 0,
        "the service dead-lettered {rejected} of the events"
    );
    Ok(Run {
        eps: rate(n, first, end, start),
        startup: first.map_or(0.0, |(t, _)| (t - start).as_secs_f64()),
        produced,
        done,
        batches,
        stages,
        wall: (end - start).as_secs_f64(),
        changelog,
    })
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

/// The plain copy over `payloads`: consume, produce one for one, wait for the acks, commit.
pub async fn copy_run(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let (config, input, output) = copy_topics(cluster, prefix, dir.path())?;
    // Every message is in before the copy starts, so that producing never limits it.
    let bootstrap = cluster.bootstrap();
    tokio::task::block_in_place(|| produce_all(&bootstrap, &input, payloads))?;
    let (consumer, producer) = copy_clients(&config)?;
    let n = payloads.len() as u64;
    let start = Instant::now();
    let deadline = start + deadline_for(payloads.len());
    let (mut done, mut produced, mut first) = (0u64, 0u64, None);
    while done < n && Instant::now() < deadline {
        let msgs = collect(&consumer, &config).await;
        if msgs.is_empty() {
            continue;
        }
        produced += copy_batch(&consumer, &producer, &output, &msgs, |_| true).await?;
        done += msgs.len() as u64;
        if first.is_none() {
            first = Some((Instant::now(), done));
        }
    }
    let end = Instant::now();
    drop(consumer);
    drop(producer);
    anyhow::ensure!(done >= n, "the copy consumed {done} of {n} messages");
    Ok(Run {
        eps: rate(n, first, end, start),
        startup: first.map_or(0.0, |(t, _)| (t - start).as_secs_f64()),
        produced,
        done,
        batches: 0,
        stages: [0.0; STAGES.len()],
        wall: (end - start).as_secs_f64(),
        changelog: 0,
    })
}

/// The throughput rows of one cluster kind (with a row for `exactly_once` when the broker has
/// `transactions`). Returns the rows and the service's rate.
pub async fn throughput(
    kind: &str,
    new_cluster: &ClusterFactory,
    n: usize,
    transactions: bool,
) -> anyhow::Result<(Vec<Row>, f64)> {
    let payloads = touchpoints(n)?;
    let bytes = payloads
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>();
    let copy = {
        let cluster = new_cluster()?;
        copy_run(cluster.as_ref(), "c.", &payloads).await?
    };
    let svc = {
        let cluster = new_cluster()?;
        service_run(cluster.as_ref(), "s.", &payloads, default_in_flight()).await?
    };
    let logged = {
        let cluster = new_cluster()?;
        service_run_logged(
            cluster.as_ref(),
            "l.",
            &payloads,
            default_in_flight(),
            true,
            Guarantee::AtLeastOnce,
        )
        .await?
    };
    let transacted = if transactions {
        let cluster = new_cluster()?;
        Some(
            service_run_logged(
                cluster.as_ref(),
                "x.",
                &payloads,
                1,
                true,
                Guarantee::ExactlyOnce,
            )
            .await?,
        )
    } else {
        None
    };
    let ratio = svc.eps / copy.eps;
    let logged_ratio = logged.eps / copy.eps;
    let rows = vec![
        Row {
            name: format!(
                "end to end, {kind}: touchpoints/s in, actions out ({} events, {:.0} B each; {} actions)",
                thousands(n as f64),
                bytes as f64 / n.max(1) as f64,
                thousands(svc.produced as f64)
            ),
            measured: thousands(svc.eps),
            limit: format!(
                "plain rdkafka consume-and-produce copy, same settings and batching: {} msg/s",
                thousands(copy.eps)
            ),
            ratio: percent(ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(ratio >= 0.5),
        },
        Row {
            name: format!(
                "end to end, {kind}, with the changelog (at least once): touchpoints/s ({} changelog records)",
                thousands(logged.changelog as f64)
            ),
            measured: thousands(logged.eps),
            limit: format!("the same copy: {} msg/s", thousands(copy.eps)),
            ratio: percent(logged_ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(logged_ratio >= 0.5),
        },
    ];
    let mut rows = rows;
    if let Some(x) = transacted {
        let ratio = x.eps / copy.eps;
        rows.push(Row {
            name: format!(
                "end to end, {kind}, with the changelog (exactly once: a transaction per batch): touchpoints/s ({} batches)",
                thousands(x.batches as f64)
            ),
            measured: thousands(x.eps),
            limit: format!("the same copy: {} msg/s", thousands(copy.eps)),
            ratio: percent(ratio),
            target: "≥ 35%".into(),
            verdict: Verdict::of(ratio >= 0.35),
        });
    }
    rows.extend([
        Row::info(
            format!("end to end, {kind}: seconds to the first batch (group join), service / copy"),
            format!("{:.2} / {:.2}", svc.startup, copy.startup),
        ),
        Row::info(
            format!(
                "end to end, {kind}: the service's ms per batch ({} batches): {STAGES_LINE}",
                thousands(svc.batches as f64)
            ),
            {
                let per = |s: f64| 1000.0 * s / svc.batches.max(1) as f64;
                // The clock ran from the end of the first batch: batches - 1 batches.
                let batch = 1000.0 * (svc.wall - svc.startup) / (svc.batches.max(2) - 1) as f64;
                stages_figures(batch, svc.stages.map(per))
            },
        ),
    ]);
    Ok((rows, svc.eps))
}

/// The service's default `processing.batches_in_flight`.
pub(crate) fn default_in_flight() -> usize {
    Config::default().processing.batches_in_flight
}

/// The round trip of the far broker (`far_broker`).
pub const FAR_ROUND_TRIP: Duration = Duration::from_millis(10);

/// The throughput row of a broker [`FAR_ROUND_TRIP`] away (the mock cluster, delayed): the
/// service with 1, 2 and 3 batches in flight, against the copy.
pub async fn far_broker(n: usize) -> anyhow::Result<Vec<Row>> {
    let payloads = touchpoints(n)?;
    let copy = copy_run(&Mock::far(FAR_ROUND_TRIP)?, "c.", &payloads).await?;
    let mut rates = Vec::new();
    for in_flight in 1..=3 {
        let run = service_run(&Mock::far(FAR_ROUND_TRIP)?, "s.", &payloads, in_flight).await?;
        rates.push(run.eps);
    }
    let ms = FAR_ROUND_TRIP.as_millis();
    Ok(vec![Row::info(
        format!(
            "end to end, mock cluster answering {ms} ms late: touchpoints/s with 1 / 2 / 3 \
             batches in flight (processing.batches_in_flight), and the copy ({} events)",
            thousands(n as f64)
        ),
        format!(
            "{} / {} / {}; copy {}",
            thousands(rates[0]),
            thousands(rates[1]),
            thousands(rates[2]),
            thousands(copy.eps)
        ),
    )])
}
