//! POST /files/replace: replace every occurrence of a string in files, streaming, so a file
//! of any size is rewritten in bounded memory. The result is staged next to the file and
//! renamed over it (a reader never sees half a file); when that would change the file's
//! owner or split a hard link, the result is copied back into the original inode instead.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runbox_proto::execd::{ReplaceFileContentItem, ReplaceFileContentResult};

use super::query::Params;
use super::{blocking, fs_error, resolve, Staged};
use crate::error::{ApiError, JsonBody};
use crate::AppState;

const CHUNK: usize = 256 * 1024;

/// With `verbose=true` the body maps each path to its replacement count; without it the body
/// is empty, as the spec keeps it for older clients.
pub(super) async fn replace(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    JsonBody(body): JsonBody<BTreeMap<String, ReplaceFileContentItem>>,
) -> Result<Response, ApiError> {
    let verbose = Params::parse(raw.as_deref())?.flag("verbose")?;
    let mut jobs = Vec::with_capacity(body.len());
    for (given, item) in body {
        if item.old.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{given}: 'old' must not be empty"
            )));
        }
        let path = resolve(&state, &given)?;
        jobs.push((given, path, item));
    }
    let results = blocking(move || {
        let mut results = BTreeMap::new();
        for (given, path, item) in jobs {
            let replaced_count = replace_in_file(&path, item.old.as_bytes(), item.new.as_bytes())
                .map_err(|e| e.for_path(&given))?;
            results.insert(given, ReplaceFileContentResult { replaced_count });
        }
        Ok(results)
    })
    .await?;
    Ok(if verbose {
        Json(results).into_response()
    } else {
        ().into_response()
    })
}

/// Why one file could not be rewritten, before the client's spelling of its path is known.
#[derive(Debug)]
enum Failure {
    Io(std::io::Error),
    NotAFile,
}

impl Failure {
    fn for_path(self, given: &str) -> ApiError {
        match self {
            Self::Io(e) => fs_error(given, e),
            Self::NotAFile => ApiError::bad_request(format!("{given}: not a regular file")),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

fn replace_in_file(path: &Path, old: &[u8], new: &[u8]) -> Result<u64, Failure> {
    // Through a symlink, rewrite the file it points to, not the link.
    let path = std::fs::canonicalize(path)?;
    let md = std::fs::metadata(&path)?;
    if !md.is_file() {
        return Err(Failure::NotAFile);
    }
    let mut input = File::open(&path)?;
    let (staged, file) = Staged::create(&path)?;
    let mut out = BufWriter::new(file);
    let count = stream_replace(&mut input, &mut out, old, new, CHUNK)?;
    if count == 0 {
        return Ok(0);
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.set_permissions(md.permissions())?;
    let mut staged_md = file.metadata()?;
    if staged_md.uid() != md.uid() || staged_md.gid() != md.gid() {
        let _ = std::os::unix::fs::fchown(&file, Some(md.uid()), Some(md.gid()));
        staged_md = file.metadata()?;
    }
    file.sync_all()?;
    drop(file);
    if staged_md.uid() == md.uid() && staged_md.gid() == md.gid() && md.nlink() == 1 {
        staged.commit(&path)?;
    } else {
        let mut result = File::open(staged.path())?;
        let mut original = OpenOptions::new().write(true).truncate(true).open(&path)?;
        std::io::copy(&mut result, &mut original)?;
        original.sync_all()?;
    }
    Ok(count)
}

/// Copies `input` to `out` with every non-overlapping `old` (left to right) replaced by `new`;
/// returns how many were replaced. Holds at most `chunk + old.len()` bytes.
fn stream_replace(
    input: &mut impl Read,
    out: &mut impl Write,
    old: &[u8],
    new: &[u8],
    chunk: usize,
) -> std::io::Result<u64> {
    let mut buf = Vec::with_capacity(chunk + old.len());
    let mut read_buf = vec![0u8; chunk];
    let mut count = 0;
    loop {
        let n = match input.read(&mut read_buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let eof = n == 0;
        buf.extend_from_slice(&read_buf[..n]);
        let mut start = 0;
        while let Some(at) = find(&buf[start..], old) {
            out.write_all(&buf[start..start + at])?;
            out.write_all(new)?;
            count += 1;
            start += at + old.len();
        }
        // A match not yet complete can only begin in the last old.len() - 1 bytes.
        let keep = if eof {
            0
        } else {
            (old.len() - 1).min(buf.len() - start)
        };
        let done = buf.len() - keep;
        out.write_all(&buf[start..done])?;
        buf.drain(..done);
        if eof {
            out.flush()?;
            return Ok(count);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        i += hay[i..=last_start].iter().position(|&b| b == first)?;
        if hay[i..i + needle.len()] == *needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, old: &str, new: &str, chunk: usize) -> (String, u64) {
        let mut out = Vec::new();
        let n = stream_replace(
            &mut input.as_bytes(),
            &mut out,
            old.as_bytes(),
            new.as_bytes(),
            chunk,
        )
        .expect("in-memory replace");
        (String::from_utf8(out).expect("utf-8"), n)
    }

    #[test]
    fn matches_across_chunk_boundaries_are_found() {
        let input = "abcabcXabcab";
        for chunk in 1..=input.len() + 1 {
            assert_eq!(
                run(input, "abc", "Z", chunk),
                ("ZZXZab".to_owned(), 3),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn replacement_is_non_overlapping_like_replace_all() {
        assert_eq!(run("aaaa", "aa", "b", 3), ("bb".to_owned(), 2));
        assert_eq!(run("aaa", "aa", "b", 1), ("ba".to_owned(), 1));
        assert_eq!(run("xyz", "q", "b", 2), ("xyz".to_owned(), 0));
        assert_eq!(run("", "q", "b", 2), (String::new(), 0));
        assert_eq!(run("a.a", ".", "", 2), ("aa".to_owned(), 1));
    }
}
