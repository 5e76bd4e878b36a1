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
    ("s3", include_str!("../../../providers/s3/provider.yml")),
];

/// A running server: its address and the admin token, for tests and the benchmarks.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// To stop it before tearing the server down in-process (tests).
    pub reconciler: Arc<Reconciler>,
    /// Ends the API (its thread and runtime) when dropped; the server's own run ends on a signal.
    pub api: ApiStop,
}

/// Stops the API thread when dropped (in-process servers: tests).
pub struct ApiStop(Arc<Notify>);

impl Drop for ApiStop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
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

/// Reads every `*.yml` / `*.yaml` file and every `*/provider.yml` in `dir`, each checked.
pub fn load_providers_dir(dir: &Path) -> anyhow::Result<Vec<ProviderDefinition>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading the providers dir {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            if path.join("provider.yml").is_file() {
                files.push(path.join("provider.yml"));
            }
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    let mut defs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let def = ProviderDefinition::from_yaml(&text)
            .with_context(|| format!("parsing {}", file.display()))?;
        def.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if def.rest_endpoint().is_none() {
            bail!(
                "{}: only REST providers (backend.api.endpoint) can be loaded from a directory",
                file.display()
            );
        }
        defs.push(def);
    }
    Ok(defs)
}

/// A catalog entry driving the provider's REST backend; warns (once, in the background) when the
/// backend cannot be reached, without holding the start up.
fn rest_entry(def: ProviderDefinition) -> CatalogEntry {
    let entry =
        CatalogEntry::rest(def).expect("loaded and registered providers have a REST backend");
    let probe = entry.backend.clone();
    let name = entry.def.name.clone();
    tokio::spawn(async move {
        match probe.list().await {
            Ok(ids) => {
                tracing::info!(provider = %name, instances = ids.len(), "REST backend reachable")
            }
            Err(e) => {
                tracing::warn!(provider = %name, error = %e, "REST backend not reachable; its services will show error until it is")
            }
        }
    });
    entry
}

/// A built-in provider served by the local backend.
pub struct BuiltinProvider {
    pub def: ProviderDefinition,
    pub backend: Arc<dyn berth_backend::ProviderBackend>,
    /// Installed majors, newest first.
    pub installed: Vec<String>,
}

pub struct Builtins {
    pub host: Arc<LocalHost>,
    pub providers: Vec<BuiltinProvider>,
}

/// The local host and a backend for each built-in provider; starts building the PostgreSQL
/// templates in the background, so the first create does not pay for `initdb`.
pub fn builtin_backends(
    data_dir: &Path,
    cfg: &ServerConfig,
    run_as: Option<RunAs>,
    changed: Arc<Notify>,
    cipher: Option<Arc<Cipher>>,
) -> anyhow::Result<Builtins> {
    let host = LocalHost::open(
        HostConfig {
            data_dir: data_dir.to_path_buf(),
            engines_dir: cfg.engines_dir.clone(),
            ports: cfg.port_range.0..cfg.port_range.1,
            start_timeout: Duration::from_secs(30),
            run_as,
            cipher,
        },
        changed,
    )
    .context("opening the local host")?;
    let postgres: Arc<dyn Engine> = Arc::new(berth_engines::postgres::Postgres::new(
        data_dir.join("templates"),
    ));
    let redis: Arc<dyn Engine> = Arc::new(berth_engines::redis::Redis);
    let garage: Arc<dyn Engine> = Arc::new(berth_engines::garage::Garage);
    let mut providers = Vec::new();
    for (name, yaml) in BUILTIN_PROVIDERS {
        let def = ProviderDefinition::from_yaml(yaml)
            .with_context(|| format!("built-in provider {name}"))?;
        let engine = match EngineKind::parse(def.local_engine().unwrap_or_default()) {
            Some(EngineKind::Postgres) => postgres.clone(),
            Some(EngineKind::Redis) => redis.clone(),
            Some(EngineKind::Garage) => garage.clone(),
            None => bail!("built-in provider {name} names no known engine"),
        };
        let installed = host.installations().majors(engine.kind());
        if installed.is_empty() {
            tracing::warn!(provider = %name, "no version installed; run scripts/setup.sh");
        }
        let backend = Arc::new(LocalBackend::new(host.clone(), engine));
        providers.push(BuiltinProvider {
            def,
            backend,
            installed,
        });
    }
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
    Ok(Builtins { host, providers })
}

/// Prepares the data dir: created, traversable by the instances' user when running as root.
fn prepare_data_dir(cfg: &ServerConfig) -> anyhow::Result<(PathBuf, Option<RunAs>)> {
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
    Ok((data_dir, run_as))
}

