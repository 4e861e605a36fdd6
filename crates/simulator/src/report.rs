//! Experiment results (contract v2): per journey, instances entered, goals reached, times each
//! step was reached; per split step and arm, instances that took the arm (the first time the
//! instance passed the step) and how many of those reached the goal afterwards; for each arm
//! of a split with a control arm, its rate, lift and two-proportion z-test p-value against the
//! control. Built from the history records the engine emits, as they come.

use journeyd_engine::{CustomerState, Engine, Record, What};
use journeyd_journey::StepKind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The counters, as records come.
#[derive(Debug, Default)]
pub struct Counters {
    journeys: BTreeMap<String, JourneyCounts>,
    /// For each customer and journey: the split arms the current instance took, by step id.
    open: HashMap<(String, String), BTreeMap<String, usize>>,
}

#[derive(Debug, Default)]
struct JourneyCounts {
    entered: u64,
    goal_reached: u64,
    steps: BTreeMap<String, u64>,
    /// By split step id, by arm index: (entered, converted).
    splits: BTreeMap<String, BTreeMap<usize, (u64, u64)>>,
}

impl Counters {
    /// Counts the records one input of `customer` produced (`state` after it: its journey
    /// table names the records' journeys).
    pub fn observe(
        &mut self,
        engine: &Engine,
        customer: &str,
        state: &CustomerState,
        records: &[Record],
    ) {
        for r in records {
            let Some(j) = r.j else { continue };
            let Some(id) = state.journeys.get(j as usize).map(|m| m.id.clone()) else {
                continue;
            };
            let journey = engine.journey(&id, r.version);
            let step_id = |s: u16| {
                journey
                    .and_then(|jr| jr.steps.get(s as usize))
                    .map(|st| st.id.clone())
            };
            let counts = self.journeys.entry(id.clone()).or_default();
            match &r.what {
                What::Entered { .. } => {
                    counts.entered += 1;
                    self.open.insert((customer.to_owned(), id), BTreeMap::new());
                }
                What::Step => {
                    if let Some(s) = r.step.and_then(step_id) {
                        *counts.steps.entry(s).or_default() += 1;
                    }
                }
                What::Split { arm } => {
                    let Some(s) = r.step.and_then(step_id) else {
                        continue;
                    };
                    let taken = self.open.entry((customer.to_owned(), id)).or_default();
                    if !taken.contains_key(&s) {
                        taken.insert(s.clone(), *arm as usize);
                        let arms = counts.splits.entry(s).or_default();
                        arms.entry(*arm as usize).or_default().0 += 1;
                    }
                }
                What::Converted => {
                    counts.goal_reached += 1;
                    if let Some(taken) = self.open.get(&(customer.to_owned(), id)) {
                        for (s, arm) in taken {
                            let arms = counts.splits.entry(s.clone()).or_default();
                            arms.entry(*arm).or_default().1 += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Customer `from` was merged into `into`: the split arms of the instances that moved (by
    /// journey id) go with them; the rest of `from`'s are forgotten.
    pub fn moved(&mut self, from: &str, into: &str, journeys: &[String]) {
        for journey in journeys {
            if let Some(arms) = self.open.remove(&(from.to_owned(), journey.clone())) {
                self.open.insert((into.to_owned(), journey.clone()), arms);
            }
        }
        self.forget(from);
    }

    /// Forgets what is kept of `customer` (erased); the counts stay (they are not personal).
    pub fn forget(&mut self, customer: &str) {
        self.open.retain(|(c, _), _| c != customer);
    }

    /// The experiment document for the journeys of `engine` (every version's steps and split
    /// arms appear, counted or not).
    pub fn report(&self, engine: &Engine) -> Report {
        let mut journeys = BTreeMap::new();
        for current in engine.journeys() {
            let id = &current.id;
            let empty = JourneyCounts::default();
            let counts = self.journeys.get(id).unwrap_or(&empty);
            let mut steps: BTreeMap<String, u64> =
                current.steps.iter().map(|s| (s.id.clone(), 0)).collect();
            for (s, n) in &counts.steps {
                *steps.entry(s.clone()).or_default() += n;
            }
            let mut splits = BTreeMap::new();
            for step in &current.steps {
                let StepKind::Split(arms) = &step.kind else {
                    continue;
                };
                let counted = counts.splits.get(&step.id);
                let n = |k: usize| counted.and_then(|c| c.get(&k)).copied().unwrap_or((0, 0));
                let control = arms.iter().position(|a| a.control).map(n);
                let rows = arms
                    .iter()
                    .enumerate()
                    .map(|(k, a)| {
                        let (entered, converted) = n(k);
                        let rate = rate(entered, converted);
                        let (lift, p_value) = match control {
                            Some(c) if !a.control => {
                                (lift(rate, rate_of(c)), p_value((entered, converted), c))
                            }
                            _ => (None, None),
                        };
                        Arm {
                            next: a
                                .next
                                .and_then(|t| current.steps.get(t))
                                .map(|s| s.id.clone()),
                            control: a.control,
                            entered,
                            converted,
                            rate,
                            lift,
                            p_value,
                        }
                    })
                    .collect();
                splits.insert(step.id.clone(), Split { arms: rows });
            }
            journeys.insert(
                id.clone(),
                JourneyReport {
                    entered: counts.entered,
                    goal_reached: counts.goal_reached,
                    steps,
                    splits,
                },
            );
        }
        Report { journeys }
    }
}

fn rate(entered: u64, converted: u64) -> Option<f64> {
    (entered > 0).then(|| converted as f64 / entered as f64)
}

fn rate_of((entered, converted): (u64, u64)) -> Option<f64> {
    rate(entered, converted)
}

fn lift(rate: Option<f64>, control: Option<f64>) -> Option<f64> {
    match (rate, control) {
        (Some(r), Some(c)) if c != 0.0 => Some((r - c) / c),
        _ => None,
    }
}

/// Two-sided two-proportion z-test with the pooled proportion.
fn p_value((n1, c1): (u64, u64), (n0, c0): (u64, u64)) -> Option<f64> {
    if n1 == 0 || n0 == 0 {
        return None;
    }
    let (n1f, n0f) = (n1 as f64, n0 as f64);
    let p = (c1 + c0) as f64 / (n1f + n0f);
    let se = (p * (1.0 - p) * (1.0 / n1f + 1.0 / n0f)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (c1 as f64 / n1f - c0 as f64 / n0f) / se;
    // 2 (1 - Φ(|z|)) = erfc(|z| / √2)
    Some(libm::erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// The experiment document (`journey simulate --report FILE`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// By journey id.
    pub journeys: BTreeMap<String, JourneyReport>,
}

/// One journey's results, summed over its versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyReport {
    /// Instances entered.
    pub entered: u64,
    /// Goals reached.
    pub goal_reached: u64,
    /// Times each step was reached.
    pub steps: BTreeMap<String, u64>,
    /// By split step id.
    pub splits: BTreeMap<String, Split>,
}

/// One split's arms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// In file order.
    pub arms: Vec<Arm>,
}

/// One arm of a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arm {
    /// The step the arm leads to (null when it ends the instance).
    pub next: Option<String>,
    /// Whether it is the control.
    pub control: bool,
    /// Instances that took it (the first time they passed the split).
    pub entered: u64,
    /// Of those, how many reached the goal afterwards.
    pub converted: u64,
    /// converted / entered (null when entered is 0).
    pub rate: Option<f64>,
    /// (rate − control rate) / control rate; null for the control, without one, or when the
    /// control rate is 0 or null.
    pub lift: Option<f64>,
    /// Two-sided two-proportion z-test against the control (pooled); null when either has no
    /// instance or the standard error is 0.
    pub p_value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_figures() {
        // schemas of the contract's example: control 1 of 20, offer_a 17 of 97, offer_b 13 of 83.
        let control = (20, 1);
        let a = (97, 17);
        let b = (83, 13);
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        assert_eq!(rate_of(a).map(round), Some(0.1753));
        assert_eq!(lift(rate_of(a), rate_of(control)).map(round), Some(2.5052));
        assert_eq!(p_value(a, control).map(round), Some(0.1575));
        assert_eq!(lift(rate_of(b), rate_of(control)).map(round), Some(2.1325));
        assert_eq!(p_value(b, control).map(round), Some(0.2116));
        assert_eq!(p_value((0, 0), control), None);
        assert_eq!(p_value((10, 0), (10, 0)), None, "se is 0");
        assert_eq!(lift(Some(0.5), Some(0.0)), None);
    }
}
