//! Sending batches' actions and dead letters to Kafka, in batch order.
//!
//! Up to `processing.batches_in_flight` batches are on their way at once. A batch's messages
//! are queued once the previous batch's are queued, without waiting for its acknowledgements:
//! librdkafka's idempotent producer keeps them in that order in every partition, across its
//! retries. Batches land (acknowledged whole, then handed on to be written) in batch order.
//!
//! A batch that Kafka did not acknowledge whole is produced again, and so is every batch
//! queued after it that is still in flight: once their first attempts are over, all of them
//! again, in order, until Kafka acknowledges them all. Why: a cancel is keyed like the send it
//! withdraws (same channel topic, same customer), so it follows the send in its partition; but
//! the send produced again would come after a cancel that a later batch had already delivered.
//! Producing the later batches again puts a copy of every such cancel after the last copy of
//! its send. Channel adapters de-duplicate on the action id.

use crate::config::Config;
use crate::metrics::Metrics;
use journeyd_codec::ActionEncoder;
use journeyd_types::Action;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A message that goes to the dead-letter topic, and why.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message as consumed.
    pub message: OwnedMessage,
    /// The reason label (`journeyd_events_rejected_total{reason}`).
    pub reason: &'static str,
    /// What was wrong, for the operator.
    pub error: String,
}

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

/// A batch whose messages Kafka acknowledged.
#[derive(Debug)]
pub struct Landed<T> {
    /// What the batch sent.
    pub sent: Sent<T>,
    /// When the last acknowledgement came.
    pub acknowledged: Instant,
    /// From the start of the first attempt to the last acknowledgement, retries included.
    pub took: Duration,
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
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// How long a batch's messages wait for room in the producer's queue before the batch fails
/// (and is produced again).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

impl Sender {
    /// Queues the batch's messages, after `after` resolves (the previous batch's were queued,
    /// or could not be). Returns a future per message, which resolves when Kafka acknowledges it
    /// or the producer gives up. Fails at the first message that cannot be queued.
    async fn queue<T>(
        &self,
        sent: &Sent<T>,
        after: Option<oneshot::Receiver<()>>,
    ) -> Result<Vec<DeliveryFuture>, String> {
        let config = &self.config;
        let mut topics: HashMap<&str, String> = HashMap::new();
        // Encoded while the previous batch may still be queueing.
        let payloads: Result<Vec<Vec<u8>>, String> = sent
            .actions
            .iter()
            .map(|a| {
                let topic = topics
                    .entry(a.channel.as_str())
                    .or_insert_with(|| config.actions_topic(&a.channel));
                self.encoder.encode(a, topic).map_err(|e| e.to_string())
            })
            .collect();
        if let Some(after) = after {
            // Even when this batch cannot go: the next one waits for this one, so it must not
            // queue before the previous one has. (An error only says the previous batch's
            // queueing failed: it is produced again, and every batch after it.)
            let _ = after.await;
        }
        let payloads = payloads?;
        // One deadline for the whole batch: a message that cannot be queued by then fails it.
        let queued_by = Instant::now() + QUEUE_TIMEOUT;
        let not_queued = |e: KafkaError| format!("a message of the batch could not be queued: {e}");
        let mut deliveries = Vec::with_capacity(payloads.len() + sent.dead.len());
        for (a, bytes) in sent.actions.iter().zip(&payloads) {
            let headers = action_headers(&a.action_id, a.kind.as_str());
            let record = FutureRecord::to(&topics[a.channel.as_str()])
                .key(a.customer_id.as_bytes())
                .payload(bytes.as_slice())
                .headers(headers);
            deliveries.push(
                enqueue(&self.producer, record, queued_by, &self.shutdown)
                    .await
                    .map_err(not_queued)?,
            );
        }
        for d in &sent.dead {
            let mut record = FutureRecord::<[u8], [u8]>::to(&config.outputs.dead_letter_topic)
                .payload(d.message.payload().unwrap_or_default())
                .headers(dead_letter_headers(d));
            if let Some(k) = d.message.key() {
                record = record.key(k);
            }
            deliveries.push(
                enqueue(&self.producer, record, queued_by, &self.shutdown)
                    .await
                    .map_err(not_queued)?,
            );
        }
        Ok(deliveries)
    }

