//! The seccomp filter: a deny-list of syscalls that an unprivileged sandbox has no business
//! making, written down as a table (the threat model as data), compiled to BPF once in the
//! parent and only installed in the child.
//!
//! The allow-by-default shape is deliberate: the other layers (namespaces, no capabilities,
//! landlock, cgroups) already confine what ordinary syscalls can touch; this filter removes
//! the kernel attack surface that those layers do not cover (new namespaces, keyrings, BPF,
//! io_uring, ptrace, module loading, ...). The errno is EPERM so programs see "not allowed",
//! except clone3, which gets ENOSYS so that glibc falls back to clone(2), whose flags we can
//! inspect (clone3 passes them in memory, out of seccomp's reach).
//!
//! The compiler is ours and small: a fixed prologue (architecture, x32, clone3), then a binary
//! search over the sorted syscall numbers of the table, each leaf holding that syscall's
//! argument checks. Any syscall runs about 20 instructions. That matters beyond the syscall
//! path: at install time the kernel runs the filter once per syscall number to build its
//! allow cache, so a linear chain of ~400 instructions cost ~0.5 ms per sandbox start.

use std::io;

use libc::sock_filter;

/// A compiled filter: classic BPF over `struct seccomp_data`, ready for [`install`].
pub type Program = Vec<sock_filter>;

/// When a table entry denies its syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// arg `index`, low 32 bits, has any of `masks` set (each mask is a single bit).
    AnyFlag {
        index: u8,
        masks: &'static [u64],
    },
    /// arg `index`, compared on its low 32 bits, equals one of `values`.
    ArgIs {
        index: u8,
        values: &'static [u64],
    },
    /// arg `index`, low 32 bits, is none of `values`.
    ArgIsNot {
        index: u8,
        values: &'static [u64],
    },
    /// socket(2): the family is AF_PACKET, or the type is SOCK_RAW for AF_INET/AF_INET6.
    RawOrPacketSocket,
}

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub nr: i64,
    pub when: When,
    pub why: &'static str,
}

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// personality(0) and the query personality(0xffffffff) stay allowed.
const PERSONALITY_DEFAULT: &[u64] = &[0, 0xffff_ffff];

