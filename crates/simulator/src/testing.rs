//! Journey tests: YAML files under `journeys/tests/` that say which events come when, and which
//! actions must (and must not) come out. `journey test DIR` runs them.
//!
//! ```yaml
//! tests:
//!   - name: a lapsed customer who clicks gets a thank-you and no SMS
//!     start: 2026-01-05T09:00:00Z     # base for "+DURATION" times
//!     customer: c1                    # default customer of events and expectations
//!     given:                          # optional starting profile and consent per customer
//!       c1: { profile: { ltv_segment: high }, consent: { email: true } }
//!     events:
//!       - { at: +0s, type: customer_lapsed }
//!       - { at: +1d, type: email_clicked, channel: email }
//!     until: +10d                     # run the clock on after the last event
//!     expect:                         # all the actions, in order (complete: true, the default)
//!       - { at: +0s, kind: send, channel: email, template: winback_offer }
//!       - { at: +1d, kind: send, step: thanks }
//!     expect_none:                    # no action may match any of these
//!       - { channel: sms }
//! ```

use crate::{Emitted, Simulator};
use journeyd_engine::Engine;
use journeyd_journey::{parse_duration, Diagnostic, Document, PathStep, Severity};
use journeyd_types::{time, Attributes, Event, Millis, Value};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// A test file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The tests, run in order, each on a fresh simulator.
    pub tests: Vec<TestCase>,
}

/// One test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the test shows.
    pub name: String,
    /// The base for `+DURATION` times (RFC 3339).
    #[serde(default)]
    pub start: Option<String>,
    /// The default customer of events and expectations.
    #[serde(default)]
    pub customer: Option<String>,
    /// Starting profile and consent per customer.
    #[serde(default)]
    pub given: BTreeMap<String, Given>,
    /// The events, in time order.
    pub events: Vec<TestEvent>,
    /// Advance the clock to this time after the last event.
    #[serde(default)]
    pub until: Option<String>,
    /// The expected actions, in order.
    #[serde(default)]
    pub expect: Vec<Pattern>,
    /// When true (the default), `expect` lists every action; when false, the listed actions must
    /// come in that order among others.
    #[serde(default = "yes")]
    pub complete: bool,
    /// Actions that must not come.
    #[serde(default)]
    pub expect_none: Vec<Pattern>,
}

fn yes() -> bool {
    true
}

/// A customer's starting state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// Profile attributes.
    #[serde(default)]
    pub profile: Attributes,
    /// Consent per channel.
    #[serde(default)]
    pub consent: BTreeMap<String, bool>,
}

/// An event of a test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// When: RFC 3339, or `+DURATION` after `start`.
    pub at: String,
    /// The event type (none for a control line).
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    /// A control line instead of an event: `pause`, `resume`, `drain` or `stop` (contract v2,
    /// journey status), with `journey`.
    #[serde(default)]
    pub control: Option<String>,
    /// The journey of a control line.
    #[serde(default)]
    pub journey: Option<String>,
    /// The customer (default: the test's).
    #[serde(default)]
    pub customer: Option<String>,
    /// The channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// The event id (default: generated from the test and the event's position).
    #[serde(default)]
    pub id: Option<String>,
}

/// What an expected action looks like: every field given must match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// Emission time: RFC 3339, or `+DURATION` after `start`.
    #[serde(default)]
    pub at: Option<String>,
    /// `send` or `cancel`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The customer (default: the test's, when it has one).
    #[serde(default)]
    pub customer: Option<String>,
    /// The journey id.
    #[serde(default)]
    pub journey: Option<String>,
    /// The step id (for a cancel: the cancelled send's step).
    #[serde(default)]
    pub step: Option<String>,
    /// The channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// The template.
    #[serde(default)]
    pub template: Option<String>,
    /// For a cancel: `responded` or `exited`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Personalisation values that must be present with these values.
    #[serde(default)]
    pub vars: Option<Attributes>,
}

/// A problem with a test file itself (not a failing test).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The outcome of one test.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The test name.
    pub name: String,
    /// `None` when it passed; else what went wrong, ready to print.
    pub failure: Option<String>,
}

fn resolve_time(text: &str, start: Option<Millis>, what: &str) -> Result<Millis, Invalid> {
    if let Some(rel) = text.strip_prefix('+') {
        let base = start.ok_or_else(|| {
            Invalid(format!(
                "{what}: `{text}` is relative, so the test needs `start`"
            ))
        })?;
        // `+0`, `+0s`, `+0d`...: the start itself (durations are otherwise positive).
        let number = rel.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        if !number.is_empty() && number.bytes().all(|b| b == b'0') && rel.len() - number.len() <= 1
        {
            return Ok(base);
        }
        let d = parse_duration(rel).map_err(|e| Invalid(format!("{what}: {e}")))?;
        return Ok(base + d);
    }
    time::parse_rfc3339(text).map_err(|e| Invalid(format!("{what}: {e}")))
}

