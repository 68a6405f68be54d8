//! /command: one shell command per request, foreground (streamed) or background (logs polled),
//! each in its own process group so a timeout or an interrupt kills everything it started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use runbox_proto::execd::{
    CommandStatusResponse, EventKind, RunCommandRequest, TAIL_CURSOR_HEADER,
};
use rustix::process::Signal;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, JsonBody};
use crate::procs::{self, Exit, Spawned};
use crate::stream::{self, rfc3339, split_lines, Emitter};
use crate::AppState;

/// Lines kept per background command for /logs.
const LOG_LINES_MAX: usize = 100_000;
/// After the command's main process exits, how long to wait for its pipes to close (a
/// child it left running may hold them open).
const DRAIN_GRACE: Duration = Duration::from_millis(250);
/// Bytes read from a command's pipe at a time.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug)]
struct Record {
    content: String,
    pgid: i32,
    started_at: SystemTime,
    finished_at: Option<SystemTime>,
    exit_code: Option<i32>,
    error: Option<String>,
    /// Output lines (stdout and stderr interleaved as they arrived), for /logs.
    lines: Vec<String>,
}

/// All commands started by this agent, by id.
#[derive(Debug, Clone, Default)]
pub struct Commands {
    records: Arc<Mutex<HashMap<String, Record>>>,
}

impl Commands {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Record) -> R) -> Option<R> {
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(id).map(f)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/command", post(run).delete(interrupt))
        .route("/command/status/{id}", get(status))
        .route("/command/{id}/logs", get(logs))
}

pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The shell every command and session uses (looked up once).
pub fn shell() -> &'static str {
    static SHELL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    SHELL.get_or_init(|| {
        if std::path::Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        }
    })
}

/// Checks a requested uid/gid: the agent runs as the sandbox user and cannot switch.
pub fn check_identity(uid: Option<u32>, gid: Option<u32>) -> Result<(), ApiError> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let me = rustix::process::getuid().as_raw();
    let my_gid = rustix::process::getgid().as_raw();
    if gid.is_some() && uid.is_none() {
        return Err(ApiError::bad_request("`gid` requires `uid`"));
    }
    if uid.is_some_and(|u| u != me) || gid.is_some_and(|g| g != my_gid) {
        return Err(ApiError::bad_request(format!(
            "commands run as the sandbox user (uid {me}, gid {my_gid}); the agent cannot switch users"
        )));
    }
    Ok(())
}

/// Resolves a working directory (default: the workspace) and checks that it exists.
pub fn resolve_cwd(state: &AppState, cwd: Option<&str>) -> Result<std::path::PathBuf, ApiError> {
    let dir = match cwd {
        Some(c) if !c.is_empty() => std::path::PathBuf::from(c),
        _ => state.config.workspace.clone(),
    };
    if !dir.is_dir() {
        return Err(ApiError::bad_request(format!(
            "working directory {} does not exist",
            dir.display()
        )));
    }
    Ok(dir)
}

async fn run(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RunCommandRequest>,
) -> Result<Response, ApiError> {
    // Either a shell command line or (as SDK 1.1.1 sends for a list) an argv run directly.
    let (mut cmd, content) = match (&req.argv, req.command.trim().is_empty()) {
        (Some(argv), true) if !argv.is_empty() && !argv[0].is_empty() => {
            let mut c = procs::piped(&argv[0]);
            c.args(&argv[1..]);
            (c, argv.join(" "))
        }
        (None, false) => {
            let mut c = procs::piped(shell());
            c.arg("-c").arg(&req.command);
            (c, req.command.clone())
        }
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "give either `command` or `argv`, not both",
            ))
        }
        _ => return Err(ApiError::bad_request("`command` is empty")),
    };
    check_identity(req.uid, req.gid)?;
    let cwd = resolve_cwd(&state, req.cwd.as_deref())?;
    cmd.current_dir(&cwd).env_clear();
    cmd.envs(
        state
            .config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    cmd.envs(crate::envs_file::load(&state.config.envs_file));
    if let Some(envs) = &req.envs {
        cmd.envs(envs);
    }
    let spawned = state
        .procs
        .spawn(&mut cmd)
        .map_err(|e| ApiError::runtime("cannot start the command", e))?;
    let id = new_id("cmd");
    state
        .commands
        .records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id.clone(),
            Record {
                content,
                pgid: spawned.pid,
                started_at: SystemTime::now(),
                finished_at: None,
                exit_code: None,
                error: None,
                lines: Vec::new(),
            },
        );
    let (emit, response) = stream::channel();
    emit.text(EventKind::Init, id.clone()).await;
    let timeout = req.timeout.filter(|t| *t > 0).map(Duration::from_millis);
    let cap = state.config.output_cap;
    if req.background {
        emit.kind(EventKind::ExecutionComplete).await;
        drop(emit);
        tokio::spawn(supervise(
            state.commands.clone(),
            id,
            spawned,
            None,
            timeout,
            cap,
        ));
    } else {
        tokio::spawn(supervise(
            state.commands.clone(),
            id,
            spawned,
            Some(emit),
            timeout,
            cap,
        ));
    }
    Ok(response)
}

