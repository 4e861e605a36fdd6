//! The simulator: the engine on a virtual clock, over customers kept in memory.
//!
//! Before each event the clock advances to its `occurred_at`, firing every timer due at or
//! before it, in due order (then by customer id); after the last event it may advance further.
//! The same engine path runs as in the daemon, so the simulator is the oracle the end-to-end
//! tests compare the service with.

mod events;
pub mod testing;

pub use events::{read_events, read_inputs, BadLine, Control, Line};
pub use journeyd_engine::report;

use journeyd_engine::{
    append_history, merge_history, CustomerState, Effects, Engine, HistoryLine, Input, Merged,
    Record, TimerChange, CUSTOMER_MERGED,
};
use journeyd_journey::Trigger;
use journeyd_types::{time, Action, Event, Millis};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// An action with the virtual time it was emitted at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Emitted {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// The virtual time of emission.
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
}

/// Why the simulator refused an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Events must come in time order.
    #[error(
        "occurred_at {at} is before the simulation clock {clock}: events must not go back in time"
    )]
    BackInTime {
        /// The event's time.
        at: String,
        /// The clock.
        clock: String,
    },
    /// A control line names a journey the folder does not have.
    #[error("unknown journey \"{journey}\" in a control line")]
    UnknownJourney {
        /// The journey id.
        journey: String,
    },
}

/// The engine on a virtual clock.
#[derive(Debug)]
pub struct Simulator {
    engine: Arc<Engine>,
    /// By id, hashed: looked up once per input (the sorted view is [`Simulator::customers`]).
    customers: HashMap<String, Customer>,
    timers: BTreeSet<(Millis, String)>,
    clock: Option<Millis>,
    /// The counters (see [`report`]).
    counters: report::Counts,
    /// The next audience run of each audience journey, by journey id.
    runs: BTreeMap<String, Millis>,
    /// Merged customers (contract v2, identity): each id merged away, to the id it was merged
    /// into (which may itself have been merged since: chains resolve).
    aliases: HashMap<String, String>,
}

/// One customer: the engine's state, and the history kept beside it (as the service keeps it
/// in its store).
#[derive(Debug, Default)]
struct Customer {
    state: CustomerState,
    history: Vec<Record>,
}

impl Simulator {
    /// A simulator with no customers.
    pub fn new(engine: Arc<Engine>) -> Simulator {
        Simulator {
            engine,
            customers: HashMap::new(),
            timers: BTreeSet::new(),
            clock: None,
            counters: report::Counts::default(),
            runs: BTreeMap::new(),
            aliases: HashMap::new(),
        }
        .with_runs()
    }

    /// Schedules the first run of every audience journey.
    fn with_runs(mut self) -> Simulator {
        for j in self.engine.journeys() {
            if let Trigger::Audience { at, .. } = j.entry.trigger {
                self.runs.insert(j.id.clone(), at);
            }
        }
        self
    }

    /// One audience run of journey `id` at `at`: every known customer, in id order; then the
    /// next run is scheduled (`every` later), or none.
    fn audience_run(&mut self, id: &str, at: Millis) -> Vec<Emitted> {
        let mut ids: Vec<String> = self.customers.keys().cloned().collect();
        ids.sort();
        let mut out = Vec::new();
        for c in ids {
            out.extend(self.apply(&c, Input::Audience(id), at));
        }
        let every = self
            .engine
            .journeys()
            .iter()
            .find(|j| j.id == id)
            .and_then(|j| match j.entry.trigger {
                Trigger::Audience { every, .. } => every,
                _ => None,
            });
        match every {
            Some(d) if d > 0 => {
                self.runs.insert(id.to_owned(), at.saturating_add(d));
            }
            _ => {
                self.runs.remove(id);
            }
        }
        out
    }

    /// The experiment results so far (contract v2, `journey simulate --report`).
    pub fn report(&self) -> report::Report {
        self.counters.report(&self.engine)
    }

