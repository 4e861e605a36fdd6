//! Test harness: the service in-process on librdkafka's mock cluster, with real RocksDB in a
//! temporary directory, and Kafka clients to publish touchpoints and read actions.

#![allow(dead_code, missing_debug_implementations)]

use journeyd::config::{Config, Encoding, InputConfig};
use journeyd::embedded::Embedded;
use journeyd::service::{self, Shared};
use journeyd_codec::{decode_action, encode_touchpoint, Framing};
use journeyd_types::{Action, Event};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const CHANNELS: [&str; 4] = ["email", "sms", "push", "call_centre"];

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique name for topics and groups in this process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A mock cluster with the service's topics, a journeys folder and a store directory.
pub struct Rig {
    pub cluster: Embedded,
    pub dir: tempfile::TempDir,
    pub input: String,
    pub group: String,
}

impl Rig {
    pub fn new(journeys: &[(&str, &str)]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("journeys")).unwrap();
        for (name, text) in journeys {
            std::fs::write(dir.path().join("journeys").join(name), text).unwrap();
        }
        let mut topics: Vec<(String, i32)> = vec![
            ("touchpoints".into(), 2),
            ("touchpoints.dlq".into(), 1),
            ("actions.dlq".into(), 1),
            ("json-in".into(), 2),
        ];
        topics.extend(CHANNELS.iter().map(|c| (format!("actions.{c}"), 1)));
        let group = unique("journeyd");
        // The mock cluster cannot create topics for a client: the changelog is made here.
        topics.push((format!("{group}.changelog"), 2));
        topics.push((format!("{group}.control"), 1));
        topics.push((format!("{group}.counts"), 1));
        let cluster = Embedded::start(&topics).unwrap();
        Rig {
            cluster,
            dir,
            input: "touchpoints".into(),
            group,
        }
    }

    pub fn journeys_dir(&self) -> PathBuf {
        self.dir.path().join("journeys")
    }

    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.kafka
            .insert("bootstrap.servers".into(), self.cluster.bootstrap_servers());
        c.kafka.insert("group.id".into(), self.group.clone());
        c.kafka.insert("session.timeout.ms".into(), "6000".into());
        c.inputs = vec![
            InputConfig {
                topic: self.input.clone(),
                format: Encoding::Avro,
            },
            InputConfig {
                topic: "json-in".into(),
                format: Encoding::Json,
            },
        ];
        c.journeys.dir = self.journeys_dir();
        c.store.path = self.dir.path().join("store");
        c.store.block_cache_mb = 8;
        c.http.listen = String::new();
        c.processing.batch_linger_ms = 5;
        c
    }

    /// The configuration of a second replica in the same group, with a store of its own.
    pub fn second_config(&self) -> Config {
        let mut c = self.config();
        c.store.path = self.dir.path().join("store-2");
        c
    }

    /// Starts the service; stop it with [`Running::stop`].
    pub fn start(&self, config: Config) -> Running {
        let opened = journeyd::app::open(&config).expect("the service opens");
        let shared = journeyd::app::shared(config, opened).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service::run(shared.clone(), shutdown.clone()));
        Running {
            shared,
            shutdown,
            task,
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.cluster.bootstrap_servers())
            .set("linger.ms", "0")
            .create()
            .unwrap()
    }

    /// Publishes touchpoints as Avro (single-object encoding), keyed by customer.
    pub async fn publish(&self, events: &[Event]) {
        self.publish_to(&self.input, events).await;
    }

    /// [`Rig::publish`] to another input topic.
    pub async fn publish_to(&self, topic: &str, events: &[Event]) {
        let p = self.producer();
        for e in events {
            let bytes = encode_touchpoint(e, Framing::SingleObject);
            p.send(
                FutureRecord::to(topic)
                    .key(e.customer_id.as_bytes())
                    .payload(&bytes),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
    }

    /// Publishes raw bytes to a topic.
    pub async fn publish_raw(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        let p = self.producer();
        let mut r = FutureRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r, Duration::from_secs(5)).await.unwrap();
    }

    /// A reader of every action topic (and the dead-letter topic) from the beginning.
    pub fn reader(&self) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.cluster.bootstrap_servers())
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // What channel adapters are told to use: no action of an aborted transaction.
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut topics: Vec<String> = CHANNELS.iter().map(|c| format!("actions.{c}")).collect();
        topics.push("touchpoints.dlq".into());
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).unwrap();
        Reader {
            consumer,
            actions: Vec::new(),
            dead: Vec::new(),
        }
    }
}

