//! Laying out a new instance's data from a backup, before its first start. The source service
//! and its instance are never touched: everything comes from the store.

use berth_engines::postgres::{chown_tree, command_as, private_dir, RECOVERY_CONF};
use berth_engines::{EngineKind, InstanceCtx, RunAs};
use md5::{Digest, Md5};
use time::OffsetDateTime;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::objects::hex;
use crate::{manifest, BackupError, Bucket, Manifest, ObjectInfo, Result};

/// Where the data of a new instance comes from.
pub struct Target<'a> {
    pub kind: EngineKind,
    pub ctx: &'a InstanceCtx,
    pub run_as: Option<RunAs>,
}

/// Restores backup `backup_id` of service `ms_id` into the (empty) instance directory of
/// `target`. PostgreSQL starts in recovery, to the end of the backup or, with `time`, through
/// the archived WAL to that time, and promotes itself; Redis loads the snapshot as the base of
/// its append-only file.
pub async fn restore(
    target: &Target<'_>,
    bucket: &Bucket,
    ms_id: Uuid,
    backup_id: Uuid,
    time: Option<OffsetDateTime>,
) -> Result<Manifest> {
    let m = manifest(bucket, ms_id, backup_id).await?.ok_or_else(|| {
        BackupError::NotFound(format!(
            "backup {backup_id} of service {ms_id} is not in {}",
            bucket.describe()
        ))
    })?;
    if m.engine != target.kind.as_str() {
        return Err(BackupError::Settings(format!(
            "backup {backup_id} holds {} data, not {}",
            m.engine,
            target.kind.as_str()
        )));
    }
    if m.major != target.ctx.install.major {
        return Err(BackupError::Settings(format!(
            "backup {backup_id} was taken from version {}; this service runs version {} (a restore needs the same major)",
            m.major, target.ctx.install.major
        )));
    }
    let object = m
        .objects
        .first()
        .ok_or_else(|| BackupError::Verify(format!("backup {backup_id} lists no object")))?;
    let ctx = target.ctx;
    for d in [ctx.run_dir(), ctx.dir.join("log"), ctx.data_dir()] {
        private_dir(&d, target.run_as)?;
    }
    match target.kind {
        EngineKind::Postgres => {
            untar(bucket, object, target).await?;
            let data = ctx.data_dir();
            let settings = match time {
                // A stopped cluster's data directory is consistent as it is: it just starts.
                None if !data.join("backup_label").exists() => None,
                // Recover to the end of the backup (its WAL is inside), then take writes.
                None => Some("restore_command = 'false'\nrecovery_target = 'immediate'\n".into()),
                Some(time) => Some(point_in_time(target, bucket, &m, time).await?),
            };
            if let Some(settings) = settings {
                std::fs::write(
                    data.join(RECOVERY_CONF),
                    format!(
                        "# Written by Berth for a restore; inert once recovery is over.\n\
                         {settings}recovery_target_action = 'promote'\n"
                    ),
                )
                .and_then(|_| std::fs::write(data.join("recovery.signal"), ""))
                .map_err(|e| BackupError::Engine(format!("writing the recovery settings: {e}")))?;
            }
            chown_tree(&data, target.run_as)?;
        }
        // A stopped instance's backup is its data directory, append-only file included.
        EngineKind::Redis if object.key.ends_with(crate::take::OFFLINE_TAR) => {
            untar(bucket, object, target).await?;
        }
        EngineKind::Redis => {
            let part = ctx.data_dir().join("restore.rdb.part");
            let file = tokio::fs::File::create(&part)
                .await
                .map_err(|e| BackupError::Engine(format!("creating {}: {e}", part.display())))?;
            download(bucket, object, file).await?;
            berth_engines::redis::restore_snapshot(ctx, &part, target.run_as)?;
        }
        other => {
            return Err(BackupError::Settings(format!(
                "{} instances are not restored from backups here",
                other.as_str()
            )))
        }
    }
    Ok(m)
}

