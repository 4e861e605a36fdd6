//! Steps: entering a journey and running its steps until a wait, a send or the end.

use super::*;

impl Run<'_, '_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_enter(
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
        if let Some(prev) = self.st.last_entry(j) {
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
        // This entry is the latest now; the arms the last one took are forgotten.
        self.st.later_entries.retain(|(x, _)| *x != j);
        self.st.splits_taken.retain(|t| t.j != j);
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
    pub(super) fn run_steps(
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
                    self.took_arm(at.0, at.1, at.2, chosen);
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

    /// An entry passed a split step and took arm `arm`: the first time it passes the step, the
    /// arm is remembered (a goal reached later counts for it) and reported.
    fn took_arm(&mut self, j: Option<u16>, version: u32, step: Option<usize>, arm: usize) {
        let (Some(j), Some(step)) = (j, step) else {
            return;
        };
        let step = step as u16;
        if self
            .st
            .splits_taken
            .iter()
            .any(|t| t.j == j && t.step == step && t.version == version)
        {
            return;
        }
        let taken = SplitTaken {
            j,
            version,
            step,
            arm: arm as u16,
        };
        self.st.splits_taken.push(taken);
        self.fx.experiment.push(ArmEvent {
            taken,
            converted: false,
        });
    }

    /// Next best action: the eligible option with the highest score (the earlier on a tie),
    /// and the score of every eligible option. An option whose `if` or `score` fails to
    /// evaluate, or whose score is no finite number, is not eligible (recorded).
    pub(super) fn decide(
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

    pub(super) fn wait_until(
        &mut self,
        idx: usize,
        until: Millis,
        at: (Option<u16>, u32, Option<usize>),
        now: Millis,
    ) {
        self.st.instances[idx].deadline = Some(until);
        self.record(at.0, at.1, at.2, What::Waiting { until }, now);
    }
}
