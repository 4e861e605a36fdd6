//! The diagnostic context of one file, and typed reads of its nodes.

use crate::diag::{Diagnostic, Severity};
use crate::duration::parse_duration;
use crate::expr::Expr;
use crate::model::*;
use crate::yaml::Node;
use cel::common::ast::{EntryExpr, Expr as Ast};
use cel::IdedExpr;
use std::collections::HashMap;
use std::path::PathBuf;

/// The problems of one file.
pub(super) struct Cx {
    pub(super) file: PathBuf,
    pub(super) diags: Vec<Diagnostic>,
}

/// `ctx: rest`, or `rest` at the top level.
pub(super) fn say(ctx: &str, rest: impl std::fmt::Display) -> String {
    if ctx.is_empty() {
        rest.to_string()
    } else {
        format!("{ctx}: {rest}")
    }
}

/// The value of field `key` of a mapping's pairs (as [`Cx::fields`] gives them).
pub(super) fn field<'n>(pairs: &'n [(Node, Node)], key: &str) -> Option<&'n Node> {
    pairs
        .iter()
        .find(|(k, _)| k.scalar() == Some(key))
        .map(|(_, v)| v)
}

pub(super) fn key_node<'n>(map: &'n Node, key: &str) -> Option<&'n Node> {
    map.map()?
        .iter()
        .find(|(k, _)| k.scalar() == Some(key))
        .map(|(k, _)| k)
}

