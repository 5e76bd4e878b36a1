//! Planning, pure: (desired service, last status, what the backend reports) -> what to do and what
//! to record. No I/O here, so every transition is tested directly (see the tests below).

use std::time::Duration;

use berth_backend::{InstanceStatus, UpdateEffect};
use berth_types::{BackupEntry, Service, ServiceState, ServiceStatus, Severity};
use serde_json::Value;
use time::OffsetDateTime;

/// The one backend call (or store purge) a step makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Create the instance, or make an existing one run again (create is idempotent).
    Create,
    /// Send the whole desired plan, config, secrets and pause.
    Update,
    Delete,
    /// Take the final backup of a deleted service, or follow the one under way.
    FinalBackup,
    /// The instance is gone and the retention is over: remove the service's backups at the
    /// backend, then its records (the reaper's step).
    Purge,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    pub name: &'static str,
    pub severity: Severity,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// The status to record once the action succeeded.
    pub status: ServiceStatus,
    pub events: Vec<PlannedEvent>,
}

impl Plan {
    fn new(action: Action, base: ServiceStatus) -> Self {
        Self {
            action,
            status: base,
            events: Vec::new(),
        }
    }

    fn event(&mut self, name: &'static str, severity: Severity, body: impl Into<String>) {
        self.events.push(PlannedEvent {
            name,
            severity,
            body: body.into(),
        });
    }

    /// Moves to `state` (with `reason`), recording a state-change event when it is a change.
    fn transition(&mut self, state: ServiceState, reason: Option<String>, now: OffsetDateTime) {
        let from = self.status.state;
        if from != state || (state == ServiceState::Error && self.status.reason != reason) {
            let mut body = format!("{} -> {}", from.as_str(), state.as_str());
            if let Some(r) = &reason {
                body.push_str(": ");
                body.push_str(r);
            }
            let severity = if state == ServiceState::Error {
                Severity::Error
            } else {
                Severity::Info
            };
            self.event("berth.service.state_changed", severity, body);
            self.status.since = now;
        }
        self.status.state = state;
        self.status.reason = reason;
    }

    /// The plan to record when executing this one failed with `error`.
    pub fn failed(
        &self,
        current: Option<&ServiceStatus>,
        error: &str,
        now: OffsetDateTime,
    ) -> Plan {
        let mut p = Plan::new(Action::None, base(current, now));
        let what = match self.action {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::FinalBackup => "final backup",
            Action::Purge => "purge",
            Action::None => "observe",
        };
        p.event(
            "berth.backend.failed",
            Severity::Error,
            format!("{what} failed: {error}"),
        );
        if self.action == Action::Purge {
            // The instance is gone already: the service stays `deleted`, with the reason, and the
            // reaper tries again after the backoff.
            p.status.reason = Some(format!("{what} failed: {error}; retrying"));
            return p;
        }
        p.transition(
            ServiceState::Error,
            Some(format!("{what} failed: {error}")),
            now,
        );
        p
    }
}

fn base(current: Option<&ServiceStatus>, now: OffsetDateTime) -> ServiceStatus {
    current
        .cloned()
        .unwrap_or_else(|| ServiceStatus::new(ServiceState::Unknown, 0, now))
}

/// The event that says how an update took effect: live, or with a restart and why.
pub fn update_event(effect: &UpdateEffect) -> Option<PlannedEvent> {
    let (name, body) = match effect {
        UpdateEffect::Live(how) => (
            "berth.instance.updated_live",
            format!("applied without a restart: {how}"),
        ),
        UpdateEffect::Restarted(why) => (
            "berth.instance.restarted_for_update",
            format!("applied with a restart: {why}"),
        ),
        UpdateEffect::Recorded | UpdateEffect::Unknown => return None,
    };
    Some(PlannedEvent {
        name,
        severity: Severity::Info,
        body,
    })
}

