//! Before fork: validate the policy, resolve every host path to an open fd (detached mount
//! trees, already flagged read-only / nosuid / nodev / idmapped), compile seccomp, and build
//! the exact argv/envp. The child then only executes `Prepared::steps`.

use std::cell::Cell;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::mount::{open_tree, OpenTreeFlags};

use crate::error::JailError;
use crate::ids::HostIds;
use crate::landlock::{LandlockConfig, LandlockOutcome, Ruleset};
use crate::plan::{self, Layout, Mountpoint, Privileges, Step, TreeId};
use crate::policy::{Policy, Requirement, WORKSPACE};
use crate::sys;

/// Where the new root is assembled (in our private mount namespace only).
const STAGING: &str = "/tmp";
const ROOT_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Host /etc entries the dynamic loader, libc, Python and matplotlib read; nothing secret.
/// Each costs a bind, so the list stays short.
const ETC_FROM_ROOT: &[&str] = &[
    "ld.so.cache",
    "alternatives",
    "localtime",
    "ssl",
    "ca-certificates",
    "mime.types",
    "python3",
    "python3.11",
    "matplotlibrc",
    "fonts",
];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "kallsyms",
    "timer_list",
    "sched_debug",
    "sysrq-trigger",
    "latency_stats",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
    "config.gz",
    "vmallocinfo",
    "pagetypeinfo",
    "slabinfo",
];
const PROC_READ_ONLY: &[&str] = &[
    "sys", "bus", "fs", "irq", "acpi", "scsi", "asound", "driver",
];
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The argv/envp of the command, with the pointer arrays execve needs, built before fork.
#[derive(Debug)]
pub(crate) struct Exec {
    pub candidates: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub envp_ptrs: Vec<*const libc::c_char>,
}

#[derive(Debug)]
pub(crate) struct Prepared {
    pub steps: Vec<Step>,
    /// Trees made by the parent (idmapped binds); the child fills in the rest.
    pub _parent_trees: Vec<OwnedFd>,
    /// The fd of each tree in the child, by `TreeId` (preallocated: the child does not
    /// allocate to record them).
    pub tree_fds: Vec<Cell<i32>>,
    pub seccomp: crate::seccomp::Program,
    /// The finished landlock ruleset for this kernel's ABI (the child only makes syscalls).
    pub landlock: Ruleset,
    /// The writable paths of the ruleset, for the report.
    pub landlock_writable: Vec<String>,
    pub landlock_outcome: Cell<LandlockOutcome>,
    pub exec: Exec,
    pub idmapped_binds: bool,
    /// Our own argv and environment blocks ([start, end) addresses), which the child's init
    /// scrubs so the sandbox cannot read runbox's command line via /proc/1/cmdline.
    pub inherited_blocks: [(usize, usize); 2],
    /// Raw fds (in the child) to place at 3, 4, ... for the command.
    pub pass_fds: Vec<i32>,
    /// Every fd >= 3 the child needs (pipes, passed fds, parent-made trees), sorted; the
    /// child closes all others first thing.
    pub inherited_fds: Vec<i32>,
    /// Exec the command as PID 1 (no jail init).
    pub as_pid1: bool,
}

/// Reads arg_start, arg_end, env_start, env_end (fields 48..51) of /proc/self/stat.
fn own_arg_and_env_blocks() -> [(usize, usize); 2] {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<usize> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // `after` starts at field 3, so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    [(field(48), field(49)), (field(50), field(51))]
}

fn to_c(s: &str) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| {
        JailError::InvalidPolicy(format!("`{}` contains a NUL byte", s.escape_debug()))
    })
}

/// A detached copy of the mount at `source`, with `attrs` set on it (and its submounts when
/// `recursive`), optionally idmapped through `userns`.
fn tree(
    source: &Path,
    attrs: u64,
    recursive: bool,
    userns: Option<&OwnedFd>,
) -> Result<OwnedFd, JailError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let fd = open_tree(rustix::fs::CWD, source, flags).map_err(|e| JailError::Bind {
        path: source.to_owned(),
        source: e.into(),
    })?;
    let mut all = attrs;
    if userns.is_some() {
        all |= sys::MOUNT_ATTR_IDMAP;
    }
    sys::mount_setattr(
        Some(fd.as_fd()),
        c"",
        recursive && userns.is_none(),
        all,
        userns.map(|u| u.as_fd()),
    )
    .map_err(|source_err| JailError::Bind {
        path: source.to_owned(),
        source: source_err,
    })?;
    Ok(fd)
}

