//! The local backend: every service is a real server process on this host, with its own data
//! directory under `<data-dir>/instances/<id>`, its own port on 127.0.0.1, its own credentials and
//! cgroup limits where the host allows them.
//!
//! The instance directory is the source of truth for what exists here: `instance.json` records
//! the engine, version, port, plan and config, and `run/berth.pid` the server's pid. That is what
//! makes a restart of Berth adopt running instances instead of starting them twice, and what makes
//! a half-made instance (a crash during create) recognisable and safe to redo.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_engines::{Engine, EngineKind, Installations, InstanceCtx, RunAs};
use berth_types::JsonMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use crate::limits::Cgroups;
use crate::{
    process, BackendError, BackupRequest, BackupState, InstancePatch, InstanceSpec, InstanceStatus,
    ProviderBackend, Result, UpdateEffect,
};

/// What is persisted per instance, in `instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: Uuid,
    engine: String,
    major: String,
    port: u16,
    plan: JsonMap,
    config: JsonMap,
    /// False until the first start finished and credentials were set: a half-made instance.
    initialized: bool,
    #[serde(default)]
    paused: bool,
}

/// In-memory knowledge of one instance.
#[derive(Default)]
struct SlotState {
    record: Option<Record>,
    pid: Option<u32>,
    /// Kept in memory only, to health-check and restart with the service's own credentials.
    secrets: Option<JsonMap>,
    /// The last start passed the engine's probe.
    healthy: bool,
    /// The last start's error, reported in status until a later start succeeds.
    error: Option<String>,
    limits: JsonMap,
}

#[derive(Default)]
struct Slot {
    /// Held for the whole of a create, update or delete: one operation per instance at a time.
    op: Mutex<()>,
    state: StdMutex<SlotState>,
}

/// Settings of the local host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub data_dir: PathBuf,
    pub engines_dir: PathBuf,
    /// Ports handed to instances, on 127.0.0.1.
    pub ports: Range<u16>,
    /// How long a start may take before it counts as failed.
    pub start_timeout: Duration,
    pub run_as: Option<RunAs>,
    /// Seals what must survive a restart but is secret (a backup store's key); without it,
    /// such things are kept in memory only.
    pub cipher: Option<Arc<berth_store::Cipher>>,
}

/// What all local backends on this host share: instances, ports, limits and the OS user.
pub struct LocalHost {
    cfg: HostConfig,
    installs: Installations,
    cgroups: Cgroups,
    slots: StdMutex<HashMap<Uuid, Arc<Slot>>>,
    reserved_ports: StdMutex<HashSet<u16>>,
    /// Signalled when an instance process exits, so the reconciler looks at once.
    changed: Arc<Notify>,
    /// Backups taken by this process: under way, or how they ended (until their status is
    /// asked for). One missing here was interrupted by a restart, unless the store has it.
    jobs: StdMutex<HashMap<Uuid, Job>>,
    /// WAL archiving of the PostgreSQL instances whose services take backups.
    archive: Arc<crate::archiver::Archive>,
}

/// One backup taken here.
#[derive(Clone)]
enum Job {
    Running,
    /// How it ended, and when (ended jobs are forgotten after [`JOB_MEMORY`]; the store's
    /// manifest answers for a successful one after that).
    Done(std::result::Result<(), String>, Instant),
}

/// How long the outcome of a backup is kept in memory for its status calls.
const JOB_MEMORY: Duration = Duration::from_secs(3600);

