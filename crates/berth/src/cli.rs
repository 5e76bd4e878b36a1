//! The CLI client: a thin layer over the public API. Exit codes are stable for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | bad command line |
//! | 3 | the request was refused (400, 409, 422) |
//! | 4 | not found |
//! | 5 | unauthorized (no or wrong token) |
//! | 6 | server unreachable or failing (5xx) |
//! | 7 | `--wait`: the service went to `error`, or the wait timed out |

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client without TLS builds"),
        }
    }

    /// The server's address, for a second client of its own.
    pub fn base(&self) -> String {
        self.base.clone()
    }

    /// The bearer token, for a second client of its own.
    pub fn token(&self) -> Option<String> {
        self.token.clone()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> CliResult<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            CliError::new(
                6,
                format!(
                    "cannot reach Berth at {}: {e}. Is `berth server` running? (BERTH_URL)",
                    self.base
                ),
            )
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::new(6, format!("reading the answer: {e}")))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let mut msg = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed")
            .to_owned();
        if let Some(fields) = value.get("fields").and_then(Value::as_array) {
            for f in fields {
                msg.push_str(&format!(
                    "\n  {}: {}",
                    f["path"].as_str().unwrap_or(""),
                    f["reason"].as_str().unwrap_or("")
                ));
            }
        }
        let code = match status.as_u16() {
            401 => 5,
            404 => 4,
            400 | 409 | 422 => 3,
            s if s >= 500 => 6,
            _ => 1,
        };
        Err(CliError::new(
            code,
            format!("{msg} (HTTP {})", status.as_u16()),
        ))
    }

    pub async fn get(&self, path: &str) -> CliResult<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// The body of a successful GET, unparsed (benchmarks time the answer, not the parsing).
    pub async fn get_bytes(&self, path: &str) -> Result<usize, reqwest::Error> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Ok(req.send().await?.error_for_status()?.bytes().await?.len())
    }

    /// Finds a service by id or by name (within `team` when given).
    pub async fn resolve(&self, reference: &str, team: Option<i64>) -> CliResult<Value> {
        if uuid::Uuid::parse_str(reference).is_ok() {
            return self
                .get(&format!("/api/managed-services/{reference}"))
                .await;
        }
        let path = match team {
            Some(t) => format!("/api/managed-services?team={t}"),
            None => "/api/managed-services".to_owned(),
        };
        let list = self.get(&path).await?;
        let matches: Vec<&Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"].as_str() == Some(reference))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(CliError::new(4, format!("no service named '{reference}'"))),
            _ => Err(CliError::new(
                3,
                format!("several services are named '{reference}'; use its id or --team"),
            )),
        }
    }

    /// The `backups` settings of a service named `name` that backs up to the `s3` service
    /// `store` (name or id): its endpoint, bucket, region and keys (from its environment), under
    /// the prefix `name/`, so one store can hold the backups of many services.
    pub async fn backups_to(&self, store: &str, team: i64, name: &str) -> CliResult<Value> {
        let svc = self.resolve(store, Some(team)).await?;
        if svc["provider"]["name"] != "s3" {
            return Err(CliError::new(
                2,
                format!(
                    "--backup-to: '{store}' is a {} service, not an s3 one",
                    svc["provider"]["name"].as_str().unwrap_or("?")
                ),
            ));
        }
        let id = svc["id"].as_str().unwrap_or_default();
        let env = self
            .call(
                reqwest::Method::POST,
                &format!("/api/managed-services/{id}/env"),
                None,
            )
            .await?;
        let var = |k: &str| env["variables"][k].clone();
        Ok(json!({
            "enabled": true,
            "config": {
                "endpointUrl": var("S3_ENDPOINT"),
                "destinationPath": format!("s3://{}/{name}/", var("S3_BUCKET").as_str().unwrap_or_default()),
                "accessKey": var("AWS_ACCESS_KEY_ID"),
                "region": var("S3_REGION"),
            },
            "secrets": {"secretKey": var("AWS_SECRET_ACCESS_KEY")},
        }))
    }

    /// Polls until backup `backup` of service `id` is confirmed (its entry) or has failed (exit
    /// code 7 with the reason).
    pub async fn wait_for_backup(
        &self,
        id: &str,
        backup: &str,
        timeout: Duration,
    ) -> CliResult<Value> {
        let start = Instant::now();
        loop {
            let svc = self.get(&format!("/api/managed-services/{id}")).await?;
            let entry = svc["backups"]["entries"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["id"] == backup).cloned())
                .unwrap_or(Value::Null);
            if entry["confirmedAt"].is_string() {
                return Ok(entry);
            }
            if let Some(e) = entry["error"].as_str() {
                return Err(CliError::new(7, format!("backup {backup} failed: {e}")));
            }
            if start.elapsed() > timeout {
                return Err(CliError::new(
                    7,
                    format!("backup {backup} not confirmed after {}s", timeout.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the service is in state `want` (`synchronized`, `paused`), with a spinner on
    /// a terminal. `error` or the timeout end the wait with exit code 7.
    pub async fn wait_for(&self, id: &str, want: &str, timeout: Duration) -> CliResult<Value> {
        let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut i = 0;
        loop {
            let svc = self.get(&format!("/api/managed-services/{id}")).await?;
            let state = svc["status"]["state"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned();
            if state == want {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                return Ok(svc);
            }
            if state == "error" {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                let reason = svc["status"]["reason"]
                    .as_str()
                    .unwrap_or("no reason given");
                return Err(CliError::new(
                    7,
                    format!("service {id} is in error: {reason}"),
                ));
            }
            if start.elapsed() > timeout {
                return Err(CliError::new(
                    7,
                    format!(
                        "gave up after {}s; service {id} is still {state}",
                        timeout.as_secs()
                    ),
                ));
            }
            if tty {
                eprint!(
                    "\r{} {state} ({:.1}s)",
                    frames[i % frames.len()],
                    start.elapsed().as_secs_f32()
                );
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Parses `key=value` pairs. With `typed`, values that read as JSON numbers or booleans keep that
/// type (plan parameters); otherwise every value is a string (config, secrets).
pub fn parse_pairs(
    pairs: &[String],
    what: &str,
    typed: bool,
) -> CliResult<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| CliError::new(2, format!("--{what} expects key=value, got '{p}'")))?;
        let value = match serde_json::from_str::<Value>(v) {
            Ok(v @ (Value::Number(_) | Value::Bool(_))) if typed => v,
            _ => Value::String(v.to_owned()),
        };
        out.insert(k.to_owned(), value);
    }
    Ok(out)
}

/// One line per service.
pub fn services_table(services: &[Value]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "NAME".into(),
        "PROVIDER".into(),
        "PLAN".into(),
        "VERSION".into(),
        "STATE".into(),
        "ENDPOINT".into(),
    ]];
    for s in services {
        let d = &s["status"]["details"];
        let endpoint = match (d["hostname"].as_str(), d["port"].as_u64()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => "-".into(),
        };
        rows.push([
            s["id"].as_str().unwrap_or("").to_owned(),
            s["name"].as_str().unwrap_or("").to_owned(),
            s["provider"]["name"].as_str().unwrap_or("").to_owned(),
            s["plan"]["id"].to_string(),
            s["config"]["version"].as_str().unwrap_or("-").to_owned(),
            s["status"]["state"].as_str().unwrap_or("").to_owned(),
            endpoint,
        ]);
    }
    table(&rows)
}

pub fn providers_table(providers: &[Value]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "SCHEMA".into(),
        "DISPLAY NAME".into(),
        "VERSIONS".into(),
        "PLANS".into(),
    ]];
    for p in providers {
        let versions: Vec<String> = p["configSchema"]["properties"]["version"]["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let plans: Vec<String> = p["plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pl| format!("{}={}", pl["id"], pl["name"].as_str().unwrap_or("")))
            .collect();
        rows.push([
            p["name"].as_str().unwrap_or("").to_owned(),
            p["version"].as_str().unwrap_or("").to_owned(),
            p["displayName"].as_str().unwrap_or("").to_owned(),
            if versions.is_empty() {
                "-".into()
            } else {
                versions.join(",")
            },
            plans.join(" "),
        ]);
    }
    table(&rows)
}

/// Backup entries as a table: id, when scheduled and confirmed, and why one failed.
pub fn backups_table(entries: &Value) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "SCHEDULED".to_owned(),
        "CONFIRMED".to_owned(),
        "ERROR".to_owned(),
    ]];
    for e in entries.as_array().into_iter().flatten() {
        let text = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
        rows.push([
            text("id"),
            text("scheduledAt"),
            text("confirmedAt"),
            text("error"),
        ]);
    }
    table(&rows)
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Renders `berth env` output.
pub fn render_env(vars: &serde_json::Map<String, Value>, format: &str) -> CliResult<String> {
    let pairs = vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()));
    Ok(match format {
        "json" => serde_json::to_string_pretty(&json!(vars)).unwrap_or_default() + "\n",
        "dotenv" => pairs
            .map(|(k, v)| format!("{k}={}\n", dotenv_quote(v)))
            .collect(),
        "shell" => pairs
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect(),
        other => {
            return Err(CliError::new(
                2,
                format!("unknown format '{other}' (dotenv, shell, json)"),
            ))
        }
    })
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

fn dotenv_quote(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=".contains(c))
    {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_formats_quote_safely() {
        let vars = json!({"A": "plain", "B": "it's \"x\""})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            render_env(&vars, "shell").unwrap(),
            "export A='plain'\nexport B='it'\\''s \"x\"'\n"
        );
        assert_eq!(
            render_env(&vars, "dotenv").unwrap(),
            "A=plain\nB=\"it's \\\"x\\\"\"\n"
        );
        assert!(render_env(&vars, "xml").is_err());
    }

    #[test]
    fn pairs_keep_numbers_and_strings() {
        let m = parse_pairs(&["memory=512".into(), "name=x=y".into()], "param", true).unwrap();
        assert_eq!(m["memory"], json!(512));
        assert_eq!(m["name"], json!("x=y"));
        let m = parse_pairs(&["version=17".into()], "config", false).unwrap();
        assert_eq!(m["version"], json!("17"));
        assert!(parse_pairs(&["novalue".into()], "config", false).is_err());
    }
}
