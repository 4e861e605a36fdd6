//! The workload: the example journeys and a deterministic, realistic event mix.
//!
//! The mix (kept from the first engine benchmark, so figures stay comparable): 70% of events
//! touch no journey (page views, logins, searches); 10% are entry events of some journey, 10%
//! are events a journey waits for or cancels on (responses), 5% update the profile, 3% change
//! consent and 2% are exit events. Customers are `cust0000000`..., one per ten events, and the
//! events' times spread evenly over `span` from `start`.

use journeyd_engine::Engine;
use journeyd_journey::{load_dir, StepKind, Trigger};
use journeyd_types::{Attributes, Event, Millis, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// A small deterministic generator (xorshift), so every run sees the same stream: the one the
/// end-to-end suites use.
pub use journeyd_tests::scenario::Rng;

/// The seed of every stream.
pub const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The example journeys folder of the repository.
pub fn example_journeys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../journeys")
}

/// The time zone the example journeys' policies put customers in by default (and the one
/// `profile_updated` events of the mix set).
pub const HOME_ZONE: &str = "Europe/London";

/// A fixed-offset zone (`Etc/GMT±N`) where it is about noon at `now`: the end-to-end rows run on
/// wall-clock time, and in the journeys' home zone their quiet hours (21:00 to 08:00) would
/// hold every text and push at night and halve the actions a run produces. In this zone a run
/// does the same work at any hour.
pub fn noon_zone(now: Millis) -> String {
    let hour = now.div_euclid(3_600_000).rem_euclid(24);
    // Local = UTC + offset, offset in -11..=12.
    let offset = (12 - hour + 11).rem_euclid(24) - 11;
    match offset {
        0 => "Etc/GMT".to_owned(),
        // The IANA names' signs are inverted: Etc/GMT-5 is five hours ahead of UTC.
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

/// Copies the example journeys into `dir`, with `zone` as the policies' default time zone in
/// place of [`HOME_ZONE`].
pub fn example_journeys_in_zone(dir: &std::path::Path, zone: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let home = format!("default_timezone: {HOME_ZONE}");
    let mut replaced = false;
    for entry in std::fs::read_dir(example_journeys())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            replaced |= text.contains(&home);
            let text = text.replace(&home, &format!("default_timezone: {zone}"));
            std::fs::write(dir.join(path.file_name().unwrap_or_default()), text)?;
        }
    }
    anyhow::ensure!(replaced, "no journey file of the examples says `{home}`");
    Ok(())
}

/// An engine over the journeys of `dir`, with default settings (as the daemon's defaults).
pub fn engine_for(dir: &std::path::Path) -> anyhow::Result<Engine> {
    let loaded =
        load_dir(dir).map_err(|e| anyhow::anyhow!("cannot load {}: {e}", dir.display()))?;
    Ok(Engine::new(loaded.catalog))
}

/// Event types by role, taken from the journeys themselves.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Entry events (including the events inactivity entries watch).
    pub entry: Vec<String>,
    /// Events journeys wait for or cancel sends on.
    pub respond: Vec<String>,
    /// Events that end instances.
    pub exit: Vec<String>,
    /// Events no journey looks at.
    pub noise: Vec<String>,
    /// Channels events come from.
    pub channels: Vec<String>,
}

impl Mix {
    /// The roles of the engine's journeys.
    pub fn of(engine: &Engine) -> Mix {
        let mut entry = BTreeSet::new();
        let mut respond = BTreeSet::new();
        let mut exit = BTreeSet::new();
        for j in engine.journeys() {
            match &j.entry.trigger {
                Trigger::Event(e) => entry.insert(e.clone()),
                Trigger::Inactivity { event, .. } => entry.insert(event.clone()),
                // Runs over the known customers, not an event.
                Trigger::Audience { .. } => false,
            };
            exit.extend(j.exit_on.iter().cloned());
            for s in &j.steps {
                match &s.kind {
                    StepKind::WaitFor(w) => respond.extend(w.events.iter().cloned()),
                    StepKind::Send(send) => respond.extend(send.cancel_on.iter().cloned()),
                    _ => {}
                }
            }
        }
        let strings = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Mix {
            entry: entry.into_iter().collect(),
            respond: respond.into_iter().collect(),
            exit: exit.into_iter().collect(),
            noise: strings(&["page_view", "login", "balance_checked", "search", "logout"]),
            channels: strings(&["web", "app", "email", "sms", "branch"]),
        }
    }
}

/// How many customers a stream of `events` events has (one per ten events).
pub fn customers_for(events: usize) -> usize {
    (events / 10).max(10)
}

/// `events` events of the mix, over `customers_for(events)` customers, evenly spread over
/// `[start, start + span)`. The same arguments give the same stream.
pub fn events(engine: &Engine, events: usize, start: Millis, span: Millis) -> Vec<Event> {
    events_in_zone(engine, events, start, span, HOME_ZONE)
}

