//! The escape suite: the threat model as a table. Each row is one forbidden attempt made by
//! `runbox-probe` inside `runbox run` (module `jail`), with the exact outcome the sandbox must
//! produce, and where it makes sense a positive control (module `host`): the same probe run
//! directly on the host as root, showing the attempt works there or fails only on its
//! deliberately harmless arguments, so the sandbox's EPERM is the sandbox's doing.
//!
//! After every jail run the host is checked for leftovers (sandbox-uid processes, cgroups,
//! mounts, /tmp/runbox*). Everything needs root; without it each test says SKIPPED loudly.
//! Every jail test prints `JAIL <test>: expected ... observed ...` to stderr (see it with
//! `cargo test -p runbox-probe --test escape -- --nocapture`).

mod harness;
mod host_services;
mod leftovers;

use serde_json::Value;

use harness::{in_jail, on_host, on_host_exclusive, privileged, JailRun};

/// What the sandbox must do with an attempt.
#[derive(Debug, Clone, Copy)]
pub enum Jail {
    /// The probe runs to completion (status "ok", exit 0) and reports this: "ok" or an errno name.
    Outcome(&'static str),
    /// The probe reports success and its data passes the check.
    Data(fn(&Value) -> Result<(), String>),
    /// The kernel kills the probe with this signal (status "signaled").
    Signaled(i32),
    /// The run report passes the check (for limits).
    Report(fn(&JailRun) -> Result<(), String>),
}

/// The positive control on the host.
#[derive(Debug, Clone, Copy)]
pub enum Host {
    /// The probe's outcome is one of these ("ok" or errno names).
    OneOf(&'static [&'static str]),
    /// The probe reports success and its data passes the check.
    Shows(fn(&Value) -> Result<(), String>),
}

#[derive(Debug)]
pub struct Threat {
    pub why: &'static str,
    pub args: &'static [&'static str],
    pub limits: &'static [&'static str],
    pub jail: Jail,
    pub host: Option<Host>,
}

macro_rules! threat_model {
    ($(
        $test:ident ($($arg:literal),+) $([$($limit:literal),*])? $why:literal
            => jail $jail:expr $(, host $host:expr)? ;
    )*) => {
        /// One constant per row, named after its tests.
        #[allow(non_upper_case_globals)]
        mod rows {
            use super::{Host::*, Jail::*, *};
            $( pub const $test: Threat = Threat {
                why: $why,
                args: &[$($arg),+],
                limits: &[$($($limit),*)?],
                jail: $jail,
                host: threat_model!(@opt $($host)?),
            }; )*
        }
        /// The threat model, in table order.
        pub const THREAT_MODEL: &[(&str, &Threat)] = &[$((stringify!($test), &rows::$test)),*];
        mod jail {
            $( #[test] fn $test() { crate::check_in_jail(stringify!($test), &crate::rows::$test) } )*
        }
        mod host {
            $( $( #[test] fn $test() {
                let _ = stringify!($host);
                crate::check_on_host(stringify!($test), &crate::rows::$test)
            } )? )*
        }
    };
    (@opt) => { None };
    (@opt $host:expr) => { Some($host) };
}

