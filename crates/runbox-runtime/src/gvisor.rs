//! The gvisor backend: each sandbox is a runsc (gVisor) sandbox built from an OCI bundle we
//! generate, with the agent as its only container process. gVisor puts a user-space kernel
//! (the sentry) between the code and the host: the code's syscalls never reach the host
//! kernel, which is the point of this backend.
//!
//! Shape of one sandbox:
//! - `runsc run` (attached, no `--detach`) is our child and the sandbox's supervisor: its exit
//!   is the sandbox's end. Its own sandbox process dies with it (runsc starts the sentry
//!   attached), and it does not die with the thread that spawned it (no parent-death signal).
//!   If the server dies, runsc keeps running and `sweep` removes it at the next start.
//! - The agent binds its socket in a host directory mounted at `/run/runbox-agent`; runsc's
//!   `--host-uds=create` turns that bind into a host socket the server connects to. The
//!   directory's parent is root-only (0700), so no other host user or sandbox reaches it, and
//!   once the socket exists the directory is handed back to root so code in the sandbox
//!   cannot unlink the socket and bind an impostor in its place.
//! - The token is written to the agent's stdin and closed: it is in no file or argument.
//! - Limits: the memory, cpu and pids of `linux.resources` go into a host cgroup that holds
//!   the sentry and everything it runs. The pids cgroup counts the sentry's threads and the
//!   ptrace platform's stub processes too (several host tasks per sandbox process), and
//!   when it fires the sentry panics; so the sandbox's own process limit is RLIMIT_NPROC,
//!   which the sentry enforces per task (fork fails with EAGAIN), and the host cgroup gets a
//!   generous multiple as a backstop for the host.
//!
//! runsc 0.0~20221219 (Debian bookworm) quirks this file works around or reports: no
//! `pidfd_open` (the agent falls back to waiting by pid), tmpfs `size=` is ignored (tmpfs
//! pages live in the sentry's memory, so the memory limit caps /tmp), the sentry has no OOM
//! killer of its own (a memory hog gets the whole sandbox killed by the host cgroup), and
//! `statx` with `AT_NO_AUTOMOUNT` fails with EINVAL, which breaks coreutils' `ls` and `stat`.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::client::AgentClient;
use crate::native::{random_hex, NativeRuntime, AGENT_IN_SANDBOX};
use crate::runtime::{Backend, Ended, Instance, Runtime, RuntimeError, StartSpec, Stream};

/// runsc's state (`--root`): runbox's own, so `runsc list` shows only our sandboxes.
pub const STATE_ROOT: &str = "/run/runbox/runsc";
/// One OCI bundle per sandbox: `<BUNDLES>/<id>/config.json` (+ `rootfs/`, `logs/`).
pub const BUNDLES: &str = "/run/runbox/runsc-bundles";
/// One agent socket directory per sandbox: `<SOCKETS>/<id>/agent.sock`.
pub const SOCKETS: &str = "/run/runbox/gvisor";
/// Host cgroups: `<hierarchy>/runbox-gvisor/runbox-<id>` (the jail's `runbox/` parent
/// sweeps empty groups it did not make, so ours live apart).
const CGROUP_PARENT: &str = "runbox-gvisor";
const SOCKET_DIR_IN_SANDBOX: &str = "/run/runbox-agent";
const SOCKET_NAME: &str = "agent.sock";
/// Global flags of every runsc call. ptrace works everywhere (KVM needs /dev/kvm).
const RUNSC_FLAGS: &[&str] = &["--root", STATE_ROOT, "--platform=ptrace", "--network=none"];
const PLATFORM: &str = "ptrace";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUNSC_TIMEOUT: Duration = Duration::from_secs(20);
/// What is kept of runsc's (and the agent's) stdout and stderr, for error messages.
const OUTPUT_TAIL: usize = 8 << 10;
const DEFAULT_UID: u32 = runbox_jail::policy::DEFAULT_UID;
const DEFAULT_GID: u32 = runbox_jail::policy::DEFAULT_GID;
const HOSTNAME: &str = runbox_jail::policy::DEFAULT_HOSTNAME;
/// Host directories the default root takes from the host, read-only (or as the same
/// symlinks into /usr on merged-/usr hosts such as Debian).
const ROOT_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Host /etc entries the dynamic loader, libc, Python and matplotlib read (as native).
const ETC_FROM_HOST: &[&str] = &[
    "ld.so.cache",
    "alternatives",
    "localtime",
    "ssl",
    "ca-certificates",
    "mime.types",
    "python3",
    "python3.11",
    "matplotlibrc",
    "fonts",
];

/// The gvisor backend. One value lives for the whole server.
#[derive(Debug)]
pub struct GvisorRuntime {
    agent: PathBuf,
    /// None: not found on PATH (every start is `Unavailable`).
    runsc: Option<PathBuf>,
    /// `runsc --version`'s first line, asked once.
    version: tokio::sync::OnceCell<String>,
    /// Which server this is (`owned_by`): `sweep` leaves other servers' sandboxes alone, even
    /// in the same process (tests run several).
    owner: String,
}

