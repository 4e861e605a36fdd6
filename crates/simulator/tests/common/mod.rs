//! Helpers the simulator's scenario tests share: journeys from YAML text, events, runs, and a
//! one-line summary of each action.
#![allow(dead_code)]

use journeyd_engine::Engine;
use journeyd_journey::load_sources;
use journeyd_simulator::{Emitted, Simulator};
use journeyd_types::{time, Attributes, Event, Value};
use std::path::PathBuf;
use std::sync::Arc;

pub fn engine(files: &[(&str, &str)]) -> Arc<Engine> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    match load_sources(&sources) {
        Ok(loaded) => Arc::new(Engine::new(loaded.catalog)),
        Err(e) => panic!("journeys do not load:\n{e}"),
    }
}

pub fn ev(at: &str, customer: &str, event_type: &str) -> Event {
    Event {
        event_id: format!("{customer}-{event_type}-{at}"),
        customer_id: customer.to_owned(),
        event_type: event_type.to_owned(),
        channel: None,
        occurred_at: time::parse_rfc3339(at).unwrap(),
        attributes: Attributes::new(),
    }
}

pub trait EventExt {
    fn on(self, channel: &str) -> Self;
    fn attr(self, k: &str, v: impl Into<Value>) -> Self;
}

impl EventExt for Event {
    fn on(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }
    fn attr(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.attributes.insert(k.to_owned(), v.into());
        self
    }
}

pub fn run_sim(
    engine: &Arc<Engine>,
    events: &[Event],
    until: Option<&str>,
) -> (Simulator, Vec<Emitted>) {
    let mut sim = Simulator::new(engine.clone());
    let mut out = Vec::new();
    for e in events {
        out.extend(sim.push(e).unwrap());
    }
    if let Some(u) = until {
        out.extend(sim.advance_to(time::parse_rfc3339(u).unwrap()));
    }
    (sim, out)
}

pub fn run(engine: &Arc<Engine>, events: &[Event], until: Option<&str>) -> Vec<Emitted> {
    run_sim(engine, events, until).1
}

/// `AT KIND CHANNEL JOURNEY/STEP CUSTOMER [REASON]`
pub fn brief(out: &[Emitted]) -> Vec<String> {
    out.iter()
        .map(|e| {
            let a = &e.action;
            let mut s = format!(
                "{} {} {} {}/{} {}",
                time::format_rfc3339(e.at),
                a.kind.as_str(),
                a.channel,
                a.journey,
                a.step,
                a.customer_id
            );
            if let Some(r) = a.reason {
                s.push(' ');
                s.push_str(r.as_str());
            }
            s
        })
        .collect()
}
