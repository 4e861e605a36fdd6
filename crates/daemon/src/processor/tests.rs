//! The batch processor's tests: pipelined batches, sweeps, erasure, quarantine, counts.

use super::*;
use journeyd_store::MemoryStore;
use journeyd_types::{Attributes, Value};
use std::sync::Arc;

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn event(customer: &str, kind: &str, at: Millis, value: f64) -> Work {
    let mut attributes = Attributes::new();
    attributes.insert("cart_value".into(), Value::from(value));
    attributes.insert("score".into(), Value::from(value / 100.0));
    Work::Event {
        event: Event {
            event_id: format!("{customer}-{kind}-{at}"),
            customer_id: customer.into(),
            event_type: kind.into(),
            channel: None,
            occurred_at: at,
            attributes,
        },
        partition: (customer.len() % 3) as i32,
        read_at: None,
    }
}

/// What a write says it knows of the index and the states before it is what they hold.
fn check_hints(store: &MemoryStore, unwritten: &Unwritten, write: &WriteSet) {
    let present: std::collections::HashSet<(Millis, String)> = unwritten
        .due_timers_in(store, Millis::MAX, usize::MAX / 2, &|_| true)
        .unwrap()
        .into_iter()
        .map(|t| (t.due, t.customer))
        .collect();
    let known = write.timers_existed.as_ref().expect("the daemon's hints");
    let entries: Vec<_> = write.clear_timers.iter().chain(&write.set_timers).collect();
    assert_eq!(known.len(), entries.len());
    let mut told = 0;
    for (entry, k) in entries.into_iter().zip(known) {
        if let Some(k) = k {
            assert_eq!(*k, present.contains(entry), "{entry:?}");
            told += 1;
        }
    }
    let ids: Vec<&str> = write.customers.iter().map(|(id, _)| id.as_str()).collect();
    let stored = unwritten.customers(store, &ids).unwrap();
    let existed: Vec<bool> = stored.iter().map(Option::is_some).collect();
    assert_eq!(write.customers_existed.as_ref(), Some(&existed));
    TOLD.with(|t| t.set(t.get() + told));
}

thread_local! {
    /// Timer entries whose existence a write said, in this thread's runs.
    static TOLD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The batches of a stream: events, and before each batch the timers due by its last event.
fn run_all(
    engine: &Engine,
    store: &MemoryStore,
    batches: &[Vec<Work>],
    pipelined: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut unwritten = Unwritten::none();
    for batch in batches {
        let last = batch.iter().map(Work::at).max().unwrap();
        let mut work = batch.clone();
        let due = unwritten.due_timers_in(store, last, 4, &|_| true).unwrap();
        work.extend(due.into_iter().map(|t| Work::Timer {
            due: t.due,
            customer: t.customer,
            partition: t.partition,
        }));
        let out = run_batch(engine, store, &unwritten, &work, &[]).unwrap();
        check_hints(store, &unwritten, &out.write);
        actions.extend(out.actions);
        if pipelined {
            // The previous write lands only now, after this batch ran over it.
            if let Some(w) = unwritten.pop_oldest() {
                store.write(&w).unwrap();
            }
            unwritten.push(Arc::new(out.write));
        } else {
            store.write(&out.write).unwrap();
        }
    }
    if let Some(w) = unwritten.pop_oldest() {
        store.write(&w).unwrap();
    }
    actions
}

#[test]
fn a_sweep_applies_the_status_it_carries_and_writes_only_what_it_changed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let store = MemoryStore::new();
    let at: Millis = 1_700_000_000_000;
    let first = vec![
        event("in", "cart_abandoned", at, 120.0),
        event("bystander", "page_view", at, 0.0),
    ];
    let out = run_batch_logged(&engine, &store, &Unwritten::none(), &first, &[], true).unwrap();
    store.write(&out.write).unwrap();
    assert!(store.customer("bystander").unwrap().is_some());
    // The stop is swept after the journey was resumed: the engine says running, and the
    // stop still ends what it ended at its time.
    let settle = |c: &str| Work::Settle {
        customer: c.into(),
        partition: 0,
        at: at + 500,
        journey: "basket".into(),
        status: journeyd_engine::Status::Stopped,
    };
    let work = vec![settle("in"), settle("bystander"), settle("nobody")];
    let out = run_batch_logged(&engine, &store, &Unwritten::none(), &work, &[], true).unwrap();
    let written: Vec<&str> = out
        .write
        .customers
        .iter()
        .map(|(c, _)| c.as_str())
        .collect();
    assert_eq!(
        written,
        ["in"],
        "nobody else is rewritten, nor brought back"
    );
    assert_eq!(
        out.tally.exits.get(&("basket".to_owned(), "stopped")),
        Some(&1)
    );
    let state = CustomerState::from_bytes(out.write.customers[0].1.as_ref().unwrap()).unwrap();
    assert!(state.instances.is_empty());
    for other in ["bystander", "nobody"] {
        let key = changelog::customer_key(other);
        assert!(out.changes.iter().all(|c| c.key != key), "{other}");
    }
}

