//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (partitions assigned and read to their heads, batches landing). Nothing here shows
//! personal data, so it needs no token: customers are looked up on the operator API
//! ([`crate::admin`]).

use crate::service::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    // The gauges read the store (RocksDB properties, the next timer): not on a runtime thread.
    let rendered = tokio::task::spawn_blocking(move || {
        crate::service::update_gauges(&s);
        s.metrics.render()
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match s.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