/// The table. Order does not matter to the kernel; it is grouped by reason for readers.
pub fn table() -> Vec<Entry> {
    use libc::*;
    let always = |name: &'static str, nr: i64, why: &'static str| Entry {
        name,
        nr,
        when: When::Always,
        why,
    };
    vec![
        // Mount table and root: the jail's filesystem view must stay as built.
        always("mount", SYS_mount, "change the filesystem view"),
        always(
            "umount2",
            SYS_umount2,
            "uncover what the jail's mounts hide",
        ),
        always("pivot_root", SYS_pivot_root, "change the root"),
        always("chroot", SYS_chroot, "chroot escapes"),
        always("open_tree", SYS_open_tree, "new mount API"),
        always("move_mount", SYS_move_mount, "new mount API"),
        always("fsopen", SYS_fsopen, "new mount API"),
        always("fsconfig", SYS_fsconfig, "new mount API"),
        always("fsmount", SYS_fsmount, "new mount API"),
        always("fspick", SYS_fspick, "new mount API"),
        always("mount_setattr", SYS_mount_setattr, "new mount API"),
        // Namespaces: nested user namespaces give back capabilities over new objects.
        always("unshare", SYS_unshare, "new namespaces"),
        always("setns", SYS_setns, "join other namespaces"),
        Entry {
            name: "clone",
            nr: SYS_clone,
            when: When::AnyFlag {
                index: 0,
                masks: NAMESPACE_FLAGS,
            },
            why: "clone into new namespaces",
        },
        // Other processes' memory.
        always("ptrace", SYS_ptrace, "inspect or control other processes"),
        always(
            "process_vm_readv",
            SYS_process_vm_readv,
            "read other processes' memory",
        ),
        always(
            "process_vm_writev",
            SYS_process_vm_writev,
            "write other processes' memory",
        ),
        always(
            "kcmp",
            SYS_kcmp,
            "compare kernel objects of other processes",
        ),
        always("pidfd_getfd", SYS_pidfd_getfd, "steal file descriptors"),
        // Large kernel attack surface with a history of exploits.
        always("bpf", SYS_bpf, "eBPF"),
        always(
            "perf_event_open",
            SYS_perf_event_open,
            "perf events, side channels",
        ),
        always(
            "userfaultfd",
            SYS_userfaultfd,
            "race-widening for kernel exploits",
        ),
        always(
            "io_uring_setup",
            SYS_io_uring_setup,
            "io_uring bypasses seccomp",
        ),
        always(
            "io_uring_enter",
            SYS_io_uring_enter,
            "io_uring bypasses seccomp",
        ),
        always(
            "io_uring_register",
            SYS_io_uring_register,
            "io_uring bypasses seccomp",
        ),
        always("keyctl", SYS_keyctl, "kernel keyrings are not namespaced"),
        always("add_key", SYS_add_key, "kernel keyrings are not namespaced"),
        always(
            "request_key",
            SYS_request_key,
            "kernel keyrings are not namespaced",
        ),
        always("lookup_dcookie", SYS_lookup_dcookie, "kernel internals"),
        always(
            "fanotify_init",
            SYS_fanotify_init,
            "filesystem-wide monitoring",
        ),
        always(
            "open_by_handle_at",
            SYS_open_by_handle_at,
            "open files outside the view (shocker)",
        ),
        always(
            "name_to_handle_at",
            SYS_name_to_handle_at,
            "file handles for open_by_handle_at",
        ),
        // The machine itself.
        always("kexec_load", SYS_kexec_load, "replace the kernel"),
        always("kexec_file_load", SYS_kexec_file_load, "replace the kernel"),
        always("init_module", SYS_init_module, "load kernel modules"),
        always("finit_module", SYS_finit_module, "load kernel modules"),
        always("delete_module", SYS_delete_module, "unload kernel modules"),
        always("reboot", SYS_reboot, "reboot"),
        always("swapon", SYS_swapon, "swap"),
        always("swapoff", SYS_swapoff, "swap"),
        always(
            "clock_settime",
            SYS_clock_settime,
            "the clock is not namespaced",
        ),
        always(
            "clock_adjtime",
            SYS_clock_adjtime,
            "the clock is not namespaced",
        ),
        always(
            "settimeofday",
            SYS_settimeofday,
            "the clock is not namespaced",
        ),
        always("adjtimex", SYS_adjtimex, "the clock is not namespaced"),
        always("acct", SYS_acct, "process accounting"),
        always("quotactl", SYS_quotactl, "disk quotas"),
        always("quotactl_fd", SYS_quotactl_fd, "disk quotas"),
        always("syslog", SYS_syslog, "kernel log leaks addresses"),
        always("iopl", SYS_iopl, "raw I/O ports"),
        always("ioperm", SYS_ioperm, "raw I/O ports"),
        always(
            "modify_ldt",
            SYS_modify_ldt,
            "16-bit segments, old exploit vector",
        ),
        always("vhangup", SYS_vhangup, "terminal hangup"),
        always("uselib", SYS_uselib, "obsolete"),
        always("sethostname", SYS_sethostname, "uts"),
        always("setdomainname", SYS_setdomainname, "uts"),
        Entry {
            name: "personality",
            nr: SYS_personality,
            when: When::ArgIsNot {
                index: 0,
                values: PERSONALITY_DEFAULT,
            },
            why: "non-default personalities weaken ASLR and change syscall semantics",
        },
        Entry {
            name: "socket",
            nr: SYS_socket,
            when: When::RawOrPacketSocket,
            why: "raw and packet sockets forge traffic",
        },
        Entry {
            name: "ioctl",
            nr: SYS_ioctl,
            when: When::ArgIs {
                index: 1,
                values: &[TIOCSTI, TIOCLINUX],
            },
            why: "inject keystrokes into a terminal",
        },
    ]
}

/// Errors compiling the table (only a bug in the table or in this compiler can cause one).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("seccomp rule for {syscall} cannot be compiled: {reason}")]
    Rule {
        syscall: &'static str,
        reason: &'static str,
    },
    #[error("seccomp program is invalid at instruction {at}: {reason}")]
    Program { at: usize, reason: &'static str },
}

