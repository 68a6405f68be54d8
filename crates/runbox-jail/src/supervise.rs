//! Watching a running sandbox: stream its output (capped), enforce the wall-clock timeout,
//! finish the job of the OOM killer and the pids limit (every process dies when one fires),
//! then collect the outcome and remove the cgroup.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::error::JailError;
use crate::outcome::{LimitHit, Outcome, Status};
use crate::plan::Step;
use crate::report::{Message, MESSAGE_LEN};
use crate::spawn::Sandbox;

/// Receives the command's output as it arrives (already capped).
pub trait OutputSink {
    fn stdout(&mut self, data: &[u8]);
    fn stderr(&mut self, data: &[u8]);
}

/// Drops the output (for callers that only want the outcome, or an agent's logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl OutputSink for Discard {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

/// How often cgroup counters are checked for limits that have no notification (v1 pids).
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_millis(25);
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Timeout,
    Memory,
    Pids,
}

#[derive(Debug, Default)]
struct Stream {
    open: bool,
    kept: u64,
    truncated: bool,
}

impl Stream {
    /// The part of `data` that still fits under `cap`.
    fn admit<'a>(&mut self, data: &'a [u8], cap: u64) -> &'a [u8] {
        let room = cap.saturating_sub(self.kept) as usize;
        let n = data.len().min(room);
        if n < data.len() {
            self.truncated = true;
        }
        self.kept += n as u64;
        &data[..n]
    }
}

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

impl Sandbox {
    /// Runs the sandbox to completion, streaming output into `sink`.
    pub fn wait(mut self, sink: &mut dyn OutputSink) -> Result<Outcome, JailError> {
        let deadline = self.limits.timeout.map(|t| self.started + t);
        let cap = self.limits.output_bytes;
        let mut out = Stream {
            open: true,
            ..Default::default()
        };
        let mut err = Stream {
            open: true,
            ..Default::default()
        };
        let mut report_open = true;
        let mut messages: Vec<Message> = Vec::new();
        let mut exited = false;
        let mut reason: Option<KillReason> = None;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut last_check = Instant::now();
        let watch_counters = self.cgroup.is_some()
            && self.limits.kill_all_on_limit
            && (self.limits.pids.is_some() || self.limits.memory_bytes.is_some());

        while !exited || out.open || err.open {
            let now = Instant::now();
            if !exited && reason.is_none() && deadline.is_some_and(|d| now >= d) {
                reason = Some(KillReason::Timeout);
                self.kill();
            }
            let mut wait = deadline
                .filter(|_| reason.is_none() && !exited)
                .map(|d| d.saturating_duration_since(now));
            if watch_counters && !exited {
                wait = Some(wait.map_or(LIMIT_CHECK_INTERVAL, |w| w.min(LIMIT_CHECK_INTERVAL)));
            }
            let timeout = wait.map(|w| Timespec {
                tv_sec: w.as_secs() as i64,
                tv_nsec: i64::from(w.subsec_nanos()),
            });

            let mut fds = Vec::with_capacity(5);
            let mut kinds = Vec::with_capacity(5);
            for (kind, fd, on) in [
                (0, self.stdout.as_fd(), out.open),
                (1, self.stderr.as_fd(), err.open),
                (2, self.report.as_fd(), report_open),
                (3, self.control.pidfd(), !exited),
            ] {
                if on {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                    kinds.push(kind);
                }
            }
            if let (Some(oom), false) = (&self.oom_fd, exited) {
                fds.push(PollFd::from_borrowed_fd(oom.as_fd(), PollFlags::IN));
                kinds.push(4);
            }
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(JailError::Supervise(e.into())),
            }
            let ready: Vec<(i32, bool)> = fds
                .iter()
                .zip(&kinds)
                .map(|(f, k)| (*k, !f.revents().is_empty()))
                .collect();
            drop(fds);
            let mut oom_event = false;
            for (kind, is_ready) in ready {
                if !is_ready {
                    continue;
                }
                match kind {
                    0 | 1 => {
                        let (fd, stream) = if kind == 0 {
                            (&self.stdout, &mut out)
                        } else {
                            (&self.stderr, &mut err)
                        };
                        match read_some(fd, &mut buf) {
                            Ok(0) | Err(_) => stream.open = false,
                            Ok(n) => {
                                let kept = stream.admit(&buf[..n], cap);
                                if !kept.is_empty() {
                                    if kind == 0 {
                                        sink.stdout(kept)
                                    } else {
                                        sink.stderr(kept)
                                    }
                                }
                            }
                        }
                    }
                    2 => {
                        let mut raw = [0u8; MESSAGE_LEN];
                        match read_some(&self.report, &mut raw) {
                            Ok(MESSAGE_LEN) => messages.extend(Message::decode(&raw)),
                            _ => report_open = false,
                        }
                    }
                    3 => exited = true,
                    _ => {
                        oom_event = true;
                        let mut drain = [0u8; 256];
                        let _ = rustix::io::read(
                            self.oom_fd
                                .as_ref()
                                .map(|f| f.as_fd())
                                .ok_or(Errno::BADF)
                                .map_err(|e| JailError::Supervise(e.into()))?,
                            &mut drain,
                        );
                    }
                }
            }
            // Counters are read on the limit tick or after an OOM notification, not on every
            // chunk of output.
            let tick = last_check.elapsed() >= LIMIT_CHECK_INTERVAL || oom_event;
            if !exited && reason.is_none() && tick && self.limits.kill_all_on_limit {
                last_check = Instant::now();
                if let Some(cg) = &self.cgroup {
                    let usage = cg.usage();
                    if usage.oom_kills > 0 {
                        reason = Some(KillReason::Memory);
                    } else if self.limits.pids.is_some() && usage.pids_limit_hits > 0 {
                        reason = Some(KillReason::Pids);
                    }
                    if reason.is_some() {
                        self.kill();
                    }
                }
            }
        }
        let wall = self.started.elapsed();
        let init_status =
            rustix::process::waitpid(Some(self.init), rustix::process::WaitOptions::empty())
                .ok()
                .flatten()
                .map(|(_, st)| st.as_raw());
        self.reaped = true;
        // Remaining report messages (the pipe is closed by now).
        while report_open {
            let mut raw = [0u8; MESSAGE_LEN];
            match read_some(&self.report, &mut raw) {
                Ok(MESSAGE_LEN) => messages.extend(Message::decode(&raw)),
                _ => report_open = false,
            }
        }
        let mut raw_status = [0u8; 4];
        let command_status = match read_some(&self.status, &mut raw_status) {
            Ok(4) => Some(i32::from_ne_bytes(raw_status)),
            // As PID 1 the command's status is the init's own.
            _ if self.as_pid1 => init_status,
            _ => None,
        };
        let usage = self
            .cgroup
            .as_ref()
            .map(|cg| cg.usage())
            .unwrap_or_default();
        if let Some(cg) = self.cgroup.as_mut() {
            cg.remove();
        }

