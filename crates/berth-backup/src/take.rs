//! Taking one backup of a running instance and proving it is in the store.

use std::time::{Duration, Instant};

use berth_engines::{EngineKind, InstanceCtx, RunAs};
use berth_types::JsonMap;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use crate::{backup_key, BackupError, Bucket, Manifest, ObjectInfo, Result};

/// Upload part size: big enough for few requests, small enough that two (one going up, one
/// being read) stay well inside the memory of the server.
const PART: usize = 32 << 20;

/// How long a Redis snapshot may take.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(600);

/// The instance to back up.
pub struct Source<'a> {
    pub kind: EngineKind,
    pub ctx: &'a InstanceCtx,
    /// The service's own secrets (Redis: the password that lets Berth ask for a snapshot).
    pub secrets: &'a JsonMap,
    pub run_as: Option<RunAs>,
    /// The server runs. A stopped one (a paused service) is backed up as its data directory,
    /// which nothing writes to meanwhile (the caller keeps it stopped until this returns).
    pub running: bool,
}

/// Takes backup `backup_id` of service `ms_id`: the data, uploaded and checked, then the
/// manifest. Only when this returns `Ok` does the backup exist.
pub async fn take(
    src: &Source<'_>,
    bucket: &Bucket,
    ms_id: Uuid,
    backup_id: Uuid,
) -> Result<Manifest> {
    let started_at = OffsetDateTime::now_utc();
    let mut wal_start = None;
    let object = match src.kind {
        EngineKind::Postgres | EngineKind::Redis if !src.running => {
            if src.kind == EngineKind::Postgres {
                wal_start = Some(berth_engines::postgres::checkpoint_wal_file(src.ctx).await?);
            }
            let key = bucket.key(&backup_key(ms_id, backup_id, OFFLINE_TAR));
            offline(src, bucket, &key).await?
        }
        EngineKind::Postgres => {
            wal_start = Some(berth_engines::postgres::current_wal_file(src.ctx).await?);
            let key = bucket.key(&backup_key(ms_id, backup_id, "base.tar"));
            postgres_base(src, bucket, &key).await?
        }
        EngineKind::Redis => {
            let key = bucket.key(&backup_key(ms_id, backup_id, "dump.rdb"));
            let rdb = berth_engines::redis::snapshot(
                src.ctx,
                src.secrets,
                Instant::now() + SNAPSHOT_DEADLINE,
            )
            .await?;
            let file = tokio::fs::File::open(&rdb)
                .await
                .map_err(|e| BackupError::Engine(format!("opening {}: {e}", rdb.display())))?;
            upload_stream(bucket, &key, file).await?
        }
        other => {
            return Err(BackupError::Settings(format!(
                "{} instances take no backups here",
                other.as_str()
            )))
        }
    };
    let manifest = Manifest {
        backup_id,
        ms_id,
        engine: src.kind.as_str().to_owned(),
        major: src.ctx.install.major.clone(),
        started_at,
        finished_at: OffsetDateTime::now_utc(),
        config: src.ctx.config.clone(),
        objects: vec![object],
        wal_start,
    };
    let key = bucket.key(&backup_key(ms_id, backup_id, "manifest.json"));
    bucket
        .put(
            &key,
            serde_json::to_vec_pretty(&manifest).expect("manifests serialize"),
        )
        .await?;
    Ok(manifest)
}

/// The object of a stopped instance's backup: its whole data directory.
pub const OFFLINE_TAR: &str = "data.tar";

/// A tar of the stopped instance's data directory, streamed into the store.
async fn offline(src: &Source<'_>, bucket: &Bucket, key: &str) -> Result<ObjectInfo> {
    let mut cmd = tokio::process::Command::from(berth_engines::postgres::command_as(
        std::path::Path::new("tar"),
        src.run_as,
    ));
    cmd.arg("-c")
        .args(["-b", crate::TAR_RECORD_BLOCKS])
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(src.ctx.data_dir())
        .arg(".")
        .current_dir("/");
    streamed(cmd, "tar", bucket, key).await
}

/// `pg_basebackup` streamed straight into the store: nothing is staged on local disk.
async fn postgres_base(src: &Source<'_>, bucket: &Bucket, key: &str) -> Result<ObjectInfo> {
    let cmd = tokio::process::Command::from(berth_engines::postgres::base_backup_command(
        src.ctx, src.run_as,
    ));
    let hold = berth_engines::postgres::hold_wal(src.ctx).await?;
    let taken = streamed(cmd, "pg_basebackup", bucket, key).await;
    hold.release().await;
    taken
}

/// Runs `cmd` and uploads what it writes to stdout as `key`; a failed command fails the
/// upload (and removes what was stored) with its stderr.
async fn streamed(
    mut cmd: tokio::process::Command,
    what: &str,
    bucket: &Bucket,
    key: &str,
) -> Result<ObjectInfo> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| BackupError::Engine(format!("starting {what}: {e}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    crate::widen_pipe(&stdout);
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let uploaded = upload_stream(bucket, key, stdout).await;
    let status = child
        .wait()
        .await
        .map_err(|e| BackupError::Engine(format!("waiting for {what}: {e}")))?;
    let errors = errors.await.unwrap_or_default();
    // An upload that failed first stops reading, which ends the command with SIGPIPE: the
    // upload's error is the reason then.
    let info = uploaded?;
    if !status.success() {
        let _ = bucket.delete(&info.key).await;
        return Err(BackupError::Engine(format!(
            "{what} failed ({status}): {}",
            errors.trim()
        )));
    }
    Ok(info)
}

/// Reads up to one part (less only at the end of the stream).
async fn read_part<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(PART);
    (&mut *reader)
        .take(PART as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| BackupError::Engine(format!("reading the backup stream: {e}")))?;
    Ok(buf)
}

/// Uploads everything `reader` yields as one object: a single PUT when it is small, else a
/// multipart upload where the next part is read while the last one goes up.
pub async fn upload_stream<R: AsyncRead + Unpin>(
    bucket: &Bucket,
    key: &str,
    mut reader: R,
) -> Result<ObjectInfo> {
    let first = read_part(&mut reader).await?;
    if first.len() < PART {
        return bucket.put(key, first).await;
    }
    let mut upload = bucket.upload(key).await?;
    let mut current = first;
    loop {
        let (sent, next) = tokio::join!(upload.part(current), read_part(&mut reader));
        let next = match (sent, next) {
            (Ok(()), Ok(next)) => next,
            (Err(e), _) | (_, Err(e)) => {
                upload.abort().await;
                return Err(e);
            }
        };
        if next.is_empty() {
            break;
        }
        current = next;
    }
    upload.finish().await
}
