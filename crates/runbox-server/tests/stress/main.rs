//! Bad input and stress against the server: huge and malformed bodies, a create storm against
//! a small quota, a huge upload through the proxy, and `kill -9` of the real binary. Each must
//! end in a fast, clear 4xx with the `{code, message}` shape, bounded server memory, and no
//! half-created state. The server runs in this process (except for the restart test), so
//! `VmRSS` of this process is the server's memory.

mod restart;
#[path = "../support/mod.rs"]
mod support;
mod upload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use runbox_server::config::{Config, Quotas, TenantConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{built_binary, require_root, temp_dir, Connections, Reply, Server};

/// The tests of this binary run one at a time: they measure the server's memory and timing,
/// and a parallel neighbour (another 1 GiB stream) would blur both.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEY: &str = "stress-tenant-key-123";
/// The header that makes a request the tenant's.
const AUTH: (&str, &str) = ("OPEN-SANDBOX-API-KEY", KEY);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Resident memory of this process (the in-process server and its clients), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// The production connection loop (`serve_connections`, with its header timeout and head size
/// limit) on a random port, with one tenant holding `KEY`.
async fn spawn_server(max_sandboxes: usize) -> Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: temp_dir("runbox-stress-server"),
        tenants: vec![TenantConfig {
            name: "t".into(),
            keys: vec![KEY.into()],
        }],
        quotas: Quotas {
            max_sandboxes,
            max_memory: "64Gi".into(),
        },
        ..Config::default()
    };
    let state = runbox_server::AppState::new(config, built_binary("runbox-agent")).expect("state");
    Server::start(state, Connections::Production(Duration::from_secs(30))).await
}

impl Reply {
    /// The one error shape: `{"code": "<CODE>", "message": "<non-empty>"}`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

/// Creates a sandbox and returns its id and execd access token.
async fn create(s: &Server, extensions: Option<Value>) -> Result<(String, String), Reply> {
    let mut body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "256Mi" } });
    if let Some(ext) = extensions {
        body["extensions"] = ext;
    }
    let r = s.call("POST", "/v1/sandboxes", &[AUTH], Some(body)).await;
    if r.status != 202 {
        return Err(r);
    }
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let token = s.access_token(&id, 44772, &[AUTH]).await;
    Ok((id, token))
}

