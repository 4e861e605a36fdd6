//! Landing batches: once Kafka acknowledged a batch's messages, it is counted, written to the
//! store (after the batch before it), and its offsets are committed.

use super::clients::Context;
use super::transaction::{self, TransactionError};
use super::Shared;
use crate::clock::wall_now;
use crate::processor::Unwritten;
use crate::sending::Attempt;
use crate::sending::{InFlight, Landed, Sender, Sent};
use journeyd_store::{Offset, WriteSet};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a batch hands on once Kafka has its messages: its write, and what to count.
pub(super) struct Handover {
    pub(super) write: Arc<WriteSet>,
    /// The input partition of each customer of the write (see [`crate::processor::Output`]).
    pub(super) owners: Vec<Option<i32>>,
    /// The batch's changelog records.
    pub(super) changes: Vec<crate::processor::Change>,
    pub(super) topics: Vec<String>,
    pub(super) tally: crate::processor::Tally,
    pub(super) timestamps: Vec<i64>,
    pub(super) timers: usize,
}

/// The batches past processing: on their way to Kafka, then being written; and their writes,
/// which later batches read through until they are in the store.
pub(super) struct Landing {
    pub(super) sender: Sender,
    pub(super) sending: InFlight<Handover>,
    pub(super) writing: Option<Writing>,
    pub(super) unwritten: Unwritten,
    /// The changelog topic, when the changelog is on.
    pub(super) changelog: Option<String>,
    /// Set once a batch was left unwritten (the service is stopping): no later batch may be
    /// written after it, or the stored offsets would pass over its changes.
    pub(super) stopped: bool,
    /// With `exactly_once`: one transaction per batch (see [`super::transaction`]).
    pub(super) transactional: bool,
    /// Set when a transaction aborted and the partitions were rewound: the batches processed
    /// since must not be sent (see [`Landing::rewind`]).
    pub(super) rewound: bool,
    /// With `exactly_once`: the input offsets last committed, per topic and partition (a
    /// batch of timers only commits those of its partitions, so that the group coordinator
    /// checks its generation all the same).
    pub(super) committed: BTreeMap<(String, i32), i64>,
}

