//! `runbox exec --cell CODE [--cell CODE ...]` and `runbox repl`: one sandbox with the agent,
//! cells run in order in one stateful context, output printed as it arrives.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use runbox_jail::OutputSink;
use runbox_proto::execd::{Event, EventKind};
use serde_json::json;

use crate::sandbox_args::SandboxArgs;
use runbox_runtime::{agent_argv, AgentClient, AgentSandbox};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    Python,
    Bash,
    Javascript,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Bash => "bash",
            Lang::Javascript => "javascript",
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Language of the context the cells run in.
    #[arg(long, value_enum, default_value = "python")]
    lang: Lang,
    /// Code of one cell (repeatable; run in order, state carries over).
    #[arg(long = "cell", value_name = "CODE", required = true)]
    cells: Vec<String>,
    /// Per-cell time limit (500ms, 10s); the cell is interrupted, then its kernel restarted.
    #[arg(long, value_parser = runbox_jail::parse_duration)]
    cell_timeout: Option<Duration>,
    /// Only allow python code to import these top-level modules (comma-separated).
    #[arg(long, value_delimiter = ',')]
    allow_import: Vec<String>,
    /// Forbid python code to import these modules (comma-separated).
    #[arg(long, value_delimiter = ',')]
    deny_import: Vec<String>,
    /// Print the execd events, one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ReplArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[arg(long, value_enum, default_value = "python")]
    lang: Lang,
}

/// The agent's own stdout/stderr (its logs): kept short, shown if it fails.
#[derive(Default)]
struct AgentLog(Vec<u8>);

impl OutputSink for AgentLog {
    fn stdout(&mut self, data: &[u8]) {
        self.keep(data);
    }
    fn stderr(&mut self, data: &[u8]) {
        self.keep(data);
    }
}

impl AgentLog {
    fn keep(&mut self, data: &[u8]) {
        if self.0.len() < 64 * 1024 {
            self.0.extend_from_slice(data);
        }
    }
}

fn import_flags(allow: &[String], deny: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    if !allow.is_empty() {
        v.extend(["--python-allow".to_owned(), allow.join(",")]);
    }
    if !deny.is_empty() {
        v.extend(["--python-deny".to_owned(), deny.join(",")]);
    }
    v
}

/// Starts the sandbox, runs `work` against its agent on a small runtime, then tears it down.
fn with_agent<F, Fut>(sandbox: SandboxArgs, extra: Vec<String>, work: F) -> anyhow::Result<bool>
where
    F: FnOnce(AgentClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let mut policy = sandbox.policy(Vec::new());
    policy.argv = agent_argv(&policy, &extra);
    let agent = runbox_runtime::installed_agent()?;
    let mut started = AgentSandbox::start(policy, &agent)?;
    let client = started.client();
    let sandbox = started.sandbox.take().context("sandbox already taken")?;
    // The sandbox's supervision (timeout, limits, output of the agent) runs on its own thread.
    let supervisor = std::thread::spawn(move || {
        let mut log = AgentLog::default();
        let outcome = sandbox.wait(&mut log);
        (outcome, log)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        client.wait_ready(Duration::from_secs(10)).await?;
        work(client).await
    });
    drop(started);
    let (outcome, log) = supervisor
        .join()
        .map_err(|_| anyhow::anyhow!("supervisor thread panicked"))?;
    match (&result, outcome) {
        (Err(_), Ok(o)) if !o.limits_hit.is_empty() => {
            let hits: Vec<String> = o
                .limits_hit
                .iter()
                .map(|h| format!("{h:?}").to_lowercase())
                .collect();
            bail!("the sandbox was stopped: limit hit: {}", hits.join(", "));
        }
        (Err(_), _) if !log.0.is_empty() => {
            eprintln!("runbox: agent log:\n{}", String::from_utf8_lossy(&log.0));
        }
        _ => {}
    }
    result
}

