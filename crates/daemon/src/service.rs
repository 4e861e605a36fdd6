//! The service loop: Kafka in, engine, Kafka out, RocksDB.
//!
//! Each batch goes through these steps, in order:
//! 1. consume up to `batch_max_messages` (a pause of 2 ms closes the batch, and it waits at
//!    most `batch_linger_ms` once the first came);
//! 2. decode; undecodable or invalid messages are routed to the dead-letter topic;
//! 3. add the timers that are due (only once consumption has caught up after a start, so a
//!    backlog of events is seen before the timers it may overtake);
//! 4. run the batch through the engine (no writes);
//! 5. produce the actions and dead letters and wait until Kafka acknowledges every one;
//! 6. write states, timer index and consumed offsets in one atomic store write;
//! 7. commit the offsets to Kafka too (only for lag dashboards: the store's offsets are the
//!    ones used on restart, seeded into every assignment).
//!
//! Batches overlap: while batch N's actions wait for their acknowledgements (5) and batch N-1
//! is written (6), batch N+1 is consumed and processed (1-4), reading the states and timers
//! through the writes not yet in the store ([`crate::processor::Unwritten`]). Sends go out in
//! batch order (by default N+1's only after N's are acknowledged; with
//! `processing.batches_in_flight` above 1, queued after N's: see [`crate::sending`]) and
//! writes land in batch order, each after its batch's acknowledgements. The due timers of
//! batch N+1 (3) and their customers' states are read while batch N runs (4), through the
//! entries N fires, and patched with N's write once it is known
//! ([`crate::processor::Prefetched`]).
//!
//! A crash anywhere before 6 replays the batch from the same stored states: the same actions
//! (same ids, same content) are produced again, and channel adapters de-duplicate on the id.
//! A failure in 5 retries the same sends, in 6 the same write, so nothing is lost in a Kafka
//! outage. A write that retrying cannot help (an invalid write, a corrupt store) stops the
//! service with its error instead: the batch runs again after a restart.

use crate::clock::{wall_now, Clock};
use crate::config::{Config, Encoding};
use crate::metrics::Metrics;
use crate::processor::{run_batch, Output, Position, Prefetched, Unwritten, Work};
use crate::sending::{DeadLetter, InFlight, Landed, Sender, Sent};
use futures::FutureExt as _;
use journeyd_codec::{ActionEncoder, Format, TouchpointDecoder};
use journeyd_engine::Engine;
use journeyd_store::{Millis, Offset, Store, WriteSet};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// State shared by the loop, the HTTP endpoint and the signal handlers.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The engine in use (swapped whole on reload).
    pub engine: RwLock<Arc<Engine>>,
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The metrics.
    pub metrics: Metrics,
    /// The processing clock.
    pub clock: Clock,
    /// Set once consumption has caught up after start.
    pub ready: AtomicBool,
    /// Set by SIGHUP: reload the journeys between batches.
    pub reload: AtomicBool,
}

impl Shared {
    /// The current engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// The consumer context: seeds every assignment with the offsets from the store, keeps track of
/// the partitions this process owns, and turns librdkafka statistics into the consumer-lag
/// metric.
pub struct Context {
    store: Arc<dyn Store>,
    metrics: Metrics,
    owned: Arc<Owned>,
    /// The next offset of each partition after the batches processed so far, written or not.
    /// Batches overlap, so the store's offsets may trail these by a batch or two whose actions
    /// are on their way; an assignment resumes after both (see `rebalance`).
    processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
}

impl Context {
    /// Records a processed batch's consumed offsets.
    fn processed(&self, offsets: &[Offset]) {
        let mut p = self
            .processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for o in offsets {
            let next = p.entry((o.topic.clone(), o.partition)).or_insert(o.next);
            *next = (*next).max(o.next);
        }
    }
}

/// The input partitions assigned to this process, and how far each has been read.
///
/// A customer's timer fires only where the partition their events come from is assigned, has
/// been read to its head once since the assignment (after a restart a dead member may hold
/// some partitions for a session timeout, and a new assignment has a backlog), and has been
/// read up to the timer's due time: its *watermark*, the newest message timestamp consumed
/// from it, or, when the partition is quiet, the time the broker last confirmed there was
/// nothing more to read. So an event never loses the race against a timer it came before,
/// even when consumption lags.
#[derive(Debug, Default)]
pub struct Owned {
    partitions: Mutex<BTreeMap<(String, i32), Part>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Part {
    /// The next offset to read: the offset consumption resumed from (when the store knew it),
    /// then one past the last message consumed.
    next: Option<i64>,
    /// Read to the head of the partition once since it was assigned.
    at_head: bool,
    /// Everything appended before this time (ms) has been read.
    watermark: Millis,
    /// When a message last came from it.
    received: Option<Instant>,
    /// When the broker was last asked for its watermarks.
    probed: Option<Instant>,
}

/// How long a partition may go without a message before the broker is asked whether it is
/// quiet or the reading is behind; also the least time between two questions about one
/// partition.
const QUIET: Duration = Duration::from_millis(300);

impl Owned {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Part>> {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let mut m = self.lock();
        for el in tpl.elements() {
            let next = match el.offset() {
                KafkaOffset::Offset(n) => Some(n),
                _ => None,
            };
            m.insert(
                (el.topic().to_owned(), el.partition()),
                Part {
                    next,
                    ..Part::default()
                },
            );
        }
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        let mut m = self.lock();
        for el in tpl.elements() {
            m.remove(&(el.topic().to_owned(), el.partition()));
        }
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// Advances the positions and watermarks past the messages just consumed.
    pub fn consumed(&self, msgs: &[OwnedMessage]) {
        let now = Instant::now();
        let mut m = self.lock();
        for msg in msgs {
            let Some(part) = m.get_mut(&(msg.topic().to_owned(), msg.partition())) else {
                continue;
            };
            part.next = Some(part.next.unwrap_or(0).max(msg.offset() + 1));
            part.received = Some(now);
            if let Some(ts) = msg.timestamp().to_millis() {
                part.watermark = part.watermark.max(ts);
            }
        }
    }

