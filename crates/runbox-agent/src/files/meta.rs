//! FileInfo, modes and ownership: the spec writes modes as octal digits in a decimal number
//! (0o755 travels as 755) and owners and groups by name.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runbox_proto::execd::{FileInfo, FileKind, Permission};

use super::{display, fs_error};
use crate::error::ApiError;
use crate::stream::rfc3339;

/// The bits a client may set: permissions plus setuid, setgid and sticky.
const MODE_BITS: u32 = 0o7777;

/// 0o755 -> 755.
pub(super) fn mode_to_digits(mode: u32) -> u32 {
    format!("{:o}", mode & MODE_BITS).parse().unwrap_or(0)
}

/// 755 -> 0o755; rejects digits 8 and 9 and values beyond 7777.
pub(super) fn mode_from_digits(digits: u32) -> Result<u32, ApiError> {
    u32::from_str_radix(&digits.to_string(), 8)
        .ok()
        .filter(|m| m & !MODE_BITS == 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "mode {digits} is not an octal permission (write 0o755 as 755)"
            ))
        })
}

/// User and group names from /etc/passwd and /etc/group, read once per request.
#[derive(Debug, Default)]
pub(super) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub(super) fn load() -> Self {
        Self {
            users: read_db("/etc/passwd"),
            groups: read_db("/etc/group"),
        }
    }

    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }

    /// A uid from a user name or a numeric string.
    fn uid_of(&self, owner: &str) -> Result<u32, ApiError> {
        lookup(&self.users, owner)
            .ok_or_else(|| ApiError::bad_request(format!("no such user: {owner}")))
    }

    /// A gid from a group name or a numeric string.
    fn gid_of(&self, group: &str) -> Result<u32, ApiError> {
        lookup(&self.groups, group)
            .ok_or_else(|| ApiError::bad_request(format!("no such group: {group}")))
    }

    pub(super) fn info(&self, path: &Path, md: &Metadata) -> FileInfo {
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        };
        let changed = UNIX_EPOCH
            + Duration::new(
                u64::try_from(md.ctime()).unwrap_or(0),
                u32::try_from(md.ctime_nsec()).unwrap_or(0),
            );
        FileInfo {
            path: display(path),
            kind,
            size: md.len(),
            modified_at: timestamp(md.modified().unwrap_or(UNIX_EPOCH)),
            // Birth time where the filesystem records it (statx), else the inode change time.
            created_at: timestamp(md.created().unwrap_or(changed)),
            owner: self.user(md.uid()),
            group: self.group(md.gid()),
            mode: mode_to_digits(md.mode()),
        }
    }
}

/// Whole seconds, as the spec's examples write them (`2025-11-16T14:30:45Z`).
fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

fn lookup(db: &HashMap<u32, String>, name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    db.iter()
        .find(|(_, n)| n.as_str() == name)
        .map(|(id, _)| *id)
}

/// `name:x:id:...` lines; the first name for an id wins, as with getpwuid.
fn read_db(file: &str) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            map.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    map
}

/// What a `Permission` (or upload metadata) asks for, checked before anything is touched.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    /// `None` leaves the mode alone (the spec's clients send 0 for "unchanged").
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Wanted {
    pub(super) fn new(
        names: &Names,
        mode: Option<u32>,
        owner: Option<&str>,
        group: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mode = match mode {
            None | Some(0) => None,
            Some(digits) => Some(mode_from_digits(digits)?),
        };
        let uid = owner
            .filter(|o| !o.is_empty())
            .map(|o| names.uid_of(o))
            .transpose()?;
        let gid = group
            .filter(|g| !g.is_empty())
            .map(|g| names.gid_of(g))
            .transpose()?;
        Ok(Self { mode, uid, gid })
    }

    pub(super) fn from_permission(names: &Names, p: &Permission) -> Result<Self, ApiError> {
        Self::new(names, Some(p.mode), p.owner.as_deref(), p.group.as_deref())
    }

    pub(super) fn with_default_mode(mut self, mode: u32) -> Self {
        self.mode.get_or_insert(mode);
        self
    }

    /// chown (only if asked, and only what differs) then chmod, so a chown that the kernel
    /// refuses leaves the mode as it was.
    /// `shown` names the file in errors (a staged upload is not yet at its final path).
    pub(super) fn apply(&self, path: &Path, shown: &str) -> Result<(), ApiError> {
        if self.uid.is_some() || self.gid.is_some() {
            let md = std::fs::metadata(path).map_err(|e| fs_error(shown, e))?;
            let uid = self.uid.filter(|u| *u != md.uid());
            let gid = self.gid.filter(|g| *g != md.gid());
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(path, uid, gid).map_err(|e| chown_error(shown, e))?;
            }
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| fs_error(shown, e))?;
        }
        Ok(())
    }
}

fn chown_error(path: &str, e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(libc::EPERM) {
        return ApiError::Forbidden(format!(
            "{path}: cannot change owner or group: the agent runs as the unprivileged sandbox \
             user, which may only give files to groups it belongs to"
        ));
    }
    fs_error(path, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_travel_as_octal_digits() {
        assert_eq!(mode_to_digits(0o100755), 755);
        assert_eq!(mode_to_digits(0o41777), 1777);
        assert_eq!(mode_from_digits(644).ok(), Some(0o644));
        assert_eq!(mode_from_digits(4755).ok(), Some(0o4755));
        assert!(mode_from_digits(758).is_err());
        assert!(mode_from_digits(17777).is_err());
    }

    #[test]
    fn ids_resolve_by_name_or_number() {
        let names = Names {
            users: HashMap::from([(0, "root".to_owned()), (1000, "user".to_owned())]),
            groups: HashMap::from([(65534, "nogroup".to_owned())]),
        };
        assert_eq!(names.uid_of("user").ok(), Some(1000));
        assert_eq!(names.uid_of("42").ok(), Some(42));
        assert!(names.uid_of("admin").is_err());
        assert_eq!(names.group(65534), "nogroup");
        assert_eq!(names.group(7), "7");
    }
}
