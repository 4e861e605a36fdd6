//! The loader against the journey language contract.

use journeyd_journey::*;
use std::path::{Path, PathBuf};

const DAY: Millis = 86_400_000;

/// The example journey of the contract, as written there.
/// The contract's example, as the contract writes it.
const WINBACK: &str = include_str!("fixtures/contract_winback.yaml");

/// The example policies of the contract.
/// The contract's example, as the contract writes it.
const POLICIES: &str = include_str!("fixtures/contract_policies.yaml");

fn sources(files: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect()
}

fn load(files: &[(&str, &str)]) -> Result<Loaded, Error> {
    load_sources(&sources(files))
}

/// Loads one journey that must be valid.
fn journey(text: &str) -> Journey {
    let loaded = load(&[("j.yaml", text)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.catalog.journeys.len(), 1);
    (*loaded.catalog.journeys[0]).clone()
}

/// The lines of the diagnostics of files that must be invalid.
fn problems(files: &[(&str, &str)]) -> Vec<String> {
    match load(files) {
        Ok(_) => panic!("expected errors"),
        Err(e) => {
            let lines: Vec<String> = e.diagnostics().iter().map(ToString::to_string).collect();
            assert_eq!(e.to_string(), lines.join("\n"));
            lines
        }
    }
}

/// The diagnostics of one invalid journey file `j.yaml`.
fn errors(text: &str) -> Vec<String> {
    problems(&[("j.yaml", text)])
}

/// A journey around some steps.
fn with_steps(steps: &str) -> String {
    format!("journey: j\nversion: 1\nentry: {{event: go}}\nsteps:\n{steps}")
}

// ------------------------------------------------------------------------------------------
// The contract's examples

#[test]
fn the_contract_example_journey_compiles() {
    let j = journey(WINBACK);
    assert_eq!(j.id, "winback");
    assert_eq!(j.version, 3);
    assert_eq!(j.name.as_deref(), Some("Win back lapsed buyers"));
    assert_eq!(j.priority, 40);
    assert_eq!(j.category, Category::Marketing);
    assert_eq!(j.entry.trigger, Trigger::Event("customer_lapsed".into()));
    assert_eq!(
        j.entry.condition.as_ref().map(Expr::source),
        Some(r#"profile.ltv_segment in ["high", "medium"]"#)
    );
    assert_eq!(j.entry.reentry, Reentry::Never);
    assert_eq!(j.exit_on, ["purchase", "account_closed"]);
    assert_eq!(
        j.goal,
        Some(Goal {
            event: "purchase".into(),
            within: 30 * DAY
        })
    );
    assert_eq!(j.file, Path::new("j.yaml"));
    assert!(!j.steps_use_event);
    let ids: Vec<&str> = j.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["offer_email", "wait_click", "sms_nudge", "thanks", "done"]
    );

    let StepKind::Send(offer) = &j.steps[0].kind else {
        panic!()
    };
    assert_eq!(
        (offer.channel.as_str(), offer.template.as_str()),
        ("email", "winback_offer")
    );
    assert_eq!(offer.ttl, DEFAULT_TTL);
    assert!(offer.cancel_on.is_empty() && offer.vars.is_empty());
    assert_eq!(j.steps[0].next, Some(1));

    let StepKind::WaitFor(wait) = &j.steps[1].kind else {
        panic!()
    };
    assert_eq!(wait.events, ["email_clicked", "app_opened"]);
    assert_eq!(wait.timeout, 3 * DAY);
    assert!(wait.condition.is_none());
    assert_eq!(wait.on_event, Some(3));
    assert_eq!(wait.on_timeout, Some(2));
    assert_eq!(j.steps[1].next, Some(2));

    let StepKind::Send(sms) = &j.steps[2].kind else {
        panic!()
    };
    assert_eq!(
        (sms.channel.as_str(), sms.template.as_str()),
        ("sms", "winback_sms")
    );
    assert_eq!(sms.ttl, 2 * DAY);
    assert_eq!(sms.cancel_on, ["email_clicked", "app_opened"]);
    assert_eq!(j.steps[2].next, Some(4));

    assert_eq!(j.steps[3].next, Some(4));
    assert!(matches!(j.steps[4].kind, StepKind::Exit));
    assert_eq!(j.steps[4].next, None);
    assert_eq!(j.step_index("thanks"), Some(3));
}

#[test]
fn the_contract_example_policies_compile() {
    let loaded = load(&[("policies.yaml", POLICIES), ("winback.yaml", WINBACK)]).unwrap();
    assert!(loaded.warnings.is_empty());
    let p = &loaded.catalog.policies;
    assert_eq!(p.default_timezone, chrono_tz::Europe::London);
    assert_eq!(
        p.frequency_caps,
        [
            FrequencyCap {
                channel: Some("sms".into()),
                category: None,
                max: 1,
                per: DAY
            },
            FrequencyCap {
                channel: None,
                category: Some(Category::Marketing),
                max: 3,
                per: 7 * DAY
            },
        ]
    );
    assert_eq!(
        p.quiet_hours,
        Some(QuietHours {
            from: 21 * 60,
            to: 8 * 60,
            channels: vec!["sms".into(), "push".into()]
        })
    );
    assert_eq!(p.consent_required, ["sms", "email"]);
    assert!(loaded.catalog.journey("winback").is_some());
}

#[test]
fn defaults_apply() {
    let j = journey(
        "journey: plain\nversion: 1\nentry: {event: signup}\nsteps:\n  - id: hello\n    send: {channel: email, template: hi}\n  - id: pause\n    wait: 1d12h\n",
    );
    assert_eq!(
        (j.priority, j.category, j.name.clone()),
        (0, Category::Marketing, None)
    );
    assert_eq!(j.entry.reentry, Reentry::Never);
    assert!(j.entry.condition.is_none());
    assert!(j.exit_on.is_empty() && j.goal.is_none());
    let StepKind::Send(send) = &j.steps[0].kind else {
        panic!()
    };
    assert_eq!(send.ttl, DEFAULT_TTL);
    assert_eq!(j.steps[0].next, Some(1));
    assert!(matches!(j.steps[1].kind, StepKind::Wait(ms) if ms == 36 * 3_600_000));
    assert_eq!(j.steps[1].next, None);
    let policies = load(&[("j.yaml", WINBACK)]).unwrap().catalog.policies;
    assert_eq!(policies, Policies::default());
}

#[test]
fn inactivity_reentry_and_service_category() {
    let j = journey(
        "journey: lapse\nversion: 2\ncategory: service\nentry:\n  inactivity: {event: purchase, for: 60d}\n  reentry: 90d\nsteps:\n  - {id: bye, exit: }\n",
    );
    assert_eq!(j.category, Category::Service);
    assert_eq!(
        j.entry.trigger,
        Trigger::Inactivity {
            event: "purchase".into(),
            after: 60 * DAY
        }
    );
    assert_eq!(j.entry.reentry, Reentry::Cooldown(90 * DAY));
    assert!(matches!(j.steps[0].kind, StepKind::Exit));
    let j = journey("journey: again\nversion: 1\nentry: {event: a, reentry: always}\nsteps:\n  - {id: x, exit: {}}\n");
    assert_eq!(j.entry.reentry, Reentry::Always);
}

#[test]
fn every_step_kind_compiles() {
    let j = journey(&with_steps(
        r#"  - id: morning
    wait: {until: "09:30", days: [mon, wed, sun]}
  - id: any_day
    wait: {until: "23:59"}
  - id: pick
    branch:
      - if: 'profile.plan == "gold"'
        next: gold
      - if: 'event.attributes.amount > 10'
        next: ab
      - else: done
  - id: ab
    split:
      - {weight: 90, next: gold}
      - {weight: 10, next: done}
  - id: gold
    update: {tier: '"gold"', visits: 'profile.visits + 1'}
  - id: listen
    wait_for: {events: [click], if: 'event.channel == "email"', timeout: 2h}
    next: done
  - id: done
    exit: {}
"#,
    ));
    assert_eq!(j.steps[0].kind.keyword(), "wait",);
    let StepKind::WaitUntil(w) = j.steps[0].kind else {
        panic!()
    };
    assert_eq!(
        w,
        WaitUntil {
            minute_of_day: 570,
            days: 0b100_0101
        }
    );
    let StepKind::WaitUntil(w) = j.steps[1].kind else {
        panic!()
    };
    assert_eq!(
        w,
        WaitUntil {
            minute_of_day: 23 * 60 + 59,
            days: 0x7f
        }
    );
    let StepKind::Branch(b) = &j.steps[2].kind else {
        panic!()
    };
    let arms: Vec<(&str, Target)> = b.arms.iter().map(|(e, t)| (e.source(), *t)).collect();
    assert_eq!(
        arms,
        [
            (r#"profile.plan == "gold""#, Some(4)),
            ("event.attributes.amount > 10", Some(3))
        ]
    );
    assert_eq!(b.otherwise, Some(6));
    let StepKind::Split(arms) = &j.steps[3].kind else {
        panic!()
    };
    assert_eq!(
        arms,
        &[
            SplitArm {
                weight: 90,
                next: Some(4),
                control: false
            },
            SplitArm {
                weight: 10,
                next: Some(6),
                control: false
            }
        ]
    );
    let StepKind::Update(attrs) = &j.steps[4].kind else {
        panic!()
    };
    let attrs: Vec<(&str, &str)> = attrs
        .iter()
        .map(|(a, e)| (a.as_str(), e.source()))
        .collect();
    assert_eq!(
        attrs,
        [("tier", r#""gold""#), ("visits", "profile.visits + 1")]
    );
    let StepKind::WaitFor(w) = &j.steps[5].kind else {
        panic!()
    };
    assert_eq!(
        (w.on_event, w.on_timeout, w.timeout),
        (Some(6), Some(6), 2 * 3_600_000)
    );
    assert_eq!(
        w.condition.as_ref().map(Expr::source),
        Some(r#"event.channel == "email""#)
    );
    assert!(j.steps_use_event);
}

#[test]
fn vars_take_numbers_and_macros_bind_their_variables() {
    let j = journey(&with_steps(
        r#"  - id: hi
    send:
      channel: email
      template: hi
      vars:
        count: 3
        flag: true
        name: 'profile.first_name'
        big: '[1, 2].exists(x, x > profile.n) && profile.tags.all(t, t != "x") && type(profile.n) == int'
        sum: 'math.greatest(1, 2)'
"#,
    ));
    let StepKind::Send(send) = &j.steps[0].kind else {
        panic!()
    };
    let vars: Vec<(&str, &str)> = send
        .vars
        .iter()
        .map(|(n, e)| (n.as_str(), e.source()))
        .collect();
    assert_eq!(vars[0], ("count", "3"));
    assert_eq!(vars[1], ("flag", "true"));
    assert_eq!(vars.len(), 5);
    assert!(!j.steps_use_event);
}

#[test]
fn the_catalog_is_in_arbitration_order() {
    let j = |id: &str, priority: i64| {
        format!("journey: {id}\nversion: 1\npriority: {priority}\nentry: {{event: go}}\nsteps:\n  - {{id: x, exit: {{}}}}\n")
    };
    let (a, b, c, d) = (j("alpha", 5), j("beta", 50), j("gamma", 5), j("delta", -1));
    let loaded = load(&[
        ("a.yaml", &a),
        ("b.yaml", &b),
        ("c.yaml", &c),
        ("d.yaml", &d),
    ])
    .unwrap();
    let ids: Vec<&str> = loaded
        .catalog
        .journeys
        .iter()
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(ids, ["beta", "alpha", "gamma", "delta"]);
}

// ------------------------------------------------------------------------------------------
// Rules, one by one

#[test]
fn version_must_be_a_positive_whole_number() {
    let text = "journey: j\nversion: abc\nentry: {event: go}\nsteps:\n  - {id: x, exit: {}}\n";
    assert_eq!(
        errors(text),
        ["j.yaml:2:10: error: version must be a positive whole number, found `abc`"]
    );
    for bad in ["0", "-1", "1.5", "'3'", "99999999999"] {
        let lines = errors(&text.replace("abc", bad));
        assert!(
            lines[0].contains("version must be a positive whole number"),
            "{lines:?}"
        );
    }
    let lines = errors("journey: j\nentry: {event: go}\nsteps:\n  - {id: x, exit: {}}\n");
    assert_eq!(lines, ["j.yaml:1:1: error: version is required"]);
}

#[test]
fn top_level_types_are_checked() {
    let lines = errors(
        "journey: Win-Back\nversion: 1\nname: [a]\npriority: high\ncategory: promo\nentry: {event: go}\nsteps: {}\n",
    );
    assert_eq!(
        lines,
        [
            "j.yaml:1:10: error: journey must be the journey id: lowercase letters, digits and _, starting with a letter ([a-z][a-z0-9_]*), found `Win-Back`",
            "j.yaml:3:7: error: name must be text, found a list",
            "j.yaml:4:11: error: priority must be a whole number, found `high`",
            "j.yaml:5:11: error: category must be marketing or service, found `promo`",
            "j.yaml:7:8: error: steps must be a list of steps, found a mapping",
        ]
    );
}

#[test]
fn entry_needs_exactly_one_trigger() {
    let both = "journey: j\nversion: 1\nentry:\n  event: a\n  inactivity: {event: b, for: 3d}\nsteps:\n  - {id: x, exit: {}}\n";
    assert_eq!(
        errors(both),
        ["j.yaml:4:3: error: entry: give exactly one of \"event\", \"inactivity\" or \"audience\""]
    );
    let none = "journey: j\nversion: 1\nentry: {if: 'true'}\nsteps:\n  - {id: x, exit: {}}\n";
    assert_eq!(
        errors(none),
        ["j.yaml:3:8: error: entry: give exactly one of \"event\", \"inactivity\" or \"audience\""]
    );
    let inactivity = "journey: j\nversion: 1\nentry:\n  inactivity: {event: b}\n  reentry: sometimes\nsteps:\n  - {id: x, exit: {}}\n";
    assert_eq!(
        errors(inactivity),
        [
            "j.yaml:4:15: error: entry: inactivity.for is required",
            "j.yaml:5:12: error: entry: reentry must be never, always or a cooldown duration such as 90d, found `sometimes`",
        ]
    );
    let missing = "journey: j\nversion: 1\nsteps:\n  - {id: x, exit: {}}\n";
    assert_eq!(errors(missing), ["j.yaml:1:1: error: entry is required"]);
}

#[test]
fn exit_and_goal_are_checked() {
    let lines = errors(
        "journey: j\nversion: 1\nentry: {event: go}\nexit: {on: purchase}\ngoal: {event: buy}\nsteps:\n  - {id: x, exit: {}}\n",
    );
    assert_eq!(
        lines,
        [
            "j.yaml:4:12: error: exit: on must be a list of event types, such as [a, b], found `purchase`",
            "j.yaml:5:7: error: goal: within is required",
        ]
    );
}

#[test]
fn required_step_fields_are_reported_at_their_mapping() {
    let lines = errors(&with_steps(
        "  - id: wait_click\n    wait_for:\n      events: [email_clicked]\n",
    ));
    assert_eq!(
        lines,
        ["j.yaml:7:7: error: step \"wait_click\": wait_for.timeout is required"]
    );
    let lines = errors(&with_steps(
        "  - id: w\n    wait_for: {events: [], timeout: 1d}\n",
    ));
    assert_eq!(
        lines,
        ["j.yaml:6:24: error: step \"w\": wait_for.events must list at least one event type"]
    );
    let lines = errors(&with_steps("  - send: {channel: sms}\n"));
    assert_eq!(
        lines,
        [
            "j.yaml:5:5: error: step #1: id is required",
            "j.yaml:5:11: error: step #1: send.template is required",
        ]
    );
}

#[test]
fn unknown_fields_are_errors_everywhere() {
    let lines = errors(
        r#"journey: j
version: 1
colour: blue
entry:
  event: go
  when: 'true'
exit: {on: [a], off: [b]}
goal: {event: a, within: 1d, value: 3}
steps:
  - id: sms_nudge
    send: {chanel: sms, channel: sms, template: t}
    nxt: b
  - id: b
    wait: {until: "10:00", day: [mon]}
  - id: c
    wait_for: {events: [a], timeout: 1d, on_timout: b}
  - id: d
    branch:
      - {if: 'true', next: b, weight: 2}
      - else: b
  - id: e
    split: [{weight: 1, next: b, if: x}]
  - id: f
    exit: {now: true}
"#,
    );
    assert_eq!(
        lines,
        [
            "j.yaml:3:1: error: unknown field \"colour\" (expected one of: journey, version, name, priority, category, entry, exit, goal, steps)",
            "j.yaml:6:3: error: entry: unknown field \"when\" (expected one of: event, inactivity, audience, if, reentry)",
            "j.yaml:7:17: error: exit: unknown field \"off\" (expected one of: on)",
            "j.yaml:8:30: error: goal: unknown field \"value\" (expected one of: event, within)",
            "j.yaml:11:12: error: step \"sms_nudge\": unknown field \"chanel\" (expected one of: channel, template, ttl, cancel_on, vars)",
            "j.yaml:12:5: error: step \"sms_nudge\": unknown field \"nxt\" (expected one of: id, send, wait, wait_for, branch, decide, split, update, exit, next)",
            "j.yaml:14:28: error: step \"b\": unknown field \"day\" (expected one of: until, days)",
            "j.yaml:16:42: error: step \"c\": unknown field \"on_timout\" (expected one of: events, if, timeout, on_event, on_timeout)",
            "j.yaml:19:31: error: step \"d\": unknown field \"weight\" (expected one of: if, next, else)",
            "j.yaml:22:34: error: step \"e\": unknown field \"if\" (expected one of: weight, next, control)",
            "j.yaml:24:12: error: step \"f\": unknown field \"now\" (exit takes no fields)",
        ]
    );
    let lines = errors(&with_steps(
        "  - id: a\n    wait: 1d\n    next: a\n    send: {channel: sms, template: t}\n",
    ));
    assert_eq!(
        lines,
        ["j.yaml:8:5: error: step \"a\": give only one of send, wait, wait_for, branch, decide, split, update, exit: found \"wait\" and \"send\""]
    );
    let lines = errors(&with_steps("  - id: a\n    next: b\n"));
    assert_eq!(
        lines,
        [
            "j.yaml:5:5: error: step \"a\": give exactly one of send, wait, wait_for, branch, decide, split, update, exit",
            "j.yaml:6:11: error: step \"a\": next: unknown step \"b\"",
        ]
    );
}

#[test]
fn unknown_policy_fields_and_bad_policies() {
    let lines = problems(&[(
        "p.yaml",
        r#"policies:
  default_timezone: Europe/Londn
  quiet: true
  frequency_caps:
    - { channel: sms, max: 0, per: 1d }
    - { channel: "*", category: promo, max: 3, per: 7x, window: 1 }
  quiet_hours: {from: "21:00", to: "21:00", channel: [sms]}
  consent: {require: [sms]}
"#,
    )]);
    assert_eq!(
        lines,
        [
            "p.yaml:2:21: error: policies: default_timezone must be an IANA time zone such as Europe/London, found `Europe/Londn`",
            "p.yaml:3:3: error: policies: unknown field \"quiet\" (expected one of: default_timezone, frequency_caps, quiet_hours, consent)",
            "p.yaml:5:28: error: policies: frequency_caps[0].max must be a positive whole number, found `0`",
            "p.yaml:6:33: error: policies: frequency_caps[1].category must be marketing or service, found `promo`",
            "p.yaml:6:53: error: policies: frequency_caps[1].per: `7x` is not a duration: `x` is not a unit (write a whole number and a unit s, m, h, d or w, such as 3d or 1d12h)",
            "p.yaml:6:57: error: policies: unknown field \"window\" (expected one of: channel, category, max, per)",
            "p.yaml:7:16: error: policies: quiet_hours: from and to must differ",
            "p.yaml:7:45: error: policies: unknown field \"channel\" (expected one of: from, to, channels)",
            "p.yaml:8:12: error: policies: consent.required is required",
            "p.yaml:8:13: error: policies: unknown field \"require\" (expected one of: required)",
        ]
    );
    let lines = problems(&[("p.yaml", "policies: {}\nextra: 1\n")]);
    assert_eq!(
        lines,
        ["p.yaml:2:1: error: unknown field \"extra\" (expected one of: policies)"]
    );
    let lines = problems(&[(
        "p.yaml",
        "policies:\n  quiet_hours: {from: \"24:00\", to: 8}\n",
    )]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0]
        .starts_with("p.yaml:2:23: error: policies: quiet_hours.from must be a time of day"));
    // An empty policies file is the defaults.
    let loaded = load(&[("p.yaml", "policies:\n")]).unwrap();
    assert_eq!(loaded.catalog.policies, Policies::default());
}

#[test]
fn targets_must_name_steps() {
    let lines = errors(&with_steps(
        r#"  - id: x
    send: {channel: sms, template: t}
    next: foo
  - id: w
    wait_for: {events: [a], timeout: 1d, on_event: nope, on_timeout: x}
  - id: b
    branch:
      - {if: 'true', next: missing}
      - else: gone
  - id: s
    split: [{weight: 1, next: nowhere}]
"#,
    ));
    assert_eq!(
        lines,
        [
            "j.yaml:7:11: error: step \"x\": next: unknown step \"foo\"",
            "j.yaml:9:52: error: step \"w\": wait_for.on_event: unknown step \"nope\"",
            "j.yaml:12:28: error: step \"b\": branch[0].next: unknown step \"missing\"",
            "j.yaml:13:15: error: step \"b\": branch[1].else: unknown step \"gone\"",
            "j.yaml:15:31: error: step \"s\": split[0].next: unknown step \"nowhere\"",
        ]
    );
}

#[test]
fn next_is_refused_where_the_step_chooses() {
    let lines = errors(&with_steps(
        r#"  - id: b
    branch: [{else: s}]
    next: s
  - id: s
    split: [{weight: 1, next: e}]
    next: e
  - id: e
    exit: {}
    next: b
"#,
    ));
    assert_eq!(
        lines,
        [
            "j.yaml:7:5: error: step \"b\": next is not allowed on a branch step (it chooses its own successor)",
            "j.yaml:10:5: error: step \"s\": next is not allowed on a split step (it chooses its own successor)",
            "j.yaml:13:5: error: step \"e\": next is not allowed on an exit step (it chooses its own successor)",
        ]
    );
}

#[test]
fn branch_needs_else_last_and_split_needs_arms() {
    let lines = errors(&with_steps(
        r#"  - id: a
    branch:
      - else: c
      - {if: 'true', next: c}
  - id: b
    branch: []
  - id: c
    split: []
  - id: d
    update: {}
  - id: e
    branch:
      - {if: 'true'}
      - {else: a, next: a}
"#,
    ));
    assert_eq!(
        lines,
        [
            "j.yaml:7:9: error: step \"a\": branch[0]: else must be the last arm",
            "j.yaml:8:9: error: step \"a\": branch: the last arm must be {else: STEP} (it says where to go when no condition holds)",
            "j.yaml:10:13: error: step \"b\": branch must be a list of {if: CONDITION, next: STEP} arms ending with {else: STEP}, found a list",
            "j.yaml:12:12: error: step \"c\": split must be a list of {weight: N, next: STEP, control?: true} arms, found a list",
            "j.yaml:14:13: error: step \"d\": update must be a mapping of profile attributes to CEL expressions, found a mapping",
            "j.yaml:17:9: error: step \"e\": branch[0].next is required",
            "j.yaml:18:9: error: step \"e\": branch[1]: an arm is either {if, next} or {else} alone",
        ]
    );
}

#[test]
fn ids_are_checked_and_unique() {
    let lines = errors(&with_steps(
        "  - id: Hello\n    wait: 1d\n  - id: a\n    wait: 1d\n  - id: a\n    wait: 2d\n",
    ));
    assert_eq!(
        lines,
        [
            "j.yaml:5:9: error: step #1: id must be lowercase letters, digits and _, starting with a letter ([a-z][a-z0-9_]*), found `Hello`",
            "j.yaml:9:9: error: step \"a\": the id is already used by the step on line 7",
        ]
    );
}

#[test]
fn journey_ids_are_unique_across_the_folder() {
    let lines = problems(&[("a.yaml", WINBACK), ("b.yaml", WINBACK)]);
    assert_eq!(
        lines,
        ["b.yaml:1:10: error: journey \"winback\" is already defined in a.yaml"]
    );
}

#[test]
fn a_second_policies_file_is_refused() {
    let lines = problems(&[("a.yaml", POLICIES), ("b.yml", "policies: {}\n")]);
    assert_eq!(
        lines,
        ["b.yml:1:1: error: policies are already defined in a.yaml (keep a single policies file)"]
    );
}

#[test]
fn files_must_be_journeys_or_policies() {
    assert_eq!(
        problems(&[("x.yaml", "jorney: a\n")]),
        ["x.yaml:1:1: error: expected a top-level `journey:` key (a journey) or `policies:` key (the contact policies), found `jorney`"]
    );
    assert_eq!(
        problems(&[("x.yaml", "# nothing\n")]),
        ["x.yaml:1:1: error: the file is empty: a journey file starts with `journey: ID`, the policies file with `policies:`"]
    );
    assert_eq!(problems(&[("x.yaml", "- a\n")]).len(), 1);
}

#[test]
fn durations_and_times_are_checked() {
    let lines = errors(&with_steps(
        r#"  - id: a
    wait: 3
  - id: b
    wait: {until: "25:00", days: [mon, someday]}
  - id: c
    send: {channel: sms, template: t, ttl: 0d}
  - id: d
    wait: {until: "9:5", days: []}
  - id: e
    wait: [1d]
"#,
    ));
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(
        lines[0],
        "j.yaml:6:11: error: step \"a\": wait: `3` is not a duration: the last number has no unit (write a whole number and a unit s, m, h, d or w, such as 3d or 1d12h)"
    );
    assert_eq!(
        lines[1],
        "j.yaml:8:19: error: step \"b\": wait.until must be a time of day \"HH:MM\" from 00:00 to 23:59, found `\"25:00\"`"
    );
    assert_eq!(
        lines[2],
        "j.yaml:8:40: error: step \"b\": wait.days must be a list of days among mon, tue, wed, thu, fri, sat, sun, found `someday`"
    );
    assert!(
        lines[3].starts_with("j.yaml:10:44: error: step \"c\": send.ttl: `0d` is not a duration")
    );
    assert!(
        lines[4].starts_with("j.yaml:12:19: error: step \"d\": wait.until must be a time of day")
    );
    assert!(
        lines[5].starts_with("j.yaml:12:32: error: step \"d\": wait.days must be a list of days")
    );
    assert!(
        lines[6].starts_with("j.yaml:14:11: error: step \"e\": wait must be a duration such as 3d")
    );
}

#[test]
fn expressions_must_parse_and_see_only_event_and_profile() {
    let lines = errors(
        r#"journey: j
version: 1
entry: {event: go, if: 'profile.a =='}
steps:
  - id: x
    send:
      channel: sms
      template: t
      vars:
        greeting: Hello
        both: Hello there
        fine: '"Hello"'
  - id: y
    update: {seen: 'today'}
  - id: z
    branch:
      - {if: 'customer.vip', next: x}
      - else: x
"#,
    );
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[0].starts_with("j.yaml:3:24: error: entry: if: not a valid CEL expression: "));
    assert_eq!(
        lines[1],
        "j.yaml:10:19: error: step \"x\": vars.greeting: unknown variable \"Hello\" (conditions see only event, profile and now; write a string as '\"Hello\"')"
    );
    assert!(lines[2]
        .starts_with("j.yaml:11:15: error: step \"x\": vars.both: not a valid CEL expression: "));
    assert!(lines[2].ends_with("(to write a string, quote it inside the YAML: '\"Hello there\"')"));
    assert!(lines[3]
        .starts_with("j.yaml:14:20: error: step \"y\": update.seen: unknown variable \"today\""));
    assert!(lines[4].starts_with(
        "j.yaml:17:14: error: step \"z\": branch[0].if: unknown variable \"customer\""
    ));
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let lines = errors(
        r#"journey: j
version: zero
entry: {event: go, reentry: sometimes}
steps:
  - id: a
    send: {channel: sms}
  - id: b
    wait_for: {events: [x]}
    next: nowhere
  - id: c
    split: [{weight: -1, next: a}]
"#,
    );
    assert_eq!(
        lines,
        [
            "j.yaml:2:10: error: version must be a positive whole number, found `zero`",
            "j.yaml:3:29: error: entry: reentry must be never, always or a cooldown duration such as 90d, found `sometimes`",
            "j.yaml:6:11: error: step \"a\": send.template is required",
            "j.yaml:8:15: error: step \"b\": wait_for.timeout is required",
            "j.yaml:9:11: error: step \"b\": next: unknown step \"nowhere\"",
            "j.yaml:11:22: error: step \"c\": split[0].weight must be a positive whole number, found `-1`",
        ]
    );
    // And across files, sorted by file.
    let lines = problems(&[("b.yaml", "nope: 1\n"), ("a.yaml", "journey: a\n")]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("a.yaml:1:1: error: version is required"));
    assert!(lines[3].starts_with("b.yaml:1:1: error: expected a top-level"));
}

#[test]
fn duplicate_keys_are_errors() {
    let lines = errors(
        "journey: j\nversion: 1\nentry: {event: go}\nversion: 2\nsteps:\n  - {id: a, send: {channel: sms, template: t, channel: email}}\n",
    );
    assert_eq!(
        lines,
        [
            "j.yaml:4:1: error: duplicate key \"version\" (first given on line 2)",
            "j.yaml:6:47: error: duplicate key \"channel\" (first given on line 6)",
        ]
    );
}

#[test]
fn yaml_syntax_errors_have_their_position() {
    let lines = errors("journey: j\nversion: 1\nentry: {event: go\nsteps: []\n");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("j.yaml:4:"), "{lines:?}");
    assert!(lines[0].contains("error: YAML syntax error: "), "{lines:?}");
    let lines = errors("journey: j\nversion: 1\n  bad: x\n");
    assert_eq!(
        lines,
        ["j.yaml:3:6: error: YAML syntax error: mapping values are not allowed in this context"]
    );
    let lines = errors("journey: j\n---\njourney: k\n");
    assert_eq!(
        lines,
        ["j.yaml:2:1: error: a file holds one YAML document only (remove the second `---`)"]
    );
    let lines =
        errors("journey: !!str j\nversion: 1\nentry: {event: go}\nsteps: [{id: a, exit: {}}]\n");
    assert_eq!(
        lines,
        ["j.yaml:1:10: error: YAML tags such as `!!str` are not supported (remove the tag)"]
    );
}

#[test]
fn aliases_are_expanded() {
    let j = journey(&with_steps(
        "  - id: a\n    send: {channel: sms, template: t, cancel_on: &stop [click, open]}\n  - id: b\n    wait_for: {events: *stop, timeout: 1d}\n",
    ));
    let StepKind::WaitFor(w) = &j.steps[1].kind else {
        panic!()
    };
    assert_eq!(w.events, ["click", "open"]);
}

#[test]
fn a_loop_must_wait() {
    let lines = errors(&with_steps(
        r#"  - id: start
    send: {channel: sms, template: t}
  - id: count
    update: {n: 'profile.n + 1'}
  - id: again
    branch:
      - {if: 'profile.n < 3', next: start}
      - else: done
  - id: done
    exit: {}
"#,
    ));
    assert_eq!(
        lines,
        ["j.yaml:5:5: error: step \"start\": this loop never waits: start -> count -> again -> start (a loop must pass through a wait or wait_for step)"]
    );
    let lines = errors(&with_steps(
        "  - id: me\n    send: {channel: sms, template: t}\n    next: me\n",
    ));
    assert_eq!(
        lines,
        ["j.yaml:5:5: error: step \"me\": this loop never waits: me -> me (a loop must pass through a wait or wait_for step)"]
    );
    // Through a wait: accepted.
    let j = journey(&with_steps(
        r#"  - id: start
    send: {channel: sms, template: t}
  - id: pause
    wait: 1d
  - id: again
    branch:
      - {if: 'profile.n < 3', next: start}
      - else: done
  - id: done
    exit: {}
"#,
    ));
    let StepKind::Branch(b) = &j.steps[2].kind else {
        panic!()
    };
    assert_eq!(b.arms[0].1, Some(0));
    // Through a wait_for's timeout: accepted too.
    journey(&with_steps(
        "  - id: ask\n    send: {channel: sms, template: t}\n  - id: listen\n    wait_for: {events: [reply], timeout: 1d, on_timeout: ask}\n",
    ));
}

#[test]
fn unreachable_steps_are_warnings() {
    let loaded = load(&[(
        "j.yaml",
        &with_steps(
            "  - id: a\n    send: {channel: sms, template: t}\n    next: c\n  - id: b\n    wait: 1d\n  - id: c\n    exit: {}\n",
        ),
    )])
    .unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["j.yaml:8:5: warning: step \"b\": no step leads here, so it never runs"]
    );
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    // With an error in the folder, warnings come along, in order.
    let lines = problems(&[
        ("a.yaml", "nope: 1\n"),
        (
            "j.yaml",
            &with_steps("  - id: a\n    exit: {}\n  - id: b\n    exit: {}\n"),
        ),
    ]);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        "j.yaml:7:5: warning: step \"b\": no step leads here, so it never runs"
    );
}

