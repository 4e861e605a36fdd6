//! The RocksDB [`Store`]: one database, one default column family, one prefix byte per table
//! (see [`keys`]).
//!
//! Invariants:
//! - Every [`Store::write`] is one `WriteBatch`: customer state, timer index, consumed offsets and
//!   the counters change together or not at all. The WAL is always on; `sync_writes` decides
//!   whether each batch is also fsynced before the write returns.
//! - The counters (`meta/timer_count`, `meta/customer_count`) are exact: a write reads which of
//!   its timer and customer keys exist before building its batch, and writes the new counts in
//!   the same batch. Writers are serialised by a mutex around that read-modify-write, so
//!   counters cannot race; readers never take it.
//! - A store carries its format version in `meta/format_version` from creation; a store with a
//!   newer version than [`FORMAT_VERSION`] is refused at open, before anything is written.
//! - Values: customer state as given (opaque), timers the owning input partition (`i32` BE;
//!   empty: every partition), offsets `i64` BE, journeys postcard of [`StoredJourney`] (field
//!   order is the format), meta integers BE.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use journeyd_store::{
    check_journeys, DueTimer, Error, Millis, Offset, Store, StoredJourney, WriteSet,
};
use rocksdb::{
    properties, BlockBasedOptions, Cache, DBCompressionType, ErrorKind, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

mod history;
pub mod keys;

/// The history merges a write makes: one per customer named in `set.history`, `(key, operand)`,
/// in key order, the customer's entries in order. (Public for tools and benchmarks that write
/// what the store writes.)
///
/// Why key order: RocksDB's memtable inserts a batch's keys fastest in order (each insert
/// starts from where the last one went); in the order of the customers' first entries the
/// merges took three times as long to insert.
pub fn history_merges(set: &WriteSet) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Each customer's entries, found by the index of its first. The daemon names a customer's
    // entries one after another, so the run under way is checked before the map.
    let mut merges: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize, foldhash::fast::RandomState> =
        Default::default();
    for (id, entry) in &set.history {
        let i = match merges.last() {
            Some((last, _)) if last == id => merges.len() - 1,
            _ => *index.entry(id).or_insert_with(|| {
                merges.push((id, history::operand(set.history_limit, [])));
                merges.len() - 1
            }),
        };
        history::push_entry(&mut merges[i].1, entry);
    }
    merges.sort_unstable_by_key(|(id, _)| *id);
    merges
        .into_iter()
        .map(|(id, operand)| (keys::history(id), operand))
        .collect()
}

use keys::{meta, Key, Table};

/// The format version this binary writes and the newest it can read.
pub const FORMAT_VERSION: u32 = 2;

/// How to open a [`RocksStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The size of the LRU block cache (data, index and filter blocks), in bytes.
    pub block_cache_bytes: usize,
    /// The size of one memtable before it is flushed, in bytes.
    pub write_buffer_bytes: usize,
    /// Whether every write is fsynced before it returns. Without it a write survives a process
    /// crash (the WAL is always on) but the last writes may be lost if the machine fails.
    pub sync_writes: bool,
    /// The size of the cache of customer states last written, in bytes (`0`: none). Reads of a
    /// customer written recently come from it instead of RocksDB's memtables and files.
    pub state_cache_bytes: usize,
}

impl Default for StoreOptions {
    /// 64 MiB block cache, 64 MiB write buffer, no fsync per write, 64 MiB state cache.
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
            sync_writes: false,
            state_cache_bytes: 64 << 20,
        }
    }
}