impl GvisorRuntime {
    /// `agent`: the runbox-agent binary mounted into every sandbox; runsc is found on PATH.
    pub fn new(agent: PathBuf) -> Self {
        let runsc = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("runsc"))
                .find(|p| p.is_file())
        });
        Self::with_runsc(agent, runsc)
    }

    /// Records `owner` with every sandbox and limits `sweep` to sandboxes with that owner
    /// (the server passes an id of its data directory). Default "default".
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    pub fn with_runsc(agent: PathBuf, runsc: Option<PathBuf>) -> Self {
        Self {
            agent,
            runsc,
            version: tokio::sync::OnceCell::new(),
            owner: "default".into(),
        }
    }

    fn runsc(&self) -> Result<Runsc, RuntimeError> {
        let unavailable = |reason: &str| RuntimeError::Unavailable {
            backend: Backend::Gvisor,
            reason: reason.into(),
        };
        let bin = self
            .runsc
            .clone()
            .ok_or_else(|| unavailable("runsc is not on PATH: install the Debian package runsc"))?;
        if !rustix::process::geteuid().is_root() {
            return Err(unavailable("runsc sandboxes need root"));
        }
        Ok(Runsc { bin })
    }

    async fn version(&self, runsc: &Runsc) -> Result<String, String> {
        self.version
            .get_or_try_init(|| async {
                let out = runsc.output(&["--version"]).await?;
                Ok::<_, String>(out.lines().next().unwrap_or_default().trim().to_owned())
            })
            .await
            .cloned()
    }
}

#[async_trait::async_trait]
impl Runtime for GvisorRuntime {
    fn backend(&self) -> Backend {
        Backend::Gvisor
    }

    async fn check(&self) -> Result<String, String> {
        let runsc = self.runsc().map_err(|e| e.to_string())?;
        if !self.agent.is_file() {
            return Err(format!(
                "the agent binary {} is missing",
                self.agent.display()
            ));
        }
        let version = self.version(&runsc).await?;
        Ok(format!(
            "{version} ({}), platform {PLATFORM}, network none",
            runsc.bin.display()
        ))
    }

    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        let runsc = self.runsc()?;
        let version = self
            .version(&runsc)
            .await
            .map_err(|reason| RuntimeError::Unavailable {
                backend: Backend::Gvisor,
                reason,
            })?;
        check_spec(&spec, &self.agent)?;
        let paths = Paths::new(&spec.id);
        if paths.bundle.exists() || paths.sockets.exists() {
            return Err(start_err(format!(
                "sandbox {} already has a bundle or socket directory",
                spec.id
            )));
        }
        match launch(&runsc, &spec, &self.agent, &paths, version, &self.owner).await {
            Ok(instance) => Ok(Box::new(instance)),
            Err(reason) => {
                destroy(&runsc, &spec.id).await;
                Err(start_err(reason))
            }
        }
    }

    async fn sweep(&self, keep: &HashSet<String>) -> Result<Vec<String>, RuntimeError> {
        let runsc = match self.runsc() {
            Ok(r) => r,
            // Without runsc there is nothing of ours running; leftovers need runsc to go.
            Err(_) => return Ok(Vec::new()),
        };
        let listed = runsc
            .output(&["list", "-format", "json"])
            .await
            .map_err(|reason| RuntimeError::Control {
                backend: Backend::Gvisor,
                action: "list",
                reason,
            })?;
        let mut ids: Vec<String> = serde_json::from_str::<Value>(&listed)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["id"].as_str()?.strip_prefix("runbox-").map(str::to_owned))
            .collect();
        // Bundles and socket directories whose runsc sandbox never started or is gone.
        for dir in [BUNDLES, SOCKETS] {
            if let Ok(entries) = fs::read_dir(dir) {
                ids.extend(
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok()),
                );
            }
        }
        // Cgroups runsc made and never removed (a runsc killed mid-delete).
        let cgroups = Path::new("/sys/fs/cgroup");
        let parents = fs::read_dir(cgroups)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(CGROUP_PARENT))
            .chain([cgroups.join(CGROUP_PARENT)]);
        for parent in parents {
            if let Ok(entries) = fs::read_dir(parent) {
                ids.extend(entries.flatten().filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_prefix("runbox-").map(str::to_owned)
                }));
            }
        }
        ids.sort();
        ids.dedup();
        // Another runbox on this host (a second server, a test) keeps its own sandboxes.
        ids.retain(|id| {
            !keep.contains(id)
                && valid_id(id)
                && !owner::held_by_another(&Paths::new(id).bundle, &self.owner)
        });
        for id in &ids {
            destroy(&runsc, id).await;
        }
        Ok(ids)
    }
}

fn start_err(reason: String) -> RuntimeError {
    RuntimeError::Start {
        backend: Backend::Gvisor,
        reason,
    }
}

