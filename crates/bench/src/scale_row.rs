//! Row 4: scale. N customers (1,000,000 by default), each in one journey with one pending
//! timer, in a RocksDB store; then the real `journeyd` binary restarted on it.
//!
//! Set-up: the bench journey ([`crate::workload::SCALE_JOURNEY`]: entry on `bench_signup`, a
//! one-day wait, then an email) in a folder of its own, and every customer's entry event run
//! through `journeyd::processor::run_batch` and `Store::write` in batches of 1,000, into a store
//! opened by `journeyd::app::open` with the daemon's default options. Then the database is
//! flushed and compacted (what it settles to), and measured: bytes on disk per customer (every
//! file of the directory, and the SST files alone), against the bytes of the keys and values
//! written per customer.
//!
//! Restart: `journeyd run --embedded-kafka --data DIR --journeys DIR --http 127.0.0.1:PORT
//! --clock-speed S`, timed from the spawn until `GET /readyz` answers 200. Its peak memory is
//! the largest `VmHWM` of `/proc/PID/status`, sampled until it exits. `S` is chosen so that the
//! timers (all due one day after entry) fall due a few seconds after the spawn; the firing rate
//! is timers fired (`journeyd_timers_fired_total`, polled) per second from the first firing seen
//! (timers fire once their input partition is assigned and read to its head) until the last
//! (each fired timer sends an email: the action is produced and acknowledged, the state and
//! timer index written).