impl LocalHost {
    /// Scans `<data-dir>/instances` and adopts every instance whose process still runs.
    pub fn open(cfg: HostConfig, changed: Arc<Notify>) -> std::io::Result<Arc<Self>> {
        let instances = cfg.data_dir.join("instances");
        std::fs::create_dir_all(&instances)?;
        let installs = Installations::discover(&cfg.engines_dir);
        let archive = Arc::new(crate::archiver::Archive::new(cfg.cipher.clone()));
        let host = Arc::new(Self {
            installs,
            cgroups: Cgroups::detect(),
            slots: StdMutex::new(HashMap::new()),
            reserved_ports: StdMutex::new(HashSet::new()),
            changed,
            cfg,
            jobs: StdMutex::new(HashMap::new()),
            archive,
        });
        let procs = process::ProcTable::scan();
        for entry in std::fs::read_dir(&instances)?.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let dir = entry.path();
            host.archive.load(id, &dir);
            let record: Option<Record> = std::fs::read(dir.join("instance.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            // The pid file, else whatever server works in the directory (a crash between the
            // spawn and the pid file); a second one is a duplicate and goes.
            // A half-made instance (its create never finished) keeps no process: the next create
            // makes it again from scratch.
            let initialized = record.as_ref().is_some_and(|r| r.initialized);
            let pid = std::fs::read_to_string(dir.join("run/berth.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|pid| process::alive(*pid, &dir))
                .or_else(|| procs.servers_in(&dir).first().copied())
                .filter(|_| initialized);
            procs.kill_others_in(&dir, pid);
            if let Some(r) = &record {
                host.reserved_ports.lock().unwrap().insert(r.port);
            }
            let slot = Slot::default();
            {
                let mut st = slot.state.lock().unwrap();
                st.healthy = pid.is_some();
                st.record = record;
                st.pid = pid;
            }
            host.slots.lock().unwrap().insert(id, Arc::new(slot));
        }
        crate::archiver::spawn(Arc::downgrade(&host.archive), host.changed.clone());
        Ok(host)
    }

    pub fn installations(&self) -> &Installations {
        &self.installs
    }

    fn dir(&self, id: Uuid) -> PathBuf {
        self.cfg.data_dir.join("instances").join(id.to_string())
    }

    fn slot(&self, id: Uuid) -> Arc<Slot> {
        self.slots.lock().unwrap().entry(id).or_default().clone()
    }

    fn existing_slot(&self, id: Uuid) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap().get(&id).cloned()
    }

    /// The first port of the range that no instance holds and that nothing else listens on.
    fn allocate_port(&self) -> Result<u16> {
        let mut reserved = self.reserved_ports.lock().unwrap();
        for port in self.cfg.ports.clone() {
            if reserved.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                reserved.insert(port);
                return Ok(port);
            }
        }
        Err(BackendError::Failed(format!(
            "no free port left in {}..{}",
            self.cfg.ports.start, self.cfg.ports.end
        )))
    }

    fn release_port(&self, port: u16) {
        self.reserved_ports.lock().unwrap().remove(&port);
    }
}

/// The backup store of a request; wrong settings wait for the user.
fn bucket_of(config: &JsonMap, secrets: &JsonMap) -> Result<berth_backup::Bucket> {
    berth_backup::Bucket::from_settings(config, secrets)
        .map_err(|e| BackendError::Invalid(e.to_string()))
}

/// A backup-layer error in this layer's terms: settings and missing backups wait for the
/// user, the rest is retried.
fn backup_error(what: &str, e: berth_backup::BackupError) -> BackendError {
    use berth_backup::BackupError as E;
    match e {
        E::Settings(_) | E::NotFound(_) => BackendError::Invalid(format!("{what}: {e}")),
        _ => BackendError::Failed(format!("{what}: {e}")),
    }
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let tmp = dir.join("instance.json.tmp");
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, dir.join("instance.json")))
        .map_err(|e| BackendError::Failed(format!("writing instance.json: {e}")))
}

/// A provider served by the local host with one engine.
pub struct LocalBackend {
    host: Arc<LocalHost>,
    engine: Arc<dyn Engine>,
}

impl LocalBackend {
    pub fn new(host: Arc<LocalHost>, engine: Arc<dyn Engine>) -> Self {
        Self { host, engine }
    }

    fn kind(&self) -> EngineKind {
        self.engine.kind()
    }

    fn ctx(&self, record: &Record) -> Result<InstanceCtx> {
        let install = self
            .host
            .installs
            .get(self.kind(), &record.major)
            .ok_or_else(|| {
                BackendError::Failed(format!(
                    "{} {} is no longer installed on this host",
                    self.kind().as_str(),
                    record.major
                ))
            })?
            .clone();
        Ok(InstanceCtx {
            id: record.id,
            dir: self.host.dir(record.id),
            port: record.port,
            install,
            config: record.config.clone(),
            plan: record.plan.clone(),
        })
    }

