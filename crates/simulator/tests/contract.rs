//! The contract's scenarios, run through the simulator (the engine on a virtual clock, as
//! `journey simulate` runs it). Each test names the rule of `docs/journeys.md` it checks.

mod common;

use common::*;
use journeyd_simulator::Simulator;
use journeyd_types::{time, Event, Value};

const WINBACK: &str = r#"
journey: winback
version: 3
name: Win back lapsed buyers
priority: 40
entry:
  event: customer_lapsed
  if: 'profile.ltv_segment in ["high", "medium"]'
exit:
  on: [purchase, account_closed]
goal:
  event: purchase
  within: 30d
steps:
  - id: offer_email
    send: { channel: email, template: winback_offer }
  - id: wait_click
    wait_for:
      events: [email_clicked, app_opened]
      timeout: 3d
      on_event: thanks
      on_timeout: sms_nudge
  - id: sms_nudge
    send: { channel: sms, template: winback_sms, ttl: 2d, cancel_on: [email_clicked, app_opened] }
    next: done
  - id: thanks
    send: { channel: email, template: winback_thanks }
  - id: done
    exit: {}
"#;

fn high_value(at: &str, c: &str) -> Event {
    ev(at, c, "profile_updated").attr("ltv_segment", "high")
}

#[test]
fn the_contract_example_runs_as_described() {
    let e = engine(&[("winback.yaml", WINBACK)]);
    // c1 clicks: thanks. c2 does not: SMS after 3 days. c3 is low value: nothing.
    let events = vec![
        high_value("2026-01-05T08:00:00Z", "c1"),
        high_value("2026-01-05T08:00:00Z", "c2"),
        ev("2026-01-05T08:00:00Z", "c3", "profile_updated").attr("ltv_segment", "low"),
        ev("2026-01-05T09:00:00Z", "c1", "customer_lapsed"),
        ev("2026-01-05T09:00:00Z", "c2", "customer_lapsed"),
        ev("2026-01-05T09:00:00Z", "c3", "customer_lapsed"),
        ev("2026-01-06T10:00:00Z", "c1", "email_clicked").on("email"),
    ];
    let out = run(&e, &events, Some("2026-01-20T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-05T09:00:00Z send email winback/offer_email c1",
            "2026-01-05T09:00:00Z send email winback/offer_email c2",
            "2026-01-06T10:00:00Z send email winback/thanks c1",
            "2026-01-08T09:00:00Z send sms winback/sms_nudge c2",
        ]
    );
    let sms = &out[3].action;
    assert_eq!(sms.template, "winback_sms");
    assert_eq!(sms.journey_version, 3);
    assert_eq!(
        sms.expires_at,
        Some(time::parse_rfc3339("2026-01-10T09:00:00Z").unwrap())
    );
    assert_eq!(
        out[0].action.expires_at,
        Some(time::parse_rfc3339("2026-01-12T09:00:00Z").unwrap()),
        "default ttl is 7d"
    );
}

#[test]
fn two_runs_give_identical_output_with_stable_distinct_ids() {
    let e = engine(&[("winback.yaml", WINBACK)]);
    let events = vec![
        high_value("2026-01-05T08:00:00Z", "c1"),
        ev("2026-01-05T09:00:00Z", "c1", "customer_lapsed"),
    ];
    let a = run(&e, &events, Some("2026-02-01T00:00:00Z"));
    let b = run(
        &engine(&[("winback.yaml", WINBACK)]),
        &events,
        Some("2026-02-01T00:00:00Z"),
    );
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert_ne!(a[0].action.action_id, a[1].action.action_id);
    assert!(a.iter().all(|x| x.action.action_id.len() == 32));
}

#[test]
fn responded_cancels_sends_in_other_channels_only() {
    let e = engine(&[("winback.yaml", WINBACK)]);
    // c1 gets the SMS, then clicks the email: the SMS is cancelled (responded).
    // c2 gets the SMS and answers by SMS itself: no cancel (same channel).
    // c3 gets the SMS and opens the app with no channel on the event: cancelled.
    let mut events = Vec::new();
    for c in ["c1", "c2", "c3"] {
        events.push(high_value("2026-01-05T08:00:00Z", c));
    }
    for c in ["c1", "c2", "c3"] {
        events.push(ev("2026-01-05T09:00:00Z", c, "customer_lapsed"));
    }
    events.push(ev("2026-01-08T12:00:00Z", "c1", "email_clicked").on("email"));
    events.push(ev("2026-01-08T12:00:00Z", "c2", "app_opened").on("sms"));
    events.push(ev("2026-01-08T12:00:00Z", "c3", "app_opened"));
    let out = run(&e, &events, None);
    let cancels: Vec<_> = out
        .iter()
        .filter(|x| x.action.kind.as_str() == "cancel")
        .collect();
    assert_eq!(
        brief(&cancels.iter().map(|x| (*x).clone()).collect::<Vec<_>>()),
        vec![
            "2026-01-08T12:00:00Z cancel sms winback/sms_nudge c1 responded",
            "2026-01-08T12:00:00Z cancel sms winback/sms_nudge c3 responded",
        ]
    );
    // The cancel names the send's action id and goes to its channel.
    let sms_c1 = out
        .iter()
        .find(|x| {
            x.action.customer_id == "c1"
                && x.action.step == "sms_nudge"
                && x.action.kind.as_str() == "send"
        })
        .unwrap();
    assert_eq!(
        cancels[0].action.cancels.as_deref(),
        Some(sms_c1.action.action_id.as_str())
    );
    assert_eq!(cancels[0].action.template, "winback_sms");
    // After its ttl (2d) the SMS is no longer outstanding: no cancel.
    let late = vec![
        high_value("2026-01-05T08:00:00Z", "c4"),
        ev("2026-01-05T09:00:00Z", "c4", "customer_lapsed"),
        ev("2026-01-10T09:00:01Z", "c4", "email_clicked").on("email"),
    ];
    assert!(run(&e, &late, None)
        .iter()
        .all(|x| x.action.kind.as_str() == "send"));
}

#[test]
fn exit_on_cancels_outstanding_sends_with_reason_exited() {
    let e = engine(&[("winback.yaml", WINBACK)]);
    let events = vec![
        high_value("2026-01-05T08:00:00Z", "c1"),
        ev("2026-01-05T09:00:00Z", "c1", "customer_lapsed"),
        ev("2026-01-06T09:00:00Z", "c1", "purchase").on("shop"),
    ];
    let (sim, out) = run_sim(&e, &events, Some("2026-01-20T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-05T09:00:00Z send email winback/offer_email c1",
            "2026-01-06T09:00:00Z cancel email winback/offer_email c1 exited",
        ]
    );
    assert_eq!(
        out[1].action.cancels.as_deref(),
        Some(out[0].action.action_id.as_str())
    );
    // The purchase was also the goal: a conversion is recorded.
    let history = sim.history("c1");
    assert!(
        history.iter().any(|h| h.kind == "converted"),
        "{history:#?}"
    );
    assert!(history
        .iter()
        .any(|h| h.kind == "ended" && h.detail.contains("exited on purchase")));
}

