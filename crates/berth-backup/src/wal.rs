//! Continuous WAL archiving for PostgreSQL, and what a point-in-time recovery needs from it.
//!
//! PostgreSQL's `archive_command` only copies each finished segment into the instance's spool
//! directory (see `berth_engines::postgres::wal_spool`): no S3 credentials ever reach the
//! instance. [`push_spool`] uploads what is there (checked like every upload), oldest first,
//! and removes each file once the store has it. A restore fetches the segments back
//! ([`fetch`]) and finds out whether the archive goes past the target time
//! ([`commit_after`]), since PostgreSQL refuses a target time it never reaches.

use std::path::{Path, PathBuf};

use berth_engines::InstanceCtx;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{BackupError, Bucket, Result};

/// Key (relative to the destination prefix) of an archived WAL file.
pub fn wal_key(ms_id: Uuid, file: &str) -> String {
    format!("{ms_id}/wal/{file}")
}

/// The last segment archived and the time it was finished (when `archive_command` copied it):
/// the archive holds every change made up to then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Archived {
    pub segment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Uploads every finished file in `spool` (not the `.part` ones being written), oldest first,
/// removing each once it is in the store. Answers the last one archived, if any.
pub async fn push_spool(bucket: &Bucket, ms_id: Uuid, spool: &Path) -> Result<Option<Archived>> {
    let mut files: Vec<(String, PathBuf)> = match std::fs::read_dir(spool) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (!name.ends_with(".part")).then(|| (name, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BackupError::Engine(format!(
                "reading {}: {e}",
                spool.display()
            )))
        }
    };
    // Segment names sort in WAL order; history files (`.history`) before the next timeline's.
    files.sort();
    let mut last = None;
    for (name, path) in files {
        let meta = std::fs::metadata(&path)
            .map_err(|e| BackupError::Engine(format!("reading {}: {e}", path.display())))?;
        let finished = meta
            .modified()
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| BackupError::Engine(format!("reading {}: {e}", path.display())))?;
        bucket
            .put(&bucket.key(&wal_key(ms_id, &name)), bytes)
            .await?;
        std::fs::remove_file(&path)
            .map_err(|e| BackupError::Engine(format!("removing {}: {e}", path.display())))?;
        if !name.ends_with(".history") {
            last = Some(Archived {
                segment: name,
                until: finished,
            });
        }
    }
    Ok(last)
}

/// Downloads the archived WAL of `ms_id` from segment `from` on (and every history file) into
/// `dest`, for `restore_command`. Answers how many files.
pub async fn fetch(bucket: &Bucket, ms_id: Uuid, from: &str, dest: &Path) -> Result<usize> {
    let prefix = bucket.key(&wal_key(ms_id, ""));
    let mut n = 0;
    for (key, _) in bucket.list(&prefix).await? {
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        if !(name.ends_with(".history") || name.as_str() >= from) {
            continue;
        }
        let bytes = bucket
            .get(&key)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("{key} vanished while restoring")))?;
        std::fs::write(dest.join(&name), bytes)
            .map_err(|e| BackupError::Engine(format!("writing {name}: {e}")))?;
        n += 1;
    }
    Ok(n)
}

/// Deletes archived WAL older than segment `before` (retention: nothing older than the oldest
/// kept base backup is needed).
pub async fn prune(bucket: &Bucket, ms_id: Uuid, before: &str) -> Result<usize> {
    let prefix = bucket.key(&wal_key(ms_id, ""));
    let mut n = 0;
    for (key, _) in bucket.list(&prefix).await? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if !name.ends_with(".history") && name < before {
            bucket.delete(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The WAL segment a base backup starts from, read from its `backup_label`.
pub fn start_segment(data_dir: &Path) -> Result<String> {
    let label = std::fs::read_to_string(data_dir.join("backup_label"))
        .map_err(|e| BackupError::Engine(format!("reading backup_label: {e}")))?;
    label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
        .and_then(|l| l.split("(file ").nth(1))
        .and_then(|l| l.split(')').next())
        .map(str::to_owned)
        .ok_or_else(|| BackupError::Engine("backup_label names no start segment".into()))
}

/// Whether the WAL in `dir` holds a commit (or abort) after `time`, read with `pg_waldump` of
/// the instance's own version. Recovery stops at the first one; without one, it replays
/// everything there is (which is then exactly the state at `time`).
pub async fn commit_after(ctx: &InstanceCtx, dir: &Path, time: OffsetDateTime) -> Result<bool> {
    let mut segments: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| BackupError::Engine(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    segments.sort();
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Ok(false);
    };
    let out = tokio::process::Command::new(ctx.install.bin_dir().join("pg_waldump"))
        .arg("-p")
        .arg(dir)
        .args(["-r", "Transaction", first, last])
        .env("TZ", "UTC")
        .output()
        .await
        .map_err(|e| BackupError::Engine(format!("running pg_waldump: {e}")))?;
    // It ends with an error at the end of the archived WAL; what it read before counts.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(record_time).any(|t| t > time))
}

/// The time of a `COMMIT` or `ABORT` line of `pg_waldump` (`desc: COMMIT 2026-11-22
/// 07:34:11.963480 UTC...`).
fn record_time(line: &str) -> Option<OffsetDateTime> {
    let desc = line.split("desc: ").nth(1)?;
    let rest = desc
        .strip_prefix("COMMIT ")
        .or_else(|| desc.strip_prefix("ABORT "))?;
    let mut parts = rest.split_whitespace();
    let (date, clock) = (parts.next()?, parts.next()?);
    if parts.next()?.trim_end_matches(';') != "UTC" {
        return None;
    }
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let text = format!("{date}T{hms}.{frac}Z");
    OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waldump_commit_lines_are_read() {
        let line = "rmgr: Transaction len (rec/tot):     34/    34, tx:        746, lsn: 0/03000110, prev 0/030000D8, desc: COMMIT 2026-11-22 07:34:11.963480 UTC";
        let t = record_time(line).unwrap();
        assert_eq!(t, time::macros::datetime!(2026-11-22 07:34:11.963480 UTC));
        let abort = "rmgr: Transaction ..., desc: ABORT 2026-11-22 07:34:12 UTC; subxacts: 1";
        assert!(record_time(abort).is_some());
        assert!(record_time("rmgr: Heap ..., desc: INSERT off: 3").is_none());
    }

    #[test]
    fn the_start_segment_comes_from_backup_label() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("backup_label"),
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n",
        )
        .unwrap();
        assert_eq!(
            start_segment(dir.path()).unwrap(),
            "000000010000000000000002"
        );
    }
}
