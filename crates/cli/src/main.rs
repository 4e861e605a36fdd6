//! `journey`: the journey designer's command line. Validate, simulate, test and graph journeys
//! before they ship; `journey schema` gives editors a JSON Schema of journey files.

mod diff;
mod graph;

/// Prints a line to standard output; when the reader has gone (`journey test DIR | head`),
/// stops quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use journeyd_engine::Engine;
use journeyd_journey::{load_dir, load_sources, Diagnostic, Error as LoadError, Severity};
use journeyd_simulator::{read_inputs, testing, Line, Simulator};
use journeyd_types::time;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "journey", version, about = "Validate, simulate, test and graph journeyd journeys.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks every journey and the policies file in a folder.
    ///
    /// Exit 0 and a one-line summary when all is valid (warnings, such as unreachable steps,
    /// are printed but do not fail). Otherwise exit 1 and one line per problem:
    /// `FILE:LINE:COL: error: MESSAGE`.
    Validate {
        /// The journeys folder (its `*.yaml` / `*.yml` files; sub-folders are not loaded).
        dir: PathBuf,
    },
    /// Runs the engine over an event file on a virtual clock and prints the actions.
    ///
    /// The events file holds one JSON event a line, in time order:
    /// {"event_id":"e1","customer_id":"c1","type":"signup","channel":"web",
    ///  "occurred_at":"2026-01-05T09:00:00Z","attributes":{"plan":"basic"}}
    /// or a control line that changes a journey's status at its place in time:
    /// {"control":"pause","journey":"promo","at":"2026-01-06T00:00:00Z"} (pause, resume,
    /// drain or stop).
    /// Before each event the clock advances to its time, firing due timers in due order.
    /// Prints one JSON action a line, with `at`, the virtual time of emission. Bad lines are
    /// reported on stderr with their line number and skipped; the exit code is then 2.
    Simulate {
        /// The journeys folder.
        #[arg(long)]
        journeys: PathBuf,
        /// The events file (`-` for standard input).
        #[arg(long)]
        events: PathBuf,
        /// After the last event, advance the clock to this time (RFC 3339) and fire what is due.
        #[arg(long)]
        until: Option<String>,
        /// Also write the experiment results (entries, goals, steps reached, split arms with
        /// rate, lift and p-value against the control) to this file, as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Runs the same events through two journey folders and prints every action one run has
    /// and the other lacks: the review of a journey change on recorded events.
    ///
    /// One JSON object a line, the action's fields and `"diff": "-"` (only in the base folder)
    /// or `"+"` (only in the new one). Actions are compared on at, kind, customer_id, journey,
    /// step, channel, template, vars and reason (not on action_id or journey_version). A
    /// summary goes to stderr. Exit 0 when nothing differs, 1 when something does, 2 on bad
    /// input (an invalid folder, an unreadable events file, bad event lines).
    Diff {
        /// The journeys folder before the change.
        #[arg(long)]
        base: PathBuf,
        /// The journeys folder after the change.
        #[arg(long)]
        journeys: PathBuf,
        /// The events file (`-` for standard input), as for `journey simulate`.
        #[arg(long)]
        events: PathBuf,
        /// After the last event, advance both clocks to this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Runs the journey tests in DIR/tests/ against the journeys in DIR.
    ///
    /// Prints each test's result, the details of each failure (expected and actual actions and
    /// the customers' history), and `N passed, M failed`. Exit 1 when a test fails or a test file
    /// is invalid.
    Test {
        /// The journeys folder (tests are read from its `tests/` sub-folder).
        dir: PathBuf,
    },
    /// Prints a journey as a Mermaid flowchart.
    ///
    /// Paste the output into any Mermaid renderer (GitHub and GitLab render ```mermaid blocks in
    /// Markdown), or `mmdc -i journey.mmd -o journey.svg`.
    Graph {
        /// The journey file.
        file: PathBuf,
    },
    /// Prints the JSON Schema of journey and policies files, for editors.
    ///
    /// Save it next to the journeys folder (`journey schema > journey.schema.json`), then, with
    /// the YAML language server (VS Code's YAML extension, Neovim, Helix, ...), put
    /// `# yaml-language-server: $schema=../journey.schema.json` at the top of a journey file, or
    /// map `journeys/*.yaml` to the schema in the editor's settings. See docs/journeys.md.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { dir } => validate(&dir),
        Command::Simulate {
            journeys,
            events,
            until,
            report,
        } => simulate(&journeys, &events, until.as_deref(), report.as_deref()),
        Command::Diff {
            base,
            journeys,
            events,
            until,
        } => diff_folders(&base, &journeys, &events, until.as_deref()),
        Command::Test { dir } => test(&dir),
        Command::Graph { file } => graph_file(&file),
        Command::Schema => {
            let schema = journeyd_journey::json_schema();
            say!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let pipe = Some(std::io::ErrorKind::BrokenPipe);
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
                    || c.downcast_ref::<serde_json::Error>()
                        .and_then(serde_json::Error::io_error_kind)
                        == pipe
            });
            if broken_pipe {
                // The reader has gone (`journey simulate ... | head`): nothing more to say.
                return ExitCode::SUCCESS;
            }
            eprintln!("journey: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        say!("{d}");
    }
}

