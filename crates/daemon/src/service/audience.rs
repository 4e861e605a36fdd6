//! Audience runs (contract v2, one-to-many campaigns): at each run of an audience journey, every
//! customer of the partitions this replica owns is given the run, a page at a time between
//! live batches, in customer id order, through the same batch path as events and timers
//! ([`Work::Audience`]).
//!
//! Each partition's counts keep the time of the last run given to all its customers (see
//! `journeyd_engine::report::JourneyCounts::last_run`), written with the batch that gives the
//! run to its last customer, so they move with the partition. A replica gives a partition the
//! first run after that one that is due by its processing clock; a partition that never had
//! one gets the latest run due, not every run since the journey's first. A partition's run
//! waits, as its timers do, until its input has been read past the run's time. A run interrupted
//! (a crash, a partition moving) is given again from its start: the engine gives a run to a
//! customer once (a customer whose clock is past it has had it), and those it had not reached
//! get it. A customer whose next event comes before the scan reaches them is given the run by
//! that event, at the run's time, first (see the engine's `run_due`).
//!
//! Not covered: a partition's customers stored before the per-partition lists existed (they
//! are not listed), and the last run of a partition with no customer is not recorded (a later
//! restart gives it again, to nobody).

use super::Partitions;
use crate::processor::Work;
use journeyd_engine::report::Counts;
use journeyd_engine::Engine;
use journeyd_journey::Trigger;
use journeyd_store::{Millis, Store};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// One run of one partition under way.
#[derive(Debug, Clone)]
struct Run {
    journey: Arc<str>,
    at: Millis,
    partition: i32,
    /// The last customer given out.
    after: Option<String>,
}

/// The audience runs under way, and those given out in this process.
#[derive(Debug, Default)]
pub struct Runs {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Run>,
    /// `(journey, partition, at)` of every run queued in this process: not queued again
    /// while its last batch lands.
    given: BTreeSet<(Arc<str>, i32, Millis)>,
    /// When the partitions' last runs were last read (at most once a second).
    checked: Option<std::time::Instant>,
}

/// The time of the run of an audience journey (first at `at`, then every `every`) due last by
/// `now`, and the first after `after` (if any) that is due by `now`.
fn due_run(
    at: Millis,
    every: Option<Millis>,
    after: Option<Millis>,
    now: Millis,
) -> Option<Millis> {
    if at > now {
        return None;
    }
    let every = every.filter(|e| *e > 0);
    let latest = match every {
        Some(e) => at + (now - at) / e * e,
        None => at,
    };
    match after {
        None => Some(latest),
        Some(done) if done >= latest => None,
        Some(done) if done < at => Some(at),
        Some(done) => {
            let e = every?;
            // The first run after `done`.
            let next = at + ((done - at) / e + 1) * e;
            (next <= now).then_some(next)
        }
    }
}

impl Runs {
    /// Queues the runs due by `now` for the partitions this replica owns, reading each
    /// partition's last run from its stored counts (at most once a second). A partition's run
    /// waits until `read_past(partition, run)`: its input has been read past the run's time,
    /// as a timer waits (so the events before the run are in, as `journey simulate` has them).
    pub fn schedule(
        &self,
        engine: &Engine,
        store: &dyn Store,
        partitions: &Partitions,
        now: Millis,
        read_past: &dyn Fn(i32, Millis) -> bool,
    ) -> Result<(), journeyd_store::Error> {
        let journeys: Vec<(&str, Millis, Option<Millis>)> = engine
            .journeys()
            .iter()
            .filter_map(|j| match j.entry.trigger {
                Trigger::Audience { at, every } => Some((j.id.as_str(), at, every)),
                _ => None,
            })
            .collect();
        if journeys.is_empty() {
            return Ok(());
        }
        let owned = partitions.owned();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner
            .checked
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return Ok(());
        }
        inner.checked = Some(std::time::Instant::now());
        // A partition that went and came back is given its runs again.
        inner.given.retain(|(_, p, _)| owned.contains(p));
        for p in owned {
            let counts = match store.counts(p)? {
                Some(bytes) => Counts::from_bytes(&bytes).unwrap_or_default(),
                None => Counts::default(),
            };
            for &(id, at, every) in &journeys {
                let done = counts.journeys.get(id).and_then(|c| c.last_run);
                let Some(run) = due_run(at, every, done, now) else {
                    continue;
                };
                if !read_past(p, run) {
                    continue;
                }
                let key: (Arc<str>, i32, Millis) = (id.into(), p, run);
                if inner.given.contains(&key) {
                    continue;
                }
                tracing::info!(journey = id, partition = p, run = %journeyd_types::time::format_rfc3339(run), "Giving an audience run to the customers of a partition.");
                inner.given.insert(key.clone());
                inner.queue.push_back(Run {
                    journey: key.0,
                    at: run,
                    partition: p,
                    after: None,
                });
            }
        }
        Ok(())
    }

    /// Forgets the runs under way and given out (a transaction aborted: the batches since the
    /// last commit went): they are given again from their start.
    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.queue.clear();
        inner.given.clear();
        inner.checked = None;
    }

    /// Whether any run is under way.
    pub fn pending(&self) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .is_empty()
    }

    /// The next page of at most `limit` customers to give a run, of a partition this replica
    /// owns (a partition it no longer owns is left to its new owner). The last customer of a
    /// partition's run says so.
    pub fn next_page(
        &self,
        store: &dyn Store,
        partitions: &Partitions,
        limit: usize,
    ) -> Result<Vec<Work>, journeyd_store::Error> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(front) = inner.queue.front() {
            let (journey, at, partition) = (front.journey.clone(), front.at, front.partition);
            let after = front.after.clone();
            if !partitions.owns(partition) {
                inner.queue.pop_front();
                inner.given.remove(&(journey, partition, at));
                continue;
            }
            // One more than a page: whether the page is the partition's last.
            let mut page = store.customers_of(partition, after.as_deref(), limit + 1)?;
            let last = page.len() <= limit;
            page.truncate(limit);
            if last {
                inner.queue.pop_front();
            } else if let Some(front) = inner.queue.front_mut() {
                front.after = page.last().cloned();
            }
            if page.is_empty() {
                continue;
            }
            let n = page.len();
            return Ok(page
                .into_iter()
                .enumerate()
                .map(|(i, customer)| Work::Audience {
                    customer,
                    partition,
                    at,
                    journey: journey.clone(),
                    last: last && i + 1 == n,
                })
                .collect());
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_due_is_the_latest_or_the_first_after_the_last_given() {
        let d = 100;
        // Before the first run, none; once, the first.
        assert_eq!(due_run(1000, Some(d), None, 999), None);
        assert_eq!(due_run(1000, None, None, 5000), Some(1000));
        assert_eq!(due_run(1000, None, Some(1000), 5000), None);
        // Never given here: the latest due, not every run since the first.
        assert_eq!(due_run(1000, Some(d), None, 1350), Some(1300));
        // Given up to one: the next, each in turn, until the latest.
        assert_eq!(due_run(1000, Some(d), Some(1100), 1350), Some(1200));
        assert_eq!(due_run(1000, Some(d), Some(1200), 1350), Some(1300));
        assert_eq!(due_run(1000, Some(d), Some(1300), 1350), None);
        assert_eq!(due_run(1000, Some(d), Some(1300), 1400), Some(1400));
        // A run given before the journey's first (an earlier version's): the first.
        assert_eq!(due_run(1000, Some(d), Some(500), 1050), Some(1000));
    }
}
