//! The `Runtime` trait: one way of isolating sandboxes (the native jail, a Docker container,
//! a gVisor sandbox), each starting the same `runbox-agent` as the sandbox's first process
//! and handing back an `Instance` the server drives without knowing which backend it is.
//!
//! Every backend reaches its agent over a unix socket on the host (`Instance::client`); the
//! socket lives in a root-only directory, so other sandboxes and containers cannot reach it.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::client::AgentClient;

/// Which isolation a sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// runbox-jail: namespaces, cgroups, seccomp and landlock on the host kernel.
    Native,
    /// A hardened Docker container (the engine's runc) with the agent inside.
    Docker,
    /// gVisor's `runsc`: a user-space kernel between the code and the host.
    Gvisor,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Native, Backend::Docker, Backend::Gvisor];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Docker => "docker",
            Backend::Gvisor => "gvisor",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Backend::Native),
            "docker" => Ok(Backend::Docker),
            "gvisor" | "runsc" => Ok(Backend::Gvisor),
            other => Err(format!(
                "unknown runtime `{other}` (expected native, docker or gvisor)"
            )),
        }
    }
}

/// A byte stream into the sandbox (a TCP connection, or a tunnel through the agent).
pub trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}
pub type Stream = Box<dyn AsyncStream>;

/// The image a sandbox runs, resolved by the caller (the server's image table, the CLI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSource {
    /// The name users gave (`default`, `python-data`, ...), for messages and labels.
    pub name: String,
    /// An unpacked root filesystem (`runbox image build/import`), used by native and gvisor.
    /// None: the host's /usr (native's default; gvisor builds an equivalent bundle root).
    pub rootfs: Option<PathBuf>,
    /// The Docker image reference (`runbox image build` loads `runbox/<name>:latest`).
    pub docker: Option<String>,
}

/// Everything a backend needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The sandbox id (names and labels the container; unique).
    pub id: String,
    pub image: ImageSource,
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    /// Output cap per stream of each command the agent runs.
    pub output_bytes: u64,
    /// Environment of the code the agent runs.
    pub env: Vec<(String, String)>,
    /// Extra agent flags (`--python-allow ...`).
    pub agent_args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The backend cannot run here (no engine, no runsc): the server may fall back.
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable { backend: Backend, reason: String },
    /// The image does not exist for this backend.
    #[error("image `{image}` is not available to the {backend} backend: {reason}")]
    Image {
        backend: Backend,
        image: String,
        reason: String,
    },
    /// Starting failed after the backend was reached (a container that died during create).
    #[error("cannot start the sandbox on {backend}: {reason}")]
    Start { backend: Backend, reason: String },
    /// An operation on a running sandbox failed.
    #[error("{backend}: cannot {action} the sandbox: {reason}")]
    Control {
        backend: Backend,
        action: &'static str,
        reason: String,
    },
    /// The operation does not exist on this backend or host (no freezer).
    #[error("{0}")]
    Unsupported(String),
}

/// How a sandbox ended, as far as the backend knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ended {
    /// `stopped` (the agent exited 0, which it does only after forwarding a stop from
    /// outside: `docker stop`, `runsc kill`, SIGTERM from the host), `exited` (any other
    /// code), `signaled`, `killed`, `oom`, `gone` (the container vanished), ...
    pub status: String,
    pub detail: String,
}

impl Ended {
    /// The status of a sandbox whose agent exited 0.
    pub const STOPPED: &'static str = "stopped";
    /// What the agent's exit 0 means, for every backend.
    pub const STOPPED_DETAIL: &'static str = "the agent forwarded a stop from outside and exited 0";

    /// The agent exited 0: it forwarded a stop from outside and ended.
    pub fn stopped() -> Self {
        Self {
            status: Self::STOPPED.into(),
            detail: Self::STOPPED_DETAIL.into(),
        }
    }
}

/// A way of isolating sandboxes. One value per backend lives for the whole server.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + fmt::Debug {
    fn backend(&self) -> Backend;

    /// Whether this backend works on this host; Ok carries a one-line description (engine
    /// version, runsc platform), Err why not. Cheap enough to call at server start.
    async fn check(&self) -> Result<String, String>;

    /// Starts one sandbox with the agent as its first process. Returns once it is started;
    /// the caller waits for the agent with `Instance::client().wait_ready`.
    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, RuntimeError>;

    /// Removes what earlier runs of the server left behind (containers, runsc sandboxes)
    /// whose sandbox id is not in `keep`; returns the ids removed.
    async fn sweep(&self, keep: &HashSet<String>) -> Result<Vec<String>, RuntimeError>;
}

/// One running sandbox. Dropping it does not stop it; call `kill`.
#[async_trait::async_trait]
pub trait Instance: Send + Sync + fmt::Debug {
    fn backend(&self) -> Backend;

    /// A client of this sandbox's agent (token included).
    fn client(&self) -> AgentClient;

    /// Kills every process of the sandbox and removes what the backend made for it
    /// (container, runsc state, socket). Idempotent.
    async fn kill(&self);

    /// Whether `pause` can work at all (a freezer, an engine that pauses).
    fn can_pause(&self) -> bool;

    /// Stops every process of the sandbox until `resume`.
    async fn pause(&self) -> Result<(), RuntimeError>;

    async fn resume(&self) -> Result<(), RuntimeError>;

    /// A TCP connection to `127.0.0.1:port` inside the sandbox (a service its code started).
    async fn connect_tcp(&self, port: u16) -> std::io::Result<Stream>;

    /// Resolves when the sandbox has ended by itself or by `kill`. Callable once.
    async fn wait(&self) -> Ended;

    /// The isolation in force, for `GET /v1/sandboxes/{id}/isolation` and the audit log:
    /// `{"backend": ..., "enforcement": {...}, "limits": {...}}`.
    fn isolation(&self) -> serde_json::Value;

    /// A one-line account of the sandbox's processes or container state, for logs when it
    /// misbehaves.
    fn describe(&self) -> String;
}
