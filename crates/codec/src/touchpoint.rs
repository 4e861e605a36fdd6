//! Decoding touchpoints from Kafka payloads, and encoding them for test clients.

use crate::avro::{self, Framing, Header};
use crate::error::DecodeError;
use crate::registry::SchemaRegistry;
use crate::schema::{self, KnownSchema};
use crate::Format;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use journeyd_types::{Event, EventError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const WHAT: &str = "touchpoint";

/// Decodes touchpoint payloads of one topic into checked [`Event`]s.
///
/// With [`Format::Json`] a payload is one JSON object shaped as
/// [`Event::from_json`] reads it. With [`Format::Avro`] the framing is recognised from the first
/// bytes:
///
/// - `C3 01` + fingerprint: Avro single-object encoding. The fingerprint must be the one of the
///   current touchpoint schema or of an earlier version this crate keeps
///   ([`schema::TOUCHPOINT_SCHEMA_HISTORY`]); the datum is resolved to the current schema.
/// - `00` + schema id: Confluent wire format, only with a registry
///   ([`TouchpointDecoder::with_registry`]). The writer schema is fetched once per id, checked to
///   be readable as the current schema, and cached for the life of the decoder.
///
/// Every decoded event passes [`Event::check`]. The decoder is `Send + Sync`; share it between
/// threads behind an `Arc`. Fetching a schema blocks the calling thread (at most
/// [`REGISTRY_TIMEOUT`](crate::REGISTRY_TIMEOUT)), once per new schema id.
#[derive(Debug)]
pub struct TouchpointDecoder {
    format: Format,
    registry: Option<SchemaRegistry>,
    writers: Mutex<HashMap<u32, Arc<Writer>>>,
}

/// A registry writer schema, ready to decode with.
#[derive(Debug)]
enum Writer {
    /// The current schema itself: no resolution needed.
    Current,
    /// Another schema readable as the current one.
    Other(Schema),
}

impl TouchpointDecoder {
    /// Makes a decoder for payloads in `format`. Avro payloads must use single-object framing;
    /// Confluent-framed ones fail with `unknown_schema` for want of a registry.
    pub fn new(format: Format) -> TouchpointDecoder {
        TouchpointDecoder {
            format,
            registry: None,
            writers: Mutex::new(HashMap::new()),
        }
    }

    /// Makes an Avro decoder that also reads the Confluent wire format, fetching writer schemas
    /// from the schema registry at `url` (such as `http://registry:8081`).
    pub fn with_registry(url: impl Into<String>) -> TouchpointDecoder {
        TouchpointDecoder {
            format: Format::Avro,
            registry: Some(SchemaRegistry::new(url)),
            writers: Mutex::new(HashMap::new()),
        }
    }

    /// The payload format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Decodes one payload and checks the event.
    ///
    /// A [`DecodeError`] says why, with a stable [`reason`](DecodeError::reason); only
    /// `registry_unavailable` is [transient](DecodeError::is_transient).
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let event = match self.format {
            Format::Json => return decode_json(bytes),
            Format::Avro => self.decode_avro(bytes)?,
        };
        check(event)
    }

    fn decode_avro(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let reader = schema::touchpoint();
        let bad = |why| DecodeError::BadAvro { what: WHAT, why };
        // Written with the current schema: read directly (`avro::read_event`). Any other
        // writer schema: resolved to the current one by apache-avro.
        let value = match avro::split_header(bytes, WHAT)? {
            (Header::SingleObject(fp), datum) => {
                let writer = known_writer(fp)?;
                if writer.fingerprint == reader.fingerprint {
                    return avro::read_event(datum).map_err(bad);
                }
                avro::read_datum(&writer.schema, Some(&reader.schema), datum, WHAT)?
            }
            (Header::Confluent(id), datum) => match self.registry_writer(id)?.as_ref() {
                Writer::Current => return avro::read_event(datum).map_err(bad),
                Writer::Other(writer) => {
                    avro::read_datum(writer, Some(&reader.schema), datum, WHAT)?
                }
            },
        };
        avro::avro_to_event(value).map_err(bad)
    }

    /// Returns the writer schema registered under `id`, fetching it on first use.
    fn registry_writer(&self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        let Some(registry) = &self.registry else {
            return Err(DecodeError::UnknownSchema(format!(
                "Confluent-framed payload (schema id {id}) but no schema registry is configured"
            )));
        };
        if let Some(w) = self.lock().get(&id) {
            return Ok(Arc::clone(w));
        }
        // Not holding the lock while fetching: other ids keep decoding. Two threads may fetch the
        // same id at once; both get the same immutable schema.
        let text = registry.fetch_schema(id)?;
        let writer = Arc::new(writer_from_registry(id, &text)?);
        self.lock().insert(id, Arc::clone(&writer));
        Ok(writer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Writer>>> {
        // The map is only ever inserted into whole: a panic elsewhere cannot leave it half-made.
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn known_writer(fp: u64) -> Result<&'static KnownSchema, DecodeError> {
    schema::touchpoint_writers()
        .iter()
        .find(|s| s.matches(fp))
        .ok_or_else(|| {
            DecodeError::UnknownSchema(format!(
                "single-object fingerprint {fp:016x} is not a touchpoint schema this build knows \
                 (current: {:016x})",
                schema::touchpoint().fingerprint
            ))
        })
}

fn writer_from_registry(id: u32, text: &str) -> Result<Writer, DecodeError> {
    let reader = schema::touchpoint();
    let fp = schema::fingerprint(text)
        .map_err(|e| DecodeError::UnknownSchema(format!("registry schema id {id}: {e}")))?;
    if fp == reader.fingerprint {
        return Ok(Writer::Current);
    }
    let writer = Schema::parse_str(text).map_err(|e| {
        DecodeError::UnknownSchema(format!(
            "registry schema id {id} is not a valid Avro schema: {e}"
        ))
    })?;
    SchemaCompatibility::can_read(&writer, &reader.schema).map_err(|e| {
        DecodeError::UnknownSchema(format!(
            "registry schema id {id} cannot be read as dev.journeyd.Touchpoint: {e}"
        ))
    })?;
    Ok(Writer::Other(writer))
}

fn check(event: Event) -> Result<Event, DecodeError> {
    match event.check() {
        Ok(()) => Ok(event),
        Err(EventError::Empty("customer_id")) => Err(DecodeError::MissingCustomerId {
            event_id: event.event_id,
        }),
        Err(e) => Err(DecodeError::InvalidEvent(format!(
            "event `{}`: {e}",
            event.event_id
        ))),
    }
}

fn decode_json(bytes: &[u8]) -> Result<Event, DecodeError> {
    let bad = |why: String| DecodeError::BadJson { what: WHAT, why };
    match crate::json::parse::<Event>(bytes) {
        Ok(event) => check(event),
        // Well-formed JSON of the wrong shape: if the customer is what is missing, say so, since
        // that is the one problem producers most need to tell apart.
        Err(e) if e.is_data => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            match value.get("customer_id") {
                None | Some(serde_json::Value::Null) if value.is_object() => {
                    Err(DecodeError::MissingCustomerId {
                        event_id: value
                            .get("event_id")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                }
                _ => Err(bad(e.message)),
            }
        }
        Err(e) => Err(bad(e.message)),
    }
}

/// Encodes an event as an Avro touchpoint with the current schema, framed as asked.
///
/// For [`Framing::Confluent`], the id must be one the registry gave the touchpoint schema
/// ([`SchemaRegistry::register`] with [`schema::TOUCHPOINT_SCHEMA`]). Attribute lists and maps
/// are written as strings holding their JSON text.
pub fn encode_touchpoint(event: &Event, framing: Framing) -> Vec<u8> {
    let known = schema::touchpoint();
    let datum = avro::write_event(event);
    avro::frame(framing, known.fingerprint, &datum)
}
