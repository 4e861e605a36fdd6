//! The operator API, on a listener of its own (`admin.listen`, default 127.0.0.1:9465), apart
//! from `/metrics`: every call needs a bearer token ([`tokens`]); a read token may look, a write
//! token may also change things and see customers (personal data). Every call leaves an audit
//! line (target `journeyd::audit`: the token's name, the method, the route with its
//! placeholders, the answer), never a customer id or attribute.
//!
//! | call | access | does |
//! |---|---|---|
//! | `GET /` (and `/app.js`, `/graph.js`, `/style.css`) | none | the web page (no data: it asks for a token and calls the routes below) |
//! | `GET /journeys` | read | id, name, versions, status, counts |
//! | `GET /journeys/{id}/graph` | read | the journey's graph (as `journey graph` draws it) |
//! | `GET /journeys/{id}/counts` | read | live counts of every step, and the splits' arms |
//! | `GET /journeys/{id}/report` | read | the contract's experiment document for the journey |
//! | `POST /journeys/{id}/{pause,resume,drain,stop}` | write | records the status in the control topic; every replica applies it ([`control`]) |
//! | `GET /customers/{id}` | write | the customer's state and history |
//! | `DELETE /customers/{id}` | write | publishes `erasure_requested` for them to the input topic |
//! | `POST /customers/{id}/merge?into=B` | write | 501 for now: the service does not merge customers yet |
//!
//! An erasure goes through the input topic, keyed by the customer, so it is ordered with the
//! customer's own events and processed as any event is. It is published with the `[kafka]`
//! producer settings: `partitioner` must be the one the input's producers use (librdkafka's
//! default is `consistent_random`; Java clients use `murmur2_random`), or the erasure lands in
//! another partition than the customer's events.

pub mod control;
mod customers;
mod page;
pub mod published;
pub mod report;
pub mod tokens;

use crate::config::{Config, Encoding};
use crate::service::Shared;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use journeyd_engine::Status;
use journeyd_types::{time, Attributes, Event};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokens::{Access, Tokens};

/// The operator API's settings (`[admin]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address of the operator API; empty disables it (the control topic is still
    /// followed).
    pub listen: String,
    /// A file of operator tokens (see [`tokens`]); tokens may also come from
    /// `JOURNEYD_ADMIN_TOKENS`. Without any, every call is refused.
    pub tokens_file: Option<std::path::PathBuf>,
    /// The control topic (journey statuses); empty: `<group.id>.control`.
    pub control_topic: String,
    /// The compacted topic where each replica publishes its partitions' counts, for the
    /// deployment's sums (see [`published`]); empty: `<group.id>.counts`.
    pub counts_topic: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9465".into(),
            tokens_file: None,
            control_topic: String::new(),
            counts_topic: String::new(),
        }
    }
}

/// What the handlers share.
pub struct Admin {
    shared: Arc<Shared>,
    tokens: Tokens,
    producer: FutureProducer,
    control_topic: String,
    /// Numbers the ids of the events the API publishes (with the process id and the time).
    seq: AtomicU64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("tokens", &self.tokens)
            .field("control_topic", &self.control_topic)
            .finish_non_exhaustive()
    }
}

/// The caller, as the token says (put in the request by the token check).
#[derive(Debug, Clone)]
struct Caller {
    name: String,
}

/// The producer of the API's records: the `[kafka]` producer settings, idempotent, `acks=all`,
/// never transactional (the service's own producer may be; they must not share an id).
pub(crate) fn producer(config: &Config) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = crate::service::client_config(config, crate::service::Role::Producer);
    c.remove("transactional.id");
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    c.set("linger.ms", "0");
    c.create()
}

/// The operator API's routes, with the token check and the audit line on every call.
pub fn router(shared: Arc<Shared>, tokens: Tokens) -> anyhow::Result<Router> {
    let control_topic = shared
        .config
        .control_topic()
        .ok_or_else(|| anyhow::anyhow!("the operator API needs the control topic"))?;
    let admin = Arc::new(Admin {
        producer: producer(&shared.config)?,
        shared,
        tokens,
        control_topic,
        seq: AtomicU64::new(0),
    });
    Ok(Router::new()
        .route("/journeys", get(journeys))
        .route("/journeys/{id}/graph", get(report::graph))
        .route("/journeys/{id}/counts", get(report::counts))
        .route("/journeys/{id}/report", get(report::report))
        .route("/journeys/{id}/{action}", post(set_status))
        .route(
            "/customers/{id}",
            get(customers::customer).delete(erase_customer),
        )
        .route("/customers/{id}/merge", post(merge_customer))
        .layer(middleware::from_fn_with_state(admin.clone(), check_token))
        .with_state(admin)
        .merge(page::routes()))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The access a call needs: looking at journeys needs a read token; anything else (changes,
/// and customers, which show personal data) a write token.
fn needs(method: &Method, route: &str) -> Access {
    let looks = *method == Method::GET || *method == Method::HEAD;
    if looks && route.starts_with("/journeys") {
        Access::Read
    } else {
        Access::Write
    }
}

/// Checks the bearer token, then logs the call (the audit line) with its answer.
async fn check_token(State(admin): State<Arc<Admin>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no such route)".to_owned(), |p| p.as_str().to_owned());
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme's name is case-insensitive (RFC 9110).
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim);
    let token = secret.and_then(|s| admin.tokens.find(s));
    let (name, response) = match token {
        None => {
            let why = if admin.tokens.is_empty() {
                "no operator token is configured (admin.tokens_file or JOURNEYD_ADMIN_TOKENS): \
                 every call is refused"
            } else if secret.is_none() {
                "an operator token is needed: Authorization: Bearer <token>"
            } else {
                "unknown token"
            };
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"journeyd\""),
            );
            ("-".to_owned(), r)
        }
        Some(t) if t.access < needs(&method, &route) => (
            t.name.clone(),
            error(
                StatusCode::FORBIDDEN,
                format!(
                    "token `{}` may only read: this call needs a write token",
                    t.name
                ),
            ),
        ),
        Some(t) => {
            req.extensions_mut().insert(Caller {
                name: t.name.clone(),
            });
            (t.name.clone(), next.run(req).await)
        }
    };
    // Journey ids and actions are not personal: a status call names them. Customer routes
    // give only their template.
    let what = if route.starts_with("/journeys") {
        path
    } else {
        route
    };
    tracing::info!(
        target: "journeyd::audit",
        token = %name,
        method = %method,
        route = %what,
        status = response.status().as_u16(),
        "Operator call."
    );
    response
}