    /// Applies limits, writes config, spawns the server, waits for it and checks it with the
    /// service's credentials. On failure the process is stopped again.
    async fn start(
        &self,
        slot: &Slot,
        record: &Record,
        secrets: &JsonMap,
        first: bool,
    ) -> Result<()> {
        let ctx = self.ctx(record)?;
        let fail = |what: &str, e: berth_engines::EngineError| {
            BackendError::Failed(format!("{what}: {e}"))
        };
        self.engine
            .write_config(&ctx, secrets)
            .map_err(|e| fail("writing config", e))?;
        let applied = self.host.cgroups.apply(
            record.id,
            ctx.plan_int("memory", 256),
            ctx.plan_int("cpu", 5),
        );
        let limits = limits_details(&applied);
        let launch = self.engine.launch(&ctx);
        let mut child = process::spawn(
            &launch,
            &ctx.data_dir(),
            &ctx.log_file(),
            applied.procs,
            self.host.cfg.run_as,
        )
        .map_err(|e| BackendError::Failed(format!("starting {}: {e}", launch.program.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Failed("the server exited at once".into()))?;
        let _ = std::fs::write(ctx.run_dir().join("berth.pid"), pid.to_string());
        {
            let mut st = slot.state.lock().unwrap();
            st.pid = Some(pid);
            st.limits = limits;
        }
        // Reap the child when it exits and tell the reconciler to look.
        let changed = self.host.changed.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            changed.notify_one();
        });
        let spawned = Instant::now();
        let deadline = spawned + self.host.cfg.start_timeout;
        let data_dir = ctx.data_dir();
        let result = async {
            // Wait in short slices, so a server that exits during its start fails at once
            // instead of after the whole start timeout.
            loop {
                let slice = (Instant::now() + Duration::from_millis(250)).min(deadline);
                match self.engine.wait_started(&ctx, slice).await {
                    Ok(()) => break,
                    Err(_) if !process::alive(pid, &data_dir) => {
                        return Err(BackendError::Failed(
                            "the server exited while starting".into(),
                        ));
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(fail("waiting for the server", e))
                    }
                    Err(_) => {}
                }
            }
            let started = Instant::now();
            if first {
                self.engine
                    .bootstrap(&ctx, secrets)
                    .await
                    .map_err(|e| fail("setting credentials", e))?;
            }
            let bootstrapped = Instant::now();
            self.engine
                .probe(&ctx, secrets)
                .await
                .map_err(|e| fail("health check", e))?;
            tracing::debug!(
                id = %record.id,
                start_ms = (started - spawned).as_millis() as u64,
                credentials_ms = (bootstrapped - started).as_millis() as u64,
                probe_ms = bootstrapped.elapsed().as_millis() as u64,
                "instance started"
            );
            Ok::<(), BackendError>(())
        }
        .await;
        if let Err(e) = result {
            let tail = log_tail(&ctx.log_file(), 5);
            process::stop(
                pid,
                &ctx.data_dir(),
                self.engine.stop_signal(),
                Duration::from_secs(5),
            )
            .await;
            let mut st = slot.state.lock().unwrap();
            st.pid = None;
            st.healthy = false;
            let msg = if tail.is_empty() {
                e.to_string()
            } else {
                format!("{e}; server log: {tail}")
            };
            st.error = Some(msg.clone());
            return Err(BackendError::Failed(msg));
        }
        let mut st = slot.state.lock().unwrap();
        st.healthy = true;
        st.error = None;
        Ok(())
    }

    async fn stop(&self, slot: &Slot, dir: &Path) {
        let pid = slot.state.lock().unwrap().pid.take();
        if let Some(pid) = pid {
            process::stop(
                pid,
                &dir.join("data"),
                self.engine.stop_signal(),
                Duration::from_secs(10),
            )
            .await;
        }
        slot.state.lock().unwrap().healthy = false;
    }

    fn is_running(&self, slot: &Slot, dir: &Path) -> bool {
        let pid = slot.state.lock().unwrap().pid;
        pid.is_some_and(|p| process::alive(p, &dir.join("data")))
    }

    /// Removes a half-made instance so it can be made again from scratch.
    async fn discard(&self, slot: &Slot, id: Uuid) {
        let dir = self.host.dir(id);
        self.stop(slot, &dir).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        self.host.cgroups.remove(id);
        self.host.archive.forget(id);
        let record = slot.state.lock().unwrap().record.take();
        if let Some(r) = record {
            self.host.release_port(r.port);
        }
    }