async fn create_context(client: &AgentClient, lang: Lang) -> anyhow::Result<String> {
    let resp = client
        .request(
            "POST",
            "/code/context",
            Some(json!({ "language": lang.name() })),
        )
        .await?;
    let status = resp.status;
    let text = resp.text().await;
    if status != 200 {
        bail!(
            "creating a {} context failed ({status}): {text}",
            lang.name()
        );
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

/// Runs one cell; returns whether it succeeded.
async fn run_cell(
    client: &AgentClient,
    ctx: &str,
    lang: Lang,
    code: &str,
    timeout: Option<Duration>,
    json_out: bool,
) -> anyhow::Result<bool> {
    let mut body = json!({ "context": { "id": ctx, "language": lang.name() }, "code": code });
    if let Some(t) = timeout {
        body["timeout"] = json!(t.as_millis() as u64);
    }
    let resp = client.request("POST", "/code", Some(body)).await?;
    if resp.status != 200 {
        let status = resp.status;
        bail!(
            "the agent refused the cell ({status}): {}",
            resp.text().await
        );
    }
    let mut ok = true;
    resp.events(|e| {
        if e.kind == EventKind::Error {
            ok = false;
        }
        if json_out {
            out!("{}", serde_json::to_string(&e).unwrap_or_default());
        } else {
            print_event(&e);
        }
    })
    .await?;
    Ok(ok)
}

fn print_event(e: &Event) {
    let text = e.text.as_deref().unwrap_or_default();
    match e.kind {
        EventKind::Stdout => out!("{text}"),
        EventKind::Stderr => eprintln!("{text}"),
        EventKind::Status => eprintln!("runbox: {text}"),
        EventKind::Result => {
            let Some(results) = &e.results else { return };
            if let Some(t) = results.get("text").and_then(|t| t.as_str()) {
                out!("{t}");
            }
            for (mime, data) in results {
                if mime != "text" {
                    let size = data.as_str().map_or(0, str::len);
                    out!("[{mime}: {size} bytes]");
                }
            }
        }
        EventKind::Error => {
            if let Some(err) = &e.error {
                for line in &err.traceback {
                    eprintln!("{line}");
                }
                if err.traceback.is_empty()
                    || !err.traceback.last().is_some_and(|l| l.contains(&err.ename))
                {
                    eprintln!("{}: {}", err.ename, err.evalue);
                }
            }
        }
        _ => {}
    }
    let _ = std::io::stdout().flush();
}

pub fn main(args: ExecArgs) -> anyhow::Result<i32> {
    let (lang, cells, timeout, json_out) = (args.lang, args.cells, args.cell_timeout, args.json);
    let extra = import_flags(&args.allow_import, &args.deny_import);
    let ok = with_agent(args.sandbox, extra, |client| async move {
        let ctx = create_context(&client, lang).await?;
        let mut all_ok = true;
        for code in &cells {
            all_ok &= run_cell(&client, &ctx, lang, code, timeout, json_out).await?;
        }
        Ok(all_ok)
    })?;
    Ok(if ok { 0 } else { 1 })
}

pub fn repl(args: ReplArgs) -> anyhow::Result<i32> {
    let lang = args.lang;
    with_agent(args.sandbox, Vec::new(), |client| async move {
        let ctx = create_context(&client, lang).await?;
        let interactive = std::io::stdin().is_terminal();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        while let Some(cell) = read_cell(&mut lines, interactive) {
            if cell.trim().is_empty() {
                continue;
            }
            run_cell(&client, &ctx, lang, &cell, None, false).await?;
        }
        Ok(true)
    })?;
    Ok(0)
}

/// Reads one cell: a line, or while a block is open (a line ends with `:`, `{`, `\` or the
/// next lines are indented) everything up to a blank line.
fn read_cell(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    interactive: bool,
) -> Option<String> {
    let prompt = |p: &str| {
        if interactive {
            eprint!("{p}");
            let _ = std::io::stderr().flush();
        }
    };
    prompt(">>> ");
    let first = lines.next()?.ok()?;
    let opens = |l: &str| {
        let t = l.trim_end();
        t.ends_with(':')
            || t.ends_with('{')
            || t.ends_with('\\')
            || t.ends_with('(')
            || t.ends_with('[')
    };
    if !opens(&first) {
        return Some(first);
    }
    let mut cell = first;
    loop {
        prompt("... ");
        match lines.next() {
            Some(Ok(l)) if !l.trim().is_empty() => {
                cell.push('\n');
                cell.push_str(&l);
            }
            _ => return Some(cell),
        }
    }
}
