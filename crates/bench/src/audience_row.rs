//! The audience row: one run of the example monthly campaign (journeys/lapsed.yaml, "transacted
//! 31 to 60 days ago, £50 to 150") over every customer, in the engine, on one core.
//!
//! Customers live in memory, as the engine row's do; each has a profile like a bank's (a name,
//! a segment, a balance and the time of the last transaction, spread over four months and
//! £0 to 300; one in ten has never transacted). Every customer is given the run
//! ([`Input::Audience`]), the entry condition is evaluated for them, and those it holds for
//! enter and are sent the offer. The row is the median of [`PASSES`] passes, each on fresh
//! copies of the states (copied before the clock starts). The limit column is the issue's
//! target: there is no machine limit to hold it against.

use crate::table::{percent, thousands, Row, Verdict};
use crate::workload;
use journeyd_engine::{CustomerState, Engine, Input};
use journeyd_journey::Trigger;
use journeyd_types::{time, Attributes, Millis, Value};
use std::time::Instant;

/// The target of the issue: customers an audience run evaluates per second on one core.
pub const TARGET_CPS: f64 = 1_000_000.0;
/// Passes; the row gives the median.
const PASSES: usize = 3;
/// The campaign of the examples.
const JOURNEY: &str = "lapsed_reactivation";

/// The customers of a run at `at`: `n` states with profiles, in id order.
fn customers(n: usize, at: Millis) -> Vec<(String, CustomerState)> {
    let mut rng = workload::Rng(workload::SEED);
    (0..n)
        .map(|i| {
            let mut profile = Attributes::new();
            profile.insert("first_name".into(), Value::from(format!("Name{i}")));
            profile.insert("segment".into(), Value::from(["mass", "affluent"][i % 2]));
            profile.insert("timezone".into(), Value::from(workload::HOME_ZONE));
            if rng.below(10) != 0 {
                let ago = rng.below(120 * 24) as Millis * time::HOUR;
                let last = time::format_rfc3339(at - ago);
                profile.insert("last_transaction_at".into(), Value::from(last));
                profile.insert("balance".into(), Value::Int(rng.below(300) as i64));
            }
            let state = CustomerState {
                clock: at - time::DAY,
                profile,
                consent: vec![("email".into(), true), ("push".into(), true)],
                ..CustomerState::default()
            };
            (workload::scale_customer(i), state)
        })
        .collect()
}

/// One run over `states`: (customers who entered, actions, seconds).
fn run(engine: &Engine, states: &mut [(String, CustomerState)], at: Millis) -> (usize, usize, f64) {
    let t0 = Instant::now();
    let mut entered = 0;
    let mut actions = 0;
    for (id, state) in states.iter_mut() {
        let fx = engine.process(state, id, Input::Audience(JOURNEY), at);
        entered += usize::from(!state.instances.is_empty());
        actions += fx.actions.len();
    }
    (entered, actions, t0.elapsed().as_secs_f64())
}

/// Measures the row over `n` customers.
pub fn measure(n: usize) -> anyhow::Result<Vec<Row>> {
    let engine = workload::engine_for(&workload::example_journeys())?;
    let at = engine
        .journeys()
        .iter()
        .find(|j| j.id == JOURNEY)
        .and_then(|j| match j.entry.trigger {
            Trigger::Audience { at, .. } => Some(at),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("the examples have no audience journey `{JOURNEY}`"))?;
    let fresh = customers(n, at);
    // Warm up on a slice.
    let _ = run(&engine, &mut fresh[..n / 20].to_vec(), at);
    let mut rates = Vec::with_capacity(PASSES);
    let mut last = None;
    for _ in 0..PASSES {
        let mut states = fresh.clone();
        let (entered, actions, secs) = run(&engine, &mut states, at);
        rates.push(n as f64 / secs);
        if let Some((e, a)) = last {
            anyhow::ensure!(
                (e, a) == (entered, actions),
                "two passes over the same customers gave {e} and {entered} entries"
            );
        }
        last = Some((entered, actions));
    }
    let (entered, actions) = last.expect("at least one pass");
    // Some enter and most do not: a run that took everyone or no one measures the wrong thing.
    anyhow::ensure!(
        entered > 0 && entered < n / 2,
        "{entered} of {n} customers entered the campaign: the profiles do not match it"
    );
    rates.sort_by(f64::total_cmp);
    let cps = rates[rates.len() / 2];
    Ok(vec![
        Row {
            name: format!(
                "audience run: customers evaluated/s, one core ({} customers; median of {PASSES} passes, slowest {} / fastest {})",
                thousands(n as f64),
                thousands(rates[0]),
                thousands(rates[rates.len() - 1]),
            ),
            measured: thousands(cps),
            limit: format!("target {}", thousands(TARGET_CPS)),
            ratio: percent(cps / TARGET_CPS),
            target: "≥ 1,000,000/s".into(),
            verdict: Verdict::of(cps >= TARGET_CPS),
        },
        Row::info(
            "audience run: customers who entered (and were sent the offer); actions",
            format!(
                "{} ({}); {}",
                thousands(entered as f64),
                percent(entered as f64 / n as f64),
                thousands(actions as f64)
            ),
        ),
    ])
}
