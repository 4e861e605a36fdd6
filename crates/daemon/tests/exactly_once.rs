//! `processing.guarantee = exactly_once` on the in-process mock cluster with real RocksDB: each
//! batch is a Kafka transaction; one the group coordinator refuses is aborted and replayed from
//! the last committed state; a broker without transactions and settings that cannot hold the
//! guarantee are refused at start.
//!
//! What the mock cluster cannot show: librdkafka's mock broker keeps no transaction markers
//! (its EndTxn only checks the producer id, its Fetch reports the last stable offset as the
//! high watermark and no aborted transactions), so its read_committed readers see the
//! messages of aborted transactions too, and its TxnOffsetCommit keeps no offsets. These tests therefore check what journeyd does (the
//! transactions it commits and aborts, what it replays, what it stores and commits), not
//! what a real broker hides.

mod common;

use common::*;
use journeyd::config::Guarantee;
use journeyd_types::Event;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn signups(prefix: &str, n: usize, at: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let c = format!("{prefix}{i}");
            event(&format!("{c}-s"), &c, "signup", Some("web"), at)
        })
        .collect()
}

/// The end of each input partition.
fn ends(rig: &Rig) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig.cluster.bootstrap_servers())
        .create()
        .unwrap();
    (0..2)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(&rig.input, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

/// Waits (20 s at most) until the store has read every input partition to its end and
/// `also` holds: the batches landed, each event applied once.
async fn until_stored_reaches_the_end(rig: &Rig, running: &Running, also: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored: BTreeMap<i32, i64> = running
            .shared
            .store
            .offsets()
            .unwrap()
            .into_iter()
            .filter(|o| o.topic == rig.input)
            .map(|o| (o.partition, o.next))
            .collect();
        if stored == ends(rig) && also() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stored {stored:?}, ends {:?}",
            ends(rig)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_is_aborted_and_its_batch_replayed_once() {
    if std::env::var_os("JOURNEYD_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("JOURNEYD_TEST_LOG").unwrap())
            .with_test_writer()
            .try_init();
    }
    let rig = Rig::new(&[("welcome.yaml", &welcome("1h"))]);
    let mut config = rig.config();
    config.processing.guarantee = Guarantee::ExactlyOnce;
    let running = rig.start(config);
    running.until_ready().await;
    let t = now();
    let first = signups("a", 10, t);
    rig.publish(&first).await;
    let mut reader = rig.reader();
    reader
        .until(
            "the first customers' welcomes",
            Duration::from_secs(30),
            |r| r.actions.len() >= 10,
        )
        .await;
    let m = &running.shared.metrics;
    assert!(
        m.transactions_committed.get() >= 1,
        "batches are transactions"
    );
    assert_eq!(m.transactions_aborted.get(), 0);

    // The group coordinator refuses the next batch's offsets, as it refuses a member the
    // group has moved on from: the transaction must abort, and the batch run again.
    rig.cluster.cluster().request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
    );
    let second = signups("b", 10, t + 1);
    rig.publish(&second).await;
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    let expected = simulated(&rig, &all, t + 60_000);
    reader
        .until(
            "every welcome, after the abort",
            Duration::from_secs(40),
            |r| {
                let got: BTreeSet<&str> = r.actions.iter().map(|a| a.action_id.as_str()).collect();
                expected.keys().all(|k| got.contains(k.as_str()))
            },
        )
        .await;
    // (The mock broker shows a batch's actions before its transaction ends: wait for it.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.transactions_aborted.get() == 0 {
        assert!(Instant::now() < deadline, "the refused batch aborts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And its replay commits.
    let committed = m.transactions_committed.get();
    while m.transactions_committed.get() == committed {
        assert!(Instant::now() < deadline, "the replay commits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.settle(Duration::from_millis(800)).await;
    assert_eq!(m.transactions_aborted.get(), 1, "one abort");
    // Every action is the simulator's; the aborted batch's actions came twice on this broker
    // (a real one hides the first copies from read_committed readers), each an exact repeat.
    for a in &reader.actions {
        assert_eq!(Some(a), expected.get(&a.action_id), "an exact repeat");
    }
    let distinct: BTreeSet<&str> = reader
        .actions
        .iter()
        .map(|a| a.action_id.as_str())
        .collect();
    assert_eq!(distinct.len(), expected.len(), "none missing, none extra");
    // The replay applied each event once: the stored states and offsets say so. (The offsets
    // the transactions commit to the group are not checked: the mock broker answers
    // TxnOffsetCommit without keeping them.)
    until_stored_reaches_the_end(&rig, &running, || true).await;
    // A customer of the aborted batch has the same story as one before it: entered, sent
    // the welcome, waiting; not entered twice.
    let story = |id: &str| running.shared.store.history(id).unwrap().len();
    let before = story("a0");
    assert!(before > 0);
    for e in &second {
        assert!(running
            .shared
            .store
            .customer(&e.customer_id)
            .unwrap()
            .is_some());
        assert_eq!(story(&e.customer_id), before, "{}", e.customer_id);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_kafka_refuses_for_good_goes_to_the_dead_letter_topic_on_the_replay() {
    if let Ok(filter) = std::env::var("JOURNEYD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let rig = Rig::new(&[("welcome.yaml", &welcome("1h"))]);
    let t = now();
    let first = signups("r", 5, t);
    rig.publish(&first).await;
    // The next produce request is refused as too large (journeyd's first: its start probe
    // produces nothing). In a transaction a refused message fails the transaction; the replay
    // must send that action to the action dead-letter topic at once, not to Kafka again, or
    // the batch would abort for ever.
    rig.cluster.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let mut config = rig.config();
    config.processing.guarantee = Guarantee::ExactlyOnce;
    let running = rig.start(config);
    let m = &running.shared.metrics;
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.transactions_aborted.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the transaction with the refusal aborts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Later customers still go through: nothing is wedged.
    let later = signups("s", 5, t + 1);
    rig.publish(&later).await;
    let all: Vec<Event> = first.iter().chain(&later).cloned().collect();
    let expected = simulated(&rig, &all, t + 60_000);
    let dead = || {
        m.actions_dead_lettered
            .with_label_values(&["too_large"])
            .get()
    };
    let mut reader = rig.reader();
    let later_ids: BTreeSet<String> = simulated(&rig, &later, t + 60_000).into_keys().collect();
    reader
        .until(
            "the later customers' welcomes",
            Duration::from_secs(30),
            |r| {
                let got: BTreeSet<&str> = r.actions.iter().map(|a| a.action_id.as_str()).collect();
                later_ids.iter().all(|k| got.contains(k.as_str()))
            },
        )
        .await;
    reader.settle(Duration::from_millis(800)).await;
    assert!(
        dead() >= 1,
        "the refused action went to the action dead-letter topic"
    );
    let got: BTreeSet<&str> = reader
        .actions
        .iter()
        .map(|a| a.action_id.as_str())
        .collect();
    let missing = expected
        .keys()
        .filter(|k| !got.contains(k.as_str()))
        .count() as u64;
    assert!(
        missing <= dead(),
        "every action is on its topic or dead-lettered: {missing} missing, {} dead-lettered",
        dead()
    );
    // The replay committed and landed: the store has read the input to its end.
    until_stored_reaches_the_end(&rig, &running, || m.transactions_committed.get() >= 1).await;
    // The refused batch's transaction aborts, and the producer's next one may too (librdkafka
    // bumps its epoch after the refusal's sequence gap); then none: nothing is wedged.
    let aborts = m.transactions_aborted.get();
    assert!(aborts <= 3, "{aborts} aborts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        m.transactions_aborted.get(),
        aborts,
        "no abort once it landed"
    );
    running.stop().await;
}