/// Sandbox ids name directories and runsc containers: nothing that could walk a path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_spec(spec: &StartSpec, agent: &Path) -> Result<(), RuntimeError> {
    if !valid_id(&spec.id) {
        return Err(start_err(format!(
            "sandbox id `{}` is not [A-Za-z0-9_-]+",
            spec.id
        )));
    }
    if !agent.is_file() {
        return Err(start_err(format!(
            "the agent binary {} is missing; build it with `cargo build -p runbox-agent`",
            agent.display()
        )));
    }
    if let Some(root) = &spec.image.rootfs {
        if !root.is_dir() {
            return Err(RuntimeError::Image {
                backend: Backend::Gvisor,
                image: spec.image.name.clone(),
                reason: format!("its root filesystem {} is not a directory", root.display()),
            });
        }
    }
    if !spec.workspace.is_dir() {
        return Err(start_err(format!(
            "the workspace {} is not a directory",
            spec.workspace.display()
        )));
    }
    Ok(())
}

/// Where one sandbox's files live on the host.
#[derive(Debug, Clone)]
struct Paths {
    bundle: PathBuf,
    sockets: PathBuf,
    socket: PathBuf,
}

impl Paths {
    fn new(id: &str) -> Self {
        let sockets = Path::new(SOCKETS).join(id);
        Self {
            bundle: Path::new(BUNDLES).join(id),
            socket: sockets.join(SOCKET_NAME),
            sockets,
        }
    }
}

fn container(id: &str) -> String {
    format!("runbox-{id}")
}

fn cgroup_path(id: &str) -> String {
    format!("/{CGROUP_PARENT}/{}", container(id))
}

/// A runsc binary and the global flags every call carries.
#[derive(Debug, Clone)]
struct Runsc {
    bin: PathBuf,
}

impl Runsc {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(RUNSC_FLAGS)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs one short runsc command; its stdout, or its stderr as the error.
    async fn output(&self, args: &[&str]) -> Result<String, String> {
        let run = self.command(args).output();
        let out = tokio::time::timeout(RUNSC_TIMEOUT, run)
            .await
            .map_err(|_| format!("runsc {} took over {RUNSC_TIMEOUT:?}", args.join(" ")))?
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "runsc {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `output` for synchronous callers (`describe`), bounded the same way.
    fn output_blocking(&self, args: &[&str]) -> Result<String, String> {
        let mut child = std::process::Command::new(&self.bin)
            .args(RUNSC_FLAGS)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let deadline = std::time::Instant::now() + RUNSC_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("runsc {} did not answer", args.join(" ")));
                }
            }
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        Ok(out)
    }
}

/// The sandbox user: the workspace owner, as native's idmapped workspace makes new files
/// land owned by it. A root-owned workspace (the server creates them as root) is handed to
/// the default user instead, since code must not run as root even in the sentry.
fn sandbox_user(workspace: &Path) -> std::io::Result<(u32, u32)> {
    let meta = fs::metadata(workspace)?;
    let uid = if meta.uid() == 0 {
        DEFAULT_UID
    } else {
        meta.uid()
    };
    let gid = if meta.gid() == 0 {
        DEFAULT_GID
    } else {
        meta.gid()
    };
    if (uid, gid) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::chown(workspace, Some(uid), Some(gid))?;
    }
    Ok((uid, gid))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .mode(mode)
        .recursive(true)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Everything `start` does after the checks; on error the caller destroys what was made.