    /// The partitions to ask the broker about: not read to their head yet, or quiet (no
    /// message for a while), and not asked about lately. Marks them asked.
    fn to_probe(&self) -> Vec<(String, i32, Option<i64>)> {
        let mut m = self.lock();
        m.iter_mut()
            .filter(|(_, part)| !part.at_head || part.received.is_none_or(|t| t.elapsed() >= QUIET))
            .filter(|(_, part)| part.probed.is_none_or(|t| t.elapsed() >= QUIET))
            .map(|((topic, partition), part)| {
                part.probed = Some(Instant::now());
                (topic.clone(), *partition, part.next)
            })
            .collect()
    }

    /// Records an answer: the partition's watermarks, asked at `asked_at` while `next` was its
    /// next offset to read. When `next` had reached the high watermark, the partition is at
    /// its head and everything appended before the question has been read.
    fn answer(
        &self,
        at: (&str, i32),
        next: Option<i64>,
        (low, high): (i64, i64),
        asked_at: Millis,
    ) {
        let (topic, partition) = at;
        let read = match next {
            Some(next) => next >= high,
            // Nothing read and no stored offset: only an empty partition is read.
            None => low == high,
        };
        if !read {
            return;
        }
        let mut m = self.lock();
        let Some(part) = m.get_mut(&(topic.to_owned(), partition)) else {
            return;
        };
        if !part.at_head {
            tracing::info!(
                topic,
                partition,
                next,
                high,
                "Partition read to its head; its timers fire."
            );
        }
        part.at_head = true;
        part.watermark = part.watermark.max(asked_at);
    }

