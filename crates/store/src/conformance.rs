//! The conformance suite every [`Store`] implementation runs, so all behave the same.
//!
//! Each behaviour is one public function taking a fresh, empty store and panicking (with a
//! message naming the behaviour) if the store misbehaves. [`CASES`] lists them all by name and
//! [`run_all`] runs them, each against a new store from the factory it is given.
//!
//! The suite checks what the crate documentation promises: customer puts, reads and deletes;
//! multi-get order; timer order across negative and positive due times; the inclusive bound and
//! the limit of [`Store::due_timers`]; clears before sets in one write; idempotent timer sets and
//! clears; exact counters after any sequence of writes (against a model); offsets overwritten per
//! `(topic, partition)`; journeys round-tripped in `(id, version)` order; and atomicity as far as
//! a single thread can observe it (a refused write changes nothing).

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    Error, Millis, Offset, Store, StoredJourney, WriteSet, MAX_JOURNEY_ID_BYTES, MAX_TOPIC_BYTES,
};

/// A behaviour of the suite: its name and the function checking it on an empty store.
pub type Case = (&'static str, fn(&dyn Store));

/// Every behaviour of the suite, by name.
pub const CASES: &[Case] = &[
    ("customer_put_get_delete", customer_put_get_delete),
    (
        "customer_empty_value_is_stored",
        customer_empty_value_is_stored,
    ),
    ("customer_last_operation_wins", customer_last_operation_wins),
    ("customers_multi_get_order", customers_multi_get_order),
    ("customer_count_exact", customer_count_exact),
    (
        "timers_ordered_by_due_then_customer",
        timers_ordered_by_due_then_customer,
    ),
    (
        "due_timers_bound_inclusive_and_limit",
        due_timers_bound_inclusive_and_limit,
    ),
    ("next_timer_is_earliest", next_timer_is_earliest),
    ("timer_moved_in_one_write", timer_moved_in_one_write),
    (
        "timer_clear_then_set_same_entry",
        timer_clear_then_set_same_entry,
    ),
    ("timer_duplicates_idempotent", timer_duplicates_idempotent),
    (
        "due_timers_in_skips_other_partitions",
        due_timers_in_skips_other_partitions,
    ),
    (
        "timers_set_before_earlier_scans_are_found",
        timers_set_before_earlier_scans_are_found,
    ),
    (
        "timers_set_while_scans_run_are_found",
        timers_set_while_scans_run_are_found,
    ),
    (
        "offsets_overwrite_per_partition",
        offsets_overwrite_per_partition,
    ),
    ("journeys_round_trip_sorted", journeys_round_trip_sorted),
    ("put_journeys_atomic", put_journeys_atomic),
    ("write_all_parts_together", write_all_parts_together),
    (
        "write_refused_changes_nothing",
        write_refused_changes_nothing,
    ),
    ("empty_write_changes_nothing", empty_write_changes_nothing),
    ("size_grows_with_writes", size_grows_with_writes),
    ("random_writes_match_model", random_writes_match_model),
    ("history_appends_and_trims", history_appends_and_trims),
    (
        "customers_of_lists_each_partition_in_pages",
        customers_of_lists_each_partition_in_pages,
    ),
];

/// Runs every behaviour in [`CASES`], each against a new store from `make`.
///
/// The name of each behaviour is printed to stderr before it runs, so a failing test's
/// captured output says which one failed.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    for (name, case) in CASES {
        eprintln!("conformance: {name}");
        let store = make();
        case(store.as_ref());
    }
}

fn put(id: &str, value: &[u8]) -> (String, Option<Vec<u8>>) {
    (id.to_owned(), Some(value.to_vec()))
}

fn delete(id: &str) -> (String, Option<Vec<u8>>) {
    (id.to_owned(), None)
}

fn timer(due: Millis, customer: &str) -> (Millis, String) {
    (due, customer.to_owned())
}

fn offset(topic: &str, partition: i32, next: i64) -> Offset {
    Offset {
        topic: topic.to_owned(),
        partition,
        next,
    }
}

fn journey(id: &str, version: u32) -> StoredJourney {
    StoredJourney {
        id: id.to_owned(),
        version,
        digest: u64::from(version).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id.len() as u64,
        file: format!("journeys/{id}.yaml"),
        source: format!("id: {id}\nversion: {version}\n# ünïcödé\n"),
        first_seen: -1_000 + i64::from(version),
    }
}

fn customers_write(customers: Vec<(String, Option<Vec<u8>>)>) -> WriteSet {
    WriteSet {
        customers,
        ..WriteSet::default()
    }
}

fn timers_write(clear: Vec<(Millis, String)>, set: Vec<(Millis, String)>) -> WriteSet {
    WriteSet {
        clear_timers: clear,
        set_timers: set,
        ..WriteSet::default()
    }
}

fn write(store: &dyn Store, set: &WriteSet) {
    if let Err(e) = store.write(set) {
        panic!("write failed: {e}");
    }
}

fn all_timers(store: &dyn Store) -> Vec<(Millis, String)> {
    store
        .due_timers(Millis::MAX, usize::MAX)
        .expect("due_timers")
}

