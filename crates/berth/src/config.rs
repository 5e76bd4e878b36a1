//! Server configuration: flags, then environment variables (`BERTH_*`), then a TOML file, then
//! the embedded defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What `berth server` runs with, fully resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub engines_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    pub port_range: (u16, u16),
    pub ready_deadline: Duration,
    pub reconcile_period: Duration,
    /// The OS user instances run as when Berth runs as root.
    pub instance_user: String,
    /// A directory of `provider.yml` files (custom providers), loaded at start.
    pub providers_dir: Option<PathBuf>,
    /// One day of `deleteRetentionDays`: a day, shorter only in tests of the reaper.
    pub retention_day: Duration,
    /// One hour of `backups.intervalH`: an hour, shorter only in tests of schedules.
    pub schedule_hour: Duration,
}

/// The optional settings of a TOML file (same names as the flags, with underscores).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub engines_dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub port_range_start: Option<u16>,
    pub port_range_end: Option<u16>,
    pub ready_deadline_secs: Option<u64>,
    pub reconcile_period_ms: Option<u64>,
    pub instance_user: Option<String>,
    pub providers_dir: Option<PathBuf>,
    pub retention_day_secs: Option<u64>,
    pub schedule_hour_secs: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

impl ServerConfig {
    /// Defaults for everything not given: `./berth-data`, `127.0.0.1:7878`, `/opt/berth/engines`.
    pub fn resolve(overrides: FileConfig, file: FileConfig) -> Self {
        Self {
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "berth-data".into()),
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7878".parse().expect("valid default address")),
            engines_dir: overrides
                .engines_dir
                .or(file.engines_dir)
                .unwrap_or_else(|| "/opt/berth/engines".into()),
            master_key_file: overrides.master_key_file.or(file.master_key_file),
            port_range: (
                overrides
                    .port_range_start
                    .or(file.port_range_start)
                    .unwrap_or(20000),
                overrides
                    .port_range_end
                    .or(file.port_range_end)
                    .unwrap_or(30000),
            ),
            ready_deadline: Duration::from_secs(
                overrides
                    .ready_deadline_secs
                    .or(file.ready_deadline_secs)
                    .unwrap_or(60),
            ),
            reconcile_period: Duration::from_millis(
                overrides
                    .reconcile_period_ms
                    .or(file.reconcile_period_ms)
                    .unwrap_or(1000),
            ),
            instance_user: overrides
                .instance_user
                .or(file.instance_user)
                .unwrap_or_else(|| "berth".into()),
            providers_dir: overrides.providers_dir.or(file.providers_dir),
            retention_day: Duration::from_secs(
                overrides
                    .retention_day_secs
                    .or(file.retention_day_secs)
                    .unwrap_or(86_400)
                    .max(1),
            ),
            schedule_hour: Duration::from_secs(
                overrides
                    .schedule_hour_secs
                    .or(file.schedule_hour_secs)
                    .unwrap_or(3600)
                    .max(1),
            ),
        }
    }
}
