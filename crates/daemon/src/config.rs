//! Configuration: built-in defaults, then the TOML file, then `JOURNEYD__SECTION__KEY`
//! environment variables, then command-line flags. Unknown keys are errors.
//!
//! Kafka client settings live in `[kafka]` and go to librdkafka as they are; in the environment
//! `JOURNEYD__KAFKA__BOOTSTRAP_SERVERS=host:9092` sets `bootstrap.servers` (underscores become
//! dots).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown key.
    #[error("invalid configuration ({origin}): {message}")]
    Invalid {
        /// Where the bad value came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// The producer's `transaction.timeout.ms` under `exactly_once` unless `[kafka]` sets one
/// (librdkafka's default): a batch's transaction stays open while the next batch is read and
/// processed, retries of a schema registry or the store included.
pub const TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// librdkafka's default `message.max.bytes`: the largest message the producer takes.
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where journeys come from.
    pub journeys: JourneysConfig,
    /// librdkafka client settings, passed through (`bootstrap.servers`, `group.id`, security...).
    pub kafka: BTreeMap<String, String>,
    /// Input topics and their formats.
    pub inputs: Vec<InputConfig>,
    /// Output topics.
    pub outputs: OutputConfig,
    /// A Confluent-compatible schema registry; when set, Avro uses the Confluent wire format.
    pub schema_registry: Option<RegistryConfig>,
    /// The state store.
    pub store: StoreConfig,
    /// Batching, limits and the processing clock.
    pub processing: ProcessingConfig,
    /// The HTTP endpoint (metrics, health, customer lookup).
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The operator API and the control topic.
    pub admin: crate::admin::AdminConfig,
}

/// Where journeys come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JourneysConfig {
    /// The journeys folder (validated at start; SIGHUP reloads it).
    pub dir: PathBuf,
}

/// Encoding of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Avro (single-object encoding, or Confluent framing with a schema registry).
    Avro,
    /// One JSON object per message.
    Json,
}

/// An input topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The topic (message key = customer id).
    pub topic: String,
    /// How its messages are encoded.
    #[serde(default = "default_input_encoding")]
    pub format: Encoding,
}

fn default_input_encoding() -> Encoding {
    Encoding::Avro
}

/// Output topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The action topic of a channel; `{channel}` is replaced by the channel name.
    pub actions_topic: String,
    /// How actions are encoded.
    pub actions_format: Encoding,
    /// Where undecodable or invalid input goes, with headers naming the reason.
    pub dead_letter_topic: String,
    /// The most payload bytes a dead letter keeps (a longer payload is cut, and headers say
    /// so). With room for the key and headers it must fit the producer's `message.max.bytes`.
    pub dead_letter_max_bytes: usize,
    /// Where actions go that Kafka refuses for good (too large, not authorised, no such
    /// topic, a schema the registry rejects), as JSON with the reason in headers.
    pub action_dead_letter_topic: String,
}

/// A schema registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, such as `http://registry:8081`.
    pub url: String,
}

/// The state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The RocksDB directory.
    pub path: PathBuf,
    /// RocksDB block cache, in MiB.
    pub block_cache_mb: u64,
    /// The cache of customer states last written, in MiB (0: none). A customer's state is
    /// read before every change; recently written ones come from here.
    pub state_cache_mb: u64,
    /// fsync every write batch (slower; the default relies on Kafka replay after a machine crash).
    pub sync_writes: bool,
    /// Produce every change of customer state to a compacted changelog topic, and restore a
    /// partition's customers from it when the partition is assigned here: partitions, and
    /// their customers, move between replicas. Off: state stays on the replica that wrote it
    /// (one replica only).
    pub changelog: bool,
    /// The changelog topic; empty: `<group.id>.changelog`. It has as many partitions as the
    /// input topics, `cleanup.policy=compact`; journeyd creates it when it is missing.
    pub changelog_topic: String,
    /// Warm copies of the partitions this replica does not own: 1 keeps every one of them up
    /// to date from the changelog (a round a second), so that when one is assigned here its
    /// restore reads only the last second's tail. Replicas cannot see each other, so they
    /// cannot share the copies out as Kafka Streams' assignor does: with N replicas each
    /// partition has N - 1 warm copies, and every replica holds every customer. 0 (the
    /// default): none.
    pub standby_replicas: usize,
}

