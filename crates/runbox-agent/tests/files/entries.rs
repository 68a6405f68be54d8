//! info, delete, permissions, mv, and creating and removing directories.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use axum::http::StatusCode;
use serde_json::json;

use crate::{is_root, mode_of, q, skip, Sandbox};

#[tokio::test]
async fn info_returns_a_map_of_path_to_file_info() {
    let sb = Sandbox::new();
    let file = sb.write("a.txt", b"hello");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    std::fs::create_dir(sb.path("sub")).expect("mkdir");
    std::os::unix::fs::symlink("a.txt", sb.path("link")).expect("symlink");

    let r = sb
        .get(&format!(
            "/files/info?path={}&path=sub&path=link",
            q(&sb.abs("a.txt"))
        ))
        .await;
    r.assert_ok();
    let v = r.json();
    let a = &v[sb.abs("a.txt")];
    assert_eq!(a["path"], sb.abs("a.txt"));
    assert_eq!(a["type"], "file");
    assert_eq!(a["size"], 5);
    assert_eq!(a["mode"], 640);
    let uid = std::fs::metadata(&file).expect("stat").uid();
    if uid == 0 {
        assert_eq!(a["owner"], "root");
    }
    assert!(a["group"].as_str().is_some_and(|g| !g.is_empty()));
    for key in ["modified_at", "created_at"] {
        let t = a[key].as_str().expect("timestamp string");
        assert!(
            t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T",
            "{key}: {t}"
        );
    }
    // A relative path is the workspace's; the key stays as the client wrote it.
    assert_eq!(v["sub"]["type"], "directory");
    assert_eq!(v["sub"]["path"], sb.abs("sub"));
    assert_eq!(v["link"]["type"], "symlink");

    let r = sb
        .get(&format!("/files/info?path={}", q(&sb.abs("nope"))))
        .await;
    assert_eq!(r.assert_error(StatusCode::NOT_FOUND)["code"], "NOT_FOUND");
    sb.get("/files/info")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/files/info?path=")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/files/info?path=a%00b")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    let too_long = "n".repeat(300);
    sb.get(&format!("/files/info?path={too_long}"))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn delete_removes_files_only() {
    let sb = Sandbox::new();
    sb.write("a.txt", b"x");
    sb.write("b.txt", b"y");
    std::fs::create_dir(sb.path("dir")).expect("mkdir");

    let r = sb
        .delete(&format!("/files?path={}&path=b.txt", q(&sb.abs("a.txt"))))
        .await;
    r.assert_ok();
    assert!(!sb.path("a.txt").exists() && !sb.path("b.txt").exists());
    // Already gone: nothing to do, like rm -f.
    sb.delete("/files?path=a.txt").await.assert_ok();
    sb.delete("/files?path=dir")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    assert!(sb.path("dir").is_dir());
    sb.delete("/files")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn permissions_chmod_and_refuse_bad_input() {
    let sb = Sandbox::new();
    let file = sb.write("run.sh", b"#!/bin/sh\n");

    let r = sb
        .post_json(
            "/files/permissions",
            &json!({ sb.abs("run.sh"): { "mode": 755 } }),
        )
        .await;
    r.assert_ok();
    assert_eq!(mode_of(&file), 0o755);
    sb.post_json("/files/permissions", &json!({ "run.sh": { "mode": 600 } }))
        .await
        .assert_ok();
    assert_eq!(mode_of(&file), 0o600);

    for bad in [
        json!({ "run.sh": { "mode": 799 } }),
        json!({ "run.sh": { "mode": 755, "owner": "no-such-user-xyz" } }),
    ] {
        sb.post_json("/files/permissions", &bad)
            .await
            .assert_error(StatusCode::BAD_REQUEST);
    }
    assert_eq!(mode_of(&file), 0o600, "a rejected request changes nothing");
    sb.post_json("/files/permissions", &json!({ "missing": { "mode": 644 } }))
        .await
        .assert_error(StatusCode::NOT_FOUND);

    // Naming the current owner is a no-op chown and always allowed.
    let uid = std::fs::metadata(&file).expect("stat").uid().to_string();
    sb.post_json(
        "/files/permissions",
        &json!({ "run.sh": { "mode": 644, "owner": uid } }),
    )
    .await
    .assert_ok();
    if is_root() {
        skip(
            "permissions_chmod_and_refuse_bad_input",
            "running as root, chown to another user is allowed",
        );
    } else {
        let r = sb
            .post_json(
                "/files/permissions",
                &json!({ "run.sh": { "mode": 644, "owner": "0" } }),
            )
            .await;
        r.assert_error(StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn mv_renames_and_refuses_to_overwrite() {
    let sb = Sandbox::new();
    sb.write("a.txt", b"a");
    sb.write("b.txt", b"b");

    let r = sb
        .post_json(
            "/files/mv",
            &json!([{ "src": sb.abs("a.txt"), "dest": sb.abs("moved/deeper/a.txt") }]),
        )
        .await;
    r.assert_ok();
    assert!(!sb.path("a.txt").exists());
    assert_eq!(
        std::fs::read(sb.path("moved/deeper/a.txt")).expect("moved"),
        b"a"
    );

    let r = sb
        .post_json(
            "/files/mv",
            &json!([{ "src": "b.txt", "dest": "moved/deeper/a.txt" }]),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT);
    assert_eq!(std::fs::read(sb.path("b.txt")).expect("untouched"), b"b");
    sb.post_json(
        "/files/mv",
        &json!([{ "src": "gone.txt", "dest": "x.txt" }]),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
    sb.post_json("/files/mv", &json!([{ "src": "b.txt" }]))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn directories_are_created_with_their_mode_and_removed_recursively() {
    let sb = Sandbox::new();
    let r = sb
        .post_json(
            "/directories",
            &json!({ sb.abs("proj/src/deep"): { "mode": 700 }, "logs": { "mode": 755 } }),
        )
        .await;
    r.assert_ok();
    assert!(sb.path("proj/src/deep").is_dir() && sb.path("logs").is_dir());
    assert_eq!(mode_of(&sb.path("proj/src/deep")), 0o700);
    assert_eq!(mode_of(&sb.path("logs")), 0o755);
    // Existing directories are fine; a file in the way is not.
    sb.post_json("/directories", &json!({ "logs": { "mode": 700 } }))
        .await
        .assert_ok();
    assert_eq!(
        mode_of(&sb.path("logs")),
        0o755,
        "an existing directory is left as it is"
    );
    sb.write("file", b"");
    sb.post_json("/directories", &json!({ "file": { "mode": 755 } }))
        .await
        .assert_error(StatusCode::CONFLICT);
    sb.post_json("/directories", &json!({ "file/sub": { "mode": 755 } }))
        .await
        .assert_error(StatusCode::BAD_REQUEST);

    sb.write("keep/precious.txt", b"keep me");
    std::os::unix::fs::symlink(sb.path("keep"), sb.path("proj/src/link")).expect("symlink");
    sb.delete(&format!("/directories?path={}", q(&sb.abs("proj"))))
        .await
        .assert_ok();
    assert!(!sb.path("proj").exists());
    assert_eq!(
        std::fs::read(sb.path("keep/precious.txt")).expect("not followed"),
        b"keep me"
    );
    sb.delete("/directories?path=proj").await.assert_ok();
    sb.delete("/directories?path=file")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    assert!(sb.path("file").exists());
}
