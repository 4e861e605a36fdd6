//! An in-memory [`Store`]: ordered maps behind one mutex.
//!
//! The reference implementation of the crate's invariants: every map is keyed so that its
//! natural order is the order the trait promises, and every write validates its input before
//! changing anything, which makes it atomic under the mutex.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{check_journeys, DueTimer, Error, Millis, Offset, Store, StoredJourney, WriteSet};

/// A [`Store`] kept in memory, for tests and simulations; lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    customers: BTreeMap<String, Vec<u8>>,
    /// Timer entries and the partition that owns each (None: every partition).
    timers: BTreeMap<(Millis, String), Option<i32>>,
    offsets: BTreeMap<(String, i32), i64>,
    journeys: BTreeMap<(String, u32), StoredJourney>,
    history: BTreeMap<String, std::collections::VecDeque<Vec<u8>>>,
    /// The customers of each input partition.
    owners: std::collections::BTreeSet<(i32, String)>,
    counts: std::collections::BTreeMap<i32, Vec<u8>>,
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Why ignoring poison is sound: writes validate first and then only insert and remove,
        // so a panic elsewhere while the lock was held cannot have left a half-applied write.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn customer(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().customers.get(id).cloned())
    }

    fn customers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .map(|id| inner.customers.get(*id).cloned())
            .collect())
    }

    fn due_timers_in(
        &self,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<DueTimer>, Error> {
        let inner = self.lock();
        Ok(inner
            .timers
            .iter()
            .take_while(|((due, _), _)| *due <= up_to)
            .filter(|(_, partition)| partition.is_none_or(owned))
            .take(limit)
            .map(|((due, customer), partition)| DueTimer {
                due: *due,
                customer: customer.clone(),
                partition: *partition,
            })
            .collect())
    }

    fn next_timer(&self) -> Result<Option<(Millis, String)>, Error> {
        Ok(self.lock().timers.keys().next().cloned())
    }

    fn pending_timers(&self) -> u64 {
        self.lock().timers.len() as u64
    }

    fn offsets(&self) -> Result<Vec<Offset>, Error> {
        Ok(self
            .lock()
            .offsets
            .iter()
            .map(|((topic, partition), next)| Offset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect())
    }

    fn journeys(&self) -> Result<Vec<StoredJourney>, Error> {
        Ok(self.lock().journeys.values().cloned().collect())
    }

    fn put_journeys(&self, journeys: &[StoredJourney]) -> Result<(), Error> {
        check_journeys(journeys)?;
        let mut inner = self.lock();
        for j in journeys {
            inner.journeys.insert((j.id.clone(), j.version), j.clone());
        }
        Ok(())
    }

    fn write(&self, set: &WriteSet) -> Result<(), Error> {
        set.validate()?;
        let mut inner = self.lock();
        // Only a customer not stored before is listed under its partition.
        let new: std::collections::HashSet<&str> = set
            .owners
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !inner.customers.contains_key(*id))
            .collect();
        for (id, value) in &set.customers {
            match value {
                Some(bytes) => {
                    inner.customers.insert(id.clone(), bytes.clone());
                }
                None => {
                    inner.customers.remove(id);
                }
            }
        }
        for (id, value) in &set.customers {
            if value.is_none() {
                inner.history.remove(id);
            }
        }
        for (id, partition) in &set.owners {
            // The customer's last operation in this write decides.
            match set.customers.iter().rev().find(|(c, _)| c == id) {
                Some((_, Some(_))) if new.contains(id.as_str()) => {
                    inner.owners.insert((*partition, id.clone()));
                }
                Some((_, None)) => {
                    inner.owners.remove(&(*partition, id.clone()));
                }
                _ => {}
            }
        }
        for (partition, counts) in &set.counts {
            inner.counts.insert(*partition, counts.clone());
        }
        for (id, entry) in &set.history {
            inner
                .history
                .entry(id.clone())
                .or_default()
                .push_back(entry.clone());
        }
        for (id, _) in &set.history {
            if let Some(h) = inner.history.get_mut(id) {
                while h.len() > set.history_limit {
                    h.pop_front();
                }
            }
        }
        for entry in &set.clear_timers {
            inner.timers.remove(entry);
        }
        let owners: std::collections::HashMap<&str, i32> = set.timer_owners();
        for entry in &set.set_timers {
            let partition = owners.get(entry.1.as_str()).copied();
            inner.timers.insert(entry.clone(), partition);
        }
        for o in &set.offsets {
            inner.offsets.insert((o.topic.clone(), o.partition), o.next);
        }
        Ok(())
    }

    fn counts(&self, partition: i32) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().counts.get(&partition).cloned())
    }

    fn history(&self, id: &str) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self
            .lock()
            .history
            .get(id)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn size_bytes(&self) -> u64 {
        // Sized like the RocksDB keys and values: a table prefix, fixed-width integers.
        let inner = self.lock();
        let customers: usize = inner
            .customers
            .iter()
            .map(|(k, v)| 1 + k.len() + v.len())
            .sum();
        let timers: usize = inner.timers.keys().map(|(_, c)| 1 + 8 + c.len()).sum();
        let offsets: usize = inner
            .offsets
            .keys()
            .map(|(t, _)| 1 + 2 + t.len() + 4 + 8)
            .sum();
        let journeys: usize = inner
            .journeys
            .values()
            .map(|j| 2 + j.id.len() + 4 + j.id.len() + 4 + 8 + j.file.len() + j.source.len() + 8)
            .sum();
        let history: usize = inner
            .history
            .iter()
            .map(|(k, h)| 1 + k.len() + h.iter().map(|e| 4 + e.len()).sum::<usize>())
            .sum();
        (customers + timers + offsets + journeys + history) as u64
    }

    fn customers_of(
        &self,
        partition: i32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        use std::ops::Bound;
        let inner = self.lock();
        let from = match after {
            Some(a) => Bound::Excluded((partition, a.to_owned())),
            None => Bound::Included((partition, String::new())),
        };
        Ok(inner
            .owners
            .range((from, Bound::Unbounded))
            .take_while(|(p, _)| *p == partition)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    fn customer_count(&self) -> u64 {
        self.lock().customers.len() as u64
    }
}
