//! GET /files/download?path=..: the file as `application/octet-stream`, with single-range
//! requests (206, or 416 for a range outside the file) served by tower-http's `ServeFile`.

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runbox_proto::execd::ErrorResponse;
use tower_http::services::ServeFile;

use super::query::Params;
use super::{fs_error, resolve};
use crate::error::ApiError;
use crate::AppState;

pub(super) async fn download(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let given = params.required("path")?.to_owned();
    let path = resolve(&state, &given)?;
    // Checked here because ServeFile answers a bare 404 for "denied" and would block on
    // opening a FIFO.
    let md = tokio::fs::metadata(&path)
        .await
        .map_err(|e| fs_error(&given, e))?;
    if md.is_dir() {
        return Err(ApiError::bad_request(format!("{given}: is a directory")));
    }
    if !md.is_file() {
        return Err(ApiError::bad_request(format!(
            "{given}: not a regular file"
        )));
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| fs_error(&given, e))?;
    // The official SDK's read_file(path, offset, limit): lines, counted from 1.
    if params.get("offset").is_some() || params.get("limit").is_some() {
        let number = |key: &str| -> Result<Option<usize>, ApiError> {
            params
                .get(key)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        ApiError::bad_request(format!("`{key}` must be a whole number, not `{v}`"))
                    })
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(1).max(1);
        let limit = number("limit")?.unwrap_or(usize::MAX);
        return lines(file, offset, limit)
            .await
            .map_err(|e| fs_error(&given, e));
    }
    drop(file);

    let mut response = ServeFile::new(&path)
        .try_call(req)
        .await
        .map_err(|e| fs_error(&given, e))?
        .map(Body::new);
    match response.status() {
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let content_range = response.headers().get(header::CONTENT_RANGE).cloned();
            let body = ErrorResponse {
                code: "RANGE_NOT_SATISFIABLE".to_owned(),
                message: format!(
                    "{given}: the requested range is not satisfiable (the file has {} bytes; \
                     only one range per request is served)",
                    md.len()
                ),
            };
            let mut error = (StatusCode::RANGE_NOT_SATISFIABLE, Json(body)).into_response();
            if let Some(v) = content_range {
                error.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(error);
        }
        StatusCode::NOT_FOUND => {
            return Err(ApiError::not_found(format!(
                "{given}: no such file or directory"
            )))
        }
        _ => {}
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&name.unwrap_or_default())) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `attachment; filename="..."`, with an RFC 5987 `filename*` when the name is not plain
/// printable ASCII.
fn content_disposition(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!("attachment; filename=\"{name}\"");
    }
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{encoded}\"; filename*=UTF-8''{encoded}")
}

const LINES_MAX_BYTES: usize = 16 << 20;

/// Lines `offset..offset+limit` (1-based) of a text file, read as a stream.
async fn lines(file: tokio::fs::File, offset: usize, limit: usize) -> std::io::Result<Response> {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut n = 0usize;
    while n < offset.saturating_sub(1).saturating_add(limit) {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        n += 1;
        if n >= offset {
            out.extend_from_slice(&line);
        }
        // A line-based read is for text; beyond this, use a Range download.
        if out.len() > LINES_MAX_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the requested lines exceed 16 MiB; download with a Range instead",
            ));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_quote_or_encode_names() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("é\".txt"),
            "attachment; filename=\"%C3%A9%22.txt\"; filename*=UTF-8''%C3%A9%22.txt"
        );
    }
}