#[test]
fn goal_records_a_conversion_without_ending_the_instance() {
    let j = r#"
journey: onboard
version: 1
entry: { event: signup }
goal: { event: first_deposit, within: 7d }
steps:
  - id: welcome
    send: { channel: email, template: welcome }
  - id: pause
    wait: 10d
  - id: tips
    send: { channel: email, template: tips }
"#;
    let e = engine(&[("onboard.yaml", j)]);
    let events = vec![
        ev("2026-01-05T09:00:00Z", "c1", "signup"),
        ev("2026-01-06T09:00:00Z", "c1", "first_deposit"),
        ev("2026-01-05T09:00:00Z", "c2", "signup"),
        ev("2026-01-13T09:00:00Z", "c2", "first_deposit"),
    ];
    let mut sorted = events.clone();
    sorted.sort_by_key(|e| e.occurred_at);
    let (sim, out) = run_sim(&e, &sorted, Some("2026-02-01T00:00:00Z"));
    assert_eq!(
        out.iter().filter(|x| x.action.template == "tips").count(),
        2,
        "the goal does not end the instance"
    );
    let converted = |c: &str| {
        sim.history(c)
            .iter()
            .filter(|h| h.kind == "converted")
            .count()
    };
    assert_eq!(converted("c1"), 1);
    assert_eq!(converted("c2"), 0, "first_deposit came after 7d");
}

#[test]
fn inactivity_entry_fires_after_the_last_event_and_rearms() {
    let j = r#"
journey: lapse
version: 1
entry:
  inactivity: { event: purchase, for: 30d }
  reentry: always
steps:
  - id: miss_you
    send: { channel: email, template: miss_you }
"#;
    let e = engine(&[("lapse.yaml", j)]);
    let events = vec![
        ev("2026-01-01T10:00:00Z", "c1", "purchase"),
        ev("2026-01-01T10:00:00Z", "c2", "purchase"),
        ev("2026-01-20T10:00:00Z", "c2", "purchase"), // re-arms c2 to 2026-02-19
        ev("2026-01-25T10:00:00Z", "c3", "login"),    // never purchased: never enters
    ];
    let out = run(&e, &events, Some("2026-04-01T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-31T10:00:00Z send email lapse/miss_you c1",
            "2026-02-19T10:00:00Z send email lapse/miss_you c2",
        ],
        "fires once per last purchase, not again without a new one"
    );
}

#[test]
fn inactivity_entry_condition_sees_the_last_event() {
    let j = r#"
journey: lapse
version: 1
entry:
  inactivity: { event: purchase, for: 1d }
  if: 'event.attributes.amount > 100'
steps:
  - id: miss_you
    send: { channel: email, template: miss_you, vars: { last_amount: 'event.attributes.amount' } }
"#;
    let e = engine(&[("lapse.yaml", j)]);
    let events = vec![
        ev("2026-01-01T10:00:00Z", "big", "purchase").attr("amount", 250),
        ev("2026-01-01T10:00:00Z", "small", "purchase").attr("amount", 20),
    ];
    let out = run(&e, &events, Some("2026-01-10T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec!["2026-01-02T10:00:00Z send email lapse/miss_you big"]
    );
    assert_eq!(
        out[0].action.vars.get("last_amount"),
        Some(&Value::Int(250))
    );
}

#[test]
fn waits_and_wait_until_local_time_in_the_customers_zone() {
    let j = r#"
journey: morning
version: 1
entry: { event: signup }
steps:
  - id: settle
    wait: 1d12h
  - id: at_nine
    wait: { until: "09:00" }
  - id: hello
    send: { channel: push, template: hello }
  - id: weekend
    wait: { until: "10:30", days: [sat, sun] }
  - id: weekend_hello
    send: { channel: push, template: weekend }
"#;
    let e = engine(&[("morning.yaml", j)]);
    let events = vec![
        ev("2026-01-05T08:00:00Z", "ny", "profile_updated").attr("timezone", "America/New_York"),
        ev("2026-01-05T08:00:00Z", "utc", "profile_updated").attr("other", 1),
        ev("2026-01-05T10:00:00Z", "ny", "signup"),
        ev("2026-01-05T10:00:00Z", "utc", "signup"),
    ];
    let out = run(&e, &events, Some("2026-01-20T00:00:00Z"));
    // 1d12h after Mon 10:00Z is Tue 22:00Z. UTC: next 09:00 is Wed 09:00Z; Sat 10:30Z.
    // New York (UTC-5): Tue 22:00Z is 17:00 local; next 09:00 local is Wed 14:00Z; Sat 15:30Z.
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-07T09:00:00Z send push morning/hello utc",
            "2026-01-07T14:00:00Z send push morning/hello ny",
            "2026-01-10T10:30:00Z send push morning/weekend_hello utc",
            "2026-01-10T15:30:00Z send push morning/weekend_hello ny",
        ]
    );
}

#[test]
fn wait_for_with_condition_event_and_timeout() {
    let j = r#"
journey: deposit
version: 1
entry: { event: account_opened }
steps:
  - id: ask
    send: { channel: email, template: ask }
  - id: wait_deposit
    wait_for:
      events: [deposit]
      if: 'event.attributes.amount >= 100'
      timeout: 5d
      on_timeout: reminder
  - id: thanks
    send: { channel: email, template: thanks, vars: { amount: 'event.attributes.amount' } }
    next: finished
  - id: reminder
    send: { channel: sms, template: reminder }
  - id: finished
    exit: {}
"#;
    let e = engine(&[("deposit.yaml", j)]);
    let events = vec![
        ev("2026-01-05T09:00:00Z", "c1", "account_opened"),
        ev("2026-01-05T09:00:00Z", "c2", "account_opened"),
        ev("2026-01-06T09:00:00Z", "c1", "deposit").attr("amount", 50), // too small: keeps waiting
        ev("2026-01-07T09:00:00Z", "c1", "deposit").attr("amount", 150),
    ];
    let out = run(&e, &events, Some("2026-01-20T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-05T09:00:00Z send email deposit/ask c1",
            "2026-01-05T09:00:00Z send email deposit/ask c2",
            "2026-01-07T09:00:00Z send email deposit/thanks c1",
            "2026-01-10T09:00:00Z send sms deposit/reminder c2",
        ]
    );
    assert_eq!(out[2].action.vars.get("amount"), Some(&Value::Int(150)));
}

