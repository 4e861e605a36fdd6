//! The operator API on the mock cluster: tokens, journey status through the control topic on
//! every replica and across a restart, erasure through the input topic, and the audit log.

mod common;

use common::*;
use journeyd_engine::Status;
use journeyd_types::{ActionKind, CancelReason};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every log line of this test binary (the service logs through `tracing`).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `ok` holds (at most `limit`), and says how long it took.
async fn until(what: &str, limit: Duration, ok: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_need_a_token_and_changes_a_write_token() {
    logs();
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let running = rig.start(rig.config());
    running.until_ready().await;
    let api = serve_admin(&running, TOKENS).await;

    let (status, body) = request(api, "GET", "/journeys", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    assert_eq!(
        request(api, "GET", "/journeys", Some("wrong-secret-0123456789"))
            .await
            .0,
        401
    );

    let (status, body) = request(api, "GET", "/journeys", Some(VIEWER)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["journeys"][0]["id"], "welcome", "{v:#}");
    assert_eq!(v["journeys"][0]["status"], "running");
    assert_eq!(v["journeys"][0]["versions"], serde_json::json!([1]));

    // A read token may not change anything, nor see customers (personal data).
    for (method, path) in [
        ("POST", "/journeys/welcome/pause"),
        ("GET", "/customers/c1"),
        ("DELETE", "/customers/c1"),
        ("POST", "/customers/c1/merge?into=c2"),
    ] {
        let (status, body) = request(api, method, path, Some(VIEWER)).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains("write token"), "{body}");
    }
    // A write token: bad calls say why.
    let (status, body) = request(api, "POST", "/journeys/nope/pause", Some(ONCALL)).await;
    assert_eq!(
        (status, body.contains("no journey `nope`")),
        (404, true),
        "{body}"
    );
    let (status, body) = request(api, "POST", "/journeys/welcome/sleep", Some(ONCALL)).await;
    assert_eq!(
        (status, body.contains("unknown action")),
        (404, true),
        "{body}"
    );
    let (status, body) = request(api, "POST", "/customers/c1/merge", Some(ONCALL)).await;
    assert_eq!((status, body.contains("`into`")), (400, true), "{body}");
    let (status, _) = request(api, "POST", "/customers/c1/merge?into=c1", Some(ONCALL)).await;
    assert_eq!(status, 400);
    // Merges are not carried out by the service yet: refused, not half done.
    let (status, body) = request(api, "POST", "/customers/c1/merge?into=c2", Some(ONCALL)).await;
    assert_eq!(
        (status, body.contains("does not merge")),
        (501, true),
        "{body}"
    );
    // The scheme's name is case-insensitive.
    let (status, _) = request_raw(api, "GET /journeys", &format!("bearer {VIEWER}")).await;
    assert_eq!(status, 200);

    // No token configured: everything is refused, and says so.
    let closed = serve_admin(&running, "").await;
    let (status, body) = request(closed, "GET", "/journeys", Some(VIEWER)).await;
    assert_eq!(status, 401);
    assert!(body.contains("no operator token is configured"), "{body}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_reaches_every_replica_and_outlives_a_restart() {
    logs();
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let first = rig.start(rig.config());
    let second_config = rig.second_config();
    let second = rig.start(second_config.clone());
    first.until_ready().await;
    let api = serve_admin(&first, TOKENS).await;

    let (status, body) = request(api, "POST", "/journeys/welcome/pause", Some(ONCALL)).await;
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["status"], "paused");
    assert_eq!(accepted["by"], "oncall");
    for (name, replica) in [("first", &first), ("second", &second)] {
        let took = until(name, Duration::from_secs(10), || {
            replica.shared.status_of("welcome") == Status::Paused
                && replica.shared.engine().status("welcome") == Status::Paused
        })
        .await;
        eprintln!("the {name} replica applied the pause after {took:?}");
    }
    let (_, body) = request(api, "GET", "/journeys", Some(VIEWER)).await;
    assert!(body.contains(r#""status":"paused""#), "{body}");

    // Paused: nobody enters. The signup is processed (and remembered as skipped).
    let t = now();
    rig.publish(&[event("p1", "while-paused", "signup", Some("web"), t)])
        .await;
    let running = [&first, &second];
    until("the signup is processed", Duration::from_secs(20), || {
        running
            .iter()
            .any(|r| r.shared.store.customer("while-paused").unwrap().is_some())
    })
    .await;

    // The second replica restarts: the pause is in force before it reads any input. (After
    // the session timeout: see the brief on tansu and the mock's coordinator.)
    second.stop().await;
    let second = rig.start(second_config);
    until(
        "the restarted replica has the pause",
        Duration::from_secs(30),
        || second.shared.status_of("welcome") == Status::Paused,
    )
    .await;

    // Resumed: new customers enter again, on whichever replica owns them.
    let (status, _) = request(api, "POST", "/journeys/welcome/resume", Some(ONCALL)).await;
    assert_eq!(status, 202);
    for replica in [&first, &second] {
        until("the resume", Duration::from_secs(10), || {
            replica.shared.status_of("welcome") == Status::Running
        })
        .await;
    }
    rig.publish(&[event("r1", "after-resume", "signup", Some("web"), now())])
        .await;
    let mut reader = rig.reader();
    reader
        .until("the email after the resume", Duration::from_secs(30), |r| {
            r.actions.iter().any(|a| a.customer_id == "after-resume")
        })
        .await;
    assert!(
        !reader
            .actions
            .iter()
            .any(|a| a.customer_id == "while-paused"),
        "nobody enters a paused journey"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_goes_through_the_input_topic_and_the_audit_names_no_customer() {
    let logs = logs();
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let running = rig.start(rig.config());
    running.until_ready().await;
    let api = serve_admin(&running, TOKENS).await;
    let customer = "erase-me-4711";
    rig.publish(&[event("e1", customer, "signup", Some("web"), now())])
        .await;
    let mut reader = rig.reader();
    reader
        .until("the email", Duration::from_secs(30), |r| {
            !r.actions.is_empty()
        })
        .await;
    until("the state", Duration::from_secs(10), || {
        running.shared.store.customer(customer).unwrap().is_some()
    })
    .await;
    assert_eq!(
        request(api, "GET", &format!("/customers/{customer}"), Some(ONCALL))
            .await
            .0,
        200
    );

    let (status, body) = request(
        api,
        "DELETE",
        &format!("/customers/{customer}"),
        Some(ONCALL),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "erasure_requested");
    assert_eq!(v["topic"], "touchpoints");
    reader
        .until("the cancel", Duration::from_secs(30), |r| {
            r.actions.iter().any(|a| a.kind == ActionKind::Cancel)
        })
        .await;
    let cancel = reader
        .actions
        .iter()
        .find(|a| a.kind == ActionKind::Cancel)
        .unwrap();
    assert_eq!(cancel.reason, Some(CancelReason::Erased));
    assert_eq!(cancel.customer_id, customer);
    until("the state is gone", Duration::from_secs(10), || {
        running.shared.store.customer(customer).unwrap().is_none()
    })
    .await;
    assert_eq!(
        request(api, "GET", &format!("/customers/{customer}"), Some(ONCALL))
            .await
            .0,
        404
    );
    running.stop().await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("journeyd::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("token=oncall")
            && l.contains("method=DELETE")
            && l.contains("route=/customers/{id}")
            && l.contains("status=202")),
        "{audit:#?}"
    );
    // No line of the whole run at info level or above names the customer.
    for line in text.lines() {
        assert!(
            !line.contains(customer),
            "a log line names the customer: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_every_outstanding_send_on_every_replica_at_once() {
    logs();
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let first = rig.start(rig.config());
    let second_config = rig.second_config();
    let second = rig.start(second_config);
    first.until_ready().await;
    second.until_ready().await;
    let api = serve_admin(&first, TOKENS).await;

    let t = now();
    let customers: Vec<String> = (0..30).map(|i| format!("stop-{i:02}")).collect();
    let signups: Vec<_> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| event(&format!("s{i}"), c, "signup", Some("web"), t))
        .collect();
    rig.publish(&signups).await;
    let mut reader = rig.reader();
    reader
        .until("every welcome email", Duration::from_secs(30), |r| {
            r.actions.len() >= customers.len()
        })
        .await;
    // Both replicas hold some of them: the stop must reach both.
    let held = |r: &common::Running| {
        customers
            .iter()
            .filter(|c| r.shared.store.customer(c).unwrap().is_some())
            .count()
    };
    until("the states are written", Duration::from_secs(10), || {
        held(&first) + held(&second) >= customers.len()
    })
    .await;

    let (status, body) = request(api, "POST", "/journeys/welcome/stop", Some(ONCALL)).await;
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let at = journeyd_types::time::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
    // No customer sends anything more: the cancels come from the sweep, at the stop's time.
    reader
        .until("a cancel for every email", Duration::from_secs(30), |r| {
            r.actions
                .iter()
                .filter(|a| a.kind == ActionKind::Cancel)
                .count()
                >= customers.len()
        })
        .await;
    reader.settle(Duration::from_secs(1)).await;
    let cancels: Vec<_> = reader
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Cancel)
        .collect();
    assert_eq!(cancels.len(), customers.len(), "one cancel per email");
    for c in &cancels {
        assert_eq!(c.reason, Some(CancelReason::Stopped), "{c:?}");
        assert_eq!(c.created_at, at, "at the stop's time: {c:?}");
        let send = reader
            .actions
            .iter()
            .find(|a| Some(&a.action_id) == c.cancels.as_ref())
            .expect("the cancel names an email that was sent");
        assert_eq!(send.customer_id, c.customer_id);
    }
    first.stop().await;
    second.stop().await;
}

/// Contract v2, experiment results: `GET /journeys/{id}/report` is the same document as
/// `journey simulate --report` for the same events, for the whole deployment, whichever replica
/// is asked, though each holds only some of the customers; `/counts` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reports_the_whole_deployment_as_the_simulator_does() {
    logs();
    let rig = Rig::new(&[("welcome.yaml", &welcome("60s"))]);
    let first = rig.start(rig.config());
    let second_config = rig.second_config();
    let second = rig.start(second_config);
    first.until_ready().await;
    second.until_ready().await;
    let apis = [
        serve_admin(&first, TOKENS).await,
        serve_admin(&second, TOKENS).await,
    ];
    let t = now();
    let customers: Vec<String> = (0..30).map(|i| format!("count-{i:02}")).collect();
    let signups: Vec<_> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| event(&format!("s{i}"), c, "signup", Some("web"), t))
        .collect();
    rig.publish(&signups).await;
    let held = |r: &common::Running| {
        customers
            .iter()
            .filter(|c| r.shared.store.customer(c).unwrap().is_some())
            .count()
    };
    until("the states are written", Duration::from_secs(30), || {
        held(&first) + held(&second) >= customers.len()
    })
    .await;
    assert!(
        held(&first) > 0 && held(&second) > 0,
        "both replicas hold some customers"
    );

    let catalog = journeyd_journey::load_dir(&rig.journeys_dir())
        .unwrap()
        .catalog;
    let sim_engine = Arc::new(journeyd_engine::Engine::new(catalog));
    let mut sim = journeyd_simulator::Simulator::new(sim_engine.clone());
    for e in &signups {
        sim.push(e).unwrap();
    }
    let expected = serde_json::to_value(sim.report()).unwrap();
    assert_eq!(expected["journeys"]["welcome"]["entered"], 30);
    for api in apis {
        let start = Instant::now();
        loop {
            let (status, body) =
                request(api, "GET", "/journeys/welcome/report", Some(VIEWER)).await;
            assert_eq!(status, 200, "{body}");
            let mut got: serde_json::Value = serde_json::from_str(&body).unwrap();
            got.as_object_mut().unwrap().remove("scope");
            if got == expected {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{api}: {got} is not the simulator's {expected}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, body) = request(api, "GET", "/journeys/welcome/counts", Some(VIEWER)).await;
        let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
        let simulated = &sim.counts().journeys["welcome"];
        assert_eq!(counts["active"], 30, "{counts}");
        assert_eq!(
            counts["steps"]["pause"]["waiting"],
            simulated.waiting_by_step(&sim_engine, "welcome")["pause"]
        );
        assert_eq!(
            counts["sent"]["email"],
            simulated.steps["hello"].sent["email"]
        );
    }
    // A replica's own gauges count its share only: Prometheus sums the replicas.
    let own = |r: &common::Running| {
        journeyd::admin::report::owned_counts(&r.shared)
            .unwrap()
            .journeys["welcome"]
            .entered
    };
    assert_eq!(own(&first) + own(&second), 30);
    // The counts move with their partition: with the second replica gone, the first restores
    // its partition from the changelog, counts included, and alone still says the same.
    second.stop().await;
    until(
        "the first replica owns every partition",
        Duration::from_secs(30),
        || {
            first.shared.partitions.owned().len() == 2
                && journeyd::admin::report::owned_counts(&first.shared)
                    .unwrap()
                    .journeys
                    .get("welcome")
                    .is_some_and(|w| w.entered == 30)
        },
    )
    .await;
    let (_, body) = request(apis[0], "GET", "/journeys/welcome/report", Some(VIEWER)).await;
    let mut got: serde_json::Value = serde_json::from_str(&body).unwrap();
    got.as_object_mut().unwrap().remove("scope");
    assert_eq!(got, expected);
    first.stop().await;
}
