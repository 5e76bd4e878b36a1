//! The OpenAPI document, generated from the handlers' annotations. `docs/openapi.json` is a copy
//! that a test keeps equal to this (`BLESS=1 cargo test -p berth-api openapi` rewrites it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth", description = "Self-hosted managed services: the public API."),
    paths(
        crate::services_list, crate::services_create, crate::services_get, crate::services_patch,
        crate::services_delete, crate::services_events, crate::services_logs, crate::services_env, crate::services_backup,
        crate::providers_list, crate::providers_create, crate::providers_upsert,
        crate::providers_patch, crate::providers_delete,
    ),
    components(schemas(berth_types::api::ErrorBody, berth_types::api::FieldErrorView)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON, with a trailing newline (as checked in).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut s = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}
