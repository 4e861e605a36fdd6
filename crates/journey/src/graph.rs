//! A journey as a graph: its entry, its steps and the end, each with a label, and the edges
//! between them with theirs. `journey graph` renders it as Mermaid; the web page draws it.

use crate::{format_duration, Journey, Reentry, StepKind, Target, Trigger};
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt::Write as _;

/// The id of the entry node (no step id has parentheses).
pub const ENTRY: &str = "(entry)";
/// The id of the end node.
pub const END: &str = "(end)";

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// How customers enter.
    Entry,
    /// A `send` step.
    Send,
    /// A `wait` step.
    Wait,
    /// A `wait_until` step.
    WaitUntil,
    /// A `wait_until_date` step.
    WaitDate,
    /// A `wait_for` step.
    WaitFor,
    /// A `branch` step.
    Branch,
    /// A `decide` step.
    Decide,
    /// A `split` step.
    Split,
    /// An `update` step.
    Update,
    /// An `exit` step.
    Exit,
    /// Past the last step.
    End,
}

impl NodeKind {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Entry => "entry",
            NodeKind::Send => "send",
            NodeKind::Wait => "wait",
            NodeKind::WaitUntil => "wait_until",
            NodeKind::WaitDate => "wait_date",
            NodeKind::WaitFor => "wait_for",
            NodeKind::Branch => "branch",
            NodeKind::Decide => "decide",
            NodeKind::Split => "split",
            NodeKind::Update => "update",
            NodeKind::Exit => "exit",
            NodeKind::End => "finish",
        }
    }
}

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The step id, or [`ENTRY`] or [`END`].
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its label, lines separated by `\n` (a step's first line is its id).
    pub label: String,
}

/// One edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The node it leaves.
    pub from: String,
    /// The node it goes to.
    pub to: String,
    /// Its label (a condition, an arm), if any.
    pub label: Option<String>,
}

/// A journey as a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The title: the journey's name, else its id.
    pub title: String,
    /// The entry, then the steps in file order, then the end when an edge goes there.
    pub nodes: Vec<Node>,
    /// Grouped by the node they leave, in node order.
    pub edges: Vec<Edge>,
    /// Rules that apply to the whole journey (`exit on`, the goal).
    pub notes: Vec<String>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn rfc3339(t: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(t) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => format!("{t}ms"),
    }
}

fn target(t: Target, j: &Journey) -> String {
    match t {
        Some(i) => j.steps[i].id.clone(),
        None => END.to_owned(),
    }
}

