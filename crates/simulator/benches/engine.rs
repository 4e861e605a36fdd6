//! Engine-only benchmark: events per second on one core over the example journeys and a
//! realistic event mix, and bytes of customer state. Prints a table and writes it to
//! `target/bench/engine.md` (or `$JOURNEYD_BENCH_OUT`).
//!
//! `cargo bench -p journeyd-simulator --bench engine`; `JOURNEYD_BENCH_EVENTS=20000` for a
//! smoke run. The mix: most events touch no journey (page views, logins); some enter journeys,
//! wait, respond, cancel, update profiles and exit.

use journeyd_engine::{CustomerState, Engine};
use journeyd_journey::{load_dir, StepKind, Trigger};
use journeyd_simulator::Simulator;
use journeyd_types::{time, Attributes, Event, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A small deterministic generator (xorshift), so every run sees the same stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, xs: &'a [String]) -> &'a str {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

fn main() {
    let events: usize = std::env::var("JOURNEYD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let customers: usize = (events / 10).max(10);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../journeys");
    let loaded = load_dir(&root).unwrap_or_else(|e| panic!("cannot load {}: {e}", root.display()));
    let engine = Arc::new(Engine::new(loaded.catalog));

    // Event types by role, from the journeys themselves.
    let mut entry = BTreeSet::new();
    let mut respond = BTreeSet::new();
    let mut exit = BTreeSet::new();
    for j in engine.journeys() {
        match &j.entry.trigger {
            Trigger::Event(e) => entry.insert(e.clone()),
            Trigger::Inactivity { event, .. } => entry.insert(event.clone()),
        };
        exit.extend(j.exit_on.iter().cloned());
        for s in &j.steps {
            match &s.kind {
                StepKind::WaitFor(w) => respond.extend(w.events.iter().cloned()),
                StepKind::Send(send) => respond.extend(send.cancel_on.iter().cloned()),
                _ => {}
            }
        }
    }
    let entry: Vec<String> = entry.into_iter().collect();
    let respond: Vec<String> = respond.into_iter().collect();
    let exit: Vec<String> = exit.into_iter().collect();
    let noise: Vec<String> = ["page_view", "login", "balance_checked", "search", "logout"]
        .map(String::from)
        .to_vec();
    let channels: Vec<String> = ["web", "app", "email", "sms", "branch"]
        .map(String::from)
        .to_vec();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = time::parse_rfc3339("2026-01-05T00:00:00Z").unwrap();
    let span = 30 * time::DAY;
    let mut stream = Vec::with_capacity(events);
    for i in 0..events {
        let customer = format!("cust{:07}", rng.below(customers as u64));
        let roll = rng.below(100);
        let mut attributes = Attributes::new();
        let event_type = match roll {
            0..=69 => rng.pick(&noise).to_owned(),
            70..=79 if !entry.is_empty() => rng.pick(&entry).to_owned(),
            80..=89 if !respond.is_empty() => rng.pick(&respond).to_owned(),
            90..=94 => {
                attributes.insert(
                    "ltv_segment".into(),
                    Value::from(["high", "medium", "low"][rng.below(3) as usize]),
                );
                attributes.insert("timezone".into(), Value::from("Europe/London"));
                "profile_updated".to_owned()
            }
            95..=97 => {
                attributes.insert(
                    "channel".into(),
                    Value::from(["email", "sms", "push"][rng.below(3) as usize]),
                );
                attributes.insert("granted".into(), Value::Bool(rng.below(5) != 0));
                "consent_changed".to_owned()
            }
            _ if !exit.is_empty() => rng.pick(&exit).to_owned(),
            _ => rng.pick(&noise).to_owned(),
        };
        attributes.insert("amount".into(), Value::Int(rng.below(500) as i64));
        stream.push(Event {
            event_id: format!("e{i}"),
            customer_id: customer,
            event_type,
            channel: Some(rng.pick(&channels).to_owned()),
            occurred_at: start + (span as i128 * i as i128 / events as i128) as i64,
            attributes,
        });
    }

    // Warm up on a slice, then measure the whole stream on a fresh simulator (one thread).
    let mut warm = Simulator::new(engine.clone());
    for e in stream.iter().take(events / 20) {
        let _ = warm.push(e);
    }
    let mut sim = Simulator::new(engine.clone());
    let mut actions = 0usize;
    let t0 = Instant::now();
    for e in &stream {
        actions += sim.push(e).map(|a| a.len()).unwrap_or(0);
    }
    actions += sim.advance_to(start + span).len();
    let elapsed = t0.elapsed();
    let eps = events as f64 / elapsed.as_secs_f64();

    let sizes: Vec<usize> = sim
        .customers()
        .values()
        .map(|s| s.to_bytes().len())
        .collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let p99 = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0);
    let one: Vec<usize> = sim
        .customers()
        .values()
        .filter(|s| s.instances.len() == 1 && s.wake.is_some())
        .map(CustomerState::to_bytes)
        .map(|b| b.len())
        .collect();
    let one_mean = one.iter().sum::<usize>() as f64 / one.len().max(1) as f64;
    let history: usize = sim.customers().values().map(|s| s.history.len()).sum();

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| engine only ({} events, {} customers, {} journeys) | value |",
        events,
        sim.customers().len(),
        engine.journeys().len()
    );
    let _ = writeln!(table, "|---|---|");
    let _ = writeln!(table, "| events/s on one core | {eps:.0} |");
    let _ = writeln!(table, "| actions emitted | {actions} |");
    let _ = writeln!(
        table,
        "| state bytes per customer, mean / p99 | {mean:.0} / {p99} |"
    );
    let _ = writeln!(
        table,
        "| state bytes, customers in one journey with one pending timer (n = {}) | {one_mean:.0} |",
        one.len()
    );
    let _ = writeln!(
        table,
        "| history records kept per customer, mean | {:.1} |",
        history as f64 / sim.customers().len().max(1) as f64
    );
    print!("{table}");
    let out =
        std::env::var("JOURNEYD_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").into()
                }))
                .join("bench/engine.md")
            });
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if std::fs::write(&out, &table).is_ok() {
        println!("written to {}", out.display());
    }
}