/// `berth backend serve`: the built-in providers over the Provider REST API (CONTRACTS.md §2),
/// one base path each (`/postgres/`, `/redis/`), so the engines can run on another host.
pub async fn serve_backend(
    cfg: ServerConfig,
    providers: &[String],
    api_key: Option<String>,
) -> anyhow::Result<()> {
    let (data_dir, run_as) = prepare_data_dir(&cfg)?;
    // A master key of its own (as `berth server` has), so the backup store each instance is
    // given is sealed on disk and WAL archiving resumes after a restart of this backend.
    let key = MasterKey::load_or_create(&master_key_path(&cfg, &data_dir))?;
    let builtins = builtin_backends(
        &data_dir,
        &cfg,
        run_as,
        Arc::new(Notify::new()),
        Some(Arc::new(Cipher::new(&key))),
    )?;
    let mut served = std::collections::HashMap::new();
    for p in builtins.providers {
        if providers.is_empty() || providers.contains(&p.def.name) {
            served.insert(p.def.name.clone(), p.backend);
        }
    }
    for wanted in providers {
        if !served.contains_key(wanted) {
            bail!("no built-in provider '{wanted}' (built-ins: postgres, redis)");
        }
    }
    if api_key.is_none() {
        tracing::warn!("serving without an API key: anyone who reaches this address can create and delete instances");
    }
    let names: Vec<String> = served.keys().cloned().collect();
    let router = berth_backend::contract_server::router(served, api_key.as_deref());
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    eprintln!(
        "berth backend serving {} on http://{}/<provider>/",
        names.join(", "),
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// The master key's file: the configured one, else `master.key` in the data directory.
fn master_key_path(cfg: &ServerConfig, data_dir: &Path) -> PathBuf {
    cfg.master_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("master.key"))
}

/// Reads an API key file; like the master key, a file other users can read is refused.
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users; chmod 600 it",
            path.display()
        );
    }
    let key = std::fs::read_to_string(path)?.trim().to_owned();
    if key.len() < 16 {
        bail!(
            "the API key in {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(key)
}

/// Builds everything and starts serving on `cfg.listen` (port 0 picks a free one).
pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    let (data_dir, run_as) = prepare_data_dir(&cfg)?;
    let key = MasterKey::load_or_create(&master_key_path(&cfg, &data_dir))?;
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
    let builtins = builtin_backends(
        &data_dir,
        &cfg,
        run_as,
        changed.clone(),
        Some(Arc::new(Cipher::new(&key))),
    )?;
    let mut entries: Vec<CatalogEntry> = builtins
        .providers
        .into_iter()
        .map(|p| CatalogEntry::local(p.def, p.backend, p.installed))
        .collect();
    // Registered through the API, then from the providers dir (which wins over a registered one
    // of the same name and version; a built-in is never shadowed).
    let mut extra = store
        .provider_list()
        .await
        .context("reading registered providers")?;
    if let Some(dir) = &cfg.providers_dir {
        for def in load_providers_dir(dir)? {
            extra.retain(|d| !(d.name == def.name && d.version == def.version));
            extra.push(def);
        }
    }
    for def in extra {
        if entries
            .iter()
            .any(|e| e.def.name == def.name && e.def.version == def.version)
        {
            bail!(
                "provider {} {} would shadow a built-in provider",
                def.name,
                def.version
            );
        }
        entries.push(rest_entry(def));
    }
    let catalog = Arc::new(Catalog::new(entries));

    let reconciler = Reconciler::new(
        store.clone(),
        catalog.clone(),
        berth_reconciler::Config {
            period: cfg.reconcile_period,
            ready_deadline: cfg.ready_deadline,
            retention_day: cfg.retention_day,
            schedule_hour: cfg.schedule_hour,
            ..Default::default()
        },
        changed,
    );
    tokio::spawn(reconciler.clone().run());
    let app_reconciler = reconciler.clone();

    let app = Arc::new(App {
        store,
        catalog,
        reconciler,
        lists: Default::default(),
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
    // The API answers on a thread and runtime of its own: the reconciler's work (process
    // starts, file writes, health probes) never holds up a request waiting for a worker.
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("berth-api".into())
        .spawn(move || {
            raise_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the API runtime");
            let result = rt.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        tokio::select! {
                            _ = shutdown_signal() => {}
                            _ = stopped.notified() => {}
                        }
                    })
                    .await
                    .context("serving HTTP")
            });
            let _ = done.send(result);
        })?;
    let task = tokio::spawn(async move {
        finished
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the API thread ended")))
    });
    Ok(Running {
        addr,
        token,
        task,
        reconciler: app_reconciler,
        api: ApiStop(stop),
    })
}

/// Gives the calling thread (and the threads it starts) a higher CPU priority than the
/// instances, where allowed (root): on a busy machine the API keeps answering promptly.
fn raise_priority() {
    // SAFETY: plain syscalls on the calling thread; failure (no CAP_SYS_NICE) changes nothing.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, API_NICE) != 0 {
            tracing::debug!("the API thread keeps the default CPU priority");
        }
    }
}

/// The API thread's niceness (instances and the reconciler run at 0).
const API_NICE: i32 = -5;

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
    let Running { task, api, .. } = running;
    let result = task.await?;
    drop(api);
    result
}
