//! API keys, stored and compared only as SHA-256 digests, mapped to tenants.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;
use crate::AppState;

pub const API_KEY_HEADER: &str = "OPEN-SANDBOX-API-KEY";

/// The caller's tenant, put into request extensions by `require_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

#[derive(Debug, Clone, Default)]
pub struct Keys {
    by_digest: HashMap<[u8; 32], String>,
    open: bool,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    pub fn from_config(c: &Config) -> Self {
        let mut by_digest = HashMap::new();
        for t in &c.tenants {
            for k in &t.keys {
                by_digest.insert(digest(k), t.name.clone());
            }
        }
        Self {
            by_digest,
            open: c.open_mode(),
        }
    }

    /// The tenant of `key`. Digests are looked up in a map, so timing reveals nothing about
    /// how close a wrong key was.
    pub fn tenant(&self, key: Option<&str>) -> Option<String> {
        if self.open {
            return Some("default".into());
        }
        self.by_digest.get(&digest(key?)).cloned()
    }
}

pub async fn require_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = req
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok());
    let tenant = state.keys.tenant(key).ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(Tenant(tenant));
    Ok(next.run(req).await)
}
