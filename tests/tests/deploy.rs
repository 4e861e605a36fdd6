//! The deployment kit, checked against the code it deploys: `Dockerfile`, `docker-compose.yml`,
//! `deploy/prometheus`, `deploy/grafana` (provisioning and the dashboard) and `deploy/kubernetes`.
//!
//! No container runs here. These checks catch what review misses: a topic a journey sends to
//! that nobody creates, a metric the dashboard queries that journeyd does not export, a
//! `JOURNEYD__` variable journeyd refuses, a probe on the wrong port, a mounted file that does
//! not exist. Every message names the file and what is wrong in it.

use journeyd::config::Config;
use journeyd::metrics::Metrics;
use journeyd_journey::StepKind;
use prometheus::core::Collector;
use saphyr::{LoadableYamlNode, ScalarOwned, YamlOwned};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
const DASHBOARD: &str = "deploy/grafana/dashboards/journeyd.json";
const K8S: &str = "deploy/kubernetes";
const KUSTOMIZATION: &str = "deploy/kubernetes/kustomization.yaml";

// ---------------------------------------------------------------------------------------------
// Files and YAML
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// Every document of a YAML file, as JSON values (mapping keys become strings).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let docs =
        YamlOwned::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: not valid YAML: {e}"));
    docs.iter()
        .enumerate()
        .map(|(i, d)| to_json(d).unwrap_or_else(|e| panic!("{rel}: document {}: {e}", i + 1)))
        .collect()
}

fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn to_json(y: &YamlOwned) -> Result<Value, String> {
    Ok(match y {
        YamlOwned::Value(s) => match s {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(*b),
            ScalarOwned::Integer(i) => Value::from(*i),
            ScalarOwned::FloatingPoint(f) => {
                serde_json::Number::from_f64(f.0).map_or(Value::Null, Value::Number)
            }
            ScalarOwned::String(s) => Value::String(s.clone()),
        },
        YamlOwned::Representation(s, _, _) => Value::String(s.clone()),
        YamlOwned::Sequence(items) => {
            Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        YamlOwned::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match to_json(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if out.insert(key.clone(), to_json(v)?).is_some() {
                    return Err(format!("duplicate key `{key}`"));
                }
            }
            Value::Object(out)
        }
        YamlOwned::Tagged(_, inner) => to_json(inner)?,
        YamlOwned::Alias(_) => return Err("YAML aliases are not supported here".into()),
        YamlOwned::BadValue => return Err("a value that cannot be parsed".into()),
    })
}

/// Walks object keys (given whole: keys may contain dots and slashes).
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, key| node.get(*key))
}

/// A scalar as text (YAML may give a port or a replication factor as a number).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    array(v).iter().filter_map(text).collect()
}

/// `host:port` → port.
fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or(addr)
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

fn compose() -> Value {
    yaml_doc(COMPOSE)
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    at(c, &["services", name]).unwrap_or_else(|| panic!("{COMPOSE}: no service `{name}`"))
}

fn services(c: &Value) -> &Map<String, Value> {
    c.get("services")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{COMPOSE}: no `services` mapping"))
}

/// A service's environment, in either of compose's forms (mapping or `KEY=VALUE` list).
fn env_of(svc: &Value) -> Vec<(String, String)> {
    match svc.get("environment") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), text(v).unwrap_or_default()))
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(text)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s, String::new()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_get(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
    bind: bool,
}

fn mounts_of(svc: &Value) -> Vec<Mount> {
    array(svc.get("volumes"))
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target) = match parts.as_slice() {
                    [target] => (String::new(), (*target).to_owned()),
                    [source, target, ..] => ((*source).to_owned(), (*target).to_owned()),
                    [] => unreachable!(),
                };
                let bind = source.starts_with(['.', '/', '~']);
                Mount {
                    source,
                    target,
                    bind,
                }
            }
            other => Mount {
                source: other.get("source").and_then(text).unwrap_or_default(),
                target: other.get("target").and_then(text).unwrap_or_default(),
                bind: other.get("type").and_then(Value::as_str) == Some("bind"),
            },
        })
        .collect()
}

/// The host path of the bind mount whose target is `target`.
fn bind_source(svc_name: &str, svc: &Value, target: &str) -> String {
    mounts_of(svc)
        .into_iter()
        .find(|m| m.bind && m.target.trim_end_matches('/') == target.trim_end_matches('/'))
        .map(|m| m.source)
        .unwrap_or_else(|| panic!("{COMPOSE}: service `{svc_name}` mounts nothing at {target}"))
}

/// A repository path from a compose host path (`./deploy/x` → `deploy/x`).
fn repo_path(host: &str) -> PathBuf {
    repo().join(host.trim_start_matches("./"))
}

/// `entrypoint` and `command`, as one text (either may be a string or a list).
fn command_text(svc: &Value) -> String {
    ["entrypoint", "command"]
        .iter()
        .filter_map(|k| svc.get(*k))
        .map(|v| match v {
            Value::Array(items) => items.iter().filter_map(text).collect::<Vec<_>>().join("\n"),
            other => text(other).unwrap_or_default(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn command_args(svc: &Value) -> Option<Vec<String>> {
    match svc.get("command")? {
        Value::Array(items) => Some(items.iter().filter_map(text).collect()),
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        _ => None,
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            let prefix = format!("{flag}=");
            args.iter()
                .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        })
}

fn depends_condition(svc: &Value, on: &str) -> Option<String> {
    match svc.get("depends_on")? {
        Value::Object(m) => m.get(on).map(|d| {
            d.get("condition")
                .and_then(text)
                .unwrap_or_else(|| "service_started".into())
        }),
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str() == Some(on))
            .then(|| "service_started".into()),
        _ => None,
    }
}

/// Listener name → `host:port` of a comma-separated listener list.
fn listeners(list: &str) -> BTreeMap<String, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|l| {
            let (name, addr) = l
                .trim()
                .split_once("://")
                .unwrap_or_else(|| panic!("{COMPOSE}: kafka: bad listener `{l}`"));
            (name.to_owned(), addr.to_owned())
        })
        .collect()
}

