//! The native backend: a runbox-jail sandbox whose PID 1 is the agent. The agent's channel is
//! a unix socket bound on the host (in a 0700 directory, so only root reaches it) whose
//! listening fd is passed into the sandbox; the sandbox has no path to it. The token travels
//! through a pipe, so it is in no file, argument or environment variable.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use runbox_jail::{Bind, JailError, Killer, Launch, Policy, Sandbox, Stdin};

use std::collections::HashSet;

use crate::client::AgentClient;
use crate::runtime::{Backend, Ended, Instance, Runtime, RuntimeError, StartSpec, Stream};

/// Where the agent binary is mounted inside the sandbox.
pub const AGENT_IN_SANDBOX: &str = "/.runbox/runbox-agent";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the agent binary {0} is missing; build it with `cargo build -p runbox-agent` (it is installed next to runbox)")]
    AgentMissing(PathBuf),
    #[error("cannot set up the agent socket in {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Jail(#[from] JailError),
}

fn socket_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/runbox/agents")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join("runbox-agents")
    }
}

/// Where the agent binary is installed: next to the running executable (`runbox`), as the
/// packaging and cargo's target directory both lay it out.
pub fn installed_agent() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("runbox-agent"))
}

/// `bytes` random bytes as lowercase hex (ids, tokens).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The agent's command line for a sandbox with `policy`'s limits, plus `extra` flags.
pub fn agent_argv(policy: &Policy, extra: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        AGENT_IN_SANDBOX.into(),
        "--listen-fd".into(),
        "3".into(),
        "--token-fd".into(),
        "4".into(),
    ];
    if let Some(m) = policy.limits.memory_bytes {
        argv.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(c) = policy.limits.cpus {
        argv.extend(["--cpus".into(), c.to_string()]);
    }
    argv.extend([
        "--output-cap".into(),
        policy.limits.output_bytes.to_string(),
    ]);
    for (k, v) in &policy.env {
        argv.extend(["--env".into(), format!("{k}={v}")]);
    }
    argv.extend(extra.iter().cloned());
    argv
}

/// A sandbox running the agent, and how to reach it. Dropping it kills the sandbox.
#[derive(Debug)]
pub struct AgentSandbox {
    pub socket: PathBuf,
    pub token: String,
    pub killer: Killer,
    /// The jail handle, for `wait` (take it to supervise on another thread).
    pub sandbox: Option<Sandbox>,
}

impl AgentSandbox {
    /// Starts `policy` (whose argv should come from `agent_argv`) with `agent` bound in and
    /// exec'd as PID 1. Must be called while the process is single-threaded (the jail clones).
    pub fn start(mut policy: Policy, agent: &Path) -> Result<Self, StartError> {
        if !agent.is_file() {
            return Err(StartError::AgentMissing(agent.to_owned()));
        }
        policy.filesystem.binds.push(Bind {
            source: agent.to_owned(),
            dest: AGENT_IN_SANDBOX.into(),
            writable: false,
        });
        // A long-lived sandbox: a limit hit by one cell must not take the agent down.
        policy.limits.kill_all_on_limit = false;
        let dir = socket_dir();
        let socket_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StartError::Socket { path, source }
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(socket_err(&dir))?;
        let socket = dir.join(format!("{}.sock", random_hex(16)));
        let listener = UnixListener::bind(&socket).map_err(socket_err(&socket))?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
            .map_err(socket_err(&socket))?;
        let token = random_hex(32);
        let (token_read, token_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| StartError::Socket {
            path: socket.clone(),
            source: e.into(),
        })?;
        fs::File::from(token_write)
            .write_all(token.as_bytes())
            .map_err(socket_err(&socket))?;
        let launch = Launch {
            stdin: Stdin::Null,
            fds: vec![OwnedFd::from(listener), token_read],
            as_pid1: true,
        };
        let sandbox = match Sandbox::launch(&policy, launch) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&socket);
                return Err(e.into());
            }
        };
        let killer = sandbox.killer()?;
        Ok(Self {
            socket,
            token,
            killer,
            sandbox: Some(sandbox),
        })
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::new(self.socket.clone(), self.token.clone())
    }
}