#[test]
fn the_digest_follows_meaning_not_formatting() {
    let base = journey(WINBACK).digest;
    let reformatted = r#"# The winback journey, reformatted.
name: "Win back lapsed buyers"
journey: winback
priority: 40
version: 3
category: marketing
goal: {within: 30d, event: purchase}
exit: {on: [purchase, account_closed]}
entry:
  reentry: never
  if: 'profile.ltv_segment in ["high", "medium"]'
  event: customer_lapsed
steps:
  - send: {template: winback_offer, channel: email}
    id: offer_email
  - id: wait_click
    wait_for: {on_timeout: sms_nudge, on_event: thanks, timeout: 3d, events: [email_clicked, app_opened]}
  - id: sms_nudge
    next: done
    send:
      channel: sms
      template: winback_sms
      ttl: 2d
      cancel_on:
        - email_clicked
        - app_opened
  - id: thanks
    send: { channel: email, template: winback_thanks }
  - id: done
    exit: {}
"#;
    assert_eq!(journey(reformatted).digest, base);
    assert_ne!(journey(&WINBACK.replace("ttl: 2d", "ttl: 3d")).digest, base);
    assert_ne!(
        journey(&WINBACK.replace("version: 3 ", "version: 4 ")).digest,
        base
    );
    assert_ne!(
        journey(&WINBACK.replace("[email_clicked, app_opened]", "[app_opened, email_clicked]"))
            .digest,
        base
    );
}