threat_model! {
    read_shadow ("read-shadow") "host secrets: /etc is generated, without shadow"
        => jail Outcome("ENOENT"), host OneOf(&["ok"]);
    write_usr ("write-file", "/usr/rbp-probe-wrote-here") "the host's /usr is bound read-only"
        => jail Outcome("EROFS");
    read_kmsg ("read-file", "/dev/kmsg") "the kernel log through a device node; /dev is minimal"
        => jail Outcome("ENOENT"), host OneOf(&["ok"]);
    read_sys ("read-file", "/sys/class/net/lo/address") "no /sys in the sandbox"
        => jail Outcome("ENOENT"), host OneOf(&["ok"]);
    open_write_core_pattern ("open-write", "/proc/sys/kernel/core_pattern")
        "host-wide knob: the kernel runs core_pattern as root (the permission check precedes the read-only mount's)"
        => jail Outcome("EACCES"), host OneOf(&["ok"]);
    write_workspace ("write-file", "/workspace/rbp-probe") "sanity: the workspace is writable"
        => jail Outcome("ok");
    write_tmp ("write-file", "/tmp/rbp-probe") "sanity: /tmp is a writable tmpfs"
        => jail Outcome("ok");
    mount ("mount") "mounts change the filesystem view"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    chroot_escape ("chroot-escape") "the classic chroot breakout"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    name_to_handle_at ("name-to-handle-at") "file handles feed open_by_handle_at"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    open_by_handle_at ("open-by-handle-at") "shocker: open host files by handle"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    quotactl ("quotactl") "disk quotas are host-wide"
        => jail Outcome("EPERM"), host OneOf(&["ENOENT", "ENOSYS"]);
    acct ("acct") "process accounting is host-wide"
        => jail Outcome("EPERM"), host OneOf(&["ENOENT", "ENOSYS"]);
    swapon ("swapon") "swap is host-wide"
        => jail Outcome("EPERM"), host OneOf(&["EINVAL", "ENOSYS"]);
    swapoff ("swapoff") "swap is host-wide"
        => jail Outcome("EPERM"), host OneOf(&["ENOENT", "ENOSYS"]);
    unshare_user ("unshare-user") "nested user namespaces regain capabilities"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    unshare_net ("unshare-net") "new namespaces"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    unshare_mount ("unshare-mount") "new namespaces"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    setns ("setns") "joining namespaces"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    clone_newuser ("clone-newuser") "raw clone into a new user namespace"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    clone3 ("clone3") "clone3 flags are out of seccomp's reach: ENOSYS so libc falls back"
        => jail Outcome("ENOSYS"), host OneOf(&["ok"]);
    ptrace_child ("ptrace", "child") "ptrace is kernel attack surface"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    ptrace_traceme ("ptrace", "traceme") "ptrace is kernel attack surface"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    ptrace_parent ("ptrace", "parent") "the sandbox's init or supervisor"
        => jail Outcome("EPERM");
    process_vm_readv ("process-vm-readv") "other processes' memory"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    personality_query ("personality", "query") "sanity: the query form stays allowed"
        => jail Outcome("ok"), host OneOf(&["ok"]);
    personality_linux32 ("personality", "linux32") "changes syscall semantics"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    personality_addr_no_randomize ("personality", "addr-no-randomize") "switches off ASLR"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    x32 ("x32") "x32 numbers dodge an x86_64 filter: kill"
        => jail Signaled(libc::SIGSYS), host OneOf(&["ok", "ENOSYS"]);
    bpf ("bpf") "eBPF"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    perf_event_open ("perf-event-open") "perf events, side channels"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    io_uring_setup ("io-uring-setup") "io_uring bypasses seccomp"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    keyctl ("keyctl") "kernel keyrings are not namespaced"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    userfaultfd ("userfaultfd") "race-widening for kernel exploits"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    kexec_load ("kexec-load") "replace the kernel"
        => jail Outcome("EPERM"), host OneOf(&["EINVAL", "ENOSYS"]);
    init_module ("init-module") "load kernel code"
        => jail Outcome("EPERM"), host OneOf(&["ENOEXEC", "ENOSYS"]);
    reboot ("reboot") "the machine"
        => jail Outcome("EPERM"), host OneOf(&["EINVAL"]);
    settimeofday ("settimeofday") "the clock is not namespaced"
        => jail Outcome("EPERM"), host OneOf(&["EFAULT"]);
    clock_settime ("clock-settime") "the clock is not namespaced"
        => jail Outcome("EPERM"), host OneOf(&["EFAULT"]);
    syslog ("syslog") "the kernel log leaks addresses"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    iopl ("iopl") "raw I/O ports"
        => jail Outcome("EPERM"), host OneOf(&["EINVAL", "ENOSYS"]);
    ioperm ("ioperm") "raw I/O ports"
        => jail Outcome("EPERM"), host OneOf(&["EINVAL", "ENOSYS"]);
    modify_ldt ("modify-ldt") "16-bit segments, old exploit vector"
        => jail Outcome("EPERM"), host OneOf(&["ok", "ENOSYS"]);
    tiocsti_stdin ("tiocsti", "stdin") "typing into the caller's terminal"
        => jail Outcome("EPERM"), host OneOf(&["ENOTTY"]);
    tiocsti_stdin_highbits ("tiocsti", "stdin", "highbits") "request compared on 32 bits"
        => jail Outcome("EPERM"), host OneOf(&["ENOTTY"]);
    tiocsti_pty ("tiocsti", "pty") "typing into a terminal"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    tiocsti_pty_highbits ("tiocsti", "pty", "highbits") "request compared on 32 bits"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    tioclinux_stdin ("tioclinux", "stdin") "virtual console selection (CVE-2023-28100)"
        => jail Outcome("EPERM"), host OneOf(&["ENOTTY"]);
    tioclinux_pty ("tioclinux", "pty") "virtual console selection"
        => jail Outcome("EPERM"), host OneOf(&["ENOTTY"]);
    raw_socket ("raw-socket") "forged traffic"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    packet_socket ("packet-socket") "forged traffic, sniffing"
        => jail Outcome("EPERM"), host OneOf(&["ok"]);
    netifs ("netifs") "own network namespace with only lo"
        => jail Data(checks::only_loopback), host Shows(checks::has_loopback);
    caps ("caps") "no capabilities, no_new_privs, seccomp filter mode"
        => jail Data(checks::fully_dropped), host Shows(checks::root_has_caps);
    ids ("ids") "runs as user 1000"
        => jail Data(checks::user_1000), host Shows(checks::host_root);
    fds ("fds") "no inherited descriptors"
        => jail Data(checks::only_stdio);
    hostname ("hostname") "own UTS namespace"
        => jail Data(checks::hostname_runbox), host Shows(checks::hostname_not_runbox);
    fork_bomb ("fork-bomb") ["--pids", "32", "--timeout", "5s"] "pids limit"
        => jail Report(checks::killed_at_pids_limit);
    memory_bomb ("memory-bomb") ["--memory", "64M", "--timeout", "10s"] "memory limit"
        => jail Report(checks::killed_by_oom);
    daemonize_ignore_term ("daemonize-ignore-term") ["--timeout", "1s"] "outliving the run"
        => jail Report(checks::daemon_reaped);
    flood ("flood") ["--output-limit", "4096", "--timeout", "1s"] "output limit"
        => jail Report(checks::output_capped);
}

