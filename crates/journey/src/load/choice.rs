//! The steps that choose among several ways on: `decide` (next best action: options with an
//! eligibility condition and a score, and `else` last) and `split` (weighted arms, one of them
//! the control).

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
        let get = |key: &str| field(fields, key);
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

/// `split: [{weight, next, control?}, ...]`: at most one arm is the control.
pub(super) fn load_split(
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
                "split must be a list of {{weight: N, next: STEP, control?: true}} arms, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut arms = Vec::new();
    let mut ok = true;
    let mut control_at: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        let path = format!("split[{i}]");
        let Some(fields) = cx.fields(ctx, &path, item, &["weight", "next", "control"]) else {
            ok = false;
            continue;
        };
        let get = |key: &str| field(fields, key);
        let weight = cx
            .required(ctx, &format!("{path}.weight"), item, get("weight"))
            .and_then(|n| cx.positive(ctx, &format!("{path}.weight"), n));
        let next = cx
            .required(ctx, &format!("{path}.next"), item, get("next"))
            .and_then(|n| cx.target(ctx, &format!("{path}.next"), n, ids));
        let control = match get("control") {
            None => Some(false),
            Some(n) => match n.scalar() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => {
                    cx.error_in(
                        n,
                        ctx,
                        format!(
                            "{path}.control must be true or false, found {}",
                            n.describe()
                        ),
                    );
                    None
                }
            },
        };
        if control == Some(true) {
            if let Some(first) = control_at {
                cx.error_in(
                    item,
                    ctx,
                    format!(
                        "{path}: a split has at most one control arm (split[{first}] is one \
                         already)"
                    ),
                );
                ok = false;
            } else {
                control_at = Some(i);
            }
        }
        match (weight, next, control) {
            (Some(weight), Some(next), Some(control)) => arms.push(SplitArm {
                weight,
                next: Some(next),
                control,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(arms)
}
