//! The OpenSandbox lifecycle API v1 (sandbox-lifecycle.yml), tenant-scoped.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::manager::{now, parse_rfc3339, rfc3339};
use crate::openapi::{ErrorBody, Extensions};
use crate::store::SandboxRow;
use crate::AppState;

/// The image a sandbox runs: a name from the server's `[images]` table (`default` when absent).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Image name, e.g. `default` or `python`.
    #[schema(example = "python")]
    pub uri: String,
    /// Registry credentials (accepted for compatibility, unused).
    #[serde(default)]
    pub auth: Option<Value>,
}

/// `timeout`: absent (server default), null (no expiry) or seconds.
fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Body of `POST /v1/sandboxes`. Unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateRequest {
    pub image: Option<ImageSpec>,
    /// Not supported by this server: any value is refused with 400.
    pub snapshot_id: Option<String>,
    /// Accepted for compatibility, ignored.
    pub platform: Option<Value>,
    /// Seconds until the sandbox expires (at least 60, at most the server's
    /// `max_timeout_seconds`). Absent: the server's default; `null`: no expiry.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>, minimum = 60, example = 3600)]
    pub timeout: Option<Option<u64>>,
    /// Kubernetes quantities: `cpu` (`"500m"`, `"2"`) and `memory` (`"512Mi"`, `"1Gi"`, at least 16Mi).
    #[schema(example = json!({"cpu": "1", "memory": "512Mi"}))]
    pub resource_limits: Option<BTreeMap<String, String>>,
    /// Environment variables of the entrypoint and of executions.
    pub env: Option<BTreeMap<String, String>>,
    /// Labels for filtering the list; keys under `opensandbox.io/` are reserved.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Command of the sandbox's main process (default `tail -f /dev/null`).
    pub entrypoint: Option<Vec<String>>,
    /// Only a policy denying all egress is accepted: sandboxes have no network yet.
    #[schema(example = json!({"defaultAction": "deny", "egress": []}))]
    pub network_policy: Option<Value>,
    /// Accepted for compatibility, ignored.
    pub credential_proxy: Option<Value>,
    /// Accepted for compatibility, ignored.
    pub secure_access: Option<bool>,
    /// Not supported: a non-empty list is refused with 400 (use the files API).
    pub volumes: Option<Vec<Value>>,
    #[schema(value_type = Option<Extensions>)]
    pub extensions: Option<BTreeMap<String, String>>,
}

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `Running`, `Paused`, `Terminated` or `Failed`.
    #[schema(example = "Running")]
    pub state: String,
    /// Machine-readable cause of the last transition, e.g. `user_delete`, `expired`.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// RFC 3339.
    pub last_transition_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageRef {
    #[schema(example = "default")]
    pub uri: String,
}

/// A sandbox, as the lifecycle API reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[schema(example = "sbx-3f2a9c1d")]
    pub id: String,
    pub status: SandboxStatus,
    /// String labels.
    #[schema(value_type = BTreeMap<String, String>)]
    pub metadata: Map<String, Value>,
    pub entrypoint: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; absent when the sandbox never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub expires_at: Option<String>,
    /// Present in every answer except the one to create.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub image: Option<ImageRef>,
}

impl Sandbox {
    fn from_row(r: &SandboxRow, full: bool) -> Self {
        Self {
            id: r.id.clone(),
            status: SandboxStatus {
                state: r.state.clone(),
                reason: r.reason.clone(),
                message: r.message.clone(),
                last_transition_at: r.updated_at.clone(),
            },
            metadata: r.metadata.clone(),
            entrypoint: r.entrypoint.clone(),
            created_at: r.created_at.clone(),
            expires_at: r.expires_at.clone(),
            image: full.then(|| ImageRef {
                uri: r.image.clone(),
            }),
        }
    }
}

/// Page information of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u64,
    pub page_size: u64,
    pub total_items: u64,
    pub total_pages: u64,
    pub has_next_page: bool,
}

/// Answer of `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxList {
    pub items: Vec<Sandbox>,
    pub pagination: Pagination,
}

