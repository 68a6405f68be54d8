//! Landlock: the command may read and execute anything it can see, but write only to the
//! workspace, /tmp and /dev/shm (plus the terminal-ish device files). With ABI 6 it also may
//! not connect to abstract unix sockets or signal processes outside its own domain.
//!
//! Everything is decided in the parent (`Ruleset::for_abi`): the kernel's ABI, the access
//! masks that ABI knows, and the rules as (path, access) pairs. The child (`restrict_self`,
//! after pivot_root, since the rules name paths inside the sandbox) only makes raw syscalls:
//! it may have been cloned from a multi-threaded process, where it must not allocate.

use std::ffi::CString;
use std::os::fd::AsFd;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::sys;

/// Filesystem access rights (uapi `LANDLOCK_ACCESS_FS_*`).
pub mod access {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    /// ABI 2.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3.
    pub const TRUNCATE: u64 = 1 << 14;
    /// ABI 5.
    pub const IOCTL_DEV: u64 = 1 << 15;

    pub const READ: u64 = EXECUTE | READ_FILE | READ_DIR;
    /// The rights that make sense on a file (the kernel refuses the others with EINVAL when
    /// the rule's path is not a directory).
    pub const FILE: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
    pub const DEVICE: u64 = READ | WRITE_FILE | IOCTL_DEV;
}

/// Scopes (uapi `LANDLOCK_SCOPE_*`, ABI 6).
pub mod scope {
    pub const ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    pub const SIGNAL: u64 = 1 << 1;
}

/// The newest ABI whose semantics we tested: filesystem rights incl. truncate and device
/// ioctls (5) and the abstract-socket and signal scopes (6). Newer kernels add nothing we use.
pub const TARGET_ABI: i32 = 6;

/// Every filesystem right the given ABI knows (0: none).
pub fn fs_rights(abi: i32) -> u64 {
    let mut rights = 0;
    if abi >= 1 {
        rights |= (access::MAKE_SYM << 1) - 1;
    }
    if abi >= 2 {
        rights |= access::REFER;
    }
    if abi >= 3 {
        rights |= access::TRUNCATE;
    }
    if abi >= 5 {
        rights |= access::IOCTL_DEV;
    }
    rights
}

/// The scopes the given ABI knows.
pub fn scopes(abi: i32) -> u64 {
    if abi >= 6 {
        scope::ABSTRACT_UNIX_SOCKET | scope::SIGNAL
    } else {
        0
    }
}

/// What the caller wants restricted (paths as seen inside the sandbox).
#[derive(Debug, Clone)]
pub struct LandlockConfig {
    pub writable: Vec<CString>,
    pub devices: Vec<CString>,
    pub required: bool,
}

/// One path-beneath rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: CString,
    pub access: u64,
}

/// A finished ruleset for one kernel ABI: all the child has to do is make the syscalls.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub abi: i32,
    pub handled_fs: u64,
    pub scoped: u64,
    pub rules: Vec<PathRule>,
    pub required: bool,
}

impl Ruleset {
    /// The rules of `config`, with every mask cut down to what `abi` knows (capped at
    /// `TARGET_ABI`).
    pub fn for_abi(config: &LandlockConfig, abi: i32) -> Self {
        let abi = abi.max(0);
        let handled_fs = fs_rights(abi.min(TARGET_ABI));
        let mut rules = vec![PathRule {
            path: c"/".to_owned(),
            access: access::READ & handled_fs,
        }];
        for path in &config.writable {
            rules.push(PathRule {
                path: path.clone(),
                access: handled_fs,
            });
        }
        for path in &config.devices {
            rules.push(PathRule {
                path: path.clone(),
                access: access::DEVICE & handled_fs,
            });
        }
        Self {
            abi,
            handled_fs,
            scoped: scopes(abi.min(TARGET_ABI)),
            rules,
            required: config.required,
        }
    }

    /// What applying this ruleset enforces.
    pub fn outcome(&self) -> LandlockOutcome {
        match self.abi {
            0 => LandlockOutcome::NotEnforced,
            abi if abi >= TARGET_ABI => LandlockOutcome::FullyEnforced,
            _ => LandlockOutcome::PartiallyEnforced,
        }
    }
}

/// What the kernel really enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockOutcome {
    #[default]
    NotApplied,
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
}

impl LandlockOutcome {
    pub(crate) fn to_wire(self) -> u32 {
        self as u32
    }

    pub(crate) fn from_wire(v: u32) -> Self {
        match v {
            1 => Self::FullyEnforced,
            2 => Self::PartiallyEnforced,
            3 => Self::NotEnforced,
            _ => Self::NotApplied,
        }
    }
}

/// The ABI the running kernel offers (0 = none), from landlock_create_ruleset's version query.
pub fn kernel_abi() -> i32 {
    sys::landlock_abi_version()
}

