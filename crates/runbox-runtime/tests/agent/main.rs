//! The agent inside a real native sandbox, attacked from the code it runs: the token and the
//! channel must stay out of reach, and the agent must survive what sandbox code throws at it.

use std::path::PathBuf;
use std::time::Duration;

use runbox_jail::Policy;
use runbox_proto::execd::{Event, EventKind};
use runbox_runtime::{agent_argv, AgentClient, AgentSandbox};
use serde_json::{json, Value};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!(
                "SKIPPED (needs root): {} starts native sandboxes",
                module_path!()
            );
            return;
        }
    };
}

/// target/<profile>/runbox-agent, next to this test's deps directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let agent = dir.join("runbox-agent");
    assert!(
        agent.is_file(),
        "{} missing: run `cargo build --workspace` first",
        agent.display()
    );
    agent
}

fn start(pids: u64) -> AgentSandbox {
    let mut policy = Policy::new(Vec::new());
    policy.limits.pids = Some(pids);
    policy.limits.timeout = Some(Duration::from_secs(120));
    policy.argv = agent_argv(&policy, &[]);
    AgentSandbox::start(policy, &agent_binary()).expect("sandbox starts")
}

async fn command(client: &AgentClient, cmd: &str, timeout_ms: Option<u64>) -> Vec<Event> {
    let mut body = json!({ "command": cmd });
    if let Some(t) = timeout_ms {
        body["timeout"] = json!(t);
    }
    let resp = client
        .request("POST", "/command", Some(body))
        .await
        .expect("request");
    assert_eq!(resp.status, 200);
    let mut events = Vec::new();
    resp.events(|e| events.push(e)).await.expect("events");
    events
}

fn stdout(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Stdout)
        .filter_map(|e| e.text.clone())
        .collect()
}

/// The agent answers and still runs commands (with the sandbox's processes in the message
/// when it does not).
async fn assert_still_serving(sb: &AgentSandbox, client: &AgentClient) {
    if let Err(e) = client.wait_ready(Duration::from_secs(2)).await {
        panic!(
            "the agent stopped answering ({e}); sandbox: {}",
            sb.killer.describe()
        );
    }
    assert_eq!(
        stdout(&command(client, "echo alive", None).await),
        vec!["alive"]
    );
}