#[test]
fn load_dir_reads_yaml_files_directly_in_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("winback.yaml"), WINBACK).unwrap();
    std::fs::write(dir.path().join("policies.yml"), POLICIES).unwrap();
    std::fs::write(dir.path().join("README.md"), "not yaml: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "journey: x").unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests").join("t.yaml"), "anything: [").unwrap();
    std::fs::create_dir(dir.path().join("old.yaml")).unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.catalog.journeys.len(), 1);
    assert_eq!(
        loaded.catalog.journeys[0].file,
        dir.path().join("winback.yaml")
    );
    assert_eq!(loaded.catalog.policies.consent_required, ["sms", "email"]);

    std::fs::write(dir.path().join("broken.yaml"), "journey: b\n").unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}:1:1: error: version is required",
            dir.path().join("broken.yaml").display()
        )),
        "{text}"
    );

    let empty = tempfile::tempdir().unwrap();
    let loaded = load_dir(empty.path()).unwrap();
    assert!(loaded.catalog.journeys.is_empty() && loaded.warnings.is_empty());
    assert_eq!(loaded.catalog.policies, Policies::default());

    let missing = empty.path().join("nope");
    assert!(matches!(load_dir(&missing), Err(Error::Io { .. })));
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = load(&[("j.yaml", &text)]);
        }

        #[test]
        fn yamlish_text_never_panics(text in "[a-z_:\\-\\[\\]{}, \n'\"&*!#|>0-9]{0,300}") {
            let _ = load(&[("j.yaml", &text)]);
        }

        #[test]
        fn damaged_examples_never_panic(at in 0usize..1400, len in 0usize..40, junk in "[ \n:\\-\\[\\]{}a-z0-9]{0,5}") {
            for base in [WINBACK, POLICIES] {
                let at = at.min(base.len());
                let end = (at + len).min(base.len());
                let text = format!("{}{}{}", &base[..at], junk, &base[end..]);
                let _ = load(&[("j.yaml", &text)]);
            }
        }

        #[test]
        fn arbitrary_conditions_never_panic(cond in "\\PC{0,60}") {
            let text = format!("journey: j\nversion: 1\nentry:\n  event: go\n  if: {cond:?}\nsteps:\n  - {{id: a, exit: {{}}}}\n");
            let _ = load(&[("j.yaml", &text)]);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Date waits (contract v2)

#[test]
fn a_date_wait_compiles_with_its_offset_time_and_way_past() {
    let j = journey(&with_steps(
        r#"  - id: before
    wait: { date: profile.renewal_date, offset: -7, at: "10:00", on_past: late }
  - id: mail
    send: { channel: email, template: t }
  - id: late
    send: { channel: email, template: late }
  - id: plain
    wait: { date: profile.d, at: "08:30" }
"#,
    ));
    assert_eq!(j.steps[0].kind.keyword(), "wait");
    let StepKind::WaitDate(w) = &j.steps[0].kind else {
        panic!("{:?}", j.steps[0].kind)
    };
    assert_eq!(w.date.source(), "profile.renewal_date");
    assert_eq!(
        (w.offset_days, w.minute_of_day, w.on_past),
        (-7, 600, Some(2))
    );
    assert_eq!(j.steps[0].next, Some(1));
    let StepKind::WaitDate(w) = &j.steps[3].kind else {
        panic!()
    };
    assert_eq!((w.offset_days, w.minute_of_day, w.on_past), (0, 510, None));
    assert!(!j.steps[0].kind.waits(), "it need not wait");
}

#[test]
fn a_bad_date_wait_is_an_error_at_its_place() {
    let e = errors(&with_steps(
        r#"  - id: a
    wait: { date: profile.d, at: "25:00" }
  - id: b
    wait: { date: profile.d, offset: 1.5, at: "10:00" }
  - id: c
    wait: { date: profile.d, at: "10:00", on_past: nowhere }
  - id: d
    wait: { date: profile.d, until: "10:00" }
  - id: e
    wait: { date: "profile.(", at: "10:00" }
  - id: f
    wait: { date: profile.d }
  - id: g
    wait: { date: profile.d, at: "10:00", later: 1 }
"#,
    ));
    let want = [
        "j.yaml:6:34: error: step \"a\": wait.at must be a time of day \"HH:MM\" from 00:00 to 23:59, found `\"25:00\"`",
        "j.yaml:8:38: error: step \"b\": wait.offset must be a whole number of days such as -7, found `1.5`",
        "j.yaml:10:52: error: step \"c\": wait.on_past: unknown step \"nowhere\"",
        "j.yaml:12:30: error: step \"d\": wait: give either until (a time of day) or date (a date in the profile), not both",
        "j.yaml:14:19: error: step \"e\": wait.date: not a valid CEL expression",
        "j.yaml:16:11: error: step \"f\": wait.at is required",
        "j.yaml:18:43: error: step \"g\": unknown field \"later\" (expected one of: date, offset, at, on_past)",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, want) in e.iter().zip(want) {
        assert!(
            got.starts_with(want),
            "{got}\n  does not start with\n{want}"
        );
    }
}

#[test]
fn a_loop_back_through_a_date_wait_that_passed_never_waits() {
    // After waiting, a date wait may lead back round (a yearly reminder); its way on at once
    // (the date has passed) may not.
    journey(&with_steps(
        r#"  - id: yearly
    wait: { date: profile.d, at: "10:00", on_past: stop }
  - id: mail
    send: { channel: email, template: t }
    next: yearly
  - id: stop
    exit: {}
"#,
    ));
    let e = errors(&with_steps(
        r#"  - id: yearly
    wait: { date: profile.d, at: "10:00", on_past: mail }
  - id: mail
    send: { channel: email, template: t }
    next: yearly
"#,
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("this loop never waits: yearly -> mail -> yearly"),
        "{e:?}"
    );
}

#[test]
fn a_function_cel_does_not_have_is_refused_where_it_is_called() {
    let e = errors(&with_steps(
        r#"  - id: a
    send:
      channel: email
      template: t
      vars:
        initial: profile.name.substring(0, 1)
        fine: 'size(profile.name) > 0 && profile.name.startsWith("A") && math.greatest(1, 2) == 2'
        also: '[1, 2].exists(x, x > 1) && has(profile.x) && string(now) != "" && duration("1h").getHours() == 1'
        odd: frobnicate(1)
"#,
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(
            "j.yaml:10:18: error: step \"a\": vars.initial: unknown function \"substring\""
        ),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(
            "j.yaml:13:14: error: step \"a\": vars.odd: unknown function \"frobnicate\""
        ),
        "{e:?}"
    );
}

// ------------------------------------------------------------------------------------------
// decide (contract v2)

#[test]
fn a_decide_step_compiles_its_options_and_else() {
    let j = journey(&with_steps(
        r#"  - id: best
    decide:
      - { if: 'profile.ok == true', score: 'profile.p * 900.0', next: a }
      - { score: '5.0', next: b }
      - { if: 'has(profile.x)', next: b }
      - { else: c }
  - id: a
    send: { channel: email, template: a }
  - id: b
    send: { channel: email, template: b }
  - id: c
    exit: {}
"#,
    ));
    assert_eq!(j.steps[0].kind.keyword(), "decide");
    let StepKind::Decide(d) = &j.steps[0].kind else {
        panic!()
    };
    let options: Vec<(Option<&str>, Option<&str>, Target)> = d
        .options
        .iter()
        .map(|o| {
            (
                o.condition.as_ref().map(Expr::source),
                o.score.as_ref().map(Expr::source),
                o.next,
            )
        })
        .collect();
    assert_eq!(
        options,
        [
            (
                Some("profile.ok == true"),
                Some("profile.p * 900.0"),
                Some(1)
            ),
            (None, Some("5.0"), Some(2)),
            (Some("has(profile.x)"), None, Some(2)),
        ]
    );
    assert_eq!(d.otherwise, Some(3));
}

#[test]
fn a_bad_decide_step_is_an_error_at_its_place() {
    let e = errors(&with_steps(
        r#"  - id: a
    decide:
      - { else: b }
      - { score: '1.0', next: b }
  - id: b
    decide:
      - { score: 'profile.(', next: c }
      - { if: 'profile.x', next: nowhere }
      - { else: c }
  - id: c
    decide:
      - { else: c }
  - id: d
    decide:
      - { score: '1.0', next: c }
    next: c
"#,
    ));
    let want = [
        "j.yaml:7:9: error: step \"a\": decide[0]: else must be the last option",
        "j.yaml:8:9: error: step \"a\": decide: the last option must be {else: STEP}",
        "j.yaml:11:18: error: step \"b\": decide[0].score: not a valid CEL expression",
        "j.yaml:12:34: error: step \"b\": decide[1].next: unknown step \"nowhere\"",
        "j.yaml:16:7: error: step \"c\": decide: give at least one option before else",
        "j.yaml:19:9: error: step \"d\": decide: the last option must be {else: STEP}",
        "j.yaml:20:5: error: step \"d\": next is not allowed on a decide step",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    let mut e = e;
    e.sort();
    let mut want = want.to_vec();
    want.sort();
    for (got, want) in e.iter().zip(want) {
        assert!(
            got.starts_with(want),
            "{got}\n  does not start with\n{want}"
        );
    }
}

#[test]
fn a_split_has_at_most_one_control_arm() {
    let j = journey(&with_steps(
        r#"  - id: t
    split:
      - { weight: 9, next: a }
      - { weight: 1, next: b, control: true }
  - id: a
    exit: {}
  - id: b
    exit: {}
"#,
    ));
    let StepKind::Split(arms) = &j.steps[0].kind else {
        panic!()
    };
    assert_eq!(
        arms.iter().map(|a| a.control).collect::<Vec<_>>(),
        [false, true]
    );
    let e = errors(&with_steps(
        r#"  - id: t
    split:
      - { weight: 8, next: a, control: true }
      - { weight: 1, next: b, control: true }
      - { weight: 1, next: b, control: maybe }
  - id: a
    exit: {}
  - id: b
    exit: {}
"#,
    ));
    assert_eq!(
        e,
        [
            "j.yaml:8:9: error: step \"t\": split[1]: a split has at most one control arm (split[0] is one already)",
            "j.yaml:9:40: error: step \"t\": split[2].control must be true or false, found `maybe`",
        ]
    );
}

#[test]
fn an_audience_entry_compiles_and_its_mistakes_are_placed() {
    let j = journey(
        "journey: j\nversion: 1\nentry:\n  audience: { at: \"2026-02-02T09:00:00Z\", every: 7d }\n  if: 'now > timestamp(\"2026-01-01T00:00:00Z\")'\nsteps:\n  - id: a\n    send: { channel: email, template: t }\n",
    );
    assert_eq!(
        j.entry.trigger,
        Trigger::Audience {
            at: 1_770_022_800_000,
            every: Some(7 * DAY)
        }
    );
    let e = errors(
        "journey: j\nversion: 1\nentry:\n  event: go\n  audience: { at: \"2026-02-02T09:00:00Z\" }\nsteps:\n  - id: a\n    exit: {}\n",
    );
    assert_eq!(
        e,
        ["j.yaml:4:3: error: entry: give exactly one of \"event\", \"inactivity\" or \"audience\""]
    );
    let e = errors(
        "journey: j\nversion: 1\nentry:\n  audience: { at: tomorrow, every: weekly }\nsteps:\n  - id: a\n    exit: {}\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("j.yaml:4:19: error: entry: audience.at must be an RFC 3339 time"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("j.yaml:4:36: error: entry: audience.every"),
        "{e:?}"
    );
}
