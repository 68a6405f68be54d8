//! Contract tests of the execd API (commands, sessions, contexts, metrics, auth) against the
//! router in-process, checking the spec's shapes and the stream rules: one JSON object and a
//! blank line per event, `timestamp` on every event, one output line per event, a non-zero
//! exit as an `error` event whose `evalue` is the code.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use runbox_agent::{app, AppState, Config};
use runbox_proto::execd::{Event, EventKind};
use serde_json::{json, Value};
use tower::ServiceExt;

mod tunnel;

mod shell_free;

const TOKEN: &str = "test-token-0123456789";

fn state() -> AppState {
    let dir = std::env::temp_dir().join(format!(
        "runbox-agent-api-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("workspace");
    let state = AppState::new(Config {
        token: TOKEN.into(),
        ..Config::in_dir(dir)
    });
    state.procs.start_reaper().expect("reaper");
    state
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b)
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("X-EXECD-ACCESS-TOKEN", TOKEN)
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .expect("request");
    let resp = app(state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses a stream body, checking the framing rules on the way.
fn events(body: &str) -> Vec<Event> {
    assert!(
        body.ends_with("\n\n"),
        "stream must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|c| !c.is_empty())
        .map(|chunk| {
            let v: Value = serde_json::from_str(chunk).unwrap_or_else(|e| panic!("{e}: {chunk}"));
            assert!(
                v["timestamp"]
                    .as_i64()
                    .is_some_and(|t| t > 1_600_000_000_000),
                "timestamp missing: {chunk}"
            );
            serde_json::from_value(v).expect("event shape")
        })
        .collect()
}

fn texts(events: &[Event], kind: EventKind) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .filter_map(|e| e.text.clone())
        .collect()
}

#[tokio::test]
async fn ping_is_open_and_everything_else_needs_the_token() {
    let s = state();
    let resp = app(s.clone())
        .oneshot(Request::get("/ping").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app(s.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(v["code"], "UNAUTHORIZED");
    assert!(v["message"].is_string());
    let wrong = Request::get("/metrics")
        .header("X-EXECD-ACCESS-TOKEN", "nope")
        .body(Body::empty())
        .expect("req");
    assert_eq!(
        app(s).oneshot(wrong).await.expect("resp").status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn foreground_command_streams_lines_then_completes() {
    let s = state();
    let (status, body) = call(
        &s,
        "POST",
        "/command",
        Some(json!({"command": "echo one; echo two; echo err >&2"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ev = events(&body);
    assert_eq!(ev.first().map(|e| e.kind), Some(EventKind::Init));
    assert!(ev[0].text.as_deref().is_some_and(|t| t.starts_with("cmd-")));
    assert_eq!(texts(&ev, EventKind::Stdout), vec!["one", "two"]);
    assert_eq!(texts(&ev, EventKind::Stderr), vec!["err"]);
    assert_eq!(
        ev.last().map(|e| e.kind),
        Some(EventKind::ExecutionComplete)
    );
    assert!(ev.iter().all(|e| e.kind != EventKind::Error));
}

#[tokio::test]
async fn nonzero_exit_is_an_error_event_with_the_code() {
    let s = state();
    let (_, body) = call(&s, "POST", "/command", Some(json!({"command": "exit 3"}))).await;
    let ev = events(&body);
    let err = ev
        .iter()
        .find(|e| e.kind == EventKind::Error)
        .and_then(|e| e.error.clone())
        .expect("error event");
    assert_eq!(err.ename, "CommandExecError");
    assert_eq!(err.evalue, "3");
}

#[tokio::test]
async fn cwd_and_envs_are_applied() {
    let s = state();
    let (_, body) = call(
        &s,
        "POST",
        "/command",
        Some(json!({"command": "pwd; echo $GREETING", "cwd": "/tmp", "envs": {"GREETING": "hi"}})),
    )
    .await;
    assert_eq!(texts(&events(&body), EventKind::Stdout), vec!["/tmp", "hi"]);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let s = state();
    let started = Instant::now();
    let (_, body) = call(
        &s,
        "POST",
        "/command",
        Some(json!({"command": "sleep 30 & sleep 30; echo never", "timeout": 300})),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeout not enforced"
    );
    let ev = events(&body);
    assert!(texts(&ev, EventKind::Stdout).is_empty());
    let err = ev
        .iter()
        .find(|e| e.kind == EventKind::Error)
        .and_then(|e| e.error.clone())
        .expect("error");
    assert_eq!(err.evalue, "137");
}

#[tokio::test]
async fn background_command_status_logs_and_interrupt() {
    let s = state();
    let (_, body) = call(
        &s,
        "POST",
        "/command",
        Some(json!({"command": "echo a; echo b; sleep 30", "background": true})),
    )
    .await;
    let ev = events(&body);
    let id = ev[0].text.clone().expect("id");
    assert_eq!(
        ev.last().map(|e| e.kind),
        Some(EventKind::ExecutionComplete)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = call(&s, "GET", &format!("/command/status/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["running"], true);
    assert_eq!(v["content"], "echo a; echo b; sleep 30");
    assert!(v["started_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let (_, logs) = call(&s, "GET", &format!("/command/{id}/logs"), None).await;
    assert_eq!(logs, "a\nb\n");
    let (_, tail) = call(&s, "GET", &format!("/command/{id}/logs?cursor=0"), None).await;
    assert_eq!(tail, "b\n");
    let (status, _) = call(&s, "DELETE", &format!("/command?id={id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, text) = call(&s, "GET", &format!("/command/status/{id}"), None).await;
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["running"], false);
    assert_eq!(v["exit_code"], 137);
}

/// Reading a background command's logs before its first line gives no cursor, so following
/// the tail never skips the first line (a `0` cursor used to).
#[tokio::test]
async fn the_tail_cursor_is_absent_until_there_is_a_line() {
    let s = state();
    let (_, body) = call(
        &s,
        "POST",
        "/command",
        Some(json!({"command": "sleep 0.5; echo first; echo second", "background": true})),
    )
    .await;
    let id = events(&body)[0].text.clone().expect("id");
    let logs = |cursor: Option<String>| {
        let s = s.clone();
        let id = id.clone();
        async move {
            let uri = match cursor {
                Some(c) => format!("/command/{id}/logs?cursor={c}"),
                None => format!("/command/{id}/logs"),
            };
            let req = Request::builder()
                .uri(uri)
                .header("X-EXECD-ACCESS-TOKEN", TOKEN)
                .body(Body::empty())
                .expect("request");
            let resp = app(s).oneshot(req).await.expect("response");
            let cursor = resp
                .headers()
                .get("EXECD-COMMANDS-TAIL-CURSOR")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (String::from_utf8_lossy(&bytes).into_owned(), cursor)
        }
    };
    let (text, cursor) = logs(None).await;
    assert_eq!((text.as_str(), cursor.as_deref()), ("", None));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (text, cursor) = logs(cursor).await;
    assert_eq!(text, "first\nsecond\n");
    assert_eq!(cursor.as_deref(), Some("1"));
    let (text, cursor) = logs(cursor).await;
    assert_eq!((text.as_str(), cursor.as_deref()), ("", Some("1")));
}

#[tokio::test]
async fn bad_requests_get_the_error_shape() {
    let s = state();
    for (method, uri, body) in [
        ("POST", "/command", Some(json!({"nope": 1}))),
        ("POST", "/command", Some(json!({"command": ""}))),
        (
            "POST",
            "/command",
            Some(json!({"command": "id", "uid": 12345})),
        ),
        (
            "POST",
            "/command",
            Some(json!({"command": "id", "cwd": "/does/not/exist"})),
        ),
        ("GET", "/command/status/cmd-unknown", None),
        ("DELETE", "/command", None),
        ("POST", "/code/context", Some(json!({"language": "cobol"}))),
        ("GET", "/no/such/route", None),
    ] {
        let (status, text) = call(&s, method, uri, body).await;
        assert!(status.is_client_error(), "{method} {uri}: {status}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {uri}: {e}: {text}"));
        assert!(v["code"].is_string() && v["message"].is_string(), "{text}");
    }
}

#[tokio::test]
async fn session_keeps_cwd_and_variables() {
    let s = state();
    let (status, text) = call(&s, "POST", "/session", None).await;
    assert_eq!(status, StatusCode::OK);
    let id = serde_json::from_str::<Value>(&text).expect("json")["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let run = |cmd: &str| json!({ "command": cmd });
    let (_, body) = call(
        &s,
        "POST",
        &format!("/session/{id}/run"),
        Some(run("cd /tmp; X=42; printf partial")),
    )
    .await;
    assert_eq!(texts(&events(&body), EventKind::Stdout), vec!["partial"]);
    let (_, body) = call(
        &s,
        "POST",
        &format!("/session/{id}/run"),
        Some(run("pwd; echo $X")),
    )
    .await;
    assert_eq!(texts(&events(&body), EventKind::Stdout), vec!["/tmp", "42"]);
    let (_, body) = call(
        &s,
        "POST",
        &format!("/session/{id}/run"),
        Some(run("false")),
    )
    .await;
    let err = events(&body)
        .into_iter()
        .find_map(|e| e.error)
        .expect("error");
    assert_eq!(
        (err.ename.as_str(), err.evalue.as_str()),
        ("CommandExecError", "1")
    );
    let (status, _) = call(&s, "DELETE", &format!("/session/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&s, "POST", &format!("/session/{id}/run"), Some(run("true"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn session_timeout_ends_the_session() {
    let s = state();
    let (_, text) = call(&s, "POST", "/session", Some(json!({"cwd": "/tmp"}))).await;
    let id = serde_json::from_str::<Value>(&text).expect("json")["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, body) = call(
        &s,
        "POST",
        &format!("/session/{id}/run"),
        Some(json!({"command": "sleep 30", "timeout": 200})),
    )
    .await;
    let err = events(&body)
        .into_iter()
        .find_map(|e| e.error)
        .expect("error");
    assert_eq!(err.ename, "SessionError");
}

#[tokio::test]
async fn contexts_are_created_listed_and_deleted() {
    let s = state();
    let (status, text) = call(
        &s,
        "POST",
        "/code/context",
        Some(json!({"language": "python"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ctx: Value = serde_json::from_str(&text).expect("json");
    let id = ctx["id"].as_str().expect("id").to_owned();
    assert_eq!(ctx["language"], "python");
    let (_, list) = call(&s, "GET", "/code/contexts?language=python", None).await;
    assert!(list.contains(&id));
    let (status, _) = call(&s, "GET", &format!("/code/contexts/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&s, "DELETE", &format!("/code/contexts/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&s, "GET", &format!("/code/contexts/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &s,
        "POST",
        "/code",
        Some(json!({"context": {"id": id, "language": "python"}, "code": "1"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_have_the_spec_fields() {
    let s = state();
    let (status, text) = call(&s, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).expect("json");
    for key in [
        "cpu_count",
        "cpu_used_pct",
        "mem_total_mib",
        "mem_used_mib",
        "timestamp",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    assert!(v["mem_used_mib"].as_f64().is_some_and(|m| m > 0.0));
}