async fn launch(
    runsc: &Runsc,
    spec: &StartSpec,
    agent: &Path,
    paths: &Paths,
    version: String,
    owner: &str,
) -> Result<GvisorInstance, String> {
    for dir in [STATE_ROOT, BUNDLES, SOCKETS] {
        mkdir(Path::new(dir), 0o700)?;
        // A directory left by an older runbox with a looser mode is tightened, not trusted.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {dir}: {e}"))?;
    }
    let (uid, gid) = sandbox_user(&spec.workspace)
        .map_err(|e| format!("cannot prepare the workspace for the sandbox user: {e}"))?;
    mkdir(&paths.bundle, 0o700)?;
    owner::record(&paths.bundle, owner)?;
    mkdir(&paths.sockets, 0o700)?;
    // The agent (uid inside = uid on the host, through the gofer) binds its socket here.
    std::os::unix::fs::chown(&paths.sockets, Some(uid), Some(gid)).map_err(|e| {
        format!(
            "cannot hand {} to the sandbox user: {e}",
            paths.sockets.display()
        )
    })?;
    let config = bundle::create(spec, agent, paths, (uid, gid))?;
    let logs = paths.bundle.join("logs");
    let debug_log = format!("--debug-log={}/", logs.display());
    let name = container(&spec.id);
    let mut cmd = std::process::Command::new(&runsc.bin);
    cmd.args(RUNSC_FLAGS)
        .args(["--host-uds=create", &debug_log, "run", "--bundle"])
        .arg(&paths.bundle)
        .arg(&name)
        .stdin(Stdio::piped());
    // One pipe for stdout and stderr: runsc's errors and the agent's own messages.
    let (out_read, out_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let out_write2 = out_write
        .try_clone()
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    cmd.stdout(Stdio::from(out_write))
        .stderr(Stdio::from(out_write2));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", runsc.bin.display()))?;
    drop(cmd); // our copies of the pipe's write end: EOF must mean runsc is gone
    let token = random_hex(32);
    if let Some(mut stdin) = child.stdin.take() {
        // The agent reads its token until end of file; dropping stdin closes it.
        let _ = stdin.write_all(token.as_bytes());
    }
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let supervisor = Supervisor::start(child, out_read, logs, spec.memory_bytes)?;
    let instance = GvisorInstance {
        id: spec.id.clone(),
        runsc: runsc.clone(),
        client: AgentClient::new(paths.socket.clone(), token),
        isolation: isolation(spec, &config, &version, (uid, gid)),
        supervisor,
        pidfd,
    };
    match instance.agent_listens(paths).await {
        Ok(()) => Ok(instance),
        Err(reason) => {
            // Not just destroyed: reaped, so no runsc process of it outlives the error.
            instance.kill().await;
            Err(reason)
        }
    }
}

fn isolation(spec: &StartSpec, config: &Value, version: &str, user: (u32, u32)) -> Value {
    json!({
        "backend": "gvisor",
        "enforcement": {
            "runtime": "runsc",
            "runsc_version": version,
            "platform": PLATFORM,
            "network": "none",
            "host_uds": "create",
            "rootfs": spec.image.rootfs.as_ref().map_or_else(
                || "generated: the host's /usr read-only, a minimal /etc".into(),
                |p| format!("{} read-only", p.display()),
            ),
            "user": { "uid": user.0, "gid": user.1 },
            "capabilities": config["process"]["capabilities"],
            "no_new_privileges": config["process"]["noNewPrivileges"],
            "rlimits": config["process"]["rlimits"],
            "cgroup": config["linux"]["cgroupsPath"],
            "resources": config["linux"]["resources"],
        },
        "limits": {
            "memory_bytes": spec.memory_bytes,
            "cpus": spec.cpus,
            "pids": spec.pids,
            "output_bytes_per_stream": spec.output_bytes,
            "network": "none",
            "tmp": "tmpfs in the sentry's memory, within memory_bytes",
        },
    })
}

/// Kills and deletes `runbox-<id>` and removes its bundle, socket directory and any cgroup
/// runsc left. Every step tolerates "already gone", so this is idempotent.
async fn destroy(runsc: &Runsc, id: &str) {
    let name = container(id);
    let _ = runsc.output(&["kill", "--all", &name, "KILL"]).await;
    let _ = runsc.output(&["delete", "--force", &name]).await;
    let paths = Paths::new(id);
    let _ = fs::remove_dir_all(&paths.bundle);
    let _ = fs::remove_dir_all(&paths.sockets);
    remove_cgroups(id);
}

/// rmdir of `<hierarchy>/runbox-gvisor/runbox-<id>` in every mounted hierarchy (v1: one per
/// controller; v2: the unified one). runsc removes them on delete; this catches a delete
/// that never ran. rmdir of a group that still has tasks fails harmlessly.
fn remove_cgroups(id: &str) {
    let leaf = Path::new(CGROUP_PARENT).join(container(id));
    let root = Path::new("/sys/fs/cgroup");
    let _ = fs::remove_dir(root.join(&leaf));
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir(entry.path().join(&leaf));
        }
    }
}

/// One running gVisor sandbox.
#[derive(Debug)]
struct GvisorInstance {
    id: String,
    runsc: Runsc,
    client: AgentClient,
    isolation: Value,
    supervisor: Supervisor,
    /// `runsc run`'s pidfd: signals it without racing its reaping.
    pidfd: Option<OwnedFd>,
}

#[async_trait::async_trait]
impl Instance for GvisorInstance {
    fn backend(&self) -> Backend {
        Backend::Gvisor
    }

    fn client(&self) -> AgentClient {
        self.client.clone()
    }

