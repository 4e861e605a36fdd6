//! The .avsc files: they parse, their fingerprints are pinned, and evolution works.

mod common;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use common::*;
use journeyd_codec::schema::{
    self, ACTION_SCHEMA, ACTION_SCHEMA_HISTORY, TOUCHPOINT_SCHEMA, TOUCHPOINT_SCHEMA_HISTORY,
};
use journeyd_codec::{decode_action, encode_touchpoint, Format, Framing, TouchpointDecoder};
use journeyd_types::Value;
use std::collections::HashMap;

/// Changing one of these means the wire format changed: every producer and adapter must follow.
/// Never edit a pin to make the test pass; add a new schema version instead (schemas/README.md).
const TOUCHPOINT_FINGERPRINT: u64 = 0x7099_6aea_fe1c_a096;
const TOUCHPOINT_V0_FINGERPRINT: u64 = 0xf14c_327a_7e43_6e3c;
const ACTION_FINGERPRINT: u64 = 0x37f6_b850_5593_0f81;
const ACTION_V0_FINGERPRINT: u64 = 0x1a0a_3ee6_c3f6_92f0;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn fingerprints_are_pinned() {
    assert_eq!(
        schema::fingerprint(TOUCHPOINT_SCHEMA).unwrap(),
        TOUCHPOINT_FINGERPRINT
    );
    assert_eq!(
        schema::fingerprint(ACTION_SCHEMA).unwrap(),
        ACTION_FINGERPRINT
    );
    assert_eq!(
        schema::fingerprint(TOUCHPOINT_SCHEMA_HISTORY[0].1).unwrap(),
        TOUCHPOINT_V0_FINGERPRINT
    );
    assert_eq!(
        schema::fingerprint(ACTION_SCHEMA_HISTORY[0].1).unwrap(),
        ACTION_V0_FINGERPRINT
    );
    assert_eq!(schema::touchpoint().fingerprint, TOUCHPOINT_FINGERPRINT);
    assert_eq!(schema::action().fingerprint, ACTION_FINGERPRINT);
    // The header we write carries the pinned fingerprint, little-endian.
    let bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
    assert_eq!(&bytes[2..10], &TOUCHPOINT_FINGERPRINT.to_le_bytes());
}

#[test]
fn schema_files_parse_and_name_the_records() {
    for (text, name) in [
        (TOUCHPOINT_SCHEMA, "dev.journeyd.Touchpoint"),
        (ACTION_SCHEMA, "dev.journeyd.Action"),
        (TOUCHPOINT_SCHEMA_HISTORY[0].1, "dev.journeyd.Touchpoint"),
        (ACTION_SCHEMA_HISTORY[0].1, "dev.journeyd.Action"),
    ] {
        let schema = Schema::parse_str(text).unwrap();
        assert_eq!(schema.name().unwrap().fullname(None), name);
    }
}

#[test]
fn every_field_has_a_doc_and_the_defaults_are_pinned() {
    // The fingerprint ignores docs and defaults, so defaults are pinned here: a reader relies on
    // them to read datums written before a field existed.
    let cases = [
        (
            TOUCHPOINT_SCHEMA,
            vec![
                ("event_id", None),
                ("customer_id", None),
                ("type", None),
                ("channel", Some(serde_json::Value::Null)),
                ("occurred_at", None),
                ("attributes", Some(json("{}"))),
            ],
        ),
        (
            ACTION_SCHEMA,
            vec![
                ("action_id", None),
                ("kind", None),
                ("customer_id", None),
                ("journey", None),
                ("journey_version", None),
                ("step", None),
                ("channel", None),
                ("template", None),
                ("vars", Some(json("{}"))),
                ("cancels", Some(serde_json::Value::Null)),
                ("reason", Some(serde_json::Value::Null)),
                ("created_at", None),
                ("expires_at", Some(serde_json::Value::Null)),
            ],
        ),
    ];
    for (text, expected) in cases {
        let schema = json(text);
        assert!(schema["doc"].as_str().is_some_and(|d| !d.is_empty()));
        let fields = schema["fields"].as_array().unwrap();
        let got: Vec<(&str, Option<serde_json::Value>)> = fields
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f.get("default").cloned()))
            .collect();
        assert_eq!(got, expected);
        for f in fields {
            assert!(
                f["doc"].as_str().is_some_and(|d| d.len() > 10),
                "field {} has no doc",
                f["name"]
            );
        }
    }
}

