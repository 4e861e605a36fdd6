//! The latency rows of row 3: events produced at a steady rate, every tenth a probe answered
//! at once with an in-app send; per probe, from the produce call to the arrival of its action
//! at a consumer of the action topics. Their limit is the plain copy of the throughput rows
//! ([`crate::kafka_row`]), running live at the same rate and forwarding only the probes, timed
//! to the arrival of their copies: the same producer, broker, fetches, batching and
//! acknowledgements, without the service's work.

use crate::support::kafka::{
    collect, copy_batch, copy_clients, copy_topics, default_in_flight, send_waiting, Cluster,
    Service, FETCH_WAIT_MS,
};
use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd::app;
use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_types::time;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A latency probe or warm-up probe (by key): what the live copy forwards.
fn is_probe(m: &OwnedMessage) -> bool {
    m.key()
        .is_some_and(|k| k.starts_with(b"lat") || k.starts_with(b"warm"))
}

/// The plain copy of the throughput rows, running until stopped: what the latency rows measure
/// the service against. It forwards only the probes (the service answers about one event in
/// eight, the probes among them), so it produces less than the service, not more.
struct LiveCopy {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl LiveCopy {
    /// Creates its topics (input with 4 partitions, as the service's; the output with 1) and
    /// starts copying from the input's start. Returns it, the input topic and the output topic.
    fn start(cluster: &dyn Cluster, prefix: &str) -> anyhow::Result<(LiveCopy, String, String)> {
        let dir = tempfile::tempdir()?;
        let (config, input, output) = copy_topics(cluster, prefix, dir.path())?;
        let (consumer, producer) = copy_clients(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (stop, output) = (stop.clone(), output.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let msgs = collect(&consumer, &config).await;
                    if !msgs.is_empty() {
                        copy_batch(&consumer, &producer, &output, &msgs, is_probe).await?;
                    }
                }
                Ok(())
            })
        };
        Ok((
            LiveCopy {
                stop,
                task,
                _dir: dir,
            },
            input,
            output,
        ))
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Probes whose action arrived.
    pub received: usize,
    /// Probes sent.
    pub sent: usize,
    /// The rate reached, events per second.
    pub rate: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Every tenth event is a probe: `card_blocked` for a customer of its own, answered at once with
/// an in-app send. The others are the mix.
pub const PROBE_EVERY: usize = 10;

/// What a latency run measures: the service, or the plain copy (its limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The service: a probe's time ends when its first action arrives.
    Service,
    /// The plain consume-and-produce copy of the throughput rows, with the service's clients
    /// and batching: a probe's time ends when its copy arrives.
    Copy,
}

/// The subject running, and where a probe's answer arrives.
enum Running {
    Service(Service),
    Copy(LiveCopy),
}

