//! Expectations on probe data (the cases that always "succeed" and report what they saw).

use serde_json::Value;

pub type Check = fn(&Value) -> Result<(), String>;

fn expect(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn names(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// /proc/net/dev and netlink both list exactly `lo`.
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

fn hex(data: &Value, key: &str) -> Option<u64> {
    u64::from_str_radix(data[key].as_str()?, 16).ok()
}

fn no_capabilities(data: &Value) -> Vec<String> {
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .iter()
        .filter(|set| hex(data, set) != Some(0))
        .map(|set| format!("{set} is {}", data[*set]))
        .collect()
}

/// Every capability set empty, no_new_privs set, a seccomp filter installed (mode 2).
pub fn dropped_and_filtered(data: &Value) -> Result<(), String> {
    let mut problems = no_capabilities(data);
    if data["NoNewPrivs"] != "1" {
        problems.push(format!("NoNewPrivs is {}", data["NoNewPrivs"]));
    }
    if data["Seccomp"] != "2" {
        problems.push(format!("Seccomp is {} (2 = filter)", data["Seccomp"]));
    }
    expect(problems.is_empty(), || problems.join(", "))
}

/// gVisor: the capability sets the Sentry reports (it has no CapAmb line) are empty, and
/// no_new_privs, if reported, is set. The Sentry reports no NoNewPrivs line and seccomp mode
/// 0 (code installed no filter of its own); the Sentry's host-side filter is runsc's, and
/// `noNewPrivileges` is in the bundle (the isolation report shows it).
pub fn dropped_in_sentry(data: &Value) -> Result<(), String> {
    let mut problems: Vec<String> = ["CapInh", "CapPrm", "CapEff", "CapBnd"]
        .iter()
        .filter(|set| hex(data, set) != Some(0))
        .map(|set| format!("{set} is {}", data[*set]))
        .collect();
    if !(data["CapAmb"].is_null() || hex(data, "CapAmb") == Some(0)) {
        problems.push(format!("CapAmb is {}", data["CapAmb"]));
    }
    if !(data["NoNewPrivs"].is_null() || data["NoNewPrivs"] == "1") {
        problems.push(format!("NoNewPrivs is {}", data["NoNewPrivs"]));
    }
    expect(problems.is_empty(), || problems.join(", "))
}

/// uid, euid, gid, egid 1000; no supplementary group but 1000.
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

/// Own UTS namespace: "runbox", never the host's name.
pub fn hostname_runbox(data: &Value) -> Result<(), String> {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    expect(data["hostname"] == "runbox" && host != "runbox", || {
        format!("hostname is {} (the host's is {host:?})", data["hostname"])
    })
}

/// Only stdin, stdout and stderr (besides the probe's own listing of /proc/self/fd).
pub fn only_stdio(data: &Value) -> Result<(), String> {
    let dir_fd = data["dir_fd"].as_i64();
    let open: Vec<i64> = data["fds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|fd| Some(*fd) != dir_fd)
        .collect();
    expect(open == [0, 1, 2], || {
        format!(
            "FINDING: descriptors inherited by sandbox code: expected only 0, 1, 2 open, got {open:?}: {}",
            data["targets"]
        )
    })
}
