//! `runbox doctor`: what this host offers (kernel features and isolation backends), what the
//! server will use, and a live check that a sandbox really starts.

use clap::Args;
use runbox_jail::features::{self, HostFeatures};
use runbox_jail::{Policy, Stdin};
use runbox_runtime::Backend;
use runbox_server::config::{Config, EnvOverrides, OnUnavailable};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The server config whose runtime choice to explain [env: RUNBOX_CONFIG]
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Backends {
    /// Each backend: available or why not.
    backends: Vec<BackendStatus>,
    /// Whether hardware virtualisation works (runsc's kvm platform tried for real).
    kvm: Check,
    /// What `runbox serve` with this config would do.
    server: ServerChoice,
}

#[derive(Serialize)]
struct BackendStatus {
    backend: Backend,
    available: bool,
    detail: String,
}

#[derive(Serialize)]
struct Check {
    available: bool,
    detail: String,
}

#[derive(Serialize)]
struct ServerChoice {
    default: Backend,
    on_unavailable: String,
    fallback: Vec<Backend>,
    /// The backend a create without `runbox.runtime` gets on this host (null: none works).
    effective: Option<Backend>,
    /// Why `effective` differs from `default`, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize)]
struct Report {
    host: HostFeatures,
    #[serde(flatten)]
    backends: Backends,
    /// The result of starting `/bin/true` in a default sandbox.
    live_check: LiveCheck,
}

#[derive(Serialize)]
struct LiveCheck {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforcement: Option<runbox_jail::Enforcement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok  "
    } else {
        "MISS"
    }
}

pub fn main(args: DoctorArgs) -> i32 {
    let host = features::detect();
    let policy = crate::run::one_shot(Policy::new(vec!["/bin/true".into()]));
    let live = match runbox_jail::run(&policy, Stdin::Null, &mut runbox_jail::Discard) {
        Ok(o) => LiveCheck {
            ok: o.exit_code == Some(0),
            enforcement: Some(o.enforcement),
            error: None,
        },
        Err(e) => {
            let mut msg = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                msg.push_str(&format!(": {s}"));
            }
            LiveCheck {
                ok: false,
                enforcement: None,
                error: Some(msg),
            }
        }
    };
    let ok = live.ok;
    let backends = backends(&args);
    if args.json {
        let report = Report {
            host,
            backends,
            live_check: live,
        };
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return if ok { 0 } else { 1 };
    }
    let h = &host;
    out!(
        "runbox doctor — kernel {}{}",
        h.kernel,
        if h.running_as_root {
            ", running as root"
        } else {
            ", not root"
        }
    );
    out!(
        "  [{}] user namespaces   {}",
        mark(h.user_namespaces.available),
        h.user_namespaces.detail
    );
    let cg_version = h
        .cgroup_version
        .map_or("none".to_owned(), |v| format!("{v:?}").to_lowercase());
    out!(
        "  [{}] cgroups           {cg_version}: controllers {} ({})",
        mark(h.cgroup.available),
        h.cgroup_controllers.join(","),
        h.cgroup.detail
    );
    out!(
        "  [{}] landlock          ABI {}",
        mark(h.landlock_abi > 0),
        h.landlock_abi
    );
    out!(
        "  [{}] seccomp           {}",
        mark(h.seccomp.available),
        h.seccomp.detail
    );
    out!(
        "  [{}] mount API         {}",
        mark(h.mount_api.available),
        h.mount_api.detail
    );
    out!(
        "  [{}] pidfd             {}",
        mark(h.pidfd.available),
        h.pidfd.detail
    );
    let attach = if h.fast_cgroup_attach.available {
        "ok  "
    } else {
        "SLOW"
    };
    out!(
        "  [{attach}] fast cgroup join  {}",
        h.fast_cgroup_attach.detail
    );
    let parallel = if h.parallel_start.available {
        "ok  "
    } else {
        "SLOW"
    };
    out!(
        "  [{parallel}] parallel start    {}",
        h.parallel_start.detail
    );
    out!("\nisolation backends:");
    for b in &backends.backends {
        out!(
            "  [{}] {:<8} {}",
            mark(b.available),
            b.backend.as_str(),
            b.detail
        );
    }
    out!(
        "  [{}] kvm      {}",
        mark(backends.kvm.available),
        backends.kvm.detail
    );
    let s = &backends.server;
    out!(
        "\n`runbox serve` will isolate sandboxes with: {}",
        match (&s.effective, &s.note) {
            (Some(b), None) => format!("{b} (the configured default)"),
            (Some(b), Some(note)) => format!("{b} ({note})"),
            (None, note) => format!("nothing: {}", note.as_deref().unwrap_or("?")),
        }
    );
    match (&live.enforcement, &live.error) {
        (Some(e), _) => {
            out!("\n`runbox run` will use:");
            out!("  namespaces   {}", e.namespaces.join(", "));
            out!(
                "  identity     uid {} inside, host uid {} ({})",
                e.identity.uid,
                e.identity.host_uid,
                if e.identity.per_sandbox_host_ids {
                    "a distinct unprivileged host id per sandbox"
                } else {
                    "the caller's own uid"
                }
            );
            match &e.cgroup.unavailable {
                None => out!(
                    "  cgroup       {} with {} (memory {}, swap {}, cpus {}, pids {})",
                    cg_version,
                    e.cgroup.controllers.join(","),
                    e.cgroup
                        .memory_bytes
                        .map_or("-".into(), |b| format!("{} MiB", b >> 20)),
                    e.cgroup.swap,
                    e.cgroup.cpus.map_or("-".into(), |c| c.to_string()),
                    e.cgroup.pids.map_or("-".into(), |p| p.to_string())
                ),
                Some(why) => out!("  cgroup       NOT ENFORCED: {why}"),
            }
            out!(
                "  landlock     {:?} (kernel ABI {})",
                e.landlock.status,
                e.landlock.kernel_abi
            );
            out!(
                "  seccomp      filter denying {} syscalls, x32 killed, clone3 -> ENOSYS",
                e.seccomp.denied_syscalls
            );
            out!("  privileges   no_new_privs, all capabilities dropped (bounding set included)");
            out!(
                "  filesystem   {}; workspace: {}",
                e.filesystem.root,
                e.filesystem.workspace
            );
            out!("  network      {}", e.network);
            out!("\nlive check: a sandbox started and ran /bin/true: ok");
            0
        }
        (None, Some(err)) => {
            out!("\nlive check FAILED: {err}");
            1
        }
        (None, None) => 1,
    }
}

