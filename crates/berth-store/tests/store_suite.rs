//! One suite for every store implementation. SQLite runs here on a real database file; the
//! PostgreSQL store will call the same functions.

use berth_store::{Cipher, MasterKey, NewService, SqliteStore, Store, StoreError};
use berth_types::*;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

fn spec(team: i64, name: &str) -> ServiceSpec {
    ServiceSpec {
        team_id: team,
        name: name.into(),
        provider: ProviderRef {
            name: "redis".into(),
            version: "v1".into(),
        },
        plan: PlanSelection {
            id: 0,
            parameters: json!({"memory": 128}).as_object().unwrap().clone(),
        },
        config: json!({"version": "7"}).as_object().unwrap().clone(),
        pause: false,
        backups: BackupSettings::default(),
        recover_from: None,
    }
}

fn secrets(pw: &str) -> Secrets {
    Secrets {
        service: json!({"password": pw}).as_object().unwrap().clone(),
        backups: Default::default(),
        recover: Default::default(),
    }
}

async fn insert(store: &dyn Store, team: i64, name: &str, pw: &str) -> Result<Service, StoreError> {
    let now = OffsetDateTime::now_utc();
    let new = NewService {
        id: Uuid::new_v4(),
        spec: spec(team, name),
        created_at: now,
    };
    store
        .service_insert(
            &new,
            &secrets(pw),
            &ServiceStatus::new(ServiceState::Creating, 1, now),
        )
        .await
}

