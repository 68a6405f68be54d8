//! /command: one shell command per request, foreground (streamed) or background (logs polled),
//! each in its own process group so a timeout or an interrupt kills everything it started.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
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

/// The shell the shell-free path stands in for: it mirrors bash's rules, no other shell's.
const BASH: &str = "/bin/bash";

/// Bash 5.2's builtins (`compgen -b`; a unit test checks the installed bash has no others).
/// In command position bash runs these itself, whatever PATH holds.
const BASH_BUILTINS: &[&str] = &[
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

/// Bash's reserved words (`compgen -k`): in command position they are syntax (`time ls` is
/// bash's timing keyword, not /usr/bin/time).
const BASH_KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until", "do",
    "done", "in", "function", "time", "{", "}", "!", "[[", "]]", "coproc",
];

/// Builtins whose program in /usr/bin does exactly what the builtin does with plain words, so
/// the shell-free path runs that program (bash would ignore PATH for them, so the path is
/// fixed; if it cannot be started, bash runs the builtin).
/// - echo: both print the words joined by spaces and a newline, and read leading `-n`, `-e`,
///   `-E` (a dash and only those letters) alike; escapes need a backslash, which plain words
///   never hold. Only GNU echo answers a lone `--help`/`--version`, and only it changes its
///   options under POSIXLY_CORRECT: words starting with `--` go to bash, and so does any
///   environment with that variable (see `bash_owns`).
/// - true, false: exit 0 and 1 whatever the arguments, except GNU's lone `--help`/`--version`
///   (excluded the same way).
///
/// The other builtins with a program of the same name stay with bash: printf (`%q`, `%(..)T`,
/// `-v` and the messages differ), test (operator parsing differs at the edges), kill (job
/// specs, the `-l` format), pwd (prints bash's $PWD; GNU pwd its own -P/-L choice). The rest
/// act on the shell itself (cd, export, exec, ...).
const EXTERNAL_TWINS: &[&str] = &["echo", "false", "true"];

/// Variables bash reads, rewrites or drops when it starts (found by running `bash -c env` with
/// each of bash's own variables set; a unit test repeats that for every name this lets
/// through). An environment holding one goes through bash. SHLVL is handled on its own.
fn bash_owns(name: &str) -> bool {
    // BASH, BASH_ENV (a file bash -c sources), BASHOPTS, BASH_FUNC_*%% (imported functions),
    // BASH_COMPAT, BASH_XTRACEFD, BASHPID, ...
    name.starts_with("BASH")
        || matches!(
            name,
            "SHELLOPTS"
                | "POSIXLY_CORRECT"
                | "EXECIGNORE"
                | "ENV"
                | "IFS"
                | "LC_ALL"
                | "PWD"
                | "OLDPWD"
                | "_"
                | "PPID"
                | "UID"
                | "EUID"
                | "GROUPS"
                | "RANDOM"
                | "SRANDOM"
                | "SECONDS"
                | "LINENO"
                | "OPTARG"
                | "OPTERR"
                | "OPTIND"
                | "PS1"
                | "PS2"
                | "PS3"
                | "PS4"
                | "HISTCMD"
                | "EPOCHSECONDS"
                | "EPOCHREALTIME"
                | "COMP_WORDBREAKS"
                | "FUNCNAME"
                | "DIRSTACK"
                | "PIPESTATUS"
        )
}

/// The words of a command line made only of plain words: characters no shell treats
/// specially, separated by spaces, the first neither empty nor an assignment (`X=1 cmd`).
/// Anything else (quotes, `$`, backquotes, globs, `~`, redirections, `;&|()<>{}`, `#`, `\`,
/// tabs, newlines, non-ASCII) is `None`.
fn plain_words(line: &str) -> Option<Vec<&str>> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"_./,:+@%=-".contains(&b);
    if !line.bytes().all(|b| b == b' ' || plain(b)) {
        return None;
    }
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    (!words.first()?.contains('=')).then_some(words)
}

/// SHLVL as `bash -c CMD` hands it to CMD: bash adds one at start-up and takes it back when it
/// replaces itself with the single command. Values bash would rewrite on the way (leading
/// zeros, signs, spaces, non-numbers, 999 and up, where it warns) are `None`.
fn steady_shell_level(value: &OsStr) -> Option<&OsStr> {
    let s = value.to_str()?;
    let canonical = s == "0"
        || (!s.starts_with('0')
            && (1..=3).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit()));
    (canonical && s.parse::<u32>().ok()? <= 998).then_some(value)
}

