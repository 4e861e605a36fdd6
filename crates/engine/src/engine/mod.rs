//! The engine: one path that changes a customer's state, for events and fired timers alike.
//!
//! [`Engine::process`] takes a customer's state, an input and the time, and returns the effects.
//! Before any input it runs every deadline of the customer that is due at or before the time, each
//! at its own due time and in due order; then it applies the event, if any. So a late timer and
//! an event that overtakes it give the same result as a punctual timer, and the daemon, the
//! simulator and the tests agree.
//!
//! Invariants (checked by property tests): at most one active instance per customer and journey;
//! every cancel names a send emitted earlier to the same customer and channel; no send breaks a
//! frequency cap; the same state, input and time give the same effects, action ids included.

use crate::eval::{eval, eval_bool, ruled_out, EventView};
use crate::ids;
use crate::localtime::{minute_of_day, next_local_time};
use crate::state::*;
use chrono_tz::Tz;
use journeyd_journey::{Catalog, Category, Expr, Journey, Policies, StepKind, Target, Trigger};
use journeyd_types::{
    Action, ActionKind, Attributes, CancelReason, Event, Millis, Value, CUSTOMER_MERGED,
};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// `profile_updated`: its attributes are merged into the profile.
pub const PROFILE_UPDATED: &str = "profile_updated";
/// `consent_changed`: attributes `channel` and `granted` record consent.
pub const CONSENT_CHANGED: &str = "consent_changed";
/// The special event that erases a customer (contract v2, right to be forgotten).
pub const ERASURE_REQUESTED: &str = "erasure_requested";

/// Limits that keep one customer's state and one input's work bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How many history records a customer keeps (oldest dropped first). The engine does not
    /// keep them (see [`Effects::records`]); whoever stores them keeps this many, with
    /// [`append_history`].
    pub history_limit: usize,
    /// How many steps one instance may run in one input before it is ended (a safeguard:
    /// validation already refuses loops without a wait).
    pub step_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_limit: 64,
            step_limit: 1_000,
        }
    }
}

/// What the engine is asked to process.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A touchpoint event for the customer.
    Event(&'a Event),
    /// The customer's timer fired: run what is due.
    Timer,
    /// An audience run of this journey (by id) at the input's time: the customer enters if
    /// the entry condition holds (with `event` the synthetic audience event: type `audience`,
    /// no channel, `occurred_at` the run time, no attributes), subject to `reentry`, to one
    /// active instance at a time and to the journey status. Every input gives a known
    /// customer the runs due since their last one, this one included; given again (or after
    /// a later input of theirs), a run does nothing.
    Audience(&'a str),
    /// The status of this journey (by id) changed: apply what the new status (the engine's)
    /// does to the customer at once (a stop ends their instance and cancels the journey's
    /// outstanding sends; a resume releases the sends their paused instance stopped at).
    Status(&'a str),
    /// What `status` does to the customer's part in journey `id` at once, whatever the
    /// journey's status is now: a sweep after a change that may have been undone since (a stop
    /// then a resume: the stop still ends what it ended at its time, as a control line does).
    Apply(&'a str, Status),
}

/// A change to the customer's pending timer: clear the old due time, set the new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerChange {
    /// The due time to remove from the timer index, if it changed.
    pub clear: Option<Millis>,
    /// The due time to add to the timer index, if it changed.
    pub set: Option<Millis>,
}

/// What processing one input produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Actions to emit, in order.
    pub actions: Vec<Action>,
    /// History records added, in order. The state does not keep them: whoever keeps a
    /// customer's history appends them (see [`append_history`]).
    pub records: Vec<Record>,
    /// The change to the customer's timer.
    pub timer: TimerChange,
    /// The customer was erased (`erasure_requested`): whoever keeps their state and history
    /// deletes both, records of this input included; the state given back is blank but for
    /// what came after the erasure. Set once per input.
    pub erased: bool,
    /// Experiment events (contract v2, experiment results), in order: an entry took a split
    /// arm for the first time, or reached its journey's goal after taking arms (one event per
    /// arm). Journeys are indexes into the state's journey table, as in `records`.
    pub experiment: Vec<ArmEvent>,
}

/// One experiment event (see [`Effects::experiment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmEvent {
    /// The split arm.
    pub taken: crate::SplitTaken,
    /// `false`: the entry took the arm; `true`: the entry that took it reached the goal.
    pub converted: bool,
}

