//! The service on the in-process mock cluster with real RocksDB: events in, actions out,
//! cancellations across channels, timers and offsets across restarts, dead letters, the HTTP
//! endpoint and journey reloads.

mod common;

use common::*;
use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_engine::Engine;
use journeyd_journey::load_dir;
use journeyd_simulator::Simulator;
use journeyd_types::{Action, ActionKind, CancelReason};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn sorted(mut v: Vec<Action>) -> Vec<Action> {
    v.sort_by(|a, b| a.action_id.cmp(&b.action_id));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_actions_out_with_cancels_as_the_simulator_says() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("3s"))]);
    let running = rig.start(rig.config());
    running.until_ready().await;
    let t = now();
    let events = vec![
        event("e1", "c1", "signup", Some("web"), t),
        event("e2", "c2", "signup", Some("web"), t),
        event("e3", "c1", "app_opened", Some("app"), t + 100),
        event("e4", "c2", "account_closed", Some("branch"), t + 200),
    ];
    rig.publish(&events).await;
    let mut reader = rig.reader();
    reader
        .until("5 actions", Duration::from_secs(30), |r| {
            r.actions.len() >= 5
        })
        .await;
    reader.settle(Duration::from_millis(500)).await;

    // The simulator is the oracle: the same events give the same actions, ids and content.
    let engine = Arc::new(Engine::new(load_dir(&rig.journeys_dir()).unwrap().catalog));
    let mut sim = Simulator::new(engine);
    let mut expected = Vec::new();
    for e in &events {
        expected.extend(sim.push(e).unwrap().into_iter().map(|x| x.action));
    }
    expected.extend(sim.advance_to(t + 10_000).into_iter().map(|x| x.action));
    assert_eq!(sorted(reader.actions.clone()), sorted(expected));

    let cancel = |c: &str| {
        reader
            .actions
            .iter()
            .find(|a| a.customer_id == c && a.kind == ActionKind::Cancel)
            .cloned()
            .unwrap()
    };
    assert_eq!(cancel("c1").reason, Some(CancelReason::Responded));
    assert_eq!(cancel("c1").channel, "email");
    assert_eq!(cancel("c2").reason, Some(CancelReason::Exited));
    let email_c1 = reader
        .actions
        .iter()
        .find(|a| a.customer_id == "c1" && a.step == "hello" && a.kind == ActionKind::Send)
        .unwrap();
    assert_eq!(
        cancel("c1").cancels.as_deref(),
        Some(email_c1.action_id.as_str())
    );
    let m = running.shared.metrics.render();
    assert!(
        m.contains("journeyd_actions_total{channel=\"email\",kind=\"send\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("journeyd_journey_entries_total{journey=\"welcome\"} 2"),
        "{m}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_offsets_resume_and_timers_due_while_down_fire() {
    // A longer wait than the other tests: the stop must come before it ends.
    let rig = Rig::new(&[("welcome.yaml", &welcome("10s"))]);
    let config = rig.config();
    let running = rig.start(config.clone());
    running.until_ready().await;
    let t = now();
    rig.publish(&[event("a1", "c3", "signup", None, t)]).await;
    let mut reader = rig.reader();
    reader
        .until("the welcome email", Duration::from_secs(30), |r| {
            r.actions.len() == 1
        })
        .await;
    running.stop().await;
    assert!(now() < t + 10_000, "stopped before the wait ended");

    // While journeyd is down: c3's wait ends, and c4 signs up.
    rig.publish(&[event("a2", "c4", "signup", None, now())])
        .await;
    tokio::time::sleep(Duration::from_millis((t + 10_200 - now()).max(0) as u64)).await;

    let running = rig.start(config);
    reader
        .until(
            "c3's nudge, c4's email and nudge",
            Duration::from_secs(30),
            |r| r.actions.len() >= 4,
        )
        .await;
    reader.settle(Duration::from_millis(800)).await;
    let got: Vec<(String, String)> = reader
        .actions
        .iter()
        .map(|a| (a.customer_id.clone(), a.step.clone()))
        .collect();
    assert_eq!(got.len(), 4, "nothing replayed, nothing lost: {got:?}");
    for want in [
        ("c3", "hello"),
        ("c3", "nudge"),
        ("c4", "hello"),
        ("c4", "nudge"),
    ] {
        assert!(
            got.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} missing from {got:?}"
        );
    }
    let nudge = reader
        .actions
        .iter()
        .find(|a| a.customer_id == "c3" && a.step == "nudge")
        .unwrap();
    assert_eq!(
        nudge.created_at,
        t + 10_000,
        "a late timer fires at its own time"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dead_letter_topic_and_good_input_flows() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("3s"))]);
    let mut config = rig.config();
    config.processing.max_event_bytes = 400;
    let running = rig.start(config);
    running.until_ready().await;
    let t = now();
    let good = encode_touchpoint(
        &event("g1", "ok1", "signup", None, t),
        Framing::SingleObject,
    );
    let truncated = good[..good.len() - 4].to_vec();
    let mut unknown_fp = good.clone();
    unknown_fp[2] ^= 0xff;
    let confluent = [&[0u8, 0, 0, 0, 7][..], &good[10..]].concat();
    let mut big = event("b1", "big", "signup", None, t);
    big.attributes.insert("blob".into(), "x".repeat(600).into());
    let mismatch = encode_touchpoint(
        &event("k1", "alice", "signup", None, t),
        Framing::SingleObject,
    );
    let future = encode_touchpoint(
        &event("f1", "fut", "signup", None, t + 86_400_000),
        Framing::SingleObject,
    );
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        (
            "touchpoints",
            Some("x"),
            b"\x01\x02garbage".to_vec(),
            "bad_avro",
        ),
        ("touchpoints", Some("ok1"), truncated, "bad_avro"),
        ("touchpoints", Some("ok1"), unknown_fp, "unknown_schema"),
        ("touchpoints", Some("ok1"), confluent, "unknown_schema"),
        ("touchpoints", Some("bob"), mismatch, "key_mismatch"),
        ("touchpoints", Some("fut"), future, "occurred_at_in_future"),
        (
            "touchpoints",
            Some("big"),
            encode_touchpoint(&big, Framing::SingleObject),
            "oversized",
        ),
        ("json-in", None, b"not json at all".to_vec(), "bad_json"),
        (
            "json-in",
            None,
            br#"{"event_id":"j1","type":"signup","occurred_at":"2026-01-05T09:00:00Z"}"#.to_vec(),
            "missing_customer_id",
        ),
    ];
    for (topic, key, payload, _) in &cases {
        rig.publish_raw(topic, *key, payload).await;
    }
    rig.publish_raw("touchpoints", Some("ok1"), &good).await;
    let json_good = format!(
        r#"{{"event_id":"j2","customer_id":"ok2","type":"signup","occurred_at":"{}"}}"#,
        journeyd_types::time::format_rfc3339(t)
    );
    rig.publish_raw("json-in", Some("ok2"), json_good.as_bytes())
        .await;

    let mut reader = rig.reader();
    reader
        .until(
            "every dead letter and both good emails",
            Duration::from_secs(30),
            |r| {
                r.dead.len() >= cases.len()
                    && r.actions.iter().filter(|a| a.step == "hello").count() >= 2
            },
        )
        .await;
    let mut reasons: Vec<&str> = reader
        .dead
        .iter()
        .map(|d| d.headers["journeyd.dlq.reason"].as_str())
        .collect();
    let mut want: Vec<&str> = cases.iter().map(|c| c.3).collect();
    reasons.sort();
    want.sort();
    assert_eq!(reasons, want);
    for (d, (topic, _, payload, reason)) in reader.dead.iter().zip(&cases) {
        // Each topic keeps its order; match by payload to be safe.
        let d = reader
            .dead
            .iter()
            .find(|x| &x.payload == payload)
            .unwrap_or(d);
        assert_eq!(&d.headers["journeyd.dlq.reason"], reason);
        assert_eq!(&d.headers["journeyd.dlq.source.topic"], topic);
        assert!(d.headers["journeyd.dlq.source.offset"]
            .parse::<i64>()
            .is_ok());
        assert!(d.headers["journeyd.dlq.source.partition"]
            .parse::<i32>()
            .is_ok());
        assert!(!d.headers["journeyd.dlq.error"].is_empty());
    }
    let customers: Vec<&str> = reader
        .actions
        .iter()
        .map(|a| a.customer_id.as_str())
        .collect();
    assert!(
        customers.contains(&"ok1") && customers.contains(&"ok2"),
        "{customers:?}"
    );
    let m = running.shared.metrics.render();
    assert!(
        m.contains("journeyd_events_rejected_total{reason=\"bad_avro\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("journeyd_events_rejected_total{reason=\"oversized\"} 1"),
        "{m}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_serves_metrics_health_and_customers() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let running = rig.start(rig.config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = journeyd::http::router(running.shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let admin = serve_admin(&running, TOKENS).await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    running.until_ready().await;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let t = now();
    rig.publish(&[event("h1", "c9", "signup", Some("web"), t)])
        .await;
    let mut reader = rig.reader();
    reader
        .until("the email", Duration::from_secs(30), |r| {
            !r.actions.is_empty()
        })
        .await;
    // Actions are acknowledged before the state is written (that is what makes a crash safe),
    // so the state may lag the action by a moment.
    let mut v = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = request(admin, "GET", "/customers/c9", Some(ONCALL)).await;
        if status == 200 {
            v = serde_json::from_str(&body).unwrap();
            if v["instances"][0]["step"] == "pause" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v["customer_id"], "c9", "{v:#}");
    assert_eq!(v["instances"][0]["journey"], "welcome");
    assert_eq!(v["instances"][0]["step"], "pause");
    assert_eq!(v["outstanding"][0]["step"], "hello");
    let kinds: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"entered") && kinds.contains(&"sent") && kinds.contains(&"waiting"),
        "{kinds:?}"
    );
    // Customers show personal data: not on the open endpoint any more.
    assert_eq!(get(addr, "/customers/c9").await.0, 404);
    assert_eq!(
        request(admin, "GET", "/customers/nobody", Some(ONCALL))
            .await
            .0,
        404
    );
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "journeyd_events_consumed_total",
        "journeyd_timers_pending",
        "journeyd_event_to_action_seconds_bucket",
        "journeyd_store_bytes",
        "journeyd_batch_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_all_or_nothing_and_changed_versions_are_refused() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("3s"))]);
    let running = rig.start(rig.config());
    running.until_ready().await;
    let dir = rig.journeys_dir();
    let reload = |expect: &'static str| {
        let shared = running.shared.clone();
        async move {
            let before = shared.metrics.reloads.with_label_values(&[expect]).get();
            shared.reload.store(true, Ordering::SeqCst);
            for _ in 0..200 {
                if shared.metrics.reloads.with_label_values(&[expect]).get() > before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("no {expect} reload");
        }
    };
    // Changed content, same version: refused, the running journeys stay.
    write_journey(
        &dir,
        "welcome.yaml",
        &welcome("3s").replace("template: nudge", "template: nudge_v2"),
    );
    reload("refused").await;
    let engine = running.shared.engine();
    let j = engine.journey("welcome", 1).unwrap();
    assert!(format!("{:?}", j.steps[2].kind).contains("\"nudge\""));
    // One bad file among good ones: nothing of the folder is taken.
    write_journey(
        &dir,
        "welcome.yaml",
        &welcome("3s")
            .replace("version: 1", "version: 2")
            .replace("template: nudge", "template: nudge_v2"),
    );
    write_journey(&dir, "broken.yaml", "journey: broken\nversion: 1\n");
    reload("refused").await;
    assert!(running.shared.engine().journey("welcome", 2).is_none());
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    reload("ok").await;
    let engine = running.shared.engine();
    assert_eq!(engine.journeys()[0].version, 2);
    assert!(
        engine.journey("welcome", 1).is_some(),
        "the old version stays for customers on it"
    );
    running.stop().await;

    // A start with changed content under a version already run is refused with the reason.
    write_journey(
        &dir,
        "welcome.yaml",
        &welcome("3s").replace("version: 1", "version: 2"),
    );
    let err = journeyd::app::open(&rig.config()).unwrap_err();
    assert!(
        format!("{err:#}").contains("give it a new version number"),
        "{err:#}"
    );
    // Invalid journeys stop the start with the validator's FILE:LINE:COL lines.
    write_journey(&dir, "welcome.yaml", "journey: welcome\nversion: x\n");
    let err = format!("{:#}", journeyd::app::open(&rig.config()).unwrap_err());
    assert!(err.contains("welcome.yaml:2:10: error:"), "{err}");
}
