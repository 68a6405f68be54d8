//! The OpenAPI 3.1 document of the server, generated from the handlers' `#[utoipa::path]`
//! attributes and served at `GET /v1/openapi.json`. A copy is checked in as
//! `docs/api/openapi.json`; the `openapi` test fails when the two drift.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::{api, audit};

/// Name of the security scheme of the lifecycle API (also the header's name).
pub const API_KEY_SCHEME: &str = crate::auth::API_KEY_HEADER;
/// Name of the security scheme of the proxied execd API (also the header's name).
pub const ACCESS_TOKEN_SCHEME: &str = runbox_proto::execd::ACCESS_TOKEN_HEADER;

/// Stable error codes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400
    InvalidRequest,
    /// 401
    Unauthorized,
    /// 404, for sandboxes (another tenant's sandbox and a nonexistent one look the same)
    SandboxNotFound,
    /// 404
    NotFound,
    /// 409
    Conflict,
    /// 413, for request bodies over the server's `max_body_bytes`
    PayloadTooLarge,
    /// 429
    QuotaExceeded,
    /// 503
    Unavailable,
    /// 500
    InternalError,
}

/// Every error answer: a stable code and a human-readable message.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub code: ErrorCode,
    #[schema(example = "sandbox sbx-3f2a9c1d not found")]
    pub message: String,
}

/// The `extensions` of a create request: a string map. runbox's own options are the
/// `runbox.*` keys below (an unknown `runbox.*` key is refused with 400); other keys are
/// accepted and ignored.
#[derive(Debug)]
pub struct Extensions;

impl PartialSchema for Extensions {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str, example: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
                .examples([example])
        };
        let number = |description: &str, example: &str| {
            string(description, example).pattern(Some("^[0-9]+$"))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "String map. runbox's own options are the `runbox.*` keys (an unknown `runbox.*` \
                 key is refused with 400); other keys are accepted and ignored. See \
                 docs/configuration.md.",
            ))
            .property(
                "runbox.pids",
                number(
                    "Process and thread limit, at least 16 (default: the server's `default_pids`).",
                    "256",
                ),
            )
            .property(
                "runbox.output_limit",
                number("Bytes kept per output stream of one execution.", "1048576"),
            )
            .property(
                "runbox.import_allow",
                string(
                    "Comma-separated python modules code may import (PEP 578 audit hook).",
                    "json,math,numpy",
                ),
            )
            .property(
                "runbox.import_deny",
                string(
                    "Comma-separated python modules code may not import.",
                    "socket,subprocess",
                ),
            )
            .property(
                "runbox.network",
                string("`none` (the only mode so far).", "none").enum_values(Some(["none"])),
            )
            .property(
                "runbox.runtime",
                string("`native` (the only runtime so far).", "native")
                    .enum_values(Some(["native"])),
            )
            .property(
                "runbox.idle_timeout",
                number(
                    "Seconds without a request through the proxy after which the sandbox is \
                     ended (at least 1; paused sandboxes are never idle).",
                    "600",
                ),
            )
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .into()
    }
}

impl ToSchema for Extensions {}

/// Answer of the health checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

// Routes whose handlers live elsewhere or are generic: documented here.

#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    operation_id = "health",
    summary = "Liveness",
    responses((status = 200, description = "The server is up", body = Health)),
)]
#[allow(dead_code)]
fn health() {}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "server",
    operation_id = "healthV1",
    summary = "Liveness (under /v1)",
    responses((status = 200, description = "The server is up", body = Health)),
)]
#[allow(dead_code)]
fn health_v1() {}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    operation_id = "metrics",
    summary = "Prometheus metrics (totals only, no tenant names)",
    responses((
        status = 200,
        description = "Prometheus text format",
        body = String,
        content_type = "text/plain; version=0.0.4",
    )),
)]
#[allow(dead_code)]
fn metrics() {}

/// The document (this one).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "server",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
)]
pub async fn serve() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(document).as_str(),
    )
}

/// The proxied execd API, one operation per method.
macro_rules! proxy_op {
    ($($fn:ident $method:ident $id:literal;)*) => {$(
        #[utoipa::path(
            $method,
            path = "/sandboxes/{id}/port/{port}/{rest}",
            tag = "proxy",
            operation_id = $id,
            summary = "Pass-through to the sandbox's execd API",
            description = "Forwards the request to the agent (execd API) of the sandbox, \
                request and response bodies streamed both ways; `/sandboxes/{id}/port/{port}` \
                without a rest forwards to the API's root. Authenticated by the sandbox's \
                `X-EXECD-ACCESS-TOKEN` (from `GET /v1/sandboxes/{id}/endpoints/{port}`); the \
                tenant API key is not needed and never forwarded. Commands, code runs and file \
                writes are recorded in the audit log.",
            params(
                ("id" = String, Path, description = "Sandbox id"),
                ("port" = u16, Path, description = "Only the agent's port 44772 is proxied so far"),
                ("rest" = String, Path, description = "Path of the execd API, may contain `/`, e.g. `command` or `files/info`"),
            ),
            responses(
                (status = "default", description = "Whatever the execd API answers"),
                (status = 404, description = "No such running sandbox, or a wrong access token: `SANDBOX_NOT_FOUND`", body = ErrorBody),
                (status = 503, description = "A port other than the agent's: `UNAVAILABLE`", body = ErrorBody),
            ),
            security(("X-EXECD-ACCESS-TOKEN" = [])),
        )]
        #[allow(dead_code)]
        fn $fn() {}
    )*};
}

proxy_op! {
    proxy_get get "proxyGet";
    proxy_post post "proxyPost";
    proxy_put put "proxyPut";
    proxy_patch patch "proxyPatch";
    proxy_delete delete "proxyDelete";
}

#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                API_KEY_SCHEME,
                "A tenant's API key (from `runbox.toml`); not needed when the server runs \
                 without tenants (open mode).",
            ))),
        );
        components.add_security_scheme(
            ACCESS_TOKEN_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                ACCESS_TOKEN_SCHEME,
                "The per-sandbox token returned by the endpoints operation.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runbox",
        description = "The OpenSandbox lifecycle API as runbox serves it, plus runbox's audit \
            log and the pass-through to each sandbox's execd API. Every error answer is \
            `{code, message}` (schema `Error`); any operation may also answer 500 \
            `INTERNAL_ERROR`. Every answer carries `X-Request-ID` (the client's or a fresh one).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api::list,
        api::create,
        api::get_one,
        api::delete_one,
        api::patch_metadata,
        api::isolation,
        api::pause,
        api::resume,
        api::renew,
        api::endpoint,
        api::metrics_events,
        audit::list,
        audit::execution,
        proxy_get,
        proxy_post,
        proxy_put,
        proxy_patch,
        proxy_delete,
        health,
        health_v1,
        metrics,
        serve,
    ),
    components(schemas(ErrorCode, ErrorBody, Extensions)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sandboxes", description = "Sandbox lifecycle (OpenSandbox API v1)"),
        (name = "audit", description = "The tenant's audit log"),
        (name = "proxy", description = "Per-sandbox execd API, proxied"),
        (name = "server", description = "Health, metrics and this document"),
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The document as pretty JSON with a final newline: what `/v1/openapi.json` serves and
/// `docs/api/openapi.json` holds.
pub fn document() -> String {
    #[allow(clippy::expect_used)]
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes");
    s.push('\n');
    s
}
