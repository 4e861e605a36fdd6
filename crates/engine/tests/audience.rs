//! Audience runs reach each known customer once, at the run's time, before any later input of
//! theirs: whether a service's scan of their partition (`Input::Audience`) or an event of
//! theirs comes first, the result is the same; a customer first seen after a run is not given
//! it.

use journeyd_engine::{CustomerState, Engine, Input};
use journeyd_journey::load_sources;
use journeyd_types::{time, ActionKind, Attributes, Event, Value};
use std::path::PathBuf;

const GOLD: &str = r#"
journey: gold_offer
version: 1
entry:
  audience: { at: "2026-03-02T09:00:00Z", every: 7d }
  if: has(profile.tier) && profile.tier == "gold"
  reentry: always
steps:
  - id: offer
    send: { channel: email, template: offer }
"#;

fn engine() -> Engine {
    let loaded = load_sources(&[(PathBuf::from("gold.yaml"), GOLD.to_owned())]).unwrap();
    Engine::new(loaded.catalog)
}

fn event(at: &str, event_type: &str, tier: Option<&str>) -> Event {
    let mut attributes = Attributes::new();
    if let Some(t) = tier {
        attributes.insert("tier".into(), Value::from(t));
    }
    Event {
        event_id: format!("{event_type}-{at}"),
        customer_id: "c1".into(),
        event_type: event_type.into(),
        channel: None,
        occurred_at: time::parse_rfc3339(at).unwrap(),
        attributes,
    }
}

fn t(at: &str) -> i64 {
    time::parse_rfc3339(at).unwrap()
}

fn sends(fx: &journeyd_engine::Effects) -> Vec<String> {
    fx.actions
        .iter()
        .filter(|a| a.kind == ActionKind::Send)
        .map(|a| time::format_rfc3339(a.created_at))
        .collect()
}

#[test]
fn a_run_reaches_a_known_customer_once_whichever_comes_first() {
    let e = engine();
    let gold = event("2026-03-01T10:00:00Z", "profile_updated", Some("gold"));
    // The scan first: the run at its time, then an event.
    let mut scanned = CustomerState::default();
    e.process(&mut scanned, "c1", Input::Event(&gold), gold.occurred_at);
    let run = t("2026-03-02T09:00:00Z");
    let fx = e.process(&mut scanned, "c1", Input::Audience("gold_offer"), run);
    assert_eq!(sends(&fx), ["2026-03-02T09:00:00Z"]);
    let later = event("2026-03-03T12:00:00Z", "page_view", None);
    let fx = e.process(&mut scanned, "c1", Input::Event(&later), later.occurred_at);
    assert!(sends(&fx).is_empty(), "given once");
    // The event first: the run is given before it, at the run's time; the scan after it does
    // nothing.
    let mut evented = CustomerState::default();
    e.process(&mut evented, "c1", Input::Event(&gold), gold.occurred_at);
    let fx = e.process(&mut evented, "c1", Input::Event(&later), later.occurred_at);
    assert_eq!(sends(&fx), ["2026-03-02T09:00:00Z"]);
    let fx = e.process(&mut evented, "c1", Input::Audience("gold_offer"), run);
    assert!(sends(&fx).is_empty(), "given once");
    assert_eq!(scanned, evented);
    // A week on, an event a month later brings the four runs since, each at its time
    // (reentry: always; each instance ends after its send).
    let month = event("2026-04-01T10:00:00Z", "page_view", None);
    let fx = e.process(&mut evented, "c1", Input::Event(&month), month.occurred_at);
    assert_eq!(
        sends(&fx),
        [
            "2026-03-09T09:00:00Z",
            "2026-03-16T09:00:00Z",
            "2026-03-23T09:00:00Z",
            "2026-03-30T09:00:00Z"
        ]
    );
}

#[test]
fn a_customer_first_seen_after_a_run_is_not_given_it() {
    let e = engine();
    let mut state = CustomerState::default();
    let first = event("2026-03-02T10:00:00Z", "profile_updated", Some("gold"));
    let fx = e.process(&mut state, "c1", Input::Event(&first), first.occurred_at);
    assert!(sends(&fx).is_empty(), "not known at the run of 09:00");
    let next = event("2026-03-09T09:00:00Z", "page_view", None);
    let fx = e.process(&mut state, "c1", Input::Event(&next), next.occurred_at);
    assert_eq!(
        sends(&fx),
        ["2026-03-09T09:00:00Z"],
        "known at the next run"
    );
}
