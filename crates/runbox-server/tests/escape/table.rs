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

/// The jail's table (crates/runbox-probe/tests/escape), seen through the agent: the same
/// seccomp filter, landlock ruleset and namespaces confine the agent and what it runs.
pub const NATIVE: &[Row] = &[
    (
        "read-shadow",
        Denied("ENOENT"),
        "generated /etc without shadow",
    ),
    ("read-kmsg", Denied("ENOENT"), "minimal /dev"),
    (
        "write-etc-passwd",
        Denied("EEXIST"),
        "O_EXCL on the generated passwd; the write test is open-write",
    ),
    (
        "open-write-etc-passwd",
        Denied("EROFS"),
        "generated /etc bound read-only",
    ),
    (
        "write-usr-bin",
        Denied("EROFS"),
        "host /usr bound read-only",
    ),
    (
        "write-root",
        Denied("EROFS"),
        "read-only root after pivot_root",
    ),
    (
        "open-write-core-pattern",
        Denied("EACCES"),
        "owned by the unmapped host root",
    ),
    (
        "write-workspace",
        Allowed,
        "the workspace is the sandbox's to write",
    ),
    ("write-tmp", Allowed, "/tmp is the sandbox's tmpfs"),
    ("mount", Denied("EPERM"), "seccomp"),
    ("chroot-escape", Denied("EPERM"), "seccomp"),
    ("name-to-handle-at", Denied("EPERM"), "seccomp"),
    ("open-by-handle-at", Denied("EPERM"), "seccomp"),
    ("unshare-user", Denied("EPERM"), "seccomp"),
    ("unshare-net", Denied("EPERM"), "seccomp"),
    ("unshare-mount", Denied("EPERM"), "seccomp"),
    ("setns", Denied("EPERM"), "seccomp"),
    ("clone-newuser", Denied("EPERM"), "seccomp"),
    ("ptrace-child", Denied("EPERM"), "seccomp"),
    ("ptrace-traceme", Denied("EPERM"), "seccomp"),
    ("ptrace-parent", Denied("EPERM"), "seccomp"),
    ("process-vm-readv", Denied("EPERM"), "seccomp"),
    ("kill-host-process", Denied("ESRCH"), "own pid namespace"),
    (
        "kill-0-pid-1",
        Allowed,
        "signal 0 to the agent (same uid) only checks it exists",
    ),
    ("bpf", Denied("EPERM"), "seccomp"),
    ("perf-event-open", Denied("EPERM"), "seccomp"),
    ("io-uring-setup", Denied("EPERM"), "seccomp"),
    ("keyctl", Denied("EPERM"), "seccomp"),
    ("userfaultfd", Denied("EPERM"), "seccomp"),
    ("kexec-load", Denied("EPERM"), "seccomp"),
    ("init-module", Denied("EPERM"), "seccomp"),
    ("reboot", Denied("EPERM"), "seccomp"),
    ("swapon", Denied("EPERM"), "seccomp"),
    ("acct", Denied("EPERM"), "seccomp"),
    ("settimeofday", Denied("EPERM"), "seccomp"),
    ("clock-settime", Denied("EPERM"), "seccomp"),
    ("syslog", Denied("EPERM"), "seccomp"),
    ("iopl", Denied("EPERM"), "seccomp"),
    ("ioperm", Denied("EPERM"), "seccomp"),
    ("modify-ldt", Denied("EPERM"), "seccomp"),
    ("raw-socket", Denied("EPERM"), "seccomp"),
    ("packet-socket", Denied("EPERM"), "seccomp"),
    (
        "connect-internet",
        Denied("ENETUNREACH"),
        "own network namespace: lo only, no route",
    ),
    (
        "connect-host-listener-via-loopback",
        Denied("ECONNREFUSED"),
        "the sandbox's own lo",
    ),
    (
        "connect-host-listener-via-host-address",
        Denied("ENETUNREACH"),
        "no route out of the namespace",
    ),
    (
        "netifs",
        Data(checks::only_loopback),
        "own network namespace",
    ),
    (
        "caps",
        Data(checks::dropped_and_filtered),
        "no caps, no_new_privs, seccomp filter",
    ),
    ("ids", Data(checks::user_1000), "user 1000 inside"),
    (
        "hostname",
        Data(checks::hostname_runbox),
        "own UTS namespace",
    ),
    (
        "fds",
        Data(checks::only_stdio),
        "every fd above 2 is close-on-exec",
    ),
];

