//! Property tests: random valid journeys (written as YAML and loaded like any journeys folder)
//! and random event streams, run through the simulator and through the engine directly, against
//! the invariants of the contract (`docs/journeys.md`) and of the engine.
//!
//! A failing case prints the journey files and the events (one JSON event a line) so that it can
//! be replayed with `journey simulate`.

use chrono::{DateTime, Timelike};
use chrono_tz::Tz;
use journeyd_engine::{CustomerState, Engine, Input};
use journeyd_journey::load_sources;
use journeyd_simulator::{Emitted, Simulator};
use journeyd_types::time::{format_rfc3339, parse_rfc3339, DAY, HOUR, MINUTE};
use journeyd_types::{Action, ActionKind, Attributes, CancelReason, Event, Millis, Value};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

// ---- alphabets ----------------------------------------------------------------------------

const CHANNELS: [&str; 4] = ["email", "sms", "push", "call_centre"];
/// Channels events come from (`None` is also generated).
const EVENT_CHANNELS: [&str; 5] = ["email", "sms", "push", "call_centre", "web"];
/// Ordinary event types (besides `profile_updated` and `consent_changed`).
const EVENTS: [&str; 8] = [
    "visit",
    "signup",
    "purchase",
    "clicked",
    "opened",
    "replied",
    "unsubscribe",
    "noise",
];
const ENTRY_EVENTS: [&str; 5] = ["visit", "signup", "purchase", "clicked", "profile_updated"];
const INACTIVITY_EVENTS: [&str; 2] = ["visit", "purchase"];
const WAIT_EVENTS: [&str; 4] = ["clicked", "opened", "purchase", "replied"];
const CANCEL_EVENTS: [&str; 3] = ["clicked", "opened", "replied"];
const EXIT_EVENTS: [&str; 3] = ["purchase", "unsubscribe", "clicked"];
const GOAL_EVENTS: [&str; 2] = ["purchase", "clicked"];

