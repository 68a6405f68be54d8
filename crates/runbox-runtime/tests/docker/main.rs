//! The docker backend against the real engine and the real `runbox/default:latest` image: the
//! agent answers, the hardening is what `docker inspect` shows from the host, the limits bite,
//! and no container outlives its test.
//!
//! Without an engine or the image every test prints `SKIPPED: ...` and returns, unless
//! `RUNBOX_REQUIRE_DOCKER=1` (CI), where that is a failure.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runbox_proto::execd::{Event, EventKind};
use runbox_runtime::{
    random_hex, AgentClient, DockerRuntime, ImageSource, Instance, Runtime, RuntimeError, StartSpec,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "runbox/default:latest";
const MIB: u64 = 1 << 20;

/// Tests that must see the engine to themselves (sweep removes every container not kept; the
/// latency measurement wants a quiet host) take it for writing, the others for reading.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// target/<profile>/runbox-agent, next to this test's deps directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let agent = dir.join("runbox-agent");
    assert!(
        agent.is_file(),
        "{} missing: run `cargo build -p runbox-agent` first",
        agent.display()
    );
    agent
}

/// Why these tests cannot run here, if they cannot.
async fn unusable(rt: &DockerRuntime) -> Option<String> {
    if let Err(e) = rt.check().await {
        return Some(format!("the Docker engine is unusable: {e}"));
    }
    let found = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| format!("image {IMAGE} is missing (make it with `runbox image build`)"))
}

macro_rules! require_docker {
    ($test:literal) => {{
        let rt = DockerRuntime::new(agent_binary());
        if let Some(why) = unusable(&rt).await {
            if std::env::var("RUNBOX_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("RUNBOX_REQUIRE_DOCKER=1 but {why}");
            }
            eprintln!("SKIPPED: {} needs Docker: {why}", $test);
            return;
        }
        rt
    }};
}

/// One test sandbox's id and workspace; dropping it removes whatever a failed assertion left.
struct Fixture {
    id: String,
    workspace: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let id = format!("test-{tag}-{}", random_hex(4));
        let workspace = std::env::temp_dir().join(format!("runbox-docker-{id}"));
        std::fs::create_dir_all(&workspace).expect("workspace");
        Self { id, workspace }
    }

    fn spec(&self) -> StartSpec {
        StartSpec {
            id: self.id.clone(),
            image: ImageSource {
                name: "default".into(),
                rootfs: None,
                docker: Some(IMAGE.into()),
            },
            workspace: self.workspace.clone(),
            memory_bytes: 256 * MIB,
            cpus: 1.0,
            pids: 128,
            output_bytes: MIB,
            env: vec![("RUNBOX_TEST".into(), "docker".into())],
            agent_args: Vec::new(),
        }
    }

    async fn start(&self, rt: &DockerRuntime, spec: StartSpec) -> Box<dyn Instance> {
        let sb = rt.start(spec).await.expect("the sandbox starts");
        sb.client()
            .wait_ready(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("agent not ready: {e}; {}", sb.describe()));
        sb
    }

    /// Kills the sandbox and checks nothing of it remains.
    async fn finish(&self, sb: Box<dyn Instance>) {
        sb.kill().await;
        self.assert_gone();
    }

    fn assert_gone(&self) {
        assert_eq!(containers_of(&self.id), Vec::<String>::new(), "leaked");
        assert!(!socket_dir(&self.id).exists(), "socket directory left");
    }

    fn inspect(&self) -> Value {
        let out = Command::new("docker")
            .args(["inspect", &format!("runbox-{}", self.id)])
            .output()
            .expect("docker inspect");
        assert!(out.status.success(), "{out:?}");
        let all: Value = serde_json::from_slice(&out.stdout).expect("inspect json");
        all[0].clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &format!("runbox-{}", self.id)])
            .output();
        let _ = std::fs::remove_dir_all(socket_dir(&self.id));
        let _ = std::fs::remove_dir_all(&self.workspace);
    }
}