    /// The counts so far: the report's, and the live ones (instances waiting at each step,
    /// sends by channel, suppressions by reason).
    pub fn counts(&self) -> &report::Counts {
        &self.counters
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The virtual clock (none before the first event).
    pub fn clock(&self) -> Option<Millis> {
        self.clock
    }

    /// The customer an id stands for: itself, or the customer it was merged into, through
    /// every later merge.
    pub fn resolve<'a>(&'a self, id: &'a str) -> &'a str {
        let mut at = id;
        // A chain is at most as long as there are aliases (merges never make a cycle: a merge
        // is between two resolved, different customers).
        for _ in 0..=self.aliases.len() {
            match self.aliases.get(at) {
                Some(next) => at = next,
                None => break,
            }
        }
        at
    }

    /// A customer's state (an alias gives the state of the customer it stands for).
    pub fn customer(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(self.resolve(id)).map(|c| &c.state)
    }

    /// A customer's state, created empty if new (to give a test its starting profile).
    pub fn customer_mut(&mut self, id: &str) -> &mut CustomerState {
        let id = self.resolve(id).to_owned();
        &mut self.customers.entry(id).or_default().state
    }

    /// All customers, by id.
    pub fn customers(&self) -> BTreeMap<&str, &CustomerState> {
        self.customers
            .iter()
            .map(|(id, c)| (id.as_str(), &c.state))
            .collect()
    }

    /// A customer's history records, oldest first (at most the engine's `history_limit`).
    pub fn history_records(&self, id: &str) -> &[Record] {
        self.customers
            .get(self.resolve(id))
            .map_or(&[], |c| &c.history)
    }

    /// A customer's history in words, oldest first.
    pub fn history(&self, id: &str) -> Vec<HistoryLine> {
        self.customers
            .get(self.resolve(id))
            .map(|c| self.engine.history(&c.state, &c.history))
            .unwrap_or_default()
    }

    fn apply(&mut self, customer: &str, input: Input<'_>, now: Millis) -> Vec<Emitted> {
        // Looked up before inserting: most inputs are for a known customer, and the id need
        // not be copied for them.
        let c = match self.customers.get_mut(customer) {
            Some(c) => c,
            None => self.customers.entry(customer.to_owned()).or_default(),
        };
        self.counters.waiting(&c.state, -1);
        let fx = self.engine.process(&mut c.state, customer, input, now);
        self.counters.waiting(&c.state, 1);
        self.counters.observe(&self.engine, &c.state.journeys, &fx);
        let Effects {
            actions,
            timer,
            records,
            erased,
            ..
        } = fx;
        if erased {
            // Nothing of them is kept: not their state, not their history (an erased customer
            // is no longer known: audience runs pass them by).
            c.history.clear();
        }
        let limit = self.engine.settings().history_limit;
        append_history(&mut c.history, &records, limit);
        self.move_timer(customer, timer);
        if erased {
            self.customers.remove(customer);
            // No alias is left pointing to them: a later event with such an id starts a new,
            // unknown customer.
            let gone: Vec<String> = self
                .aliases
                .keys()
                .filter(|a| self.resolve(a) == customer)
                .cloned()
                .collect();
            for a in gone {
                self.aliases.remove(&a);
            }
        }
        emitted(actions)
    }

    /// Applies a change of `customer`'s pending timer to the timer index.
    fn move_timer(&mut self, customer: &str, timer: TimerChange) {
        if let Some(old) = timer.clear {
            self.timers.remove(&(old, customer.to_owned()));
        }
        if let Some(new) = timer.set {
            self.timers.insert((new, customer.to_owned()));
        }
    }

    /// Merges customer `from` into `into` (both resolved, different) for a `customer_merged`
    /// event, as the service does: the engine moves what A had, A becomes an alias of B, A's
    /// history joins B's, and the event is processed as B's.
    fn merge(&mut self, from: &str, into: &str, event: &Event) -> Vec<Emitted> {
        let now = event.occurred_at;
        let mut a = self.customers.remove(from).unwrap_or_default();
        let b = self.customers.entry(into.to_owned()).or_default();
        self.counters.waiting(&a.state, -1);
        self.counters.waiting(&b.state, -1);
        let Merged {
            from: mut a_fx,
            into: b_fx,
            journeys,
            ..
        } = self
            .engine
            .merge(&mut a.state, from, &mut b.state, into, event, now);
        self.counters.waiting(&b.state, 1);
        let limit = self.engine.settings().history_limit;
        append_history(&mut a.history, &a_fx.records, limit);
        // A's records (of what was due before the merge) are counted under A, named in B's
        // journey table, where they now are (A's split arms came with the goals that moved).
        for r in &mut a_fx.records {
            r.j = r.j.and_then(|j| journeys.get(usize::from(j)).copied());
        }
        for e in &mut a_fx.experiment {
            e.taken.j = journeys[usize::from(e.taken.j)];
        }
        self.counters
            .observe(&self.engine, &b.state.journeys, &a_fx);
        merge_history(&mut b.history, a.history, &journeys, limit);
        self.counters
            .observe(&self.engine, &b.state.journeys, &b_fx);
        append_history(&mut b.history, &b_fx.records, limit);
        self.move_timer(from, a_fx.timer);
        self.move_timer(into, b_fx.timer);
        self.aliases.insert(from.to_owned(), into.to_owned());
        let mut out = emitted(a_fx.actions);
        out.extend(emitted(b_fx.actions));
        out
    }

    /// Advances the clock to `t`, firing every timer and audience run due at or before it, in
    /// due order (a run before a timer due at the same time).
    pub fn advance_to(&mut self, t: Millis) -> Vec<Emitted> {
        let mut out = Vec::new();
        loop {
            let timer = self.timers.first().map(|(due, _)| *due).filter(|d| *d <= t);
            let run = self
                .runs
                .iter()
                .map(|(id, at)| (*at, id.clone()))
                .min()
                .filter(|(at, _)| *at <= t);
            match (run, timer) {
                (Some((at, id)), timer) if timer.is_none_or(|d| at <= d) => {
                    out.extend(self.audience_run(&id, at));
                }
                (_, Some(_)) => {
                    let Some((due, customer)) = self.timers.pop_first() else {
                        break;
                    };
                    out.extend(self.apply(&customer, Input::Timer, due));
                }
                _ => break,
            }
        }
        self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
        out
    }

    /// Applies a control line (contract v2, journey status): advances to its time, sets the
    /// journey's status, and applies what the status does at once to every customer who has
    /// been in the journey, in customer id order.
    pub fn control(&mut self, c: &Control) -> Result<Vec<Emitted>, Error> {
        if let Some(clock) = self.clock.filter(|clock| c.at < *clock) {
            return Err(Error::BackInTime {
                at: time::format_rfc3339(c.at),
                clock: time::format_rfc3339(clock),
            });
        }
        if !self.engine.journeys().iter().any(|j| j.id == c.journey) {
            return Err(Error::UnknownJourney {
                journey: c.journey.clone(),
            });
        }
        let mut out = self.advance_to(c.at);
        self.engine = Arc::new(self.engine.with_status(&c.journey, c.status));
        let mut ids: Vec<String> = self
            .customers
            .iter()
            .filter(|(_, cu)| cu.state.journeys.iter().any(|m| m.id == c.journey))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        for id in ids {
            out.extend(self.apply(&id, Input::Status(&c.journey), c.at));
        }
        Ok(out)
    }

    /// Advances to the event's time, then processes it.
    pub fn push(&mut self, event: &Event) -> Result<Vec<Emitted>, Error> {
        if let Some(clock) = self.clock.filter(|c| event.occurred_at < *c) {
            return Err(Error::BackInTime {
                at: time::format_rfc3339(event.occurred_at),
                clock: time::format_rfc3339(clock),
            });
        }
        let mut out = self.advance_to(event.occurred_at);
        let customer = self.resolve(&event.customer_id).to_owned();
        let into = (event.event_type == CUSTOMER_MERGED)
            .then(|| event.merged_into().map(|b| self.resolve(b).to_owned()))
            .flatten();
        match into {
            Some(into) if into != customer => out.extend(self.merge(&customer, &into, event)),
            // Merging a customer into itself (directly or through aliases) changes nothing:
            // the event is not processed (what was due has run: the clock moved).
            Some(_) => {}
            None => out.extend(self.apply(&customer, Input::Event(event), event.occurred_at)),
        }
        Ok(out)
    }
}

fn emitted(actions: Vec<journeyd_types::Action>) -> Vec<Emitted> {
    actions
        .into_iter()
        .map(|action| Emitted {
            at: action.created_at,
            action,
        })
        .collect()
}
