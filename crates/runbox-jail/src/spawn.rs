//! The parent side of starting a sandbox: allocate ids, create the cgroup, prepare the plan,
//! clone the child into its namespaces, write its id maps, put it in its cgroup and let it go.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::apply::{self, ChildPipes};
use crate::cgroup::{self, Cgroup, CgroupLimits};
use crate::control::Control;
use crate::error::JailError;
use crate::ids::HostIds;
use crate::outcome::{
    CgroupEnforcement, Enforcement, FilesystemEnforcement, Identity, LandlockEnforcement, Rlimits,
    SeccompEnforcement,
};
use crate::policy::{Limits, Policy, WORKSPACE};
use crate::prepare::{self, Prepared};
use crate::sys;

/// The namespaces the child is cloned into. Two more it makes itself: the network namespace
/// (a helper creates it while the filesystem is built; see `sys::NetworkHelper`) and the
/// cgroup namespace (after it has been moved into its cgroup).
const CLONE_FLAGS: libc::c_ulong = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as libc::c_ulong;
pub const NAMESPACES: &[&str] = &["user", "pid", "mount", "net", "ipc", "uts", "cgroup"];

/// Where the command's standard input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdin {
    #[default]
    Null,
    /// The caller's fd 0 (never pass a terminal: it would let the command talk to it).
    Inherit,
}

/// How the command is started, beyond what the policy says.
#[derive(Debug, Default)]
pub struct Launch {
    pub stdin: Stdin,
    /// Descriptors handed to the command as fds 3, 4, ... in this order (everything else
    /// above 2 is closed on exec). At most 32.
    pub fds: Vec<OwnedFd>,
    /// Exec the command as the sandbox's PID 1 instead of under the jail's own init: for an
    /// agent that reaps orphans itself and whose exit should end the sandbox.
    pub as_pid1: bool,
}

/// Internal pipe ends and passed fds live at or above this number in the child, so the
/// command's fds 3.. can be filled without clobbering them.
const HIGH_FD: i32 = 100;

fn high(fd: OwnedFd) -> Result<OwnedFd, JailError> {
    rustix::io::fcntl_dupfd_cloexec(&fd, HIGH_FD).map_err(|e| JailError::Supervise(e.into()))
}

