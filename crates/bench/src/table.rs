//! The one table the harness prints: a row per figure, each next to the limit it was measured
//! against in the same run, the ratio, the target and a verdict.

use std::fmt::Write as _;

/// Whether a figure meets its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Meets the target.
    Pass,
    /// Misses the target.
    Fail,
    /// No target: for information.
    Info,
    /// Not measured, and why (the harness could not run it here: a missing broker binary).
    NotRun(String),
    /// Not measured because the measurement failed: the harness has rotted, or the service
    /// broke. The run exits non-zero.
    Error(String),
}

impl Verdict {
    /// `Pass` when `ok`, else `Fail`.
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }

    fn cell(&self) -> String {
        match self {
            Verdict::Pass => "pass".into(),
            Verdict::Fail => "**FAIL**".into(),
            Verdict::Info => "info".into(),
            Verdict::NotRun(why) => format!("not run: {why}"),
            Verdict::Error(why) => format!("**ERROR**: {why}"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which row of the issue (`engine`, `engine + RocksDB`, ...) and which figure.
    pub name: String,
    /// The figure.
    pub measured: String,
    /// What it was measured against in the same run (or the target when there is no limit).
    pub limit: String,
    /// measured / limit, when it means something.
    pub ratio: String,
    /// The target of the issue.
    pub target: String,
    /// The verdict.
    pub verdict: Verdict,
}

impl Row {
    /// A row with no limit and no target.
    pub fn info(name: impl Into<String>, measured: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            measured: measured.into(),
            limit: "–".into(),
            ratio: "–".into(),
            target: "–".into(),
            verdict: Verdict::Info,
        }
    }

    /// A row that could not be measured here.
    pub fn not_run(name: impl Into<String>, why: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            measured: "–".into(),
            limit: "–".into(),
            ratio: "–".into(),
            target: "–".into(),
            verdict: Verdict::NotRun(why.into()),
        }
    }

    /// A row whose measurement failed.
    pub fn error(name: impl Into<String>, error: &anyhow::Error) -> Row {
        Row {
            verdict: Verdict::Error(format!("{error:#}")),
            ..Row::not_run(name, "")
        }
    }
}

/// The rows, plus a note per row group saying what limits it.
#[derive(Debug, Default)]
pub struct Table {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// `(row group, what its limit is and why)`.
    pub notes: Vec<(String, String)>,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Table {
    /// Adds rows.
    pub fn extend(&mut self, rows: impl IntoIterator<Item = Row>) {
        self.rows.extend(rows);
    }

    /// How many rows failed to measure.
    pub fn errors(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Error(_)))
            .count()
    }

    /// Adds a note.
    pub fn note(&mut self, group: &str, text: impl Into<String>) {
        self.notes.push((group.to_owned(), text.into()));
    }

    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| row | measured | limit / baseline (same run) | ratio | target | verdict |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&r.name),
                cell(&r.measured),
                cell(&r.limit),
                cell(&r.ratio),
                cell(&r.target),
                cell(&r.verdict.cell())
            );
        }
        s
    }

    /// The notes in Markdown (one bullet per row group).
    pub fn notes_markdown(&self) -> String {
        let mut s = String::new();
        for (group, text) in &self.notes {
            let _ = writeln!(s, "- **{group}**: {text}");
        }
        s
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A ratio as a percentage.
pub fn percent(r: f64) -> String {
    if r.is_finite() {
        format!("{:.0}%", r * 100.0)
    } else {
        "–".into()
    }
}

/// Bytes, human-readable.
pub fn bytes(b: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 10.0 * MIB {
        format!("{:.0} MiB", b / MIB)
    } else if b >= 10.0 * 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(percent(0.5), "50%");
        assert_eq!(bytes(200.0), "200 B");
        assert_eq!(bytes(64.0 * 1024.0 * 1024.0), "64 MiB");
    }

    #[test]
    fn a_table_has_one_line_per_row() {
        let mut t = Table::default();
        t.extend([Row::info("a|b", "1"), Row::not_run("c", "why")]);
        let md = t.markdown();
        assert_eq!(md.lines().count(), 4);
        assert!(md.contains("a\\|b"));
        assert!(md.contains("not run: why"));
    }
}