async fn suite(store: &dyn Store) {
    // insert, get, names unique per team
    let a = insert(store, 1, "orders", "pw-a-123456789").await.unwrap();
    assert_eq!(a.generation, 1);
    assert_eq!(store.service_get(a.id).await.unwrap(), a);
    assert!(matches!(
        insert(store, 1, "orders", "x").await,
        Err(StoreError::Conflict(_))
    ));
    let b = insert(store, 2, "orders", "pw-b-123456789").await.unwrap();
    assert_eq!(
        store.service_list(Some(1), false).await.unwrap(),
        vec![a.clone()]
    );
    assert_eq!(store.service_list(None, false).await.unwrap().len(), 2);

    // secrets round-trip
    assert_eq!(
        store.secrets_get(b.id).await.unwrap(),
        secrets("pw-b-123456789")
    );

    // generation check: one writer wins, the stale one gets a conflict
    let mut s2 = a.spec.clone();
    s2.config.insert("version".into(), json!("8"));
    let a2 = store
        .service_update(a.id, 1, &s2, Some(&secrets("new-pw-123456")))
        .await
        .unwrap();
    assert_eq!(a2.generation, 2);
    assert_eq!(a2.spec, s2);
    assert!(matches!(
        store.service_update(a.id, 1, &a.spec, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.secrets_get(a.id).await.unwrap(),
        secrets("new-pw-123456")
    );
    assert!(matches!(
        store.service_get(Uuid::new_v4()).await,
        Err(StoreError::NotFound(_))
    ));

    // status
    let now = OffsetDateTime::now_utc();
    let mut st = ServiceStatus::new(ServiceState::Synchronized, 2, now);
    st.details.insert("port".into(), json!(30001));
    let ev = Event::new(a.id, "berth.state", Severity::Info, "now synchronized", now);
    store
        .status_record(a.id, Some(&st), std::slice::from_ref(&ev))
        .await
        .unwrap();
    assert_eq!(store.event_list(a.id, 1, None).await.unwrap()[0].1, ev);
    let got = store.status_get(a.id).await.unwrap().unwrap();
    assert_eq!(got.state, ServiceState::Synchronized);
    assert_eq!(got.details, st.details);

    // events, newest first, paged
    for i in 0..5 {
        let ev = Event::new(
            a.id,
            "berth.test",
            Severity::Info,
            format!("event {i}"),
            now,
        );
        store.event_append(a.id, &ev).await.unwrap();
    }
    let page = store.event_list(a.id, 2, None).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|(_, e)| e.body.as_str())
            .collect::<Vec<_>>(),
        ["event 4", "event 3"]
    );
    let next = store.event_list(a.id, 10, Some(page[1].0)).await.unwrap();
    assert_eq!(next.len(), 4);
    assert_eq!(next[0].1.body, "event 2");

    // the change feed names the services whose records changed, after they committed
    let (v0, _) = store.services_changed_since(u64::MAX);
    store
        .status_record(
            a.id,
            None,
            &[Event::new(a.id, "x", Severity::Info, "only an event", now)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.services_changed_since(v0).1,
        Some(vec![]),
        "events are not in lists"
    );
    let synced = ServiceStatus::new(ServiceState::Synchronized, 2, now);
    store.status_record(a.id, Some(&synced), &[]).await.unwrap();
    let (v1, changed) = store.services_changed_since(v0);
    assert_eq!(changed, Some(vec![a.id]));
    let some = store
        .service_records(&[a.id, Uuid::new_v4()], 0)
        .await
        .unwrap();
    assert_eq!(some.len(), 1, "a service that is gone is missing");
    assert_eq!(
        some[0].status.as_ref().unwrap().state,
        ServiceState::Synchronized
    );
    let entry = BackupEntry {
        id: Uuid::new_v4(),
        scheduled_at: now,
        initiated_at: None,
        confirmed_at: None,
        error: None,
    };
    store.backup_insert(b.id, &entry).await.unwrap();
    store
        .backup_update(&BackupEntry {
            initiated_at: Some(now),
            ..entry.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.services_changed_since(v1).1, Some(vec![b.id]));

    // the full list: the same services, each with its status, newest events and backups
    let full = store.service_list_full(Some(1), false, 2).await.unwrap();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].service, store.service_get(a.id).await.unwrap());
    assert_eq!(full[0].status, store.status_get(a.id).await.unwrap());
    let newest: Vec<Event> = store
        .event_list(a.id, 2, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(full[0].recent_events, newest);
    assert_eq!(full[0].backups, store.backup_list(a.id).await.unwrap());
    assert_eq!(
        store.service_list_full(None, false, 2).await.unwrap().len(),
        2
    );

    // delete: hidden from the default list, secrets destroyed, name free again
    let d = store.service_mark_deleted(a.id, now, false).await.unwrap();
    assert!(d.deleted_at.is_some());
    assert_eq!(d.generation, 3);
    // A repeated delete changes nothing.
    let again = store.service_mark_deleted(a.id, now, false).await.unwrap();
    assert_eq!(again, d);
    assert_eq!(store.secrets_get(a.id).await.unwrap(), Secrets::default());
    assert!(store.service_list(Some(1), false).await.unwrap().is_empty());
    assert_eq!(store.service_list(Some(1), true).await.unwrap().len(), 1);
    insert(store, 1, "orders", "again-123456789").await.unwrap();
    assert!(matches!(
        store.service_update(a.id, 3, &a.spec, None).await,
        Err(StoreError::Conflict(_))
    ));

    // delete with backups on: the backup secrets stay for the final backup, until a delete that
    // skips it turns backups off; the backups' store secret stays for the purge
    let mut with_backups = spec(4, "kept");
    with_backups.backups.enabled = true;
    let c = store
        .service_insert(
            &NewService {
                id: Uuid::new_v4(),
                spec: with_backups,
                created_at: now,
            },
            &Secrets {
                service: secrets("pw-c-123456789").service,
                backups: json!({"secretKey": "s3-secret"})
                    .as_object()
                    .unwrap()
                    .clone(),
                recover: Default::default(),
            },
            &ServiceStatus::new(ServiceState::Creating, 1, now),
        )
        .await
        .unwrap();
    let d = store.service_mark_deleted(c.id, now, false).await.unwrap();
    assert!(d.spec.backups.enabled);
    let kept = store.secrets_get(c.id).await.unwrap();
    assert!(kept.service.is_empty());
    assert_eq!(kept.backups["secretKey"], "s3-secret");
    let later = now + time::Duration::seconds(5);
    let d = store.service_mark_deleted(c.id, later, true).await.unwrap();
    assert!(!d.spec.backups.enabled);
    assert_eq!(d.deleted_at, Some(now), "the first delete's time stays");
    assert_eq!(d.generation, 3);
    assert_eq!(store.service_get(c.id).await.unwrap(), d);
    // The backups taken before stay removable at the purge: their store's secret is kept.
    let kept = store.secrets_get(c.id).await.unwrap();
    assert!(kept.service.is_empty());
    assert_eq!(kept.backups["secretKey"], "s3-secret");

    // providers: registered, secret sealed apart, duplicates refused, delete refused while used
    let kv = |secret: &str| {
        ProviderDefinition::from_yaml(&format!(
            "name: redis\nversion: v1\nbackend: {{api: {{endpoint: 'http://x/kv', secret: '{secret}'}}}}\nconfigSchema: {{type: object}}\nsecretsSchema: {{type: object}}\nplans: [{{id: 0, name: S}}]\n"
        ))
        .unwrap()
    };
    store
        .provider_put(&kv("backend-secret-1"), false)
        .await
        .unwrap();
    assert!(matches!(
        store.provider_put(&kv("x"), false).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .provider_put(&kv("backend-secret-2"), true)
        .await
        .unwrap();
    let listed = store.provider_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].rest_endpoint(),
        Some(("http://x/kv", Some("backend-secret-2")))
    );
    // Services of provider redis v1 exist (team 2's and the re-created one): refused.
    assert!(matches!(
        store.provider_delete("redis", "v1").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!store.provider_delete("nope", "v1").await.unwrap());

    // backups: scheduled, then initiated and confirmed
    let mut b = BackupEntry {
        id: Uuid::new_v4(),
        scheduled_at: now,
        initiated_at: None,
        confirmed_at: None,
        error: None,
    };
    store.backup_insert(a.id, &b).await.unwrap();
    b.initiated_at = Some(now);
    b.confirmed_at = Some(now);
    store.backup_update(&b).await.unwrap();
    let got = store.backup_list(a.id).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, b.id);
    assert!(got[0].confirmed_at.is_some() && got[0].error.is_none());
    // found by its id alone (recoverFrom), with its owner; forgotten (retention)
    assert_eq!(
        store.backup_get(b.id).await.unwrap(),
        Some((a.id, got[0].clone()))
    );
    assert_eq!(store.backup_get(Uuid::new_v4()).await.unwrap(), None);
    let other = BackupEntry {
        id: Uuid::new_v4(),
        ..b.clone()
    };
    store.backup_insert(a.id, &other).await.unwrap();
    store.backup_forget(other.id).await.unwrap();
    assert_eq!(store.backup_get(other.id).await.unwrap(), None);
    assert_eq!(store.backup_list(a.id).await.unwrap().len(), 1);

    // purge removes every trace
    store.service_purge(a.id).await.unwrap();
    assert!(matches!(
        store.service_get(a.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.status_get(a.id).await.unwrap().is_none());
    assert!(store.event_list(a.id, 10, None).await.unwrap().is_empty());
    assert!(store.backup_list(a.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_file_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let store = SqliteStore::open(&path, Cipher::new(&MasterKey::random()))
        .await
        .unwrap();
    suite(&store).await;
    // Secrets never reach the file in plaintext.
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("berth.db-wal")) {
        bytes.extend(wal);
    }
    for pw in [
        "pw-b-123456789",
        "new-pw-123456",
        "again-123456789",
        "backend-secret-2",
    ] {
        assert!(
            !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
            "{pw} found in the database file"
        );
    }
}

#[tokio::test]
async fn sqlite_memory_store_passes_the_suite() {
    let store = SqliteStore::in_memory(Cipher::new(&MasterKey::random()))
        .await
        .unwrap();
    suite(&store).await;
}

#[tokio::test]
async fn a_wrong_master_key_cannot_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let store = SqliteStore::open(&path, Cipher::new(&MasterKey::random()))
        .await
        .unwrap();
    let s = insert(&store, 1, "x", "pw-123456789012").await.unwrap();
    drop(store);
    let other = SqliteStore::open(&path, Cipher::new(&MasterKey::random()))
        .await
        .unwrap();
    assert!(matches!(
        other.secrets_get(s.id).await,
        Err(StoreError::Unseal)
    ));
}
