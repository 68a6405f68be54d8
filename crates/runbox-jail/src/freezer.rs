//! Pausing a sandbox: freezing its cgroup. v1 has a `freezer` hierarchy (write FROZEN to
//! freezer.state; it reads FREEZING until every task is stopped, then FROZEN); v2 has
//! `cgroup.freeze` in every non-root group (write 1; `frozen 1` appears in cgroup.events).
//!
//! Killing a frozen group differs: a v1-frozen task sleeps in the refrigerator and does not
//! wake for SIGKILL, so `kill_frozen` signals every task while they are still stopped (none
//! can exit or be replaced meanwhile, so the pids are stable) and then thaws them; each one
//! dies on its way back to user space without running another instruction of the sandbox.
//! On v2 fatal signals get through, and the same sequence is simply harmless.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupError, Version};

/// How long `freeze` waits for the group to report itself frozen.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// The freezer of one sandbox's cgroup (cheap to clone; only names files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freezer {
    version: Version,
    dir: PathBuf,
}

impl Freezer {
    /// The freezer of the group at `dir`, if this kernel has one there.
    pub fn at(version: Version, dir: &Path) -> Option<Self> {
        let file = match version {
            Version::V1 => "freezer.state",
            Version::V2 => "cgroup.freeze",
        };
        dir.join(file).exists().then(|| Self {
            version,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Freezes every task of the group and waits (up to `FREEZE_TIMEOUT`) until the kernel
    /// says they all are. On timeout the group is thawed again and the error says so.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.freeze_within(FREEZE_TIMEOUT)
    }

    pub(crate) fn freeze_within(&self, limit: Duration) -> Result<(), CgroupError> {
        let (file, value) = self.control(true);
        self.write(file, value)?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            if self.is_fully_frozen()? {
                return Ok(());
            }
            if started.elapsed() >= limit {
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout {
                    path: self.dir.clone(),
                    waited: limit,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Lets the group run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let (file, value) = self.control(false);
        self.write(file, value)
    }

    /// True unless the group is plainly running (frozen, or on its way there).
    pub fn is_freezing_or_frozen(&self) -> bool {
        match self.version {
            Version::V1 => self
                .read("freezer.state")
                .is_ok_and(|s| s.trim() != "THAWED"),
            Version::V2 => self.read("cgroup.freeze").is_ok_and(|s| s.trim() == "1"),
        }
    }

    fn is_fully_frozen(&self) -> Result<bool, CgroupError> {
        Ok(match self.version {
            Version::V1 => self.read("freezer.state")?.trim() == "FROZEN",
            Version::V2 => self
                .read("cgroup.events")?
                .lines()
                .any(|l| l.trim() == "frozen 1"),
        })
    }

    /// Kills every task of a frozen (or freezing) group, then thaws it. See the module
    /// comment for why this order. Does nothing to a running group.
    pub fn kill_frozen(&self) {
        if !self.is_freezing_or_frozen() {
            return;
        }
        if let Ok(procs) = self.read("cgroup.procs") {
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        let _ = self.thaw();
    }

    fn control(&self, frozen: bool) -> (&'static str, &'static str) {
        match (self.version, frozen) {
            (Version::V1, true) => ("freezer.state", "FROZEN"),
            (Version::V1, false) => ("freezer.state", "THAWED"),
            (Version::V2, true) => ("cgroup.freeze", "1"),
            (Version::V2, false) => ("cgroup.freeze", "0"),
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|source| CgroupError::Write {
            path,
            value: value.to_owned(),
            source,
        })
    }

    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("runbox-freezer-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        for (file, text) in files {
            fs::write(dir.join(file), text).expect("write");
        }
        dir
    }

    #[test]
    fn v1_freezes_and_thaws_through_freezer_state() {
        let dir = fake("v1", &[("freezer.state", "THAWED\n"), ("cgroup.procs", "")]);
        assert!(Freezer::at(Version::V2, &dir).is_none());
        let f = Freezer::at(Version::V1, &dir).expect("has freezer.state");
        assert!(!f.is_freezing_or_frozen());
        // A plain file reads back what was written, like a group that froze at once.
        f.freeze().expect("freezes");
        assert_eq!(
            fs::read_to_string(dir.join("freezer.state")).expect("read"),
            "FROZEN"
        );
        assert!(f.is_freezing_or_frozen());
        f.kill_frozen();
        assert_eq!(
            fs::read_to_string(dir.join("freezer.state")).expect("read"),
            "THAWED"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn v2_waits_for_frozen_in_cgroup_events() {
        let events = "populated 1\nfrozen 1\n";
        let dir = fake("v2", &[("cgroup.freeze", "0\n"), ("cgroup.events", events)]);
        let f = Freezer::at(Version::V2, &dir).expect("has cgroup.freeze");
        f.freeze().expect("freezes");
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).expect("read"),
            "1"
        );
        f.thaw().expect("thaws");
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).expect("read"),
            "0"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_group_that_never_freezes_times_out_and_is_thawed() {
        let events = "populated 1\nfrozen 0\n";
        let dir = fake(
            "stuck",
            &[("cgroup.freeze", "0\n"), ("cgroup.events", events)],
        );
        let f = Freezer::at(Version::V2, &dir).expect("has cgroup.freeze");
        let err = f
            .freeze_within(Duration::from_millis(30))
            .expect_err("times out");
        assert!(matches!(err, CgroupError::FreezeTimeout { .. }), "{err:?}");
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.freeze")).expect("read"),
            "0"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