/// Puts, reads, overwrites and deletes customers; deleting an absent one is a no-op.
pub fn customer_put_get_delete(store: &dyn Store) {
    assert_eq!(store.customer("alice").unwrap(), None, "empty store");
    write(
        store,
        &customers_write(vec![put("alice", b"v1"), put("bob", b"b")]),
    );
    assert_eq!(
        store.customer("alice").unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(store.customer("bob").unwrap().as_deref(), Some(&b"b"[..]));
    assert_eq!(store.customer("alic").unwrap(), None, "no prefix match");
    assert_eq!(store.customer("alicex").unwrap(), None, "no prefix match");

    write(store, &customers_write(vec![put("alice", b"v2")]));
    assert_eq!(
        store.customer("alice").unwrap().as_deref(),
        Some(&b"v2"[..])
    );

    write(store, &customers_write(vec![delete("alice")]));
    assert_eq!(store.customer("alice").unwrap(), None, "deleted");
    assert_eq!(store.customer("bob").unwrap().as_deref(), Some(&b"b"[..]));

    write(
        store,
        &customers_write(vec![delete("alice"), delete("nobody")]),
    );
    assert_eq!(
        store.customer_count(),
        1,
        "deleting absent customers is a no-op"
    );

    let big = (0..=255u8).cycle().take(100_000).collect::<Vec<_>>();
    let odd_id = "ü/\u{0}\u{7f}😀 spaced";
    write(store, &customers_write(vec![put(odd_id, &big)]));
    assert_eq!(
        store.customer(odd_id).unwrap(),
        Some(big),
        "binary value, odd id"
    );
}

/// An empty value is a put (a stored customer), not a delete.
pub fn customer_empty_value_is_stored(store: &dyn Store) {
    write(store, &customers_write(vec![put("", b""), put("e", b"")]));
    assert_eq!(store.customer("").unwrap(), Some(Vec::new()), "empty id");
    assert_eq!(store.customer("e").unwrap(), Some(Vec::new()));
    assert_eq!(store.customer_count(), 2);
}

/// Within one write, customer operations apply in order: the last one for an id wins.
pub fn customer_last_operation_wins(store: &dyn Store) {
    write(
        store,
        &customers_write(vec![
            put("a", b"1"),
            put("a", b"2"),
            put("b", b"1"),
            delete("b"),
            delete("c"),
            put("c", b"3"),
        ]),
    );
    assert_eq!(store.customer("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(store.customer("b").unwrap(), None);
    assert_eq!(store.customer("c").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(store.customer_count(), 2, "a and c");

    write(
        store,
        &customers_write(vec![delete("a"), put("a", b"4"), delete("a")]),
    );
    assert_eq!(store.customer("a").unwrap(), None);
    assert_eq!(store.customer_count(), 1, "c");
}

/// Multi-get answers in the order asked, with repeats and misses in place.
pub fn customers_multi_get_order(store: &dyn Store) {
    write(
        store,
        &customers_write(vec![put("c", b"C"), put("a", b"A"), put("b", b"B")]),
    );
    let got = store.customers(&["b", "zz", "a", "c", "a", ""]).unwrap();
    let want: Vec<Option<Vec<u8>>> = vec![
        Some(b"B".to_vec()),
        None,
        Some(b"A".to_vec()),
        Some(b"C".to_vec()),
        Some(b"A".to_vec()),
        None,
    ];
    assert_eq!(got, want);
    assert!(
        store.customers(&[]).unwrap().is_empty(),
        "no ids, no answers"
    );
}

/// The customer counter counts new customers once and deletions of present ones once.
pub fn customer_count_exact(store: &dyn Store) {
    assert_eq!(store.customer_count(), 0);
    write(
        store,
        &customers_write(vec![put("a", b"1"), put("b", b"1")]),
    );
    assert_eq!(store.customer_count(), 2);
    write(
        store,
        &customers_write(vec![put("a", b"2"), put("a", b"3")]),
    );
    assert_eq!(store.customer_count(), 2, "overwrites do not count");
    write(
        store,
        &customers_write(vec![delete("a"), delete("a"), delete("x")]),
    );
    assert_eq!(
        store.customer_count(),
        1,
        "one deletion of a present customer"
    );
    write(store, &customers_write(vec![put("x", b"1"), delete("x")]));
    assert_eq!(store.customer_count(), 1, "put then delete in one write");
    write(store, &customers_write(vec![delete("b"), put("b", b"2")]));
    assert_eq!(store.customer_count(), 1, "delete then put in one write");
    write(store, &customers_write(vec![delete("b")]));
    assert_eq!(store.customer_count(), 0);
}

/// Timers come back ordered by `(due, customer)`: negative before positive, customers bytewise.
pub fn timers_ordered_by_due_then_customer(store: &dyn Store) {
    let mut entries = vec![
        timer(0, "b"),
        timer(-1, "z"),
        timer(1, "a"),
        timer(Millis::MIN, "m"),
        timer(Millis::MAX, "m"),
        timer(0, "a"),
        timer(0, "ab"),
        timer(0, ""),
        timer(0, "B"),
        timer(0, "é"),
        timer(-1_000_000_000_000, "old"),
        timer(1_700_000_000_000, "now"),
        timer(255, "x"),
        timer(256, "x"),
        timer(-256, "x"),
        timer(-255, "x"),
    ];
    write(store, &timers_write(vec![], entries.clone()));
    entries.sort();
    assert_eq!(all_timers(store), entries);
    assert_eq!(store.pending_timers(), entries.len() as u64);
}

/// `due_timers` includes entries due exactly at `up_to`, excludes later ones, honours `limit`.
pub fn due_timers_bound_inclusive_and_limit(store: &dyn Store) {
    let entries = vec![
        timer(-5, "a"),
        timer(-5, "b"),
        timer(0, "a"),
        timer(10, "a"),
        timer(10, "b"),
        timer(11, "a"),
    ];
    write(store, &timers_write(vec![], entries.clone()));
    assert_eq!(store.due_timers(Millis::MIN, 10).unwrap(), vec![]);
    assert_eq!(store.due_timers(-6, 10).unwrap(), vec![]);
    assert_eq!(store.due_timers(-5, 10).unwrap(), entries[..2].to_vec());
    assert_eq!(store.due_timers(9, 10).unwrap(), entries[..3].to_vec());
    assert_eq!(store.due_timers(10, 10).unwrap(), entries[..5].to_vec());
    assert_eq!(store.due_timers(Millis::MAX, 10).unwrap(), entries);
    assert_eq!(store.due_timers(10, 0).unwrap(), vec![], "limit 0");
    assert_eq!(store.due_timers(10, 1).unwrap(), entries[..1].to_vec());
    assert_eq!(store.due_timers(10, 4).unwrap(), entries[..4].to_vec());
    assert_eq!(store.due_timers(Millis::MAX, usize::MAX).unwrap(), entries);

    write(store, &timers_write(vec![], vec![timer(Millis::MIN, "x")]));
    assert_eq!(
        store.due_timers(Millis::MIN, 10).unwrap(),
        vec![timer(Millis::MIN, "x")],
        "the smallest due time is reachable"
    );
    write(store, &timers_write(vec![], vec![timer(Millis::MAX, "x")]));
    let all = store.due_timers(Millis::MAX, 100).unwrap();
    assert_eq!(
        all.last(),
        Some(&timer(Millis::MAX, "x")),
        "the largest too"
    );
}

/// `next_timer` is the earliest entry, or none.
pub fn next_timer_is_earliest(store: &dyn Store) {
    assert_eq!(store.next_timer().unwrap(), None);
    write(
        store,
        &timers_write(vec![], vec![timer(5, "b"), timer(7, "a")]),
    );
    assert_eq!(store.next_timer().unwrap(), Some(timer(5, "b")));
    write(store, &timers_write(vec![], vec![timer(5, "a")]));
    assert_eq!(store.next_timer().unwrap(), Some(timer(5, "a")));
    write(store, &timers_write(vec![], vec![timer(-3, "z")]));
    assert_eq!(store.next_timer().unwrap(), Some(timer(-3, "z")));
    write(
        store,
        &timers_write(vec![timer(-3, "z"), timer(5, "a"), timer(5, "b")], vec![]),
    );
    assert_eq!(store.next_timer().unwrap(), Some(timer(7, "a")));
    write(store, &timers_write(vec![timer(7, "a")], vec![]));
    assert_eq!(store.next_timer().unwrap(), None);
}

/// Clearing a customer's timer and setting a new one in the same write moves it.
pub fn timer_moved_in_one_write(store: &dyn Store) {
    write(
        store,
        &timers_write(vec![], vec![timer(100, "c"), timer(50, "d")]),
    );
    write(
        store,
        &timers_write(vec![timer(100, "c")], vec![timer(20, "c")]),
    );
    assert_eq!(all_timers(store), vec![timer(20, "c"), timer(50, "d")]);
    assert_eq!(store.pending_timers(), 2);
    write(
        store,
        &timers_write(vec![timer(20, "c")], vec![timer(-20, "c")]),
    );
    assert_eq!(all_timers(store), vec![timer(-20, "c"), timer(50, "d")]);
    assert_eq!(store.pending_timers(), 2);
}

/// Clears apply before sets: clearing and setting one entry in the same write leaves it set.
pub fn timer_clear_then_set_same_entry(store: &dyn Store) {
    write(
        store,
        &timers_write(vec![timer(1, "a")], vec![timer(1, "a")]),
    );
    assert_eq!(all_timers(store), vec![timer(1, "a")], "absent before");
    assert_eq!(store.pending_timers(), 1);
    write(
        store,
        &timers_write(vec![timer(1, "a")], vec![timer(1, "a")]),
    );
    assert_eq!(all_timers(store), vec![timer(1, "a")], "present before");
    assert_eq!(store.pending_timers(), 1);
}

/// `due_timers_in` takes only the timers of owned partitions (and those set without one),
/// skips the rest without removing them, still honours the limit, and a timer set again under
/// another partition moves to it.
pub fn due_timers_in_skips_other_partitions(store: &dyn Store) {
    let mut set = timers_write(
        vec![],
        vec![
            timer(1, "p0"),
            timer(2, "p1"),
            timer(3, "any"),
            timer(4, "p0"),
        ],
    );
    set.timer_partitions = vec![("p0".into(), 0), ("p1".into(), 1)];
    write(store, &set);
    let only_0 = |p: i32| p == 0;
    let pairs = |due: Vec<crate::DueTimer>| -> Vec<(Millis, String)> {
        due.into_iter().map(|t| (t.due, t.customer)).collect()
    };
    let due = store.due_timers_in(10, 10, &only_0).unwrap();
    assert_eq!(
        due.iter().map(|t| t.partition).collect::<Vec<_>>(),
        vec![Some(0), None, Some(0)],
        "each timer comes with its partition"
    );
    let due = pairs(due);
    assert_eq!(
        due,
        vec![timer(1, "p0"), timer(3, "any"), timer(4, "p0")],
        "partition 1's timer is skipped; one set without a partition is taken"
    );
    assert_eq!(
        pairs(store.due_timers_in(10, 2, &only_0).unwrap()),
        vec![timer(1, "p0"), timer(3, "any")],
        "the limit counts taken timers only"
    );
    assert_eq!(
        pairs(store.due_timers_in(10, 10, &|p| p == 1).unwrap()),
        vec![timer(2, "p1"), timer(3, "any")]
    );
    assert_eq!(store.pending_timers(), 4, "skipped timers stay");
    assert_eq!(
        pairs(
            store
                .due_timers_in_except(10, 2, &only_0, &[(1, "p0"), (2, "p1")])
                .unwrap()
        ),
        vec![timer(3, "any"), timer(4, "p0")],
        "entries passed over and entries of other partitions do not count towards the limit"
    );
    assert_eq!(
        store.due_timers(10, 10).unwrap().len(),
        4,
        "due_timers takes all"
    );
    // p1's customer now comes from partition 0: setting the same entry moves it.
    let mut moved = timers_write(vec![], vec![timer(2, "p1")]);
    moved.timer_partitions = vec![("p1".into(), 0)];
    write(store, &moved);
    assert_eq!(store.pending_timers(), 4);
    assert_eq!(
        pairs(store.due_timers_in(10, 10, &|p| p == 1).unwrap()),
        vec![timer(3, "any")]
    );
    assert_eq!(store.due_timers_in(10, 10, &only_0).unwrap().len(), 4);
}

/// Scans may run beside writes (the daemon scans for due timers while the previous batch is
/// written): a timer whose write commits while a scan runs is still found by later scans.
pub fn timers_set_while_scans_run_are_found(store: &dyn Store) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                store.due_timers(Millis::MAX, 1).unwrap();
            }
        });
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for i in 0..2_000 {
                let entry = timer(i, &format!("c{i}"));
                write(store, &timers_write(vec![], vec![entry.clone()]));
                assert_eq!(
                    store.next_timer().unwrap(),
                    Some(entry.clone()),
                    "timers_set_while_scans_run_are_found: a timer written beside a scan is the next"
                );
                assert_eq!(
                    store.due_timers(i, 10).unwrap(),
                    vec![entry.clone()],
                    "timers_set_while_scans_run_are_found: and due"
                );
                write(store, &timers_write(vec![entry], vec![]));
            }
        }));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    });
}

