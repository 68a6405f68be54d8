//! Applying one layer tar onto a rootfs. This runs as root on untrusted archives, so:
//!
//! - **Rejected** (the import fails): absolute paths and `..` components, in entry names and
//!   in hard-link targets; an entry whose parent is a symlink or a file in the tree (a layer
//!   that plants `etc -> /` and then writes `etc/x` fails; Docker would resolve the link
//!   inside the root, we do not follow it at all: image layers written by Docker, BuildKit,
//!   buildah or kaniko never need it); hard links to directories or to missing entries;
//!   non-directory entries that would replace the root.
//! - **Skipped** (counted, reported): character and block devices (the sandboxes get their
//!   own /dev), sockets and unknown entry types, aufs metadata (`.wh..wh.*`).
//! - **Changed**: setuid and setgid bits are cleared (the rootfs sits on the host's
//!   filesystem, where a setuid-root file from an untrusted archive would be a local root
//!   exploit for anyone who can reach it; sandboxes mount it nosuid anyway); extended
//!   attributes (file capabilities, SELinux labels) are not restored; owners are restored
//!   only when running as root.
//! - **Whiteouts** (OCI and Docker): `.wh.<name>` deletes `<name>` from lower layers,
//!   `.wh..wh..opq` empties its directory of everything this layer did not itself add.
//!
//! Every write goes through `rootfs::walk` (`O_NOFOLLOW` per component) and `*at` calls on
//! the parent's fd: files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` after removing
//! whatever was there (a symlink is unlinked, never written through), links never follow.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::error::LayerError;
use crate::rootfs::{self, WalkError};

/// Cleared from every mode: setuid and setgid.
const SETID_BITS: u32 = 0o6000;

/// What applying a layer did besides writing files.
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerStats {
    pub entries: u64,
    /// `path (kind)` of entries that were not created.
    pub skipped: Vec<String>,
    /// Files and directories whose setuid or setgid bit was cleared.
    pub setid_cleared: u64,
}

pub(crate) struct Applier {
    root: OwnedFd,
    restore_owners: bool,
}

/// An entry name as components below the root, or why it is unsafe.
pub(crate) fn components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            _ => out.push(OsStr::from_bytes(part).to_owned()),
        }
    }
    Ok(out)
}

fn joined(components: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    out
}

impl Applier {
    pub(crate) fn new(root: OwnedFd) -> Self {
        Applier {
            root,
            restore_owners: rustix::process::geteuid().is_root(),
        }
    }

