//! One batch through the engine: load the customers' states, run every input (events in
//! offset order, then fired timers), and gather what must happen next: the actions to produce,
//! and one atomic write (states, timer index changes, consumed offsets) to make after Kafka has
//! acknowledged those actions.
//!
//! Nothing here writes: running the same batch again from the same stored states gives the same
//! actions (ids and content) and the same write. That is what makes a crash anywhere safe.

use journeyd_engine::{append_history, CustomerState, Engine, Input, Record, Suppression, What};
use journeyd_store::{DueTimer, Offset, Store, WriteSet};
use journeyd_types::{Action, Event, Millis};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A hash map keyed by customer ids and timer entries of one batch. foldhash (hashbrown's
/// default hasher, seeded per process) instead of std's SipHash: hashing these keys took a
/// tenth of the time to fire a batch of timers.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
                Work::Event { .. } => None,
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

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// One unit of work.
#[derive(Debug, Clone)]
pub enum Work {
    /// A decoded event, processed at its `occurred_at`.
    Event {
        /// The event.
        event: Event,
        /// The input partition it came from: it owns the customer's timers from now on.
        partition: i32,
    },
    /// A due entry of the timer index.
    Timer {
        /// When it fell due.
        due: Millis,
        /// The customer.
        customer: String,
        /// The partition that owns the entry, if it was set with one.
        partition: Option<i32>,
    },
}

/// Counts for metrics, applied once the batch is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Entries per journey.
    pub entries: BTreeMap<String, u64>,
    /// Steps run per journey.
    pub steps: BTreeMap<String, u64>,
    /// Instance ends per (journey, reason).
    pub exits: BTreeMap<(String, &'static str), u64>,
    /// Conversions per journey.
    pub conversions: BTreeMap<String, u64>,
    /// Suppressed sends per reason.
    pub suppressions: BTreeMap<&'static str, u64>,
    /// Expressions that failed to evaluate, per journey.
    pub expression_failures: BTreeMap<String, u64>,
    /// Stored states that could not be read (the customer started afresh).
    pub corrupt_states: u64,
}

/// What a batch produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Actions to produce, in order.
    pub actions: Vec<Action>,
    /// The write to make once the actions are acknowledged.
    pub write: WriteSet,
    /// Counts for metrics.
    pub tally: Tally,
}

fn ending_name(e: &journeyd_engine::Ending) -> &'static str {
    use journeyd_engine::Ending::*;
    match e {
        Finished => "finished",
        ExitStep => "exit_step",
        ExitOn(_) => "exit_on",
        StepLimit => "step_limit",
        VersionGone => "version_gone",
    }
}

fn count(tally: &mut Tally, state: &CustomerState, r: &Record) {
    let journey = || {
        r.j.and_then(|j| state.journeys.get(j as usize))
            .map_or_else(String::new, |m| m.id.clone())
    };
    match &r.what {
        What::Entered { .. } => *tally.entries.entry(journey()).or_default() += 1,
        What::Step => *tally.steps.entry(journey()).or_default() += 1,
        What::Ended(e) => *tally.exits.entry((journey(), ending_name(e))).or_default() += 1,
        What::Converted => *tally.conversions.entry(journey()).or_default() += 1,
        What::Suppressed(s) => {
            let reason = match s {
                Suppression::FrequencyCap => "frequency_cap",
                Suppression::NoConsent => "no_consent",
            };
            *tally.suppressions.entry(reason).or_default() += 1;
        }
        What::ExprFailed { .. } => *tally.expression_failures.entry(journey()).or_default() += 1,
        _ => {}
    }
}

/// One customer of a batch, while it runs.
struct Slot<'a> {
    id: &'a str,
    /// The input partition that owns the customer's timers, if the batch names one.
    owner: Option<i32>,
    /// Whether the state was stored before the batch.
    existed: bool,
    state: CustomerState,
    /// The state's wake time as read.
    original: Option<Millis>,
    /// The history records of this batch.
    history: Vec<Record>,
    /// The due times of the timer entries fired for the customer in this batch.
    fired: Vec<Millis>,
}

