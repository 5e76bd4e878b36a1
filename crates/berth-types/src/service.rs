//! Managed services: desired spec (bumps `generation` on every accepted change) and observed status
//! (records the generation it reflects). The two are separate records so the API never writes
//! status and the reconciler never writes intent.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::JsonMap;

pub type ServiceId = Uuid;

/// Which catalog entry a service uses: provider name and schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderRef {
    pub name: String,
    pub version: String,
}

/// The chosen plan and its (defaulted) parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanSelection {
    pub id: i64,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: JsonMap,
}

/// Backup settings of a service (CONTRACTS.md §1). Its secrets live with the service's secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_retention_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_h: Option<u32>,
    /// How long a backup is kept (Berth's extension; 7 when left out). The newest confirmed
    /// backup is always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// Everything the user asked for, except secrets (kept encrypted, apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub team_id: i64,
    pub name: String,
    pub provider: ProviderRef,
    pub plan: PlanSelection,
    pub config: JsonMap,
    pub pause: bool,
    pub backups: BackupSettings,
    /// The backup this service's data was restored from, when it was (its store's secrets
    /// are kept sealed with the service's, in [`Secrets::recover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_from: Option<RecoverFrom>,
}

/// What a recovered service was made from: backup `backup_id` of service `ms_id`, in the store
/// `config` describes (the source's backup settings unless the request gave others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverFrom {
    pub backup_id: Uuid,
    pub ms_id: Uuid,
    /// Point in time to recover to (PostgreSQL), replaying archived WAL past the backup.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub time: Option<OffsetDateTime>,
    #[serde(default)]
    pub config: JsonMap,
}

/// The desired-state record of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    /// Bumped by every accepted change of the spec or the secrets; the reconciler records the one it
    /// acted on, so a stale observation is recognisable.
    pub generation: i64,
    pub created_at: OffsetDateTime,
    /// Set when the user deleted the service; the record stays until its instance is gone.
    pub deleted_at: Option<OffsetDateTime>,
}

/// The lifecycle states a user can see (CONTRACTS.md §1, plus `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ServiceState {
    /// Accepted; the instance is being provisioned and is not yet healthy.
    #[serde(rename = "creating")]
    Creating,
    /// A change of plan, config or secrets is being applied to a running instance.
    #[serde(rename = "updating")]
    Updating,
    /// Compute is being released; data and credentials are kept.
    #[serde(rename = "pausing")]
    Pausing,
    /// Resuming a paused instance.
    #[serde(rename = "unpausing")]
    Unpausing,
    /// Stopped on request; data and credentials are kept.
    #[serde(rename = "paused")]
    Paused,
    /// Running, healthy and matching the latest accepted spec.
    #[serde(rename = "synchronized")]
    Synchronized,
    /// Delete accepted; the instance and its data are being removed.
    #[serde(rename = "deleting")]
    Deleting,
    /// Gone (soft-deleted records in retention show this).
    #[serde(rename = "deleted")]
    Deleted,
    /// No observation yet (for instance right after a restart of Berth).
    #[serde(rename = "unknown")]
    Unknown,
    /// The service names a provider or version that the catalog does not have.
    #[serde(rename = "invalid provider")]
    InvalidProvider,
    /// The backend reported a failure or the readiness deadline passed; `reason` says which.
    /// The reconciler keeps trying: the next successful observation clears it.
    #[serde(rename = "error")]
    Error,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Updating => "updating",
            Self::Pausing => "pausing",
            Self::Unpausing => "unpausing",
            Self::Paused => "paused",
            Self::Synchronized => "synchronized",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Unknown => "unknown",
            Self::InvalidProvider => "invalid provider",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

/// The observed-state record of one service, written only by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub state: ServiceState,
    /// Why the service is in `error` (or any other human-readable note on the state).
    pub reason: Option<String>,
    /// The spec generation this observation reflects.
    pub observed_generation: i64,
    /// What consumers need (`hostname`, `port`, `dsn`, `ready`, ...), as the backend reported it.
    pub details: JsonMap,
    /// When the service entered `state`; readiness deadlines count from here.
    pub since: OffsetDateTime,
}

impl ServiceStatus {
    pub fn new(state: ServiceState, generation: i64, now: OffsetDateTime) -> Self {
        Self {
            state,
            reason: None,
            observed_generation: generation,
            details: JsonMap::new(),
            since: now,
        }
    }
}

/// The secrets of one service: the provider's (`userPassword`, ...) and the backup store's.
/// `Debug` never shows a value, so a secret cannot reach a log through `{:?}`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Secrets {
    #[serde(default)]
    pub service: JsonMap,
    #[serde(default)]
    pub backups: JsonMap,
    /// The secrets of the store a recovered service was restored from.
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub recover: JsonMap,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("service", &self.service.keys().collect::<Vec<_>>())
            .field("backups", &self.backups.keys().collect::<Vec<_>>())
            .field("recover", &self.recover.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One backup of a service: asked for (`scheduledAt`), sent to the backend (`initiatedAt`), and
/// confirmed by it (`confirmedAt`) or failed (`error`). Only a confirmed backup counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupEntry {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub scheduled_at: OffsetDateTime,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub initiated_at: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub confirmed_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BackupEntry {
    /// A backup asked for at `at` (by a user, a schedule or a delete), not started yet.
    pub fn scheduled(at: OffsetDateTime) -> Self {
        Self {
            id: Uuid::new_v4(),
            scheduled_at: at,
            initiated_at: None,
            confirmed_at: None,
            error: None,
        }
    }
}