/// Produces at `rate` events/s for `secs` seconds to a running service (or copy) and measures,
/// per probe, the time from the produce call to the arrival of its first action (or its copy)
/// at a consumer of the output topics (which is after Kafka acknowledged it to the service).
pub async fn latency(
    cluster: &dyn Cluster,
    subject: Subject,
    prefix: &str,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Latency> {
    let (running, input, outputs) = match subject {
        Subject::Service => {
            let (service, config) =
                Service::start(cluster, prefix, default_in_flight(), |_| Ok(()))?;
            let outputs: Vec<String> = app::channels(&service.shared.engine())
                .iter()
                .map(|c| config.actions_topic(c))
                .collect();
            (
                Running::Service(service),
                config.inputs[0].topic.clone(),
                outputs,
            )
        }
        Subject::Copy => {
            let (copy, input, output) = LiveCopy::start(cluster, prefix)?;
            (Running::Copy(copy), input, vec![output])
        }
    };
    let total = ((rate * secs) as usize).max(PROBE_EVERY * 10);
    let bootstrap = cluster.bootstrap();
    let engine = workload::engine_for(&workload::example_journeys())?;
    let now = journeyd::clock::wall_now();
    // Built before the clock starts: the messages, keys and probe numbers.
    let zone = workload::noon_zone(now);
    let mix = workload::events_in_zone(&engine, total, now - time::MINUTE, time::MINUTE, &zone);
    let mut messages: Vec<(Option<usize>, String, Vec<u8>)> = Vec::with_capacity(total);
    for (i, e) in mix.into_iter().enumerate() {
        let (probe, e) = if i.is_multiple_of(PROBE_EVERY) {
            let n = i / PROBE_EVERY;
            let p = workload::probe(format!("lat{n:08}"), format!("lat{n}"), now);
            (Some(n), p)
        } else {
            (None, e)
        };
        messages.push((
            probe,
            e.customer_id.clone(),
            encode_touchpoint(&e, Framing::SingleObject),
        ));
    }
    let probes = messages.iter().filter(|m| m.0.is_some()).count();

    // The consumer of every output topic, from the start.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{prefix}watcher"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in &outputs {
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let t0 = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..probes).map(|_| AtomicU64::new(0)).collect());
    let arrived: Arc<Vec<AtomicU64>> = Arc::new((0..probes).map(|_| AtomicU64::new(0)).collect());
    let warm = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (arrived, warm, received, stop) = (
            arrived.clone(),
            warm.clone(),
            received.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let at = t0.elapsed().as_nanos() as u64;
                let Some(key) = m.key() else { continue };
                if key.starts_with(b"warm") {
                    warm.store(true, Ordering::SeqCst);
                } else if let Some(n) = key
                    .strip_prefix(b"lat")
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.parse::<usize>().ok())
                {
                    if let Some(slot) = arrived.get(n) {
                        if slot
                            .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                        {
                            received.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
    };

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        // An upstream system's producer batches a little: librdkafka's default linger, 5 ms.
        // Shorter, the message sets get so small that the mock cluster (one message set per
        // partition per fetch) falls behind at low rates, and tansu spends its CPU per request.
        // The latency counts from the produce call, so this wait is in the figures.
        .set("linger.ms", "5")
        .create()?;
    // Warm up: until the service (or copy) answers a probe (the group has been joined).
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    let mut w = 0;
    while !warm.load(Ordering::SeqCst) {
        anyhow::ensure!(
            Instant::now() < warm_deadline,
            "the {subject:?} never answered a warm-up probe"
        );
        let e = workload::probe(
            format!("warm{w}"),
            format!("warm{w}"),
            journeyd::clock::wall_now(),
        );
        let bytes = encode_touchpoint(&e, Framing::SingleObject);
        let _ = producer.send(
            BaseRecord::<str, [u8]>::to(&input)
                .key(&e.customer_id)
                .payload(&bytes),
        );
        producer.poll(Duration::ZERO);
        w += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let paced = {
        let sent = sent.clone();
        std::thread::spawn(move || -> anyhow::Result<f64> {
            let start = Instant::now();
            for (i, (probe, key, value)) in messages.iter().enumerate() {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if let Some(n) = probe {
                    sent[*n].store(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
                }
                send_waiting(&producer, &input, key, value)?;
            }
            let reached = messages.len() as f64 / start.elapsed().as_secs_f64();
            producer.flush(Duration::from_secs(30))?;
            Ok(reached)
        })
    };
    let reached = tokio::task::spawn_blocking(move || paced.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let grace = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::SeqCst) < probes && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await?;
    match running {
        Running::Service(service) => service.stop().await?,
        Running::Copy(copy) => copy.stop().await?,
    }

    let mut ms: Vec<f64> = (0..probes)
        .filter_map(|n| {
            let (s, a) = (
                sent[n].load(Ordering::SeqCst),
                arrived[n].load(Ordering::SeqCst),
            );
            (s > 0 && a > 0).then(|| a.saturating_sub(s) as f64 / 1e6)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        p50: percentile(&ms, 0.50),
        p99: percentile(&ms, 0.99),
        p999: percentile(&ms, 0.999),
        received: ms.len(),
        sent: probes,
        rate: reached,
    })
}

/// A latency row's name: where it was measured, the rate asked and reached, the probes.
fn latency_name(kind: &str, at: &str, asked: f64, l: &Latency, secs: f64) -> String {
    format!(
        "end to end, {kind}: ms from event to acknowledged action at {at} ({} events/s asked, {} reached, {:.0} s; {} of {} probes answered), p50 / p99 / p999",
        thousands(asked),
        thousands(l.rate),
        secs,
        thousands(l.received as f64),
        thousands(l.sent as f64)
    )
}

/// A latency row's figures: p50 / p99 / p999 in ms.
fn latency_measured(l: &Latency) -> String {
    format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.p999)
}

/// The latency row of one cluster kind, at half of `max_eps`.
pub async fn latency_rows(
    kind: &str,
    cluster: &dyn Cluster,
    max_eps: f64,
    secs: f64,
) -> anyhow::Result<Vec<Row>> {
    let target_rate = (max_eps / 2.0).max(100.0);
    let l = latency(cluster, Subject::Service, "l.", target_rate, secs).await?;
    // The limit: the plain copy at the same rate, through the same broker, clients and
    // batching, probes timed the same way.
    let copy = latency(cluster, Subject::Copy, "lc.", target_rate, secs).await;
    // The same at a tenth of the maximum: where the service's own latency shows when the
    // harness's producer does not starve it of the two cores.
    let low_rate = (max_eps / 10.0).max(100.0);
    let low = latency(cluster, Subject::Service, "l10.", low_rate, secs).await?;
    let low_row = Row {
        name: latency_name(kind, "a tenth of the maximum", low_rate, &low, secs),
        measured: latency_measured(&low),
        limit: "–".into(),
        ratio: "–".into(),
        target: "–".into(),
        verdict: Verdict::Info,
    };
    Ok(vec![
        Row {
            name: latency_name(kind, "half the maximum", target_rate, &l, secs),
            measured: latency_measured(&l),
            limit: match &copy {
                Ok(copy) => format!(
                    "plain consume-and-produce copy of the probes at the same rate ({} reached; {} of {} probes copied): {}",
                    thousands(copy.rate),
                    thousands(copy.received as f64),
                    thousands(copy.sent as f64),
                    latency_measured(copy)
                ),
                Err(e) => format!("the copy could not be measured: {e:#}"),
            },
            ratio: copy.as_ref().map_or_else(
                |_| "–".into(),
                |copy| format!("p99 at {} of the copy's", percent(l.p99 / copy.p99)),
            ),
            target: "p99 < 20 ms".into(),
            verdict: Verdict::of(l.p99 < 20.0 && l.received == l.sent),
        },
        low_row,
    ])
}