const WAITS: [&str; 7] = ["1h", "3h", "12h", "1d", "1d12h", "2d", "5d"];
const TTLS: [&str; 5] = ["1h", "12h", "1d", "2d", "7d"];
const COOLDOWNS: [&str; 3] = ["1h", "1d", "3d"];
const INACTIVITY_FOR: [&str; 3] = ["1h", "1d", "2d"];
const GOAL_WITHIN: [&str; 2] = ["1d", "7d"];
/// Cap windows, with their length.
const CAP_PER: [(&str, Millis); 4] = [("1h", HOUR), ("1d", DAY), ("2d", 2 * DAY), ("7d", 7 * DAY)];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// CEL conditions over the profile and the event (quoted for YAML single quotes).
const CONDITIONS: [&str; 6] = [
    r#"profile.tier == "gold""#,
    "profile.score > 2",
    r#"profile.tier in ["gold", "silver"]"#,
    "event.attributes.amount >= 50",
    r#"event.channel == "email""#,
    "true",
];
/// Profile updates a step may make: attribute and CEL expression. No `timezone`: see
/// `quiet_hours_are_respected`.
const UPDATES: [(&str, &str); 6] = [
    ("tier", r#""gold""#),
    ("tier", r#""silver""#),
    ("score", "profile.score + 1"),
    ("seen", "true"),
    ("tier", "null"),
    ("last_amount", "event.attributes.amount"),
];
const TIMEZONES: [&str; 6] = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];
/// Starts of the event streams: plain winter, and around daylight-saving changes.
const BASES: [&str; 4] = [
    "2026-01-05T00:00:00Z",
    "2026-03-06T12:00:00Z",
    "2026-04-02T00:00:00Z",
    "2026-10-23T12:00:00Z",
];

// ---- the generated scenario ---------------------------------------------------------------

#[derive(Debug, Clone)]
enum Trigger {
    Event(&'static str),
    Inactivity(&'static str, &'static str),
}

#[derive(Debug, Clone)]
enum Reentry {
    Never,
    Always,
    Cooldown(&'static str),
}

#[derive(Debug, Clone)]
struct JourneySpec {
    version: u32,
    priority: Option<i64>,
    service: Option<bool>,
    trigger: Trigger,
    condition: Option<&'static str>,
    reentry: Option<Reentry>,
    exit_on: Option<Vec<&'static str>>,
    goal: Option<(&'static str, &'static str)>,
    steps: Vec<StepSpec>,
}

/// A target is a selector, resolved against the steps a step may go to without making a loop
/// that never waits.
type Sel = u8;

#[derive(Debug, Clone)]
struct StepSpec {
    kind: Kind,
    next: Option<Sel>,
}

#[derive(Debug, Clone)]
enum Kind {
    Send {
        channel: &'static str,
        ttl: Option<&'static str>,
        cancel_on: Vec<&'static str>,
        vars: bool,
    },
    Wait(&'static str),
    WaitUntil {
        hour: u8,
        minute: u8,
        days: Option<Vec<&'static str>>,
    },
    WaitFor {
        events: Vec<&'static str>,
        condition: Option<&'static str>,
        timeout: &'static str,
        on_event: Option<Sel>,
        on_timeout: Option<Sel>,
    },
    Branch {
        arms: Vec<(&'static str, Sel)>,
        otherwise: Sel,
    },
    Split(Vec<(u32, Sel)>),
    Update(Vec<usize>),
    Exit,
}

impl Kind {
    fn waits(&self) -> bool {
        matches!(
            self,
            Kind::Wait(_) | Kind::WaitUntil { .. } | Kind::WaitFor { .. }
        )
    }
}

#[derive(Debug, Clone)]
struct CapSpec {
    channel: Option<&'static str>,
    service: Option<bool>,
    max: u32,
    per: usize,
}

#[derive(Debug, Clone)]
struct QuietSpec {
    from: u16,
    to: u16,
    channels: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
struct PoliciesSpec {
    timezone: Option<&'static str>,
    caps: Vec<CapSpec>,
    quiet: Option<QuietSpec>,
    consent: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
enum EvKind {
    Plain {
        event_type: &'static str,
        channel: Option<&'static str>,
        amount: Option<i64>,
    },
    Profile(Vec<(usize, usize)>),
    Consent {
        channel: &'static str,
        granted: bool,
    },
}

#[derive(Debug, Clone)]
struct EvSpec {
    customer: usize,
    gap: Millis,
    kind: EvKind,
}

#[derive(Clone)]
struct Scenario {
    journeys: Vec<JourneySpec>,
    policies: Option<PoliciesSpec>,
    base: &'static str,
    customers: usize,
    events: Vec<EvSpec>,
    until_after: Millis,
}

/// What the oracles need to know about a journey (as rendered).
#[derive(Debug, Clone, Default)]
struct JourneyModel {
    service: bool,
    exit_on: Vec<&'static str>,
    /// Send steps: step id -> (channel, cancel_on).
    sends: HashMap<String, (&'static str, Vec<&'static str>)>,
}

/// Profile attributes `profile_updated` events set, with their possible values.
fn profile_attr(attr: usize, value: usize) -> (&'static str, Value) {
    match attr % 3 {
        0 => {
            let v = ["gold", "silver", "bronze"];
            let value = value % (v.len() + 1);
            (
                "tier",
                v.get(value).map_or(Value::Null, |s| Value::from(*s)),
            )
        }
        1 => {
            let value = value % 7;
            (
                "score",
                if value == 6 {
                    Value::Null
                } else {
                    Value::Int(value as i64)
                },
            )
        }
        _ => {
            let value = value % (TIMEZONES.len() + 2);
            let v = match value {
                v if v < TIMEZONES.len() => Value::from(TIMEZONES[v]),
                v if v == TIMEZONES.len() => Value::from("Not/A_Zone"),
                _ => Value::Null,
            };
            ("timezone", v)
        }
    }
}

/// The steps step `i` may go to: any later step, and any waiting step; a waiting step may go
/// anywhere. So every loop passes a wait.
fn candidates(kinds: &[Kind], i: usize) -> Vec<usize> {
    (0..kinds.len())
        .filter(|&t| t > i || kinds[i].waits() || kinds[t].waits())
        .collect()
}

fn render_journey(index: usize, j: &JourneySpec) -> (String, String, JourneyModel) {
    use std::fmt::Write;
    let id = format!("j{index}");
    let mut model = JourneyModel::default();
    let mut y = String::new();
    let _ = writeln!(y, "journey: {id}\nversion: {}", j.version);
    if let Some(p) = j.priority {
        let _ = writeln!(y, "priority: {p}");
    }
    if let Some(service) = j.service {
        let _ = writeln!(
            y,
            "category: {}",
            if service { "service" } else { "marketing" }
        );
        model.service = service;
    }
    y.push_str("entry:\n");
    match &j.trigger {
        Trigger::Event(e) => {
            let _ = writeln!(y, "  event: {e}");
        }
        Trigger::Inactivity(e, d) => {
            let _ = writeln!(y, "  inactivity: {{ event: {e}, for: {d} }}");
        }
    }
    if let Some(c) = j.condition {
        let _ = writeln!(y, "  if: '{c}'");
    }
    match &j.reentry {
        None => {}
        Some(Reentry::Never) => y.push_str("  reentry: never\n"),
        Some(Reentry::Always) => y.push_str("  reentry: always\n"),
        Some(Reentry::Cooldown(d)) => {
            let _ = writeln!(y, "  reentry: {d}");
        }
    }
    if let Some(on) = &j.exit_on {
        let _ = writeln!(y, "exit:\n  on: [{}]", on.join(", "));
        model.exit_on = on.clone();
    }
    if let Some((e, w)) = j.goal {
        let _ = writeln!(y, "goal:\n  event: {e}\n  within: {w}");
    }
    y.push_str("steps:\n");

    // Steps that must name a target but have none to name become exits.
    let mut kinds: Vec<Kind> = j.steps.iter().map(|s| s.kind.clone()).collect();
    for i in 0..kinds.len() {
        let needs_target = matches!(kinds[i], Kind::Branch { .. } | Kind::Split(_));
        if needs_target && candidates(&kinds, i).is_empty() {
            kinds[i] = Kind::Exit;
        }
    }
    for (i, (kind, spec)) in kinds.iter().zip(&j.steps).enumerate() {
        let c = candidates(&kinds, i);
        let target = |sel: Sel| format!("s{}", c[sel as usize % c.len()]);
        let opt_target = |sel: Option<Sel>| sel.filter(|_| !c.is_empty()).map(target);
        let _ = writeln!(y, "  - id: s{i}");
        let mut next = opt_target(spec.next);
        match kind {
            Kind::Send {
                channel,
                ttl,
                cancel_on,
                vars,
            } => {
                let _ = write!(y, "    send: {{ channel: {channel}, template: t_{id}_s{i}");
                if let Some(ttl) = ttl {
                    let _ = write!(y, ", ttl: {ttl}");
                }
                if !cancel_on.is_empty() {
                    let _ = write!(y, ", cancel_on: [{}]", cancel_on.join(", "));
                }
                if *vars {
                    y.push_str(
                        ", vars: { tier: 'profile.tier', amount: 'event.attributes.amount' }",
                    );
                }
                y.push_str(" }\n");
                model
                    .sends
                    .insert(format!("s{i}"), (*channel, cancel_on.clone()));
            }
            Kind::Wait(d) => {
                let _ = writeln!(y, "    wait: {d}");
            }
            Kind::WaitUntil { hour, minute, days } => {
                let _ = write!(y, "    wait: {{ until: \"{hour:02}:{minute:02}\"");
                if let Some(days) = days {
                    let _ = write!(y, ", days: [{}]", days.join(", "));
                }
                y.push_str(" }\n");
            }
            Kind::WaitFor {
                events,
                condition,
                timeout,
                on_event,
                on_timeout,
            } => {
                let _ = write!(y, "    wait_for: {{ events: [{}]", events.join(", "));
                if let Some(cond) = condition {
                    let _ = write!(y, ", if: '{cond}'");
                }
                let _ = write!(y, ", timeout: {timeout}");
                if let Some(t) = opt_target(*on_event) {
                    let _ = write!(y, ", on_event: {t}");
                }
                if let Some(t) = opt_target(*on_timeout) {
                    let _ = write!(y, ", on_timeout: {t}");
                }
                y.push_str(" }\n");
            }
            Kind::Branch { arms, otherwise } => {
                y.push_str("    branch:\n");
                for (cond, sel) in arms {
                    let _ = writeln!(y, "      - {{ if: '{cond}', next: {} }}", target(*sel));
                }
                let _ = writeln!(y, "      - {{ else: {} }}", target(*otherwise));
                next = None;
            }
            Kind::Split(arms) => {
                y.push_str("    split:\n");
                for (weight, sel) in arms {
                    let _ = writeln!(y, "      - {{ weight: {weight}, next: {} }}", target(*sel));
                }
                next = None;
            }
            Kind::Update(which) => {
                let mut seen = HashSet::new();
                let pairs: Vec<String> = which
                    .iter()
                    .map(|&k| UPDATES[k % UPDATES.len()])
                    .filter(|(name, _)| seen.insert(*name))
                    .map(|(name, expr)| format!("{name}: '{expr}'"))
                    .collect();
                let _ = writeln!(y, "    update: {{ {} }}", pairs.join(", "));
            }
            Kind::Exit => {
                y.push_str("    exit: {}\n");
                next = None;
            }
        }
        if let Some(next) = next {
            let _ = writeln!(y, "    next: {next}");
        }
    }
    (id, y, model)
}

fn render_policies(p: &PoliciesSpec) -> String {
    use std::fmt::Write;
    let mut y = String::from("policies:\n");
    if let Some(tz) = p.timezone {
        let _ = writeln!(y, "  default_timezone: {tz}");
    }
    if !p.caps.is_empty() {
        y.push_str("  frequency_caps:\n");
        for cap in &p.caps {
            let _ = write!(y, "    - {{ channel: \"{}\"", cap.channel.unwrap_or("*"));
            if let Some(service) = cap.service {
                let _ = write!(
                    y,
                    ", category: {}",
                    if service { "service" } else { "marketing" }
                );
            }
            let _ = writeln!(y, ", max: {}, per: {} }}", cap.max, CAP_PER[cap.per].0);
        }
    }
    if let Some(q) = &p.quiet {
        let _ = write!(
            y,
            "  quiet_hours:\n    from: \"{:02}:{:02}\"\n    to: \"{:02}:{:02}\"\n",
            q.from / 60,
            q.from % 60,
            q.to / 60,
            q.to % 60
        );
        if let Some(ch) = &q.channels {
            let _ = writeln!(y, "    channels: [{}]", ch.join(", "));
        }
    }
    if let Some(req) = &p.consent {
        let _ = writeln!(y, "  consent:\n    required: [{}]", req.join(", "));
    }
    y
}

impl Scenario {
    fn files(&self) -> (Vec<(PathBuf, String)>, HashMap<String, JourneyModel>) {
        let mut files = Vec::new();
        let mut models = HashMap::new();
        for (i, j) in self.journeys.iter().enumerate() {
            let (id, yaml, model) = render_journey(i, j);
            files.push((PathBuf::from(format!("{id}.yaml")), yaml));
            models.insert(id, model);
        }
        if let Some(p) = &self.policies {
            files.push((PathBuf::from("policies.yaml"), render_policies(p)));
        }
        (files, models)
    }

    fn events(&self) -> Vec<Event> {
        let mut t = parse_rfc3339(self.base).expect("a valid base time");
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                t += e.gap;
                let mut ev = Event {
                    event_id: format!("e{i}"),
                    customer_id: format!("c{}", e.customer % self.customers),
                    event_type: String::new(),
                    channel: None,
                    occurred_at: t,
                    attributes: Attributes::new(),
                };
                match &e.kind {
                    EvKind::Plain {
                        event_type,
                        channel,
                        amount,
                    } => {
                        ev.event_type = (*event_type).to_owned();
                        ev.channel = channel.map(str::to_owned);
                        if let Some(a) = amount {
                            ev.attributes.insert("amount".into(), Value::Int(*a));
                        }
                    }
                    EvKind::Profile(attrs) => {
                        ev.event_type = "profile_updated".into();
                        for &(a, v) in attrs {
                            let (name, value) = profile_attr(a, v);
                            ev.attributes.insert(name.into(), value);
                        }
                    }
                    EvKind::Consent { channel, granted } => {
                        ev.event_type = "consent_changed".into();
                        ev.attributes
                            .insert("channel".into(), Value::from(*channel));
                        ev.attributes
                            .insert("granted".into(), Value::Bool(*granted));
                    }
                }
                ev
            })
            .collect()
    }

    /// Keeps `timezone` only in profile updates that are a customer's first event, so that no
    /// customer changes zone once something may have been sent or held.
    fn timezone_only_first(&mut self) {
        let mut seen = HashSet::new();
        for e in &mut self.events {
            let first = seen.insert(e.customer % self.customers);
            if let (EvKind::Profile(attrs), false) = (&mut e.kind, first) {
                for (attr, _) in attrs.iter_mut() {
                    if *attr % 3 == 2 {
                        *attr = 0;
                    }
                }
            }
        }
    }

    fn until(&self) -> Millis {
        let last = self
            .events()
            .last()
            .map_or(parse_rfc3339(self.base).expect("a valid base time"), |e| {
                e.occurred_at
            });
        last + self.until_after
    }

    fn default_tz(&self) -> Tz {
        self.policies
            .as_ref()
            .and_then(|p| p.timezone)
            .map_or(Tz::UTC, |s| s.parse().expect("a valid zone"))
    }
}

/// Prints the scenario as files and an event file, ready for `journey simulate`.
impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (files, _) = self.files();
        writeln!(f)?;
        for (path, text) in &files {
            writeln!(f, "# --- {} ---\n{text}", path.display())?;
        }
        writeln!(f, "# --- events.jsonl ---")?;
        for e in self.events() {
            writeln!(f, "{}", serde_json::to_string(&e).map_err(|_| fmt::Error)?)?;
        }
        writeln!(f, "# --until {}", format_rfc3339(self.until()))
    }
}

// ---- strategies ---------------------------------------------------------------------------

fn sel() -> impl Strategy<Value = Sel> {
    any::<Sel>()
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (
            select(&CHANNELS[..]),
            proptest::option::of(select(&TTLS[..])),
            subsequence(&CANCEL_EVENTS[..], 0..=2),
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(channel, ttl, cancel_on, vars)| Kind::Send {
                channel,
                ttl,
                cancel_on,
                vars
            }),
        2 => select(&WAITS[..]).prop_map(Kind::Wait),
        1 => (
            0u8..24,
            prop_oneof![Just(0u8), Just(30u8), 0u8..60],
            proptest::option::of(subsequence(&DAYS[..], 1..=3)),
        )
            .prop_map(|(hour, minute, days)| Kind::WaitUntil { hour, minute, days }),
        2 => (
            subsequence(&WAIT_EVENTS[..], 1..=2),
            proptest::option::weighted(0.3, select(&CONDITIONS[..])),
            select(&WAITS[..]),
            proptest::option::of(sel()),
            proptest::option::of(sel()),
        )
            .prop_map(|(events, condition, timeout, on_event, on_timeout)| Kind::WaitFor {
                events,
                condition,
                timeout,
                on_event,
                on_timeout
            }),
        1 => (
            proptest::collection::vec((select(&CONDITIONS[..]), sel()), 1..=2),
            sel()
        )
            .prop_map(|(arms, otherwise)| Kind::Branch { arms, otherwise }),
        1 => proptest::collection::vec((1u32..=5, sel()), 1..=3).prop_map(Kind::Split),
        1 => proptest::collection::vec(0..UPDATES.len(), 1..=2).prop_map(Kind::Update),
        1 => Just(Kind::Exit),
    ]
}

fn step() -> impl Strategy<Value = StepSpec> {
    (kind(), proptest::option::weighted(0.3, sel()))
        .prop_map(|(kind, next)| StepSpec { kind, next })
}

fn journey() -> impl Strategy<Value = JourneySpec> {
    let trigger = prop_oneof![
        4 => select(&ENTRY_EVENTS[..]).prop_map(Trigger::Event),
        1 => (select(&INACTIVITY_EVENTS[..]), select(&INACTIVITY_FOR[..]))
            .prop_map(|(e, d)| Trigger::Inactivity(e, d)),
    ];
    let reentry = proptest::option::of(prop_oneof![
        Just(Reentry::Never),
        Just(Reentry::Always),
        select(&COOLDOWNS[..]).prop_map(Reentry::Cooldown),
    ]);
    (
        (
            1u32..=3,
            proptest::option::of(-3i64..=3),
            proptest::option::of(any::<bool>()),
            trigger,
            proptest::option::weighted(0.3, select(&CONDITIONS[..])),
            reentry,
        ),
        proptest::option::weighted(0.4, subsequence(&EXIT_EVENTS[..], 1..=2)),
        proptest::option::weighted(0.3, (select(&GOAL_EVENTS[..]), select(&GOAL_WITHIN[..]))),
        proptest::collection::vec(step(), 1..=8),
    )
        .prop_map(
            |((version, priority, service, trigger, condition, reentry), exit_on, goal, steps)| {
                JourneySpec {
                    version,
                    priority,
                    service,
                    trigger,
                    condition,
                    reentry,
                    exit_on,
                    goal,
                    steps,
                }
            },
        )
}

fn policies() -> impl Strategy<Value = PoliciesSpec> {
    let cap = (
        proptest::option::weighted(0.7, select(&CHANNELS[..])),
        proptest::option::of(any::<bool>()),
        1u32..=3,
        0..CAP_PER.len(),
    )
        .prop_map(|(channel, service, max, per)| CapSpec {
            channel,
            service,
            max,
            per,
        });
    let minute =
        (0u16..24, prop_oneof![Just(0u16), Just(30u16), 0u16..60]).prop_map(|(h, m)| h * 60 + m);
    let quiet = (
        minute.clone(),
        minute,
        proptest::option::of(subsequence(&CHANNELS[..], 1..=3)),
    )
        .prop_map(|(from, to, channels)| QuietSpec {
            from,
            to: if to == from { (to + 60) % 1440 } else { to },
            channels,
        });
    (
        proptest::option::of(select(&TIMEZONES[..])),
        proptest::collection::vec(cap, 0..=3),
        proptest::option::of(quiet),
        proptest::option::of(subsequence(&CHANNELS[..], 1..=3)),
    )
        .prop_map(|(timezone, caps, quiet, consent)| PoliciesSpec {
            timezone,
            caps,
            quiet,
            consent,
        })
}

fn event() -> impl Strategy<Value = EvSpec> {
    let gap = prop_oneof![
        2 => Just(0 as Millis),
        3 => (1i64..60).prop_map(|m| m * MINUTE),
        3 => (1i64..24).prop_map(|h| h * HOUR),
        2 => (1i64..4).prop_map(|d| d * DAY),
    ];
    let kind = prop_oneof![
        6 => (
            select(&EVENTS[..]),
            proptest::option::of(select(&EVENT_CHANNELS[..])),
            proptest::option::weighted(0.3, 0i64..100),
        )
            .prop_map(|(event_type, channel, amount)| EvKind::Plain {
                event_type,
                channel,
                amount
            }),
        2 => proptest::collection::vec((0usize..3, 0usize..10), 1..=2).prop_map(EvKind::Profile),
        2 => (select(&CHANNELS[..]), proptest::bool::weighted(0.7))
            .prop_map(|(channel, granted)| EvKind::Consent { channel, granted }),
    ];
    (0usize..5, gap, kind).prop_map(|(customer, gap, kind)| EvSpec {
        customer,
        gap,
        kind,
    })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_with(proptest::option::weighted(0.7, policies()).boxed())
}

/// Scenarios whose policies file always has the part a property looks at.
fn scenario_with_policies(
    want: fn(&mut PoliciesSpec, PoliciesSpec),
) -> impl Strategy<Value = Scenario> {
    scenario_with(
        (policies(), policies())
            .prop_map(move |(mut p, extra)| {
                want(&mut p, extra);
                Some(p)
            })
            .boxed(),
    )
}

fn scenario_with(policies: BoxedStrategy<Option<PoliciesSpec>>) -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(journey(), 1..=4),
        policies,
        select(&BASES[..]),
        1usize..=5,
        proptest::collection::vec(event(), 1..=40),
        (1i64..=10).prop_map(|d| d * DAY),
    )
        .prop_map(
            |(journeys, policies, base, customers, events, until_after)| Scenario {
                journeys,
                policies,
                base,
                customers,
                events,
                until_after,
            },
        )
}

