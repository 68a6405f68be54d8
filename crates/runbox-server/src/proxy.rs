//! `/sandboxes/{id}/port/{port}/...`: the per-sandbox endpoint. Port 44772 is the agent
//! (execd), reached over its host-side unix socket with the request and response bodies
//! streamed both ways. The per-sandbox token is required (the agent checks it too); tenant API
//! keys are stripped, never forwarded. Commands, code runs and file writes are audited, with
//! their outcome read from the event stream as it passes.

mod exchange;

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use runbox_proto::execd::{ACCESS_TOKEN_HEADER, EXECD_PORT};
use serde_json::{json, Value};

use crate::audit::cap;
use crate::auth::API_KEY_HEADER;
use crate::error::ApiError;
use crate::AppState;

/// Bodies of audited requests are read before forwarding (they are small JSON); bigger ones
/// are refused.
const AUDITED_BODY_MAX: usize = 4 << 20;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What kind of audit record a request makes, if any.
fn audit_kind(method: &Method, path: &str) -> Option<&'static str> {
    match (method.as_str(), path) {
        ("POST", "/command") => Some("command"),
        ("POST", "/code") => Some("code"),
        ("POST", p) if p.starts_with("/session/") && p.ends_with("/run") => Some("session.run"),
        (
            "POST",
            "/files/upload" | "/files/mv" | "/files/replace" | "/files/permissions"
            | "/directories",
        ) => Some("file.write"),
        ("DELETE", "/files" | "/directories") => Some("file.delete"),
        _ => None,
    }
}

pub async fn root(
    state: State<AppState>,
    Path((id, port)): Path<(String, u16)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(state, id, port, String::new(), req).await
}

pub async fn rest(
    state: State<AppState>,
    Path((id, port, rest)): Path<(String, u16, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(state, id, port, rest, req).await
}

async fn forward(
    State(state): State<AppState>,
    id: String,
    port: u16,
    rest: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    let live = state
        .manager
        .get_live(&id)
        .ok_or_else(|| ApiError::SandboxNotFound(id.clone()))?;
    let token = req
        .headers()
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !runbox_proto::execd::token_matches(token, live.token()) {
        // Same answer as for a sandbox that does not exist: the token is the credential here.
        return Err(ApiError::SandboxNotFound(id));
    }
    *live.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let path = format!("/{rest}");
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    // Only the agent's requests are audited as executions; other ports are the sandbox's own
    // services (a web app the code started), passed through as they are.
    let kind = if port == EXECD_PORT {
        audit_kind(req.method(), &path)
    } else {
        None
    };
    // A protocol upgrade (WebSocket) to a service of the sandbox: the Upgrade and Connection
    // headers go through, and after a 101 both connections are spliced together.
    let upgrade = (port != EXECD_PORT && req.headers().contains_key(hyper::header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut req));
    let method = req.method().clone();
    let mut builder = hyper::Request::builder()
        .method(method.clone())
        .uri(format!("{path}{query}"));
    for (name, value) in req.headers() {
        let n = name.as_str();
        let kept_for_upgrade = upgrade.is_some() && matches!(n, "connection" | "upgrade");
        if (HOP_BY_HOP.contains(&n) && !kept_for_upgrade)
            || n.eq_ignore_ascii_case(API_KEY_HEADER)
            || n == "host"
        {
            continue;
        }
        builder = builder.header(name, value);
    }
    let host = if port == EXECD_PORT {
        "runbox-agent".to_owned()
    } else {
        format!("127.0.0.1:{port}")
    };
    builder = builder.header("host", host);

    // Audited JSON requests are buffered (bounded) so the record can say what ran.
    let (body, detail, buffered) = match kind {
        Some("command" | "code" | "session.run") => {
            let bytes = axum::body::to_bytes(req.into_body(), AUDITED_BODY_MAX)
                .await
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "request body larger than {AUDITED_BODY_MAX} bytes"
                    ))
                })?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let text = v
                .get("code")
                .or_else(|| v.get("command"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut detail = json!({ "path": path, "text": cap(text) });
            if let Some(ctx) = v.get("context") {
                detail["context"] = ctx.clone();
            }
            (Body::from(bytes), detail, true)
        }
        _ => (
            Body::new(exchange::Lingering::new(req.into_body())),
            json!({ "path": path, "query": query.trim_start_matches('?') }),
            false,
        ),
    };
    let streamed = !buffered && !body.is_end_stream();
    let outgoing = builder
        .body(body)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let started = Instant::now();
    let did_not_answer = |e: String| {
        ApiError::Unavailable(format!("port {port} of the sandbox did not answer: {e}"))
    };
    let mut resp = if port == EXECD_PORT && !streamed {
        // Nothing left to stream to the agent: over the sandbox's kept-alive channel (a fresh
        // one when it is busy).
        let outgoing = outgoing.map(|b| {
            b.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
                .boxed_unsync()
        });
        let resp = live.client.send(outgoing).await;
        resp.map_err(|e| did_not_answer(runbox_runtime::error_chain(&e)))?
            .map(Body::new)
    } else {
        // A streamed body (an upload) gets a connection of its own, one that lets the answer
        // through when the upstream answers before reading it all (issue 4); so does every
        // request to the sandbox's own services.
        let io: runbox_runtime::Stream = if port == EXECD_PORT {
            let socket = tokio::net::UnixStream::connect(&live.client.socket)
                .await
                .map_err(|e| did_not_answer(format!("cannot connect to the agent: {e}")))?;
            Box::new(socket)
        } else {
            connect_port(&live, port).await?
        };
        let resp = exchange::exchange(io, outgoing).await;
        resp.map_err(|e| did_not_answer(runbox_runtime::error_chain(&e)))?
            .map(Body::new)
    };
    if let (Some(client_side), hyper::StatusCode::SWITCHING_PROTOCOLS) = (upgrade, resp.status()) {
        return switch_protocols(client_side, &mut resp);
    }
    let status = resp.status();
    let (parts, incoming) = resp.into_parts();
    let mut response = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }

    let Some(kind) = kind else {
        return Ok(response
            .body(incoming)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .into_response());
    };
    let auditor = state.manager.auditor.clone();
    let (tenant, sandbox) = (live.tenant.clone(), id.clone());
    if !status.is_success() || !matches!(kind, "command" | "code" | "session.run") {
        let outcome = if status.is_success() { "ok" } else { "error" };
        let error = (!status.is_success()).then(|| format!("HTTP {}", status.as_u16()));
        auditor.record(
            &tenant,
            Some(&sandbox),
            kind,
            detail,
            outcome,
            error,
            None,
            Some(started.elapsed().as_secs_f64() * 1000.0),
        );
        return Ok(response
            .body(incoming)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .into_response());
    }
    // Streamed executions: pass every chunk through, watch the events, record at the end.
    // The record is written when the stream ends, however it ends (the contract ends a
    // failed command with its error event, and clients may hang up early).
    let mut recorder = Recorder {
        watcher: Watcher::default(),
        auditor,
        tenant,
        sandbox,
        kind,
        detail,
        started,
    };
    let frames = incoming.into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            recorder.watcher.feed(c);
        }
        chunk.map_err(std::io::Error::other)
    });
    Ok(response
        .body(Body::from_stream(frames))
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into_response())
}

