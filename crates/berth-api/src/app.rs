//! The app layer: every use case of the public API, independent of HTTP. Handlers parse, call one
//! method here and convert the result. Everything here only records intent and wakes the
//! reconciler; nothing starts a process.

use std::sync::Arc;

use berth_reconciler::{Catalog, CatalogEntry, Reconciler};
use berth_store::{NewService, Store};
use berth_types::api::{
    BackupsInput, BackupsView, CreateServiceRequest, CreatedServiceView, ManagedServiceView,
    PatchServiceRequest, PlanInput, PlanView, ProviderView, StatusView,
};
use berth_types::{
    validate, BackupEntry, BackupSettings, Event, FieldError, Invalid, JsonMap, PlanSelection,
    ProviderDefinition, ProviderRef, RecoverFrom, Secrets, Service, ServiceId, ServiceSpec,
    ServiceState, ServiceStatus, Severity,
};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiError;

/// How many events a resource carries in `recentEvents`.
const RECENT_EVENTS: u32 = 10;

pub struct App {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub reconciler: Arc<Reconciler>,
    /// The list of services, kept encoded and refreshed from the store's change feed.
    pub lists: crate::list_cache::ListCache,
}

/// A strong random secret: 32 alphanumerics (~190 bits), safe in URLs without encoding.
fn generate_secret() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn parse_id(id: &str) -> Result<ServiceId, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no managed service with id {id}")))
}

impl App {
    fn entry_for(&self, name: &str, version: Option<&str>) -> Result<Arc<CatalogEntry>, ApiError> {
        let found = match version {
            Some(v) => self.catalog.get(name, v),
            None => self.catalog.newest(name),
        };
        found.ok_or_else(|| {
            let known: Vec<String> = self
                .catalog
                .all()
                .iter()
                .map(|e| format!("{} {}", e.def.name, e.def.version))
                .collect();
            let path = if self.catalog.newest(name).is_some() {
                "provider.version"
            } else {
                "provider.name"
            };
            ApiError::invalid(
                path,
                format!(
                    "unknown provider '{name}{}'; the catalog has: {}",
                    version.map(|v| format!(" {v}")).unwrap_or_default(),
                    known.join(", ")
                ),
            )
        })
    }

    /// The catalog entry of an existing service (409 if its provider was removed meanwhile).
    fn entry_of(&self, svc: &Service) -> Result<Arc<CatalogEntry>, ApiError> {
        self.catalog
            .get(&svc.spec.provider.name, &svc.spec.provider.version)
            .ok_or_else(|| {
                ApiError::Conflict("the service's provider is no longer in the catalog".into())
            })
    }

    /// `recoverFrom: {id}`: a confirmed backup of a service of the same team and provider.
    async fn backup_by_id(
        &self,
        def: &berth_types::ProviderDefinition,
        team: i64,
        obj: &JsonMap,
        errors: &mut Vec<FieldError>,
    ) -> Result<Option<(ServiceId, Service, Uuid, Option<OffsetDateTime>)>, ApiError> {
        let Some(id) = obj
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
        else {
            errors.push(FieldError::new(
                "recoverFrom.id",
                "must be the id (uuid) of a backup",
            ));
            return Ok(None);
        };
        let no_such = FieldError::new("recoverFrom.id", format!("no backup {id} for team {team}"));
        let Some((owner, backup)) = self.store.backup_get(id).await? else {
            errors.push(no_such);
            return Ok(None);
        };
        let Some(source) = self
            .recovery_source(def, team, owner, "recoverFrom.id", errors)
            .await?
        else {
            return Ok(None);
        };
        if backup.confirmed_at.is_none() {
            errors.push(FieldError::new(
                "recoverFrom.id",
                format!("backup {id} is not confirmed; only a confirmed backup can be restored"),
            ));
            return Ok(None);
        }
        Ok(Some((owner, source, id, None)))
    }

