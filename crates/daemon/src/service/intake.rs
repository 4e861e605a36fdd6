//! The intake: collecting a batch of messages from the consumer and decoding them into work
//! for the engine, or dead letters.

use super::clients::Context;
use super::Shared;
use crate::config::{Config, Encoding};
use crate::dead_letters::DeadLetter;
use crate::processor::{Position, Work};
use futures::FutureExt as _;
use journeyd_codec::{Format, TouchpointDecoder};
use journeyd_store::WriteSet;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One touchpoint decoder per input topic (each topic has its own format).
#[derive(Debug)]
pub(super) struct Decoders {
    pub(super) by_topic: Vec<(std::sync::Arc<str>, TouchpointDecoder)>,
    pub(super) fallback: TouchpointDecoder,
}

impl Decoders {
    pub(super) fn new(config: &Config) -> Decoders {
        // No payload over max_event_bytes reaches a decoder (see `prepare`).
        let limit = journeyd_codec::limit_avro_allocations(config.processing.max_event_bytes);
        if limit != config.processing.max_event_bytes {
            tracing::warn!(
                limit,
                max_event_bytes = config.processing.max_event_bytes,
                "apache-avro's allocation limit was set before (one per process): datums of older touchpoint schemas are read under it."
            );
        }
        let registry = config.schema_registry.as_ref().map(|r| r.url.clone());
        let make = |encoding: Encoding| match (encoding, &registry) {
            (Encoding::Avro, Some(url)) => TouchpointDecoder::with_registry(url.clone()),
            (Encoding::Avro, None) => TouchpointDecoder::new(Format::Avro),
            (Encoding::Json, _) => TouchpointDecoder::new(Format::Json),
        };
        Decoders {
            by_topic: config
                .inputs
                .iter()
                .map(|i| (i.topic.as_str().into(), make(i.format)))
                .collect(),
            fallback: make(Encoding::Avro),
        }
    }

    fn for_topic(&self, topic: &str) -> &TouchpointDecoder {
        self.by_topic
            .iter()
            .find(|(t, _)| &**t == topic)
            .map_or(&self.fallback, |(_, d)| d)
    }

    /// The topic's name, shared.
    fn name(&self, topic: &str) -> std::sync::Arc<str> {
        self.by_topic
            .iter()
            .find(|(t, _)| &**t == topic)
            .map_or_else(|| topic.into(), |(t, _)| t.clone())
    }
}

/// A consumed batch, decoded.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    pub(super) work: Vec<Work>,
    /// The message of each event of `work`, in the same order (the events come first): a
    /// quarantined customer's go to the dead-letter topic.
    pub(super) sources: Vec<Option<OwnedMessage>>,
    pub(super) consumed: Vec<Position>,
    pub(super) dead: Vec<DeadLetter>,
    /// Kafka timestamps of the events (for the latency histogram).
    pub(super) timestamps: Vec<i64>,
    pub(super) topics: Vec<String>,
    pub(super) timers: usize,
    /// The read of due timers came back full: more may be due.
    pub(super) backlogged: bool,
    /// The states of the due timers' customers, read beside the last batch and patched with
    /// its write (see `Prefetched`): read through, not read again.
    pub(super) states: Option<WriteSet>,
}

impl Prepared {
    /// Sends a message to the dead-letter topic, with the reason and what is wrong.
    fn reject(&mut self, message: OwnedMessage, reason: &'static str, error: String) {
        self.dead.push(DeadLetter {
            message,
            reason,
            error,
        });
    }
}

/// Collects one batch of messages: waits up to `first_wait` for the first, then takes more
/// while they keep coming (a gap of [`BATCH_GAP`] closes the batch), for at most
/// `processing.batch_linger_ms` and `processing.batch_max_messages`. Returns them and whether
/// the consumer was idle (nothing came within `first_wait`).
///
/// Why a gap closes the batch: the loop runs a batch's stages one after another, so time spent
/// waiting for a batch to fill is time nothing else happens. Under load messages arrive while
/// the previous batch is processed and the next batch fills at once; when they trickle in,
/// a batch goes out as soon as the stream pauses.
pub async fn collect(
    consumer: &StreamConsumer<Context>,
    config: &Config,
    first_wait: Duration,
) -> (Vec<OwnedMessage>, bool) {
    let mut msgs = Vec::new();
    // No wait: take a message only if one is there (a zero timeout still waits for a tick of
    // the runtime's timer, a millisecond or more).
    let first = if first_wait.is_zero() {
        consumer.recv().now_or_never().ok_or(())
    } else {
        tokio::time::timeout(first_wait, consumer.recv())
            .await
            .map_err(|_| ())
    };
    match first {
        Err(_) => return (msgs, true),
        Ok(Err(error)) => {
            tracing::warn!(%error, "Kafka consumer error.");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return (msgs, false);
        }
        Ok(Ok(m)) => msgs.push(m.detach()),
    }
    let end = Instant::now() + Duration::from_millis(config.processing.batch_linger_ms);
    while msgs.len() < config.processing.batch_max_messages {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(BATCH_GAP), consumer.recv()).await {
            Ok(Ok(m)) => msgs.push(m.detach()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "Kafka consumer error.");
                break;
            }
            Err(_) => break,
        }
    }
    (msgs, false)
}

