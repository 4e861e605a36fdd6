//! `--demo`: a steady stream of realistic touchpoints for thousands of synthetic customers, and
//! a live summary of what journeyd does with them.
//!
//! The stream is built from the loaded journeys themselves: customers first get a profile and
//! consent, then a mix where most events touch no journey (page views, logins) and the rest
//! enter journeys, respond to messages, convert or leave.

use crate::clock::Clock;
use crate::config::{Config, Encoding};
use crate::metrics::Metrics;
use crate::service::Shared;
use journeyd_codec::{encode_touchpoint, Framing};
use journeyd_journey::{StepKind, Trigger};
use journeyd_types::{time, Attributes, Event, Value};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Demo settings.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// How many synthetic customers.
    pub customers: usize,
    /// Events per second (real time).
    pub rate: u32,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &'a [String]) -> Option<&'a str> {
        (!xs.is_empty()).then(|| xs[self.below(xs.len())].as_str())
    }
}

/// Event types by role, taken from the journeys.
#[derive(Debug, Default)]
struct Roles {
    entry: Vec<String>,
    respond: Vec<String>,
    exit: Vec<String>,
    channels: Vec<String>,
}

fn roles(shared: &Shared) -> Roles {
    let (mut entry, mut respond, mut exit, mut channels) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for j in shared.engine().journeys() {
        match &j.entry.trigger {
            Trigger::Event(e) => entry.insert(e.clone()),
            Trigger::Inactivity { event, .. } => entry.insert(event.clone()),
            Trigger::Audience { .. } => false,
        };
        exit.extend(j.exit_on.iter().cloned());
        if let Some(g) = &j.goal {
            exit.insert(g.event.clone());
        }
        for s in &j.steps {
            match &s.kind {
                StepKind::WaitFor(w) => respond.extend(w.events.iter().cloned()),
                StepKind::Send(send) => {
                    respond.extend(send.cancel_on.iter().cloned());
                    channels.insert(send.channel.clone());
                }
                _ => {}
            }
        }
    }
    for special in ["profile_updated", "consent_changed"] {
        entry.remove(special);
    }
    Roles {
        entry: entry.into_iter().collect(),
        respond: respond.into_iter().collect(),
        exit: exit.into_iter().collect(),
        channels: channels.into_iter().collect(),
    }
}

fn event(
    n: u64,
    customer: &str,
    event_type: &str,
    channel: Option<&str>,
    at: i64,
    attributes: Attributes,
) -> Event {
    Event {
        event_id: format!("demo-{n}"),
        customer_id: customer.to_owned(),
        event_type: event_type.to_owned(),
        channel: channel.map(str::to_owned),
        occurred_at: at,
        attributes,
    }
}

/// Setup events (profiles, consents) published per tick of 100 ms.
const SETUP_BURST: usize = 5_000;

