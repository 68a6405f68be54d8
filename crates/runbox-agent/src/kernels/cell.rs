//! Running one cell: send the request, turn the kernel's events and output into execd events
//! in order, and handle the three ways a cell can end badly (timeout, interrupt-resistant
//! code, the kernel dying).
//!
//! Ordering: a driver flushes its streams before it writes an event, and before handling an
//! event the agent takes whatever is already in the pipes, so all output written before an
//! event (by the kernel or its subprocesses) is sent before it.

use std::time::Duration;

use runbox_proto::execd::{Event, EventKind};
use rustix::process::Signal;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::output::CappedLines;
use super::process::{
    describe, CellBuffers, Incoming, KernelEvent, KernelProcess, MAX_EVENT_BYTES,
};
use super::{CellOutcome, Language};
use crate::procs::{self, Exit};
use crate::stream::{now_ms, Emitter};

/// After a timeout's SIGINT, how long the cell has to stop before the kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;

enum Phase {
    Running,
    /// Timed out and interrupted; killed at the instant unless it finishes first.
    Interrupted(Instant),
    Killed,
}

/// The cell's output streams and the emitter, bundled so draining is one call.
struct Sink<'a> {
    emit: &'a Emitter,
    stdout: CappedLines,
    stderr: CappedLines,
    buf: &'a mut [u8],
}

impl Sink<'_> {
    /// Sends everything already written to the pipes.
    async fn drain(&mut self, p: &mut KernelProcess) {
        while let Some(n) = p.stdout.read_now(self.buf) {
            self.stdout.push(&self.buf[..n], self.emit).await;
        }
        while let Some(n) = p.stderr.read_now(self.buf) {
            self.stderr.push(&self.buf[..n], self.emit).await;
        }
    }

    /// Drains, and sends partial last lines too: output written before an event precedes it.
    async fn finish(&mut self, p: &mut KernelProcess) {
        self.drain(p).await;
        self.stdout.finish(self.emit).await;
        self.stderr.finish(self.emit).await;
    }
}

pub(super) async fn run(
    p: &mut KernelProcess,
    language: Language,
    request: &[u8],
    emit: &Emitter,
    timeout: Option<Duration>,
    cap: usize,
) -> CellOutcome {
    let mut buffers = std::mem::take(&mut p.buffers);
    if buffers.drain.len() != READ_CHUNK {
        buffers = CellBuffers::new(READ_CHUNK);
    }
    let outcome = run_with(p, &mut buffers, language, request, emit, timeout, cap).await;
    p.buffers = buffers;
    outcome
}