/// Loads a folder; on failure prints the problems and returns `None`.
fn load(dir: &Path) -> Result<Option<journeyd_journey::Loaded>> {
    match load_dir(dir) {
        Ok(loaded) => Ok(Some(loaded)),
        Err(LoadError::Invalid(diags)) => {
            print_diagnostics(&diags);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn validate(dir: &Path) -> Result<ExitCode> {
    let Some(loaded) = load(dir)? else {
        return Ok(ExitCode::from(1));
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let n = loaded.catalog.journeys.len();
    say!(
        "{}: {n} journey{} valid{}{}",
        dir.display(),
        if n == 1 { "" } else { "s" },
        if loaded.policies_file.is_some() {
            ", policies valid"
        } else {
            ", no policies file"
        },
        match loaded.warnings.len() {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            w => format!(", {w} warnings"),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn simulate(
    journeys: &Path,
    events: &Path,
    until: Option<&str>,
    report: Option<&Path>,
) -> Result<ExitCode> {
    let Some(loaded) = load(journeys)? else {
        return Ok(ExitCode::from(1));
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let until = until
        .map(time::parse_rfc3339)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--until")?;
    let text = if events.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading events from standard input")?;
        s
    } else {
        std::fs::read_to_string(events)
            .with_context(|| format!("cannot read {}", events.display()))?
    };
    let name = events.display().to_string();
    let (parsed, bad) = read_inputs(&text);
    let mut bad_lines: Vec<(usize, String)> =
        bad.into_iter().map(|b| (b.line, b.message)).collect();
    let mut sim = Simulator::new(Arc::new(Engine::new(loaded.catalog)));
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let print = |emitted: Vec<journeyd_simulator::Emitted>, out: &mut BufWriter<_>| -> Result<()> {
        for e in emitted {
            serde_json::to_writer(&mut *out, &e)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    for (line, input) in parsed {
        let done = match &input {
            Line::Event(event) => sim.push(event),
            Line::Control(c) => sim.control(c),
        };
        match done {
            Ok(emitted) => print(emitted, &mut out)?,
            Err(e) => bad_lines.push((line, e.to_string())),
        }
    }
    if let Some(t) = until {
        let emitted = sim.advance_to(t);
        print(emitted, &mut out)?;
    }
    out.flush()?;
    if let Some(path) = report {
        let text = serde_json::to_string_pretty(&sim.report())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    bad_lines.sort();
    for (line, message) in &bad_lines {
        eprintln!("{name}:{line}: error: {message} (line skipped)");
    }
    Ok(if bad_lines.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Reads an events file, or standard input for `-`.
fn read_text(events: &Path) -> Result<String> {
    if events.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading events from standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(events).with_context(|| format!("cannot read {}", events.display()))
    }
}

fn diff_folders(
    base: &Path,
    journeys: &Path,
    events: &Path,
    until: Option<&str>,
) -> Result<ExitCode> {
    let bad_input = ExitCode::from(2);
    let (Some(old), Some(new)) = (load(base)?, load(journeys)?) else {
        eprintln!("journey: diff needs two valid journey folders (the problems are above)");
        return Ok(bad_input);
    };
    let until = match until.map(time::parse_rfc3339).transpose() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("journey: error: --until: {e}");
            return Ok(bad_input);
        }
    };
    let text = match read_text(events) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("journey: error: {e:#}");
            return Ok(bad_input);
        }
    };
    let name = events.display().to_string();
    let (parsed, bad) = read_inputs(&text);
    let mut bad_lines: Vec<(usize, String)> =
        bad.into_iter().map(|b| (b.line, b.message)).collect();
    let mut old_sim = Simulator::new(Arc::new(Engine::new(old.catalog)));
    let mut new_sim = Simulator::new(Arc::new(Engine::new(new.catalog)));
    let (d, refused) = diff::diff(&mut old_sim, &mut new_sim, &parsed, until);
    bad_lines.extend(refused);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for line in &d.lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    bad_lines.sort();
    for (line, message) in &bad_lines {
        eprintln!("{name}:{line}: error: {message} (line skipped)");
    }
    eprintln!(
        "journey diff: {} customer{} differ; {} action{} added, {} removed ({} events)",
        d.customers.len(),
        if d.customers.len() == 1 { "" } else { "s" },
        d.added,
        if d.added == 1 { "" } else { "s" },
        d.removed,
        parsed.len()
    );
    Ok(if !bad_lines.is_empty() {
        bad_input
    } else if d.lines.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn test(dir: &Path) -> Result<ExitCode> {
    let Some(loaded) = load(dir)? else {
        return Ok(ExitCode::from(1));
    };
    let engine = Arc::new(Engine::new(loaded.catalog));
    let tests_dir = dir.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&tests_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", tests_dir.display())),
    };
    files.sort();
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, 0usize);
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = match testing::parse_test_file(file, &text) {
            Ok(p) => p,
            Err(diags) => {
                print_diagnostics(&diags);
                invalid += 1;
                continue;
            }
        };
        for (i, case) in parsed.tests.iter().enumerate() {
            match testing::run_case(&engine, case, i) {
                Ok(outcome) => match outcome.failure {
                    None => {
                        passed += 1;
                        say!("ok      {}: {}", file.display(), outcome.name);
                    }
                    Some(details) => {
                        failed += 1;
                        say!("FAILED  {}: {}\n{details}", file.display(), outcome.name);
                    }
                },
                Err(e) => {
                    invalid += 1;
                    let d = parsed.place_of_test(file, i, Severity::Error, &e.0);
                    say!("{d}");
                }
            }
        }
    }
    if files.is_empty() {
        say!("no test files in {}", tests_dir.display());
    }
    let invalid_note = if invalid > 0 {
        format!(" ({invalid} invalid)")
    } else {
        String::new()
    };
    say!("{passed} passed, {} failed{invalid_note}", failed + invalid);
    Ok(if failed + invalid > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn graph_file(file: &Path) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match load_sources(&[(file.to_path_buf(), text)]) {
        Ok(loaded) => match loaded.catalog.journeys.first() {
            Some(j) => {
                print!("{}", graph::mermaid(j));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "{}: not a journey file (its top-level key is not `journey:`)",
                    file.display()
                );
                Ok(ExitCode::from(1))
            }
        },
        Err(LoadError::Invalid(diags)) => {
            print_diagnostics(&diags);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
