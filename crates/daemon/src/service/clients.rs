//! The Kafka clients: their settings, the consumer's context (assignments seeded from the
//! store, revocations, the lag metric) and the producer.

use super::partitions::Partitions;
use super::Shared;
use crate::config::Config;
use crate::metrics::Metrics;
use journeyd_store::{Offset, Store};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The consumer context: seeds every assignment with the offsets from the store, keeps track of
/// the partitions this process owns, and turns librdkafka statistics into the consumer-lag
/// metric.
pub struct Context {
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Metrics,
    pub(super) partitions: Arc<Partitions>,
    /// The next offset of each partition after the batches processed so far, written or not.
    /// Batches overlap, so the store's offsets may trail these by a batch or two whose actions
    /// are on their way; an assignment resumes after both (see `rebalance`).
    pub(super) processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
    /// With the changelog on: the producer, flushed when partitions are revoked so that
    /// every changelog record queued for them is in Kafka before another replica restores
    /// them.
    pub(super) changelog_producer: Option<FutureProducer>,
    /// The events restored states hold already.
    pub(super) guards: Arc<crate::changelog::guards::Guards>,
}

impl Context {
    /// Records a processed batch's consumed offsets.
    pub(super) fn processed(&self, offsets: &[Offset]) {
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

impl Context {
    /// Forgets what was processed of partition numbers `numbers` (their batches since the
    /// last commit were aborted: they are read again).
    pub(super) fn forget_processed(&self, numbers: &std::collections::BTreeSet<i32>) {
        self.processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, p), _| !numbers.contains(p));
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
pub(super) fn resume_at(
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
                self.partitions.assign(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if self.changelog_producer.is_some() && assigned.is_ok() && tpl.count() > 0 {
                    // Read nothing of them until their customers are restored (the loop
                    // restores them beside the other partitions, then resumes them).
                    let numbers: std::collections::BTreeSet<i32> =
                        tpl.elements().iter().map(|el| el.partition()).collect();
                    self.partitions.to_restore(numbers.iter().copied());
                    if let Err(error) = consumer.pause(tpl) {
                        tracing::error!(%error, "Cannot pause the partitions to restore.");
                    }
                    tracing::info!(partitions = ?numbers, "Partitions assigned; restoring their customers from the changelog before reading them.");
                }
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "Partitions revoked.");
                self.partitions.revoke(tpl);
                {
                    let mut processed = self
                        .processed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for el in tpl.elements() {
                        processed.remove(&(el.topic().to_owned(), el.partition()));
                        self.guards.forget(el.partition());
                    }
                }
                if let (Some(producer), false) =
                    (&self.changelog_producer, consumer.assignment_lost())
                {
                    // The changelog records queued for them reach Kafka before the partitions
                    // go: their next owner restores up to the end it sees. Records of batches
                    // landing later leave them out (see `changelog::fence`).
                    use rdkafka::producer::Producer as _;
                    if let Err(error) = producer.flush(std::time::Duration::from_secs(30)) {
                        tracing::error!(%error, "Flushing the changelog for revoked partitions failed: their next owner may restore less than was sent.");
                    }
                }
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
                self.partitions.clear();
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "Applying a rebalance failed.");
        }
    }
}

/// librdkafka's consumer-only settings (marked C in its CONFIGURATION.md): a producer given one
/// logs a CONFWARN at every start.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "allow.auto.create.topics",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// librdkafka's producer-only settings (marked P): a consumer given one logs a CONFWARN.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// Which client a set of settings is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The group member that consumes the input.
    Consumer,
    /// The client that asks for watermarks: a consumer outside the group.
    Probe,
    /// The action producer.
    Producer,
}

/// The `[kafka]` settings that belong to `role`: each client gets the settings for both and
/// its own, so none logs a warning for another's.
pub(crate) fn client_config(config: &Config, role: Role) -> ClientConfig {
    let foreign: &[&str] = match role {
        Role::Consumer | Role::Probe => PRODUCER_ONLY,
        Role::Producer => CONSUMER_ONLY,
    };
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka {
        if foreign.contains(&k.as_str()) {
            continue;
        }
        if role == Role::Probe
            && matches!(
                k.as_str(),
                "group.id"
                    | "group.instance.id"
                    | "partition.assignment.strategy"
                    | "session.timeout.ms"
                    | "statistics.interval.ms"
                    | "enable.auto.commit"
                    | "enable.auto.offset.store"
            )
        {
            continue;
        }
        if role == Role::Producer && k == "statistics.interval.ms" {
            continue;
        }
        c.set(k, v);
    }
    c
}