fn socket_dir(id: &str) -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/runbox/docker").join(id)
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join("runbox-docker")
            .join(id)
    }
}

/// Containers (any state) labelled with this sandbox id.
fn containers_of(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=runbox.sandbox={id}"),
        ])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The sandbox ids of every managed container now on the engine.
fn managed_sandboxes() -> HashSet<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=runbox.managed=true",
            "--format",
            "{{.Label \"runbox.sandbox\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

async fn events_of(client: &AgentClient, path: &str, body: Value) -> Vec<Event> {
    let resp = client
        .request("POST", path, Some(body))
        .await
        .expect("request");
    assert_eq!(resp.status, 200, "{path}");
    let mut events = Vec::new();
    resp.events(|e| events.push(e)).await.expect("events");
    events
}

async fn command(client: &AgentClient, cmd: &str) -> Vec<Event> {
    events_of(
        client,
        "/command",
        json!({ "command": cmd, "timeout": 20_000 }),
    )
    .await
}

async fn background(client: &AgentClient, cmd: &str) {
    let resp = client
        .request(
            "POST",
            "/command",
            Some(json!({ "command": cmd, "background": true })),
        )
        .await
        .expect("request");
    assert_eq!(resp.status, 200);
    resp.text().await;
}

async fn python(client: &AgentClient, code: &str) -> Vec<Event> {
    events_of(
        client,
        "/code",
        json!({ "context": { "language": "python" }, "code": code }),
    )
    .await
}

fn text(events: &[Event], kind: EventKind) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .filter_map(|e| e.text.clone())
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn stdout(events: &[Event]) -> Vec<String> {
    text(events, EventKind::Stdout)
}

