//! Producing one batch's messages and waiting for Kafka's answer to each.
//!
//! A message Kafka refuses for a reason that may pass (the broker is away, a timeout) fails
//! the batch, which is produced again (see [`crate::sending`]). One it refuses for good (see
//! [`Refusal`]) does not hold the batch: an action goes to the action dead-letter topic, a
//! dead letter that was too large for its topic goes again as a small record, and the batch
//! lands. A fatal producer error stops the service.

use crate::config::Config;
use crate::dead_letters::{self, DeadLetter, Refusal};
use crate::metrics::Metrics;
use journeyd_codec::ActionEncoder;
use journeyd_types::Action;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What a batch sends.
#[derive(Debug)]
pub struct Sent<T> {
    /// The actions, in the order the engine emitted them.
    pub actions: Vec<Action>,
    /// The dead letters.
    pub dead: Vec<DeadLetter>,
    /// What the batch hands on once Kafka has it all (its write, what to count).
    pub then: T,
}

/// Why a batch did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It may pass: the batch is produced again.
    Retry(String),
    /// The producer cannot go on: the service stops with this error.
    Fatal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(e) => write!(f, "{e}"),
            Failure::Fatal(e) => write!(f, "the producer cannot go on: {e}"),
        }
    }
}

/// Produces batches: the producer, the encoder, and where messages go.
#[derive(Clone)]
pub struct Sender {
    /// The producer (idempotent unless configured otherwise).
    pub producer: FutureProducer,
    /// Encodes actions.
    pub encoder: Arc<ActionEncoder>,
    /// The configuration (topic names).
    pub config: Arc<Config>,
    /// The metrics (retries).
    pub metrics: Metrics,
    /// Set when the service stops: waits for room in the queue and retries end.
    pub shutdown: CancellationToken,
    /// Actions Kafka refused for good, by id: produced again (a replay), they go to the action
    /// dead-letter topic at once. In a transaction a refused message fails the transaction,
    /// so its replay must not send it to Kafka again.
    pub refused_before: RefusedBefore,
}

