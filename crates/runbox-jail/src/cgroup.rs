//! Resource limits through cgroups, on v1 (separate memory, cpu, cpuacct, pids and freezer
//! hierarchies) and v2 (one unified hierarchy) behind one type. The parent creates and fills
//! the group before the sandbox runs anything, reads its statistics afterwards and removes it.
//!
//! Killing is not done here: the sandbox's init is PID 1 of its own pid namespace, so killing
//! it makes the kernel kill every other process of the sandbox (and v1's OOM killer, which only
//! kills one process, is finished off that way by the supervisor).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::freezer::Freezer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// Where this host's cgroup hierarchies are, as seen from this process.
#[derive(Debug, Clone, Serialize)]
pub struct Hierarchies {
    pub version: Version,
    /// v1: one entry per controller we use, with the directory our sandboxes go under.
    /// v2: a single entry ("unified") with that directory.
    pub bases: Vec<(String, PathBuf)>,
    /// Controllers available for sandboxes.
    pub controllers: Vec<String>,
}

/// `freezer` is not a limit: it lets the sandbox be paused (see freezer.rs), and is only made
/// for sandboxes that can be paused. `cpuacct` measures CPU time: the init's rusage would be
/// cheaper but misses every process the kernel reaps as the pid namespace dies (a leftover
/// background job, everything after a timeout).
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];
const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];
const PARENT_DIR: &str = "runbox";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy (neither v1 memory/cpu/pids nor a v2 hierarchy with controllers) was found in /proc/self/mountinfo")]
    NotFound,
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write `{value}` to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} was not frozen within {waited:?} (thawed again)")]
    FreezeTimeout { path: PathBuf, waited: Duration },
    #[error("cannot set up memory event notification on {path}")]
    Notify {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// True when the failure is a permission problem (not root, no delegation).
    pub fn is_permission(&self) -> bool {
        let source = match self {
            Self::Create { source, .. } | Self::Write { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.raw_os_error(),
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
        )
    }
}

/// Parses mountinfo and /proc/self/cgroup to find the hierarchies and our place in them.
pub fn detect() -> Result<Hierarchies, CgroupError> {
    let read = |p: &str| {
        fs::read_to_string(p).map_err(|source| CgroupError::Read {
            path: p.into(),
            source,
        })
    };
    detect_from(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
}

fn detect_from(mountinfo: &str, self_cgroup: &str) -> Result<Hierarchies, CgroupError> {
    let own_path = |key: &str| -> Option<String> {
        self_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            names.split(',').any(|n| n == key).then(|| path.to_owned())
        })
    };
    let mut v1 = Vec::new();
    let mut v2_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or_default());
        match fstype {
            Some("cgroup") => {
                for c in options.split(',').filter(|o| V1_CONTROLLERS.contains(o)) {
                    v1.push((c.to_owned(), PathBuf::from(mount_point)));
                }
            }
            Some("cgroup2") => v2_mount = Some(PathBuf::from(mount_point)),
            _ => {}
        }
    }
    if v1.iter().any(|(c, _)| c == "memory") {
        let bases = v1
            .into_iter()
            .map(|(c, mount)| {
                let own = own_path(&c).unwrap_or_else(|| "/".into());
                let base = mount.join(own.trim_start_matches('/')).join(PARENT_DIR);
                (c, base)
            })
            .collect::<Vec<_>>();
        let controllers = bases.iter().map(|(c, _)| c.clone()).collect();
        return Ok(Hierarchies {
            version: Version::V1,
            bases,
            controllers,
        });
    }
    let mount = v2_mount.ok_or(CgroupError::NotFound)?;
    let available = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let controllers: Vec<String> = available
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c))
        .map(str::to_owned)
        .collect();
    if controllers.is_empty() {
        return Err(CgroupError::NotFound);
    }
    let own = own_path("").unwrap_or_else(|| "/".into());
    let base = mount.join(own.trim_start_matches('/')).join(PARENT_DIR);
    Ok(Hierarchies {
        version: Version::V2,
        bases: vec![("unified".into(), base)],
        controllers,
    })
}

impl Hierarchies {
    /// Leaves out v1's freezer hierarchy, for a sandbox that will never be paused (v2 pauses
    /// through cgroup.freeze and has no freezer to leave out).
    pub fn without_freezer(mut self) -> Self {
        self.bases.retain(|(c, _)| c != "freezer");
        self.controllers.retain(|c| c != "freezer");
        self
    }

