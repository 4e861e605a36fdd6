//! Dead letters: the records that carry what journeyd could not use or could not deliver, and
//! how Kafka's refusals are told apart.
//!
//! Two dead-letter topics:
//! - `outputs.dead_letter_topic` (default `touchpoints.dlq`) takes input messages that cannot be
//!   used (undecodable, invalid, oversized, a customer whose processing failed). The record
//!   keeps the message's key, headers and payload as far as they fit in
//!   `outputs.dead_letter_max_bytes`; what was cut is said in headers. Every dead letter fits
//!   what a producer and a broker with default settings accept, so a poison message can never
//!   stall the pipeline by being too large to dead-letter.
//! - `outputs.action_dead_letter_topic` (default `actions.dlq`) takes actions that Kafka refuses
//!   for good (too large, not authorised, a topic that does not exist, a schema the registry
//!   rejects, a value Avro cannot represent): the action as JSON, with the reason.
//!
//! A produce error is [`Refusal::Transient`] (retried: the broker is away, a timeout),
//! [`Refusal::Permanent`] (the message goes to a dead-letter topic instead, and the batch lands)
//! or [`Refusal::Fatal`] (the producer cannot go on: the service stops).

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;

/// A message that goes to the dead-letter topic, and why.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message as consumed.
    pub message: OwnedMessage,
    /// The reason label (`journeyd_events_rejected_total{reason}`).
    pub reason: &'static str,
    /// What was wrong, for the operator.
    pub error: String,
}

/// The most bytes of a message key a dead letter keeps; a longer key is left out (header
/// `journeyd.dlq.key_bytes` gives its size).
pub const MAX_KEY_BYTES: usize = 4096;
/// The most bytes of the original headers a dead letter keeps; more are left out whole
/// (header `journeyd.dlq.headers_bytes` gives their size).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most bytes a header's framing takes beside its key and value (two varint lengths).
const HEADER_FRAMING: usize = 10;
/// The most bytes of an error message in a header.
pub const MAX_ERROR_BYTES: usize = 4096;
/// What a dead letter may take beside its payload: the key, the original headers and
/// journeyd's own headers, at most. The producer's `message.max.bytes` must leave this room
/// above `outputs.dead_letter_max_bytes` (checked at start).
pub const ROOM_BESIDE_PAYLOAD: usize =
    MAX_KEY_BYTES + MAX_HEADER_BYTES + 2 * MAX_ERROR_BYTES + 1024;
/// The payload prefix kept when the broker refused a dead letter as too large (its topic takes
/// less than the producer): a second, small record says where the original is.
pub const FALLBACK_PAYLOAD_BYTES: usize = 1024;

/// A dead letter as it is produced: key, payload and headers, each within its bound.
#[derive(Debug)]
pub struct DeadLetterRecord<'a> {
    /// The original key, when it fits.
    pub key: Option<&'a [u8]>,
    /// The original payload, or its first `max_payload` bytes.
    pub payload: &'a [u8],
    /// The original headers (when they fit), then journeyd's.
    pub headers: OwnedHeaders,
}

