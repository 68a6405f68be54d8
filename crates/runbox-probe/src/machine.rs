//! Kernel attack surface and machine-wide state: eBPF, perf, io_uring, keyrings,
//! userfaultfd, and the administrative syscalls (kexec, modules, reboot, clock, kernel log,
//! I/O ports, LDT).
//!
//! The administrative calls carry deliberately invalid arguments, so that on the host (as
//! root) they fail with EINVAL/EFAULT/ENOENT/ENOEXEC (or ENOSYS when the kernel lacks the
//! feature) instead of acting. In the sandbox they must fail with EPERM before any argument
//! is looked at.

use crate::report::{check, Outcome, Success};

fn close(fd: libc::c_long) {
    // SAFETY: fd was returned to us by the kernel and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
}

/// BPF_MAP_CREATE of a one-element array map.
pub fn bpf(_: &[String]) -> Outcome {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr, map-create part: map_type, key_size, value_size, max_entries; the
    // rest must be zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is a readable buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let fd = check(fd, "bpf(BPF_MAP_CREATE)")?;
    close(fd);
    Ok(Success::new("created a BPF array map"))
}

/// A software task-clock counter on ourselves.
pub fn perf_event_open(_: &[String]) -> Outcome {
    const PERF_TYPE_SOFTWARE: u64 = 1;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
    const DISABLED_EXCLUDE_KERNEL_EXCLUDE_HV: u64 = 1 | (1 << 5) | (1 << 6);
    // struct perf_event_attr: u32 type + u32 size, u64 config, three u64s, then the flags.
    let mut attr = [0u64; 16];
    let size = std::mem::size_of_val(&attr) as u64;
    attr[0] = PERF_TYPE_SOFTWARE | (size << 32);
    attr[1] = PERF_COUNT_SW_TASK_CLOCK;
    attr[5] = DISABLED_EXCLUDE_KERNEL_EXCLUDE_HV;
    // SAFETY: attr is a readable perf_event_attr of the size it declares.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    let fd = check(fd, "perf_event_open(task-clock)")?;
    close(fd);
    Ok(Success::new("opened a perf event"))
}

pub fn io_uring_setup(_: &[String]) -> Outcome {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: params is a writable io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    let fd = check(fd, "io_uring_setup(1)")?;
    close(fd);
    Ok(Success::new("created an io_uring"))
}

/// add_key("user", ...) into the process keyring (freed when we exit).
pub fn keyctl(_: &[String]) -> Outcome {
    const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;
    let payload = b"x";
    // SAFETY: type and description are NUL-terminated; payload is readable for its length.
    let key = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"runbox-probe".as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_PROCESS_KEYRING,
        )
    };
    let key = check(key, "add_key(user)")?;
    Ok(Success::new(format!(
        "added key {key} to the process keyring"
    )))
}

pub fn userfaultfd(_: &[String]) -> Outcome {
    // SAFETY: takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    let fd = check(fd, "userfaultfd")?;
    close(fd);
    Ok(Success::new("created a userfaultfd"))
}

/// kexec_load with 1000 segments (the limit is 16): EINVAL after the capability check.
pub fn kexec_load(_: &[String]) -> Outcome {
    // SAFETY: the segment pointer is NULL and rejected before use.
    let ret = unsafe { libc::syscall(libc::SYS_kexec_load, 0usize, 1000usize, 0usize, 0usize) };
    check(ret, "kexec_load(1000 segments)").map(|_| Success::new("kexec_load accepted"))
}

/// init_module of an empty image: ENOEXEC after the capability check.
pub fn init_module(_: &[String]) -> Outcome {
    // SAFETY: a zero-length image is rejected before the pointer is read.
    let ret = unsafe { libc::syscall(libc::SYS_init_module, 0usize, 0usize, c"".as_ptr()) };
    check(ret, "init_module(empty)").map(|_| Success::new("init_module accepted"))
}

/// reboot with a wrong magic1 and an unknown command: EINVAL after the capability check.
pub fn reboot(_: &[String]) -> Outcome {
    const BAD_MAGIC1: libc::c_long = 0;
    const BAD_MAGIC2: libc::c_long = 0;
    const UNKNOWN_CMD: libc::c_long = 0x0bad_c0de;
    // SAFETY: wrong magic numbers make the kernel return before doing anything.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            BAD_MAGIC1,
            BAD_MAGIC2,
            UNKNOWN_CMD,
            0usize,
        )
    };
    check(ret, "reboot(bad magic)").map(|_| Success::new("reboot returned"))
}

/// An address in the never-mapped first page: copying from it fails with EFAULT.
const UNMAPPED: usize = 1;

pub fn settimeofday(_: &[String]) -> Outcome {
    // SAFETY: the kernel copies from UNMAPPED and fails; nothing is written.
    let ret = unsafe { libc::syscall(libc::SYS_settimeofday, UNMAPPED, 0usize) };
    check(ret, "settimeofday(unmapped)").map(|_| Success::new("settimeofday accepted"))
}

pub fn clock_settime(_: &[String]) -> Outcome {
    // SAFETY: as above.
    let ret = unsafe { libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, UNMAPPED) };
    check(ret, "clock_settime(CLOCK_REALTIME, unmapped)")
        .map(|_| Success::new("clock_settime accepted"))
}

/// SYSLOG_ACTION_SIZE_BUFFER: harmless on the host, but the log leaks kernel addresses.
pub fn syslog(_: &[String]) -> Outcome {
    const SYSLOG_ACTION_SIZE_BUFFER: libc::c_long = 10;
    // SAFETY: this action reads no buffer.
    let ret = unsafe { libc::syscall(libc::SYS_syslog, SYSLOG_ACTION_SIZE_BUFFER, 0usize, 0) };
    let size = check(ret, "syslog(SIZE_BUFFER)")?;
    Ok(Success::new(format!("kernel log buffer is {size} bytes")))
}

/// iopl(4): EINVAL (levels go to 3) on the host.
pub fn iopl(_: &[String]) -> Outcome {
    // SAFETY: takes a plain integer.
    let ret = unsafe { libc::syscall(libc::SYS_iopl, 4) };
    check(ret, "iopl(4)").map(|_| Success::new("iopl accepted"))
}

/// ioperm beyond the 65536 ports: EINVAL on the host.
pub fn ioperm(_: &[String]) -> Outcome {
    // SAFETY: takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_ioperm, 0x1_0000usize, 1usize, 1) };
    check(ret, "ioperm(0x10000, 1, on)").map(|_| Success::new("ioperm accepted"))
}

/// Reads the LDT (func 0): harmless, allowed for root on the host.
pub fn modify_ldt(_: &[String]) -> Outcome {
    let mut ldt = [0u8; 64];
    // SAFETY: ldt is writable for the length passed.
    let ret = unsafe { libc::syscall(libc::SYS_modify_ldt, 0, ldt.as_mut_ptr(), ldt.len()) };
    let n = check(ret, "modify_ldt(read)")?;
    Ok(Success::new(format!("read {n} bytes of the LDT")))
}
