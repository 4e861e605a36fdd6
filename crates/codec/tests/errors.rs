//! Every decode error reason, each produced by a concrete bad input, and the registry's failures.

mod common;

use common::*;
use journeyd_codec::schema::TOUCHPOINT_SCHEMA;
use journeyd_codec::{
    decode_action, encode_action, encode_touchpoint, ActionEncoder, DecodeError, Format, Framing,
    SchemaRegistry, TouchpointDecoder,
};
use journeyd_types::Event;
use proptest::prelude::*;

fn json(bytes: &[u8]) -> DecodeError {
    TouchpointDecoder::new(Format::Json)
        .decode(bytes)
        .unwrap_err()
}

fn avro(bytes: &[u8]) -> DecodeError {
    TouchpointDecoder::new(Format::Avro)
        .decode(bytes)
        .unwrap_err()
}

fn event_with(f: impl FnOnce(&mut Event)) -> Event {
    let mut e = sample_event();
    f(&mut e);
    e
}

#[track_caller]
fn assert_reason(err: &DecodeError, reason: &str, mentions: &str) {
    assert_eq!(err.reason(), reason, "{err}");
    assert!(
        err.to_string().contains(mentions),
        "`{err}` should mention `{mentions}`"
    );
    assert_eq!(
        err.is_transient(),
        reason == "registry_unavailable",
        "{err}"
    );
}

