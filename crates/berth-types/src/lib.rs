//! Berth's domain types, shared by every layer and free of I/O.
//!
//! - [`provider`]: the provider definition of CONTRACTS.md §3 (catalog entries).
//! - [`service`]: what a user asked for (spec, with a generation) and what runs (status, with the
//!   generation it reflects), plus the lifecycle states a user can see.
//! - [`event`]: the per-service events log, shaped as OpenTelemetry log records.
//! - [`api`]: the request and response bodies of the public API.
//! - [`validate`]: names, JSON Schema checks, defaults and update constraints, all answering with
//!   the JSON path of the offending field.

pub mod api;
pub mod event;
pub mod provider;
pub mod service;
pub mod validate;

pub use event::{Event, Severity};
pub use provider::{Capabilities, Plan, PlanParameter, ProviderDefinition};
pub use service::{
    BackupEntry, BackupSettings, PlanSelection, ProviderRef, RecoverFrom, Secrets, Service,
    ServiceId, ServiceSpec, ServiceState, ServiceStatus,
};
pub use validate::{FieldError, Invalid};

/// A JSON object, the shape of config, secrets, plan parameters and details.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;
