//! Restoring one partition's customers from the changelog into the local store: from the
//! checkpoint the store keeps for that changelog partition (the offset after the last record
//! it holds) to the end the broker gave when the restore began.
//!
//! Records are applied in chunks, each one atomic store write holding the chunk's customers
//! (state, timer, history), the input positions it passed and the new checkpoint: a restore
//! that stops half way resumes from its last chunk. An unreadable record stops the restore with
//! an error naming topic, partition and offset: it is never skipped, since the customer's state
//! would silently go back in time.

use super::guards::Applied;
use super::record::{self, CustomerRecord, Record};
use crate::unwritten::Map;
use journeyd_engine::CustomerState;
use journeyd_store::{Millis, Offset, Store, WriteSet};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many records one store write of a restore holds at most.
pub const CHUNK: usize = 2_000;

/// How long one poll of the changelog waits.
const POLL: Duration = Duration::from_millis(100);

/// How many polls in a row must find nothing, once the end is reached, for the partition to
/// count as read to its end.
const QUIET_POLLS: u32 = 2;

/// How many polls in a row may find nothing before the end the broker reported is given up
/// on (50 polls: 5 s and more).
const GIVE_UP_POLLS: u32 = 50;

/// What can stop a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A record cannot be read.
    #[error(
        "cannot restore partition {partition}: the changelog record at {topic} [{partition}] \
         offset {offset} is unreadable ({reason}); the partition stays paused. Fix or remove \
         the record (it is never skipped: the customer's state would go back in time)"
    )]
    Undecodable {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// Kafka failed.
    #[error("cannot restore partition {partition} from {topic}: {source}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What the client said.
        source: rdkafka::error::KafkaError,
    },
    /// The store failed.
    #[error("cannot restore partition {partition}: {source}")]
    Store {
        /// The partition.
        partition: i32,
        /// What the store said.
        source: journeyd_store::Error,
    },
    /// The end the broker reported was not reached: nothing more came (a leader moving, a
    /// broker away). Tried again.
    #[error(
        "cannot restore partition {partition}: {topic} [{partition}] ends at {end} by the \
         broker's account, but nothing past offset {read_to} came; trying again"
    )]
    Incomplete {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The end the broker reported.
        end: i64,
        /// How far the restore read.
        read_to: i64,
    },
    /// The local checkpoint is past the changelog's end.
    #[error(
        "cannot restore partition {partition}: the local store says it holds {topic} \
         [{partition}] up to offset {checkpoint}, past the end of that partition ({source}): \
         the changelog was deleted and created again, or the data directory belongs to another \
         deployment. Move the data directory away to restore from the changelog alone"
    )]
    PastTheEnd {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The local checkpoint.
        checkpoint: i64,
        /// What the broker said.
        source: rdkafka::error::KafkaError,
    },
    /// The service is stopping, or the partition was revoked meanwhile.
    #[error("the restore of partition {0} was stopped")]
    Stopped(i32),
}

impl RestoreError {
    /// Whether trying the restore again may succeed: Kafka trouble, a broker that did not
    /// give what it reported, a store that may recover.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestoreError::Kafka { .. } | RestoreError::Incomplete { .. } => true,
            RestoreError::Store { source, .. } => source.is_transient(),
            RestoreError::Undecodable { .. }
            | RestoreError::PastTheEnd { .. }
            | RestoreError::Stopped(_) => false,
        }
    }
}

/// Wraps a client error of the restore of `topic` [`partition`].
fn kafka_error(
    topic: &str,
    partition: i32,
) -> impl Fn(rdkafka::error::KafkaError) -> RestoreError + Copy + '_ {
    move |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    }
}

/// What a restore found.
#[derive(Debug, Default)]
pub struct Restored {
    /// The partition.
    pub partition: i32,
    /// Where each input topic's partition resumes, when known: after the last position the
    /// changelog (or, when it had none newer, the store) holds.
    pub resume: Vec<(String, i64)>,
    /// The customers whose restored state holds events after their topic's resume position.
    pub applied: Applied,
    /// The changelog offset of the first record whose guard is in `applied`: the local store
    /// checkpoint stays at most there until reading passes the guards, so that a restart
    /// reads those records again and finds the guards again.
    pub floor: Option<i64>,
    /// The records read.
    pub records: u64,
    /// The first offset read.
    pub from: i64,
    /// How far it read: the offset after the last record.
    pub to: i64,
}

