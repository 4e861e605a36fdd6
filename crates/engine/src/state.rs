//! Per-customer state: everything the engine remembers about one customer.
//!
//! One value per customer in the store, serialised with postcard ([`CustomerState::to_bytes`]).
//! Journeys are named once, in `journeys`; everything else refers to them by index into it
//! (`j`), and to steps by index within the journey version it names, to keep the value small.
//! Indices into `journeys` never change: entries are only appended.
//!
//! Field order is part of the stored format: append new fields at the end with defaults. A
//! change that is not such an append bumps [`STATE_FORMAT`] and keeps a reader for the older
//! layout (see [`CustomerState::decode`]).
//!
//! The history is not part of the state: the engine returns each input's records in
//! [`crate::Effects::records`], and the service and the simulator keep a bounded history per
//! customer beside the state (see [`crate::append_history`]).

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
    /// The earliest time at which the engine has work for this customer (the pending timer).
    #[serde(with = "relative::opt")]
    pub wake: Option<Millis>,
    /// Outstanding sends that came with a merged customer (contract v2, identity), with the
    /// customer id their cancels carry. Stored after the other fields, only when this or
    /// [`CustomerState::later_entries`] is not empty (see [`CustomerState::to_bytes`]): a
    /// customer who was never merged pays nothing for them.
    #[serde(skip)]
    pub moved_sends: Vec<MovedSend>,
    /// Entries that came with a merged customer and are later than the one in `journeys`
    /// (which keeps the goal of the instance that survived the merge): `reentry` counts from
    /// them. By journey index; stored as `moved_sends` is.
    #[serde(skip)]
    pub later_entries: Vec<(u16, Millis)>,
    /// The split arms the customer's latest entry of each journey took, the first time it
    /// passed each split step (contract v2, experiment results): a goal reached later counts
    /// for each of them. Stored after the fields as `moved_sends` is, only when there are any.
    #[serde(skip)]
    pub splits_taken: Vec<SplitTaken>,
}

/// A split arm an entry took (see [`CustomerState::splits_taken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTaken {
    /// The journey index.
    pub j: u16,
    /// The journey version the entry runs.
    pub version: u32,
    /// The split step's index.
    pub step: u16,
    /// The arm index.
    pub arm: u16,
}

/// An outstanding send that came with a merged customer: its cancel carries that customer's id
/// (a cancel goes to the topic and key of the send it cancels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSend {
    /// The send's action id.
    #[serde(with = "fixed_u128")]
    pub id: u128,
    /// The customer id the send carried.
    pub customer: String,
}

/// What the customer has had to do with one journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyMemory {
    /// The journey id.
    pub id: String,
    /// When the customer last entered, if ever.
    #[serde(with = "relative::opt")]
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
    #[serde(with = "relative::at")]
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
    #[serde(with = "relative::at")]
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
    #[serde(with = "fixed_u64")]
    pub key: u64,
    /// The current step index.
    pub step: u16,
    /// When the customer entered.
    #[serde(with = "relative::at")]
    pub entered_at: Millis,
    /// When the current wait ends, if the instance is waiting for time.
    #[serde(with = "relative::opt")]
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
    #[serde(with = "fixed_u128")]
    pub id: u128,
    /// Index into [`CustomerState::journeys`].
    pub j: u16,
    /// The journey version.
    pub version: u32,
    /// The step index.
    pub step: u16,
    /// The instance key.
    #[serde(with = "fixed_u64")]
    pub key: u64,
    /// The channel (kept so a cancel always finds its topic).
    pub channel: String,
    /// When it stops being outstanding.
    #[serde(with = "relative::at")]
    pub expires_at: Millis,
}

/// A send held by quiet hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The action id it will have.
    #[serde(with = "fixed_u128")]
    pub id: u128,
    /// Index into [`CustomerState::journeys`].
    pub j: u16,
    /// The journey version.
    pub version: u32,
    /// The step index.
    pub step: u16,
    /// The instance key.
    #[serde(with = "fixed_u64")]
    pub key: u64,
    /// When quiet hours end.
    #[serde(with = "relative::at")]
    pub release_at: Millis,
    /// The personalisation values, evaluated when the send was due.
    pub vars: Attributes,
}

/// A send counted by frequency caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMark {
    /// When it was emitted.
    #[serde(with = "relative::at")]
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
    /// An operator stopped the journey (appended).
    Stopped,
    /// The customer was merged into one who had an active instance of the same journey
    /// (contract v2, identity; appended).
    Merged,
}

