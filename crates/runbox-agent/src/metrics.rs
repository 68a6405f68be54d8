//! /metrics and /metrics/watch: CPU and memory of this sandbox.
//!
//! The sandbox has no /sys, and cgroup v1 cannot be mounted inside a user namespace, so the
//! numbers come from /proc, which (in our pid namespace) lists exactly the sandbox's
//! processes: CPU is the sum of their utime+stime plus what the agent has reaped (PID 1's
//! cumulative children times), memory the sum of their resident sets plus what the sandbox's
//! tmpfs mounts hold (tmpfs pages count against the sandbox's memory limit).

use std::convert::Infallible;
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use runbox_proto::execd::Metrics;

use crate::stream::now_ms;
use crate::AppState;

/// Remembers the previous CPU sample so usage is a rate.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    last: Arc<Mutex<Option<(Instant, f64)>>>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(snapshot))
        .route("/metrics/watch", get(watch))
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Total CPU seconds of every process we can see, plus reaped children of PID 1.
fn cpu_seconds() -> f64 {
    let mut ticks = 0u64;
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command name: field 14 utime, 15 stime, 16 cutime, 17 cstime (1-based),
        // i.e. indices 11..=14 of `fields`, which starts at field 3.
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += get(11) + get(12);
        if pid == "1" {
            ticks += get(13) + get(14);
        }
    }
    ticks as f64 / ticks_per_second()
}

/// Resident memory of every visible process plus what the sandbox's tmpfs mounts hold.
fn memory_bytes() -> u64 {
    let mut total = 0u64;
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Ok(statm) = fs::read_to_string(format!("/proc/{pid}/statm")) {
                let resident: u64 = statm
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                total += resident * page_size();
            }
        }
    }
    for mount in ["/tmp", "/dev/shm", "/workspace"] {
        if let Ok(s) = rustix::fs::statfs(mount) {
            // Only tmpfs counts against memory; a host-directory workspace lives on disk.
            if s.f_type == 0x0102_1994 {
                total += (s.f_blocks.saturating_sub(s.f_bfree)) * s.f_bsize as u64;
            }
        }
    }
    total
}

fn mem_total_bytes(state: &AppState) -> u64 {
    state.config.memory_limit_bytes.unwrap_or_else(|| {
        fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    })
}

fn cpu_count(state: &AppState) -> f64 {
    state
        .config
        .cpu_limit
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64))
}

/// One sample; CPU percent is of the sandbox's CPU allowance since the previous sample.
pub fn sample(state: &AppState) -> Metrics {
    let now = Instant::now();
    let cpu = cpu_seconds();
    let cores = cpu_count(state);
    let mut last = state.metrics.last.lock().unwrap_or_else(|p| p.into_inner());
    let pct = match *last {
        Some((t, c)) if now > t => {
            let wall = now.duration_since(t).as_secs_f64();
            ((cpu - c).max(0.0) / wall / cores * 100.0).clamp(0.0, 100.0)
        }
        _ => 0.0,
    };
    *last = Some((now, cpu));
    Metrics {
        cpu_count: cores,
        cpu_used_pct: (pct * 10.0).round() / 10.0,
        mem_total_mib: mem_total_bytes(state) as f64 / 1_048_576.0,
        mem_used_mib: ((memory_bytes() as f64 / 1_048_576.0) * 10.0).round() / 10.0,
        timestamp: now_ms(),
    }
}

async fn snapshot(State(state): State<AppState>) -> Json<Metrics> {
    Json(sample(&state))
}

/// One sample a second until the client goes away.
async fn watch(State(state): State<AppState>) -> Response {
    let stream = futures_util::stream::unfold(state, |state| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = sample(&state);
        let mut line = serde_json::to_string(&m).unwrap_or_default();
        line.push_str("\n\n");
        Some((Ok::<_, Infallible>(Bytes::from(line)), state))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