impl<'a> Slot<'a> {
    fn new(id: &'a str) -> Slot<'a> {
        Slot {
            id,
            owner: None,
            existed: false,
            state: CustomerState::default(),
            original: None,
            history: Vec::new(),
            fired: Vec::new(),
        }
    }
}

/// Runs a batch over the stored states as `unwritten` changes them. `consumed` lists every
/// message the batch covers, including those sent to the dead-letter topic, so their offsets
/// are recorded too.
pub fn run_batch(
    engine: &Engine,
    store: &dyn Store,
    unwritten: &Unwritten,
    work: &[Work],
    consumed: &[Position],
) -> Result<Output, journeyd_store::Error> {
    // One slot per customer, in order of first appearance.
    let mut index: Map<&str, usize> = Map::default();
    let mut slots: Vec<Slot> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(work.len());
    for w in work {
        let (id, partition) = match w {
            Work::Event { event, partition } => (event.customer_id.as_str(), Some(*partition)),
            Work::Timer {
                customer,
                partition,
                ..
            } => (customer.as_str(), *partition),
        };
        let i = *index.entry(id).or_insert_with(|| {
            slots.push(Slot::new(id));
            slots.len() - 1
        });
        order.push(i);
        // The partition that owns the customer's timers: the last event's, else the fired
        // entry's.
        let slot = &mut slots[i];
        match (w, partition) {
            (Work::Event { .. }, Some(p)) => slot.owner = Some(p),
            (Work::Timer { .. }, Some(p)) => {
                slot.owner.get_or_insert(p);
            }
            _ => {}
        }
    }
    let ids: Vec<&str> = slots.iter().map(|s| s.id).collect();
    let stored = unwritten.customers(store, &ids)?;
    let mut out = Output::default();
    let limit = engine.settings().history_limit;
    for (slot, bytes) in slots.iter_mut().zip(stored) {
        slot.existed = bytes.is_some();
        slot.state = match bytes.as_deref().map(CustomerState::decode) {
            None => CustomerState::default(),
            Some(Ok((s, old_history))) => {
                // The history records a state of the old format carried inside move to the
                // history store, before this batch's.
                slot.history = old_history;
                s
            }
            Some(Err(error)) => {
                tracing::error!(customer = slot.id, %error, "Stored customer state is unreadable; the customer starts afresh.");
                out.tally.corrupt_states += 1;
                CustomerState::default()
            }
        };
        slot.original = slot.state.wake;
    }
    // Whether each entry of `clear_timers` is known to be in the index (see `WriteSet`).
    let mut clear_known: Vec<Option<bool>> = Vec::new();
    for (w, &i) in work.iter().zip(&order) {
        let slot = &mut slots[i];
        let (input, now) = match w {
            Work::Event { event: e, .. } => (Input::Event(e), e.occurred_at),
            Work::Timer { due, customer, .. } => {
                // The fired entry goes, whatever the state says now (it may be stale). It was
                // read from the index (through the unwritten writes), so it is there.
                out.write.clear_timers.push((*due, customer.clone()));
                clear_known.push(Some(true));
                slot.fired.push(*due);
                (Input::Timer, *due)
            }
        };
        let fx = engine.process(&mut slot.state, slot.id, input, now);
        for r in &fx.records {
            count(&mut out.tally, &slot.state, r);
        }
        if !fx.records.is_empty() {
            append_history(&mut slot.history, &fx.records, limit);
        }
        out.actions.extend(fx.actions);
    }
    let mut set_known: Vec<Option<bool>> = Vec::new();
    out.write.customers.reserve(slots.len());
    // Every customer written was read first: the store need not look again.
    let mut existed = Vec::with_capacity(slots.len());
    for slot in slots {
        let id = slot.id;
        if slot.state.wake != slot.original {
            if let Some(old) = slot.original {
                out.write.clear_timers.push((old, id.to_owned()));
                clear_known.push(None);
            }
        }
        if let Some(new) = slot.state.wake {
            // Set even when unchanged: a fired entry for the same time was cleared above.
            out.write.set_timers.push((new, id.to_owned()));
            set_known.push(slot.fired.contains(&new).then_some(true));
            if let Some(p) = slot.owner {
                out.write.timer_partitions.push((id.to_owned(), p));
            }
        }
        out.write
            .customers
            .push((id.to_owned(), Some(slot.state.to_bytes())));
        existed.push(slot.existed);
        // Repeated skips are coalesced within the batch; across batches the store appends.
        for r in &slot.history {
            let entry = postcard::to_allocvec(r).expect("serialising to memory cannot fail");
            out.write.history.push((id.to_owned(), entry));
        }
    }
    out.write.customers_existed = Some(existed);
    out.write.history_limit = limit;
    // A timer set again at the time it was cleared: keep it (set wins over clear).
    let set: std::collections::HashSet<(Millis, &str), foldhash::fast::RandomState> = out
        .write
        .set_timers
        .iter()
        .map(|(due, c)| (*due, c.as_str()))
        .collect();
    let mut known = clear_known.into_iter();
    let mut kept_known = Vec::with_capacity(out.write.clear_timers.len());
    out.write.clear_timers.retain(|(due, c)| {
        let k = known.next().flatten();
        let keep = !set.contains(&(*due, c.as_str()));
        if keep {
            kept_known.push(k);
        }
        keep
    });
    kept_known.extend(set_known);
    out.write.timers_existed = Some(kept_known);
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for p in consumed {
        let e = next
            .entry((p.topic.clone(), p.partition))
            .or_insert(p.offset + 1);
        *e = (*e).max(p.offset + 1);
    }
    out.write.offsets = next
        .into_iter()
        .map(|((topic, partition), next)| Offset {
            topic,
            partition,
            next,
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_store::MemoryStore;
    use journeyd_types::{Attributes, Value};

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
                ..WriteSet::default()
            })
            .unwrap();
        let mut unwritten = Unwritten::none();
        // Not yet written: a's entry moves to partition 1 (not owned here), d gets one at 4.
        unwritten.push(Arc::new(WriteSet {
            set_timers: vec![t(1, "a"), t(4, "d")],
            timer_partitions: vec![("a".into(), 1), ("d".into(), 0)],
            ..WriteSet::default()
        }));
        let owned = |p: i32| p == 0;
        let due = unwritten.due_timers_in(&store, 10, 2, &owned).unwrap();
        let got: Vec<(Millis, &str)> = due.iter().map(|d| (d.due, d.customer.as_str())).collect();
        assert_eq!(got, vec![(2, "b"), (3, "c")]);
    }

