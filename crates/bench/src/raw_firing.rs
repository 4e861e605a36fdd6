//! The scale row's machine limit for firing timers: a plain loop doing, for every due timer, the
//! reads, writes and produce the daemon does, and nothing else.
//!
//! The daemon fires a timer by reading its index entry, reading and decoding the customer's
//! state, running the engine, encoding the new state and the email, producing the email and
//! waiting for its acknowledgement, then writing the state, the deletion of the entry and the
//! history's append in one `WriteBatch`. The raw loop keeps the I/O and drops the rest: on one
//! thread, over a copy of the same store (a RocksDB checkpoint taken after set-up), batches of
//! [`TIMER_BATCH`] entries read in index order (each read starts after the last entry taken, so
//! it never walks the tombstones of the ones it deleted), one `multi_get` of their customers,
//! one produce per timer of the same payload and headers as the daemon's email (the bytes of one
//! real firing, [`Template`]) to an embedded mock cluster as the daemon's is, every produce of a
//! batch acknowledged, then one `WriteBatch` per batch with the same operations and value sizes,
//! written with the store's options. No engine, no encoding, no state cache, no overlap of
//! batches.

use crate::support::TIMER_BATCH;
use journeyd::processor::{run_batch, Unwritten, Work};
use journeyd_codec::{ActionEncoder, Format};
use journeyd_store::Store;
use journeyd_store_rocksdb::keys::{self, Table};
use journeyd_store_rocksdb::{rocksdb_options, rocksdb_write_options, StoreOptions};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use std::path::Path;
use std::time::{Duration, Instant};

/// What firing one timer writes and sends, taken from one real firing through `run_batch`.
#[derive(Debug, Clone)]
pub struct Template {
    /// The customer's state after the firing (stored under its customer key).
    pub state: Vec<u8>,
    /// The history's merge operand of the firing.
    pub history: Vec<u8>,
    /// The email's encoded payload.
    pub payload: Vec<u8>,
    /// The email's action id (its length is what the raw loop's header carries).
    pub action_id: String,
    /// The customer whose timer fired (their id in the payload is replaced per message).
    pub customer: String,
    /// The action's kind header.
    pub kind: String,
    /// The topic the email goes to.
    pub topic: String,
}

impl Template {
    /// Fires the first due timer of `store` through `run_batch` (nothing is written) and keeps
    /// what the daemon would write and send for it.
    pub fn of(
        engine: &journeyd_engine::Engine,
        store: &dyn Store,
        config: &journeyd::config::Config,
    ) -> anyhow::Result<Template> {
        let (due, customer) = store
            .next_timer()?
            .ok_or_else(|| anyhow::anyhow!("no timer to fire"))?;
        let work = [Work::Timer {
            due,
            customer: customer.clone(),
            partition: Some(0),
        }];
        let out = run_batch(engine, store, &Unwritten::none(), &work, &[])?;
        let [action] = out.actions.as_slice() else {
            anyhow::bail!("firing one timer sent {} actions, not 1", out.actions.len());
        };
        let state = match out.write.customers.as_slice() {
            [(_, Some(state))] => state.clone(),
            _ => anyhow::bail!("firing one timer did not write one state"),
        };
        // The fired entry, named twice (as fired, and as the state's old wake): the store
        // deletes it once.
        let cleared: std::collections::BTreeSet<_> = out.write.clear_timers.iter().collect();
        anyhow::ensure!(
            cleared.len() == 1 && out.write.set_timers.is_empty(),
            "firing one timer cleared {} entries and set {}",
            cleared.len(),
            out.write.set_timers.len()
        );
        let history = match journeyd_store_rocksdb::history_merges(&out.write).as_slice() {
            [(_, operand)] => operand.clone(),
            m => anyhow::bail!("firing one timer made {} history merges, not 1", m.len()),
        };
        let topic = config.actions_topic(&action.channel);
        let payload = ActionEncoder::new(Format::Avro).encode(action, &topic)?;
        Ok(Template {
            state,
            history,
            payload,
            action_id: action.action_id.clone(),
            customer,
            kind: action.kind.as_str().to_owned(),
            topic,
        })
    }
}

