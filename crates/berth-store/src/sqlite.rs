//! The embedded store: one SQLite file in WAL mode, migrations embedded in the binary.
//!
//! Durability: WAL with `synchronous = NORMAL` survives a crash of Berth at any instant (the
//! invariant we promise); only a power loss may drop the last commits.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use berth_types::{
    BackupEntry, Event, ProviderDefinition, Secrets, Service, ServiceId, ServiceSpec, ServiceState,
    ServiceStatus,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{ChangeFeed, Cipher, NewService, Result, ServiceRecord, Store, StoreError};

pub struct SqliteStore {
    /// Writes (and the migrations).
    pool: SqlitePool,
    /// Reads: read-only connections (the same pool in memory, where each connection would be
    /// a database of its own).
    read: SqlitePool,
    /// The API's lists alone: they never queue behind the reconciler's reads.
    lists: SqlitePool,
    cipher: Cipher,
    changes: ChangeFeed,
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("every OffsetDateTime formats as RFC 3339")
}

fn parse_ts(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s}: {e}")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the embedded migrations.
    pub async fn open(path: &Path, cipher: Cipher) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        // Writers queue on one lock anyway (SQLite), so few connections; readers get their own
        // read-only pool, so an API read never waits behind the reconciler's writes (WAL lets
        // them read the last commit meanwhile).
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let read_only = opts.read_only(true);
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(read_only.clone())
            .await?;
        // Opened on first use, by the thread that lists (its worker thread inherits that
        // thread's CPU priority), and kept.
        let lists = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(read_only);
        Ok(Self {
            pool,
            read,
            lists,
            cipher,
            changes: ChangeFeed::default(),
        })
    }

    /// An in-memory database, for tests.
    pub async fn in_memory(cipher: Cipher) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            read: pool.clone(),
            lists: pool.clone(),
            pool,
            cipher,
            changes: ChangeFeed::default(),
        })
    }

    fn seal(&self, id: ServiceId, secrets: &Secrets) -> Vec<u8> {
        let plain = serde_json::to_vec(secrets).expect("secrets serialize to JSON");
        self.cipher.seal(&plain, id.to_string().as_bytes())
    }

    /// Every transaction here writes: take the write lock up front (`BEGIN IMMEDIATE`), so that
    /// a busy database makes it wait (busy_timeout) instead of failing at once with "database is
    /// locked" when a deferred transaction's first read has to become a write.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The records of the services that pass the filter (`ids`: those only), in one snapshot.
    async fn records(
        &self,
        team: Option<i64>,
        include_deleted: bool,
        recent_events: u32,
        ids: Option<&[ServiceId]>,
    ) -> Result<Vec<ServiceRecord>> {
        const FILTER: &str = "(?1 IS NULL OR team_id = ?1) AND (?2 OR deleted_at IS NULL) \
                              AND (?4 IS NULL OR id IN (SELECT value FROM json_each(?4)))";
        // The ids as one JSON array parameter: any number of them, one statement.
        let id = ids.map(|ids| {
            serde_json::to_string(&ids.iter().map(|i| i.to_string()).collect::<Vec<_>>())
                .expect("ids serialize to JSON")
        });
        // One read transaction: the three reads see the same snapshot (WAL), and it never
        // writes, so it never waits for the write lock.
        let mut tx = self.lists.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT s.id, s.spec, s.generation, s.created_at, s.deleted_at,
                    st.state, st.reason, st.observed_generation, st.details, st.since
             FROM services s LEFT JOIN service_status st ON st.service_id = s.id
             WHERE {FILTER} ORDER BY s.created_at, s.id"
        ))
        .bind(team)
        .bind(include_deleted)
        .bind(recent_events)
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut index = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let service = Self::row_to_service(row)?;
            let status = match row.try_get::<Option<String>, _>("state")? {
                Some(_) => Some(row_to_status(row)?),
                None => None,
            };
            index.insert(service.id.to_string(), out.len());
            out.push(ServiceRecord {
                service,
                status,
                recent_events: Vec::new(),
                backups: Vec::new(),
            });
        }
        let events = if recent_events == 0 {
            Vec::new()
        } else {
            sqlx::query(&format!(
                "SELECT service_id, event FROM (
                 SELECT service_id, event,
                        ROW_NUMBER() OVER (PARTITION BY service_id ORDER BY seq DESC) AS n
                 FROM events WHERE service_id IN (SELECT id FROM services WHERE {FILTER}))
             WHERE n <= ?3 ORDER BY service_id, n"
            ))
            .bind(team)
            .bind(include_deleted)
            .bind(recent_events)
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?
        };
        for row in &events {
            let id: String = row.try_get("service_id")?;
            if let Some(&i) = index.get(&id) {
                let text: String = row.try_get("event")?;
                out[i]
                    .recent_events
                    .push(serde_json::from_str(&text).map_err(|e| corrupt("event", e))?);
            }
        }
        let backups = sqlx::query(&format!(
            "SELECT service_id, id, scheduled_at, initiated_at, confirmed_at, error FROM backups
             WHERE service_id IN (SELECT id FROM services WHERE {FILTER})
             ORDER BY scheduled_at, id"
        ))
        .bind(team)
        .bind(include_deleted)
        .bind(recent_events)
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
        for row in &backups {
            let id: String = row.try_get("service_id")?;
            if let Some(&i) = index.get(&id) {
                out[i].backups.push(row_to_backup(row)?);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    fn unseal(&self, id: ServiceId, sealed: &[u8]) -> Result<Secrets> {
        let plain = self
            .cipher
            .open(sealed, id.to_string().as_bytes())
            .ok_or(StoreError::Unseal)?;
        serde_json::from_slice(&plain).map_err(|e| corrupt("secrets", e))
    }

    fn row_to_service(row: &sqlx::sqlite::SqliteRow) -> Result<Service> {
        let id: String = row.try_get("id")?;
        let spec: String = row.try_get("spec")?;
        let deleted_at: Option<String> = row.try_get("deleted_at")?;
        Ok(Service {
            id: ServiceId::parse_str(&id).map_err(|e| corrupt("service id", e))?,
            spec: serde_json::from_str(&spec).map_err(|e| corrupt("service spec", e))?,
            generation: row.try_get("generation")?,
            created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
            deleted_at: deleted_at.as_deref().map(parse_ts).transpose()?,
        })
    }
}

const SERVICE_COLUMNS: &str = "id, spec, generation, created_at, deleted_at";

#[async_trait]
impl Store for SqliteStore {
    async fn service_insert(
        &self,
        new: &NewService,
        secrets: &Secrets,
        status: &ServiceStatus,
    ) -> Result<Service> {
        let id = new.id.to_string();
        let spec = serde_json::to_string(&new.spec).expect("spec serializes to JSON");
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO services (id, team_id, name, spec, generation, created_at) VALUES (?, ?, ?, ?, 1, ?)",
        )
        .bind(&id)
        .bind(new.spec.team_id)
        .bind(&new.spec.name)
        .bind(&spec)
        .bind(ts(new.created_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "team {} already has a service named '{}'",
                    new.spec.team_id, new.spec.name
                )))
            }
            other => other?,
        };
        sqlx::query("INSERT INTO service_secrets (service_id, sealed) VALUES (?, ?)")
            .bind(&id)
            .bind(self.seal(new.id, secrets))
            .execute(&mut *tx)
            .await?;
        put_status(&mut tx, &id, status).await?;
        tx.commit().await?;
        self.changes.record(new.id);
        Ok(Service {
            id: new.id,
            spec: new.spec.clone(),
            generation: 1,
            created_at: new.created_at,
            deleted_at: None,
        })
    }

    async fn service_get(&self, id: ServiceId) -> Result<Service> {
        let row = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound(id))?;
        Self::row_to_service(&row)
    }

    async fn service_list(&self, team: Option<i64>, include_deleted: bool) -> Result<Vec<Service>> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services
             WHERE (?1 IS NULL OR team_id = ?1) AND (?2 OR deleted_at IS NULL)
             ORDER BY created_at, id"
        ))
        .bind(team)
        .bind(include_deleted)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(Self::row_to_service).collect()
    }

    async fn service_list_full(
        &self,
        team: Option<i64>,
        include_deleted: bool,
        recent_events: u32,
    ) -> Result<Vec<ServiceRecord>> {
        self.records(team, include_deleted, recent_events, None)
            .await
    }

    async fn service_records(
        &self,
        ids: &[ServiceId],
        recent_events: u32,
    ) -> Result<Vec<ServiceRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.records(None, true, recent_events, Some(ids)).await
    }

    fn services_changed_since(&self, since: u64) -> (u64, Option<Vec<ServiceId>>) {
        self.changes.since(since)
    }

    async fn service_update(
        &self,
        id: ServiceId,
        expected_generation: i64,
        spec: &ServiceSpec,
        secrets: Option<&Secrets>,
    ) -> Result<Service> {
        let mut tx = self.write_tx().await?;
        let spec_json = serde_json::to_string(spec).expect("spec serializes to JSON");
        let updated = sqlx::query(
            "UPDATE services SET spec = ?, name = ?, generation = generation + 1
             WHERE id = ? AND generation = ? AND deleted_at IS NULL",
        )
        .bind(&spec_json)
        .bind(&spec.name)
        .bind(id.to_string())
        .bind(expected_generation)
        .execute(&mut *tx)
        .await;
        let updated = match updated {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "team {} already has a service named '{}'",
                    spec.team_id, spec.name
                )))
            }
            other => other?,
        };
        if updated.rows_affected() == 0 {
            let exists = sqlx::query("SELECT generation, deleted_at FROM services WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                None => StoreError::NotFound(id),
                Some(row) if row.try_get::<Option<String>, _>("deleted_at")?.is_some() => {
                    StoreError::Conflict(format!("service {id} is being deleted"))
                }
                Some(row) => StoreError::Conflict(format!(
                    "service {id} changed concurrently (generation {} is not {expected_generation}); read it again and retry",
                    row.try_get::<i64, _>("generation")?
                )),
            });
        }
        if let Some(secrets) = secrets {
            sqlx::query("UPDATE service_secrets SET sealed = ? WHERE service_id = ?")
                .bind(self.seal(id, secrets))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Self::row_to_service(&row)
    }

    async fn service_mark_deleted(
        &self,
        id: ServiceId,
        at: OffsetDateTime,
        skip_final_backup: bool,
    ) -> Result<Service> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound(id))?;
        let mut svc = Self::row_to_service(&row)?;
        let first = svc.deleted_at.is_none();
        let skip = skip_final_backup && svc.spec.backups.enabled;
        if !first && !skip {
            return Ok(svc); // a repeated delete changes nothing
        }
        if skip {
            svc.spec.backups.enabled = false;
        }
        svc.deleted_at = Some(svc.deleted_at.unwrap_or(at));
        svc.generation += 1;
        sqlx::query("UPDATE services SET deleted_at = ?, generation = ?, spec = ? WHERE id = ?")
            .bind(ts(svc.deleted_at.unwrap()))
            .bind(svc.generation)
            .bind(serde_json::to_string(&svc.spec).expect("spec serializes to JSON"))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        // The credentials are destroyed with the delete: nothing can reveal them again. Only the
        // backup store's secret is kept, until the purge: the final backup needs it, and so does
        // the removal of every backup taken before (backups on, skipped, or turned off earlier).
        let sealed: Vec<u8> =
            sqlx::query_scalar("SELECT sealed FROM service_secrets WHERE service_id = ?")
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
        let kept = Secrets {
            backups: self.unseal(id, &sealed)?.backups,
            ..Secrets::default()
        };
        sqlx::query("UPDATE service_secrets SET sealed = ? WHERE service_id = ?")
            .bind(self.seal(id, &kept))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.changes.record(id);
        Ok(svc)
    }

    async fn service_purge(&self, id: ServiceId) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM backups WHERE service_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM events WHERE service_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM services WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.changes.record(id);
        Ok(())
    }

    async fn secrets_get(&self, id: ServiceId) -> Result<Secrets> {
        let sealed: Vec<u8> =
            sqlx::query_scalar("SELECT sealed FROM service_secrets WHERE service_id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.read)
                .await?
                .ok_or(StoreError::NotFound(id))?;
        self.unseal(id, &sealed)
    }

    async fn status_get(&self, id: ServiceId) -> Result<Option<ServiceStatus>> {
        let row = sqlx::query(
            "SELECT state, reason, observed_generation, details, since FROM service_status WHERE service_id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(row_to_status).transpose()
    }

    async fn status_record(
        &self,
        id: ServiceId,
        status: Option<&ServiceStatus>,
        events: &[Event],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if let Some(status) = status {
            put_status(&mut tx, &id.to_string(), status).await?;
        }
        for event in events {
            sqlx::query("INSERT INTO events (service_id, event) VALUES (?, ?)")
                .bind(id.to_string())
                .bind(serde_json::to_string(event).expect("events serialize to JSON"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if status.is_some() {
            self.changes.record(id);
        }
        Ok(())
    }

    async fn event_append(&self, id: ServiceId, event: &Event) -> Result<()> {
        sqlx::query("INSERT INTO events (service_id, event) VALUES (?, ?)")
            .bind(id.to_string())
            .bind(serde_json::to_string(event).expect("events serialize to JSON"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backup_insert(&self, service: ServiceId, entry: &BackupEntry) -> Result<()> {
        sqlx::query("INSERT INTO backups (id, service_id, scheduled_at) VALUES (?, ?, ?)")
            .bind(entry.id.to_string())
            .bind(service.to_string())
            .bind(ts(entry.scheduled_at))
            .execute(&self.pool)
            .await?;
        self.changes.record(service);
        Ok(())
    }

    async fn backup_list(&self, service: ServiceId) -> Result<Vec<BackupEntry>> {
        let rows = sqlx::query(
            "SELECT id, scheduled_at, initiated_at, confirmed_at, error FROM backups
             WHERE service_id = ? ORDER BY scheduled_at, id",
        )
        .bind(service.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row_to_backup).collect()
    }

    async fn backup_get(&self, id: uuid::Uuid) -> Result<Option<(ServiceId, BackupEntry)>> {
        let row = sqlx::query(
            "SELECT service_id, id, scheduled_at, initiated_at, confirmed_at, error FROM backups
             WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let service: String = row.try_get("service_id")?;
        let service = ServiceId::parse_str(&service).map_err(|e| corrupt("service id", e))?;
        Ok(Some((service, row_to_backup(&row)?)))
    }

    async fn backup_forget(&self, id: uuid::Uuid) -> Result<()> {
        let service: Option<String> =
            sqlx::query_scalar("DELETE FROM backups WHERE id = ? RETURNING service_id")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        if let Some(id) = service.and_then(|s| ServiceId::parse_str(&s).ok()) {
            self.changes.record(id);
        }
        Ok(())
    }

    async fn backup_update(&self, entry: &BackupEntry) -> Result<()> {
        let service: Option<String> = sqlx::query_scalar(
            "UPDATE backups SET initiated_at = ?, confirmed_at = ?, error = ? WHERE id = ?
             RETURNING service_id",
        )
        .bind(entry.initiated_at.map(ts))
        .bind(entry.confirmed_at.map(ts))
        .bind(&entry.error)
        .bind(entry.id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(id) = service.and_then(|s| ServiceId::parse_str(&s).ok()) {
            self.changes.record(id);
        }
        Ok(())
    }

    async fn provider_list(&self) -> Result<Vec<ProviderDefinition>> {
        let rows = sqlx::query(
            "SELECT name, version, definition, sealed_secret FROM providers ORDER BY name, version",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let version: String = r.try_get("version")?;
                let text: String = r.try_get("definition")?;
                let mut def: ProviderDefinition =
                    serde_json::from_str(&text).map_err(|e| corrupt("provider definition", e))?;
                let sealed: Option<Vec<u8>> = r.try_get("sealed_secret")?;
                if let Some(sealed) = sealed {
                    let plain = self
                        .cipher
                        .open(&sealed, provider_aad(&name, &version).as_bytes())
                        .ok_or(StoreError::Unseal)?;
                    let secret =
                        String::from_utf8(plain).map_err(|e| corrupt("provider secret", e))?;
                    set_backend_secret(&mut def, Some(secret));
                }
                Ok(def)
            })
            .collect()
    }

    async fn provider_put(&self, def: &ProviderDefinition, replace: bool) -> Result<()> {
        let mut stored = def.clone();
        let secret = set_backend_secret(&mut stored, None);
        let sealed = secret.map(|s| {
            self.cipher.seal(
                s.as_bytes(),
                provider_aad(&def.name, &def.version).as_bytes(),
            )
        });
        let verb = if replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT"
        };
        let done = sqlx::query(&format!(
            "{verb} INTO providers (name, version, definition, sealed_secret, created_at) VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(&def.name)
        .bind(&def.version)
        .bind(serde_json::to_string(&stored).expect("definitions serialize"))
        .bind(sealed)
        .bind(ts(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "provider {} {} is already registered",
                def.name, def.version
            ))),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn provider_delete(&self, name: &str, version: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let using: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM services WHERE json_extract(spec, '$.provider.name') = ? AND json_extract(spec, '$.provider.version') = ?",
        )
        .bind(name)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        if using > 0 {
            return Err(StoreError::Conflict(format!(
                "provider {name} {version} still has {using} service(s); delete them first"
            )));
        }
        let done = sqlx::query("DELETE FROM providers WHERE name = ? AND version = ?")
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn event_list(
        &self,
        id: ServiceId,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<(i64, Event)>> {
        let rows = sqlx::query(
            "SELECT seq, event FROM events WHERE service_id = ? AND (? IS NULL OR seq < ?)
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(id.to_string())
        .bind(before)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("event")?;
                let ev = serde_json::from_str(&text).map_err(|e| corrupt("event", e))?;
                Ok((r.try_get("seq")?, ev))
            })
            .collect()
    }
}

fn row_to_status(row: &sqlx::sqlite::SqliteRow) -> Result<ServiceStatus> {
    let state: String = row.try_get("state")?;
    let details: String = row.try_get("details")?;
    Ok(ServiceStatus {
        state: ServiceState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        reason: row.try_get("reason")?,
        observed_generation: row.try_get("observed_generation")?,
        details: serde_json::from_str(&details).map_err(|e| corrupt("details", e))?,
        since: parse_ts(&row.try_get::<String, _>("since")?)?,
    })
}

fn row_to_backup(r: &sqlx::sqlite::SqliteRow) -> Result<BackupEntry> {
    let opt = |col: &str| -> Result<Option<OffsetDateTime>> {
        r.try_get::<Option<String>, _>(col)?
            .as_deref()
            .map(parse_ts)
            .transpose()
    };
    Ok(BackupEntry {
        id: ServiceId::parse_str(&r.try_get::<String, _>("id")?)
            .map_err(|e| corrupt("backup id", e))?,
        scheduled_at: parse_ts(&r.try_get::<String, _>("scheduled_at")?)?,
        initiated_at: opt("initiated_at")?,
        confirmed_at: opt("confirmed_at")?,
        error: r.try_get("error")?,
    })
}

fn provider_aad(name: &str, version: &str) -> String {
    format!("provider:{name}:{version}")
}

/// Takes the backend secret out of a definition (returning it), or puts one in.
fn set_backend_secret(def: &mut ProviderDefinition, secret: Option<String>) -> Option<String> {
    let key = ["api", "rest"]
        .into_iter()
        .find(|k| def.backend.get(k).is_some_and(|v| v.is_object()))?;
    let section = def.backend.get_mut(key)?.as_object_mut()?;
    match secret {
        Some(s) => {
            section.insert("secret".into(), serde_json::Value::String(s));
            None
        }
        None => section
            .remove("secret")
            .and_then(|v| v.as_str().map(str::to_owned)),
    }
}

async fn put_status(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    status: &ServiceStatus,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO service_status (service_id, state, reason, observed_generation, details, since)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (service_id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
           observed_generation = excluded.observed_generation, details = excluded.details,
           since = excluded.since",
    )
    .bind(id)
    .bind(status.state.as_str())
    .bind(&status.reason)
    .bind(status.observed_generation)
    .bind(serde_json::to_string(&status.details).expect("details serialize to JSON"))
    .bind(ts(status.since))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