    fn event(customer: &str, kind: &str, at: Millis, value: f64) -> Work {
        let mut attributes = Attributes::new();
        attributes.insert("cart_value".into(), Value::from(value));
        attributes.insert("score".into(), Value::from(value / 100.0));
        Work::Event {
            event: Event {
                event_id: format!("{customer}-{kind}-{at}"),
                customer_id: customer.into(),
                event_type: kind.into(),
                channel: None,
                occurred_at: at,
                attributes,
            },
            partition: (customer.len() % 3) as i32,
        }
    }

    /// What a write says it knows of the index and the states before it is what they hold.
    fn check_hints(store: &MemoryStore, unwritten: &Unwritten, write: &WriteSet) {
        let present: std::collections::HashSet<(Millis, String)> = unwritten
            .due_timers_in(store, Millis::MAX, usize::MAX / 2, &|_| true)
            .unwrap()
            .into_iter()
            .map(|t| (t.due, t.customer))
            .collect();
        let known = write.timers_existed.as_ref().expect("the daemon's hints");
        let entries: Vec<_> = write.clear_timers.iter().chain(&write.set_timers).collect();
        assert_eq!(known.len(), entries.len());
        let mut told = 0;
        for (entry, k) in entries.into_iter().zip(known) {
            if let Some(k) = k {
                assert_eq!(*k, present.contains(entry), "{entry:?}");
                told += 1;
            }
        }
        let ids: Vec<&str> = write.customers.iter().map(|(id, _)| id.as_str()).collect();
        let stored = unwritten.customers(store, &ids).unwrap();
        let existed: Vec<bool> = stored.iter().map(Option::is_some).collect();
        assert_eq!(write.customers_existed.as_ref(), Some(&existed));
        TOLD.with(|t| t.set(t.get() + told));
    }

