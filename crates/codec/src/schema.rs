//! The Avro schemas, their Parsing Canonical Form and their CRC-64-AVRO (Rabin) fingerprints.
//!
//! The schema texts live in the repository's `schemas/` folder and are compiled in. Fingerprints
//! are computed here, from the JSON text, exactly as the Avro specification says (and as the Java
//! reference implementation does), because `apache-avro` 0.21 keeps a logical type's
//! `{"type":"long"}` wrapper in its canonical form and so disagrees with every other language on
//! any schema with a `timestamp-millis` field. Fingerprints from `apache-avro`'s own writers are
//! still accepted when decoding (see [`KnownSchema::alias_fingerprint`]).

use apache_avro::Schema;
use serde_json::Value as Json;
use std::collections::HashSet;
use std::sync::OnceLock;

/// The current touchpoint schema (`schemas/touchpoint.avsc`), the reader schema for every
/// touchpoint.
pub const TOUCHPOINT_SCHEMA: &str = include_str!("../../../schemas/touchpoint.avsc");

/// The current action schema (`schemas/action.avsc`).
pub const ACTION_SCHEMA: &str = include_str!("../../../schemas/action.avsc");

/// Earlier touchpoint schemas, oldest first, still accepted as writer schemas in single-object
/// encoding (`schemas/history/`).
pub const TOUCHPOINT_SCHEMA_HISTORY: &[(&str, &str)] = &[(
    "touchpoint.v0",
    include_str!("../../../schemas/history/touchpoint.v0.avsc"),
)];

/// Earlier action schemas, oldest first: [`crate::decode_action`] still reads single-object
/// datums written with them (`schemas/history/`).
pub const ACTION_SCHEMA_HISTORY: &[(&str, &str)] = &[(
    "action.v0",
    include_str!("../../../schemas/history/action.v0.avsc"),
)];

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Returns the Parsing Canonical Form of a schema given as JSON text.
///
/// Follows the specification's rules: primitives (also those carrying a logical type) become
/// their bare name, names are fully qualified, only `name`, `type`, `fields`, `symbols`, `items`,
/// `values` and `size` are kept, in that order, with no white space.
pub fn canonical_form(schema_json: &str) -> Result<String, String> {
    let json: Json =
        serde_json::from_str(schema_json).map_err(|e| format!("schema is not JSON: {e}"))?;
    let mut out = String::new();
    pcf(&json, "", &mut HashSet::new(), &mut out)?;
    Ok(out)
}

/// Returns the CRC-64-AVRO (Rabin) fingerprint of some bytes, as the specification defines it.
pub fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

/// Returns the Rabin fingerprint of a schema's Parsing Canonical Form: the 8 bytes (little-endian)
/// that follow `C3 01` in single-object encoding.
pub fn fingerprint(schema_json: &str) -> Result<u64, String> {
    canonical_form(schema_json).map(|pcf| rabin(pcf.as_bytes()))
}

fn fullname(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn quoted(s: &str, out: &mut String) {
    // Names and symbols are restricted to [A-Za-z0-9_.], so no escaping is ever needed.
    out.push('"');
    out.push_str(s);
    out.push('"');
}

fn pcf(
    schema: &Json,
    namespace: &str,
    seen: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    match schema {
        Json::String(t) if PRIMITIVES.contains(&t.as_str()) => quoted(t, out),
        Json::String(name) => quoted(&fullname(name, namespace), out),
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, namespace, seen, out)?;
            }
            out.push(']');
        }
        Json::Object(m) => {
            let Some(t) = m.get("type") else {
                return Err("schema object without `type`".into());
            };
            let t = match t {
                Json::String(t) => t.as_str(),
                nested => return pcf(nested, namespace, seen, out),
            };
            match t {
                "record" | "error" | "enum" | "fixed" => {
                    let name = m
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("{t} without a `name`"))?;
                    let ns = m
                        .get("namespace")
                        .and_then(Json::as_str)
                        .unwrap_or(namespace);
                    let full = fullname(name, ns);
                    if !seen.insert(full.clone()) {
                        quoted(&full, out);
                        return Ok(());
                    }
                    let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
                    out.push_str("{\"name\":");
                    quoted(&full, out);
                    out.push_str(",\"type\":");
                    quoted(if t == "error" { "record" } else { t }, out);
                    match t {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let symbols = m
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("enum {full} without `symbols`"))?;
                            for (i, s) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                quoted(s.as_str().ok_or("enum symbol is not a string")?, out);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = m
                                .get("size")
                                .and_then(|v| match v {
                                    // [INTEGERS]: a quoted size becomes a bare integer.
                                    Json::String(s) => s.parse::<u64>().ok(),
                                    v => v.as_u64(),
                                })
                                .ok_or_else(|| format!("fixed {full} without `size`"))?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let fields = m
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("record {full} without `fields`"))?;
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f
                                    .get("name")
                                    .and_then(Json::as_str)
                                    .ok_or_else(|| format!("a field of {full} has no `name`"))?;
                                let ftype = f.get("type").ok_or_else(|| {
                                    format!("field {fname} of {full} has no `type`")
                                })?;
                                out.push_str("{\"name\":");
                                quoted(fname, out);
                                out.push_str(",\"type\":");
                                pcf(ftype, &inner_ns, seen, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    pcf(
                        m.get("items").ok_or("array without `items`")?,
                        namespace,
                        seen,
                        out,
                    )?;
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    pcf(
                        m.get("values").ok_or("map without `values`")?,
                        namespace,
                        seen,
                        out,
                    )?;
                    out.push('}');
                }
                // A primitive, possibly with a logical type or other attributes: its bare name.
                other => pcf(&Json::String(other.to_owned()), namespace, seen, out)?,
            }
        }
        other => return Err(format!("`{other}` is not a schema")),
    }
    Ok(())
}

