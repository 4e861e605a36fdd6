//! The key layout: every table lives in the default column family behind a one-byte prefix.
//!
//! | table     | prefix | rest of the key                                                 |
//! |-----------|--------|-----------------------------------------------------------------|
//! | customers | `0x01` | customer id (UTF-8)                                             |
//! | timers    | `0x02` | due (`i64` big-endian, sign bit flipped), customer id (UTF-8)   |
//! | offsets   | `0x03` | topic length (`u16` BE), topic, partition (`i32` BE, sign flipped) |
//! | journeys  | `0x04` | id length (`u8`), id, version (`u32` BE)                        |
//! | history   | `0x05` | customer id (UTF-8)                                             |
//! | owners    | `0x06` | partition (`i32` BE, sign flipped), customer id (UTF-8)         |
//! | counts    | `0x07` | partition (`i32` BE, sign flipped)                              |
//! | meta      | `0x7f` | name (UTF-8)                                                    |
//!
//! Invariants:
//! - A prefix byte never changes meaning: a retired table's prefix goes to [`RETIRED_PREFIXES`]
//!   and is never reused. Every prefix maps to exactly one table (tested).
//! - Integers are fixed-width big-endian, signed ones with the sign bit flipped, so byte order is
//!   numeric order: timers sort by `(due, customer)` and iterate in due order.
//! - Offsets sort by `(topic length, topic, partition)` and journeys by `(id length, id,
//!   version)`: readers that promise another order sort after reading.
//! - `decode(encode(key)) == key` for every key (property-tested).

use std::fmt;

use journeyd_store::{check_topic, Error, Millis, MAX_JOURNEY_ID_BYTES};

/// A table: a range of keys sharing one prefix byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Customer state, by customer id.
    Customers,
    /// The timer index, by due time then customer id; values name the owning partition.
    Timers,
    /// Consumed offsets, by topic then partition.
    Offsets,
    /// Journey versions, by id then version.
    Journeys,
    /// Customer history, by customer id; values are entry lists kept by a merge operator.
    History,
    /// The customers of each input partition (empty values): what a sweep of a partition reads.
    Owners,
    /// The counts kept with each input partition's customers (opaque values), by partition.
    Counts,
    /// Store metadata (format version, counters), by name.
    Meta,
}

/// Prefix bytes of tables that no longer exist; never to be used again.
pub const RETIRED_PREFIXES: &[u8] = &[];

impl Table {
    /// Every live table.
    pub const ALL: [Table; 8] = [
        Table::Customers,
        Table::Timers,
        Table::Offsets,
        Table::Journeys,
        Table::History,
        Table::Owners,
        Table::Counts,
        Table::Meta,
    ];

    /// The table's prefix byte. Never change one.
    pub const fn prefix(self) -> u8 {
        match self {
            Table::Customers => 0x01,
            Table::Timers => 0x02,
            Table::Offsets => 0x03,
            Table::Journeys => 0x04,
            Table::History => 0x05,
            Table::Owners => 0x06,
            Table::Counts => 0x07,
            Table::Meta => 0x7f,
        }
    }

    /// The table a prefix byte belongs to, if any.
    pub fn from_prefix(byte: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.prefix() == byte)
    }

    /// The table's name, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Timers => "timers",
            Table::Offsets => "offsets",
            Table::Journeys => "journeys",
            Table::History => "history",
            Table::Owners => "owners",
            Table::Counts => "counts",
            Table::Meta => "meta",
        }
    }

    /// The smallest key of the table (inclusive lower bound of an iteration).
    pub fn lower_bound(self) -> Vec<u8> {
        vec![self.prefix()]
    }

    /// The first key after the table (exclusive upper bound of an iteration).
    pub fn upper_bound(self) -> Vec<u8> {
        // No prefix is 0xff, so this never overflows.
        vec![self.prefix() + 1]
    }
}

/// Names of the meta entries.
pub mod meta {
    /// The store's format version (`u32` BE), written at creation.
    pub const FORMAT_VERSION: &str = "format_version";
    /// The number of entries in the timer index (`u64` BE).
    pub const TIMER_COUNT: &str = "timer_count";
    /// The number of stored customers (`u64` BE).
    pub const CUSTOMER_COUNT: &str = "customer_count";
}

