//! Finishing a debootstrapped rootfs: what only the build needed goes, what came from the
//! build host is replaced, the package list is read, and the interpreters are started once.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::build::SAFE_PATH;
use crate::error::BuildError;
use crate::rootfs;
use crate::store::Package;

/// Leaves out what only the build needed and what came from the build host.
pub(crate) fn tidy(rootfs: &Path) -> Result<(), BuildError> {
    let step = |what: &str| {
        let what = what.to_owned();
        move |source| BuildError::Tidy { step: what, source }
    };
    rootfs::remove_tree(&rootfs.join("debootstrap")).map_err(step("removing /debootstrap"))?;
    remove_files(&rootfs.join("var/cache/apt/archives"), |n| {
        n.ends_with(".deb")
    })
    .map_err(step("removing downloaded packages"))?;
    remove_files(&rootfs.join("var/cache/apt/archives/partial"), |_| true)
        .map_err(step("removing partial downloads"))?;
    remove_files(&rootfs.join("var/cache/apt"), |n| n.ends_with(".bin"))
        .map_err(step("removing apt's package caches"))?;
    remove_files(&rootfs.join("var/lib/apt/lists"), |n| n != "lock")
        .map_err(step("removing apt lists"))?;
    let workspace = rootfs.join("workspace");
    fs::create_dir_all(&workspace).map_err(step("creating /workspace"))?;
    set_mode(&workspace, 0o755).map_err(step("chmod /workspace"))?;
    // Copied from the build host by debootstrap; the sandbox's runtime provides its own.
    write_file(&rootfs.join("etc/hostname"), "runbox\n").map_err(step("writing /etc/hostname"))?;
    write_file(&rootfs.join("etc/resolv.conf"), "").map_err(step("emptying /etc/resolv.conf"))?;
    write_file(
        &rootfs.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\trunbox\n",
    )
    .map_err(step("writing /etc/hosts"))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    // Replace rather than write through: debootstrap may have made it a symlink.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::write(path, text)?;
    set_mode(path, 0o644)
}

/// Removes the regular files of `dir` (not recursively) whose names pass `keep_out`.
fn remove_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() && doomed(&entry.file_name().to_string_lossy()) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The installed packages from dpkg's status file.
pub(crate) fn installed_packages(rootfs: &Path) -> io::Result<Vec<Package>> {
    let status = fs::read_to_string(rootfs.join("var/lib/dpkg/status"))?;
    Ok(parse_dpkg_status(&status))
}

fn parse_dpkg_status(status: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        let installed = field("Status:").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package:"), field("Version:"))
        {
            packages.push(Package { name, version });
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// Starts the interpreters the image is for, in a chroot, with a scratch HOME that is
/// cleaned afterwards (matplotlib writes a font cache on first import).
pub(crate) fn smoke_test(rootfs: &Path, packages: &[String]) -> Result<(), BuildError> {
    let has = |p: &str| packages.iter().any(|q| q == p);
    let modules: Vec<&str> = [
        ("python3-numpy", "numpy"),
        ("python3-pandas", "pandas"),
        ("python3-matplotlib", "matplotlib.pyplot"),
    ]
    .iter()
    .filter(|(p, _)| has(p))
    .map(|(_, m)| *m)
    .collect();
    let mut checks: Vec<Vec<String>> = Vec::new();
    if has("python3") || !modules.is_empty() {
        let imports = if modules.is_empty() {
            "pass".to_owned()
        } else {
            format!("import {}", modules.join(", "))
        };
        checks.push(vec!["/usr/bin/python3".into(), "-c".into(), imports]);
    }
    if has("nodejs") {
        checks.push(vec![
            "/usr/bin/node".into(),
            "-e".into(),
            "process.exit(0)".into(),
        ]);
    }
    let scratch = rootfs.join("tmp/runbox-smoke");
    let result = checks.iter().try_for_each(|argv| {
        let output = Command::new("chroot")
            .arg(rootfs)
            .args(argv)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("HOME", "/tmp/runbox-smoke")
            .env("MPLCONFIGDIR", "/tmp/runbox-smoke")
            .env("MPLBACKEND", "Agg")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BuildError::Spawn {
                program: "chroot",
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(BuildError::SmokeTest {
                command: argv.join(" "),
                output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    });
    let _ = rootfs::remove_tree(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages() {
        let status = "Package: b\nStatus: install ok installed\nVersion: 2\n\n\
                      Package: a\nStatus: install ok installed\nPriority: required\nVersion: 1:1.0\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 3\n";
        let names: Vec<_> = parse_dpkg_status(status)
            .into_iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(names, ["a=1:1.0", "b=2"]);
    }
}
