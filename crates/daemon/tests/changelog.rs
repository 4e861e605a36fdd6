//! The changelog on the in-process mock cluster with real RocksDB: customers move with their
//! partitions between replicas (a replica on an empty volume takes over where another
//! stopped), a revoked partition is no longer written, and bad changelogs are clear errors.

mod common;

use common::*;
use journeyd_store::Store as _;
use journeyd_types::{Action, Event};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads until every action in `expected` came, and a while after; then checks that each
/// action that came is the simulator's and none came twice (`why` says why none may).
async fn exactly(reader: &mut Reader, expected: &BTreeMap<String, Action>, why: &str) {
    until_every_expected(reader, expected, Duration::from_secs(40)).await;
    assert_eq!(reader.actions.len(), expected.len(), "{why}");
}

/// The changelog topic's records: (partition, key).
fn changelog_keys(rig: &Rig) -> Vec<(i32, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.cluster.bootstrap_servers())
        .set("group.id", unique("changelog-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{}.changelog", rig.group)])
        .unwrap();
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut quiet = 0;
    while std::time::Instant::now() < until && quiet < 10 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet = 0;
                out.push((m.partition(), m.key().unwrap_or_default().to_vec()));
            }
            _ if !out.is_empty() => quiet += 1,
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_an_empty_volume_takes_over_the_customers_where_another_stopped() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("10s"))]);
    let first = rig.config();
    let running = rig.start(first.clone());
    running.until_ready().await;
    let t = now();
    let mut events = Vec::new();
    for i in 0..30 {
        let c = format!("m{i}");
        events.push(event(&format!("{c}-s"), &c, "signup", Some("web"), t));
        if i % 3 == 0 {
            events.push(event(
                &format!("{c}-o"),
                &c,
                "app_opened",
                Some("app"),
                t + 1,
            ));
        }
    }
    rig.publish(&events).await;
    let mut reader = rig.reader();
    reader
        .until(
            "the welcome emails and the cancels",
            Duration::from_secs(30),
            |r| r.actions.len() >= 40,
        )
        .await;
    running.stop().await;
    assert!(now() < t + 10_000, "stopped while every customer waits");
    let keys = changelog_keys(&rig);
    assert!(
        keys.iter()
            .filter(|(_, k)| k.first() == Some(&b'c'))
            .count()
            >= 30,
        "every customer's state is in the changelog: {} records",
        keys.len()
    );

    // Another replica, on an empty volume, in the same group: it restores the customers and
    // their timers, and the waits end there.
    let mut second = rig.config();
    second.store.path = rig.dir.path().join("another-volume");
    let running = rig.start(second);
    running.until_ready().await;
    let restored = running.shared.metrics.restored_records.get();
    assert!(restored >= 30, "restored {restored} records");
    // Customers who come back after the move: their state came with them.
    let later = now();
    let more = vec![
        event("m1-o", "m1", "app_opened", Some("app"), later),
        event("m2-x", "m2", "account_closed", None, later),
    ];
    rig.publish(&more).await;
    events.extend(more);
    let expected = simulated(&rig, &events, t + 60_000);
    exactly(
        &mut reader,
        &expected,
        "a clean handover sends nothing twice",
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_changelog_record_stops_that_partitions_restore_naming_where_it_is() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("4s"))]);
    let topic = format!("{}.changelog", rig.group);
    let p = rig.producer();
    p.send(
        FutureRecord::to(&topic)
            .partition(1)
            .key(b"cbroken".as_slice())
            .payload(b"\x01\xff\xff".as_slice()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let running = rig.start(rig.config());
    let start = std::time::Instant::now();
    let why = loop {
        match running.shared.readiness() {
            Err(why) if why.contains("failed") => break why,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no restore failure reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(why.contains("partition 1"), "{why}");
    assert!(why.contains(&format!("{topic} [1] offset 0")), "{why}");
    assert!(why.contains("does not decode"), "{why}");
    // The other partition flows: a customer whose events are on partition 0 is served.
    let mut reader = rig.reader();
    let t = now();
    let mut sent = 0;
    for i in 0..20 {
        let c = format!("k{i}");
        rig.publish(&[event(&format!("{c}-s"), &c, "signup", None, t)])
            .await;
        sent += 1;
    }
    reader
        .until("some welcome emails", Duration::from_secs(20), |r| {
            !r.actions.is_empty()
        })
        .await;
    reader.settle(Duration::from_millis(500)).await;
    assert!(
        reader.actions.len() < sent,
        "partition 1's customers wait: {} of {sent}",
        reader.actions.len()
    );
    running.shutdown.cancel();
    let _ = running.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_changelog_the_broker_cannot_create_and_a_wrong_partition_count_stop_the_start() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("4s"))]);
    // The mock cluster cannot create topics for a client.
    let mut config = rig.config();
    config.store.changelog_topic = "not-there.changelog".into();
    let running = rig.start(config);
    let error = running.task.await.unwrap().unwrap_err().to_string();
    drop(running.shared);
    assert!(
        error.contains("not-there.changelog does not exist"),
        "{error}"
    );
    assert!(error.contains("cleanup.policy=compact"), "{error}");
    assert!(error.contains("2 partitions"), "{error}");

    rig.cluster.create_topic("three.changelog", 3).unwrap();
    let mut config = rig.config();
    config.store.changelog_topic = "three.changelog".into();
    let running = rig.start(config);
    let error = running.task.await.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("three.changelog has 3 partitions but the input topics have 2"),
        "{error}"
    );
}