/// Bash's PATH search for `name`: `dir/name` (no slash added after a trailing one) for each
/// directory in order, the first that exists, is not a directory and is executable by our
/// effective ids. `None` if there is none, or PATH has an element that is empty or relative
/// (bash would search the working directory).
fn find_in_path(path: &OsStr, name: &str) -> Option<OsString> {
    let dirs: Vec<&[u8]> = path.as_bytes().split(|b| *b == b':').collect();
    if !dirs.iter().all(|d| d.starts_with(b"/")) {
        return None;
    }
    dirs.into_iter().find_map(|dir| {
        let mut candidate = dir.to_vec();
        if !candidate.ends_with(b"/") {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(name.as_bytes());
        let candidate = OsString::from_vec(candidate);
        let meta = std::fs::metadata(&candidate).ok()?;
        let executable = rustix::fs::accessat(
            rustix::fs::CWD,
            candidate.as_os_str(),
            rustix::fs::Access::EXEC_OK,
            rustix::fs::AtFlags::EACCESS,
        )
        .is_ok();
        (!meta.is_dir() && executable).then_some(candidate)
    })
}

/// The shell-free path (as GNU make runs simple recipe lines): when `bash -c line` would do
/// nothing but exec one program with the line's words as arguments, that program, set up as
/// `shell` (the `bash -c line` command: same environment, working directory, stdio) plus what
/// bash adds to the environment of what it runs: PWD, SHLVL and `_`. Bash's own start-up
/// (locale files, its variables) is most of a short command's time: `bash -c /usr/bin/true`
/// takes 1.6 ms of CPU where /usr/bin/true alone takes 0.45 ms.
///
/// `None` sends the line to bash: any shell syntax, builtins and keywords in command position,
/// a relative path with a slash, variables bash reacts to, a PATH search bash would do
/// differently, and a name PATH does not have (bash prints its own "command not found").
/// Failures to exec the program found (not executable after all, a bad interpreter, no `#!`
/// line) are left to bash too: the caller falls back to `shell` when the spawn fails.
/// `shell`'s environment must have been cleared before its variables were set (as `run` does):
/// what it would inherit from the agent is not visible here.
fn direct_command(line: &str, shell: &Command) -> Option<Command> {
    let words = plain_words(line)?;
    let (&name, args) = words.split_first()?;
    let env: Vec<(&OsStr, &OsStr)> = shell
        .get_envs()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let identifier = |k: &&OsStr| {
        let b = k.as_bytes();
        !b.is_empty()
            && !b[0].is_ascii_digit()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    if !env
        .iter()
        .all(|(k, _)| identifier(k) && !k.to_str().is_some_and(bash_owns))
    {
        return None;
    }
    let shell_level = match var("SHLVL") {
        Some(v) => steady_shell_level(v)?,
        None => OsStr::new("0"),
    };
    let program: OsString = if BASH_BUILTINS.contains(&name) {
        if !EXTERNAL_TWINS.contains(&name) || args.iter().any(|a| a.starts_with("--")) {
            return None;
        }
        format!("/usr/bin/{name}").into()
    } else if BASH_KEYWORDS.contains(&name) {
        return None;
    } else if name.starts_with('/') {
        name.into()
    } else if name.contains('/') {
        // Relative to the working directory; kept with bash rather than relying on how
        // `Command` resolves a relative program next to `current_dir`.
        return None;
    } else {
        find_in_path(var("PATH")?, name)?
    };
    let cwd = shell.get_current_dir()?;
    // What bash exports as PWD when none was inherited: getcwd() after the chdir.
    let pwd = std::fs::canonicalize(cwd).ok()?;
    let mut cmd = procs::piped(&program);
    cmd.arg0(name)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .env("PWD", pwd)
        .env("SHLVL", shell_level)
        .env("_", &program);
    Some(cmd)
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
    let direct = match (&req.argv, shell()) {
        (None, BASH) => direct_command(&req.command, &cmd),
        _ => None,
    };
    let spawned = match direct {
        Some(mut direct) => state.procs.spawn_or(&mut direct, &mut cmd),
        None => state.procs.spawn(&mut cmd),
    }
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
            // The cursor is the index of the last line there is; with no line yet there is
            // none (a 0 here made the next call skip the first line when it came later).
            (text, r.lines.len().checked_sub(1))
        })
        .ok_or_else(|| ApiError::not_found(format!("no command {id}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(v) = tail.and_then(|t| axum::http::HeaderValue::from_str(&t.to_string()).ok()) {
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

    /// The agent's default environment.
    fn agent_env() -> Vec<(String, String)> {
        crate::Config::default().env
    }

    /// `bash -c line` as `run` builds it.
    fn shell_command(line: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = procs::piped(BASH);
        cmd.arg("-c")
            .arg(line)
            .current_dir("/")
            .env_clear()
            .envs(env.iter().copied());
        cmd
    }

    fn direct(line: &str, env: &[(&str, &str)]) -> Option<Command> {
        direct_command(line, &shell_command(line, env))
    }

    fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn have_bash() -> bool {
        let there = std::path::Path::new(BASH).is_file();
        if !there {
            eprintln!("SKIPPED: {BASH} is missing (the shell-free path is off without it)");
        }
        there
    }

    /// `KEY=value` lines of the environment a command is given.
    fn env_lines(cmd: &Command) -> std::collections::BTreeSet<String> {
        cmd.get_envs()
            .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
            .collect()
    }

    /// What `bash -c env` prints, as a set of lines.
    fn bash_env(env: &[(&str, &str)]) -> std::collections::BTreeSet<String> {
        let out = shell_command("env", env).output().expect("bash -c env");
        assert!(out.stderr.is_empty(), "{env:?}: bash says {:?}", out.stderr);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn plain_words_refuse_shell_syntax() {
        assert_eq!(plain_words("echo hi"), Some(vec!["echo", "hi"]));
        assert_eq!(
            plain_words("  ls  -la /tmp,x:y+z@w%v=u "),
            Some(vec!["ls", "-la", "/tmp,x:y+z@w%v=u"])
        );
        for line in [
            "echo $HOME",
            "echo a | tr a b",
            "cd /tmp && pwd",
            "X=1 env",
            "echo 'a'",
            "echo \"a\"",
            "echo `id`",
            "ls *",
            "ls ?",
            "ls [ab]",
            "ls ~",
            "echo a > f",
            "cat < f",
            "echo a; echo b",
            "sleep 1 &",
            "(echo a)",
            "{ echo a; }",
            "echo {a,b}",
            "echo a # comment",
            "echo a\\ b",
            "echo a\nb",
            "echo\ta",
            "echo \u{e9}",
            "!",
            "",
            "   ",
        ] {
            assert_eq!(plain_words(line), None, "{line:?}");
        }
    }

    #[test]
    fn simple_commands_exec_the_program_bash_would() {
        if !have_bash() {
            return;
        }
        let owned = agent_env();
        let agent = pairs(&owned);
        let echo = direct("echo hi", &agent).expect("echo hi is shell-free");
        assert_eq!(echo.get_program(), "/usr/bin/echo");
        assert_eq!(echo.get_args().collect::<Vec<_>>(), vec![OsStr::new("hi")]);
        let ls = direct("ls -l /", &agent).expect("ls is shell-free");
        let path = agent.iter().find(|(k, _)| *k == "PATH").expect("PATH").1;
        let expected = find_in_path(OsStr::new(path), "ls").expect("ls in PATH");
        assert_eq!(ls.get_program(), expected);
        assert_eq!(ls.get_current_dir(), Some(std::path::Path::new("/")));
        // Exactly the variables bash would hand to the program.
        let mut bash = bash_env(&agent);
        let mut ours = env_lines(&direct("env", &agent).expect("env is shell-free"));
        assert_eq!(ours, bash);
        bash = bash_env(&[("PATH", "/usr/bin:/bin"), ("SHLVL", "7")]);
        ours =
            env_lines(&direct("env", &[("PATH", "/usr/bin:/bin"), ("SHLVL", "7")]).expect("env"));
        assert_eq!(ours, bash);
        assert!(direct("/usr/bin/env -i", &agent).is_some());
        assert!(direct("true", &agent).is_some());
        assert!(direct("false", &agent).is_some());
        assert!(direct("echo -n x", &agent).is_some());
    }

    #[test]
    fn everything_else_goes_to_bash() {
        if !have_bash() {
            return;
        }
        let owned = agent_env();
        let agent = pairs(&owned);
        for line in [
            // Builtins that act on the shell, or differ from their program.
            "cd /tmp",
            "export A",
            "exec ls",
            "exit 3",
            "command ls",
            "builtin echo",
            "source f",
            ". f",
            ":",
            "printf a",
            "test -n a",
            "kill -l",
            "pwd",
            "type ls",
            "hash",
            "wait",
            "ulimit -a",
            "umask",
            // GNU's own options of the programs standing in for builtins.
            "echo --help",
            "true --version",
            // Keywords.
            "time ls",
            "if",
            "coproc ls",
            "function f",
            // Paths bash resolves against the working directory; names PATH lacks.
            "./script",
            "bin/ls",
            "nonexistent-cmd-xyz",
            "..",
        ] {
            assert!(direct(line, &agent).is_none(), "{line:?}");
        }
        let with = |extra: (&'static str, &'static str)| {
            let mut env = agent.clone();
            env.push(extra);
            env
        };
        for extra in [
            ("BASH_ENV", "/tmp/rc"),
            ("BASH_FUNC_ls%%", "() { echo fn; }"),
            ("SHELLOPTS", "xtrace"),
            ("BASHOPTS", "nullglob"),
            ("POSIXLY_CORRECT", "1"),
            ("EXECIGNORE", "*"),
            ("IFS", ":"),
            ("LC_ALL", "xx_YY"),
            ("PWD", "/elsewhere"),
            ("OLDPWD", "/"),
            ("SHLVL", "999"),
            ("SHLVL", "05"),
            ("SHLVL", "x"),
            ("SHLVL", ""),
            ("A-B", "1"),
        ] {
            assert!(direct("ls", &with(extra)).is_none(), "{extra:?}");
        }
        // PATH searches bash would do differently: the working directory, or none at all.
        for path in ["/usr/bin:", ":/usr/bin", "/usr/bin::/bin", "bin:/usr/bin"] {
            assert!(direct("ls", &[("PATH", path)]).is_none(), "{path:?}");
        }
        assert!(direct("ls", &[("HOME", "/")]).is_none());
    }

    #[test]
    fn builtin_and_keyword_lists_cover_the_installed_bash() {
        if !have_bash() {
            return;
        }
        for (flag, list) in [("-b", BASH_BUILTINS), ("-k", BASH_KEYWORDS)] {
            let out = Command::new(BASH)
                .args(["-c", &format!("compgen {flag}")])
                .env_clear()
                .output()
                .expect("compgen");
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                assert!(list.contains(&name), "bash has `{name}` (compgen {flag})");
            }
        }
    }

    /// Regression guard for the environment rules: every variable of bash's own (and those
    /// it reads) that the shell-free path accepts reaches the program unchanged under bash.
    #[test]
    fn bash_hands_on_every_variable_the_direct_path_keeps() {
        if !have_bash() {
            return;
        }
        let out = Command::new(BASH)
            .args(["-c", "compgen -v"])
            .env_clear()
            .output()
            .expect("compgen -v");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        names.extend(
            [
                "BASH_ENV",
                "ENV",
                "POSIXLY_CORRECT",
                "EXECIGNORE",
                "CDPATH",
                "GLOBIGNORE",
                "TIMEFORMAT",
                "HISTFILE",
                "HISTSIZE",
                "INPUTRC",
                "MAIL",
                "MAILPATH",
                "TMOUT",
                "FIGNORE",
                "LC_ALL",
                "LC_CTYPE",
                "LC_MESSAGES",
                "LANG",
                "TEXTDOMAIN",
                "BASH_XTRACEFD",
                "BASH_COMPAT",
                "PROMPT_COMMAND",
                "PS0",
                "PS3",
                "COLUMNS",
                "LINES",
                "TERM",
                "OPTARG",
                "REPLY",
                "FUNCNEST",
                "CHILD_MAX",
                "HOSTNAME",
                "BASH_ARGV0",
                "EPOCHSECONDS",
                "EPOCHREALTIME",
                "SRANDOM",
                "SECONDS",
                "HOME",
                "SHELL",
                "OLDPWD",
                "auto_resume",
                "histchars",
            ]
            .map(str::to_owned),
        );
        let mut checked = 0;
        for name in &names {
            for value in ["xyz", "1", "/"] {
                let env = [("PATH", "/usr/bin:/bin"), (name.as_str(), value)];
                if name == "PATH" {
                    continue;
                }
                if let Some(cmd) = direct("env", &env) {
                    assert_eq!(env_lines(&cmd), bash_env(&env), "{name}={value}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} variables checked");
        for level in ["0", "1", "42", "998"] {
            let env = [("PATH", "/usr/bin:/bin"), ("SHLVL", level)];
            let cmd = direct("env", &env).expect("a plain SHLVL");
            assert_eq!(env_lines(&cmd), bash_env(&env), "SHLVL={level}");
        }
    }
}
