//! The journeyd engine: a deterministic state machine per customer.
//!
//! `Engine::process(state, customer, input, now) -> Effects`: no I/O, no clock, no randomness.
//! The daemon, the simulator and the tests all drive this one function; events and fired timers
//! take the same path.

mod engine;
mod eval;
mod history;
pub mod ids;
mod localtime;
pub mod report;
mod state;

pub use engine::{
    append_history, merge_history, ArmEvent, Effects, Engine, Input, Merged, Settings, TimerChange,
    CONSENT_CHANGED, ERASURE_REQUESTED, PROFILE_UPDATED,
};
pub use eval::EventView;
pub use history::HistoryLine;
pub use journeyd_types::CUSTOMER_MERGED;
pub use state::*;