#[test]
fn branch_update_and_vars() {
    let j = r#"
journey: tiers
version: 1
entry: { event: signup }
steps:
  - id: remember_plan
    update: { plan: 'event.attributes.plan', greeted: 'true' }
  - id: by_plan
    branch:
      - if: 'profile.plan == "premium"'
        next: premium
      - if: 'profile.plan == "basic"'
        next: basic
      - else: other
  - id: premium
    send: { channel: email, template: premium, vars: { plan: 'profile.plan', greeted: 'profile.greeted' } }
    next: done
  - id: basic
    send: { channel: email, template: basic }
    next: done
  - id: other
    send: { channel: email, template: other }
  - id: done
    exit: {}
"#;
    let e = engine(&[("tiers.yaml", j)]);
    let events = vec![
        ev("2026-01-05T09:00:00Z", "a", "signup").attr("plan", "premium"),
        ev("2026-01-05T09:00:00Z", "b", "signup").attr("plan", "basic"),
        ev("2026-01-05T09:00:00Z", "c", "signup"), // no plan: update fails for plan, branch falls to else
    ];
    let (sim, out) = run_sim(&e, &events, None);
    assert_eq!(
        out.iter()
            .map(|x| format!("{}:{}", x.action.customer_id, x.action.template))
            .collect::<Vec<_>>(),
        vec!["a:premium", "b:basic", "c:other"]
    );
    assert_eq!(
        out[0].action.vars.get("plan"),
        Some(&Value::from("premium"))
    );
    assert_eq!(out[0].action.vars.get("greeted"), Some(&Value::Bool(true)));
    assert_eq!(
        sim.customer("a").unwrap().profile.get("plan"),
        Some(&Value::from("premium"))
    );
    let hist = sim.history("c");
    assert!(
        hist.iter().any(|h| h.kind == "expr_failed"),
        "a failed expression is recorded: {hist:#?}"
    );
}

#[test]
fn split_honours_weights_and_keeps_a_customer_in_the_same_arm() {
    let j = r#"
journey: ab
version: 1
entry: { event: signup }
steps:
  - id: test
    split:
      - { weight: 80, next: a }
      - { weight: 20, next: b }
  - id: a
    send: { channel: email, template: a }
    next: done
  - id: b
    send: { channel: email, template: b }
  - id: done
    exit: {}
"#;
    let e = engine(&[("ab.yaml", j)]);
    let events: Vec<Event> = (0..2000)
        .map(|i| ev("2026-01-05T09:00:00Z", &format!("c{i}"), "signup"))
        .collect();
    let first = run(&e, &events, None);
    let a = first.iter().filter(|x| x.action.template == "a").count();
    assert_eq!(first.len(), 2000);
    assert!((1520..=1680).contains(&a), "80% of 2000 is 1600, got {a}");
    // The same customers entering again (another run, other event ids) land in the same arms.
    let again: Vec<Event> = (0..2000)
        .map(|i| {
            let mut x = ev("2026-03-05T09:00:00Z", &format!("c{i}"), "signup");
            x.event_id = format!("other-{i}");
            x
        })
        .collect();
    let second = run(&e, &again, None);
    for (x, y) in first.iter().zip(&second) {
        assert_eq!(
            x.action.template, y.action.template,
            "customer {}",
            x.action.customer_id
        );
    }
}

#[test]
fn reentry_never_always_and_cooldown() {
    let mk = |reentry: &str| {
        format!(
            "journey: j_{name}\nversion: 1\nentry: {{ event: visit, reentry: {reentry} }}\nsteps:\n  - id: hi\n    send: {{ channel: email, template: hi }}\n",
            name = reentry.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        )
    };
    let files = [
        ("never.yaml", mk("never")),
        ("always.yaml", mk("always")),
        ("cool.yaml", mk("10d")),
    ];
    let e = engine(
        &files
            .iter()
            .map(|(n, t)| (*n, t.as_str()))
            .collect::<Vec<_>>(),
    );
    let events = vec![
        ev("2026-01-01T09:00:00Z", "c1", "visit"),
        ev("2026-01-05T09:00:00Z", "c1", "visit"),
        ev("2026-01-12T09:00:00Z", "c1", "visit"),
    ];
    let out = run(&e, &events, None);
    let count = |j: &str| out.iter().filter(|x| x.action.journey == j).count();
    assert_eq!(count("j_never"), 1);
    assert_eq!(count("j_always"), 3);
    assert_eq!(
        count("j_10d"),
        2,
        "Jan 1 and Jan 12 (Jan 5 is inside the 10-day cooldown)"
    );
}

#[test]
fn entry_records_go_once_reentry_and_the_goal_no_longer_need_them() {
    let mk = |id: &str, reentry: &str, goal: &str| {
        format!(
            "journey: {id}\nversion: 1\nentry: {{ event: visit, reentry: {reentry} }}\n{goal}steps:\n  - id: hi\n    send: {{ channel: email, template: hi }}\n  - id: pause\n    wait: 1d\n  - id: bye\n    send: {{ channel: email, template: bye }}\n"
        )
    };
    let files = [
        ("never.yaml", mk("j_never", "never", "")),
        ("always.yaml", mk("j_always", "always", "")),
        ("cool.yaml", mk("j_cool", "10d", "")),
        (
            "goal.yaml",
            mk(
                "j_goal",
                "always",
                "goal: { event: purchase, within: 5d }\n",
            ),
        ),
    ];
    let e = engine(
        &files
            .iter()
            .map(|(n, t)| (*n, t.as_str()))
            .collect::<Vec<_>>(),
    );
    let (sim, out) = run_sim(
        &e,
        &[ev("2026-01-01T09:00:00Z", "c1", "visit")],
        Some("2026-01-03T09:00:00Z"),
    );
    assert_eq!(out.len(), 8, "hi and bye of each journey");
    let entered = |sim: &Simulator, id: &str| {
        sim.customer("c1")
            .unwrap()
            .journeys
            .iter()
            .find(|m| m.id == id)
            .unwrap()
            .entered_at
    };
    // Every instance has ended (Jan 2).
    assert!(entered(&sim, "j_never").is_some(), "never: kept for good");
    assert_eq!(entered(&sim, "j_always"), None, "always: nothing needs it");
    assert!(entered(&sim, "j_cool").is_some(), "inside the cooldown");
    assert!(
        entered(&sim, "j_goal").is_some(),
        "the goal can still be reached"
    );
    let (sim, _) = run_sim(
        &e,
        &[
            ev("2026-01-01T09:00:00Z", "c1", "visit"),
            ev("2026-01-04T09:00:00Z", "c1", "purchase"),
            ev("2026-01-12T09:00:00Z", "c1", "ping"),
        ],
        None,
    );
    assert!(entered(&sim, "j_never").is_some());
    assert_eq!(entered(&sim, "j_cool"), None, "the cooldown has passed");
    assert_eq!(entered(&sim, "j_goal"), None, "converted");
    let c1 = sim.customer("c1").unwrap();
    assert!(
        c1.journeys.iter().any(|m| m.id == "j_goal" && !m.converted),
        "the conversion went with the record"
    );
    // Forgetting changes no outcome: the cooldown's rule still holds where it must.
    let out = run(
        &e,
        &[
            ev("2026-01-01T09:00:00Z", "c1", "visit"),
            ev("2026-01-12T09:00:00Z", "c1", "ping"),
            ev("2026-01-12T10:00:00Z", "c1", "visit"),
        ],
        None,
    );
    let his = |j: &str| {
        out.iter()
            .filter(|x| x.action.journey == j && x.action.step == "hi")
            .count()
    };
    assert_eq!((his("j_never"), his("j_always"), his("j_cool")), (1, 2, 2));
}

