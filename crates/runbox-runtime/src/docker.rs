//! The docker backend: each sandbox is one hardened container on the local Docker Engine whose
//! PID 1 is the same `runbox-agent` binary native runs, bind-mounted read-only from the host
//! (so an image needs nothing of runbox inside, only the libc the agent links against). No
//! docker-init: the agent is PID 1 and reaps orphans itself.
//!
//! The agent's channel: a container cannot inherit a listening fd from us, so the agent binds
//! its socket in a host directory made for this sandbox alone (`/run/runbox/docker/<id>/`,
//! under a 0700 root directory) and mounted into this container only; the host connects to the
//! socket there. Once the agent has bound it, the directory is handed back to root (see
//! `seal_socket_dir`), so code in the container can neither reach nor replace the socket. The
//! token is written to the container's stdin, which is then closed, so it is in no argument,
//! environment variable, label or file that `docker inspect` or code can read.
//!
//! Every engine call is bounded (`API_TIMEOUT`): a hung engine fails a start with a reason
//! instead of hanging the server. Images are never pulled (no registry is assumed reachable);
//! `runbox image build` loads them. A start that fails after the container was created removes
//! it before returning, so no container is leaked; no volume or network is ever created.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as ApiError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::client::AgentClient;
use crate::native::{error_chain, random_hex, StartError, AGENT_IN_SANDBOX};
use crate::runtime::{Backend, Ended, Instance, Runtime, RuntimeError, StartSpec, Stream};

/// Bound on every engine API call (the wait for the container's exit aside).
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Removing kills the processes and deletes the container's layer: slower on a busy host.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started agent may take to bind its socket before the start counts as failed.
const AGENT_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the sandbox's socket directory is mounted in its container.
const AGENT_DIR_IN_CONTAINER: &str = "/run/runbox-agent";
const AGENT_SOCKET: &str = "agent.sock";
const WORKSPACE: &str = "/workspace";
/// The uid:gid code runs as when the workspace belongs to root (a directory the server made).
const SANDBOX_UID: u32 = 1000;
const SANDBOX_GID: u32 = 1000;
pub const LABEL_SANDBOX: &str = "runbox.sandbox";
pub const LABEL_MANAGED: &str = "runbox.managed";
/// Which server started the container (`DockerRuntime::owned_by`): a server sweeps only its
/// own leftovers, never those of another server on the same engine.
pub const LABEL_OWNER: &str = "runbox.owner";
const LABEL_IMAGE: &str = "runbox.image";
/// The engine's socket when `DOCKER_HOST` is unset (bollard's and the CLI's default on Linux).
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The docker backend. Keeps the engine connection once reached: the API version is
/// negotiated then, because engines older than bollard's default version (20.10 speaks 1.41)
/// refuse its requests.
#[derive(Debug)]
pub struct DockerRuntime {
    agent: PathBuf,
    host: String,
    owner: String,
    engine: tokio::sync::Mutex<Option<Docker>>,
}