/// The journeys and policies, compiled for fast lookup. Immutable; share it behind an `Arc`
/// (a status change makes a new one, see [`Engine::with_status`]).
#[derive(Debug, Clone)]
pub struct Engine {
    current: Vec<Arc<Journey>>,
    /// Every known version, by journey id (looked up by `&str`, without building a key).
    versions: FastMap<Vec<Arc<Journey>>>,
    policies: Policies,
    settings: Settings,
    /// What each event type any journey (current or older) or special rule looks at does; an
    /// event type not in here touches no journey. One lookup per event.
    events: FastMap<Roles>,
    cap_window: Millis,
    /// Journeys whose status is not `running`, by id.
    status: std::collections::BTreeMap<String, Status>,
}

/// The current journeys an event type starts, by index into `Engine::current`.
#[derive(Debug, Default, Clone)]
struct Roles {
    /// Journeys it enters (`entry.event`).
    entry: Vec<usize>,
    /// Journeys whose inactivity trigger it arms (`entry.inactivity.event`).
    inactivity: Vec<usize>,
}

/// A map keyed by names from the journeys (event types, journey ids), with a fast hash.
///
/// Why not the standard hasher: it is keyed against flooding with chosen keys, which costs a
/// large share of the engine's time on an event that touches no journey; these maps' keys come
/// from the journeys, and an event's type only probes them.
type FastMap<V> = HashMap<String, V, BuildHasherDefault<FxHasher>>;

/// The Fx hash (as in rustc): a multiply and a rotate per word.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A send decided by a step, before the contact policies.
struct Intent {
    journey: Arc<Journey>,
    j: u16,
    step: u16,
    key: u64,
    id: u128,
    vars: Attributes,
}

impl Engine {
    /// Builds an engine for a catalog.
    pub fn new(catalog: Catalog) -> Engine {
        Engine::with_versions(catalog, Vec::new(), Settings::default())
    }

    /// Builds an engine for a catalog plus older journey versions that customers' instances may
    /// still run on.
    pub fn with_versions(
        catalog: Catalog,
        older: impl IntoIterator<Item = Arc<Journey>>,
        settings: Settings,
    ) -> Engine {
        let mut versions: FastMap<Vec<Arc<Journey>>> = FastMap::default();
        for j in older.into_iter().chain(catalog.journeys.iter().cloned()) {
            let known = versions.entry(j.id.clone()).or_default();
            // A later one replaces an earlier one of the same version (the catalog wins).
            match known.iter_mut().find(|k| k.version == j.version) {
                Some(k) => *k = j,
                None => known.push(j),
            }
        }
        let mut events: FastMap<Roles> = FastMap::default();
        for t in [
            PROFILE_UPDATED,
            CONSENT_CHANGED,
            ERASURE_REQUESTED,
            CUSTOMER_MERGED,
        ] {
            events.entry(t.to_owned()).or_default();
        }
        for j in versions.values().flatten() {
            for t in event_types(j) {
                events.entry(t).or_default();
            }
        }
        for (i, j) in catalog.journeys.iter().enumerate() {
            match &j.entry.trigger {
                Trigger::Event(t) => events.entry(t.clone()).or_default().entry.push(i),
                Trigger::Inactivity { event, .. } => {
                    events.entry(event.clone()).or_default().inactivity.push(i)
                }
                Trigger::Audience { .. } => {}
            }
        }
        let cap_window = catalog
            .policies
            .frequency_caps
            .iter()
            .map(|c| c.per)
            .max()
            .unwrap_or(0);
        Engine {
            current: catalog.journeys,
            versions,
            policies: catalog.policies,
            settings,
            events,
            cap_window,
            status: std::collections::BTreeMap::new(),
        }
    }

