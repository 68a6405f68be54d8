//! The security half of the conformance suite: the escape table against every backend.
//!
//! For each backend (native, docker, gvisor) a server with that backend as its default starts
//! in-process, creates one sandbox with small limits, copies `runbox-probe` into its workspace
//! and runs every case of `table::CASES` through the agent (the proxy's `/command`), comparing
//! the probe's report with that backend's table. Then (`steps`): real signals to PID 1 (the
//! agent must keep answering), a fork bomb and a memory bomb (contained by the sandbox's
//! limits: the sandbox recovers, the host is untouched), and a daemon that ignores SIGTERM,
//! which must not outlive the sandbox's deletion (checked from the host). A step that ends the
//! sandbox is reported and the next step runs in a fresh one. Finally the host: the bait was
//! not reached, the probed host files are unchanged, nothing of any sandbox remains, and
//! `scripts/leftovers.sh` reports nothing this test left.
//!
//! Every run prints its whole table (`ESCAPE <backend> <case> <verdict> ...`, see them with
//! `-- --nocapture`) and fails with every mismatch at once. A forbidden attempt that succeeds
//! is a FINDING whatever the table says. Backends run one at a time (leftovers.sh looks at the
//! whole host); each takes well under a minute.

mod checks;
mod host;
mod server;
mod steps;
#[path = "../support/mod.rs"]
mod support;
mod table;

use std::time::{Duration, Instant};

use runbox_runtime::Backend;
use serde_json::Value;

use server::{Execution, Sandbox};
use support::{built_binary, require_root};
use table::{Case, Expect};