const RO: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
const RW: u64 = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// Validates a destination inside the sandbox: absolute, normal components only, and not on
/// top of what the jail itself provides.
fn check_dest(dest: &Path) -> Result<String, JailError> {
    let text = dest
        .to_str()
        .ok_or_else(|| JailError::InvalidPolicy(format!("{} is not UTF-8", dest.display())))?;
    let ok = dest.is_absolute()
        && dest
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && dest.components().count() > 1;
    let reserved = ["/proc", "/dev", "/etc", "/tmp"]
        .iter()
        .any(|r| dest.starts_with(r))
        || dest == Path::new(WORKSPACE);
    if !ok || reserved {
        return Err(JailError::InvalidPolicy(format!(
            "mount destination `{text}` must be an absolute path without `..`, not /, and not on /proc, /dev, /etc, /tmp or {WORKSPACE} itself"
        )));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf, JailError> {
    fs::canonicalize(path).map_err(|source| JailError::HostPath {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    })
}

struct Builder<'a> {
    trees: Vec<Option<OwnedFd>>,
    sources: Vec<plan::TreeSource>,
    ids: &'a HostIds,
    idmaps: Vec<((u32, u32), OwnedFd)>,
}

impl Builder<'_> {
    fn add(&mut self, fd: OwnedFd) -> TreeId {
        self.trees.push(Some(fd));
        TreeId(self.trees.len() - 1)
    }

    /// A tree the child clones itself.
    fn open_in_child(&mut self, source: &Path, attrs: u64, recursive: bool) -> TreeId {
        self.trees.push(None);
        let tree = TreeId(self.trees.len() - 1);
        let source = source.to_string_lossy().into_owned();
        self.sources.push(plan::TreeSource {
            tree,
            source,
            attrs,
            recursive,
        });
        tree
    }

    /// An idmapping user namespace that shows files owned by `owner` on disk as owned by the
    /// sandbox's user, so a root-owned (or any) host directory is writable inside and new
    /// files land on disk owned by the directory's owner, not by a sandbox id.
    fn idmap_for(&mut self, owner: (u32, u32)) -> Result<Option<&OwnedFd>, JailError> {
        if !self.ids.privileged {
            return Ok(None);
        }
        if !self.idmaps.iter().any(|(o, _)| *o == owner) {
            let ns = crate::spawn::idmap_namespace(owner, (self.ids.host_uid, self.ids.host_gid))?;
            self.idmaps.push((owner, ns));
        }
        Ok(self
            .idmaps
            .iter()
            .find(|(o, _)| *o == owner)
            .map(|(_, ns)| ns))
    }

    fn writable(&mut self, source: &Path, dest: String) -> Result<Mountpoint, JailError> {
        let meta = fs::metadata(source).map_err(|e| JailError::HostPath {
            what: "bind source".into(),
            path: source.into(),
            source: e,
        })?;
        let userns = self.idmap_for((meta.uid(), meta.gid()))?;
        // Idmapping can be refused by a filesystem that does not support it; fall back to a
        // plain bind then (the report says which).
        let idmapped = match userns {
            Some(ns) => {
                let ns = ns.try_clone().map_err(|e| JailError::Bind {
                    path: source.into(),
                    source: e,
                })?;
                tree(source, RW, false, Some(&ns)).ok()
            }
            None => None,
        };
        let tree = match idmapped {
            Some(fd) => self.add(fd),
            None => self.open_in_child(source, RW, true),
        };
        Ok(Mountpoint {
            tree,
            dest,
            is_dir: meta.is_dir(),
        })
    }

    fn read_only(&mut self, source: &Path, dest: String) -> Result<Mountpoint, JailError> {
        let is_dir = source.is_dir();
        Ok(Mountpoint {
            tree: self.open_in_child(source, RO, true),
            dest,
            is_dir,
        })
    }
}

fn etc_files(policy: &Policy) -> Vec<(String, Vec<u8>)> {
    let mut id = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty());
    let machine_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let (uid, gid, host) = (policy.uid, policy.gid, &policy.hostname);
    vec![
        ("passwd".into(), format!("root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:{uid}:{gid}:sandbox user:{WORKSPACE}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").into_bytes()),
        ("group".into(), format!("root:x:0:\nuser:x:{gid}:\nnogroup:x:65534:\n").into_bytes()),
        ("hosts".into(), format!("127.0.0.1\tlocalhost {host}\n::1\tlocalhost ip6-localhost ip6-loopback\n").into_bytes()),
        ("hostname".into(), format!("{host}\n").into_bytes()),
        ("resolv.conf".into(), b"# runbox: network none, no name servers\n".to_vec()),
        ("machine-id".into(), format!("{machine_id}\n").into_bytes()),
        ("nsswitch.conf".into(), b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec()),
    ]
}