const SIGN_64: u64 = 1 << 63;
const SIGN_32: u32 = 1 << 31;

fn flip_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ SIGN_64).to_be_bytes()
}

fn unflip_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ SIGN_64) as i64
}

fn flip_i32(v: i32) -> [u8; 4] {
    ((v as u32) ^ SIGN_32).to_be_bytes()
}

fn unflip_i32(b: [u8; 4]) -> i32 {
    (u32::from_be_bytes(b) ^ SIGN_32) as i32
}

/// The key of a customer's state.
pub fn customer(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(Table::Customers.prefix());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The key of a customer's history.
pub fn history(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(Table::History.prefix());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The key of a timer index entry.
pub fn timer(due: Millis, customer: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 8 + customer.len());
    key.push(Table::Timers.prefix());
    key.extend_from_slice(&flip_i64(due));
    key.extend_from_slice(customer.as_bytes());
    key
}

/// A timer key's due time and customer id bytes, without copying them; `None` if `key` is not
/// a timer key (see [`Key::decode`] for why).
pub fn timer_parts(key: &[u8]) -> Option<(Millis, &[u8])> {
    let (&prefix, rest) = key.split_first()?;
    if prefix != Table::Timers.prefix() {
        return None;
    }
    let (due, customer) = rest.split_first_chunk::<8>()?;
    Some((unflip_i64(*due), customer))
}

/// The first key after every timer due at or before `up_to` (an exclusive upper bound).
pub fn timers_after(up_to: Millis) -> Vec<u8> {
    match up_to.checked_add(1) {
        Some(next) => timer(next, ""),
        None => Table::Timers.upper_bound(),
    }
}

/// The key of a consumed offset; refuses a topic longer than a `u16` length.
pub fn offset(topic: &str, partition: i32) -> Result<Vec<u8>, Error> {
    check_topic(topic)?;
    let mut key = Vec::with_capacity(1 + 2 + topic.len() + 4);
    key.push(Table::Offsets.prefix());
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&flip_i32(partition));
    Ok(key)
}

/// The key of a journey version; refuses an id longer than a `u8` length.
pub fn journey(id: &str, version: u32) -> Result<Vec<u8>, Error> {
    if id.len() > MAX_JOURNEY_ID_BYTES {
        return Err(Error::InvalidArgument {
            what: format!("journey \"{}\" version {version}", id.escape_debug()),
            reason: format!(
                "the id is {} bytes long; at most {MAX_JOURNEY_ID_BYTES} are allowed",
                id.len()
            ),
        });
    }
    let mut key = Vec::with_capacity(1 + 1 + id.len() + 4);
    key.push(Table::Journeys.prefix());
    key.push(id.len() as u8);
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    Ok(key)
}

/// The key of a customer's entry in their input partition's list.
pub fn owner(partition: i32, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + id.len());
    key.push(Table::Owners.prefix());
    key.extend_from_slice(&flip_i32(partition));
    key.extend_from_slice(id.as_bytes());
    key
}

/// The first key of a partition's list, and the first after it.
pub fn owners_of(partition: i32) -> (Vec<u8>, Vec<u8>) {
    let from = owner(partition, "");
    let to = match partition.checked_add(1) {
        Some(next) => owner(next, ""),
        None => Table::Owners.upper_bound(),
    };
    (from, to)
}

/// The key of a partition's counts.
pub fn counts(partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(5);
    key.push(Table::Counts.prefix());
    key.extend_from_slice(&flip_i32(partition));
    key
}

/// The key of a meta entry.
pub fn meta(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(Table::Meta.prefix());
    key.extend_from_slice(name.as_bytes());
    key
}

/// A decoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A customer's state.
    Customer(String),
    /// A customer's history.
    History(String),
    /// A timer index entry.
    Timer {
        /// When it is due.
        due: Millis,
        /// Whose timer it is.
        customer: String,
    },
    /// A consumed offset.
    Offset {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A journey version.
    Journey {
        /// The journey id.
        id: String,
        /// The version.
        version: u32,
    },
    /// A customer in their input partition's list.
    Owner {
        /// The partition.
        partition: i32,
        /// The customer.
        customer: String,
    },
    /// A partition's counts.
    Counts(i32),
    /// A meta entry.
    Meta(String),
}

