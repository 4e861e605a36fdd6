//! The policies file: quiet hours, frequency caps, priorities.

use super::context::*;
use crate::model::*;
use crate::yaml::{Kind, Node};
use chrono_tz::Tz;

pub(super) fn load_policies(cx: &mut Cx, root: &Node) -> Policies {
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
    let get = |key: &str| field(fields, key);

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
            let f = |key: &str| field(fields, key);
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

pub(super) fn load_cap(cx: &mut Cx, path: &str, node: &Node) -> Option<FrequencyCap> {
    const CTX: &str = "policies";
    let fields = cx.fields(CTX, path, node, &["channel", "category", "max", "per"])?;
    let get = |key: &str| field(fields, key);
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