/// The `host:port` of every advertised listener of the `kafka` service.
fn advertised(c: &Value) -> BTreeSet<String> {
    let env = env_of(service(c, "kafka"));
    let list = env_get(&env, "KAFKA_ADVERTISED_LISTENERS")
        .unwrap_or_else(|| panic!("{COMPOSE}: kafka has no KAFKA_ADVERTISED_LISTENERS"));
    listeners(&list).into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// `(INSTRUCTION, arguments)`, with continuation lines joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The `ENV` variables of the last stage (the image).
fn dockerfile_env() -> Vec<(String, String)> {
    let instrs = dockerfile();
    let last_from = instrs.iter().rposition(|(i, _)| i == "FROM").unwrap_or(0);
    let mut env = Vec::new();
    for (_, args) in instrs[last_from..].iter().filter(|(i, _)| i == "ENV") {
        let tokens: Vec<&str> = args.split_whitespace().collect();
        if tokens.first().is_some_and(|t| !t.contains('=')) {
            env.push((tokens[0].to_owned(), tokens[1..].join(" ")));
            continue;
        }
        for t in tokens {
            let (k, v) = t
                .split_once('=')
                .unwrap_or_else(|| panic!("{DOCKERFILE}: ENV `{t}` is not KEY=VALUE"));
            env.push((k.to_owned(), v.trim_matches('"').to_owned()));
        }
    }
    env
}

fn dockerfile_json(instr: &str) -> Vec<String> {
    let args = dockerfile()
        .into_iter()
        .rev()
        .find(|(i, _)| i == instr)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no {instr}"));
    serde_json::from_str(&args)
        .unwrap_or_else(|e| panic!("{DOCKERFILE}: {instr} is not a JSON list (exec form): {e}"))
}

/// `COPY`/`ADD` from the build context (not `--from`): (sources, destination).
fn dockerfile_copies() -> Vec<(Vec<String>, String)> {
    dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "COPY" || i == "ADD")
        .filter(|(_, a)| !a.contains("--from="))
        .map(|(_, a)| {
            let mut paths: Vec<String> = a
                .split_whitespace()
                .filter(|t| !t.starts_with("--"))
                .map(str::to_owned)
                .collect();
            let dest = paths.pop().unwrap_or_default();
            (paths, dest)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn journeyd_vars(env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, _)| k.starts_with("JOURNEYD__"))
        .cloned()
        .collect()
}

/// Loads the configuration as journeyd would, and has librdkafka check the `[kafka]` keys.
fn load_config(what: &str, file: &Path, env: Vec<(String, String)>) -> Config {
    let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let config = Config::load(Some(file), env).unwrap_or_else(|e| {
        panic!("{what}: journeyd refuses the configuration with the variables {names:?}: {e}")
    });
    let mut client = rdkafka::ClientConfig::new();
    for (k, v) in &config.kafka {
        client.set(k, v);
    }
    if let Err(e) = client.create_native_config() {
        panic!(
            "{what}: librdkafka refuses the [kafka] settings {:?}: {e}",
            config.kafka
        );
    }
    config
}

/// The configuration journeyd runs with in docker-compose.yml: the file the image copies to
/// the `--config` path, the image's ENV, then the service's environment.
fn compose_config() -> Config {
    compose_config_of("journeyd")
}

/// The configuration replica `name` of docker-compose.yml runs with.
fn compose_config_of(name: &str) -> Config {
    let c = compose();
    let svc = service(&c, name);
    let args = command_args(svc).unwrap_or_else(|| dockerfile_json("CMD"));
    let config_path = flag_value(&args, "--config")
        .unwrap_or_else(|| panic!("{COMPOSE}: journeyd runs without --config"));
    let source = dockerfile_copies()
        .into_iter()
        .find(|(_, dest)| *dest == config_path)
        .and_then(|(srcs, _)| srcs.into_iter().next())
        .unwrap_or_else(|| {
            panic!("{DOCKERFILE}: nothing is copied to {config_path}, the --config of {COMPOSE}")
        });
    let mut env = journeyd_vars(&dockerfile_env());
    env.extend(journeyd_vars(&env_of(svc)));
    load_config(
        &format!("{COMPOSE} ({name}, with {source} and the image's ENV)"),
        &repo().join(&source),
        env,
    )
}

/// The channels the journeys in journeys/ send to.
fn journey_channels() -> BTreeSet<String> {
    let loaded = journeyd_journey::load_dir(&repo().join("journeys"))
        .unwrap_or_else(|e| panic!("journeys/: does not load: {e}"));
    loaded
        .catalog
        .journeys
        .iter()
        .flat_map(|j| j.steps.iter())
        .filter_map(|s| match &s.kind {
            StepKind::Send(send) => Some(send.channel.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics and PromQL
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct MetricInfo {
    labels: BTreeSet<String>,
    histogram: bool,
}

/// Gives a labelled metric one child, so that it appears in the registry's exposition.
fn some_labels(c: &dyn Collector) -> Vec<String> {
    c.desc()
        .first()
        .map(|d| d.variable_labels.iter().map(|l| format!("x_{l}")).collect())
        .unwrap_or_default()
}

/// Every metric journeyd exports: name → labels. Built from the `Metrics` fields, then checked
/// against the registry's own exposition and against the names in metrics.rs, so that a metric
/// added there and not here fails this suite instead of passing unnoticed.
fn exported_metrics() -> BTreeMap<String, MetricInfo> {
    let m = Metrics::new().expect("the metrics register");
    let mut reg = BTreeMap::new();
    let counters = [
        &m.events_consumed,
        &m.events_rejected,
        &m.actions,
        &m.entries,
        &m.steps,
        &m.exits,
        &m.conversions,
        &m.suppressions,
        &m.expression_failures,
        &m.reloads,
        &m.actions_dead_lettered,
        &m.output_lost,
        &m.audience_customers,
    ];
    for c in counters {
        c.with_label_values(&some_labels(c)).inc();
    }
    let p = &m.partition_counts;
    let gauges = [
        &m.consumer_lag,
        &p.entered,
        &p.goals,
        &p.reached,
        &p.waiting,
        &p.sent,
        &p.suppressed,
    ];
    for g in gauges {
        g.with_label_values(&some_labels(g)).set(1);
    }
    m.batch_seconds
        .with_label_values(&some_labels(&m.batch_seconds))
        .observe(0.1);
    let mut collectors: Vec<(&dyn Collector, bool)> = counters
        .iter()
        .map(|c| (*c as &dyn Collector, false))
        .collect();
    collectors.extend(gauges.iter().map(|g| (*g as &dyn Collector, false)));
    collectors.extend([
        (&m.corrupt_states as &dyn Collector, false),
        (&m.timers_fired, false),
        (&m.timers_pending, false),
        (&m.timer_lag_seconds, false),
        (&m.event_to_action_seconds, true),
        (&m.batch_seconds, true),
        (&m.batch_retries, false),
        (&m.store_bytes, false),
        (&m.customers, false),
        (&m.quarantined, false),
        (&m.quarantined_now, false),
        (&m.restored_records, false),
        (&m.restore_remaining, false),
        (&m.changelog_records, false),
        (&m.events_already_applied, false),
        (&m.standby_records, false),
        (&m.transactions_committed, false),
        (&m.transactions_aborted, false),
    ]);
    for (c, histogram) in collectors {
        for d in c.desc() {
            reg.insert(
                d.fq_name.clone(),
                MetricInfo {
                    labels: d.variable_labels.iter().cloned().collect(),
                    histogram,
                },
            );
        }
    }
    let known: BTreeSet<&str> = reg.keys().map(String::as_str).collect();
    let rendered = m.render();
    let exposed: BTreeSet<&str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        exposed, known,
        "crates/daemon/src/metrics.rs: the registry exposes other metrics than the Metrics fields \
         deploy.rs knows; update exported_metrics() in tests/tests/deploy.rs"
    );
    let source = read("crates/daemon/src/metrics.rs");
    let in_source: BTreeSet<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("journeyd_"))
        .collect();
    assert_eq!(
        in_source, known,
        "crates/daemon/src/metrics.rs names other metrics than deploy.rs knows; update \
         exported_metrics() in tests/tests/deploy.rs"
    );
    reg
}

/// The metric names and label names a PromQL expression uses.
#[derive(Debug, Default)]
struct PromQl {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal that starts at `start`.
fn skip_string(c: &[char], start: usize) -> Result<usize, String> {
    let quote = c[start];
    let mut i = start + 1;
    while i < c.len() {
        if c[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if c[i] == quote {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(format!("unterminated string at {start}"))
}

/// The index of the bracket closing the one at `open`.
fn find_close(c: &[char], open: usize) -> Result<usize, String> {
    let (o, close) = match c[open] {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        other => return Err(format!("`{other}` is not a bracket")),
    };
    let mut depth = 0;
    let mut i = open;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                i = skip_string(c, i)?;
                continue;
            }
            x if x == o => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unclosed `{o}` at {open}"))
}

/// The identifiers outside string literals (label names in `{...}` and `by (...)`).
fn identifiers(c: &[char]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if matches!(c[i], '"' | '\'' | '`') {
            i = skip_string(c, i)?;
        } else if is_ident_start(c[i]) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else {
            i += 1;
        }
    }
    Ok(out)
}

fn parse_promql(expr: &str) -> Result<PromQl, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = PromQl::default();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if matches!(ch, '"' | '\'' | '`') {
            i = skip_string(&c, i)?;
        } else if ch == '{' {
            let end = find_close(&c, i)?;
            out.labels.extend(identifiers(&c[i + 1..end])?);
            i = end + 1;
        } else if ch == '[' {
            i = find_close(&c, i)? + 1;
        } else if ch == '$' {
            // A Grafana variable ($__rate_interval, $journey).
            i += 1;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let paren = c.get(j) == Some(&'(');
            if GROUPING.contains(&lower.as_str()) {
                if paren {
                    let end = find_close(&c, j)?;
                    out.labels.extend(identifiers(&c[j + 1..end])?);
                    i = end + 1;
                }
            } else if !KEYWORDS.contains(&lower.as_str()) && !paren {
                out.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Checks one expression against the exported metrics; returns its problems.
fn check_expr(expr: &str, legend: &str, reg: &BTreeMap<String, MetricInfo>) -> Vec<String> {
    let parsed = match parse_promql(expr) {
        Ok(p) => p,
        Err(e) => return vec![format!("cannot read `{expr}`: {e}")],
    };
    let mut problems = Vec::new();
    if parsed.metrics.is_empty() {
        problems.push(format!("`{expr}` uses no metric"));
    }
    // Labels Prometheus adds to every scraped series.
    let mut allowed: BTreeSet<String> = ["instance", "job"].map(String::from).into();
    for name in &parsed.metrics {
        let found = reg.get(name).map(|info| (info, false)).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                reg.get(base)
                    .filter(|i| i.histogram)
                    .map(|i| (i, *suffix == "_bucket"))
            })
        });
        match found {
            None => problems.push(format!(
                "`{expr}` uses `{name}`, which journeyd does not export"
            )),
            Some((info, _)) if info.histogram && reg.contains_key(name) => problems.push(format!(
                "`{expr}` uses the histogram `{name}` without _bucket, _sum or _count"
            )),
            Some((info, bucket)) => {
                allowed.extend(info.labels.iter().cloned());
                if bucket {
                    allowed.insert("le".into());
                }
            }
        }
    }
    let mut used = parsed.labels.clone();
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        used.insert(rest[start + 2..start + end].trim().to_owned());
        rest = &rest[start + end + 2..];
    }
    for label in used.difference(&allowed) {
        problems.push(format!(
            "`{expr}` (legend `{legend}`) uses the label `{label}`, which none of its metrics has \
             (they have {allowed:?})"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// Every document of every manifest in deploy/kubernetes (kustomization.yaml aside).
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(K8S))
        .unwrap_or_else(|e| panic!("{K8S}: cannot list: {e}"))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{K8S}: no manifests");
    files
        .into_iter()
        .flat_map(|f| {
            let rel = format!("{K8S}/{f}");
            yaml_docs(&rel).into_iter().map(move |d| (rel.clone(), d))
        })
        .collect()
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    docs.iter()
        .filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn name_of(d: &Value) -> String {
    at(d, &["metadata", "name"])
        .and_then(text)
        .unwrap_or_default()
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), text(v).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

struct StatefulSet<'a> {
    file: String,
    doc: &'a Value,
    pod: &'a Value,
    container: &'a Value,
}

fn statefulset(docs: &[(String, Value)]) -> StatefulSet<'_> {
    let sets = of_kind(docs, "StatefulSet");
    assert_eq!(
        sets.len(),
        1,
        "{K8S}: expected one StatefulSet, found {}",
        sets.len()
    );
    let (file, doc) = sets[0];
    let pod = at(doc, &["spec", "template", "spec"])
        .unwrap_or_else(|| panic!("{file}: the StatefulSet has no spec.template.spec"));
    let containers = array(pod.get("containers"));
    let container = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("journeyd"))
        .unwrap_or_else(|| panic!("{file}: no container named journeyd"));
    StatefulSet {
        file: file.clone(),
        doc,
        pod,
        container,
    }
}

impl StatefulSet<'_> {
    fn mount_path(&self, volume: &str) -> String {
        array(self.container.get("volumeMounts"))
            .iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(volume))
            .and_then(|m| m.get("mountPath").and_then(text))
            .unwrap_or_else(|| panic!("{}: the volume `{volume}` is not mounted", self.file))
    }

    fn container_port(&self, port: &Value) -> Option<String> {
        let ports = array(self.container.get("ports"));
        match port {
            Value::String(name) => ports
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(text)),
            other => text(other),
        }
    }

    fn args(&self) -> Vec<String> {
        strings(self.container.get("args"))
    }

    /// The container's environment; values from the downward API or a Secret get a stand-in.
    fn env(&self) -> Vec<(String, String)> {
        array(self.container.get("env"))
            .iter()
            .map(|e| {
                let name = e.get("name").and_then(text).unwrap_or_default();
                let value = e.get("value").and_then(text).unwrap_or_else(|| {
                    match at(e, &["valueFrom", "fieldRef", "fieldPath"]).and_then(Value::as_str) {
                        Some("metadata.name") => "journeyd-0".into(),
                        _ => "stand-in".into(),
                    }
                });
                (name, value)
            })
            .collect()
    }
}

