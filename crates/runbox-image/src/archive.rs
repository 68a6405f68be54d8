//! Where the image's files come from: a tar archive (indexed once, members then read in place
//! with positional reads, so a multi-gigabyte `docker save` is never copied or held in
//! memory) or a directory holding an OCI layout.
//!
//! Member names are archive-relative and normalised (`./x` is `x`); symlinks and hard links
//! between members are followed inside the archive only (Docker 25+ writes
//! `<id>/layer.tar -> ../blobs/sha256/<hex>`). Nothing here touches the host's filesystem
//! outside the archive file or the layout directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::ImportError;
use crate::layer::components;
use crate::rootfs::{self, WalkError};

/// How many member-to-member links are followed before giving up (a loop).
const MAX_LINK_HOPS: usize = 16;

#[derive(Debug)]
pub(crate) enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// A symlink member: the target, relative to the member's directory.
    Symlink(String),
    /// A hard-link member: the target, relative to the archive root.
    HardLink(String),
}

pub(crate) enum Source {
    Tar {
        file: File,
        members: HashMap<String, Member>,
    },
    Dir {
        root: OwnedFd,
    },
}

/// `a/./b/` -> `a/b`; `None` for names that leave the archive (`..` past the top, absolute).
fn normalise(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if name.starts_with('/') {
        return None;
    }
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl Source {
    /// Indexes an uncompressed tar archive.
    pub(crate) fn tar(path: &Path, file: File) -> Result<Source, ImportError> {
        let index_error = |source| ImportError::Index {
            path: path.to_owned(),
            source,
        };
        let mut members = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(index_error)? {
                let entry = entry.map_err(index_error)?;
                let Some(name) = std::str::from_utf8(&entry.path_bytes())
                    .ok()
                    .and_then(normalise)
                else {
                    continue;
                };
                let kind = entry.header().entry_type();
                let link = || {
                    entry
                        .link_name_bytes()
                        .and_then(|l| String::from_utf8(l.into_owned()).ok())
                };
                let member = match kind {
                    tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                    tar::EntryType::Symlink => match link() {
                        Some(target) => Member::Symlink(target),
                        None => continue,
                    },
                    tar::EntryType::Link => match link() {
                        Some(target) => Member::HardLink(target),
                        None => continue,
                    },
                    _ => continue,
                };
                members.insert(name, member);
            }
        }
        Ok(Source::Tar { file, members })
    }

    /// An OCI layout directory.
    pub(crate) fn dir(path: &Path) -> Result<Source, ImportError> {
        let root = rootfs::open_dir(path).map_err(|source| ImportError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Source::Dir { root })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            Source::Tar { members, .. } => resolve(members, name).is_some(),
            Source::Dir { .. } => self.open(name).is_ok(),
        }
    }

    /// Opens a member for reading; also returns its size.
    pub(crate) fn open(&self, name: &str) -> Result<(Box<dyn Read + Send + '_>, u64), ImportError> {
        let missing = || ImportError::MissingMember {
            member: name.to_owned(),
        };
        match self {
            Source::Tar { file, members } => {
                let (offset, size) = resolve(members, name).ok_or_else(missing)?;
                Ok((
                    Box::new(Section {
                        file,
                        pos: offset,
                        end: offset + size,
                    }),
                    size,
                ))
            }
            Source::Dir { root } => {
                let comps = components(name.as_bytes()).map_err(|_| missing())?;
                let (file_name, parents) = comps.split_last().ok_or_else(missing)?;
                let dir = match rootfs::walk(root, parents, false) {
                    Ok(Some(dir)) => dir,
                    Ok(None) | Err(WalkError::NotADirectory) => return Err(missing()),
                    Err(WalkError::Io(source)) => {
                        return Err(ImportError::ReadMember {
                            member: name.to_owned(),
                            source,
                        })
                    }
                };
                // O_NOFOLLOW: a layout's blob that is a symlink could point anywhere on the host.
                let fd = rustix::fs::openat(
                    &dir,
                    file_name.as_os_str(),
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| match e {
                    rustix::io::Errno::NOENT | rustix::io::Errno::LOOP => missing(),
                    e => ImportError::ReadMember {
                        member: name.to_owned(),
                        source: e.into(),
                    },
                })?;
                let file = File::from(fd);
                let meta = file.metadata().map_err(|source| ImportError::ReadMember {
                    member: name.to_owned(),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(file), meta.len()))
            }
        }
    }

    /// Reads a small member (JSON) whole, refusing anything over `limit` bytes.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImportError> {
        let (reader, size) = self.open(name)?;
        if size > limit {
            return Err(ImportError::TooLarge {
                member: name.to_owned(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        reader
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|source| ImportError::ReadMember {
                member: name.to_owned(),
                source,
            })?;
        Ok(out)
    }
}

/// The data range of member `name`, following member links inside the archive.
fn resolve(members: &HashMap<String, Member>, name: &str) -> Option<(u64, u64)> {
    let mut name = normalise(name)?;
    for _ in 0..MAX_LINK_HOPS {
        match members.get(&name)? {
            Member::Data { offset, size } => return Some((*offset, *size)),
            Member::Symlink(target) => {
                name = match target.strip_prefix('/') {
                    // An absolute link target means the archive's root.
                    Some(from_top) => normalise(from_top)?,
                    None => {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        normalise(&format!("{dir}/{target}"))?
                    }
                };
            }
            Member::HardLink(target) => name = normalise(target)?,
        }
    }
    None
}

/// A byte range of the archive file, read with `pread` so members need no shared cursor.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The path an archive was given as, for messages.
pub(crate) fn describe(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn member_names_stay_inside_the_archive() {
        assert_eq!(normalise("./a/b/").as_deref(), Some("a/b"));
        assert_eq!(
            normalise("x/../blobs/sha256/f").as_deref(),
            Some("blobs/sha256/f")
        );
        assert_eq!(normalise("../x"), None);
        assert_eq!(normalise("/etc/passwd"), None);
    }
}
