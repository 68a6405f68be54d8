//! The escape table: every attempt the probe makes, and per backend the exact outcome the
//! sandbox produces with the reason it produces that one. A forbidden attempt must never be
//! expected to succeed (a unit test below holds every table to that), and a forbidden
//! attempt that succeeds fails the run whatever its table says.
//!
//! Arguments may hold placeholders the runner fills in from the host bait: `$HOSTPID` (a
//! host process), `$PORT` (a host listener on 0.0.0.0), `$HOSTADDR` (each of the host's
//! non-loopback IPv4 addresses, docker0's bridge address among them: one run per address).

use runbox_runtime::Backend;

use crate::checks::{self, Check};

/// One attempt.
#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    pub args: &'static [&'static str],
    /// Crossing a boundary of the threat model; success is a finding on any backend.
    pub forbidden: bool,
}

/// What a backend must answer.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// The probe ran and reported this errno name.
    Denied(&'static str),
    /// The probe reported success (sanity: something code may do).
    Allowed,
    /// The probe reported success and its data passes the check.
    Data(Check),
}

use Expect::{Allowed, Data, Denied};

const fn forbidden(name: &'static str, args: &'static [&'static str]) -> Case {
    Case {
        name,
        args,
        forbidden: true,
    }
}

const fn sanity(name: &'static str, args: &'static [&'static str]) -> Case {
    Case {
        name,
        args,
        forbidden: false,
    }
}

pub const CASES: &[Case] = &[
    forbidden("read-shadow", &["read-shadow"]),
    forbidden("read-kmsg", &["read-file", "/dev/kmsg"]),
    forbidden("write-etc-passwd", &["write-file", "/etc/passwd"]),
    forbidden("open-write-etc-passwd", &["open-write", "/etc/passwd"]),
    forbidden("write-usr-bin", &["write-file", "/usr/bin/x"]),
    forbidden("write-root", &["write-file", "/rbp-escape-probe"]),
    forbidden(
        "open-write-core-pattern",
        &["open-write", "/proc/sys/kernel/core_pattern"],
    ),
    sanity("write-workspace", &["write-file", "/workspace/rbp-probe"]),
    sanity("write-tmp", &["write-file", "/tmp/rbp-probe"]),
    forbidden("mount", &["mount"]),
    forbidden("chroot-escape", &["chroot-escape"]),
    forbidden("name-to-handle-at", &["name-to-handle-at"]),
    forbidden("open-by-handle-at", &["open-by-handle-at"]),
    forbidden("unshare-user", &["unshare-user"]),
    forbidden("unshare-net", &["unshare-net"]),
    forbidden("unshare-mount", &["unshare-mount"]),
    forbidden("setns", &["setns"]),
    forbidden("clone-newuser", &["clone-newuser"]),
    forbidden("ptrace-child", &["ptrace", "child"]),
    forbidden("ptrace-traceme", &["ptrace", "traceme"]),
    forbidden("ptrace-parent", &["ptrace", "parent"]),
    forbidden("process-vm-readv", &["process-vm-readv"]),
    forbidden("kill-host-process", &["kill", "$HOSTPID"]),
    sanity("kill-0-pid-1", &["kill", "1"]),
    forbidden("bpf", &["bpf"]),
    forbidden("perf-event-open", &["perf-event-open"]),
    forbidden("io-uring-setup", &["io-uring-setup"]),
    forbidden("keyctl", &["keyctl"]),
    forbidden("userfaultfd", &["userfaultfd"]),
    forbidden("kexec-load", &["kexec-load"]),
    forbidden("init-module", &["init-module"]),
    forbidden("reboot", &["reboot"]),
    forbidden("swapon", &["swapon"]),
    forbidden("acct", &["acct"]),
    forbidden("settimeofday", &["settimeofday"]),
    forbidden("clock-settime", &["clock-settime"]),
    forbidden("syslog", &["syslog"]),
    forbidden("iopl", &["iopl"]),
    forbidden("ioperm", &["ioperm"]),
    forbidden("modify-ldt", &["modify-ldt"]),
    forbidden("raw-socket", &["raw-socket"]),
    forbidden("packet-socket", &["packet-socket"]),
    forbidden("connect-internet", &["connect-tcp", "1.1.1.1", "53"]),
    forbidden(
        "connect-host-listener-via-loopback",
        &["connect-tcp", "127.0.0.1", "$PORT"],
    ),
    forbidden(
        "connect-host-listener-via-host-address",
        &["connect-tcp", "$HOSTADDR", "$PORT"],
    ),
    sanity("netifs", &["netifs"]),
    sanity("caps", &["caps"]),
    sanity("ids", &["ids"]),
    sanity("hostname", &["hostname"]),
    sanity("fds", &["fds"]),
];

type Row = (&'static str, Expect, &'static str);

/// `"case" => expectation, "why";` rows (a macro so that each row stays one line).
macro_rules! rows {
    ($($case:literal => $expect:expr, $why:literal;)*) => { &[$(($case, $expect, $why)),*] };
}

/// The jail's table (crates/runbox-probe/tests/escape) seen through the agent: the agent and
/// every command it runs are under the same seccomp filter, landlock ruleset and namespaces.
#[rustfmt::skip]
pub const NATIVE: &[Row] = rows! {
    "read-shadow" => Denied("ENOENT"), "the generated /etc has no shadow";
    "read-kmsg" => Denied("ENOENT"), "minimal /dev: no kmsg node";
    "write-etc-passwd" => Denied("EEXIST"), "O_CREAT|O_EXCL on the existing generated passwd (open-write is the write test)";
    "open-write-etc-passwd" => Denied("EACCES"), "passwd is namespace root's 0644: the DAC check precedes the ro bind's EROFS";
    "write-usr-bin" => Denied("EROFS"), "/usr bound read-only (a new name fails on the mount first)";
    "write-root" => Denied("EROFS"), "the root is read-only after pivot_root";
    "open-write-core-pattern" => Denied("EACCES"), "owned by the unmapped host root (the DAC check precedes the ro mount's)";
    "write-workspace" => Allowed, "the workspace is the sandbox's to write";
    "write-tmp" => Allowed, "/tmp is the sandbox's tmpfs";
    "mount" => Denied("EPERM"), "seccomp";
    "chroot-escape" => Denied("EPERM"), "seccomp";
    "name-to-handle-at" => Denied("EPERM"), "seccomp";
    "open-by-handle-at" => Denied("EPERM"), "seccomp";
    "unshare-user" => Denied("EPERM"), "seccomp";
    "unshare-net" => Denied("EPERM"), "seccomp";
    "unshare-mount" => Denied("EPERM"), "seccomp";
    "setns" => Denied("EPERM"), "seccomp";
    "clone-newuser" => Denied("EPERM"), "seccomp";
    "ptrace-child" => Denied("EPERM"), "seccomp";
    "ptrace-traceme" => Denied("EPERM"), "seccomp";
    "ptrace-parent" => Denied("EPERM"), "seccomp";
    "process-vm-readv" => Denied("EPERM"), "seccomp";
    "kill-host-process" => Denied("ESRCH"), "own pid namespace";
    "kill-0-pid-1" => Allowed, "signal 0 to the agent (same uid) only checks that it exists";
    "bpf" => Denied("EPERM"), "seccomp";
    "perf-event-open" => Denied("EPERM"), "seccomp";
    "io-uring-setup" => Denied("EPERM"), "seccomp";
    "keyctl" => Denied("EPERM"), "seccomp";
    "userfaultfd" => Denied("EPERM"), "seccomp";
    "kexec-load" => Denied("EPERM"), "seccomp";
    "init-module" => Denied("EPERM"), "seccomp";
    "reboot" => Denied("EPERM"), "seccomp";
    "swapon" => Denied("EPERM"), "seccomp";
    "acct" => Denied("EPERM"), "seccomp";
    "settimeofday" => Denied("EPERM"), "seccomp";
    "clock-settime" => Denied("EPERM"), "seccomp";
    "syslog" => Denied("EPERM"), "seccomp";
    "iopl" => Denied("EPERM"), "seccomp";
    "ioperm" => Denied("EPERM"), "seccomp";
    "modify-ldt" => Denied("EPERM"), "seccomp";
    "raw-socket" => Denied("EPERM"), "seccomp";
    "packet-socket" => Denied("EPERM"), "seccomp";
    "connect-internet" => Denied("ENETUNREACH"), "own network namespace: lo only, no route";
    "connect-host-listener-via-loopback" => Denied("ECONNREFUSED"), "the namespace's own lo, where nothing listens";
    "connect-host-listener-via-host-address" => Denied("ENETUNREACH"), "no route out of the namespace";
    "netifs" => Data(checks::only_loopback), "own network namespace";
    "caps" => Data(checks::dropped_and_filtered), "no capabilities, no_new_privs, seccomp filter";
    "ids" => Data(checks::user_1000), "user 1000 inside";
    "hostname" => Data(checks::hostname_runbox), "own UTS namespace";
    "fds" => Data(checks::only_stdio), "the threat model: every fd above 2 is close-on-exec";
};

/// runbox's seccomp profile (the jail's deny-list, EPERM), no
/// capabilities (CapDrop ALL), ReadonlyRootfs, NetworkMode none, uid 1000, no user namespace.
#[rustfmt::skip]
pub const DOCKER: &[Row] = rows! {
    "read-shadow" => Denied("EACCES"), "the image's shadow is root:shadow 0640; code is uid 1000";
    "read-kmsg" => Denied("ENOENT"), "the engine's /dev has no kmsg";
    "write-etc-passwd" => Denied("EEXIST"), "O_CREAT|O_EXCL on the image's passwd (open-write is the write test)";
    "open-write-etc-passwd" => Denied("EACCES"), "root's 0644 file: the DAC check precedes ReadonlyRootfs' EROFS";
    "write-usr-bin" => Denied("EROFS"), "ReadonlyRootfs (a new name fails on the mount first)";
    "write-root" => Denied("EROFS"), "ReadonlyRootfs";
    "open-write-core-pattern" => Denied("EACCES"), "root's 0644 under the engine's ro /proc/sys: DAC first";
    "write-workspace" => Allowed, "the workspace is the sandbox's to write";
    "write-tmp" => Allowed, "/tmp is the container's tmpfs";
    "mount" => Denied("EPERM"), "runbox's seccomp profile; also mount only with CAP_SYS_ADMIN";
    "chroot-escape" => Denied("EPERM"), "runbox's seccomp profile; also chroot only with CAP_SYS_CHROOT";
    "name-to-handle-at" => Denied("EPERM"), "not in 20.10's profile allow list";
    "open-by-handle-at" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_DAC_READ_SEARCH (the shocker breakout)";
    "unshare-user" => Denied("EPERM"), "runbox's seccomp profile; also unshare only with CAP_SYS_ADMIN";
    "unshare-net" => Denied("EPERM"), "runbox's seccomp profile; also unshare only with CAP_SYS_ADMIN";
    "unshare-mount" => Denied("EPERM"), "runbox's seccomp profile; also unshare only with CAP_SYS_ADMIN";
    "setns" => Denied("EPERM"), "runbox's seccomp profile; also setns only with CAP_SYS_ADMIN";
    "clone-newuser" => Denied("EPERM"), "runbox's seccomp profile; also clone with CLONE_NEW* flags only with CAP_SYS_ADMIN";
    "ptrace-child" => Denied("EPERM"), "runbox's seccomp profile (the jail's deny-list); the engine default would allow it";
    "ptrace-traceme" => Denied("EPERM"), "runbox's seccomp profile (the jail's deny-list); the engine default would allow it";
    "ptrace-parent" => Denied("EPERM"), "the agent is non-dumpable; no CAP_SYS_PTRACE";
    "process-vm-readv" => Denied("EPERM"), "runbox's seccomp profile; also process_vm_readv only with CAP_SYS_PTRACE";
    "kill-host-process" => Denied("ESRCH"), "own pid namespace";
    "kill-0-pid-1" => Allowed, "signal 0 to the agent (same uid) only checks that it exists";
    "bpf" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_ADMIN/CAP_BPF";
    "perf-event-open" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_ADMIN/CAP_PERFMON";
    "io-uring-setup" => Denied("EPERM"), "runbox's seccomp profile; 20.10's default would allow io_uring";
    "keyctl" => Denied("EPERM"), "runbox's seccomp profile denies the keyring calls";
    "userfaultfd" => Denied("EPERM"), "runbox's seccomp profile (the jail's deny-list)";
    "kexec-load" => Denied("EPERM"), "runbox's seccomp profile (the jail's deny-list)";
    "init-module" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_MODULE";
    "reboot" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_BOOT";
    "swapon" => Denied("EPERM"), "runbox's seccomp profile (the jail's deny-list)";
    "acct" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_PACCT";
    "settimeofday" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_TIME";
    "clock-settime" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_TIME";
    "syslog" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYSLOG/CAP_SYS_ADMIN";
    "iopl" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_RAWIO";
    "ioperm" => Denied("EPERM"), "runbox's seccomp profile; also only with CAP_SYS_RAWIO";
    "modify-ldt" => Denied("EPERM"), "runbox's seccomp profile; the engine default would allow modify_ldt";
    "raw-socket" => Denied("EPERM"), "CapDrop ALL: no CAP_NET_RAW";
    "packet-socket" => Denied("EPERM"), "CapDrop ALL: no CAP_NET_RAW";
    "connect-internet" => Denied("ENETUNREACH"), "NetworkMode none: lo only, no route";
    "connect-host-listener-via-loopback" => Denied("ECONNREFUSED"), "the container's own lo, where nothing listens";
    "connect-host-listener-via-host-address" => Denied("ENETUNREACH"), "NetworkMode none: no route to the host";
    "netifs" => Data(checks::only_loopback), "NetworkMode none";
    "caps" => Data(checks::dropped_and_filtered), "CapDrop ALL, no-new-privileges, the default seccomp profile";
    "ids" => Data(checks::user_1000), "User 1000:1000 (the server's workspace belongs to root)";
    "hostname" => Data(checks::hostname_runbox), "the container's UTS namespace";
    "fds" => Data(checks::only_stdio), "the agent binds its socket itself (close-on-exec)";
};

/// gVisor (runsc 20221219, ptrace platform): the Sentry answers every syscall with its own
/// implementation; it runs the agent as uid 1000 with no capabilities in its own namespaces.
#[rustfmt::skip]
pub const GVISOR: &[Row] = rows! {
    "read-shadow" => Denied("EACCES"), "the image's shadow is root:shadow 0640; code is uid 1000";
    "read-kmsg" => Denied("ENOENT"), "the Sentry's /dev has no kmsg";
    "write-etc-passwd" => Denied("EEXIST"), "O_CREAT|O_EXCL on the bundle's passwd (open-write is the write test)";
    "open-write-etc-passwd" => Denied("EACCES"), "root's 0644 file: DAC denies uid 1000";
    "write-usr-bin" => Denied("EACCES"), "the Sentry checks DAC on the root-owned dir before the ro mount";
    "write-root" => Denied("EACCES"), "the Sentry checks DAC on the root-owned / before the ro root";
    "open-write-core-pattern" => Denied("ENOENT"), "the Sentry's /proc/sys/kernel has no core_pattern";
    "write-workspace" => Allowed, "the workspace is the sandbox's to write";
    "write-tmp" => Allowed, "/tmp is the sandbox's tmpfs";
    "mount" => Denied("EPERM"), "no CAP_SYS_ADMIN in the Sentry's user namespace";
    "chroot-escape" => Denied("EPERM"), "no CAP_SYS_CHROOT";
    "name-to-handle-at" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "open-by-handle-at" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "unshare-user" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone would allow it";
    "unshare-net" => Denied("EPERM"), "no CAP_SYS_ADMIN";
    "unshare-mount" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone would allow it";
    "setns" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "clone-newuser" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp) (clone flag check); the Sentry alone would allow it";
    "ptrace-child" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone would allow it";
    "ptrace-traceme" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone would allow it";
    "ptrace-parent" => Denied("EPERM"), "the agent is non-dumpable";
    "process-vm-readv" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "kill-host-process" => Denied("ESRCH"), "the Sentry's own pid namespace";
    "kill-0-pid-1" => Denied("EPERM"), "the init guard: gVisor would deliver even SIGKILL from the code to PID 1, so every signal to pid 1 is refused";
    "bpf" => Denied("EPERM"), "the Sentry refuses bpf without capabilities";
    "perf-event-open" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "io-uring-setup" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone implements io_uring";
    "keyctl" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "userfaultfd" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp)";
    "kexec-load" => Denied("EPERM"), "no CAP_SYS_BOOT";
    "init-module" => Denied("EPERM"), "no CAP_SYS_MODULE";
    "reboot" => Denied("EPERM"), "no CAP_SYS_BOOT";
    "swapon" => Denied("EPERM"), "no CAP_SYS_ADMIN";
    "acct" => Denied("EPERM"), "no CAP_SYS_PACCT";
    "settimeofday" => Denied("EPERM"), "no CAP_SYS_TIME";
    "clock-settime" => Denied("EPERM"), "no CAP_SYS_TIME";
    "syslog" => Denied("EPERM"), "the jail's seccomp filter, installed by the agent on itself (--seccomp); the Sentry alone serves a synthetic log";
    "iopl" => Denied("EPERM"), "no CAP_SYS_RAWIO";
    "ioperm" => Denied("EPERM"), "no CAP_SYS_RAWIO";
    "modify-ldt" => Denied("EPERM"), "the Sentry refuses modify_ldt";
    "raw-socket" => Denied("EPERM"), "no CAP_NET_RAW";
    "packet-socket" => Denied("EPERM"), "no CAP_NET_RAW";
    "connect-internet" => Denied("EHOSTUNREACH"), "--network=none: the Sentry's netstack has lo only, no route";
    "connect-host-listener-via-loopback" => Denied("ECONNREFUSED"), "the Sentry's own lo, where nothing listens";
    "connect-host-listener-via-host-address" => Denied("EHOSTUNREACH"), "--network=none: no route to the host";
    "netifs" => Data(checks::only_loopback), "--network=none";
    "caps" => Data(checks::dropped_in_sentry), "empty capability sets; the Sentry reports no CapAmb, NoNewPrivs or filter";
    "ids" => Data(checks::user_1000), "uid 1000 (the server's workspace belongs to root)";
    "hostname" => Data(checks::hostname_runbox), "the bundle's hostname";
    "fds" => Data(checks::only_stdio), "the agent binds its socket itself (close-on-exec)";
};

pub fn table(backend: Backend) -> &'static [Row] {
    match backend {
        Backend::Native => NATIVE,
        Backend::Docker => DOCKER,
        Backend::Gvisor => GVISOR,
    }
}

/// What `backend` must answer to `case`, and why.
pub fn expectation(backend: Backend, case: &str) -> (Expect, &'static str) {
    table(backend)
        .iter()
        .find(|(name, _, _)| *name == case)
        .map(|(_, expect, why)| (*expect, *why))
        .unwrap_or_else(|| panic!("the {backend} table has no row for {case}"))
}

#[test]
fn every_table_has_one_row_per_case_and_no_forbidden_success() {
    for backend in Backend::ALL {
        let rows = table(backend);
        let names: Vec<&str> = rows.iter().map(|(name, _, _)| *name).collect();
        let cases: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(
            names, cases,
            "the {backend} table is out of step with CASES"
        );
        for case in CASES.iter().filter(|c| c.forbidden) {
            let (expect, why) = expectation(backend, case.name);
            assert!(
                matches!(expect, Denied(_)),
                "{backend}: {} is forbidden, so only an errno can be expected, not {expect:?}",
                case.name
            );
            assert!(!why.is_empty(), "{backend}: {} has no reason", case.name);
        }
    }
}
