//! Request and response bodies of the public API (CONTRACTS.md §1). Internal records
//! ([`crate::Service`], [`crate::ServiceStatus`]) are converted into these views at the edge, so the
//! wire format can stay stable while the internals move.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Event, JsonMap, ServiceState};

/// `provider` in a create body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSelector {
    pub name: String,
    /// The provider's schema version (`v1`); defaults to the newest the catalog has.
    #[serde(default)]
    pub version: Option<String>,
}

/// `plan` in a create or update body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub id: i64,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<JsonMap>,
}

/// `backups` in a create or update body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupsInput {
    /// Left out: off in a create, unchanged in a PATCH.
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub delete_retention_days: Option<i64>,
    #[serde(default)]
    pub interval_h: Option<i64>,
    /// How long each backup is kept, 1..365 days (default 7); the newest confirmed one is
    /// always kept.
    #[serde(default)]
    pub retention_days: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<JsonMap>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub secrets: Option<JsonMap>,
}

/// `POST /api/managed-services`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateServiceRequest {
    pub team_id: i64,
    pub name: String,
    pub provider: ProviderSelector,
    #[serde(default)]
    pub plan: Option<PlanInput>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<JsonMap>,
    /// Write-only. Secrets the provider declares and the body leaves out are generated and returned
    /// once, in the create response.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub secrets: Option<JsonMap>,
    #[serde(default)]
    pub backups: Option<BackupsInput>,
    #[serde(default)]
    pub pause: Option<bool>,
    /// Restoring from a backup arrives with the backup issue; until then it is refused with 501.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub recover_from: Option<Value>,
}

/// `PATCH /api/managed-services/{id}`: any subset; an absent field means unchanged.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchServiceRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub pause: Option<bool>,
    #[serde(default)]
    pub plan: Option<PlanInput>,
    /// Merged key by key into the current config; `null` removes a key (its default applies).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<JsonMap>,
    /// A secret reset: the given secrets replace the current ones.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub secrets: Option<JsonMap>,
    #[serde(default)]
    pub backups: Option<BackupsInput>,
}

/// `provider` in a resource.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderView {
    pub name: String,
    pub version: String,
    pub schema_version: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanView {
    pub id: i64,
    #[schema(value_type = Object)]
    pub parameters: JsonMap,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsView {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_retention_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_h: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// The service's backups, oldest first.
    pub entries: Vec<crate::BackupEntry>,
}

/// `status` in a resource.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub state: ServiceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the connection details of a `synchronized` service are: its own `details` below and
    /// the credentials endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_ref: Option<String>,
    #[schema(value_type = Object)]
    pub details: JsonMap,
    pub generation: i64,
    pub observed_generation: i64,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
}

/// A managed service as the API shows it. Never carries a secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedServiceView {
    pub id: Uuid,
    pub team_id: i64,
    pub name: String,
    pub provider: ProviderView,
    pub plan: PlanView,
    #[schema(value_type = Object)]
    pub config: JsonMap,
    pub pause: bool,
    pub backups: BackupsView,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    pub status: StatusView,
    pub recent_events: Vec<Event>,
}

impl ManagedServiceView {
    /// Lists the service's backups and, when the newest one that ended failed, says so in
    /// `status.reason` (a running service keeps its state: the failure is the backup's).
    pub fn set_backups(&mut self, entries: Vec<crate::BackupEntry>) {
        let failed = entries
            .iter()
            .filter(|b| b.confirmed_at.is_some() || b.error.is_some())
            .max_by_key(|b| b.scheduled_at)
            .filter(|b| b.confirmed_at.is_none());
        if let (Some(b), None) = (failed, &self.status.reason) {
            let last_good = entries
                .iter()
                .filter_map(|b| b.confirmed_at)
                .max()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
            self.status.reason = Some(format!(
                "backup {} failed: {}; {}",
                b.id,
                b.error.as_deref().unwrap_or_default(),
                match last_good {
                    Some(t) => format!("the last confirmed backup is from {t}"),
                    None => "no backup is confirmed yet".into(),
                }
            ));
        }
        self.backups.entries = entries;
    }
}

/// The create response: the resource, plus the secrets Berth generated (shown this once only).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedServiceView {
    #[serde(flatten)]
    pub service: ManagedServiceView,
    #[schema(value_type = Object)]
    pub generated_secrets: JsonMap,
}

/// The environment variables an application uses to reach a service (CONTRACTS.md §5).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnvView {
    /// Ordered pairs: `[["DATABASE_URL", "postgresql://..."], ...]`.
    #[schema(value_type = Object)]
    pub variables: indexmap_like::Pairs,
}

pub mod indexmap_like {
    //! An ordered map without another dependency: serialized as a JSON object in insertion order.
    use serde::ser::SerializeMap;

    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Pairs(pub Vec<(String, String)>);

    impl serde::Serialize for Pairs {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
}

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldErrorView {
    /// JSON path of the field in the request body, e.g. `config.version`.
    pub path: String,
    pub reason: String,
}

/// The one error body of the public API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fields: Vec<FieldErrorView>,
}