    /// `recoverFrom: {msId, time}`: the newest backup confirmed by then, and WAL archived past
    /// it; a time outside what the backups and the archive cover is refused with the bounds.
    async fn point_in_time(
        &self,
        def: &berth_types::ProviderDefinition,
        team: i64,
        obj: &JsonMap,
        errors: &mut Vec<FieldError>,
    ) -> Result<Option<(ServiceId, Service, Uuid, Option<OffsetDateTime>)>, ApiError> {
        let owner = obj
            .get("msId")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok());
        let time = obj
            .get("time")
            .and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let (Some(owner), Some(time)) = (owner, time) else {
            if owner.is_none() {
                errors.push(FieldError::new(
                    "recoverFrom.msId",
                    "must be the id (uuid) of a service",
                ));
            }
            if time.is_none() {
                errors.push(FieldError::new(
                    "recoverFrom.time",
                    "must be an RFC 3339 time",
                ));
            }
            return Ok(None);
        };
        if !def.capabilities.point_in_time_recovery {
            errors.push(FieldError::new(
                "recoverFrom.time",
                format!(
                    "provider {} has no point-in-time recovery; recover from a backup with {{id}}",
                    def.name
                ),
            ));
            return Ok(None);
        }
        let Some(source) = self
            .recovery_source(def, team, owner, "recoverFrom.msId", errors)
            .await?
        else {
            return Ok(None);
        };
        let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let backups = self.store.backup_list(owner).await?;
        let base = backups
            .iter()
            .filter(|b| b.confirmed_at.is_some_and(|c| c <= time))
            .max_by_key(|b| b.confirmed_at);
        let Some(base) = base else {
            let first = backups.iter().filter_map(|b| b.confirmed_at).min();
            errors.push(FieldError::new(
                "recoverFrom.time",
                match first {
                    Some(f) => format!(
                        "{} is before the first backup (confirmed at {})",
                        fmt(time),
                        fmt(f)
                    ),
                    None => format!("service {owner} has no confirmed backup"),
                },
            ));
            return Ok(None);
        };
        let archived = self
            .store
            .status_get(owner)
            .await?
            .and_then(|st| {
                st.details
                    .get("walArchivedUntil")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok());
        if archived.is_none_or(|a| time > a) {
            errors.push(FieldError::new(
                "recoverFrom.time",
                match archived {
                    Some(a) => format!(
                        "{} is after the last archived WAL ({}); WAL is archived at least every archiveTimeoutS seconds while there are writes",
                        fmt(time),
                        fmt(a)
                    ),
                    None => format!("no WAL of service {owner} is archived yet"),
                },
            ));
            return Ok(None);
        }
        Ok(Some((owner, source, base.id, Some(time))))
    }

