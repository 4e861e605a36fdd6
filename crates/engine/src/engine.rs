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

use crate::eval::{eval, eval_bool, EventView};
use crate::ids;
use crate::localtime::{minute_of_day, next_local_time};
use crate::state::*;
use chrono_tz::Tz;
use journeyd_journey::{Catalog, Category, Expr, Journey, Policies, StepKind, Target, Trigger};
use journeyd_types::{Action, ActionKind, Attributes, CancelReason, Event, Millis, Value};
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
    /// active instance at a time and to the journey status.
    Audience(&'a str),
    /// The status of this journey (by id) changed: apply what the new status (the engine's)
    /// does to the customer at once (a stop ends their instance and cancels the journey's
    /// outstanding sends; a resume releases the sends their paused instance stopped at).
    Status(&'a str),
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
        for t in [PROFILE_UPDATED, CONSENT_CHANGED, ERASURE_REQUESTED] {
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
        let before = state.wake;
        let now = now.max(state.clock);
        let mut run = Run {
            engine: self,
            st: state,
            cid: customer_id,
            fx: Effects::default(),
        };
        run.run_due(now);
        match input {
            Input::Event(ev) => {
                run.st.clock = now;
                run.on_event(ev, now);
                run.run_due(now);
            }
            Input::Status(id) => {
                run.st.clock = now;
                run.on_status(id, now);
                run.run_due(now);
            }
            Input::Audience(id) => {
                run.st.clock = now;
                run.on_audience(id, now);
                run.run_due(now);
            }
            Input::Timer => {}
        }
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

    // ---- timers -------------------------------------------------------------------------

    /// Runs every deadline due at or before `now`, each at its own time, in due order.
    fn run_due(&mut self, now: Millis) {
        while let Some(due) = self.st.next_deadline().filter(|d| *d <= now) {
            let t = due.max(self.st.clock);
            self.st.clock = t;
            let mut batch = Vec::new();
            self.release_held(due, &mut batch);
            self.resume_waits(due, t, &mut batch);
            self.fire_inactivity(due, t, &mut batch);
            self.apply_sends(batch, t);
        }
    }

    fn release_held(&mut self, due: Millis, batch: &mut Vec<Intent>) {
        let mut i = 0;
        while i < self.st.held.len() {
            if self.st.held[i].release_at > due {
                i += 1;
                continue;
            }
            let h = self.st.held.remove(i);
            if let Some(journey) = self.journey_of(h.j, h.version) {
                batch.push(Intent {
                    journey,
                    j: h.j,
                    step: h.step,
                    key: h.key,
                    id: h.id,
                    vars: h.vars,
                });
            }
        }
    }

    fn resume_waits(&mut self, due: Millis, t: Millis, batch: &mut Vec<Intent>) {
        let waiting: Vec<(u16, u64)> = self
            .st
            .instances
            .iter()
            .filter(|i| i.deadline.is_some_and(|d| d <= due))
            .map(|i| (i.j, i.key))
            .collect();
        for (j, key) in waiting {
            let Some((idx, journey)) = self.live_instance(j, key, t) else {
                continue;
            };
            let inst = &mut self.st.instances[idx];
            inst.deadline = None;
            let step = inst.step as usize;
            let version = inst.version;
            let target = match &journey.steps[step].kind {
                StepKind::WaitFor(w) => {
                    self.record(Some(j), version, Some(step), What::TimedOut, t);
                    w.on_timeout
                }
                _ => journey.steps[step].next,
            };
            let event = self.st.instances[idx].event.clone();
            self.run_steps(
                idx,
                &journey,
                target,
                t,
                event.as_ref().map(view_of_stored),
                batch,
            );
        }
    }

    fn fire_inactivity(&mut self, due: Millis, t: Millis, batch: &mut Vec<Intent>) {
        for j in 0..self.st.journeys.len() {
            let j = j as u16;
            let mem = &mut self.st.journeys[j as usize];
            if mem.inactivity.as_ref().is_none_or(|a| a.due > due) {
                continue;
            }
            let Some(arm) = mem.inactivity.take() else {
                continue;
            };
            let current = self.engine.current.iter().find(|c| {
                c.id == self.st.journeys[j as usize].id
                    && matches!(c.entry.trigger, Trigger::Inactivity { .. })
            });
            let Some(journey) = current.cloned() else {
                continue;
            };
            if self.st.instance_of(j).is_some() {
                continue;
            }
            let seed = format!("inactivity:{}", arm.event.id);
            let via = format!("inactivity:{}", arm.event.event_type);
            self.try_enter(
                &journey,
                j,
                Some(view_of_stored(&arm.event)),
                &seed,
                via,
                t,
                batch,
            );
        }
    }

    // ---- events -------------------------------------------------------------------------

    fn on_event(&mut self, ev: &Event, now: Millis) {
        if ev.event_type == ERASURE_REQUESTED {
            self.erase(now);
            return;
        }
        self.apply_special(ev, now);
        let Some(roles) = self.engine.events.get(ev.event_type.as_str()) else {
            return;
        };
        self.cancel_responded(ev, now);
        self.arm_inactivity(ev, &roles.inactivity);
        self.check_goals(ev, now);
        let mut batch = Vec::new();
        let active: Vec<(u16, u64)> = self.st.instances.iter().map(|i| (i.j, i.key)).collect();
        for &(j, key) in &active {
            let Some((idx, journey)) = self.live_instance(j, key, now) else {
                continue;
            };
            if journey.exit_on.contains(&ev.event_type) {
                self.exit_on(idx, ev, now);
                continue;
            }
            let step = self.st.instances[idx].step as usize;
            let StepKind::WaitFor(w) = &journey.steps[step].kind else {
                continue;
            };
            if !w.events.contains(&ev.event_type) {
                continue;
            }
            let version = journey.version;
            if let Some(c) = &w.condition {
                if !self.holds(c, Some(view_of(ev)), (Some(j), version, Some(step)), now) {
                    continue;
                }
            }
            let what = What::Resumed {
                event: ev.event_type.clone(),
            };
            self.record(Some(j), version, Some(step), what, now);
            let inst = &mut self.st.instances[idx];
            inst.deadline = None;
            if journey.steps_use_event {
                inst.event = Some(stored(ev, true));
            }
            self.run_steps(
                idx,
                &journey,
                w.on_event,
                now,
                Some(view_of(ev)),
                &mut batch,
            );
        }
        for &ji in &roles.entry {
            let journey = self.engine.current[ji].clone();
            let j = self.st.journey_index(&journey.id);
            if active.iter().any(|(a, _)| *a == j) {
                continue;
            }
            let via = ev.event_type.clone();
            self.try_enter(
                &journey,
                j,
                Some(view_of(ev)),
                &ev.event_id,
                via,
                now,
                &mut batch,
            );
        }
        self.apply_sends(batch, now);
    }

    /// Erasure (contract v2): every outstanding send is cancelled (reason `erased`), and then
    /// nothing of the customer is kept: instances, held sends, timers, profile, consent, entry
    /// records. The event reaches no journey; a later event with the id starts a new customer.
    fn erase(&mut self, now: Millis) {
        for o in std::mem::take(&mut self.st.outstanding) {
            if o.expires_at > now {
                self.cancel(o, CancelReason::Erased, now);
            }
        }
        *self.st = CustomerState {
            clock: now,
            ..CustomerState::default()
        };
        self.fx.records.clear();
        self.fx.erased = true;
    }

    fn apply_special(&mut self, ev: &Event, now: Millis) {
        match ev.event_type.as_str() {
            PROFILE_UPDATED => {
                for (k, v) in &ev.attributes {
                    if *v == Value::Null {
                        self.st.profile.remove(k);
                    } else {
                        self.st.profile.insert(k.clone(), v.clone());
                    }
                }
            }
            CONSENT_CHANGED => {
                let channel = ev.attributes.get("channel").and_then(Value::as_str);
                let granted = ev.attributes.get("granted").and_then(Value::as_bool);
                match (channel, granted) {
                    (Some(c), Some(g)) => self.st.set_consent(c, g),
                    _ => {
                        let why = "consent_changed needs attributes `channel` (string) and `granted` (bool)".to_owned();
                        self.record(None, 0, None, What::Ignored { why }, now);
                    }
                }
            }
            _ => {}
        }
    }

    /// An audience run of journey `id` for this customer (see [`Input::Audience`]).
    fn on_audience(&mut self, id: &str, now: Millis) {
        let Some(journey) = self
            .engine
            .current
            .iter()
            .find(|j| j.id == id && matches!(j.entry.trigger, Trigger::Audience { .. }))
            .cloned()
        else {
            return;
        };
        let none = Attributes::new();
        let seed = format!("audience:{now}");
        let view = EventView {
            id: &seed,
            event_type: "audience",
            channel: None,
            occurred_at: now,
            attributes: &none,
        };
        // A run touches every known customer: one for whom the condition does not hold is
        // left as they were (no journey record, no history line), so that a campaign costs
        // nothing to those it does not reach.
        if let Some(c) = &journey.entry.condition {
            let member = self.st.journeys.iter().any(|m| m.id == journey.id);
            match eval_bool(c, Some(view), &self.st.profile, now) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    if member {
                        let j = self.st.journey_index(&journey.id);
                        let what = What::ExprFailed {
                            expr: c.source().to_owned(),
                            error,
                        };
                        self.record(Some(j), journey.version, None, what, now);
                    }
                    return;
                }
            }
        }
        let j = self.st.journey_index(&journey.id);
        if self.st.instance_of(j).is_some() {
            let what = What::EntrySkipped(Skip::Active);
            self.record(Some(j), journey.version, None, what, now);
            return;
        }
        let mut batch = Vec::new();
        self.try_enter(
            &journey,
            j,
            Some(view),
            &seed,
            "audience".to_owned(),
            now,
            &mut batch,
        );
        self.apply_sends(batch, now);
    }

    /// What journey `id`'s new status does to this customer at once: a stop ends the active
    /// instance (history `stopped`), drops its held sends and cancels every outstanding send of
    /// the journey (reason `stopped`); a resume releases the send a paused instance stopped at,
    /// and the instance goes on.
    fn on_status(&mut self, id: &str, now: Millis) {
        let Some(j) = self.st.journeys.iter().position(|m| m.id == id) else {
            return;
        };
        let j = j as u16;
        match self.engine.status(id) {
            Status::Stopped => {
                let mut i = 0;
                while i < self.st.held.len() {
                    if self.st.held[i].j == j {
                        let h = self.st.held.remove(i);
                        let what = What::HeldDropped {
                            id: h.id,
                            reason: CancelReason::Stopped,
                            event: String::new(),
                        };
                        self.record(Some(j), h.version, Some(h.step as usize), what, now);
                    } else {
                        i += 1;
                    }
                }
                if let Some(idx) = self.st.instances.iter().position(|i| i.j == j) {
                    self.end_instance(idx, Ending::Stopped, now);
                }
                let mut i = 0;
                while i < self.st.outstanding.len() {
                    let o = &self.st.outstanding[i];
                    if o.j == j && o.expires_at > now {
                        let o = self.st.outstanding.remove(i);
                        self.cancel(o, CancelReason::Stopped, now);
                    } else {
                        i += 1;
                    }
                }
            }
            Status::Running => {
                let parked = self
                    .st
                    .instances
                    .iter()
                    .position(|i| i.j == j && i.deadline.is_none());
                let Some(idx) = parked else {
                    return;
                };
                let inst = &self.st.instances[idx];
                let (key, step) = (inst.key, inst.step as usize);
                let Some((idx, journey)) = self.live_instance(j, key, now) else {
                    return;
                };
                if !matches!(
                    journey.steps.get(step).map(|s| &s.kind),
                    Some(StepKind::Send(_))
                ) {
                    return;
                }
                let event = self.st.instances[idx].event.clone();
                let mut batch = Vec::new();
                self.run_steps(
                    idx,
                    &journey,
                    Some(step),
                    now,
                    event.as_ref().map(view_of_stored),
                    &mut batch,
                );
                self.apply_sends(batch, now);
            }
            Status::Paused | Status::Draining => {}
        }
    }

    fn cancel_on(&self, o: &Outstanding) -> Option<Arc<Journey>> {
        self.journey_of(o.j, o.version)
    }

    fn cancel_responded(&mut self, ev: &Event, now: Millis) {
        let mut i = 0;
        while i < self.st.outstanding.len() {
            let o = &self.st.outstanding[i];
            let from_other_channel = ev.channel.as_deref() != Some(o.channel.as_str());
            let listed = from_other_channel
                && o.expires_at > now
                && self
                    .cancel_on(o)
                    .is_some_and(|j| match &j.steps[o.step as usize].kind {
                        StepKind::Send(s) => s.cancel_on.contains(&ev.event_type),
                        _ => false,
                    });
            if listed {
                let o = self.st.outstanding.remove(i);
                self.cancel(o, CancelReason::Responded, now);
            } else {
                i += 1;
            }
        }
        // A send held by quiet hours has reached no channel yet: it is dropped, without a
        // send or a cancel (contract v2, "Held sends and cancel_on").
        let mut i = 0;
        while i < self.st.held.len() {
            let h = &self.st.held[i];
            let responded = self.journey_of(h.j, h.version).is_some_and(|j| {
                match &j.steps[h.step as usize].kind {
                    StepKind::Send(s) => {
                        ev.channel.as_deref() != Some(s.channel.as_str())
                            && s.cancel_on.contains(&ev.event_type)
                    }
                    _ => false,
                }
            });
            if responded {
                let h = self.st.held.remove(i);
                let what = What::HeldDropped {
                    id: h.id,
                    reason: CancelReason::Responded,
                    event: ev.event_type.clone(),
                };
                self.record(Some(h.j), h.version, Some(h.step as usize), what, now);
            } else {
                i += 1;
            }
        }
    }

    fn exit_on(&mut self, idx: usize, ev: &Event, now: Millis) {
        let (j, key) = (self.st.instances[idx].j, self.st.instances[idx].key);
        let mut i = 0;
        while i < self.st.outstanding.len() {
            let o = &self.st.outstanding[i];
            if o.j == j && o.key == key && o.expires_at > now {
                let o = self.st.outstanding.remove(i);
                self.cancel(o, CancelReason::Exited, now);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.st.held.len() {
            if self.st.held[i].j == j && self.st.held[i].key == key {
                let h = self.st.held.remove(i);
                let step = Some(h.step as usize);
                self.record(Some(j), h.version, step, What::Dropped { id: h.id }, now);
            } else {
                i += 1;
            }
        }
        self.end_instance(idx, Ending::ExitOn(ev.event_type.clone()), now);
    }

    fn arm_inactivity(&mut self, ev: &Event, list: &[usize]) {
        for &ji in list {
            let journey = &self.engine.current[ji];
            let Trigger::Inactivity { after, .. } = journey.entry.trigger else {
                continue;
            };
            let keep = journey.steps_use_event
                || journey
                    .entry
                    .condition
                    .as_ref()
                    .is_some_and(Expr::uses_event);
            let j = self.st.journey_index(&journey.id) as usize;
            let mem = &mut self.st.journeys[j];
            // An event older than the one that armed the trigger does not move it back.
            if mem
                .inactivity
                .as_ref()
                .is_some_and(|a| a.event.occurred_at > ev.occurred_at)
            {
                continue;
            }
            mem.inactivity = Some(Inactivity {
                due: ev.occurred_at.saturating_add(after),
                event: stored(ev, keep),
            });
        }
    }

    fn check_goals(&mut self, ev: &Event, now: Millis) {
        for j in 0..self.st.journeys.len() {
            let mem = &self.st.journeys[j];
            let (Some(entered), false) = (mem.entered_at, mem.converted) else {
                continue;
            };
            let version = mem.version;
            let Some(journey) = self.journey_of(j as u16, version) else {
                continue;
            };
            let Some(goal) = &journey.goal else {
                continue;
            };
            if goal.event == ev.event_type && now - entered <= goal.within {
                self.st.journeys[j].converted = true;
                self.record(Some(j as u16), version, None, What::Converted, now);
            }
        }
    }

    // ---- steps --------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn try_enter(
        &mut self,
        journey: &Arc<Journey>,
        j: u16,
        event: Option<EventView<'_>>,
        seed: &str,
        via: String,
        now: Millis,
        batch: &mut Vec<Intent>,
    ) {
        let v = journey.version;
        let status = self.engine.status(&journey.id);
        if status != Status::Running {
            // Paused, draining or stopped: no entry, no cooldown.
            self.record(
                Some(j),
                v,
                None,
                What::EntrySkipped(Skip::Status(status)),
                now,
            );
            return;
        }
        if let Some(prev) = self.st.journeys[j as usize].entered_at {
            let skip = match journey.entry.reentry {
                journeyd_journey::Reentry::Never => Some(Skip::ReentryNever),
                journeyd_journey::Reentry::Always => None,
                journeyd_journey::Reentry::Cooldown(d) => {
                    (now < prev.saturating_add(d)).then(|| Skip::Cooldown {
                        until: prev.saturating_add(d),
                    })
                }
            };
            if let Some(skip) = skip {
                self.record(Some(j), v, None, What::EntrySkipped(skip), now);
                return;
            }
        }
        if let Some(c) = &journey.entry.condition {
            if !self.holds(c, event, (Some(j), v, None), now) {
                self.record(
                    Some(j),
                    v,
                    None,
                    What::EntrySkipped(Skip::ConditionFalse),
                    now,
                );
                return;
            }
        }
        let mem = &mut self.st.journeys[j as usize];
        mem.entered_at = Some(now);
        mem.version = v;
        mem.converted = false;
        let stored_event = match (journey.steps_use_event, event) {
            (true, Some(e)) => Some(StoredEvent {
                id: e.id.to_owned(),
                event_type: e.event_type.to_owned(),
                channel: e.channel.map(str::to_owned),
                occurred_at: e.occurred_at,
                attributes: e.attributes.clone(),
            }),
            _ => None,
        };
        self.st.instances.push(Instance {
            j,
            version: v,
            key: ids::instance_key(&journey.id, seed),
            step: 0,
            entered_at: now,
            deadline: None,
            visits: 0,
            event: stored_event,
        });
        self.record(Some(j), v, None, What::Entered { via }, now);
        let idx = self.st.instances.len() - 1;
        self.run_steps(idx, journey, Some(0), now, event, batch);
    }

    /// Runs steps from `target` until the instance waits or ends.
    fn run_steps(
        &mut self,
        idx: usize,
        journey: &Arc<Journey>,
        mut target: Target,
        now: Millis,
        event: Option<EventView<'_>>,
        batch: &mut Vec<Intent>,
    ) {
        let (j, v) = (self.st.instances[idx].j, journey.version);
        for _ in 0..self.engine.settings.step_limit {
            let Some(si) = target else {
                self.end_instance(idx, Ending::Finished, now);
                return;
            };
            let step = &journey.steps[si];
            self.st.instances[idx].step = si as u16;
            if matches!(step.kind, StepKind::Send(_))
                && self.engine.status(&journey.id) == Status::Paused
            {
                // Stops at the send, holding it, until the journey resumes (no deadline: a
                // send step without one is a paused instance's).
                self.st.instances[idx].deadline = None;
                self.record(Some(j), v, Some(si), What::Parked, now);
                return;
            }
            self.record(Some(j), v, Some(si), What::Step, now);
            let at = (Some(j), v, Some(si));
            match &step.kind {
                StepKind::Send(send) => {
                    let mut vars = Attributes::new();
                    for (name, expr) in &send.vars {
                        match eval(expr, event, &self.st.profile, now) {
                            Ok(value) => {
                                vars.insert(name.clone(), value);
                            }
                            Err(error) => {
                                let what = What::ExprFailed {
                                    expr: expr.source().to_owned(),
                                    error,
                                };
                                self.record(at.0, at.1, at.2, what, now);
                            }
                        }
                    }
                    let inst = &mut self.st.instances[idx];
                    let id = ids::send_id(self.cid, &journey.id, inst.key, &step.id, inst.visits);
                    inst.visits += 1;
                    batch.push(Intent {
                        journey: journey.clone(),
                        j,
                        step: si as u16,
                        key: inst.key,
                        id,
                        vars,
                    });
                    target = step.next;
                }
                StepKind::Wait(d) => return self.wait_until(idx, now.saturating_add(*d), at, now),
                StepKind::WaitFor(w) => {
                    return self.wait_until(idx, now.saturating_add(w.timeout), at, now)
                }
                StepKind::WaitUntil(w) => {
                    let until = next_local_time(self.timezone(), now, w.minute_of_day, w.days);
                    return self.wait_until(idx, until, at, now);
                }
                StepKind::WaitDate(w) => {
                    let source = w.date.source();
                    let moment = match eval(&w.date, event, &self.st.profile, now) {
                        Ok(v) => crate::localtime::date_moment(
                            self.timezone(),
                            &v,
                            w.offset_days,
                            w.minute_of_day,
                        )
                        .map_err(|why| format!("{source} {why}")),
                        Err(e) => Err(format!("{source} did not evaluate: {e}")),
                    };
                    match moment {
                        Ok(until) if until > now => return self.wait_until(idx, until, at, now),
                        Ok(until) => {
                            let why =
                                format!("{} is past", journeyd_types::time::format_rfc3339(until));
                            self.record(at.0, at.1, at.2, What::DatePassed { why }, now);
                        }
                        Err(why) => {
                            self.record(at.0, at.1, at.2, What::DatePassed { why }, now);
                        }
                    }
                    target = w.on_past.or(step.next);
                }
                StepKind::Branch(b) => {
                    let mut chosen = None;
                    for (k, (cond, to)) in b.arms.iter().enumerate() {
                        if self.holds(cond, event, at, now) {
                            chosen = Some((k as u16, *to));
                            break;
                        }
                    }
                    let arm = chosen.map(|c| c.0);
                    target = chosen.map_or(b.otherwise, |c| c.1);
                    self.record(at.0, at.1, at.2, What::Branch { arm }, now);
                }
                StepKind::Decide(d) => {
                    let (option, scores) = self.decide(d, event, at, now);
                    target = option.map_or(d.otherwise, |k| d.options[k as usize].next);
                    self.record(at.0, at.1, at.2, What::Decided { option, scores }, now);
                }
                StepKind::Split(arms) => {
                    let total: u64 = arms.iter().map(|a| u64::from(a.weight)).sum();
                    let mut pick = ids::bucket(self.cid, &journey.id, &step.id, total);
                    let mut chosen = arms.len() - 1;
                    for (k, a) in arms.iter().enumerate() {
                        if pick < u64::from(a.weight) {
                            chosen = k;
                            break;
                        }
                        pick -= u64::from(a.weight);
                    }
                    target = arms[chosen].next;
                    let what = What::Split { arm: chosen as u16 };
                    self.record(at.0, at.1, at.2, what, now);
                }
                StepKind::Update(assignments) => {
                    let mut values = Vec::with_capacity(assignments.len());
                    for (name, expr) in assignments {
                        match eval(expr, event, &self.st.profile, now) {
                            Ok(value) => values.push((name.clone(), value)),
                            Err(error) => {
                                let what = What::ExprFailed {
                                    expr: expr.source().to_owned(),
                                    error,
                                };
                                self.record(at.0, at.1, at.2, what, now);
                            }
                        }
                    }
                    let attrs = values.iter().map(|(n, _)| n.clone()).collect();
                    for (name, value) in values {
                        if value == Value::Null {
                            self.st.profile.remove(&name);
                        } else {
                            self.st.profile.insert(name, value);
                        }
                    }
                    self.record(at.0, at.1, at.2, What::Updated { attrs }, now);
                    target = step.next;
                }
                StepKind::Exit => {
                    self.end_instance(idx, Ending::ExitStep, now);
                    return;
                }
            }
        }
        self.end_instance(idx, Ending::StepLimit, now);
    }

    /// Next best action: the eligible option with the highest score (the earlier on a tie),
    /// and the score of every eligible option. An option whose `if` or `score` fails to
    /// evaluate, or whose score is no finite number, is not eligible (recorded).
    fn decide(
        &mut self,
        d: &journeyd_journey::Decide,
        event: Option<EventView<'_>>,
        at: (Option<u16>, u32, Option<usize>),
        now: Millis,
    ) -> (Option<u16>, Vec<(u16, f64)>) {
        let mut best: Option<(u16, f64)> = None;
        let mut scores = Vec::new();
        for (k, o) in d.options.iter().enumerate() {
            if let Some(c) = &o.condition {
                if !self.holds(c, event, at, now) {
                    continue;
                }
            }
            let score = match &o.score {
                None => Ok(0.0),
                Some(e) => match eval(e, event, &self.st.profile, now) {
                    Ok(Value::Int(i)) => Ok(i as f64),
                    Ok(Value::Float(f)) if f.is_finite() => Ok(f),
                    Ok(other) => Err((
                        e,
                        format!("the score gave a {}, not a number", other.type_name()),
                    )),
                    Err(error) => Err((e, error)),
                },
            };
            let score = match score {
                Ok(s) => s,
                Err((e, error)) => {
                    let what = What::ExprFailed {
                        expr: e.source().to_owned(),
                        error,
                    };
                    self.record(at.0, at.1, at.2, what, now);
                    continue;
                }
            };
            scores.push((k as u16, score));
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((k as u16, score));
            }
        }
        (best.map(|(k, _)| k), scores)
    }

    fn wait_until(
        &mut self,
        idx: usize,
        until: Millis,
        at: (Option<u16>, u32, Option<usize>),
        now: Millis,
    ) {
        self.st.instances[idx].deadline = Some(until);
        self.record(at.0, at.1, at.2, What::Waiting { until }, now);
    }

    // ---- sends and policies -------------------------------------------------------------

    /// Applies consent, quiet hours and caps to the sends of one input, highest priority first.
    fn apply_sends(&mut self, mut batch: Vec<Intent>, t: Millis) {
        batch.sort_by(|a, b| {
            b.journey
                .priority
                .cmp(&a.journey.priority)
                .then_with(|| a.journey.id.cmp(&b.journey.id))
        });
        for it in batch {
            let StepKind::Send(send) = &it.journey.steps[it.step as usize].kind else {
                continue;
            };
            let (j, v, step) = (Some(it.j), it.journey.version, Some(it.step as usize));
            let policies = &self.engine.policies;
            let channel = send.channel.as_str();
            if policies.consent_required.iter().any(|c| c == channel)
                && self.st.consent(channel) != Some(true)
            {
                self.record(j, v, step, What::Suppressed(Suppression::NoConsent), t);
                continue;
            }
            // Checked at release too: a customer who moved to another time zone while the send
            // was held may still be inside quiet hours where they are now.
            if let Some(q) = policies.quiet_hours.as_ref().filter(|q| q.covers(channel)) {
                let tz = self.timezone();
                if q.contains(minute_of_day(tz, t)) {
                    let until = next_local_time(tz, t, q.to, 0x7f);
                    self.st.held.push(Held {
                        id: it.id,
                        j: it.j,
                        version: v,
                        step: it.step,
                        key: it.key,
                        release_at: until,
                        vars: it.vars,
                    });
                    self.record(j, v, step, What::Held { id: it.id, until }, t);
                    continue;
                }
            }
            let service = it.journey.category == Category::Service;
            if self.cap_full(channel, service, t) {
                self.record(j, v, step, What::Suppressed(Suppression::FrequencyCap), t);
                continue;
            }
            self.fx.actions.push(Action {
                action_id: ids::format_id(it.id),
                kind: ActionKind::Send,
                customer_id: self.cid.to_owned(),
                journey: it.journey.id.clone(),
                journey_version: v,
                step: it.journey.steps[it.step as usize].id.clone(),
                channel: channel.to_owned(),
                template: send.template.clone(),
                vars: it.vars,
                cancels: None,
                reason: None,
                created_at: t,
                expires_at: Some(t.saturating_add(send.ttl)),
            });
            self.st.outstanding.push(Outstanding {
                id: it.id,
                j: it.j,
                version: v,
                step: it.step,
                key: it.key,
                channel: channel.to_owned(),
                expires_at: t.saturating_add(send.ttl),
            });
            self.st.sent.push(SentMark {
                at: t,
                channel: channel.to_owned(),
                service,
            });
            self.record(j, v, step, What::Sent { id: it.id }, t);
        }
    }

    /// Whether one more send to `channel` at `t` would break a cap that applies to it.
    fn cap_full(&self, channel: &str, service: bool, t: Millis) -> bool {
        let category = if service {
            Category::Service
        } else {
            Category::Marketing
        };
        self.engine.policies.frequency_caps.iter().any(|cap| {
            let channel_ok = |c: &str| cap.channel.as_deref().is_none_or(|cc| cc == c);
            let category_ok = |cat: Category| cap.category.is_none_or(|cc| cc == cat);
            if !channel_ok(channel) || !category_ok(category) {
                return false;
            }
            let used = self
                .st
                .sent
                .iter()
                .filter(|m| m.at > t - cap.per && m.at <= t)
                .filter(|m| channel_ok(&m.channel))
                .filter(|m| {
                    category_ok(if m.service {
                        Category::Service
                    } else {
                        Category::Marketing
                    })
                })
                .count();
            used >= cap.max as usize
        })
    }

    fn cancel(&mut self, o: Outstanding, reason: CancelReason, t: Millis) {
        let journey = self.journey_of(o.j, o.version);
        let (step, template) = match &journey {
            Some(jr) => {
                let s = &jr.steps[o.step as usize];
                let template = match &s.kind {
                    StepKind::Send(send) => send.template.clone(),
                    _ => String::new(),
                };
                (s.id.clone(), template)
            }
            None => (String::new(), String::new()),
        };
        self.fx.actions.push(Action {
            action_id: ids::format_id(ids::cancel_id(o.id)),
            kind: ActionKind::Cancel,
            customer_id: self.cid.to_owned(),
            journey: self.st.journeys[o.j as usize].id.clone(),
            journey_version: o.version,
            step,
            channel: o.channel.clone(),
            template,
            vars: Attributes::new(),
            cancels: Some(ids::format_id(o.id)),
            reason: Some(reason),
            created_at: t,
            expires_at: None,
        });
        let what = What::Cancelled { id: o.id, reason };
        self.record(Some(o.j), o.version, Some(o.step as usize), what, t);
    }

    fn prune(&mut self, now: Millis) {
        self.st.outstanding.retain(|o| o.expires_at > now);
        let window = self.engine.cap_window;
        self.st.sent.retain(|m| m.at > now - window);
        self.forget_entries(now);
    }

    /// Drops the entry records nothing can need any more: the journey's instance has ended,
    /// its current `reentry` lets the customer in again whatever the record says (`always`, or
    /// the cooldown has passed), and its goal can no longer be reached (converted, or the
    /// goal's window since the entry has passed). The journey's name stays: history records
    /// refer to it.
    fn forget_entries(&mut self, now: Millis) {
        for j in 0..self.st.journeys.len() {
            let mem = &self.st.journeys[j];
            let Some(entered) = mem.entered_at else {
                continue;
            };
            if self.st.instances.iter().any(|i| usize::from(i.j) == j) {
                continue;
            }
            // The current journey's rule decides entries (see `try_enter`); a journey no longer
            // loaded keeps its records, in case it comes back.
            let Some(current) = self.engine.current.iter().find(|x| x.id == mem.id) else {
                continue;
            };
            let reentry_free = match current.entry.reentry {
                journeyd_journey::Reentry::Never => false,
                journeyd_journey::Reentry::Always => true,
                journeyd_journey::Reentry::Cooldown(d) => now >= entered.saturating_add(d),
            };
            if !reentry_free {
                continue;
            }
            let goal_done = match self
                .engine
                .journey(&mem.id, mem.version)
                .and_then(|jr| jr.goal.as_ref())
            {
                None => true,
                Some(goal) => mem.converted || now - entered > goal.within,
            };
            if goal_done {
                let mem = &mut self.st.journeys[j];
                mem.entered_at = None;
                mem.version = 0;
                mem.converted = false;
            }
        }
    }
}
