//! Redis and Valkey: one server per service with append-only persistence. The password is set
//! through an ACL rule holding its SHA-256, so the plaintext is in no file on disk.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_types::JsonMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::postgres::{private_dir, secret};
use crate::{EngineError, EngineKind, Installation, InstanceCtx, Launch, Result, RunAs};

#[derive(Default)]
pub struct Redis;

impl Redis {
    fn conf_path(ctx: &InstanceCtx) -> std::path::PathBuf {
        ctx.dir.join("redis.conf")
    }
}

/// The SHA-256 (hex) an ACL rule holds instead of the password.
/// Leave a quarter of the plan's memory for the process itself, buffers and forks.
fn maxmemory_mib(ctx: &InstanceCtx) -> i64 {
    (ctx.plan_int("memory", 128).max(16) * 3 / 4).max(8)
}

fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends one command in RESP and returns the first reply line (`+PONG`, `-NOAUTH ...`).
async fn command(stream: &mut TcpStream, args: &[&str]) -> std::io::Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

async fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[async_trait]
impl crate::Engine for Redis {
    fn kind(&self) -> EngineKind {
        EngineKind::Redis
    }

    async fn prepare(&self, _install: &Installation, _run_as: Option<RunAs>) -> Result<()> {
        Ok(())
    }

    async fn init(&self, ctx: &InstanceCtx, run_as: Option<RunAs>) -> Result<()> {
        for d in [ctx.data_dir(), ctx.run_dir(), ctx.dir.join("log")] {
            private_dir(&d, run_as)?;
        }
        Ok(())
    }

    fn write_config(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let maxmemory = maxmemory_mib(ctx);
        let hash = password_hash(secret(secrets, "password")?);
        let conf = format!(
            "# Managed by Berth: rewritten before every start. Do not edit.\n\
             bind 127.0.0.1\n\
             port {port}\n\
             protected-mode yes\n\
             daemonize no\n\
             dir {data}\n\
             appendonly yes\n\
             appendfsync everysec\n\
             save \"\"\n\
             maxmemory {maxmemory}mb\n\
             maxmemory-policy noeviction\n\
             logfile \"\"\n\
             user default reset on #{hash} ~* &* +@all\n",
            port = ctx.port,
            data = ctx.data_dir().display(),
        );
        let path = Self::conf_path(ctx);
        std::fs::write(&path, conf).map_err(EngineError::io("writing redis.conf"))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(EngineError::io("chmod redis.conf"))
    }

    fn launch(&self, ctx: &InstanceCtx) -> Launch {
        Launch {
            program: ctx.install.server.clone(),
            args: vec![Self::conf_path(ctx).display().to_string()],
        }
    }

    async fn wait_started(&self, ctx: &InstanceCtx, deadline: Instant) -> Result<()> {
        loop {
            // Any reply (even -NOAUTH) means the server is up and serving.
            let attempt = async {
                let mut s = connect(ctx.port).await?;
                command(&mut s, &["PING"]).await
            };
            match attempt.await {
                Ok(reply) if reply.starts_with("-LOADING") => {}
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(EngineError::Unhealthy(format!(
                        "server did not answer in time: {e}"
                    )))
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn bootstrap(&self, _ctx: &InstanceCtx, _secrets: &JsonMap) -> Result<()> {
        // The password is in the config (as a hash): nothing more to set.
        Ok(())
    }

    async fn apply_plan_live(
        &self,
        old: &InstanceCtx,
        new: &InstanceCtx,
        secrets: &JsonMap,
        _pid: u32,
    ) -> Result<Option<String>> {
        let (before, after) = (maxmemory_mib(old), maxmemory_mib(new));
        if before == after {
            return Ok(Some("nothing to change in the server".into()));
        }
        let unhealthy = |e: std::io::Error| EngineError::Unhealthy(format!("connecting: {e}"));
        let mut s = connect(new.port).await.map_err(unhealthy)?;
        let auth = command(&mut s, &["AUTH", secret(secrets, "password")?])
            .await
            .map_err(unhealthy)?;
        if auth != "+OK" {
            return Ok(None);
        }
        let value = format!("{after}mb");
        let reply = command(&mut s, &["CONFIG", "SET", "maxmemory", &value])
            .await
            .map_err(unhealthy)?;
        if reply != "+OK" {
            return Ok(None);
        }
        Ok(Some(format!(
            "maxmemory {before}mb -> {after}mb with CONFIG SET"
        )))
    }

    async fn rotate_secrets(
        &self,
        ctx: &InstanceCtx,
        old: Option<&JsonMap>,
        new: &JsonMap,
    ) -> Result<bool> {
        // Only the current password opens an admin session; unknown (after a restart of Berth),
        // the new one takes effect through a restart instead.
        let Some(old_pw) = old.and_then(|o| o.get("password")).and_then(Value::as_str) else {
            return Ok(false);
        };
        let unhealthy = |e: std::io::Error| EngineError::Unhealthy(format!("connecting: {e}"));
        let mut s = connect(ctx.port).await.map_err(unhealthy)?;
        if command(&mut s, &["AUTH", old_pw])
            .await
            .map_err(unhealthy)?
            != "+OK"
        {
            return Ok(false);
        }
        let rule = format!("#{}", password_hash(secret(new, "password")?));
        let reply = command(&mut s, &["ACL", "SETUSER", "default", "resetpass", &rule])
            .await
            .map_err(unhealthy)?;
        if reply != "+OK" {
            return Err(EngineError::Command(format!(
                "ACL SETUSER was refused: {reply}"
            )));
        }
        Ok(true)
    }

    async fn probe(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()> {
        let pw = secret(secrets, "password")?;
        let unhealthy = |e: std::io::Error| EngineError::Unhealthy(format!("connecting: {e}"));
        let mut s = connect(ctx.port).await.map_err(unhealthy)?;
        let auth = command(&mut s, &["AUTH", pw]).await.map_err(unhealthy)?;
        if auth != "+OK" {
            return Err(EngineError::Unhealthy(format!("AUTH was refused: {auth}")));
        }
        let pong = command(&mut s, &["PING"]).await.map_err(unhealthy)?;
        if pong != "+PONG" {
            return Err(EngineError::Unhealthy(format!("PING answered {pong}")));
        }
        Ok(())
    }

    fn details(&self, ctx: &InstanceCtx) -> JsonMap {
        let mut d = JsonMap::new();
        d.insert("hostname".into(), Value::from("127.0.0.1"));
        d.insert("port".into(), Value::from(ctx.port));
        d.insert(
            "dsn".into(),
            Value::from(format!("redis://127.0.0.1:{}/0", ctx.port)),
        );
        d.insert(
            "version".into(),
            Value::from(format!(
                "{} {}",
                ctx.install.product, ctx.install.full_version
            )),
        );
        d
    }

    fn stop_signal(&self) -> i32 {
        libc::SIGTERM // Redis flushes the append-only file and exits.
    }
}
