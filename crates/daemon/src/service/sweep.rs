//! Sweeps: after a journey is stopped or resumed, every customer of the partitions this replica
//! owns is given the change at once, a page at a time between live batches.
//!
//! The engine catches a customer up on a status change at their next input anyway (see
//! `Engine::process`); a sweep makes it happen at the change, as `journey simulate` does at a
//! control line, so a stop's cancels reach the channels now and not at each customer's next
//! event. A swept customer is processed as a timer at the change's time ([`Work::Settle`]),
//! through the same batch path as events and timers (changelog, fences, transactions). A page
//! is read from the store's list of each partition's customers (`Store::customers_of`).
//!
//! What a sweep does not cover (a customer caught up at their next input instead): a
//! partition assigned here after the change, and customers of a store written before the list
//! existed until their next write.

use super::Partitions;
use crate::processor::Work;
use journeyd_store::{Millis, Store};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// One sweep under way.
#[derive(Debug, Clone)]
struct Sweep {
    journey: std::sync::Arc<str>,
    status: journeyd_engine::Status,
    at: Millis,
    /// The partitions still to sweep, the first under way.
    partitions: VecDeque<i32>,
    /// The last customer of the first partition given out.
    after: Option<String>,
    /// Customers given out so far.
    customers: u64,
}

/// The sweeps under way, oldest first.
#[derive(Debug, Default)]
pub struct Sweeps {
    queue: Mutex<VecDeque<Sweep>>,
    /// Set once the control topic has been read to its end: the statuses read before are in
    /// force from the start, and sweep nothing.
    ready: AtomicBool,
}

impl Sweeps {
    /// From now on, status changes start sweeps.
    pub fn ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Starts a sweep of `partitions` for journey `journey`'s change at `at`, when the control
    /// topic is being followed.
    pub fn start(
        &self,
        journey: &str,
        status: journeyd_engine::Status,
        at: Millis,
        partitions: impl IntoIterator<Item = i32>,
    ) {
        if !self.ready.load(Ordering::SeqCst) {
            return;
        }
        let partitions: VecDeque<i32> = partitions.into_iter().collect();
        tracing::info!(
            journey,
            partitions = ?partitions,
            "Sweeping the customers of the partitions owned here for the status change."
        );
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Sweep {
                journey: journey.into(),
                status,
                at,
                partitions,
                after: None,
                customers: 0,
            });
    }

    /// Whether any sweep is under way.
    pub fn pending(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// The next page of at most `limit` customers to settle, of a partition this replica owns
    /// (partitions it no longer owns are passed over: their new owner's customers are caught
    /// up at their next input).
    pub fn next_page(
        &self,
        store: &dyn Store,
        partitions: &Partitions,
        limit: usize,
    ) -> Result<Vec<Work>, journeyd_store::Error> {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(sweep) = queue.front_mut() {
            let Some(&p) = sweep.partitions.front() else {
                tracing::info!(
                    journey = %sweep.journey,
                    customers = sweep.customers,
                    "Swept every partition owned here for the status change."
                );
                queue.pop_front();
                continue;
            };
            if !partitions.owns(p) {
                sweep.partitions.pop_front();
                sweep.after = None;
                continue;
            }
            let page = store.customers_of(p, sweep.after.as_deref(), limit)?;
            if page.len() < limit {
                sweep.partitions.pop_front();
                sweep.after = None;
            } else {
                sweep.after = page.last().cloned();
            }
            if page.is_empty() {
                continue;
            }
            sweep.customers += page.len() as u64;
            let (at, status) = (sweep.at, sweep.status);
            return Ok(page
                .into_iter()
                .map(|customer| Work::Settle {
                    customer,
                    partition: p,
                    at,
                    journey: sweep.journey.clone(),
                    status,
                })
                .collect());
        }
        Ok(Vec::new())
    }
}