/// How a restore reports its progress: records read so far, records left.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Restores partition `partition` of the changelog `topic` into `store`, reading with a
/// consumer made from `client` (no group). Stops early, with [`RestoreError::Stopped`], when
/// `stop` is set.
pub fn restore(
    client: &ClientConfig,
    store: &dyn Store,
    topic: &str,
    partition: i32,
    history_limit: usize,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Restored, RestoreError> {
    let kafka = kafka_error(topic, partition);
    let stored = store
        .offsets()
        .map_err(|source| RestoreError::Store { partition, source })?;
    let checkpoint = stored
        .iter()
        .find(|o| o.topic == topic && o.partition == partition)
        .map(|o| o.next);
    let mut client = client.clone();
    client.set("enable.auto.commit", "false");
    client.set("enable.partition.eof", "false");
    // Never the records of aborted transactions (exactly_once), whatever `[kafka]` says.
    client.set("isolation.level", "read_committed");
    // Never read from elsewhere than asked: a checkpoint past the end is an error.
    client.set("auto.offset.reset", "error");
    // A broker that holds a fetch for its whole wait (tansu, the mock cluster) would make
    // every poll of the quiet end cost the default 500 ms.
    client.set("fetch.wait.max.ms", "50");
    if client.get("group.id").is_none() {
        client.set("group.id", "journeyd-restore");
    }
    let consumer: BaseConsumer = client.create().map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(kafka)?;
    // A checkpoint below the log's start: compaction or retention removed what was between.
    let from = checkpoint.unwrap_or(low).max(low);
    let mut restored = Restored {
        partition,
        from,
        ..Restored::default()
    };
    // Where each input topic resumes: the store's positions, then each position read.
    let resume: HashMap<String, i64> = stored
        .iter()
        .filter(|o| o.partition == partition && o.topic != topic)
        .map(|o| (o.topic.clone(), o.next))
        .collect();
    // Read to the end the broker gave, and on until the partition is quiet: a broker may
    // report less than it has (tansu 0.6 reports the last batch's first offset + 1), and a
    // checkpoint past that end means there is more.
    let end = high.max(from);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, KafkaOffset::Offset(from))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    // Reading and decoding here, the store writes on a thread beside (chunk by chunk, in
    // order): each takes about half of the time.
    let (chunks, applying) = std::sync::mpsc::sync_channel::<(Vec<(i64, Record)>, i64)>(2);
    let (read, applied) = std::thread::scope(|scope| {
        let applier = scope.spawn(move || {
            let mut resume = resume;
            let mut pending = Pending::default();
            for (chunk, next) in applying {
                apply_chunk(
                    store,
                    topic,
                    partition,
                    history_limit,
                    chunk,
                    next,
                    &mut resume,
                    &mut pending,
                )?;
            }
            Ok::<_, journeyd_store::Error>((resume, pending))
        });
        let read = read_to_end(
            &consumer, topic, partition, from, end, stop, progress, &chunks,
        );
        drop(chunks);
        let applied = applier
            .join()
            .expect("a restore's store writes do not panic");
        (read, applied)
    });
    // A store error stopped the reading too: it is the cause.
    let (resume, mut pending) =
        applied.map_err(|source| RestoreError::Store { partition, source })?;
    let (records, next) = read?;
    restored.records = records;
    restored.to = next;
    // A customer's guard matters only past where their topic resumes.
    pending.applied.retain(|_, topics| {
        topics.retain(|(t, o)| resume.get(t).is_none_or(|next| o >= next));
        !topics.is_empty()
    });
    pending.forget_unguarded();
    restored.floor = pending.floor();
    restored.applied = pending.applied;
    let mut resume: Vec<(String, i64)> = resume.into_iter().collect();
    resume.sort();
    restored.resume = resume;
    Ok(restored)
}

