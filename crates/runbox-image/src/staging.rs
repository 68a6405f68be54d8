//! Atomic image writes. Work happens in `<dir>/.<label>.tmp-<random>/`; a sibling
//! `<that>.lock`, created first and held with `flock` for the whole job, tells a concurrent
//! sweep the directory is alive. Commit is one rename (an exchange when an image of that name
//! exists). Dropping an uncommitted [`Staging`] removes its directory; a crash leaves it for
//! the next sweep.
//!
//! Before any tree here is removed, mounts below it are detached: debootstrap mounts /proc
//! and /sys in its target (and binds the host's /dev when run in a container), and a crash
//! can leave them there. The remover also refuses to cross filesystems, in case a detach
//! failed.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{RenameFlags, CWD};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::rootfs;
use crate::store::ImageStore;

const TMP_MARK: &str = ".tmp-";
const LOCK_SUFFIX: &str = ".lock";
/// Renamed-aside trees of replaced and removed images: garbage by construction.
const GARBAGE_MARKS: [&str; 2] = [".old-", ".rm-"];

/// 12 random hex digits.
pub(crate) fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    // getrandom only fails before the kernel's pool is initialised (early boot) or on
    // ancient kernels; the clock and pid are unique enough for a tmp name then.
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        bytes[..4].copy_from_slice(&nanos.to_le_bytes());
        bytes[4..].copy_from_slice(&(std::process::id() as u16).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug)]
pub(crate) struct Staging {
    store_dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    committed: bool,
}

