//! Writing audit records (lifecycle actions here; commands, code and file writes from the
//! proxy) and reading them back through `/v1/audit` and `/v1/executions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api::Pagination;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::manager::{now, parse_rfc3339, rfc3339};
use crate::openapi::ErrorBody;
use crate::store::{AuditFilter, AuditRecord, Store};
use crate::AppState;

/// Code and command text kept per record.
pub const TEXT_CAP: usize = 8 * 1024;

#[derive(Debug, Clone)]
pub struct Auditor {
    store: Arc<Store>,
}

pub fn cap(s: &str) -> String {
    if s.len() <= TEXT_CAP {
        return s.to_owned();
    }
    let mut end = TEXT_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes total]", &s[..end], s.len())
}

impl Auditor {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        tenant: &str,
        sandbox: Option<&str>,
        kind: &str,
        detail: Value,
        outcome: &str,
        error: Option<String>,
        exit_code: Option<i64>,
        duration_ms: Option<f64>,
    ) -> String {
        let t = now();
        let id = format!("exe-{}", runbox_runtime::random_hex(12));
        let r = AuditRecord {
            id: id.clone(),
            at: rfc3339(t),
            tenant: tenant.to_owned(),
            sandbox: sandbox.map(str::to_owned),
            kind: kind.to_owned(),
            detail,
            outcome: outcome.to_owned(),
            error,
            exit_code,
            duration_ms,
        };
        let _ = self
            .store
            .audit(&r, (t.unix_timestamp_nanos() / 1_000_000) as i64);
        id
    }

    pub fn lifecycle(
        &self,
        tenant: &str,
        sandbox: Option<&str>,
        kind: &str,
        detail: Value,
        outcome: &str,
        error: Option<String>,
    ) {
        self.record(tenant, sandbox, kind, detail, outcome, error, None, None);
    }
}

// The schema of the store's `AuditRecord`, which is serialized as is; a test keeps the two
// in step.
/// One audit record: a lifecycle action, or a command, code run or file write through the proxy.
#[derive(Debug, ToSchema)]
#[schema(as = AuditRecord)]
#[allow(dead_code)]
pub struct AuditRecordSchema {
    /// `exe-` and 24 hex digits; also the key of `GET /v1/executions/{id}`.
    #[schema(example = "exe-0a1b2c3d4e5f60718293a4b5")]
    id: String,
    /// RFC 3339.
    at: String,
    tenant: String,
    /// The sandbox acted on, if any.
    sandbox: Option<String>,
    /// `sandbox.create`, `sandbox.delete`, `sandbox.metadata`, `sandbox.renew`, `sandbox.pause`,
    /// `sandbox.resume`, `command`, `code`, `session.run`, `file.write`, `file.delete`.
    #[schema(example = "command")]
    kind: String,
    /// What was asked (code and command text capped at 8 KiB).
    detail: Value,
    /// `ok` or `error`.
    #[schema(example = "ok")]
    outcome: String,
    error: Option<String>,
    /// Exit code of a command or code run.
    exit_code: Option<i64>,
    duration_ms: Option<f64>,
}

/// Answer of `GET /v1/audit`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AuditList {
    items: Vec<AuditRecordSchema>,
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    sandbox: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
}

fn to_ms(s: &Option<String>, name: &str) -> Result<Option<i64>, ApiError> {
    s.as_deref()
        .map(|v| {
            parse_rfc3339(v)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("`{name}` must be an RFC 3339 time, not `{v}`"))
                })
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    operation_id = "listAudit",
    summary = "The tenant's audit log, newest first",
    params(
        ("sandbox" = Option<String>, Query, description = "Only records of this sandbox"),
        ("kind" = Option<String>, Query, description = "Only records of this kind, e.g. `command`"),
        ("since" = Option<String>, Query, description = "RFC 3339: records at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339: records before"),
        ("page" = Option<u32>, Query, minimum = 1, description = "1-based page (default 1)"),
        ("pageSize" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Items per page (default 50, clamped to 1..500)"),
    ),
    responses(
        (status = 200, description = "A page of audit records", body = AuditList),
        (status = 400, description = "`since` or `until` is not RFC 3339: `INVALID_REQUEST`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.page.unwrap_or(1).max(1);
    let page_size = q.page_size.unwrap_or(50).clamp(1, 500);
    let filter = AuditFilter {
        tenant: tenant.0,
        sandbox: q.sandbox,
        kind: q.kind,
        since_ms: to_ms(&q.since, "since")?,
        until_ms: to_ms(&q.until, "until")?,
        limit: page_size,
        offset: (page - 1) * page_size,
    };
    let (items, total) = state
        .manager
        .store
        .audit_query(&filter)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let pages = total.div_ceil(u64::from(page_size));
    Ok(Json(json!({
        "items": items,
        "pagination": { "page": page, "pageSize": page_size, "totalItems": total, "totalPages": pages, "hasNextPage": u64::from(page) < pages }
    })))
}

#[utoipa::path(
    get,
    path = "/v1/executions/{id}",
    tag = "audit",
    operation_id = "getExecution",
    summary = "One audit record of the tenant",
    params(
        ("id" = String, Path, description = "Audit record id (`exe-…`)"),
    ),
    responses(
        (status = 200, description = "The record", body = AuditRecordSchema),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such record: `NOT_FOUND`", body = ErrorBody),
    ),
    security(("OPEN-SANDBOX-API-KEY" = [])),
)]
pub async fn execution(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<AuditRecord>, ApiError> {
    state
        .manager
        .store
        .audit_record(&tenant.0, &id)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("execution {id} not found")))
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn schema_has_the_fields_of_the_record() {
        let record = AuditRecord {
            id: "exe-1".into(),
            at: "2030-01-01T00:00:00Z".into(),
            tenant: "default".into(),
            sandbox: None,
            kind: "command".into(),
            detail: json!({}),
            outcome: "ok".into(),
            error: None,
            exit_code: None,
            duration_ms: None,
        };
        let serialized = serde_json::to_value(&record).expect("serializes");
        let mut fields: Vec<&str> = serialized
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let RefOr::T(Schema::Object(schema)) = AuditRecordSchema::schema() else {
            panic!("not an object schema");
        };
        let mut documented: Vec<&str> = schema.properties.keys().map(String::as_str).collect();
        fields.sort_unstable();
        documented.sort_unstable();
        assert_eq!(fields, documented);
    }
}
