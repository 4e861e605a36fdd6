//! Touchpoint events: what upstream systems tell us a customer did.

use crate::time::{self, Millis};
use crate::value::{Attributes, Value};
use serde::{Deserialize, Serialize};

/// The special event that merges its customer (A) into the customer named by its attribute
/// `into` (B): contract v2, identity. An absent or empty `into` makes it invalid.
pub const CUSTOMER_MERGED: &str = "customer_merged";

/// One touchpoint event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id given by the producer; replays carry the same id.
    pub event_id: String,
    /// The customer the event is about.
    pub customer_id: String,
    /// What happened, such as `signup` or `email_clicked`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Where it happened (`web`, `app`, `email`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// When it happened.
    #[serde(with = "time::rfc3339")]
    pub occurred_at: Millis,
    /// Anything else the producer sent.
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

/// Why a touchpoint could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    /// The text is not a JSON event of the expected shape.
    #[error("not a valid event: {0}")]
    Malformed(String),
    /// A required field is empty.
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    /// A `customer_merged` event without a surviving customer.
    #[error(
        "customer_merged needs attribute `into`: the surviving customer's id, a non-empty string"
    )]
    MergeWithoutInto,
}

impl Event {
    /// Parses one JSON event and checks that its ids and type are not empty.
    pub fn from_json(text: &str) -> Result<Event, EventError> {
        let event: Event =
            serde_json::from_str(text).map_err(|e| EventError::Malformed(e.to_string()))?;
        event.check()?;
        Ok(event)
    }

    /// Checks the fields every event needs.
    pub fn check(&self) -> Result<(), EventError> {
        if self.event_id.is_empty() {
            return Err(EventError::Empty("event_id"));
        }
        if self.customer_id.is_empty() {
            return Err(EventError::Empty("customer_id"));
        }
        if self.event_type.is_empty() {
            return Err(EventError::Empty("type"));
        }
        if self.event_type == CUSTOMER_MERGED && self.merged_into().is_none() {
            return Err(EventError::MergeWithoutInto);
        }
        Ok(())
    }

    /// The surviving customer of a `customer_merged` event (its attribute `into`, when a
    /// non-empty string).
    pub fn merged_into(&self) -> Option<&str> {
        match self.attributes.get("into") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// Returns an attribute, if present.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let e = Event::from_json(r#"{"event_id":"e1","customer_id":"c1","type":"signup","channel":"web","occurred_at":"2026-01-05T09:00:00Z","attributes":{"plan":"basic"}}"#).unwrap();
        assert_eq!(e.event_type, "signup");
        assert_eq!(e.channel.as_deref(), Some("web"));
        assert_eq!(e.attribute("plan"), Some(&Value::from("basic")));
        assert_eq!(
            e.occurred_at,
            crate::time::parse_rfc3339("2026-01-05T09:00:00Z").unwrap()
        );
    }

    #[test]
    fn channel_and_attributes_are_optional() {
        let e = Event::from_json(r#"{"event_id":"e1","customer_id":"c1","type":"purchase","occurred_at":"2026-01-05T09:00:00Z"}"#).unwrap();
        assert!(e.channel.is_none());
        assert!(e.attributes.is_empty());
    }

    #[test]
    fn rejects_bad_events_with_a_reason() {
        let missing = Event::from_json(
            r#"{"event_id":"e1","type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        );
        assert!(matches!(missing, Err(EventError::Malformed(m)) if m.contains("customer_id")));
        let empty = Event::from_json(
            r#"{"event_id":"e1","customer_id":"","type":"x","occurred_at":"2026-01-05T09:00:00Z"}"#,
        );
        assert_eq!(empty, Err(EventError::Empty("customer_id")));
        let time = Event::from_json(
            r#"{"event_id":"e1","customer_id":"c","type":"x","occurred_at":"monday"}"#,
        );
        assert!(matches!(time, Err(EventError::Malformed(m)) if m.contains("RFC 3339")));
        let unknown = Event::from_json(
            r#"{"event_id":"e1","customer_id":"c","type":"x","occurred_at":"2026-01-05T09:00:00Z","extra":1}"#,
        );
        assert!(matches!(unknown, Err(EventError::Malformed(m)) if m.contains("extra")));
    }

    #[test]
    fn a_merge_needs_a_surviving_customer() {
        let line = |attrs: &str| {
            Event::from_json(&format!(
                r#"{{"event_id":"e1","customer_id":"a","type":"customer_merged","occurred_at":"2026-01-05T09:00:00Z"{attrs}}}"#
            ))
        };
        assert_eq!(line(""), Err(EventError::MergeWithoutInto));
        assert_eq!(
            line(r#","attributes":{"into":""}"#),
            Err(EventError::MergeWithoutInto)
        );
        assert_eq!(
            line(r#","attributes":{"into":7}"#),
            Err(EventError::MergeWithoutInto)
        );
        let ok = line(r#","attributes":{"into":"b"}"#).unwrap();
        assert_eq!(ok.merged_into(), Some("b"));
        assert!(EventError::MergeWithoutInto.to_string().contains("`into`"));
    }
}
