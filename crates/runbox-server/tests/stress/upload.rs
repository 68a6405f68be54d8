//! A 10 GiB multipart upload through the proxy to a sandbox's agent: streamed, never buffered
//! in the server, and ending in a clear error (the sandbox's disk quota) or, where the disk
//! could take it all, cut off by the client once streaming is shown, leaving nothing behind.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{require_root, Server};
use crate::{create, mib, rss, spawn_server, stream_request, AUTH, GIB, MIB};

const PREFIX: &[u8] = b"--runbox-stress\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{\"path\":\"/workspace/big.bin\"}\r\n--runbox-stress\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n";
const SUFFIX: &[u8] = b"\r\n--runbox-stress--\r\n";

/// Bytes of files under `dir`, counting what the disk really holds.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// With `runbox.disk`, the agent's 413 (disk quota full) comes back through the proxy long
/// before the 10 GiB are sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_ten_gib_upload_past_the_disk_quota_is_a_fast_413() {
    let _serial = crate::SERIAL.lock().await;
    require_root!();
    let s = spawn_server(5).await;
    let (id, token) = create(&s, Some(json!({ "runbox.disk": "64Mi" })))
        .await
        .unwrap_or_else(|r| panic!("runbox.disk refused: {} {}", r.status, r.text));
    ten_gib_upload(&s, &id, &token, true).await;
}

/// Without `runbox.disk` the sandbox has the default disk: the upload streams (the server's
/// memory flat all along) until that fills (413), or, if it could take it all, until 2 GiB
/// are through and the client hangs up.
#[tokio::test(flavor = "multi_thread")]
async fn a_ten_gib_upload_with_default_limits_streams_and_leaves_nothing() {
    let _serial = crate::SERIAL.lock().await;
    require_root!();
    let s = spawn_server(5).await;
    let (id, token) = create(&s, None)
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text));
    ten_gib_upload(&s, &id, &token, false).await;
}

async fn ten_gib_upload(s: &Server, id: &str, token: &str, quota: bool) {
    let base = format!("/sandboxes/{id}/port/44772");
    let tok = [("X-EXECD-ACCESS-TOKEN", token)];
    // Warm up the proxy path so one-time allocations do not count as growth.
    assert_eq!(
        s.call_raw("GET", &format!("{base}/ping"), &tok, Vec::new())
            .await
            .status,
        200
    );
    let before = rss();
    let head = format!(
        "POST {base}/files/upload HTTP/1.1\r\nhost: {}\r\nX-EXECD-ACCESS-TOKEN: {token}\r\ncontent-type: multipart/form-data; boundary=runbox-stress\r\ntransfer-encoding: chunked\r\n\r\n",
        s.addr
    );
    let stop_after = if quota { 10 * GIB } else { 2 * GIB };
    let got = stream_request(
        s.addr,
        head,
        PREFIX,
        0,
        10 * GIB,
        SUFFIX,
        stop_after,
        Duration::from_secs(120),
    )
    .await;
    let rate = mib(got.sent_at_reply) / got.elapsed.as_secs_f64();
    eprintln!(
        "10 GiB upload (disk quota: {quota}): {} after {:?} with {:.1} MiB sent ({rate:.0} MiB/s); VmRSS {:.1} -> peak {:.1} MiB",
        got.reply.as_ref().map_or("no response (client hung up)".to_owned(), |r| format!("{} {}", r.status, r.text)),
        got.elapsed,
        mib(got.sent_at_reply),
        mib(before),
        mib(got.peak_rss)
    );
    assert!(
        got.peak_rss.saturating_sub(before) < 64 * MIB,
        "the server buffered the upload: VmRSS grew by {:.1} MiB",
        mib(got.peak_rss.saturating_sub(before))
    );
    if quota {
        let reply = got
            .reply
            .expect("no response to an upload past the disk quota");
        assert_eq!(reply.status, 413, "{}", reply.text);
        let v: Value =
            serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {}", reply.text));
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
        assert!(
            got.sent_at_reply < GIB,
            "the error came only after {:.1} MiB",
            mib(got.sent_at_reply)
        );
    } else {
        // Either the sandbox's default disk filled up (a clear 413), or it could have taken
        // it all and the client hung up after 2 GiB: streaming shown either way.
        match &got.reply {
            Some(reply) => {
                assert_eq!(reply.status, 413, "{}", reply.text);
                let v: Value = serde_json::from_str(&reply.text)
                    .unwrap_or_else(|e| panic!("{e}: {}", reply.text));
                assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
                assert!(
                    got.sent_at_reply >= 256 * MIB,
                    "413 after only {:.1} MiB",
                    mib(got.sent_at_reply)
                );
            }
            None => assert!(
                got.sent_at_reply >= 2 * GIB,
                "only {:.1} MiB went through",
                mib(got.sent_at_reply)
            ),
        }
    }

    // The server and the sandbox still work, and the broken upload left no file behind.
    assert_eq!(
        s.call("GET", "/v1/sandboxes", &[AUTH], None).await.status,
        200
    );
    let r = s
        .call(
            "POST",
            &format!("{base}/command"),
            &tok,
            Some(json!({ "command": "echo alive; ls -A /workspace" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("alive"), "{}", r.text);
    assert!(
        !r.text.contains("big.bin"),
        "a partial upload is visible: {}",
        r.text
    );
    let workspace = s.data_dir().join("workspaces").join(id);
    let start = Instant::now();
    let mut left = disk_usage(&workspace);
    while left > 16 * MIB && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = disk_usage(&workspace);
    }
    eprintln!(
        "workspace after the broken upload: {:.1} MiB on disk",
        mib(left)
    );
    assert!(
        left <= 16 * MIB,
        "the broken upload left {:.1} MiB in {}",
        mib(left),
        workspace.display()
    );
}
