//! The counts topic: each replica publishes the counts of the input partitions it owns (see
//! `journeyd_engine::report`), so that any replica can sum them for the whole deployment.
//!
//! One compacted partition (`admin.counts_topic`, default `<group.id>.counts`), keyed by the
//! input partition's number (as text). A value is the partition's position (the sum of the
//! next offsets of its input topics, as the owner's store held them), 8 bytes big-endian, then
//! the counts as the store keeps them. A replica publishes every [`EVERY`] the partitions whose
//! counts changed, and every [`REFRESH`] all of them; every replica follows the topic from its
//! beginning on a thread of its own and keeps, for each partition, the record with the highest
//! position (at an equal one, the later): a late record from a replica that has just lost the
//! partition does not undo its new owner's.
//!
//! The topic is created with 10-minute segments and a low dirty ratio, so compaction keeps it
//! small. It is in nobody's way: a replica starts without reading it, and without it (it cannot
//! be created, or the broker refuses it) each replica reports its own partitions only.

use crate::service::Shared;
use journeyd_engine::report::Counts;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a replica publishes the counts that changed.
pub const EVERY: Duration = Duration::from_secs(2);
/// How often a replica publishes all its partitions' counts, changed or not.
pub const REFRESH: Duration = Duration::from_secs(60);

/// Each partition's published counts, with its position then.
pub type Published = BTreeMap<i32, (i64, Counts)>;

/// Encodes a record's value.
pub fn encode(position: i64, counts: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + counts.len());
    v.extend_from_slice(&position.to_be_bytes());
    v.extend_from_slice(counts);
    v
}

/// Decodes a record: the partition, and the position and counts (`None` for a tombstone).
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(i32, Option<(i64, Counts)>), String> {
    let partition = key
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.parse::<i32>().ok())
        .ok_or("the key is not a partition number")?;
    let Some(value) = value else {
        return Ok((partition, None));
    };
    let (position, counts) = value
        .split_first_chunk::<8>()
        .ok_or("the value is shorter than its position")?;
    let counts =
        Counts::from_bytes(counts).map_err(|e| format!("the counts do not decode: {e}"))?;
    Ok((partition, Some((i64::from_be_bytes(*position), counts))))
}

/// Keeps a record: the one with the highest position wins (at an equal one, the later).
pub fn keep(published: &mut Published, partition: i32, record: Option<(i64, Counts)>) {
    match record {
        Some((position, counts)) => {
            if published
                .get(&partition)
                .is_none_or(|(known, _)| position >= *known)
            {
                published.insert(partition, (position, counts));
            }
        }
        None => {
            published.remove(&partition);
        }
    }
}

/// The counts topic's publisher and follower: stopped when dropped, and holding the shared
/// state (and with it the store) only while they use it, so the store closes with the service.
#[derive(Debug)]
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    follower: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
        let thread = self
            .follower
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Starts publishing and following the counts topic, in the background, until `shutdown` or
/// until the [`Running`] is dropped. A topic that cannot be had is logged: each replica then
/// reports its own partitions only.
pub fn start(shared: &Arc<Shared>, shutdown: &CancellationToken) -> Running {
    let stop = shutdown.child_token();
    let follower: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let (weak, config) = (Arc::downgrade(shared), shared.config.clone());
    let (slot, token) = (follower.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let topic = config.counts_topic();
        if let Err(error) = ensure(&config, &topic).await {
            tracing::warn!(topic, %error, "No counts topic: each replica reports the counts of its own partitions only.");
            return;
        }
        let thread = {
            let (weak, topic, token) = (weak.clone(), topic.clone(), token.clone());
            std::thread::Builder::new()
                .name("journeyd-counts".into())
                .spawn(move || follow(&weak, &config, &topic, &token))
        };
        match thread {
            Ok(t) => {
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
            }
            Err(error) => tracing::warn!(%error, "Cannot follow the counts topic."),
        }
        publish(weak, topic, token).await;
    });
    Running {
        stop,
        task,
        follower,
    }
}

