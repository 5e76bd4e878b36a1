//! `berth bench provision`: time from `POST /api/managed-services` to the first successful query
//! with the returned credentials, for PostgreSQL and Redis, beside baselines measured in the same
//! run on the same disk: copying the template data dir and starting a bare server, `initdb` and
//! starting it, and starting a bare Redis. Then the resident memory of `berth server` with 50
//! services. The server is the real binary, started as a child process on a temporary data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_engines::{EngineKind, Installations};
use serde_json::{json, Value};
use sqlx::Connection;

use crate::cli::Client;

pub struct BenchArgs {
    pub runs: usize,
    pub services_for_memory: usize,
    pub engines_dir: PathBuf,
    pub keep: bool,
}

struct Server {
    child: std::process::Child,
    client: Client,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_server(dir: &Path, engines_dir: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--engines-dir"])
        .arg(engines_dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let start = Instant::now();
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("admin.token")) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break t.trim().to_owned();
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "berth server did not start; see {}/server.log",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(Server {
        child,
        client: Client::new(&format!("http://127.0.0.1:{port}"), Some(token)),
        dir: dir.to_path_buf(),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(samples, 0.5), percentile(samples, 0.95))
}

fn row(label: &str, samples: &mut [f64], target: Option<f64>) {
    let (median, p95) = summary(samples);
    let verdict = match target {
        Some(t) if median <= t => format!("  target <= {t:.0} ms: met"),
        Some(t) => format!("  target <= {t:.0} ms: MISSED"),
        None => String::new(),
    };
    println!("{label:<48} {median:>8.1} ms {p95:>8.1} ms{verdict}");
}

fn http_err(e: crate::cli::CliError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

/// POST, poll until synchronized, then one query with the credentials; returns milliseconds and
/// the service id.
async fn provision_once(c: &Client, body: &Value) -> anyhow::Result<(f64, String)> {
    let t0 = Instant::now();
    let created = c
        .call(reqwest::Method::POST, "/api/managed-services", Some(body))
        .await
        .map_err(http_err)?;
    let id = created["id"].as_str().context("no id")?.to_owned();
    loop {
        let svc = c
            .get(&format!("/api/managed-services/{id}"))
            .await
            .map_err(http_err)?;
        match svc["status"]["state"].as_str() {
            Some("synchronized") => break,
            Some("error") => bail!("service went to error: {}", svc["status"]["reason"]),
            _ if t0.elapsed() > Duration::from_secs(60) => bail!("not ready after 60 s"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    let env = c
        .call(
            reqwest::Method::POST,
            &format!("/api/managed-services/{id}/env"),
            None,
        )
        .await
        .map_err(http_err)?;
    let vars = &env["variables"];
    if let Some(url) = vars["DATABASE_URL"].as_str() {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query("select 1").execute(&mut conn).await?;
        let elapsed = t0.elapsed();
        conn.close().await?;
        return Ok((elapsed.as_secs_f64() * 1000.0, id));
    }
    let port: u16 = vars["REDIS_PORT"]
        .as_str()
        .context("no REDIS_PORT")?
        .parse()?;
    let pw = vars["REDIS_PASSWORD"]
        .as_str()
        .context("no REDIS_PASSWORD")?;
    redis_ping(port, Some(pw)).await?;
    Ok((t0.elapsed().as_secs_f64() * 1000.0, id))
}

async fn redis_ping(port: u16, password: Option<&str>) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut s = BufReader::new(stream);
    let mut line = String::new();
    if let Some(pw) = password {
        s.get_mut()
            .write_all(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()).as_bytes())
            .await?;
        s.read_line(&mut line).await?;
        if line.trim() != "+OK" {
            bail!("AUTH: {line}");
        }
        line.clear();
    }
    s.get_mut().write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    s.read_line(&mut line).await?;
    if line.trim() != "+PONG" {
        bail!("PING: {line}");
    }
    Ok(())
}

async fn delete_all(c: &Client, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        c.call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}"),
            None,
        )
        .await
        .map_err(http_err)?;
    }
    let start = Instant::now();
    for id in ids {
        while c.get(&format!("/api/managed-services/{id}")).await.is_ok() {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("service {id} not deleted after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Runs `program` as the instances' user when root (PostgreSQL refuses root).
fn as_instance_user(program: &Path) -> Command {
    let mut c = Command::new(program);
    if let Ok(Some(ids)) = crate::server::run_as("berth") {
        use std::os::unix::process::CommandExt;
        c.uid(ids.uid).gid(ids.gid);
    }
    c
}

/// Spawns `postgres -D data -p port -k dir` and polls its socket until it answers.
async fn start_bare_postgres(
    server: &Path,
    data: &Path,
    sock: &Path,
    port: u16,
) -> anyhow::Result<std::process::Child> {
    let child = as_instance_user(server)
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=", "-k"])
        .arg(sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let opts = sqlx::postgres::PgConnectOptions::new()
        .socket(sock)
        .port(port)
        .username("postgres")
        .database("postgres");
    let start = Instant::now();
    loop {
        if let Ok(c) = sqlx::ConnectOptions::connect(&opts).await {
            let _ = c.close().await;
            return Ok(child);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("bare PostgreSQL did not start");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn stop(mut child: std::process::Child) {
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
}

/// CPU time (user + system, all threads, and the children it has waited for) a process has
/// used so far, in seconds: what the store spends per byte, which no client can take away, and
/// what the whole backup costs.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses; utime, stime,
    // cutime and cstime are the 14th to 17th fields of the line, the 12th to 15th after it.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for f in &fields[11..15] {
        ticks += f.parse::<f64>()?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn chown_to_instance_user(path: &Path) -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .args(["-R", "berth:berth"])
            .arg(path)
            .status()?
            .success();
        if !ok {
            bail!("chown {} failed", path.display());
        }
    }
    Ok(())
}

/// What every benchmark starts from: the newest installed engines and a fresh `berth server`
/// on a temporary data dir the instances' user can traverse.
struct Setup {
    pg: berth_engines::Installation,
    redis: berth_engines::Installation,
    tmp: Kept,
    dir: PathBuf,
    server: Server,
}

/// The bench's directory: removed at the end, or kept with `--keep`.
enum Kept {
    Temp(tempfile::TempDir),
    Path(PathBuf),
}

impl Kept {
    fn path(&self) -> &Path {
        match self {
            Kept::Temp(t) => t.path(),
            Kept::Path(p) => p,
        }
    }
}

impl Setup {
    async fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let installs = Installations::discover(&args.engines_dir);
        let newest = |kind, what| {
            installs
                .newest(kind)
                .cloned()
                .with_context(|| format!("no {what} installed; run scripts/setup.sh"))
        };
        let pg = newest(EngineKind::Postgres, "PostgreSQL")?;
        let redis = newest(EngineKind::Redis, "Redis/Valkey")?;
        let tmp = tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(&dir)?;
        if args.keep {
            println!("data dir (kept): {}", dir.display());
        }
        let server = start_server(&dir, &args.engines_dir).await?;
        // --keep leaves the services running, so their data directory stays too.
        let tmp = if args.keep {
            Kept::Path(tmp.keep())
        } else {
            Kept::Temp(tmp)
        };
        Ok(Self {
            pg,
            redis,
            tmp,
            dir,
            server,
        })
    }
}

pub async fn provision(args: BenchArgs) -> anyhow::Result<()> {
    let Setup {
        pg,
        redis,
        tmp,
        dir,
        server,
    } = Setup::new(&args).await?;
    let c = &server.client;
    println!(
        "berth bench provision: {} runs each, {} and {} {}, data dir on {}",
        args.runs,
        pg.product,
        redis.product,
        redis.full_version,
        dir.display()
    );
    println!("{:<48} {:>11} {:>11}", "", "median", "p95");

    // Warm up: the first create waits for the template build; it is not what users pay per create.
    let (_, warm) = provision_once(c, &json!({"teamId": 1, "name": "warmup", "provider": {"name": "postgres"}, "config": {"version": pg.major}})).await?;
    delete_all(c, &[warm]).await?;

    // Berth and the baselines take turns, on the same disk; every measurement starts after
    // sync(2), so none pays for the writeback of the step before it (see docs/benchmarks.md).
    let template = server
        .dir
        .join("templates")
        .join(format!("postgres-{}", pg.major));
    let base = tmp.path().join("baseline");
    std::fs::create_dir_all(&base)?;
    chown_to_instance_user(&base)?;
    let port = free_port()?;
    let quiet = || unsafe { libc::sync() };
    let (mut pg_ms, mut redis_ms, mut copy_ms, mut initdb_ms, mut bare_redis_ms) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut ids = Vec::new();
    for i in 0..args.runs {
        quiet();
        let (ms, id) = provision_once(c, &json!({"teamId": 1, "name": format!("pg-{i}"), "provider": {"name": "postgres"}, "config": {"version": pg.major}})).await?;
        pg_ms.push(ms);
        ids.push(id);

        quiet();
        let data = base.join(format!("copy-{i}"));
        let t0 = Instant::now();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()?
            .success();
        if !ok {
            bail!("cp -a failed");
        }
        let child = start_bare_postgres(&pg.server, &data, &base, port).await?;
        copy_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop(child);
        std::fs::remove_dir_all(&data)?;

        quiet();
        let data = base.join(format!("initdb-{i}"));
        let t0 = Instant::now();
        let ok = as_instance_user(&pg.bin_dir().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("initdb failed");
        }
        let child = start_bare_postgres(&pg.server, &data, &base, port).await?;
        initdb_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop(child);
        std::fs::remove_dir_all(&data)?;

        quiet();
        let (ms, id) = provision_once(c, &json!({"teamId": 1, "name": format!("redis-{i}"), "provider": {"name": "redis"}, "config": {"version": redis.major}})).await?;
        redis_ms.push(ms);
        ids.push(id);

        quiet();
        let t0 = Instant::now();
        let child = as_instance_user(&redis.server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()?;
        loop {
            if redis_ping(port, None).await.is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("bare Redis did not start");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bare_redis_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop(child);
    }

    row(
        &format!("postgres {}: POST -> first query", pg.major),
        &mut pg_ms,
        Some(250.0),
    );
    row(
        "  baseline: template copy + start (no Berth)",
        &mut copy_ms,
        None,
    );
    row(
        "  baseline: initdb + start (no Berth)",
        &mut initdb_ms,
        None,
    );
    row(
        &format!("redis {}: POST -> first PING", redis.major),
        &mut redis_ms,
        Some(50.0),
    );
    row(
        "  baseline: bare server start (no Berth)",
        &mut bare_redis_ms,
        None,
    );

    // Memory: the server with `services_for_memory` services (those of the runs above included).
    let mut i = 0;
    while ids.len() < args.services_for_memory {
        let provider = if i % 2 == 0 { "redis" } else { "postgres" };
        let (_, id) = provision_once(
            c,
            &json!({"teamId": 2, "name": format!("mem-{i}"), "provider": {"name": provider}}),
        )
        .await?;
        ids.push(id);
        i += 1;
    }
    // A few list requests, as a dashboard would make, before reading the figure.
    for _ in 0..20 {
        c.get("/api/managed-services").await.map_err(http_err)?;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let rss_mb = rss_kb / 1024.0;
    println!(
        "{:<48} {:>8.1} MB{}",
        format!("berth server resident memory, {} services", ids.len()),
        rss_mb,
        if rss_mb <= 60.0 {
            "  target <= 60 MB: met"
        } else {
            "  target <= 60 MB: MISSED"
        }
    );
    if !args.keep {
        delete_all(c, &ids).await?;
    }
    Ok(())
}

/// Polls the service until `state`.
async fn wait_state(c: &Client, id: &str, state: &str) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let svc = c
            .get(&format!("/api/managed-services/{id}"))
            .await
            .map_err(http_err)?;
        match svc["status"]["state"].as_str() {
            Some(s) if s == state => return Ok(svc),
            Some("error") => bail!("service went to error: {}", svc["status"]["reason"]),
            _ if t0.elapsed() > Duration::from_secs(60) => bail!("not {state} after 60 s"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn set_pause(c: &Client, id: &str, pause: bool) -> anyhow::Result<()> {
    c.call(
        reqwest::Method::PATCH,
        &format!("/api/managed-services/{id}"),
        Some(&json!({"pause": pause})),
    )
    .await
    .map_err(http_err)?;
    Ok(())
}

/// `berth bench resume`: from `PATCH {"pause": false}` to the first successful query with the
/// service's credentials, beside starting the same server binary on the same (paused) data
/// directory without Berth, measured in the same run.
pub async fn resume(args: BenchArgs) -> anyhow::Result<()> {
    let Setup {
        pg,
        redis,
        tmp,
        dir,
        server,
    } = Setup::new(&args).await?;
    let c = &server.client;
    println!(
        "berth bench resume: {} runs each, {} {} and {} {}",
        args.runs, pg.product, pg.major, redis.product, redis.full_version
    );
    println!("{:<48} {:>11} {:>11}", "", "median", "p95");
    let (_, pg_id) = provision_once(c, &json!({"teamId": 1, "name": "pg", "provider": {"name": "postgres"}, "config": {"version": pg.major}})).await?;
    let (_, redis_id) = provision_once(c, &json!({"teamId": 1, "name": "redis", "provider": {"name": "redis"}, "config": {"version": redis.major}})).await?;
    let env = |id: String| async move {
        c.call(
            reqwest::Method::POST,
            &format!("/api/managed-services/{id}/env"),
            None,
        )
        .await
        .map_err(http_err)
    };
    let pg_env = env(pg_id.clone()).await?;
    let redis_env = env(redis_id.clone()).await?;
    let url = pg_env["variables"]["DATABASE_URL"]
        .as_str()
        .context("no DATABASE_URL")?
        .to_owned();
    let redis_port: u16 = redis_env["variables"]["REDIS_PORT"]
        .as_str()
        .context("no REDIS_PORT")?
        .parse()?;
    let redis_pw = redis_env["variables"]["REDIS_PASSWORD"]
        .as_str()
        .context("no REDIS_PASSWORD")?
        .to_owned();
    let pg_data = dir.join("instances").join(&pg_id).join("data");
    let redis_data = dir.join("instances").join(&redis_id).join("data");
    let sock = tmp.path().join("sock");
    std::fs::create_dir_all(&sock)?;
    chown_to_instance_user(&sock)?;
    let port = free_port()?;

    let quiet = || unsafe { libc::sync() };
    let (mut pg_ms, mut redis_ms, mut bare_pg_ms, mut bare_redis_ms) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        set_pause(c, &pg_id, true).await?;
        set_pause(c, &redis_id, true).await?;
        wait_state(c, &pg_id, "paused").await?;
        wait_state(c, &redis_id, "paused").await?;

        // Baselines: the same binaries on the same data, no Berth.
        quiet();
        let t0 = Instant::now();
        let child = start_bare_postgres(&pg.server, &pg_data, &sock, port).await?;
        bare_pg_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop(child);
        quiet();
        let t0 = Instant::now();
        let child = as_instance_user(&redis.server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
            ])
            .arg(&redis_data)
            .stdout(Stdio::null())
            .spawn()?;
        while redis_ping(port, None).await.is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("bare Redis did not start");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bare_redis_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop(child);

        // Through Berth: PATCH, then the first successful query with the credentials.
        quiet();
        let t0 = Instant::now();
        set_pause(c, &pg_id, false).await?;
        loop {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                sqlx::query("select 1").execute(&mut conn).await?;
                pg_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                conn.close().await?;
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("PostgreSQL did not resume");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        quiet();
        let t0 = Instant::now();
        set_pause(c, &redis_id, false).await?;
        while redis_ping(redis_port, Some(&redis_pw)).await.is_err() {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("Redis did not resume");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        redis_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        wait_state(c, &pg_id, "synchronized").await?;
        wait_state(c, &redis_id, "synchronized").await?;
    }
    row(
        &format!("postgres {}: resume -> first query", pg.major),
        &mut pg_ms,
        Some(300.0),
    );
    row(
        "  baseline: start on the same data (no Berth)",
        &mut bare_pg_ms,
        None,
    );
    row(
        &format!("redis {}: resume -> first PING", redis.major),
        &mut redis_ms,
        Some(50.0),
    );
    row(
        "  baseline: start on the same data (no Berth)",
        &mut bare_redis_ms,
        None,
    );
    if !args.keep {
        delete_all(c, &[pg_id, redis_id]).await?;
    }
    Ok(())
}

/// The server's resident memory, in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Waits until every one of `ids` shows `state` (one list request per poll, as a dashboard).
async fn wait_all(c: &Client, ids: &[String], state: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let list = c
            .get("/api/managed-services?team=9")
            .await
            .map_err(http_err)?;
        let done = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| {
                        s["status"]["state"] == state && ids.iter().any(|i| s["id"] == i.as_str())
                    })
                    .count()
            })
            .unwrap_or(0);
        if done == ids.len() {
            return Ok(());
        }
        if let Some(bad) = list
            .as_array()
            .and_then(|a| a.iter().find(|s| s["status"]["state"] == "error"))
        {
            bail!("{} went to error: {}", bad["name"], bad["status"]["reason"]);
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {} are {state} after 600 s", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` over `items` with at most `width` at a time, collecting the answers.
async fn each<T, R, F, Fut>(items: Vec<T>, width: usize, f: F) -> anyhow::Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>> + Send + 'static,
    R: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    for item in items {
        if set.len() >= width {
            out.push(set.join_next().await.expect("a task")??);
        }
        set.spawn(f(item));
    }
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// `berth bench scale`: `count` Dev-plan Redis services created, paused and resumed through the
/// API while a dashboard lists all services without pause; prints the list latency during the
/// churn beside the same list on the idle server (same services, same run), and the server's
/// peak resident memory beside its memory before the first service.
pub async fn scale(args: BenchArgs, count: usize) -> anyhow::Result<()> {
    let Setup {
        redis,
        server,
        tmp: _tmp,
        ..
    } = Setup::new(&args).await?;
    let c = &server.client;
    let pid = server.child.id();
    println!(
        "berth bench scale: {count} Dev-plan {} {} services created, paused, resumed",
        redis.product, redis.full_version
    );
    let rss_start = rss_mb(pid);

    // The dashboard: list everything, back to back, timing each answer; and the memory sampler.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The dashboard is a client of its own (thread, runtime, connection): the load generator's
    // work here must not delay its clock.
    let lister = {
        let (c, stop) = (
            Client::new(&server.client.base(), server.client.token()),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the dashboard's runtime");
            rt.block_on(async move {
                let mut ms = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if c.get_bytes("/api/managed-services").await.is_ok() {
                        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ms
            })
        })
    };
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };

    let mut phases = Vec::new();
    let t0 = Instant::now();
    let ids: Vec<String> = each((0..count).collect(), 16, |i| {
        let c = c.clone();
        async move {
            let v = c
                .call(
                    reqwest::Method::POST,
                    "/api/managed-services",
                    Some(&json!({"teamId": 9, "name": format!("scale-{i}"), "provider": {"name": "redis"}, "plan": {"id": 0}})),
                )
                .await
                .map_err(http_err)?;
            Ok(v["id"].as_str().context("no id")?.to_owned())
        }
    })
    .await?;
    wait_all(c, &ids, "synchronized").await?;
    phases.push(("create", t0.elapsed()));
    for (pause, state, label) in [(true, "paused", "pause"), (false, "synchronized", "resume")] {
        let t0 = Instant::now();
        each(ids.clone(), 16, |id| {
            let c = c.clone();
            async move { set_pause(&c, &id, pause).await }
        })
        .await?;
        wait_all(c, &ids, state).await?;
        phases.push((label, t0.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut busy = lister
        .join()
        .map_err(|_| anyhow::anyhow!("the dashboard thread panicked"))?;
    let peak = sampler.await?;

    // Baseline: the same list on the same server once everything is settled.
    let mut idle = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        c.get_bytes("/api/managed-services").await?;
        idle.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    for (label, took) in &phases {
        println!(
            "{:<48} {:>8.1} s  ({:.0} services/s)",
            format!("{label} all {count}, until all show it"),
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64()
        );
    }
    busy.sort_by(|a, b| a.partial_cmp(b).unwrap());
    idle.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = percentile(&busy, 0.99);
    println!("{:<48} {:>11} {:>11}", "", "median", "p99");
    println!(
        "{:<48} {:>8.1} ms {:>8.1} ms  target p99 <= 20 ms: {}",
        format!(
            "list {count} services during the churn ({} calls)",
            busy.len()
        ),
        percentile(&busy, 0.5),
        p99,
        if p99 <= 20.0 { "met" } else { "MISSED" }
    );
    println!(
        "{:<48} {:>8.1} ms {:>8.1} ms",
        "  baseline: the same list, idle server",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99)
    );
    println!(
        "{:<48} {:>8.1} MB  target <= 80 MB: {}",
        "berth server peak resident memory",
        peak,
        if peak <= 80.0 { "met" } else { "MISSED" }
    );
    println!(
        "{:<48} {:>8.1} MB",
        "  baseline: the same server before any service", rss_start
    );
    if !args.keep {
        delete_all(c, &ids).await?;
    }
    Ok(())
}

/// Polls the service until `state`, for up to `limit`.
async fn wait_state_for(c: &Client, id: &str, state: &str, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let svc = c
            .get(&format!("/api/managed-services/{id}"))
            .await
            .map_err(http_err)?;
        if svc["status"]["state"] == state {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("not {state} after {limit:?}: {}", svc["status"]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU of the bench's services (tenths): both cores, as the baseline has, instead of the Dev
/// plan's half a core.
const BENCH_CPU: u64 = 20;

/// `berth bench backup`: a PostgreSQL database of `size_mb` backed up to an `s3` service of
/// the same Berth (Garage) and restored into a new service, beside `pg_basebackup` of the same
/// instance to local disk, measured in the same run.
pub async fn backup(args: BenchArgs, size_mb: u64) -> anyhow::Result<()> {
    let Setup {
        pg,
        tmp,
        dir,
        server,
        ..
    } = Setup::new(&args).await?;
    let c = &server.client;
    let limit = Duration::from_secs(1800);
    let store = c
        .call(
            reqwest::Method::POST,
            "/api/managed-services",
            Some(&json!({"teamId": 9, "name": "bench-store", "provider": {"name": "s3"},
                "plan": {"id": 0, "parameters": {"memory": 4096, "cpu": BENCH_CPU, "storage": size_mb * (args.runs as u64 + 2) * 2 + 1024}}})),
        )
        .await
        .map_err(http_err)?;
    let store_id = store["id"].as_str().context("no id")?.to_owned();
    wait_state_for(c, &store_id, "synchronized", limit).await?;
    let env = c
        .call(
            reqwest::Method::POST,
            &format!("/api/managed-services/{store_id}/env"),
            None,
        )
        .await
        .map_err(http_err)?;
    let var = |k: &str| env["variables"][k].as_str().unwrap_or_default().to_owned();
    let backups = json!({"enabled": true, "config": {
            "endpointUrl": var("S3_ENDPOINT"),
            "destinationPath": format!("s3://{}/bench/", var("S3_BUCKET")),
            "accessKey": var("AWS_ACCESS_KEY_ID"), "region": var("S3_REGION")},
        "secrets": {"secretKey": var("AWS_SECRET_ACCESS_KEY")}});
    let config = json!({"version": pg.major, "databaseName": "bench", "userName": "bench"});
    let created = c
        .call(
            reqwest::Method::POST,
            "/api/managed-services",
            Some(
                &json!({"teamId": 9, "name": "bench-db", "provider": {"name": "postgres"},
                "plan": {"id": 0, "parameters": {"memory": 4096, "cpu": BENCH_CPU, "storage": (size_mb * 3).max(1024)}},
                "config": config, "backups": backups}),
            ),
        )
        .await
        .map_err(http_err)?;
    let id = created["id"].as_str().context("no id")?.to_owned();
    let password = created["generatedSecrets"]["userPassword"]
        .as_str()
        .context("no password")?
        .to_owned();
    wait_state_for(c, &id, "synchronized", limit).await?;
    let svc = c
        .get(&format!("/api/managed-services/{id}"))
        .await
        .map_err(http_err)?;
    let port = svc["status"]["details"]["port"]
        .as_u64()
        .context("no port")?;

    // The data: rows of ~1 kB (stored as they are: no compression on either path) until the
    // database holds `size_mb`.
    let url = format!("postgres://bench:{password}@127.0.0.1:{port}/bench");
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE big (id bigint, pad text)")
        .execute(&mut conn)
        .await?;
    let mut next = 0i64;
    let bytes = loop {
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size('bench')")
            .fetch_one(&mut conn)
            .await?;
        if size as u64 >= size_mb << 20 {
            break size as u64;
        }
        sqlx::query("INSERT INTO big SELECT g, repeat(md5(g::text), 28) FROM generate_series($1::bigint, $1::bigint + 99999) g")
            .bind(next)
            .execute(&mut conn)
            .await?;
        next += 100_000;
    };
    sqlx::query("CHECKPOINT").execute(&mut conn).await.ok();
    let mb = bytes as f64 / (1 << 20) as f64;
    println!(
        "berth bench backup: PostgreSQL {} database of {mb:.0} MiB, {} runs, to an s3 service (Garage) of the same Berth",
        pg.full_version, args.runs
    );

    let run_dir = dir.join("instances").join(&id).join("run");
    let pid_of = |id: &str| -> anyhow::Result<u32> {
        Ok(
            std::fs::read_to_string(dir.join("instances").join(id).join("run/berth.pid"))?
                .trim()
                .parse()?,
        )
    };
    let store_pid = pid_of(&store_id)?;
    // Everything a backup runs on: the store, Berth (with the pg_basebackup it waits for) and
    // the PostgreSQL instance (with its WAL sender, once it has exited).
    let all_pids = [store_pid, server.child.id(), pid_of(&id)?];
    let all_cpu = || -> anyhow::Result<f64> { all_pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let bucket = berth_backup::Bucket::from_settings(
        backups["config"].as_object().context("backup config")?,
        backups["secrets"].as_object().context("backup secrets")?,
    )?;
    let (mut base, mut raw, mut took, mut restored) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The store's CPU seconds per run: taking in the ceiling's PUT, and serving the restore.
    let (mut store_in, mut store_out, mut backup_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        // Baseline: pg_basebackup of the same instance to local disk (tar, WAL fetched), as
        // Berth runs it, but written to a file.
        let target = tmp.path().join(format!("baseline-{run}"));
        std::fs::create_dir_all(&target)?;
        chown_to_instance_user(&target)?;
        let t0 = Instant::now();
        let out = as_instance_user(&pg.bin_dir().join("pg_basebackup"))
            .arg("-h")
            .arg(&run_dir)
            .args(["-p", &port.to_string(), "-U", "postgres", "-D"])
            .arg(&target)
            .args(["-F", "tar", "-X", "fetch", "--checkpoint=fast"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_basebackup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        base.push(t0.elapsed().as_secs_f64());

        // The store's own ceiling: the same bytes, read from that file, sent to the same bucket
        // with the same client (parts, checks), without PostgreSQL or the API in the way.
        let cpu0 = cpu_seconds(store_pid)?;
        let t0 = Instant::now();
        let file = tokio::fs::File::open(target.join("base.tar")).await?;
        berth_backup::take::upload_stream(&bucket, &bucket.key(&format!("raw-{run}")), file)
            .await?;
        raw.push(t0.elapsed().as_secs_f64());
        store_in.push(cpu_seconds(store_pid)? - cpu0);
        bucket.delete(&bucket.key(&format!("raw-{run}"))).await?;
        std::fs::remove_dir_all(&target)?;

        // Berth: a backup asked for through the API, until it is confirmed (uploaded, read
        // back, manifest written).
        let cpu0 = all_cpu()?;
        let t0 = Instant::now();
        let entry = c
            .call(
                reqwest::Method::POST,
                &format!("/api/managed-services/{id}/backups"),
                None,
            )
            .await
            .map_err(http_err)?;
        let backup_id = entry["id"].as_str().context("no backup id")?.to_owned();
        loop {
            let svc = c
                .get(&format!("/api/managed-services/{id}"))
                .await
                .map_err(http_err)?;
            let e = svc["backups"]["entries"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["id"] == backup_id.as_str()).cloned())
                .unwrap_or_default();
            if e["confirmedAt"].is_string() {
                break;
            }
            if let Some(err) = e["error"].as_str() {
                bail!("backup failed: {err}");
            }
            if t0.elapsed() > limit {
                bail!("backup not confirmed after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(t0.elapsed().as_secs_f64());
        backup_cpu.push(all_cpu()? - cpu0);

        // Berth: that backup restored into a new service, until it is synchronized (its
        // health check passed with its own credentials).
        let cpu0 = cpu_seconds(store_pid)?;
        let t0 = Instant::now();
        let copy = c
            .call(
                reqwest::Method::POST,
                "/api/managed-services",
                Some(&json!({"teamId": 9, "name": format!("bench-copy-{run}"),
                    "provider": {"name": "postgres"},
                    "plan": {"id": 0, "parameters": {"memory": 4096, "cpu": BENCH_CPU, "storage": (size_mb * 3).max(1024)}},
                    "recoverFrom": {"id": backup_id}})),
            )
            .await
            .map_err(http_err)?;
        let copy_id = copy["id"].as_str().context("no id")?.to_owned();
        wait_state_for(c, &copy_id, "synchronized", limit).await?;
        restored.push(t0.elapsed().as_secs_f64());
        store_out.push(cpu_seconds(store_pid)? - cpu0);
        if !args.keep {
            delete_all(c, &[copy_id]).await?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        percentile(v, 0.5)
    };
    let (base, raw, took, restored, store_in, store_out) = (
        median(&mut base),
        median(&mut raw),
        median(&mut took),
        median(&mut restored),
        median(&mut store_in),
        median(&mut store_out),
    );
    let backup_cpu = median(&mut backup_cpu);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("{:<52} {:>9} {:>10}", "", "median", "throughput");
    println!(
        "{:<52} {:>7.2} s {:>6.0} MiB/s",
        "baseline: pg_basebackup to local disk",
        base,
        mb / base
    );
    println!(
        "{:<52} {:>7.2} s {:>6.0} MiB/s  {:.2}x baseline",
        "  the store's ceiling: that tar PUT from disk",
        raw,
        mb / raw,
        raw / base
    );
    // What the store alone costs: its CPU seconds spread over every core of the machine is the
    // least time any client could take; beside the budget, it says whether the target is
    // reachable against this store here at all.
    for (label, cpu) in [
        ("  the store's own CPU to take the data in", store_in),
        ("  the store's own CPU to serve a restore", store_out),
        ("  all the CPU a backup took (store, Berth, PG)", backup_cpu),
    ] {
        println!(
            "{label:<52} {cpu:>7.2} s  on {cores} cores: >= {:.2} s = {:.2}x baseline even if nothing else ran",
            cpu / cores,
            cpu / cores / base
        );
    }
    for (label, t) in [
        ("berth backup to S3, until confirmed", took),
        ("berth restore from S3 into a new service", restored),
    ] {
        let ratio = t / base;
        println!(
            "{label:<52} {t:>7.2} s {:>6.0} MiB/s  {ratio:.2}x baseline, target <= 1.5x: {}",
            mb / t,
            if ratio <= 1.5 { "met" } else { "MISSED" }
        );
    }
    if !args.keep {
        // The database first, without a final backup (its backups go at once), then the store.
        c.call(
            reqwest::Method::DELETE,
            &format!("/api/managed-services/{id}?skipFinalBackup=true"),
            None,
        )
        .await
        .map_err(http_err)?;
        delete_all(c, &[id]).await?;
        delete_all(c, &[store_id]).await?;
    }
    Ok(())
}
