//! The changelog topic at start: it must have as many partitions as the input topics (a
//! customer's records go to the partition number their events come from), and the inputs must
//! agree with each other. A missing changelog is created, compacted; a wrong one stops the
//! start with what to do.

use crate::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// Why the changelog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker did not answer.
    #[error("cannot read the topics' metadata from Kafka: {0}")]
    Metadata(rdkafka::error::KafkaError),
    /// An input topic is missing.
    #[error(
        "input topic {0} does not exist: the changelog needs its partition count (create the \
         input topics first, or set store.changelog = false to run one replica without one)"
    )]
    MissingInput(String),
    /// The inputs differ in partition count.
    #[error(
        "the input topics have different partition counts ({0}): a customer's events must come \
         from the same partition number in every input topic for their state to move with it; \
         give them the same count"
    )]
    InputsDiffer(String),
    /// The changelog has another partition count.
    #[error(
        "the changelog topic {topic} has {found} partitions but the input topics have \
         {expected}: every input partition keeps its customers in the changelog partition of \
         the same number. Use a new changelog topic (store.changelog_topic) with {expected} \
         partitions; changing the partition count of a running deployment is not supported"
    )]
    Mismatch {
        /// The changelog topic.
        topic: String,
        /// Its partition count.
        found: usize,
        /// The inputs' partition count.
        expected: usize,
    },
    /// The changelog is missing and could not be created.
    #[error(
        "the changelog topic {topic} does not exist and could not be created ({reason}): \
         create it with {partitions} partitions and cleanup.policy=compact, for example \
         `kafka-topics.sh --create --topic {topic} --partitions {partitions} --config \
         cleanup.policy=compact`, or set store.changelog = false to run one replica without one"
    )]
    Create {
        /// The changelog topic.
        topic: String,
        /// How many partitions it needs.
        partitions: usize,
        /// What the broker said.
        reason: String,
    },
}

impl TopicError {
    /// Whether asking again later may succeed: the broker is not reachable yet, or an input
    /// topic is not created yet.
    pub fn is_transient(&self) -> bool {
        matches!(self, TopicError::Metadata(_) | TopicError::MissingInput(_))
    }
}

/// Checks the changelog topic `topic` against the inputs, creating it when missing; returns
/// its partition count.
pub async fn ensure(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
) -> Result<usize, TopicError> {
    let counts = {
        let client = client.clone();
        let inputs: Vec<String> = config.inputs.iter().map(|i| i.topic.clone()).collect();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || partition_counts(&client, &inputs, &topic))
            .await
            .expect("the metadata read does not panic")?
    };
    let (inputs, changelog) = counts;
    let expected = inputs[0].1;
    if inputs.iter().any(|(_, n)| *n != expected) {
        let list: Vec<String> = inputs.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        return Err(TopicError::InputsDiffer(list.join(", ")));
    }
    match changelog {
        Some(found) if found == expected => Ok(found),
        Some(found) => Err(TopicError::Mismatch {
            topic: topic.to_owned(),
            found,
            expected,
        }),
        None => {
            create(client, topic, expected).await?;
            tracing::info!(
                topic,
                partitions = expected,
                "Created the changelog topic (cleanup.policy=compact)."
            );
            Ok(expected)
        }
    }
}

/// The partition count of each input topic, and of the changelog if it exists.
type Counts = (Vec<(String, usize)>, Option<usize>);

/// Reads the partition counts of the inputs and of the changelog.
fn partition_counts(
    client: &ClientConfig,
    inputs: &[String],
    changelog: &str,
) -> Result<Counts, TopicError> {
    let mut client = client.clone();
    // Asking about a topic must not create it.
    client.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = client.create().map_err(TopicError::Metadata)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(TopicError::Metadata)?;
    let count = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
    };
    let inputs = inputs
        .iter()
        .map(|t| {
            count(t)
                .map(|n| (t.clone(), n))
                .ok_or_else(|| TopicError::MissingInput(t.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((inputs, count(changelog)))
}

async fn create(client: &ClientConfig, topic: &str, partitions: usize) -> Result<(), TopicError> {
    create_compacted(client, topic, partitions)
        .await
        .map_err(|reason| TopicError::Create {
            topic: topic.to_owned(),
            partitions,
            reason,
        })
}

/// Creates a compacted topic (the broker's default replication factor); one that another
/// replica created meanwhile is fine. The error is the broker's or the client's reason.
pub(crate) async fn create_compacted(
    client: &ClientConfig,
    topic: &str,
    partitions: usize,
) -> Result<(), String> {
    create_compacted_with(client, topic, partitions, &[]).await
}

/// [`create_compacted`], with more topic settings.
pub(crate) async fn create_compacted_with(
    client: &ClientConfig,
    topic: &str,
    partitions: usize,
    settings: &[(&str, &str)],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| e.to_string())?;
    let new = NewTopic::new(
        topic,
        partitions as i32,
        // The broker's default replication factor (KIP-464).
        TopicReplication::Fixed(-1),
    )
    .set("cleanup.policy", "compact");
    let new = settings.iter().fold(new, |n, (k, v)| n.set(k, v));
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(15)))
        .operation_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(_) => {}
            // Another replica created it meanwhile.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(())
}
