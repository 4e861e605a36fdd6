//! The journey language: journey and policy files, parsed, validated and compiled.
//!
//! [`load_dir`] reads a journeys folder; [`load_sources`] does the same on texts already in
//! memory. Both report every problem at once as [`Diagnostic`]s (`FILE:LINE:COL: error: ...`),
//! and return a [`Catalog`] only when there is no error. The contract this implements is
//! `docs/journeys.md`.

mod diag;
mod document;
mod duration;
mod expr;
pub mod graph;
mod load;
mod model;
mod prefilter;
mod schema;
mod yaml;

pub use diag::{Diagnostic, Severity};
pub use document::{Document, PathStep};
pub use duration::{format_duration, parse_duration, DurationError};
pub use expr::Expr;
pub use load::{load_dir, load_sources, Loaded};
pub use model::*;
pub use prefilter::{Prefilter, Scalar};
pub use schema::json_schema;

use std::path::PathBuf;

/// Why a journeys folder did not load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or the folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Some files are invalid: every error and warning, sorted by file, line and column.
    /// Displayed one diagnostic a line (`FILE:LINE:COL: error: MESSAGE`).
    #[error("{}", lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl Error {
    /// The diagnostics of an invalid folder (empty for an I/O error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Error::Invalid(diags) => diags,
            Error::Io { .. } => &[],
        }
    }
}

fn lines(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
