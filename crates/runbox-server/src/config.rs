//! The server's one typed configuration: a TOML file, then `RUNBOX_*` environment variables
//! on top, read once in `main` and passed down. Every key is documented with its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use runbox_runtime::Backend;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Where the database and workspaces live. Default ./runbox-data.
    pub data_dir: PathBuf,
    /// Tenants and their API keys (`[[tenants]] name = "a" keys = ["..."]`). Keys are hashed at
    /// load time and never kept in clear. With no key configured the server only listens on
    /// loopback and treats every request as tenant "default".
    pub tenants: Vec<TenantConfig>,
    /// Sandbox lifetime when a create request gives none, seconds (null = until deleted).
    /// Default 600.
    pub default_timeout_seconds: Option<u64>,
    /// Longest lifetime a create or renew may ask for, seconds. Default 86400.
    pub max_timeout_seconds: u64,
    /// Per-tenant quotas.
    pub quotas: Quotas,
    /// `image.uri` -> unpacked root filesystem directory, for rootfs directories kept outside
    /// `images_dir`. Looked up first.
    pub images: BTreeMap<String, PathBuf>,
    /// Where `runbox image build/import` put images (`<dir>/<name>/rootfs`); an `image.uri`
    /// naming one of them runs it (its rootfs on native and gvisor, `runbox/<name>:latest` on
    /// docker). Default /var/lib/runbox/images (as root).
    pub images_dir: Option<PathBuf>,
    /// What an `image.uri` that names no image gets: `"default"` (the default image, as
    /// OpenSandbox clients send names like `python:3.11`) or `"reject"` (400). Default
    /// "default".
    pub unknown_images: UnknownImages,
    /// Isolation backends (`[runtime]`).
    pub runtime: RuntimeConfig,
    /// Default limits of a sandbox when the request leaves them out.
    pub default_memory: String,
    pub default_cpu: String,
    pub default_pids: u64,
    /// Workspace disk quota when the request has no `runbox.disk` (bytes or a quantity such
    /// as `1Gi`, at least 16Mi). Default none: unlimited.
    pub default_disk: Option<String>,
    /// Keep audit records this many days (0 = forever). Default 30.
    pub audit_retention_days: u64,
    /// Largest request body accepted outside file uploads, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers, and may keep a connection
    /// idle between requests, before it is closed. Default 30.
    pub header_read_timeout_seconds: u64,
    /// Warm pools (`[[pools]]`): sandboxes kept started, agent up and the python context
    /// warmed with `preload` modules imported; a create with exactly this profile (image,
    /// memory, cpu, pids, no env, no import policy) takes one and the pool refills.
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_image")]
    pub image: String,
    /// The pool's backend. Default: `runtime.default`.
    #[serde(default)]
    pub runtime: Option<Backend>,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_cpu")]
    pub cpu: String,
    #[serde(default = "default_pids")]
    pub pids: u64,
    /// Sandboxes kept ready.
    pub size: usize,
    /// Python modules imported in the default python context ahead of time.
    #[serde(default)]
    pub preload: Vec<String>,
}

fn default_image() -> String {
    "default".into()
}
fn default_memory() -> String {
    "512Mi".into()
}
fn default_cpu() -> String {
    "1".into()
}
fn default_pids() -> u64 {
    256
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownImages {
    #[default]
    Default,
    Reject,
}

/// Which backend isolates a sandbox, and what happens when it is unavailable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The backend of sandboxes whose create request names none (`runbox.runtime`):
    /// "native", "docker" or "gvisor". Default "native".
    pub default: Backend,
    /// When the requested backend is unavailable (no engine, no runsc): "strict" refuses the
    /// create with 503 and says why; "fallback" uses the first available backend of
    /// `fallback` instead and records that in the sandbox's isolation report and the audit
    /// log. Default "strict": a weaker isolation than asked for is never silent.
    pub on_unavailable: OnUnavailable,
    /// Fallback order. Default ["gvisor", "docker", "native"] (strongest first).
    pub fallback: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    #[default]
    Strict,
    Fallback,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default: Backend::Native,
            on_unavailable: OnUnavailable::Strict,
            fallback: vec![Backend::Gvisor, Backend::Docker, Backend::Native],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Live sandboxes per tenant. Default 20.
    pub max_sandboxes: usize,
    /// Memory of all live sandboxes of a tenant, e.g. "8Gi". Default "16Gi".
    pub max_memory: String,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_sandboxes: 20,
            max_memory: "16Gi".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("runbox-data"),
            tenants: Vec::new(),
            default_timeout_seconds: Some(600),
            max_timeout_seconds: 86_400,
            quotas: Quotas::default(),
            images: BTreeMap::new(),
            images_dir: None,
            unknown_images: UnknownImages::Default,
            runtime: RuntimeConfig::default(),
            default_memory: "512Mi".into(),
            default_cpu: "1".into(),
            default_pids: 256,
            default_disk: None,
            audit_retention_days: 30,
            max_body_bytes: 1 << 20,
            header_read_timeout_seconds: 30,
            pools: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid runbox config")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("no API key is configured, so the server only listens on loopback; {listen} is not loopback. Set RUNBOX_API_KEYS=\"tenant:key\" or [[tenants]] in the config file")]
    OpenWithoutKeys { listen: SocketAddr },
}