/// A scan may remember where the live timers begin (a store may skip what it fired), but a
/// timer set earlier than anything scanned before is still found, and so is the next one.
pub fn timers_set_before_earlier_scans_are_found(store: &dyn Store) {
    write(
        store,
        &timers_write(vec![], vec![timer(10, "a"), timer(20, "b")]),
    );
    assert_eq!(store.due_timers(15, 10).unwrap(), vec![timer(10, "a")]);
    write(store, &timers_write(vec![timer(10, "a")], vec![]));
    assert_eq!(store.due_timers(15, 10).unwrap(), vec![]);
    assert_eq!(store.due_timers(100, 10).unwrap(), vec![timer(20, "b")]);
    write(
        store,
        &timers_write(vec![], vec![timer(5, "c"), timer(-7, "d")]),
    );
    assert_eq!(
        store.due_timers(100, 10).unwrap(),
        vec![timer(-7, "d"), timer(5, "c"), timer(20, "b")]
    );
    assert_eq!(store.next_timer().unwrap(), Some(timer(-7, "d")));
    write(
        store,
        &timers_write(vec![timer(-7, "d"), timer(5, "c"), timer(20, "b")], vec![]),
    );
    assert_eq!(store.due_timers(1000, 10).unwrap(), vec![]);
    assert_eq!(store.next_timer().unwrap(), None);
    write(store, &timers_write(vec![], vec![timer(999, "e")]));
    assert_eq!(store.next_timer().unwrap(), Some(timer(999, "e")));
    assert_eq!(store.due_timers(999, 10).unwrap(), vec![timer(999, "e")]);
}