impl Key {
    /// The table the key belongs to.
    pub fn table(&self) -> Table {
        match self {
            Key::Customer(_) => Table::Customers,
            Key::History(_) => Table::History,
            Key::Timer { .. } => Table::Timers,
            Key::Offset { .. } => Table::Offsets,
            Key::Journey { .. } => Table::Journeys,
            Key::Owner { .. } => Table::Owners,
            Key::Counts(_) => Table::Counts,
            Key::Meta(_) => Table::Meta,
        }
    }

    /// Encodes the key; fails only for a too-long topic or journey id.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        Ok(match self {
            Key::Customer(id) => customer(id),
            Key::History(id) => history(id),
            Key::Timer { due, customer: c } => timer(*due, c),
            Key::Offset { topic, partition } => offset(topic, *partition)?,
            Key::Journey { id, version } => journey(id, *version)?,
            Key::Owner {
                partition,
                customer: c,
            } => owner(*partition, c),
            Key::Counts(partition) => counts(*partition),
            Key::Meta(name) => meta(name),
        })
    }

    /// Decodes a key, or says why it is corrupt.
    pub fn decode(bytes: &[u8]) -> Result<Key, Error> {
        let corrupt = |reason: &str| Error::Corrupt {
            key: describe_raw(bytes),
            reason: reason.to_owned(),
        };
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| corrupt(&format!("the {what} is not UTF-8")))
        };
        let (&prefix, rest) = bytes.split_first().ok_or_else(|| corrupt("empty key"))?;
        let table = Table::from_prefix(prefix)
            .ok_or_else(|| corrupt(&format!("unknown table prefix 0x{prefix:02x}")))?;
        match table {
            Table::Customers => Ok(Key::Customer(text(rest, "customer id")?)),
            Table::History => Ok(Key::History(text(rest, "customer id")?)),
            Table::Timers => {
                let (due, customer) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| corrupt("a timer key is shorter than its due time"))?;
                Ok(Key::Timer {
                    due: unflip_i64(*due),
                    customer: text(customer, "customer id")?,
                })
            }
            Table::Offsets => {
                let (len, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or_else(|| corrupt("an offset key is shorter than its topic length"))?;
                let len = usize::from(u16::from_be_bytes(*len));
                if rest.len() != len + 4 {
                    return Err(corrupt(&format!(
                        "an offset key with a {len}-byte topic must be {} bytes long, not {}",
                        1 + 2 + len + 4,
                        bytes.len()
                    )));
                }
                let (topic, partition) = rest.split_at(len);
                let partition: [u8; 4] = partition.try_into().expect("length checked");
                Ok(Key::Offset {
                    topic: text(topic, "topic")?,
                    partition: unflip_i32(partition),
                })
            }
            Table::Journeys => {
                let (&len, rest) = rest
                    .split_first()
                    .ok_or_else(|| corrupt("a journey key is shorter than its id length"))?;
                let len = usize::from(len);
                if rest.len() != len + 4 {
                    return Err(corrupt(&format!(
                        "a journey key with a {len}-byte id must be {} bytes long, not {}",
                        1 + 1 + len + 4,
                        bytes.len()
                    )));
                }
                let (id, version) = rest.split_at(len);
                let version: [u8; 4] = version.try_into().expect("length checked");
                Ok(Key::Journey {
                    id: text(id, "journey id")?,
                    version: u32::from_be_bytes(version),
                })
            }
            Table::Owners => {
                let (partition, customer) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| corrupt("an owner key is shorter than its partition"))?;
                Ok(Key::Owner {
                    partition: unflip_i32(*partition),
                    customer: text(customer, "customer id")?,
                })
            }
            Table::Counts => {
                let partition: [u8; 4] = rest
                    .try_into()
                    .map_err(|_| corrupt("a counts key must be 5 bytes long"))?;
                Ok(Key::Counts(unflip_i32(partition)))
            }
            Table::Meta => Ok(Key::Meta(text(rest, "meta name")?)),
        }
    }
}