/// In the child: creates the ruleset, adds the rules and restricts this process. Allocates
/// nothing (see the module comment); every fd it opens is closed again.
pub(crate) fn restrict_self(ruleset: &Ruleset) -> Result<LandlockOutcome, Errno> {
    let not_enforced = if ruleset.required {
        Err(Errno::OPNOTSUPP)
    } else {
        Ok(LandlockOutcome::NotEnforced)
    };
    if ruleset.abi == 0 {
        return not_enforced;
    }
    let attr = sys::LandlockRulesetAttr {
        handled_access_fs: ruleset.handled_fs,
        handled_access_net: 0,
        scoped: ruleset.scoped,
    };
    let fd = match sys::landlock_create_ruleset(&attr) {
        Ok(fd) => fd,
        // Disabled at boot after all (the version query said otherwise): as if absent.
        Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => return not_enforced,
        Err(e) => return Err(e),
    };
    for rule in &ruleset.rules {
        let parent = rustix::fs::open(
            rule.path.as_c_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut allowed = rule.access;
        if FileType::from_raw_mode(rustix::fs::fstat(&parent)?.st_mode) != FileType::Directory {
            allowed &= access::FILE;
        }
        sys::landlock_add_path_rule(fd.as_fd(), parent.as_fd(), allowed)?;
    }
    sys::landlock_restrict_self(fd.as_fd())?;
    Ok(ruleset.outcome())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LandlockConfig {
        LandlockConfig {
            writable: vec![c"/workspace".to_owned(), c"/tmp".to_owned()],
            devices: vec![c"/dev/null".to_owned()],
            required: false,
        }
    }

    #[test]
    fn access_masks_follow_the_abi() {
        use access::*;
        let v1 = EXECUTE
            | WRITE_FILE
            | READ_FILE
            | READ_DIR
            | REMOVE_DIR
            | REMOVE_FILE
            | MAKE_CHAR
            | MAKE_DIR
            | MAKE_REG
            | MAKE_SOCK
            | MAKE_FIFO
            | MAKE_BLOCK
            | MAKE_SYM;
        assert_eq!(fs_rights(0), 0);
        assert_eq!(fs_rights(1), v1);
        assert_eq!(fs_rights(1), 0x1fff);
        assert_eq!(fs_rights(2), v1 | REFER);
        assert_eq!(fs_rights(3), v1 | REFER | TRUNCATE);
        // ABI 4 adds network rights only, which we do not handle (the sandbox has no network).
        assert_eq!(fs_rights(4), fs_rights(3));
        assert_eq!(fs_rights(5), v1 | REFER | TRUNCATE | IOCTL_DEV);
        assert_eq!(fs_rights(6), fs_rights(5));
        assert_eq!(scopes(5), 0);
        assert_eq!(scopes(6), scope::ABSTRACT_UNIX_SOCKET | scope::SIGNAL);
    }

    #[test]
    fn rules_are_masked_to_the_kernel_abi() {
        for abi in 0..=8 {
            let r = Ruleset::for_abi(&config(), abi);
            assert_eq!(r.handled_fs, fs_rights(abi.min(TARGET_ABI)), "abi {abi}");
            assert_eq!(r.scoped, scopes(abi.min(TARGET_ABI)), "abi {abi}");
            for rule in &r.rules {
                assert_eq!(rule.access & !r.handled_fs, 0, "abi {abi}: {rule:?}");
            }
        }
        let r = Ruleset::for_abi(&config(), 7);
        let paths: Vec<&str> = r
            .rules
            .iter()
            .map(|p| p.path.to_str().expect("utf8"))
            .collect();
        assert_eq!(paths, ["/", "/workspace", "/tmp", "/dev/null"]);
        assert_eq!(r.rules[0].access, access::READ);
        assert_eq!(r.rules[1].access, fs_rights(6));
        assert_eq!(r.rules[3].access, access::DEVICE);
        // ABI 3 has no device ioctl right: devices get read + write_file only.
        let r = Ruleset::for_abi(&config(), 3);
        assert_eq!(r.rules[3].access, access::READ | access::WRITE_FILE);
    }

    #[test]
    fn outcome_follows_the_abi() {
        let outcome = |abi| Ruleset::for_abi(&config(), abi).outcome();
        assert_eq!(outcome(0), LandlockOutcome::NotEnforced);
        assert_eq!(outcome(-1), LandlockOutcome::NotEnforced);
        for abi in 1..=5 {
            assert_eq!(outcome(abi), LandlockOutcome::PartiallyEnforced);
        }
        assert_eq!(outcome(6), LandlockOutcome::FullyEnforced);
        assert_eq!(outcome(7), LandlockOutcome::FullyEnforced);
    }

    #[test]
    fn best_effort_without_landlock_reports_not_enforced() {
        let mut r = Ruleset::for_abi(&config(), 0);
        assert_eq!(restrict_self(&r), Ok(LandlockOutcome::NotEnforced));
        r.required = true;
        assert_eq!(restrict_self(&r), Err(Errno::OPNOTSUPP));
    }
}