impl Landing {
    /// Waits for the oldest batch on its way to be acknowledged (see
    /// [`InFlight::land_oldest`]), counts it, then starts its write (after the previous write
    /// has landed). Returns false if it was not acknowledged (the service is stopping): then
    /// neither it nor any later batch is written.
    pub(super) async fn land(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
    ) -> anyhow::Result<bool> {
        if self.stopped {
            return Ok(false);
        }
        if self.transactional {
            return self.land_transaction(shared, consumer).await;
        }
        let Some(landed) = self
            .sending
            .land_oldest(&self.sender)
            .await
            .map_err(anyhow::Error::msg)?
        else {
            self.stopped = true;
            return Ok(false);
        };
        count(shared, &landed);
        let then = landed.sent.then;
        // The changelog records go after the actions are acknowledged (a record in the
        // changelog means its batch's actions are in Kafka), queued now and acknowledged
        // before the write; the partitions no longer this replica's are left out, of both.
        // A lost assignment (the group moved on without this member) owns nothing.
        let lost = consumer.assignment_lost();
        let owned = |p: i32| !lost && shared.partitions.owns(p);
        let mut queued = None;
        let mut fenced = None;
        if let Some(topic) = &self.changelog {
            if !then.changes.is_empty() {
                let q = crate::changelog::produce::enqueue(
                    &self.sender.producer,
                    topic,
                    &then.changes,
                    &owned,
                    &self.sender.shutdown,
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot produce a batch's changelog records to {topic}: {e}")
                })?;
                let Some(q) = q else {
                    self.stopped = true;
                    return Ok(false);
                };
                queued = Some(q);
            }
            fenced = crate::changelog::fence::owned_part(&then.write, &then.owners, &owned);
        }
        if let Some(w) = self.writing.take() {
            let waited = Instant::now();
            if !finish(shared, consumer, &mut self.unwritten, w).await? {
                self.stopped = true;
                return Ok(false);
            }
            shared
                .metrics
                .batch_seconds
                .with_label_values(&["write_wait"])
                .observe(waited.elapsed().as_secs_f64());
        }
        let mut write = then.write;
        if queued.is_some() || fenced.is_some() {
            let mut part = fenced.unwrap_or_else(|| (*write).clone());
            if let (Some(q), Some(topic)) = (queued, &self.changelog) {
                let n = q.len() as u64;
                let checkpoint = q.acknowledged().await.map_err(|e| {
                    anyhow::anyhow!(
                        "Kafka did not take a batch's changelog records ({topic}): {e}; the \
                         batch runs again after a restart"
                    )
                })?;
                shared.metrics.changelog_records.inc_by(n);
                part.offsets
                    .extend(checkpoint_offsets(shared, topic, checkpoint));
            }
            write = Arc::new(part);
        }
        self.writing = Some(start_write(
            shared,
            write,
            then.topics,
            &self.sender.shutdown,
        ));
        Ok(true)
    }

    /// [`Landing::land`] for `exactly_once`: once Kafka has the oldest batch's actions, its
    /// changelog records join its transaction, then its consumed offsets, and it commits;
    /// only then is it counted and written. A transaction that cannot commit is aborted and
    /// the partitions rewound (true all the same: the loop goes on).
    async fn land_transaction(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
    ) -> anyhow::Result<bool> {
        let landed = match self
            .sending
            .land_oldest_once(&self.sender)
            .await
            .map_err(anyhow::Error::msg)?
        {
            Attempt::Landed(l) => l,
            Attempt::Stopped => {
                self.stopped = true;
                return Ok(false);
            }
            Attempt::Failed(why) => {
                self.rewind(shared, consumer, &why).await?;
                return Ok(true);
            }
        };
        let then = &landed.sent.then;
        let inputs = input_offsets(shared, &then.write);
        // Every partition the batch read or changed must still be this replica's: a revoked
        // one has a new owner that replays it.
        let owned = shared.partitions.owned();
        let lost = consumer.assignment_lost();
        let foreign = inputs
            .iter()
            .map(|o| o.partition)
            .chain(then.changes.iter().map(|c| c.partition))
            .find(|p| lost || !owned.contains(p));
        if let Some(p) = foreign {
            let why = format!("partition {p} is no longer this replica's");
            self.rewind(shared, consumer, &why).await?;
            return Ok(true);
        }
        let mut queued = None;
        if let Some(topic) = &self.changelog {
            if !then.changes.is_empty() {
                let q = crate::changelog::produce::enqueue(
                    &self.sender.producer,
                    topic,
                    &then.changes,
                    &|_| true,
                    &self.sender.shutdown,
                )
                .await;
                match q {
                    Ok(Some(q)) => queued = Some(q),
                    Ok(None) => {
                        self.stopped = true;
                        return Ok(false);
                    }
                    Err(error) => {
                        let why =
                            format!("cannot produce the changelog records to {topic}: {error}");
                        self.rewind(shared, consumer, &why).await?;
                        return Ok(true);
                    }
                }
            }
        }
        let mut checkpoint = BTreeMap::new();
        if let Some(q) = queued {
            let n = q.len() as u64;
            match q.acknowledged().await {
                Ok(c) => checkpoint = c,
                Err(error) => {
                    let why = format!("Kafka did not take the changelog records: {error}");
                    self.rewind(shared, consumer, &why).await?;
                    return Ok(true);
                }
            }
            shared.metrics.changelog_records.inc_by(n);
        }
        // The offsets of the partitions of its timers too: the coordinator checks the group's
        // generation only on offsets.
        let mut offsets = inputs.clone();
        let read: BTreeSet<i32> = inputs.iter().map(|o| o.partition).collect();
        let timers: BTreeSet<i32> = then
            .changes
            .iter()
            .map(|c| c.partition)
            .filter(|p| !read.contains(p))
            .collect();
        if !timers.is_empty() {
            offsets.extend(self.committed_of(shared, &timers)?);
        }
        // The group as this member knows it now: rebalances happen in its polls, on this task,
        // and the check above found the batch's partitions still here. A member the group
        // has moved on from without its knowing (a session timeout) is refused.
        let group = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata"))?;
        let producer = self.sender.producer.clone();
        match transaction::commit(&producer, &offsets, group, &self.sender.shutdown).await {
            Ok(()) => {}
            Err(TransactionError::Abortable(error)) => {
                self.rewind(shared, consumer, &error.to_string()).await?;
                return Ok(true);
            }
            Err(TransactionError::Stopped) => {
                self.stopped = true;
                return Ok(false);
            }
            Err(fatal @ TransactionError::Fatal(_)) => {
                return Err(anyhow::Error::new(fatal).context(
                    "the batch's transaction could not commit; it runs again after a restart",
                ))
            }
        }
        shared.metrics.transactions_committed.inc();
        for o in &inputs {
            self.committed
                .insert((o.topic.clone(), o.partition), o.next);
        }
        let passed: Vec<crate::processor::Position> = inputs
            .iter()
            .map(|o| crate::processor::Position {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.next - 1,
            })
            .collect();
        shared.guards.passed(&passed);
        count(shared, &landed);
        let then = landed.sent.then;
        let mut write = then.write;
        if let Some(topic) = &self.changelog {
            if !checkpoint.is_empty() {
                let mut part = (*write).clone();
                part.offsets
                    .extend(checkpoint_offsets(shared, topic, checkpoint));
                write = Arc::new(part);
            }
        }
        if let Some(w) = self.writing.take() {
            if !finish(shared, consumer, &mut self.unwritten, w).await? {
                self.stopped = true;
                return Ok(false);
            }
        }
        self.writing = Some(start_write(
            shared,
            write,
            then.topics,
            &self.sender.shutdown,
        ));
        Ok(true)
    }

    /// The input offsets last committed of partition numbers `numbers`: the further of those
    /// this replica committed and the store's.
    fn committed_of(
        &self,
        shared: &Shared,
        numbers: &BTreeSet<i32>,
    ) -> anyhow::Result<Vec<Offset>> {
        let mut out = Vec::new();
        let stored = shared.store.offsets()?;
        for input in &shared.config.inputs {
            for &p in numbers {
                let key = (input.topic.clone(), p);
                let in_store = stored
                    .iter()
                    .find(|o| o.topic == input.topic && o.partition == p)
                    .map(|o| o.next);
                // The further: this replica's last commit, or the store's (a restore after
                // another replica moved the partition on).
                let next = self.committed.get(&key).copied().max(in_store);
                if let Some(next) = next {
                    out.push(Offset {
                        topic: input.topic.clone(),
                        partition: p,
                        next,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A batch's transaction cannot commit: it is aborted, and the replica goes back to the
    /// last committed state. The write under way (of the batch before, committed) lands; the
    /// batches processed since are dropped. The store then holds exactly what Kafka committed
    /// (a batch is written only after its commit, states and input offsets in one write), so
    /// every partition the replica owns is read again from the store's offsets; its timers
    /// wait until reading is back at the partition's head.
    pub(super) async fn rewind(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
        why: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            why,
            "A batch's transaction aborts: nothing of it is visible to read_committed readers. \
             Its partitions are read again from the last committed batch."
        );
        shared.metrics.transactions_aborted.inc();
        transaction::abort(&self.sender.producer)
            .await
            .map_err(|e| anyhow::Error::new(e).context("aborting a batch's transaction"))?;
        self.sending = InFlight::new();
        if let Some(w) = self.writing.take() {
            if !finish(shared, consumer, &mut self.unwritten, w).await? {
                self.stopped = true;
                return Ok(());
            }
        }
        self.unwritten = Unwritten::none();
        let numbers = shared.partitions.owned();
        consumer.context().forget_processed(&numbers);
        let stored = shared.store.offsets()?;
        // Where reading began for partitions this replica never wrote: the group's committed
        // offsets (under exactly_once, those of committed transactions).
        let mut asked = TopicPartitionList::new();
        for input in &shared.config.inputs {
            for &p in &numbers {
                let _ = asked.add_partition(&input.topic, p);
            }
        }
        let group_committed = consumer
            .committed_offsets(asked, std::time::Duration::from_secs(10))
            .ok();
        for &p in &numbers {
            let mut resume = Vec::new();
            for input in &shared.config.inputs {
                let next = stored
                    .iter()
                    .find(|o| o.topic == input.topic && o.partition == p)
                    .map(|o| o.next)
                    .or_else(|| {
                        let el = group_committed.as_ref()?.find_partition(&input.topic, p)?;
                        match el.offset() {
                            KafkaOffset::Offset(n) => Some(n),
                            _ => None,
                        }
                    });
                // Nothing committed of it at all: where `auto.offset.reset` starts a group.
                let reset_latest = shared
                    .config
                    .kafka
                    .get("auto.offset.reset")
                    .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end"));
                let start = if reset_latest {
                    KafkaOffset::End
                } else {
                    KafkaOffset::Beginning
                };
                let to = next.map_or(start, KafkaOffset::Offset);
                consumer
                    .seek(&input.topic, p, to, std::time::Duration::from_secs(10))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read {}[{p}] again from the last committed batch: {e}",
                            input.topic
                        )
                    })?;
                if let Some(n) = next {
                    resume.push((input.topic.clone(), n));
                }
                self.committed.remove(&(input.topic.clone(), p));
            }
            shared.partitions.restored(p, &resume);
        }
        self.rewound = true;
        Ok(())
    }

    /// Whether a rewind happened since the last call (see [`Landing::rewind`]).
    pub(super) fn take_rewound(&mut self) -> bool {
        std::mem::take(&mut self.rewound)
    }

    /// Lets the batches under way land, in order: those being sent (each written once Kafka
    /// acknowledges it) and the one being written. Returns false if one being sent was not
    /// acknowledged (the service is stopping); the later ones are then left unwritten too.
    pub(super) async fn drain(
        &mut self,
        shared: &Arc<Shared>,
        consumer: &StreamConsumer<Context>,
    ) -> anyhow::Result<bool> {
        let mut acknowledged = !self.stopped;
        while acknowledged && !self.sending.is_empty() {
            acknowledged = self.land(shared, consumer).await?;
        }
        // The write under way is of a batch before any left unwritten: it may land.
        if let Some(w) = self.writing.take() {
            acknowledged &= finish(shared, consumer, &mut self.unwritten, w).await?;
        }
        self.stopped |= !acknowledged;
        Ok(acknowledged)
    }
}

/// Counts a batch Kafka has acknowledged: its actions, dead letters, timers and latencies.
pub(super) fn count(shared: &Shared, landed: &Landed<Handover>) {
    let m = &shared.metrics;
    let Sent {
        actions,
        dead,
        then,
    } = &landed.sent;
    m.batch_seconds
        .with_label_values(&["produce"])
        .observe(landed.took.as_secs_f64());
    let acknowledged_at = wall_now() - landed.acknowledged.elapsed().as_millis() as i64;
    for ts in &then.timestamps {
        m.event_to_action_seconds
            .observe(((acknowledged_at - ts).max(0) as f64) / 1000.0);
    }
    for d in dead {
        m.events_rejected.with_label_values(&[d.reason]).inc();
        {
            use rdkafka::Message as _;
            tracing::warn!(reason = d.reason, error = %d.error, topic = d.message.topic(), partition = d.message.partition(), offset = d.message.offset(), "Message sent to the dead-letter topic.");
        }
    }
    for a in actions {
        m.actions
            .with_label_values(&[a.channel.as_str(), a.kind.as_str()])
            .inc();
    }
    m.timers_fired.inc_by(then.timers as u64);
    m.apply(&then.tally);
}

/// A batch's write, under way.
pub(super) struct Writing {
    pub(super) task: tokio::task::JoinHandle<Result<bool, journeyd_store::Error>>,
    pub(super) write: Arc<WriteSet>,
    pub(super) topics: Vec<String>,
}

/// Starts writing a batch; batches read through it meanwhile. A write that fails for a reason
/// that may pass (I/O trouble) is retried with backoff until it lands (the task ends with
/// true) or the service stops (false: not written); one that cannot pass (an invalid write, a
/// corrupt store) ends the task with the error, and the service stops. Either way the batch
/// runs again after a restart.
pub(super) fn start_write(
    shared: &Arc<Shared>,
    write: Arc<WriteSet>,
    topics: Vec<String>,
    shutdown: &CancellationToken,
) -> Writing {
    let (s, w, shutdown) = (shared.clone(), write.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut w = w;
        let mut backoff = crate::sending::RETRY_FIRST;
        loop {
            let (s2, w2) = (s.clone(), w.clone());
            match tokio::task::spawn_blocking(move || s2.store.write(&w2)).await {
                Ok(Ok(())) => break,
                Ok(Err(error)) if !error.is_transient() => {
                    tracing::error!(%error, "Writing the batch to the store failed, and retrying cannot help: stopping. The batch runs again after a restart.");
                    return Err(error);
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, retry_in = ?backoff, "Writing the batch to the store failed; retrying.");
                }
                Err(error) => {
                    tracing::error!(%error, "The batch's write did not finish; retrying.");
                }
            }
            s.metrics.batch_retries.inc();
            // Again without saying which entries exist: the failed attempt may have committed
            // after all (a panic after the commit), and the store's counts must not take its
            // changes twice. The store reads them itself.
            if w.timers_existed.is_some() || w.customers_existed.is_some() {
                w = Arc::new(WriteSet {
                    timers_existed: None,
                    customers_existed: None,
                    ..(*w).clone()
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    tracing::warn!("Stopping while a batch's write is retried: it runs again after a restart.");
                    return Ok(false);
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(crate::sending::RETRY_MOST);
        }
        s.metrics
            .batch_seconds
            .with_label_values(&["write"])
            .observe(started.elapsed().as_secs_f64());
        Ok(true)
    });
    Writing {
        task,
        write,
        topics,
    }
}

/// Waits for a batch's write to land, then counts its events and commits its offsets. False
/// when the service stopped before the write landed.
pub(super) async fn finish(
    shared: &Shared,
    consumer: &StreamConsumer<Context>,
    unwritten: &mut Unwritten,
    w: Writing,
) -> anyhow::Result<bool> {
    let written = w
        .task
        .await?
        .map_err(|e| anyhow::Error::new(e).context("a batch could not be written to the store"))?;
    if !written {
        return Ok(false);
    }
    unwritten.pop_oldest();
    shared.progress.landed();
    for t in &w.topics {
        shared
            .metrics
            .events_consumed
            .with_label_values(&[t.as_str()])
            .inc();
    }
    // With transactions the offsets were committed in the batch's transaction.
    if shared.config.processing.guarantee != crate::config::Guarantee::ExactlyOnce {
        commit(consumer, &input_offsets(shared, &w.write));
    }
    Ok(true)
}

/// A write's offsets of the input topics (not the changelog checkpoint, the store's own).
fn input_offsets(shared: &Shared, write: &WriteSet) -> Vec<Offset> {
    write
        .offsets
        .iter()
        .filter(|o| shared.config.inputs.iter().any(|i| i.topic == o.topic))
        .cloned()
        .collect()
}

/// The changelog checkpoint a batch's write stores, per partition: after its records, but not
/// past the records behind a restore's guards that are still needed.
fn checkpoint_offsets<'a>(
    shared: &'a Shared,
    topic: &'a str,
    checkpoint: BTreeMap<i32, i64>,
) -> impl Iterator<Item = Offset> + 'a {
    checkpoint.into_iter().map(move |(partition, next)| Offset {
        topic: topic.to_owned(),
        partition,
        next: shared.guards.floor(partition).map_or(next, |f| f.min(next)),
    })
}

/// Commits consumed offsets to Kafka (asynchronously; only lag dashboards read them).
pub(super) fn commit(consumer: &StreamConsumer<Context>, offsets: &[Offset]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for o in offsets {
        let _ = tpl.add_partition_offset(&o.topic, o.partition, KafkaOffset::Offset(o.next));
    }
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%error, "Committing offsets to Kafka failed (only lag dashboards use them).");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_that_retrying_cannot_help_ends_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, shared) = crate::app::for_tests(dir.path());
        // A topic name too long for the store's offset keys: refused before anything is written.
        let invalid = WriteSet {
            offsets: vec![Offset {
                topic: "t".repeat(100_000),
                partition: 0,
                next: 1,
            }],
            ..WriteSet::default()
        };
        let running = CancellationToken::new();
        let writing = start_write(&shared, Arc::new(invalid), Vec::new(), &running);
        let ended = tokio::time::timeout(Duration::from_secs(10), writing.task)
            .await
            .expect("it does not retry")
            .unwrap();
        let error = ended.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("topic name"), "{error}");
        assert_eq!(shared.metrics.batch_retries.get(), 0);
    }
}
