//! The child side: executes a finished plan, one step a line, then becomes the sandbox's init
//! (PID 1) and forks the command. Nothing here decides anything and nothing logs: failures
//! travel to the parent over the report pipe as (step index, errno).
//!
//! The rule for everything reachable from `init_main`: async-signal-safe code only. The child
//! is cloned from a process that may have other threads (a server), and only the cloning
//! thread is copied; a lock another thread held at that moment (the allocator's, stdio's)
//! stays locked forever in the child. So: no allocation (no Vec, String, CString, format!,
//! Box, no io::Error with a custom payload), no panics (their message allocates), no
//! locks; only raw syscalls on data the parent prepared (`Prepared`) and stack buffers.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use rustix::io::Errno;
use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};

use crate::plan::{Rlimit, Step};
use crate::prepare::Prepared;
use crate::report::{Message, EXEC_FAILED_EXIT, SETUP_FAILED_EXIT};
use crate::sys;

/// Pipes the child talks to the parent through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildPipes {
    /// Read end; the parent writes one byte when our id maps are written and a second when
    /// we are in our cgroup.
    pub go: RawFd,
    /// Write end for `Message`s (close-on-exec, so exec success shows as EOF).
    pub report: RawFd,
    /// Write end for the command's raw wait status.
    pub status: RawFd,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

fn fd(raw: RawFd) -> BorrowedFd<'static> {
    sys::borrow_inherited(raw)
}

fn send(pipes: &ChildPipes, msg: Message) {
    let _ = sys::write_all_raw(pipes.report, &msg.encode());
}

/// Entry point of the cloned child. Never returns.
pub(crate) fn init_main(prepared: &Prepared, pipes: ChildPipes) -> ! {
    sys::reset_signals();
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // Descriptors other threads of the parent had open at the clone (another sandbox's
    // output pipes, a client's socket) would otherwise stay open as long as this init lives.
    let _ = sys::close_all_except(&prepared.inherited_fds);
    let [(arg_start, arg_end), (env_start, env_end)] = prepared.inherited_blocks;
    sys::scrub_memory(arg_start, arg_end, b"runbox-init");
    sys::scrub_memory(env_start, env_end, b"");
    // Modes in the plan are exact; the command gets the usual 022 back before exec.
    rustix::process::umask(rustix::fs::Mode::empty());
    // Wait for the parent: uid/gid maps written and cgroup joined. EOF means it died.
    let mut byte = [0u8; 1];
    if !matches!(rustix::io::read(fd(pipes.go), &mut byte), Ok(1)) {
        sys::exit_now(SETUP_FAILED_EXIT);
    }
    let _ = rustix::process::setsid();

    let mut network_stack = [0u8; 16 * 1024];
    let mut network = Network::Idle(&mut network_stack);
    for (index, step) in prepared.steps.iter().enumerate() {
        if let Err(errno) = run_step(step, prepared, &pipes, &mut network) {
            send(
                &pipes,
                Message::SetupFailed {
                    step: index as u32,
                    errno: errno.raw_os_error(),
                },
            );
            sys::exit_now(SETUP_FAILED_EXIT);
        }
        if matches!(step, Step::Landlock) {
            send(
                &pipes,
                Message::Landlock {
                    status: prepared.landlock_outcome.get(),
                },
            );
        }
    }
    send(&pipes, Message::Ready);
    if prepared.as_pid1 {
        exec_command(prepared, &pipes);
    }

    // The command starts posix_spawn-style, without copying our page tables; we are
    // suspended until it has exec'd.
    let mut stack = [0u8; 32 * 1024];
    let command = match sys::spawn_sharing_memory(&mut stack, || -> std::convert::Infallible {
        exec_command(prepared, &pipes)
    }) {
        Ok(child) => child,
        Err(e) => {
            send(
                &pipes,
                Message::SetupFailed {
                    step: u32::MAX,
                    errno: e.raw_os_error().unwrap_or(0),
                },
            );
            sys::exit_now(SETUP_FAILED_EXIT);
        }
    };
    // Only the command holds the report pipe now; its exec closes it, which the parent reads
    // as "started". Our stdio copies go too, so EOF on output means the sandbox is done.
    for raw in [pipes.report, pipes.stdin, pipes.stdout, pipes.stderr] {
        sys::close_inherited(raw);
    }
    reap_until(command, pipes.status)
}

