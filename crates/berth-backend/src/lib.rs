//! Provider backends: whatever turns a service spec into a running instance.
//!
//! [`ProviderBackend`] is CONTRACTS.md §2 as a Rust trait: list, batched status, create, patch,
//! delete. The built-in [`local::LocalBackend`] implements it by supervising real server processes
//! on this host; [`rest::RestBackend`] implements it as a client of the contract, and
//! [`contract_server`] serves any implementation over HTTP. The reconciler never knows which one
//! it drives, and `tests/contract.rs` runs one suite against each.

pub mod archiver;
pub mod contract_server;
pub mod limits;
pub mod local;
mod process;
pub mod rest;
pub mod wire;

use std::collections::HashMap;

use async_trait::async_trait;
use berth_types::JsonMap;
use uuid::Uuid;

/// What a backend is asked to run (the contract's create body).
#[derive(Clone)]
pub struct InstanceSpec {
    pub id: Uuid,
    pub team_id: i64,
    pub plan: JsonMap,
    pub config: JsonMap,
    pub secrets: JsonMap,
    /// Berth's built-in backends take pause as part of the spec (CONTRACTS.md §2 leaves it open).
    pub pause: bool,
    /// Make the instance's data from this backup instead of empty (`recoverFrom`).
    pub recover_from: Option<Recovery>,
}

/// The contract's `recoverFrom {id, config, secrets}`, with what Berth knows besides: whose
/// backup it is and, for a point-in-time recovery, the time.
#[derive(Clone)]
pub struct Recovery {
    pub backup_id: Uuid,
    pub ms_id: Uuid,
    pub time: Option<time::OffsetDateTime>,
    /// The backup store's settings and secrets.
    pub config: JsonMap,
    pub secrets: JsonMap,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .field("config", &self.config)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("pause", &self.pause)
            .field(
                "recover_from",
                &self.recover_from.as_ref().map(|r| (r.ms_id, r.backup_id)),
            )
            .finish()
    }
}

/// A change (the contract's PATCH body): an absent section means unchanged.
#[derive(Clone, Default)]
pub struct InstancePatch {
    pub team_id: i64,
    pub plan: Option<JsonMap>,
    pub config: Option<JsonMap>,
    pub secrets: Option<JsonMap>,
    pub pause: Option<bool>,
}

/// What a backend reports about one instance (the contract's status value).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStatus {
    /// The plan parameters and config the instance runs with, echoed for drift detection.
    pub plan: JsonMap,
    pub config: JsonMap,
    /// Connection details and `ready`; the local backend adds `running` and `limits`.
    pub details: JsonMap,
    pub error: Option<String>,
}

impl InstanceStatus {
    pub fn ready(&self) -> bool {
        self.details.get("ready").and_then(|v| v.as_bool()) == Some(true)
    }
    /// `false` only when the backend says the process is not running (local backend).
    pub fn running(&self) -> bool {
        self.details.get("running").and_then(|v| v.as_bool()) != Some(false)
    }
}

/// What a backup call carries (the contract's backup body): which instance, and the backup
/// store's config and secrets.
#[derive(Clone)]
pub struct BackupRequest {
    pub ms_id: Uuid,
    pub team_id: i64,
    pub config: JsonMap,
    pub secrets: JsonMap,
    pub retention_days: Option<u32>,
    /// The service's own secrets, for backends in this process that need them to take the
    /// backup (a Redis password). Never sent over the wire.
    pub service_secrets: JsonMap,
    /// The last backup of a deleted service: the instance may be stopped to take it.
    pub final_backup: bool,
}

/// The contract's `{exists, error?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupState {
    pub exists: bool,
    pub error: Option<String>,
}

/// The backend layer's one error type. `retryable()` tells the reconciler whether waiting helps.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request cannot succeed as it is (unknown version, bad config): waits for the user.
    #[error("{0}")]
    Invalid(String),
    #[error("instance {0} not found")]
    NotFound(Uuid),
    /// Starting, health-checking or stopping failed; the next reconcile tries again.
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// How an update took effect on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateEffect {
    /// Recorded; nothing running had to change (a paused instance takes it at resume, a pause
    /// or resume shows in the state changes).
    Recorded,
    /// Applied to the running instance without a restart; says how.
    Live(String),
    /// The instance was restarted to apply it; says why.
    Restarted(String),
    /// The backend does not say (the REST contract has no answer body for PATCH).
    Unknown,
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

#[async_trait]
pub trait ProviderBackend: Send + Sync + 'static {
    /// Every instance id this backend manages.
    async fn list(&self) -> Result<Vec<Uuid>>;
    /// Status of the given ids; unknown ids are left out.
    async fn status(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, InstanceStatus>>;
    /// Creates the instance, or, when it exists, makes sure it runs as specified (idempotent).
    async fn create(&self, spec: &InstanceSpec) -> Result<()>;
    /// Applies a patch; answers how it took effect, for the service's events.
    async fn update(&self, id: Uuid, patch: &InstancePatch) -> Result<UpdateEffect>;
    /// Removes the instance and its data; an unknown id counts as done.
    async fn delete(&self, id: Uuid) -> Result<()>;
    /// Starts backup `backup` of an instance (the contract's `PUT /backups/{id}`); optional.
    async fn backup_start(&self, _backup: Uuid, _req: &BackupRequest) -> Result<()> {
        Err(BackendError::Invalid(
            "this backend takes no backups".into(),
        ))
    }
    /// Whether backup `backup` exists (is confirmed), or why it failed.
    async fn backup_status(&self, _backup: Uuid, _req: &BackupRequest) -> Result<BackupState> {
        Err(BackendError::Invalid(
            "this backend takes no backups".into(),
        ))
    }
    async fn backup_delete(&self, _backup: Uuid, _req: &BackupRequest) -> Result<()> {
        Err(BackendError::Invalid(
            "this backend takes no backups".into(),
        ))
    }
    /// Backups were turned off for the instance: stop what runs on its own between backups
    /// (the local backend's WAL archiving). Called on every pass while they are off, so it
    /// must be cheap when there is nothing to stop.
    async fn backups_off(&self, _id: Uuid) -> Result<()> {
        Ok(())
    }
    /// Whether every instance this backend lists belongs to this Berth, so one that no service
    /// owns is an orphan to remove. False for a REST backend, which other platforms may share.
    fn sweeps_orphans(&self) -> bool {
        false
    }
    /// The last `lines` lines of the instance's server log, where the backend keeps one.
    async fn logs(&self, _id: Uuid, _lines: usize) -> Result<Option<String>> {
        Ok(None)
    }
}
