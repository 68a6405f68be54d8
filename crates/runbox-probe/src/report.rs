//! The one JSON line a probe prints, and errno names.
//!
//! Tests match on `errno_name` (stable across architectures) rather than the number; the
//! number is kept for humans reading a failure.

use serde_json::{json, Value};

/// A failed step: which syscall (or preparation step) failed and with which errno.
#[derive(Debug, Clone)]
pub struct Failure {
    pub errno: i32,
    pub step: String,
}

impl Failure {
    /// The calling thread's current errno, attributed to `step`.
    pub fn last(step: impl Into<String>) -> Self {
        Failure {
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            step: step.into(),
        }
    }

    pub fn from_io(step: impl Into<String>, err: &std::io::Error) -> Self {
        Failure {
            errno: err.raw_os_error().unwrap_or(0),
            step: step.into(),
        }
    }
}

/// What a case produced when the forbidden thing worked: a description and optional data.
#[derive(Debug, Default)]
pub struct Success {
    pub detail: String,
    pub data: Option<Value>,
}

impl Success {
    pub fn new(detail: impl Into<String>) -> Self {
        Success {
            detail: detail.into(),
            data: None,
        }
    }

    pub fn with_data(detail: impl Into<String>, data: Value) -> Self {
        Success {
            detail: detail.into(),
            data: Some(data),
        }
    }
}

pub type Outcome = Result<Success, Failure>;

/// Turns a raw syscall return value into a result, reading errno on -1.
pub fn check(ret: libc::c_long, step: &str) -> Result<libc::c_long, Failure> {
    if ret == -1 {
        Err(Failure::last(step))
    } else {
        Ok(ret)
    }
}

pub fn to_json(case: &str, outcome: &Outcome) -> Value {
    match outcome {
        Ok(success) => {
            let mut line = json!({
                "case": case,
                "outcome": "ok",
                "errno": null,
                "errno_name": null,
                "detail": success.detail,
            });
            if let Some(data) = &success.data {
                line["data"] = data.clone();
            }
            line
        }
        Err(failure) => json!({
            "case": case,
            "outcome": "errno",
            "errno": failure.errno,
            "errno_name": errno_name(failure.errno),
            "detail": format!("{} failed: {}", failure.step,
                std::io::Error::from_raw_os_error(failure.errno)),
        }),
    }
}

/// Prints the report line and flushes, so that it survives a later fork or kill.
pub fn emit(case: &str, outcome: &Outcome) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout leaves nothing to report to; the exit status still tells the runner.
    let _ = writeln!(out, "{}", to_json(case, outcome));
    let _ = out.flush();
}

macro_rules! errno_table {
    ($($name:ident),* $(,)?) => {
        /// The symbolic name of an errno value ("EPERM"), or "E<number>" when unknown.
        pub fn errno_name(errno: i32) -> String {
            $( if errno == libc::$name { return stringify!($name).to_string(); } )*
            format!("E{errno}")
        }
    };
}

// EOPNOTSUPP before ENOTSUP and EAGAIN before EWOULDBLOCK: same numbers on Linux, and these
// are the names the kernel sources use.
errno_table!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    ERANGE,
    EDEADLK,
    ENAMETOOLONG,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENOMSG,
    ENODATA,
    ENOTSOCK,
    EDESTADDRREQ,
    EMSGSIZE,
    EPROTOTYPE,
    ENOPROTOOPT,
    EPROTONOSUPPORT,
    ESOCKTNOSUPPORT,
    EOPNOTSUPP,
    EPFNOSUPPORT,
    EAFNOSUPPORT,
    EADDRINUSE,
    EADDRNOTAVAIL,
    ENETDOWN,
    ENETUNREACH,
    ECONNABORTED,
    ECONNRESET,
    ENOBUFS,
    EISCONN,
    ENOTCONN,
    ETIMEDOUT,
    ECONNREFUSED,
    EHOSTUNREACH,
    EALREADY,
    EINPROGRESS,
    ESTALE,
    EDQUOT,
    ECANCELED,
    ENOKEY,
    EKEYEXPIRED,
    EKEYREVOKED,
    EKEYREJECTED,
    EOWNERDEAD,
    ENOTRECOVERABLE,
    ERFKILL,
    EHWPOISON,
    EBADMSG,
    EOVERFLOW,
    EUSERS,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_are_symbolic() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(libc::ENOSYS), "ENOSYS");
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(9999), "E9999");
    }

    #[test]
    fn failure_line_has_every_field() {
        let line = to_json(
            "x",
            &Err(Failure {
                errno: libc::EPERM,
                step: "mount".into(),
            }),
        );
        assert_eq!(line["outcome"], "errno");
        assert_eq!(line["errno"], libc::EPERM);
        assert_eq!(line["errno_name"], "EPERM");
    }
}
