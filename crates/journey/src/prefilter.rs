//! A condition's simplest tests on the profile, decided without the CEL interpreter.
//!
//! An audience run evaluates its entry condition for every known customer, and most of them
//! fail it on the first plain test (a balance out of range, a segment not listed, a date too
//! recent). The interpreter costs a few hundred nanoseconds per name and call; these tests cost
//! a map lookup and a comparison. So a condition keeps, beside its program, the top-level
//! conjuncts (`a && b && ...`) of these shapes:
//!
//! - `has(profile.k)`;
//! - `profile.k OP n` and `double(profile.k) OP n` (OP one of `<`, `<=`, `>`, `>=`; `n` a
//!   number literal, either side);
//! - `profile.k == "s"`, `profile.k != "s"` and `profile.k in ["s", ...]`;
//! - `now - timestamp(profile.k) OP duration("d")` (either side).
//!
//! One that is certainly false makes the whole condition false, whatever the other conjuncts
//! give, errors included (CEL's `&&` is false when either side is false). So
//! [`Prefilter::rules_out`] answers only "certainly false"; everything else (true, unknown, a
//! value of another type, a missing attribute) goes to the interpreter, which decides as it
//! always did. A property test holds the answers against the interpreter's.

use cel::common::ast::operators as op;
use cel::common::ast::{Expr as Ast, LiteralValue};
use cel::IdedExpr;

/// A profile value, as far as the tests look at it.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(&'a str),
    /// Anything else (null, a bool, a list, a map).
    Other,
}

/// The tests of a condition that can rule it out.
#[derive(Debug, Clone, Default)]
pub struct Prefilter {
    tests: Vec<Test>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn of(name: &str) -> Option<Cmp> {
        Some(match name {
            op::LESS => Cmp::Lt,
            op::LESS_EQUALS => Cmp::Le,
            op::GREATER => Cmp::Gt,
            op::GREATER_EQUALS => Cmp::Ge,
            _ => return None,
        })
    }

