//! Backups of built-in services to a real S3 store (an `s3` service of the same Berth, i.e. a
//! Garage server), restored into new services; failures shown, never confirmed.

mod common;

use std::time::{Duration, Instant};

use berth_backup::Bucket;
use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const READY: Duration = Duration::from_secs(90);

/// An `s3` service and the backup settings that point at it (a prefix per test).
async fn store(s: &TestServer, prefix: &str) -> (Value, Value) {
    let created = s
        .create(
            json!({"teamId": 1, "name": "backups", "provider": {"name": "s3"},
                       "plan": {"id": 0, "parameters": {"memory": 256}}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let env = s.env(&id).await;
    let config = json!({
        "endpointUrl": env["S3_ENDPOINT"],
        "destinationPath": format!("s3://{}/{prefix}/", env["S3_BUCKET"].as_str().unwrap()),
        "accessKey": env["AWS_ACCESS_KEY_ID"],
        "region": env["S3_REGION"],
    });
    let secrets = json!({"secretKey": env["AWS_SECRET_ACCESS_KEY"]});
    (config, secrets)
}

fn bucket(config: &Value, secrets: &Value) -> Bucket {
    Bucket::from_settings(config.as_object().unwrap(), secrets.as_object().unwrap()).unwrap()
}

/// Asks for a backup now and waits until the service lists it confirmed (or failed).
async fn backup_now(s: &TestServer, id: &str) -> Value {
    let (code, b) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/managed-services/{id}/backups"),
            None,
        )
        .await;
    assert_eq!(code, 202, "{b}");
    let backup = b["id"].as_str().unwrap().to_owned();
    wait_backup(s, id, &backup).await
}

async fn wait_backup(s: &TestServer, id: &str, backup: &str) -> Value {
    let deadline = Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        let entry = v["backups"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == backup)
            .cloned()
            .unwrap_or(Value::Null);
        if entry["confirmedAt"].is_string() || entry["error"].is_string() {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "backup {backup} still pending: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service's first backup (taken on its own as soon as it runs), once it is over.
async fn first_backup(s: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        if let Some(backup) = v["backups"]["entries"][0]["id"].as_str() {
            return wait_backup(s, id, backup).await;
        }
        assert!(Instant::now() < deadline, "no backup was scheduled: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis service made from `body`, once it runs: its id, port and generated password.
async fn running_redis(s: &TestServer, body: Value) -> (String, u16, String) {
    running(s, body, "password").await
}

/// A service made from `body`, once it runs: its id, port and the generated secret `secret`.
async fn running(s: &TestServer, body: Value, secret: &str) -> (String, u16, String) {
    let created = s.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let password = created["generatedSecrets"][secret]
        .as_str()
        .unwrap()
        .to_owned();
    let svc = s.wait_state(&id, "synchronized", READY).await;
    let port = svc["status"]["details"]["port"].as_u64().unwrap() as u16;
    (id, port, password)
}

/// A PostgreSQL service made from `body`, once it runs: its id and `DATABASE_URL`.
async fn running_pg(s: &TestServer, body: Value) -> (String, String) {
    let id = s.create(body).await["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let url = s.env(&id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, url)
}

async fn pg(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url).await.unwrap()
}

async fn ids_in(url: &str) -> Vec<i32> {
    let mut c = pg(url).await;
    sqlx::query("SELECT id FROM t ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i32, _>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_backups_restore_into_new_services() {
    let s = TestServer::start().await;
    let (config, secrets) = store(&s, "team-1").await;
    let backups = json!({"enabled": true, "intervalH": 24, "config": config, "secrets": secrets});

    // PostgreSQL: rows, a backup, more rows.
    let mut body = pg_body("orders", "17");
    body["backups"] = backups.clone();
    let (pg_id, url) = running_pg(&s, body).await;
    let mut c = pg(&url).await;
    sqlx::query("CREATE TABLE t (id int primary key)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t SELECT generate_series(1, 100)")
        .execute(&mut c)
        .await
        .unwrap();
    let taken = backup_now(&s, &pg_id).await;
    assert!(taken["confirmedAt"].is_string(), "{taken}");
    sqlx::query("INSERT INTO t SELECT generate_series(101, 150)")
        .execute(&mut c)
        .await
        .unwrap();

    // Its objects are in the bucket: the data and the manifest, written last.
    let b = bucket(&config, &secrets);
    let objects = b
        .list(&b.key(&format!(
            "{pg_id}/backups/{}/",
            taken["id"].as_str().unwrap()
        )))
        .await
        .unwrap();
    let names: Vec<&str> = objects
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["base.tar", "manifest.json"], "{objects:?}");
    assert!(objects[0].1 > 1_000_000, "a whole cluster: {objects:?}");

    // Redis: keys, a backup.
    let mut body = redis_body("cache", "8");
    body["backups"] = backups.clone();
    let (redis_id, port, redis_pw) = running_redis(&s, body).await;
    for i in 0..50 {
        assert_eq!(
            redis_cmd(
                port,
                &redis_pw,
                &["SET", &format!("k{i}"), &format!("v{i}")]
            )
            .await,
            "+OK"
        );
    }
    let redis_backup = backup_now(&s, &redis_id).await;
    assert!(redis_backup["confirmedAt"].is_string(), "{redis_backup}");

    // Restores: new services with the data of that moment; the sources are untouched.
    let mut body = pg_body("orders-restored", "17");
    body["recoverFrom"] = json!({"id": taken["id"]});
    let (_, restored_url) = running_pg(&s, body).await;
    assert_ne!(
        restored_url, url,
        "a new service, with its own port and password"
    );
    assert_eq!(ids_in(&restored_url).await, (1..=100).collect::<Vec<_>>());
    assert_eq!(ids_in(&url).await, (1..=150).collect::<Vec<_>>());
    // ... and it takes writes (promoted, not left in recovery).
    sqlx::query("INSERT INTO t VALUES (1000)")
        .execute(&mut pg(&restored_url).await)
        .await
        .unwrap();

    let mut body = redis_body("cache-restored", "8");
    body["recoverFrom"] = json!({"id": redis_backup["id"]});
    let (_, rport, rpw) = running_redis(&s, body).await;
    assert_eq!(redis_cmd(rport, &rpw, &["DBSIZE"]).await, ":50");
    assert_eq!(redis_cmd(rport, &rpw, &["GET", "k7"]).await, "v7");
    // The old password does not open the copy.
    assert!(redis_cmd(rport, &redis_pw, &["PING"])
        .await
        .starts_with("-"));

    // Bad requests are refused with the field and the reason.
    for (recover, field) in [
        (json!({"id": uuid::Uuid::new_v4()}), "recoverFrom.id"),
        (json!({"id": redis_backup["id"]}), "recoverFrom.id"), // a Redis backup into PostgreSQL
        (json!({"id": "nope"}), "recoverFrom.id"),
        (json!({"id": taken["id"], "extra": 1}), "recoverFrom.extra"),
    ] {
        let mut body = pg_body("bad-restore", "17");
        body["recoverFrom"] = recover.clone();
        let (code, v) = s
            .call(reqwest::Method::POST, "/api/managed-services", Some(body))
            .await;
        assert_eq!(code, 422, "{recover}: {v}");
        assert!(v.to_string().contains(field), "{recover}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_a_store_that_refuses_fails_loudly_and_is_not_confirmed() {
    let s = TestServer::start().await;
    let (config, _) = store(&s, "wrong-key").await;
    let mut body = redis_body("cache", "8");
    body["backups"] = json!({"enabled": true, "config": config,
                             "secrets": {"secretKey": "not-the-secret-key"}});
    let created = s.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let entry = backup_now(&s, &id).await;
    assert!(entry["confirmedAt"].is_null(), "{entry}");
    let error = entry["error"].as_str().unwrap();
    assert!(
        error.contains("403") || error.contains("Signature"),
        "{error}"
    );
    // The service says so in its status, and keeps running.
    let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
    assert_eq!(v["status"]["state"], "synchronized", "{v}");
    let reason = v["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed") && reason.contains("no backup is confirmed yet"),
        "{v}"
    );
    let (_, v) = s
        .get(&format!("/api/managed-services/{id}/events?limit=50"))
        .await;
    let failed: Vec<&Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["eventName"] == "berth.backup.failed")
        .collect();
    assert!(!failed.is_empty(), "{v}");
    assert_eq!(failed[0]["severityNumber"], 17, "{:?}", failed[0]);

    // A store that cannot be reached: the same, with that reason.
    let mut unreachable = config.clone();
    unreachable["endpointUrl"] = json!("http://127.0.0.1:1");
    let mut body = redis_body("cache-3", "8");
    body["backups"] = json!({"enabled": true, "config": unreachable,
                             "secrets": {"secretKey": "whatever"}});
    let id3 = s.create(body).await["id"].as_str().unwrap().to_owned();
    s.wait_state(&id3, "synchronized", READY).await;
    let entry = backup_now(&s, &id3).await;
    assert!(entry["confirmedAt"].is_null(), "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("unreachable"),
        "{entry}"
    );

    // Settings that cannot work are refused at the edge, with the field.
    let mut body = redis_body("cache-2", "8");
    body["backups"] = json!({"enabled": true, "config": {"endpointUrl": "ftp://x", "destinationPath": "bucket"},
                             "secrets": {}});
    let (code, v) = s
        .call(reqwest::Method::POST, "/api/managed-services", Some(body))
        .await;
    assert_eq!(code, 422, "{v}");
    for field in [
        "backups.config.endpointUrl",
        "backups.config.destinationPath",
        "backups.config",
        "backups.secrets",
    ] {
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_expired_backups_and_their_objects() {
    // A "day" of retention lasts 5 seconds here.
    let s = TestServer::start_with(|cfg| cfg.retention_day = Duration::from_secs(5)).await;
    let (config, secrets) = store(&s, "retention").await;
    let mut body = redis_body("cache", "8");
    body["backups"] =
        json!({"enabled": true, "retentionDays": 1, "config": config, "secrets": secrets});
    let created = s.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    let old: Vec<String> = [backup_now(&s, &id).await, backup_now(&s, &id).await]
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    let b = bucket(&config, &secrets);
    let objects_of = |backup: &str| b.key(&format!("{id}/backups/{backup}/"));
    for backup in &old {
        assert_eq!(b.list(&objects_of(backup)).await.unwrap().len(), 2);
    }

    // Past the retention, a new backup: the two old ones go, objects and entries; the new one
    // stays. (Until then, the newest confirmed backup is always kept.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    let young = backup_now(&s, &id).await;
    let young = young["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        let listed: Vec<&str> = v["backups"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        if listed == [young.as_str()] {
            assert_eq!(v["backups"]["retentionDays"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "not expired: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for backup in &old {
        assert!(b.list(&objects_of(backup)).await.unwrap().is_empty());
    }
    assert_eq!(b.list(&objects_of(&young)).await.unwrap().len(), 2);
    let (_, v) = s
        .get(&format!("/api/managed-services/{id}/events?limit=100"))
        .await;
    let expired = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["eventName"] == "berth.backup.expired")
        .count();
    assert_eq!(expired, 2, "{v}");
}

/// The service's status details' `walArchivedUntil`, once it is at least `at`.
async fn wait_archived(s: &TestServer, id: &str, at: time::OffsetDateTime) {
    let rfc = time::format_description::well_known::Rfc3339;
    let deadline = Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        let until = v["status"]["details"]["walArchivedUntil"]
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &rfc).ok());
        if until.is_some_and(|u| u >= at) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "WAL not archived past {at}: {}",
            v["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_recovers_to_a_point_in_time_from_the_archived_wal() {
    let rfc = time::format_description::well_known::Rfc3339;
    let s = TestServer::start().await;
    let (config, secrets) = store(&s, "pitr").await;
    let mut body = pg_body("ledger", "16");
    body["config"]["archiveTimeoutS"] = json!(5);
    body["backups"] =
        json!({"enabled": true, "intervalH": 24, "config": config, "secrets": secrets});
    let created = s.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    s.wait_state(&id, "synchronized", READY).await;
    // The first backup is taken on its own, as soon as the service runs.
    let first = first_backup(&s, &id).await;
    assert!(first["confirmedAt"].is_string(), "{first}");
    let url = s.env(&id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = pg(&url).await;
    for sql in [
        "CREATE TABLE t (id int primary key)",
        "INSERT INTO t SELECT generate_series(1, 100)",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    // The moment to go back to: after those commits, before the ones below.
    let moment = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for sql in ["DELETE FROM t WHERE id > 50", "INSERT INTO t VALUES (500)"] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    let after = time::OffsetDateTime::now_utc();
    wait_archived(&s, &id, after).await;

    // Outside what the backups and the archive cover: refused with the bounds.
    let first_confirmed =
        time::OffsetDateTime::parse(first["confirmedAt"].as_str().unwrap(), &rfc).unwrap();
    for (t, says) in [
        (
            first_confirmed - time::Duration::minutes(5),
            "before the first backup",
        ),
        (
            after + time::Duration::hours(1),
            "after the last archived WAL",
        ),
    ] {
        let mut body = pg_body("too-far", "16");
        body["recoverFrom"] = json!({"msId": id, "time": t.format(&rfc).unwrap()});
        let (code, v) = s
            .call(reqwest::Method::POST, "/api/managed-services", Some(body))
            .await;
        assert_eq!(code, 422, "{v}");
        assert!(v.to_string().contains(says), "{says}: {v}");
    }

    // To the moment: exactly the rows of then; the source goes on with its own.
    let mut body = pg_body("ledger-then", "16");
    body["recoverFrom"] = json!({"msId": id, "time": moment.format(&rfc).unwrap()});
    let (_, rurl) = running_pg(&s, body).await;
    assert_eq!(ids_in(&rurl).await, (1..=100).collect::<Vec<_>>());
    let mut now: Vec<i32> = (1..=50).collect();
    now.push(500);
    assert_eq!(ids_in(&url).await, now);
    sqlx::query("INSERT INTO t VALUES (1000)")
        .execute(&mut pg(&rurl).await)
        .await
        .unwrap();

    // Backups turned off: archiving stops (the spool goes, so segments are no longer kept).
    let spool = s.instance_dir(&id).join("wal-spool");
    assert!(spool.is_dir());
    let (code, v) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/managed-services/{id}"),
            Some(json!({"backups": {"enabled": false}})),
        )
        .await;
    assert!(code < 300, "{v}");
    let deadline = Instant::now() + READY;
    while spool.exists() {
        assert!(Instant::now() < deadline, "WAL still archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Purged, the source takes its backups and its archived WAL along (the store's secret was
    // kept for that, though backups are off).
    let b = bucket(&config, &secrets);
    let everything = b.key(&format!("{id}/"));
    let stored = b.list(&everything).await.unwrap();
    assert!(
        stored.iter().any(|(k, _)| k.contains("/wal/")),
        "{stored:?}"
    );
    let (code, v) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}?skipFinalBackup=true"),
            None,
        )
        .await;
    assert!(code < 300, "{v}");
    s.wait_gone(&id, READY).await;
    assert_eq!(b.list(&everything).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_services_are_backed_up_as_they_were_left_and_restore() {
    let s = TestServer::start().await;
    let (config, secrets) = store(&s, "paused").await;
    let backups = json!({"enabled": true, "config": config, "secrets": secrets});

    let mut body = pg_body("archive", "15");
    body["backups"] = backups.clone();
    let pg_id = s.create(body).await["id"].as_str().unwrap().to_owned();
    let mut body = redis_body("sessions", "7");
    body["backups"] = backups;
    let created = s.create(body).await;
    let redis_id = created["id"].as_str().unwrap().to_owned();
    let redis_pw = created["generatedSecrets"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_state(&pg_id, "synchronized", READY).await;
    let svc = s.wait_state(&redis_id, "synchronized", READY).await;
    let url = s.env(&pg_id).await["DATABASE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = pg(&url).await;
    for sql in [
        "CREATE TABLE t (id int primary key)",
        "INSERT INTO t SELECT generate_series(1, 30)",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    drop(c);
    let port = svc["status"]["details"]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        redis_cmd(port, &redis_pw, &["SET", "user:1", "ada"]).await,
        "+OK"
    );

    let mut taken = Vec::new();
    for id in [&pg_id, &redis_id] {
        let (code, v) = s
            .call(
                reqwest::Method::PATCH,
                &format!("/api/managed-services/{id}"),
                Some(json!({"pause": true})),
            )
            .await;
        assert!(code < 300, "{v}");
        s.wait_state(id, "paused", READY).await;
        let b = backup_now(&s, id).await;
        assert!(b["confirmedAt"].is_string(), "{b}");
        taken.push(b["id"].as_str().unwrap().to_owned());
        // Still paused: the backup did not start it.
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        assert_eq!(v["status"]["state"], "paused", "{v}");
        assert_eq!(v["status"]["details"]["running"], false, "{v}");
    }

    let mut body = pg_body("archive-copy", "15");
    body["recoverFrom"] = json!({"id": taken[0]});
    let (_, rurl) = running_pg(&s, body).await;
    assert_eq!(ids_in(&rurl).await, (1..=30).collect::<Vec<_>>());

    let mut body = redis_body("sessions-copy", "7");
    body["recoverFrom"] = json!({"id": taken[1]});
    let (_, rport, rpw) = running_redis(&s, body).await;
    assert_eq!(redis_cmd(rport, &rpw, &["GET", "user:1"]).await, "ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_up_in_checked_parts_and_come_back_checked() {
    let s = TestServer::start().await;
    let (config, secrets) = store(&s, "parts").await;
    let b = bucket(&config, &secrets);
    // 70 MiB and a bit: three parts, the last one short.
    let data: Vec<u8> = (0..(70u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let key = b.key("big.bin");
    let info = berth_backup::take::upload_stream(&b, &key, &data[..])
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.part_size, Some(32 << 20));
    assert!(
        info.md5.ends_with("-3"),
        "S3's multipart ETag: {}",
        info.md5
    );
    // The store computed the same checksum from what it stored.
    assert_eq!(b.head(&key).await.unwrap().unwrap().1, info.md5);

    let mut back = Vec::new();
    berth_backup::restore::download(&b, &info, &mut back)
        .await
        .unwrap();
    assert!(back == data, "the bytes come back as they went");
    // The manifest also records the whole object's CRC-32, which restores check.
    assert_eq!(info.crc32, Some(crc32fast::hash(&data)));
    // A checksum that does not match what the store holds is caught: the CRC-32, or the MD5
    // of a manifest written before Berth recorded CRCs.
    let wrong_crc = berth_backup::ObjectInfo {
        crc32: Some(info.crc32.unwrap() ^ 1),
        ..info.clone()
    };
    let before_crcs = berth_backup::ObjectInfo {
        crc32: None,
        ..info.clone()
    };
    let wrong_md5 = berth_backup::ObjectInfo {
        md5: format!("{}-3", "0".repeat(32)),
        ..before_crcs.clone()
    };
    for wrong in [&wrong_crc, &wrong_md5] {
        let e = berth_backup::restore::download(&b, wrong, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("verification failed"), "{e}");
    }
    let mut back = Vec::new();
    berth_backup::restore::download(&b, &before_crcs, &mut back)
        .await
        .unwrap();
    assert!(back == data, "old manifests still restore, checked by MD5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_takes_a_final_backup_even_after_a_restart_and_it_restores() {
    let mut s = TestServer::spawn().await;
    let (config, secrets) = store(&s, "final").await;
    let mut body = redis_body("carts", "8");
    body["backups"] = json!({"enabled": true, "config": config, "secrets": secrets});
    let (id, port, pw) = running_redis(&s, body).await;
    assert_eq!(
        redis_cmd(port, &pw, &["SET", "cart:9", "3 apples"]).await,
        "+OK"
    );

    // A restart: the instance runs on, its password is only in the (sealed) store; then the
    // delete destroys it, and the final backup must still be taken and confirmed.
    s.kill9();
    s.restart().await;
    let (code, v) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}"),
            None,
        )
        .await;
    assert!(code < 300, "{v}");
    let gone = s.wait_state(&id, "deleted", READY).await;
    let last = gone["backups"]["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last["confirmedAt"].is_string(), "{gone}");

    let mut body = redis_body("carts-again", "8");
    body["recoverFrom"] = json!({"id": last["id"]});
    let (_, rport, rpw) = running_redis(&s, body).await;
    assert_eq!(redis_cmd(rport, &rpw, &["GET", "cart:9"]).await, "3 apples");
}

/// A TLS front for a plain-HTTP store, as a store behind nginx or a load balancer is: its
/// certificate (for 127.0.0.1) is signed by a CA made here with `openssl`, which the system does
/// not trust. Returns the `https://` endpoint and the CA's PEM.
async fn tls_front(upstream: &str) -> (String, String) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    let dir = std::env::temp_dir().join(format!("berth-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=berth test CA",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("openssl (installed by scripts/setup.sh)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let ca = String::from_utf8(read("ca.pem")).unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read("srv.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read("srv.key")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A handshake the client refuses ends here, as it would at a real front.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut store = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut store).await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_an_https_store_trusting_its_ca_and_refuse_an_untrusted_one() {
    let s = TestServer::start().await;
    let (mut config, secrets) = store(&s, "tls").await;
    let plain = config.clone();
    let (endpoint, ca) = tls_front(config["endpointUrl"].as_str().unwrap()).await;
    config["endpointUrl"] = json!(endpoint);

    // Not trusted by the system: the backup fails, and says why.
    let mut body = redis_body("untrusted", "8");
    body["backups"] = json!({"enabled": true, "config": config, "secrets": secrets});
    let (id, _, _) = running_redis(&s, body).await;
    let entry = backup_now(&s, &id).await;
    assert!(entry["confirmedAt"].is_null(), "{entry}");
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");

    // With the store's CA given, backups go over TLS, are confirmed, and restore.
    config["caCertificate"] = json!(ca);
    let mut body = redis_body("cache", "8");
    body["backups"] = json!({"enabled": true, "config": config, "secrets": secrets});
    let (id, port, pw) = running_redis(&s, body).await;
    assert_eq!(redis_cmd(port, &pw, &["SET", "k", "over-tls"]).await, "+OK");
    let entry = backup_now(&s, &id).await;
    assert!(entry["confirmedAt"].is_string(), "{entry}");
    let mut body = redis_body("cache-restored", "8");
    body["recoverFrom"] = json!({"id": entry["id"]});
    let (_, rport, rpw) = running_redis(&s, body).await;
    assert_eq!(redis_cmd(rport, &rpw, &["GET", "k"]).await, "over-tls");
    // What went over TLS is in the store, as the plain endpoint sees it.
    let b = bucket(&plain, &secrets);
    let objects = b.list(&b.key(&format!("{id}/backups/"))).await.unwrap();
    assert!(
        objects.iter().any(|(k, _)| k.ends_with("/manifest.json")),
        "{objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_missed_while_berth_was_down_is_reported_and_caught_up() {
    // An "hour" of intervalH lasts 12 s here, so a schedule is missed once it is 1 s late
    // (five minutes of a real hour).
    let mut s = TestServer::spawn_with_toml("schedule_hour_secs = 12\n").await;
    let (config, secrets) = store(&s, "missed").await;
    let mut body = redis_body("sessions", "8");
    body["backups"] =
        json!({"enabled": true, "intervalH": 1, "config": config, "secrets": secrets});
    let (id, _, _) = running_redis(&s, body).await;
    let entries = |v: &Value| v["backups"]["entries"].as_array().unwrap().clone();
    let missed = |v: &Value| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventName"] == "berth.backup.missed")
            .cloned()
            .collect::<Vec<_>>()
    };
    // The first backup is taken at once.
    let first = first_backup(&s, &id).await;
    assert!(first["confirmedAt"].is_string(), "{first}");

    let (_, ev) = s
        .get(&format!("/api/managed-services/{id}/events?limit=100"))
        .await;
    assert!(missed(&ev).is_empty(), "nothing missed yet: {ev}");

    // Berth is down over the next one (due 12 s after the first was scheduled).
    s.kill9();
    let scheduled = time::OffsetDateTime::parse(
        first["scheduledAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let late = scheduled + time::Duration::seconds(12 + 2);
    let wait = late - time::OffsetDateTime::now_utc();
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    s.restart().await;

    // Back up: the miss is reported, and a backup is taken at once.
    let deadline = Instant::now() + READY;
    loop {
        let (_, v) = s.get(&format!("/api/managed-services/{id}")).await;
        let (_, ev) = s
            .get(&format!("/api/managed-services/{id}/events?limit=100"))
            .await;
        let caught_up = entries(&v)
            .iter()
            .any(|e| e["id"] != first["id"] && e["confirmedAt"].is_string());
        if caught_up && !missed(&ev).is_empty() {
            let m = &missed(&ev)[0];
            assert_eq!(m["severityNumber"], 13, "{m}");
            assert!(m["body"].as_str().unwrap().contains("was missed"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}\n{ev}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_survives_checkpoints_that_recycle_the_wal_under_it() {
    let s = TestServer::start().await;
    let (config, secrets) = store(&s, "busy").await;
    let mut body = pg_body("busy", "17");
    body["backups"] = json!({"enabled": true, "config": config, "secrets": secrets});
    let (id, port, superuser) = running(&s, body, "superuserPassword").await;
    let mut c = pg(&format!(
        "postgres://postgres:{superuser}@127.0.0.1:{port}/postgres"
    ))
    .await;
    sqlx::query("CREATE TABLE t AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 20000) g")
        .execute(&mut c)
        .await
        .unwrap();
    // A busy server: new WAL segments and checkpoints all the time, each one free to remove
    // the segments before it (they are archived at once). `pg_basebackup -X fetch` reads the
    // backup's WAL at its end, so without a hold on it the backup fails with "requested WAL
    // segment ... has already been removed".
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sqlx::query("UPDATE t SET pad = pad WHERE id % 50 = 0")
                    .execute(&mut c)
                    .await
                    .unwrap();
                sqlx::query("SELECT pg_switch_wal()")
                    .execute(&mut c)
                    .await
                    .unwrap();
                sqlx::query("CHECKPOINT").execute(&mut c).await.unwrap();
                rounds += 1;
            }
            rounds
        }
    });
    for _ in 0..3 {
        let b = backup_now(&s, &id).await;
        assert!(b["confirmedAt"].is_string(), "{b}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.await.unwrap();
    assert!(rounds > 10, "the WAL did churn: {rounds} rounds");
}

/// `berth <args>` (the CLI) against `s`, as a user types it.
fn berth_cli(s: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["--url", &s.base, "--token", &s.token])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_turns_backups_on_to_an_s3_service_by_name() {
    let s = TestServer::start().await;
    let store_id = s
        .create(
            json!({"teamId": 1, "name": "backups", "provider": {"name": "s3"},
                       "plan": {"id": 0, "parameters": {"memory": 256}}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_state(&store_id, "synchronized", READY).await;

    let out = berth_cli(
        &s,
        &[
            "services",
            "create",
            "redis",
            "--name",
            "carts",
            "--backup-to",
            "backups",
            "--backup-every",
            "6",
            "--backup-retention-days",
            "3",
            "--wait",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = shown["id"].as_str().unwrap().to_owned();
    let b = &shown["backups"];
    assert_eq!(b["enabled"], true, "{shown}");
    assert_eq!(b["intervalH"], 6, "{shown}");
    assert_eq!(b["retentionDays"], 3, "{shown}");
    assert!(
        b.get("config").is_none() && b.get("secrets").is_none(),
        "{shown}"
    );
    // The settings work: the first backup is taken at once and confirmed, under `carts/` in
    // the store's bucket.
    let first = first_backup(&s, &id).await;
    assert!(first["confirmedAt"].is_string(), "{first}");
    let env = s.env(&store_id).await;
    let b = bucket(
        &json!({"endpointUrl": env["S3_ENDPOINT"], "accessKey": env["AWS_ACCESS_KEY_ID"],
                "destinationPath": format!("s3://{}/carts/", env["S3_BUCKET"].as_str().unwrap()),
                "region": env["S3_REGION"]}),
        &json!({"secretKey": env["AWS_SECRET_ACCESS_KEY"]}),
    );
    let objects = b.list(&b.key(&format!("{id}/backups/"))).await.unwrap();
    assert!(
        objects
            .iter()
            .any(|(k, _)| k.starts_with("carts/") && k.ends_with("/manifest.json")),
        "{objects:?}"
    );

    // A backup now, listed; a new service made from it.
    let port = shown["status"]["details"]["port"].as_u64().unwrap() as u16;
    let pw = shown["generatedSecrets"]["password"].as_str().unwrap();
    assert_eq!(
        redis_cmd(port, pw, &["SET", "cart:1", "pears"]).await,
        "+OK"
    );
    let out = berth_cli(&s, &["services", "backup", "carts", "--wait", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(taken["confirmedAt"].is_string(), "{taken}");
    let backup = taken["id"].as_str().unwrap();
    let out = berth_cli(&s, &["services", "backups", "carts"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains(backup), "{listed}");
    let out = berth_cli(
        &s,
        &[
            "services",
            "create",
            "redis",
            "--name",
            "carts-copy",
            "--restore-from",
            backup,
            "--wait",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let copy: Value = serde_json::from_slice(&out.stdout).unwrap();
    let port = copy["status"]["details"]["port"].as_u64().unwrap() as u16;
    let pw = copy["generatedSecrets"]["password"].as_str().unwrap();
    assert_eq!(redis_cmd(port, pw, &["GET", "cart:1"]).await, "pears");

    // A point in time goes to the API as recoverFrom {msId, time}, which checks it: here, a
    // time before the first backup.
    let out = berth_cli(
        &s,
        &[
            "services",
            "create",
            "redis",
            "--name",
            "carts-then",
            "--restore-service",
            "carts",
            "--restore-time",
            "2020-01-01T00:00:00Z",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("recoverFrom"),
        "{err}"
    );

    // An existing service: backups on, the schedule changed, backups off.
    let out = berth_cli(
        &s,
        &["services", "create", "redis", "--name", "plain", "--wait"],
    );
    assert!(out.status.success(), "{out:?}");
    for (args, enabled, hours) in [
        (&["--backup-to", "backups"][..], true, 24),
        (&["--backup-every", "2"][..], true, 2),
        (&["--no-backups"][..], false, 2),
    ] {
        let out = berth_cli(
            &s,
            &[&["services", "update", "plain", "-o", "json"][..], args].concat(),
        );
        assert!(out.status.success(), "{args:?}: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backups"]["enabled"], enabled, "{args:?}: {v}");
        assert_eq!(v["backups"]["intervalH"], hours, "{args:?}: {v}");
    }

    // A store that is not an s3 service is refused before anything is made.
    let out = berth_cli(
        &s,
        &[
            "services",
            "create",
            "redis",
            "--name",
            "x",
            "--backup-to",
            "carts",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--backup-to: 'carts' is a redis service, not an s3 one"),
        "{err}"
    );
    let out = berth_cli(
        &s,
        &[
            "services",
            "create",
            "redis",
            "--name",
            "y",
            "--backup-every",
            "2",
        ],
    );
    assert!(!out.status.success(), "--backup-every needs --backup-to");
}