/// Environment-provided pieces (read in main, passed here so nothing reads env deep inside).
#[derive(Debug, Default, Clone)]
pub struct EnvOverrides {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    /// `tenant:key,tenant2:key2`
    pub api_keys: Option<String>,
    /// RUNBOX_RUNTIME: the default backend.
    pub runtime: Option<String>,
}

impl Config {
    pub fn load(file: Option<&std::path::Path>, env: &EnvOverrides) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.into(),
                    source,
                })?
            }
            None => Config::default(),
        };
        if let Some(l) = &env.listen {
            config.listen = l.parse().map_err(|_| ConfigError::Env {
                var: "RUNBOX_LISTEN",
                message: format!("`{l}` is not host:port"),
            })?;
        }
        if let Some(d) = &env.data_dir {
            config.data_dir = d.into();
        }
        if let Some(r) = &env.runtime {
            config.runtime.default = r.parse().map_err(|message| ConfigError::Env {
                var: "RUNBOX_RUNTIME",
                message,
            })?;
        }
        if let Some(keys) = &env.api_keys {
            for pair in keys.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (tenant, key) = pair.split_once(':').ok_or_else(|| ConfigError::Env {
                    var: "RUNBOX_API_KEYS",
                    message: format!("`{pair}` is not tenant:key"),
                })?;
                if tenant.is_empty() || key.len() < 8 {
                    return Err(ConfigError::Env {
                        var: "RUNBOX_API_KEYS",
                        message: "tenant names must be non-empty and keys at least 8 characters"
                            .into(),
                    });
                }
                match config.tenants.iter_mut().find(|t| t.name == tenant) {
                    Some(t) => t.keys.push(key.to_owned()),
                    None => config.tenants.push(TenantConfig {
                        name: tenant.to_owned(),
                        keys: vec![key.to_owned()],
                    }),
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub fn open_mode(&self) -> bool {
        self.tenants.iter().all(|t| t.keys.is_empty())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.open_mode() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::OpenWithoutKeys {
                listen: self.listen,
            });
        }
        Ok(())
    }
}

/// Kubernetes-style quantities: "500m" cores -> 0.5, "2" -> 2.0.
pub fn parse_cpu(s: &str) -> Option<f64> {
    let s = s.trim();
    let v = match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => s.parse::<f64>().ok()?,
    };
    (v > 0.0 && v.is_finite()).then_some(v)
}

/// Kubernetes-style memory: "512Mi", "1Gi", "500M", "1G", plain bytes.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    let bytes = v * mult;
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities_parse() {
        assert_eq!(parse_cpu("500m"), Some(0.5));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("0"), None);
        assert_eq!(parse_memory("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory("1Gi"), Some(1 << 30));
        assert_eq!(parse_memory("500M"), Some(500_000_000));
        assert_eq!(parse_memory("12x"), None);
    }

    #[test]
    fn keys_from_env_and_open_mode_rules() {
        let env = EnvOverrides {
            api_keys: Some("acme:secret-key-1,acme:secret-key-2,beta:other-key".into()),
            ..Default::default()
        };
        let c = Config::load(None, &env).expect("loads");
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.tenants[0].keys.len(), 2);
        let open = EnvOverrides {
            listen: Some("0.0.0.0:8080".into()),
            ..Default::default()
        };
        assert!(matches!(
            Config::load(None, &open),
            Err(ConfigError::OpenWithoutKeys { .. })
        ));
        let bad = EnvOverrides {
            api_keys: Some("nocolon".into()),
            ..Default::default()
        };
        assert!(Config::load(None, &bad).is_err());
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<Config>("listne = \"127.0.0.1:1\"").is_err());
        let c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\n[quotas]\nmax_sandboxes = 3")
            .expect("parses");
        assert_eq!(c.quotas.max_sandboxes, 3);
    }
}