/// Setting a present entry and clearing an absent one change nothing, counter included.
pub fn timer_duplicates_idempotent(store: &dyn Store) {
    write(
        store,
        &timers_write(vec![], vec![timer(1, "a"), timer(1, "a"), timer(2, "a")]),
    );
    assert_eq!(
        store.pending_timers(),
        2,
        "a duplicate in one write counts once"
    );
    write(store, &timers_write(vec![], vec![timer(1, "a")]));
    assert_eq!(store.pending_timers(), 2, "setting a present entry again");
    write(
        store,
        &timers_write(vec![timer(3, "a"), timer(1, "b"), timer(-1, "a")], vec![]),
    );
    assert_eq!(store.pending_timers(), 2, "clearing absent entries");
    write(
        store,
        &timers_write(vec![timer(1, "a"), timer(1, "a")], vec![]),
    );
    assert_eq!(store.pending_timers(), 1, "a duplicate clear counts once");
    write(store, &timers_write(vec![timer(1, "a")], vec![]));
    assert_eq!(store.pending_timers(), 1, "clearing it again");
    assert_eq!(all_timers(store), vec![timer(2, "a")]);
    write(store, &timers_write(vec![timer(2, "a")], vec![]));
    assert_eq!(store.pending_timers(), 0);
    assert_eq!(all_timers(store), vec![]);
    write(store, &timers_write(vec![timer(2, "a")], vec![]));
    assert_eq!(store.pending_timers(), 0, "never below zero");
    write(store, &timers_write(vec![], vec![timer(9, "n")]));
    assert_eq!(store.pending_timers(), 1, "still exact afterwards");
}

