//! Row 5: restore. N customers' changelog records (the scale row's customer: one journey, one
//! pending timer; N = the scale row's customers) in one partition of a changelog topic on the
//! mock cluster, restored into an empty RocksDB store by `journeyd::changelog::restore` (what a
//! replica does when a partition is assigned to it), against a plain consume of the same
//! partition through the same client settings (assign, poll every record, nothing else).
//!
//! The record is the one the service produces for such a customer (`run_batch_logged` over the
//! entry event), keyed for each customer. The restore is timed from the call to its return: the
//! consumer's start, the records, the store writes, and its quiet end (two empty polls).

use crate::kafka_row::{produce_all, Cluster, Mock, Payload};
use crate::rocks_row::daemon_store_options;
use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::changelog::record::customer_key;
use journeyd::changelog::restore::restore;
use journeyd::processor::{run_batch_logged, Unwritten, Work};
use journeyd_store::{MemoryStore, Store};
use journeyd_store_rocksdb::RocksStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The target of the issue: the restore's customers per second against the plain consume.
pub const TARGET: f64 = 0.5;

const TOPIC: &str = "restore.changelog";

/// The changelog record of one scale-row customer, as the service produces it.
fn record_value() -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bench.yaml"), workload::SCALE_JOURNEY)?;
    let engine = journeyd_engine::Engine::new(
        journeyd_journey::load_dir(dir.path())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .catalog,
    );
    let work = [Work::Event {
        event: workload::scale_entry(0, journeyd::clock::wall_now()),
        partition: 0,
        read_at: Some(("touchpoints".into(), 0)),
    }];
    let out = run_batch_logged(
        &engine,
        &MemoryStore::new(),
        &Unwritten::none(),
        &work,
        &[],
        true,
    )?;
    out.changes
        .into_iter()
        .find_map(|c| c.value.filter(|_| c.key.first() == Some(&b'c')))
        .ok_or_else(|| anyhow::anyhow!("no customer record"))
}

/// Reads the partition from the start to `n` records with a plain consumer: seconds.
fn plain_consume(client: &ClientConfig, n: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let consumer: BaseConsumer = client.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut read = 0;
    let deadline = start + Duration::from_secs(600);
    while read < n {
        anyhow::ensure!(Instant::now() < deadline, "read {read} of {n} records");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            read += 1;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The restore row: customers restored per second against the plain consume.
pub fn measure(customers: usize) -> anyhow::Result<Vec<Row>> {
    let cluster = Mock::start()?;
    cluster.create_topic(TOPIC, 1)?;
    let value = record_value()?;
    let payloads: Vec<Payload> = (0..customers)
        .map(|i| {
            let key = String::from_utf8(customer_key(&workload::scale_customer(i)))
                .expect("ids are UTF-8");
            (key, value.clone())
        })
        .collect();
    produce_all(&cluster.bootstrap(), TOPIC, &payloads)?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "restore-bench")
        .set("enable.auto.commit", "false")
        // As the restore's own consumer.
        .set("fetch.wait.max.ms", "50");
    let plain = plain_consume(&client, customers)?;
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(&dir.path().join("store"), &daemon_store_options())?;
    let start = Instant::now();
    let restored = restore(
        &client,
        &store,
        TOPIC,
        0,
        50,
        &AtomicBool::new(false),
        &|_, _| {},
    )?;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        restored.records == customers as u64 && store.customer_count() == customers as u64,
        "restored {} records, {} customers, of {customers}",
        restored.records,
        store.customer_count()
    );
    anyhow::ensure!(
        store.pending_timers() == customers as u64,
        "{} timers restored of {customers}",
        store.pending_timers()
    );
    let (rate, limit) = (customers as f64 / took, customers as f64 / plain);
    let ratio = rate / limit;
    Ok(vec![Row {
        name: format!(
            "restore: customers/s from a changelog partition into an empty store ({} customers, {} B records)",
            thousands(customers as f64),
            value.len() + 10
        ),
        measured: thousands(rate),
        limit: format!(
            "a plain consume of the same partition, same client: {} records/s",
            thousands(limit)
        ),
        ratio: percent(ratio),
        target: "≥ 50%".into(),
        verdict: Verdict::of(ratio >= TARGET),
    }])
}