// ---- running ------------------------------------------------------------------------------

/// What made the simulator emit an action: a timer (after this many events were pushed) or the
/// event with this index (its due timers having all been fired before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Timer { after_events: usize },
    Event(usize),
}

#[derive(Debug, Clone)]
struct Out {
    emitted: Emitted,
    cause: Cause,
    /// The customer's profile `timezone` after the input that emitted it.
    timezone: Option<String>,
}

struct Run {
    sim: Simulator,
    out: Vec<Out>,
}

/// The engine for a scenario; the generator only makes valid journeys.
fn build(sc: &Scenario) -> Result<(Arc<Engine>, HashMap<String, JourneyModel>), TestCaseError> {
    let (files, models) = sc.files();
    match load_sources(&files) {
        Ok(loaded) => Ok((Arc::new(Engine::new(loaded.catalog)), models)),
        Err(e) => Err(TestCaseError::fail(format!(
            "the generator made journeys that do not load:\n{e}"
        ))),
    }
}

fn check_states(sim: &Simulator) -> Result<(), TestCaseError> {
    for (id, st) in sim.customers() {
        check_state(id, st)?;
    }
    Ok(())
}

/// Properties 3 and 9 on one state.
fn check_state(id: &str, st: &CustomerState) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    for inst in &st.instances {
        prop_assert!(
            seen.insert(inst.j),
            "customer {id} has two active instances of journey {}: {:#?}",
            st.journeys[inst.j as usize].id,
            st.instances
        );
    }
    let back = CustomerState::from_bytes(&st.to_bytes());
    prop_assert!(
        back.as_ref() == Ok(st),
        "customer {id}: the state does not round-trip: {back:#?} != {st:#?}"
    );
    Ok(())
}

