//! Conversions between our types and `apache-avro` values, and the two framings.
//!
//! Attribute and var values use the union `["null","boolean","long","double","string"]`, in
//! that order. Lists and maps have no branch: they are written as a string holding their JSON
//! text, and so read back as that string.

use crate::error::{DecodeError, EncodeError};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use journeyd_types::{Action, ActionKind, Attributes, CancelReason, Event, Value};
use std::collections::HashMap;

/// First two bytes of Avro single-object encoding.
pub(crate) const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: magic and 8-byte fingerprint.
pub(crate) const SINGLE_OBJECT_HEADER: usize = 10;
/// First byte of the Confluent wire format.
pub(crate) const CONFLUENT_MAGIC: u8 = 0x00;
/// Length of the Confluent header: magic and 4-byte schema id.
pub(crate) const CONFLUENT_HEADER: usize = 5;

/// How an Avro datum is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, the writer schema's 8-byte little-endian Rabin
    /// fingerprint, then the datum. Needs no registry.
    SingleObject,
    /// Confluent wire format: `00`, the 4-byte big-endian schema id the registry gave the
    /// writer schema, then the datum.
    Confluent {
        /// The registry's id of the writer schema.
        schema_id: u32,
    },
}

/// The framing found at the start of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    SingleObject(u64),
    Confluent(u32),
}

/// Reads the framing header; returns it and the datum that follows.
pub(crate) fn split_header<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<(Header, &'a [u8]), DecodeError> {
    let bad = |why: String| DecodeError::BadAvro { what, why };
    match bytes {
        [] => Err(bad("the payload is empty".into())),
        [0xC3, 0x01, ..] => {
            if bytes.len() < SINGLE_OBJECT_HEADER {
                return Err(bad(format!(
                    "single-object header truncated: {} bytes, need {SINGLE_OBJECT_HEADER}",
                    bytes.len()
                )));
            }
            let fp = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
            Ok((Header::SingleObject(fp), &bytes[SINGLE_OBJECT_HEADER..]))
        }
        [CONFLUENT_MAGIC, ..] => {
            if bytes.len() < CONFLUENT_HEADER {
                return Err(bad(format!(
                    "Confluent header truncated: {} bytes, need {CONFLUENT_HEADER}",
                    bytes.len()
                )));
            }
            let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
            Ok((Header::Confluent(id), &bytes[CONFLUENT_HEADER..]))
        }
        [b0, rest @ ..] => Err(bad(format!(
            "unknown framing: first bytes {b0:#04x} {:#04x}, expected C3 01 (single-object) or \
             00 (Confluent)",
            rest.first().copied().unwrap_or(0)
        ))),
    }
}

/// Prepends the framing header for `framing` with the given single-object fingerprint.
pub(crate) fn frame(framing: Framing, fingerprint: u64, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SINGLE_OBJECT_HEADER + datum.len());
    match framing {
        Framing::SingleObject => {
            out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&fingerprint.to_le_bytes());
        }
        Framing::Confluent { schema_id } => {
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema_id.to_be_bytes());
        }
    }
    out.extend_from_slice(datum);
    out
}

/// Decodes one datum written with `writer`, resolving it to `reader` when given, and checks that
/// nothing follows it.
pub(crate) fn read_datum(
    writer: &Schema,
    reader: Option<&Schema>,
    mut datum: &[u8],
    what: &'static str,
) -> Result<Avro, DecodeError> {
    let value = apache_avro::from_avro_datum(writer, &mut datum, reader).map_err(|e| {
        DecodeError::BadAvro {
            what,
            why: e.to_string(),
        }
    })?;
    if !datum.is_empty() {
        return Err(DecodeError::BadAvro {
            what,
            why: format!(
                "{} bytes left after the datum (wrong writer schema?)",
                datum.len()
            ),
        });
    }
    Ok(value)
}

/// Writes Avro binary directly. `apache-avro` keeps maps in a `HashMap`, so its output depends on
/// the hash seed; ours writes map entries in key order, so the same input always gives the same
/// bytes (which keeps replays byte-identical and lets tests compare payloads).
struct Writer(Vec<u8>);

impl Writer {
    fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A union branch index, or an enum symbol index.
    fn index(&mut self, i: usize) {
        self.long(i as i64);
    }

    fn opt_string(&mut self, s: Option<&str>) {
        match s {
            None => self.index(0),
            Some(s) => {
                self.index(1);
                self.string(s);
            }
        }
    }

