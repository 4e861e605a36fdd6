//! Reading through the writes not yet in the store: a batch runs while the batches before it
//! are acknowledged and written, reading the customers' states and the due timers as they will
//! be once those writes land ([`Unwritten`]); and the due timers of the next batch read beside
//! the current one, patched with its write ([`Prefetched`]).

use crate::processor::Work;
use journeyd_store::{DueTimer, Store, WriteSet};
use journeyd_types::Millis;
use std::sync::Arc;

/// A hash map keyed by customer ids and timer entries of one batch. foldhash (hashbrown's
/// default hasher, seeded per process) instead of std's SipHash: hashing these keys took a
/// tenth of the time to fire a batch of timers.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The writes of batches whose actions are out but which are not in the store yet, oldest
/// first. A batch reads through them, so it can run while the batches before it are written.
#[derive(Debug, Clone, Default)]
pub struct Unwritten(Vec<Arc<WriteSet>>);

impl Unwritten {
    /// Nothing unwritten: reads go to the store alone.
    pub fn none() -> Unwritten {
        Unwritten::default()
    }

    /// Adds the write of the newest batch.
    pub fn push(&mut self, write: Arc<WriteSet>) {
        self.0.push(write);
    }

    /// Forgets the oldest write (it is in the store now).
    pub fn pop_oldest(&mut self) -> Option<Arc<WriteSet>> {
        (!self.0.is_empty()).then(|| self.0.remove(0))
    }

    /// The customers' states as they are after every unwritten write, in the order of `ids`.
    pub fn customers(
        &self,
        store: &dyn Store,
        ids: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, journeyd_store::Error> {
        if self.0.is_empty() {
            return store.customers(ids);
        }
        // The last operation on each customer, newest write last.
        let mut last: Map<&str, Option<&Vec<u8>>> = Map::default();
        for w in &self.0 {
            for (id, state) in &w.customers {
                last.insert(id.as_str(), state.as_ref());
            }
        }
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !last.contains_key(id))
            .collect();
        let mut stored = store.customers(&missing)?.into_iter();
        Ok(ids
            .iter()
            .map(|id| match last.get(id) {
                Some(state) => state.cloned(),
                None => stored.next().flatten(),
            })
            .collect())
    }

    /// A partition's counts (see [`WriteSet::counts`]) as they are after every unwritten write.
    pub fn counts(
        &self,
        store: &dyn Store,
        partition: i32,
    ) -> Result<Option<Vec<u8>>, journeyd_store::Error> {
        let newest = self.0.iter().rev().find_map(|w| {
            w.counts
                .iter()
                .rev()
                .find(|(p, _)| *p == partition)
                .map(|(_, c)| c.clone())
        });
        match newest {
            Some(c) => Ok(Some(c)),
            None => store.counts(partition),
        }
    }

    /// [`Store::due_timers_in`] as it reads after every unwritten write: without the entries
    /// they clear, with the due entries they set.
    pub fn due_timers_in(
        &self,
        store: &dyn Store,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<DueTimer>, journeyd_store::Error> {
        if self.0.is_empty() {
            return store.due_timers_in(up_to, limit, owned);
        }
        let touched = Touched::of(self.0.iter().map(|w| &**w));
        // The store leaves them out; they come from the writes alone (a set may change the
        // owner).
        let skip: Vec<Entry> = touched.0.iter().map(|t| t.0).collect();
        let due = store.due_timers_in_except(up_to, limit, owned, &skip)?;
        Ok(touched.add_sets(due, up_to, limit, owned).0)
    }
}

/// A timer index entry: due time and customer.
type Entry<'a> = (Millis, &'a str);

/// What a write does to an entry: `None` clears it, `Some(partition)` sets it.
type TimerOp = Option<Option<i32>>;

/// Every timer entry some writes touch, with its last operation, sorted, one per entry.
struct Touched<'a>(Vec<(Entry<'a>, TimerOp)>);