impl Drop for AgentSandbox {
    fn drop(&mut self) {
        self.killer.kill();
        let _ = fs::remove_file(&self.socket);
    }
}

/// The native backend as a `Runtime`: sandboxes are started on long-lived spawner threads
/// (see `spawner`) and supervised each on a thread of its own.
#[derive(Debug)]
pub struct NativeRuntime {
    agent: PathBuf,
    spawner: crate::spawner::Spawner,
}

impl NativeRuntime {
    /// `agent`: the runbox-agent binary to bind into every sandbox.
    pub fn new(agent: PathBuf) -> std::io::Result<Self> {
        Ok(Self {
            agent,
            spawner: crate::spawner::Spawner::new(2)?,
        })
    }

    /// The jail policy for `spec` (limits, workspace, image, agent command line).
    pub fn policy(spec: &StartSpec) -> Policy {
        let mut policy = Policy::new(Vec::new());
        policy.limits.memory_bytes = Some(spec.memory_bytes);
        policy.limits.cpus = Some(spec.cpus);
        policy.limits.pids = Some(spec.pids);
        policy.limits.timeout = None; // lifetimes are the caller's job (renewable)
        policy.limits.output_bytes = spec.output_bytes;
        policy.limits.explicit = vec!["memory".into(), "cpus".into(), "pids".into()];
        policy.env = spec.env.clone();
        policy.filesystem.workspace = Some(spec.workspace.clone());
        policy.filesystem.rootfs = spec.image.rootfs.clone();
        policy.argv = agent_argv(&policy, &spec.agent_args);
        policy
    }
}

#[async_trait::async_trait]
impl Runtime for NativeRuntime {
    fn backend(&self) -> Backend {
        Backend::Native
    }

    async fn check(&self) -> Result<String, String> {
        if !self.agent.is_file() {
            return Err(StartError::AgentMissing(self.agent.clone()).to_string());
        }
        let f = runbox_jail::features::detect();
        if !f.user_namespaces.available {
            return Err(format!(
                "user namespaces are not available: {}",
                f.user_namespaces.detail
            ));
        }
        Ok(format!(
            "runbox-jail on Linux {}; cgroup: {}; landlock ABI {}",
            f.kernel, f.cgroup.detail, f.landlock_abi
        ))
    }

    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        let policy = Self::policy(&spec);
        let agent = self.agent.clone();
        let limits = serde_json::json!({
            "memory_bytes": spec.memory_bytes,
            "cpus": spec.cpus,
            "pids": spec.pids,
            "output_bytes_per_stream": spec.output_bytes,
            "network": "none",
        });
        let start_err = |reason: String| RuntimeError::Start {
            backend: Backend::Native,
            reason,
        };
        let mut started = self
            .spawner
            .run(move || AgentSandbox::start(policy, &agent))
            .await
            .ok_or_else(|| start_err("the sandbox spawner threads are gone".into()))?
            .map_err(|e| start_err(error_chain(&e)))?;
        let sandbox = started
            .sandbox
            .take()
            .ok_or_else(|| start_err("the jail handle is missing".into()))?;
        let enforcement =
            serde_json::to_value(sandbox.enforcement()).unwrap_or(serde_json::Value::Null);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (reaped_tx, reaped) = tokio::sync::watch::channel(false);
        // The jail's wait blocks: supervise on a thread of its own.
        std::thread::Builder::new()
            .name("sandbox-wait".into())
            .spawn(move || {
                let mut sink = runbox_jail::Discard;
                let ended = match sandbox.wait(&mut sink) {
                    Ok(o) if o.exit_code == Some(0) => Ended::stopped(),
                    Ok(o) => Ended {
                        status: format!("{:?}", o.status).to_lowercase(),
                        detail: format!(
                            "exit code {:?}, signal {:?}, limits hit {:?}",
                            o.exit_code, o.signal, o.limits_hit
                        ),
                    },
                    Err(e) => Ended {
                        status: "unknown".into(),
                        detail: e.to_string(),
                    },
                };
                // `wait` consumed the sandbox: reaped and its cgroup removed.
                let _ = reaped_tx.send(true);
                let _ = tx.send(ended);
            })
            .map_err(|e| start_err(format!("cannot start the supervisor thread: {e}")))?;
        Ok(Box::new(NativeInstance {
            isolation: serde_json::json!({
                "backend": "native",
                "enforcement": enforcement,
                "limits": limits,
            }),
            sandbox: started,
            ended: tokio::sync::Mutex::new(Some(rx)),
            reaped,
        }))
    }

    async fn sweep(&self, _keep: &HashSet<String>) -> Result<Vec<String>, RuntimeError> {
        // Native sandboxes die with the server (parent-death signal); only their agent
        // sockets can be left behind.
        let mut removed = Vec::new();
        if let Ok(dir) = fs::read_dir(socket_dir()) {
            for entry in dir.flatten() {
                let path = entry.path();
                let stale = path.extension().is_some_and(|e| e == "sock")
                    && std::os::unix::net::UnixStream::connect(&path).is_err();
                if stale && fs::remove_file(&path).is_ok() {
                    removed.push(path.display().to_string());
                }
            }
        }
        Ok(removed)
    }
}