mod checks;

fn check_in_jail(test: &str, threat: &Threat) {
    if !privileged(&format!("jail::{test}")) {
        return;
    }
    let run = in_jail(threat.args, threat.limits);
    judge(test, threat.why, &run, threat.jail);
}

/// Compares one jail run with its expectation (and the leftover checks); panics with the
/// whole report on a mismatch.
pub fn judge(test: &str, why: &str, run: &JailRun, jail: Jail) {
    let observed = match &run.probe {
        Some(line) => format!("status {} probe {}", run.status(), line.summary()),
        None => format!(
            "status {} signal {} (no probe line)",
            run.status(),
            run.report["signal"]
        ),
    };
    let mut problems = Vec::new();
    let expected = match jail {
        Jail::Outcome(outcome) => {
            problems.extend(checks::ran_to_completion(run));
            match &run.probe {
                Some(line) if line.summary() == outcome => {}
                Some(line) => problems.push(format!(
                    "probe reported {} ({}), expected {outcome}",
                    line.summary(),
                    line.0["detail"]
                )),
                None => problems.push("no probe report line in stdout".into()),
            }
            format!("status ok probe {outcome}")
        }
        Jail::Data(check) => {
            problems.extend(checks::ran_to_completion(run));
            match &run.probe {
                Some(line) if line.outcome() == "ok" => problems.extend(check(line.data()).err()),
                Some(line) => problems.push(format!("probe failed: {}", line.0["detail"])),
                None => problems.push("no probe report line in stdout".into()),
            }
            "status ok, data as in the threat model".into()
        }
        Jail::Signaled(signal) => {
            problems.extend(checks::killed_by(run, signal).err());
            format!("status signaled signal {signal}")
        }
        Jail::Report(check) => {
            problems.extend(check(run).err());
            format!("report as in checks::{test}")
        }
    };
    problems.extend(run.leftovers.iter().map(|l| format!("leftover: {l}")));
    let verdict = if problems.is_empty() {
        "PASS"
    } else {
        "MISMATCH"
    };
    eprintln!("JAIL {test}: {verdict}: expected {expected}; observed {observed}");
    assert!(
        problems.is_empty(),
        "{test} ({}): the sandbox does not match the threat model:\n  - {}\n{}",
        why,
        problems.join("\n  - "),
        run.describe()
    );
}

fn check_on_host(test: &str, threat: &Threat) {
    if !privileged(&format!("host::{test}")) {
        return;
    }
    // A successful mount control briefly changes the host mount table, which the leftover
    // check of a concurrent jail run would otherwise blame on the sandbox.
    let line = if threat.args[0] == "mount" {
        on_host_exclusive(threat.args)
    } else {
        on_host(threat.args, &[])
    };
    let problem = match threat.host {
        Some(Host::OneOf(allowed)) if allowed.contains(&line.summary().as_str()) => None,
        Some(Host::OneOf(allowed)) => Some(format!("expected one of {allowed:?}")),
        Some(Host::Shows(check)) if line.outcome() == "ok" => check(line.data()).err(),
        Some(Host::Shows(_)) => Some("expected success".into()),
        None => None,
    };
    eprintln!("HOST {test}: {} ({})", line.summary(), line.0["detail"]);
    if let Some(problem) = problem {
        panic!(
            "positive control {test} on the host: {problem}; got {}",
            line.0
        );
    }
}

#[test]
fn threat_model_rows_are_unique_and_have_reasons() {
    let mut names: Vec<&str> = THREAT_MODEL.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), THREAT_MODEL.len());
    assert!(THREAT_MODEL
        .iter()
        .all(|(_, t)| !t.why.is_empty() && !t.args.is_empty()));
}
