//! What the caller asks for: a `Policy` is plain data with sane defaults. Nothing here touches
//! the host; `Plan::prepare` turns a policy into concrete steps.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything that decides how one command is confined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Program and arguments. A name without `/` is looked up in the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// Extra environment (`K=V`), on top of a clean default environment.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub filesystem: Filesystem,
    pub network: Network,
    /// Uid and gid the command sees inside (never 0).
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub landlock: Requirement,
    /// Whether the sandbox can be paused (`Control::pause`). On cgroup v1 that costs a group
    /// in the freezer hierarchy; a one-shot `runbox run` has no way to pause and skips it.
    #[serde(default = "yes")]
    pub pausable: bool,
}

fn yes() -> bool {
    true
}

/// Resource limits. `None` means "not limited"; each `Some` that the host cannot enforce is an
/// error, unless it is a default (see `Limits::explicit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Memory including swap, in bytes (swap is off for the sandbox).
    pub memory_bytes: Option<u64>,
    /// CPU quota in cores (0.5 = half a core).
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// Wall-clock time for the whole sandbox.
    pub timeout: Option<Duration>,
    /// Bytes of each output stream kept; the rest is discarded and marked truncated.
    pub output_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE: the largest file the command may write.
    pub file_size_bytes: u64,
    /// Size caps of the tmpfs mounts (/tmp, /dev/shm, and the fresh workspace).
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub workspace_bytes: u64,
    /// Names of the limits the caller set explicitly; only those are hard errors when the host
    /// cannot enforce them (defaults degrade and are reported).
    pub explicit: Vec<String>,
    /// When the memory or pids limit fires, kill every process of the sandbox (one-shot
    /// runs). Off for long-lived sandboxes whose PID 1 is the agent: the kernel's OOM killer
    /// and the failing fork hit only the offending code, and the agent reports it.
    pub kill_all_on_limit: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: Some(512 << 20),
            cpus: Some(1.0),
            pids: Some(256),
            timeout: Some(Duration::from_secs(60)),
            output_bytes: 1 << 20,
            open_files: 1024,
            file_size_bytes: 1 << 30,
            tmp_bytes: 64 << 20,
            shm_bytes: 64 << 20,
            workspace_bytes: 256 << 20,
            explicit: Vec::new(),
            kill_all_on_limit: true,
        }
    }
}

impl Limits {
    pub fn is_explicit(&self, name: &str) -> bool {
        self.explicit.iter().any(|n| n == name)
    }
}

/// Where the command's files come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filesystem {
    /// An unpacked image to use as the read-only root instead of the host's /usr.
    pub rootfs: Option<PathBuf>,
    /// Host directory mounted read-write at /workspace; `None` = a fresh size-capped tmpfs.
    pub workspace: Option<PathBuf>,
    /// Extra host paths (files or directories).
    pub binds: Vec<Bind>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub writable: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A private network namespace with only its own loopback.
    #[default]
    None,
}

/// How strictly an optional kernel layer is required.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Use it if the kernel offers it, report honestly when it does not.
    #[default]
    BestEffort,
    /// Fail when the kernel cannot enforce it fully.
    Required,
    Off,
}

/// Inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
pub const DEFAULT_UID: u32 = 1000;
pub const DEFAULT_GID: u32 = 1000;
pub const DEFAULT_HOSTNAME: &str = "runbox";

impl Policy {
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            env: Vec::new(),
            limits: Limits::default(),
            filesystem: Filesystem::default(),
            network: Network::None,
            uid: DEFAULT_UID,
            gid: DEFAULT_GID,
            hostname: DEFAULT_HOSTNAME.to_owned(),
            landlock: Requirement::BestEffort,
            pausable: true,
        }
    }
}

/// Splits `1.5G` into (1.5, "G"); None when there is no leading number.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `64M`, `1G`, `512k`, `1.5G`, `4096` (bytes; binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a size (examples: 4096, 512K, 64M, 1G)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M, G or T)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration (examples: 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 365.0 * 86400.0 {
        return Err(format!("duration `{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("64X").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
