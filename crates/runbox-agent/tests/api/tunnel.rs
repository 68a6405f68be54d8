//! `GET /tunnel/{port}` over a real connection (an upgrade cannot go through `oneshot`): the
//! token is required, a closed port is a 502 in the usual error shape, and an accepted tunnel
//! carries bytes both ways to 127.0.0.1:port.

use std::path::PathBuf;

use runbox_agent::app;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

use super::{rand_suffix, state, TOKEN};

/// Serves the agent's router on a fresh unix socket, as main.rs does.
async fn serve() -> PathBuf {
    let path = std::env::temp_dir().join(format!("runbox-agent-tunnel-{}.sock", rand_suffix()));
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let router = app(state());
    tokio::spawn(async move { axum::serve(listener, router).await });
    path
}

/// Sends a tunnel request and reads the response head; the stream is left at its body.
async fn open(socket: &PathBuf, port: u16, token: Option<&str>) -> (String, UnixStream) {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    let token = token.map_or(String::new(), |t| format!("X-EXECD-ACCESS-TOKEN: {t}\r\n"));
    let head = format!(
        "GET /tunnel/{port} HTTP/1.1\r\nHost: agent\r\n{token}Connection: upgrade\r\nUpgrade: runbox-tunnel\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("response head");
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), stream)
}

/// The JSON body after a response head (Content-Length framed).
async fn json_body(head: &str, stream: &mut UnixStream) -> Value {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("body");
    serde_json::from_slice(&body).expect("json")
}

#[tokio::test]
async fn tunnel_splices_to_a_local_port_once_upgraded() {
    let socket = serve().await;
    let echo = TcpListener::bind(("127.0.0.1", 0)).await.expect("echo");
    let port = echo.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut conn, _) = echo.accept().await.expect("accept");
        let (mut r, mut w) = conn.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let (head, mut stream) = open(&socket, port, Some(TOKEN)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: runbox-tunnel"),
        "{head}"
    );
    for msg in [&b"hello"[..], b"\0binary\xff", b"again"] {
        stream.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, msg);
    }
    // Closing our side closes the upstream's, which closes the tunnel.
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("end");
    assert!(rest.is_empty());
    let _ = std::fs::remove_file(socket);
}

#[tokio::test]
async fn tunnel_needs_the_token_an_upgrade_and_a_listening_port() {
    let socket = serve().await;
    let (head, _) = open(&socket, 9, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (head, _) = open(&socket, 9, Some("wrong-token-0123456789")).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // A port nobody listens on: bound and released.
    let port = {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (head, mut stream) = open(&socket, port, Some(TOKEN)).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let v = json_body(&head, &mut stream).await;
    assert_eq!(v["code"], "BAD_GATEWAY");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains(&port.to_string())),
        "{v}"
    );

    let mut plain = UnixStream::connect(&socket).await.expect("connect");
    let req = format!("GET /tunnel/{port} HTTP/1.1\r\nHost: agent\r\nX-EXECD-ACCESS-TOKEN: {TOKEN}\r\nConnection: close\r\n\r\n");
    plain.write_all(req.as_bytes()).await.expect("request");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let _ = std::fs::remove_file(socket);
}
