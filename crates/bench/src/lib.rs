//! The performance harness of journeyd (`cargo bench -p journeyd-bench --bench journeyd`).
//!
//! Every row of the table is measured in the same run as its own limit, so that the figure is a
//! ratio that holds on a noisy machine: the engine against its target, the engine with RocksDB
//! against a raw `WriteBatch` loop over the same keys and values, the service end to end
//! against a plain consume-and-produce copy through the same Kafka, latency at half the
//! measured maximum, and a million customers with a million timers against the targets. See
//! `docs/performance.md`.
//!
//! Each row is a `*_row` module ([`raw_firing`] is the scale row's machine limit). What several
//! rows share is in [`support`] (the Kafka harness of the end-to-end rows in
//! [`support::kafka`]), [`workload`] and [`table`], so that no row module imports another.

pub mod audience_row;
pub mod engine_row;
pub mod failover_row;
pub mod kafka_row;
pub mod latency_row;
pub mod raw_firing;
pub mod restore_row;
pub mod rocks_row;
pub mod scale_row;
pub mod support;
pub mod table;
pub mod workload;
