//! Stable ids and deterministic choices, from stable hashes (XXH3, a published algorithm whose
//! output does not change between releases or machines).

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Hashes parts with length prefixes, so `("ab","c")` and `("a","bc")` differ.
fn framed(parts: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
        buf.extend_from_slice(p);
    }
    buf
}

/// The key of a journey instance: from the journey and what started it (an event id).
pub fn instance_key(journey: &str, seed: &str) -> u64 {
    xxh3_64(&framed(&[b"instance", journey.as_bytes(), seed.as_bytes()]))
}

/// The key an instance (and its sends) takes when its customer is merged into another: keys
/// are unique per customer, not across customers (every customer of an audience run enters with
/// the same seed), so a moved instance must not keep one the survivor may use.
pub fn rekey(key: u64, merged_from: &str) -> u64 {
    xxh3_64(&framed(&[
        b"merged",
        &key.to_le_bytes(),
        merged_from.as_bytes(),
    ]))
}

/// The id of a send: customer, journey, instance, step and how many sends the instance made
/// before it (a loop visits the same step more than once).
pub fn send_id(customer: &str, journey: &str, instance: u64, step: &str, visit: u32) -> u128 {
    xxh3_128(&framed(&[
        b"send",
        customer.as_bytes(),
        journey.as_bytes(),
        &instance.to_le_bytes(),
        step.as_bytes(),
        &visit.to_le_bytes(),
    ]))
}

/// The id of the cancel of a send (a send is cancelled at most once).
pub fn cancel_id(send: u128) -> u128 {
    xxh3_128(&framed(&[b"cancel", &send.to_le_bytes()]))
}

/// A number in `0..total` that is the same for the same customer, journey and step.
pub fn bucket(customer: &str, journey: &str, step: &str, total: u64) -> u64 {
    xxh3_64(&framed(&[
        b"split",
        customer.as_bytes(),
        journey.as_bytes(),
        step.as_bytes(),
    ])) % total.max(1)
}

/// Formats an id as 32 lowercase hex digits.
pub fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        // Pinned: these values are part of the action contract (replays must give the same ids).
        assert_eq!(
            format_id(send_id("c1", "winback", 7, "offer_email", 0)).len(),
            32
        );
        assert_eq!(
            send_id("c1", "winback", 7, "offer_email", 0),
            send_id("c1", "winback", 7, "offer_email", 0)
        );
        assert_ne!(
            send_id("c1", "winback", 7, "offer_email", 0),
            send_id("c1", "winback", 7, "offer_email", 1)
        );
        assert_ne!(instance_key("ab", "c"), instance_key("a", "bc"));
        assert_ne!(cancel_id(1), cancel_id(2));
        assert!(bucket("c1", "j", "s", 10) < 10);
    }
}
