//! The finished recipe the child executes: an ordered list of `Step`s, each one syscall-sized,
//! with every path already a `CString` and every host object already an open fd. Building the
//! list is pure (`steps`), so its order and contents are unit-tested without root.

use std::ffi::CString;

/// A detached mount tree prepared by the parent (index into `Prepared::trees`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeId(pub usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Switch to the namespace's root id (privileged mapping), so the jail's own files are
    /// created by an id that exists inside.
    BecomeNamespaceRoot,
    /// Wait until the parent has moved us into the sandbox's cgroup (it creates the group
    /// while we build the filesystem, on the other core).
    AwaitCgroup,
    /// A fresh cgroup namespace, created after the parent moved us into our cgroup, so the
    /// sandbox sees its own group as `/`.
    UnshareCgroupNamespace,
    /// Stop mount events from propagating back to the host.
    MakeMountsPrivate,
    MountTmpfs {
        target: CString,
        options: CString,
        noexec: bool,
    },
    Mkdir {
        path: CString,
        mode: u32,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    WriteFile {
        path: CString,
        contents: Vec<u8>,
        mode: u32,
    },
    /// Clone the mount at host path `source` into detached tree `tree` and flag it (done in
    /// the child, whose own user namespace owns its mount namespace, so this also works
    /// without root; idmapped trees are made by the parent instead).
    OpenTree {
        tree: TreeId,
        source: CString,
        attrs: u64,
        recursive: bool,
    },
    /// Attach a detached mount tree at `target`.
    AttachTree {
        tree: TreeId,
        target: CString,
    },
    MountProc {
        target: CString,
    },
    MountDevpts {
        target: CString,
    },
    /// Bind `source` over `target` (both inside the new root): masks and self-binds.
    BindOver {
        source: CString,
        target: CString,
    },
    /// Make a mount read-only (and nosuid, nodev), recursively.
    MakeReadOnly {
        target: CString,
    },
    SetHostname {
        name: CString,
    },
    /// Start the helper that creates the network namespace (with its loopback up) while the
    /// filesystem is built (see `sys::NetworkHelper`).
    StartNetwork,
    /// Move into the helper's network namespace and end the helper.
    JoinNetwork,
    /// pivot_root into `new_root` and detach the old root.
    PivotRoot {
        new_root: CString,
    },
    /// Remount the (tmpfs) root read-only once everything is in place.
    RootReadOnly,
    Chdir {
        path: CString,
    },
    SetRlimit {
        resource: Rlimit,
        value: u64,
    },
    /// Drop every capability up to `last_cap` from the bounding set.
    DropBoundingSet {
        last_cap: u32,
    },
    /// setgroups([]) (when allowed: an unprivileged caller's map denies setgroups, and its
    /// groups then show as nogroup inside), setresgid, setresuid to the command's ids.
    SwitchUser {
        uid: u32,
        gid: u32,
        clear_groups: bool,
    },
    /// Clear the effective, permitted, inheritable and ambient sets.
    ClearCapabilities,
    /// Set the parent-death signal again (every uid change cleared it) and make sure the
    /// parent did not die before: the sandbox must not outlive runbox.
    RearmParentDeathSignal,
    NoNewPrivs,
    Landlock,
    Seccomp,
    /// Keep the init non-dumpable, so the command cannot read its memory or /proc/1/environ
    /// (which still holds the caller's environment).
    NonDumpable,
    /// Mark every inherited fd above 2 close-on-exec.
    CloseInheritedFds,
}

