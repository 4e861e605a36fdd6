//! From files to a [`Catalog`]: every problem of every file is collected, never only the first.

use crate::diag::{Diagnostic, Severity};
use crate::duration::parse_duration;
use crate::expr::Expr;
use crate::model::*;
use crate::yaml::{self, Kind, Node};
use crate::Error;
use cel::common::ast::{EntryExpr, Expr as Ast};
use cel::IdedExpr;
use chrono_tz::Tz;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded folder: the catalog and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The journeys and the policies.
    pub catalog: Catalog,
    /// The policies file, when the folder has one.
    pub policies_file: Option<PathBuf>,
    /// Problems that do not stop the files from loading (unreachable steps), sorted by place.
    pub warnings: Vec<Diagnostic>,
}

/// Reads every `*.yaml` / `*.yml` file directly in `dir` (sorted by name; sub-folders such as
/// `tests/` and other files are skipped), then loads them with [`load_sources`].
pub fn load_dir(dir: &Path) -> Result<Loaded, Error> {
    let io = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // `metadata` follows symbolic links: a link to a file is loaded, a folder is not.
        if yaml
            && std::fs::metadata(&path)
                .map_err(|e| io(&path, e))?
                .is_file()
        {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        files.push((path, text));
    }
    load_sources(&files)
}

/// Loads journey and policies files already in memory, in the order given (the first of two
/// journeys with the same id, or of two policies files, is the one kept in messages).
/// Returns the catalog when no file has an error; otherwise every error and warning, sorted by
/// file, line and column.
pub fn load_sources(files: &[(PathBuf, String)]) -> Result<Loaded, Error> {
    let mut diags = Vec::new();
    let mut journeys: Vec<Arc<Journey>> = Vec::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let mut policies: Option<(Policies, PathBuf)> = None;
    for (path, text) in files {
        let mut cx = Cx {
            file: path.clone(),
            diags: Vec::new(),
        };
        let (root, yaml_errors) = yaml::parse(text);
        let fatal = root.is_none() && !yaml_errors.is_empty();
        for e in yaml_errors {
            cx.push(e.line, e.col, Severity::Error, e.message);
        }
        match root {
            None if !fatal => cx.push(
                1,
                1,
                Severity::Error,
                "the file is empty: a journey file starts with `journey: ID`, the policies file \
                 with `policies:`"
                    .into(),
            ),
            None => {}
            Some(root) => {
                if root.get("journey").is_some() {
                    let (journey, id_node) = load_journey(&mut cx, &root);
                    if let Some(id_node) = id_node {
                        if let Some(first) = ids.get(&journey.id) {
                            let msg = format!(
                                "journey \"{}\" is already defined in {}",
                                journey.id,
                                first.display()
                            );
                            cx.error(id_node, msg);
                        } else {
                            ids.insert(journey.id.clone(), path.clone());
                        }
                    }
                    journeys.push(Arc::new(journey));
                } else if root.get("policies").is_some() {
                    let loaded = load_policies(&mut cx, &root);
                    if let Some((_, first)) = &policies {
                        let key = key_node(&root, "policies").unwrap_or(&root);
                        let msg = format!(
                            "policies are already defined in {} (keep a single policies file)",
                            first.display()
                        );
                        cx.error(key, msg);
                    } else {
                        policies = Some((loaded, path.clone()));
                    }
                } else {
                    let found = match root.map() {
                        Some(pairs) if !pairs.is_empty() => {
                            format!("found {}", pairs[0].0.describe())
                        }
                        _ => format!("found {}", root.describe()),
                    };
                    let msg = format!(
                        "expected a top-level `journey:` key (a journey) or `policies:` key (the \
                         contact policies), {found}"
                    );
                    cx.error(&root, msg);
                }
            }
        }
        diags.extend(cx.diags);
    }
    diags.sort_by(|a: &Diagnostic, b: &Diagnostic| {
        (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col))
    });
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(Error::Invalid(diags));
    }
    journeys.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let (policies, policies_file) = match policies {
        Some((p, file)) => (p, Some(file)),
        None => (Policies::default(), None),
    };
    Ok(Loaded {
        catalog: Catalog { journeys, policies },
        policies_file,
        warnings: diags,
    })
}

// ----------------------------------------------------------------------------------------------
// Diagnostics and typed reads of nodes

/// The problems of one file.
struct Cx {
    file: PathBuf,
    diags: Vec<Diagnostic>,
}

/// `ctx: rest`, or `rest` at the top level.
fn say(ctx: &str, rest: impl std::fmt::Display) -> String {
    if ctx.is_empty() {
        rest.to_string()
    } else {
        format!("{ctx}: {rest}")
    }
}

fn key_node<'n>(map: &'n Node, key: &str) -> Option<&'n Node> {
    map.map()?
        .iter()
        .find(|(k, _)| k.scalar() == Some(key))
        .map(|(k, _)| k)
}

