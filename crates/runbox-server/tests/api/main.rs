//! The server end to end: a real listener on a random port with a temp data dir, real native
//! sandboxes, a small HTTP client. Tenancy and auth are checked on every lifecycle route.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use runbox_server::config::{Config, Quotas, TenantConfig};
use serde_json::{json, Value};

use support::{built_binary, require_root, temp_dir, Connections, Reply, Server};

/// The backend under test: `RUNBOX_TEST_RUNTIME` (native, docker or gvisor; default native).
/// scripts/test.sh runs this whole file once per backend: the conformance suite.
fn test_runtime() -> runbox_server::config::RuntimeConfig {
    let default = std::env::var("RUNBOX_TEST_RUNTIME")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().expect("RUNBOX_TEST_RUNTIME"))
        .unwrap_or(runbox_runtime::Backend::Native);
    runbox_server::config::RuntimeConfig {
        default,
        ..Default::default()
    }
}

const KEY_A: &str = "key-of-tenant-a-123";
const KEY_B: &str = "key-of-tenant-b-456";

async fn spawn_server(max_sandboxes: usize) -> Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: temp_dir("runbox-server-test"),
        tenants: vec![
            TenantConfig {
                name: "a".into(),
                keys: vec![KEY_A.into()],
            },
            TenantConfig {
                name: "b".into(),
                keys: vec![KEY_B.into()],
            },
        ],
        quotas: Quotas {
            max_sandboxes,
            max_memory: "64Gi".into(),
        },
        runtime: test_runtime(),
        ..Config::default()
    };
    let state = runbox_server::AppState::new(config, built_binary("runbox-agent")).expect("state");
    Server::start(state, Connections::Axum).await
}

fn key(k: &str) -> [(&str, &str); 1] {
    [("OPEN-SANDBOX-API-KEY", k)]
}

async fn create(s: &Server, k: &str) -> String {
    let body = json!({ "image": { "uri": "python:3.11" }, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 600, "resourceLimits": { "cpu": "1", "memory": "512Mi" }, "metadata": { "project": "apollo" } });
    let r = s.call("POST", "/v1/sandboxes", &key(k), Some(body)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.headers.get("location").is_some());
    let v = r.json();
    assert_eq!(v["status"]["state"], "Running");
    assert_eq!(v["entrypoint"], json!(["tail", "-f", "/dev/null"]));
    v["id"].as_str().expect("id").to_owned()
}