use crate::raw_firing;
use crate::support::{self, cpu_secs, daemon_store_options, dir_bytes, BATCH, TIMER_BATCH};
use crate::table::{bytes, percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::processor::{run_batch, Unwritten, Work};
use journeyd_store::Store;
use journeyd_store_rocksdb::{rocksdb_options, RocksStore};
use journeyd_types::time;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The target of the issue: seconds from start to ready.
pub const TARGET_READY_SECS: f64 = 2.0;
/// The target of the issue: timers fired per second.
pub const TARGET_FIRE_RATE: f64 = 200_000.0;

/// Seconds after the spawn at which the timers fall due.
const DUE_AFTER_SPAWN: f64 = 3.0;

/// A plain HTTP/1.1 GET on loopback: status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// The sum of a Prometheus metric's samples in a text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The value of one labelled sample of a metric (`name{...label...} value`).
pub fn labelled(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

/// The daemon's ms per batch while firing, from `journeyd_batch_seconds` over `secs` seconds:
/// see [`support::STAGES_LINE`].
fn stages(text: &str, secs: f64) -> String {
    let stage = |s: &str| {
        let label = format!("stage=\"{s}\"");
        (
            labelled(text, "journeyd_batch_seconds_sum", &label).unwrap_or(0.0),
            labelled(text, "journeyd_batch_seconds_count", &label).unwrap_or(0.0),
        )
    };
    let batches = stage("process").1;
    if batches < 1.0 {
        return "no batch".into();
    }
    let per = |x: f64| 1000.0 * x / batches;
    format!(
        "{batches:.0} batches: {}",
        support::stages_figures(per(secs), support::STAGES.map(|s| per(stage(s).0)))
    )
}

/// The `journeyd` binary next to this benchmark, built (or found up to date) by cargo with the
/// benchmark's own profile; `JOURNEYD_BIN` overrides.
pub fn journeyd_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("JOURNEYD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("where is the target directory of {}?", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "journeyd", "--bin", "journeyd"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env("CARGO_TARGET_DIR", target_dir);
    if !cfg!(debug_assertions) {
        cmd.args(["--profile", "bench"]);
    }
    // What cargo set for this executable is not the build's environment: build scripts that
    // watch these variables (ring watches CARGO_MANIFEST_DIR) would rebuild half the tree.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let set_for_us = [
            "CARGO_PKG_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_MANIFEST_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || [
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref());
        if set_for_us {
            cmd.env_remove(k.as_ref());
        }
    }
    let t = Instant::now();
    let status = cmd.status()?;
    eprintln!(
        "  scale: cargo build of journeyd took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    anyhow::ensure!(status.success(), "cargo build -p journeyd failed");
    let bin = profile_dir.join("journeyd");
    anyhow::ensure!(bin.exists(), "no {} after cargo build", bin.display());
    Ok(bin)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// "µs of CPU per timer; cores busy", from `cpu` CPU seconds spent firing `timers` timers in
/// `secs` seconds ("not measured" without them).
fn cpu_line(cpu: Option<f64>, timers: f64, secs: f64) -> String {
    match cpu {
        Some(c) if timers > 0.0 && secs > 0.0 => {
            format!("{:.1} µs; {:.2} cores busy", c * 1e6 / timers, c / secs)
        }
        _ => "not measured".into(),
    }
}

/// What the restarted daemon did.
struct Restarted {
    /// Seconds from the spawn to ready.
    ready: f64,
    /// Its peak memory (VmHWM, KiB) when it was ready.
    ready_kib: Option<u64>,
    /// Events it consumed before ready (replayed).
    replayed: f64,
    /// Timers fired per second.
    rate: f64,
    /// Timers fired.
    fired: f64,
    /// The ms per batch line.
    stages: String,
    /// The CPU time per timer line.
    cpu: String,
}

/// Measures the row.
pub fn measure(customers: usize) -> anyhow::Result<Vec<Row>> {
    let journeys = tempfile::tempdir()?;
    std::fs::write(journeys.path().join("bench.yaml"), workload::SCALE_JOURNEY)?;
    let data = tempfile::tempdir()?;
    let store_dir = data.path().join("store");
    let mut config = journeyd::config::Config::default();
    config.journeys.dir = journeys.path().to_owned();
    config.store.path = store_dir.clone();

    // Set-up through the daemon's own batch path.
    let t0 = journeyd::clock::wall_now();
    let setup = Instant::now();
    let (mut key_bytes, mut value_bytes) = (0usize, 0usize);
    // What firing one timer writes and sends, for the raw loop.
    let template = {
        let opened = journeyd::app::open(&config)?;
        let store = opened.store.clone();
        let mut n = 0;
        while n < customers {
            let end = (n + BATCH).min(customers);
            let work: Vec<Work> = (n..end)
                .map(|i| Work::Event {
                    event: workload::scale_entry(i, t0 + (i % 1000) as i64),
                    partition: (i % 4) as i32,
                    read_at: None,
                })
                .collect();
            let out = run_batch(
                &opened.engine,
                store.as_ref(),
                &Unwritten::none(),
                &work,
                &[],
            )?;
            anyhow::ensure!(out.actions.is_empty(), "the entry sent something");
            for (id, v) in &out.write.customers {
                key_bytes += journeyd_store_rocksdb::keys::customer(id).len();
                value_bytes += v.as_ref().map_or(0, Vec::len);
            }
            for (due, c) in &out.write.set_timers {
                key_bytes += journeyd_store_rocksdb::keys::timer(*due, c).len();
            }
            store.write(&out.write)?;
            n = end;
        }
        anyhow::ensure!(
            store.customer_count() == customers as u64
                && store.pending_timers() == customers as u64,
            "the store holds {} customers and {} timers, not {customers} each",
            store.customer_count(),
            store.pending_timers()
        );
        raw_firing::Template::of(&opened.engine, store.as_ref(), &config)?
    };
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!("  scale: {customers} customers set up in {setup_secs:.1} s");
    let options = daemon_store_options();
    let raw_dir = data.path().join("raw");
    {
        let db = rocksdb::DB::open(&rocksdb_options(&options), &store_dir)?;
        db.flush()?;
        db.compact_range::<&[u8], &[u8]>(None, None);
        // A copy for the raw loop to fire (hard links to the same files).
        rocksdb::checkpoint::Checkpoint::new(&db)?.create_checkpoint(&raw_dir)?;
    }
    let (disk, sst) = dir_bytes(&store_dir)?;
    eprintln!(
        "  scale: flushed and compacted ({} on disk)",
        bytes(disk as f64)
    );
    let estimate = RocksStore::open(&store_dir, &options)?.size_bytes();
    let per = |b: u64| b as f64 / customers.max(1) as f64;
    let written = (key_bytes + value_bytes) as f64 / customers.max(1) as f64;

    // Restart.
    let bin = journeyd_binary()?;
    eprintln!("  scale: restarting {}", bin.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let due = t0 + time::DAY;
    let log = data.path().join("journeyd.log");
    let spawn_wall = journeyd::clock::wall_now();
    let speed = ((due - spawn_wall) as f64 / (DUE_AFTER_SPAWN * 1000.0)).max(1.0);
    let spawned = Instant::now();
    let mut child = Command::new(&bin)
        .arg("run")
        .arg("--embedded-kafka")
        .arg("--data")
        .arg(&store_dir)
        .arg("--journeys")
        .arg(journeys.path())
        .args(["--http", &addr])
        .args(["--admin", ""])
        .arg(format!("--clock-speed={speed:.3}"))
        .env("JOURNEYD__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let due_at = spawned + Duration::from_secs_f64((due - spawn_wall) as f64 / speed / 1000.0);
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let result = (|| -> anyhow::Result<Restarted> {
        let limit = Instant::now() + Duration::from_secs(120);
        let ready = loop {
            if let Ok((200, _)) = http_get(&addr, "/readyz") {
                break spawned.elapsed().as_secs_f64();
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "journeyd exited ({status}) before it was ready: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            anyhow::ensure!(Instant::now() < limit, "journeyd not ready after 120 s");
            std::thread::sleep(Duration::from_millis(5));
        };
        let ready_at = spawned + Duration::from_secs_f64(ready);
        let ready_kib = vm_hwm_kib(pid);
        eprintln!(
            "  scale: ready after {ready:.2} s; timers due in {:.1} s",
            due_at
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
        let (_, text) = http_get(&addr, "/metrics")?;
        let replayed = metric(&text, "journeyd_events_consumed_total").unwrap_or(0.0);
        let limit =
            Instant::now() + Duration::from_secs(60) + Duration::from_millis(customers as u64 / 5);
        let mut fired = 0.0;
        // When the first and the last firing were seen, with the process's CPU seconds then (and
        // the count first seen).
        let mut first: Option<(Instant, f64, Option<f64>)> = None;
        let mut done: Option<(Instant, Option<f64>)> = None;
        let mut last = String::new();
        while Instant::now() < limit {
            if let Ok((200, text)) = http_get(&addr, "/metrics") {
                let now = Instant::now();
                fired = metric(&text, "journeyd_timers_fired_total").unwrap_or(0.0);
                if fired > 0.0 && first.is_none() {
                    first = Some((now, fired, cpu_secs(pid)));
                }
                if fired >= customers as f64 {
                    done = Some((now, cpu_secs(pid)));
                    last = text;
                    break;
                }
            }
            // Not faster: every /metrics request also scans the timer index (next_timer).
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some((done_at, cpu_done)) = done else {
            anyhow::bail!("{fired} of {customers} timers fired before the time limit");
        };
        // From the first firing seen (timers fire once the input partitions are assigned and
        // read to their head, which may be after they fall due) to the last.
        let rate = match first {
            Some((t, f, _)) if fired > f && done_at > t => {
                (fired - f) / (done_at - t).as_secs_f64()
            }
            _ => {
                fired
                    / done_at
                        .saturating_duration_since(due_at.max(ready_at))
                        .as_secs_f64()
            }
        };
        if let Some((t, _, _)) = first {
            eprintln!(
                "  scale: first timers fired {:.1} s after they fell due",
                t.saturating_duration_since(due_at).as_secs_f64()
            );
        }
        let firing = first.map_or(0.0, |(t, _, _)| (done_at - t).as_secs_f64());
        // CPU per timer fired between the first and the last firing seen, and cores busy.
        let cpu = match (first, cpu_done) {
            (Some((_, f, Some(a))), Some(b)) if fired > f && firing > 0.0 => {
                cpu_line(Some(b - a), fired - f, firing)
            }
            _ => cpu_line(None, 0.0, 0.0),
        };
        Ok(Restarted {
            ready,
            ready_kib,
            replayed,
            rate,
            fired,
            stages: stages(&last, firing),
            cpu,
        })
    })();
    eprintln!("  scale: firing done; stopping journeyd (SIGTERM)");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stop = Instant::now();
    while child.try_wait()?.is_none() && stop.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "  scale: journeyd stopped in {:.1} s",
        stop.elapsed().as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.join();
    let Restarted {
        ready,
        ready_kib,
        replayed,
        rate,
        fired,
        stages,
        cpu,
    } = result?;
    let peak = peak.load(Ordering::SeqCst) as f64 * 1024.0;

    // The machine's limit: the same reads, writes and produces, raw, on the copy.
    eprintln!("  scale: firing the same timers the raw way");
    let raw = raw_firing::fire_all(&raw_dir, &options, &template)?;
    anyhow::ensure!(
        raw.timers == customers as u64,
        "the raw loop fired {} timers, not {customers}",
        raw.timers
    );
    let raw_cpu = cpu_line(raw.cpu_secs, raw.timers as f64, raw.secs);

    let who = format!(
        "scale ({} customers, one journey, one timer each)",
        thousands(customers as f64)
    );
    Ok(vec![
        Row {
            name: format!("{who}: RocksDB bytes per customer after flush + compaction, all files / SST / store estimate"),
            measured: format!("{:.0} / {:.0} / {:.0}", per(disk), per(sst), per(estimate)),
            limit: format!("keys + values written per customer: {written:.0} B (state {:.0} B)", value_bytes as f64 / customers.max(1) as f64),
            ratio: percent(per(disk) / written),
            target: "–".into(),
            verdict: Verdict::Info,
        },
        Row {
            name: format!("{who}: restart of the journeyd binary to ready (/readyz 200), s (events replayed: {replayed:.0})"),
            measured: format!("{ready:.2}"),
            limit: format!("target {TARGET_READY_SECS:.0} s"),
            ratio: percent(ready / TARGET_READY_SECS),
            target: "< 2 s, no full replay".into(),
            verdict: Verdict::of(ready < TARGET_READY_SECS && replayed == 0.0),
        },
        Row::info(
            format!("{who}: peak memory of the process (VmHWM), when ready / after firing; of which RocksDB's filters and indexes (held by the open files)"),
            format!(
                "{} / {}; {}",
                ready_kib.map_or_else(|| "not measured".into(), |k| bytes(k as f64 * 1024.0)),
                bytes(peak),
                raw.table_readers_bytes.map_or_else(|| "not measured".into(), |b| bytes(b as f64)),
            ),
        ),
        Row {
            name: format!("{who}: timers fired/s, each sending an email ({} fired)", thousands(fired)),
            measured: thousands(rate),
            limit: format!("target {}", thousands(TARGET_FIRE_RATE)),
            ratio: percent(rate / TARGET_FIRE_RATE),
            target: "≥ 200,000/s".into(),
            verdict: Verdict::of(rate >= TARGET_FIRE_RATE),
        },
        Row {
            name: format!("{who}: timers fired/s against a raw loop on a copy of the store: per batch of {TIMER_BATCH}, one read of the index, a multi_get of the customers, one email produced per timer (the same bytes and headers, same producer settings, to an embedded mock cluster) and acknowledged, one WriteBatch (state put, entry delete, history merge of the same sizes); one thread, no engine, no encoding"),
            measured: thousands(rate),
            limit: format!("raw loop: {} timers/s", thousands(raw.rate())),
            ratio: percent(rate / raw.rate()),
            target: "–".into(),
            verdict: Verdict::Info,
        },
        Row::info(
            format!("{who}: CPU time (all threads, the embedded broker included) per timer fired, and cores busy while firing: the daemon / the raw loop"),
            format!("{cpu} / {raw_cpu}"),
        ),
        Row::info(
            format!("{who}: the daemon's ms per batch while firing: {}", support::STAGES_LINE),
            stages,
        ),
        Row::info(
            format!("{who}: set-up through run_batch + Store::write, customers/s"),
            thousands(customers as f64 / setup_secs),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\njourneyd_a_total{c=\"1\"} 2\njourneyd_a_total{c=\"2\"} 3\njourneyd_ab 7\njourneyd_a 1\n";
        assert_eq!(metric(text, "journeyd_a_total"), Some(5.0));
        assert_eq!(metric(text, "journeyd_a"), Some(1.0));
        assert_eq!(metric(text, "journeyd_b"), None);
        assert_eq!(labelled(text, "journeyd_a_total", "c=\"2\""), Some(3.0));
        assert_eq!(labelled(text, "journeyd_a", "c=\"2\""), None);
    }
}