#[test]
fn an_erased_customer_is_deleted_with_a_tombstone_and_no_history() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let store = MemoryStore::new();
    let at: Millis = 1_700_000_000_000;
    // A customer with a state, history and a timer, stored by an earlier batch.
    let first = vec![event("gone", "cart_abandoned", at, 120.0)];
    let out = run_batch_logged(&engine, &store, &Unwritten::none(), &first, &[], true).unwrap();
    store.write(&out.write).unwrap();
    assert!(store.customer("gone").unwrap().is_some());
    assert!(!store.history("gone").unwrap().is_empty());
    assert!(store.next_timer().unwrap().is_some());
    // Erased; then, in the same batch, another customer goes on, and one erased customer
    // comes back as a new one.
    let erase = |c: &str, t: Millis| event(c, "erasure_requested", t, 0.0);
    store
        .write(
            &run_batch_logged(
                &engine,
                &store,
                &Unwritten::none(),
                &[event("back", "cart_abandoned", at, 50.0)],
                &[],
                true,
            )
            .unwrap()
            .write,
        )
        .unwrap();
    let work = vec![
        erase("gone", at + 10),
        erase("back", at + 10),
        event("back", "cart_abandoned", at + 20, 60.0),
    ];
    let out = run_batch_logged(&engine, &store, &Unwritten::none(), &work, &[], true).unwrap();
    let gone: Vec<bool> = out
        .write
        .customers
        .iter()
        .filter(|(c, _)| c == "gone")
        .map(|(_, v)| v.is_some())
        .collect();
    assert_eq!(gone, [false], "deleted, not written again");
    assert!(out.write.history.iter().all(|(c, _)| c != "gone"));
    let tombstones: Vec<&str> = out
        .changes
        .iter()
        .filter(|c| c.value.is_none())
        .map(|c| std::str::from_utf8(&c.key[1..]).unwrap())
        .collect();
    assert_eq!(tombstones, ["gone", "back"]);
    let back: Vec<bool> = out
        .write
        .customers
        .iter()
        .filter(|(c, _)| c == "back")
        .map(|(_, v)| v.is_some())
        .collect();
    assert_eq!(
        back,
        [false, true],
        "deleted, then the new customer written after"
    );
    store.write(&out.write).unwrap();
    assert!(store.customer("gone").unwrap().is_none());
    assert!(store.history("gone").unwrap().is_empty());
    let back_history = store.history("back").unwrap();
    assert!(!back_history.is_empty(), "the new customer's history only");
    assert!(store
        .due_timers(Millis::MAX, 100)
        .unwrap()
        .iter()
        .all(|(_, c)| c != "gone"));
}

#[test]
fn a_quarantined_customer_keeps_a_timer_for_later_and_the_others_go_on() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let store = MemoryStore::new();
    let at: Millis = 1_700_000_000_000;
    // A stored state that cannot be read, with a timer due at `at`.
    store
        .write(&WriteSet {
            customers: vec![("bad".into(), Some(vec![0xff, 0x00, 0x13]))],
            set_timers: vec![(at, "bad".into())],
            ..WriteSet::default()
        })
        .unwrap();
    let work = vec![
        Work::Timer {
            due: at,
            customer: "bad".into(),
            partition: Some(1),
        },
        event("good", "cart_abandoned", at + 5, 120.0),
    ];
    let out = run_batch(&engine, &store, &Unwritten::none(), &work, &[]).unwrap();
    assert_eq!(out.quarantined.len(), 1);
    assert_eq!(out.quarantined[0].customer, "bad");
    assert_eq!(out.quarantined[0].work, [0]);
    assert!(out.quarantined[0].error.contains("unreadable"));
    assert!(
        out.write.customers.iter().all(|(c, _)| c != "bad"),
        "the stored state stays as it is"
    );
    assert!(out.write.customers.iter().any(|(c, _)| c == "good"));
    store.write(&out.write).unwrap();
    let bad: Vec<Millis> = store
        .due_timers(Millis::MAX, 10)
        .unwrap()
        .into_iter()
        .filter(|(_, c)| c == "bad")
        .map(|(due, _)| due)
        .collect();
    assert_eq!(
        bad,
        [at + 5 + QUARANTINE_RETRY],
        "the fired entry is set again for later, not lost"
    );
    assert_eq!(store.customer("bad").unwrap(), Some(vec![0xff, 0x00, 0x13]));
}

