//! Evaluation of CEL expressions against an event and a profile.
//!
//! A failure to evaluate (missing attribute, wrong type) is an `Err` with a message; callers
//! treat a failed condition as false and record it.

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use journeyd_journey::{Expr, Scalar};
use journeyd_types::{Attributes, Millis, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};

/// The CEL standard library, built once: building it is far dearer than evaluating one
/// expression (it registers every function and macro). Every evaluation gets a fresh context
/// on it, with only its own variables.
static STDLIB: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// The event an expression sees as `event`.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// `event.id`
    pub id: &'a str,
    /// `event.type`
    pub event_type: &'a str,
    /// `event.channel` (null when absent)
    pub channel: Option<&'a str>,
    /// `event.occurred_at` (a CEL timestamp)
    pub occurred_at: Millis,
    /// `event.attributes`
    pub attributes: &'a Attributes,
}

/// A value as the interpreter holds it, borrowing the strings (no copy).
///
/// Built the way `cel` converts its own `Value` for a variable (`TryFrom<Value> for Box<dyn
/// Val>`), without going through it: strings become `CelString`s, maps `CelMap`s keyed by
/// string.
fn val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Int(i) => Box::new(CelInt::from(*i)),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::List(l) => Box::new(CelList::from(l.iter().map(val).collect::<Vec<_>>())),
        Value::Map(m) => map_val(m),
    }
}

fn map_val(m: &Attributes) -> Box<dyn Val + '_> {
    let map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = m
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.as_str()), val(v)))
        .collect();
    Box::new(CelMap::from(map))
}

fn from_cel(v: &cel::Value) -> Result<Value, String> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::Int(*i),
        cel::Value::UInt(u) => i64::try_from(*u).map_or(Value::Float(*u as f64), Value::Int),
        cel::Value::Float(f) => Value::Float(*f),
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(l) => Value::List(l.iter().map(from_cel).collect::<Result<_, _>>()?),
        cel::Value::Map(m) => Value::Map(
            m.map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel::objects::Key::String(s) => s.to_string(),
                        cel::objects::Key::Int(i) => i.to_string(),
                        cel::objects::Key::Uint(u) => u.to_string(),
                        cel::objects::Key::Bool(b) => b.to_string(),
                    };
                    Ok((key, from_cel(v)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        cel::Value::Timestamp(t) => {
            Value::String(journeyd_types::time::format_rfc3339(t.timestamp_millis()))
        }
        cel::Value::Duration(d) => Value::Int(d.num_milliseconds()),
        other => return Err(format!("the value {other:?} cannot be stored")),
    })
}

/// The whole `event` map, as conditions see it.
fn event_val<'a>(e: &EventView<'a>) -> Box<dyn Val + 'a> {
    let mut m: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(5);
    m.insert("id".into(), Box::new(CelString::from(e.id)));
    m.insert("type".into(), Box::new(CelString::from(e.event_type)));
    m.insert("channel".into(), channel_val(e.channel));
    if let Some(t) = timestamp_val(e.occurred_at) {
        m.insert("occurred_at".into(), t);
    }
    m.insert("attributes".into(), map_val(e.attributes));
    Box::new(CelMap::from(m))
}

fn channel_val(channel: Option<&str>) -> Box<dyn Val + '_> {
    match channel {
        Some(c) => Box::new(CelString::from(c)),
        None => Box::new(CelNull),
    }
}

fn timestamp_val(at: Millis) -> Option<Box<dyn Val + 'static>> {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| Box::new(CelTimestamp::from(t.fixed_offset())) as Box<dyn Val>)
}

/// The variables `profile` and `event`, converted to CEL values only when an expression reads
/// them, and only as far as it reads them.
///
/// The interpreter resolves a qualified name such as `profile.segment` by asking for the
/// longest name first (`profile.segment`, then `profile`), so answering `profile.segment` with
/// the attribute's value is what selecting `segment` from the whole `profile` map would give;
/// a name this resolver does not answer (a missing attribute, a deeper path) falls back to the
/// whole map, which gives the same value or the same error as before. The whole maps are
/// converted at most once per evaluation.
struct Vars<'a> {
    /// `now`: the engine's current time (a CEL timestamp).
    now: Millis,
    profile: &'a Attributes,
    event: Option<EventView<'a>>,
    profile_map: OnceLock<Box<dyn Val + 'a>>,
    event_map: OnceLock<Box<dyn Val + 'a>>,
    attributes_map: OnceLock<Box<dyn Val + 'a>>,
}

