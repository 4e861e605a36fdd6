//! End to end on a real broker nobody on this project wrote: the `journeyd` binary, as a
//! separate process, against `tansu` on loopback; touchpoints published and actions read by
//! an independent rdkafka client; the simulator as the oracle.
//!
//! The suites run one at a time (they share the machine's two cores with the broker and
//! journeyd, and the scripts' margins are a second).

use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_tests::client::{Publisher, Reader};
use journeyd_tests::journeyd::{http_port, http_request, Journeyd, Settings, OPERATOR_TOKEN};
use journeyd_tests::proxy::Proxy;
use journeyd_tests::scenario::{self, Rng, CHANNELS};
use journeyd_tests::tansu::Broker;
use journeyd_tests::{free_port, now_ms};
use journeyd_types::{Action, ActionKind, Event};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const INPUT: &str = "touchpoints";
const JSON_INPUT: &str = "touchpoints.json";
const DLQ: &str = "touchpoints.dlq";

/// A broker (behind a proxy when asked), the topics, a working folder and journeyd's settings.
struct World {
    broker: Broker,
    proxy: Option<Proxy>,
    dir: tempfile::TempDir,
    settings: Settings,
}

impl World {
    /// A broker (behind a proxy that can cut it, or not), its topics, and journeyd's settings
    /// with `in_flight` batches on their way to Kafka at most.
    fn new(with_proxy: bool, in_flight: usize) -> World {
        let (broker, proxy) = if with_proxy {
            let listen = free_port();
            let advertised = free_port();
            let broker = Broker::start_advertising(listen, advertised);
            let proxy = Proxy::start(advertised, broker.listen_addr());
            (broker, Some(proxy))
        } else {
            (Broker::start(), None)
        };
        broker.create_topic(INPUT, 4);
        broker.create_topic(JSON_INPUT, 4);
        broker.create_topic(DLQ, 1);
        for c in CHANNELS {
            broker.create_topic(&format!("actions.{c}"), 2);
        }
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            bootstrap: broker.bootstrap(),
            group: "journeyd".into(),
            journeys: scenario::journeys_dir(),
            store: dir.path().join("store"),
            input: INPUT.into(),
            // A second input topic makes journeyd use the range assignor (partition p of
            // both topics on one replica, for the changelog), whose eager rebalances tansu 0.6
            // holds up while a killed member is still in the group: only the poison test
            // reads JSON.
            json_input: None,
            http_port: http_port(),
            batches_in_flight: in_flight,
            max_event_bytes: Some(2000),
            session_timeout_ms: 6000,
            exactly_once: false,
            admin_port: None,
        };
        World {
            broker,
            proxy,
            dir,
            settings,
        }
    }

    fn journeyd(&self) -> Journeyd {
        Journeyd::start(self.dir.path(), &self.settings)
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(&self.broker.bootstrap(), INPUT)
    }

    fn reader(&self) -> Reader {
        let topics: Vec<String> = CHANNELS.iter().map(|c| format!("actions.{c}")).collect();
        Reader::new(&self.broker.bootstrap(), &topics, DLQ)
    }
}

/// Publishes each event once the wall clock reaches its `occurred_at`, in ticks of 50 ms,
/// calling `tick` with the time elapsed since the start after each one. Returns the most an
/// event was late (ms): panics when one was more than a second late, as journeyd's timers
/// then rightly fire before events that were due before them, and the simulator is no oracle.
async fn play(publisher: &Publisher, events: &[Event], mut tick: impl FnMut(i64)) -> i64 {
    let start = now_ms();
    let mut next = 0;
    let mut lag = 0;
    while next < events.len() {
        let now = now_ms();
        let due = events[next..]
            .iter()
            .take_while(|e| e.occurred_at <= now)
            .count();
        if due > 0 {
            publisher.events(&events[next..next + due]).await;
            let late = now_ms() - events[next].occurred_at;
            if late > 200 {
                eprintln!("late by {late} ms at event {next} of {}", events.len());
            }
            lag = lag.max(late);
            next += due;
        }
        tick(now_ms() - start);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lag < 1000,
        "the publisher fell {lag} ms behind: the test is no longer comparable to the simulator"
    );
    lag
}