#[test]
fn a_partition_without_counts_starts_from_the_instances_its_customers_wait_in() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let at: Millis = 1_700_000_000_000;
    // Customers of partition 1 (ids of length 4) wait in journeys, in a store that kept
    // their states but no counts (as a store from before counts were kept does).
    let old = MemoryStore::new();
    let first: Vec<Work> = ["cart", "cat2", "cat3"]
        .map(|c| event(c, "cart_abandoned", at, 120.0))
        .to_vec();
    let out = run_batch(&engine, &old, &Unwritten::none(), &first, &[]).unwrap();
    let mut without = out.write.clone();
    without.counts.clear();
    let store = MemoryStore::new();
    store.write(&without).unwrap();
    assert_eq!(store.counts(1).unwrap(), None);
    // One more customer comes: the partition's counts hold every instance waiting.
    let next = vec![event("cat4", "cart_abandoned", at + 1, 90.0)];
    let out = run_batch(&engine, &store, &Unwritten::none(), &next, &[]).unwrap();
    store.write(&out.write).unwrap();
    let counts = Counts::from_bytes(&store.counts(1).unwrap().unwrap()).unwrap();
    let active: i64 = counts.journeys.values().map(|j| j.active()).sum();
    let mut states = 0;
    for c in ["cart", "cat2", "cat3", "cat4"] {
        let s = CustomerState::from_bytes(&store.customer(c).unwrap().unwrap()).unwrap();
        states += s.instances.len() as i64;
    }
    assert!(states >= 4, "they wait: {states}");
    assert_eq!(active, states);
    // Entries count from then on: only the new customer's.
    let entered: u64 = counts.journeys.values().map(|j| j.entered).sum();
    assert_eq!(entered, 1);
}

#[test]
fn a_batch_run_over_the_unwritten_previous_batch_does_what_it_does_after_the_write() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let mut rng = Rng(42);
    let kinds = [
        "cart_abandoned",
        "cart_viewed",
        "order_placed",
        "risk_flagged",
        "offer_viewed",
    ];
    let mut at: Millis = 1_700_000_000_000;
    let mut batches: Vec<Vec<Work>> = (0..60)
        .map(|_| {
            (0..1 + rng.below(6))
                .map(|_| {
                    at += rng.below(900) as Millis;
                    let customer = format!("c{}", rng.below(15));
                    let kind = kinds[rng.below(kinds.len() as u64) as usize];
                    event(&customer, kind, at, 10.0 + rng.below(300) as f64)
                })
                .collect()
        })
        .collect();
    // The last carts are left waiting.
    batches.push(
        ["c1", "c22", "c333"]
            .map(|c| event(c, "cart_abandoned", at + 1000, 120.0))
            .to_vec(),
    );
    let (serial, pipelined) = (MemoryStore::new(), MemoryStore::new());
    let expected = run_all(&engine, &serial, &batches, false);
    let got = run_all(&engine, &pipelined, &batches, true);
    assert!(
        TOLD.with(std::cell::Cell::get) > 10,
        "the writes say which fired entries exist"
    );
    assert!(expected.len() > 20, "the stream sends: {}", expected.len());
    assert!(
        expected.iter().any(|a| a.kind.as_str() == "cancel"),
        "the stream cancels"
    );
    assert_eq!(got, expected);
    let mut ids: Vec<String> = (0..15).map(|i| format!("c{i}")).collect();
    ids.extend(["c22".into(), "c333".into()]);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        pipelined.customers(&ids).unwrap(),
        serial.customers(&ids).unwrap()
    );
    assert_eq!(
        pipelined.due_timers(Millis::MAX, 1000).unwrap(),
        serial.due_timers(Millis::MAX, 1000).unwrap()
    );
    // The counts kept with each partition read through the unwritten writes as well, and
    // together they count what the states hold: every active instance waits at a step.
    let counts = |store: &MemoryStore| {
        (0..3)
            .map(|p| {
                store
                    .counts(p)
                    .unwrap()
                    .map(|b| Counts::from_bytes(&b).unwrap())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&pipelined), counts(&serial));
    let mut total = Counts::default();
    for c in counts(&serial).into_iter().flatten() {
        total.add(&c);
    }
    let mut held = Counts::default();
    for state in serial.customers(&ids).unwrap().into_iter().flatten() {
        held.waiting(&CustomerState::from_bytes(&state).unwrap(), 1);
    }
    let waiting = |c: &Counts| -> Vec<(String, String, i64)> {
        c.journeys
            .iter()
            .flat_map(|(j, jc)| {
                jc.waiting_by_step(&engine, j)
                    .into_iter()
                    .map(move |(s, n)| (j.clone(), s, n))
            })
            .filter(|w| w.2 != 0)
            .collect()
    };
    assert!(!waiting(&held).is_empty(), "instances wait at the end");
    assert_eq!(waiting(&total), waiting(&held));
    let sent: u64 = total
        .journeys
        .values()
        .flat_map(|j| j.steps.values())
        .flat_map(|s| s.sent.values())
        .sum();
    let sends = expected
        .iter()
        .filter(|a| a.kind.as_str() == "send")
        .count();
    assert_eq!(sent, sends as u64, "every send is counted at its step");
}

