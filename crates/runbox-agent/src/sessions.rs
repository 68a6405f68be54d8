//! /session: persistent bash shells. A run writes the command to the shell's stdin followed
//! by a line that prints a per-session random marker and the exit status on stdout and the
//! marker on stderr; the run is over when both markers are back. Working directory and
//! variables persist between runs because it is the same shell.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use runbox_proto::execd::{
    CreateSessionRequest, CreateSessionResponse, Event, EventKind, RunInSessionRequest,
};
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use crate::commands::{new_id, resolve_cwd, shell};
use crate::error::{optional_json, ApiError, JsonBody};
use crate::procs;
use crate::stream::{self, Emitter};
use crate::AppState;

#[derive(Debug)]
struct Shell {
    pgid: i32,
    marker: String,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

/// One session's shell; `None` once it has ended.
type Slot = Arc<tokio::sync::Mutex<Option<Shell>>>;

#[derive(Debug, Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Slot>>>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/session", post(create))
        .route("/session/{id}/run", post(run))
        .route("/session/{id}", delete(remove))
}

async fn create(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<CreateSessionResponse>, ApiError> {
    let req: CreateSessionRequest = optional_json(&body)?;
    let cwd = resolve_cwd(&state, req.cwd.as_deref())?;
    let mut cmd = procs::piped(shell());
    cmd.args(["--noprofile", "--norc"])
        .current_dir(&cwd)
        .env_clear()
        .stdin(Stdio::piped());
    cmd.envs(
        state
            .config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut p = state
        .procs
        .spawn(&mut cmd)
        .map_err(|e| ApiError::runtime("cannot start bash", e))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (p.stdin.take(), p.stdout.take(), p.stderr.take())
    else {
        procs::signal_group(p.pid, Signal::KILL);
        return Err(ApiError::Runtime {
            message: "bash started without pipes".into(),
            source: None,
        });
    };
    let id = new_id("session");
    let shell = Shell {
        pgid: p.pid,
        marker: new_id("__RUNBOX_DONE"),
        stdin,
        stdout: BufReader::new(stdout).lines(),
        stderr: BufReader::new(stderr).lines(),
    };
    state
        .sessions
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(Some(shell))));
    Ok(Json(CreateSessionResponse { session_id: id }))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let session = state
        .sessions
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let session = session.ok_or_else(|| ApiError::not_found(format!("no session {id}")))?;
    if let Some(sh) = session.lock().await.take() {
        procs::signal_group(sh.pgid, Signal::KILL);
    }
    Ok(().into_response())
}

async fn run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RunInSessionRequest>,
) -> Result<Response, ApiError> {
    let session = state
        .sessions
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let session = session.ok_or_else(|| ApiError::not_found(format!("no session {id}")))?;
    if let Some(cwd) = req.cwd.as_deref() {
        resolve_cwd(&state, Some(cwd))?;
    }
    let (emit, response) = stream::channel();
    let cap = state.config.output_cap;
    tokio::spawn(async move {
        emit.text(EventKind::Init, id.clone()).await;
        let started = Instant::now();
        let mut guard = session.lock().await;
        let outcome = match guard.as_mut() {
            Some(sh) => run_in(sh, &req, &emit, cap).await,
            None => Err("the session's shell has ended; create a new session".to_owned()),
        };
        match outcome {
            Ok(0) => {}
            Ok(code) => {
                emit.error("CommandExecError", code.to_string(), Vec::new())
                    .await
            }
            Err(why) => {
                if let Some(sh) = guard.take() {
                    procs::signal_group(sh.pgid, Signal::KILL);
                }
                emit.error("SessionError", why, Vec::new()).await;
            }
        }
        let mut done = Event::new(EventKind::ExecutionComplete, stream::now_ms());
        done.execution_time = Some(started.elapsed().as_millis() as u64);
        emit.send(done).await;
    });
    Ok(response)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs one command in the shell; Ok(exit status) or Err(why the shell is unusable now).
async fn run_in(
    sh: &mut Shell,
    req: &RunInSessionRequest,
    emit: &Emitter,
    cap: usize,
) -> Result<i32, String> {
    let body = match req.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(cwd) => format!("pushd {} >/dev/null && {{\n{}\n}}", quote(cwd), req.command),
        None => format!("{{\n{}\n}}", req.command),
    };
    let pop = if req.cwd.is_some() {
        "; popd >/dev/null 2>&1"
    } else {
        ""
    };
    // stdin is closed for the command itself so it cannot eat the marker line.
    let script = format!(
        "{body} </dev/null\n__rb=$?{pop}; printf '\\n%s %d\\n' {m} \"$__rb\"; printf '\\n%s\\n' {m} >&2\n",
        m = sh.marker
    );
    sh.stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| format!("the shell is gone: {e}"))?;
    let deadline = req
        .timeout
        .filter(|t| *t > 0)
        .map(|t| tokio::time::Instant::now() + Duration::from_millis(t));
    let (mut out_done, mut err_done) = (false, false);
    let mut status = None;
    let (mut out_held, mut err_held): (Option<String>, Option<String>) = (None, None);
    let (mut out_bytes, mut err_bytes) = (0usize, 0usize);
    while !(out_done && err_done) {
        tokio::select! {
            line = sh.stdout.next_line(), if !out_done => {
                let line = line.map_err(|e| e.to_string())?.ok_or("the shell exited")?;
                if let Some(rest) = line.strip_prefix(sh.marker.as_str()) {
                    status = rest.trim().parse::<i32>().ok();
                    out_done = true;
                    // The blank line before the marker is ours unless output ended mid-line.
                    if let Some(h) = out_held.take().filter(|h| !h.is_empty()) {
                        send_capped(emit, EventKind::Stdout, h, &mut out_bytes, cap).await;
                    }
                } else if let Some(h) = out_held.replace(line) {
                    send_capped(emit, EventKind::Stdout, h, &mut out_bytes, cap).await;
                }
            }
            line = sh.stderr.next_line(), if !err_done => {
                let line = line.map_err(|e| e.to_string())?.ok_or("the shell exited")?;
                if line == sh.marker {
                    err_done = true;
                    if let Some(h) = err_held.take().filter(|h| !h.is_empty()) {
                        send_capped(emit, EventKind::Stderr, h, &mut err_bytes, cap).await;
                    }
                } else if let Some(h) = err_held.replace(line) {
                    send_capped(emit, EventKind::Stderr, h, &mut err_bytes, cap).await;
                }
            }
            _ = sleep_until(deadline) => {
                return Err(format!("timed out after {} ms; the session's shell was killed", req.timeout.unwrap_or(0)));
            }
        }
    }
    Ok(status.unwrap_or(1))
}

async fn send_capped(emit: &Emitter, kind: EventKind, line: String, sent: &mut usize, cap: usize) {
    if *sent >= cap {
        return;
    }
    *sent += line.len() + 1;
    if *sent >= cap {
        emit.text(
            EventKind::Status,
            format!("output truncated after {cap} bytes; the rest was discarded"),
        )
        .await;
        return;
    }
    emit.text(kind, line).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
