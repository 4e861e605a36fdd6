//! One batch through the engine: load the customers' states, run every input (events in
//! offset order, then fired timers), and gather what must happen next: the actions to produce,
//! and one atomic write (states, timer index changes, consumed offsets) to make after Kafka has
//! acknowledged those actions.
//!
//! Nothing here writes: running the same batch again from the same stored states gives the same
//! actions (ids and content) and the same write. That is what makes a crash anywhere safe.

use journeyd_engine::report::Counts;
use journeyd_engine::{append_history, CustomerState, Engine, Input, Record, Suppression, What};
use journeyd_store::{Offset, Store, WriteSet};
use journeyd_types::{Action, Event, Millis};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::changelog::record::{self as changelog, CustomerRecord};
use crate::unwritten::Map;
pub use crate::unwritten::{Patched, Prefetched, Unwritten};

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
        /// The input topic and offset it was read at, when it was read from Kafka: the
        /// changelog records how far each customer's events were applied.
        read_at: Option<(Arc<str>, i64)>,
    },
    /// A customer of a partition swept after a journey status change (see
    /// [`crate::service::Sweep`]): processed as a timer at `at`, which applies the status to
    /// them (the engine catches a customer up on a status before anything else), with no entry
    /// of the timer index fired.
    Settle {
        /// The customer.
        customer: String,
        /// The input partition they are listed under.
        partition: i32,
        /// When the status changed.
        at: Millis,
        /// The journey whose status changed.
        journey: Arc<str>,
        /// The status it changed to (applied as it was then, even if it has changed since).
        status: journeyd_engine::Status,
    },
    /// A customer of a partition given an audience run (see [`crate::service::audience`]):
    /// processed at the run's time; written only when it changed them.
    Audience {
        /// The customer.
        customer: String,
        /// The input partition they are listed under.
        partition: i32,
        /// The run's time.
        at: Millis,
        /// The audience journey.
        journey: Arc<str>,
        /// Whether this is the partition's last customer of the run: the batch records the
        /// run as given to the partition.
        last: bool,
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

impl Work {
    /// The time it is processed at: the event's, the timer's due time, the status change's.
    pub fn at(&self) -> Millis {
        match self {
            Work::Event { event, .. } => event.occurred_at,
            Work::Timer { due, .. } => *due,
            Work::Settle { at, .. } | Work::Audience { at, .. } => *at,
        }
    }
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
    /// Stored states that could not be read (the customer is quarantined).
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
    /// The customers whose processing failed: their input goes to the dead-letter topic and
    /// their stored state is left as it was.
    pub quarantined: Vec<Quarantined>,
    /// For each entry of `write.customers`: the input partition that owns the customer (their
    /// events come from it), if the batch names one.
    pub owners: Vec<Option<i32>>,
    /// The changelog records of the batch (when asked for): each written customer's record,
    /// then each input partition's position, each in its owner's changelog partition.
    pub changes: Vec<Change>,
}

/// One changelog record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The changelog partition: the input partition number it belongs to.
    pub partition: i32,
    /// The record's key (see [`crate::changelog::record`]).
    pub key: Vec<u8>,
    /// The record's value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// How long after the batch a quarantined customer's fired timer is set again (ms): it is
/// tried again then, without a loop that fails on it batch after batch, and fires for real
/// once the fault is fixed (a reload, a new release).
pub const QUARANTINE_RETRY: Millis = 10 * 60 * 1000;

/// A customer whose processing failed in a batch (an unreadable stored state, or a panic in
/// the engine: a bug). Nothing of theirs from this batch is written or sent; each timer entry
/// that fired for them is set again [`QUARANTINE_RETRY`] after the batch's latest time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The customer.
    pub customer: String,
    /// What failed.
    pub error: String,
    /// The indexes in the batch's work of their inputs (events and timers), in order.
    pub work: Vec<usize>,
}

