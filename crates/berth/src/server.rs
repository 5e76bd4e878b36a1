//! `berth server`: the store, the catalog with the local backend, the reconciler and the API in one
//! process. Instances are separate processes: they keep running when this one stops and are
//! adopted when it starts again.

use std::ffi::CString;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_api::{App, AppState, Tokens};
use berth_backend::local::{HostConfig, LocalBackend, LocalHost};
use berth_engines::{Engine, EngineKind, RunAs};
use berth_reconciler::{Catalog, CatalogEntry, Reconciler};
use berth_store::{Cipher, MasterKey, SqliteStore, Store};
use berth_types::ProviderDefinition;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::ServerConfig;

/// The built-in providers' definitions, from `providers/*/provider.yml`.
pub const BUILTIN_PROVIDERS: &[(&str, &str)] = &[
    (
        "postgres",
        include_str!("../../../providers/postgres/provider.yml"),
    ),
    (
        "redis",
        include_str!("../../../providers/redis/provider.yml"),
    ),
];

/// A running server: its address and the admin token, for tests and the benchmarks.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Looks up the OS user instances run as, when running as root.
pub fn run_as(user: &str) -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(user)?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "Berth runs as root, and PostgreSQL refuses to: instances run as the OS user '{user}', \
             which does not exist. Run scripts/setup.sh (it creates it) or choose --instance-user."
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// Every ancestor of `dir` must be traversable by the instances' user.
fn check_traversable(dir: &Path) -> anyhow::Result<()> {
    for a in dir.ancestors().skip(1) {
        if a.as_os_str().is_empty() {
            continue;
        }
        let mode = std::fs::metadata(a)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        if mode & 0o001 == 0 {
            bail!(
                "the data dir {} is inside {}, which other users cannot enter (mode {:o}); \
                 instances run as an unprivileged user and need to reach their files. \
                 Choose another --data-dir or chmod o+x {}",
                dir.display(),
                a.display(),
                mode & 0o777,
                a.display()
            );
        }
    }
    Ok(())
}

/// Reads the admin token, creating it (0600) on first start.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_owned());
    }
    let token = berth_api::auth::generate_token();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Builds everything and starts serving on `cfg.listen` (port 0 picks a free one).
pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data dir {}", cfg.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
    let run_as = run_as(&cfg.instance_user)?;
    if run_as.is_some() {
        // Traversable (not listable) by the instances' user; the secrets inside are 0600.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o711))?;
        check_traversable(&data_dir)?;
        for d in ["instances", "templates"] {
            std::fs::create_dir_all(data_dir.join(d))?;
            std::fs::set_permissions(data_dir.join(d), std::fs::Permissions::from_mode(0o711))?;
        }
    }
    let key_path = cfg
        .master_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("master.key"));
    let key = MasterKey::load_or_create(&key_path)?;
    // The database holds sealed secrets and every service's metadata: owner-only, like the keys.
    // (SQLite gives its -wal and -shm files the database file's mode.)
    let db_path = data_dir.join("berth.db");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db_path)?;
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db_path, Cipher::new(&key))
            .await
            .context("opening the store")?,
    );
    let token = admin_token(&data_dir.join("admin.token"))?;

    let changed = Arc::new(Notify::new());
    let host = LocalHost::open(
        HostConfig {
            data_dir: data_dir.clone(),
            engines_dir: cfg.engines_dir.clone(),
            ports: cfg.port_range.0..cfg.port_range.1,
            start_timeout: Duration::from_secs(30),
            run_as,
        },
        changed.clone(),
    )
    .context("opening the local host")?;
    let postgres: Arc<dyn Engine> = Arc::new(berth_engines::postgres::Postgres::new(
        data_dir.join("templates"),
    ));
    let redis: Arc<dyn Engine> = Arc::new(berth_engines::redis::Redis);
    let mut entries = Vec::new();
    for (name, yaml) in BUILTIN_PROVIDERS {
        let def = ProviderDefinition::from_yaml(yaml)
            .with_context(|| format!("built-in provider {name}"))?;
        let engine = match EngineKind::parse(def.local_engine().unwrap_or_default()) {
            Some(EngineKind::Postgres) => postgres.clone(),
            Some(EngineKind::Redis) => redis.clone(),
            None => bail!("built-in provider {name} names no known engine"),
        };
        let installed = host.installations().majors(engine.kind());
        if installed.is_empty() {
            tracing::warn!(provider = %name, "no version installed; run scripts/setup.sh");
        }
        let backend = Arc::new(LocalBackend::new(host.clone(), engine));
        entries.push(CatalogEntry::local(def, backend, installed));
    }
    let catalog = Arc::new(Catalog::new(entries));

    // Build PostgreSQL templates now, so the first create does not pay for initdb.
    for install in host
        .installations()
        .of(EngineKind::Postgres)
        .cloned()
        .collect::<Vec<_>>()
    {
        let pg = postgres.clone();
        tokio::spawn(async move {
            if let Err(e) = pg.prepare(&install, run_as).await {
                tracing::warn!(version = %install.major, error = %e, "building the PostgreSQL template");
            }
        });
    }

    let reconciler = Reconciler::new(
        store.clone(),
        catalog.clone(),
        berth_reconciler::Config {
            period: cfg.reconcile_period,
            ready_deadline: cfg.ready_deadline,
            ..Default::default()
        },
        changed,
    );
    tokio::spawn(reconciler.clone().run());

    let app = Arc::new(App {
        store,
        catalog,
        reconciler,
    });
    let router = berth_api::router(AppState {
        app,
        tokens: Tokens::new([token.as_str()]),
    });
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "berth server ready");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")
    });
    Ok(Running { addr, token, task })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping; instances keep running and are adopted at the next start");
}

/// `berth server`: start, print where, serve until a signal.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let data_dir: PathBuf = cfg.data_dir.clone();
    let running = start(cfg).await?;
    eprintln!(
        "berth server listening on http://{}\n  admin token: {}/admin.token\n  try: BERTH_TOKEN=$(cat {}/admin.token) berth providers list",
        running.addr,
        data_dir.display(),
        data_dir.display()
    );
    running.task.await?
}
