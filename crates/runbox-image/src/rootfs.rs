//! Filesystem operations relative to a directory fd that never follow a symlink found in the
//! tree: every directory is opened with `O_NOFOLLOW | O_DIRECTORY`, one component at a time.
//! Paths are never re-resolved from a string after a check, so a symlink an archive planted
//! (`etc -> /`) cannot redirect a later write.
//!
//! std's path-based calls would re-walk the path through whatever the tree holds; the
//! `openat2(RESOLVE_IN_ROOT)` alternative needs Linux 5.6 and would *follow* in-tree symlinks,
//! which we do not want either (see `layer.rs`).

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

/// Opens the directory `name` under `dir` without following a symlink at `name`.
pub(crate) fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a directory given by a host path (a trusted path: ours or the caller's).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `lstat` of `name` under `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Why a directory could not be reached.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// A component is a symlink or not a directory.
    NotADirectory,
    Io(io::Error),
}

/// Opens the directory reached by `components` from `root`, one component at a time with
/// `O_NOFOLLOW`. Missing directories are created (mode 0755, like Docker) when `create`,
/// else the answer is `None`.
pub(crate) fn walk(
    root: &OwnedFd,
    components: &[OsString],
    create: bool,
) -> Result<Option<OwnedFd>, WalkError> {
    let mut current = rustix::io::dup(root).map_err(|e| WalkError::Io(e.into()))?;
    for name in components {
        let next = match open_dir_at(&current, name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                if !create {
                    return Ok(None);
                }
                match rustix::fs::mkdirat(&current, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(WalkError::Io(e.into())),
                }
                open_dir_at(&current, name).map_err(classify)?
            }
            Err(e) => return Err(classify(e)),
        };
        current = next;
    }
    Ok(Some(current))
}

/// `O_NOFOLLOW | O_DIRECTORY` reports a symlink as ELOOP and a file as ENOTDIR.
fn classify(e: io::Error) -> WalkError {
    match e.raw_os_error() {
        Some(code)
            if code == Errno::LOOP.raw_os_error() || code == Errno::NOTDIR.raw_os_error() =>
        {
            WalkError::NotADirectory
        }
        _ => WalkError::Io(e),
    }
}

/// Removes `name` under `dir` and, if it is a directory, everything below it, without
/// following symlinks and without crossing into another filesystem (`rm -r
/// --one-file-system`): a mount left under a tree must stop the removal, not be emptied.
/// A missing `name` is not an error.
pub(crate) fn remove_at(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    let dir = dir.as_fd();
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) != FileType::Directory {
        return unlink_quiet(dir, name, AtFlags::empty());
    }
    remove_dir_below(dir, name, st.st_dev)
}

fn remove_dir_below(parent: impl AsFd, name: &OsStr, dev: u64) -> io::Result<()> {
    let parent = parent.as_fd();
    let fd = match open_dir_at(parent, name) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&fd)?;
    if st.st_dev != dev {
        return Err(io::Error::other(format!(
            "{} is on another filesystem (a mount point?); refusing to remove it",
            name.to_string_lossy()
        )));
    }
    // Names are collected first: deleting while a getdents cursor is open is allowed, but
    // recursing with the cursor held would keep one extra fd per level.
    let mut children: Vec<(CString, FileType)> = Vec::new();
    for entry in Dir::read_from(&fd)? {
        let entry = entry?;
        let child = entry.file_name();
        if child.to_bytes() == b"." || child.to_bytes() == b".." {
            continue;
        }
        children.push((child.to_owned(), entry.file_type()));
    }
    for (child, kind) in children {
        let child = OsStr::from_bytes(child.to_bytes());
        match kind {
            FileType::Directory => remove_dir_below(&fd, child, dev)?,
            // Some filesystems report DT_UNKNOWN; lstat decides.
            FileType::Unknown => remove_at_dev(&fd, child, dev)?,
            _ => unlink_quiet(&fd, child, AtFlags::empty())?,
        }
    }
    drop(fd);
    unlink_quiet(parent, name, AtFlags::REMOVEDIR)
}

fn remove_at_dev(dir: impl AsFd, name: &OsStr, dev: u64) -> io::Result<()> {
    let dir = dir.as_fd();
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(st) if file_type(&st) == FileType::Directory => remove_dir_below(dir, name, dev),
        Some(_) => unlink_quiet(dir, name, AtFlags::empty()),
    }
}

fn unlink_quiet(dir: impl AsFd, name: &OsStr, flags: AtFlags) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the tree at a host path (its parent is trusted; nothing below it is).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!(
            "refusing to remove {}",
            path.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    remove_at(open_dir(parent)?, name)
}

/// Apparent size of the tree in bytes: regular files (a hard-linked file once) and symlinks.
/// This is what `du --apparent-size` reports and what a tar of the tree roughly weighs.
pub(crate) fn tree_size(path: &Path) -> io::Result<u64> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                total += meta.len();
            } else if kind.is_symlink() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("runbox-image-rootfs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn walk_refuses_symlinked_parents_and_creates_missing_ones() {
        let dir = scratch("walk");
        let outside = dir.join("outside");
        fs::create_dir(&outside).expect("outside");
        let root_path = dir.join("root");
        fs::create_dir(&root_path).expect("root");
        std::os::unix::fs::symlink(&outside, root_path.join("link")).expect("symlink");
        let root = open_dir(&root_path).expect("open root");

        let through_link = walk(&root, &["link".into(), "x".into()], true);
        assert!(matches!(through_link, Err(WalkError::NotADirectory)));
        assert!(!outside.join("x").exists());

        assert!(matches!(walk(&root, &["a".into()], false), Ok(None)));
        assert!(matches!(
            walk(&root, &["a".into(), "b".into()], true),
            Ok(Some(_))
        ));
        assert!(root_path.join("a/b").is_dir());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn remove_at_deletes_the_link_not_its_target() {
        let dir = scratch("remove");
        let outside = dir.join("outside");
        fs::create_dir(&outside).expect("outside");
        fs::write(outside.join("keep"), b"x").expect("keep");
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("a/b")).expect("tree");
        std::os::unix::fs::symlink(&outside, tree.join("a/b/link")).expect("symlink");
        fs::write(tree.join("a/file"), b"y").expect("file");

        remove_tree(&tree).expect("remove");
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&tree).expect("removing a missing tree is fine");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn size_counts_hard_links_once() {
        let dir = scratch("size");
        fs::write(dir.join("a"), vec![0u8; 1000]).expect("a");
        fs::hard_link(dir.join("a"), dir.join("b")).expect("link");
        fs::create_dir(dir.join("d")).expect("d");
        fs::write(dir.join("d/c"), vec![0u8; 24]).expect("c");
        assert_eq!(tree_size(&dir).expect("size"), 1024);
        let _ = fs::remove_dir_all(&dir);
    }
}
