//! The workload of the end-to-end suites and its oracle.
//!
//! Customers follow scripts over the journeys in `tests/journeys/` (waits of seconds): they
//! enter, respond in another channel (a cancel with reason `responded`), exit (cancels with
//! reason `exited`), or let the waits run out. Follow-up events are planned at least a second
//! away from every wait's end, so the outcome does not depend on how fast the broker and
//! journeyd happen to be; the simulator, given the same events, is the oracle.

use journeyd_engine::Engine;
use journeyd_journey::load_dir;
use journeyd_simulator::Simulator;
use journeyd_types::{Action, Attributes, Event, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The journeys the suites run (`tests/journeys/`).
pub fn journeys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("journeys")
}

/// The channels those journeys send on.
pub const CHANNELS: [&str; 5] = ["email", "push", "sms", "in_app", "call_centre"];

/// A small deterministic generator (xorshift64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `xs` (which must not be empty).
    pub fn pick<'a>(&mut self, xs: &'a [String]) -> &'a str {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// A touchpoint event.
pub fn event(id: String, customer: &str, kind: &str, channel: Option<&str>, at: i64) -> Event {
    Event {
        event_id: id,
        customer_id: customer.to_owned(),
        event_type: kind.to_owned(),
        channel: channel.map(str::to_owned),
        occurred_at: at,
        attributes: Attributes::new(),
    }
}

fn with(mut e: Event, key: &str, value: Value) -> Event {
    e.attributes.insert(key.to_owned(), value);
    e
}

/// Scripts for `customers` customers whose first events fall in `[start, start + spread_ms)`,
/// sorted by time (each customer's own events in order). Ids start with `prefix`.
pub fn plan(prefix: &str, customers: usize, start: i64, spread_ms: i64, seed: u64) -> Vec<Event> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    for i in 0..customers {
        let c = format!("{prefix}-c{i:05}");
        let t0 = start + rng.below(spread_ms.max(1) as u64) as i64;
        let mut n = 0;
        let mut ev = |kind: &str, channel: Option<&str>, offset: i64| {
            n += 1;
            event(format!("{c}-e{n}"), &c, kind, channel, t0 + offset)
        };
        // Waits end at +2 s and +4 s (basket), +3 s and +6 s (offer); follow-ups are planned
        // at least a second away from those.
        match rng.below(10) {
            0..=3 => {
                let score = if rng.below(5) == 0 { 0.5 } else { 0.9 };
                out.push(with(
                    ev("risk_flagged", None, 0),
                    "score",
                    Value::Float(score),
                ));
                match rng.below(5) {
                    0 => out.push(ev("offer_viewed", Some("web"), 1000)),
                    1 => out.push(ev("offer_viewed", Some("app"), 4500)),
                    2 => out.push(ev("offer_accepted", Some("web"), 4500)),
                    3 => out.push(ev("account_closed", Some("branch"), 1000)),
                    _ => {}
                }
            }
            4..=7 => {
                let value = [10, 50, 300][rng.below(3) as usize];
                out.push(with(
                    ev("cart_abandoned", Some("web"), 0),
                    "cart_value",
                    Value::Int(value),
                ));
                match rng.below(4) {
                    0 => out.push(ev("cart_viewed", Some("app"), 1000)),
                    1 => out.push(ev("cart_viewed", Some("web"), 3000)),
                    2 => out.push(ev("order_placed", Some("web"), 3000)),
                    _ => {}
                }
            }
            8 => {
                // Both journeys: the marketing cap (4 a day) suppresses some sends.
                out.push(with(
                    ev("risk_flagged", None, 0),
                    "score",
                    Value::Float(0.8),
                ));
                out.push(with(
                    ev("cart_abandoned", Some("app"), 500),
                    "cart_value",
                    Value::Int(300),
                ));
            }
            _ => {
                out.push(ev("login", Some("app"), 0));
                out.push(ev("page_view", Some("web"), 5000));
            }
        }
    }
    out.sort_by_key(|e| e.occurred_at);
    out
}

/// What the simulator says the events give, by action id, with every wait run out.
pub fn expected(events: &[Event]) -> BTreeMap<String, Action> {
    let engine = Arc::new(Engine::new(
        load_dir(&journeys_dir())
            .expect("the e2e journeys load")
            .catalog,
    ));
    let mut sim = Simulator::new(engine);
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.occurred_at);
    let mut out = BTreeMap::new();
    for e in &sorted {
        for x in sim.push(e).expect("the simulator takes the event") {
            out.insert(x.action.action_id.clone(), x.action);
        }
    }
    let end = sorted.last().map_or(0, |e| e.occurred_at) + 60_000;
    for x in sim.advance_to(end) {
        out.insert(x.action.action_id.clone(), x.action);
    }
    out
}

