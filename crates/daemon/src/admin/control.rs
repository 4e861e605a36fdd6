//! The control topic: journey status changes, recorded by the operator API and applied by every
//! replica.
//!
//! One compacted partition (`admin.control_topic`, default `journeyd.control`), keyed by journey
//! id, so compaction keeps each journey's latest status for ever; the value is JSON:
//! `{"journey":"promo","status":"paused","at":"2026-06-01T09:00:00Z","by":"oncall"}`.
//! Every replica reads it to its end before it processes input (a restart keeps every status)
//! and then follows it, applying each change to its engine within a poll (100 ms). A reload
//! keeps the statuses (see [`crate::service::Shared::set_status`]).

use crate::config::Config;
use crate::service::Shared;
use journeyd_engine::Status;
use journeyd_types::{time, Millis};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A journey's status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The journey id.
    pub journey: String,
    /// The new status.
    #[serde(with = "status_word")]
    pub status: Status,
    /// When the operator API accepted it.
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
    /// The token that asked for it.
    pub by: String,
}

mod status_word {
    use journeyd_engine::Status;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Status, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
        let word = String::deserialize(d)?;
        super::status_of(&word).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown status `{word}`: running, paused, draining or stopped"
            ))
        })
    }
}

/// A status by its word (`running`, `paused`, `draining`, `stopped`).
pub fn status_of(word: &str) -> Option<Status> {
    Some(match word {
        "running" => Status::Running,
        "paused" => Status::Paused,
        "draining" => Status::Draining,
        "stopped" => Status::Stopped,
        _ => return None,
    })
}

