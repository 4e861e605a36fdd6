//! From files to a [`Catalog`]: every problem of every file is collected, never only the first.
//!
//! - [`context`]: the diagnostics of one file, and typed reads of its nodes;
//! - [`journey`]: a journey file, step by step;
//! - [`graph`]: the checks of a journey's step graph;
//! - [`policies`]: the policies file.

use crate::diag::{Diagnostic, Severity};
use crate::model::*;
use crate::yaml::{self};
use crate::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod choice;
mod context;
mod graph;
mod journey;
mod policies;

use context::*;
use journey::*;
use policies::*;

/// A loaded folder: the catalog and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The journeys and the policies.
    pub catalog: Catalog,
    /// The policies file, when the folder has one.
    pub policies_file: Option<PathBuf>,
    /// Problems that do not stop the files from loading (unreachable steps), sorted by place.
    pub warnings: Vec<Diagnostic>,
}

/// Reads every `*.yaml` / `*.yml` file directly in `dir` (sorted by name; sub-folders such as
/// `tests/` and other files are skipped), then loads them with [`load_sources`].
pub fn load_dir(dir: &Path) -> Result<Loaded, Error> {
    let io = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // `metadata` follows symbolic links: a link to a file is loaded, a folder is not.
        if yaml
            && std::fs::metadata(&path)
                .map_err(|e| io(&path, e))?
                .is_file()
        {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        files.push((path, text));
    }
    load_sources(&files)
}

/// Loads journey and policies files already in memory, in the order given (the first of two
/// journeys with the same id, or of two policies files, is the one kept in messages).
/// Returns the catalog when no file has an error; otherwise every error and warning, sorted by
/// file, line and column.
pub fn load_sources(files: &[(PathBuf, String)]) -> Result<Loaded, Error> {
    let mut diags = Vec::new();
    let mut journeys: Vec<Arc<Journey>> = Vec::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let mut policies: Option<(Policies, PathBuf)> = None;
    for (path, text) in files {
        let mut cx = Cx {
            file: path.clone(),
            diags: Vec::new(),
        };
        let (root, yaml_errors) = yaml::parse(text);
        let fatal = root.is_none() && !yaml_errors.is_empty();
        for e in yaml_errors {
            cx.push(e.line, e.col, Severity::Error, e.message);
        }
        match root {
            None if !fatal => cx.push(
                1,
                1,
                Severity::Error,
                "the file is empty: a journey file starts with `journey: ID`, the policies file \
                 with `policies:`"
                    .into(),
            ),
            None => {}
            Some(root) => {
                if root.get("journey").is_some() {
                    let (journey, id_node) = load_journey(&mut cx, &root);
                    if let Some(id_node) = id_node {
                        if let Some(first) = ids.get(&journey.id) {
                            let msg = format!(
                                "journey \"{}\" is already defined in {}",
                                journey.id,
                                first.display()
                            );
                            cx.error(id_node, msg);
                        } else {
                            ids.insert(journey.id.clone(), path.clone());
                        }
                    }
                    journeys.push(Arc::new(journey));
                } else if root.get("policies").is_some() {
                    let loaded = load_policies(&mut cx, &root);
                    if let Some((_, first)) = &policies {
                        let key = key_node(&root, "policies").unwrap_or(&root);
                        let msg = format!(
                            "policies are already defined in {} (keep a single policies file)",
                            first.display()
                        );
                        cx.error(key, msg);
                    } else {
                        policies = Some((loaded, path.clone()));
                    }
                } else {
                    let found = match root.map() {
                        Some(pairs) if !pairs.is_empty() => {
                            format!("found {}", pairs[0].0.describe())
                        }
                        _ => format!("found {}", root.describe()),
                    };
                    let msg = format!(
                        "expected a top-level `journey:` key (a journey) or `policies:` key (the \
                         contact policies), {found}"
                    );
                    cx.error(&root, msg);
                }
            }
        }
        diags.extend(cx.diags);
    }
    diags.sort_by(|a: &Diagnostic, b: &Diagnostic| {
        (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col))
    });
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(Error::Invalid(diags));
    }
    journeys.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let (policies, policies_file) = match policies {
        Some((p, file)) => (p, Some(file)),
        None => (Policies::default(), None),
    };
    Ok(Loaded {
        catalog: Catalog { journeys, policies },
        policies_file,
        warnings: diags,
    })
}