/// Offsets are kept one per `(topic, partition)`, the last written winning, read back sorted.
pub fn offsets_overwrite_per_partition(store: &dyn Store) {
    assert!(store.offsets().unwrap().is_empty());
    let set = WriteSet {
        offsets: vec![
            offset("b", 0, 10),
            offset("aa", 1, 5),
            offset("aa", 0, 7),
            offset("aa", -1, 1),
            offset("b", 0, 11),
        ],
        ..WriteSet::default()
    };
    write(store, &set);
    let want = vec![
        offset("aa", -1, 1),
        offset("aa", 0, 7),
        offset("aa", 1, 5),
        offset("b", 0, 11),
    ];
    assert_eq!(
        store.offsets().unwrap(),
        want,
        "last wins, sorted by (topic, partition)"
    );

    let set = WriteSet {
        offsets: vec![offset("aa", 0, 8), offset("", i32::MAX, i64::MAX)],
        timer_partitions: vec![],
        owners: vec![],
        ..WriteSet::default()
    };
    write(store, &set);
    let want = vec![
        offset("", i32::MAX, i64::MAX),
        offset("aa", -1, 1),
        offset("aa", 0, 8),
        offset("aa", 1, 5),
        offset("b", 0, 11),
    ];
    assert_eq!(store.offsets().unwrap(), want);

    let long = "t".repeat(MAX_TOPIC_BYTES);
    write(
        store,
        &WriteSet {
            offsets: vec![offset(&long, i32::MIN, 0)],
            timer_partitions: vec![],
            owners: vec![],
            ..WriteSet::default()
        },
    );
    assert!(
        store
            .offsets()
            .unwrap()
            .contains(&offset(&long, i32::MIN, 0)),
        "longest topic"
    );
}

/// Journeys come back as stored, every version, sorted by `(id, version)`.
pub fn journeys_round_trip_sorted(store: &dyn Store) {
    assert!(store.journeys().unwrap().is_empty());
    store.put_journeys(&[]).unwrap();
    assert!(store.journeys().unwrap().is_empty(), "putting none");
    store
        .put_journeys(&[
            journey("welcome", 2),
            journey("b", 1),
            journey("welcome", 10),
        ])
        .unwrap();
    store
        .put_journeys(&[journey("aa", 3), journey("welcome", 1), journey("", 0)])
        .unwrap();
    let longest = "j".repeat(MAX_JOURNEY_ID_BYTES);
    store.put_journeys(&[journey(&longest, u32::MAX)]).unwrap();
    let mut want = vec![
        journey("", 0),
        journey("aa", 3),
        journey("b", 1),
        journey(&longest, u32::MAX),
        journey("welcome", 1),
        journey("welcome", 2),
        journey("welcome", 10),
    ];
    assert_eq!(store.journeys().unwrap(), want);

    let mut changed = journey("b", 1);
    changed.digest = 42;
    changed.source = String::new();
    store.put_journeys(&[changed.clone()]).unwrap();
    want[2] = changed;
    assert_eq!(
        store.journeys().unwrap(),
        want,
        "same (id, version) overwrites"
    );
}

/// A batch of journeys with one that cannot be stored stores none of them.
pub fn put_journeys_atomic(store: &dyn Store) {
    store.put_journeys(&[journey("keep", 1)]).unwrap();
    let too_long = "x".repeat(MAX_JOURNEY_ID_BYTES + 1);
    let err = store
        .put_journeys(&[journey("new", 1), journey(&too_long, 1), journey("keep", 2)])
        .expect_err("a too-long journey id is refused");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(!err.is_transient());
    assert_eq!(store.journeys().unwrap(), vec![journey("keep", 1)]);
}