/// Quotes a string for a message, escaping what a terminal would not show.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.escape_debug())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Customer(id) => write!(f, "customers/{}", quote(id)),
            Key::History(id) => write!(f, "history/{}", quote(id)),
            Key::Timer { due, customer } => write!(f, "timers/{due}/{}", quote(customer)),
            Key::Offset { topic, partition } => write!(f, "offsets/{}/{partition}", quote(topic)),
            Key::Journey { id, version } => write!(f, "journeys/{}/v{version}", quote(id)),
            Key::Owner {
                partition,
                customer,
            } => write!(f, "owners/{partition}/{}", quote(customer)),
            Key::Counts(partition) => write!(f, "counts/{partition}"),
            Key::Meta(name) => write!(f, "meta/{}", quote(name)),
        }
    }
}

/// Describes a raw key for a message: decoded if it decodes, escaped bytes otherwise.
pub fn describe(bytes: &[u8]) -> String {
    match Key::decode(bytes) {
        Ok(key) => key.to_string(),
        Err(_) => describe_raw(bytes),
    }
}

fn describe_raw(bytes: &[u8]) -> String {
    const MAX: usize = 96;
    let table = bytes
        .first()
        .and_then(|&b| Table::from_prefix(b))
        .map_or("unknown table", Table::name);
    let shown = &bytes[..bytes.len().min(MAX)];
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{table} key b\"{}{more}\"", shown.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_prefix_maps_to_exactly_one_table() {
        for byte in 0..=u8::MAX {
            let tables: Vec<_> = Table::ALL.iter().filter(|t| t.prefix() == byte).collect();
            assert!(
                tables.len() <= 1,
                "prefix 0x{byte:02x} is shared by {tables:?}"
            );
            assert_eq!(Table::from_prefix(byte).is_some(), tables.len() == 1);
            if RETIRED_PREFIXES.contains(&byte) {
                assert!(tables.is_empty(), "retired prefix 0x{byte:02x} reused");
            }
        }
        for table in Table::ALL {
            assert_eq!(Table::from_prefix(table.prefix()), Some(table));
            assert_ne!(table.prefix(), 0xff, "upper_bound needs prefix + 1");
        }
    }

    #[test]
    fn prefixes_never_change() {
        // The stored format: changing any of these orphans every existing store.
        let pinned = [
            (Table::Customers, 0x01),
            (Table::Timers, 0x02),
            (Table::Offsets, 0x03),
            (Table::Journeys, 0x04),
            (Table::History, 0x05),
            (Table::Owners, 0x06),
            (Table::Counts, 0x07),
            (Table::Meta, 0x7f),
        ];
        for (table, prefix) in pinned {
            assert_eq!(table.prefix(), prefix, "{}", table.name());
        }
        assert_eq!(
            timer(-1, "c"),
            [0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'c']
        );
        assert_eq!(offset("t", 0).unwrap(), [0x03, 0, 1, b't', 0x80, 0, 0, 0]);
        assert_eq!(journey("j", 2).unwrap(), [0x04, 1, b'j', 0, 0, 0, 2]);
        assert_eq!(owner(1, "c"), [0x06, 0x80, 0, 0, 1, b'c']);
    }

    #[test]
    fn corrupt_keys_are_described() {
        for bad in [
            &b""[..],
            &[0x99, 1],
            &[0x02, 1, 2],
            &[0x03, 0, 5, b'a', 0, 0, 0, 0],
            &[0x04, 3, b'a', 0, 0, 0, 1],
            &[0x01, 0xff, 0xfe],
        ] {
            let err = Key::decode(bad).expect_err("corrupt");
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(
                !err.to_string().contains("Corrupt {"),
                "Display, not Debug: {err}"
            );
        }
        let err = Key::decode(&[0x03, 0, 5]).unwrap_err();
        assert!(err.to_string().contains("offsets key"), "{err}");
        assert_eq!(describe(&timer(5, "a\nb")), "timers/5/\"a\\nb\"");
    }

    #[test]
    fn too_long_names_are_refused() {
        assert!(offset(&"t".repeat(usize::from(u16::MAX)), 0).is_ok());
        assert!(offset(&"t".repeat(usize::from(u16::MAX) + 1), 0).is_err());
        assert!(journey(&"j".repeat(255), 0).is_ok());
        assert!(journey(&"j".repeat(256), 0).is_err());
    }

    fn any_key() -> impl Strategy<Value = Key> {
        prop_oneof![
            any::<String>().prop_map(Key::Customer),
            any::<String>().prop_map(Key::History),
            (any::<i64>(), any::<String>())
                .prop_map(|(due, customer)| Key::Timer { due, customer }),
            (any::<String>(), any::<i32>())
                .prop_map(|(topic, partition)| Key::Offset { topic, partition }),
            ("\\PC{0,60}", any::<u32>()).prop_map(|(id, version)| Key::Journey { id, version }),
            (any::<i32>(), any::<String>()).prop_map(|(partition, customer)| Key::Owner {
                partition,
                customer
            }),
            any::<i32>().prop_map(Key::Counts),
            any::<String>().prop_map(Key::Meta),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(key in any_key()) {
            let bytes = key.encode().unwrap();
            prop_assert_eq!(bytes[0], key.table().prefix());
            prop_assert_eq!(Key::decode(&bytes).unwrap(), key);
        }

        #[test]
        fn owner_keys_sort_by_partition_and_stay_in_its_range(
            a in (any::<i32>(), any::<String>()),
            b in (any::<i32>(), any::<String>()),
        ) {
            prop_assert_eq!(owner(a.0, &a.1).cmp(&owner(b.0, &b.1)), a.cmp(&b));
            let (from, to) = owners_of(a.0);
            let key = owner(a.0, &a.1);
            prop_assert!(from <= key && key < to);
            let other = owner(b.0, &b.1);
            prop_assert_eq!(from <= other && other < to, a.0 == b.0);
        }

        #[test]
        fn timer_keys_sort_by_due_then_customer(
            a in (any::<i64>(), any::<String>()),
            b in (any::<i64>(), any::<String>()),
        ) {
            prop_assert_eq!(timer(a.0, &a.1).cmp(&timer(b.0, &b.1)), a.cmp(&b));
        }

        #[test]
        fn timer_keys_sort_by_due_near_zero(
            a in (-1000i64..1000, "[a-c]{0,3}"),
            b in (-1000i64..1000, "[a-c]{0,3}"),
        ) {
            prop_assert_eq!(timer(a.0, &a.1).cmp(&timer(b.0, &b.1)), a.cmp(&b));
        }

        #[test]
        fn timers_after_bounds_exactly(up_to in any::<i64>(), due in any::<i64>(), c in any::<String>()) {
            prop_assert_eq!(timer(due, &c) < timers_after(up_to), due <= up_to);
        }

        #[test]
        fn offset_keys_sort_by_topic_length_topic_partition(
            a in (any::<String>(), any::<i32>()),
            b in (any::<String>(), any::<i32>()),
        ) {
            let ka = offset(&a.0, a.1).unwrap();
            let kb = offset(&b.0, b.1).unwrap();
            let order = (a.0.len(), &a.0, a.1).cmp(&(b.0.len(), &b.0, b.1));
            prop_assert_eq!(ka.cmp(&kb), order);
        }

        #[test]
        fn offset_keys_of_one_topic_sort_by_partition(topic in any::<String>(), p in any::<i32>(), q in any::<i32>()) {
            prop_assert_eq!(offset(&topic, p).unwrap().cmp(&offset(&topic, q).unwrap()), p.cmp(&q));
        }

        #[test]
        fn journey_keys_of_one_id_sort_by_version(id in "\\PC{0,60}", v in any::<u32>(), w in any::<u32>()) {
            prop_assert_eq!(journey(&id, v).unwrap().cmp(&journey(&id, w).unwrap()), v.cmp(&w));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(key) = Key::decode(&bytes) {
                prop_assert_eq!(key.encode().unwrap(), bytes);
            }
        }
    }
}