    async fn kill(&self) {
        self.supervisor.mark_killed();
        destroy(&self.runsc, &self.id).await;
        // runsc run exits once its sandbox is gone; if it lingers, it goes the hard way
        // (its sentry is attached to it and dies with it).
        let mut ended = self.supervisor.ended.clone();
        let gone = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(Option::is_some));
        if gone.await.is_err() {
            if let Some(fd) = &self.pidfd {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(5), ended.wait_for(Option::is_some)).await;
        }
        // The groups could not go while the sentry was still dying.
        remove_cgroups(&self.id);
    }

    fn can_pause(&self) -> bool {
        true
    }

    async fn pause(&self) -> Result<(), RuntimeError> {
        self.control("pause").await
    }

    async fn resume(&self) -> Result<(), RuntimeError> {
        self.control("resume").await
    }

    async fn connect_tcp(&self, port: u16) -> std::io::Result<Stream> {
        // gVisor's network stack lives in the sentry: no namespace on the host to enter.
        self.client.tunnel(port).await.map_err(|e| match e {
            crate::client::ClientError::Connect { source, .. } => source,
            other => std::io::Error::other(crate::native::error_chain(&other)),
        })
    }

    async fn wait(&self) -> Ended {
        let mut ended = self.supervisor.ended.clone();
        let result = ended.wait_for(Option::is_some).await;
        match result.ok().and_then(|e| e.clone()) {
            Some(e) => e,
            None => Ended {
                status: "unknown".into(),
                detail: "the supervisor thread ended without a report".into(),
            },
        }
    }

    fn isolation(&self) -> Value {
        self.isolation.clone()
    }

    fn describe(&self) -> String {
        let name = container(&self.id);
        if let Some(e) = self.supervisor.ended.borrow().clone() {
            return format!("runsc sandbox {name} ended ({}): {}", e.status, e.detail);
        }
        match self.runsc.output_blocking(&["state", &name]) {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                format!(
                    "runsc sandbox {name}: {}, pid {}, created {}",
                    v["status"].as_str().unwrap_or("unknown"),
                    v["pid"],
                    v["created"].as_str().unwrap_or("?")
                )
            }
            Err(e) => format!("runsc sandbox {name}: {e}"),
        }
    }
}

