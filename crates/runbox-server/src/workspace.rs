//! Sandbox workspaces: `data_dir/workspaces/<id>`, which every backend bind-mounts at
//! /workspace. With a disk quota (`runbox.disk`) the directory is the mount point of an ext4
//! filesystem in a sparse `<id>.img` of exactly that size, so code and uploads writing past it
//! get ENOSPC on every backend, whatever the host's filesystem (no project quotas needed).
//! When the sandbox ends the filesystem is unmounted and the image kept: a workspace outlives
//! its sandbox, quota or not.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The smallest quota: an ext4 this small still has room for the agent's staging files.
pub const MIN_DISK_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot create the workspace directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the workspace image {}", path.display())]
    CreateImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The image file backing a quota'd workspace.
pub fn image_path(dir: &Path) -> PathBuf {
    dir.with_extension("img")
}

/// Creates the workspace directory; with `disk_bytes`, an ext4 image of that size mounted on
/// it. On failure nothing is left behind (no directory, image or mount).
pub async fn create(dir: &Path, disk_bytes: Option<u64>) -> Result<(), WorkspaceError> {
    std::fs::create_dir_all(dir).map_err(|source| WorkspaceError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let Some(bytes) = disk_bytes else {
        return Ok(());
    };
    let made = mount_image(dir, bytes).await;
    if made.is_err() {
        discard(dir).await;
    }
    made
}

async fn mount_image(dir: &Path, bytes: u64) -> Result<(), WorkspaceError> {
    let image = image_path(dir);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&image)
        .and_then(|f| f.set_len(bytes))
        .map_err(|source| WorkspaceError::CreateImage {
            path: image.clone(),
            source,
        })?;
    // No journal: the workspace is scratch space, and a journal would take part of a small
    // quota. `-m 0`: nothing reserved for root, the sandbox gets every block it paid for.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .arg(&image))
    .await?;
    // Not noexec: code legitimately runs scripts it wrote to its workspace.
    run(Command::new("mount")
        .args(["-o", "loop,nosuid,nodev"])
        .arg(&image)
        .arg(dir))
    .await?;
    // mkfs's lost+found would show in every listing of /workspace; fsck recreates it if needed.
    let _ = std::fs::remove_dir(dir.join("lost+found"));
    Ok(())
}

/// Unmounts a quota'd workspace (lazily when something still uses it), keeping its image.
/// Does nothing for a workspace that is not mounted, so it is safe to call more than once.
pub async fn release(dir: &Path) {
    if !is_mounted(dir) {
        return;
    }
    if run(Command::new("umount").arg(dir)).await.is_ok() {
        return;
    }
    let lazy = run(Command::new("umount").arg("-l").arg(dir)).await;
    // The sandbox's supervisor and `terminate` both release it: the loser finds it unmounted.
    if let Err(e) = lazy {
        if is_mounted(dir) {
            eprintln!("runbox: workspace {}: {e}", dir.display());
        }
    }
}

/// Removes a workspace that never served a sandbox: its mount, image and directory.
pub async fn discard(dir: &Path) {
    release(dir).await;
    let _ = std::fs::remove_file(image_path(dir));
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether `dir` is a mount point in our mount namespace.
fn is_mounted(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    // mountinfo escapes these four bytes in paths as octal.
    let escaped = dir
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(escaped.as_str()))
    })
}

async fn run(command: &mut Command) -> Result<(), WorkspaceError> {
    let shown = format!("{:?}", command.as_std()).replace('"', "");
    let out = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| WorkspaceError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(WorkspaceError::Command {
        command: shown,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_sits_next_to_the_directory() {
        assert_eq!(
            image_path(Path::new("/d/workspaces/ab12")),
            Path::new("/d/workspaces/ab12.img")
        );
    }

    #[tokio::test]
    async fn a_workspace_without_quota_is_a_plain_directory() {
        let dir = std::env::temp_dir().join(format!("runbox-ws-{}", std::process::id()));
        create(&dir, None).await.expect("create");
        assert!(dir.is_dir() && !is_mounted(&dir));
        discard(&dir).await;
        assert!(!dir.exists());
    }
}