/// Logs (debug, target `journeyd::intake`) the offsets a batch read from each topic partition:
/// first, last and how many. A post-mortem of a crash test reads them for gaps and repeats.
pub fn trace(msgs: &[OwnedMessage], restoring: bool) {
    if msgs.is_empty() || !tracing::enabled!(target: "journeyd::intake", tracing::Level::DEBUG) {
        return;
    }
    let mut spans: std::collections::BTreeMap<(&str, i32), (i64, i64, usize)> = Default::default();
    for m in msgs {
        let e = spans
            .entry((m.topic(), m.partition()))
            .or_insert((m.offset(), m.offset(), 0));
        e.0 = e.0.min(m.offset());
        e.1 = e.1.max(m.offset());
        e.2 += 1;
    }
    tracing::debug!(target: "journeyd::intake", ?spans, restoring, "Collected: (first, last, count) per partition.");
}

/// No message for this long closes a batch (see [`collect`]).
pub const BATCH_GAP: Duration = Duration::from_millis(2);

/// Decodes messages into work and dead letters. Transient decode failures (the schema registry
/// is unreachable) are retried here until they pass or the service stops.
pub(super) fn prepare(
    shared: &Shared,
    decoders: &Decoders,
    msgs: Vec<OwnedMessage>,
    shutdown: &CancellationToken,
) -> Option<Prepared> {
    let config = &shared.config;
    let mut p = Prepared::default();
    let future_limit = shared.clock.now() + (config.processing.max_future_skew_secs as i64) * 1000;
    // A partition being restored is read again from its restored position: anything of it
    // that came (a pause that did not hold) is left unconsumed.
    let restoring = shared.partitions.any_restoring();
    for m in msgs {
        if restoring && !shared.partitions.owns(m.partition()) {
            continue;
        }
        p.consumed.push(Position {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        });
        p.topics.push(m.topic().to_owned());
        let payload = m.payload().unwrap_or_default();
        if payload.len() > config.processing.max_event_bytes {
            let error = format!(
                "{} bytes is over the limit of {} (processing.max_event_bytes)",
                payload.len(),
                config.processing.max_event_bytes
            );
            p.reject(m, "oversized", error);
            continue;
        }
        let decoder = decoders.for_topic(m.topic());
        let decoded = loop {
            match decoder.decode(payload) {
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "Decoding needs the schema registry, which is unavailable; retrying.");
                    if shutdown.is_cancelled() {
                        return None;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        match decoded {
            Err(e) => p.reject(m, e.reason(), e.to_string()),
            Ok(event) => {
                if let Some(key) = m.key() {
                    if key != event.customer_id.as_bytes() {
                        let error = format!(
                            "the message key `{}` is not the event's customer_id `{}`",
                            String::from_utf8_lossy(key),
                            event.customer_id
                        );
                        p.reject(m, "key_mismatch", error);
                        continue;
                    }
                }
                if event.occurred_at > future_limit {
                    let error = format!(
                        "occurred_at {} is more than {} s ahead of the processing clock",
                        journeyd_types::time::format_rfc3339(event.occurred_at),
                        config.processing.max_future_skew_secs
                    );
                    p.reject(m, "occurred_at_in_future", error);
                    continue;
                }
                if shared
                    .guards
                    .applied(&event.customer_id, m.topic(), m.partition(), m.offset())
                {
                    // A restored state holds it already, and its actions went out.
                    shared.metrics.events_already_applied.inc();
                    continue;
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    p.timestamps.push(ts);
                }
                p.work.push(Work::Event {
                    event,
                    partition: m.partition(),
                    read_at: Some((decoders.name(m.topic()), m.offset())),
                });
                p.sources.push(Some(m));
            }
        }
    }
    Some(p)
}
