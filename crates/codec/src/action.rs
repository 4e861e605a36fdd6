//! Encoding actions for channel adapters, and decoding them back for tests and test clients.

use crate::avro::{self, Framing, Header};
use crate::error::{DecodeError, EncodeError};
use crate::registry::SchemaRegistry;
use crate::schema;
use crate::Format;
use journeyd_types::Action;
use std::collections::HashMap;
use std::sync::Mutex;

const WHAT: &str = "action";

/// Encodes actions for the per-channel action topics.
///
/// [`Format::Json`] writes the action's serde JSON (times as RFC 3339 in UTC). [`Format::Avro`]
/// writes an Avro datum of `schemas/action.avsc` in single-object framing, or, with a registry
/// ([`ActionEncoder::with_registry`]), in the Confluent wire format: the schema is registered
/// under the topic's subject (`{topic}-value`) on first use and the id cached per subject for the
/// life of the encoder. The encoder is `Send + Sync`.
#[derive(Debug)]
pub struct ActionEncoder {
    format: Format,
    registry: Option<SchemaRegistry>,
    ids: Mutex<HashMap<String, u32>>,
}

impl ActionEncoder {
    /// Makes an encoder for `format`; Avro uses single-object framing.
    pub fn new(format: Format) -> ActionEncoder {
        ActionEncoder {
            format,
            registry: None,
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// Makes an Avro encoder writing the Confluent wire format, registering the action schema
    /// with the schema registry at `url`.
    pub fn with_registry(url: impl Into<String>) -> ActionEncoder {
        ActionEncoder {
            format: Format::Avro,
            registry: Some(SchemaRegistry::new(url)),
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// The payload format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The registry subject of a topic's values (Confluent's topic-name strategy).
    pub fn subject_for(topic: &str) -> String {
        format!("{topic}-value")
    }

    /// Encodes one action bound for `topic` (used only to name the registry subject).
    ///
    /// Fails only with a registry (`registry_unavailable`, transient; `registry_rejected`) or
    /// when a journey version does not fit Avro's `int` (`unrepresentable`).
    pub fn encode(&self, action: &Action, topic: &str) -> Result<Vec<u8>, EncodeError> {
        match self.format {
            Format::Json => Ok(serde_json::to_vec(action)
                .unwrap_or_else(|e| panic!("an action always serialises to JSON: {e}"))),
            Format::Avro => {
                let framing = match &self.registry {
                    None => Framing::SingleObject,
                    Some(registry) => Framing::Confluent {
                        schema_id: self.schema_id(registry, &Self::subject_for(topic))?,
                    },
                };
                encode_action(action, framing)
            }
        }
    }

    fn schema_id(&self, registry: &SchemaRegistry, subject: &str) -> Result<u32, EncodeError> {
        if let Some(id) = self.lock().get(subject) {
            return Ok(*id);
        }
        let id = registry.register(subject, schema::ACTION_SCHEMA)?;
        self.lock().insert(subject.to_owned(), id);
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // Entries are inserted whole: a panic elsewhere cannot leave the map half-made.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Encodes an action as an Avro datum of the current action schema, framed as asked.
///
/// For [`Framing::Confluent`] the id must be one the registry gave the action schema. Var lists
/// and maps are written as strings holding their JSON text.
pub fn encode_action(action: &Action, framing: Framing) -> Result<Vec<u8>, EncodeError> {
    let known = schema::action();
    let datum = avro::write_action(action)?;
    Ok(avro::frame(framing, known.fingerprint, &datum))
}

/// Decodes an action written by [`ActionEncoder`] in any of its forms, recognised from the first
/// bytes: JSON (`{`), single-object (`C3 01`) or Confluent (`00`).
///
/// Confluent-framed datums are read with this build's action schema without asking the registry
/// for the id: this is for tests and test clients reading what this build wrote.
pub fn decode_action(bytes: &[u8]) -> Result<Action, DecodeError> {
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        return crate::json::parse(bytes).map_err(|e| DecodeError::BadJson {
            what: WHAT,
            why: e.message,
        });
    }
    let known = schema::action();
    let (writer, datum) = match avro::split_header(bytes, WHAT)? {
        (Header::SingleObject(fp), datum) => {
            let Some(writer) = schema::action_writers().iter().find(|w| w.matches(fp)) else {
                return Err(DecodeError::UnknownSchema(format!(
                    "single-object fingerprint {fp:016x} is not the action schema ({:016x}) \
                     nor an earlier one",
                    known.fingerprint
                )));
            };
            (writer, datum)
        }
        (Header::Confluent(_), datum) => (known, datum),
    };
    // An earlier writer schema is resolved into the current one.
    let reader = (!std::ptr::eq(writer, known)).then_some(&known.schema);
    let value = avro::read_datum(&writer.schema, reader, datum, WHAT)?;
    avro::avro_to_action(value).map_err(|why| DecodeError::BadAvro { what: WHAT, why })
}
