//! The jail's seccomp table (`runbox_jail::seccomp::table`) as an OCI / Docker seccomp
//! profile, so containers and gVisor sandboxes deny the same syscalls as native sandboxes.
//!
//! Why not the engine's default profile: Docker 20.10's default allows ptrace (kernels >= 4.8),
//! io_uring and modify_ldt, which the jail denies (the escape suite found them). The profile
//! here allows by default and denies the table, as the jail does; the other layers of each
//! backend (no capabilities, no-new-privileges, read-only root, namespaces) confine the rest.
//!
//! One difference from the compiled BPF: libseccomp takes one comparison per argument in a
//! rule, so "personality is neither 0 nor 0xffffffff" cannot be written; instead the
//! personalities that matter are denied by value (32-bit emulation, ASLR off, READ_IMPLIES_EXEC
//! and their combinations).

use runbox_jail::seccomp::{table, When};
use serde_json::{json, Value};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Personality values denied by exact match (see the module docs).
const PERSONALITIES_DENIED: &[u64] = &[
    0x0008,    // PER_LINUX32
    0x0040000, // ADDR_NO_RANDOMIZE
    0x0040008, // both
    0x0400000, // READ_IMPLIES_EXEC
    0x0400008, // READ_IMPLIES_EXEC | PER_LINUX32
    0x0440000, // READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE
    0x0440008, // all three
    0x8000000, // MMAP_PAGE_ZERO
];

fn deny(name: &str, errno: u32, args: Vec<Value>) -> Value {
    let mut rule = json!({ "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno });
    if !args.is_empty() {
        rule["args"] = Value::Array(args);
    }
    rule
}

fn arg(index: u8, op: &str, value: u64, value_two: u64) -> Value {
    json!({ "index": index, "value": value, "valueTwo": value_two, "op": op })
}

/// The profile: JSON for Docker's `SecurityOpt: ["seccomp=<json>"]` and the OCI spec's
/// `linux.seccomp`.
pub fn profile() -> Value {
    let mut rules = Vec::new();
    for entry in table() {
        let name = entry.name;
        match entry.when {
            When::Always => rules.push(deny(name, EPERM, Vec::new())),
            // A rule's comparisons are ANDed, rules are ORed: one rule per flag.
            When::AnyFlag { index, masks } => {
                for &mask in masks {
                    rules.push(deny(
                        name,
                        EPERM,
                        vec![arg(index, "SCMP_CMP_MASKED_EQ", mask, mask)],
                    ));
                }
            }
            // Compared on the low 32 bits, as the jail's BPF does (ioctl requests).
            When::ArgIs { index, values } => {
                for &value in values {
                    rules.push(deny(
                        name,
                        EPERM,
                        vec![arg(index, "SCMP_CMP_MASKED_EQ", 0xffff_ffff, value)],
                    ));
                }
            }
            When::ArgIsNot { index, .. } => {
                for &value in PERSONALITIES_DENIED {
                    rules.push(deny(name, EPERM, vec![arg(index, "SCMP_CMP_EQ", value, 0)]));
                }
            }
            When::RawOrPacketSocket => {
                rules.push(deny(
                    name,
                    EPERM,
                    vec![arg(0, "SCMP_CMP_EQ", libc::AF_PACKET as u64, 0)],
                ));
                for family in [libc::AF_INET, libc::AF_INET6] {
                    // The type may carry SOCK_NONBLOCK / SOCK_CLOEXEC: compare its low bits.
                    rules.push(deny(
                        name,
                        EPERM,
                        vec![
                            arg(0, "SCMP_CMP_EQ", family as u64, 0),
                            arg(1, "SCMP_CMP_MASKED_EQ", 0xf, libc::SOCK_RAW as u64),
                        ],
                    ));
                }
            }
        }
    }
    // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS makes glibc fall back
    // to clone(2), whose flags the rules above check (as in the jail).
    rules.push(deny("clone3", ENOSYS, Vec::new()));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        // Only the native ABI: i386 and x32 syscalls (another way around a deny-list) are
        // refused by libseccomp's bad-architecture action (kill).
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_denied_and_clone3_gets_enosys() {
        let p = profile();
        let rules = p["syscalls"].as_array().expect("rules");
        for entry in table() {
            assert!(
                rules.iter().any(|r| r["names"][0] == entry.name),
                "{} missing",
                entry.name
            );
        }
        let clone3 = rules
            .iter()
            .find(|r| r["names"][0] == "clone3")
            .expect("clone3");
        assert_eq!(clone3["errnoRet"], ENOSYS);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        // Every rule compares each argument at most once (libseccomp refuses more).
        for r in rules {
            let mut seen = std::collections::HashSet::new();
            for a in r["args"].as_array().into_iter().flatten() {
                assert!(seen.insert(a["index"].as_u64()), "{r}");
            }
        }
    }
}
