//! Row 6: failover. Two `journeyd` processes (the binary beside the bench executable: `cargo
//! build --release -p journeyd` first, or `JOURNEYD_BIN`) in one consumer group on the mock
//! cluster (in this process), with the changelog. Probes go to the four input partitions at a
//! steady rate, each a new customer's `card_blocked` that the example journeys answer at once
//! with an in-app send. One replica is SIGKILLed; for the probes sent after the kill to the
//! partitions it owned, the seconds from the kill to the first of their actions, and to the
//! last (every customer of those partitions answered again). Two ways to come back:
//!
//! - dynamic membership and the default session timeout (librdkafka's 45 s): the group gives
//!   up on the dead member, the other replica is assigned its partitions, restores them from
//!   the changelog and answers;
//! - static membership (`group.instance.id`), the killed replica restarted on its own volume
//!   after 1 s: it rejoins under its id, gets its partitions back without a rebalance and
//!   reads only its changelog tail.
//!
//! The probes of the other replica's partitions give the latency of the customers the kill
//! did not touch, during the failover.

use crate::support::kafka::{send_record_waiting, service_config, Cluster, Mock};
use crate::table::Row;
use crate::workload;
use journeyd_codec::{encode_touchpoint, Framing};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// What one failover measured.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Seconds from the SIGKILL to the first action for a probe of a killed partition.
    pub first: f64,
    /// Seconds from the SIGKILL to the action of the last such probe sent in the first 5 s
    /// after the kill.
    pub all: f64,
    /// The p99 of the untouched partitions' probes during the failover, ms.
    pub untouched_p99_ms: f64,
    /// The same before the kill, ms.
    pub before_p99_ms: f64,
}

/// A replica: its process, its configuration file and its log.
struct Replica {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Replica {
    fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(bin)
                .args(["run", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// The partitions of its last assignment, from its log.
    fn assigned(&self) -> BTreeSet<i32> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .find(|l| l.contains("Partitions assigned"))
            .and_then(|l| l.split("\"partitions\":\"{").nth(1))
            .and_then(|rest| rest.split('}').next())
            .map(|list| {
                list.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The journeyd binary beside the bench executable, or `JOURNEYD_BIN`.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("JOURNEYD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("journeyd"))
        .ok_or("no folder above the bench executable")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: cargo build --release -p journeyd (or set JOURNEYD_BIN)",
            bin.display()
        ))
    }
}

fn p99(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * 0.99).ceil() as usize).clamp(1, xs.len()) - 1]
}