impl DockerRuntime {
    /// `agent`: the runbox-agent binary mounted into every container. The engine is the one
    /// `DOCKER_HOST` names, else the local socket, as for the `docker` CLI (what bollard's
    /// `connect_with_defaults` does; we keep the address to name it in errors).
    pub fn new(agent: PathBuf) -> Self {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned());
        Self::with_host(agent, host)
    }

    /// `host`: the engine's address (`unix:///var/run/docker.sock`, `tcp://host:2375`).
    pub fn with_host(agent: PathBuf, host: impl Into<String>) -> Self {
        Self {
            agent,
            host: host.into(),
            owner: "default".into(),
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// Labels containers with `owner` and limits `sweep` to containers with that label (the
    /// server passes an id of its data directory). Default "default".
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The engine client, connecting and negotiating on first use (and again after a failure,
    /// so an engine started after runbox is picked up).
    async fn engine(&self) -> Result<Docker, RuntimeError> {
        let mut cached = self.engine.lock().await;
        if let Some(docker) = cached.as_ref() {
            return Ok(docker.clone());
        }
        let unavailable = |e: ApiError| RuntimeError::Unavailable {
            backend: Backend::Docker,
            reason: explain(&self.host, &e),
        };
        let docker = Docker::connect_with_host(&self.host)
            .map_err(unavailable)?
            .with_timeout(API_TIMEOUT);
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        *cached = Some(docker.clone());
        Ok(docker)
    }

    /// Creates, starts and hands the token to the container; removes it again on any failure.
    async fn launch(&self, spec: &StartSpec) -> Result<DockerInstance, RuntimeError> {
        let image = spec
            .image
            .docker
            .clone()
            .ok_or_else(|| RuntimeError::Image {
                backend: Backend::Docker,
                image: spec.image.name.clone(),
                reason: "no Docker image is recorded for it; `runbox image build` makes one".into(),
            })?;
        if !valid_id(&spec.id) {
            return Err(start_error(format!(
                "sandbox id `{}` is not usable as a container name (letters, digits, `_.-`)",
                spec.id
            )));
        }
        if !self.agent.is_file() {
            return Err(start_error(
                StartError::AgentMissing(self.agent.clone()).to_string(),
            ));
        }
        let absolute = |p: &Path| {
            fs::canonicalize(p).map_err(|e| start_error(format!("{}: {e}", p.display())))
        };
        let workspace = absolute(&spec.workspace)?;
        let agent = absolute(&self.agent)?;
        let docker = self.engine().await?;
        let dir = socket_root().join(&spec.id);
        let user = prepare_host_dirs(&workspace, &dir)
            .map_err(|e| start_error(format!("preparing {}: {e}", dir.display())))?;
        let paths = HostPaths {
            workspace: &workspace,
            agent: &agent,
            socket_dir: &dir,
        };
        let config = container_config(spec, &image, &paths, user, &self.owner);
        let name = container_name(&spec.id);
        let cleanup = Cleanup {
            docker: docker.clone(),
            name: name.clone(),
            dir: dir.clone(),
            armed: true,
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match docker.create_container(Some(options), config).await {
            Ok(c) => c,
            // The name is taken: that container is not ours to remove.
            Err(
                e @ ApiError::DockerResponseServerError {
                    status_code: 409, ..
                },
            ) => {
                cleanup.disarm();
                let _ = fs::remove_dir_all(&dir);
                return Err(create_error(&self.host, &image, e));
            }
            Err(e) => {
                // Also after a timeout: the engine may have created it all the same.
                cleanup.run().await;
                return Err(create_error(&self.host, &image, e));
            }
        };
        match boot(&docker, spec, &image, created.id, &dir).await {
            Ok(instance) => {
                cleanup.disarm();
                Ok(instance)
            }
            Err(e) => {
                cleanup.run().await;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn backend(&self) -> Backend {
        Backend::Docker
    }

    async fn check(&self) -> Result<String, String> {
        if !self.agent.is_file() {
            return Err(StartError::AgentMissing(self.agent.clone()).to_string());
        }
        let docker = self.engine().await.map_err(|e| match e {
            RuntimeError::Unavailable { reason, .. } => reason,
            other => other.to_string(),
        })?;
        let v = docker
            .version()
            .await
            .map_err(|e| explain(&self.host, &e))?;
        let field = |f: Option<String>| f.unwrap_or_else(|| "?".into());
        Ok(format!(
            "Docker Engine {} (API {}, {}/{}, kernel {}) at {}",
            field(v.version),
            field(v.api_version),
            field(v.os),
            field(v.arch),
            field(v.kernel_version),
            self.host
        ))
    }

    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        Ok(Box::new(self.launch(&spec).await?))
    }

    /// Call before starting sandboxes: a container being started right now is not in `keep`.
    async fn sweep(&self, keep: &HashSet<String>) -> Result<Vec<String>, RuntimeError> {
        let docker = self.engine().await?;
        let sweep_error = |reason: String| RuntimeError::Control {
            backend: Backend::Docker,
            action: "sweep leftover containers of",
            reason,
        };
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_OWNER}={}", self.owner),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let listed = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| sweep_error(explain(&self.host, &e)))?;
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for container in listed {
            let sandbox = container
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SANDBOX))
                .cloned();
            if sandbox.as_ref().is_some_and(|s| keep.contains(s)) {
                continue;
            }
            let Some(id) = container.id else { continue };
            match remove(&docker, &id).await {
                Ok(()) => removed.push(sandbox.unwrap_or(id)),
                Err(e) => failed.push(format!("{id}: {}", explain(&self.host, &e))),
            }
        }
        // Socket directories of the removed containers, and any that outlived their container
        // (the server died mid-start) for long enough that no start can still be using them
        // (another server on this host may be starting one right now).
        let abandoned = |entry: &fs::DirEntry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(600))
        };
        if let Ok(dirs) = fs::read_dir(socket_root()) {
            for entry in dirs.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if removed.contains(&name) || (!keep.contains(&name) && abandoned(&entry)) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        if failed.is_empty() {
            Ok(removed)
        } else {
            Err(sweep_error(format!(
                "removed {removed:?}, could not remove {}",
                failed.join("; ")
            )))
        }
    }
}

/// The host side of a sandbox's mounts.
struct HostPaths<'a> {
    workspace: &'a Path,
    agent: &'a Path,
    socket_dir: &'a Path,
}

