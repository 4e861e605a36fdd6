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

pub use crate::delivery::{action_headers, Failure, Sender, Sent};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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

/// What became of a batch's one attempt (see [`InFlight::land_oldest_once`]).
#[derive(Debug)]
pub enum Attempt<T> {
    /// Kafka acknowledged all of it.
    Landed(Landed<T>),
    /// Kafka did not take all of it: why.
    Failed(String),
    /// Nothing was in flight, or the service stopped before Kafka answered.
    Stopped,
}

/// The first wait before a batch is produced again; it doubles at each failure, up to
/// [`RETRY_MOST`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const RETRY_MOST: Duration = Duration::from_secs(30);

/// A batch on its way.
enum Flying<T> {
    /// Its messages are queued or being queued, by a task.
    Sending {
        task: tokio::task::JoinHandle<(Sent<T>, Result<Instant, Failure>)>,
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
    async fn outcome(self) -> Result<(Sent<T>, Instant, Result<Instant, Failure>), String> {
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
            // When the batch cannot be queued, `queued` is dropped: the next batch queues all
            // the same, and is produced again after this one.
            let result = s
                .deliver(&sent, after, queued)
                .await
                .map(|()| Instant::now());
            (sent, result)
        });
        self.batches.push_back(Flying::Sending {
            task,
            started: Instant::now(),
        });
    }

    /// Waits for the oldest batch's one attempt, without producing it again: for a batch in a
    /// Kafka transaction, where a send that failed fails the whole transaction (it is aborted
    /// and the batch runs again from the last committed state). An error when the producer
    /// cannot go on.
    pub async fn land_oldest_once(&mut self, sender: &Sender) -> Result<Attempt<T>, String> {
        let Some(oldest) = self.batches.pop_front() else {
            return Ok(Attempt::Stopped);
        };
        let (sent, started, first) = oldest.outcome().await?;
        match first {
            Ok(at) => Ok(Attempt::Landed(Landed {
                sent,
                acknowledged: at,
                took: at - started,
            })),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Retry(_)) if sender.shutdown.is_cancelled() => Ok(Attempt::Stopped),
            Err(Failure::Retry(e)) => Ok(Attempt::Failed(e)),
        }
    }

    /// Waits until Kafka has acknowledged all of the oldest batch's messages. If it did not
    /// take them all, waits for the later batches' first attempts to end, then produces the
    /// oldest and all of them again, in order, until Kafka acknowledges them all (they land
    /// next, without being produced once more). None when nothing is in flight, or the service
    /// stops before Kafka took them: then the batch must not be written, nor any after it.
    /// An error when the producer cannot go on (a fatal error): the service stops with it.
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
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => e,
        };
        // The later batches' first copies are out (or failed) before any copy again.
        let mut later = Vec::with_capacity(self.batches.len());
        for b in std::mem::take(&mut self.batches) {
            let (s, started, _) = b.outcome().await?;
            later.push((s, started));
        }
        self.newest_queued = None;
        let mut backoff = RETRY_FIRST;
        loop {
            tracing::warn!(%error, batches = 1 + later.len(), retry_in = ?backoff, "Kafka did not acknowledge a batch; it and the batches after it will be produced again, in order.");
            sender.metrics.batch_retries.inc();
            tokio::select! {
                () = sender.shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MOST);
            let all = std::iter::once(&sent).chain(later.iter().map(|(s, _)| s));
            match sender.produce_again(all).await {
                Ok(()) => break,
                Err(Failure::Retry(e)) => error = e,
                Err(Failure::Fatal(e)) => return Err(e),
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
    use crate::delivery::testing::*;
    use crate::delivery::STOP_GRACE;
    use journeyd_codec::ActionEncoder;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use std::sync::Arc;

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

    /// Batch a's produce failed for a reason that may pass (it timed out), then batch b's
    /// first attempt over (it went through): both on their way.
    async fn a_refused_then_b() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Sender,
        InFlight<&'static str>,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let s = sender(&cluster);
        let mut in_flight = InFlight::new();
        // A broker that keeps answering with an error that may pass: librdkafka retries until
        // the message times out (2 s here), and the batch is to be produced again.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
        );
        in_flight.send(&s, batch("a"));
        first_attempt_done(&in_flight, 0).await;
        cluster.clear_request_errors(RDKafkaApiKey::Produce);
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
