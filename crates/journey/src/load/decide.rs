//! The `decide` step (next best action): options with an eligibility condition and a score,
//! and `else` last.

use super::context::*;
use crate::model::*;
use crate::yaml::Node;
use std::collections::HashMap;

/// `decide: [{if?, score?, next}, ..., {else}]`.
pub(super) fn load_decide(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
) -> Option<Decide> {
    let Some(items) = node.seq().filter(|items| !items.is_empty()) else {
        cx.error_in(
            node,
            ctx,
            format!(
                "decide must be a list of {{if?: CONDITION, score?: NUMBER, next: STEP}} options \
                 ending with {{else: STEP}}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut options = Vec::new();
    let mut otherwise = None;
    let mut ok = true;
    let mut option_items = 0;
    let last = items.len() - 1;
    for (i, item) in items.iter().enumerate() {
        let path = format!("decide[{i}]");
        let Some(fields) = cx.fields(ctx, &path, item, &["if", "score", "next", "else"]) else {
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
            if get("if").is_some() || get("score").is_some() || get("next").is_some() {
                cx.error_in(
                    item,
                    ctx,
                    format!("{path}: an option is either {{if?, score?, next}} or {{else}} alone"),
                );
                ok = false;
            } else if i != last {
                cx.error(
                    item,
                    say(ctx, format!("{path}: else must be the last option")),
                );
                ok = false;
            }
            match cx.target(ctx, &format!("{path}.else"), else_node, ids) {
                Some(t) if i == last => otherwise = Some(t),
                Some(_) => {}
                None => ok = false,
            }
            continue;
        }
        option_items += 1;
        let mut parsed = true;
        let condition = get("if").and_then(|n| {
            let e = cx.expr(ctx, &format!("{path}.if"), n);
            parsed &= e.is_some();
            e
        });
        let score = get("score").and_then(|n| {
            let e = cx.expr(ctx, &format!("{path}.score"), n);
            parsed &= e.is_some();
            e
        });
        let target = cx
            .required(ctx, &format!("{path}.next"), item, get("next"))
            .and_then(|n| cx.target(ctx, &format!("{path}.next"), n, ids));
        match (parsed, target) {
            (true, Some(t)) => options.push(DecideOption {
                condition,
                score,
                next: Some(t),
            }),
            _ => ok = false,
        }
        if i == last {
            cx.error_in(
                item,
                ctx,
                "decide: the last option must be {else: STEP} (it says where to go when no \
                 option is eligible)",
            );
            ok = false;
        }
    }
    if option_items == 0 {
        cx.error_in(
            node,
            ctx,
            "decide: give at least one option before else (else alone decides nothing)",
        );
        ok = false;
    }
    ok.then_some(())?;
    Some(Decide {
        options,
        otherwise: Some(otherwise?),
    })
}