/// One attribute, when `key` names one directly (no further `.`).
fn attribute<'a>(attrs: &'a Attributes, key: &str) -> Option<CowVal<'a, 'a>> {
    if key.contains('.') {
        return None;
    }
    attrs.get(key).map(|v| CowVal::Owned(val(v)))
}

impl<'a> VariableResolver for Vars<'a> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        if name == "now" {
            return timestamp_val(self.now).map(CowVal::Owned);
        }
        if let Some(rest) = name.strip_prefix("profile") {
            if rest.is_empty() {
                let whole = self.profile_map.get_or_init(|| map_val(self.profile));
                return Some(CowVal::Borrowed(whole.as_ref()));
            }
            return attribute(self.profile, rest.strip_prefix('.')?);
        }
        let rest = name.strip_prefix("event")?;
        let e = self.event.as_ref()?;
        if rest.is_empty() {
            let whole = self.event_map.get_or_init(|| event_val(e));
            return Some(CowVal::Borrowed(whole.as_ref()));
        }
        let owned = |v: Box<dyn Val + 'a>| Some(CowVal::Owned(v));
        match rest.strip_prefix('.')? {
            "id" => owned(Box::new(CelString::from(e.id))),
            "type" => owned(Box::new(CelString::from(e.event_type))),
            "channel" => owned(channel_val(e.channel)),
            "occurred_at" => timestamp_val(e.occurred_at).and_then(owned),
            "attributes" => {
                let whole = self.attributes_map.get_or_init(|| map_val(e.attributes));
                Some(CowVal::Borrowed(whole.as_ref()))
            }
            other => attribute(e.attributes, other.strip_prefix("attributes.")?),
        }
    }
}

/// Evaluates an expression at `now` (the engine's time, `now` in CEL). `event` is bound only
/// when there is one.
pub fn eval(
    expr: &Expr,
    event: Option<EventView<'_>>,
    profile: &Attributes,
    now: Millis,
) -> Result<Value, String> {
    let vars = Vars {
        now,
        profile,
        event,
        profile_map: OnceLock::new(),
        event_map: OnceLock::new(),
        attributes_map: OnceLock::new(),
    };
    let mut ctx = cel::Context::with_env(Arc::clone(&STDLIB));
    ctx.set_variable_resolver(&vars);
    let out = expr.program().execute(&ctx).map_err(|e| e.to_string())?;
    from_cel(&out)
}

/// A profile attribute as the prefilter sees it.
fn scalar(v: &Value) -> Scalar<'_> {
    match v {
        Value::Int(i) => Scalar::Int(*i),
        Value::Float(f) => Scalar::Float(*f),
        Value::String(s) => Scalar::Str(s),
        _ => Scalar::Other,
    }
}

/// Whether a condition's prefilter rules it out on the profile at `now`: then it is false,
/// whatever the event.
pub fn ruled_out(expr: &Expr, profile: &Attributes, now: Millis) -> bool {
    let prefilter = expr.prefilter();
    !prefilter.is_empty() && prefilter.rules_out(|k| profile.get(k).map(scalar), now)
}