fn ending_name(e: &journeyd_engine::Ending) -> &'static str {
    use journeyd_engine::Ending::*;
    match e {
        Finished => "finished",
        ExitStep => "exit_step",
        ExitOn(_) => "exit_on",
        StepLimit => "step_limit",
        VersionGone => "version_gone",
        Stopped => "stopped",
        Merged => "merged",
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
    /// Why the customer is quarantined, once their processing failed.
    poison: Option<String>,
    /// What the batch changed of the counts kept with the customer's partition.
    counts: Counts,
    /// The ranges of the batch's actions that this customer's inputs emitted.
    actions: Vec<std::ops::Range<usize>>,
    /// The offset of the customer's last event applied in the batch, per input topic.
    applied: Vec<(Arc<str>, i64)>,
    /// Erased in this batch (`erasure_requested`): the stored state and history go.
    erased: bool,
    /// Whether the batch changed anything of the customer worth writing: any event or timer
    /// does; a sweep's settle only when it did something (a sweep must not rewrite, or bring
    /// back, customers it leaves as they were).
    changed: bool,
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
            poison: None,
            counts: Counts::default(),
            actions: Vec::new(),
            applied: Vec::new(),
            erased: false,
            changed: false,
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
    run_batch_logged(engine, store, unwritten, work, consumed, false)
}