/// A journey's status (contract v2): operators pause, drain, stop and resume journeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Entries and instances go on (the default).
    Running,
    /// No entries; instances go on, but stop at a send, holding it, until a resume.
    Paused,
    /// No entries; instances go on.
    Draining,
    /// No entries; at the stop every instance ended and every outstanding send was cancelled.
    Stopped,
}

impl Status {
    /// The word for it (`running`, `paused`, `draining`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Draining => "draining",
            Status::Stopped => "stopped",
        }
    }
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
    /// The journey is paused, draining or stopped (appended).
    Status(Status),
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
    /// A date wait ended at once: its moment had passed, or its date was not one. (Appended:
    /// stored histories keep their variant numbers.)
    DatePassed {
        /// Why.
        why: String,
    },
    /// A `decide` step chose (appended).
    Decided {
        /// The option taken (`None`: no option was eligible, `else` taken).
        option: Option<u16>,
        /// The score of every eligible option, by option index.
        scores: Vec<(u16, f64)>,
    },
    /// A paused journey's instance stopped at a send, holding it until the journey resumes
    /// (appended).
    Parked,
    /// A send held by quiet hours was dropped before it reached any channel (appended).
    HeldDropped {
        /// Its action id.
        id: u128,
        /// Why (`responded`: an event in its `cancel_on` came from another channel).
        reason: CancelReason,
        /// The event that dropped it.
        event: String,
    },
    /// Another customer was merged into this one: their profile, consent, entry records,
    /// instances and outstanding sends came here (contract v2, identity; appended).
    Merged {
        /// The merged customer's id.
        from: String,
    },
}

/// The stored format of [`CustomerState`]: its first byte.
///
/// Format 0 (the first) had no such byte: it began with the clock, a zigzag varint whose first
/// byte is even for every clock at or after 1970. Later formats begin with an odd byte, so they
/// cannot be confused with it (a format-0 state would need a clock before 1970). Format 1 left
/// out the history and stores action ids and instance keys as fixed-width bytes (a random
/// 128-bit id takes 19 bytes as a varint, 16 as bytes). Format 3 (this one; 2 is even) has the
/// same fields, with every time but the clock stored relative to the clock (see `relative`).
pub const STATE_FORMAT: u8 = 3;

/// Format 1: absolute times (read, not written).
const FORMAT_1: u8 = 1;

/// Times stored relative to the state's clock (format 3): a deadline two days ahead takes 4
/// bytes, an entry a minute ago 3, instead of 6 each for an absolute time. The base is the
/// clock, the state's first field, set for the one (de)serialisation of a state by
/// [`relative::with_base`]; it is 0 otherwise, which reads and writes absolute times (format 1).
mod relative {
    use journeyd_types::Millis;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::cell::Cell;

    thread_local! {
        static BASE: Cell<Millis> = const { Cell::new(0) };
    }

    /// Runs `f` with times relative to `base`; the base before is back after, even if `f`
    /// panics.
    pub fn with_base<R>(base: Millis, f: impl FnOnce() -> R) -> R {
        struct Restore(Millis);
        impl Drop for Restore {
            fn drop(&mut self) {
                BASE.with(|b| b.set(self.0));
            }
        }
        let _restore = Restore(BASE.with(|b| b.replace(base)));
        f()
    }

    fn base() -> Millis {
        BASE.with(Cell::get)
    }

    /// A time.
    pub mod at {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Millis, s: S) -> Result<S::Ok, S::Error> {
            v.wrapping_sub(base()).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
            Millis::deserialize(d).map(|v| v.wrapping_add(base()))
        }
    }

    /// A time, if any.
    pub mod opt {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
            v.map(|v| v.wrapping_sub(base())).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
            Option::<Millis>::deserialize(d).map(|v| v.map(|v| v.wrapping_add(base())))
        }
    }
}

/// Action ids as 16 little-endian bytes, not a varint (random ids would take 19 bytes).
mod fixed_u128 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        <[u8; 16]>::deserialize(d).map(u128::from_le_bytes)
    }
}

/// Instance keys as 8 little-endian bytes, not a varint (random keys would take 10 bytes).
mod fixed_u64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        <[u8; 8]>::deserialize(d).map(u64::from_le_bytes)
    }
}