/// Output of one stream of one execution, capped.
struct Capped {
    pending: Vec<u8>,
    kept: usize,
    truncated: bool,
}

impl Capped {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            kept: 0,
            truncated: false,
        }
    }

    /// Complete lines of `chunk` that fit under `cap`; returns whether truncation just began.
    fn lines(&mut self, chunk: &[u8], cap: usize) -> (Vec<String>, bool) {
        if self.truncated {
            return (Vec::new(), false);
        }
        let room = cap.saturating_sub(self.kept);
        let take = chunk.len().min(room);
        self.kept += take;
        let mut lines = split_lines(&mut self.pending, &chunk[..take]);
        let started = take < chunk.len();
        if started {
            self.truncated = true;
            if !self.pending.is_empty() {
                lines
                    .push(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned());
            }
        }
        (lines, started)
    }

    fn rest(&mut self) -> Option<String> {
        (!self.pending.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

/// Streams a process's output as events (when `emit` is given) and into the command's log,
/// enforces the timeout, and records the outcome.
async fn supervise(
    commands: Commands,
    id: String,
    mut p: Spawned,
    emit: Option<Emitter>,
    timeout: Option<Duration>,
    cap: usize,
) {
    let started = Instant::now();
    let mut out = p.stdout.take();
    let mut err = p.stderr.take();
    let (mut out_cap, mut err_cap) = (Capped::new(), Capped::new());
    // Read into spare capacity: a command printing one line touches one page, not 32 KiB of
    // zeroed buffers.
    let (mut out_buf, mut err_buf) = (
        Vec::with_capacity(READ_CHUNK),
        Vec::with_capacity(READ_CHUNK),
    );
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut exit: Option<Exit> = None;
    let mut timed_out = false;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if exit.is_some() && out.is_none() && err.is_none() {
            break;
        }
        let sleep_until = drain_until.or(if exit.is_none() { deadline } else { None });
        // Reads first: after the exit, output still in the pipes must win over the grace timer.
        tokio::select! {
            biased;
            n = read_opt(&mut out, &mut out_buf) => {
                match n {
                    Some(n) if n > 0 => {
                        emit_lines(&commands, &id, &emit, EventKind::Stdout, &mut out_cap, &out_buf[..n], cap).await;
                        // The grace is for pipes held open by leftovers, not for a slow client.
                        if exit.is_some() {
                            drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                        }
                    }
                    _ => { flush(&commands, &id, &emit, EventKind::Stdout, &mut out_cap).await; out = None; }
                }
            }
            n = read_opt(&mut err, &mut err_buf) => {
                match n {
                    Some(n) if n > 0 => {
                        emit_lines(&commands, &id, &emit, EventKind::Stderr, &mut err_cap, &err_buf[..n], cap).await;
                        if exit.is_some() {
                            drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                        }
                    }
                    _ => { flush(&commands, &id, &emit, EventKind::Stderr, &mut err_cap).await; err = None; }
                }
            }
            status = &mut p.exit, if exit.is_none() => {
                exit = Some(status.unwrap_or(Exit::Signal(libc::SIGKILL)));
                drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_opt(sleep_until) => {
                if exit.is_none() {
                    timed_out = true;
                    procs::signal_group(p.pid, Signal::KILL);
                    // The exit arrives through the reaper next.
                } else {
                    break;
                }
            }
        }
    }
    let exit = exit.unwrap_or(Exit::Signal(libc::SIGKILL));
    let code = exit.code();
    let elapsed = started.elapsed().as_millis() as u64;
    let error = if timed_out {
        Some(format!(
            "timed out after {} ms; the command's process group was killed",
            timeout.map_or(0, |t| t.as_millis())
        ))
    } else {
        (code != 0).then(|| format!("exit code {code}"))
    };
    commands.with(&id, |r| {
        r.finished_at = Some(SystemTime::now());
        r.exit_code = Some(code);
        r.error = error.clone();
    });
    if let Some(emit) = emit {
        if timed_out {
            emit.text(EventKind::Status, error.clone().unwrap_or_default())
                .await;
        }
        // The execd contract: a failed command ends with its error event (the exit code in
        // `evalue`), a successful one with `execution_complete`; never both.
        if code != 0 {
            emit.error("CommandExecError", code.to_string(), Vec::new())
                .await;
        } else {
            let mut done =
                runbox_proto::execd::Event::new(EventKind::ExecutionComplete, stream::now_ms());
            done.execution_time = Some(elapsed);
            emit.send(done).await;
        }
    }
}

/// Reads into `buf`, which is emptied first (the previous chunk was handled).
async fn read_opt<R: AsyncReadExt + Unpin>(r: &mut Option<R>, buf: &mut Vec<u8>) -> Option<usize> {
    match r {
        Some(r) => {
            buf.clear();
            r.read_buf(buf).await.ok()
        }
        None => std::future::pending().await,
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn emit_lines(
    commands: &Commands,
    id: &str,
    emit: &Option<Emitter>,
    kind: EventKind,
    capped: &mut Capped,
    chunk: &[u8],
    cap: usize,
) {
    let (lines, truncated_now) = capped.lines(chunk, cap);
    for line in lines {
        if let Some(e) = emit {
            e.text(kind, line.clone()).await;
        }
        log_line(commands, id, line);
    }
    if truncated_now {
        let note = format!(
            "{} truncated after {cap} bytes; the rest was discarded",
            if kind == EventKind::Stdout {
                "stdout"
            } else {
                "stderr"
            }
        );
        if let Some(e) = emit {
            e.text(EventKind::Status, note.clone()).await;
        }
        log_line(commands, id, format!("[runbox] {note}"));
    }
}

async fn flush(
    commands: &Commands,
    id: &str,
    emit: &Option<Emitter>,
    kind: EventKind,
    capped: &mut Capped,
) {
    if let Some(line) = capped.rest() {
        if let Some(e) = emit {
            e.text(kind, line.clone()).await;
        }
        log_line(commands, id, line);
    }
}

fn log_line(commands: &Commands, id: &str, line: String) {
    commands.with(id, |r| {
        if r.lines.len() < LOG_LINES_MAX {
            r.lines.push(line);
        }
    });
}

#[derive(Debug, Deserialize)]
struct IdQuery {
    id: Option<String>,
}

async fn interrupt(
    State(state): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Response, ApiError> {
    let id =
        q.id.filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("query parameter `id` is required"))?;
    let pgid = state
        .commands
        .with(&id, |r| (r.finished_at.is_none()).then_some(r.pgid))
        .ok_or_else(|| ApiError::not_found(format!("no command {id}")))?;
    if let Some(pgid) = pgid {
        procs::signal_group(pgid, Signal::KILL);
        state
            .commands
            .with(&id, |r| r.error = Some("interrupted".into()));
    }
    Ok(().into_response())
}

async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CommandStatusResponse>, ApiError> {
    state
        .commands
        .with(&id, |r| CommandStatusResponse {
            id: id.clone(),
            content: r.content.clone(),
            running: r.finished_at.is_none(),
            exit_code: r.exit_code,
            error: r.error.clone(),
            started_at: rfc3339(r.started_at),
            finished_at: r.finished_at.map(rfc3339),
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no command {id}")))
}

#[derive(Debug, Deserialize)]
struct CursorQuery {
    cursor: Option<u64>,
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Response, ApiError> {
    let (text, tail) = state
        .commands
        .with(&id, |r| {
            let start = q.cursor.map_or(0, |c| (c as usize + 1).min(r.lines.len()));
            let mut text = r.lines[start..].join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            (text, r.lines.len().saturating_sub(1))
        })
        .ok_or_else(|| ApiError::not_found(format!("no command {id}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&tail.to_string()) {
        headers.insert(TAIL_CURSOR_HEADER, v);
    }
    Ok((headers, text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capping_keeps_whole_lines_and_marks_once() {
        let mut c = Capped::new();
        let (lines, t) = c.lines(b"abc\ndef\n", 6);
        assert_eq!(lines, vec!["abc", "de"]);
        assert!(t);
        let (lines, t) = c.lines(b"more\n", 6);
        assert!(lines.is_empty() && !t);
    }
}