impl Template {
    /// The payload with the template's customer and action id replaced by `customer` and `id`
    /// wherever they appear and are of the same length (ids of the scale row are).
    pub fn payload_for(&self, customer: &str, id: &str) -> Vec<u8> {
        let mut out = self.payload.clone();
        replace_same_length(&mut out, self.customer.as_bytes(), customer.as_bytes());
        replace_same_length(&mut out, self.action_id.as_bytes(), id.as_bytes());
        out
    }
}

/// Replaces every occurrence of `from` in `bytes` with `to`, if they are of the same length.
fn replace_same_length(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    if from.is_empty() || from.len() != to.len() {
        return;
    }
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}

/// What the raw loop did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fired {
    /// Timers fired.
    pub timers: u64,
    /// Seconds from the first read to the last write.
    pub secs: f64,
    /// The process's CPU seconds (all threads, the embedded broker's included) over them.
    pub cpu_secs: Option<f64>,
    /// The bytes of filters and indexes the open files hold in memory, before the firing
    /// (RocksDB's `estimate-table-readers-mem`).
    pub table_readers_bytes: Option<u64>,
}

impl Fired {
    /// Timers per second.
    pub fn rate(&self) -> f64 {
        self.timers as f64 / self.secs.max(f64::MIN_POSITIVE)
    }
}

