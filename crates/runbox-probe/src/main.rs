//! runbox-probe: tries exactly one forbidden thing and reports what the kernel said.
//!
//! `runbox-probe CASE [ARGS]` prints one JSON line
//! `{"case", "outcome": "ok"|"errno", "errno", "errno_name", "detail"[, "data"]}` and exits 0.
//! The escape test suite runs every case inside `runbox run` (expecting the threat model's
//! errno) and, as a positive control, directly on the host as root (expecting success or a
//! harmless argument error such as EINVAL/EFAULT, which proves that the sandbox's EPERM came
//! from the sandbox and not from the arguments).
//!
//! Arguments to machine-level syscalls (reboot, swapon, kexec, clock, modules) are always
//! invalid on purpose: on the host they must fail at argument checking, never act.
//!
//! The unbounded cases (fork-bomb, memory-bomb, daemonize-ignore-term, flood) refuse to run
//! outside a sandbox (hostname other than "runbox") unless RUNBOX_PROBE_ALLOW_HOST=1.

mod exhaustion;
mod filesystem;
mod identity;
mod machine;
mod namespaces;
mod network;
mod processes;
mod report;
mod terminal;

use report::Outcome;

/// A case: its name, its argument synopsis, and the function that runs it.
type CaseFn = fn(&[String]) -> Outcome;

const CASES: &[(&str, &str, CaseFn)] = &[
    ("read-shadow", "", filesystem::read_shadow),
    ("read-file", "PATH", filesystem::read_file),
    ("write-file", "PATH", filesystem::write_file),
    ("open-write", "PATH", filesystem::open_write),
    ("mount", "[DIR]", filesystem::mount_tmpfs),
    ("chroot-escape", "", filesystem::chroot_escape),
    ("name-to-handle-at", "", filesystem::name_to_handle_at),
    ("open-by-handle-at", "", filesystem::open_by_handle_at),
    ("quotactl", "", filesystem::quotactl),
    ("acct", "", filesystem::acct),
    ("swapon", "", filesystem::swapon),
    ("swapoff", "", filesystem::swapoff),
    ("unshare-user", "", namespaces::unshare_user),
    ("unshare-net", "", namespaces::unshare_net),
    ("unshare-mount", "", namespaces::unshare_mount),
    ("setns", "", namespaces::setns),
    ("clone-newuser", "", namespaces::clone_newuser),
    ("clone3", "", namespaces::clone3),
    ("ptrace", "[child|traceme|parent]", processes::ptrace),
    ("process-vm-readv", "", processes::process_vm_readv),
    ("kill", "PID", processes::kill),
    ("list-procs", "MARKER_ARG ENV_NAME", processes::list_procs),
    (
        "personality",
        "query|linux32|addr-no-randomize",
        processes::personality,
    ),
    ("x32", "", processes::x32),
    ("bpf", "", machine::bpf),
    ("perf-event-open", "", machine::perf_event_open),
    ("io-uring-setup", "", machine::io_uring_setup),
    ("keyctl", "", machine::keyctl),
    ("userfaultfd", "", machine::userfaultfd),
    ("kexec-load", "", machine::kexec_load),
    ("init-module", "", machine::init_module),
    ("reboot", "", machine::reboot),
    ("settimeofday", "", machine::settimeofday),
    ("clock-settime", "", machine::clock_settime),
    ("syslog", "", machine::syslog),
    ("iopl", "", machine::iopl),
    ("ioperm", "", machine::ioperm),
    ("modify-ldt", "", machine::modify_ldt),
    ("tiocsti", "stdin|tty|pty [highbits]", terminal::tiocsti),
    ("tioclinux", "stdin|tty|pty", terminal::tioclinux),
    ("raw-socket", "", network::raw_socket),
    ("packet-socket", "", network::packet_socket),
    ("connect-tcp", "HOST PORT", network::connect_tcp),
    ("connect-abstract", "NAME", network::connect_abstract),
    ("netifs", "", network::netifs),
    ("caps", "", identity::caps),
    ("ids", "", identity::ids),
    ("fds", "", identity::fds),
    ("hostname", "", identity::hostname),
    ("fork-bomb", "", exhaustion::fork_bomb),
    ("memory-bomb", "", exhaustion::memory_bomb),
    (
        "daemonize-ignore-term",
        "",
        exhaustion::daemonize_ignore_term,
    ),
    ("flood", "", exhaustion::flood),
];

fn usage() -> String {
    let mut text = String::from("usage: runbox-probe CASE [ARGS]\ncases:\n");
    for (name, synopsis, _) in CASES {
        text.push_str(&format!("  {name} {synopsis}\n"));
    }
    text
}

/// An argument the case needs; a missing one is a usage error (exit 2), not a probe result.
pub fn arg<'a>(args: &'a [String], index: usize, what: &str) -> &'a str {
    match args.get(index) {
        Some(value) => value,
        None => {
            eprintln!("runbox-probe: missing argument {what}\n{}", usage());
            std::process::exit(2);
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(case) = argv.first() else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    let Some((name, _, run)) = CASES.iter().find(|(name, _, _)| name == case) else {
        eprintln!("runbox-probe: unknown case {case:?}\n{}", usage());
        std::process::exit(2);
    };
    let outcome = run(&argv[1..]);
    report::emit(name, &outcome);
}