    fn opt_long(&mut self, v: Option<i64>) {
        match v {
            None => self.index(0),
            Some(v) => {
                self.index(1);
                self.long(v);
            }
        }
    }

    /// The attribute union `["null","boolean","long","double","string"]`.
    fn attribute(&mut self, v: &Value) {
        match v {
            Value::Null => self.index(0),
            Value::Bool(b) => {
                self.index(1);
                self.0.push(u8::from(*b));
            }
            Value::Int(i) => {
                self.index(2);
                self.long(*i);
            }
            Value::Float(f) => {
                self.index(3);
                self.0.extend_from_slice(&f.to_le_bytes());
            }
            Value::String(s) => {
                self.index(4);
                self.string(s);
            }
            nested @ (Value::List(_) | Value::Map(_)) => {
                self.index(4);
                self.string(&serde_json::Value::from(nested).to_string());
            }
        }
    }

    /// A map of attributes: one block holding every entry, in key order, then the empty block.
    fn attributes(&mut self, attrs: &Attributes) {
        if !attrs.is_empty() {
            self.long(attrs.len() as i64);
            for (k, v) in attrs {
                self.string(k);
                self.attribute(v);
            }
        }
        self.long(0);
    }
}

/// Encodes an event as a datum of the current touchpoint schema.
pub(crate) fn write_event(e: &Event) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.string(&e.event_id);
    w.string(&e.customer_id);
    w.string(&e.event_type);
    w.opt_string(e.channel.as_deref());
    w.long(e.occurred_at);
    w.attributes(&e.attributes);
    w.0
}

/// Encodes an action as a datum of the current action schema.
pub(crate) fn write_action(a: &Action) -> Result<Vec<u8>, EncodeError> {
    let version = i32::try_from(a.journey_version).map_err(|_| EncodeError::Unrepresentable {
        what: "action",
        why: format!(
            "journey_version {} of journey `{}` does not fit the Avro int",
            a.journey_version, a.journey
        ),
    })?;
    let mut w = Writer(Vec::with_capacity(128));
    w.string(&a.action_id);
    w.index(match a.kind {
        ActionKind::Send => 0,
        ActionKind::Cancel => 1,
    });
    w.string(&a.customer_id);
    w.string(&a.journey);
    w.long(i64::from(version));
    w.string(&a.step);
    w.string(&a.channel);
    w.string(&a.template);
    w.attributes(&a.vars);
    w.opt_string(a.cancels.as_deref());
    match a.reason {
        None => w.index(0),
        Some(r) => {
            w.index(1);
            w.index(match r {
                CancelReason::Responded => 0,
                CancelReason::Exited => 1,
                CancelReason::Stopped => 2,
                CancelReason::Erased => 3,
            });
        }
    }
    w.long(a.created_at);
    w.opt_long(a.expires_at);
    Ok(w.0)
}

/// The fields of a decoded record, taken out by name.
struct Fields(HashMap<String, Avro>);

impl Fields {
    fn of(v: Avro) -> Result<Fields, String> {
        match v {
            Avro::Record(fields) => Ok(Fields(fields.into_iter().collect())),
            other => Err(format!("expected a record, got {}", kind_of(&other))),
        }
    }

    fn take(&mut self, name: &str) -> Result<Avro, String> {
        self.0
            .remove(name)
            .map(unwrap_union)
            .ok_or_else(|| format!("field `{name}` is missing"))
    }

