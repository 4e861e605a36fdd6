//! Row 3: end to end through Kafka (librdkafka's mock cluster in the process, and tansu on
//! loopback): touchpoints in, actions out, against a plain consume-and-produce copy of the
//! same messages with the same client settings and batching.
//!
//! Throughput: N Avro touchpoints of the mix (times in the last ten minutes, so none is "in the
//! future" for the service's real clock) are produced to the input topic first; then the
//! service (`journeyd::app::open`, `app::shared`, `service::run`, in this process, default
//! configuration) consumes them, and the clock runs from the first batch it writes to the last
//! (the group join before the first batch is left out, and reported apart). A batch counts when
//! its actions are acknowledged by Kafka and its states written to RocksDB.
//!
//! The limit is the copy: the same messages in another topic, consumed and produced one for
//! one to an output topic by a loop with the service's consumer and producer
//! (`journeyd::service::clients`: same librdkafka settings, idempotent `acks=all` producer,
//! `linger.ms=1`, lz4), batches collected the same way (at most `batch_max_messages`, at most
//! `batch_linger_ms` after the first), every send acknowledged before the next batch, offsets
//! committed asynchronously after each batch. Clocked the same way.
//!
//! Latency: the rows at a half and a tenth of the measured maximum are in
//! [`crate::latency_row`]; their limit is the same copy, running live.

use crate::support::kafka::{
    collect, copy_batch, copy_clients, copy_topics, default_in_flight, send_waiting, Cluster,
    ClusterFactory, Mock, Service,
};
use crate::support::{stages_figures, STAGES, STAGES_LINE};
use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::config::Guarantee;
use journeyd::metrics::Metrics;
use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_types::time;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A message to produce: key (the customer id) and value (the Avro touchpoint).
pub type Payload = (String, Vec<u8>);

/// N touchpoints of the mix, Avro-encoded, with times in the last ten minutes.
pub fn touchpoints(n: usize) -> anyhow::Result<Vec<Payload>> {
    let engine = workload::engine_for(&workload::example_journeys())?;
    let now = journeyd::clock::wall_now();
    let span = 10 * time::MINUTE;
    Ok(
        workload::events_in_zone(&engine, n, now - span, span, &workload::noon_zone(now))
            .into_iter()
            .map(|e| {
                let bytes = encode_touchpoint(&e, Framing::SingleObject);
                (e.customer_id, bytes)
            })
            .collect(),
    )
}

/// Counts the messages Kafka did not acknowledge.
#[derive(Debug, Default)]
struct Failures(AtomicU64);

impl rdkafka::ClientContext for Failures {}

impl rdkafka::producer::ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces every payload to `topic` and waits until all are acknowledged.
pub fn produce_all(bootstrap: &str, topic: &str, payloads: &[Payload]) -> anyhow::Result<()> {
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Failures::default())?;
    for (key, value) in payloads {
        send_waiting(&producer, topic, key, value)?;
    }
    producer.flush(Duration::from_secs(300))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} messages to {topic} were not acknowledged",
        payloads.len()
    );
    Ok(())
}

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Messages per second, from the end of the first batch to the end of the last.
    pub eps: f64,
    /// Seconds from start to the end of the first batch (group join, first fetch).
    pub startup: f64,
    /// Messages produced by the loop (actions for the service, copies for the copy).
    pub produced: u64,
    /// Messages processed.
    pub done: u64,
    /// Batches, and the seconds they spent in the service's stages (process, produce, write),
    /// from `journeyd_batch_seconds`; all zero for the copy.
    pub batches: u64,
    /// Seconds in each of [`STAGES`].
    pub stages: [f64; STAGES.len()],
    /// Seconds from start to the end of the last batch.
    pub wall: f64,
    /// Changelog records produced (0 without the changelog).
    pub changelog: u64,
}

fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n as u64 / 2)
}

fn rate(n: u64, first: Option<(Instant, u64)>, end: Instant, start: Instant) -> f64 {
    match first {
        Some((t, at)) if n > at && end > t => (n - at) as f64 / (end - t).as_secs_f64(),
        _ => n as f64 / (end - start).as_secs_f64(),
    }
}

