//! What the operator API and the web page tell of each journey's counts: the counts kept with
//! the input partitions this replica owns (see `journeyd_engine::report`), summed; a
//! journey's graph; and the contract's experiment document.

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
pub const SCOPE: &str = "the partitions this replica owns";

/// The counts kept with the partitions this replica owns, summed. Reads the store: call it
/// off the async runtime.
pub fn owned_counts(shared: &Shared) -> Result<Counts, journeyd_store::Error> {
    let mut total = Counts::default();
    for p in shared.partitions.owned() {
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

/// [`owned_counts`] on a blocking thread; an error answers 500.
pub(super) async fn counts_now(shared: &Arc<Shared>) -> Result<Counts, Response> {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || owned_counts(&s)).await {
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

/// A journey's summary for `GET /journeys`: entered, active, goals, sends by channel,
/// suppressions by reason.
pub fn summary(c: Option<&JourneyCounts>) -> Value {
    let Some(c) = c else {
        return json!({"entered": 0, "active": 0, "goal_reached": 0, "sent": {}, "suppressed": {}});
    };
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
        "active": c.steps.values().map(|s| s.waiting).sum::<i64>(),
        "goal_reached": c.goal_reached,
        "sent": sent,
        "suppressed": suppressed,
    })
}

fn no_journey(id: &str) -> Response {
    super::error(StatusCode::NOT_FOUND, format!("no journey `{id}`"))
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
    let engine = admin.shared.engine();
    if !engine.journeys().iter().any(|j| j.id == id) {
        return no_journey(&id);
    }
    let all = match counts_now(&admin.shared).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mine = all.journeys.get(&id);
    let mut body = summary(mine);
    let steps: BTreeMap<&str, Value> = mine
        .map(|c| {
            c.steps
                .iter()
                .map(|(s, sc)| {
                    (
                        s.as_str(),
                        json!({
                            "reached": sc.reached,
                            "waiting": sc.waiting,
                            "sent": sc.sent,
                            "suppressed": sc.suppressed,
                        }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
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
    let engine = admin.shared.engine();
    if !engine.journeys().iter().any(|j| j.id == id) {
        return no_journey(&id);
    }
    let all = match counts_now(&admin.shared).await {
        Ok(c) => c,
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