impl Staging {
    pub(crate) fn create(store: &ImageStore, label: &str) -> Result<Staging, StoreError> {
        store.ensure_dir()?;
        let base = format!(".{label}{TMP_MARK}{}", random_suffix());
        let path = store.dir().join(&base);
        let lock_path = store.dir().join(format!("{base}{LOCK_SUFFIX}"));
        let lock = File::options()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        lock.try_lock().map_err(|e| StoreError::Lock {
            path: lock_path.clone(),
            source: match e {
                TryLockError::Error(e) => e,
                TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            },
        })?;
        if let Err(source) = fs::create_dir(&path) {
            let _ = fs::remove_file(&lock_path);
            return Err(StoreError::Create { path, source });
        }
        Ok(Staging {
            store_dir: store.dir().to_owned(),
            path,
            lock_path,
            _lock: lock,
            committed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staged image to `<dir>/<name>`, replacing an image of that name atomically.
    /// Returns whether one was replaced.
    pub(crate) fn commit(mut self, name: &str) -> Result<bool, StoreError> {
        let target = self.store_dir.join(name);
        let rename_error = |source: io::Error| StoreError::Rename {
            from: self.path.clone(),
            to: target.clone(),
            source,
        };
        let replaced = match rustix::fs::renameat_with(
            CWD,
            &self.path,
            CWD,
            &target,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => false,
            Err(Errno::EXIST) => {
                match rustix::fs::renameat_with(
                    CWD,
                    &self.path,
                    CWD,
                    &target,
                    RenameFlags::EXCHANGE,
                ) {
                    // The old image is now at our staging path; Drop-free removal below.
                    Ok(()) => true,
                    // Filesystems without RENAME_EXCHANGE: move the old one aside first (a
                    // reader may briefly find no image, never a partial one).
                    Err(Errno::INVAL | Errno::NOSYS) => {
                        let aside = self
                            .store_dir
                            .join(format!(".{name}.old-{}", random_suffix()));
                        fs::rename(&target, &aside).map_err(rename_error)?;
                        fs::rename(&self.path, &target).map_err(rename_error)?;
                        fs::rename(&aside, &self.path).map_err(rename_error)?;
                        true
                    }
                    Err(e) => return Err(rename_error(e.into())),
                }
            }
            Err(Errno::INVAL | Errno::NOSYS) => {
                fs::rename(&self.path, &target).map_err(rename_error)?;
                false
            }
            Err(e) => return Err(rename_error(e.into())),
        };
        self.committed = true;
        if replaced {
            // A failure here leaves garbage for the next sweep, not a broken image.
            let _ = discard(&self.path);
        }
        let _ = fs::remove_file(&self.lock_path);
        Ok(replaced)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: whatever stays is swept later (our lock dies with us).
            if discard(&self.path).is_ok() {
                let _ = fs::remove_file(&self.lock_path);
            }
        }
    }
}

/// Detaches every mount at or below `path`, then removes the tree.
pub(crate) fn discard(path: &Path) -> Result<(), StoreError> {
    detach_mounts(path)?;
    rootfs::remove_tree(path).map_err(|source| StoreError::Remove {
        path: path.to_owned(),
        source,
    })
}

/// Mount points at or below `path`, from /proc/self/mountinfo (field 5, octal-escaped).
fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = fs::canonicalize(path) else {
        return Vec::new();
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(&canonical))
        .collect();
    // Deepest first, so a parent is never detached while a child is still counted.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn detach_mounts(path: &Path) -> Result<(), StoreError> {
    for mount in mounts_below(path) {
        match rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(Errno::INVAL | Errno::NOENT) => {}
            Err(e) => {
                return Err(StoreError::Unmount {
                    path: mount,
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// See [`ImageStore::sweep`].
pub(crate) fn sweep(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::ReadMeta {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match leftover(&name) {
            Some(Leftover::Garbage) => {
                discard(&path)?;
                removed.push(path);
            }
            Some(Leftover::Work { lock }) => {
                let (tree, lock_path) = if lock {
                    (
                        dir.join(&name[..name.len() - LOCK_SUFFIX.len()]),
                        path.clone(),
                    )
                } else {
                    (path.clone(), dir.join(format!("{name}{LOCK_SUFFIX}")))
                };
                if !abandoned(&lock_path) {
                    continue;
                }
                if fs::symlink_metadata(&tree).is_ok() {
                    discard(&tree)?;
                    removed.push(tree);
                }
                let _ = fs::remove_file(&lock_path);
            }
            None => {}
        }
    }
    Ok(removed)
}

enum Leftover {
    /// A staging directory (or its lock file): removable once nobody holds the lock.
    Work { lock: bool },
    /// A replaced or removed image renamed aside.
    Garbage,
}

/// Recognises our own names, `.<label><mark><12 hex>[.lock]`, by their ending only: a label
/// is an image name and may itself contain `.tmp-` or `.old-`.
fn leftover(name: &str) -> Option<Leftover> {
    let (stem, lock) = match name.strip_suffix(LOCK_SUFFIX) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    if !name.starts_with('.') || stem.len() < 12 {
        return None;
    }
    let (head, suffix) = stem.split_at(stem.len() - 12);
    if !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if head.ends_with(TMP_MARK) {
        Some(Leftover::Work { lock })
    } else if !lock && GARBAGE_MARKS.iter().any(|m| head.ends_with(m)) {
        Some(Leftover::Garbage)
    } else {
        None
    }
}

/// A tmp dir is abandoned when its lock file is gone or nobody holds it.
fn abandoned(lock_path: &Path) -> bool {
    match File::options().write(true).open(lock_path) {
        Ok(file) => file.try_lock().is_ok(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_leftovers_are_recognised() {
        let work = |n| matches!(leftover(n), Some(Leftover::Work { .. }));
        let garbage = |n| matches!(leftover(n), Some(Leftover::Garbage));
        assert!(work(".default.tmp-0123456789ab"));
        assert!(work(".default.tmp-0123456789ab.lock"));
        assert!(work(".x.old-y.tmp-0123456789ab"));
        assert!(garbage(".x.tmp-y.old-0123456789ab"));
        assert!(garbage(".default.rm-0123456789ab"));
        assert!(leftover("default").is_none());
        assert!(leftover("default.build.log").is_none());
        assert!(leftover(".default.tmp-short").is_none());
        assert!(leftover(".default.rm-0123456789ab.lock").is_none());
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }
}