/// The container for `spec`: the agent as its command, every hardening the backend promises.
fn container_config(
    spec: &StartSpec,
    image: &str,
    paths: &HostPaths<'_>,
    (uid, gid): (u32, u32),
    owner: &str,
) -> ContainerCreateBody {
    let limits = runbox_jail::Limits::default();
    let bind = |source: &Path, target: &str, read_only: bool| Mount {
        typ: Some(MountType::BIND),
        source: Some(source.display().to_string()),
        target: Some(target.into()),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ulimit = |name: &str, value: u64| ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(value as i64),
        hard: Some(value as i64),
    };
    let positive = |v: i64| (v > 0).then_some(v);
    let host_config = HostConfig {
        mounts: Some(vec![
            bind(paths.workspace, WORKSPACE, false),
            bind(paths.agent, AGENT_IN_SANDBOX, true),
            bind(paths.socket_dir, AGENT_DIR_IN_CONTAINER, false),
        ]),
        tmpfs: Some(HashMap::from([
            (
                "/tmp".to_owned(),
                format!("rw,nosuid,nodev,size={},mode=1777", limits.tmp_bytes),
            ),
            (
                "/dev/shm".to_owned(),
                format!("rw,nosuid,nodev,noexec,size={},mode=1777", limits.shm_bytes),
            ),
        ])),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        // Our profile, not the engine's default: Docker 20.10's default allows ptrace,
        // io_uring and modify_ldt (see seccomp_profile.rs).
        security_opt: Some(vec![
            "no-new-privileges".into(),
            format!("seccomp={}", crate::seccomp_profile::profile()),
        ]),
        privileged: Some(false),
        network_mode: Some("none".into()),
        ipc_mode: Some("private".into()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // The agent is PID 1; a daemon configured with `init: true` must not put tini first.
        init: Some(false),
        memory: positive(spec.memory_bytes as i64),
        // Equal to memory: no swap, as native.
        memory_swap: positive(spec.memory_bytes as i64),
        nano_cpus: positive((spec.cpus * 1e9).round() as i64),
        pids_limit: positive(spec.pids as i64),
        oom_kill_disable: Some(false),
        ulimits: Some(vec![
            ulimit("nofile", limits.open_files),
            ulimit("core", 0),
            ulimit("fsize", limits.file_size_bytes),
        ]),
        // The agent's own stderr is all that reaches the log; bound it anyway.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), "1m".to_owned()),
                ("max-file".to_owned(), "1".to_owned()),
            ])),
        }),
        auto_remove: Some(false),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(vec![AGENT_IN_SANDBOX.into()]),
        cmd: Some(agent_flags(spec)),
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some(WORKSPACE.into()),
        hostname: Some(runbox_jail::policy::DEFAULT_HOSTNAME.into()),
        env: Some(vec![
            format!("PATH={DEFAULT_PATH}"),
            format!("HOME={WORKSPACE}"),
            "LANG=C.UTF-8".into(),
            "TMPDIR=/tmp".into(),
        ]),
        labels: Some(HashMap::from([
            (LABEL_SANDBOX.to_owned(), spec.id.clone()),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_OWNER.to_owned(), owner.to_owned()),
            (LABEL_IMAGE.to_owned(), spec.image.name.clone()),
        ])),
        // stdin carries the token once: attached, written, closed (StdinOnce closes the
        // container's end when our attachment ends).
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The agent's flags: native's `agent_argv` with a socket path and the token on stdin instead
/// of inherited fds.
fn agent_flags(spec: &StartSpec) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--listen".into(),
        format!("unix:{AGENT_DIR_IN_CONTAINER}/{AGENT_SOCKET}"),
        "--token-stdin".into(),
        "--memory".into(),
        spec.memory_bytes.to_string(),
        "--cpus".into(),
        spec.cpus.to_string(),
        "--output-cap".into(),
        spec.output_bytes.to_string(),
    ];
    for (k, v) in &spec.env {
        flags.extend(["--env".into(), format!("{k}={v}")]);
    }
    flags.extend(spec.agent_args.iter().cloned());
    flags
}