#[test]
fn times_are_timestamp_millis() {
    let t = json(TOUCHPOINT_SCHEMA);
    assert_eq!(t["fields"][4]["type"]["logicalType"], "timestamp-millis");
    let a = json(ACTION_SCHEMA);
    assert_eq!(a["fields"][11]["type"]["logicalType"], "timestamp-millis");
    assert_eq!(
        a["fields"][12]["type"][1]["logicalType"],
        "timestamp-millis"
    );
}

/// A datum of the v0 touchpoint schema (no `channel`), written by apache-avro.
fn v0_datum() -> Vec<u8> {
    let v0 = Schema::parse_str(TOUCHPOINT_SCHEMA_HISTORY[0].1).unwrap();
    let attributes: HashMap<String, Avro> = [(
        "plan".to_owned(),
        Avro::Union(4, Box::new(Avro::String("basic".into()))),
    )]
    .into_iter()
    .collect();
    apache_avro::to_avro_datum(
        &v0,
        Avro::Record(vec![
            ("event_id".into(), Avro::String("e0".into())),
            ("customer_id".into(), Avro::String("c0".into())),
            ("type".into(), Avro::String("signup".into())),
            (
                "occurred_at".into(),
                Avro::TimestampMillis(1_767_603_600_000),
            ),
            ("attributes".into(), Avro::Map(attributes)),
        ]),
    )
    .unwrap()
}

fn assert_is_the_v0_event(event: journeyd_types::Event) {
    assert_eq!(event.event_id, "e0");
    assert_eq!(event.customer_id, "c0");
    assert_eq!(event.event_type, "signup");
    assert_eq!(event.channel, None, "the new field takes its default");
    assert_eq!(event.occurred_at, 1_767_603_600_000);
    assert_eq!(event.attributes["plan"], Value::from("basic"));
}

#[test]
fn a_v0_single_object_datum_decodes_with_defaults() {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&TOUCHPOINT_V0_FINGERPRINT.to_le_bytes());
    bytes.extend(v0_datum());
    let event = TouchpointDecoder::new(Format::Avro).decode(&bytes).unwrap();
    assert_is_the_v0_event(event);
}

#[test]
fn a_v0_confluent_datum_decodes_with_defaults() {
    let registry = FakeRegistry::start();
    registry.add_schema(5, TOUCHPOINT_SCHEMA_HISTORY[0].1);
    let mut bytes = vec![0, 0, 0, 0, 5];
    bytes.extend(v0_datum());
    let decoder = TouchpointDecoder::with_registry(&registry.url);
    assert_is_the_v0_event(decoder.decode(&bytes).unwrap());
    assert_is_the_v0_event(decoder.decode(&bytes).unwrap());
    assert_eq!(registry.count("GET /schemas/ids/5"), 1);
}

#[test]
fn a_newer_writer_with_an_extra_field_is_read_without_it() {
    // A producer on a future schema that added `source` (with a default, as the rules say).
    let mut newer = json(TOUCHPOINT_SCHEMA);
    newer["fields"].as_array_mut().unwrap().push(json(
        r#"{"name":"source","type":"string","default":"","doc":"Producing system."}"#,
    ));
    let newer_text = newer.to_string();
    let newer_schema = Schema::parse_str(&newer_text).unwrap();
    let datum = apache_avro::to_avro_datum(
        &newer_schema,
        Avro::Record(vec![
            ("event_id".into(), Avro::String("e9".into())),
            ("customer_id".into(), Avro::String("c9".into())),
            ("type".into(), Avro::String("purchase".into())),
            (
                "channel".into(),
                Avro::Union(1, Box::new(Avro::String("app".into()))),
            ),
            ("occurred_at".into(), Avro::TimestampMillis(42)),
            ("attributes".into(), Avro::Map(HashMap::new())),
            ("source".into(), Avro::String("pos".into())),
        ]),
    )
    .unwrap();
    let registry = FakeRegistry::start();
    registry.add_schema(9, &newer_text);
    let mut bytes = vec![0, 0, 0, 0, 9];
    bytes.extend(datum);
    let event = TouchpointDecoder::with_registry(&registry.url)
        .decode(&bytes)
        .unwrap();
    assert_eq!(event.event_id, "e9");
    assert_eq!(event.channel.as_deref(), Some("app"));
    assert_eq!(event.occurred_at, 42);
}