// Classic BPF opcodes (linux/bpf_common.h), only the ones this compiler emits.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
/// BPF_MAXINSNS: the kernel rejects longer programs.
const MAX_INSNS: usize = 4096;

// struct seccomp_data: nr, arch, instruction_pointer, args[6]. Little endian, so an argument's
// low 32 bits are at its own offset.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;
const DATA_LEN: u32 = 64;

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const RET_DENY: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
/// The type argument of socket(2) without SOCK_NONBLOCK / SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u32 = 0xf;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The head of the program: the checks that are not per-syscall entries.
/// Leaves the syscall number in A for the search that follows.
fn prologue() -> Vec<sock_filter> {
    vec![
        // Wrong architecture (i386 via int 0x80): kill.
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        // x32 ABI syscall numbers carry bit 30: kill.
        insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
        insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        // clone3: ENOSYS, so libc falls back to clone(2).
        insn(BPF_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

/// Where a jump inside one syscall's argument checks goes.
#[derive(Debug, Clone, Copy)]
enum To {
    Next,
    /// Skip this many of the following checks.
    Skip(u8),
    Deny,
    Allow,
}

/// One argument check, before its jumps are resolved.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A = the low 32 bits of argument `index`.
    LoadArg(u8),
    /// A &= k.
    And(u32),
    /// A conditional jump on A against k.
    Jump { code: u16, k: u32, yes: To, no: To },
}

/// The argument checks of one entry, run once its syscall number matched. Falling off the end
/// denies, so `Always` is no checks at all.
fn checks(when: When) -> Result<Vec<Op>, &'static str> {
    let eq = |k: u32, yes: To, no: To| Op::Jump {
        code: BPF_JEQ_K,
        k,
        yes,
        no,
    };
    let any_of = |values: &[u64], hit: To, miss: To| -> Result<Vec<Op>, &'static str> {
        let last = values.len().checked_sub(1).ok_or("no values")?;
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let v = u32::try_from(v).map_err(|_| "value above 32 bits")?;
                Ok(eq(v, hit, if i == last { miss } else { To::Next }))
            })
            .collect()
    };
    Ok(match when {
        When::Always => Vec::new(),
        When::AnyFlag { index, masks } => {
            let mut union = 0u32;
            for &mask in masks {
                if mask.count_ones() != 1 {
                    return Err("a flag mask must be a single bit");
                }
                union |= u32::try_from(mask).map_err(|_| "flag above 32 bits")?;
            }
            if union == 0 {
                return Err("no flags");
            }
            vec![
                Op::LoadArg(index),
                Op::Jump {
                    code: BPF_JSET_K,
                    k: union,
                    yes: To::Deny,
                    no: To::Allow,
                },
            ]
        }
        When::ArgIs { index, values } => {
            let mut ops = vec![Op::LoadArg(index)];
            ops.extend(any_of(values, To::Deny, To::Allow)?);
            ops
        }
        When::ArgIsNot { index, values } => {
            let mut ops = vec![Op::LoadArg(index)];
            ops.extend(any_of(values, To::Allow, To::Deny)?);
            ops
        }
        When::RawOrPacketSocket => vec![
            Op::LoadArg(0),
            eq(libc::AF_PACKET as u32, To::Deny, To::Next),
            eq(libc::AF_INET as u32, To::Skip(1), To::Next),
            eq(libc::AF_INET6 as u32, To::Next, To::Allow),
            Op::LoadArg(1),
            Op::And(SOCK_TYPE_MASK),
            eq(libc::SOCK_RAW as u32, To::Deny, To::Allow),
        ],
    })
}

