//! `kill -9` of the real `runbox serve`: its sandboxes' processes die with it, and the next
//! start on the same data dir marks their records `server_restart`, keeps their workspace
//! files, and serves new creates.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{built_binary, require_root, temp_dir};

const RESTART_KEY: &str = "restart-stress-key-123";
/// Host uids of sandbox users (runbox-runtime's native uid range).
const SANDBOX_UIDS: std::ops::Range<u32> = 1_500_000_000..1_500_300_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = match token {
        Some(t) => format!("X-EXECD-ACCESS-TOKEN: {t}\r\n"),
        None => format!("OPEN-SANDBOX-API-KEY: {RESTART_KEY}\r\n"),
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn start_server(port: u16, data: &Path) -> Child {
    let mut child = Command::new(built_binary("runbox"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("RUNBOX_API_KEYS", format!("t:{RESTART_KEY}"))
        .env_remove("RUNBOX_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runbox serve");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("runbox serve did not listen on {port}");
}

/// pid -> (parent pid, real uid) of every process.
fn processes() -> BTreeMap<u32, (u32, u32)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
        };
        if let (Some(ppid), Some(uid)) = (field("PPid:"), field("Uid:")) {
            out.insert(pid, (ppid, uid));
        }
    }
    out
}

/// Descendants of `root` running as a sandbox user.
fn sandbox_descendants(root: u32) -> BTreeSet<u32> {
    let procs = processes();
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, (ppid, _)) in &procs {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.into_iter()
        .filter(|p| {
            procs
                .get(p)
                .is_some_and(|(_, uid)| SANDBOX_UIDS.contains(uid))
        })
        .collect()
}

/// Which of `pids` still run as a sandbox user (a reused pid would not).
fn still_alive(pids: &BTreeSet<u32>) -> Vec<u32> {
    let procs = processes();
    pids.iter()
        .copied()
        .filter(|p| {
            procs
                .get(p)
                .is_some_and(|(_, uid)| SANDBOX_UIDS.contains(uid))
        })
        .collect()
}

#[test]
fn kill_9_kills_the_sandboxes_and_a_restart_recovers() {
    let _serial = crate::SERIAL.blocking_lock();
    require_root!();
    let data = temp_dir("runbox-stress-restart");
    let port = free_port();
    let mut server = start_server(port, &data);
    let create = r#"{"image":{"uri":"default"},"entrypoint":["tail","-f","/dev/null"],"resourceLimits":{"cpu":"1","memory":"256Mi"}}"#;
    let (status, body) = http(port, "POST", "/v1/sandboxes", None, create);
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, ep) = http(
        port,
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/44772"),
        None,
        "",
    );
    let token = serde_json::from_str::<Value>(&ep).expect("json")["headers"]
        ["X-EXECD-ACCESS-TOKEN"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, out) = http(
        port,
        "POST",
        &format!("/sandboxes/{id}/port/44772/command"),
        Some(&token),
        r#"{"command":"echo keep > /workspace/f && echo written"}"#,
    );
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("written"), "{out}");
    let sandboxed = sandbox_descendants(server.id());
    assert!(
        !sandboxed.is_empty(),
        "no process of the server runs as a sandbox user ({SANDBOX_UIDS:?})"
    );

    server.kill().expect("kill -9");
    let _ = server.wait();
    let killed = Instant::now();
    let mut left = still_alive(&sandboxed);
    while !left.is_empty() && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        left = still_alive(&sandboxed);
    }
    eprintln!(
        "kill -9: {} sandbox processes, all gone after {:?}",
        sandboxed.len(),
        killed.elapsed()
    );
    assert!(
        left.is_empty(),
        "sandbox processes outlived the server: {left:?}"
    );

    let port = free_port();
    let restart = Instant::now();
    let mut server = start_server(port, &data);
    eprintln!("restart: listening after {:?}", restart.elapsed());
    let (status, body) = http(port, "GET", &format!("/v1/sandboxes/{id}"), None, "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"]["state"], "Terminated", "{v}");
    assert_eq!(v["status"]["reason"], "server_restart", "{v}");
    assert_eq!(
        std::fs::read_to_string(data.join("workspaces").join(&id).join("f")).expect("kept file"),
        "keep\n"
    );
    let (status, body) = http(port, "POST", "/v1/sandboxes", None, create);
    assert_eq!(status, 202, "{body}");
    let new_id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = http(port, "DELETE", &format!("/v1/sandboxes/{new_id}"), None, "");
    assert_eq!(status, 204);

    // SIGTERM ends the new server's sandboxes before it exits.
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    );
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(data);
}
