//! Contract v2, identity: merging two customers (`customer_merged`), aliases and chains, run
//! through the simulator as `journey simulate` runs it.

mod common;

use common::*;
use journeyd_simulator::{read_events, Simulator};
use journeyd_types::{time, Event, Value};

const WELCOME: &str = r#"
journey: welcome
version: 1
entry: { event: signup }
exit: { on: [account_closed] }
goal: { event: purchase, within: 30d }
steps:
  - id: hello
    send: { channel: email, template: hello, ttl: 7d, cancel_on: [app_opened] }
  - id: pause
    wait: 2d
  - id: nudge
    send: { channel: sms, template: nudge }
"#;

fn merged(at: &str, from: &str, into: &str) -> Event {
    ev(at, from, "customer_merged").attr("into", into)
}

#[test]
fn an_instance_moves_with_its_timer_and_its_sends_keep_their_customer() {
    let e = engine(&[("welcome.yaml", WELCOME)]);
    let (sim, out) = run_sim(
        &e,
        &[
            ev("2026-03-02T10:00:00Z", "a", "signup"),
            merged("2026-03-02T11:00:00Z", "a", "b"),
            // An event under the merged id is B's: it cancels the email A was sent, and the
            // cancel carries A's id (the topic and key of the send it cancels).
            ev("2026-03-02T12:00:00Z", "a", "app_opened").on("app"),
        ],
        Some("2026-03-05T00:00:00Z"),
    );
    assert_eq!(
        brief(&out),
        [
            "2026-03-02T10:00:00Z send email welcome/hello a",
            "2026-03-02T12:00:00Z cancel email welcome/hello a responded",
            // The wait A started runs out under B, and B's sends carry B's id.
            "2026-03-04T10:00:00Z send sms welcome/nudge b",
        ]
    );
    assert!(!sim.customers().contains_key("a"), "A is only an alias now");
    assert_eq!(sim.resolve("a"), "b");
    let history: Vec<String> = sim
        .history("a")
        .iter()
        .map(|h| format!("{} {}", h.kind, h.journey.as_deref().unwrap_or("-")))
        .collect();
    // A's history came with A, in time order, and names the journey in B's table.
    let at = |line: &str| history.iter().position(|h| h == line);
    assert_eq!(at("entered welcome"), Some(0), "{history:?}");
    assert!(at("sent welcome") < at("merged -"), "{history:?}");
    assert!(at("merged -").is_some(), "{history:?}");
}

#[test]
fn with_an_instance_on_both_sides_the_merged_one_ends_and_its_sends_are_cancelled() {
    let e = engine(&[("welcome.yaml", WELCOME)]);
    let (sim, out) = run_sim(
        &e,
        &[
            ev("2026-03-02T10:00:00Z", "a", "signup"),
            ev("2026-03-02T10:30:00Z", "b", "signup"),
            merged("2026-03-02T11:00:00Z", "a", "b"),
        ],
        Some("2026-03-05T00:00:00Z"),
    );
    assert_eq!(
        brief(&out),
        [
            "2026-03-02T10:00:00Z send email welcome/hello a",
            "2026-03-02T10:30:00Z send email welcome/hello b",
            "2026-03-02T11:00:00Z cancel email welcome/hello a exited",
            // Only B's instance goes on: one nudge, B's.
            "2026-03-04T10:30:00Z send sms welcome/nudge b",
        ]
    );
    let kinds: Vec<String> = sim
        .history("b")
        .iter()
        .map(|h| format!("{}: {}", h.kind, h.detail))
        .collect();
    assert!(
        kinds.iter().any(|k| k.starts_with("ended: merged")),
        "{kinds:?}"
    );
}

#[test]
fn profiles_consent_caps_and_entry_records_combine() {
    const POLICIES: &str = r#"
policies:
  frequency_caps:
    - { channel: email, max: 2, per: 7d }
  consent:
    required: [email]
"#;
    const ONCE: &str = r#"
journey: once
version: 1
entry: { event: promo, reentry: never }
steps:
  - id: offer
    send: { channel: email, template: offer, vars: { tier: 'profile.tier' } }
"#;
    const NEWS: &str = r#"
journey: news
version: 1
entry: { event: news, reentry: always }
steps:
  - id: letter
    send: { channel: email, template: letter }
"#;
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("once.yaml", ONCE),
        ("news.yaml", NEWS),
    ]);
    let mut sim = Simulator::new(e);
    sim.customer_mut("a").profile = [
        ("tier".into(), Value::from("gold")),
        ("city".into(), "Leeds".into()),
    ]
    .into();
    sim.customer_mut("a").set_consent("email", true);
    sim.customer_mut("b").profile = [("tier".into(), Value::from("silver"))].into();
    let mut out = Vec::new();
    for e in [
        ev("2026-03-02T10:00:00Z", "a", "promo"),
        ev("2026-03-02T10:05:00Z", "a", "news"),
        merged("2026-03-03T09:00:00Z", "a", "b"),
        // B had no consent of their own: A's came with the merge. A entered `once` and it is
        // `reentry: never`: B does not enter it now.
        ev("2026-03-03T10:00:00Z", "b", "promo"),
        // A's two emails count against B's cap of two a week: this one is suppressed.
        ev("2026-03-03T11:00:00Z", "b", "news"),
    ] {
        out.extend(sim.push(&e).unwrap());
    }
    assert_eq!(
        brief(&out),
        [
            "2026-03-02T10:00:00Z send email once/offer a",
            "2026-03-02T10:05:00Z send email news/letter a",
        ]
    );
    let b = sim.customer("b").unwrap();
    assert_eq!(
        b.profile.get("tier"),
        Some(&Value::from("silver")),
        "B wins"
    );
    assert_eq!(b.profile.get("city"), Some(&Value::from("Leeds")));
    assert_eq!(b.consent("email"), Some(true));
    let skipped: Vec<String> = sim
        .history("b")
        .iter()
        .filter(|h| h.kind == "skipped" || h.kind == "suppressed")
        .map(|h| h.detail.clone())
        .collect();
    assert_eq!(
        skipped,
        [
            "not entered again: reentry is never",
            "send suppressed: frequency_cap"
        ]
    );
}

