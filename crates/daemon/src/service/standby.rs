//! Standby copies (`store.standby_replicas = 1`): a thread that keeps this replica's store
//! warm for the partitions it does not own, by reading their changelog partitions from the
//! local checkpoint to the end, again and again (the restore of [`crate::changelog::restore`],
//! so its checkpoints and guards hold). When such a partition is assigned here, its restore
//! reads only the tail since the last round.
//!
//! A partition is read by one thread at a time: a standby round and the restore of an
//! assignment take the partition's [`Lanes`] lane, and a standby round gives up as soon as
//! the partition is assigned. A partition is warmed only once it has been unassigned for
//! [`SETTLE`]: the writes of batches from before its revoke have landed by then, and at start
//! the group has usually assigned.

use super::Shared;
use crate::changelog::restore::{restore, RestoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a partition stays unassigned before it is warmed.
pub const SETTLE: Duration = Duration::from_secs(5);
/// The pause between two rounds over the partitions.
const ROUND: Duration = Duration::from_secs(1);

/// One lock per changelog partition: who may write it from the changelog now.
#[derive(Debug, Default)]
pub struct Lanes {
    lanes: Mutex<HashMap<i32, Arc<Mutex<()>>>>,
}

impl Lanes {
    /// Partition `p`'s lane.
    pub fn of(&self, p: i32) -> Arc<Mutex<()>> {
        self.lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(p)
            .or_default()
            .clone()
    }
}

/// The standby thread; stopped (and joined) on drop.
pub(super) struct Standby {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts warming the partitions of changelog `topic` (`partitions` of them) this replica
/// does not own.
pub(super) fn start(shared: Arc<Shared>, topic: String, partitions: usize) -> Standby {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    tracing::info!(
        topic,
        partitions,
        "Standby copies: warming the partitions this replica does not own from the changelog."
    );
    let thread = std::thread::Builder::new()
        .name("standby".into())
        .spawn(move || run(&shared, &topic, partitions, &s))
        .expect("a thread for the standby copies");
    Standby {
        stop,
        thread: Some(thread),
    }
}

fn run(shared: &Shared, topic: &str, partitions: usize, stop: &AtomicBool) {
    let client = super::clients::probe_client_config(&shared.config);
    let mut unassigned_since: HashMap<i32, Instant> = HashMap::new();
    let mut failing: HashMap<i32, String> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        for p in 0..partitions as i32 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if shared.partitions.assigned(p) {
                unassigned_since.remove(&p);
                continue;
            }
            let since = *unassigned_since.entry(p).or_insert_with(Instant::now);
            if since.elapsed() < SETTLE {
                continue;
            }
            let lane = shared.lanes.of(p);
            let _held = lane.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.partitions.assigned(p) {
                continue;
            }
            // Given up as soon as the partition is assigned here: its restore goes on from
            // what this round wrote.
            let abandon = AtomicBool::new(false);
            let check = || {
                if stop.load(Ordering::SeqCst) || shared.partitions.assigned(p) {
                    abandon.store(true, Ordering::SeqCst);
                }
            };
            let progress = |_read: u64, _left: u64| check();
            let started = Instant::now();
            match restore(
                &client,
                shared.store.as_ref(),
                topic,
                p,
                shared.config.processing.history_limit,
                &abandon,
                &progress,
            ) {
                Ok(r) => {
                    failing.remove(&p);
                    shared.metrics.standby_records.inc_by(r.records);
                    if r.records > 0 {
                        tracing::debug!(
                            partition = p,
                            records = r.records,
                            to = r.to,
                            seconds = started.elapsed().as_secs_f64(),
                            "Standby copy brought up to date."
                        );
                    }
                }
                Err(RestoreError::Stopped(_)) => {}
                Err(error) => {
                    // Once per partition and error: a round a second would flood the log.
                    let text = error.to_string();
                    if failing.get(&p) != Some(&text) {
                        tracing::warn!(partition = p, %error, "Cannot bring a standby copy up to date; trying again each round (the partition's restore, if it is assigned here, reads what is missing).");
                        failing.insert(p, text);
                    }
                }
            }
        }
        let until = Instant::now() + ROUND;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
