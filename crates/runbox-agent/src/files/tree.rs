//! Walking directory trees: GET /directories/list (depth-limited) and GET /files/search
//! (glob). Neither follows a symlink below the root it was given, both visit entries in
//! lexical order, and both stop at a bound so one request cannot walk a whole disk.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use axum::extract::{RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use runbox_proto::execd::FileInfo;

use super::glob::Glob;
use super::meta::Names;
use super::query::Params;
use super::{blocking, display, fs_error, resolve};
use crate::error::ApiError;
use crate::AppState;

/// Entries returned by one listing at most.
const MAX_LISTED: usize = 100_000;
/// Matches returned by one search at most.
const MAX_MATCHES: usize = 10_000;
/// Entries one search looks at, matching or not, at most.
const MAX_VISITED: usize = 1_000_000;
/// Set to `true` on a response that stopped at one of the bounds above.
const TRUNCATED_HEADER: &str = "x-runbox-truncated";

/// GET /directories/list?path=..&depth=N: the entries under `path` down to `depth` levels
/// (default 1, 0 lists nothing), each directory's children right after it.
pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let given = params.required("path")?.to_owned();
    let root = resolve(&state, &given)?;
    let depth = match params.get("depth") {
        None | Some("") => 1,
        Some(d) => d.parse::<u32>().map_err(|_| {
            ApiError::bad_request(format!("depth must be a non-negative integer, not '{d}'"))
        })?,
    };
    blocking(move || {
        let md = std::fs::symlink_metadata(&root).map_err(|e| fs_error(&given, e))?;
        if md.is_symlink() {
            return Err(ApiError::bad_request(format!(
                "{given}: is a symbolic link; list the directory it points to instead"
            )));
        }
        if !md.is_dir() {
            return Err(ApiError::bad_request(format!("{given}: not a directory")));
        }
        if depth == 0 {
            return Ok(Json(Vec::<FileInfo>::new()).into_response());
        }
        let children = sorted_children(&root).map_err(|e| fs_error(&given, e))?;
        let names = Names::load();
        let mut out = Vec::new();
        // Depth-first with an explicit stack of (entries left in this directory, level).
        let mut stack = vec![(children.into_iter(), 1)];
        while let Some((iter, level)) = stack.last_mut() {
            let level = *level;
            let Some((path, md)) = iter.next() else {
                stack.pop();
                continue;
            };
            if out.len() == MAX_LISTED {
                return Ok(truncated(out));
            }
            out.push(names.info(&path, &md));
            if md.is_dir() && level < depth {
                // An unreadable subdirectory is listed but not descended into.
                if let Ok(grandchildren) = sorted_children(&path) {
                    stack.push((grandchildren.into_iter(), level + 1));
                }
            }
        }
        Ok(Json(out).into_response())
    })
    .await
}

/// GET /files/search?path=DIR&pattern=GLOB: every non-directory under DIR whose name (or,
/// for a pattern with `/`, whose path relative to DIR) matches; the default pattern is `**`.
pub(super) async fn search(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let given = params.required("path")?.to_owned();
    let root = resolve(&state, &given)?;
    let glob = Glob::new(
        params
            .get("pattern")
            .filter(|p| !p.is_empty())
            .unwrap_or("**"),
    )?;
    blocking(move || {
        // The root may itself be a symlink to a directory: that is the tree the client named.
        let md = std::fs::metadata(&root).map_err(|e| fs_error(&given, e))?;
        if !md.is_dir() {
            return Err(ApiError::bad_request(format!("{given}: not a directory")));
        }
        let names = Names::load();
        let mut out = Vec::new();
        let mut visited = 0usize;
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            // Unreadable subdirectories are skipped rather than failing the whole search.
            let Ok(children) = sorted_children(&dir) else {
                continue;
            };
            let mut subdirs = Vec::new();
            for (path, md) in children {
                visited += 1;
                if visited > MAX_VISITED {
                    return Ok(truncated(out));
                }
                if md.is_dir() {
                    subdirs.push(path);
                    continue;
                }
                let relative = path.strip_prefix(&root).map(display).unwrap_or_default();
                if glob.matches(&relative) {
                    if out.len() == MAX_MATCHES {
                        return Ok(truncated(out));
                    }
                    out.push(names.info(&path, &md));
                }
            }
            pending.extend(subdirs.into_iter().rev());
        }
        Ok(Json(out).into_response())
    })
    .await
}

/// A directory's entries sorted by name, each with its own (not its target's) metadata.
/// Entries that vanish while being read are left out.
fn sorted_children(dir: &Path) -> std::io::Result<Vec<(PathBuf, Metadata)>> {
    let mut children: Vec<(PathBuf, Metadata)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            std::fs::symlink_metadata(&path).ok().map(|md| (path, md))
        })
        .collect();
    children.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(children)
}

fn truncated(entries: Vec<FileInfo>) -> Response {
    let mut response = Json(entries).into_response();
    response
        .headers_mut()
        .insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
    response
}
