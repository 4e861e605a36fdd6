//! Shared data types of journeyd.
//!
//! Everything here is plain data: attribute [`Value`]s, touchpoint [`Event`]s, the [`Action`]s
//! channel adapters receive, and time as whole milliseconds since the Unix epoch ([`Millis`]).
//! No crate below the daemon needs more than this to talk about what happens to a customer.

mod action;
mod event;
pub mod time;
mod value;

pub use action::{Action, ActionKind, CancelReason};
pub use event::{Event, EventError, CUSTOMER_MERGED};
pub use time::Millis;
pub use value::{Attributes, Value};
