//! `build`: the default image from Debian packages. debootstrap (`--variant=minbase` plus
//! the packages) into a staging directory, tidy, smoke-test in a chroot, record, commit.
//!
//! debootstrap runs in its own mount namespace (`unshare --mount`) when util-linux is there:
//! the /proc and /sys it mounts in the target then vanish with it even if it is killed, so a
//! crashed build never leaves host mounts inside the images directory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::debootstrap::{self, Event, Stage};
use crate::error::BuildError;
use crate::name::validate_name;
use crate::progress::{Progress, Unit};
use crate::rootfs;
use crate::staging::Staging;
use crate::store::{now_rfc3339, write_meta, Image, ImageMeta, ImageStore, RunConfig, ROOTFS_DIR};
use crate::tidy::{installed_packages, smoke_test, tidy};

pub const SUITE: &str = "bookworm";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// What sandboxes need, on top of minbase. matplotlib's fonts (fonts-dejavu-core) come with
/// python-matplotlib-data; ca-certificates lets code that has network use TLS. debootstrap
/// resolves dependencies without Recommends and takes the first of alternatives, which brings
/// scipy and a C compiler in through python3-fonttools (`python3-scipy | python3-munkres`).
pub const DEFAULT_PACKAGES: &[&str] = &[
    "python3",
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "nodejs",
    "bash",
    "ca-certificates",
];

/// Tools are looked up here, not in the caller's PATH: this runs as root.
pub(crate) const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const UNSHARE: &str = "/usr/bin/unshare";
/// The image's PATH (Debian's default for root, as in the official images).
const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    pub mirror: String,
    pub packages: Vec<String>,
}