impl GvisorInstance {
    /// Waits until the agent has bound its socket, then locks the socket's directory.
    async fn agent_listens(&self, paths: &Paths) -> Result<(), String> {
        let mut ended = self.supervisor.ended.clone();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !paths.socket.exists() {
            let gone = ended.borrow().clone();
            if let Some(e) = gone {
                return Err(format!(
                    "the sandbox ended before its agent listened ({}: {}): {}",
                    e.status,
                    e.detail,
                    self.supervisor.tail()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the agent did not bind {} within {START_TIMEOUT:?}: {}",
                    paths.socket.display(),
                    self.supervisor.tail()
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(2), ended.changed()).await;
        }
        // Take the directory back so sandbox code (the agent's uid) cannot replace the
        // socket with its own and read the token off the host's next request.
        std::os::unix::fs::chown(&paths.sockets, Some(0), Some(0))
            .and_then(|()| fs::set_permissions(&paths.sockets, fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot lock {}: {e}", paths.sockets.display()))
    }

    async fn control(&self, action: &'static str) -> Result<(), RuntimeError> {
        self.runsc
            .output(&[action, &container(&self.id)])
            .await
            .map(drop)
            .map_err(|reason| RuntimeError::Control {
                backend: Backend::Gvisor,
                action,
                reason,
            })
    }
}

/// The agent's command line: the channel flags of a container backend, then the same
/// limit and environment flags as native's (`agent_argv`), then the caller's extras.
fn agent_argv(spec: &StartSpec) -> Vec<String> {
    let native = crate::native::agent_argv(&NativeRuntime::policy(spec), &spec.agent_args);
    // native's first five words are the program and its fd channel (--listen-fd 3
    // --token-fd 4); everything after is the same for every backend.
    let mut argv: Vec<String> = vec![
        AGENT_IN_SANDBOX.into(),
        "--listen".into(),
        format!("unix:{SOCKET_DIR_IN_SANDBOX}/{SOCKET_NAME}"),
        "--token-stdin".into(),
        // The jail's seccomp filter, installed by the agent on itself (see its
        // `confine_self`): this runsc's OCI seccomp cannot check syscall arguments.
        "--seccomp".into(),
    ];
    argv.extend(native.into_iter().skip(5));
    argv
}

/// The OCI bundle of one sandbox (runtime-spec 1.0.2, the version this runsc implements).
mod bundle {
    use super::*;

    fn bind(source: &Path, dest: &str, options: &[&str]) -> Value {
        json!({
            "destination": dest,
            "type": "bind",
            "source": source,
            "options": options,
        })
    }

    // runsc ignores nosuid/nodev (and warns): nothing in the sentry honours set-id bits
    // past noNewPrivileges, and it has no host device nodes to open.
    const RO: &[&str] = &["rbind", "ro"];

    /// The files native generates for /etc: the sandbox user, loopback names, no resolver.
    fn etc_files((uid, gid): (u32, u32)) -> Vec<(&'static str, String)> {
        vec![
            ("passwd", format!("root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:{uid}:{gid}:sandbox user:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")),
            ("group", format!("root:x:0:\nuser:x:{gid}:\nnogroup:x:65534:\n")),
            ("hosts", format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n")),
            ("hostname", format!("{HOSTNAME}\n")),
            ("resolv.conf", "# runbox: network none, no name servers\n".into()),
            ("machine-id", format!("{}\n", random_hex(16))),
            ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".into()),
        ]
    }

    /// The default root: an empty directory of mount points, the host's /usr (and its
    /// siblings, as the same symlinks into it or as binds) read-only, the generated /etc.
    fn default_root(root: &Path, user: (u32, u32), mounts: &mut Vec<Value>) -> Result<(), String> {
        for dir in ["etc", "proc", "dev", "sys", "tmp", "workspace", ".runbox"] {
            mkdir(&root.join(dir), 0o755)?;
        }
        mkdir(
            &root.join(SOCKET_DIR_IN_SANDBOX.trim_start_matches('/')),
            0o755,
        )?;
        write(&root.join(AGENT_IN_SANDBOX.trim_start_matches('/')), b"")?;
        for name in ROOT_DIRS {
            let host = Path::new("/").join(name);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host)
                    .map_err(|e| format!("cannot read the link {}: {e}", host.display()))?;
                std::os::unix::fs::symlink(&target, root.join(name))
                    .map_err(|e| format!("cannot link /{name} in the bundle: {e}"))?;
            } else if meta.is_dir() {
                mkdir(&root.join(name), 0o755)?;
                mounts.push(bind(&host, &format!("/{name}"), RO));
            }
        }
        for (name, data) in etc_files(user) {
            write(&root.join("etc").join(name), data.as_bytes())?;
        }
        for name in ETC_FROM_HOST {
            let host = Path::new("/etc").join(name);
            let Ok(meta) = fs::metadata(&host) else {
                continue;
            };
            let point = root.join("etc").join(name);
            if meta.is_dir() {
                mkdir(&point, 0o755)?;
            } else {
                write(&point, b"")?;
            }
            mounts.push(bind(&host, &format!("/etc/{name}"), RO));
        }
        Ok(())
    }

    /// Writes `config.json` (and the default root) into the bundle; returns the config.
    pub(super) fn create(
        spec: &StartSpec,
        agent: &Path,
        paths: &Paths,
        user: (u32, u32),
    ) -> Result<Value, String> {
        let limits = NativeRuntime::policy(spec).limits;
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            // runsc makes its own /dev (null, zero, full, random, urandom, tty, pts, shm).
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}),
            // This runsc ignores size= (later ones honour it); /tmp's pages are the
            // sentry's memory, so the sandbox's memory limit caps it either way.
            json!({
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": [format!("size={}", limits.tmp_bytes), "mode=1777".to_owned()],
            }),
        ];
        let root = match &spec.image.rootfs {
            Some(image) => {
                // An image keeps its own /etc except what native generates too. runsc's
                // gofer creates missing mount points (these files, /workspace,
                // /.runbox/runbox-agent, /run/runbox-agent) in the image, empty.
                let etc = paths.bundle.join("etc");
                mkdir(&etc, 0o755)?;
                for (name, data) in etc_files(user) {
                    write(&etc.join(name), data.as_bytes())?;
                    mounts.push(bind(&etc.join(name), &format!("/etc/{name}"), RO));
                }
                image.clone()
            }
            None => {
                let root = paths.bundle.join("rootfs");
                default_root(&root, user, &mut mounts)?;
                root
            }
        };
        mounts.push(bind(&spec.workspace, "/workspace", &["rbind", "rw"]));
        mounts.push(bind(agent, AGENT_IN_SANDBOX, &["bind", "ro"]));
        mounts.push(bind(
            &paths.sockets,
            SOCKET_DIR_IN_SANDBOX,
            &["rbind", "rw"],
        ));
        let none: [&str; 0] = [];
        let rlimit = |kind: &str, n: u64| json!({"type": kind, "hard": n, "soft": n});
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": user.0, "gid": user.1 },
                "args": agent_argv(spec),
                "env": [
                    "PATH=/usr/local/bin:/usr/bin:/bin",
                    "HOME=/workspace",
                    "USER=user",
                    "LOGNAME=user",
                    "LANG=C.UTF-8",
                    format!("HOSTNAME={HOSTNAME}"),
                ],
                "cwd": "/workspace",
                "capabilities": {
                    "bounding": none,
                    "effective": none,
                    "inheritable": none,
                    "permitted": none,
                    "ambient": none,
                },
                "rlimits": [
                    rlimit("RLIMIT_NOFILE", limits.open_files),
                    rlimit("RLIMIT_CORE", 0),
                    // The sandbox's process limit, enforced by the sentry (see module docs).
                    rlimit("RLIMIT_NPROC", spec.pids),
                ],
                "noNewPrivileges": true,
            },
            "root": { "path": root, "readonly": true },
            "hostname": HOSTNAME,
            "mounts": mounts,
            "annotations": { "dev.runbox.sandbox-id": spec.id },
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"},
                ],
                "cgroupsPath": cgroup_path(&spec.id),
                "resources": {
                    // Swap equal to memory: none.
                    "memory": { "limit": spec.memory_bytes, "swap": spec.memory_bytes },
                    "cpu": { "quota": cpu_quota(spec.cpus), "period": CPU_PERIOD },
                    "pids": { "limit": host_pids(spec.pids) },
                },
            },
        });
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| format!("cannot encode config.json: {e}"))?;
        write(&paths.bundle.join("config.json"), &text)?;
        Ok(config)
    }

    const CPU_PERIOD: u64 = 100_000;

    pub(super) fn cpu_quota(cpus: f64) -> i64 {
        // The kernel's floor is 1 ms per period.
        ((cpus * CPU_PERIOD as f64).round() as i64).max(1_000)
    }

    /// The host-side task backstop: the sentry's own threads (a few dozen) plus the ptrace
    /// stubs (measured: ~6 host tasks per sandbox process). Never the binding limit in
    /// normal use; hitting it takes the whole sandbox down, which beats taking the host.
    pub(super) fn host_pids(pids: u64) -> u64 {
        pids.saturating_mul(8).saturating_add(256)
    }
}