    /// `a OP b` read as `b OP' a`.
    fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
        }
    }

    fn holds<T: PartialOrd>(self, a: T, b: T) -> Option<bool> {
        let order = a.partial_cmp(&b)?;
        Some(match self {
            Cmp::Lt => order.is_lt(),
            Cmp::Le => order.is_le(),
            Cmp::Gt => order.is_gt(),
            Cmp::Ge => order.is_ge(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Number {
    Int(i64),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// `has(profile.k)`.
    Has(String),
    /// `profile.k OP n` (`double`: `double(profile.k) OP n`).
    Compare {
        attr: String,
        double: bool,
        cmp: Cmp,
        n: Number,
    },
    /// `profile.k == "s"` (`equal`), `profile.k != "s"` (not `equal`).
    Equals {
        attr: String,
        equal: bool,
        s: String,
    },
    /// `profile.k in ["s", ...]`.
    In { attr: String, list: Vec<String> },
    /// `now - timestamp(profile.k) OP duration(..)`.
    Since {
        attr: String,
        cmp: Cmp,
        bound: chrono::TimeDelta,
    },
}

impl Prefilter {
    /// The tests of a compiled condition (none when no conjunct has one of the shapes).
    pub fn of(root: &IdedExpr) -> Prefilter {
        let mut conjuncts = vec![root];
        let mut tests = Vec::new();
        while let Some(e) = conjuncts.pop() {
            match &e.expr {
                Ast::Call(c) if c.func_name == op::LOGICAL_AND && c.args.len() == 2 => {
                    conjuncts.push(&c.args[1]);
                    conjuncts.push(&c.args[0]);
                }
                _ => tests.extend(test(e)),
            }
        }
        Prefilter { tests }
    }

    /// Whether there is any test.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// Whether the condition is certainly false for a profile (`attr` looks attributes up) at
    /// `now` (milliseconds since the epoch). `false` means only "not ruled out".
    pub fn rules_out<'a>(&self, attr: impl Fn(&str) -> Option<Scalar<'a>>, now: i64) -> bool {
        self.tests.iter().any(|t| t.is_false(&attr, now))
    }
}

impl Test {
    fn is_false<'a>(&self, attr: &impl Fn(&str) -> Option<Scalar<'a>>, now: i64) -> bool {
        match self {
            Test::Has(k) => attr(k).is_none(),
            Test::Compare {
                attr: k,
                double,
                cmp,
                n,
            } => {
                let holds = match (attr(k), n, double) {
                    (Some(Scalar::Int(a)), Number::Int(b), false) => cmp.holds(a, *b),
                    (Some(Scalar::Float(a)), Number::Float(b), false) => cmp.holds(a, *b),
                    (Some(Scalar::Int(a)), Number::Float(b), true) => cmp.holds(a as f64, *b),
                    (Some(Scalar::Float(a)), Number::Float(b), true) => cmp.holds(a, *b),
                    _ => None,
                };
                holds == Some(false)
            }
            Test::Equals { attr: k, equal, s } => match attr(k) {
                Some(Scalar::Str(a)) => (a == s) != *equal,
                _ => false,
            },
            Test::In { attr: k, list } => match attr(k) {
                Some(Scalar::Str(a)) => !list.iter().any(|s| s == a),
                _ => false,
            },
            Test::Since {
                attr: k,
                cmp,
                bound,
            } => {
                let Some(Scalar::Str(text)) = attr(k) else {
                    return false;
                };
                let (Ok(then), Some(now)) = (
                    chrono::DateTime::parse_from_rfc3339(text),
                    chrono::DateTime::from_timestamp_millis(now),
                ) else {
                    return false;
                };
                // Only where the interpreter computes the difference: both times in CEL's
                // range (years 1 to 9999), and a difference that fits in i64 nanoseconds
                // (about 292 years). Beyond, it gives an error, which is not "false".
                let in_range = |t: chrono::DateTime<chrono::FixedOffset>| {
                    (1..=9999).contains(&chrono::Datelike::year(&t.to_utc()))
                };
                let now = now.fixed_offset();
                if !in_range(then) || !in_range(now) {
                    return false;
                }
                let since = now.signed_duration_since(then);
                if since.num_nanoseconds().is_none() {
                    return false;
                }
                cmp.holds(since, *bound) == Some(false)
            }
        }
    }
}

/// The test a conjunct is, if it has one of the shapes.
fn test(e: &IdedExpr) -> Option<Test> {
    match &e.expr {
        Ast::Select(s) if s.test => {
            profile_ident(&s.operand)?;
            Some(Test::Has(s.field.clone()))
        }
        Ast::Call(c) if c.target.is_none() && c.args.len() == 2 => {
            let (a, b) = (&c.args[0], &c.args[1]);
            if let Some(cmp) = Cmp::of(&c.func_name) {
                return compare(a, cmp, b)
                    .or_else(|| compare(b, cmp.flipped(), a))
                    .or_else(|| since(a, cmp, b))
                    .or_else(|| since(b, cmp.flipped(), a));
            }
            match c.func_name.as_str() {
                op::EQUALS | op::NOT_EQUALS => {
                    let equal = c.func_name == op::EQUALS;
                    let (attr, s) = match (profile_attr(a), string(b)) {
                        (Some(k), Some(s)) => (k, s),
                        _ => (profile_attr(b)?, string(a)?),
                    };
                    Some(Test::Equals {
                        attr: attr.to_owned(),
                        equal,
                        s: s.to_owned(),
                    })
                }
                op::IN => {
                    let attr = profile_attr(a)?;
                    let Ast::List(l) = &b.expr else { return None };
                    if !l.optional_indices.is_empty() {
                        return None;
                    }
                    let list = l
                        .elements
                        .iter()
                        .map(|x| string(x).map(str::to_owned))
                        .collect::<Option<Vec<_>>>()?;
                    Some(Test::In {
                        attr: attr.to_owned(),
                        list,
                    })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// `profile.k OP n` or `double(profile.k) OP n`.
fn compare(a: &IdedExpr, cmp: Cmp, b: &IdedExpr) -> Option<Test> {
    let n = match &b.expr {
        Ast::Literal(LiteralValue::Int(i)) => Number::Int(*i.inner()),
        Ast::Literal(LiteralValue::Double(d)) => Number::Float(*d.inner()),
        _ => return None,
    };
    let (attr, double) = match profile_attr(a) {
        Some(k) => (k, false),
        None => (call1(a, "double").and_then(profile_attr)?, true),
    };
    Some(Test::Compare {
        attr: attr.to_owned(),
        double,
        cmp,
        n,
    })
}

/// `now - timestamp(profile.k) OP duration("d")`.
fn since(a: &IdedExpr, cmp: Cmp, b: &IdedExpr) -> Option<Test> {
    let Ast::Call(minus) = &a.expr else {
        return None;
    };
    if minus.func_name != op::SUBSTRACT || minus.target.is_some() || minus.args.len() != 2 {
        return None;
    }
    if !matches!(&minus.args[0].expr, Ast::Ident(n) if n == "now") {
        return None;
    }
    let attr = call1(&minus.args[1], "timestamp").and_then(profile_attr)?;
    let text = string(call1(b, "duration")?)?;
    Some(Test::Since {
        attr: attr.to_owned(),
        cmp,
        bound: duration(text)?,
    })
}

/// A duration literal, as the interpreter reads it (it is asked once, when the condition is
/// compiled).
fn duration(text: &str) -> Option<chrono::TimeDelta> {
    if text.contains(['"', '\\']) {
        return None;
    }
    let program = cel::Program::compile(&format!("duration(\"{text}\")")).ok()?;
    match program.execute(&cel::Context::default()).ok()? {
        cel::Value::Duration(d) => Some(d),
        _ => None,
    }
}

/// The argument of a global one-argument call to `name`.
fn call1<'e>(e: &'e IdedExpr, name: &str) -> Option<&'e IdedExpr> {
    match &e.expr {
        Ast::Call(c) if c.func_name == name && c.target.is_none() && c.args.len() == 1 => {
            Some(&c.args[0])
        }
        _ => None,
    }
}

fn profile_ident(e: &IdedExpr) -> Option<()> {
    matches!(&e.expr, Ast::Ident(n) if n == "profile").then_some(())
}

/// `k` of `profile.k`.
fn profile_attr(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Select(s) if !s.test => {
            profile_ident(&s.operand)?;
            Some(&s.field)
        }
        _ => None,
    }
}

fn string(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tests_of(source: &str) -> Vec<Test> {
        Prefilter::of(cel::Program::compile(source).unwrap().expression()).tests
    }

    #[test]
    fn finds_the_simple_conjuncts_only() {
        let found = tests_of(
            r#"has(profile.balance) && double(profile.balance) >= 50.0 && 150 >= profile.n
               && profile.segment in ["a", "b"] && profile.tier != "gold"
               && now - timestamp(profile.last) >= duration("744h")
               && (profile.x > 1 || profile.y > 2) && size(profile.name) > 3"#,
        );
        assert_eq!(found.len(), 6, "{found:?}");
        assert_eq!(found[0], Test::Has("balance".into()));
        assert!(matches!(
            &found[2],
            Test::Compare { attr, double: false, cmp: Cmp::Le, n: Number::Int(150) } if attr == "n"
        ));
        assert!(matches!(
            &found[5],
            Test::Since { cmp: Cmp::Ge, bound, .. } if *bound == chrono::TimeDelta::hours(744)
        ));
        // Under `||` or `!`, nothing can be ruled out on its own.
        assert!(tests_of("profile.x > 1 || profile.y > 2").is_empty());
        assert!(tests_of("!(profile.x > 1)").is_empty());
    }
}
