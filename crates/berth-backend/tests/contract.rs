//! One suite for the ProviderBackend contract, run against the local backend in-process and the
//! same backend over the wire (RestBackend -> contract_server -> LocalBackend), on real
//! Redis/Valkey instances.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_backend::local::{HostConfig, LocalBackend, LocalHost};
use berth_backend::rest::{RestBackend, RestConfig};
use berth_backend::{BackendError, InstancePatch, InstanceSpec, ProviderBackend};
use berth_engines::Engine;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::run_as;

struct Fixture {
    dir: tempfile::TempDir,
    local: Arc<dyn ProviderBackend>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Kill whatever a failed test left running in this temp dir.
        let dir = std::fs::canonicalize(self.dir.path()).unwrap();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&dir)) {
                if let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn fixture(ports: (u16, u16)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let host = LocalHost::open(
        HostConfig {
            data_dir: dir.path().to_path_buf(),
            engines_dir: std::env::var_os("BERTH_ENGINES_DIR")
                .map(Into::into)
                .unwrap_or_else(|| "/opt/berth/engines".into()),
            ports: ports.0..ports.1,
            start_timeout: Duration::from_secs(30),
            run_as: run_as(),
            cipher: None,
        },
        Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    let engine: Arc<dyn Engine> = Arc::new(berth_engines::redis::Redis);
    Fixture {
        local: Arc::new(LocalBackend::new(host, engine)),
        dir,
    }
}

fn spec(id: Uuid, memory: i64) -> InstanceSpec {
    InstanceSpec {
        id,
        team_id: 7,
        plan: json!({"memory": memory, "cpu": 5})
            .as_object()
            .unwrap()
            .clone(),
        config: json!({"version": "8"}).as_object().unwrap().clone(),
        secrets: json!({"password": "contract-suite-pw"})
            .as_object()
            .unwrap()
            .clone(),
        pause: false,
        recover_from: None,
    }
}

async fn wait_ready(
    b: &dyn ProviderBackend,
    id: Uuid,
    memory: i64,
) -> serde_json::Map<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let map = b.status(&[id]).await.unwrap();
        if let Some(s) = map.get(&id) {
            assert!(s.error.is_none() || !s.ready(), "{s:?}");
            if s.ready() && s.plan.get("memory") == Some(&json!(memory)) {
                return s.details.clone();
            }
        }
        assert!(Instant::now() < deadline, "not ready: {map:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The contract, as any backend must keep it.
async fn suite(b: &dyn ProviderBackend) {
    let id = Uuid::new_v4();
    let unknown = Uuid::new_v4();
    assert!(!b.list().await.unwrap().contains(&id));
    assert!(
        b.status(&[unknown]).await.unwrap().is_empty(),
        "unknown ids are left out"
    );

    b.create(&spec(id, 64)).await.unwrap();
    let details = wait_ready(b, id, 64).await;
    assert!(details["port"].as_u64().is_some());
    assert_eq!(details["hostname"], "127.0.0.1");
    // A repeated create with the same id and spec is success, and nothing is made twice.
    b.create(&spec(id, 64)).await.unwrap();
    assert_eq!(wait_ready(b, id, 64).await["port"], details["port"]);
    assert_eq!(
        b.list().await.unwrap().iter().filter(|x| **x == id).count(),
        1
    );
    // Status of known and unknown ids together: only the known one.
    let both = b.status(&[id, unknown]).await.unwrap();
    assert_eq!(both.len(), 1);

    // An update is applied and echoed.
    let patch = InstancePatch {
        team_id: 7,
        plan: Some(spec(id, 96).plan),
        ..Default::default()
    };
    b.update(id, &patch).await.unwrap();
    wait_ready(b, id, 96).await;
    assert!(matches!(
        b.update(unknown, &patch).await,
        Err(BackendError::NotFound(_))
    ));

    // Delete, twice: both succeed, and the instance is gone.
    b.delete(id).await.unwrap();
    b.delete(id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.list().await.unwrap().contains(&id) || !b.status(&[id]).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_keeps_the_contract() {
    let f = fixture((15000, 15020));
    suite(f.local.as_ref()).await;
}

async fn serve(backend: Arc<dyn ProviderBackend>, key: Option<&str>) -> String {
    let router =
        berth_backend::contract_server::router(HashMap::from([("redis".to_owned(), backend)]), key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_backend_over_the_wire_keeps_the_contract() {
    let f = fixture((15020, 15040));
    let base = serve(f.local.clone(), Some("s3cret-key")).await;
    let rest = RestBackend::new(
        &format!("{base}/redis"),
        Some("s3cret-key".into()),
        RestConfig::default(),
    );
    suite(&rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_refuses_bad_keys_bad_ids_and_reports_errors_as_json() {
    let f = fixture((15040, 15060));
    let base = serve(f.local.clone(), Some("s3cret-key")).await;
    let http = reqwest::Client::new();
    // Open: health and readiness.
    for p in ["/health", "/ready"] {
        assert_eq!(
            http.get(format!("{base}{p}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Refused without the key, with either header form accepted.
    let r = http.get(format!("{base}/redis/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let r = http
        .get(format!("{base}/redis/"))
        .header("X-API-Key", "s3cret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/redis/"))
        .bearer_auth("s3cret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A PATCH whose body id is not the path id: 400.
    let id = Uuid::new_v4();
    let r = http
        .patch(format!("{base}/redis/{id}"))
        .bearer_auth("s3cret-key")
        .json(&json!({"id": Uuid::new_v4(), "teamId": 1, "config": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("does not match"));
    // Garbage body: 400 with the error shape.
    let r = http
        .post(format!("{base}/redis/"))
        .bearer_auth("s3cret-key")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A create the backend cannot do shows up in status with its error.
    let rest = RestBackend::new(
        &format!("{base}/redis"),
        Some("s3cret-key".into()),
        RestConfig::default(),
    );
    let mut bad = spec(id, 64);
    bad.config.insert("version".into(), json!("5"));
    rest.create(&bad).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let map = rest.status(&[id]).await.unwrap();
        if let Some(s) = map.get(&id) {
            if let Some(e) = &s.error {
                assert!(e.contains("not installed"), "{e}");
                assert!(!s.ready());
                break;
            }
        }
        assert!(Instant::now() < deadline, "{map:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rest.delete(id).await.unwrap();
    assert!(rest.status(&[id]).await.unwrap().is_empty());
    // A backup without a store to send it to: 422, naming the missing setting.
    let backup = format!("{base}/redis/backups/{}", Uuid::new_v4());
    let body = json!({"msId": id, "teamId": 1});
    let r = http
        .put(&backup)
        .bearer_auth("s3cret-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("backups.config.endpointUrl: is required"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_broken_backend_fails_with_a_reason() {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rest = RestBackend::new(
        &format!("http://127.0.0.1:{port}/x"),
        None,
        RestConfig::default(),
    );
    let e = rest.list().await.unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
    // A server that never answers: the deadline ends the call.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    let cfg = RestConfig {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let rest = RestBackend::new(&format!("http://{addr}/x"), None, cfg);
    let t0 = Instant::now();
    let e = rest
        .status(&[Uuid::new_v4()])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("timed out"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Garbage JSON.
    let app = axum::Router::new().route("/x/", axum::routing::get(|| async { "not json" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rest = RestBackend::new(&format!("http://{addr}/x"), None, RestConfig::default());
    let e = rest.list().await.unwrap_err().to_string();
    assert!(e.contains("malformed JSON"), "{e}");
}