impl BuildOptions {
    pub fn new(name: impl Into<String>) -> BuildOptions {
        BuildOptions {
            name: name.into(),
            mirror: DEFAULT_MIRROR.to_owned(),
            packages: DEFAULT_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

#[derive(Debug)]
pub struct BuildReport {
    pub image: Image,
    pub replaced: bool,
}

fn find_program(name: &str) -> Option<PathBuf> {
    SAFE_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Builds image `options.name` (replacing one of that name when done).
pub fn build(
    store: &ImageStore,
    options: &BuildOptions,
    progress: &Progress,
) -> Result<BuildReport, BuildError> {
    validate_name(&options.name).map_err(|e| BuildError::Store(e.into()))?;
    let mirror = options.mirror.trim_end_matches('/').to_owned();
    if !["http://", "https://", "file:/"]
        .iter()
        .any(|scheme| mirror.starts_with(scheme))
    {
        return Err(BuildError::BadMirror { mirror });
    }
    if !rustix::process::geteuid().is_root() {
        return Err(BuildError::NotRoot);
    }
    let debootstrap = find_program("debootstrap").ok_or(BuildError::DebootstrapMissing)?;
    if let Err(e) = store.sweep() {
        progress.note(&format!("warning: could not sweep leftovers: {e}"));
    }
    let staging = Staging::create(store, &options.name)?;
    let log_path = store.build_log(&options.name);
    let log_error = |source| BuildError::Log {
        path: log_path.clone(),
        source,
    };
    // Append mode: debootstrap's stderr and our copy of its stdout share the file.
    let mut log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .and_then(|f| {
            drop(f);
            OpenOptions::new().append(true).open(&log_path)
        })
        .map_err(log_error)?;
    let rootfs = staging.path().join(ROOTFS_DIR);
    let include = format!("--include={}", options.packages.join(","));
    let base_args = ["--variant=minbase".to_owned(), include];
    writeln!(
        log,
        "# runbox image build {}: debootstrap {} {SUITE} {} {mirror}",
        options.name,
        base_args.join(" "),
        rootfs.display()
    )
    .map_err(log_error)?;

    let total = resolve(
        &debootstrap,
        &base_args,
        staging.path(),
        &mirror,
        &mut log,
        &log_path,
        progress,
    )?;
    run_debootstrap(
        &debootstrap,
        &base_args,
        &rootfs,
        &mirror,
        total,
        &mut log,
        &log_path,
        progress,
    )?;

    let phase = progress.phase("tidying", None, Unit::Items);
    tidy(&rootfs)?;
    let packages = installed_packages(&rootfs).map_err(|source| BuildError::Tidy {
        step: "reading var/lib/dpkg/status".into(),
        source,
    })?;
    phase.finish(&format!("{} packages installed", packages.len()));

    let phase = progress.phase("verifying", None, Unit::Items);
    if let Err(e) = smoke_test(&rootfs, &options.packages) {
        phase.abandon();
        return Err(e);
    }
    phase.finish("python3 and node start in the image");

    let size_bytes = rootfs::tree_size(&rootfs).map_err(BuildError::Size)?;
    let meta = ImageMeta {
        name: options.name.clone(),
        source: format!("debootstrap {SUITE} {mirror}"),
        created: now_rfc3339(),
        size_bytes,
        packages,
        layers: Vec::new(),
        docker_ref: None,
        docker_image_id: None,
        config: RunConfig {
            env: vec![IMAGE_PATH.to_owned(), "LANG=C.UTF-8".to_owned()],
            entrypoint: Vec::new(),
            cmd: vec!["bash".to_owned()],
            working_dir: Some("/workspace".to_owned()),
            user: None,
        },
    };
    write_meta(staging.path(), &meta)?;
    let replaced = staging.commit(&options.name)?;
    let image = store.get(&options.name).ok_or_else(|| {
        BuildError::Store(crate::error::StoreError::NoSuchImage {
            name: options.name.clone(),
        })
    })?;
    Ok(BuildReport { image, replaced })
}

fn command(debootstrap: &Path) -> Command {
    let mut cmd = if Path::new(UNSHARE).is_file() {
        let mut cmd = Command::new(UNSHARE);
        cmd.args(["--mount", "--propagation", "private", "--"]);
        cmd.arg(debootstrap);
        cmd
    } else {
        Command::new(debootstrap)
    };
    cmd.env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// `debootstrap --print-debs`: the package count that makes the bar real (about 10 s).
fn resolve(
    debootstrap: &Path,
    base_args: &[String],
    staging: &Path,
    mirror: &str,
    log: &mut File,
    log_path: &Path,
    progress: &Progress,
) -> Result<u64, BuildError> {
    let phase = progress.phase("resolving", None, Unit::Items);
    phase.set_message(format!(
        "dependencies of {SUITE} minbase and the included packages"
    ));
    let output = command(debootstrap)
        .arg("--print-debs")
        .args(base_args)
        .arg(SUITE)
        .arg(staging.join("print-debs"))
        .arg(mirror)
        .output()
        .map_err(|source| BuildError::Spawn {
            program: "debootstrap",
            source,
        })?;
    let log_error = |source| BuildError::Log {
        path: log_path.to_owned(),
        source,
    };
    log.write_all(&output.stderr).map_err(log_error)?;
    log.write_all(b"# packages: ").map_err(log_error)?;
    log.write_all(&output.stdout).map_err(log_error)?;
    log.write_all(b"\n").map_err(log_error)?;
    if !output.status.success() {
        phase.abandon();
        return Err(BuildError::Resolve {
            status: output.status,
            detail: last_error(&String::from_utf8_lossy(&output.stderr)),
            log: log_path.to_owned(),
        });
    }
    let count = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .count() as u64;
    phase.finish(&format!("{count} packages"));
    Ok(count)
}

fn last_error(text: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| match debootstrap::parse(l) {
            Event::Error(e) => Some(e.to_owned()),
            _ => None,
        })
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn run_debootstrap(
    debootstrap: &Path,
    base_args: &[String],
    rootfs: &Path,
    mirror: &str,
    packages: u64,
    log: &mut File,
    log_path: &Path,
    progress: &Progress,
) -> Result<(), BuildError> {
    let log_error = |source| BuildError::Log {
        path: log_path.to_owned(),
        source,
    };
    let mut child = command(debootstrap)
        .args(base_args)
        .arg("--keep-debootstrap-dir")
        .arg(SUITE)
        .arg(rootfs)
        .arg(mirror)
        .stdout(Stdio::piped())
        .stderr(log.try_clone().map_err(log_error)?)
        .spawn()
        .map_err(|source| BuildError::Spawn {
            program: "debootstrap",
            source,
        })?;
    let phase = progress.phase("debootstrap", Some(3 * packages), Unit::Items);
    let mut errors = String::new();
    let mut stage = None;
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    phase.println(&format!("warning: reading debootstrap's output: {e}"));
                    break;
                }
            }
            log.write_all(&raw).map_err(log_error)?;
            let line = String::from_utf8_lossy(&raw);
            let event = debootstrap::parse(&line);
            match event {
                Event::Warning(w) => phase.println(&format!("debootstrap: W: {w}")),
                Event::Error(e) => {
                    phase.println(&format!("debootstrap: E: {e}"));
                    errors = format!(": {e}");
                }
                Event::Info(text) if progress.style() == crate::progress::Style::Lines => {
                    phase.println(&format!("debootstrap: {text}"));
                }
                _ => {}
            }
            if let Some((now, package)) = debootstrap::step(&event) {
                if stage != Some(now) {
                    stage = Some(now);
                    if now == Stage::Download {
                        phase.println(&format!("debootstrap: downloading {packages} packages"));
                    }
                }
                phase.inc(1);
                phase.set_message(format!("{} {package}", now.label()));
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        program: "debootstrap",
        source,
    })?;
    // debootstrap's own full log (every command it ran) follows ours.
    let full = rootfs.join("debootstrap/debootstrap.log");
    if let Ok(mut text) = File::open(&full) {
        let _ = writeln!(log, "# {}", full.display());
        let _ = io::copy(&mut text, log);
    }
    if !status.success() {
        phase.abandon();
        return Err(BuildError::Debootstrap {
            status,
            detail: errors,
            log: log_path.to_owned(),
        });
    }
    phase.finish(&format!("{packages} packages installed"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_last_debootstrap_error() {
        assert_eq!(
            last_error("I: x\nE: first\nE: Couldn't find these debs: nope\n"),
            ": Couldn't find these debs: nope"
        );
        assert_eq!(last_error("I: fine\n"), "");
    }
}