/// The RocksDB options a [`RocksStore`] opens its database with (creating it if missing).
///
/// Public so that tools (the benchmark's raw `WriteBatch` baseline, offline compaction) open a
/// database exactly the way the store does.
pub fn rocksdb_options(opts: &StoreOptions) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(opts.block_cache_bytes));
    // Why: customer reads are point lookups by full key; a whole-key bloom filter skips
    // SST files that cannot hold the customer.
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    // Why the filters and indexes live with the open files, not in the block cache: a file
    // compacted from a million customers has one filter block of megabytes, and the data
    // blocks of a batch's reads (thousands of customers, one block each) pushed it out of its
    // shard of the cache, so every `multi_get` read it back from the file and checksummed it:
    // a fifth of the CPU of firing a million timers. Held by the table readers they are read
    // once per file (about 1.25 bytes of filter per key, plus the index), RocksDB's default.
    table.set_cache_index_and_filter_blocks(false);

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.set_block_based_table_factory(&table);
    db_opts.set_compression_type(DBCompressionType::Lz4);
    db_opts.set_write_buffer_size(opts.write_buffer_bytes);
    // Why: most reads are of customers not in the memtable (new ones, or ones last written
    // before the last flush); a bloom filter over the memtable's keys answers those without
    // walking its skiplist, which costs microseconds once it holds a million entries.
    // Its size is a fraction of the write buffer's bytes: 0.02 gives some 17 bits per key of a
    // full memtable (entries of about a hundred bytes), a false positive in a few thousand;
    // 0.1 made it five times larger for nothing, and every key added to it (a cache miss each)
    // cost a third of the memtable's insert time when firing timers.
    db_opts.set_memtable_whole_key_filtering(true);
    db_opts.set_memtable_prefix_bloom_ratio(0.02);
    // One column family today, but keep flushes atomic if more arrive (style.md).
    db_opts.set_atomic_flush(true);
    // The history table's values are appended to by merges (see `history`).
    db_opts.set_merge_operator(
        history::MERGE_OPERATOR,
        history::full_merge,
        history::partial_merge,
    );
    db_opts
}

/// The write options of a [`RocksStore`]'s batches: the WAL on, fsync as `opts.sync_writes`.
pub fn rocksdb_write_options(opts: &StoreOptions) -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(opts.sync_writes);
    wo
}

/// A raw key and value read from the database.
type Entry = (Box<[u8]>, Box<[u8]>);

/// The authoritative counter values, owned by the writer lock.
#[derive(Debug, Clone, Copy)]
struct Counters {
    timers: u64,
    customers: u64,
}

/// A [`Store`] in a RocksDB database.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    sync_writes: bool,
    /// Serialises writers; holds the counters as last committed.
    writer: Mutex<Counters>,
    /// Copies of the committed counters for lock-free reads.
    timers: AtomicU64,
    customers: AtomicU64,
    /// No timer is due before this: scans of the timer table start here, not at its first key,
    /// so they do not walk over the deletions of every timer fired since the last compaction.
    /// Writes lower it before they commit; scans raise it to the first entry they meet.
    timer_floor: AtomicI64,
    /// The earliest timer the write under way sets (`Millis::MAX` when none is under way):
    /// a scan that runs beside a write does not raise the floor past it.
    writing_floor: AtomicI64,
    /// Counts the writes that set timers, bumped as each one starts.
    timer_writes: AtomicU64,
    /// The states of customers as last written (see [`StateCache`]).
    states: Option<StateCache>,
}

/// Customer states as last written, by id: a write-through cache. Why: a customer is read
/// before every write of its state, and a hot customer's key sits among many versions in a
/// large memtable, where a lookup costs microseconds of cache misses (measured: reading
/// 1,000 customers a batch took more than all the rest of the engine + RocksDB bench row).
///
/// Only writes fill it, so it never holds what a concurrent reader read before a write
/// committed: a write takes its customers out before it commits and puts them back after.
type StateCache = quick_cache::sync::Cache<Box<str>, Arc<[u8]>, StateWeight>;

/// The weight of a cached state: its bytes, its id and the entry's own keep.
#[derive(Debug, Clone, Copy)]
struct StateWeight;

impl quick_cache::Weighter<Box<str>, Arc<[u8]>> for StateWeight {
    fn weight(&self, key: &Box<str>, value: &Arc<[u8]>) -> u64 {
        (key.len() + value.len() + 48) as u64
    }
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("sync_writes", &self.sync_writes)
            .field("pending_timers", &self.pending_timers())
            .field("customer_count", &self.customer_count())
            .finish_non_exhaustive()
    }
}

/// Whether retrying after this RocksDB error may succeed.
fn transient(e: &rocksdb::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IOError
            | ErrorKind::Busy
            | ErrorKind::TimedOut
            | ErrorKind::TryAgain
            | ErrorKind::Incomplete
            | ErrorKind::Aborted
            | ErrorKind::MergeInProgress
    )
}