/// [`run_batch`], and with `changelog` the batch's changelog records in [`Output::changes`].
pub fn run_batch_logged(
    engine: &Engine,
    store: &dyn Store,
    unwritten: &Unwritten,
    work: &[Work],
    consumed: &[Position],
    changelog: bool,
) -> Result<Output, journeyd_store::Error> {
    // One slot per customer, in order of first appearance.
    let mut index: Map<&str, usize> = Map::default();
    let mut slots: Vec<Slot> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(work.len());
    for w in work {
        let (id, partition) = match w {
            Work::Event {
                event, partition, ..
            } => (event.customer_id.as_str(), Some(*partition)),
            Work::Timer {
                customer,
                partition,
                ..
            } => (customer.as_str(), *partition),
            Work::Settle {
                customer,
                partition,
                ..
            }
            | Work::Audience {
                customer,
                partition,
                ..
            } => (customer.as_str(), Some(*partition)),
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
            (Work::Event { .. } | Work::Settle { .. } | Work::Audience { .. }, Some(p)) => {
                slot.owner = Some(p)
            }
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
                tracing::error!(customer = slot.id, %error, "Stored customer state is unreadable: the customer is quarantined (their input goes to the dead-letter topic; the stored state stays as it is).");
                out.tally.corrupt_states += 1;
                slot.poison = Some(format!("the stored state is unreadable: {error}"));
                CustomerState::default()
            }
        };
        slot.original = slot.state.wake;
        // The instances leave the steps they wait at; the final state's take theirs.
        slot.counts.waiting(&slot.state, -1);
    }
    // Whether each entry of `clear_timers` is known to be in the index (see `WriteSet`).
    let mut clear_known: Vec<Option<bool>> = Vec::new();
    for (w, &i) in work.iter().zip(&order) {
        let slot = &mut slots[i];
        let (input, now) = match w {
            Work::Event {
                event: e, read_at, ..
            } => {
                if let Some((topic, offset)) = read_at {
                    match slot.applied.iter_mut().find(|(t, _)| t == topic) {
                        Some(a) => a.1 = a.1.max(*offset),
                        None => slot.applied.push((topic.clone(), *offset)),
                    }
                }
                (Input::Event(e), e.occurred_at)
            }
            Work::Timer { due, customer, .. } => {
                // The fired entry goes, whatever the state says now (it may be stale). It was
                // read from the index (through the unwritten writes), so it is there.
                out.write.clear_timers.push((*due, customer.clone()));
                clear_known.push(Some(true));
                slot.fired.push(*due);
                (Input::Timer, *due)
            }
            Work::Settle {
                at,
                journey,
                status,
                ..
            } => {
                // Nobody to settle: the customer is not stored (erased meanwhile, or never).
                if !slot.existed && !slot.changed {
                    continue;
                }
                (Input::Apply(journey, *status), *at)
            }
            Work::Audience { at, journey, .. } => {
                // Nobody to run: the customer is not stored (erased meanwhile, or never).
                if !slot.existed && !slot.changed {
                    continue;
                }
                (Input::Audience(journey), *at)
            }
        };
        // Written only if it changed something (a run leaves most customers as they were).
        let settle = matches!(w, Work::Settle { .. } | Work::Audience { .. });
        if slot.poison.is_some() {
            continue;
        }
        // A panic for one customer (a bug) must not stop everyone: the customer is
        // quarantined and the batch goes on. Their state is not written, so a half-changed
        // state is dropped with it.
        let state = &mut slot.state;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.process(state, slot.id, input, now)
        }));
        let fx = match run {
            Ok(fx) => fx,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(customer = slot.id, error = what, "The engine failed for a customer: quarantined (their input goes to the dead-letter topic; the stored state stays as it is).");
                slot.poison = Some(format!("the engine failed: {what}"));
                continue;
            }
        };
        slot.changed |= !settle
            || fx.erased
            || !fx.records.is_empty()
            || !fx.actions.is_empty()
            || fx.timer.clear != fx.timer.set;
        if fx.erased {
            // Nothing recorded before the erasure is kept.
            slot.erased = true;
            slot.history.clear();
        }
        for r in &fx.records {
            count(&mut out.tally, &slot.state, r);
        }
        slot.counts.observe(engine, &slot.state.journeys, &fx);
        if !fx.records.is_empty() {
            append_history(&mut slot.history, &fx.records, limit);
        }
        if !fx.actions.is_empty() {
            let from = out.actions.len();
            out.actions.extend(fx.actions);
            slot.actions.push(from..out.actions.len());
        }
    }
    // What the quarantined customers emitted before their processing failed is not sent.
    let mut dropped: Vec<std::ops::Range<usize>> = slots
        .iter()
        .filter(|s| s.poison.is_some())
        .flat_map(|s| s.actions.iter().cloned())
        .collect();
    if !dropped.is_empty() {
        dropped.sort_by_key(|r| r.start);
        let mut ranges = dropped.iter().peekable();
        let mut i = 0;
        out.actions.retain(|_| {
            while ranges.peek().is_some_and(|r| r.end <= i) {
                ranges.next();
            }
            let keep = !ranges.peek().is_some_and(|r| r.contains(&i));
            i += 1;
            keep
        });
    }
    let mut set_known: Vec<Option<bool>> = Vec::new();
    out.write.customers.reserve(slots.len());
    // Every customer written was read first: the store need not look again.
    let mut existed = Vec::with_capacity(slots.len());
    // The batch's latest time, events' and timers' alike.
    let latest = work.iter().map(Work::at).max().unwrap_or(0);
    // What the batch changed of each partition's counts; and the audience runs it finished
    // giving to a partition.
    let mut by_partition: BTreeMap<i32, Counts> = BTreeMap::new();
    let mut runs_given: Vec<(i32, Arc<str>, Millis)> = Vec::new();
    for w in work {
        if let Work::Audience {
            partition,
            at,
            journey,
            last: true,
            ..
        } = w
        {
            by_partition.entry(*partition).or_default();
            runs_given.push((*partition, journey.clone(), *at));
        }
    }
    for (i, slot) in slots.into_iter().enumerate() {
        let id = slot.id;
        if let Some(error) = slot.poison {
            if !slot.fired.is_empty() {
                // Its stored state still waits for them: keep a timer in the index.
                let retry = latest.saturating_add(QUARANTINE_RETRY);
                out.write.set_timers.push((retry, id.to_owned()));
                set_known.push(None);
                if let Some(p) = slot.owner {
                    out.write.timer_partitions.push((id.to_owned(), p));
                }
            }
            out.quarantined.push(Quarantined {
                customer: id.to_owned(),
                error,
                work: (0..order.len()).filter(|&k| order[k] == i).collect(),
            });
            continue;
        }
        if !slot.changed {
            // Only swept, and the sweep found nothing to do: nothing is written.
            continue;
        }
        if let Some(p) = slot.owner {
            let mut counts = slot.counts;
            counts.waiting(&slot.state, 1);
            match by_partition.get_mut(&p) {
                Some(c) => c.add(&counts),
                None => {
                    by_partition.insert(p, counts);
                }
            }
        }
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
        if slot.erased {
            // The stored state goes, and its history with it (the store deletes a customer's
            // history with them); the changelog gets a tombstone.
            out.write.customers.push((id.to_owned(), None));
            out.owners.push(slot.owner);
            if let Some(p) = slot.owner {
                out.write.owners.push((id.to_owned(), p));
            }
            existed.push(slot.existed);
            if let (true, Some(p)) = (changelog, slot.owner) {
                out.changes.push(Change {
                    partition: p,
                    key: changelog::customer_key(id),
                    value: None,
                });
            }
            let blank = CustomerState {
                clock: slot.state.clock,
                ..CustomerState::default()
            };
            if slot.state == blank {
                continue;
            }
            // Events after the erasure in this batch started a new customer: written after.
        }
        let bytes = slot.state.to_bytes();
        let history_from = out.write.history.len();
        // Repeated skips are coalesced within the batch; across batches the store appends.
        for r in &slot.history {
            let entry = postcard::to_allocvec(r).expect("serialising to memory cannot fail");
            out.write.history.push((id.to_owned(), entry));
        }
        if let (true, Some(p)) = (changelog, slot.owner) {
            let record = CustomerRecord {
                state: bytes.clone(),
                wake: slot.state.wake,
                history: out.write.history[history_from..]
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect(),
                applied: slot
                    .applied
                    .iter()
                    .map(|(t, o)| (t.to_string(), *o))
                    .collect(),
            };
            out.changes.push(Change {
                partition: p,
                key: changelog::customer_key(id),
                value: Some(changelog::encode_customer(&record)),
            });
        }
        out.write.customers.push((id.to_owned(), Some(bytes)));
        out.owners.push(slot.owner);
        if let Some(p) = slot.owner {
            // Listed under their partition, for sweeps (see `Store::customers_of`).
            out.write.owners.push((id.to_owned(), p));
        }
        existed.push(slot.existed);
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
    for (p, delta) in by_partition {
        let stored = unwritten.counts(store, p)?;
        let readable = match stored.as_deref().map(Counts::from_bytes) {
            Some(Ok(c)) => Some(c),
            // Unreadable counts (a newer journeyd's) start again rather than stop the batch.
            Some(Err(error)) => {
                tracing::error!(partition = p, %error, "The stored counts of a partition are unreadable: they start again from the instances stored.");
                None
            }
            None => None,
        };
        let mut counts = match readable {
            Some(c) => c,
            None => waiting_in(store, unwritten, p)?,
        };
        counts.add(&delta);
        for (_, journey, at) in runs_given.iter().filter(|(q, _, _)| *q == p) {
            let given = &mut counts.journey_mut(journey).last_run;
            *given = (*given).max(Some(*at));
        }
        let bytes = counts.to_bytes();
        if changelog {
            out.changes.push(Change {
                partition: p,
                key: changelog::counts_key(),
                value: Some(changelog::encode_counts(&bytes)),
            });
        }
        out.write.counts.push((p, bytes));
    }
    if changelog {
        // After the customers: a position says the records before it in its partition are in.
        out.changes.extend(out.write.offsets.iter().map(|o| Change {
            partition: o.partition,
            key: changelog::position_key(&o.topic),
            value: Some(changelog::encode_position(o.next)),
        }));
    }
    Ok(out)
}

/// The counts of a partition that has none yet (a store from before counts were kept, or
/// unreadable ones): the instances its stored customers wait in, as the batches before this
/// one left them; the other counts start from zero. Reads every customer listed under the
/// partition, a page at a time, once.
fn waiting_in(
    store: &dyn Store,
    unwritten: &Unwritten,
    partition: i32,
) -> Result<Counts, journeyd_store::Error> {
    const PAGE: usize = 1000;
    let mut counts = Counts::default();
    let mut after: Option<String> = None;
    let mut customers = 0usize;
    loop {
        let page = store.customers_of(partition, after.as_deref(), PAGE)?;
        let ids: Vec<&str> = page.iter().map(String::as_str).collect();
        for bytes in unwritten.customers(store, &ids)?.into_iter().flatten() {
            if let Ok(state) = CustomerState::from_bytes(&bytes) {
                counts.waiting(&state, 1);
            }
        }
        customers += page.len();
        if page.len() < PAGE {
            break;
        }
        after = page.last().cloned();
    }
    if customers > 0 {
        tracing::info!(
            partition,
            customers,
            "Counted the instances waiting in a partition without counts."
        );
    }
    Ok(counts)
}

#[cfg(test)]
mod tests;
