//! Host-side bait the sandbox must not reach: a canary file and a writable directory under
//! the host's /tmp, a TCP listener on the host's loopback, an abstract unix socket in the
//! host's network namespace, a host process with a marker in its command line, and the
//! caller's environment (RUNBOX_TEST_SECRET on the runbox process).

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::{
    in_jail, on_host, privileged, probe, unique, TempDir, SECRET_VALUE, SECRET_VAR,
};
use crate::{judge, Jail};

fn host_ok(test: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let line = on_host(args, env);
    eprintln!("HOST {test}: {} ({})", line.summary(), line.0["detail"]);
    assert_eq!(
        line.outcome(),
        "ok",
        "positive control {test} on the host: {}",
        line.0
    );
    line.data().clone()
}

#[test]
fn host_canary_file_is_not_readable() {
    if !privileged("host_canary_file_is_not_readable") {
        return;
    }
    let dir = TempDir::new("canary");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let canary = dir.0.join("canary");
    std::fs::write(&canary, "host canary\n").expect("write canary");
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = canary.to_str().expect("utf-8 temp path");
    host_ok(
        "host_canary_file_is_not_readable",
        &["read-file", path],
        &[],
    );
    let run = in_jail(&["read-file", path], &[]);
    judge(
        "host_canary_file_is_not_readable",
        "host files outside the binds",
        &run,
        Jail::Outcome("ENOENT"),
    );
}

#[test]
fn host_tmp_is_not_writable() {
    if !privileged("host_tmp_is_not_writable") {
        return;
    }
    let dir = TempDir::new("writable");
    // World-writable, so only the sandbox's view can stop uid 1000.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let control = dir.0.join("host-control");
    host_ok(
        "host_tmp_is_not_writable",
        &["write-file", control.to_str().expect("utf-8")],
        &[],
    );
    let escaped = dir.0.join("escaped");
    let run = in_jail(&["write-file", escaped.to_str().expect("utf-8")], &[]);
    assert!(
        !escaped.exists(),
        "the sandbox created {} on the host",
        escaped.display()
    );
    judge(
        "host_tmp_is_not_writable",
        "host /tmp is not the sandbox's /tmp",
        &run,
        Jail::Outcome("ENOENT"),
    );
}

#[test]
fn host_loopback_listener_is_unreachable() {
    if !privileged("host_loopback_listener_is_unreachable") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen on host loopback");
    let port = listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string();
    let args = ["connect-tcp", "127.0.0.1", port.as_str()];
    host_ok("host_loopback_listener_is_unreachable", &args, &[]);
    let run = in_jail(&args, &[]);
    judge(
        "host_loopback_listener_is_unreachable",
        "own network namespace",
        &run,
        Jail::Outcome("ECONNREFUSED"),
    );
}

#[test]
fn host_abstract_socket_is_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    if !privileged("host_abstract_socket_is_unreachable") {
        return;
    }
    let name = unique("abstract");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let _listener = UnixListener::bind_addr(&addr).expect("bind abstract socket on the host");
    let args = ["connect-abstract", name.as_str()];
    host_ok("host_abstract_socket_is_unreachable", &args, &[]);
    let run = in_jail(&args, &[]);
    judge(
        "host_abstract_socket_is_unreachable",
        "abstract unix sockets are scoped by network namespace",
        &run,
        Jail::Outcome("ECONNREFUSED"),
    );
}

/// The probe's "hex:" form of a marker: the sandbox's first process may legitimately carry
/// the probe's arguments in its command line, but never the decoded marker.
fn hex_marker(marker: &str) -> String {
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    format!("hex:{hex}")
}

/// A host process carrying a marker in its command line; killed on drop.
struct MarkedProcess(std::process::Child);

impl Drop for MarkedProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nothing_from_the_host(data: &Value) -> Result<(), String> {
    let empty = |key: &str| data[key].as_array().is_some_and(Vec::is_empty);
    let pids = data["pids"].as_array().map_or(usize::MAX, Vec::len);
    let mut problems = Vec::new();
    if !empty("marker_found_in") {
        problems.push(format!(
            "host process visible (marker in pids {})",
            data["marker_found_in"]
        ));
    }
    if !empty("env_found_in") || data["env_in_own_environment"] != Value::Bool(false) {
        problems.push(format!(
            "{SECRET_VAR} visible: in /proc/*/environ of {}, in own environment {}",
            data["env_found_in"], data["env_in_own_environment"]
        ));
    }
    if pids > 3 {
        problems.push(format!("{pids} processes visible: {}", data["pids"]));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

#[test]
fn host_processes_and_caller_env_are_invisible() {
    if !privileged("host_processes_and_caller_env_are_invisible") {
        return;
    }
    let marker = unique("marker");
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 30; :", marker.as_str()])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start a marked host process");
    let _marked = MarkedProcess(child);
    // Give sh a moment to exist in /proc with its final command line.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let encoded = hex_marker(&marker);
    let args = ["list-procs", encoded.as_str(), SECRET_VAR];
    let seen = host_ok(
        "host_processes_and_caller_env_are_invisible",
        &args,
        &[(SECRET_VAR, SECRET_VALUE)],
    );
    assert!(
        seen["marker_found_in"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && seen["env_in_own_environment"] == Value::Bool(true),
        "the probe on the host should see the marked process and the variable: {seen}"
    );
    let run = in_jail(&args, &[]);
    judge(
        "host_processes_and_caller_env_are_invisible",
        "own pid namespace, clean environment",
        &run,
        Jail::Data(nothing_from_the_host),
    );
}

#[test]
fn host_process_cannot_be_signalled() {
    if !privileged("host_process_cannot_be_signalled") {
        return;
    }
    let child = std::process::Command::new("/bin/sleep")
        .arg("30")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start a host process");
    let target = MarkedProcess(child);
    let pid = target.0.id().to_string();
    let args = ["kill", pid.as_str()];
    host_ok("host_process_cannot_be_signalled", &args, &[]);
    let run = in_jail(&args, &[]);
    judge(
        "host_process_cannot_be_signalled",
        "own pid namespace",
        &run,
        Jail::Outcome("ESRCH"),
    );
}

fn no_cmdline_shows_the_marker(data: &Value) -> Result<(), String> {
    if data["marker_found_in"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        return Ok(());
    }
    Err(format!(
        "the host-side runbox command line is readable inside: marker in pids {}, command lines {}",
        data["marker_found_in"], data["cmdlines"]
    ))
}

/// The `runbox run` command line holds host paths (--ro/--rw/--workspace sources) and
/// --env values; a process in the sandbox must not read it from /proc/N/cmdline.
#[test]
fn runbox_command_line_is_invisible() {
    if !privileged("runbox_command_line_is_invisible") {
        return;
    }
    let host_path = probe().display().to_string();
    let encoded = hex_marker(&host_path);
    let run = in_jail(&["list-procs", encoded.as_str(), SECRET_VAR], &[]);
    judge(
        "runbox_command_line_is_invisible",
        "host paths and arguments of the caller",
        &run,
        Jail::Data(no_cmdline_shows_the_marker),
    );
}
