//! The per-service events log, shaped as OpenTelemetry log records (CONTRACTS.md §1).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::JsonMap;

/// OpenTelemetry severity numbers: INFO = 9, WARN = 13, ERROR = 17.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn number(self) -> i32 {
        match self {
            Self::Info => 9,
            Self::Warn => 13,
            Self::Error => 17,
        }
    }
}

/// One event. `eventName` is a stable machine name (`berth.service.state_changed`, ...); `body` is
/// the sentence a person reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub observed_timestamp: OffsetDateTime,
    pub severity_number: i32,
    pub body: String,
    #[schema(value_type = Object)]
    pub resource: JsonMap,
    #[schema(value_type = Object)]
    pub attributes: JsonMap,
}

impl Event {
    /// A new event about service `service_id`, happening now.
    pub fn new(
        service_id: uuid::Uuid,
        name: &str,
        severity: Severity,
        body: impl Into<String>,
        now: OffsetDateTime,
    ) -> Self {
        let mut resource = JsonMap::new();
        resource.insert("service.name".into(), Value::from("berth"));
        resource.insert(
            "berth.managed_service.id".into(),
            Value::from(service_id.to_string()),
        );
        Self {
            event_name: name.to_owned(),
            timestamp: now,
            observed_timestamp: now,
            severity_number: severity.number(),
            body: body.into(),
            resource,
            attributes: JsonMap::new(),
        }
    }

    pub fn with_attr(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.attributes.insert(key.to_owned(), value.into());
        self
    }
}