/// Limits of the sandbox under test: small, so the bombs hit them within seconds.
const MEMORY: &str = "256Mi";
const PIDS: u64 = 64;
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// leftovers.sh looks at the whole host: one backend at a time.
static ONE_BACKEND_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn escape_table_native() {
    escape_table(Backend::Native).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_table_docker() {
    escape_table(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_table_gvisor() {
    escape_table(Backend::Gvisor).await;
}

/// The verdicts of one backend's run, printed as a table at the end.
#[derive(Debug)]
pub struct Report {
    backend: Backend,
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    pub fn record(&mut self, case: &str, expected: &str, observed: &str, problem: Option<String>) {
        let verdict = match &problem {
            None => "PASS",
            Some(p) if p.starts_with("FINDING") => "FINDING",
            Some(_) => "MISMATCH",
        };
        let line = format!(
            "ESCAPE {} {case:<44} {verdict:<8} expected {expected:<34} observed {observed}",
            self.backend
        );
        eprintln!("{line}");
        self.lines.push(line);
        if let Some(p) = problem {
            self.problems.push(format!("{case}: {p}"));
        }
    }

    /// A line of the table that is not a verdict.
    pub fn note(&mut self, text: &str) {
        let line = format!("ESCAPE {} NOTE {text}", self.backend);
        eprintln!("{line}");
        self.lines.push(line);
    }

    fn finish(self, started: Instant) {
        eprintln!(
            "ESCAPE {}: {} rows, {} problems, {:.1} s\n{}",
            self.backend,
            self.lines.len(),
            self.problems.len(),
            started.elapsed().as_secs_f64(),
            self.lines.join("\n")
        );
        assert!(
            self.problems.is_empty(),
            "the {} backend does not match its escape table:\n  - {}",
            self.backend,
            self.problems.join("\n  - ")
        );
    }
}

/// "ok" or the errno name, as the tables write outcomes.
fn summary(line: &Value) -> String {
    match line["outcome"].as_str() {
        Some("ok") => "ok".into(),
        _ => line["errno_name"].as_str().unwrap_or("?").into(),
    }
}

/// (observed, problem) for one probe run against its row.
fn judge(case: &Case, expect: Expect, why: &str, exec: &Execution) -> (String, Option<String>) {
    let Some(line) = exec.probe() else {
        return (
            "no probe line".into(),
            Some(format!("the probe printed no report: {}", exec.describe())),
        );
    };
    let observed = format!(
        "{} ({})",
        summary(&line),
        line["detail"].as_str().unwrap_or("")
    );
    if case.forbidden && line["outcome"] == "ok" {
        return (
            observed,
            Some(format!(
                "FINDING: forbidden attempt succeeded inside the sandbox: {line}"
            )),
        );
    }
    let problem = match expect {
        Expect::Denied(errno) if summary(&line) == errno => None,
        Expect::Denied(errno) => Some(format!("expected {errno} ({why}), got {line}")),
        Expect::Allowed if line["outcome"] == "ok" => None,
        Expect::Allowed => Some(format!("expected success ({why}), got {line}")),
        Expect::Data(check) if line["outcome"] == "ok" => {
            check(&line["data"]).err().map(|e| format!("{e} ({why})"))
        }
        Expect::Data(_) => Some(format!("expected data ({why}), got {line}")),
    };
    (observed, problem)
}

fn expected_text(expect: Expect) -> String {
    match expect {
        Expect::Denied(errno) => errno.into(),
        Expect::Allowed => "ok".into(),
        Expect::Data(_) => "ok + data check".into(),
    }
}

async fn escape_table(backend: Backend) {
    let test = format!("escape_table_{backend}");
    require_root!(format!(
        "{test}: sandboxes need root for cgroups, uid maps, the engine and runsc"
    ));
    let _turn = ONE_BACKEND_AT_A_TIME.lock().await;
    let started = Instant::now();
    let leftovers_before = host::leftovers();
    let Some(server) = server::start(backend, &test).await else {
        return;
    };
    let bait = host::Bait::set_up();
    let sandbox = Sandbox::create(&server, backend, MEMORY, PIDS).await;
    let probe_binary = built_binary("runbox-probe");
    let probe = sandbox.install_probe(&probe_binary);
    let mut report = Report {
        backend,
        lines: Vec::new(),
        problems: Vec::new(),
    };
    report.note(&format!(
        "sandbox {} ready after {:.1} s; isolation {}",
        sandbox.id,
        started.elapsed().as_secs_f64(),
        sandbox.isolation
    ));

    for case in table::CASES {
        let (expect, why) = table::expectation(backend, case.name);
        for (label, args) in bait.expand(case.args) {
            let command = format!("{probe} {}", args.join(" "));
            let exec = sandbox.run(&server, &command, PROBE_TIMEOUT).await;
            let (observed, problem) = judge(case, expect, why, &exec);
            let name = format!("{}{label}", case.name);
            report.record(&name, &expected_text(expect), &observed, problem);
        }
    }
    let landed = sandbox.workspace.join("rbp-probe");
    report.record(
        "host: workspace write is in the host workspace",
        "file present",
        if landed.is_file() {
            "file present"
        } else {
            "missing"
        },
        (!landed.is_file()).then(|| {
            format!(
                "{} is missing: the host-side file checks look at the wrong place",
                landed.display()
            )
        }),
    );

    let mut lab = steps::Lab {
        server: &server,
        backend,
        sandbox,
        probe,
        probe_binary,
        memory: MEMORY,
        pids: PIDS,
        ended: Vec::new(),
    };
    lab.signals(&mut report).await;
    lab.fork_bomb(&mut report).await;
    lab.memory_bomb(&mut report).await;
    let disturbed = bait.disturbed();
    report.record(
        "host: bait listener, host files, host process",
        "untouched",
        if disturbed.is_empty() {
            "untouched"
        } else {
            "disturbed"
        },
        (!disturbed.is_empty())
            .then(|| format!("FINDING: the host was reached: {}", disturbed.join("; "))),
    );
    let marker = format!("rbp-daemon-{}-{}", std::process::id(), backend);
    lab.daemon_then_delete(&marker, &mut report).await;
    drop(lab);
    drop(bait);

    server.manager.shutdown().await;
    drop(server);
    let after = host::leftovers();
    let (mine, others) = host::new_leftovers(&leftovers_before, &after);
    let observed = if after.0 {
        "clean".to_owned()
    } else {
        format!(
            "{} new items of this test; {others:?} of another live test; the rest was there before",
            mine.len()
        )
    };
    report.record(
        "host: scripts/leftovers.sh after shutdown",
        "nothing new of this test",
        &observed,
        (!mine.is_empty()).then(|| {
            format!(
                "leftovers.sh reports what was not there before the test: {mine:?}\nbefore: {}\nafter: {}",
                leftovers_before.1, after.1
            )
        }),
    );
    report.finish(started);
}