    /// Produces batches' messages again, in their order: all queued, then every
    /// acknowledgement awaited. Ok when Kafka acknowledged every one.
    async fn produce_again<'a, T: 'a>(
        &self,
        batches: impl Iterator<Item = &'a Sent<T>>,
    ) -> Result<(), String> {
        let mut deliveries = Vec::new();
        for sent in batches {
            deliveries.extend(self.queue(sent, None).await?);
        }
        acknowledged(deliveries, &self.shutdown).await
    }
}

/// How long acknowledgements are still awaited once the service stops: a clean stop lands the
/// batches on their way; a broker that is away does not hold the stop for longer (those
/// batches are not written, and run again after a restart).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Waits for every delivery: each future awaited once, in order (a join of thousands of futures
/// cost a tenth of the CPU while firing timers). Gives up [`STOP_GRACE`] after the service
/// stops.
async fn acknowledged(
    deliveries: Vec<DeliveryFuture>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut failed: Vec<String> = Vec::new();
    let gone = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(gone);
    for d in deliveries {
        tokio::select! {
            delivered = d => match delivered {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failed.push(e.to_string()),
                Err(_) => failed.push("the producer went away".to_owned()),
            },
            () = &mut gone => {
                return Err("the service stopped before Kafka acknowledged the batch".to_owned());
            }
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of the batch's messages were not acknowledged (first: {first})",
            failed.len()
        )),
    }
}

