//! Replacing content in place and downloading with ranges.

use std::os::unix::fs::PermissionsExt;

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use serde_json::json;

use crate::{mode_of, q, request, Sandbox};

#[tokio::test]
async fn replace_rewrites_content_and_keeps_the_mode() {
    let sb = Sandbox::new();
    let file = sb.write("cfg.yaml", b"host: localhost:8080\nalt: localhost:8080\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o751)).expect("chmod");
    sb.write("other.txt", b"nothing here");

    let body = json!({
        sb.abs("cfg.yaml"): { "old": "localhost:8080", "new": "0.0.0.0:9090" },
        "other.txt": { "old": "absent", "new": "x" },
    });
    let r = sb.post_json("/files/replace?verbose=true", &body).await;
    r.assert_ok();
    assert_eq!(
        r.json(),
        json!({ sb.abs("cfg.yaml"): { "replacedCount": 2 }, "other.txt": { "replacedCount": 0 } })
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "host: 0.0.0.0:9090\nalt: 0.0.0.0:9090\n"
    );
    assert_eq!(mode_of(&file), 0o751);
    assert!(sb.staged_leftovers("").is_empty());

    // Without verbose the body is empty, as the spec keeps it for older clients.
    let r = sb
        .post_json(
            "/files/replace",
            &json!({ "cfg.yaml": { "old": "0.0.0.0", "new": "127.0.0.1" } }),
        )
        .await;
    r.assert_ok();
    assert!(r.body.is_empty());
    assert!(std::fs::read_to_string(&file)
        .expect("read")
        .starts_with("host: 127.0.0.1:9090"));

    let before = std::fs::read(&file).expect("read");
    sb.post_json(
        "/files/replace",
        &json!({ "cfg.yaml": { "old": "", "new": "x" } }),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST);
    assert_eq!(std::fs::read(&file).expect("read"), before);
    sb.post_json(
        "/files/replace",
        &json!({ "missing.txt": { "old": "a", "new": "b" } }),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
    sb.post_json("/files/replace", &json!({ "cfg.yaml": { "old": "a" } }))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn download_serves_whole_files_and_ranges() {
    let sb = Sandbox::new();
    sb.write("data.csv", b"0123456789");
    let uri = format!("/files/download?path={}", q(&sb.abs("data.csv")));

    let r = sb.get(&uri).await;
    r.assert_ok();
    assert_eq!(&r.body[..], b"0123456789");
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(r.headers[header::CONTENT_LENGTH], "10");
    assert_eq!(
        r.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"data.csv\""
    );

    let ranged = |range: &str| {
        request(Method::GET, &uri)
            .header(header::RANGE, range)
            .body(Body::empty())
            .expect("request")
    };
    let r = sb.send(ranged("bytes=2-5")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], b"2345");
    assert_eq!(r.headers[header::CONTENT_RANGE], "bytes 2-5/10");
    assert_eq!(r.headers[header::CONTENT_LENGTH], "4");
    let r = sb.send(ranged("bytes=-3")).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], b"789");

    let r = sb.send(ranged("bytes=50-60")).await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers[header::CONTENT_RANGE], "bytes */10");

    sb.get("/files/download?path=nope")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    std::fs::create_dir(sb.path("dir")).expect("mkdir");
    sb.get("/files/download?path=dir")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/files/download")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}
