//! Other processes: ptrace and cross-process memory access, what /proc reveals about
//! processes outside the sandbox, and syscall-ABI tricks (personality, x32).

use serde_json::json;

use crate::report::{check, Failure, Outcome, Success};

/// Read by process_vm_readv from a forked copy of this process (same address there).
static SECRET: [u8; 8] = *b"rbprobe!";

/// A child that only sleeps; killed and reaped on drop.
struct Sleeper(libc::pid_t);

impl Sleeper {
    fn spawn() -> Result<Self, Failure> {
        // SAFETY: the child only calls async-signal-safe functions (pause, _exit).
        let pid = unsafe { libc::fork() };
        check(pid as libc::c_long, "fork")?;
        if pid == 0 {
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        Ok(Sleeper(pid))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        // SAFETY: self.0 is our child; SIGKILL also ends a ptrace-stop.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), libc::__WALL);
        }
    }
}

fn ptrace_raw(request: libc::c_uint, pid: libc::pid_t) -> libc::c_long {
    // SAFETY: ATTACH/DETACH/TRACEME take no pointers (addr and data are 0).
    unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            request as libc::c_long,
            pid,
            0usize,
            0usize,
        )
    }
}

/// ptrace in three shapes: attach to our own child (the common debugger case), TRACEME in a
/// child, and attach to our parent (in the sandbox: the sandbox's init or supervisor).
pub fn ptrace(args: &[String]) -> Outcome {
    match args.first().map(String::as_str).unwrap_or("child") {
        "child" => {
            let child = Sleeper::spawn()?;
            check(
                ptrace_raw(libc::PTRACE_ATTACH, child.0),
                "ptrace(PTRACE_ATTACH, child)",
            )?;
            Ok(Success::new(format!("attached to child {}", child.0)))
        }
        "traceme" => traceme_in_child(),
        "parent" => {
            // SAFETY: getppid has no preconditions.
            let parent = unsafe { libc::getppid() };
            check(
                ptrace_raw(libc::PTRACE_ATTACH, parent),
                "ptrace(PTRACE_ATTACH, parent)",
            )?;
            // SAFETY: we are now its tracer; wait for the attach stop, then let it go.
            unsafe { libc::waitpid(parent, std::ptr::null_mut(), libc::__WALL) };
            ptrace_raw(libc::PTRACE_DETACH, parent);
            Ok(Success::new(format!(
                "attached to parent {parent} (and detached)"
            )))
        }
        other => Err(Failure {
            errno: libc::EINVAL,
            step: format!("unknown ptrace mode {other:?}"),
        }),
    }
}

/// PTRACE_TRACEME in a forked child, which reports its errno as its exit status.
fn traceme_in_child() -> Outcome {
    // SAFETY: the child only makes raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    check(pid as libc::c_long, "fork")?;
    if pid == 0 {
        let ret = ptrace_raw(libc::PTRACE_TRACEME, 0);
        let code = if ret == -1 {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(255)
        } else {
            0
        };
        // SAFETY: leave the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: pid is our child; status is writable.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(Success::new("PTRACE_TRACEME succeeded in a child")),
        Some(errno) => Err(Failure {
            errno,
            step: "ptrace(PTRACE_TRACEME) in a child".into(),
        }),
        None => Err(Failure {
            errno: libc::ECHILD,
            step: format!("TRACEME child ended with wait status {status:#x}"),
        }),
    }
}

pub fn process_vm_readv(_: &[String]) -> Outcome {
    let child = Sleeper::spawn()?;
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: SECRET.as_ptr() as *mut libc::c_void,
        iov_len: SECRET.len(),
    };
    // SAFETY: local points at our writable buffer; remote is only read in the child.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            child.0,
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    check(n, "process_vm_readv(child)")?;
    Ok(Success::new(format!(
        "read {n} bytes of child {}'s memory: {:?}",
        child.0,
        String::from_utf8_lossy(&buf)
    )))
}