/// `runsc run` as a child: one thread keeps the tail of its output, one waits for its exit
/// and publishes how the sandbox ended.
mod supervise {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Debug, Default)]
    struct Shared {
        killed: AtomicBool,
        tail: Mutex<Vec<u8>>,
    }

    #[derive(Debug)]
    pub(super) struct Supervisor {
        pub(super) ended: watch::Receiver<Option<Ended>>,
        shared: Arc<Shared>,
    }

    impl Supervisor {
        pub(super) fn start(
            mut child: std::process::Child,
            output: OwnedFd,
            logs: PathBuf,
            memory_bytes: u64,
        ) -> Result<Self, String> {
            let (tx, rx) = watch::channel(None);
            let shared = Arc::new(Shared::default());
            let (drained_tx, drained) = std::sync::mpsc::channel::<()>();
            let reader = shared.clone();
            std::thread::Builder::new()
                .name("runsc-output".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    let mut out = fs::File::from(output);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = out.read(&mut buf) {
                        let mut tail = reader.tail.lock().unwrap_or_else(|p| p.into_inner());
                        tail.extend_from_slice(&buf[..n]);
                        let excess = tail.len().saturating_sub(OUTPUT_TAIL);
                        tail.drain(..excess);
                    }
                    let _ = drained_tx.send(());
                })
                .map_err(|e| format!("cannot start a supervisor thread: {e}"))?;
            let waiter = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("runsc-wait".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    let status = child.wait();
                    // The output's end comes with the sentry's and gofer's exits; give it a
                    // moment so the report has the last words.
                    let _ = drained.recv_timeout(Duration::from_secs(1));
                    let ended = ended(&waiter, status, &logs, memory_bytes);
                    tx.send_replace(Some(ended));
                });
            if let Err(e) = spawned {
                // The child went with the closure; runsc delete (by the caller) ends it.
                return Err(format!("cannot start a supervisor thread: {e}"));
            }
            Ok(Self { ended: rx, shared })
        }

        pub(super) fn mark_killed(&self) {
            self.shared.killed.store(true, Ordering::SeqCst);
        }

        /// The last of runsc's and the agent's output, one line.
        pub(super) fn tail(&self) -> String {
            tail_text(&self.shared)
        }
    }

    fn tail_text(shared: &Shared) -> String {
        let tail = shared.tail.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&tail);
        let text = text.trim();
        if text.is_empty() {
            "(no output)".into()
        } else {
            text.replace('\n', " | ")
        }
    }

    fn ended(
        shared: &Shared,
        status: std::io::Result<std::process::ExitStatus>,
        logs: &Path,
        memory_bytes: u64,
    ) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        let (status, detail) = if shared.killed.load(Ordering::SeqCst) {
            ("killed", "killed by runbox".to_owned())
        } else if let Some(panic) = first_line(logs, ".boot.", |l| {
            l.starts_with("panic: ") || l.starts_with("fatal error: ")
        }) {
            ("crashed", format!("the gVisor sentry panicked: {panic}"))
        } else if first_line(logs, ".run.", |l| l.contains(SENTRY_GONE)).is_some() {
            // The sentry itself died, not the agent in it: nothing in the sandbox can do
            // that, and the host's memory cgroup does exactly that past the limit (gVisor
            // has no OOM killer of its own).
            (
                "oom",
                format!("the host killed the gVisor sentry, as its memory cgroup does past the memory limit ({memory_bytes} bytes)"),
            )
        } else {
            match status {
                Err(e) => ("unknown", format!("cannot wait for runsc: {e}")),
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(0), _) => (Ended::STOPPED, Ended::STOPPED_DETAIL.to_owned()),
                    // runsc's own failures (it exits 128 after logging the error).
                    (Some(128), _) => ("failed", format!("runsc failed: {}", tail_text(shared))),
                    // gVisor lets code in the sandbox signal PID 1 (Linux would not).
                    (Some(c), _) if c > 128 => (
                        "signaled",
                        format!("the agent was killed by signal {}", c - 128),
                    ),
                    (Some(c), _) => (
                        "exited",
                        format!("the agent exited with code {c}: {}", tail_text(shared)),
                    ),
                    (None, Some(sig)) => ("signaled", format!("runsc was killed by signal {sig}")),
                    (None, None) => ("unknown", s.to_string()),
                },
            }
        };
        Ended {
            status: status.into(),
            detail,
        }
    }

    /// What `runsc run` logs when its sandbox process (the sentry) is gone, rather than
    /// the container's process having exited.
    const SENTRY_GONE: &str = "Will try waiting on the sandbox process instead";

    /// The first line of runsc's log of kind `kind` (`.boot.`: the sentry, `.run.`: runsc
    /// run) that `wanted` picks.
    fn first_line(logs: &Path, kind: &str, wanted: impl Fn(&str) -> bool) -> Option<String> {
        for entry in fs::read_dir(logs).ok()?.flatten() {
            if !entry.file_name().to_string_lossy().contains(kind) {
                continue;
            }
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Some(line) = text.lines().find(|l| wanted(l)) {
                return Some(line.to_owned());
            }
        }
        None
    }
}