/// The partition numbers `running` owns (assigned and restored).
fn owned(running: &Running) -> Vec<i32> {
    (0..2)
        .filter(|p| running.shared.partitions.owns(*p))
        .collect()
}

/// The offsets `running`'s store holds for partition `p`: the input topic's and the
/// changelog's checkpoint.
fn stored_at(running: &Running, p: i32) -> Vec<(String, i64)> {
    running
        .shared
        .store
        .offsets()
        .unwrap()
        .into_iter()
        .filter(|o| o.partition == p)
        .map(|o| (o.topic, o.next))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_is_no_longer_fired_or_written_by_its_old_owner() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("12s"))]);
    let a = rig.start(rig.config());
    a.until_ready().await;
    let t = now();
    let mut events: Vec<Event> = (0..20)
        .map(|i| event(&format!("v{i}-s"), &format!("v{i}"), "signup", None, t))
        .collect();
    rig.publish(&events).await;
    let mut reader = rig.reader();
    reader
        .until("the welcome emails", Duration::from_secs(30), |r| {
            r.actions.len() >= 20
        })
        .await;
    // A second replica joins: one partition moves to it, with its customers and their waits.
    let mut config = rig.config();
    config.store.path = rig.dir.path().join("b-volume");
    let b = rig.start(config);
    let start = std::time::Instant::now();
    let moved = loop {
        let (on_a, on_b) = (owned(&a), owned(&b));
        if on_a.len() == 1 && on_b.len() == 1 && on_a != on_b {
            break on_b[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no split: a owns {on_a:?}, b owns {on_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(now() < t + 12_000, "the split came before the waits end");
    let a_had = stored_at(&a, moved);
    assert!(
        !a_had.is_empty(),
        "a wrote partition {moved} while it owned it"
    );
    // Every customer opens the app: the moved partition's events are b's now.
    let opened: Vec<Event> = (0..20)
        .map(|i| {
            let c = format!("v{i}");
            event(&format!("{c}-o"), &c, "app_opened", Some("app"), now())
        })
        .collect();
    rig.publish(&opened).await;
    events.extend(opened);
    let expected = simulated(&rig, &events, t + 60_000);
    exactly(
        &mut reader,
        &expected,
        "each timer fired once: the old owner fires none of the moved partition's",
    )
    .await;
    assert_eq!(
        stored_at(&a, moved),
        a_had,
        "the old owner wrote nothing of partition {moved} since it was revoked"
    );
    assert!(
        b.shared.metrics.restored_records.get() > 0,
        "b restored the moved customers"
    );
    b.stop().await;
    a.stop().await;
}

/// Produces changelog records (key, value) to partition 0 of `topic`, in order.
async fn produce_records(rig: &Rig, topic: &str, records: &[(Vec<u8>, Option<Vec<u8>>)]) {
    let p = rig.producer();
    for (k, v) in records {
        let mut r = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(0)
            .key(k.as_slice());
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        p.send(r, Duration::from_secs(5)).await.unwrap();
    }
}

fn customer(applied: i64, wake: Option<i64>) -> Option<Vec<u8>> {
    use journeyd::changelog::record::{encode_customer, CustomerRecord};
    // The state's own wake is the record's, as the processor writes them.
    let state = journeyd_engine::CustomerState {
        wake,
        ..Default::default()
    };
    Some(encode_customer(&CustomerRecord {
        state: state.to_bytes(),
        wake,
        history: Vec::new(),
        applied: vec![("touchpoints".into(), applied)],
    }))
}

fn restore_into(
    rig: &Rig,
    store: &dyn journeyd_store::Store,
    topic: &str,
) -> Result<journeyd::changelog::restore::Restored, journeyd::changelog::restore::RestoreError> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", rig.cluster.bootstrap_servers());
    journeyd::changelog::restore::restore(
        &client,
        store,
        topic,
        0,
        10,
        &std::sync::atomic::AtomicBool::new(false),
        &|_, _| {},
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_the_guards_of_a_half_landed_batch_across_restarts() {
    use journeyd::changelog::record::{customer_key, encode_position, position_key};
    let rig = Rig::new(&[("welcome.yaml", &welcome("4s"))]);
    let topic = "guards.changelog";
    rig.cluster.create_topic(topic, 1).unwrap();
    // A landed batch (c1 applied offset 4, then the position 5), a later position from an
    // owner that lost the partition and wrote on (3: older), then the first customer of a
    // batch whose position never came (c2 applied offset 9).
    produce_records(
        &rig,
        topic,
        &[
            (customer_key("c1"), customer(4, Some(1_000))),
            (position_key("touchpoints"), Some(encode_position(5))),
            (position_key("touchpoints"), Some(encode_position(3))),
            (customer_key("c2"), customer(9, Some(2_000))),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store =
        journeyd_store_rocksdb::RocksStore::open(&dir.path().join("store"), &Default::default())
            .unwrap();
    let first = restore_into(&rig, &store, topic).unwrap();
    assert_eq!(first.records, 4);
    assert_eq!(
        first.resume,
        [("touchpoints".to_owned(), 5)],
        "positions only grow"
    );
    assert_eq!(
        first.applied.get("c2"),
        Some(&vec![("touchpoints".to_owned(), 9)]),
        "c2's state holds events up to 9, past the position"
    );
    assert!(!first.applied.contains_key("c1"), "c1's are before it");
    assert_eq!(first.floor, Some(3), "the record behind c2's guard");
    assert_eq!(store.pending_timers(), 2, "both timers restored");
    let checkpoint = |store: &dyn journeyd_store::Store| {
        store
            .offsets()
            .unwrap()
            .into_iter()
            .find(|o| o.topic == topic)
            .map(|o| o.next)
    };
    assert_eq!(
        checkpoint(&store),
        Some(3),
        "the checkpoint stays before the record behind a guard"
    );
    // A restart before reading passes the guard: the restore finds it again.
    let again = restore_into(&rig, &store, topic).unwrap();
    assert_eq!(again.records, 1);
    assert_eq!(again.applied.get("c2"), first.applied.get("c2"));
    assert_eq!(again.resume, first.resume);

    // A checkpoint past the end of the partition (the changelog was made again): an error
    // that says so, not a silent read of nothing.
    store
        .write(&journeyd_store::WriteSet {
            offsets: vec![journeyd_store::Offset {
                topic: topic.into(),
                partition: 0,
                next: 100,
            }],
            ..Default::default()
        })
        .unwrap();
    let error = restore_into(&rig, &store, topic).unwrap_err().to_string();
    assert!(error.contains("up to offset 100, past the end"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_restored_over_stored_states_keeps_the_timer_index_and_counts_exact() {
    use journeyd::changelog::record::{customer_key, encode_position, position_key};
    let rig = Rig::new(&[("welcome.yaml", &welcome("4s"))]);
    let topic = "tail.changelog";
    rig.cluster.create_topic(topic, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        journeyd_store_rocksdb::RocksStore::open(&dir.path().join("store"), &Default::default())
            .unwrap();
    // What the volume holds: three customers with timers.
    produce_records(
        &rig,
        topic,
        &[
            (customer_key("moved"), customer(1, Some(1_000))),
            (customer_key("same"), customer(2, Some(2_000))),
            (customer_key("gone"), customer(3, Some(3_000))),
            (position_key("touchpoints"), Some(encode_position(4))),
        ],
    )
    .await;
    restore_into(&rig, &store, topic).unwrap();
    assert_eq!((store.customer_count(), store.pending_timers()), (3, 3));
    // The tail read at a restart: one timer moved, one the same, one customer deleted, one new
    // without a timer and one new with one, the new one twice in the chunk.
    produce_records(
        &rig,
        topic,
        &[
            (customer_key("moved"), customer(4, Some(5_000))),
            (customer_key("same"), customer(5, Some(2_000))),
            (customer_key("gone"), None),
            (customer_key("idle"), customer(6, None)),
            (customer_key("new"), customer(7, Some(6_000))),
            (customer_key("new"), customer(8, Some(7_000))),
            (position_key("touchpoints"), Some(encode_position(9))),
        ],
    )
    .await;
    let tail = restore_into(&rig, &store, topic).unwrap();
    assert_eq!(tail.records, 7, "only the tail is read");
    assert_eq!(store.customer_count(), 4, "moved, same, idle, new");
    let due = store.due_timers(i64::MAX, 100).unwrap();
    assert_eq!(
        due,
        [
            (2_000, "same".to_owned()),
            (5_000, "moved".to_owned()),
            (7_000, "new".to_owned())
        ],
        "each customer's timer once, where their last record puts it"
    );
    assert_eq!(store.pending_timers(), 3, "the count agrees with the index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_copy_keeps_the_partitions_of_another_replica_warm_for_its_failover() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("20s"))]);
    // Two replicas in one group, each owning one of the two partitions; b keeps standby
    // copies of what it does not own.
    let a = rig.start(rig.config());
    let mut config_b = rig.config();
    config_b.store.path = rig.dir.path().join("volume-b");
    config_b.store.standby_replicas = 1;
    let b = rig.start(config_b);
    a.until_ready().await;
    b.until_ready().await;
    let t = now();
    let events: Vec<Event> = (0..30)
        .map(|i| {
            let c = format!("w{i}");
            event(&format!("{c}-s"), &c, "signup", Some("web"), t)
        })
        .collect();
    rig.publish(&events).await;
    let mut reader = rig.reader();
    reader
        .until("the welcome emails", Duration::from_secs(30), |r| {
            r.actions.len() >= 30
        })
        .await;
    // Every customer is in b's store: its own partition's, and a's from the changelog.
    let start = std::time::Instant::now();
    loop {
        let missing: Vec<&str> = events
            .iter()
            .map(|e| e.customer_id.as_str())
            .filter(|c| b.shared.store.customer(c).unwrap().is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "b has no standby copy of {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmed = b.shared.metrics.standby_records.get();
    assert!(
        warmed >= 10,
        "b read {warmed} changelog records into its standby copy"
    );
    assert!(now() < t + 20_000, "every customer still waits");
    // a goes; its partition moves to b, whose restore reads only the tail since its last
    // standby round: nothing.
    let before = b.shared.metrics.restored_records.get();
    a.stop().await;
    let start = std::time::Instant::now();
    while b.shared.partitions.owned().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "b did not take a's partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = b.shared.metrics.restored_records.get() - before;
    assert!(
        tail < 5,
        "the failover restored {tail} records (the standby had read {warmed})"
    );
    // The moved customers' waits end on b, each once.
    let expected = simulated(&rig, &events, t + 60_000);
    exactly(
        &mut reader,
        &expected,
        "a clean failover sends nothing twice",
    )
    .await;
    b.stop().await;
}
