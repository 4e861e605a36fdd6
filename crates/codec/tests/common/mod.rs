//! Test helpers: a fake schema registry and generators of events and actions.
#![allow(dead_code)]

use journeyd_types::{Action, ActionKind, Attributes, CancelReason, Event, Value};
use proptest::prelude::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A tiny HTTP/1.1 schema registry on 127.0.0.1, serving `GET /schemas/ids/{id}` and
/// `POST /subjects/{subject}/versions`, one request per connection. Stops when dropped.
pub struct FakeRegistry {
    /// Base URL, such as `http://127.0.0.1:40123`.
    pub url: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    schemas: HashMap<u32, String>,
    subjects: HashMap<String, u32>,
    next_id: u32,
    fail_with: Option<u16>,
    requests: Vec<String>,
}

impl FakeRegistry {
    /// Starts the server on a free port.
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            next_id: 1,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve(stream, &state);
                    }
                }
            })
        };
        FakeRegistry {
            url: format!("http://{addr}"),
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Makes `GET /schemas/ids/{id}` answer with `schema`.
    pub fn add_schema(&self, id: u32, schema: &str) {
        let mut s = self.state.lock().unwrap();
        s.schemas.insert(id, schema.to_owned());
        s.next_id = s.next_id.max(id + 1);
    }

    /// Answers every request with this status (and an error body) from now on, or normally again
    /// with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_with = status;
    }

    /// The requests served so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests started with `prefix` (such as `GET /schemas/ids/`).
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    /// The subjects registered so far, with their ids.
    pub fn subjects(&self) -> HashMap<String, u32> {
        self.state.lock().unwrap().subjects.clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(()); // the wake-up connection from Drop
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;

    let (status, answer) = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!("{method} {path}"));
        route(&mut s, &method, &path, &body)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

fn route(s: &mut State, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    if let Some(status) = s.fail_with {
        return (
            status,
            format!(r#"{{"error_code":{status}00,"message":"failing on purpose"}}"#),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            match id.parse::<u32>().ok().and_then(|id| s.schemas.get(&id)) {
                Some(schema) => (200, serde_json::json!({ "schema": schema }).to_string()),
                None => (
                    404,
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                ),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return (400, r#"{"error_code":400,"message":"bad body"}"#.to_owned());
            };
            let Some(schema) = json.get("schema").and_then(|v| v.as_str()) else {
                return (
                    422,
                    r#"{"error_code":42201,"message":"no schema"}"#.to_owned(),
                );
            };
            // Ids are global: the same schema text gets the same id under every subject.
            let existing = s
                .schemas
                .iter()
                .find(|(_, text)| text.as_str() == schema)
                .map(|(id, _)| *id);
            let id = existing.unwrap_or_else(|| {
                let id = s.next_id;
                s.next_id += 1;
                s.schemas.insert(id, schema.to_owned());
                id
            });
            s.subjects.insert((*subject).to_owned(), id);
            (200, format!(r#"{{"id":{id}}}"#))
        }
        _ => (404, r#"{"error_code":404,"message":"no route"}"#.to_owned()),
    }
}

/// A URL on 127.0.0.1 where nothing listens.
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A flat attribute value: what the Avro union can carry.
pub fn arb_flat_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-1e15f64..1e15).prop_map(Value::Float),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

/// Flat attributes.
pub fn arb_attributes() -> impl Strategy<Value = Attributes> {
    prop::collection::btree_map("[a-z_]{1,8}", arb_flat_value(), 0..5)
}

/// A time RFC 3339 can write: years 1653 to 5138.
pub fn arb_millis() -> impl Strategy<Value = i64> {
    -10_000_000_000_000i64..100_000_000_000_000
}

/// A valid event with flat attributes.
pub fn arb_event() -> impl Strategy<Value = Event> {
    (
        "[a-z0-9-]{1,16}",
        "\\PC{1,12}",
        "[a-z_]{1,12}",
        prop::option::of("[a-z]{1,6}"),
        arb_millis(),
        arb_attributes(),
    )
        .prop_map(
            |(event_id, customer_id, event_type, channel, occurred_at, attributes)| Event {
                event_id,
                customer_id,
                event_type,
                channel,
                occurred_at,
                attributes,
            },
        )
}

/// An action with flat vars; sends and cancels alike.
pub fn arb_action() -> impl Strategy<Value = Action> {
    (
        (
            "[0-9a-f]{32}",
            prop_oneof![Just(ActionKind::Send), Just(ActionKind::Cancel)],
            "\\PC{1,12}",
            "[a-z_]{1,10}",
            1u32..=i32::MAX as u32,
            "[a-z_]{1,10}",
            "[a-z]{1,6}",
        ),
        (
            "[a-z_]{0,12}",
            arb_attributes(),
            prop::option::of("[0-9a-f]{32}"),
            prop::option::of(prop_oneof![
                Just(CancelReason::Responded),
                Just(CancelReason::Exited)
            ]),
            arb_millis(),
            prop::option::of(arb_millis()),
        ),
    )
        .prop_map(
            |(
                (action_id, kind, customer_id, journey, journey_version, step, channel),
                (template, vars, cancels, reason, created_at, expires_at),
            )| Action {
                action_id,
                kind,
                customer_id,
                journey,
                journey_version,
                step,
                channel,
                template,
                vars,
                cancels,
                reason,
                created_at,
                expires_at,
            },
        )
}

/// A fixed, valid event.
pub fn sample_event() -> Event {
    Event::from_json(
        r#"{"event_id":"e1","customer_id":"c1","type":"signup","channel":"web",
            "occurred_at":"2026-01-05T09:00:00Z","attributes":{"plan":"basic","seats":3}}"#,
    )
    .unwrap()
}

/// A fixed send action.
pub fn sample_action() -> Action {
    Action {
        action_id: "0123456789abcdef0123456789abcdef".into(),
        kind: ActionKind::Send,
        customer_id: "c1".into(),
        journey: "winback".into(),
        journey_version: 3,
        step: "offer_email".into(),
        channel: "email".into(),
        template: "winback_offer".into(),
        vars: [("name".to_owned(), Value::from("Ada"))]
            .into_iter()
            .collect(),
        cancels: None,
        reason: None,
        created_at: 1_767_603_600_000,
        expires_at: Some(1_767_603_600_000 + 7 * 86_400_000),
    }
}