/// Batching, limits and the processing clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// The most messages in one batch.
    pub batch_max_messages: usize,
    /// The longest a batch waits to fill, in milliseconds; it closes sooner when the stream
    /// pauses (2 ms without a message).
    pub batch_linger_ms: u64,
    /// Messages larger than this go to the dead-letter topic (`oversized`).
    pub max_event_bytes: usize,
    /// Events that occurred further than this in the future go to the dead-letter topic
    /// (`occurred_at_in_future`), in seconds.
    pub max_future_skew_secs: u64,
    /// The most due timers fired in one batch.
    pub timer_batch: usize,
    /// The most batches whose actions are on their way to Kafka at once. 1 (the default)
    /// sends a batch only once the previous batch's actions are acknowledged. More queues a
    /// batch's messages behind the previous batch's (in batch order all the same, which needs
    /// the idempotent producer), and pays when acknowledgements take longer than processing a
    /// batch (a distant broker). The cost: when a send fails with an error that may pass (after
    /// `message.timeout.ms`, a broker away), a cancel of a later batch can reach an adapter
    /// before that send; the batches are then produced again in order, so a copy of the
    /// cancel comes after the send. (A send Kafka refuses for good goes to the action
    /// dead-letter topic whatever this is.)
    pub batches_in_flight: usize,
    /// Run the processing clock this many times faster than real time (demo and staging only).
    pub clock_speed: f64,
    /// Allow `clock_speed` other than 1 with a real broker.
    pub force_clock_speed: bool,
    /// History records kept per customer.
    pub history_limit: usize,
    /// How long a batch may go without landing (its actions acknowledged and its write in
    /// the store) before `/readyz` says the service is stalled, in seconds.
    pub stall_timeout_secs: u64,
    /// What a crash may cost: `at_least_once` (a batch in flight at a crash is sent again,
    /// and channel adapters de-duplicate on the action id) or `exactly_once` (one Kafka
    /// transaction per batch holds its actions, dead letters, changelog records and consumed
    /// offsets: adapters reading with `isolation.level=read_committed` see each action once).
    /// `exactly_once` needs the changelog, one batch in flight, and a broker with
    /// transactions.
    pub guarantee: Guarantee,
}

/// The delivery guarantee (`processing.guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// A batch in flight at a crash is produced again (same ids, same content).
    #[default]
    AtLeastOnce,
    /// One transaction per batch: nothing of a batch is visible to read_committed readers
    /// unless all of it is, its consumed offsets included.
    ExactlyOnce,
}

/// The HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; empty disables the endpoint.
    pub listen: String,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Text or JSON.
    pub format: LogFormat,
    /// A tracing filter, such as `info` or `journeyd=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            journeys: JourneysConfig::default(),
            kafka: [
                ("bootstrap.servers", "localhost:9092"),
                ("group.id", "journeyd"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            inputs: vec![InputConfig {
                topic: "touchpoints".into(),
                format: Encoding::Avro,
            }],
            outputs: OutputConfig::default(),
            schema_registry: None,
            store: StoreConfig::default(),
            processing: ProcessingConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            admin: crate::admin::AdminConfig::default(),
        }
    }
}

