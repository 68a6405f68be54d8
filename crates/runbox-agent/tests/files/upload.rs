//! Multipart uploads: metadata pairs, streaming, and clean failures.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::{is_root, mode_of, request, skip, Sandbox};

const BOUNDARY: &str = "runbox-test-boundary-7d1f";

fn part_head(name: &str, filename: &str, content_type: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
}

/// A multipart body of (metadata JSON, content) pairs, as the SDKs send it.
fn multipart(files: &[(Value, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (meta, content) in files {
        body.extend(part_head("metadata", "metadata", "application/json").as_bytes());
        body.extend(meta.to_string().as_bytes());
        body.extend(b"\r\n");
        body.extend(part_head("file", "upload", "application/octet-stream").as_bytes());
        body.extend(*content);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload_request(body: Body) -> Request<Body> {
    request(Method::POST, "/files/upload")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .expect("request")
}

#[tokio::test]
async fn upload_writes_files_with_their_metadata() {
    let sb = Sandbox::new();
    let body = multipart(&[
        (
            json!({ "path": sb.abs("up/one.sh"), "owner": null, "group": null, "mode": 755 }),
            b"#!/bin/sh\necho hi\n",
        ),
        (json!({ "path": "two.txt" }), b"second"),
    ]);
    let r = sb.send(upload_request(Body::from(body))).await;
    r.assert_ok();
    assert_eq!(
        std::fs::read(sb.path("up/one.sh")).expect("uploaded"),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode_of(&sb.path("up/one.sh")), 0o755);
    assert_eq!(
        std::fs::read(sb.path("two.txt")).expect("uploaded"),
        b"second"
    );
    assert_eq!(mode_of(&sb.path("two.txt")), 0o644);
    assert!(sb.staged_leftovers("up").is_empty() && sb.staged_leftovers("").is_empty());

    // Overwriting replaces the content.
    let body = multipart(&[(json!({ "path": "two.txt" }), b"2")]);
    sb.send(upload_request(Body::from(body))).await.assert_ok();
    assert_eq!(std::fs::read(sb.path("two.txt")).expect("uploaded"), b"2");
}

#[tokio::test]
async fn upload_of_twenty_mebibytes_streams_intact() {
    const SIZE: usize = 20 << 20;
    const CHUNK: usize = 64 << 10;
    let byte = |i: usize| ((i * 31 + i / 4093) % 251) as u8;
    let sb = Sandbox::new();

    // The request body is generated chunk by chunk, so neither side holds 20 MiB at once.
    let head = format!(
        "{}{}\r\n{}",
        part_head("metadata", "metadata", "application/json"),
        json!({ "path": "big.bin", "mode": 644 }),
        part_head("file", "big.bin", "application/octet-stream")
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let chunks =
        std::iter::once(Bytes::from(head))
            .chain((0..SIZE / CHUNK).map(move |c| {
                Bytes::from((c * CHUNK..(c + 1) * CHUNK).map(byte).collect::<Vec<u8>>())
            }))
            .chain(std::iter::once(Bytes::from(tail)))
            .map(Ok::<_, std::io::Error>);
    let r = sb
        .send(upload_request(Body::from_stream(
            futures_util::stream::iter(chunks),
        )))
        .await;
    r.assert_ok();

    let got = std::fs::read(sb.path("big.bin")).expect("uploaded");
    assert_eq!(got.len(), SIZE);
    let first_bad = got.iter().enumerate().position(|(i, b)| *b != byte(i));
    assert_eq!(first_bad, None, "content differs");
    assert!(sb.staged_leftovers("").is_empty());
}

#[tokio::test]
async fn upload_into_an_impossible_directory_is_a_clean_error() {
    let sb = Sandbox::new();
    sb.write("plain-file", b"x");
    // The parent "directory" is a regular file: it cannot exist, and cannot be created.
    let body = multipart(&[(json!({ "path": sb.abs("plain-file/sub/x.txt") }), b"data")]);
    sb.send(upload_request(Body::from(body)))
        .await
        .assert_error(StatusCode::BAD_REQUEST);

    if is_root() {
        skip(
            "upload_into_an_impossible_directory_is_a_clean_error",
            "running as root, a mode-0555 directory is still writable",
        );
    } else {
        std::fs::create_dir(sb.path("ro")).expect("mkdir");
        std::fs::set_permissions(sb.path("ro"), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        for target in ["ro/x.txt", "ro/new/x.txt"] {
            let body = multipart(&[(json!({ "path": target }), b"data")]);
            sb.send(upload_request(Body::from(body)))
                .await
                .assert_error(StatusCode::FORBIDDEN);
        }
        assert_eq!(std::fs::read_dir(sb.path("ro")).expect("list").count(), 0);
    }

    // Malformed uploads.
    let no_file = format!(
        "{}{}\r\n--{BOUNDARY}--\r\n",
        part_head("metadata", "metadata", "application/json"),
        json!({ "path": "x.txt" })
    );
    let file_first = format!(
        "{}data\r\n--{BOUNDARY}--\r\n",
        part_head("file", "x", "application/octet-stream")
    );
    let bad_meta = multipart(&[(json!({ "mode": 644 }), b"data")]);
    let empty_path = multipart(&[(json!({ "path": "" }), b"data")]);
    for body in [
        no_file.into_bytes(),
        file_first.into_bytes(),
        bad_meta,
        empty_path,
    ] {
        sb.send(upload_request(Body::from(body)))
            .await
            .assert_error(StatusCode::BAD_REQUEST);
    }
    sb.post_json("/files/upload", &json!({}))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    assert!(!sb.path("x.txt").exists());
    assert!(sb.staged_leftovers("").is_empty());
}

/// Unmounts a test's filesystem when the test ends, passed or not.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[tokio::test]
async fn upload_to_a_full_disk_is_413_and_leaves_nothing() {
    const TEST: &str = "upload_to_a_full_disk_is_413_and_leaves_nothing";
    let sb = Sandbox::new();
    let small = sb.path("small");
    std::fs::create_dir(&small).expect("mkdir");
    if !is_root() {
        skip(TEST, "mounting a 1 MiB tmpfs needs root");
        return;
    }
    let mounted = rustix::mount::mount(
        "tmpfs",
        &small,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    );
    if let Err(e) = mounted {
        skip(TEST, &format!("cannot mount a tmpfs: {e}"));
        return;
    }
    let _unmount = Unmount(small.clone());

    let content = vec![7u8; 3 << 20];
    let body = multipart(&[(json!({ "path": "small/big.bin" }), &content)]);
    let v = sb
        .send(upload_request(Body::from(body)))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["code"], "PAYLOAD_TOO_LARGE");
    let left: Vec<_> = std::fs::read_dir(&small)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "partial upload left behind: {left:?}");
}
