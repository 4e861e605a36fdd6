//! Journeys as Mermaid flowcharts.

use journeyd_journey::{format_duration, Journey, Reentry, StepKind, Target, Trigger};
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

fn node(target: Target, journey: &Journey) -> String {
    match target {
        Some(i) => format!("s_{}", journey.steps[i].id),
        None => "finish".to_owned(),
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Renders a journey as a Mermaid flowchart (`flowchart TD`).
pub fn mermaid(j: &Journey) -> String {
    let mut out = String::new();
    let title = j.name.as_deref().unwrap_or(&j.id);
    let _ = writeln!(
        out,
        "---\ntitle: \"{} (v{})\"\n---",
        label(title),
        j.version
    );
    let _ = writeln!(out, "flowchart TD");
    let trigger = match &j.entry.trigger {
        Trigger::Event(e) => format!("on {e}"),
        Trigger::Inactivity { event, after } => {
            format!("no {event} for {}", format_duration(*after))
        }
        Trigger::Audience { at, every } => {
            let first = journeyd_types::time::format_rfc3339(*at);
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
    let _ = writeln!(out, "    entry([\"{}\"])", label(&entry));
    if !j.steps.is_empty() {
        let _ = writeln!(out, "    entry --> {}", node(Some(0), j));
    }
    let mut uses_finish = j.steps.is_empty();
    for step in &j.steps {
        let id = format!("s_{}", step.id);
        let name = &step.id;
        let mut edges: Vec<(Option<String>, Target)> = Vec::new();
        let shape = match &step.kind {
            StepKind::Send(s) => {
                edges.push((None, step.next));
                let mut text = format!("{name}\nsend {}: {}", s.channel, s.template);
                if !s.cancel_on.is_empty() {
                    let _ = write!(text, "\ncancel on {}", s.cancel_on.join(", "));
                }
                format!("[\"{}\"]", label(&text))
            }
            StepKind::Wait(d) => {
                edges.push((None, step.next));
                format!(
                    "[/\"{}\"/]",
                    label(&format!("{name}\nwait {}", format_duration(*d)))
                )
            }
            StepKind::WaitUntil(w) => {
                edges.push((None, step.next));
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
                format!("[/\"{}\"/]", label(&text))
            }
            StepKind::WaitDate(w) => {
                edges.push((None, step.next));
                if w.on_past.is_some() {
                    edges.push((Some("date passed".to_owned()), w.on_past));
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
                format!("[/\"{}\"/]", label(&text))
            }
            StepKind::WaitFor(w) => {
                edges.push((Some(w.events.join(" / ")), w.on_event));
                edges.push((
                    Some(format!("timeout {}", format_duration(w.timeout))),
                    w.on_timeout,
                ));
                let mut text = format!("{name}\nwait for {}", w.events.join(", "));
                if let Some(c) = &w.condition {
                    let _ = write!(text, "\nif {}", c.source());
                }
                format!("{{{{\"{}\"}}}}", label(&text))
            }
            StepKind::Branch(b) => {
                for (cond, t) in &b.arms {
                    edges.push((Some(cond.source().to_owned()), *t));
                }
                edges.push((Some("else".to_owned()), b.otherwise));
                format!("{{\"{}\"}}", label(&format!("{name}\nbranch")))
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
                    edges.push((Some(text), o.next));
                }
                edges.push((Some("else".to_owned()), d.otherwise));
                format!(
                    "{{\"{}\"}}",
                    label(&format!("{name}\ndecide: highest score"))
                )
            }
            StepKind::Split(arms) => {
                let total: u32 = arms.iter().map(|a| a.weight).sum();
                for a in arms {
                    let pct = f64::from(a.weight) * 100.0 / f64::from(total.max(1));
                    let control = if a.control { ", control" } else { "" };
                    edges.push((Some(format!("{} ({pct:.0}%){control}", a.weight)), a.next));
                }
                format!("{{\"{}\"}}", label(&format!("{name}\nsplit")))
            }
            StepKind::Update(attrs) => {
                edges.push((None, step.next));
                let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "[[\"{}\"]]",
                    label(&format!("{name}\nupdate {}", names.join(", ")))
                )
            }
            StepKind::Exit => format!("([\"{}\"])", label(&format!("{name}\nexit"))),
        };
        let _ = writeln!(out, "    {id}{shape}");
        for (text, target) in edges {
            uses_finish |= target.is_none();
            match text {
                Some(t) => {
                    let _ = writeln!(out, "    {id} -- \"{}\" --> {}", label(&t), node(target, j));
                }
                None => {
                    let _ = writeln!(out, "    {id} --> {}", node(target, j));
                }
            }
        }
    }
    if uses_finish {
        let _ = writeln!(out, "    finish((end))");
    }
    if !j.exit_on.is_empty() || j.goal.is_some() {
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
        let _ = writeln!(out, "    rules>\"{}\"]", label(&notes.join("\n")));
    }
    out
}