/// Unpacks a tar of a data directory (a base backup, or a stopped instance's) into the new
/// instance's, as its user, checking the download against the manifest.
async fn untar(bucket: &Bucket, object: &ObjectInfo, target: &Target<'_>) -> Result<()> {
    let mut tar =
        tokio::process::Command::from(command_as(std::path::Path::new("tar"), target.run_as));
    tar.arg("-x")
        .args(["-b", crate::TAR_RECORD_BLOCKS])
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(target.ctx.data_dir())
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = tar
        .spawn()
        .map_err(|e| BackupError::Engine(format!("starting tar: {e}")))?;
    let stdin = child.stdin.take().expect("piped stdin");
    crate::widen_pipe(&stdin);
    // The download's chunks are small (tens of KiB): gathered into pipe-sized writes.
    let stdin = tokio::io::BufWriter::with_capacity(crate::PIPE_BYTES, stdin);
    let copied = download(bucket, object, stdin).await;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| BackupError::Engine(format!("waiting for tar: {e}")))?;
    copied?;
    if !out.status.success() {
        return Err(BackupError::Engine(format!(
            "unpacking the backup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where a point-in-time restore keeps the WAL it fetched, until the first start is over.
pub fn wal_restore_dir(ctx: &InstanceCtx) -> std::path::PathBuf {
    ctx.dir.join("wal-restore")
}

/// Fetches the archived WAL from the backup's start on and answers the recovery settings that
/// replay it to `time`: a target time when the archive holds a commit after it, else all of it
/// (PostgreSQL refuses to end a recovery short of a target time it never reached).
async fn point_in_time(
    target: &Target<'_>,
    bucket: &Bucket,
    m: &Manifest,
    time: OffsetDateTime,
) -> Result<String> {
    let ctx = target.ctx;
    let dir = wal_restore_dir(ctx);
    private_dir(&dir, target.run_as)?;
    // A base backup's label says where its WAL starts; a stopped one's manifest does.
    let start = match crate::wal::start_segment(&ctx.data_dir()) {
        Ok(s) => s,
        Err(e) => m.wal_start.clone().ok_or(e)?,
    };
    crate::wal::fetch(bucket, m.ms_id, &start, &dir).await?;
    chown_tree(&dir, target.run_as)?;
    let quoted = dir.display().to_string().replace('\'', "''");
    let mut settings = format!("restore_command = 'cp \"{quoted}/%f\" \"%p\"'\n");
    if crate::wal::commit_after(ctx, &dir, time).await? {
        // PostgreSQL's own timestamp syntax (it refuses RFC 3339's `T`/`Z` with nanoseconds).
        let t = time
            .to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
            ))
            .expect("UTC times format");
        settings.push_str(&format!(
            "recovery_target_time = '{t}'\nrecovery_target_inclusive = on\n"
        ));
    }
    Ok(settings)
}

/// Streams an object into `out`, checking its size and checksum against the manifest's: its
/// CRC-32 when the manifest has one, else its MD5 (for a multipart object, part by part as S3
/// computes its ETag).
pub async fn download<W: AsyncWrite + Unpin>(
    bucket: &Bucket,
    object: &ObjectInfo,
    mut out: W,
) -> Result<()> {
    let mut resp = bucket.open(&object.key).await?.ok_or_else(|| {
        BackupError::NotFound(format!("{} is missing from the store", object.key))
    })?;
    let part_size = object.part_size.unwrap_or(u64::MAX);
    let (mut md5, mut in_part, mut parts) = (Md5::new(), 0u64, Vec::<[u8; 16]>::new());
    let mut crc32 = crc32fast::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BackupError::Store(format!("downloading {}: {e}", object.key)))?
    {
        let mut rest = &chunk[..];
        if object.crc32.is_some() {
            crc32.update(rest);
            rest = &[];
        }
        while !rest.is_empty() {
            let take = rest.len().min((part_size - in_part) as usize);
            md5.update(&rest[..take]);
            in_part += take as u64;
            rest = &rest[take..];
            if in_part == part_size {
                parts.push(std::mem::take(&mut md5).finalize().into());
                in_part = 0;
            }
        }
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| BackupError::Engine(format!("writing {}: {e}", object.key)))?;
    }
    out.shutdown()
        .await
        .map_err(|e| BackupError::Engine(format!("writing {}: {e}", object.key)))?;
    if let Some(want) = object.crc32 {
        let got = crc32.finalize();
        if size != object.size || got != want {
            return Err(BackupError::Verify(format!(
                "{}: downloaded {size} bytes with CRC-32 {got:08x}, the backup says {} bytes, {want:08x}",
                object.key, object.size
            )));
        }
        return Ok(());
    }
    let got = if object.part_size.is_some() {
        if in_part > 0 {
            parts.push(md5.finalize().into());
        }
        crate::objects::multipart_etag(&parts)
    } else {
        hex(&md5.finalize())
    };
    if size != object.size || got != object.md5 {
        return Err(BackupError::Verify(format!(
            "{}: downloaded {size} bytes with checksum {got}, the backup says {} bytes, {}",
            object.key, object.size, object.md5
        )));
    }
    Ok(())
}
