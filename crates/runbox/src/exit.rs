//! Exit codes of runbox's own failures (sysexits.h where one fits, shell conventions for
//! commands that cannot be found or run). The command's own code passes through otherwise.

use runbox_jail::ErrorKind;

/// Bad usage: missing command, unknown flag.
pub const USAGE: i32 = 64;
/// A value that does not parse (size, duration, path).
pub const DATA: i32 = 65;
/// The host cannot enforce what was asked.
pub const UNAVAILABLE: i32 = 69;
/// Internal failure while building the sandbox.
pub const SOFTWARE: i32 = 70;
/// Not allowed to create namespaces or cgroups.
pub const NO_PERMISSION: i32 = 77;
pub const NOT_EXECUTABLE: i32 = 126;
pub const NOT_FOUND: i32 = 127;

pub fn for_kind(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Usage => USAGE,
        ErrorKind::Unavailable => UNAVAILABLE,
        ErrorKind::Permission => NO_PERMISSION,
        ErrorKind::CommandNotFound => NOT_FOUND,
        ErrorKind::NotExecutable => NOT_EXECUTABLE,
        ErrorKind::Internal => SOFTWARE,
    }
}
