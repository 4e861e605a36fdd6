//! One batch through the engine: load the customers' states, run every input (events in
//! offset order, then fired timers), and gather what must happen next: the actions to produce,
//! and one atomic write (states, timer index changes, consumed offsets) to make after Kafka has
//! acknowledged those actions.
//!
//! Nothing here writes: running the same batch again from the same stored states gives the same
//! actions (ids and content) and the same write. That is what makes a crash anywhere safe.

use journeyd_engine::{append_history, CustomerState, Engine, Input, Record, Suppression, What};
use journeyd_store::{Offset, Store, WriteSet};
use journeyd_types::{Action, Event, Millis};
use std::collections::{BTreeMap, HashMap};

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

/// Runs a batch. `consumed` lists every message the batch covers, including those sent to the
/// dead-letter topic, so their offsets are recorded too.
pub fn run_batch(
    engine: &Engine,
    store: &dyn Store,
    work: &[Work],
    consumed: &[Position],
) -> Result<Output, journeyd_store::Error> {
    let mut ids: Vec<&str> = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // The partition that owns each customer's timers: the last event's, else the fired entry's.
    let mut owner: HashMap<&str, i32> = HashMap::new();
    for w in work {
        let (id, partition) = match w {
            Work::Event { event, partition } => (event.customer_id.as_str(), Some(*partition)),
            Work::Timer {
                customer,
                partition,
                ..
            } => (customer.as_str(), *partition),
        };
        if seen.insert(id) {
            ids.push(id);
        }
        match (w, partition) {
            (Work::Event { .. }, Some(p)) => {
                owner.insert(id, p);
            }
            (Work::Timer { .. }, Some(p)) => {
                owner.entry(id).or_insert(p);
            }
            _ => {}
        }
    }
    let stored = store.customers(&ids)?;
    let mut out = Output::default();
    let mut states: HashMap<&str, (CustomerState, Option<Millis>)> =
        HashMap::with_capacity(ids.len());
    // The history records of this batch per customer (after those a state of the old format
    // carried inside, which move to the history store with them).
    let mut history: HashMap<&str, Vec<Record>> = HashMap::new();
    let limit = engine.settings().history_limit;
    for (id, bytes) in ids.iter().zip(stored) {
        let state = match bytes.as_deref().map(CustomerState::decode) {
            None => CustomerState::default(),
            Some(Ok((s, old_history))) => {
                if !old_history.is_empty() {
                    history.insert(id, old_history);
                }
                s
            }
            Some(Err(error)) => {
                tracing::error!(customer = id, %error, "Stored customer state is unreadable; the customer starts afresh.");
                out.tally.corrupt_states += 1;
                CustomerState::default()
            }
        };
        let wake = state.wake;
        states.insert(id, (state, wake));
    }
    for w in work {
        let (customer, input, now) = match w {
            Work::Event { event: e, .. } => {
                (e.customer_id.as_str(), Input::Event(e), e.occurred_at)
            }
            Work::Timer { due, customer, .. } => {
                // The fired entry goes, whatever the state says now (it may be stale).
                out.write.clear_timers.push((*due, customer.clone()));
                (customer.as_str(), Input::Timer, *due)
            }
        };
        let Some((state, _)) = states.get_mut(customer) else {
            continue;
        };
        let fx = engine.process(state, customer, input, now);
        for r in &fx.records {
            count(&mut out.tally, state, r);
        }
        if !fx.records.is_empty() {
            append_history(history.entry(customer).or_default(), &fx.records, limit);
        }
        out.actions.extend(fx.actions);
    }
    for id in &ids {
        let Some((state, original)) = states.remove(id) else {
            continue;
        };
        if state.wake != original {
            if let Some(old) = original {
                out.write.clear_timers.push((old, (*id).to_owned()));
            }
        }
        if let Some(new) = state.wake {
            // Set even when unchanged: a fired entry for the same time was cleared above.
            out.write.set_timers.push((new, (*id).to_owned()));
            if let Some(p) = owner.get(id) {
                out.write.timer_partitions.push(((*id).to_owned(), *p));
            }
        }
        out.write
            .customers
            .push(((*id).to_owned(), Some(state.to_bytes())));
        // Repeated skips are coalesced within the batch; across batches the store appends.
        for r in history.remove(id).unwrap_or_default() {
            let entry = postcard::to_allocvec(&r).expect("serialising to memory cannot fail");
            out.write.history.push(((*id).to_owned(), entry));
        }
    }
    out.write.history_limit = limit;
    // A timer set again at the time it was cleared: keep it (set wins over clear).
    let set: std::collections::HashSet<(Millis, String)> =
        out.write.set_timers.iter().cloned().collect();
    out.write.clear_timers.retain(|c| !set.contains(c));
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
