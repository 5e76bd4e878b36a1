//! S3 object storage: one Garage server per service (a single node, one replica), holding the
//! service's bucket and its access key. One server per service, like the other engines: its own
//! port, data, limits and process, so pause, delete and the plan's limits work the same way.
//!
//! Garage listens on the service's port for S3 and on a Unix socket in `run/` for its admin API,
//! through which Berth sets the layout, the bucket, the key and the quotas (no second TCP port:
//! its internal RPC binds an ephemeral one). The RPC secret and the admin token are files of
//! the instances' user, made at `init`, never in the config file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_types::JsonMap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::postgres::{private_dir, secret};
use crate::s3::{self, S3Key};
use crate::{EngineError, EngineKind, Installation, InstanceCtx, Launch, Result, RunAs};

#[derive(Default)]
pub struct Garage;

/// The region Garage answers for; clients sign with it.
pub const REGION: &str = "garage";

fn conf_path(ctx: &InstanceCtx) -> PathBuf {
    ctx.dir.join("garage.toml")
}
fn admin_socket(ctx: &InstanceCtx) -> PathBuf {
    ctx.run_dir().join("admin.sock")
}
fn token_file(ctx: &InstanceCtx) -> PathBuf {
    ctx.run_dir().join("admin.token")
}
fn rpc_secret_file(ctx: &InstanceCtx) -> PathBuf {
    ctx.run_dir().join("rpc.secret")
}

/// The bucket of the service (`config.bucketName`, default `data`): each service has a server
/// of its own, so the name is unique there.
pub fn bucket(config: &JsonMap) -> String {
    config
        .get("bucketName")
        .and_then(Value::as_str)
        .unwrap_or("data")
        .to_owned()
}