impl Default for JourneysConfig {
    fn default() -> Self {
        JourneysConfig {
            dir: PathBuf::from("journeys"),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            actions_topic: "actions.{channel}".into(),
            actions_format: Encoding::Avro,
            dead_letter_topic: "touchpoints.dlq".into(),
            dead_letter_max_bytes: 256 * 1024,
            action_dead_letter_topic: "actions.dlq".into(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data/journeyd"),
            block_cache_mb: 256,
            state_cache_mb: 64,
            sync_writes: false,
            changelog: true,
            changelog_topic: String::new(),
            standby_replicas: 0,
        }
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            batch_max_messages: 1000,
            batch_linger_ms: 20,
            max_event_bytes: 1 << 20,
            max_future_skew_secs: 300,
            timer_batch: 5000,
            batches_in_flight: 1,
            clock_speed: 1.0,
            force_clock_speed: false,
            history_limit: 64,
            stall_timeout_secs: 30,
            guarantee: Guarantee::AtLeastOnce,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// The changelog topic, when the changelog is on (see [`StoreConfig::changelog`]).
    pub fn changelog_topic(&self) -> Option<String> {
        if !self.store.changelog {
            return None;
        }
        if !self.store.changelog_topic.is_empty() {
            return Some(self.store.changelog_topic.clone());
        }
        let group = self
            .kafka
            .get("group.id")
            .map_or("journeyd", String::as_str);
        Some(format!("{group}.changelog"))
    }

    /// The control topic (journey statuses): `admin.control_topic`, else `<group.id>.control`.
    pub fn control_topic(&self) -> Option<String> {
        if !self.admin.control_topic.is_empty() {
            return Some(self.admin.control_topic.clone());
        }
        let group = self
            .kafka
            .get("group.id")
            .map_or("journeyd", String::as_str);
        Some(format!("{group}.control"))
    }

    /// The counts topic (each partition's counts, for the deployment's sums):
    /// `admin.counts_topic`, else `<group.id>.counts`.
    pub fn counts_topic(&self) -> String {
        if !self.admin.counts_topic.is_empty() {
            return self.admin.counts_topic.clone();
        }
        let group = self
            .kafka
            .get("group.id")
            .map_or("journeyd", String::as_str);
        format!("{group}.counts")
    }

    /// The action topic of a channel.
    pub fn actions_topic(&self, channel: &str) -> String {
        self.outputs.actions_topic.replace("{channel}", channel)
    }

    /// Builds the configuration: defaults, then `file` (when given), then the environment
    /// variables starting with `JOURNEYD__`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut merged =
            toml::Value::try_from(Config::default()).map_err(|e| invalid("defaults", e))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let origin = path.display().to_string();
            let from_file: toml::Value = toml::from_str(&text).map_err(|e| invalid(&origin, e))?;
            merge(&mut merged, from_file);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("JOURNEYD__") else {
                continue;
            };
            let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.first().is_some_and(|p| p == "kafka") && path.len() == 2 {
                path[1] = path[1].replace('_', ".");
                set(&mut merged, &path, toml::Value::String(value));
            } else {
                set(&mut merged, &path, parse_scalar(&value));
            }
        }
        let config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| invalid("file and environment", e))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(invalid("configuration", m));
        if self.inputs.is_empty() {
            return bad("at least one [[inputs]] topic is needed");
        }
        if self.store.changelog && self.inputs.len() > 1 {
            if let Some(s) = self.kafka.get("partition.assignment.strategy") {
                if s.trim() != "range" {
                    return bad(
                        "with the changelog on and several input topics, partition p of every \
                         input topic must go to the same replica: kafka.\"partition.assignment.strategy\" \
                         must be \"range\" (the default then), or store.changelog = false",
                    );
                }
            }
        }
        if !self.outputs.actions_topic.contains("{channel}") {
            return bad("outputs.actions_topic must contain {channel}");
        }
        if !(self.processing.clock_speed.is_finite() && self.processing.clock_speed > 0.0) {
            return bad("processing.clock_speed must be a positive number");
        }
        // Values that feed time arithmetic, bounded so that no sum or product can overflow.
        let p = &self.processing;
        for (key, value, most) in [
            ("max_future_skew_secs", p.max_future_skew_secs, 365 * 86_400),
            ("stall_timeout_secs", p.stall_timeout_secs, 86_400),
            ("batch_linger_ms", p.batch_linger_ms, 60_000),
        ] {
            if value > most {
                return bad(&format!(
                    "processing.{key} = {value} is out of range: at most {most}"
                ));
            }
        }
        if p.stall_timeout_secs == 0 {
            return bad("processing.stall_timeout_secs must be at least 1");
        }
        if p.clock_speed > 1e6 {
            return bad("processing.clock_speed is out of range: at most 1000000");
        }
        if self.processing.batch_max_messages == 0
            || self.processing.timer_batch == 0
            || self.processing.batches_in_flight == 0
        {
            return bad(
                "processing.batch_max_messages, timer_batch and batches_in_flight must be positive",
            );
        }
        let producer_max = match self.kafka.get("message.max.bytes") {
            None => LIBRDKAFKA_MESSAGE_MAX_BYTES,
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                invalid(
                    "configuration",
                    format!("kafka message.max.bytes must be a whole number of bytes, not `{v}`"),
                )
            })?,
        };
        let room = crate::dead_letters::ROOM_BESIDE_PAYLOAD;
        if self.outputs.dead_letter_max_bytes.saturating_add(room) > producer_max {
            return bad(&format!(
                "outputs.dead_letter_max_bytes ({}) leaves no room for a dead letter's key and \
                 headers ({room} bytes) under the producer's message.max.bytes ({producer_max}): \
                 lower it to {} or less, or raise kafka message.max.bytes (and the topic's \
                 max.message.bytes)",
                self.outputs.dead_letter_max_bytes,
                producer_max.saturating_sub(room)
            ));
        }
        // Anything but a plain yes counts as off (librdkafka reads false, 0, f... as false).
        let idempotent = self
            .kafka
            .get("enable.idempotence")
            .is_none_or(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "t" | "1"));
        if self.store.standby_replicas > 1 {
            return bad(&format!(
                "store.standby_replicas = {}: journeyd keeps 0 or 1: with 1 each replica warms \
                 every partition it does not own (replicas cannot see each other to share them \
                 out), so N replicas already hold N - 1 copies of each",
                self.store.standby_replicas
            ));
        }
        if self.store.standby_replicas > 0 && !self.store.changelog {
            return bad("store.standby_replicas needs the changelog (store.changelog = true)");
        }
        if self.processing.guarantee == Guarantee::ExactlyOnce {
            if !self.store.changelog {
                return bad(
                    "processing.guarantee = exactly_once needs the changelog (store.changelog = \
                     true): a batch's state changes go in its transaction",
                );
            }
            if self.processing.batches_in_flight > 1 {
                return bad(
                    "processing.guarantee = exactly_once sends one batch at a time (one \
                     transaction each): set processing.batches_in_flight = 1",
                );
            }
            if !idempotent {
                return bad(
                    "processing.guarantee = exactly_once needs the idempotent producer (kafka \
                     enable.idempotence)",
                );
            }
            let number = |key: &str| -> Result<Option<u64>, ConfigError> {
                self.kafka
                    .get(key)
                    .map(|v| {
                        v.trim().parse::<u64>().map_err(|_| {
                            invalid(
                                "configuration",
                                format!("kafka {key} must be a whole number of ms, not `{v}`"),
                            )
                        })
                    })
                    .transpose()
            };
            let transaction = number("transaction.timeout.ms")?.unwrap_or(TRANSACTION_TIMEOUT_MS);
            for key in ["message.timeout.ms", "delivery.timeout.ms"] {
                if let Some(ms) = number(key)? {
                    if ms > transaction {
                        return bad(&format!(
                            "kafka {key} ({ms}) is longer than transaction.timeout.ms \
                             ({transaction}): under exactly_once a message must give up before \
                             its transaction does; lower it or raise transaction.timeout.ms"
                        ));
                    }
                }
            }
        }
        if self.processing.batches_in_flight > 1 && !idempotent {
            return bad(
                "processing.batches_in_flight above 1 needs the idempotent producer \
                 (kafka enable.idempotence): without it Kafka may reorder a batch's retried sends \
                 behind the next batch's",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--dump-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn invalid(origin: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        message: e.to_string(),
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        let toml::Value::Table(t) = node else {
            return;
        };
        if i == path.len() - 1 {
            t.insert(key.clone(), value);
            return;
        }
        node = t
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
}

fn parse_scalar(text: &str) -> toml::Value {
    if let Ok(b) = text.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = text.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("journeyd.toml");
        std::fs::write(
            &file,
            "[kafka]\n\"bootstrap.servers\" = \"file:9092\"\n\"security.protocol\" = \"SSL\"\n[processing]\nbatch_max_messages = 50\n[[inputs]]\ntopic = \"web\"\nformat = \"json\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "JOURNEYD__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "env:9092".to_owned(),
            ),
            (
                "JOURNEYD__PROCESSING__BATCH_LINGER_MS".to_owned(),
                "5".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.kafka["bootstrap.servers"], "env:9092");
        assert_eq!(c.kafka["security.protocol"], "SSL");
        assert_eq!(c.kafka["group.id"], "journeyd", "defaults stay");
        assert_eq!(c.processing.batch_max_messages, 50);
        assert_eq!(c.processing.batch_linger_ms, 5);
        assert_eq!(
            c.inputs,
            vec![InputConfig {
                topic: "web".into(),
                format: Encoding::Json
            }]
        );
        assert_eq!(c.actions_topic("sms"), "actions.sms");
        // The dump reads back as the same configuration.
        let again: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("journeyd.toml");
        std::fs::write(&file, "[processing]\nbatch_size = 5\n").unwrap();
        let e = Config::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let env = vec![(
            "JOURNEYD__PROCESSING__CLOCK_SPEED".to_owned(),
            "-2".to_owned(),
        )];
        assert!(Config::load(None, env).is_err());
        let env = vec![(
            "JOURNEYD__OUTPUTS__ACTIONS_TOPIC".to_owned(),
            "actions".to_owned(),
        )];
        assert!(Config::load(None, env)
            .unwrap_err()
            .to_string()
            .contains("{channel}"));
        let env = vec![(
            "JOURNEYD__PROCESSING__BATCHES_IN_FLIGHT".to_owned(),
            "0".to_owned(),
        )];
        assert!(Config::load(None, env)
            .unwrap_err()
            .to_string()
            .contains("batches_in_flight"));
        let env = |in_flight: &str| {
            vec![
                (
                    "JOURNEYD__PROCESSING__BATCHES_IN_FLIGHT".to_owned(),
                    in_flight.to_owned(),
                ),
                (
                    "JOURNEYD__KAFKA__ENABLE_IDEMPOTENCE".to_owned(),
                    "false".to_owned(),
                ),
            ]
        };
        let e = Config::load(None, env("2")).unwrap_err().to_string();
        assert!(e.contains("idempotent"), "{e}");
        assert!(Config::load(None, env("1")).is_ok());
        let exactly_once = |more: &[(&str, &str)]| {
            let mut env = vec![(
                "JOURNEYD__PROCESSING__GUARANTEE".to_owned(),
                "exactly_once".to_owned(),
            )];
            env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Config::load(None, env).map_err(|e| e.to_string())
        };
        assert_eq!(
            exactly_once(&[]).unwrap().processing.guarantee,
            Guarantee::ExactlyOnce
        );
        let e = exactly_once(&[("JOURNEYD__STORE__CHANGELOG", "false")]).unwrap_err();
        assert!(e.contains("needs the changelog"), "{e}");
        let e = exactly_once(&[("JOURNEYD__PROCESSING__BATCHES_IN_FLIGHT", "2")]).unwrap_err();
        assert!(e.contains("batches_in_flight = 1"), "{e}");
        let e = exactly_once(&[("JOURNEYD__KAFKA__ENABLE_IDEMPOTENCE", "false")]).unwrap_err();
        assert!(e.contains("idempotent producer"), "{e}");
        let e = exactly_once(&[("JOURNEYD__KAFKA__MESSAGE_TIMEOUT_MS", "300000")]).unwrap_err();
        assert!(e.contains("longer than transaction.timeout.ms"), "{e}");
        assert!(exactly_once(&[
            ("JOURNEYD__KAFKA__MESSAGE_TIMEOUT_MS", "300000"),
            ("JOURNEYD__KAFKA__TRANSACTION_TIMEOUT_MS", "300000"),
        ])
        .is_ok());
        let e = exactly_once(&[("JOURNEYD__PROCESSING__GUARANTEE", "twice")]);
        assert!(e.is_err());
        let standby = |n: &str, changelog: &str| {
            let env = vec![
                ("JOURNEYD__STORE__STANDBY_REPLICAS".to_owned(), n.to_owned()),
                (
                    "JOURNEYD__STORE__CHANGELOG".to_owned(),
                    changelog.to_owned(),
                ),
            ];
            Config::load(None, env).map_err(|e| e.to_string())
        };
        assert_eq!(standby("1", "true").unwrap().store.standby_replicas, 1);
        let e = standby("2", "true").unwrap_err();
        assert!(e.contains("0 or 1") && e.contains("N - 1 copies"), "{e}");
        let e = standby("1", "false").unwrap_err();
        assert!(e.contains("needs the changelog"), "{e}");
        let with = |idempotence: &str| {
            vec![
                (
                    "JOURNEYD__PROCESSING__BATCHES_IN_FLIGHT".to_owned(),
                    "2".to_owned(),
                ),
                (
                    "JOURNEYD__KAFKA__ENABLE_IDEMPOTENCE".to_owned(),
                    idempotence.to_owned(),
                ),
            ]
        };
        assert!(Config::load(None, with("0")).is_err());
        assert!(Config::load(None, with("FALSE")).is_err());
        assert!(Config::load(None, with("True")).is_ok());
    }

    #[test]
    fn values_that_feed_time_arithmetic_are_bounded_and_named() {
        let with = |key: &str, value: &str| {
            Config::load(
                None,
                vec![(format!("JOURNEYD__PROCESSING__{key}"), value.to_owned())],
            )
        };
        let e = with("MAX_FUTURE_SKEW_SECS", "9223372036854775807")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("processing.max_future_skew_secs") && e.contains("out of range"),
            "{e}"
        );
        assert!(with("MAX_FUTURE_SKEW_SECS", "31536000").is_ok());
        for (key, bad) in [
            ("STALL_TIMEOUT_SECS", "0"),
            ("STALL_TIMEOUT_SECS", "86401"),
            ("BATCH_LINGER_MS", "60001"),
            ("CLOCK_SPEED", "1e9"),
        ] {
            let e = with(key, bad).unwrap_err().to_string();
            assert!(e.contains(&key.to_ascii_lowercase()), "{key}: {e}");
        }
    }

    #[test]
    fn every_dead_letter_fits_what_the_producer_takes() {
        let c = Config::default();
        assert!(
            c.outputs.dead_letter_max_bytes + crate::dead_letters::ROOM_BESIDE_PAYLOAD
                <= LIBRDKAFKA_MESSAGE_MAX_BYTES
        );
        let env = |bytes: &str, max: Option<&str>| {
            let mut v = vec![(
                "JOURNEYD__OUTPUTS__DEAD_LETTER_MAX_BYTES".to_owned(),
                bytes.to_owned(),
            )];
            if let Some(m) = max {
                v.push((
                    "JOURNEYD__KAFKA__MESSAGE_MAX_BYTES".to_owned(),
                    m.to_owned(),
                ));
            }
            v
        };
        let e = Config::load(None, env("1000000", None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outputs.dead_letter_max_bytes") && e.contains("message.max.bytes"),
            "{e}"
        );
        assert!(Config::load(None, env("1000000", Some("2000000"))).is_ok());
        assert!(Config::load(None, env("100", Some("lots"))).is_err());
    }

    #[test]
    fn the_shipped_example_config_parses_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/journeyd.toml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            c,
            Config::default(),
            "deploy/journeyd.toml documents the defaults"
        );
    }
}
