//! Per-customer state: everything the engine remembers about one customer.
//!
//! One value per customer in the store, serialised with postcard ([`CustomerState::to_bytes`]).
//! Journeys are named once, in `journeys`; everything else refers to them by index into it
//! (`j`), and to steps by index within the journey version it names, to keep the value small.
//! Indices into `journeys` never change: entries are only appended.
//!
//! Field order is part of the stored format: append new fields at the end with defaults.

use journeyd_types::{Attributes, CancelReason, Millis};
use serde::{Deserialize, Serialize};

/// Everything the engine remembers about one customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    /// The latest engine time processed for this customer; time never goes back.
    pub clock: Millis,
    /// Profile attributes (`profile` in conditions).
    pub profile: Attributes,
    /// Consent per channel, sorted by channel.
    pub consent: Vec<(String, bool)>,
    /// What the customer has had to do with each journey, in first-contact order.
    pub journeys: Vec<JourneyMemory>,
    /// Active instances, at most one per journey, in entry order.
    pub instances: Vec<Instance>,
    /// Sends emitted and not yet expired or cancelled, in emission order.
    pub outstanding: Vec<Outstanding>,
    /// Sends held by quiet hours, in order of holding.
    pub held: Vec<Held>,
    /// Recent sends, for frequency caps.
    pub sent: Vec<SentMark>,
    /// What happened to the customer and why, oldest first, bounded.
    pub history: Vec<Record>,
    /// The earliest time at which the engine has work for this customer (the pending timer).
    pub wake: Option<Millis>,
}

/// What the customer has had to do with one journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyMemory {
    /// The journey id.
    pub id: String,
    /// When the customer last entered, if ever.
    pub entered_at: Option<Millis>,
    /// The version of the last entry.
    pub version: u32,
    /// Whether the last entry converted.
    pub converted: bool,
    /// The armed inactivity trigger, for inactivity journeys.
    pub inactivity: Option<Inactivity>,
}

/// An armed inactivity trigger: fires at `due` unless another event of the type comes first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inactivity {
    /// When the customer enters.
    pub due: Millis,
    /// The last event of the watched type (the entry condition's `event`).
    pub event: StoredEvent,
}

/// An event kept for later evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The event id.
    pub id: String,
    /// The type.
    pub event_type: String,
    /// The channel.
    pub channel: Option<String>,
    /// When it happened.
    pub occurred_at: Millis,
    /// Its attributes.
    pub attributes: Attributes,
}

/// An active journey instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Index into [`CustomerState::journeys`].
    pub j: u16,
    /// The journey version the instance runs to its end.
    pub version: u32,
    /// The instance key (seeds action ids).
    pub key: u64,
    /// The current step index.
    pub step: u16,
    /// When the customer entered.
    pub entered_at: Millis,
    /// When the current wait ends, if the instance is waiting for time.
    pub deadline: Option<Millis>,
    /// How many sends the instance has made (seeds action ids in loops).
    pub visits: u32,
    /// The event that last moved the instance, kept only for journeys whose steps read `event`.
    pub event: Option<StoredEvent>,
}

/// An emitted send that can still be cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outstanding {
    /// The send's action id.
    pub id: u128,
    /// Index into [`CustomerState::journeys`].
    pub j: u16,
    /// The journey version.
    pub version: u32,
    /// The step index.
    pub step: u16,
    /// The instance key.
    pub key: u64,
    /// The channel (kept so a cancel always finds its topic).
    pub channel: String,
    /// When it stops being outstanding.
    pub expires_at: Millis,
}

/// A send held by quiet hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The action id it will have.
    pub id: u128,
    /// Index into [`CustomerState::journeys`].
    pub j: u16,
    /// The journey version.
    pub version: u32,
    /// The step index.
    pub step: u16,
    /// The instance key.
    pub key: u64,
    /// When quiet hours end.
    pub release_at: Millis,
    /// The personalisation values, evaluated when the send was due.
    pub vars: Attributes,
}

/// A send counted by frequency caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMark {
    /// When it was emitted.
    pub at: Millis,
    /// The channel.
    pub channel: String,
    /// Whether the journey was a service journey.
    pub service: bool,
}

/// One line of a customer's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Engine time.
    pub at: Millis,
    /// Index into [`CustomerState::journeys`], when about a journey.
    pub j: Option<u16>,
    /// The journey version, when about a journey.
    pub version: u32,
    /// The step index, when about a step.
    pub step: Option<u16>,
    /// What happened.
    pub what: What,
}

/// Why a send was not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Suppression {
    /// A frequency cap was full.
    FrequencyCap,
    /// The channel needs consent the customer has not granted.
    NoConsent,
}