/// Starts the created container, hands the token over and waits for the agent's socket.
async fn boot(
    docker: &Docker,
    spec: &StartSpec,
    image: &str,
    id: String,
    dir: &Path,
) -> Result<DockerInstance, RuntimeError> {
    // Attaching and starting are independent once stdin is open: one round trip, not two.
    let attach_options = AttachContainerOptionsBuilder::default()
        .stdin(true)
        .stream(true)
        .build();
    let (attached, started) = tokio::join!(
        docker.attach_container(&id, Some(attach_options)),
        docker.start_container(&id, None)
    );
    if let Err(e) = started {
        let why = format!("the engine could not start it: {}", api_message(&e));
        return Err(start_failure(docker, &id, why).await);
    }
    let killed = Arc::new(AtomicBool::new(false));
    let state = Arc::new(Mutex::new(String::from("running")));
    let (tx, mut ended) = watch::channel(None);
    tokio::spawn(watch_exit(
        docker.clone(),
        id.clone(),
        killed.clone(),
        state.clone(),
        tx,
    ));
    let token = random_hex(32);
    let handed = match attached {
        Ok(mut a) => {
            let write = async {
                a.input.write_all(token.as_bytes()).await?;
                a.input.shutdown().await
            };
            match tokio::time::timeout(API_TIMEOUT, write).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the engine did not take the token in time".into()),
            }
        }
        Err(e) => Err(api_message(&e)),
    };
    if let Err(why) = handed {
        // A write fails when the agent died at once; say that rather than "broken pipe".
        let died = tokio::time::timeout(Duration::from_secs(2), ended.wait_for(Option::is_some));
        let why = match died.await {
            Ok(Ok(e)) => died_message(e.as_ref()),
            _ => format!("cannot hand the token to the agent: {why}"),
        };
        return Err(start_failure(docker, &id, why).await);
    }
    let socket = dir.join(AGENT_SOCKET);
    let (bound, inspected) = tokio::join!(
        wait_for_socket(&socket, &mut ended),
        docker.inspect_container(&id, None)
    );
    if let Err(why) = bound {
        return Err(start_failure(docker, &id, why).await);
    }
    if let Err(e) = seal_socket_dir(dir) {
        let why = format!("cannot seal {}: {e}", dir.display());
        return Err(start_failure(docker, &id, why).await);
    }
    let inspected = match inspected {
        Ok(i) => i,
        Err(e) => {
            let why = format!("cannot inspect it: {}", api_message(&e));
            return Err(start_failure(docker, &id, why).await);
        }
    };
    let pid = inspected.state.as_ref().and_then(|s| s.pid).unwrap_or(0) as i32;
    // A pidfd, not /proc/<pid>/ns/net opened later: it cannot come to name a recycled pid.
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::other("the engine reports no pid"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(io::Error::from)
        });
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let why = format!("cannot open the agent process {pid}: {e}");
            return Err(start_failure(docker, &id, why).await);
        }
    };
    let isolation = isolation_report(&inspected, spec, pid);
    Ok(DockerInstance {
        docker: docker.clone(),
        name: container_name(&spec.id),
        id,
        image: image.to_owned(),
        socket_dir: dir.to_owned(),
        client: AgentClient::new(socket, token),
        pid,
        pidfd,
        isolation,
        state,
        killed,
        ended,
    })
}