/// One leaf of the search, entered with the syscall number in A:
/// `[JEQ nr] checks... [RET EPERM] [RET ALLOW]`.
fn leaf(nr: u32, ops: &[Op]) -> Result<Vec<sock_filter>, &'static str> {
    let matched = Op::Jump {
        code: BPF_JEQ_K,
        k: nr,
        yes: To::Next,
        no: To::Allow,
    };
    let ops: Vec<Op> = std::iter::once(matched)
        .chain(ops.iter().copied())
        .collect();
    let deny = ops.len();
    let offset = |at: usize, to: To| -> Result<u8, &'static str> {
        let target = match to {
            To::Next => at + 1,
            To::Skip(n) => at + 1 + usize::from(n),
            To::Deny => deny,
            To::Allow => deny + 1,
        };
        if target > deny + 1 {
            return Err("jump past the end of the checks");
        }
        u8::try_from(target - at - 1).map_err(|_| "checks too long")
    };
    let mut out = Vec::with_capacity(ops.len() + 2);
    for (at, op) in ops.iter().enumerate() {
        out.push(match *op {
            Op::LoadArg(index) if index < 6 => {
                insn(BPF_LD_W_ABS, 0, 0, DATA_ARGS + 8 * u32::from(index))
            }
            Op::LoadArg(_) => return Err("syscalls have six arguments"),
            Op::And(k) => insn(BPF_ALU_AND_K, 0, 0, k),
            Op::Jump { code, k, yes, no } => insn(code, offset(at, yes)?, offset(at, no)?, k),
        });
    }
    out.push(insn(BPF_RET_K, 0, 0, RET_DENY));
    out.push(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    Ok(out)
}

/// Binary search over `leaves` (sorted by syscall number, the number in A): each inner node
/// is one JGE on the first number of its upper half, plus a JA over the lower half when that
/// is too far for the 8-bit jump offset.
fn search(leaves: &[Vec<sock_filter>], numbers: &[u32]) -> Vec<sock_filter> {
    match leaves {
        [] => vec![insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)],
        [only] => only.clone(),
        _ => {
            let half = leaves.len() / 2;
            let low = search(&leaves[..half], &numbers[..half]);
            let high = search(&leaves[half..], &numbers[half..]);
            let mut out = Vec::with_capacity(low.len() + high.len() + 2);
            match u8::try_from(low.len()) {
                Ok(skip) => out.push(insn(BPF_JGE_K, skip, 0, numbers[half])),
                Err(_) => {
                    out.push(insn(BPF_JGE_K, 0, 1, numbers[half]));
                    out.push(insn(BPF_JA, 0, 0, low.len() as u32));
                }
            }
            out.extend(low);
            out.extend(high);
            out
        }
    }
}

/// Checks what the kernel would: length, known opcodes, loads inside `seccomp_data`, every
/// jump inside the program, and no way to fall off its end.
fn validate(program: &[sock_filter]) -> Result<(), CompileError> {
    let invalid = |at: usize, reason: &'static str| Err(CompileError::Program { at, reason });
    if program.is_empty() || program.len() >= MAX_INSNS {
        return invalid(program.len(), "program length");
    }
    for (at, i) in program.iter().enumerate() {
        let next = at + 1;
        let targets = match i.code {
            BPF_LD_W_ABS if i.k >= DATA_LEN || !i.k.is_multiple_of(4) => {
                return invalid(at, "load outside seccomp_data")
            }
            BPF_LD_W_ABS | BPF_ALU_AND_K | BPF_RET_K => [next, next],
            BPF_JA => [next + i.k as usize, next + i.k as usize],
            BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                [next + usize::from(i.jt), next + usize::from(i.jf)]
            }
            _ => return invalid(at, "unknown opcode"),
        };
        if i.code != BPF_RET_K && targets.iter().any(|&t| t >= program.len()) {
            return invalid(at, "jump or fall-through out of the program");
        }
    }
    Ok(())
}

/// Compiles the table to one BPF program: ERRNO(EPERM) where an entry matches, ALLOW
/// otherwise, after the prologue.
pub fn compile() -> Result<Program, CompileError> {
    compile_entries(table())
}

/// Signals to PID 1 by number. For a sandbox whose kernel does not shield its init from
/// the code's signals (gVisor's Sentry delivers even SIGKILL to PID 1 from inside), where the
/// agent installs this filter on itself: signals to process groups and other pids stay
/// allowed, and the agent sends none to itself.
pub fn init_guard() -> Vec<Entry> {
    use libc::*;
    const PID_1: &[u64] = &[1];
    let to_init = |name: &'static str, nr: i64| Entry {
        name,
        nr,
        when: When::ArgIs {
            index: 0,
            values: PID_1,
        },
        why: "signal the sandbox's init (the agent)",
    };
    vec![
        to_init("kill", SYS_kill),
        to_init("tgkill", SYS_tgkill),
        to_init("rt_sigqueueinfo", SYS_rt_sigqueueinfo),
        to_init("rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo),
        to_init("pidfd_open", SYS_pidfd_open),
    ]
}