fn build_exec(policy: &Policy) -> Result<Exec, JailError> {
    let program = policy.argv.first().ok_or(JailError::NoCommand)?;
    if program.is_empty() {
        return Err(JailError::NoCommand);
    }
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), WORKSPACE.into()),
        ("USER".into(), "user".into()),
        ("LOGNAME".into(), "user".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOSTNAME".into(), policy.hostname.clone()),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    for (k, v) in &policy.env {
        if k.is_empty() || k.contains('=') {
            return Err(JailError::InvalidPolicy(format!(
                "environment name `{k}` is empty or contains `=`"
            )));
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH.to_owned(), |(_, v)| v.clone());
    let candidates = if program.contains('/') {
        vec![to_c(program)?]
    } else {
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| to_c(&format!("{}/{program}", d.trim_end_matches('/'))))
            .collect::<Result<_, _>>()?
    };
    let argv: Vec<CString> = policy
        .argv
        .iter()
        .map(|a| to_c(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    Ok(Exec {
        candidates,
        argv_ptrs: ptrs(&argv),
        envp_ptrs: ptrs(&envp),
        _argv: argv,
        _envp: envp,
    })
}

pub(crate) fn prepare(policy: &Policy, ids: &HostIds) -> Result<Prepared, JailError> {
    if policy.uid == 0 || policy.gid == 0 {
        return Err(JailError::InvalidPolicy(
            "the sandbox user must not be root (uid/gid 0)".into(),
        ));
    }
    let exec = build_exec(policy)?;
    let mut b = Builder {
        trees: Vec::new(),
        sources: Vec::new(),
        ids,
        idmaps: Vec::new(),
    };

    let root_source = match &policy.filesystem.rootfs {
        Some(dir) => {
            let dir = canonical(dir, "rootfs")?;
            if !dir.join("usr").is_dir() {
                return Err(JailError::InvalidPolicy(format!(
                    "rootfs {} has no usr/ directory; is it an unpacked image?",
                    dir.display()
                )));
            }
            dir
        }
        None => PathBuf::from("/"),
    };
    let mut root_binds = Vec::new();
    let mut root_symlinks = Vec::new();
    for name in ROOT_DIRS {
        let path = root_source.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|e| JailError::HostPath {
                what: "rootfs link".into(),
                path: path.clone(),
                source: e,
            })?;
            root_symlinks.push((format!("/{name}"), target.to_string_lossy().into_owned()));
        } else if meta.is_dir() {
            root_binds.push(b.read_only(&path, format!("/{name}"))?);
        }
    }
    let mut etc_binds = Vec::new();
    for name in ETC_FROM_ROOT {
        let path = root_source.join("etc").join(name);
        if path.exists() {
            etc_binds.push(b.read_only(&path, format!("/etc/{name}"))?);
        }
    }
    let mut devices = Vec::new();
    for name in DEVICES {
        let tree = b.open_in_child(
            &Path::new("/dev").join(name),
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            false,
        );
        devices.push(Mountpoint {
            tree,
            dest: format!("/dev/{name}"),
            is_dir: false,
        });
    }
    let workspace = match &policy.filesystem.workspace {
        Some(dir) => {
            let dir = canonical(dir, "workspace")?;
            if !dir.is_dir() {
                return Err(JailError::InvalidPolicy(format!(
                    "workspace {} is not a directory",
                    dir.display()
                )));
            }
            Some(b.writable(&dir, WORKSPACE.to_owned())?)
        }
        None => None,
    };
    let mut user_binds = Vec::new();
    let mut writable = vec![to_c(WORKSPACE)?, to_c("/tmp")?, to_c("/dev/shm")?];
    for bind in &policy.filesystem.binds {
        let source = canonical(&bind.source, "bind source")?;
        let dest = check_dest(&bind.dest)?;
        if bind.writable {
            writable.push(to_c(&dest)?);
            user_binds.push(b.writable(&source, dest)?);
        } else {
            user_binds.push(b.read_only(&source, dest)?);
        }
    }
    let idmapped_binds = b.trees.iter().any(Option::is_some);

    let cwd = WORKSPACE.to_owned();
    let layout = Layout {
        open_trees: std::mem::take(&mut b.sources),
        staging: STAGING.into(),
        root_binds,
        root_symlinks,
        etc_files: etc_files(policy),
        etc_binds,
        devices,
        proc_masked_files: PROC_MASKED_FILES.iter().map(|s| s.to_string()).collect(),
        proc_read_only: PROC_READ_ONLY.iter().map(|s| s.to_string()).collect(),
        workspace,
        workspace_bytes: policy.limits.workspace_bytes,
        user_binds,
        tmp_bytes: policy.limits.tmp_bytes,
        shm_bytes: policy.limits.shm_bytes,
        uid: policy.uid,
        gid: policy.gid,
        hostname: policy.hostname.clone(),
        cwd,
    };
    let landlock_on = policy.landlock != Requirement::Off;
    let privileges = Privileges {
        namespace_root_mapped: ids.root_host_id.is_some(),
        last_cap: last_capability(),
        open_files: policy.limits.open_files,
        file_size_bytes: policy.limits.file_size_bytes,
        landlock: landlock_on,
    };
    let steps = plan::steps(&layout, &privileges);
    let seccomp = crate::seccomp::compile().map_err(JailError::Seccomp)?;
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/tty",
        "/dev/pts",
        "/dev/random",
        "/dev/urandom",
    ]
    .iter()
    .map(|d| to_c(d))
    .collect::<Result<_, _>>()?;
    Ok(Prepared {
        steps,
        tree_fds: b
            .trees
            .iter()
            .map(|t| Cell::new(t.as_ref().map_or(-1, |fd| fd.as_raw_fd())))
            .collect(),
        _parent_trees: b.trees.into_iter().flatten().collect(),
        seccomp,
        landlock_writable: writable
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect(),
        landlock: Ruleset::for_abi(
            &LandlockConfig {
                writable,
                devices,
                required: policy.landlock == Requirement::Required,
            },
            crate::landlock::kernel_abi(),
        ),
        landlock_outcome: Cell::new(LandlockOutcome::NotApplied),
        exec,
        idmapped_binds,
        inherited_blocks: own_arg_and_env_blocks(),
        pass_fds: Vec::new(),
        inherited_fds: Vec::new(),
        as_pid1: false,
    })
}