#[test]
fn at_most_one_active_instance_per_journey() {
    let j = r#"
journey: slow
version: 1
entry: { event: visit, reentry: always }
steps:
  - id: pause
    wait: 5d
  - id: hi
    send: { channel: email, template: hi }
"#;
    let e = engine(&[("slow.yaml", j)]);
    let events = vec![
        ev("2026-01-01T09:00:00Z", "c1", "visit"),
        ev("2026-01-02T09:00:00Z", "c1", "visit"), // ignored: active
        ev("2026-01-07T09:00:00Z", "c1", "visit"), // enters again: the first ended Jan 6
    ];
    let out = run(&e, &events, Some("2026-02-01T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-06T09:00:00Z send email slow/hi c1",
            "2026-01-12T09:00:00Z send email slow/hi c1"
        ]
    );
}

const POLICIES: &str = r#"
policies:
  default_timezone: Europe/London
  frequency_caps:
    - { channel: sms, max: 1, per: 1d }
    - { channel: "*", category: marketing, max: 3, per: 7d }
  quiet_hours:
    from: "21:00"
    to: "08:00"
    channels: [sms, push]
  consent:
    required: [sms, email]
"#;

fn send_journey(id: &str, on: &str, channel: &str, priority: i64, category: &str) -> String {
    format!(
        "journey: {id}\nversion: 1\npriority: {priority}\ncategory: {category}\nentry: {{ event: {on}, reentry: always }}\nsteps:\n  - id: msg\n    send: {{ channel: {channel}, template: {id}_tpl }}\n"
    )
}

fn consented(at: &str, c: &str, channel: &str) -> Event {
    ev(at, c, "consent_changed")
        .attr("channel", channel)
        .attr("granted", true)
}

#[test]
fn consent_is_required_for_listed_channels() {
    let j = send_journey("promo", "visit", "email", 0, "marketing");
    let e = engine(&[("policies.yaml", POLICIES), ("promo.yaml", &j)]);
    let events = vec![
        ev("2026-01-05T10:00:00Z", "c1", "visit"), // no consent yet: suppressed
        consented("2026-01-05T11:00:00Z", "c1", "email"),
        ev("2026-01-05T12:00:00Z", "c1", "visit"),
        ev("2026-01-05T13:00:00Z", "c1", "consent_changed")
            .attr("channel", "email")
            .attr("granted", false),
        ev("2026-01-05T14:00:00Z", "c1", "visit"),
    ];
    let (sim, out) = run_sim(&e, &events, None);
    assert_eq!(
        brief(&out),
        vec!["2026-01-05T12:00:00Z send email promo/msg c1"]
    );
    let hist = sim.history("c1");
    assert_eq!(
        hist.iter()
            .filter(|h| h.detail == "send suppressed: no_consent")
            .count(),
        2
    );
}

#[test]
fn frequency_caps_suppress_and_count_by_category() {
    let promo = send_journey("promo", "visit", "sms", 0, "marketing");
    let alert = send_journey("alert", "card_blocked", "sms", 0, "service");
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("promo.yaml", &promo),
        ("alert.yaml", &alert),
    ]);
    let events = vec![
        consented("2026-01-05T09:00:00Z", "c1", "sms"),
        ev("2026-01-05T10:00:00Z", "c1", "visit"), // sent
        ev("2026-01-05T11:00:00Z", "c1", "visit"), // sms 1/1d: suppressed
        ev("2026-01-05T12:00:00Z", "c1", "card_blocked"), // service, but the sms cap names no category: suppressed
        ev("2026-01-06T10:00:01Z", "c1", "visit"),        // a day later: sent
    ];
    let (sim, out) = run_sim(&e, &events, None);
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-05T10:00:00Z send sms promo/msg c1",
            "2026-01-06T10:00:01Z send sms promo/msg c1"
        ]
    );
    let hist = sim.history("c1");
    assert_eq!(
        hist.iter()
            .filter(|h| h.detail == "send suppressed: frequency_cap")
            .count(),
        2
    );

    // The marketing cap (3 per 7d, all channels) does not limit service journeys.
    let promo_mail = send_journey("promo", "visit", "email", 0, "marketing");
    let notice = send_journey("notice", "statement", "email", 0, "service");
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("promo.yaml", &promo_mail),
        ("notice.yaml", &notice),
    ]);
    let mut events = vec![consented("2026-01-05T09:00:00Z", "c1", "email")];
    for h in 10..15 {
        events.push(ev(&format!("2026-01-05T{h}:00:00Z"), "c1", "visit"));
    }
    events.push(ev("2026-01-05T16:00:00Z", "c1", "statement"));
    let out = run(&e, &events, None);
    assert_eq!(
        out.iter().filter(|x| x.action.journey == "promo").count(),
        3
    );
    assert_eq!(
        out.iter().filter(|x| x.action.journey == "notice").count(),
        1
    );
}

#[test]
fn arbitration_gives_a_scarce_cap_to_the_higher_priority() {
    let low = send_journey("a_low", "visit", "sms", 10, "marketing");
    let high = send_journey("z_high", "visit", "sms", 90, "marketing");
    let tie = send_journey("b_tie", "visit", "sms", 10, "marketing");
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("a.yaml", &low),
        ("z.yaml", &high),
        ("b.yaml", &tie),
    ]);
    let events = vec![
        consented("2026-01-05T09:00:00Z", "c1", "sms"),
        ev("2026-01-05T10:00:00Z", "c1", "visit"),
    ];
    assert_eq!(
        brief(&run(&e, &events, None)),
        vec!["2026-01-05T10:00:00Z send sms z_high/msg c1"]
    );
    // Equal priority: the journey id decides.
    let e = engine(&[
        ("policies.yaml", POLICIES),
        ("a.yaml", &low),
        ("b.yaml", &tie),
    ]);
    assert_eq!(
        brief(&run(&e, &events, None)),
        vec!["2026-01-05T10:00:00Z send sms a_low/msg c1"]
    );
}

#[test]
fn quiet_hours_hold_sends_until_morning_in_the_customers_zone() {
    let j = r#"
journey: nudge
version: 1
entry: { event: visit, reentry: always }
steps:
  - id: sms
    send: { channel: sms, template: nudge }
  - id: mail
    send: { channel: email, template: nudge_mail }
"#;
    let e = engine(&[("policies.yaml", POLICIES), ("nudge.yaml", j)]);
    let mut events = Vec::new();
    for c in ["london", "tokyo"] {
        events.push(consented("2026-01-05T09:00:00Z", c, "sms"));
        events.push(consented("2026-01-05T09:00:00Z", c, "email"));
    }
    events.push(
        ev("2026-01-05T09:00:00Z", "tokyo", "profile_updated").attr("timezone", "Asia/Tokyo"),
    );
    // 22:30 in London (default zone, GMT in January); 07:30 next day in Tokyo.
    events.push(ev("2026-01-05T22:30:00Z", "london", "visit"));
    events.push(ev("2026-01-05T22:30:00Z", "tokyo", "visit"));
    let out = run(&e, &events, Some("2026-01-07T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec![
            "2026-01-05T22:30:00Z send email nudge/mail london",
            "2026-01-05T22:30:00Z send email nudge/mail tokyo",
            // Tokyo 08:00 = 23:00Z; London 08:00 = 08:00Z.
            "2026-01-05T23:00:00Z send sms nudge/sms tokyo",
            "2026-01-06T08:00:00Z send sms nudge/sms london",
        ]
    );
}

