//! The reconciler: converges what users asked for (the store's desired state) with what runs (the
//! backends), and records what the backends reported.
//!
//! It runs on a timer and whenever it is woken (by the API after a change, by the local backend
//! when a process exits), takes no hint of what changed, and re-reads the world every pass. Each
//! service is reconciled by at most one task at a time; a wake-up while it runs is not lost, the
//! next pass picks the service up again. Within a service the work is a pipeline:
//! load -> [`plan::plan`] (pure) -> execute through the backend -> record status and events.

pub mod catalog;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use berth_backend::{
    BackupRequest, BackupState, InstancePatch, InstanceSpec, InstanceStatus, Recovery,
};
use berth_store::Store;
use berth_types::{BackupEntry, Event, Service, ServiceId, ServiceStatus, Severity};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};

pub use catalog::{Catalog, CatalogEntry};
use plan::{Action, Plan, PlannedEvent};

/// What a pass learned about one service's instance.
#[derive(Debug, Clone)]
enum Observation {
    /// The backend answered; `None` means it does not have the instance.
    Seen(Option<Box<InstanceStatus>>),
    /// The backend could not be asked (timeout, connection refused, 5xx, garbage).
    Unavailable(String),
}

/// Reconciler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often a pass runs without being woken.
    pub period: Duration,
    /// How long a service may stay `creating`/`updating` without becoming ready before it is shown
    /// as `error`.
    pub ready_deadline: Duration,
    /// How many services are worked on at once.
    pub parallelism: usize,
    /// How long one backend call may take before it counts as failed.
    pub backend_timeout: Duration,
    /// The length of one day of `deleteRetentionDays`: a day, except in tests of the reaper.
    pub retention_day: Duration,
    /// The length of one hour of `backups.intervalH`: an hour, except in tests of schedules.
    pub schedule_hour: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(2),
            ready_deadline: Duration::from_secs(60),
            parallelism: 8,
            backend_timeout: Duration::from_secs(60),
            retention_day: Duration::from_secs(86_400),
            schedule_hour: Duration::from_secs(3600),
        }
    }
}

/// What one pass did, for tests and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassStatus {
    pub services: usize,
    pub started: usize,
    pub busy: usize,
    pub errors: Vec<String>,
}

