//! One-shot operations on named entries: info, delete, permissions, move, mkdir, rmdir.
//! Every request is validated as a whole before the first change is made.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use axum::extract::{RawQuery, State};
use axum::Json;
use runbox_proto::execd::{FileInfo, Permission, RenameFileItem};

use super::meta::{Names, Wanted};
use super::query::Params;
use super::{blocking, display, fs_error, resolve};
use crate::error::{ApiError, JsonBody};
use crate::AppState;

/// GET /files/info?path=..: a map from each path, as given, to its FileInfo. A symlink is
/// described itself, not its target.
pub(super) async fn info(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<BTreeMap<String, FileInfo>>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let wanted = resolve_all(&state, params.required_all("path")?)?;
    blocking(move || {
        let names = Names::load();
        let mut out = BTreeMap::new();
        for (given, path) in wanted {
            let md = std::fs::symlink_metadata(&path).map_err(|e| fs_error(&given, e))?;
            out.insert(given, names.info(&path, &md));
        }
        Ok(Json(out))
    })
    .await
}

/// DELETE /files?path=..: removes files (a symlink itself, never its target). Deleting what
/// is already gone succeeds, like `rm -f`; a directory is refused (DELETE /directories).
pub(super) async fn delete_files(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<(), ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let wanted = resolve_all(&state, params.required_all("path")?)?;
    blocking(move || {
        for (given, path) in wanted {
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(fs_error(&given, e)),
                Ok(md) if md.is_dir() => {
                    return Err(ApiError::bad_request(format!(
                        "{given}: is a directory; use DELETE /directories"
                    )))
                }
                Ok(_) => std::fs::remove_file(&path).map_err(|e| fs_error(&given, e))?,
            }
        }
        Ok(())
    })
    .await
}

/// POST /files/permissions: chmod, and chown where the kernel allows it (the agent is not
/// root, so giving a file to another user fails with 403).
pub(super) async fn permissions(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BTreeMap<String, Permission>>,
) -> Result<(), ApiError> {
    let targets = resolve_map(&state, body)?;
    blocking(move || {
        let names = Names::load();
        let plan = targets
            .into_iter()
            .map(|(path, p)| Ok((path, Wanted::from_permission(&names, &p)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        for (path, wanted) in plan {
            wanted.apply(&path, &display(&path))?;
        }
        Ok(())
    })
    .await
}

/// POST /files/mv: renames files or directories. The destination must not exist; its parent
/// is created if missing; across filesystems a file is copied, then the source removed.
pub(super) async fn rename(
    State(state): State<AppState>,
    JsonBody(items): JsonBody<Vec<RenameFileItem>>,
) -> Result<(), ApiError> {
    let moves = items
        .iter()
        .map(|i| Ok((resolve(&state, &i.src)?, resolve(&state, &i.dest)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    blocking(move || {
        for (src, dest) in moves {
            move_one(&src, &dest)?;
        }
        Ok(())
    })
    .await
}

fn move_one(src: &Path, dest: &Path) -> Result<(), ApiError> {
    let (src_shown, dest_shown) = (display(src), display(dest));
    let md = std::fs::symlink_metadata(src).map_err(|e| fs_error(&src_shown, e))?;
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(ApiError::Conflict(format!(
            "{dest_shown}: destination already exists"
        )));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fs_error(&display(parent), e))?;
    }
    match std::fs::rename(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) && md.is_file() => {
            if let Err(e) = std::fs::copy(src, dest) {
                let _ = std::fs::remove_file(dest);
                return Err(fs_error(&dest_shown, e));
            }
            std::fs::remove_file(src).map_err(|e| fs_error(&src_shown, e))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(ApiError::bad_request(format!(
            "{src_shown}: cannot move a directory or special file to another filesystem"
        ))),
        Err(e) => Err(fs_error(&src_shown, e)),
    }
}

/// POST /directories: `mkdir -p`, then the requested mode and owner on each directory this
/// request created (an existing directory is left as it is).
pub(super) async fn make_dirs(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BTreeMap<String, Permission>>,
) -> Result<(), ApiError> {
    let targets = resolve_map(&state, body)?;
    blocking(move || {
        let names = Names::load();
        let plan = targets
            .into_iter()
            .map(|(path, p)| Ok((path, Wanted::from_permission(&names, &p)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        for (path, wanted) in plan {
            let shown = display(&path);
            match std::fs::metadata(&path) {
                Ok(md) if md.is_dir() => continue,
                Ok(_) => {
                    return Err(ApiError::Conflict(format!(
                        "{shown}: exists and is not a directory"
                    )))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(fs_error(&shown, e)),
            }
            std::fs::create_dir_all(&path).map_err(|e| fs_error(&shown, e))?;
            wanted.apply(&path, &shown)?;
        }
        Ok(())
    })
    .await
}

/// DELETE /directories?path=..: `rm -rf` without following symlinks (std's remove_dir_all
/// does not, since CVE-2022-21658). What is already gone succeeds; a file is refused.
pub(super) async fn remove_dirs(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<(), ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let wanted = resolve_all(&state, params.required_all("path")?)?;
    blocking(move || {
        for (given, path) in wanted {
            let result = match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => Err(e),
                Ok(md) if md.is_symlink() => std::fs::remove_file(&path),
                Ok(md) if md.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => {
                    return Err(ApiError::bad_request(format!(
                        "{given}: not a directory; use DELETE /files"
                    )))
                }
            };
            result.map_err(|e| fs_error(&given, e))?;
        }
        Ok(())
    })
    .await
}

fn resolve_all(state: &AppState, raw: Vec<&str>) -> Result<Vec<(String, PathBuf)>, ApiError> {
    raw.into_iter()
        .map(|p| Ok((p.to_owned(), resolve(state, p)?)))
        .collect()
}

fn resolve_map<T>(
    state: &AppState,
    body: BTreeMap<String, T>,
) -> Result<Vec<(PathBuf, T)>, ApiError> {
    body.into_iter()
        .map(|(p, v)| Ok((resolve(state, &p)?, v)))
        .collect()
}
