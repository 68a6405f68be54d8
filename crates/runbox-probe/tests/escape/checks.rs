//! Expectations that are more than an errno: probe data and run reports.

use serde_json::Value;

use crate::harness::JailRun;

fn expect(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// The probe exited normally: status "ok", exit code 0, runbox exit 0.
pub fn ran_to_completion(run: &JailRun) -> Option<String> {
    let ok = run.status() == "ok" && run.report["exit_code"] == 0 && run.exit_code == Some(0);
    (!ok).then(|| {
        format!(
            "expected status ok with exit code 0, got status {} exit_code {} signal {} (runbox exit {:?})",
            run.status(),
            run.report["exit_code"],
            run.report["signal"],
            run.exit_code
        )
    })
}

pub fn killed_by(run: &JailRun, signal: i32) -> Result<(), String> {
    expect(
        run.status() == "signaled"
            && run.report["signal"] == signal
            && run.exit_code == Some(128 + signal),
        || {
            format!(
                "expected status signaled with signal {signal} and runbox exit {}, got status {} signal {} (runbox exit {:?}); probe said {:?}",
                128 + signal,
                run.status(),
                run.report["signal"],
                run.exit_code,
                run.probe.as_ref().map(|p| p.0.to_string())
            )
        },
    )
}

fn limit_kill(run: &JailRun, status: &str, limit: &str) -> Result<(), String> {
    expect(
        run.status() == status && run.limits_hit().contains(&limit) && run.exit_code == Some(137),
        || {
            format!(
                "expected status {status}, limits_hit containing {limit:?} and runbox exit 137 (SIGKILL), got status {} limits_hit {:?} signal {} (runbox exit {:?})",
                run.status(),
                run.limits_hit(),
                run.report["signal"],
                run.exit_code
            )
        },
    )
}

pub fn killed_at_pids_limit(run: &JailRun) -> Result<(), String> {
    limit_kill(run, "signaled", "pids")
}

pub fn killed_by_oom(run: &JailRun) -> Result<(), String> {
    limit_kill(run, "oom", "memory")
}

/// The first process exits 0 at once; its daemon grandchild must not keep the run (or the
/// host) busy: the leftover check then confirms no sandbox-uid process survived.
pub fn daemon_reaped(run: &JailRun) -> Result<(), String> {
    if let Some(problem) = ran_to_completion(run) {
        return Err(problem);
    }
    expect(
        run.probe.as_ref().is_some_and(|p| p.outcome() == "ok"),
        || format!("the daemonizing probe did not report: {:?}", run.stdout()),
    )
}

pub fn output_capped(run: &JailRun) -> Result<(), String> {
    let len = run.stdout().len();
    expect(
        run.report["stdout_truncated"] == Value::Bool(true)
            && len <= 4096
            && run.limits_hit().contains(&"output"),
        || {
            format!(
                "expected stdout_truncated true, at most 4096 bytes of stdout and limits_hit containing \"output\"; got stdout_truncated {} with {len} bytes, limits_hit {:?}, status {}",
                run.report["stdout_truncated"],
                run.limits_hit(),
                run.status()
            )
        },
    )
}

fn names(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

pub fn only_loopback(data: &Value) -> Result<(), String> {
    let proc = names(&data["interfaces"]);
    let netlink = names(&data["if_nameindex"]);
    expect(proc == ["lo"] && netlink == ["lo"], || {
        format!(
            "expected only lo, /proc/net/dev lists {proc:?}, if_nameindex {}",
            data["if_nameindex"]
        )
    })
}

pub fn has_loopback(data: &Value) -> Result<(), String> {
    expect(names(&data["interfaces"]).contains(&"lo"), || {
        format!("the host lists no lo: {data}")
    })
}

fn hex(data: &Value, key: &str) -> Option<u64> {
    u64::from_str_radix(data[key].as_str()?, 16).ok()
}

pub fn fully_dropped(data: &Value) -> Result<(), String> {
    let sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
    let mut problems: Vec<String> = sets
        .iter()
        .filter(|set| hex(data, set) != Some(0))
        .map(|set| format!("{set} is {}", data[*set]))
        .collect();
    if data["NoNewPrivs"] != "1" {
        problems.push(format!("NoNewPrivs is {}", data["NoNewPrivs"]));
    }
    if data["Seccomp"] != "2" {
        problems.push(format!("Seccomp is {} (2 = filter)", data["Seccomp"]));
    }
    expect(problems.is_empty(), || problems.join(", "))
}

pub fn root_has_caps(data: &Value) -> Result<(), String> {
    expect(hex(data, "CapEff").is_some_and(|c| c != 0), || {
        format!("root on the host shows no effective capabilities: {data}")
    })
}

pub fn user_1000(data: &Value) -> Result<(), String> {
    let ids_ok = ["uid", "euid", "gid", "egid"]
        .iter()
        .all(|key| data[*key] == 1000);
    let groups = data["groups"].as_array().cloned().unwrap_or_default();
    let groups_ok = groups.is_empty() || groups == [Value::from(1000)];
    expect(ids_ok && groups_ok, || {
        format!("expected uid/gid 1000 and groups [] or [1000], got {data}")
    })
}

pub fn host_root(data: &Value) -> Result<(), String> {
    expect(data["uid"] == 0, || format!("not root on the host: {data}"))
}

pub fn only_stdio(data: &Value) -> Result<(), String> {
    let fds: Vec<i64> = data["fds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let dir_fd = data["dir_fd"].as_i64();
    let open: Vec<i64> = fds.into_iter().filter(|fd| Some(*fd) != dir_fd).collect();
    expect(open == [0, 1, 2], || {
        format!(
            "expected only 0, 1, 2 open, got {open:?}: {}",
            data["targets"]
        )
    })
}

pub fn hostname_runbox(data: &Value) -> Result<(), String> {
    expect(data["hostname"] == "runbox", || {
        format!("hostname is {}", data["hostname"])
    })
}

pub fn hostname_not_runbox(data: &Value) -> Result<(), String> {
    expect(data["hostname"] != "runbox", || {
        "the host itself is called runbox: the jail's hostname check proves nothing".into()
    })
}
