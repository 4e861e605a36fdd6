//! journeyd, the service: consumes touchpoints from Kafka, runs the journey engine with state in
//! RocksDB, and produces actions to per-channel topics. `main.rs` wires it; the modules are a
//! library so that the integration tests can run the service in-process.

pub mod admin;
pub mod app;
pub mod catalog;
pub mod changelog;
pub mod clock;
pub mod config;
pub mod dead_letters;
pub mod delivery;
pub mod demo;
pub mod embedded;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod processor;
pub mod quarantine;
pub mod sending;
pub mod service;
pub mod unwritten;
