//! The shell-free path of /command (a line of plain words is exec'd without bash) against bash
//! itself: the same line sent as `{"argv": ["/bin/bash", "-c", line]}` takes exactly the
//! shell path (same environment, working directory, process group and supervision), so every
//! case runs both ways and must come out the same.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

const BASH: &str = "/bin/bash";

#[derive(Debug, PartialEq)]
struct Run {
    stdout: Vec<String>,
    stderr: Vec<String>,
    status: Vec<String>,
    code: i32,
}

fn have_bash() -> bool {
    let there = Path::new(BASH).is_file();
    if !there {
        eprintln!("SKIPPED: {BASH} is missing, and with it the shell-free path");
    }
    there
}

/// `{"command": line}` and `{"argv": [bash, -c, line]}`, each with the fields of `extra`.
fn requests(line: &str, extra: &Value) -> [Value; 2] {
    let mut direct = json!({ "command": line });
    let mut shell = json!({ "argv": [BASH, "-c", line] });
    for body in [&mut direct, &mut shell] {
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
    }
    [direct, shell]
}

async fn run(s: &AppState, body: Value) -> Run {
    let (status, text) = call(s, "POST", "/command", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}: {text}");
    let ev = events(&text);
    let code = ev
        .iter()
        .find_map(|e| e.error.as_ref())
        .map_or(0, |e| e.evalue.parse().expect("exit code"));
    Run {
        stdout: texts(&ev, EventKind::Stdout),
        stderr: texts(&ev, EventKind::Stderr),
        status: texts(&ev, EventKind::Status),
        code,
    }
}