async fn run_with(
    p: &mut KernelProcess,
    buffers: &mut CellBuffers,
    language: Language,
    request: &[u8],
    emit: &Emitter,
    timeout: Option<Duration>,
    cap: usize,
) -> CellOutcome {
    let started = Instant::now();
    let CellBuffers {
        drain,
        stdout: out_buf,
        stderr: err_buf,
    } = buffers;
    let mut sink = Sink {
        emit,
        stdout: CappedLines::new(EventKind::Stdout, cap),
        stderr: CappedLines::new(EventKind::Stderr, cap),
        buf: drain,
    };
    let deadline = timeout.map(|t| started + t);
    let mut phase = Phase::Running;
    let mut failed = false;
    let mut count: Option<u64> = None;
    // The kernel gets the cell first (usually all of it, at once), then the client its
    // number: the two proceed in parallel.
    let mut unsent: &[u8] = request;
    match p.requests.try_write(unsent) {
        Ok(n) if n > 0 => unsent = &unsent[n..],
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        // The kernel is gone; its exit arrives next.
        _ => unsent = &[],
    }
    if language == Language::Python {
        // The driver numbers the cells of its process as we do; sending the number from
        // here saves the kernel a write and the agent a wake-up per cell.
        p.cells += 1;
        count = Some(p.cells);
        let mut e = Event::new(EventKind::ExecutionCount, now_ms());
        e.execution_count = count;
        emit.send(e).await;
    }

    let exit = loop {
        let wake = match phase {
            Phase::Running => deadline,
            Phase::Interrupted(kill_at) => Some(kill_at),
            Phase::Killed => None,
        };
        tokio::select! {
            // Written in pieces inside the loop so a big cell cannot wedge us while the kernel
            // is busy writing output.
            written = p.requests.write(unsent), if !unsent.is_empty() => {
                match written {
                    Ok(n) if n > 0 => unsent = &unsent[n..],
                    // The kernel is gone; its exit arrives next.
                    _ => unsent = &[],
                }
            }
            incoming = p.events.next() => {
                sink.drain(p).await;
                match incoming {
                    Incoming::Event(KernelEvent::Done { status }) => {
                        sink.finish(p).await;
                        let timed_out = !matches!(phase, Phase::Running);
                        if timed_out {
                            timeout_error(emit, timeout, false).await;
                            failed = true;
                        } else if let Some(code) = status.filter(|&s| s != 0 && language == Language::Bash) {
                            emit.error("CommandExecError", code.to_string(), Vec::new()).await;
                            failed = true;
                        }
                        return CellOutcome { failed, kernel_died: false };
                    }
                    Incoming::Event(KernelEvent::Count { n }) => {
                        count = Some(n);
                        let mut e = Event::new(EventKind::ExecutionCount, now_ms());
                        e.execution_count = Some(n);
                        emit.send(e).await;
                    }
                    Incoming::Event(KernelEvent::Result { data }) => {
                        sink.finish(p).await;
                        let mut e = Event::new(EventKind::Result, now_ms());
                        e.execution_count = count;
                        e.results = Some(data);
                        emit.send(e).await;
                    }
                    Incoming::Event(KernelEvent::Error { ename, evalue, traceback }) => {
                        // After a timeout the interrupt's own error is replaced by ours.
                        if matches!(phase, Phase::Running) {
                            sink.finish(p).await;
                            emit.error(&ename, evalue, traceback).await;
                        }
                        failed = true;
                    }
                    Incoming::Event(KernelEvent::Ready {}) => {}
                    Incoming::Garbled(len) => {
                        let note = if len > MAX_EVENT_BYTES {
                            format!("a result of {len} bytes was dropped (the limit is {MAX_EVENT_BYTES} bytes)")
                        } else {
                            format!("the kernel sent an unreadable event of {len} bytes; it was dropped")
                        };
                        emit.text(EventKind::Status, note).await;
                    }
                    Incoming::Closed => break p.wait_exit().await,
                }
            }
            n = p.stdout.read(out_buf), if p.stdout.is_open() => {
                if let Some(n) = n {
                    sink.stdout.push(&out_buf[..n], emit).await;
                }
            }
            n = p.stderr.read(err_buf), if p.stderr.is_open() => {
                if let Some(n) = n {
                    sink.stderr.push(&err_buf[..n], emit).await;
                }
            }
            status = &mut p.exit => break status.unwrap_or(Exit::Signal(libc::SIGKILL)),
            _ = sleep_until(wake) => {
                match phase {
                    Phase::Running => {
                        procs::signal_group(p.pid, Signal::INT);
                        phase = Phase::Interrupted(Instant::now() + INTERRUPT_GRACE);
                    }
                    Phase::Interrupted(_) | Phase::Killed => {
                        procs::signal_group(p.pid, Signal::KILL);
                        phase = Phase::Killed;
                    }
                }
            }
        }
    };

    // The kernel is gone. Whatever it (or a child) wrote before is still sent; then anything
    // left in its process group goes with it.
    sink.finish(p).await;
    procs::signal_group(p.pid, Signal::KILL);
    if matches!(phase, Phase::Running) {
        let evalue = format!("kernel {}; its state is lost", describe(exit));
        emit.error("KernelDied", evalue, Vec::new()).await;
    } else {
        timeout_error(emit, timeout, true).await;
    }
    CellOutcome {
        failed: true,
        kernel_died: true,
    }
}

async fn timeout_error(emit: &Emitter, timeout: Option<Duration>, killed: bool) {
    let ms = timeout.map_or(0, |t| t.as_millis());
    let evalue = if killed {
        format!("the cell ran longer than {ms} ms and did not stop when interrupted; the kernel was killed and its state is lost")
    } else {
        format!("the cell ran longer than {ms} ms and was interrupted")
    };
    emit.error("TimeoutError", evalue, Vec::new()).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
