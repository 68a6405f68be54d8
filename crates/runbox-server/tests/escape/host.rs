//! The host's side: bait the sandbox must not reach (a listener on every host address, a
//! host process), host files the probe tries to write, and what must be gone once the
//! sandbox is deleted (its processes, container or runsc sandbox, cgroups, mounts).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runbox_runtime::Backend;

/// Host files the probe tries to create or open for writing; their state before the run.
const WATCHED: &[&str] = &[
    "/etc/passwd",
    "/usr/bin/x",
    "/rbp-escape-probe",
    "/proc/sys/kernel/core_pattern",
];

pub struct Bait {
    listener: TcpListener,
    pub port: u16,
    /// The host's non-loopback IPv4 addresses, by interface (docker0's bridge among them).
    pub addresses: Vec<(String, Ipv4Addr)>,
    sleeper: Child,
    files: Vec<(&'static str, Option<Vec<u8>>)>,
}

impl Drop for Bait {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
    }
}

fn host_addresses() -> Vec<(String, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run `ip -4 -o addr show`");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "3: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0"
            let mut words = line.split_whitespace();
            let name = words.nth(1)?.to_owned();
            let addr = words.nth(1)?.split('/').next()?.parse::<Ipv4Addr>().ok()?;
            (!addr.is_loopback()).then_some((name, addr))
        })
        .collect()
}

impl Bait {
    pub fn set_up() -> Self {
        let listener = TcpListener::bind("0.0.0.0:0").expect("listen on 0.0.0.0");
        let port = listener.local_addr().expect("local addr").port();
        let addresses = host_addresses();
        assert!(
            !addresses.is_empty(),
            "the host has no non-loopback IPv4 address to bait"
        );
        // Positive control: the listener answers on every host address, from the host.
        for (name, addr) in &addresses {
            TcpStream::connect_timeout(&(*addr, port).into(), Duration::from_secs(2))
                .unwrap_or_else(|e| {
                    panic!("the host cannot reach its own {name} {addr}:{port}: {e}")
                });
            let _ = listener.accept().expect("accept the control connection");
        }
        listener.set_nonblocking(true).expect("nonblocking");
        let sleeper = Command::new("/bin/sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a host process");
        let files = WATCHED
            .iter()
            .map(|path| (*path, std::fs::read(path).ok()))
            .collect();
        Bait {
            listener,
            port,
            addresses,
            sleeper,
            files,
        }
    }

    /// The probe arguments of a case with the placeholders filled in: one list per run, with a
    /// label telling runs apart (the interface of `$HOSTADDR`).
    pub fn expand(&self, args: &[&str]) -> Vec<(String, Vec<String>)> {
        let fill = |addr: Option<&Ipv4Addr>| -> Vec<String> {
            args.iter()
                .map(|a| match *a {
                    "$PORT" => self.port.to_string(),
                    "$HOSTPID" => self.sleeper.id().to_string(),
                    "$HOSTADDR" => addr.map(ToString::to_string).unwrap_or_default(),
                    other => other.to_owned(),
                })
                .collect()
        };
        if args.contains(&"$HOSTADDR") {
            self.addresses
                .iter()
                .map(|(name, addr)| (format!(" ({name} {addr})"), fill(Some(addr))))
                .collect()
        } else {
            vec![(String::new(), fill(None))]
        }
    }

    /// Problems: a connection that reached the host listener, a host file that changed or
    /// appeared, the host process gone.
    pub fn disturbed(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, from)) => problems.push(format!(
                "the host listener on 0.0.0.0:{} accepted a connection from {from}",
                self.port
            )),
            Err(e) => problems.push(format!("the host listener failed: {e}")),
        }
        for (path, before) in &self.files {
            let after = std::fs::read(path).ok();
            if &after != before {
                problems.push(format!(
                    "host file {path} changed: {} bytes before, {} after",
                    before.as_ref().map_or(-1, |b| b.len() as i64),
                    after.as_ref().map_or(-1, |b| b.len() as i64)
                ));
            }
        }
        if !Path::new(&format!("/proc/{}", self.sleeper.id())).exists() {
            problems.push("the host's bait process died".into());
        }
        problems
    }
}

/// Host processes whose command line contains one of `needles`, as "pid cmdline".
pub fn processes_mentioning(needles: &[&str]) -> Vec<String> {
    let own = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmdline.contains(n)) {
            found.push(format!("{pid} {}", cmdline.trim_end()));
        }
    }
    found
}