    async fn provision(&self, slot: &Slot, spec: &InstanceSpec) -> Result<()> {
        let version = spec
            .config
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                self.host
                    .installs
                    .newest(self.kind())
                    .map(|i| i.major.clone())
            })
            .ok_or_else(|| {
                BackendError::Invalid(format!("no {} version is installed", self.kind().as_str()))
            })?;
        let install = self
            .host
            .installs
            .get(self.kind(), &version)
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "{} {version} is not installed on this host",
                    self.kind().as_str()
                ))
            })?
            .clone();
        self.engine
            .prepare(&install, self.host.cfg.run_as)
            .await
            .map_err(|e| {
                BackendError::Failed(format!("preparing {} {version}: {e}", install.product))
            })?;
        let port = self.host.allocate_port()?;
        let dir = self.host.dir(spec.id);
        let record = Record {
            id: spec.id,
            engine: self.kind().as_str().into(),
            major: version,
            port,
            plan: spec.plan.clone(),
            config: spec.config.clone(),
            initialized: false,
            paused: false,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| BackendError::Failed(format!("creating {}: {e}", dir.display())))?;
        write_record(&dir, &record)?;
        slot.state.lock().unwrap().record = Some(record.clone());
        let ctx = self.ctx(&record)?;
        let t0 = Instant::now();
        match &spec.recover_from {
            None => self
                .engine
                .init(&ctx, self.host.cfg.run_as)
                .await
                .map_err(|e| BackendError::Failed(format!("laying out the data directory: {e}")))?,
            Some(r) => {
                let bucket = bucket_of(&r.config, &r.secrets)?;
                let target = berth_backup::restore::Target {
                    kind: self.kind(),
                    ctx: &ctx,
                    run_as: self.host.cfg.run_as,
                };
                berth_backup::restore::restore(&target, &bucket, r.ms_id, r.backup_id, r.time)
                    .await
                    .map_err(|e| backup_error(&format!("restoring backup {}", r.backup_id), e))?;
            }
        }
        tracing::debug!(id = %spec.id, init_ms = t0.elapsed().as_millis() as u64, "instance files laid out");
        self.start(slot, &record, &spec.secrets, true).await?;
        // A point-in-time restore's fetched WAL is replayed by now.
        let _ = std::fs::remove_dir_all(berth_backup::restore::wal_restore_dir(&ctx));
        let mut record = record;
        record.initialized = true;
        write_record(&dir, &record)?;
        slot.state.lock().unwrap().record = Some(record);
        Ok(())
    }

    fn status_of(&self, id: Uuid, slot: &Slot) -> Option<InstanceStatus> {
        let dir = self.host.dir(id);
        let running = self.is_running(slot, &dir);
        let st = slot.state.lock().unwrap();
        let record = st.record.as_ref()?;
        if record.engine != self.kind().as_str() {
            return None;
        }
        let mut details = match self.ctx(record) {
            Ok(ctx) => self.engine.details(&ctx),
            Err(_) => JsonMap::new(),
        };
        let ready = record.initialized && running && st.healthy && !record.paused;
        details.insert("ready".into(), Value::from(ready));
        details.insert("running".into(), Value::from(running));
        details.insert("paused".into(), Value::from(record.paused));
        details.extend(self.host.archive.details(id));
        if !st.limits.is_empty() {
            details.insert("limits".into(), Value::Object(st.limits.clone()));
        }
        Some(InstanceStatus {
            plan: record.plan.clone(),
            config: record.config.clone(),
            details,
            error: if running { None } else { st.error.clone() },
        })
    }
}

/// `details.limits`: what the host enforces of the plan, and what it cannot.
fn limits_details(applied: &crate::limits::Applied) -> JsonMap {
    let mut limits = JsonMap::new();
    limits.insert("enforced".into(), Value::from(applied.enforced.clone()));
    if !applied.not_enforced.is_empty() {
        limits.insert(
            "notEnforced".into(),
            Value::from(applied.not_enforced.clone()),
        );
    }
    limits
}

