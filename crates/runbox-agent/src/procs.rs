//! Child processes of the agent.
//!
//! Each spawned process is watched through a pidfd and reaped by exactly that pidfd
//! (`waitid(P_PIDFD)`), so no wait ever steals another's status. As PID 1 the agent also
//! inherits orphans; a sweeper reaps zombies whose parent is us and that nobody registered,
//! found through /proc (a blind `waitpid(-1)` would race with the pidfd waits).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Shell convention: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Pids spawned through `Procs`, which the orphan sweeper must leave alone. The lock is held
/// across spawn + insert so a fast child cannot be mistaken for an orphan.
fn registered() -> &'static Mutex<HashSet<i32>> {
    static SET: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Opens the spawning thread's signal mask for one spawn and closes it again. The agent's
/// main blocks SIGTERM and SIGINT in every thread (see its signals.rs), a child starts with
/// the mask of the thread that spawned it, and std does not clear it: without this, every
/// command would start deaf to SIGTERM. Set once, by main; unset (tests), spawns are plain.
#[derive(Debug, Clone, Copy)]
pub struct SpawnMask {
    pub open: fn(),
    pub close: fn(),
}

static SPAWN_MASK: OnceLock<SpawnMask> = OnceLock::new();

/// Sets the mask hooks every spawn runs between (once; later calls are ignored).
pub fn set_spawn_mask(mask: SpawnMask) {
    let _ = SPAWN_MASK.set(mask);
}

/// `cmd.spawn()` with the spawning thread's mask opened (see `SpawnMask`).
fn spawn_unmasked(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mask = SPAWN_MASK.get();
    if let Some(m) = mask {
        (m.open)();
    }
    let child = cmd.spawn();
    if let Some(m) = mask {
        (m.close)();
    }
    child
}

/// The registry of spawned processes.
#[derive(Clone, Default)]
pub struct Procs {}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Procs")
    }
}

/// A spawned process: its pid (also its process group id) and pipes.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub exit: oneshot::Receiver<Exit>,
}

impl Procs {
    /// Starts the orphan sweeper (once per process).
    pub fn start_reaper(&self) -> io::Result<()> {
        static STARTED: OnceLock<()> = OnceLock::new();
        if STARTED.set(()).is_ok() {
            std::thread::Builder::new()
                .name("orphan-reaper".into())
                .spawn(|| loop {
                    sweep_orphans();
                    std::thread::sleep(Duration::from_millis(200));
                })?;
        }
        Ok(())
    }

    /// Spawns `cmd` in its own process group and watches it (needs a tokio runtime).
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        self.spawn_first(cmd, None)
    }

    /// `spawn`, but when `cmd` cannot be started at all, starts `fallback` instead. An error
    /// from `Command::spawn` means the exec failed (or never happened): nothing of `cmd` ran,
    /// so `fallback` can take over without anything happening twice.
    pub fn spawn_or(&self, cmd: &mut Command, fallback: &mut Command) -> io::Result<Spawned> {
        self.spawn_first(cmd, Some(fallback))
    }

    fn spawn_first(
        &self,
        cmd: &mut Command,
        fallback: Option<&mut Command>,
    ) -> io::Result<Spawned> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let mut set = registered().lock().unwrap_or_else(|p| p.into_inner());
        let mut child = match (spawn_unmasked(cmd), fallback) {
            (Ok(child), _) => child,
            (Err(_), Some(fallback)) => spawn_unmasked(fallback.process_group(0))?,
            (Err(e), None) => return Err(e),
        };
        let pid = child.id() as i32;
        set.insert(pid);
        drop(set);
        let (tx, rx) = oneshot::channel();
        let done = move |exit: Exit| {
            registered()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid);
            let _ = tx.send(exit);
        };
        // The pidfd turns readable when the process exits, and the reactor reports that
        // along with the pipes' end of file: no thread hop between the exit and the task
        // that waits for it (a blocking waitid per child costs each command a wake-up of a
        // pool thread). Where the reactor cannot watch it, a blocking waitid per live child
        // does (the sandbox's pids limit bounds them). Either way exactly this pidfd reaps.
        let pidfd = match open_pidfd(pid) {
            Ok(fd) => Some(fd),
            // gVisor's runsc (releases before 2023) has no pidfd_open. Waiting for exactly
            // this pid is as safe: the orphan sweeper skips registered pids.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
            Err(e) => return Err(e),
        };
        match pidfd.map(watch) {
            Some(Ok(watched)) => {
                tokio::spawn(async move { done(watch_exit(watched, pid).await) });
            }
            Some(Err(_)) => {
                // Still our unreaped child, so the pid cannot have been reused.
                let pidfd = open_pidfd(pid)?;
                tokio::task::spawn_blocking(move || done(wait_exit(&pidfd)));
            }
            None => {
                tokio::task::spawn_blocking(move || done(wait_pid(pid)));
            }
        }
        Ok(Spawned {
            pid,
            stdin: child.stdin.take().map(ChildStdin::from_std).transpose()?,
            stdout: child.stdout.take().map(ChildStdout::from_std).transpose()?,
            stderr: child.stderr.take().map(ChildStderr::from_std).transpose()?,
            exit: rx,
        })
    }
}

