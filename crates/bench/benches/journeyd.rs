//! The performance harness of journeyd: every row of issue 5, each against its own limit
//! measured in the same run. Prints one Markdown table and writes it to
//! `$CARGO_TARGET_DIR/bench/journeyd.md` (or `$JOURNEYD_BENCH_OUT`).
//!
//! ```sh
//! cargo bench -p journeyd-bench --bench journeyd
//! ```
//!
//! Knobs (environment):
//! - `JOURNEYD_BENCH_EVENTS`: events of the engine and engine + RocksDB rows (1,000,000);
//! - `JOURNEYD_BENCH_KAFKA_EVENTS`: events of the end-to-end rows (the smaller of 200,000 and
//!   `JOURNEYD_BENCH_EVENTS`);
//! - `JOURNEYD_BENCH_LATENCY_SECS`: how long the latency rows produce (20; 1 when
//!   `JOURNEYD_BENCH_EVENTS` is under 100,000);
//! - `JOURNEYD_BENCH_LATENCY_MAX_EPS`: skip the throughput runs and take this as the maximum
//!   the latency rows run at a half and a tenth of;
//! - `JOURNEYD_BENCH_CUSTOMERS`: customers of the scale and audience rows (1,000,000);
//! - `JOURNEYD_BENCH_ROWS`: which rows, a comma list of `engine`, `audience`, `rocksdb`, `kafka-mock`,
//!   `kafka-tansu`, `kafka-far`, `latency`, `scale`, `restore`, `failover` (all). `latency` runs
//!   on each selected Kafka; `failover` needs the release binary (`cargo build --release -p
//!   journeyd`);
//! - `JOURNEYD_BENCH_FAILOVER_RATE`: probes per second of the failover rows (200; their
//!   session timeout is librdkafka's default, 45 s, or 6 s when `JOURNEYD_BENCH_EVENTS` is
//!   under 100,000).
//!
//! Smoke run (CI): `JOURNEYD_BENCH_EVENTS=5000 JOURNEYD_BENCH_CUSTOMERS=2000 cargo test -p
//! journeyd-bench --bench journeyd` (a debug build, a tiny workload: it only checks that every
//! row still runs; no figure of a debug build means anything).

use journeyd_bench::support::kafka::{Cluster, ClusterFactory, Mock, Tansu};
use journeyd_bench::table::{Row, Table};
use journeyd_bench::{
    audience_row, engine_row, kafka_row, latency_row, restore_row, rocks_row, scale_row,
};
use std::path::PathBuf;
use std::time::Instant;

/// The allocator of the `journeyd` binary, so that the rows run in this process (engine,
/// engine + RocksDB, the service end to end) allocate as the daemon does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// The target directory: `$CARGO_TARGET_DIR`, else the one this executable was built in.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").into())
}

const ALL: [&str; 10] = [
    "engine",
    "audience",
    "rocksdb",
    "kafka-mock",
    "kafka-tansu",
    "kafka-far",
    "latency",
    "scale",
    "restore",
    "failover",
];