/// A successful write makes every part visible together.
pub fn write_all_parts_together(store: &dyn Store) {
    write(
        store,
        &WriteSet {
            customers: vec![put("a", b"state"), put("b", b"state")],
            clear_timers: vec![],
            set_timers: vec![timer(10, "a"), timer(20, "b")],
            offsets: vec![offset("events", 3, 100)],
            timer_partitions: vec![],
            owners: vec![],
            history: vec![("a".into(), b"h1".to_vec()), ("b".into(), b"h1".to_vec())],
            history_limit: 8,
            counts: vec![(3, b"n1".to_vec())],
            customers_existed: None,
            timers_existed: None,
        },
    );
    write(
        store,
        &WriteSet {
            customers: vec![put("a", b"state2"), delete("b")],
            clear_timers: vec![timer(10, "a"), timer(20, "b")],
            set_timers: vec![timer(15, "a")],
            offsets: vec![offset("events", 3, 101), offset("events", 4, 7)],
            timer_partitions: vec![],
            owners: vec![],
            history: vec![("a".into(), b"h2".to_vec())],
            history_limit: 8,
            counts: vec![(3, b"n2".to_vec()), (-4, b"x".to_vec())],
            customers_existed: None,
            timers_existed: None,
        },
    );
    assert_eq!(
        store.history("a").unwrap(),
        vec![b"h1".to_vec(), b"h2".to_vec()]
    );
    assert!(store.history("b").unwrap().is_empty(), "deleted with b");
    assert_eq!(
        store.customer("a").unwrap().as_deref(),
        Some(&b"state2"[..])
    );
    assert_eq!(store.customer("b").unwrap(), None);
    assert_eq!(all_timers(store), vec![timer(15, "a")]);
    assert_eq!(
        store.offsets().unwrap(),
        vec![offset("events", 3, 101), offset("events", 4, 7)]
    );
    assert_eq!(store.customer_count(), 1);
    assert_eq!(store.pending_timers(), 1);
    // Each partition's counts are the last written for it.
    assert_eq!(store.counts(3).unwrap().as_deref(), Some(&b"n2"[..]));
    assert_eq!(store.counts(-4).unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(store.counts(4).unwrap(), None);
}

fn snapshot(store: &dyn Store, ids: &[&str]) -> impl PartialEq + std::fmt::Debug {
    (
        store.customers(ids).unwrap(),
        all_timers(store),
        store.offsets().unwrap(),
        store.journeys().unwrap(),
        store.customer_count(),
        store.pending_timers(),
        ids.iter()
            .map(|id| store.history(id).unwrap())
            .collect::<Vec<_>>(),
        store.counts(0).unwrap(),
    )
}

/// A write refused for one bad part changes nothing at all, counters included.
pub fn write_refused_changes_nothing(store: &dyn Store) {
    write(
        store,
        &WriteSet {
            customers: vec![put("a", b"1"), put("b", b"1")],
            clear_timers: vec![],
            set_timers: vec![timer(1, "a")],
            offsets: vec![offset("events", 0, 5)],
            timer_partitions: vec![],
            owners: vec![],
            history: vec![("a".into(), b"h".to_vec())],
            history_limit: 4,
            counts: vec![(0, b"n".to_vec())],
            customers_existed: None,
            timers_existed: None,
        },
    );
    let ids = ["a", "b", "c"];
    let before = snapshot(store, &ids);
    let bad = WriteSet {
        customers: vec![put("c", b"1"), delete("a"), put("b", b"2")],
        clear_timers: vec![timer(1, "a")],
        set_timers: vec![timer(2, "c")],
        timer_partitions: vec![("c".into(), 0)],
        owners: vec![],
        offsets: vec![
            offset("events", 0, 6),
            offset(&"t".repeat(MAX_TOPIC_BYTES + 1), 0, 1),
        ],
        history: vec![("a".into(), b"x".to_vec()), ("c".into(), b"x".to_vec())],
        history_limit: 1,
        counts: vec![(0, b"m".to_vec())],
        customers_existed: None,
        timers_existed: None,
    };
    let err = store.write(&bad).expect_err("a too-long topic is refused");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(!err.is_transient());
    assert_eq!(snapshot(store, &ids), before);
}

/// An empty write succeeds and changes nothing.
pub fn empty_write_changes_nothing(store: &dyn Store) {
    write(
        store,
        &WriteSet {
            customers: vec![put("a", b"1")],
            set_timers: vec![timer(1, "a")],
            ..WriteSet::default()
        },
    );
    let before = snapshot(store, &["a"]);
    write(store, &WriteSet::default());
    assert_eq!(snapshot(store, &["a"]), before);
}

/// The size estimate is positive once something is stored.
pub fn size_grows_with_writes(store: &dyn Store) {
    let value = vec![7u8; 4096];
    let customers = (0..64).map(|i| (format!("customer-{i}"), Some(value.clone())));
    write(store, &customers_write(customers.collect()));
    assert!(store.size_bytes() > 0, "size after writes");
}

/// A deterministic pseudo-random generator (SplitMix64), so the suite needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

#[derive(Default)]
struct Model {
    customers: BTreeMap<String, Vec<u8>>,
    timers: BTreeSet<(Millis, String)>,
    offsets: BTreeMap<(String, i32), i64>,
}

impl Model {
    fn apply(&mut self, set: &WriteSet) {
        for (id, value) in &set.customers {
            match value {
                Some(v) => self.customers.insert(id.clone(), v.clone()),
                None => self.customers.remove(id),
            };
        }
        for t in &set.clear_timers {
            self.timers.remove(t);
        }
        for t in &set.set_timers {
            self.timers.insert(t.clone());
        }
        for o in &set.offsets {
            self.offsets.insert((o.topic.clone(), o.partition), o.next);
        }
    }
}

/// Hundreds of random writes over a small key space, checked against a model after each one:
/// contents, order, both counters, bounds and limits.
pub fn random_writes_match_model(store: &dyn Store) {
    const IDS: &[&str] = &["", "a", "ab", "b", "é", "c-1", "c-10", "c-2"];
    const DUES: &[Millis] = &[Millis::MIN, -256, -255, -1, 0, 1, 255, 256, Millis::MAX];
    const TOPICS: &[&str] = &["", "t", "aa", "b"];
    let mut rng = Rng(0x5eed_0000_2024);
    let mut model = Model::default();
    for step in 0..400 {
        let mut set = WriteSet::default();
        for _ in 0..rng.below(4) {
            let id = rng.pick(IDS).to_string();
            if rng.below(3) == 0 {
                set.customers.push((id, None));
            } else {
                let len = rng.below(5);
                let value = (0..len).map(|_| rng.next() as u8).collect();
                set.customers.push((id, Some(value)));
            }
        }
        if rng.below(2) == 0 {
            // What a caller that read the states first would say.
            let mut seen = std::collections::BTreeSet::new();
            let known = set
                .customers
                .iter()
                .map(|(id, _)| seen.insert(id.clone()) && model.customers.contains_key(id))
                .collect();
            set.customers_existed = Some(known);
        }
        for _ in 0..rng.below(4) {
            // Half of the clears hit a present entry, half are most likely absent.
            let present: Vec<_> = model.timers.iter().cloned().collect();
            if !present.is_empty() && rng.below(2) == 0 {
                set.clear_timers.push(rng.pick(&present));
            } else {
                set.clear_timers
                    .push((rng.pick(DUES), rng.pick(IDS).to_string()));
            }
        }
        for _ in 0..rng.below(4) {
            set.set_timers
                .push((rng.pick(DUES), rng.pick(IDS).to_string()));
        }
        for _ in 0..rng.below(3) {
            let partition = rng.below(4) as i32 - 1;
            set.offsets
                .push(offset(rng.pick(TOPICS), partition, rng.next() as i64));
        }
        if rng.below(2) == 0 {
            // What a caller that read the index first would say, of some of the entries.
            let known = set
                .clear_timers
                .iter()
                .chain(&set.set_timers)
                .map(|t| (rng.below(3) > 0).then(|| model.timers.contains(t)))
                .collect();
            set.timers_existed = Some(known);
        }
        let refuse = rng.below(20) == 0;
        if refuse {
            set.offsets
                .push(offset(&"x".repeat(MAX_TOPIC_BYTES + 1), 0, 0));
            assert!(store.write(&set).is_err(), "step {step}: refused write");
        } else {
            write(store, &set);
            model.apply(&set);
        }

        let want_customers: Vec<_> = IDS
            .iter()
            .map(|id| model.customers.get(*id).cloned())
            .collect();
        assert_eq!(
            store.customers(IDS).unwrap(),
            want_customers,
            "step {step}: customers"
        );
        assert_eq!(
            store.customer_count(),
            model.customers.len() as u64,
            "step {step}: customer_count"
        );
        assert_eq!(
            store.pending_timers(),
            model.timers.len() as u64,
            "step {step}: pending_timers"
        );
        let want_timers: Vec<_> = model.timers.iter().cloned().collect();
        assert_eq!(all_timers(store), want_timers, "step {step}: timers");
        assert_eq!(
            store.next_timer().unwrap(),
            want_timers.first().cloned(),
            "step {step}: next_timer"
        );
        let up_to = rng.pick(DUES);
        let limit = rng.below(5);
        let want_due: Vec<_> = want_timers
            .iter()
            .filter(|(due, _)| *due <= up_to)
            .take(limit)
            .cloned()
            .collect();
        assert_eq!(
            store.due_timers(up_to, limit).unwrap(),
            want_due,
            "step {step}: due_timers({up_to}, {limit})"
        );
        // Some present entries and maybe an absent one left out, as a reader through unwritten
        // writes asks.
        let mut skip: Vec<(Millis, String)> = want_timers
            .iter()
            .filter(|_| rng.below(3) == 0)
            .cloned()
            .collect();
        if rng.below(2) == 0 {
            skip.push((rng.pick(DUES), rng.pick(IDS).to_string()));
        }
        skip.sort();
        skip.dedup();
        let want_except: Vec<_> = want_timers
            .iter()
            .filter(|t| t.0 <= up_to && skip.binary_search(t).is_err())
            .take(limit)
            .cloned()
            .collect();
        let skip: Vec<(Millis, &str)> = skip.iter().map(|(d, c)| (*d, c.as_str())).collect();
        let got: Vec<_> = store
            .due_timers_in_except(up_to, limit, &|_| true, &skip)
            .unwrap()
            .into_iter()
            .map(|t| (t.due, t.customer))
            .collect();
        assert_eq!(
            got, want_except,
            "step {step}: due_timers_in_except({up_to}, {limit}, {skip:?})"
        );
        let want_offsets: Vec<_> = model
            .offsets
            .iter()
            .map(|((topic, partition), next)| offset(topic, *partition, *next))
            .collect();
        assert_eq!(
            store.offsets().unwrap(),
            want_offsets,
            "step {step}: offsets"
        );
    }
}

fn history_write(entries: &[(&str, &[u8])], limit: usize) -> WriteSet {
    WriteSet {
        history: entries
            .iter()
            .map(|(id, e)| ((*id).to_owned(), e.to_vec()))
            .collect(),
        history_limit: limit,
        ..WriteSet::default()
    }
}

/// History entries append in order, per customer, are trimmed to the newest `history_limit`,
/// go with the rest of their write, and go when the customer is deleted.
pub fn history_appends_and_trims(store: &dyn Store) {
    assert!(store.history("c1").unwrap().is_empty(), "no history yet");
    store
        .write(&history_write(
            &[("c1", b"a"), ("c2", b"x"), ("c1", b"b")],
            3,
        ))
        .unwrap();
    store.write(&history_write(&[("c1", b"")], 3)).unwrap();
    assert_eq!(
        store.history("c1").unwrap(),
        vec![b"a".to_vec(), b"b".to_vec(), Vec::new()],
        "appended in order, an empty entry kept"
    );
    assert_eq!(store.history("c2").unwrap(), vec![b"x".to_vec()]);
    store
        .write(&history_write(&[("c1", b"c"), ("c1", b"d")], 3))
        .unwrap();
    assert_eq!(
        store.history("c1").unwrap(),
        vec![Vec::new(), b"c".to_vec(), b"d".to_vec()],
        "trimmed to the newest 3"
    );
    store.write(&history_write(&[("c1", b"e")], 2)).unwrap();
    assert_eq!(
        store.history("c1").unwrap(),
        vec![b"d".to_vec(), b"e".to_vec()],
        "trimmed to the newest 2 when the limit shrinks"
    );
    // Atomic with the rest: a write refused for its offsets appends nothing.
    let mut bad = history_write(&[("c2", b"y")], 3);
    bad.offsets
        .push(offset(&"t".repeat(crate::MAX_TOPIC_BYTES + 1), 0, 1));
    assert!(store.write(&bad).is_err());
    assert_eq!(
        store.history("c2").unwrap(),
        vec![b"x".to_vec()],
        "nothing appended"
    );
    // Deleting the customer deletes the history; entries in the same write come after.
    store
        .write(&customers_write(vec![put("c2", b"s")]))
        .unwrap();
    let mut gone = customers_write(vec![delete("c2")]);
    gone.history.push(("c2".into(), b"z".to_vec()));
    gone.history_limit = 3;
    store.write(&gone).unwrap();
    assert_eq!(store.history("c2").unwrap(), vec![b"z".to_vec()]);
    let large = vec![7u8; 100_000];
    store.write(&history_write(&[("c3", &large)], 1)).unwrap();
    assert_eq!(store.history("c3").unwrap(), vec![large]);
}

/// [`Store::customers_of`] lists the customers written with an owner, per partition, in id
/// order and in pages; a delete takes them off; a customer written without an owner is not
/// listed; the last operation of a write decides.
pub fn customers_of_lists_each_partition_in_pages(store: &dyn Store) {
    let mut set = WriteSet {
        customers: ["b", "a", "c", "d", "n"]
            .iter()
            .map(|id| put(id, b"s"))
            .collect(),
        ..WriteSet::default()
    };
    set.owners = vec![
        ("a".into(), 0),
        ("b".into(), 0),
        ("c".into(), 0),
        ("d".into(), 1),
        ("x".into(), 1),
    ];
    store.write(&set).unwrap();
    assert_eq!(store.customers_of(0, None, 10).unwrap(), ["a", "b", "c"]);
    assert_eq!(store.customers_of(0, None, 2).unwrap(), ["a", "b"]);
    assert_eq!(store.customers_of(0, Some("b"), 2).unwrap(), ["c"]);
    assert_eq!(
        store.customers_of(0, Some("c"), 2).unwrap(),
        Vec::<String>::new()
    );
    // "x" was not written, "n" has no owner: neither is listed.
    assert_eq!(store.customers_of(1, None, 10).unwrap(), ["d"]);
    assert!(store.customers_of(2, None, 10).unwrap().is_empty());
    assert!(store.customers_of(-1, None, 10).unwrap().is_empty());
    // A delete takes the customer off; a put then a delete in one write leaves them off.
    let gone = WriteSet {
        customers: vec![delete("b"), put("e", b"s"), delete("e")],
        owners: vec![("b".into(), 0), ("e".into(), 0)],
        ..WriteSet::default()
    };
    store.write(&gone).unwrap();
    assert_eq!(store.customers_of(0, None, 10).unwrap(), ["a", "c"]);
    // A customer stored before stays listed where they were.
    let again = WriteSet {
        customers: vec![put("a", b"t")],
        owners: vec![("a".into(), 1)],
        ..WriteSet::default()
    };
    store.write(&again).unwrap();
    assert_eq!(store.customers_of(0, None, 10).unwrap(), ["a", "c"]);
    assert_eq!(store.customers_of(1, None, 10).unwrap(), ["d"]);
    // Partitions at the ends of the range keep apart.
    let ends = WriteSet {
        customers: vec![put("lo", b"s"), put("hi", b"s")],
        owners: vec![("lo".into(), i32::MIN), ("hi".into(), i32::MAX)],
        ..WriteSet::default()
    };
    store.write(&ends).unwrap();
    assert_eq!(store.customers_of(i32::MIN, None, 10).unwrap(), ["lo"]);
    assert_eq!(store.customers_of(i32::MAX, None, 10).unwrap(), ["hi"]);
}
