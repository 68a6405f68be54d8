//! End-to-end tests of `runbox run` and `runbox doctor` through the real binary: exit codes,
//! the JSON report, output streaming and caps, binds and workspace ownership, and the
//! unprivileged fallback. The escape attempts live in runbox-probe's suite.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod image;

const RUNBOX: &str = env!("CARGO_BIN_EXE_runbox");

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Privileged tests skip loudly (never silently pass) when not root; CI runs as root.
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!(
                "SKIPPED (needs root): {} creates namespaces, cgroups and idmapped mounts",
                module_path!()
            );
            return;
        }
    };
}

fn runbox(args: &[&str]) -> Output {
    Command::new(RUNBOX)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runbox starts")
}

fn json(args: &[&str]) -> (Value, i32) {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let out = runbox(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runbox-cli-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn exit_code_and_output_pass_through() {
    require_root!();
    let out = runbox(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn python_prints_one() {
    require_root!();
    let out = runbox(&["run", "--", "python3", "-c", "print(1)"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
}

#[test]
fn json_report_has_every_field() {
    require_root!();
    let (v, code) = json(&["--", "sh", "-c", "echo hi; exit 2"]);
    assert_eq!(code, 2);
    assert_eq!(v["status"], "exit_nonzero");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["signal"], Value::Null);
    assert_eq!(v["stdout"], "hi\n");
    for key in [
        "limits_hit",
        "wall_ms",
        "cpu_user_ms",
        "cpu_sys_ms",
        "peak_memory_bytes",
        "stdout_truncated",
        "stderr_truncated",
        "sandbox_id",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    let e = &v["enforcement"];
    assert_eq!(
        e["namespaces"],
        serde_json::json!(["user", "pid", "mount", "net", "ipc", "uts", "cgroup"])
    );
    assert_eq!(e["no_new_privs"], true);
    assert_eq!(e["capabilities_dropped"], true);
    assert_eq!(e["seccomp"]["mode"], "filter");
    assert_eq!(e["identity"]["per_sandbox_host_ids"], true);
    assert!(e["cgroup"]["version"].is_string(), "{e}");
    // Nothing can pause a one-shot run, so on v1 it gets no freezer group (v2 needs none).
    if e["cgroup"]["version"] == "v1" {
        assert_eq!(e["cgroup"]["freezer"], false, "{e}");
        assert!(
            !e["cgroup"]["controllers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "freezer")),
            "{e}"
        );
    }
    assert!(v["sandbox_id"].as_str().is_some_and(|s| s.len() == 32));
}

/// `run` is parsed on its own (without the other subcommands); its help and usage read as a
/// subcommand's, and the top-level help still lists it.
#[test]
fn run_help_is_the_subcommands_help() {
    let out = runbox(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.starts_with("Run one command inside a fresh sandbox and wait for it"),
        "{help}"
    );
    assert!(
        help.contains("Usage: runbox run [OPTIONS] [CMD]..."),
        "{help}"
    );
    for option in [
        "--memory",
        "--cpus",
        "--pids",
        "--timeout",
        "--json",
        "--rootfs",
    ] {
        assert!(help.contains(option), "{option} missing: {help}");
    }
    let out = runbox(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run "), "{help}");
    // clap calls a missing value an invalid one: a data error, as with the full parser.
    let out = runbox(&["run", "--pids"]);
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn killed_command_exits_128_plus_signal() {
    require_root!();
    let out = runbox(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
}

#[test]
fn missing_command_is_a_usage_error() {
    let out = runbox(&["run"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no command"));
}

#[test]
fn unparsable_limits_are_data_errors() {
    for args in [
        ["run", "--memory", "lots", "--", "true"],
        ["run", "--timeout", "soon", "--", "true"],
        ["run", "--cpus", "-1", "--", "true"],
    ] {
        let out = runbox(&args);
        assert_eq!(
            out.status.code(),
            Some(65),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[test]
fn unknown_command_is_127_and_non_executable_is_126() {
    require_root!();
    let out = runbox(&["run", "--", "definitely-not-a-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = temp_dir("noexec");
    let script = dir.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    let bind = format!("{}:/opt/script.sh", script.display());
    let out = runbox(&["run", "--ro", &bind, "--", "/opt/script.sh"]);
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn bad_bind_source_is_a_clear_usage_error() {
    require_root!();
    let out = runbox(&["run", "--ro", "/nonexistent/path:/data", "--", "true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/path"));
    let out = runbox(&["run", "--ro", "/usr:/proc/x", "--", "true"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn output_is_capped_and_marked_truncated() {
    require_root!();
    let (v, code) = json(&[
        "--output-limit",
        "1000",
        "--",
        "sh",
        "-c",
        "head -c 5000 /dev/zero | tr '\\0' a; echo done >&2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["stdout"].as_str().map(str::len), Some(1000));
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stderr_truncated"], false);
    assert!(v["limits_hit"]
        .as_array()
        .is_some_and(|a| a.contains(&Value::from("output"))));
}

#[test]
fn workspace_files_land_on_the_host_owned_by_the_directory_owner() {
    require_root!();
    let dir = temp_dir("ws");
    fs::write(dir.join("in.txt"), "hello").expect("write");
    let ws = dir.display().to_string();
    let out = runbox(&[
        "run",
        "--workspace",
        &ws,
        "--",
        "sh",
        "-c",
        "cat in.txt > out.txt; id -u; stat -c %u in.txt",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n1000\n");
    let meta = fs::metadata(dir.join("out.txt")).expect("out.txt written");
    assert_eq!(
        fs::read_to_string(dir.join("out.txt")).expect("read"),
        "hello"
    );
    assert_eq!(
        meta.uid(),
        fs::metadata(&dir).expect("dir").uid(),
        "new file not owned by the workspace owner"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn ro_binds_are_read_only_and_rw_binds_writable() {
    require_root!();
    let dir = temp_dir("binds");
    fs::create_dir_all(dir.join("ro")).expect("mkdir");
    fs::create_dir_all(dir.join("rw")).expect("mkdir");
    fs::write(dir.join("ro/data"), "x").expect("write");
    let ro = format!("{}:/data", dir.join("ro").display());
    let rw = format!("{}:/out", dir.join("rw").display());
    let out = runbox(&[
        "run",
        "--ro",
        &ro,
        "--rw",
        &rw,
        "--",
        "sh",
        "-c",
        "cat /data/data; touch /data/new 2>/dev/null && echo BAD; echo ok > /out/file",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x");
    assert!(!dir.join("ro/new").exists());
    assert_eq!(
        fs::read_to_string(dir.join("rw/file")).expect("rw file"),
        "ok\n"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn environment_is_clean_plus_what_was_given() {
    require_root!();
    let out = Command::new(RUNBOX)
        .args([
            "run",
            "--env",
            "GREETING=hi there",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING|$HOME|${RUNBOX_SECRET:-unset}|$(pwd)|$(hostname)\"",
        ])
        .env("RUNBOX_SECRET", "leak")
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi there|/workspace|unset|/workspace|runbox\n"
    );
}

#[test]
fn stdin_from_a_pipe_reaches_the_command() {
    require_root!();
    let mut child = Command::new(RUNBOX)
        .args(["run", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
}

#[test]
fn timeout_kills_and_reports() {
    require_root!();
    let (v, code) = json(&["--timeout", "300ms", "--", "sleep", "30"]);
    assert_eq!(v["status"], "timeout");
    assert_eq!(v["limits_hit"], serde_json::json!(["timeout"]));
    assert_eq!(v["signal"], 9);
    assert_eq!(code, 137);
    assert!(v["wall_ms"]
        .as_f64()
        .is_some_and(|ms| (300.0..5000.0).contains(&ms)));
}

#[test]
fn file_size_limit_is_reported() {
    require_root!();
    // The writer itself must be the command: a shell would turn SIGXFSZ into exit code 153.
    let (v, _) = json(&[
        "--file-size",
        "1M",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/tmp/big",
        "bs=1M",
        "count=2",
    ]);
    assert_eq!(v["signal"], 25, "{v}");
    assert!(
        v["limits_hit"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from("file_size"))),
        "{v}"
    );
}

/// A minimal image: dash and the C library copied into a directory.
fn tiny_rootfs(dir: &Path) -> bool {
    let libdir = dir.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&libdir).expect("mkdir");
    fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
    fs::create_dir_all(dir.join("usr/lib64")).expect("mkdir");
    let copies = [
        ("/usr/bin/dash", dir.join("usr/bin/sh")),
        (
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            libdir.join("libc.so.6"),
        ),
        (
            "/usr/lib64/ld-linux-x86-64.so.2",
            dir.join("usr/lib64/ld-linux-x86-64.so.2"),
        ),
    ];
    for (from, to) in &copies {
        if fs::copy(fs::canonicalize(from).unwrap_or_else(|_| from.into()), to).is_err() {
            return false;
        }
    }
    fs::set_permissions(dir.join("usr/bin/sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, dir.join(link)).expect("symlink");
    }
    fs::write(dir.join("usr/bin/marker"), "from the image\n").expect("marker");
    true
}

#[test]
fn rootfs_replaces_the_host_usr() {
    require_root!();
    let dir = temp_dir("rootfs");
    if !tiny_rootfs(&dir) {
        eprintln!("SKIPPED: could not assemble a tiny rootfs from this host's dash and libc");
        return;
    }
    let root = dir.display().to_string();
    let out = runbox(&[
        "run",
        "--rootfs",
        &root,
        "--",
        "/bin/sh",
        "-c",
        "read l < /usr/bin/marker; echo $l; [ -e /usr/bin/python3 ] && echo HOST",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the image\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn doctor_reports_and_its_live_check_passes() {
    require_root!();
    let out = runbox(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["live_check"]["ok"], true);
    assert!(v["host"]["landlock_abi"].is_number());
    assert!(v["host"]["parallel_start"]["available"].is_boolean(), "{v}");
    let text = runbox(&["doctor"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("`runbox run` will use"));
    assert!(text.contains("parallel start"), "{text}");
}

/// Without root the sandbox still runs, as the caller's own uid, and says so; an explicit
/// limit it cannot enforce (no cgroup permission) is a distinct error.
#[test]
fn unprivileged_caller_gets_an_honest_report() {
    require_root!();
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(RUNBOX)
            .args(args)
            .current_dir("/")
            .output()
            .expect("setpriv runs")
    };
    let probe = nobody(&["run", "--json", "--", "id", "-u"]);
    let text = String::from_utf8_lossy(&probe.stdout);
    if text.contains("cannot create the sandbox's namespaces") {
        eprintln!("SKIPPED: this host forbids unprivileged user namespaces: {text}");
        return;
    }
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&probe.stderr)));
    assert_eq!(v["stdout"], "1000\n");
    assert_eq!(v["enforcement"]["identity"]["per_sandbox_host_ids"], false);
    assert_eq!(v["enforcement"]["identity"]["host_uid"], 65534);
    assert!(v["enforcement"]["cgroup"]["unavailable"].is_string());

    let explicit = nobody(&["run", "--memory", "64M", "--", "true"]);
    assert_eq!(
        explicit.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&explicit.stderr)
    );
    assert!(String::from_utf8_lossy(&explicit.stderr).contains("hint"));
}

#[test]
fn exec_runs_cells_in_one_stateful_context() {
    require_root!();
    let out = runbox(&["exec", "--cell", "x = 41", "--cell", "x + 1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    let out = runbox(&[
        "exec",
        "--lang",
        "bash",
        "--cell",
        "cd /tmp; X=7",
        "--cell",
        "echo $X $(pwd)",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "7 /tmp\n");
}

#[test]
fn exec_json_prints_execd_events_and_fails_on_errors() {
    require_root!();
    let out = runbox(&[
        "exec",
        "--json",
        "--deny-import",
        "socket",
        "--cell",
        "import math",
        "--cell",
        "import socket",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(events.iter().all(|e| e["timestamp"].is_i64()));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "execution_complete")
            .count(),
        2
    );
    let err = events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("error event");
    assert!(
        err["error"]["evalue"]
            .as_str()
            .is_some_and(|v| v.contains("socket")),
        "{err}"
    );
}

#[test]
fn repl_reads_cells_from_stdin() {
    require_root!();
    let mut child = Command::new(RUNBOX)
        .args(["repl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"def f(n):\n    return n * 2\n\nf(21)\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

/// Regression: every uid change cleared the parent-death signal, so a `kill -9` of runbox
/// left its sandbox running.
#[test]
fn sandbox_dies_with_a_killed_runbox() {
    require_root!();
    let marker = format!("{}.{}", 40 + std::process::id() % 50, std::process::id());
    let mut child = Command::new(RUNBOX)
        .args(["run", "--", "sleep", &marker])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let running = || {
        fs::read_dir("/proc").expect("proc").flatten().any(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
        })
    };
    for _ in 0..100 {
        if running() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(running(), "the sandbox never started");
    let _ = child.kill();
    let _ = child.wait();
    for _ in 0..100 {
        if !running() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the sandbox outlived runbox");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
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

fn start_server(port: u16, data: &Path) -> std::process::Child {
    let child = Command::new(RUNBOX)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("RUNBOX_API_KEYS", "t:restart-key-123")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// `kill -9` of the server: its sandboxes die with it, and on the next start their records
/// say so while files written to their workspaces are still there.
#[test]
fn server_recovers_after_kill_9_and_keeps_workspace_files() {
    require_root!();
    let data = temp_dir("restart");
    let port = free_port();
    let mut server = start_server(port, &data);
    let key = [("OPEN-SANDBOX-API-KEY", "restart-key-123")];
    let (status, body) = http(
        port,
        "POST",
        "/v1/sandboxes",
        &key,
        r#"{"image":{"uri":"default"},"entrypoint":["tail","-f","/dev/null"],"resourceLimits":{"cpu":"1","memory":"256Mi"}}"#,
    );
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, ep) = http(
        port,
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/44772"),
        &key,
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
        &[("X-EXECD-ACCESS-TOKEN", &token)],
        r#"{"command":"echo precious > /workspace/kept.txt && sleep 0.01 && echo done"}"#,
    );
    assert_eq!(status, 200);
    assert!(out.contains("done"), "{out}");

    server.kill().expect("kill -9");
    let _ = server.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let port = free_port();
    let mut server = start_server(port, &data);
    let (_, body) = http(port, "GET", &format!("/v1/sandboxes/{id}"), &key, "");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"]["state"], "Terminated", "{v}");
    assert_eq!(v["status"]["reason"], "server_restart");
    assert_eq!(
        fs::read_to_string(data.join("workspaces").join(&id).join("kept.txt")).expect("kept"),
        "precious\n"
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = fs::remove_dir_all(data);
}
