//! runbox-server: the product people run. `runbox serve` speaks the OpenSandbox lifecycle API
//! natively, proxies each sandbox's execd API (the agent) under `/sandboxes/{id}/port/{port}`,
//! scopes everything to the caller's tenant, and records every action in an embedded SQLite
//! audit log.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod manager;
pub mod openapi;
pub mod proxy;

pub mod store;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, patch, post};
use axum::{Json, Router};

use crate::auth::Keys;
use crate::config::Config;
use crate::error::ApiError;
use crate::manager::Manager;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub keys: Arc<Keys>,
}

impl AppState {
    /// Opens the store, reconciles records left by a previous run, and builds the state.
    /// Every backend starts `agent` (the runbox-agent binary) in its sandboxes.
    pub fn new(config: Config, agent: PathBuf) -> Result<Self, ApiError> {
        let runtimes = runtimes(agent, &owner_of(&config.data_dir))
            .map_err(|e| ApiError::Internal(format!("cannot set up the runtimes: {e}")))?;
        Self::with_runtimes(config, runtimes)
    }

    pub fn with_runtimes(
        config: Config,
        runtimes: Vec<Arc<dyn runbox_runtime::Runtime>>,
    ) -> Result<Self, ApiError> {
        let store =
            Arc::new(Store::open(&config.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?);
        let keys = Arc::new(Keys::from_config(&config));
        let manager = Arc::new(Manager::new(Arc::new(config), store, runtimes)?);
        manager.reconcile()?;
        Ok(Self { manager, keys })
    }

    /// Checks the backends and removes what an earlier run left behind. Call once, before
    /// serving (`serve` does).
    pub async fn prepare(&self) {
        for (backend, status) in self.manager.check_runtimes().await {
            match status {
                Ok(detail) => eprintln!("runbox: runtime {backend}: available ({detail})"),
                Err(why) => eprintln!("runbox: runtime {backend}: unavailable: {why}"),
            }
        }
        self.manager.sweep_runtimes().await;
    }
}

/// Every backend this server knows, each starting `agent` in its sandboxes. Constructing
/// them does no I/O; `Runtime::check` says whether each works here. `owner` tells this
/// server's containers from another's on the same engine (see `owner_of`).
pub fn runtimes(
    agent: PathBuf,
    owner: &str,
) -> std::io::Result<Vec<Arc<dyn runbox_runtime::Runtime>>> {
    Ok(vec![
        Arc::new(runbox_runtime::NativeRuntime::new(agent.clone())?),
        Arc::new(runbox_runtime::DockerRuntime::new(agent.clone()).owned_by(owner)),
        Arc::new(runbox_runtime::GvisorRuntime::new(agent).owned_by(owner)),
    ])
}

/// A short stable id of the server that owns `data_dir`: the first 16 hex digits of the
/// SHA-256 of its absolute path.
pub fn owner_of(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let digest = sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub const REQUEST_ID: &str = "x-request-id";

/// Every response carries `X-Request-ID`: the client's, or a fresh one.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| runbox_runtime::random_hex(8));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Prometheus text format.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &state.manager;
    let c = &m.counters;
    let mut out = String::new();
    // Open to scrapers, so no tenant names: totals only.
    let live: usize = m.live_by_tenant().values().sum();
    let _ = writeln!(out, "# HELP runbox_sandboxes_live Sandboxes running now.\n# TYPE runbox_sandboxes_live gauge\nrunbox_sandboxes_live {live}");
    let _ = writeln!(out, "# HELP runbox_pool_ready Warm sandboxes waiting in pools.\n# TYPE runbox_pool_ready gauge\nrunbox_pool_ready {}", m.pooled());
    for (name, help, v) in [
        (
            "runbox_sandboxes_created_total",
            "Sandboxes created.",
            c.created.load(Relaxed),
        ),
        (
            "runbox_sandboxes_created_from_pool_total",
            "Sandboxes taken from a warm pool.",
            c.created_from_pool.load(Relaxed),
        ),
        (
            "runbox_sandbox_create_failures_total",
            "Create requests that failed after validation.",
            c.create_failures.load(Relaxed),
        ),
        (
            "runbox_sandbox_create_retries_total",
            "Sandbox starts retried because the agent never answered.",
            c.create_retries.load(Relaxed),
        ),
        (
            "runbox_sandboxes_expired_total",
            "Sandboxes ended by their timeout.",
            c.expired.load(Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.manager.config.max_body_bytes;
    let v1 = Router::new()
        .route("/sandboxes", get(api::list).post(api::create))
        .route("/sandboxes/{id}", get(api::get_one).delete(api::delete_one))
        .route("/sandboxes/{id}/metadata", patch(api::patch_metadata))
        .route("/sandboxes/{id}/isolation", get(api::isolation))
        .route("/sandboxes/{id}/pause", post(api::pause))
        .route("/sandboxes/{id}/resume", post(api::resume))
        .route("/sandboxes/{id}/renew-expiration", post(api::renew))
        .route("/sandboxes/{id}/endpoints/{port}", get(api::endpoint))
        .route("/metrics/events", post(api::metrics_events))
        .route("/audit", get(audit::list))
        .route("/executions/{id}", get(audit::execution))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(DefaultBodyLimit::max(body_limit));
    let proxy = Router::new()
        .route("/sandboxes/{id}/port/{port}", any(proxy::root))
        .route("/sandboxes/{id}/port/{port}/{*rest}", any(proxy::rest))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .nest("/v1", v1)
        .merge(proxy)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Serves until the process is stopped.
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let listen = state.manager.config.listen;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    state.prepare().await;
    tokio::spawn(manager::reaper(state.manager.clone()));
    tokio::spawn(state.manager.clone().fill_pools());
    eprintln!(
        "runbox: serving the OpenSandbox API on http://{}/v1 (data in {})",
        listener.local_addr()?,
        state.manager.config.data_dir.display()
    );
    let manager = state.manager.clone();
    let header_timeout = Duration::from_secs(state.manager.config.header_read_timeout_seconds);
    // On SIGTERM or SIGINT: stop accepting, end every sandbox (containers and runsc
    // sandboxes would outlive us), then let the open connections finish.
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("runbox: stopping: ending every sandbox");
        manager.shutdown().await;
    };
    serve_connections(listener, app(state), header_timeout, shutdown).await
}

/// How long open connections may take to finish after shutdown began.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then drains open connections (for
/// at most `DRAIN`). Written out instead of `axum::serve` because that one cannot bound how
/// long a client may take to send its request headers or keep an idle connection open:
/// hyper's header read timeout only runs with a timer, which axum::serve does not set. With
/// it, a client that sends headers slowly, or holds an idle keep-alive connection, is cut
/// off after `header_timeout`.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors and the like: pause instead of spinning.
            Err(e) => {
                eprintln!("runbox: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("runbox: connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Small streamed events must not wait for Nagle's algorithm (40 ms with delayed ACKs).
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}
