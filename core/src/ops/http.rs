//! The operations listener's HTTP side (axum): `/metrics`, `/healthz`,
//! `/readyz`, the JSON API (`/api/v1/overview`) and the dashboard (`/`),
//! one page whose script and styles are in the binary.
//!
//! Access: `/healthz` and `/readyz` are open (probes carry no
//! credentials). Everything else shows more than health, so with a
//! [`Guard`] it needs a login, as the data port's `status` does: HTTP
//! Basic credentials of any user, checked by the node's user store
//! ([`Login`]); a login that passed is remembered for
//! [`LOGIN_REMEMBERED`] (keyed by a hash of the user and password), so a
//! dashboard polling every two seconds costs one password hash per half
//! minute, not one per poll. On a node with TLS the listener speaks
//! HTTPS with the node's certificate ([`serve_tls`]), so no password
//! crosses the network in clear.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures_util::future::BoxFuture;
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
/// overview shows (see [`sample`]); with `guard`, everything but the
/// health probes needs a login.
pub fn router(
    registry: Registry,
    probe: Arc<dyn Probe>,
    history: Arc<parking_lot::Mutex<History>>,
    guard: Option<Arc<Guard>>,
) -> Router {
    let figures = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/v1/overview", get(overview));
    let figures = match guard {
        Some(guard) => figures.layer(middleware::from_fn_with_state(guard, require_login)),
        None => figures,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(figures)
        .with_state(Arc::new(Ops {
            registry,
            probe,
            history,
        }))
}

/// Checks a user's password (the node's user store).
pub trait Login: Send + Sync + 'static {
    /// `Ok` when `user` exists and `password` is theirs; `Err` says why
    /// not, for the answer.
    fn login<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// How long a login that passed is remembered.
pub const LOGIN_REMEMBERED: Duration = Duration::from_secs(30);
/// Logins remembered at most (the oldest go first).
const LOGINS_REMEMBERED_MAX: usize = 256;

/// The login the figures need, and the logins that passed lately.
pub struct Guard {
    login: Arc<dyn Login>,
    passed: parking_lot::Mutex<HashMap<[u8; 32], Instant>>,
}

impl Guard {
    /// A guard checking logins with `login`.
    pub fn new(login: Arc<dyn Login>) -> Self {
        Guard {
            login,
            passed: parking_lot::Mutex::default(),
        }
    }

    /// Whether `authorization` (an `Authorization` header's value) holds
    /// Basic credentials of a user with that password.
    async fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let encoded = authorization
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or("log in with a user and password (HTTP Basic)")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "malformed Basic credentials")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("malformed Basic credentials")?;
        let key = *blake3::Hasher::new()
            .update(user.as_bytes())
            .update(&[0])
            .update(password.as_bytes())
            .finalize()
            .as_bytes();
        if self
            .passed
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < LOGIN_REMEMBERED)
        {
            return Ok(());
        }
        self.login.login(user, password).await?;
        let mut passed = self.passed.lock();
        passed.retain(|_, at| at.elapsed() < LOGIN_REMEMBERED);
        if passed.len() >= LOGINS_REMEMBERED_MAX
            && let Some(oldest) = passed.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
        {
            passed.remove(&oldest);
        }
        passed.insert(key, Instant::now());
        Ok(())
    }
}

async fn require_login(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match guard.check(authorization).await {
        Ok(()) => next.run(request).await,
        Err(reason) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"isthmus\", charset=\"UTF-8\"",
            )],
            axum::Json(serde_json::json!({ "error": reason })),
        )
            .into_response(),
    }
}

/// How long a connection may take to finish its TLS handshake, or to send
/// a request's head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `router` over TLS (`tls`: the node's own server configuration)
/// on `listener` until `shutdown` completes; connections still open then
/// are dropped.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "operations listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
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
