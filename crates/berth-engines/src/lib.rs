//! What Berth knows about each server engine it runs on the local host.
//!
//! - [`install`]: which engine versions are installed, found by looking at the host
//!   (Debian's packages and the tarballs `scripts/setup.sh` unpacks under the engines directory).
//! - [`postgres`], [`redis`], [`garage`] (S3): per engine, how to lay out an instance's files, write its config from
//!   the plan, start it, set its credentials and check its health with them.
//! - [`credentials`]: the environment variables an application uses (CONTRACTS.md §5).
//! - [`s3`]: AWS Signature Version 4 and one signed request, for the S3 health check.
//!
//! The process lifecycle (ports, spawning, limits, adoption) is the local backend's; an engine only
//! says what to run and how to talk to it.

pub mod credentials;
pub mod garage;
pub mod install;
pub mod postgres;
pub mod redis;
pub mod s3;
pub mod scram;

use std::path::PathBuf;

use async_trait::async_trait;
use berth_types::JsonMap;

pub use install::{EngineKind, Installation, Installations};

/// Everything an engine needs to know about one instance.
#[derive(Debug, Clone)]
pub struct InstanceCtx {
    pub id: uuid::Uuid,
    /// `<data-dir>/instances/<id>`: holds `data/`, `run/`, `log/` and the backend's own record.
    pub dir: PathBuf,
    pub port: u16,
    pub install: Installation,
    pub config: JsonMap,
    pub plan: JsonMap,
}

impl InstanceCtx {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log").join("server.log")
    }
    /// A plan parameter as an integer, falling back to `default`.
    pub fn plan_int(&self, key: &str, default: i64) -> i64 {
        self.plan
            .get(key)
            .and_then(|v| v.as_i64())
            .unwrap_or(default)
    }
    pub fn config_str(&self, key: &str, default: &str) -> String {
        self.config
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_owned()
    }
}

/// The program and arguments that run the server in the foreground.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Why an engine step failed; the message is shown to users in events.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Command(String),
    #[error("{0}")]
    Unhealthy(String),
}

impl EngineError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The OS identity instances run as, when Berth runs as root (PostgreSQL refuses root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// One engine's knowledge. Methods are called by the local backend in this order for a new
/// instance: `prepare` (once per installation), `init`, `write_config`, `launch`, `bootstrap`,
/// `probe`; and `write_config`, `launch`, `probe` for every later start.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;
    /// Builds what instances of `install` share (PostgreSQL's template data directory), once.
    async fn prepare(&self, install: &Installation, run_as: Option<RunAs>) -> Result<()>;
    /// Lays out the data of a new, never started instance.
    async fn init(&self, ctx: &InstanceCtx, run_as: Option<RunAs>) -> Result<()>;
    /// Writes the engine's config for the current plan and config (port, memory, ...).
    /// `secrets` is given when the config itself must carry a credential (as a hash, never plain).
    fn write_config(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()>;
    fn launch(&self, ctx: &InstanceCtx) -> Launch;
    /// Waits until a freshly started server accepts local connections, up to the deadline.
    async fn wait_started(&self, ctx: &InstanceCtx, deadline: std::time::Instant) -> Result<()>;
    /// Sets users, databases and passwords on the first start, and after a secret reset.
    async fn bootstrap(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()>;
    /// A real query with the service's own credentials (`SELECT 1`, `PING`).
    async fn probe(&self, ctx: &InstanceCtx, secrets: &JsonMap) -> Result<()>;
    /// What consumers need to connect, without any secret.
    fn details(&self, ctx: &InstanceCtx) -> JsonMap;
    /// Applies new credentials to the running server without a restart, when the engine can
    /// (`old` is what the server has now, when known). Returns false when a restart is needed.
    async fn rotate_secrets(
        &self,
        _ctx: &InstanceCtx,
        _old: Option<&JsonMap>,
        _new: &JsonMap,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Applies a changed plan to the running server without a restart, when the engine can.
    /// `new`'s config file is written and its limits are set already; `pid` is the server's.
    /// Answers how, or `None` when only a restart applies it.
    async fn apply_plan_live(
        &self,
        _old: &InstanceCtx,
        _new: &InstanceCtx,
        _secrets: &JsonMap,
        _pid: u32,
    ) -> Result<Option<String>> {
        Ok(None)
    }
    /// The signal that asks the server for a fast, clean shutdown.
    fn stop_signal(&self) -> i32;
}
