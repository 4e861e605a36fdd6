//! The state store of journeyd: per-customer state, the timer index, consumed offsets and the
//! journey versions ever deployed.
//!
//! The store knows nothing of the engine: customer state is opaque bytes. Kafka is the log and
//! the store its materialised view, so a [`WriteSet`] carries the state changes *and* the offsets
//! they consumed, and [`Store::write`] applies all of it or none of it.
//!
//! Invariants every implementation keeps (checked by [`conformance`]):
//! - [`Store::write`] is atomic: after it returns `Ok` every part is visible, after `Err` none is.
//! - Within one [`WriteSet`], customer operations apply in order (the last one for an id wins),
//!   timer clears apply before timer sets (so clearing and setting one entry leaves it set), and
//!   the last offset for a `(topic, partition)` wins.
//! - A customer's history is a list of entries, appended by [`WriteSet::history`] and trimmed to
//!   the newest [`WriteSet::history_limit`]; deleting the customer deletes it.
//! - The timer index is a set of `(due, customer)`: setting a present entry and clearing an absent
//!   one are no-ops.
//! - [`Store::pending_timers`] and [`Store::customer_count`] are exact counters, read in O(1).
//! - Timers are ordered by `(due, customer)`, `due` numerically (negative first), `customer`
//!   bytewise; offsets by `(topic, partition)`; journeys by `(id, version)`.
//! - Input that no implementation can store (a topic longer than [`MAX_TOPIC_BYTES`], a journey id
//!   longer than [`MAX_JOURNEY_ID_BYTES`]) is refused with [`Error::InvalidArgument`] before
//!   anything is written, by every implementation alike.

use std::path::PathBuf;

pub mod conformance;
mod memory;

pub use memory::MemoryStore;

/// Milliseconds since the Unix epoch (engine time).
pub type Millis = i64;

/// The longest Kafka topic name the store accepts, in bytes.
pub const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// The longest journey id the store accepts, in bytes.
pub const MAX_JOURNEY_ID_BYTES: usize = u8::MAX as usize;

/// A consumed position: the next offset to consume from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    /// The Kafka topic.
    pub topic: String,
    /// The partition within the topic.
    pub partition: i32,
    /// The next offset to consume (one past the last one applied).
    pub next: i64,
}

/// One version of a journey as deployed, kept forever so running instances can finish on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredJourney {
    /// The journey id.
    pub id: String,
    /// The version number; `(id, version)` identifies the entry.
    pub version: u32,
    /// The digest of the compiled journey, to tell a changed file from an unchanged one.
    pub digest: u64,
    /// The file it was loaded from.
    pub file: String,
    /// The source text of the file.
    pub source: String,
    /// When this version was first seen.
    pub first_seen: Millis,
}

/// A due entry of the timer index, with the input partition that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    /// When it falls due.
    pub due: Millis,
    /// The customer.
    pub customer: String,
    /// The owning partition; `None` when it was set without one.
    pub partition: Option<i32>,
}