impl Suppression {
    /// The name used in metrics and history.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppression::FrequencyCap => "frequency_cap",
            Suppression::NoConsent => "no_consent",
        }
    }
}

/// Why an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// It ran past its last step.
    Finished,
    /// It reached an `exit` step.
    ExitStep,
    /// An event in `exit.on` came.
    ExitOn(String),
    /// Too many steps ran without a wait (a safeguard; validation prevents it).
    StepLimit,
    /// The journey version it ran is no longer known.
    VersionGone,
}

/// Why an entry trigger did not start an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Skip {
    /// An instance is already active.
    Active,
    /// `reentry: never` and the customer entered before.
    ReentryNever,
    /// The cooldown since the previous entry has not passed.
    Cooldown {
        /// When the customer may enter again.
        until: Millis,
    },
    /// The entry condition was false.
    ConditionFalse,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum What {
    /// Entered the journey, by this event type (or inactivity).
    Entered {
        /// The event type, or `inactivity:<type>`.
        via: String,
    },
    /// An entry trigger was ignored.
    EntrySkipped(Skip),
    /// A step ran.
    Step,
    /// A branch chose an arm (`None` = the `else` arm); `to` is the step index it went to.
    Branch {
        /// The arm index.
        arm: Option<u16>,
    },
    /// A split chose an arm.
    Split {
        /// The arm index.
        arm: u16,
    },
    /// Waiting until this time.
    Waiting {
        /// When the wait ends.
        until: Millis,
    },
    /// Profile attributes were set.
    Updated {
        /// Their names.
        attrs: Vec<String>,
    },
    /// A wait_for got its event.
    Resumed {
        /// The event type.
        event: String,
    },
    /// A wait ran out.
    TimedOut,
    /// A send was emitted.
    Sent {
        /// Its action id.
        id: u128,
    },
    /// A send was held by quiet hours.
    Held {
        /// Its action id.
        id: u128,
        /// When it will be emitted.
        until: Millis,
    },
    /// A held send was dropped because the instance exited.
    Dropped {
        /// Its action id.
        id: u128,
    },
    /// A send was suppressed.
    Suppressed(Suppression),
    /// A send was cancelled.
    Cancelled {
        /// The cancelled send's id.
        id: u128,
        /// Why.
        reason: CancelReason,
    },
    /// The instance ended.
    Ended(Ending),
    /// The goal event came in time.
    Converted,
    /// An expression failed to evaluate (a condition counts as false).
    ExprFailed {
        /// The expression.
        expr: String,
        /// The error.
        error: String,
    },
    /// A special event was not understood (e.g. `consent_changed` without `channel`).
    Ignored {
        /// Why.
        why: String,
    },
}

impl CustomerState {
    /// Serialises the state for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to memory cannot fail")
    }

    /// Reads a stored state.
    pub fn from_bytes(bytes: &[u8]) -> Result<CustomerState, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Whether the customer has granted consent for a channel.
    pub fn consent(&self, channel: &str) -> Option<bool> {
        self.consent
            .binary_search_by(|(c, _)| c.as_str().cmp(channel))
            .ok()
            .map(|i| self.consent[i].1)
    }

    /// Records consent for a channel.
    pub fn set_consent(&mut self, channel: &str, granted: bool) {
        match self
            .consent
            .binary_search_by(|(c, _)| c.as_str().cmp(channel))
        {
            Ok(i) => self.consent[i].1 = granted,
            Err(i) => self.consent.insert(i, (channel.to_owned(), granted)),
        }
    }

    /// The index of a journey in [`CustomerState::journeys`], added when new.
    pub fn journey_index(&mut self, id: &str) -> u16 {
        if let Some(i) = self.journeys.iter().position(|m| m.id == id) {
            return i as u16;
        }
        self.journeys.push(JourneyMemory {
            id: id.to_owned(),
            entered_at: None,
            version: 0,
            converted: false,
            inactivity: None,
        });
        (self.journeys.len() - 1) as u16
    }

    /// The active instance of a journey, by journey index.
    pub fn instance_of(&self, j: u16) -> Option<usize> {
        self.instances.iter().position(|i| i.j == j)
    }

    /// The earliest pending deadline: a wait, a held send or an armed inactivity trigger.
    pub fn next_deadline(&self) -> Option<Millis> {
        let waits = self.instances.iter().filter_map(|i| i.deadline);
        let holds = self.held.iter().map(|h| h.release_at);
        let idle = self
            .journeys
            .iter()
            .filter_map(|m| m.inactivity.as_ref().map(|a| a.due));
        waits.chain(holds).chain(idle).min()
    }
}