/// Writes a chunked request body from one reused buffer, counting what the socket took, until
/// `total` bytes are out or the peer stops reading. Never holds more than one chunk.
async fn write_chunked(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    prefix: Bytes,
    fill: u8,
    total: u64,
    suffix: Bytes,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    const CHUNK: usize = 256 * 1024;
    let data = vec![fill; CHUNK];
    if !prefix.is_empty() {
        w.write_all(format!("{:x}\r\n", prefix.len()).as_bytes())
            .await?;
        w.write_all(&prefix).await?;
        w.write_all(b"\r\n").await?;
    }
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(format!("{n:x}\r\n").as_bytes()).await?;
        w.write_all(&data[..n]).await?;
        w.write_all(b"\r\n").await?;
        left -= n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    if !suffix.is_empty() {
        w.write_all(format!("{:x}\r\n", suffix.len()).as_bytes())
            .await?;
        w.write_all(&suffix).await?;
        w.write_all(b"\r\n").await?;
    }
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

/// Reads one response (head, then a `content-length` or chunked body) off a raw connection.
async fn read_response(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Reply> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: hyper::HeaderMap = lines
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().parse().ok()?, value.trim().parse().ok()?))
        })
        .collect();
    let length = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let chunked = headers
        .get(hyper::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = r.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let mut body = buf[head_end..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Some(Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
    out
}

/// What a streamed request saw: the response (if any), when it came, and the bytes the
/// client had handed to the socket by then.
struct Streamed {
    reply: Option<Reply>,
    elapsed: Duration,
    sent_at_reply: u64,
    peak_rss: u64,
}

/// Streams `total` bytes of `fill` (between `prefix` and `suffix`) as a chunked request body,
/// sampling VmRSS all along, until the response arrives or `stop_after` bytes are out (then
/// the client hangs up).
#[allow(clippy::too_many_arguments)]
async fn stream_request(
    addr: std::net::SocketAddr,
    head: String,
    prefix: &'static [u8],
    fill: u8,
    total: u64,
    suffix: &'static [u8],
    stop_after: u64,
    deadline: Duration,
) -> Streamed {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    w.write_all(head.as_bytes()).await.expect("write head");
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writer = tokio::spawn(write_chunked(
        w,
        Bytes::from_static(prefix),
        fill,
        total,
        Bytes::from_static(suffix),
        sent.clone(),
    ));
    let reader = tokio::spawn(async move { read_response(&mut r).await });
    tokio::pin!(reader);
    let mut peak_rss = rss();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let reply = loop {
        tokio::select! {
            reply = &mut reader => break reply.expect("reader task"),
            _ = tick.tick() => {
                peak_rss = peak_rss.max(rss());
                if sent.load(Ordering::Relaxed) >= stop_after || start.elapsed() > deadline {
                    break None;
                }
            }
        }
    };
    let elapsed = start.elapsed();
    let sent_at_reply = sent.load(Ordering::Relaxed);
    writer.abort();
    reader.abort();
    peak_rss = peak_rss.max(rss());
    Streamed {
        reply,
        elapsed,
        sent_at_reply,
        peak_rss,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_parallel_creates_against_a_quota_of_ten() {
    let _serial = SERIAL.lock().await;
    require_root!();
    let s = Arc::new(spawn_server(10).await);
    let before = rss();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "500m", "memory": "128Mi" } });
            let t = Instant::now();
            let r = s.call("POST", "/v1/sandboxes", &[AUTH], Some(body)).await;
            (r, t.elapsed())
        }));
    }
    let mut created = Vec::new();
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    let mut other = Vec::new();
    for t in tasks {
        let (r, took) = t.await.expect("task");
        match r.status {
            202 => created.push(r.json()["id"].as_str().expect("id").to_owned()),
            429 => {
                r.assert_error(429, "QUOTA_EXCEEDED");
                refused += 1;
                slowest_refusal = slowest_refusal.max(took);
            }
            _ => other.push((r.status, r.text)),
        }
    }
    let all = start.elapsed();
    let after = rss();
    eprintln!(
        "500 creates: {} created, {refused} refused in {all:?} (slowest 429 {slowest_refusal:?}); VmRSS {:.1} -> {:.1} MiB",
        created.len(),
        mib(before),
        mib(after)
    );
    assert!(other.is_empty(), "neither 202 nor 429: {other:?}");
    assert_eq!(created.len(), 10);
    assert_eq!(refused, 490);
    assert!(all < Duration::from_secs(60), "{all:?}");
    assert!(
        after.saturating_sub(before) < 200 * MIB,
        "VmRSS grew by {:.1} MiB",
        mib(after.saturating_sub(before))
    );

    // Nothing half-created: exactly the 10 in the list, and only their workspaces on disk.
    let list = s
        .call("GET", "/v1/sandboxes?pageSize=1000", &[AUTH], None)
        .await
        .json();
    assert_eq!(list["pagination"]["totalItems"], 10, "{list}");
    let mut listed: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            assert_eq!(i["status"]["state"], "Running", "{i}");
            i["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(s.data_dir().join("workspaces"))
        .expect("workspaces dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    created.sort();
    listed.sort();
    on_disk.sort();
    assert_eq!(listed, created);
    assert_eq!(on_disk, created, "workspace dirs beyond the created ones");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_gib_create_body_is_refused_before_it_is_read() {
    let _serial = SERIAL.lock().await;
    require_root!();
    let s = spawn_server(5).await;
    // Warm up the connection path so one-time allocations do not count as growth.
    assert_eq!(
        s.call("GET", "/v1/sandboxes", &[AUTH], None).await.status,
        200
    );
    let before = rss();
    let head = format!(
        "POST /v1/sandboxes HTTP/1.1\r\nhost: {}\r\nOPEN-SANDBOX-API-KEY: {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        s.addr
    );
    // A JSON string that never ends: valid so far at every byte, so only size can stop it.
    let got = stream_request(
        s.addr,
        head,
        b"{\"image\":{\"uri\":\"",
        b'a',
        GIB,
        b"\"}}",
        GIB,
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "1 GiB body: answered after {:?} with {:.1} MiB sent; peak VmRSS {:.1} -> {:.1} MiB",
        got.elapsed,
        mib(got.sent_at_reply),
        mib(before),
        mib(got.peak_rss)
    );
    let reply = got
        .reply
        .expect("no response before the whole GiB was sent");
    eprintln!("1 GiB body: {} {}", reply.status, reply.text);
    assert!(
        reply.status == 413 || reply.status == 400,
        "{} {}",
        reply.status,
        reply.text
    );
    let code = if reply.status == 413 {
        reply.json()["code"].as_str().unwrap_or_default().to_owned()
    } else {
        "INVALID_REQUEST".to_owned()
    };
    reply.assert_error(reply.status, &code);
    assert!(got.elapsed < Duration::from_secs(3), "{:?}", got.elapsed);
    assert!(got.sent_at_reply < 256 * MIB);
    assert!(
        got.peak_rss.saturating_sub(before) < 64 * MIB,
        "VmRSS grew by {:.1} MiB",
        mib(got.peak_rss.saturating_sub(before))
    );
    // The server is fine afterwards.
    assert_eq!(
        s.call("GET", "/v1/sandboxes", &[AUTH], None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_create_bodies_are_fast_400s_with_the_error_shape() {
    let _serial = SERIAL.lock().await;
    require_root!();
    let s = spawn_server(5).await;
    let mut nested = vec![b'['; 100_000];
    nested.extend(vec![b']'; 100_000]);
    let mut deep_object = Vec::new();
    for _ in 0..100_000 {
        deep_object.extend_from_slice(b"{\"a\":");
    }
    deep_object.extend_from_slice(b"1");
    deep_object.extend(vec![b'}'; 100_000]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("100k nested arrays", nested),
        ("100k nested objects", deep_object),
        (
            "invalid UTF-8 in a string",
            b"{\"image\":{\"uri\":\"\xff\xfe\xfd\"}}".to_vec(),
        ),
        ("invalid UTF-8 outside strings", b"\xff\xfe{}".to_vec()),
        ("image is a number", br#"{"image":5}"#.to_vec()),
        (
            "entrypoint is a string",
            br#"{"entrypoint":"tail -f /dev/null"}"#.to_vec(),
        ),
        ("timeout is a string", br#"{"timeout":"ten"}"#.to_vec()),
        ("timeout is negative", br#"{"timeout":-1}"#.to_vec()),
        (
            "memory is a number",
            br#"{"resourceLimits":{"memory":512}}"#.to_vec(),
        ),
        ("metadata is a list", br#"{"metadata":["a"]}"#.to_vec()),
        ("unknown top-level field", br#"{"bogus":1}"#.to_vec()),
        (
            "unknown field in image",
            br#"{"image":{"uri":"default","tag":"x"}}"#.to_vec(),
        ),
        ("top level is an array", b"[]".to_vec()),
        ("truncated", br#"{"image":{"uri":"#.to_vec()),
        ("empty body", Vec::new()),
        ("NUL bytes", vec![0u8; 4096]),
    ];
    for (what, body) in cases {
        let start = Instant::now();
        let r = s
            .call_raw(
                "POST",
                "/v1/sandboxes",
                &[AUTH, ("content-type", "application/json")],
                body,
            )
            .await;
        let took = start.elapsed();
        eprintln!("{what}: {} in {took:?}", r.status);
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.assert_error(400, "INVALID_REQUEST");
        assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    }
    // No content type at all: the same shape, not axum's plain-text 415.
    let r = s
        .call_raw(
            "POST",
            "/v1/sandboxes",
            &[AUTH],
            br#"{"image":{"uri":"default"}}"#.to_vec(),
        )
        .await;
    assert!(r.status == 400 || r.status == 415, "{}", r.text);
    r.assert_error(r.status, "INVALID_REQUEST");
    // None of it left a record behind.
    let list = s.call("GET", "/v1/sandboxes", &[AUTH], None).await.json();
    assert_eq!(list["pagination"]["totalItems"], 0, "{list}");
}