/// `GET /journeys`.
async fn journeys(State(admin): State<Arc<Admin>>) -> Response {
    let shared = &admin.shared;
    let engine = shared.engine();
    let statuses = shared.statuses();
    let counts = match report::counts_now(shared).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let today = report::today(shared);
    let list: Vec<serde_json::Value> = engine
        .journeys()
        .iter()
        .map(|j| {
            let mut versions: Vec<u32> = (1..=j.version)
                .filter(|v| engine.journey(&j.id, *v).is_some())
                .collect();
            versions.dedup();
            let (status, since) = statuses
                .get(&j.id)
                .map_or((Status::Running, None), |(s, at)| (*s, Some(*at)));
            json!({
                "id": j.id,
                "name": j.name,
                "version": j.version,
                "versions": versions,
                "status": status.as_str(),
                "status_since": since.map(time::format_rfc3339),
                "counts": report::summary(counts.journeys.get(&j.id), today),
            })
        })
        .collect();
    Json(json!({ "journeys": list, "scope": report::SCOPE })).into_response()
}

/// `POST /journeys/{id}/{pause|resume|drain|stop}`.
async fn set_status(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let status = match action.as_str() {
        "pause" => Status::Paused,
        "resume" => Status::Running,
        "drain" => Status::Draining,
        "stop" => Status::Stopped,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action `{other}`: pause, resume, drain or stop"),
            )
        }
    };
    if !admin.shared.engine().journeys().iter().any(|j| j.id == id) {
        return error(StatusCode::NOT_FOUND, format!("no journey `{id}`"));
    }
    let change = control::StatusChange {
        journey: id,
        status,
        at: admin.shared.clock.now(),
        by: caller.name,
    };
    match control::publish(&admin.producer, &admin.control_topic, &change).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(change)).into_response(),
        Err(why) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record the status in the control topic: {why}"),
        ),
    }
}

/// Publishes an operator event for a customer to the first input topic, keyed by them, in
/// that topic's format.
async fn publish_event(
    admin: &Admin,
    customer: &str,
    event_type: &str,
    attributes: Attributes,
) -> Response {
    let input = &admin.shared.config.inputs[0];
    let at = admin.shared.clock.now();
    let event = Event {
        event_id: format!(
            "operator-{}-{at}-{}",
            std::process::id(),
            admin.seq.fetch_add(1, Ordering::Relaxed)
        ),
        customer_id: customer.to_owned(),
        event_type: event_type.to_owned(),
        channel: None,
        occurred_at: at,
        attributes,
    };
    let payload = match input.format {
        Encoding::Avro => {
            journeyd_codec::encode_touchpoint(&event, journeyd_codec::Framing::SingleObject)
        }
        Encoding::Json => serde_json::to_vec(&event).expect("an event serialises"),
    };
    let sent = admin
        .producer
        .send(
            FutureRecord::to(&input.topic)
                .key(customer.as_bytes())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await;
    match sent {
        Ok(delivery) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "event_id": event.event_id,
                "type": event_type,
                "topic": input.topic,
                "partition": delivery.partition,
                "offset": delivery.offset,
            })),
        )
            .into_response(),
        Err((e, _)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot publish to {}: {e}", input.topic),
        ),
    }
}

/// `DELETE /customers/{id}`: erasure (the right to be forgotten).
async fn erase_customer(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    publish_event(
        &admin,
        &id,
        journeyd_engine::ERASURE_REQUESTED,
        Attributes::new(),
    )
    .await
}

#[derive(Debug, Deserialize)]
struct MergeQuery {
    into: Option<String>,
}

/// `POST /customers/{id}/merge?into=B`.
async fn merge_customer(Path(id): Path<String>, Query(q): Query<MergeQuery>) -> Response {
    let Some(into) = q.into.filter(|b| !b.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "merge needs `into`: the surviving customer's id (?into=B)",
        );
    };
    if into == id {
        return error(
            StatusCode::BAD_REQUEST,
            "a customer cannot be merged into themselves",
        );
    }
    // The service does not carry merges out yet (the merged customer's state has to travel to
    // the survivor's partition): a `customer_merged` published now would be processed as an
    // ordinary event of the merged customer. Refused, not half done.
    error(
        StatusCode::NOT_IMPLEMENTED,
        "the service does not merge customers yet (journey simulate and journey test do)",
    )
}