/// Tenant A's audit records of one kind for sandbox `id`.
async fn audit_of(s: &Server, id: &str, kind: &str) -> Value {
    s.call(
        "GET",
        &format!("/v1/audit?sandbox={id}&kind={kind}"),
        &key(KEY_A),
        None,
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_open_and_every_response_has_a_request_id() {
    require_root!();
    let s = spawn_server(5).await;
    let r = s.call("GET", "/health", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-request-id").is_some());
    let r = s
        .call("GET", "/v1/sandboxes", &[("x-request-id", "abc123")], None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("abc123")
    );
    assert_eq!(r.json()["code"], "UNAUTHORIZED");
    let r = s
        .call("GET", "/v1/sandboxes", &key("wrong-key-000000"), None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_and_proxy_end_to_end() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let r = s
        .call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await;
    assert_eq!(r.json()["image"]["uri"], "python:3.11");
    let ep = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/endpoints/44772"),
            &key(KEY_A),
            None,
        )
        .await
        .json();
    let endpoint = ep["endpoint"].as_str().expect("endpoint").to_owned();
    assert_eq!(endpoint, format!("{}/sandboxes/{id}/port/44772", s.addr));
    let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
        .as_str()
        .expect("token")
        .to_owned();
    let path = endpoint.trim_start_matches(&s.addr.to_string()).to_owned();
    let tok = [("X-EXECD-ACCESS-TOKEN", token.as_str())];
    assert_eq!(
        s.call("GET", &format!("{path}/ping"), &tok, None)
            .await
            .status,
        200
    );
    assert_eq!(
        s.call("GET", &format!("{path}/ping"), &[], None)
            .await
            .status,
        404
    );
    let r = s
        .call(
            "POST",
            &format!("{path}/command"),
            &tok,
            Some(json!({ "command": "echo hi; exit 4" })),
        )
        .await;
    assert!(r.text.contains("\"text\":\"hi\""), "{}", r.text);
    assert!(r.text.contains("\"evalue\":\"4\""));
    let r = s
        .call(
            "POST",
            &format!("{path}/code"),
            &tok,
            Some(json!({ "context": { "language": "python" }, "code": "6 * 7" })),
        )
        .await;
    assert!(r.text.contains("\"text\":\"42\""), "{}", r.text);
    // The audit log saw both, with outcomes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let audit = s
        .call("GET", &format!("/v1/audit?sandbox={id}"), &key(KEY_A), None)
        .await
        .json();
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"command") && kinds.contains(&"code") && kinds.contains(&"sandbox.create"),
        "{audit}"
    );
    let cmd = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "command")
        .expect("command record");
    assert_eq!(cmd["exit_code"], 4);
    assert_eq!(cmd["detail"]["text"], "echo hi; exit 4");
    let exe = s
        .call(
            "GET",
            &format!("/v1/executions/{}", cmd["id"].as_str().expect("id")),
            &key(KEY_A),
            None,
        )
        .await;
    assert_eq!(exe.status, 200);
    assert_eq!(
        s.call(
            "GET",
            &format!("/v1/executions/{}", cmd["id"].as_str().expect("id")),
            &key(KEY_B),
            None
        )
        .await
        .status,
        404
    );
    // Delete: gone from the proxy, recorded as terminated.
    assert_eq!(
        s.call("DELETE", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .status,
        204
    );
    assert_eq!(
        s.call("GET", &format!("{path}/ping"), &tok, None)
            .await
            .status,
        404
    );
    let r = s
        .call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await
        .json();
    assert_eq!(r["status"]["state"], "Terminated");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_sandbox_is_indistinguishable_from_none() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let missing = "0".repeat(32);
    for (method, suffix, body) in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("PATCH", "/metadata", Some(json!({ "x": "y" }))),
        (
            "POST",
            "/renew-expiration",
            Some(json!({ "expiresAt": "2099-01-01T00:00:00Z" })),
        ),
        ("GET", "/endpoints/44772", None),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
    ] {
        let theirs = s
            .call(
                method,
                &format!("/v1/sandboxes/{id}{suffix}"),
                &key(KEY_B),
                body.clone(),
            )
            .await;
        let none = s
            .call(
                method,
                &format!("/v1/sandboxes/{missing}{suffix}"),
                &key(KEY_B),
                body,
            )
            .await;
        assert_eq!(theirs.status, 404, "{method} {suffix}: {}", theirs.text);
        assert_eq!(none.status, 404);
        assert_eq!(theirs.json()["code"], none.json()["code"]);
        assert_eq!(
            theirs.json()["message"]
                .as_str()
                .map(|m| m.replace(&id, "ID")),
            none.json()["message"]
                .as_str()
                .map(|m| m.replace(&missing, "ID"))
        );
    }
    let list = s
        .call("GET", "/v1/sandboxes", &key(KEY_B), None)
        .await
        .json();
    assert_eq!(list["pagination"]["totalItems"], 0);
    // Still alive for its owner.
    assert_eq!(
        s.call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .json()["status"]["state"],
        "Running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_holds_under_parallel_creates() {
    require_root!();
    let s = std::sync::Arc::new(spawn_server(3).await);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "500m", "memory": "256Mi" } });
            s.call("POST", "/v1/sandboxes", &key(KEY_A), Some(body)).await
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 429 {
            assert_eq!(r.json()["code"], "QUOTA_EXCEEDED");
        }
        codes.push(r.status);
    }
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_metadata_patch_and_renewal() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let r = s
        .call(
            "PATCH",
            &format!("/v1/sandboxes/{id}/metadata"),
            &key(KEY_A),
            Some(json!({ "project": null, "team": "ml" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["metadata"], json!({ "team": "ml" }));
    let found = s
        .call(
            "GET",
            "/v1/sandboxes?state=Running&metadata=team%3Dml",
            &key(KEY_A),
            None,
        )
        .await
        .json();
    assert_eq!(found["pagination"]["totalItems"], 1);
    let none = s
        .call(
            "GET",
            "/v1/sandboxes?metadata=team%3Dother",
            &key(KEY_A),
            None,
        )
        .await
        .json();
    assert_eq!(none["pagination"]["totalItems"], 0);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let stamp = soon
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let r = s
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            &key(KEY_A),
            Some(json!({ "expiresAt": stamp })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = s
        .call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await
        .json();
    assert_eq!(r["status"]["state"], "Terminated");
    assert_eq!(r["status"]["reason"], "ttl_expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_with_the_error_shape() {
    require_root!();
    let s = spawn_server(5).await;
    for body in [
        json!({ "image": { "uri": "x" }, "timeout": 10 }),
        json!({ "image": { "uri": "x" }, "bogus": true }),
        json!({ "image": { "uri": "x" }, "timeout": "soon" }),
        json!({ "image": { "uri": "x" }, "resourceLimits": { "memory": "lots" } }),
        json!({ "image": { "uri": "x" }, "extensions": { "runbox.unknown": "1" } }),
        json!({ "image": { "uri": "x" }, "networkPolicy": { "defaultAction": "allow" } }),
        json!({ "snapshotId": "snap" }),
    ] {
        let r = s
            .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.json()["message"].is_string());
    }
    let huge = "x".repeat(2 << 20);
    let r = s
        .call(
            "POST",
            "/v1/sandboxes",
            &key(KEY_A),
            Some(json!({ "pad": huge })),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.json()["code"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_pool_serves_matching_creates_with_modules_preloaded() {
    require_root!();
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: temp_dir("runbox-server-pool"),
        tenants: vec![TenantConfig {
            name: "a".into(),
            keys: vec![KEY_A.into()],
        }],
        pools: vec![runbox_server::config::PoolConfig {
            image: "default".into(),
            runtime: None,
            memory: "512Mi".into(),
            cpu: "1".into(),
            pids: 256,
            size: 1,
            preload: vec!["json".into()],
        }],
        runtime: test_runtime(),
        ..Config::default()
    };
    let state = runbox_server::AppState::new(config, built_binary("runbox-agent")).expect("state");
    state.prepare().await;
    let manager = state.manager.clone();
    tokio::spawn(manager.clone().fill_pools());
    let s = Server::serve(state, Connections::Axum).await;
    for _ in 0..100 {
        if manager.pooled() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(manager.pooled(), 1, "the pool did not fill");
    let body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "512Mi" } });
    let r = s
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let audit = audit_of(&s, &id, "sandbox.create").await;
    assert_eq!(audit["items"][0]["detail"]["from_pool"], true, "{audit}");
    let metrics = s.call("GET", "/metrics", &[], None).await.text;
    assert!(
        metrics.contains("runbox_sandboxes_created_from_pool_total 1"),
        "{metrics}"
    );
    // The pool refills.
    for _ in 0..100 {
        if manager.pooled() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(manager.pooled(), 1, "the pool did not refill");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_freezes_and_resume_thaws() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    assert_eq!(
        s.call(
            "POST",
            &format!("/v1/sandboxes/{id}/pause"),
            &key(KEY_A),
            None
        )
        .await
        .status,
        202
    );
    assert_eq!(
        s.call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .json()["status"]["state"],
        "Paused"
    );
    assert_eq!(
        s.call(
            "POST",
            &format!("/v1/sandboxes/{id}/resume"),
            &key(KEY_A),
            None
        )
        .await
        .status,
        202
    );
    assert_eq!(
        s.call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .json()["status"]["state"],
        "Running"
    );
    let token = s.access_token(&id, 44772, &key(KEY_A)).await;
    let r = s
        .call(
            "GET",
            &format!("/sandboxes/{id}/port/44772/ping"),
            &[("X-EXECD-ACCESS-TOKEN", token.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // Deleting a paused sandbox works too.
    s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/pause"),
        &key(KEY_A),
        None,
    )
    .await;
    assert_eq!(
        s.call("DELETE", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sandboxes_are_ended() {
    require_root!();
    let s = spawn_server(5).await;
    let body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "256Mi" }, "extensions": { "runbox.idle_timeout": "2" } });
    let r = s
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let v = s
        .call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await
        .json();
    assert_eq!(v["status"]["state"], "Terminated");
    assert_eq!(v["status"]["reason"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_ports_reach_services_inside_the_sandbox() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let token = s.access_token(&id, 8000, &key(KEY_A)).await;
    let tok = [("X-EXECD-ACCESS-TOKEN", token.as_str())];
    let start = json!({ "command": "echo served > /workspace/hello.txt && cd /workspace && python3 -m http.server 8000 --bind 127.0.0.1", "background": true });
    s.call(
        "POST",
        &format!("/sandboxes/{id}/port/44772/command"),
        &tok,
        Some(start),
    )
    .await;
    let mut got = (0, String::new());
    for _ in 0..50 {
        let r = s
            .call(
                "GET",
                &format!("/sandboxes/{id}/port/8000/hello.txt"),
                &tok,
                None,
            )
            .await;
        got = (r.status, r.text);
        if got.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, (200, "served\n".to_owned()));
    // Still the sandbox's own loopback: nothing listens on the host's port 8000 for this.
    let none = s
        .call("GET", &format!("/sandboxes/{id}/port/8001/x"), &tok, None)
        .await;
    assert_eq!(none.status, 503);
    assert_eq!(
        s.call(
            "GET",
            &format!("/sandboxes/{id}/port/8000/hello.txt"),
            &[],
            None
        )
        .await
        .status,
        404
    );
}

/// A tiny upgrade server inside the sandbox: answers 101 and then echoes every byte.
const UPGRADE_ECHO: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8100)); s.listen(4)
while True:
    c, _ = s.accept(); buf = b""
    while b"\r\n\r\n" not in buf:
        buf += c.recv(4096)
    ok = b"upgrade: echo" in buf.lower()
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n" if ok else b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    while ok:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_style_upgrades_reach_services_inside_the_sandbox() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let token = s.access_token(&id, 8100, &key(KEY_A)).await;
    let tok = [("X-EXECD-ACCESS-TOKEN", token.as_str())];
    let write = json!({ "command": format!("cat > /workspace/echo.py <<'EOF'\n{UPGRADE_ECHO}\nEOF\npython3 /workspace/echo.py"), "background": true });
    s.call(
        "POST",
        &format!("/sandboxes/{id}/port/44772/command"),
        &tok,
        Some(write),
    )
    .await;
    let request = format!(
        "GET /sandboxes/{id}/port/8100/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\nX-EXECD-ACCESS-TOKEN: {token}\r\n\r\n"
    );
    let mut head = String::new();
    let mut conn = None;
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(s.addr)
            .await
            .expect("connect");
        c.write_all(request.as_bytes()).await.expect("send");
        let mut buf = vec![0u8; 1024];
        let n = c.read(&mut buf).await.expect("read");
        head = String::from_utf8_lossy(&buf[..n]).into_owned();
        if head.starts_with("HTTP/1.1 101") {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = conn.unwrap_or_else(|| panic!("no 101 from the service: {head}"));
    assert!(head.to_lowercase().contains("upgrade: echo"), "{head}");
    for msg in ["ping", "second message"] {
        c.write_all(msg.as_bytes()).await.expect("send");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(buf, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn isolation_reports_the_backend_enforcement_and_limits() {
    require_root!();
    let s = spawn_server(5).await;
    let id = create(&s, KEY_A).await;
    let path = format!("/v1/sandboxes/{id}/isolation");
    let r = s.call("GET", &path, &key(KEY_A), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let backend = test_runtime().default;
    assert_eq!(v["sandboxId"], id.as_str());
    assert_eq!(v["backend"], backend.as_str());
    assert_eq!(v["requested"], backend.as_str());
    assert_eq!(v["fallback"], Value::Null);
    assert_eq!(v["limits"]["memory_bytes"], 512u64 << 20, "{v}");
    assert_eq!(v["limits"]["pids"], 256, "{v}");
    assert!(v["enforcement"].is_object(), "{v}");
    // Another tenant's sandbox: the same 404 as none.
    let other = s.call("GET", &path, &key(KEY_B), None).await;
    assert_eq!(other.status, 404);
    let none = s
        .call(
            "GET",
            "/v1/sandboxes/0123456789abcdef0123456789abcdef/isolation",
            &key(KEY_B),
            None,
        )
        .await;
    assert_eq!(none.status, 404);
    assert_eq!(other.json()["code"], none.json()["code"]);
    // The create's audit record carries it too.
    let audit = audit_of(&s, &id, "sandbox.create").await;
    let rec = &audit["items"][0];
    assert_eq!(rec["detail"]["runtime"], backend.as_str(), "{audit}");
    assert_eq!(
        rec["detail"]["isolation"]["backend"],
        backend.as_str(),
        "{audit}"
    );
    // After the sandbox ends the report is still there.
    let r = s
        .call("DELETE", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await;
    assert_eq!(r.status, 204);
    let v = s.call("GET", &path, &key(KEY_A), None).await.json();
    assert_eq!(v["backend"], backend.as_str());
    assert_eq!(v["state"], "Terminated");
}

/// A server with only the native backend built in: a request for another backend is
/// refused in strict mode and falls back (recorded) in fallback mode.
async fn native_only_server(on_unavailable: runbox_server::config::OnUnavailable) -> Server {
    let config = Config {
        data_dir: temp_dir("runbox-server-test"),
        tenants: vec![TenantConfig {
            name: "a".into(),
            keys: vec![KEY_A.into()],
        }],
        runtime: runbox_server::config::RuntimeConfig {
            default: runbox_runtime::Backend::Native,
            on_unavailable,
            fallback: vec![
                runbox_runtime::Backend::Gvisor,
                runbox_runtime::Backend::Native,
            ],
        },
        ..Config::default()
    };
    let native = runbox_runtime::NativeRuntime::new(built_binary("runbox-agent")).expect("native");
    let state = runbox_server::AppState::with_runtimes(config, vec![std::sync::Arc::new(native)])
        .expect("state");
    state.prepare().await;
    Server::serve(state, Connections::Axum).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_backend_is_refused_when_strict_and_recorded_when_falling_back() {
    require_root!();
    use runbox_server::config::OnUnavailable;
    let body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 600, "extensions": { "runbox.runtime": "docker" } });
    let strict = native_only_server(OnUnavailable::Strict).await;
    let r = strict
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body.clone()))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("docker runtime is unavailable"),
        "{}",
        r.text
    );
    let listed = strict
        .call("GET", "/v1/sandboxes", &key(KEY_A), None)
        .await
        .json();
    assert_eq!(
        listed["items"],
        json!([]),
        "a refused create leaves no record"
    );

    let lenient = native_only_server(OnUnavailable::Fallback).await;
    let r = lenient
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let v = lenient
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/isolation"),
            &key(KEY_A),
            None,
        )
        .await
        .json();
    assert_eq!(v["backend"], "native", "{v}");
    assert_eq!(v["requested"], "docker", "{v}");
    assert!(
        v["fallback"]
            .as_str()
            .unwrap_or_default()
            .contains("fell back to native"),
        "{v}"
    );
    let audit = audit_of(&lenient, &id, "sandbox.runtime_fallback").await;
    assert_eq!(
        audit["items"][0]["detail"]["requested"], "docker",
        "{audit}"
    );
    assert_eq!(audit["items"][0]["detail"]["used"], "native", "{audit}");
    let _ = lenient
        .call("DELETE", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await;

    // An unknown backend name is bad input.
    let bad = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 600, "extensions": { "runbox.runtime": "qemu" } });
    let r = lenient
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(bad))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("unknown runtime `qemu`"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    require_root!();
    let config = Config {
        data_dir: temp_dir("runbox-server-test"),
        tenants: vec![TenantConfig {
            name: "a".into(),
            keys: vec![KEY_A.into()],
        }],
        ..Config::default()
    };
    let state = runbox_server::AppState::new(config, built_binary("runbox-agent")).expect("state");
    let manager = state.manager.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runbox_server::serve_connections(
        listener,
        runbox_server::app(state),
        Duration::from_secs(1),
        async move {
            let _ = stopped.await;
        },
    ));
    // Headers that never finish: the connection is closed after the timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("send");
    let mut buf = vec![0u8; 1024];
    let t = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        t.elapsed()
    );
    // An idle keep-alive connection is closed too, after answering its request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    // A normal client is served, and shutdown ends the server.
    let r = Server { addr, manager }
        .call("GET", "/health", &[], None)
        .await;
    assert_eq!(r.status, 200);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("stops")
        .expect("join")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_disk_quota_is_enforced() {
    require_root!();
    let s = spawn_server(5).await;
    let with_disk = |disk: &str| json!({ "image": { "uri": "python:3.11" }, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 600, "extensions": { "runbox.disk": disk } });
    for bad in ["lots", "8Mi", "0"] {
        let r = s
            .call("POST", "/v1/sandboxes", &key(KEY_A), Some(with_disk(bad)))
            .await;
        assert_eq!(r.status, 400, "runbox.disk {bad}: {}", r.text);
        assert_eq!(r.json()["code"], "INVALID_REQUEST", "{}", r.text);
    }
    let r = s
        .call(
            "POST",
            "/v1/sandboxes",
            &key(KEY_A),
            Some(with_disk("32Mi")),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let token = s.access_token(&id, 44772, &key(KEY_A)).await;
    let base = format!("/sandboxes/{id}/port/44772");
    let tok = [("X-EXECD-ACCESS-TOKEN", token.as_str())];
    let run = |command: &'static str| {
        let (s, path, tok) = (&s, format!("{base}/command"), tok);
        async move {
            s.call("POST", &path, &tok, Some(json!({ "command": command })))
                .await
                .text
        }
    };

    // Code writing past the quota gets ENOSPC, and the sandbox keeps working.
    let out = run("dd if=/dev/zero of=/workspace/big bs=1M count=64").await;
    assert!(out.contains("No space left on device"), "{out}");
    let out =
        run("rm /workspace/big && df -B1M --output=size /workspace | tail -1 && echo alive").await;
    assert!(out.contains("alive"), "{out}");
    let size: u64 = out
        .split("\"type\":\"stdout\",\"text\":\"")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit() && c != ' ').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no df size in {out}"));
    assert!((28..=32).contains(&size), "df says {size}M: {out}");

    // An upload past the quota is 413 with the error shape, and leaves no partial file.
    let boundary = "runbox-quota-test";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"metadata\"\r\ncontent-type: application/json\r\n\r\n{{\"path\":\"/workspace/upload.bin\"}}\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\ncontent-type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'x', 40 << 20));
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let Reply { status, text, .. } = s
        .call_raw(
            "POST",
            &format!("{base}/files/upload"),
            &[
                ("X-EXECD-ACCESS-TOKEN", token.as_str()),
                ("content-type", &content_type),
            ],
            body,
        )
        .await;
    let err: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    // The agent answers mid-body and stops reading; that answer reaches the client (issue 4).
    assert_eq!(status, 413, "{text}");
    assert_eq!(err["code"], "PAYLOAD_TOO_LARGE", "{text}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("disk quota is full"),
        "{text}"
    );
    let out = run("ls -A /workspace; echo listed").await;
    assert!(
        !out.contains("upload.bin") && out.contains("listed"),
        "{out}"
    );

    // Deleted: unmounted, the image kept.
    let workspace = s.data_dir().join("workspaces").join(&id);
    let mounted = || {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let dir = std::fs::canonicalize(&workspace).expect("workspace dir");
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(dir.to_str().expect("utf-8")))
    };
    assert!(mounted());
    let r = s
        .call("DELETE", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!mounted(), "{} is still mounted", workspace.display());
    assert!(workspace.with_extension("img").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_body_over_the_limit_is_413_with_the_error_shape() {
    require_root!();
    let s = spawn_server(5).await;
    let limit = s.manager.config.max_body_bytes;
    let padded =
        |n: usize| json!({ "image": { "uri": "x" }, "metadata": { "pad": "x".repeat(n) } });
    for (method, path) in [
        ("POST", "/v1/sandboxes".to_owned()),
        ("PATCH", "/v1/sandboxes/sbx-nope/metadata".to_owned()),
        ("POST", "/v1/sandboxes/sbx-nope/renew-expiration".to_owned()),
    ] {
        let r = s
            .call(method, &path, &key(KEY_A), Some(padded(limit)))
            .await;
        assert_eq!(r.status, 413, "{method} {path}: {}", r.text);
        let err = r.json();
        assert_eq!(err["code"], "PAYLOAD_TOO_LARGE", "{}", r.text);
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.contains(&limit.to_string())),
            "{}",
            r.text
        );
    }
    // Under the limit, a malformed body is still 400.
    let r = s
        .call(
            "POST",
            "/v1/sandboxes",
            &key(KEY_A),
            Some(json!({ "image": { "uri": "x" }, "bogus": "x".repeat(limit / 2) })),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["code"], "INVALID_REQUEST", "{}", r.text);
    let list = s.call("GET", "/v1/sandboxes", &key(KEY_A), None).await;
    assert_eq!(list.json()["items"], json!([]), "{}", list.text);
}

/// The host pid of the agent whose command line carries `--env RUNBOX_STOP_MARK=<mark>`.
fn agent_pid_with_mark(mark: &str) -> Option<u32> {
    let wanted = format!("RUNBOX_STOP_MARK={mark}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_agent = argv.first()?.ends_with(b"runbox-agent");
            let marked = argv
                .windows(2)
                .any(|w| w[0] == b"--env" && w[1] == wanted.as_bytes());
            (is_agent && marked).then_some(pid)
        })
}

/// A stop from outside runbox (SIGTERM to the agent from the host, which is what `docker
/// stop` sends) is an orderly end: the agent forwards it and exits 0, and the record says
/// Terminated, not Failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_from_outside_ends_the_sandbox_as_terminated() {
    require_root!();
    if test_runtime().default == runbox_runtime::Backend::Gvisor {
        eprintln!(
            "not on gvisor: the agent's process lives inside the sentry, not in the host's /proc"
        );
        return;
    }
    let s = spawn_server(5).await;
    let mark = format!("{}-{}", std::process::id(), line!());
    let body = json!({ "image": { "uri": "python:3.11" }, "entrypoint": ["sleep", "600"], "timeout": 600, "resourceLimits": {}, "env": { "RUNBOX_STOP_MARK": mark } });
    let r = s
        .call("POST", "/v1/sandboxes", &key(KEY_A), Some(body))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let pid = agent_pid_with_mark(&mark).expect("the agent's host process");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut last = Value::Null;
    for _ in 0..100 {
        last = s
            .call("GET", &format!("/v1/sandboxes/{id}"), &key(KEY_A), None)
            .await
            .json();
        if last["status"]["state"] != "Running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"]["state"], "Terminated", "{last}");
    assert_eq!(last["status"]["reason"], "stopped_outside", "{last}");
}
