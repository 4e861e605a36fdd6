//! Experiment results and live counts (contract v2): per journey, instances entered, goals
//! reached, and for each step the times it was reached, the instances waiting at it now, the
//! sends it emitted by channel and those suppressed by reason; per split step and arm, the
//! entries that took the arm (the first time they passed the step) and how many of those
//! reached the goal afterwards. For each arm of a split with a control arm: its rate, lift and
//! two-proportion z-test p-value against the control.
//!
//! [`Counts`] add up: the service keeps one per input partition, with the partition's state,
//! and sums them; the simulator keeps one. Both count from what the engine reports of each
//! input ([`Effects`]), so they agree.

use crate::{CustomerState, Effects, Engine, JourneyMemory, What};
use journeyd_journey::StepKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counts, by journey id. Serialisable, to be kept with the state they count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// By journey id.
    pub journeys: BTreeMap<String, JourneyCounts>,
}

/// One journey's counts, summed over its versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyCounts {
    /// Instances entered.
    pub entered: u64,
    /// Goals reached.
    pub goal_reached: u64,
    /// By step id.
    pub steps: BTreeMap<String, StepCounts>,
    /// Active instances at each step now, by `(version, step index)`: an instance of a version
    /// no longer loaded still leaves its step (see [`JourneyCounts::waiting_by_step`]). In a
    /// delta, a count may be negative.
    pub waiting: BTreeMap<(u32, u16), i64>,
    /// By split step id, by `(version, arm index)`: the report sums each arm's counts over the
    /// versions where the arm leads to the same step with the same control flag.
    pub arms: BTreeMap<String, BTreeMap<(u32, u16), ArmCounts>>,
    /// Entries and goals by UTC day (days since 1970-01-01, of the engine time they happened
    /// at), the last [`DAYS_KEPT`] days only.
    pub days: BTreeMap<i64, DayCounts>,
    /// The time of the last audience run given to every customer counted here (the service
    /// keeps it with each partition's counts, so a restart neither misses a run nor gives one
    /// twice); summed counts keep the latest.
    pub last_run: Option<journeyd_types::Millis>,
}

/// One day's entries and goals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCounts {
    /// Instances entered that day.
    pub entered: u64,
    /// Goals reached that day.
    pub goal_reached: u64,
}

/// How many days [`JourneyCounts::days`] keeps, counting back from the latest.
pub const DAYS_KEPT: i64 = 35;

/// The UTC day of an engine time (days since 1970-01-01).
pub fn day_of(at: journeyd_types::Millis) -> i64 {
    at.div_euclid(86_400_000)
}

impl JourneyCounts {
    /// The active instances at each step now, by step id (summed over the versions still
    /// loaded: those of a version gone are ending).
    pub fn waiting_by_step(&self, engine: &Engine, journey: &str) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for (&(version, step), &n) in &self.waiting {
            if n == 0 {
                continue;
            }
            let Some(step) = engine
                .journey(journey, version)
                .and_then(|jr| jr.steps.get(usize::from(step)))
            else {
                continue;
            };
            *out.entry(step.id.clone()).or_default() += n;
        }
        out
    }

    /// The active instances now.
    pub fn active(&self) -> i64 {
        self.waiting.values().sum()
    }

    /// The entries and goals of `day` (see [`day_of`]).
    pub fn on(&self, day: i64) -> DayCounts {
        self.days.get(&day).copied().unwrap_or_default()
    }

    /// Counts something of the day of `at`, unless that day is older than those kept.
    fn count_day(&mut self, at: journeyd_types::Millis, count: impl FnOnce(&mut DayCounts)) {
        let day = day_of(at);
        if let Some(&latest) = self.days.keys().next_back() {
            if day <= latest - DAYS_KEPT {
                return;
            }
        }
        count(self.days.entry(day).or_default());
        self.prune();
    }

    fn prune(&mut self) {
        if let Some(&latest) = self.days.keys().next_back() {
            self.days.retain(|d, _| *d > latest - DAYS_KEPT);
        }
    }
}

/// One step's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    /// Times the step was reached.
    pub reached: u64,
    /// Sends emitted, by channel.
    pub sent: BTreeMap<String, u64>,
    /// Sends suppressed, by reason (`frequency_cap`, `no_consent`).
    pub suppressed: BTreeMap<String, u64>,
}

/// One split arm's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Entries that took the arm (the first time they passed the split).
    pub entered: u64,
    /// Of those, how many reached the goal afterwards.
    pub converted: u64,
}

