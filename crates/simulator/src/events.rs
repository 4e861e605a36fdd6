//! Event files: one JSON event a line.

use journeyd_types::Event;

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
}
