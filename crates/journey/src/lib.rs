//! The journey language: journey and policy files, parsed, validated and compiled.
//!
//! [`load_dir`] reads a journeys folder; [`load_sources`] does the same on texts already in
//! memory. Both report every problem at once as [`Diagnostic`]s (`FILE:LINE:COL: error: ...`),
//! and return a [`Catalog`] only when there is no error. The contract this implements is
//! `docs/journeys.md`.

mod diag;
mod duration;
mod expr;
mod model;

pub use diag::{Diagnostic, Severity};
pub use duration::{format_duration, parse_duration, DurationError};
pub use expr::Expr;
pub use model::*;