/// The format byte [`Counts::to_bytes`] starts with.
pub const COUNTS_FORMAT: u8 = 1;

impl Counts {
    /// Serialises the counts for the store: [`COUNTS_FORMAT`], then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![COUNTS_FORMAT]).expect("serialising to memory cannot fail")
    }

    /// Reads counts written by [`Counts::to_bytes`]; an unknown format or bytes left over are
    /// errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Counts, postcard::Error> {
        match bytes.split_first() {
            Some((&COUNTS_FORMAT, rest)) => {
                let (counts, rest) = postcard::take_from_bytes(rest)?;
                if rest.is_empty() {
                    Ok(counts)
                } else {
                    Err(postcard::Error::DeserializeBadEncoding)
                }
            }
            Some(_) => Err(postcard::Error::DeserializeBadEncoding),
            None => Err(postcard::Error::DeserializeUnexpectedEnd),
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.journeys.is_empty()
    }

    /// A journey's counts, added when missing.
    pub fn journey_mut(&mut self, id: &str) -> &mut JourneyCounts {
        if !self.journeys.contains_key(id) {
            self.journeys
                .insert(id.to_owned(), JourneyCounts::default());
        }
        self.journeys.get_mut(id).expect("inserted above")
    }

    /// Counts what one input reported. `journeys` is the journey table the effects' journey
    /// indexes point into (the customer's state after the input).
    pub fn observe(&mut self, engine: &Engine, journeys: &[JourneyMemory], fx: &Effects) {
        for r in &fx.records {
            let Some(memory) = r.j.and_then(|j| journeys.get(usize::from(j))) else {
                continue;
            };
            let step = r.step.and_then(|s| {
                engine
                    .journey(&memory.id, r.version)
                    .and_then(|jr| jr.steps.get(usize::from(s)))
            });
            let counts = self.journey_mut(&memory.id);
            match (&r.what, step) {
                (What::Entered { .. }, _) => {
                    counts.entered += 1;
                    counts.count_day(r.at, |d| d.entered += 1);
                }
                (What::Converted, _) => {
                    counts.goal_reached += 1;
                    counts.count_day(r.at, |d| d.goal_reached += 1);
                }
                (What::Step, Some(step)) => step_counts(counts, &step.id).reached += 1,
                (What::Sent { .. }, Some(step)) => {
                    if let StepKind::Send(send) = &step.kind {
                        let channel = send.channel.clone();
                        *step_counts(counts, &step.id)
                            .sent
                            .entry(channel)
                            .or_default() += 1;
                    }
                }
                (What::Suppressed(why), Some(step)) => {
                    let reason = why.as_str().to_owned();
                    *step_counts(counts, &step.id)
                        .suppressed
                        .entry(reason)
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        for e in &fx.experiment {
            let t = e.taken;
            let Some(memory) = journeys.get(usize::from(t.j)) else {
                continue;
            };
            let Some(step) = engine
                .journey(&memory.id, t.version)
                .and_then(|jr| jr.steps.get(usize::from(t.step)))
            else {
                continue;
            };
            let arm = self
                .journey_mut(&memory.id)
                .arms
                .entry(step.id.clone())
                .or_default()
                .entry((t.version, t.arm))
                .or_default();
            if e.converted {
                arm.converted += 1;
            } else {
                arm.entered += 1;
            }
        }
    }

    /// Adds `sign` (1 or −1) to the waiting count of the step each of the customer's active
    /// instances is at: −1 with the state before an input, +1 with the state after counts the
    /// input's moves.
    pub fn waiting(&mut self, state: &CustomerState, sign: i64) {
        for i in &state.instances {
            let Some(memory) = state.journeys.get(usize::from(i.j)) else {
                continue;
            };
            let w = self
                .journey_mut(&memory.id)
                .waiting
                .entry((i.version, i.step))
                .or_default();
            *w += sign;
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        for (id, theirs) in &other.journeys {
            let mine = self.journey_mut(id);
            mine.entered += theirs.entered;
            mine.goal_reached += theirs.goal_reached;
            for (s, t) in &theirs.steps {
                let m = step_counts(mine, s);
                m.reached += t.reached;
                for (c, n) in &t.sent {
                    *m.sent.entry(c.clone()).or_default() += n;
                }
                for (r, n) in &t.suppressed {
                    *m.suppressed.entry(r.clone()).or_default() += n;
                }
            }
            for (k, n) in &theirs.waiting {
                *mine.waiting.entry(*k).or_default() += n;
            }
            mine.waiting.retain(|_, n| *n != 0);
            for (day, d) in &theirs.days {
                let e = mine.days.entry(*day).or_default();
                e.entered += d.entered;
                e.goal_reached += d.goal_reached;
            }
            mine.prune();
            mine.last_run = mine.last_run.max(theirs.last_run);
            for (s, arms) in &theirs.arms {
                let m = mine.arms.entry(s.clone()).or_default();
                for (k, a) in arms {
                    let e = m.entry(*k).or_default();
                    e.entered += a.entered;
                    e.converted += a.converted;
                }
            }
        }
    }

    /// The experiment document for the journeys of `engine` (every current step and split
    /// arm appears, counted or not; steps only older versions had appear when counted).
    pub fn report(&self, engine: &Engine) -> Report {
        let mut journeys = BTreeMap::new();
        for current in engine.journeys() {
            let id = &current.id;
            let empty = JourneyCounts::default();
            let counts = self.journeys.get(id).unwrap_or(&empty);
            let mut steps: BTreeMap<String, u64> =
                current.steps.iter().map(|s| (s.id.clone(), 0)).collect();
            for (s, n) in &counts.steps {
                if n.reached > 0 || steps.contains_key(s) {
                    *steps.entry(s.clone()).or_default() += n.reached;
                }
            }
            let mut splits = BTreeMap::new();
            for step in &current.steps {
                let StepKind::Split(arms) = &step.kind else {
                    continue;
                };
                // Each counted arm, as (the step it leads to, control) in its version; an arm
                // of a version no longer loaded by its index in the current one.
                let target = |t: journeyd_journey::Target, steps: &[journeyd_journey::Step]| {
                    t.and_then(|t| steps.get(t)).map(|s| s.id.clone())
                };
                let mut by_arm = vec![(0u64, 0u64); arms.len()];
                for (&(version, k), a) in counts.arms.get(&step.id).into_iter().flatten() {
                    let same = engine.journey(id, version).and_then(|jr| {
                        let StepKind::Split(theirs) =
                            &jr.steps.iter().find(|s| s.id == step.id)?.kind
                        else {
                            return None;
                        };
                        let theirs = theirs.get(usize::from(k))?;
                        let key = (target(theirs.next, &jr.steps), theirs.control);
                        arms.iter()
                            .position(|a| (target(a.next, &current.steps), a.control) == key)
                    });
                    let at = same.or_else(|| {
                        (engine.journey(id, version).is_none() && usize::from(k) < arms.len())
                            .then_some(usize::from(k))
                    });
                    if let Some(at) = at {
                        by_arm[at].0 += a.entered;
                        by_arm[at].1 += a.converted;
                    }
                }
                let n = |k: usize| by_arm[k];
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

fn step_counts<'a>(counts: &'a mut JourneyCounts, step: &str) -> &'a mut StepCounts {
    if !counts.steps.contains_key(step) {
        counts.steps.insert(step.to_owned(), StepCounts::default());
    }
    counts.steps.get_mut(step).expect("inserted above")
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// By journey id.
    pub journeys: BTreeMap<String, JourneyReport>,
}

/// One journey's results, summed over its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// In file order.
    pub arms: Vec<Arm>,
}

/// One arm of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    fn days_are_kept_for_a_while_and_add_up() {
        const DAY: i64 = 86_400_000;
        let mut a = JourneyCounts::default();
        a.count_day(-1, |d| d.entered += 1);
        assert_eq!(a.on(-1).entered, 1, "the day before 1970 is day -1");
        a.count_day(10 * DAY, |d| d.entered += 1);
        a.count_day(10 * DAY + 5, |d| d.goal_reached += 1);
        assert_eq!(a.on(10).entered, 1);
        assert_eq!(a.on(10).goal_reached, 1);
        // A day DAYS_KEPT after the latest pushes the oldest out; a day too old is not kept.
        a.count_day((10 + DAYS_KEPT) * DAY, |d| d.entered += 1);
        assert_eq!(a.on(10).entered, 0);
        a.count_day(DAY, |d| d.entered += 1);
        assert_eq!(a.on(1).entered, 0);
        assert_eq!(a.days.len(), 1);
        // Sums add day by day, and keep the latest days.
        let mut total = Counts::default();
        let mut one = Counts::default();
        one.journeys.insert("j".into(), a.clone());
        total.add(&one);
        total.add(&one);
        assert_eq!(total.journeys["j"].on(10 + DAYS_KEPT).entered, 2);
        assert_eq!(Counts::from_bytes(&total.to_bytes()).unwrap(), total);
    }

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