/// Runs the scenario through the simulator, one timer due time at a time, calling `each` after
/// every input (every due time and every event).
fn run_sim(
    engine: &Arc<Engine>,
    sc: &Scenario,
    each: &mut dyn FnMut(&Simulator) -> Result<(), TestCaseError>,
) -> Result<Run, TestCaseError> {
    let events = sc.events();
    let until = sc.until();
    let mut run = Run {
        sim: Simulator::new(engine.clone()),
        out: Vec::new(),
    };
    for (i, ev) in events.iter().enumerate() {
        advance(&mut run, ev.occurred_at, i, each)?;
        let got = run
            .sim
            .push(ev)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        record(&mut run, got, Cause::Event(i));
        each(&run.sim)?;
    }
    advance(&mut run, until, events.len(), each)?;
    Ok(run)
}

fn record(run: &mut Run, got: Vec<Emitted>, cause: Cause) {
    for emitted in got {
        let timezone = run
            .sim
            .customer(&emitted.action.customer_id)
            .and_then(|st| st.profile.get("timezone"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        run.out.push(Out {
            emitted,
            cause,
            timezone,
        });
    }
}

fn advance(
    run: &mut Run,
    to: Millis,
    after_events: usize,
    each: &mut dyn FnMut(&Simulator) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    for _ in 0..100_000 {
        let next = run.sim.customers().values().filter_map(|s| s.wake).min();
        let Some(due) = next.filter(|d| *d <= to) else {
            let rest = run.sim.advance_to(to);
            prop_assert!(rest.is_empty(), "no timer was due, yet {rest:?}");
            return Ok(());
        };
        let got = run.sim.advance_to(due);
        record(run, got, Cause::Timer { after_events });
        each(&run.sim)?;
        let left: Vec<_> = run
            .sim
            .customers()
            .iter()
            .filter(|(_, s)| s.wake.is_some_and(|w| w <= due))
            .map(|(c, s)| (c.to_string(), s.wake))
            .collect();
        prop_assert!(
            left.is_empty(),
            "after advancing to {}, timers are still due: {left:?}",
            format_rfc3339(due)
        );
    }
    Err(TestCaseError::fail("too many timers"))
}

/// The engine driven directly, per customer, with events only and one final timer at `until`:
/// the actions per customer, in order. Checks properties 3 and 9 after every input.
fn run_direct(
    engine: &Engine,
    sc: &Scenario,
) -> Result<BTreeMap<String, Vec<Action>>, TestCaseError> {
    let events = sc.events();
    let mut states: BTreeMap<String, CustomerState> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for ev in &events {
        let c = &ev.customer_id;
        let st = states.entry(c.clone()).or_default();
        let fx = engine.process(st, c, Input::Event(ev), ev.occurred_at);
        check_state(c, st)?;
        out.entry(c.clone()).or_default().extend(fx.actions);
    }
    let until = sc.until();
    for (c, st) in &mut states {
        let fx = engine.process(st, c, Input::Timer, until);
        check_state(c, st)?;
        out.entry(c.clone()).or_default().extend(fx.actions);
    }
    Ok(out)
}

/// `cases` cases, unless `PROPTEST_CASES` says otherwise (for a longer hunt).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn brief(a: &Action) -> String {
    format!(
        "{} {} {} {}/{} {} {}",
        format_rfc3339(a.created_at),
        a.kind.as_str(),
        a.channel,
        a.journey,
        a.step,
        a.customer_id,
        a.action_id
    )
}

fn quiet_scenario() -> impl Strategy<Value = Scenario> {
    scenario_with_policies(|p, extra| {
        p.quiet = p.quiet.take().or(extra.quiet).or(Some(QuietSpec {
            from: 21 * 60,
            to: 8 * 60,
            channels: None,
        }));
    })
}

/// Property 7: no covered send at a local time inside quiet hours, in the customer's zone at
/// the time of the send.
fn check_quiet_hours(sc: &Scenario) -> Result<(), TestCaseError> {
    let Some(quiet) = sc.policies.as_ref().and_then(|p| p.quiet.clone()) else {
        return Err(TestCaseError::fail("no quiet hours"));
    };
    let default_tz = sc.default_tz();
    let (engine, _) = build(sc)?;
    let run = run_sim(&engine, sc, &mut |_| Ok(()))?;
    for o in &run.out {
        let a = &o.emitted.action;
        let covered = quiet
            .channels
            .as_ref()
            .is_none_or(|c| c.contains(&a.channel.as_str()));
        if a.kind != ActionKind::Send || !covered {
            continue;
        }
        let tz: Tz = o
            .timezone
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_tz);
        let local = DateTime::from_timestamp_millis(a.created_at)
            .unwrap_or_default()
            .with_timezone(&tz);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let inside = if quiet.from < quiet.to {
            (quiet.from..quiet.to).contains(&minute)
        } else {
            minute >= quiet.from || minute < quiet.to
        };
        prop_assert!(
            !inside,
            "{} at local {} ({}) is inside quiet hours {:?}",
            brief(a),
            local,
            tz,
            quiet
        );
    }
    Ok(())
}

