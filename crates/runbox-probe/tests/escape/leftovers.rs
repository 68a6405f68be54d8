//! What a sandbox must not leave behind on the host: processes running as a sandbox uid,
//! cgroup directories under a `runbox` parent, mounts in the host's mount table, and
//! /tmp/runbox* staging entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Host uids handed to sandboxes when runbox runs as root.
pub const SANDBOX_UIDS: std::ops::Range<u32> = 1_500_000_000..1_500_200_000;

#[derive(Debug)]
pub struct Snapshot {
    /// pid -> (uid, "comm (uid N, state S)") for processes with any uid in SANDBOX_UIDS.
    sandbox_processes: BTreeMap<u32, (u32, String)>,
    cgroup_dirs: BTreeSet<PathBuf>,
    mounts: BTreeSet<String>,
    tmp_entries: BTreeSet<String>,
}

impl Snapshot {
    pub fn take() -> Self {
        Snapshot {
            sandbox_processes: sandbox_processes(),
            cgroup_dirs: cgroup_sandbox_dirs(),
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
            tmp_entries: tmp_runbox_entries(),
        }
    }

    /// What one run left behind, described for a human. With `mine` (from the run's report)
    /// processes and cgroups are attributed exactly, so sandboxes that other people run on
    /// the same host at the same time are not blamed on this run; without it, anything new
    /// counts. Mounts and /tmp entries are compared with the snapshot taken before the run.
    pub fn leftovers_after(&self, after: &Snapshot, mine: Option<&Sandbox>) -> Vec<String> {
        let mut found = Vec::new();
        for (pid, (uid, what)) in &after.sandbox_processes {
            let leftover = match mine {
                Some(sandbox) => sandbox.host_uids.contains(uid),
                None => !self.sandbox_processes.contains_key(pid),
            };
            if leftover {
                found.push(format!("process {pid} {what} still running"));
            }
        }
        for dir in &after.cgroup_dirs {
            let leftover = match mine {
                Some(sandbox) => dir
                    .components()
                    .any(|c| c.as_os_str() == sandbox.id.as_str()),
                None => !self.cgroup_dirs.contains(dir),
            };
            if leftover {
                found.push(format!("cgroup {} left behind", dir.display()));
            }
        }
        for mount in after.mounts.difference(&self.mounts) {
            found.push(format!("new host mount: {mount}"));
        }
        for entry in after.tmp_entries.difference(&self.tmp_entries) {
            found.push(format!("/tmp/{entry} left behind"));
        }
        found
    }
}

/// The identity of one sandbox, from its run report.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    /// The namespace root's host uid and the command's (host_uid - 1 and host_uid).
    pub host_uids: [u32; 2],
}

impl Sandbox {
    pub fn from_report(report: &serde_json::Value) -> Option<Self> {
        let id = report["sandbox_id"].as_str().filter(|id| !id.is_empty())?;
        let host_uid =
            u32::try_from(report["enforcement"]["identity"]["host_uid"].as_u64()?).ok()?;
        Some(Sandbox {
            id: id.to_string(),
            host_uids: [host_uid.wrapping_sub(1), host_uid],
        })
    }
}

fn sandbox_processes() -> BTreeMap<u32, (u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    let mut found = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let uids: Vec<u32> = field("Uid:")
            .split_whitespace()
            .filter_map(|u| u.parse().ok())
            .collect();
        if let Some(uid) = uids.iter().find(|u| SANDBOX_UIDS.contains(u)) {
            let what = format!("{} (uid {uid}, state {})", field("Name:"), field("State:"));
            found.insert(pid, (*uid, what));
        }
    }
    found
}

/// Every directory below a directory named `runbox*` in any cgroup hierarchy.
fn cgroup_sandbox_dirs() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    walk_cgroups(Path::new("/sys/fs/cgroup"), false, 0, &mut found);
    found
}

fn walk_cgroups(dir: &Path, under_runbox: bool, depth: u32, found: &mut BTreeSet<PathBuf>) {
    if depth > 12 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // cgroupfs directories are real directories; skip symlinks (e.g. cpu -> cpu,cpuacct).
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if under_runbox {
            found.insert(path.clone());
        }
        let is_runbox = entry.file_name().to_string_lossy().starts_with("runbox");
        walk_cgroups(&path, under_runbox || is_runbox, depth + 1, found);
    }
}

fn tmp_runbox_entries() -> BTreeSet<String> {
    std::fs::read_dir("/tmp")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("runbox"))
                .collect()
        })
        .unwrap_or_default()
}