/// `table()` plus `init_guard()` (the gVisor agent's filter).
pub fn compile_guarding_init() -> Result<Program, CompileError> {
    let mut entries = table();
    entries.extend(init_guard());
    compile_entries(entries)
}

fn compile_entries(mut entries: Vec<Entry>) -> Result<Program, CompileError> {
    entries.sort_by_key(|e| e.nr);
    let mut numbers = Vec::with_capacity(entries.len());
    let mut leaves = Vec::with_capacity(entries.len());
    for entry in &entries {
        let rule = |reason| CompileError::Rule {
            syscall: entry.name,
            reason,
        };
        let nr = u32::try_from(entry.nr)
            .ok()
            .filter(|&nr| nr < X32_SYSCALL_BIT)
            .ok_or_else(|| rule("not an x86_64 syscall number"))?;
        if numbers.last() == Some(&nr) {
            return Err(rule("a second entry for the same syscall"));
        }
        numbers.push(nr);
        leaves.push(leaf(nr, &checks(entry.when).map_err(rule)?).map_err(rule)?);
    }
    let mut program = prologue();
    program.extend(search(&leaves, &numbers));
    validate(&program)?;
    Ok(program)
}

/// Installs `program` on the calling thread (the plan sets no_new_privs first); it then holds
/// for this process and everything it executes.
pub fn install(program: &[sock_filter]) -> io::Result<()> {
    crate::sys::seccomp_set_filter(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF_JGT_K: u16 = 0x25;
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    const EPERM: u32 = RET_DENY;
    const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const ALLOW: u32 = SECCOMP_RET_ALLOW;
    const KILL: u32 = SECCOMP_RET_KILL_PROCESS;
    /// The longest path any syscall may take through the program.
    const MAX_PATH: usize = 25;

    /// A classic BPF interpreter for the instructions seccomp programs use, as the kernel runs
    /// them on `struct seccomp_data`. Returns the action and the number of instructions run;
    /// panics on anything it does not know and on any jump out of the program.
    fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |offset: u32| -> u32 {
            match offset {
                DATA_NR => nr,
                DATA_ARCH => arch,
                DATA_ARGS..DATA_LEN => {
                    let arg = args[((offset - DATA_ARGS) / 8) as usize];
                    if offset.is_multiple_of(8) {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => 0, // the instruction pointer
            }
        };
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = program.get(pc).expect("pc inside the program");
            steps += 1;
            let jump = |taken: bool| 1 + usize::from(if taken { i.jt } else { i.jf });
            pc += match i.code {
                BPF_LD_W_ABS => {
                    assert!(i.k.is_multiple_of(4) && i.k < DATA_LEN, "load at {}", i.k);
                    a = word(i.k);
                    1
                }
                BPF_ALU_AND_K => {
                    a &= i.k;
                    1
                }
                BPF_JA => 1 + i.k as usize,
                BPF_JEQ_K => jump(a == i.k),
                BPF_JGE_K => jump(a >= i.k),
                BPF_JGT_K => jump(a > i.k),
                BPF_JSET_K => jump(a & i.k != 0),
                BPF_RET_K => return (i.k, steps),
                code => panic!("unknown opcode {code:#x} at {pc}"),
            };
        }
    }

    fn syscall(program: &[sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        run(program, AUDIT_ARCH_X86_64, nr as u32, args).0
    }

    fn args2(a0: u64, a1: u64) -> [u64; 6] {
        [a0, a1, 0, 0, 0, 0]
    }

    #[test]
    fn table_covers_the_threat_model() {
        let names: Vec<&str> = table().iter().map(|e| e.name).collect();
        for required in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "clone",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "clock_settime",
            "settimeofday",
            "adjtimex",
            "acct",
            "quotactl",
            "syslog",
            "iopl",
            "ioperm",
            "modify_ldt",
            "open_by_handle_at",
            "name_to_handle_at",
            "personality",
            "socket",
            "ioctl",
        ] {
            assert!(
                names.contains(&required),
                "{required} missing from the seccomp table"
            );
        }
    }

    #[test]
    fn table_has_no_duplicate_syscalls() {
        let mut nrs: Vec<i64> = table().iter().map(|e| e.nr).collect();
        let len = nrs.len();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), len);
    }

    #[test]
    fn program_compiles_and_starts_with_arch_and_x32_checks() {
        let program = compile().expect("table compiles");
        assert!(program.len() < MAX_INSNS);
        let fields = |i: &sock_filter| (i.code, i.jt, i.jf, i.k);
        assert_eq!(fields(&program[0]), (BPF_LD_W_ABS, 0, 0, DATA_ARCH));
        assert_eq!(program[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(program[4].k, X32_SYSCALL_BIT);
        assert_eq!(program[7].k, ENOSYS);
    }

    #[test]
    fn every_syscall_number_gets_its_table_action() {
        let program = compile().expect("table compiles");
        let table = table();
        let mut longest = 0;
        for nr in 0..=460u32 {
            let (action, steps) = run(&program, AUDIT_ARCH_X86_64, nr, [0; 6]);
            longest = longest.max(steps);
            let entry = table.iter().find(|e| e.nr == i64::from(nr));
            let expected = match entry.map(|e| e.when) {
                _ if i64::from(nr) == libc::SYS_clone3 => ENOSYS,
                Some(When::Always) => EPERM,
                // All-zero arguments pass every argument rule in the table: clone(0),
                // personality(0), ioctl(0, 0), socket(AF_UNSPEC, 0).
                Some(_) | None => ALLOW,
            };
            assert_eq!(action, expected, "syscall {nr} ({entry:?})");
        }
        assert!(longest <= MAX_PATH, "longest path {longest} instructions");
    }

    #[test]
    fn argument_rules_take_every_path_within_bounds() {
        let program = compile().expect("table compiles");
        for nr in [
            libc::SYS_clone,
            libc::SYS_personality,
            libc::SYS_ioctl,
            libc::SYS_socket,
        ] {
            for a0 in [
                0,
                1,
                0x0040_0000,
                0xffff_ffff,
                u64::MAX,
                libc::AF_INET as u64,
            ] {
                for a1 in [0, libc::SOCK_RAW as u64, libc::TIOCSTI, 0xf] {
                    let (_, steps) = run(&program, AUDIT_ARCH_X86_64, nr as u32, args2(a0, a1));
                    assert!(steps <= MAX_PATH, "syscall {nr}({a0:#x}, {a1:#x}): {steps}");
                }
            }
        }
    }

    #[test]
    fn x32_and_foreign_architectures_are_killed() {
        let program = compile().expect("table compiles");
        for nr in [0, 1, 59, 435, 512, 520, 547, 0x3fff_ffff] {
            let x32 = nr | X32_SYSCALL_BIT;
            assert_eq!(
                run(&program, AUDIT_ARCH_X86_64, x32, [0; 6]).0,
                KILL,
                "{x32:#x}"
            );
        }
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]).0, KILL);
        for nr in 0..=460 {
            assert_eq!(
                run(&program, AUDIT_ARCH_I386, nr, [0; 6]).0,
                KILL,
                "i386 {nr}"
            );
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags() {
        let program = compile().expect("table compiles");
        let clone = |flags: u64| syscall(&program, libc::SYS_clone, args2(flags, 0));
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(clone(fork), ALLOW);
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(clone(thread), ALLOW);
        assert_eq!(clone(fork | libc::CLONE_NEWUSER as u64), EPERM);
        for &flag in NAMESPACE_FLAGS {
            assert_eq!(clone(flag), EPERM, "{flag:#x}");
            assert_eq!(clone(fork | flag), EPERM, "{flag:#x}");
        }
    }

    #[test]
    fn personality_allows_only_the_default_and_the_query() {
        let program = compile().expect("table compiles");
        let personality = |p: u64| syscall(&program, libc::SYS_personality, args2(p, 0));
        assert_eq!(personality(0), ALLOW);
        assert_eq!(personality(0xffff_ffff), ALLOW);
        assert_eq!(personality(0x0040_0000), EPERM); // ADDR_NO_RANDOMIZE
        assert_eq!(personality(8), EPERM); // PER_LINUX32
    }

    #[test]
    fn ioctl_denies_terminal_injection_on_the_low_32_bits() {
        let program = compile().expect("table compiles");
        let ioctl = |request: u64| syscall(&program, libc::SYS_ioctl, args2(1, request));
        assert_eq!(ioctl(libc::TIOCSTI), EPERM);
        assert_eq!(ioctl(0xffff_ffff_0000_5412), EPERM);
        assert_eq!(ioctl(libc::TIOCLINUX), EPERM);
        assert_eq!(ioctl(libc::TCGETS), ALLOW);
        assert_eq!(ioctl(libc::TIOCGWINSZ), ALLOW);
    }

    #[test]
    fn socket_denies_raw_and_packet_sockets() {
        let program = compile().expect("table compiles");
        let socket = |family: i32, ty: i32| {
            syscall(&program, libc::SYS_socket, args2(family as u64, ty as u64))
        };
        assert_eq!(socket(libc::AF_PACKET, libc::SOCK_RAW), EPERM);
        assert_eq!(socket(libc::AF_PACKET, libc::SOCK_DGRAM), EPERM);
        assert_eq!(
            socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC),
            EPERM
        );
        assert_eq!(
            socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_NONBLOCK),
            EPERM
        );
        assert_eq!(socket(libc::AF_INET, libc::SOCK_STREAM), ALLOW);
        assert_eq!(
            socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC),
            ALLOW
        );
        assert_eq!(socket(libc::AF_NETLINK, libc::SOCK_RAW), ALLOW);
        assert_eq!(socket(libc::AF_UNIX, libc::SOCK_STREAM), ALLOW);
        assert_eq!(socket(libc::AF_UNIX, libc::SOCK_RAW), ALLOW);
    }

    #[test]
    fn search_jumps_over_large_subtrees() {
        // 200 leaves of 3 instructions: the lower half of the root is too far for jt.
        let numbers: Vec<u32> = (0..200).collect();
        let leaves: Vec<_> = numbers
            .iter()
            .map(|&nr| leaf(nr, &checks(When::Always).expect("checks")).expect("leaf"))
            .collect();
        let mut program = vec![insn(BPF_LD_W_ABS, 0, 0, DATA_NR)];
        program.extend(search(&leaves, &numbers));
        assert_eq!(program[2].code, BPF_JA);
        validate(&program).expect("valid");
        for nr in 0..=260 {
            let expected = if nr < 200 { EPERM } else { ALLOW };
            assert_eq!(
                run(&program, AUDIT_ARCH_X86_64, nr, [0; 6]).0,
                expected,
                "{nr}"
            );
        }
    }

    #[test]
    fn validate_rejects_broken_programs() {
        let ret = insn(BPF_RET_K, 0, 0, ALLOW);
        assert!(validate(&[]).is_err());
        assert!(validate(&[insn(BPF_JEQ_K, 0, 1, 0), ret]).is_err());
        assert!(validate(&[insn(BPF_JA, 0, 0, 1), ret]).is_err());
        assert!(validate(&[ret, insn(BPF_LD_W_ABS, 0, 0, 0)]).is_err());
        assert!(validate(&[insn(BPF_LD_W_ABS, 0, 0, DATA_LEN), ret]).is_err());
        assert!(validate(&[insn(0x07, 0, 0, 0), ret]).is_err()); // BPF_MISC|BPF_TAX
        assert!(validate(&vec![ret; MAX_INSNS]).is_err());
        assert!(validate(&[insn(BPF_JEQ_K, 0, 1, 0), ret, ret]).is_ok());
    }

    #[test]
    fn rules_that_do_not_fit_32_bits_are_refused() {
        assert!(checks(When::ArgIs {
            index: 1,
            values: &[1 << 32],
        })
        .is_err());
        assert!(checks(When::AnyFlag {
            index: 0,
            masks: &[0x3],
        })
        .is_err());
        assert!(checks(When::ArgIsNot {
            index: 0,
            values: &[],
        })
        .is_err());
        assert!(leaf(1, &[Op::LoadArg(6)]).is_err());
    }
}
