//! A status change the customer has not been given yet (no `Input::Status` reached them, as in
//! a service that applies a stop partition by partition) is applied at their next input, before
//! anything else runs: the same cancels and releases, at that input's time.

use journeyd_engine::{CustomerState, Engine, Input, Status};
use journeyd_journey::load_sources;
use journeyd_types::{time, ActionKind, Attributes, CancelReason, Event};
use std::path::PathBuf;

const WELCOME: &str = r#"
journey: welcome
version: 1
entry: { event: signup }
steps:
  - id: hello
    send: { channel: email, template: hello, ttl: 7d }
  - id: pause
    wait: 1d
  - id: nudge
    send: { channel: sms, template: nudge }
"#;

fn engine() -> Engine {
    let loaded = load_sources(&[(PathBuf::from("welcome.yaml"), WELCOME.to_owned())]).unwrap();
    Engine::new(loaded.catalog)
}

fn event(at: &str, event_type: &str) -> Event {
    Event {
        event_id: format!("{event_type}-{at}"),
        customer_id: "c1".into(),
        event_type: event_type.into(),
        channel: None,
        occurred_at: time::parse_rfc3339(at).unwrap(),
        attributes: Attributes::new(),
    }
}

#[test]
fn a_stop_not_yet_applied_cancels_at_the_next_input() {
    let running = engine();
    let mut st = CustomerState::default();
    let signup = event("2026-03-02T10:00:00Z", "signup");
    let fx = running.process(&mut st, "c1", Input::Event(&signup), signup.occurred_at);
    assert_eq!(fx.actions.len(), 1);
    let stopped = running.with_status("welcome", Status::Stopped);
    // An event no journey reads, before the wait is due: the stop comes first.
    let other = event("2026-03-02T12:00:00Z", "page_view");
    let fx = stopped.process(&mut st, "c1", Input::Event(&other), other.occurred_at);
    assert_eq!(fx.actions.len(), 1, "{:?}", fx.actions);
    assert_eq!(fx.actions[0].kind, ActionKind::Cancel);
    assert_eq!(fx.actions[0].reason, Some(CancelReason::Stopped));
    assert!(st.instances.is_empty());
    assert!(st.wake.is_none(), "the wait's timer goes with the instance");
    // Applied once: the same status again changes nothing.
    let again = event("2026-03-02T13:00:00Z", "page_view");
    let fx = stopped.process(&mut st, "c1", Input::Event(&again), again.occurred_at);
    assert!(fx.actions.is_empty());
}

#[test]
fn a_resume_not_yet_applied_releases_the_parked_send_at_the_next_input() {
    let paused = engine().with_status("welcome", Status::Paused);
    let mut st = CustomerState::default();
    // Entered before the pause (as a customer of a running journey) ...
    let running = engine();
    let signup = event("2026-03-02T10:00:00Z", "signup");
    running.process(&mut st, "c1", Input::Event(&signup), signup.occurred_at);
    // ... the wait runs out while paused: the instance parks at the SMS.
    let fx = paused.process(
        &mut st,
        "c1",
        Input::Timer,
        time::parse_rfc3339("2026-03-03T10:00:00Z").unwrap(),
    );
    assert!(fx.actions.is_empty(), "{:?}", fx.actions);
    assert_eq!(st.instances.len(), 1);
    // Resumed, but no Input::Status reached the customer: their next input releases it.
    let resumed = paused.with_status("welcome", Status::Running);
    let other = event("2026-03-04T09:00:00Z", "page_view");
    let fx = resumed.process(&mut st, "c1", Input::Event(&other), other.occurred_at);
    assert_eq!(fx.actions.len(), 1, "{:?}", fx.actions);
    assert_eq!(fx.actions[0].kind, ActionKind::Send);
    assert_eq!(fx.actions[0].step, "nudge");
    assert!(st.instances.is_empty());
}
