//! Wire encodings of journeyd: touchpoints in, actions out, as JSON or Avro.
//!
//! - [`TouchpointDecoder`] turns a touchpoint payload into a checked
//!   [`Event`](journeyd_types::Event), or a [`DecodeError`] whose
//!   [`reason`](DecodeError::reason) is a stable snake_case word for the dead-letter header and
//!   metrics, and which says whether retrying may help ([`DecodeError::is_transient`]).
//! - [`ActionEncoder`] turns an [`Action`](journeyd_types::Action) into a payload for a channel's
//!   action topic; [`decode_action`] reads it back.
//! - [`encode_touchpoint`] writes Avro touchpoints, for test clients and demo producers.
//!
//! The Avro schemas are `schemas/touchpoint.avsc` and `schemas/action.avsc` at the repository
//! root (see `schemas/README.md`), compiled in ([`schema`]). Two framings are read and written:
//! Avro single-object encoding (`C3 01`, 8-byte little-endian CRC-64-AVRO fingerprint of the
//! writer schema's canonical form, datum) and the Confluent wire format (`00`, 4-byte big-endian
//! registry schema id, datum).
//!
//! Invariants: a decoded touchpoint has passed `Event::check`; a datum written with any schema
//! this crate accepts is resolved to the current schema before it is converted, so new fields
//! always take their defaults; an error is transient only when the schema registry could not be
//! asked, never because of the payload.

mod action;
mod avro;
mod error;
mod json;
mod registry;
pub mod schema;
mod touchpoint;

pub use action::{decode_action, encode_action, ActionEncoder};
pub use avro::Framing;
pub use error::{DecodeError, EncodeError};
pub use registry::{SchemaRegistry, REGISTRY_MEDIA_TYPE, REGISTRY_TIMEOUT};
pub use touchpoint::{encode_touchpoint, TouchpointDecoder};

use std::fmt;
use std::str::FromStr;

/// Caps the buffers `apache-avro` sizes from lengths and counts read in a datum (its default is
/// 512 MiB, and a map reserves that many entries: one damaged count in a touchpoint written
/// with an older schema made it ask for 43 GB, and the process aborted). A datum no longer than
/// `bytes` cannot hold a longer string or more entries, so a service that refuses payloads
/// over `bytes` before decoding them loses nothing by it. The first call in a process sets it
/// (apache-avro keeps one limit per process); returns the limit in force.
pub fn limit_avro_allocations(bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(bytes)
}

/// The payload format of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per message.
    Json,
    /// One Avro datum per message, single-object or Confluent framed.
    Avro,
}

impl Format {
    /// The name used in configuration: `json` or `avro`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "avro" => Ok(Format::Avro),
            other => Err(format!(
                "unknown format `{other}`: expected `json` or `avro`"
            )),
        }
    }
}
