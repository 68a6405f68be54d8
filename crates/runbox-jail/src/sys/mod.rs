//! The only place in runbox-jail with `unsafe`: thin wrappers over syscalls that rustix does
//! not expose (clone with namespace flags, mount_setattr, OFD locks, the loopback ioctl,
//! landlock). Whatever the cloned child calls must be async-signal-safe: no allocation, no
//! locks (see apply.rs).
//! Each wrapper keeps the invariant local and documented; callers see safe functions.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What `clone_process` returned in the calling process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: i32 },
    Child,
}

/// `clone(2)` used like `fork(2)` but with namespace flags, so the child is born inside its
/// new user, pid, mount, net, ipc and uts namespaces (one syscall instead of fork + unshare).
///
/// The caller must be single-threaded (or accept that the child only runs async-signal-safe
/// code): like fork, only the calling thread is copied.
pub fn clone_process(flags: libc::c_ulong) -> io::Result<Forked> {
    // SAFETY: raw clone without CLONE_VM/CLONE_SETTLS behaves like fork(2): the child gets a
    // copy-on-write copy of the address space and continues on a copy of this stack, so no
    // memory is shared. The remaining arguments (child stack, tids, tls) are unused (null).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid as i32 }),
    }
}

/// Starts `child` as a new process that shares this one's memory until it execs, the way
/// posix_spawn does (`CLONE_VM | CLONE_VFORK`): no page tables are copied, and the caller is
/// suspended until the child has exec'd or exited. `child` runs on `stack` and must only make
/// raw syscalls and end in exec or `exit_now`, hence `Infallible` (it may write nothing the
/// caller relies on: errno is shared).
pub fn spawn_sharing_memory<F: FnOnce() -> std::convert::Infallible>(
    stack: &mut [u8],
    child: F,
) -> io::Result<i32> {
    // `f()` cannot return (its result type is uninhabited), which the lint calls unreachable.
    #[allow(unreachable_code)]
    extern "C" fn trampoline<F: FnOnce() -> std::convert::Infallible>(
        arg: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `arg` is the `Option<F>` of `spawn_sharing_memory`'s frame, which stays
        // alive and untouched while the caller is suspended (CLONE_VFORK).
        let slot = unsafe { &mut *arg.cast::<Option<F>>() };
        match slot.take() {
            Some(f) => match f() {},
            None => exit_now(127),
        }
    }
    let mut slot = Some(child);
    // The stack grows down: pass its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `trampoline` on `stack`, a buffer of the caller's that outlives
    // the child's use of it: CLONE_VFORK keeps the caller (and so this frame, `slot` and
    // `stack`) suspended until the child execs (new address space) or exits. Sharing the
    // address space is sound because the caller does nothing until then.
    let ret = unsafe {
        libc::clone(
            trampoline::<F>,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut slot as *mut Option<F>).cast(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// `mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) on `path` (relative to `dirfd`), recursively when `recursive`.
/// Only adds attributes: a mount attribute locked by a less privileged user namespace can be
/// added to but never cleared, so this cannot fail the way MS_REMOUNT does in a user namespace.
pub fn mount_setattr(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    recursive: bool,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let dirfd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `path` is a valid NUL-terminated string and `attr` a valid, initialised struct
    // whose size is passed alongside; the kernel only reads them during the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every fd >= `first` close-on-exec (close_range(2) with CLOSE_RANGE_CLOEXEC), so the
/// command inherits nothing but 0/1/2 whatever the caller leaked to us.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only changes fd flags of this process; no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors of this process; no memory is passed. The
    // caller (the freshly cloned child) owns no Rust object wrapping these numbers.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor >= 3 except those in `keep` (sorted ascending). For the freshly
/// cloned child, whose fd table is a copy of the whole parent's, other threads' fds included.
pub fn close_all_except(keep: &[i32]) -> io::Result<()> {
    let mut first: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else {
            continue;
        };
        if fd < first {
            continue;
        }
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    close_range(first, u32::MAX)
}

/// Drops capability `cap` from the bounding set (PR_CAPBSET_DROP); rustix only takes its own
/// enum, which lags behind new kernel capabilities, so we pass the raw number.
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// seccomp(SECCOMP_SET_MODE_FILTER, 0, prog): installs a classic BPF filter on the calling
/// thread. The kernel checks the program and requires no_new_privs (or CAP_SYS_ADMIN).
pub fn seccomp_set_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` describes `program`, which is valid for `len` instructions and outlives
    // the call; the kernel only copies the instructions in (it never writes through `filter`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes an open-file-description lock on byte `offset` of `fd` without waiting. Returns
/// false when another process holds it. OFD locks die with the last fd of the description,
/// so a crashed runbox frees its slot without cleanup.
pub fn try_lock_byte(fd: BorrowedFd<'_>, offset: u64) -> io::Result<bool> {
    // SAFETY: flock is plain old data; all-zero is valid and then filled in.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = offset as libc::off_t;
    lock.l_len = 1;
    // SAFETY: `lock` is valid for the duration of the call; fcntl reads it.
    let ret = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_OFD_SETLK,
            &lock as *const libc::flock,
        )
    };
    if ret == -1 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(true)
}

/// Writes all of `buf` to a raw fd without allocating (used in the child before exec).
pub fn write_all_raw(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// execve(2) with prepared, NUL-terminated pointer arrays. Returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are null-terminated arrays of
    // pointers into CStrings owned by the plan, which outlives this call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Ends the current process immediately, without running atexit handlers or destructors
/// (which belong to the parent's copy of the state).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Resets every signal disposition to default and unblocks all signals, so the command does
/// not inherit runbox's own signal handling.
pub fn reset_signals() {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it; the loop only installs
    // SIG_DFL, which is always valid (errors for SIGKILL/SIGSTOP are ignored on purpose).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Sets the parent-death signal, so the jail's init dies if runbox dies.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrows a descriptor the child inherited from the parent. The parent's `Prepared` owns
/// these fds and keeps them open until the child has exec'd or exited, so 'static is honest
/// within the child.
pub fn borrow_inherited(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: see above; the fd stays open for the child's lifetime.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Closes this process's copy of an inherited descriptor (the parent keeps its own).
pub fn close_inherited(raw: RawFd) {
    // SAFETY: closing a descriptor number this process owns a copy of; no Rust object in the
    // child owns it (the OwnedFds belong to the parent's copy of the state).
    unsafe { libc::close(raw) };
}

/// dup2(2).
pub fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates this process's fd table.
    if unsafe { libc::dup2(from, to) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// waitpid(-1): reaps any child, returning its pid and raw wait status.
pub fn wait_any() -> io::Result<(i32, i32)> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into our local integer.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((pid, status))
}

/// unshare(CLONE_NEWCGROUP).
pub fn unshare_cgroup_namespace() -> io::Result<()> {
    // SAFETY: unsharing the cgroup namespace does not invalidate any memory or fd; the
    // process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the kernel's ABI
/// version, or 0 when landlock is missing or disabled.
pub fn landlock_abi_version() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes a null attr pointer and size 0 by definition.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 {
        0
    } else {
        ret as i32
    }
}

/// `struct landlock_ruleset_attr` (uapi). Fields the running kernel does not know must be 0:
/// the kernel accepts a larger struct only when the extra bytes are zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LandlockRulesetAttr {
    pub handled_access_fs: u64,
    pub handled_access_net: u64,
    pub scoped: u64,
}

/// `struct landlock_path_beneath_attr` (uapi), which the kernel declares packed.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy)]
struct LandlockPathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_uint = 1;

fn errno_of(ret: libc::c_long) -> Result<libc::c_long, rustix::io::Errno> {
    if ret < 0 {
        Err(rustix::io::Errno::from_raw_os_error(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(ret)
    }
}

/// landlock_create_ruleset(2): a new ruleset fd (close-on-exec, as the kernel always makes it).
/// Async-signal-safe: no allocation.
pub fn landlock_create_ruleset(attr: &LandlockRulesetAttr) -> Result<OwnedFd, rustix::io::Errno> {
    // SAFETY: `attr` is a valid, initialised #[repr(C)] struct whose size is passed alongside;
    // the kernel only reads it during the call.
    let ret = errno_of(unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            attr as *const LandlockRulesetAttr,
            std::mem::size_of::<LandlockRulesetAttr>(),
            0 as libc::c_uint,
        )
    })?;
    // SAFETY: on success the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// landlock_add_rule(2) with LANDLOCK_RULE_PATH_BENEATH: `allowed` under `parent` (an O_PATH
/// fd). Async-signal-safe: no allocation.
pub fn landlock_add_path_rule(
    ruleset: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    allowed: u64,
) -> Result<(), rustix::io::Errno> {
    let attr = LandlockPathBeneathAttr {
        allowed_access: allowed,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: `attr` is a valid, initialised packed struct laid out as the uapi declares it;
    // the kernel only reads it during the call. Both fds are borrowed, so open.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const LandlockPathBeneathAttr,
            0 as libc::c_uint,
        )
    })?;
    Ok(())
}

/// landlock_restrict_self(2): enforces `ruleset` on the calling thread (the child is
/// single-threaded, so on the whole process). Requires no_new_privs or CAP_SYS_ADMIN.
pub fn landlock_restrict_self(ruleset: BorrowedFd<'_>) -> Result<(), rustix::io::Errno> {
    // SAFETY: integers only; the fd is borrowed, so open.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd(),
            0 as libc::c_uint,
        )
    })?;
    Ok(())
}

/// Overwrites `[start, end)` of this process's memory with NUL bytes, after copying `label`
/// to its start. Used by the jail's init on the argv and environment areas it inherited from
/// runbox, which /proc/1/cmdline would otherwise show to the sandbox (host paths, --env
/// values). The range must be the process's own arg or env area as read from
/// /proc/self/stat by the parent this process was cloned from.
pub fn scrub_memory(start: usize, end: usize, label: &[u8]) {
    if start == 0 || end <= start {
        return;
    }
    let len = end - start;
    let ptr = start as *mut u8;
    // SAFETY: [start, end) is the argv or environment block of this very process (the
    // addresses come from our own /proc/self/stat, read before clone, and the child shares the
    // parent's layout). That block is ordinary writable stack memory owned by the process;
    // after the copy nobody in the child reads argv/environ again.
    unsafe {
        std::ptr::write_bytes(ptr, 0, len);
        std::ptr::copy_nonoverlapping(label.as_ptr(), ptr, label.len().min(len.saturating_sub(1)));
    }
}

/// setns(2) of the calling thread into the network namespace of the process behind `pidfd`
/// (Linux >= 5.8 accepts a pidfd). Only the calling thread moves.
pub fn enter_net_namespace_of(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes an fd and a flag; it changes only this thread's network namespace,
    // which the caller uses on a thread of its own that ends right after.
    if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A helper process of the jail's init that creates the sandbox's network namespace (and
/// brings its loopback up) while the init builds the filesystem. Creating a network namespace
/// is the largest single kernel cost of a start (about 0.5 ms, all in `clone` when the init
/// asks for it); done here it overlaps with the mounts on the other core.
///
/// The helper shares the init's memory (`CLONE_VM`, no page-table copy) but nothing else the
/// init is using: it runs on its own stack and makes only raw syscalls through rustix, which
/// never touch the (shared) `errno`. It reports one errno (0 for success) on a pipe, then
/// sleeps until `join` has moved the init into its namespace and killed it. It lives inside
/// the sandbox's pid namespace, so it also dies if the init does.
#[derive(Debug)]
pub struct NetworkHelper<'stack> {
    pidfd: OwnedFd,
    result: OwnedFd,
    _stack: std::marker::PhantomData<&'stack mut [u8]>,
}

extern "C" fn network_helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // The argument is not a pointer but the write end of the result pipe, passed by value
    // so that the helper reads nothing of the init's memory.
    // SAFETY: that descriptor is open in the helper (its own copy of the fd table).
    let result_write = unsafe { BorrowedFd::borrow_raw(arg as usize as RawFd) };
    let errno = match create_network() {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    let _ = rustix::io::write(result_write, &errno.to_ne_bytes());
    loop {
        let forever = rustix::thread::Timespec {
            tv_sec: 3600,
            tv_nsec: 0,
        };
        let _ = rustix::thread::nanosleep(&forever);
    }
}

/// unshare(CLONE_NEWNET) and `ip link set lo up`, with rustix only (no errno).
fn create_network() -> rustix::io::Result<()> {
    use rustix::ioctl::{ioctl, Setter};
    // SAFETY: unsharing only the network namespace of this single-purpose process affects no
    // memory or descriptor that Rust code relies on.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    const SIOCSIFFLAGS: rustix::ioctl::Opcode = libc::SIOCSIFFLAGS as rustix::ioctl::Opcode;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq` through the pointer Setter passes.
    unsafe { ioctl(&sock, Setter::<SIOCSIFFLAGS, libc::ifreq>::new(req)) }
}

impl<'stack> NetworkHelper<'stack> {
    /// Starts the helper on `stack`, which it uses until `join` (or drop) has ended it.
    pub fn start(stack: &'stack mut [u8]) -> io::Result<Self> {
        let (result, result_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
        let mut pidfd: libc::c_int = -1;
        // SAFETY: the helper runs `network_helper_main` on `stack`, which the returned value
        // borrows mutably until the helper is dead (`join` and drop kill and reap it). The
        // helper reads no memory of ours: its argument is a descriptor number.
        let ret = unsafe {
            libc::clone(
                network_helper_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
                result_write.as_raw_fd() as usize as *mut libc::c_void,
                &mut pidfd as *mut libc::c_int,
            )
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: clone with CLONE_PIDFD stored a new descriptor that we now own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(Self {
            pidfd,
            result,
            _stack: std::marker::PhantomData,
        })
    }

    /// Waits for the helper's namespace, moves the calling process into it and ends the
    /// helper. The error is the helper's own when it could not make the namespace.
    pub fn join(self) -> io::Result<()> {
        let mut errno = [0u8; 4];
        let joined = match rustix::io::read(&self.result, &mut errno) {
            Ok(4) => match i32::from_ne_bytes(errno) {
                0 => {
                    // setns through a pidfd is a ptrace access check on the helper. Our
                    // shared memory turned non-dumpable when the init changed ids, and then
                    // the check wants CAP_SYS_PTRACE where that memory was created (the
                    // host). Dumpable for this one call, and at once not again: nothing but
                    // the jail's own code runs in the sandbox yet.
                    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
                    set_dumpable_behavior(DumpableBehavior::Dumpable)?;
                    let entered = enter_net_namespace_of(self.pidfd.as_fd());
                    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
                    entered
                }
                e => Err(io::Error::from_raw_os_error(e)),
            },
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EPIPE)),
            Err(e) => Err(e.into()),
        };
        drop(self);
        joined
    }
}

impl Drop for NetworkHelper<'_> {
    fn drop(&mut self) {
        use rustix::process::{pidfd_send_signal, waitid, Signal, WaitId, WaitIdOptions};
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED);
    }
}
