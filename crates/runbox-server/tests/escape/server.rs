//! An in-process server with one backend as its default, one sandbox on it, and commands run
//! through the proxy (`/sandboxes/{id}/port/44772/command`) with their event stream parsed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_runtime::Backend;
use runbox_server::config::{Config, RuntimeConfig, TenantConfig};
use serde_json::{json, Value};

use crate::support::{built_binary, temp_dir, Connections, Reply, Server};

const KEY: &str = "key-of-the-escape-suite-789";
/// The header that makes a request the suite's tenant's.
const AUTH: (&str, &str) = ("OPEN-SANDBOX-API-KEY", KEY);
/// Longest wait for one HTTP exchange that is not a command (create, delete, ping).
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// `RUNBOX_REQUIRE_DOCKER=1` / `RUNBOX_REQUIRE_GVISOR=1`: an unavailable backend fails the
/// test instead of skipping it (scripts/test.sh sets both).
fn required(backend: Backend) -> bool {
    let var = match backend {
        Backend::Native => return false,
        Backend::Docker => "RUNBOX_REQUIRE_DOCKER",
        Backend::Gvisor => "RUNBOX_REQUIRE_GVISOR",
    };
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A server whose default backend is `backend`, or None (after saying SKIPPED) when that
/// backend's `Runtime::check` fails and it is not required.
pub async fn start(backend: Backend, test: &str) -> Option<Server> {
    // Not /tmp/runbox*: the jail escape suite counts those as leftovers of its runs.
    let data_dir = temp_dir(&format!("escape-suite-{backend}"));
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.clone(),
        tenants: vec![TenantConfig {
            name: "escape".into(),
            keys: vec![KEY.into()],
        }],
        runtime: RuntimeConfig {
            default: backend,
            ..Default::default()
        },
        ..Config::default()
    };
    let state =
        runbox_server::AppState::new(config, built_binary("runbox-agent")).expect("server state");
    let status = state
        .manager
        .check_runtimes()
        .await
        .remove(&backend)
        .unwrap_or_else(|| Err("not built into this server".into()));
    if let Err(reason) = status {
        let _ = std::fs::remove_dir_all(&data_dir);
        assert!(
            !required(backend),
            "{test}: the {backend} backend is required here but unavailable: {reason}"
        );
        eprintln!("SKIPPED: {test}: the {backend} backend is unavailable: {reason}");
        return None;
    }
    Some(Server::start(state, Connections::Axum).await)
}