/// One failover at `rate` probes per second: with static membership (and a restart after
/// 1 s) or without; with `session_ms` as `session.timeout.ms` (librdkafka's default, 45 s,
/// when `None`).
pub fn measure(
    rate: usize,
    static_membership: bool,
    session_ms: Option<u32>,
) -> anyhow::Result<Failover> {
    let bin = binary().map_err(anyhow::Error::msg)?;
    let cluster = Mock::start()?;
    let bootstrap = cluster.bootstrap();
    let dir = tempfile::tempdir()?;
    let prefix = if static_membership { "fs." } else { "fd." };
    let base = service_config(&bootstrap, prefix, dir.path())?;
    let engine = workload::engine_for(&base.journeys.dir)?;
    cluster.create_topic(&base.inputs[0].topic, PARTITIONS)?;
    cluster.create_topic(&base.outputs.dead_letter_topic, 1)?;
    if let Some(topic) = base.control_topic() {
        cluster.create_topic(&topic, 1)?;
    }
    for c in journeyd::app::channels(&engine) {
        cluster.create_topic(&base.actions_topic(&c), 1)?;
    }
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut c = base.clone();
        c.store.changelog = true;
        c.store.path = dir.path().join(name);
        c.log.format = journeyd::config::LogFormat::Json;
        if let Some(ms) = session_ms {
            c.kafka.insert("session.timeout.ms".into(), ms.to_string());
        }
        if static_membership {
            c.kafka
                .insert("group.instance.id".into(), format!("{prefix}{name}"));
        }
        if name == "a" {
            // The mock cluster cannot create topics for a client.
            cluster.create_topic(&c.changelog_topic().expect("on"), PARTITIONS)?;
        }
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, c.to_toml())?;
        let mut r = Replica {
            child: None,
            config,
            log: dir.path().join(format!("{name}.log")),
        };
        r.spawn(&bin)?;
        replicas.push(r);
    }
    let in_app = base.actions_topic("in_app");
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrived, stop, bootstrap, in_app) = (
            arrived.clone(),
            stop.clone(),
            bootstrap.clone(),
            in_app.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "failover-reader")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            consumer.subscribe(&[&in_app])?;
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    if let Some(k) = m.key() {
                        let k = String::from_utf8_lossy(k).into_owned();
                        arrived
                            .lock()
                            .unwrap()
                            .entry(k)
                            .or_insert_with(Instant::now);
                    }
                }
            }
            Ok(())
        })
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let topic = base.inputs[0].topic.clone();
    let mut sent: Vec<(String, i32, Instant)> = Vec::new();
    let mut n = 0usize;
    let mut send = |sent: &mut Vec<(String, i32, Instant)>| -> anyhow::Result<()> {
        let p = (n % PARTITIONS as usize) as i32;
        let customer = format!("fo{n}");
        let e = workload::probe(
            customer.clone(),
            format!("fo{n}"),
            journeyd::clock::wall_now(),
        );
        let bytes = encode_touchpoint(&e, Framing::SingleObject);
        send_record_waiting(
            &producer,
            BaseRecord::<str, [u8]>::to(&topic)
                .partition(p)
                .key(&customer)
                .payload(&bytes),
        )?;
        sent.push((customer, p, Instant::now()));
        n += 1;
        Ok(())
    };
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    // Both replicas up, every partition answering.
    let warm = Instant::now();
    loop {
        send(&mut sent)?;
        producer.poll(Duration::ZERO);
        std::thread::sleep(gap);
        let a = replicas[0].assigned();
        let b = replicas[1].assigned();
        let answered = {
            let got = arrived.lock().unwrap();
            let recent: BTreeSet<i32> = sent
                .iter()
                .rev()
                .take(200)
                .filter(|(c, _, _)| got.contains_key(c))
                .map(|(_, p, _)| *p)
                .collect();
            recent.len() == PARTITIONS as usize
        };
        if answered && !a.is_empty() && !b.is_empty() && a.len() + b.len() == PARTITIONS as usize {
            break;
        }
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(120),
            "the two replicas did not share the partitions within 2 minutes (a: {a:?}, b: {b:?})"
        );
    }
    // Steady load, then the kill.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(5) {
        send(&mut sent)?;
        producer.poll(Duration::ZERO);
        std::thread::sleep(gap);
    }
    let killed: BTreeSet<i32> = replicas[0].assigned();
    let before_kill = sent.len();
    replicas[0].kill();
    let killed_at = Instant::now();
    let mut restarted = false;
    let deadline = killed_at + Duration::from_secs(150);
    let answered_all = |sent: &[(String, i32, Instant)]| {
        let got = arrived.lock().unwrap();
        let moved: Vec<&(String, i32, Instant)> = sent[before_kill..]
            .iter()
            .filter(|(_, p, t)| killed.contains(p) && *t < killed_at + Duration::from_secs(5))
            .collect();
        !moved.is_empty() && moved.iter().all(|(c, _, _)| got.contains_key(c))
    };
    while !answered_all(&sent) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the killed replica's customers were not answered within 150 s"
        );
        if static_membership && !restarted && killed_at.elapsed() > Duration::from_secs(1) {
            replicas[0].spawn(&bin)?;
            restarted = true;
        }
        send(&mut sent)?;
        producer.poll(Duration::ZERO);
        std::thread::sleep(gap);
    }
    let _ = producer.flush(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("the reader")?;
    let got = arrived.lock().unwrap();
    let since_kill = |t: &Instant| t.duration_since(killed_at).as_secs_f64();
    let moved: Vec<&Instant> = sent[before_kill..]
        .iter()
        .filter(|(_, p, _)| killed.contains(p))
        .filter_map(|(c, _, _)| got.get(c))
        .collect();
    let first = moved
        .iter()
        .map(|t| since_kill(t))
        .fold(f64::INFINITY, f64::min);
    let all = sent[before_kill..]
        .iter()
        .filter(|(_, p, t)| killed.contains(p) && *t < killed_at + Duration::from_secs(5))
        .filter_map(|(c, _, _)| got.get(c))
        .map(since_kill)
        .fold(0.0, f64::max);
    let latency = |range: std::ops::Range<usize>| {
        sent[range]
            .iter()
            .filter(|(_, p, _)| !killed.contains(p))
            .filter_map(|(c, _, t)| got.get(c).map(|a| a.duration_since(*t).as_secs_f64() * 1e3))
            .collect::<Vec<f64>>()
    };
    let half = before_kill / 2;
    Ok(Failover {
        first,
        all,
        untouched_p99_ms: p99(latency(before_kill..sent.len())),
        before_p99_ms: p99(latency(half..before_kill)),
    })
}

/// The failover rows at `rate` probes per second, with `session_ms` (`None`: the default).
pub fn rows(rate: usize, session_ms: Option<u32>) -> Vec<Row> {
    let mut rows = Vec::new();
    let session = match session_ms {
        None => "the default session timeout (45 s)".to_owned(),
        Some(ms) => format!("session timeout {:.0} s", f64::from(ms) / 1000.0),
    };
    for (static_membership, how) in [
        (false, format!("{session}, the other replica takes over")),
        (
            true,
            format!("static membership, {session}, the killed replica restarted on its volume after 1 s"),
        ),
    ] {
        let name = format!("failover, {how}: seconds from SIGKILL to the first / last action for the killed replica's customers ({rate} probes/s)");
        match measure(rate, static_membership, session_ms) {
            Ok(f) => {
                rows.push(Row::info(name, format!("{:.1} / {:.1}", f.first, f.all)));
                rows.push(Row::info(
                    format!("failover, {how}: p99 ms of the other replica's customers, before / during"),
                    format!("{:.0} / {:.0}", f.before_p99_ms, f.untouched_p99_ms),
                ));
            }
            Err(e) => rows.push(Row::error(name, &e)),
        }
    }
    rows
}