/// The access key id that goes with a secret key: `GK` and 24 hex digits (Garage's format) of
/// a hash of the secret. Garage never lets a key id be used again once deleted, so a secret
/// reset must bring a new id; deriving it from the secret makes it known wherever the secret is
/// (the credentials Berth hands out) without storing one more value.
pub fn access_key_id(secret_access_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("berth-s3-access-key-id:{secret_access_key}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("GK{}", &hex[..24])
}

fn key_of(_ctx: &InstanceCtx, secrets: &JsonMap) -> Result<S3Key> {
    Ok(S3Key {
        access_key_id: access_key_id(secret(secrets, "secretAccessKey")?),
        secret_access_key: secret(secrets, "secretAccessKey")?.to_owned(),
        region: REGION.into(),
    })
}

/// Writes `contents` to `path` as a secret file of the instances' user (0600).
fn secret_file(path: &Path, contents: &str, run_as: Option<RunAs>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).map_err(EngineError::io("writing a Garage secret"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(EngineError::io("chmod a Garage secret"))?;
    if let Some(ids) = run_as {
        std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid))
            .map_err(EngineError::io("chown a Garage secret"))?;
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One call to the admin API over its Unix socket (HTTP/1.0: a plain body, no chunks).
async fn admin(
    ctx: &InstanceCtx,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let token = std::fs::read_to_string(token_file(ctx))
        .map_err(EngineError::io("reading the Garage admin token"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nhost: garage\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    let fail = |e: std::io::Error| EngineError::Command(format!("Garage admin API {path}: {e}"));
    let mut s = tokio::net::UnixStream::connect(admin_socket(ctx))
        .await
        .map_err(fail)?;
    s.write_all(req.as_bytes()).await.map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            EngineError::Command(format!(
                "Garage admin API {path}: no HTTP answer ({} bytes: {:?})",
                raw.len(),
                text.chars().take(120).collect::<String>()
            ))
        })?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}

/// An admin call that must succeed.
async fn admin_ok(
    ctx: &InstanceCtx,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let (status, v) = admin(ctx, method, path, body).await?;
    if !(200..300).contains(&status) {
        return Err(EngineError::Command(format!(
            "Garage admin API {path} answered {status}: {}",
            v.get("message").and_then(Value::as_str).unwrap_or("")
        )));
    }
    Ok(v)
}

/// The bucket's quotas from the plan: `storage` MiB and `objects`.
fn quotas(ctx: &InstanceCtx) -> Value {
    json!({
        "maxSize": ctx.plan_int("storage", 1024).max(1) * 1024 * 1024,
        "maxObjects": ctx.plan_int("objects", 100_000).max(1),
    })
}

/// The id of the service's bucket, `None` before it is made.
async fn find_bucket(ctx: &InstanceCtx) -> Result<Option<String>> {
    let name = bucket(&ctx.config);
    let path = format!(
        "/v2/GetBucketInfo?globalAlias={}",
        s3::uri_encode(&name, false)
    );
    match admin(ctx, "GET", &path, None).await? {
        (404, _) => Ok(None),
        (200..=299, v) => id_of(&v).map(Some),
        (status, v) => Err(EngineError::Command(format!(
            "Garage admin API {path} answered {status}: {}",
            v.get("message").and_then(Value::as_str).unwrap_or("")
        ))),
    }
}

fn id_of(bucket_info: &Value) -> Result<String> {
    bucket_info
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| EngineError::Command("Garage did not say the bucket's id".into()))
}

/// The id of the service's bucket, which `bootstrap` made.
async fn bucket_id(ctx: &InstanceCtx) -> Result<String> {
    find_bucket(ctx)
        .await?
        .ok_or_else(|| EngineError::Command("the service's bucket is missing".into()))
}

/// Makes sure the key of `secrets` exists and has the bucket, and that no other key does (the
/// one before a secret reset stops working here).
async fn set_key(ctx: &InstanceCtx, secrets: &JsonMap, bucket_id: &str) -> Result<()> {
    let key = key_of(ctx, secrets)?;
    let (found, _) = admin(
        ctx,
        "GET",
        &format!("/v2/GetKeyInfo?id={}", key.access_key_id),
        None,
    )
    .await?;
    if found == 404 {
        admin_ok(
        ctx,
        "POST",
        "/v2/ImportKey",
        Some(json!({"accessKeyId": key.access_key_id, "secretAccessKey": key.secret_access_key, "name": "app"})),
    )
    .await?;
    }
    admin_ok(
        ctx,
        "POST",
        "/v2/AllowBucketKey",
        Some(
            json!({"bucketId": bucket_id, "accessKeyId": key.access_key_id,
                    "permissions": {"read": true, "write": true, "owner": true}}),
        ),
    )
    .await?;
    let info = admin_ok(
        ctx,
        "GET",
        &format!("/v2/GetBucketInfo?id={bucket_id}"),
        None,
    )
    .await?;
    for other in info["keys"].as_array().into_iter().flatten() {
        let Some(id) = other["accessKeyId"].as_str() else {
            continue;
        };
        if id != key.access_key_id {
            admin_ok(ctx, "POST", &format!("/v2/DeleteKey?id={id}"), None).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl crate::Engine for Garage {
    fn kind(&self) -> EngineKind {
        EngineKind::Garage
    }

    async fn prepare(&self, _install: &Installation, _run_as: Option<RunAs>) -> Result<()> {
        Ok(())
    }

    async fn init(&self, ctx: &InstanceCtx, run_as: Option<RunAs>) -> Result<()> {
        for d in [
            ctx.data_dir(),
            ctx.data_dir().join("meta"),
            ctx.data_dir().join("blocks"),
            ctx.run_dir(),
            ctx.dir.join("log"),
        ] {
            private_dir(&d, run_as)?;
        }
        secret_file(&rpc_secret_file(ctx), &random_hex(32), run_as)?;
        secret_file(&token_file(ctx), &random_hex(24), run_as)
    }

    fn write_config(&self, ctx: &InstanceCtx, _secrets: &JsonMap) -> Result<()> {
        let data = ctx.data_dir();
        let conf = format!(
            "# Managed by Berth: rewritten before every start. Do not edit.\n\
             metadata_dir = \"{meta}\"\n\
             data_dir = \"{blocks}\"\n\
             db_engine = \"sqlite\"\n\
             compression_level = {compression}\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:0\"\n\
             rpc_secret_file = \"{rpc}\"\n\
             [s3_api]\n\
             s3_region = \"{REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{port}\"\n\
             [admin]\n\
             api_bind_addr = \"{sock}\"\n\
             admin_token_file = \"{token}\"\n",
            // The provider's `compression`: Garage's default zstd level, or none.
            compression = match ctx.config_str("compression", "zstd").as_str() {
                "none" => "\"none\"",
                _ => "1",
            },
            meta = data.join("meta").display(),
            blocks = data.join("blocks").display(),
            rpc = rpc_secret_file(ctx).display(),
            port = ctx.port,
            sock = admin_socket(ctx).display(),
            token = token_file(ctx).display(),
        );
        let path = conf_path(ctx);
        std::fs::write(&path, conf).map_err(EngineError::io("writing garage.toml"))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(EngineError::io("chmod garage.toml"))?;
        // A socket a killed server left behind would refuse the new one's bind.
        let _ = std::fs::remove_file(admin_socket(ctx));
        Ok(())
    }

    fn launch(&self, ctx: &InstanceCtx) -> Launch {
        Launch {
            program: ctx.install.server.clone(),
            args: vec![
                "-c".into(),
                conf_path(ctx).display().to_string(),
                "server".into(),
            ],
        }
    }

    async fn wait_started(&self, ctx: &InstanceCtx, deadline: Instant) -> Result<()> {
        loop {
            let s3_up = tokio::net::TcpStream::connect(("127.0.0.1", ctx.port))
                .await
                .is_ok();
            if s3_up && admin_socket(ctx).exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Unhealthy(
                    "Garage did not listen in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn bootstrap(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        // The layout: this one node holds everything (once; it persists in the metadata).
        let status = admin_ok(ctx, "GET", "/v2/GetClusterStatus", None).await?;
        if status.get("layoutVersion").and_then(Value::as_u64) == Some(0) {
            let node = status["nodes"][0]["id"]
                .as_str()
                .ok_or_else(|| EngineError::Command("Garage did not say its node id".into()))?
                .to_owned();
            let capacity = ctx.plan_int("storage", 1024).max(1) * 1024 * 1024;
            admin_ok(
                ctx,
                "POST",
                "/v2/UpdateClusterLayout",
                Some(json!({"roles": [{"id": node, "zone": "berth", "capacity": capacity, "tags": []}]})),
            )
            .await?;
            admin_ok(
                ctx,
                "POST",
                "/v2/ApplyClusterLayout",
                Some(json!({"version": 1})),
            )
            .await?;
        }
        let id = match find_bucket(ctx).await? {
            Some(id) => id,
            None => id_of(
                &admin_ok(
                    ctx,
                    "POST",
                    "/v2/CreateBucket",
                    Some(json!({"globalAlias": bucket(&ctx.config)})),
                )
                .await?,
            )?,
        };
        set_key(ctx, secrets, &id).await?;
        admin_ok(
            ctx,
            "POST",
            &format!("/v2/UpdateBucket?id={id}"),
            Some(json!({"quotas": quotas(ctx)})),
        )
        .await?;
        Ok(())
    }

    async fn probe(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let key = key_of(ctx, secrets)?;
        let path = format!("/{}", bucket(&ctx.config));
        let (status, body) = s3::request(
            ctx.port,
            &key,
            "GET",
            &path,
            &[("list-type", "2"), ("max-keys", "1")],
        )
        .await
        .map_err(|e| EngineError::Unhealthy(format!("S3 request: {e}")))?;
        if status != 200 {
            return Err(EngineError::Unhealthy(format!(
                "listing the bucket with the service's key answered {status}: {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        Ok(())
    }

    fn details(&self, ctx: &InstanceCtx) -> JsonMap {
        let endpoint = format!("http://127.0.0.1:{}", ctx.port);
        let mut m = JsonMap::new();
        m.insert("hostname".into(), "127.0.0.1".into());
        m.insert("port".into(), ctx.port.into());
        m.insert("endpoint".into(), endpoint.into());
        m.insert("bucket".into(), bucket(&ctx.config).into());
        m.insert("region".into(), REGION.into());
        m.insert(
            "version".into(),
            format!("Garage {}", ctx.install.full_version).into(),
        );
        m
    }

    async fn rotate_secrets(
        &self,
        ctx: &InstanceCtx,
        _old: Option<&JsonMap>,
        new: &JsonMap,
    ) -> Result<bool> {
        // The admin API needs no old secret: the key is replaced in place, live.
        let id = bucket_id(ctx).await?;
        set_key(ctx, new, &id).await?;
        Ok(true)
    }

    async fn apply_plan_live(
        &self,
        _old: &InstanceCtx,
        new: &InstanceCtx,
        _secrets: &JsonMap,
        _pid: u32,
    ) -> Result<Option<String>> {
        let id = bucket_id(new).await?;
        let q = quotas(new);
        admin_ok(
            new,
            "POST",
            &format!("/v2/UpdateBucket?id={id}"),
            Some(json!({ "quotas": q })),
        )
        .await?;
        Ok(Some(format!(
            "bucket quotas set to {} bytes and {} objects",
            q["maxSize"], q["maxObjects"]
        )))
    }

    fn stop_signal(&self) -> i32 {
        libc::SIGTERM
    }
}
