//! A real `berth server` for tests: in-process (`start`) or as a child process (`spawn`), on its own
//! data dir and port range, talking to real PostgreSQL and Redis/Valkey instances. Dropping it
//! kills every instance process it left, so no test leaves an orphan behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::config::{FileConfig, ServerConfig};
use serde_json::{json, Value};

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    child: Option<std::process::Child>,
    /// The in-process server's reconciler, stopped before the cleanup in `Drop`.
    reconciler: Option<std::sync::Arc<berth_reconciler::Reconciler>>,
    /// The in-process server's API, stopped (its thread ends) with the server.
    _api: Option<berth::server::ApiStop>,
    pub ports: (u16, u16),
    /// More lines for a spawned server's berth.toml.
    extra_toml: String,
}

/// A port window of its own for every server a test run starts (tests run in parallel).
pub fn port_window() -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    // Below the kernel's ephemeral range (32768+), so no outgoing connection takes one meanwhile.
    let base = 10000 + (std::process::id() as u16 % 20) * 480 + (slot % 12) * 40;
    (base, base + 40)
}

pub fn engines_dir() -> PathBuf {
    std::env::var_os("BERTH_ENGINES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/berth/engines".into())
}

fn config(dir: &Path, ports: (u16, u16), listen: &str) -> ServerConfig {
    let mut cfg = ServerConfig::resolve(
        FileConfig {
            data_dir: Some(dir.to_path_buf()),
            listen: Some(listen.parse().unwrap()),
            engines_dir: Some(engines_dir()),
            port_range_start: Some(ports.0),
            port_range_end: Some(ports.1),
            ..Default::default()
        },
        FileConfig::default(),
    );
    cfg.reconcile_period = Duration::from_millis(200);
    cfg
}

impl TestServer {
    /// The server in this process.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The server in this process, with `adjust` applied to its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = port_window();
        let mut cfg = config(dir.path(), ports, "127.0.0.1:0");
        adjust(&mut cfg);
        let running = berth::server::start(cfg).await.unwrap();
        Self {
            base: format!("http://{}", running.addr),
            token: running.token,
            http: reqwest::Client::new(),
            dir,
            child: None,
            reconciler: Some(running.reconciler),
            _api: Some(running.api),
            ports,
            extra_toml: String::new(),
        }
    }

    /// The real binary as a child process (for kill -9 tests); `restart` starts it again.
    pub async fn spawn() -> Self {
        Self::spawn_with_toml("").await
    }

    /// A spawned server with `extra` appended to its configuration file.
    pub async fn spawn_with_toml(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = port_window();
        let mut s = Self {
            base: String::new(),
            token: String::new(),
            http: reqwest::Client::new(),
            dir,
            child: None,
            reconciler: None,
            _api: None,
            ports,
            extra_toml: extra.to_owned(),
        };
        s.spawn_child().await;
        s
    }

    async fn spawn_child(&mut self) {
        let api_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let toml = format!(
            "port_range_start = {}\nport_range_end = {}\nreconcile_period_ms = 200\n{}",
            self.ports.0, self.ports.1, self.extra_toml
        );
        std::fs::write(self.dir.path().join("berth.toml"), toml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["server", "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen", &format!("127.0.0.1:{api_port}"), "--config"])
            .arg(self.dir.path().join("berth.toml"))
            .arg("--engines-dir")
            .arg(engines_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.base = format!("http://127.0.0.1:{api_port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "berth server did not start: {}",
                self.server_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.token = std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL of the server process: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("a spawned server");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn_child().await;
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn create(&self, body: Value) -> Value {
        let (status, v) = self
            .call(reqwest::Method::POST, "/api/managed-services", Some(body))
            .await;
        assert_eq!(status, 201, "create failed: {v}");
        v
    }

    /// Polls until `state`. An `error` on the way is tolerated (the reconciler retries, as a user
    /// would see it recover); at the timeout it fails with the status and the recent events.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, v) = self.get(&format!("/api/managed-services/{id}")).await;
            assert_eq!(code, 200, "{v}");
            let now = v["status"]["state"].as_str().unwrap_or_default();
            if now == state {
                return v;
            }
            if Instant::now() > deadline {
                let bodies: Vec<&str> = v["recentEvents"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["body"].as_str()).collect())
                    .unwrap_or_default();
                panic!(
                    "still {now} after {timeout:?}, wanted {state}: {}\nevents: {bodies:#?}",
                    v["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the service is gone (404).
    pub async fn wait_gone(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, v) = self.get(&format!("/api/managed-services/{id}")).await;
            if code == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still there after {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn env(&self, id: &str) -> serde_json::Map<String, Value> {
        let (code, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/managed-services/{id}/env"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{v}");
        v["variables"].as_object().unwrap().clone()
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("instances").join(id)
    }

    /// Pids of live processes working inside this server's instances (not its template builds).
    pub fn instance_pids(&self) -> Vec<u32> {
        instance_pids_under(&self.dir.path().join("instances"))
    }
}

pub fn instance_pids_under(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            == Some("Z")
        {
            continue;
        }
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&dir)) {
            out.push(pid);
        }
    }
    out
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // In-process: no instance may be (re)started after the cleanup below. Stop the
        // reconciler and let what it is doing finish (the other runtime worker runs it).
        if let Some(r) = &self.reconciler {
            r.stop();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !r.idle() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for pid in instance_pids_under(self.dir.path()) {
            // SAFETY: plain syscall on processes working in this test's own temp dir.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

pub fn pg_body(name: &str, version: &str) -> Value {
    json!({"teamId": 1, "name": name, "provider": {"name": "postgres"}, "plan": {"id": 0},
           "config": {"version": version, "databaseName": "orders", "userName": "shop"}})
}

pub fn redis_body(name: &str, version: &str) -> Value {
    json!({"teamId": 1, "name": name, "provider": {"name": "redis", "version": "v1"}, "plan": {"id": 0},
           "config": {"version": version}})
}

/// One RESP command over a fresh connection after AUTH; returns the reply's first line.
pub async fn redis_cmd(port: u16, password: &str, args: &[&str]) -> String {
    redis_try(port, password, args).await.unwrap()
}

/// As [`redis_cmd`], with I/O errors (a server not listening yet) returned.
pub async fn redis_try(port: u16, password: &str, args: &[&str]) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut s = BufReader::new(stream);
    let enc = |args: &[&str]| {
        let mut r = format!("*{}\r\n", args.len());
        for a in args {
            r.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        r
    };
    s.get_mut()
        .write_all(enc(&["AUTH", password]).as_bytes())
        .await?;
    let mut line = String::new();
    s.read_line(&mut line).await?;
    if line.trim() != "+OK" {
        return Ok(line.trim().to_owned());
    }
    s.get_mut().write_all(enc(args).as_bytes()).await?;
    let mut reply = String::new();
    s.read_line(&mut reply).await?;
    if reply.starts_with('$') && !reply.starts_with("$-1") {
        let mut body = String::new();
        s.read_line(&mut body).await?;
        return Ok(body.trim().to_owned());
    }
    if let Some(n) = reply
        .trim()
        .strip_prefix('*')
        .and_then(|n| n.parse::<usize>().ok())
    {
        // An array of bulk strings (CONFIG GET): the elements, space-separated.
        let mut items = Vec::new();
        for _ in 0..n * 2 {
            let mut line = String::new();
            s.read_line(&mut line).await?;
            if !line.starts_with('$') {
                items.push(line.trim().to_owned());
            }
        }
        return Ok(items.join(" "));
    }
    Ok(reply.trim().to_owned())
}