/// The reconciler's one error type (one variant per step that can fail).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading state")]
    Store(#[from] berth_store::StoreError),
    #[error("backend call failed: {0}")]
    Backend(#[from] berth_backend::BackendError),
    #[error("backend call timed out after {0:?}")]
    Timeout(Duration),
    #[error("the instance keeps crashing ({0} restarts)")]
    CrashLoop(usize),
}

pub struct Reconciler {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    cfg: Config,
    wake: Arc<Notify>,
    in_flight: StdMutex<HashSet<ServiceId>>,
    /// Backends whose share of a pass is still running (one at a time per backend).
    backends_in_flight: StdMutex<HashSet<String>>,
    /// Per service: consecutive failures and when to try again (the error policy's backoff).
    backoff: StdMutex<HashMap<ServiceId, (u32, tokio::time::Instant)>>,
    limiter: Semaphore,
    /// Per service: when its instance was restarted lately (crash-loop detection).
    restarts: StdMutex<HashMap<ServiceId, Vec<tokio::time::Instant>>>,
    /// Set by [`Reconciler::stop`]: no new work starts.
    stopped: std::sync::atomic::AtomicBool,
}

/// This many restarts within [`CRASH_LOOP_WINDOW`] make a crash loop: no more restarts until the
/// window slides, the service shows `error`, and the error policy spaces the attempts.
const CRASH_LOOP_RESTARTS: usize = 5;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// The least time from the start of one pass to the start of the next.
const MIN_PASS_GAP: Duration = Duration::from_millis(50);

/// How long a soft-deleted service and its backups are kept when `deleteRetentionDays` is not
/// given (docs/api.md).
pub const DEFAULT_RETENTION_DAYS: u32 = 7;

/// How long a backup is kept when `backups.retentionDays` is not given (the newest confirmed
/// one is kept regardless).
pub const DEFAULT_BACKUP_RETENTION_DAYS: u32 = 7;

/// How many days the service's backups are kept (`backups.retentionDays`).
fn retention_days(svc: &Service) -> u32 {
    svc.spec
        .backups
        .retention_days
        .unwrap_or(DEFAULT_BACKUP_RETENTION_DAYS)
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        cfg: Config,
        wake: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: Semaphore::new(cfg.parallelism.max(1)),
            store,
            catalog,
            cfg,
            wake,
            in_flight: StdMutex::new(HashSet::new()),
            backends_in_flight: StdMutex::new(HashSet::new()),
            backoff: StdMutex::new(HashMap::new()),
            restarts: StdMutex::new(HashMap::new()),
            stopped: Default::default(),
        })
    }

    /// Starts no more work; what is under way finishes (see [`Reconciler::idle`]). Used before
    /// tearing a server down in-process, so no instance is started after its cleanup.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Nothing is being worked on.
    pub fn idle(&self) -> bool {
        self.in_flight.lock().unwrap().is_empty()
            && self.backends_in_flight.lock().unwrap().is_empty()
    }

    /// Asks for a pass as soon as possible. Wake-ups collapse into one pass.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs passes until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let started = tokio::time::Instant::now();
            let status = self.pass().await;
            for e in &status.errors {
                tracing::warn!(error = %e, "reconcile pass");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.period) => {}
            }
            // A pass reads every service: under a storm of wake-ups (hundreds of services
            // changing at once) they are spaced, so the API keeps its share of the CPU. A lone
            // wake-up after a quiet moment still starts a pass at once.
            tokio::time::sleep_until(started + MIN_PASS_GAP).await;
        }
    }

    /// One pass: reads every service, then, per backend and without waiting for the others,
    /// asks that backend for its instances (one batched status call) and starts a task for each
    /// service not already being worked on. A backend that hangs or fails delays only its own
    /// services; they show `error` with the reason.
    pub async fn pass(self: &Arc<Self>) -> PassStatus {
        let mut status = PassStatus::default();
        let services = match self.store.service_list(None, true).await {
            Ok(s) => s,
            Err(e) => {
                status.errors.push(format!("listing services: {e}"));
                return status;
            }
        };
        status.services = services.len();
        let mut by_entry: HashMap<(String, String), (Arc<CatalogEntry>, Vec<Service>)> =
            HashMap::new();
        for entry in self.catalog.all() {
            by_entry.insert(
                (entry.def.name.clone(), entry.def.version.clone()),
                (entry.clone(), Vec::new()),
            );
        }
        let known: HashSet<ServiceId> = services.iter().map(|s| s.id).collect();
        for svc in services {
            let key = (
                svc.spec.provider.name.clone(),
                svc.spec.provider.version.clone(),
            );
            match by_entry.get_mut(&key) {
                Some((_, list)) => list.push(svc),
                None => {
                    if self.claim(svc.id) {
                        status.started += 1;
                        let this = self.clone();
                        tokio::spawn(async move {
                            let id = svc.id;
                            let result = this.reconcile_unknown(svc).await;
                            this.finish(id, result);
                        });
                    }
                }
            }
        }
        let known = Arc::new(known);
        for ((name, version), (entry, list)) in by_entry {
            let key = format!("{name} {version}");
            if !self.backends_in_flight.lock().unwrap().insert(key.clone()) {
                status.busy += list.len();
                continue;
            }
            let this = self.clone();
            let known = known.clone();
            tokio::spawn(async move {
                this.backend_pass(entry, list, &known).await;
                this.backends_in_flight.lock().unwrap().remove(&key);
            });
        }
        status
    }

    /// Records a restart of `id`'s instance, unless it already had [`CRASH_LOOP_RESTARTS`]
    /// within the window; answers the restarts within the window, this one included if made.
    /// A refused restart is not counted, so the loop ends once the window has slid past.
    fn count_restart(&self, id: ServiceId) -> (bool, usize) {
        let now = tokio::time::Instant::now();
        let mut all = self.restarts.lock().unwrap();
        let times = all.entry(id).or_default();
        times.retain(|t| now.duration_since(*t) < CRASH_LOOP_WINDOW);
        if times.len() >= CRASH_LOOP_RESTARTS {
            return (false, times.len());
        }
        times.push(now);
        (true, times.len())
    }

    /// Marks `id` as being worked on; false when it already is, or is backing off.
    fn claim(&self, id: ServiceId) -> bool {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        if let Some((_, at)) = self.backoff.lock().unwrap().get(&id) {
            if *at > tokio::time::Instant::now() {
                return false;
            }
        }
        self.in_flight.lock().unwrap().insert(id)
    }

    fn finish(&self, id: ServiceId, result: Result<(), ReconcileError>) {
        self.in_flight.lock().unwrap().remove(&id);
        let mut backoff = self.backoff.lock().unwrap();
        match result {
            Ok(()) => {
                backoff.remove(&id);
            }
            Err(e) => {
                let n = backoff.get(&id).map_or(0, |(n, _)| *n) + 1;
                let delay = Duration::from_millis(500 * 2u64.pow(n.min(7)));
                tracing::warn!(%id, error = %e, retry_in = ?delay, "reconcile failed");
                backoff.insert(id, (n, tokio::time::Instant::now() + delay));
            }
        }
    }

    /// One backend's share of a pass: orphans, one batched status call, one task per service.
    async fn backend_pass(
        self: &Arc<Self>,
        entry: Arc<CatalogEntry>,
        services: Vec<Service>,
        known: &HashSet<ServiceId>,
    ) {
        if entry.backend.sweeps_orphans() {
            match self.call(entry.backend.list()).await {
                Ok(ids) => {
                    for id in ids.into_iter().filter(|id| !known.contains(id)) {
                        tracing::info!(%id, provider = %entry.def.name, "removing an instance no service owns");
                        if let Err(e) = self.call(entry.backend.delete(id)).await {
                            tracing::warn!(%id, error = %e, "removing an orphan");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %entry.def.name, error = %e, "listing instances")
                }
            }
        }
        let ids: Vec<ServiceId> = services.iter().map(|s| s.id).collect();
        let observed = if ids.is_empty() {
            Ok(HashMap::new())
        } else {
            self.call(entry.backend.status(&ids))
                .await
                .map_err(|e| e.to_string())
        };
        for svc in services {
            if !self.claim(svc.id) {
                continue;
            }
            let obs = match &observed {
                Ok(map) => Observation::Seen(map.get(&svc.id).cloned().map(Box::new)),
                Err(e) => Observation::Unavailable(e.clone()),
            };
            let this = self.clone();
            let entry = entry.clone();
            tokio::spawn(async move {
                let id = svc.id;
                let _permit = this.limiter.acquire().await;
                let result = this.reconcile_with(&entry, svc, obs).await;
                this.finish(id, result);
            });
        }
    }

    /// Reconciles a service whose provider is not in the catalog (it only records that).
    async fn reconcile_unknown(&self, svc: Service) -> Result<(), ReconcileError> {
        let current = self.store.status_get(svc.id).await?;
        let plan = plan::invalid_provider(&svc, current.as_ref(), now());
        if matches!(plan.action, Action::Purge) {
            self.store.service_purge(svc.id).await?;
            return Ok(());
        }
        self.record(&svc, current.as_ref(), &plan).await
    }

    /// Reconciles one service until it needs nothing more right now: plan from the pass's
    /// observation, execute, and after an action look again (so `synchronized` is recorded by the
    /// same task that created the instance).
    async fn reconcile_with(
        &self,
        entry: &CatalogEntry,
        svc: Service,
        first: Observation,
    ) -> Result<(), ReconcileError> {
        let mut obs = first;
        for _ in 0..4 {
            let current = self.store.status_get(svc.id).await?;
            let plan = match &obs {
                _ if svc.deleted_at.is_some() => {
                    let soft = entry.def.capabilities.backups && svc.spec.backups.enabled;
                    let finals = if soft {
                        self.final_backups(&svc).await?
                    } else {
                        Vec::new()
                    };
                    let days = svc
                        .spec
                        .backups
                        .delete_retention_days
                        .unwrap_or(DEFAULT_RETENTION_DAYS);
                    let deletion = plan::Deletion {
                        soft,
                        finals: &finals,
                        retention: time::Duration::try_from(self.cfg.retention_day * days)
                            .unwrap_or(time::Duration::MAX),
                    };
                    let observed = match &obs {
                        Observation::Seen(o) => Ok(o.as_deref()),
                        Observation::Unavailable(e) => Err(e.as_str()),
                    };
                    plan::plan_delete(&svc, current.as_ref(), observed, &deletion, now())
                }
                Observation::Seen(o) => plan::plan(
                    &svc,
                    current.as_ref(),
                    o.as_deref(),
                    self.cfg.ready_deadline,
                    now(),
                ),
                Observation::Unavailable(e) => plan::unreachable(&svc, current.as_ref(), e, now()),
            };
            if plan
                .events
                .iter()
                .any(|e| e.name == "berth.instance.restarted")
            {
                let (allowed, restarts) = self.count_restart(svc.id);
                if !allowed {
                    // It keeps dying: show it and let the error policy space the next restarts.
                    let why = format!(
                        "crash loop: restarted {restarts} times in {}s; backing off",
                        CRASH_LOOP_WINDOW.as_secs()
                    );
                    let failed = plan.failed(current.as_ref(), &why, now());
                    self.record(&svc, current.as_ref(), &failed).await?;
                    return Err(ReconcileError::CrashLoop(restarts));
                }
            }
            match self.execute(entry, &svc, &plan).await {
                Ok(effect) => {
                    let mut plan = plan;
                    plan.events.extend(effect);
                    self.record(&svc, current.as_ref(), &plan).await?;
                    if matches!(plan.action, Action::None | Action::Purge) {
                        // A paused service is backed up too (its data directory, as it was
                        // left), so schedules and the final backup of a delete go on.
                        if matches!(
                            plan.status.state,
                            berth_types::ServiceState::Synchronized
                                | berth_types::ServiceState::Paused
                        ) {
                            self.backups_step(entry, &svc).await?;
                        }
                        return Ok(());
                    }
                }
                Err(e) => {
                    let failed = plan.failed(current.as_ref(), &e.to_string(), now());
                    self.record(&svc, current.as_ref(), &failed).await?;
                    return Err(e);
                }
            }
            obs = match self.observe(entry, svc.id).await {
                Ok(o) => Observation::Seen(o.map(Box::new)),
                Err(e) => Observation::Unavailable(e.to_string()),
            };
        }
        Ok(())
    }

    /// Drives the service's backups through the backend (CONTRACTS.md §2 backup calls): schedules
    /// one every `intervalH`, starts the ones asked for, and polls started ones until the backend
    /// confirms them or says why not. Only a confirmed backup counts.
    async fn backups_step(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
    ) -> Result<(), ReconcileError> {
        let settings = &svc.spec.backups;
        if !entry.def.capabilities.backups || svc.deleted_at.is_some() {
            return Ok(());
        }
        if !settings.enabled {
            if let Err(e) = self.call(entry.backend.backups_off(svc.id)).await {
                tracing::warn!(service = %svc.id, error = %e, "turning backups off");
            }
            return Ok(());
        }
        let mut list = self.store.backup_list(svc.id).await?;
        if let Some(hours) = settings.interval_h {
            // The first backup is taken as soon as the service runs: with backups on, there
            // is always one to restore.
            let last = list.iter().map(|b| b.scheduled_at).max();
            let hour =
                time::Duration::try_from(self.cfg.schedule_hour).unwrap_or(time::Duration::HOUR);
            let due = plan::backup_due(last, hour * hours, hour / 12, now());
            if due != plan::BackupDue::No {
                let b = BackupEntry::scheduled(now());
                self.store.backup_insert(svc.id, &b).await?;
                if let plan::BackupDue::Missed { due } = due {
                    let ev = Event::new(
                        svc.id,
                        "berth.backup.missed",
                        Severity::Warn,
                        format!(
                            "the backup due at {due} was missed (Berth was down, or the service was paused or not running); backup {} is taken now",
                            b.id
                        ),
                        now(),
                    );
                    self.store.status_record(svc.id, None, &[ev]).await?;
                }
                list.push(b);
            }
        }
        let days = retention_days(svc);
        let keep_for =
            time::Duration::try_from(self.cfg.retention_day * days).unwrap_or(time::Duration::MAX);
        let expired = plan::expired_backups(&list, now(), keep_for);
        let pending: Vec<BackupEntry> = list
            .into_iter()
            .filter(|b| b.confirmed_at.is_none() && b.error.is_none())
            .collect();
        if pending.is_empty() && expired.is_empty() {
            return Ok(());
        }
        let req = self.backup_request(svc).await?;
        for b in pending {
            self.advance_backup(entry, svc, &req, b).await?;
        }
        for b in expired {
            self.expire_backup(entry, svc, &req, b).await?;
        }
        Ok(())
    }

    /// Retention: removes a backup's objects at the backend, then its entry. A removal that
    /// fails stays listed with the reason (one warning event per new reason) and is retried.
    async fn expire_backup(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
        req: &BackupRequest,
        mut b: BackupEntry,
    ) -> Result<(), ReconcileError> {
        let days = retention_days(svc);
        let event = match self.call(entry.backend.backup_delete(b.id, req)).await {
            Ok(()) => {
                self.store.backup_forget(b.id).await?;
                Event::new(
                    svc.id,
                    "berth.backup.expired",
                    Severity::Info,
                    format!(
                        "backup {} of {} removed: older than {days} days (retention)",
                        b.id, b.scheduled_at
                    ),
                    now(),
                )
            }
            Err(e) => {
                let reason = format!("removal (retention) failed, retried: {e}");
                if b.error.as_deref() == Some(reason.as_str()) {
                    return Ok(());
                }
                b.error = Some(reason.clone());
                self.store.backup_update(&b).await?;
                Event::new(
                    svc.id,
                    "berth.backup.removal_failed",
                    Severity::Warn,
                    format!("backup {}: {reason}", b.id),
                    now(),
                )
            }
        };
        self.store.status_record(svc.id, None, &[event]).await?;
        Ok(())
    }

    /// The backups scheduled since the service was deleted: the final backup's attempts.
    async fn final_backups(&self, svc: &Service) -> Result<Vec<BackupEntry>, ReconcileError> {
        let deleted_at = svc.deleted_at.unwrap_or_else(now);
        let mut list = self.store.backup_list(svc.id).await?;
        list.retain(|b| b.scheduled_at >= deleted_at);
        Ok(list)
    }

    /// Starts a new final backup, or moves the one under way on (one step either way).
    async fn final_backup_step(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
    ) -> Result<(), ReconcileError> {
        let finals = self.final_backups(svc).await?;
        let b = match finals.last() {
            Some(b) if b.confirmed_at.is_none() && b.error.is_none() => b.clone(),
            _ => {
                let b = BackupEntry::scheduled(now());
                self.store.backup_insert(svc.id, &b).await?;
                let ev = Event::new(
                    svc.id,
                    "berth.backup.final_requested",
                    Severity::Info,
                    format!(
                        "final backup {} requested; the instance is removed once it is confirmed",
                        b.id
                    ),
                    now(),
                );
                self.store.status_record(svc.id, None, &[ev]).await?;
                b
            }
        };
        let req = self.backup_request(svc).await?;
        self.advance_backup(entry, svc, &req, b).await
    }

    async fn backup_request(&self, svc: &Service) -> Result<BackupRequest, ReconcileError> {
        let secrets = self.store.secrets_get(svc.id).await?;
        Ok(BackupRequest {
            ms_id: svc.id,
            team_id: svc.spec.team_id,
            config: svc
                .spec
                .backups
                .config
                .as_ref()
                .and_then(|c| c.as_object().cloned())
                .unwrap_or_default(),
            secrets: secrets.backups,
            retention_days: Some(retention_days(svc)),
            service_secrets: secrets.service,
            final_backup: svc.deleted_at.is_some(),
        })
    }

    /// One step of one backup: start it, or ask the backend whether it is confirmed. The outcome
    /// (initiated, confirmed, or the reason it failed) is recorded on the entry, with an event.
    async fn advance_backup(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
        req: &BackupRequest,
        mut b: BackupEntry,
    ) -> Result<(), ReconcileError> {
        let mut events = Vec::new();
        if b.initiated_at.is_none() {
            match self.call(entry.backend.backup_start(b.id, req)).await {
                Ok(()) => b.initiated_at = Some(now()),
                Err(e) => {
                    b.error = Some(e.to_string());
                    events.push(Event::new(
                        svc.id,
                        "berth.backup.failed",
                        Severity::Error,
                        format!("backup {} could not start: {e}", b.id),
                        now(),
                    ));
                }
            }
        } else {
            match self.call(entry.backend.backup_status(b.id, req)).await {
                Ok(st) if st.exists => {
                    b.confirmed_at = Some(now());
                    events.push(Event::new(
                        svc.id,
                        "berth.backup.confirmed",
                        Severity::Info,
                        format!("backup {} confirmed by the backend", b.id),
                        now(),
                    ));
                }
                Ok(BackupState { error: Some(e), .. }) => {
                    b.error = Some(e.clone());
                    events.push(Event::new(
                        svc.id,
                        "berth.backup.failed",
                        Severity::Error,
                        format!("backup {} failed: {e}", b.id),
                        now(),
                    ));
                }
                Ok(_) => return Ok(()), // still running: asked again next pass
                Err(e) => {
                    tracing::warn!(service = %svc.id, backup = %b.id, error = %e, "backup status");
                    return Ok(());
                }
            }
        }
        self.store.backup_update(&b).await?;
        if !events.is_empty() {
            self.store.status_record(svc.id, None, &events).await?;
        }
        Ok(())
    }

    async fn observe(
        &self,
        entry: &CatalogEntry,
        id: ServiceId,
    ) -> Result<Option<InstanceStatus>, ReconcileError> {
        let mut map = self.call(entry.backend.status(&[id])).await?;
        Ok(map.remove(&id))
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = berth_backend::Result<T>>,
    ) -> Result<T, ReconcileError> {
        match tokio::time::timeout(self.cfg.backend_timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ReconcileError::Timeout(self.cfg.backend_timeout)),
        }
    }

    async fn execute(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
        plan: &Plan,
    ) -> Result<Option<PlannedEvent>, ReconcileError> {
        if plan.action == Action::Update {
            let secrets = self.store.secrets_get(svc.id).await?;
            let patch = InstancePatch {
                team_id: svc.spec.team_id,
                plan: Some(svc.spec.plan.parameters.clone()),
                config: Some(svc.spec.config.clone()),
                secrets: Some(secrets.service),
                pause: Some(svc.spec.pause),
            };
            let effect = self.call(entry.backend.update(svc.id, &patch)).await?;
            return Ok(plan::update_event(&effect));
        }
        self.perform(entry, svc, plan).await.map(|()| None)
    }

    /// The actions other than an update, which report nothing more than success.
    async fn perform(
        &self,
        entry: &CatalogEntry,
        svc: &Service,
        plan: &Plan,
    ) -> Result<(), ReconcileError> {
        match &plan.action {
            Action::None => Ok(()),
            Action::Create => {
                let secrets = self.store.secrets_get(svc.id).await?;
                let recover_from = svc.spec.recover_from.as_ref().map(|r| Recovery {
                    backup_id: r.backup_id,
                    ms_id: r.ms_id,
                    time: r.time,
                    config: r.config.clone(),
                    secrets: secrets.recover.clone(),
                });
                let spec = InstanceSpec {
                    id: svc.id,
                    team_id: svc.spec.team_id,
                    plan: svc.spec.plan.parameters.clone(),
                    config: svc.spec.config.clone(),
                    secrets: secrets.service,
                    pause: svc.spec.pause,
                    recover_from,
                };
                self.call(entry.backend.create(&spec)).await
            }
            Action::Update => unreachable!("updates go through execute"),
            Action::Delete => self.call(entry.backend.delete(svc.id)).await,
            Action::FinalBackup => self.final_backup_step(entry, svc).await,
            Action::Purge => {
                // The reaper: the backups go first, so a failure leaves the record to show it
                // and to retry from.
                if entry.def.capabilities.backups {
                    let list = self.store.backup_list(svc.id).await?;
                    if list.iter().any(|b| b.initiated_at.is_some()) {
                        let req = self.backup_request(svc).await?;
                        for b in list.iter().filter(|b| b.initiated_at.is_some()) {
                            self.call(entry.backend.backup_delete(b.id, &req)).await?;
                        }
                    }
                }
                tracing::info!(service = %svc.id, "purged: the service's records and backups are gone");
                Ok(self.store.service_purge(svc.id).await?)
            }
        }
    }

    /// Writes the planned status (only when it differs) and the planned events.
    async fn record(
        &self,
        svc: &Service,
        current: Option<&ServiceStatus>,
        plan: &Plan,
    ) -> Result<(), ReconcileError> {
        if matches!(plan.action, Action::Purge) {
            return Ok(());
        }
        let changed = current.is_none_or(|c| {
            c.state != plan.status.state
                || c.reason != plan.status.reason
                || c.observed_generation != plan.status.observed_generation
                || c.details != plan.status.details
        });
        let events: Vec<Event> = plan
            .events
            .iter()
            .map(|ev| {
                tracing::info!(service = %svc.id, event = ev.name, "{}", ev.body);
                Event::new(svc.id, ev.name, ev.severity, ev.body.clone(), now())
                    .with_attr("berth.generation", svc.generation)
                    .with_attr("berth.state", plan.status.state.as_str())
            })
            .collect();
        if changed || !events.is_empty() {
            self.store
                .status_record(svc.id, changed.then_some(&plan.status), &events)
                .await?;
        }
        Ok(())
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