fn backend(op: &'static str) -> impl Fn(rocksdb::Error) -> Error {
    move |e| Error::Backend {
        op,
        transient: transient(&e),
        message: e.into_string(),
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> Error {
    Error::Corrupt {
        key: keys::describe(key),
        reason: reason.into(),
    }
}

fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        corrupt(
            key,
            format!("expected an 8-byte integer, found {} bytes", value.len()),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl RocksStore {
    /// Opens the store at `path`, creating it if missing.
    ///
    /// Refuses a store with a newer format version ([`Error::FormatTooNew`]) and a non-empty
    /// database without one (not a journeyd store, [`Error::Corrupt`]).
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Self, Error> {
        let open_err = |e: rocksdb::Error| Error::Open {
            path: path.to_owned(),
            transient: transient(&e),
            message: e.into_string(),
        };

        let db = DB::open(&rocksdb_options(opts), path).map_err(open_err)?;
        let mut store = Self {
            db,
            path: path.to_owned(),
            sync_writes: opts.sync_writes,
            writer: Mutex::new(Counters {
                timers: 0,
                customers: 0,
            }),
            timers: AtomicU64::new(0),
            customers: AtomicU64::new(0),
            timer_floor: AtomicI64::new(Millis::MIN),
            writing_floor: AtomicI64::new(Millis::MAX),
            timer_writes: AtomicU64::new(0),
            states: (opts.state_cache_bytes > 0).then(|| {
                StateCache::with_weighter(
                    opts.state_cache_bytes / 128,
                    opts.state_cache_bytes as u64,
                    StateWeight,
                )
            }),
        };
        let counters = store.load_meta()?;
        *store
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = counters;
        store.publish(counters);
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the format version and loads the counters, initialising a new store.
    fn load_meta(&self) -> Result<Counters, Error> {
        let version_key = keys::meta(meta::FORMAT_VERSION);
        let Some(version) = self.db.get(&version_key).map_err(backend("open"))? else {
            return self.initialise();
        };
        let version: [u8; 4] = version.as_slice().try_into().map_err(|_| {
            corrupt(
                &version_key,
                format!("expected a 4-byte version, found {} bytes", version.len()),
            )
        })?;
        let found = u32::from_be_bytes(version);
        if found > FORMAT_VERSION {
            return Err(Error::FormatTooNew {
                path: self.path.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        if found == 0 {
            return Err(corrupt(&version_key, "format version 0 was never written"));
        }
        if found < FORMAT_VERSION {
            // Version 1 had no history table (its values need the merge operator): mark the
            // store as version 2, so that a journeyd that does not know the table refuses it.
            self.db
                .put_opt(
                    &version_key,
                    FORMAT_VERSION.to_be_bytes(),
                    &self.write_options(),
                )
                .map_err(backend("open (upgrade the format version)"))?;
        }
        let counter = |name: &str| -> Result<u64, Error> {
            let key = keys::meta(name);
            match self.db.get(&key).map_err(backend("open"))? {
                Some(v) => decode_u64(&key, &v),
                None => Err(corrupt(
                    &key,
                    "missing; run RocksStore::recount to rebuild it",
                )),
            }
        };
        Ok(Counters {
            timers: counter(meta::TIMER_COUNT)?,
            customers: counter(meta::CUSTOMER_COUNT)?,
        })
    }

    /// Writes the format version and zero counters into an empty database.
    fn initialise(&self) -> Result<Counters, Error> {
        if let Some(item) = self.db.iterator(IteratorMode::Start).next() {
            let (key, _) = item.map_err(backend("open"))?;
            return Err(corrupt(
                &key,
                format!(
                    "the database at {} has data but no format version: it is not a journeyd \
                     state store",
                    self.path.display()
                ),
            ));
        }
        let counters = Counters {
            timers: 0,
            customers: 0,
        };
        let mut batch = WriteBatch::default();
        batch.put(
            keys::meta(meta::FORMAT_VERSION),
            FORMAT_VERSION.to_be_bytes(),
        );
        put_counters(&mut batch, counters);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(backend("initialise"))?;
        Ok(counters)
    }

    fn publish(&self, counters: Counters) {
        self.timers.store(counters.timers, Ordering::Release);
        self.customers.store(counters.customers, Ordering::Release);
    }

    fn write_options(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes);
        wo
    }

    /// Iterates over one table, from `from` (inclusive) to `to` (exclusive).
    fn scan(
        &self,
        from: Vec<u8>,
        to: Vec<u8>,
    ) -> impl Iterator<Item = Result<Entry, rocksdb::Error>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from);
        ro.set_iterate_upper_bound(to);
        self.db.iterator_opt(IteratorMode::Start, ro)
    }

    /// Where a scan of the timer table starts, given the floor.
    fn timers_from(&self, floor: Millis) -> Vec<u8> {
        if floor == Millis::MIN {
            Table::Timers.lower_bound()
        } else {
            keys::timer(floor, "")
        }
    }

    /// Which of `keys` exist, in order.
    fn exist<K: AsRef<[u8]>>(&self, op: &'static str, keys: &[K]) -> Result<Vec<bool>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(backend(op)))
            .collect()
    }

    /// Counts the timer and customer tables and rewrites both counters to match.
    ///
    /// A repair tool (O(n)): the counters are exact by construction, so this is for a store
    /// whose meta entries were damaged or lost. Returns `(timers, customers)`.
    pub fn recount(&self) -> Result<(u64, u64), Error> {
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let count = |table: Table| -> Result<u64, Error> {
            let mut n = 0;
            for item in self.scan(table.lower_bound(), table.upper_bound()) {
                item.map_err(backend("recount"))?;
                n += 1;
            }
            Ok(n)
        };
        let counters = Counters {
            timers: count(Table::Timers)?,
            customers: count(Table::Customers)?,
        };
        let mut batch = WriteBatch::default();
        put_counters(&mut batch, counters);
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(backend("recount"))?;
        *guard = counters;
        self.publish(counters);
        Ok((counters.timers, counters.customers))
    }
}

fn put_counters(batch: &mut WriteBatch, counters: Counters) {
    batch.put(keys::meta(meta::TIMER_COUNT), counters.timers.to_be_bytes());
    batch.put(
        keys::meta(meta::CUSTOMER_COUNT),
        counters.customers.to_be_bytes(),
    );
}

/// Applies a signed change to a counter, refusing to go below zero (which would mean the counter
/// no longer matches its table).
fn adjust(count: u64, delta: i64, name: &str) -> Result<u64, Error> {
    count.checked_add_signed(delta).ok_or_else(|| {
        corrupt(
            &keys::meta(name),
            format!(
                "the counter ({count}) would go below zero ({delta:+}); it no longer matches its \
                 table: run RocksStore::recount"
            ),
        )
    })
}

impl Store for RocksStore {
    fn customer(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        if let Some(state) = self.states.as_ref().and_then(|c| c.get(id)) {
            return Ok(Some(state.to_vec()));
        }
        Ok(self
            .db
            .get_pinned(keys::customer(id))
            .map_err(backend("read customer"))?
            .map(|v| v.to_vec()))
    }

    fn customers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // From the state cache where it has them; the rest in one MultiGet.
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(ids.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.states.as_ref().and_then(|c| c.get(*id)) {
                Some(state) => out.push(Some(state.to_vec())),
                None => {
                    missing.push(i);
                    out.push(None);
                }
            }
        }
        if !missing.is_empty() {
            let read = self
                .db
                .multi_get(missing.iter().map(|i| keys::customer(ids[*i])));
            for (i, value) in missing.into_iter().zip(read) {
                out[i] = value.map_err(backend("read customers"))?;
            }
        }
        Ok(out)
    }

    fn due_timers_in(
        &self,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<DueTimer>, Error> {
        self.due_timers_in_except(up_to, limit, owned, &[])
    }

    fn due_timers_in_except(
        &self,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
        skip: &[(Millis, &str)],
    ) -> Result<Vec<DueTimer>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut due = Vec::new();
        // Read before the scan, in this order (a write publishes them in the other): see the
        // end of `write`.
        let writes = self.timer_writes.load(Ordering::SeqCst);
        let beside = self.writing_floor.load(Ordering::SeqCst);
        let floor = self.timer_floor.load(Ordering::SeqCst);
        let mut first: Option<Millis> = None;
        // Walked beside the scan: both are in key order.
        let mut skip = skip
            .iter()
            .map(|(due, customer)| (*due, customer.as_bytes()))
            .peekable();
        for item in self.scan(self.timers_from(floor), keys::timers_after(up_to)) {
            let (key, value) = item.map_err(backend("read due timers"))?;
            let Some(entry) = keys::timer_parts(&key) else {
                let what = Key::decode(&key).map_or_else(|e| e.to_string(), |k| k.to_string());
                return Err(corrupt(&key, format!("{what} in the timers range")));
            };
            first.get_or_insert(entry.0);
            while skip.next_if(|s| (s.0, s.1) < entry).is_some() {}
            if skip.next_if(|s| (s.0, s.1) == entry).is_some() {
                continue;
            }
            // The value is the owning partition (i32 BE), or empty for every partition.
            let partition = match *value {
                [] => None,
                [a, b, c, d] => Some(i32::from_be_bytes([a, b, c, d])),
                _ => return Err(corrupt(&key, "a timer's partition is not 4 bytes")),
            };
            if partition.is_some_and(|p| !owned(p)) {
                continue;
            }
            let customer = String::from_utf8(entry.1.to_vec())
                .map_err(|_| corrupt(&key, "the customer id is not UTF-8"))?;
            due.push(DueTimer {
                due: entry.0,
                customer,
                partition,
            });
            if due.len() == limit {
                break;
            }
        }
        // Nothing live before the first entry met (or, meeting none, up to `up_to`), except
        // what a write under way since before the scan may be adding (not past its earliest).
        // A write that started during the scan may have committed after the scan's snapshot:
        // then the floor stays. A write that lowered the floor meanwhile wins.
        let raised = first
            .unwrap_or(up_to.saturating_add(1))
            .min(beside)
            .max(floor);
        if self.timer_writes.load(Ordering::SeqCst) == writes
            && self
                .timer_floor
                .compare_exchange(floor, raised, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            && self.timer_writes.load(Ordering::SeqCst) != writes
        {
            // A write started between the check and the raise: back to where it was.
            self.timer_floor.fetch_min(floor, Ordering::SeqCst);
        }
        Ok(due)
    }

    fn next_timer(&self) -> Result<Option<(Millis, String)>, Error> {
        let floor = self.timer_floor.load(Ordering::SeqCst);
        let first = self
            .scan(self.timers_from(floor), Table::Timers.upper_bound())
            .next();
        let Some(item) = first else { return Ok(None) };
        let (key, _) = item.map_err(backend("read next timer"))?;
        match Key::decode(&key)? {
            Key::Timer { due, customer } => Ok(Some((due, customer))),
            other => Err(corrupt(&key, format!("{other} in the timers range"))),
        }
    }

    fn pending_timers(&self) -> u64 {
        self.timers.load(Ordering::Acquire)
    }

    fn offsets(&self) -> Result<Vec<Offset>, Error> {
        let mut offsets = Vec::new();
        for item in self.scan(Table::Offsets.lower_bound(), Table::Offsets.upper_bound()) {
            let (key, value) = item.map_err(backend("read offsets"))?;
            let Key::Offset { topic, partition } = Key::decode(&key)? else {
                return Err(corrupt(&key, "not an offset key in the offsets range"));
            };
            let next: [u8; 8] = (*value).try_into().map_err(|_| {
                corrupt(
                    &key,
                    format!("expected an 8-byte offset, found {} bytes", value.len()),
                )
            })?;
            offsets.push(Offset {
                topic,
                partition,
                next: i64::from_be_bytes(next),
            });
        }
        // Keys sort by topic length first; the trait promises (topic, partition).
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    fn journeys(&self) -> Result<Vec<StoredJourney>, Error> {
        let mut journeys = Vec::new();
        for item in self.scan(Table::Journeys.lower_bound(), Table::Journeys.upper_bound()) {
            let (key, value) = item.map_err(backend("read journeys"))?;
            let Key::Journey { id, version } = Key::decode(&key)? else {
                return Err(corrupt(&key, "not a journey key in the journeys range"));
            };
            let journey: StoredJourney = postcard::from_bytes(&value)
                .map_err(|e| corrupt(&key, format!("cannot decode the journey: {e}")))?;
            if journey.id != id || journey.version != version {
                return Err(corrupt(
                    &key,
                    format!(
                        "the value holds journey \"{}\" version {} instead",
                        journey.id.escape_debug(),
                        journey.version
                    ),
                ));
            }
            journeys.push(journey);
        }
        // Keys sort by id length first; the trait promises (id, version).
        journeys.sort_by(|a, b| (&a.id, a.version).cmp(&(&b.id, b.version)));
        Ok(journeys)
    }

    fn put_journeys(&self, journeys: &[StoredJourney]) -> Result<(), Error> {
        check_journeys(journeys)?;
        if journeys.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for j in journeys {
            let value = postcard::to_stdvec(j).map_err(|e| Error::InvalidArgument {
                what: format!("journey \"{}\" version {}", j.id.escape_debug(), j.version),
                reason: format!("cannot encode it: {e}"),
            })?;
            batch.put(keys::journey(&j.id, j.version)?, value);
        }
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(backend("write journeys"))
    }

    fn write(&self, set: &WriteSet) -> Result<(), Error> {
        set.validate()?;
        if set.is_empty() {
            return Ok(());
        }
        // Encode everything that can fail before taking the lock.
        let offsets = set
            .offsets
            .iter()
            .map(|o| Ok((keys::offset(&o.topic, o.partition)?, o.next)))
            .collect::<Result<Vec<_>, Error>>()?;

        // The final operation per key, in key order: later customer operations win, and timer
        // sets override clears of the same entry.
        // Per key, the customer and the final operation (`None` deletes).
        let mut customers: std::collections::BTreeMap<Vec<u8>, (&str, Option<&[u8]>)> =
            Default::default();
        for (id, value) in &set.customers {
            customers.insert(keys::customer(id), (id.as_str(), value.as_deref()));
        }
        let partitions: std::collections::HashMap<&str, i32> = set.timer_owners();
        let partition_of = |customer: &str| {
            partitions
                .get(customer)
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default()
        };
        // Per key: the final operation (None clears, Some(value) sets, the value naming the
        // owning partition), and whether the entry existed, if the caller knows (only the
        // first mention's answer counts).
        type TimerOp = (Option<Vec<u8>>, Option<bool>);
        let mut timers: std::collections::BTreeMap<Vec<u8>, TimerOp> = Default::default();
        let mentions = set.clear_timers.len() + set.set_timers.len();
        let known = |i: usize| match &set.timers_existed {
            Some(k) if k.len() == mentions => k[i],
            _ => None,
        };
        let ops = set.clear_timers.iter().map(|t| (t, None)).chain(
            set.set_timers
                .iter()
                .map(|t @ (_, customer)| (t, Some(partition_of(customer)))),
        );
        for (i, ((due, customer), op)) in ops.enumerate() {
            timers
                .entry(keys::timer(*due, customer))
                .and_modify(|e| e.0 = op.clone())
                .or_insert((op, known(i)));
        }
        // Only the entries whose existence the caller did not say are read.
        let unknown: Vec<&Vec<u8>> = timers
            .iter()
            .filter(|(_, (_, k))| k.is_none())
            .map(|(key, _)| key)
            .collect();

        // Why the lock spans the existence reads and the write: another writer committing
        // between them would make this batch's counter deltas wrong.
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let customers_existed = match &set.customers_existed {
            Some(known) if known.len() == set.customers.len() => {
                let mut first: std::collections::HashMap<&str, bool> = Default::default();
                for ((id, _), existed) in set.customers.iter().zip(known) {
                    first.entry(id.as_str()).or_insert(*existed);
                }
                customers.values().map(|(id, _)| first[id]).collect()
            }
            _ => self.exist(
                "write (read customers)",
                &customers.keys().collect::<Vec<_>>(),
            )?,
        };
        let mut read = self.exist("write (read timers)", &unknown)?.into_iter();
        let timers_existed: Vec<bool> = timers
            .values()
            .map(|(_, k)| k.or_else(|| read.next()).unwrap_or(false))
            .collect();

        let mut batch = WriteBatch::default();
        let mut customer_delta = 0i64;
        // The customers stored before this write: only a new one is listed under its partition.
        let mut stored_before: std::collections::HashSet<&[u8]> = Default::default();
        for ((key, (_, value)), existed) in customers.iter().zip(customers_existed) {
            if existed {
                stored_before.insert(key.as_slice());
            }
            match value {
                Some(bytes) => {
                    batch.put(key, bytes);
                    customer_delta += i64::from(!existed);
                }
                None if existed => {
                    batch.delete(key);
                    customer_delta -= 1;
                }
                None => {}
            }
        }
        let mut timer_delta = 0i64;
        for ((key, (value, _)), existed) in timers.iter().zip(timers_existed) {
            match (existed, value) {
                (false, Some(value)) => {
                    batch.put(key, value);
                    timer_delta += 1;
                }
                // Present already: the owning partition may have changed.
                (true, Some(value)) => batch.put(key, value),
                (true, None) => {
                    batch.delete(key);
                    timer_delta -= 1;
                }
                _ => {}
            }
        }
        for (key, next) in &offsets {
            batch.put(key, next.to_be_bytes());
        }
        // History: deleting a customer deletes it, then this write's entries are appended (one
        // merge per customer, entries in order).
        for (id, value) in &set.customers {
            if value.is_none() {
                batch.delete(keys::history(id));
            }
        }
        for (key, operand) in history_merges(set) {
            batch.merge(key, operand);
        }
        for (id, partition) in &set.owners {
            // The customer's last operation in this write decides; a customer stored before is
            // listed already (one key less per customer and write).
            let key = keys::customer(id);
            match customers.get(&key) {
                Some((_, Some(_))) if !stored_before.contains(key.as_slice()) => {
                    batch.put(keys::owner(*partition, id), [])
                }
                Some((_, None)) => batch.delete(keys::owner(*partition, id)),
                _ => {}
            }
        }
        for (partition, counts) in &set.counts {
            batch.put(keys::counts(*partition), counts);
        }
        let counters = Counters {
            timers: adjust(guard.timers, timer_delta, meta::TIMER_COUNT)?,
            customers: adjust(guard.customers, customer_delta, meta::CUSTOMER_COUNT)?,
        };
        if timer_delta != 0 || customer_delta != 0 {
            put_counters(&mut batch, counters);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Scans run beside writes. Before the commit, under the writer lock (one write at a
        // time): publish the earliest new entry, then count the write, then lower the floor.
        // A scan reads the count, then the earliest, before its snapshot; so a scan whose
        // snapshot may miss this write's entries either sees the earliest (and raises the floor
        // no further) or sees the count change (and leaves the floor).
        let earliest = set.set_timers.iter().map(|(due, _)| *due).min();
        if let Some(earliest) = earliest {
            self.writing_floor.store(earliest, Ordering::SeqCst);
            self.timer_writes.fetch_add(1, Ordering::SeqCst);
            self.timer_floor.fetch_min(earliest, Ordering::SeqCst);
        }
        // Out of the state cache before the commit, back in after it (see `StateCache`).
        if let Some(cache) = &self.states {
            for (id, _) in &set.customers {
                cache.remove(id.as_str());
            }
        }
        let committed = self
            .db
            .write_opt(batch, &self.write_options())
            .map_err(backend("write"));
        if let (Some(cache), Ok(())) = (&self.states, &committed) {
            for (id, value) in customers.values() {
                if let Some(value) = value {
                    cache.insert((*id).into(), Arc::from(*value));
                }
            }
        }
        if earliest.is_some() {
            self.writing_floor.store(Millis::MAX, Ordering::SeqCst);
        }
        committed?;
        *guard = counters;
        self.publish(counters);
        Ok(())
    }

    fn counts(&self, partition: i32) -> Result<Option<Vec<u8>>, Error> {
        self.db
            .get(keys::counts(partition))
            .map_err(backend("read a partition's counts"))
    }

    fn history(&self, id: &str) -> Result<Vec<Vec<u8>>, Error> {
        let key = keys::history(id);
        let Some(value) = self.db.get_pinned(&key).map_err(backend("read history"))? else {
            return Ok(Vec::new());
        };
        let entries = history::entries(&value)
            .ok_or_else(|| corrupt(&key, "the history's entries do not add up to its length"))?;
        Ok(entries.into_iter().map(<[u8]>::to_vec).collect())
    }

    fn size_bytes(&self) -> u64 {
        let prop = |name| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop(properties::TOTAL_SST_FILES_SIZE) + prop(properties::SIZE_ALL_MEM_TABLES)
    }

    fn customers_of(
        &self,
        partition: i32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let (from, to) = keys::owners_of(partition);
        let from = match after {
            // The first key after `after`'s: its key with a zero byte appended.
            Some(a) => {
                let mut k = keys::owner(partition, a);
                k.push(0);
                k
            }
            None => from,
        };
        let mut out = Vec::new();
        for item in self.scan(from, to).take(limit) {
            let (key, _) = item.map_err(backend("customers of a partition"))?;
            match keys::Key::decode(&key)? {
                keys::Key::Owner { customer, .. } => out.push(customer),
                other => {
                    return Err(Error::Corrupt {
                        key: other.to_string(),
                        reason: "found in the owners table".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    fn customer_count(&self) -> u64 {
        self.customers.load(Ordering::Acquire)
    }
}
