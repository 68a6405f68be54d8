//! runbox-agent: the process that runs as PID 1 inside every sandbox (native now; Docker,
//! gVisor and Kubernetes reuse it unchanged) and serves the execd API: commands, bash
//! sessions, stateful code contexts (python, bash, javascript), files and metrics.
//!
//! It runs as the sandbox user with no capabilities, so everything it does on behalf of a
//! client is something the sandbox's own code could do; what it adds is the channel (a socket
//! the code cannot reach) and the token that guards it.
#![forbid(unsafe_code)]

pub mod code;
pub mod commands;
pub mod envs_file;
pub mod error;
pub mod files;
pub mod kernels;
pub mod metrics;
pub mod procs;
pub mod sessions;
pub mod stream;
pub mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use runbox_proto::execd::ACCESS_TOKEN_HEADER;

use crate::error::ApiError;

/// Settings the agent starts with (from its command line; see main.rs).
#[derive(Debug, Clone)]
pub struct Config {
    /// Required in `X-EXECD-ACCESS-TOKEN` on every request but `/ping`.
    pub token: String,
    /// Default working directory.
    pub workspace: PathBuf,
    /// Bytes kept of each output stream of one execution.
    pub output_cap: usize,
    /// Limits the host enforces on the whole sandbox, reported by /metrics.
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit: Option<f64>,
    /// Environment every process the agent starts begins with.
    pub env: Vec<(String, String)>,
    /// Import policy applied to every new python context.
    pub python_import_policy: kernels::ImportPolicy,
    /// Default per-cell timeout of code runs (a request's `timeout` overrides it).
    pub code_timeout: Option<std::time::Duration>,
    /// The file `$EXECD_ENVS` names (see envs_file.rs).
    pub envs_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token: String::new(),
            workspace: PathBuf::from("/workspace"),
            output_cap: 1 << 20,
            memory_limit_bytes: None,
            cpu_limit: None,
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/workspace".into()),
                ("LANG".into(), "C.UTF-8".into()),
                ("EXECD_ENVS".into(), "/tmp/.execd_envs".into()),
            ],
            python_import_policy: kernels::ImportPolicy::default(),
            code_timeout: None,
            envs_file: PathBuf::from("/tmp/.execd_envs"),
        }
    }
}

impl Config {
    /// The default configuration with everything the agent and its processes write (the
    /// workspace, HOME, the EXECD_ENVS file) inside `dir`: for running the agent outside a
    /// sandbox (tests), where /workspace and /tmp are the host's.
    pub fn in_dir(dir: PathBuf) -> Self {
        let envs_file = dir.join(".execd_envs");
        let mut config = Self::default();
        for (key, value) in &mut config.env {
            match key.as_str() {
                "HOME" => *value = dir.display().to_string(),
                "EXECD_ENVS" => *value = envs_file.display().to_string(),
                _ => {}
            }
        }
        config.envs_file = envs_file;
        config.workspace = dir;
        config
    }
}

/// Shared state of all handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub procs: procs::Procs,
    pub commands: commands::Commands,
    pub sessions: sessions::Sessions,
    pub contexts: code::Contexts,
    pub metrics: metrics::Sampler,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let procs = procs::Procs::default();
        Self {
            config: Arc::new(config),
            commands: commands::Commands::default(),
            sessions: sessions::Sessions::default(),
            contexts: code::Contexts::default(),
            metrics: metrics::Sampler::default(),
            procs,
        }
    }
}

async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    match given {
        Some(t) if runbox_proto::execd::token_matches(t, &state.config.token) => {
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The whole execd API. `/ping` is open (the SDK polls it before it has a token-bearing
/// client); everything else needs the token.
pub fn app(state: AppState) -> Router {
    let guarded = Router::new()
        .merge(commands::router())
        .merge(sessions::router())
        .merge(code::router())
        .merge(files::router())
        .merge(metrics::router())
        .merge(tunnel::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .merge(guarded)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}
