//! The `journeyd` binary as a separate process, as operators run it.

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the `journeyd` binary is: `JOURNEYD_BIN`, else beside the test executable's folder
/// (`target/<profile>/journeyd`), which `cargo test --workspace` builds.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("JOURNEYD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("journeyd");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p journeyd), or set JOURNEYD_BIN",
        bin.display()
    );
    bin
}

/// How a test runs journeyd.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap address.
    pub bootstrap: String,
    /// The consumer group.
    pub group: String,
    /// The journeys folder.
    pub journeys: PathBuf,
    /// The RocksDB directory.
    pub store: PathBuf,
    /// Avro input topic.
    pub input: String,
    /// JSON input topic, if any.
    pub json_input: Option<String>,
    /// The HTTP port (metrics, readiness).
    pub http_port: u16,
    /// `processing.batches_in_flight`.
    pub batches_in_flight: usize,
    /// `processing.max_event_bytes`; `None` leaves journeyd's default.
    pub max_event_bytes: Option<usize>,
    /// `session.timeout.ms`: how long the group waits for a member that stopped answering.
    pub session_timeout_ms: u32,
    /// `processing.guarantee = exactly_once` (else at_least_once).
    pub exactly_once: bool,
    /// The operator API's port, with [`OPERATOR_TOKEN`] (write) as its one token; `None`
    /// leaves it off.
    pub admin_port: Option<u16>,
}

/// The operator API's token in the end-to-end tests (write access).
pub const OPERATOR_TOKEN: &str = "e2e-operator-secret-0123456789";

impl Settings {
    /// The configuration file's text.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "[journeys]\ndir = {:?}\n\n[kafka]\n\"bootstrap.servers\" = {:?}\n\"group.id\" = {:?}\n\
             \"session.timeout.ms\" = \"{}\"\n\"reconnect.backoff.max.ms\" = \"500\"\n\n\
             [[inputs]]\ntopic = {:?}\nformat = \"avro\"\n",
            self.journeys, self.bootstrap, self.group, self.session_timeout_ms, self.input
        );
        if let Some(json) = &self.json_input {
            t += &format!("\n[[inputs]]\ntopic = {json:?}\nformat = \"json\"\n");
        }
        t += &format!(
            "\n[store]\npath = {:?}\nblock_cache_mb = 8\n\n[processing]\nbatch_max_messages = 200\n\
             batch_linger_ms = 5\n{}guarantee = {:?}\nbatches_in_flight = {}\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n{}\n[log]\nformat = \"json\"\n\
             level = \"info,journeyd::delivery=debug,journeyd::intake=debug\"\n",
            self.store,
            self.max_event_bytes
                .map_or(String::new(), |n| format!("max_event_bytes = {n}\n")),
            if self.exactly_once {
                "exactly_once"
            } else {
                "at_least_once"
            },
            self.batches_in_flight,
            self.http_port,
            match self.admin_port {
                Some(port) => format!(
                    "[admin]\nlisten = \"127.0.0.1:{port}\"\ntokens_file = {:?}\n",
                    self.journeys_tokens_file()
                ),
                None => "[admin]\nlisten = \"\"\n".to_owned(),
            }
        );
        t
    }

    /// The operator tokens file (beside the store).
    pub fn journeys_tokens_file(&self) -> PathBuf {
        self.store.with_extension("tokens")
    }
}

/// A journeyd process and its files.
pub struct Journeyd {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    http_port: u16,
    /// How many times it was started.
    pub starts: u32,
}

impl Journeyd {
    /// Writes the configuration into `dir` and starts journeyd.
    pub fn start(dir: &Path, settings: &Settings) -> Journeyd {
        let config = dir.join("journeyd.toml");
        std::fs::write(&config, settings.toml()).unwrap();
        if settings.admin_port.is_some() {
            std::fs::write(
                settings.journeys_tokens_file(),
                format!("e2e write {OPERATOR_TOKEN}\n"),
            )
            .unwrap();
        }
        let mut j = Journeyd {
            child: None,
            config,
            log: dir.join("journeyd.log"),
            http_port: settings.http_port,
            starts: 0,
        };
        j.spawn();
        j
    }

    /// Starts the process (again).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "journeyd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("journeyd starts");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGKILL as soon as the log shows a batch with messages queued to Kafka, `after` that
    /// line (so its produce request has reached the broker, whose answer is still on its way
    /// when the broker answers later than that). Kills after `within` all the same; returns
    /// whether it saw such a batch.
    pub fn kill_with_a_batch_in_flight(&mut self, after: Duration, within: Duration) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let start = Instant::now();
        let mut file = std::fs::File::open(&self.log).expect("the log");
        let mut seen = file.seek(SeekFrom::End(0)).unwrap();
        let found = loop {
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(seen)).unwrap();
            let _ = file.read_to_end(&mut bytes);
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let new = String::from_utf8_lossy(&bytes[..whole]);
            // Only whole lines: the last one may still be being written.
            let queued = new
                .lines()
                .any(|l| l.contains("Batch queued to Kafka") && !l.contains("\"messages\":0"));
            if queued {
                break true;
            }
            seen += whole as u64;
            if start.elapsed() > within || !self.alive() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        std::thread::sleep(after);
        self.kill();
        found
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("journeyd is running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "journeyd did not stop within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Its log (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of its HTTP endpoint: (status, body), or None when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// Whether `/readyz` answers 200 now.
    pub fn ready(&self) -> bool {
        self.get("/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// Waits until `/readyz` answers 200 (consumption caught up).
    pub fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                self.alive(),
                "journeyd exited before it was ready; log:\n{}",
                self.log()
            );
            assert!(
                start.elapsed() < within,
                "journeyd not ready within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One sample of a metric from `/metrics`: the sum over its label sets whose labels
    /// contain every `name="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        let mut total = None;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            if metric == name && labels.iter().all(|l| rest.contains(l)) {
                *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
            }
        }
        total
    }
}

impl Drop for Journeyd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, None)
}

/// An HTTP request with an optional bearer token: the status and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b)?;
    Some((status, body.to_owned()))
}

/// A fresh HTTP port.
pub fn http_port() -> u16 {
    free_port()
}