#[test]
fn an_incompatible_registry_schema_is_unknown_schema() {
    let mut other = json(TOUCHPOINT_SCHEMA);
    other["fields"][1]["type"] = json(r#""long""#);
    let registry = FakeRegistry::start();
    registry.add_schema(4, &other.to_string());
    let err = TouchpointDecoder::with_registry(&registry.url)
        .decode(&[0, 0, 0, 0, 4, 2, b'e'])
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_schema", "{err}");
    assert!(err.to_string().contains("schema id 4"), "{err}");
    assert!(!err.is_transient());
}

#[test]
fn headers_written_by_apache_avro_are_accepted_too() {
    // apache-avro 0.21 fingerprints a different canonical form when a schema has logical types;
    // its single-object writer's payloads must still decode.
    for (known, value) in [
        (schema::touchpoint(), {
            let bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
            apache_avro::from_avro_datum(&schema::touchpoint().schema, &mut &bytes[10..], None)
                .unwrap()
        }),
        (schema::action(), {
            let bytes =
                journeyd_codec::encode_action(&sample_action(), Framing::SingleObject).unwrap();
            apache_avro::from_avro_datum(&schema::action().schema, &mut &bytes[10..], None).unwrap()
        }),
    ] {
        let mut writer =
            apache_avro::GenericSingleObjectWriter::new_with_capacity(&known.schema, 256).unwrap();
        let mut bytes = Vec::new();
        writer.write_value(value, &mut bytes).unwrap();
        assert_eq!(
            bytes[2..10],
            known.alias_fingerprint.unwrap().to_le_bytes(),
            "{}",
            known.name
        );
        if known.name == "touchpoint" {
            let event = TouchpointDecoder::new(Format::Avro).decode(&bytes).unwrap();
            assert_eq!(event, sample_event());
        } else {
            assert_eq!(decode_action(&bytes).unwrap(), sample_action());
        }
    }
}

#[test]
fn the_cancel_reasons_are_appended_and_an_action_of_the_first_schema_still_reads() {
    // Contract v2: `stopped` and `erased` come after the v1 symbols, which keep their places.
    let symbols = |text: &str| -> Vec<String> {
        let reason = json(text)["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "reason")
            .unwrap()
            .clone();
        reason["type"][1]["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(symbols(ACTION_SCHEMA_HISTORY[0].1), ["responded", "exited"]);
    assert_eq!(
        symbols(ACTION_SCHEMA),
        ["responded", "exited", "stopped", "erased"]
    );
    // A cancel written with the v0 schema (single-object, its own fingerprint) is read with
    // the current one.
    let v0 = Schema::parse_str(ACTION_SCHEMA_HISTORY[0].1).unwrap();
    let mut cancel = sample_action();
    cancel.kind = journeyd_types::ActionKind::Cancel;
    cancel.cancels = Some("a1".into());
    cancel.reason = Some(journeyd_types::CancelReason::Exited);
    let current = journeyd_codec::encode_action(&cancel, Framing::SingleObject).unwrap();
    let value =
        apache_avro::from_avro_datum(&schema::action().schema, &mut &current[10..], None).unwrap();
    let v0_datum = apache_avro::to_avro_datum(&v0, value.resolve(&v0).unwrap()).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&ACTION_V0_FINGERPRINT.to_le_bytes());
    bytes.extend_from_slice(&v0_datum);
    assert_eq!(decode_action(&bytes).unwrap(), cancel);
    // The new reasons round trip in every encoding.
    for reason in [
        journeyd_types::CancelReason::Stopped,
        journeyd_types::CancelReason::Erased,
    ] {
        let mut c = cancel.clone();
        c.reason = Some(reason);
        let bytes = journeyd_codec::encode_action(&c, Framing::SingleObject).unwrap();
        assert_eq!(decode_action(&bytes).unwrap(), c, "{reason}");
        let json = journeyd_codec::ActionEncoder::new(Format::Json)
            .encode(&c, "actions.email")
            .unwrap();
        assert!(String::from_utf8_lossy(&json).contains(reason.as_str()));
        assert_eq!(decode_action(&json).unwrap(), c);
    }
}
