//! Errors of the jail, one variant per step that can fail, with a category that the CLI maps
//! to distinct exit codes.

use std::io;
use std::path::PathBuf;

use crate::cgroup::CgroupError;
use crate::ids::IdError;
use crate::seccomp::CompileError;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("no command given")]
    NoCommand,
    #[error("invalid sandbox policy: {0}")]
    InvalidPolicy(String),
    #[error("{what} {path} is not usable")]
    HostPath {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the bind mount of {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot allocate host ids for the sandbox")]
    Ids(#[source] IdError),
    #[error("the {limit} limit was requested but this host cannot enforce it: {reason}")]
    LimitUnavailable { limit: String, reason: String },
    #[error("cannot set up the sandbox's cgroup")]
    Cgroup(#[source] CgroupError),
    #[error("the seccomp filter does not compile")]
    Seccomp(#[source] CompileError),
    #[error("cannot create the sandbox's namespaces (clone)")]
    Clone(#[source] io::Error),
    #[error("cannot write the sandbox's {what}")]
    IdMap {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sandbox setup failed at step `{step}`{}", path.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Setup {
        step: &'static str,
        path: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("command `{command}` not found in the sandbox (searched {searched})")]
    CommandNotFound { command: String, searched: String },
    #[error("command `{command}` is not executable in the sandbox")]
    NotExecutable {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("supervising the sandbox failed")]
    Supervise(#[source] io::Error),
    #[error("this sandbox cannot be paused: it has no cgroup with a freezer (cgroup v1 `freezer` hierarchy or v2 cgroup.freeze)")]
    NoFreezer,
    #[error("the sandbox is not running (it was killed or has finished)")]
    NotRunning,
    #[error("cannot pause the sandbox")]
    Pause(#[source] CgroupError),
    #[error("cannot resume the sandbox")]
    Resume(#[source] CgroupError),
}

/// What kind of failure this is, for exit codes and API error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (missing command, bad path or value).
    Usage,
    /// The host lacks a feature the policy requires.
    Unavailable,
    /// Not allowed to create namespaces or cgroups.
    Permission,
    CommandNotFound,
    NotExecutable,
    /// A bug or an unexpected kernel refusal.
    Internal,
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

impl JailError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            JailError::NoCommand | JailError::InvalidPolicy(_) | JailError::HostPath { .. } => {
                ErrorKind::Usage
            }
            JailError::LimitUnavailable { .. } | JailError::NoFreezer => ErrorKind::Unavailable,
            JailError::NotRunning => ErrorKind::Usage,
            JailError::Cgroup(e) if e.is_permission() => ErrorKind::Permission,
            JailError::Cgroup(_) => ErrorKind::Unavailable,
            JailError::Clone(e) | JailError::IdMap { source: e, .. } if is_permission(e) => {
                ErrorKind::Permission
            }
            JailError::Clone(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                ErrorKind::Unavailable
            }
            JailError::Ids(IdError::Lock(e)) if is_permission(e) => ErrorKind::Permission,
            JailError::Bind { source, .. } if is_permission(source) => ErrorKind::Permission,
            JailError::Setup {
                step: "landlock", ..
            } => ErrorKind::Unavailable,
            JailError::CommandNotFound { .. } => ErrorKind::CommandNotFound,
            JailError::NotExecutable { .. } => ErrorKind::NotExecutable,
            _ => ErrorKind::Internal,
        }
    }

    /// One line on what to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.kind() {
            ErrorKind::Permission => "run as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) and delegate a cgroup; `runbox doctor` shows what this host offers",
            ErrorKind::Unavailable => "`runbox doctor` shows which kernel features this host offers; drop the option or use a host that has it",
            ErrorKind::CommandNotFound => "give the full path, or check that the program exists in the sandbox's root (host /usr or --rootfs)",
            ErrorKind::NotExecutable => "check the file's execute permission and that its interpreter exists inside the sandbox",
            ErrorKind::Usage => "see `runbox run --help`",
            ErrorKind::Internal => return None,
        })
    }
}