/// Creates the topic when missing.
async fn ensure(config: &crate::config::Config, topic: &str) -> Result<(), String> {
    let client = super::control::reader_config(config);
    let exists = {
        let (mut client, topic) = (client.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<bool, String> {
            client.set("allow.auto.create.topics", "false");
            let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            Ok(metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    if !exists {
        crate::changelog::topic::create_compacted_with(
            &client,
            topic,
            1,
            &[
                ("segment.ms", "600000"),
                ("min.cleanable.dirty.ratio", "0.1"),
            ],
        )
        .await?;
        tracing::info!(topic, "Created the counts topic (cleanup.policy=compact).");
    }
    Ok(())
}

/// Follows the topic from its beginning until `shutdown`, keeping each partition's counts.
fn follow(
    shared: &std::sync::Weak<Shared>,
    config: &crate::config::Config,
    topic: &str,
    shutdown: &CancellationToken,
) {
    let consumer: BaseConsumer = match super::control::reader_config(config).create() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the counts topic.");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    let assigned = tpl
        .add_partition_offset(topic, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&tpl));
    if let Err(error) = assigned {
        tracing::warn!(%error, "Cannot read the counts topic.");
        return;
    }
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => match decode(m.key(), m.payload()) {
                Ok((partition, record)) => {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let mut published = shared
                        .published_counts
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    keep(&mut published, partition, record);
                }
                Err(error) => {
                    tracing::warn!(offset = m.offset(), %error, "A record of the counts topic cannot be read; skipped.");
                }
            },
            Some(Err(error)) => {
                tracing::warn!(%error, "Reading the counts topic; trying again.");
                std::thread::sleep(Duration::from_millis(500));
            }
            None => {}
        }
    }
}

/// An owned partition, its position and its stored counts.
type Owned = (i32, i64, Option<Vec<u8>>);

/// Each owned partition's position (the sum of its input topics' next offsets) and stored
/// counts.
fn owned(shared: &Shared) -> Result<Vec<Owned>, journeyd_store::Error> {
    let offsets = shared.store.offsets()?;
    shared
        .partitions
        .owned()
        .into_iter()
        .map(|p| {
            let position = offsets
                .iter()
                .filter(|o| o.partition == p)
                .map(|o| o.next)
                .sum();
            Ok((p, position, shared.store.counts(p)?))
        })
        .collect()
}

/// Publishes the counts of the partitions this replica owns until `shutdown`.
async fn publish(shared: std::sync::Weak<Shared>, topic: String, shutdown: CancellationToken) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let producer = match super::producer(&config) {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(%error, "Cannot publish the partitions' counts: no producer.");
            return;
        }
    };
    let mut last: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    let mut refreshed = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        if refreshed.elapsed() >= REFRESH {
            last.clear();
            refreshed = Instant::now();
        }
        let Some(s) = shared.upgrade() else {
            return;
        };
        let owned = match tokio::task::spawn_blocking(move || owned(&s)).await {
            Ok(Ok(o)) => o,
            Ok(Err(error)) => {
                tracing::warn!(%error, "Cannot read the partitions' counts to publish them.");
                continue;
            }
            Err(_) => continue,
        };
        for (p, position, counts) in owned {
            let Some(counts) = counts else { continue };
            if last.get(&p) == Some(&counts) {
                continue;
            }
            let key = p.to_string();
            let value = encode(position, &counts);
            let record = FutureRecord::to(&topic)
                .partition(0)
                .key(key.as_bytes())
                .payload(&value);
            match producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    last.insert(p, counts);
                }
                Err((error, _)) => {
                    tracing::warn!(partition = p, %error, "Cannot publish a partition's counts; trying again later.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_furthest_position_wins() {
        let mut counts = Counts::default();
        counts.journeys.insert("j".into(), Default::default());
        let value = encode(42, &counts.to_bytes());
        let (p, record) = decode(Some(b"7"), Some(&value)).unwrap();
        assert_eq!((p, record.clone()), (7, Some((42, counts.clone()))));
        let mut published = Published::new();
        keep(&mut published, 7, record);
        // A late record of the old owner, from an earlier position, is ignored.
        keep(&mut published, 7, Some((41, Counts::default())));
        assert_eq!(published[&7], (42, counts.clone()));
        // At the same position (timers fired), the later record wins.
        keep(&mut published, 7, Some((42, Counts::default())));
        assert_eq!(published[&7], (42, Counts::default()));
        keep(&mut published, 7, None);
        assert!(published.is_empty());
        assert!(decode(Some(b"x"), Some(&value))
            .unwrap_err()
            .contains("partition"));
        assert!(decode(Some(b"1"), Some(&[0, 1]))
            .unwrap_err()
            .contains("shorter"));
        let e = decode(Some(b"1"), Some(&encode(1, &[9]))).unwrap_err();
        assert!(e.contains("do not decode"), "{e}");
    }
}