/// The effective configuration of the StatefulSet: the ConfigMap's file at the `--config`
/// path, the image's ENV, then the container's environment.
fn kubernetes_config(docs: &[(String, Value)]) -> Config {
    let s = statefulset(docs);
    let config_path = flag_value(&s.args(), "--config")
        .unwrap_or_else(|| panic!("{}: journeyd runs without --config", s.file));
    // Which configMap volume is mounted at the file's folder, and which key is the file.
    let (dir, key) = config_path
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{}: --config {config_path} is not a path", s.file));
    let volume = array(s.container.get("volumeMounts"))
        .iter()
        .find(|m| m.get("mountPath").and_then(text).as_deref() == Some(dir))
        .and_then(|m| m.get("name").and_then(text))
        .unwrap_or_else(|| {
            panic!(
                "{}: nothing is mounted at {dir} (--config {config_path})",
                s.file
            )
        });
    let map_name = array(s.pod.get("volumes"))
        .iter()
        .find(|v| v.get("name").and_then(text).as_deref() == Some(volume.as_str()))
        .and_then(|v| at(v, &["configMap", "name"]).and_then(text))
        .unwrap_or_else(|| panic!("{}: the volume `{volume}` is not a ConfigMap", s.file));
    let (map_file, map) = of_kind(docs, "ConfigMap")
        .into_iter()
        .find(|(_, d)| name_of(d) == map_name)
        .unwrap_or_else(|| panic!("{K8S}: no ConfigMap `{map_name}` (the configuration)"));
    let toml = at(map, &["data", key])
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{map_file}: ConfigMap `{map_name}` has no key `{key}`"));
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join(key);
    std::fs::write(&path, toml).expect("writing the configuration");
    let mut env = journeyd_vars(&dockerfile_env());
    env.extend(journeyd_vars(&s.env()));
    load_config(
        &format!("{} with {map_file} and the image's ENV", s.file),
        &path,
        env,
    )
}

fn kustomization() -> Value {
    yaml_doc(KUSTOMIZATION)
}