pub const DOCKER: &[Row] = &[
    (
        "read-shadow",
        Denied("EACCES"),
        "the image's shadow is root-only 0640; uid 1000",
    ),
    (
        "read-kmsg",
        Denied("ENOENT"),
        "the engine's /dev has no kmsg",
    ),
    (
        "write-etc-passwd",
        Denied("EEXIST"),
        "O_EXCL on the image's passwd; the write test is open-write",
    ),
    (
        "open-write-etc-passwd",
        Denied("EACCES"),
        "root-owned 0644 file, uid 1000",
    ),
    (
        "write-usr-bin",
        Denied("EACCES"),
        "root-owned /usr/bin, uid 1000",
    ),
    ("write-root", Denied("EACCES"), "root-owned /, uid 1000"),
    (
        "open-write-core-pattern",
        Denied("EACCES"),
        "root-owned, uid 1000",
    ),
    (
        "write-workspace",
        Allowed,
        "the workspace is the sandbox's to write",
    ),
    ("write-tmp", Allowed, "/tmp is the container's tmpfs"),
    (
        "mount",
        Denied("EPERM"),
        "default seccomp profile: mount needs CAP_SYS_ADMIN",
    ),
    (
        "chroot-escape",
        Denied("EPERM"),
        "default profile: chroot needs CAP_SYS_CHROOT",
    ),
    ("name-to-handle-at", Denied("EPERM"), "default profile"),
    (
        "open-by-handle-at",
        Denied("EPERM"),
        "default profile (the shocker breakout)",
    ),
    (
        "unshare-user",
        Denied("EPERM"),
        "default profile: CLONE_NEWUSER needs CAP_SYS_ADMIN",
    ),
    ("unshare-net", Denied("EPERM"), "default profile"),
    ("unshare-mount", Denied("EPERM"), "default profile"),
    ("setns", Denied("EPERM"), "default profile"),
    (
        "clone-newuser",
        Denied("EPERM"),
        "default profile: clone flags checked",
    ),
    ("ptrace-child", Denied("EPERM"), "?"),
    ("ptrace-traceme", Denied("EPERM"), "?"),
    (
        "ptrace-parent",
        Denied("EPERM"),
        "the agent is non-dumpable",
    ),
    ("process-vm-readv", Denied("EPERM"), "?"),
    ("kill-host-process", Denied("ESRCH"), "own pid namespace"),
    (
        "kill-0-pid-1",
        Allowed,
        "signal 0 to the agent (same uid) only checks it exists",
    ),
    ("bpf", Denied("EPERM"), "default profile"),
    ("perf-event-open", Denied("EPERM"), "default profile"),
    ("io-uring-setup", Denied("EPERM"), "?"),
    ("keyctl", Denied("EPERM"), "default profile"),
    ("userfaultfd", Denied("EPERM"), "default profile"),
    ("kexec-load", Denied("EPERM"), "default profile"),
    ("init-module", Denied("EPERM"), "default profile"),
    ("reboot", Denied("EPERM"), "default profile"),
    ("swapon", Denied("EPERM"), "default profile"),
    ("acct", Denied("EPERM"), "default profile"),
    ("settimeofday", Denied("EPERM"), "default profile"),
    ("clock-settime", Denied("EPERM"), "default profile"),
    ("syslog", Denied("EPERM"), "default profile"),
    ("iopl", Denied("EPERM"), "default profile"),
    ("ioperm", Denied("EPERM"), "default profile"),
    ("modify-ldt", Denied("EPERM"), "default profile"),
    ("raw-socket", Denied("EPERM"), "CapDrop ALL: no CAP_NET_RAW"),
    (
        "packet-socket",
        Denied("EPERM"),
        "CapDrop ALL: no CAP_NET_RAW",
    ),
    (
        "connect-internet",
        Denied("ENETUNREACH"),
        "NetworkMode none: lo only",
    ),
    (
        "connect-host-listener-via-loopback",
        Denied("ECONNREFUSED"),
        "the container's own lo",
    ),
    (
        "connect-host-listener-via-host-address",
        Denied("ENETUNREACH"),
        "NetworkMode none: no route",
    ),
    ("netifs", Data(checks::only_loopback), "NetworkMode none"),
    (
        "caps",
        Data(checks::dropped_and_filtered),
        "CapDrop ALL, no-new-privileges, default seccomp",
    ),
    ("ids", Data(checks::user_1000), "User 1000:1000"),
    (
        "hostname",
        Data(checks::hostname_runbox),
        "the container's hostname",
    ),
    (
        "fds",
        Data(checks::only_stdio),
        "the agent passes only stdio",
    ),
];

