//! Isolation-backend benchmark: the in-process server of `server.rs` (real HTTP, lifecycle API
//! and agent proxy) starting sandboxes on native, docker and gvisor side by side in one run,
//! next to what the same isolation costs outside runbox.
//!
//! Rows, with the variants alternating within every round (and the order rotating from round
//! to round) so drift on a shared machine hits all of them alike:
//! - create -> first stdout, cold: `POST /v1/sandboxes` with no pool, the execd endpoint, then
//!   `echo hi` through the proxy until its stdout event arrives; the sandbox is deleted after
//!   (the delete is its own row) and `GET .../isolation` must name the backend asked for;
//! - warm `1+1`: python `/code` through the proxy, one sandbox per backend, first call excluded;
//! - create -> first stdout from a warm pool of one sandbox, on servers (one per backend)
//!   started afterwards so pool refills never overlap the cold rows;
//! - baselines: bare `python3 -c 'print(1)'`, the same under `docker run --rm --network none
//!   runbox/default:latest` and `runsc --platform=ptrace --network=none do` (host root), timed
//!   to exit.
//!
//! A backend whose `Runtime::check` fails is reported unavailable with the reason; one that
//! fails while measured is reported with the exact error and the others go on. Native and
//! gvisor run the `default` image as the host's /usr (the image store is pinned to an empty
//! directory, so a concurrent `runbox image build` cannot change it mid-run); docker runs
//! `runbox/default:latest`; both are Debian bookworm's python 3.11.
//!
//! Run as root: `cargo build --release -p runbox-agent && cargo bench -p runbox-server --bench
//! backends` (RUNBOX_BENCH_N: runs per row, default 15; warm `1+1` makes ten times as many).
//! Progress goes to stderr, the table to stdout, everything to `target/bench/backends.json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use runbox_proto::execd::{Event, EventKind, ACCESS_TOKEN_HEADER, EXECD_PORT};
use runbox_runtime::Backend;
use runbox_server::config::{Config, PoolConfig, Quotas, TenantConfig};
use runbox_server::manager::Manager;
use serde_json::{json, Value};

const KEY: &str = "bench-key-0123456789";
const API_KEY: [(&str, &str); 1] = [("OPEN-SANDBOX-API-KEY", KEY)];
const DOCKER_IMAGE: &str = "runbox/default:latest";
/// The host's python, which native and gvisor sandboxes run too (PATH may hold a pyenv shim).
const PYTHON: &str = "/usr/bin/python3";
/// runbox's runsc state root: what `scripts/leftovers.sh` lists.
const RUNSC_ROOT: &str = "/run/runbox/runsc";
/// How long to wait for someone else's sandboxes to go before measuring anyway.
const LEFTOVER_WAIT: Duration = Duration::from_secs(60);
const POOL_WAIT: Duration = Duration::from_secs(60);

const COLD: &str = "create -> first stdout (cold)";
const DELETE: &str = "delete";
const WARM: &str = "warm 1+1 through the proxy";
const POOLED: &str = "create -> first stdout (warm pool)";
const BASELINE: &str = "python3 -c 'print(1)' to exit";

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive connection to the server, reopened after an error.
struct Client {
    addr: SocketAddr,
    sender: Option<Sender>,
}

struct Reply {
    status: u16,
    body: String,
    /// When the first event matching `until` arrived.
    seen: Option<Instant>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        until: Option<fn(&Event) -> bool>,
    ) -> Result<Reply, String> {
        let result = self.exchange(method, path, headers, body, until).await;
        if result.is_err() {
            self.sender = None;
        }
        result.map_err(|e| format!("{method} {path}: {e}"))
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        until: Option<fn(&Event) -> bool>,
    ) -> Result<Reply, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("nodelay: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err("no connection".into());
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = body.map(Value::to_string).unwrap_or_default();
        if !bytes.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let (mut buf, mut scanned, mut seen) = (Vec::<u8>::new(), 0, None);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            let Some(matches) = until.filter(|_| seen.is_none()) else {
                continue;
            };
            // Events are JSON objects ended by a blank line; JSON escapes newlines in strings.
            while let Some(end) = buf[scanned..].windows(2).position(|w| w == b"\n\n") {
                let event = serde_json::from_slice::<Event>(&buf[scanned..scanned + end]);
                scanned += end + 2;
                if event.is_ok_and(|e| matches(&e)) {
                    seen = Some(Instant::now());
                    break;
                }
            }
        }
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&buf).into_owned(),
            seen,
        })
    }
}