    /// This engine with journey `id`'s status set (contract v2, journey status). Customers feel
    /// it from their next input; [`Input::Status`] applies what it does at once.
    pub fn with_status(&self, id: &str, status: Status) -> Engine {
        let mut e = self.clone();
        if status == Status::Running {
            e.status.remove(id);
        } else {
            e.status.insert(id.to_owned(), status);
        }
        e
    }

    /// Whether any journey's status is other than running.
    pub fn any_status(&self) -> bool {
        !self.status.is_empty()
    }

    /// The status of journey `id`.
    pub fn status(&self, id: &str) -> Status {
        if self.status.is_empty() {
            return Status::Running;
        }
        self.status.get(id).copied().unwrap_or(Status::Running)
    }

    /// The current journeys, in arbitration order.
    pub fn journeys(&self) -> &[Arc<Journey>] {
        &self.current
    }

    /// The contact policies.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The limits the engine runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A journey by id and version (current or older).
    pub fn journey(&self, id: &str, version: u32) -> Option<&Arc<Journey>> {
        self.versions.get(id)?.iter().find(|j| j.version == version)
    }

    /// Whether any journey or special rule looks at events of this type. Events of other types
    /// change nothing but the clock (and let due timers run).
    pub fn is_relevant(&self, event_type: &str) -> bool {
        self.events.contains_key(event_type)
    }

    /// Processes one input for one customer at `now` and returns the effects. The state is
    /// updated in place. Time never goes back: `now` earlier than the customer's clock counts
    /// as the clock.
    pub fn process(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        input: Input<'_>,
        now: Millis,
    ) -> Effects {
        self.drive(state, customer_id, now, |run, now| match input {
            Input::Event(ev) => run.on_event(ev, now),
            Input::Status(id) => run.on_status(id, now),
            Input::Apply(id, status) => run.apply_status(id, status, now),
            // The run is given by `run_due`, with every other run due since the customer's
            // last input, in time order; given again, it does nothing.
            Input::Audience(_) => {}
            Input::Timer => {}
        })
    }

    /// Merges customer `from` (A) into customer `into` (B) for a `customer_merged` event
    /// (contract v2, identity), then processes the event as an ordinary event of B.
    ///
    /// Whatever is due for either customer runs first. Then A's profile and consent are added
    /// to B's (B's values win), frequency-cap counts and entry records are combined (the later
    /// entry counts; for an inactivity trigger, the later last event), and each active instance
    /// of A moves to B with its position, timers, held and outstanding sends, unless B has an
    /// active instance of the same journey: then A's ends (reason `merged`) and its outstanding
    /// sends are cancelled (reason `exited`). A cancel carries the customer id of the send it
    /// cancels, now and later. `from` is left blank: whoever keeps the customers makes A an
    /// alias of B, drops A's state and timer, and moves A's history to B's with
    /// [`merge_history`] and [`Merged::journeys`].
    ///
    /// The caller resolves aliases first: merging a customer into itself is not a merge (process
    /// the event as an ordinary one).
    pub fn merge(
        &self,
        from: &mut CustomerState,
        from_id: &str,
        into: &mut CustomerState,
        into_id: &str,
        event: &Event,
        now: Millis,
    ) -> Merged {
        // One time for both: whatever is due for either runs before the merge.
        let now = now.max(from.clock).max(into.clock);
        let before = from.wake;
        let mut from_fx = self.drive(from, from_id, now, |_, _| {});
        let absorbed = std::mem::take(from);
        // A's timer goes with A: whatever it was before the merge is cleared, nothing is set.
        from_fx.timer = TimerChange {
            clear: before,
            set: None,
        };
        let mut moved = (Vec::new(), Vec::new());
        let into_fx = self.drive(into, into_id, now, |run, now| {
            moved = run.absorb(absorbed, from_id, now);
            run.on_event(event, now);
        });
        Merged {
            from: from_fx,
            into: into_fx,
            journeys: moved.0,
            moved: moved.1,
        }
    }