pub const GVISOR: &[Row] = &[
    ("read-shadow", Denied("ENOENT"), "?"),
    ("read-kmsg", Denied("ENOENT"), "?"),
    ("write-etc-passwd", Denied("EEXIST"), "?"),
    ("open-write-etc-passwd", Denied("EROFS"), "?"),
    ("write-usr-bin", Denied("EROFS"), "?"),
    ("write-root", Denied("EROFS"), "?"),
    ("open-write-core-pattern", Denied("EACCES"), "?"),
    (
        "write-workspace",
        Allowed,
        "the workspace is the sandbox's to write",
    ),
    ("write-tmp", Allowed, "/tmp is the sandbox's tmpfs"),
    ("mount", Denied("EPERM"), "?"),
    ("chroot-escape", Denied("EPERM"), "?"),
    ("name-to-handle-at", Denied("ENOSYS"), "?"),
    ("open-by-handle-at", Denied("ENOSYS"), "?"),
    ("unshare-user", Denied("EPERM"), "?"),
    ("unshare-net", Denied("EPERM"), "?"),
    ("unshare-mount", Denied("EPERM"), "?"),
    ("setns", Denied("EPERM"), "?"),
    ("clone-newuser", Denied("EPERM"), "?"),
    ("ptrace-child", Denied("EPERM"), "?"),
    ("ptrace-traceme", Denied("EPERM"), "?"),
    ("ptrace-parent", Denied("EPERM"), "?"),
    ("process-vm-readv", Denied("EPERM"), "?"),
    ("kill-host-process", Denied("ESRCH"), "?"),
    (
        "kill-0-pid-1",
        Allowed,
        "signal 0 to the agent (same uid) only checks it exists",
    ),
    ("bpf", Denied("EPERM"), "?"),
    ("perf-event-open", Denied("ENOSYS"), "?"),
    ("io-uring-setup", Denied("ENOSYS"), "?"),
    ("keyctl", Denied("ENOSYS"), "?"),
    ("userfaultfd", Denied("ENOSYS"), "?"),
    ("kexec-load", Denied("EPERM"), "?"),
    ("init-module", Denied("EPERM"), "?"),
    ("reboot", Denied("EPERM"), "?"),
    ("swapon", Denied("EPERM"), "?"),
    ("acct", Denied("EPERM"), "?"),
    ("settimeofday", Denied("EPERM"), "?"),
    ("clock-settime", Denied("EPERM"), "?"),
    ("syslog", Denied("EPERM"), "?"),
    ("iopl", Denied("EPERM"), "?"),
    ("ioperm", Denied("EPERM"), "?"),
    ("modify-ldt", Denied("ENOSYS"), "?"),
    ("raw-socket", Denied("EPERM"), "?"),
    ("packet-socket", Denied("EPERM"), "?"),
    ("connect-internet", Denied("ENETUNREACH"), "?"),
    (
        "connect-host-listener-via-loopback",
        Denied("ECONNREFUSED"),
        "?",
    ),
    (
        "connect-host-listener-via-host-address",
        Denied("ENETUNREACH"),
        "?",
    ),
    ("netifs", Data(checks::only_loopback), "?"),
    ("caps", Data(checks::dropped_in_sentry), "?"),
    ("ids", Data(checks::user_1000), "?"),
    ("hostname", Data(checks::hostname_runbox), "?"),
    ("fds", Data(checks::only_stdio), "?"),
];

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
