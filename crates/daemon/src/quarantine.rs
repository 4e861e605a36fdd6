//! The customers quarantined since the start: their processing failed (an unreadable stored
//! state, or a panic in the engine), so their input went to the dead-letter topic and their
//! stored state was left as it was. `GET /customers/{id}` says so, the
//! `journeyd_customers_quarantined` gauge counts them, and a customer leaves the list once a
//! batch processes them again without failing (after a fix, or an erasure of the state).
//!
//! Kept in memory, not in the store: a corrupt state is found again at the customer's next
//! input, and a panic again at the same input; writing a marker would cost a write for every
//! customer of every batch to clear it.

use journeyd_types::Millis;
use std::collections::HashMap;
use std::sync::Mutex;

/// The most customers listed; more are counted but not listed (a bug that fails every
/// customer must not grow memory without bound).
pub const MOST_LISTED: usize = 10_000;

/// Why and since when a customer is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What failed.
    pub error: String,
    /// When it first failed (wall clock, ms).
    pub since: Millis,
}

/// The quarantined customers.
#[derive(Debug, Default)]
pub struct Quarantine {
    listed: Mutex<HashMap<String, Entry>>,
}

impl Quarantine {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists a customer whose processing failed (keeps the first failure's time). True when
    /// they were not listed yet.
    pub fn add(&self, customer: &str, error: &str, at: Millis) -> bool {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(customer) {
            e.error = error.to_owned();
            return false;
        }
        if m.len() < MOST_LISTED {
            m.insert(
                customer.to_owned(),
                Entry {
                    error: error.to_owned(),
                    since: at,
                },
            );
        }
        true
    }

    /// Takes customers processed without failing off the list. Cheap when none is listed.
    pub fn lift<'a>(&self, customers: impl IntoIterator<Item = &'a str>) {
        let mut m = self.lock();
        if m.is_empty() {
            return;
        }
        for c in customers {
            m.remove(c);
        }
    }

    /// Why a customer is quarantined, if they are.
    pub fn get(&self, customer: &str) -> Option<Entry> {
        self.lock().get(customer).cloned()
    }

    /// How many are listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_are_listed_until_processed_again_and_the_list_is_bounded() {
        let q = Quarantine::default();
        assert!(q.add("a", "boom", 10));
        assert!(!q.add("a", "boom again", 20), "listed already");
        assert_eq!(
            q.get("a"),
            Some(Entry {
                error: "boom again".into(),
                since: 10
            })
        );
        q.lift(["b"]);
        assert_eq!(q.len(), 1);
        q.lift(["a"]);
        assert!(q.is_empty());
        for i in 0..MOST_LISTED + 5 {
            q.add(&format!("c{i}"), "x", 0);
        }
        assert_eq!(q.len(), MOST_LISTED);
    }
}
