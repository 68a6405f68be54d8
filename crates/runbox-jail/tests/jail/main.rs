//! runbox-jail end to end: real sandboxes, so root only (each test says SKIPPED otherwise).

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use runbox_jail::{OutputSink, Policy, Sandbox, Status, Stdin};

fn root_or_skip(test: &str) -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("SKIPPED (needs root): {test} creates namespaces and cgroups");
    }
    root
}

struct Discard;

impl OutputSink for Discard {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

/// Counts stdout bytes where another thread can watch them arrive.
struct Counter(Arc<AtomicUsize>);

impl OutputSink for Counter {
    fn stdout(&mut self, data: &[u8]) {
        self.0.fetch_add(data.len(), Ordering::SeqCst);
    }
    fn stderr(&mut self, _: &[u8]) {}
}

const TUNED: &str = "RUNBOX_JAIL_TEST_MALLOC_TUNED";

/// Regression: the cloned child used to build the landlock ruleset with the allocator. Cloned
/// from a multi-threaded process, it inherits the allocator's lock in whatever state another
/// thread left it and can hang forever. Now 8 threads start 20 sandboxes while 4 others keep
/// the allocator busy; every one must finish.
///
/// glibc's per-thread caches and arenas hide the bug most of the time (a small allocation
/// rarely takes a lock another thread holds), so the test runs itself again with one arena and
/// no tcache: then an allocation in the child deadlocks in nearly every run.
#[test]
fn clone_from_a_multithreaded_process_does_not_deadlock() {
    const NAME: &str = "clone_from_a_multithreaded_process_does_not_deadlock";
    if !root_or_skip(NAME) {
        return;
    }
    if std::env::var_os(TUNED).is_none() {
        let exe = std::env::current_exe().expect("own path");
        let mut child = std::process::Command::new(exe)
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(TUNED, "1")
            .env(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1",
            )
            .spawn()
            .expect("runs itself");
        let deadline = Instant::now() + Duration::from_secs(150);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waits") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the sandboxes did not finish within 150 s (deadlocked children?)");
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{NAME} with a single malloc arena: {status}"
        );
        return;
    }
    const SANDBOXES: usize = 20;
    const SPAWNERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let allocators: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Vec<u8>> = (0..64).map(|n| vec![i as u8; 16 + n * 61]).collect();
                    let s: String = v.iter().map(|b| b.len().to_string()).collect();
                    rounds += s.len() as u64;
                }
                rounds
            })
        })
        .collect();

    let next = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    for _ in 0..SPAWNERS {
        let next = next.clone();
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            while next.fetch_add(1, Ordering::SeqCst) < SANDBOXES {
                let mut policy = Policy::new(vec!["/bin/true".into()]);
                // A deadlocked child shows up as a timeout instead of a hang.
                policy.limits.timeout = Some(Duration::from_secs(20));
                let result = runbox_jail::run(&policy, Stdin::Null, &mut Discard)
                    .map(|o| (o.status, o.exit_code))
                    .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)));
                let _ = done_tx.send(result);
            }
        });
    }
    drop(done_tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished = 0;
    while finished < SANDBOXES {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(result) => {
                assert_eq!(result, Ok((Status::Ok, Some(0))));
                finished += 1;
            }
            Err(e) => panic!("only {finished} of {SANDBOXES} sandboxes finished: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in allocators {
        assert!(a.join().expect("allocator thread") > 0);
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn pause_stops_output_resume_restarts_it_and_a_paused_sandbox_can_be_killed() {
    if !root_or_skip("pause_stops_output_resume_restarts_it_and_a_paused_sandbox_can_be_killed") {
        return;
    }
    let policy = Policy::new(vec![
        "sh".into(),
        "-c".into(),
        "while :; do echo x; sleep 0.05; done".into(),
    ]);
    let sandbox = Sandbox::spawn(&policy, Stdin::Null).expect("spawns");
    let control = sandbox.control();
    if !control.can_pause() {
        eprintln!("SKIPPED: this host has no cgroup freezer (v1 `freezer` or v2 cgroup.freeze)");
        return;
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let sink_count = seen.clone();
    let waiter = thread::spawn(move || sandbox.wait(&mut Counter(sink_count)));
    let count = || seen.load(Ordering::SeqCst);

    assert!(
        wait_until(Duration::from_secs(10), || count() >= 4),
        "no output before pause"
    );
    control.pause().expect("pauses");
    control.pause().expect("pausing twice is a no-op");
    // Output written just before the freeze may still be on its way through the pipe.
    thread::sleep(Duration::from_millis(50));
    let paused_at = count();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), paused_at, "output arrived while paused");

    control.resume().expect("resumes");
    assert!(
        wait_until(Duration::from_secs(5), || count() >= paused_at + 4),
        "output did not resume"
    );

    control.pause().expect("pauses again");
    let started = Instant::now();
    control.kill();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(waiter.join());
    });
    let outcome = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("wait returns after killing a paused sandbox")
        .expect("wait thread")
        .expect("outcome");
    assert_eq!(outcome.status, Status::Signaled);
    assert_eq!(outcome.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(outcome.enforcement.cgroup.freezer);
    assert!(control.pause().is_err(), "a killed sandbox was paused");
}

#[test]
fn describe_names_the_sandbox_processes_and_their_state() {
    if !root_or_skip("describe_names_the_sandbox_processes_and_their_state") {
        return;
    }
    let policy = Policy::new(vec!["sh".into(), "-c".into(), "sleep 30 & wait".into()]);
    let sandbox = Sandbox::spawn(&policy, Stdin::Null).expect("spawns");
    let control = sandbox.control();
    let waiter = thread::spawn(move || sandbox.wait(&mut runbox_jail::Discard));
    let mut seen = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            seen = control.describe();
            // Just after forking `sleep`, `sh` is still running on its way to `wait`.
            (seen.contains("(sleep) S") || seen.contains(" sleep S")) && seen.contains(" sh S")
        }),
        "describe did not show the sleeping shell and child: {seen}"
    );
    assert!(seen.contains("wchan="), "{seen}");
    control.kill();
    waiter.join().expect("wait thread").expect("outcome");
    assert_eq!(control.describe(), "init has exited");
}

