//! Helpers for the end-to-end suites in `tests/tests/`: a real Kafka broker nobody on this
//! project wrote (`tansu`), a TCP proxy to cut the network path, the `journeyd` binary as a
//! separate process, an independent Kafka client, and the simulator as the oracle.

#![allow(missing_debug_implementations)]

pub mod client;
pub mod journeyd;
pub mod proxy;
pub mod scenario;
pub mod tansu;

use std::path::PathBuf;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A free TCP port on the loopback interface (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Real time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
