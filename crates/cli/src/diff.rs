//! `journey diff`: the same events through two journey folders, and every action one run has
//! and the other lacks. The review of a journey change on recorded events.

use journeyd_simulator::{Emitted, Line, Simulator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The fields actions are compared on (not `action_id` nor `journey_version`, which a new
/// version changes for every action).
const COMPARED: [&str; 9] = [
    "at",
    "kind",
    "customer_id",
    "journey",
    "step",
    "channel",
    "template",
    "vars",
    "reason",
];

/// What differs between two runs.
#[derive(Debug, Default)]
pub struct Diff {
    /// One JSON object per action one run has and the other lacks, with `"diff": "-"` (only in
    /// the base) or `"+"` (only in the new folder), in time order.
    pub lines: Vec<Value>,
    /// The customers whose actions differ.
    pub customers: BTreeSet<String>,
    /// Actions only in the new run.
    pub added: usize,
    /// Actions only in the base run.
    pub removed: usize,
}

/// Runs `events` and control lines (in time order, with their line numbers) through both simulators, then
/// advances both to `until`. Returns the difference, and the lines either simulator refused.
pub fn diff(
    base: &mut Simulator,
    new: &mut Simulator,
    events: &[(usize, Line)],
    until: Option<i64>,
) -> (Diff, Vec<(usize, String)>) {
    let mut old_out = Vec::new();
    let mut new_out = Vec::new();
    let mut bad = Vec::new();
    for (line, input) in events {
        let run = |sim: &mut Simulator| match input {
            Line::Event(e) => sim.push(e),
            Line::Control(c) => sim.control(c),
        };
        match (run(base), run(new)) {
            (Ok(a), Ok(b)) => {
                old_out.extend(a);
                new_out.extend(b);
            }
            (Err(e), _) | (_, Err(e)) => bad.push((*line, e.to_string())),
        }
    }
    if let Some(t) = until {
        old_out.extend(base.advance_to(t));
        new_out.extend(new.advance_to(t));
    }
    (compare(&old_out, &new_out), bad)
}

/// The key an action is compared on, and its time and JSON form.
fn keyed(e: &Emitted) -> (String, (i64, Value)) {
    let json = serde_json::to_value(e).unwrap_or(Value::Null);
    let key: BTreeMap<&str, &Value> = COMPARED
        .iter()
        .filter_map(|k| json.get(*k).map(|v| (*k, v)))
        .collect();
    (
        serde_json::to_string(&key).unwrap_or_default(),
        (e.at, json),
    )
}

/// Every action of one list the other lacks (as multisets: a repeated action counts as many
/// times as it comes).
pub fn compare(base: &[Emitted], new: &[Emitted]) -> Diff {
    type Timed = (i64, Value);
    let mut counts: BTreeMap<String, (Vec<Timed>, Vec<Timed>)> = BTreeMap::new();
    for e in base {
        let (k, v) = keyed(e);
        counts.entry(k).or_default().0.push(v);
    }
    for e in new {
        let (k, v) = keyed(e);
        counts.entry(k).or_default().1.push(v);
    }
    let mut out = Diff::default();
    let mut lines: Vec<Timed> = Vec::new();
    for (_, (olds, news)) in counts {
        let (sign, extra) = if olds.len() > news.len() {
            ("-", olds[news.len()..].to_vec())
        } else {
            ("+", news[olds.len()..].to_vec())
        };
        for (at, mut v) in extra {
            if let Some(c) = v.get("customer_id").and_then(Value::as_str) {
                out.customers.insert(c.to_owned());
            }
            if sign == "-" {
                out.removed += 1;
            } else {
                out.added += 1;
            }
            if let Value::Object(m) = &mut v {
                m.insert("diff".into(), Value::from(sign));
            }
            lines.push((at, v));
        }
    }
    let field = |v: &Value, k: &str| v.get(k).map(ToString::to_string).unwrap_or_default();
    lines.sort_by_key(|(at, v)| {
        (
            *at,
            field(v, "customer_id"),
            field(v, "journey"),
            field(v, "step"),
            field(v, "diff"),
        )
    });
    out.lines = lines.into_iter().map(|(_, v)| v).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_types::{Action, ActionKind, Attributes};

    fn emitted(customer: &str, step: &str, at: i64, id: &str, version: u32) -> Emitted {
        Emitted {
            action: Action {
                action_id: id.into(),
                kind: ActionKind::Send,
                customer_id: customer.into(),
                journey: "j".into(),
                journey_version: version,
                step: step.into(),
                channel: "email".into(),
                template: "t".into(),
                vars: Attributes::new(),
                cancels: None,
                reason: None,
                created_at: at,
                expires_at: None,
            },
            at,
        }
    }

    #[test]
    fn actions_differ_on_their_content_not_on_their_id_or_version() {
        let base = [
            emitted("a", "s1", 0, "x1", 1),
            emitted("b", "s1", 0, "x2", 1),
            emitted("b", "s1", 0, "x3", 1),
        ];
        let new = [
            emitted("a", "s1", 0, "y1", 2),
            emitted("b", "s1", 0, "y2", 2),
            emitted("c", "s2", 5, "y3", 2),
        ];
        let d = compare(&base, &new);
        assert_eq!((d.added, d.removed), (1, 1));
        let signs: Vec<(String, String)> = d
            .lines
            .iter()
            .map(|v| (v["diff"].to_string(), v["customer_id"].to_string()))
            .collect();
        assert_eq!(
            signs,
            [
                ("\"-\"".to_owned(), "\"b\"".to_owned()),
                ("\"+\"".to_owned(), "\"c\"".to_owned())
            ]
        );
        assert_eq!(
            d.customers.into_iter().collect::<Vec<_>>(),
            ["b".to_owned(), "c".to_owned()]
        );
        assert!(compare(&base, &base).lines.is_empty());
    }
}