fn valid_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Cx {
    fn push(&mut self, line: usize, col: usize, severity: Severity, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            severity,
            message,
        });
    }

    fn error(&mut self, node: &Node, message: String) {
        self.push(node.line, node.col, Severity::Error, message);
    }

    /// An error at `node` whose message starts with its context (`step "x": ...`).
    fn error_in(&mut self, node: &Node, ctx: &str, rest: impl std::fmt::Display) {
        self.error(node, say(ctx, rest));
    }

    fn warn(&mut self, node: &Node, message: String) {
        self.push(node.line, node.col, Severity::Warning, message);
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    /// The pairs of a mapping whose keys must all be among `allowed` (`path` names the mapping;
    /// empty at the top level).
    fn fields<'n>(
        &mut self,
        ctx: &str,
        path: &str,
        node: &'n Node,
        allowed: &[&str],
    ) -> Option<&'n [(Node, Node)]> {
        let Some(pairs) = node.map() else {
            let found = node.describe();
            let msg = if path.is_empty() || path == ctx {
                format!("{ctx} must be a mapping, found {found}")
            } else {
                say(ctx, format!("{path} must be a mapping, found {found}"))
            };
            self.error(node, msg);
            return None;
        };
        for (k, _) in pairs {
            match k.scalar() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => {
                    let msg = if allowed.is_empty() {
                        format!("unknown field \"{name}\" ({path} takes no fields)")
                    } else {
                        format!(
                            "unknown field \"{name}\" (expected one of: {})",
                            allowed.join(", ")
                        )
                    };
                    self.error(k, say(ctx, msg));
                }
                None => {
                    self.error_in(
                        k,
                        ctx,
                        format!("a key must be a name, found {}", k.describe()),
                    );
                }
            }
        }
        Some(pairs)
    }

    /// A required value: reports its absence at the parent mapping.
    fn required<'n>(
        &mut self,
        ctx: &str,
        path: &str,
        parent: &Node,
        value: Option<&'n Node>,
    ) -> Option<&'n Node> {
        if value.is_none() {
            self.error(parent, say(ctx, format!("{path} is required")));
        }
        value
    }

    /// Non-empty text.
    fn text(&mut self, ctx: &str, path: &str, node: &Node, what: &str) -> Option<String> {
        match node.scalar() {
            Some(text) if !text.trim().is_empty() => Some(text.to_owned()),
            _ => {
                self.error_in(
                    node,
                    ctx,
                    format!("{path} must be {what}, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A list of non-empty names (event types, channels).
    fn names(&mut self, ctx: &str, path: &str, node: &Node, what: &str) -> Vec<String> {
        let Some(items) = node.seq() else {
            self.error_in(
                node,
                ctx,
                format!(
                    "{path} must be a list of {what}, such as [a, b], found {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let one = what.strip_suffix('s').unwrap_or(what);
            if let Some(text) = self.text(ctx, &format!("{path}[{i}]"), item, &format!("a {one}")) {
                out.push(text);
            }
        }
        out
    }

    fn duration(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Millis> {
        let Some(text) = node.scalar() else {
            self.error_in(
                node,
                ctx,
                format!(
                    "{path} must be a duration such as 3d or 1d12h, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        match parse_duration(text) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.error(node, say(ctx, format!("{path}: {e}")));
                None
            }
        }
    }

    /// A positive whole number that fits in a `u32`.
    fn positive(&mut self, ctx: &str, path: &str, node: &Node) -> Option<u32> {
        match node.int() {
            Some(n) if n > 0 && n <= i64::from(u32::MAX) => Some(n as u32),
            _ => {
                self.error_in(
                    node,
                    ctx,
                    format!(
                        "{path} must be a positive whole number, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn category(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Category> {
        match node.scalar() {
            Some("marketing") => Some(Category::Marketing),
            Some("service") => Some(Category::Service),
            _ => {
                self.error_in(
                    node,
                    ctx,
                    format!(
                        "{path} must be marketing or service, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// `"HH:MM"` as minutes after midnight.
    fn time_of_day(&mut self, ctx: &str, path: &str, node: &Node) -> Option<u16> {
        let parsed = node.scalar().and_then(|text| {
            let (h, m) = text.split_once(':')?;
            let digits = |s: &str, max_len| {
                (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u16>().ok())
                    .flatten()
            };
            let (h, m) = (digits(h, 2)?, digits(m, 2)?);
            (h < 24 && m < 60 && text.len() - text.find(':')? == 3).then_some(h * 60 + m)
        });
        if parsed.is_none() {
            self.error_in(
                node,
                ctx,
                format!(
                    "{path} must be a time of day \"HH:MM\" from 00:00 to 23:59, found {}",
                    node.describe()
                ),
            );
        }
        parsed
    }

    /// A CEL expression that sees only `event` and `profile`.
    fn expr(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Expr> {
        let Some(text) = node.scalar() else {
            self.error_in(
                node,
                ctx,
                format!("{path} must be a CEL expression, found {}", node.describe()),
            );
            return None;
        };
        match Expr::compile(text) {
            Err(why) => {
                let words = text.trim().contains(' ')
                    && !text.contains([
                        '"', '\'', '=', '<', '>', '(', '[', '{', '+', '*', '/', '%', '&', '|',
                    ])
                    && !text.starts_with("event.")
                    && !text.starts_with("profile.");
                let hint = if words {
                    format!(" (to write a string, quote it inside the YAML: '\"{text}\"')")
                } else {
                    String::new()
                };
                self.error_in(
                    node,
                    ctx,
                    format!("{path}: not a valid CEL expression: {why}{hint}"),
                );
                None
            }
            Ok(expr) => {
                let mut unknown = Vec::new();
                free_variables(expr.program().expression(), &mut Vec::new(), &mut unknown);
                let mut bad = false;
                let mut reported: Vec<&str> = Vec::new();
                for name in &unknown {
                    if reported.contains(&name.as_str()) {
                        continue;
                    }
                    reported.push(name);
                    bad = true;
                    self.error_in(
                        node,
                        ctx,
                        format!(
                            "{path}: unknown variable \"{name}\" (conditions see only event and \
                             profile; write a string as '\"{name}\"')"
                        ),
                    );
                }
                (!bad).then_some(expr)
            }
        }
    }

    /// A step id naming a step of the journey.
    fn target(
        &mut self,
        ctx: &str,
        path: &str,
        node: &Node,
        ids: &HashMap<String, usize>,
    ) -> Option<usize> {
        let Some(id) = node.scalar() else {
            self.error_in(
                node,
                ctx,
                format!("{path} must be a step id, found {}", node.describe()),
            );
            return None;
        };
        match ids.get(id) {
            Some(&index) => Some(index),
            None => {
                self.error(node, say(ctx, format!("{path}: unknown step \"{id}\"")));
                None
            }
        }
    }
}

/// Type names a CEL expression may use as values (`type(x) == int`).
const CEL_TYPES: [&str; 11] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// Namespaces of CEL extension functions (`math.greatest(a, b)`).
const CEL_NAMESPACES: [&str; 6] = ["base64", "lists", "math", "optional", "sets", "strings"];

/// Collects the identifiers an expression reads that are not `event`, `profile`, a type name or
/// a variable bound by a macro (`list.exists(x, x > 1)`).
fn free_variables(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    let free = |name: &str, bound: &Vec<String>| {
        !name.starts_with('@')
            && !matches!(name, "event" | "profile")
            && !CEL_TYPES.contains(&name)
            && !bound.iter().any(|b| b == name)
    };
    match &e.expr {
        Ast::Unspecified | Ast::Literal(_) => {}
        Ast::Ident(name) => {
            if free(name, bound) {
                out.push(name.clone());
            }
        }
        Ast::Select(select) => free_variables(&select.operand, bound, out),
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                let namespace = matches!(&target.expr, Ast::Ident(n)
                    if CEL_NAMESPACES.contains(&n.as_str()) && free(n, bound));
                if !namespace {
                    free_variables(target, bound, out);
                }
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Ast::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            free_variables(&c.loop_cond, bound, out);
            free_variables(&c.loop_step, bound, out);
            free_variables(&c.result, bound, out);
            bound.truncate(depth);
        }
        Ast::List(list) => {
            for item in &list.elements {
                free_variables(item, bound, out);
            }
        }
        Ast::Map(map) => {
            for entry in &map.entries {
                entry_variables(&entry.expr, bound, out);
            }
        }
        Ast::Struct(s) => {
            for entry in &s.entries {
                entry_variables(&entry.expr, bound, out);
            }
        }
    }
}

fn entry_variables(entry: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match entry {
        EntryExpr::StructField(field) => free_variables(&field.value, bound, out),
        EntryExpr::MapEntry(entry) => {
            free_variables(&entry.key, bound, out);
            free_variables(&entry.value, bound, out);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Journeys

const JOURNEY_FIELDS: [&str; 9] = [
    "journey", "version", "name", "priority", "category", "entry", "exit", "goal", "steps",
];
const ENTRY_FIELDS: [&str; 4] = ["event", "inactivity", "if", "reentry"];
const STEP_KINDS: [&str; 7] = [
    "send", "wait", "wait_for", "branch", "split", "update", "exit",
];
const STEP_FIELDS: [&str; 9] = [
    "id", "send", "wait", "wait_for", "branch", "split", "update", "exit", "next",
];

/// Converts a journey file. Always returns a journey (with stand-ins where the file is wrong:
/// it is used only when the file has no error), and the id node when the id is valid.
fn load_journey<'n>(cx: &mut Cx, root: &'n Node) -> (Journey, Option<&'n Node>) {
    let pairs = cx.fields("", "", root, &JOURNEY_FIELDS).unwrap_or(&[]);
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };

    let mut id = String::new();
    let mut id_node = None;
    if let Some(node) = get("journey") {
        match node.scalar() {
            Some(text) if valid_id(text) => {
                id = text.to_owned();
                id_node = Some(node);
            }
            _ => cx.error(
                node,
                format!(
                    "journey must be the journey id: lowercase letters, digits and _, starting \
                     with a letter ([a-z][a-z0-9_]*), found {}",
                    node.describe()
                ),
            ),
        }
    }

    let mut version = 1;
    if let Some(node) = cx.required("", "version", root, get("version")) {
        version = cx.positive("", "version", node).unwrap_or(1);
    }
    let name = get("name").and_then(|node| match node.scalar() {
        Some(text) => Some(text.to_owned()),
        None => {
            cx.error(
                node,
                format!("name must be text, found {}", node.describe()),
            );
            None
        }
    });
    let priority = get("priority").map_or(0, |node| {
        node.int().unwrap_or_else(|| {
            cx.error(
                node,
                format!("priority must be a whole number, found {}", node.describe()),
            );
            0
        })
    });
    let category = get("category")
        .and_then(|node| cx.category("", "category", node))
        .unwrap_or(Category::Marketing);

    let entry = match cx.required("", "entry", root, get("entry")) {
        Some(node) => load_entry(cx, node),
        None => None,
    };

    let mut exit_on = Vec::new();
    if let Some(node) = get("exit") {
        if let Some(fields) = cx.fields("exit", "exit", node, &["on"]) {
            let on = fields.iter().find(|(k, _)| k.scalar() == Some("on"));
            if let Some(on) = cx.required("exit", "on", node, on.map(|(_, v)| v)) {
                exit_on = cx.names("exit", "on", on, "event types");
            }
        }
    }

    let mut goal = None;
    if let Some(node) = get("goal") {
        if let Some(fields) = cx.fields("goal", "goal", node, &["event", "within"]) {
            let f = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.scalar() == Some(key))
                    .map(|(_, v)| v)
            };
            let event = cx
                .required("goal", "event", node, f("event"))
                .and_then(|n| cx.text("goal", "event", n, "an event type"));
            let within = cx
                .required("goal", "within", node, f("within"))
                .and_then(|n| cx.duration("goal", "within", n));
            if let (Some(event), Some(within)) = (event, within) {
                goal = Some(Goal { event, within });
            }
        }
    }

    let steps = match cx.required("", "steps", root, get("steps")) {
        Some(node) => load_steps(cx, node),
        None => Vec::new(),
    };
    let steps_use_event = steps.iter().any(step_uses_event);

    let journey = Journey {
        id,
        version,
        name,
        priority,
        category,
        entry: entry.unwrap_or(Entry {
            trigger: Trigger::Event(String::new()),
            condition: None,
            reentry: Reentry::Never,
        }),
        exit_on,
        goal,
        steps,
        file: cx.file.clone(),
        digest: xxhash_rust::xxh3::xxh3_64(root.canonical().as_bytes()),
        steps_use_event,
    };
    (journey, id_node)
}

fn load_entry(cx: &mut Cx, node: &Node) -> Option<Entry> {
    const CTX: &str = "entry";
    let fields = cx.fields(CTX, "entry", node, &ENTRY_FIELDS)?;
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };
    let trigger = match (get("event"), get("inactivity")) {
        (Some(event), None) => cx
            .text(CTX, "event", event, "an event type")
            .map(Trigger::Event),
        (None, Some(inactivity)) => cx
            .fields(CTX, "inactivity", inactivity, &["event", "for"])
            .and_then(|fields| {
                let f = |key: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k.scalar() == Some(key))
                        .map(|(_, v)| v)
                };
                let event = cx
                    .required(CTX, "inactivity.event", inactivity, f("event"))
                    .and_then(|n| cx.text(CTX, "inactivity.event", n, "an event type"));
                let after = cx
                    .required(CTX, "inactivity.for", inactivity, f("for"))
                    .and_then(|n| cx.duration(CTX, "inactivity.for", n));
                Some(Trigger::Inactivity {
                    event: event?,
                    after: after?,
                })
            }),
        _ => {
            cx.error(
                node,
                say(CTX, "give exactly one of \"event\" or \"inactivity\""),
            );
            None
        }
    };
    let condition = get("if").and_then(|n| cx.expr(CTX, "if", n));
    let reentry = match get("reentry") {
        None => Some(Reentry::Never),
        Some(n) => match n.scalar() {
            Some("never") => Some(Reentry::Never),
            Some("always") => Some(Reentry::Always),
            Some(text) if parse_duration(text).is_ok() => {
                parse_duration(text).ok().map(Reentry::Cooldown)
            }
            _ => {
                cx.error_in(n, CTX, format!(
                        "reentry must be never, always or a cooldown duration such as 90d, found {}",
                        n.describe()
                    ),
                );
                None
            }
        },
    };
    Some(Entry {
        trigger: trigger?,
        condition,
        reentry: reentry?,
    })
}

fn step_uses_event(step: &Step) -> bool {
    match &step.kind {
        StepKind::Send(send) => send.vars.iter().any(|(_, e)| e.uses_event()),
        StepKind::WaitFor(w) => w.condition.as_ref().is_some_and(Expr::uses_event),
        StepKind::Branch(b) => b.arms.iter().any(|(e, _)| e.uses_event()),
        StepKind::Update(attrs) => attrs.iter().any(|(_, e)| e.uses_event()),
        StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::Split(_) | StepKind::Exit => false,
    }
}

/// Where a step can go next.
fn successors(step: &Step) -> Vec<usize> {
    let targets: Vec<Target> = match &step.kind {
        StepKind::Send(_) | StepKind::Update(_) | StepKind::Wait(_) | StepKind::WaitUntil(_) => {
            vec![step.next]
        }
        StepKind::WaitFor(w) => vec![w.on_event, w.on_timeout],
        StepKind::Branch(b) => b
            .arms
            .iter()
            .map(|(_, t)| *t)
            .chain([b.otherwise])
            .collect(),
        StepKind::Split(arms) => arms.iter().map(|a| a.next).collect(),
        StepKind::Exit => Vec::new(),
    };
    targets.into_iter().flatten().collect()
}

fn load_steps(cx: &mut Cx, node: &Node) -> Vec<Step> {
    let Some(items) = node.seq() else {
        cx.error(
            node,
            format!("steps must be a list of steps, found {}", node.describe()),
        );
        return Vec::new();
    };
    if items.is_empty() {
        cx.error(node, "steps must list at least one step".into());
        return Vec::new();
    }

    // First the ids, so that targets can name later steps.
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut labels = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut label = format!("step #{}", i + 1);
        if let Some(id_node) = item.get("id") {
            match id_node.scalar() {
                Some(id) if valid_id(id) => {
                    label = format!("step \"{id}\"");
                    if let Some(&first) = ids.get(id) {
                        let msg = format!(
                            "{label}: the id is already used by the step on line {}",
                            items[first].line
                        );
                        cx.error(id_node, msg);
                    } else {
                        ids.insert(id.to_owned(), i);
                    }
                }
                _ => {
                    let msg = format!(
                        "{label}: id must be lowercase letters, digits and _, starting with a \
                         letter ([a-z][a-z0-9_]*), found {}",
                        id_node.describe()
                    );
                    cx.error(id_node, msg);
                }
            }
        }
        labels.push(label);
    }

    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ctx = labels[i].as_str();
        let fallback = i + 1 < items.len();
        let step = load_step(cx, ctx, item, &ids, fallback.then_some(i + 1));
        steps.push(step.unwrap_or(Step {
            id: String::new(),
            kind: StepKind::Exit,
            next: None,
        }));
    }

    check_loops(cx, &steps, items, &labels);
    if !cx.has_errors() {
        check_reachable(cx, &steps, items, &labels);
    }
    steps
}

fn load_step(
    cx: &mut Cx,
    ctx: &str,
    item: &Node,
    ids: &HashMap<String, usize>,
    following: Target,
) -> Option<Step> {
    let Some(fields) = item.map() else {
        cx.error_in(
            item,
            ctx,
            format!(
                "a step must be a mapping with an id and one of {}, found {}",
                STEP_KINDS.join(", "),
                item.describe()
            ),
        );
        return None;
    };
    cx.fields(ctx, "", item, &STEP_FIELDS);
    let get = |key: &str| fields.iter().find(|(k, _)| k.scalar() == Some(key));

    let id = cx
        .required(ctx, "id", item, get("id").map(|(_, v)| v))
        .and_then(|n| n.scalar())
        .filter(|id| valid_id(id))
        .unwrap_or_default()
        .to_owned();

    let kinds: Vec<&(Node, Node)> = fields
        .iter()
        .filter(|(k, _)| k.scalar().is_some_and(|k| STEP_KINDS.contains(&k)))
        .collect();
    let kind = match kinds.as_slice() {
        [] => {
            cx.error_in(
                item,
                ctx,
                format!("give exactly one of {}", STEP_KINDS.join(", ")),
            );
            None
        }
        [(k, v)] => Some((k.scalar().unwrap_or_default(), v)),
        [(first, _), (second, _), ..] => {
            cx.error_in(
                second,
                ctx,
                format!(
                    "give only one of {}: found \"{}\" and \"{}\"",
                    STEP_KINDS.join(", "),
                    first.scalar().unwrap_or_default(),
                    second.scalar().unwrap_or_default()
                ),
            );
            None
        }
    };

    let mut next = following;
    if let Some((next_key, next_node)) = get("next") {
        match kind {
            Some((kind_key @ ("branch" | "split" | "exit"), _)) => {
                let article = if kind_key == "exit" { "an" } else { "a" };
                cx.error_in(
                    next_key,
                    ctx,
                    format!(
                        "next is not allowed on {article} {kind_key} step (it chooses its own \
                         successor)"
                    ),
                );
            }
            _ => next = cx.target(ctx, "next", next_node, ids),
        }
    }
    let (kind_key, kind_node) = kind?;

    let kind = match kind_key {
        "send" => load_send(cx, ctx, kind_node).map(StepKind::Send),
        "wait" => load_wait(cx, ctx, kind_node),
        "wait_for" => load_wait_for(cx, ctx, kind_node, ids, next).map(StepKind::WaitFor),
        "branch" => load_branch(cx, ctx, kind_node, ids).map(StepKind::Branch),
        "split" => load_split(cx, ctx, kind_node, ids).map(StepKind::Split),
        "update" => load_update(cx, ctx, kind_node).map(StepKind::Update),
        _ => {
            if !matches!(kind_node.kind, Kind::Null) {
                cx.fields(ctx, "exit", kind_node, &[]);
            }
            Some(StepKind::Exit)
        }
    };
    Some(Step {
        id,
        kind: kind?,
        next,
    })
}

fn load_send(cx: &mut Cx, ctx: &str, node: &Node) -> Option<Send> {
    let fields = cx.fields(
        ctx,
        "send",
        node,
        &["channel", "template", "ttl", "cancel_on", "vars"],
    )?;
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };
    let channel = cx
        .required(ctx, "send.channel", node, get("channel"))
        .and_then(|n| cx.text(ctx, "send.channel", n, "a channel name"));
    let template = cx
        .required(ctx, "send.template", node, get("template"))
        .and_then(|n| cx.text(ctx, "send.template", n, "a template name"));
    let ttl = match get("ttl") {
        Some(n) => cx.duration(ctx, "send.ttl", n),
        None => Some(DEFAULT_TTL),
    };
    let cancel_on = get("cancel_on")
        .map(|n| cx.names(ctx, "send.cancel_on", n, "event types"))
        .unwrap_or_default();
    let mut vars = Vec::new();
    let mut vars_ok = true;
    if let Some(n) = get("vars") {
        match n.map() {
            Some(pairs) => {
                for (k, v) in pairs {
                    let Some(name) = cx.text(ctx, "send.vars key", k, "a name") else {
                        vars_ok = false;
                        continue;
                    };
                    match cx.expr(ctx, &format!("vars.{name}"), v) {
                        Some(e) => vars.push((name, e)),
                        None => vars_ok = false,
                    }
                }
            }
            None => {
                cx.error_in(
                    n,
                    ctx,
                    format!(
                        "send.vars must be a mapping of names to CEL expressions, found {}",
                        n.describe()
                    ),
                );
                vars_ok = false;
            }
        }
    }
    vars_ok.then_some(())?;
    Some(Send {
        channel: channel?,
        template: template?,
        ttl: ttl?,
        cancel_on,
        vars,
    })
}

fn load_wait(cx: &mut Cx, ctx: &str, node: &Node) -> Option<StepKind> {
    match &node.kind {
        Kind::Scalar { .. } => cx.duration(ctx, "wait", node).map(StepKind::Wait),
        Kind::Map(_) => {
            let fields = cx.fields(ctx, "wait", node, &["until", "days"])?;
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.scalar() == Some(key))
                    .map(|(_, v)| v)
            };
            let minute_of_day = cx
                .required(ctx, "wait.until", node, get("until"))
                .and_then(|n| cx.time_of_day(ctx, "wait.until", n));
            let days = match get("days") {
                None => Some(0x7f),
                Some(n) => load_days(cx, ctx, n),
            };
            Some(StepKind::WaitUntil(WaitUntil {
                minute_of_day: minute_of_day?,
                days: days?,
            }))
        }
        _ => {
            cx.error_in(node, ctx, format!(
                    "wait must be a duration such as 3d, or {{until: \"HH:MM\", days: [mon, ...]}}, \
                     found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn load_days(cx: &mut Cx, ctx: &str, node: &Node) -> Option<u8> {
    let wrong = |cx: &mut Cx, n: &Node| {
        cx.error_in(
            n,
            ctx,
            format!(
                "wait.days must be a list of days among {}, found {}",
                DAYS.join(", "),
                n.describe()
            ),
        );
    };
    let Some(items) = node.seq().filter(|items| !items.is_empty()) else {
        wrong(cx, node);
        return None;
    };
    let mut days = 0u8;
    let mut ok = true;
    for item in items {
        let day = item
            .scalar()
            .and_then(|d| DAYS.iter().position(|name| d.eq_ignore_ascii_case(name)));
        match day {
            Some(bit) => days |= 1 << bit,
            None => {
                wrong(cx, item);
                ok = false;
            }
        }
    }
    ok.then_some(days)
}

fn load_wait_for(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
    next: Target,
) -> Option<WaitFor> {
    let fields = cx.fields(
        ctx,
        "wait_for",
        node,
        &["events", "if", "timeout", "on_event", "on_timeout"],
    )?;
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };
    let events = cx
        .required(ctx, "wait_for.events", node, get("events"))
        .map(|n| {
            let events = cx.names(ctx, "wait_for.events", n, "event types");
            if events.is_empty() && n.seq().is_some_and(<[Node]>::is_empty) {
                cx.error_in(n, ctx, "wait_for.events must list at least one event type");
            }
            events
        })
        .filter(|events| !events.is_empty());
    let mut condition_ok = true;
    let condition = get("if").and_then(|n| {
        let e = cx.expr(ctx, "wait_for.if", n);
        condition_ok = e.is_some();
        e
    });
    let timeout = cx
        .required(ctx, "wait_for.timeout", node, get("timeout"))
        .and_then(|n| cx.duration(ctx, "wait_for.timeout", n));
    let mut target = |key: &str| match get(key) {
        None => Some(next),
        Some(n) => cx.target(ctx, &format!("wait_for.{key}"), n, ids).map(Some),
    };
    let on_event = target("on_event");
    let on_timeout = target("on_timeout");
    condition_ok.then_some(())?;
    Some(WaitFor {
        events: events?,
        condition,
        timeout: timeout?,
        on_event: on_event?,
        on_timeout: on_timeout?,
    })
}

fn load_branch(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
) -> Option<Branch> {
    let Some(items) = node.seq().filter(|items| !items.is_empty()) else {
        cx.error_in(
            node,
            ctx,
            format!(
                "branch must be a list of {{if: CONDITION, next: STEP}} arms ending with \
                 {{else: STEP}}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut arms = Vec::new();
    let mut otherwise = None;
    let mut ok = true;
    let last = items.len() - 1;
    for (i, item) in items.iter().enumerate() {
        let path = format!("branch[{i}]");
        let Some(fields) = cx.fields(ctx, &path, item, &["if", "next", "else"]) else {
            ok = false;
            continue;
        };
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v)
        };
        if let Some(else_node) = get("else") {
            if get("if").is_some() || get("next").is_some() {
                cx.error_in(
                    item,
                    ctx,
                    format!("{path}: an arm is either {{if, next}} or {{else}} alone"),
                );
                ok = false;
            } else if i != last {
                cx.error(item, say(ctx, format!("{path}: else must be the last arm")));
                ok = false;
            }
            match cx.target(ctx, &format!("{path}.else"), else_node, ids) {
                Some(t) if i == last => otherwise = Some(t),
                Some(_) => {}
                None => ok = false,
            }
            continue;
        }
        let condition = cx
            .required(ctx, &format!("{path}.if"), item, get("if"))
            .and_then(|n| cx.expr(ctx, &format!("{path}.if"), n));
        let target = cx
            .required(ctx, &format!("{path}.next"), item, get("next"))
            .and_then(|n| cx.target(ctx, &format!("{path}.next"), n, ids));
        match (condition, target) {
            (Some(c), Some(t)) => arms.push((c, Some(t))),
            _ => ok = false,
        }
        if i == last {
            cx.error_in(
                item,
                ctx,
                "branch: the last arm must be {else: STEP} (it says where to go when no \
                 condition holds)",
            );
            ok = false;
        }
    }
    ok.then_some(())?;
    Some(Branch {
        arms,
        otherwise: Some(otherwise?),
    })
}

fn load_split(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
) -> Option<Vec<SplitArm>> {
    let Some(items) = node.seq().filter(|items| !items.is_empty()) else {
        cx.error_in(
            node,
            ctx,
            format!(
                "split must be a list of {{weight: N, next: STEP}} arms, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut arms = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("split[{i}]");
        let Some(fields) = cx.fields(ctx, &path, item, &["weight", "next"]) else {
            ok = false;
            continue;
        };
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v)
        };
        let weight = cx
            .required(ctx, &format!("{path}.weight"), item, get("weight"))
            .and_then(|n| cx.positive(ctx, &format!("{path}.weight"), n));
        let next = cx
            .required(ctx, &format!("{path}.next"), item, get("next"))
            .and_then(|n| cx.target(ctx, &format!("{path}.next"), n, ids));
        match (weight, next) {
            (Some(weight), Some(next)) => arms.push(SplitArm {
                weight,
                next: Some(next),
            }),
            _ => ok = false,
        }
    }
    ok.then_some(arms)
}

fn load_update(cx: &mut Cx, ctx: &str, node: &Node) -> Option<Vec<(String, Expr)>> {
    let Some(pairs) = node.map().filter(|pairs| !pairs.is_empty()) else {
        cx.error_in(
            node,
            ctx,
            format!(
                "update must be a mapping of profile attributes to CEL expressions, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (k, v) in pairs {
        let Some(name) = cx.text(ctx, "update key", k, "an attribute name") else {
            ok = false;
            continue;
        };
        match cx.expr(ctx, &format!("update.{name}"), v) {
            Some(e) => out.push((name, e)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A loop that can come back to a step without passing a wait is an error.
fn check_loops(cx: &mut Cx, steps: &[Step], items: &[Node], labels: &[String]) {
    let n = steps.len();
    // Edges between steps that do not wait.
    let edges: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| {
            if s.kind.waits() {
                Vec::new()
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
fn check_reachable(cx: &mut Cx, steps: &[Step], items: &[Node], labels: &[String]) {
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

// ----------------------------------------------------------------------------------------------
// Policies

fn load_policies(cx: &mut Cx, root: &Node) -> Policies {
    const CTX: &str = "policies";
    let mut policies = Policies::default();
    cx.fields("", "", root, &["policies"]);
    let Some(node) = root.get("policies") else {
        return policies;
    };
    if matches!(node.kind, Kind::Null) {
        return policies;
    }
    let Some(fields) = cx.fields(
        CTX,
        "policies",
        node,
        &[
            "default_timezone",
            "frequency_caps",
            "quiet_hours",
            "consent",
        ],
    ) else {
        return policies;
    };
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };

    if let Some(n) = get("default_timezone") {
        match n.scalar().map(str::parse::<Tz>) {
            Some(Ok(tz)) => policies.default_timezone = tz,
            _ => {
                cx.error_in(
                    n,
                    CTX,
                    format!(
                        "default_timezone must be an IANA time zone such as Europe/London, \
                         found {}",
                        n.describe()
                    ),
                );
            }
        }
    }

    if let Some(n) = get("frequency_caps") {
        match n.seq() {
            None => {
                cx.error_in(
                    n,
                    CTX,
                    format!(
                        "frequency_caps must be a list of {{channel, category?, max, per}}, \
                         found {}",
                        n.describe()
                    ),
                );
            }
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(cap) = load_cap(cx, &format!("frequency_caps[{i}]"), item) {
                        policies.frequency_caps.push(cap);
                    }
                }
            }
        }
    }

    if let Some(n) = get("quiet_hours") {
        if let Some(fields) = cx.fields(CTX, "quiet_hours", n, &["from", "to", "channels"]) {
            let f = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.scalar() == Some(key))
                    .map(|(_, v)| v)
            };
            let from = cx
                .required(CTX, "quiet_hours.from", n, f("from"))
                .and_then(|v| cx.time_of_day(CTX, "quiet_hours.from", v));
            let to = cx
                .required(CTX, "quiet_hours.to", n, f("to"))
                .and_then(|v| cx.time_of_day(CTX, "quiet_hours.to", v));
            let channels = f("channels")
                .map(|v| cx.names(CTX, "quiet_hours.channels", v, "channels"))
                .unwrap_or_default();
            if let (Some(from), Some(to)) = (from, to) {
                if from == to {
                    cx.error_in(n, CTX, "quiet_hours: from and to must differ");
                } else {
                    policies.quiet_hours = Some(QuietHours { from, to, channels });
                }
            }
        }
    }

    if let Some(n) = get("consent") {
        if let Some(fields) = cx.fields(CTX, "consent", n, &["required"]) {
            let required = fields
                .iter()
                .find(|(k, _)| k.scalar() == Some("required"))
                .map(|(_, v)| v);
            if let Some(v) = cx.required(CTX, "consent.required", n, required) {
                policies.consent_required = cx.names(CTX, "consent.required", v, "channels");
            }
        }
    }
    policies
}

fn load_cap(cx: &mut Cx, path: &str, node: &Node) -> Option<FrequencyCap> {
    const CTX: &str = "policies";
    let fields = cx.fields(CTX, path, node, &["channel", "category", "max", "per"])?;
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    };
    let channel = cx
        .required(CTX, &format!("{path}.channel"), node, get("channel"))
        .and_then(|n| {
            cx.text(
                CTX,
                &format!("{path}.channel"),
                n,
                "a channel name or \"*\"",
            )
        });
    let category = match get("category") {
        None => Some(None),
        Some(n) => cx.category(CTX, &format!("{path}.category"), n).map(Some),
    };
    let max = cx
        .required(CTX, &format!("{path}.max"), node, get("max"))
        .and_then(|n| cx.positive(CTX, &format!("{path}.max"), n));
    let per = cx
        .required(CTX, &format!("{path}.per"), node, get("per"))
        .and_then(|n| cx.duration(CTX, &format!("{path}.per"), n));
    let channel = channel?;
    Some(FrequencyCap {
        channel: (channel != "*").then_some(channel),
        category: category?,
        max: max?,
        per: per?,
    })
}