/// A schema this crate knows, parsed, with the fingerprints it is recognised by.
#[derive(Debug)]
pub struct KnownSchema {
    /// A short name for messages, such as `touchpoint` or `touchpoint.v0`.
    pub name: &'static str,
    /// The JSON text.
    pub text: &'static str,
    /// The parsed schema.
    pub schema: Schema,
    /// The specification's fingerprint; the one this crate writes.
    pub fingerprint: u64,
    /// The fingerprint `apache-avro` 0.21 computes for the same schema, when it differs: producers
    /// written with that library put it in their single-object headers, so it is accepted too.
    pub alias_fingerprint: Option<u64>,
}

impl KnownSchema {
    fn load(name: &'static str, text: &'static str) -> KnownSchema {
        // The texts are compiled in and checked by the tests: a failure here is a build defect.
        let schema = Schema::parse_str(text)
            .unwrap_or_else(|e| panic!("built-in schema {name} does not parse: {e}"));
        let fingerprint = fingerprint(text)
            .unwrap_or_else(|e| panic!("built-in schema {name} has no canonical form: {e}"));
        let lib = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        let lib = u64::from_le_bytes(lib.try_into().expect("a Rabin fingerprint has 8 bytes"));
        KnownSchema {
            name,
            text,
            schema,
            fingerprint,
            alias_fingerprint: (lib != fingerprint).then_some(lib),
        }
    }

    /// Tells whether a single-object header's fingerprint names this schema.
    pub fn matches(&self, fingerprint: u64) -> bool {
        self.fingerprint == fingerprint || self.alias_fingerprint == Some(fingerprint)
    }
}

/// The current touchpoint schema, parsed.
pub fn touchpoint() -> &'static KnownSchema {
    &touchpoint_writers()[0]
}

/// Every touchpoint schema a single-object datum may be written with: the current one first.
pub fn touchpoint_writers() -> &'static [KnownSchema] {
    static S: OnceLock<Vec<KnownSchema>> = OnceLock::new();
    S.get_or_init(|| {
        let mut all = vec![KnownSchema::load("touchpoint", TOUCHPOINT_SCHEMA)];
        all.extend(
            TOUCHPOINT_SCHEMA_HISTORY
                .iter()
                .rev()
                .map(|(name, text)| KnownSchema::load(name, text)),
        );
        all
    })
}

/// The current action schema, parsed.
pub fn action() -> &'static KnownSchema {
    &action_writers()[0]
}

/// Every action schema a single-object datum may be written with: the current one first.
pub fn action_writers() -> &'static [KnownSchema] {
    static S: OnceLock<Vec<KnownSchema>> = OnceLock::new();
    S.get_or_init(|| {
        let mut all = vec![KnownSchema::load("action", ACTION_SCHEMA)];
        all.extend(
            ACTION_SCHEMA_HISTORY
                .iter()
                .rev()
                .map(|(name, text)| KnownSchema::load(name, text)),
        );
        all
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabin_matches_the_specification_test_vector() {
        // From the Avro specification's test suite: the fingerprint of `"null"`.
        assert_eq!(rabin(br#""null""#) as i64, 7_195_948_357_588_979_594);
        assert_eq!(
            fingerprint(r#"{"type":"null"}"#).unwrap() as i64,
            7_195_948_357_588_979_594
        );
    }

    #[test]
    fn canonical_form_follows_the_specification() {
        let text = r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"d"},
            {"name":"e","type":["null",{"type":"enum","name":"E","symbols":["p","q"]}],"default":null},
            {"name":"again","type":"E"},
            {"name":"m","type":{"type":"map","values":{"type":"array","items":"int"}},"default":{}},
            {"name":"f","type":{"type":"fixed","name":"c.F","size":"4"}}]}"#;
        assert_eq!(
            canonical_form(text).unwrap(),
            concat!(
                r#"{"name":"a.b.R","type":"record","fields":["#,
                r#"{"name":"t","type":"long"},"#,
                r#"{"name":"e","type":["null",{"name":"a.b.E","type":"enum","symbols":["p","q"]}]},"#,
                r#"{"name":"again","type":"a.b.E"},"#,
                r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"int"}}},"#,
                r#"{"name":"f","type":{"name":"c.F","type":"fixed","size":4}}]}"#
            )
        );
    }

    #[test]
    fn agrees_with_apache_avro_where_it_is_right() {
        // Without logical types both computations must agree.
        let text = r#"{"type":"record","name":"R","namespace":"n","fields":[
            {"name":"a","type":["null","string"]},
            {"name":"b","type":{"type":"map","values":["null","boolean","long","double","string"]}},
            {"name":"k","type":{"type":"enum","name":"K","symbols":["x","y"]}}]}"#;
        let schema = Schema::parse_str(text).unwrap();
        assert_eq!(canonical_form(text).unwrap(), schema.canonical_form());
    }
}
