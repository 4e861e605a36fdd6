//! Identity merge (contract v2): the surviving customer takes in the merged one.

use super::*;

impl Run<'_, '_> {
    /// Takes in customer `from_id`'s state `a` (whatever was due for them has run). Returns
    /// where each of A's journeys went in this customer's journey table, and the journeys whose
    /// goal (and so experiment arms) came from A: those whose instance moved here, or whose
    /// later entry was A's when neither had an active instance.
    pub(super) fn absorb(
        &mut self,
        a: CustomerState,
        from_id: &str,
        now: Millis,
    ) -> (Vec<u16>, Vec<String>) {
        let journeys: Vec<u16> = a
            .journeys
            .iter()
            .map(|m| self.st.journey_index(&m.id))
            .collect();
        let to = |j: u16| journeys[usize::from(j)];
        for (k, v) in a.profile {
            self.st.profile.entry(k).or_insert(v);
        }
        for (channel, granted) in a.consent {
            if self.st.consent(&channel).is_none() {
                self.st.set_consent(&channel, granted);
            }
        }
        if !a.sent.is_empty() {
            self.st.sent.extend(a.sent);
            self.st.sent.sort_by_key(|m| m.at);
        }
        // Keys are unique per customer only: everything of A's takes a key of its own here.
        let key = |k: u64| ids::rekey(k, from_id);
        // Which instances move: those of journeys this customer has no active instance of.
        let mut ended: Vec<(u16, u64)> = Vec::new();
        let mut moving: Vec<Instance> = Vec::new();
        for mut inst in a.instances {
            let j = to(inst.j);
            inst.j = j;
            inst.key = key(inst.key);
            if self.st.instance_of(j).is_some() {
                let what = What::Ended(Ending::Merged);
                self.record(Some(j), inst.version, Some(inst.step.into()), what, now);
                ended.push((j, inst.key));
            } else {
                moving.push(inst);
            }
        }
        // Entry records: the goal goes with the instance that survives (this customer's
        // active one, else the one that moves, else the later entry); `reentry` counts from
        // the later of the two entries.
        let mut goals_from_them = Vec::new();
        for (aj, theirs) in a.journeys.into_iter().enumerate() {
            let j = journeys[aj];
            let their_latest = a
                .later_entries
                .iter()
                .find(|(x, _)| usize::from(*x) == aj)
                .map(|(_, at)| *at)
                .max(theirs.entered_at);
            let latest = self.st.last_entry(j).max(their_latest);
            let mine_active = self.st.instance_of(j).is_some();
            let theirs_moves = moving.iter().any(|i| i.j == j);
            let mine = &mut self.st.journeys[usize::from(j)];
            let take_theirs = !mine_active && (theirs_moves || theirs.entered_at > mine.entered_at);
            if take_theirs {
                mine.entered_at = theirs.entered_at;
                mine.version = theirs.version;
                mine.converted = theirs.converted;
                goals_from_them.push(mine.id.clone());
                // The split arms go with the goal.
                self.st.splits_taken.retain(|t| t.j != j);
                let theirs_taken = a.splits_taken.iter().filter(|t| usize::from(t.j) == aj);
                self.st
                    .splits_taken
                    .extend(theirs_taken.map(|t| SplitTaken { j, ..*t }));
            }
            // For an inactivity entry, the later of the two last trigger events counts.
            if let Some(armed) = theirs.inactivity {
                let later = match &mine.inactivity {
                    Some(m) => armed.event.occurred_at > m.event.occurred_at,
                    None => true,
                };
                if later {
                    mine.inactivity = Some(armed);
                }
            }
            let kept = mine.entered_at;
            self.st.later_entries.retain(|(x, _)| *x != j);
            if let Some(latest) = latest.filter(|l| Some(*l) > kept) {
                self.st.later_entries.push((j, latest));
            }
        }
        self.st.instances.extend(moving);
        // Outstanding sends come along, still carrying the customer id they were sent with;
        // those of an instance that ended here are cancelled.
        for mut o in a.outstanding {
            o.j = to(o.j);
            o.key = key(o.key);
            let customer = a
                .moved_sends
                .iter()
                .find(|m| m.id == o.id)
                .map_or(from_id, |m| m.customer.as_str());
            if customer != self.cid {
                self.st.moved_sends.push(MovedSend {
                    id: o.id,
                    customer: customer.to_owned(),
                });
            }
            if ended.contains(&(o.j, o.key)) {
                if o.expires_at > now {
                    self.cancel(o, CancelReason::Exited, now);
                }
            } else {
                self.st.outstanding.push(o);
            }
        }
        for mut h in a.held {
            h.j = to(h.j);
            h.key = key(h.key);
            if ended.contains(&(h.j, h.key)) {
                let what = What::Dropped { id: h.id };
                self.record(Some(h.j), h.version, Some(h.step.into()), what, now);
            } else {
                self.st.held.push(h);
            }
        }
        let what = What::Merged {
            from: from_id.to_owned(),
        };
        self.record(None, 0, None, what, now);
        (journeys, goals_from_them)
    }
}
