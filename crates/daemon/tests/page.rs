//! The web page in a real browser: journeyd on the embedded Kafka with the demo stream, and
//! Debian's headless Chromium driven through the DevTools protocol. The page signs in with a
//! token, lists the journeys, draws a journey with counts that equal `/metrics` and grow,
//! shows its experiment, pauses it with its button (confirmed), and tells one customer's story;
//! a read-only token is refused the customer. Screenshots go to the test's temporary folder,
//! and to `$JOURNEYD_SCREENSHOTS` when set (docs/screenshots is made that way).
//!
//! Chromium: `$JOURNEYD_CHROMIUM`, else `chromium` on the PATH (scripts/test installs
//! Debian's package when it is missing).

use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRITER: &str = "oncall-secret-0123456789";
const READER: &str = "viewer-secret-0123456789";

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Up to the body's length, when the server says it (Chromium keeps the connection open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body.to_owned());
            }
        }
        assert!(n > 0, "the connection closed before the answer's head");
    }
}

fn api(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, Some(WRITER));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A metric's values by its label values, for the samples whose `journey` is `journey`.
fn metric(metrics: SocketAddr, name: &str, journey: &str) -> BTreeMap<String, i64> {
    let (_, text) = http(metrics, "GET", "/metrics", None);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&format!("{name}{{")) else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        if !labels.contains(&format!("journey=\"{journey}\"")) {
            continue;
        }
        let step = labels
            .split(',')
            .find_map(|l| l.strip_prefix("step=\""))
            .map_or("", |s| s.trim_end_matches('"'));
        *out.entry(step.to_owned()).or_default() += value.parse::<i64>().unwrap();
    }
    out
}

/// A page in Chromium, driven through the DevTools protocol.
struct Browser {
    _process: Killed,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let bin = std::env::var("JOURNEYD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install Debian's chromium package (scripts/test does), or set JOURNEYD_CHROMIUM")
            });
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port: u16 = loop {
            let line = lines
                .next()
                .expect("Chromium says where DevTools listen")
                .unwrap();
            if let Some(url) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                break url.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Chromium keeps writing to stderr: keep reading it.
        std::thread::spawn(move || for _ in lines {});
        let process = Killed(child);
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let (_, list) = http(devtools, "GET", "/json/list", None);
        let list: Value = serde_json::from_str(&list).unwrap();
        let page = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (ws, _) = tungstenite::connect(url).unwrap();
        Browser {
            _process: process,
            ws,
            next: 0,
            _profile: profile,
        }
    }

    /// Calls a DevTools method and waits for its answer (events in between are dropped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy; its value.
    fn until(&mut self, what: &str, expression: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expression);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            if start.elapsed() > within {
                let text = self.eval("document.body.innerText.slice(0, 2000)");
                panic!("the page never showed {what}; it shows: {text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// A PNG of the whole page, saved as `name` in the test's folder (and `$JOURNEYD_SCREENSHOTS`).
    fn screenshot(&mut self, name: &str) -> PathBuf {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap();
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": height.clamp(600, 4000), "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        self.call("Emulation.clearDeviceMetricsOverride", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 20_000, "{name}: a picture, not a blank page");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &png).unwrap();
        if let Ok(dir) = std::env::var("JOURNEYD_SCREENSHOTS") {
            std::fs::write(Path::new(&dir).join(name), &png).unwrap();
        }
        path
    }
}

/// Each step's counts as the picture shows them.
fn picture(b: &mut Browser, attr: &str) -> BTreeMap<String, i64> {
    let v = b.eval(&format!(
        "Object.fromEntries([...document.querySelectorAll('g[data-step][{attr}]')].map(g => [g.dataset.step, Number(g.getAttribute('{attr}'))]))"
    ));
    serde_json::from_value(v).unwrap()
}

fn total(m: &BTreeMap<String, i64>) -> i64 {
    m.values().sum()
}

