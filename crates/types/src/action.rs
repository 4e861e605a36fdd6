//! Actions: what journeyd asks channel adapters to do.

use crate::time::{self, Millis};
use crate::value::Attributes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether an action asks for a send or cancels an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Send a message.
    Send,
    /// Withdraw an earlier send that has not been acted on yet.
    Cancel,
}

/// Why a send was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer responded in another channel (an event in the send's `cancel_on`).
    Responded,
    /// The journey instance ended through `exit.on`.
    Exited,
    /// An operator stopped the journey (contract v2, journey status).
    Stopped,
    /// The customer's erasure was requested (contract v2, erasure).
    Erased,
}

impl CancelReason {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Responded => "responded",
            CancelReason::Exited => "exited",
            CancelReason::Stopped => "stopped",
            CancelReason::Erased => "erased",
        }
    }
}

impl ActionKind {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Send => "send",
            ActionKind::Cancel => "cancel",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action for a channel adapter.
///
/// `action_id` is stable: processing the same input from the same state gives the same id, so
/// adapters de-duplicate on it. A cancel carries the cancelled send's journey, step, channel and
/// template, and names the send in `cancels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Stable id (32 hex digits).
    pub action_id: String,
    /// Send or cancel.
    pub kind: ActionKind,
    /// The customer.
    pub customer_id: String,
    /// The journey id.
    pub journey: String,
    /// The journey version the customer's instance runs.
    pub journey_version: u32,
    /// The step id of the send.
    pub step: String,
    /// The channel (`email`, `sms`, ...); the topic it goes to.
    pub channel: String,
    /// The message template.
    pub template: String,
    /// Personalisation values.
    pub vars: Attributes,
    /// For a cancel: the `action_id` of the cancelled send.
    pub cancels: Option<String>,
    /// For a cancel: why.
    pub reason: Option<CancelReason>,
    /// When the action was created (engine time).
    #[serde(with = "time::rfc3339")]
    pub created_at: Millis,
    /// For a send: when it is no longer worth sending.
    #[serde(with = "time::rfc3339::option")]
    pub expires_at: Option<Millis>,
}