/// Why the control topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The broker did not answer.
    #[error("cannot read the control topic {topic} from Kafka: {reason}")]
    Kafka {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// It is missing and could not be created.
    #[error(
        "the control topic {topic} does not exist and could not be created ({reason}): create \
         it with one partition and cleanup.policy=compact, for example `kafka-topics.sh --create \
         --topic {topic} --partitions 1 --config cleanup.policy=compact`"
    )]
    Create {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

impl ControlError {
    /// Whether trying again later may help (the broker not answering yet).
    pub fn is_transient(&self) -> bool {
        matches!(self, ControlError::Kafka { .. })
    }

    /// The error of a Kafka call on `topic`.
    fn kafka(topic: &str) -> impl Fn(rdkafka::error::KafkaError) -> ControlError + Copy + '_ {
        move |e| ControlError::Kafka {
            topic: topic.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// The settings of the control topic's reader: the service's client settings without the
/// group (it reads the one partition from the beginning, and commits nothing).
pub(crate) fn reader_config(config: &Config) -> ClientConfig {
    let mut c = crate::service::probe_client_config(config);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("isolation.level", "read_committed");
    // The end of the partition is found from the watermarks, not reported as an error.
    c.set("enable.partition.eof", "false");
    // A broker that holds a fetch for its whole wait would delay every change by it.
    c.set("fetch.wait.max.ms", "50");
    // librdkafka wants a group even to assign partitions by hand; none is joined.
    c.set("group.id", "journeyd-control");
    c
}

/// Creates the control topic when missing.
pub async fn ensure(config: &Config, topic: &str) -> Result<(), ControlError> {
    let client = reader_config(config);
    let exists = {
        let (client, topic) = (client.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<bool, ControlError> {
            let mut client = client;
            client.set("allow.auto.create.topics", "false");
            let kafka = ControlError::kafka(&topic);
            let consumer: BaseConsumer = client.create().map_err(kafka)?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(kafka)?;
            Ok(metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .expect("the metadata read does not panic")?
    };
    if !exists {
        crate::changelog::topic::create_compacted(&client, topic, 1)
            .await
            .map_err(|reason| ControlError::Create {
                topic: topic.to_owned(),
                reason,
            })?;
        tracing::info!(topic, "Created the control topic (cleanup.policy=compact).");
    }
    Ok(())
}

/// Records a status change; returns once Kafka has it.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    change: &StatusChange,
) -> Result<(), String> {
    let value = serde_json::to_vec(change).map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(change.journey.as_bytes())
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// Applies one record of the control topic; a record that cannot be read is logged and
/// skipped (it cannot be fixed by reading it again).
fn apply(shared: &Shared, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64) {
    let Some(payload) = payload else {
        // A tombstone (someone deleted the journey's record): no status but running.
        if let Some(journey) = key.and_then(|k| std::str::from_utf8(k).ok()) {
            shared.set_status(journey, Status::Running, shared.clock.now());
        }
        return;
    };
    match serde_json::from_slice::<StatusChange>(payload) {
        Ok(change) => {
            if shared.status_of(&change.journey) != change.status {
                tracing::info!(
                    journey = %change.journey,
                    status = change.status.as_str(),
                    by = %change.by,
                    "Journey status changed."
                );
            }
            shared.set_status(&change.journey, change.status, change.at);
        }
        Err(error) => tracing::warn!(offset, %error, "A control record cannot be read; skipped."),
    }
}

/// The thread that follows the control topic: stopped and joined when dropped (it holds the
/// shared state, and with it the store).
#[derive(Debug)]
pub struct Follower {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the control topic to its end (every status recorded so far is in force before any
/// input is processed), then follows it on a thread of its own until `shutdown`, or until the
/// [`Follower`] is dropped.
pub async fn follow(
    shared: Arc<Shared>,
    topic: String,
    shutdown: CancellationToken,
) -> Result<Follower, ControlError> {
    let shutdown = shutdown.child_token();
    let consumer: BaseConsumer = reader_config(&shared.config)
        .create()
        .map_err(ControlError::kafka(&topic))?;
    let kafka = ControlError::kafka(&topic);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let (consumer, shared2, topic2) = (consumer, shared.clone(), topic.clone());
    let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer, ControlError> {
        let kafka = ControlError::kafka(&topic2);
        let (low, high) = consumer
            .fetch_watermarks(&topic2, 0, Duration::from_secs(10))
            .map_err(kafka)?;
        let started = Instant::now();
        // From the first offset the topic still has (compaction or retention may have removed
        // the ones before); an empty topic has nothing to read.
        let mut next = low;
        while next < high {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(ControlError::Kafka {
                    topic: topic2.clone(),
                    reason: format!("read to offset {next} of {high} in 60 s"),
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    apply(&shared2, m.key(), m.payload(), m.offset());
                    next = m.offset() + 1;
                }
                Some(Err(e)) => return Err(kafka(e)),
                None => {
                    // Past transaction markers and compacted records: the position says.
                    if let Ok(Some(p)) = consumer
                        .position()
                        .map(|tpl| tpl.elements().first().and_then(|e| e.offset().to_raw()))
                    {
                        next = next.max(p);
                    }
                }
            }
        }
        Ok(consumer)
    })
    .await
    .expect("the control read does not panic")?;
    tracing::info!(
        topic = %topic,
        statuses = shared.statuses().len(),
        "Read the control topic: journey statuses in force."
    );
    shared.sweeps.ready();
    let stop = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("journeyd-control".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => apply(&shared, m.key(), m.payload(), m.offset()),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Reading the control topic; trying again.");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    None => {}
                }
            }
        })
        .map_err(|e| ControlError::Kafka {
            topic,
            reason: format!("cannot start its reader: {e}"),
        })?;
    Ok(Follower {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reads_back_and_bad_words_are_refused() {
        let change = StatusChange {
            journey: "promo".into(),
            status: Status::Draining,
            at: time::parse_rfc3339("2026-06-01T09:00:00Z").unwrap(),
            by: "oncall".into(),
        };
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(
            text,
            r#"{"journey":"promo","status":"draining","at":"2026-06-01T09:00:00Z","by":"oncall"}"#
        );
        assert_eq!(serde_json::from_str::<StatusChange>(&text).unwrap(), change);
        let bad = text.replace("draining", "sleeping");
        let e = serde_json::from_str::<StatusChange>(&bad).unwrap_err();
        assert!(e.to_string().contains("unknown status `sleeping`"), "{e}");
    }
}
