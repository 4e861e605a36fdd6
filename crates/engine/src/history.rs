//! A customer's history in words: what happened and why, for people (test failures, auditors,
//! call-centre agents).

use crate::engine::Engine;
use crate::ids::format_id;
use crate::state::{CustomerState, Ending, Record, Skip, What};
use journeyd_journey::format_duration;
use journeyd_types::time::format_rfc3339;
use serde::Serialize;

/// One history record, resolved to names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryLine {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The journey id, when about a journey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journey: Option<String>,
    /// The journey version, when about a journey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The step id, when about a step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A short kind: entered, skipped, step, branch, split, waiting, updated, resumed, timed_out,
    /// sent, held, dropped, suppressed, cancelled, ended, converted, expr_failed, ignored.
    pub kind: &'static str,
    /// What happened and why, in words.
    pub detail: String,
}

impl std::fmt::Display for HistoryLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.at)?;
        if let Some(j) = &self.journey {
            write!(f, " {j}")?;
            if let Some(v) = self.version {
                write!(f, "@v{v}")?;
            }
        }
        if let Some(s) = &self.step {
            write!(f, " [{s}]")?;
        }
        write!(f, " {}: {}", self.kind, self.detail)
    }
}

impl Engine {
    /// A customer's history records (oldest first, kept apart from the state) in words. The
    /// state names the journeys the records point to.
    pub fn history(&self, state: &CustomerState, records: &[Record]) -> Vec<HistoryLine> {
        records.iter().map(|r| self.describe(state, r)).collect()
    }

    /// One record in words.
    pub fn describe(&self, state: &CustomerState, r: &Record) -> HistoryLine {
        let journey_id =
            r.j.and_then(|j| state.journeys.get(j as usize))
                .map(|m| m.id.clone());
        let journey = journey_id
            .as_deref()
            .and_then(|id| self.journey(id, r.version));
        let step_id = |s: u16| {
            journey
                .and_then(|jr| jr.steps.get(s as usize))
                .map_or_else(|| format!("#{s}"), |st| st.id.clone())
        };
        let step = r.step.map(step_id);
        let (kind, detail) = match &r.what {
            What::Entered { via } => ("entered", format!("entered the journey on {via}")),
            What::EntrySkipped(skip) => (
                "skipped",
                match skip {
                    Skip::Active => "not entered: an instance is already active".to_owned(),
                    Skip::ReentryNever => "not entered again: reentry is never".to_owned(),
                    Skip::Cooldown { until } => {
                        format!(
                            "not entered again: cooldown until {}",
                            format_rfc3339(*until)
                        )
                    }
                    Skip::ConditionFalse => "not entered: the entry condition is false".to_owned(),
                    Skip::Status(s) => format!("not entered: the journey is {}", s.as_str()),
                },
            ),
            What::Step => ("step", "step taken".to_owned()),
            What::Branch { arm } => (
                "branch",
                match (arm, r.step.and_then(|s| journey.map(|j| (j, s)))) {
                    (Some(a), Some((j, s))) => match &j.steps[s as usize].kind {
                        journeyd_journey::StepKind::Branch(b) => format!(
                            "branch {} holds: `{}`",
                            a + 1,
                            b.arms[*a as usize].0.source()
                        ),
                        _ => format!("branch {} taken", a + 1),
                    },
                    (Some(a), None) => format!("branch {} taken", a + 1),
                    (None, _) => "no condition holds: else taken".to_owned(),
                },
            ),
            What::Split { arm } => ("split", format!("split arm {} chosen", arm + 1)),
            What::Decided { option, scores } => {
                let next = |k: u16| -> String {
                    r.step
                        .and_then(|s| journey.map(|j| &j.steps[s as usize].kind))
                        .and_then(|kind| match kind {
                            journeyd_journey::StepKind::Decide(d) => {
                                d.options.get(k as usize).and_then(|o| o.next)
                            }
                            _ => None,
                        })
                        .map_or_else(|| format!("option {}", k + 1), |t| step_id(t as u16))
                };
                let listed: Vec<String> = scores
                    .iter()
                    .map(|(k, s)| format!("{} {s}", next(*k)))
                    .collect();
                let detail = match option {
                    Some(k) => format!(
                        "decided: {} (eligible, by score: {})",
                        next(*k),
                        listed.join(", ")
                    ),
                    None => "decided: no option is eligible, else taken".to_owned(),
                };
                ("decided", detail)
            }
            What::Waiting { until } => (
                "waiting",
                format!("waiting until {}", format_rfc3339(*until)),
            ),
            What::Updated { attrs } => {
                ("updated", format!("profile updated: {}", attrs.join(", ")))
            }
            What::Resumed { event } => ("resumed", format!("{event} came")),
            What::TimedOut => ("timed_out", "the wait timed out".to_owned()),
            What::Sent { id } => ("sent", format!("action {} emitted", format_id(*id))),
            What::Held { id, until } => (
                "held",
                format!(
                    "action {} held by quiet hours until {}",
                    format_id(*id),
                    format_rfc3339(*until)
                ),
            ),
            What::Dropped { id } => (
                "dropped",
                format!(
                    "held action {} dropped: the instance exited",
                    format_id(*id)
                ),
            ),
            What::Suppressed(s) => ("suppressed", format!("send suppressed: {}", s.as_str())),
            What::Cancelled { id, reason } => (
                "cancelled",
                format!("action {} cancelled: {reason}", format_id(*id)),
            ),
            What::Ended(e) => (
                "ended",
                match e {
                    Ending::Finished => "the instance finished".to_owned(),
                    Ending::ExitStep => "the instance reached an exit step".to_owned(),
                    Ending::ExitOn(t) => format!("the instance exited on {t}"),
                    Ending::Stopped => "the journey was stopped".to_owned(),
                    Ending::Merged => "merged: the customer was merged into one already in \
                                       this journey"
                        .to_owned(),
                    Ending::StepLimit => {
                        "the instance ran too many steps without a wait and was ended".to_owned()
                    }
                    Ending::VersionGone => {
                        "the journey version is no longer known; the instance was ended".to_owned()
                    }
                },
            ),
            What::Converted => (
                "converted",
                match journey.and_then(|j| j.goal.as_ref()) {
                    Some(g) => format!(
                        "goal {} reached within {}",
                        g.event,
                        format_duration(g.within)
                    ),
                    None => "goal reached".to_owned(),
                },
            ),
            What::ExprFailed { expr, error } => (
                "expr_failed",
                format!("`{expr}` could not be evaluated ({error}); a condition counts as false, a value is left out"),
            ),
            What::Ignored { why } => ("ignored", why.clone()),
            What::HeldDropped { id, reason, event } => (
                "dropped",
                match reason {
                    journeyd_types::CancelReason::Responded => format!(
                        "held action {} dropped before it was sent: responded ({event} came \
                         from another channel)",
                        format_id(*id)
                    ),
                    other => format!(
                        "held action {} dropped before it was sent: {}",
                        format_id(*id),
                        other.as_str()
                    ),
                },
            ),
            What::Parked => (
                "parked",
                "the journey is paused: the send waits for it to resume".to_owned(),
            ),
            What::Merged { from } => (
                "merged",
                format!("customer {from} was merged into this one"),
            ),
            What::DatePassed { why } => (
                "date_passed",
                format!("the date wait ended at once: {why}"),
            ),
        };
        HistoryLine {
            at: format_rfc3339(r.at),
            journey: journey_id,
            version: r.j.map(|_| r.version),
            step,
            kind,
            detail,
        }
    }
}
