//! Row 2: the engine with state and timers in RocksDB, in batches, against a raw RocksDB
//! `WriteBatch` loop writing the same keys and values.
//!
//! The measured loop is the daemon's own batch path without Kafka: for every batch of 1,000
//! events of the mix, read the due timers up to the batch's last event time (as the service does
//! once it has caught up), run `journeyd::processor::run_batch` (read the states, run the
//! engine, encode the states), then `Store::write` the batch's `WriteSet` into a
//! `RocksStore` opened with the daemon's default options. As the daemon runs it, each batch's
//! write goes to a writer thread while the next batch runs over it (`Unwritten`); an info row
//! gives the same loop on one thread.
//!
//! The limit replays exactly the puts and deletes of those write sets (same keys, same value
//! bytes, same number per batch) into a fresh database opened with the same options
//! (`journeyd_store_rocksdb::rocksdb_options`), one `WriteBatch` per batch, no reads.

use crate::support::{daemon_store_options, dir_bytes, stream_window, BATCH, TIMER_BATCH};
use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::processor::{run_batch, Position, Unwritten, Work};
use journeyd_store::{Store, WriteSet};
use journeyd_store_rocksdb::{keys, rocksdb_options, rocksdb_write_options, RocksStore};
use journeyd_store_rocksdb::{StoreOptions, FORMAT_VERSION};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The target of issue 19: bytes on disk per customer with state (state, timers, history).
pub const TARGET_DISK_BYTES: f64 = 256.0;

/// One raw operation: a put, a delete, or a merge (the history's appends).
type RawBatch = Vec<(Vec<u8>, RawOp)>;

#[derive(Debug, Clone)]
enum RawOp {
    Put(Vec<u8>),
    Delete,
    Merge(Vec<u8>),
}

fn raw_ops(set: WriteSet) -> anyhow::Result<RawBatch> {
    let mut ops = Vec::with_capacity(set.customers.len() + set.set_timers.len() + 4);
    for (id, value) in &set.customers {
        let op = value.clone().map_or(RawOp::Delete, RawOp::Put);
        ops.push((keys::customer(id), op));
    }
    for (due, customer) in &set.clear_timers {
        ops.push((keys::timer(*due, customer), RawOp::Delete));
    }
    // A timer's value names the partition that owns it (as the store writes it).
    let owner: std::collections::HashMap<&str, i32> = set.timer_owners();
    for (due, customer) in &set.set_timers {
        let value = owner
            .get(customer.as_str())
            .map_or_else(Vec::new, |p| p.to_be_bytes().to_vec());
        ops.push((keys::timer(*due, customer), RawOp::Put(value)));
    }
    for o in &set.offsets {
        ops.push((
            keys::offset(&o.topic, o.partition)?,
            RawOp::Put(o.next.to_be_bytes().to_vec()),
        ));
    }
    // The history's appends, one merge per customer as the store makes them.
    for (key, operand) in journeyd_store_rocksdb::history_merges(&set) {
        ops.push((key, RawOp::Merge(operand)));
    }
    Ok(ops)
}

/// Measures the row.
pub fn measure(events: usize) -> anyhow::Result<Vec<Row>> {
    let engine = workload::engine_for(&workload::example_journeys())?;
    let (start, span) = stream_window();
    let stream = workload::events(&engine, events, start, span);
    // The batches, prepared outside the clock (the daemon decodes them in its own step).
    let mut batches: Vec<Batch> = Vec::new();
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
                    read_at: None,
                })
                .collect(),
            consumed,
            last,
        ));
    }
    drop(stream);

    let seen = batches
        .iter()
        .flat_map(|(work, _, _)| work)
        .filter_map(|w| match w {
            Work::Event { event, .. } => Some(event.customer_id.as_str()),
            Work::Timer { .. } | Work::Settle { .. } | Work::Audience { .. } => None,
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    let options = daemon_store_options();
    // One thread: run_batch then Store::write, batch after batch (info).
    let dir = tempfile::tempdir()?;
    let serial = through_store(&engine, &options, dir.path(), batches.clone(), false)?;
    let footprint = footprint(dir.path(), &options, seen)?;
    drop(dir);
    // As the daemon runs it, the row's figure: each batch's write beside the next batch (which
    // reads through it).
    let dir = tempfile::tempdir()?;
    let beside = through_store(&engine, &options, dir.path(), batches, true)?;
    drop(dir);
    let (store_secs, timers, actions, recorded) = serial;
    let store_eps = events as f64 / store_secs;
    let beside_eps = events as f64 / beside.0;
    let (mut values, mut value_bytes) = (0usize, 0usize);

    let raw: Vec<RawBatch> = recorded
        .into_iter()
        .map(raw_ops)
        .collect::<anyhow::Result<_>>()?;
    for b in &raw {
        values += b.len();
        value_bytes += b
            .iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        RawOp::Put(v) | RawOp::Merge(v) => v.len(),
                        RawOp::Delete => 0,
                    }
            })
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
                RawOp::Put(v) => batch.put(k, v),
                RawOp::Delete => batch.delete(k),
                RawOp::Merge(v) => batch.merge(k, v),
            }
        }
        db.write_opt(batch, &wo)?;
    }
    let raw_secs = t1.elapsed().as_secs_f64();
    let raw_eps = events as f64 / raw_secs;
    drop(db);

    let ratio = beside_eps / raw_eps;
    Ok(vec![
        Row {
            name: format!(
                "engine + RocksDB: events/s, batches of {BATCH} through run_batch + Store::write as the daemon runs them, each batch's write on a second thread beside the next batch ({} events, {} timers fired, {} actions)",
                thousands(events as f64),
                thousands(timers as f64),
                thousands(actions as f64)
            ),
            measured: thousands(beside_eps),
            limit: format!(
                "raw WriteBatch loop, one thread, same {} puts/deletes/merges ({:.0} B each on average): {} events/s",
                thousands(values as f64),
                value_bytes as f64 / values.max(1) as f64,
                thousands(raw_eps)
            ),
            ratio: percent(ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(ratio >= 0.5),
        },
        Row {
            name: format!(
                "engine + RocksDB: bytes on disk per customer with state after the month of the mix, flushed and compacted: SST / all files ({} of the {} customers seen have state)",
                thousands(footprint.with_state as f64),
                thousands(footprint.seen as f64),
            ),
            measured: format!(
                "{:.0} / {:.0}",
                footprint.per_customer(footprint.sst),
                footprint.per_customer(footprint.all)
            ),
            limit: format!("target {TARGET_DISK_BYTES:.0} B"),
            ratio: percent(footprint.per_customer(footprint.sst) / TARGET_DISK_BYTES),
            target: "≤ 256 B".into(),
            verdict: Verdict::of(footprint.per_customer(footprint.sst) <= TARGET_DISK_BYTES),
        },
        Row::info(
            "engine + RocksDB: seconds, measured / raw",
            format!("{:.2} / {raw_secs:.2}", beside.0),
        ),
        Row::info(
            "engine + RocksDB: events/s on one thread (run_batch, then Store::write, batch after batch)",
            format!(
                "{} ({} of the raw loop)",
                thousands(store_eps),
                percent(store_eps / raw_eps)
            ),
        ),
    ])
}