// ---------------------------------------------------------------------------------------------
// The checks: compose and the image
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_has_the_services_and_kafka_runs_in_kraft_mode() {
    let c = compose();
    for name in ["kafka", "kafka-init", "journeyd", "prometheus", "grafana"] {
        service(&c, name);
    }
    for (name, svc) in services(&c) {
        let image = svc.get("image").and_then(Value::as_str).unwrap_or_default();
        assert!(
            !name.contains("zookeeper") && !image.contains("zookeeper"),
            "{COMPOSE}: service `{name}` ({image}) is ZooKeeper; Kafka runs in KRaft mode"
        );
        assert!(
            env_get(&env_of(svc), "KAFKA_ZOOKEEPER_CONNECT").is_none(),
            "{COMPOSE}: service `{name}` sets KAFKA_ZOOKEEPER_CONNECT"
        );
    }
    let kafka = service(&c, "kafka");
    let image = kafka
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        image.starts_with("apache/kafka:"),
        "{COMPOSE}: kafka should be the official apache/kafka image, found `{image}`"
    );
    let env = env_of(kafka);
    let get =
        |k: &str| env_get(&env, k).unwrap_or_else(|| panic!("{COMPOSE}: kafka does not set {k}"));
    let roles: BTreeSet<String> = get("KAFKA_PROCESS_ROLES")
        .split(',')
        .map(|r| r.trim().to_owned())
        .collect();
    assert!(
        roles.contains("controller") && roles.contains("broker"),
        "{COMPOSE}: kafka's KAFKA_PROCESS_ROLES should be broker,controller (one node), found {roles:?}"
    );
    get("CLUSTER_ID");
    let node = get("KAFKA_NODE_ID");
    let voters = get("KAFKA_CONTROLLER_QUORUM_VOTERS");
    assert!(
        voters
            .split(',')
            .any(|v| v.starts_with(&format!("{node}@"))),
        "{COMPOSE}: KAFKA_CONTROLLER_QUORUM_VOTERS `{voters}` does not name node {node}"
    );
    let protocols: BTreeSet<String> = get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
        .split(',')
        .filter_map(|p| p.split_once(':').map(|(n, _)| n.trim().to_owned()))
        .collect();
    let listening = listeners(&get("KAFKA_LISTENERS"));
    let advertised_names = listeners(&get("KAFKA_ADVERTISED_LISTENERS"));
    for name in listening.keys().chain(advertised_names.keys()) {
        assert!(
            protocols.contains(name),
            "{COMPOSE}: kafka's listener {name} is not in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
        );
    }
    for name in advertised_names.keys() {
        assert!(
            listening.contains_key(name),
            "{COMPOSE}: kafka advertises {name}, which KAFKA_LISTENERS does not open"
        );
    }
    let controller = get("KAFKA_CONTROLLER_LISTENER_NAMES");
    assert!(
        listening.contains_key(&controller),
        "{COMPOSE}: the controller listener {controller} is not in KAFKA_LISTENERS"
    );
    let voter_port = voters.split(',').next().map(port_of).unwrap_or_default();
    assert_eq!(
        port_of(&listening[&controller]),
        voter_port,
        "{COMPOSE}: the quorum voters use port {voter_port}, the controller listens elsewhere"
    );
    for k in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        assert_eq!(
            get(k),
            "1",
            "{COMPOSE}: kafka is one node, so {k} must be 1"
        );
    }
    assert!(
        kafka.get("healthcheck").is_some(),
        "{COMPOSE}: kafka needs a healthcheck (kafka-init waits for it)"
    );
    assert_eq!(
        depends_condition(service(&c, "kafka-init"), "kafka").as_deref(),
        Some("service_healthy"),
        "{COMPOSE}: kafka-init must wait for kafka to be healthy"
    );
    assert_eq!(
        depends_condition(service(&c, "journeyd"), "kafka-init").as_deref(),
        Some("service_completed_successfully"),
        "{COMPOSE}: journeyd must wait for kafka-init to have created the topics"
    );
}

#[test]
fn compose_runs_two_replicas_in_one_group_exactly_once() {
    let c = compose();
    let replicas: Vec<&String> = services(&c)
        .keys()
        .filter(|k| k.starts_with("journeyd"))
        .collect();
    assert_eq!(
        replicas.len(),
        2,
        "{COMPOSE}: two journeyd replicas: {replicas:?}"
    );
    let configs: Vec<Config> = replicas.iter().map(|r| compose_config_of(r)).collect();
    for (name, config) in replicas.iter().zip(&configs) {
        assert_eq!(
            config.processing.guarantee,
            journeyd::config::Guarantee::ExactlyOnce,
            "{COMPOSE}: {name} runs exactly once"
        );
        assert!(
            config.store.changelog,
            "{COMPOSE}: {name} keeps the changelog"
        );
        assert_eq!(
            config.kafka.get("group.id"),
            configs[0].kafka.get("group.id"),
            "{COMPOSE}: one consumer group"
        );
        let image = service(&c, name).get("image").and_then(text);
        assert_eq!(
            image.as_deref(),
            Some("journeyd:dev"),
            "{COMPOSE}: {name}'s image"
        );
    }
    let distinct = |what: &str, values: Vec<String>| {
        let set: BTreeSet<&String> = values.iter().collect();
        assert_eq!(
            set.len(),
            values.len(),
            "{COMPOSE}: each replica its own {what}: {values:?}"
        );
    };
    distinct(
        "group.instance.id (and so transactional.id)",
        configs
            .iter()
            .map(|c| {
                c.kafka
                    .get("group.instance.id")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect(),
    );
    distinct(
        "store volume",
        replicas
            .iter()
            .map(|r| {
                let m = mounts_of(service(&c, r))
                    .into_iter()
                    .find(|m| configs.iter().any(|c| c.store.path.starts_with(&m.target)))
                    .unwrap_or_else(|| panic!("{COMPOSE}: {r} mounts no volume at its store.path"));
                assert!(!m.bind, "{COMPOSE}: {r}'s store is a named volume");
                m.source
            })
            .collect(),
    );
    distinct(
        "host port",
        replicas
            .iter()
            .flat_map(|r| strings(service(&c, r).get("ports")))
            .map(|p| p.split(':').next().unwrap_or_default().to_owned())
            .collect(),
    );
    // Prometheus scrapes both.
    let prometheus = yaml_doc("deploy/prometheus/prometheus.yml");
    let targets: BTreeSet<String> = array(at(&prometheus, &["scrape_configs"]))
        .iter()
        .flat_map(|j| array(j.get("static_configs")).to_vec())
        .flat_map(|s| strings(s.get("targets")))
        .collect();
    for (name, config) in replicas.iter().zip(&configs) {
        let want = format!("{name}:{}", port_of(&config.http.listen));
        assert!(
            targets.contains(&want),
            "prometheus.yml scrapes {want}: {targets:?}"
        );
    }
}

#[test]
fn journeyd_is_built_from_the_dockerfile() {
    let c = compose();
    let svc = service(&c, "journeyd");
    let (context, file) = match svc.get("build") {
        Some(Value::String(ctx)) => (ctx.clone(), "Dockerfile".to_owned()),
        Some(b) => (
            b.get("context")
                .and_then(text)
                .unwrap_or_else(|| ".".into()),
            b.get("dockerfile")
                .and_then(text)
                .unwrap_or_else(|| "Dockerfile".into()),
        ),
        None => panic!("{COMPOSE}: journeyd has no `build`: it must be built from the Dockerfile"),
    };
    let dockerfile_path = repo_path(&context).join(&file);
    assert!(
        dockerfile_path.is_file(),
        "{COMPOSE}: journeyd builds from {}, which does not exist",
        dockerfile_path.display()
    );
    assert_eq!(
        dockerfile_path.canonicalize().ok(),
        repo().join(DOCKERFILE).canonicalize().ok(),
        "{COMPOSE}: journeyd should build from the repository's {DOCKERFILE}"
    );

    let instrs = dockerfile();
    let froms: Vec<&str> = instrs
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        froms.len() >= 2 && froms[0].starts_with("rust:1-bookworm"),
        "{DOCKERFILE}: expected a rust:1-bookworm builder stage first, found {froms:?}"
    );
    assert!(
        froms
            .last()
            .is_some_and(|f| f.starts_with("debian:bookworm-slim")),
        "{DOCKERFILE}: the image should be debian:bookworm-slim, found {froms:?}"
    );
    let runs: Vec<&str> = instrs
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    let validate = runs
        .iter()
        .position(|r| r.contains("journey validate journeys"));
    let build = runs.iter().position(|r| {
        r.contains("cargo build --release --locked")
            && r.contains("-p journeyd ")
            && r.contains("-p journeyd-cli")
    });
    assert!(
        build.is_some(),
        "{DOCKERFILE}: no `cargo build --release --locked -p journeyd -p journeyd-cli`"
    );
    assert!(
        validate.is_some() && validate < build,
        "{DOCKERFILE}: `journey validate journeys` should run before the service is built"
    );
    assert!(
        runs.iter().any(|r| r.contains("--mount=type=cache")),
        "{DOCKERFILE}: the builds should use BuildKit cache mounts"
    );
    let user = instrs
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone());
    assert!(
        user.as_deref().is_some_and(|u| u != "root" && u != "0"),
        "{DOCKERFILE}: the image should run as a non-root USER, found {user:?}"
    );
    assert_eq!(
        dockerfile_json("ENTRYPOINT"),
        ["journeyd"],
        "{DOCKERFILE}: ENTRYPOINT"
    );
    assert_eq!(
        dockerfile_json("CMD").first().map(String::as_str),
        Some("run"),
        "{DOCKERFILE}: CMD should start with `run`"
    );

    // What the Dockerfile copies from the context exists and is not excluded.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("**/").trim_end_matches('/').to_owned())
        .collect();
    for (sources, dest) in dockerfile_copies() {
        for src in sources {
            if src == "." {
                continue;
            }
            let clean = src.trim_end_matches('/');
            assert!(
                repo().join(clean).exists(),
                "{DOCKERFILE}: COPY {src} {dest}: {src} does not exist"
            );
            let first = clean.split('/').next().unwrap_or(clean);
            assert!(
                !ignored.iter().any(|p| p == clean || p == first),
                "{DOCKERFILE}: COPY {src} {dest}: .dockerignore excludes {src}"
            );
        }
    }
    // The workspace must be in the build context: cargo reads every member.
    for must in [
        "Cargo.toml",
        "Cargo.lock",
        "crates",
        "tests",
        "schemas",
        "journeys",
        "deploy",
    ] {
        assert!(
            !ignored.iter().any(|p| p == must),
            ".dockerignore: excludes {must}, which the build needs"
        );
    }
}