fn wait_for_all(
    reader: &mut Reader,
    expected: &BTreeMap<String, Action>,
    events: &[Event],
    journeyd: &Journeyd,
) {
    let all = reader.within(Duration::from_secs(120), |r| {
        let got: BTreeSet<&str> = r.actions.iter().map(|a| a.action_id.as_str()).collect();
        expected.keys().all(|k| got.contains(k.as_str()))
    });
    if !all {
        let got: BTreeSet<&str> = reader
            .actions
            .iter()
            .map(|a| a.action_id.as_str())
            .collect();
        let missing: Vec<&Action> = expected
            .values()
            .filter(|a| !got.contains(a.action_id.as_str()))
            .collect();
        let first = missing[0];
        let theirs: Vec<&Event> = events
            .iter()
            .filter(|e| e.customer_id == first.customer_id)
            .collect();
        let arrived: Vec<&Action> = reader
            .actions
            .iter()
            .filter(|a| a.customer_id == first.customer_id)
            .collect();
        let log = journeyd.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        // The whole log outlives the test's folder, for a post-mortem.
        let kept = std::env::temp_dir().join(format!("journeyd-failed-{}.log", std::process::id()));
        let _ = std::fs::write(&kept, &log);
        let mut by_tp: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
        for (t, p, o) in &reader.read_at {
            by_tp.entry((t.clone(), *p)).or_default().push(*o);
        }
        for ((t, p), mut offs) in by_tp {
            offs.sort();
            let n = offs.len();
            offs.dedup();
            let gaps: Vec<_> = offs
                .windows(2)
                .filter(|w| w[1] != w[0] + 1)
                .map(|w| (w[0], w[1]))
                .collect();
            eprintln!(
                "{t}/{p}: {n} read, first {:?} last {:?}, gaps {gaps:?}",
                offs.first(),
                offs.last()
            );
        }
        for a in reader
            .actions
            .iter()
            .filter(|a| !expected.contains_key(&a.action_id))
        {
            eprintln!(
                "unexpected: {} {:?} {}/{} on {} at {}",
                a.customer_id, a.kind, a.journey, a.step, a.channel, a.created_at
            );
        }
        let all: Vec<String> = missing
            .iter()
            .take(20)
            .map(|a| {
                format!(
                    "{} {:?} {}/{} on {} at {}",
                    a.customer_id, a.kind, a.journey, a.step, a.channel, a.created_at
                )
            })
            .collect();
        panic!(
            "{} of {} expected actions never arrived:\n{}\nthe first: {first:#?}\nthat customer's events: {theirs:#?}\nwhat arrived for them: {arrived:#?}\njourneyd's whole log: {}\nits last lines (newest first):\n{}",
            missing.len(),
            expected.len(),
            all.join("\n"),
            kept.display(),
            tail.join("\n")
        );
    }
    // Anything unexpected or different would come soon after.
    reader.settle(Duration::from_millis(1500));
}

