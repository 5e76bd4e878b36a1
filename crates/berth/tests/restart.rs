//! `kill -9` of `berth server` while services run, then a restart: the same instances (adopted,
//! not duplicated), the data written before still there, `synchronized` again.

mod common;

use std::time::Duration;

use common::*;
use sqlx::{Connection, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_a_server_crash_and_are_adopted() {
    let mut s = TestServer::spawn().await;
    let pg = s.create(pg_body("orders", "17")).await;
    let redis = s.create(redis_body("cache", "7")).await;
    let pg_id = pg["id"].as_str().unwrap().to_owned();
    let redis_id = redis["id"].as_str().unwrap().to_owned();
    s.wait_state(&pg_id, "synchronized", Duration::from_secs(60))
        .await;
    s.wait_state(&redis_id, "synchronized", Duration::from_secs(60))
        .await;
    let pg_env = s.env(&pg_id).await;
    let redis_env = s.env(&redis_id).await;
    let url = pg_env["DATABASE_URL"].as_str().unwrap().to_owned();
    let redis_port: u16 = redis_env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
    let redis_pw = redis_env["REDIS_PASSWORD"].as_str().unwrap().to_owned();

    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("create table orders (id int primary key, item text)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("insert into orders values (1, 'boat')")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    assert_eq!(
        redis_cmd(redis_port, &redis_pw, &["SET", "k", "kept"]).await,
        "+OK"
    );

    let mut before = s.instance_pids();
    before.sort();
    s.kill9();
    // Instances keep serving while the control plane is down.
    assert_eq!(
        redis_cmd(redis_port, &redis_pw, &["GET", "k"]).await,
        "kept"
    );

    s.restart().await;
    let svc = s
        .wait_state(&pg_id, "synchronized", Duration::from_secs(30))
        .await;
    s.wait_state(&redis_id, "synchronized", Duration::from_secs(30))
        .await;
    // Give the reconciler a few passes to (wrongly) start anything twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut after = s.instance_pids();
    after.sort();
    // The servers themselves: instance processes whose parent is not an instance process
    // (PostgreSQL's backends and workers are children of its postmaster).
    let leaders = |pids: &[u32]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|st| {
                        let f: Vec<&str> =
                            st.rsplit(')').next().unwrap().split_whitespace().collect();
                        !pids.iter().any(|q| q.to_string() == f[1])
                    })
                    .unwrap_or(false)
            })
            .collect()
    };
    assert_eq!(
        leaders(&after),
        leaders(&before),
        "the same server processes, none started twice"
    );
    assert_eq!(leaders(&after).len(), 2);
    assert_eq!(
        svc["status"]["details"]["port"],
        pg_env["PGPORT"].as_str().unwrap().parse::<u64>().unwrap()
    );

    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let item: String = sqlx::query("select item from orders where id = 1")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(item, "boat");
    c.close().await.unwrap();
    assert_eq!(
        redis_cmd(redis_port, &redis_pw, &["GET", "k"]).await,
        "kept"
    );

    // Nothing in the server's own log gives a password away.
    let log = s.server_log();
    assert!(!log.contains(&redis_pw) && !log.contains(pg_env["PGPASSWORD"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_made_instance_is_redone_and_an_orphan_removed() {
    let mut s = TestServer::spawn().await;
    let created = s.create(redis_body("half", "8")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", Duration::from_secs(30))
        .await;
    s.kill9();
    // A crash in the middle of a create leaves a record that was never marked initialized...
    let record = s.instance_dir(&id).join("instance.json");
    let text = std::fs::read_to_string(&record)
        .unwrap()
        .replace("\"initialized\": true", "\"initialized\": false");
    std::fs::write(&record, text).unwrap();
    // ...and an instance directory that no service owns is an orphan.
    let orphan = s
        .dir
        .path()
        .join("instances")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(orphan.join("data")).unwrap();
    for pid in s.instance_pids() {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    s.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, svc) = s.get(&format!("/api/managed-services/{id}")).await;
        let redone = svc["recentEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventName"] == "berth.instance.restarted");
        if redone
            && svc["status"]["state"] == "synchronized"
            && !orphan.exists()
            && s.instance_pids().len() == 1
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not redone: {svc} orphan exists: {}",
            orphan.exists()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = s.env(&id).await;
    let port: u16 = env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        redis_cmd(port, env["REDIS_PASSWORD"].as_str().unwrap(), &["PING"]).await,
        "+PONG"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_providers_survive_a_restart() {
    let mut s = TestServer::spawn().await;
    let def = serde_json::json!({
        "name": "kept", "version": "v2",
        "backend": {"api": {"endpoint": "http://127.0.0.1:9/kept", "secret": "kept-secret-0123456789"}},
        "configSchema": {"type": "object"}, "secretsSchema": {"type": "object"},
        "plans": [{"id": 0, "name": "S"}]
    });
    let (code, v) = s
        .call(
            reqwest::Method::POST,
            "/api/managed-services/providers",
            Some(def),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    s.kill9();
    s.restart().await;
    let (_, all) = s.get("/api/managed-services/providers").await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "kept" && p["version"] == "v2"),
        "{all}"
    );
    // The backend secret is sealed in the database, not stored in plaintext.
    let db = std::fs::read(s.dir.path().join("berth.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("berth.db-wal")).unwrap_or_default();
    let needle = b"kept-secret-0123456789";
    assert!(![db, wal]
        .iter()
        .any(|b| b.windows(needle.len()).any(|w| w == needle)));
}
