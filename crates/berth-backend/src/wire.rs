//! The Provider REST API's bodies (CONTRACTS.md §2), shared by the client ([`crate::rest`]) and
//! the server ([`crate::contract_server`]) so the two cannot drift apart.

use berth_types::JsonMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BackupRequest, BackupState, InstancePatch, InstanceSpec, InstanceStatus};

/// `{"parameters": {...}}`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanBody {
    #[serde(default)]
    pub parameters: JsonMap,
}

/// `POST /`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    pub id: Uuid,
    pub team_id: i64,
    #[serde(default)]
    pub custom_subdomain: Option<String>,
    #[serde(default)]
    pub plan: PlanBody,
    #[serde(default)]
    pub config: JsonMap,
    #[serde(default)]
    pub secrets: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_from: Option<serde_json::Value>,
    /// Berth's extension for its built-in backends: create the instance paused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
}

/// `PATCH /{id}`: an absent section means unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchBody {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub team_id: Option<i64>,
    #[serde(default)]
    pub custom_subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<JsonMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<JsonMap>,
    /// Berth's extension for pause and resume (CONTRACTS.md §2 leaves pause to each platform):
    /// `true` stops the instance and keeps its data, `false` starts it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
}

/// One value of the `GET /?id=` map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    #[serde(default)]
    pub plan: PlanBody,
    #[serde(default)]
    pub config: JsonMap,
    #[serde(default)]
    pub details: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `{"error": "..."}`, every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl From<&InstanceSpec> for CreateBody {
    fn from(s: &InstanceSpec) -> Self {
        Self {
            id: s.id,
            team_id: s.team_id,
            custom_subdomain: None,
            plan: PlanBody {
                parameters: s.plan.clone(),
            },
            config: s.config.clone(),
            secrets: s.secrets.clone(),
            recover_from: s.recover_from.as_ref().map(|r| {
                serde_json::json!({
                    "id": r.backup_id,
                    "msId": r.ms_id,
                    "time": r.time.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                    "config": r.config,
                    "secrets": r.secrets,
                })
            }),
            pause: s.pause,
        }
    }
}

impl From<CreateBody> for InstanceSpec {
    fn from(b: CreateBody) -> Self {
        Self {
            id: b.id,
            team_id: b.team_id,
            plan: b.plan.parameters,
            config: b.config,
            secrets: b.secrets,
            pause: b.pause,
            recover_from: b.recover_from.as_ref().and_then(recovery_of),
        }
    }
}

/// `recoverFrom` as a backend receives it: `{id, msId, time?, config, secrets}`.
fn recovery_of(v: &serde_json::Value) -> Option<crate::Recovery> {
    let uuid = |k: &str| v.get(k)?.as_str()?.parse::<Uuid>().ok();
    let map = |k: &str| {
        v.get(k)
            .and_then(|m| m.as_object())
            .cloned()
            .unwrap_or_default()
    };
    Some(crate::Recovery {
        backup_id: uuid("id")?,
        ms_id: uuid("msId")?,
        time: v.get("time").and_then(|t| t.as_str()).and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }),
        config: map("config"),
        secrets: map("secrets"),
    })
}

impl PatchBody {
    pub fn new(id: Uuid, team_id: i64, p: &InstancePatch) -> Self {
        Self {
            id: Some(id),
            team_id: Some(team_id),
            custom_subdomain: None,
            plan: p.plan.clone().map(|parameters| PlanBody { parameters }),
            config: p.config.clone(),
            secrets: p.secrets.clone(),
            pause: p.pause,
        }
    }

    pub fn into_patch(self) -> InstancePatch {
        InstancePatch {
            team_id: self.team_id.unwrap_or_default(),
            plan: self.plan.map(|p| p.parameters),
            config: self.config,
            secrets: self.secrets,
            pause: self.pause,
        }
    }
}

impl From<StatusBody> for InstanceStatus {
    fn from(b: StatusBody) -> Self {
        Self {
            plan: b.plan.parameters,
            config: b.config,
            details: b.details,
            error: b.error,
        }
    }
}

impl From<InstanceStatus> for StatusBody {
    fn from(s: InstanceStatus) -> Self {
        Self {
            plan: PlanBody { parameters: s.plan },
            config: s.config,
            details: s.details,
            error: s.error,
        }
    }
}

/// The backup body of `PUT /backups/{id}`, `POST /backups/{id}/status`, `DELETE /backups/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupBody {
    pub ms_id: Uuid,
    pub team_id: i64,
    #[serde(default)]
    pub config: JsonMap,
    #[serde(default)]
    pub secrets: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// `{"exists": bool, "error"?: string}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupStatusBody {
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&BackupRequest> for BackupBody {
    fn from(r: &BackupRequest) -> Self {
        Self {
            ms_id: r.ms_id,
            team_id: r.team_id,
            config: r.config.clone(),
            secrets: r.secrets.clone(),
            retention_days: r.retention_days,
        }
    }
}

impl From<BackupBody> for BackupRequest {
    fn from(b: BackupBody) -> Self {
        Self {
            ms_id: b.ms_id,
            team_id: b.team_id,
            config: b.config,
            secrets: b.secrets,
            retention_days: b.retention_days,
            service_secrets: JsonMap::new(),
            final_backup: false,
        }
    }
}

impl From<BackupStatusBody> for BackupState {
    fn from(b: BackupStatusBody) -> Self {
        Self {
            exists: b.exists,
            error: b.error,
        }
    }
}

impl From<BackupState> for BackupStatusBody {
    fn from(b: BackupState) -> Self {
        Self {
            exists: b.exists,
            error: b.error,
        }
    }
}
