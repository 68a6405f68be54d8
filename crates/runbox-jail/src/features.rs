//! What this host offers, for `runbox doctor` and for clear errors.

use std::fs;

use serde::Serialize;

use crate::cgroup;

#[derive(Debug, Clone, Serialize)]
pub struct HostFeatures {
    pub kernel: String,
    pub running_as_root: bool,
    pub user_namespaces: Feature,
    pub cgroup: Feature,
    pub cgroup_version: Option<cgroup::Version>,
    pub cgroup_controllers: Vec<String>,
    /// Whether sandboxes can be paused and resumed (a cgroup freezer).
    pub freezer: Feature,
    pub landlock_abi: i32,
    pub seccomp: Feature,
    pub mount_api: Feature,
    pub pidfd: Feature,
    /// Whether moving a process into a cgroup is fast. Without `favordynmods` on some cgroup
    /// mount, every move waits for an RCU grace period (measured 5-15 ms on our v1 VMs), which
    /// dominates the start-up time of a one-shot sandbox.
    pub fast_cgroup_attach: Feature,
    /// Whether a start can overlap the parent's cgroup work with the child's filesystem
    /// set-up: two CPUs or more, and a scheduler that puts a new task on an idle one. Some VM
    /// kernels pack tasks onto the busy vCPU instead (`kernel.sched_vcpu_pack`), and a start
    /// then costs the sum of its parts.
    pub parallel_start: Feature,
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub available: bool,
    pub detail: String,
}

fn feature(available: bool, detail: impl Into<String>) -> Feature {
    Feature {
        available,
        detail: detail.into(),
    }
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

pub fn detect() -> HostFeatures {
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let root = rustix::process::geteuid().is_root();
    let max_userns =
        read_trim("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    let unpriv = read_trim("/proc/sys/kernel/unprivileged_userns_clone");
    let userns = match (max_userns, unpriv.as_deref()) {
        (Some(0), _) => feature(false, "user.max_user_namespaces is 0"),
        (_, Some("0")) if !root => {
            feature(false, "kernel.unprivileged_userns_clone is 0 and not root")
        }
        (n, _) => feature(
            true,
            format!(
                "max_user_namespaces={}",
                n.map_or("?".into(), |n| n.to_string())
            ),
        ),
    };
    let mut freezer = feature(false, "no cgroup hierarchy");
    let (cg, cgroup_version, controllers) = match cgroup::detect() {
        Ok(h) => {
            freezer = match (h.version, h.has_freezer()) {
                (cgroup::Version::V1, true) => feature(true, "cgroup v1 freezer hierarchy"),
                (cgroup::Version::V1, false) => {
                    feature(false, "no cgroup v1 freezer hierarchy is mounted")
                }
                (cgroup::Version::V2, true) => feature(true, "cgroup v2 cgroup.freeze"),
                (cgroup::Version::V2, false) => {
                    feature(false, "no cgroup.freeze (cgroup v2 needs Linux >= 5.2)")
                }
            };
            let dirs: Vec<String> = h
                .bases
                .iter()
                .map(|(c, d)| format!("{c}:{}", d.display()))
                .collect();
            (
                feature(true, dirs.join(" ")),
                Some(h.version),
                h.controllers,
            )
        }
        Err(e) => (feature(false, e.to_string()), None, Vec::new()),
    };
    let seccomp_line = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(str::to_owned)
    });
    let seccomp = match seccomp_line {
        Some(l) => feature(true, l.replace('\t', " ")),
        None => feature(false, "kernel built without CONFIG_SECCOMP"),
    };
    let version = kernel_version(&kernel);
    let mount_api = feature(
        version >= (5, 12),
        "open_tree + mount_setattr (Linux >= 5.12)",
    );
    let pidfd = feature(version >= (5, 3), "pidfd_open (Linux >= 5.3)");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let fast_cgroup_attach = fast_attach(
        &mountinfo,
        read_trim("/sys/kernel/rcu_expedited").as_deref() == Some("1"),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallel_start = parallel_start(cpus, read_trim("/proc/sys/kernel/sched_vcpu_pack"));
    HostFeatures {
        fast_cgroup_attach,
        parallel_start,
        kernel,
        running_as_root: root,
        user_namespaces: userns,
        cgroup: cg,
        cgroup_version,
        cgroup_controllers: controllers,
        freezer,
        landlock_abi: crate::landlock::kernel_abi(),
        seccomp,
        mount_api,
        pidfd,
    }
}

fn fast_attach(mountinfo: &str, rcu_expedited: bool) -> Feature {
    let favordynmods = mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup2 ") || l.contains(" - cgroup "))
        .any(|l| l.contains("favordynmods"));
    let cgroup2 = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .unwrap_or("/sys/fs/cgroup");
    if favordynmods {
        feature(true, "a cgroup hierarchy is mounted with favordynmods")
    } else if rcu_expedited {
        feature(true, "rcu_expedited=1")
    } else {
        feature(
            false,
            format!("each sandbox waits for an RCU grace period when it joins its cgroup; to avoid it: mount -o remount,favordynmods {cgroup2}"),
        )
    }
}

fn parallel_start(cpus: usize, vcpu_pack: Option<String>) -> Feature {
    match vcpu_pack.as_deref() {
        _ if cpus < 2 => feature(false, "one CPU: a start runs serially"),
        Some(pack) if pack != "0" => feature(
            false,
            format!(
                "kernel.sched_vcpu_pack={pack} packs new tasks onto the busy CPU: a start runs \
                 serially (bench/README.md, session 5)"
            ),
        ),
        _ => feature(true, format!("{cpus} CPUs")),
    }
}

/// (major, minor) of a release string like "6.18.44-fc".
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_is_detected_on_any_cgroup_mount() {
        let plain = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let tuned =
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,favordynmods\n";
        assert!(!fast_attach(plain, false).available);
        assert!(fast_attach(plain, false)
            .detail
            .contains("remount,favordynmods /sys/fs/cgroup/unified"));
        assert!(fast_attach(tuned, false).available);
        assert!(fast_attach(plain, true).available);
    }

    #[test]
    fn a_packing_scheduler_or_one_cpu_means_a_serial_start() {
        assert!(parallel_start(2, None).available);
        assert!(parallel_start(2, Some("0".into())).available);
        let packed = parallel_start(2, Some("15".into()));
        assert!(!packed.available);
        assert!(
            packed.detail.contains("sched_vcpu_pack=15"),
            "{}",
            packed.detail
        );
        assert!(!parallel_start(1, None).available);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v595"), (6, 18));
        assert_eq!(kernel_version("5.4.0"), (5, 4));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }
}
