//! Stateful kernels, one process per code context: python (rich results), bash, javascript.
//!
//! Each kernel is an ordinary interpreter running a small driver (`kernels/*` in this crate,
//! embedded with `include_str!`) that reads cells from a socket and writes events back as
//! JSON lines; its stdout and stderr are pipes the agent reads (see `process.rs` for the
//! protocol, `cell.rs` for how a cell's events are ordered and how timeouts and crashes
//! end). A kernel that died is replaced by a fresh one at the next cell.

mod cell;
mod output;
mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::process::{KernelProcess, LaunchSpec};
use crate::error::ApiError;
use crate::procs::Procs;
use crate::stream::Emitter;
use crate::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Bash,
    JavaScript,
}

impl Language {
    /// Accepts the names the official SDKs send.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Self::Python),
            "bash" | "sh" | "shell" => Some(Self::Bash),
            "javascript" | "js" | "node" | "nodejs" => Some(Self::JavaScript),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Bash => "bash",
            Self::JavaScript => "javascript",
        }
    }
}

/// Which modules python code may import (PEP 578 audit hook inside the interpreter).
///
/// Only imports written in cell code (or in functions cells define) are checked; whatever
/// an allowed module imports itself passes, so `allow: ["random"]` works although random
/// imports `_random` and `hashlib`. Entries are module names; an entry covers its
/// submodules. This is a guard rail for well-behaved code, not a security boundary (the
/// sandbox is): `importlib.import_module` of an already-loaded module is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPolicy {
    /// When set, only these top-level modules (and the standard machinery Python needs).
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellOutcome {
    /// An error event was sent.
    pub failed: bool,
    /// The kernel process died (crash, timeout kill); its state is gone.
    pub kernel_died: bool,
}

/// A handle that interrupts the running cell of a kernel (SIGINT to its process group). It
/// follows the kernel across restarts and does nothing while no kernel process is alive, so
/// it never signals a recycled pid.
#[derive(Debug, Clone)]
pub struct Interrupter {
    /// The kernel's pid when the handle was taken.
    pub pid: i32,
    live: Arc<AtomicI32>,
}

impl Interrupter {
    pub fn interrupt(&self) {
        let pid = self.live.load(Ordering::SeqCst);
        if pid > 0 {
            crate::procs::signal_group(pid, rustix::process::Signal::INT);
        }
    }
}

/// One kernel: a live process, or (after it died) the recipe for the next one.
#[derive(Debug)]
pub struct Kernel {
    pub language: Language,
    /// Pid (and process group) of the current or last kernel process.
    pub pid: i32,
    spec: LaunchSpec,
    process: Option<KernelProcess>,
    /// The pid while a process is alive, 0 otherwise (shared with interrupters).
    live: Arc<AtomicI32>,
    output_cap: usize,
    requests: u64,
}

impl Kernel {
    /// Starts a kernel and waits until its driver is ready for cells. It runs in the
    /// workspace with the configured environment, in its own process group.
    pub async fn start(
        language: Language,
        procs: &Procs,
        config: &Config,
        policy: &ImportPolicy,
    ) -> Result<Kernel, ApiError> {
        let cwd = if config.workspace.is_dir() {
            config.workspace.clone()
        } else {
            PathBuf::from("/")
        };
        let spec = LaunchSpec {
            language,
            procs: procs.clone(),
            cwd,
            env: config.env.clone(),
            policy: policy.clone(),
        };
        let process = launch(&spec).await?;
        Ok(Kernel {
            language,
            pid: process.pid,
            live: Arc::new(AtomicI32::new(process.pid)),
            process: Some(process),
            spec,
            output_cap: config.output_cap,
            requests: 0,
        })
    }

    /// Runs one cell, sending stdout/stderr/result/error/execution_count events (not init or
    /// execution_complete: the caller sends those).
    ///
    /// On timeout the cell is interrupted (SIGINT); if it has not stopped 2 s later the
    /// kernel's process group is killed. Either way a `TimeoutError` is reported, with
    /// `kernel_died` telling whether the state survived. If the previous cell's kernel died,
    /// a fresh one is started first.
    pub async fn run(
        &mut self,
        code: &str,
        emit: &Emitter,
        timeout: Option<Duration>,
    ) -> CellOutcome {
        if self.process.is_none() {
            match launch(&self.spec).await {
                Ok(p) => {
                    self.pid = p.pid;
                    self.live.store(p.pid, Ordering::SeqCst);
                    self.process = Some(p);
                }
                Err(e) => {
                    emit.error(
                        "KernelDied",
                        format!("cannot start a new {} kernel: {e}", self.language.name()),
                        Vec::new(),
                    )
                    .await;
                    return CellOutcome {
                        failed: true,
                        kernel_died: true,
                    };
                }
            }
        }
        let Some(process) = self.process.as_mut() else {
            return CellOutcome {
                failed: true,
                kernel_died: true,
            };
        };
        self.requests += 1;
        let request = KernelProcess::request(self.language, self.requests, code);
        let outcome = cell::run(
            process,
            self.language,
            &request,
            emit,
            timeout,
            self.output_cap,
        )
        .await;
        if outcome.kernel_died {
            self.live.store(0, Ordering::SeqCst);
            self.process = None;
        }
        outcome
    }

    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            pid: self.pid,
            live: self.live.clone(),
        }
    }

    /// Kills the kernel's process group and waits for the kernel to be reaped.
    pub async fn shutdown(mut self) {
        self.live.store(0, Ordering::SeqCst);
        if let Some(mut p) = self.process.take() {
            p.kill().await;
        }
    }
}

impl Drop for Kernel {
    /// A kernel dropped without `shutdown` (its context was discarded mid-cell) still dies.
    fn drop(&mut self) {
        if let Some(p) = &self.process {
            self.live.store(0, Ordering::SeqCst);
            crate::procs::signal_group(p.pid, rustix::process::Signal::KILL);
        }
    }
}

async fn launch(spec: &LaunchSpec) -> Result<KernelProcess, ApiError> {
    KernelProcess::start(spec).await.map_err(|e| {
        ApiError::runtime(
            format!("cannot start the {} kernel: {e}", spec.language.name()),
            e,
        )
    })
}
