//! PID 1's signals: ignore every signal sandbox code sends us, pass on a request to stop that
//! comes from outside the sandbox (`docker stop`, `runsc kill`, SIGTERM or SIGINT from the
//! host): SIGTERM (then SIGCONT, for stopped processes) to every process of the sandbox, up to
//! `GRACE` for them to exit, SIGKILL for the rest, exit 0.
//!
//! SIGTERM and SIGINT are blocked in every thread from the first line of `main` (threads and
//! the runtime's workers inherit the mask) and taken synchronously, with their sender, by one
//! thread in `sigwaitinfo`: a signal does not interrupt the agent's other threads, and one
//! from inside is taken and dropped. (For PID 1 of a pid namespace the kernel drops signals
//! from inside whose action is SIG_DFL; blocked ones are queued instead, so they must be
//! taken.)
//!
//! A child starts with the mask of the thread that spawned it (std does not clear it), so
//! every spawn opens the spawning thread's mask for its duration (`procs::SpawnMask`). A
//! signal can land in that thread then, and for that window alone there is a handler: it
//! records a stop request from outside and wakes the waiting thread, so none is lost.
//!
//! Outside is told from inside by the sender's pid as the kernel reports it: 0 when the
//! sender is in an ancestor pid namespace, its (non-zero) pid otherwise. Only `kill`-style
//! codes count: with `rt_sigqueueinfo` code can send us SIGTERM with any pid it likes (a
//! forged 0 included), but not with `SI_USER` or `SI_TKILL`, whose pid the kernel fills in.
//! `SI_KERNEL` (a terminal's ^C) is not trusted either: the agent is a session leader.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the sandbox's processes get to exit after a forwarded SIGTERM (less than
/// `docker stop`'s 10 s, after which the whole container is killed anyway).
pub const GRACE: Duration = Duration::from_secs(5);

/// How often the grace period checks whether everyone is gone.
const POLL: Duration = Duration::from_millis(20);

/// SIGTERM and SIGINT, blocked in the calling thread (and so in every thread it starts).
pub struct Blocked(libc::sigset_t);

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocked(SIGTERM, SIGINT)")
    }
}

/// SIGTERM and SIGINT.
fn termination_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset only updates an
    // initialised set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// pthread_sigmask(how, set) on the calling thread.