/// Builds the record of a dead letter whose payload is kept up to `max_payload` bytes.
/// `refused` is set when this is the small record sent after the broker refused the first one.
pub fn record<'a>(
    d: &'a DeadLetter,
    max_payload: usize,
    refused: Option<&str>,
) -> DeadLetterRecord<'a> {
    let payload = d.message.payload().unwrap_or_default();
    let kept = &payload[..payload.len().min(max_payload)];
    let key = d.message.key();
    let (key, key_dropped) = match key {
        Some(k)
            if k.len() > MAX_KEY_BYTES || refused.is_some() && k.len() > FALLBACK_PAYLOAD_BYTES =>
        {
            (None, Some(k.len()))
        }
        other => (other, None),
    };
    let mut h = OwnedHeaders::new();
    // Each header's bytes with its framing on the wire (two varint lengths).
    let header_bytes: usize = d.message.headers().map_or(0, |hs| {
        hs.iter()
            .map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len) + HEADER_FRAMING)
            .sum()
    });
    let headers_dropped = header_bytes > MAX_HEADER_BYTES || refused.is_some();
    if let Some(orig) = d.message.headers().filter(|_| !headers_dropped) {
        // journeyd's own headers come from journeyd alone: an input cannot pass for one.
        for header in orig.iter().filter(|x| !x.key.starts_with("journeyd.dlq.")) {
            h = h.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let partition = d.message.partition().to_string();
    let offset = d.message.offset().to_string();
    let original = payload.len().to_string();
    let key_bytes = key_dropped.map(|n| n.to_string());
    let headers_bytes = headers_dropped.then(|| header_bytes.to_string());
    let truncated = (kept.len() < payload.len()).then_some("true");
    let mut ours: Vec<(&str, Option<&str>)> = vec![
        ("journeyd.dlq.reason", Some(d.reason)),
        ("journeyd.dlq.error", Some(clip(&d.error, MAX_ERROR_BYTES))),
        ("journeyd.dlq.source.topic", Some(d.message.topic())),
        ("journeyd.dlq.source.partition", Some(&partition)),
        ("journeyd.dlq.source.offset", Some(&offset)),
        ("journeyd.dlq.original_bytes", Some(&original)),
        ("journeyd.dlq.truncated", truncated),
        ("journeyd.dlq.key_bytes", key_bytes.as_deref()),
        ("journeyd.dlq.headers_bytes", headers_bytes.as_deref()),
    ];
    if let Some(why) = refused {
        ours.push(("journeyd.dlq.refused", Some(clip(why, MAX_ERROR_BYTES))));
    }
    for (key, value) in ours {
        if let Some(value) = value {
            h = h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    DeadLetterRecord {
        key,
        payload: kept,
        headers: h,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a produce error means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// May pass: the broker is away, a timeout, a full queue. The batch is produced again.
    Transient(String),
    /// Will never pass for this message: it goes to a dead-letter topic with the reason (a
    /// stable snake_case label) and the batch lands.
    Permanent {
        /// `too_large`, `not_authorised`, `invalid_topic`, `invalid_record`,
        /// `registry_rejected` or `unrepresentable`.
        reason: &'static str,
        /// Kafka's or the encoder's words.
        error: String,
    },
    /// The producer cannot go on (an idempotence or transaction failure librdkafka calls
    /// fatal): the service stops with the error.
    Fatal(String),
}

impl Refusal {
    /// Classifies a produce error (from queueing a message or from its delivery report).
    pub fn of(e: &KafkaError) -> Refusal {
        use RDKafkaErrorCode as C;
        let error = e.to_string();
        let code = match e {
            KafkaError::MessageProduction(code) => *code,
            _ => return Refusal::Transient(error),
        };
        let reason = match code {
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => "too_large",
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::GroupAuthorizationFailed => "not_authorised",
            // A missing topic is not dead-lettered: during a cluster restart metadata can
            // lack a topic for a while, and a topic left out of the deployment stalls the
            // service (readiness says so) instead of diverting every action.
            C::InvalidTopic => "invalid_topic",
            C::InvalidRecord | C::UnsupportedForMessageFormat | C::PolicyViolation => {
                "invalid_record"
            }
            C::Fatal => return Refusal::Fatal(error),
            _ => return Refusal::Transient(error),
        };
        Refusal::Permanent { reason, error }
    }

    /// Classifies an action that could not be encoded.
    pub fn of_encoding(e: &journeyd_codec::EncodeError) -> Refusal {
        if e.is_transient() {
            Refusal::Transient(e.to_string())
        } else {
            Refusal::Permanent {
                reason: e.reason(),
                error: e.to_string(),
            }
        }
    }
}

/// The headers of an action dead letter.
pub fn action_dead_letter_headers(
    action: &journeyd_types::Action,
    topic: &str,
    reason: &str,
    error: &str,
    original_bytes: Option<usize>,
) -> OwnedHeaders {
    let size = original_bytes.map(|n| n.to_string());
    let mut h = OwnedHeaders::new_with_capacity(7);
    for (key, value) in [
        ("journeyd.action_id", Some(action.action_id.as_str())),
        ("journeyd.kind", Some(action.kind.as_str())),
        ("journeyd.dlq.reason", Some(reason)),
        ("journeyd.dlq.error", Some(clip(error, MAX_ERROR_BYTES))),
        ("journeyd.dlq.topic", Some(topic)),
        ("journeyd.dlq.original_bytes", size.as_deref()),
    ] {
        if let Some(value) = value {
            h = h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    h
}

/// The value of an action dead letter: the action as JSON, its template variables left out
/// (header `journeyd.dlq.vars_dropped`) when the whole would not fit in `max` bytes.
pub fn action_dead_letter_value(action: &journeyd_types::Action, max: usize) -> (Vec<u8>, bool) {
    let json = |a: &journeyd_types::Action| {
        serde_json::to_vec(a).unwrap_or_else(|e| panic!("an action always serialises to JSON: {e}"))
    };
    let whole = json(action);
    if whole.len() <= max {
        return (whole, false);
    }
    let mut lean = action.clone();
    lean.vars = Default::default();
    (json(&lean), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn dead(key: Option<Vec<u8>>, payload: Vec<u8>, headers: Option<OwnedHeaders>) -> DeadLetter {
        DeadLetter {
            message: OwnedMessage::new(
                Some(payload),
                key,
                "touchpoints".into(),
                Timestamp::NotAvailable,
                3,
                42,
                headers,
            ),
            reason: "oversized",
            error: "é".repeat(5000),
        }
    }

    fn header<'a>(h: &'a OwnedHeaders, key: &str) -> Option<&'a str> {
        h.iter()
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    fn size(r: &DeadLetterRecord<'_>) -> usize {
        let headers: usize = r
            .headers
            .iter()
            .map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len))
            .sum();
        r.payload.len() + r.key.map_or(0, <[u8]>::len) + headers
    }

    #[test]
    fn a_small_dead_letter_is_kept_whole_with_its_headers() {
        let orig = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some(b"abc".as_slice()),
            })
            .insert(Header {
                key: "journeyd.dlq.reason",
                value: Some(b"spoofed".as_slice()),
            });
        let d = dead(Some(b"c1".to_vec()), b"payload".to_vec(), Some(orig));
        let r = record(&d, 1000, None);
        assert_eq!(r.payload, b"payload");
        assert_eq!(r.key, Some(b"c1".as_slice()));
        assert_eq!(header(&r.headers, "trace"), Some("abc"));
        assert_eq!(
            r.headers
                .iter()
                .filter(|x| x.key == "journeyd.dlq.reason")
                .map(|x| x.value)
                .collect::<Vec<_>>(),
            [Some(b"oversized".as_slice())],
            "an input's own journeyd.dlq.* headers are not kept"
        );
        assert_eq!(header(&r.headers, "journeyd.dlq.original_bytes"), Some("7"));
        assert_eq!(header(&r.headers, "journeyd.dlq.truncated"), None);
        assert_eq!(header(&r.headers, "journeyd.dlq.source.offset"), Some("42"));
        assert_eq!(
            header(&r.headers, "journeyd.dlq.source.partition"),
            Some("3")
        );
        let error = header(&r.headers, "journeyd.dlq.error").unwrap();
        assert!(error.len() <= MAX_ERROR_BYTES && error.starts_with('é'));
    }

    #[test]
    fn a_huge_dead_letter_is_cut_to_its_bounds_and_says_so() {
        let big_headers = (0..100).fold(OwnedHeaders::new(), |h, _| {
            h.insert(Header {
                key: "h",
                value: Some(vec![b'x'; 1000].as_slice()),
            })
        });
        let d = dead(
            Some(vec![b'k'; 10_000]),
            vec![7; 3_000_000],
            Some(big_headers),
        );
        let r = record(&d, 256 * 1024, None);
        assert_eq!(r.payload.len(), 256 * 1024);
        assert_eq!(r.payload, &vec![7; 256 * 1024][..]);
        assert_eq!(r.key, None);
        assert_eq!(header(&r.headers, "h"), None);
        assert_eq!(header(&r.headers, "journeyd.dlq.truncated"), Some("true"));
        assert_eq!(
            header(&r.headers, "journeyd.dlq.original_bytes"),
            Some("3000000")
        );
        assert_eq!(header(&r.headers, "journeyd.dlq.key_bytes"), Some("10000"));
        assert_eq!(
            header(&r.headers, "journeyd.dlq.headers_bytes"),
            Some("101100"),
            "100 × (key 1 + value 1,000 + framing 10)"
        );
        assert!(size(&r) <= 256 * 1024 + ROOM_BESIDE_PAYLOAD);
        // After a refusal: a small record that still says where the message is.
        let r = record(&d, FALLBACK_PAYLOAD_BYTES, Some("too large for the topic"));
        assert_eq!(r.payload.len(), FALLBACK_PAYLOAD_BYTES);
        assert_eq!(
            header(&r.headers, "journeyd.dlq.refused"),
            Some("too large for the topic")
        );
        assert_eq!(header(&r.headers, "journeyd.dlq.source.offset"), Some("42"));
        assert!(size(&r) < 16 * 1024);
    }

    #[test]
    fn produce_errors_are_told_apart() {
        use RDKafkaErrorCode as C;
        let of = |c| Refusal::of(&KafkaError::MessageProduction(c));
        for (code, reason) in [
            (C::MessageSizeTooLarge, "too_large"),
            (C::TopicAuthorizationFailed, "not_authorised"),
            (C::InvalidTopic, "invalid_topic"),
            (C::InvalidRecord, "invalid_record"),
        ] {
            assert!(
                matches!(of(code), Refusal::Permanent { reason: r, .. } if r == reason),
                "{code:?}"
            );
        }
        for code in [
            C::UnknownTopic,
            C::UnknownPartition,
            C::MessageTimedOut,
            C::QueueFull,
            C::NotEnoughReplicas,
            C::LeaderNotAvailable,
            C::RequestTimedOut,
        ] {
            assert!(matches!(of(code), Refusal::Transient(_)), "{code:?}");
        }
        assert!(matches!(of(C::Fatal), Refusal::Fatal(_)));
        assert!(matches!(
            Refusal::of(&KafkaError::Canceled),
            Refusal::Transient(_)
        ));
    }
}
