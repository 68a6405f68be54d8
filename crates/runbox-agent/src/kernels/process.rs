//! One kernel process and its three channels: a unix socket for requests and events (JSON
//! lines), and pipes for fds 1 and 2 that the agent reads itself, so output of anything the
//! kernel starts (subprocesses, `os.system`) arrives too.
//!
//! The agent crate forbids unsafe code, so there is no `pre_exec` to place the socket on
//! fd 3: it goes in as fd 0, and each driver moves it off stdin first thing (python dups it
//! to a close-on-exec fd, bash runs `exec 3<&0 </dev/null`, node gets it on fd 3 from a
//! /bin/sh trampoline) and puts /dev/null on stdin.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::pipe::PipeFlags;
use rustix::process::Signal;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::{pipe, OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::{ImportPolicy, Language};
use crate::procs::{self, Exit, Procs};

const PYTHON_DRIVER: &str = include_str!("../../kernels/python_kernel.py");
const BASH_DRIVER: &str = include_str!("../../kernels/bash_kernel.sh");
const NODE_DRIVER: &str = include_str!("../../kernels/node_kernel.js");

/// How long a kernel may take to say it is ready (node on a loaded machine is the slow one).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the channel closes, how long to wait for the exit status before killing.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The longest event line read from a kernel; a longer one (a gigantic result) is dropped.
pub(super) const MAX_EVENT_BYTES: usize = 64 << 20;
/// Bytes of stderr kept to explain a kernel that died before it was ready.
const STARTUP_STDERR_BYTES: usize = 4096;

/// Everything needed to start (and restart) a kernel of one context.
#[derive(Debug, Clone)]
pub(super) struct LaunchSpec {
    pub language: Language,
    pub procs: Procs,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub policy: ImportPolicy,
}

/// An event a driver writes on the channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(super) enum KernelEvent {
    Ready {},
    Count {
        n: u64,
    },
    Result {
        data: BTreeMap<String, serde_json::Value>,
    },
    Error {
        ename: String,
        evalue: String,
        #[serde(default)]
        traceback: Vec<String>,
    },
    Done {
        #[serde(default)]
        status: Option<i32>,
    },
}

/// What reading the channel produced.
#[derive(Debug)]
pub(super) enum Incoming {
    Event(KernelEvent),
    /// A line that is not an event we know, or longer than `MAX_EVENT_BYTES`.
    Garbled(usize),
    Closed,
}

/// The read end of a kernel's stdout or stderr pipe (non-blocking).
#[derive(Debug)]
pub(super) struct OutputPipe {
    pipe: Option<pipe::Receiver>,
}

impl OutputPipe {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            pipe: Some(pipe::Receiver::from_owned_fd(fd)?),
        })
    }

    pub(super) fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Waits for data; `None` at end of file (the pipe is then closed for good).
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        let pipe = self.pipe.as_mut()?;
        match pipe.read(buf).await {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.pipe = None;
                None
            }
        }
    }

    /// Reads what is already in the pipe without waiting: `None` when it is empty (or closed).
    /// The reactor's readiness may lag behind a write that already happened, so this asks
    /// the kernel directly.
    pub(super) fn read_now(&mut self, buf: &mut [u8]) -> Option<usize> {
        let pipe = self.pipe.as_ref()?;
        loop {
            match rustix::io::read(pipe, &mut *buf) {
                Ok(n) if n > 0 => return Some(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return None,
                _ => {
                    self.pipe = None;
                    return None;
                }
            }
        }
    }
}

/// The event half of the channel.
#[derive(Debug)]
pub(super) struct EventReader {
    reader: BufReader<OwnedReadHalf>,
    /// A partly read event line (reading is resumed after a cancelled `select!` branch).
    line: Vec<u8>,
}

impl EventReader {
    /// Reads the next event line. Cancel-safe: a partly read line is kept for the next call.
    pub(super) async fn next(&mut self) -> Incoming {
        loop {
            let room = (MAX_EVENT_BYTES + 1).saturating_sub(self.line.len()) as u64;
            let mut limited = (&mut self.reader).take(room);
            match limited.read_until(b'\n', &mut self.line).await {
                Ok(0) | Err(_) if self.line.is_empty() => return Incoming::Closed,
                Ok(0) | Err(_) => {
                    self.line.clear();
                    return Incoming::Closed;
                }
                Ok(_) => {}
            }
            if self.line.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.line);
                return match serde_json::from_slice::<KernelEvent>(&line) {
                    Ok(event) => Incoming::Event(event),
                    Err(_) => Incoming::Garbled(line.len()),
                };
            }
            if self.line.len() > MAX_EVENT_BYTES {
                let dropped = self.line.len() + self.skip_line().await;
                self.line.clear();
                return Incoming::Garbled(dropped);
            }
        }
    }

    /// Discards input up to and including the next newline; returns the bytes dropped.
    async fn skip_line(&mut self) -> usize {
        let mut dropped = 0;
        loop {
            let buf = match self.reader.fill_buf().await {
                Ok([]) | Err(_) => return dropped,
                Ok(buf) => buf,
            };
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            self.reader.consume(used);
            dropped += used;
            if done {
                return dropped;
            }
        }
    }
}

/// A running kernel process.
#[derive(Debug)]
pub(super) struct KernelProcess {
    pub pid: i32,
    pub events: EventReader,
    pub requests: OwnedWriteHalf,
    pub stdout: OutputPipe,
    pub stderr: OutputPipe,
    pub exit: oneshot::Receiver<Exit>,
    /// Cells handed to this process so far (python numbers its cells the same way).
    pub cells: u64,
    /// Read buffers of the cells, kept across cells: zeroing them anew per cell costs more
    /// than a small cell's whole round trip in the agent.
    pub buffers: CellBuffers,
}