/// Polls for the agent's socket file (a local stat every millisecond: the bind is the
/// readiness signal, and no engine round trip is involved) until the container ends.
async fn wait_for_socket(
    socket: &Path,
    ended: &mut watch::Receiver<Option<Ended>>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + AGENT_BIND_TIMEOUT;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Some(e) = ended.borrow().as_ref() {
            return Err(died_message(Some(e)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the agent did not listen on {} within {} s",
                socket.display(),
                AGENT_BIND_TIMEOUT.as_secs()
            ));
        }
        tokio::select! {
            _ = ended.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

fn died_message(ended: Option<&Ended>) -> String {
    match ended {
        Some(e) => format!("the agent exited during start ({}: {})", e.status, e.detail),
        None => "the agent exited during start".into(),
    }
}

/// A start error naming `why`, with the tail of the container's output (the agent's error).
async fn start_failure(docker: &Docker, id: &str, why: String) -> RuntimeError {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let collect = async {
        let mut logs = docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    };
    let tail = tokio::time::timeout(API_TIMEOUT, collect)
        .await
        .unwrap_or_default();
    let tail = tail.trim();
    let tail: String = tail
        .char_indices()
        .skip_while(|(i, _)| tail.len() - i > 2000)
        .map(|(_, c)| c)
        .collect();
    let mut reason = if tail.is_empty() {
        format!("{why}; the container printed nothing")
    } else {
        format!("{why}; its output ends with: {tail}")
    };
    // runc reports a missing ELF interpreter as the program itself missing.
    if tail.contains(&format!("exec {AGENT_IN_SANDBOX}: no such file")) {
        reason.push_str(
            " (the agent is mounted: the image lacks the glibc loader and libraries the agent is \
             linked against)",
        );
    }
    start_error(reason)
}

/// Follows the container to its end and publishes how it ended.
async fn watch_exit(
    docker: Docker,
    id: String,
    killed: Arc<AtomicBool>,
    state: Arc<Mutex<String>>,
    tx: watch::Sender<Option<Ended>>,
) {
    let mut backoff = Duration::from_millis(50);
    let ended = loop {
        let code = match docker.wait_container(&id, None).next().await {
            Some(Ok(r)) => Some(r.status_code),
            Some(Err(ApiError::DockerContainerWaitError { code, .. })) => Some(code),
            // The connection broke: the engine restarted, or the container is gone.
            _ => None,
        };
        match docker.inspect_container(&id, None).await {
            Ok(c) if is_alive(&c) => {
                // A wait that ended while the container lives (an engine restarted with
                // live-restore): wait again.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Ok(c) => break ended_from(&c, code, killed.load(Ordering::SeqCst)),
            Err(_) if killed.load(Ordering::SeqCst) => break killed_by_us(),
            Err(e) => {
                break Ended {
                    status: "gone".into(),
                    detail: format!("the container vanished: {}", api_message(&e)),
                }
            }
        }
    };
    *state.lock().unwrap_or_else(|p| p.into_inner()) =
        format!("{} ({})", ended.status, ended.detail);
    let _ = tx.send(Some(ended));
}

fn is_alive(c: &ContainerInspectResponse) -> bool {
    use ContainerStateStatusEnum as S;
    matches!(
        c.state.as_ref().and_then(|s| s.status),
        Some(S::RUNNING | S::PAUSED | S::RESTARTING)
    )
}

fn killed_by_us() -> Ended {
    Ended {
        status: "killed".into(),
        detail: "the container was removed by kill".into(),
    }
}

fn ended_from(c: &ContainerInspectResponse, code: Option<i64>, killed: bool) -> Ended {
    if killed {
        return killed_by_us();
    }
    let state = c.state.clone().unwrap_or_default();
    let code = code.or(state.exit_code).unwrap_or(-1);
    let error = state.error.filter(|e| !e.is_empty());
    let error = error
        .map(|e| format!(", engine error: {e}"))
        .unwrap_or_default();
    // On cgroup v1 the engine flags OOMKilled for any OOM kill in the container; only a
    // SIGKILLed PID 1 means the OOM killer ended the sandbox.
    let oom = state.oom_killed == Some(true);
    match code {
        137 if oom => Ended {
            status: "oom".into(),
            detail: format!("the OOM killer killed the agent{error}"),
        },
        c if c > 128 => Ended {
            status: "signaled".into(),
            detail: format!("signal {}{error}", c - 128),
        },
        0 => Ended {
            detail: format!("{}{error}", Ended::STOPPED_DETAIL),
            ..Ended::stopped()
        },
        c => Ended {
            status: "exited".into(),
            detail: format!("exit code {c}{error}"),
        },
    }
}

/// What `docker inspect` and the agent's /proc/<pid>/status say is in force.
fn isolation_report(c: &ContainerInspectResponse, spec: &StartSpec, pid: i32) -> serde_json::Value {
    let host = c.host_config.clone().unwrap_or_default();
    let config = c.config.clone().unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let security_opt = host.security_opt.clone().unwrap_or_default();
    let seccomp_profile = security_opt
        .iter()
        .find_map(|o| {
            o.strip_prefix("seccomp")
                .map(|p| p.trim_start_matches(['=', ':']))
        })
        .map(|p| {
            if serde_json::from_str::<serde_json::Value>(p).ok()
                == Some(crate::seccomp_profile::profile())
            {
                "runbox (the jail's deny-list)"
            } else {
                "custom"
            }
        })
        .unwrap_or("engine default");
    let seccomp_mode = match field("Seccomp").as_deref() {
        Some("2") => "filter",
        Some("1") => "strict",
        Some("0") => "disabled",
        _ => "unknown",
    };
    let mounts: Vec<_> = c
        .mounts
        .iter()
        .flatten()
        .map(|m| json!({ "source": m.source, "destination": m.destination, "rw": m.rw }))
        .collect();
    let ulimits: Vec<_> = host
        .ulimits
        .iter()
        .flatten()
        .map(|u| json!({ "name": u.name, "soft": u.soft, "hard": u.hard }))
        .collect();
    json!({
        "backend": "docker",
        "container": {
            "id": c.id,
            "name": c.name.as_deref().map(|n| n.trim_start_matches('/')),
            "image": config.image,
            "image_id": c.image,
            "pid": pid,
        },
        "enforcement": {
            "capabilities_dropped": host.cap_drop,
            "capabilities_added": host.cap_add,
            "effective_capabilities": field("CapEff"),
            "bounding_capabilities": field("CapBnd"),
            "no_new_privileges": field("NoNewPrivs").as_deref() == Some("1"),
            "seccomp": { "mode": seccomp_mode, "profile": seccomp_profile },
            "security_opt": security_opt,
            "readonly_rootfs": host.readonly_rootfs,
            "privileged": host.privileged,
            "user": config.user,
            "network_mode": host.network_mode,
            "ipc_mode": host.ipc_mode,
            "init": host.init,
            "mounts": mounts,
            "tmpfs": host.tmpfs,
        },
        "limits": {
            "memory_bytes": host.memory,
            "memory_swap_bytes": host.memory_swap,
            "cpus": host.nano_cpus.map(|n| n as f64 / 1e9),
            "pids": host.pids_limit,
            "ulimits": ulimits,
            "output_bytes_per_stream": spec.output_bytes,
            "network": if host.network_mode.as_deref() == Some("none") { "none" } else { "engine" },
        },
    })
}

/// One running container.
struct DockerInstance {
    docker: Docker,
    id: String,
    name: String,
    image: String,
    socket_dir: PathBuf,
    client: AgentClient,
    /// The agent (the container's PID 1) as the host sees it.
    pid: i32,
    pidfd: OwnedFd,
    isolation: serde_json::Value,
    /// The last state we know, for `describe` (which must not wait for the engine).
    state: Arc<Mutex<String>>,
    killed: Arc<AtomicBool>,
    ended: watch::Receiver<Option<Ended>>,
}

/// By hand: the client holds the token, which must not reach logs.
impl std::fmt::Debug for DockerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerInstance")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("socket", &self.client.socket)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl DockerInstance {
    fn set_state(&self, s: &str) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s.to_owned();
    }

    fn control_error(&self, action: &'static str, e: &ApiError) -> RuntimeError {
        RuntimeError::Control {
            backend: Backend::Docker,
            action,
            reason: format!("container {}: {}", self.name, api_message(e)),
        }
    }
}

#[async_trait::async_trait]
impl Instance for DockerInstance {
    fn backend(&self) -> Backend {
        Backend::Docker
    }

    fn client(&self) -> AgentClient {
        self.client.clone()
    }

    async fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        match remove(&self.docker, &self.id).await {
            Ok(()) => self.set_state("removed"),
            Err(e) => self.set_state(&format!("removal failed: {}", api_message(&e))),
        }
        let _ = fs::remove_dir_all(&self.socket_dir);
    }

    fn can_pause(&self) -> bool {
        true
    }

    async fn pause(&self) -> Result<(), RuntimeError> {
        self.docker
            .pause_container(&self.id)
            .await
            .map_err(|e| self.control_error("pause", &e))?;
        self.set_state("paused");
        Ok(())
    }

    async fn resume(&self) -> Result<(), RuntimeError> {
        self.docker
            .unpause_container(&self.id)
            .await
            .map_err(|e| self.control_error("resume", &e))?;
        self.set_state("running");
        Ok(())
    }

    async fn connect_tcp(&self, port: u16) -> io::Result<Stream> {
        let pidfd = self.pidfd.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // setns changes the calling thread's namespace: do it on a thread that ends right
        // after; the socket stays in the container's namespace.
        std::thread::Builder::new()
            .name("sandbox-connect".into())
            .spawn(move || {
                let connect = || {
                    rustix::thread::move_into_thread_name_spaces(
                        pidfd.as_fd(),
                        rustix::thread::ThreadNameSpaceType::NETWORK,
                    )?;
                    std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_secs(5),
                    )
                };
                let _ = tx.send(connect());
            })?;
        let std = rx
            .await
            .map_err(|_| io::Error::other("the connecting thread ended without a result"))??;
        std.set_nonblocking(true)?;
        let _ = std.set_nodelay(true);
        Ok(Box::new(tokio::net::TcpStream::from_std(std)?))
    }

    async fn wait(&self) -> Ended {
        let mut ended = self.ended.clone();
        let result = ended.wait_for(Option::is_some).await;
        match result {
            Ok(e) => (*e).clone().unwrap_or_else(killed_by_us),
            Err(_) => Ended {
                status: "unknown".into(),
                detail: "the container watcher ended without a report".into(),
            },
        }
    }

    fn isolation(&self) -> serde_json::Value {
        self.isolation.clone()
    }

    fn describe(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let agent = fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "gone".into());
        format!(
            "container {} ({}, image {}): {state}; agent pid {}: {agent}",
            self.name,
            self.id.get(..12).unwrap_or(&self.id),
            self.image,
            self.pid
        )
    }
}