fn mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: the set is initialised; no old mask is written (null).
    let err = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    match err {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread. Call it before any thread exists.
pub fn block_termination() -> io::Result<Blocked> {
    let set = termination_set();
    mask(libc::SIG_BLOCK, &set)?;
    Ok(Blocked(set))
}

/// The signal of a stop request from outside that a spawn window's handler caught (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// The thread id of the thread in `sigwaitinfo` (0 until it runs).
static WAITER: AtomicI32 = AtomicI32::new(0);
/// Whether we are PID 1 (in a sandbox); if not, any SIGTERM or SIGINT is a stop request.
static INIT: AtomicBool = AtomicBool::new(false);

/// Runs only in a spawn window (everywhere else the signals are blocked): records a stop
/// request from outside and passes the signal on to the waiting thread, where it is taken.
extern "C" fn caught_in_spawn_window(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; `sender` reads it.
    let Some((code, pid)) = (unsafe { info.as_ref() }).map(sender) else {
        return;
    };
    if sent_from_outside(code, pid) || !INIT.load(Ordering::SeqCst) {
        CAUGHT.store(signal, Ordering::SeqCst);
        let waiter = WAITER.load(Ordering::SeqCst);
        if waiter > 0 {
            // Async-signal-safe: plain syscalls.
            // SAFETY: tgkill takes integers only.
            unsafe {
                libc::syscall(libc::SYS_tgkill, libc::getpid(), waiter, signal);
            }
        }
    }
}

fn open_spawn_window() {
    let _ = mask(libc::SIG_UNBLOCK, &termination_set());
}

fn close_spawn_window() {
    let _ = mask(libc::SIG_BLOCK, &termination_set());
}

/// Installs the spawn windows (their handler, then the hooks every spawn runs) and starts the
/// thread that takes SIGTERM and SIGINT and, on one from outside, stops the sandbox and exits
/// the agent.
///
/// Outside a sandbox (tests, a shell: we are not PID 1) there is nothing to tell apart and
/// `kill(-1)` would reach the host's processes: the first SIGTERM or SIGINT ends the agent as
/// it would have without the mask.
pub fn forward_termination(blocked: Blocked) -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: sigaction with an initialised struct (zeroed is a valid sigaction: empty
        // mask, no flags) whose handler is an extern "C" fn with the SA_SIGINFO signature
        // that only makes async-signal-safe calls.
        let err = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = caught_in_spawn_window as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if err != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    runbox_agent::procs::set_spawn_mask(runbox_agent::procs::SpawnMask {
        open: open_spawn_window,
        close: close_spawn_window,
    });
    let init = std::process::id() == 1;
    INIT.store(init, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("termination".into())
        .spawn(move || {
            WAITER.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::SeqCst,
            );
            if !init {
                die_of(take(&blocked).signal);
            }
            let signal = loop {
                let taken = take(&blocked);
                if sent_from_outside(taken.code, taken.pid) {
                    break taken.signal;
                }
                let caught = CAUGHT.load(Ordering::SeqCst);
                if caught != 0 {
                    break caught;
                }
            };
            eprintln!(
                "runbox-agent: signal {signal} from outside the sandbox: SIGTERM to every \
                 process, SIGKILL after {GRACE:?}"
            );
            stop_everyone();
            std::process::exit(0);
        })?;
    Ok(())
}

/// A signal taken with `sigwaitinfo`: its number, `si_code` and `si_pid` (0 for codes that
/// carry no sender).
struct Taken {
    signal: i32,
    code: i32,
    pid: libc::pid_t,
}

/// Takes the next signal of `blocked` (waits for one).
fn take(blocked: &Blocked) -> Taken {
    loop {
        let mut info = MaybeUninit::<libc::siginfo_t>::uninit();
        // SAFETY: the set is initialised; sigwaitinfo writes a whole siginfo_t on success.
        let signal = unsafe { libc::sigwaitinfo(&blocked.0, info.as_mut_ptr()) };
        if signal < 0 {
            // EINTR: another signal (one with a handler) was delivered to this thread.
            continue;
        }
        // SAFETY: sigwaitinfo returned a signal, so it filled in `info`.
        let (code, pid) = sender(unsafe { &info.assume_init() });
        return Taken { signal, code, pid };
    }
}

/// `si_code` and the sender's `si_pid` (0 for codes that carry no sender).
fn sender(info: &libc::siginfo_t) -> (i32, libc::pid_t) {
    let pid = match info.si_code {
        // SAFETY: for these codes the union holds the kill fields (pid, uid).
        libc::SI_USER | libc::SI_TKILL | libc::SI_QUEUE => unsafe { info.si_pid() },
        _ => 0,
    };
    (info.si_code, pid)
}

/// Ends the process with `signal`'s default action (termination), as an unblocked signal
/// would have: SIG_DFL, unblocked in this thread, raised at this thread.
fn die_of(signal: i32) -> ! {
    // SAFETY: signal and raise take integers only.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
    let _ = mask(libc::SIG_UNBLOCK, &termination_set());
    // SAFETY: as above.
    unsafe {
        libc::raise(signal);
    }
    // Not reached unless the signal is ignored after all.
    std::process::exit(128 + signal);
}

/// Whether a signal with this `si_code` and `si_pid` was sent from outside the sandbox's pid
/// namespace (see the module docs).
fn sent_from_outside(code: i32, pid: libc::pid_t) -> bool {
    matches!(code, libc::SI_USER | libc::SI_TKILL) && pid == 0
}

/// SIGTERM and SIGCONT to every process of the sandbox, up to `GRACE` for them to exit,
/// then SIGKILL to those left.
fn stop_everyone() {
    signal_everyone(libc::SIGTERM);
    signal_everyone(libc::SIGCONT);
    let deadline = Instant::now() + GRACE;
    while runbox_agent::procs::others_running() && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    signal_everyone(libc::SIGKILL);
}

/// kill(-1, sig): as PID 1 of the sandbox's pid namespace, every process of the sandbox but
/// us. rustix has no kill(-1).
fn signal_everyone(sig: i32) {
    // SAFETY: kill takes integers only.
    unsafe {
        libc::kill(-1, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kill_from_an_ancestor_namespace_counts_as_outside() {
        // `docker stop`, `kill` or pidfd_send_signal from the host.
        assert!(sent_from_outside(libc::SI_USER, 0));
        assert!(sent_from_outside(libc::SI_TKILL, 0));
        // `kill -TERM 1` from sandbox code.
        assert!(!sent_from_outside(libc::SI_USER, 7));
        assert!(!sent_from_outside(libc::SI_TKILL, 7));
        // rt_sigqueueinfo from sandbox code, pid forged to 0.
        assert!(!sent_from_outside(libc::SI_QUEUE, 0));
        // A terminal's ^C; a SIGIO-style code (POLL_IN), whose union holds no pid.
        assert!(!sent_from_outside(libc::SI_KERNEL, 0));
        assert!(!sent_from_outside(1, 0));
    }

    /// Runs `child` in a forked child and returns its wait status: the signal mask and
    /// handlers are process state the test harness must keep. (glibc's fork leaves malloc
    /// usable in the child; nothing else the harness's threads could hold is touched.)
    fn forked(child: fn() -> i32) -> i32 {
        // SAFETY: see above; the child ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = child();
            // SAFETY: _exit takes an integer and does not return.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    /// A stop request that lands in a spawn window (signals open in the spawning thread) is
    /// caught by the handler and still reaches the waiting thread. Not PID 1 here, so the
    /// waiting thread ends the process with the signal.
    #[test]
    fn a_signal_in_a_spawn_window_is_not_lost() {
        let status = forked(|| {
            let Ok(blocked) = block_termination() else {
                return 1;
            };
            if forward_termination(blocked).is_err() {
                return 2;
            }
            while WAITER.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            open_spawn_window();
            // At this thread, the only one with SIGTERM open: the handler must take it (a
            // process-wide signal could also go to the thread in sigwaitinfo).
            // SAFETY: tgkill takes integers only.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    rustix::thread::gettid().as_raw_nonzero().get(),
                    libc::SIGTERM,
                );
            }
            if CAUGHT.load(Ordering::SeqCst) != libc::SIGTERM {
                return 3;
            }
            close_spawn_window();
            std::thread::sleep(Duration::from_secs(5));
            4
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM,
            "status {status:#x}"
        );
    }

    /// In a forked child (the signal mask is process state the harness must keep): once
    /// blocked, SIGTERM and SIGINT from inside are queued, not delivered (the child lives on),
    /// and `sigwaitinfo` reports them with the sender's pid, so they are not from outside.
    #[test]
    fn signals_from_inside_are_consumed_not_delivered() {
        let status = forked(|| {
            let Ok(blocked) = block_termination() else {
                return 1;
            };
            let me = std::process::id() as i32;
            // SAFETY: kill takes integers only.
            unsafe {
                libc::kill(me, libc::SIGTERM);
                libc::kill(me, libc::SIGINT);
            }
            // Both are pending, not delivered (we are alive), and carry our pid.
            let mut seen = 0;
            for _ in 0..2 {
                let taken = take(&blocked);
                if sent_from_outside(taken.code, taken.pid) || taken.pid != me {
                    return 2;
                }
                seen |= 1 << taken.signal;
            }
            if seen == (1 << libc::SIGTERM) | (1 << libc::SIGINT) {
                0
            } else {
                3
            }
        });
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
