//! PostgreSQL: one cluster per service, copied from a template data directory that `initdb` built
//! once per installed major (a copy and a start cost ~120 ms; `initdb` alone costs ~600 ms).
//!
//! Security model: TCP on 127.0.0.1 requires SCRAM-SHA-256; the Unix socket (trust, for Berth's
//! own administration) lives in the instance's `run/` directory with mode 0700, so only the
//! instances' OS user and root can reach it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_types::JsonMap;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::Mutex;

use crate::{scram, EngineError, EngineKind, Installation, InstanceCtx, Launch, Result, RunAs};

pub struct Postgres {
    /// `<data-dir>/templates`: one `postgres-<major>` template per installed major.
    templates_dir: PathBuf,
    /// Serialises template builds so two creates never run `initdb` twice.
    building: Mutex<()>,
}

impl Postgres {
    pub fn new(templates_dir: PathBuf) -> Self {
        Self {
            templates_dir,
            building: Mutex::new(()),
        }
    }

    fn template(&self, install: &Installation) -> PathBuf {
        self.templates_dir
            .join(format!("postgres-{}", install.major))
    }

    fn admin_options(ctx: &InstanceCtx) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(ctx.run_dir())
            .port(ctx.port)
            .username("postgres")
            .database("postgres")
            .disable_statement_logging()
    }
}

/// Quotes an SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn chown_tree(path: &Path, run_as: Option<RunAs>) -> Result<()> {
    let Some(ids) = run_as else { return Ok(()) };
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", ids.uid, ids.gid))
        .arg(path)
        .status()
        .map_err(EngineError::io("running chown"))?;
    if !status.success() {
        return Err(EngineError::Command(format!(
            "chown -R {} failed",
            path.display()
        )));
    }
    Ok(())
}

pub(crate) fn command_as(program: &Path, run_as: Option<RunAs>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    if let Some(ids) = run_as {
        use std::os::unix::process::CommandExt;
        cmd.uid(ids.uid).gid(ids.gid);
    }
    cmd
}

#[async_trait]
impl crate::Engine for Postgres {
    fn kind(&self) -> EngineKind {
        EngineKind::Postgres
    }

