//! What a run produced and what was really enforced while it ran.

use serde::Serialize;

use crate::cgroup::Version;
use crate::landlock::LandlockOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    ExitNonzero,
    Timeout,
    Oom,
    Signaled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitHit {
    Memory,
    Pids,
    Timeout,
    Output,
    FileSize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sandbox_id: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub limits_hit: Vec<LimitHit>,
    pub wall_ms: f64,
    pub cpu_user_ms: f64,
    pub cpu_sys_ms: f64,
    pub peak_memory_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub enforcement: Enforcement,
}

impl Outcome {
    /// The conventional shell exit code: the command's, or 128 + signal.
    pub fn shell_exit_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        }
    }
}

/// Which layers were applied, as the kernel reported them.
#[derive(Debug, Clone, Serialize)]
pub struct Enforcement {
    pub namespaces: Vec<&'static str>,
    pub identity: Identity,
    pub cgroup: CgroupEnforcement,
    pub landlock: LandlockEnforcement,
    pub seccomp: SeccompEnforcement,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
    pub rlimits: Rlimits,
    pub filesystem: FilesystemEnforcement,
    pub network: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// Whether each sandbox gets its own unprivileged host ids (started as root).
    pub per_sandbox_host_ids: bool,
    pub host_uid: u32,
    pub host_gid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupEnforcement {
    pub version: Option<Version>,
    pub controllers: Vec<String>,
    pub memory_bytes: Option<u64>,
    pub swap: &'static str,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Whether the sandbox can be paused (its cgroup has a freezer).
    pub freezer: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LandlockEnforcement {
    pub kernel_abi: i32,
    pub status: LandlockOutcome,
    pub writable: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeccompEnforcement {
    pub mode: &'static str,
    pub denied_syscalls: usize,
    pub x32: &'static str,
    pub clone3: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rlimits {
    pub core: u64,
    pub nofile: u64,
    pub fsize: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemEnforcement {
    pub root: String,
    pub workspace: String,
    pub idmapped_binds: bool,
    pub tmp_bytes: u64,
}