/// Answers 101 with the service's headers and splices the two upgraded connections.
fn switch_protocols(
    client_side: hyper::upgrade::OnUpgrade,
    resp: &mut hyper::Response<Body>,
) -> Result<Response, ApiError> {
    let service_side = hyper::upgrade::on(&mut *resp);
    let mut response = Response::builder().status(hyper::StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in resp.headers() {
        response = response.header(name, value);
    }
    tokio::spawn(async move {
        if let (Ok(client), Ok(service)) = (client_side.await, service_side.await) {
            let _ = tokio::io::copy_bidirectional(
                &mut TokioIo::new(client),
                &mut TokioIo::new(service),
            )
            .await;
        }
    });
    response
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A connection to `127.0.0.1:port` inside the sandbox (its own network namespace, or a
/// tunnel through the agent where the host cannot enter it).
async fn connect_port(
    live: &crate::manager::Live,
    port: u16,
) -> Result<runbox_runtime::Stream, ApiError> {
    live.instance.connect_tcp(port).await.map_err(|e| {
        ApiError::Unavailable(format!("port {port} of the sandbox is not reachable: {e}"))
    })
}

/// Writes the audit record of a streamed execution when the stream is dropped.
struct Recorder {
    watcher: Watcher,
    auditor: crate::audit::Auditor,
    tenant: String,
    sandbox: String,
    kind: &'static str,
    detail: Value,
    started: Instant,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let w = &self.watcher;
        let (outcome, error) = match (&w.error, w.done) {
            (Some(e), _) => ("error", Some(e.clone())),
            (None, true) => ("ok", None),
            (None, false) => (
                "incomplete",
                Some("the stream ended before the execution completed".to_owned()),
            ),
        };
        self.auditor.record(
            &self.tenant,
            Some(&self.sandbox),
            self.kind,
            std::mem::take(&mut self.detail),
            outcome,
            error,
            w.exit_code,
            Some(self.started.elapsed().as_secs_f64() * 1000.0),
        );
    }
}

/// Reads execd events out of a passing stream to learn the outcome.
#[derive(Debug, Default)]
struct Watcher {
    buf: Vec<u8>,
    error: Option<String>,
    exit_code: Option<i64>,
    done: bool,
}

impl Watcher {
    fn feed(&mut self, chunk: &Bytes) {
        if self.buf.len() < 1 << 20 {
            self.buf.extend_from_slice(chunk);
        }
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("error") => {
                    let e = &v["error"];
                    let (name, value) = (
                        e["ename"].as_str().unwrap_or_default(),
                        e["evalue"].as_str().unwrap_or_default(),
                    );
                    if name == "CommandExecError" {
                        self.exit_code = value.parse().ok();
                    }
                    self.error = Some(format!("{name}: {value}"));
                }
                Some("execution_complete") => {
                    self.done = true;
                    if self.exit_code.is_none() && self.error.is_none() {
                        self.exit_code = Some(0);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_reads_exit_codes_and_completion() {
        let mut w = Watcher::default();
        w.feed(&Bytes::from_static(b"{\"type\":\"init\",\"text\":\"x\",\"timestamp\":1}\n\n{\"type\":\"error\",\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"3\",\"traceback\":[]},\"timestamp\":1}\n"));
        assert!(!w.done);
        w.feed(&Bytes::from_static(
            b"\n{\"type\":\"execution_complete\",\"timestamp\":2}\n\n",
        ));
        assert!(w.done);
        assert_eq!(w.exit_code, Some(3));
        assert!(w.error.is_some());
    }

    #[test]
    fn audited_requests_are_recognised() {
        assert_eq!(audit_kind(&Method::POST, "/command"), Some("command"));
        assert_eq!(audit_kind(&Method::DELETE, "/files"), Some("file.delete"));
        assert_eq!(audit_kind(&Method::GET, "/files/download"), None);
    }
}