#[test]
fn a_held_send_is_dropped_when_the_instance_exits() {
    let j = r#"
journey: nudge
version: 1
entry: { event: visit }
exit: { on: [purchase] }
steps:
  - id: sms
    send: { channel: sms, template: nudge }
  - id: pause
    wait: 3d
"#;
    let e = engine(&[("policies.yaml", POLICIES), ("nudge.yaml", j)]);
    let events = vec![
        consented("2026-01-05T09:00:00Z", "c1", "sms"),
        ev("2026-01-05T22:30:00Z", "c1", "visit"),
        ev("2026-01-06T07:00:00Z", "c1", "purchase"),
    ];
    let (sim, out) = run_sim(&e, &events, Some("2026-01-10T00:00:00Z"));
    assert!(out.is_empty(), "{:?}", brief(&out));
    let hist = sim.history("c1");
    assert!(hist.iter().any(|h| h.kind == "dropped"), "{hist:#?}");
}

#[test]
fn caps_are_checked_when_a_held_send_is_released() {
    let j = send_journey("promo", "visit", "sms", 0, "marketing");
    let e = engine(&[("policies.yaml", POLICIES), ("promo.yaml", &j)]);
    let events = vec![
        consented("2026-01-05T09:00:00Z", "c1", "sms"),
        ev("2026-01-05T22:00:00Z", "c1", "visit"), // held to 08:00
        ev("2026-01-05T23:00:00Z", "c1", "visit"), // held to 08:00 too
    ];
    let out = run(&e, &events, Some("2026-01-07T00:00:00Z"));
    assert_eq!(
        brief(&out),
        vec!["2026-01-06T08:00:00Z send sms promo/msg c1"],
        "the second breaks the 1/day sms cap"
    );
}

#[test]
fn profile_updated_merges_and_null_removes() {
    let e = engine(&[("winback.yaml", WINBACK)]);
    let events = vec![
        ev("2026-01-05T08:00:00Z", "c1", "profile_updated")
            .attr("ltv_segment", "high")
            .attr("city", "Leeds"),
        ev("2026-01-05T08:30:00Z", "c1", "profile_updated").attr("ltv_segment", Value::Null),
        ev("2026-01-05T09:00:00Z", "c1", "customer_lapsed"),
    ];
    let (sim, out) = run_sim(&e, &events, None);
    assert!(
        out.is_empty(),
        "the entry condition fails without ltv_segment"
    );
    let st = sim.customer("c1").unwrap();
    assert_eq!(st.profile.get("city"), Some(&Value::from("Leeds")));
    assert!(!st.profile.contains_key("ltv_segment"));
}

#[test]
fn outstanding_sends_stay_cancellable_after_the_instance_ends() {
    let j = r#"
journey: promo
version: 1
entry: { event: visit }
steps:
  - id: offer
    send: { channel: push, template: offer, cancel_on: [app_opened] }
"#;
    let e = engine(&[("promo.yaml", j)]);
    let events = vec![
        ev("2026-01-05T10:00:00Z", "c1", "visit"),
        ev("2026-01-06T10:00:00Z", "c1", "app_opened").on("app"),
    ];
    assert_eq!(
        brief(&run(&e, &events, None)),
        vec![
            "2026-01-05T10:00:00Z send push promo/offer c1",
            "2026-01-06T10:00:00Z cancel push promo/offer c1 responded"
        ]
    );
}

#[test]
fn events_may_overtake_a_late_timer_with_the_same_result() {
    // The daemon's timer task may lag; an event for the customer runs the due timers first.
    let e = engine(&[("winback.yaml", WINBACK)]);
    let mut a = Simulator::new(e.clone());
    let mut state = journeyd_engine::CustomerState::default();
    let c = "c1";
    let mut out = Vec::new();
    for x in [
        high_value("2026-01-05T08:00:00Z", c),
        ev("2026-01-05T09:00:00Z", c, "customer_lapsed"),
    ] {
        out.extend(
            e.process(
                &mut state,
                c,
                journeyd_engine::Input::Event(&x),
                x.occurred_at,
            )
            .actions,
        );
        a.push(&x).unwrap();
    }
    // No timer input at all: the click at Jan 9 first runs the timeout due Jan 8.
    let click = ev("2026-01-09T09:00:00Z", c, "email_clicked").on("email");
    out.extend(
        e.process(
            &mut state,
            c,
            journeyd_engine::Input::Event(&click),
            click.occurred_at,
        )
        .actions,
    );
    let sim_out: Vec<_> = a.push(&click).unwrap();
    let expected: Vec<_> = run(
        &e,
        &[
            high_value("2026-01-05T08:00:00Z", c),
            ev("2026-01-05T09:00:00Z", c, "customer_lapsed"),
            click.clone(),
        ],
        None,
    )
    .into_iter()
    .map(|x| x.action)
    .collect();
    assert_eq!(out, expected);
    assert_eq!(
        sim_out.len(),
        2,
        "the SMS at Jan 8, then its cancel at Jan 9"
    );
}

/// docs/journeys.md, `wait: {date, offset, at, on_past}`: the date is read once on entering
/// the step; a moment that has passed, or a date that is not one, goes to `on_past` at once,
/// and the history says why.
#[test]
fn a_date_wait_reads_the_date_once_and_says_why_it_did_not_wait() {
    let e = engine(&[(
        "renew.yaml",
        r#"
journey: renew
version: 1
entry: { event: scheduled }
steps:
  - id: remember
    update: { renewal_date: event.attributes.date }
  - id: before
    wait: { date: profile.renewal_date, offset: -1, at: "09:00", on_past: late }
  - id: remind
    send: { channel: email, template: remind }
    next: done
  - id: late
    send: { channel: email, template: late }
  - id: done
    exit: {}
"#,
    )]);
    // UTC customers (no policies). Moving the date in the profile after the step started
    // does not move the wait.
    let events = [
        ev("2026-05-01T12:00:00Z", "a", "scheduled").attr("date", "2026-05-10"),
        ev("2026-05-01T12:00:00Z", "b", "scheduled").attr("date", "2026-05-01"),
        ev("2026-05-01T12:00:00Z", "c", "scheduled").attr("date", 20260510_i64),
        ev("2026-05-02T12:00:00Z", "a", "profile_updated").attr("renewal_date", "2026-06-30"),
    ];
    let (sim, out) = run_sim(&e, &events, Some("2026-07-01T00:00:00Z"));
    assert_eq!(
        brief(&out),
        [
            "2026-05-01T12:00:00Z send email renew/late b",
            "2026-05-01T12:00:00Z send email renew/late c",
            "2026-05-09T09:00:00Z send email renew/remind a",
        ]
    );
    let why = |c: &str| -> Vec<String> {
        sim.history(c)
            .into_iter()
            .filter(|l| l.kind == "date_passed")
            .map(|l| l.detail)
            .collect()
    };
    assert_eq!(
        why("b"),
        ["the date wait ended at once: 2026-04-30T09:00:00Z is past"]
    );
    let c = why("c");
    assert_eq!(c.len(), 1);
    assert!(
        c[0].contains("profile.renewal_date is not a date string"),
        "{c:?}"
    );
    assert!(why("a").is_empty());
}

