//! The client side of the Provider REST API: a [`ProviderBackend`] that drives a backend over HTTP.
//!
//! Each backend gets its own connection pool, a bound on concurrent calls and a deadline per call,
//! so one that hangs, fails or answers garbage slows only its own services. Every failure carries
//! the backend's own `error` text when it gave one.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::wire::{BackupBody, BackupStatusBody, CreateBody, ErrorBody, PatchBody, StatusBody};
use crate::{
    BackendError, BackupRequest, BackupState, InstancePatch, InstanceSpec, InstanceStatus,
    ProviderBackend, Result, UpdateEffect,
};

/// How many ids one `GET /?id=...` carries.
const STATUS_BATCH: usize = 50;

pub struct RestBackend {
    endpoint: String,
    secret: Option<String>,
    http: reqwest::Client,
    /// Bounds the calls in flight to this backend.
    limit: Semaphore,
}

/// Settings of a REST backend client.
#[derive(Debug, Clone)]
pub struct RestConfig {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_in_flight: 4,
        }
    }
}

impl RestBackend {
    pub fn new(endpoint: &str, secret: Option<String>, cfg: RestConfig) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            secret,
            http: reqwest::Client::builder()
                .timeout(cfg.timeout)
                .connect_timeout(cfg.connect_timeout)
                .build()
                .expect("an HTTP client without TLS builds"),
            limit: Semaphore::new(cfg.max_in_flight.max(1)),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One call; answers the status and the body, or a [`BackendError`] naming what went wrong.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<(StatusCode, bytes_like::Body)> {
        let _permit = self
            .limit
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let url = format!("{}{path}", self.endpoint);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(secret) = &self.secret {
            req = req.header("X-API-Key", secret).bearer_auth(secret);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            BackendError::Failed(format!("{method} {url}: {what}: {}", root_cause(&e)))
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            BackendError::Failed(format!(
                "{method} {url}: reading the answer: {}",
                root_cause(&e)
            ))
        })?;
        Ok((status, bytes_like::Body(bytes.to_vec())))
    }

    fn error_of(
        method: &Method,
        path: &str,
        status: StatusCode,
        body: &bytes_like::Body,
        id: Option<Uuid>,
    ) -> BackendError {
        let text = serde_json::from_slice::<ErrorBody>(&body.0)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body.0).chars().take(200).collect());
        let msg = format!("{method} {path}: {} {}", status.as_u16(), text.trim());
        match status.as_u16() {
            404 => id
                .map(BackendError::NotFound)
                .unwrap_or(BackendError::Failed(msg)),
            400 | 409 | 422 => BackendError::Invalid(msg),
            _ => BackendError::Failed(msg),
        }
    }

    fn parse<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        body: &bytes_like::Body,
    ) -> Result<T> {
        serde_json::from_slice(&body.0).map_err(|e| {
            BackendError::Failed(format!(
                "{method} {path}: malformed JSON from the backend: {e}"
            ))
        })
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

mod bytes_like {
    /// A response body, kept as bytes so an error answer can be read either way.
    pub struct Body(pub Vec<u8>);
}

#[async_trait]
impl ProviderBackend for RestBackend {
    async fn list(&self) -> Result<Vec<Uuid>> {
        let (status, body) = self.call(Method::GET, "/", None::<&()>).await?;
        if !status.is_success() {
            return Err(Self::error_of(&Method::GET, "/", status, &body, None));
        }
        Self::parse(&Method::GET, "/", &body)
    }

    async fn status(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, InstanceStatus>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(STATUS_BATCH) {
            let query: Vec<String> = chunk.iter().map(|id| format!("id={id}")).collect();
            let path = format!("/?{}", query.join("&"));
            let (status, body) = self.call(Method::GET, &path, None::<&()>).await?;
            if !status.is_success() {
                return Err(Self::error_of(&Method::GET, "/?id=", status, &body, None));
            }
            let map: HashMap<Uuid, StatusBody> = Self::parse(&Method::GET, "/?id=", &body)?;
            // Only what was asked for: a backend cannot make Berth believe in other instances.
            out.extend(
                map.into_iter()
                    .filter(|(id, _)| chunk.contains(id))
                    .map(|(id, s)| (id, s.into())),
            );
        }
        Ok(out)
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<()> {
        let body = CreateBody::from(spec);
        let (status, answer) = self.call(Method::POST, "/", Some(&body)).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(Self::error_of(&Method::POST, "/", status, &answer, None))
    }

    async fn update(&self, id: Uuid, patch: &InstancePatch) -> Result<UpdateEffect> {
        let path = format!("/{id}");
        let body = PatchBody::new(id, patch.team_id, patch);
        let (status, answer) = self.call(Method::PATCH, &path, Some(&body)).await?;
        if status.is_success() {
            return Ok(UpdateEffect::Unknown);
        }
        Err(Self::error_of(
            &Method::PATCH,
            &path,
            status,
            &answer,
            Some(id),
        ))
    }

    async fn backup_start(&self, backup: Uuid, req: &BackupRequest) -> Result<()> {
        let path = format!("/backups/{backup}");
        let (status, answer) = self
            .call(Method::PUT, &path, Some(&BackupBody::from(req)))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(Self::error_of(&Method::PUT, &path, status, &answer, None))
    }

    async fn backup_status(&self, backup: Uuid, req: &BackupRequest) -> Result<BackupState> {
        let path = format!("/backups/{backup}/status");
        let (status, answer) = self
            .call(Method::POST, &path, Some(&BackupBody::from(req)))
            .await?;
        if !status.is_success() {
            return Err(Self::error_of(&Method::POST, &path, status, &answer, None));
        }
        Ok(Self::parse::<BackupStatusBody>(&Method::POST, &path, &answer)?.into())
    }

    async fn backup_delete(&self, backup: Uuid, req: &BackupRequest) -> Result<()> {
        let path = format!("/backups/{backup}");
        let (status, answer) = self
            .call(Method::DELETE, &path, Some(&BackupBody::from(req)))
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(Self::error_of(
            &Method::DELETE,
            &path,
            status,
            &answer,
            None,
        ))
    }

    async fn delete(&self, id: Uuid) -> Result<()> {
        let path = format!("/{id}");
        let (status, answer) = self.call(Method::DELETE, &path, None::<&()>).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(Self::error_of(
            &Method::DELETE,
            &path,
            status,
            &answer,
            Some(id),
        ))
    }
}
