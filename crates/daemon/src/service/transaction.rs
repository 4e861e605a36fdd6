//! Exactly once (`processing.guarantee = exactly_once`): each batch is one Kafka transaction
//! holding its actions, its dead letters, its changelog records and its consumed offsets, sent
//! with the consumer's group metadata. A batch whose partitions were revoked meanwhile is
//! aborted before it commits; a replica the group moved on from without its knowing (a
//! session timeout) is refused by the group coordinator, and its transaction aborts. Nothing
//! of an aborted batch becomes visible to readers with `isolation.level=read_committed`.
//!
//! The local store is written only after the commit, so it never holds more than Kafka
//! committed. A transaction that aborts is replayed from the last committed state: every
//! partition of the replica is read again from the store's offsets (see
//! [`super::landing::Landing::rewind`]); a later restore of the changelog reads committed
//! records only. A fatal producer error (fenced by a newer replica with
//! the same `transactional.id`) stops the service; its restart replays from the committed
//! state too.

use crate::config::Config;
use journeyd_store::Offset;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one call to the transaction coordinator may take before it is tried again.
const CALL: Duration = Duration::from_secs(30);

/// The producer's `transactional.id` unless `[kafka]` sets one: stable across restarts of the
/// same replica (so that a restart fences its previous incarnation's open transaction) and
/// different between replicas. With static membership it is the member's
/// `group.instance.id`; else the host name and the store's path, since replicas on one host
/// have stores of their own.
pub fn transactional_id(config: &Config) -> String {
    let group = config
        .kafka
        .get("group.id")
        .map_or("journeyd", String::as_str);
    if let Some(instance) = config.kafka.get("group.instance.id") {
        return format!("{group}.{instance}");
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let path =
        std::fs::canonicalize(&config.store.path).unwrap_or_else(|_| config.store.path.clone());
    // FNV-1a: stable across builds (the std hasher is not promised to be).
    let hash = path
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{group}.{host}.{:08x}", hash as u32)
}

/// Why a transaction call failed, as the caller must act on it.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The transaction cannot commit: abort it and replay the batch.
    #[error("the transaction must be aborted: {0}")]
    Abortable(KafkaError),
    /// The producer cannot go on (fenced by a newer producer with the same
    /// `transactional.id`, or another fatal error).
    #[error("the transactional producer cannot go on: {0}")]
    Fatal(KafkaError),
    /// The service stopped while the call was retried.
    #[error("stopped while a transaction call was retried")]
    Stopped,
}

/// Whether the broker lacks a transaction request (librdkafka calls that retriable).
fn unsupported(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion)
    )
}

/// Ok when the call may be made again (retriable); else what the caller must do.
fn classify(error: KafkaError) -> Result<(), TransactionError> {
    let (fatal, abortable, retriable) = match &error {
        KafkaError::Transaction(e) => (
            e.is_fatal() || unsupported(&error),
            e.txn_requires_abort(),
            e.is_retriable(),
        ),
        _ => (false, true, false),
    };
    if fatal {
        Err(TransactionError::Fatal(error))
    } else if abortable {
        Err(TransactionError::Abortable(error))
    } else if retriable {
        Ok(())
    } else {
        // Neither retriable nor abortable (a state error): the producer is not where the
        // loop thinks it is.
        Err(TransactionError::Fatal(error))
    }
}

