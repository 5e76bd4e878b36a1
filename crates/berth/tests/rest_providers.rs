//! Custom providers: a REST backend registered from a providers directory is driven end to end
//! through Berth's API, and a broken one never stalls the others.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_backend::local::{HostConfig, LocalBackend, LocalHost};
use berth_backend::{InstancePatch, ProviderBackend};
use common::*;
use serde_json::json;

const KEY: &str = "a-backend-key-of-24-chars";

/// `berth backend serve` in this process: the Redis engine over the Provider REST API.
async fn serve_backend(dir: &std::path::Path) -> (String, Arc<dyn ProviderBackend>) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let run_as = berth::server::run_as("berth").unwrap();
    let ports = port_window();
    let host = LocalHost::open(
        HostConfig {
            data_dir: dir.to_path_buf(),
            engines_dir: engines_dir(),
            ports: ports.0..ports.1,
            start_timeout: Duration::from_secs(30),
            run_as,
            cipher: None,
        },
        Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    let local: Arc<dyn ProviderBackend> = Arc::new(LocalBackend::new(
        host,
        Arc::new(berth_engines::redis::Redis),
    ));
    let router = berth_backend::contract_server::router(
        HashMap::from([("kv".to_owned(), local.clone())]),
        Some(KEY),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/kv"), local)
}

fn provider_yml(name: &str, endpoint: &str) -> String {
    format!(
        r#"name: {name}
version: v1
displayName: A key-value store
backend: {{api: {{endpoint: "{endpoint}", secret: "{KEY}"}}}}
capabilities: {{pause: false, backups: false}}
configSchema: {{type: object, properties: {{version: {{type: string, default: "8"}}}}}}
secretsSchema: {{type: object, properties: {{password: {{type: string, minLength: 12}}}}}}
detailsSchema: {{type: object, properties: {{hostname: {{type: string}}, port: {{type: integer}}, ready: {{type: boolean}}}}}}
plans:
  - id: 0
    name: Small
    parameters:
      memory: {{pricedAs: ram-mib, schema: {{type: integer, default: 64, minimum: 32}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_provider_is_driven_end_to_end_and_a_broken_one_stalls_nobody() {
    let backend_dir = tempfile::tempdir().unwrap();
    let (endpoint, local) = serve_backend(backend_dir.path()).await;
    let providers = tempfile::tempdir().unwrap();
    std::fs::write(
        providers.path().join("kv.yml"),
        provider_yml("kv", &endpoint),
    )
    .unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        providers.path().join("broken.yml"),
        provider_yml("broken", &format!("http://127.0.0.1:{dead}/x")),
    )
    .unwrap();
    let dir = providers.path().to_path_buf();
    let s = TestServer::start_with(move |cfg| cfg.providers_dir = Some(dir)).await;

    let (_, catalog) = s.get("/api/managed-services/providers").await;
    let kv = catalog
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kv")
        .expect("kv is in the catalog")
        .clone();
    assert!(
        kv["backend"]["api"].get("secret").is_none(),
        "a backend's secret is never shown: {kv}"
    );

    let body = |name: &str, provider: &str| json!({"teamId": 1, "name": name, "provider": {"name": provider}});
    let created = s.create(body("kv-1", "kv")).await;
    let broken = s.create(body("b-1", "broken")).await;
    let builtin = s.create(redis_body("builtin", "7")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let password = created["generatedSecrets"]["password"]
        .as_str()
        .unwrap()
        .to_owned();

    // The broken backend's service shows error with the reason; the others converge meanwhile.
    let b = s
        .wait_state(
            broken["id"].as_str().unwrap(),
            "error",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        b["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{}",
        b["status"]
    );
    s.wait_state(
        builtin["id"].as_str().unwrap(),
        "synchronized",
        Duration::from_secs(30),
    )
    .await;
    let svc = s
        .wait_state(&id, "synchronized", Duration::from_secs(30))
        .await;
    let port = svc["status"]["details"]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        redis_cmd(port, &password, &["SET", "via", "rest"]).await,
        "+OK"
    );
    assert_eq!(svc["plan"]["parameters"]["memory"], 64);

    // Drift at the backend is corrected: Berth sends the desired plan back.
    local
        .update(
            created["id"].as_str().unwrap().parse().unwrap(),
            &InstancePatch {
                team_id: 1,
                plan: Some(json!({"memory": 99}).as_object().unwrap().clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = local.status(&[id.parse().unwrap()]).await.unwrap();
        let (_, ev) = s.get(&format!("/api/managed-services/{id}/events")).await;
        let drift_seen = ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventName"] == "berth.instance.drifted");
        if drift_seen
            && st
                .values()
                .next()
                .is_some_and(|v| v.plan["memory"] == 64 && v.ready())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drift not corrected: {st:?} {ev}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis_try(port, &password, &["GET", "via"])
            .await
            .ok()
            .as_deref(),
        Some("rest")
    );

    // This provider does not declare pause: a pause is refused with the field and the reason.
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"pause": true})),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["fields"][0]["path"], "pause");

    // A user change goes over PATCH; delete goes over DELETE and leaves nothing at the backend.
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"plan": {"id": 0, "parameters": {"memory": 128}}})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !local
        .status(&[id.parse().unwrap()])
        .await
        .unwrap()
        .values()
        .next()
        .is_some_and(|v| v.plan["memory"] == 128)
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for created in [&created, &broken, &builtin] {
        s.call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
    s.wait_gone(&id, Duration::from_secs(30)).await;
    s.wait_gone(builtin["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert!(!local.list().await.unwrap().contains(&id.parse().unwrap()));
    drop(s);
    // The backend's own instances: none left.
    assert!(instance_pids_under(backend_dir.path()).is_empty());
}

fn provider_json(name: &str, endpoint: &str) -> serde_json::Value {
    let yaml = provider_yml(name, endpoint);
    serde_json::to_value(serde_yaml_like(&yaml)).unwrap()
}

/// The YAML above as JSON, through the same parser Berth uses.
fn serde_yaml_like(yaml: &str) -> berth_types::ProviderDefinition {
    berth_types::ProviderDefinition::from_yaml(yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_registered_scoped_changed_and_removed_through_the_api() {
    let backend_dir = tempfile::tempdir().unwrap();
    let (endpoint, _local) = serve_backend(backend_dir.path()).await;
    let s = TestServer::start().await;
    let providers = "/api/managed-services/providers";
    let post = |body: serde_json::Value| s.call(reqwest::Method::POST, providers, Some(body));

    let (code, v) = post(provider_json("kv2", &endpoint)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["warnings"], json!([]));
    assert!(
        !v.to_string().contains(KEY),
        "the backend secret is never answered: {v}"
    );
    let (code, v) = post(provider_json("kv2", &endpoint)).await;
    assert_eq!(code, 409, "{v}");

    // An invalid definition names each broken rule.
    let mut bad = provider_json("kv3", &endpoint);
    bad["name"] = json!("Key Value");
    bad["configSchema"] = json!({"type": "string"});
    let (code, v) = post(bad).await;
    assert_eq!(code, 422, "{v}");
    let paths: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["name", "configSchema"]);
    // Built-ins cannot be replaced or removed.
    let (code, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("{providers}/redis/v1"),
            None,
        )
        .await;
    assert_eq!(code, 409);

    // An unreachable backend is accepted with a warning.
    let (code, v) = post(provider_json("later", "http://127.0.0.1:9/x")).await;
    assert_eq!(code, 201, "{v}");
    assert!(
        v["warnings"][0].as_str().unwrap().contains("not reachable"),
        "{v}"
    );

    // Team scope: invisible and unusable for other teams.
    let mut scoped = provider_json("teamonly", &endpoint);
    scoped["scope"] = json!({"type": "team", "teamIds": [5]});
    let (code, v) = s.call(reqwest::Method::PUT, providers, Some(scoped)).await;
    assert_eq!(code, 201, "{v}");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, team1) = s.get(&format!("{providers}?teamId=1")).await;
    let (_, team5) = s.get(&format!("{providers}?teamId=5")).await;
    assert!(!names(&team1).contains(&"teamonly".to_owned()));
    assert!(names(&team5).contains(&"teamonly".to_owned()));
    let body = |team: i64, provider: &str| json!({"teamId": team, "name": format!("{provider}-svc"), "provider": {"name": provider}});
    let (code, v) = s
        .call(
            reqwest::Method::POST,
            "/api/managed-services",
            Some(body(1, "teamonly")),
        )
        .await;
    assert_eq!(code, 422, "{v}");

    // PATCH changes a field; the definition stays valid.
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{providers}/kv2/v1"),
            Some(json!({"displayName": "KV two"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (_, all) = s.get(providers).await;
    let kv2 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kv2")
        .unwrap();
    assert_eq!(kv2["displayName"], "KV two");
    let (code, _) = s
        .call(
            reqwest::Method::PATCH,
            &format!("{providers}/kv2/v1"),
            Some(json!({"configSchema": {"type": "array"}})),
        )
        .await;
    assert_eq!(code, 422);

    // A registered provider's service converges; the provider cannot go while it exists.
    let created = s.create(body(1, "kv2")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", Duration::from_secs(30))
        .await;
    let (code, v) = s
        .call(
            reqwest::Method::DELETE,
            &format!("{providers}/kv2/v1"),
            None,
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("service"), "{v}");
    s.call(
        reqwest::Method::DELETE,
        &format!("/api/managed-services/{id}"),
        None,
    )
    .await;
    s.wait_gone(&id, Duration::from_secs(30)).await;
    let (code, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("{providers}/kv2/v1"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let (_, all) = s.get(providers).await;
    assert!(!names(&all).contains(&"kv2".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_shows_error_and_stalls_no_other_provider() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let providers = tempfile::tempdir().unwrap();
    std::fs::write(
        providers.path().join("hangs.yml"),
        provider_yml("hangs", &format!("http://{addr}/x")),
    )
    .unwrap();
    let dir = providers.path().to_path_buf();
    let s = TestServer::start_with(move |cfg| cfg.providers_dir = Some(dir)).await;

    let hanging = s
        .create(json!({"teamId": 1, "name": "h", "provider": {"name": "hangs"}}))
        .await;
    let t0 = std::time::Instant::now();
    let builtin = s.create(redis_body("fine", "8")).await;
    // The built-in converges while the other backend hangs (its calls wait up to 10 s).
    s.wait_state(
        builtin["id"].as_str().unwrap(),
        "synchronized",
        Duration::from_secs(8),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(8));
    let h = s
        .wait_state(
            hanging["id"].as_str().unwrap(),
            "error",
            Duration::from_secs(40),
        )
        .await;
    assert!(
        h["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        h["status"]
    );
    s.call(
        reqwest::Method::DELETE,
        &format!("/api/managed-services/{}", builtin["id"].as_str().unwrap()),
        None,
    )
    .await;
    s.wait_gone(builtin["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
}