/// Everything one step of the engine changes, applied atomically by [`Store::write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// Customer state changes, applied in order: `Some(bytes)` puts, `None` deletes.
    pub customers: Vec<(String, Option<Vec<u8>>)>,
    /// `(due, customer)` entries to remove from the timer index (before `set_timers`).
    pub clear_timers: Vec<(Millis, String)>,
    /// `(due, customer)` entries to add to the timer index (after `clear_timers`).
    pub set_timers: Vec<(Millis, String)>,
    /// The input partition that owns each customer whose timers this write sets (the
    /// partition their events come from). A timer set for a customer not named here belongs
    /// to every partition. See [`Store::due_timers_in`].
    pub timer_partitions: Vec<(String, i32)>,
    /// The input partition that owns each customer this write puts or deletes (their events
    /// come from it): a put of a customer not stored before lists them under it, a delete
    /// takes them off. See [`Store::customers_of`]. A customer not named here is not listed
    /// (nor taken off); one stored before stays listed where they were.
    pub owners: Vec<(String, i32)>,
    /// Consumed positions, each overwriting the one stored for its `(topic, partition)`.
    pub offsets: Vec<Offset>,
    /// The counts kept with each input partition's customers (opaque bytes, the caller's),
    /// each overwriting the ones stored for its partition. See [`Store::counts`].
    pub counts: Vec<(i32, Vec<u8>)>,
    /// History entries to append, `(customer, entry)`, in order (after `customers`: deleting a
    /// customer deletes their history first). Entries are opaque bytes, like states.
    pub history: Vec<(String, Vec<u8>)>,
    /// How many history entries each customer named in `history` keeps after this write (the
    /// oldest go first). `0` keeps none.
    pub history_limit: usize,
    /// Optional, for each entry of `customers`: whether that customer's state was stored
    /// before this write, as the caller knows it (the daemon reads every state it writes). A
    /// store may take it instead of reading the keys again to keep [`Store::customer_count`]
    /// exact, so it must be right; only a customer's first entry counts. `None`, or a length
    /// other than that of `customers`: the store finds out itself.
    pub customers_existed: Option<Vec<bool>>,
    /// Optional, for each entry of `clear_timers` and then of `set_timers`: `Some(existed)`
    /// where the caller knows whether that entry was in the timer index before this write
    /// (the daemon knows it of the entries it fires, having just read them), `None` where it
    /// does not. A store may take a known answer instead of reading the entry to keep
    /// [`Store::pending_timers`] exact, so it must be right; only an entry's first mention
    /// counts. `None`, or a length other than that of both lists: the store finds out itself.
    pub timers_existed: Option<Vec<Option<bool>>>,
}

impl WriteSet {
    /// Whether the set changes nothing.
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.clear_timers.is_empty()
            && self.set_timers.is_empty()
            && self.offsets.is_empty()
            && self.history.is_empty()
            && self.counts.is_empty()
    }

    /// The partition that owns each customer's timers in this write: the last one
    /// `timer_partitions` gives for the customer. The caller picks the hasher.
    pub fn timer_owners<S: std::hash::BuildHasher + Default>(
        &self,
    ) -> std::collections::HashMap<&str, i32, S> {
        self.timer_partitions
            .iter()
            .map(|(c, p)| (c.as_str(), *p))
            .collect()
    }

    /// Checks that every part can be stored; implementations call this before writing anything.
    pub fn validate(&self) -> Result<(), Error> {
        self.offsets.iter().try_for_each(|o| check_topic(&o.topic))
    }
}

/// Checks that a topic name fits the store's offset keys.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(Error::InvalidArgument {
            what: format!("the offset of topic {}", abbreviate(topic)),
            reason: format!(
                "the topic name is {} bytes long; at most {MAX_TOPIC_BYTES} are allowed",
                topic.len()
            ),
        });
    }
    Ok(())
}

/// Checks that every journey can be stored; implementations call this before writing anything.
pub fn check_journeys(journeys: &[StoredJourney]) -> Result<(), Error> {
    for j in journeys {
        if j.id.len() > MAX_JOURNEY_ID_BYTES {
            return Err(Error::InvalidArgument {
                what: format!("journey {} version {}", abbreviate(&j.id), j.version),
                reason: format!(
                    "the id is {} bytes long; at most {MAX_JOURNEY_ID_BYTES} are allowed",
                    j.id.len()
                ),
            });
        }
    }
    Ok(())
}

/// Quotes a name for a message, cut to a readable length.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("\"{}\"", s.escape_debug());
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("\"{}…\"", s[..end].escape_debug())
}

