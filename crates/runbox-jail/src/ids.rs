//! Host uids and gids for sandboxes. Started as root, every concurrent sandbox gets its own pair
//! of unprivileged host ids (one for the namespace's root, which owns the jail's own files, and
//! one for the command), so two sandboxes can never signal, ptrace or read each other as "the
//! same user". Without root, the only id we may map is our own, and the report says so.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;

use serde::Serialize;

use crate::sys;

/// First host id handed to sandboxes; far above any real account and below 2^31, which some
/// tools still treat as signed.
pub const HOST_ID_BASE: u32 = 1_500_000_000;
/// Concurrent sandboxes per host (two ids each).
pub const SLOTS: u32 = 100_000;
const LOCK_DIR: &str = "/run/runbox";
const LOCK_FILE: &str = "/run/runbox/hostids.lock";

/// The identity mapping of one sandbox.
#[derive(Debug, Serialize)]
pub struct HostIds {
    /// True when we could map arbitrary ids (started as root).
    pub privileged: bool,
    /// Host uid/gid of the namespace's root (privileged mode only).
    pub root_host_id: Option<u32>,
    /// Host uid and gid that the command runs as.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Uid and gid the command sees inside.
    pub uid: u32,
    pub gid: u32,
    /// The OFD lock that reserves the slot; released when the sandbox is dropped.
    #[serde(skip)]
    _slot: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("cannot open the host id lock {LOCK_FILE}")]
    Lock(#[source] std::io::Error),
    #[error("all {SLOTS} sandbox id slots are in use")]
    Exhausted,
}

impl HostIds {
    pub fn allocate(uid: u32, gid: u32) -> Result<Self, IdError> {
        let privileged = rustix::process::geteuid().is_root();
        if !privileged {
            return Ok(Self {
                privileged,
                root_host_id: None,
                host_uid: rustix::process::geteuid().as_raw(),
                host_gid: rustix::process::getegid().as_raw(),
                uid,
                gid,
                _slot: None,
            });
        }
        let _ = fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(LOCK_DIR);
        let lock: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOCK_FILE)
            .map_err(IdError::Lock)?
            .into();
        let mut seed = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        let start = u32::from_ne_bytes(seed) % SLOTS;
        for probe in 0..SLOTS {
            let slot = (start + probe) % SLOTS;
            if sys::try_lock_byte(std::os::fd::AsFd::as_fd(&lock), u64::from(slot))
                .map_err(IdError::Lock)?
            {
                let root = HOST_ID_BASE + 2 * slot;
                return Ok(Self {
                    privileged,
                    root_host_id: Some(root),
                    host_uid: root + 1,
                    host_gid: root + 1,
                    uid,
                    gid,
                    _slot: Some(lock),
                });
            }
        }
        Err(IdError::Exhausted)
    }

    /// Contents of /proc/PID/uid_map.
    pub fn uid_map(&self) -> String {
        match self.root_host_id {
            Some(root) => format!("0 {root} 1\n{} {} 1\n", self.uid, self.host_uid),
            None => format!("{} {} 1\n", self.uid, self.host_uid),
        }
    }

    pub fn gid_map(&self) -> String {
        match self.root_host_id {
            Some(root) => format!("0 {root} 1\n{} {} 1\n", self.gid, self.host_gid),
            None => format!("{} {} 1\n", self.gid, self.host_gid),
        }
    }

    /// Whether the host id range contains `uid` (used by leftover checks).
    pub fn is_sandbox_id(uid: u32) -> bool {
        (HOST_ID_BASE..HOST_ID_BASE + 2 * SLOTS).contains(&uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_maps_root_and_user_to_distinct_host_ids() {
        let ids = HostIds {
            privileged: true,
            root_host_id: Some(HOST_ID_BASE + 10),
            host_uid: HOST_ID_BASE + 11,
            host_gid: HOST_ID_BASE + 11,
            uid: 1000,
            gid: 1000,
            _slot: None,
        };
        assert_eq!(
            ids.uid_map(),
            format!("0 {} 1\n1000 {} 1\n", HOST_ID_BASE + 10, HOST_ID_BASE + 11)
        );
        assert!(HostIds::is_sandbox_id(ids.host_uid));
        assert!(!HostIds::is_sandbox_id(0));
    }
}
