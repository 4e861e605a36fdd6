//! Events a restored partition already holds. A customer's changelog record can be in Kafka
//! while the position after its batch is not (the replica stopped between the two), so after
//! a restore some events after the position are in the restored states already: they are
//! skipped when they are read again, once, and forgotten when reading passes them.

use crate::processor::Position;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Per customer: for each input topic, the offset of their last event the state holds.
pub type Applied = HashMap<String, Vec<(String, i64)>>;

/// The guards of every restored partition that still has some.
#[derive(Debug, Default)]
pub struct Guards {
    any: AtomicBool,
    by_partition: Mutex<BTreeMap<i32, PartitionGuards>>,
}

/// One partition's guards.
#[derive(Debug, Default)]
struct PartitionGuards {
    applied: Applied,
    /// The changelog offset of the first record behind them: the local checkpoint of the
    /// partition stays at most there while they last, so that a restart finds them again.
    floor: Option<i64>,
}

impl Guards {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionGuards>> {
        self.by_partition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the guards of a partition just restored (replacing any it had), and the
    /// changelog offset of the first record behind them.
    pub fn set(&self, partition: i32, applied: Applied, floor: Option<i64>) {
        let mut m = self.lock();
        if applied.is_empty() {
            m.remove(&partition);
        } else {
            m.insert(partition, PartitionGuards { applied, floor });
        }
        self.any.store(!m.is_empty(), Ordering::SeqCst);
    }

    /// The highest changelog checkpoint partition `partition` may store while its guards
    /// last.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.lock().get(&partition).and_then(|g| g.floor)
    }

    /// Forgets a partition's guards (it was revoked).
    pub fn forget(&self, partition: i32) {
        let mut m = self.lock();
        m.remove(&partition);
        self.any.store(!m.is_empty(), Ordering::SeqCst);
    }

    /// Whether the event of `customer` read at `topic`/`partition`/`offset` is in the restored
    /// state already.
    pub fn applied(&self, customer: &str, topic: &str, partition: i32, offset: i64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        self.lock()
            .get(&partition)
            .and_then(|g| g.applied.get(customer))
            .is_some_and(|topics| topics.iter().any(|(t, o)| t == topic && offset <= *o))
    }

    /// Forgets the guards that reading has passed.
    pub fn passed(&self, consumed: &[Position]) {
        if !self.any.load(Ordering::Relaxed) || consumed.is_empty() {
            return;
        }
        let mut read: BTreeMap<(i32, &str), i64> = BTreeMap::new();
        for p in consumed {
            let e = read
                .entry((p.partition, p.topic.as_str()))
                .or_insert(p.offset);
            *e = (*e).max(p.offset);
        }
        let mut m = self.lock();
        for (partition, g) in m.iter_mut() {
            g.applied.retain(|_, topics| {
                topics.retain(|(t, o)| {
                    read.get(&(*partition, t.as_str()))
                        .is_none_or(|last| last < o)
                });
                !topics.is_empty()
            });
        }
        m.retain(|_, g| !g.applied.is_empty());
        self.any.store(!m.is_empty(), Ordering::SeqCst);
    }

    /// Whether no customer has a guard.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Position {
        Position {
            topic: topic.into(),
            partition,
            offset,
        }
    }

    #[test]
    fn an_event_the_state_holds_is_skipped_until_reading_passes_it() {
        let g = Guards::default();
        assert!(!g.applied("c1", "t", 0, 5));
        g.set(
            0,
            Applied::from([("c1".into(), vec![("t".into(), 7), ("u".into(), 2)])]),
            Some(40),
        );
        assert_eq!(g.floor(0), Some(40));
        assert_eq!(g.floor(1), None);
        assert!(g.applied("c1", "t", 0, 5));
        assert!(g.applied("c1", "t", 0, 7));
        assert!(!g.applied("c1", "t", 0, 8), "a later event is new");
        assert!(!g.applied("c1", "t", 1, 5), "another partition");
        assert!(!g.applied("c2", "t", 0, 5), "another customer");
        assert!(g.applied("c1", "u", 0, 2));
        g.passed(&[at("t", 0, 7)]);
        assert!(!g.applied("c1", "t", 0, 7), "passed: forgotten");
        assert!(g.applied("c1", "u", 0, 2), "not passed in u");
        g.passed(&[at("u", 1, 9)]);
        assert!(!g.is_empty(), "another partition's reading passes nothing");
        g.passed(&[at("u", 0, 3)]);
        assert!(g.is_empty());
        assert_eq!(g.floor(0), None, "the floor goes with the last guard");
        g.set(
            3,
            Applied::from([("c".into(), vec![("t".into(), 1)])]),
            None,
        );
        g.forget(3);
        assert!(g.is_empty());
    }
}
