//! The conformance kit (`berth provider test`) against the built-in backends served over HTTP,
//! the example third-party backend in Python (also driven end to end through Berth), and a
//! deliberately broken backend whose every broken rule must be named.

mod common;

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A child process killed when the test ends, however it ends.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kit(endpoint: &str, key: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["provider", "test", endpoint, "--api-key", key])
        .args(extra)
        .output()
        .unwrap()
}

fn python_backend(dir: &std::path::Path, port: u16, key: &str) -> Guard {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python-kv/backend.py"
    );
    Guard(
        Command::new("python3")
            .arg(script)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .env("BERTH_KV_API_KEY", key)
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_backends_served_over_http_pass_the_kit() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "builtin-backend-key-0123").unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let port = free_port();
    let _serve = Guard(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "backend",
                "serve",
                "--providers",
                "postgres,redis",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg("--api-key-file")
            .arg(&key_file)
            .arg("--engines-dir")
            .arg(engines_dir())
            .spawn()
            .unwrap(),
    );
    wait_http(&format!("http://127.0.0.1:{port}/health")).await;
    // Like `berth server`, it has a master key (made on first start, owner-only), which seals
    // the backup store each instance is given so WAL archiving survives a restart.
    let mode = std::fs::metadata(dir.path().join("data/master.key"))
        .expect("berth backend serve makes a master key")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    for (provider, config, secrets) in [
        (
            "redis",
            r#"{"version":"8"}"#,
            r#"{"password":"conformance-pw-1"}"#,
        ),
        (
            "postgres",
            r#"{"version":"17"}"#,
            r#"{"userPassword":"conformance-pw-1","superuserPassword":"conformance-pw-2"}"#,
        ),
    ] {
        let out = kit(
            &format!("http://127.0.0.1:{port}/{provider}"),
            "builtin-backend-key-0123",
            &["--config", config, "--secrets", secrets],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{provider}:\n{text}");
        assert!(text.contains("16 passed, 0 failed"), "{text}");
    }
    // Instances outlive the backend process by design; the kit deleted its own, and anything a
    // failure left behind is killed here.
    drop(_serve);
    for pid in instance_pids_under(dir.path()) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_passes_the_kit_and_runs_through_berth() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let key = "python-example-key-0123456";
    let _backend = python_backend(dir.path(), port, key);
    let endpoint = format!("http://127.0.0.1:{port}/kv");
    wait_http(&format!("{endpoint}/health")).await;
    let out = kit(
        &endpoint,
        key,
        &["--config", r#"{"label":"conformance"}"#, "--backups"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASS  POST /backups/{id}/status confirms it"),
        "{text}"
    );
    assert!(text.contains("20 passed, 0 failed"), "{text}");

    // Registered through the API and driven end to end.
    let s = TestServer::start_with(|c| c.retention_day = Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python-kv/provider.yml"
    ))
    .unwrap();
    let mut def =
        serde_json::to_value(berth_types::ProviderDefinition::from_yaml(&text).unwrap()).unwrap();
    def["backend"]["api"] = json!({"endpoint": endpoint, "secret": key});
    let (code, v) = s
        .call(
            reqwest::Method::POST,
            "/api/managed-services/providers",
            Some(def),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["warnings"], json!([]));
    let created = s
        .create(json!({"teamId": 3, "name": "ns", "provider": {"name": "kv"}, "config": {"label": "orders"},
                       "backups": {"enabled": true, "deleteRetentionDays": 2, "config": {"destinationPath": "local"}}}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let svc = s
        .wait_state(&id, "synchronized", Duration::from_secs(30))
        .await;
    assert_eq!(svc["status"]["details"]["namespace"], id.as_str());
    assert_eq!(svc["plan"]["parameters"]["keys"], 1000);
    let file = svc["status"]["details"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&file).exists());
    // A user change reaches the backend.
    let (code, _) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"config": {"label": "renamed"}})),
        )
        .await;
    assert_eq!(code, 200);
    let meta = dir.path().join(&id).join("meta.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&meta)
        .unwrap_or_default()
        .contains("renamed")
    {
        assert!(
            Instant::now() < deadline,
            "the PATCH never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It declares backups: a manual backup is started and confirmed through the backend.
    let path = format!("/api/managed-services/{id}");
    let (code, v) = s
        .call(reqwest::Method::POST, &format!("{path}/backups"), None)
        .await;
    assert_eq!(code, 202, "{v}");
    let backup = v["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, svc) = s.get(&path).await;
        let entry = svc["backups"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == backup.as_str())
            .cloned()
            .unwrap();
        if entry.get("confirmedAt").is_some() {
            assert!(entry.get("initiatedAt").is_some());
            break;
        }
        assert!(entry.get("error").is_none(), "{entry}");
        assert!(Instant::now() < deadline, "backup not confirmed: {entry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dir.path()
            .join("_backups")
            .join(format!("{backup}.json"))
            .exists(),
        "the backend holds the backup"
    );

    // It declares pause: Berth pauses and resumes it through PATCH.
    let (code, v) = s
        .call(reqwest::Method::PATCH, &path, Some(json!({"pause": true})))
        .await;
    assert_eq!(code, 200, "{v}");
    s.wait_state(&id, "paused", Duration::from_secs(20)).await;
    assert!(std::fs::read_to_string(&meta)
        .unwrap()
        .contains("\"paused\": true"));
    s.call(reqwest::Method::PATCH, &path, Some(json!({"pause": false})))
        .await;
    let resumed = s
        .wait_state(&id, "synchronized", Duration::from_secs(20))
        .await;
    assert_eq!(resumed["status"]["details"]["paused"], false);
    let (_, events) = s.get(&format!("{path}/events?limit=100")).await;
    let bodies = events.to_string();
    for step in [
        "synchronized -> pausing",
        "pausing -> paused",
        "paused -> unpausing",
        "unpausing -> synchronized",
    ] {
        assert!(bodies.contains(step), "no '{step}' in {bodies}");
    }

    // Backups are on: a delete takes a final backup, confirmed before the namespace goes, and
    // keeps the record (listed with includeDeleted) for deleteRetentionDays, here 2 "days" of 2 s.
    let (code, v) = s.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(code, 202, "{v}");
    let gone = s.wait_state(&id, "deleted", Duration::from_secs(20)).await;
    let deleted_at = gone["status"]["deletedAt"].as_str().unwrap().to_owned();
    let finals: Vec<Value> = gone["backups"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["scheduledAt"].as_str().unwrap() >= deleted_at.as_str())
        .cloned()
        .collect();
    assert_eq!(finals.len(), 1, "{gone}");
    assert!(finals[0].get("confirmedAt").is_some(), "{gone}");
    let final_file = dir
        .path()
        .join("_backups")
        .join(format!("{}.json", finals[0]["id"].as_str().unwrap()));
    assert!(final_file.exists(), "the final backup is at the backend");
    assert!(
        !dir.path().join(&id).exists(),
        "the namespace is removed at the backend"
    );
    let (_, listed) = s.get("/api/managed-services?team=3").await;
    assert_eq!(listed, json!([]));
    let (_, listed) = s
        .get("/api/managed-services?team=3&includeDeleted=true")
        .await;
    assert_eq!(listed[0]["id"], id.as_str());
    let (_, events) = s.get(&format!("{path}/events?limit=100")).await;
    let names: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventName"].as_str().unwrap())
        .collect();
    for name in [
        "berth.service.delete_requested",
        "berth.backup.final_requested",
        "berth.service.retained",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    // The reaper: after the retention the record and the backups are gone.
    s.wait_gone(&id, Duration::from_secs(30)).await;
    assert!(!final_file.exists(), "the reaper removes the backups");
    assert!(!dir
        .path()
        .join("_backups")
        .join(format!("{backup}.json"))
        .exists());

    // A final backup that fails keeps the instance and says why; skipping it deletes at once.
    let created = s
        .create(json!({"teamId": 3, "name": "nowhere", "provider": {"name": "kv"},
                       "backups": {"enabled": true, "config": {"destinationPath": "s3://elsewhere/"}}}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/managed-services/{id}");
    s.wait_state(&id, "synchronized", Duration::from_secs(30))
        .await;
    s.call(reqwest::Method::DELETE, &path, None).await;
    let failed = s.wait_state(&id, "error", Duration::from_secs(20)).await;
    let reason = failed["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("final backup failed") && reason.contains("not supported"),
        "{reason}"
    );
    assert!(dir.path().join(&id).exists(), "the instance is kept");
    let (code, v) = s
        .call(
            reqwest::Method::DELETE,
            &format!("{path}?skipFinalBackup=true"),
            None,
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["backups"]["enabled"], false);
    s.wait_gone(&id, Duration::from_secs(20)).await;
    assert!(!dir.path().join(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_fails_the_kit_rule_by_rule() {
    use axum::routing::{get, patch};
    // No auth, unknown ids reported, text errors, 200 instead of 201, PATCH ignores the id,
    // DELETE fails.
    let app = axum::Router::new()
        .route("/b/health", get(|| async { "ok" }))
        .route(
            "/b/",
            get(
                |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    match q {
                        Some(q) => {
                            let id = q.trim_start_matches("id=").to_owned();
                            axum::Json(json!({ id: {"plan": {}, "details": {"ready": false}} }))
                        }
                        None => axum::Json(json!([])),
                    }
                },
            )
            .post(|| async { "ok" }),
        )
        .route(
            "/b/{id}",
            patch(|| async { axum::http::StatusCode::NO_CONTENT })
                .delete(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let out = kit(
        &format!("http://{addr}/b"),
        "any-key",
        &["--ready-timeout", "2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for rule in [
        "FAIL  calls without the API key are refused with 401",
        "FAIL  GET /?id= leaves unknown ids out",
        "FAIL  POST / creates (201)",
        "FAIL  PATCH with a mismatched id is refused with 400",
        "FAIL  DELETE /{id} answers 204",
        "PASS  /health answers 200 without a key",
    ] {
        assert!(text.contains(rule), "missing '{rule}' in:\n{text}");
    }
}
