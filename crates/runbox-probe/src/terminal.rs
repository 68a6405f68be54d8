//! Terminal injection: TIOCSTI pushes bytes into a terminal's input queue (typing commands
//! into the shell that started the sandbox); TIOCLINUX reaches the virtual console.
//!
//! The "highbits" variant passes the request as 0xFFFFFFFF00005412: the kernel compares
//! ioctl numbers on their low 32 bits, so a filter that compares all 64 bits is bypassed.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::report::{check, Failure, Outcome, Success};

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const HIGH_BITS: u64 = 0xffff_ffff_0000_0000;

/// The terminal to aim at: our stdin, the controlling terminal, or a fresh pty's slave end
/// (harmless to inject into; the master is kept open alongside it).
enum Target {
    Stdin,
    /// The descriptors (the one to aim at first) and whether it became our controlling tty.
    Owned(Vec<OwnedFd>, bool),
}

impl Target {
    fn open(mode: &str) -> Result<Self, Failure> {
        match mode {
            "stdin" => Ok(Target::Stdin),
            "tty" => Ok(Target::Owned(vec![open_fd(c"/dev/tty", "/dev/tty")?], true)),
            "pty" => {
                let master = open_fd(c"/dev/ptmx", "/dev/ptmx")?;
                let mut unlock: libc::c_int = 0;
                // SAFETY: TIOCSPTLCK reads an int; TIOCGPTN writes one.
                let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) };
                check(ret as libc::c_long, "ioctl(TIOCSPTLCK)")?;
                let mut number: libc::c_uint = 0;
                // SAFETY: as above.
                let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) };
                check(ret as libc::c_long, "ioctl(TIOCGPTN)")?;
                let path = std::ffi::CString::new(format!("/dev/pts/{number}"))
                    .expect("no NUL in a pts path");
                let slave = open_fd(&path, "/dev/pts/N")?;
                let controlling = make_controlling(&slave);
                Ok(Target::Owned(vec![slave, master], controlling))
            }
            other => Err(Failure {
                errno: libc::EINVAL,
                step: format!("unknown terminal {other:?}"),
            }),
        }
    }

    fn fd(&self) -> libc::c_int {
        match self {
            Target::Stdin => 0,
            Target::Owned(fds, _) => fds[0].as_raw_fd(),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Target::Owned(_, true) => " (our controlling terminal)",
            _ => "",
        }
    }
}

/// Makes the pty our controlling terminal: the case in which the kernel lets an unprivileged
/// process use TIOCSTI, so only the sandbox's filter can stop it. Closing the master later
/// hangs the terminal up, hence SIGHUP is ignored.
fn make_controlling(slave: &OwnedFd) -> bool {
    // SAFETY: plain syscalls on our own process and descriptor.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // Fails harmlessly when we already lead a session (e.g. as a sandbox's first process).
        libc::setsid();
        libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) == 0
            || libc::tcgetsid(slave.as_raw_fd()) == libc::getsid(0)
    }
}

fn open_fd(path: &std::ffi::CStr, what: &str) -> Result<OwnedFd, Failure> {
    use std::os::fd::FromRawFd;
    // SAFETY: path is NUL-terminated.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    check(fd as libc::c_long, &format!("open({what})"))?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_raw(fd: libc::c_int, request: u64, arg: *const u8) -> libc::c_long {
    // SAFETY: both requests read at most one byte from arg, which points at a live byte.
    unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) }
}

pub fn tiocsti(args: &[String]) -> Outcome {
    let mode = crate::arg(args, 0, "stdin|tty|pty");
    let high = args.get(1).is_some_and(|a| a == "highbits");
    let target = Target::open(mode)?;
    let request = if high { TIOCSTI | HIGH_BITS } else { TIOCSTI };
    let byte = b'#';
    check(
        ioctl_raw(target.fd(), request, &byte),
        &format!("ioctl({mode}{}, {request:#x})", target.describe()),
    )?;
    Ok(Success::new(format!(
        "injected a byte into {mode}{} with request {request:#x}",
        target.describe()
    )))
}

pub fn tioclinux(args: &[String]) -> Outcome {
    const TIOCL_GETSHIFTSTATE: u8 = 6;
    let mode = crate::arg(args, 0, "stdin|tty|pty");
    let target = Target::open(mode)?;
    let subcode = TIOCL_GETSHIFTSTATE;
    check(
        ioctl_raw(target.fd(), TIOCLINUX, &subcode),
        &format!("ioctl({mode}{}, TIOCLINUX)", target.describe()),
    )?;
    Ok(Success::new(format!(
        "TIOCLINUX accepted on {mode}{}",
        target.describe()
    )))
}
