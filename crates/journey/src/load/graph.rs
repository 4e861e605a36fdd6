//! The checks of a journey's step graph: where each step can go, loops without a wait, steps
//! nothing leads to.

use super::context::*;
use crate::model::*;
use crate::yaml::Node;
use std::collections::VecDeque;

/// Where a step can go next.
pub(super) fn successors(step: &Step) -> Vec<usize> {
    let targets: Vec<Target> = match &step.kind {
        StepKind::Send(_) | StepKind::Update(_) | StepKind::Wait(_) | StepKind::WaitUntil(_) => {
            vec![step.next]
        }
        StepKind::WaitFor(w) => vec![w.on_event, w.on_timeout],
        StepKind::WaitDate(w) => vec![step.next, w.on_past],
        StepKind::Branch(b) => b
            .arms
            .iter()
            .map(|(_, t)| *t)
            .chain([b.otherwise])
            .collect(),
        StepKind::Split(arms) => arms.iter().map(|a| a.next).collect(),
        StepKind::Decide(d) => d
            .options
            .iter()
            .map(|o| o.next)
            .chain([d.otherwise])
            .collect(),
        StepKind::Exit => Vec::new(),
    };
    targets.into_iter().flatten().collect()
}

/// A loop that can come back to a step without passing a wait is an error.
pub(super) fn check_loops(cx: &mut Cx, steps: &[Step], items: &[Node], labels: &[String]) {
    let n = steps.len();
    // Edges between steps that do not wait.
    let edges: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| {
            if s.kind.waits() {
                Vec::new()
            } else if let StepKind::WaitDate(w) = &s.kind {
                // Only its way on at once (the moment has passed) does not wait.
                w.on_past
                    .or(s.next)
                    .into_iter()
                    .filter(|&t| !steps[t].kind.waits())
                    .collect()
            } else {
                successors(s)
                    .into_iter()
                    .filter(|&t| !steps[t].kind.waits())
                    .collect()
            }
        })
        .collect();
    // reach[v]: the steps reachable from v in one or more edges.
    let reach: Vec<Vec<bool>> = (0..n)
        .map(|v| {
            let mut seen = vec![false; n];
            let mut todo: Vec<usize> = edges[v].clone();
            while let Some(u) = todo.pop() {
                if !seen[u] {
                    seen[u] = true;
                    todo.extend(&edges[u]);
                }
            }
            seen
        })
        .collect();
    let mut reported = vec![false; n];
    for start in 0..n {
        if reported[start] || !reach[start][start] {
            continue;
        }
        // Its strongly connected component: every step on a loop with it.
        let scc: Vec<usize> = (0..n)
            .filter(|&u| reach[start][u] && reach[u][start])
            .collect();
        for &u in &scc {
            reported[u] = true;
        }
        // The shortest way round from `start`.
        let mut from = vec![usize::MAX; n];
        let mut queue = VecDeque::from([start]);
        let mut end = None;
        'search: while let Some(u) = queue.pop_front() {
            for &t in &edges[u] {
                if t == start {
                    end = Some(u);
                    break 'search;
                }
                if reach[t][start] && from[t] == usize::MAX {
                    from[t] = u;
                    queue.push_back(t);
                }
            }
        }
        let mut cycle = Vec::new();
        let mut at = end.unwrap_or(start);
        while at != start {
            cycle.push(at);
            at = from[at];
        }
        cycle.push(start);
        cycle.reverse();
        cycle.push(start);
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| {
                if steps[i].id.is_empty() {
                    labels[i].as_str()
                } else {
                    steps[i].id.as_str()
                }
            })
            .collect();
        let msg = format!(
            "{}: this loop never waits: {} (a loop must pass through a wait or wait_for step)",
            labels[start],
            names.join(" -> ")
        );
        cx.error(&items[start], msg);
    }
}

/// Steps no path from the first step leads to are warned about.
pub(super) fn check_reachable(cx: &mut Cx, steps: &[Step], items: &[Node], labels: &[String]) {
    let mut seen = vec![false; steps.len()];
    let mut todo = vec![0];
    while let Some(u) = todo.pop() {
        if !std::mem::replace(&mut seen[u], true) {
            todo.extend(successors(&steps[u]));
        }
    }
    for (i, reached) in seen.iter().enumerate() {
        if !reached {
            let msg = format!("{}: no step leads here, so it never runs", labels[i]);
            cx.warn(&items[i], msg);
        }
    }
}
