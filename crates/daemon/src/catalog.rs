//! Journeys for the service: the folder, checked against every version the service has run.
//!
//! Every journey version ever run is kept in the store with its source. A customer's instance
//! finishes on the version it entered with; new entries take the folder's version. A file whose
//! content changed while its version number did not is refused: bump `version` instead. A load
//! is all or nothing: on any problem the running journeys stay as they are.

use journeyd_engine::{Engine, Settings};
use journeyd_journey::{load_dir, load_sources, Diagnostic, Journey, Severity};
use journeyd_store::{Store, StoredJourney};
use journeyd_types::Millis;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why journeys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The folder has invalid journeys (the same problems `journey validate` reports).
    #[error("the journeys in {} are invalid:\n{}", dir.display(), lines(diagnostics))]
    Invalid {
        /// The folder.
        dir: PathBuf,
        /// The problems.
        diagnostics: Vec<Diagnostic>,
    },
    /// The folder could not be read.
    #[error("cannot read journeys: {0}")]
    Read(String),
    /// The store failed.
    #[error("journey versions could not be read or saved: {0}")]
    Store(#[from] journeyd_store::Error),
}

fn lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loaded folder, ready to swap in.
#[derive(Debug)]
pub struct Loaded {
    /// The engine over the folder's journeys and every older version.
    pub engine: Engine,
    /// Versions seen for the first time (saved when the load is committed).
    pub new_versions: Vec<StoredJourney>,
    /// Warnings (unreachable steps).
    pub warnings: Vec<Diagnostic>,
}

/// Loads and checks the folder against the stored versions. Saves nothing.
pub fn load(
    dir: &Path,
    store: &dyn Store,
    settings: Settings,
    now: Millis,
) -> Result<Loaded, CatalogError> {
    let loaded = match load_dir(dir) {
        Ok(l) => l,
        Err(journeyd_journey::Error::Invalid(diagnostics)) => {
            return Err(CatalogError::Invalid {
                dir: dir.to_path_buf(),
                diagnostics,
            })
        }
        Err(e) => return Err(CatalogError::Read(e.to_string())),
    };
    let stored = store.journeys()?;
    let mut problems = Vec::new();
    let mut new_versions = Vec::new();
    for j in &loaded.catalog.journeys {
        match stored.iter().find(|s| s.id == j.id && s.version == j.version) {
            Some(s) if s.digest != j.digest => problems.push(Diagnostic {
                file: j.file.clone(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!(
                    "journey \"{}\" version {} has changed since it was first run (from {}): give it a new version number",
                    j.id, j.version, s.file
                ),
            }),
            Some(_) => {}
            None => {
                let source = std::fs::read_to_string(&j.file)
                    .map_err(|e| CatalogError::Read(format!("{}: {e}", j.file.display())))?;
                new_versions.push(StoredJourney {
                    id: j.id.clone(),
                    version: j.version,
                    digest: j.digest,
                    file: j.file.display().to_string(),
                    source,
                    first_seen: now,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(CatalogError::Invalid {
            dir: dir.to_path_buf(),
            diagnostics: problems,
        });
    }
    let mut older: Vec<Arc<Journey>> = Vec::new();
    for s in &stored {
        if loaded
            .catalog
            .journeys
            .iter()
            .any(|j| j.id == s.id && j.version == s.version)
        {
            continue;
        }
        match load_sources(&[(PathBuf::from(&s.file), s.source.clone())]) {
            Ok(l) => older.extend(l.catalog.journeys.into_iter().filter(|j| j.id == s.id)),
            Err(e) => {
                tracing::warn!(journey = %s.id, version = s.version, error = %e, "A stored journey version no longer compiles; instances on it will end.")
            }
        }
    }
    Ok(Loaded {
        engine: Engine::with_versions(loaded.catalog, older, settings),
        new_versions,
        warnings: loaded.warnings,
    })
}