fn stdout_hi(e: &Event) -> bool {
    e.kind == EventKind::Stdout && e.text.as_deref() == Some("hi")
}

fn field(body: &str, path: &[&str]) -> Result<String, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    path.iter()
        .fold(&v, |v, k| &v[*k])
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no {} in {body}", path.join(".")))
}

struct Sandbox {
    id: String,
    token: String,
}

impl Sandbox {
    fn execd(&self, what: &str) -> String {
        format!("/sandboxes/{}/port/{EXECD_PORT}/{what}", self.id)
    }
}

/// Creates a sandbox on `backend` and fetches its execd token: what a client does first.
async fn create(c: &mut Client, backend: Backend) -> Result<Sandbox, String> {
    let body = json!({
        "image": { "uri": "default" },
        "entrypoint": ["tail", "-f", "/dev/null"],
        "resourceLimits": { "cpu": "1", "memory": "512Mi" },
        "extensions": { "runbox.runtime": backend.as_str() },
    });
    let r = c
        .send("POST", "/v1/sandboxes", &API_KEY, Some(&body), None)
        .await?;
    if r.status != 202 {
        return Err(format!("POST /v1/sandboxes: {} {}", r.status, r.body));
    }
    let id = field(&r.body, &["id"])?;
    let path = format!("/v1/sandboxes/{id}/endpoints/{EXECD_PORT}");
    let token = match c.send("GET", &path, &API_KEY, None, None).await {
        Ok(r) => field(&r.body, &["headers", ACCESS_TOKEN_HEADER]),
        Err(e) => Err(e),
    };
    match token {
        Ok(token) => Ok(Sandbox { id, token }),
        Err(e) => {
            let _ = delete(c, &id).await;
            Err(e)
        }
    }
}

async fn delete(c: &mut Client, id: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let r = c
        .send(
            "DELETE",
            &format!("/v1/sandboxes/{id}"),
            &API_KEY,
            None,
            None,
        )
        .await?;
    if !(200..300).contains(&r.status) {
        return Err(format!("DELETE {id}: {} {}", r.status, r.body));
    }
    Ok(t.elapsed())
}

/// Create -> first stdout line of `echo hi`, then checks the isolation the sandbox got and
/// deletes it. Returns (create -> stdout, delete, isolation report).
async fn first_stdout(
    c: &mut Client,
    backend: Backend,
) -> Result<(Duration, Duration, Value), String> {
    let t = Instant::now();
    let sandbox = create(c, backend).await?;
    let checked = async {
        let token = [(ACCESS_TOKEN_HEADER, sandbox.token.as_str())];
        let cmd = json!({ "command": "echo hi" });
        let r = c
            .send(
                "POST",
                &sandbox.execd("command"),
                &token,
                Some(&cmd),
                Some(stdout_hi),
            )
            .await?;
        let seen = r
            .seen
            .ok_or_else(|| format!("no stdout `hi` in {} {}", r.status, r.body))?;
        let path = format!("/v1/sandboxes/{}/isolation", sandbox.id);
        let iso = c.send("GET", &path, &API_KEY, None, None).await?;
        let report: Value =
            serde_json::from_str(&iso.body).map_err(|e| format!("isolation: {e}: {}", iso.body))?;
        if report["backend"] != backend.as_str() {
            return Err(format!("asked for {backend}, got: {report}"));
        }
        Ok((seen - t, report))
    }
    .await;
    let deleted = delete(c, &sandbox.id).await;
    let (elapsed, report) = checked?;
    Ok((elapsed, deleted?, report))
}

