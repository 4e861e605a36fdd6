//! The JSON Schema of journey and policies files, checked against the loader: what the schema
//! accepts here the loader accepts, and what the schema refuses the loader refuses.

use journeyd_journey::{json_schema, load_sources, Document};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The example journey of the contract, as written there.
/// The contract's example, as the contract writes it.
const WINBACK: &str = include_str!("fixtures/contract_winback.yaml");

/// The example policies of the contract.
/// The contract's example, as the contract writes it.
const POLICIES: &str = include_str!("fixtures/contract_policies.yaml");

/// Every step kind and option.
const ONBOARDING: &str = r#"journey: onboarding
version: 12
name: Welcome new customers
priority: -5
category: service
entry:
  event: signup
  if: 'event.attributes.plan != "enterprise" && profile.country == "GB"'
  reentry: always
exit:
  on: [account_closed]
goal: { event: first_purchase, within: 2w }
steps:
  - id: welcome
    send:
      channel: email
      template: welcome
      ttl: 1d12h
      cancel_on: [app_opened]
      vars:
        first_name: profile.first_name
        greeting: '"Hello"'
        discount: 10
        ratio: 0.5
        vip: true
  - id: settle
    wait: 1d12h
  - id: morning
    wait: { until: "09:30", days: [mon, tue, wed, thu, fri] }
  - id: weekend
    wait:
      until: "9:05"
      days: [sat, sun]
    next: watch
  - id: unused_nap
    wait: 45s
  - id: watch
    wait_for:
      events: [app_opened, first_purchase]
      if: event.type == "first_purchase" || event.channel == "app"
      timeout: 3d
      on_event: mark
      on_timeout: pick
  - id: pick
    branch:
      - if: profile.ltv > 100
        next: vip_offer
      - if: '"newsletter" in profile.tags'
        next: test
      - else: mark
  - id: test
    split:
      - { weight: 1, next: control }
      - { weight: 3, next: vip_offer }
  - id: vip_offer
    send: { channel: sms, template: vip_offer }
    next: mark
  - id: mark
    update:
      onboarded: "true"
      onboarding_version: 12
      last_step: '"mark"'
      score: profile.score + 1
      active: false
    next: done
  - id: control
    exit:
  - id: done
    exit: {}
"#;

/// Inactivity entry, a reentry cooldown, waits with `next`.
const NUDGE: &str = r#"journey: lapsed_nudge
version: 1
entry:
  inactivity: { event: purchase, for: 60d }
  reentry: 90d
steps:
  - id: nudge
    send: { channel: push, template: come_back }
  - id: pause
    wait: 1w2d3h4m5s
    next: again
  - id: again
    wait_for:
      events: [purchase]
      timeout: 12h
    next: flag
  - id: flag
    update: { lapsed: true }
    next: bye
  - id: bye
    exit: {}
"#;

/// The smallest journey.
const MINIMAL: &str =
    "journey: j1\nversion: 1\nentry: {event: go}\nsteps:\n  - id: done\n    exit: {}\n";

/// A branch with only its else arm; a split of one arm; reentry never written out.
const ELSE_ONLY: &str = r#"journey: else_only
version: 4294967295
priority: 0
category: marketing
entry: { event: go, reentry: never, if: "true" }
steps:
  - id: choose
    branch:
      - else: one
  - id: one
    split:
      - weight: 1
        next: two
  - id: two
    send: { channel: email, template: t, cancel_on: [], vars: {} }
"#;

const EMPTY_POLICIES: &str = "policies:\n";
const EMPTY_MAP_POLICIES: &str = "policies: {}\n";
const CAPS_ONLY: &str = r#"policies:
  default_timezone: America/New_York
  frequency_caps:
    - channel: email
      category: service
      max: 10
      per: 1w
  quiet_hours: { from: "22:30", to: "7:00" }
  consent: { required: [] }
"#;

/// The valid documents of this file, by name.
const VALID: [(&str, &str); 9] = [
    ("winback.yaml", WINBACK),
    ("onboarding.yaml", ONBOARDING),
    ("lapsed_nudge.yaml", NUDGE),
    ("j1.yaml", MINIMAL),
    ("else_only.yaml", ELSE_ONLY),
    ("policies.yaml", POLICIES),
    ("empty_policies.yaml", EMPTY_POLICIES),
    ("empty_map_policies.yaml", EMPTY_MAP_POLICIES),
    ("caps_only.yaml", CAPS_ONLY),
];