/// Evaluates a condition: it must give a bool. A condition its prefilter rules out on the
/// profile is false without the interpreter (the same answer, sooner: see [`Prefilter`]).
///
/// [`Prefilter`]: journeyd_journey::Prefilter
pub fn eval_bool(
    expr: &Expr,
    event: Option<EventView<'_>>,
    profile: &Attributes,
    now: Millis,
) -> Result<bool, String> {
    if ruled_out(expr, profile, now) {
        return Ok(false);
    }
    match eval(expr, event, profile, now)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!(
            "the condition gave a {}, not a bool",
            other.type_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Attributes {
        let mut p = Attributes::new();
        p.insert("ltv_segment".into(), Value::from("high"));
        p.insert("age".into(), Value::Int(41));
        p
    }

    #[test]
    fn conditions_see_profile_and_event() {
        let attrs: Attributes = [("amount".to_string(), Value::Float(120.5))].into();
        let ev = EventView {
            id: "e1",
            event_type: "purchase",
            channel: Some("web"),
            occurred_at: 0,
            attributes: &attrs,
        };
        let c = Expr::compile(r#"profile.ltv_segment in ["high", "medium"] && event.attributes.amount > 100.0 && event.channel == "web""#).unwrap();
        assert_eq!(eval_bool(&c, Some(ev), &profile(), 0), Ok(true));
        let v = Expr::compile(r#"{"n": profile.age + 1, "t": event.type}"#).unwrap();
        let out = eval(&v, Some(ev), &profile(), 0).unwrap();
        assert_eq!(
            out,
            Value::Map(
                [
                    ("n".to_string(), Value::Int(42)),
                    ("t".to_string(), Value::from("purchase"))
                ]
                .into()
            )
        );
    }

    #[test]
    fn now_is_the_engines_time_as_a_timestamp() {
        let t = journeyd_types::time::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        let c = Expr::compile(
            r#"now == timestamp("2026-03-01T12:00:00Z") && now - duration("24h") > timestamp("2026-02-28T11:59:00Z")"#,
        )
        .unwrap();
        assert_eq!(eval_bool(&c, None, &profile(), t), Ok(true));
        assert_eq!(eval_bool(&c, None, &profile(), t + 1), Ok(false));
    }

    #[test]
    fn failures_are_errors_not_panics() {
        let missing = Expr::compile("profile.nope == 1").unwrap();
        assert!(eval_bool(&missing, None, &profile(), 0).is_err());
        let no_event = Expr::compile("event.type == 'x'").unwrap();
        assert!(eval_bool(&no_event, None, &profile(), 0).is_err());
        let not_bool = Expr::compile("profile.age").unwrap();
        assert!(eval_bool(&not_bool, None, &profile(), 0)
            .unwrap_err()
            .contains("not a bool"));
    }

    mod prefilter {
        use super::*;
        use proptest::prelude::*;

        const NOW: Millis = 1_770_022_800_000; // 2026-02-02T09:00:00Z

        /// A profile value of any type the tests treat apart, numbers and dates near the
        /// conditions' bounds.
        fn value() -> impl Strategy<Value = Option<Value>> {
            let day = 86_400_000i64;
            prop_oneof![
                1 => Just(None),
                1 => Just(Some(Value::Null)),
                1 => any::<bool>().prop_map(|b| Some(Value::Bool(b))),
                3 => (-10i64..300).prop_map(|i| Some(Value::Int(i))),
                3 => prop_oneof![Just(f64::NAN), -10.0f64..300.0].prop_map(|f| Some(Value::Float(f))),
                2 => proptest::sample::select(vec!["a", "b", "gold", "", "50", "1e2"])
                    .prop_map(|s| Some(Value::from(s))),
                3 => (0i64..200 * day).prop_map(move |ago| {
                    Some(Value::from(journeyd_types::time::format_rfc3339(NOW - ago)))
                }),
                1 => Just(Some(Value::from("2026-13-01T00:00:00Z"))),
                1 => Just(Some(Value::from("0001-01-01T00:00:00Z"))),
                // Beyond what a CEL duration holds (about 292 years either way).
                2 => proptest::sample::select(vec![
                    "2999-12-31T00:00:00Z", "2500-01-01T00:00:00Z", "1700-01-01T00:00:00Z",
                    "1733-06-01T00:00:00+02:00", "2319-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                ])
                .prop_map(|s| Some(Value::from(s))),
            ]
        }

        /// A conjunct: one of the prefilter's shapes, or one it must leave alone.
        fn conjunct() -> impl Strategy<Value = String> {
            let attr = proptest::sample::select(vec!["x", "y"]);
            let cmp = proptest::sample::select(vec!["<", "<=", ">", ">="]);
            let num = prop_oneof![
                (-5i64..200).prop_map(|i| i.to_string()),
                (-5i64..200).prop_map(|i| format!("{i}.5")),
            ];
            prop_oneof![
                attr.clone().prop_map(|a| format!("has(profile.{a})")),
                (
                    attr.clone(),
                    cmp.clone(),
                    num.clone(),
                    any::<bool>(),
                    any::<bool>()
                )
                    .prop_map(|(a, c, n, double, flip)| {
                        let left = if double {
                            format!("double(profile.{a})")
                        } else {
                            format!("profile.{a}")
                        };
                        if flip {
                            format!("{n} {c} {left}")
                        } else {
                            format!("{left} {c} {n}")
                        }
                    }),
                (
                    attr.clone(),
                    any::<bool>(),
                    proptest::sample::select(vec!["a", "gold", ""])
                )
                    .prop_map(|(a, eq, s)| format!(
                        "profile.{a} {} \"{s}\"",
                        if eq { "==" } else { "!=" }
                    )),
                attr.clone()
                    .prop_map(|a| format!("profile.{a} in [\"a\", \"b\"]")),
                (
                    attr.clone(),
                    cmp,
                    proptest::sample::select(vec!["744h", "1440h", "30m", "2h45m"]),
                    any::<bool>()
                )
                    .prop_map(|(a, c, d, flip)| {
                        let since = format!("now - timestamp(profile.{a})");
                        let bound = format!("duration(\"{d}\")");
                        if flip {
                            format!("{bound} {c} {since}")
                        } else {
                            format!("{since} {c} {bound}")
                        }
                    }),
                // Shapes it must not decide.
                attr.clone().prop_map(|a| format!("size(profile.{a}) > 1")),
                attr.prop_map(|a| format!("(profile.{a} == 1 || profile.{a} == \"a\")")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            /// Whenever the prefilter rules a condition out, the interpreter says false.
            #[test]
            fn rules_out_only_what_the_interpreter_finds_false(
                x in value(),
                y in value(),
                conjuncts in proptest::collection::vec(conjunct(), 1..4),
            ) {
                let source = conjuncts.join(" && ");
                let expr = Expr::compile(&source).unwrap();
                let mut profile = Attributes::new();
                for (k, v) in [("x", x), ("y", y)] {
                    if let Some(v) = v {
                        profile.insert(k.into(), v);
                    }
                }
                if ruled_out(&expr, &profile, NOW) {
                    let full = eval(&expr, None, &profile, NOW);
                    prop_assert_eq!(full, Ok(Value::Bool(false)), "{} on {:?}", source, profile);
                }
            }
        }

        #[test]
        fn rules_out_the_example_campaign_for_most_profiles() {
            let expr = Expr::compile(
                r#"has(profile.last_transaction_at) && has(profile.balance)
                && now - timestamp(profile.last_transaction_at) >= duration("744h")
                && now - timestamp(profile.last_transaction_at) < duration("1440h")
                && double(profile.balance) >= 50.0 && double(profile.balance) <= 150.0"#,
            )
            .unwrap();
            let profile = |days: i64, balance: i64| -> Attributes {
                let last = journeyd_types::time::format_rfc3339(NOW - days * 86_400_000);
                [
                    ("last_transaction_at".to_string(), Value::from(last)),
                    ("balance".to_string(), Value::Int(balance)),
                ]
                .into()
            };
            assert!(ruled_out(&expr, &Attributes::new(), NOW));
            assert!(ruled_out(&expr, &profile(10, 100), NOW));
            assert!(ruled_out(&expr, &profile(40, 200), NOW));
            assert!(!ruled_out(&expr, &profile(40, 100), NOW));
            assert_eq!(eval_bool(&expr, None, &profile(40, 100), NOW), Ok(true));
            assert_eq!(eval_bool(&expr, None, &profile(40, 200), NOW), Ok(false));
        }
    }
}