    thread_local! {
        /// Timer entries whose existence a write said, in this thread's runs.
        static TOLD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The batches of a stream: events, and before each batch the timers due by its last event.
    fn run_all(
        engine: &Engine,
        store: &MemoryStore,
        batches: &[Vec<Work>],
        pipelined: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut unwritten = Unwritten::none();
        for batch in batches {
            let last = batch
                .iter()
                .map(|w| match w {
                    Work::Event { event, .. } => event.occurred_at,
                    Work::Timer { due, .. } => *due,
                })
                .max()
                .unwrap();
            let mut work = batch.clone();
            let due = unwritten.due_timers_in(store, last, 4, &|_| true).unwrap();
            work.extend(due.into_iter().map(|t| Work::Timer {
                due: t.due,
                customer: t.customer,
                partition: t.partition,
            }));
            let out = run_batch(engine, store, &unwritten, &work, &[]).unwrap();
            check_hints(store, &unwritten, &out.write);
            actions.extend(out.actions);
            if pipelined {
                // The previous write lands only now, after this batch ran over it.
                if let Some(w) = unwritten.pop_oldest() {
                    store.write(&w).unwrap();
                }
                unwritten.push(Arc::new(out.write));
            } else {
                store.write(&out.write).unwrap();
            }
        }
        if let Some(w) = unwritten.pop_oldest() {
            store.write(&w).unwrap();
        }
        actions
    }

    #[test]
    fn a_batch_run_over_the_unwritten_previous_batch_does_what_it_does_after_the_write() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
        let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
        let mut rng = Rng(42);
        let kinds = [
            "cart_abandoned",
            "cart_viewed",
            "order_placed",
            "risk_flagged",
            "offer_viewed",
        ];
        let mut at: Millis = 1_700_000_000_000;
        let batches: Vec<Vec<Work>> = (0..60)
            .map(|_| {
                (0..1 + rng.below(6))
                    .map(|_| {
                        at += rng.below(900) as Millis;
                        let customer = format!("c{}", rng.below(15));
                        let kind = kinds[rng.below(kinds.len() as u64) as usize];
                        event(&customer, kind, at, 10.0 + rng.below(300) as f64)
                    })
                    .collect()
            })
            .collect();
        let (serial, pipelined) = (MemoryStore::new(), MemoryStore::new());
        let expected = run_all(&engine, &serial, &batches, false);
        let got = run_all(&engine, &pipelined, &batches, true);
        assert!(
            TOLD.with(std::cell::Cell::get) > 10,
            "the writes say which fired entries exist"
        );
        assert!(expected.len() > 20, "the stream sends: {}", expected.len());
        assert!(
            expected.iter().any(|a| a.kind.as_str() == "cancel"),
            "the stream cancels"
        );
        assert_eq!(got, expected);
        let ids: Vec<String> = (0..15).map(|i| format!("c{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            pipelined.customers(&ids).unwrap(),
            serial.customers(&ids).unwrap()
        );
        assert_eq!(
            pipelined.due_timers(Millis::MAX, 1000).unwrap(),
            serial.due_timers(Millis::MAX, 1000).unwrap()
        );
    }
}
