//! POST /files/upload: multipart pairs of a `metadata` part (FileMetadata JSON) followed by
//! its `file` part, as the official SDKs send them. Each file streams to a staged file next
//! to its target, chunk by chunk, and is renamed into place only once complete; a full disk
//! or quota is 413 and leaves nothing behind.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use runbox_proto::execd::FileMetadata;
use tokio::io::AsyncWriteExt;

use super::meta::{Names, Wanted};
use super::{blocking, display, fs_error, resolve, Staged};
use crate::error::ApiError;
use crate::AppState;

/// Metadata parts are small JSON objects; anything bigger is a malformed request.
const METADATA_MAX: usize = 64 * 1024;
/// Mode of an uploaded file whose metadata names none.
const DEFAULT_MODE: u32 = 0o644;

/// Bytes read past the closing boundary before giving up on draining the body.
const TRAILER_MAX: usize = 64 * 1024;

pub(super) async fn upload(State(state): State<AppState>, req: Request) -> Result<(), ApiError> {
    // The multipart parser stops at the closing boundary, but a chunked body still has its
    // end marker (and maybe an epilogue) after it. Answering before reading that makes the
    // connection close under a client (or our proxy) that is still writing, which turns a
    // finished upload into a broken pipe. So the body is shared, and drained at the end.
    let (parts, body) = req.into_parts();
    let shared = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let feed = futures_util::stream::unfold(shared.clone(), |s| async move {
        let next = s.lock().await.next().await;
        next.map(|item| (item, s))
    });
    let req = Request::from_parts(parts, Body::from_stream(feed));
    let mut multipart = Multipart::from_request(req, &()).await.map_err(|r| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body: {}",
            r.body_text()
        ))
    })?;
    let result = receive_all(&state, &mut multipart).await;
    drop(multipart);
    let mut extra = 0usize;
    let mut rest = shared.lock().await;
    while let Some(Ok(chunk)) = rest.next().await {
        extra += chunk.len();
        if extra > TRAILER_MAX {
            break;
        }
    }
    result
}

async fn receive_all(state: &AppState, multipart: &mut Multipart) -> Result<(), ApiError> {
    let mut pending: Option<FileMetadata> = None;
    let mut received = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("metadata") => {
                if pending.is_some() {
                    return Err(ApiError::bad_request(
                        "two metadata parts in a row: each must be followed by its file part",
                    ));
                }
                let bytes = read_metadata(&mut field).await?;
                let meta = serde_json::from_slice::<FileMetadata>(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("invalid metadata part: {e}")))?;
                pending = Some(meta);
            }
            Some("file") => {
                let meta = pending.take().ok_or_else(|| {
                    ApiError::bad_request("a file part must follow its metadata part")
                })?;
                receive(state, &meta, &mut field).await?;
                received += 1;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected multipart part {:?}: expected 'metadata' and 'file'",
                    other.unwrap_or_default()
                )))
            }
        }
    }
    if pending.is_some() {
        return Err(ApiError::bad_request(
            "the last metadata part has no file part",
        ));
    }
    if received == 0 {
        return Err(ApiError::bad_request("no file part in the upload"));
    }
    Ok(())
}

async fn read_metadata(field: &mut Field<'_>) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > METADATA_MAX {
            return Err(ApiError::bad_request("metadata part is larger than 64 KiB"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Streams one file part to its target. Parent directories are created as the reference
/// execd does, so `write_file("a/b/c.txt")` works on a fresh sandbox.
async fn receive(
    state: &AppState,
    meta: &FileMetadata,
    field: &mut Field<'_>,
) -> Result<(), ApiError> {
    let mut target = resolve(state, &meta.path)?;
    let shown = display(&target);
    let (mode, owner, group) = (meta.mode, meta.owner.clone(), meta.group.clone());
    let wanted = blocking(move || {
        let names = Names::load();
        Ok(
            Wanted::new(&names, mode, owner.as_deref(), group.as_deref())?
                .with_default_mode(DEFAULT_MODE),
        )
    })
    .await?;

    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| fs_error(&display(parent), e))?;
    }
    match tokio::fs::symlink_metadata(&target).await {
        Ok(md) if md.is_dir() => {
            return Err(ApiError::bad_request(format!("{shown}: is a directory")));
        }
        // Writing through a symlink writes the file it points to, as `cat > link` would.
        Ok(md) if md.is_symlink() => {
            target = tokio::fs::canonicalize(&target)
                .await
                .map_err(|e| fs_error(&shown, e))?;
        }
        _ => {}
    }

    let staging_target = target.clone();
    let (staged, file) = blocking(move || {
        Staged::create(&staging_target).map_err(|e| fs_error(&display(&staging_target), e))
    })
    .await?;
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        file.write_all(&chunk)
            .await
            .map_err(|e| write_error(&shown, e))?;
    }
    file.flush().await.map_err(|e| write_error(&shown, e))?;
    // Delayed allocation can report ENOSPC/EDQUOT only here; better now than after the rename.
    file.sync_all().await.map_err(|e| write_error(&shown, e))?;
    drop(file);

    blocking(move || {
        wanted.apply(staged.path(), &shown)?;
        staged.commit(&target).map_err(|e| fs_error(&shown, e))
    })
    .await
}

/// A failed write of an upload's content. Running out of room is the workspace's disk quota
/// (`runbox.disk`) in all likelihood, so the message says so rather than the bare errno; the
/// staged file is removed when `Staged` drops.
fn write_error(path: &str, e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ApiError::PayloadTooLarge(format!(
            "{path}: no space left in the workspace (its disk quota is full)"
        )),
        _ => fs_error(path, e),
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(e.body_text())
    } else {
        ApiError::bad_request(format!("invalid multipart body: {}", e.body_text()))
    }
}
