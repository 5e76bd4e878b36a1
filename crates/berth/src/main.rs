//! `berth`: the server and the CLI in one binary. Parses arguments and calls the library.

use std::path::PathBuf;
use std::time::Duration;

use berth::cli::{self, CliError, CliResult, Client};
use berth::config::{FileConfig, ServerConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Self-hosted managed services: PostgreSQL, Redis and more, from one API."
)]
struct Cli {
    /// Berth's API address.
    #[arg(
        long,
        env = "BERTH_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    url: String,
    /// API token; defaults to the admin token in $BERTH_DATA_DIR (or ./berth-data).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API, the reconciler and the local backend.
    Server(ServerArgs),
    /// The provider catalog.
    Providers {
        #[command(subcommand)]
        cmd: ProvidersCmd,
    },
    /// Managed services.
    Services {
        #[command(subcommand)]
        cmd: ServicesCmd,
    },
    /// Print the environment variables an application uses to reach a service.
    Env(EnvArgs),
    /// Serve the built-in providers over the Provider REST API (CONTRACTS.md §2).
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Check a provider backend against the Provider REST API (the conformance kit).
    Provider {
        #[command(subcommand)]
        cmd: ProviderCmd,
    },
    /// Measure Berth against baselines taken in the same run (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// `berth backend serve --providers postgres,redis --listen 127.0.0.1:7070 --api-key-file F`
    Serve {
        /// Which built-in providers to serve (default: all).
        #[arg(long, value_delimiter = ',')]
        providers: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
        /// A file (mode 0600) holding the key clients must send as X-API-Key or Bearer.
        #[arg(long, env = "BERTH_BACKEND_API_KEY_FILE")]
        api_key_file: Option<PathBuf>,
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "BERTH_ENGINES_DIR")]
        engines_dir: Option<PathBuf>,
        #[arg(long, env = "BERTH_INSTANCE_USER")]
        instance_user: Option<String>,
        /// Seals the backup store settings kept on disk (default: DATA_DIR/master.key, made
        /// on first start).
        #[arg(long, env = "BERTH_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProviderCmd {
    /// `berth provider test http://127.0.0.1:7070/redis --api-key K --config '{"version":"8"}'`
    Test {
        /// The backend's endpoint URL (with the provider's base path).
        endpoint: String,
        #[arg(long, env = "BERTH_BACKEND_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Plan parameters for the test instance, as JSON.
        #[arg(long, default_value = "{}")]
        plan: String,
        /// Config for the test instance, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Secrets for the test instance, as JSON.
        #[arg(long, default_value = "{}")]
        secrets: String,
        /// Seconds to wait for the test instance to be ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// Also check the optional backup calls.
        #[arg(long)]
        backups: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Many Dev-plan Redis services created, paused and resumed: list latency and server memory.
    Scale {
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, env = "BERTH_ENGINES_DIR", default_value = "/opt/berth/engines")]
        engines_dir: PathBuf,
        /// Leave the services running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// Resume from pause to the first query, for PostgreSQL and Redis.
    Resume {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, env = "BERTH_ENGINES_DIR", default_value = "/opt/berth/engines")]
        engines_dir: PathBuf,
        /// Leave the services running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// A PostgreSQL database backed up to an s3 service and restored, beside pg_basebackup to disk.
    Backup {
        /// Size of the database, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, env = "BERTH_ENGINES_DIR", default_value = "/opt/berth/engines")]
        engines_dir: PathBuf,
        /// Leave the services running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// POST to first query for PostgreSQL and Redis, and the server's memory with 50 services.
    Provision {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value_t = 50)]
        services: usize,
        #[arg(long, env = "BERTH_ENGINES_DIR", default_value = "/opt/berth/engines")]
        engines_dir: PathBuf,
        /// Leave the services running at the end.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Where Berth keeps its database, keys and instances.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the API.
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// A TOML file with the same settings (flags and env vars win).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Where scripts/setup.sh unpacks engine builds.
    #[arg(long, env = "BERTH_ENGINES_DIR")]
    engines_dir: Option<PathBuf>,
    /// The master key file (created 0600 if missing; default <data-dir>/master.key).
    #[arg(long, env = "BERTH_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Seconds a service may take to become ready before it shows `error`.
    #[arg(long, env = "BERTH_READY_DEADLINE_SECS")]
    ready_deadline_secs: Option<u64>,
    /// The OS user instances run as when Berth runs as root.
    #[arg(long, env = "BERTH_INSTANCE_USER")]
    instance_user: Option<String>,
    /// Seconds in one day of `deleteRetentionDays` (86400). Shorter only to test the reaper.
    #[arg(long, env = "BERTH_RETENTION_DAY_SECS", hide = true)]
    retention_day_secs: Option<u64>,
    /// Seconds in one hour of `backups.intervalH` (3600). Shorter only to test schedules.
    #[arg(long, env = "BERTH_SCHEDULE_HOUR_SECS", hide = true)]
    schedule_hour_secs: Option<u64>,
    /// A directory of provider.yml files for custom (REST) providers.
    #[arg(long, env = "BERTH_PROVIDERS_DIR")]
    providers_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ProvidersCmd {
    /// List the providers, their installed versions and plans.
    List {
        #[arg(long)]
        team: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ServicesCmd {
    /// Create a service: `berth services create postgres --name orders --plan 0 --version 17 --wait`.
    Create {
        provider: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        team: i64,
        #[arg(long, default_value_t = 0)]
        plan: i64,
        /// Engine major version (config.version); default the newest installed.
        #[arg(long)]
        version: Option<String>,
        /// Plan parameter, key=value (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Config value, key=value (repeatable).
        #[arg(long = "config")]
        config: Vec<String>,
        /// Secret, key=value (repeatable); missing secrets are generated.
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Back up to this `s3` service of the same Berth (name or id), under a prefix named
        /// after the new service; its endpoint, bucket and keys are filled in.
        #[arg(long)]
        backup_to: Option<String>,
        /// Hours between scheduled backups (with --backup-to); the first is taken at once.
        #[arg(long, default_value_t = 24, requires = "backup_to")]
        backup_every: u32,
        /// Days each backup is kept (with --backup-to); default 7.
        #[arg(long, requires = "backup_to")]
        backup_retention_days: Option<u32>,
        /// Make the new service from this backup (an id from `berth services backups`).
        #[arg(long, conflicts_with = "restore_service")]
        restore_from: Option<String>,
        /// Make the new PostgreSQL service from this service's backups and archived WAL, as it
        /// was at --restore-time (point-in-time recovery).
        #[arg(long, requires = "restore_time")]
        restore_service: Option<String>,
        /// The moment to recover to, RFC 3339 (`2026-11-22T10:15:00Z`).
        #[arg(long, requires = "restore_service")]
        restore_time: Option<String>,
        /// Wait until the service is synchronized.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// List services.
    List {
        #[arg(long)]
        team: Option<i64>,
        #[arg(long)]
        include_deleted: bool,
    },
    /// Show one service (by id or name).
    Get {
        service: String,
        #[arg(long)]
        team: Option<i64>,
    },
    /// Change name, plan, config or secrets.
    Update {
        service: String,
        #[arg(long)]
        team: Option<i64>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<i64>,
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long = "config")]
        config: Vec<String>,
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Stop the instance, keeping its data and credentials.
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        /// Start a paused instance again.
        #[arg(long)]
        resume: bool,
        /// Back up to this `s3` service of the same Berth (name or id), as with `create`.
        #[arg(long, conflicts_with = "no_backups")]
        backup_to: Option<String>,
        /// Hours between scheduled backups (24 when backups are turned on without a schedule).
        #[arg(long, conflicts_with = "no_backups")]
        backup_every: Option<u32>,
        /// Days each backup is kept.
        #[arg(long, conflicts_with = "no_backups")]
        backup_retention_days: Option<u32>,
        /// Turn backups off (scheduled ones and WAL archiving; those taken stay restorable).
        #[arg(long)]
        no_backups: bool,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Delete a service: credentials at once, instance and data next. With backups on, a final
    /// backup comes first and the record and backups are kept for the retention.
    Delete {
        service: String,
        #[arg(long)]
        team: Option<i64>,
        /// Wait until the instance is gone (the service is purged, or `deleted` in retention).
        #[arg(long)]
        wait: bool,
        /// Delete at once, without the final backup (turns backups off).
        #[arg(long)]
        skip_final_backup: bool,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Take a backup now (the service's backup settings say where).
    Backup {
        service: String,
        #[arg(long)]
        team: Option<i64>,
        /// Wait until the backup is confirmed (uploaded and checked) or has failed.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// The service's backups, oldest first.
    Backups {
        service: String,
        #[arg(long)]
        team: Option<i64>,
    },
    /// The service's events, newest first.
    Events {
        service: String,
        #[arg(long)]
        team: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The tail of the instance's server log.
    Logs {
        service: String,
        #[arg(long)]
        team: Option<i64>,
        #[arg(long, default_value_t = 200)]
        lines: usize,
    },
}

#[derive(Args)]
struct EnvArgs {
    service: String,
    #[arg(long)]
    team: Option<i64>,
    #[arg(long, default_value = "dotenv", value_parser = ["dotenv", "shell", "json"])]
    format: String,
    /// Variable prefix (`<PREFIX>_DATABASE_URL`); DEFAULT also gives the bare names.
    #[arg(long)]
    prefix: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(args) => exit_code(server(args).await),
            Cmd::Backend { cmd } => exit_code(backend(cmd).await),
            Cmd::Provider { cmd } => match provider_test(cmd).await {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            },
            Cmd::Bench {
                cmd:
                    BenchCmd::Provision {
                        runs,
                        services,
                        engines_dir,
                        keep,
                    },
            } => {
                let args = berth::bench::BenchArgs {
                    runs,
                    services_for_memory: services,
                    engines_dir,
                    keep,
                };
                exit_code(berth::bench::provision(args).await)
            }
            Cmd::Bench {
                cmd:
                    BenchCmd::Scale {
                        count,
                        engines_dir,
                        keep,
                    },
            } => {
                let args = berth::bench::BenchArgs {
                    runs: 0,
                    services_for_memory: 0,
                    engines_dir,
                    keep,
                };
                exit_code(berth::bench::scale(args, count).await)
            }
            Cmd::Bench {
                cmd:
                    BenchCmd::Backup {
                        size_mb,
                        runs,
                        engines_dir,
                        keep,
                    },
            } => {
                let args = berth::bench::BenchArgs {
                    runs,
                    services_for_memory: 0,
                    engines_dir,
                    keep,
                };
                exit_code(berth::bench::backup(args, size_mb).await)
            }
            Cmd::Bench {
                cmd:
                    BenchCmd::Resume {
                        runs,
                        engines_dir,
                        keep,
                    },
            } => {
                let args = berth::bench::BenchArgs {
                    runs,
                    services_for_memory: 0,
                    engines_dir,
                    keep,
                };
                exit_code(berth::bench::resume(args).await)
            }
            cmd => {
                let token = cli.token.or_else(default_token);
                let client = Client::new(&cli.url, token);
                match client_cmd(&client, cmd, cli.output).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {}", e.message);
                        e.code
                    }
                }
            }
        }
    });
    std::process::exit(code);
}

/// Exit code of the long-running commands: 0, or 1 with the whole error chain printed.
fn exit_code(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn backend(cmd: BackendCmd) -> anyhow::Result<()> {
    let BackendCmd::Serve {
        providers,
        listen,
        api_key_file,
        data_dir,
        engines_dir,
        instance_user,
        master_key_file,
    } = cmd;
    init_tracing();
    let key = api_key_file
        .as_deref()
        .map(berth::server::read_key_file)
        .transpose()?;
    let overrides = FileConfig {
        data_dir,
        listen: Some(listen),
        engines_dir,
        instance_user,
        master_key_file,
        ..Default::default()
    };
    berth::server::serve_backend(
        ServerConfig::resolve(overrides, FileConfig::default()),
        &providers,
        key,
    )
    .await
}

async fn provider_test(cmd: ProviderCmd) -> anyhow::Result<bool> {
    let ProviderCmd::Test {
        endpoint,
        api_key,
        plan,
        config,
        secrets,
        ready_timeout,
        backups,
    } = cmd;
    let json = |what: &str, text: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--{what} is not JSON: {e}"))
    };
    let opts = berth::conformance::Options {
        endpoint,
        api_key,
        plan: json("plan", &plan)?,
        config: json("config", &config)?,
        secrets: json("secrets", &secrets)?,
        ready_timeout: Duration::from_secs(ready_timeout),
        backups,
    };
    Ok(berth::conformance::report(
        &berth::conformance::run(opts).await,
    ))
}

fn default_token() -> Option<String> {
    let dir = std::env::var_os("BERTH_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "berth-data".into());
    std::fs::read_to_string(dir.join("admin.token"))
        .ok()
        .map(|t| t.trim().to_owned())
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_tracing();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let overrides = FileConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        engines_dir: args.engines_dir,
        master_key_file: args.master_key_file,
        ready_deadline_secs: args.ready_deadline_secs,
        instance_user: args.instance_user,
        retention_day_secs: args.retention_day_secs,
        schedule_hour_secs: args.schedule_hour_secs,
        providers_dir: args.providers_dir,
        ..Default::default()
    };
    berth::server::run(ServerConfig::resolve(overrides, file)).await
}

fn print(value: &Value, output: Output, table: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => print!("{}", table(value)),
    }
}