/// A sandbox whose command has been started.
#[derive(Debug)]
pub struct Sandbox {
    pub(crate) id: String,
    pub(crate) init: Pid,
    /// Holds the init's pidfd (polled by `wait`) and the freezer.
    pub(crate) control: Control,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) oom_fd: Option<OwnedFd>,
    pub(crate) report: OwnedFd,
    pub(crate) status: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    pub(crate) started: Instant,
    pub(crate) limits: Limits,
    pub(crate) argv0: String,
    pub(crate) steps: Vec<crate::plan::Step>,
    pub(crate) enforcement: Enforcement,
    pub(crate) reaped: bool,
    /// Our end of the go pipe, open while we live (see `Step::RearmParentDeathSignal`).
    pub(crate) _parent_alive: OwnedFd,
    pub(crate) as_pid1: bool,
    // Dropped last: frees the host id slot once the sandbox is gone.
    pub(crate) _ids: HostIds,
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cgroup_for(policy: &Policy, id: &str) -> Result<(Option<Cgroup>, CgroupEnforcement), JailError> {
    let l = &policy.limits;
    let wanted = CgroupLimits {
        memory_bytes: l.memory_bytes,
        cpus: l.cpus,
        pids: l.pids,
        oom_kills_group: l.kill_all_on_limit,
    };
    let explicit: Vec<&str> = ["memory", "cpus", "pids"]
        .into_iter()
        .filter(|n| l.is_explicit(n))
        .collect();
    let mut report = CgroupEnforcement {
        version: None,
        controllers: Vec::new(),
        memory_bytes: None,
        swap: "unlimited",
        cpus: None,
        pids: None,
        freezer: false,
        unavailable: None,
    };
    let created = cgroup::detect().and_then(|h| {
        let h = if policy.pausable {
            h
        } else {
            h.without_freezer()
        };
        let missing = |c: &str| !h.controllers.iter().any(|x| x == c);
        for (name, controller, set) in [
            ("memory", "memory", wanted.memory_bytes.is_some()),
            ("cpus", "cpu", wanted.cpus.is_some()),
            ("pids", "pids", wanted.pids.is_some()),
        ] {
            if set && missing(controller) && l.is_explicit(name) {
                return Ok(Err(JailError::LimitUnavailable {
                    limit: name.into(),
                    reason: format!("the cgroup {controller} controller is not available"),
                }));
            }
        }
        let cg = Cgroup::create(&h, id, wanted)?;
        Ok(Ok((h, cg)))
    });
    match created {
        Ok(Ok((h, cg))) => {
            report.version = Some(h.version);
            report.controllers = h.controllers.clone();
            let has = |c: &str| h.controllers.iter().any(|x| x == c);
            report.memory_bytes = wanted.memory_bytes.filter(|_| has("memory"));
            report.swap = if report.memory_bytes.is_some() {
                "off"
            } else {
                "unlimited"
            };
            report.cpus = wanted.cpus.filter(|_| has("cpu"));
            report.pids = wanted.pids.filter(|_| has("pids"));
            report.freezer = cg.freezer().is_some();
            Ok((Some(cg), report))
        }
        Ok(Err(e)) => Err(e),
        Err(e) if !explicit.is_empty() => Err(if e.is_permission() {
            JailError::Cgroup(e)
        } else {
            JailError::LimitUnavailable {
                limit: explicit.join(", "),
                reason: e.to_string(),
            }
        }),
        Err(e) => {
            report.unavailable = Some(e.to_string());
            Ok((None, report))
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    pipe_with(PipeFlags::CLOEXEC).map_err(|e| JailError::Supervise(e.into()))
}

impl Sandbox {
    /// Starts `policy.argv` confined. Safe to call from any thread of a multi-threaded
    /// process, concurrently: the cloned child runs only the prepared plan, with raw syscalls
    /// (no allocator, no locks; see apply.rs), and closes the descriptors it inherited from
    /// other threads.
    pub fn spawn(policy: &Policy, stdin: Stdin) -> Result<Self, JailError> {
        Self::launch(
            policy,
            Launch {
                stdin,
                ..Launch::default()
            },
        )
    }

    /// `spawn` with extra descriptors and the choice of PID 1 (see `Launch`).
    pub fn launch(policy: &Policy, launch: Launch) -> Result<Self, JailError> {
        if launch.fds.len() > 32 {
            return Err(JailError::InvalidPolicy(
                "at most 32 descriptors can be passed to a sandbox".into(),
            ));
        }
        let stdin = launch.stdin;
        let pass_fds = launch
            .fds
            .into_iter()
            .map(high)
            .collect::<Result<Vec<_>, _>>()?;
        let id = random_id();
        let ids = HostIds::allocate(policy.uid, policy.gid).map_err(JailError::Ids)?;
        let mut prepared = prepare::prepare(policy, &ids)?;
        prepared.pass_fds = pass_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        prepared.as_pid1 = launch.as_pid1;

        let (go_read, go_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        let (status_read, status_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let stdin_fd: OwnedFd = match stdin {
            Stdin::Null => fs::File::open("/dev/null")
                .map_err(JailError::Supervise)?
                .into(),
            Stdin::Inherit => rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)
                .map_err(|e| JailError::Supervise(e.into()))?,
        };
        let (go_read, report_write, status_write) =
            (high(go_read)?, high(report_write)?, high(status_write)?);
        let (stdout_write, stderr_write, stdin_fd) =
            (high(stdout_write)?, high(stderr_write)?, high(stdin_fd)?);
        let pipes = ChildPipes {
            go: go_read.as_raw_fd(),
            report: report_write.as_raw_fd(),
            status: status_write.as_raw_fd(),
            stdin: stdin_fd.as_raw_fd(),
            stdout: stdout_write.as_raw_fd(),
            stderr: stderr_write.as_raw_fd(),
        };
        let mut inherited: Vec<i32> = [
            pipes.go,
            pipes.report,
            pipes.status,
            pipes.stdin,
            pipes.stdout,
            pipes.stderr,
        ]
        .into_iter()
        .chain(prepared.pass_fds.iter().copied())
        .chain(
            prepared
                .tree_fds
                .iter()
                .map(|c| c.get())
                .filter(|&fd| fd >= 0),
        )
        .collect();
        inherited.sort_unstable();
        inherited.dedup();
        prepared.inherited_fds = inherited;

        let started = Instant::now();
        let child = match sys::clone_process(CLONE_FLAGS).map_err(JailError::Clone)? {
            sys::Forked::Child => apply::init_main(&prepared, pipes),
            sys::Forked::Parent { child } => child,
        };
        drop((
            go_read,
            report_write,
            status_write,
            stdout_write,
            stderr_write,
            stdin_fd,
            pass_fds,
        ));
        let init = Pid::from_raw(child)
            .ok_or_else(|| JailError::Supervise(std::io::Error::other("clone returned pid 0")))?;
        let pidfd = match pidfd_open(init, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                kill_and_reap(init);
                return Err(JailError::Supervise(e.into()));
            }
        };
        if let Err(e) = write_id_maps(child, &ids).and_then(|()| go(&go_write)) {
            kill_and_reap(init);
            return Err(e);
        }
        // The child builds its filesystem meanwhile (about 2 ms), which hides the cgroup's
        // mkdirs and limit writes (about 1 ms on v1); it waits for the second byte before it
        // drops privileges, so nothing of the command runs outside the cgroup. A cgroup error
        // (a limit this host cannot enforce) ends the half-built child here.
        let (cgroup, cgroup_report) = match cgroup_for(policy, &id) {
            Ok(made) => made,
            Err(e) => {
                kill_and_reap(init);
                return Err(e);
            }
        };
        let joined = (|| {
            let oom_fd = match &cgroup {
                Some(cg) => {
                    cg.add_process(child).map_err(JailError::Cgroup)?;
                    cg.oom_notifier().map_err(JailError::Cgroup)?
                }
                None => None,
            };
            go(&go_write)?;
            Ok(oom_fd)
        })();
        let oom_fd = match joined {
            Ok(j) => j,
            Err(e) => {
                kill_and_reap(init);
                return Err(e);
            }
        };
        // Kept open until the sandbox is reaped: the child checks it after re-arming its
        // parent-death signal (see Step::RearmParentDeathSignal).
        let parent_alive = go_write;

        let enforcement = enforcement(policy, &ids, cgroup_report, &prepared);
        let freezer = cgroup.as_ref().and_then(Cgroup::freezer);
        Ok(Self {
            id,
            init,
            control: Control::new(pidfd, freezer),
            cgroup,
            oom_fd,
            report: report_read,
            status: status_read,
            stdout: stdout_read,
            stderr: stderr_read,
            started,
            limits: policy.limits.clone(),
            argv0: policy.argv.first().cloned().unwrap_or_default(),
            steps: prepared.steps.clone(),
            enforcement,
            reaped: false,
            _parent_alive: parent_alive,
            as_pid1: launch.as_pid1,
            _ids: ids,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// What is enforced on this sandbox (the same report its `Outcome` carries at the end).
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// A handle that can kill, pause and resume the sandbox from another thread while `wait`
    /// runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// `control`, under its old name.
    pub fn killer(&self) -> Result<Control, JailError> {
        Ok(self.control())
    }

    /// Kills every process of the sandbox, paused or not (see `Control::kill`).
    pub fn kill(&self) {
        self.control.kill();
    }

    /// Stops every process of the sandbox until `resume` (see `Control::pause`). The
    /// wall-clock timeout keeps running while paused.
    pub fn pause(&self) -> Result<(), JailError> {
        self.control.pause()
    }

    /// Lets a paused sandbox run again.
    pub fn resume(&self) -> Result<(), JailError> {
        self.control.resume()
    }
}

fn go(pipe: &OwnedFd) -> Result<(), JailError> {
    sys::write_all_raw(pipe.as_raw_fd(), b"g").map_err(JailError::Supervise)
}

/// Writes the child's uid and gid maps (and, unprivileged, denies setgroups first).
fn write_id_maps(child: i32, ids: &HostIds) -> Result<(), JailError> {
    let proc = format!("/proc/{child}");
    if !ids.privileged {
        fs::write(format!("{proc}/setgroups"), "deny").map_err(|source| JailError::IdMap {
            what: "setgroups policy",
            source,
        })?;
    }
    fs::write(format!("{proc}/uid_map"), ids.uid_map()).map_err(|source| JailError::IdMap {
        what: "uid map",
        source,
    })?;
    fs::write(format!("{proc}/gid_map"), ids.gid_map()).map_err(|source| JailError::IdMap {
        what: "gid map",
        source,
    })
}

/// SIGKILL `pid` and reap it. The signal is sent again until the child is gone: we have seen a
/// freshly cloned init still blocked on its go pipe while its parent waited for it after one
/// SIGKILL (a CI hang); a repeated kill costs nothing and a blocking wait without it can hang
/// the spawner thread forever.
pub(crate) fn kill_and_reap(pid: Pid) {
    use rustix::process::{kill_process, waitpid, Signal, WaitOptions};
    for _ in 0..500 {
        let _ = kill_process(pid, Signal::KILL);
        match waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    let _ = kill_process(pid, Signal::KILL);
    let _ = waitpid(Some(pid), WaitOptions::empty());
}

fn enforcement(
    policy: &Policy,
    ids: &HostIds,
    cgroup: CgroupEnforcement,
    prepared: &Prepared,
) -> Enforcement {
    let landlock_on = prepared
        .steps
        .iter()
        .any(|s| matches!(s, crate::plan::Step::Landlock));
    Enforcement {
        namespaces: NAMESPACES.to_vec(),
        identity: Identity {
            per_sandbox_host_ids: ids.privileged,
            host_uid: ids.host_uid,
            host_gid: ids.host_gid,
            uid: ids.uid,
            gid: ids.gid,
            note: (!ids.privileged).then_some("not started as root: the sandbox runs as the caller's own uid (mapped inside); concurrent sandboxes share it"),
        },
        cgroup,
        landlock: LandlockEnforcement {
            kernel_abi: prepared.landlock.abi,
            status: prepared.landlock_outcome.get(),
            writable: if landlock_on { prepared.landlock_writable.clone() } else { Vec::new() },
        },
        seccomp: SeccompEnforcement {
            mode: "filter",
            denied_syscalls: crate::seccomp::table().len(),
            x32: "killed",
            clone3: "enosys",
        },
        no_new_privs: true,
        capabilities_dropped: true,
        rlimits: Rlimits { core: 0, nofile: policy.limits.open_files, fsize: policy.limits.file_size_bytes },
        filesystem: FilesystemEnforcement {
            root: policy.filesystem.rootfs.as_ref().map_or("host /usr (read-only)".into(), |p| format!("{} (read-only)", p.display())),
            workspace: policy.filesystem.workspace.as_ref().map_or(format!("fresh tmpfs at {WORKSPACE}"), |p| format!("{} at {WORKSPACE}", p.display())),
            idmapped_binds: prepared.idmapped_binds,
            tmp_bytes: policy.limits.tmp_bytes,
        },
        network: "none",
    }
}

/// A user namespace whose only mapping is `owner` (inside) -> `host` (outside), used to
/// idmap writable bind mounts. A short-lived child holds the namespace while we open it.
pub(crate) fn idmap_namespace(owner: (u32, u32), host: (u32, u32)) -> Result<OwnedFd, JailError> {
    let (hold_read, hold_write) = pipe()?;
    let child =
        match sys::clone_process(libc::CLONE_NEWUSER as libc::c_ulong).map_err(JailError::Clone)? {
            sys::Forked::Child => {
                // Only our own read end: a copy of another thread's hold pipe (two sandboxes
                // starting at once) would keep that helper from ever seeing EOF, and its copy
                // of ours would keep us: both spawner threads then wait forever (seen in CI).
                let _ = sys::close_all_except(&[hold_read.as_raw_fd()]);
                std::mem::forget(hold_write);
                let mut b = [0u8; 1];
                let _ = rustix::io::read(hold_read.as_fd(), &mut b);
                sys::exit_now(0);
            }
            sys::Forked::Parent { child } => child,
        };
    drop(hold_read);
    let pid = Pid::from_raw(child)
        .ok_or_else(|| JailError::Supervise(std::io::Error::other("clone returned pid 0")))?;
    let result = (|| {
        let proc = format!("/proc/{child}");
        fs::write(
            format!("{proc}/uid_map"),
            format!("{} {} 1\n", owner.0, host.0),
        )
        .map_err(|source| JailError::IdMap {
            what: "idmap uid map",
            source,
        })?;
        fs::write(
            format!("{proc}/gid_map"),
            format!("{} {} 1\n", owner.1, host.1),
        )
        .map_err(|source| JailError::IdMap {
            what: "idmap gid map",
            source,
        })?;
        let ns: OwnedFd = fs::File::open(format!("{proc}/ns/user"))
            .map_err(|source| JailError::IdMap {
                what: "idmap namespace",
                source,
            })?
            .into();
        Ok(ns)
    })();
    drop(hold_write);
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    result
}
