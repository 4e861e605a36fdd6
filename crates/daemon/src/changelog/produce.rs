//! Producing a batch's changelog records, after its actions are acknowledged (so a record in
//! the changelog means its batch's actions are in Kafka), and the checkpoint they give.

use crate::processor::Change;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A batch's changelog records on their way.
#[derive(Default)]
pub struct Queued {
    deliveries: Vec<DeliveryFuture>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queued({} records)", self.deliveries.len())
    }
}

impl Queued {
    /// How many records are on their way.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Waits for every record's acknowledgement; returns, per changelog partition, the offset
    /// after the last record, which the batch's write stores as its checkpoint.
    pub async fn acknowledged(self) -> Result<BTreeMap<i32, i64>, String> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for d in self.deliveries {
            match d.await {
                Ok(Ok(delivery)) => {
                    let e = next.entry(delivery.partition).or_insert(0);
                    *e = (*e).max(delivery.offset + 1);
                }
                Ok(Err((error, _))) => return Err(error.to_string()),
                Err(_) => return Err("the producer was dropped".into()),
            }
        }
        Ok(next)
    }
}

/// Queues the records of the partitions `owned` accepts (the others were revoked or are
/// being restored: their next owner replays the batch). `None` when the service stops while
/// waiting for room in the producer's queue.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    changes: &[Change],
    owned: &(dyn Fn(i32) -> bool + Sync),
    shutdown: &CancellationToken,
) -> Result<Option<Queued>, KafkaError> {
    let mut queued = Queued::default();
    let mut verdicts: BTreeMap<i32, bool> = BTreeMap::new();
    for c in changes {
        if !*verdicts
            .entry(c.partition)
            .or_insert_with(|| owned(c.partition))
        {
            continue;
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(c.partition)
            .key(c.key.as_slice());
        if let Some(v) = &c.value {
            record = record.payload(v.as_slice());
        }
        let deadline = Instant::now() + Duration::from_secs(3600);
        match crate::delivery::enqueue(producer, record, deadline, shutdown).await {
            Ok(d) => queued.deliveries.push(d),
            Err(_) if shutdown.is_cancelled() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(queued))
}