    /// Runs what is due for a customer at `now`, then `input`'s work, then what that made due;
    /// prunes, and reports the timer change. Every input goes through here.
    fn drive(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        now: Millis,
        input: impl FnOnce(&mut Run<'_, '_>, Millis),
    ) -> Effects {
        let before = state.wake;
        let known = state.clock != 0 || *state != CustomerState::default();
        let now = now.max(state.clock);
        let mut run = Run {
            engine: self,
            st: state,
            cid: customer_id,
            fx: Effects::default(),
            known,
        };
        run.settle_status(now);
        run.run_due(now);
        run.st.clock = now;
        input(&mut run, now);
        run.run_due(now);
        run.st.clock = now;
        run.prune(now);
        let after = run.st.next_deadline();
        run.st.wake = after;
        let mut fx = run.fx;
        if before != after {
            fx.timer = TimerChange {
                clear: before,
                set: after,
            };
        }
        fx
    }
}

/// What [`Engine::merge`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// The effects on the merged customer (A): what was due for them before the merge (their
    /// actions carry A's id), and the clearing of their timer. The records are in A's journey
    /// table: move them with A's history (see [`merge_history`]).
    pub from: Effects,
    /// The effects on the surviving customer (B): the merge, then the event.
    pub into: Effects,
    /// Where each entry of A's journey table went in B's (by A's index).
    pub journeys: Vec<u16>,
    /// The journeys (by id) whose goal came from A to B: those whose active instance moved,
    /// or whose later entry was A's when neither had an active instance. (Whoever counts
    /// experiment arms per instance moves A's for these.)
    pub moved: Vec<String>,
}

/// Moves a merged customer's history (`from`, in their journey table) into the surviving
/// customer's (`into`): journey references are mapped with `journeys` (see
/// [`Merged::journeys`]), the two are interleaved by time (the surviving customer's first at
/// equal times), and at most `limit` are kept (the oldest go first).
pub fn merge_history(into: &mut Vec<Record>, from: Vec<Record>, journeys: &[u16], limit: usize) {
    let moved = from.into_iter().map(|mut r| {
        r.j = r.j.and_then(|j| journeys.get(usize::from(j)).copied());
        r
    });
    into.extend(moved);
    into.sort_by_key(|r| r.at);
    if into.len() > limit {
        into.drain(..into.len() - limit);
    }
}

/// Appends an input's history records to a customer's bounded history, oldest first, keeping at
/// most `limit` (the oldest go first).
///
/// A trigger skipped again and again (a busy event type) keeps one record, the latest: a skip
/// record equal to the last one but for its time replaces it.
pub fn append_history(history: &mut Vec<Record>, records: &[Record], limit: usize) {
    for rec in records {
        if let Some(last) = history.last_mut() {
            if matches!(rec.what, What::EntrySkipped(_))
                && last.j == rec.j
                && last.step == rec.step
                && last.what == rec.what
            {
                last.at = rec.at;
                continue;
            }
        }
        history.push(rec.clone());
    }
    if history.len() > limit {
        history.drain(..history.len() - limit);
    }
}

/// Every event type a journey reacts to.
fn event_types(j: &Journey) -> Vec<String> {
    let mut out = Vec::new();
    match &j.entry.trigger {
        Trigger::Event(t) => out.push(t.clone()),
        Trigger::Inactivity { event, .. } => out.push(event.clone()),
        Trigger::Audience { .. } => {}
    }
    out.extend(j.exit_on.iter().cloned());
    out.extend(j.goal.iter().map(|g| g.event.clone()));
    for s in &j.steps {
        match &s.kind {
            StepKind::Send(send) => out.extend(send.cancel_on.iter().cloned()),
            StepKind::WaitFor(w) => out.extend(w.events.iter().cloned()),
            _ => {}
        }
    }
    out
}