/// A journey around some steps.
fn with_steps(steps: &str) -> String {
    format!("journey: j\nversion: 1\nentry: {{event: go}}\nsteps:\n{steps}")
}

/// Invalid documents: a name, the text, and a fragment of the loader's message for it.
fn invalid() -> Vec<(&'static str, String, &'static str)> {
    let send = "  - id: a\n    send: {channel: email, template: t}\n";
    vec![
        (
            "unknown top-level field",
            format!("owner: growth\n{}", with_steps(send)),
            "unknown field \"owner\"",
        ),
        (
            "unknown field in a step",
            with_steps("  - id: a\n    send: {channel: email, template: t}\n    delay: 1d\n"),
            "unknown field \"delay\"",
        ),
        (
            "unknown field in a send",
            with_steps("  - id: a\n    send: {channel: email, template: t, subject: hi}\n"),
            "unknown field \"subject\"",
        ),
        (
            "unknown field in entry",
            "journey: j\nversion: 1\nentry: {event: go, when: now}\nsteps:\n  - id: a\n    exit: {}\n"
                .into(),
            "unknown field \"when\"",
        ),
        (
            "unknown field in policies",
            "policies:\n  max_per_day: 3\n".into(),
            "unknown field \"max_per_day\"",
        ),
        (
            "unknown field in a frequency cap",
            "policies:\n  frequency_caps:\n    - {channel: sms, max: 1, per: 1d, burst: 2}\n".into(),
            "unknown field \"burst\"",
        ),
        (
            "unknown field beside policies",
            "policies: {}\nversion: 2\n".into(),
            "unknown field \"version\"",
        ),
        (
            "neither journey nor policies",
            "journeys: x\n".into(),
            "expected a top-level `journey:` key",
        ),
        (
            "missing step id",
            with_steps("  - send: {channel: email, template: t}\n"),
            "id is required",
        ),
        (
            "two kind keys in one step",
            with_steps("  - id: a\n    wait: 1d\n    exit: {}\n"),
            "give only one of",
        ),
        (
            "no kind key in a step",
            with_steps("  - id: a\n"),
            "give exactly one of",
        ),
        (
            "next on a branch",
            with_steps("  - id: a\n    branch:\n      - else: b\n    next: b\n  - id: b\n    exit: {}\n"),
            "next is not allowed on a branch step",
        ),
        (
            "next on a split",
            with_steps("  - id: a\n    split: [{weight: 1, next: b}]\n    next: b\n  - id: b\n    exit: {}\n"),
            "next is not allowed on a split step",
        ),
        (
            "next on an exit",
            with_steps("  - id: a\n    exit: {}\n    next: a\n"),
            "next is not allowed on an exit step",
        ),
        (
            "bad duration 3days",
            with_steps("  - id: a\n    wait: 3days\n"),
            "is not a duration",
        ),
        (
            "zero duration",
            with_steps("  - id: a\n    wait: 0d\n"),
            "longer than zero",
        ),
        (
            "duration units out of order",
            with_steps("  - id: a\n    wait: 1h1d\n"),
            "largest to smallest",
        ),
        (
            "duration without a unit",
            with_steps("  - id: a\n    wait: 30\n"),
            "has no unit",
        ),
        (
            "bad journey id Bad-Id",
            "journey: Bad-Id\nversion: 1\nentry: {event: go}\nsteps:\n  - id: a\n    exit: {}\n"
                .into(),
            "journey must be the journey id",
        ),
        (
            "bad step id Bad-Id",
            with_steps("  - id: Bad-Id\n    exit: {}\n"),
            "id must be lowercase letters",
        ),
        (
            "bad category",
            format!("category: promo\n{}", with_steps(send)),
            "category must be marketing or service",
        ),
        (
            "bad category in a frequency cap",
            "policies:\n  frequency_caps:\n    - {channel: sms, category: promo, max: 1, per: 1d}\n"
                .into(),
            "category must be marketing or service",
        ),
        (
            "wait_for without timeout",
            with_steps("  - id: a\n    wait_for: {events: [x]}\n"),
            "wait_for.timeout is required",
        ),
        (
            "wait_for without events",
            with_steps("  - id: a\n    wait_for: {events: [], timeout: 1d}\n"),
            "at least one event type",
        ),
        (
            "branch without else",
            with_steps("  - id: a\n    branch:\n      - {if: 'true', next: b}\n  - id: b\n    exit: {}\n"),
            "the last arm must be {else: STEP}",
        ),
        (
            "branch arm with if and else",
            with_steps("  - id: a\n    branch:\n      - {if: 'true', else: b}\n  - id: b\n    exit: {}\n"),
            "an arm is either {if, next} or {else} alone",
        ),
        (
            "empty branch",
            with_steps("  - id: a\n    branch: []\n"),
            "branch must be a list",
        ),
        (
            "split weight zero",
            with_steps("  - id: a\n    split: [{weight: 0, next: b}]\n  - id: b\n    exit: {}\n"),
            "weight must be a positive whole number",
        ),
        (
            "empty update",
            with_steps("  - id: a\n    update: {}\n"),
            "update must be a mapping",
        ),
        (
            "exit with a field",
            with_steps("  - id: a\n    exit: {now: true}\n"),
            "exit takes no fields",
        ),
        (
            "wait until a bad time",
            with_steps("  - id: a\n    wait: {until: \"25:00\"}\n"),
            "time of day",
        ),
        (
            "wait until a bad day",
            with_steps("  - id: a\n    wait: {until: \"09:00\", days: [monday]}\n"),
            "wait.days must be a list of days",
        ),
        (
            "wait until without until",
            with_steps("  - id: a\n    wait: {days: [mon]}\n"),
            "wait.until is required",
        ),
        (
            "entry with event and inactivity",
            "journey: j\nversion: 1\nentry: {event: go, inactivity: {event: go, for: 1d}}\nsteps:\n  - id: a\n    exit: {}\n".into(),
            "give exactly one of \"event\", \"inactivity\" or \"audience\"",
        ),
        (
            "entry with neither event nor inactivity",
            "journey: j\nversion: 1\nentry: {reentry: always}\nsteps:\n  - id: a\n    exit: {}\n"
                .into(),
            "give exactly one of \"event\", \"inactivity\" or \"audience\"",
        ),
        (
            "bad reentry",
            "journey: j\nversion: 1\nentry: {event: go, reentry: sometimes}\nsteps:\n  - id: a\n    exit: {}\n".into(),
            "reentry must be never, always or a cooldown",
        ),
        (
            "version zero",
            "journey: j\nversion: 0\nentry: {event: go}\nsteps:\n  - id: a\n    exit: {}\n".into(),
            "version must be a positive whole number",
        ),
        (
            "quoted version",
            "journey: j\nversion: \"3\"\nentry: {event: go}\nsteps:\n  - id: a\n    exit: {}\n"
                .into(),
            "version must be a positive whole number",
        ),
        (
            "missing version",
            "journey: j\nentry: {event: go}\nsteps:\n  - id: a\n    exit: {}\n".into(),
            "version is required",
        ),
        (
            "priority not a whole number",
            format!("priority: high\n{}", with_steps(send)),
            "priority must be a whole number",
        ),
        (
            "no steps",
            "journey: j\nversion: 1\nentry: {event: go}\nsteps: []\n".into(),
            "steps must list at least one step",
        ),
        (
            "exit without on",
            format!("exit: {{}}\n{}", with_steps(send)),
            "on is required",
        ),
        (
            "goal without within",
            format!("goal: {{event: buy}}\n{}", with_steps(send)),
            "within is required",
        ),
        (
            "send without template",
            with_steps("  - id: a\n    send: {channel: email}\n"),
            "send.template is required",
        ),
        (
            "vars not a mapping",
            with_steps("  - id: a\n    send: {channel: email, template: t, vars: [a]}\n"),
            "send.vars must be a mapping",
        ),
        (
            "unknown time zone",
            "policies:\n  default_timezone: Mars/Olympus\n".into(),
            "default_timezone must be an IANA time zone",
        ),
        (
            "quiet hours at a bad time",
            "policies:\n  quiet_hours: {from: \"21:00\", to: \"8:0\"}\n".into(),
            "time of day",
        ),
        (
            "consent without required",
            "policies:\n  consent: {}\n".into(),
            "consent.required is required",
        ),
        (
            "frequency cap without max",
            "policies:\n  frequency_caps:\n    - {channel: sms, per: 1d}\n".into(),
            "max is required",
        ),
        (
            "blank channel",
            with_steps("  - id: a\n    send: {channel: \" \", template: t}\n"),
            "send.channel must be a channel name",
        ),
    ]
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::draft202012::new(&json_schema()).unwrap_or_else(|e| panic!("schema: {e}"))
    })
}