/// Per-customer state, the timer index, offsets and journeys, behind one interface.
///
/// See the crate documentation for the invariants every implementation keeps.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one customer's state.
    fn customer(&self, id: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Reads several customers' states, in the order of `ids`.
    fn customers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error>;
    /// Reads the timers with `due <= up_to`, ordered by `(due, customer)`, at most `limit`.
    fn due_timers(&self, up_to: Millis, limit: usize) -> Result<Vec<(Millis, String)>, Error> {
        let due = self.due_timers_in(up_to, limit, &|_| true)?;
        Ok(due.into_iter().map(|t| (t.due, t.customer)).collect())
    }
    /// Like [`Store::due_timers`], with each timer's partition, skipping the timers whose
    /// partition `owned` refuses (timers set without a partition are always taken). Skipped
    /// entries stay in the index.
    fn due_timers_in(
        &self,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<DueTimer>, Error>;
    /// Like [`Store::due_timers_in`], leaving out the entries of `skip`, which do not count
    /// towards `limit`. `skip` is sorted by `(due, customer)`, without duplicates: the entries
    /// that writes not yet made change, which a reader through them takes from the writes.
    /// The default reads `skip.len()` more entries and filters them out; a store may pass
    /// over them more cheaply.
    fn due_timers_in_except(
        &self,
        up_to: Millis,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
        skip: &[(Millis, &str)],
    ) -> Result<Vec<DueTimer>, Error> {
        let mut due = self.due_timers_in(up_to, limit.saturating_add(skip.len()), owned)?;
        due.retain(|t| skip.binary_search(&(t.due, t.customer.as_str())).is_err());
        due.truncate(limit);
        Ok(due)
    }
    /// Reads the earliest timer, if any.
    fn next_timer(&self) -> Result<Option<(Millis, String)>, Error>;
    /// Counts the entries in the timer index, in O(1).
    fn pending_timers(&self) -> u64;
    /// Reads every stored offset, ordered by `(topic, partition)`.
    fn offsets(&self) -> Result<Vec<Offset>, Error>;
    /// Reads every journey version ever stored, ordered by `(id, version)`.
    fn journeys(&self) -> Result<Vec<StoredJourney>, Error>;
    /// Stores journey versions atomically, each overwriting the one with its `(id, version)`.
    fn put_journeys(&self, journeys: &[StoredJourney]) -> Result<(), Error>;
    /// Applies a write set atomically: all of it or none of it.
    fn write(&self, set: &WriteSet) -> Result<(), Error>;
    /// Reads the counts last written for input partition `partition` (see
    /// [`WriteSet::counts`]), if any.
    fn counts(&self, partition: i32) -> Result<Option<Vec<u8>>, Error>;
    /// Reads a customer's history entries, oldest first (empty for an unknown customer).
    fn history(&self, id: &str) -> Result<Vec<Vec<u8>>, Error>;
    /// Approximates the store's size in bytes (on disk, or in memory).
    fn size_bytes(&self) -> u64;
    /// Counts the stored customers, in O(1).
    fn customer_count(&self) -> u64;
    /// The customers listed under input partition `partition` (see [`WriteSet::owners`]), in
    /// id order (bytewise), those after `after` only, at most `limit`: a sweep of a
    /// partition's customers reads them a page at a time.
    fn customers_of(
        &self,
        partition: i32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error>;
}

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("cannot open the state store at {}: {message}", path.display())]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// What the backend said.
        message: String,
        /// Whether retrying later may succeed (for example, another process holds the lock).
        transient: bool,
    },
    /// The backend failed an operation.
    #[error("state store {op} failed: {message}")]
    Backend {
        /// The operation, such as `write` or `read customer`.
        op: &'static str,
        /// What the backend said.
        message: String,
        /// Whether retrying later may succeed (I/O trouble, busy, timed out).
        transient: bool,
    },
    /// A stored key or value cannot be decoded.
    #[error("corrupt state store entry {key}: {reason}")]
    Corrupt {
        /// The entry, described for a human (table and decoded parts, or escaped bytes).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store was written by a newer journeyd, in a format this binary does not know.
    #[error(
        "the state store at {} has format version {found}, but this journeyd knows at most \
         version {supported}: run a newer journeyd, or point this one at another directory",
        path.display()
    )]
    FormatTooNew {
        /// The store's directory.
        path: PathBuf,
        /// The version found in the store.
        found: u32,
        /// The newest version this binary knows.
        supported: u32,
    },
    /// Something cannot be stored (the store is unchanged).
    #[error("cannot store {what}: {reason}")]
    InvalidArgument {
        /// What was refused.
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed: back off and do not advance.
    ///
    /// Everything else is permanent: corruption, a too-new format and invalid input will fail
    /// the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Open { transient, .. } | Error::Backend { transient, .. } => *transient,
            Error::Corrupt { .. } | Error::FormatTooNew { .. } | Error::InvalidArgument { .. } => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        conformance::run_all(&|| Box::new(MemoryStore::new()));
    }

    /// A store whose timer counter adds every set and subtracts every clear, present or not:
    /// the bug the suite exists to catch.
    #[derive(Debug, Default)]
    struct NaiveCounter {
        inner: MemoryStore,
        timers: std::sync::atomic::AtomicI64,
    }

    impl Store for NaiveCounter {
        fn customer(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
            self.inner.customer(id)
        }
        fn customers(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
            self.inner.customers(ids)
        }
        fn due_timers_in(
            &self,
            up_to: Millis,
            limit: usize,
            owned: &dyn Fn(i32) -> bool,
        ) -> Result<Vec<DueTimer>, Error> {
            self.inner.due_timers_in(up_to, limit, owned)
        }
        fn next_timer(&self) -> Result<Option<(Millis, String)>, Error> {
            self.inner.next_timer()
        }
        fn pending_timers(&self) -> u64 {
            self.timers.load(std::sync::atomic::Ordering::SeqCst).max(0) as u64
        }
        fn offsets(&self) -> Result<Vec<Offset>, Error> {
            self.inner.offsets()
        }
        fn journeys(&self) -> Result<Vec<StoredJourney>, Error> {
            self.inner.journeys()
        }
        fn put_journeys(&self, journeys: &[StoredJourney]) -> Result<(), Error> {
            self.inner.put_journeys(journeys)
        }
        fn write(&self, set: &WriteSet) -> Result<(), Error> {
            self.inner.write(set)?;
            let delta = set.set_timers.len() as i64 - set.clear_timers.len() as i64;
            self.timers
                .fetch_add(delta, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn history(&self, id: &str) -> Result<Vec<Vec<u8>>, Error> {
            self.inner.history(id)
        }
        fn counts(&self, partition: i32) -> Result<Option<Vec<u8>>, Error> {
            self.inner.counts(partition)
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn customer_count(&self) -> u64 {
            self.inner.customer_count()
        }
        fn customers_of(
            &self,
            partition: i32,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<String>, Error> {
            self.inner.customers_of(partition, after, limit)
        }
    }

    #[test]
    #[should_panic(expected = "a duplicate in one write counts once")]
    fn the_suite_catches_a_naive_timer_counter() {
        conformance::timer_duplicates_idempotent(&NaiveCounter::default());
    }

    #[test]
    #[should_panic(expected = "pending_timers")]
    fn the_model_test_catches_a_naive_timer_counter() {
        conformance::random_writes_match_model(&NaiveCounter::default());
    }

    #[test]
    fn errors_are_classified_and_readable() {
        let e = Error::Backend {
            op: "write",
            message: "IO error: No space left on device".into(),
            transient: true,
        };
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "state store write failed: IO error: No space left on device"
        );
        let e = Error::FormatTooNew {
            path: "/var/lib/journeyd".into(),
            found: 3,
            supported: 1,
        };
        assert!(!e.is_transient());
        assert!(e.to_string().contains("format version 3"), "{e}");
        let e = check_topic(&"t".repeat(MAX_TOPIC_BYTES + 1)).unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("65536 bytes long"), "{e}");
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn write_set_emptiness() {
        assert!(WriteSet::default().is_empty());
        let set = WriteSet {
            set_timers: vec![(1, "c".into())],
            ..WriteSet::default()
        };
        assert!(!set.is_empty());
    }
}