/// The service over `payloads` (produced to its input topic first), with `in_flight` batches
/// on their way to Kafka at most.
pub async fn service_run(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
    in_flight: usize,
) -> anyhow::Result<Run> {
    service_run_logged(
        cluster,
        prefix,
        payloads,
        in_flight,
        false,
        Guarantee::AtLeastOnce,
    )
    .await
}

/// [`service_run`], with the changelog on when `changelog`, under `guarantee`.
pub async fn service_run_logged(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
    in_flight: usize,
    changelog: bool,
    guarantee: Guarantee,
) -> anyhow::Result<Run> {
    // Every message is in before the service starts, so that producing never limits it.
    let bootstrap = cluster.bootstrap();
    let (service, _) =
        Service::start_logged(cluster, prefix, in_flight, changelog, guarantee, |config| {
            let topic = &config.inputs[0].topic;
            tokio::task::block_in_place(|| produce_all(&bootstrap, topic, payloads))
        })?;
    let n = payloads.len() as u64;
    let start = Instant::now();
    let deadline = start + deadline_for(payloads.len());
    let mut first = None;
    let mut done = 0;
    while done < n && Instant::now() < deadline {
        done = service.consumed();
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = Instant::now();
    let stage = |name: &str| {
        let h = service
            .shared
            .metrics
            .batch_seconds
            .with_label_values(&[name]);
        (h.get_sample_sum(), h.get_sample_count())
    };
    let batches = stage("process").1;
    let stages = STAGES.map(|s| stage(s).0);
    let produced = Metrics::total(&service.shared.metrics.actions);
    let changelog = service.shared.metrics.changelog_records.get();
    let rejected = Metrics::total(&service.shared.metrics.events_rejected);
    service.stop().await?;
    anyhow::ensure!(
        done >= n,
        "the service consumed {done} of {n} events in {:.0} s",
        (end - start).as_secs_f64()
    );
    anyhow::ensure!(
        rejected == 0,
        "the service dead-lettered {rejected} of the events"
    );
    Ok(Run {
        eps: rate(n, first, end, start),
        startup: first.map_or(0.0, |(t, _)| (t - start).as_secs_f64()),
        produced,
        done,
        batches,
        stages,
        wall: (end - start).as_secs_f64(),
        changelog,
    })
}

/// The plain copy over `payloads`: consume, produce one for one, wait for the acks, commit.
pub async fn copy_run(
    cluster: &dyn Cluster,
    prefix: &str,
    payloads: &[Payload],
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let (config, input, output) = copy_topics(cluster, prefix, dir.path())?;
    // Every message is in before the copy starts, so that producing never limits it.
    let bootstrap = cluster.bootstrap();
    tokio::task::block_in_place(|| produce_all(&bootstrap, &input, payloads))?;
    let (consumer, producer) = copy_clients(&config)?;
    let n = payloads.len() as u64;
    let start = Instant::now();
    let deadline = start + deadline_for(payloads.len());
    let (mut done, mut produced, mut first) = (0u64, 0u64, None);
    while done < n && Instant::now() < deadline {
        let msgs = collect(&consumer, &config).await;
        if msgs.is_empty() {
            continue;
        }
        produced += copy_batch(&consumer, &producer, &output, &msgs, |_| true).await?;
        done += msgs.len() as u64;
        if first.is_none() {
            first = Some((Instant::now(), done));
        }
    }
    let end = Instant::now();
    drop(consumer);
    drop(producer);
    anyhow::ensure!(done >= n, "the copy consumed {done} of {n} messages");
    Ok(Run {
        eps: rate(n, first, end, start),
        startup: first.map_or(0.0, |(t, _)| (t - start).as_secs_f64()),
        produced,
        done,
        batches: 0,
        stages: [0.0; STAGES.len()],
        wall: (end - start).as_secs_f64(),
        changelog: 0,
    })
}

/// The throughput rows of one cluster kind (with a row for `exactly_once` when the broker has
/// `transactions`). Returns the rows and the service's rate.
pub async fn throughput(
    kind: &str,
    new_cluster: &ClusterFactory,
    n: usize,
    transactions: bool,
) -> anyhow::Result<(Vec<Row>, f64)> {
    let payloads = touchpoints(n)?;
    let bytes = payloads
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>();
    let copy = {
        let cluster = new_cluster()?;
        copy_run(cluster.as_ref(), "c.", &payloads).await?
    };
    let svc = {
        let cluster = new_cluster()?;
        service_run(cluster.as_ref(), "s.", &payloads, default_in_flight()).await?
    };
    let logged = {
        let cluster = new_cluster()?;
        service_run_logged(
            cluster.as_ref(),
            "l.",
            &payloads,
            default_in_flight(),
            true,
            Guarantee::AtLeastOnce,
        )
        .await?
    };
    let transacted = if transactions {
        let cluster = new_cluster()?;
        Some(
            service_run_logged(
                cluster.as_ref(),
                "x.",
                &payloads,
                1,
                true,
                Guarantee::ExactlyOnce,
            )
            .await?,
        )
    } else {
        None
    };
    let ratio = svc.eps / copy.eps;
    let logged_ratio = logged.eps / copy.eps;
    let rows = vec![
        Row {
            name: format!(
                "end to end, {kind}: touchpoints/s in, actions out ({} events, {:.0} B each; {} actions)",
                thousands(n as f64),
                bytes as f64 / n.max(1) as f64,
                thousands(svc.produced as f64)
            ),
            measured: thousands(svc.eps),
            limit: format!(
                "plain rdkafka consume-and-produce copy, same settings and batching: {} msg/s",
                thousands(copy.eps)
            ),
            ratio: percent(ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(ratio >= 0.5),
        },
        Row {
            name: format!(
                "end to end, {kind}, with the changelog (at least once): touchpoints/s ({} changelog records)",
                thousands(logged.changelog as f64)
            ),
            measured: thousands(logged.eps),
            limit: format!("the same copy: {} msg/s", thousands(copy.eps)),
            ratio: percent(logged_ratio),
            target: "≥ 50%".into(),
            verdict: Verdict::of(logged_ratio >= 0.5),
        },
    ];
    let mut rows = rows;
    if let Some(x) = transacted {
        let ratio = x.eps / copy.eps;
        rows.push(Row {
            name: format!(
                "end to end, {kind}, with the changelog (exactly once: a transaction per batch): touchpoints/s ({} batches)",
                thousands(x.batches as f64)
            ),
            measured: thousands(x.eps),
            limit: format!("the same copy: {} msg/s", thousands(copy.eps)),
            ratio: percent(ratio),
            target: "≥ 35%".into(),
            verdict: Verdict::of(ratio >= 0.35),
        });
    }
    rows.extend([
        Row::info(
            format!("end to end, {kind}: seconds to the first batch (group join), service / copy"),
            format!("{:.2} / {:.2}", svc.startup, copy.startup),
        ),
        Row::info(
            format!(
                "end to end, {kind}: the service's ms per batch ({} batches): {STAGES_LINE}",
                thousands(svc.batches as f64)
            ),
            {
                let per = |s: f64| 1000.0 * s / svc.batches.max(1) as f64;
                // The clock ran from the end of the first batch: batches - 1 batches.
                let batch = 1000.0 * (svc.wall - svc.startup) / (svc.batches.max(2) - 1) as f64;
                stages_figures(batch, svc.stages.map(per))
            },
        ),
    ]);
    Ok((rows, svc.eps))
}

/// The round trip of the far broker (`far_broker`).
pub const FAR_ROUND_TRIP: Duration = Duration::from_millis(10);

/// The throughput row of a broker [`FAR_ROUND_TRIP`] away (the mock cluster, delayed): the
/// service with 1, 2 and 3 batches in flight, against the copy.
pub async fn far_broker(n: usize) -> anyhow::Result<Vec<Row>> {
    let payloads = touchpoints(n)?;
    let copy = copy_run(&Mock::far(FAR_ROUND_TRIP)?, "c.", &payloads).await?;
    let mut rates = Vec::new();
    for in_flight in 1..=3 {
        let run = service_run(&Mock::far(FAR_ROUND_TRIP)?, "s.", &payloads, in_flight).await?;
        rates.push(run.eps);
    }
    let ms = FAR_ROUND_TRIP.as_millis();
    Ok(vec![Row::info(
        format!(
            "end to end, mock cluster answering {ms} ms late: touchpoints/s with 1 / 2 / 3 \
             batches in flight (processing.batches_in_flight), and the copy ({} events)",
            thousands(n as f64)
        ),
        format!(
            "{} / {} / {}; copy {}",
            thousands(rates[0]),
            thousands(rates[1]),
            thousands(rates[2]),
            thousands(copy.eps)
        ),
    )])
}