/// [`events`], with `profile_updated` events setting `zone` as the customer's time zone.
pub fn events_in_zone(
    engine: &Engine,
    events: usize,
    start: Millis,
    span: Millis,
    zone: &str,
) -> Vec<Event> {
    let mix = Mix::of(engine);
    let customers = customers_for(events);
    let mut rng = Rng(SEED);
    let mut stream = Vec::with_capacity(events);
    for i in 0..events {
        let customer = format!("cust{:07}", rng.below(customers as u64));
        let roll = rng.below(100);
        let mut attributes = Attributes::new();
        let event_type = match roll {
            0..=69 => rng.pick(&mix.noise).to_owned(),
            70..=79 if !mix.entry.is_empty() => rng.pick(&mix.entry).to_owned(),
            80..=89 if !mix.respond.is_empty() => rng.pick(&mix.respond).to_owned(),
            90..=94 => {
                attributes.insert(
                    "ltv_segment".into(),
                    Value::from(["high", "medium", "low"][rng.below(3) as usize]),
                );
                attributes.insert("timezone".into(), Value::from(zone));
                "profile_updated".to_owned()
            }
            95..=97 => {
                attributes.insert(
                    "channel".into(),
                    Value::from(["email", "sms", "push"][rng.below(3) as usize]),
                );
                attributes.insert("granted".into(), Value::Bool(rng.below(5) != 0));
                "consent_changed".to_owned()
            }
            _ if !mix.exit.is_empty() => rng.pick(&mix.exit).to_owned(),
            _ => rng.pick(&mix.noise).to_owned(),
        };
        attributes.insert("amount".into(), Value::Int(rng.below(500) as i64));
        stream.push(Event {
            event_id: format!("e{i}"),
            customer_id: customer,
            event_type,
            channel: Some(rng.pick(&mix.channels).to_owned()),
            occurred_at: start + (span as i128 * i as i128 / events.max(1) as i128) as i64,
            attributes,
        });
    }
    stream
}

/// A latency probe: `card_blocked` for a customer seen nowhere else, which the example
/// `card_block_alert` journey (service category, no caps) answers at once with an in-app send.
pub fn probe(customer: String, event_id: String, at: Millis) -> Event {
    let mut attributes = Attributes::new();
    attributes.insert("card_last4".into(), Value::from("4242"));
    attributes.insert("reason".into(), Value::from("suspected_fraud"));
    Event {
        event_id,
        customer_id: customer,
        event_type: "card_blocked".into(),
        channel: Some("core_banking".into()),
        occurred_at: at,
        attributes,
    }
}

/// The journey of the scale row: entry on `bench_signup`, a one-day wait, then an email.
/// Every customer who entered it holds one instance and one pending timer.
pub const SCALE_JOURNEY: &str = r#"# Written by the benchmark (journeyd-bench, the scale row).
journey: bench_timer
version: 1
name: Benchmark timer
priority: 10
category: service

entry:
  event: bench_signup

steps:
  - id: pause
    wait: 1d

  - id: hello
    send:
      channel: email
      template: bench_hello
"#;

/// The entry event of [`SCALE_JOURNEY`] for customer number `n`.
pub fn scale_entry(n: usize, at: Millis) -> Event {
    Event {
        event_id: format!("s{n}"),
        customer_id: scale_customer(n),
        event_type: "bench_signup".into(),
        channel: Some("web".into()),
        occurred_at: at,
        attributes: Attributes::new(),
    }
}

/// The id of customer number `n` of the scale row.
pub fn scale_customer(n: usize) -> String {
    format!("c{n:08}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deterministic_and_mostly_noise() {
        let engine = engine_for(&example_journeys()).unwrap();
        let a = events(&engine, 2000, 0, 1000);
        let b = events(&engine, 2000, 0, 1000);
        assert_eq!(a, b);
        let mix = Mix::of(&engine);
        let noise = a
            .iter()
            .filter(|e| mix.noise.contains(&e.event_type))
            .count();
        assert!((1200..1600).contains(&noise), "{noise} of 2000");
    }

    #[test]
    fn the_noon_zone_is_about_noon_whatever_the_hour() {
        for hour in 0..24 {
            for minute in [0, 59] {
                let now = 1_700_006_400_000 + (hour * 60 + minute) * 60_000; // 00:00 UTC + h:m
                let zone: chrono_tz::Tz = noon_zone(now).parse().unwrap();
                let local = chrono::DateTime::from_timestamp_millis(now)
                    .unwrap()
                    .with_timezone(&zone);
                use chrono::Timelike as _;
                assert!(
                    (11..=12).contains(&local.hour()),
                    "{hour}:{minute} UTC is {local} in {zone}"
                );
            }
        }
    }

    #[test]
    fn the_journeys_in_another_zone_load_and_say_it() {
        let dir = tempfile::tempdir().unwrap();
        example_journeys_in_zone(dir.path(), "Etc/GMT-5").unwrap();
        engine_for(dir.path()).unwrap();
        let policies = std::fs::read_to_string(dir.path().join("policies.yaml")).unwrap();
        assert!(
            policies.contains("default_timezone: Etc/GMT-5"),
            "{policies}"
        );
    }

    #[test]
    fn the_scale_journey_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bench.yaml"), SCALE_JOURNEY).unwrap();
        let engine = engine_for(dir.path()).unwrap();
        assert_eq!(engine.journeys().len(), 1);
    }
}
