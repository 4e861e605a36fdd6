//! A journey file, step by step.

use super::context::*;
use super::graph::*;
use crate::duration::parse_duration;
use crate::expr::Expr;
use crate::model::*;
use crate::yaml::{Kind, Node};
use std::collections::HashMap;

pub(super) const JOURNEY_FIELDS: [&str; 9] = [
    "journey", "version", "name", "priority", "category", "entry", "exit", "goal", "steps",
];
pub(super) const ENTRY_FIELDS: [&str; 5] = ["event", "inactivity", "audience", "if", "reentry"];
pub(super) const STEP_KINDS: [&str; 8] = [
    "send", "wait", "wait_for", "branch", "decide", "split", "update", "exit",
];
pub(super) const STEP_FIELDS: [&str; 10] = [
    "id", "send", "wait", "wait_for", "branch", "decide", "split", "update", "exit", "next",
];

/// Converts a journey file. Always returns a journey (with stand-ins where the file is wrong:
/// it is used only when the file has no error), and the id node when the id is valid.
pub(super) fn load_journey<'n>(cx: &mut Cx, root: &'n Node) -> (Journey, Option<&'n Node>) {
    let pairs = cx.fields("", "", root, &JOURNEY_FIELDS).unwrap_or(&[]);
    let get = |key: &str| field(pairs, key);

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
            let f = |key: &str| field(fields, key);
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

pub(super) fn load_entry(cx: &mut Cx, node: &Node) -> Option<Entry> {
    const CTX: &str = "entry";
    let fields = cx.fields(CTX, "entry", node, &ENTRY_FIELDS)?;
    let get = |key: &str| field(fields, key);
    let trigger = match (get("event"), get("inactivity"), get("audience")) {
        (Some(event), None, None) => cx
            .text(CTX, "event", event, "an event type")
            .map(Trigger::Event),
        (None, None, Some(audience)) => load_audience(cx, audience),
        (None, Some(inactivity), None) => cx
            .fields(CTX, "inactivity", inactivity, &["event", "for"])
            .and_then(|fields| {
                let f = |key: &str| field(fields, key);
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
                say(
                    CTX,
                    "give exactly one of \"event\", \"inactivity\" or \"audience\"",
                ),
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

/// `audience: {at: RFC 3339, every?: DURATION}`.
pub(super) fn load_audience(cx: &mut Cx, node: &Node) -> Option<Trigger> {
    const CTX: &str = "entry";
    let fields = cx.fields(CTX, "audience", node, &["at", "every"])?;
    let get = |key: &str| field(fields, key);
    let at = cx
        .required(CTX, "audience.at", node, get("at"))
        .and_then(|n| {
            let parsed = n
                .scalar()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis());
            if parsed.is_none() {
                cx.error_in(
                    n,
                    CTX,
                    format!(
                        "audience.at must be an RFC 3339 time such as \"2026-02-02T09:00:00Z\" \
                         (quote it), found {}",
                        n.describe()
                    ),
                );
            }
            parsed
        });
    let every = match get("every") {
        None => Some(None),
        Some(n) => cx.duration(CTX, "audience.every", n).map(Some),
    };
    Some(Trigger::Audience {
        at: at?,
        every: every?,
    })
}

pub(super) fn step_uses_event(step: &Step) -> bool {
    match &step.kind {
        StepKind::Send(send) => send.vars.iter().any(|(_, e)| e.uses_event()),
        StepKind::WaitFor(w) => w.condition.as_ref().is_some_and(Expr::uses_event),
        StepKind::Branch(b) => b.arms.iter().any(|(e, _)| e.uses_event()),
        StepKind::Decide(d) => d
            .options
            .iter()
            .flat_map(|o| o.condition.iter().chain(o.score.iter()))
            .any(Expr::uses_event),
        StepKind::Update(attrs) => attrs.iter().any(|(_, e)| e.uses_event()),
        StepKind::WaitDate(w) => w.date.uses_event(),
        StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::Split(_) | StepKind::Exit => false,
    }
}

pub(super) fn load_steps(cx: &mut Cx, node: &Node) -> Vec<Step> {
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

pub(super) fn load_step(
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
            Some((kind_key @ ("branch" | "decide" | "split" | "exit"), _)) => {
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
        "wait" => load_wait(cx, ctx, kind_node, ids),
        "wait_for" => load_wait_for(cx, ctx, kind_node, ids, next).map(StepKind::WaitFor),
        "branch" => load_branch(cx, ctx, kind_node, ids).map(StepKind::Branch),
        "decide" => super::choice::load_decide(cx, ctx, kind_node, ids).map(StepKind::Decide),
        "split" => super::choice::load_split(cx, ctx, kind_node, ids).map(StepKind::Split),
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

pub(super) fn load_send(cx: &mut Cx, ctx: &str, node: &Node) -> Option<Send> {
    let fields = cx.fields(
        ctx,
        "send",
        node,
        &["channel", "template", "ttl", "cancel_on", "vars"],
    )?;
    let get = |key: &str| field(fields, key);
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

pub(super) fn load_wait(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
) -> Option<StepKind> {
    match &node.kind {
        Kind::Scalar { .. } => cx.duration(ctx, "wait", node).map(StepKind::Wait),
        Kind::Map(_) if key_node(node, "date").is_some() => {
            if let Some(until) = key_node(node, "until") {
                cx.error_in(
                    until,
                    ctx,
                    "wait: give either until (a time of day) or date (a date in the profile), \
                     not both",
                );
                return None;
            }
            load_wait_date(cx, ctx, node, ids).map(StepKind::WaitDate)
        }
        Kind::Map(_) => {
            let fields = cx.fields(ctx, "wait", node, &["until", "days"])?;
            let get = |key: &str| field(fields, key);
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

/// `wait: {date, offset, at, on_past}`.
pub(super) fn load_wait_date(
    cx: &mut Cx,
    ctx: &str,
    node: &Node,
    ids: &HashMap<String, usize>,
) -> Option<WaitDate> {
    let fields = cx.fields(ctx, "wait", node, &["date", "offset", "at", "on_past"])?;
    let get = |key: &str| field(fields, key);
    let date = get("date").and_then(|n| cx.expr(ctx, "wait.date", n));
    let offset_days = match get("offset") {
        None => Some(0),
        Some(n) => match n.scalar().and_then(|s| s.trim().parse::<i32>().ok()) {
            Some(days) if days.abs() <= 36_600 => Some(days),
            _ => {
                cx.error_in(
                    n,
                    ctx,
                    format!(
                        "wait.offset must be a whole number of days such as -7, found {}",
                        n.describe()
                    ),
                );
                None
            }
        },
    };
    let minute_of_day = cx
        .required(ctx, "wait.at", node, get("at"))
        .and_then(|n| cx.time_of_day(ctx, "wait.at", n));
    let on_past = match get("on_past") {
        None => Some(None),
        Some(n) => cx.target(ctx, "wait.on_past", n, ids).map(Some),
    };
    Some(WaitDate {
        date: date?,
        offset_days: offset_days?,
        minute_of_day: minute_of_day?,
        on_past: on_past?,
    })
}

pub(super) fn load_days(cx: &mut Cx, ctx: &str, node: &Node) -> Option<u8> {
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

pub(super) fn load_wait_for(
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
    let get = |key: &str| field(fields, key);
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

pub(super) fn load_branch(
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
        let get = |key: &str| field(fields, key);
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

pub(super) fn load_update(cx: &mut Cx, ctx: &str, node: &Node) -> Option<Vec<(String, Expr)>> {
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
