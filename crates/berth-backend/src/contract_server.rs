//! The server side of the Provider REST API: any [`ProviderBackend`] served over HTTP, one base
//! path per provider (`/postgres/`, `/redis/`). This is what `berth backend serve` runs, so the
//! built-in engines can live on another host and be registered as a REST provider.
//!
//! `POST /` answers 201 at once and creates in the background, as the contract expects: the
//! platform polls `GET /?id=` until `details.ready`. A create that failed is reported there, with
//! its `error`, until it is retried or deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::wire::{BackupBody, BackupStatusBody, CreateBody, ErrorBody, PatchBody, StatusBody};
use crate::{BackendError, ProviderBackend};

/// Creates that failed in the background: (provider, id) -> (the request, the error).
type FailedCreates = HashMap<(String, Uuid), (CreateBody, String)>;

#[derive(Clone)]
struct Served {
    backends: Arc<HashMap<String, Arc<dyn ProviderBackend>>>,
    /// SHA-256 of the API key, when one is required.
    key: Option<[u8; 32]>,
    /// Creates that failed in the background, by provider and id, reported in status.
    failed: Arc<Mutex<FailedCreates>>,
}

/// An error answer: always `{"error": "..."}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        let code = match &e {
            BackendError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

/// The router for `backends` (provider name -> backend), requiring `api_key` when given.
pub fn router(
    backends: HashMap<String, Arc<dyn ProviderBackend>>,
    api_key: Option<&str>,
) -> Router {
    let state = Served {
        backends: Arc::new(backends),
        key: api_key.map(|k| Sha256::digest(k.as_bytes()).into()),
        failed: Arc::default(),
    };
    let provider = Router::new()
        .route("/{provider}", get(list_or_status).post(create))
        .route("/{provider}/", get(list_or_status).post(create))
        .route("/{provider}/{id}", patch(update).delete(delete))
        .route(
            "/{provider}/backups/{backup}",
            put(backup_start).delete(backup_delete),
        )
        .route("/{provider}/backups/{backup}/status", post(backup_status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .merge(provider)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(|| async { "ok" }))
        // CONTRACTS.md §2: paths are relative to the endpoint URL, which includes the base path.
        .route("/{provider}/health", get(|| async { "ok" }))
        .route("/{provider}/ready", get(|| async { "ok" }))
        .fallback(|| async { Failure(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(state)
}

async fn require_key(State(s): State<Served>, req: Request, next: Next) -> Response {
    let Some(expected) = s.key else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        Some(k) if bool::from(Sha256::digest(k.as_bytes()).as_slice().ct_eq(&expected)) => {
            next.run(req).await
        }
        _ => Failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (X-API-Key or Bearer)".into(),
        )
        .into_response(),
    }
}

fn backend(s: &Served, provider: &str) -> Result<Arc<dyn ProviderBackend>, Failure> {
    s.backends.get(provider).cloned().ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("no provider '{provider}' here"),
        )
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

async fn list_or_status(
    State(s): State<Served>,
    Path(provider): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let b = backend(&s, &provider)?;
    let mut ids = Vec::new();
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("id", v)) => match Uuid::parse_str(v) {
                Ok(id) => ids.push(id),
                // An id that cannot exist here is unknown, and unknown ids are left out.
                Err(_) => continue,
            },
            _ => {
                return Err(Failure(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter '{pair}'"),
                ))
            }
        }
    }
    if q.as_deref().unwrap_or("").is_empty() {
        let mut all = b.list().await?;
        let failed = s.failed.lock().unwrap();
        all.extend(
            failed
                .keys()
                .filter(|(p, _)| *p == provider)
                .map(|(_, id)| *id),
        );
        all.sort();
        all.dedup();
        return Ok(Json(all).into_response());
    }
    let mut map: HashMap<Uuid, StatusBody> = b
        .status(&ids)
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    let failed = s.failed.lock().unwrap();
    for id in &ids {
        if let Some((body, error)) = failed.get(&(provider.clone(), *id)) {
            map.entry(*id).or_insert_with(|| StatusBody {
                plan: body.plan.clone(),
                config: body.config.clone(),
                details: [("ready".to_owned(), serde_json::Value::Bool(false))]
                    .into_iter()
                    .collect(),
                error: Some(error.clone()),
            });
        }
    }
    Ok(Json(map).into_response())
}

async fn create(
    State(s): State<Served>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let b = backend(&s, &provider)?;
    let body: CreateBody = parse_json(&body)?;
    if body.team_id < 1 {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "teamId must be a positive integer".into(),
        ));
    }
    let key = (provider, body.id);
    s.failed.lock().unwrap().remove(&key);
    let failed = s.failed.clone();
    tokio::spawn(async move {
        if let Err(e) = b.create(&body.clone().into()).await {
            tracing::warn!(id = %body.id, error = %e, "create failed");
            failed.lock().unwrap().insert(key, (body, e.to_string()));
        }
    });
    Ok(StatusCode::CREATED.into_response())
}

async fn update(
    State(s): State<Served>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let b = backend(&s, &provider)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| Failure(StatusCode::NOT_FOUND, format!("no instance {id}")))?;
    let body: PatchBody = parse_json(&body)?;
    if body.id.is_some_and(|b| b != id) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!(
                "body id {} does not match the path id {id}",
                body.id.unwrap_or_default()
            ),
        ));
    }
    b.update(id, &body.into_patch()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete(
    State(s): State<Served>,
    Path((provider, id)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let b = backend(&s, &provider)?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    s.failed.lock().unwrap().remove(&(provider, id));
    b.delete(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Backups are optional: a backend without them answers 501.
fn backup_failure(e: BackendError) -> Failure {
    match e {
        BackendError::Invalid(msg) if msg.contains("no backups") => {
            Failure(StatusCode::NOT_IMPLEMENTED, msg)
        }
        other => other.into(),
    }
}

/// What every backup call carries: the backend, the backup id and the backup body.
type BackupCall = (Arc<dyn ProviderBackend>, Uuid, crate::BackupRequest);

fn backup_call(
    s: &Served,
    provider: &str,
    backup: &str,
    body: &[u8],
) -> Result<BackupCall, Failure> {
    let b = backend(s, provider)?;
    let id = Uuid::parse_str(backup).map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            "the backup id must be a UUID".into(),
        )
    })?;
    let req: BackupBody = parse_json(body)?;
    Ok((b, id, req.into()))
}

async fn backup_start(
    State(s): State<Served>,
    Path((provider, backup)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let (b, id, req) = backup_call(&s, &provider, &backup, &body)?;
    b.backup_start(id, &req).await.map_err(backup_failure)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn backup_status(
    State(s): State<Served>,
    Path((provider, backup)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let (b, id, req) = backup_call(&s, &provider, &backup, &body)?;
    let state = b.backup_status(id, &req).await.map_err(backup_failure)?;
    Ok(Json(BackupStatusBody::from(state)).into_response())
}

async fn backup_delete(
    State(s): State<Served>,
    Path((provider, backup)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let (b, id, req) = backup_call(&s, &provider, &backup, &body)?;
    b.backup_delete(id, &req).await.map_err(backup_failure)?;
    Ok(StatusCode::ACCEPTED.into_response())
}
