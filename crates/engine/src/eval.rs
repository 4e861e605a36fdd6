//! Evaluation of CEL expressions against an event and a profile.
//!
//! A failure to evaluate (missing attribute, wrong type) is an `Err` with a message; callers
//! treat a failed condition as false and record it.

use journeyd_journey::Expr;
use journeyd_types::{Attributes, Millis, Value};
use std::collections::HashMap;
use std::sync::Arc;

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

fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Int(i) => cel::Value::Int(*i),
        Value::Float(f) => cel::Value::Float(*f),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::List(l) => cel::Value::List(Arc::new(l.iter().map(to_cel).collect())),
        Value::Map(m) => map_to_cel(m),
    }
}

fn map_to_cel(m: &Attributes) -> cel::Value {
    let hm: HashMap<String, cel::Value> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
    cel::Value::from(hm)
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

/// Evaluates an expression. `event` is bound only when there is one.
pub fn eval(
    expr: &Expr,
    event: Option<EventView<'_>>,
    profile: &Attributes,
) -> Result<Value, String> {
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("profile", map_to_cel(profile));
    if let Some(e) = event {
        let mut m: HashMap<String, cel::Value> = HashMap::with_capacity(5);
        m.insert("id".into(), cel::Value::String(Arc::new(e.id.to_owned())));
        m.insert(
            "type".into(),
            cel::Value::String(Arc::new(e.event_type.to_owned())),
        );
        m.insert(
            "channel".into(),
            e.channel.map_or(cel::Value::Null, |c| {
                cel::Value::String(Arc::new(c.to_owned()))
            }),
        );
        if let Some(t) = chrono::DateTime::from_timestamp_millis(e.occurred_at) {
            m.insert(
                "occurred_at".into(),
                cel::Value::Timestamp(t.fixed_offset()),
            );
        }
        m.insert("attributes".into(), map_to_cel(e.attributes));
        ctx.add_variable_from_value("event", cel::Value::from(m));
    }
    let out = expr.program().execute(&ctx).map_err(|e| e.to_string())?;
    from_cel(&out)
}

/// Evaluates a condition: it must give a bool.
pub fn eval_bool(
    expr: &Expr,
    event: Option<EventView<'_>>,
    profile: &Attributes,
) -> Result<bool, String> {
    match eval(expr, event, profile)? {
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
        assert_eq!(eval_bool(&c, Some(ev), &profile()), Ok(true));
        let v = Expr::compile(r#"{"n": profile.age + 1, "t": event.type}"#).unwrap();
        let out = eval(&v, Some(ev), &profile()).unwrap();
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
    fn failures_are_errors_not_panics() {
        let missing = Expr::compile("profile.nope == 1").unwrap();
        assert!(eval_bool(&missing, None, &profile()).is_err());
        let no_event = Expr::compile("event.type == 'x'").unwrap();
        assert!(eval_bool(&no_event, None, &profile()).is_err());
        let not_bool = Expr::compile("profile.age").unwrap();
        assert!(eval_bool(&not_bool, None, &profile())
            .unwrap_err()
            .contains("not a bool"));
    }
}
