//! A damaged length in a touchpoint written with an older schema (read through apache-avro)
//! is refused, not a request for gigabytes. Its own test binary: apache-avro keeps one
//! allocation limit per process, set by the first call.

use journeyd_codec::{limit_avro_allocations, Format, TouchpointDecoder};

/// The fingerprint of `schemas/history/touchpoint.v0.avsc` (pinned in `schemas.rs`).
const TOUCHPOINT_V0_FINGERPRINT: u64 = 0xf14c_327a_7e43_6e3c;

fn zigzag(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

#[test]
fn a_damaged_map_count_is_refused_under_the_limit() {
    assert_eq!(
        limit_avro_allocations(1 << 20),
        1 << 20,
        "the first call sets it"
    );
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&TOUCHPOINT_V0_FINGERPRINT.to_le_bytes());
    for s in ["e0", "c0", "signup"] {
        bytes.extend(zigzag(s.len() as i64));
        bytes.extend_from_slice(s.as_bytes());
    }
    bytes.extend(zigzag(1_767_603_600_000));
    // The attributes map claims 500 million entries (apache-avro's default limit would have it
    // reserve them: about 43 GB, and the allocation failure aborts the process).
    bytes.extend(zigzag(500_000_000));
    let error = TouchpointDecoder::new(Format::Avro)
        .decode(&bytes)
        .unwrap_err();
    assert_eq!(error.reason(), "bad_avro", "{error}");
}
