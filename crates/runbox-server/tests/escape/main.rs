//! The security half of the conformance suite: the escape table against every backend.
//!
//! For each backend (native, docker, gvisor) a server with that backend as its default starts
//! in-process, creates one sandbox with small limits, copies `runbox-probe` into its workspace
//! and runs every case of `table::CASES` through the agent (the proxy's `/command`), comparing
//! the probe's report with that backend's table. Then, in the same sandbox: real signals to
//! PID 1 (the agent must keep answering), a fork bomb and a memory bomb (contained by the
//! sandbox's limits: the agent keeps answering, the host is untouched), and a daemon that
//! ignores SIGTERM, which must not outlive the sandbox's deletion (checked from the host).
//! Finally the host: the bait was not reached, the probed host files are unchanged, nothing
//! of the sandbox remains, and `scripts/leftovers.sh` reports nothing new.
//!
//! Every run prints its whole table (`ESCAPE <backend> <case>: ...`, see them with
//! `-- --nocapture`) and fails with every mismatch at once. A forbidden attempt that succeeds
//! is reported as a FINDING whatever the table says.

mod checks;
mod host;
mod server;
mod table;

use std::time::{Duration, Instant};

use runbox_runtime::Backend;
use serde_json::Value;

use server::{built_binary, Execution, Sandbox, Server};
use table::{Case, Expect};