        for m in &messages {
            match *m {
                Message::SetupFailed { step, errno } => {
                    let step = self.steps.get(step as usize);
                    return Err(JailError::Setup {
                        step: step.map_or("fork command", Step::name),
                        path: step
                            .and_then(Step::path)
                            .map(|p| p.to_string_lossy().into_owned()),
                        source: std::io::Error::from_raw_os_error(errno),
                    });
                }
                Message::ExecFailed { errno } => {
                    return Err(if errno == libc::ENOENT {
                        JailError::CommandNotFound {
                            command: self.argv0.clone(),
                            searched: if self.argv0.contains('/') {
                                "the given path".into()
                            } else {
                                format!("PATH={}", crate::prepare::DEFAULT_PATH)
                            },
                        }
                    } else {
                        JailError::NotExecutable {
                            command: self.argv0.clone(),
                            source: std::io::Error::from_raw_os_error(errno),
                        }
                    });
                }
                Message::Landlock { status } => self.enforcement.landlock.status = status,
                Message::Ready => {}
            }
        }

        let mut limits_hit = Vec::new();
        let (mut exit_code, mut signal) = (None, None);
        match command_status {
            Some(st) if libc::WIFEXITED(st) => exit_code = Some(libc::WEXITSTATUS(st)),
            Some(st) if libc::WIFSIGNALED(st) => signal = Some(libc::WTERMSIG(st)),
            _ => signal = Some(libc::SIGKILL),
        }
        if reason.is_some() {
            (exit_code, signal) = (None, Some(libc::SIGKILL));
        }
        let status = if reason == Some(KillReason::Timeout) {
            limits_hit.push(LimitHit::Timeout);
            Status::Timeout
        } else if reason == Some(KillReason::Memory) || usage.oom_kills > 0 {
            limits_hit.push(LimitHit::Memory);
            Status::Oom
        } else if exit_code == Some(0) {
            Status::Ok
        } else if exit_code.is_some() {
            Status::ExitNonzero
        } else {
            Status::Signaled
        };
        if reason == Some(KillReason::Pids)
            || (self.limits.pids.is_some() && usage.pids_limit_hits > 0)
        {
            limits_hit.push(LimitHit::Pids);
        }
        if signal == Some(libc::SIGXFSZ) {
            limits_hit.push(LimitHit::FileSize);
        }
        if out.truncated || err.truncated {
            limits_hit.push(LimitHit::Output);
        }
        Ok(Outcome {
            sandbox_id: self.id.clone(),
            status,
            exit_code,
            signal,
            limits_hit,
            wall_ms: wall.as_secs_f64() * 1000.0,
            cpu_user_ms: usage.cpu_user_ns as f64 / 1e6,
            cpu_sys_ms: usage.cpu_system_ns as f64 / 1e6,
            peak_memory_bytes: usage.peak_memory_bytes,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            enforcement: self.enforcement.clone(),
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            crate::spawn::kill_and_reap(self.init);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_marked() {
        let mut s = Stream {
            open: true,
            ..Default::default()
        };
        assert_eq!(s.admit(b"hello", 8), b"hello");
        assert_eq!(s.admit(b"world", 8), b"wor");
        assert!(s.truncated);
        assert_eq!(s.admit(b"more", 8), b"");
        assert_eq!(s.kept, 8);
    }
}