    async fn prepare(&self, install: &Installation, run_as: Option<RunAs>) -> Result<()> {
        let template = self.template(install);
        if template.join("PG_VERSION").is_file() {
            return Ok(());
        }
        let _guard = self.building.lock().await;
        if template.join("PG_VERSION").is_file() {
            return Ok(());
        }
        let partial = template.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(EngineError::io("creating the template dir"))?;
        chown_tree(&partial, run_as)?;
        let initdb = install.bin_dir().join("initdb");
        let mut cmd = command_as(&initdb, run_as);
        cmd.arg("-D")
            .arg(&partial)
            .args([
                "--no-sync",
                "--no-instructions",
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .current_dir("/");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| EngineError::Command(format!("initdb task failed: {e}")))?
            .map_err(EngineError::io("running initdb"))?;
        if !out.status.success() {
            return Err(EngineError::Command(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // Every instance reads its own settings from berth.conf, written before each start.
        let conf = partial.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(EngineError::io("reading postgresql.conf"))?;
        text.push_str("\n# Written by Berth for this instance's plan and port.\ninclude_if_exists = 'berth.conf'\n");
        std::fs::write(&conf, text).map_err(EngineError::io("writing postgresql.conf"))?;
        std::fs::rename(&partial, &template).map_err(EngineError::io("publishing the template"))?;
        Ok(())
    }

    async fn init(&self, ctx: &InstanceCtx, run_as: Option<RunAs>) -> Result<()> {
        let template = self.template(&ctx.install);
        for d in [ctx.run_dir(), ctx.dir.join("log")] {
            std::fs::create_dir_all(&d).map_err(EngineError::io("creating instance dirs"))?;
            chown_tree(&d, run_as)?;
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(EngineError::io("restricting instance dirs"))?;
        }
        // `cp -a` keeps the owner (the instances' user) and modes; no reflink on ext4 here.
        let status = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(ctx.data_dir())
            .status()
            .await
            .map_err(EngineError::io("copying the template"))?;
        if !status.success() {
            return Err(EngineError::Command(
                "copying the template data directory failed".into(),
            ));
        }
        Ok(())
    }

    fn write_config(&self, ctx: &InstanceCtx, _secrets: &JsonMap) -> Result<()> {
        let memory_mib = ctx.plan_int("memory", 256).max(64);
        let cpu_tenths = ctx.plan_int("cpu", 5).max(1);
        // The usual split: a quarter of memory for shared buffers, connections scaled with memory.
        let shared_buffers = (memory_mib / 4).max(16);
        let max_connections = (memory_mib / 5).clamp(20, 200);
        let workers = ((cpu_tenths + 9) / 10).max(1);
        let conf = format!(
            "# Managed by Berth: rewritten before every start. Do not edit.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{run}'\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = {shared_buffers}MB\n\
             effective_cache_size = {cache}MB\n\
             maintenance_work_mem = {maint}MB\n\
             max_connections = {max_connections}\n\
             max_worker_processes = {mwp}\n\
             max_parallel_workers = {workers}\n\
             max_parallel_workers_per_gather = {gather}\n\
             logging_collector = off\n\
             log_statement = 'none'\n\
             log_min_duration_statement = -1\n",
            port = ctx.port,
            run = ctx.run_dir().display(),
            cache = memory_mib * 3 / 4,
            maint = (memory_mib / 16).max(8),
            mwp = workers + 4,
            gather = (workers / 2).max(1),
        );
        std::fs::write(ctx.data_dir().join("berth.conf"), conf)
            .map_err(EngineError::io("writing berth.conf"))
    }

    fn launch(&self, ctx: &InstanceCtx) -> Launch {
        Launch {
            program: ctx.install.server.clone(),
            args: vec!["-D".into(), ctx.data_dir().display().to_string()],
        }
    }

    async fn wait_started(&self, ctx: &InstanceCtx, deadline: Instant) -> Result<()> {
        let opts = Self::admin_options(ctx);
        loop {
            match opts.connect().await {
                Ok(c) => {
                    let _ = c.close().await;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(EngineError::Unhealthy(format!(
                        "PostgreSQL did not accept connections in time: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(4)).await,
            }
        }
    }

    async fn bootstrap(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let user = ctx.config_str("userName", "app");
        let db = ctx.config_str("databaseName", "app");
        let pw = secret(secrets, "userPassword")?;
        let mut conn = Self::admin_options(ctx)
            .connect()
            .await
            .map_err(|e| EngineError::Unhealthy(format!("connecting as the superuser: {e}")))?;
        let mut sql = Vec::new();
        if let Ok(su) = secret(secrets, "superuserPassword") {
            sql.push(format!(
                "ALTER ROLE postgres PASSWORD {}",
                literal(&scram::verifier(su))
            ));
        }
        if user != "postgres" {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
                    .bind(&user)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| EngineError::Command(format!("reading roles: {e}")))?;
            let verb = if exists.is_some() { "ALTER" } else { "CREATE" };
            sql.push(format!(
                "{verb} ROLE {} LOGIN PASSWORD {}",
                ident(&user),
                literal(&scram::verifier(pw))
            ));
        } else {
            sql.push(format!(
                "ALTER ROLE postgres PASSWORD {}",
                literal(&scram::verifier(pw))
            ));
        }
        for stmt in sql {
            conn.execute(stmt.as_str())
                .await
                .map_err(|e| EngineError::Command(format!("setting credentials: {e}")))?;
        }
        let db_exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&db)
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| EngineError::Command(format!("reading databases: {e}")))?;
        if db_exists.is_none() {
            conn.execute(format!("CREATE DATABASE {} OWNER {}", ident(&db), ident(&user)).as_str())
                .await
                .map_err(|e| EngineError::Command(format!("creating database {db}: {e}")))?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    async fn probe(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(ctx.port)
            .username(&ctx.config_str("userName", "app"))
            .password(secret(secrets, "userPassword")?)
            .database(&ctx.config_str("databaseName", "app"))
            .disable_statement_logging();
        let mut conn = opts.connect().await.map_err(|e| {
            EngineError::Unhealthy(format!("connecting with the service's credentials: {e}"))
        })?;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| EngineError::Unhealthy(format!("SELECT 1 failed: {e}")))?;
        let _ = conn.close().await;
        if one == 1 {
            Ok(())
        } else {
            Err(EngineError::Unhealthy(
                "SELECT 1 returned something else".into(),
            ))
        }
    }

    fn details(&self, ctx: &InstanceCtx) -> JsonMap {
        let user = ctx.config_str("userName", "app");
        let db = ctx.config_str("databaseName", "app");
        let mut d = JsonMap::new();
        d.insert("hostname".into(), Value::from("127.0.0.1"));
        d.insert("port".into(), Value::from(ctx.port));
        d.insert(
            "dsn".into(),
            Value::from(format!("postgresql://{user}@127.0.0.1:{}/{db}", ctx.port)),
        );
        d.insert("userName".into(), Value::from(user));
        d.insert("databaseName".into(), Value::from(db));
        d.insert(
            "version".into(),
            Value::from(ctx.install.full_version.clone()),
        );
        d
    }

    fn stop_signal(&self) -> i32 {
        // SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, data is safe.
        libc::SIGINT
    }
}

pub(crate) fn secret<'a>(secrets: &'a JsonMap, key: &str) -> Result<&'a str> {
    secrets
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| EngineError::Command(format!("secret {key} is missing")))
}
