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

/// Reads one bulk-string reply (`$n\r\n<n bytes>\r\n`), as `INFO` answers.
async fn bulk(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).await?;
        if byte[0] == b'\n' {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).trim_end().to_owned();
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a bulk reply: {head}")))?;
    let mut body = vec![0u8; len + 2];
    stream.read_exact(&mut body).await?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A field of an `INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The instance's append-only directory: where a restore puts a snapshot as the base file.
pub const AOF_DIR: &str = "appendonlydir";

/// Asks the server for a snapshot (`BGSAVE`), waits until it is written and says where:
/// `data/dump.rdb`. Fails with the server's reason when the save failed.
pub async fn snapshot(
    ctx: &InstanceCtx,
    secrets: &JsonMap,
    deadline: Instant,
) -> Result<std::path::PathBuf> {
    let unhealthy = |e: std::io::Error| EngineError::Unhealthy(format!("connecting: {e}"));
    let mut s = connect(ctx.port).await.map_err(unhealthy)?;
    let auth = command(&mut s, &["AUTH", secret(secrets, "password")?])
        .await
        .map_err(unhealthy)?;
    if auth != "+OK" {
        return Err(EngineError::Unhealthy(format!("AUTH was refused: {auth}")));
    }
    // A snapshot already under way (another backup) may predate what was written since: wait
    // for it to end, then ask for ours. SCHEDULE: waits for an AOF rewrite instead of failing.
    let before = loop {
        let info = persistence(&mut s).await.map_err(unhealthy)?;
        let saves: u64 = info_field(&info, "rdb_saves")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| EngineError::Command("INFO persistence has no rdb_saves".into()))?;
        let reply = if info_field(&info, "rdb_bgsave_in_progress") == Some("1") {
            "-ERR Background save already in progress".to_owned()
        } else {
            command(&mut s, &["BGSAVE", "SCHEDULE"])
                .await
                .map_err(unhealthy)?
        };
        if reply.starts_with('+') {
            break saves;
        }
        if !reply.contains("already in progress") || Instant::now() >= deadline {
            return Err(EngineError::Command(format!("BGSAVE was refused: {reply}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let info = persistence(&mut s).await.map_err(unhealthy)?;
        let saves: u64 = info_field(&info, "rdb_saves")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let busy = info_field(&info, "rdb_bgsave_in_progress") == Some("1");
        if saves > before && !busy {
            return match info_field(&info, "rdb_last_bgsave_status") {
                Some("ok") => Ok(ctx.data_dir().join("dump.rdb")),
                other => Err(EngineError::Command(format!(
                    "the snapshot failed (rdb_last_bgsave_status: {}); see the server log",
                    other.unwrap_or("?")
                ))),
            };
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Command(
                "the snapshot did not finish in time".into(),
            ));
        }
    }
}

/// The `INFO persistence` answer.
async fn persistence(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n")
        .await?;
    bulk(s).await
}

/// Makes `rdb` the base of a new instance's append-only file (Redis 7 / Valkey multi-part
/// AOF): the server loads it at its first start and appends to it from there.
pub fn restore_snapshot(
    ctx: &InstanceCtx,
    rdb: &std::path::Path,
    run_as: Option<RunAs>,
) -> Result<()> {
    let dir = ctx.data_dir().join(AOF_DIR);
    private_dir(&dir, run_as)?;
    let base = "appendonly.aof.1.base.rdb";
    std::fs::rename(rdb, dir.join(base)).map_err(EngineError::io("placing the snapshot"))?;
    std::fs::write(
        dir.join("appendonly.aof.manifest"),
        format!("file {base} seq 1 type b\n"),
    )
    .map_err(EngineError::io("writing the AOF manifest"))?;
    crate::postgres::chown_tree(&dir, run_as)
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