/// Publishes the demo stream until `shutdown`.
pub async fn publish(
    shared: Arc<Shared>,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config: &Config = &shared.config;
    let mut pc = ClientConfig::new();
    pc.set(
        "bootstrap.servers",
        config
            .kafka
            .get("bootstrap.servers")
            .map_or("localhost:9092", String::as_str),
    );
    pc.set("linger.ms", "20");
    let producer: FutureProducer = pc.create()?;
    let input = &config.inputs[0];
    let roles = roles(&shared);
    let clock: Clock = shared.clock;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let customers: Vec<String> = (0..options.customers)
        .map(|i| format!("demo-{i:06}"))
        .collect();
    let web_channels: Vec<String> = ["web", "app", "branch", "phone"].map(String::from).to_vec();
    let noise: Vec<String> = ["page_view", "login", "balance_checked", "search"]
        .map(String::from)
        .to_vec();
    let zones = [
        "Europe/London",
        "Europe/Paris",
        "America/New_York",
        "Asia/Singapore",
    ];
    let mut n: u64 = 0;
    let per_tick = (options.rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Everyone gets a profile and consent first, then the steady mix.
    let mut setup: Vec<Event> = Vec::new();
    for c in &customers {
        let mut p = Attributes::new();
        p.insert(
            "ltv_segment".into(),
            Value::from(["high", "medium", "low"][rng.below(3)]),
        );
        p.insert(
            "timezone".into(),
            Value::from(zones[rng.below(zones.len())]),
        );
        p.insert(
            "first_name".into(),
            Value::from(["Ada", "Grace", "Alan", "Edsger", "Barbara"][rng.below(5)]),
        );
        setup.push(event(0, c, "profile_updated", None, 0, p));
        for ch in &roles.channels {
            if rng.below(10) < 8 {
                let mut a = Attributes::new();
                a.insert("channel".into(), Value::from(ch.as_str()));
                a.insert("granted".into(), Value::Bool(true));
                setup.push(event(0, c, "consent_changed", None, 0, a));
            }
        }
    }
    setup.reverse();
    println!(
        "demo: publishing to `{}` ({:?}) for {} customers at {} events/s; journeys see entry events {:?}",
        input.topic, input.format, options.customers, options.rate, roles.entry
    );
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = clock.now();
        let mut batch = Vec::with_capacity(per_tick);
        // The profiles and consents go out first, in bursts (not at the demo's rate), so that
        // journeys start within seconds of the start even with many customers.
        while batch.len() < SETUP_BURST {
            let Some(mut e) = setup.pop() else { break };
            n += 1;
            e.event_id = format!("demo-{n}");
            e.occurred_at = now;
            batch.push(e);
        }
        for _ in 0..per_tick {
            n += 1;
            let c = customers[rng.below(customers.len())].as_str();
            let roll = rng.below(100);
            let mut attrs = Attributes::new();
            // What the example journeys read from their events, with realistic spreads.
            attrs.insert("amount".into(), Value::Int(rng.below(400) as i64 + 5));
            let pick = |rng: &mut Rng, xs: &[&str]| Value::from(xs[rng.below(xs.len())]);
            attrs.insert(
                "product".into(),
                pick(
                    &mut rng,
                    &["current_account", "savings_account", "credit_card", "loan"],
                ),
            );
            attrs.insert("cart_value".into(), Value::Int(rng.below(480) as i64 + 10));
            attrs.insert("item_count".into(), Value::Int(rng.below(5) as i64 + 1));
            attrs.insert(
                "top_item".into(),
                pick(&mut rng, &["headphones", "kettle", "book"]),
            );
            attrs.insert(
                "score".into(),
                Value::Float(0.5 + rng.below(50) as f64 / 100.0),
            );
            attrs.insert(
                "top_reason".into(),
                pick(&mut rng, &["fees", "rate", "service"]),
            );
            attrs.insert(
                "reason".into(),
                pick(&mut rng, &["suspected_fraud", "lost", "stolen"]),
            );
            attrs.insert(
                "template".into(),
                pick(&mut rng, &["retention_loyalty_offer", "welcome"]),
            );
            attrs.insert(
                "card_last4".into(),
                Value::from(format!("{:04}", rng.below(10_000)).as_str()),
            );
            attrs.insert(
                "account_last4".into(),
                Value::from(format!("{:04}", rng.below(10_000)).as_str()),
            );
            attrs.insert("sort_code".into(), Value::from("20-00-00"));
            attrs.insert(
                "merchant".into(),
                pick(&mut rng, &["Tesco", "Amazon", "Shell"]),
            );
            attrs.insert(
                "application_id".into(),
                Value::from(format!("app-{n}").as_str()),
            );
            attrs.insert("offer_expires".into(), Value::from("2026-12-31"));
            let (t, ch) = match roll {
                0..=59 => (rng.pick(&noise), rng.pick(&web_channels)),
                60..=74 => (rng.pick(&roles.entry), rng.pick(&web_channels)),
                75..=92 => (
                    rng.pick(&roles.respond),
                    rng.pick(&roles.channels).or(Some("app")),
                ),
                _ => (rng.pick(&roles.exit), rng.pick(&web_channels)),
            };
            let Some(t) = t else { continue };
            batch.push(event(n, c, t, ch, now, attrs));
        }
        let payloads: Vec<(String, Vec<u8>)> = batch
            .iter()
            .map(|e| {
                let bytes = match input.format {
                    Encoding::Avro => encode_touchpoint(e, Framing::SingleObject),
                    Encoding::Json => serde_json::to_vec(e).unwrap_or_default(),
                };
                (e.customer_id.clone(), bytes)
            })
            .collect();
        let sends = payloads.iter().map(|(key, bytes)| {
            producer.send(
                FutureRecord::to(&input.topic)
                    .key(key.as_bytes())
                    .payload(bytes.as_slice()),
                Duration::from_secs(5),
            )
        });
        for r in futures::future::join_all(sends).await {
            if let Err((error, _)) = r {
                tracing::warn!(%error, "The demo could not publish a touchpoint.");
            }
        }
    }
    Ok(())
}

/// Prints a one-line summary every few seconds until `shutdown`.
pub async fn summarise(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        crate::service::update_gauges(&shared);
        let m: &Metrics = &shared.metrics;
        let mut by_channel: Vec<String> = Vec::new();
        let mut cancels = 0;
        {
            use prometheus::core::Collector;
            for mf in m.actions.collect() {
                for metric in mf.get_metric() {
                    let labels: Vec<(&str, &str)> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    let value = metric.get_counter().value() as u64;
                    let channel = labels
                        .iter()
                        .find(|(k, _)| *k == "channel")
                        .map_or("", |(_, v)| *v);
                    if labels.iter().any(|(k, v)| *k == "kind" && *v == "cancel") {
                        cancels += value;
                    } else {
                        by_channel.push(format!("{channel} {value}"));
                    }
                }
            }
        }
        by_channel.sort();
        println!(
            "demo: clock {} (x{}) | events {} (dead-lettered {}) | sends: {} | cancels {} | entries {} | suppressed {} | timers pending {}",
            time::format_rfc3339(shared.clock.now() / 1000 * 1000),
            shared.clock.speed(),
            Metrics::total(&m.events_consumed),
            Metrics::total(&m.events_rejected),
            if by_channel.is_empty() { "none yet".to_owned() } else { by_channel.join(", ") },
            cancels,
            Metrics::total(&m.entries),
            Metrics::total(&m.suppressions),
            m.timers_pending.get(),
        );
    }
}