#[test]
fn every_bind_mount_exists_and_every_named_volume_is_declared() {
    let c = compose();
    let declared: BTreeSet<String> = c
        .get("volumes")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut binds = 0;
    for (name, svc) in services(&c) {
        for m in mounts_of(svc) {
            if m.bind {
                binds += 1;
                assert!(
                    repo_path(&m.source).exists(),
                    "{COMPOSE}: service `{name}` mounts {} at {}, which does not exist in the \
                     repository",
                    m.source,
                    m.target
                );
            } else if !m.source.is_empty() {
                assert!(
                    declared.contains(&m.source),
                    "{COMPOSE}: service `{name}` uses the volume `{}`, not declared under the \
                     top-level `volumes`",
                    m.source
                );
            }
        }
    }
    assert!(
        binds >= 4,
        "{COMPOSE}: expected the journeys, Prometheus and Grafana bind mounts"
    );
}

#[test]
fn journeyd_in_compose_is_configured_and_reachable() {
    let c = compose();
    let config = compose_config();
    let svc = service(&c, "journeyd");

    let listen = &config.http.listen;
    assert!(
        listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"),
        "{COMPOSE}: journeyd's http.listen is `{listen}`: Prometheus in another container \
         cannot reach it (set JOURNEYD__HTTP__LISTEN=0.0.0.0:9464)"
    );
    let port = port_of(listen).to_owned();
    let exposed = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.split('/').next().unwrap_or(p).to_owned())
                .collect::<Vec<_>>()
        })
        .collect::<BTreeSet<_>>();
    assert!(
        exposed.contains(&port),
        "{DOCKERFILE}: EXPOSE {exposed:?} does not include the HTTP port {port}"
    );
    let published: Vec<String> = strings(svc.get("ports"));
    assert!(
        published.iter().any(|p| port_of(p) == port),
        "{COMPOSE}: journeyd does not publish its HTTP port {port} (ports: {published:?})"
    );

    let advertised = advertised(&c);
    let servers = config
        .kafka
        .get("bootstrap.servers")
        .cloned()
        .unwrap_or_default();
    for server in servers.split(',') {
        assert!(
            advertised.contains(server.trim()),
            "{COMPOSE}: journeyd connects to `{server}`, which kafka does not advertise \
             ({advertised:?})"
        );
    }

    let mounts = mounts_of(svc);
    let store = config.store.path.to_string_lossy().into_owned();
    assert!(
        mounts
            .iter()
            .any(|m| !m.bind && !m.source.is_empty() && store.starts_with(&m.target)),
        "{COMPOSE}: journeyd's store.path {store} is not on a named volume: the state would be \
         lost with the container"
    );
    let journeys = config.journeys.dir.to_string_lossy().into_owned();
    let source = bind_source("journeyd", svc, &journeys);
    assert_eq!(
        repo_path(&source).canonicalize().ok(),
        repo().join("journeys").canonicalize().ok(),
        "{COMPOSE}: journeyd's journeys.dir {journeys} should be ./journeys"
    );
}

#[test]
fn kafka_init_creates_every_topic_journeyd_uses() {
    let c = compose();
    let config = compose_config();
    let init = service(&c, "kafka-init");
    let script = command_text(init);
    let advertised = advertised(&c);
    let mut created = BTreeSet::new();
    for line in script.lines().filter(|l| l.contains("--topic")) {
        let tokens: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let topic = flag_value(&tokens, "--topic")
            .unwrap_or_else(|| panic!("{COMPOSE}: kafka-init: no topic name in `{line}`"));
        assert!(
            line.contains("kafka-topics.sh") && line.contains("--create"),
            "{COMPOSE}: kafka-init: `{line}` does not create the topic"
        );
        assert!(
            line.contains("--if-not-exists"),
            "{COMPOSE}: kafka-init: `{line}` fails on a second `up` without --if-not-exists"
        );
        let server = flag_value(&tokens, "--bootstrap-server").unwrap_or_default();
        assert!(
            advertised.contains(&server),
            "{COMPOSE}: kafka-init connects to `{server}`, which kafka does not advertise"
        );
        created.insert(topic);
    }
    let channels = journey_channels();
    assert!(!channels.is_empty(), "journeys/: no journey sends anything");
    let mut needed: Vec<(String, String)> = config
        .inputs
        .iter()
        .map(|i| (i.topic.clone(), "the input topic".to_owned()))
        .collect();
    needed.push((
        config.outputs.dead_letter_topic.clone(),
        "the dead-letter topic".into(),
    ));
    needed.extend(channels.iter().map(|ch| {
        (
            config.actions_topic(ch),
            format!("the `{ch}` channel's actions"),
        )
    }));
    for (topic, why) in needed {
        assert!(
            created.contains(&topic),
            "{COMPOSE}: kafka-init does not create `{topic}` ({why}); it creates {created:?}"
        );
    }
}