/// Reads the partition from `from` to `end` and on until it is quiet, decoding each record
/// and handing them on in chunks of [`CHUNK`] (with the offset after the chunk). Returns the
/// records read and the offset after the last one. Stops early when the receiver is gone (its
/// store write failed).
#[allow(clippy::too_many_arguments)]
fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    stop: &AtomicBool,
    progress: Progress<'_>,
    chunks: &std::sync::mpsc::SyncSender<(Vec<(i64, Record)>, i64)>,
) -> Result<(u64, i64), RestoreError> {
    let kafka = kafka_error(topic, partition);
    let mut chunk: Vec<(i64, Record)> = Vec::with_capacity(CHUNK);
    let mut next = from;
    let mut records = 0u64;
    let mut last_report = Instant::now();
    let mut quiet = 0;
    while next < end || quiet < QUIET_POLLS {
        if stop.load(Ordering::SeqCst) {
            return Err(RestoreError::Stopped(partition));
        }
        let polled = consumer.poll(POLL);
        let idle = polled.is_none();
        if idle {
            // Past the transaction markers too (with `exactly_once` a commit or abort marker
            // follows each batch's records; no message shows them, the position does).
            if let Ok(tpl) = consumer.position() {
                if let Some(KafkaOffset::Offset(at)) =
                    tpl.find_partition(topic, partition).map(|el| el.offset())
                {
                    next = next.max(at);
                }
            }
        }
        match polled {
            None if quiet >= GIVE_UP_POLLS => {
                // Nothing comes, though the broker's end is further. A part of a compacted
                // log is not a consistent state: never stop short of the end.
                return Err(RestoreError::Incomplete {
                    topic: topic.to_owned(),
                    partition,
                    end,
                    read_to: next,
                });
            }
            None => quiet += 1,
            Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                code @ (rdkafka::types::RDKafkaErrorCode::AutoOffsetReset
                | rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange),
            ))) => {
                return Err(RestoreError::PastTheEnd {
                    topic: topic.to_owned(),
                    partition,
                    checkpoint: from,
                    source: rdkafka::error::KafkaError::MessageConsumption(code),
                })
            }
            Some(Err(e)) => return Err(kafka(e)),
            Some(Ok(m)) => {
                quiet = 0;
                let offset = m.offset();
                next = offset + 1;
                let r = record::decode(m.key(), m.payload()).map_err(|reason| {
                    RestoreError::Undecodable {
                        topic: topic.to_owned(),
                        partition,
                        offset,
                        reason,
                    }
                })?;
                chunk.push((offset, r));
            }
        }
        if chunk.len() >= CHUNK || (idle && !chunk.is_empty()) {
            records += chunk.len() as u64;
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if chunks.send((full, next)).is_err() {
                // The store write failed: the caller reports it.
                return Ok((records, next));
            }
            progress(records, (end - next).max(0) as u64);
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(
                    topic,
                    partition,
                    read = records,
                    left = end - next,
                    "Restoring a partition from the changelog."
                );
            }
        }
    }
    Ok((records, next))
}

