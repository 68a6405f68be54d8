//! Server benchmark (issue 4), through the real HTTP API and proxy of an in-process server with
//! warm pools: create -> first stdout line of `echo hi`; create -> `df.describe()` with numpy
//! and pandas preloaded; warm `1+1` through the proxy; warm calls per second with 8 clients.
//! Run as root: `cargo build --release -p runbox-agent && cargo bench -p runbox-server --bench server`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use runbox_server::config::{Config, PoolConfig, Quotas};
use serde_json::{json, Value};

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn call(
    sender: &mut Sender,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, String) {
    sender.ready().await.expect("ready");
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    if !bytes.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(bytes))).expect("req"))
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    (status, text)
}

fn summary(name: &str, mut xs: Vec<Duration>, target: &str) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<44} {:>4} runs  p50 {:>8.3} ms  p10 {:>8.3} ms  p90 {:>8.3} ms   target {target}",
        xs.len(),
        ms(p(0.5)),
        ms(p(0.1)),
        ms(p(0.9))
    );
}

const KEY: &str = "bench-key-0123456789";

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("server bench: SKIPPED (needs root)");
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let agent: PathBuf = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target")
        .join("runbox-agent");
    if !agent.is_file() {
        eprintln!(
            "server bench: {} missing; run `cargo build --release -p runbox-agent`",
            agent.display()
        );
        std::process::exit(1);
    }
    let n: usize = std::env::var("RUNBOX_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let mut b = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
        let config = Config {
            data_dir: std::env::temp_dir().join(format!("runbox-bench-{}", u64::from_ne_bytes(b))),
            tenants: vec![runbox_server::config::TenantConfig { name: "bench".into(), keys: vec![KEY.into()] }],
            quotas: Quotas { max_sandboxes: 1000, max_memory: "1000Gi".into() },
            pools: vec![
                PoolConfig { image: "default".into(), runtime: None, memory: "512Mi".into(), cpu: "1".into(), pids: 256, size: 3, preload: vec![] },
                PoolConfig { image: "default".into(), runtime: None, memory: "1Gi".into(), cpu: "1".into(), pids: 256, size: 3, preload: vec!["numpy".into(), "pandas".into()] },
            ],
            ..Config::default()
        };
        let state = runbox_server::AppState::new(config, agent).expect("state");
        let manager = state.manager.clone();
        tokio::spawn(manager.clone().fill_pools());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(runbox_server::no_delay(listener), runbox_server::app(state)).await;
        });
        let key = [("OPEN-SANDBOX-API-KEY", KEY)];
        let wait_pool = |want: usize| {
            let manager = manager.clone();
            async move {
                for _ in 0..600 {
                    if manager.pooled() >= want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        println!("runbox server benchmark (in-process server, native sandboxes, warm pools; medians)\n");

        // create -> first stdout line of `echo hi`, from the pool
        let mut client = connect(addr).await;
        let mut times = Vec::new();
        for _ in 0..n {
            wait_pool(6).await;
            let t = Instant::now();
            let (st, text) = call(&mut client, "POST", "/v1/sandboxes", &key, Some(json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "512Mi" } }))).await;
            assert_eq!(st, 202, "{text}");
            let id = serde_json::from_str::<Value>(&text).expect("json")["id"].as_str().expect("id").to_owned();
            let (_, ep) = call(&mut client, "GET", &format!("/v1/sandboxes/{id}/endpoints/44772"), &key, None).await;
            let token = serde_json::from_str::<Value>(&ep).expect("json")["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().expect("tok").to_owned();
            let (_, out) = call(&mut client, "POST", &format!("/sandboxes/{id}/port/44772/command"), &[("X-EXECD-ACCESS-TOKEN", &token)], Some(json!({ "command": "echo hi" }))).await;
            assert!(out.contains("\"text\":\"hi\""), "{out}");
            times.push(t.elapsed());
            call(&mut client, "DELETE", &format!("/v1/sandboxes/{id}"), &key, None).await;
        }
        summary("create -> `echo hi` output (warm pool)", times, "p50 <= 10 ms");

        let mut times = Vec::new();
        for _ in 0..n {
            wait_pool(6).await;
            let t = Instant::now();
            let (st, text) = call(&mut client, "POST", "/v1/sandboxes", &key, Some(json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "1Gi" } }))).await;
            assert_eq!(st, 202, "{text}");
            let id = serde_json::from_str::<Value>(&text).expect("json")["id"].as_str().expect("id").to_owned();
            let (_, ep) = call(&mut client, "GET", &format!("/v1/sandboxes/{id}/endpoints/44772"), &key, None).await;
            let token = serde_json::from_str::<Value>(&ep).expect("json")["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().expect("tok").to_owned();
            let code = "import pandas as pd, numpy as np\npd.DataFrame(np.arange(12).reshape(4, 3)).describe()";
            let (_, out) = call(&mut client, "POST", &format!("/sandboxes/{id}/port/44772/code"), &[("X-EXECD-ACCESS-TOKEN", &token)], Some(json!({ "context": { "language": "python" }, "code": code }))).await;
            assert!(out.contains("text/html"), "{out}");
            times.push(t.elapsed());
            call(&mut client, "DELETE", &format!("/v1/sandboxes/{id}"), &key, None).await;
        }
        summary("create -> df.describe() (pool, pandas preloaded)", times, "p50 <= 30 ms");

        // warm 1+1 through API and proxy, and throughput with 8 clients
        wait_pool(6).await;
        let (_, text) = call(&mut client, "POST", "/v1/sandboxes", &key, Some(json!({ "image": { "uri": "default" }, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": { "cpu": "1", "memory": "512Mi" } }))).await;
        let id = serde_json::from_str::<Value>(&text).expect("json")["id"].as_str().expect("id").to_owned();
        let (_, ep) = call(&mut client, "GET", &format!("/v1/sandboxes/{id}/endpoints/44772"), &key, None).await;
        let token = serde_json::from_str::<Value>(&ep).expect("json")["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().expect("tok").to_owned();
        let path = format!("/sandboxes/{id}/port/44772/code");
        let body = json!({ "context": { "language": "python" }, "code": "1+1" });
        call(&mut client, "POST", &path, &[("X-EXECD-ACCESS-TOKEN", &token)], Some(body.clone())).await;
        let mut times = Vec::new();
        for _ in 0..n * 10 {
            let t = Instant::now();
            let (_, out) = call(&mut client, "POST", &path, &[("X-EXECD-ACCESS-TOKEN", &token)], Some(body.clone())).await;
            assert!(out.contains("\"text\":\"2\""));
            times.push(t.elapsed());
        }
        summary("warm 1+1 through the API proxy", times, "p50 <= 1.5 ms");

        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (total, token) = (total.clone(), token.clone());
            let path = format!("/sandboxes/{id}/port/44772/command");
            tasks.push(tokio::spawn(async move {
                let mut c = connect(addr).await;
                while Instant::now() < deadline {
                    let (st, _) = call(&mut c, "POST", &path, &[("X-EXECD-ACCESS-TOKEN", &token)], Some(json!({ "command": "true" }))).await;
                    if st == 200 {
                        total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let calls = total.load(std::sync::atomic::Ordering::Relaxed) as f64 / 3.0;
        println!("{:<44} {calls:>8.0} calls/s (8 concurrent clients, `true` via /command, 3 s)", "warm calls per second");
    });
}