fn print_summary(what: &str, expected: &BTreeMap<String, Action>) {
    println!("{what}: {} actions expected", expected.len());
    for (k, n) in scenario::summary(expected) {
        println!("  {n:6}  {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actions_match_the_simulator_through_random_sigkills() {
    random_sigkills(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actions_match_the_simulator_through_random_sigkills_with_batches_in_flight() {
    random_sigkills(3).await;
}

async fn random_sigkills(in_flight: usize) {
    let _one = ONE_AT_A_TIME.lock().await;
    // Behind a proxy that holds the broker's answers back 80 ms, as a distant broker would:
    // each kill lands while a batch's actions are in the broker's log and not yet
    // acknowledged, so not yet written to the store. The replay must produce them again.
    let world = World::new(true, in_flight);
    let mut journeyd = world.journeyd();
    journeyd.wait_ready(Duration::from_secs(60));
    let proxy = world.proxy.as_ref().unwrap();
    proxy.delay_answers(Duration::from_millis(80));
    // Not the publisher's: its events must go out on time.
    proxy.answer_promptly(Publisher::CLIENT_ID);
    let events = scenario::plan("kill", 3000, now_ms() + 500, 56_000, 0x5eed_0001);
    let expected = scenario::expected(&events);
    print_summary("SIGKILL loop", &expected);
    // Kills at random moments of the load (seeded, so a failure can be replayed), from a
    // thread of their own: the publisher never waits for them. Each time journeyd stays down
    // for longer than the session timeout: tansu 0.6 can make a member that rejoins within
    // it the group's leader and leave it with no partitions.
    const KILLS: u32 = 4;
    let session = Duration::from_millis(world.settings.session_timeout_ms.into());
    let killer = std::thread::spawn(move || {
        let mut rng = Rng(0xdead_beef);
        let mut in_flight_kills = 0;
        for _ in 0..KILLS {
            std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
            // A restarted member restores its partitions from the changelog and reads its
            // backlog first: its first batch can take a few seconds.
            if journeyd
                .kill_with_a_batch_in_flight(Duration::from_millis(20), Duration::from_secs(15))
            {
                in_flight_kills += 1;
            }
            std::thread::sleep(session + Duration::from_millis(500 + rng.below(1500)));
            journeyd.spawn();
        }
        (journeyd, in_flight_kills)
    });
    let publisher = world.publisher();
    let lag = play(&publisher, &events, |_| {}).await;
    let (mut journeyd, in_flight_kills) = killer.join().expect("the kills");
    let mut reader = world.reader();
    wait_for_all(&mut reader, &expected, &events, &journeyd);
    let duplicates = scenario::check(&expected, &reader.actions);
    println!(
        "{} events (published at most {lag} ms late), journeyd started {} times, \
         {in_flight_kills} of its kills with a batch in flight: {} actions, {} of them \
         duplicates (exact repeats)",
        events.len(),
        journeyd.starts,
        reader.actions.len(),
        duplicates
    );
    assert_eq!(journeyd.starts, KILLS + 1);
    assert_eq!(
        in_flight_kills, KILLS,
        "every kill came with a batch in flight"
    );
    assert!(
        duplicates >= 1,
        "a kill with a batch in flight makes the replay produce it again"
    );
    assert!(reader.dead.is_empty(), "no dead letters: {:?}", reader.dead);
    assert!(
        journeyd.terminate(Duration::from_secs(30)).success(),
        "SIGTERM stops cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_that_fall_due_while_journeyd_is_down_fire_when_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let world = World::new(false, 1);
    let mut journeyd = world.journeyd();
    journeyd.wait_ready(Duration::from_secs(60));
    // Entries only: every wait then runs out (offer: +3 s and +6 s; basket: +2 s and +4 s).
    let events: Vec<Event> = scenario::plan("down", 400, now_ms() + 300, 1000, 0x5eed_0002)
        .into_iter()
        .filter(|e| matches!(e.event_type.as_str(), "risk_flagged" | "cart_abandoned"))
        .collect();
    let expected = scenario::expected(&events);
    let immediate: Vec<&Action> = expected
        .values()
        .filter(|a| {
            let entered = events
                .iter()
                .find(|e| e.customer_id == a.customer_id)
                .unwrap();
            a.created_at == entered.occurred_at
        })
        .collect();
    let publisher = world.publisher();
    play(&publisher, &events, |_| {}).await;
    let mut reader = world.reader();
    reader.until("the sends made at entry", Duration::from_secs(30), |r| {
        immediate
            .iter()
            .all(|a| r.actions.iter().any(|b| b.action_id == a.action_id))
    });
    assert!(
        journeyd.terminate(Duration::from_secs(30)).success(),
        "SIGTERM stops cleanly"
    );
    let stopped_at = now_ms();
    // Whatever journeyd produced before it stopped.
    reader.settle(Duration::from_millis(1000));
    let before = reader.actions.len();
    let last_due = expected.values().map(|a| a.created_at).max().unwrap();
    // Stay down until every wait has run out, and a little longer.
    tokio::time::sleep(Duration::from_millis(
        (last_due - now_ms()).max(0) as u64 + 1500,
    ))
    .await;
    reader.settle(Duration::from_millis(500));
    assert_eq!(
        reader.actions.len(),
        before,
        "nothing arrives while journeyd is down"
    );
    let restarted_at = now_ms();
    journeyd.spawn();
    wait_for_all(&mut reader, &expected, &events, &journeyd);
    scenario::check(&expected, &reader.actions);
    let fell_due_while_down = expected
        .values()
        .filter(|a| a.created_at > stopped_at && a.created_at < restarted_at)
        .count();
    println!(
        "{} actions; {fell_due_while_down} fell due while journeyd was down and came after the restart, stamped with their own due times",
        expected.len()
    );
    assert!(
        fell_due_while_down > 100,
        "the test has timers falling due during the downtime ({fell_due_while_down})"
    );
    assert!(
        expected
            .values()
            .any(|a| a.kind == ActionKind::Send && a.channel == "call_centre"),
        "the offer's timeout branch ran"
    );
    journeyd.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_a_megabyte_on_default_settings_is_dead_lettered_and_the_rest_flows() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut world = World::new(false, 1);
    // As a new user runs it: max_event_bytes (1 MiB), the dead-letter bound and the
    // producer's message.max.bytes all at their defaults.
    world.settings.max_event_bytes = None;
    let mut journeyd = world.journeyd();
    journeyd.wait_ready(Duration::from_secs(60));
    let events = scenario::plan("huge", 200, now_ms() + 300, 2000, 0x5eed_0009);
    let expected = scenario::expected(&events);
    let mut huge = Event {
        event_id: "huge-1".into(),
        customer_id: "huge".into(),
        event_type: "risk_flagged".into(),
        channel: None,
        occurred_at: now_ms(),
        attributes: Default::default(),
    };
    huge.attributes
        .insert("blob".into(), "x".repeat(1_500_000).into());
    let payload = encode_touchpoint(&huge, Framing::SingleObject);
    let publisher = world.publisher();
    let (first, second) = events.split_at(events.len() / 2);
    play(&publisher, first, |_| {}).await;
    publisher.raw(INPUT, Some("huge"), &payload).await;
    play(&publisher, second, |_| {}).await;
    let mut reader = world.reader();
    wait_for_all(&mut reader, &expected, &events, &journeyd);
    reader.until("the dead letter", Duration::from_secs(30), |r| {
        !r.dead.is_empty()
    });
    scenario::check(&expected, &reader.actions);
    assert_eq!(reader.dead.len(), 1, "one dead letter");
    let d = &reader.dead[0];
    assert_eq!(d.headers["journeyd.dlq.reason"], "oversized");
    assert_eq!(
        d.headers["journeyd.dlq.original_bytes"],
        payload.len().to_string()
    );
    assert_eq!(d.headers["journeyd.dlq.truncated"], "true");
    // The default bound (256 KiB) of the original bytes, as they were.
    assert_eq!(d.payload.len(), 256 * 1024);
    assert_eq!(d.payload[..], payload[..256 * 1024]);
    assert_eq!(
        journeyd.metric("journeyd_events_rejected_total", &["reason=\"oversized\""]),
        Some(1.0)
    );
    assert!(
        journeyd.terminate(Duration::from_secs(30)).success(),
        "SIGTERM stops cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut world = World::new(false, 1);
    world.settings.json_input = Some(JSON_INPUT.into());
    let mut journeyd = world.journeyd();
    journeyd.wait_ready(Duration::from_secs(60));
    let events = scenario::plan("poison", 300, now_ms() + 300, 3000, 0x5eed_0003);
    let expected = scenario::expected(&events);
    let t = now_ms();
    let sample = |customer: &str, at: i64| Event {
        event_id: format!("bad-{customer}"),
        customer_id: customer.to_owned(),
        event_type: "risk_flagged".into(),
        channel: None,
        occurred_at: at,
        attributes: Default::default(),
    };
    let good = encode_touchpoint(&sample("bad-fp", t), Framing::SingleObject);
    let mut unknown_fp = good.clone();
    unknown_fp[2] ^= 0xff;
    let mut big = sample("big", t);
    big.attributes
        .insert("blob".into(), "x".repeat(3000).into());
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        (INPUT, Some("g"), b"\x01\x02garbage".to_vec(), "bad_avro"),
        (
            INPUT,
            Some("bad-fp"),
            good[..good.len() - 3].to_vec(),
            "bad_avro",
        ),
        (INPUT, Some("bad-fp"), unknown_fp, "unknown_schema"),
        (
            INPUT,
            Some("someone-else"),
            encode_touchpoint(&sample("mismatch", t), Framing::SingleObject),
            "key_mismatch",
        ),
        (
            INPUT,
            Some("fut"),
            encode_touchpoint(&sample("fut", t + 86_400_000), Framing::SingleObject),
            "occurred_at_in_future",
        ),
        (
            INPUT,
            Some("big"),
            encode_touchpoint(&big, Framing::SingleObject),
            "oversized",
        ),
        (JSON_INPUT, None, b"{ not json".to_vec(), "bad_json"),
        (
            JSON_INPUT,
            None,
            br#"{"event_id":"j1","type":"login","occurred_at":"2026-01-05T09:00:00Z"}"#.to_vec(),
            "missing_customer_id",
        ),
    ];
    // The bad messages go in among the good ones.
    let publisher = world.publisher();
    let (first, second) = events.split_at(events.len() / 2);
    play(&publisher, first, |_| {}).await;
    for (topic, key, payload, _) in &cases {
        publisher.raw(topic, *key, payload).await;
    }
    play(&publisher, second, |_| {}).await;
    let mut reader = world.reader();
    wait_for_all(&mut reader, &expected, &events, &journeyd);
    reader.until("every dead letter", Duration::from_secs(30), |r| {
        r.dead.len() >= cases.len()
    });
    scenario::check(&expected, &reader.actions);
    let mut got: Vec<&str> = reader
        .dead
        .iter()
        .map(|d| d.headers["journeyd.dlq.reason"].as_str())
        .collect();
    got.sort();
    let mut want: Vec<&str> = cases.iter().map(|c| c.3).collect();
    want.sort();
    assert_eq!(
        got, want,
        "one dead letter per bad message, with its reason"
    );
    for d in &reader.dead {
        let case = cases
            .iter()
            .find(|c| c.2 == d.payload)
            .unwrap_or_else(|| panic!("a dead letter keeps the original bytes: {d:?}"));
        assert_eq!(d.headers["journeyd.dlq.reason"], case.3);
        assert_eq!(d.headers["journeyd.dlq.source.topic"], case.0);
        assert!(d.headers["journeyd.dlq.source.offset"]
            .parse::<i64>()
            .is_ok());
        assert!(d.headers["journeyd.dlq.source.partition"]
            .parse::<i32>()
            .is_ok());
        assert!(!d.headers["journeyd.dlq.error"].is_empty());
    }
    let rejected = journeyd
        .metric("journeyd_events_rejected_total", &[])
        .unwrap_or(0.0);
    assert_eq!(rejected as usize, cases.len(), "the rejections are counted");
    assert!(
        journeyd.terminate(Duration::from_secs(30)).success(),
        "SIGTERM stops cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeyd_rides_out_a_broker_outage_and_loses_nothing() {
    broker_outage(1).await;
}

/// The same with three batches in flight. (No batch fails here: nothing is sent while the
/// path is cut, as no timer fires where its partition cannot be read. Batches produced again
/// are tested on the mock cluster with refused produce requests, in `journeyd::sending`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeyd_rides_out_a_broker_outage_with_batches_in_flight() {
    broker_outage(3).await;
}

async fn broker_outage(in_flight: usize) {
    let _one = ONE_AT_A_TIME.lock().await;
    // Every client reaches the broker through the proxy (it is the advertised address), so
    // cutting the proxy is the broker going away for everybody; tansu keeps its in-memory
    // data meanwhile, as a broker with durable storage would across a restart.
    let world = World::new(true, in_flight);
    let proxy = world.proxy.as_ref().unwrap();
    let mut journeyd = world.journeyd();
    journeyd.wait_ready(Duration::from_secs(60));
    let start = now_ms() + 500;
    let cut_at = start + 6000;
    let outage = 8000;
    // Upstream is down too: no events are published from a second before the cut to three
    // after the path is back. Waits keep falling due throughout.
    let events: Vec<Event> = scenario::plan("outage", 2000, start, 16_000, 0x5eed_0004)
        .into_iter()
        .filter(|e| e.occurred_at < cut_at - 1000 || e.occurred_at > cut_at + outage + 3000)
        .collect();
    let expected = scenario::expected(&events);
    print_summary("broker outage", &expected);
    let publisher = world.publisher();
    let mut cut = false;
    let mut restored = false;
    play(&publisher, &events, |_| {
        let now = now_ms();
        if !cut && now >= cut_at {
            proxy.cut();
            cut = true;
        }
        if cut && !restored && now >= cut_at + outage {
            proxy.restore();
            restored = true;
        }
    })
    .await;
    assert!(cut && restored, "the outage happened during the load");
    let due_during_outage = expected
        .values()
        .filter(|a| a.created_at >= cut_at && a.created_at < cut_at + outage)
        .count();
    assert!(
        due_during_outage > 50,
        "timers fall due during the outage ({due_during_outage})"
    );
    let mut reader = world.reader();
    wait_for_all(&mut reader, &expected, &events, &journeyd);
    let duplicates = scenario::check(&expected, &reader.actions);
    println!(
        "{} actions ({due_during_outage} fell due during the {outage} ms outage), {duplicates} duplicates",
        expected.len()
    );
    assert!(journeyd.alive(), "journeyd recovered by itself");
    assert_eq!(journeyd.starts, 1, "without a restart");
    assert!(
        journeyd.terminate(Duration::from_secs(30)).success(),
        "SIGTERM stops cleanly"
    );
}

/// A replica of the multi-replica test: its own folder, volume and HTTP port.
fn replica(world: &World, name: &str) -> (Journeyd, std::path::PathBuf) {
    let dir = world.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings {
        store: dir.join("store"),
        http_port: http_port(),
        ..world.settings.clone()
    };
    (Journeyd::start(&dir, &settings), dir.join("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_move_with_their_partitions_between_replicas() {
    let _one = ONE_AT_A_TIME.lock().await;
    let world = World::new(false, 1);
    // Three replicas in one group share the four partitions.
    let (mut a, _) = replica(&world, "a");
    let (mut b, b_store) = replica(&world, "b");
    let (mut c, _) = replica(&world, "c");
    for j in [&mut a, &mut b, &mut c] {
        j.wait_ready(Duration::from_secs(60));
    }
    let events = scenario::plan("move", 2000, now_ms() + 500, 24_000, 0x5eed_0015);
    let expected = scenario::expected(&events);
    print_summary("moving partitions", &expected);
    let publisher = world.publisher();
    // During the load: a is SIGKILLed and never comes back (its partitions move once its
    // session times out), d joins (partitions move to it), and b restarts on an empty volume
    // (its partitions come back to it, or go elsewhere, with their customers).
    let mut d: Option<Journeyd> = None;
    let mut step = 0;
    let mut b = Some(b);
    let mut restarting = None;
    play(&publisher, &events, |elapsed| match step {
        0 if elapsed >= 4_000 => {
            a.kill();
            step = 1;
        }
        1 if elapsed >= 12_000 => {
            d = Some(replica(&world, "d").0);
            step = 2;
        }
        2 if elapsed >= 17_000 => {
            // Beside the publisher, which must not wait for b to stop.
            let (mut j, store) = (b.take().unwrap(), b_store.clone());
            restarting = Some(std::thread::spawn(move || {
                assert!(j.terminate(Duration::from_secs(30)).success());
                std::fs::remove_dir_all(&store).unwrap();
                j.spawn();
                j
            }));
            step = 3;
        }
        _ => {}
    })
    .await;
    assert_eq!(step, 3, "every move happened during the load");
    let b = restarting.unwrap().join().expect("b restarted");
    let mut reader = world.reader();
    wait_for_all(&mut reader, &expected, &events, &b);
    let duplicates = scenario::check(&expected, &reader.actions);
    let d = d.expect("d joined");
    let restored: f64 = [&b, &c, &d]
        .iter()
        .filter_map(|j| j.metric("journeyd_restored_records_total", &[]))
        .sum();
    println!(
        "{} events over 3 replicas, one killed, one joined, one restarted empty: {} actions, \
         {duplicates} duplicates (exact repeats), {restored} changelog records restored",
        events.len(),
        reader.actions.len()
    );
    assert!(restored > 0.0, "partitions moved with their customers");
    assert!(reader.dead.is_empty(), "no dead letters: {:?}", reader.dead);
    for mut j in [b, c, d] {
        assert!(j.terminate(Duration::from_secs(30)).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_broker_without_transactions_stops_the_start_clearly() {
    let _one = ONE_AT_A_TIME.lock().await;
    // tansu 0.6 registers a transactional producer but has no EndTxn: journeyd finds out
    // with a probe transaction at start, before it produces anything.
    let mut world = World::new(false, 1);
    world.settings.exactly_once = true;
    let publisher = world.publisher();
    let events = scenario::plan("eos", 20, now_ms(), 10, 0x5eed_0003);
    let expected = scenario::expected(&events);
    assert!(!expected.is_empty());
    publisher.events(&events).await;
    let started = std::time::Instant::now();
    let mut journeyd = world.journeyd();
    while journeyd.alive() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "journeyd with exactly_once kept running on a broker without transactions: {}",
            journeyd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = journeyd.log();
    println!(
        "stopped after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        log.lines().last().unwrap_or_default()
    );
    assert!(
        log.contains("needs a broker with transactions")
            && log.contains("processing.guarantee = at_least_once"),
        "the error says why and what to do: {log}"
    );
    // Nothing went out before it stopped.
    let mut reader = world.reader();
    reader.settle(Duration::from_secs(2));
    assert!(reader.actions.is_empty(), "{:?}", reader.actions);
}

/// A replica with the operator API on a port of its own.
fn operated_replica(world: &World, name: &str) -> (Journeyd, u16) {
    let dir = world.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let admin = free_port();
    let settings = Settings {
        store: dir.join("store"),
        http_port: http_port(),
        admin_port: Some(admin),
        ..world.settings.clone()
    };
    (Journeyd::start(&dir, &settings), admin)
}

/// The status `GET /journeys` on `admin` gives journey `id`.
fn status_on(admin: u16, id: &str) -> Option<String> {
    let (code, body) = http_request(admin, "GET", "/journeys", Some(OPERATOR_TOKEN))?;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["journeys"]
        .as_array()?
        .iter()
        .find(|j| j["id"] == id)
        .and_then(|j| j["status"].as_str().map(str::to_owned))
}

fn until_status(admins: &[u16], id: &str, want: &str) {
    let start = std::time::Instant::now();
    for admin in admins {
        while status_on(*admin, id).as_deref() != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "replica on {admin}: {id} is not {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Asks for a status change; returns the time the API accepted it.
fn set_status(admin: u16, id: &str, action: &str) -> i64 {
    let path = format!("/journeys/{id}/{action}");
    let (code, body) = http_request(admin, "POST", &path, Some(OPERATOR_TOKEN)).unwrap();
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    journeyd_types::time::parse_rfc3339(v["at"].as_str().unwrap()).unwrap()
}

/// Entries into the offer journey for `n` customers at `at` (each finishes within 8 s).
fn offers(prefix: &str, n: usize, at: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = scenario::event(
                format!("{prefix}-{i}-e1"),
                &format!("{prefix}-{i}"),
                "risk_flagged",
                Some("web"),
                at + i as i64,
            );
            e.attributes
                .insert("score".into(), journeyd_types::Value::Float(0.9));
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_status_through_the_operator_api_agrees_with_the_simulator() {
    let _one = ONE_AT_A_TIME.lock().await;
    let world = World::new(false, 1);
    let (mut a, a_admin) = operated_replica(&world, "a");
    let (mut b, b_admin) = operated_replica(&world, "b");
    for j in [&mut a, &mut b] {
        j.wait_ready(Duration::from_secs(60));
    }
    let publisher = world.publisher();
    let mut reader = world.reader();
    let mut events = Vec::new();
    let mut controls = Vec::new();

    // Running: customers enter; their instances end within 8 s (before the pause).
    let before = offers("before", 20, now_ms());
    play(&publisher, &before, |_| {}).await;
    events.extend(before);
    std::thread::sleep(Duration::from_secs(9));

    // Paused through one replica's API: both apply it.
    let paused_at = set_status(a_admin, "offer", "pause");
    controls.push(journeyd_simulator::Control {
        journey: "offer".into(),
        status: journeyd_engine::Status::Paused,
        at: paused_at,
    });
    until_status(&[a_admin, b_admin], "offer", "paused");
    let during = offers("during", 20, now_ms());
    play(&publisher, &during, |_| {}).await;
    events.extend(during.iter().cloned());

    // b is SIGKILLed and comes back after the session timeout: still paused.
    b.kill();
    std::thread::sleep(Duration::from_millis(
        u64::from(world.settings.session_timeout_ms) + 1000,
    ));
    b.spawn();
    b.wait_ready(Duration::from_secs(60));
    assert_eq!(status_on(b_admin, "offer").as_deref(), Some("paused"));

    // Every event of the paused time processed before the resume: a status applies when an
    // event is processed, so an event still waiting in a partition (b's, restored after its
    // restart) would be processed under the next status, where the simulator takes it at its
    // time.
    let start = std::time::Instant::now();
    for e in &during {
        let path = format!("/customers/{}", e.customer_id);
        while ![a_admin, b_admin].iter().any(|port| {
            http_request(*port, "GET", &path, Some(OPERATOR_TOKEN)).is_some_and(|(c, _)| c == 200)
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} was not processed",
                e.customer_id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Resumed through the other replica.
    let resumed_at = set_status(b_admin, "offer", "resume");
    controls.push(journeyd_simulator::Control {
        journey: "offer".into(),
        status: journeyd_engine::Status::Running,
        at: resumed_at,
    });
    until_status(&[a_admin, b_admin], "offer", "running");
    let after = offers("after", 20, now_ms());
    play(&publisher, &after, |_| {}).await;
    events.extend(after);

    // The simulator on the same events, with control lines at the times the API accepted.
    let engine = std::sync::Arc::new(journeyd_engine::Engine::new(
        journeyd_journey::load_dir(&scenario::journeys_dir())
            .unwrap()
            .catalog,
    ));
    let mut sim = journeyd_simulator::Simulator::new(engine);
    let mut lines: Vec<(i64, Option<&Event>, Option<&journeyd_simulator::Control>)> = events
        .iter()
        .map(|e| (e.occurred_at, Some(e), None))
        .chain(controls.iter().map(|c| (c.at, None, Some(c))))
        .collect();
    lines.sort_by_key(|l| l.0);
    let mut expected = BTreeMap::new();
    for (_, e, c) in lines {
        let out = match (e, c) {
            (Some(e), _) => sim.push(e).unwrap(),
            (_, Some(c)) => sim.control(c).unwrap(),
            _ => unreachable!(),
        };
        for x in out {
            expected.insert(x.action.action_id.clone(), x.action);
        }
    }
    let end = now_ms() + 10_000;
    for x in sim.advance_to(end) {
        expected.insert(x.action.action_id.clone(), x.action);
    }
    assert!(
        expected
            .values()
            .all(|a| !a.customer_id.starts_with("during")),
        "nobody enters a paused journey"
    );
    assert!(expected
        .values()
        .any(|a| a.customer_id.starts_with("after")));
    print_summary("pause and resume", &expected);
    wait_for_all(&mut reader, &expected, &events, &b);
    let duplicates = scenario::check(&expected, &reader.actions);
    println!(
        "pause and resume through the API, a replica SIGKILLed while paused: {} actions, \
         {duplicates} duplicates",
        reader.actions.len()
    );
    for mut j in [a, b] {
        assert!(j.terminate(Duration::from_secs(30)).success());
    }
}