/// Format 0: the state with its history inside, ids and keys as varints.
mod format0 {
    use super::*;

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub struct State {
        pub clock: Millis,
        pub profile: Attributes,
        pub consent: Vec<(String, bool)>,
        pub journeys: Vec<JourneyMemory>,
        pub instances: Vec<Instance0>,
        pub outstanding: Vec<Outstanding0>,
        pub held: Vec<Held0>,
        pub sent: Vec<SentMark>,
        pub history: Vec<Record>,
        pub wake: Option<Millis>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub struct Instance0 {
        pub j: u16,
        pub version: u32,
        pub key: u64,
        pub step: u16,
        pub entered_at: Millis,
        pub deadline: Option<Millis>,
        pub visits: u32,
        pub event: Option<StoredEvent>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub struct Outstanding0 {
        pub id: u128,
        pub j: u16,
        pub version: u32,
        pub step: u16,
        pub key: u64,
        pub channel: String,
        pub expires_at: Millis,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub struct Held0 {
        pub id: u128,
        pub j: u16,
        pub version: u32,
        pub step: u16,
        pub key: u64,
        pub release_at: Millis,
        pub vars: Attributes,
    }

    impl State {
        /// The state in today's layout, and the history it carried.
        pub fn upgrade(self) -> (CustomerState, Vec<Record>) {
            let state = CustomerState {
                clock: self.clock,
                profile: self.profile,
                consent: self.consent,
                journeys: self.journeys,
                instances: self
                    .instances
                    .into_iter()
                    .map(|i| Instance {
                        j: i.j,
                        version: i.version,
                        key: i.key,
                        step: i.step,
                        entered_at: i.entered_at,
                        deadline: i.deadline,
                        visits: i.visits,
                        event: i.event,
                    })
                    .collect(),
                outstanding: self
                    .outstanding
                    .into_iter()
                    .map(|o| Outstanding {
                        id: o.id,
                        j: o.j,
                        version: o.version,
                        step: o.step,
                        key: o.key,
                        channel: o.channel,
                        expires_at: o.expires_at,
                    })
                    .collect(),
                held: self
                    .held
                    .into_iter()
                    .map(|h| Held {
                        id: h.id,
                        j: h.j,
                        version: h.version,
                        step: h.step,
                        key: h.key,
                        release_at: h.release_at,
                        vars: h.vars,
                    })
                    .collect(),
                sent: self.sent,
                wake: self.wake,
                moved_sends: Vec::new(),
                later_entries: Vec::new(),
                splits_taken: Vec::new(),
            };
            (state, self.history)
        }
    }
}

impl CustomerState {
    /// Serialises the state for the store: [`STATE_FORMAT`], then the fields in order.
    ///
    /// What a merge left ([`CustomerState::moved_sends`] and
    /// [`CustomerState::later_entries`]) and the split arms taken
    /// ([`CustomerState::splits_taken`]), when there are any, follow the fields: first the two
    /// lists of a merge, then the arms when there are any (a reader before merges existed
    /// refuses such a state, as bytes left over, rather than misread it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes =
            relative::with_base(self.clock, || postcard::to_extend(self, vec![STATE_FORMAT]))
                .expect("serialising to memory cannot fail");
        let arms = !self.splits_taken.is_empty();
        if !self.moved_sends.is_empty() || !self.later_entries.is_empty() || arms {
            bytes = postcard::to_extend(&(&self.moved_sends, &self.later_entries), bytes)
                .expect("serialising to memory cannot fail");
        }
        if arms {
            bytes = postcard::to_extend(&self.splits_taken, bytes)
                .expect("serialising to memory cannot fail");
        }
        bytes
    }

    /// When the customer last entered journey `j`, for `reentry`: the entry in `journeys`,
    /// or a later one that came with a merge.
    pub fn last_entry(&self, j: u16) -> Option<Millis> {
        let own = self.journeys.get(usize::from(j)).and_then(|m| m.entered_at);
        let merged = self
            .later_entries
            .iter()
            .find(|(x, _)| *x == j)
            .map(|(_, at)| *at);
        own.max(merged)
    }

    /// Reads a stored state, of this format or an older one (an older state's history is
    /// dropped: see [`CustomerState::decode`] to keep it).
    pub fn from_bytes(bytes: &[u8]) -> Result<CustomerState, postcard::Error> {
        Self::decode(bytes).map(|(state, _)| state)
    }

    /// Reads a stored state, of this format or an older one, with the history a format-0 state
    /// carried inside (empty for this format), so that a reader can move it to where history
    /// is kept now.
    ///
    /// An unknown format, and a format-1 state with bytes left over, are errors: a state is
    /// either read as written or refused, never misread.
    pub fn decode(bytes: &[u8]) -> Result<(CustomerState, Vec<Record>), postcard::Error> {
        match bytes.first() {
            Some(&format @ (STATE_FORMAT | FORMAT_1)) => {
                // Format 3's times are relative to the clock, its first field.
                let base = if format == STATE_FORMAT {
                    postcard::take_from_bytes::<Millis>(&bytes[1..])?.0
                } else {
                    0
                };
                let (mut state, rest): (CustomerState, _) =
                    relative::with_base(base, || postcard::take_from_bytes(&bytes[1..]))?;
                if !rest.is_empty() {
                    if format != STATE_FORMAT {
                        return Err(postcard::Error::DeserializeBadEncoding);
                    }
                    type Tail = (Vec<MovedSend>, Vec<(u16, Millis)>);
                    let ((moved, later), rest) = postcard::take_from_bytes::<Tail>(rest)?;
                    let arms = if rest.is_empty() {
                        Vec::new()
                    } else {
                        let (arms, rest) = postcard::take_from_bytes::<Vec<SplitTaken>>(rest)?;
                        if !rest.is_empty() || arms.is_empty() {
                            return Err(postcard::Error::DeserializeBadEncoding);
                        }
                        arms
                    };
                    if moved.is_empty() && later.is_empty() && arms.is_empty() {
                        return Err(postcard::Error::DeserializeBadEncoding);
                    }
                    state.moved_sends = moved;
                    state.later_entries = later;
                    state.splits_taken = arms;
                }
                Ok((state, Vec::new()))
            }
            // Format 0 began with the clock (zigzag: even for a clock at or after 1970).
            Some(b) if b % 2 == 0 => {
                let old: format0::State = postcard::from_bytes(bytes)?;
                Ok(old.upgrade())
            }
            Some(_) => Err(postcard::Error::DeserializeBadEncoding),
            None => Err(postcard::Error::DeserializeUnexpectedEnd),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_types::Value;

    /// A state in format 0, as journeyd wrote it before the history moved out of it.
    fn format0(clock: Millis) -> (Vec<u8>, CustomerState, Vec<Record>) {
        let id: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let key = 0xfeed_beef_dead_f00d;
        let history = vec![Record {
            at: clock,
            j: Some(0),
            version: 2,
            step: Some(1),
            what: What::Sent { id },
        }];
        let old = format0::State {
            clock,
            profile: [("segment".to_string(), Value::from("gold"))].into(),
            consent: vec![("email".into(), true)],
            journeys: vec![JourneyMemory {
                id: "retention".into(),
                entered_at: Some(clock - 10),
                version: 2,
                converted: false,
                inactivity: None,
            }],
            instances: vec![format0::Instance0 {
                j: 0,
                version: 2,
                key,
                step: 1,
                entered_at: clock - 10,
                deadline: Some(clock + 1000),
                visits: 1,
                event: None,
            }],
            outstanding: vec![format0::Outstanding0 {
                id,
                j: 0,
                version: 2,
                step: 0,
                key,
                channel: "email".into(),
                expires_at: clock + 5000,
            }],
            held: vec![format0::Held0 {
                id: id + 1,
                j: 0,
                version: 2,
                step: 2,
                key,
                release_at: clock + 60,
                vars: Attributes::new(),
            }],
            sent: vec![SentMark {
                at: clock,
                channel: "email".into(),
                service: false,
            }],
            history: history.clone(),
            wake: Some(clock + 60),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let (state, _) = old.upgrade();
        (bytes, state, history)
    }

    #[test]
    fn a_format0_state_is_read_with_its_history() {
        let clock = 1_767_600_000_000; // 2026-01-05
        let (bytes, expected, history) = format0(clock);
        assert_eq!(bytes[0] % 2, 0, "format 0 starts with an even byte");
        let (state, old_history) = CustomerState::decode(&bytes).unwrap();
        assert_eq!(state, expected);
        assert_eq!(
            state.outstanding[0].id,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210
        );
        assert_eq!(old_history, history);
        assert_eq!(CustomerState::from_bytes(&bytes).unwrap(), expected);
        // Written again, it is this format, and reads back the same, without history.
        let again = state.to_bytes();
        assert_eq!(again[0], STATE_FORMAT);
        assert_eq!(
            CustomerState::decode(&again).unwrap(),
            (expected.clone(), Vec::new())
        );
        assert!(again.len() < bytes.len());
        // Sends that came with a merged customer follow the fields, and only when there are
        // any: a state without them is byte for byte what it was.
        let mut merged = expected.clone();
        merged.moved_sends.push(MovedSend {
            id: 7,
            customer: "a".into(),
        });
        merged.later_entries.push((0, clock + 5));
        let with_tail = merged.to_bytes();
        assert_eq!(&with_tail[..again.len()], &again[..]);
        assert_eq!(CustomerState::from_bytes(&with_tail).unwrap(), merged);
        let mut only = expected.clone();
        only.later_entries.push((0, clock - 1));
        assert_eq!(CustomerState::from_bytes(&only.to_bytes()).unwrap(), only);
        // Split arms taken follow the merge's lists, with or without a merge.
        let arm = SplitTaken {
            j: 0,
            version: 2,
            step: 3,
            arm: 1,
        };
        let mut arms = expected.clone();
        arms.splits_taken.push(arm);
        let arms_bytes = arms.to_bytes();
        assert_eq!(&arms_bytes[..again.len()], &again[..]);
        assert_eq!(CustomerState::from_bytes(&arms_bytes).unwrap(), arms);
        merged.splits_taken.push(arm);
        let both = merged.to_bytes();
        assert_eq!(&both[..with_tail.len()], &with_tail[..]);
        assert_eq!(CustomerState::from_bytes(&both).unwrap(), merged);
        let mut extra = with_tail.clone();
        extra.push(0);
        assert!(CustomerState::from_bytes(&extra).is_err());
    }

    #[test]
    fn format1_states_read_the_same_and_format3_is_smaller() {
        let clock = 1_767_600_000_000;
        let (_, mut state, _) = format0(clock);
        // Times far from the clock, both ways, round-trip too.
        state.instances[0].deadline = Some(Millis::MAX);
        state.journeys[0].entered_at = Some(Millis::MIN);
        // Format 1: the same fields, absolute times, behind the byte 1.
        let mut format1 = vec![FORMAT_1];
        format1.extend(postcard::to_allocvec(&state).unwrap());
        assert_eq!(CustomerState::from_bytes(&format1).unwrap(), state);
        let format3 = state.to_bytes();
        assert_eq!(format3[0], STATE_FORMAT);
        assert_eq!(CustomerState::from_bytes(&format3).unwrap(), state);
        // Absolute times take 6 bytes today; relative ones within days of the clock, 3 to 5.
        let (_, near, _) = format0(clock);
        let mut near1 = vec![FORMAT_1];
        near1.extend(postcard::to_allocvec(&near).unwrap());
        assert!(
            near.to_bytes().len() + 10 <= near1.len(),
            "format 3 {} bytes, format 1 {}",
            near.to_bytes().len(),
            near1.len()
        );
        // Outside a state's own (de)serialisation, times are absolute (JSON, format 0).
        let json = serde_json::to_string(&near.instances[0]).unwrap();
        assert!(
            json.contains(&near.instances[0].entered_at.to_string()),
            "{json}"
        );
    }

    #[test]
    fn unknown_or_damaged_states_are_refused_not_misread() {
        let clock = 1_767_600_000_000;
        let (_, state, _) = format0(clock);
        let mut bytes = state.to_bytes();
        bytes.push(0);
        assert!(
            CustomerState::from_bytes(&bytes).is_err(),
            "bytes left over"
        );
        bytes.pop();
        bytes[0] = 5;
        assert!(CustomerState::from_bytes(&bytes).is_err(), "format 5");
        assert!(CustomerState::from_bytes(&[]).is_err());
        let cut = &state.to_bytes()[..20];
        assert!(CustomerState::from_bytes(cut).is_err());
        // The empty state: format 1 reads back; format 0 (no history) too.
        let empty = CustomerState::default();
        assert_eq!(CustomerState::from_bytes(&empty.to_bytes()).unwrap(), empty);
        let old_empty = [0u8; 10];
        assert_eq!(CustomerState::from_bytes(&old_empty).unwrap(), empty);
    }
}