#[test]
fn chains_resolve_and_merging_into_oneself_changes_nothing() {
    let e = engine(&[("welcome.yaml", WELCOME)]);
    let (mut sim, out) = run_sim(
        &e,
        &[
            ev("2026-03-02T10:00:00Z", "a", "signup"),
            merged("2026-03-02T11:00:00Z", "a", "b"),
            merged("2026-03-02T12:00:00Z", "b", "c"),
        ],
        None,
    );
    assert_eq!(sim.resolve("a"), "c");
    assert_eq!(sim.resolve("b"), "c");
    assert_eq!(out.len(), 1);
    // A into C, through the aliases, is C into itself: nothing changes.
    let before = sim.customer("c").unwrap().clone();
    let history = sim.history_records("c").len();
    let again = sim.push(&merged("2026-03-02T13:00:00Z", "a", "c")).unwrap();
    assert!(again.is_empty());
    assert_eq!(sim.customer("c").unwrap(), &before);
    assert_eq!(sim.history_records("c").len(), history);
    assert_eq!(sim.resolve("c"), "c");
    // A's events reach C's instance: an exit under the first id ends it, and the send it made
    // under A is cancelled under A.
    let exit = sim
        .push(&ev("2026-03-02T14:00:00Z", "a", "account_closed"))
        .unwrap();
    assert_eq!(
        brief(&exit),
        ["2026-03-02T14:00:00Z cancel email welcome/hello a exited"]
    );
    assert!(sim.customer("c").unwrap().instances.is_empty());
}

#[test]
fn an_erasure_through_an_alias_erases_the_customer_and_every_alias() {
    let e = engine(&[("welcome.yaml", WELCOME)]);
    let (mut sim, out) = run_sim(
        &e,
        &[
            ev("2026-03-02T10:00:00Z", "a", "signup"),
            merged("2026-03-02T11:00:00Z", "a", "b"),
            ev("2026-03-02T12:00:00Z", "a", "erasure_requested"),
        ],
        None,
    );
    assert_eq!(
        brief(&out)[1],
        "2026-03-02T12:00:00Z cancel email welcome/hello a erased"
    );
    assert!(sim.customers().is_empty());
    assert_eq!(sim.resolve("a"), "a", "no alias is left");
    // A later event with A's id starts a new, unknown customer.
    let fresh = sim
        .push(&ev("2026-03-02T13:00:00Z", "a", "signup"))
        .unwrap();
    assert_eq!(
        brief(&fresh),
        ["2026-03-02T13:00:00Z send email welcome/hello a"]
    );
    assert!(sim.customer("b").is_none());
}

#[test]
fn held_sends_and_armed_inactivity_come_along() {
    const POLICIES: &str = r#"
policies:
  default_timezone: UTC
  quiet_hours: { from: "21:00", to: "08:00", channels: [sms] }
"#;
    const LATE: &str = r#"
journey: late
version: 1
entry: { event: late_signup }
steps:
  - id: text
    send: { channel: sms, template: welcome_sms }
"#;
    const IDLE: &str = r#"
journey: idle
version: 1
entry: { inactivity: { event: purchase, for: 10d } }
steps:
  - id: miss_you
    send: { channel: email, template: miss_you }
"#;
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("late.yaml", LATE),
        ("idle.yaml", IDLE),
    ]);
    let (_, out) = run_sim(
        &e,
        &[
            ev("2026-03-01T09:00:00Z", "b", "purchase"),
            ev("2026-03-02T22:00:00Z", "a", "late_signup"),
            ev("2026-03-02T22:30:00Z", "a", "purchase"),
            merged("2026-03-02T23:00:00Z", "a", "b"),
        ],
        Some("2026-03-20T00:00:00Z"),
    );
    assert_eq!(
        brief(&out),
        [
            // Held under A by quiet hours, released under B.
            "2026-03-03T08:00:00Z send sms late/text b",
            // A's purchase is the later last event: inactivity counts from it, not from B's.
            "2026-03-12T22:30:00Z send email idle/miss_you b",
        ]
    );
}

