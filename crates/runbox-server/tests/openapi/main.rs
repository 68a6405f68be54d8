//! `docs/api/openapi.json` is the document the server generates (and serves at
//! `/v1/openapi.json`). On drift: `RUNBOX_UPDATE_OPENAPI=1 cargo test -p runbox-server --test openapi`
//! rewrites the file.

use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json")
}

#[test]
fn checked_in_document_matches_the_code() {
    let generated = runbox_server::openapi::document();
    let path = checked_in();
    if std::env::var_os("RUNBOX_UPDATE_OPENAPI").is_some_and(|v| !v.is_empty() && v != "0") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create docs/api");
        }
        std::fs::write(&path, &generated).expect("write docs/api/openapi.json");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let line = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| on_disk.lines().count().min(generated.lines().count()))
            + 1;
        panic!(
            "docs/api/openapi.json is out of date with the code (first difference at line {line}).\n\
             Regenerate it with:\n\n    RUNBOX_UPDATE_OPENAPI=1 cargo test -p runbox-server --test openapi\n"
        );
    }
}

#[test]
fn document_covers_every_route() {
    let doc: serde_json::Value =
        serde_json::from_str(&runbox_server::openapi::document()).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/sandboxes", &["get", "post"][..]),
        ("/v1/sandboxes/{id}", &["get", "delete"]),
        ("/v1/sandboxes/{id}/metadata", &["patch"]),
        ("/v1/sandboxes/{id}/isolation", &["get"]),
        ("/v1/sandboxes/{id}/pause", &["post"]),
        ("/v1/sandboxes/{id}/resume", &["post"]),
        ("/v1/sandboxes/{id}/renew-expiration", &["post"]),
        ("/v1/sandboxes/{id}/endpoints/{port}", &["get"]),
        ("/v1/metrics/events", &["post"]),
        ("/v1/audit", &["get"]),
        ("/v1/executions/{id}", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/health", &["get"]),
        ("/v1/health", &["get"]),
        ("/metrics", &["get"]),
        (
            "/sandboxes/{id}/port/{port}/{rest}",
            &["get", "post", "put", "patch", "delete"],
        ),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is not documented");
        }
    }
    assert_eq!(paths.len(), 16, "undocumented or unexpected paths");
    // Every lifecycle operation asks for the API key.
    for (path, item) in paths.iter().filter(|(p, _)| {
        p.starts_with("/v1/") && !matches!(p.as_str(), "/v1/health" | "/v1/openapi.json")
    }) {
        for (m, op) in item.as_object().expect("path item") {
            assert_eq!(
                op["security"][0]["OPEN-SANDBOX-API-KEY"],
                serde_json::json!([]),
                "{m} {path}"
            );
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["OPEN-SANDBOX-API-KEY"]["type"], "apiKey");
    assert_eq!(schemes["OPEN-SANDBOX-API-KEY"]["in"], "header");
    assert_eq!(schemes["X-EXECD-ACCESS-TOKEN"]["in"], "header");
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Error",
        "CreateRequest",
        "Sandbox",
        "SandboxList",
        "Pagination",
        "Endpoint",
        "RenewRequest",
        "RenewResponse",
        "AuditRecord",
        "AuditList",
        "Extensions",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    for key in [
        "runbox.pids",
        "runbox.output_limit",
        "runbox.import_allow",
        "runbox.import_deny",
        "runbox.network",
        "runbox.runtime",
    ] {
        assert!(
            schemas["Extensions"]["properties"][key].is_object(),
            "extension {key} undocumented"
        );
    }
}

#[tokio::test]
async fn served_document_is_the_generated_one() {
    use axum::response::IntoResponse;
    let resp = runbox_server::openapi::serve().await.into_response();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(body, runbox_server::openapi::document().as_bytes());
}

/// The route is open (no API key) even when the server has tenants; the lifecycle API is not.
#[tokio::test]
async fn route_is_open() {
    use axum::body::Body;
    use axum::http::Request;
    use runbox_server::config::{Config, TenantConfig};
    use tower::ServiceExt;

    let dir = std::env::temp_dir().join(format!("runbox-openapi-test-{}", std::process::id()));
    let config = Config {
        data_dir: dir.clone(),
        tenants: vec![TenantConfig {
            name: "a".into(),
            keys: vec!["key-a".into()],
        }],
        ..Config::default()
    };
    let state = runbox_server::AppState::new(config, PathBuf::from("/nonexistent/runbox-agent"))
        .expect("state");
    let app = runbox_server::app(state);
    let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
    let doc = app
        .clone()
        .oneshot(get("/v1/openapi.json"))
        .await
        .expect("answer");
    assert_eq!(doc.status(), 200);
    let body = axum::body::to_bytes(doc.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(body, runbox_server::openapi::document().as_bytes());
    let list = app.oneshot(get("/v1/sandboxes")).await.expect("answer");
    assert_eq!(list.status(), 401);
    let _ = std::fs::remove_dir_all(dir);
}