// ---- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// 1. Any valid journeys and any events run to the end without a panic, in the simulator
    /// and in the engine driven directly.
    #[test]
    fn runs_to_completion(sc in scenario()) {
        let (engine, _) = build(&sc)?;
        run_sim(&engine, &sc, &mut |_| Ok(()))?;
        run_direct(&engine, &sc)?;
    }

    /// 2. Two fresh runs give identical actions (ids included) and identical final states.
    #[test]
    fn runs_are_deterministic(sc in scenario()) {
        let (e1, _) = build(&sc)?;
        let (e2, _) = build(&sc)?;
        let a = run_sim(&e1, &sc, &mut |_| Ok(()))?;
        let b = run_sim(&e2, &sc, &mut |_| Ok(()))?;
        let ea: Vec<&Emitted> = a.out.iter().map(|o| &o.emitted).collect();
        let eb: Vec<&Emitted> = b.out.iter().map(|o| &o.emitted).collect();
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(a.sim.customers(), b.sim.customers());
    }

    /// 3. At most one active instance per customer and journey, after every input.
    #[test]
    fn at_most_one_instance_per_journey(sc in scenario()) {
        let (engine, _) = build(&sc)?;
        run_sim(&engine, &sc, &mut |sim| {
            for (id, st) in sim.customers() {
                let mut seen = HashSet::new();
                for inst in &st.instances {
                    prop_assert!(seen.insert(inst.j), "customer {} has two instances of {}: {:#?}",
                        id, st.journeys[inst.j as usize].id, st.instances);
                }
            }
            Ok(())
        })?;
    }

    /// 4. Every cancel names a send emitted earlier to the same customer and channel, still
    /// outstanding, cancelled once, for a listed reason and by an event that justifies it.
    #[test]
    fn cancels_name_earlier_outstanding_sends(sc in scenario()) {
        let (engine, models) = build(&sc)?;
        let events = sc.events();
        let run = run_sim(&engine, &sc, &mut |_| Ok(()))?;
        let mut sends: HashMap<&str, &Action> = HashMap::new();
        let mut cancelled: HashSet<&str> = HashSet::new();
        for o in &run.out {
            let a = &o.emitted.action;
            match a.kind {
                ActionKind::Send => {
                    prop_assert!(a.cancels.is_none() && a.reason.is_none(), "{}", brief(a));
                    prop_assert!(sends.insert(&a.action_id, a).is_none(), "send id reused: {}", brief(a));
                }
                ActionKind::Cancel => {
                    let target = a.cancels.as_deref().unwrap_or_default();
                    let Some(send) = sends.get(target) else {
                        return Err(TestCaseError::fail(format!("{} cancels no earlier send", brief(a))));
                    };
                    prop_assert_eq!(&send.customer_id, &a.customer_id, "{}", brief(a));
                    prop_assert_eq!(&send.channel, &a.channel, "{}", brief(a));
                    prop_assert_eq!(&send.journey, &a.journey, "{}", brief(a));
                    prop_assert_eq!(&send.step, &a.step, "{}", brief(a));
                    prop_assert!(cancelled.insert(target), "{} cancels {} a second time", brief(a), brief(send));
                    let expires = send.expires_at.unwrap_or(Millis::MIN);
                    prop_assert!(a.created_at < expires, "{} cancels {} after it expired", brief(a), brief(send));
                    let Cause::Event(i) = o.cause else {
                        return Err(TestCaseError::fail(format!("{} came from a timer", brief(a))));
                    };
                    let ev = &events[i];
                    prop_assert_eq!(&ev.customer_id, &a.customer_id);
                    let model = &models[&a.journey];
                    match a.reason {
                        Some(CancelReason::Responded) => {
                            let (channel, cancel_on) = &model.sends[&a.step];
                            prop_assert!(cancel_on.contains(&ev.event_type.as_str()),
                                "{} responded, but {} is not in cancel_on {:?}", brief(a), ev.event_type, cancel_on);
                            prop_assert!(ev.channel.as_deref() != Some(*channel),
                                "{} responded, but {} came from the send's own channel", brief(a), ev.event_type);
                        }
                        Some(CancelReason::Exited) => {
                            prop_assert!(model.exit_on.contains(&ev.event_type.as_str()),
                                "{} exited, but {} is not in exit.on {:?}", brief(a), ev.event_type, model.exit_on);
                        }
                        // No journey status or erasure in these scenarios.
                        Some(r @ (CancelReason::Stopped | CancelReason::Erased)) => {
                            return Err(TestCaseError::fail(format!("{} cancelled: {r}, with no stop or erasure", brief(a))))
                        }
                        None => return Err(TestCaseError::fail(format!("{} has no reason", brief(a)))),
                    }
                }
            }
        }
    }

    /// 5. No send breaks a frequency cap: in every trailing window (t - per, t], the sends a
    /// cap applies to number at most its max.
    #[test]
    fn no_send_breaks_a_cap(sc in scenario_with_policies(|p, extra| if p.caps.is_empty() {
        p.caps = extra.caps;
    })) {
        let (engine, models) = build(&sc)?;
        let caps = sc.policies.as_ref().map(|p| p.caps.clone()).unwrap_or_default();
        let run = run_sim(&engine, &sc, &mut |_| Ok(()))?;
        let sends: Vec<&Action> = run.out.iter().map(|o| &o.emitted.action)
            .filter(|a| a.kind == ActionKind::Send).collect();
        for cap in &caps {
            let per = CAP_PER[cap.per].1;
            let applies = |a: &Action| cap.channel.is_none_or(|c| c == a.channel)
                && cap.service.is_none_or(|s| s == models[&a.journey].service);
            for (k, a) in sends.iter().enumerate() {
                if !applies(a) {
                    continue;
                }
                let t = a.created_at;
                let window: Vec<String> = sends[..=k].iter()
                    .filter(|b| b.customer_id == a.customer_id && applies(b)
                        && b.created_at > t - per && b.created_at <= t)
                    .map(|b| brief(b)).collect();
                prop_assert!(window.len() <= cap.max as usize,
                    "cap {:?} broken by {}: {:#?}", cap, brief(a), window);
            }
        }
    }

    /// 6. No send to a channel that needs consent unless the customer's last consent_changed
    /// for it (processed before the send) granted it.
    #[test]
    fn no_send_without_consent(sc in scenario_with_policies(|p, extra| {
        p.consent = p.consent.take().or(extra.consent).or(Some(vec!["sms", "email"]));
    })) {
        let required = sc.policies.as_ref().and_then(|p| p.consent.clone()).unwrap_or_default();
        let (engine, _) = build(&sc)?;
        let events = sc.events();
        let run = run_sim(&engine, &sc, &mut |_| Ok(()))?;
        let mut consent: HashMap<(String, String), bool> = HashMap::new();
        let mut applied = 0;
        for o in &run.out {
            let upto = match o.cause {
                Cause::Timer { after_events } => after_events,
                Cause::Event(i) => i + 1,
            };
            for ev in &events[applied..upto.max(applied)] {
                if ev.event_type == "consent_changed" {
                    let ch = ev.attributes["channel"].as_str().unwrap_or_default().to_owned();
                    let granted = ev.attributes["granted"].as_bool().unwrap_or_default();
                    consent.insert((ev.customer_id.clone(), ch), granted);
                }
            }
            applied = applied.max(upto);
            let a = &o.emitted.action;
            if a.kind == ActionKind::Send && required.contains(&a.channel.as_str()) {
                let granted = consent.get(&(a.customer_id.clone(), a.channel.clone())).copied();
                prop_assert_eq!(granted, Some(true), "{} without consent", brief(a));
            }
        }
    }

    /// 7. No send to a channel the quiet hours cover is emitted at a local time inside them,
    /// for customers who set their time zone, if at all, with their first event.
    #[test]
    fn quiet_hours_are_respected(sc in quiet_scenario().prop_map(|mut sc| {
        sc.timezone_only_first();
        sc
    })) {
        check_quiet_hours(&sc)?;
    }

    /// 7b. The same when customers change time zone at any time, a send being held meanwhile.
    #[test]
    fn quiet_hours_are_respected_across_timezone_changes(sc in quiet_scenario()) {
        check_quiet_hours(&sc)?;
    }

    /// 8. The engine driven with events only (each input first runs the due deadlines) and one
    /// final timer gives every customer the same actions as the simulator's punctual timers.
    #[test]
    fn late_timers_give_the_same_actions(sc in scenario()) {
        let (engine, _) = build(&sc)?;
        let run = run_sim(&engine, &sc, &mut |_| Ok(()))?;
        let mut sim: BTreeMap<String, Vec<Action>> = BTreeMap::new();
        for o in &run.out {
            sim.entry(o.emitted.action.customer_id.clone()).or_default().push(o.emitted.action.clone());
        }
        let direct = run_direct(&engine, &sc)?;
        for (c, actions) in &direct {
            let expected = sim.remove(c).unwrap_or_default();
            prop_assert_eq!(actions.iter().map(brief).collect::<Vec<_>>(), expected.iter().map(brief).collect::<Vec<_>>(), "customer {}", c);
            prop_assert_eq!(actions, &expected, "customer {}", c);
        }
        prop_assert!(sim.is_empty(), "customers with actions only in the simulator: {:?}", sim.keys());
    }

    /// 9. Every customer state survives serialisation unchanged, after every input.
    #[test]
    fn states_round_trip(sc in scenario()) {
        let (engine, _) = build(&sc)?;
        run_sim(&engine, &sc, &mut check_states)?;
        run_direct(&engine, &sc)?;
    }
}
