//! The `s3` provider end to end: a real Garage server per service, used with the credentials
//! Berth hands out (every request signed with AWS SigV4, which Garage checks).

mod common;

use std::time::Duration;

use berth_engines::s3::{sha256_hex, sign, S3Key};
use common::*;
use serde_json::json;

const READY: Duration = Duration::from_secs(60);

/// An S3 client made of the service's environment variables, as an application would.
struct Client {
    endpoint: String,
    bucket: String,
    key: S3Key,
    http: reqwest::Client,
}

impl Client {
    fn from_env(env: &serde_json::Map<String, serde_json::Value>) -> Self {
        let get = |k: &str| env[k].as_str().unwrap().to_owned();
        Self {
            endpoint: get("S3_ENDPOINT"),
            bucket: get("S3_BUCKET"),
            key: S3Key {
                access_key_id: get("AWS_ACCESS_KEY_ID"),
                secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
                region: get("S3_REGION"),
            },
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        object: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let path = format!("/{}/{object}", self.bucket);
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        let headers = sign(
            &self.key,
            method,
            &host,
            &path,
            &[],
            &sha256_hex(body),
            time::OffsetDateTime::now_utc(),
        );
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.endpoint),
        );
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.body(body.to_vec()).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_service_stores_objects_with_its_own_key_and_quotas() {
    let s = TestServer::start().await;
    let created = s
        .create(
            json!({"teamId": 1, "name": "files", "provider": {"name": "s3"},
                       "plan": {"id": 0, "parameters": {"objects": 2}}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["generatedSecrets"]["secretAccessKey"].is_string());
    let svc = s.wait_state(&id, "synchronized", READY).await;
    assert!(svc["status"]["details"]["version"]
        .as_str()
        .unwrap()
        .starts_with("Garage 2"));
    let env = s.env(&id).await;
    for k in [
        "S3_ENDPOINT",
        "S3_BUCKET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "S3_REGION",
    ] {
        assert!(
            env[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {env:?}"
        );
    }
    let c = Client::from_env(&env);

    // Objects go in and come back with the service's key; a wrong key is refused.
    assert_eq!(c.call("PUT", "a.txt", b"first").await.unwrap().0, 200);
    let (code, body) = c.call("GET", "a.txt", b"").await.unwrap();
    assert_eq!((code, body.as_slice()), (200, b"first".as_slice()));
    let mut wrong = Client::from_env(&env);
    wrong.key.secret_access_key = "not-the-right-secret-key-at-all".into();
    assert_eq!(wrong.call("GET", "a.txt", b"").await.unwrap().0, 403);

    // The plan's object quota is enforced by the server. Garage counts objects asynchronously,
    // so a write right after the second may still pass (a burst overshoots a little); once the
    // count has caught up, every new object is refused.
    assert_eq!(c.call("PUT", "b.txt", b"second").await.unwrap().0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut extra = 0;
    loop {
        let (code, body) = c
            .call("PUT", &format!("extra-{extra}.txt"), b"more")
            .await
            .unwrap();
        if code != 200 {
            assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
            break;
        }
        extra += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "a quota of 2 objects is never enforced ({extra} more written)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(extra <= 3, "the quota overshot by {extra} objects");

    // Pause releases the server and keeps the objects; resume brings them back.
    let path = format!("/api/managed-services/{id}");
    s.call(reqwest::Method::PATCH, &path, Some(json!({"pause": true})))
        .await;
    s.wait_state(&id, "paused", READY).await;
    assert!(
        c.call("GET", "a.txt", b"").await.is_err(),
        "nothing listens while paused"
    );
    s.call(reqwest::Method::PATCH, &path, Some(json!({"pause": false})))
        .await;
    s.wait_state(&id, "synchronized", READY).await;
    assert_eq!(c.call("GET", "b.txt", b"").await.unwrap().1, b"second");

    // A secret reset: the new key works, the old one no longer does, without a restart.
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"secrets": {"secretAccessKey": "aBrandNewSecretAccessKey0123"}})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let new = Client::from_env(&s.env(&id).await);
    let deadline = std::time::Instant::now() + READY;
    while new.call("GET", "a.txt", b"").await.unwrap().0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = std::time::Instant::now();
    loop {
        let code = c.call("GET", "a.txt", b"").await.unwrap().0;
        if code == 403 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the old key still works: {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the old key stopped working {:?} after the new one worked",
        t0.elapsed()
    );

    // Delete: the server and its data go.
    s.call(reqwest::Method::DELETE, &path, None).await;
    s.wait_gone(&id, READY).await;
    assert!(!s.instance_dir(&id).exists());
    assert!(s.instance_pids().is_empty());
}

/// Bytes under a directory, recursively.
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => du(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_the_services_choice() {
    let s = TestServer::start().await;
    // 4 MiB of one repeated line: zstd makes it tiny, stored as it is it takes 4 MiB.
    let body = b"the same line, again and again\n".repeat(4 << 20 >> 5);
    let mut stored = Vec::new();
    for (name, config) in [
        ("zipped", json!({})),
        ("plain", json!({"compression": "none"})),
    ] {
        let created = s
            .create(
                json!({"teamId": 1, "name": name, "provider": {"name": "s3"}, "config": config}),
            )
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        s.wait_state(&id, "synchronized", READY).await;
        let c = Client::from_env(&s.env(&id).await);
        assert_eq!(c.call("PUT", "same.txt", &body).await.unwrap().0, 200);
        let (code, back) = c.call("GET", "same.txt", b"").await.unwrap();
        assert!(
            code == 200 && back == body,
            "{name}: the object comes back whole"
        );
        stored.push(du(&s
            .dir
            .path()
            .join("instances")
            .join(&id)
            .join("data/blocks")));
    }
    assert!(stored[0] < 512 << 10, "zstd by default: {stored:?}");
    assert!(stored[1] >= body.len() as u64, "none, as asked: {stored:?}");
}