/// The status of a service whose provider the catalog does not have.
pub fn invalid_provider(
    svc: &Service,
    current: Option<&ServiceStatus>,
    now: OffsetDateTime,
) -> Plan {
    let mut p = Plan::new(Action::None, base(current, now));
    if svc.deleted_at.is_some() {
        p.action = Action::Purge;
        return p;
    }
    p.transition(
        ServiceState::InvalidProvider,
        Some(format!(
            "provider {} {} is not in the catalog",
            svc.spec.provider.name, svc.spec.provider.version
        )),
        now,
    );
    p
}

/// The status of a service whose backend could not be asked this time.
pub fn unreachable(
    svc: &Service,
    current: Option<&ServiceStatus>,
    error: &str,
    now: OffsetDateTime,
) -> Plan {
    let mut p = Plan::new(Action::None, base(current, now));
    debug_assert!(
        svc.deleted_at.is_none(),
        "deleted services go through plan_delete"
    );
    p.transition(
        ServiceState::Error,
        Some(format!("backend unreachable: {error}")),
        now,
    );
    p
}

/// What a deleted service's plan depends on besides its status and its instance.
#[derive(Debug, Clone)]
pub struct Deletion<'a> {
    /// Backups are on (and the provider takes them): a confirmed final backup comes before the
    /// removal, and the record and its backups are kept for `retention`.
    pub soft: bool,
    /// The final backup's attempts (the backups scheduled since the delete), oldest first.
    pub finals: &'a [BackupEntry],
    pub retention: time::Duration,
}

/// How long to wait after the `failed`-th failed final backup before the next attempt.
pub fn final_backup_backoff(failed: usize) -> time::Duration {
    let secs = 15u64
        .saturating_mul(1 << failed.saturating_sub(1).min(8))
        .min(3600);
    time::Duration::seconds(secs as i64)
}

/// Whether a scheduled backup is due: never taken (the first is taken at once), due, or due
/// long ago (Berth was down, the service was paused or not running): a missed schedule, which
/// is reported with the time it was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupDue {
    No,
    First,
    Now,
    Missed { due: OffsetDateTime },
}

/// `missed_after` is how late a scheduled backup may start before it counts as missed: five
/// minutes (a twelfth of an hour, so tests that shorten the hour shorten it too).
pub fn backup_due(
    last: Option<OffsetDateTime>,
    interval: time::Duration,
    missed_after: time::Duration,
    now: OffsetDateTime,
) -> BackupDue {
    let Some(last) = last else {
        return BackupDue::First;
    };
    let due = last + interval;
    if now < due {
        BackupDue::No
    } else if now - due > missed_after {
        BackupDue::Missed { due }
    } else {
        BackupDue::Now
    }
}

/// The backups retention removes: those scheduled more than `keep_for` before `now` that are
/// over (confirmed or failed), except the newest confirmed one, which is always kept so that a
/// service with backups on can always be restored.
pub fn expired_backups(
    list: &[BackupEntry],
    now: OffsetDateTime,
    keep_for: time::Duration,
) -> Vec<BackupEntry> {
    let newest = list
        .iter()
        .filter(|b| b.confirmed_at.is_some())
        .max_by_key(|b| b.scheduled_at)
        .map(|b| b.id);
    list.iter()
        .filter(|b| b.confirmed_at.is_some() || b.error.is_some())
        .filter(|b| Some(b.id) != newest && b.scheduled_at + keep_for < now)
        .cloned()
        .collect()
}