/// A pattern with its times resolved.
struct Expected<'p> {
    pattern: &'p Pattern,
    at: Option<Millis>,
    customer: Option<&'p str>,
}

impl Expected<'_> {
    fn matches(&self, e: &Emitted) -> bool {
        let p = self.pattern;
        let a = &e.action;
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        self.at.is_none_or(|t| t == e.at)
            && self.customer.is_none_or(|c| c == a.customer_id)
            && eq(&p.kind, a.kind.as_str())
            && eq(&p.journey, &a.journey)
            && eq(&p.step, &a.step)
            && eq(&p.channel, &a.channel)
            && eq(&p.template, &a.template)
            && eq(&p.reason, a.reason.map_or("", |r| r.as_str()))
            && p.vars
                .as_ref()
                .is_none_or(|vars| vars.iter().all(|(k, v)| a.vars.get(k) == Some(v)))
    }

    fn describe(&self) -> String {
        let p = self.pattern;
        let mut parts = Vec::new();
        if let Some(t) = self.at {
            parts.push(format!("at {}", time::format_rfc3339(t)));
        }
        for (k, v) in [
            ("kind", &p.kind),
            ("journey", &p.journey),
            ("step", &p.step),
            ("channel", &p.channel),
            ("template", &p.template),
            ("reason", &p.reason),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} {v}"));
            }
        }
        if let Some(c) = self.customer {
            parts.push(format!("customer {c}"));
        }
        if let Some(vars) = &p.vars {
            parts.push(format!(
                "vars {}",
                serde_json::to_string(&Value::Map(vars.clone())).unwrap_or_default()
            ));
        }
        parts.join(", ")
    }
}

/// One line describing an emitted action.
pub fn describe_action(e: &Emitted) -> String {
    let a = &e.action;
    let mut s = format!(
        "{} {} {} {}/{} `{}` to {}",
        time::format_rfc3339(e.at),
        a.kind.as_str(),
        a.channel,
        a.journey,
        a.step,
        a.template,
        a.customer_id
    );
    if let Some(r) = a.reason {
        let _ = write!(s, " ({r})");
    }
    if !a.vars.is_empty() {
        let _ = write!(
            s,
            " vars {}",
            serde_json::to_string(&Value::Map(a.vars.clone())).unwrap_or_default()
        );
    }
    s
}