/// Waits until the process behind `pidfd` exits and reaps exactly it.
fn wait_exit(pidfd: &OwnedFd) -> Exit {
    loop {
        if let Some(exit) = reap(pidfd, WaitIdOptions::EXITED) {
            return exit;
        }
    }
}

/// `wait_exit` by pid, for kernels without pidfds.
fn wait_pid(pid: i32) -> Exit {
    let Some(p) = Pid::from_raw(pid) else {
        return Exit::Signal(libc::SIGKILL);
    };
    loop {
        match rustix::process::waitid(WaitId::Pid(p), WaitIdOptions::EXITED) {
            Err(rustix::io::Errno::INTR) | Ok(None) => continue,
            Ok(Some(st)) => return exit_of(&st),
            Err(_) => return Exit::Signal(libc::SIGKILL),
        }
    }
}

fn open_pidfd(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("spawned pid 0"))?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(io::Error::from)
}

/// A pidfd registered with the reactor, for readiness only: tokio's `AsyncFd` cannot be
/// built without unsafe code (which this crate forbids), and its unchecked pipe receiver is
/// the one safe wrapper that registers an arbitrary owned fd. Nothing is ever read from it.
type WatchedPidfd = tokio::net::unix::pipe::Receiver;

fn watch(pidfd: OwnedFd) -> io::Result<WatchedPidfd> {
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(pidfd)
}

/// `wait_exit` through the reactor: waits until the pidfd is readable, then reaps.
async fn watch_exit(pidfd: WatchedPidfd, pid: i32) -> Exit {
    loop {
        if pidfd.readable().await.is_err() {
            // The reactor is gone (the runtime is shutting down): wait the plain way.
            break;
        }
        if let Some(exit) = reap(&pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
            return exit;
        }
        // Readable but not waitable yet (not expected). The readiness stays set (the
        // reactor is edge-triggered and would not report it again), so this polls.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(pidfd);
    match open_pidfd(pid) {
        Ok(fd) => tokio::task::spawn_blocking(move || wait_exit(&fd))
            .await
            .unwrap_or(Exit::Signal(libc::SIGKILL)),
        Err(_) => Exit::Signal(libc::SIGKILL),
    }
}

/// One `waitid` on the pidfd: the exit if the process was reaped, `None` if it has not
/// exited yet (with `NOHANG`) or the wait was interrupted.
fn reap(pidfd: &impl AsFd, options: WaitIdOptions) -> Option<Exit> {
    match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), options) {
        Ok(Some(st)) => Some(exit_of(&st)),
        Err(rustix::io::Errno::INTR) | Ok(None) => None,
        Err(_) => Some(Exit::Signal(libc::SIGKILL)),
    }
}

fn exit_of(st: &rustix::process::WaitIdStatus) -> Exit {
    match (st.exit_status(), st.terminating_signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Signal(libc::SIGKILL),
    }
}

/// Reaps zombie children nobody registered (orphans reparented to us as PID 1).
fn sweep_orphans() {
    let me = std::process::id() as i32;
    let set = registered().lock().unwrap_or_else(|p| p.into_inner());
    for pid in other_pids() {
        if set.contains(&pid) {
            continue;
        }
        if let Some(Stat { state: 'Z', ppid }) = stat(pid) {
            if ppid == me {
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
                }
            }
        }
    }
}

/// Whether any process but us is still running (zombies do not count): as PID 1, whether
/// anything of the sandbox is left.
pub fn others_running() -> bool {
    other_pids().any(|pid| stat(pid).is_some_and(|s| s.state != 'Z'))
}

/// The pids in /proc but ours.
fn other_pids() -> impl Iterator<Item = i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |&pid| pid != me)
}

/// The fields of /proc/PID/stat we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
}

/// `None` once the process is gone (reaped).
fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold anything, ')' and spaces included.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

/// Sends `sig` to the whole process group `pgid`.
pub fn signal_group(pgid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// A command with piped stdio and the given environment, ready for `Procs::spawn`.
pub fn piped(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        assert_eq!(
            parse_stat("42 (a) b (c) Z 1 42 42 0 -1"),
            Some(Stat {
                state: 'Z',
                ppid: 1
            })
        );
        assert_eq!(parse_stat("42 (sleep) S"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn others_running_sees_a_child() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        assert!(others_running());
        let pid = child.id() as i32;
        assert_eq!(stat(pid).map(|s| s.ppid), Some(std::process::id() as i32));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(stat(pid), None);
    }
}