/// Answer of `GET /v1/sandboxes/{id}/endpoints/{port}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Endpoint {
    /// `host:port/sandboxes/{id}/port/{port}` (no scheme), the base of the proxied API.
    #[schema(example = "127.0.0.1:8080/sandboxes/sbx-3f2a9c1d/port/44772")]
    pub endpoint: String,
    /// Headers to send with every proxied request: `X-EXECD-ACCESS-TOKEN`.
    #[schema(example = json!({"X-EXECD-ACCESS-TOKEN": "3b1f…"}))]
    pub headers: BTreeMap<String, String>,
}

/// Answer of `POST /v1/sandboxes/{id}/renew-expiration`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    /// The new expiry, RFC 3339.
    pub expires_at: String,
}

fn sandbox_json(r: &SandboxRow, full: bool) -> Value {
    // A struct of strings and maps always serializes.
    serde_json::to_value(Sandbox::from_row(r, full)).unwrap_or_default()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// A JSON request body. One over the server's `max_body_bytes` (the route's
/// `DefaultBodyLimit`) is 413 `PAYLOAD_TOO_LARGE`, not a malformed request; anything else
/// wrong with it is 400 `INVALID_REQUEST`.
#[derive(Debug)]
pub struct LimitedJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for LimitedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge {
                    limit: state.manager.config.max_body_bytes,
                })
            }
            Err(r) => Err(ApiError::BadRequest(format!(
                "invalid request body: {}",
                r.body_text()
            ))),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    operation_id = "createSandbox",
    summary = "Create a sandbox (taken from a warm pool when one matches)",
    request_body = CreateRequest,
    responses(
        (status = 202, description = "Created and running", body = Sandbox, headers(("Location" = String, description = "`/v1/sandboxes/{id}`"))),
        (status = 400, description = "Invalid request: `INVALID_REQUEST`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 413, description = "The body is larger than the server's `max_body_bytes`: `PAYLOAD_TOO_LARGE`", body = ErrorBody),
        (status = 429, description = "The tenant's or the server's sandbox quota is used up: `QUOTA_EXCEEDED`", body = ErrorBody),
        (status = 503, description = "The sandbox could not be started: `UNAVAILABLE`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    LimitedJson(req): LimitedJson<CreateRequest>,
) -> Result<Response, ApiError> {
    if req.snapshot_id.is_some() {
        return Err(ApiError::BadRequest(
            "snapshots are not supported by this server".into(),
        ));
    }
    if req.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::BadRequest(
            "volumes are not supported by this server; use the files API".into(),
        ));
    }
    if let Some(policy) = &req.network_policy {
        let default = policy
            .get("defaultAction")
            .and_then(Value::as_str)
            .unwrap_or("deny");
        let has_allow = policy
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r.get("action").and_then(Value::as_str) == Some("allow"))
            });
        if default != "deny" || has_allow {
            return Err(ApiError::BadRequest("network access is not available yet: sandboxes have no network (networkPolicy must deny everything)".into()));
        }
    }
    let spec = state.manager.spec(&req)?;
    let detail = json!({ "image": spec.image, "entrypoint": spec.entrypoint, "memory": spec.memory_bytes, "cpus": spec.cpus, "pids": spec.pids, "timeout_s": spec.timeout.map(|t| t.as_secs()) });
    match state.manager.create(&tenant.0, spec).await {
        Ok((row, from_pool)) => {
            let mut detail = detail;
            detail["from_pool"] = json!(from_pool);
            detail["runtime"] = json!(row.backend);
            detail["isolation"] = row.isolation.clone();
            if let Some(note) = row.isolation.get("fallback").and_then(Value::as_str) {
                state.manager.auditor.lifecycle(
                    &tenant.0,
                    Some(&row.id),
                    "sandbox.runtime_fallback",
                    json!({ "requested": row.isolation.get("requested"), "used": row.backend, "reason": note }),
                    "ok",
                    None,
                );
            }
            state.manager.auditor.lifecycle(
                &tenant.0,
                Some(&row.id),
                "sandbox.create",
                detail,
                "ok",
                None,
            );
            let location = format!("/v1/sandboxes/{}", row.id);
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(sandbox_json(&row, false)),
            )
                .into_response())
        }
        Err(e) => {
            state.manager.auditor.lifecycle(
                &tenant.0,
                None,
                "sandbox.create",
                detail,
                "error",
                Some(e.to_string()),
            );
            Err(e)
        }
    }
}

