//! The live sandboxes: creation (quota-checked, on the backend the request or the config
//! picks, with fallback or refusal when it is unavailable), supervision, expiry, deletion,
//! and reconciliation after a restart. Sandboxes are driven only through
//! `runbox_runtime::Instance`, so every backend behaves the same here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runbox_runtime::{AgentClient, Backend, Ended, ImageSource, Instance, Runtime, StartSpec};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::Auditor;
use crate::config::{parse_cpu, parse_memory, Config, OnUnavailable, UnknownImages};
use crate::error::ApiError;
use crate::store::{SandboxRow, Store};
use crate::workspace;

/// What a create request asks for, validated.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: String,
    /// Where `image` is on disk and in the engine.
    pub source: ImageSource,
    /// The backend asked for (`runbox.runtime`, else the server's default).
    pub runtime: Backend,
    pub entrypoint: Vec<String>,
    pub timeout: Option<Duration>,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    pub env: BTreeMap<String, String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub output_limit: Option<u64>,
    pub import_allow: Option<String>,
    pub import_deny: Option<String>,
    /// Ended after this long without a request through the proxy.
    pub idle_timeout: Option<Duration>,
    /// The workspace's size (`runbox.disk`, else `default_disk`); none is unlimited.
    pub disk_bytes: Option<u64>,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Live {
    pub id: String,
    pub tenant: String,
    pub memory_bytes: u64,
    pub client: AgentClient,
    pub expires_at: Mutex<Option<OffsetDateTime>>,
    pub paused: Mutex<bool>,
    /// The running sandbox: kill, pause, resume, connect to its ports.
    pub instance: Arc<dyn Instance>,
    /// What `GET /v1/sandboxes/{id}/isolation` returns.
    pub isolation: serde_json::Value,
    pub idle_timeout: Option<Duration>,
    /// Last request through the proxy (or creation).
    pub last_activity: Mutex<std::time::Instant>,
}

impl Live {
    /// The token the proxy requires (the agent's own).
    pub fn token(&self) -> &str {
        &self.client.token
    }
}

#[derive(Debug)]
pub struct Manager {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub auditor: Auditor,
    runtimes: BTreeMap<Backend, Arc<dyn Runtime>>,
    /// Each backend's availability as last checked (`Runtime::check`), refreshed by
    /// `check_runtimes` and when a start finds the backend gone.
    available: Mutex<BTreeMap<Backend, Result<String, String>>>,
    images: Option<runbox_image::ImageStore>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Quota reservations of creations in flight, per tenant: (count, memory).
    reserved: Mutex<HashMap<String, (usize, u64)>>,
    pools: Vec<Pool>,
    pool_changed: tokio::sync::Notify,
    pub counters: Counters,
    /// Set by `shutdown`: no more creates, pools stop refilling.
    closing: std::sync::atomic::AtomicBool,
}

/// How a start whose agent never answered is reported (and recognised for the retry).
const AGENT_DID_NOT_START: &str = "the sandbox's agent did not start";

/// Monotonic counters for /metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub created: std::sync::atomic::AtomicU64,
    pub created_from_pool: std::sync::atomic::AtomicU64,
    pub create_failures: std::sync::atomic::AtomicU64,
    pub create_retries: std::sync::atomic::AtomicU64,
    pub expired: std::sync::atomic::AtomicU64,
}

/// A started sandbox with a ready agent that belongs to no tenant yet.
#[derive(Debug)]
pub struct Ready {
    id: String,
    instance: Arc<dyn Instance>,
    isolation: serde_json::Value,
}

/// Warm sandboxes of one profile.
#[derive(Debug)]
struct Pool {
    config: crate::config::PoolConfig,
    spec: Spec,
    ready: Mutex<Vec<Ready>>,
}

