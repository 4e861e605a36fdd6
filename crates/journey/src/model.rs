//! The compiled form of journeys and policies: what the engine runs.
//!
//! Invariants the loader guarantees (the engine relies on them):
//! - every step target (`next`, `on_event`, `on_timeout`, `on_past`, branch and split arms) is an
//!   index into the journey's `steps`, or `None` for "the instance ends";
//! - every cycle in the step graph passes through a `Wait`, `WaitUntil` or `WaitFor` step, or
//!   through a `WaitDate` by the way it takes after waiting;
//! - durations are positive; split weights are positive; a branch has at least its `otherwise`;
//! - journey ids are unique in a [`Catalog`], and `journeys` is sorted by priority (highest first),
//!   then id, which is the arbitration order.

use crate::expr::Expr;
use chrono_tz::Tz;
use std::path::PathBuf;
use std::sync::Arc;

/// Milliseconds.
pub type Millis = i64;

/// Where the instance goes next: a step index, or `None` when the instance ends.
pub type Target = Option<usize>;

/// Everything loaded from one journeys folder.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The journeys, highest priority first, then by id.
    pub journeys: Vec<Arc<Journey>>,
    /// The contact policies (defaults when the folder has no policies file).
    pub policies: Policies,
}

impl Catalog {
    /// Finds a journey by id.
    pub fn journey(&self, id: &str) -> Option<&Arc<Journey>> {
        self.journeys.iter().find(|j| j.id == id)
    }
}

/// Whether a journey is marketing or service (caps may apply to one category only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Promotional contact: the default.
    Marketing,
    /// Service contact (a card blocked, a payment due).
    Service,
}

impl Category {
    /// The name used in journey files.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Service => "service",
        }
    }
}

/// One journey, compiled.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The id (`[a-z][a-z0-9_]*`).
    pub id: String,
    /// The version (positive).
    pub version: u32,
    /// Free text.
    pub name: Option<String>,
    /// Higher wins arbitration.
    pub priority: i64,
    /// Marketing or service.
    pub category: Category,
    /// How customers enter.
    pub entry: Entry,
    /// Events that end the instance at once.
    pub exit_on: Vec<String>,
    /// The conversion event, if any.
    pub goal: Option<Goal>,
    /// The steps, in file order.
    pub steps: Vec<Step>,
    /// The file the journey came from.
    pub file: PathBuf,
    /// A digest of the journey's meaning: the parsed content, independent of comments,
    /// formatting and key order. Two files with the same digest run the same way.
    pub digest: u64,
    /// Whether any step expression reads `event` (so the engine keeps the event that moved the
    /// instance for steps run later by a timer).
    pub steps_use_event: bool,
}

impl Journey {
    /// Finds a step index by id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// How customers enter a journey.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The event or the inactivity that starts an instance.
    pub trigger: Trigger,
    /// An optional CEL condition (sees `event` and `profile`).
    pub condition: Option<Expr>,
    /// Whether a customer may enter again.
    pub reentry: Reentry,
}

/// What starts an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// An event of this type.
    Event(String),
    /// No event of this type for this long since the last one.
    Inactivity {
        /// The event type whose absence counts.
        event: String,
        /// How long it must be absent.
        after: Millis,
    },
    /// An audience run over every known customer at `at`, and every `every` after it when
    /// given (contract v2: one-to-many campaigns).
    Audience {
        /// The first run (ms since the epoch).
        at: Millis,
        /// The time between runs; none: one run.
        every: Option<Millis>,
    },
}

/// Whether a customer who finished (or left) may enter again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Once ever (the default).
    Never,
    /// Whenever no instance is active.
    Always,
    /// When this long has passed since the previous entry.
    Cooldown(Millis),
}

/// A conversion goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goal {
    /// The conversion event type.
    pub event: String,
    /// Counted when it comes within this long of entry.
    pub within: Millis,
}

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step id (`[a-z][a-z0-9_]*`, unique in the journey).
    pub id: String,
    /// What the step does.
    pub kind: StepKind,
    /// Where a step that does not choose its own successor goes: the explicit `next`, else the
    /// following step, else the end. For branch, split and exit steps it is unused.
    pub next: Target,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Emit a send action (subject to the contact policies).
    Send(Send),
    /// Wait this long.
    Wait(Millis),
    /// Wait until the next local time of day on one of the days.
    WaitUntil(WaitUntil),
    /// Wait for an event, or for the timeout.
    WaitFor(WaitFor),
    /// Wait until a date the profile gives, at a local time of day (at once to `on_past`
    /// when that moment has passed).
    WaitDate(WaitDate),
    /// Go to the first arm whose condition holds, else to `otherwise`.
    Branch(Branch),
    /// Next best action: of the options whose condition holds, the one with the highest
    /// score; else `otherwise`.
    Decide(Decide),
    /// A deterministic weighted random split.
    Split(Vec<SplitArm>),
    /// Set profile attributes to the values of expressions (all evaluated before any is set).
    Update(Vec<(String, Expr)>),
    /// End the instance.
    Exit,
}

impl StepKind {
    /// The keyword of the step kind in journey files.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Send(_) => "send",
            StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::WaitDate(_) => "wait",
            StepKind::WaitFor(_) => "wait_for",
            StepKind::Branch(_) => "branch",
            StepKind::Decide(_) => "decide",
            StepKind::Split(_) => "split",
            StepKind::Update(_) => "update",
            StepKind::Exit => "exit",
        }
    }

    /// Whether the step always stops the instance until a timer or an event (a date wait
    /// does not when its moment has passed).
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::WaitFor(_)
        )
    }
}