/// The network helper across its two steps: the stack it will run on, then the helper.
enum Network<'a> {
    Idle(&'a mut [u8]),
    Running(sys::NetworkHelper<'a>),
    /// Joined, or taken by a failed step.
    Done,
}

/// PID 1's job: reap every child; when the command itself ends, hand its wait status to the
/// parent and exit, which makes the kernel kill whatever the command left behind.
fn reap_until(command: i32, status_fd: RawFd) -> ! {
    loop {
        match sys::wait_any() {
            Ok((pid, status)) if pid == command => {
                let _ = sys::write_all_raw(status_fd, &status.to_ne_bytes());
                sys::exit_now(0);
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => sys::exit_now(0),
            Err(_) => {}
        }
    }
}

fn exec_command(prepared: &Prepared, pipes: &ChildPipes) -> ! {
    let _ = rustix::process::setsid();
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    for (from, to) in [(pipes.stdin, 0), (pipes.stdout, 1), (pipes.stderr, 2)] {
        let _ = sys::dup_onto(from, to);
    }
    // Passed descriptors become 3, 4, ...; dup2 leaves the copies without close-on-exec.
    for (i, &from) in prepared.pass_fds.iter().enumerate() {
        let _ = sys::dup_onto(from, 3 + i as i32);
    }
    let exec = &prepared.exec;
    let mut errno = libc::ENOENT;
    for path in &exec.candidates {
        let err = sys::execve(path, &exec.argv_ptrs, &exec.envp_ptrs);
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => errno = libc::EACCES,
            Some(other) => {
                errno = other;
                break;
            }
            None => {}
        }
    }
    send(pipes, Message::ExecFailed { errno });
    sys::exit_now(EXEC_FAILED_EXIT)
}

fn run_step(
    step: &Step,
    prepared: &Prepared,
    pipes: &ChildPipes,
    network: &mut Network<'_>,
) -> Result<(), Errno> {
    match step {
        Step::AwaitCgroup => {
            let mut byte = [0u8; 1];
            if !matches!(rustix::io::read(fd(pipes.go), &mut byte), Ok(1)) {
                return Err(Errno::PIPE);
            }
        }
        Step::RearmParentDeathSignal => {
            sys::set_parent_death_signal(libc::SIGKILL).map_err(io_errno)?;
            // The parent keeps its end of the go pipe open for the sandbox's whole life: a
            // hang-up means it died before the signal was armed again.
            let go = fd(pipes.go);
            let mut fds = [rustix::event::PollFd::new(
                &go,
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut fds, Some(&zero));
            if fds[0].revents().contains(rustix::event::PollFlags::HUP) {
                return Err(Errno::PIPE);
            }
            sys::close_inherited(pipes.go);
        }
        Step::BecomeNamespaceRoot => {
            rustix::thread::set_thread_res_gid(gid(0), gid(0), gid(0))?;
            rustix::thread::set_thread_res_uid(uid(0), uid(0), uid(0))?;
        }
        Step::UnshareCgroupNamespace => {
            sys::unshare_cgroup_namespace().map_err(io_errno)?;
        }
        Step::MakeMountsPrivate => {
            mount::mount_change(
                c"/",
                MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
            )?;
        }
        Step::MountTmpfs {
            target,
            options,
            noexec,
        } => {
            let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
            if *noexec {
                flags |= MountFlags::NOEXEC;
            }
            mount::mount(
                c"tmpfs",
                target.as_c_str(),
                c"tmpfs",
                flags,
                options.as_c_str(),
            )?;
        }
        Step::Mkdir { path, mode } => {
            // The umask is 0 in init (see init_main), so the mode is exact.
            let mode = rustix::fs::Mode::from_raw_mode(*mode);
            match with_parents(path, || rustix::fs::mkdir(path.as_c_str(), mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Step::Symlink { target, link } => {
            with_parents(link, || {
                rustix::fs::symlink(target.as_c_str(), link.as_c_str())
            })?;
        }
        Step::WriteFile {
            path,
            contents,
            mode,
        } => {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::TRUNC
                | OFlags::CLOEXEC
                | OFlags::NOFOLLOW;
            let file = with_parents(path, || {
                rustix::fs::open(path.as_c_str(), flags, Mode::from_raw_mode(*mode))
            })?;
            sys::write_all_raw(file.as_raw_fd(), contents).map_err(io_errno)?;
        }
        Step::OpenTree {
            tree,
            source,
            attrs,
            recursive,
        } => {
            use rustix::mount::OpenTreeFlags as F;
            let mut flags = F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC;
            if *recursive {
                flags |= F::AT_RECURSIVE;
            }
            let fd = mount::open_tree(rustix::fs::CWD, source.as_c_str(), flags)?;
            sys::mount_setattr(Some(fd.as_fd()), c"", *recursive, *attrs, None)
                .map_err(io_errno)?;
            // Kept open (leaked on purpose) until AttachTree consumes it; close-on-exec.
            let slot = prepared.tree_fds.get(tree.0).ok_or(Errno::BADF)?;
            slot.set(std::os::fd::IntoRawFd::into_raw_fd(fd));
        }
        Step::AttachTree { tree, target } => {
            let raw = prepared.tree_fds.get(tree.0).ok_or(Errno::BADF)?.get();
            let tree_fd = sys::borrow_inherited(raw);
            mount::move_mount(
                tree_fd,
                c"",
                rustix::fs::CWD,
                target.as_c_str(),
                mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )?;
        }
        Step::MountProc { target } => {
            let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
            mount::mount(c"proc", target.as_c_str(), c"proc", flags, c"")?;
        }
        Step::MountDevpts { target } => {
            let flags = MountFlags::NOSUID | MountFlags::NOEXEC;
            mount::mount(
                c"devpts",
                target.as_c_str(),
                c"devpts",
                flags,
                c"newinstance,ptmxmode=0666,mode=0620",
            )?;
        }
        Step::BindOver { source, target } => {
            match mount::mount_bind_recursive(source.as_c_str(), target.as_c_str()) {
                // The entry does not exist on this kernel: nothing to hide.
                Err(Errno::NOENT) => {}
                other => other?,
            }
        }
        Step::MakeReadOnly { target } => {
            let attrs = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            match sys::mount_setattr(None, target, true, attrs, None) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                other => other.map_err(io_errno)?,
            }
        }
        Step::SetHostname { name } => {
            rustix::system::sethostname(name.as_bytes())?;
        }
        Step::StartNetwork => {
            let Network::Idle(stack) = std::mem::replace(network, Network::Done) else {
                return Err(Errno::INVAL);
            };
            *network = Network::Running(sys::NetworkHelper::start(stack).map_err(io_errno)?);
        }
        Step::JoinNetwork => {
            let Network::Running(helper) = std::mem::replace(network, Network::Done) else {
                return Err(Errno::INVAL);
            };
            helper.join().map_err(io_errno)?;
        }
        Step::PivotRoot { new_root } => {
            // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
            // then leaves only the new root (no put_old directory needed).
            rustix::process::chdir(new_root.as_c_str())?;
            rustix::process::pivot_root(c".", c".")?;
            mount::unmount(c".", UnmountFlags::DETACH)?;
            rustix::process::chdir(c"/")?;
        }
        Step::RootReadOnly => {
            sys::mount_setattr(
                None,
                c"/",
                false,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                None,
            )
            .map_err(io_errno)?;
        }
        Step::Chdir { path } => rustix::process::chdir(path.as_c_str())?,
        Step::SetRlimit { resource, value } => {
            use rustix::process::{setrlimit, Resource, Rlimit as R};
            let resource = match resource {
                Rlimit::Core => Resource::Core,
                Rlimit::NoFile => Resource::Nofile,
                Rlimit::FileSize => Resource::Fsize,
            };
            setrlimit(
                resource,
                R {
                    current: Some(*value),
                    maximum: Some(*value),
                },
            )?;
        }
        Step::DropBoundingSet { last_cap } => {
            for cap in 0..=*last_cap {
                sys::drop_bounding_cap(cap).map_err(io_errno)?;
            }
        }
        Step::SwitchUser {
            uid: u,
            gid: g,
            clear_groups,
        } => {
            if *clear_groups {
                rustix::thread::set_thread_groups(&[])?;
            }
            rustix::thread::set_thread_res_gid(gid(*g), gid(*g), gid(*g))?;
            rustix::thread::set_thread_res_uid(uid(*u), uid(*u), uid(*u))?;
        }
        Step::ClearCapabilities => {
            rustix::thread::clear_ambient_capability_set()?;
            let empty = rustix::thread::CapabilitySet::empty();
            rustix::thread::set_capabilities(
                None,
                rustix::thread::CapabilitySets {
                    effective: empty,
                    permitted: empty,
                    inheritable: empty,
                },
            )?;
        }
        Step::NoNewPrivs => rustix::thread::set_no_new_privs(true)?,
        Step::Landlock => {
            let outcome = crate::landlock::restrict_self(&prepared.landlock)?;
            prepared.landlock_outcome.set(outcome);
        }
        Step::Seccomp => {
            crate::seccomp::install(&prepared.seccomp).map_err(io_errno)?;
        }
        Step::NonDumpable => {
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
        }
        Step::CloseInheritedFds => {
            sys::cloexec_from(3).map_err(io_errno)?;
        }
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

fn uid(raw: u32) -> rustix::process::Uid {
    rustix::process::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rustix::process::Gid {
    rustix::process::Gid::from_raw(raw)
}

/// Runs `op`; if it fails because a parent directory is missing, creates the parents and
/// runs it again (most paths' parents exist, so this saves a mkdir per component).
fn with_parents<T>(path: &CStr, mut op: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    match op() {
        Err(Errno::NOENT) => {
            mkdir_parents(path)?;
            op()
        }
        other => other,
    }
}

/// mkdir -p of the parents of `path`, without allocating: the prefix is copied into a stack
/// buffer one component at a time.
fn mkdir_parents(path: &CStr) -> Result<(), Errno> {
    let bytes = path.to_bytes();
    let mut buf = [0u8; 4096];
    if bytes.len() >= buf.len() {
        return Err(Errno::NAMETOOLONG);
    }
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b != b'/' {
            continue;
        }
        buf[..i].copy_from_slice(&bytes[..i]);
        buf[i] = 0;
        let prefix = CStr::from_bytes_with_nul(&buf[..=i]).map_err(|_| Errno::INVAL)?;
        match rustix::fs::mkdir(prefix, rustix::fs::Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkdir_parents_creates_missing_prefixes() {
        let base = std::env::temp_dir().join(format!("runbox-mkdirp-{}", std::process::id()));
        let target = base.join("a/b/c");
        let c = std::ffi::CString::new(target.to_string_lossy().as_bytes()).expect("no nul");
        mkdir_parents(&c).expect("creates");
        assert!(base.join("a/b").is_dir());
        assert!(!target.exists());
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