fn owned_row(state: &AppState, tenant: &Tenant, id: &str) -> Result<SandboxRow, ApiError> {
    state
        .manager
        .store
        .sandbox(&tenant.0, id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::SandboxNotFound(id.to_owned()))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    operation_id = "getSandbox",
    summary = "Get a sandbox",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such sandbox (or another tenant's): `SANDBOX_NOT_FOUND`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut row = owned_row(&state, &tenant, &id)?;
    if let Some(live) = state.manager.get_live(&id) {
        if *live.paused.lock().unwrap_or_else(|p| p.into_inner()) {
            row.state = "Paused".into();
        }
    }
    Ok(Json(sandbox_json(&row, true)))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/isolation",
    tag = "sandboxes",
    operation_id = "getSandboxIsolation",
    summary = "How a sandbox is isolated: backend, enforcement report, limits in force",
    description = "`backend` is native, docker or gvisor; `requested` the backend the create asked for and `fallback` why another was used (null when none was); `enforcement` what the backend reports is in force (namespaces, seccomp, landlock, capabilities, read-only root, ...); `limits` the memory, CPU, pids and output limits. Answers for ended sandboxes too.",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    responses(
        (status = 200, description = "The isolation report", body = Object),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such sandbox (or another tenant's): `SANDBOX_NOT_FOUND`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn isolation(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = owned_row(&state, &tenant, &id)?;
    let mut report = match state.manager.get_live(&id) {
        Some(live) => live.isolation.clone(),
        None => row.isolation.clone(),
    };
    if !report.is_object() {
        report = json!({});
    }
    report["sandboxId"] = json!(row.id);
    report["backend"] = json!(row.backend);
    report["state"] = json!(row.state);
    Ok(Json(report))
}

#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    operation_id = "deleteSandbox",
    summary = "Terminate a sandbox (idempotent for ended ones)",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    responses(
        (status = 204, description = "Terminated"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such sandbox (or another tenant's): `SANDBOX_NOT_FOUND`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn delete_one(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = owned_row(&state, &tenant, &id)?;
    if state.manager.owned(&tenant.0, &id).is_err() {
        return match row.state.as_str() {
            "Terminated" | "Failed" => Ok(StatusCode::NO_CONTENT),
            _ => Err(ApiError::SandboxNotFound(id)),
        };
    }
    state.manager.terminate(&id, "user_delete").await;
    state.manager.auditor.lifecycle(
        &tenant.0,
        Some(&id),
        "sandbox.delete",
        json!({}),
        "ok",
        None,
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    page: Option<usize>,
    #[serde(rename = "pageSize")]
    page_size: Option<usize>,
}

/// `state` may repeat; `metadata` is a url-encoded `k=v&k2=v2`.
fn list_filters(raw: Option<&str>) -> (Vec<String>, Vec<(String, String)>) {
    let mut states = Vec::new();
    let mut meta = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "state" => states.push(v),
            "metadata" => {
                for kv in v.split('&') {
                    if let Some((mk, mv)) = kv.split_once('=') {
                        meta.push((percent_decode(mk), percent_decode(mv)));
                    }
                }
            }
            _ => {}
        }
    }
    (states, meta)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    operation_id = "listSandboxes",
    summary = "List the tenant's sandboxes",
    params(
        ("state" = Option<Vec<String>>, Query, explode, description = "Keep sandboxes in these states (repeatable, case-insensitive), e.g. `Running`"),
        ("metadata" = Option<String>, Query, description = "URL-encoded `k=v&k2=v2`: keep sandboxes whose metadata has all these pairs", example = "project%3DApollo"),
        ("page" = Option<u64>, Query, minimum = 1, description = "1-based page (default 1)"),
        ("pageSize" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Items per page (default 20)"),
    ),
    responses(
        (status = 200, description = "A page of sandboxes, newest first", body = SandboxList),
        (status = 400, description = "Invalid page or pageSize: `INVALID_REQUEST`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Query(q): Query<ListQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let page = q.page.unwrap_or(1);
    let page_size = q.page_size.unwrap_or(20);
    if page == 0 || page_size == 0 || page_size > 1000 {
        return Err(ApiError::BadRequest(
            "page must be >= 1 and pageSize between 1 and 1000".into(),
        ));
    }
    let (states, meta) = list_filters(raw.as_deref());
    let rows = state.manager.store.sandboxes(&tenant.0).map_err(internal)?;
    let matching: Vec<&SandboxRow> = rows
        .iter()
        .filter(|r| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(&r.state)))
        .filter(|r| {
            meta.iter()
                .all(|(k, v)| r.metadata.get(k).and_then(Value::as_str) == Some(v.as_str()))
        })
        .collect();
    let total = matching.len();
    let pages = total.div_ceil(page_size);
    let items: Vec<Sandbox> = matching
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|r| Sandbox::from_row(r, true))
        .collect();
    let list = SandboxList {
        items,
        pagination: Pagination {
            page: page as u64,
            page_size: page_size as u64,
            total_items: total as u64,
            total_pages: pages as u64,
            has_next_page: page < pages,
        },
    };
    // Through `Value`, whose keys serialize sorted, like every other answer here.
    Ok(Json(serde_json::to_value(list).unwrap_or_default()))
}

#[utoipa::path(
    patch,
    path = "/v1/sandboxes/{id}/metadata",
    tag = "sandboxes",
    operation_id = "patchSandboxMetadata",
    summary = "Merge-patch a sandbox's metadata",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    request_body(
        content = BTreeMap<String, Option<String>>,
        description = "A string sets a key, `null` removes it; keys under `opensandbox.io/` are reserved",
        example = json!({"project": "apollo", "note": null}),
    ),
    responses(
        (status = 200, description = "The updated sandbox", body = Sandbox),
        (status = 400, description = "Reserved key or non-string value: `INVALID_REQUEST`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such sandbox (or another tenant's): `SANDBOX_NOT_FOUND`", body = ErrorBody),
        (status = 413, description = "The body is larger than the server's `max_body_bytes`: `PAYLOAD_TOO_LARGE`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn patch_metadata(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    LimitedJson(patch): LimitedJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let mut row = owned_row(&state, &tenant, &id)?;
    for (k, v) in &patch {
        if k.starts_with("opensandbox.io/") {
            return Err(ApiError::BadRequest(format!(
                "metadata key `{k}` is reserved"
            )));
        }
        match v {
            Value::Null => {
                row.metadata.remove(k);
            }
            Value::String(_) => {
                row.metadata.insert(k.clone(), v.clone());
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "metadata value of `{k}` must be a string or null"
                )))
            }
        }
    }
    let stamp = rfc3339(now());
    state
        .manager
        .store
        .set_metadata(&id, &row.metadata, &stamp)
        .map_err(internal)?;
    row.updated_at = stamp;
    state.manager.auditor.lifecycle(
        &tenant.0,
        Some(&id),
        "sandbox.metadata",
        Value::Object(patch),
        "ok",
        None,
    );
    Ok(Json(sandbox_json(&row, true)))
}

/// Body of `POST /v1/sandboxes/{id}/renew-expiration`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RenewRequest {
    /// The new expiry, RFC 3339, in the future and within the server's `max_timeout_seconds`.
    #[schema(example = "2030-01-01T00:00:00Z")]
    expires_at: String,
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/renew-expiration",
    tag = "sandboxes",
    operation_id = "renewSandboxExpiration",
    summary = "Move a running sandbox's expiry",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "The new expiry", body = RenewResponse),
        (status = 400, description = "Not RFC 3339, in the past, or too far away: `INVALID_REQUEST`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such running sandbox: `SANDBOX_NOT_FOUND`", body = ErrorBody),
        (status = 413, description = "The body is larger than the server's `max_body_bytes`: `PAYLOAD_TOO_LARGE`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn renew(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    LimitedJson(req): LimitedJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let live = state.manager.owned(&tenant.0, &id)?;
    let at = parse_rfc3339(&req.expires_at).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "expiresAt `{}` is not an RFC 3339 time",
            req.expires_at
        ))
    })?;
    let t = now();
    if at <= t {
        return Err(ApiError::BadRequest(
            "expiresAt must be in the future".into(),
        ));
    }
    if (at - t).whole_seconds() as u64 > state.manager.config.max_timeout_seconds {
        return Err(ApiError::BadRequest(format!(
            "expiresAt is further away than the server's maximum of {} seconds",
            state.manager.config.max_timeout_seconds
        )));
    }
    *live.expires_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    let stamp = rfc3339(at);
    state
        .manager
        .store
        .set_expiry(&id, Some(&stamp), &rfc3339(t))
        .map_err(internal)?;
    state.manager.auditor.lifecycle(
        &tenant.0,
        Some(&id),
        "sandbox.renew",
        json!({ "expiresAt": stamp }),
        "ok",
        None,
    );
    Ok(Json(RenewResponse { expires_at: stamp }))
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/pause",
    tag = "sandboxes",
    operation_id = "pauseSandbox",
    summary = "Freeze a sandbox's processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    responses(
        (status = 202, description = "Done"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such running sandbox: `SANDBOX_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "The freezer refused: `CONFLICT`", body = ErrorBody),
        (status = 503, description = "This host has no cgroup freezer: `UNAVAILABLE`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn pause(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    freeze(&state, &tenant, &id, true).await
}

/// Pause (`true`) or resume a sandbox of the tenant, and audit it.
async fn freeze(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
    pause: bool,
) -> Result<StatusCode, ApiError> {
    let live = state.manager.owned(&tenant.0, id)?;
    state.manager.set_paused(&live, pause).await?;
    let kind = if pause {
        "sandbox.pause"
    } else {
        "sandbox.resume"
    };
    state
        .manager
        .auditor
        .lifecycle(&tenant.0, Some(id), kind, json!({}), "ok", None);
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/resume",
    tag = "sandboxes",
    operation_id = "resumeSandbox",
    summary = "Thaw a paused sandbox",
    params(
        ("id" = String, Path, description = "Sandbox id"),
    ),
    responses(
        (status = 202, description = "Done"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such running sandbox: `SANDBOX_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "The freezer refused: `CONFLICT`", body = ErrorBody),
        (status = 503, description = "This host has no cgroup freezer: `UNAVAILABLE`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    freeze(&state, &tenant, &id, false).await
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/endpoints/{port}",
    tag = "sandboxes",
    operation_id = "getSandboxEndpoint",
    summary = "Where to reach a port of a sandbox",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("port" = u16, Path, description = "Port in the sandbox; only the agent's (execd) 44772 is proxied so far"),
    ),
    responses(
        (status = 200, description = "Proxy address and the headers to send", body = Endpoint),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such running sandbox: `SANDBOX_NOT_FOUND`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn endpoint(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path((id, port)): Path<(String, u16)>,
    headers: HeaderMap,
) -> Result<Json<Endpoint>, ApiError> {
    let live = state.manager.owned(&tenant.0, &id)?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| state.manager.config.listen.to_string(), str::to_owned);
    Ok(Json(Endpoint {
        endpoint: format!("{host}/sandboxes/{id}/port/{port}"),
        headers: BTreeMap::from([(
            runbox_proto::execd::ACCESS_TOKEN_HEADER.to_owned(),
            live.token().to_owned(),
        )]),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/metrics/events",
    tag = "sandboxes",
    operation_id = "postMetricsEvents",
    summary = "Accept SDK metrics events (discarded)",
    responses(
        (status = 204, description = "Accepted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn metrics_events() -> StatusCode {
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_decode_states_and_metadata() {
        let (s, m) = list_filters(Some(
            "state=Running&state=Paused&metadata=project%3DApollo%26note%3DDemo%2520Test&page=2",
        ));
        assert_eq!(s, vec!["Running", "Paused"]);
        assert_eq!(
            m,
            vec![
                ("project".to_owned(), "Apollo".to_owned()),
                ("note".to_owned(), "Demo Test".to_owned())
            ]
        );
    }

    #[test]
    fn timeout_distinguishes_absent_and_null() {
        let absent: CreateRequest = serde_json::from_str("{}").expect("parses");
        assert_eq!(absent.timeout, None);
        let null: CreateRequest = serde_json::from_str(r#"{"timeout": null}"#).expect("parses");
        assert_eq!(null.timeout, Some(None));
        let set: CreateRequest = serde_json::from_str(r#"{"timeout": 60}"#).expect("parses");
        assert_eq!(set.timeout, Some(Some(60)));
        assert!(serde_json::from_str::<CreateRequest>(r#"{"bogus": 1}"#).is_err());
    }
}