#[test]
fn bad_json() {
    assert_reason(&json(b"{\"event_id\": "), "bad_json", "EOF");
    assert_reason(&json(b"not json"), "bad_json", "line 1");
    assert_reason(&json(&[0xC3, 0x01, 0, 0]), "bad_json", "JSON");
    assert_reason(&json(b"[1,2]"), "bad_json", "JSON");
    assert_reason(
        &json(br#"{"event_id":"e","customer_id":"c","type":"x","occurred_at":"monday"}"#),
        "bad_json",
        "RFC 3339",
    );
    assert_reason(
        &json(br#"{"event_id":"e","customer_id":"c","type":"x","occurred_at":"2026-01-05T09:00:00Z","extra":1}"#),
        "bad_json",
        "extra",
    );
    assert_reason(
        &json(
            br#"{"event_id":"e","customer_id":7,"type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        ),
        "bad_json",
        "customer_id",
    );
    assert_eq!(decode_action(b"{nope").unwrap_err().reason(), "bad_json");
}

#[test]
fn missing_customer_id_in_json() {
    for text in [
        r#"{"event_id":"e1","type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        r#"{"event_id":"e1","customer_id":null,"type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        r#"{"event_id":"e1","customer_id":"","type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
    ] {
        assert_reason(&json(text.as_bytes()), "missing_customer_id", "e1");
    }
}

#[test]
fn missing_customer_id_in_avro() {
    let bytes = encode_touchpoint(
        &event_with(|e| e.customer_id.clear()),
        Framing::SingleObject,
    );
    assert_reason(&avro(&bytes), "missing_customer_id", "customer_id");
}

#[test]
fn invalid_event() {
    assert_reason(
        &json(
            br#"{"event_id":"","customer_id":"c","type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        ),
        "invalid_event",
        "event_id",
    );
    let bytes = encode_touchpoint(&event_with(|e| e.event_type.clear()), Framing::SingleObject);
    assert_reason(&avro(&bytes), "invalid_event", "type");
    // Contract v2: a merge without a surviving customer, in either encoding.
    assert_reason(
        &json(
            br#"{"event_id":"m1","customer_id":"c","type":"customer_merged","occurred_at":"2026-01-05T09:00:00Z"}"#,
        ),
        "invalid_event",
        "`into`",
    );
    let bytes = encode_touchpoint(
        &event_with(|e| {
            e.event_type = "customer_merged".into();
            e.attributes.insert("into".into(), "".into());
        }),
        Framing::SingleObject,
    );
    assert_reason(&avro(&bytes), "invalid_event", "`into`");
}

#[test]
fn truncated_avro_is_bad_avro() {
    let bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
    for len in [0, 1, 5, 9, 10, 15, bytes.len() - 1] {
        assert_reason(&avro(&bytes[..len]), "bad_avro", "Avro touchpoint");
    }
    let action = encode_action(&sample_action(), Framing::SingleObject).unwrap();
    assert_eq!(
        decode_action(&action[..action.len() - 3])
            .unwrap_err()
            .reason(),
        "bad_avro"
    );
}

#[test]
fn trailing_bytes_are_bad_avro() {
    let mut bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
    bytes.push(0);
    assert_reason(&avro(&bytes), "bad_avro", "1 bytes left");
}

#[test]
fn wrong_magic_is_bad_avro() {
    let mut bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
    bytes[1] = 0x02;
    assert_reason(&avro(&bytes), "bad_avro", "unknown framing");
    assert_reason(&avro(br#"{"event_id":"e1"}"#), "bad_avro", "0x7b");
}

#[test]
fn unknown_fingerprint_is_unknown_schema() {
    let mut bytes = encode_touchpoint(&sample_event(), Framing::SingleObject);
    bytes[2] ^= 0xFF;
    assert_reason(&avro(&bytes), "unknown_schema", "fingerprint");
    // An action payload on a touchpoint topic names a schema we do not read there.
    let action = encode_action(&sample_action(), Framing::SingleObject).unwrap();
    assert_reason(&avro(&action), "unknown_schema", "fingerprint");
    let touchpoint = encode_touchpoint(&sample_event(), Framing::SingleObject);
    assert_eq!(
        decode_action(&touchpoint).unwrap_err().reason(),
        "unknown_schema"
    );
}

#[test]
fn confluent_framing_without_a_registry_is_unknown_schema() {
    let bytes = encode_touchpoint(&sample_event(), Framing::Confluent { schema_id: 3 });
    assert_reason(&avro(&bytes), "unknown_schema", "no schema registry");
}

#[test]
fn unknown_schema_id_is_unknown_schema() {
    let registry = FakeRegistry::start();
    let bytes = encode_touchpoint(&sample_event(), Framing::Confluent { schema_id: 77 });
    let err = TouchpointDecoder::with_registry(&registry.url)
        .decode(&bytes)
        .unwrap_err();
    assert_reason(&err, "unknown_schema", "schema id 77");
    assert_eq!(registry.requests(), ["GET /schemas/ids/77"]);
}

#[test]
fn registry_503_is_transient_and_recovers() {
    let registry = FakeRegistry::start();
    let id = SchemaRegistry::new(&registry.url)
        .register("touchpoints-value", TOUCHPOINT_SCHEMA)
        .unwrap();
    let decoder = TouchpointDecoder::with_registry(&registry.url);
    let bytes = encode_touchpoint(&sample_event(), Framing::Confluent { schema_id: id });
    registry.fail_with(Some(503));
    let err = decoder.decode(&bytes).unwrap_err();
    assert_reason(&err, "registry_unavailable", "503");
    assert!(err.to_string().contains(&registry.url), "{err}");
    // The failure is not cached: once the registry is back, the same payload decodes.
    registry.fail_with(None);
    assert_eq!(decoder.decode(&bytes).unwrap(), sample_event());
    assert_eq!(decoder.decode(&bytes).unwrap(), sample_event());
    assert_eq!(registry.count(&format!("GET /schemas/ids/{id}")), 2);
}

#[test]
fn registry_on_a_closed_port_is_transient() {
    let decoder = TouchpointDecoder::with_registry(closed_port_url());
    let bytes = encode_touchpoint(&sample_event(), Framing::Confluent { schema_id: 1 });
    let err = decoder.decode(&bytes).unwrap_err();
    assert_reason(&err, "registry_unavailable", "unavailable");
}

#[test]
fn registry_answering_garbage_is_transient() {
    // A URL pointing at the wrong service must not dead-letter every message.
    let registry = FakeRegistry::start();
    registry.add_schema(1, TOUCHPOINT_SCHEMA);
    let err = TouchpointDecoder::with_registry(format!("{}/not-a-registry", registry.url))
        .decode(&encode_touchpoint(
            &sample_event(),
            Framing::Confluent { schema_id: 1 },
        ))
        .unwrap_err();
    assert_reason(&err, "registry_unavailable", "HTTP 404");
}

#[test]
fn encoder_registry_failures_are_classified() {
    let registry = FakeRegistry::start();
    let encoder = ActionEncoder::with_registry(&registry.url);
    registry.fail_with(Some(503));
    let err = encoder
        .encode(&sample_action(), "actions.email")
        .unwrap_err();
    assert_eq!(err.reason(), "registry_unavailable", "{err}");
    assert!(err.is_transient());
    registry.fail_with(Some(409));
    let err = encoder
        .encode(&sample_action(), "actions.email")
        .unwrap_err();
    assert_eq!(err.reason(), "registry_rejected", "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("409"), "{err}");
    // Bad credentials may be fixed without a release: retried, not dead-lettered.
    registry.fail_with(Some(401));
    let err = encoder
        .encode(&sample_action(), "actions.email")
        .unwrap_err();
    assert_eq!(err.reason(), "registry_unavailable", "{err}");
    assert!(err.is_transient());
    registry.fail_with(None);
    assert!(encoder.encode(&sample_action(), "actions.email").is_ok());

    let closed = ActionEncoder::with_registry(closed_port_url());
    let err = closed
        .encode(&sample_action(), "actions.email")
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[test]
fn a_journey_version_beyond_avro_int_is_unrepresentable() {
    let mut action = sample_action();
    action.journey_version = u32::MAX;
    let err = ActionEncoder::new(Format::Avro)
        .encode(&action, "t")
        .unwrap_err();
    assert_eq!(err.reason(), "unrepresentable");
    assert!(err.to_string().contains("journey_version"), "{err}");
    // JSON has no such limit.
    let bytes = ActionEncoder::new(Format::Json)
        .encode(&action, "t")
        .unwrap();
    assert_eq!(decode_action(&bytes).unwrap(), action);
}

#[test]
fn reasons_are_the_documented_words() {
    let all = [
        DecodeError::BadJson {
            what: "touchpoint",
            why: String::new(),
        },
        DecodeError::BadAvro {
            what: "touchpoint",
            why: String::new(),
        },
        DecodeError::UnknownSchema(String::new()),
        DecodeError::MissingCustomerId {
            event_id: String::new(),
        },
        DecodeError::InvalidEvent(String::new()),
        DecodeError::RegistryUnavailable {
            url: String::new(),
            why: String::new(),
        },
    ];
    let reasons: Vec<&str> = all.iter().map(DecodeError::reason).collect();
    assert_eq!(
        reasons,
        [
            "bad_json",
            "bad_avro",
            "unknown_schema",
            "missing_customer_id",
            "invalid_event",
            "registry_unavailable"
        ]
    );
}

proptest! {
    /// Garbage never panics, and is never mistaken for a transient problem.
    #[test]
    fn garbage_is_a_poison_error(
        prefix in prop_oneof![
            Just(vec![]),
            Just(vec![0xC3, 0x01]),
            Just({
                let mut h = vec![0xC3, 0x01];
                h.extend_from_slice(&journeyd_codec::schema::touchpoint().fingerprint.to_le_bytes());
                h
            }),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = [prefix, tail].concat();
        for format in [Format::Json, Format::Avro] {
            if let Err(e) = TouchpointDecoder::new(format).decode(&bytes) {
                prop_assert!(!e.is_transient());
            }
        }
        if let Err(e) = decode_action(&bytes) {
            prop_assert!(!e.is_transient());
        }
    }
}