#[test]
fn prometheus_scrapes_journeyd() {
    let c = compose();
    let config = compose_config();
    let prom = service(&c, "prometheus");
    let image = prom
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        image.starts_with("prom/prometheus"),
        "{COMPOSE}: prometheus should be prom/prometheus, found `{image}`"
    );
    let source = bind_source("prometheus", prom, "/etc/prometheus/prometheus.yml");
    let rel = source.trim_start_matches("./").to_owned();
    assert_eq!(
        rel, "deploy/prometheus/prometheus.yml",
        "{COMPOSE}: Prometheus's configuration"
    );
    let doc = yaml_doc(&rel);
    let port = port_of(&config.http.listen).to_owned();
    let wanted = format!("journeyd:{port}");
    let jobs = array(doc.get("scrape_configs"));
    let job = jobs
        .iter()
        .find(|j| {
            array(j.get("static_configs"))
                .iter()
                .any(|s| strings(s.get("targets")).contains(&wanted))
        })
        .unwrap_or_else(|| panic!("{rel}: no scrape job targets {wanted}"));
    let path = job.get("metrics_path").and_then(text);
    assert!(
        path.is_none() || path.as_deref() == Some("/metrics"),
        "{rel}: the journeyd job scrapes {path:?}, journeyd serves /metrics"
    );
    assert!(
        services(&c).contains_key(host_of(&wanted)),
        "{rel}: scrapes {wanted}, not a service of {COMPOSE}"
    );
}

#[test]
fn grafana_provisioning_points_at_the_datasource_and_the_dashboard() {
    let c = compose();
    let grafana = service(&c, "grafana");
    let image = grafana
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        image.starts_with("grafana/grafana"),
        "{COMPOSE}: grafana should be grafana/grafana, found `{image}`"
    );
    let env = env_of(grafana);
    assert_eq!(
        env_get(&env, "GF_AUTH_ANONYMOUS_ENABLED").as_deref(),
        Some("true"),
        "{COMPOSE}: grafana should allow anonymous access"
    );
    assert_eq!(
        env_get(&env, "GF_AUTH_ANONYMOUS_ORG_ROLE").as_deref(),
        Some("Viewer"),
        "{COMPOSE}: anonymous Grafana users should be viewers"
    );
    assert!(
        strings(grafana.get("ports"))
            .iter()
            .any(|p| port_of(p) == "3000"),
        "{COMPOSE}: grafana should publish port 3000"
    );

    let provisioning = bind_source("grafana", grafana, "/etc/grafana/provisioning");
    let provisioning = provisioning.trim_start_matches("./").trim_end_matches('/');
    let ds_file = format!("{provisioning}/datasources/prometheus.yml");
    let ds = yaml_doc(&ds_file);
    assert_eq!(
        ds.get("apiVersion").and_then(text).as_deref(),
        Some("1"),
        "{ds_file}: apiVersion"
    );
    let sources = array(ds.get("datasources"));
    let prom = sources
        .iter()
        .find(|d| d.get("type").and_then(Value::as_str) == Some("prometheus"))
        .unwrap_or_else(|| panic!("{ds_file}: no prometheus datasource"));
    let url = prom.get("url").and_then(text).unwrap_or_default();
    let host = url
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    assert!(
        services(&c).contains_key(host),
        "{ds_file}: the datasource URL {url} is not a service of {COMPOSE}"
    );
    let uid = prom
        .get("uid")
        .and_then(text)
        .unwrap_or_else(|| panic!("{ds_file}: the datasource needs a fixed uid for the dashboard"));

    let prov_file = format!("{provisioning}/dashboards/journeyd.yml");
    let prov = yaml_doc(&prov_file);
    assert_eq!(
        prov.get("apiVersion").and_then(text).as_deref(),
        Some("1"),
        "{prov_file}: apiVersion"
    );
    let providers = array(prov.get("providers"));
    assert!(!providers.is_empty(), "{prov_file}: no providers");
    let mut found = false;
    for p in providers {
        assert_eq!(
            p.get("type").and_then(Value::as_str),
            Some("file"),
            "{prov_file}: type"
        );
        let path = at(p, &["options", "path"])
            .and_then(text)
            .unwrap_or_else(|| panic!("{prov_file}: a provider without options.path"));
        let host_dir = bind_source("grafana", grafana, &path);
        let dashboard = repo_path(&host_dir).join("journeyd.json");
        assert!(
            dashboard.is_file(),
            "{prov_file}: loads {path}, where {COMPOSE} mounts {host_dir}, which has no journeyd.json"
        );
        found |= dashboard.canonicalize().ok() == repo().join(DASHBOARD).canonicalize().ok();
    }
    assert!(found, "{prov_file}: no provider loads {DASHBOARD}");

    // The dashboard refers to this datasource only.
    let dash: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: not valid JSON: {e}"));
    let mut refs = Vec::new();
    datasource_refs(&dash, &mut refs);
    assert!(!refs.is_empty(), "{DASHBOARD}: names no datasource");
    for r in refs {
        assert_eq!(
            r, uid,
            "{DASHBOARD}: refers to the datasource `{r}`; the provisioned one is `{uid}`"
        );
    }
}

fn datasource_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "datasource" {
                    match child {
                        Value::Object(ds) => {
                            if ds.get("type").and_then(Value::as_str) != Some("grafana") {
                                out.push(ds.get("uid").and_then(text).unwrap_or_default());
                            }
                        }
                        Value::Null => {}
                        other => out.push(other.to_string()),
                    }
                } else {
                    datasource_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| datasource_refs(i, out)),
        _ => {}
    }
}

fn all_panels<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
    for p in panels {
        out.push(p);
        all_panels(array(p.get("panels")), out);
    }
}

#[test]
fn the_dashboard_queries_only_metrics_journeyd_exports() {
    let reg = exported_metrics();
    let dash: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: not valid JSON: {e}"));
    assert_eq!(
        dash.get("uid").and_then(Value::as_str),
        Some("journeyd"),
        "{DASHBOARD}: uid"
    );
    let schema = dash
        .get("schemaVersion")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert!(
        schema >= 36,
        "{DASHBOARD}: schemaVersion {schema} is older than Grafana 9"
    );

    let mut panels = Vec::new();
    all_panels(array(dash.get("panels")), &mut panels);
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for p in &panels {
        let title = p.get("title").and_then(Value::as_str).unwrap_or("?");
        let id = p
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{DASHBOARD}: panel `{title}` has no id"));
        assert!(
            ids.insert(id),
            "{DASHBOARD}: panel id {id} (`{title}`) is used twice"
        );
        if p.get("type").and_then(Value::as_str) == Some("row") {
            continue;
        }
        let targets = array(p.get("targets"));
        if targets.is_empty() {
            problems.push(format!("panel `{title}` has no query"));
        }
        for t in targets {
            let expr = t.get("expr").and_then(Value::as_str).unwrap_or_default();
            let legend = t
                .get("legendFormat")
                .and_then(Value::as_str)
                .unwrap_or_default();
            problems.extend(
                check_expr(expr, legend, &reg)
                    .into_iter()
                    .map(|e| format!("panel `{title}`: {e}")),
            );
            if let Ok(parsed) = parse_promql(expr) {
                used.extend(parsed.metrics);
            }
        }
    }
    for var in array(at(&dash, &["templating", "list"])) {
        let name = var.get("name").and_then(Value::as_str).unwrap_or("?");
        let query = match var.get("query") {
            Some(Value::Object(q)) => q.get("query").and_then(text),
            Some(other) => text(other),
            None => None,
        }
        .unwrap_or_default();
        let Some(inner) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        else {
            continue;
        };
        let (metric, label) = inner
            .rsplit_once(',')
            .map(|(m, l)| (m.trim(), l.trim()))
            .unwrap_or(("", inner.trim()));
        match reg.get(metric) {
            Some(info) if info.labels.contains(label) => {}
            _ => problems.push(format!(
                "variable `{name}`: `{query}`: journeyd has no metric `{metric}` with the label `{label}`"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{DASHBOARD}:\n  {}",
        problems.join("\n  ")
    );

    let used: BTreeSet<String> = used
        .into_iter()
        .map(|m| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s).filter(|b| reg.contains_key(*b)))
                .map_or(m.clone(), str::to_owned)
        })
        .collect();
    for wanted in [
        "journeyd_events_consumed_total",
        "journeyd_events_rejected_total",
        "journeyd_consumer_lag_messages",
        "journeyd_actions_total",
        "journeyd_suppressions_total",
        "journeyd_timer_lag_seconds",
        "journeyd_timers_pending",
        "journeyd_timers_fired_total",
        "journeyd_event_to_action_seconds",
        "journeyd_batch_seconds",
        "journeyd_journey_entries_total",
        "journeyd_journey_steps_total",
        "journeyd_journey_exits_total",
        "journeyd_journey_conversions_total",
        "journeyd_store_bytes",
        "journeyd_customers",
    ] {
        assert!(
            used.contains(wanted),
            "{DASHBOARD}: no panel shows {wanted}"
        );
    }
}