/// The network namespace is made by a helper process while the init builds the filesystem
/// (`sys::NetworkHelper`). Checked from the host: the init and the command share one network
/// namespace, not the host's, owned by the sandbox's own user namespace, and the helper is
/// gone (the init and the command are the only processes left).
#[test]
fn the_network_namespace_is_the_sandboxes_own_and_its_helper_is_gone() {
    if !root_or_skip("the_network_namespace_is_the_sandboxes_own_and_its_helper_is_gone") {
        return;
    }
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let policy = Policy::new(vec!["sleep".into(), "30".into()]);
    let sandbox = Sandbox::spawn(&policy, Stdin::Null).expect("spawns");
    let control = sandbox.control();
    let waiter = thread::spawn(move || sandbox.wait(&mut Discard));
    let mut seen = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            seen = control.describe();
            seen.contains(" sleep S")
        }),
        "the command never started: {seen}"
    );
    let pids: Vec<i32> = seen
        .split("; ")
        .filter_map(|p| p.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "only the init and the command: {seen}");
    let ino = |path: &str| std::fs::metadata(path).expect(path).ino();
    let host = ino("/proc/self/ns/net");
    let init = ino(&format!("/proc/{}/ns/net", pids[0]));
    assert_ne!(init, host, "the init is in the host's network namespace");
    assert_eq!(ino(&format!("/proc/{}/ns/net", pids[1])), init);

    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1)
    let net = std::fs::File::open(format!("/proc/{}/ns/net", pids[0])).expect("netns");
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor (or -1).
    let owner = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS) };
    assert!(
        owner >= 0,
        "NS_GET_USERNS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(owner) });
    let owner = owner.metadata().expect("owner").ino();
    assert_eq!(owner, ino(&format!("/proc/{}/ns/user", pids[0])));
    assert_ne!(owner, ino("/proc/self/ns/user"));

    control.kill();
    waiter.join().expect("wait thread").expect("outcome");
}

/// CPU time must count a process the command left running (the kernel kills and reaps it as
/// the pid namespace dies), and a command killed by the timeout: neither is ever waited for by
/// the init, so the init's rusage would miss both (the cgroup counts them). Each busy loop runs
/// for about 0.4 s of wall time.
#[test]
fn cpu_time_counts_every_process_of_the_sandbox_including_leftovers() {
    if !root_or_skip("cpu_time_counts_every_process_of_the_sandbox_including_leftovers") {
        return;
    }
    for (script, timeout, status) in [
        ("(while :; do :; done) & sleep 0.4", None, Status::Ok),
        (
            "while :; do :; done",
            Some(Duration::from_millis(400)),
            Status::Timeout,
        ),
    ] {
        let mut policy = Policy::new(vec!["sh".into(), "-c".into(), script.into()]);
        policy.limits.cpus = None;
        if timeout.is_some() {
            policy.limits.timeout = timeout;
        }
        let outcome = runbox_jail::run(&policy, Stdin::Null, &mut Discard).expect("runs");
        assert_eq!(outcome.status, status, "{outcome:?}");
        let cpu = outcome.cpu_user_ms + outcome.cpu_sys_ms;
        assert!(
            cpu >= 100.0,
            "a busy loop of 0.4 s ({script}) counted only {cpu:.1} ms of CPU: {outcome:?}"
        );
        assert!(cpu <= outcome.wall_ms * 2.0 + 50.0, "{outcome:?}");
    }
}

/// A sandbox that cannot be paused gets no group in v1's freezer hierarchy (a one-shot
/// `runbox run`); the enforcement report says so and pausing is refused, not faked.
#[test]
fn a_sandbox_that_is_not_pausable_has_no_freezer_and_refuses_pause() {
    if !root_or_skip("a_sandbox_that_is_not_pausable_has_no_freezer_and_refuses_pause") {
        return;
    }
    let mut policy = Policy::new(vec!["sleep".into(), "30".into()]);
    policy.pausable = false;
    let sandbox = Sandbox::spawn(&policy, Stdin::Null).expect("spawns");
    let control = sandbox.control();
    let cgroup = &sandbox.enforcement().cgroup;
    let v1 = cgroup.version == Some(runbox_jail::cgroup::Version::V1);
    if v1 {
        assert!(!cgroup.freezer, "{cgroup:?}");
        assert!(
            !cgroup.controllers.iter().any(|c| c == "freezer"),
            "{cgroup:?}"
        );
        let seen = control.describe();
        let init: i32 = seen
            .split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("init pid");
        let groups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroups");
        let freezer = groups.lines().find(|l| l.contains(":freezer:"));
        assert!(
            freezer.is_none_or(|l| !l.contains(sandbox.id())),
            "the init is in a freezer group of its own: {groups}"
        );
        let memory = groups.lines().find(|l| l.contains(":memory:"));
        assert!(
            memory.is_some_and(|l| l.contains(sandbox.id())),
            "the init is not in its memory group: {groups}"
        );
        assert!(control.pause().is_err(), "paused without a freezer");
    }
    control.kill();
    let outcome = sandbox.wait(&mut Discard).expect("outcome");
    assert_eq!(outcome.status, Status::Signaled);
}
