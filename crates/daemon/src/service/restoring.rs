//! The restores under way: each newly assigned partition's customers are read back from the
//! changelog on a thread of its own (with its own consumer, outside the group), while the loop
//! goes on with the other partitions; the group member keeps polling, so a long restore never
//! throws it out of the group. A restored partition is sought to where its changelog says its
//! batches stopped and resumed.

use super::clients::{probe_client_config, Context};
use super::Shared;
use crate::changelog::restore::{restore, RestoreError, Restored};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

type Done = (i32, Result<Restored, RestoreError>, Duration);

/// How long a restore that failed for a reason that may pass waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Seeks each input topic's partition of a restore to where it resumes.
fn seek(
    shared: &Shared,
    consumer: &StreamConsumer<Context>,
    r: &Restored,
) -> Result<(), rdkafka::error::KafkaError> {
    for input in &shared.config.inputs {
        if let Some((_, next)) = r.resume.iter().find(|(t, _)| *t == input.topic) {
            consumer.seek(
                &input.topic,
                r.partition,
                KafkaOffset::Offset(*next),
                Duration::from_secs(10),
            )?;
        }
    }
    Ok(())
}

/// The restores under way and those done, not yet applied.
pub(super) struct Restores {
    topic: Option<String>,
    /// The stop flag of each restore under way, by partition.
    running: HashMap<i32, Arc<AtomicBool>>,
    sender: Sender<Done>,
    receiver: Receiver<Done>,
    done: Vec<Done>,
    /// Restores applied whose input partitions could not be sought yet (librdkafka refuses a
    /// seek until the partition's fetcher has started): tried again each loop.
    seeking: Vec<Restored>,
    /// Records left per restore under way (the gauge is their sum).
    left: Arc<Mutex<HashMap<i32, u64>>>,
}

impl Restores {
    /// Restores from `topic`; none when `None` (no changelog).
    pub(super) fn new(topic: Option<String>) -> Restores {
        let (sender, receiver) = channel();
        Restores {
            topic,
            running: HashMap::new(),
            sender,
            receiver,
            done: Vec::new(),
            seeking: Vec::new(),
            left: Arc::default(),
        }
    }

    /// Starts the restores of the partitions assigned since the last call. A partition whose
    /// earlier restore still runs (it was revoked and assigned again) waits for it to stop.
    pub(super) fn start(&mut self, shared: &Arc<Shared>) {
        let Some(topic) = &self.topic else {
            return;
        };
        for (p, stop) in &self.running {
            if !shared.partitions.restore_running(*p) {
                stop.store(true, Ordering::SeqCst);
            }
        }
        for p in shared.partitions.start_restores() {
            if self.running.contains_key(&p) {
                shared.partitions.to_restore([p]);
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            self.running.insert(p, stop.clone());
            let (s, topic, sender, left) = (
                shared.clone(),
                topic.clone(),
                self.sender.clone(),
                self.left.clone(),
            );
            let client = probe_client_config(&shared.config);
            std::thread::Builder::new()
                .name(format!("restore-{p}"))
                .spawn(move || {
                    let started = Instant::now();
                    let read = std::sync::atomic::AtomicU64::new(0);
                    let progress = |records: u64, remaining: u64| {
                        let before = read.swap(records, Ordering::SeqCst);
                        s.metrics
                            .restored_records
                            .inc_by(records.saturating_sub(before));
                        let mut l = left.lock().unwrap_or_else(PoisonError::into_inner);
                        l.insert(p, remaining);
                        s.metrics
                            .restore_remaining
                            .set(l.values().sum::<u64>() as i64);
                    };
                    // Not while a standby round writes the partition (it gives up at once).
                    let lane = s.lanes.of(p);
                    let _held = lane.lock().unwrap_or_else(PoisonError::into_inner);
                    let result = restore(
                        &client,
                        s.store.as_ref(),
                        &topic,
                        p,
                        s.config.processing.history_limit,
                        &stop,
                        &progress,
                    );
                    {
                        let mut l = left.lock().unwrap_or_else(PoisonError::into_inner);
                        l.remove(&p);
                        s.metrics
                            .restore_remaining
                            .set(l.values().sum::<u64>() as i64);
                    }
                    if result.as_ref().is_err_and(RestoreError::is_retryable) {
                        // Not at once again.
                        std::thread::sleep(RETRY_AFTER);
                    }
                    let _ = sender.send((p, result, started.elapsed()));
                })
                .expect("a thread for a restore");
        }
    }

    /// Whether some restore has ended and waits to be applied.
    pub(super) fn any_done(&mut self) -> bool {
        while let Ok(d) = self.receiver.try_recv() {
            self.running.remove(&d.0);
            self.done.push(d);
        }
        !self.done.is_empty() || !self.seeking.is_empty()
    }

    /// Applies the restores that ended (call it once no batch under way can write their
    /// partitions): each partition still assigned is sought to where its changelog says its
    /// batches stopped, and resumed; a failed one stays paused, and readiness says why.
    pub(super) fn finish(&mut self, shared: &Shared, consumer: &StreamConsumer<Context>) {
        for (p, result, took) in self.done.drain(..) {
            if !shared.partitions.restore_running(p) {
                // Revoked, or assigned again, meanwhile.
                continue;
            }
            match result {
                Ok(r) => {
                    let rate = r.records as f64 / took.as_secs_f64().max(1e-3);
                    tracing::info!(
                        partition = p,
                        records = r.records,
                        from = r.from,
                        to = r.to,
                        seconds = took.as_secs_f64(),
                        records_per_second = rate.round(),
                        resume = ?r.resume,
                        already_applied = r.applied.len(),
                        "Partition restored from the changelog."
                    );
                    self.seeking.push(r);
                }
                Err(RestoreError::Stopped(_)) => {}
                Err(error) if error.is_retryable() => {
                    tracing::warn!(partition = p, %error, "Restoring a partition failed; trying again.");
                    shared.partitions.to_restore([p]);
                }
                Err(error) => {
                    tracing::error!(partition = p, %error, "Restoring a partition failed: it stays paused.");
                    shared.partitions.restore_failed(p, error.to_string());
                }
            }
        }
        let seeking = std::mem::take(&mut self.seeking);
        for r in seeking {
            let p = r.partition;
            if !shared.partitions.restore_running(p) {
                continue;
            }
            if let Err(error) = seek(shared, consumer, &r) {
                // Paused still, and restoring: the next loop tries again.
                tracing::debug!(%error, partition = p, "Cannot seek a restored partition yet; trying again.");
                self.seeking.push(r);
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for input in &shared.config.inputs {
                let _ = tpl.add_partition(&input.topic, p);
            }
            shared.guards.set(p, r.applied, r.floor);
            shared.partitions.restored(p, &r.resume);
            match consumer.resume(&tpl) {
                Ok(()) => {
                    tracing::info!(partition = p, resume = ?r.resume, "Restored partition sought to its position; reading it.")
                }
                Err(error) => {
                    tracing::error!(%error, partition = p, "Cannot resume a restored partition.")
                }
            }
        }
    }

    /// Stops the restores under way (the service is stopping).
    pub(super) fn stop(&self) {
        for stop in self.running.values() {
            stop.store(true, Ordering::SeqCst);
        }
    }
}