/// Limits of the sandbox under test: small, so the bombs hit them within seconds.
const MEMORY: &str = "256Mi";
const PIDS: u64 = 64;
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
const FORK_BOMB_TIMEOUT: Duration = Duration::from_secs(4);
/// Far beyond what touching MEMORY takes: a timeout here means the limit did not stop it.
const MEMORY_BOMB_TIMEOUT: Duration = Duration::from_secs(30);
/// After a bomb, how long the agent may take to answer and run a command again.
const RECOVERY: Duration = Duration::from_secs(15);

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
struct Report {
    backend: Backend,
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn record(&mut self, case: &str, expected: &str, observed: &str, problem: Option<String>) {
        let verdict = match &problem {
            None => "PASS",
            Some(p) if p.starts_with("FINDING") => "FINDING",
            Some(_) => "MISMATCH",
        };
        let line = format!(
            "ESCAPE {} {case:<52} {verdict:<8} expected {expected:<40} observed {observed}",
            self.backend
        );
        eprintln!("{line}");
        self.lines.push(line);
        if let Some(p) = problem {
            self.problems.push(format!("{case}: {p}"));
        }
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

fn judge(case: &Case, expect: Expect, why: &str, exec: &Execution) -> (String, Option<String>) {
    let Some(line) = exec.probe() else {
        return (
            format!("no probe line ({})", exec.describe()),
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
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED (needs root): {test}: sandboxes need root for cgroups, uid maps, the engine and runsc");
        return;
    }
    let _turn = ONE_BACKEND_AT_A_TIME.lock().await;
    let started = Instant::now();
    let leftovers_before = host::leftovers();
    let Some(server) = Server::start(backend, &test).await else {
        return;
    };
    let bait = host::Bait::set_up();
    let sandbox = server.create(backend, MEMORY, PIDS).await;
    eprintln!(
        "ESCAPE {backend}: sandbox {} ready after {:.1} s; isolation {}",
        sandbox.id,
        started.elapsed().as_secs_f64(),
        sandbox.isolation
    );
    let probe = sandbox.install_probe(&built_binary("runbox-probe"));
    let mut report = Report {
        backend,
        lines: Vec::new(),
        problems: Vec::new(),
    };

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
    let workspace_file = sandbox.workspace.join("rbp-probe");
    let seen = workspace_file.is_file();
    report.record(
        "host: the workspace write landed in the host workspace",
        "file present",
        if seen { "file present" } else { "missing" },
        (!seen).then(|| {
            format!(
                "{} is missing: the host-side file checks look at the wrong place",
                workspace_file.display()
            )
        }),
    );

    signals_to_pid_1(&server, &sandbox, &mut report).await;
    fork_bomb(&server, &sandbox, &probe, &mut report).await;
    let marker = format!("rbp-daemon-{:x}", std::process::id());
    daemon(&server, &sandbox, &probe, &marker, &mut report).await;
    memory_bomb(&server, &sandbox, &probe, &mut report).await;

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

    delete_and_check_host(&server, &sandbox, &marker, &mut report).await;
    drop(bait);
    server.manager.shutdown().await;
    drop(server);
    let after = host::leftovers();
    let new = host::new_leftovers(&leftovers_before, &after);
    report.record(
        "host: scripts/leftovers.sh after shutdown",
        "nothing new",
        if after.0 { "clean" } else { "reports leftovers" },
        (!new.is_empty()).then(|| format!(
            "leftovers.sh reports what was not there before the test: {new:?}\nbefore: {}\nafter: {}",
            leftovers_before.1, after.1
        )),
    );
    if !after.0 && new.is_empty() {
        eprintln!("ESCAPE {backend}: leftovers.sh fails, but only with what was there before this test (another test on this host): {}", after.1);
    }
    report.finish(started);
}

/// Real signals to the agent (PID 1) and to every process of the uid: the agent has no
/// handlers, so as PID 1 of its namespace it receives none of them.
async fn signals_to_pid_1(server: &Server, sandbox: &Sandbox, report: &mut Report) {
    let command = "kill -KILL 1; kill -TERM 1; kill -INT 1; kill -HUP 1; kill -SEGV 1; kill -9 -1; echo signals-sent";
    let exec = sandbox.run(server, command, PROBE_TIMEOUT).await;
    let sent = exec.stdout.iter().any(|l| l == "signals-sent");
    let alive = sandbox.answers(server, RECOVERY).await;
    let observed = format!(
        "signals sent: {sent}; agent: {}",
        alive
            .as_ref()
            .map_or_else(|e| format!("gone ({e})"), |_| "answers".into())
    );
    let problem = match (&alive, sent) {
        (Err(e), _) => Some(format!(
            "FINDING: code killed the agent: {e}; {}",
            exec.describe()
        )),
        (Ok(()), false) => Some(format!(
            "the signalling command did not run: {}",
            exec.describe()
        )),
        (Ok(()), true) => None,
    };
    report.record(
        "kill -9 1, -TERM/-INT/-HUP/-SEGV 1, kill -9 -1",
        "agent answers",
        &observed,
        problem,
    );
}

/// Forks until the pids limit refuses; the command's timeout then kills its process group.
async fn fork_bomb(server: &Server, sandbox: &Sandbox, probe: &str, report: &mut Report) {
    let exec = sandbox
        .run(server, &format!("{probe} fork-bomb"), FORK_BOMB_TIMEOUT)
        .await;
    let refused = exec
        .stderr
        .iter()
        .rev()
        .find(|l| l.contains("forks refused"))
        .cloned();
    let alive = sandbox.answers(server, RECOVERY).await;
    let host_forks = std::process::Command::new("/bin/true")
        .status()
        .is_ok_and(|s| s.success());
    let observed = format!(
        "{}; timed out {}; agent {}; host forks {host_forks}",
        refused.as_deref().unwrap_or("no fork refused"),
        exec.timed_out,
        if alive.is_ok() { "answers" } else { "gone" }
    );
    let mut problems = Vec::new();
    if refused.is_none() {
        problems.push(format!(
            "the pids limit never refused a fork: {}",
            exec.describe()
        ));
    }
    if !exec.timed_out {
        problems.push(format!(
            "the bomb ended before its timeout: {}",
            exec.describe()
        ));
    }
    if let Err(e) = alive {
        problems.push(format!("the agent did not recover: {e}"));
    }
    if !host_forks {
        problems.push("FINDING: the host cannot start a process".into());
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    report.record(
        "fork-bomb",
        "forks refused, agent answers",
        &observed,
        problem,
    );
}

/// A daemon that ignores SIGTERM outlives its command (positive control from inside);
/// whether it outlives the sandbox is checked from the host after the delete.
async fn daemon(
    server: &Server,
    sandbox: &Sandbox,
    probe: &str,
    marker: &str,
    report: &mut Report,
) {
    let exec = sandbox
        .run(
            server,
            &format!("{probe} daemonize-ignore-term {marker}"),
            PROBE_TIMEOUT,
        )
        .await;
    let started = exec.probe().is_some_and(|l| l["outcome"] == "ok");
    let listed = sandbox
        .run(
            server,
            &format!("{probe} list-procs {marker} RBP_UNSET"),
            PROBE_TIMEOUT,
        )
        .await;
    let running = listed
        .probe()
        .and_then(|l| {
            l["data"]["marker_found_in"]
                .as_array()
                .map(|a| !a.is_empty())
        })
        .unwrap_or(false);
    let observed = format!("daemon started {started}; still running after its command {running}");
    let problem = (!started || !running).then(|| {
        format!(
            "the daemon did not start or did not survive its command, so its deletion proves nothing: {} / {}",
            exec.describe(),
            listed.describe()
        )
    });
    report.record(
        "daemonize-ignore-term (before delete)",
        "running in the sandbox",
        &observed,
        problem,
    );
}

/// Touches memory until the limit stops it: the bomb dies, the agent does not.
async fn memory_bomb(server: &Server, sandbox: &Sandbox, probe: &str, report: &mut Report) {
    let exec = sandbox
        .run(server, &format!("{probe} memory-bomb"), MEMORY_BOMB_TIMEOUT)
        .await;
    let touched = exec
        .stderr
        .iter()
        .rev()
        .find(|l| l.contains("MiB touched"))
        .cloned();
    let alive = sandbox.answers(server, RECOVERY).await;
    let health = server
        .call_within(Duration::from_secs(5), "GET", "/health", &[], None)
        .await
        .map(|r| r.status);
    let observed = format!(
        "exit code {:?}; {}; timed out {}; agent {}",
        exec.exit_code,
        touched.as_deref().unwrap_or("nothing touched"),
        exec.timed_out,
        alive
            .as_ref()
            .map_or_else(|e| format!("gone ({e})"), |_| "answers".into())
    );
    let mut problems = Vec::new();
    if exec.timed_out || exec.exit_code != Some(137) {
        problems.push(format!(
            "expected the bomb SIGKILLed by the memory limit (exit code 137), got {}",
            exec.describe()
        ));
    }
    if let Err(e) = alive {
        problems.push(format!(
            "the sandbox did not survive its own memory bomb: {e}"
        ));
    }
    if health != Ok(200) {
        problems.push(format!(
            "FINDING: the server stopped answering /health: {health:?}"
        ));
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    report.record(
        "memory-bomb",
        "OOM-killed (137), agent answers",
        &observed,
        problem,
    );
}

/// Deletes the sandbox; nothing of it (the daemon above included) may remain on the host.
async fn delete_and_check_host(
    server: &Server,
    sandbox: &Sandbox,
    marker: &str,
    report: &mut Report,
) {
    let backend = report.backend;
    let host_uid = sandbox.isolation["enforcement"]["identity"]["host_uid"].as_u64();
    let before = host::remains_of(backend, &sandbox.id, marker, host_uid);
    let deleted = sandbox.delete(server).await;
    let mut remains = Vec::new();
    // Engines remove asynchronously after DELETE answers: give them a moment.
    for _ in 0..40 {
        remains = host::remains_of(backend, &sandbox.id, marker, host_uid);
        if remains.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let observed = format!(
        "before delete {} host traces; after {}: {:?}",
        before.len(),
        if deleted.is_ok() {
            "delete"
        } else {
            "a failed delete"
        },
        remains
    );
    let mut problems = Vec::new();
    if before.is_empty() {
        problems.push("the host saw no trace of the sandbox before the delete, so the check after it proves nothing".into());
    }
    if let Err(e) = deleted {
        problems.push(e);
    }
    if !remains.is_empty() {
        problems.push(format!(
            "FINDING: the sandbox outlived its deletion: {remains:?}"
        ));
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    report.record(
        "daemonize-ignore-term + delete: host-side",
        "nothing remains",
        &observed,
        problem,
    );
}
