//! Sends and policies: consent, quiet hours, frequency caps, cancels, pruning.

use super::*;

impl Run<'_, '_> {
    /// Applies consent, quiet hours and caps to the sends of one input, highest priority first.
    pub(super) fn apply_sends(&mut self, mut batch: Vec<Intent>, t: Millis) {
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
    pub(super) fn cap_full(&self, channel: &str, service: bool, t: Millis) -> bool {
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

    pub(super) fn cancel(&mut self, o: Outstanding, reason: CancelReason, t: Millis) {
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
            // A send that came with a merged customer is cancelled under their id.
            customer_id: self
                .st
                .moved_sends
                .iter()
                .find(|m| m.id == o.id)
                .map_or(self.cid, |m| m.customer.as_str())
                .to_owned(),
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

    pub(super) fn prune(&mut self, now: Millis) {
        self.st.outstanding.retain(|o| o.expires_at > now);
        if !self.st.moved_sends.is_empty() {
            let outstanding = &self.st.outstanding;
            self.st
                .moved_sends
                .retain(|m| outstanding.iter().any(|o| o.id == m.id));
        }
        let window = self.engine.cap_window;
        self.st.sent.retain(|m| m.at > now - window);
        self.forget_entries(now);
        self.forget_arms(now);
    }

    /// Drops the split arms of entries whose goal can no longer be reached (the journey has
    /// none, it was reached, or its window since the entry has passed): nothing counts them.
    pub(super) fn forget_arms(&mut self, now: Millis) {
        if self.st.splits_taken.is_empty() {
            return;
        }
        let live: Vec<bool> = self
            .st
            .journeys
            .iter()
            .map(|mem| {
                let goal = self
                    .engine
                    .journey(&mem.id, mem.version)
                    .and_then(|jr| jr.goal.as_ref());
                match (goal, mem.entered_at) {
                    (Some(goal), Some(entered)) => !mem.converted && now - entered <= goal.within,
                    _ => false,
                }
            })
            .collect();
        self.st
            .splits_taken
            .retain(|t| live.get(usize::from(t.j)).copied().unwrap_or(false));
    }

    /// Drops the entry records nothing can need any more: the journey's instance has ended,
    /// its current `reentry` lets the customer in again whatever the record says (`always`, or
    /// the cooldown has passed), and its goal can no longer be reached (converted, or the
    /// goal's window since the entry has passed). The journey's name stays: history records
    /// refer to it.
    pub(super) fn forget_entries(&mut self, now: Millis) {
        for j in 0..self.st.journeys.len() {
            let mem = &self.st.journeys[j];
            // Reentry counts from the latest entry (one may have come with a merge); the goal
            // from the entry in `journeys`.
            let Some(latest) = self.st.last_entry(j as u16) else {
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
                journeyd_journey::Reentry::Cooldown(d) => now >= latest.saturating_add(d),
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
                Some(goal) => match mem.entered_at {
                    Some(entered) => mem.converted || now - entered > goal.within,
                    None => true,
                },
            };
            if goal_done {
                let mem = &mut self.st.journeys[j];
                mem.entered_at = None;
                mem.version = 0;
                mem.converted = false;
                self.st.later_entries.retain(|(x, _)| usize::from(*x) != j);
            }
        }
    }
}
