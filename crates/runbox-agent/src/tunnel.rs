//! `GET /tunnel/{port}`: a byte stream to `127.0.0.1:port` inside the sandbox, carried over the
//! agent's own channel. Backends whose network stack the host cannot enter (gVisor's netstack
//! lives inside the sentry; a container's namespace may be out of reach) use it to reach a
//! service the code started.
//!
//! The exchange is an HTTP/1.1 upgrade (`Connection: upgrade`, `Upgrade: runbox-tunnel`): the
//! agent connects first, so a closed port is an ordinary error response (502 with the usual
//! `{code, message}`), and only then answers `101 Switching Protocols` and splices bytes both
//! ways until either side closes. The route sits behind the token like every other one: the
//! tunnel reaches nothing the sandbox's own code could not, but it is the host's way in.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use runbox_proto::execd::ErrorResponse;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::AppState;

/// The `Upgrade` protocol token of a tunnel.
pub const PROTOCOL: &str = "runbox-tunnel";

pub fn router() -> Router<AppState> {
    Router::new().route("/tunnel/{port}", get(open))
}

async fn open(Path(port): Path<u16>, mut req: Request) -> Response {
    let asks_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !asks_upgrade {
        return ApiError::bad_request(format!(
            "a tunnel needs `Connection: upgrade` and `Upgrade: {PROTOCOL}`"
        ))
        .into_response();
    }
    // Present only when the connection can be taken over (HTTP/1.1, served with upgrades).
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::bad_request("this connection cannot be upgraded (HTTP/1.1 only)")
            .into_response();
    };
    let target = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return bad_gateway(port, &e),
    };
    let _ = target.set_nodelay(true);
    tokio::spawn(async move {
        // Resolves once hyper has sent the 101 and handed the connection over.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        splice(TokioIo::new(upgraded), target).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp
}

/// Nothing listens on the port (or it refused us): the agent is fine, the upstream is not.
fn bad_gateway(port: u16, e: &std::io::Error) -> Response {
    let body = ErrorResponse {
        code: "BAD_GATEWAY".into(),
        message: format!("cannot connect to 127.0.0.1:{port} in the sandbox: {e}"),
    };
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// Copies both ways. The client's end of stream is passed on as a half-close (the service
/// may still answer); the service's end of stream ends the whole tunnel. Errors are just the
/// end of the stream.
///
/// The service side is read by readiness + `try_read` until `WouldBlock`, not with
/// `AsyncRead`: tokio's read drops the readiness after a short read, counting on the next
/// edge, and gVisor's netstack (runsc 0.0~20221219) gives no further edge for a FIN that
/// arrives with the last data, so the tunnel would never see the service's end.
async fn splice(client: TokioIo<hyper::upgrade::Upgraded>, target: TcpStream) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (target_read, mut target_write) = target.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut target_write).await;
        let _ = target_write.shutdown().await;
        // Done one way; the tunnel lasts until the service is done too.
        std::future::pending::<()>().await
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 << 10];
        while target_read.readable().await.is_ok() {
            match target_read.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
