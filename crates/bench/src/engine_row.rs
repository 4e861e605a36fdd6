//! Row 1: the engine alone, on one core, over the example journeys and the event mix.
//!
//! The events are decoded already and customers live in memory, in the least a caller of the
//! engine needs ([`Driver`]: states in a hash map, the timer index in a sorted set, due timers
//! fired before each event in due order, as the simulator does), so this is the engine's own
//! cost. The stream runs [`PASSES`] times, each on fresh states, and the row gives the median
//! pass (this machine moves a single pass by a quarter or more between runs). The driver's map
//! is sized for the stream's customers before the clock starts, as a store is: growing it,
//! rehash after rehash into fresh pages, was a sixth of a pass's time, none of it the engine's.
//! There is no machine limit to hold it against: the limit column is the target. For
//! scale, the row also gives the same stream through the simulator (its `BTreeMap` of states
//! and an id allocated per event cost something), and through the driver with no journeys
//! loaded (the floor of the loop: map lookup, state creation, profile and consent updates).

use crate::support::stream_window;
use crate::table::{bytes, percent, thousands, Row, Verdict};
use crate::workload;
use journeyd_engine::{CustomerState, Engine, Input};
use journeyd_simulator::Simulator;
use journeyd_types::{Event, Millis};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// The target of the issue: events per second on one core.
pub const TARGET_EPS: f64 = 1_000_000.0;
/// The target of the issue: bytes of state for a customer in one journey with one timer.
pub const TARGET_STATE_BYTES: f64 = 256.0;

/// The least a caller of the engine needs: states in a hash map, the timer index in a sorted
/// set, every timer due before an event fired first (in due order), as the simulator does.
#[derive(Debug, Default)]
pub struct Driver {
    /// The customers' states.
    pub states: HashMap<String, CustomerState>,
    timers: BTreeSet<(Millis, String)>,
}

impl Driver {
    fn apply(&mut self, engine: &Engine, customer: &str, input: Input<'_>, now: Millis) -> usize {
        let state = match self.states.get_mut(customer) {
            Some(s) => s,
            None => self.states.entry(customer.to_owned()).or_default(),
        };
        let fx = engine.process(state, customer, input, now);
        if fx.timer.clear != fx.timer.set {
            if let Some(old) = fx.timer.clear {
                self.timers.remove(&(old, customer.to_owned()));
            }
            if let Some(new) = fx.timer.set {
                self.timers.insert((new, customer.to_owned()));
            }
        }
        fx.actions.len()
    }

    /// Fires the timers due by `t`, in due order; returns the actions emitted.
    pub fn advance_to(&mut self, engine: &Engine, t: Millis) -> usize {
        let mut actions = 0;
        while self.timers.first().is_some_and(|(due, _)| *due <= t) {
            if let Some((due, customer)) = self.timers.pop_first() {
                actions += self.apply(engine, &customer, Input::Timer, due);
            }
        }
        actions
    }

    /// Fires what is due, then processes the event; returns the actions emitted.
    pub fn push(&mut self, engine: &Engine, e: &Event) -> usize {
        self.advance_to(engine, e.occurred_at)
            + self.apply(engine, &e.customer_id, Input::Event(e), e.occurred_at)
    }
}

/// Passes of the stream the row times (each on fresh states); it gives the median.
pub const PASSES: usize = 5;

/// Runs the stream through a fresh [`Driver`] whose map has room for `customers`; returns it,
/// the actions emitted and the seconds taken.
fn drive(engine: &Engine, stream: &[Event], end: Millis, customers: usize) -> (Driver, usize, f64) {
    let mut d = Driver::default();
    d.states.reserve(customers);
    let t0 = Instant::now();
    let mut actions = 0;
    for e in stream {
        actions += d.push(engine, e);
    }
    actions += d.advance_to(engine, end);
    (d, actions, t0.elapsed().as_secs_f64())
}

fn run(engine: Arc<Engine>, stream: &[Event], end: Millis) -> (Simulator, usize, f64) {
    let mut sim = Simulator::new(engine);
    let mut actions = 0usize;
    let t0 = Instant::now();
    for e in stream {
        actions += sim.push(e).map(|a| a.len()).unwrap_or(0);
    }
    actions += sim.advance_to(end).len();
    let secs = t0.elapsed().as_secs_f64();
    (sim, actions, secs)
}