/// A lifecycle request as the suite's tenant; panics without an answer within `CALL_LIMIT`.
async fn lifecycle(server: &Server, method: &str, path: &str, body: Option<Value>) -> Reply {
    server
        .call_within(CALL_LIMIT, method, path, &[AUTH], body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub struct Sandbox {
    pub id: String,
    token: String,
    /// On the host; bind-mounted at /workspace.
    pub workspace: PathBuf,
    pub isolation: Value,
}

/// What one `/command` produced, from its event stream.
#[derive(Debug, Default)]
pub struct Execution {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// 0 after `execution_complete`, the error event's `evalue` otherwise.
    pub exit_code: Option<i32>,
    /// The agent killed the command's process group at its timeout.
    pub timed_out: bool,
    /// The exchange itself failed (no answer, not 200): the agent or the proxy is gone.
    pub failure: Option<String>,
}

impl Execution {
    fn parse(text: &str) -> Self {
        let mut exec = Execution::default();
        for event in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            let Ok(event) = event else {
                exec.failure = Some(format!("unparsable event stream: {text}"));
                break;
            };
            let line = || event["text"].as_str().unwrap_or_default().to_owned();
            match event["type"].as_str().unwrap_or_default() {
                "stdout" => exec.stdout.push(line()),
                "stderr" => exec.stderr.push(line()),
                "status" if line().contains("timed out") => exec.timed_out = true,
                "execution_complete" => exec.exit_code = Some(0),
                "error" => {
                    exec.exit_code = event["error"]["evalue"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                }
                _ => {}
            }
        }
        exec
    }

    /// The probe's report line, if it printed one.
    pub fn probe(&self) -> Option<Value> {
        self.stdout
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
            .find(|v| v.get("case").is_some() && v.get("outcome").is_some())
    }

    /// For failure messages: everything but a flood of output.
    pub fn describe(&self) -> String {
        let tail = |lines: &[String]| lines[lines.len().saturating_sub(5)..].join(" | ");
        format!(
            "exit code {:?}, timed out {}, failure {:?}, stdout [{}], stderr [{}]",
            self.exit_code,
            self.timed_out,
            self.failure,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

impl Sandbox {
    /// Creates one sandbox on `backend` with small limits (the bombs must hit them fast).
    pub async fn create(server: &Server, backend: Backend, memory: &str, pids: u64) -> Sandbox {
        let body = json!({
            "image": { "uri": "default" },
            "entrypoint": ["tail", "-f", "/dev/null"],
            "timeout": 600,
            "resourceLimits": { "cpu": "1", "memory": memory },
            "extensions": { "runbox.runtime": backend.as_str(), "runbox.pids": pids.to_string() },
        });
        let r = lifecycle(server, "POST", "/v1/sandboxes", Some(body)).await;
        assert_eq!(r.status, 202, "create on {backend}: {}", r.text);
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let token = tokio::time::timeout(CALL_LIMIT, server.access_token(&id, 44772, &[AUTH]))
            .await
            .unwrap_or_else(|_| panic!("the endpoint of {id}: no answer within {CALL_LIMIT:?}"));
        let isolation = lifecycle(
            server,
            "GET",
            &format!("/v1/sandboxes/{id}/isolation"),
            None,
        )
        .await
        .json();
        assert_eq!(
            isolation["backend"],
            backend.as_str(),
            "the sandbox did not get the backend under test: {isolation}"
        );
        Sandbox {
            workspace: server.data_dir().join("workspaces").join(&id),
            id,
            token,
            isolation,
        }
    }

    fn agent_path(&self, rest: &str) -> String {
        format!("/sandboxes/{}/port/44772/{rest}", self.id)
    }

    /// Puts the probe at /workspace/runbox-probe, owned by the workspace's owner (the sandbox
    /// user on docker and gvisor; native maps the owner to its sandbox user) and 0755.
    pub fn install_probe(&self, probe: &Path) -> String {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let target = self.workspace.join("runbox-probe");
        std::fs::copy(probe, &target).expect("copy the probe into the workspace");
        let owner = std::fs::metadata(&self.workspace).expect("workspace metadata");
        std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid()))
            .expect("chown the probe");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the probe");
        "/workspace/runbox-probe".into()
    }

    /// Runs `command` through the proxy; the agent kills it after `timeout`.
    pub async fn run(&self, server: &Server, command: &str, timeout: Duration) -> Execution {
        let body = json!({ "command": command, "timeout": timeout.as_millis() as u64 });
        let limit = timeout + Duration::from_secs(15);
        match server
            .call_within(
                limit,
                "POST",
                &self.agent_path("command"),
                &[("X-EXECD-ACCESS-TOKEN", self.token.as_str())],
                Some(body),
            )
            .await
        {
            Ok(r) if r.status == 200 => Execution::parse(&r.text),
            Ok(r) => Execution {
                failure: Some(format!("HTTP {}: {}", r.status, r.text)),
                ..Execution::default()
            },
            Err(e) => Execution {
                failure: Some(e),
                ..Execution::default()
            },
        }
    }

    /// The agent's /ping through the proxy: its HTTP status, or why there was none.
    pub async fn ping(&self, server: &Server) -> Result<u16, String> {
        server
            .call_within(
                Duration::from_secs(10),
                "GET",
                &self.agent_path("ping"),
                &[("X-EXECD-ACCESS-TOKEN", self.token.as_str())],
                None,
            )
            .await
            .map(|r| r.status)
    }

    /// Whether, within `within`, the agent answers, starts processes again, and every process
    /// a bomb left is gone (killed and reaped: zombies still count against the pids limit).
    /// A process without a command line is one that is dying or dead and not yet reaped.
    pub async fn recovered(
        &self,
        server: &Server,
        probe: &str,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.ping(server).await {
                Ok(200) => {
                    let command = format!("{probe} list-procs rbp-no-marker RBP_UNSET");
                    let exec = self.run(server, &command, Duration::from_secs(5)).await;
                    match exec.probe() {
                        Some(line) if line["outcome"] == "ok" => {
                            let dying: Vec<&String> = line["data"]["cmdlines"]
                                .as_object()
                                .map(|m| {
                                    m.iter().filter(|(_, c)| c == &"").map(|(p, _)| p).collect()
                                })
                                .unwrap_or_default();
                            if dying.is_empty() {
                                return Ok(());
                            }
                            last =
                                format!("{} processes dying or unreaped: {dying:?}", dying.len());
                        }
                        _ => {
                            last = format!(
                                "/ping answers but the probe does not run: {}",
                                exec.describe()
                            )
                        }
                    }
                }
                Ok(404) => return Err("the sandbox is gone (the proxy answers 404)".into()),
                other => last = format!("/ping: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    /// The lifecycle state and its message ("Running", "Failed: the agent exited ...").
    pub async fn state(&self, server: &Server) -> String {
        let v = lifecycle(server, "GET", &format!("/v1/sandboxes/{}", self.id), None)
            .await
            .json();
        match v["status"]["message"].as_str() {
            Some(message) => format!("{}: {message}", v["status"]["state"]),
            None => v["status"]["state"].to_string(),
        }
    }

    pub async fn delete(&self, server: &Server) -> Result<(), String> {
        let r = lifecycle(
            server,
            "DELETE",
            &format!("/v1/sandboxes/{}", self.id),
            None,
        )
        .await;
        if r.status != 204 {
            return Err(format!("DELETE answered {}: {}", r.status, r.text));
        }
        let state = lifecycle(server, "GET", &format!("/v1/sandboxes/{}", self.id), None)
            .await
            .json()["status"]["state"]
            .clone();
        if state != "Terminated" {
            return Err(format!("after DELETE the sandbox is {state}"));
        }
        match self.ping(server).await {
            Ok(404) => Ok(()),
            other => Err(format!(
                "after DELETE the proxy still answers /ping: {other:?}"
            )),
        }
    }
}
