//! Start-up shared by `main` and the integration tests: open the store, load the journeys
//! against the stored versions, and build the shared service state.

use crate::catalog;
use crate::clock::{wall_now, Clock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::Shared;
use anyhow::{Context as _, Result};
use journeyd_engine::{Engine, Settings};
use journeyd_journey::StepKind;
use journeyd_store::Store;
use journeyd_store_rocksdb::{RocksStore, StoreOptions};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

/// The store and the engine, ready to run.
#[derive(Debug)]
pub struct Opened {
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The engine over the journeys folder and every stored older version.
    pub engine: Engine,
}

/// Opens the store and loads the journeys (saving versions seen for the first time). Invalid
/// journeys stop the start with the same problems `journey validate` prints.
pub fn open(config: &Config) -> Result<Opened> {
    std::fs::create_dir_all(&config.store.path).with_context(|| {
        format!(
            "cannot create the store directory {}",
            config.store.path.display()
        )
    })?;
    let options = StoreOptions {
        block_cache_bytes: (config.store.block_cache_mb as usize) << 20,
        state_cache_bytes: (config.store.state_cache_mb as usize) << 20,
        sync_writes: config.store.sync_writes,
        ..StoreOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        RocksStore::open(&config.store.path, &options)
            .with_context(|| format!("cannot open the store at {}", config.store.path.display()))?,
    );
    let settings = Settings {
        history_limit: config.processing.history_limit,
        ..Settings::default()
    };
    let loaded = catalog::load(&config.journeys.dir, store.as_ref(), settings, wall_now())?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "Journey warning.");
    }
    store.put_journeys(&loaded.new_versions)?;
    tracing::info!(
        journeys = loaded.engine.journeys().len(),
        dir = %config.journeys.dir.display(),
        new_versions = loaded.new_versions.len(),
        "Journeys loaded."
    );
    Ok(Opened {
        store,
        engine: loaded.engine,
    })
}

/// The channels the journeys send to (each has an action topic).
pub fn channels(engine: &Engine) -> Vec<String> {
    let mut channels: Vec<String> = engine
        .journeys()
        .iter()
        .flat_map(|j| j.steps.iter())
        .filter_map(|s| match &s.kind {
            StepKind::Send(send) => Some(send.channel.clone()),
            _ => None,
        })
        .collect();
    channels.sort();
    channels.dedup();
    channels
}

/// For unit tests: the default configuration with its store and (empty) journeys folder in
/// `dir`, and the shared state opened on it.
#[cfg(test)]
pub(crate) fn for_tests(dir: &std::path::Path) -> (Config, Arc<Shared>) {
    let mut config = Config::default();
    config.store.path = dir.join("store");
    config.journeys.dir = dir.join("journeys");
    std::fs::create_dir_all(&config.journeys.dir).unwrap();
    let opened = open(&config).unwrap();
    let shared = shared(config.clone(), opened).unwrap();
    (config, shared)
}

/// Builds the state the service loop, the HTTP endpoint and the signal handlers share.
pub fn shared(config: Config, opened: Opened) -> Result<Arc<Shared>> {
    Ok(Arc::new(Shared {
        clock: Clock::new(config.processing.clock_speed),
        engine: RwLock::new(Arc::new(opened.engine)),
        store: opened.store,
        metrics: Metrics::new().context("registering metrics")?,
        partitions: Arc::default(),
        progress: crate::service::Progress::default(),
        quarantine: crate::quarantine::Quarantine::default(),
        guards: Arc::default(),
        lanes: crate::service::Lanes::default(),
        reload: AtomicBool::new(false),
        statuses: RwLock::default(),
        published_counts: RwLock::default(),
        runs: Default::default(),
        sweeps: crate::service::Sweeps::default(),
        config,
    }))
}