/// A client of `sb`'s agent, once the agent answers.
async fn ready(sb: &AgentSandbox) -> AgentClient {
    let client = sb.client();
    client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    client
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn token_and_channel_are_out_of_reach_of_sandbox_code() {
    require_root!();
    let sb = start(256);
    let token = sb.token.clone();
    runtime().block_on(async {
        let client = ready(&sb).await;
        // Everything sandbox code can read that could hold the token or the socket.
        let probe = format!(
            "grep -rIl -- {token} /proc/*/environ /proc/*/cmdline /tmp /workspace /etc 2>/dev/null | head; \
             cat /proc/1/environ >/dev/null 2>&1 && echo ENVIRON-READABLE; \
             ls /proc/1/fd >/dev/null 2>&1 && echo FD-READABLE; \
             ls {dir} >/dev/null 2>&1 && echo SOCKET-DIR-VISIBLE; \
             grep -c . /proc/net/unix",
            dir = sb.socket.parent().expect("dir").display()
        );
        let out = stdout(&command(&client, &probe, Some(10_000)).await);
        // Only the count of unix sockets in the sandbox's own network namespace is printed:
        // the agent's listening socket lives in the host's.
        assert_eq!(out.len(), 1, "leak: {out:?}");
        assert!(out[0].parse::<u32>().is_ok(), "{out:?}");
        let wrong = AgentClient::new(sb.socket.clone(), "0".repeat(64));
        let resp = wrong.request("GET", "/metrics", None).await.expect("request");
        assert_eq!(resp.status, 401);
    });
}

#[test]
fn agent_survives_kill_minus_one_and_signals_to_pid_1() {
    require_root!();
    let sb = start(256);
    runtime().block_on(async {
        let client = ready(&sb).await;
        command(
            &client,
            "kill -9 -1; kill -KILL 1; kill -TERM 1; kill -INT 1; kill -HUP 1; kill -SEGV 1",
            Some(5_000),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_still_serving(&sb, &client).await;
    });
}

/// rt_sigqueueinfo lets sandbox code send us SIGTERM with a sender pid of its choosing, 0 (a
/// sender outside the sandbox) included; only kill's codes, whose pid the kernel fills in,
/// may count as a request to stop.
#[test]
fn a_sigterm_queued_from_inside_with_a_forged_sender_is_ignored() {
    require_root!();
    let sb = start(256);
    runtime().block_on(async {
        let client = ready(&sb).await;
        // siginfo: si_signo, si_errno, si_code = SI_QUEUE (-1), then si_pid = 0, si_uid = 0.
        let forge = "python3 -c '\
import ctypes, struct
info = ctypes.create_string_buffer(struct.pack(\"iiiiii\", 15, 0, -1, 0, 0, 0), 128)
for sig in (15, 2):
    struct.pack_into(\"i\", info, 0, sig)
    print(ctypes.CDLL(None).syscall(129, 1, sig, info))
'";
        let out = stdout(&command(&client, forge, Some(10_000)).await);
        assert_eq!(out, vec!["0", "0"], "the signals were not sent");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_still_serving(&sb, &client).await;
    });
}

/// The agent keeps SIGTERM and SIGINT blocked in all its threads (it takes them with
/// sigwaitinfo); what it starts must not inherit that.
#[test]
fn commands_start_with_no_signal_blocked() {
    require_root!();
    let sb = start(256);
    runtime().block_on(async {
        let client = ready(&sb).await;
        let out = stdout(
            &command(
                &client,
                "grep SigBlk /proc/self/status; sleep 30 & kill -TERM $!; wait $!; echo $?",
                Some(10_000),
            )
            .await,
        );
        assert_eq!(out, vec!["SigBlk:\t0000000000000000", "143"]);
    });
}

/// A sandbox with a host directory as its workspace, supervised on a thread of its own:
/// what `stop` needs to signal its init and see how (and when) the sandbox ended.
struct Stoppable {
    sb: AgentSandbox,
    workspace: PathBuf,
    ended: std::sync::mpsc::Receiver<runbox_jail::Outcome>,
}

impl Stoppable {
    fn start(name: &str) -> Self {
        let workspace = std::env::temp_dir().join(format!("runbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&workspace);
        std::fs::create_dir_all(&workspace).expect("workspace");
        let mut policy = Policy::new(Vec::new());
        policy.limits.pids = Some(256);
        policy.limits.timeout = Some(Duration::from_secs(120));
        policy.filesystem.workspace = Some(workspace.clone());
        policy.argv = agent_argv(&policy, &[]);
        let mut sb = AgentSandbox::start(policy, &agent_binary()).expect("sandbox starts");
        let sandbox = sb.sandbox.take().expect("jail handle");
        let (tx, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(outcome) = sandbox.wait(&mut runbox_jail::Discard) {
                let _ = tx.send(outcome);
            }
        });
        Self {
            sb,
            workspace,
            ended,
        }
    }

    /// SIGTERM to the sandbox's init (the agent) from the host, as `docker stop` does.
    fn sigterm_from_the_host(&self) {
        // describe() starts with the init's host pid; it cannot be reused before `wait`
        // (on the supervising thread) reaps it, and the sandbox is alive.
        let description = self.sb.killer.describe();
        let pid = description
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .and_then(rustix::process::Pid::from_raw)
            .unwrap_or_else(|| panic!("no init pid in {description:?}"));
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    }

    fn marker(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.workspace.join(name)).ok()
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workspace);
    }
}

/// Writes `/workspace/terminated` and exits when it gets SIGTERM.
const TRAPS_SIGTERM: &str = "sh -c 'trap \"echo bye > /workspace/terminated; exit 0\" TERM; \
     while :; do sleep 0.1; done' > /dev/null 2>&1 &";

#[test]
fn a_sigterm_from_the_host_is_forwarded_and_the_agent_exits_0() {
    require_root!();
    let sb = Stoppable::start("term");
    runtime().block_on(async {
        let client = ready(&sb.sb).await;
        command(&client, TRAPS_SIGTERM, Some(5_000)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The same signals from sandbox code are not a request to stop: nothing is
        // forwarded and the agent keeps serving.
        command(&client, "kill -TERM 1; kill -INT 1", Some(5_000)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            stdout(&command(&client, "echo alive", Some(5_000)).await),
            vec!["alive"]
        );
    });
    assert_eq!(
        sb.marker("terminated"),
        None,
        "forwarded a signal from inside"
    );
    let sent = std::time::Instant::now();
    sb.sigterm_from_the_host();
    let outcome = sb
        .ended
        .recv_timeout(Duration::from_secs(15))
        .expect("the sandbox ended");
    // Everyone exited on SIGTERM, so the agent did not wait out the grace period.
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(
        sb.marker("terminated").as_deref(),
        Some("bye\n"),
        "the SIGTERM did not reach the sandbox's processes"
    );
}

#[test]
fn a_process_ignoring_the_forwarded_sigterm_is_killed_after_the_grace() {
    require_root!();
    let sb = Stoppable::start("term-ignored");
    runtime().block_on(async {
        let client = ready(&sb.sb).await;
        command(&client, TRAPS_SIGTERM, Some(5_000)).await;
        // One that catches SIGTERM and carries on (it notes that it got it), one that
        // ignores it (SIG_IGN): both live until the SIGKILL after the grace period.
        command(
            &client,
            "sh -c 'trap \"echo got > /workspace/ignored\" TERM; \
             while :; do sleep 0.1; done' > /dev/null 2>&1 & \
             sh -c 'trap \"\" TERM; exec sleep 600' > /dev/null 2>&1 &",
            Some(5_000),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let sent = std::time::Instant::now();
    sb.sigterm_from_the_host();
    let outcome = sb
        .ended
        .recv_timeout(Duration::from_secs(20))
        .expect("the sandbox ended");
    let took = sent.elapsed();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(sb.marker("terminated").as_deref(), Some("bye\n"));
    assert_eq!(sb.marker("ignored").as_deref(), Some("got\n"));
    // The grace period is 5 s (runbox-agent's signals::GRACE).
    assert!(
        took >= Duration::from_millis(4_900) && took < Duration::from_secs(9),
        "ended {took:?} after the SIGTERM"
    );
}

#[test]
fn agent_survives_a_fork_bomb() {
    require_root!();
    let sb = start(64);
    runtime().block_on(async {
        let client = ready(&sb).await;
        let events = command(
            &client,
            "bomb() { bomb | bomb & }; bomb; sleep 5",
            Some(1_500),
        )
        .await;
        assert!(
            events.iter().any(|e| e.kind == EventKind::Error),
            "the bomb's command must fail"
        );
        client
            .wait_ready(Duration::from_secs(2))
            .await
            .expect("agent still answers");
        // The bomb's process group was killed with its command, so there is room again.
        let mut alive = Vec::new();
        for _ in 0..20 {
            alive = stdout(&command(&client, "echo alive", Some(5_000)).await);
            if alive == ["alive"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(alive, vec!["alive"]);
    });
}

#[test]
fn python_state_and_a_plot_through_the_sandbox() {
    require_root!();
    let sb = start(256);
    runtime().block_on(async {
        let client = ready(&sb).await;
        let run = |code: &str| json!({ "context": { "language": "python" }, "code": code });
        let mut events = Vec::new();
        for code in [
            "x = 41",
            "x + 1",
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])",
        ] {
            let resp = client
                .request("POST", "/code", Some(run(code)))
                .await
                .expect("request");
            resp.events(|e| events.push(e)).await.expect("events");
        }
        let results: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == EventKind::Result)
            .filter_map(|e| e.results.as_ref())
            .flat_map(|r| r.values())
            .collect();
        assert!(
            results.iter().any(|v| v.as_str() == Some("42")),
            "{events:?}"
        );
        let png = events
            .iter()
            .filter_map(|e| {
                e.results
                    .as_ref()?
                    .get("image/png")?
                    .as_str()
                    .map(str::to_owned)
            })
            .next()
            .expect("a PNG result");
        assert!(
            png.starts_with("iVBORw0KGgo"),
            "not a PNG: {}",
            &png[..20.min(png.len())]
        );
        assert!(!events.iter().any(|e| e.kind == EventKind::Stderr
            && e.text.as_deref().is_some_and(|t| t.contains("Fontconfig"))));
    });
}

#[test]
fn dropping_the_sandbox_leaves_nothing() {
    require_root!();
    let sb = start(256);
    let socket = sb.socket.clone();
    runtime().block_on(async {
        let client = ready(&sb).await;
        command(&client, "sleep 60 &", None).await;
    });
    drop(sb);
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn something_listens_on_the_code_interpreter_port() {
    require_root!();
    let sb = start(256);
    runtime().block_on(async {
        let client = ready(&sb).await;
        // Exactly the official CodeInterpreter's health check.
        let events = command(
            &client,
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}' && echo open",
            Some(5_000),
        )
        .await;
        assert_eq!(stdout(&events), vec!["open"]);
    });
}