pub(super) fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The settings of the client that asks for watermarks: the service's consumer settings,
/// without the group.
pub(crate) fn probe_client_config(config: &Config) -> ClientConfig {
    client_config(config, Role::Probe)
}

/// Creates the action producer: the `[kafka]` settings without the consumer-only ones,
/// idempotent, `acks=all`, a 1 ms linger and lz4 unless the configuration says otherwise.
/// (Public for the benchmark's raw loops, which produce as the service does.)
pub fn producer(config: &Config) -> Result<FutureProducer, KafkaError> {
    let mut pc = client_config(config, Role::Producer);
    set_default(&mut pc, "enable.idempotence", "true");
    set_default(&mut pc, "acks", "all");
    // The loop queues a whole batch's sends at once: the batching is done, and a longer linger
    // would only add idle time per batch.
    set_default(&mut pc, "linger.ms", "1");
    set_default(&mut pc, "compression.type", "lz4");
    if config.processing.guarantee == crate::config::Guarantee::ExactlyOnce {
        set_default(
            &mut pc,
            "transactional.id",
            &super::transaction::transactional_id(config),
        );
        set_default(
            &mut pc,
            "transaction.timeout.ms",
            &crate::config::TRANSACTION_TIMEOUT_MS.to_string(),
        );
    }
    pc.create()
}

/// Creates the consumer (subscribed) and the producer.
pub fn clients(shared: &Shared) -> Result<(StreamConsumer<Context>, FutureProducer), KafkaError> {
    let mut cc = client_config(&shared.config, Role::Consumer);
    cc.set("enable.auto.commit", "false");
    cc.set("enable.auto.offset.store", "false");
    set_default(&mut cc, "auto.offset.reset", "earliest");
    set_default(&mut cc, "statistics.interval.ms", "5000");
    let changelog = shared.config.changelog_topic().is_some();
    // With the changelog and several inputs, partition p of every input topic must go to
    // the same replica (it owns changelog partition p): the range assignor gives equal
    // partition numbers of equally partitioned topics to the same member; cooperative-sticky
    // does not.
    let strategy = if changelog && shared.config.inputs.len() > 1 {
        "range"
    } else {
        "cooperative-sticky"
    };
    set_default(&mut cc, "partition.assignment.strategy", strategy);
    let producer = producer(&shared.config)?;
    let consumer: StreamConsumer<Context> = cc.create_with_context(Context {
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        partitions: shared.partitions.clone(),
        processed: Arc::default(),
        changelog_producer: changelog.then(|| producer.clone()),
        guards: shared.guards.clone(),
    })?;
    let topics: Vec<&str> = shared
        .config
        .inputs
        .iter()
        .map(|i| i.topic.as_str())
        .collect();
    consumer.subscribe(&topics)?;
    Ok((consumer, producer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_only_the_settings_that_are_its_own() {
        let mut config = Config::default();
        for (k, v) in [
            ("fetch.wait.max.ms", "5"),
            ("session.timeout.ms", "6000"),
            ("linger.ms", "3"),
            ("message.timeout.ms", "60000"),
            ("security.protocol", "plaintext"),
            ("group.instance.id", "j-0"),
        ] {
            config.kafka.insert(k.to_owned(), v.to_owned());
        }
        let consumer = client_config(&config, Role::Consumer);
        let producer = client_config(&config, Role::Producer);
        let probe = client_config(&config, Role::Probe);
        for c in [&consumer, &producer, &probe] {
            assert_eq!(c.get("security.protocol"), Some("plaintext"), "shared");
            assert_eq!(c.get("bootstrap.servers"), Some("localhost:9092"));
        }
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(consumer.get("group.instance.id"), Some("j-0"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("message.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("3"));
        assert_eq!(producer.get("message.timeout.ms"), Some("60000"));
        for k in [
            "fetch.wait.max.ms",
            "session.timeout.ms",
            "group.id",
            "group.instance.id",
        ] {
            assert_eq!(producer.get(k), None, "{k}");
        }
        assert_eq!(probe.get("fetch.wait.max.ms"), Some("5"));
        for k in [
            "group.id",
            "group.instance.id",
            "session.timeout.ms",
            "linger.ms",
        ] {
            assert_eq!(probe.get(k), None, "{k}");
        }
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
}