fn to_json(name: &str, text: &str) -> Value {
    Document::parse(Path::new(name), text)
        .unwrap_or_else(|e| panic!("{name} is not YAML: {e:?}"))
        .to_json()
}

/// The schema's complaints about a document (empty when it is valid).
fn schema_errors(name: &str, text: &str) -> Vec<String> {
    let json = to_json(name, text);
    validator()
        .iter_errors(&json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn load(name: &str, text: &str) -> Result<(), String> {
    load_sources(&[(PathBuf::from(name), text.to_owned())])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The journey files another engineer keeps in the workspace's `journeys/` folder.
fn workspace_journeys() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../journeys");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| {
            matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) && p.is_file()
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable file");
            (p, text)
        })
        .collect()
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = json_schema();
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("not a valid draft 2020-12 schema: {e}");
    }
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(
        schema["$id"],
        "https://journeyd.dev/schemas/journey.schema.json"
    );
    assert!(schema["title"].is_string() && schema["description"].is_string());
    // It compiles, with every `$ref` resolved in the document (no network).
    let _ = validator();
}

/// Visits every subschema under `$defs` and the root.
fn walk<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            out.push((path.clone(), value));
            for (k, v) in map {
                walk(v, format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => schema
            .pointer(r.strip_prefix('#').expect("a local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => node,
    }
}

#[test]
fn every_property_is_described_and_every_object_is_closed() {
    let schema = json_schema();
    let mut nodes = Vec::new();
    walk(&schema, String::new(), &mut nodes);
    for (path, node) in nodes {
        if let Some(r) = node.get("$ref") {
            resolve(&schema, node);
            assert!(r.is_string(), "{path}");
        }
        let Some(props) = node.get("properties").and_then(Value::as_object) else {
            continue;
        };
        assert_eq!(
            node.get("additionalProperties"),
            Some(&Value::Bool(false)),
            "{path} must refuse unknown fields"
        );
        for (name, prop) in props {
            let described = prop
                .get("description")
                .or(resolve(&schema, prop).get("description"));
            assert!(
                described
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty()),
                "{path}/properties/{name} has no description"
            );
        }
    }
}

#[test]
fn the_valid_documents_pass_the_schema_and_the_loader() {
    for (name, text) in VALID {
        let errors = schema_errors(name, text);
        assert!(
            errors.is_empty(),
            "{name}: the schema refuses it: {errors:#?}"
        );
        if let Err(e) = load(name, text) {
            panic!("{name}: the loader refuses it:\n{e}");
        }
    }
    // Together, as a folder.
    let files: Vec<(PathBuf, String)> = VALID
        .iter()
        .filter(|(name, _)| !name.contains("policies") || *name == "policies.yaml")
        .filter(|(name, _)| *name != "caps_only.yaml")
        .map(|(name, text)| (PathBuf::from(name), text.to_string()))
        .collect();
    let loaded = load_sources(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.catalog.journeys.len(), 5);
}

#[test]
fn the_workspace_journeys_pass_the_schema() {
    for (path, text) in workspace_journeys() {
        let name = path.display().to_string();
        let errors = schema_errors(&name, &text);
        assert!(
            errors.is_empty(),
            "{name}: the schema refuses it: {errors:#?}"
        );
    }
}

#[test]
fn the_invalid_documents_are_refused_by_the_schema_and_the_loader() {
    let mut failures = Vec::new();
    for (what, text, message) in invalid() {
        if schema_errors("bad.yaml", &text).is_empty() {
            failures.push(format!("{what}: the schema accepts it"));
        }
        match load("bad.yaml", &text) {
            Ok(()) => failures.push(format!("{what}: the loader accepts it")),
            Err(e) if !e.contains(message) => failures.push(format!(
                "{what}: the loader refuses it for another reason than {message:?}:\n{e}"
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_step_that_is_almost_right_is_reported_at_the_step() {
    let text = with_steps("  - id: a\n    wait: 3days\n");
    let errors = schema_errors("bad.yaml", &text);
    assert!(
        errors.iter().any(|e| e.starts_with("/steps/0")),
        "{errors:#?}"
    );
}

#[test]
fn the_time_zones_are_the_loaders() {
    let schema = json_schema();
    let zones = schema
        .pointer("/$defs/policies_file/properties/policies/properties/default_timezone/enum")
        .and_then(Value::as_array)
        .expect("an enum of time zones");
    assert!(zones.len() > 300);
    for zone in ["Europe/London", "UTC", "America/New_York", "Asia/Kolkata"] {
        assert!(zones.contains(&Value::from(zone)), "{zone}");
    }
    for zone in zones {
        let zone = zone.as_str().expect("a name");
        let text = format!("policies:\n  default_timezone: {zone}\n");
        assert!(load("p.yaml", &text).is_ok(), "{zone}");
    }
}
