//! The test's own Kafka client: publishes touchpoints, reads the channel topics and the
//! dead-letter topic. It shares nothing with journeyd but the schemas.

use journeyd_codec::{decode_action, encode_touchpoint, Framing};
use journeyd_types::{Action, Event};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Publishes to the broker, keyed by customer.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    /// Its `client.id`.
    pub const CLIENT_ID: &'static str = "journeyd-e2e-publisher";

    /// A producer that waits for every acknowledgement and retries through outages.
    pub fn new(bootstrap: &str, topic: &str) -> Publisher {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", Publisher::CLIENT_ID)
            // Back soon after an outage: the events due then must not be late.
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "200")
            .set("linger.ms", "2")
            // One record per record batch: tansu 0.6 answers a fetch from an offset inside
            // a batch with the batches after it, so a consumer that resumes mid-batch (as
            // journeyd does after a crash, at the offset after its last write) would never
            // see the rest of that batch. Kafka sends the whole batch and the client skips.
            .set("batch.num.messages", "1")
            .set("acks", "all")
            .set("message.timeout.ms", "120000")
            // Idempotent: five requests in flight, and retries through an outage still keep
            // each partition's order.
            .set("enable.idempotence", "true")
            // Room for the oversized messages of the poison tests (librdkafka's default
            // refuses anything over 1,000,000 bytes before the broker sees it).
            .set("message.max.bytes", "4000000")
            .create()
            .expect("a producer");
        // Connected (and, being idempotent, given its producer id) before the first event
        // is due, so that one is not late.
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("the input topic's metadata");
        Publisher {
            producer,
            topic: topic.to_owned(),
        }
    }

    /// Publishes events as Avro (single-object encoding), in order, and waits for the acks.
    pub async fn events(&self, events: &[Event]) {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let bytes = encode_touchpoint(e, Framing::SingleObject);
            // Timestamped with the time the event occurred (the wall clock reached it before
            // it is published), so a publisher that lags does not move journeyd's watermark
            // past events it has not published yet.
            let mut record = FutureRecord::to(&self.topic)
                .key(&e.customer_id)
                .payload(&bytes)
                .timestamp(e.occurred_at);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => panic!("cannot queue a touchpoint: {e}"),
                }
            }
        }
        for d in pending {
            d.await
                .expect("the delivery report arrives")
                .expect("the broker acknowledges a touchpoint");
        }
    }

    /// Publishes raw bytes to any topic.
    pub async fn raw(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        let mut r = FutureRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        self.producer
            .send(r, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker acknowledges");
    }

    /// Waits until everything queued is delivered.
    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(60)).unwrap();
    }
}

/// A dead-lettered message.
#[derive(Debug, Clone)]
pub struct Dead {
    /// The original bytes.
    pub payload: Vec<u8>,
    /// The headers journeyd added.
    pub headers: BTreeMap<String, String>,
}

/// Reads every action topic and the dead-letter topic from the beginning, without a group.
pub struct Reader {
    consumer: BaseConsumer,
    dlq: String,
    /// Actions in arrival order.
    pub actions: Vec<Action>,
    /// Dead letters in arrival order.
    pub dead: Vec<Dead>,
    /// Where each action was read: (topic, partition, offset), in arrival order.
    pub read_at: Vec<(String, i32, i64)>,
}

impl Reader {
    /// Assigns every partition of `topics` (action topics) and `dlq` from the beginning.
    pub fn new(bootstrap: &str, topics: &[String], dlq: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "journeyd-e2e-reader")
            .set("enable.auto.commit", "false")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .expect("a consumer");
        let mut tpl = TopicPartitionList::new();
        for topic in topics.iter().map(String::as_str).chain([dlq]) {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("topic metadata");
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
            assert!(partitions > 0, "topic {topic} has no partitions");
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            dlq: dlq.to_owned(),
            actions: Vec::new(),
            dead: Vec::new(),
            read_at: Vec::new(),
        }
    }

    fn poll_once(&mut self, wait: Duration) {
        let m = match self.consumer.poll(wait) {
            None => return,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                eprintln!("reader: {e}");
                return;
            }
        };
        let payload = m.payload().unwrap_or_default().to_vec();
        if m.topic() == self.dlq {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for x in h.iter() {
                    headers.insert(
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            self.dead.push(Dead { payload, headers });
        } else {
            let a = decode_action(&payload).expect("actions decode with the published schema");
            assert_eq!(
                m.topic(),
                format!("actions.{}", a.channel),
                "an action goes to its channel's topic"
            );
            assert_eq!(
                m.key(),
                Some(a.customer_id.as_bytes()),
                "actions are keyed by customer"
            );
            self.actions.push(a);
            self.read_at
                .push((m.topic().to_owned(), m.partition(), m.offset()));
        }
    }

    /// Reads until `done` holds, or panics after `timeout` with `what` and a summary.
    pub fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Reader) -> bool) {
        assert!(
            self.within(timeout, done),
            "timed out after {timeout:?} waiting for {what}: {} actions and {} dead letters read",
            self.actions.len(),
            self.dead.len()
        );
    }

    /// Reads until `done` holds (true) or `timeout` passes (false).
    pub fn within(&mut self, timeout: Duration, done: impl Fn(&Reader) -> bool) -> bool {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > timeout {
                return false;
            }
            self.poll_once(Duration::from_millis(100));
        }
        true
    }

    /// Reads whatever else arrives within `quiet`.
    pub fn settle(&mut self, quiet: Duration) {
        let start = Instant::now();
        while start.elapsed() < quiet {
            self.poll_once(Duration::from_millis(100));
        }
    }
}
