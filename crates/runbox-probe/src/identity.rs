//! Who the sandboxed process is: capabilities and seccomp/no_new_privs state, ids, inherited
//! file descriptors, hostname. These always "succeed"; the test compares the data.

use serde_json::{json, Map, Value};

use crate::report::{check, Failure, Outcome, Success};

/// The capability sets and confinement flags from /proc/self/status, as the kernel prints
/// them (hex strings for the sets).
pub fn caps(_: &[String]) -> Outcome {
    const FIELDS: &[&str] = &[
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ];
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Failure::from_io("read(/proc/self/status)", &e))?;
    let mut data = Map::new();
    for line in status.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if FIELDS.contains(&key) {
                data.insert(key.to_string(), Value::String(value.trim().to_string()));
            }
        }
    }
    let summary: Vec<String> = data
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect();
    Ok(Success::with_data(summary.join(" "), Value::Object(data)))
}

pub fn ids(_: &[String]) -> Outcome {
    // SAFETY: these getters have no preconditions.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: groups is writable for the count passed.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    let n = check(n as libc::c_long, "getgroups")?;
    groups.truncate(n as usize);
    Ok(Success::with_data(
        format!("uid={uid} euid={euid} gid={gid} egid={egid} groups={groups:?}"),
        json!({ "uid": uid, "euid": euid, "gid": gid, "egid": egid, "groups": groups }),
    ))
}

/// Open descriptors, listed with opendir so that the listing's own descriptor is known.
pub fn fds(_: &[String]) -> Outcome {
    // SAFETY: a valid NUL-terminated path.
    let dir = unsafe { libc::opendir(c"/proc/self/fd".as_ptr()) };
    if dir.is_null() {
        return Err(Failure::last("opendir(/proc/self/fd)"));
    }
    // SAFETY: dir is a valid DIR* until closedir below; entries are valid until the next
    // readdir call and are copied out at once.
    let (dir_fd, mut fds) = unsafe {
        let dir_fd = libc::dirfd(dir);
        let mut fds = Vec::new();
        loop {
            let entry = libc::readdir(dir);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            if let Ok(fd) = name.to_string_lossy().parse::<i32>() {
                fds.push(fd);
            }
        }
        libc::closedir(dir);
        (dir_fd, fds)
    };
    fds.sort_unstable();
    let targets: Map<String, Value> = fds
        .iter()
        .filter(|&&fd| fd != dir_fd)
        .map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("? ({e})"));
            (fd.to_string(), Value::String(target))
        })
        .collect();
    Ok(Success::with_data(
        format!("fds {fds:?} (listing fd {dir_fd})"),
        json!({ "fds": fds, "dir_fd": dir_fd, "targets": targets }),
    ))
}

pub fn hostname(_: &[String]) -> Outcome {
    Ok(Success::with_data(
        format!("hostname {:?}", nodename()),
        json!({ "hostname": nodename() }),
    ))
}

/// uname's nodename (the UTS namespace's hostname).
pub fn nodename() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is writable.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates nodename.
    unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