impl Step {
    /// Short, stable name for error reports.
    pub fn name(&self) -> &'static str {
        match self {
            Step::BecomeNamespaceRoot => "become namespace root",
            Step::AwaitCgroup => "await cgroup",
            Step::UnshareCgroupNamespace => "unshare cgroup namespace",
            Step::MakeMountsPrivate => "make mounts private",
            Step::MountTmpfs { .. } => "mount tmpfs",
            Step::Mkdir { .. } => "mkdir",
            Step::Symlink { .. } => "symlink",
            Step::WriteFile { .. } => "write file",
            Step::OpenTree { .. } => "open bind source",
            Step::AttachTree { .. } => "attach bind mount",
            Step::MountProc { .. } => "mount proc",
            Step::MountDevpts { .. } => "mount devpts",
            Step::BindOver { .. } => "bind over",
            Step::MakeReadOnly { .. } => "make read-only",
            Step::SetHostname { .. } => "set hostname",
            Step::StartNetwork => "start network namespace helper",
            Step::JoinNetwork => "join network namespace",
            Step::PivotRoot { .. } => "pivot_root",
            Step::RootReadOnly => "remount root read-only",
            Step::Chdir { .. } => "chdir",
            Step::SetRlimit { .. } => "setrlimit",
            Step::DropBoundingSet { .. } => "drop bounding set",
            Step::SwitchUser { .. } => "switch user",
            Step::ClearCapabilities => "clear capabilities",
            Step::RearmParentDeathSignal => "re-arm parent death signal",
            Step::NoNewPrivs => "no_new_privs",
            Step::Landlock => "landlock",
            Step::Seccomp => "seccomp",
            Step::NonDumpable => "non-dumpable",
            Step::CloseInheritedFds => "close inherited fds",
        }
    }

    /// The path a step acts on, for error messages.
    pub fn path(&self) -> Option<&CString> {
        match self {
            Step::MountTmpfs { target, .. }
            | Step::AttachTree { target, .. }
            | Step::MountProc { target }
            | Step::MountDevpts { target }
            | Step::BindOver { target, .. }
            | Step::MakeReadOnly { target } => Some(target),
            Step::Mkdir { path, .. } | Step::WriteFile { path, .. } | Step::Chdir { path } => {
                Some(path)
            }
            Step::Symlink { link, .. } => Some(link),
            Step::OpenTree { source, .. } => Some(source),
            Step::PivotRoot { new_root } => Some(new_root),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    Core,
    NoFile,
    FileSize,
}

/// A host path to clone into a detached mount tree, with the attributes to set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSource {
    pub tree: TreeId,
    pub source: String,
    pub attrs: u64,
    pub recursive: bool,
}

/// Where a prepared bind goes and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountpoint {
    pub tree: TreeId,
    /// Absolute path inside the sandbox.
    pub dest: String,
    pub is_dir: bool,
}

/// The shape of the sandbox's filesystem, decided by the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Host paths the child clones into detached trees before anything hides them.
    pub open_trees: Vec<TreeSource>,
    /// Host directory (in the parent's view) on which the new root tmpfs is mounted before
    /// pivot_root. Any existing directory works: the mount stays in our namespace.
    pub staging: String,
    /// Top-level entries of the read-only root: binds and symlinks.
    pub root_binds: Vec<Mountpoint>,
    pub root_symlinks: Vec<(String, String)>,
    /// Generated /etc files (name, contents) and read-only host files bound into /etc.
    pub etc_files: Vec<(String, Vec<u8>)>,
    pub etc_binds: Vec<Mountpoint>,
    /// Device nodes bound from the host (null, zero, ...).
    pub devices: Vec<Mountpoint>,
    /// /proc entries masked with /dev/null (files) or made read-only (directories).
    pub proc_masked_files: Vec<String>,
    pub proc_read_only: Vec<String>,
    /// Host workspace bind, or `None` for a fresh tmpfs of `workspace_bytes`.
    pub workspace: Option<Mountpoint>,
    pub workspace_bytes: u64,
    pub user_binds: Vec<Mountpoint>,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub cwd: String,
}

/// Privilege-related knobs of the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    pub namespace_root_mapped: bool,
    pub last_cap: u32,
    pub open_files: u64,
    pub file_size_bytes: u64,
    pub landlock: bool,
}

