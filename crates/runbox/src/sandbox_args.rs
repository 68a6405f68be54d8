//! The sandbox options shared by `runbox run` and `runbox exec`: limits, mounts, identity.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use runbox_jail::{Bind, Network, Policy, Requirement};

/// Limits and filesystem options shared by every command that starts a sandbox.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Memory limit incl. swap (swap is off): 64M, 1G, bytes. [default: 512M]
    #[arg(long, value_parser = runbox_jail::parse_size)]
    memory: Option<u64>,
    /// CPU quota in cores, e.g. 0.5. [default: 1]
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Maximum number of processes and threads. [default: 256]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pids: Option<u64>,
    /// Wall-clock limit for the whole sandbox: 500ms, 2s, 1m. [default: 60s]
    #[arg(long, value_parser = runbox_jail::parse_duration)]
    timeout: Option<Duration>,
    /// Network access. Only `none` (a private loopback) exists so far.
    #[arg(long, value_enum, default_value = "none")]
    network: NetworkArg,
    /// Host directory mounted read-write at /workspace (default: a fresh tmpfs).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Size of the fresh tmpfs workspace. [default: 256M]
    #[arg(long, value_parser = runbox_jail::parse_size)]
    workspace_size: Option<u64>,
    /// Bind a host file or directory read-only: HOSTPATH[:DEST] (DEST defaults to HOSTPATH).
    #[arg(long = "ro", value_name = "HOSTPATH[:DEST]", value_parser = parse_bind_ro)]
    ro: Vec<Bind>,
    /// Bind a host file or directory read-write: HOSTPATH[:DEST].
    #[arg(long = "rw", value_name = "HOSTPATH[:DEST]", value_parser = parse_bind_rw)]
    rw: Vec<Bind>,
    /// Set an environment variable inside (repeatable); the environment is otherwise clean.
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// An unpacked image to use as the read-only root instead of the host's /usr.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Bytes kept of each output stream; the rest is dropped and marked truncated. [default: 1048576]
    #[arg(long, value_parser = runbox_jail::parse_size)]
    output_limit: Option<u64>,
    /// Size cap of /tmp. [default: 64M]
    #[arg(long, value_parser = runbox_jail::parse_size)]
    tmp_size: Option<u64>,
    /// Largest file the command may write (RLIMIT_FSIZE). [default: 1G]
    #[arg(long, value_parser = runbox_jail::parse_size)]
    file_size: Option<u64>,
    /// Uid and gid of the user inside (not 0).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    uid: u32,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    gid: u32,
    /// Landlock: use when available (best-effort), insist (required), or skip (off).
    #[arg(long, value_enum, default_value = "best-effort")]
    landlock: LandlockArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetworkArg {
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LandlockArg {
    BestEffort,
    Required,
    Off,
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of cores (e.g. 0.5, 2)"))?;
    if !(0.01..=1024.0).contains(&v) {
        return Err(format!("cpus must be between 0.01 and 1024, not {s}"));
    }
    Ok(v)
}

fn parse_bind(s: &str, writable: bool) -> Result<Bind, String> {
    let (source, dest) = match s.split_once(':') {
        Some((src, dst)) => (src, dst),
        None => (s, s),
    };
    if source.is_empty() || dest.is_empty() {
        return Err(format!("`{s}` is not HOSTPATH[:DEST]"));
    }
    if !dest.starts_with('/') {
        return Err(format!("destination `{dest}` must be an absolute path"));
    }
    Ok(Bind {
        source: source.into(),
        dest: dest.into(),
        writable,
    })
}

fn parse_bind_ro(s: &str) -> Result<Bind, String> {
    parse_bind(s, false)
}

fn parse_bind_rw(s: &str) -> Result<Bind, String> {
    parse_bind(s, true)
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

impl SandboxArgs {
    /// The policy for running `argv` with these options.
    pub fn policy(self, argv: Vec<String>) -> Policy {
        let mut p = Policy::new(argv);
        let l = &mut p.limits;
        let mut explicit = |name: &str, set: bool| {
            if set {
                l.explicit.push(name.to_owned());
            }
        };
        explicit("memory", self.memory.is_some());
        explicit("cpus", self.cpus.is_some());
        explicit("pids", self.pids.is_some());
        if let Some(v) = self.memory {
            l.memory_bytes = Some(v);
        }
        if let Some(v) = self.cpus {
            l.cpus = Some(v);
        }
        if let Some(v) = self.pids {
            l.pids = Some(v);
        }
        if let Some(v) = self.timeout {
            l.timeout = Some(v);
        }
        if let Some(v) = self.output_limit {
            l.output_bytes = v;
        }
        if let Some(v) = self.workspace_size {
            l.workspace_bytes = v;
        }
        if let Some(v) = self.tmp_size {
            l.tmp_bytes = v;
        }
        if let Some(v) = self.file_size {
            l.file_size_bytes = v;
        }
        p.env = self.env;
        p.filesystem.workspace = self.workspace;
        p.filesystem.rootfs = self.rootfs;
        p.filesystem.binds = self.ro.into_iter().chain(self.rw).collect();
        p.network = match self.network {
            NetworkArg::None => Network::None,
        };
        p.uid = self.uid;
        p.gid = self.gid;
        p.landlock = match self.landlock {
            LandlockArg::BestEffort => Requirement::BestEffort,
            LandlockArg::Required => Requirement::Required,
            LandlockArg::Off => Requirement::Off,
        };
        p
    }
}
