//! The operations listener's HTTP side (axum): `/metrics`, `/healthz`,
//! `/readyz`, `/api/v1/operations`.

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

/// The content type of `/metrics`: OpenMetrics text, which Prometheus
/// scrapes natively.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the routes read.
struct Ops {
    registry: Registry,
    probe: Arc<dyn Probe>,
}

/// The router over a node's registry and probe.
pub fn router(registry: Registry, probe: Arc<dyn Probe>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/operations", get(operations))
        .with_state(Arc::new(Ops { registry, probe }))
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

/// The node's operations, running and recently finished, oldest first:
/// `{"operations": [OperationInfo, ...]}` (docs/metrics.md shows one).
async fn operations(State(ops): State<Arc<Ops>>) -> Response {
    axum::Json(serde_json::json!({ "operations": ops.probe.operations() })).into_response()
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