#[test]
fn a_goal_stays_with_the_instance_that_survives() {
    const TRIAL: &str = r#"
journey: trial
version: 1
entry: { event: signup, reentry: always }
goal: { event: purchase, within: 30d }
steps:
  - id: arms
    split:
      - { weight: 1, next: hello }
      - { weight: 1, next: hello }
  - id: hello
    send: { channel: email, template: hello }
  - id: linger
    wait: 60d
"#;
    let e = engine(&[("trial.yaml", TRIAL)]);
    let (sim, _) = run_sim(
        &e,
        &[
            ev("2026-03-01T10:00:00Z", "b", "signup"),
            ev("2026-03-05T10:00:00Z", "b", "purchase"),
            ev("2026-03-21T10:00:00Z", "a", "signup"),
            merged("2026-03-25T10:00:00Z", "a", "b"),
            // B's instance converted already: no second conversion.
            ev("2026-03-26T10:00:00Z", "b", "purchase"),
            // 40 days after B's entry: outside its window, whatever A's entry was.
            ev("2026-04-10T10:00:00Z", "b", "purchase"),
        ],
        None,
    );
    let report = sim.report();
    let trial = &report.journeys["trial"];
    assert_eq!((trial.entered, trial.goal_reached), (2, 1), "{trial:?}");
    let arms = &trial.splits["arms"].arms;
    let converted: u64 = arms.iter().map(|a| a.converted).sum();
    assert_eq!(converted, 1, "{arms:?}");

    // A's instance moves (B never entered): its goal comes along, and so does its arm.
    let (sim, _) = run_sim(
        &e,
        &[
            ev("2026-03-01T10:00:00Z", "a", "signup"),
            merged("2026-03-02T10:00:00Z", "a", "b"),
            ev("2026-03-03T10:00:00Z", "b", "purchase"),
        ],
        None,
    );
    let trial = &sim.report().journeys["trial"];
    let converted: u64 = trial.splits["arms"].arms.iter().map(|a| a.converted).sum();
    assert_eq!((trial.goal_reached, converted), (1, 1), "{trial:?}");
}

#[test]
fn moved_instances_take_keys_of_their_own() {
    // Everyone of an audience run enters with the same seed: A's and B's instances had the
    // same key. After the merge their sends must still have distinct ids, and an exit of the
    // instance that moved must not cancel B's own earlier send.
    const CAMP: &str = r#"
journey: camp
version: 1
entry: { audience: { at: "2026-03-02T09:00:00Z" } }
exit: { on: [closed] }
steps:
  - id: speed
    branch:
      - { if: 'has(profile.fast)', next: offer }
      - { else: slow }
  - id: slow
    wait: 1d
  - id: offer
    send: { channel: email, template: offer, ttl: 7d }
"#;
    let e = engine(&[("camp.yaml", CAMP)]);
    let mut sim = Simulator::new(e);
    sim.customer_mut("a").profile = [("slow".into(), Value::Bool(true))].into();
    sim.customer_mut("b").profile = [("fast".into(), Value::Bool(true))].into();
    let mut out = sim.push(&merged("2026-03-02T10:00:00Z", "a", "b")).unwrap();
    // B's instance finished at its send; A's (waiting) moved to B.
    out.extend(sim.advance_to(time::parse_rfc3339("2026-03-03T10:00:00Z").unwrap()));
    assert_eq!(
        brief(&out),
        [
            "2026-03-02T09:00:00Z send email camp/offer b",
            "2026-03-03T09:00:00Z send email camp/offer b",
        ]
    );
    assert_ne!(out[0].action.action_id, out[1].action.action_id);
    let exit = sim
        .push(&ev("2026-03-03T11:00:00Z", "b", "closed"))
        .unwrap();
    assert!(exit.is_empty(), "{:?}", brief(&exit));
}

#[test]
fn a_merge_without_into_is_a_bad_line() {
    let text = [
        r#"{"event_id":"1","customer_id":"a","type":"customer_merged","occurred_at":"2026-03-02T10:00:00Z"}"#,
        r#"{"event_id":"2","customer_id":"a","type":"customer_merged","occurred_at":"2026-03-02T10:00:00Z","attributes":{"into":""}}"#,
        r#"{"event_id":"3","customer_id":"a","type":"customer_merged","occurred_at":"2026-03-02T10:00:00Z","attributes":{"into":"b"}}"#,
    ]
    .join("\n");
    let (events, bad) = read_events(&text);
    assert_eq!(events.len(), 1);
    assert_eq!(
        bad.iter().map(|b| b.line).collect::<Vec<_>>(),
        [1, 2],
        "{bad:?}"
    );
    assert!(bad[0].message.contains("`into`"), "{}", bad[0].message);
    assert_eq!(
        events[0].1.occurred_at,
        time::parse_rfc3339("2026-03-02T10:00:00Z").unwrap()
    );
}