/// The default time a send stays outstanding: 7 days.
pub const DEFAULT_TTL: Millis = 7 * 86_400_000;

/// A send step.
#[derive(Debug, Clone)]
pub struct Send {
    /// The channel (`email`, `sms`, `push`, `in_app`, `call_centre`, ...).
    pub channel: String,
    /// The template name.
    pub template: String,
    /// How long the send stays outstanding ([`DEFAULT_TTL`] when not given).
    pub ttl: Millis,
    /// Events that cancel the send when they come from another channel.
    pub cancel_on: Vec<String>,
    /// Personalisation values, in file order.
    pub vars: Vec<(String, Expr)>,
}

/// A wait until a local time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitUntil {
    /// Minutes after local midnight (`"09:30"` is 570).
    pub minute_of_day: u16,
    /// Allowed weekdays as a bit set, bit 0 = Monday ... bit 6 = Sunday; `0x7f` = any day.
    pub days: u8,
}

/// A wait until a date the profile gives (`wait: {date, offset, at, on_past}`).
#[derive(Debug, Clone)]
pub struct WaitDate {
    /// The date: a CEL expression giving `"YYYY-MM-DD"` or an RFC 3339 timestamp string,
    /// evaluated once on entering the step.
    pub date: Expr,
    /// Whole calendar days added to the date (may be negative).
    pub offset_days: i32,
    /// The local time of day the wait ends, in minutes after midnight.
    pub minute_of_day: u16,
    /// Where to go when that moment is not later than now, or the date is not one (`None`:
    /// the next step).
    pub on_past: Target,
}

/// A wait for events.
#[derive(Debug, Clone)]
pub struct WaitFor {
    /// The event types that end the wait.
    pub events: Vec<String>,
    /// An optional condition the event must meet.
    pub condition: Option<Expr>,
    /// How long to wait at most.
    pub timeout: Millis,
    /// Where to go when an event comes.
    pub on_event: Target,
    /// Where to go on timeout.
    pub on_timeout: Target,
}

/// A branch step.
#[derive(Debug, Clone)]
pub struct Branch {
    /// Conditions and targets, tried in order.
    pub arms: Vec<(Expr, Target)>,
    /// Where to go when no condition holds.
    pub otherwise: Target,
}

/// A `decide` step (next best action).
#[derive(Debug, Clone)]
pub struct Decide {
    /// The options, in file order (on equal scores the earlier one wins).
    pub options: Vec<DecideOption>,
    /// Where to go when no option is eligible (`else`).
    pub otherwise: Target,
}

/// One option of a `decide` step.
#[derive(Debug, Clone)]
pub struct DecideOption {
    /// Eligibility (`if`); none: always eligible.
    pub condition: Option<Expr>,
    /// The score (`score`, CEL giving a number); none: 0.
    pub score: Option<Expr>,
    /// Where it leads.
    pub next: Target,
}

/// One arm of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitArm {
    /// Positive weight.
    pub weight: u32,
    /// Where the arm goes.
    pub next: Target,
    /// The control arm of an experiment (at most one per split): the other arms' lift and
    /// p-value are against it.
    pub control: bool,
}

/// Contact policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    /// The time zone of customers whose profile has no valid `timezone`.
    pub default_timezone: Tz,
    /// Frequency caps.
    pub frequency_caps: Vec<FrequencyCap>,
    /// Quiet hours, if any.
    pub quiet_hours: Option<QuietHours>,
    /// Channels that need granted consent before any send.
    pub consent_required: Vec<String>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            default_timezone: Tz::UTC,
            frequency_caps: Vec::new(),
            quiet_hours: None,
            consent_required: Vec::new(),
        }
    }
}

/// At most `max` sends in any trailing window of `per`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrequencyCap {
    /// The channel, or `None` for `"*"` (all channels).
    pub channel: Option<String>,
    /// When set, only sends of journeys of this category count and are limited.
    pub category: Option<Category>,
    /// The most sends allowed in the window.
    pub max: u32,
    /// The window.
    pub per: Millis,
}

/// Quiet hours in the customer's local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietHours {
    /// Start, minutes after local midnight (inclusive).
    pub from: u16,
    /// End, minutes after local midnight (exclusive); before `from` when the window spans midnight.
    pub to: u16,
    /// The channels the quiet hours hold; empty means every channel.
    pub channels: Vec<String>,
}

impl QuietHours {
    /// Whether sends to this channel are held in quiet hours.
    pub fn covers(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel)
    }

    /// Whether a local minute of the day falls inside the quiet hours.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&minute_of_day)
        } else {
            minute_of_day >= self.from || minute_of_day < self.to
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_span_midnight() {
        let q = QuietHours {
            from: 21 * 60,
            to: 8 * 60,
            channels: vec!["sms".into()],
        };
        assert!(q.contains(21 * 60));
        assert!(q.contains(23 * 60 + 59));
        assert!(q.contains(0));
        assert!(q.contains(7 * 60 + 59));
        assert!(!q.contains(8 * 60));
        assert!(!q.contains(12 * 60));
        assert!(q.covers("sms"));
        assert!(!q.covers("email"));
        let day = QuietHours {
            from: 12 * 60,
            to: 14 * 60,
            channels: vec![],
        };
        assert!(day.contains(13 * 60) && !day.contains(14 * 60) && day.covers("email"));
    }
}

#[cfg(test)]
mod thread_safety {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_catalog_can_be_shared_between_threads() {
        assert_send_sync::<super::Catalog>();
    }
}