/// The highest capability number of the running kernel.
pub fn last_capability() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_blocks_are_found() {
        let [(arg_start, arg_end), (env_start, env_end)] = own_arg_and_env_blocks();
        assert!(arg_start > 0 && arg_end > arg_start);
        assert!(env_start >= arg_end && env_end >= env_start);
    }

    #[test]
    fn destinations_must_be_absolute_and_clean() {
        assert_eq!(
            check_dest(Path::new("/data")).ok().as_deref(),
            Some("/data")
        );
        assert_eq!(
            check_dest(Path::new("/opt/probe/x")).ok().as_deref(),
            Some("/opt/probe/x")
        );
        for bad in [
            "data",
            "/",
            "/a/../etc",
            "/proc/x",
            "/dev/sda",
            "/etc/passwd",
            "/tmp/x",
            "/workspace",
        ] {
            assert!(check_dest(Path::new(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn exec_searches_path_and_builds_a_clean_environment() {
        let mut p = Policy::new(vec!["python3".into(), "-c".into(), "1".into()]);
        p.env.push(("FOO".into(), "bar".into()));
        p.env.push(("PATH".into(), "/opt/bin:/usr/bin".into()));
        let e = build_exec(&p).expect("builds");
        assert_eq!(
            e.candidates,
            vec![
                to_c("/opt/bin/python3").expect("c"),
                to_c("/usr/bin/python3").expect("c")
            ]
        );
        let env: Vec<&str> = e._envp.iter().map(|c| c.to_str().expect("utf8")).collect();
        assert!(env.contains(&"FOO=bar"));
        assert!(env.contains(&"HOME=/workspace"));
        assert_eq!(env.iter().filter(|v| v.starts_with("PATH=")).count(), 1);
        assert_eq!(e.argv_ptrs.len(), 4);
        assert!(e.envp_ptrs.last().is_some_and(|p| p.is_null()));
    }

    #[test]
    fn missing_command_is_rejected() {
        assert!(matches!(
            build_exec(&Policy::new(vec![])),
            Err(JailError::NoCommand)
        ));
        assert!(matches!(
            build_exec(&Policy::new(vec![String::new()])),
            Err(JailError::NoCommand)
        ));
    }

    #[test]
    fn generated_etc_has_no_shadow_and_names_the_user() {
        let files = etc_files(&Policy::new(vec!["x".into()]));
        assert!(files.iter().all(|(n, _)| n != "shadow"));
        let passwd = &files.iter().find(|(n, _)| n == "passwd").expect("passwd").1;
        assert!(String::from_utf8_lossy(passwd).contains("user:x:1000:1000"));
    }
}