/// "hex:6162" -> b"ab"; anything else is taken literally. The hex form keeps the marker
/// itself out of every command line that merely carries the probe's arguments (such as the
/// runbox process that started the sandbox).
fn decode_marker(marker: &str) -> Result<Vec<u8>, Failure> {
    let Some(hex) = marker.strip_prefix("hex:") else {
        return Ok(marker.as_bytes().to_vec());
    };
    let bad = || Failure {
        errno: libc::EINVAL,
        step: format!("decode marker {marker:?}"),
    };
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Which processes are visible, whether any other process's command line contains
/// MARKER_ARG (given literally or as hex:...), and whether any environment (ours included)
/// defines ENV_NAME.
pub fn list_procs(args: &[String]) -> Outcome {
    let marker = decode_marker(crate::arg(args, 0, "MARKER_ARG"))?;
    let marker = marker.as_slice();
    let env_name = format!("{}=", crate::arg(args, 1, "ENV_NAME"));
    let own = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(|e| Failure::from_io("readdir(/proc)", &e))?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let (mut marker_in, mut env_in, mut environ_unreadable) = (vec![], vec![], vec![]);
    let mut cmdlines = serde_json::Map::new();
    for &pid in &pids {
        if pid != own {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdlines.insert(pid.to_string(), json!(shown.trim_end()));
            if cmdline.windows(marker.len()).any(|w| w == marker) {
                marker_in.push(pid);
            }
        }
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(environ) => {
                if environ
                    .split(|&b| b == 0)
                    .any(|v| v.starts_with(env_name.as_bytes()))
                {
                    env_in.push(pid);
                }
            }
            Err(_) => environ_unreadable.push(pid),
        }
    }
    let env_in_own =
        std::env::vars_os().any(|(k, _)| format!("{}=", k.to_string_lossy()) == env_name);
    Ok(Success::with_data(
        format!(
            "{} pids visible; marker in {marker_in:?}; env var in {env_in:?}",
            pids.len()
        ),
        json!({
            "self": own,
            "pids": pids,
            "marker_found_in": marker_in,
            "env_found_in": env_in,
            "env_in_own_environment": env_in_own,
            "environ_unreadable": environ_unreadable,
            "cmdlines": cmdlines,
        }),
    ))
}

/// kill(PID, 0): whether a process (e.g. one on the host) can be signalled at all.
pub fn kill(args: &[String]) -> Outcome {
    let pid: libc::pid_t = crate::arg(args, 0, "PID").parse().map_err(|_| Failure {
        errno: libc::EINVAL,
        step: "parse PID".into(),
    })?;
    // SAFETY: signal 0 only checks existence and permission.
    let ret = unsafe { libc::kill(pid, 0) };
    check(ret as libc::c_long, &format!("kill({pid}, 0)"))?;
    Ok(Success::new(format!("may signal pid {pid}")))
}

fn personality_raw(persona: libc::c_ulong) -> libc::c_long {
    // SAFETY: personality takes a plain integer.
    unsafe { libc::syscall(libc::SYS_personality, persona) }
}

/// query (0xffffffff) must work everywhere; PER_LINUX32 and ADDR_NO_RANDOMIZE change the
/// syscall ABI or switch off ASLR for what we exec next.
pub fn personality(args: &[String]) -> Outcome {
    const PER_LINUX32: libc::c_ulong = 0x0008;
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
    let persona = match crate::arg(args, 0, "query|linux32|addr-no-randomize") {
        "query" => 0xffff_ffff,
        "linux32" => PER_LINUX32,
        "addr-no-randomize" => ADDR_NO_RANDOMIZE,
        other => {
            return Err(Failure {
                errno: libc::EINVAL,
                step: format!("unknown personality {other:?}"),
            })
        }
    };
    let previous = check(
        personality_raw(persona),
        &format!("personality({persona:#x})"),
    )?;
    if persona != 0xffff_ffff {
        personality_raw(previous as libc::c_ulong);
    }
    Ok(Success::with_data(
        format!("personality({persona:#x}) returned previous persona {previous:#x}"),
        json!({ "previous": previous }),
    ))
}

/// getpid through the x32 ABI (syscall number | __X32_SYSCALL_BIT). The sandbox kills the
/// process with SIGSYS: an x32 number would dodge a filter written for x86_64 numbers.
pub fn x32(_: &[String]) -> Outcome {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    // SAFETY: getpid takes no arguments.
    let ret = unsafe { libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT) };
    check(ret, "getpid via x32").map(|pid| Success::new(format!("x32 getpid returned {pid}")))
}
