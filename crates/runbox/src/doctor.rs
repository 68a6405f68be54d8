//! `runbox doctor`: what this host offers, and a live check that a sandbox really starts.

use clap::Args;
use runbox_jail::features::{self, HostFeatures};
use runbox_jail::{Policy, Stdin};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    host: HostFeatures,
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
    let live = match runbox_jail::run(
        &Policy::new(vec!["/bin/true".into()]),
        Stdin::Null,
        &mut runbox_jail::Discard,
    ) {
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
    if args.json {
        let report = Report {
            host,
            live_check: live,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return if ok { 0 } else { 1 };
    }
    let h = &host;
    println!(
        "runbox doctor — kernel {}{}",
        h.kernel,
        if h.running_as_root {
            ", running as root"
        } else {
            ", not root"
        }
    );
    println!(
        "  [{}] user namespaces   {}",
        mark(h.user_namespaces.available),
        h.user_namespaces.detail
    );
    let cg_version = h
        .cgroup_version
        .map_or("none".to_owned(), |v| format!("{v:?}").to_lowercase());
    println!(
        "  [{}] cgroups           {cg_version}: controllers {} ({})",
        mark(h.cgroup.available),
        h.cgroup_controllers.join(","),
        h.cgroup.detail
    );
    println!(
        "  [{}] landlock          ABI {}",
        mark(h.landlock_abi > 0),
        h.landlock_abi
    );
    println!(
        "  [{}] seccomp           {}",
        mark(h.seccomp.available),
        h.seccomp.detail
    );
    println!(
        "  [{}] mount API         {}",
        mark(h.mount_api.available),
        h.mount_api.detail
    );
    println!(
        "  [{}] pidfd             {}",
        mark(h.pidfd.available),
        h.pidfd.detail
    );
    let attach = if h.fast_cgroup_attach.available {
        "ok  "
    } else {
        "SLOW"
    };
    println!(
        "  [{attach}] fast cgroup join  {}",
        h.fast_cgroup_attach.detail
    );
    match (&live.enforcement, &live.error) {
        (Some(e), _) => {
            println!("\n`runbox run` will use:");
            println!("  namespaces   {}", e.namespaces.join(", "));
            println!(
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
                None => println!(
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
                Some(why) => println!("  cgroup       NOT ENFORCED: {why}"),
            }
            println!(
                "  landlock     {:?} (kernel ABI {})",
                e.landlock.status, e.landlock.kernel_abi
            );
            println!(
                "  seccomp      filter denying {} syscalls, x32 killed, clone3 -> ENOSYS",
                e.seccomp.denied_syscalls
            );
            println!(
                "  privileges   no_new_privs, all capabilities dropped (bounding set included)"
            );
            println!(
                "  filesystem   {}; workspace: {}",
                e.filesystem.root, e.filesystem.workspace
            );
            println!("  network      {}", e.network);
            println!("\nlive check: a sandbox started and ran /bin/true: ok");
            0
        }
        (None, Some(err)) => {
            println!("\nlive check FAILED: {err}");
            1
        }
        (None, None) => 1,
    }
}