/// Removes a container that never became a sandbox: `run` on every error path; when the start
/// future is dropped midway (its caller gave up), Drop hands the removal to the runtime.
struct Cleanup {
    docker: Docker,
    name: String,
    dir: PathBuf,
    armed: bool,
}

impl Cleanup {
    async fn run(mut self) {
        self.armed = false;
        let _ = remove(&self.docker, &self.name).await;
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = std::mem::take(&mut self.name);
            handle.spawn(async move {
                let _ = remove(&docker, &name).await;
            });
        }
    }
}

/// Force-removes a container and its anonymous volumes (an image's VOLUME lines make them);
/// one that is already gone or being removed counts as removed.
async fn remove(docker: &Docker, container: &str) -> Result<(), ApiError> {
    let docker = docker.clone().with_timeout(REMOVE_TIMEOUT);
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Err(ApiError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(ApiError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        other => other,
    }
}

/// The parent of every sandbox's socket directory: root-only when we are root (the server).
fn socket_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/runbox/docker")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join("runbox-docker")
    }
}

/// Makes a fresh socket directory for the sandbox, owned by the user its container runs as,
/// and returns that user. As root: the workspace's owner when that is not root (files the code
/// writes stay the owner's), else `SANDBOX_UID:SANDBOX_GID`, and the workspace directory
/// itself (not its contents) is given to that user so the code can write it. Not root: our
/// own ids (we cannot give files away).
fn prepare_host_dirs(workspace: &Path, dir: &Path) -> io::Result<(u32, u32)> {
    let root = dir.parent().unwrap_or(dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    // Never reuse one: it would be a live sandbox's with the same id, or a leftover for sweep.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => io::Error::new(
                e.kind(),
                "it exists: a sandbox with this id runs, or one was left behind (sweep removes it)",
            ),
            _ => e,
        })?;
    if !rustix::process::geteuid().is_root() {
        let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
        return Ok((uid.as_raw(), gid.as_raw()));
    }
    let meta = fs::metadata(workspace)?;
    let user = if meta.uid() != 0 && meta.gid() != 0 {
        (meta.uid(), meta.gid())
    } else {
        std::os::unix::fs::chown(workspace, Some(SANDBOX_UID), Some(SANDBOX_GID))?;
        (SANDBOX_UID, SANDBOX_GID)
    };
    std::os::unix::fs::chown(dir, Some(user.0), Some(user.1))?;
    Ok(user)
}