/// `e` and its sources, joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[derive(Debug)]
struct NativeInstance {
    sandbox: AgentSandbox,
    isolation: serde_json::Value,
    ended: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Ended>>>,
    /// Turns true once the supervisor has reaped the sandbox and removed its cgroup.
    reaped: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Instance for NativeInstance {
    fn backend(&self) -> Backend {
        Backend::Native
    }

    fn client(&self) -> AgentClient {
        self.sandbox.client()
    }

    /// Returns once the sandbox is reaped and its cgroup gone (bounded), so a caller that
    /// exits right after (a server shutting down) leaves nothing behind.
    async fn kill(&self) {
        self.sandbox.killer.kill();
        let _ = fs::remove_file(&self.sandbox.socket);
        let mut reaped = self.reaped.clone();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reaped.wait_for(|done| *done),
        )
        .await;
    }

    fn can_pause(&self) -> bool {
        self.sandbox.killer.can_pause()
    }

    async fn pause(&self) -> Result<(), RuntimeError> {
        self.freeze(true).await
    }

    async fn resume(&self) -> Result<(), RuntimeError> {
        self.freeze(false).await
    }

    async fn connect_tcp(&self, port: u16) -> std::io::Result<Stream> {
        let control = self.sandbox.killer.clone();
        let std = tokio::task::spawn_blocking(move || control.connect_tcp(port))
            .await
            .map_err(std::io::Error::other)??;
        std.set_nonblocking(true)?;
        let _ = std.set_nodelay(true);
        Ok(Box::new(tokio::net::TcpStream::from_std(std)?))
    }

    async fn wait(&self) -> Ended {
        let rx = self.ended.lock().await.take();
        match rx {
            Some(rx) => rx.await.unwrap_or_else(|_| Ended {
                status: "unknown".into(),
                detail: "the supervisor thread ended without a report".into(),
            }),
            None => Ended {
                status: "unknown".into(),
                detail: "wait was already called".into(),
            },
        }
    }

    fn isolation(&self) -> serde_json::Value {
        self.isolation.clone()
    }

    fn describe(&self) -> String {
        self.sandbox.killer.describe()
    }
}

impl NativeInstance {
    async fn freeze(&self, pause: bool) -> Result<(), RuntimeError> {
        let control = self.sandbox.killer.clone();
        let action = if pause { "pause" } else { "resume" };
        if !control.can_pause() {
            return Err(RuntimeError::Unsupported(
                "this host has no cgroup freezer, so sandboxes cannot be paused".into(),
            ));
        }
        tokio::task::spawn_blocking(move || {
            if pause {
                control.pause()
            } else {
                control.resume()
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|reason| RuntimeError::Control {
            backend: Backend::Native,
            action,
            reason,
        })
    }
}
