//! `tansu`, an Apache Kafka compatible broker written independently of this project, started
//! on loopback with in-memory storage.
//!
//! The binary comes from `TANSU_BIN`, else `$HOME/.cache/journeyd/tansu/bin/tansu` (where
//! `scripts/setup-tansu.sh` installs it), else `tansu` on the `PATH`. Its log goes to a
//! temporary folder removed with it; with `JOURNEYD_E2E_KEEP` set, to
//! `$TMPDIR/tansu-<port>.log`, kept. `TANSU_RUST_LOG` sets its level (default `warn`).

use crate::free_port;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the tansu binary is, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/journeyd/tansu/bin/tansu");
        if p.exists() {
            return Ok(p);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.exists())
    });
    on_path.ok_or_else(|| {
        "no tansu binary: run scripts/setup-tansu.sh (cargo install tansu --version 0.6.0 \
         --features dynostore --locked --root $HOME/.cache/journeyd/tansu) or set TANSU_BIN"
            .to_owned()
    })
}

/// A running tansu broker; stopped when dropped.
pub struct Broker {
    child: Child,
    listen_port: u16,
    advertised_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker that listens on a loopback port and advertises the same address.
    pub fn start() -> Broker {
        let port = free_port();
        Broker::start_advertising(port, port)
    }

    /// Starts a broker that listens on `listen_port` but tells clients to connect to
    /// `advertised_port` (where a [`crate::proxy::Proxy`] forwards to it).
    pub fn start_advertising(listen_port: u16, advertised_port: u16) -> Broker {
        let bin = binary().unwrap_or_else(|why| panic!("{why}"));
        let dir = tempfile::tempdir().unwrap();
        let log = match std::env::var_os("JOURNEYD_E2E_KEEP") {
            Some(_) => std::env::temp_dir().join(format!("tansu-{listen_port}.log")),
            None => dir.path().join("tansu.log"),
        };
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--kafka-cluster-id", "journeyd-e2e"])
            .arg(format!(
                "--kafka-listener-url=tcp://127.0.0.1:{listen_port}"
            ))
            .arg(format!(
                "--kafka-advertised-listener-url=tcp://127.0.0.1:{advertised_port}"
            ))
            .arg("--storage-engine=memory://tansu/")
            .env(
                "RUST_LOG",
                std::env::var("TANSU_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(out.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let broker = Broker {
            child,
            listen_port,
            advertised_port,
            log,
            _dir: dir,
        };
        broker.wait_listening();
        broker
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.listen_port)).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {}; its log:\n{}",
                self.listen_port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address clients bootstrap from (the advertised one).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// The address the broker itself listens on.
    pub fn listen_addr(&self) -> String {
        format!("127.0.0.1:{}", self.listen_port)
    }

    /// What the broker printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates a topic with `tansu topic create`, then waits until the broker reports it.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let bin = binary().unwrap_or_else(|why| panic!("{why}"));
        let out = Command::new(&bin)
            .args(["topic", "create", name])
            .arg(format!("--broker=tcp://{}", self.listen_addr()))
            .arg(format!("--partitions={partitions}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.listen_addr())
            .create()
            .unwrap();
        let start = Instant::now();
        loop {
            let seen = consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .first()
                        .map(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
                })
                .unwrap_or(false);
            if seen {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "topic {name} did not appear"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