/// Runs a blocking transaction call off the runtime, again while its error is retriable.
async fn call(
    producer: &FutureProducer,
    shutdown: &CancellationToken,
    what: &'static str,
    f: impl Fn(&FutureProducer) -> Result<(), KafkaError> + Send + Sync + Clone + 'static,
) -> Result<(), TransactionError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (p, f2) = (producer.clone(), f.clone());
        let result = match tokio::task::spawn_blocking(move || f2(&p)).await {
            Ok(r) => r,
            Err(panic) => {
                tracing::error!(%panic, what, "A transaction call panicked.");
                Err(KafkaError::Canceled)
            }
        };
        let Err(error) = result else {
            return Ok(());
        };
        classify(error.clone())?;
        // Retriable: the coordinator is away or moving.
        tracing::warn!(%error, what, retry_in = ?backoff, "A transaction call failed; trying again.");
        tokio::select! {
            () = shutdown.cancelled() => return Err(TransactionError::Stopped),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Registers the producer's `transactional.id` with its coordinator (fencing an earlier
/// producer with the same id and aborting its open transaction), then commits one probe
/// transaction holding only a consumer offset of a group of its own, so that a broker without
/// every request a batch needs stops the start before any batch is produced. (tansu 0.6
/// answers the registration but has no EndTxn.)
pub async fn init(
    config: &Config,
    producer: &FutureProducer,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let refused = |step: &str, error: &KafkaError| {
        anyhow::anyhow!(
            "processing.guarantee = exactly_once needs a broker with transactions (Apache \
             Kafka 2.5 or later; tansu 0.6 has none), and this one could not {step}: {error}. \
             Use processing.guarantee = at_least_once with this broker."
        )
    };
    let p = producer.clone();
    match tokio::task::spawn_blocking(move || p.init_transactions(CALL)).await? {
        Ok(()) => {}
        Err(error) if shutdown.is_cancelled() => {
            return Err(anyhow::anyhow!(
                "stopped while starting transactions: {error}"
            ))
        }
        Err(error) if unsupported(&error) => return Err(refused("start them", &error)),
        Err(error) => {
            return Err(anyhow::Error::new(error).context(
                "cannot start transactions (processing.guarantee = exactly_once): is the \
                 broker reachable, and may this client use its transactional.id (ACLs)?",
            ))
        }
    }
    // The probe: the offset 0 of the first input's partition 0, for a group nobody reads.
    let group = config
        .kafka
        .get("group.id")
        .map_or("journeyd", String::as_str);
    let mut client = super::clients::probe_client_config(config);
    client.set("group.id", format!("{group}.transactions-probe"));
    let consumer: rdkafka::consumer::BaseConsumer = client.create()?;
    let metadata = rdkafka::consumer::Consumer::group_metadata(&consumer)
        .ok_or_else(|| anyhow::anyhow!("no group metadata for the transactions probe"))?;
    let mut tpl = TopicPartitionList::new();
    if let Some(input) = config.inputs.first() {
        tpl.add_partition_offset(&input.topic, 0, KafkaOffset::Offset(0))?;
    }
    let p = producer.clone();
    let probed = tokio::task::spawn_blocking(move || {
        p.begin_transaction()?;
        p.send_offsets_to_transaction(&tpl, &metadata, CALL)?;
        p.commit_transaction(CALL)
    })
    .await?;
    match probed {
        Ok(()) => Ok(()),
        Err(error) if shutdown.is_cancelled() => Err(anyhow::anyhow!(
            "stopped while probing transactions: {error}"
        )),
        Err(error) if unsupported(&error) => Err(refused("commit a transaction", &error)),
        Err(error) => Err(anyhow::Error::new(error).context(
            "the probe transaction at start failed; journeyd tries again after a restart",
        )),
    }
}

/// Opens the transaction of the next batch.
pub fn begin(producer: &FutureProducer) -> Result<(), TransactionError> {
    producer
        .begin_transaction()
        .map_err(TransactionError::Fatal)
}

/// Adds the batch's consumed offsets (as of the group generation `group`) to its transaction
/// and commits it.
pub async fn commit(
    producer: &FutureProducer,
    inputs: &[Offset],
    group: ConsumerGroupMetadata,
    shutdown: &CancellationToken,
) -> Result<(), TransactionError> {
    if !inputs.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for o in inputs {
            let _ = tpl.add_partition_offset(&o.topic, o.partition, KafkaOffset::Offset(o.next));
        }
        let group = std::sync::Arc::new(group);
        call(
            producer,
            shutdown,
            "send_offsets_to_transaction",
            move |p| p.send_offsets_to_transaction(&tpl, &group, CALL),
        )
        .await?;
    }
    call(producer, shutdown, "commit_transaction", |p| {
        p.commit_transaction(CALL)
    })
    .await
}

/// Aborts the open transaction (none open is not an error), again while the abort fails for
/// a reason that may pass (librdkafka asks for the call to be repeated then).
pub async fn abort(producer: &FutureProducer) -> Result<(), TransactionError> {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..20 {
        let p = producer.clone();
        let result = tokio::task::spawn_blocking(move || p.abort_transaction(CALL))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        match result {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                return Err(TransactionError::Fatal(KafkaError::Transaction(e)))
            }
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "Aborting the transaction failed; trying again.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::debug!(%error, "Aborting the transaction: nothing to abort, or it went already.");
                return Ok(());
            }
        }
    }
    Err(TransactionError::Fatal(KafkaError::Canceled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transactional_id_is_stable_and_differs_between_replicas() {
        let mut a = Config::default();
        a.kafka.insert("group.id".into(), "g".into());
        a.store.path = "/tmp/journeyd-a".into();
        let mut b = a.clone();
        b.store.path = "/tmp/journeyd-b".into();
        assert_eq!(transactional_id(&a), transactional_id(&a.clone()));
        assert_ne!(transactional_id(&a), transactional_id(&b));
        assert!(transactional_id(&a).starts_with("g."));
        a.kafka
            .insert("group.instance.id".into(), "journeyd-0".into());
        assert_eq!(transactional_id(&a), "g.journeyd-0");
    }
}