/// What the month of the mix left on disk, once flushed and compacted (what the store
/// settles to).
struct Footprint {
    /// Customers with a stored state, and customers the stream named.
    with_state: u64,
    seen: usize,
    /// Bytes of every file of the store, and of its SST files.
    all: u64,
    sst: u64,
}

impl Footprint {
    fn per_customer(&self, b: u64) -> f64 {
        b as f64 / self.with_state.max(1) as f64
    }
}

fn footprint(dir: &Path, options: &StoreOptions, seen: usize) -> anyhow::Result<Footprint> {
    let path = dir.join("store");
    let with_state = RocksStore::open(&path, options)?.customer_count();
    {
        let db = rocksdb::DB::open(&rocksdb_options(options), &path)?;
        db.flush()?;
        db.compact_range::<&[u8], &[u8]>(None, None);
    }
    let (all, sst) = dir_bytes(&path)?;
    Ok(Footprint {
        with_state,
        seen,
        all,
        sst,
    })
}

/// One batch: its work, its consumed positions, its last event time.
type Batch = (Vec<Work>, Vec<Position>, i64);

/// Runs the batches through `run_batch` and `Store::write` into a fresh store: one after the
/// other, or (`beside`) each write on a second thread while the next batch runs, reading
/// through it. Returns the seconds, the timers fired, the actions and the write sets.
fn through_store(
    engine: &journeyd_engine::Engine,
    options: &StoreOptions,
    dir: &Path,
    batches: Vec<Batch>,
    beside: bool,
) -> anyhow::Result<(f64, usize, usize, Vec<WriteSet>)> {
    let store = RocksStore::open(&dir.join("store"), options)?;
    let mut recorded: Vec<Arc<WriteSet>> = Vec::with_capacity(batches.len());
    let (mut actions, mut timers) = (0usize, 0usize);
    let t0 = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let store = &store;
        let mut unwritten = Unwritten::none();
        // One writer thread for the run, as the daemon's writes run on its blocking pool's
        // threads (a thread per write cost more than the write under mimalloc).
        let (to_writer, writes) = std::sync::mpsc::channel::<Arc<WriteSet>>();
        let (done, written) = std::sync::mpsc::channel::<Result<(), journeyd_store::Error>>();
        let writer = beside.then(|| {
            scope.spawn(move || {
                for w in writes {
                    if done.send(store.write(&w)).is_err() {
                        break;
                    }
                }
            })
        });
        let mut in_flight = false;
        let wait = |in_flight: &mut bool| -> anyhow::Result<()> {
            if std::mem::take(in_flight) {
                written
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the writer thread stopped"))??;
            }
            Ok(())
        };
        for (mut work, consumed, last) in batches {
            // As the service reads them (it owns every partition here).
            let due = unwritten.due_timers_in(store, last, TIMER_BATCH, &|_| true)?;
            timers += due.len();
            work.extend(due.into_iter().map(|t| Work::Timer {
                due: t.due,
                customer: t.customer,
                partition: t.partition,
            }));
            let out = run_batch(engine, store, &unwritten, &work, &consumed)?;
            actions += out.actions.len();
            let write = Arc::new(out.write);
            recorded.push(write.clone());
            if !beside {
                store.write(&write)?;
                continue;
            }
            unwritten.push(write.clone());
            if in_flight {
                wait(&mut in_flight)?;
                unwritten.pop_oldest();
            }
            to_writer
                .send(write)
                .map_err(|_| anyhow::anyhow!("the writer thread stopped"))?;
            in_flight = true;
        }
        wait(&mut in_flight)?;
        drop(to_writer);
        if let Some(w) = writer {
            w.join()
                .map_err(|_| anyhow::anyhow!("the writer panicked"))?;
        }
        Ok(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    drop(store);
    let recorded = recorded
        .into_iter()
        .map(|w| Arc::try_unwrap(w).unwrap_or_else(|w| (*w).clone()))
        .collect();
    Ok((secs, timers, actions, recorded))
}