fn one_table(v: &Value) -> String {
    cli::services_table(std::slice::from_ref(v))
}

async fn client_cmd(c: &Client, cmd: Cmd, output: Output) -> CliResult<()> {
    match cmd {
        Cmd::Server(_) | Cmd::Bench { .. } | Cmd::Backend { .. } | Cmd::Provider { .. } => {
            unreachable!("handled in main")
        }
        Cmd::Providers {
            cmd: ProvidersCmd::List { team },
        } => {
            let path = match team {
                Some(t) => format!("/api/managed-services/providers?teamId={t}"),
                None => "/api/managed-services/providers".into(),
            };
            let v = c.get(&path).await?;
            print(&v, output, |v| {
                cli::providers_table(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        Cmd::Services { cmd } => services(c, cmd, output).await?,
        Cmd::Env(args) => {
            let svc = c.resolve(&args.service, args.team).await?;
            let id = svc["id"].as_str().unwrap_or_default();
            let path = match &args.prefix {
                Some(p) => format!("/api/managed-services/{id}/env?prefix={p}"),
                None => format!("/api/managed-services/{id}/env"),
            };
            let v = c.call(reqwest::Method::POST, &path, None).await?;
            let vars = v["variables"].as_object().cloned().unwrap_or_default();
            print!("{}", cli::render_env(&vars, &args.format)?);
        }
    }
    Ok(())
}

async fn services(c: &Client, cmd: ServicesCmd, output: Output) -> CliResult<()> {
    match cmd {
        ServicesCmd::Create {
            provider,
            name,
            team,
            plan,
            version,
            params,
            config,
            secrets,
            backup_to,
            backup_every,
            backup_retention_days,
            restore_from,
            restore_service,
            restore_time,
            wait,
            timeout,
        } => {
            let mut config = cli::parse_pairs(&config, "config", false)?;
            if let Some(v) = version {
                config.insert("version".into(), Value::String(v));
            }
            let mut body = json!({
                "teamId": team, "name": name, "provider": {"name": provider},
                "plan": {"id": plan, "parameters": cli::parse_pairs(&params, "param", true)?},
                "config": config,
            });
            if !secrets.is_empty() {
                body["secrets"] = Value::Object(cli::parse_pairs(&secrets, "secret", false)?);
            }
            if let Some(store) = backup_to {
                let mut backups = c.backups_to(&store, team, &name).await?;
                backups["intervalH"] = json!(backup_every);
                if let Some(days) = backup_retention_days {
                    backups["retentionDays"] = json!(days);
                }
                body["backups"] = backups;
            }
            if let Some(backup) = restore_from {
                body["recoverFrom"] = json!({"id": backup});
            }
            if let (Some(source), Some(time)) = (restore_service, restore_time) {
                let source = c.resolve(&source, Some(team)).await?;
                body["recoverFrom"] = json!({"msId": source["id"], "time": time});
            }
            let created = c
                .call(reqwest::Method::POST, "/api/managed-services", Some(&body))
                .await?;
            let generated = created["generatedSecrets"].clone();
            let mut shown = created.clone();
            if wait {
                let id = created["id"].as_str().unwrap_or_default();
                shown = c
                    .wait_for(id, "synchronized", Duration::from_secs(timeout))
                    .await?;
                shown["generatedSecrets"] = generated.clone();
            }
            print(&shown, output, |v| {
                let mut s = one_table(v);
                if let Some(g) = generated.as_object().filter(|g| !g.is_empty()) {
                    s.push_str("\nGenerated secrets (shown this once; `berth env` gives the connection variables):\n");
                    for (k, v) in g {
                        s.push_str(&format!("  {k}: {}\n", v.as_str().unwrap_or_default()));
                    }
                }
                s
            });
        }
        ServicesCmd::List {
            team,
            include_deleted,
        } => {
            let mut q = vec![];
            if let Some(t) = team {
                q.push(format!("team={t}"));
            }
            if include_deleted {
                q.push("includeDeleted=true".into());
            }
            let path = if q.is_empty() {
                "/api/managed-services".into()
            } else {
                format!("/api/managed-services?{}", q.join("&"))
            };
            let v = c.get(&path).await?;
            print(&v, output, |v| {
                cli::services_table(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        ServicesCmd::Get { service, team } => {
            let v = c.resolve(&service, team).await?;
            print(&v, output, one_table);
        }
        ServicesCmd::Update {
            service,
            team,
            name,
            plan,
            params,
            config,
            secrets,
            pause,
            resume,
            backup_to,
            backup_every,
            backup_retention_days,
            no_backups,
            wait,
            timeout,
        } => {
            let svc = c.resolve(&service, team).await?;
            let id = svc["id"].as_str().unwrap_or_default().to_owned();
            let mut body = json!({});
            // A PATCH keeps the backup fields it leaves out.
            let mut backups = json!({});
            if let Some(store) = backup_to {
                let team = svc["teamId"].as_i64().unwrap_or(1);
                let name = svc["name"].as_str().unwrap_or_default();
                backups = c.backups_to(&store, team, name).await?;
                if backup_every.is_none() && svc["backups"]["intervalH"].is_null() {
                    backups["intervalH"] = json!(24);
                }
            }
            if let Some(hours) = backup_every {
                backups["intervalH"] = json!(hours);
            }
            if let Some(days) = backup_retention_days {
                backups["retentionDays"] = json!(days);
            }
            if no_backups {
                backups["enabled"] = json!(false);
            }
            if backups.as_object().is_some_and(|b| !b.is_empty()) {
                body["backups"] = backups;
            }
            if pause || resume {
                body["pause"] = json!(pause);
            }
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if plan.is_some() || !params.is_empty() {
                body["plan"] = json!({"id": plan.unwrap_or(svc["plan"]["id"].as_i64().unwrap_or(0)),
                    "parameters": cli::parse_pairs(&params, "param", true)?});
            }
            if !config.is_empty() {
                body["config"] = Value::Object(cli::parse_pairs(&config, "config", false)?);
            }
            if !secrets.is_empty() {
                body["secrets"] = Value::Object(cli::parse_pairs(&secrets, "secret", false)?);
            }
            let mut v = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/managed-services/{id}"),
                    Some(&body),
                )
                .await?;
            if wait {
                // Let the reconciler see the new generation before waiting for the end state.
                let generation = v["status"]["generation"].as_i64().unwrap_or(0);
                let want = if v["pause"] == json!(true) {
                    "paused"
                } else {
                    "synchronized"
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
                loop {
                    v = c.wait_for(&id, want, Duration::from_secs(timeout)).await?;
                    if v["status"]["observedGeneration"].as_i64().unwrap_or(0) >= generation
                        || std::time::Instant::now() > deadline
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            print(&v, output, one_table);
        }
        ServicesCmd::Delete {
            service,
            team,
            wait,
            skip_final_backup,
            timeout,
        } => {
            let svc = c.resolve(&service, team).await?;
            let id = svc["id"].as_str().unwrap_or_default().to_owned();
            let v = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/managed-services/{id}?skipFinalBackup={skip_final_backup}"),
                    None,
                )
                .await?;
            if wait {
                let start = std::time::Instant::now();
                loop {
                    match c.get(&format!("/api/managed-services/{id}")).await {
                        Err(e) if e.code == 4 => break,
                        Err(e) => return Err(e),
                        Ok(v) if v["status"]["state"] == "deleted" => break,
                        Ok(_) if start.elapsed() > Duration::from_secs(timeout) => {
                            return Err(CliError::new(
                                7,
                                format!("service {id} is still being deleted after {timeout}s"),
                            ))
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                if output == Output::Table {
                    println!("deleted {id}");
                    return Ok(());
                }
            }
            print(&v, output, one_table);
        }
        ServicesCmd::Backup {
            service,
            team,
            wait,
            timeout,
        } => {
            let svc = c.resolve(&service, team).await?;
            let id = svc["id"].as_str().unwrap_or_default();
            let mut entry = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/managed-services/{id}/backups"),
                    None,
                )
                .await?;
            if wait {
                let backup = entry["id"].as_str().unwrap_or_default().to_owned();
                entry = c
                    .wait_for_backup(id, &backup, Duration::from_secs(timeout))
                    .await?;
            }
            print(&entry, output, one_table);
        }
        ServicesCmd::Backups { service, team } => {
            let svc = c.resolve(&service, team).await?;
            let entries = svc["backups"]["entries"].clone();
            print(&entries, output, cli::backups_table);
        }
        ServicesCmd::Events {
            service,
            team,
            limit,
        } => {
            let svc = c.resolve(&service, team).await?;
            let id = svc["id"].as_str().unwrap_or_default();
            let v = c
                .get(&format!("/api/managed-services/{id}/events?limit={limit}"))
                .await?;
            print(&v, output, |v| {
                v["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let sev = match e["severityNumber"].as_i64().unwrap_or(0) {
                            n if n >= 17 => "ERROR",
                            n if n >= 13 => "WARN",
                            _ => "INFO",
                        };
                        format!(
                            "{}  {sev:<5}  {}\n",
                            e["timestamp"].as_str().unwrap_or(""),
                            e["body"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            });
        }
        ServicesCmd::Logs {
            service,
            team,
            lines,
        } => {
            let svc = c.resolve(&service, team).await?;
            let id = svc["id"].as_str().unwrap_or_default();
            let v = c
                .get(&format!("/api/managed-services/{id}/logs?lines={lines}"))
                .await?;
            println!("{}", v.as_str().unwrap_or_default());
        }
    }
    Ok(())
}
