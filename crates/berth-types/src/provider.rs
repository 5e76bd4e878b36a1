//! Provider definitions (CONTRACTS.md §3): what the catalog offers and how to reach its backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// One catalog entry, as written in a `provider.yml` or sent to the providers API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderDefinition {
    /// `^[-a-z0-9_]+$`
    pub name: String,
    /// The schema version, `^v[0-9][0-9a-z]*$` (not semver).
    pub version: String,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub icon_url: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub backend: Value,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[schema(value_type = Object)]
    pub config_schema: Value,
    #[schema(value_type = Object)]
    pub secrets_schema: Value,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub details_schema: Value,
    pub plans: Vec<Plan>,
    #[serde(default = "Scope::global")]
    #[schema(value_type = Object)]
    pub scope: Value,
}

fn empty_object() -> Value {
    serde_json::json!({"type": "object"})
}

/// `{"type":"global"}` or `{"type":"team","teamIds":[...]}`.
pub struct Scope;
impl Scope {
    pub fn global() -> Value {
        serde_json::json!({"type": "global"})
    }
}

/// What a provider's backend can do beyond create, update and delete.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default)]
    pub pause: bool,
    #[serde(default)]
    pub backups: bool,
    #[serde(default)]
    pub point_in_time_recovery: bool,
}

/// A size tier. Plan ids are integers; 0/1/2 are Dev/Standard/Performance for the built-ins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, PlanParameter>,
}

/// One plan parameter: a JSON Schema for its value, and how it is priced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanParameter {
    #[serde(default)]
    pub priced_as: Option<String>,
    #[schema(value_type = Object)]
    pub schema: Value,
}

impl ProviderDefinition {
    /// Parses a `provider.yml`.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    pub fn plan(&self, id: i64) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// The engine of a built-in provider (`backend: {local: {engine: ...}}`), if it is one.
    pub fn local_engine(&self) -> Option<&str> {
        self.backend.get("local")?.get("engine")?.as_str()
    }

    /// A JSON Schema object for the plan's parameters, so they validate like config does.
    pub fn plan_parameters_schema(plan: &Plan) -> Value {
        let props: serde_json::Map<String, Value> = plan
            .parameters
            .iter()
            .map(|(k, p)| (k.clone(), p.schema.clone()))
            .collect();
        serde_json::json!({"type": "object", "additionalProperties": false, "properties": props})
    }
}