use supervise::Supervisor;

/// Which runbox process started a sandbox, so `sweep` leaves the sandboxes of another live
/// one alone: `<pid> <start time>` in the bundle, the start time (clock ticks after boot,
/// from /proc/<pid>/stat) telling a live owner from a reused pid.
mod owner {
    use super::*;

    const FILE: &str = "owner";
    /// A bundle without an owner file this young is a start in progress (the file is the
    /// first thing written).
    const GRACE: Duration = Duration::from_secs(60);

    fn start_time(pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22; the fields after the `(comm)` start at field 3.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()
    }

    pub(super) fn record(bundle: &Path, owner: &str) -> Result<(), String> {
        let me = std::process::id();
        let started = start_time(me).unwrap_or_default();
        write(
            &bundle.join(FILE),
            format!("{me} {started} {owner}\n").as_bytes(),
        )
    }

    /// Whether the sandbox of `bundle` belongs to another server: another owner id, or a
    /// live process other than this one.
    pub(super) fn held_by_another(bundle: &Path, owner: &str) -> bool {
        let Ok(text) = fs::read_to_string(bundle.join(FILE)) else {
            return fs::metadata(bundle)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < GRACE));
        };
        let mut fields = text.split_whitespace();
        let (pid, started) = (fields.next(), fields.next());
        if fields.next().is_some_and(|theirs| theirs != owner) {
            return true;
        }
        let (Some(Ok(pid)), Some(Ok(started))) =
            (pid.map(str::parse::<u64>), started.map(str::parse::<u64>))
        else {
            return false;
        };
        let Ok(pid) = u32::try_from(pid) else {
            return false;
        };
        pid != std::process::id() && start_time(pid) == Some(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StartSpec {
        StartSpec {
            id: "t1".into(),
            image: Default::default(),
            workspace: "/tmp".into(),
            memory_bytes: 256 << 20,
            cpus: 0.5,
            pids: 64,
            output_bytes: 1 << 20,
            env: vec![("A".into(), "1".into())],
            agent_args: vec!["--python-deny".into(), "os".into()],
        }
    }

    #[test]
    fn agent_argv_is_natives_with_a_socket_and_stdin_token() {
        let argv = agent_argv(&spec());
        let native = crate::native::agent_argv(&NativeRuntime::policy(&spec()), &spec().agent_args);
        assert_eq!(&native[1..5], ["--listen-fd", "3", "--token-fd", "4"]);
        assert_eq!(
            &argv[..4],
            [
                AGENT_IN_SANDBOX,
                "--listen",
                "unix:/run/runbox-agent/agent.sock",
                "--token-stdin"
            ]
        );
        assert_eq!(argv[4], "--seccomp");
        assert_eq!(argv[5..], native[5..]);
        assert!(argv.ends_with(&["--python-deny".into(), "os".into()]));
    }

    #[test]
    fn without_runsc_the_backend_is_unavailable_and_says_what_to_install() {
        let rt = GvisorRuntime::with_runsc("/nonexistent/runbox-agent".into(), None);
        let block = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let why = block.block_on(rt.check()).expect_err("no runsc");
        assert!(why.contains("install the Debian package runsc"), "{why}");
        let err = block.block_on(rt.start(spec())).expect_err("no runsc");
        assert!(
            matches!(
                err,
                RuntimeError::Unavailable {
                    backend: Backend::Gvisor,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn ids_that_could_walk_a_path_are_refused() {
        assert!(valid_id("abc-DEF_09"));
        for bad in ["", "..", "a/b", "a b", "x\n"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn limits_translate_to_oci_resources() {
        assert_eq!(bundle::cpu_quota(0.5), 50_000);
        assert_eq!(bundle::cpu_quota(2.0), 200_000);
        assert_eq!(bundle::cpu_quota(0.0), 1_000);
        assert!(bundle::host_pids(64) > 64 * 6);
    }
}
