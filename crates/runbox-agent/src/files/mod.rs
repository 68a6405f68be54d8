//! /files and /directories: metadata, permissions, moves, search, replace, upload, download
//! and directory listing, as the execd spec describes them.
//!
//! There is no path jail here on purpose: the agent runs as the sandbox user inside the
//! sandbox's mount namespace, so the kernel already limits it to what the sandbox's own code
//! could do. This module's job is clean answers: 404 for what is missing, 403 for what is
//! denied or read-only, 400 for bad input, 413 for a full disk, never a panic.

mod download;
mod entries;
mod glob;
mod meta;
mod query;
mod replace;
mod tree;
mod upload;

use std::path::{Path, PathBuf};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/files", axum::routing::delete(entries::delete_files))
        .route("/files/info", get(entries::info))
        .route("/files/permissions", post(entries::permissions))
        .route("/files/mv", post(entries::rename))
        .route("/files/search", get(tree::search))
        .route("/files/replace", post(replace::replace))
        // The sandbox's disk quota, enforced by the kernel, is the real limit on uploads;
        // the body is streamed to disk, so axum's 2 MB default would only get in the way.
        .route(
            "/files/upload",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/download", get(download::download))
        .route("/directories/list", get(tree::list))
        .route(
            "/directories",
            post(entries::make_dirs).delete(entries::remove_dirs),
        )
}

/// Turns a client's path into the path the agent uses: absolute paths as they are, `~` as the
/// sandbox home, anything else relative to the workspace.
fn resolve(state: &AppState, raw: &str) -> Result<PathBuf, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::bad_request("path must not be empty"));
    }
    if raw.contains('\0') {
        return Err(ApiError::bad_request("path must not contain NUL bytes"));
    }
    let workspace = &state.config.workspace;
    let home = || {
        state
            .config
            .env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map_or_else(|| workspace.clone(), |(_, v)| PathBuf::from(v))
    };
    let path = Path::new(raw);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else if raw == "~" {
        home()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        home().join(rest)
    } else {
        workspace.join(path)
    })
}

/// `ApiError::from_io`, plus the errno values a client's own input causes that it would
/// otherwise report as internal errors (500).
fn fs_error(path: &str, e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::ENAMETOOLONG | libc::ELOOP) => ApiError::bad_request(format!("{path}: {e}")),
        Some(libc::EXDEV) => ApiError::bad_request(format!("{path}: {e} (crosses filesystems)")),
        Some(libc::EBUSY | libc::ETXTBSY) => ApiError::Conflict(format!("{path}: {e}")),
        _ => ApiError::from_io(path, e),
    }
}

/// A path as it appears in response bodies.
fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs blocking filesystem work off the async executor.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(ApiError::Runtime {
            message: format!("filesystem task failed: {e}"),
            source: None,
        }),
    }
}

/// A file being written next to the path it will replace, so the final step is one atomic
/// rename; removed on drop unless committed (an error or a client that went away leaves no
/// partial file behind).
#[derive(Debug)]
struct Staged {
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Creates `.<name>.runbox-<pid>-<n>.tmp` in `target`'s directory, readable by the agent
    /// only until the caller sets the final mode.
    fn create(target: &Path) -> std::io::Result<(Self, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);

        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(64).collect::<String>())
            .unwrap_or_default();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.runbox-{}-{n}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((
            Self {
                path,
                committed: false,
            },
            file,
        ))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn commit(mut self, target: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