fn stored(ev: &Event, keep_attributes: bool) -> StoredEvent {
    StoredEvent {
        id: ev.event_id.clone(),
        event_type: ev.event_type.clone(),
        channel: ev.channel.clone(),
        occurred_at: ev.occurred_at,
        attributes: if keep_attributes {
            ev.attributes.clone()
        } else {
            Attributes::new()
        },
    }
}

fn view_of(ev: &Event) -> EventView<'_> {
    EventView {
        id: &ev.event_id,
        event_type: &ev.event_type,
        channel: ev.channel.as_deref(),
        occurred_at: ev.occurred_at,
        attributes: &ev.attributes,
    }
}

fn view_of_stored(ev: &StoredEvent) -> EventView<'_> {
    EventView {
        id: &ev.id,
        event_type: &ev.event_type,
        channel: ev.channel.as_deref(),
        occurred_at: ev.occurred_at,
        attributes: &ev.attributes,
    }
}

/// One input's work on one customer.
struct Run<'e, 's> {
    engine: &'e Engine,
    st: &'s mut CustomerState,
    cid: &'s str,
    fx: Effects,
    /// Whether the customer was known before this input (had a state): only a known customer
    /// is given the audience runs due since their last input.
    known: bool,
}

impl Run<'_, '_> {
    fn record(
        &mut self,
        j: Option<u16>,
        version: u32,
        step: Option<usize>,
        what: What,
        at: Millis,
    ) {
        self.fx.records.push(Record {
            at,
            j,
            version,
            step: step.map(|s| s as u16),
            what,
        });
    }

    fn timezone(&self) -> Tz {
        self.st
            .profile
            .get("timezone")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.engine.policies.default_timezone)
    }

    /// Evaluates a condition; a failure is recorded and counts as false.
    fn holds(
        &mut self,
        expr: &Expr,
        event: Option<EventView<'_>>,
        at: (Option<u16>, u32, Option<usize>),
        now: Millis,
    ) -> bool {
        match eval_bool(expr, event, &self.st.profile, now) {
            Ok(b) => b,
            Err(error) => {
                let what = What::ExprFailed {
                    expr: expr.source().to_owned(),
                    error,
                };
                self.record(at.0, at.1, at.2, what, now);
                false
            }
        }
    }

    fn journey_of(&self, j: u16, version: u32) -> Option<Arc<Journey>> {
        let id = &self.st.journeys[j as usize].id;
        self.engine.journey(id, version).cloned()
    }

    /// The journey an instance runs; an instance whose version is unknown is ended.
    fn instance_journey(&mut self, idx: usize, now: Millis) -> Option<Arc<Journey>> {
        let (j, version) = (self.st.instances[idx].j, self.st.instances[idx].version);
        let journey = self.journey_of(j, version);
        if journey.is_none() {
            self.end_instance(idx, Ending::VersionGone, now);
        }
        journey
    }

    /// The instance of journey `j` with key `key`, if still active, with the journey version it
    /// runs (an instance whose version is unknown is ended).
    fn live_instance(&mut self, j: u16, key: u64, now: Millis) -> Option<(usize, Arc<Journey>)> {
        let idx = self
            .st
            .instances
            .iter()
            .position(|i| i.j == j && i.key == key)?;
        let journey = self.instance_journey(idx, now)?;
        Some((idx, journey))
    }

    fn end_instance(&mut self, idx: usize, ending: Ending, now: Millis) {
        let inst = self.st.instances.remove(idx);
        self.record(
            Some(inst.j),
            inst.version,
            Some(inst.step as usize),
            What::Ended(ending),
            now,
        );
    }
}

mod events;
mod merge;
mod sends;
mod steps;
mod timers;