/// Applies a chunk of records in one store write: each customer's last record wins, their
/// history entries are appended in order, their old timer goes and the new one is set.
#[allow(clippy::too_many_arguments)]
fn apply_chunk(
    store: &dyn Store,
    topic: &str,
    partition: i32,
    history_limit: usize,
    chunk: Vec<(i64, Record)>,
    next: i64,
    resume: &mut HashMap<String, i64>,
    pending: &mut Pending,
) -> Result<(), journeyd_store::Error> {
    // Each customer's final record in the chunk, and their history entries since their last
    // tombstone, in the order they first came.
    struct Slot {
        id: String,
        record: Option<CustomerRecord>,
        history: Vec<Vec<u8>>,
    }
    let mut index: Map<String, usize> = Map::default();
    let mut slots: Vec<Slot> = Vec::new();
    let mut positions: Vec<Offset> = Vec::new();
    let mut counts = None;
    for (offset, r) in chunk {
        match r {
            Record::Counts(bytes) => counts = Some(bytes),
            Record::Customer { id, record } => {
                match &record {
                    Some(rec) => {
                        if !rec.applied.is_empty() {
                            pending.behind(&id, offset);
                            let topics = match pending.applied.get_mut(&id) {
                                Some(topics) => topics,
                                None => pending.applied.entry(id.clone()).or_default(),
                            };
                            for (t, o) in &rec.applied {
                                match topics.iter_mut().find(|(x, _)| x == t) {
                                    Some(e) => e.1 = e.1.max(*o),
                                    None => topics.push((t.clone(), *o)),
                                }
                            }
                        }
                    }
                    None => {
                        pending.applied.remove(&id);
                        pending.forget(&id);
                    }
                }
                let i = match index.get(&id) {
                    Some(i) => *i,
                    None => {
                        index.insert(id.clone(), slots.len());
                        slots.push(Slot {
                            id,
                            record: None,
                            history: Vec::new(),
                        });
                        slots.len() - 1
                    }
                };
                let slot = &mut slots[i];
                match &record {
                    Some(rec) => slot.history.extend(rec.history.iter().cloned()),
                    None => slot.history.clear(),
                }
                slot.record = record;
            }
            Record::Position { topic: t, next: n } => {
                // The records before it hold every event before `n`: their guards for this
                // topic go. Positions only grow: an older one (from an owner that lost the
                // partition and wrote on) does not take reading back.
                for topics in pending.applied.values_mut() {
                    topics.retain(|(x, o)| x != &t || *o >= n);
                }
                pending.applied.retain(|_, topics| !topics.is_empty());
                pending.forget_unguarded();
                let n = resume.get(&t).map_or(n, |r| (*r).max(n));
                resume.insert(t.clone(), n);
                positions.retain(|o| o.topic != t);
                positions.push(Offset {
                    topic: t,
                    partition,
                    next: n,
                });
            }
        }
    }
    let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
    let before = store.customers(&ids)?;
    let mut set = WriteSet {
        history_limit,
        ..WriteSet::default()
    };
    // Each customer was read just now: the store need not look again to keep its count. Nor
    // for the timers of customers it had no state of (they have none); it reads the others.
    set.customers_existed = Some(before.iter().map(Option::is_some).collect());
    let mut cleared_existed = Vec::new();
    let mut set_existed = Vec::new();
    for (slot, old) in slots.into_iter().zip(before) {
        let known = old.is_none().then_some(false);
        let old_wake: Option<Millis> = old
            .as_deref()
            .and_then(|b| CustomerState::decode(b).ok())
            .and_then(|(s, _)| s.wake);
        let new_wake = slot.record.as_ref().and_then(|r| r.wake);
        if let Some(w) = old_wake.filter(|w| Some(*w) != new_wake) {
            set.clear_timers.push((w, slot.id.clone()));
            cleared_existed.push(known);
        }
        match slot.record {
            Some(r) => {
                if let Some(w) = new_wake {
                    set.set_timers.push((w, slot.id.clone()));
                    set_existed.push(known);
                    set.timer_partitions.push((slot.id.clone(), partition));
                }
                for e in slot.history {
                    set.history.push((slot.id.clone(), e));
                }
                set.owners.push((slot.id.clone(), partition));
                set.customers.push((slot.id, Some(r.state)));
            }
            None => {
                set.owners.push((slot.id.clone(), partition));
                set.customers.push((slot.id, None));
            }
        }
    }
    cleared_existed.extend(set_existed);
    set.timers_existed = Some(cleared_existed);
    set.offsets = positions;
    set.counts.extend(counts.map(|c| (partition, c)));
    // Not past a record whose guard is still needed: a restart reads it again.
    set.offsets.push(Offset {
        topic: topic.to_owned(),
        partition,
        next: pending.floor().map_or(next, |f| f.min(next)),
    });
    store.write(&set)
}

/// The guards a restore has found so far.
#[derive(Debug, Default)]
struct Pending {
    /// Per customer, per input topic: the last event offset their record applied.
    applied: Applied,
    /// Per customer with a guard: the changelog offset of the first record behind it.
    since: HashMap<String, i64>,
    /// How many customers' guards go back to each changelog offset (its first key is the
    /// floor).
    offsets: std::collections::BTreeMap<i64, usize>,
}

impl Pending {
    /// Notes that customer `id`'s guard goes back to the record at `offset` (if it goes back
    /// to none yet).
    fn behind(&mut self, id: &str, offset: i64) {
        if !self.since.contains_key(id) {
            self.since.insert(id.to_owned(), offset);
            *self.offsets.entry(offset).or_default() += 1;
        }
    }

    /// Forgets what customer `id`'s guard went back to.
    fn forget(&mut self, id: &str) {
        if let Some(offset) = self.since.remove(id) {
            if let std::collections::btree_map::Entry::Occupied(mut e) = self.offsets.entry(offset)
            {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Forgets what the customers without a guard any more went back to.
    fn forget_unguarded(&mut self) {
        if self.since.len() == self.applied.len() {
            return;
        }
        let gone: Vec<String> = self
            .since
            .keys()
            .filter(|id| !self.applied.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.forget(&id);
        }
    }

    /// The changelog offset of the first record behind a guard.
    fn floor(&self) -> Option<i64> {
        self.offsets.keys().next().copied()
    }
}
