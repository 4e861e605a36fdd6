//! The changelog's records, one kind per key prefix: a customer's record (their stored state
//! after a batch, with their timer, the history entries the batch added and the input offsets
//! it applied), and an input position (how far the batches before it read one input topic's
//! partition).
//!
//! and the counts kept with the partition's customers (see `journeyd_engine::report`).
//!
//! Keys: `c` + the customer id, `o` + the input topic, `n` for the counts. The prefix keeps a
//! customer named like a topic from compacting away a position. A customer record with no
//! value is a tombstone.
//! Values start with a format byte ([`VERSION`]), then postcard.

use serde::{Deserialize, Serialize};

/// The key prefix of a customer's record.
pub const CUSTOMER: u8 = b'c';
/// The key prefix of an input position.
pub const POSITION: u8 = b'o';
/// The key of the partition's counts.
pub const COUNTS: u8 = b'n';
/// The format byte every value starts with.
pub const VERSION: u8 = 1;

/// A customer as one batch left them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    /// The stored state, as the store holds it.
    pub state: Vec<u8>,
    /// When the customer's timer is due, if one is set.
    pub wake: Option<i64>,
    /// The history entries the batch appended, oldest first.
    pub history: Vec<Vec<u8>>,
    /// For each input topic the batch read the customer's events from: the offset of the last
    /// one applied. A replica that restores this record and reads those events again skips
    /// them (their actions went out before this record was produced).
    pub applied: Vec<(String, i64)>,
}

/// One decoded changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A customer's state after a batch (`None`: deleted).
    Customer {
        /// The customer id.
        id: String,
        /// Their record, or `None` for a tombstone.
        record: Option<CustomerRecord>,
    },
    /// How far the batches before it read an input topic's partition.
    Position {
        /// The input topic.
        topic: String,
        /// The next offset to read.
        next: i64,
    },
    /// The counts kept with the partition's customers, as the store keeps them
    /// ([`journeyd_engine::report::Counts::to_bytes`]; checked when decoded).
    Counts(Vec<u8>),
}

/// The key of a customer's record.
pub fn customer_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(CUSTOMER);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The key of an input topic's position.
pub fn position_key(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1);
    k.push(POSITION);
    k.extend_from_slice(topic.as_bytes());
    k
}

/// The key of the partition's counts.
pub fn counts_key() -> Vec<u8> {
    vec![COUNTS]
}

/// Encodes the partition's counts (as the store keeps them).
pub fn encode_counts(counts: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(counts.len() + 1);
    v.push(VERSION);
    v.extend_from_slice(counts);
    v
}

/// Encodes a customer's record.
pub fn encode_customer(record: &CustomerRecord) -> Vec<u8> {
    let v = vec![VERSION];
    postcard::to_extend(record, v).expect("serialising to memory cannot fail")
}

/// Encodes an input position.
pub fn encode_position(next: i64) -> Vec<u8> {
    let v = vec![VERSION];
    postcard::to_extend(&next, v).expect("serialising to memory cannot fail")
}

/// The value after its format byte.
fn body(value: &[u8]) -> Result<&[u8], String> {
    match value.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(format!(
            "format {v}, but this journeyd knows only format {VERSION}"
        )),
        None => Err("the value is empty".into()),
    }
}

/// Decodes a record; the error says what is wrong with it.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, String> {
    let key = key.ok_or("the record has no key")?;
    let (&kind, name) = key.split_first().ok_or("the record's key is empty")?;
    let name = std::str::from_utf8(name).map_err(|e| format!("the key is not UTF-8: {e}"))?;
    match kind {
        CUSTOMER => {
            let record = match value {
                None => None,
                Some(v) => Some(
                    postcard::from_bytes(body(v)?)
                        .map_err(|e| format!("the customer record does not decode: {e}"))?,
                ),
            };
            Ok(Record::Customer {
                id: name.to_owned(),
                record,
            })
        }
        POSITION => {
            let v = value.ok_or("an input position without a value")?;
            let next = postcard::from_bytes(body(v)?)
                .map_err(|e| format!("the input position does not decode: {e}"))?;
            Ok(Record::Position {
                topic: name.to_owned(),
                next,
            })
        }
        COUNTS if name.is_empty() => {
            let v = value.ok_or("the counts without a value")?;
            let bytes = body(v)?;
            journeyd_engine::report::Counts::from_bytes(bytes)
                .map_err(|e| format!("the counts do not decode: {e}"))?;
            Ok(Record::Counts(bytes.to_vec()))
        }
        other => Err(format!(
            "unknown record kind {:?} (keys start with `c` or `o`, or are `n`)",
            other as char
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = CustomerRecord {
            state: vec![1, 2, 3],
            wake: Some(-5),
            history: vec![vec![9], vec![]],
            applied: vec![("touchpoints".into(), 41)],
        };
        let got = decode(Some(&customer_key("c1")), Some(&encode_customer(&r))).unwrap();
        assert_eq!(
            got,
            Record::Customer {
                id: "c1".into(),
                record: Some(r)
            }
        );
        let got = decode(Some(&customer_key("c1")), None).unwrap();
        assert_eq!(
            got,
            Record::Customer {
                id: "c1".into(),
                record: None
            }
        );
        let counts = journeyd_engine::report::Counts::default().to_bytes();
        let got = decode(Some(&counts_key()), Some(&encode_counts(&counts))).unwrap();
        assert_eq!(got, Record::Counts(counts));
        let got = decode(Some(&position_key("t")), Some(&encode_position(7))).unwrap();
        assert_eq!(
            got,
            Record::Position {
                topic: "t".into(),
                next: 7
            }
        );
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let e = decode(None, Some(b"x")).unwrap_err();
        assert!(e.contains("no key"), "{e}");
        let e = decode(Some(b"zc1"), Some(b"x")).unwrap_err();
        assert!(e.contains("unknown record kind 'z'"), "{e}");
        let e = decode(Some(b"cc1"), Some(&[9, 1])).unwrap_err();
        assert!(e.contains("format 9"), "{e}");
        let e = decode(Some(b"cc1"), Some(&[VERSION, 200])).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
        let e = decode(Some(b"ot"), None).unwrap_err();
        assert!(e.contains("without a value"), "{e}");
        let e = decode(Some(b"n"), Some(&[VERSION, 1, 200])).unwrap_err();
        assert!(e.contains("the counts do not decode"), "{e}");
        let e = decode(Some(b"nx"), Some(&[VERSION])).unwrap_err();
        assert!(e.contains("unknown record kind 'n'"), "{e}");
    }
}
