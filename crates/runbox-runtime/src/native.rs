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

use crate::client::AgentClient;

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
