//! Nothing stalls on default settings: a message over a megabyte is dead-lettered and the
//! pipeline goes on; `/readyz` says ready only with partitions assigned, read to their heads,
//! and batches landing, and says "stalled" when they stop landing.

mod common;

use common::*;
use journeyd_codec::{encode_touchpoint, Framing};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::{Duration, Instant};

/// A producer that sends what a broker configured for large messages takes.
fn large_producer(rig: &Rig) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", rig.cluster.bootstrap_servers())
        .set("message.max.bytes", "4000000")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_a_megabyte_is_dead_lettered_on_default_settings_and_nothing_stalls() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("3s"))]);
    let config = rig.config();
    assert_eq!(config.processing.max_event_bytes, 1 << 20, "the default");
    assert_eq!(
        config.outputs.dead_letter_max_bytes,
        256 * 1024,
        "the default"
    );
    assert!(!config.kafka.contains_key("message.max.bytes"));
    let running = rig.start(config);
    running.until_ready().await;
    let t = now();
    let p = large_producer(&rig);
    // Over max_event_bytes: "oversized".
    let oversized = vec![b'x'; 1_100_000];
    // Under max_event_bytes but over the producer's 1,000,000: undecodable, "bad_avro".
    let mut garbage = vec![0u8; 1_010_000];
    garbage[..2].copy_from_slice(b"\x01\x02");
    send(&p, "touchpoints", "big1", &oversized).await;
    send(&p, "touchpoints", "big2", &garbage).await;
    let good = encode_touchpoint(
        &event("g1", "ok1", "signup", None, t),
        Framing::SingleObject,
    );
    send(&p, "touchpoints", "ok1", &good).await;

    let mut reader = rig.reader();
    reader
        .until(
            "both dead letters and the good customer's email",
            Duration::from_secs(30),
            |r| r.dead.len() >= 2 && r.actions.iter().any(|a| a.customer_id == "ok1"),
        )
        .await;
    reader.settle(Duration::from_millis(500)).await;
    assert_eq!(reader.dead.len(), 2, "each dead letter once");
    for (reason, original) in [("oversized", &oversized), ("bad_avro", &garbage)] {
        let d = reader
            .dead
            .iter()
            .find(|d| d.headers["journeyd.dlq.reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} dead letter"));
        assert_eq!(d.payload.len(), 256 * 1024, "cut to dead_letter_max_bytes");
        assert_eq!(
            &d.payload[..],
            &original[..256 * 1024],
            "a prefix of the original"
        );
        assert_eq!(d.headers["journeyd.dlq.truncated"], "true");
        assert_eq!(
            d.headers["journeyd.dlq.original_bytes"],
            original.len().to_string()
        );
        assert_eq!(d.headers["journeyd.dlq.source.topic"], "touchpoints");
    }
    let m = running.shared.metrics.render();
    assert!(m.contains("journeyd_batch_retries_total 0"), "{m}");
    assert!(
        m.contains("journeyd_events_rejected_total{reason=\"oversized\"} 1"),
        "{m}"
    );
    assert_eq!(running.shared.readiness(), Ok(()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_an_assignment() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("3s"))]);
    let mut config = rig.config();
    // No broker there: the consumer never joins a group, and every poll is idle.
    config
        .kafka
        .insert("bootstrap.servers".into(), "127.0.0.1:1".into());
    let running = rig.start(config);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let why = running.shared.readiness().unwrap_err();
        assert!(why.contains("no partitions assigned"), "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_to_stalled_when_batches_stop_landing_and_back_when_they_land() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("8s"))]);
    let mut config = rig.config();
    config.processing.stall_timeout_secs = 2;
    let running = rig.start(config);
    running.until_ready().await;
    rig.publish(&[event("s1", "c1", "signup", None, now())])
        .await;
    let mut reader = rig.reader();
    reader
        .until("the welcome email", Duration::from_secs(30), |r| {
            r.actions.iter().any(|a| a.step == "hello")
        })
        .await;
    assert!(
        reader.actions.iter().all(|a| a.step != "nudge"),
        "the nudge waits 8 s: the broker refuses it below"
    );
    // Then the broker refuses every produce with an error that may pass: librdkafka retries,
    // and the nudge that fires 8 s after the signup is never acknowledged while it does.
    let cluster = rig.cluster.cluster();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 5000],
    );
    let until = Instant::now() + Duration::from_secs(20);
    let why = loop {
        match running.shared.readiness() {
            Err(why) => break why,
            Ok(()) => {
                assert!(Instant::now() < until, "never reported the stall");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(why.contains("stalled"), "{why}");
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    reader
        .until(
            "the nudge, once the broker takes it",
            Duration::from_secs(30),
            |r| r.actions.iter().any(|a| a.step == "nudge"),
        )
        .await;
    let until = Instant::now() + Duration::from_secs(10);
    while running.shared.readiness().is_err() {
        assert!(Instant::now() < until, "{:?}", running.shared.readiness());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_whose_processing_fails_is_quarantined_and_everyone_else_goes_on() {
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let running = rig.start(rig.config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = journeyd::http::router(running.shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    running.until_ready().await;
    // A stored state that cannot be read (a disk fault, a bad restore, a bug that wrote it).
    let corrupt = vec![0xff_u8; 24];
    running
        .shared
        .store
        .write(&journeyd_store::WriteSet {
            customers: vec![("poison".into(), Some(corrupt.clone()))],
            ..Default::default()
        })
        .unwrap();
    let t = now();
    rig.publish(&[
        event("p1", "poison", "signup", None, t),
        event("g1", "good1", "signup", None, t),
        event("p2", "poison", "app_opened", None, t + 1),
        event("g2", "good2", "signup", None, t + 2),
    ])
    .await;
    let mut reader = rig.reader();
    reader
        .until(
            "both good emails and the poison customer's two dead letters",
            Duration::from_secs(30),
            |r| r.actions.len() >= 2 && r.dead.len() >= 2,
        )
        .await;
    reader.settle(Duration::from_millis(500)).await;
    let mut customers: Vec<&str> = reader
        .actions
        .iter()
        .map(|a| a.customer_id.as_str())
        .collect();
    customers.sort();
    assert_eq!(
        customers,
        ["good1", "good2"],
        "nothing for the poison customer"
    );
    assert_eq!(reader.dead.len(), 2);
    for d in &reader.dead {
        assert_eq!(d.headers["journeyd.dlq.reason"], "processing_failed");
        assert!(
            d.headers["journeyd.dlq.error"].contains("unreadable"),
            "{:?}",
            d.headers
        );
        let e = journeyd_codec::TouchpointDecoder::new(journeyd_codec::Format::Avro)
            .decode(&d.payload)
            .unwrap();
        assert_eq!(e.customer_id, "poison", "the original message");
    }
    assert_eq!(
        running.shared.store.customer("poison").unwrap(),
        Some(corrupt),
        "the stored state is left as it was"
    );
    let m = running.shared.metrics.render();
    // Once per batch the customer failed in: the two events may come in one batch or two.
    let failed = metric(&m, "journeyd_customers_quarantined_total");
    assert!((1.0..=2.0).contains(&failed), "{m}");
    assert!(
        m.contains("journeyd_events_rejected_total{reason=\"processing_failed\"} 2"),
        "{m}"
    );
    let admin = serve_admin(&running, TOKENS).await;
    let (status, body) = request(admin, "GET", "/customers/poison", Some(ONCALL)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["quarantined"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreadable")),
        "{v:#}"
    );
    assert!(v["quarantined"]["since"].is_string(), "{v:#}");
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("journeyd_customers_quarantined 1"),
        "{metrics}"
    );
    assert_eq!(running.shared.readiness(), Ok(()), "the service goes on");
    running.stop().await;
}

/// The value of a metric without labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
