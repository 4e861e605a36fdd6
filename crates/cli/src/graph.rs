//! Journeys as Mermaid flowcharts, from the graph the web page draws too.

use journeyd_journey::graph::{Graph, NodeKind, END, ENTRY};
use journeyd_journey::Journey;
use std::fmt::Write as _;

/// Escapes text for a quoted Mermaid label.
fn escape(text: &str) -> String {
    text.replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// A label of several lines: each escaped, joined with Mermaid line breaks.
fn label(text: &str) -> String {
    text.split('\n')
        .map(escape)
        .collect::<Vec<_>>()
        .join("<br/>")
}

/// A node's Mermaid id.
fn node(id: &str) -> String {
    match id {
        ENTRY => "entry".to_owned(),
        END => "finish".to_owned(),
        step => format!("s_{step}"),
    }
}

/// Renders a journey as a Mermaid flowchart (`flowchart TD`).
pub fn mermaid(j: &Journey) -> String {
    let graph = Graph::of(j);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\ntitle: \"{} (v{})\"\n---",
        label(&graph.title),
        j.version
    );
    let _ = writeln!(out, "flowchart TD");
    let mut finish = false;
    for n in &graph.nodes {
        let text = label(&n.label);
        let shape = match n.kind {
            NodeKind::Entry => format!("([\"{text}\"])"),
            NodeKind::Send => format!("[\"{text}\"]"),
            NodeKind::Wait | NodeKind::WaitUntil | NodeKind::WaitDate => {
                format!("[/\"{text}\"/]")
            }
            NodeKind::WaitFor => format!("{{{{\"{text}\"}}}}"),
            NodeKind::Branch | NodeKind::Decide | NodeKind::Split => format!("{{\"{text}\"}}"),
            NodeKind::Update => format!("[[\"{text}\"]]"),
            NodeKind::Exit => format!("([\"{text}\"])"),
            NodeKind::End => {
                finish = true;
                continue;
            }
        };
        let id = node(&n.id);
        let _ = writeln!(out, "    {id}{shape}");
        for e in graph.edges.iter().filter(|e| e.from == n.id) {
            match &e.label {
                Some(t) => {
                    let _ = writeln!(out, "    {id} -- \"{}\" --> {}", label(t), node(&e.to));
                }
                None => {
                    let _ = writeln!(out, "    {id} --> {}", node(&e.to));
                }
            }
        }
    }
    if finish {
        let _ = writeln!(out, "    finish((end))");
    }
    if !graph.notes.is_empty() {
        let _ = writeln!(out, "    rules>\"{}\"]", label(&graph.notes.join("\n")));
    }
    out
}
