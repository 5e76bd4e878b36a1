//! End to end through the public API, against real PostgreSQL and Redis/Valkey instances.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const READY: Duration = Duration::from_secs(60);

async fn pg_query_one(url: &str, sql: &str) -> String {
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let row = sqlx::query(sql).fetch_one(&mut c).await.unwrap();
    let v: String = row.try_get(0).unwrap();
    c.close().await.unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_from_create_to_delete() {
    let s = TestServer::start().await;
    let created = s.create(pg_body("orders-db", "17")).await;
    assert_eq!(created["status"]["state"], "creating");
    let id = created["id"].as_str().unwrap().to_owned();
    let password = created["generatedSecrets"]["userPassword"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 32);
    assert!(created["generatedSecrets"]["superuserPassword"].is_string());

    let svc = s.wait_state(&id, "synchronized", READY).await;
    let details = &svc["status"]["details"];
    assert_eq!(details["ready"], true);
    assert_eq!(details["hostname"], "127.0.0.1");
    let port = details["port"].as_u64().unwrap();
    assert!((s.ports.0 as u64..s.ports.1 as u64).contains(&port));
    assert_eq!(
        details["dsn"],
        format!("postgresql://shop@127.0.0.1:{port}/orders")
    );
    assert_eq!(svc["status"]["observedGeneration"], 1);
    // No GET ever shows a secret.
    assert!(!svc.to_string().contains(&password));
    let events: Vec<&str> = svc["recentEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"creating -> synchronized"), "{events:?}");

    // The credentials handed to apps reach the database as the configured user.
    let env = s.env(&id).await;
    let url = env["DATABASE_URL"].as_str().unwrap();
    assert_eq!(
        url,
        format!("postgresql://shop:{password}@127.0.0.1:{port}/orders")
    );
    for k in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "DEFAULT_DATABASE_URL",
    ] {
        assert!(env.contains_key(k), "{k} missing from {env:?}");
    }
    assert_eq!(
        pg_query_one(
            url,
            "select current_user::text || '@' || current_database()"
        )
        .await,
        "shop@orders"
    );
    assert!(pg_query_one(url, "select version()")
        .await
        .starts_with("PostgreSQL 17."));
    // The Dev plan's memory is applied to the engine: a quarter of 256 MiB for shared buffers.
    assert_eq!(pg_query_one(url, "show shared_buffers").await, "64MB");
    // A wrong password is refused (SCRAM on TCP; no trust).
    let wrong = url.replace(&password, "not-the-password");
    assert!(sqlx::PgConnection::connect(&wrong).await.is_err());

    // The generated passwords are nowhere in the data dir in plaintext (database, logs, instance).
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", &password])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "password found in: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The instance runs as the unprivileged user (when the tests run as root), inside its cgroup
    // with the plan's memory and CPU where the host has cgroup v1 controllers.
    let pids = s.instance_pids();
    let server = pids.iter().copied().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("-D"))
    });
    let server = server.expect("the postmaster runs");
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(uid, 0, "instances never run as root");
    }
    let limits = &svc["status"]["details"]["limits"];
    let cg = std::path::Path::new("/sys/fs/cgroup/memory/berth").join(&id);
    if cg.exists() {
        let bytes = std::fs::read_to_string(cg.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(bytes.trim(), (256u64 * 1024 * 1024).to_string());
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == server.to_string()),
            "postmaster not in its cgroup: {procs}"
        );
        assert!(
            limits["enforced"]
                .as_array()
                .unwrap()
                .contains(&json!("memory")),
            "{limits}"
        );
        let quota =
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/berth/{id}/cpu.cfs_quota_us"))
                .unwrap();
        assert_eq!(quota.trim(), "50000", "0.5 CPU of the Dev plan");
    } else {
        // Where limits cannot be enforced, the service says so in its status and its events.
        assert!(
            limits["notEnforced"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{limits}"
        );
        let (_, ev) = s.get(&format!("/api/managed-services/{id}/events")).await;
        assert!(ev.to_string().contains("berth.limits.not_enforced"), "{ev}");
    }

    // Logs are visible through the API.
    let (code, logs) = s.get(&format!("/api/managed-services/{id}/logs")).await;
    assert_eq!(code, 200);
    assert!(
        logs.as_str()
            .unwrap()
            .contains("database system is ready to accept connections"),
        "{logs}"
    );

    // Delete: gone from the API, the process stopped, the data removed.
    let (code, v) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["status"]["state"], "deleting");
    s.wait_gone(&id, READY).await;
    assert!(!s.instance_dir(&id).exists());
    assert!(s.instance_pids().is_empty());
    assert!(!cg.exists(), "the cgroup is removed with the instance");
    assert!(sqlx::PgConnection::connect(url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_installed_postgres_and_redis_major_is_selectable() {
    let s = TestServer::start().await;
    let (_, providers) = s.get("/api/managed-services/providers").await;
    let versions = |name: &str| -> Vec<String> {
        let p = providers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        p["configSchema"]["properties"]["version"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let pg = versions("postgres");
    let redis = versions("redis");
    for v in ["15", "16", "17"] {
        assert!(
            pg.contains(&v.to_owned()),
            "PostgreSQL {v} not installed: {pg:?} (run scripts/setup.sh)"
        );
    }
    assert!(
        redis.contains(&"7".to_owned()) && redis.contains(&"8".to_owned()),
        "{redis:?}"
    );

    let mut ids = Vec::new();
    for v in &pg {
        ids.push((
            "postgres",
            v.clone(),
            s.create(pg_body(&format!("pg{v}"), v)).await,
        ));
    }
    for v in &redis {
        ids.push((
            "redis",
            v.clone(),
            s.create(redis_body(&format!("redis{v}"), v)).await,
        ));
    }
    for (kind, version, created) in &ids {
        let id = created["id"].as_str().unwrap();
        s.wait_state(id, "synchronized", READY).await;
        let env = s.env(id).await;
        if *kind == "postgres" {
            let server_version =
                pg_query_one(env["DATABASE_URL"].as_str().unwrap(), "show server_version").await;
            assert!(
                server_version.starts_with(&format!("{version}.")),
                "{server_version}"
            );
        } else {
            let port: u16 = env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
            let pw = env["REDIS_PASSWORD"].as_str().unwrap();
            assert_eq!(redis_cmd(port, pw, &["SET", "k", "v"]).await, "+OK");
            let info = redis_cmd(port, pw, &["INFO", "server"]).await;
            assert!(info.starts_with('#') || !info.is_empty());
            let url = env["REDIS_URL"].as_str().unwrap();
            let out = std::process::Command::new("redis-cli")
                .args(["--no-auth-warning", "-u", url, "ping"])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "PONG",
                "redis-cli -u {url} ping"
            );
        }
    }
    for (_, _, created) in &ids {
        s.call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
    for (_, _, created) in &ids {
        s.wait_gone(created["id"].as_str().unwrap(), READY).await;
    }
    assert!(s.instance_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_given_password_persists_and_heals() {
    let s = TestServer::start().await;
    let mut body = redis_body("cache", "8");
    body["secrets"] = json!({"password": "a-password-of-mine"});
    let created = s.create(body).await;
    assert_eq!(
        created["generatedSecrets"],
        json!({}),
        "given secrets are not echoed"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let svc = s.wait_state(&id, "synchronized", READY).await;
    let port = svc["status"]["details"]["port"].as_u64().unwrap() as u16;
    assert!(svc["status"]["details"]["version"]
        .as_str()
        .unwrap()
        .starts_with("Valkey 8"));
    assert_eq!(
        redis_cmd(port, "a-password-of-mine", &["SET", "answer", "42"]).await,
        "+OK"
    );
    assert!(redis_cmd(port, "wrong-password-x", &["PING"])
        .await
        .starts_with("-WRONGPASS"));
    let maxmemory = redis_cmd(port, "a-password-of-mine", &["CONFIG", "GET", "maxmemory"]).await;
    assert_eq!(
        maxmemory, "maxmemory 100663296",
        "3/4 of the plan's 128 MiB"
    );

    // Kill the instance from outside: it is restarted, with its data, and the event says so.
    let pids = s.instance_pids();
    assert_eq!(pids.len(), 1);
    unsafe {
        libc::kill(pids[0] as i32, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = s.instance_pids();
        let answer = redis_try(port, "a-password-of-mine", &["GET", "answer"])
            .await
            .ok();
        let (_, events) = s.get(&format!("/api/managed-services/{id}/events")).await;
        let restarted = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventName"] == "berth.instance.restarted");
        if now.len() == 1 && now[0] != pids[0] && answer.as_deref() == Some("42") && restarted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted: {now:?} {answer:?} {events}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let svc = s.wait_state(&id, "synchronized", READY).await;
    assert_eq!(
        svc["status"]["details"]["port"], port,
        "same port after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_goes_through_updating_and_reaches_the_engine() {
    let s = TestServer::start().await;
    let created = s.create(pg_body("resize-me", "16")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let env = s.env(&id).await;
    let url = env["DATABASE_URL"].as_str().unwrap().to_owned();
    assert_eq!(pg_query_one(&url, "show shared_buffers").await, "64MB");

    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"plan": {"id": 1}, "name": "resized"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["generation"], 2);
    assert_eq!(v["plan"]["parameters"]["memory"], 512);
    // Wait for the reconciler to apply generation 2.
    let deadline = std::time::Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        if v["status"]["state"] == "synchronized" && v["status"]["observedGeneration"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pg_query_one(&url, "show shared_buffers").await, "128MB");
    let (_, events) = s
        .get(&format!("/api/managed-services/{id}/events?limit=50"))
        .await;
    let bodies: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert!(bodies.contains(&"synchronized -> updating"), "{bodies:?}");
    assert!(
        bodies
            .iter()
            .any(|b| b.starts_with("update requested: name, plan")),
        "{bodies:?}"
    );
    // shared_buffers is read at start only: the event says the update restarted the server.
    assert!(
        bodies.contains(&"applied with a restart: the server reads the new plan only at start"),
        "{bodies:?}"
    );
}

/// The names of a service's events, newest first.
async fn event_names(s: &TestServer, id: &str) -> Vec<String> {
    let (_, events) = s
        .get(&format!("/api/managed-services/{id}/events?limit=100"))
        .await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["eventName"].as_str().unwrap(),
                e["body"].as_str().unwrap()
            )
        })
        .collect()
}

/// The pid of the one server process working in the service's data directory. A process whose
/// server exited a moment ago is reparented and looks like a second root while it ends: asked
/// again for up to 2 s; a real second server stays and fails the test.
fn server_pid(s: &TestServer, id: &str) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let roots = server_roots(s, id);
        if roots.len() == 1 || std::time::Instant::now() > deadline {
            let cmdlines: Vec<String> = roots
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                })
                .collect();
            assert_eq!(roots.len(), 1, "{roots:?}: {cmdlines:?}");
            return roots[0];
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_roots(s: &TestServer, id: &str) -> Vec<u32> {
    let dir = s.instance_dir(id);
    let pids = instance_pids_under(&dir);
    let roots: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid: u32 = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            !pids.contains(&ppid)
        })
        .collect();
    roots
}

async fn wait_generation(s: &TestServer, id: &str, generation: i64) {
    let deadline = std::time::Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        if v["status"]["state"] == "synchronized" && v["status"]["observedGeneration"] == generation
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_cpu_changes_take_effect_on_the_running_instance() {
    let s = TestServer::start().await;
    let redis = s.create(redis_body("grow-redis", "7")).await;
    let pg = s.create(pg_body("more-cpu", "16")).await;
    let (redis_id, pg_id) = (
        redis["id"].as_str().unwrap().to_owned(),
        pg["id"].as_str().unwrap().to_owned(),
    );
    s.wait_state(&redis_id, "synchronized", READY).await;
    s.wait_state(&pg_id, "synchronized", READY).await;
    let env = s.env(&redis_id).await;
    let port: u16 = env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
    let pw = env["REDIS_PASSWORD"].as_str().unwrap().to_owned();
    let url = s.env(&pg_id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(pg_query_one(&url, "show max_parallel_workers").await, "1");
    let (redis_pid, pg_pid) = (server_pid(&s, &redis_id), server_pid(&s, &pg_id));

    for (id, plan) in [
        (&redis_id, json!({"id": 0, "parameters": {"memory": 256}})),
        (&pg_id, json!({"id": 0, "parameters": {"cpu": 20}})),
    ] {
        let (code, v) = s
            .call(
                reqwest::Method::PATCH,
                &format!("/api/managed-services/{id}"),
                Some(json!({ "plan": plan })),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        wait_generation(&s, id, 2).await;
    }
    // Redis: maxmemory is 3/4 of the plan's memory, set with CONFIG SET; same process.
    let reply = redis_cmd(port, &pw, &["CONFIG", "GET", "maxmemory"]).await;
    assert!(
        reply.contains(&(192u64 * 1024 * 1024).to_string()),
        "{reply}"
    );
    assert_eq!(
        server_pid(&s, &redis_id),
        redis_pid,
        "Redis was not restarted"
    );
    // PostgreSQL: max_parallel_workers follows the CPU, by a reload; same postmaster.
    assert_eq!(pg_query_one(&url, "show max_parallel_workers").await, "2");
    assert_eq!(
        server_pid(&s, &pg_id),
        pg_pid,
        "PostgreSQL was not restarted"
    );
    for id in [&redis_id, &pg_id] {
        let names = event_names(&s, id).await;
        assert!(
            names.iter().any(|n| n.starts_with(
                "berth.instance.updated_live: applied without a restart: new plan applied live"
            )),
            "{names:?}"
        );
    }
}

fn field_paths(v: &Value) -> Vec<String> {
    v["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["path"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_the_field_and_reason() {
    let s = TestServer::start().await;
    let post = |body: Value| s.call(reqwest::Method::POST, "/api/managed-services", Some(body));

    let (code, v) = post(json!({"teamId": 1, "name": "x", "provider": {"name": "oracle"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["provider.name".to_owned()]),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("postgres v1"),
        "the catalog is named: {v}"
    );

    let (code, v) =
        post(json!({"teamId": 1, "name": " bad;name", "provider": {"name": "redis"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["name".to_owned()]),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 0, "name": "ok", "provider": {"name": "redis"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["teamId".to_owned()]),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "postgres"}, "config": {"version": "12"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["config.version".to_owned()]),
        "{v}"
    );
    assert!(
        v["fields"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not installed"),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "postgres"}, "config": {"userName": "Robert'); DROP"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["config.userName".to_owned()]),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "postgres"}, "config": {"colour": "red"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["config".to_owned()]),
        "{v}"
    );

    let (code, v) =
        post(json!({"teamId": 1, "name": "ok", "provider": {"name": "redis"}, "plan": {"id": 7}}))
            .await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["plan.id".to_owned()]),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "postgres"}, "plan": {"id": 0, "parameters": {"storage": 10}}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["plan.parameters.storage".to_owned()]),
        "{v}"
    );

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "redis"}, "secrets": {"password": "sh0rt"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["secrets.password".to_owned()]),
        "{v}"
    );
    assert!(
        !v.to_string().contains("sh0rt"),
        "a rejected secret is not echoed: {v}"
    );

    let (code, v) =
        post(json!({"teamId": 1, "name": "ok", "provider": {"name": "redis"}, "colour": 1})).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("colour"), "{v}");

    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "s3"}, "backups": {"enabled": true, "intervalH": 0}})).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        field_paths(&v),
        vec!["backups.enabled", "backups.intervalH"]
    );
    // Backups on without a store to send them to: each missing setting is named.
    let (code, v) = post(json!({"teamId": 1, "name": "ok", "provider": {"name": "redis"}, "backups": {"enabled": true}})).await;
    assert_eq!(code, 422, "{v}");
    for missing in ["endpointUrl", "destinationPath", "accessKey", "secretKey"] {
        assert!(v.to_string().contains(missing), "{missing}: {v}");
    }

    // Malformed JSON is a 400 with the same error shape.
    let resp = s
        .http
        .post(format!("{}/api/managed-services", s.base))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].is_string());

    // No token, a wrong token: 401.
    let resp = s
        .http
        .get(format!("{}/api/managed-services", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = s
        .http
        .get(format!("{}/api/managed-services", s.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    // Unknown ids: 404, whatever their shape.
    for id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        let (code, v) = s.get(&format!("/api/managed-services/{id}")).await;
        assert_eq!(code, 404, "{v}");
    }

    // A duplicate name in the same team: 409; in another team: fine.
    let first = s.create(redis_body("dup", "7")).await;
    let (code, v) = post(redis_body("dup", "7")).await;
    assert_eq!(code, 409, "{v}");
    let mut other_team = redis_body("dup", "7");
    other_team["teamId"] = json!(2);
    let second = s.create(other_team).await;
    let (_, team1) = s.get("/api/managed-services?team=1").await;
    assert_eq!(team1.as_array().unwrap().len(), 1);

    // Updates: immutable and increase-only fields, version changes.
    let id = first["id"].as_str().unwrap();
    let path = format!("/api/managed-services/{id}");
    let patch = |body: Value| s.call(reqwest::Method::PATCH, &path, Some(body));
    let (code, v) = patch(json!({"plan": {"id": 0, "parameters": {"storage": 128}}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["plan.parameters.storage".to_owned()]),
        "{v}"
    );
    let (code, v) = patch(json!({"config": {"version": "8"}})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["config.version".to_owned()]),
        "{v}"
    );
    let (code, v) = patch(json!({"name": ""})).await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["name".to_owned()]),
        "{v}"
    );
    let (code, v) = patch(json!({"nope": true})).await;
    assert_eq!(code, 422, "{v}");

    for created in [&first, &second] {
        let id = created["id"].as_str().unwrap();
        s.call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}"),
            None,
        )
        .await;
        s.wait_gone(id, READY).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immutable_config_is_enforced() {
    let s = TestServer::start().await;
    let created = s.create(pg_body("immutable", "15")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"config": {"userName": "other"}})),
        )
        .await;
    assert_eq!(
        (code, field_paths(&v)),
        (422, vec!["config.userName".to_owned()]),
        "{v}"
    );
    s.wait_state(&id, "synchronized", READY).await;
    s.call(
        reqwest::Method::DELETE,
        &format!("/api/managed-services/{id}"),
        None,
    )
    .await;
    s.wait_gone(&id, READY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_releases_the_process_and_resume_keeps_the_data() {
    let s = TestServer::start().await;
    let pg = s.create(pg_body("pausable-pg", "17")).await;
    let redis = s.create(redis_body("pausable-redis", "8")).await;
    let (pg_id, redis_id) = (
        pg["id"].as_str().unwrap().to_owned(),
        redis["id"].as_str().unwrap().to_owned(),
    );
    s.wait_state(&pg_id, "synchronized", READY).await;
    s.wait_state(&redis_id, "synchronized", READY).await;
    let pg_env = s.env(&pg_id).await;
    let url = pg_env["DATABASE_URL"].as_str().unwrap().to_owned();
    let redis_env = s.env(&redis_id).await;
    let port: u16 = redis_env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
    let pw = redis_env["REDIS_PASSWORD"].as_str().unwrap().to_owned();
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("create table kept (v text)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("insert into kept values ('before pause')")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    assert_eq!(redis_cmd(port, &pw, &["SET", "kept", "yes"]).await, "+OK");

    for id in [&pg_id, &redis_id] {
        let (code, v) = s
            .call(
                reqwest::Method::PATCH,
                &format!("/api/managed-services/{id}"),
                Some(json!({"pause": true})),
            )
            .await;
        assert_eq!(code, 200, "{v}");
    }
    let paused = s.wait_state(&pg_id, "paused", READY).await;
    s.wait_state(&redis_id, "paused", READY).await;
    assert_eq!(paused["pause"], true);
    assert_eq!(paused["status"]["details"]["running"], false);
    // The list (a read model refreshed from the store's change feed) shows the same.
    let (_, list) = s.get("/api/managed-services").await;
    for id in [&pg_id, &redis_id] {
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id.as_str())
            .unwrap();
        let (_, one) = s.get(&format!("/api/managed-services/{id}")).await;
        assert_eq!(listed["status"]["state"], "paused");
        assert_eq!(
            listed["status"], one["status"],
            "the list is as fresh as GET"
        );
        assert_eq!(listed["recentEvents"], json!([]));
    }
    assert!(
        s.instance_pids().is_empty(),
        "a paused service runs no process"
    );
    assert!(sqlx::PgConnection::connect(&url).await.is_err());

    for id in [&pg_id, &redis_id] {
        s.call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"pause": false})),
        )
        .await;
    }
    s.wait_state(&pg_id, "synchronized", READY).await;
    s.wait_state(&redis_id, "synchronized", READY).await;
    assert_eq!(
        pg_query_one(&url, "select v from kept").await,
        "before pause"
    );
    assert_eq!(redis_cmd(port, &pw, &["GET", "kept"]).await, "yes");
    let (_, events) = s
        .get(&format!("/api/managed-services/{pg_id}/events?limit=100"))
        .await;
    let text = events.to_string();
    for step in [
        "synchronized -> pausing",
        "pausing -> paused",
        "paused -> unpausing",
        "unpausing -> synchronized",
    ] {
        assert!(text.contains(step), "no '{step}' in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reset_takes_effect_without_a_restart() {
    let s = TestServer::start().await;
    let pg = s.create(pg_body("rotate-pg", "16")).await;
    let redis = s.create(redis_body("rotate-redis", "7")).await;
    let (pg_id, redis_id) = (
        pg["id"].as_str().unwrap().to_owned(),
        redis["id"].as_str().unwrap().to_owned(),
    );
    s.wait_state(&pg_id, "synchronized", READY).await;
    s.wait_state(&redis_id, "synchronized", READY).await;
    let old_url = s.env(&pg_id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let redis_env = s.env(&redis_id).await;
    let port: u16 = redis_env["REDIS_PORT"].as_str().unwrap().parse().unwrap();
    let old_pw = redis_env["REDIS_PASSWORD"].as_str().unwrap().to_owned();
    assert_eq!(redis_cmd(port, &old_pw, &["SET", "k", "v"]).await, "+OK");
    let before = [server_pid(&s, &pg_id), server_pid(&s, &redis_id)];

    for (id, body) in [
        (
            &pg_id,
            json!({"secrets": {"userPassword": "a-brand-new-pg-password"}}),
        ),
        (
            &redis_id,
            json!({"secrets": {"password": "a-brand-new-redis-password"}}),
        ),
    ] {
        let (code, v) = s
            .call(
                reqwest::Method::PATCH,
                &format!("/api/managed-services/{id}"),
                Some(body),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        assert!(
            !v.to_string().contains("a-brand-new"),
            "a secret is never answered back"
        );
    }
    let new_url = s.env(&pg_id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new_url.contains("a-brand-new-pg-password"));
    let deadline = std::time::Instant::now() + READY;
    loop {
        let pg_ok = sqlx::PgConnection::connect(&new_url).await.is_ok();
        let redis_ok = redis_try(port, "a-brand-new-redis-password", &["PING"])
            .await
            .ok()
            .as_deref()
            == Some("+PONG");
        if pg_ok && redis_ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new credentials not in effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sqlx::PgConnection::connect(&old_url).await.is_err(),
        "the old PostgreSQL password stops working"
    );
    assert!(
        redis_cmd(port, &old_pw, &["PING"])
            .await
            .starts_with("-WRONGPASS"),
        "the old Redis password stops working"
    );
    assert_eq!(
        redis_cmd(port, "a-brand-new-redis-password", &["GET", "k"]).await,
        "v"
    );
    assert_eq!(
        [server_pid(&s, &pg_id), server_pid(&s, &redis_id)],
        before,
        "no restart: the same server processes"
    );
    // The new password is not written anywhere in plaintext either.
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "a-brand-new"])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "found in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.wait_state(&pg_id, "synchronized", READY).await;
    s.wait_state(&redis_id, "synchronized", READY).await;
    for id in [&pg_id, &redis_id] {
        let names = event_names(&s, id).await;
        assert!(
            names.iter().any(|n| n.starts_with(
                "berth.instance.updated_live: applied without a restart: new credentials applied live"
            )),
            "{names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_keeps_dying_shows_error_and_is_not_restarted_in_a_loop() {
    let s = TestServer::start().await;
    let created = s.create(redis_body("flaky", "8")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    let mut last_killed = 0;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        if v["status"]["state"] == "error" {
            assert!(
                v["status"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("crash loop"),
                "{}",
                v["status"]
            );
            break;
        }
        // Each time Berth has restarted it (the restart is recorded once the new process passed
        // its health check), it dies again: a crash after a good start.
        let (_, ev) = s
            .get(&format!("/api/managed-services/{id}/events?limit=100"))
            .await;
        let restarted = ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventName"] == "berth.instance.restarted")
            .count();
        if let [pid] = s.instance_pids()[..] {
            if restarted == kills && pid != last_killed {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                last_killed = pid;
                kills += 1;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no crash loop detected after {kills} kills: {}",
            v["status"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        kills >= 6,
        "the first five deaths are restarts: {kills} kills"
    );
    // It does not spin: no process comes back right away.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        s.instance_pids().is_empty(),
        "restarted although in a crash loop"
    );
    let (_, events) = s
        .get(&format!("/api/managed-services/{id}/events?limit=100"))
        .await;
    let restarts = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["eventName"] == "berth.instance.restarted")
        .count();
    assert_eq!(restarts, 5, "{events}");
}
