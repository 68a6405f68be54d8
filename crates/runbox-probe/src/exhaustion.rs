//! Resource exhaustion and escape-by-outliving: fork bombs, memory bombs, daemons that
//! ignore SIGTERM, output floods. These never end on their own; the runner must stop them
//! (and report which limit it hit), so they print nothing unless they are refused.

use std::io::Write;

use crate::report::{Failure, Outcome, Success};

/// Refuses to run an unbounded case outside a sandbox unless explicitly allowed.
fn only_in_sandbox(case: &str) -> Result<(), Failure> {
    let allowed = std::env::var_os("RUNBOX_PROBE_ALLOW_HOST").is_some_and(|v| v == "1");
    if crate::identity::nodename() == "runbox" || allowed {
        return Ok(());
    }
    Err(Failure {
        errno: libc::EPERM,
        step: format!(
            "refusing {case} outside a runbox sandbox (hostname is not \"runbox\"; \
             set RUNBOX_PROBE_ALLOW_HOST=1 to insist)"
        ),
    })
}

fn nap(millis: u64) {
    std::thread::sleep(std::time::Duration::from_millis(millis));
}

/// Forks forever; every child sleeps. Failed forks (EAGAIN at the pids limit) are retried.
pub fn fork_bomb(_: &[String]) -> Outcome {
    only_in_sandbox("fork-bomb")?;
    let mut failures: u64 = 0;
    loop {
        // SAFETY: the child only calls pause.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: no preconditions.
                unsafe { libc::pause() };
            },
            -1 => {
                failures += 1;
                if failures.is_power_of_two() {
                    eprintln!("fork-bomb: {failures} forks refused so far");
                }
                nap(1);
            }
            _ => {}
        }
    }
}

/// Maps and touches 1 MiB at a time, forever.
pub fn memory_bomb(_: &[String]) -> Outcome {
    only_in_sandbox("memory-bomb")?;
    const CHUNK: usize = 1 << 20;
    let mut total: usize = 0;
    loop {
        // SAFETY: a fresh private anonymous mapping, never unmapped (that is the point).
        let chunk = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if chunk == libc::MAP_FAILED {
            nap(1);
            continue;
        }
        let bytes = chunk.cast::<u8>();
        for offset in (0..CHUNK).step_by(4096) {
            // SAFETY: offset < CHUNK inside our writable mapping.
            unsafe { bytes.add(offset).write_volatile(1) };
        }
        total += CHUNK;
        if total.is_power_of_two() {
            eprintln!("memory-bomb: {} MiB touched", total >> 20);
        }
    }
}

/// Double fork + setsid; the grandchild ignores SIGTERM/SIGHUP/SIGINT, keeps stdout and
/// stderr open and sleeps forever, while the original process reports and exits 0.
pub fn daemonize_ignore_term(_: &[String]) -> Outcome {
    only_in_sandbox("daemonize-ignore-term")?;
    let report = Success::new("daemon started; the parent exits 0");
    crate::report::emit("daemonize-ignore-term", &Ok(report));
    // SAFETY: after fork each side only calls async-signal-safe functions and _exit.
    unsafe {
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::setsid();
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
        for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        loop {
            libc::sleep(1000);
        }
    }
}

/// Writes to stdout forever (SIGPIPE, if the reader goes away, ends it).
pub fn flood(_: &[String]) -> Outcome {
    only_in_sandbox("flood")?;
    let line = [b'A'; 1024];
    let mut out = std::io::stdout().lock();
    loop {
        if out.write_all(&line).is_err() {
            nap(1);
        }
    }
}
