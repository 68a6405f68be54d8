//! search and directory listing.

use axum::http::StatusCode;

use crate::{q, Reply, Sandbox};

#[tokio::test]
async fn search_globs_recursively_without_leaving_the_tree() {
    let sb = Sandbox::new();
    sb.write("root/a.txt", b"");
    sb.write("root/sub/b.txt", b"");
    sb.write("root/sub/c.rs", b"");
    sb.write("outside/x.txt", b"");
    std::os::unix::fs::symlink(sb.path("outside"), sb.path("root/link")).expect("symlink");

    let paths = |r: &Reply| -> Vec<String> {
        r.assert_ok();
        let mut v: Vec<String> = r
            .json()
            .as_array()
            .expect("array of FileInfo")
            .iter()
            .map(|f| f["path"].as_str().expect("path").to_owned())
            .collect();
        v.sort();
        v
    };
    let root = sb.abs("root");
    let r = sb
        .get(&format!(
            "/files/search?path={}&pattern={}",
            q(&root),
            q("*.txt")
        ))
        .await;
    assert_eq!(
        paths(&r),
        vec![sb.abs("root/a.txt"), sb.abs("root/sub/b.txt")]
    );
    let r = sb
        .get(&format!(
            "/files/search?path={}&pattern={}",
            q(&root),
            q("sub/*.rs")
        ))
        .await;
    assert_eq!(paths(&r), vec![sb.abs("root/sub/c.rs")]);
    // Default `**`: every non-directory, the symlink itself but nothing behind it.
    let r = sb.get("/files/search?path=root").await;
    assert_eq!(
        paths(&r),
        vec![
            sb.abs("root/a.txt"),
            sb.abs("root/link"),
            sb.abs("root/sub/b.txt"),
            sb.abs("root/sub/c.rs")
        ]
    );
    assert_eq!(r.json()[0]["type"], "file");

    sb.get("/files/search?path=root&pattern=%5Babc")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/files/search?path=nope")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    sb.get("/files/search?path=root/a.txt")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/files/search")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn search_stops_at_ten_thousand_matches() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("many")).expect("mkdir");
    for i in 0..10_010 {
        std::fs::File::create(sb.path(&format!("many/f{i}"))).expect("create");
    }
    let r = sb.get("/files/search?path=many").await;
    r.assert_ok();
    assert_eq!(r.json().as_array().expect("array").len(), 10_000);
    assert_eq!(
        r.headers.get("x-runbox-truncated").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
}

#[tokio::test]
async fn directories_list_respects_depth_order_and_symlinks() {
    let sb = Sandbox::new();
    sb.write("p/a/x", b"");
    sb.write("p/a/b/y", b"12");
    sb.write("p/z.txt", b"");
    std::os::unix::fs::symlink(sb.path("p/a"), sb.path("p/link")).expect("symlink");

    let list = |r: Reply| -> Vec<(String, String)> {
        r.assert_ok();
        r.json()
            .as_array()
            .expect("array of FileInfo")
            .iter()
            .map(|f| {
                let p = f["path"].as_str().expect("path");
                let rel = p
                    .strip_prefix(&sb.abs("p/"))
                    .expect("under root")
                    .to_owned();
                (rel, f["type"].as_str().expect("type").to_owned())
            })
            .collect()
    };
    let d = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect()
    };
    let root = q(&sb.abs("p"));

    let r = sb.get(&format!("/directories/list?path={root}")).await;
    assert_eq!(
        list(r),
        d(&[("a", "directory"), ("link", "symlink"), ("z.txt", "file")])
    );
    let r = sb
        .get(&format!("/directories/list?path={root}&depth=2"))
        .await;
    assert_eq!(
        list(r),
        d(&[
            ("a", "directory"),
            ("a/b", "directory"),
            ("a/x", "file"),
            ("link", "symlink"),
            ("z.txt", "file")
        ])
    );
    let r = sb
        .get(&format!("/directories/list?path={root}&depth=9"))
        .await;
    assert_eq!(
        list(r),
        d(&[
            ("a", "directory"),
            ("a/b", "directory"),
            ("a/b/y", "file"),
            ("a/x", "file"),
            ("link", "symlink"),
            ("z.txt", "file"),
        ])
    );
    let r = sb
        .get(&format!("/directories/list?path={root}&depth=0"))
        .await;
    assert_eq!(list(r), d(&[]));

    sb.get("/directories/list?path=p/link")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/directories/list?path=p/z.txt")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/directories/list?path=p&depth=-1")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    sb.get("/directories/list?path=nope")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    sb.get("/directories/list")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}