/// docs/journeys.md, "Cross-channel cancellation" (contract v2, held sends and `cancel_on`): a
/// send held by quiet hours is dropped by an event in its `cancel_on` from another channel,
/// with no send and no cancel; from its own channel it is not.
#[test]
fn a_held_send_is_dropped_by_a_response_from_another_channel() {
    let e = engine(&[
        (
            "alert.yaml",
            r#"
journey: alert
version: 1
entry: { event: blocked }
steps:
  - id: sms
    send: { channel: sms, template: blocked, cancel_on: [unblocked] }
"#,
        ),
        (
            "policies.yaml",
            r#"
policies:
  default_timezone: UTC
  quiet_hours: { from: "21:00", to: "08:00", channels: [sms] }
"#,
        ),
    ]);
    let events = [
        ev("2026-01-07T23:40:00Z", "app", "blocked"),
        ev("2026-01-07T23:40:00Z", "own", "blocked"),
        ev("2026-01-08T07:00:00Z", "app", "unblocked").on("app"),
        ev("2026-01-08T07:00:00Z", "own", "unblocked").on("sms"),
    ];
    let (sim, out) = run_sim(&e, &events, Some("2026-01-09T00:00:00Z"));
    assert_eq!(brief(&out), ["2026-01-08T08:00:00Z send sms alert/sms own"]);
    let dropped: Vec<String> = sim
        .history("app")
        .into_iter()
        .filter(|l| l.kind == "dropped")
        .map(|l| l.detail)
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(
        dropped[0].contains(
            "dropped before it was sent: responded (unblocked came from another channel)"
        ),
        "{dropped:?}"
    );
}

/// docs/journeys.md, "Conditions and vars": `now` is the engine's time, the timer's when a
/// step runs from a timer, not the event's.
#[test]
fn now_is_the_time_the_step_runs() {
    let e = engine(&[(
        "later.yaml",
        r#"
journey: later
version: 1
entry: { event: go, if: 'now == event.occurred_at' }
steps:
  - id: pause
    wait: 1d
  - id: check
    branch:
      - { if: 'now - event.occurred_at == duration("24h")', next: a_day_on }
      - else: same_time
  - id: a_day_on
    send: { channel: email, template: later, vars: { at: string(now) } }
    next: done
  - id: same_time
    send: { channel: email, template: same }
  - id: done
    exit: {}
"#,
    )]);
    let out = run(
        &e,
        &[ev("2026-05-01T12:00:00Z", "a", "go")],
        Some("2026-05-03T00:00:00Z"),
    );
    assert_eq!(
        brief(&out),
        ["2026-05-02T12:00:00Z send email later/a_day_on a"]
    );
    assert_eq!(
        out[0].action.vars.get("at"),
        Some(&Value::from("2026-05-02T12:00:00Z"))
    );
}

/// docs/journeys.md, `decide`: the eligible option with the highest score wins (the earlier on
/// a tie); an option whose score fails is not eligible; the history gives every eligible
/// option's score.
#[test]
fn decide_takes_the_highest_eligible_score_and_says_why() {
    let e = engine(&[(
        "nba.yaml",
        r#"
journey: nba
version: 1
entry: { event: go }
steps:
  - id: best
    decide:
      - { if: 'profile.eligible == true', score: 'profile.m * 900.0', next: mortgage }
      - { score: 'profile.s * 100.0', next: savings }
      - { score: '30.0', next: tie }
      - { else: nothing }
  - id: mortgage
    send: { channel: email, template: mortgage }
    next: done
  - id: savings
    send: { channel: email, template: savings }
    next: done
  - id: tie
    send: { channel: email, template: tie }
    next: done
  - id: nothing
    exit: {}
  - id: done
    exit: {}
"#,
    )]);
    let at = "2026-02-02T09:00:00Z";
    let who = |c: &str, eligible: bool, m: f64, s: Value| {
        ev(at, c, "profile_updated")
            .attr("eligible", eligible)
            .attr("m", m)
            .attr("s", s)
    };
    let events = [
        who("a", true, 0.05, Value::Float(0.2)),
        who("b", true, 0.01, Value::Float(0.3)),
        who("c", false, 0.9, Value::from("high")),
        ev(at, "a", "go"),
        ev(at, "b", "go"),
        ev(at, "c", "go"),
    ];
    let (sim, out) = run_sim(&e, &events, Some("2026-02-03T00:00:00Z"));
    assert_eq!(
        brief(&out),
        [
            "2026-02-02T09:00:00Z send email nba/mortgage a",
            // 0.3 * 100 = 30 ties with the fixed 30: the earlier option wins.
            "2026-02-02T09:00:00Z send email nba/savings b",
            // Not eligible for the mortgage; the savings score fails (a string): the tie.
            "2026-02-02T09:00:00Z send email nba/tie c",
        ]
    );
    let decided = |c: &str| -> String {
        sim.history(c)
            .into_iter()
            .find(|l| l.kind == "decided")
            .map(|l| l.detail)
            .unwrap()
    };
    assert_eq!(
        decided("a"),
        "decided: mortgage (eligible, by score: mortgage 45, savings 20, tie 30)"
    );
    assert_eq!(decided("c"), "decided: tie (eligible, by score: tie 30)");
    assert!(sim
        .history("c")
        .iter()
        .any(|l| l.kind == "expr_failed" && l.detail.contains("profile.s * 100.0")));
}