/// Decides the next step for a deleted service.
///
/// Without backups: delete the instance, then purge the records. With backups: take a final
/// backup and see it confirmed, delete the instance, keep the record (`deleted`, listed with
/// `includeDeleted`) and its backups for the retention, then purge both. The backend is always
/// told to delete, even when it shows no instance: a create whose outcome was in doubt may still
/// land there, and a delete of an unknown id is a no-op.
pub fn plan_delete(
    svc: &Service,
    current: Option<&ServiceStatus>,
    observed: Result<Option<&InstanceStatus>, &str>,
    d: &Deletion<'_>,
    now: OffsetDateTime,
) -> Plan {
    let mut p = Plan::new(Action::None, base(current, now));
    let deleted_at = svc.deleted_at.unwrap_or(now);
    if p.status.state == ServiceState::Deleted {
        // The instance was removed; purge once it is not listed and the retention is over.
        if matches!(observed, Ok(None)) && (!d.soft || now >= deleted_at + d.retention) {
            p.action = Action::Purge;
        }
        return p;
    }
    if d.soft {
        match observed {
            Err(e) => {
                p.transition(
                    ServiceState::Error,
                    Some(format!("backend unreachable, the final backup waits: {e}")),
                    now,
                );
                return p;
            }
            Ok(Some(_)) => match d.finals.last() {
                Some(b) if b.confirmed_at.is_some() => {}
                Some(b) if b.error.is_some() => {
                    let failed = d.finals.iter().filter(|b| b.error.is_some()).count();
                    let next = b.scheduled_at + final_backup_backoff(failed);
                    let reason = format!(
                        "final backup failed ({failed} attempts): {}; the instance is kept, next attempt at {}",
                        b.error.as_deref().unwrap_or_default(),
                        next.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    );
                    // The same failure gives the same reason: one event per failed attempt.
                    p.transition(ServiceState::Error, Some(reason), now);
                    if now >= next {
                        p.action = Action::FinalBackup;
                    }
                    return p;
                }
                _ => {
                    p.action = Action::FinalBackup;
                    p.transition(ServiceState::Deleting, None, now);
                    return p;
                }
            },
            Ok(None) => {} // nothing runs, so nothing to back up
        }
    }
    p.action = Action::Delete;
    p.transition(ServiceState::Deleted, None, now);
    if d.soft {
        let until = deleted_at + d.retention;
        p.event(
            "berth.service.retained",
            Severity::Info,
            format!(
                "instance removed; the record and its backups are kept until {}",
                until
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
        );
    }
    p
}

/// Decides the next step for one service.
pub fn plan(
    svc: &Service,
    current: Option<&ServiceStatus>,
    observed: Option<&InstanceStatus>,
    ready_deadline: Duration,
    now: OffsetDateTime,
) -> Plan {
    let mut p = Plan::new(Action::None, base(current, now));
    let state = p.status.state;
    let generation = svc.generation;

    debug_assert!(
        svc.deleted_at.is_none(),
        "deleted services go through plan_delete"
    );

    let Some(o) = observed else {
        if matches!(
            state,
            ServiceState::Synchronized | ServiceState::Updating | ServiceState::Paused
        ) {
            p.event(
                "berth.instance.missing",
                Severity::Warn,
                "the backend no longer has this instance; creating it again",
            );
        }
        p.action = Action::Create;
        p.status.observed_generation = generation;
        p.transition(ServiceState::Creating, None, now);
        return p;
    };

    p.status.details = o.details.clone();
    // Berth's own backends echo `paused`; a third-party backend that declares pause may not, and
    // then the applied generation is what says the pause went through.
    let observed_paused = o.details.get("paused").and_then(Value::as_bool);
    let pause_drift = observed_paused.is_some_and(|p| p != svc.spec.pause);
    let drift = o.plan != svc.spec.plan.parameters || o.config != svc.spec.config;
    let unseen_change =
        p.status.observed_generation < generation && state != ServiceState::Creating;

    if drift || unseen_change || pause_drift {
        p.action = Action::Update;
        p.status.observed_generation = generation;
        let was_paused = observed_paused.unwrap_or(state == ServiceState::Paused);
        let next = match (svc.spec.pause, was_paused) {
            (true, false) => ServiceState::Pausing,
            (false, true) => ServiceState::Unpausing,
            _ => ServiceState::Updating,
        };
        if drift && !unseen_change {
            p.event(
                "berth.instance.drifted",
                Severity::Warn,
                "the instance's plan or config differs from the desired one; updating it",
            );
        }
        p.transition(next, None, now);
        return p;
    }

    if svc.spec.pause {
        p.transition(ServiceState::Paused, None, now);
        return p;
    }

    if !o.running() {
        p.action = Action::Create;
        p.event(
            "berth.instance.restarted",
            Severity::Warn,
            match &o.error {
                Some(e) => format!("the instance was not running ({e}); restarting it"),
                None => "the instance was not running; restarting it".into(),
            },
        );
        return p;
    }

    if o.ready() {
        p.status.observed_generation = generation;
        if state != ServiceState::Synchronized {
            if let Some(Value::Array(missing)) =
                o.details.get("limits").and_then(|l| l.get("notEnforced"))
            {
                let list: Vec<String> = missing
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                p.event(
                    "berth.limits.not_enforced",
                    Severity::Warn,
                    format!("plan limits not enforced by the host: {}", list.join("; ")),
                );
            }
        }
        p.transition(ServiceState::Synchronized, None, now);
        return p;
    }

    if let Some(err) = &o.error {
        p.transition(ServiceState::Error, Some(err.clone()), now);
        return p;
    }
    let waiting = matches!(
        state,
        ServiceState::Creating | ServiceState::Updating | ServiceState::Unpausing
    );
    let waited = now - p.status.since;
    if waiting && waited > ready_deadline {
        p.transition(
            ServiceState::Error,
            Some(format!("not ready within {}s", ready_deadline.as_secs())),
            now,
        );
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::*;
    use serde_json::json;

    fn m(v: serde_json::Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    fn svc(generation: i64) -> Service {
        Service {
            id: uuid::Uuid::nil(),
            spec: ServiceSpec {
                team_id: 1,
                name: "db".into(),
                provider: ProviderRef {
                    name: "redis".into(),
                    version: "v1".into(),
                },
                plan: PlanSelection {
                    id: 0,
                    parameters: m(json!({"memory": 128})),
                },
                config: m(json!({"version": "7"})),
                pause: false,
                backups: BackupSettings::default(),
                recover_from: None,
            },
            generation,
            created_at: OffsetDateTime::UNIX_EPOCH,
            deleted_at: None,
        }
    }

    fn status(state: ServiceState, observed: i64) -> ServiceStatus {
        ServiceStatus::new(state, observed, OffsetDateTime::UNIX_EPOCH)
    }

    fn inst(ready: bool, running: bool) -> InstanceStatus {
        InstanceStatus {
            plan: m(json!({"memory": 128})),
            config: m(json!({"version": "7"})),
            details: m(json!({"ready": ready, "running": running, "port": 30000})),
            error: None,
        }
    }

    const DEADLINE: Duration = Duration::from_secs(60);
    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    #[test]
    fn a_new_service_is_created() {
        let p = plan(
            &svc(1),
            Some(&status(ServiceState::Creating, 0)),
            None,
            DEADLINE,
            at(1),
        );
        assert_eq!(p.action, Action::Create);
        assert_eq!(p.status.state, ServiceState::Creating);
        assert!(p.events.is_empty());
    }

    #[test]
    fn a_ready_instance_is_synchronized_with_its_generation() {
        let p = plan(
            &svc(1),
            Some(&status(ServiceState::Creating, 1)),
            Some(&inst(true, true)),
            DEADLINE,
            at(1),
        );
        assert_eq!(p.action, Action::None);
        assert_eq!(p.status.state, ServiceState::Synchronized);
        assert_eq!(p.status.observed_generation, 1);
        assert_eq!(p.status.details["port"], json!(30000));
        assert_eq!(p.events[0].body, "creating -> synchronized");
    }

    #[test]
    fn a_user_change_is_sent_as_an_update_once() {
        let mut s = svc(2);
        s.spec.plan.parameters.insert("memory".into(), json!(256));
        let p = plan(
            &s,
            Some(&status(ServiceState::Synchronized, 1)),
            Some(&inst(true, true)),
            DEADLINE,
            at(1),
        );
        assert_eq!(p.action, Action::Update);
        assert_eq!(p.status.state, ServiceState::Updating);
        assert_eq!(p.status.observed_generation, 2);
        // Once the backend echoes the new plan, nothing more is sent.
        let mut after = inst(true, true);
        after.plan = s.spec.plan.parameters.clone();
        let p2 = plan(&s, Some(&p.status), Some(&after), DEADLINE, at(2));
        assert_eq!(p2.action, Action::None);
        assert_eq!(p2.status.state, ServiceState::Synchronized);
    }

    #[test]
    fn drift_without_a_user_change_is_corrected_with_an_event() {
        let mut drifted = inst(true, true);
        drifted.config = m(json!({"version": "8"}));
        let p = plan(
            &svc(1),
            Some(&status(ServiceState::Synchronized, 1)),
            Some(&drifted),
            DEADLINE,
            at(1),
        );
        assert_eq!(p.action, Action::Update);
        assert_eq!(p.events[0].name, "berth.instance.drifted");
    }

    #[test]
    fn a_dead_instance_is_restarted_with_an_event() {
        let p = plan(
            &svc(1),
            Some(&status(ServiceState::Synchronized, 1)),
            Some(&inst(false, false)),
            DEADLINE,
            at(1),
        );
        assert_eq!(p.action, Action::Create);
        assert_eq!(p.events[0].name, "berth.instance.restarted");
        assert_eq!(p.status.state, ServiceState::Synchronized);
    }

    #[test]
    fn missing_the_readiness_deadline_is_an_error() {
        let creating = status(ServiceState::Creating, 1);
        let p = plan(
            &svc(1),
            Some(&creating),
            Some(&inst(false, true)),
            DEADLINE,
            at(30),
        );
        assert_eq!(p.status.state, ServiceState::Creating);
        let p = plan(
            &svc(1),
            Some(&creating),
            Some(&inst(false, true)),
            DEADLINE,
            at(61),
        );
        assert_eq!(p.status.state, ServiceState::Error);
        assert_eq!(p.status.reason.as_deref(), Some("not ready within 60s"));
        assert_eq!(p.events[0].severity, Severity::Error);
    }

    #[test]
    fn a_backend_error_is_shown_and_a_failed_step_is_recorded() {
        let mut broken = inst(false, true);
        broken.error = Some("disk full".into());
        let p = plan(
            &svc(1),
            Some(&status(ServiceState::Creating, 1)),
            Some(&broken),
            DEADLINE,
            at(1),
        );
        assert_eq!(
            (p.status.state, p.status.reason.as_deref()),
            (ServiceState::Error, Some("disk full"))
        );
        let create = plan(
            &svc(1),
            Some(&status(ServiceState::Creating, 0)),
            None,
            DEADLINE,
            at(1),
        );
        let f = create.failed(Some(&status(ServiceState::Creating, 0)), "no port", at(2));
        assert_eq!(f.status.state, ServiceState::Error);
        assert_eq!(f.status.observed_generation, 0);
        assert_eq!(f.events[0].name, "berth.backend.failed");
    }

    const HARD: Deletion<'static> = Deletion {
        soft: false,
        finals: &[],
        retention: time::Duration::ZERO,
    };

    #[test]
    fn deletes_remove_the_instance_then_the_records() {
        let mut s = svc(2);
        s.deleted_at = Some(at(0));
        let synced = status(ServiceState::Synchronized, 1);
        let running = inst(true, true);
        let p = plan_delete(&s, Some(&synced), Ok(Some(&running)), &HARD, at(1));
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::Delete, ServiceState::Deleted)
        );
        // Still listed by the backend (an asynchronous delete): wait.
        let stopping = inst(false, false);
        let waiting = plan_delete(&s, Some(&p.status), Ok(Some(&stopping)), &HARD, at(2));
        assert_eq!(waiting.action, Action::None);
        let p = plan_delete(&s, Some(&p.status), Ok(None), &HARD, at(2));
        assert_eq!(p.action, Action::Purge);
    }

    fn backup(scheduled: i64, confirmed: bool, error: Option<&str>) -> BackupEntry {
        BackupEntry {
            id: uuid::Uuid::new_v4(),
            scheduled_at: at(scheduled),
            initiated_at: Some(at(scheduled)),
            confirmed_at: confirmed.then(|| at(scheduled + 1)),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_schedule_passed_by_more_than_a_few_minutes_is_a_missed_one() {
        let (hour, five_min) = (time::Duration::hours(1), time::Duration::minutes(5));
        assert_eq!(backup_due(None, hour, five_min, at(0)), BackupDue::First);
        assert_eq!(
            backup_due(Some(at(0)), hour, five_min, at(3599)),
            BackupDue::No
        );
        assert_eq!(
            backup_due(Some(at(0)), hour, five_min, at(3600)),
            BackupDue::Now
        );
        assert_eq!(
            backup_due(Some(at(0)), hour, five_min, at(3600 + 300)),
            BackupDue::Now
        );
        assert_eq!(
            backup_due(Some(at(0)), hour, five_min, at(3 * 3600)),
            BackupDue::Missed { due: at(3600) }
        );
    }

    #[test]
    fn retention_removes_old_backups_but_always_keeps_the_newest_confirmed_one() {
        let day = time::Duration::seconds(100);
        let list = [
            backup(0, true, None),                  // old, confirmed: goes
            backup(10, false, Some("S3 said 403")), // old, failed: goes
            backup(20, false, None),                // old, still running: stays until it ends
            backup(150, true, None),                // young: stays
        ];
        let ids = |v: Vec<BackupEntry>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(
            ids(expired_backups(&list, at(200), day)),
            [list[0].id, list[1].id]
        );
        // Everything old: the newest confirmed one is kept anyway.
        assert_eq!(
            ids(expired_backups(&list, at(10_000), day)),
            [list[0].id, list[1].id]
        );
        let only_old = [backup(0, true, None)];
        assert!(expired_backups(&only_old, at(10_000), day).is_empty());
    }

    #[test]
    fn a_soft_delete_waits_for_a_confirmed_final_backup_then_keeps_the_record() {
        let mut s = svc(2);
        s.deleted_at = Some(at(0));
        let running = inst(true, true);
        let day = time::Duration::days(7);
        let soft = |finals| Deletion {
            soft: true,
            finals,
            retention: day,
        };
        let synced = status(ServiceState::Synchronized, 1);
        // No final backup yet: take one; the instance stays.
        let p = plan_delete(&s, Some(&synced), Ok(Some(&running)), &soft(&[]), at(1));
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::FinalBackup, ServiceState::Deleting)
        );
        // Under way: follow it.
        let started = [backup(1, false, None)];
        let p = plan_delete(
            &s,
            Some(&p.status),
            Ok(Some(&running)),
            &soft(&started),
            at(2),
        );
        assert_eq!(p.action, Action::FinalBackup);
        // Failed: shown as error, the instance kept, a new attempt after the backoff.
        let failed = [backup(1, false, Some("S3 said 403"))];
        let p = plan_delete(
            &s,
            Some(&p.status),
            Ok(Some(&running)),
            &soft(&failed),
            at(3),
        );
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::None, ServiceState::Error)
        );
        assert!(
            p.status.reason.as_deref().unwrap().contains("S3 said 403"),
            "{:?}",
            p.status.reason
        );
        assert_eq!(p.events.len(), 1);
        let again = plan_delete(
            &s,
            Some(&p.status),
            Ok(Some(&running)),
            &soft(&failed),
            at(4),
        );
        assert!(again.events.is_empty(), "one event per failure");
        let p = plan_delete(
            &s,
            Some(&p.status),
            Ok(Some(&running)),
            &soft(&failed),
            at(16),
        );
        assert_eq!(p.action, Action::FinalBackup);
        // Confirmed: the instance goes, the record stays for the retention.
        let done = [
            backup(1, false, Some("S3 said 403")),
            backup(17, true, None),
        ];
        let p = plan_delete(
            &s,
            Some(&p.status),
            Ok(Some(&running)),
            &soft(&done),
            at(20),
        );
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::Delete, ServiceState::Deleted)
        );
        assert!(p.events.iter().any(|e| e.name == "berth.service.retained"));
        let kept = plan_delete(&s, Some(&p.status), Ok(None), &soft(&done), at(6 * 86400));
        assert_eq!(kept.action, Action::None);
        let reaped = plan_delete(&s, Some(&p.status), Ok(None), &soft(&done), at(7 * 86400));
        assert_eq!(reaped.action, Action::Purge);
    }

    #[test]
    fn the_final_backup_backs_off_and_an_unreachable_backend_keeps_the_instance() {
        assert_eq!(final_backup_backoff(1), time::Duration::seconds(15));
        assert_eq!(final_backup_backoff(3), time::Duration::seconds(60));
        assert_eq!(final_backup_backoff(40), time::Duration::seconds(3600));
        let mut s = svc(2);
        s.deleted_at = Some(at(0));
        let d = Deletion {
            soft: true,
            finals: &[],
            retention: time::Duration::days(1),
        };
        let p = plan_delete(
            &s,
            Some(&status(ServiceState::Synchronized, 1)),
            Err("connection refused"),
            &d,
            at(1),
        );
        assert_eq!(
            (p.action, p.status.state),
            (Action::None, ServiceState::Error)
        );
    }

    #[test]
    fn a_backend_that_does_not_echo_pause_is_paused_by_generation() {
        let mut s = svc(2);
        s.spec.pause = true;
        let synced = status(ServiceState::Synchronized, 1);
        let p = plan(&s, Some(&synced), Some(&inst(true, true)), DEADLINE, at(1));
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::Update, ServiceState::Pausing)
        );
        // The PATCH went through (generation 2 applied); no `paused` in details: paused.
        let p2 = plan(
            &s,
            Some(&p.status),
            Some(&inst(true, true)),
            DEADLINE,
            at(2),
        );
        assert_eq!(
            (p2.action, p2.status.state),
            (Action::None, ServiceState::Paused)
        );
        // Resume: generation 3.
        let mut r = svc(3);
        r.spec.pause = false;
        let p3 = plan(
            &r,
            Some(&p2.status),
            Some(&inst(true, true)),
            DEADLINE,
            at(3),
        );
        assert_eq!(
            (p3.action.clone(), p3.status.state),
            (Action::Update, ServiceState::Unpausing)
        );
        let p4 = plan(
            &r,
            Some(&p3.status),
            Some(&inst(true, true)),
            DEADLINE,
            at(4),
        );
        assert_eq!(p4.status.state, ServiceState::Synchronized);
    }

    #[test]
    fn a_delete_reaches_the_backend_even_when_it_shows_nothing() {
        // A create timed out (outcome unknown), then the user deleted the service.
        let mut s = svc(2);
        s.deleted_at = Some(at(0));
        let creating = status(ServiceState::Creating, 1);
        let p = plan_delete(&s, Some(&creating), Ok(None), &HARD, at(1));
        assert_eq!(p.action, Action::Delete);
        // Also when the backend cannot be asked: the delete fails the same way and backs off.
        let p = plan_delete(&s, Some(&creating), Err("timed out"), &HARD, at(1));
        assert_eq!(p.action, Action::Delete);
    }

    #[test]
    fn an_unreachable_backend_shows_error_with_the_reason() {
        let synced = status(ServiceState::Synchronized, 1);
        let p = unreachable(&svc(1), Some(&synced), "GET /: timed out", at(1));
        assert_eq!(p.status.state, ServiceState::Error);
        assert_eq!(
            p.status.reason.as_deref(),
            Some("backend unreachable: GET /: timed out")
        );
        assert_eq!(p.events.len(), 1);
        // The same failure again records no new event.
        let again = unreachable(&svc(1), Some(&p.status), "GET /: timed out", at(2));
        assert!(again.events.is_empty());
    }
}