/// Compares what arrived (in the order it was read) with what the simulator expects: every
/// expected action arrived, every arrival is an expected action, identical (a duplicate is an
/// exact repeat), and a copy of every cancel arrived after the last copy of the send it
/// withdraws (they share a topic and a key, so a partition, read in order): an adapter that
/// acts on what it reads last withdraws the send. Returns the number of duplicates.
pub fn check(expected: &BTreeMap<String, Action>, arrived: &[Action]) -> usize {
    let last: BTreeMap<&str, usize> = arrived
        .iter()
        .enumerate()
        .map(|(i, a)| (a.action_id.as_str(), i))
        .collect();
    for a in arrived {
        if let Some(cancelled) = &a.cancels {
            assert!(
                last.get(cancelled.as_str()) < last.get(a.action_id.as_str()),
                "no copy of a cancel arrived after the last copy of the send it withdraws: {a:#?}"
            );
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for a in arrived {
        let want = expected
            .get(&a.action_id)
            .unwrap_or_else(|| panic!("an action the simulator does not expect arrived: {a:#?}"));
        assert_eq!(
            a, want,
            "an action arrived that differs from the simulator's (same id)"
        );
        *seen.entry(a.action_id.as_str()).or_default() += 1;
    }
    let missing: Vec<&Action> = expected
        .values()
        .filter(|a| !seen.contains_key(a.action_id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} expected actions never arrived, e.g. {:#?}",
        missing.len(),
        missing.first()
    );
    arrived.len() - expected.len()
}

/// Counts of the expected actions by (kind, channel, cancel reason), for a summary line.
pub fn summary(expected: &BTreeMap<String, Action>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in expected.values() {
        let key = match a.reason {
            Some(r) => format!("{} {} ({})", a.kind.as_str(), a.channel, r.as_str()),
            None => format!("{} {}", a.kind.as_str(), a.channel),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_types::CancelReason;

    #[test]
    fn the_workload_exercises_every_channel_and_both_cancel_reasons() {
        let events = plan("t", 2000, 1_700_000_000_000, 10_000, 42);
        let want = expected(&events);
        let has = |f: &dyn Fn(&Action) -> bool| want.values().any(f);
        for c in CHANNELS {
            assert!(has(&|a| a.channel == c), "no action on {c}");
        }
        assert!(has(&|a| a.reason == Some(CancelReason::Responded)));
        assert!(has(&|a| a.reason == Some(CancelReason::Exited)));
        // Deterministic: the same plan gives the same actions.
        assert_eq!(plan("t", 2000, 1_700_000_000_000, 10_000, 42), events);
        assert_eq!(expected(&events), want);
        println!("{:#?}", summary(&want));
    }

    /// A cancel of the expected actions, and the send it withdraws.
    fn a_cancel_and_its_send() -> (BTreeMap<String, Action>, Action, Action) {
        let want = expected(&plan("t", 500, 1_700_000_000_000, 10_000, 42));
        let cancel = want.values().find(|a| a.cancels.is_some()).unwrap().clone();
        let send = want[cancel.cancels.as_deref().unwrap()].clone();
        (want, cancel, send)
    }

    #[test]
    fn check_takes_a_cancel_after_its_send_even_repeated() {
        let (want, cancel, send) = a_cancel_and_its_send();
        // Every send, then every cancel, then a send and its cancel again.
        let (cancels, mut arrived): (Vec<Action>, Vec<Action>) =
            want.values().cloned().partition(|a| a.cancels.is_some());
        arrived.extend(cancels);
        arrived.extend([send, cancel]);
        assert_eq!(check(&want, &arrived), 2);
    }

    #[test]
    fn check_takes_a_cancel_that_comes_again_after_its_send() {
        let (want, cancel, _) = a_cancel_and_its_send();
        // The one cancel first, then every send, then every cancel (as after a send was lost
        // and produced again, with the batches after it).
        let (cancels, sends): (Vec<Action>, Vec<Action>) =
            want.values().cloned().partition(|a| a.cancels.is_some());
        let mut arrived = vec![cancel];
        arrived.extend(sends);
        arrived.extend(cancels);
        assert_eq!(check(&want, &arrived), 1);
    }

    #[test]
    #[should_panic(expected = "after the last copy of the send it withdraws")]
    fn check_refuses_a_send_again_after_its_last_cancel() {
        let (want, _, send) = a_cancel_and_its_send();
        // Every send, every cancel, then the one send again (produced again, its cancel not).
        let (cancels, mut arrived): (Vec<Action>, Vec<Action>) =
            want.values().cloned().partition(|a| a.cancels.is_some());
        arrived.extend(cancels);
        arrived.push(send);
        check(&want, &arrived);
    }

    #[test]
    fn follow_ups_keep_a_second_away_from_every_wait_end() {
        let events = plan("t", 3000, 0, 10_000, 7);
        // Where each customer's waits end: entries into offer end waits at +3 s and +6 s,
        // entries into basket at +2 s and +4 s.
        let mut ends: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for e in &events {
            let waits: &[i64] = match e.event_type.as_str() {
                "risk_flagged" => &[3000, 6000],
                "cart_abandoned" => &[2000, 4000],
                _ => &[],
            };
            let v = ends.entry(e.customer_id.as_str()).or_default();
            v.extend(waits.iter().map(|w| e.occurred_at + w));
        }
        let mut checked = 0;
        for e in &events {
            if matches!(e.event_type.as_str(), "risk_flagged" | "cart_abandoned") {
                continue;
            }
            checked += 1;
            for end in &ends[e.customer_id.as_str()] {
                assert!(
                    (e.occurred_at - end).abs() >= 1000,
                    "{} of {} is {} ms from a wait's end",
                    e.event_type,
                    e.customer_id,
                    (e.occurred_at - end).abs()
                );
            }
        }
        assert!(checked > 1000, "follow-ups were checked ({checked})");
    }
}