#[test]
fn the_promql_reader_finds_metrics_and_labels() {
    let p = parse_promql(
        r#"histogram_quantile(0.95, sum by (le, stage) (rate(journeyd_batch_seconds_bucket{stage!="x{y}"}[$__rate_interval]))) / on (stage) group_left max(up)"#,
    )
    .unwrap();
    assert_eq!(
        p.metrics,
        ["journeyd_batch_seconds_bucket", "up"]
            .map(String::from)
            .into()
    );
    assert_eq!(p.labels, ["le", "stage"].map(String::from).into());
    let reg = exported_metrics();
    assert!(check_expr("sum(rate(journeyd_events_consumed_total[5m]))", "", &reg).is_empty());
    assert_eq!(
        check_expr("sum(rate(journeyd_event_consumed_total[5m]))", "", &reg).len(),
        1
    );
    assert_eq!(
        check_expr(
            "sum by (channel) (journeyd_events_rejected_total)",
            "",
            &reg
        )
        .len(),
        1
    );
    assert_eq!(
        check_expr("journeyd_events_rejected_total", "{{journey}}", &reg).len(),
        1
    );
    assert_eq!(
        check_expr("rate(journeyd_event_to_action_seconds[5m])", "", &reg).len(),
        1
    );
    assert_eq!(
        check_expr("vector(1)", "", &reg).len(),
        1,
        "no metric at all"
    );
    assert!(check_expr(
        "histogram_quantile(0.5, sum by (le) (rate(journeyd_event_to_action_seconds_bucket[5m])))",
        "",
        &reg
    )
    .is_empty());
}

// ---------------------------------------------------------------------------------------------
// The checks: Kubernetes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_has_api_version_kind_and_name() {
    let docs = manifests();
    for (file, d) in &docs {
        for key in ["apiVersion", "kind"] {
            assert!(
                d.get(key).and_then(text).is_some_and(|s| !s.is_empty()),
                "{file}: a document without {key}"
            );
        }
        assert!(
            !name_of(d).is_empty(),
            "{file}: a {} without metadata.name",
            d["kind"]
        );
    }
    for kind in ["StatefulSet", "Service", "ConfigMap", "ServiceMonitor"] {
        assert!(!of_kind(&docs, kind).is_empty(), "{K8S}: no {kind}");
    }
}

#[test]
fn the_statefulset_keeps_state_and_is_probed() {
    let docs = manifests();
    let config = kubernetes_config(&docs);
    let s = statefulset(&docs);
    let file = &s.file;
    let spec = s.doc.get("spec").expect("spec");

    let claims: Vec<String> = array(spec.get("volumeClaimTemplates"))
        .iter()
        .map(name_of)
        .collect();
    assert!(
        !claims.is_empty(),
        "{file}: no volumeClaimTemplates: RocksDB needs a persistent volume per replica"
    );
    let store = config.store.path.to_string_lossy().into_owned();
    assert!(
        claims.iter().any(|c| store.starts_with(&s.mount_path(c))),
        "{file}: store.path {store} is not on a volumeClaimTemplates volume"
    );
    assert_eq!(
        spec.get("podManagementPolicy").and_then(Value::as_str),
        Some("Parallel"),
        "{file}: podManagementPolicy"
    );
    assert!(
        s.pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .is_some(),
        "{file}: set terminationGracePeriodSeconds (journeyd finishes its batch on SIGTERM)"
    );
    assert!(
        at(s.container, &["resources", "requests"]).is_some()
            && at(s.container, &["resources", "limits", "memory"]).is_some(),
        "{file}: set resources (requests, and a memory limit)"
    );
    assert_eq!(
        at(s.pod, &["securityContext", "runAsNonRoot"]),
        Some(&Value::Bool(true)),
        "{file}: the pod should run as non-root"
    );

    // Probes, on journeyd's HTTP port.
    let port = port_of(&config.http.listen).to_owned();
    assert!(
        config.http.listen.starts_with("0.0.0.0:"),
        "{file}: http.listen is `{}`: the kubelet cannot probe it",
        config.http.listen
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(s.container, &[probe, "httpGet"])
            .unwrap_or_else(|| panic!("{file}: no {probe} with httpGet"));
        assert_eq!(
            get.get("path").and_then(Value::as_str),
            Some(path),
            "{file}: {probe} path"
        );
        let probe_port = get
            .get("port")
            .and_then(|p| s.container_port(p))
            .unwrap_or_else(|| panic!("{file}: {probe} port is not a container port"));
        assert_eq!(
            probe_port, port,
            "{file}: {probe} probes a port journeyd does not listen on"
        );
    }

    // Static membership from the pod name.
    let instance = array(s.container.get("env"))
        .iter()
        .find(|e| {
            e.get("name").and_then(Value::as_str) == Some("JOURNEYD__KAFKA__GROUP_INSTANCE_ID")
        })
        .unwrap_or_else(|| panic!("{file}: no JOURNEYD__KAFKA__GROUP_INSTANCE_ID"));
    assert_eq!(
        at(instance, &["valueFrom", "fieldRef", "fieldPath"]).and_then(Value::as_str),
        Some("metadata.name"),
        "{file}: group.instance.id should be the pod name (downward API)"
    );
    assert_eq!(
        config.kafka.get("group.instance.id").map(String::as_str),
        Some("journeyd-0"),
        "{file}: JOURNEYD__KAFKA__GROUP_INSTANCE_ID does not reach group.instance.id"
    );

    // Journeys from a ConfigMap that exists (in a manifest or generated by kustomize).
    let journeys = config.journeys.dir.to_string_lossy().into_owned();
    let volume = array(s.container.get("volumeMounts"))
        .iter()
        .find(|m| m.get("mountPath").and_then(text).as_deref() == Some(journeys.as_str()))
        .and_then(|m| m.get("name").and_then(text))
        .unwrap_or_else(|| panic!("{file}: nothing is mounted at journeys.dir {journeys}"));
    let mut maps: BTreeSet<String> = of_kind(&docs, "ConfigMap")
        .iter()
        .map(|(_, d)| name_of(d))
        .collect();
    maps.extend(
        array(kustomization().get("configMapGenerator"))
            .iter()
            .filter_map(|g| g.get("name").and_then(text)),
    );
    let volumes = array(s.pod.get("volumes"));
    for v in volumes {
        if let Some(map) = at(v, &["configMap", "name"]).and_then(text) {
            assert!(
                maps.contains(&map),
                "{file}: the volume {} uses the ConfigMap `{map}`, which neither a manifest nor \
                 {KUSTOMIZATION} makes",
                v["name"]
            );
        }
    }
    assert!(
        volumes.iter().any(|v| {
            v.get("name").and_then(text).as_deref() == Some(volume.as_str())
                && at(v, &["configMap", "name"]).is_some()
        }),
        "{file}: the journeys ({journeys}) should come from a ConfigMap"
    );
    let declared: BTreeSet<String> = volumes
        .iter()
        .filter_map(|v| v.get("name").and_then(text))
        .chain(claims.iter().cloned())
        .collect();
    for m in array(s.container.get("volumeMounts")) {
        let name = m.get("name").and_then(text).unwrap_or_default();
        assert!(
            declared.contains(&name),
            "{file}: mounts the undeclared volume `{name}`"
        );
    }
}

