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
    /// Describes the backup store (`backups.config` / `backups.secrets` of a service):
    /// `{configSchema, secretsSchema}` (CONTRACTS.md §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupStoreSchemas>,
    #[serde(default = "Scope::global")]
    #[schema(value_type = Object)]
    pub scope: Value,
}

fn empty_object() -> Value {
    serde_json::json!({"type": "object"})
}

/// The JSON Schemas of a service's backup settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStoreSchemas {
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config_schema: Value,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub secrets_schema: Value,
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

    /// Where a REST provider's backend is: `backend.api.endpoint` (or its alias `backend.rest.url`)
    /// and the secret Berth sends as `X-API-Key` / `Bearer`.
    pub fn rest_endpoint(&self) -> Option<(&str, Option<&str>)> {
        if let Some(api) = self.backend.get("api") {
            let endpoint = api.get("endpoint")?.as_str()?;
            return Some((endpoint, api.get("secret").and_then(Value::as_str)));
        }
        let rest = self.backend.get("rest")?;
        Some((
            rest.get("url")?.as_str()?,
            rest.get("secret").and_then(Value::as_str),
        ))
    }

    /// Checks the definition itself (CONTRACTS.md §3), every problem with its path.
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        use crate::FieldError;
        let mut errors = Vec::new();
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !name_ok {
            errors.push(FieldError::new("name", "must match ^[-a-z0-9_]+$"));
        }
        let mut v = self.version.chars();
        let version_ok = v.next() == Some('v')
            && v.next().is_some_and(|c| c.is_ascii_digit())
            && v.all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
        if !version_ok {
            errors.push(FieldError::new(
                "version",
                "must match ^v[0-9][0-9a-z]*$ (a schema version, not semver)",
            ));
        }
        for (path, schema) in [
            ("configSchema", &self.config_schema),
            ("secretsSchema", &self.secrets_schema),
            ("detailsSchema", &self.details_schema),
        ] {
            schema_object(path, schema, &mut errors);
        }
        if self.plans.is_empty() {
            errors.push(FieldError::new("plans", "at least one plan is needed"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, plan) in self.plans.iter().enumerate() {
            if !seen.insert(plan.id) {
                errors.push(FieldError::new(
                    format!("plans[{i}].id"),
                    format!("plan id {} is used twice", plan.id),
                ));
            }
            for (key, param) in &plan.parameters {
                let path = format!("plans[{i}].parameters.{key}.schema");
                if !param.schema.is_object() {
                    errors.push(FieldError::new(path, "must be a JSON Schema object"));
                } else if let Err(e) = jsonschema::validator_for(&param.schema) {
                    errors.push(FieldError::new(
                        path,
                        format!("is not a valid JSON Schema: {e}"),
                    ));
                }
            }
        }
        let has_backend = self.local_engine().is_some()
            || self.rest_endpoint().is_some()
            || self.backend.get("landscape").is_some();
        if !has_backend {
            errors.push(FieldError::new(
                "backend",
                "needs api.endpoint (a REST backend), rest.url, or landscape",
            ));
        }
        if let Some((endpoint, _)) = self.rest_endpoint() {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                errors.push(FieldError::new(
                    "backend.api.endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.capabilities.point_in_time_recovery && !self.capabilities.backups {
            errors.push(FieldError::new(
                "capabilities.pointInTimeRecovery",
                "implies backups: set capabilities.backups too",
            ));
        }
        match self.scope.get("type").and_then(Value::as_str) {
            Some("global") => {}
            Some("team") => {
                let ok = self
                    .scope
                    .get("teamIds")
                    .and_then(Value::as_array)
                    .is_some_and(|ids| {
                        !ids.is_empty() && ids.iter().all(|v| v.as_i64().is_some_and(|n| n > 0))
                    });
                if !ok {
                    errors.push(FieldError::new(
                        "scope.teamIds",
                        "a team scope needs a non-empty list of positive team ids",
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                "scope.type",
                "must be \"global\" or \"team\"",
            )),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(crate::Invalid(errors))
        }
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

/// A provider schema must be a JSON Schema object describing an object.
fn schema_object(path: &str, schema: &Value, errors: &mut Vec<crate::FieldError>) {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        errors.push(crate::FieldError::new(
            path,
            "must be a JSON Schema with type: object",
        ));
        return;
    }
    if let Err(e) = jsonschema::validator_for(schema) {
        errors.push(crate::FieldError::new(
            path,
            format!("is not a valid JSON Schema: {e}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: kv
version: v1
backend: {rest: {url: "http://127.0.0.1:7070/kv", secret: "k"}}
configSchema: {type: object}
secretsSchema: {type: object}
plans: [{id: 0, name: Small}]
"#;

    #[test]
    fn a_good_definition_passes_and_the_alias_resolves() {
        let def = ProviderDefinition::from_yaml(GOOD).unwrap();
        def.validate().unwrap();
        assert_eq!(
            def.rest_endpoint(),
            Some(("http://127.0.0.1:7070/kv", Some("k")))
        );
    }

    #[test]
    fn every_broken_rule_is_named() {
        let text = GOOD
            .replace("name: kv", "name: Key Value")
            .replace("version: v1", "version: 1.0.0")
            .replace(
                "configSchema: {type: object}",
                "configSchema: {type: string}",
            )
            .replace(
                "plans: [{id: 0, name: Small}]",
                "plans: [{id: 0, name: A}, {id: 0, name: B}]",
            )
            .replace("http://127.0.0.1:7070/kv", "ftp://x");
        let def = ProviderDefinition::from_yaml(&text).unwrap();
        let paths: Vec<String> = def
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "name",
                "version",
                "configSchema",
                "plans[1].id",
                "backend.api.endpoint"
            ]
        );
    }

    #[test]
    fn the_built_in_definitions_are_valid() {
        for text in [
            include_str!("../../../providers/postgres/provider.yml"),
            include_str!("../../../providers/redis/provider.yml"),
        ] {
            ProviderDefinition::from_yaml(text)
                .unwrap()
                .validate()
                .unwrap();
        }
    }
}