/// A running service.
pub struct Running {
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub async fn until_ready(&self) {
        let start = Instant::now();
        while self.shared.readiness().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the service did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A dead-lettered message.
#[derive(Debug, Clone)]
pub struct Dead {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads actions and dead letters.
pub struct Reader {
    consumer: BaseConsumer,
    pub actions: Vec<Action>,
    pub dead: Vec<Dead>,
}

impl Reader {
    fn poll_once(&mut self, wait: Duration) {
        if let Some(Ok(m)) = self.consumer.poll(wait) {
            let payload = m.payload().unwrap_or_default().to_vec();
            if m.topic() == "touchpoints.dlq" {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        headers.insert(
                            x.key.to_owned(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                self.dead.push(Dead { payload, headers });
            } else {
                let a = decode_action(&payload).expect("actions decode");
                assert_eq!(
                    m.topic(),
                    format!("actions.{}", a.channel),
                    "an action goes to its channel's topic"
                );
                assert_eq!(
                    m.key(),
                    Some(a.customer_id.as_bytes()),
                    "actions are keyed by customer"
                );
                self.actions.push(a);
            }
        }
    }

    /// Reads until `done` holds or the time runs out (then panics with what came).
    pub async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Reader) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for {what}; actions: {:#?}; dead letters: {:#?}",
                    self.actions, self.dead
                );
            }
            self.poll_once(Duration::from_millis(50));
            tokio::task::yield_now().await;
        }
    }

    /// Reads whatever else comes within `quiet`.
    pub async fn settle(&mut self, quiet: Duration) {
        let start = Instant::now();
        while start.elapsed() < quiet {
            self.poll_once(Duration::from_millis(50));
            tokio::task::yield_now().await;
        }
    }
}

pub fn event(id: &str, customer: &str, event_type: &str, channel: Option<&str>, at: i64) -> Event {
    Event {
        event_id: id.to_owned(),
        customer_id: customer.to_owned(),
        event_type: event_type.to_owned(),
        channel: channel.map(str::to_owned),
        occurred_at: at,
        attributes: Default::default(),
    }
}

pub fn now() -> i64 {
    journeyd::clock::wall_now()
}

pub fn write_journey(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The test journey: a welcome email (cancelled by `app_opened` from another channel), a wait,
/// and a push nudge; `account_closed` exits.
pub fn welcome(wait: &str) -> String {
    format!(
        "journey: welcome\nversion: 1\nentry: {{ event: signup }}\nexit: {{ on: [account_closed] }}\nsteps:\n  - id: hello\n    send: {{ channel: email, template: welcome, cancel_on: [app_opened] }}\n  - id: pause\n    wait: {wait}\n  - id: nudge\n    send: {{ channel: push, template: nudge }}\n"
    )
}

/// Serves the operator API of `running` with `tokens` (the tokens file's text) on a free port.
pub async fn serve_admin(running: &Running, tokens: &str) -> std::net::SocketAddr {
    let tokens = journeyd::admin::tokens::Tokens::load(None, Some(tokens)).unwrap();
    let app = journeyd::admin::router(running.shared.clone(), tokens).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The tokens of the operator API in tests: `viewer` may read, `oncall` may write.
pub const TOKENS: &str =
    "viewer read viewer-secret-0123456789,oncall write oncall-secret-0123456789";
/// The read token's secret.
pub const VIEWER: &str = "viewer-secret-0123456789";
/// The write token's secret.
pub const ONCALL: &str = "oncall-secret-0123456789";

/// Sends one HTTP/1.1 request (`line` is `METHOD PATH`, `headers` each end with CRLF) and
/// reads the answer: its status and body.
async fn exchange(addr: std::net::SocketAddr, line: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{line} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A plain HTTP request with an optional bearer token: the status and the body.
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    exchange(
        addr,
        &format!("{method} {path}"),
        &format!("{auth}Content-Length: 0\r\n"),
    )
    .await
}

/// A request line (`METHOD PATH`) with this `Authorization` header, as a client may send it.
pub async fn request_raw(
    addr: std::net::SocketAddr,
    line: &str,
    authorization: &str,
) -> (u16, String) {
    exchange(addr, line, &format!("Authorization: {authorization}\r\n")).await
}

/// A plain HTTP GET: the status and the body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, &format!("GET {path}"), "").await
}

/// What the simulator sends for `events`, by action id, with the time advanced to `until`.
pub fn simulated(rig: &Rig, events: &[Event], until: i64) -> BTreeMap<String, Action> {
    let catalog = journeyd_journey::load_dir(&rig.journeys_dir())
        .unwrap()
        .catalog;
    let engine = Arc::new(journeyd_engine::Engine::new(catalog));
    let mut sim = journeyd_simulator::Simulator::new(engine);
    let mut out = BTreeMap::new();
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.occurred_at);
    for e in &sorted {
        for x in sim.push(e).unwrap() {
            out.insert(x.action.action_id.clone(), x.action);
        }
    }
    for x in sim.advance_to(until) {
        out.insert(x.action.action_id.clone(), x.action);
    }
    out
}

/// Reads until every action in `expected` came (within `within`), and a while after; every
/// action that came is the simulator's, a repeat an exact copy.
pub async fn until_every_expected(
    reader: &mut Reader,
    expected: &BTreeMap<String, Action>,
    within: Duration,
) {
    reader
        .until("every action the simulator sends", within, |r| {
            let got: std::collections::BTreeSet<&str> =
                r.actions.iter().map(|a| a.action_id.as_str()).collect();
            expected.keys().all(|k| got.contains(k.as_str()))
        })
        .await;
    reader.settle(Duration::from_millis(800)).await;
    for a in &reader.actions {
        let want = expected
            .get(&a.action_id)
            .unwrap_or_else(|| panic!("an action the simulator does not send: {a:#?}"));
        assert_eq!(a, want, "a repeat is an exact copy");
    }
}

/// Customer `c`'s story at `t` for the kill tests: a signup; then, by `i % 3`, the app opened
/// (the welcome withdrawn), the account closed (the journey ends), or nothing (the nudge).
pub fn signup_story(c: &str, i: usize, t: i64) -> Vec<Event> {
    let mut story = vec![event(&format!("{c}-s"), c, "signup", Some("web"), t)];
    match i % 3 {
        0 => story.push(event(
            &format!("{c}-o"),
            c,
            "app_opened",
            Some("app"),
            t + 1,
        )),
        1 => story.push(event(&format!("{c}-x"), c, "account_closed", None, t + 1)),
        _ => {}
    }
    story
}
