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
    let client = sb.client();
    let token = sb.token.clone();
    runtime().block_on(async {
        client.wait_ready(Duration::from_secs(10)).await.expect("ready");
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
    let client = sb.client();
    runtime().block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        command(
            &client,
            "kill -9 -1; kill -KILL 1; kill -TERM 1; kill -INT 1; kill -HUP 1; kill -SEGV 1",
            Some(5_000),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .wait_ready(Duration::from_secs(2))
            .await
            .expect("agent still answers");
        assert_eq!(
            stdout(&command(&client, "echo alive", None).await),
            vec!["alive"]
        );
    });
}

#[test]
fn agent_survives_a_fork_bomb() {
    require_root!();
    let sb = start(64);
    let client = sb.client();
    runtime().block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
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
    let client = sb.client();
    runtime().block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
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
    let client = sb.client();
    runtime().block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        command(&client, "sleep 60 &", None).await;
    });
    drop(sb);
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn something_listens_on_the_code_interpreter_port() {
    require_root!();
    let sb = start(256);
    let client = sb.client();
    runtime().block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
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