/// One `python3 -c 'print(1)'` variant run by the benchmark itself, timed to exit.
struct Baseline {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
}

impl Baseline {
    fn all(runsc_root: &Path) -> Vec<Baseline> {
        let args = |prefix: &[&str]| -> Vec<String> {
            prefix
                .iter()
                .chain(&[PYTHON, "-c", "print(1)"])
                .map(|s| s.to_string())
                .collect()
        };
        let root = runsc_root.to_string_lossy();
        vec![
            Baseline {
                name: "bare",
                program: PYTHON,
                args: vec!["-c".into(), "print(1)".into()],
            },
            Baseline {
                name: "docker run",
                program: "docker",
                args: args(&["run", "--rm", "--network", "none", DOCKER_IMAGE]),
            },
            Baseline {
                name: "runsc do",
                program: "runsc",
                args: args(&["--root", &root, "--platform=ptrace", "--network=none", "do"]),
            },
        ]
    }

    fn command_line(&self) -> String {
        let quote = |a: &String| {
            if a.contains(' ') || a.contains('(') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        };
        std::iter::once(self.program.to_owned())
            .chain(self.args.iter().map(quote))
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn run(&self) -> Result<Duration, String> {
        let (program, args, line) = (self.program, self.args.clone(), self.command_line());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let out = Command::new(program)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{line}: {e}"))?;
            let elapsed = t.elapsed();
            if !out.status.success() || out.stdout != b"1\n" {
                return Err(format!(
                    "{line}: {}, stdout {:?}, stderr {:?}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(elapsed)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// What became of a backend in this run.
enum Status {
    Available(String),
    Unavailable(String),
    Failed(String),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Available(detail) => write!(f, "available: {detail}"),
            Status::Unavailable(reason) => write!(f, "UNAVAILABLE: {reason}"),
            Status::Failed(error) => write!(f, "FAILED: {error}"),
        }
    }
}

/// The report's rows in order, each with its three variants: the backends, or for the
/// baseline the command isolated the same way (nothing, a Docker container, runsc). The
/// first variant is what the others are compared with.
const ROWS: [(&str, [&str; 3]); 5] = [
    (COLD, ["native", "docker", "gvisor"]),
    (POOLED, ["native", "docker", "gvisor"]),
    (WARM, ["native", "docker", "gvisor"]),
    (DELETE, ["native", "docker", "gvisor"]),
    (BASELINE, ["bare", "docker run", "runsc do"]),
];

/// Samples per (row, variant).
#[derive(Default)]
struct Samples(BTreeMap<(&'static str, String), Vec<Duration>>);

/// One measured (row, variant): its statistics and its median over the row's first variant.
struct Summary {
    row: &'static str,
    variant: &'static str,
    column: usize,
    runs: usize,
    stats: Stats,
    ratio: Option<f64>,
}

impl Samples {
    fn push(&mut self, row: &'static str, variant: &str, d: Duration) {
        self.0.entry((row, variant.to_owned())).or_default().push(d);
    }

    fn summaries(&self) -> Vec<Summary> {
        let mut out = Vec::new();
        for (row, variants) in ROWS {
            let get = |v: &str| {
                self.0
                    .get(&(row, v.to_owned()))
                    .map(|xs| (xs.len(), Stats::of(xs)))
            };
            let base = get(variants[0]).map(|(_, s)| s.p50);
            for (column, variant) in variants.into_iter().enumerate() {
                if let Some((runs, stats)) = get(variant) {
                    let ratio = base.map(|b| stats.p50 / b);
                    out.push(Summary {
                        row,
                        variant,
                        column,
                        runs,
                        stats,
                        ratio,
                    });
                }
            }
        }
        out
    }
}

struct Stats {
    p10: f64,
    p50: f64,
    p90: f64,
    min: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(xs: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Stats {
            p10: p(0.1),
            p50: p(0.5),
            p90: p(0.9),
            min: ms[0],
            max: ms[ms.len() - 1],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }
}

/// A server on a loopback port with its own data directory.
struct Server {
    addr: SocketAddr,
    manager: Arc<Manager>,
    data_dir: PathBuf,
}

async fn serve(agent: &Path, pools: Vec<PoolConfig>) -> Result<Server, String> {
    let data_dir = std::env::temp_dir().join(format!(
        "runbox-bench-backends-{}",
        runbox_runtime::random_hex(8)
    ));
    let config = Config {
        data_dir: data_dir.clone(),
        images_dir: Some(data_dir.join("images")),
        tenants: vec![TenantConfig {
            name: "bench".into(),
            keys: vec![KEY.into()],
        }],
        quotas: Quotas {
            max_sandboxes: 1000,
            max_memory: "1000Gi".into(),
        },
        pools,
        ..Config::default()
    };
    let state =
        runbox_server::AppState::new(config, agent.to_owned()).map_err(|e| e.to_string())?;
    let manager = state.manager.clone();
    // No `prepare`: its sweep would remove other users' runsc sandboxes on this host.
    manager.check_runtimes().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(runbox_server::no_delay(listener), runbox_server::app(state)).await;
    });
    Ok(Server {
        addr,
        manager,
        data_dir,
    })
}

/// One line per output line of a command, or one line saying why it failed.
fn lines(program: &str, args: &[&str]) -> Vec<String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{program}: {l}"))
            .collect(),
        Ok(o) => vec![format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )],
        Err(e) => vec![format!("{program}: {e}")],
    }
}

fn containers(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    lines(
        "docker",
        &[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} ({{.Status}})",
        ],
    )
}

/// runsc sandboxes under runbox's state root (`runbox-<sandbox id>`).
fn runsc_sandboxes() -> Vec<String> {
    if !Path::new(RUNSC_ROOT).is_dir() {
        return Vec::new();
    }
    lines("runsc", &["--root", RUNSC_ROOT, "list", "-quiet"])
}

/// What is left on the host of the sandboxes this run started: containers of its servers,
/// runsc sandboxes, bundles and socket directories with their ids.
fn leftovers(run: &Run) -> Vec<String> {
    let mut found: Vec<String> = run
        .owners
        .iter()
        .flat_map(|o| containers(&format!("runbox.owner={o}")))
        .collect();
    found.extend(runsc_sandboxes().into_iter().filter(|l| {
        run.ids
            .iter()
            .any(|id| l.ends_with(&format!("runbox-{id}")))
    }));
    for dir in [
        "/run/runbox/runsc-bundles",
        "/run/runbox/gvisor",
        "/run/runbox/docker",
        "/run/runbox/agents",
    ] {
        for id in &run.ids {
            let path = Path::new(dir).join(id);
            if path.exists() {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("backends bench: SKIPPED (needs root)");
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let release = exe.parent().and_then(|d| d.parent()).expect("target");
    let agent = release.join("runbox-agent");
    if !agent.is_file() {
        eprintln!(
            "backends bench: {} missing; run `cargo build --release -p runbox-agent`",
            agent.display()
        );
        std::process::exit(1);
    }
    let n: usize = std::env::var("RUNBOX_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(15);

    let running = || [containers("runbox.managed=true"), runsc_sandboxes()].concat();
    let mut before = running();
    let waited = Instant::now();
    while !before.is_empty() && waited.elapsed() < LEFTOVER_WAIT {
        eprintln!(
            "[backends] sandboxes already running, waiting up to {LEFTOVER_WAIT:?} for them to go: {}",
            before.join("; ")
        );
        std::thread::sleep(Duration::from_secs(5));
        before = running();
    }
    if !before.is_empty() {
        eprintln!(
            "[backends] WARNING: measuring with other sandboxes running (not ours, left alone): {}",
            before.join("; ")
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let run = rt.block_on(measure(agent, n));
    drop(rt);

    let after = leftovers(&run);
    if after.is_empty() {
        eprintln!(
            "[backends] after shutdown: nothing is left of the {} sandboxes this run started",
            run.ids.len()
        );
    } else {
        eprintln!("[backends] LEFTOVERS after shutdown: {}", after.join("; "));
    }

    print_report(&run, n, &before, &after);
    let report = json_report(&run, n, &before, &after);
    let out_dir = release.parent().unwrap_or(release).join("bench");
    let out_file = out_dir.join("backends.json");
    let written = std::fs::create_dir_all(&out_dir).and_then(|()| {
        std::fs::write(
            &out_file,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
    });
    match written {
        Ok(()) => println!("\nresults written to {}", out_file.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out_file.display()),
    }
    if !after.is_empty() {
        std::process::exit(1);
    }
}

/// Everything one run found out.
struct Run {
    status: BTreeMap<Backend, Status>,
    isolation: BTreeMap<Backend, Value>,
    baselines: Vec<(&'static str, String, Option<String>)>,
    samples: Samples,
    /// Docker owner labels of the servers and the id of every sandbox they started.
    owners: Vec<String>,
    ids: Vec<String>,
    counters: Value,
    /// Anything that makes numbers of this run suspect.
    notes: Vec<String>,
}

impl Run {
    fn working(&self) -> Vec<Backend> {
        self.status
            .iter()
            .filter(|(_, s)| matches!(s, Status::Available(_)))
            .map(|(b, _)| *b)
            .collect()
    }

    fn note(&mut self, note: String) {
        eprintln!("[backends] WARNING: {note}");
        self.notes.push(note);
    }

    fn fail(&mut self, backend: Backend, phase: &str, error: String) {
        eprintln!("[backends] {backend} FAILED ({phase}): {error}");
        self.status
            .insert(backend, Status::Failed(format!("{phase}: {error}")));
    }
}

async fn measure(agent: PathBuf, n: usize) -> Run {
    let server = serve(&agent, Vec::new()).await.expect("server");
    let mut run = Run {
        status: BTreeMap::new(),
        isolation: BTreeMap::new(),
        baselines: Vec::new(),
        samples: Samples::default(),
        owners: vec![runbox_server::owner_of(&server.data_dir)],
        ids: Vec::new(),
        counters: Value::Null,
        notes: Vec::new(),
    };
    for (backend, check) in server.manager.check_runtimes().await {
        let status = match check {
            Ok(detail) => Status::Available(detail),
            Err(reason) => Status::Unavailable(reason),
        };
        eprintln!("[backends] {backend}: {status}");
        run.status.insert(backend, status);
    }
    let runsc_root = server.data_dir.join("runsc-do");
    let _ = std::fs::create_dir_all(&runsc_root);
    let mut baselines = Vec::new();
    for b in Baseline::all(&runsc_root) {
        let error = b.run().await.err();
        let line = b.command_line();
        match &error {
            None => eprintln!("[backends] baseline {line}: works"),
            Some(e) => eprintln!("[backends] baseline UNAVAILABLE: {e}"),
        }
        run.baselines.push((b.name, line, error.clone()));
        if error.is_none() {
            baselines.push(b);
        }
    }
    let mut c = Client::new(server.addr);

    // Warm-up round, which also finds backends that pass `check` but cannot start a sandbox.
    for backend in run.working() {
        match first_stdout(&mut c, backend).await {
            Ok((d, _, iso)) => {
                eprintln!("[backends] warm-up {backend}: {}", ms(d));
                run.isolation.insert(backend, iso);
            }
            Err(e) => run.fail(backend, "warm-up create -> first stdout", e),
        }
    }
    cold_rounds(&mut run, &mut c, &server.manager, &baselines, n).await;
    warm_rounds(&mut run, &mut c, n).await;
    let pool_servers = pool_rounds(&mut run, &agent, n).await;

    let counters = |m: &Manager| {
        let c = &m.counters;
        json!({
            "created": c.created.load(Relaxed),
            "from_pool": c.created_from_pool.load(Relaxed),
            "create_failures": c.create_failures.load(Relaxed),
            "create_retries": c.create_retries.load(Relaxed),
        })
    };
    let servers: Vec<&Server> = std::iter::once(&server).chain(&pool_servers).collect();
    run.counters = servers.iter().map(|s| counters(&s.manager)).collect();
    eprintln!("[backends] shutting down {} servers", servers.len());
    for s in &servers {
        s.manager.shutdown().await;
        let live: usize = s.manager.live_by_tenant().values().sum();
        let pooled = s.manager.pooled();
        if live + pooled > 0 {
            run.note(format!(
                "{live} live and {pooled} pooled sandboxes after shutdown"
            ));
        }
    }
    // Every sandbox that started got a workspace, kept after it ended: the ids to look for.
    for s in &servers {
        if let Ok(entries) = std::fs::read_dir(s.data_dir.join("workspaces")) {
            run.ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        let _ = std::fs::remove_dir_all(&s.data_dir);
    }
    run
}

/// Rows 1 and 3: cold create -> first stdout on every backend and the baselines, all in one
/// round whose order rotates.
async fn cold_rounds(
    run: &mut Run,
    c: &mut Client,
    manager: &Manager,
    baselines: &[Baseline],
    n: usize,
) {
    let from_pool = manager.counters.created_from_pool.load(Relaxed);

    for i in 0..n {
        let backends = run.working();
        let k = backends.len() + baselines.len();
        let mut line = format!("[backends] cold {}/{n}:", i + 1);
        for j in 0..k {
            let slot = (i + j) % k;
            if let Some(&backend) = backends.get(slot) {
                match first_stdout(c, backend).await {
                    Ok((d, del, _)) => {
                        run.samples.push(COLD, backend.as_str(), d);
                        run.samples.push(DELETE, backend.as_str(), del);
                        line += &format!(" {backend} {}", ms(d));
                    }
                    Err(e) => run.fail(
                        backend,
                        &format!("cold create -> first stdout, run {}/{n}", i + 1),
                        e,
                    ),
                }
            } else {
                let b = &baselines[slot - backends.len()];
                match b.run().await {
                    Ok(d) => {
                        run.samples.push(BASELINE, b.name, d);
                        line += &format!(", {} {}", b.name, ms(d));
                    }
                    Err(e) => eprintln!(
                        "[backends] baseline {} failed in run {}: {e}",
                        b.name,
                        i + 1
                    ),
                }
            }
        }
        eprintln!("{line}");
    }
    if manager.counters.created_from_pool.load(Relaxed) != from_pool {
        run.note("a cold create was served from a pool".into());
    }
}

/// Row 2: warm `1+1` in one sandbox per backend, the calls alternating between backends.
async fn warm_rounds(run: &mut Run, c: &mut Client, n: usize) {
    let mut warm = Vec::new();
    for backend in run.working() {
        match create(c, backend).await {
            Ok(s) => warm.push((backend, s)),
            Err(e) => run.fail(backend, "create for warm 1+1", e),
        }
    }
    let code = json!({ "context": { "language": "python" }, "code": "1+1" });
    for round in 0..=n * 10 {
        if round % 50 == 0 {
            eprintln!("[backends] warm 1+1: {round}/{}", n * 10);
        }
        for (backend, s) in &warm {
            if !matches!(run.status[backend], Status::Available(_)) {
                continue;
            }
            let token = [(ACCESS_TOKEN_HEADER, s.token.as_str())];
            let t = Instant::now();
            let r = c
                .send("POST", &s.execd("code"), &token, Some(&code), None)
                .await;
            let d = t.elapsed();
            match r {
                // The first call starts the python kernel: excluded.
                Ok(r) if r.status == 200 && r.body.contains("\"text\":\"2\"") => {
                    if round > 0 {
                        run.samples.push(WARM, backend.as_str(), d);
                    }
                }
                Ok(r) => run.fail(*backend, "warm 1+1", format!("{} {}", r.status, r.body)),
                Err(e) => run.fail(*backend, "warm 1+1", e),
            }
        }
    }
    for (_, s) in &warm {
        let _ = delete(c, &s.id).await;
    }
}

/// Row 4: create -> first stdout from a warm pool of one sandbox. Each backend gets a server
/// of its own, started now (so refills never overlapped the cold rows) and each create waits
/// for every pool to be full again; a pool that does not fill fails only its backend (the
/// server retries a failed refill only when a pool is next taken from).
async fn pool_rounds(run: &mut Run, agent: &Path, n: usize) -> Vec<Server> {
    let mut servers = Vec::new();
    for backend in run.working() {
        let pool = PoolConfig {
            image: "default".into(),
            runtime: Some(backend),
            memory: "512Mi".into(),
            cpu: "1".into(),
            pids: 256,
            size: 1,
            preload: vec![],
        };
        match serve(agent, vec![pool]).await {
            Ok(server) => {
                run.owners.push(runbox_server::owner_of(&server.data_dir));
                tokio::spawn(server.manager.clone().fill_pools());
                servers.push((backend, server));
            }
            Err(e) => run.fail(backend, "pool server", e),
        }
    }
    for i in 0..n {
        let mut line = format!("[backends] pool {}/{n}:", i + 1);
        for j in 0..servers.len() {
            for (backend, server) in &servers {
                if matches!(run.status[backend], Status::Available(_)) {
                    if let Err(e) = pool_full(&server.manager).await {
                        let mut c = Client::new(server.addr);
                        let now = match first_stdout(&mut c, *backend).await {
                            Ok(_) => "a create without the pool works".to_owned(),
                            Err(e) => format!("a create without the pool fails: {e}"),
                        };
                        run.fail(*backend, "warm pool", format!("{e}; {now}"));
                    }
                }
            }
            let (backend, server) = &servers[(i + j) % servers.len()];
            if !matches!(run.status[backend], Status::Available(_)) {
                continue;
            }
            let taken = server.manager.counters.created_from_pool.load(Relaxed);
            let mut c = Client::new(server.addr);
            match first_stdout(&mut c, *backend).await {
                Ok(_) if server.manager.counters.created_from_pool.load(Relaxed) == taken => {
                    let e = "the create was not served from the pool".to_owned();
                    run.fail(*backend, "warm pool", e);
                }
                Ok((d, _, _)) => {
                    run.samples.push(POOLED, backend.as_str(), d);
                    line += &format!(" {backend} {}", ms(d));
                }
                Err(e) => {
                    let phase = format!("warm pool create -> first stdout, run {}/{n}", i + 1);
                    run.fail(*backend, &phase, e);
                }
            }
        }
        eprintln!("{line}");
    }
    // No pool start may be in flight when shutting down (it would outlive `shutdown`).
    for (_, server) in &servers {
        let _ = pool_full(&server.manager).await;
    }
    servers.into_iter().map(|(_, server)| server).collect()
}

/// Waits until every pool of `manager` holds its sandboxes.
async fn pool_full(manager: &Manager) -> Result<(), String> {
    let want: usize = manager.config.pools.iter().map(|p| p.size).sum();
    let t = Instant::now();
    while manager.pooled() < want {
        if t.elapsed() > POOL_WAIT {
            let held = manager.pooled();
            return Err(format!(
                "the pool holds {held} of {want} after {POOL_WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn print_report(run: &Run, n: usize, before: &[String], after: &[String]) {
    println!(
        "runbox isolation backends: in-process server, HTTP API and proxy; N={n}; times in ms\n"
    );
    for (backend, status) in &run.status {
        println!("{backend:<10} {status}");
    }
    for (name, line, error) in &run.baselines {
        match error {
            None => println!("{name:<10} {line}"),
            Some(e) => println!("{name:<10} UNAVAILABLE: {e}"),
        }
    }
    let summaries = run.samples.summaries();
    println!(
        "\n{:<36} {:<10} {:>4} {:>10} {:>10} {:>10} {:>8}",
        "measurement", "variant", "runs", "p50 ms", "p10 ms", "p90 ms", "ratio"
    );
    for s in &summaries {
        let ratio = s.ratio.map_or("-".into(), |r| format!("{r:.2}x"));
        let st = &s.stats;
        println!(
            "{:<36} {:<10} {:>4} {:>10.3} {:>10.3} {:>10.3} {ratio:>8}",
            s.row, s.variant, s.runs, st.p50, st.p10, st.p90
        );
    }
    println!("\nside by side, p50 ms (ratio to the first column)\n");
    println!(
        "{:<40} {:>18} {:>18} {:>18}",
        "", "native", "docker", "gvisor"
    );
    for (row, variants) in ROWS {
        let mut cells = vec!["-".to_owned(); 3];
        for s in summaries.iter().filter(|s| s.row == row) {
            let ratio = s.ratio.map_or(String::new(), |r| format!(" ({r:.2}x)"));
            cells[s.column] = format!("{:.1}{ratio}", s.stats.p50);
        }
        let label = if row == BASELINE {
            format!("print(1): {}", variants.join(" | "))
        } else {
            row.to_owned()
        };
        println!(
            "{label:<40} {:>18} {:>18} {:>18}",
            cells[0], cells[1], cells[2]
        );
    }
    println!("\nratio: p50 over the p50 of native (baseline row: of bare python) in the same row");
    for note in &run.notes {
        println!("NOTE: {note}");
    }
    if !before.is_empty() {
        println!("measured while other sandboxes ran: {}", before.join("; "));
    }
    if !after.is_empty() {
        println!("LEFTOVERS after shutdown: {}", after.join("; "));
    }
}

fn json_report(run: &Run, n: usize, before: &[String], after: &[String]) -> Value {
    let status = |s: &Status| match s {
        Status::Available(d) => json!({ "status": "available", "detail": d }),
        Status::Unavailable(e) => json!({ "status": "unavailable", "reason": e }),
        Status::Failed(e) => json!({ "status": "failed", "error": e }),
    };
    let results: Vec<Value> = run
        .samples
        .summaries()
        .iter()
        .map(|s| {
            let st = &s.stats;
            json!({
                "measurement": s.row,
                "variant": s.variant,
                "runs": s.runs,
                "p10_ms": st.p10,
                "p50_ms": st.p50,
                "p90_ms": st.p90,
                "min_ms": st.min,
                "max_ms": st.max,
                "mean_ms": st.mean,
                "ratio_p50": s.ratio,
            })
        })
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let backends: serde_json::Map<String, Value> = run
        .status
        .iter()
        .map(|(b, s)| (b.to_string(), status(s)))
        .collect();
    let baselines: Vec<Value> = run
        .baselines
        .iter()
        .map(|(name, line, error)| json!({ "name": name, "command": line, "error": error }))
        .collect();
    json!({
        "benchmark": "backends",
        "date": runbox_server::manager::rfc3339(runbox_server::manager::now()),
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "runs": n,
        "warm_calls": n * 10,
        "backends": backends,
        "isolation": run.isolation,
        "baselines": baselines,
        "results": results,
        "server_counters": run.counters,
        "notes": run.notes,
        "sandboxes_running_before": before,
        "leftovers_after": after,
    })
}