#[test]
fn the_page_draws_live_counts_pauses_a_journey_and_tells_a_customers_story() {
    let data = tempfile::tempdir().unwrap();
    let (admin_port, http_port) = (free_port(), free_port());
    let journeys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../journeys");
    let log = data.path().join("journeyd.log");
    let mut journeyd = Killed(
        Command::new(env!("CARGO_BIN_EXE_journeyd"))
            .args(["run", "--embedded-kafka", "--demo", "--clock-speed", "3600"])
            .arg("--journeys")
            .arg(&journeys)
            .arg("--data")
            .arg(data.path().join("state"))
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .env(
                "JOURNEYD_ADMIN_TOKENS",
                format!("viewer read {READER},oncall write {WRITER}"),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("journeyd starts"),
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let metrics = SocketAddr::from(([127, 0, 0, 1], http_port));
    let start = Instant::now();
    while TcpStream::connect(admin).is_err()
        || api(admin, "/journeys/acquisition/counts")["entered"]
            .as_u64()
            .unwrap_or(0)
            == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60) && journeyd.0.try_wait().unwrap().is_none(),
            "journeyd never counted an entry: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let listed = api(admin, "/journeys")["journeys"]
        .as_array()
        .unwrap()
        .len();

    let mut b = Browser::launch();
    let base = format!("http://127.0.0.1:{admin_port}/");
    b.navigate(&base);
    b.until(
        "the sign-in form",
        "document.readyState === 'complete' && !!document.getElementById('token')",
        Duration::from_secs(20),
    );
    // A wrong token is sent back to the form.
    b.eval("document.getElementById('token').value = 'not-a-token'; document.getElementById('signin').requestSubmit(); true");
    b.until(
        "the refusal",
        "document.getElementById('signin-message')?.textContent.includes('not accepted')",
        Duration::from_secs(10),
    );
    b.eval(&format!("document.getElementById('token').value = '{WRITER}'; document.getElementById('signin').requestSubmit(); true"));
    let rows = b.until(
        "the journeys",
        "document.querySelectorAll('tr[data-journey]').length",
        Duration::from_secs(10),
    );
    assert_eq!(rows.as_u64(), Some(listed as u64), "one row per journey");
    // Entries and goals today, beside the totals.
    let row = b.eval("[...document.querySelectorAll('tr[data-journey=\"acquisition\"] td.n')].map(td => Number(td.textContent.replace(/,/g, '')))");
    let row: Vec<i64> = serde_json::from_value(row).unwrap();
    assert_eq!(
        row.len(),
        5,
        "entered, active, goals, entered today, goals today"
    );
    assert!(
        row[0] > 0 && row[3] <= row[0] && row[4] <= row[2],
        "{row:?}"
    );
    b.screenshot("page-journeys.png");

    // One journey: the picture's counts lie between two scrapes of /metrics around a refresh
    // of the page, and grow.
    b.navigate(&format!("{base}#/journey/acquisition"));
    b.until(
        "the counts on the graph",
        "document.querySelectorAll('g[data-step][data-reached]').length",
        Duration::from_secs(20),
    );
    let before = metric(metrics, "journeyd_step_reached", "acquisition");
    let sent_before = metric(metrics, "journeyd_step_sent", "acquisition");
    std::thread::sleep(Duration::from_millis(4500)); // the page refreshes every 3 s
    let shown = picture(&mut b, "data-reached");
    let sent_shown = picture(&mut b, "data-sent");
    let after = metric(metrics, "journeyd_step_reached", "acquisition");
    let sent_after = metric(metrics, "journeyd_step_sent", "acquisition");
    assert!(total(&shown) > 0, "{shown:?}");
    for (step, n) in &shown {
        let lo = before.get(step).copied().unwrap_or(0);
        let hi = after.get(step).copied().unwrap_or(0);
        assert!(
            lo <= *n && *n <= hi,
            "{step}: /metrics said {lo} then {hi}, the page {n}"
        );
    }
    for (step, n) in &sent_shown {
        let lo = sent_before.get(step).copied().unwrap_or(0);
        let hi = sent_after.get(step).copied().unwrap_or(0);
        assert!(
            lo <= *n && *n <= hi,
            "sent at {step}: /metrics said {lo} then {hi}, the page {n}"
        );
    }
    assert!(
        after.keys().all(|s| shown.contains_key(s)),
        "every counted step is drawn with its name"
    );
    let first = total(&shown);
    let start = Instant::now();
    while total(&picture(&mut b, "data-reached")) <= first {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the counts never grew"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The experiment: every arm of the split, and a verdict in words.
    let arms = b.eval("document.querySelectorAll('div.experiment[data-split=\"reminder_test\"] tr[data-arm]').length");
    assert_eq!(arms, json!(3));
    let verdict = b.eval("document.querySelector('div.experiment[data-split=\"reminder_test\"] .verdict').textContent");
    let verdict = verdict.as_str().unwrap();
    assert!(
        (verdict.contains("reminder_") && verdict.contains("control"))
            || verdict.contains("No customer"),
        "{verdict}"
    );
    b.screenshot("page-journey.png");

    // Pause with its button: confirmed, then shown in the page and in GET /journeys.
    b.eval("window.asked = []; window.confirm = (m) => { window.asked.push(m); return true; }; document.getElementById('btn-pause').click(); true");
    b.until(
        "the paused status",
        "document.getElementById('journey-status').textContent.trim() === 'paused'",
        Duration::from_secs(15),
    );
    let asked = b.eval("window.asked.join(' | ')");
    assert!(
        asked.as_str().unwrap().contains("Pause"),
        "the pause was confirmed first: {asked}"
    );
    let list = api(admin, "/journeys");
    let acquisition = list["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == "acquisition")
        .unwrap();
    assert_eq!(acquisition["status"], "paused");

    // One customer's story: the demo customer with the longest history.
    let customer = (0..40)
        .map(|i| format!("demo-{i:06}"))
        .max_by_key(|id| {
            let (status, body) = http(admin, "GET", &format!("/customers/{id}"), Some(WRITER));
            if status != 200 {
                return 0;
            }
            let v: Value = serde_json::from_str(&body).unwrap();
            v["history"].as_array().map_or(0, Vec::len)
        })
        .unwrap();
    let known = api(admin, &format!("/customers/{customer}"))["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(known > 0, "{customer} has a history");
    b.navigate(&format!("{base}#/customer/{customer}"));
    let events = b
        .until(
            "the timeline",
            "document.querySelectorAll('#timeline li.event').length",
            Duration::from_secs(15),
        )
        .as_u64()
        .unwrap() as usize;
    let later = api(admin, &format!("/customers/{customer}"))["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        known <= events && events <= later,
        "the timeline shows the history: {known} ≤ {events} ≤ {later}"
    );
    let kinds = b.eval("[...new Set([...document.querySelectorAll('#timeline li.event')].map(e => e.dataset.kind))].join(',')");
    assert!(kinds.as_str().unwrap().contains("entered"), "{kinds}");
    b.screenshot("page-customer.png");

    // A read-only token may look at journeys, not at a customer.
    b.eval("document.getElementById('sign-out').click(); true");
    b.until(
        "the sign-in form again",
        "!!document.getElementById('token') && document.getElementById('token').offsetParent !== null",
        Duration::from_secs(10),
    );
    b.eval(&format!("document.getElementById('token').value = '{READER}'; document.getElementById('signin').requestSubmit(); true"));
    // Back on the customer's page, which a read token may not see.
    b.until(
        "the refusal of the customer",
        "document.getElementById('customer-error')?.textContent.includes('write token')",
        Duration::from_secs(15),
    );
    let shown =
        b.eval("document.getElementById('timeline')?.querySelectorAll('li.event').length ?? 0");
    assert_eq!(shown, json!(0), "no personal data for a read token");
    b.navigate(&format!("{base}#/"));
    let rows = b.until(
        "the journeys, for a read token",
        "document.querySelectorAll('tr[data-journey]').length",
        Duration::from_secs(10),
    );
    assert_eq!(rows.as_u64(), Some(listed as u64));
}
