//! Round trips through every format and framing, over random events and actions.

mod common;

use common::*;
use journeyd_codec::schema::{ACTION_SCHEMA, TOUCHPOINT_SCHEMA};
use journeyd_codec::{
    decode_action, encode_touchpoint, ActionEncoder, Format, Framing, SchemaRegistry,
    TouchpointDecoder,
};
use journeyd_types::{Event, Value};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

proptest! {
    #[test]
    fn event_json_round_trips(event in arb_event()) {
        let bytes = serde_json::to_vec(&event).unwrap();
        let back = TouchpointDecoder::new(Format::Json).decode(&bytes).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn event_single_object_round_trips(event in arb_event()) {
        let bytes = encode_touchpoint(&event, Framing::SingleObject);
        prop_assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let back = TouchpointDecoder::new(Format::Avro).decode(&bytes).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn action_json_round_trips(action in arb_action()) {
        let bytes = ActionEncoder::new(Format::Json).encode(&action, "actions.email").unwrap();
        prop_assert_eq!(bytes[0], b'{');
        prop_assert_eq!(decode_action(&bytes).unwrap(), action);
    }

    #[test]
    fn action_single_object_round_trips(action in arb_action()) {
        let bytes = ActionEncoder::new(Format::Avro).encode(&action, "actions.email").unwrap();
        prop_assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        prop_assert_eq!(decode_action(&bytes).unwrap(), action);
    }
}

#[test]
fn event_confluent_round_trips_and_the_schema_is_fetched_once() {
    let registry = FakeRegistry::start();
    let id = SchemaRegistry::new(&registry.url)
        .register("touchpoints-value", TOUCHPOINT_SCHEMA)
        .unwrap();
    let decoder = TouchpointDecoder::with_registry(&registry.url);
    TestRunner::default()
        .run(&arb_event(), |event| {
            let bytes = encode_touchpoint(&event, Framing::Confluent { schema_id: id });
            prop_assert_eq!(bytes[0], 0);
            prop_assert_eq!(&bytes[1..5], &id.to_be_bytes());
            prop_assert_eq!(decoder.decode(&bytes).unwrap(), event);
            Ok(())
        })
        .unwrap();
    assert_eq!(registry.count(&format!("GET /schemas/ids/{id}")), 1);
}

#[test]
fn action_confluent_round_trips_and_the_schema_is_registered_once_per_subject() {
    let registry = FakeRegistry::start();
    let encoder = ActionEncoder::with_registry(&registry.url);
    TestRunner::default()
        .run(&arb_action(), |action| {
            let email = encoder.encode(&action, "actions.email").unwrap();
            let sms = encoder.encode(&action, "actions.sms").unwrap();
            prop_assert_eq!(email[0], 0);
            prop_assert_eq!(&email[..], &sms[..], "same schema, same global id");
            prop_assert_eq!(decode_action(&email).unwrap(), action);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        registry.count("POST /subjects/actions.email-value/versions"),
        1
    );
    assert_eq!(
        registry.count("POST /subjects/actions.sms-value/versions"),
        1
    );
    let subjects = registry.subjects();
    assert_eq!(
        subjects["actions.email-value"],
        subjects["actions.sms-value"]
    );
    // What was registered is our schema, byte for byte: channel teams can fetch it by id.
    let id = subjects["actions.email-value"];
    let decoder_side = SchemaRegistry::new(&registry.url).fetch_schema(id).unwrap();
    assert_eq!(decoder_side, ACTION_SCHEMA);
}

#[test]
fn action_json_is_the_types_serde_form_with_rfc3339_times() {
    let action = sample_action();
    let bytes = ActionEncoder::new(Format::Json)
        .encode(&action, "t")
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["created_at"], "2026-01-05T09:00:00Z");
    assert_eq!(json["expires_at"], "2026-01-12T09:00:00Z");
    assert_eq!(json["kind"], "send");
    assert_eq!(json["journey_version"], 3);
    assert_eq!(json["cancels"], serde_json::Value::Null);
}

#[test]
fn nested_values_travel_as_json_text_in_avro_and_as_json_in_json() {
    let text = r#"{"event_id":"e1","customer_id":"c1","type":"cart","occurred_at":"2026-01-05T09:00:00Z",
                   "attributes":{"items":["a","b"],"price":{"amount":12.5,"currency":"EUR"}}}"#;
    let from_json = TouchpointDecoder::new(Format::Json)
        .decode(text.as_bytes())
        .unwrap();
    assert_eq!(
        from_json.attributes["items"],
        Value::List(vec!["a".into(), "b".into()])
    );
    assert!(matches!(from_json.attributes["price"], Value::Map(_)));

    let avro = encode_touchpoint(&from_json, Framing::SingleObject);
    let from_avro: Event = TouchpointDecoder::new(Format::Avro).decode(&avro).unwrap();
    assert_eq!(from_avro.attributes["items"], Value::from(r#"["a","b"]"#));
    assert_eq!(
        from_avro.attributes["price"],
        Value::from(r#"{"amount":12.5,"currency":"EUR"}"#)
    );

    let mut action = sample_action();
    action.vars.insert(
        "lines".into(),
        Value::List(vec![Value::Int(1), Value::Null]),
    );
    let bytes = ActionEncoder::new(Format::Avro)
        .encode(&action, "t")
        .unwrap();
    assert_eq!(
        decode_action(&bytes).unwrap().vars["lines"],
        Value::from("[1,null]")
    );
}

#[test]
fn json_decoding_accepts_leading_white_space_for_actions() {
    let mut bytes = b"  \n".to_vec();
    bytes.extend(serde_json::to_vec(&sample_action()).unwrap());
    assert_eq!(decode_action(&bytes).unwrap(), sample_action());
}