/// The line both ways; the environment's order is bash's hash order, so `env` output is
/// compared as a set.
async fn both(s: &AppState, line: &str, extra: &Value) -> (Run, Run) {
    let [direct, shell] = requests(line, extra);
    let (mut d, mut b) = (run(s, direct).await, run(s, shell).await);
    if line.ends_with("env") {
        d.stdout.sort();
        b.stdout.sort();
    }
    (d, b)
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn simple_commands_match_bash() {
    if !have_bash() {
        return;
    }
    let s = state();
    let ws = s.config.workspace.clone();
    let real = ws.join("real");
    let link = ws.join("link");
    let bin = ws.join("bin");
    std::fs::create_dir_all(&real).expect("mkdir");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    write(&real.join("file"), "x\n", 0o644);
    let not_executable = ws.join("not-executable");
    write(&not_executable, "echo should not run\n", 0o644);
    write(
        &bin.join("runbox-noexec-xyz"),
        "echo should not run\n",
        0o644,
    );
    // No `#!` line: exec fails (ENOEXEC) and bash runs the file as a script.
    let script = ws.join("no-shebang");
    write(
        &script,
        "echo \"no #! line: $0 ${BASH_VERSION:+under bash}\"\n",
        0o755,
    );
    let bad_interpreter = ws.join("bad-interpreter");
    write(&bad_interpreter, "#!/nonexistent/sh\necho no\n", 0o755);

    let path_with_bin = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let (link, real) = (link.display().to_string(), real.display().to_string());
    let cases: Vec<(String, Value)> = vec![
        ("echo hi".into(), json!({})),
        ("echo -n x".into(), json!({})),
        ("echo -e a  b -n".into(), json!({})),
        ("echo".into(), json!({})),
        ("true".into(), json!({})),
        ("false".into(), json!({})),
        ("true a b".into(), json!({})),
        ("ls /".into(), json!({})),
        ("ls -a".into(), json!({ "cwd": real })),
        ("ls /nonexistent-dir-xyz".into(), json!({})),
        ("cat file".into(), json!({ "cwd": link })),
        ("nonexistent-cmd-xyz".into(), json!({})),
        ("nonexistent-cmd-xyz a b".into(), json!({ "cwd": real })),
        ("/nonexistent/cmd".into(), json!({})),
        (not_executable.display().to_string(), json!({})),
        (
            "runbox-noexec-xyz".into(),
            json!({ "envs": { "PATH": path_with_bin } }),
        ),
        (script.display().to_string(), json!({})),
        (bad_interpreter.display().to_string(), json!({})),
        ("env".into(), json!({})),
        ("env".into(), json!({ "cwd": link })),
        (
            "env".into(),
            json!({ "envs": { "SHLVL": "4", "GREETING": "hi" } }),
        ),
        ("/usr/bin/env".into(), json!({ "cwd": "/tmp" })),
        ("pwd".into(), json!({ "cwd": link })),
        ("/bin/pwd".into(), json!({ "cwd": link })),
        ("sh -c exit".into(), json!({})),
    ];
    for (line, extra) in &cases {
        let (direct, shell) = both(&s, line, extra).await;
        assert_eq!(direct, shell, "{line} {extra}");
    }
    // The cases are not vacuous.
    let (direct, _) = both(&s, "nonexistent-cmd-xyz", &json!({})).await;
    assert_eq!(direct.code, 127);
    assert_eq!(
        direct.stderr,
        vec!["/bin/bash: line 1: nonexistent-cmd-xyz: command not found"]
    );
    let (direct, _) = both(&s, &not_executable.display().to_string(), &json!({})).await;
    assert_eq!(direct.code, 126);
    let (direct, _) = both(&s, &script.display().to_string(), &json!({})).await;
    assert_eq!(direct.stdout.len(), 1);
    assert!(direct.stdout[0].ends_with("under bash"), "{direct:?}");
    let (direct, _) = both(&s, "env", &json!({ "cwd": link })).await;
    assert!(direct.stdout.contains(&format!("PWD={real}")), "{direct:?}");
    assert!(direct.stdout.contains(&"_=/usr/bin/env".to_owned()));
}

#[tokio::test]
async fn a_timeout_kills_a_shell_free_command_like_a_shell_one() {
    if !have_bash() {
        return;
    }
    let s = state();
    let [direct, shell] = requests("sleep 10", &json!({ "timeout": 300 }));
    let started = Instant::now();
    let (d, b) = (run(&s, direct).await, run(&s, shell).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeout ignored"
    );
    assert_eq!(d, b);
    assert_eq!(d.code, 137);
    assert_eq!(
        d.status,
        vec!["timed out after 300 ms; the command's process group was killed"]
    );
}

#[tokio::test]
async fn an_interrupt_kills_a_shell_free_command_like_a_shell_one() {
    if !have_bash() {
        return;
    }
    let s = state();
    let mut outcomes = Vec::new();
    for mut body in requests("sleep 10", &json!({ "background": true })) {
        let (_, text) = call(&s, "POST", "/command", Some(body.take())).await;
        let id = events(&text)[0].text.clone().expect("id");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _) = call(&s, "DELETE", &format!("/command?id={id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let deadline = Instant::now() + Duration::from_secs(5);
        let v = loop {
            let (_, text) = call(&s, "GET", &format!("/command/status/{id}"), None).await;
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["running"] == false || Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Not `error`: the interrupt's "interrupted" and the supervisor's "exit code 137"
        // race to set it, whichever path started the command.
        outcomes.push((v["running"].clone(), v["exit_code"].clone()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[0], (json!(false), json!(137)));
}

#[tokio::test]
async fn shell_syntax_still_runs_under_bash() {
    let s = state();
    let home = s.config.workspace.display().to_string();
    for (line, expected) in [
        ("echo $HOME", home.as_str()),
        ("echo a | tr a b", "b"),
        ("cd /tmp && pwd", "/tmp"),
        ("X=1 env", "X=1"),
        ("echo 'a  b'", "a  b"),
        ("pwd", "/"),
    ] {
        let out = run(&s, json!({ "command": line, "cwd": "/" })).await;
        assert_eq!(out.code, 0, "{line}: {out:?}");
        assert!(out.stdout.iter().any(|l| l == expected), "{line}: {out:?}");
    }
}
