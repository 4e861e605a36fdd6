//! Events: special events, cancels on response, exits, goals, entries; audience runs and
//! status changes.

use super::*;

impl Run<'_, '_> {
    pub(super) fn on_event(&mut self, ev: &Event, now: Millis) {
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
    pub(super) fn erase(&mut self, now: Millis) {
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

    pub(super) fn apply_special(&mut self, ev: &Event, now: Millis) {
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

    /// An audience run of journey `id` for this customer at `now` (given by `run_due`, once per
    /// run and customer: see [`Input::Audience`]).
    pub(super) fn on_audience(&mut self, id: &str, now: Millis) {
        let Some(journey) = self
            .engine
            .current
            .iter()
            .find(|j| j.id == id && matches!(j.entry.trigger, Trigger::Audience { .. }))
            .cloned()
        else {
            return;
        };
        // Most customers of a run fail a plain test on their profile: they cost no more.
        if let Some(c) = &journey.entry.condition {
            if ruled_out(c, &self.st.profile, now) {
                return;
            }
        }
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
    pub(super) fn on_status(&mut self, id: &str, now: Millis) {
        self.apply_status(id, self.engine.status(id), now);
    }

    /// What `status` does to this customer's part in journey `id` at once (see
    /// [`Input::Apply`]).
    pub(super) fn apply_status(&mut self, id: &str, status: Status, now: Millis) {
        let Some(j) = self.st.journeys.iter().position(|m| m.id == id) else {
            return;
        };
        let j = j as u16;
        match status {
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

    /// Applies what a status change does at once, if it has not been applied to this customer
    /// yet: an instance or an outstanding send of a stopped journey, or an instance parked at a
    /// send of a journey running again. Whoever changes a status applies it to every customer
    /// at once ([`Input::Status`]: the simulator does); a service that cannot reach them all at
    /// once is caught up here, at the customer's next input, before anything else runs.
    pub(super) fn settle_status(&mut self, now: Millis) {
        let mut due: Vec<String> = Vec::new();
        if self.engine.any_status() {
            for m in &self.st.journeys {
                if self.engine.status(&m.id) != Status::Stopped {
                    continue;
                }
                let j = self.st.journeys.iter().position(|x| x.id == m.id);
                let touched = j.is_some_and(|j| {
                    let j = j as u16;
                    self.st.instances.iter().any(|i| i.j == j)
                        || self.st.held.iter().any(|h| h.j == j)
                        || self
                            .st
                            .outstanding
                            .iter()
                            .any(|o| o.j == j && o.expires_at > now)
                });
                if touched {
                    due.push(m.id.clone());
                }
            }
        }
        for inst in &self.st.instances {
            if inst.deadline.is_some() {
                continue;
            }
            let id = &self.st.journeys[usize::from(inst.j)].id;
            let parked = self.engine.status(id) == Status::Running
                && self
                    .engine
                    .journey(id, inst.version)
                    .and_then(|jr| jr.steps.get(usize::from(inst.step)))
                    .is_some_and(|s| matches!(s.kind, StepKind::Send(_)));
            if parked {
                due.push(id.clone());
            }
        }
        for id in due {
            self.on_status(&id, now);
        }
    }

    pub(super) fn cancel_on(&self, o: &Outstanding) -> Option<Arc<Journey>> {
        self.journey_of(o.j, o.version)
    }

    pub(super) fn cancel_responded(&mut self, ev: &Event, now: Millis) {
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

    pub(super) fn exit_on(&mut self, idx: usize, ev: &Event, now: Millis) {
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

    pub(super) fn arm_inactivity(&mut self, ev: &Event, list: &[usize]) {
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

    pub(super) fn check_goals(&mut self, ev: &Event, now: Millis) {
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
                let j = j as u16;
                let taken = self.st.splits_taken.iter().filter(|t| t.j == j);
                self.fx.experiment.extend(taken.map(|&taken| ArmEvent {
                    taken,
                    converted: true,
                }));
            }
        }
    }
}