/// Checks every backend the server knows, KVM, and what the server's config would pick.
fn backends(args: &DoctorArgs) -> Backends {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let file = args
        .config
        .clone()
        .or_else(|| env("RUNBOX_CONFIG").map(Into::into));
    let overrides = EnvOverrides {
        runtime: env("RUNBOX_RUNTIME"),
        ..Default::default()
    };
    let config = Config::load(file.as_deref(), &overrides).unwrap_or_default();
    let statuses: Vec<BackendStatus> = match (
        runbox_runtime::installed_agent(),
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    ) {
        (Ok(agent), Ok(rt)) => {
            let owner = runbox_server::owner_of(&config.data_dir);
            let runtimes = runbox_server::runtimes(agent, &owner).unwrap_or_default();
            Backend::ALL
                .iter()
                .map(|b| {
                    let found = runtimes.iter().find(|r| r.backend() == *b);
                    let status = match found {
                        Some(r) => rt.block_on(r.check()),
                        None => Err("not built into this runbox".into()),
                    };
                    BackendStatus {
                        backend: *b,
                        available: status.is_ok(),
                        detail: status.unwrap_or_else(|e| e),
                    }
                })
                .collect()
        }
        (Err(e), _) | (_, Err(e)) => Backend::ALL
            .iter()
            .map(|b| BackendStatus {
                backend: *b,
                available: false,
                detail: format!("cannot check: {e}"),
            })
            .collect(),
    };
    let works = |b: Backend| statuses.iter().any(|s| s.backend == b && s.available);
    let r = &config.runtime;
    let (effective, note) = if works(r.default) {
        (Some(r.default), None)
    } else if r.on_unavailable == OnUnavailable::Fallback {
        match r.fallback.iter().copied().find(|b| works(*b)) {
            Some(b) => (
                Some(b),
                Some(format!(
                    "the default {} is unavailable; runtime.on_unavailable = fallback",
                    r.default
                )),
            ),
            None => (
                None,
                Some(format!(
                    "{} is unavailable and so is every fallback",
                    r.default
                )),
            ),
        }
    } else {
        (
            None,
            Some(format!(
                "{} is unavailable and runtime.on_unavailable is strict",
                r.default
            )),
        )
    };
    Backends {
        kvm: kvm(),
        server: ServerChoice {
            default: r.default,
            on_unavailable: format!("{:?}", r.on_unavailable).to_lowercase(),
            fallback: r.fallback.clone(),
            effective,
            note,
        },
        backends: statuses,
    }
}

/// Whether KVM can run guests here. /dev/kvm existing is not enough (nested virtualisation
/// may be off), so when runsc is installed its kvm platform is tried for real.
fn kvm() -> Check {
    let cpu_flags = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.split_whitespace().any(|w| w == "vmx" || w == "svm"))
        .unwrap_or(false);
    if !std::path::Path::new("/dev/kvm").exists() {
        return Check {
            available: false,
            detail: "no /dev/kvm".into(),
        };
    }
    let tried = std::process::Command::new("timeout")
        .args([
            "10",
            "runsc",
            "--platform=kvm",
            "--network=none",
            "do",
            "/bin/true",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match tried {
        Ok(s) if s.success() => Check {
            available: true,
            detail: "/dev/kvm works (runsc --platform=kvm ran a command)".into(),
        },
        Ok(_) => Check {
            available: false,
            detail: format!(
                "/dev/kvm exists but runsc's kvm platform cannot run a guest (cpu virtualisation flags {}); gvisor uses ptrace",
                if cpu_flags { "present" } else { "absent" }
            ),
        },
        Err(_) => Check {
            available: false,
            detail: format!(
                "/dev/kvm exists, not tried (no runsc); cpu virtualisation flags {}",
                if cpu_flags { "present" } else { "absent" }
            ),
        },
    }
}