/// Contract v2, "Experiment results": per split arm, the instances that took it and, of those,
/// the goals reached after it; rate, lift and p-value against the control arm; every step
/// counted.
#[test]
fn the_report_counts_arms_and_their_conversions_against_the_control() {
    let e = engine(&[(
        "promo.yaml",
        r#"
journey: promo
version: 1
entry: { event: visit }
goal: { event: buy, within: 30d }
steps:
  - id: test
    split:
      - { weight: 45, next: offer_a }
      - { weight: 45, next: offer_b }
      - { weight: 10, next: holdout, control: true }
  - id: offer_a
    send: { channel: email, template: a }
    next: done
  - id: offer_b
    send: { channel: email, template: b }
    next: done
  - id: holdout
    exit: {}
  - id: done
    exit: {}
"#,
    )]);
    let mut sim = Simulator::new(e.clone());
    let mut arm_of: std::collections::BTreeMap<String, String> = Default::default();
    for i in 0..300 {
        let c = format!("c{i:03}");
        for x in sim.push(&ev("2026-02-02T09:00:00Z", &c, "visit")).unwrap() {
            arm_of.insert(c.clone(), x.action.step);
        }
        arm_of.entry(c).or_insert_with(|| "holdout".to_owned());
    }
    // Every third customer buys; the holdout's customers too, one in six.
    let mut bought: std::collections::BTreeMap<&str, u64> = Default::default();
    for (i, (c, arm)) in arm_of.iter().enumerate() {
        let buys = if arm == "holdout" {
            i % 6 == 0
        } else {
            i % 3 == 0
        };
        if buys {
            sim.push(&ev("2026-02-03T09:00:00Z", c, "buy")).unwrap();
            *bought.entry(arm.as_str()).or_default() += 1;
        }
    }
    let report = sim.report();
    let promo = &report.journeys["promo"];
    assert_eq!(promo.entered, 300);
    assert_eq!(promo.goal_reached, bought.values().sum::<u64>());
    assert_eq!(promo.steps["test"], 300);
    assert_eq!(
        promo.steps["done"],
        promo.steps["offer_a"] + promo.steps["offer_b"]
    );
    let arms = &promo.splits["test"].arms;
    let took = |step: &str| arm_of.values().filter(|a| *a == step).count() as u64;
    let control = &arms[2];
    assert_eq!(
        (
            control.next.as_deref(),
            control.control,
            control.entered,
            control.converted
        ),
        (Some("holdout"), true, took("holdout"), bought["holdout"])
    );
    assert_eq!((control.lift, control.p_value), (None, None));
    for (arm, step) in arms[..2].iter().zip(["offer_a", "offer_b"]) {
        assert_eq!(arm.next.as_deref(), Some(step));
        assert_eq!((arm.entered, arm.converted), (took(step), bought[step]));
        let rate = bought[step] as f64 / took(step) as f64;
        let control_rate = bought["holdout"] as f64 / took("holdout") as f64;
        assert_eq!(arm.rate, Some(rate));
        assert_eq!(arm.lift, Some((rate - control_rate) / control_rate));
        let p = arm.p_value.unwrap();
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    assert!(
        took("offer_a") > 100 && took("offer_b") > 100 && took("holdout") > 10,
        "{arm_of:?}"
    );
    // The arms are remembered only while the goal can still be reached: not after a
    // conversion, nor once its window has passed.
    let (buyer, stayer) = {
        let mut it = arm_of.keys().enumerate();
        let buyer = it.next().unwrap().1.clone(); // i = 0 buys
        let stayer = it.next().unwrap().1.clone(); // i = 1 does not
        (buyer, stayer)
    };
    sim.push(&ev("2026-02-04T09:00:00Z", &buyer, "page_view"))
        .unwrap();
    sim.push(&ev("2026-02-04T09:00:00Z", &stayer, "page_view"))
        .unwrap();
    assert!(sim.customer(&buyer).unwrap().splits_taken.is_empty());
    assert_eq!(sim.customer(&stayer).unwrap().splits_taken.len(), 1);
    sim.push(&ev("2026-03-05T09:00:01Z", &stayer, "page_view"))
        .unwrap();
    assert!(
        sim.customer(&stayer).unwrap().splits_taken.is_empty(),
        "the 30-day window has passed"
    );
}

/// Contract v2, "Journey status": paused, no entries and instances stop at a send until the
/// resume; draining, no entries; stopped, every instance ends and every outstanding send of
/// the journey is cancelled (reason `stopped`).
#[test]
fn pause_resume_drain_and_stop_apply_from_their_moment() {
    use journeyd_engine::Status;
    use journeyd_simulator::{Control, Line};
    let e = engine(&[(
        "promo.yaml",
        r#"
journey: promo
version: 1
entry: { event: visit }
steps:
  - id: a
    send: { channel: email, template: a }
  - id: pause
    wait: 1d
  - id: b
    send: { channel: email, template: b }
"#,
    )]);
    let mut sim = Simulator::new(e);
    let t = |s: &str| time::parse_rfc3339(s).unwrap();
    let control = |status, at: &str| Control {
        journey: "promo".into(),
        status,
        at: t(at),
    };
    // c1's wait ends at 09:00 on the 3rd, while paused: the instance stops at b, holding it.
    let lines = [
        Line::Event(ev("2026-03-02T09:00:00Z", "c1", "visit")),
        Line::Control(control(Status::Paused, "2026-03-02T10:00:00Z")),
        Line::Event(ev("2026-03-02T11:00:00Z", "c2", "visit")),
        Line::Control(control(Status::Running, "2026-03-04T09:30:00Z")),
        Line::Control(control(Status::Draining, "2026-03-04T10:00:00Z")),
        Line::Event(ev("2026-03-04T10:30:00Z", "c4", "visit")),
        Line::Control(control(Status::Running, "2026-03-04T10:45:00Z")),
        Line::Event(ev("2026-03-04T11:00:00Z", "c3", "visit")),
        Line::Control(control(Status::Stopped, "2026-03-04T12:00:00Z")),
        Line::Event(ev("2026-03-04T13:00:00Z", "c5", "visit")),
    ];
    let mut out = Vec::new();
    for line in &lines {
        out.extend(match line {
            Line::Event(e) => sim.push(e).unwrap(),
            Line::Control(c) => sim.control(c).unwrap(),
        });
    }
    out.extend(sim.advance_to(t("2026-03-20T00:00:00Z")));
    assert_eq!(
        brief(&out),
        [
            "2026-03-02T09:00:00Z send email promo/a c1",
            "2026-03-04T09:30:00Z send email promo/b c1",
            "2026-03-04T11:00:00Z send email promo/a c3",
            "2026-03-04T12:00:00Z cancel email promo/a c1 stopped",
            "2026-03-04T12:00:00Z cancel email promo/b c1 stopped",
            "2026-03-04T12:00:00Z cancel email promo/a c3 stopped",
        ]
    );
    let kinds = |c: &str| -> Vec<String> {
        sim.history(c)
            .into_iter()
            .map(|l| format!("{} {}", l.kind, l.detail))
            .collect()
    };
    assert!(kinds("c2").contains(&"skipped not entered: the journey is paused".to_owned()));
    assert!(kinds("c4").contains(&"skipped not entered: the journey is draining".to_owned()));
    assert!(kinds("c5").contains(&"skipped not entered: the journey is stopped".to_owned()));
    assert!(kinds("c1")
        .iter()
        .any(|l| l.starts_with("parked the journey is paused")));
    assert!(kinds("c3").contains(&"ended the journey was stopped".to_owned()));
    // Bad control lines.
    let unknown = Control {
        journey: "nope".into(),
        status: Status::Paused,
        at: t("2026-03-21T00:00:00Z"),
    };
    assert!(matches!(
        sim.control(&unknown),
        Err(journeyd_simulator::Error::UnknownJourney { .. })
    ));
}

/// Contract v2, "Audience entry": each run enters every known customer for whom `if` holds
/// (`now` the run's time, `event` the synthetic audience event), subject to reentry and one
/// active instance; a run at T comes before an event at T; customers in id order.
#[test]
fn audience_runs_enter_known_customers_where_the_condition_holds() {
    let e = engine(&[(
        "campaign.yaml",
        r#"
journey: campaign
version: 1
entry:
  audience: { at: "2026-02-02T09:00:00Z", every: 7d }
  if: 'event.type == "audience" && event.occurred_at == now && has(profile.vip) && profile.vip == true'
  reentry: 10d
steps:
  - id: hello
    send: { channel: email, template: hello, vars: { run: string(now) } }
"#,
    )]);
    let t = |s: &str| time::parse_rfc3339(s).unwrap();
    let mut sim = Simulator::new(e);
    let mut out = Vec::new();
    for (c, vip) in [("b", true), ("a", true), ("c", false)] {
        out.extend(
            sim.push(&ev("2026-02-01T00:00:00Z", c, "profile_updated").attr("vip", vip))
                .unwrap(),
        );
    }
    // At the run's very time: the run comes first, so d is not known to it yet.
    out.extend(
        sim.push(&ev("2026-02-02T09:00:00Z", "d", "profile_updated").attr("vip", true))
            .unwrap(),
    );
    out.extend(sim.advance_to(t("2026-02-20T00:00:00Z")));
    assert_eq!(
        brief(&out),
        [
            "2026-02-02T09:00:00Z send email campaign/hello a",
            "2026-02-02T09:00:00Z send email campaign/hello b",
            // 9 Feb: d is known now; a and b are within their 10-day reentry.
            "2026-02-09T09:00:00Z send email campaign/hello d",
            // 16 Feb: a and b again (14 days on); d within its cooldown.
            "2026-02-16T09:00:00Z send email campaign/hello a",
            "2026-02-16T09:00:00Z send email campaign/hello b",
        ]
    );
    assert_eq!(
        out[0].action.vars.get("run"),
        Some(&Value::from("2026-02-02T09:00:00Z"))
    );
    // c was never reached: no journey record, no history line.
    assert!(sim.history("c").iter().all(|l| l.journey.is_none()));
}

/// Contract v2, "Erasure": every outstanding send is cancelled (reason `erased`), instances and
/// timers go, nothing of the customer is kept; a later event with the id starts a new customer.
#[test]
fn erasure_cancels_what_is_outstanding_and_forgets_the_customer() {
    let e = engine(&[(
        "welcome.yaml",
        r#"
journey: welcome
version: 1
entry: { event: signup }
steps:
  - id: hello
    send: { channel: email, template: hello }
  - id: pause
    wait: 2d
  - id: nudge
    send: { channel: push, template: nudge }
"#,
    )]);
    let (sim, out) = run_sim(
        &e,
        &[
            ev("2026-05-01T09:00:00Z", "a", "profile_updated").attr("name", "Ann"),
            ev("2026-05-01T10:00:00Z", "a", "signup"),
            ev("2026-05-02T10:00:00Z", "a", "erasure_requested"),
            // reentry is never, but this is a new customer.
            ev("2026-05-03T10:00:00Z", "a", "signup"),
        ],
        Some("2026-05-10T00:00:00Z"),
    );
    assert_eq!(
        brief(&out),
        [
            "2026-05-01T10:00:00Z send email welcome/hello a",
            "2026-05-02T10:00:00Z cancel email welcome/hello a erased",
            "2026-05-03T10:00:00Z send email welcome/hello a",
            "2026-05-05T10:00:00Z send push welcome/nudge a",
        ]
    );
    let state = sim.customer("a").unwrap();
    assert!(
        state.profile.is_empty(),
        "the profile went with the erasure"
    );
    let history = sim.history("a");
    assert!(
        history.iter().all(|l| l.at.as_str() >= "2026-05-03"),
        "nothing before the erasure: {history:#?}"
    );
}

/// The live counts the service keeps with each partition (and the web page draws): times each
/// step was reached, instances waiting at it now, sends by channel and suppressions by reason.
#[test]
fn live_counts_follow_the_instances_and_the_sends() {
    let j = r#"
journey: nudge
version: 1
entry: { event: visit, reentry: always }
steps:
  - id: hello
    send: { channel: email, template: hi }
  - id: pause
    wait: 1d
  - id: again
    send: { channel: email, template: again }
"#;
    let e = engine(&[("policies.yaml", POLICIES), ("nudge.yaml", j)]);
    let mut sim = Simulator::new(e.clone());
    sim.push(&consented("2026-01-05T09:00:00Z", "c1", "email"))
        .unwrap();
    sim.push(&consented("2026-01-05T09:00:00Z", "c2", "email"))
        .unwrap();
    for c in ["c1", "c2", "c3"] {
        sim.push(&ev("2026-01-05T10:00:00Z", c, "visit")).unwrap();
    }
    let step = |sim: &Simulator, s: &str| sim.counts().journeys["nudge"].steps[s].clone();
    let waiting = |sim: &Simulator, s: &str| {
        let nudge = &sim.counts().journeys["nudge"];
        nudge
            .waiting_by_step(&e, "nudge")
            .get(s)
            .copied()
            .unwrap_or(0)
    };
    let hello = step(&sim, "hello");
    assert_eq!(hello.reached, 3);
    assert_eq!(waiting(&sim, "hello"), 0);
    assert_eq!(hello.sent.get("email"), Some(&2));
    assert_eq!(hello.suppressed.get("no_consent"), Some(&1), "c3 gave none");
    assert_eq!(waiting(&sim, "pause"), 3);
    // c2 withdraws consent; a day later everyone moves on and the instances end.
    sim.push(
        &ev("2026-01-05T11:00:00Z", "c2", "consent_changed")
            .attr("channel", "email")
            .attr("granted", false),
    )
    .unwrap();
    sim.advance_to(time::parse_rfc3339("2026-01-06T12:00:00Z").unwrap());
    let pause = step(&sim, "pause");
    assert_eq!((pause.reached, waiting(&sim, "pause")), (3, 0));
    let again = step(&sim, "again");
    assert_eq!(again.sent.get("email"), Some(&1));
    assert_eq!(again.suppressed.get("no_consent"), Some(&2));
    // The waiting counts are what the states hold, step by step.
    let active: usize = sim.customers().values().map(|s| s.instances.len()).sum();
    assert_eq!((active, sim.counts().journeys["nudge"].active()), (0, 0));
    // A re-entry waits again; an erasure takes the customer's instance off the count.
    sim.push(&ev("2026-01-07T10:00:00Z", "c1", "visit"))
        .unwrap();
    sim.push(&ev("2026-01-07T10:00:00Z", "c3", "visit"))
        .unwrap();
    assert_eq!(waiting(&sim, "pause"), 2);
    sim.push(&ev("2026-01-07T11:00:00Z", "c3", "erasure_requested"))
        .unwrap();
    assert_eq!(waiting(&sim, "pause"), 1);
    let nudge = &sim.counts().journeys["nudge"];
    assert_eq!(nudge.entered, 5);
    // Entries by the day they happened on.
    let day = |t: &str| journeyd_engine::report::day_of(time::parse_rfc3339(t).unwrap());
    assert_eq!(nudge.on(day("2026-01-05T00:00:00Z")).entered, 3);
    assert_eq!(nudge.on(day("2026-01-06T00:00:00Z")).entered, 0);
    assert_eq!(nudge.on(day("2026-01-07T23:59:59Z")).entered, 2);
}
