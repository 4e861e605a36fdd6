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
    /// The service is stopping, or the partition was revoked meanwhile.
    #[error("the restore of partition {0} was stopped")]
    Stopped(i32),
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
    /// The records read.
    pub records: u64,
    /// The first offset read and the end.
    pub from: i64,
    /// The end of the changelog partition when the restore began.
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
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
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
        to: high,
        ..Restored::default()
    };
    // Where each input topic resumes: the store's positions, then each position read.
    let mut resume: HashMap<String, i64> = stored
        .iter()
        .filter(|o| o.partition == partition && o.topic != topic)
        .map(|o| (o.topic.clone(), o.next))
        .collect();
    let mut pending: Applied = Applied::new();
    // Read to the end the broker gave, and on until the partition is quiet: a broker may
    // report less than it has (tansu 0.6 reports the last batch's first offset + 1), and a
    // checkpoint past that end means there is more.
    let end = high.max(from);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, KafkaOffset::Offset(from))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let mut chunk: Vec<(i64, Record)> = Vec::with_capacity(CHUNK);
    let mut next = from;
    let mut last_report = Instant::now();
    let mut quiet = 0;
    while next < end || quiet < QUIET_POLLS {
        if stop.load(Ordering::SeqCst) {
            return Err(RestoreError::Stopped(partition));
        }
        let polled = consumer.poll(POLL);
        let idle = polled.is_none();
        match polled {
            None if quiet >= GIVE_UP_POLLS => {
                // Nothing comes, though the broker's end is further: it reported more than
                // it has (or the rest is not readable yet). What was read is all there is.
                tracing::warn!(
                    topic,
                    partition,
                    reported_end = end,
                    read_to = next,
                    "The changelog partition's end as the broker reported it was not reached: nothing more came."
                );
                break;
            }
            None => quiet += 1,
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
            restored.records += chunk.len() as u64;
            apply_chunk(
                store,
                topic,
                partition,
                history_limit,
                std::mem::take(&mut chunk),
                next,
                &mut resume,
                &mut pending,
            )
            .map_err(|source| RestoreError::Store { partition, source })?;
            progress(restored.records, (end - next).max(0) as u64);
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(
                    topic,
                    partition,
                    read = restored.records,
                    left = end - next,
                    "Restoring a partition from the changelog."
                );
            }
        }
    }
    restored.to = next;
    // A customer's guard matters only past where their topic resumes.
    pending.retain(|_, topics| {
        topics.retain(|(t, o)| resume.get(t).is_none_or(|next| o >= next));
        !topics.is_empty()
    });
    restored.applied = pending;
    let mut resume: Vec<(String, i64)> = resume.into_iter().collect();
    resume.sort();
    restored.resume = resume;
    Ok(restored)
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
    pending: &mut Applied,
) -> Result<(), journeyd_store::Error> {
    // Each customer's final record in the chunk, and their history entries since their last
    // tombstone.
    let mut last: HashMap<String, Option<CustomerRecord>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut history: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut positions: Vec<Offset> = Vec::new();
    for (_, r) in chunk {
        match r {
            Record::Customer { id, record } => {
                let h = history.entry(id.clone()).or_default();
                match &record {
                    Some(rec) => {
                        h.extend(rec.history.iter().cloned());
                        for (t, o) in &rec.applied {
                            let topics = pending.entry(id.clone()).or_default();
                            match topics.iter_mut().find(|(x, _)| x == t) {
                                Some(e) => e.1 = e.1.max(*o),
                                None => topics.push((t.clone(), *o)),
                            }
                        }
                    }
                    None => {
                        h.clear();
                        pending.remove(&id);
                    }
                }
                if last.insert(id.clone(), record).is_none() {
                    order.push(id);
                }
            }
            Record::Position { topic: t, next: n } => {
                // The records before it hold every event before `n`: their guards for this
                // topic go.
                for topics in pending.values_mut() {
                    topics.retain(|(x, o)| x != &t || *o >= n);
                }
                pending.retain(|_, topics| !topics.is_empty());
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
    let ids: Vec<&str> = order.iter().map(String::as_str).collect();
    let before = store.customers(&ids)?;
    let mut set = WriteSet {
        history_limit,
        ..WriteSet::default()
    };
    for (id, old) in order.iter().zip(before) {
        let old_wake: Option<Millis> = old
            .as_deref()
            .and_then(|b| CustomerState::decode(b).ok())
            .and_then(|(s, _)| s.wake);
        let record = last.remove(id).flatten();
        let new_wake = record.as_ref().and_then(|r| r.wake);
        if let Some(w) = old_wake.filter(|w| Some(*w) != new_wake) {
            set.clear_timers.push((w, id.clone()));
        }
        match record {
            Some(r) => {
                if let Some(w) = new_wake {
                    set.set_timers.push((w, id.clone()));
                    set.timer_partitions.push((id.clone(), partition));
                }
                set.customers.push((id.clone(), Some(r.state)));
                for e in history.remove(id).unwrap_or_default() {
                    set.history.push((id.clone(), e));
                }
            }
            None => set.customers.push((id.clone(), None)),
        }
    }
    set.offsets = positions;
    set.offsets.push(Offset {
        topic: topic.to_owned(),
        partition,
        next,
    });
    store.write(&set)
}