impl<'a> Touched<'a> {
    /// The entries `writes` touch, oldest write first (within a write, sets come after clears).
    fn of(writes: impl IntoIterator<Item = &'a WriteSet>) -> Touched<'a> {
        let mut ops: Vec<(Entry, TimerOp)> = Vec::new();
        for w in writes {
            let owner: Map<&str, i32> = w.timer_owners();
            ops.reserve(w.clear_timers.len() + w.set_timers.len());
            for (due, c) in &w.clear_timers {
                ops.push(((*due, c.as_str()), None));
            }
            for (due, c) in &w.set_timers {
                ops.push(((*due, c.as_str()), Some(owner.get(c.as_str()).copied())));
            }
        }
        // Stable: an entry's operations stay in the order they were made, so the last is the
        // newest. (The operations come in a few sorted runs, the fired entries first, which a
        // stable sort merges; sorting them by position too took a twentieth of the CPU time of
        // firing timers.)
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last: Vec<(Entry, TimerOp)> = Vec::with_capacity(ops.len());
        for (entry, op) in ops {
            match last.last_mut() {
                Some(newest) if newest.0 == entry => newest.1 = op,
                _ => last.push((entry, op)),
            }
        }
        Touched(last)
    }

    /// Whether the writes touch the entry.
    fn contains(&self, due: Millis, customer: &str) -> bool {
        self.0
            .binary_search_by(|(entry, _)| entry.cmp(&(due, customer)))
            .is_ok()
    }

    /// `due` (timers the writes do not touch) with the entries the writes set that are due by
    /// `up_to` and owned, in order, at most `limit`; and whether there were more.
    fn add_sets(
        self,
        mut due: Vec<DueTimer>,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> (Vec<DueTimer>, bool) {
        for ((at, customer), op) in self.0 {
            if let Some(partition) = op {
                if at <= up_to && partition.is_none_or(owned) {
                    due.push(DueTimer {
                        due: at,
                        customer: customer.to_owned(),
                        partition,
                    });
                }
            }
        }
        due.sort_by(|a, b| (a.due, &a.customer).cmp(&(b.due, &b.customer)));
        let more = due.len() > limit;
        due.truncate(limit);
        (due, more)
    }
}

/// The due timers of the next batch, and their customers' states, read while the current batch
/// runs: through the unwritten writes and the entries the current batch fires (which its write
/// will clear), then patched with that write once it is known ([`Prefetched::patch`]).
///
/// Why the states too: reading them (a `multi_get` of thousands of customers) was a fifth of
/// the processing of a batch of fired timers, on the loop's critical path; beside the batch
/// before, it takes a core that is otherwise partly idle.
#[derive(Debug, Clone)]
pub struct Prefetched {
    /// What the read found.
    pub due: Vec<DueTimer>,
    /// The states of the customers of `due`, once each, as the unwritten writes leave them
    /// (`None`: no state).
    pub states: Vec<(String, Option<Vec<u8>>)>,
    /// The bound it read up to.
    pub up_to: Millis,
    /// The most it read.
    pub limit: usize,
}

/// What a [`Prefetched`] read gives once patched with the write of the batch it ran beside.
#[derive(Debug, Clone)]
pub struct Patched {
    /// Due timers: every one due and in the index through the unwritten writes, in order.
    pub due: Vec<DueTimer>,
    /// More may be due than `due` holds.
    pub more: bool,
    /// The states read, as they are after that write: a write of them, to read through after
    /// the unwritten writes ([`Unwritten::with_states`]) so that they are not read again.
    pub states: WriteSet,
}

impl Unwritten {
    /// These unwritten writes and, after them, a write that clears `fired`: what the index
    /// holds, as far as it is known, while the batch that fires them runs.
    pub fn with_fired(&self, fired: &[Work]) -> Unwritten {
        let mut next = self.clone();
        let clear_timers = fired
            .iter()
            .filter_map(|w| match w {
                Work::Timer { due, customer, .. } => Some((*due, customer.clone())),
                Work::Event { .. } | Work::Settle { .. } | Work::Audience { .. } => None,
            })
            .collect();
        next.push(Arc::new(WriteSet {
            clear_timers,
            ..WriteSet::default()
        }));
        next
    }

    /// These unwritten writes and, after them, `states`: states known to be current (see
    /// [`Patched::states`]), read through instead of the store. For reading only: it is not
    /// a write to make.
    pub fn with_states(&self, states: WriteSet) -> Unwritten {
        let mut next = self.clone();
        if !states.customers.is_empty() {
            next.push(Arc::new(states));
        }
        next
    }
}

impl Prefetched {
    /// Reads through `unwritten` (see [`Unwritten::with_fired`]).
    pub fn read(
        unwritten: &Unwritten,
        store: &dyn Store,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Prefetched, journeyd_store::Error> {
        let due = unwritten.due_timers_in(store, up_to, limit, owned)?;
        let mut seen: Map<&str, ()> = Map::default();
        let ids: Vec<&str> = due
            .iter()
            .map(|t| t.customer.as_str())
            .filter(|id| seen.insert(id, ()).is_none())
            .collect();
        let read = unwritten.customers(store, &ids)?;
        let states = ids.iter().map(|id| (*id).to_owned()).zip(read).collect();
        Ok(Prefetched {
            due,
            states,
            up_to,
            limit,
        })
    }

    /// The read as it stands after `write`, the write of the batch that was running: without
    /// the entries it clears or sets, with the due entries it sets. Every timer returned is
    /// due and in the index through the unwritten writes, in order, at most `limit`. Where
    /// `write` touched what was read, it may return fewer than a read now would, or pass over
    /// a stored entry due before one `write` sets (both fire within the next reads: every
    /// entry returned is due, and none is lost, only taken in a later batch).
    ///
    /// Also says whether more may be due than it returns: the read came back full, or the
    /// patch had more than `limit`.
    ///
    /// The states read become what they are after `write` (its last operation on a customer
    /// read replaces what was read).
    pub fn patch(self, write: &WriteSet, owned: &dyn Fn(i32) -> bool) -> Patched {
        let full = self.due.len() >= self.limit;
        let touched = Touched::of([write]);
        let due: Vec<DueTimer> = self
            .due
            .into_iter()
            .filter(|t| !touched.contains(t.due, &t.customer))
            .collect();
        let (due, more) = touched.add_sets(due, self.up_to, self.limit, owned);
        let mut customers = self.states;
        if !write.customers.is_empty() {
            // The write's last operation on each customer.
            let last: Map<&str, &Option<Vec<u8>>> = write
                .customers
                .iter()
                .map(|(id, state)| (id.as_str(), state))
                .collect();
            for (id, state) in &mut customers {
                if let Some(after) = last.get(id.as_str()) {
                    state.clone_from(after);
                }
            }
        }
        Patched {
            due,
            more: full || more,
            states: WriteSet {
                customers,
                ..WriteSet::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_store::MemoryStore;

    /// A tiny deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_write(rng: &mut Rng) -> WriteSet {
        let mut w = WriteSet::default();
        for _ in 0..rng.below(12) {
            let id = format!("c{}", rng.below(10));
            let state = (rng.below(4) > 0).then(|| vec![rng.below(256) as u8; 3]);
            w.customers.push((id, state));
        }
        for _ in 0..rng.below(12) {
            w.clear_timers
                .push((rng.below(8) as Millis, format!("c{}", rng.below(10))));
        }
        for _ in 0..rng.below(12) {
            let id = format!("c{}", rng.below(10));
            w.set_timers.push((rng.below(8) as Millis, id.clone()));
            if rng.below(3) > 0 {
                w.timer_partitions.push((id, rng.below(3) as i32));
            }
        }
        w
    }

    #[test]
    fn reads_through_unwritten_writes_are_the_reads_after_writing_them() {
        let ids: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let owned = |p: i32| p != 1;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let store = MemoryStore::new();
            for _ in 0..rng.below(3) {
                store.write(&random_write(&mut rng)).unwrap();
            }
            let mut unwritten = Unwritten::none();
            let writes: Vec<Arc<WriteSet>> = (0..1 + rng.below(3))
                .map(|_| Arc::new(random_write(&mut rng)))
                .collect();
            for w in &writes {
                unwritten.push(w.clone());
            }
            let up_to = rng.below(9) as Millis;
            let limit = 1 + rng.below(10) as usize;
            let customers = unwritten.customers(&store, &ids).unwrap();
            let timers = unwritten
                .due_timers_in(&store, up_to, limit, &owned)
                .unwrap();
            for w in &writes {
                store.write(w).unwrap();
            }
            assert_eq!(customers, store.customers(&ids).unwrap(), "round {round}");
            assert_eq!(
                timers,
                store.due_timers_in(up_to, limit, &owned).unwrap(),
                "round {round}"
            );
        }
    }

    #[test]
    fn due_timers_read_beside_a_batch_and_patched_with_its_write_are_due_timers_and_their_states_current(
    ) {
        let owned = |p: i32| p != 1;
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut exact = 0;
        for round in 0..500 {
            let store = MemoryStore::new();
            let store_writes: Vec<WriteSet> = (0..1 + rng.below(3))
                .map(|_| random_write(&mut rng))
                .collect();
            for w in &store_writes {
                store.write(w).unwrap();
            }
            let mut unwritten = Unwritten::none();
            for _ in 0..rng.below(3) {
                unwritten.push(Arc::new(random_write(&mut rng)));
            }
            let up_to = rng.below(9) as Millis;
            let limit = 1 + rng.below(6) as usize;
            // The running batch fires the first due entries, and its write clears them (as
            // run_batch's does), then changes a few more, or none.
            let fired: Vec<Work> = unwritten
                .due_timers_in(&store, up_to, rng.below(4) as usize, &owned)
                .unwrap()
                .into_iter()
                .map(|t| Work::Timer {
                    due: t.due,
                    customer: t.customer,
                    partition: t.partition,
                })
                .collect();
            let mut write = if rng.below(2) == 0 {
                random_write(&mut rng)
            } else {
                WriteSet::default()
            };
            for w in &fired {
                if let Work::Timer { due, customer, .. } = w {
                    write.clear_timers.push((*due, customer.clone()));
                }
            }
            let prefetched =
                Prefetched::read(&unwritten.with_fired(&fired), &store, up_to, limit, &owned)
                    .unwrap();
            // The write changed nothing read, and set nothing due: then the patch is exact.
            let untouched = !write
                .clear_timers
                .iter()
                .chain(&write.set_timers)
                .any(|(d, c)| {
                    prefetched
                        .due
                        .iter()
                        .any(|t| t.due == *d && &t.customer == c)
                })
                && write.set_timers.iter().all(|(d, _)| *d > up_to);
            let read_full = prefetched.due.len() >= limit;
            let read_customers: Vec<String> =
                prefetched.due.iter().map(|t| t.customer.clone()).collect();
            let Patched {
                due: got,
                more,
                states,
            } = prefetched.patch(&write, &owned);
            unwritten.push(Arc::new(write));
            // The states read come out as a read after the write gives them, once each, for
            // every customer of the timers read.
            let (state_ids, state_values): (Vec<&str>, Vec<Option<Vec<u8>>>) = states
                .customers
                .iter()
                .map(|(id, v)| (id.as_str(), v.clone()))
                .unzip();
            assert_eq!(
                state_values,
                unwritten.customers(&store, &state_ids).unwrap(),
                "round {round}"
            );
            let mut once = state_ids.clone();
            once.sort_unstable();
            once.dedup();
            assert_eq!(once.len(), state_ids.len(), "round {round}: {state_ids:?}");
            assert!(
                read_customers
                    .iter()
                    .all(|c| state_ids.contains(&c.as_str())),
                "round {round}"
            );
            // Read through, they are what the store gives once every write is in.
            let through = unwritten.with_states(states.clone());
            let all_ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
            let all_ids: Vec<&str> = all_ids.iter().map(String::as_str).collect();
            let through_read = through.customers(&store, &all_ids).unwrap();
            let after = MemoryStore::new();
            for w in &store_writes {
                after.write(w).unwrap();
            }
            let mut flat = unwritten.clone();
            while let Some(w) = flat.pop_oldest() {
                after.write(&w).unwrap();
            }
            assert_eq!(
                through_read,
                after.customers(&all_ids).unwrap(),
                "round {round}"
            );
            let all = unwritten
                .due_timers_in(&store, up_to, usize::MAX / 2, &owned)
                .unwrap();
            assert!(got.len() <= limit, "round {round}");
            if read_full {
                assert!(more, "round {round}: a full read says more may be due");
            } else {
                // The read saw every due entry: patched, it is the whole truth, cut to the
                // limit, and it says whether it was cut.
                let want: Vec<_> = all.iter().take(limit).cloned().collect();
                assert_eq!(got, want, "round {round}");
                assert_eq!(more, all.len() > limit, "round {round}");
            }
            assert!(
                got.windows(2)
                    .all(|w| (w[0].due, &w[0].customer) < (w[1].due, &w[1].customer)),
                "round {round}: in order, once each: {got:?}"
            );
            for t in &got {
                assert!(all.contains(t), "round {round}: {t:?} is not due: {all:?}");
            }
            if untouched {
                let want: Vec<_> = all.iter().take(limit).cloned().collect();
                assert_eq!(got, want, "round {round}");
                exact += 1;
            }
        }
        assert!(
            exact > 100,
            "enough rounds check the exact case: {exact} of 500"
        );
    }

    #[test]
    fn an_entry_moved_to_another_partition_does_not_hide_the_next_stored_one() {
        let store = MemoryStore::new();
        let t = |due: Millis, c: &str| (due, c.to_owned());
        store
            .write(&WriteSet {
                set_timers: vec![t(1, "a"), t(2, "b"), t(3, "c")],
                timer_partitions: vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 0)],
                owners: vec![],
                ..WriteSet::default()
            })
            .unwrap();
        let mut unwritten = Unwritten::none();
        // Not yet written: a's entry moves to partition 1 (not owned here), d gets one at 4.
        unwritten.push(Arc::new(WriteSet {
            set_timers: vec![t(1, "a"), t(4, "d")],
            timer_partitions: vec![("a".into(), 1), ("d".into(), 0)],
            owners: vec![],
            ..WriteSet::default()
        }));
        let owned = |p: i32| p == 0;
        let due = unwritten.due_timers_in(&store, 10, 2, &owned).unwrap();
        let got: Vec<(Millis, &str)> = due.iter().map(|d| (d.due, d.customer.as_str())).collect();
        assert_eq!(got, vec![(2, "b"), (3, "c")]);
    }
}
