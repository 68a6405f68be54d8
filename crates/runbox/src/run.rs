//! `runbox run [OPTIONS] -- CMD [ARGS...]`: one command in a fresh sandbox.

use clap::Args;
use runbox_jail::{OutputSink, Policy, Stdin};
use serde::Serialize;
use std::io::{IsTerminal, Write};

use crate::exit;
use crate::sandbox_args::SandboxArgs;

pub const ABOUT: &str = "Run one command inside a fresh sandbox and wait for it";

/// The policy of a one-shot run: nothing can pause it, so on cgroup v1 it gets no freezer
/// group.
pub fn one_shot(mut policy: Policy) -> Policy {
    policy.pausable = false;
    policy
}

#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Print one JSON object with the outcome and the enforcement report at the end; the
    /// command's output is captured into it instead of streamed.
    #[arg(long)]
    json: bool,
    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Streams output live to our own stdout/stderr.
struct Live;

impl OutputSink for Live {
    fn stdout(&mut self, data: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(data);
        let _ = out.flush();
    }
    fn stderr(&mut self, data: &[u8]) {
        let _ = std::io::stderr().lock().write_all(data);
    }
}

/// Captures output for the JSON report.
#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl OutputSink for Captured {
    fn stdout(&mut self, data: &[u8]) {
        self.stdout.extend_from_slice(data);
    }
    fn stderr(&mut self, data: &[u8]) {
        self.stderr.extend_from_slice(data);
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    outcome: &'a runbox_jail::Outcome,
    stdout: String,
    stderr: String,
}

#[derive(Serialize)]
struct JsonError {
    status: &'static str,
    error: String,
    hint: Option<&'static str>,
    exit_code: i32,
}

pub fn main(args: RunArgs) -> i32 {
    if args.command.is_empty() {
        eprintln!("runbox run: no command given\n  usage: runbox run [OPTIONS] -- CMD [ARGS...]");
        return exit::USAGE;
    }
    let json = args.json;
    let policy = one_shot(args.sandbox.policy(args.command));
    // A terminal is never handed to the sandbox: with it the command could inject input.
    let stdin = if std::io::stdin().is_terminal() {
        Stdin::Null
    } else {
        Stdin::Inherit
    };
    let mut live = Live;
    let mut captured = Captured::default();
    let sink: &mut dyn OutputSink = if json { &mut captured } else { &mut live };
    match runbox_jail::run(&policy, stdin, sink) {
        Ok(outcome) => {
            if json {
                let report = JsonReport {
                    outcome: &outcome,
                    stdout: String::from_utf8_lossy(&captured.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&captured.stderr).into_owned(),
                };
                out!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else if !outcome.limits_hit.is_empty() {
                let hits: Vec<String> = outcome
                    .limits_hit
                    .iter()
                    .map(|h| format!("{h:?}").to_lowercase())
                    .collect();
                eprintln!(
                    "runbox: sandbox {:?}: limit hit: {}",
                    outcome.status,
                    hits.join(", ")
                );
            }
            outcome.shell_exit_code()
        }
        Err(e) => {
            let code = exit::for_kind(e.kind());
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            if json {
                let err = JsonError {
                    status: "error",
                    error: message,
                    hint: e.hint(),
                    exit_code: code,
                };
                out!("{}", serde_json::to_string(&err).unwrap_or_default());
            } else {
                eprintln!("runbox run: {message}");
                if let Some(hint) = e.hint() {
                    eprintln!("  hint: {hint}");
                }
            }
            code
        }
    }
}