    fn string(&mut self, name: &str) -> Result<String, String> {
        match self.take(name)? {
            Avro::String(s) => Ok(s),
            other => Err(format!(
                "field `{name}`: expected a string, got {}",
                kind_of(&other)
            )),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.take(name)? {
            Avro::Null => Ok(None),
            Avro::String(s) => Ok(Some(s)),
            other => Err(format!(
                "field `{name}`: expected null or a string, got {}",
                kind_of(&other)
            )),
        }
    }

    fn time(&mut self, name: &str) -> Result<i64, String> {
        match self.take(name)? {
            Avro::TimestampMillis(t) | Avro::Long(t) => Ok(t),
            other => Err(format!(
                "field `{name}`: expected a timestamp, got {}",
                kind_of(&other)
            )),
        }
    }

    fn opt_time(&mut self, name: &str) -> Result<Option<i64>, String> {
        match self.take(name)? {
            Avro::Null => Ok(None),
            Avro::TimestampMillis(t) | Avro::Long(t) => Ok(Some(t)),
            other => Err(format!(
                "field `{name}`: expected null or a timestamp, got {}",
                kind_of(&other)
            )),
        }
    }

    fn attributes(&mut self, name: &str) -> Result<Attributes, String> {
        match self.take(name)? {
            Avro::Map(m) => m
                .into_iter()
                .map(|(k, v)| {
                    let v = avro_to_attribute(v).map_err(|e| format!("{name}.{k}: {e}"))?;
                    Ok((k, v))
                })
                .collect(),
            other => Err(format!(
                "field `{name}`: expected a map, got {}",
                kind_of(&other)
            )),
        }
    }

    fn symbol(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.take(name)? {
            Avro::Null => Ok(None),
            Avro::Enum(_, s) => Ok(Some(s)),
            other => Err(format!(
                "field `{name}`: expected an enum, got {}",
                kind_of(&other)
            )),
        }
    }
}

fn unwrap_union(v: Avro) -> Avro {
    match v {
        Avro::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

fn kind_of(v: &Avro) -> &'static str {
    match v {
        Avro::Null => "null",
        Avro::Boolean(_) => "boolean",
        Avro::Int(_) => "int",
        Avro::Long(_) => "long",
        Avro::Float(_) => "float",
        Avro::Double(_) => "double",
        Avro::String(_) => "string",
        Avro::Bytes(_) | Avro::Fixed(..) => "bytes",
        Avro::Enum(..) => "enum",
        Avro::Union(..) => "union",
        Avro::Array(_) => "array",
        Avro::Map(_) => "map",
        Avro::Record(_) => "record",
        _ => "logical value",
    }
}

fn avro_to_attribute(v: Avro) -> Result<Value, String> {
    Ok(match unwrap_union(v) {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) => Value::Int(i64::from(i)),
        Avro::Long(i) => Value::Int(i),
        Avro::Float(f) => Value::Float(f64::from(f)),
        Avro::Double(f) => Value::Float(f),
        Avro::String(s) => Value::String(s),
        other => return Err(format!("unsupported attribute value: {}", kind_of(&other))),
    })
}

/// Reads an event out of a record resolved to the current touchpoint schema.
pub(crate) fn avro_to_event(v: Avro) -> Result<Event, String> {
    let mut f = Fields::of(v)?;
    Ok(Event {
        event_id: f.string("event_id")?,
        customer_id: f.string("customer_id")?,
        event_type: f.string("type")?,
        channel: f.opt_string("channel")?,
        occurred_at: f.time("occurred_at")?,
        attributes: f.attributes("attributes")?,
    })
}

/// Reads Avro binary of the current touchpoint schema directly, the mirror of [`Writer`]: the
/// generic path (an `apache-avro` value tree, then fields looked up by name) took most of the
/// time to prepare a batch of events. Only for datums written with the current schema; other
/// writer schemas go through `apache-avro`'s resolution. Tests hold it to `apache-avro`'s
/// reading of the same bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!(
                "{what}: needs {n} bytes, {} are left (truncated datum?)",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A zig-zag varint `long` (or `int`), at most ten bytes.
    fn long(&mut self, what: &str) -> Result<i64, String> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let [b] = self.take(1, what)? else {
                unreachable!("one byte taken")
            };
            z |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(format!("{what}: a varint longer than ten bytes"))
    }

    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.long(what)?;
        usize::try_from(n).map_err(|_| format!("{what}: negative length {n}"))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.len(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }

    /// A union branch, of `n`.
    fn branch(&mut self, n: usize, what: &str) -> Result<usize, String> {
        let i = self.long(what)?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < n)
            .ok_or_else(|| format!("{what}: union branch {i} of {n}"))
    }

    /// The attribute union `["null","boolean","long","double","string"]`.
    fn attribute(&mut self, what: &str) -> Result<Value, String> {
        Ok(match self.branch(5, what)? {
            0 => Value::Null,
            1 => match self.take(1, what)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                other => return Err(format!("{what}: boolean byte {}", other[0])),
            },
            2 => Value::Int(self.long(what)?),
            3 => {
                let b: [u8; 8] = self.take(8, what)?.try_into().expect("8 bytes");
                Value::Float(f64::from_le_bytes(b))
            }
            _ => Value::String(self.string(what)?),
        })
    }

    /// A map of attributes: blocks of entries (a negative count is followed by the block's
    /// size in bytes), up to the empty block. A key given twice keeps its last value.
    fn attributes(&mut self, what: &str) -> Result<Attributes, String> {
        let mut out = Attributes::new();
        loop {
            let count = self.long(what)?;
            if count == 0 {
                return Ok(out);
            }
            if count < 0 {
                self.long(what)?;
            }
            for _ in 0..count.unsigned_abs() {
                let key = self.string(what)?;
                let value = self.attribute(what)?;
                out.insert(key, value);
            }
        }
    }
}