/// The last `n` lines of a log file, joined, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[async_trait]
impl ProviderBackend for LocalBackend {
    async fn list(&self) -> Result<Vec<Uuid>> {
        let slots: Vec<(Uuid, Arc<Slot>)> = self
            .host
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        Ok(slots
            .into_iter()
            .filter(|(_, s)| {
                let st = s.state.lock().unwrap();
                // A directory without a record is a crash leftover that any engine may clean up.
                st.record
                    .as_ref()
                    .is_none_or(|r| r.engine == self.kind().as_str())
            })
            .map(|(id, _)| id)
            .collect())
    }

    async fn status(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, InstanceStatus>> {
        Ok(ids
            .iter()
            .filter_map(|id| {
                let slot = self.host.existing_slot(*id)?;
                Some((*id, self.status_of(*id, &slot)?))
            })
            .collect())
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<()> {
        let slot = self.host.slot(spec.id);
        let _op = slot.op.lock().await;
        let record = slot.state.lock().unwrap().record.clone();
        slot.state.lock().unwrap().secrets = Some(spec.secrets.clone());
        match record {
            Some(r) if r.initialized => {
                // Exists: make sure it runs (a restart after a crash) unless it is paused.
                let dir = self.host.dir(spec.id);
                if r.paused || self.is_running(&slot, &dir) {
                    return Ok(());
                }
                self.start(&slot, &r, &spec.secrets, false).await
            }
            _ => {
                // New, or half-made by a create that never finished: (re)make it from scratch.
                self.discard(&slot, spec.id).await;
                let result = self.provision(&slot, spec).await;
                if result.is_err() {
                    self.discard(&slot, spec.id).await;
                }
                result
            }
        }
    }

    async fn update(&self, id: Uuid, patch: &InstancePatch) -> Result<UpdateEffect> {
        let slot = self
            .host
            .existing_slot(id)
            .ok_or(BackendError::NotFound(id))?;
        let _op = slot.op.lock().await;
        let (old, old_secrets) = {
            let st = slot.state.lock().unwrap();
            (
                st.record.clone().ok_or(BackendError::NotFound(id))?,
                st.secrets.clone(),
            )
        };
        let mut record = old.clone();
        if let Some(plan) = &patch.plan {
            record.plan = plan.clone();
        }
        if let Some(config) = &patch.config {
            if config.get("version") != record.config.get("version")
                && config.contains_key("version")
            {
                return Err(BackendError::Invalid(
                    "changing the major version of a running service is not supported yet".into(),
                ));
            }
            record.config = config.clone();
        }
        if let Some(pause) = patch.pause {
            record.paused = pause;
        }
        let secrets_changed = patch.secrets.is_some() && patch.secrets != old_secrets;
        let secrets = patch
            .secrets
            .clone()
            .or(old_secrets.clone())
            .ok_or_else(|| {
                BackendError::Failed(
                    "the instance's credentials are not known to the backend yet".into(),
                )
            })?;
        let dir = self.host.dir(id);
        write_record(&dir, &record)?;
        {
            let mut st = slot.state.lock().unwrap();
            st.record = Some(record.clone());
            st.secrets = Some(secrets.clone());
        }
        if record.paused {
            // Pausing (or changed while paused): nothing runs; the next start takes it all,
            // credentials included (bootstrap is idempotent).
            self.stop(&slot, &dir).await;
            return Ok(UpdateEffect::Recorded);
        }
        if !self.is_running(&slot, &dir) {
            self.start(&slot, &record, &secrets, true).await?;
            return Ok(if old.paused {
                UpdateEffect::Recorded
            } else {
                UpdateEffect::Restarted("the instance was not running".into())
            });
        }
        // Running, and stays running: live where the engine can, else one restart.
        let mut live = Vec::new();
        let mut why = Vec::new();
        if record.config != old.config {
            why.push("the config changed".to_owned());
        }
        if secrets_changed && why.is_empty() {
            let ctx = self.ctx(&record)?;
            let rotated = self
                .engine
                .rotate_secrets(&ctx, old_secrets.as_ref(), &secrets)
                .await
                .map_err(|e| BackendError::Failed(format!("applying new credentials: {e}")))?;
            if rotated {
                self.engine
                    .write_config(&ctx, &secrets)
                    .map_err(|e| BackendError::Failed(format!("writing config: {e}")))?;
                self.engine.probe(&ctx, &secrets).await.map_err(|e| {
                    BackendError::Failed(format!("health check with the new credentials: {e}"))
                })?;
                live.push("new credentials applied live; the old ones no longer work".to_owned());
            } else {
                why.push(
                    "the new credentials need a restart (the current ones are not known)".into(),
                );
            }
        }
        if record.plan != old.plan && why.is_empty() {
            let (old_ctx, ctx) = (self.ctx(&old)?, self.ctx(&record)?);
            let pid = slot.state.lock().unwrap().pid.unwrap_or_default();
            self.engine
                .write_config(&ctx, &secrets)
                .map_err(|e| BackendError::Failed(format!("writing config: {e}")))?;
            let applied =
                self.host
                    .cgroups
                    .apply(id, ctx.plan_int("memory", 256), ctx.plan_int("cpu", 5));
            slot.state.lock().unwrap().limits = limits_details(&applied);
            match self
                .engine
                .apply_plan_live(&old_ctx, &ctx, &secrets, pid)
                .await
            {
                Ok(Some(how)) => live.push(format!(
                    "new plan applied live: limits set on the running process ({}); {how}",
                    if applied.enforced.is_empty() {
                        "none enforceable here".to_owned()
                    } else {
                        applied.enforced.join(", ")
                    }
                )),
                Ok(None) => why.push("the server reads the new plan only at start".into()),
                Err(e) => why.push(format!("applying the plan live failed ({e})")),
            }
        }
        if why.is_empty() {
            return Ok(if live.is_empty() {
                UpdateEffect::Recorded
            } else {
                UpdateEffect::Live(live.join("; "))
            });
        }
        self.stop(&slot, &dir).await;
        match self.start(&slot, &record, &secrets, true).await {
            Ok(()) => Ok(UpdateEffect::Restarted(why.join("; "))),
            Err(e) if record.plan != old.plan || record.config != old.config => {
                // The engine rejected the change: back to what ran before, running.
                let previous = old_secrets.unwrap_or(secrets);
                write_record(&dir, &old)?;
                {
                    let mut st = slot.state.lock().unwrap();
                    st.record = Some(old.clone());
                    st.secrets = Some(previous.clone());
                }
                self.start(&slot, &old, &previous, true).await?;
                Err(BackendError::Failed(format!(
                    "the change was rejected and the instance runs on its previous plan and config: {e}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn sweeps_orphans(&self) -> bool {
        true
    }

    async fn backup_start(&self, backup: Uuid, req: &BackupRequest) -> Result<()> {
        let bucket = bucket_of(&req.config, &req.secrets)?;
        let slot = self
            .host
            .existing_slot(req.ms_id)
            .ok_or(BackendError::NotFound(req.ms_id))?;
        let (record, secrets) = {
            let st = slot.state.lock().unwrap();
            let record = st.record.clone().ok_or(BackendError::NotFound(req.ms_id))?;
            let secrets = if req.service_secrets.is_empty() {
                st.secrets.clone().unwrap_or_default()
            } else {
                req.service_secrets.clone()
            };
            (record, secrets)
        };
        if !record.initialized {
            return Err(BackendError::Failed(
                "the instance is still being made; the backup waits for it".into(),
            ));
        }
        // A deleted service's password is destroyed with the delete: a Redis that Berth can no
        // longer ask for a snapshot (its password was only in memory, lost at a restart) is
        // stopped, as it is about to be anyway, and backed up as it was left.
        if self.kind() == EngineKind::Redis && !secrets.contains_key("password") {
            if !req.final_backup {
                return Err(BackendError::Failed(
                    "the service's password is not known here; the backup needs it".into(),
                ));
            }
            let _op = slot.op.lock().await;
            self.stop(&slot, &self.host.dir(req.ms_id)).await;
        }
        let ctx = self.ctx(&record)?;
        let (kind, run_as, ms_id) = (self.kind(), self.host.cfg.run_as, req.ms_id);
        // From the first backup on, finished WAL segments go to the store too (PostgreSQL);
        // the spool exists before the base backup starts, so no segment it needs is dropped.
        self.host
            .archive
            .set_target(ms_id, &ctx.dir, &req.config, &req.secrets, bucket.clone())
            .map_err(|e| BackendError::Failed(format!("keeping the backup store: {e}")))?;
        if kind == EngineKind::Postgres {
            berth_engines::postgres::private_dir(&berth_engines::postgres::wal_spool(&ctx), run_as)
                .map_err(|e| BackendError::Failed(format!("creating the WAL spool: {e}")))?;
        }
        self.host.jobs.lock().unwrap().insert(backup, Job::Running);
        let host = self.host.clone();
        tokio::spawn(async move {
            // A stopped server (a paused service) is backed up as its data directory: no
            // start may come in between, so that one holds the instance until it is done.
            let data_dir = ctx.data_dir();
            let running_now = |slot: &Slot| {
                let st = slot.state.lock().unwrap();
                !st.record.as_ref().is_some_and(|r| r.paused)
                    && st.pid.is_some_and(|p| process::alive(p, &data_dir))
            };
            let _op = if running_now(&slot) {
                None
            } else {
                Some(slot.op.lock().await)
            };
            let src = berth_backup::take::Source {
                kind,
                ctx: &ctx,
                secrets: &secrets,
                run_as,
                running: running_now(&slot),
            };
            let t0 = Instant::now();
            let outcome = berth_backup::take::take(&src, &bucket, ms_id, backup).await;
            match &outcome {
                Ok(m) => tracing::info!(
                    service = %ms_id, %backup,
                    bytes = m.objects.iter().map(|o| o.size).sum::<u64>(),
                    ms = t0.elapsed().as_millis() as u64,
                    "backup uploaded and verified"
                ),
                Err(e) => tracing::warn!(service = %ms_id, %backup, error = %e, "backup failed"),
            }
            let mut jobs = host.jobs.lock().unwrap();
            jobs.retain(|_, j| !matches!(j, Job::Done(_, at) if at.elapsed() > JOB_MEMORY));
            jobs.insert(
                backup,
                Job::Done(
                    outcome.map(|_| ()).map_err(|e| e.to_string()),
                    Instant::now(),
                ),
            );
            drop(jobs);
            host.changed.notify_one();
        });
        Ok(())
    }

    async fn backups_off(&self, id: Uuid) -> Result<()> {
        self.host.archive.stop(id);
        Ok(())
    }

    async fn backup_status(&self, backup: Uuid, req: &BackupRequest) -> Result<BackupState> {
        let job = self.host.jobs.lock().unwrap().get(&backup).cloned();
        let state = |exists, error| BackupState { exists, error };
        match job {
            Some(Job::Running) => Ok(state(false, None)),
            Some(Job::Done(Ok(()), _)) => Ok(state(true, None)),
            Some(Job::Done(Err(e), _)) => Ok(state(false, Some(e))),
            None => {
                // Not taken by this process: the store is the truth.
                let bucket = bucket_of(&req.config, &req.secrets)?;
                match berth_backup::manifest(&bucket, req.ms_id, backup).await {
                    Ok(Some(_)) => Ok(state(true, None)),
                    Ok(None) => Ok(state(
                        false,
                        Some(format!(
                            "backup {backup} is not in {}: it was interrupted (Berth restarted while it ran)",
                            bucket.describe()
                        )),
                    )),
                    Err(e) => Err(BackendError::Failed(e.to_string())),
                }
            }
        }
    }

    async fn backup_delete(&self, backup: Uuid, req: &BackupRequest) -> Result<()> {
        let bucket = bucket_of(&req.config, &req.secrets)?;
        berth_backup::remove(&bucket, req.ms_id, backup)
            .await
            .map_err(|e| backup_error(&format!("deleting backup {backup}"), e))?;
        self.host.jobs.lock().unwrap().remove(&backup);
        Ok(())
    }

    async fn logs(&self, id: Uuid, lines: usize) -> Result<Option<String>> {
        if self.host.existing_slot(id).is_none() {
            return Ok(None);
        }
        let path = self.host.dir(id).join("log").join("server.log");
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        Ok(Some(all[all.len().saturating_sub(lines)..].join("\n")))
    }

    async fn delete(&self, id: Uuid) -> Result<()> {
        let Some(slot) = self.host.existing_slot(id) else {
            return Ok(());
        };
        let _op = slot.op.lock().await;
        let other_engine = {
            let st = slot.state.lock().unwrap();
            st.record
                .as_ref()
                .is_some_and(|r| r.engine != self.kind().as_str())
        };
        if other_engine {
            return Ok(());
        }
        self.discard(&slot, id).await;
        self.host.slots.lock().unwrap().remove(&id);
        Ok(())
    }
}
