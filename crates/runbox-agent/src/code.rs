//! /code and /code/context(s): stateful code contexts, one kernel process each, started lazily
//! on the first run and restarted lazily after it died (the client is told its state is gone).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use runbox_proto::execd::{CodeContext, CodeContextRequest, Event, EventKind, RunCodeRequest};
use serde::Deserialize;

use crate::commands::new_id;
use crate::error::{ApiError, JsonBody};
use crate::kernels::{Interrupter, Kernel, Language};
use crate::stream::{self, Emitter};
use crate::AppState;

/// One code context.
#[derive(Debug)]
struct Context {
    language: Language,
    /// The kernel, once started; the async lock also serialises cells of one context.
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// Interrupts the running cell without waiting for the kernel lock.
    interrupter: Mutex<Option<Interrupter>>,
}

#[derive(Debug, Clone, Default)]
pub struct Contexts {
    map: Arc<Mutex<BTreeMap<String, Arc<Context>>>>,
}

impl Contexts {
    fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn insert(&self, id: String, language: Language) -> Arc<Context> {
        let ctx = Arc::new(Context {
            language,
            kernel: tokio::sync::Mutex::new(None),
            interrupter: Mutex::new(None),
        });
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(ctx)
            .clone()
    }

    fn remove(&self, id: &str) -> Option<Arc<Context>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/code/context", post(create))
        .route("/code/contexts", get(list).delete(delete_by_language))
        .route("/code/contexts/{id}", get(get_one).delete(delete_one))
        .route("/code", post(run).delete(interrupt))
        .route("/code/interrupt/{id}", delete(interrupt_path))
}

fn language(name: Option<&str>) -> Result<Language, ApiError> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or("python");
    Language::parse(name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown language `{name}` (supported: python, bash, javascript)"
        ))
    })
}

async fn create(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<CodeContext>, ApiError> {
    let req: CodeContextRequest = crate::error::optional_json(&body)?;
    let lang = language(req.language.as_deref())?;
    let id = new_id("ctx");
    state.contexts.insert(id.clone(), lang);
    Ok(Json(CodeContext {
        id: Some(id),
        language: lang.name().to_owned(),
    }))
}

#[derive(Debug, Deserialize)]
struct LanguageQuery {
    language: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<LanguageQuery>,
) -> Result<Json<Vec<CodeContext>>, ApiError> {
    let filter = match q.language.as_deref() {
        Some(l) if !l.is_empty() => Some(language(Some(l))?),
        _ => None,
    };
    let map = state.contexts.map.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Json(
        map.iter()
            .filter(|(_, c)| filter.is_none_or(|l| l == c.language))
            .map(|(id, c)| CodeContext {
                id: Some(id.clone()),
                language: c.language.name().to_owned(),
            })
            .collect(),
    ))
}

async fn delete_by_language(
    State(state): State<AppState>,
    Query(q): Query<LanguageQuery>,
) -> Result<Response, ApiError> {
    let lang = language(Some(q.language.as_deref().ok_or_else(|| {
        ApiError::bad_request("query parameter `language` is required")
    })?))?;
    let ids: Vec<String> = {
        let map = state.contexts.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, c)| c.language == lang)
            .map(|(id, _)| id.clone())
            .collect()
    };
    for id in ids {
        if let Some(ctx) = state.contexts.remove(&id) {
            shut_down(ctx).await;
        }
    }
    Ok(().into_response())
}

async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CodeContext>, ApiError> {
    let ctx = state
        .contexts
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no code context {id}")))?;
    Ok(Json(CodeContext {
        id: Some(id),
        language: ctx.language.name().to_owned(),
    }))
}

async fn delete_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = state
        .contexts
        .remove(&id)
        .ok_or_else(|| ApiError::not_found(format!("no code context {id}")))?;
    shut_down(ctx).await;
    Ok(().into_response())
}

async fn shut_down(ctx: Arc<Context>) {
    if let Some(i) = ctx
        .interrupter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        i.interrupt();
    }
    if let Some(kernel) = ctx.kernel.lock().await.take() {
        kernel.shutdown().await;
    }
}

/// The context a run request names: an explicit id (which must exist), or the default context
/// of the language (created on first use, so stateless calls still share state per language,
/// as the official SDK expects).
fn resolve(state: &AppState, req: &RunCodeRequest) -> Result<(String, Arc<Context>), ApiError> {
    let requested = req.context.as_ref();
    match requested
        .and_then(|c| c.id.as_deref())
        .filter(|id| !id.is_empty())
    {
        Some(id) => {
            let ctx = state
                .contexts
                .get(id)
                .ok_or_else(|| ApiError::not_found(format!("no code context {id}")))?;
            Ok((id.to_owned(), ctx))
        }
        None => {
            let lang = language(requested.map(|c| c.language.as_str()))?;
            let id = format!("default-{}", lang.name());
            Ok((id.clone(), state.contexts.insert(id, lang)))
        }
    }
}

async fn run(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RunCodeRequest>,
) -> Result<Response, ApiError> {
    let (id, ctx) = resolve(&state, &req)?;
    let (emit, response) = stream::channel();
    let timeout = req
        .timeout
        .filter(|t| *t > 0)
        .map(Duration::from_millis)
        .or(state.config.code_timeout);
    // In the channel before the response is returned, so the head and `init` leave in one
    // write.
    emit.text(EventKind::Init, id).await;
    tokio::spawn(async move {
        run_cell(&state, &ctx, &req.code, &emit, timeout).await;
    });
    // Let the cell start before the response head is written: a warm kernel then has the
    // cell while the head (with init and the execution count) goes out.
    tokio::task::yield_now().await;
    Ok(response)
}

async fn run_cell(
    state: &AppState,
    ctx: &Context,
    code: &str,
    emit: &Emitter,
    timeout: Option<Duration>,
) {
    let started = Instant::now();
    let mut guard = ctx.kernel.lock().await;
    if guard.is_none() {
        match Kernel::start(
            ctx.language,
            &state.procs,
            &state.config,
            &state.config.python_import_policy,
        )
        .await
        {
            Ok(k) => {
                *ctx.interrupter.lock().unwrap_or_else(|p| p.into_inner()) = Some(k.interrupter());
                *guard = Some(k);
            }
            Err(e) => {
                emit.error("KernelStartError", e.to_string(), Vec::new())
                    .await;
                complete(emit, started).await;
                return;
            }
        }
    }
    let Some(kernel) = guard.as_mut() else { return };
    let outcome = kernel.run(code, emit, timeout).await;
    if outcome.kernel_died {
        if let Some(dead) = guard.take() {
            dead.shutdown().await;
        }
        *ctx.interrupter.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    complete(emit, started).await;
}

async fn complete(emit: &Emitter, started: Instant) {
    let mut done = Event::new(EventKind::ExecutionComplete, stream::now_ms());
    done.execution_time = Some(started.elapsed().as_millis() as u64);
    emit.send(done).await;
}

#[derive(Debug, Deserialize)]
struct IdQuery {
    id: Option<String>,
}

fn interrupt_context(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let ctx = state
        .contexts
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no code context {id}")))?;
    if let Some(i) = ctx
        .interrupter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        i.interrupt();
    }
    Ok(().into_response())
}

async fn interrupt(
    State(state): State<AppState>,
    Query(q): Query<IdQuery>,
) -> Result<Response, ApiError> {
    let id =
        q.id.filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("query parameter `id` is required"))?;
    interrupt_context(&state, &id)
}

async fn interrupt_path(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    interrupt_context(&state, &id)
}
