//! `GET /customers/{id}`: a customer's state and history as JSON, so an agent or an auditor can
//! see why a customer got what they got (personal data: a write token).

use crate::service::Shared;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use journeyd_engine::{ids::format_id, CustomerState, Engine, Record};
use journeyd_types::time::format_rfc3339;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) async fn customer(
    State(admin): State<Arc<super::Admin>>,
    Path(id): Path<String>,
) -> Response {
    let s: &Arc<Shared> = &admin.shared;
    let store = s.store.clone();
    let key = id.clone();
    let read =
        move || Ok::<_, journeyd_store::Error>((store.customer(&key)?, store.history(&key)?));
    let (bytes, history) = match tokio::task::spawn_blocking(read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    };
    let Some(bytes) = bytes else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no customer {id}")})),
        )
            .into_response();
    };
    let quarantined = s
        .quarantine
        .get(&id)
        .map(|q| json!({"error": q.error, "since": format_rfc3339(q.since)}));
    match CustomerState::decode(&bytes) {
        Ok((state, mut records)) => {
            // Entries that cannot be read (a newer journeyd's) are left out.
            records.extend(
                history
                    .iter()
                    .filter_map(|e| postcard::from_bytes::<Record>(e).ok()),
            );
            let mut described = describe(&s.engine(), &id, &state, &records);
            if let (Some(q), Some(map)) = (quarantined, described.as_object_mut()) {
                map.insert("quarantined".into(), q);
            }
            Json(described).into_response()
        }
        // Quarantined: its input goes to the dead-letter topic until the state is mended.
        Err(e) => Json(json!({
            "customer_id": id,
            "quarantined": quarantined.unwrap_or_else(|| json!({
                "error": format!("the stored state is unreadable: {e}"),
            })),
            "stored_bytes": bytes.len(),
        }))
        .into_response(),
    }
}

/// A customer's state and history records (oldest first) in words and names.
pub fn describe(engine: &Engine, id: &str, st: &CustomerState, history: &[Record]) -> Value {
    let journey = |j: u16| {
        st.journeys
            .get(j as usize)
            .map_or("?", |m| m.id.as_str())
            .to_owned()
    };
    let step = |j: u16, version: u32, s: u16| {
        engine
            .journey(&journey(j), version)
            .and_then(|jr| jr.steps.get(s as usize))
            .map_or_else(|| format!("#{s}"), |x| x.id.clone())
    };
    json!({
        "customer_id": id,
        "clock": format_rfc3339(st.clock),
        "profile": serde_json::to_value(&st.profile).unwrap_or_default(),
        "consent": st.consent.iter().map(|(c, g)| (c.clone(), json!(g))).collect::<serde_json::Map<_, _>>(),
        "instances": st.instances.iter().map(|i| json!({
            "journey": journey(i.j),
            "version": i.version,
            "step": step(i.j, i.version, i.step),
            "entered_at": format_rfc3339(i.entered_at),
            "waiting_until": i.deadline.map(format_rfc3339),
        })).collect::<Vec<_>>(),
        "outstanding": st.outstanding.iter().map(|o| json!({
            "action_id": format_id(o.id),
            "journey": journey(o.j),
            "step": step(o.j, o.version, o.step),
            "channel": o.channel,
            "expires_at": format_rfc3339(o.expires_at),
        })).collect::<Vec<_>>(),
        "held": st.held.iter().map(|h| json!({
            "action_id": format_id(h.id),
            "journey": journey(h.j),
            "step": step(h.j, h.version, h.step),
            "release_at": format_rfc3339(h.release_at),
        })).collect::<Vec<_>>(),
        "journeys": st.journeys.iter().map(|m| json!({
            "journey": m.id,
            "last_entered_at": m.entered_at.map(format_rfc3339),
            "last_version": m.version,
            "converted": m.converted,
            "inactivity_due": m.inactivity.as_ref().map(|a| format_rfc3339(a.due)),
        })).collect::<Vec<_>>(),
        "next_timer": st.wake.map(format_rfc3339),
        "history": engine.history(st, history),
    })
}