/// Reads an event out of a datum written with the current touchpoint schema (see [`Reader`]).
pub(crate) fn read_event(datum: &[u8]) -> Result<Event, String> {
    let mut r = Reader(datum);
    let event = Event {
        event_id: r.string("field `event_id`")?,
        customer_id: r.string("field `customer_id`")?,
        event_type: r.string("field `type`")?,
        channel: match r.branch(2, "field `channel`")? {
            0 => None,
            _ => Some(r.string("field `channel`")?),
        },
        occurred_at: r.long("field `occurred_at`")?,
        attributes: r.attributes("field `attributes`")?,
    };
    if !r.0.is_empty() {
        return Err(format!(
            "{} bytes left after the datum (wrong writer schema?)",
            r.0.len()
        ));
    }
    Ok(event)
}

/// Reads an action out of a record written with the action schema.
pub(crate) fn avro_to_action(v: Avro) -> Result<Action, String> {
    let mut f = Fields::of(v)?;
    let action_id = f.string("action_id")?;
    let kind = match f.symbol("kind")?.as_deref() {
        Some("send") => ActionKind::Send,
        Some("cancel") => ActionKind::Cancel,
        other => return Err(format!("field `kind`: unknown kind {other:?}")),
    };
    let customer_id = f.string("customer_id")?;
    let journey = f.string("journey")?;
    let journey_version = match f.take("journey_version")? {
        Avro::Int(v) => {
            u32::try_from(v).map_err(|_| format!("field `journey_version`: {v} is negative"))?
        }
        other => {
            return Err(format!(
                "field `journey_version`: expected an int, got {}",
                kind_of(&other)
            ))
        }
    };
    Ok(Action {
        action_id,
        kind,
        customer_id,
        journey,
        journey_version,
        step: f.string("step")?,
        channel: f.string("channel")?,
        template: f.string("template")?,
        vars: f.attributes("vars")?,
        cancels: f.opt_string("cancels")?,
        reason: match f.symbol("reason")?.as_deref() {
            None => None,
            Some("responded") => Some(CancelReason::Responded),
            Some("exited") => Some(CancelReason::Exited),
            Some("stopped") => Some(CancelReason::Stopped),
            Some("erased") => Some(CancelReason::Erased),
            Some(other) => return Err(format!("field `reason`: unknown reason `{other}`")),
        },
        created_at: f.time("created_at")?,
        expires_at: f.opt_time("expires_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use proptest::prelude::*;

    fn attribute_to_avro(v: &Value) -> Avro {
        match v {
            Value::Null => Avro::Union(0, Box::new(Avro::Null)),
            Value::Bool(b) => Avro::Union(1, Box::new(Avro::Boolean(*b))),
            Value::Int(i) => Avro::Union(2, Box::new(Avro::Long(*i))),
            Value::Float(f) => Avro::Union(3, Box::new(Avro::Double(*f))),
            Value::String(s) => Avro::Union(4, Box::new(Avro::String(s.clone()))),
            nested => Avro::Union(
                4,
                Box::new(Avro::String(serde_json::Value::from(nested).to_string())),
            ),
        }
    }

    fn attributes_to_avro(attrs: &Attributes) -> Avro {
        Avro::Map(
            attrs
                .iter()
                .map(|(k, v)| (k.clone(), attribute_to_avro(v)))
                .collect(),
        )
    }

    fn optional(v: Option<Avro>) -> Avro {
        match v {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(v) => Avro::Union(1, Box::new(v)),
        }
    }

    /// The touchpoint record as `apache-avro` values, to check [`write_event`] against.
    fn event_to_avro(e: &Event) -> Avro {
        Avro::Record(vec![
            ("event_id".into(), Avro::String(e.event_id.clone())),
            ("customer_id".into(), Avro::String(e.customer_id.clone())),
            ("type".into(), Avro::String(e.event_type.clone())),
            (
                "channel".into(),
                optional(e.channel.clone().map(Avro::String)),
            ),
            ("occurred_at".into(), Avro::TimestampMillis(e.occurred_at)),
            ("attributes".into(), attributes_to_avro(&e.attributes)),
        ])
    }

    /// The action record as `apache-avro` values, to check [`write_action`] against.
    fn action_to_avro(a: &Action) -> Avro {
        let kind = match a.kind {
            ActionKind::Send => Avro::Enum(0, "send".into()),
            ActionKind::Cancel => Avro::Enum(1, "cancel".into()),
        };
        let reason = a.reason.map(|r| match r {
            CancelReason::Responded => Avro::Enum(0, "responded".into()),
            CancelReason::Exited => Avro::Enum(1, "exited".into()),
            CancelReason::Stopped => Avro::Enum(2, "stopped".into()),
            CancelReason::Erased => Avro::Enum(3, "erased".into()),
        });
        Avro::Record(vec![
            ("action_id".into(), Avro::String(a.action_id.clone())),
            ("kind".into(), kind),
            ("customer_id".into(), Avro::String(a.customer_id.clone())),
            ("journey".into(), Avro::String(a.journey.clone())),
            (
                "journey_version".into(),
                Avro::Int(i32::try_from(a.journey_version).unwrap()),
            ),
            ("step".into(), Avro::String(a.step.clone())),
            ("channel".into(), Avro::String(a.channel.clone())),
            ("template".into(), Avro::String(a.template.clone())),
            ("vars".into(), attributes_to_avro(&a.vars)),
            (
                "cancels".into(),
                optional(a.cancels.clone().map(Avro::String)),
            ),
            ("reason".into(), optional(reason)),
            ("created_at".into(), Avro::TimestampMillis(a.created_at)),
            (
                "expires_at".into(),
                optional(a.expires_at.map(Avro::TimestampMillis)),
            ),
        ])
    }

    fn arb_flat() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(Value::Float),
            "\\PC{0,8}".prop_map(Value::String),
        ]
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            "\\PC{0,8}",
            "\\PC{0,8}",
            "[a-z]{0,8}",
            prop::option::of("[a-z]{0,4}"),
            any::<i64>(),
            // At most one entry: apache-avro writes a map in hash order.
            prop::collection::btree_map("\\PC{0,4}", arb_flat(), 0..=1),
        )
            .prop_map(
                |(event_id, customer_id, event_type, channel, occurred_at, attributes)| Event {
                    event_id,
                    customer_id,
                    event_type,
                    channel,
                    occurred_at,
                    attributes,
                },
            )
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        (
            any::<bool>(),
            0..=i32::MAX as u32,
            prop::option::of("[a-z]{0,4}"),
            prop::option::of(0..4u8),
            any::<i64>(),
            prop::option::of(any::<i64>()),
            prop::collection::btree_map("[a-z]{0,4}", arb_flat(), 0..=1),
        )
            .prop_map(
                |(send, journey_version, cancels, reason, created_at, expires_at, vars)| Action {
                    action_id: "id".into(),
                    kind: if send {
                        ActionKind::Send
                    } else {
                        ActionKind::Cancel
                    },
                    customer_id: "c".into(),
                    journey: "j".into(),
                    journey_version,
                    step: "s".into(),
                    channel: "email".into(),
                    template: "t".into(),
                    vars,
                    cancels,
                    reason: reason.map(|r| match r {
                        0 => CancelReason::Responded,
                        1 => CancelReason::Exited,
                        2 => CancelReason::Stopped,
                        _ => CancelReason::Erased,
                    }),
                    created_at,
                    expires_at,
                },
            )
    }

    proptest! {
        #[test]
        fn our_event_writer_matches_apache_avro(e in arb_event()) {
            let theirs = apache_avro::to_avro_datum(&schema::touchpoint().schema, event_to_avro(&e)).unwrap();
            prop_assert_eq!(write_event(&e), theirs);
        }

        #[test]
        fn our_event_reader_reads_what_apache_avro_reads(e in arb_event(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let bytes = write_event(&e);
            let theirs = |b: &[u8]| {
                read_datum(&schema::touchpoint().schema, None, b, "touchpoint")
                    .map_err(|e| e.to_string())
                    .and_then(avro_to_event)
            };
            prop_assert_eq!(read_event(&bytes), Ok(e.clone()));
            prop_assert_eq!(theirs(&bytes), Ok(e));
            // Damaged: cut short, or one byte changed. Whenever apache-avro reads an event, ours
            // reads the same one; every cut is refused by both.
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(read_event(short).is_err());
            prop_assert!(theirs(short).is_err());
            // One byte changed: ours reads an event or says why, never panics, and what it reads
            // reads back the same. (apache-avro is not asked: a changed map count makes it
            // reserve gigabytes, and the process aborts.)
            let mut changed = bytes.clone();
            changed[flip.0.index(bytes.len())] ^= flip.1.max(1);
            if let Ok(event) = read_event(&changed) {
                prop_assert_eq!(read_event(&write_event(&event)), Ok(event));
            }
        }

        #[test]
        fn our_action_writer_matches_apache_avro(a in arb_action()) {
            let theirs = apache_avro::to_avro_datum(&schema::action().schema, action_to_avro(&a)).unwrap();
            prop_assert_eq!(write_action(&a).unwrap(), theirs);
        }
    }

    #[test]
    fn damaged_events_are_refused_with_where_and_why() {
        let e = Event {
            event_id: "e".into(),
            customer_id: "c".into(),
            event_type: "t".into(),
            channel: Some("web".into()),
            occurred_at: 7,
            attributes: [("k".to_owned(), Value::Bool(true))].into_iter().collect(),
        };
        let good = write_event(&e);
        assert_eq!(read_event(&good), Ok(e));
        let refused = |bytes: &[u8], why: &str| {
            let err = read_event(bytes).unwrap_err();
            assert!(err.contains(why), "{err:?} does not say {why:?}");
        };
        // event_id "e", customer_id "c", type "t", channel branch 1 "web", 7, {k: true}, end.
        assert_eq!(
            good,
            [2, b'e', 2, b'c', 2, b't', 2, 6, b'w', b'e', b'b', 14, 2, 2, b'k', 2, 1, 0]
        );
        refused(&[1], "negative length -1");
        refused(&[2, b'e', 2, b'c', 2, b't', 4], "union branch 2 of 2");
        refused(&[2, 0xff, 2, b'c'], "field `event_id`: not UTF-8");
        let mut bad_bool = good.clone();
        bad_bool[16] = 2;
        refused(&bad_bool, "boolean byte 2");
        let mut long = good[..11].to_vec();
        long.extend([0xff; 11]);
        refused(&long, "longer than ten bytes");
        refused(
            &[good.as_slice(), &[0]].concat(),
            "1 bytes left after the datum",
        );
        refused(
            &good[..good.len() - 1],
            "field `attributes`: needs 1 bytes, 0 are left",
        );
        // A block with a negative count carries its size; a key given twice keeps its last value.
        let mut blocks = good[..12].to_vec();
        blocks.extend([1, 8, 2, b'k', 2, 1, 2, 2, b'k', 2, 0, 0]);
        assert_eq!(
            read_event(&blocks).unwrap().attributes,
            [("k".to_owned(), Value::Bool(false))].into_iter().collect()
        );
    }

    #[test]
    fn maps_are_written_in_key_order() {
        let mut e = Event {
            event_id: "e".into(),
            customer_id: "c".into(),
            event_type: "t".into(),
            channel: None,
            occurred_at: 0,
            attributes: Attributes::new(),
        };
        for k in ["b", "a", "c"] {
            e.attributes.insert(k.into(), Value::Int(1));
        }
        let bytes = write_event(&e);
        let tail = &bytes[bytes.len() - 14..];
        // count 3, then "a", "b", "c" each with branch 2 and long 1, then the end block.
        assert_eq!(tail, &[6, 2, b'a', 4, 2, 2, b'b', 4, 2, 2, b'c', 4, 2, 0]);
    }

    #[test]
    fn headers_are_recognised_or_refused() {
        assert!(
            matches!(split_header(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9], "x"),
            Ok((Header::SingleObject(fp), [9])) if fp == u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]))
        );
        assert!(matches!(
            split_header(&[0, 0, 0, 1, 2, 7], "x"),
            Ok((Header::Confluent(258), [7]))
        ));
        for bad in [&[][..], &[0xC3, 0x01, 1], &[0, 0, 1], &[0x7B, 0x22]] {
            assert_eq!(split_header(bad, "x").unwrap_err().reason(), "bad_avro");
        }
    }
}
