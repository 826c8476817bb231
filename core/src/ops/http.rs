//! The operations listener's HTTP side (axum): `/metrics`, `/healthz`,
//! `/readyz`, the JSON API (`/api/v1/overview`) and the dashboard (`/`),
//! one page whose script and styles are in the binary.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::Probe;
use super::api::{self, History};

/// The dashboard page: HTML, styles and script in one file, no asset
/// fetched from anywhere but this listener's API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of `/metrics`: OpenMetrics text, which Prometheus
/// scrapes natively.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the routes read.
struct Ops {
    registry: Registry,
    probe: Arc<dyn Probe>,
    history: Arc<parking_lot::Mutex<History>>,
}

/// The router over a node's registry and probe, and the history its
/// overview shows (see [`sample`]).
pub fn router(
    registry: Registry,
    probe: Arc<dyn Probe>,
    history: Arc<parking_lot::Mutex<History>>,
) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/overview", get(overview))
        .with_state(Arc::new(Ops {
            registry,
            probe,
            history,
        }))
}

/// Serve `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "operations listener failed");
    }
}

/// Sample `probe` into `history` every [`api::SAMPLE_EVERY`], for ever
/// (the caller stops it with the listener).
pub async fn sample(probe: Arc<dyn Probe>, history: Arc<parking_lot::Mutex<History>>) {
    let mut tick = tokio::time::interval(api::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (probe, history) = (probe.clone(), history.clone());
        // Figures read some components under their locks: off the async
        // workers.
        let _ = tokio::task::spawn_blocking(move || {
            let figures = probe.figures();
            history.lock().sample(&figures, crate::wall_clock::now_ms());
        })
        .await;
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn overview(State(ops): State<Arc<Ops>>) -> Response {
    let answer =
        tokio::task::spawn_blocking(move || api::overview(ops.probe.as_ref(), &ops.history)).await;
    match answer {
        Ok(overview) => axum::Json(overview).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the overview failed\n").into_response(),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    // Encoding reads every figure (some under their component's lock):
    // off the async workers, like any other blocking read.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &ops.registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Ok(Err(_)) | Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics did not encode\n",
        )
            .into_response(),
    }
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "alive" })).into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.probe.readiness() {
        Ok(()) => axum::Json(serde_json::json!({ "ready": true })).into_response(),
        Err(not) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": not.reason })),
        )
            .into_response(),
    }
}
