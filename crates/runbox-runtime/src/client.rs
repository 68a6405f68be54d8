//! A small HTTP/1.1 client of the agent over its unix socket (one connection per request;
//! the server will proxy raw HTTP instead).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use runbox_proto::execd::{Event, ACCESS_TOKEN_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the agent failed")]
    Http(#[from] hyper::Error),
    #[error("bad request to the agent")]
    Request(#[from] hyper::http::Error),
    #[error("bad event from the agent: {0}")]
    Event(String),
    #[error("the agent did not answer on {path} within {within:?}")]
    NotReady { path: PathBuf, within: Duration },
}

/// Request bodies: a JSON body from `request`, or any streamed body from `send`.
pub type Body =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// A client that keeps one idle keep-alive connection for the next request (a fresh
/// connection when that one is busy with a streaming response).
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub socket: PathBuf,
    pub token: String,
    idle: std::sync::Arc<std::sync::Mutex<Option<Sender>>>,
}

/// A response: status and a body read chunk by chunk.
pub struct Response {
    pub status: u16,
    body: hyper::body::Incoming,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish()
    }
}

impl Response {
    pub async fn chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(data),
                    Err(_) => continue,
                },
                Err(_) => return None,
            }
        }
    }

    pub async fn text(mut self) -> String {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await {
            all.extend_from_slice(&c);
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Calls `on_event` for each execd event of a streaming response.
    pub async fn events(mut self, mut on_event: impl FnMut(Event)) -> Result<(), ClientError> {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = self.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let json = text.trim().trim_start_matches("data:").trim();
                if json.is_empty() {
                    continue;
                }
                on_event(
                    serde_json::from_str(json)
                        .map_err(|e| ClientError::Event(format!("{e}: {json}")))?,
                );
            }
        }
        Ok(())
    }
}

impl AgentClient {
    pub fn new(socket: PathBuf, token: String) -> Self {
        Self {
            socket,
            token,
            idle: Default::default(),
        }
    }

    async fn sender(&self) -> Result<Sender, ClientError> {
        let reusable = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|s| s.is_ready());
        if let Some(s) = reusable {
            return Ok(s);
        }
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let full = Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed_unsync();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "runbox-agent")
            .header(ACCESS_TOKEN_HEADER, &self.token)
            .header("content-type", "application/json")
            .body(full)?;
        let resp = self.send(req).await?;
        Ok(Response {
            status: resp.status().as_u16(),
            body: resp.into_body(),
        })
    }

    /// Sends a prepared request (headers as given: the caller adds the token) over the kept
    /// connection, and returns the raw response; the server's proxy streams through this.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.sender().await?;
        let resp = sender.send_request(req).await?;
        *self.idle.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        Ok(resp)
    }

    /// A byte stream to `127.0.0.1:port` inside the sandbox through the agent (`GET
    /// /tunnel/{port}`, upgraded): for backends whose network namespace the host cannot
    /// enter. The tunnel gets a connection of its own, since after the upgrade it carries
    /// nothing but the tunnel's bytes. A refusal (no token, nothing listening) is a
    /// `Connect` error whose source carries the agent's status and message.
    pub async fn tunnel(&self, port: u16) -> Result<crate::runtime::Stream, ClientError> {
        use hyper::header::{CONNECTION, UPGRADE};
        let refused = |kind: std::io::ErrorKind, why: String| ClientError::Connect {
            path: self.socket.clone(),
            source: std::io::Error::new(kind, why),
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        let req = Request::builder()
            .method("GET")
            .uri(format!("/tunnel/{port}"))
            .header("host", "runbox-agent")
            .header(ACCESS_TOKEN_HEADER, &self.token)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "runbox-tunnel")
            .body(empty)?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let kind = match status.as_u16() {
                401 | 403 => std::io::ErrorKind::PermissionDenied,
                502 => std::io::ErrorKind::ConnectionRefused,
                _ => std::io::ErrorKind::Other,
            };
            let text = Response {
                status: status.as_u16(),
                body: resp.into_body(),
            }
            .text()
            .await;
            return Err(refused(
                kind,
                format!("the agent refused the tunnel to port {port}: {status} {text}"),
            ));
        }
        let upgraded = hyper::upgrade::on(resp).await?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }

    /// Waits until the agent answers /ping.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // The socket is bound on the host, so a connect succeeds before the agent accepts;
            // each ping is bounded by what is left of `within`, or a stuck agent hangs us.
            let ping = tokio::time::timeout_at(deadline, self.request("GET", "/ping", None));
            match ping.await {
                Ok(Ok(r)) if r.status == 200 => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::NotReady {
                        path: self.socket.clone(),
                        within,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}
