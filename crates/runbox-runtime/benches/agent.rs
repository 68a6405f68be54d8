//! Agent benchmark (issue 3): in one native sandbox, the round trip of `1+1` in a warm python
//! context, a python context's cold start, and `echo hi` through /command; plus the time from
//! starting the sandbox to the agent answering. Medians and p90 over N runs
//! (RUNBOX_BENCH_N, default 200). Run as root: `cargo bench -p runbox-runtime --bench agent`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runbox_jail::Policy;
use runbox_proto::execd::EventKind;
use runbox_runtime::{agent_argv, AgentClient, AgentSandbox};
use serde_json::json;

fn agent_binary() -> PathBuf {
    // target/release/deps/agent-xxxx -> target/release/runbox-agent
    let exe = std::env::current_exe().expect("bench exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("runbox-agent")
}

fn summary(name: &str, mut xs: Vec<Duration>, target: &str) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<34} {:>5} runs  p50 {:>8.3} ms  p10 {:>8.3} ms  p90 {:>8.3} ms   target {target}",
        xs.len(),
        ms(p(0.5)),
        ms(p(0.1)),
        ms(p(0.9))
    );
}

async fn run_code(client: &AgentClient, ctx: &str, code: &str) -> Option<String> {
    let body = json!({ "context": { "id": ctx, "language": "python" }, "code": code });
    let resp = client.request("POST", "/code", Some(body)).await.ok()?;
    let mut text = None;
    resp.events(|e| {
        if e.kind == EventKind::Result {
            text = e
                .results
                .as_ref()
                .and_then(|r| r.get("text"))
                .and_then(|t| t.as_str())
                .map(str::to_owned);
        }
    })
    .await
    .ok()?;
    text
}

async fn new_context(client: &AgentClient) -> String {
    let resp = client
        .request(
            "POST",
            "/code/context",
            Some(json!({ "language": "python" })),
        )
        .await
        .expect("context");
    let v: serde_json::Value = serde_json::from_str(&resp.text().await).expect("json");
    v["id"].as_str().expect("id").to_owned()
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("agent bench: SKIPPED (needs root to start native sandboxes)");
        return;
    }
    let n: usize = std::env::var("RUNBOX_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let agent = agent_binary();
    if !agent.is_file() {
        eprintln!(
            "agent bench: {} missing; run `cargo build --release -p runbox-agent` first",
            agent.display()
        );
        std::process::exit(1);
    }
    // Sandbox start -> agent ready, each in a fresh sandbox (single-threaded when starting).
    let mut starts = Vec::new();
    for _ in 0..20.min(n) {
        let mut policy = Policy::new(Vec::new());
        policy.argv = agent_argv(&policy, &[]);
        let t = Instant::now();
        let sb = AgentSandbox::start(policy, &agent).expect("sandbox");
        let client = sb.client();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt")
            .block_on(async {
                client
                    .wait_ready(Duration::from_secs(10))
                    .await
                    .expect("ready");
            });
        starts.push(t.elapsed());
        drop(sb);
    }

    let mut policy = Policy::new(Vec::new());
    policy.limits.timeout = Some(Duration::from_secs(600));
    policy.argv = agent_argv(&policy, &[]);
    let sb = AgentSandbox::start(policy, &agent).expect("sandbox");
    let client = sb.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        println!("runbox agent benchmark, {n} runs each (one native sandbox; medians)\n");
        summary("sandbox start -> agent ready", starts, "(info)");

        let mut cold = Vec::new();
        for _ in 0..20.min(n) {
            let ctx = new_context(&client).await;
            let t = Instant::now();
            assert_eq!(run_code(&client, &ctx, "1+1").await.as_deref(), Some("2"));
            cold.push(t.elapsed());
            let _ = client
                .request("DELETE", &format!("/code/contexts/{ctx}"), None)
                .await;
        }
        summary("python context cold start + 1+1", cold, "<= 30 ms");

        let ctx = new_context(&client).await;
        run_code(&client, &ctx, "0").await;
        let mut warm = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(run_code(&client, &ctx, "1+1").await.as_deref(), Some("2"));
            warm.push(t.elapsed());
        }
        summary("warm python 1+1 round trip", warm, "p50 <= 0.3 ms");

        let mut echo = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let resp = client
                .request("POST", "/command", Some(json!({ "command": "echo hi" })))
                .await
                .expect("command");
            let mut out = Vec::new();
            resp.events(|e| {
                if e.kind == EventKind::Stdout {
                    out.push(e.text.unwrap_or_default());
                }
            })
            .await
            .expect("events");
            assert_eq!(out, vec!["hi"]);
            echo.push(t.elapsed());
        }
        summary("echo hi via /command", echo, "p50 <= 2 ms");

        // Finer measurements (where the time of the two round trips goes). Optional: they
        // run only with RUNBOX_BENCH_DETAIL=1.
        if std::env::var_os("RUNBOX_BENCH_DETAIL").is_some() {
            println!();
            let mut ping = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                let resp = client.request("GET", "/ping", None).await.expect("ping");
                let _ = resp.text().await;
                ping.push(t.elapsed());
            }
            summary("  GET /ping round trip", ping, "(info)");
            let stages = |name: &'static str, body: serde_json::Value, path: &'static str| {
                let client = client.clone();
                async move {
                    let (mut head, mut first, mut last_ev, mut end) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for _ in 0..n {
                        let t = Instant::now();
                        let resp = client
                            .request("POST", path, Some(body.clone()))
                            .await
                            .expect("request");
                        head.push(t.elapsed());
                        let mut seen: Vec<Duration> = Vec::new();
                        resp.events(|e| {
                            if e.kind != EventKind::Init {
                                seen.push(t.elapsed());
                            }
                        })
                        .await
                        .expect("events");
                        end.push(t.elapsed());
                        first.push(seen.first().copied().unwrap_or_default());
                        last_ev.push(seen.last().copied().unwrap_or_default());
                    }
                    summary(&format!("  {name}: response head"), head, "(info)");
                    summary(
                        &format!("  {name}: first event after init"),
                        first,
                        "(info)",
                    );
                    summary(&format!("  {name}: last event"), last_ev, "(info)");
                    summary(&format!("  {name}: body end"), end, "(info)");
                }
            };
            stages(
                "python 1+1",
                json!({ "context": { "id": ctx, "language": "python" }, "code": "1+1" }),
                "/code",
            )
            .await;
            stages(
                "python pass",
                json!({ "context": { "id": ctx, "language": "python" }, "code": "pass" }),
                "/code",
            )
            .await;
            stages("echo hi", json!({ "command": "echo hi" }), "/command").await;
            stages("`:` (no output)", json!({ "command": ":" }), "/command").await;
        }
    });
    drop(sb);
}