#[test]
fn an_audience_run_enters_those_it_reaches_once_and_records_the_partition_given() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../journeys");
    let engine = Engine::new(journeyd_journey::load_dir(&dir).unwrap().catalog);
    let store = MemoryStore::new();
    let run: Millis = journeyd_types::time::parse_rfc3339("2026-03-04T09:00:00Z").unwrap(); // lapsed.yaml: 2 Feb, then every 30 days
                                                                                            // Two customers of partition 2 who last transacted 40 days before the run (lapsed.yaml's
                                                                                            // audience), one who did yesterday.
    let profile = |c: &str, days: i64| {
        let mut attributes = Attributes::new();
        let last = journeyd_types::time::format_rfc3339(run - days * 86_400_000);
        attributes.insert("last_transaction_at".into(), Value::from(last.as_str()));
        attributes.insert("balance".into(), Value::from(80.0));
        Work::Event {
            event: Event {
                event_id: format!("{c}-p"),
                customer_id: c.into(),
                event_type: "profile_updated".into(),
                channel: None,
                occurred_at: run - 3_600_000,
                attributes,
            },
            partition: 2,
            read_at: None,
        }
    };
    let first = vec![profile("a", 40), profile("b", 40), profile("c", 1)];
    let out = run_batch(&engine, &store, &Unwritten::none(), &first, &[]).unwrap();
    store.write(&out.write).unwrap();
    let given = |last: bool| -> Vec<Work> {
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, c)| Work::Audience {
                customer: (*c).into(),
                partition: 2,
                at: run,
                journey: "lapsed_reactivation".into(),
                last: last && i == 2,
            })
            .collect()
    };
    let state = |c: &str| CustomerState::from_bytes(&store.customer(c).unwrap().unwrap()).unwrap();
    // A run cut short (no last customer): entries, but the partition is not recorded as given.
    let out = run_batch(&engine, &store, &Unwritten::none(), &given(false), &[]).unwrap();
    store.write(&out.write).unwrap();
    let after_first = [state("a"), state("b")];
    assert!(
        after_first.iter().all(|s| s.instances.len() == 1),
        "a and b entered"
    );
    let last_run = |store: &MemoryStore| {
        Counts::from_bytes(&store.counts(2).unwrap().unwrap())
            .unwrap()
            .journeys
            .get("lapsed_reactivation")
            .and_then(|j| j.last_run)
    };
    assert_eq!(last_run(&store), None);
    // Given again from its start: nobody enters twice (their clock is past the run); now the
    // partition has had the run.
    let out = run_batch(&engine, &store, &Unwritten::none(), &given(true), &[]).unwrap();
    assert!(
        out.actions.is_empty(),
        "nobody enters twice: {:?}",
        out.actions
    );
    store.write(&out.write).unwrap();
    assert_eq!(last_run(&store), Some(run));
    assert_eq!([state("a"), state("b")], after_first);
    assert!(state("c").instances.is_empty(), "c transacted yesterday");
}
