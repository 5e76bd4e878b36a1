//! Planning, pure: (desired service, last status, what the backend reports) -> what to do and what
//! to record. No I/O here, so every transition is tested directly (see the tests below).

use std::time::Duration;

use berth_backend::InstanceStatus;
use berth_types::{Service, ServiceState, ServiceStatus, Severity};
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
    /// The instance is gone: remove the service's records.
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
            Action::Purge => "purge",
            Action::None => "observe",
        };
        p.event(
            "berth.backend.failed",
            Severity::Error,
            format!("{what} failed: {error}"),
        );
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
    if svc.deleted_at.is_some() {
        // Try anyway: the delete fails the same way and backs off, or the backend is back.
        p.action = Action::Delete;
        p.transition(ServiceState::Deleted, None, now);
        return p;
    }
    p.transition(
        ServiceState::Error,
        Some(format!("backend unreachable: {error}")),
        now,
    );
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

    if svc.deleted_at.is_some() {
        // The backend is always told, even when it shows no instance: a create whose outcome was
        // in doubt may still land there, and a delete of an unknown id is a no-op.
        match (state, observed) {
            (ServiceState::Deleted, None) => p.action = Action::Purge,
            (ServiceState::Deleted, Some(_)) => {} // the backend is still removing it
            _ => {
                p.action = Action::Delete;
                p.transition(ServiceState::Deleted, None, now);
            }
        }
        return p;
    }

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

    #[test]
    fn deletes_remove_the_instance_then_the_records() {
        let mut s = svc(2);
        s.deleted_at = Some(at(0));
        let synced = status(ServiceState::Synchronized, 1);
        let p = plan(&s, Some(&synced), Some(&inst(true, true)), DEADLINE, at(1));
        assert_eq!(
            (p.action.clone(), p.status.state),
            (Action::Delete, ServiceState::Deleted)
        );
        // Still listed by the backend (an asynchronous delete): wait.
        let waiting = plan(
            &s,
            Some(&p.status),
            Some(&inst(false, false)),
            DEADLINE,
            at(2),
        );
        assert_eq!(waiting.action, Action::None);
        let p = plan(&s, Some(&p.status), None, DEADLINE, at(2));
        assert_eq!(p.action, Action::Purge);
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
        let p = plan(
            &s,
            Some(&status(ServiceState::Creating, 1)),
            None,
            DEADLINE,
            at(1),
        );
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
