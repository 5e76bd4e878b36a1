//! Bad input, property-based: the OpenAPI document drives schemathesis (installed by
//! `scripts/test-tools.sh`) against a real `berth server`. Every operation gets schema-valid and
//! schema-breaking requests (coverage and fuzzing phases, seeded), and the run fails on any 5xx,
//! an answer that breaks its documented schema or status codes, or a schema-breaking request that
//! is accepted.
//!
//! One check is left out: `positive_data_acceptance` expects every schema-valid request to be
//! accepted, but whether a provider is in the catalog, or a config fits that provider's own JSON
//! Schema, cannot be written into the OpenAPI document; those answer 422 with the field.

mod common;

use std::path::PathBuf;

use common::*;

fn schemathesis() -> PathBuf {
    let tools = std::env::var_os("BERTH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/berth/tools".into());
    let st = tools.join("schemathesis/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run ./scripts/test-tools.sh (./scripts/test.sh does)",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_fuzzer_finds_no_server_error_and_no_broken_contract() {
    let st = schemathesis();
    let s = TestServer::start().await;
    // One real service, so that list and read answers carry a full resource.
    let created = s.create(redis_body("fuzz-target", "7")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", std::time::Duration::from_secs(60))
        .await;

    let out = tokio::process::Command::new(&st)
        .arg("run")
        .arg(format!("{}/api/openapi.json", s.base))
        .args(["-H", &format!("Authorization: Bearer {}", s.token)])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--seed", "20261122"])
        .env("NO_COLOR", "1")
        .current_dir(s.dir.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Tested: 14"), "every operation is exercised");
    // The server is still whole: the service it had is untouched.
    s.wait_state(&id, "synchronized", std::time::Duration::from_secs(10))
        .await;
}
