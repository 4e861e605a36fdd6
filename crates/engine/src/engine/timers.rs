//! Timers: deadlines of waits, held sends and inactivity triggers, run in due order.

use super::*;

impl Run<'_, '_> {
    /// Runs every deadline and audience run due at or before `now`, each at its own time, in
    /// due order (a run before a deadline due at the same time).
    ///
    /// A known customer is given every audience run due after their clock (the time of their
    /// last input) when their next input comes, at the run's time: so a run reaches each
    /// customer exactly once, before any later input of theirs, whether the service's scan
    /// of their partition or an event of theirs comes first (`journey simulate` gives it to
    /// every known customer at its time).
    pub(super) fn run_due(&mut self, now: Millis) {
        loop {
            let deadline = self.st.next_deadline().filter(|d| *d <= now);
            let run = self.next_run(now);
            match (run, deadline) {
                (Some((at, j)), d) if d.is_none_or(|d| at <= d) => {
                    self.st.clock = at;
                    let engine = self.engine;
                    self.on_audience(&engine.current[j].id, at);
                }
                (_, Some(due)) => self.run_deadline(due),
                _ => break,
            }
        }
    }

    /// The earliest audience run after the customer's clock and at or before `now`, if they
    /// are known: its time and journey (an index into the current journeys).
    fn next_run(&self, now: Millis) -> Option<(Millis, usize)> {
        if !self.known {
            return None;
        }
        let clock = self.st.clock;
        let mut best: Option<(Millis, usize)> = None;
        for (k, j) in self.engine.current.iter().enumerate() {
            let Trigger::Audience { at, every } = j.entry.trigger else {
                continue;
            };
            let next = if clock < at {
                at
            } else {
                match every.filter(|e| *e > 0) {
                    Some(e) => at.saturating_add(((clock - at) / e + 1).saturating_mul(e)),
                    None => continue,
                }
            };
            if next <= now && best.is_none_or(|(b, _)| next < b) {
                best = Some((next, k));
            }
        }
        best
    }

    /// Runs the deadlines due at `due`.
    fn run_deadline(&mut self, due: Millis) {
        {
            let t = due.max(self.st.clock);
            self.st.clock = t;
            let mut batch = Vec::new();
            self.release_held(due, &mut batch);
            self.resume_waits(due, t, &mut batch);
            self.fire_inactivity(due, t, &mut batch);
            self.apply_sends(batch, t);
        }
    }

    pub(super) fn release_held(&mut self, due: Millis, batch: &mut Vec<Intent>) {
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

    pub(super) fn resume_waits(&mut self, due: Millis, t: Millis, batch: &mut Vec<Intent>) {
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

    pub(super) fn fire_inactivity(&mut self, due: Millis, t: Millis, batch: &mut Vec<Intent>) {
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
}
