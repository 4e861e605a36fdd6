//! Row 2: the engine with state and timers in RocksDB, in batches, against a raw RocksDB
//! `WriteBatch` loop writing the same keys and values.
//!
//! The measured loop is the daemon's own batch path without Kafka: for every batch of 1,000
//! events of the mix, read the due timers up to the batch's last event time (as the service does
//! once it has caught up), run `journeyd::processor::run_batch` (read the states, run the
//! engine, encode the states), then `Store::write` the batch's `WriteSet` into a
//! `RocksStore` opened with the daemon's default options.
//!
//! The limit replays exactly the puts and deletes of those write sets (same keys, same value
//! bytes, same number per batch) into a fresh database opened with the same options
//! (`journeyd_store_rocksdb::rocksdb_options`), one `WriteBatch` per batch, no reads.

use crate::engine_row::stream_window;
use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::processor::{run_batch, Position, Unwritten, Work};
use journeyd_store::{Store, WriteSet};
use journeyd_store_rocksdb::{keys, rocksdb_options, rocksdb_write_options, RocksStore};
use journeyd_store_rocksdb::{StoreOptions, FORMAT_VERSION};
use std::time::Instant;

/// Events per batch (the daemon's `processing.batch_max_messages`).
pub const BATCH: usize = 1000;
/// Due timers read per batch at most (the daemon's `processing.timer_batch`).
pub const TIMER_BATCH: usize = 5000;

/// The store options of the daemon's defaults (`[store]` in the config).
pub fn daemon_store_options() -> StoreOptions {
    let config = journeyd::config::Config::default();
    StoreOptions {
        block_cache_bytes: (config.store.block_cache_mb as usize) << 20,
        sync_writes: config.store.sync_writes,
        ..StoreOptions::default()
    }
}

type RawBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn raw_ops(set: WriteSet) -> anyhow::Result<RawBatch> {
    let mut ops = Vec::with_capacity(set.customers.len() + set.set_timers.len() + 4);
    for (id, value) in &set.customers {
        ops.push((keys::customer(id), value.clone()));
    }
    for (due, customer) in &set.clear_timers {
        ops.push((keys::timer(*due, customer), None));
    }
    // A timer's value names the partition that owns it (as the store writes it).
    let owner: std::collections::HashMap<&str, i32> = set
        .timer_partitions
        .iter()
        .map(|(c, p)| (c.as_str(), *p))
        .collect();
    for (due, customer) in &set.set_timers {
        let value = owner
            .get(customer.as_str())
            .map_or_else(Vec::new, |p| p.to_be_bytes().to_vec());
        ops.push((keys::timer(*due, customer), Some(value)));
    }
    for o in &set.offsets {
        ops.push((
            keys::offset(&o.topic, o.partition)?,
            Some(o.next.to_be_bytes().to_vec()),
        ));
    }
    Ok(ops)
}

/// Measures the row.
pub fn measure(events: usize) -> anyhow::Result<Vec<Row>> {
    let engine = workload::engine_for(&workload::example_journeys())?;
    let (start, span) = stream_window();
    let stream = workload::events(&engine, events, start, span);
    // The batches, prepared outside the clock (the daemon decodes them in its own step).
    let mut batches: Vec<(Vec<Work>, Vec<Position>, i64)> = Vec::new();
    for (b, chunk) in stream.chunks(BATCH).enumerate() {
        let consumed = (0..chunk.len())
            .map(|i| Position {
                topic: "touchpoints".into(),
                partition: ((b * BATCH + i) % 4) as i32,
                offset: ((b * BATCH + i) / 4) as i64,
            })
            .collect();
        let last = chunk.last().map_or(start, |e| e.occurred_at);
        batches.push((
            chunk
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, event)| Work::Event {
                    event,
                    partition: ((b * BATCH + i) % 4) as i32,
                })
                .collect(),
            consumed,
            last,
        ));
    }
    drop(stream);

    let options = daemon_store_options();
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(&dir.path().join("store"), &options)?;
    let mut recorded: Vec<WriteSet> = Vec::with_capacity(batches.len());
    let (mut actions, mut timers, mut values, mut value_bytes) = (0usize, 0usize, 0usize, 0usize);
    let t0 = Instant::now();
    for (mut work, consumed, last) in batches {
        // As the service reads them (it owns every partition here).
        let due = store.due_timers_in(last, TIMER_BATCH, &|_| true)?;
        timers += due.len();
        work.extend(due.into_iter().map(|t| Work::Timer {
            due: t.due,
            customer: t.customer,
            partition: t.partition,
        }));
        let out = run_batch(&engine, &store, &Unwritten::none(), &work, &consumed)?;
        store.write(&out.write)?;
        actions += out.actions.len();
        recorded.push(out.write);
    }
    let store_secs = t0.elapsed().as_secs_f64();
    let store_eps = events as f64 / store_secs;
    drop(store);

    let raw: Vec<RawBatch> = recorded
        .into_iter()
        .map(raw_ops)
        .collect::<anyhow::Result<_>>()?;
    for b in &raw {
        values += b.len();
        value_bytes += b
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    }
    let raw_dir = tempfile::tempdir()?;
    let db = rocksdb::DB::open(&rocksdb_options(&options), raw_dir.path())?;
    let wo = rocksdb_write_options(&options);
    // The same first write as a new store (format version and counters), for a fair start.
    db.put(
        keys::meta(keys::meta::FORMAT_VERSION),
        FORMAT_VERSION.to_be_bytes(),
    )?;
    let t1 = Instant::now();
    for b in &raw {
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in b {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        db.write_opt(batch, &wo)?;
    }
    let raw_secs = t1.elapsed().as_secs_f64();
    let raw_eps = events as f64 / raw_secs;
    drop(db);

    let ratio = store_eps / raw_eps;
    Ok(vec![
        Row {
            name: format!(
                "engine + RocksDB: events/s, batches of {BATCH} through run_batch + Store::write ({} events, {} timers fired, {} actions)",
                thousands(events as f64),
                thousands(timers as f64),
                thousands(actions as f64)
            ),
            measured: thousands(store_eps),
            limit: format!(
                "raw WriteBatch loop, same {} puts/deletes ({:.0} B each on average): {} events/s",
                thousands(values as f64),
                value_bytes as f64 / values.max(1) as f64,
                thousands(raw_eps)
            ),
            ratio: percent(ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(ratio >= 0.5),
        },
        Row::info(
            "engine + RocksDB: seconds, measured / raw",
            format!("{store_secs:.2} / {raw_secs:.2}"),
        ),
    ])
}