impl Graph {
    /// The graph of a journey.
    pub fn of(j: &Journey) -> Graph {
        let mut nodes = Vec::with_capacity(j.steps.len() + 2);
        let mut edges = Vec::new();
        let trigger = match &j.entry.trigger {
            Trigger::Event(e) => format!("on {e}"),
            Trigger::Inactivity { event, after } => {
                format!("no {event} for {}", format_duration(*after))
            }
            Trigger::Audience { at, every } => {
                let first = rfc3339(*at);
                match every {
                    Some(d) => format!("audience from {first}, every {}", format_duration(*d)),
                    None => format!("audience at {first}"),
                }
            }
        };
        let mut entry = format!("entry: {trigger}");
        if let Some(c) = &j.entry.condition {
            let _ = write!(entry, "\nif {}", c.source());
        }
        match j.entry.reentry {
            Reentry::Never => {}
            Reentry::Always => entry.push_str("\nreentry: always"),
            Reentry::Cooldown(d) => {
                let _ = write!(entry, "\nreentry after {}", format_duration(d));
            }
        }
        nodes.push(Node {
            id: ENTRY.to_owned(),
            kind: NodeKind::Entry,
            label: entry,
        });
        let mut uses_end = j.steps.is_empty();
        if !j.steps.is_empty() {
            edges.push(Edge {
                from: ENTRY.to_owned(),
                to: target(Some(0), j),
                label: None,
            });
        }
        for step in &j.steps {
            let name = &step.id;
            let mut out: Vec<(Option<String>, Target)> = Vec::new();
            let (kind, label) = match &step.kind {
                StepKind::Send(s) => {
                    out.push((None, step.next));
                    let mut text = format!("{name}\nsend {}: {}", s.channel, s.template);
                    if !s.cancel_on.is_empty() {
                        let _ = write!(text, "\ncancel on {}", s.cancel_on.join(", "));
                    }
                    (NodeKind::Send, text)
                }
                StepKind::Wait(d) => {
                    out.push((None, step.next));
                    (
                        NodeKind::Wait,
                        format!("{name}\nwait {}", format_duration(*d)),
                    )
                }
                StepKind::WaitUntil(w) => {
                    out.push((None, step.next));
                    let days: Vec<&str> = (0..7)
                        .filter(|b| w.days & (1 << b) != 0)
                        .map(|b| DAYS[b])
                        .collect();
                    let days = if days.len() == 7 {
                        String::new()
                    } else {
                        format!(" on {}", days.join(", "))
                    };
                    let text = format!(
                        "{name}\nwait until {:02}:{:02}{days}",
                        w.minute_of_day / 60,
                        w.minute_of_day % 60
                    );
                    (NodeKind::WaitUntil, text)
                }
                StepKind::WaitDate(w) => {
                    out.push((None, step.next));
                    if w.on_past.is_some() {
                        out.push((Some("date passed".to_owned()), w.on_past));
                    }
                    let offset = match w.offset_days {
                        0 => String::new(),
                        d if d < 0 => format!(" {d}d"),
                        d => format!(" +{d}d"),
                    };
                    let text = format!(
                        "{name}\nwait until {}{offset} at {:02}:{:02}",
                        w.date.source(),
                        w.minute_of_day / 60,
                        w.minute_of_day % 60
                    );
                    (NodeKind::WaitDate, text)
                }
                StepKind::WaitFor(w) => {
                    out.push((Some(w.events.join(" / ")), w.on_event));
                    out.push((
                        Some(format!("timeout {}", format_duration(w.timeout))),
                        w.on_timeout,
                    ));
                    let mut text = format!("{name}\nwait for {}", w.events.join(", "));
                    if let Some(c) = &w.condition {
                        let _ = write!(text, "\nif {}", c.source());
                    }
                    (NodeKind::WaitFor, text)
                }
                StepKind::Branch(b) => {
                    for (cond, t) in &b.arms {
                        out.push((Some(cond.source().to_owned()), *t));
                    }
                    out.push((Some("else".to_owned()), b.otherwise));
                    (NodeKind::Branch, format!("{name}\nbranch"))
                }
                StepKind::Decide(d) => {
                    for o in &d.options {
                        let mut text = match &o.condition {
                            Some(c) => format!("if {}", c.source()),
                            None => "always".to_owned(),
                        };
                        if let Some(s) = &o.score {
                            let _ = write!(text, ", score {}", s.source());
                        }
                        out.push((Some(text), o.next));
                    }
                    out.push((Some("else".to_owned()), d.otherwise));
                    (NodeKind::Decide, format!("{name}\ndecide: highest score"))
                }
                StepKind::Split(arms) => {
                    let total: u32 = arms.iter().map(|a| a.weight).sum();
                    for a in arms {
                        let pct = f64::from(a.weight) * 100.0 / f64::from(total.max(1));
                        let control = if a.control { ", control" } else { "" };
                        out.push((Some(format!("{} ({pct:.0}%){control}", a.weight)), a.next));
                    }
                    (NodeKind::Split, format!("{name}\nsplit"))
                }
                StepKind::Update(attrs) => {
                    out.push((None, step.next));
                    let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
                    (
                        NodeKind::Update,
                        format!("{name}\nupdate {}", names.join(", ")),
                    )
                }
                StepKind::Exit => (NodeKind::Exit, format!("{name}\nexit")),
            };
            nodes.push(Node {
                id: name.clone(),
                kind,
                label,
            });
            for (label, t) in out {
                uses_end |= t.is_none();
                edges.push(Edge {
                    from: name.clone(),
                    to: target(t, j),
                    label,
                });
            }
        }
        if uses_end {
            nodes.push(Node {
                id: END.to_owned(),
                kind: NodeKind::End,
                label: "end".to_owned(),
            });
        }
        let mut notes = Vec::new();
        if !j.exit_on.is_empty() {
            notes.push(format!("exit on {}", j.exit_on.join(", ")));
        }
        if let Some(g) = &j.goal {
            notes.push(format!(
                "goal: {} within {}",
                g.event,
                format_duration(g.within)
            ));
        }
        Graph {
            title: j.name.clone().unwrap_or_else(|| j.id.clone()),
            nodes,
            edges,
            notes,
        }
    }

    /// The graph as JSON: `{"title", "nodes": [{"id", "kind", "label"}], "edges": [{"from",
    /// "to", "label"}], "notes"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "title": self.title,
            "nodes": self.nodes.iter().map(|n| serde_json::json!({
                "id": n.id,
                "kind": n.kind.as_str(),
                "label": n.label,
            })).collect::<Vec<_>>(),
            "edges": self.edges.iter().map(|e| serde_json::json!({
                "from": e.from,
                "to": e.to,
                "label": e.label,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}