    /// The service a recovery reads from: same team (else it does not exist for the caller)
    /// and same provider.
    async fn recovery_source(
        &self,
        def: &berth_types::ProviderDefinition,
        team: i64,
        owner: ServiceId,
        field: &str,
        errors: &mut Vec<FieldError>,
    ) -> Result<Option<Service>, ApiError> {
        let source = match self.store.service_get(owner).await {
            Ok(s) if s.spec.team_id == team => s,
            Ok(_) | Err(berth_store::StoreError::NotFound(_)) => {
                errors.push(FieldError::new(
                    field,
                    format!("nothing to recover for team {team}"),
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if source.spec.provider.name != def.name {
            errors.push(FieldError::new(
                field,
                format!(
                    "the backups hold {} data; create a {} service to restore them",
                    source.spec.provider.name, source.spec.provider.name
                ),
            ));
            return Ok(None);
        }
        Ok(Some(source))
    }

    /// Reads `recoverFrom` (`{id, config?, secrets?}`, or `{msId, time, ...}`): the backup must
    /// be a confirmed one of a service of the same team and provider. The store it is read
    /// from is the source's backup store unless the request names another. Answers the
    /// recovery, the source service and the store's secrets; problems go to `errors`.
    async fn recovery_checked(
        &self,
        def: &berth_types::ProviderDefinition,
        team: i64,
        v: &Value,
        errors: &mut Vec<FieldError>,
    ) -> Result<Option<(RecoverFrom, Service, JsonMap)>, ApiError> {
        let Some(obj) = v.as_object() else {
            errors.push(FieldError::new(
                "recoverFrom",
                "must be an object: {id} or {msId, time}",
            ));
            return Ok(None);
        };
        for k in obj.keys() {
            if !["id", "msId", "time", "config", "secrets"].contains(&k.as_str()) {
                errors.push(FieldError::new(
                    format!("recoverFrom.{k}"),
                    "unknown field; expected id, msId, time, config, secrets",
                ));
            }
        }
        let map = |k: &str, errors: &mut Vec<FieldError>| match obj.get(k) {
            None | Some(Value::Null) => JsonMap::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                errors.push(FieldError::new(
                    format!("recoverFrom.{k}"),
                    "must be an object",
                ));
                JsonMap::new()
            }
        };
        let (config, secrets) = (map("config", errors), map("secrets", errors));
        let Some((owner, source, backup_id, time)) =
            (if obj.contains_key("msId") || obj.contains_key("time") {
                self.point_in_time(def, team, obj, errors).await?
            } else {
                self.backup_by_id(def, team, obj, errors).await?
            })
        else {
            return Ok(None);
        };
        let (config, secrets) = if config.is_empty() {
            let stored = self.store.secrets_get(owner).await?;
            let config = source
                .spec
                .backups
                .config
                .as_ref()
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let secrets = if secrets.is_empty() {
                stored.backups
            } else {
                secrets
            };
            (config, secrets)
        } else {
            (config, secrets)
        };
        if let Some(schemas) = &def.backups {
            errors.extend(validate::against_schema(
                &schemas.config_schema,
                &Value::Object(config.clone()),
                "recoverFrom.config",
                false,
            ));
            errors.extend(validate::against_schema(
                &schemas.secrets_schema,
                &Value::Object(secrets.clone()),
                "recoverFrom.secrets",
                true,
            ));
        }
        let recover = RecoverFrom {
            backup_id,
            ms_id: owner,
            time,
            config,
        };
        Ok(Some((recover, source, secrets)))
    }

    // ---- managed services -------------------------------------------------------------------

    pub async fn service_create(
        &self,
        req: CreateServiceRequest,
    ) -> Result<CreatedServiceView, ApiError> {
        let entry = self.entry_for(&req.provider.name, req.provider.version.as_deref())?;
        let def = &entry.def;
        if !visible_to(def, Some(req.team_id)) {
            return Err(ApiError::invalid(
                "provider.name",
                format!("unknown provider '{}' for team {}", def.name, req.team_id),
            ));
        }
        let mut errors = Vec::new();
        if let Err(e) = validate::service_name(&req.name) {
            errors.push(e);
        }
        if req.team_id < 1 {
            errors.push(FieldError::new("teamId", "must be a positive integer"));
        }
        let recovery = match &req.recover_from {
            None => None,
            Some(v) => {
                self.recovery_checked(def, req.team_id, v, &mut errors)
                    .await?
            }
        };
        if req.pause == Some(true) && !def.capabilities.pause {
            errors.push(FieldError::new(
                "pause",
                format!("provider {} cannot be paused", def.name),
            ));
        }
        let plan_input = req.plan.clone().unwrap_or(PlanInput {
            id: 0,
            parameters: None,
        });
        let plan = plan_selection(def, &plan_input, None, &mut errors);
        let mut config_in = req.config.clone().unwrap_or_default();
        if let Some((_, source, _)) = &recovery {
            // A recovered service is the source's data: same version, user and database.
            for (k, v) in &config_in {
                if source.spec.config.get(k).is_some_and(|s| s != v) {
                    errors.push(FieldError::new(
                        format!("config.{k}"),
                        "a recovered service takes its source's config; change it afterwards with PATCH",
                    ));
                }
            }
            config_in = source.spec.config.clone();
        }
        let config = config_checked(&entry, config_in, None, &mut errors);
        let given = req.secrets.clone().unwrap_or_default();
        errors.extend(validate::against_schema(
            &def.secrets_schema,
            &Value::Object(given.clone()),
            "secrets",
            true,
        ));
        let backups = backups_checked(def, req.backups.as_ref(), None, &mut errors);
        if !errors.is_empty() {
            return Err(Invalid(errors).into());
        }

        // Generate every declared secret the request left out; they are shown once, in this answer.
        let mut service_secrets = given;
        let mut generated = JsonMap::new();
        if let Some(props) = def
            .secrets_schema
            .get("properties")
            .and_then(Value::as_object)
        {
            for (key, prop) in props {
                let is_string = prop.get("type").and_then(Value::as_str) == Some("string");
                if is_string && !service_secrets.contains_key(key) {
                    let value = Value::from(generate_secret());
                    generated.insert(key.clone(), value.clone());
                    service_secrets.insert(key.clone(), value);
                }
            }
        }
        let (recover_from, recover_secrets) = match recovery {
            Some((r, _, secrets)) => (Some(r), secrets),
            None => (None, JsonMap::new()),
        };
        let secrets = Secrets {
            service: service_secrets,
            backups: req
                .backups
                .as_ref()
                .and_then(|b| b.secrets.clone())
                .unwrap_or_default(),
            recover: recover_secrets,
        };
        let now = OffsetDateTime::now_utc();
        let new = NewService {
            id: Uuid::new_v4(),
            spec: ServiceSpec {
                team_id: req.team_id,
                name: req.name.clone(),
                provider: ProviderRef {
                    name: def.name.clone(),
                    version: def.version.clone(),
                },
                plan,
                config,
                pause: req.pause.unwrap_or(false),
                backups,
                recover_from,
            },
            created_at: now,
        };
        let svc = self
            .store
            .service_insert(
                &new,
                &secrets,
                &ServiceStatus::new(ServiceState::Creating, 0, now),
            )
            .await?;
        let ev = Event::new(
            svc.id,
            "berth.service.requested",
            Severity::Info,
            "create requested",
            now,
        )
        .with_attr("berth.generation", svc.generation);
        self.store.event_append(svc.id, &ev).await?;
        self.reconciler.wake();
        let service = self.view(svc).await?;
        Ok(CreatedServiceView {
            service,
            generated_secrets: generated,
        })
    }

    /// The list as JSON, from the read model (`list_cache`).
    pub async fn service_list_json(
        &self,
        team: Option<i64>,
        include_deleted: bool,
    ) -> Result<String, ApiError> {
        self.lists
            .list_json(&self.store, team, include_deleted)
            .await
    }

    pub async fn service_get(&self, id: &str) -> Result<ManagedServiceView, ApiError> {
        let svc = self.store.service_get(parse_id(id)?).await?;
        self.view(svc).await
    }

    pub async fn service_patch(
        &self,
        id: &str,
        req: PatchServiceRequest,
    ) -> Result<ManagedServiceView, ApiError> {
        let id = parse_id(id)?;
        let svc = self.store.service_get(id).await?;
        if svc.deleted_at.is_some() {
            return Err(ApiError::Conflict(format!("service {id} is being deleted")));
        }
        let entry = self.entry_of(&svc)?;
        let def = &entry.def;
        let mut errors = Vec::new();
        let mut spec = svc.spec.clone();
        if let Some(name) = &req.name {
            if let Err(e) = validate::service_name(name) {
                errors.push(e);
            }
            spec.name = name.clone();
        }
        if let Some(pause) = req.pause {
            if pause && !def.capabilities.pause {
                errors.push(FieldError::new(
                    "pause",
                    format!("provider {} cannot be paused", def.name),
                ));
            }
            spec.pause = pause;
        }
        if let Some(plan) = &req.plan {
            spec.plan = plan_selection(def, plan, Some(&svc.spec.plan), &mut errors);
        }
        if let Some(patch) = &req.config {
            let mut merged = svc.spec.config.clone();
            for (k, v) in patch {
                if v.is_null() {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
            spec.config = config_checked(&entry, merged, Some(&svc.spec.config), &mut errors);
        }
        if let Some(b) = &req.backups {
            spec.backups = backups_checked(def, Some(b), Some(&svc.spec.backups), &mut errors);
        }
        let mut secrets = None;
        if req.secrets.is_some() || req.backups.as_ref().is_some_and(|b| b.secrets.is_some()) {
            let mut current = self.store.secrets_get(id).await?;
            if let Some(new) = &req.secrets {
                errors.extend(validate::against_schema(
                    &def.secrets_schema,
                    &Value::Object(new.clone()),
                    "secrets",
                    true,
                ));
                current.service.extend(new.clone());
            }
            if let Some(b) = req.backups.as_ref().and_then(|b| b.secrets.clone()) {
                current.backups = b;
            }
            secrets = Some(current);
        }
        if !errors.is_empty() {
            return Err(Invalid(errors).into());
        }
        if spec == svc.spec && secrets.is_none() {
            return self.view(svc).await;
        }
        let changed = changed_fields(&svc.spec, &spec, secrets.is_some());
        let updated = self
            .store
            .service_update(id, svc.generation, &spec, secrets.as_ref())
            .await?;
        let ev = Event::new(
            id,
            "berth.service.update_requested",
            Severity::Info,
            format!("update requested: {}", changed.join(", ")),
            OffsetDateTime::now_utc(),
        )
        .with_attr("berth.generation", updated.generation);
        self.store.event_append(id, &ev).await?;
        self.reconciler.wake();
        self.view(updated).await
    }

    pub async fn service_delete(
        &self,
        id: &str,
        skip_final_backup: bool,
    ) -> Result<ManagedServiceView, ApiError> {
        let id = parse_id(id)?;
        let now = OffsetDateTime::now_utc();
        let before = self.store.service_get(id).await?;
        let svc = self
            .store
            .service_mark_deleted(id, now, skip_final_backup)
            .await?;
        if svc.generation != before.generation {
            let body = match (before.deleted_at.is_none(), svc.spec.backups.enabled) {
                (true, true) => {
                    "delete requested; credentials destroyed; a final backup comes first"
                }
                (true, false) => "delete requested; credentials destroyed",
                (false, _) => "the final backup is skipped; the instance is removed now",
            };
            let ev = Event::new(
                id,
                "berth.service.delete_requested",
                Severity::Info,
                body,
                now,
            )
            .with_attr("berth.generation", svc.generation);
            self.store.event_append(id, &ev).await?;
        }
        self.reconciler.wake();
        self.view(svc).await
    }

    pub async fn service_events(
        &self,
        id: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<(Vec<Event>, Option<i64>), ApiError> {
        let id = parse_id(id)?;
        self.store.service_get(id).await?;
        let limit = limit.clamp(1, 500);
        let page = self.store.event_list(id, limit, before).await?;
        let next = if page.len() as u32 == limit {
            page.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok((page.into_iter().map(|(_, e)| e).collect(), next))
    }

    /// The variables of CONTRACTS.md §5. This reveals secrets, so it is a POST (never cached,
    /// never a GET) and leaves an event in the service's log.
    pub async fn service_env(
        &self,
        id: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let id = parse_id(id)?;
        let svc = self.store.service_get(id).await?;
        if svc.deleted_at.is_some() {
            return Err(ApiError::Conflict(format!(
                "service {id} is deleted; its credentials are destroyed"
            )));
        }
        if let Some(p) = prefix {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ApiError::invalid(
                    "prefix",
                    "may contain only letters, digits and '_'",
                ));
            }
        }
        let status = self.store.status_get(id).await?;
        let details = status
            .as_ref()
            .map(|s| s.details.clone())
            .unwrap_or_default();
        if !details.contains_key("port") {
            let state = status.map(|s| s.state.as_str()).unwrap_or("unknown");
            return Err(ApiError::Conflict(format!(
                "service {id} has no connection details yet (state {state})"
            )));
        }
        let secrets = self.store.secrets_get(id).await?;
        let ev = Event::new(
            id,
            "berth.credentials.read",
            Severity::Info,
            "credentials were read",
            OffsetDateTime::now_utc(),
        );
        self.store.event_append(id, &ev).await?;
        Ok(berth_engines::credentials::env_vars(
            &svc.spec.provider.name,
            &details,
            &svc.spec.config,
            &secrets.service,
            prefix,
        ))
    }

    pub async fn service_logs(&self, id: &str, lines: usize) -> Result<String, ApiError> {
        let id = parse_id(id)?;
        let svc = self.store.service_get(id).await?;
        let entry = self.entry_of(&svc)?;
        match entry.backend.logs(id, lines).await {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(ApiError::NotImplemented(format!(
                "provider {} keeps no logs Berth can read",
                svc.spec.provider.name
            ))),
            Err(e) => Err(ApiError::Unavailable(format!("reading logs: {e}"))),
        }
    }

    // ---- providers ----------------------------------------------------------------------------

    pub fn providers(&self, team: Option<i64>) -> Vec<ProviderDefinition> {
        self.catalog
            .all()
            .iter()
            .filter(|e| visible_to(&e.def, team))
            .map(|e| {
                let mut def = e.def.clone();
                // A backend's credentials are for Berth only.
                if let Some(api) = def.backend.get_mut("api").and_then(Value::as_object_mut) {
                    api.remove("secret");
                }
                def
            })
            .collect()
    }

    /// Registers a provider (CONTRACTS.md §3). With `replace` (PUT), an existing registered one
    /// is replaced; built-ins never are. Answers whether it was new, and warnings (an unreachable
    /// backend is accepted, with a warning, so a provider can be registered before it runs).
    pub async fn provider_register(
        &self,
        def: ProviderDefinition,
        replace: bool,
    ) -> Result<(bool, Vec<String>), ApiError> {
        def.validate()?;
        let existing = self.catalog.get(&def.name, &def.version);
        if existing.as_ref().is_some_and(|e| e.is_builtin()) {
            return Err(ApiError::Conflict(format!(
                "{} {} is a built-in provider",
                def.name, def.version
            )));
        }
        if existing.is_some() && !replace {
            return Err(ApiError::Conflict(format!(
                "provider {} {} is already registered",
                def.name, def.version
            )));
        }
        let entry = CatalogEntry::rest(def.clone()).ok_or_else(|| {
            ApiError::invalid(
                "backend",
                "only providers with a REST backend (backend.api.endpoint) can be registered",
            )
        })?;
        let mut warnings = Vec::new();
        if let Err(e) =
            tokio::time::timeout(std::time::Duration::from_secs(5), entry.backend.list())
                .await
                .map_err(|_| "timed out after 5s".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()))
        {
            warnings.push(format!(
                "the backend is not reachable now ({e}); its services will show error until it is"
            ));
        }
        self.store.provider_put(&def, replace).await?;
        self.catalog.put(entry);
        self.reconciler.wake();
        Ok((existing.is_none(), warnings))
    }

    /// A provider registered through the API (404 if unknown, 409 for a built-in).
    fn registered_provider(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<CatalogEntry>, ApiError> {
        let entry = self
            .catalog
            .get(name, version)
            .ok_or_else(|| ApiError::NotFound(format!("no provider {name} {version}")))?;
        if entry.is_builtin() {
            return Err(ApiError::Conflict(format!(
                "{name} {version} is a built-in provider"
            )));
        }
        Ok(entry)
    }

    /// Applies a JSON merge patch (RFC 7386) to a registered provider.
    pub async fn provider_patch(
        &self,
        name: &str,
        version: &str,
        patch: Value,
    ) -> Result<(ProviderDefinition, Vec<String>), ApiError> {
        let entry = self.registered_provider(name, version)?;
        let mut doc = serde_json::to_value(&entry.def).expect("definitions serialize");
        merge_patch(&mut doc, &patch);
        let def: ProviderDefinition =
            serde_json::from_value(doc).map_err(|e| ApiError::invalid("body", e.to_string()))?;
        if def.name != name || def.version != version {
            return Err(ApiError::invalid(
                "name",
                "name and version cannot change; register a new version instead",
            ));
        }
        let (_, warnings) = self.provider_register(def.clone(), true).await?;
        Ok((def, warnings))
    }

    pub async fn provider_delete(&self, name: &str, version: &str) -> Result<(), ApiError> {
        self.registered_provider(name, version)?;
        self.store.provider_delete(name, version).await?;
        self.catalog.remove(name, version);
        Ok(())
    }

    // ---- views ----------------------------------------------------------------------------------

    async fn view(&self, svc: Service) -> Result<ManagedServiceView, ApiError> {
        let status = self.store.status_get(svc.id).await?;
        let events = self.store.event_list(svc.id, RECENT_EVENTS, None).await?;
        let backups = self.store.backup_list(svc.id).await?;
        let mut view = to_view(svc, status, events.into_iter().map(|(_, e)| e).collect());
        view.set_backups(backups);
        Ok(view)
    }

    /// A manual backup: recorded now, started and confirmed by the reconciler through the
    /// provider's backend. Needs a provider with `capabilities.backups` and backups enabled.
    pub async fn service_backup(&self, id: &str) -> Result<BackupEntry, ApiError> {
        let id = parse_id(id)?;
        let svc = self.store.service_get(id).await?;
        if svc.deleted_at.is_some() {
            return Err(ApiError::Conflict(format!("service {id} is being deleted")));
        }
        let entry = self.entry_of(&svc)?;
        if !entry.def.capabilities.backups {
            return Err(ApiError::invalid(
                "backups",
                format!("provider {} does not support backups (yet)", entry.def.name),
            ));
        }
        if !svc.spec.backups.enabled {
            return Err(ApiError::invalid(
                "backups.enabled",
                "backups are not enabled for this service",
            ));
        }
        let b = BackupEntry::scheduled(OffsetDateTime::now_utc());
        self.store.backup_insert(id, &b).await?;
        self.reconciler.wake();
        Ok(b)
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn visible_to(def: &ProviderDefinition, team: Option<i64>) -> bool {
    match def.scope.get("type").and_then(Value::as_str) {
        Some("team") => {
            let teams = def.scope.get("teamIds").and_then(Value::as_array);
            match (team, teams) {
                (Some(t), Some(ids)) => ids.iter().any(|v| v.as_i64() == Some(t)),
                _ => false,
            }
        }
        _ => true,
    }
}

fn changed_fields(old: &ServiceSpec, new: &ServiceSpec, secrets: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.name != new.name {
        out.push("name");
    }
    if old.plan != new.plan {
        out.push("plan");
    }
    if old.config != new.config {
        out.push("config");
    }
    if old.pause != new.pause {
        out.push("pause");
    }
    if old.backups != new.backups {
        out.push("backups");
    }
    if secrets {
        out.push("secrets");
    }
    out
}

/// Resolves and validates a plan: the plan's defaults, the current parameters when the plan id
/// stays, then the request's; `x-update-constraint` against the current ones on update.
fn plan_selection(
    def: &ProviderDefinition,
    input: &PlanInput,
    current: Option<&PlanSelection>,
    errors: &mut Vec<FieldError>,
) -> PlanSelection {
    let Some(plan) = def.plan(input.id) else {
        let ids: Vec<String> = def.plans.iter().map(|p| p.id.to_string()).collect();
        errors.push(FieldError::new(
            "plan.id",
            format!(
                "no plan {} in provider {}; plans: {}",
                input.id,
                def.name,
                ids.join(", ")
            ),
        ));
        return current.cloned().unwrap_or(PlanSelection {
            id: input.id,
            parameters: JsonMap::new(),
        });
    };
    let schema = ProviderDefinition::plan_parameters_schema(plan);
    let mut params = match current {
        Some(c) if c.id == input.id => c.parameters.clone(),
        _ => JsonMap::new(),
    };
    if let Some(given) = &input.parameters {
        params.extend(given.clone());
    }
    validate::apply_defaults(&schema, &mut params);
    errors.extend(validate::against_schema(
        &schema,
        &Value::Object(params.clone()),
        "plan.parameters",
        false,
    ));
    if let Some(c) = current {
        errors.extend(validate::update_constraints(
            &schema,
            &c.parameters,
            &params,
            "plan.parameters",
        ));
    }
    PlanSelection {
        id: input.id,
        parameters: params,
    }
}

/// Defaults, installed-version check (clearer than a schema's enum error), schema, constraints.
fn config_checked(
    entry: &CatalogEntry,
    mut config: JsonMap,
    current: Option<&JsonMap>,
    errors: &mut Vec<FieldError>,
) -> JsonMap {
    let def = &entry.def;
    if let (Some(installed), Some(Value::String(v))) =
        (&entry.installed_versions, config.get("version"))
    {
        if !installed.contains(v) {
            errors.push(FieldError::new(
                "config.version",
                if installed.is_empty() {
                    format!("{} {v} is not installed on this host, and no version is; run scripts/setup.sh", def.name)
                } else {
                    format!("{} {v} is not installed on this host (installed: {}); scripts/setup.sh installs the supported ones", def.name, installed.join(", "))
                },
            ));
            return config;
        }
    }
    validate::apply_defaults(&def.config_schema, &mut config);
    errors.extend(validate::against_schema(
        &def.config_schema,
        &Value::Object(config.clone()),
        "config",
        false,
    ));
    if let Some(cur) = current {
        errors.extend(validate::update_constraints(
            &def.config_schema,
            cur,
            &config,
            "config",
        ));
        if entry.installed_versions.is_some() && cur.get("version") != config.get("version") {
            errors.push(FieldError::new(
                "config.version",
                "changing the major version of an existing service is not supported yet",
            ));
        }
    }
    config
}

fn backups_checked(
    def: &ProviderDefinition,
    input: Option<&BackupsInput>,
    current: Option<&BackupSettings>,
    errors: &mut Vec<FieldError>,
) -> BackupSettings {
    let Some(b) = input else {
        return current.cloned().unwrap_or_default();
    };
    // In a PATCH, what `backups` leaves out stays as it was, `enabled` included.
    let enabled = b
        .enabled
        .unwrap_or_else(|| current.is_some_and(|c| c.enabled));
    if enabled && !def.capabilities.backups {
        errors.push(FieldError::new(
            "backups.enabled",
            format!("provider {} does not support backups (yet)", def.name),
        ));
    }
    let range = |v: Option<i64>,
                 path: &str,
                 lo: i64,
                 hi: i64,
                 errors: &mut Vec<FieldError>|
     -> Option<u32> {
        let v = v?;
        if !(lo..=hi).contains(&v) {
            errors.push(FieldError::new(
                path,
                format!("must be between {lo} and {hi}"),
            ));
            return None;
        }
        Some(v as u32)
    };
    if enabled {
        if let Some(schemas) = &def.backups {
            // A PATCH may leave the secrets out (they are kept); a create must give them.
            let config = b
                .config
                .clone()
                .map(Value::Object)
                .or_else(|| current.and_then(|c| c.config.clone()));
            errors.extend(validate::against_schema(
                &schemas.config_schema,
                &config.unwrap_or_else(|| Value::Object(JsonMap::new())),
                "backups.config",
                false,
            ));
            if let Some(secrets) = &b.secrets {
                errors.extend(validate::against_schema(
                    &schemas.secrets_schema,
                    &Value::Object(secrets.clone()),
                    "backups.secrets",
                    true,
                ));
            } else if current.is_none_or(|c| !c.enabled) {
                errors.extend(validate::against_schema(
                    &schemas.secrets_schema,
                    &Value::Object(JsonMap::new()),
                    "backups.secrets",
                    true,
                ));
            }
        }
    }
    // In a PATCH, what `backups` leaves out stays as it was (turning backups off keeps where
    // they went: the backups taken are still removed from there in the end).
    let was = current.cloned().unwrap_or_default();
    BackupSettings {
        enabled,
        delete_retention_days: range(
            b.delete_retention_days,
            "backups.deleteRetentionDays",
            1,
            365,
            errors,
        )
        .or(was.delete_retention_days),
        interval_h: range(b.interval_h, "backups.intervalH", 1, 730, errors).or(was.interval_h),
        retention_days: range(b.retention_days, "backups.retentionDays", 1, 365, errors)
            .or(was.retention_days),
        config: b.config.clone().map(Value::Object).or(was.config),
    }
}

/// The resource as the API shows it; never a secret.
pub fn to_view(
    svc: Service,
    status: Option<ServiceStatus>,
    events: Vec<Event>,
) -> ManagedServiceView {
    let status =
        status.unwrap_or_else(|| ServiceStatus::new(ServiceState::Unknown, 0, svc.created_at));
    let synchronized = status.state == ServiceState::Synchronized;
    let state = if svc.deleted_at.is_some()
        && !matches!(status.state, ServiceState::Error | ServiceState::Deleted)
    {
        ServiceState::Deleting
    } else {
        status.state
    };
    ManagedServiceView {
        id: svc.id,
        team_id: svc.spec.team_id,
        name: svc.spec.name,
        provider: ProviderView {
            name: svc.spec.provider.name,
            version: svc.spec.provider.version.clone(),
            schema_version: svc.spec.provider.version,
        },
        plan: PlanView {
            id: svc.spec.plan.id,
            parameters: svc.spec.plan.parameters,
        },
        config: svc.spec.config,
        pause: svc.spec.pause,
        backups: BackupsView {
            enabled: svc.spec.backups.enabled,
            delete_retention_days: svc.spec.backups.delete_retention_days,
            interval_h: svc.spec.backups.interval_h,
            retention_days: svc.spec.backups.retention_days,
            entries: vec![],
        },
        created_at: svc.created_at,
        status: StatusView {
            state,
            reason: status.reason,
            details_ref: synchronized.then(|| format!("/api/managed-services/{}/env", svc.id)),
            details: status.details,
            generation: svc.generation,
            observed_generation: status.observed_generation,
            deleted_at: svc.deleted_at,
            since: status.since,
        },
        recent_events: events,
    }
}
