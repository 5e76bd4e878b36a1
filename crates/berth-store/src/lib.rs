//! Berth's state: what users asked for (services with a `generation`), what the reconciler observed
//! (status with the generation it reflects), the events log, and the secrets, sealed with the master
//! key before they reach the database.
//!
//! [`Store`] is the one trait the rest of Berth uses; [`sqlite::SqliteStore`] is the embedded default.
//! A PostgreSQL implementation will sit beside it and pass the same suite in `tests/store_suite.rs`.

pub mod crypto;
pub mod sqlite;

use async_trait::async_trait;
use berth_types::{
    BackupEntry, Event, ProviderDefinition, Secrets, Service, ServiceId, ServiceSpec, ServiceStatus,
};
use time::OffsetDateTime;

pub mod changes;

pub use changes::ChangeFeed;
pub use crypto::{Cipher, MasterKey};
pub use sqlite::SqliteStore;

/// The store's one error type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("service {0} not found")]
    NotFound(ServiceId),
    /// A uniqueness rule or a generation check refused the write; the message says which.
    #[error("{0}")]
    Conflict(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("secrets could not be unsealed (wrong master key?)")]
    Unseal,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A service about to be inserted.
#[derive(Debug, Clone)]
pub struct NewService {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    pub created_at: OffsetDateTime,
}

/// A service with everything its API resource shows, read in one snapshot.
#[derive(Debug, Clone)]
pub struct ServiceRecord {
    pub service: Service,
    pub status: Option<ServiceStatus>,
    /// The newest first.
    pub recent_events: Vec<Event>,
    /// The oldest first.
    pub backups: Vec<BackupEntry>,
}

/// Storage methods are named resource-then-verb. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a service with generation 1, its sealed secrets and an initial status, atomically.
    /// A name already used by a live service of the same team is a [`StoreError::Conflict`].
    async fn service_insert(
        &self,
        new: &NewService,
        secrets: &Secrets,
        status: &ServiceStatus,
    ) -> Result<Service>;
    async fn service_get(&self, id: ServiceId) -> Result<Service>;
    /// Services of `team` (all teams when `None`), oldest first; soft-deleted ones only when asked.
    async fn service_list(&self, team: Option<i64>, include_deleted: bool) -> Result<Vec<Service>>;
    /// Like [`Store::service_list`], with each service's status, its `recent_events` newest events
    /// and its backups: a constant number of queries for the whole list (what the API's list
    /// answers with; one query per service would not keep its latency flat at 500 services).
    async fn service_list_full(
        &self,
        team: Option<i64>,
        include_deleted: bool,
        recent_events: u32,
    ) -> Result<Vec<ServiceRecord>>;
    /// These services as [`Store::service_list_full`] shows them (those that are gone are
    /// missing), in one snapshot.
    async fn service_records(
        &self,
        ids: &[ServiceId],
        recent_events: u32,
    ) -> Result<Vec<ServiceRecord>>;
    /// Which services' records (spec, status, backups; not events) changed since `since`, a
    /// version this answered before (0 at start), and the version now. `None` for the list when
    /// too many changes went by: read everything again.
    fn services_changed_since(&self, since: u64) -> (u64, Option<Vec<ServiceId>>);
    /// Replaces the spec (and the secrets, when given) and bumps the generation, only if the
    /// generation is still `expected_generation`; otherwise [`StoreError::Conflict`].
    async fn service_update(
        &self,
        id: ServiceId,
        expected_generation: i64,
        spec: &ServiceSpec,
        secrets: Option<&Secrets>,
    ) -> Result<Service>;
    /// Records the user's delete: sets `deleted_at`, bumps the generation, destroys the service's
    /// secrets (the backup settings' secrets stay while backups are on: the final backup and the
    /// removal of the backups at the end of the retention need them). With `skip_final_backup`,
    /// backups are turned off, so the delete is immediate; that may also follow an earlier delete
    /// whose final backup keeps failing. Otherwise a repeated delete changes nothing.
    async fn service_mark_deleted(
        &self,
        id: ServiceId,
        at: OffsetDateTime,
        skip_final_backup: bool,
    ) -> Result<Service>;
    /// Removes every trace of a service whose instance is gone (status, secrets, events).
    async fn service_purge(&self, id: ServiceId) -> Result<()>;

    async fn secrets_get(&self, id: ServiceId) -> Result<Secrets>;

    async fn status_get(&self, id: ServiceId) -> Result<Option<ServiceStatus>>;
    /// Writes the observed status (when given) and appends `events`, in one transaction, so a
    /// reader never sees a state without the event that announced it.
    async fn status_record(
        &self,
        id: ServiceId,
        status: Option<&ServiceStatus>,
        events: &[Event],
    ) -> Result<()>;

    async fn event_append(&self, id: ServiceId, event: &Event) -> Result<()>;

    async fn backup_insert(&self, service: ServiceId, entry: &BackupEntry) -> Result<()>;
    /// A service's backups, oldest first.
    async fn backup_list(&self, service: ServiceId) -> Result<Vec<BackupEntry>>;
    /// Records progress of a backup (initiated, confirmed, error).
    async fn backup_update(&self, entry: &BackupEntry) -> Result<()>;
    /// The service a backup belongs to and the backup, `None` when there is no such backup.
    async fn backup_get(&self, id: uuid::Uuid) -> Result<Option<(ServiceId, BackupEntry)>>;
    /// Forgets a backup whose objects were removed (retention).
    async fn backup_forget(&self, id: uuid::Uuid) -> Result<()>;

    /// Registered providers, with their backend secrets unsealed (for the catalog only).
    async fn provider_list(&self) -> Result<Vec<ProviderDefinition>>;
    /// Inserts a provider; an existing name and version is a [`StoreError::Conflict`].
    /// With `replace`, an existing one is replaced instead.
    async fn provider_put(&self, def: &ProviderDefinition, replace: bool) -> Result<()>;
    /// Removes a provider; refused with [`StoreError::Conflict`] while a service uses it.
    async fn provider_delete(&self, name: &str, version: &str) -> Result<bool>;
    /// The newest events first, at most `limit`, older than sequence `before` when given.
    /// Each comes with its sequence number, for paging.
    async fn event_list(
        &self,
        id: ServiceId,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<(i64, Event)>>;
}