    /// Asks the broker about the partitions [`Owned::to_probe`] names, from a thread of its
    /// own with a client of its own, so the service loop never waits for the answers. Stops
    /// when `stop` is set.
    fn probe_in_background(
        self: &Arc<Self>,
        config: ClientConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, KafkaError> {
        let client: BaseConsumer = config.create()?;
        let owned = self.clone();
        Ok(std::thread::Builder::new()
            .name("journeyd-watermarks".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (topic, partition, next) in owned.to_probe() {
                        let asked_at = wall_now();
                        if let Ok(marks) =
                            client.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                        {
                            owned.answer((&topic, partition), next, marks, asked_at);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("a thread for the watermark probes"))
    }

    /// Whether a timer of partition number `p` due at `due` may fire: every input topic's
    /// partition `p` assigned here is read to its head and past `due`, and there is one.
    pub fn fires(&self, p: i32, due: Millis) -> bool {
        let m = self.lock();
        let mut parts = m.iter().filter(|((_, q), _)| *q == p).peekable();
        parts.peek().is_some() && parts.all(|(_, part)| part.at_head && part.watermark >= due)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

/// Where each assigned partition resumes: after the last batch written to the store or the
/// last one processed, whichever is further; partitions with neither are left out (the group's
/// committed offset, or `auto.offset.reset`, applies).
fn resume_at(
    assigned: &[(String, i32)],
    stored: &[Offset],
    processed: &BTreeMap<(String, i32), i64>,
) -> Vec<(String, i32, i64)> {
    assigned
        .iter()
        .filter_map(|(topic, partition)| {
            let written = stored
                .iter()
                .find(|o| &o.topic == topic && o.partition == *partition)
                .map(|o| o.next);
            let read = processed.get(&(topic.clone(), *partition)).copied();
            let next = written.max(read)?;
            tracing::info!(
                topic,
                partition,
                offset = next,
                written = ?written,
                "Resuming after the last batch applied."
            );
            Some((topic.clone(), *partition, next))
        })
        .collect()
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Why: the store, not Kafka's committed offsets, says what has been applied to
                // the state; resume exactly after the last batch written, or after the last
                // one processed if that is further (its write follows its acknowledgements,
                // and later batches already read through it: reading it again would apply
                // its events twice).
                match self.store.offsets() {
                    Ok(stored) => {
                        let processed = self
                            .processed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone();
                        let assigned: Vec<(String, i32)> = tpl
                            .elements()
                            .iter()
                            .map(|el| (el.topic().to_owned(), el.partition()))
                            .collect();
                        let seeds = resume_at(&assigned, &stored, &processed);
                        for (topic, partition, next) in seeds {
                            let _ = tpl.set_partition_offset(
                                &topic,
                                partition,
                                KafkaOffset::Offset(next),
                            );
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "Cannot read stored offsets; using the group's committed offsets.")
                    }
                }
                self.owned.assign(tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "Partitions revoked.");
                self.owned.revoke(tpl);
                // Another member reports these partitions' lag now.
                for el in tpl.elements() {
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[el.topic(), &el.partition().to_string()]);
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "Rebalance error; unassigning.");
                self.owned.clear();
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "Applying a rebalance failed.");
        }
    }
}

/// One touchpoint decoder per input topic (each topic has its own format).
#[derive(Debug)]
struct Decoders {
    by_topic: Vec<(String, TouchpointDecoder)>,
    fallback: TouchpointDecoder,
}

impl Decoders {
    fn new(config: &Config) -> Decoders {
        // No payload over max_event_bytes reaches a decoder (see `prepare`).
        let limit = journeyd_codec::limit_avro_allocations(config.processing.max_event_bytes);
        if limit != config.processing.max_event_bytes {
            tracing::warn!(
                limit,
                max_event_bytes = config.processing.max_event_bytes,
                "apache-avro's allocation limit was set before (one per process): datums of older touchpoint schemas are read under it."
            );
        }
        let registry = config.schema_registry.as_ref().map(|r| r.url.clone());
        let make = |encoding: Encoding| match (encoding, &registry) {
            (Encoding::Avro, Some(url)) => TouchpointDecoder::with_registry(url.clone()),
            (Encoding::Avro, None) => TouchpointDecoder::new(Format::Avro),
            (Encoding::Json, _) => TouchpointDecoder::new(Format::Json),
        };
        Decoders {
            by_topic: config
                .inputs
                .iter()
                .map(|i| (i.topic.clone(), make(i.format)))
                .collect(),
            fallback: make(Encoding::Avro),
        }
    }

    fn for_topic(&self, topic: &str) -> &TouchpointDecoder {
        self.by_topic
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(&self.fallback, |(_, d)| d)
    }
}

/// A consumed batch, decoded.
#[derive(Debug, Default)]
struct Prepared {
    work: Vec<Work>,
    consumed: Vec<Position>,
    dead: Vec<DeadLetter>,
    /// Kafka timestamps of the events (for the latency histogram).
    timestamps: Vec<i64>,
    topics: Vec<String>,
    timers: usize,
    /// The read of due timers came back full: more may be due.
    backlogged: bool,
    /// The states of the due timers' customers, read beside the last batch and patched with
    /// its write (see `Prefetched`): read through, not read again.
    states: Option<WriteSet>,
}

fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka {
        c.set(k, v);
    }
    c
}

fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The settings of the client that asks for watermarks: the service's, without the group.
fn probe_client_config(config: &Config) -> ClientConfig {
    let mut c = client_config(config);
    for k in [
        "group.id",
        "group.instance.id",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "statistics.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
    ] {
        c.remove(k);
    }
    c
}

/// Creates the action producer: the `[kafka]` settings without the consumer-only ones,
/// idempotent, `acks=all`, a 1 ms linger and lz4 unless the configuration says otherwise.
/// (Public for the benchmark's raw loops, which produce as the service does.)
pub fn producer(config: &Config) -> Result<FutureProducer, KafkaError> {
    let mut pc = client_config(config);
    // Consumer-only settings would make the producer complain; drop the usual ones.
    for k in [
        "group.id",
        "auto.offset.reset",
        "group.instance.id",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "statistics.interval.ms",
    ] {
        pc.remove(k);
    }
    set_default(&mut pc, "enable.idempotence", "true");
    set_default(&mut pc, "acks", "all");
    // The loop queues a whole batch's sends at once: the batching is done, and a longer linger
    // would only add idle time per batch.
    set_default(&mut pc, "linger.ms", "1");
    set_default(&mut pc, "compression.type", "lz4");
    pc.create()
}

/// Creates the consumer (subscribed) and the producer.
pub fn clients(shared: &Shared) -> Result<(StreamConsumer<Context>, FutureProducer), KafkaError> {
    let mut cc = client_config(&shared.config);
    cc.set("enable.auto.commit", "false");
    cc.set("enable.auto.offset.store", "false");
    set_default(&mut cc, "auto.offset.reset", "earliest");
    set_default(&mut cc, "statistics.interval.ms", "5000");
    set_default(
        &mut cc,
        "partition.assignment.strategy",
        "cooperative-sticky",
    );
    let consumer: StreamConsumer<Context> = cc.create_with_context(Context {
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        owned: Arc::new(Owned::default()),
        processed: Arc::default(),
    })?;
    let topics: Vec<&str> = shared
        .config
        .inputs
        .iter()
        .map(|i| i.topic.as_str())
        .collect();
    consumer.subscribe(&topics)?;
    let producer = producer(&shared.config)?;
    Ok((consumer, producer))
}

/// Collects one batch of messages: waits up to `first_wait` for the first, then takes more
/// while they keep coming (a gap of [`BATCH_GAP`] closes the batch), for at most
/// `processing.batch_linger_ms` and `processing.batch_max_messages`. Returns them and whether
/// the consumer was idle (nothing came within `first_wait`).
///
/// Why a gap closes the batch: the loop runs a batch's stages one after another, so time spent
/// waiting for a batch to fill is time nothing else happens. Under load messages arrive while
/// the previous batch is processed and the next batch fills at once; when they trickle in,
/// a batch goes out as soon as the stream pauses.
pub async fn collect(
    consumer: &StreamConsumer<Context>,
    config: &Config,
    first_wait: Duration,
) -> (Vec<OwnedMessage>, bool) {
    let mut msgs = Vec::new();
    // No wait: take a message only if one is there (a zero timeout still waits for a tick of
    // the runtime's timer, a millisecond or more).
    let first = if first_wait.is_zero() {
        consumer.recv().now_or_never().ok_or(())
    } else {
        tokio::time::timeout(first_wait, consumer.recv())
            .await
            .map_err(|_| ())
    };
    match first {
        Err(_) => return (msgs, true),
        Ok(Err(error)) => {
            tracing::warn!(%error, "Kafka consumer error.");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return (msgs, false);
        }
        Ok(Ok(m)) => msgs.push(m.detach()),
    }
    let end = Instant::now() + Duration::from_millis(config.processing.batch_linger_ms);
    while msgs.len() < config.processing.batch_max_messages {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(BATCH_GAP), consumer.recv()).await {
            Ok(Ok(m)) => msgs.push(m.detach()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "Kafka consumer error.");
                break;
            }
            Err(_) => break,
        }
    }
    (msgs, false)
}

/// No message for this long closes a batch (see [`collect`]).
pub const BATCH_GAP: Duration = Duration::from_millis(2);

/// Decodes messages into work and dead letters. Transient decode failures (the schema registry
/// is unreachable) are retried here until they pass or the service stops.
fn prepare(
    shared: &Shared,
    decoders: &Decoders,
    msgs: Vec<OwnedMessage>,
    shutdown: &CancellationToken,
) -> Option<Prepared> {
    let config = &shared.config;
    let mut p = Prepared::default();
    let future_limit = shared.clock.now() + (config.processing.max_future_skew_secs as i64) * 1000;
    for m in msgs {
        p.consumed.push(Position {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        });
        p.topics.push(m.topic().to_owned());
        let payload = m.payload().unwrap_or_default();
        if payload.len() > config.processing.max_event_bytes {
            let error = format!(
                "{} bytes is over the limit of {} (processing.max_event_bytes)",
                payload.len(),
                config.processing.max_event_bytes
            );
            p.dead.push(DeadLetter {
                message: m,
                reason: "oversized",
                error,
            });
            continue;
        }
        let decoder = decoders.for_topic(m.topic());
        let decoded = loop {
            match decoder.decode(payload) {
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "Decoding needs the schema registry, which is unavailable; retrying.");
                    if shutdown.is_cancelled() {
                        return None;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        match decoded {
            Err(e) => {
                let reason = e.reason();
                p.dead.push(DeadLetter {
                    message: m,
                    reason,
                    error: e.to_string(),
                });
            }
            Ok(event) => {
                if let Some(key) = m.key() {
                    if key != event.customer_id.as_bytes() {
                        let error = format!(
                            "the message key `{}` is not the event's customer_id `{}`",
                            String::from_utf8_lossy(key),
                            event.customer_id
                        );
                        p.dead.push(DeadLetter {
                            message: m,
                            reason: "key_mismatch",
                            error,
                        });
                        continue;
                    }
                }
                if event.occurred_at > future_limit {
                    let error = format!(
                        "occurred_at {} is more than {} s ahead of the processing clock",
                        journeyd_types::time::format_rfc3339(event.occurred_at),
                        config.processing.max_future_skew_secs
                    );
                    p.dead.push(DeadLetter {
                        message: m,
                        reason: "occurred_at_in_future",
                        error,
                    });
                    continue;
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    p.timestamps.push(ts);
                }
                p.work.push(Work::Event {
                    event,
                    partition: m.partition(),
                });
            }
        }
    }
    Some(p)
}

/// Swaps in the journeys of the folder, if they are all valid; else keeps the running ones.
pub fn reload(shared: &Shared) {
    let settings = journeyd_engine::Settings {
        history_limit: shared.config.processing.history_limit,
        ..Default::default()
    };
    match crate::catalog::load(
        &shared.config.journeys.dir,
        shared.store.as_ref(),
        settings,
        wall_now(),
    ) {
        Ok(loaded) => {
            if let Err(error) = shared.store.put_journeys(&loaded.new_versions) {
                tracing::error!(%error, "Cannot save the new journey versions; keeping the running journeys.");
                shared.metrics.reloads.with_label_values(&["refused"]).inc();
                return;
            }
            let n = loaded.engine.journeys().len();
            if let Ok(mut e) = shared.engine.write() {
                *e = Arc::new(loaded.engine);
            }
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::info!(
                journeys = n,
                new_versions = loaded.new_versions.len(),
                "Journeys reloaded."
            );
        }
        Err(error) => {
            shared.metrics.reloads.with_label_values(&["refused"]).inc();
            tracing::error!(%error, "Journey reload refused; the running journeys stay.");
        }
    }
}

/// Runs the service loop until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (consumer, producer) = clients(&shared)?;
    let owned = consumer.context().owned.clone();
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes =
        owned.probe_in_background(probe_client_config(&shared.config), stop_probes.clone())?;
    let registry = shared
        .config
        .schema_registry
        .as_ref()
        .map(|r| r.url.clone());
    let decoder = Arc::new(Decoders::new(&shared.config));
    let encoder = Arc::new(match (shared.config.outputs.actions_format, &registry) {
        (Encoding::Avro, Some(url)) => ActionEncoder::with_registry(url.clone()),
        (Encoding::Avro, None) => ActionEncoder::new(Format::Avro),
        (Encoding::Json, _) => ActionEncoder::new(Format::Json),
    });
    let mut past = Past {
        sender: Sender {
            producer: producer.clone(),
            encoder,
            config: Arc::new(shared.config.clone()),
            metrics: shared.metrics.clone(),
            shutdown: shutdown.clone(),
        },
        sending: InFlight::new(),
        writing: None,
        unwritten: Unwritten::none(),
    };
    let mut caught_up = false;
    let mut timers_backlogged = false;
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let in_flight = shared.config.processing.batches_in_flight;
    // The due timers of the next batch, read while the last batch ran, and that batch's write
    // (see `Prefetched`).
    let mut prefetched: Option<(PrefetchTask, Arc<WriteSet>)> = None;
    tracing::info!(topics = ?shared.config.inputs.iter().map(|i| &i.topic).collect::<Vec<_>>(), "Consuming.");
    while !shutdown.is_cancelled() {
        if shared.reload.swap(false, Ordering::SeqCst) {
            let s = shared.clone();
            tokio::task::spawn_blocking(move || reload(&s)).await?;
        }
        let stage = |name: &str, since: Instant| {
            shared
                .metrics
                .batch_seconds
                .with_label_values(&[name])
                .observe(since.elapsed().as_secs_f64());
        };
        let collecting = Instant::now();
        // With more timers due than one batch fires, don't wait for messages in between: take
        // what is already there. (A 1 ms wait cost 4 ms per batch, timer resolution included.)
        let first_wait = if timers_backlogged {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        let (msgs, idle) = collect(&consumer, &shared.config, first_wait).await;
        let collected = collecting.elapsed();
        // Caught up: nothing more to read, or reading at the head of the log (the newest message
        // is fresh). Under steady load the consumer is never idle, so freshness matters too.
        let newest = msgs.iter().filter_map(|m| m.timestamp().to_millis()).max();
        let fresh = newest.is_some_and(|ts| ts >= wall_now() - 2_000);
        owned.consumed(&msgs);
        if (idle || fresh) && !caught_up {
            caught_up = true;
            shared.ready.store(true, Ordering::SeqCst);
            tracing::info!("Caught up with the input topics; timers are firing.");
        }
        let preparing = Instant::now();
        // Read beside the last batch: patched with its write. Not when collect waited (the
        // read is as old as the wait, and timers that fell due meanwhile would wait a loop
        // more), nor when not caught up then: read now.
        let early = match prefetched.take() {
            Some((task, write)) if collected <= PREFETCH_FRESH => {
                task.await?.ok().map(|p| (p, write))
            }
            _ => None,
        };
        let prepared = {
            let (s, d, sd) = (shared.clone(), decoder.clone(), shutdown.clone());
            let caught = caught_up;
            let owned = owned.clone();
            let unwritten = past.unwritten.clone();
            tokio::task::spawn_blocking(move || {
                let mut p = prepare(&s, &d, msgs, &sd)?;
                if caught {
                    let fires = |p| owned.fires(p, Millis::MIN);
                    let limit = s.config.processing.timer_batch;
                    let due = match early {
                        Some((read, write)) => {
                            let patched = read.patch(&write, &fires);
                            p.backlogged = patched.more;
                            p.states = Some(patched.states);
                            Ok(patched.due)
                        }
                        None => unwritten
                            .due_timers_in(s.store.as_ref(), s.clock.now(), limit, &fires)
                            .inspect(|due| p.backlogged = due.len() >= limit),
                    };
                    let due = due.unwrap_or_else(|error| {
                        tracing::error!(%error, "Cannot read due timers.");
                        Vec::new()
                    });
                    // Only the timers their partition has been read past. Watermarks are
                    // real time: with a sped-up clock (demos) being read to the head is enough.
                    let real_time = s.clock.speed() == 1.0;
                    let due: Vec<_> = due
                        .into_iter()
                        .filter(|t| {
                            let at = if real_time { t.due } else { Millis::MIN };
                            t.partition.is_none_or(|p| owned.fires(p, at))
                        })
                        .collect();
                    p.timers = due.len();
                    // Not when none could fire yet (their partitions are not read that far):
                    // then the loop waits for input instead of reading them again at once.
                    p.backlogged &= p.timers > 0;
                    p.work.extend(due.into_iter().map(|t| Work::Timer {
                        due: t.due,
                        customer: t.customer,
                        partition: t.partition,
                    }));
                }
                Some(p)
            })
            .await?
        };
        let Some(mut prepared) = prepared else {
            break;
        };
        if !prepared.work.is_empty() || !prepared.consumed.is_empty() {
            // Counted for batches only (not for idle waits), whether of messages or of timers.
            let m = &shared.metrics.batch_seconds;
            m.with_label_values(&["collect"])
                .observe(collected.as_secs_f64());
            stage("prepare", preparing);
        }
        timers_backlogged = prepared.backlogged;
        if last_gauges.elapsed() > Duration::from_secs(5) {
            let gauging = Instant::now();
            update_gauges(&shared);
            stage("gauges", gauging);
            last_gauges = Instant::now();
        }
        if prepared.consumed.is_empty() && prepared.work.is_empty() {
            // Nothing new: let the batches under way land and count (offsets, metrics) now.
            if !past.drain(&shared, &consumer).await? {
                break;
            }
            continue;
        }
        // Process this batch while the previous one's actions are acknowledged and the one
        // before it is written: it reads through their writes.
        let started = Instant::now();
        // The next batch's due timers, read beside this one (through the entries it fires).
        let prefetch = caught_up.then(|| {
            let (s, owned) = (shared.clone(), owned.clone());
            let through = past.unwritten.with_fired(&prepared.work);
            tokio::task::spawn_blocking(move || {
                Prefetched::read(
                    &through,
                    s.store.as_ref(),
                    s.clock.now(),
                    s.config.processing.timer_batch,
                    &|p| owned.fires(p, Millis::MIN),
                )
            })
        });
        // Through the unwritten writes, then the states read beside the last batch.
        let reading = match prepared.states.take() {
            Some(states) => past.unwritten.with_states(states),
            None => past.unwritten.clone(),
        };
        let out = loop {
            let engine = shared.engine();
            let (s, work, consumed, unwritten) = (
                shared.clone(),
                prepared.work.clone(),
                prepared.consumed.clone(),
                reading.clone(),
            );
            let out = tokio::task::spawn_blocking(move || {
                run_batch(&engine, s.store.as_ref(), &unwritten, &work, &consumed)
            })
            .await?;
            match out {
                Ok(o) => break o,
                Err(error) => {
                    tracing::error!(%error, "The batch could not read its states; retrying.");
                    shared.metrics.batch_retries.inc();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        stage("process", started);
        tracing::debug!(
            messages = prepared.consumed.len(),
            timers = prepared.timers,
            actions = out.actions.len(),
            collect_ms = (preparing - collecting).as_secs_f64() * 1e3,
            total_ms = collecting.elapsed().as_secs_f64() * 1e3,
            "Batch processed; its actions go out after the previous batch's."
        );
        let Output {
            actions,
            write,
            tally,
        } = out;
        consumer.context().processed(&write.offsets);
        let write = Arc::new(write);
        past.unwritten.push(write.clone());
        prefetched = prefetch.map(|task| (task, write.clone()));
        // At most `batches_in_flight` batches on their way: the oldest must land first (its
        // actions acknowledged; then it is written, after the batch before it). Batches already
        // acknowledged land now, so their writes start.
        let waited = Instant::now();
        let mut landed = 0;
        let mut stopping = false;
        while !stopping && past.sending.must_land(in_flight) {
            stopping = !past.land(&shared, &consumer).await?;
            landed += 1;
        }
        if landed > 0 {
            stage("produce_wait", waited);
        }
        if stopping {
            break;
        }
        // Queued after the batches on their way, so they keep batch order in every partition.
        past.sending.send(
            &past.sender,
            Sent {
                actions,
                dead: prepared.dead,
                then: Then {
                    write,
                    topics: prepared.topics,
                    tally,
                    timestamps: prepared.timestamps,
                    timers: prepared.timers,
                },
            },
        );
    }
    past.drain(&shared, &consumer).await?;
    tracing::info!("Stopping: flushing the producer.");
    let _ = producer.flush(Duration::from_secs(10));
    // A static member (group.instance.id) must not leave the group on its way out: its
    // partitions wait for it instead of moving to a replica without their state. Closing the
    // consumer (on drop) keeps it in the group; unsubscribing would not.
    if !shared.config.kafka.contains_key("group.instance.id") {
        consumer.unsubscribe();
    }
    stop_probes.store(true, Ordering::SeqCst);
    let _ = probes.join();
    Ok(())
}

/// How long collect may take for the due timers read beside the last batch to be used.
const PREFETCH_FRESH: Duration = Duration::from_millis(5);

/// A read of due timers under way beside a batch.
type PrefetchTask = tokio::task::JoinHandle<Result<Prefetched, journeyd_store::Error>>;

/// What a batch hands on once Kafka has its messages: its write, and what to count.
struct Then {
    write: Arc<WriteSet>,
    topics: Vec<String>,
    tally: crate::processor::Tally,
    timestamps: Vec<i64>,
    timers: usize,
}

/// The batches past processing: on their way to Kafka, then being written; and their writes,
/// which later batches read through until they are in the store.
struct Past {
    sender: Sender,
    sending: InFlight<Then>,
    writing: Option<Writing>,
    unwritten: Unwritten,
}

impl Past {
    /// Waits for the oldest batch on its way to be acknowledged (see
    /// [`InFlight::land_oldest`]), counts it, then starts its write (after the previous write
    /// has landed). Returns false if it was not acknowledged (the service is stopping): then
    /// neither it nor any later batch is written.
    async fn land(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
    ) -> anyhow::Result<bool> {
        let Some(landed) = self
            .sending
            .land_oldest(&self.sender)
            .await
            .map_err(anyhow::Error::msg)?
        else {
            return Ok(false);
        };
        count(shared, &landed);
        if let Some(w) = self.writing.take() {
            let waited = Instant::now();
            finish(shared, consumer, &mut self.unwritten, w).await?;
            shared
                .metrics
                .batch_seconds
                .with_label_values(&["write_wait"])
                .observe(waited.elapsed().as_secs_f64());
        }
        let then = landed.sent.then;
        self.writing = Some(start_write(
            shared,
            then.write,
            then.topics,
            &self.sender.shutdown,
        ));
        Ok(true)
    }

    /// Lets the batches under way land, in order: those being sent (each written once Kafka
    /// acknowledges it) and the one being written. Returns false if one being sent was not
    /// acknowledged (the service is stopping); the later ones are then left unwritten too.
    async fn drain(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
    ) -> anyhow::Result<bool> {
        let mut acknowledged = true;
        while acknowledged && !self.sending.is_empty() {
            acknowledged = self.land(shared, consumer).await?;
        }
        if let Some(w) = self.writing.take() {
            finish(shared, consumer, &mut self.unwritten, w).await?;
        }
        Ok(acknowledged)
    }
}

/// Counts a batch Kafka has acknowledged: its actions, dead letters, timers and latencies.
fn count(shared: &Shared, landed: &Landed<Then>) {
    let m = &shared.metrics;
    let Sent {
        actions,
        dead,
        then,
    } = &landed.sent;
    m.batch_seconds
        .with_label_values(&["produce"])
        .observe(landed.took.as_secs_f64());
    let acknowledged_at = wall_now() - landed.acknowledged.elapsed().as_millis() as i64;
    for ts in &then.timestamps {
        m.event_to_action_seconds
            .observe(((acknowledged_at - ts).max(0) as f64) / 1000.0);
    }
    for d in dead {
        m.events_rejected.with_label_values(&[d.reason]).inc();
        tracing::warn!(reason = d.reason, error = %d.error, topic = d.message.topic(), partition = d.message.partition(), offset = d.message.offset(), "Message sent to the dead-letter topic.");
    }
    for a in actions {
        m.actions
            .with_label_values(&[a.channel.as_str(), a.kind.as_str()])
            .inc();
    }
    m.timers_fired.inc_by(then.timers as u64);
    m.apply(&then.tally);
}

/// A batch's write, under way.
struct Writing {
    task: tokio::task::JoinHandle<Result<(), journeyd_store::Error>>,
    write: Arc<WriteSet>,
    topics: Vec<String>,
}

/// Starts writing a batch; batches read through it meanwhile. A write that fails for a reason
/// that may pass (I/O trouble) is retried until it lands or the service stops; one that cannot
/// pass (an invalid write, a corrupt store) ends the task with the error, and the service
/// stops: the batch runs again after a restart.
fn start_write(
    shared: &Arc<Shared>,
    write: Arc<WriteSet>,
    topics: Vec<String>,
    shutdown: &CancellationToken,
) -> Writing {
    let (s, w, shutdown) = (shared.clone(), write.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut w = w;
        loop {
            let (s2, w2) = (s.clone(), w.clone());
            match tokio::task::spawn_blocking(move || s2.store.write(&w2)).await {
                Ok(Ok(())) => break,
                Ok(Err(error)) if !error.is_transient() => {
                    tracing::error!(%error, "Writing the batch to the store failed, and retrying cannot help: stopping. The batch runs again after a restart.");
                    return Err(error);
                }
                Ok(Err(error)) if shutdown.is_cancelled() => {
                    tracing::error!(%error, "Writing the batch to the store failed while stopping; the batch runs again after a restart.");
                    return Err(error);
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "Writing the batch to the store failed; retrying.");
                }
                Err(error) => {
                    tracing::error!(%error, "The batch's write did not finish; retrying.");
                }
            }
            s.metrics.batch_retries.inc();
            // Again without saying which entries exist: the failed attempt may have committed
            // after all (a panic after the commit), and the store's counts must not take its
            // changes twice. The store reads them itself.
            if w.timers_existed.is_some() || w.customers_existed.is_some() {
                w = Arc::new(WriteSet {
                    timers_existed: None,
                    customers_existed: None,
                    ..(*w).clone()
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        s.metrics
            .batch_seconds
            .with_label_values(&["write"])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    });
    Writing {
        task,
        write,
        topics,
    }
}

/// Waits for a batch's write to land, then counts its events and commits its offsets.
async fn finish(
    shared: &Shared,
    consumer: &StreamConsumer<Context>,
    unwritten: &mut Unwritten,
    w: Writing,
) -> anyhow::Result<()> {
    w.task
        .await?
        .map_err(|e| anyhow::Error::new(e).context("a batch could not be written to the store"))?;
    unwritten.pop_oldest();
    for t in &w.topics {
        shared
            .metrics
            .events_consumed
            .with_label_values(&[t.as_str()])
            .inc();
    }
    commit(consumer, &w.write.offsets);
    Ok(())
}

/// Commits consumed offsets to Kafka (asynchronously; only lag dashboards read them).
fn commit(consumer: &StreamConsumer<Context>, offsets: &[Offset]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for o in offsets {
        let _ = tpl.add_partition_offset(&o.topic, o.partition, KafkaOffset::Offset(o.next));
    }
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%error, "Committing offsets to Kafka failed (only lag dashboards use them).");
    }
}

/// Refreshes the gauges that come from the store.
pub fn update_gauges(shared: &Shared) {
    let m = &shared.metrics;
    m.timers_pending.set(shared.store.pending_timers() as i64);
    m.customers.set(shared.store.customer_count() as i64);
    m.store_bytes.set(shared.store.size_bytes() as i64);
    let lag = match shared.store.next_timer() {
        Ok(Some((due, _))) => ((shared.clock.now() - due).max(0) as f64) / 1000.0,
        _ => 0.0,
    };
    m.timer_lag_seconds.set(lag);
}

#[cfg(test)]
mod tests {
    use super::*;

    use rdkafka::Timestamp;

    #[tokio::test]
    async fn a_write_that_retrying_cannot_help_ends_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("store");
        config.journeys.dir = dir.path().join("journeys");
        std::fs::create_dir_all(&config.journeys.dir).unwrap();
        let opened = crate::app::open(&config).unwrap();
        let shared = crate::app::shared(config, opened).unwrap();
        // A topic name too long for the store's offset keys: refused before anything is written.
        let invalid = WriteSet {
            offsets: vec![Offset {
                topic: "t".repeat(100_000),
                partition: 0,
                next: 1,
            }],
            ..WriteSet::default()
        };
        let running = CancellationToken::new();
        let writing = start_write(&shared, Arc::new(invalid), Vec::new(), &running);
        let ended = tokio::time::timeout(Duration::from_secs(10), writing.task)
            .await
            .expect("it does not retry")
            .unwrap();
        let error = ended.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("topic name"), "{error}");
        assert_eq!(shared.metrics.batch_retries.get(), 0);
    }

    fn tpl(parts: &[(&str, i32)]) -> TopicPartitionList {
        let mut t = TopicPartitionList::new();
        for (topic, p) in parts {
            t.add_partition(topic, *p);
        }
        t
    }

    fn msg(topic: &str, partition: i32, ts: Millis) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.to_owned(),
            Timestamp::CreateTime(ts),
            partition,
            0,
            None,
        )
    }

    fn at_head(o: &Owned, topic: &str, p: i32) {
        o.lock().get_mut(&(topic.to_owned(), p)).unwrap().at_head = true;
    }

    #[test]
    fn an_assignment_resumes_after_the_last_batch_processed_or_written() {
        let stored = vec![
            Offset {
                topic: "a".into(),
                partition: 0,
                next: 10,
            },
            Offset {
                topic: "a".into(),
                partition: 1,
                next: 50,
            },
        ];
        // Partition 0 has two batches processed beyond the store; 1 is written further than
        // anything processed since the start; 2 was only processed; 3 is new.
        let processed = BTreeMap::from([
            (("a".to_owned(), 0), 30),
            (("a".to_owned(), 1), 40),
            (("a".to_owned(), 2), 7),
        ]);
        let assigned: Vec<(String, i32)> = (0..4).map(|p| ("a".to_owned(), p)).collect();
        assert_eq!(
            resume_at(&assigned, &stored, &processed),
            vec![
                ("a".to_owned(), 0, 30),
                ("a".to_owned(), 1, 50),
                ("a".to_owned(), 2, 7)
            ]
        );
    }

    #[test]
    fn a_timer_fires_only_where_its_partition_is_owned_read_and_past_its_due_time() {
        let o = Owned::default();
        assert!(!o.fires(0, 0), "nothing assigned");
        o.assign(&tpl(&[("a", 0), ("b", 0), ("a", 1)]));
        o.consumed(&[msg("a", 0, 10), msg("b", 0, 10)]);
        assert!(!o.fires(0, 5), "assigned, but not read to the head yet");
        at_head(&o, "a", 0);
        assert!(
            !o.fires(0, 5),
            "partition 0 of every input topic must be read"
        );
        at_head(&o, "b", 0);
        assert!(o.fires(0, 5));
        assert!(o.fires(0, 10));
        assert!(!o.fires(0, 11), "not read past the due time");
        o.consumed(&[msg("a", 0, 20)]);
        assert!(!o.fires(0, 15), "topic b's partition 0 is still at 10");
        o.consumed(&[msg("b", 0, 30), msg("x", 0, 99)]);
        assert!(o.fires(0, 20));
        assert!(!o.fires(1, 0), "partition 1 not read to its head");
        assert!(!o.fires(2, 0), "partition 2 not assigned");
        o.revoke(&tpl(&[("b", 0)]));
        assert!(o.fires(0, 20), "topic a alone now");
        assert!(!o.fires(0, 21));
        o.clear();
        assert!(!o.fires(0, 0));
    }

    #[test]
    fn an_answer_from_the_broker_marks_a_partition_read_only_when_reading_reached_its_head() {
        let o = Owned::default();
        let mut seeded = TopicPartitionList::new();
        seeded
            .add_partition_offset("a", 0, KafkaOffset::Offset(5))
            .unwrap();
        seeded.add_partition("b", 0);
        o.assign(&seeded);
        assert_eq!(o.to_probe().len(), 2, "new partitions are asked about");
        assert!(o.to_probe().is_empty(), "not again at once");
        o.answer(("a", 0), Some(5), (0, 7), 100);
        assert!(!o.lock()[&("a".to_owned(), 0)].at_head, "5 < 7: behind");
        o.answer(("b", 0), None, (3, 4), 100);
        assert!(
            !o.lock()[&("b".to_owned(), 0)].at_head,
            "unknown position, not empty"
        );
        o.consumed(&[msg("a", 0, 50)]);
        let next = o.lock()[&("a".to_owned(), 0)].next;
        assert_eq!(
            next,
            Some(5),
            "the position never goes back (offset 0 is below the seed)"
        );
        o.answer(("a", 0), Some(7), (0, 7), 100);
        o.answer(("b", 0), None, (4, 4), 120);
        let m = o.lock();
        assert!(m[&("a".to_owned(), 0)].at_head);
        assert_eq!(
            m[&("a".to_owned(), 0)].watermark,
            100,
            "read up to the question"
        );
        assert!(
            m[&("b".to_owned(), 0)].at_head,
            "an empty partition is read"
        );
        assert_eq!(m[&("b".to_owned(), 0)].watermark, 120);
    }
}
