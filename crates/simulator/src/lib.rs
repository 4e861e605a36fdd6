//! The simulator: the engine on a virtual clock, over customers kept in memory.
//!
//! Before each event the clock advances to its `occurred_at`, firing every timer due at or
//! before it, in due order (then by customer id); after the last event it may advance further.
//! The same engine path runs as in the daemon, so the simulator is the oracle the end-to-end
//! tests compare the service with.

mod events;
pub mod testing;

pub use events::{read_events, BadLine};

use journeyd_engine::{CustomerState, Effects, Engine, Input};
use journeyd_types::{time, Action, Event, Millis};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
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
}

/// The engine on a virtual clock.
#[derive(Debug)]
pub struct Simulator {
    engine: Arc<Engine>,
    customers: BTreeMap<String, CustomerState>,
    timers: BTreeSet<(Millis, String)>,
    clock: Option<Millis>,
}

impl Simulator {
    /// A simulator with no customers.
    pub fn new(engine: Arc<Engine>) -> Simulator {
        Simulator {
            engine,
            customers: BTreeMap::new(),
            timers: BTreeSet::new(),
            clock: None,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The virtual clock (none before the first event).
    pub fn clock(&self) -> Option<Millis> {
        self.clock
    }

    /// A customer's state.
    pub fn customer(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(id)
    }

    /// A customer's state, created empty if new (to give a test its starting profile).
    pub fn customer_mut(&mut self, id: &str) -> &mut CustomerState {
        self.customers.entry(id.to_owned()).or_default()
    }

    /// All customers, by id.
    pub fn customers(&self) -> &BTreeMap<String, CustomerState> {
        &self.customers
    }

    fn apply(&mut self, customer: &str, input: Input<'_>, now: Millis) -> Vec<Emitted> {
        let state = self.customers.entry(customer.to_owned()).or_default();
        let Effects { actions, timer, .. } = self.engine.process(state, customer, input, now);
        if let Some(old) = timer.clear {
            self.timers.remove(&(old, customer.to_owned()));
        }
        if let Some(new) = timer.set {
            self.timers.insert((new, customer.to_owned()));
        }
        actions
            .into_iter()
            .map(|action| Emitted {
                at: action.created_at,
                action,
            })
            .collect()
    }

    /// Advances the clock to `t`, firing every timer due at or before it, in due order.
    pub fn advance_to(&mut self, t: Millis) -> Vec<Emitted> {
        let mut out = Vec::new();
        while let Some((due, customer)) = self.timers.first().cloned() {
            if due > t {
                break;
            }
            self.timers.pop_first();
            out.extend(self.apply(&customer, Input::Timer, due));
        }
        self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
        out
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
        out.extend(self.apply(&event.customer_id, Input::Event(event), event.occurred_at));
        Ok(out)
    }
}
