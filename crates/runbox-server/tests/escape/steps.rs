//! The steps after the table, which are more than one probe line: signals to the agent, the
//! bombs, a daemon and the sandbox's deletion, each judged in the sandbox and from the host.
//! A step that ends the sandbox is reported, and the next step gets a fresh sandbox, so one
//! finding does not hide the others.

use std::path::PathBuf;
use std::time::Duration;

use runbox_runtime::Backend;

use crate::host;
use crate::server::Sandbox;
use crate::support::Server;
use crate::Report;

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
const FORK_BOMB_TIMEOUT: Duration = Duration::from_secs(4);
/// Far beyond what touching the memory limit takes: a timeout means the limit did not act.
const MEMORY_BOMB_TIMEOUT: Duration = Duration::from_secs(30);
/// After a bomb or a signal, how long the agent may take to answer and run commands again.
const RECOVERY: Duration = Duration::from_secs(15);
/// kill(-1) first: it must not reach the agent, and the agent must still be there to tell.
const SIGNALS: &[&str] = &["-9 -1", "-SEGV 1", "-HUP 1", "-INT 1", "-TERM 1", "-KILL 1"];

/// One backend's server and the sandbox the steps run in.
pub struct Lab<'a> {
    pub server: &'a Server,
    pub backend: Backend,
    pub sandbox: Sandbox,
    /// Where the probe is inside the sandbox.
    pub probe: String,
    /// The probe binary on the host, for replacement sandboxes.
    pub probe_binary: PathBuf,
    pub memory: &'static str,
    pub pids: u64,
    /// Sandboxes a step ended; the host must hold nothing of them either.
    pub ended: Vec<String>,
}

