//! Continuous WAL archiving of the local PostgreSQL instances whose services take backups.
//!
//! An instance's `archive_command` copies finished segments into its spool directory; this
//! uploads them to the service's backup store (`berth_backup::wal::push_spool`) every second.
//! The store's settings arrive with the first backup of the service and are kept, sealed with
//! the master key, in `instances/<id>/backup-target.sealed` (root only), so archiving goes on
//! after a restart of Berth without the instance ever holding a credential.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use berth_backup::wal::Archived;
use berth_backup::Bucket;
use berth_store::Cipher;
use berth_types::JsonMap;
use serde_json::Value;
use uuid::Uuid;

const TARGET_FILE: &str = "backup-target.sealed";
const ARCHIVED_FILE: &str = "wal-archived.json";
const PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Entry {
    dir: PathBuf,
    bucket: Option<Bucket>,
    archived: Option<Archived>,
    error: Option<String>,
}

/// Where each instance's WAL goes, and how far it got.
pub struct Archive {
    cipher: Option<Arc<Cipher>>,
    entries: Mutex<HashMap<Uuid, Entry>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Target {
    config: JsonMap,
    secrets: JsonMap,
}

fn aad(id: Uuid) -> Vec<u8> {
    format!("berth-backup-target:{id}").into_bytes()
}

impl Archive {
    pub fn new(cipher: Option<Arc<Cipher>>) -> Self {
        Self {
            cipher,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Picks up what an instance directory remembers: its store (sealed) and its progress.
    pub fn load(&self, id: Uuid, dir: &Path) {
        let bucket = self.cipher.as_ref().and_then(|c| {
            let sealed = std::fs::read(dir.join(TARGET_FILE)).ok()?;
            let plain = c.open(&sealed, &aad(id))?;
            let t: Target = serde_json::from_slice(&plain).ok()?;
            Bucket::from_settings(&t.config, &t.secrets).ok()
        });
        let archived = std::fs::read(dir.join(ARCHIVED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if bucket.is_some() || archived.is_some() {
            self.entries.lock().unwrap().insert(
                id,
                Entry {
                    dir: dir.to_path_buf(),
                    bucket,
                    archived,
                    error: None,
                },
            );
        }
    }

    /// Remembers the store of an instance's backups (given with each backup), sealed on disk
    /// when there is a master key (else until the next restart of Berth).
    pub fn set_target(
        &self,
        id: Uuid,
        dir: &Path,
        config: &JsonMap,
        secrets: &JsonMap,
        bucket: Bucket,
    ) -> std::io::Result<()> {
        if let Some(c) = &self.cipher {
            let plain = serde_json::to_vec(&Target {
                config: config.clone(),
                secrets: secrets.clone(),
            })
            .expect("targets serialize");
            let path = dir.join(TARGET_FILE);
            let tmp = dir.join(format!("{TARGET_FILE}.tmp"));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&c.seal(&plain, &aad(id)))?;
            }
            std::fs::rename(tmp, path)?;
        }
        let mut entries = self.entries.lock().unwrap();
        let e = entries.entry(id).or_default();
        e.dir = dir.to_path_buf();
        e.bucket = Some(bucket);
        Ok(())
    }

    pub fn forget(&self, id: Uuid) {
        self.entries.lock().unwrap().remove(&id);
    }

    /// Backups are off: no more archiving, the store's settings and the spool go (so
    /// `archive_command` drops segments again). Nothing to do when nothing was archived.
    pub fn stop(&self, id: Uuid) {
        let Some(e) = self.entries.lock().unwrap().remove(&id) else {
            return;
        };
        let _ = std::fs::remove_file(e.dir.join(TARGET_FILE));
        let _ = std::fs::remove_file(e.dir.join(ARCHIVED_FILE));
        let _ = std::fs::remove_dir_all(e.dir.join("wal-spool"));
    }

    /// `walArchivedUntil` (every change up to then is in the store) and `walArchiveError`,
    /// for the instance's status details.
    pub fn details(&self, id: Uuid) -> JsonMap {
        let mut d = JsonMap::new();
        if let Some(e) = self.entries.lock().unwrap().get(&id) {
            if let Some(a) = &e.archived {
                if let Ok(t) = a
                    .until
                    .format(&time::format_description::well_known::Rfc3339)
                {
                    d.insert("walArchivedUntil".into(), Value::from(t));
                }
            }
            if let Some(err) = &e.error {
                d.insert("walArchiveError".into(), Value::from(err.clone()));
            }
        }
        d
    }

    /// Uploads every instance's spool, one after the other; answers whether anything changed
    /// (archived further, or failed anew) so the caller can tell the reconciler.
    async fn pass(&self) -> bool {
        let work: Vec<(Uuid, PathBuf, Bucket)> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, e)| Some((*id, e.dir.clone(), e.bucket.clone()?)))
            .collect();
        let mut changed = false;
        for (id, dir, bucket) in work {
            let spool = dir.join("wal-spool");
            if !spool.is_dir() {
                continue;
            }
            let outcome = berth_backup::wal::push_spool(&bucket, id, &spool).await;
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(&id) else {
                continue;
            };
            match outcome {
                Ok(Some(a)) => {
                    let _ = std::fs::write(
                        dir.join(ARCHIVED_FILE),
                        serde_json::to_vec(&a).expect("progress serializes"),
                    );
                    e.archived = Some(a);
                    e.error = None;
                    changed = true;
                }
                Ok(None) => changed |= e.error.take().is_some(),
                Err(err) => {
                    let msg = format!("archiving WAL to {}: {err}", bucket.describe());
                    if e.error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(instance = %id, error = %msg, "WAL archiving");
                        e.error = Some(msg);
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// Runs archiving passes every second for as long as `archive` lives; `changed` is told when
/// one made progress or met a new failure.
pub fn spawn(archive: Weak<Archive>, changed: Arc<tokio::sync::Notify>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            tokio::time::sleep(PERIOD).await;
            let Some(a) = archive.upgrade() else { return };
            if a.pass().await {
                changed.notify_one();
            }
        }
    });
}