    /// Applies one uncompressed layer tar.
    pub(crate) fn apply(&self, reader: impl Read) -> Result<LayerStats, LayerError> {
        let mut archive = tar::Archive::new(reader);
        let mut stats = LayerStats::default();
        // Paths this layer created: an opaque whiteout keeps them (the marker may come after
        // its siblings in the tar).
        let mut written: HashSet<Vec<u8>> = HashSet::new();
        for entry in archive.entries().map_err(LayerError::Read)? {
            let mut entry = entry.map_err(LayerError::Read)?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let unsafe_entry = |reason| LayerError::Unsafe {
                path: shown.clone(),
                reason,
            };
            let comps = components(&raw).map_err(unsafe_entry)?;
            let kind = entry.header().entry_type();
            let Some((name, parents)) = comps.split_last() else {
                if kind.is_dir() {
                    // `./`: the root keeps the mode and owner we gave it.
                    continue;
                }
                return Err(unsafe_entry("replaces the root"));
            };
            stats.entries += 1;

            if let Some(target) = name.as_bytes().strip_prefix(b".wh.") {
                if target == b".wh..opq" {
                    self.opaque(parents, &written, &shown)?;
                } else if target.starts_with(b".wh.") {
                    stats.skipped.push(format!("{shown} (aufs metadata)"));
                } else if target.is_empty() || target == b"." || target == b".." {
                    return Err(unsafe_entry("whiteout of an invalid name"));
                } else {
                    self.whiteout(parents, OsStr::from_bytes(target), &shown)?;
                }
                continue;
            }

            let parent = match rootfs::walk(&self.root, parents, true) {
                Ok(Some(fd)) => fd,
                Ok(None) => return Err(unsafe_entry("parent directory cannot be created")),
                Err(WalkError::NotADirectory) => {
                    return Err(unsafe_entry("a parent is a symlink or not a directory"))
                }
                Err(WalkError::Io(source)) => {
                    return Err(write_error("creating the parents of", &shown, source))
                }
            };
            let name = name.as_os_str();
            let header = entry.header().clone();
            let mode = header.mode().map_err(LayerError::Read)? & 0o7777;
            if mode & SETID_BITS != 0 && !kind.is_symlink() {
                stats.setid_cleared += 1;
            }
            let mode = Mode::from_raw_mode(mode & !SETID_BITS);
            match kind {
                EntryType::Directory => self.directory(&parent, name, &header, mode, &shown)?,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    self.file(&parent, name, &header, mode, &mut entry, &shown)?
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| unsafe_entry("symlink without a target"))?;
                    let target = OsStr::from_bytes(&target).to_owned();
                    self.symlink(&parent, name, &target, &header, &shown)?
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| unsafe_entry("hard link without a target"))?
                        .into_owned();
                    self.hard_link(&parent, name, &target, &shown)?
                }
                EntryType::Fifo => self.fifo(&parent, name, &header, mode, &shown)?,
                EntryType::Char | EntryType::Block => {
                    stats.skipped.push(format!("{shown} (device node)"));
                    continue;
                }
                EntryType::XGlobalHeader => continue,
                other => {
                    stats
                        .skipped
                        .push(format!("{shown} (entry type {other:?})"));
                    continue;
                }
            }
            written.insert(joined(&comps));
        }
        Ok(stats)
    }

    fn directory(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        header: &Header,
        mode: Mode,
        shown: &str,
    ) -> Result<(), LayerError> {
        match rootfs::lstat_at(parent, name).map_err(|e| write_error("inspecting", shown, e))? {
            Some(st) if rootfs::file_type(&st) == FileType::Directory => {}
            Some(_) => {
                rootfs::remove_at(parent, name).map_err(|e| write_error("replacing", shown, e))?
            }
            None => {}
        }
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(write_error("creating directory", shown, e.into())),
        }
        let fd = rootfs::open_dir_at(parent, name).map_err(|e| write_error("opening", shown, e))?;
        self.set_owner_fd(&fd, header, shown)?;
        // Without root, a directory we cannot write (0555) would stop the rest of the import;
        // root ignores the mode.
        let mode = if self.restore_owners {
            mode
        } else {
            mode | Mode::RWXU
        };
        rustix::fs::fchmod(&fd, mode).map_err(|e| write_error("chmod", shown, e.into()))
    }

    fn file(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        header: &Header,
        mode: Mode,
        data: &mut impl Read,
        shown: &str,
    ) -> Result<(), LayerError> {
        rootfs::remove_at(parent, name).map_err(|e| write_error("replacing", shown, e))?;
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| write_error("creating", shown, e.into()))?;
        let mut file = File::from(fd);
        io::copy(data, &mut file).map_err(|e| write_error("writing", shown, e))?;
        // Owner before mode: chown clears setid bits, and the mode is the last word.
        self.set_owner_fd(&file, header, shown)?;
        rustix::fs::fchmod(&file, mode).map_err(|e| write_error("chmod", shown, e.into()))?;
        let times = timestamps(header).map_err(LayerError::Read)?;
        rustix::fs::futimens(&file, &times)
            .map_err(|e| write_error("setting times of", shown, e.into()))
    }

    fn symlink(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        target: &OsStr,
        header: &Header,
        shown: &str,
    ) -> Result<(), LayerError> {
        rootfs::remove_at(parent, name).map_err(|e| write_error("replacing", shown, e))?;
        rustix::fs::symlinkat(target, parent, name)
            .map_err(|e| write_error("creating symlink", shown, e.into()))?;
        if let Some((uid, gid)) = self.owner(header, shown)? {
            rustix::fs::chownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| write_error("chown", shown, e.into()))?;
        }
        let times = timestamps(header).map_err(LayerError::Read)?;
        rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| write_error("setting times of", shown, e.into()))
    }

    fn hard_link(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        target: &[u8],
        shown: &str,
    ) -> Result<(), LayerError> {
        let unsafe_link = |reason| LayerError::Unsafe {
            path: format!("{shown} -> {}", String::from_utf8_lossy(target)),
            reason,
        };
        let comps = components(target).map_err(unsafe_link)?;
        let Some((target_name, target_parents)) = comps.split_last() else {
            return Err(unsafe_link("hard link to the root"));
        };
        let target_parent = match rootfs::walk(&self.root, target_parents, false) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(unsafe_link("hard link to a missing entry")),
            Err(WalkError::NotADirectory) => {
                return Err(unsafe_link(
                    "hard link target's parent is a symlink or not a directory",
                ))
            }
            Err(WalkError::Io(e)) => return Err(write_error("resolving the target of", shown, e)),
        };
        let target_st = match rootfs::lstat_at(&target_parent, target_name)
            .map_err(|e| write_error("inspecting the target of", shown, e))?
        {
            Some(st) if rootfs::file_type(&st) == FileType::Directory => {
                return Err(unsafe_link("hard link to a directory"))
            }
            Some(st) => st,
            None => return Err(unsafe_link("hard link to a missing entry")),
        };
        if let Some(st) =
            rootfs::lstat_at(parent, name).map_err(|e| write_error("inspecting", shown, e))?
        {
            if st.st_dev == target_st.st_dev && st.st_ino == target_st.st_ino {
                return Ok(());
            }
        }
        rootfs::remove_at(parent, name).map_err(|e| write_error("replacing", shown, e))?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        rustix::fs::linkat(
            &target_parent,
            target_name.as_os_str(),
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| write_error("creating hard link", shown, e.into()))
    }

    fn fifo(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        header: &Header,
        mode: Mode,
        shown: &str,
    ) -> Result<(), LayerError> {
        rootfs::remove_at(parent, name).map_err(|e| write_error("replacing", shown, e))?;
        rustix::fs::mknodat(parent, name, FileType::Fifo, mode, 0)
            .map_err(|e| write_error("creating fifo", shown, e.into()))?;
        if let Some((uid, gid)) = self.owner(header, shown)? {
            rustix::fs::chownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| write_error("chown", shown, e.into()))?;
        }
        // mknod applied the umask; the fifo was just made here, so this path is not a symlink.
        rustix::fs::chmodat(parent, name, mode, AtFlags::empty())
            .map_err(|e| write_error("chmod", shown, e.into()))
    }

    fn whiteout(
        &self,
        parents: &[OsString],
        target: &OsStr,
        shown: &str,
    ) -> Result<(), LayerError> {
        match rootfs::walk(&self.root, parents, false) {
            Ok(Some(dir)) => rootfs::remove_at(&dir, target)
                .map_err(|e| write_error("deleting (whiteout)", shown, e)),
            Ok(None) => Ok(()),
            Err(WalkError::NotADirectory) => Err(LayerError::Unsafe {
                path: shown.to_owned(),
                reason: "whiteout below a symlink or a file",
            }),
            Err(WalkError::Io(e)) => Err(write_error("resolving", shown, e)),
        }
    }

    fn opaque(
        &self,
        parents: &[OsString],
        written: &HashSet<Vec<u8>>,
        shown: &str,
    ) -> Result<(), LayerError> {
        let dir = match rootfs::walk(&self.root, parents, false) {
            Ok(Some(dir)) => dir,
            Ok(None) => return Ok(()),
            Err(WalkError::NotADirectory) => {
                return Err(LayerError::Unsafe {
                    path: shown.to_owned(),
                    reason: "opaque whiteout below a symlink or a file",
                })
            }
            Err(WalkError::Io(e)) => return Err(write_error("resolving", shown, e)),
        };
        let mut prefix = joined(parents);
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let mut doomed = Vec::new();
        let entries = rustix::fs::Dir::read_from(&dir)
            .map_err(|e| write_error("listing", shown, e.into()))?;
        for entry in entries {
            let entry = entry.map_err(|e| write_error("listing", shown, e.into()))?;
            let child = entry.file_name().to_bytes();
            if child == b"." || child == b".." {
                continue;
            }
            let mut path = prefix.clone();
            path.extend_from_slice(child);
            if !written.contains(&path) {
                doomed.push(OsStr::from_bytes(child).to_owned());
            }
        }
        for child in doomed {
            rootfs::remove_at(&dir, &child)
                .map_err(|e| write_error("clearing (opaque whiteout)", shown, e))?;
        }
        Ok(())
    }

    fn owner(&self, header: &Header, shown: &str) -> Result<Option<(Uid, Gid)>, LayerError> {
        if !self.restore_owners {
            return Ok(None);
        }
        let out_of_range = || LayerError::Unsafe {
            path: shown.to_owned(),
            reason: "owner id out of range",
        };
        let uid =
            u32::try_from(header.uid().map_err(LayerError::Read)?).map_err(|_| out_of_range())?;
        let gid =
            u32::try_from(header.gid().map_err(LayerError::Read)?).map_err(|_| out_of_range())?;
        Ok(Some((Uid::from_raw(uid), Gid::from_raw(gid))))
    }

    fn set_owner_fd(&self, fd: impl AsFd, header: &Header, shown: &str) -> Result<(), LayerError> {
        if let Some((uid, gid)) = self.owner(header, shown)? {
            rustix::fs::fchown(fd, Some(uid), Some(gid))
                .map_err(|e| write_error("chown", shown, e.into()))?;
        }
        Ok(())
    }
}

fn timestamps(header: &Header) -> io::Result<Timestamps> {
    let secs = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
    let time = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Ok(Timestamps {
        last_access: time,
        last_modification: time,
    })
}

fn write_error(op: &'static str, path: &str, source: io::Error) -> LayerError {
    LayerError::Write {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_checked() {
        let ok = |raw: &[u8]| components(raw).map(|c| joined(&c));
        assert_eq!(ok(b"./a//b/./c/"), Ok(b"a/b/c".to_vec()));
        assert_eq!(ok(b"./"), Ok(Vec::new()));
        assert_eq!(ok(b"/etc/passwd"), Err("absolute path"));
        assert_eq!(ok(b"a/../../x"), Err("`..` component"));
        assert_eq!(ok(b".."), Err("`..` component"));
        assert_eq!(ok(b"a..b/..c"), Ok(b"a..b/..c".to_vec()));
    }
}
