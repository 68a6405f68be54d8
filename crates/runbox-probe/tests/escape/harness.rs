//! Running the probe: directly on the host (positive controls) and inside `runbox run`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::leftovers::{Sandbox, Snapshot};

/// Where the probe appears inside the sandbox.
pub const PROBE_IN_JAIL: &str = "/opt/probe/runbox-probe";
/// Set on every `runbox run` process; nothing inside may see it.
pub const SECRET_VAR: &str = "RUNBOX_TEST_SECRET";
pub const SECRET_VALUE: &str = "rbp-secret-3f9c1d7e";
/// Applied unless a case sets its own --timeout, so a jail bug cannot hang the suite.
const DEFAULT_TIMEOUT: &str = "10s";
/// How long `runbox run` itself may take before the test gives up on it.
const RUNBOX_WALL_LIMIT: Duration = Duration::from_secs(30);

/// Jail runs are serialized so that the leftover checks (host processes, cgroups, mounts,
/// /tmp) can attribute whatever appeared to the run that just ended. Host-side controls and
/// everything else run in parallel.
static JAIL_RUNS: Mutex<()> = Mutex::new(());

pub fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runbox-probe"))
}

pub fn runbox() -> PathBuf {
    let probe = probe();
    let runbox = probe
        .parent()
        .expect("the probe binary lives in a target directory")
        .join("runbox");
    assert!(
        runbox.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        runbox.display()
    );
    runbox
}

/// True when the test may run; otherwise prints why it is skipped.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED (needs root): {test}: the sandbox needs root for its uid maps and cgroups, and the positive controls need root's capabilities");
    false
}

/// The probe's JSON line.
#[derive(Debug, Clone)]
pub struct ProbeLine(pub Value);

impl ProbeLine {
    pub fn parse(stdout: &str) -> Option<Self> {
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
            .find(|v| v.get("case").is_some() && v.get("outcome").is_some())
            .map(ProbeLine)
    }

    pub fn outcome(&self) -> &str {
        self.0["outcome"].as_str().unwrap_or("?")
    }

    pub fn errno_name(&self) -> &str {
        self.0["errno_name"].as_str().unwrap_or("")
    }

    /// "ok" or the errno name: what the tables compare against.
    pub fn summary(&self) -> String {
        match self.outcome() {
            "ok" => "ok".into(),
            _ => self.errno_name().into(),
        }
    }

    pub fn data(&self) -> &Value {
        &self.0["data"]
    }
}

/// Runs the probe directly on the host.
pub fn on_host(args: &[&str], env: &[(&str, &str)]) -> ProbeLine {
    let output = Command::new(probe())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the probe on the host");
    let stdout = String::from_utf8_lossy(&output.stdout);
    ProbeLine::parse(&stdout).unwrap_or_else(|| {
        panic!(
            "probe {args:?} on the host printed no report line ({}); stdout {stdout:?} stderr {:?}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Like `on_host`, but serialized with jail runs (for controls that touch host state the
/// leftover checks look at, such as the mount table).
pub fn on_host_exclusive(args: &[&str]) -> ProbeLine {
    let _turn = JAIL_RUNS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    on_host(args, &[])
}

/// What one `runbox run --json` produced.
#[derive(Debug)]
pub struct JailRun {
    pub command: String,
    pub exit_code: Option<i32>,
    pub report: Value,
    pub stderr: String,
    pub probe: Option<ProbeLine>,
    pub leftovers: Vec<String>,
}

impl JailRun {
    pub fn status(&self) -> &str {
        self.report["status"].as_str().unwrap_or("?")
    }

    pub fn limits_hit(&self) -> Vec<&str> {
        self.report["limits_hit"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    pub fn stdout(&self) -> &str {
        self.report["stdout"].as_str().unwrap_or("")
    }

    /// The report without the captured streams, for failure messages.
    pub fn describe(&self) -> String {
        let mut report = self.report.clone();
        for stream in ["stdout", "stderr"] {
            if let Some(text) = report[stream].as_str() {
                let head: String = text.chars().take(400).collect();
                report[stream] = Value::String(format!("{head}... ({} bytes)", text.len()));
            }
        }
        format!(
            "command: {}\nrunbox exit code: {:?}\nreport: {report}\nrunbox stderr: {}",
            self.command, self.exit_code, self.stderr
        )
    }
}

/// Runs `runbox run --json --ro PROBE:/opt/probe/runbox-probe LIMITS -- PROBE ARGS`.
pub fn in_jail(args: &[&str], limits: &[&str]) -> JailRun {
    let runbox = runbox();
    let mut argv: Vec<String> = vec![
        "run".into(),
        "--json".into(),
        "--ro".into(),
        format!("{}:{PROBE_IN_JAIL}", probe().display()),
    ];
    if !limits.contains(&"--timeout") {
        argv.extend(["--timeout".into(), DEFAULT_TIMEOUT.into()]);
    }
    argv.extend(limits.iter().map(|s| s.to_string()));
    argv.push("--".into());
    argv.push(PROBE_IN_JAIL.into());
    argv.extend(args.iter().map(|s| s.to_string()));
    let command = format!("{} {}", runbox.display(), argv.join(" "));

    let _turn = JAIL_RUNS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = Snapshot::take();
    let (exit_code, stdout, stderr) = run_bounded(
        Command::new(&runbox)
            .args(&argv)
            .env(SECRET_VAR, SECRET_VALUE)
            .stdin(Stdio::null()),
        &command,
    );
    let after = Snapshot::take();
    drop(_turn);

    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "runbox printed no JSON report.\ncommand: {command}\nexit code: {exit_code:?}\nstdout: {stdout}\nstderr: {stderr}"
        )
    });
    let leftovers = before.leftovers_after(&after, Sandbox::from_report(&report).as_ref());
    let probe = report["stdout"].as_str().and_then(ProbeLine::parse);
    JailRun {
        command,
        exit_code,
        report,
        stderr,
        probe,
        leftovers,
    }
}

/// Runs a command to completion with captured output, killing it after RUNBOX_WALL_LIMIT.
fn run_bounded(command: &mut Command, display: &str) -> (Option<i32>, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {display}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + RUNBOX_WALL_LIMIT;
    let status = loop {
        match child.try_wait().expect("wait for runbox") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("runbox did not return within {RUNBOX_WALL_LIMIT:?}: {display}");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    (status.code(), stdout, stderr)
}

/// A name no other test (or earlier run of this one) uses. Never starts with "runbox":
/// the leftover check watches /tmp/runbox*.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("rbp-test-{}-{tag}-{n}", std::process::id())
}

/// A fresh directory under /tmp for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).expect("create test temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
