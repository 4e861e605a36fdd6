//! The `journey` binary, run as a designer runs it.

use std::path::Path;
use std::process::{Command, Output};

fn journey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_journey"))
        .args(args)
        .output()
        .expect("the journey binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

const WELCOME: &str = r#"journey: welcome
version: 1
entry: { event: signup }
exit: { on: [account_closed] }
steps:
  - id: hello
    send: { channel: email, template: welcome, cancel_on: [app_opened] }
  - id: pause
    wait: 2d
  - id: nudge
    send: { channel: push, template: nudge }
"#;

#[test]
fn validate_accepts_a_valid_folder_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    write(dir.path(), "tests/ignored.yaml", "not: a journey");
    let out = journey(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.contains("1 journey valid"), "{stdout}");
}

#[test]
fn validate_refuses_with_every_problem_as_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken.yaml",
        "journey: broken\nversion: 0\nentry: { event: signup }\nsteps:\n  - id: a\n    send: { chanel: email, template: t }\n  - id: b\n    wait: 3days\n",
    );
    let out = journey(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let file = dir.path().join("broken.yaml");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 3, "all problems at once: {stdout}");
    for l in &lines {
        assert!(
            l.starts_with(&format!("{}:", file.display())) && l.contains(": error: "),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":2:10: error:") && l.contains("version")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":6:") && l.contains("chanel")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":8:11: error:") && l.contains("3days")),
        "{stdout}"
    );
}

