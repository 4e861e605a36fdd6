//! CEL expressions, compiled once when a journey loads.

use crate::prefilter::Prefilter;
use std::fmt;
use std::sync::Arc;

/// A compiled CEL expression with the text it came from.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
    uses_event: bool,
    prefilter: Arc<Prefilter>,
}

impl Expr {
    /// Compiles an expression; the error is the CEL parser's message.
    ///
    /// Expressions nested too deep are refused before they reach the parser and the
    /// interpreter, which recurse (at most [`MAX_NESTING`] levels of brackets, [`MAX_DEPTH`]
    /// levels of operations), so that no expression can overflow a stack.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let (nesting, operators) = shape(source);
        if nesting > MAX_NESTING {
            return Err(format!(
                "the expression nests brackets more than {MAX_NESTING} deep"
            ));
        }
        if operators > MAX_OPERATORS {
            return Err(format!(
                "the expression is too long (more than {MAX_OPERATORS} operators)"
            ));
        }
        let program = cel::Program::compile(source).map_err(|e| {
            e.errors
                .iter()
                .map(|e| e.msg.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        if depth(program.expression()) > MAX_DEPTH {
            return Err(format!(
                "the expression is nested too deep (more than {MAX_DEPTH} levels of operations; \
                 split it, or use `in [...]` for long lists of alternatives)"
            ));
        }
        let uses_event = program.references().has_variable("event");
        let prefilter = Arc::new(Prefilter::of(program.expression()));
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
            uses_event,
            prefilter,
        })
    }

    /// The text of the expression.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled program.
    pub fn program(&self) -> &cel::Program {
        &self.program
    }

    /// The tests on the profile that can rule the expression out as a condition without the
    /// interpreter (see [`Prefilter`]).
    pub fn prefilter(&self) -> &Prefilter {
        &self.prefilter
    }

    /// Whether the expression reads `event`.
    pub fn uses_event(&self) -> bool {
        self.uses_event
    }
}

/// The deepest nesting of brackets `(`, `[` and `{` an expression may have.
pub const MAX_NESTING: usize = 8;
/// The most operator characters (outside string literals) an expression may have.
const MAX_OPERATORS: usize = 512;
/// The deepest expression tree an expression may have.
pub const MAX_DEPTH: usize = 32;

/// The deepest bracket nesting and the number of operator characters of a source text, string
/// literals left out.
fn shape(source: &str) -> (usize, usize) {
    let chars: Vec<char> = source.chars().collect();
    let (mut nesting, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
                let quote = if triple { 3 } else { 1 };
                i += quote;
                while i < chars.len() {
                    if chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == c && (!triple || chars[i..].starts_with(&[c, c, c])) {
                        i += quote;
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            '(' | '[' | '{' => {
                nesting += 1;
                deepest = deepest.max(nesting);
                operators += 1;
            }
            ')' | ']' | '}' => nesting = nesting.saturating_sub(1),
            '.' | '+' | '-' | '*' | '/' | '%' | '!' | '<' | '>' | '=' | '&' | '|' | '?' => {
                operators += 1;
            }
            _ => {}
        }
        i += 1;
    }
    (deepest, operators)
}

/// The depth of an expression tree, found without recursion.
fn depth<'a>(root: &'a cel::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr as Ast};
    let mut deepest = 0;
    let mut todo: Vec<(&'a cel::IdedExpr, usize)> = vec![(root, 1)];
    while let Some((e, d)) = todo.pop() {
        deepest = deepest.max(d);
        let mut push = |child: &'a cel::IdedExpr| todo.push((child, d + 1));
        match &e.expr {
            Ast::Unspecified | Ast::Literal(_) | Ast::Ident(_) => {}
            Ast::Select(s) => push(&s.operand),
            Ast::Call(call) => {
                call.target.iter().for_each(|t| push(t));
                call.args.iter().for_each(&mut push);
            }
            Ast::Comprehension(c) => {
                for child in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    push(child);
                }
            }
            Ast::List(list) => list.elements.iter().for_each(&mut push),
            Ast::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
                EntryExpr::StructField(f) => push(&f.value),
                EntryExpr::MapEntry(m) => {
                    push(&m.key);
                    push(&m.value);
                }
            }),
            Ast::Struct(s) => s.entries.iter().for_each(|entry| match &entry.expr {
                EntryExpr::StructField(f) => push(&f.value),
                EntryExpr::MapEntry(m) => {
                    push(&m.key);
                    push(&m.value);
                }
            }),
        }
    }
    deepest
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_refuses() {
        let e = Expr::compile(r#"profile.ltv_segment in ["high", "medium"]"#).unwrap();
        assert!(!e.uses_event());
        assert!(Expr::compile("event.attributes.amount > 10")
            .unwrap()
            .uses_event());
        assert!(Expr::compile("profile.a ==").is_err());
    }

    #[test]
    fn refuses_what_would_overflow_a_stack() {
        // Every one of these crashed a 2 MiB thread in a debug build before the limits.
        let parens = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        let lists = format!("{}1{}", "[".repeat(30), "]".repeat(30));
        let chain = vec!["profile.a"; 2000].join(" + ");
        let selects = format!("profile{}", ".a".repeat(2000));
        let medium = vec!["profile.a"; 100].join(" + ");
        for source in [parens, lists, chain, selects, medium] {
            let source2 = source.clone();
            let refused = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || Expr::compile(&source2).is_err())
                .unwrap()
                .join()
                .unwrap();
            assert!(refused, "{}", &source[..20]);
        }
        // Brackets inside strings do not count; realistic expressions pass.
        let fine = [
            r#"profile.note == "((((((((((((((((((((""#,
            r#"[1, 2].exists(x, x > profile.n) && profile.tags.all(t, t != "x") && type(profile.n) == int"#,
            r#"has(event.attributes.amount) && double(event.attributes.amount) >= 100.0 ? "big" : "small""#,
            r#"profile.a == 1 || profile.a == 2 || profile.a == 3 || profile.a == 4 || profile.a == 5"#,
            r#"size(profile.name.split(" ")) > 1 && (profile.x || (profile.y && [{"a": [1]}].size() > 0))"#,
        ];
        for source in fine {
            assert!(
                Expr::compile(source).is_ok(),
                "{source}: {:?}",
                Expr::compile(source).err()
            );
        }
    }
}