pub(super) fn valid_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Cx {
    pub(super) fn push(&mut self, line: usize, col: usize, severity: Severity, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            severity,
            message,
        });
    }

    pub(super) fn error(&mut self, node: &Node, message: String) {
        self.push(node.line, node.col, Severity::Error, message);
    }

    /// An error at `node` whose message starts with its context (`step "x": ...`).
    pub(super) fn error_in(&mut self, node: &Node, ctx: &str, rest: impl std::fmt::Display) {
        self.error(node, say(ctx, rest));
    }

    pub(super) fn warn(&mut self, node: &Node, message: String) {
        self.push(node.line, node.col, Severity::Warning, message);
    }

    pub(super) fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    /// The pairs of a mapping whose keys must all be among `allowed` (`path` names the mapping;
    /// empty at the top level).
    pub(super) fn fields<'n>(
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
    pub(super) fn required<'n>(
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
    pub(super) fn text(
        &mut self,
        ctx: &str,
        path: &str,
        node: &Node,
        what: &str,
    ) -> Option<String> {
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
    pub(super) fn names(&mut self, ctx: &str, path: &str, node: &Node, what: &str) -> Vec<String> {
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

    pub(super) fn duration(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Millis> {
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
    pub(super) fn positive(&mut self, ctx: &str, path: &str, node: &Node) -> Option<u32> {
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

    pub(super) fn category(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Category> {
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
    pub(super) fn time_of_day(&mut self, ctx: &str, path: &str, node: &Node) -> Option<u16> {
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

    /// A CEL expression that sees only `event`, `profile` and `now`.
    pub(super) fn expr(&mut self, ctx: &str, path: &str, node: &Node) -> Option<Expr> {
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
                let mut calls = Vec::new();
                function_calls(expr.program().expression(), &mut calls);
                let mut seen: Vec<&str> = Vec::new();
                for (name, probe) in &calls {
                    if seen.contains(&name.as_str()) || known_function(name, probe) {
                        continue;
                    }
                    seen.push(name);
                    bad = true;
                    self.error_in(
                        node,
                        ctx,
                        format!(
                            "{path}: unknown function \"{name}\": CEL's standard library, as \
                             journeyd evaluates it, has no such function (see docs/journeys.md, \
                             \"Conditions and vars\")"
                        ),
                    );
                }
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
                            "{path}: unknown variable \"{name}\" (conditions see only event, \
                             profile and now; write a string as '\"{name}\"')"
                        ),
                    );
                }
                (!bad).then_some(expr)
            }
        }
    }

    /// A step id naming a step of the journey.
    pub(super) fn target(
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
pub(super) const CEL_TYPES: [&str; 11] = [
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
pub(super) const CEL_NAMESPACES: [&str; 6] =
    ["base64", "lists", "math", "optional", "sets", "strings"];

/// Collects the identifiers an expression reads that are not `event`, `profile`, `now`, a type name or
/// a variable bound by a macro (`list.exists(x, x > 1)`).
pub(super) fn free_variables(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    let free = |name: &str, bound: &Vec<String>| {
        !name.starts_with('@')
            && !matches!(name, "event" | "profile" | "now")
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

/// The functions an expression calls, each with the source of a probe call: `f(null)`,
/// `null.f(null)` for a method, `ns.f(null)` for a namespaced one. Operators are left out.
pub(super) fn function_calls(e: &IdedExpr, out: &mut Vec<(String, String)>) {
    match &e.expr {
        Ast::Unspecified | Ast::Literal(_) | Ast::Ident(_) => {}
        Ast::Select(select) => function_calls(&select.operand, out),
        Ast::Call(call) => {
            let name = &call.func_name;
            let operator = name.starts_with(['_', '@', '!', '-']);
            if !operator {
                let probe = match call.target.as_deref().map(|t| &t.expr) {
                    None => format!("{name}(null)"),
                    Some(Ast::Ident(ns)) if CEL_NAMESPACES.contains(&ns.as_str()) => {
                        format!("{ns}.{name}(null)")
                    }
                    Some(_) => format!("null.{name}(null)"),
                };
                out.push((name.clone(), probe));
            }
            if let Some(target) = &call.target {
                function_calls(target, out);
            }
            for arg in &call.args {
                function_calls(arg, out);
            }
        }
        Ast::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                function_calls(part, out);
            }
        }
        Ast::List(list) => {
            for item in &list.elements {
                function_calls(item, out);
            }
        }
        Ast::Map(map) => {
            for entry in &map.entries {
                entry_calls(&entry.expr, out);
            }
        }
        Ast::Struct(s) => {
            for entry in &s.entries {
                entry_calls(&entry.expr, out);
            }
        }
    }
}

fn entry_calls(entry: &EntryExpr, out: &mut Vec<(String, String)>) {
    match entry {
        EntryExpr::StructField(field) => function_calls(&field.value, out),
        EntryExpr::MapEntry(entry) => {
            function_calls(&entry.key, out);
            function_calls(&entry.value, out);
        }
    }
}

/// Whether the CEL standard library the engine evaluates with has function `name`: the probe
/// call (see [`function_calls`]) is evaluated, and only an undeclared reference to `name`
/// says no (a known function given `null` fails otherwise, or answers). The library itself is
/// asked, so the answer follows the crate. Answers are kept.
pub(super) fn known_function(name: &str, probe: &str) -> bool {
    use std::sync::{Arc, LazyLock, Mutex, PoisonError};
    static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));
    static ANSWERS: LazyLock<Mutex<HashMap<String, bool>>> = LazyLock::new(Mutex::default);
    if let Some(known) = ANSWERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(probe)
    {
        return *known;
    }
    let known = std::panic::catch_unwind(|| {
        let Ok(program) = cel::Program::compile(probe) else {
            return true;
        };
        let ctx = cel::Context::with_env(Arc::clone(&ENV));
        !matches!(program.execute(&ctx),
            Err(cel::ExecutionError::UndeclaredReference(n)) if n.as_str() == name)
    })
    .unwrap_or(true);
    ANSWERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(probe.to_owned(), known);
    known
}

pub(super) fn entry_variables(entry: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match entry {
        EntryExpr::StructField(field) => free_variables(&field.value, bound, out),
        EntryExpr::MapEntry(entry) => {
            free_variables(&entry.key, bound, out);
            free_variables(&entry.value, bound, out);
        }
    }
}
