//! Event files: one JSON event a line, or a control line that changes a journey's status
//! (contract v2): `{"control":"pause","journey":"promo","at":"2026-01-06T00:00:00Z"}`.

use journeyd_engine::Status;
use journeyd_types::{time, Event, Millis};

/// A line that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub message: String,
}

/// Reads an event file: valid events with their line numbers, and the bad lines. Blank lines
/// and lines starting with `#` or `//` are skipped.
pub fn read_events(text: &str) -> (Vec<(usize, Event)>, Vec<BadLine>) {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        match Event::from_json(line) {
            Ok(e) => events.push((i + 1, e)),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    (events, bad)
}

/// A control line: a journey's status changes at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The journey id.
    pub journey: String,
    /// The new status (`pause` → paused, `drain` → draining, `stop` → stopped, `resume` →
    /// running).
    pub status: Status,
    /// When.
    pub at: Millis,
}

/// One line of an events file.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A touchpoint event.
    Event(Event),
    /// A journey status change.
    Control(Control),
}

impl Line {
    /// When it happens.
    pub fn at(&self) -> Millis {
        match self {
            Line::Event(e) => e.occurred_at,
            Line::Control(c) => c.at,
        }
    }
}

fn control(line: &str) -> Option<Result<Control, String>> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    let word = object.get("control")?;
    Some((|| {
        let status = match word.as_str() {
            Some("pause") => Status::Paused,
            Some("drain") => Status::Draining,
            Some("stop") => Status::Stopped,
            Some("resume") => Status::Running,
            _ => {
                return Err(format!(
                    "unknown control {word}: a control line says pause, resume, drain or stop"
                ))
            }
        };
        let journey = object
            .get("journey")
            .and_then(serde_json::Value::as_str)
            .filter(|j| !j.is_empty())
            .ok_or("a control line needs \"journey\": the journey id")?
            .to_owned();
        let at = object
            .get("at")
            .and_then(serde_json::Value::as_str)
            .ok_or("a control line needs \"at\": an RFC 3339 time")?;
        let at = time::parse_rfc3339(at).map_err(|e| format!("at: {e}"))?;
        for key in object.keys() {
            if !matches!(key.as_str(), "control" | "journey" | "at") {
                return Err(format!(
                    "unknown field \"{key}\" in a control line (control, journey, at)"
                ));
            }
        }
        Ok(Control {
            journey,
            status,
            at,
        })
    })())
}

/// Reads an events file with control lines: the lines with their line numbers, and the bad
/// lines (an unknown control word is one).
pub fn read_inputs(text: &str) -> (Vec<(usize, Line)>, Vec<BadLine>) {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let parsed = match control(line) {
            Some(c) => c.map(Line::Control),
            None => Event::from_json(line)
                .map(Line::Event)
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(l) => lines.push((i + 1, l)),
            Err(message) => bad.push(BadLine {
                line: i + 1,
                message,
            }),
        }
    }
    (lines, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_bad_lines_with_numbers_and_keeps_the_rest() {
        let text = "{\"event_id\":\"e1\",\"customer_id\":\"c1\",\"type\":\"signup\",\"occurred_at\":\"2026-01-05T09:00:00Z\"}\n\
                    not json\n\
                    \n\
                    # a comment\n\
                    {\"event_id\":\"e2\",\"customer_id\":\"c1\",\"type\":\"x\",\"occurred_at\":\"soon\"}\n\
                    {\"event_id\":\"e3\",\"customer_id\":\"c1\",\"type\":\"login\",\"occurred_at\":\"2026-01-05T10:00:00Z\"}\n";
        let (events, bad) = read_events(text);
        assert_eq!(
            events
                .iter()
                .map(|(l, e)| (*l, e.event_id.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "e1"), (6, "e3")]
        );
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 5]);
        assert!(bad[1].message.contains("RFC 3339"));
    }

    #[test]
    fn control_lines_are_read_and_bad_ones_reported() {
        let text = concat!(
            "{\"control\":\"pause\",\"journey\":\"promo\",\"at\":\"2026-01-06T00:00:00Z\"}\n",
            "{\"control\":\"freeze\",\"journey\":\"promo\",\"at\":\"2026-01-06T00:00:00Z\"}\n",
            "{\"control\":\"stop\",\"at\":\"2026-01-06T00:00:00Z\"}\n",
            "{\"event_id\":\"e1\",\"customer_id\":\"c1\",\"type\":\"signup\",\"occurred_at\":\"2026-01-06T09:00:00Z\"}\n",
            "{\"control\":\"resume\",\"journey\":\"promo\",\"at\":\"2026-01-07T00:00:00Z\"}\n",
        );
        let (lines, bad) = read_inputs(text);
        let kinds: Vec<(usize, Option<Status>)> = lines
            .iter()
            .map(|(n, l)| match l {
                Line::Control(c) => (*n, Some(c.status)),
                Line::Event(_) => (*n, None),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (1, Some(Status::Paused)),
                (4, None),
                (5, Some(Status::Running))
            ]
        );
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3]);
        assert!(
            bad[0].message.contains("pause, resume, drain or stop"),
            "{bad:?}"
        );
        assert!(bad[1].message.contains("journey"), "{bad:?}");
    }
}