/// Once the agent has bound its socket, takes the directory back from the sandbox user: code
/// in the container runs as that same user and could otherwise unlink the socket and bind its
/// own in its place, to be sent the token with the host's next request. The agent keeps its
/// listening fd and never needs the path again; no code runs before this (nothing but the
/// agent runs until the host, which has the token, sends it work). Without root the directory
/// stays the sandbox user's (who is then us): the server runs as root.
fn seal_socket_dir(dir: &Path) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(0), Some(0))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub fn container_name(sandbox: &str) -> String {
    format!("runbox-{sandbox}")
}

/// Sandbox ids name containers and directories: no separators, no dot-dot, no surprises.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn start_error(reason: String) -> RuntimeError {
    RuntimeError::Start {
        backend: Backend::Docker,
        reason,
    }
}

fn create_error(host: &str, image: &str, e: ApiError) -> RuntimeError {
    match e {
        // The create endpoint does not pull; 404 is its answer for a missing image.
        ApiError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::Image {
            backend: Backend::Docker,
            image: image.to_owned(),
            reason: format!(
                "{message}; build it with `runbox image build` (the docker backend never pulls)"
            ),
        },
        e => start_error(format!("creating the container: {}", explain(host, &e))),
    }
}

/// The engine's own message when it answered, else the transport error.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::DockerResponseServerError { message, .. } => message.clone(),
        ApiError::RequestTimeoutError => format!(
            "the engine did not answer within {} s",
            API_TIMEOUT.as_secs()
        ),
        e => error_chain(e),
    }
}

