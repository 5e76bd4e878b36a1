//! The OpenAPI document, generated from the handlers' annotations. `docs/openapi.json` is a copy
//! that a test keeps equal to this (`BLESS=1 cargo test -p berth-api openapi` rewrites it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
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
        // What every operation may answer, documented once here: 400 for a request that cannot
        // be read (a body that is not JSON, a query value of the wrong type) and 401 without a
        // valid token. The API fuzzer in CI holds the service to this list.
        let common = [
            (
                "400",
                "The request cannot be read: malformed JSON, wrong content type, bad query",
            ),
            ("401", "Missing or invalid bearer token"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (code, why) in common {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(why)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
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
