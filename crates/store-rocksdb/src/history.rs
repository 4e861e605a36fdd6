//! Customer history in RocksDB: one value per customer, appended by a merge operator, so the
//! write path never reads it.
//!
//! - A value is a list of entries, each a `u32` little-endian length and the entry's bytes,
//!   oldest first.
//! - A merge operand is the limit (`u32` LE) the write was made with, then the entries it
//!   appends, in the same layout. A full merge applies the operands in order: append, then keep
//!   the newest `limit` entries. So the result is the same whether RocksDB merges at once, at
//!   read or at compaction.
//! - There is no partial merge (it declines), so operands are never combined out of order.
//! - An existing value or an operand that cannot be read is dropped rather than failing the
//!   merge: a failed merge would fail the read and every compaction of the key. Reads of a
//!   stored value check it ([`entries`]).

use rocksdb::MergeOperands;

/// The merge operator's name; RocksDB refuses to open a database with another operator name.
pub const MERGE_OPERATOR: &str = "journeyd.history.v1";

/// Appends one entry to a value or operand under construction.
pub(crate) fn push_entry(out: &mut Vec<u8>, entry: &[u8]) {
    let len = u32::try_from(entry.len()).expect("a history entry is under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(entry);
}

/// The merge operand appending `entries`, keeping `limit` entries.
pub fn operand<'a>(limit: usize, entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    let mut out = limit.to_le_bytes().to_vec();
    for e in entries {
        push_entry(&mut out, e);
    }
    out
}

/// The entries of a value (or of an operand after its limit), or `None` if it is damaged.
pub fn entries(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len) as usize;
        let entry = bytes.get(4..4 + len)?;
        out.push(entry);
        bytes = &bytes[4 + len..];
    }
    Some(out)
}

/// The full merge: the existing list, then each operand's entries, each trimmed to its limit.
pub fn full_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    Some(merge(existing, operands.iter()))
}

/// The partial merge declines: operands stay as they are, applied in order by a full merge.
pub fn partial_merge(
    _key: &[u8],
    _existing: Option<&[u8]>,
    _operands: &MergeOperands,
) -> Option<Vec<u8>> {
    None
}

/// Applies operands to an existing value.
pub fn merge<'a>(existing: Option<&'a [u8]>, operands: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut list: std::collections::VecDeque<&[u8]> =
        existing.and_then(entries).unwrap_or_default().into();
    for op in operands {
        let Some((limit, rest)) = op.split_first_chunk::<4>() else {
            continue;
        };
        let Some(new) = entries(rest) else {
            continue;
        };
        list.extend(new);
        let limit = u32::from_le_bytes(*limit) as usize;
        while list.len() > limit {
            list.pop_front();
        }
    }
    let mut out = Vec::with_capacity(list.iter().map(|e| 4 + e.len()).sum());
    for e in list {
        push_entry(&mut out, e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_append_in_order_and_trim() {
        let a = operand(3, [&b"a"[..], b"b"]);
        let b = operand(3, [&b"c"[..], b"", b"d"]);
        let v = merge(None, [&a[..], &b[..]].into_iter());
        assert_eq!(entries(&v).unwrap(), vec![&b"c"[..], b"", b"d"]);
        // One at a time gives the same.
        let v1 = merge(None, [&a[..]].into_iter());
        let v2 = merge(Some(&v1), [&b[..]].into_iter());
        assert_eq!(v2, v);
        let shrink = operand(1, [&b"e"[..]]);
        let v3 = merge(Some(&v), [&shrink[..]].into_iter());
        assert_eq!(entries(&v3).unwrap(), vec![&b"e"[..]]);
    }

    #[test]
    fn damaged_bytes_are_dropped_not_fatal() {
        assert_eq!(entries(&[1, 0, 0, 0]), None);
        let ok = operand(4, [&b"x"[..]]);
        let v = merge(Some(&[9, 9][..]), [&[1u8][..], &ok[..]].into_iter());
        assert_eq!(entries(&v).unwrap(), vec![&b"x"[..]]);
    }
}
