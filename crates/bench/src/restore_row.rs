//! Row 5: restore. N customers' changelog records (the scale row's customer: one journey, one
//! pending timer; N = the scale row's customers, at most [`MOST`]), with an input position
//! after every 1,000 as the service writes them, in one partition of a changelog topic on the
//! mock cluster, restored into an empty RocksDB store by `journeyd::changelog::restore` (what a
//! replica does when a partition is assigned to it), against a plain consume of the same
//! partition through the same client settings (assign, poll every record, nothing else).
//!
//! The record is the one the service produces for such a customer (`run_batch_logged` over the
//! entry event), keyed for each customer. The restore is timed from the call to its return: the
//! consumer's start, the records, the store writes, and its quiet end (two empty polls).

use crate::support::daemon_store_options;
use crate::support::kafka::{send_record_waiting, Cluster, Mock};
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

/// Produces the N records in large batches, as a busy service's changelog holds them (the
/// mock cluster answers a fetch with one batch: small ones would measure its fetch loop).
fn produce(bootstrap: &str, customers: usize, value: &[u8]) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "50")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let position_key = journeyd::changelog::record::position_key("touchpoints");
    for i in 0..customers {
        let key = customer_key(&workload::scale_customer(i));
        // After every batch of 1,000 customers, the input position, as the service writes.
        let position = journeyd::changelog::record::encode_position(i as i64 + 1);
        let records: &[(&[u8], &[u8])] = if (i + 1) % 1000 == 0 {
            &[
                (key.as_slice(), value),
                (position_key.as_slice(), position.as_slice()),
            ]
        } else {
            &[(key.as_slice(), value)]
        };
        for (k, v) in records {
            send_record_waiting(
                &producer,
                BaseRecord::<[u8], [u8]>::to(TOPIC)
                    .partition(0)
                    .key(*k)
                    .payload(*v),
            )?;
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
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

/// The most customers the row restores: the mock cluster finds a fetch's offset by walking
/// the partition's batches from the first, so reading a partition costs the square of its
/// length (a million records did not finish in ten minutes; 300,000 take a second).
pub const MOST: usize = 300_000;

/// The restore row: customers restored per second against the plain consume.
pub fn measure(customers: usize) -> anyhow::Result<Vec<Row>> {
    let customers = customers.min(MOST);
    let cluster = Mock::start()?;
    cluster.create_topic(TOPIC, 1)?;
    let value = record_value()?;
    let t = Instant::now();
    produce(&cluster.bootstrap(), customers, &value)?;
    eprintln!(
        "journeyd bench: restore: {customers} records produced in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "restore-bench")
        .set("enable.auto.commit", "false")
        // As the restore's own consumer.
        .set("fetch.wait.max.ms", "50");
    let records = customers + customers / 1000;
    let plain = plain_consume(&client, records)?;
    eprintln!("journeyd bench: restore: plain consume {plain:.1} s");
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
        restored.records == records as u64 && store.customer_count() == customers as u64,
        "restored {} records, {} customers, of {customers}",
        restored.records,
        store.customer_count()
    );
    anyhow::ensure!(
        store.pending_timers() == customers as u64,
        "{} timers restored of {customers}",
        store.pending_timers()
    );
    let (rate, limit) = (customers as f64 / took, records as f64 / plain);
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