/// Queues a message, waiting while the producer's queue is full, until `deadline` or the
/// service stops. The future it returns resolves when Kafka acknowledges the message or the
/// producer gives up.
async fn enqueue<K, P>(
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

fn dead_letter_headers(d: &DeadLetter) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    if let Some(orig) = d.message.headers() {
        for header in orig.iter() {
            h = h.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let partition = d.message.partition().to_string();
    let offset = d.message.offset().to_string();
    for (key, value) in [
        ("journeyd.dlq.reason", d.reason),
        ("journeyd.dlq.error", d.error.as_str()),
        ("journeyd.dlq.source.topic", d.message.topic()),
        ("journeyd.dlq.source.partition", partition.as_str()),
        ("journeyd.dlq.source.offset", offset.as_str()),
    ] {
        h = h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    h
}

/// A batch on its way.
enum Flying<T> {
    /// Its messages are queued or being queued, by a task.
    Sending {
        task: tokio::task::JoinHandle<(Sent<T>, Result<Instant, String>)>,
        started: Instant,
    },
    /// Produced again with the batch before it, and acknowledged.
    Acknowledged {
        sent: Sent<T>,
        started: Instant,
        at: Instant,
    },
}

impl<T> Flying<T> {
    /// Waits for the first attempt (if it is still running).
    async fn outcome(self) -> Result<(Sent<T>, Instant, Result<Instant, String>), String> {
        match self {
            Flying::Sending { task, started } => {
                let (sent, result) = task
                    .await
                    .map_err(|e| format!("a batch's send did not finish: {e}"))?;
                Ok((sent, started, result))
            }
            Flying::Acknowledged { sent, started, at } => Ok((sent, started, Ok(at))),
        }
    }

    fn done(&self) -> bool {
        match self {
            Flying::Sending { task, .. } => task.is_finished(),
            Flying::Acknowledged { .. } => true,
        }
    }
}

/// The batches on their way to Kafka, oldest first (see the module's doc).
pub struct InFlight<T> {
    batches: VecDeque<Flying<T>>,
    /// Resolves once the newest batch's messages are queued (or could not be).
    newest_queued: Option<oneshot::Receiver<()>>,
}

impl<T: Send + Sync + 'static> InFlight<T> {
    /// None on their way.
    pub fn new() -> InFlight<T> {
        InFlight {
            batches: VecDeque::new(),
            newest_queued: None,
        }
    }

    /// How many batches are on their way.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Whether the oldest batch's first attempt is over (it lands without waiting, unless it
    /// must be produced again).
    pub fn oldest_done(&self) -> bool {
        self.batches.front().is_some_and(Flying::done)
    }

    /// Whether the oldest batch should land before another is sent: `most` are on their way,
    /// or it is done (then its write can start).
    pub fn must_land(&self, most: usize) -> bool {
        self.len() >= most || self.oldest_done()
    }

    /// Starts sending a batch: its messages are queued after the previous batch's.
    pub fn send(&mut self, sender: &Sender, sent: Sent<T>) {
        let (queued, newest_queued) = oneshot::channel();
        let after = self.newest_queued.replace(newest_queued);
        let s = sender.clone();
        let task = tokio::spawn(async move {
            let result = match s.queue(&sent, after).await {
                Ok(deliveries) => {
                    let _ = queued.send(());
                    acknowledged(deliveries, &s.shutdown)
                        .await
                        .map(|()| Instant::now())
                }
                // `queued` is dropped: the next batch queues all the same, and is produced
                // again after this one.
                Err(e) => Err(e),
            };
            (sent, result)
        });
        self.batches.push_back(Flying::Sending {
            task,
            started: Instant::now(),
        });
    }

    /// Waits until Kafka has acknowledged all of the oldest batch's messages. If it did not
    /// take them all, waits for the later batches' first attempts to end, then produces the
    /// oldest and all of them again, in order, until Kafka acknowledges them all (they land
    /// next, without being produced once more). None when nothing is in flight, or the service
    /// stops before Kafka took them: then the batch must not be written, nor any after it.
    pub async fn land_oldest(&mut self, sender: &Sender) -> Result<Option<Landed<T>>, String> {
        let Some(oldest) = self.batches.pop_front() else {
            return Ok(None);
        };
        let (sent, started, first) = oldest.outcome().await?;
        let mut error = match first {
            Ok(at) => {
                return Ok(Some(Landed {
                    sent,
                    acknowledged: at,
                    took: at - started,
                }))
            }
            Err(e) => e,
        };
        // The later batches' first copies are out (or failed) before any copy again.
        let mut later = Vec::with_capacity(self.batches.len());
        for b in std::mem::take(&mut self.batches) {
            let (s, started, _) = b.outcome().await?;
            later.push((s, started));
        }
        self.newest_queued = None;
        loop {
            tracing::warn!(%error, batches = 1 + later.len(), "Kafka did not acknowledge a batch; it and the batches after it will be produced again, in order.");
            sender.metrics.batch_retries.inc();
            tokio::select! {
                () = sender.shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let all = std::iter::once(&sent).chain(later.iter().map(|(s, _)| s));
            match sender.produce_again(all).await {
                Ok(()) => break,
                Err(e) => error = e,
            }
        }
        let at = Instant::now();
        for (sent, started) in later {
            self.batches
                .push_back(Flying::Acknowledged { sent, started, at });
        }
        Ok(Some(Landed {
            sent,
            acknowledged: at,
            took: at - started,
        }))
    }
}

impl<T> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Default for InFlight<T> {
    fn default() -> Self {
        InFlight::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;

    /// A producer whose queue holds one message and whose broker is never reached.
    fn full_producer() -> FutureProducer {
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

    use journeyd_codec::Format;
    use journeyd_types::ActionKind;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, TopicPartitionList};

    const TOPIC: &str = "actions.email";

    fn action(id: &str) -> Action {
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

    fn batch(id: &'static str) -> Sent<&'static str> {
        Sent {
            actions: vec![action(id)],
            dead: Vec::new(),
            then: id,
        }
    }

    fn sender<C: rdkafka::ClientContext>(cluster: &MockCluster<'_, C>) -> Sender {
        sender_to(&cluster.bootstrap_servers(), "2000")
    }

    /// A sender to `bootstrap` whose messages give up after `message_timeout_ms`.
    fn sender_to(bootstrap: &str, message_timeout_ms: &str) -> Sender {
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
        }
    }

    /// The action ids in the topic, in order.
    fn log<C: rdkafka::ClientContext>(
        cluster: &MockCluster<'_, C>,
        expected: usize,
    ) -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut ids = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        // Reads on past `expected` for a while: more would be a failure too.
        let mut quiet_from = None;
        while Instant::now() < until {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let h = m.headers().unwrap();
                    let id = h.iter().find(|h| h.key == "journeyd.action_id").unwrap();
                    ids.push(String::from_utf8(id.value.unwrap().to_vec()).unwrap());
                }
                Some(Err(e)) => panic!("{e}"),
                None if ids.len() >= expected => {
                    let q = *quiet_from.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
                None => {}
            }
        }
        ids
    }

    async fn first_attempt_done<T>(in_flight: &InFlight<T>, i: usize) {
        while !in_flight.batches[i].done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn batches_in_flight_land_in_order_each_produced_once() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let s = sender(&cluster);
        let mut in_flight = InFlight::new();
        for id in ["a", "b", "c"] {
            in_flight.send(&s, batch(id));
        }
        assert_eq!(in_flight.len(), 3);
        let mut landed = Vec::new();
        while let Some(l) = in_flight.land_oldest(&s).await.unwrap() {
            landed.push(l.sent.then);
        }
        assert_eq!(landed, ["a", "b", "c"]);
        assert_eq!(log(&cluster, 3), ["a", "b", "c"]);
        assert_eq!(s.metrics.batch_retries.get(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_queued_only_once_the_previous_one_is() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let s = sender(&cluster);
        let mut in_flight = InFlight::new();
        // A batch before it, still queueing (as when the producer's queue is full).
        let (queued, newest_queued) = oneshot::channel();
        in_flight.newest_queued = Some(newest_queued);
        in_flight.send(&s, batch("b"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!in_flight.oldest_done());
        assert_eq!(s.producer.in_flight_count(), 0, "b waits: nothing queued");
        queued.send(()).unwrap();
        assert_eq!(
            in_flight.land_oldest(&s).await.unwrap().unwrap().sent.then,
            "b"
        );
        assert_eq!(log(&cluster, 1), ["b"]);
    }

    /// Batch a's produce refused by the broker, then batch b's first attempt over (it went
    /// through): both on their way.
    async fn a_refused_then_b() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Sender,
        InFlight<&'static str>,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let s = sender(&cluster);
        let mut in_flight = InFlight::new();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
        );
        in_flight.send(&s, batch("a"));
        first_attempt_done(&in_flight, 0).await;
        in_flight.send(&s, batch("b"));
        first_attempt_done(&in_flight, 1).await;
        (cluster, s, in_flight)
    }

    #[tokio::test]
    async fn a_batch_produced_again_is_followed_by_the_later_batches_again() {
        let (cluster, s, mut in_flight) = a_refused_then_b().await;
        assert_eq!(log(&cluster, 1), ["b"], "b's first attempt went through");
        let a = in_flight.land_oldest(&s).await.unwrap().unwrap();
        assert_eq!(a.sent.then, "a");
        let b = in_flight.land_oldest(&s).await.unwrap().unwrap();
        assert_eq!(b.sent.then, "b");
        assert!(in_flight.is_empty());
        // b again after a: b's first copy came before a.
        assert_eq!(log(&cluster, 3), ["b", "a", "b"]);
        assert_eq!(s.metrics.batch_retries.get(), 1);
    }

    #[tokio::test]
    async fn after_a_batch_is_produced_again_the_later_ones_go_once() {
        let (cluster, s, mut in_flight) = a_refused_then_b().await;
        let mut landed = vec![in_flight.land_oldest(&s).await.unwrap().unwrap().sent.then];
        // b went again with a: it lands before anything else is sent, though one is in flight.
        assert_eq!(in_flight.len(), 1);
        assert!(in_flight.must_land(2));
        // Then as the service loop does with two in flight.
        for id in ["c", "d", "e", "f", "g"] {
            while in_flight.must_land(2) {
                landed.push(in_flight.land_oldest(&s).await.unwrap().unwrap().sent.then);
            }
            in_flight.send(&s, batch(id));
        }
        while let Some(l) = in_flight.land_oldest(&s).await.unwrap() {
            landed.push(l.sent.then);
        }
        assert_eq!(landed, ["a", "b", "c", "d", "e", "f", "g"]);
        // a's first attempt was refused: a and b again, in order, then every batch once.
        assert_eq!(log(&cluster, 8), ["b", "a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(s.metrics.batch_retries.get(), 1);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_encoded_still_holds_the_next_one_behind_the_previous_one() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let s = sender(&cluster);
        // A registry that is not there: the batch's actions cannot be encoded.
        let unencodable = Sender {
            encoder: Arc::new(ActionEncoder::with_registry("http://127.0.0.1:1")),
            ..s.clone()
        };
        let mut in_flight = InFlight::new();
        // A batch before them, still queueing.
        let (queued, newest_queued) = oneshot::channel();
        in_flight.newest_queued = Some(newest_queued);
        in_flight.send(&unencodable, batch("b"));
        in_flight.send(&s, batch("c"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.producer.in_flight_count(), 0, "c waits: nothing queued");
        queued.send(()).unwrap();
        first_attempt_done(&in_flight, 1).await;
        assert_eq!(log(&cluster, 1), ["c"]);
    }

    #[tokio::test]
    async fn a_stop_waits_for_acknowledgements_a_grace_period_not_the_message_timeout() {
        // A broker that is not there, and messages that would wait a minute for it.
        let s = sender_to("127.0.0.1:1", "60000");
        let mut in_flight = InFlight::new();
        in_flight.send(&s, batch("a"));
        in_flight.send(&s, batch("b"));
        s.shutdown.cancel();
        let started = Instant::now();
        let landed = tokio::time::timeout(Duration::from_secs(40), in_flight.land_oldest(&s))
            .await
            .expect("the stop does not wait for the message timeout");
        assert!(landed.unwrap().is_none());
        assert!(in_flight.is_empty());
        assert!(
            started.elapsed() >= STOP_GRACE,
            "it waited the grace period"
        );
    }

    #[tokio::test]
    async fn stopping_while_a_batch_is_refused_lands_neither_it_nor_the_later_ones() {
        let (_cluster, s, mut in_flight) = a_refused_then_b().await;
        s.shutdown.cancel();
        assert!(in_flight.land_oldest(&s).await.unwrap().is_none());
        assert!(
            in_flight.is_empty(),
            "b is dropped: it must not land before a"
        );
        assert!(in_flight.land_oldest(&s).await.unwrap().is_none());
    }
}