impl Pool {
    fn matches(&self, s: &Spec) -> bool {
        let p = &self.spec;
        p.image == s.image
            && p.runtime == s.runtime
            && p.memory_bytes == s.memory_bytes
            && (p.cpus - s.cpus).abs() < 1e-9
            && p.pids == s.pids
            && p.disk_bytes == s.disk_bytes
            && s.env.is_empty()
            && s.output_limit.is_none()
            && s.import_allow.is_none()
            && s.import_deny.is_none()
    }
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A workspace quota from `key`'s value: bytes or a quantity (`1Gi`), at least 16Mi.
fn disk_quota(key: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            parse_memory(v)
                .filter(|b| *b >= workspace::MIN_DISK_BYTES)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{key} `{v}` is not a size of at least 16Mi (bytes, or e.g. 512Mi, 1Gi)"
                    ))
                })
        })
        .transpose()
}

fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Manager {
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        runtimes: Vec<Arc<dyn Runtime>>,
    ) -> Result<Self, ApiError> {
        let auditor = Auditor::new(store.clone());
        let images_dir = config
            .images_dir
            .clone()
            .or_else(runbox_image::default_images_dir);
        let images = images_dir.and_then(|d| runbox_image::ImageStore::open(&d).ok());
        let runtimes: BTreeMap<Backend, Arc<dyn Runtime>> =
            runtimes.into_iter().map(|r| (r.backend(), r)).collect();
        let mut pools = Vec::new();
        for p in &config.pools {
            let memory_bytes = parse_memory(&p.memory).ok_or_else(|| {
                ApiError::BadRequest(format!("pool memory `{}` is not a quantity", p.memory))
            })?;
            let cpus = parse_cpu(&p.cpu).ok_or_else(|| {
                ApiError::BadRequest(format!("pool cpu `{}` is not a quantity", p.cpu))
            })?;
            let spec = Spec {
                image: p.image.clone(),
                source: resolve_image(&config, images.as_ref(), &p.image)?,
                runtime: p.runtime.unwrap_or(config.runtime.default),
                entrypoint: vec!["tail".into(), "-f".into(), "/dev/null".into()],
                timeout: None,
                memory_bytes,
                cpus,
                pids: p.pids,
                env: BTreeMap::new(),
                metadata: serde_json::Map::new(),
                output_limit: None,
                import_allow: None,
                import_deny: None,
                idle_timeout: None,
                disk_bytes: disk_quota("default_disk", config.default_disk.as_deref())?,
            };
            pools.push(Pool {
                config: p.clone(),
                spec,
                ready: Mutex::new(Vec::new()),
            });
        }
        Ok(Self {
            config,
            store,
            auditor,
            runtimes,
            available: Mutex::new(BTreeMap::new()),
            images,
            live: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            pools,
            pool_changed: tokio::sync::Notify::new(),
            counters: Counters::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Checks every backend (`Runtime::check`) and remembers the answers; returns them.
    pub async fn check_runtimes(&self) -> BTreeMap<Backend, Result<String, String>> {
        let mut out = BTreeMap::new();
        for (backend, rt) in &self.runtimes {
            out.insert(*backend, rt.check().await);
        }
        for b in Backend::ALL {
            out.entry(b)
                .or_insert_with(|| Err("not built into this server".into()));
        }
        *self.available.lock().unwrap_or_else(|p| p.into_inner()) = out.clone();
        out
    }

    /// Removes what earlier runs left on every backend (containers, runsc sandboxes, stale
    /// sockets): none of it belongs to a live sandbox of this run.
    pub async fn sweep_runtimes(&self) {
        let keep: std::collections::HashSet<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for (backend, rt) in &self.runtimes {
            match rt.sweep(&keep).await {
                Ok(removed) if !removed.is_empty() => eprintln!(
                    "runbox: {backend}: removed {} left over from an earlier run: {}",
                    removed.len(),
                    removed.join(", ")
                ),
                Ok(_) => {}
                Err(e) => eprintln!("runbox: {backend}: cannot sweep leftovers: {e}"),
            }
        }
    }

    /// The backend to start `spec` on: the requested one when available, else (in fallback
    /// mode) the first available of `runtime.fallback`. The note says what was substituted.
    fn pick_runtime(
        &self,
        requested: Backend,
        unavailable: Option<&str>,
    ) -> Result<(Arc<dyn Runtime>, Option<String>), ApiError> {
        let available = self.available.lock().unwrap_or_else(|p| p.into_inner());
        let why_not = |b: Backend| -> Option<String> {
            if !self.runtimes.contains_key(&b) {
                return Some("not built into this server".into());
            }
            match available.get(&b) {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            }
        };
        let reason = match unavailable {
            Some(r) => Some(r.to_owned()),
            None => why_not(requested),
        };
        let Some(reason) = reason else {
            return Ok((self.runtimes[&requested].clone(), None));
        };
        if self.config.runtime.on_unavailable == OnUnavailable::Strict {
            return Err(ApiError::Unavailable(format!(
                "the {requested} runtime is unavailable: {reason} (runtime.on_unavailable is strict)"
            )));
        }
        let next = self
            .config
            .runtime
            .fallback
            .iter()
            .copied()
            .filter(|b| *b != requested)
            .find(|b| why_not(*b).is_none())
            .ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "the {requested} runtime is unavailable ({reason}) and no fallback runtime is available"
                ))
            })?;
        Ok((
            self.runtimes[&next].clone(),
            Some(format!(
                "{requested} was requested but is unavailable ({reason}); fell back to {next}"
            )),
        ))
    }

    /// Ready sandboxes waiting in pools.
    pub fn pooled(&self) -> usize {
        self.pools
            .iter()
            .map(|p| p.ready.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn get_live(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The tenant's live sandbox `id`, or the same 404 whether it is another tenant's or none.
    pub fn owned(&self, tenant: &str, id: &str) -> Result<Arc<Live>, ApiError> {
        self.get_live(id)
            .filter(|l| l.tenant == tenant)
            .ok_or_else(|| ApiError::SandboxNotFound(id.to_owned()))
    }

    /// Marks sandboxes that were alive when the server stopped as terminated: native ones died
    /// with the server (PDEATHSIG); containers and runsc sandboxes are removed by
    /// `sweep_runtimes`. Their workspaces stay on disk.
    pub fn reconcile(&self) -> Result<usize, ApiError> {
        let ids = self
            .store
            .live_ids()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let stamp = rfc3339(now());
        for id in &ids {
            let _ = self.store.set_state(
                id,
                "Terminated",
                Some("server_restart"),
                Some("the server stopped while the sandbox ran; its workspace is kept"),
                &stamp,
            );
        }
        Ok(ids.len())
    }

    fn reserve(&self, tenant: &str, memory: u64) -> Result<(), ApiError> {
        let max_mem = parse_memory(&self.config.quotas.max_memory).unwrap_or(u64::MAX);
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let (live_count, live_mem) = live
            .values()
            .filter(|l| l.tenant == tenant)
            .fold((0usize, 0u64), |(c, m), l| (c + 1, m + l.memory_bytes));
        let r = reserved.entry(tenant.to_owned()).or_default();
        if live_count + r.0 + 1 > self.config.quotas.max_sandboxes {
            return Err(ApiError::Quota(format!(
                "tenant {tenant} already has {} live sandboxes (limit {})",
                live_count + r.0,
                self.config.quotas.max_sandboxes
            )));
        }
        if live_mem + r.1 + memory > max_mem {
            return Err(ApiError::Quota(format!(
                "tenant {tenant} would exceed its memory quota of {}",
                self.config.quotas.max_memory
            )));
        }
        r.0 += 1;
        r.1 += memory;
        Ok(())
    }

    fn unreserve(&self, tenant: &str, memory: u64) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = reserved.get_mut(tenant) {
            r.0 = r.0.saturating_sub(1);
            r.1 = r.1.saturating_sub(memory);
        }
    }

    fn workspace_dir(&self, id: &str) -> std::path::PathBuf {
        self.config.data_dir.join("workspaces").join(id)
    }

    /// Validates a create request into a `Spec`.
    pub fn spec(&self, req: &crate::api::CreateRequest) -> Result<Spec, ApiError> {
        let image = req
            .image
            .as_ref()
            .map_or_else(|| "default".to_owned(), |i| i.uri.clone());
        let source = resolve_image(&self.config, self.images.as_ref(), &image)?;
        let entrypoint = req
            .entrypoint
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec!["tail".into(), "-f".into(), "/dev/null".into()]);
        let timeout = match req.timeout {
            Some(Some(t)) if t < 60 => {
                return Err(ApiError::BadRequest(format!(
                    "timeout must be at least 60 seconds, not {t}"
                )))
            }
            Some(Some(t)) if t > self.config.max_timeout_seconds => {
                return Err(ApiError::BadRequest(format!(
                    "timeout {t} exceeds the server's maximum of {} seconds",
                    self.config.max_timeout_seconds
                )))
            }
            Some(Some(t)) => Some(Duration::from_secs(t)),
            Some(None) => None,
            None => self.config.default_timeout_seconds.map(Duration::from_secs),
        };
        let limits = req.resource_limits.clone().unwrap_or_default();
        let memory = limits
            .get("memory")
            .cloned()
            .unwrap_or_else(|| self.config.default_memory.clone());
        let memory_bytes = parse_memory(&memory).filter(|m| *m >= 16 << 20).ok_or_else(|| ApiError::BadRequest(format!("resourceLimits.memory `{memory}` is not a quantity of at least 16Mi (e.g. 512Mi, 1Gi)")))?;
        let cpu = limits
            .get("cpu")
            .cloned()
            .unwrap_or_else(|| self.config.default_cpu.clone());
        let cpus = parse_cpu(&cpu).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "resourceLimits.cpu `{cpu}` is not a CPU quantity (e.g. 500m, 1, 2)"
            ))
        })?;
        let ext = req.extensions.clone().unwrap_or_default();
        for key in ext.keys() {
            if key.starts_with("runbox.")
                && ![
                    "runbox.pids",
                    "runbox.output_limit",
                    "runbox.import_allow",
                    "runbox.import_deny",
                    "runbox.network",
                    "runbox.runtime",
                    "runbox.idle_timeout",
                    "runbox.disk",
                ]
                .contains(&key.as_str())
            {
                return Err(ApiError::BadRequest(format!("unknown extension `{key}`")));
            }
        }
        let num = |key: &str| -> Result<Option<u64>, ApiError> {
            ext.get(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "extension {key} must be a whole number, not `{v}`"
                        ))
                    })
                })
                .transpose()
        };
        if let Some(net) = ext.get("runbox.network").filter(|n| n.as_str() != "none") {
            return Err(ApiError::BadRequest(format!(
                "runbox.network `{net}` is not supported yet (only `none`)"
            )));
        }
        let runtime = match ext.get("runbox.runtime") {
            Some(r) => r
                .parse::<Backend>()
                .map_err(|e| ApiError::BadRequest(format!("runbox.runtime: {e}")))?,
            None => self.config.runtime.default,
        };
        let pids = num("runbox.pids")?.unwrap_or(self.config.default_pids);
        if pids < 16 {
            return Err(ApiError::BadRequest(
                "runbox.pids must be at least 16 (the agent and its kernels need some)".into(),
            ));
        }
        let disk_bytes = match ext.get("runbox.disk") {
            Some(d) => disk_quota("runbox.disk", Some(d))?,
            None => disk_quota("default_disk", self.config.default_disk.as_deref())?,
        };
        Ok(Spec {
            image,
            source,
            runtime,
            entrypoint,
            timeout,
            memory_bytes,
            cpus,
            pids,
            env: req.env.clone().unwrap_or_default(),
            metadata: req
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
            output_limit: num("runbox.output_limit")?,
            import_allow: ext.get("runbox.import_allow").cloned(),
            import_deny: ext.get("runbox.import_deny").cloned(),
            idle_timeout: match num("runbox.idle_timeout")? {
                Some(0) => {
                    return Err(ApiError::BadRequest(
                        "runbox.idle_timeout must be at least 1 second".into(),
                    ))
                }
                other => other.map(Duration::from_secs),
            },
            disk_bytes,
        })
    }

    pub async fn create(
        self: &Arc<Self>,
        tenant: &str,
        spec: Spec,
    ) -> Result<(SandboxRow, bool), ApiError> {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        self.reserve(tenant, spec.memory_bytes)?;
        let pooled = self.take_pooled(&spec);
        let from_pool = pooled.is_some();
        let result = match pooled {
            Some(ready) => self.activate(tenant, &spec, ready).await,
            None => match self.launch(&spec).await {
                Ok(ready) => self.activate(tenant, &spec, ready).await,
                Err(e) => Err(e),
            },
        };
        use std::sync::atomic::Ordering::Relaxed;
        let (row, live) = match result {
            Ok(created) => created,
            Err(e) => {
                self.unreserve(tenant, spec.memory_bytes);
                self.counters.create_failures.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        {
            // The reservation becomes a live sandbox under the live lock, which `reserve`
            // holds while it counts both: released first, a concurrent create could count
            // this sandbox as neither and go over the quota (seen in CI: 11 of 10).
            let mut all = self.live.lock().unwrap_or_else(|p| p.into_inner());
            all.insert(row.id.clone(), live);
            self.unreserve(tenant, spec.memory_bytes);
        }
        self.counters.created.fetch_add(1, Relaxed);
        if from_pool {
            self.counters.created_from_pool.fetch_add(1, Relaxed);
        }
        if from_pool {
            self.pool_changed.notify_one();
        }
        Ok((row, from_pool))
    }

    /// Starts a sandbox for `spec` and waits for its agent; it belongs to no tenant yet. A
    /// sandbox whose agent never answers is killed and started once more (logged and counted
    /// in `create_retries`): one stuck start on a loaded host should not fail the request.
    async fn launch(self: &Arc<Self>, spec: &Spec) -> Result<Ready, ApiError> {
        match self.launch_once(spec).await {
            Err(ApiError::Unavailable(msg)) if msg.starts_with(AGENT_DID_NOT_START) => {
                self.counters
                    .create_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!("runbox: {msg}; starting the sandbox once more");
                self.launch_once(spec).await
            }
            other => other,
        }
    }

    async fn launch_once(self: &Arc<Self>, spec: &Spec) -> Result<Ready, ApiError> {
        let (runtime, fallback) = self.pick_runtime(spec.runtime, None)?;
        match self.start_on(runtime.as_ref(), spec, fallback).await {
            // The backend went away since it was last checked (engine stopped): remember,
            // and let the fallback rules decide once more.
            Err(StartFailure::Unavailable(reason)) => {
                self.available
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(runtime.backend(), Err(reason.clone()));
                let (runtime, fallback) = self.pick_runtime(spec.runtime, Some(&reason))?;
                self.start_on(runtime.as_ref(), spec, fallback)
                    .await
                    .map_err(StartFailure::into_api)
            }
            other => other.map_err(StartFailure::into_api),
        }
    }

    /// Starts `spec` on `runtime` and waits for its agent.
    async fn start_on(
        self: &Arc<Self>,
        runtime: &dyn Runtime,
        spec: &Spec,
        fallback: Option<String>,
    ) -> Result<Ready, StartFailure> {
        let id = runbox_runtime::random_hex(16);
        let workspace = self.workspace_dir(&id);
        workspace::create(&workspace, spec.disk_bytes)
            .await
            .map_err(|e| {
                StartFailure::Other(ApiError::Internal(format!(
                    "cannot create the workspace: {}",
                    runbox_runtime::error_chain(&e)
                )))
            })?;
        let started = self
            .start_in(runtime, spec, fallback, id, workspace.clone())
            .await;
        if started.is_err() {
            workspace::discard(&workspace).await;
        }
        started
    }

    async fn start_in(
        self: &Arc<Self>,
        runtime: &dyn Runtime,
        spec: &Spec,
        fallback: Option<String>,
        id: String,
        workspace: std::path::PathBuf,
    ) -> Result<Ready, StartFailure> {
        let mut agent_args = Vec::new();
        if let Some(a) = &spec.import_allow {
            agent_args.extend(["--python-allow".to_owned(), a.clone()]);
        }
        if let Some(d) = &spec.import_deny {
            agent_args.extend(["--python-deny".to_owned(), d.clone()]);
        }
        let start = StartSpec {
            id: id.clone(),
            image: spec.source.clone(),
            workspace: workspace.clone(),
            memory_bytes: spec.memory_bytes,
            cpus: spec.cpus,
            pids: spec.pids,
            output_bytes: spec
                .output_limit
                .unwrap_or(runbox_jail::Limits::default().output_bytes),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent_args,
        };
        let instance: Arc<dyn Instance> = match runtime.start(start).await {
            Ok(i) => Arc::from(i),
            Err(runbox_runtime::RuntimeError::Unavailable { reason, .. }) => {
                return Err(StartFailure::Unavailable(reason))
            }
            Err(e @ runbox_runtime::RuntimeError::Image { .. }) => {
                return Err(StartFailure::Other(ApiError::BadRequest(e.to_string())))
            }
            Err(e) => {
                return Err(StartFailure::Other(ApiError::Unavailable(format!(
                    "cannot start the sandbox: {e}"
                ))))
            }
        };
        // Supervise: when the sandbox ends by itself (or is killed), record it.
        {
            let manager = Arc::downgrade(self);
            let instance = instance.clone();
            let sid = id.clone();
            let workspace = workspace.clone();
            tokio::spawn(async move {
                let ended = instance.wait().await;
                workspace::release(&workspace).await;
                if let Some(m) = manager.upgrade() {
                    m.ended(&sid, ended);
                }
            });
        }
        if let Err(e) = instance.client().wait_ready(Duration::from_secs(15)).await {
            eprintln!(
                "runbox: sandbox {id} ({}): the agent did not answer: {e}; state: {}",
                runtime.backend(),
                instance.describe()
            );
            instance.kill().await;
            return Err(StartFailure::Other(ApiError::Unavailable(format!(
                "{AGENT_DID_NOT_START}: {e}"
            ))));
        }
        let mut isolation = instance.isolation();
        isolation["requested"] = json!(spec.runtime);
        isolation["fallback"] = json!(fallback);
        Ok(Ready {
            id,
            instance,
            isolation,
        })
    }

    /// Gives a ready sandbox to `tenant`: runs the entrypoint, records it, makes it live.
    async fn activate(
        &self,
        tenant: &str,
        spec: &Spec,
        ready: Ready,
    ) -> Result<(SandboxRow, Arc<Live>), ApiError> {
        let client = ready.instance.client();
        let id = ready.id;
        let created = now();
        let live = Arc::new(Live {
            id: id.clone(),
            tenant: tenant.to_owned(),
            memory_bytes: spec.memory_bytes,
            client: client.clone(),
            expires_at: Mutex::new(spec.timeout.map(|t| created + t)),
            paused: Mutex::new(false),
            instance: ready.instance,
            isolation: ready.isolation,
            idle_timeout: spec.idle_timeout,
            last_activity: Mutex::new(std::time::Instant::now()),
        });
        let entry = shell_join(&spec.entrypoint);
        if entry != "tail -f /dev/null" {
            let _ = client
                .request(
                    "POST",
                    "/command",
                    Some(json!({ "command": entry, "background": true })),
                )
                .await;
        }
        let stamp = rfc3339(created);
        let row = SandboxRow {
            id: id.clone(),
            tenant: tenant.to_owned(),
            state: "Running".into(),
            reason: Some("started".into()),
            message: None,
            image: spec.image.clone(),
            entrypoint: spec.entrypoint.clone(),
            metadata: spec.metadata.clone(),
            memory_bytes: spec.memory_bytes,
            created_at: stamp.clone(),
            updated_at: stamp,
            expires_at: spec.timeout.map(|t| rfc3339(created + t)),
            backend: live.instance.backend().to_string(),
            isolation: live.isolation.clone(),
        };
        let inserted = self
            .store
            .insert_sandbox(&row)
            .map_err(|e| ApiError::Internal(e.to_string()));
        if let Err(e) = inserted {
            // Not recorded, so not ours to keep: containers and runsc sandboxes do not end
            // when their handle is dropped.
            live.instance.kill().await;
            return Err(e);
        }
        Ok((row, live))
    }

    /// A ready sandbox from a pool whose profile matches `spec` exactly.
    fn take_pooled(&self, spec: &Spec) -> Option<Ready> {
        let pool = self.pools.iter().find(|p| p.matches(spec))?;
        pool.ready.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps every pool filled, forever (started by `serve`).
    pub async fn fill_pools(self: Arc<Self>) {
        let closing = || self.closing.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            // A pool whose start failed is retried after a pause, not when something is
            // taken: an empty pool gets no takes. The other pools are filled meanwhile.
            let mut failed = false;
            for pool in &self.pools {
                while pool.ready.lock().unwrap_or_else(|p| p.into_inner()).len() < pool.config.size
                {
                    if closing() {
                        return;
                    }
                    match self.launch(&pool.spec).await {
                        // Started while the server began shutting down: nobody will kill it.
                        Ok(ready) if closing() => {
                            ready.instance.kill().await;
                            return;
                        }
                        Ok(ready) => {
                            if !pool.config.preload.is_empty() {
                                let code = format!("import {}", pool.config.preload.join(", "));
                                let client = ready.instance.client();
                                if let Ok(r) = client.request("POST", "/code", Some(json!({ "context": { "language": "python" }, "code": code }))).await {
                                    let _ = r.text().await;
                                }
                            }
                            pool.ready
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(ready);
                        }
                        Err(e) => {
                            eprintln!(
                                "runbox: warm pool for {} on {}: {e}; retrying in 5 s",
                                pool.spec.image, pool.spec.runtime
                            );
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if closing() {
                return;
            }
            if failed {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.pool_changed.notified())
                    .await;
            } else {
                self.pool_changed.notified().await;
            }
        }
    }

    /// Called by the supervisor task when a sandbox has ended (by itself or killed).
    fn ended(&self, id: &str, ended: Ended) {
        for pool in &self.pools {
            let mut ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = ready.iter().position(|r| r.id == id) {
                drop(ready.remove(pos));
                self.pool_changed.notify_one();
            }
        }
        let removed = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(live) = removed {
            // A stop from outside runbox (`docker stop`, `runsc kill`, SIGTERM from the host)
            // is an orderly end: the agent gave every process its SIGTERM and exited 0.
            let (state, reason, message) = if ended.status == Ended::STOPPED {
                (
                    "Terminated",
                    "stopped_outside",
                    format!("stopped from outside runbox: {}", ended.detail),
                )
            } else {
                (
                    "Failed",
                    "agent_exited",
                    format!(
                        "the sandbox's agent exited ({}: {})",
                        ended.status, ended.detail
                    ),
                )
            };
            let _ = self
                .store
                .set_state(id, state, Some(reason), Some(&message), &rfc3339(now()));
            // Whatever the backend still holds (a stopped container) goes too.
            tokio::spawn(async move { live.instance.kill().await });
        }
    }

    /// Kills a sandbox and records why.
    pub async fn terminate(&self, id: &str, reason: &str) -> Option<Arc<Live>> {
        let removed = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)?;
        let _ = self
            .store
            .set_state(id, "Terminated", Some(reason), None, &rfc3339(now()));
        removed.instance.kill().await;
        workspace::release(&self.workspace_dir(id)).await;
        Some(removed)
    }

    /// Kills every live and pooled sandbox (server shutdown): containers and runsc sandboxes
    /// do not die with the server by themselves.
    pub async fn shutdown(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.pool_changed.notify_one();
        let ids: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.terminate(&id, "server_shutdown").await;
        }
        for pool in &self.pools {
            let ready = std::mem::take(&mut *pool.ready.lock().unwrap_or_else(|p| p.into_inner()));
            for r in ready {
                r.instance.kill().await;
                workspace::release(&self.workspace_dir(&r.id)).await;
            }
        }
    }

    /// Sandboxes nobody used for longer than their idle timeout (paused ones are not idle).
    pub fn idle(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| {
                let paused = *l.paused.lock().unwrap_or_else(|p| p.into_inner());
                let quiet = l
                    .last_activity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                !paused && l.idle_timeout.is_some_and(|t| quiet >= t)
            })
            .map(|l| l.id.clone())
            .collect()
    }

    /// Sandboxes whose time is up.
    pub fn expired(&self) -> Vec<String> {
        let t = now();
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| {
                l.expires_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|e| e <= t)
            })
            .map(|l| l.id.clone())
            .collect()
    }

    /// Freezes or thaws the sandbox's processes.
    pub async fn set_paused(&self, live: &Live, pause: bool) -> Result<(), ApiError> {
        if !live.instance.can_pause() {
            return Err(ApiError::Unavailable(format!(
                "sandboxes on {} cannot be paused on this host",
                live.instance.backend()
            )));
        }
        let result = if pause {
            live.instance.pause().await
        } else {
            live.instance.resume().await
        };
        result.map_err(|e| match e {
            runbox_runtime::RuntimeError::Unsupported(m) => ApiError::Unavailable(m),
            e => ApiError::Conflict(format!(
                "cannot {} the sandbox: {e}",
                if pause { "pause" } else { "resume" }
            )),
        })?;
        *live.paused.lock().unwrap_or_else(|p| p.into_inner()) = pause;
        let state = if pause { "Paused" } else { "Running" };
        let _ = self.store.set_state(
            &live.id,
            state,
            Some(if pause { "user_pause" } else { "user_resume" }),
            None,
            &rfc3339(now()),
        );
        Ok(())
    }

    /// Live sandboxes per tenant.
    pub fn live_by_tenant(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in self.live.lock().unwrap_or_else(|p| p.into_inner()).values() {
            *m.entry(l.tenant.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Expires sandboxes and prunes the audit log, forever.
pub async fn reaper(manager: Arc<Manager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        for id in manager.idle() {
            if let Some(live) = manager.terminate(&id, "idle_timeout").await {
                manager.auditor.lifecycle(
                    &live.tenant,
                    Some(&id),
                    "sandbox.idle",
                    json!({}),
                    "ok",
                    None,
                );
            }
        }
        for id in manager.expired() {
            if let Some(live) = manager.terminate(&id, "ttl_expiry").await {
                manager
                    .counters
                    .expired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                manager.auditor.lifecycle(
                    &live.tenant,
                    Some(&id),
                    "sandbox.expire",
                    json!({}),
                    "ok",
                    None,
                );
            }
        }
        n += 1;
        if n % 3600 == 1 && manager.config.audit_retention_days > 0 {
            let cutoff = now() - time::Duration::days(manager.config.audit_retention_days as i64);
            let _ = manager
                .store
                .prune_audit((cutoff.unix_timestamp_nanos() / 1_000_000) as i64);
        }
    }
}

/// Why a start failed: the backend is gone (fallback rules apply) or anything else.
enum StartFailure {
    Unavailable(String),
    Other(ApiError),
}

impl StartFailure {
    fn into_api(self) -> ApiError {
        match self {
            StartFailure::Unavailable(reason) => {
                ApiError::Unavailable(format!("the runtime is unavailable: {reason}"))
            }
            StartFailure::Other(e) => e,
        }
    }
}

/// Where image `name` lives: the config's `[images]` table, then the image store
/// (`runbox image build/import`); `default` with neither is the host's /usr on native and
/// gvisor and `runbox/default:latest` on docker.
fn resolve_image(
    config: &Config,
    store: Option<&runbox_image::ImageStore>,
    name: &str,
) -> Result<ImageSource, ApiError> {
    if let Some(rootfs) = config.images.get(name) {
        return Ok(ImageSource {
            name: name.to_owned(),
            rootfs: Some(rootfs.clone()),
            docker: Some(format!("runbox/{name}:latest")),
        });
    }
    if let Some(image) = store.and_then(|s| s.get(name)) {
        return Ok(ImageSource {
            name: name.to_owned(),
            rootfs: Some(image.rootfs()),
            docker: image.docker_ref(),
        });
    }
    if name == "default" || config.unknown_images == UnknownImages::Default {
        return Ok(ImageSource {
            name: "default".into(),
            rootfs: None,
            docker: Some("runbox/default:latest".into()),
        });
    }
    Err(ApiError::BadRequest(format!(
        "image `{name}` does not exist (see `runbox image list`; unknown_images is reject)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints_are_quoted_for_the_shell() {
        assert_eq!(
            shell_join(&["tail".into(), "-f".into(), "/dev/null".into()]),
            "tail -f /dev/null"
        );
        assert_eq!(
            shell_join(&["python".into(), "it's here.py".into()]),
            r"python 'it'\''s here.py'"
        );
    }

    #[test]
    fn ids_are_128_bit_hex() {
        let id = runbox_runtime::random_hex(16);
        assert_eq!(id.len(), 32);
        assert_ne!(id, runbox_runtime::random_hex(16));
    }
}
