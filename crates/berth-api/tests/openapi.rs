//! `docs/openapi.json` is the generated document, checked in. Run with `BLESS=1` to rewrite it
//! after an intended API change; otherwise any difference fails.

use std::path::PathBuf;

#[test]
fn the_checked_in_openapi_document_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = berth_api::openapi::document_json();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date; run `BLESS=1 cargo test -p berth-api --test openapi` and commit it"
    );
}

#[test]
fn every_route_is_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&berth_api::openapi::document_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/managed-services", &["get", "post"][..]),
        ("/api/managed-services/{id}", &["get", "patch", "delete"]),
        ("/api/managed-services/{id}/events", &["get"]),
        ("/api/managed-services/{id}/logs", &["get"]),
        ("/api/managed-services/{id}/env", &["post"]),
        ("/api/managed-services/providers", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths[path].get(*m).is_some(),
                "{m} {path} is not in the OpenAPI document"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