#[test]
fn the_services_and_the_servicemonitor_select_journeyd() {
    let docs = manifests();
    let s = statefulset(&docs);
    let pod_labels = labels_of(at(s.doc, &["spec", "template", "metadata", "labels"]));
    let selector = labels_of(at(s.doc, &["spec", "selector", "matchLabels"]));
    assert!(
        !selector.is_empty() && subset(&selector, &pod_labels),
        "{}: spec.selector does not match the pod labels",
        s.file
    );
    let container_ports: BTreeSet<String> = array(s.container.get("ports"))
        .iter()
        .filter_map(|p| p.get("name").and_then(text))
        .collect();
    let services = of_kind(&docs, "Service");
    for (file, svc) in &services {
        let sel = labels_of(at(svc, &["spec", "selector"]));
        assert!(
            !sel.is_empty() && subset(&sel, &pod_labels),
            "{file}: Service {} does not select the journeyd pods",
            name_of(svc)
        );
        for p in array(at(svc, &["spec", "ports"])) {
            if let Some(Value::String(target)) = p.get("targetPort") {
                assert!(
                    container_ports.contains(target),
                    "{file}: Service {} targets the port `{target}`, which the container does \
                     not name",
                    name_of(svc)
                );
            }
        }
    }
    let headless = s
        .doc
        .get("spec")
        .and_then(|sp| sp.get("serviceName"))
        .and_then(text)
        .unwrap_or_default();
    let (hfile, hsvc) = services
        .iter()
        .find(|(_, d)| name_of(d) == headless)
        .unwrap_or_else(|| panic!("{}: serviceName `{headless}` is not a Service", s.file));
    assert_eq!(
        at(hsvc, &["spec", "clusterIP"]).and_then(Value::as_str),
        Some("None"),
        "{hfile}: the StatefulSet's Service `{headless}` must be headless"
    );

    for (file, mon) in of_kind(&docs, "ServiceMonitor") {
        assert_eq!(
            mon.get("apiVersion").and_then(Value::as_str),
            Some("monitoring.coreos.com/v1"),
            "{file}: apiVersion"
        );
        let wanted = labels_of(at(mon, &["spec", "selector", "matchLabels"]));
        assert!(!wanted.is_empty(), "{file}: selector.matchLabels is empty");
        let matched: Vec<&Value> = services
            .iter()
            .map(|(_, d)| d)
            .filter(|d| subset(&wanted, &labels_of(at(d, &["metadata", "labels"]))))
            .collect();
        assert_eq!(
            matched.len(),
            1,
            "{file}: the selector {wanted:?} should match exactly one Service (the metrics one), \
             it matches {:?}",
            matched.iter().map(|d| name_of(d)).collect::<Vec<_>>()
        );
        let port_names: BTreeSet<String> = array(at(matched[0], &["spec", "ports"]))
            .iter()
            .filter_map(|p| p.get("name").and_then(text))
            .collect();
        let endpoints = array(at(mon, &["spec", "endpoints"]));
        assert!(!endpoints.is_empty(), "{file}: no endpoints");
        for e in endpoints {
            let port = e.get("port").and_then(text).unwrap_or_default();
            assert!(
                port_names.contains(&port),
                "{file}: endpoint port `{port}` is not a port name of Service {} ({port_names:?})",
                name_of(matched[0])
            );
            let path = e.get("path").and_then(text);
            assert!(
                path.is_none() || path.as_deref() == Some("/metrics"),
                "{file}: endpoint path {path:?}, journeyd serves /metrics"
            );
        }
    }
}

#[test]
fn the_kustomization_lists_every_journey_and_every_manifest() {
    let k = kustomization();
    for r in strings(k.get("resources")) {
        assert!(
            repo().join(K8S).join(&r).is_file(),
            "{KUSTOMIZATION}: the resource {r} does not exist"
        );
    }
    let generators = array(k.get("configMapGenerator"));
    let journeys = generators
        .iter()
        .find(|g| g.get("name").and_then(Value::as_str) == Some("journeyd-journeys"))
        .unwrap_or_else(|| panic!("{KUSTOMIZATION}: no configMapGenerator journeyd-journeys"));
    let mut listed = BTreeSet::new();
    for f in strings(journeys.get("files")) {
        let (key, path) = f.split_once('=').map_or_else(
            || {
                let name = f.rsplit('/').next().unwrap_or(&f).to_owned();
                (name, f.clone())
            },
            |(k, p)| (k.to_owned(), p.to_owned()),
        );
        assert!(
            repo().join(K8S).join(&path).is_file(),
            "{KUSTOMIZATION}: {path} does not exist"
        );
        listed.insert(key);
    }
    let mut present = BTreeSet::new();
    for e in std::fs::read_dir(repo().join("journeys")).expect("journeys/") {
        let e = e.expect("a directory entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            present.insert(name);
        }
    }
    assert_eq!(
        listed, present,
        "{KUSTOMIZATION}: the journeyd-journeys files should be exactly the journeys in journeys/"
    );
}

#[test]
fn every_journeyd_variable_is_accepted() {
    // Unknown keys are errors in journeyd's configuration, and librdkafka refuses unknown
    // [kafka] properties: a misspelt JOURNEYD__ variable fails here, not at start in production.
    let c = compose();
    let mut found = 0;
    for (name, svc) in services(&c) {
        let vars = journeyd_vars(&env_of(svc));
        found += vars.len();
        let mut env = journeyd_vars(&dockerfile_env());
        env.extend(vars);
        load_config(
            &format!("{COMPOSE}: service `{name}`"),
            &repo().join("deploy/journeyd.toml"),
            env,
        );
    }
    assert!(found > 0, "{COMPOSE}: no JOURNEYD__ variable at all");
    let docs = manifests();
    let s = statefulset(&docs);
    assert!(
        !journeyd_vars(&s.env()).is_empty(),
        "{}: no JOURNEYD__ variable at all",
        s.file
    );
    kubernetes_config(&docs);
    // And the check itself can fail.
    let bad = vec![("JOURNEYD__HTTP__LISTN".to_owned(), "0.0.0.0:1".to_owned())];
    assert!(Config::load(None, bad).is_err());
    let mut client = rdkafka::ClientConfig::new();
    client.set("group.instance.idd", "x");
    assert!(client.create_native_config().is_err());
}