/// Runs one test on a fresh simulator.
pub fn run_case<'a>(
    engine: &Arc<Engine>,
    case: &'a TestCase,
    index: usize,
) -> Result<Outcome, Invalid> {
    let start = case
        .start
        .as_deref()
        .map(|s| resolve_time(s, None, "start"))
        .transpose()?;
    let mut sim = Simulator::new(engine.clone());
    for (customer, given) in &case.given {
        let st = sim.customer_mut(customer);
        st.profile.extend(given.profile.clone());
        for (channel, granted) in &given.consent {
            st.set_consent(channel, *granted);
        }
    }
    let mut emitted = Vec::new();
    for (n, e) in case.events.iter().enumerate() {
        let what = format!("events[{n}].at");
        if let Some(word) = &e.control {
            let status = match word.as_str() {
                "pause" => journeyd_engine::Status::Paused,
                "drain" => journeyd_engine::Status::Draining,
                "stop" => journeyd_engine::Status::Stopped,
                "resume" => journeyd_engine::Status::Running,
                other => {
                    return Err(Invalid(format!(
                        "events[{n}]: unknown control \"{other}\" (pause, resume, drain or stop)"
                    )))
                }
            };
            let journey = e
                .journey
                .clone()
                .ok_or_else(|| Invalid(format!("events[{n}]: a control line needs `journey`")))?;
            let c = crate::Control {
                journey,
                status,
                at: resolve_time(&e.at, start, &what)?,
            };
            let out = sim
                .control(&c)
                .map_err(|err| Invalid(format!("events[{n}]: {err}")))?;
            emitted.extend(out);
            continue;
        }
        let Some(event_type) = e.event_type.clone() else {
            return Err(Invalid(format!(
                "events[{n}]: give `type` (an event) or `control` (pause, resume, drain or stop)"
            )));
        };
        let customer = e
            .customer
            .clone()
            .or_else(|| case.customer.clone())
            .ok_or_else(|| {
                Invalid(format!(
                    "events[{n}]: no `customer`, and the test has no default `customer`"
                ))
            })?;
        let event = Event {
            event_id: e.id.clone().unwrap_or_else(|| format!("test{index}-e{n}")),
            customer_id: customer,
            event_type,
            channel: e.channel.clone(),
            occurred_at: resolve_time(&e.at, start, &what)?,
            attributes: e.attributes.clone(),
        };
        let out = sim
            .push(&event)
            .map_err(|err| Invalid(format!("events[{n}]: {err}")))?;
        emitted.extend(out);
    }
    if let Some(until) = &case.until {
        let t = resolve_time(until, start, "until")?;
        emitted.extend(sim.advance_to(t));
    }
    let resolve = |p: &'a Pattern, what: String| -> Result<Expected<'a>, Invalid> {
        Ok(Expected {
            pattern: p,
            at: p
                .at
                .as_deref()
                .map(|t| resolve_time(t, start, &what))
                .transpose()?,
            customer: p.customer.as_deref().or(case.customer.as_deref()),
        })
    };
    let expected = case
        .expect
        .iter()
        .enumerate()
        .map(|(n, p)| resolve(p, format!("expect[{n}].at")))
        .collect::<Result<Vec<_>, _>>()?;
    let forbidden = case
        .expect_none
        .iter()
        .enumerate()
        .map(|(n, p)| resolve(p, format!("expect_none[{n}].at")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut problems = Vec::new();
    if case.complete {
        for (n, exp) in expected.iter().enumerate() {
            match emitted.get(n) {
                Some(got) if exp.matches(got) => {}
                Some(got) => {
                    problems.push(format!(
                        "action {}: expected {}\n    but came: {}",
                        n + 1,
                        exp.describe(),
                        describe_action(got)
                    ));
                    break;
                }
                None => {
                    problems.push(format!(
                        "action {}: expected {}\n    but no more actions came",
                        n + 1,
                        exp.describe()
                    ));
                    break;
                }
            }
        }
        if problems.is_empty() && emitted.len() > expected.len() {
            problems.push(format!(
                "{} action(s) came beyond the {} expected (the list is complete; add `complete: false` to allow others):\n    {}",
                emitted.len() - expected.len(),
                expected.len(),
                emitted[expected.len()..].iter().map(describe_action).collect::<Vec<_>>().join("\n    ")
            ));
        }
    } else {
        let mut next = 0;
        for exp in &expected {
            match emitted[next..].iter().position(|e| exp.matches(e)) {
                Some(p) => next += p + 1,
                None => {
                    problems.push(format!(
                        "expected {} (in order), but it did not come",
                        exp.describe()
                    ));
                    break;
                }
            }
        }
    }
    for f in &forbidden {
        for e in emitted.iter().filter(|e| f.matches(e)) {
            problems.push(format!(
                "expected no action like {}\n    but came: {}",
                f.describe(),
                describe_action(e)
            ));
        }
    }
    let failure = (!problems.is_empty()).then(|| {
        let mut s = String::new();
        for p in &problems {
            let _ = writeln!(s, "  {p}");
        }
        let _ = writeln!(s, "  actions that came ({}):", emitted.len());
        for (n, e) in emitted.iter().enumerate() {
            let _ = writeln!(s, "    {}. {}", n + 1, describe_action(e));
        }
        for id in sim.customers().keys() {
            let _ = writeln!(s, "  history of {id}:");
            for line in sim.history(id) {
                let _ = writeln!(s, "    {line}");
            }
        }
        s
    });
    Ok(Outcome {
        name: case.name.clone(),
        failure,
    })
}

/// A test file, parsed, with the place of each test for messages.
#[derive(Debug, Clone)]
pub struct ParsedTests {
    /// The tests.
    pub tests: Vec<TestCase>,
    places: Vec<(usize, usize)>,
}

impl ParsedTests {
    /// A diagnostic placed at test `index`.
    pub fn place_of_test(
        &self,
        file: &Path,
        index: usize,
        severity: Severity,
        message: &str,
    ) -> Diagnostic {
        let (line, col) = self.places.get(index).copied().unwrap_or((1, 1));
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            severity,
            message: format!("test \"{}\": {message}", self.tests[index].name),
        }
    }
}

/// Parses a test file; problems come back as `FILE:LINE:COL` diagnostics.
pub fn parse_test_file(file: &Path, text: &str) -> Result<ParsedTests, Vec<Diagnostic>> {
    let doc = Document::parse(file, text)?;
    let parsed: Result<TestFile, _> = serde_path_to_error::deserialize(doc.to_json());
    match parsed {
        Ok(t) => {
            let places = (0..t.tests.len())
                .map(|i| doc.position(&[PathStep::Key("tests".into()), PathStep::Index(i)]))
                .collect();
            Ok(ParsedTests {
                tests: t.tests,
                places,
            })
        }
        Err(e) => {
            let steps: Vec<PathStep> = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Seq { index } => Some(PathStep::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(PathStep::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let (line, col) = doc.position(&steps);
            let path = e.path().to_string();
            let message = if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            };
            Err(vec![Diagnostic {
                file: file.to_path_buf(),
                line,
                col,
                severity: Severity::Error,
                message,
            }])
        }
    }
}