/// The runtime the Kafka rows run on.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    // As the daemon runs (see the function).
    journeyd::memory::no_transparent_huge_pages();
    let started = Instant::now();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let events = knob("JOURNEYD_BENCH_EVENTS", 1_000_000).max(100);
    let kafka_events = knob("JOURNEYD_BENCH_KAFKA_EVENTS", events.min(200_000)).max(100);
    let latency_secs = knob(
        "JOURNEYD_BENCH_LATENCY_SECS",
        if events < 100_000 { 1 } else { 20 },
    )
    .max(1) as f64;
    let customers = knob("JOURNEYD_BENCH_CUSTOMERS", 1_000_000).max(10);
    let rows: Vec<String> = std::env::var("JOURNEYD_BENCH_ROWS")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_else(|_| ALL.iter().map(|s| (*s).to_owned()).collect());
    for r in &rows {
        if !ALL.contains(&r.as_str()) {
            eprintln!(
                "journeyd bench: unknown row `{r}` in JOURNEYD_BENCH_ROWS (rows: {})",
                ALL.join(", ")
            );
            std::process::exit(2);
        }
    }
    let on = |r: &str| rows.iter().any(|x| x == r);
    let mut table = Table::default();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut timed =
        |name: &str, t: Instant| timings.push((name.to_owned(), t.elapsed().as_secs_f64()));

    if on("engine") {
        let t = Instant::now();
        eprintln!("journeyd bench: engine ({events} events)");
        table.extend(
            engine_row::measure(events).unwrap_or_else(|e| vec![Row::error("engine only", &e)]),
        );
        table.note(
            "engine only",
            "no machine limit to compare with, so the limit column is the target. One thread over \
             decoded events and states in memory (a hash map of states and a sorted timer index, \
             due timers fired before each event as the simulator does), so it is bound by the \
             engine's own CPU work per event: finding the journeys an event concerns, running \
             steps, evaluating conditions, cloning and encoding state. The simulator line is the \
             same stream through journeyd_simulator (BTreeMap of states, an id allocated per \
             event); the \"no journeys\" line is the floor of the loop (map lookup, state \
             creation, profile and consent updates) on the same stream. The row and the floor \
             are the median of five passes, each on fresh states (a single pass moves by a \
             quarter or more on a shared machine).",
        );
        timed("engine", t);
    }
    if on("audience") {
        let t = Instant::now();
        eprintln!("journeyd bench: audience run ({customers} customers)");
        table.extend(
            audience_row::measure(customers)
                .unwrap_or_else(|e| vec![Row::error("audience run", &e)]),
        );
        table.note(
            "audience run",
            "no machine limit to compare with, so the limit column is the target. One thread \
             gives every customer in memory one run of the example monthly campaign \
             (journeys/lapsed.yaml): the engine evaluates its CEL entry condition on the \
             customer's profile (a name, a segment, a time zone, a balance and the time of the \
             last transaction) and the run's time, and enters and sends to those it holds for. \
             The median of three passes, each on fresh copies of the states.",
        );
        timed("audience", t);
    }
    if on("rocksdb") {
        let t = Instant::now();
        eprintln!("journeyd bench: engine + RocksDB ({events} events)");
        table.extend(
            rocks_row::measure(events).unwrap_or_else(|e| vec![Row::error("engine + RocksDB", &e)]),
        );
        table.note(
            "engine + RocksDB",
            "the limit is RocksDB itself: a raw WriteBatch loop writing the same keys and values \
             (the write sets the measured run produced), one batch per 1,000 events, into a fresh \
             database opened with the same options, on one thread (two threads writing \
             alternate batches were no faster: RocksDB serialises writes). The measured loop runs as \
             the daemon does: each batch's write on a writer thread while the next batch is \
             processed over it, so the two cores share the work. Besides writing, it reads \
             every customer of the batch (multi_get), reads the due timers, runs the engine, \
             encodes the states, and the store reads the timer keys it is not told exist (for \
             its exact counters) and keeps recently written states in its cache. The info line \
             gives the same loop on one thread.",
        );
        timed("rocksdb", t);
    }

    let kafka_kinds: Vec<(&str, Box<ClusterFactory>)> = [
        (
            "kafka-mock",
            "mock cluster",
            Box::new(|| Ok(Box::new(Mock::start()?) as Box<dyn Cluster>)) as Box<ClusterFactory>,
        ),
        (
            "kafka-tansu",
            "tansu",
            Box::new(|| Ok(Box::new(Tansu::start()?) as Box<dyn Cluster>)) as Box<ClusterFactory>,
        ),
    ]
    .into_iter()
    .filter(|(row, _, _)| on(row))
    .filter(|(row, kind, _)| {
        // No tansu binary here: say so and go on (not an error of the harness).
        let missing = *row == "kafka-tansu" && journeyd_tests::tansu::binary().is_err();
        if missing {
            let why = journeyd_tests::tansu::binary().err().unwrap_or_default();
            table.extend([Row::not_run(format!("end to end, {kind}"), why)]);
        }
        !missing
    })
    .map(|(_, kind, f)| (kind, f))
    .collect();
    let kafka_kinds: Vec<(&str, Box<ClusterFactory>)> = if kafka_kinds.is_empty() && on("latency") {
        vec![(
            "mock cluster",
            Box::new(|| Ok(Box::new(Mock::start()?) as Box<dyn Cluster>)) as Box<ClusterFactory>,
        )]
    } else {
        kafka_kinds
    };
    if !kafka_kinds.is_empty() {
        let runtime = tokio_runtime();
        for (kind, new_cluster) in &kafka_kinds {
            let t = Instant::now();
            eprintln!("journeyd bench: end to end, {kind} ({kafka_events} events)");
            let fixed_max = std::env::var("JOURNEYD_BENCH_LATENCY_MAX_EPS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok());
            let max = runtime.block_on(async {
                if let Some(max) = fixed_max {
                    return Some(max);
                }
                // tansu 0.6 has no transactions: the exactly_once row runs on the mock only.
                let transactions = !kind.contains("tansu");
                match kafka_row::throughput(kind, new_cluster.as_ref(), kafka_events, transactions)
                    .await
                {
                    Ok((rows, max)) => {
                        table.extend(rows);
                        Some(max)
                    }
                    Err(e) => {
                        table.extend([Row::error(format!("end to end, {kind}"), &e)]);
                        None
                    }
                }
            });
            timed(&format!("end to end, {kind}"), t);
            if on("latency") {
                let t = Instant::now();
                let name = format!("end to end, {kind}: latency");
                let Some(max) = max else {
                    table.extend([Row::not_run(name, "no maximum throughput measured")]);
                    continue;
                };
                eprintln!("journeyd bench: latency, {kind} ({latency_secs} s)");
                let rows = runtime.block_on(async {
                    let cluster = new_cluster()?;
                    latency_row::latency_rows(kind, cluster.as_ref(), max, latency_secs).await
                });
                table.extend(rows.unwrap_or_else(|e| vec![Row::error(name, &e)]));
                timed(&format!("latency, {kind}"), t);
            }
        }
        table.note(
            "end to end",
            "the limit is the Kafka client and broker: a plain rdkafka StreamConsumer → \
             FutureProducer loop copying the same messages one for one, with the service's own \
             clients (journeyd::service::clients: same consumer settings, idempotent acks=all \
             producer, linger.ms=1, lz4; fetch.wait.max.ms=5, as neither broker here answers a \
             fetch early) and the same batching (up to 1,000 messages, closed by a 2 ms pause or \
             at 20 ms, every send acknowledged before the next batch, async offset commit). Both \
             are clocked from the end of their first batch to the end of the last, all in one \
             process on the same cores as the broker (mock) or next to it (tansu). Latency: \
             every tenth event is a probe (card_blocked for a new customer, answered at once with \
             an in-app send); from the produce call to the action's arrival at a consumer of the \
             action topics. It includes the upstream producer's 5 ms linger, the service's \
             batching, its producer's 1 ms linger, the acknowledgement round trip and both \
             consumers' fetches. Its limit is the plain copy run live at the same rate, \
             forwarding only the probes, timed the same way to the arrival of their copies: all \
             of those waits, none of the service's work. The \"ms per batch\" line gives the \
             service's time per batch, then each stage's (a batch's sends and write overlap the next batch's collection and \
             processing), then how long the loop waited for them.",
        );
    }
    if on("kafka-far") {
        let t = Instant::now();
        eprintln!("journeyd bench: end to end, far broker ({kafka_events} events)");
        let runtime = tokio_runtime();
        let rows = runtime.block_on(kafka_row::far_broker(kafka_events));
        table.extend(
            rows.unwrap_or_else(|e| vec![Row::error("end to end, far broker".to_owned(), &e)]),
        );
        table.note(
            "far broker",
            format!(
                "the mock cluster answers every request {} ms late (rd_kafka_mock_broker_set_rtt), \
                 as a broker across a network with acks=all would; the service runs with 1, 2 and \
                 3 batches on their way to Kafka at once (processing.batches_in_flight). With more \
                 than one, a batch's sends are queued while the previous batch's wait for their \
                 acknowledgements (in batch order all the same).",
                kafka_row::FAR_ROUND_TRIP.as_millis()
            ),
        );
        timed("end to end, far broker", t);
    }
    if on("scale") {
        let t = Instant::now();
        eprintln!("journeyd bench: scale ({customers} customers)");
        table.extend(
            scale_row::measure(customers).unwrap_or_else(|e| vec![Row::error("scale", &e)]),
        );
        table.note(
            "scale",
            "restart to ready (< 2 s, no replay) and the firing rate (≥ 200,000/s) have \
             absolute targets. The firing rate is also held against a raw loop on a copy of the \
             same store, on one thread: the index read, the customers' multi_get, the emails \
             produced and acknowledged, one WriteBatch of the same operations per 5,000 timers; \
             no engine, no encoding, no state cache. The daemon overlaps its batches on both \
             cores; its CPU per timer beside the raw loop's says what its own work costs. The \
             bytes per customer are held against the bytes of keys and values written per \
             customer (state, customer key, timer key).",
        );
        timed("scale", t);
    }
    if on("restore") {
        let t = Instant::now();
        eprintln!("journeyd bench: restore ({customers} customers)");
        table.extend(
            restore_row::measure(customers).unwrap_or_else(|e| vec![Row::error("restore", &e)]),
        );
        table.note(
            "restore",
            "a partition's customers read back from the changelog into an empty store, as a \
             replica does when the partition is assigned to it (records decoded, the local \
             states read for their old timers, written 2,000 to a RocksDB batch with their \
             timers and the checkpoint), against a plain consume of the same partition with the \
             same client settings. Both on the mock cluster in this process.",
        );
        timed("restore", t);
    }

    if on("failover") {
        let t = Instant::now();
        let rate = knob("JOURNEYD_BENCH_FAILOVER_RATE", 200);
        eprintln!("journeyd bench: failover ({rate} probes/s, two journeyd processes)");
        match journeyd_bench::failover_row::binary() {
            Ok(_) => {
                // A smoke run does not wait out librdkafka's 45 s.
                let session = (events < 100_000).then_some(6000);
                table.extend(journeyd_bench::failover_row::rows(rate, session));
                table.note(
                    "failover",
                    "two journeyd processes (the release binary) in one group on the mock \
                     cluster in this process, with the changelog; probes (a new customer's \
                     card_blocked, answered at once with an in-app send) to the four \
                     partitions at a steady rate; one replica SIGKILLed. First / last: from the \
                     kill to the first action for a probe of a partition it owned, and to the \
                     last of those sent in the 5 s after the kill. The p99 line: the other \
                     replica's probes, before the kill and from the kill on.",
                );
            }
            Err(why) => table.extend([Row::not_run("failover", why)]),
        }
        timed("failover", t);
    }

    let total = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    out.push_str(&format!(
        "journeyd bench: {cores} cores; {events} events (engine, RocksDB), {kafka_events} events (Kafka), {customers} customers (scale); {}; {total:.0} s\n\n",
        if cfg!(debug_assertions) {
            "DEBUG BUILD: figures mean nothing"
        } else {
            "release build"
        }
    ));
    out.push_str(&table.markdown());
    out.push_str("\nWhat limits each row:\n\n");
    out.push_str(&table.notes_markdown());
    out.push_str("\nSeconds per row: ");
    out.push_str(
        &timings
            .iter()
            .map(|(n, s)| format!("{n} {s:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push('\n');
    print!("{out}");
    let path = std::env::var_os("JOURNEYD_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("bench/journeyd.md"));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &out) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("journeyd bench: cannot write {}: {e}", path.display()),
    }
    // Missed targets are figures, not failures; a row that could not be measured is.
    if table.errors() > 0 {
        eprintln!(
            "journeyd bench: {} row(s) could not be measured (ERROR in the table)",
            table.errors()
        );
        std::process::exit(1);
    }
}