    /// Whether sandboxes can be paused: v1 with a freezer hierarchy, or v2 where our base (or
    /// its parent, before the first sandbox made the base) has cgroup.freeze.
    pub fn has_freezer(&self) -> bool {
        match self.version {
            Version::V1 => self.controllers.iter().any(|c| c == "freezer"),
            Version::V2 => self.bases.first().is_some_and(|(_, base)| {
                base.join("cgroup.freeze").exists()
                    || base
                        .parent()
                        .is_some_and(|p| p.join("cgroup.freeze").exists())
            }),
        }
    }
}

/// One sandbox's cgroup (a directory per v1 hierarchy, or one v2 directory).
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<(String, PathBuf)>,
    removed: bool,
}

/// The limits a cgroup enforces.
#[derive(Debug, Clone, Copy, Default)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// v2: let the OOM killer take the whole group.
    pub oom_kills_group: bool,
}

/// What a cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub peak_memory_bytes: u64,
    pub oom_kills: u64,
    pub memory_limit_hits: u64,
    pub pids_limit_hits: u64,
}

const CFS_PERIOD_US: u64 = 100_000;

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

fn read_key(dir: &Path, file: &str, key: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        })
        .unwrap_or(0)
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroup {
    /// Creates `<base>/<name>` in every hierarchy and writes the limits. On error, whatever was
    /// created is removed again.
    pub fn create(h: &Hierarchies, name: &str, limits: CgroupLimits) -> Result<Self, CgroupError> {
        let mut cg = Self {
            version: h.version,
            dirs: Vec::new(),
            removed: false,
        };
        let result = cg.create_dirs(h, name).and_then(|()| cg.apply(limits));
        if let Err(e) = result {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_dirs(&mut self, h: &Hierarchies, name: &str) -> Result<(), CgroupError> {
        let mut seen: Vec<PathBuf> = Vec::new();
        for (controller, base) in &h.bases {
            if !base.exists() {
                fs::create_dir_all(base).map_err(|source| CgroupError::Create {
                    path: base.clone(),
                    source,
                })?;
            }
            if h.version == Version::V2 {
                enable_v2_controllers(base, &h.controllers)?;
            }
            sweep_stale(base);
            let dir = base.join(name);
            if !seen.contains(&dir) {
                fs::create_dir(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                seen.push(dir.clone());
            }
            self.dirs.push((controller.clone(), dir));
        }
        Ok(())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == controller || c == "unified")
            .map(|(_, d)| d.as_path())
    }

    fn apply(&self, limits: CgroupLimits) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => {
                if let (Some(bytes), Some(dir)) = (limits.memory_bytes, self.dir("memory")) {
                    write(dir, "memory.limit_in_bytes", &bytes.to_string())?;
                    // memsw (memory + swap) equal to the memory limit = no swap at all.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(dir, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                    } else {
                        write(dir, "memory.swappiness", "0")?;
                    }
                }
                if let (Some(cpus), Some(dir)) = (limits.cpus, self.dir("cpu")) {
                    write(dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                    let quota = ((cpus * CFS_PERIOD_US as f64) as u64).max(1000);
                    write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if let (Some(pids), Some(dir)) = (limits.pids, self.dir("pids")) {
                    write(dir, "pids.max", &pids.to_string())?;
                }
            }
            Version::V2 => {
                let Some(dir) = self.dir("unified") else {
                    return Ok(());
                };
                if let Some(bytes) = limits.memory_bytes {
                    write(dir, "memory.max", &bytes.to_string())?;
                    write(dir, "memory.swap.max", "0")?;
                    if limits.oom_kills_group {
                        // The OOM killer takes the whole group, not one process.
                        write(dir, "memory.oom.group", "1")?;
                    }
                }
                if let Some(cpus) = limits.cpus {
                    let quota = ((cpus * CFS_PERIOD_US as f64) as u64).max(1000);
                    write(dir, "cpu.max", &format!("{quota} {CFS_PERIOD_US}"))?;
                }
                if let Some(pids) = limits.pids {
                    write(dir, "pids.max", &pids.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (and so its future children) into the group.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let mut done: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if !done.contains(&dir.as_path()) {
                write(dir, "cgroup.procs", &pid.to_string())?;
                done.push(dir);
            }
        }
        Ok(())
    }

    /// An fd that becomes readable when the memory controller hits OOM: a v1 eventfd
    /// registered on memory.oom_control, or a v2 inotify watch on memory.events.
    pub fn oom_notifier(&self) -> Result<Option<OwnedFd>, CgroupError> {
        let Some(dir) = self.dir("memory") else {
            return Ok(None);
        };
        let notify_err = |path: PathBuf| move |source| CgroupError::Notify { path, source };
        match self.version {
            Version::V1 => {
                let efd = rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
                .map_err(|e| notify_err(dir.into())(e.into()))?;
                let control_path = dir.join("memory.oom_control");
                let control =
                    fs::File::open(&control_path).map_err(notify_err(control_path.clone()))?;
                let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
                write(dir, "cgroup.event_control", &line)?;
                // The kernel holds its own reference to the control file from here on.
                Ok(Some(efd))
            }
            Version::V2 => {
                use rustix::fs::inotify;
                let ifd =
                    inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                        .map_err(|e| notify_err(dir.into())(e.into()))?;
                for file in ["memory.events", "pids.events"] {
                    let path = dir.join(file);
                    if path.exists() {
                        inotify::add_watch(&ifd, &path, inotify::WatchFlags::MODIFY)
                            .map_err(|e| notify_err(path.clone())(e.into()))?;
                    }
                }
                Ok(Some(ifd))
            }
        }
    }

    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        match self.version {
            Version::V1 => {
                if let Some(d) = self.dir("cpuacct") {
                    u.cpu_user_ns = read_u64(d, "cpuacct.usage_user");
                    u.cpu_system_ns = read_u64(d, "cpuacct.usage_sys");
                }
                if let Some(d) = self.dir("memory") {
                    u.peak_memory_bytes = read_u64(d, "memory.max_usage_in_bytes");
                    u.oom_kills = read_key(d, "memory.oom_control", "oom_kill");
                    u.memory_limit_hits =
                        read_u64(d, "memory.memsw.failcnt").max(read_u64(d, "memory.failcnt"));
                }
                if let Some(d) = self.dir("pids") {
                    u.pids_limit_hits = read_key(d, "pids.events", "max");
                }
            }
            Version::V2 => {
                if let Some(d) = self.dir("unified") {
                    u.cpu_user_ns = read_key(d, "cpu.stat", "user_usec") * 1000;
                    u.cpu_system_ns = read_key(d, "cpu.stat", "system_usec") * 1000;
                    u.peak_memory_bytes = read_u64(d, "memory.peak");
                    u.oom_kills = read_key(d, "memory.events", "oom_kill");
                    u.memory_limit_hits = read_key(d, "memory.events", "max");
                    u.pids_limit_hits = read_key(d, "pids.events", "max");
                }
            }
        }
        u
    }

    /// Number of processes still in the group.
    pub fn process_count(&self) -> usize {
        self.dirs
            .first()
            .and_then(|(_, d)| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map_or(0, |t| t.lines().count())
    }

    /// Removes the directories. The kernel refuses (EBUSY) while a dying task is still being
    /// torn down, so this retries for a short while.
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        for (_, dir) in &self.dirs {
            for attempt in 0..200 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if attempt < 199 => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => {}
                }
            }
        }
        self.removed = true;
    }

    /// The group's freezer: v1's freezer hierarchy, or v2's cgroup.freeze (Linux >= 5.2).
    pub fn freezer(&self) -> Option<Freezer> {
        let dir = match self.version {
            Version::V1 => self.dirs.iter().find(|(c, _)| c == "freezer")?,
            Version::V2 => self.dirs.first()?,
        };
        Freezer::at(self.version, &dir.1)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn enable_v2_controllers(base: &Path, controllers: &[String]) -> Result<(), CgroupError> {
    let value = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(parent) = base.parent() {
        write(parent, "cgroup.subtree_control", &value)?;
    }
    write(base, "cgroup.subtree_control", &value)
}

/// Removes sandbox groups left by a runbox that was killed before it could clean up: empty
/// groups older than a minute (a group being set up right now is younger and not empty for
/// long). rmdir of a non-empty cgroup fails harmlessly.
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let cutoff = SystemTime::now() - Duration::from_secs(60);
    for entry in entries.flatten() {
        // d_type first: the base also holds the cgroup's own control files, which need no stat.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff)
        {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const SELF_V1: &str = "8:pids:/\n4:memory:/svc/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_wins_when_memory_is_on_v1_and_bases_follow_own_paths() {
        let h = detect_from(MOUNTINFO_V1, SELF_V1).expect("detects");
        assert_eq!(h.version, Version::V1);
        let memory = h.bases.iter().find(|(c, _)| c == "memory").expect("memory");
        assert_eq!(
            memory.1,
            PathBuf::from("/sys/fs/cgroup/memory/svc/abc/runbox")
        );
        let pids = h.bases.iter().find(|(c, _)| c == "pids").expect("pids");
        assert_eq!(pids.1, PathBuf::from("/sys/fs/cgroup/pids/runbox"));
        assert_eq!(
            h.controllers,
            ["cpu", "cpuacct", "memory", "pids", "freezer"]
        );
        assert!(h.has_freezer());
        let freezer = h
            .bases
            .iter()
            .find(|(c, _)| c == "freezer")
            .expect("freezer");
        assert_eq!(freezer.1, PathBuf::from("/sys/fs/cgroup/freezer/runbox"));
    }

    #[test]
    fn co_mounted_v1_controllers_share_a_directory() {
        let info = "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let h = detect_from(info, "3:cpu,cpuacct:/\n2:memory:/\n").expect("detects");
        let dirs: Vec<_> = h.bases.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(dirs[0], dirs[1]);
    }

    #[test]
    fn nothing_found_is_an_error() {
        assert!(matches!(detect_from("", ""), Err(CgroupError::NotFound)));
    }

    #[test]
    fn v1_limits_are_written_in_order_to_a_fake_tree() {
        let root = std::env::temp_dir().join(format!("runbox-cg-test-{}", std::process::id()));
        let mk = |c: &str| root.join(c).join("runbox");
        let h = Hierarchies {
            version: Version::V1,
            bases: vec![
                ("memory".into(), mk("memory")),
                ("cpu".into(), mk("cpu")),
                ("pids".into(), mk("pids")),
            ],
            controllers: vec!["memory".into(), "cpu".into(), "pids".into()],
        };
        let limits = CgroupLimits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(32),
            oom_kills_group: true,
        };
        let mut cg = Cgroup::create(&h, "sb1", limits).expect("creates");
        let read = |p: PathBuf| fs::read_to_string(p).expect("written");
        assert_eq!(
            read(mk("memory").join("sb1/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(mk("memory").join("sb1/memory.swappiness")), "0");
        assert_eq!(read(mk("cpu").join("sb1/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(mk("pids").join("sb1/pids.max")), "32");
        cg.removed = true;
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn v1_pausable_sandboxes_get_a_freezer_dir_that_pauses_and_resumes() {
        let root = std::env::temp_dir().join(format!("runbox-cg-freeze-{}", std::process::id()));
        let mk = |c: &str| root.join(c).join("runbox");
        let h = Hierarchies {
            version: Version::V1,
            bases: vec![
                ("memory".into(), mk("memory")),
                ("freezer".into(), mk("freezer")),
            ],
            controllers: vec!["memory".into(), "freezer".into()],
        };
        let fixed_h = h.clone().without_freezer();
        let mut fixed = Cgroup::create(&fixed_h, "sb1", CgroupLimits::default()).expect("creates");
        assert!(mk("memory").join("sb1").is_dir());
        assert!(
            !mk("freezer").join("sb1").exists(),
            "not pausable: no freezer dir"
        );
        assert_eq!(fixed_h.controllers, ["memory"]);
        fixed.remove();
        let mut cg = Cgroup::create(&h, "sb2", CgroupLimits::default()).expect("creates");
        let dir = mk("freezer").join("sb2");
        assert!(dir.is_dir());
        // The kernel provides freezer.state; in the fake tree it is a plain file.
        assert!(cg.freezer().is_none());
        fs::write(dir.join("freezer.state"), "THAWED\n").expect("fake state");
        let freezer = cg.freezer().expect("found");
        assert_eq!(freezer.dir(), dir);
        freezer.freeze().expect("pauses");
        assert_eq!(
            fs::read_to_string(dir.join("freezer.state")).expect("read"),
            "FROZEN"
        );
        freezer.thaw().expect("resumes");
        assert_eq!(
            fs::read_to_string(dir.join("freezer.state")).expect("read"),
            "THAWED"
        );
        cg.removed = true;
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
