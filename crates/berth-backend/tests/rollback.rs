//! A change the engine rejects leaves the instance running on its previous plan and config,
//! with its data, and the update fails with the reason: never half-applied.
//!
//! The built-in engines accept every change a user can make today, so the rejection comes from a
//! config option that the real `redis-server` refuses at start: the engine below is Berth's Redis
//! engine (every step real) with one extra rule, `config.extraArg` passed on the command line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_backend::local::{HostConfig, LocalBackend, LocalHost};
use berth_backend::{InstancePatch, InstanceSpec, ProviderBackend};
use berth_engines::redis::Redis;
use berth_engines::{Engine, EngineKind, Installation, InstanceCtx, Launch, RunAs};
use berth_types::JsonMap;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

/// Berth's Redis engine, plus `config.extraArg` on the server's command line.
struct RedisWithArg(Redis);

#[async_trait]
impl Engine for RedisWithArg {
    fn kind(&self) -> EngineKind {
        self.0.kind()
    }
    async fn prepare(&self, i: &Installation, r: Option<RunAs>) -> berth_engines::Result<()> {
        self.0.prepare(i, r).await
    }
    async fn init(&self, c: &InstanceCtx, r: Option<RunAs>) -> berth_engines::Result<()> {
        self.0.init(c, r).await
    }
    fn write_config(&self, c: &InstanceCtx, s: &JsonMap) -> berth_engines::Result<()> {
        self.0.write_config(c, s)
    }
    fn launch(&self, c: &InstanceCtx) -> Launch {
        let mut l = self.0.launch(c);
        if let Some(arg) = c.config.get("extraArg").and_then(Value::as_str) {
            l.args.push(arg.to_owned());
        }
        l
    }
    async fn wait_started(&self, c: &InstanceCtx, d: Instant) -> berth_engines::Result<()> {
        self.0.wait_started(c, d).await
    }
    async fn bootstrap(&self, c: &InstanceCtx, s: &JsonMap) -> berth_engines::Result<()> {
        self.0.bootstrap(c, s).await
    }
    async fn probe(&self, c: &InstanceCtx, s: &JsonMap) -> berth_engines::Result<()> {
        self.0.probe(c, s).await
    }
    fn details(&self, c: &InstanceCtx) -> JsonMap {
        self.0.details(c)
    }
    fn stop_signal(&self) -> i32 {
        self.0.stop_signal()
    }
}

mod common;
use common::run_as;

async fn redis(port: u16, args: &[&str]) -> String {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut s = BufReader::new(s);
    let mut req = String::new();
    for cmd in [vec!["AUTH", "rollback-suite-pw"], args.to_vec()] {
        req.push_str(&format!("*{}\r\n", cmd.len()));
        for a in cmd {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut auth = String::new();
    s.read_line(&mut auth).await.unwrap();
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    if line.starts_with('$') {
        line.clear();
        s.read_line(&mut line).await.unwrap();
    }
    line.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_engine_rejects_is_rolled_back_and_the_instance_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    // Test binaries run one after another; within this one, this is the only test.
    let base = 19900;
    let host = LocalHost::open(
        HostConfig {
            data_dir: dir.path().to_path_buf(),
            engines_dir: std::env::var_os("BERTH_ENGINES_DIR")
                .map(Into::into)
                .unwrap_or_else(|| "/opt/berth/engines".into()),
            ports: base..base + 20,
            start_timeout: Duration::from_secs(10),
            run_as: run_as(),
            cipher: None,
        },
        Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    let b = LocalBackend::new(host, Arc::new(RedisWithArg(Redis)));
    let id = Uuid::new_v4();
    let secrets = json!({"password": "rollback-suite-pw"})
        .as_object()
        .unwrap()
        .clone();
    let config = json!({"version": "7"}).as_object().unwrap().clone();
    b.create(&InstanceSpec {
        id,
        team_id: 1,
        plan: json!({"memory": 64}).as_object().unwrap().clone(),
        config: config.clone(),
        secrets: secrets.clone(),
        pause: false,
        recover_from: None,
    })
    .await
    .unwrap();
    let st = b.status(&[id]).await.unwrap().remove(&id).unwrap();
    assert!(st.ready(), "{st:?}");
    let port = st.details["port"].as_u64().unwrap() as u16;
    assert_eq!(redis(port, &["SET", "kept", "yes"]).await, "+OK");

    // A config the real server refuses at start.
    let mut bad = config.clone();
    bad.insert("extraArg".into(), json!("--no-such-option-anywhere"));
    let err = b
        .update(
            id,
            &InstancePatch {
                team_id: 1,
                plan: None,
                config: Some(bad),
                secrets: Some(secrets.clone()),
                pause: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "the change was rejected and the instance runs on its previous plan and config"
        ),
        "{err}"
    );

    // The previous config runs, with its data.
    let st = b.status(&[id]).await.unwrap().remove(&id).unwrap();
    assert!(st.ready(), "{st:?}");
    assert_eq!(st.config, config, "the rejected config is not recorded");
    assert_eq!(redis(port, &["GET", "kept"]).await, "yes");

    b.delete(id).await.unwrap();
    assert!(!dir.path().join("instances").join(id.to_string()).exists());
}