impl Lab<'_> {
    /// Makes sure the sandbox is running; after a step ended it, starts a fresh one.
    async fn live(&mut self, report: &mut Report) {
        let state = self.sandbox.state(self.server).await;
        if state == "\"Running\"" {
            return;
        }
        let fresh = Sandbox::create(self.server, self.backend, self.memory, self.pids).await;
        self.probe = fresh.install_probe(&self.probe_binary);
        let old = std::mem::replace(&mut self.sandbox, fresh);
        report.note(&format!(
            "sandbox {} ended ({state}); the next steps run in a fresh sandbox {}",
            old.id, self.sandbox.id
        ));
        self.ended.push(old.id);
    }

    /// The agent is PID 1 and installs no handler for these: as the init of its pid
    /// namespace it receives none of them from code in that namespace.
    pub async fn signals(&mut self, report: &mut Report) {
        for signal in SIGNALS {
            self.live(report).await;
            let command = format!("kill {signal}; echo signalled");
            let exec = self.sandbox.run(self.server, &command, PROBE_TIMEOUT).await;
            let alive = self
                .sandbox
                .recovered(self.server, &self.probe, RECOVERY)
                .await;
            let (observed, problem) = match alive {
                Ok(()) => ("agent answers".to_owned(), None),
                Err(e) => {
                    let state = self.sandbox.state(self.server).await;
                    (
                        format!("agent gone; sandbox {state}"),
                        Some(format!(
                            "FINDING: `kill {signal}` from sandbox code ended the agent: {e}; sandbox {state}; {}",
                            exec.describe()
                        )),
                    )
                }
            };
            report.record(
                &format!("kill {signal}"),
                "agent answers",
                &observed,
                problem,
            );
        }
    }

    /// Forks until the pids limit refuses; the command's timeout then kills its group.
    pub async fn fork_bomb(&mut self, report: &mut Report) {
        self.live(report).await;
        let command = format!("{} fork-bomb", self.probe);
        let exec = self
            .sandbox
            .run(self.server, &command, FORK_BOMB_TIMEOUT)
            .await;
        let refused = exec
            .stderr
            .iter()
            .rev()
            .find(|l| l.contains("forks refused"))
            .cloned();
        let alive = self
            .sandbox
            .recovered(self.server, &self.probe, RECOVERY)
            .await;
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
            let state = self.sandbox.state(self.server).await;
            problems.push(format!("the sandbox did not recover: {e}; sandbox {state}"));
        }
        if !host_forks {
            problems.push("FINDING: the host cannot start a process".into());
        }
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        report.record(
            "fork-bomb",
            "forks refused, sandbox recovers",
            &observed,
            problem,
        );
    }

    /// Touches memory until the limit stops it: the bomb dies, the sandbox does not.
    pub async fn memory_bomb(&mut self, report: &mut Report) {
        self.live(report).await;
        let command = format!("{} memory-bomb", self.probe);
        let exec = self
            .sandbox
            .run(self.server, &command, MEMORY_BOMB_TIMEOUT)
            .await;
        let touched = exec
            .stderr
            .iter()
            .rev()
            .find(|l| l.contains("MiB touched"))
            .cloned();
        let alive = self
            .sandbox
            .recovered(self.server, &self.probe, RECOVERY)
            .await;
        let health = self
            .server
            .call_within(Duration::from_secs(5), "GET", "/health", &[], None)
            .await
            .map(|r| r.status);
        let state = self.sandbox.state(self.server).await;
        let observed = format!(
            "exit code {:?}; {}; timed out {}; sandbox {state}",
            exec.exit_code,
            touched.as_deref().unwrap_or("nothing touched"),
            exec.timed_out,
        );
        let mut problems = Vec::new();
        // gVisor (this runsc) has no OOM killer inside the Sentry: the host's memory cgroup
        // kills the whole sandbox. Contained (the host and the server are fine), and the
        // sandbox record says oom; documented in docs/threat-model.md.
        let contained_by_host_oom =
            self.backend == Backend::Gvisor && alive.is_err() && state.contains("oom");
        if contained_by_host_oom {
            // Recorded below with the observed state; not a problem.
        } else if let Err(e) = &alive {
            problems.push(format!(
                "the sandbox did not survive its own memory bomb: {e}; sandbox {state}"
            ));
        } else if exec.timed_out || exec.exit_code != Some(137) {
            problems.push(format!(
                "expected the bomb SIGKILLed by the memory limit (exit code 137), got {}",
                exec.describe()
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
            "OOM-killed (137), sandbox recovers",
            &observed,
            problem,
        );
    }

    /// A daemon that ignores SIGTERM outlives its command (the positive control, seen from
    /// inside); then the sandbox is deleted and the host must hold nothing of it.
    pub async fn daemon_then_delete(&mut self, marker: &str, report: &mut Report) {
        self.live(report).await;
        let command = format!("{} daemonize-ignore-term {marker}", self.probe);
        let exec = self.sandbox.run(self.server, &command, PROBE_TIMEOUT).await;
        let started = exec.probe().is_some_and(|l| l["outcome"] == "ok");
        let command = format!("{} list-procs {marker} RBP_UNSET", self.probe);
        let listed = self.sandbox.run(self.server, &command, PROBE_TIMEOUT).await;
        let running = listed
            .probe()
            .and_then(|l| {
                l["data"]["marker_found_in"]
                    .as_array()
                    .map(|a| !a.is_empty())
            })
            .unwrap_or(false);
        report.record(
            "daemonize-ignore-term (before delete)",
            "running after its command",
            &format!("daemon started {started}; running after its command {running}"),
            (!started || !running).then(|| {
                format!(
                    "the daemon did not start or did not outlive its command, so the delete check proves little: {} / {}",
                    exec.describe(),
                    listed.describe()
                )
            }),
        );

        let host_uid = self.sandbox.isolation["enforcement"]["identity"]["host_uid"].as_u64();
        let id = self.sandbox.id.clone();
        let before = host::remains_of(self.backend, &id, marker, host_uid);
        let deleted = self.sandbox.delete(self.server).await;
        let mut remains = Vec::new();
        // Engines finish removing after DELETE answers: give them a moment.
        for _ in 0..40 {
            remains = host::remains_of(self.backend, &id, marker, host_uid);
            for old in &self.ended {
                remains.extend(host::remains_of(self.backend, old, old, None));
            }
            if remains.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut problems = Vec::new();
        if before.is_empty() {
            problems.push(
                "the host saw no trace of the sandbox before the delete, so the check after it proves nothing"
                    .to_owned(),
            );
        }
        if let Err(e) = &deleted {
            problems.push(e.clone());
        }
        if !remains.is_empty() {
            problems.push(format!(
                "FINDING: the sandbox outlived its deletion: {remains:?}"
            ));
        }
        let observed = format!(
            "{} host traces before the delete ({}), {} after",
            before.len(),
            before.first().map_or("", String::as_str),
            remains.len()
        );
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        report.record(
            "delete: nothing of the sandbox remains on the host",
            "nothing remains",
            &observed,
            problem,
        );
    }
}