/// The read buffers one cell uses (output draining, stdout, stderr).
#[derive(Debug, Default)]
pub(super) struct CellBuffers {
    pub drain: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CellBuffers {
    pub(super) fn new(len: usize) -> Self {
        Self {
            drain: vec![0u8; len],
            stdout: vec![0u8; len],
            stderr: vec![0u8; len],
        }
    }
}

impl KernelProcess {
    pub(super) async fn start(spec: &LaunchSpec) -> io::Result<Self> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (out_read, out_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (err_read, err_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let mut cmd = command(spec);
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
        let spawned = spec.procs.spawn(&mut cmd)?;
        // Our copies of the child's ends must go, or we would never see end of file.
        drop(cmd);
        ours.set_nonblocking(true)?;
        let (events, requests) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let mut process = Self {
            pid: spawned.pid,
            events: EventReader {
                reader: BufReader::with_capacity(64 * 1024, events),
                line: Vec::new(),
            },
            requests,
            stdout: OutputPipe::new(out_read)?,
            stderr: OutputPipe::new(err_read)?,
            exit: spawned.exit,
            cells: 0,
            buffers: CellBuffers::default(),
        };
        match tokio::time::timeout(READY_TIMEOUT, process.wait_ready()).await {
            Ok(Ok(())) => Ok(process),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                process.kill().await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the kernel was not ready within {} s",
                        READY_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }

    async fn wait_ready(&mut self) -> io::Result<()> {
        loop {
            match self.events.next().await {
                Incoming::Event(KernelEvent::Ready {}) => return Ok(()),
                Incoming::Event(_) | Incoming::Garbled(_) => continue,
                Incoming::Closed => {
                    let exit = self.wait_exit().await;
                    let mut stderr = Vec::new();
                    let mut buf = [0u8; 4096];
                    while stderr.len() < STARTUP_STDERR_BYTES {
                        match self.stderr.read_now(&mut buf) {
                            Some(n) => stderr.extend_from_slice(&buf[..n]),
                            None => break,
                        }
                    }
                    let stderr = String::from_utf8_lossy(&stderr);
                    let stderr = stderr.trim();
                    let detail = if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    };
                    return Err(io::Error::other(format!(
                        "the kernel {} before it was ready{detail}",
                        describe(exit)
                    )));
                }
            }
        }
    }

    /// Waits for the exit status; kills the process group if it does not come in time (the
    /// channel closed, but the process is somehow still there).
    pub(super) async fn wait_exit(&mut self) -> Exit {
        if let Ok(status) = tokio::time::timeout(EXIT_GRACE, &mut self.exit).await {
            return status.unwrap_or(Exit::Signal(libc::SIGKILL));
        }
        procs::signal_group(self.pid, Signal::KILL);
        (&mut self.exit)
            .await
            .unwrap_or(Exit::Signal(libc::SIGKILL))
    }

    /// Kills the kernel and everything in its process group, and waits for its exit.
    pub(super) async fn kill(&mut self) -> Exit {
        procs::signal_group(self.pid, Signal::KILL);
        self.wait_exit().await
    }

    /// The request that runs one cell, framed for the driver of `language`.
    pub(super) fn request(language: Language, id: u64, code: &str) -> Vec<u8> {
        match language {
            // Bash reads up to a NUL, which no shell text can contain anyway.
            Language::Bash => {
                let mut req: Vec<u8> = code.bytes().filter(|&b| b != 0).collect();
                req.push(0);
                req
            }
            Language::Python | Language::JavaScript => {
                let mut req = format!("{id} {}\n", code.len()).into_bytes();
                req.extend_from_slice(code.as_bytes());
                req
            }
        }
    }
}

/// "exited with code 3" / "was killed by signal 11".
pub(super) fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exited with code {c}"),
        Exit::Signal(s) => format!("was killed by signal {s}"),
    }
}

fn command(spec: &LaunchSpec) -> Command {
    let mut cmd = match spec.language {
        Language::Python => {
            // -u: unbuffered stdout/stderr, so output interleaves as it was written.
            let mut cmd = Command::new("python3");
            cmd.args(["-u", "-c", PYTHON_DRIVER]);
            cmd
        }
        Language::Bash => {
            let bash = if std::path::Path::new("/bin/bash").exists() {
                "/bin/bash"
            } else {
                "bash"
            };
            let mut cmd = Command::new(bash);
            cmd.args(["--noprofile", "--norc", "-c", BASH_DRIVER]);
            cmd
        }
        Language::JavaScript => {
            let mut cmd = Command::new("/bin/sh");
            cmd.args([
                "-c",
                "exec 3<&0 </dev/null; exec node -e \"$1\"",
                "runbox-node",
                NODE_DRIVER,
            ]);
            cmd
        }
    };
    cmd.current_dir(&spec.cwd).env_clear();
    cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if spec.language == Language::Python {
        // Figures render off-screen; the driver sends them as PNG results.
        cmd.env("MPLBACKEND", "Agg");
        if let Some(allow) = &spec.policy.allow {
            cmd.env("RUNBOX_IMPORT_ALLOW", allow.join(","));
        }
        if !spec.policy.deny.is_empty() {
            cmd.env("RUNBOX_IMPORT_DENY", spec.policy.deny.join(","));
        }
    }
    cmd
}