#[test]
fn simulate_prints_actions_and_skips_bad_lines_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"event_id":"e1","customer_id":"c1","type":"signup","channel":"web","occurred_at":"2026-01-05T09:00:00Z"}"#, "\n",
            "{broken\n",
            r#"{"event_id":"e2","customer_id":"c1","type":"app_opened","channel":"app","occurred_at":"2026-01-05T10:00:00Z"}"#, "\n",
            r#"{"event_id":"e3","customer_id":"c2","type":"signup","occurred_at":"2026-01-01T10:00:00Z"}"#, "\n",
            r#"{"event_id":"e4","customer_id":"c1","type":"customer_merged","occurred_at":"2026-01-05T11:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let args = [
        "simulate",
        "--journeys",
        dir.path().to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--until",
        "2026-01-10T00:00:00Z",
    ];
    let out = journey(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(":2: error:"), "{stderr}");
    assert!(
        stderr.contains(":4: error:") && stderr.contains("back in time"),
        "{stderr}"
    );
    // A merge without `into` is a bad line too, and merges nothing.
    assert!(
        stderr.contains(":5: error: customer_merged needs attribute `into`"),
        "{stderr}"
    );
    let actions: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String)> = actions
        .iter()
        .map(|a| {
            (
                a["at"].as_str().unwrap().to_owned(),
                a["kind"].as_str().unwrap().to_owned(),
                a["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("2026-01-05T09:00:00Z".into(), "send".into(), "hello".into()),
            (
                "2026-01-05T10:00:00Z".into(),
                "cancel".into(),
                "hello".into()
            ),
            ("2026-01-07T09:00:00Z".into(), "send".into(), "nudge".into()),
        ]
    );
    assert_eq!(actions[1]["reason"], "responded");
    assert_eq!(actions[1]["cancels"], actions[0]["action_id"]);
    for field in [
        "action_id",
        "kind",
        "customer_id",
        "journey",
        "journey_version",
        "step",
        "channel",
        "template",
        "vars",
        "cancels",
        "reason",
        "created_at",
        "expires_at",
        "at",
    ] {
        assert!(actions[0].get(field).is_some(), "field {field} missing");
    }
    // The same input twice gives the same output, ids included.
    let again = journey(&args);
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn test_runs_journey_tests_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    write(
        dir.path(),
        "tests/welcome.yaml",
        r#"tests:
  - name: a new customer gets a welcome and a nudge
    start: 2026-01-05T09:00:00Z
    customer: c1
    events:
      - { at: +0s, type: signup }
    until: +5d
    expect:
      - { at: +0s, kind: send, step: hello, channel: email }
      - { at: +2d, kind: send, step: nudge }
  - name: a wrong expectation fails
    start: 2026-01-05T09:00:00Z
    customer: c1
    events:
      - { at: +0s, type: signup }
    until: +5d
    expect:
      - { at: +0s, step: hello }
    expect_none:
      - { channel: push }
"#,
    );
    let out = journey(&["test", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok      "), "{stdout}");
    assert!(stdout.contains("FAILED  "), "{stdout}");
    assert!(
        stdout.contains("expected no action like channel push"),
        "{stdout}"
    );
    assert!(stdout.contains("history of c1:"), "{stdout}");
    assert!(stdout.contains("entered the journey on signup"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("1 passed, 1 failed"),
        "{stdout}"
    );
}

#[test]
fn test_reports_a_bad_test_file_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    write(
        dir.path(),
        "tests/bad.yaml",
        "tests:\n  - name: typo\n    customer: c1\n    evnts: []\n",
    );
    let out = journey(&["test", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    let file = dir.path().join("tests/bad.yaml");
    assert!(
        stdout.contains(&format!("{}:4:5: error:", file.display())) && stdout.contains("evnts"),
        "{stdout}"
    );
}

#[test]
fn graph_prints_a_mermaid_flowchart() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    let out = journey(&["graph", dir.path().join("welcome.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let g = text(&out.stdout);
    assert!(g.contains("flowchart TD"));
    assert!(g.contains("entry --> s_hello"));
    assert!(g.contains("s_hello --> s_pause"));
    assert!(g.contains("s_nudge --> finish"));
    assert!(g.contains("exit on account_closed"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["validate", "simulate", "diff", "test", "graph", "schema"] {
        let out = journey(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(text(&out.stdout).contains("Usage: journey"), "{sub}");
    }
}

#[test]
fn schema_prints_a_json_schema_for_editors() {
    let out = journey(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema.to_string().contains("wait_for"));
}

#[test]
fn diff_prints_what_a_change_adds_and_removes_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (base, new) = (dir.path().join("base"), dir.path().join("new"));
    write(&base, "welcome.yaml", WELCOME);
    // The change: version 2 waits 3 days instead of 2 before the nudge.
    write(
        &new,
        "welcome.yaml",
        &WELCOME
            .replace("version: 1", "version: 2")
            .replace("wait: 2d", "wait: 3d"),
    );
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"event_id":"e1","customer_id":"c1","type":"signup","channel":"web","occurred_at":"2026-01-05T09:00:00Z"}"#, "\n",
            r#"{"event_id":"e2","customer_id":"c2","type":"signup","channel":"web","occurred_at":"2026-01-05T09:00:00Z"}"#, "\n",
            r#"{"event_id":"e3","customer_id":"c2","type":"account_closed","occurred_at":"2026-01-05T10:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let run = |base: &Path, new: &Path, events: &Path| {
        journey(&[
            "diff",
            "--base",
            base.to_str().unwrap(),
            "--journeys",
            new.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--until",
            "2026-01-20T00:00:00Z",
        ])
    };
    let out = run(&base, &new, &events);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // c1's nudge moves a day; c2 left before any nudge, and the emails are the same (their
    // ids and versions differ, which does not count).
    let brief: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["diff"].as_str().unwrap().to_owned(),
                v["at"].as_str().unwrap().to_owned(),
                v["customer_id"].as_str().unwrap().to_owned(),
                v["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            (
                "-".into(),
                "2026-01-07T09:00:00Z".into(),
                "c1".into(),
                "nudge".into()
            ),
            (
                "+".into(),
                "2026-01-08T09:00:00Z".into(),
                "c1".into(),
                "nudge".into()
            ),
        ]
    );
    assert_eq!(lines[1]["template"], "nudge");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 customer differ; 1 action added, 1 removed"),
        "{stderr}"
    );
    // The same folder on both sides: nothing differs.
    let same = run(&base, &base, &events);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
    assert!(text(&same.stdout).is_empty());
    // Bad input: a bad event line, and an invalid folder.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{broken\n").unwrap();
    let out = run(&base, &new, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(":1: error:"),
        "{}",
        text(&out.stderr)
    );
    let broken = dir.path().join("broken");
    write(&broken, "j.yaml", "journey: j\nversion: 1\n");
    let out = run(&base, &broken, &events);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn simulate_writes_the_experiment_report() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "promo.yaml",
        "journey: promo\nversion: 1\nentry: { event: visit }\ngoal: { event: buy, within: 30d }\nsteps:\n  - id: test\n    split:\n      - { weight: 1, next: offer }\n      - { weight: 1, next: holdout, control: true }\n  - id: offer\n    send: { channel: email, template: o }\n  - id: holdout\n    exit: {}\n",
    );
    let mut lines = String::new();
    for i in 0..40 {
        lines += &format!(
            "{{\"event_id\":\"v{i}\",\"customer_id\":\"c{i}\",\"type\":\"visit\",\"occurred_at\":\"2026-02-02T09:00:00Z\"}}\n"
        );
    }
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines).unwrap();
    let report = dir.path().join("report.json");
    let out = journey(&[
        "simulate",
        "--journeys",
        dir.path().to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let promo = &r["journeys"]["promo"];
    assert_eq!(promo["entered"], 40);
    assert_eq!(promo["goal_reached"], 0);
    assert_eq!(promo["steps"]["test"], 40);
    let arms = promo["splits"]["test"]["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    assert_eq!(arms[1]["next"], "holdout");
    assert_eq!(arms[1]["control"], true);
    let sends = text(&out.stdout).lines().count() as u64;
    assert_eq!(arms[0]["entered"].as_u64(), Some(sends));
    assert_eq!(
        arms[0]["entered"].as_u64().unwrap() + arms[1]["entered"].as_u64().unwrap(),
        40
    );
    // No goal reached: the rates are 0, the lift has no control rate to compare with.
    assert_eq!(arms[0]["rate"], 0.0);
    assert!(arms[0]["lift"].is_null() && arms[0]["p_value"].is_null());
}

#[test]
fn simulate_applies_control_lines_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "welcome.yaml", WELCOME);
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"event_id":"e1","customer_id":"c1","type":"signup","channel":"web","occurred_at":"2026-01-05T09:00:00Z"}"#, "\n",
            r#"{"control":"stop","journey":"welcome","at":"2026-01-05T10:00:00Z"}"#, "\n",
            r#"{"control":"freeze","journey":"welcome","at":"2026-01-05T11:00:00Z"}"#, "\n",
            r#"{"control":"pause","journey":"nope","at":"2026-01-05T11:00:00Z"}"#, "\n",
            r#"{"event_id":"e2","customer_id":"c2","type":"signup","channel":"web","occurred_at":"2026-01-05T12:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let out = journey(&[
        "simulate",
        "--journeys",
        dir.path().to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--until",
        "2026-01-10T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":3: error:") && stderr.contains("pause, resume, drain or stop"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":4: error:") && stderr.contains("unknown journey"),
        "{stderr}"
    );
    let actions: Vec<(String, String, String)> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["customer_id"].as_str().unwrap().to_owned(),
                v["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    // c1's welcome goes, then the stop withdraws it; c2 signs up after the stop: nothing.
    assert_eq!(
        actions,
        [
            ("send".into(), "c1".into(), "".into()),
            ("cancel".into(), "c1".into(), "stopped".into()),
        ]
    );
}
