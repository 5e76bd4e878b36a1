//! Backups of the local backend's instances to any S3-compatible store, and restores from them.
//!
//! - [`objects`]: the bucket (`backups.config` / `backups.secrets` of a service): signed
//!   uploads checked on the way in and read back, downloads, listings, deletes.
//! - [`take`]: one backup of a running instance: PostgreSQL's own `pg_basebackup` (a tar with
//!   the WAL that makes it consistent), a Redis/Valkey snapshot (`BGSAVE`); streamed up in
//!   parts, then described by a manifest written last. A backup exists only once its manifest
//!   does, so a half-uploaded one is never taken for a backup.
//! - [`restore`]: lays out a new instance's data from a backup before its first start.
//!
//! Layout under the destination prefix, per service:
//! `<msId>/backups/<backupId>/{base.tar|dump.rdb, manifest.json}`.

pub mod objects;
pub mod restore;
pub mod take;
pub mod wal;

use berth_types::JsonMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use objects::{Bucket, ObjectInfo};

/// What the pipes between Berth and the tools it streams through (`pg_basebackup`, `tar`) are
/// widened to, and `tar`'s record size (`-b 256` = 128 KiB): with Linux's default 64 KiB pipe
/// and `tar`'s 10 KiB records, a gigabyte crosses in some hundred thousand small reads and
/// wake-ups, which cost as much as unpacking it on this machine (measured: `tar -x` of 1.1 GiB
/// through a pipe, 1.8-3.0 s as is, 1.0-1.7 s widened).
const PIPE_BYTES: usize = 1 << 20;
const TAR_RECORD_BLOCKS: &str = "256";

/// Widens one end of a pipe to [`PIPE_BYTES`]; where the kernel refuses (a lower
/// `/proc/sys/fs/pipe-max-size`), the pipe just stays as it was.
fn widen_pipe(end: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor this process owns; failure is harmless.
    unsafe {
        libc::fcntl(
            end.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            PIPE_BYTES as libc::c_int,
        )
    };
}

/// This layer's one error type; the message is shown to users in the service's events.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup settings are wrong (which field, why): waits for the user.
    #[error("{0}")]
    Settings(String),
    /// The S3 store refused or could not be reached.
    #[error("{0}")]
    Store(String),
    /// What the store holds differs from what was sent.
    #[error("verification failed: {0}")]
    Verify(String),
    /// The engine's side: the instance, its tools or its files.
    #[error("{0}")]
    Engine(String),
    /// No such backup in the store.
    #[error("{0}")]
    NotFound(String),
}

impl From<berth_engines::EngineError> for BackupError {
    fn from(e: berth_engines::EngineError) -> Self {
        Self::Engine(e.to_string())
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// What a backup holds, written last (`manifest.json`): the backup exists once this does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub backup_id: Uuid,
    pub ms_id: Uuid,
    /// `postgres` or `redis`.
    pub engine: String,
    /// The server's major version: a restore needs the same.
    pub major: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// The service's config when it was taken (user and database names, version).
    pub config: JsonMap,
    pub objects: Vec<ObjectInfo>,
    /// PostgreSQL: no archived WAL older than this segment is needed to restore this backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,
}

/// Key (relative to the destination prefix) of a backup's files.
pub fn backup_key(ms_id: Uuid, backup_id: Uuid, file: &str) -> String {
    format!("{ms_id}/backups/{backup_id}/{file}")
}

/// The manifest of a backup, `None` while it does not exist (not taken, not finished).
pub async fn manifest(bucket: &Bucket, ms_id: Uuid, backup_id: Uuid) -> Result<Option<Manifest>> {
    let key = bucket.key(&backup_key(ms_id, backup_id, "manifest.json"));
    match bucket.get(&key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BackupError::Verify(format!("{key} is not a manifest: {e}"))),
    }
}

/// Deletes a backup's objects, the manifest first: from the first call on it no longer counts
/// as a backup, and a retry finishes what a failed attempt left.
pub async fn remove(bucket: &Bucket, ms_id: Uuid, backup_id: Uuid) -> Result<()> {
    let manifest_key = bucket.key(&backup_key(ms_id, backup_id, "manifest.json"));
    bucket.delete(&manifest_key).await?;
    let prefix = bucket.key(&backup_key(ms_id, backup_id, ""));
    for (key, _) in bucket.list(&prefix).await? {
        bucket.delete(&key).await?;
    }
    prune_wal(bucket, ms_id).await
}

/// Deletes the archived WAL that no remaining backup needs: older than the oldest backup's
/// start, or all of it once no backup is left.
async fn prune_wal(bucket: &Bucket, ms_id: Uuid) -> Result<()> {
    let mut oldest: Option<String> = None;
    let backups = bucket.key(&format!("{ms_id}/backups/"));
    for (key, _) in bucket.list(&backups).await? {
        if !key.ends_with("/manifest.json") {
            continue;
        }
        let Some(bytes) = bucket.get(&key).await? else {
            continue;
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| BackupError::Verify(format!("{key} is not a manifest: {e}")))?;
        match m.wal_start {
            Some(w) => oldest = Some(oldest.map_or(w.clone(), |o| o.min(w))),
            // A backup that does not say where its WAL starts: keep everything.
            None if m.engine == "postgres" => return Ok(()),
            None => {}
        }
    }
    match oldest {
        Some(before) => wal::prune(bucket, ms_id, &before).await.map(|_| ()),
        None => {
            for (key, _) in bucket.list(&bucket.key(&wal::wal_key(ms_id, ""))).await? {
                bucket.delete(&key).await?;
            }
            Ok(())
        }
    }
}
