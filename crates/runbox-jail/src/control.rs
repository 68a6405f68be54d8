//! Controlling a running sandbox from any thread while another one runs `Sandbox::wait`:
//! kill it, pause it (freeze its cgroup), resume it.
//!
//! Pausing stops every process of the sandbox but not the clock: the wall-clock timeout keeps
//! running while paused, and a sandbox paused past its deadline is killed when it expires.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::JailError;
use crate::freezer::Freezer;

/// A cloneable handle on one sandbox: a pidfd of its init (so it never hits a reused pid) and
/// its cgroup's freezer. Every clone and the `Sandbox` itself share one state.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// The old name of `Control`, from when it could only kill.
pub type Killer = Control;

#[derive(Debug)]
struct Inner {
    pidfd: OwnedFd,
    freezer: Option<Freezer>,
    /// Set by the first `kill`; a killed sandbox is not paused again (a freeze racing with
    /// the kill could otherwise stop the dying tasks on v1 and hang `wait`).
    killed: AtomicBool,
}

impl Control {
    pub(crate) fn new(pidfd: OwnedFd, freezer: Option<Freezer>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pidfd,
                freezer,
                killed: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.inner.pidfd.as_fd()
    }

    /// Connects to `127.0.0.1:port` inside the sandbox's own network namespace (a service the
    /// sandbox's code started). A short-lived thread enters the namespace, connects and ends;
    /// the socket stays in the sandbox's namespace.
    pub fn connect_tcp(&self, port: u16) -> std::io::Result<std::net::TcpStream> {
        let pidfd = self.inner.pidfd.try_clone()?;
        std::thread::Builder::new()
            .name("sandbox-connect".into())
            .spawn(move || {
                use std::os::unix::fs::MetadataExt;
                let here = || std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino());
                let host = here()?;
                crate::sys::enter_net_namespace_of(pidfd.as_fd())?;
                // The init joins the network namespace its helper made only late in its set-up;
                // until then it is still in ours, and a connection would reach the host.
                if here()? == host {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the sandbox's network namespace is not set up yet",
                    ));
                }
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    std::time::Duration::from_secs(5),
                )
            })?
            .join()
            .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    }

    /// A one-line account of the sandbox's processes for logs when it misbehaves (an agent
    /// that never answers): each process's pid, name, state and kernel wait channel.
    pub fn describe(&self) -> String {
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.inner.pidfd)
        ))
        .unwrap_or_default();
        let Some(init) = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
        else {
            return "init has exited".into();
        };
        let mut out = Vec::new();
        let mut queue = vec![init];
        while let Some(pid) = queue.pop() {
            if out.len() >= 16 {
                break;
            }
            let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}"));
            let stat = read("stat").unwrap_or_default();
            // comm is in parentheses and may contain spaces; the state follows the last ')'.
            let (comm, state) = match (stat.find('('), stat.rfind(')')) {
                (Some(a), Some(b)) if a < b => (
                    &stat[a + 1..b],
                    stat[b + 1..].split_whitespace().next().unwrap_or("?"),
                ),
                _ => ("?", "?"),
            };
            let wchan = read("wchan").unwrap_or_default();
            out.push(format!(
                "{pid} {comm} {state} wchan={}",
                if wchan.is_empty() { "-" } else { &wchan }
            ));
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                queue.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        out.join("; ")
    }

    /// Whether this sandbox can be paused (it has a cgroup with a freezer).
    pub fn can_pause(&self) -> bool {
        self.inner.freezer.is_some()
    }

    /// Kills every process of the sandbox: SIGKILL to its init makes the kernel kill the rest
    /// of the pid namespace. A paused sandbox is killed and then thawed, so it really dies.
    pub fn kill(&self) {
        self.inner.killed.store(true, Ordering::SeqCst);
        let _ =
            rustix::process::pidfd_send_signal(&self.inner.pidfd, rustix::process::Signal::KILL);
        if let Some(freezer) = &self.inner.freezer {
            freezer.kill_frozen();
        }
    }

    /// Stops every process of the sandbox (freezes its cgroup) and returns once the kernel
    /// reports them all stopped (within `freezer::FREEZE_TIMEOUT`). `wait` keeps running and
    /// `kill` still works. Pausing a paused sandbox is a no-op.
    pub fn pause(&self) -> Result<(), JailError> {
        let freezer = self.freezer()?;
        if self.inner.killed.load(Ordering::SeqCst) {
            return Err(JailError::NotRunning);
        }
        freezer.freeze().map_err(JailError::Pause)?;
        // A kill that ran between the check above and the freeze saw the group thawed and
        // did not thaw it; undo the freeze so the kill takes effect.
        if self.inner.killed.load(Ordering::SeqCst) {
            freezer.kill_frozen();
            return Err(JailError::NotRunning);
        }
        Ok(())
    }

    /// Lets a paused sandbox run again. Resuming a running sandbox is a no-op.
    pub fn resume(&self) -> Result<(), JailError> {
        self.freezer()?.thaw().map_err(JailError::Resume)
    }

    fn freezer(&self) -> Result<&Freezer, JailError> {
        self.inner.freezer.as_ref().ok_or(JailError::NoFreezer)
    }
}
