//! What the operator API and the web page tell of each journey's counts: the counts kept with
//! each input partition (see `journeyd_engine::report`), summed for the whole deployment
//! (those of the partitions this replica owns from its store, the others as published to the
//! counts topic); a journey's graph; and the contract's experiment document.

use crate::service::Shared;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use journeyd_engine::report::{Counts, JourneyCounts};
use journeyd_journey::graph::Graph;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the counts come from, for the answers that show them.
pub const SCOPE: &str = "the whole deployment: the partitions this replica owns as stored now, the others as their owners last published them (every 2 s)";

/// The counts kept with the partitions this replica owns, summed. Reads the store: call it
/// off the async runtime.
pub fn owned_counts(shared: &Shared) -> Result<Counts, journeyd_store::Error> {
    stored_counts(shared, &shared.partitions.owned())
}

/// The stored counts of `partitions`, summed.
fn stored_counts(
    shared: &Shared,
    partitions: &std::collections::BTreeSet<i32>,
) -> Result<Counts, journeyd_store::Error> {
    let mut total = Counts::default();
    for &p in partitions {
        if let Some(bytes) = shared.store.counts(p)? {
            match Counts::from_bytes(&bytes) {
                Ok(c) => total.add(&c),
                Err(error) => {
                    tracing::warn!(partition = p, %error, "A partition's counts are unreadable: left out.");
                }
            }
        }
    }
    Ok(total)
}

/// The counts of the whole deployment: [`owned_counts`], and for every other partition the
/// counts its owner last published (see [`super::published`]).
pub fn deployment_counts(shared: &Shared) -> Result<Counts, journeyd_store::Error> {
    // One reading of what is owned: a partition moving meanwhile is counted once.
    let owned = shared.partitions.owned();
    let mut total = stored_counts(shared, &owned)?;
    let published = shared
        .published_counts
        .read()
        .unwrap_or_else(|p| p.into_inner());
    for (p, (_, c)) in published.iter() {
        if !owned.contains(p) {
            total.add(c);
        }
    }
    Ok(total)
}

/// [`deployment_counts`] on a blocking thread; an error answers 500.
pub(super) async fn counts_now(shared: &Arc<Shared>) -> Result<Counts, Response> {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || deployment_counts(&s)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(super::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(e) => Err(super::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// A journey's summary for `GET /journeys`: entered, active, goals, entries and goals today,
/// sends by channel, suppressions by reason.
/// `today` is the processing clock's UTC day (see `journeyd_engine::report::day_of`).
pub fn summary(c: Option<&JourneyCounts>, today: i64) -> Value {
    let Some(c) = c else {
        return json!({"entered": 0, "active": 0, "goal_reached": 0, "entered_today": 0,
            "goals_today": 0, "sent": {}, "suppressed": {}});
    };
    let day = c.on(today);
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    let mut suppressed: BTreeMap<&str, u64> = BTreeMap::new();
    for s in c.steps.values() {
        for (ch, n) in &s.sent {
            *sent.entry(ch).or_default() += n;
        }
        for (r, n) in &s.suppressed {
            *suppressed.entry(r).or_default() += n;
        }
    }
    json!({
        "entered": c.entered,
        "active": c.active(),
        "goal_reached": c.goal_reached,
        "entered_today": day.entered,
        "goals_today": day.goal_reached,
        "sent": sent,
        "suppressed": suppressed,
    })
}

/// The processing clock's UTC day.
pub fn today(shared: &Shared) -> i64 {
    journeyd_engine::report::day_of(shared.clock.now())
}

fn no_journey(id: &str) -> Response {
    super::error(StatusCode::NOT_FOUND, format!("no journey `{id}`"))
}

/// The engine and the counts, for a journey that exists (404 otherwise).
async fn journey_counts(
    admin: &super::Admin,
    id: &str,
) -> Result<(Arc<journeyd_engine::Engine>, Counts), Response> {
    let engine = admin.shared.engine();
    if !engine.journeys().iter().any(|j| j.id == id) {
        return Err(no_journey(id));
    }
    Ok((engine, counts_now(&admin.shared).await?))
}

/// `GET /journeys/{id}/graph`: the current version's graph (as `journey graph` draws it).
pub(super) async fn graph(
    State(admin): State<Arc<super::Admin>>,
    Path(id): Path<String>,
) -> Response {
    let engine = admin.shared.engine();
    let Some(j) = engine.journeys().iter().find(|j| j.id == id).cloned() else {
        return no_journey(&id);
    };
    let mut body = Graph::of(&j).to_json();
    if let Some(map) = body.as_object_mut() {
        map.insert("id".into(), json!(j.id));
        map.insert("name".into(), json!(j.name));
        map.insert("version".into(), json!(j.version));
    }
    Json(body).into_response()
}

/// `GET /journeys/{id}/counts`: the live counts of every step (reached, waiting now, sent by
/// channel, suppressed by reason), the journey's totals, and its splits' arms.
pub(super) async fn counts(
    State(admin): State<Arc<super::Admin>>,
    Path(id): Path<String>,
) -> Response {
    let (engine, all) = match journey_counts(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mine = all.journeys.get(&id);
    let mut body = summary(mine, today(&admin.shared));
    let mut steps: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(c) = mine {
        let waiting = c.waiting_by_step(&engine, &id);
        for (s, sc) in &c.steps {
            steps.insert(
                s.clone(),
                json!({
                    "reached": sc.reached,
                    "waiting": waiting.get(s).copied().unwrap_or(0),
                    "sent": sc.sent,
                    "suppressed": sc.suppressed,
                }),
            );
        }
        for (s, n) in waiting {
            steps.entry(s).or_insert_with(
                || json!({"reached": 0, "waiting": n, "sent": {}, "suppressed": {}}),
            );
        }
    }
    let report = all.report(&engine);
    let splits = report.journeys.get(&id).map(|r| json!(r.splits));
    if let Some(map) = body.as_object_mut() {
        map.insert("journey".into(), json!(id));
        map.insert("steps".into(), json!(steps));
        map.insert("splits".into(), splits.unwrap_or_else(|| json!({})));
        map.insert("scope".into(), json!(SCOPE));
    }
    Json(body).into_response()
}

/// `GET /journeys/{id}/report`: the contract's experiment document, for this journey.
pub(super) async fn report(
    State(admin): State<Arc<super::Admin>>,
    Path(id): Path<String>,
) -> Response {
    let (engine, all) = match journey_counts(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut report = all.report(&engine);
    report.journeys.retain(|j, _| *j == id);
    let mut body = json!(report);
    if let Some(map) = body.as_object_mut() {
        map.insert("scope".into(), json!(SCOPE));
    }
    Json(body).into_response()
}
