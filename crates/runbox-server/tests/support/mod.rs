//! What the server's test binaries (api, stress, escape) share: the root check, the binaries
//! `cargo build --workspace` puts next to them, an in-process server on a random port, and
//! one HTTP/1 exchange per fresh connection. Each binary includes it with
//! `#[path = "../support/mod.rs"] mod support;` (cargo builds no target of its own from it).

// Each binary uses its own part of this module; the rest is dead code there.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use runbox_server::manager::Manager;
use runbox_server::AppState;
use serde_json::Value;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Returns from the test, saying so, when not root: `require_root!()` for tests that start
/// native sandboxes, `require_root!(why)` to say something else.
macro_rules! require_root {
    () => {
        $crate::support::require_root!(format!("{} starts native sandboxes", module_path!()))
    };
    ($why:expr) => {
        if !$crate::support::is_root() {
            eprintln!("SKIPPED (needs root): {}", $why);
            return;
        }
    };
}
pub(crate) use require_root;

/// A sibling of the test binary's directory (`target/debug/<name>`), built by
/// `cargo build --workspace`.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A fresh, not yet created path in the temp dir: `<prefix>-<random hex>`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    std::env::temp_dir().join(format!("{prefix}-{:016x}", u64::from_ne_bytes(b)))
}

/// The connection loop a test server runs.
#[derive(Debug, Clone, Copy)]
pub enum Connections {
    /// `axum::serve` with TCP_NODELAY.
    Axum,
    /// `runbox_server::serve_connections`, the loop of `runbox serve` (header timeout, head
    /// size limit), with this header timeout.
    Production(Duration),
}

pub struct Server {
    pub addr: SocketAddr,
    pub manager: Arc<Manager>,
}

/// Each test's sandboxes end with its server (containers and runsc sandboxes would otherwise
/// outlive the test process; scripts/leftovers.sh checks that none did), and the data dir,
/// which may hold gigabytes of upload, goes with them.
impl Drop for Server {
    fn drop(&mut self) {
        let manager = self.manager.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(manager.shutdown())
        });
        let _ = std::fs::remove_dir_all(self.data_dir());
    }
}

impl Server {
    /// Prepares `state`, runs the reaper (TTL and idle timeouts) and serves.
    pub async fn start(state: AppState, connections: Connections) -> Server {
        state.prepare().await;
        tokio::spawn(runbox_server::manager::reaper(state.manager.clone()));
        Self::serve(state, connections).await
    }

    /// Serves `state` as it is on a random port of 127.0.0.1.
    pub async fn serve(state: AppState, connections: Connections) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let manager = state.manager.clone();
        let app = runbox_server::app(state);
        match connections {
            Connections::Axum => tokio::spawn(async move {
                let _ = axum::serve(runbox_server::no_delay(listener), app).await;
            }),
            Connections::Production(header_timeout) => tokio::spawn(async move {
                let _ = runbox_server::serve_connections(
                    listener,
                    app,
                    header_timeout,
                    std::future::pending(),
                )
                .await;
            }),
        };
        Server { addr, manager }
    }

    pub fn data_dir(&self) -> &Path {
        &self.manager.config.data_dir
    }

    /// One request on a fresh connection: the answer, or which step failed.
    pub async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    }

    /// One request with a body of raw bytes; panics when there is no answer.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.exchange(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One request with an optional JSON body; panics when there is no answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let (headers, body) = with_json(headers, body);
        self.call_raw(method, path, &headers, body).await
    }

    /// The execd access token for `port` of sandbox `id`, from its endpoint.
    pub async fn access_token(&self, id: &str, port: u16, auth: &[(&str, &str)]) -> String {
        let path = format!("/v1/sandboxes/{id}/endpoints/{port}");
        let ep = self.call("GET", &path, auth, None).await.json();
        ep["headers"]["X-EXECD-ACCESS-TOKEN"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token in {ep}"))
            .to_owned()
    }

    /// `call`, bounded by `limit`, and an error instead of a panic when there is no answer.
    pub async fn call_within(
        &self,
        limit: Duration,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Reply, String> {
        let (headers, body) = with_json(headers, body);
        tokio::time::timeout(limit, self.exchange(method, path, &headers, body))
            .await
            .unwrap_or_else(|_| Err(format!("{method} {path}: no answer within {limit:?}")))
    }
}

/// The headers and bytes of a request with an optional JSON body (and then its content type).
fn with_json<'a>(
    headers: &[(&'a str, &'a str)],
    body: Option<Value>,
) -> (Vec<(&'a str, &'a str)>, Vec<u8>) {
    let mut headers = headers.to_vec();
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if !bytes.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    (headers, bytes)
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}