fn proc_status(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status")
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn check_reports_the_engine_version() {
    let rt = require_docker!("check_reports_the_engine_version");
    let line = rt.check().await.expect("check");
    assert!(line.starts_with("Docker Engine "), "{line}");
}

#[tokio::test]
async fn commands_and_python_code_run_in_the_workspace() {
    let rt = require_docker!("commands_and_python_code_run_in_the_workspace");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("run");
    let sb = fx.start(&rt, fx.spec()).await;
    let client = sb.client();
    let out = stdout(&command(&client, "echo hello; pwd; echo $RUNBOX_TEST; echo data > f").await);
    assert_eq!(out, ["hello", "/workspace", "docker"]);
    let on_host = std::fs::read_to_string(fx.workspace.join("f")).expect("file on the host");
    assert_eq!(on_host, "data\n");
    assert_eq!(
        stdout(&python(&client, "x = 6 * 7\nprint(x)").await),
        ["42"]
    );
    // The kernel keeps its state between runs.
    assert_eq!(stdout(&python(&client, "print(x + 1)").await), ["43"]);
    fx.finish(sb).await;
}

#[tokio::test]
async fn docker_inspect_shows_the_hardening() {
    let rt = require_docker!("docker_inspect_shows_the_hardening");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("inspect");
    let sb = fx.start(&rt, fx.spec()).await;
    let c = fx.inspect();
    let h = &c["HostConfig"];
    assert_eq!(h["CapDrop"], json!(["ALL"]));
    assert!(h["CapAdd"].is_null(), "{}", h["CapAdd"]);
    // no-new-privileges and runbox's own seccomp profile (the jail's deny-list; stricter
    // than the engine's default on ptrace, io_uring and modify_ldt).
    assert_eq!(h["SecurityOpt"][0], json!("no-new-privileges"));
    let profile = h["SecurityOpt"][1].as_str().expect("seccomp option");
    let profile: Value =
        serde_json::from_str(profile.strip_prefix("seccomp=").expect("seccomp=")).expect("json");
    assert_eq!(profile, runbox_runtime::seccomp_profile::profile());
    assert_eq!(h["SecurityOpt"].as_array().map(Vec::len), Some(2));
    assert_eq!(h["ReadonlyRootfs"], json!(true));
    assert_eq!(h["Privileged"], json!(false));
    assert_eq!(h["NetworkMode"], json!("none"));
    assert_eq!(h["IpcMode"], json!("private"));
    assert_eq!(h["PidMode"], json!(""));
    assert_eq!(h["Init"], json!(false));
    assert_eq!(h["OomKillDisable"], json!(false));
    assert_eq!(h["Memory"], json!(256 * MIB));
    assert_eq!(h["MemorySwap"], json!(256 * MIB));
    assert_eq!(h["NanoCpus"], json!(1_000_000_000u64));
    assert_eq!(h["PidsLimit"], json!(128));
    let tmp = h["Tmpfs"]["/tmp"].as_str().expect("/tmp tmpfs");
    for opt in ["nosuid", "nodev", "size="] {
        assert!(tmp.contains(opt), "/tmp: {tmp}");
    }
    let shm = h["Tmpfs"]["/dev/shm"].as_str().expect("/dev/shm tmpfs");
    assert!(shm.contains("nosuid") && shm.contains("size="), "{shm}");
    let ulimits = h["Ulimits"].as_array().expect("ulimits");
    let limit = |name: &str| ulimits.iter().find(|u| u["Name"] == name).cloned();
    assert_eq!(
        limit("core"),
        Some(json!({"Name": "core", "Soft": 0, "Hard": 0}))
    );
    assert!(limit("nofile").is_some(), "{ulimits:?}");
    assert!(h["Binds"].is_null(), "{}", h["Binds"]);
    let mut mounts: Vec<(String, bool)> = c["Mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            assert_eq!(m["Type"], "bind", "{m}");
            (
                m["Destination"].as_str().unwrap_or_default().to_owned(),
                m["RW"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    mounts.sort();
    assert_eq!(
        mounts,
        [
            ("/.runbox/runbox-agent".to_owned(), false),
            ("/run/runbox-agent".to_owned(), true),
            ("/workspace".to_owned(), true),
        ]
    );
    assert!(!c.to_string().contains("docker.sock"));
    assert_eq!(c["Name"], json!(format!("/runbox-{}", fx.id)));
    assert_eq!(c["Config"]["User"], json!("1000:1000"));
    assert_eq!(c["Config"]["WorkingDir"], json!("/workspace"));
    assert_eq!(c["Config"]["Labels"]["runbox.sandbox"], json!(fx.id));
    assert_eq!(c["Config"]["Labels"]["runbox.managed"], json!("true"));
    assert_eq!(c["Path"], json!("/.runbox/runbox-agent"));
    let args: Vec<&str> = c["Args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args[..3],
        [
            "--listen",
            "unix:/run/runbox-agent/agent.sock",
            "--token-stdin"
        ]
    );
    // What the kernel enforces on the agent (PID 1), read from the host.
    let pid = c["State"]["Pid"].as_i64().expect("pid");
    let status = proc_status(pid);
    assert_eq!(status_field(&status, "Seccomp"), "2", "seccomp filter");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd"), "0000000000000000");
    assert!(status_field(&status, "Uid").starts_with("1000"), "{status}");
    // The backend's own report says the same.
    let iso = sb.isolation();
    assert_eq!(iso["backend"], "docker");
    assert_eq!(iso["container"]["id"], c["Id"]);
    assert_eq!(iso["container"]["image"], IMAGE);
    let e = &iso["enforcement"];
    assert_eq!(e["capabilities_dropped"], json!(["ALL"]));
    assert_eq!(e["effective_capabilities"], "0000000000000000");
    assert_eq!(e["no_new_privileges"], true);
    assert_eq!(
        e["seccomp"],
        json!({"mode": "filter", "profile": "runbox (the jail's deny-list)"})
    );
    assert_eq!(e["readonly_rootfs"], true);
    assert_eq!(e["user"], "1000:1000");
    assert_eq!(e["network_mode"], "none");
    assert_eq!(iso["limits"]["memory_bytes"], json!(256 * MIB));
    assert_eq!(iso["limits"]["pids"], 128);
    assert_eq!(iso["limits"]["cpus"], 1.0);
    let describe = sb.describe();
    assert!(describe.contains("running"), "{describe}");
    fx.finish(sb).await;
}

#[tokio::test]
async fn the_token_is_in_no_inspect_field_and_out_of_reach_of_code() {
    let rt = require_docker!("the_token_is_in_no_inspect_field_and_out_of_reach_of_code");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("token");
    let sb = fx.start(&rt, fx.spec()).await;
    let client = sb.client();
    let token = client.token.clone();
    let inspect = fx.inspect().to_string();
    assert!(!inspect.contains(&token), "the token is in docker inspect");
    let probe = format!(
        "grep -rIl -- {token} /proc/*/environ /proc/*/cmdline /tmp /workspace /etc /run 2>/dev/null | head; \
         cat /proc/1/environ >/dev/null 2>&1 && echo ENVIRON-READABLE; \
         ls /proc/1/fd >/dev/null 2>&1 && echo FD-READABLE; \
         ls /run/runbox-agent >/dev/null 2>&1 && echo SOCKET-DIR-LISTABLE; \
         rm -f /run/runbox-agent/agent.sock 2>/dev/null && echo SOCKET-REMOVABLE; \
         touch /run/runbox-agent/fake.sock 2>/dev/null && echo SOCKET-DIR-WRITABLE; \
         echo done"
    );
    assert_eq!(stdout(&command(&client, &probe).await), ["done"]);
    let wrong = AgentClient::new(client.socket.clone(), "0".repeat(64));
    let resp = wrong
        .request("GET", "/metrics", None)
        .await
        .expect("request");
    assert_eq!(resp.status, 401);
    fx.finish(sb).await;
}

#[tokio::test]
async fn the_network_is_none() {
    let rt = require_docker!("the_network_is_none");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("net");
    let sb = fx.start(&rt, fx.spec()).await;
    let code = "import socket\n\
        try:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\n    print('connected')\n\
        except OSError as e:\n    print('connect failed', e.errno)\n\
        try:\n    socket.getaddrinfo('deb.debian.org', 80)\n    print('resolved')\n\
        except OSError:\n    print('resolve failed')\n\
        print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))";
    let out = stdout(&python(&sb.client(), code).await);
    assert_eq!(
        out,
        ["connect failed 101", "resolve failed", "['lo']"],
        "ENETUNREACH, no resolver, only loopback"
    );
    fx.finish(sb).await;
}

#[tokio::test]
async fn code_runs_as_a_non_root_user_on_a_read_only_root() {
    let rt = require_docker!("code_runs_as_a_non_root_user_on_a_read_only_root");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("user");
    let sb = fx.start(&rt, fx.spec()).await;
    let out = stdout(
        &command(
            &sb.client(),
            "id -u; id -g; touch /usr/x 2>/dev/null || echo root-ro; \
             touch /tmp/x && echo tmp-rw; touch /workspace/x && echo ws-rw; \
             grep CapEff /proc/self/status",
        )
        .await,
    );
    assert_eq!(
        out,
        [
            "1000",
            "1000",
            "root-ro",
            "tmp-rw",
            "ws-rw",
            "CapEff:\t0000000000000000"
        ]
    );
    let meta = std::fs::metadata(fx.workspace.join("x")).expect("x on the host");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    fx.finish(sb).await;
}

#[tokio::test]
async fn an_allocation_above_the_memory_limit_is_killed_and_the_agent_survives() {
    let rt =
        require_docker!("an_allocation_above_the_memory_limit_is_killed_and_the_agent_survives");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("mem");
    let spec = StartSpec {
        memory_bytes: 128 * MIB,
        ..fx.spec()
    };
    let sb = fx.start(&rt, spec).await;
    let client = sb.client();
    let events = command(
        &client,
        "python3 -c 'b = bytearray(400 << 20); b[::4096] = b\"x\" * len(b[::4096]); print(\"survived\")'",
    )
    .await;
    assert!(
        !stdout(&events).contains(&"survived".to_owned()),
        "{events:?}"
    );
    let error = events
        .iter()
        .find_map(|e| e.error.as_ref())
        .expect("an error event");
    assert_eq!(error.evalue, "137", "SIGKILL by the OOM killer: {events:?}");
    assert_eq!(stdout(&command(&client, "echo alive").await), ["alive"]);
    fx.finish(sb).await;
}

#[tokio::test]
async fn the_pids_limit_stops_a_fork_flood() {
    let rt = require_docker!("the_pids_limit_stops_a_fork_flood");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("pids");
    let spec = StartSpec {
        pids: 48,
        ..fx.spec()
    };
    let sb = fx.start(&rt, spec).await;
    let client = sb.client();
    let code = "import os, signal, time\n\
        kids = []\n\
        try:\n    for _ in range(200):\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(60)\n            os._exit(0)\n        kids.append(pid)\n    print('all', len(kids))\n\
        except OSError as e:\n    print('refused', e.errno, len(kids))\n\
        for k in kids:\n    os.kill(k, signal.SIGKILL)\n    os.waitpid(k, 0)\n";
    let out = stdout(&python(&client, code).await);
    let words: Vec<&str> = out
        .first()
        .map(|l| l.split(' ').collect())
        .unwrap_or_default();
    assert_eq!(
        words.get(..2),
        Some(&["refused", "11"][..]),
        "EAGAIN: {out:?}"
    );
    let forked: usize = words[2].parse().expect("count");
    assert!(forked < 48, "{forked} processes despite pids 48");
    assert_eq!(stdout(&command(&client, "echo alive").await), ["alive"]);
    fx.finish(sb).await;
}

/// The last value the counter loop wrote to the workspace.
fn counter(workspace: &Path) -> u64 {
    std::fs::read_to_string(workspace.join("counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn pause_stops_a_counter_and_resume_restarts_it() {
    let rt = require_docker!("pause_stops_a_counter_and_resume_restarts_it");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("pause");
    let sb = fx.start(&rt, fx.spec()).await;
    assert!(sb.can_pause());
    background(
        &sb.client(),
        "i=0; while :; do i=$((i+1)); echo $i > /workspace/counter.new; \
         mv /workspace/counter.new /workspace/counter; sleep 0.02; done",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&fx.workspace) < 3 {
        assert!(Instant::now() < deadline, "the counter never advanced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sb.pause().await.expect("pause");
    assert!(sb.describe().contains("paused"), "{}", sb.describe());
    let frozen = counter(&fx.workspace);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter(&fx.workspace), frozen, "advanced while paused");
    sb.resume().await.expect("resume");
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&fx.workspace) <= frozen {
        assert!(Instant::now() < deadline, "did not advance after resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A paused sandbox can be killed too.
    sb.pause().await.expect("pause again");
    fx.finish(sb).await;
}

#[tokio::test]
async fn connect_tcp_reaches_a_server_inside_the_sandbox() {
    let rt = require_docker!("connect_tcp_reaches_a_server_inside_the_sandbox");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("tcp");
    std::fs::write(fx.workspace.join("hello.txt"), "hi from the workspace\n").expect("write");
    let sb = fx.start(&rt, fx.spec()).await;
    background(
        &sb.client(),
        "python3 -m http.server 8765 --bind 127.0.0.1 --directory /workspace",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stream = loop {
        match sb.connect_tcp(8765).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no server: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    stream
        .write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("reply");
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.ends_with("hi from the workspace\n"), "{reply}");
    // The sandbox's loopback is its own: nothing of it on the host's.
    assert!(std::net::TcpStream::connect(("127.0.0.1", 8765)).is_err());
    fx.finish(sb).await;
}

#[tokio::test]
async fn kill_removes_the_container_and_is_idempotent() {
    let rt = require_docker!("kill_removes_the_container_and_is_idempotent");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("kill");
    let sb = fx.start(&rt, fx.spec()).await;
    assert_eq!(containers_of(&fx.id).len(), 1);
    assert!(socket_dir(&fx.id).join("agent.sock").exists());
    sb.kill().await;
    fx.assert_gone();
    sb.kill().await;
    let ended = tokio::time::timeout(Duration::from_secs(15), sb.wait())
        .await
        .expect("wait returns after kill");
    assert_eq!(ended.status, "killed", "{ended:?}");
    fx.assert_gone();
}

#[tokio::test]
async fn sweep_removes_leftovers_and_keeps_the_rest() {
    let rt = require_docker!("sweep_removes_leftovers_and_keeps_the_rest");
    let _engine = ENGINE.write().await;
    let kept = Fixture::new("sweep-kept");
    let left = Fixture::new("sweep-left");
    let kept_sb = kept.start(&rt, kept.spec()).await;
    // A server that died: its container lives on with nobody holding it.
    drop(left.start(&rt, left.spec()).await);
    let orphan_dir = socket_dir(&format!("test-sweep-orphan-{}", random_hex(4)));
    std::fs::create_dir_all(&orphan_dir).expect("orphan dir");
    // Orphans are removed once no start can still be using them (older than 10 minutes);
    // a fresh one may belong to a start in progress elsewhere and is kept.
    let fresh_orphan = socket_dir(&format!("test-sweep-fresh-{}", random_hex(4)));
    std::fs::create_dir_all(&fresh_orphan).expect("fresh orphan dir");
    let aged = std::process::Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&orphan_dir)
        .status()
        .expect("touch");
    assert!(aged.success());
    let mut keep = managed_sandboxes();
    assert!(keep.remove(&left.id));
    let removed = rt.sweep(&keep).await.expect("sweep");
    assert_eq!(removed, std::slice::from_ref(&left.id));
    left.assert_gone();
    assert!(!orphan_dir.exists(), "orphan socket directory kept");
    assert!(
        fresh_orphan.exists(),
        "a fresh socket directory was removed"
    );
    let _ = std::fs::remove_dir_all(&fresh_orphan);
    assert_eq!(
        containers_of(&kept.id).len(),
        1,
        "a kept sandbox was removed"
    );
    assert_eq!(
        stdout(&command(&kept_sb.client(), "echo still").await),
        ["still"]
    );
    kept.finish(kept_sb).await;
}

#[tokio::test]
async fn a_second_start_with_a_live_id_fails_and_leaves_the_first_alone() {
    let rt = require_docker!("a_second_start_with_a_live_id_fails_and_leaves_the_first_alone");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("twice");
    let sb = fx.start(&rt, fx.spec()).await;
    let err = rt.start(fx.spec()).await.expect_err("the id is taken");
    assert!(matches!(err, RuntimeError::Start { .. }), "{err:?}");
    assert_eq!(containers_of(&fx.id).len(), 1);
    assert_eq!(
        stdout(&command(&sb.client(), "echo first").await),
        ["first"]
    );
    // Debug output is for logs: no token in it.
    assert!(!format!("{sb:?}").contains(&sb.client().token));
    fx.finish(sb).await;
}

#[tokio::test]
async fn a_missing_image_is_an_image_error() {
    let rt = require_docker!("a_missing_image_is_an_image_error");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("noimage");
    let mut spec = fx.spec();
    spec.image.docker = Some("runbox/no-such-image:latest".into());
    let err = rt.start(spec).await.expect_err("no image, no sandbox");
    assert!(matches!(err, RuntimeError::Image { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("as reported: {msg}");
    assert!(msg.contains("runbox image build"), "{msg}");
    assert!(msg.contains("runbox/no-such-image:latest"), "{msg}");
    fx.assert_gone();
}

#[tokio::test]
async fn an_agent_that_exits_during_start_is_removed_with_its_output() {
    let rt = require_docker!("an_agent_that_exits_during_start_is_removed_with_its_output");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("dies");
    let spec = StartSpec {
        agent_args: vec!["--no-such-flag".into()],
        ..fx.spec()
    };
    let err = rt.start(spec).await.expect_err("the agent refuses");
    let RuntimeError::Start { reason, .. } = &err else {
        panic!("{err:?}")
    };
    eprintln!("as reported: {err}");
    assert!(reason.contains("exited during start"), "{reason}");
    assert!(
        reason.contains("unknown argument `--no-such-flag`"),
        "{reason}"
    );
    fx.assert_gone();
}

#[tokio::test]
async fn an_image_the_agent_cannot_run_in_is_a_start_error_without_leaks() {
    let rt = require_docker!("an_image_the_agent_cannot_run_in_is_a_start_error_without_leaks");
    let _engine = ENGINE.read().await;
    let fx = Fixture::new("nolibc");
    // An image with no libc: the engine cannot even exec the (dynamically linked) agent.
    let image = format!("runbox-test/nolibc-{}:latest", random_hex(4));
    let root = fx.workspace.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).expect("rootfs");
    std::fs::write(root.join("etc/hostname"), "x\n").expect("file");
    let imported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {image}",
            root.display()
        ))
        .output()
        .expect("docker import");
    assert!(imported.status.success(), "{imported:?}");
    let mut spec = fx.spec();
    spec.image.docker = Some(image.clone());
    let result = rt.start(spec).await;
    let _ = Command::new("docker").args(["rmi", &image]).output();
    let err = result.expect_err("nothing to run the agent with");
    eprintln!("as reported: {err}");
    assert!(matches!(err, RuntimeError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("libc"), "{err}");
    fx.assert_gone();
}

#[tokio::test]
async fn an_absent_or_hung_engine_is_reported_clearly() {
    let agent = agent_binary();
    let absent = DockerRuntime::with_host(agent.clone(), "unix:///nonexistent/docker.sock");
    let why = absent.check().await.expect_err("no engine");
    eprintln!("as reported: {why}");
    assert!(why.contains("not running"), "{why}");
    let fx = Fixture::new("noengine");
    let err = absent.start(fx.spec()).await.expect_err("no engine");
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{err:?}");

    // A socket file nobody listens on: dockerd stopped without removing it.
    let stale = fx.workspace.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let stopped = DockerRuntime::with_host(agent.clone(), format!("unix://{}", stale.display()));
    let why = stopped.check().await.expect_err("stopped engine");
    eprintln!("as reported: {why}");
    assert!(
        why.contains("is not reachable (is dockerd running?)"),
        "{why}"
    );

    // An engine that accepts connections and never answers.
    let path = fx.workspace.join("hung.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.flush();
            held.push(c);
        }
    });
    let hung = DockerRuntime::with_host(agent, format!("unix://{}", path.display()));
    let t0 = Instant::now();
    let why = hung.check().await.expect_err("hung engine");
    eprintln!("as reported: {why}");
    assert!(why.contains("did not answer within 10 s"), "{why}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn start_latency() {
    let rt = require_docker!("start_latency");
    let _engine = ENGINE.write().await;
    let mut ready = Vec::new();
    let mut first_stdout = Vec::new();
    for i in 0..10 {
        let fx = Fixture::new(&format!("latency{i}"));
        let t0 = Instant::now();
        let sb = rt.start(fx.spec()).await.expect("start");
        let client = sb.client();
        client
            .wait_ready(Duration::from_secs(20))
            .await
            .expect("ready");
        ready.push(t0.elapsed());
        assert_eq!(stdout(&command(&client, "echo hi").await), ["hi"]);
        first_stdout.push(t0.elapsed());
        fx.finish(sb).await;
    }
    ready.sort();
    first_stdout.sort();
    eprintln!(
        "docker start latency over 10 starts: create -> agent ready median {:?} (min {:?}, max {:?}); \
         create -> first stdout median {:?}",
        ready[5], ready[0], ready[9], first_stdout[5]
    );
}