/// An API failure as a reason a person can act on.
fn explain(host: &str, e: &ApiError) -> String {
    match e {
        ApiError::SocketNotFoundError(path) => format!(
            "the Docker engine is not running: there is no socket at {path} (start dockerd, or \
             point DOCKER_HOST at a running engine)"
        ),
        ApiError::RequestTimeoutError => format!(
            "the Docker engine at {host} did not answer within {} s (hung or overloaded)",
            API_TIMEOUT.as_secs()
        ),
        ApiError::HyperLegacyError { .. } | ApiError::IOError { .. } => format!(
            "the Docker engine at {host} is not reachable (is dockerd running?): {}",
            error_chain(e)
        ),
        ApiError::DockerResponseServerError {
            status_code,
            message,
        } => format!("the Docker engine answered {status_code}: {message}"),
        e => format!("Docker engine at {host}: {}", error_chain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ImageSource;

    fn spec() -> StartSpec {
        StartSpec {
            id: "abc123".into(),
            image: ImageSource {
                name: "default".into(),
                rootfs: None,
                docker: Some("runbox/default:latest".into()),
            },
            workspace: "/srv/ws".into(),
            memory_bytes: 256 << 20,
            cpus: 0.5,
            pids: 64,
            output_bytes: 4096,
            env: vec![("A".into(), "b c".into())],
            agent_args: vec!["--python-deny".into(), "ctypes".into()],
        }
    }

    fn config() -> ContainerCreateBody {
        let paths = HostPaths {
            workspace: Path::new("/srv/ws"),
            agent: Path::new("/usr/lib/runbox/runbox-agent"),
            socket_dir: Path::new("/run/runbox/docker/abc123"),
        };
        container_config(
            &spec(),
            "runbox/default:latest",
            &paths,
            (1000, 1000),
            "default",
        )
    }

    #[test]
    fn the_agent_listens_on_a_path_and_reads_the_token_from_stdin() {
        let flags = agent_flags(&spec());
        assert_eq!(
            flags[..3],
            [
                "--listen",
                "unix:/run/runbox-agent/agent.sock",
                "--token-stdin"
            ]
        );
        assert!(!flags.iter().any(|f| f.contains("-fd")), "{flags:?}");
        assert!(flags.windows(2).any(|w| w == ["--env", "A=b c"]));
        assert!(flags.ends_with(&["--python-deny".into(), "ctypes".into()]));
        let c = config();
        assert_eq!(c.entrypoint, Some(vec![AGENT_IN_SANDBOX.to_owned()]));
        assert_eq!(c.cmd, Some(flags));
    }

    #[test]
    fn the_container_is_hardened() {
        let c = config();
        let h = c.host_config.clone().unwrap_or_default();
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(h.cap_add, None);
        let opts = h.security_opt.clone().unwrap_or_default();
        assert_eq!(opts[0], "no-new-privileges");
        assert!(opts[1].starts_with("seccomp={"), "{}", opts[1]);
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.init, Some(false));
        assert_eq!(h.memory, Some(256 << 20));
        assert_eq!(h.memory_swap, h.memory);
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(64));
        assert_eq!(h.binds, None);
        let mounts = h.mounts.unwrap_or_default();
        let targets: Vec<_> = mounts
            .iter()
            .map(|m| (m.target.clone().unwrap_or_default(), m.read_only))
            .collect();
        assert_eq!(
            targets,
            [
                ("/workspace".to_owned(), Some(false)),
                (AGENT_IN_SANDBOX.to_owned(), Some(true)),
                ("/run/runbox-agent".to_owned(), Some(false)),
            ]
        );
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        let labels = c.labels.unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_SANDBOX).map(String::as_str),
            Some("abc123")
        );
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    }

    #[test]
    fn ids_that_would_escape_the_socket_directory_are_refused() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-rf",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        for good in ["abc", "A-1_2.3", "0f3a"] {
            assert!(valid_id(good), "{good:?}");
        }
    }
}