/// Fires every timer of the store at `dir` the raw way (see the module's documentation). The
/// store must hold only timers whose customers exist, as the scale row's does.
pub fn fire_all(dir: &Path, options: &StoreOptions, template: &Template) -> anyhow::Result<Fired> {
    let db = rocksdb::DB::open(&rocksdb_options(options), dir)?;
    let table_readers_bytes = db.property_int_value("rocksdb.estimate-table-readers-mem")?;
    let write_options = rocksdb_write_options(options);
    let embedded = journeyd::embedded::Embedded::start(&[(template.topic.clone(), 1)])?;
    // The daemon's own producer, with its default configuration.
    let mut config = journeyd::config::Config::default();
    config
        .kafka
        .insert("bootstrap.servers".into(), embedded.bootstrap_servers());
    let producer = journeyd::service::producer(&config)?;
    // Ids as long as the daemon's.
    let id_len = template.action_id.len();

    let cpu_start = crate::support::cpu_secs(std::process::id());
    let start = Instant::now();
    let upper = Table::Timers.upper_bound();
    let mut from = Table::Timers.lower_bound();
    let mut timers = 0u64;
    loop {
        // The next batch of entries, starting after the last one taken.
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(upper.clone());
        let mut it = db.raw_iterator_opt(read);
        it.seek(&from);
        let mut entries: Vec<(Vec<u8>, String)> = Vec::with_capacity(TIMER_BATCH);
        while it.valid() && entries.len() < TIMER_BATCH {
            let key = it.key().unwrap_or_default();
            let (_, customer) = keys::timer_parts(key)
                .ok_or_else(|| anyhow::anyhow!("not a timer key: {}", keys::describe(key)))?;
            entries.push((key.to_vec(), String::from_utf8(customer.to_vec())?));
            it.next();
        }
        it.status()?;
        drop(it);
        let Some((last, _)) = entries.last() else {
            break;
        };
        from = last.clone();
        from.push(0);

        let states = db.multi_get(entries.iter().map(|(_, c)| keys::customer(c)));
        for (state, (_, customer)) in states.into_iter().zip(&entries) {
            anyhow::ensure!(
                state?.is_some(),
                "the timer's customer {customer} has no state"
            );
        }
        let mut deliveries = Vec::with_capacity(entries.len());
        for (n, (_, customer)) in entries.iter().enumerate() {
            // An id of the daemon's length, and a payload naming this customer and id (so that
            // compression sees messages that differ as the daemon's do).
            let mut id = format!("{:0>id_len$}", timers + n as u64);
            id.truncate(id_len);
            let payload = template.payload_for(customer, &id);
            let headers = journeyd::sending::action_headers(&id, &template.kind);
            let mut record = FutureRecord::<str, [u8]>::to(&template.topic)
                .key(customer)
                .payload(&payload)
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => break deliveries.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        // Every email acknowledged before the write, as the daemon does.
        for delivery in deliveries {
            match futures::executor::block_on(delivery) {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("an email was not acknowledged: {e}"),
                Err(_) => anyhow::bail!("the producer went away"),
            }
        }

        // As the store writes a batch: the states in key order, then the index's deletions (in
        // key order already), then the history's merges in key order.
        let mut batch = rocksdb::WriteBatch::default();
        let mut customers: Vec<Vec<u8>> = entries.iter().map(|(_, c)| keys::customer(c)).collect();
        customers.sort_unstable();
        for c in &customers {
            batch.put(c, &template.state);
        }
        for (key, _) in &entries {
            batch.delete(key);
        }
        let mut histories: Vec<Vec<u8>> = entries.iter().map(|(_, c)| keys::history(c)).collect();
        histories.sort_unstable();
        for h in &histories {
            batch.merge(h, &template.history);
        }
        db.write_opt(batch, &write_options)?;
        timers += entries.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = crate::support::cpu_secs(std::process::id())
        .zip(cpu_start)
        .map(|(b, a)| b - a);
    Ok(Fired {
        timers,
        secs,
        cpu_secs,
        table_readers_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_loop_fires_every_timer_and_leaves_none() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let options = StoreOptions::default();
        {
            let db = rocksdb::DB::open(&rocksdb_options(&options), dir.path())?;
            for i in 0..(TIMER_BATCH + 7) {
                let customer = format!("c{i:06}");
                db.put(keys::customer(&customer), b"state")?;
                db.put(keys::timer(1000 + i as i64, &customer), 0i32.to_be_bytes())?;
            }
        }
        let template = Template {
            state: b"after".to_vec(),
            history: {
                let set = journeyd_store::WriteSet {
                    history: vec![("c000000".into(), b"fired".to_vec())],
                    history_limit: 10,
                    ..Default::default()
                };
                journeyd_store_rocksdb::history_merges(&set).remove(0).1
            },
            payload: vec![7; 100],
            action_id: "x".repeat(40),
            customer: "c000000".into(),
            kind: "send".into(),
            topic: "journeyd.actions.email".into(),
        };
        let fired = fire_all(dir.path(), &options, &template)?;
        assert_eq!(fired.timers, (TIMER_BATCH + 7) as u64);
        let db = rocksdb::DB::open(&rocksdb_options(&options), dir.path())?;
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(Table::Timers.upper_bound());
        let mut it = db.raw_iterator_opt(read);
        it.seek(Table::Timers.lower_bound());
        assert!(!it.valid(), "a timer entry is left");
        assert_eq!(
            db.get(keys::customer("c000003"))?.as_deref(),
            Some(&b"after"[..])
        );
        assert!(db.get(keys::history("c000003"))?.is_some());
        Ok(())
    }

    #[test]
    fn a_payload_names_its_own_customer_and_id() {
        let template = Template {
            state: Vec::new(),
            history: Vec::new(),
            payload: b"<c000001|id-aaaa|c000001>".to_vec(),
            action_id: "id-aaaa".into(),
            customer: "c000001".into(),
            kind: "send".into(),
            topic: "t".into(),
        };
        assert_eq!(
            template.payload_for("c000777", "id-bbbb"),
            b"<c000777|id-bbbb|c000777>".to_vec()
        );
        // Of another length, an id is left as it was.
        assert_eq!(
            template.payload_for("c7", "id-bbbb"),
            b"<c000001|id-bbbb|c000001>".to_vec()
        );
    }
}
