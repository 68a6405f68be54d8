//! New namespaces: with a nested user namespace a sandboxed process regains every
//! capability over the objects it creates, which is the usual first step of kernel exploits.

use crate::report::{check, Failure, Outcome, Success};

fn unshare(flag: libc::c_int, what: &str) -> Outcome {
    // SAFETY: unshare only affects this process.
    let ret = unsafe { libc::unshare(flag) };
    check(ret as libc::c_long, &format!("unshare({what})"))
        .map(|_| Success::new(format!("entered a new {what} namespace")))
}

pub fn unshare_user(_: &[String]) -> Outcome {
    unshare(libc::CLONE_NEWUSER, "CLONE_NEWUSER")
}

pub fn unshare_net(_: &[String]) -> Outcome {
    unshare(libc::CLONE_NEWNET, "CLONE_NEWNET")
}

pub fn unshare_mount(_: &[String]) -> Outcome {
    unshare(libc::CLONE_NEWNS, "CLONE_NEWNS")
}

/// setns() into our own network namespace: allowed for root on the host (a no-op join),
/// refused in the sandbox.
pub fn setns(_: &[String]) -> Outcome {
    let fd = std::fs::File::open("/proc/self/ns/net")
        .map_err(|e| Failure::from_io("open(/proc/self/ns/net)", &e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: fd is an open namespace file for the duration of the call.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret as libc::c_long, "setns(CLONE_NEWNET)")
        .map(|_| Success::new("joined the network namespace of /proc/self/ns/net"))
}

/// Waits for a child made by a raw clone and describes how it ended.
fn reap(pid: libc::pid_t) -> String {
    let mut status = 0;
    // SAFETY: pid is our child; status is writable.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    format!("child {pid} ended with wait status {status:#x}")
}

/// Raw clone(2) with CLONE_NEWUSER, bypassing glibc (which would use clone3).
pub fn clone_newuser(_: &[String]) -> Outcome {
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: without CLONE_VM the child gets a copy of our memory and stack (fork
    // semantics); it only calls _exit.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    let pid = check(ret, "clone(CLONE_NEWUSER|SIGCHLD)")?;
    if pid == 0 {
        // SAFETY: the child leaves at once without running destructors.
        unsafe { libc::_exit(0) };
    }
    Ok(Success::new(format!(
        "created a child in a new user namespace; {}",
        reap(pid as libc::pid_t)
    )))
}

/// struct clone_args, version 0 (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Raw clone3(2) with no flags. The sandbox answers ENOSYS (its flags live in memory that
/// seccomp cannot inspect), so libc falls back to clone(2).
pub fn clone3(_: &[String]) -> Outcome {
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: args is a valid clone_args of the size passed; fork semantics as above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = check(ret, "clone3")?;
    if pid == 0 {
        // SAFETY: the child leaves at once without running destructors.
        unsafe { libc::_exit(0) };
    }
    Ok(Success::new(format!(
        "clone3 created a child; {}",
        reap(pid as libc::pid_t)
    )))
}