/// Actions Kafka refused for good, by id, with the reason and the error (at most
/// [`RefusedBefore::MOST`]; refusals are rare).
#[derive(Debug, Clone, Default)]
pub struct RefusedBefore(Arc<std::sync::Mutex<HashMap<String, (&'static str, String)>>>);

impl RefusedBefore {
    /// The most refusals remembered; past it, the oldest are forgotten all at once.
    pub const MOST: usize = 10_000;

    fn get(&self, id: &str) -> Option<(&'static str, String)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn remember(&self, id: &str, reason: &'static str, error: &str) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= Self::MOST {
            m.clear();
        }
        m.insert(id.to_owned(), (reason, error.to_owned()));
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// How long a batch's messages wait for room in the producer's queue before the batch fails
/// (and is produced again).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of a batch's messages a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Action(usize),
    Dead(usize),
}

/// A message of a batch that Kafka or the encoder refused for good.
#[derive(Debug)]
struct Refused {
    origin: Origin,
    reason: &'static str,
    error: String,
    /// The size of the refused payload, when it was encoded.
    bytes: Option<usize>,
}

/// A batch's messages, queued: one future per message, and those refused before queueing.
struct Queued {
    /// Each message's delivery, with what it is and its encoded size (for an action).
    deliveries: Vec<(Origin, Option<usize>, DeliveryFuture)>,
    refused: Vec<Refused>,
}

impl Sender {
    /// Queues the batch's messages, after `after` resolves (the previous batch's were queued,
    /// or could not be). Returns a future per message, which resolves when Kafka acknowledges it
    /// or the producer gives up, and the messages refused for good before they were queued.
    /// Fails at the first message that cannot be queued for a reason that may pass.
    async fn queue<T>(
        &self,
        sent: &Sent<T>,
        after: Option<oneshot::Receiver<()>>,
    ) -> Result<Queued, Failure> {
        let config = &self.config;
        let mut topics: HashMap<&str, String> = HashMap::new();
        // Encoded while the previous batch may still be queueing.
        let payloads: Vec<Result<Vec<u8>, Refusal>> = sent
            .actions
            .iter()
            .map(|a| {
                let topic = topics
                    .entry(a.channel.as_str())
                    .or_insert_with(|| config.actions_topic(&a.channel));
                self.encoder
                    .encode(a, topic)
                    .map_err(|e| Refusal::of_encoding(&e))
            })
            .collect();
        if let Some(after) = after {
            // Even when this batch cannot go: the next one waits for this one, so it must not
            // queue before the previous one has. (An error only says the previous batch's
            // queueing failed: it is produced again, and every batch after it.)
            let _ = after.await;
        }
        // One deadline for the whole batch: a message that cannot be queued by then fails it.
        let queued_by = Instant::now() + QUEUE_TIMEOUT;
        let mut q = Queued {
            deliveries: Vec::with_capacity(payloads.len() + sent.dead.len()),
            refused: Vec::new(),
        };
        for (i, (a, bytes)) in sent.actions.iter().zip(&payloads).enumerate() {
            let origin = Origin::Action(i);
            if let Some((reason, error)) = self.refused_before.get(&a.action_id) {
                q.refuse(origin, Refusal::Permanent { reason, error }, None)?;
                continue;
            }
            let bytes = match bytes {
                Ok(b) => b,
                Err(refusal) => {
                    q.refuse(origin, refusal.clone(), None)?;
                    continue;
                }
            };
            let headers = action_headers(&a.action_id, a.kind.as_str());
            let record = FutureRecord::to(&topics[a.channel.as_str()])
                .key(a.customer_id.as_bytes())
                .payload(bytes.as_slice())
                .headers(headers);
            match enqueue(&self.producer, record, queued_by, &self.shutdown).await {
                Ok(d) => q.deliveries.push((origin, Some(bytes.len()), d)),
                Err(e) => q.refuse(origin, Refusal::of(&e), Some(bytes.len()))?,
            }
        }
        let max = config.outputs.dead_letter_max_bytes;
        for (i, d) in sent.dead.iter().enumerate() {
            let r = dead_letters::record(d, max, None);
            let mut record = FutureRecord::<[u8], [u8]>::to(&config.outputs.dead_letter_topic)
                .payload(r.payload)
                .headers(r.headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            let origin = Origin::Dead(i);
            match enqueue(&self.producer, record, queued_by, &self.shutdown).await {
                Ok(d) => q.deliveries.push((origin, None, d)),
                Err(e) => q.refuse(origin, Refusal::of(&e), None)?,
            }
        }
        Ok(q)
    }

    /// Produces one batch: queues it after `after`, waits for Kafka's answers, and sends what
    /// Kafka refused for good to the dead-letter topics. Ok once all of it is acknowledged.
    pub async fn deliver<T>(
        &self,
        sent: &Sent<T>,
        after: Option<oneshot::Receiver<()>>,
        queued: oneshot::Sender<()>,
    ) -> Result<(), Failure> {
        let q = self.queue(sent, after).await?;
        let _ = queued.send(());
        // The crash tests wait for this line to kill a replica with a batch in flight.
        tracing::debug!(
            messages = q.deliveries.len(),
            "Batch queued to Kafka; it is written once Kafka acknowledges it."
        );
        let refused = self.acknowledged(q).await?;
        self.redirect(sent, refused).await
    }

    /// Produces batches' messages again, in their order: all queued, then every
    /// acknowledgement awaited, then what was refused for good sent to the dead-letter topics.
    /// Ok when Kafka acknowledged every one.
    pub async fn produce_again<'a, T: 'a>(
        &self,
        batches: impl Iterator<Item = &'a Sent<T>>,
    ) -> Result<(), Failure> {
        let mut queued = Vec::new();
        for sent in batches {
            let q = self.queue(sent, None).await?;
            queued.push((sent, q));
        }
        let mut refused = Vec::with_capacity(queued.len());
        for (sent, q) in queued {
            refused.push((sent, self.acknowledged(q).await?));
        }
        for (sent, r) in refused {
            self.redirect(sent, r).await?;
        }
        Ok(())
    }

    /// Waits for every delivery: each future awaited once, in order (a join of thousands of
    /// futures cost a tenth of the CPU while firing timers). Gives up [`STOP_GRACE`] after the
    /// service stops. Returns the messages refused for good.
    async fn acknowledged(&self, q: Queued) -> Result<Vec<Refused>, Failure> {
        let Queued {
            deliveries,
            mut refused,
        } = q;
        let mut failed: Vec<String> = Vec::new();
        let mut fatal = None;
        let gone = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::pin!(gone);
        for (origin, bytes, d) in deliveries {
            tokio::select! {
                delivered = d => match delivered {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => match Refusal::of(&e) {
                        Refusal::Transient(e) => failed.push(e),
                        Refusal::Permanent { reason, error } => {
                            refused.push(Refused { origin, reason, error, bytes });
                        }
                        Refusal::Fatal(e) => fatal = Some(e),
                    },
                    Err(_) => failed.push("the producer went away".to_owned()),
                },
                () = &mut gone => {
                    return Err(Failure::Retry(
                        "the service stopped before Kafka acknowledged the batch".to_owned(),
                    ));
                }
            }
        }
        if let Some(e) = fatal {
            return Err(Failure::Fatal(e));
        }
        match failed.first() {
            None => Ok(refused),
            Some(first) => Err(Failure::Retry(format!(
                "{} of the batch's messages were not acknowledged (first: {first})",
                failed.len()
            ))),
        }
    }

    /// Sends what Kafka refused for good to the dead-letter topics, and waits for them. One
    /// that is refused for good there too is lost: logged with what it was, and counted.
    async fn redirect<T>(&self, sent: &Sent<T>, refused: Vec<Refused>) -> Result<(), Failure> {
        if refused.is_empty() {
            return Ok(());
        }
        let config = &self.config;
        let queued_by = Instant::now() + QUEUE_TIMEOUT;
        let mut deliveries = Vec::with_capacity(refused.len());
        for r in &refused {
            let (kind, delivery) = match r.origin {
                Origin::Action(i) => {
                    let a = &sent.actions[i];
                    self.refused_before
                        .remember(&a.action_id, r.reason, &r.error);
                    let topic = config.actions_topic(&a.channel);
                    tracing::error!(action_id = a.action_id, customer = a.customer_id, topic, reason = r.reason, error = r.error, "Kafka refused an action for good; it goes to the action dead-letter topic.");
                    self.metrics
                        .actions_dead_lettered
                        .with_label_values(&[r.reason])
                        .inc();
                    let max = config.outputs.dead_letter_max_bytes;
                    let (value, vars_dropped) = dead_letters::action_dead_letter_value(a, max);
                    let mut headers = dead_letters::action_dead_letter_headers(
                        a, &topic, r.reason, &r.error, r.bytes,
                    );
                    if vars_dropped {
                        headers = headers.insert(Header {
                            key: "journeyd.dlq.vars_dropped",
                            value: Some(b"true".as_slice()),
                        });
                    }
                    let record = FutureRecord::to(&config.outputs.action_dead_letter_topic)
                        .key(a.customer_id.as_bytes())
                        .payload(value.as_slice())
                        .headers(headers);
                    let d = enqueue(&self.producer, record, queued_by, &self.shutdown).await;
                    ("action", d)
                }
                Origin::Dead(i) => {
                    let d = &sent.dead[i];
                    tracing::warn!(topic = config.outputs.dead_letter_topic, reason = r.reason, error = r.error, "Kafka refused a dead letter; sending a small one that says where the message is.");
                    let rec = dead_letters::record(
                        d,
                        dead_letters::FALLBACK_PAYLOAD_BYTES,
                        Some(&r.error),
                    );
                    let mut record =
                        FutureRecord::<[u8], [u8]>::to(&config.outputs.dead_letter_topic)
                            .payload(rec.payload)
                            .headers(rec.headers);
                    if let Some(k) = rec.key {
                        record = record.key(k);
                    }
                    let d = enqueue(&self.producer, record, queued_by, &self.shutdown).await;
                    ("dead_letter", d)
                }
            };
            deliveries.push((kind, r, delivery));
        }
        let mut failed = None;
        // As for the batch itself: given up STOP_GRACE after the service stops.
        let gone = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::pin!(gone);
        for (kind, r, delivery) in deliveries {
            let outcome = match delivery {
                Ok(d) => tokio::select! {
                    delivered = d => match delivered {
                        Ok(Ok(_)) => continue,
                        Ok(Err((e, _))) => Refusal::of(&e),
                        Err(_) => Refusal::Transient("the producer went away".to_owned()),
                    },
                    () = &mut gone => {
                        return Err(Failure::Retry(
                            "the service stopped before Kafka acknowledged the dead letters"
                                .to_owned(),
                        ));
                    }
                },
                Err(e) => Refusal::of(&e),
            };
            match outcome {
                Refusal::Permanent { reason, error } => {
                    self.metrics
                        .output_lost
                        .with_label_values(&[kind, reason])
                        .inc();
                    tracing::error!(kind, first_reason = r.reason, first_error = r.error, reason, %error, "Kafka refused the dead letter for good too: it is lost (the log line above names it).");
                }
                Refusal::Transient(e) => failed = Some(Failure::Retry(e)),
                Refusal::Fatal(e) => return Err(Failure::Fatal(e)),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Queued {
    /// Records a message refused before it was queued, or fails the batch when the refusal
    /// may pass.
    fn refuse(
        &mut self,
        origin: Origin,
        refusal: Refusal,
        bytes: Option<usize>,
    ) -> Result<(), Failure> {
        match refusal {
            Refusal::Permanent { reason, error } => {
                self.refused.push(Refused {
                    origin,
                    reason,
                    error,
                    bytes,
                });
                Ok(())
            }
            Refusal::Transient(e) => Err(Failure::Retry(format!(
                "a message of the batch could not be queued: {e}"
            ))),
            Refusal::Fatal(e) => Err(Failure::Fatal(e)),
        }
    }
}

/// How long acknowledgements are still awaited once the service stops: a clean stop lands the
/// batches on their way; a broker that is away does not hold the stop for longer (those
/// batches are not written, and run again after a restart).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Queues a message, waiting while the producer's queue is full, until `deadline` or the
/// service stops. The future it returns resolves when Kafka acknowledges the message or the
/// producer gives up.
pub async fn enqueue<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<DeliveryFuture, KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < deadline && !shutdown.is_cancelled() =>
            {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The headers of an action message: its id (what channel adapters de-duplicate on) and its
/// kind. (Public for the benchmark's raw loops, which produce as the service does.)
pub fn action_headers(action_id: &str, kind: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: "journeyd.action_id",
            value: Some(action_id.as_bytes()),
        })
        .insert(Header {
            key: "journeyd.kind",
            value: Some(kind.as_bytes()),
        })
}

/// Helpers for the tests of this module and of [`crate::sending`].
#[cfg(test)]
pub(crate) mod testing {
    use super::Sender;
    use crate::config::Config;
    use crate::delivery::Sent;
    use crate::metrics::Metrics;
    use journeyd_codec::{ActionEncoder, Format};
    use journeyd_types::Action;
    use journeyd_types::ActionKind;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::FutureProducer;
    use rdkafka::producer::FutureRecord;
    use rdkafka::{Offset, TopicPartitionList};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;

    pub const TOPIC: &str = "actions.email";

    pub fn action(id: &str) -> Action {
        Action {
            action_id: id.to_owned(),
            kind: ActionKind::Send,
            customer_id: "c1".to_owned(),
            journey: "j".to_owned(),
            journey_version: 1,
            step: "s".to_owned(),
            channel: "email".to_owned(),
            template: "t".to_owned(),
            vars: Default::default(),
            cancels: None,
            reason: None,
            created_at: 0,
            expires_at: None,
        }
    }

    pub fn batch(id: &'static str) -> Sent<&'static str> {
        Sent {
            actions: vec![action(id)],
            dead: Vec::new(),
            then: id,
        }
    }

    pub fn sender<C: rdkafka::ClientContext>(cluster: &MockCluster<'_, C>) -> Sender {
        sender_to(&cluster.bootstrap_servers(), "2000")
    }

    /// A sender to `bootstrap` whose messages give up after `message_timeout_ms`.
    pub fn sender_to(bootstrap: &str, message_timeout_ms: &str) -> Sender {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", message_timeout_ms)
            .create()
            .unwrap();
        Sender {
            producer,
            encoder: Arc::new(ActionEncoder::new(Format::Json)),
            config: Arc::new(Config::default()),
            metrics: Metrics::new().unwrap(),
            shutdown: CancellationToken::new(),
            refused_before: super::RefusedBefore::default(),
        }
    }

    /// The action ids in the topic, in order (reading on a while past `expected`).
    pub fn log<C: rdkafka::ClientContext>(
        cluster: &MockCluster<'_, C>,
        expected: usize,
    ) -> Vec<String> {
        records(cluster, TOPIC, expected)
            .into_iter()
            .map(|(headers, _)| headers["journeyd.action_id"].clone())
            .collect()
    }

    /// The records of `topic`: headers (as text) and payload, reading on a while past
    /// `expected` (more would be a failure too).
    pub fn records<C: rdkafka::ClientContext>(
        cluster: &MockCluster<'_, C>,
        topic: &str,
        expected: usize,
    ) -> Vec<(std::collections::BTreeMap<String, String>, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        let mut quiet_from = None;
        while Instant::now() < until {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    let v = x.value.unwrap_or_default();
                                    (x.key.to_owned(), String::from_utf8_lossy(v).into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((headers, m.payload().unwrap_or_default().to_vec()));
                }
                Some(Err(e)) => panic!("{e}"),
                None if out.len() >= expected => {
                    let q = *quiet_from.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
                None => {}
            }
        }
        out
    }

    /// A producer whose queue holds one message and whose broker is never reached.
    pub fn full_producer() -> FutureProducer {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("message.timeout.ms", "60000")
            .create()
            .unwrap();
        let first = FutureRecord::<[u8], [u8]>::to("t").payload(b"1");
        // Queued (its delivery future can go: the message stays in the queue).
        drop(producer.send_result(first).map_err(|(e, _)| e).unwrap());
        producer
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[tokio::test]
    async fn a_message_waits_for_room_until_the_deadline_or_the_stop() {
        let producer = full_producer();
        let record = || FutureRecord::<[u8], [u8]>::to("t").payload(b"2");
        let running = CancellationToken::new();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let err = enqueue(&producer, record(), deadline, &running)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        );
        assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
        // Stopping: it gives up at once, however far the deadline.
        let stopped = CancellationToken::new();
        stopped.cancel();
        let started = Instant::now();
        let far = started + Duration::from_secs(3600);
        assert!(enqueue(&producer, record(), far, &stopped).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it did not wait"
        );
    }

    use journeyd_types::ActionKind;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    const DLQ: &str = "actions.dlq";

    fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let cluster = MockCluster::new(1).unwrap();
        for t in [TOPIC, DLQ, "touchpoints.dlq"] {
            cluster.create_topic(t, 1, 1).unwrap();
        }
        cluster
    }

    async fn deliver(s: &Sender, sent: &Sent<&'static str>) -> Result<(), Failure> {
        let (queued, _) = oneshot::channel();
        s.deliver(sent, None, queued).await
    }

    fn big(id: &str) -> Action {
        let mut a = action(id);
        a.vars.insert("blob".into(), "x".repeat(1_200_000).into());
        a
    }

    #[tokio::test]
    async fn an_action_too_large_for_kafka_goes_to_the_action_dead_letter_topic_and_the_batch_lands(
    ) {
        let cluster = cluster();
        let s = sender(&cluster);
        let sent = Sent {
            actions: vec![action("a"), big("huge"), action("c")],
            dead: Vec::new(),
            then: "b1",
        };
        tokio::time::timeout(Duration::from_secs(30), deliver(&s, &sent))
            .await
            .expect("it does not retry forever")
            .unwrap();
        assert_eq!(log(&cluster, 2), ["a", "c"]);
        let dead = records(&cluster, DLQ, 1);
        assert_eq!(dead.len(), 1);
        let (h, value) = &dead[0];
        assert_eq!(h["journeyd.action_id"], "huge");
        assert_eq!(h["journeyd.kind"], "send");
        assert_eq!(h["journeyd.dlq.reason"], "too_large");
        assert_eq!(h["journeyd.dlq.topic"], TOPIC);
        assert_eq!(h["journeyd.dlq.vars_dropped"], "true");
        assert!(h["journeyd.dlq.original_bytes"].parse::<usize>().unwrap() > 1_200_000);
        let back: Action = serde_json::from_slice(value).unwrap();
        assert_eq!(back.action_id, "huge");
        assert!(
            back.vars.is_empty(),
            "the vars that made it too large are left out"
        );
        assert_eq!(s.metrics.batch_retries.get(), 0);
        let m = s.metrics.render();
        assert!(
            m.contains("journeyd_actions_dead_lettered_total{reason=\"too_large\"} 1"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn an_action_the_broker_refuses_for_good_goes_to_the_action_dead_letter_topic() {
        let cluster = cluster();
        let s = sender(&cluster);
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        let mut cancel = action("x");
        cancel.kind = ActionKind::Cancel;
        let sent = Sent {
            actions: vec![cancel],
            dead: Vec::new(),
            then: "b1",
        };
        deliver(&s, &sent).await.unwrap();
        let dead = records(&cluster, DLQ, 1);
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].0["journeyd.dlq.reason"], "not_authorised");
        assert_eq!(dead[0].0["journeyd.kind"], "cancel");
        assert!(!dead[0].0.contains_key("journeyd.dlq.vars_dropped"));
        let back: Action = serde_json::from_slice(&dead[0].1).unwrap();
        assert_eq!(back, sent.actions[0], "the whole action");
        assert!(log(&cluster, 0).is_empty());
    }

    #[tokio::test]
    async fn an_action_avro_cannot_represent_goes_to_the_action_dead_letter_topic() {
        let cluster = cluster();
        let s = Sender {
            encoder: Arc::new(ActionEncoder::new(journeyd_codec::Format::Avro)),
            ..sender(&cluster)
        };
        let mut odd = action("odd");
        odd.journey_version = u32::MAX;
        let sent = Sent {
            actions: vec![odd, action("fine")],
            dead: Vec::new(),
            then: "b1",
        };
        deliver(&s, &sent).await.unwrap();
        assert_eq!(log(&cluster, 1), ["fine"]);
        let dead = records(&cluster, DLQ, 1);
        assert_eq!(dead[0].0["journeyd.dlq.reason"], "unrepresentable");
        assert_eq!(dead[0].0["journeyd.action_id"], "odd");
    }

    #[tokio::test]
    async fn an_action_kafka_refused_before_goes_straight_to_the_dead_letter_topic_again() {
        let cluster = cluster();
        let s = sender(&cluster);
        // Refused for good once (in a transaction that then aborted): produced again, it is
        // not sent to Kafka, which would refuse it again and abort that transaction too.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let sent = Sent {
            actions: vec![action("big")],
            dead: Vec::new(),
            then: "b1",
        };
        deliver(&s, &sent).await.unwrap();
        assert_eq!(records(&cluster, DLQ, 1).len(), 1, "dead-lettered once");
        let again = Sent {
            actions: vec![action("big"), action("fine")],
            dead: Vec::new(),
            then: "b2",
        };
        deliver(&s, &again).await.unwrap();
        assert_eq!(
            log(&cluster, 1),
            ["fine"],
            "not produced to its topic again"
        );
        let dead = records(&cluster, DLQ, 2);
        assert_eq!(dead.len(), 2, "dead-lettered again, at once: {dead:?}");
        assert_eq!(dead[1].0["journeyd.action_id"], "big");
        assert_eq!(dead[1].0["journeyd.dlq.reason"], "too_large");
    }

    #[tokio::test]
    async fn a_dead_letter_the_broker_refuses_as_too_large_goes_again_as_a_small_one() {
        let cluster = cluster();
        let s = sender(&cluster);
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let message = rdkafka::message::OwnedMessage::new(
            Some(vec![b'p'; 200_000]),
            Some(b"k".to_vec()),
            "touchpoints".into(),
            rdkafka::Timestamp::NotAvailable,
            1,
            77,
            None,
        );
        let sent = Sent {
            actions: Vec::new(),
            dead: vec![DeadLetter {
                message,
                reason: "bad_avro",
                error: "not avro".into(),
            }],
            then: "b1",
        };
        deliver(&s, &sent).await.unwrap();
        let dead = records(&cluster, "touchpoints.dlq", 1);
        assert_eq!(dead.len(), 1, "only the small one landed");
        let (h, payload) = &dead[0];
        assert_eq!(payload.len(), dead_letters::FALLBACK_PAYLOAD_BYTES);
        assert_eq!(h["journeyd.dlq.reason"], "bad_avro");
        assert_eq!(h["journeyd.dlq.source.offset"], "77");
        assert_eq!(h["journeyd.dlq.original_bytes"], "200000");
        assert_eq!(h["journeyd.dlq.truncated"], "true");
        assert!(
            h["journeyd.dlq.refused"].contains("too large")
                || h["journeyd.dlq.refused"].contains("Message size"),
            "{h:?}"
        );
    }
}