/// Measures the row.
pub fn measure(events: usize) -> anyhow::Result<Vec<Row>> {
    let engine = Arc::new(workload::engine_for(&workload::example_journeys())?);
    let (start, span) = stream_window();
    let stream = workload::events(&engine, events, start, span);

    let customers = stream
        .iter()
        .map(|e| e.customer_id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();

    // Warm up on a slice, then measure the whole stream on fresh states (one thread), the
    // median of `PASSES` passes.
    let _ = drive(&engine, &stream[..events / 20], start + span, customers);
    let mut passes = Vec::with_capacity(PASSES);
    let mut last = None;
    for _ in 0..PASSES {
        let (driver, actions, secs) = drive(&engine, &stream, start + span, customers);
        passes.push(events as f64 / secs);
        if let Some((_, before)) = &last {
            anyhow::ensure!(
                *before == actions,
                "two passes of the same stream emitted {before} and {actions} actions"
            );
        }
        last = Some((driver, actions));
    }
    let (driver, actions) = last.expect("at least one pass");
    let (eps, slowest, fastest) = median(&mut passes);
    // The same through the simulator (what `journey simulate` and the tests run).
    let (sim, sim_actions, sim_secs) = run(engine.clone(), &stream, start + span);
    let sim_eps = events as f64 / sim_secs;
    anyhow::ensure!(
        sim_actions == actions,
        "the driver emitted {actions} actions, the simulator {sim_actions}"
    );

    let empty = tempfile::tempdir()?;
    let floor = workload::engine_for(empty.path()).ok().map(|none| {
        let mut passes: Vec<f64> = (0..PASSES)
            .map(|_| events as f64 / drive(&none, &stream, start + span, customers).2)
            .collect();
        median(&mut passes).0
    });

    let sizes: Vec<usize> = driver.states.values().map(|s| s.to_bytes().len()).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let p99 = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0);
    let one: Vec<usize> = driver
        .states
        .values()
        .filter(|s| s.instances.len() == 1 && s.wake.is_some())
        .map(|s| s.to_bytes())
        .map(|b| b.len())
        .collect();
    let one_mean = one.iter().sum::<usize>() as f64 / one.len().max(1) as f64;
    let mut one_sorted = one.clone();
    one_sorted.sort_unstable();
    let one_p99 = one_sorted
        .get(one_sorted.len() * 99 / 100)
        .copied()
        .unwrap_or(0);
    // The history is kept beside the state (the simulator's, as the service's store).
    let history: usize = sim
        .customers()
        .keys()
        .map(|id| sim.history_records(id).len())
        .sum();
    anyhow::ensure!(
        driver.states.len() == customers,
        "the stream names {customers} customers, the driver holds {}",
        driver.states.len()
    );
    drop(sim);

    let name = format!(
        "engine only: events/s, one core ({} events, {} customers, {} journeys; median of {PASSES} passes, slowest {} / fastest {})",
        thousands(events as f64),
        thousands(customers as f64),
        engine.journeys().len(),
        thousands(slowest),
        thousands(fastest),
    );
    let mut rows = vec![Row {
        name,
        measured: thousands(eps),
        limit: format!("target {}", thousands(TARGET_EPS)),
        ratio: percent(eps / TARGET_EPS),
        target: "≥ 1,000,000/s".into(),
        verdict: Verdict::of(eps >= TARGET_EPS),
    }];
    rows.push(Row {
        name: "engine only: the same stream through the simulator (BTreeMap of states, an id allocated per event)".into(),
        measured: thousands(sim_eps),
        limit: "–".into(),
        ratio: format!("{} of the engine row", percent(sim_eps / eps)),
        target: "–".into(),
        verdict: Verdict::Info,
    });
    if let Some(floor) = floor {
        rows.push(Row {
            name: "engine only: the same loop with no journeys (its floor)".into(),
            measured: thousands(floor),
            limit: "–".into(),
            ratio: format!("engine at {} of its floor", percent(eps / floor)),
            target: "–".into(),
            verdict: Verdict::Info,
        });
    }
    rows.push(Row {
        name: format!(
            "engine only: state bytes, a customer in one journey with one pending timer (n = {}), mean / p99",
            thousands(one.len() as f64)
        ),
        measured: format!("{one_mean:.0} / {one_p99}"),
        limit: format!("target {TARGET_STATE_BYTES:.0} B"),
        ratio: percent(one_mean / TARGET_STATE_BYTES),
        target: "≤ 256 B".into(),
        verdict: if one.is_empty() {
            Verdict::NotRun("no such customer in the stream".into())
        } else {
            Verdict::of(one_mean <= TARGET_STATE_BYTES)
        },
    });
    rows.push(Row::info(
        "engine only: state bytes per customer, mean / p99; history records per customer; actions",
        format!(
            "{} / {}; {:.1}; {}",
            bytes(mean),
            bytes(p99 as f64),
            history as f64 / customers.max(1) as f64,
            thousands(actions as f64)
        ),
    ));
    Ok(rows)
}

/// The median of `values` (the upper one of an even count), the smallest and the largest; NaN
/// for none.
fn median(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
    (
        at(values.len() / 2),
        at(0),
        at(values.len().wrapping_sub(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_pass_whatever_the_order() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median(&mut [5.0, 9.0, 1.0, 7.0, 3.0]), (5.0, 1.0, 9.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), (3.0, 1.0, 4.0));
        let (m, lo, hi) = median(&mut []);
        assert!(m.is_nan() && lo.is_nan() && hi.is_nan());
    }
}