/// Host processes running with `uid` as any of their uids.
fn processes_of_uid(uid: u64) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or_default();
        if uids.split_whitespace().any(|u| u.parse() == Ok(uid)) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

fn cgroups_named_after(id: &str) -> Vec<String> {
    fn walk(dir: &Path, id: &str, depth: u32, found: &mut Vec<String>) {
        if depth > 5 {
            return;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if entry.file_name().to_string_lossy().contains(id) {
                found.push(path.display().to_string());
            }
            walk(&path, id, depth + 1, found);
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 0, &mut found);
    found
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// What of sandbox `id` is still on the host: processes (by `marker`, the id, or native's
/// host uid), the container or runsc sandbox, cgroups, mounts.
pub fn remains_of(backend: Backend, id: &str, marker: &str, host_uid: Option<u64>) -> Vec<String> {
    let mut found: Vec<String> = processes_mentioning(&[marker, id])
        .into_iter()
        .map(|p| format!("process {p}"))
        .collect();
    if let Some(uid) = host_uid {
        found.extend(
            processes_of_uid(uid)
                .into_iter()
                .map(|p| format!("process {p} runs as the sandbox's host uid {uid}")),
        );
    }
    match backend {
        Backend::Native => {}
        Backend::Docker => {
            let filter = format!("label={}={id}", runbox_runtime::docker::LABEL_SANDBOX);
            let listed = command_output("docker", &["ps", "-aq", "--filter", &filter]);
            if !listed.trim().is_empty() {
                found.push(format!("docker container {}", listed.trim()));
            }
        }
        Backend::Gvisor => {
            let root = runbox_runtime::gvisor::STATE_ROOT;
            let listed = command_output("runsc", &["--root", root, "list", "-quiet"]);
            if listed.lines().any(|l| l.contains(id)) {
                found.push(format!("runsc sandbox runbox-{id}"));
            }
        }
    }
    found.extend(
        cgroups_named_after(id)
            .into_iter()
            .map(|c| format!("cgroup {c}")),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| format!("mount {l}")),
    );
    found
}

/// Runs scripts/leftovers.sh: whether it passed, and its output.
pub fn leftovers() -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/leftovers.sh"))
        .current_dir(&root)
        .output()
        .expect("run scripts/leftovers.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

/// The items of a leftovers.sh report: the first word of each reported line, without its
/// heading ("leftovers: runsc sandboxes: runbox-x" -> "runbox-x"; a continuation line such
/// as a cgroup path -> itself). Container status text is dropped so that it compares.
fn items(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter_map(|line| {
            let rest = match line.strip_prefix("leftovers: ") {
                Some(rest) => rest.split_once(": ")?.1,
                None => line,
            };
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

/// Whether runsc sandbox `id` was started by a live process other than this one (its
/// bundle's owner file holds that process's pid and start time): another test on this host.
fn held_by_another_process(id: &str) -> bool {
    let owner = Path::new(runbox_runtime::gvisor::BUNDLES)
        .join(id)
        .join("owner");
    let Ok(text) = std::fs::read_to_string(owner) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let (Some(pid), Some(started)) = (words.next(), words.next()) else {
        return false;
    };
    let alive_since = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields = stat.rsplit_once(')')?.1.to_owned();
            fields.split_whitespace().nth(19).map(str::to_owned)
        });
    pid != std::process::id().to_string() && alive_since.as_deref() == Some(started)
}

/// A leftovers.sh item that belongs to another live test: its runsc sandbox, or a
/// `runbox-gvisor` cgroup parent that holds only such sandboxes.
fn belongs_to_another_test(item: &str) -> bool {
    if let Some(id) = item.strip_prefix("runbox-") {
        return held_by_another_process(id);
    }
    if item.ends_with("/runbox-gvisor") {
        let children: Vec<String> = std::fs::read_dir(item)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        return !children.is_empty()
            && children.iter().all(|c| {
                c.strip_prefix("runbox-")
                    .is_some_and(held_by_another_process)
            });
    }
    false
}

/// What a failing leftovers.sh report after the test holds that its report from before the
/// test did not: (items not explained by another test, items of another live test).
pub fn new_leftovers(
    before: &(bool, String),
    after: &(bool, String),
) -> (Vec<String>, Vec<String>) {
    if after.0 {
        return (Vec::new(), Vec::new());
    }
    let old = if before.0 {
        BTreeSet::new()
    } else {
        items(&before.1)
    };
    items(&after.1)
        .difference(&old)
        .cloned()
        .partition(|item| !belongs_to_another_test(item))
}
