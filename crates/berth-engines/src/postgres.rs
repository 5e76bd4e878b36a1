//! PostgreSQL: one cluster per service, copied from a template data directory that `initdb` built
//! once per installed major (a copy and a start cost ~120 ms; `initdb` alone costs ~600 ms).
//!
//! Security model: TCP on 127.0.0.1 requires SCRAM-SHA-256; the Unix socket (trust, for Berth's
//! own administration) lives in the instance's `run/` directory with mode 0700, so only the
//! instances' OS user and root can reach it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    spares: Arc<Spares>,
}

/// Copies of the template made ahead of time. Copying ~1000 files is most of the cost of a new
/// PostgreSQL here (0.1 to 0.5 s, far more when the disk is busy); taking a spare is one rename.
/// The pool of a major is filled after its first use and topped up after each create, in the
/// background, so versions nobody uses cost nothing.
struct Spares {
    dir: PathBuf,
    per_major: usize,
    refilling: std::sync::Mutex<HashSet<String>>,
}

impl Spares {
    fn dir_of(&self, major: &str) -> PathBuf {
        self.dir.join(format!("postgres-{major}"))
    }

    /// Moves a ready spare to `dest` (same filesystem: atomic), if there is one.
    fn take(&self, major: &str, dest: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(self.dir_of(major)) else {
            return false;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("ready-")
                && std::fs::rename(e.path(), dest).is_ok()
            {
                return true;
            }
        }
        false
    }