fn c(s: &str) -> CString {
    // Paths and names come from validated policy input, which rejects interior NULs.
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// The full recipe, in privilege-drop order (see docs/architecture.md): identity, mounts,
/// pivot_root, limits, capabilities, no_new_privs, landlock, seccomp.
pub fn steps(layout: &Layout, privileges: &Privileges) -> Vec<Step> {
    let root = &layout.staging;
    let at = |p: &str| c(&format!("{root}{p}"));
    let mut s = vec![Step::StartNetwork];
    if privileges.namespace_root_mapped {
        s.push(Step::BecomeNamespaceRoot);
    }
    for t in &layout.open_trees {
        s.push(Step::OpenTree {
            tree: t.tree,
            source: c(&t.source),
            attrs: t.attrs,
            recursive: t.recursive,
        });
    }
    s.push(Step::MakeMountsPrivate);
    s.push(Step::MountTmpfs {
        target: c(root),
        options: c("mode=0755,size=4m,nr_inodes=4096"),
        noexec: false,
    });

    // Read-only system directories and the links between them.
    for m in &layout.root_binds {
        s.push(mountpoint_step(&at(&m.dest), m.is_dir));
        s.push(Step::AttachTree {
            tree: m.tree,
            target: at(&m.dest),
        });
    }
    for (link, target) in &layout.root_symlinks {
        s.push(Step::Symlink {
            target: c(target),
            link: at(link),
        });
    }

    // /etc: generated files, plus a few read-only host files the loader and libc need.
    s.push(Step::Mkdir {
        path: at("/etc"),
        mode: 0o755,
    });
    for (name, contents) in &layout.etc_files {
        s.push(Step::WriteFile {
            path: at(&format!("/etc/{name}")),
            contents: contents.clone(),
            mode: 0o644,
        });
    }
    for m in &layout.etc_binds {
        s.push(mountpoint_step(&at(&m.dest), m.is_dir));
        s.push(Step::AttachTree {
            tree: m.tree,
            target: at(&m.dest),
        });
    }

    // /dev: a small tmpfs with bound device nodes, a private devpts and a capped /dev/shm.
    s.push(Step::Mkdir {
        path: at("/dev"),
        mode: 0o755,
    });
    s.push(Step::MountTmpfs {
        target: at("/dev"),
        options: c("mode=0755,size=64k,nr_inodes=64"),
        noexec: true,
    });
    for m in &layout.devices {
        s.push(mountpoint_step(&at(&m.dest), false));
        s.push(Step::AttachTree {
            tree: m.tree,
            target: at(&m.dest),
        });
    }
    s.push(Step::Mkdir {
        path: at("/dev/pts"),
        mode: 0o755,
    });
    s.push(Step::MountDevpts {
        target: at("/dev/pts"),
    });
    s.push(Step::Symlink {
        target: c("pts/ptmx"),
        link: at("/dev/ptmx"),
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        s.push(Step::Symlink {
            target: c(target),
            link: at(&format!("/dev/{name}")),
        });
    }
    s.push(Step::Mkdir {
        path: at("/dev/shm"),
        mode: 0o1777,
    });
    s.push(Step::MountTmpfs {
        target: at("/dev/shm"),
        options: c(&format!("mode=1777,size={}", layout.shm_bytes)),
        noexec: false,
    });

    // /proc: fresh, for our pid namespace, with the sensitive parts masked.
    s.push(Step::Mkdir {
        path: at("/proc"),
        mode: 0o555,
    });
    s.push(Step::MountProc {
        target: at("/proc"),
    });
    for p in &layout.proc_masked_files {
        s.push(Step::BindOver {
            source: at("/dev/null"),
            target: at(&format!("/proc/{p}")),
        });
    }
    for p in &layout.proc_read_only {
        let target = at(&format!("/proc/{p}"));
        s.push(Step::BindOver {
            source: target.clone(),
            target: target.clone(),
        });
        s.push(Step::MakeReadOnly { target });
    }

    // Writable places: /tmp and the workspace.
    s.push(Step::Mkdir {
        path: at("/tmp"),
        mode: 0o1777,
    });
    s.push(Step::MountTmpfs {
        target: at("/tmp"),
        options: c(&format!("mode=1777,size={}", layout.tmp_bytes)),
        noexec: false,
    });
    s.push(Step::Mkdir {
        path: at(crate::policy::WORKSPACE),
        mode: 0o755,
    });
    match &layout.workspace {
        Some(m) => s.push(Step::AttachTree {
            tree: m.tree,
            target: at(&m.dest),
        }),
        None => s.push(Step::MountTmpfs {
            target: at(crate::policy::WORKSPACE),
            options: c(&format!(
                "mode=0755,size={},uid={},gid={}",
                layout.workspace_bytes, layout.uid, layout.gid
            )),
            noexec: false,
        }),
    }
    for m in &layout.user_binds {
        s.push(mountpoint_step(&at(&m.dest), m.is_dir));
        s.push(Step::AttachTree {
            tree: m.tree,
            target: at(&m.dest),
        });
    }

    s.push(Step::SetHostname {
        name: c(&layout.hostname),
    });
    s.push(Step::PivotRoot { new_root: c(root) });
    s.push(Step::RootReadOnly);
    s.push(Step::Chdir {
        path: c(&layout.cwd),
    });
    s.push(Step::JoinNetwork);
    s.push(Step::AwaitCgroup);
    s.push(Step::UnshareCgroupNamespace);

    s.push(Step::SetRlimit {
        resource: Rlimit::Core,
        value: 0,
    });
    s.push(Step::SetRlimit {
        resource: Rlimit::NoFile,
        value: privileges.open_files,
    });
    s.push(Step::SetRlimit {
        resource: Rlimit::FileSize,
        value: privileges.file_size_bytes,
    });
    s.push(Step::DropBoundingSet {
        last_cap: privileges.last_cap,
    });
    s.push(Step::SwitchUser {
        uid: layout.uid,
        gid: layout.gid,
        clear_groups: privileges.namespace_root_mapped,
    });
    s.push(Step::ClearCapabilities);
    s.push(Step::RearmParentDeathSignal);
    s.push(Step::NoNewPrivs);
    if privileges.landlock {
        s.push(Step::Landlock);
    }
    s.push(Step::Seccomp);
    s.push(Step::NonDumpable);
    s.push(Step::CloseInheritedFds);
    s
}

/// Mount points for binds: a directory, or an empty file for a file bind. Parents are made by
/// `mkdir_parents` in the child.
fn mountpoint_step(path: &CString, is_dir: bool) -> Step {
    if is_dir {
        Step::Mkdir {
            path: path.clone(),
            mode: 0o755,
        }
    } else {
        Step::WriteFile {
            path: path.clone(),
            contents: Vec::new(),
            mode: 0o644,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            open_trees: vec![TreeSource {
                tree: TreeId(0),
                source: "/usr".into(),
                attrs: 1,
                recursive: true,
            }],
            staging: "/tmp".into(),
            root_binds: vec![Mountpoint {
                tree: TreeId(0),
                dest: "/usr".into(),
                is_dir: true,
            }],
            root_symlinks: vec![("/bin".into(), "usr/bin".into())],
            etc_files: vec![("hostname".into(), b"runbox\n".to_vec())],
            etc_binds: vec![],
            devices: vec![Mountpoint {
                tree: TreeId(1),
                dest: "/dev/null".into(),
                is_dir: false,
            }],
            proc_masked_files: vec!["kcore".into()],
            proc_read_only: vec!["sys".into()],
            workspace: None,
            workspace_bytes: 1 << 20,
            user_binds: vec![],
            tmp_bytes: 1 << 20,
            shm_bytes: 1 << 20,
            uid: 1000,
            gid: 1000,
            hostname: "runbox".into(),
            cwd: "/workspace".into(),
        }
    }

    fn privileges() -> Privileges {
        Privileges {
            namespace_root_mapped: true,
            last_cap: 40,
            open_files: 1024,
            file_size_bytes: 1 << 30,
            landlock: true,
        }
    }

    fn position(steps: &[Step], name: &str) -> usize {
        steps
            .iter()
            .position(|s| s.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn confinement_happens_in_privilege_drop_order() {
        let s = steps(&layout(), &privileges());
        let order = [
            "start network namespace helper",
            "become namespace root",
            "open bind source",
            "make mounts private",
            "mount proc",
            "pivot_root",
            "remount root read-only",
            "join network namespace",
            "await cgroup",
            "unshare cgroup namespace",
            "setrlimit",
            "drop bounding set",
            "switch user",
            "clear capabilities",
            "re-arm parent death signal",
            "no_new_privs",
            "landlock",
            "seccomp",
            "close inherited fds",
        ];
        let positions: Vec<usize> = order.iter().map(|n| position(&s, n)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{order:?} at {positions:?}"
        );
    }

    #[test]
    fn every_mount_happens_before_pivot_root() {
        let s = steps(&layout(), &privileges());
        let pivot = position(&s, "pivot_root");
        for (i, step) in s.iter().enumerate() {
            if matches!(
                step,
                Step::MountTmpfs { .. }
                    | Step::AttachTree { .. }
                    | Step::MountProc { .. }
                    | Step::BindOver { .. }
            ) {
                assert!(i < pivot, "{} after pivot_root", step.name());
            }
        }
    }

    #[test]
    fn sensitive_proc_entries_are_masked_and_sys_is_read_only() {
        let s = steps(&layout(), &privileges());
        assert!(s.contains(&Step::BindOver {
            source: c("/tmp/dev/null"),
            target: c("/tmp/proc/kcore")
        }));
        assert!(s.contains(&Step::MakeReadOnly {
            target: c("/tmp/proc/sys")
        }));
        let proc = position(&s, "mount proc");
        let dev_null = s.iter().position(|x| matches!(x, Step::AttachTree { target, .. } if target.as_bytes() == b"/tmp/dev/null")).expect("dev null");
        assert!(
            dev_null < proc,
            "/dev/null must exist before it masks /proc"
        );
    }

    #[test]
    fn fresh_workspace_is_a_tmpfs_owned_by_the_user() {
        let s = steps(&layout(), &privileges());
        assert!(s.iter().any(|x| matches!(x, Step::MountTmpfs { target, options, .. }
            if target.as_bytes() == b"/tmp/workspace" && options.to_str().is_ok_and(|o| o.contains("uid=1000")))));
    }

    #[test]
    fn unprivileged_plan_skips_namespace_root_and_landlock_off_skips_landlock() {
        let mut p = privileges();
        p.namespace_root_mapped = false;
        p.landlock = false;
        let s = steps(&layout(), &p);
        assert!(!s
            .iter()
            .any(|x| x.name() == "become namespace root" || x.name() == "landlock"));
    }
}