    fn ready_count(&self, major: &str) -> usize {
        std::fs::read_dir(self.dir_of(major))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("ready-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Tops the pool of `major` up to `per_major`, one refill task per major at a time.
    fn refill(self: &Arc<Self>, major: String, template: PathBuf) {
        if !self.refilling.lock().unwrap().insert(major.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let dir = this.dir_of(&major);
            while this.ready_count(&major) < this.per_major {
                let n: u64 = rand::random();
                let partial = dir.join(format!("partial-{n:016x}"));
                let ok = std::fs::create_dir_all(&dir).is_ok()
                    && copy_tree(&template, &partial)
                        .status()
                        .await
                        .is_ok_and(|s| s.success())
                    && std::fs::rename(&partial, dir.join(format!("ready-{n:016x}"))).is_ok();
                if !ok {
                    let _ = std::fs::remove_dir_all(&partial);
                    tracing::warn!(major = %major, "could not copy a spare PostgreSQL data directory");
                    break;
                }
            }
            this.refilling.lock().unwrap().remove(&major);
        });
    }
}

impl Postgres {
    pub fn new(templates_dir: PathBuf) -> Self {
        let spares_dir = templates_dir.join("spares");
        // Copies a crash interrupted are incomplete: never use them.
        if let Ok(rd) = std::fs::read_dir(&spares_dir) {
            for major in rd.flatten() {
                for e in std::fs::read_dir(major.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if e.file_name().to_string_lossy().starts_with("partial-") {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        Self {
            templates_dir,
            building: Mutex::new(()),
            spares: Arc::new(Spares {
                dir: spares_dir,
                per_major: 2,
                refilling: std::sync::Mutex::new(HashSet::new()),
            }),
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

/// The role and database every template already holds (owned by that role), so a new service
/// only renames them: instant, where `CREATE DATABASE` copies and syncs a whole database.
const TEMPLATE_NAME: &str = "app";

/// The statements that give a copied template the service's user, database and passwords.
/// Idempotent: run again after a crash or for a secret reset, it only sets the passwords.
#[allow(clippy::too_many_arguments)]
fn bootstrap_sql(
    user: &str,
    db: &str,
    user_exists: bool,
    template_role: bool,
    db_exists: bool,
    template_db: bool,
    password: &str,
    superuser_password: Option<&str>,
) -> Vec<String> {
    let mut sql = Vec::new();
    if !user_exists {
        if template_role && user != "postgres" {
            sql.push(format!(
                "ALTER ROLE {} RENAME TO {}",
                ident(TEMPLATE_NAME),
                ident(user)
            ));
        } else {
            sql.push(format!("CREATE ROLE {} LOGIN", ident(user)));
        }
    }
    if !db_exists {
        if template_db {
            sql.push(format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(TEMPLATE_NAME),
                ident(db)
            ));
        } else {
            sql.push(format!("CREATE DATABASE {}", ident(db)));
        }
    }
    sql.push(format!(
        "ALTER DATABASE {} OWNER TO {}",
        ident(db),
        ident(user)
    ));
    sql.push(format!(
        "ALTER ROLE {} LOGIN PASSWORD {}",
        ident(user),
        literal(&scram::verifier(password))
    ));
    if let Some(su) = superuser_password.filter(|_| user != "postgres") {
        sql.push(format!(
            "ALTER ROLE postgres PASSWORD {}",
            literal(&scram::verifier(su))
        ));
    }
    sql
}

/// Quotes an SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Creates `dir` with mode 0700, owned by the instances' user.
pub fn private_dir(dir: &Path, run_as: Option<RunAs>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(EngineError::io("creating instance dirs"))?;
    if let Some(ids) = run_as {
        std::os::unix::fs::chown(dir, Some(ids.uid), Some(ids.gid)).map_err(EngineError::io(
            "handing instance dirs to the instances' user",
        ))?;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(EngineError::io("restricting instance dirs"))
}

pub fn chown_tree(path: &Path, run_as: Option<RunAs>) -> Result<()> {
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

/// The file (in the data directory) a restore writes its recovery settings to; included by
/// `berth.conf`, inert once recovery is over (PostgreSQL removes `recovery.signal`).
pub const RECOVERY_CONF: &str = "berth-recovery.conf";

/// Where `archive_command` puts finished WAL segments, when the directory exists.
pub fn wal_spool(ctx: &InstanceCtx) -> PathBuf {
    ctx.dir.join("wal-spool")
}

/// The WAL file being written now: a base backup started after this needs nothing older.
pub async fn current_wal_file(ctx: &InstanceCtx) -> Result<String> {
    let mut c = Postgres::admin_options(ctx)
        .connect()
        .await
        .map_err(|e| EngineError::Unhealthy(format!("connecting as the superuser: {e}")))?;
    let (file,): (String,) = sqlx::query_as("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .fetch_one(&mut c)
        .await
        .map_err(|e| EngineError::Command(format!("reading the WAL position: {e}")))?;
    let _ = c.close().await;
    Ok(file)
}

/// The WAL file of a stopped cluster's last checkpoint (`pg_controldata`): recovering its data
/// directory needs nothing older.
pub async fn checkpoint_wal_file(ctx: &InstanceCtx) -> Result<String> {
    let out = tokio::process::Command::new(ctx.install.bin_dir().join("pg_controldata"))
        .arg("-D")
        .arg(ctx.data_dir())
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(EngineError::io("running pg_controldata"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO WAL file:"))
        .map(|f| f.trim().to_owned())
        .ok_or_else(|| {
            EngineError::Command(format!(
                "pg_controldata named no checkpoint: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

/// Keeps the instance's WAL from now on, until [`WalHold::release`] (or the drop): what a base
/// backup with `-X fetch` needs, since it reads the backup's WAL only at its end and a
/// checkpoint meanwhile may have removed it ("requested WAL segment ... has already been
/// removed", seen in the test suite): once a segment is archived (or the archive is off), nothing
/// else keeps it. A temporary physical replication slot, reserved at once, holds it for as long
/// as the session that made it lives, so a crash of Berth cannot leave it behind.
pub struct WalHold(sqlx::PgConnection);

pub async fn hold_wal(ctx: &InstanceCtx) -> Result<WalHold> {
    let mut conn = Postgres::admin_options(ctx)
        .connect()
        .await
        .map_err(|e| EngineError::Command(format!("connecting to hold the WAL: {e}")))?;
    conn.execute(
        "SELECT pg_create_physical_replication_slot('berth_backup_' || pg_backend_pid(), true, true)",
    )
    .await
    .map_err(|e| EngineError::Command(format!("holding the WAL for the backup: {e}")))?;
    Ok(WalHold(conn))
}

impl WalHold {
    /// Drops the slot (with the session): the WAL goes back to the usual rules.
    pub async fn release(self) {
        let _ = self.0.close().await;
    }
}

/// `pg_basebackup` writing a tar of the whole instance, with the WAL it needs to be consistent
/// (`-X fetch`, held by a [`WalHold`]), to stdout; as the instances' user, over the instance's
/// own socket.
pub fn base_backup_command(ctx: &InstanceCtx, run_as: Option<RunAs>) -> std::process::Command {
    let mut cmd = command_as(&ctx.install.bin_dir().join("pg_basebackup"), run_as);
    cmd.arg("-h")
        .arg(ctx.run_dir())
        .arg("-p")
        .arg(ctx.port.to_string())
        .args([
            "-U",
            "postgres",
            "-D",
            "-",
            "-F",
            "tar",
            "-X",
            "fetch",
            "--checkpoint=fast",
            "--no-password",
        ])
        .current_dir("/");
    cmd
}

/// Worker slots, fixed so that a CPU change (`max_parallel_workers`, at most 8) never needs a
/// restart; idle slots cost next to nothing.
const MAX_WORKER_PROCESSES: i64 = 12;

/// The settings derived from the plan that PostgreSQL reads only at start: the usual split, a
/// quarter of memory for shared buffers, connections scaled with memory.
fn restart_settings(ctx: &InstanceCtx) -> (i64, i64) {
    let memory_mib = ctx.plan_int("memory", 256).max(64);
    ((memory_mib / 4).max(16), (memory_mib / 5).clamp(20, 200))
}

/// A helper process (initdb, single-user postgres), as `run_as`, that dies with Berth.
pub fn command_as(program: &Path, run_as: Option<RunAs>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    if let Some(ids) = run_as {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    // SAFETY: the closure only makes one async-signal-safe syscall.
    unsafe { cmd.pre_exec(die_with_parent) };
    cmd
}

/// `cp -a from to`, dying with Berth.
fn copy_tree(from: &Path, to: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a").arg(from).arg(to);
    // SAFETY: the closure only makes one async-signal-safe syscall.
    unsafe { cmd.pre_exec(die_with_parent) };
    cmd
}

/// Runs in the child between fork and exec (after its user is set, which would clear it).
/// A helper must not outlive a Berth killed with SIGKILL: it would go on writing into a
/// directory the next start cleans up or reuses.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `postmaster.pid` says the server is still starting up (its 8th line, the
/// postmaster's status: `starting`, `ready`, `standby` or `stopping`). No file, or no status
/// yet, is not "starting": the caller then just tries to connect.
fn postmaster_starting(data_dir: &Path) -> bool {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|pid_file| pid_file.lines().nth(7).map(|l| l.trim() == "starting"))
        .unwrap_or(false)
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
        // The role and database a new service renames (see TEMPLATE_NAME), made in single-user
        // mode: no port, no socket, nothing else can connect meanwhile.
        let mut single = command_as(&install.server, run_as);
        single
            .args(["--single", "-D"])
            .arg(&partial)
            .arg("postgres")
            .current_dir("/")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
            let mut child = single.spawn()?;
            let script = format!("CREATE ROLE {TEMPLATE_NAME} LOGIN;\nCREATE DATABASE {TEMPLATE_NAME} OWNER {TEMPLATE_NAME};\n");
            std::io::Write::write_all(child.stdin.as_mut().expect("piped stdin"), script.as_bytes())?;
            drop(child.stdin.take());
            child.wait_with_output()
        })
        .await
        .map_err(|e| EngineError::Command(format!("single-user task failed: {e}")))?
        .map_err(EngineError::io("running postgres --single"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("ERROR") {
            return Err(EngineError::Command(format!(
                "preparing the template database failed: {}",
                stderr.trim()
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
            private_dir(&d, run_as)?;
        }
        let took_spare = self.spares.take(&ctx.install.major, &ctx.data_dir());
        self.spares
            .refill(ctx.install.major.clone(), template.clone());
        if took_spare {
            return Ok(());
        }
        // `cp -a` keeps the owner (the instances' user) and modes; no reflink on ext4 here.
        let status = copy_tree(&template, &ctx.data_dir())
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
        let (shared_buffers, max_connections) = restart_settings(ctx);
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
             log_min_duration_statement = -1\n\
             # Every finished WAL segment is copied to the spool while it exists (backups on);\n\
             # Berth uploads and removes what is there. Without the spool, segments are dropped.\n\
             archive_mode = on\n\
             archive_command = 'test ! -d \"{spool}\" || (cp %p \"{spool}/%f.part\" && sync \"{spool}/%f.part\" && mv \"{spool}/%f.part\" \"{spool}/%f\")'\n\
             archive_timeout = {archive_timeout}\n\
             # A restore's recovery settings, while it recovers (see berth-backup).\n\
             include_if_exists = '{RECOVERY_CONF}'\n",
            port = ctx.port,
            run = ctx.run_dir().display(),
            cache = memory_mib * 3 / 4,
            maint = (memory_mib / 16).max(8),
            mwp = MAX_WORKER_PROCESSES,
            gather = (workers / 2).max(1),
            spool = wal_spool(ctx).display().to_string().replace('\'', "''"),
            archive_timeout = ctx
                .config
                .get("archiveTimeoutS")
                .and_then(|v| v.as_i64())
                .unwrap_or(60),
        );
        std::fs::write(ctx.data_dir().join("berth.conf"), conf)
            .map_err(EngineError::io("writing berth.conf"))
    }

    async fn apply_plan_live(
        &self,
        old: &InstanceCtx,
        new: &InstanceCtx,
        _secrets: &JsonMap,
        pid: u32,
    ) -> Result<Option<String>> {
        if restart_settings(old) != restart_settings(new) {
            return Ok(None); // shared_buffers or max_connections: only read at start
        }
        // SAFETY: plain syscall to the instance's postmaster (the caller checked it is).
        if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
            return Err(EngineError::Command(format!(
                "reloading the configuration: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Some("configuration reloaded (SIGHUP)".into()))
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
            // While the postmaster says it is still starting (fsyncing a restored data
            // directory, replaying WAL), a connection attempt only forks a backend to be told
            // so: the status line of postmaster.pid (what `pg_ctl -w` waits on) is read instead.
            if postmaster_starting(&ctx.data_dir()) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(4)).await;
                continue;
            }
            match opts.connect().await {
                Ok(mut c) => {
                    // A restored instance accepts connections while it still recovers: it is
                    // started once it has been promoted and takes writes.
                    let recovering: std::result::Result<(bool,), _> =
                        sqlx::query_as("SELECT pg_is_in_recovery()")
                            .fetch_one(&mut c)
                            .await;
                    let _ = c.close().await;
                    if !matches!(recovering, Ok((true,))) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(EngineError::Unhealthy(
                            "PostgreSQL was still recovering at the deadline".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
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
        let user = ctx.config_str("userName", TEMPLATE_NAME);
        let db = ctx.config_str("databaseName", TEMPLATE_NAME);
        let pw = secret(secrets, "userPassword")?;
        let mut conn = Self::admin_options(ctx)
            .connect()
            .await
            .map_err(|e| EngineError::Unhealthy(format!("connecting as the superuser: {e}")))?;
        let (user_exists, app_role, db_exists, app_db): (bool, bool, bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $3),
                    EXISTS (SELECT 1 FROM pg_database WHERE datname = $2),
                    EXISTS (SELECT 1 FROM pg_database WHERE datname = $3)",
        )
        .bind(&user)
        .bind(&db)
        .bind(TEMPLATE_NAME)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| EngineError::Command(format!("reading roles and databases: {e}")))?;
        let plan = bootstrap_sql(
            &user,
            &db,
            user_exists,
            app_role,
            db_exists,
            app_db,
            pw,
            secret(secrets, "superuserPassword").ok(),
        );
        for stmt in plan {
            conn.execute(stmt.as_str()).await.map_err(|e| {
                EngineError::Command(format!("setting up user {user} and database {db}: {e}"))
            })?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    async fn rotate_secrets(
        &self,
        ctx: &InstanceCtx,
        _old: Option<&JsonMap>,
        new: &JsonMap,
    ) -> Result<bool> {
        // ALTER ROLE through the admin socket: new connections need the new password at once,
        // open ones stay; no restart.
        self.bootstrap(ctx, new).await?;
        Ok(true)
    }

    async fn probe(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(ctx.port)
            .username(&ctx.config_str("userName", TEMPLATE_NAME))
            .password(secret(secrets, "userPassword")?)
            .database(&ctx.config_str("databaseName", TEMPLATE_NAME))
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
        let user = ctx.config_str("userName", TEMPLATE_NAME);
        let db = ctx.config_str("databaseName", TEMPLATE_NAME);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postmaster_status_line_says_when_it_is_still_starting() {
        let dir = std::env::temp_dir().join(format!("berth-pmstatus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!postmaster_starting(&dir), "no file: try to connect");
        let head = "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  5432001    131072\n";
        for (status, starting) in [
            ("starting\n", true),
            ("ready   \n", false),
            ("standby \n", false),
            ("", false),
        ] {
            std::fs::write(dir.join("postmaster.pid"), format!("{head}{status}")).unwrap();
            assert_eq!(postmaster_starting(&dir), starting, "{status:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn verbs(sql: &[String]) -> Vec<String> {
        sql.iter()
            .map(|s| s.split(" PASSWORD ").next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_fresh_copy_renames_the_template_role_and_database() {
        let sql = bootstrap_sql("shop", "orders", false, true, false, true, "pw", Some("su"));
        assert_eq!(
            verbs(&sql),
            [
                "ALTER ROLE \"app\" RENAME TO \"shop\"",
                "ALTER DATABASE \"app\" RENAME TO \"orders\"",
                "ALTER DATABASE \"orders\" OWNER TO \"shop\"",
                "ALTER ROLE \"shop\" LOGIN",
                "ALTER ROLE postgres",
            ]
        );
        assert!(
            sql.iter()
                .all(|s| !s.contains("'pw'") && !s.contains("'su'")),
            "only verifiers: {sql:?}"
        );
    }

    #[test]
    fn a_second_run_only_sets_passwords() {
        let sql = bootstrap_sql("shop", "orders", true, false, true, false, "pw", None);
        assert_eq!(
            verbs(&sql),
            [
                "ALTER DATABASE \"orders\" OWNER TO \"shop\"",
                "ALTER ROLE \"shop\" LOGIN"
            ]
        );
    }

    #[test]
    fn the_superuser_as_user_keeps_the_template_role_aside() {
        let sql = bootstrap_sql("postgres", "app", true, true, true, true, "pw", Some("su"));
        assert_eq!(
            verbs(&sql),
            [
                "ALTER DATABASE \"app\" OWNER TO \"postgres\"",
                "ALTER ROLE \"postgres\" LOGIN"
            ]
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
