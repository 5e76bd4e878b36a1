//! `berth provider test ENDPOINT`: checks any backend against the Provider REST API
//! (CONTRACTS.md §2) and prints one line per rule, pass or fail with the reason.
//!
//! It drives a real instance through its life (create, idempotent re-create, ready, patch,
//! delete twice), so it needs the config and secrets the provider accepts (`--config`,
//! `--secrets`, `--plan`, as JSON).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

pub struct Options {
    pub endpoint: String,
    pub api_key: Option<String>,
    pub plan: Value,
    pub config: Value,
    pub secrets: Value,
    pub ready_timeout: Duration,
    /// Also check the optional backup calls (for backends that declare `capabilities.backups`).
    pub backups: bool,
}

/// The outcome of one rule.
pub struct Check {
    pub rule: &'static str,
    pub failure: Option<String>,
}

struct Answer {
    status: StatusCode,
    body: Value,
    raw: String,
}

struct Kit {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
    checks: Vec<Check>,
}

impl Kit {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        auth: bool,
    ) -> Result<Answer, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let (true, Some(k)) = (auth, &self.key) {
            req = req.header("X-API-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let raw = resp
            .text()
            .await
            .map_err(|e| format!("{method} {path}: reading: {e}"))?;
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Ok(Answer { status, body, raw })
    }

    fn record(&mut self, rule: &'static str, result: Result<(), String>) {
        self.checks.push(Check {
            rule,
            failure: result.err(),
        });
    }

    /// Every error answer must be `{"error": "<message>"}`.
    fn error_shape(a: &Answer, what: &str) -> Result<(), String> {
        if a.body.get("error").and_then(Value::as_str).is_some() {
            Ok(())
        } else {
            Err(format!(
                "{what}: the error body is not {{\"error\": \"...\"}}: {}",
                a.raw.chars().take(120).collect::<String>()
            ))
        }
    }
}

fn expect(a: &Answer, want: &[u16], what: &str) -> Result<(), String> {
    if want.contains(&a.status.as_u16()) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {want:?}, got {} {}",
            a.status.as_u16(),
            a.raw.chars().take(160).collect::<String>()
        ))
    }
}

/// Runs every check; never stops at the first failure, so the report names each broken rule.
pub async fn run(opts: Options) -> Vec<Check> {
    let mut kit = Kit {
        base: opts.endpoint.trim_end_matches('/').to_owned(),
        key: opts.api_key.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client builds"),
        checks: Vec::new(),
    };
    let id = Uuid::new_v4();

    let r = kit
        .call(Method::GET, "/health", None, false)
        .await
        .and_then(|a| expect(&a, &[200], "GET /health without a key"));
    kit.record("/health answers 200 without a key", r);

    if kit.key.is_some() {
        let r = kit.call(Method::GET, "/", None, false).await.and_then(|a| {
            expect(&a, &[401], "GET / without the key")?;
            Kit::error_shape(&a, "401")
        });
        kit.record(
            "calls without the API key are refused with 401 and an error body",
            r,
        );
        let mut bearer = kit.http.get(format!("{}/", kit.base));
        if let Some(k) = &kit.key {
            bearer = bearer.bearer_auth(k);
        }
        let r = match bearer.send().await {
            Ok(resp) if resp.status() == 200 => Ok(()),
            Ok(resp) => Err(format!(
                "GET / with Authorization: Bearer: {}",
                resp.status()
            )),
            Err(e) => Err(e.to_string()),
        };
        kit.record("the key is accepted as Authorization: Bearer too", r);
    }

    let r = kit.call(Method::GET, "/", None, true).await.and_then(|a| {
        expect(&a, &[200], "GET /")?;
        a.body
            .as_array()
            .map(|_| ())
            .ok_or_else(|| format!("GET /: not a JSON array: {}", a.raw))
    });
    kit.record("GET / lists ids as a JSON array", r);

    let unknown = Uuid::new_v4();
    let r = kit
        .call(Method::GET, &format!("/?id={unknown}"), None, true)
        .await
        .and_then(|a| {
            expect(&a, &[200], "GET /?id=<unknown>")?;
            match a.body.as_object() {
                Some(m) if m.is_empty() => Ok(()),
                _ => Err(format!(
                    "unknown ids must be left out of the map, got {}",
                    a.raw
                )),
            }
        });
    kit.record("GET /?id= leaves unknown ids out", r);

    let create = json!({"id": id, "teamId": 1, "customSubdomain": null, "plan": {"parameters": opts.plan},
                        "config": opts.config, "secrets": opts.secrets});
    let r = kit
        .call(Method::POST, "/", Some(&create), true)
        .await
        .and_then(|a| expect(&a, &[201], "POST /"));
    let created = r.is_ok();
    kit.record("POST / creates (201)", r);

    let r = kit
        .call(Method::POST, "/", Some(&create), true)
        .await
        .and_then(|a| expect(&a, &[200, 201], "repeated POST /"));
    kit.record("a repeated create with the same id and spec is success", r);

    let mut bad = create.clone();
    bad["teamId"] = json!(-1);
    bad["id"] = json!(Uuid::new_v4());
    let r = kit
        .call(Method::POST, "/", Some(&bad), true)
        .await
        .and_then(|a| {
            expect(&a, &[400, 422], "POST / with teamId -1")?;
            Kit::error_shape(&a, "400")
        });
    kit.record(
        "an invalid create body is refused with 400/422 and an error body",
        r,
    );

    // Ready, within the timeout, with details.
    let r = if created {
        let start = Instant::now();
        loop {
            match kit
                .call(Method::GET, &format!("/?id={id}"), None, true)
                .await
            {
                Ok(a) if a.status == 200 => {
                    let st = &a.body[id.to_string()];
                    if st["details"]["ready"] == json!(true) {
                        break if st
                            .get("plan")
                            .is_some_and(|p| p.get("parameters").is_some())
                            && st.get("config").is_some()
                        {
                            Ok(())
                        } else {
                            Err(format!(
                                "the status must echo plan.parameters and config: {st}"
                            ))
                        };
                    }
                    if let Some(e) = st.get("error").and_then(Value::as_str) {
                        break Err(format!("the backend reports an error: {e}"));
                    }
                }
                Ok(a) => break Err(format!("GET /?id=: {}", a.status)),
                Err(e) => break Err(e),
            }
            if start.elapsed() > opts.ready_timeout {
                break Err(format!(
                    "details.ready not true after {}s",
                    opts.ready_timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        Err("skipped: the create failed".into())
    };
    kit.record(
        "a created instance becomes ready (details.ready) and echoes plan and config",
        r,
    );

    let r = kit
        .call(Method::GET, "/", None, true)
        .await
        .and_then(|a| match a.body.as_array() {
            Some(ids) if ids.iter().any(|v| v.as_str() == Some(&id.to_string())) => Ok(()),
            _ => Err(format!("GET / does not list {id}: {}", a.raw)),
        });
    kit.record("GET / lists the created id", r);

    let mismatched = json!({"id": Uuid::new_v4(), "teamId": 1, "config": opts.config});
    let r = kit
        .call(Method::PATCH, &format!("/{id}"), Some(&mismatched), true)
        .await
        .and_then(|a| {
            expect(&a, &[400], "PATCH with a body id that is not the path id")?;
            Kit::error_shape(&a, "400")
        });
    kit.record("PATCH with a mismatched id is refused with 400", r);

    let patch = json!({"id": id, "teamId": 1, "config": opts.config});
    let r = kit
        .call(Method::PATCH, &format!("/{id}"), Some(&patch), true)
        .await
        .and_then(|a| expect(&a, &[204], "PATCH /{id}"));
    kit.record("PATCH /{id} with only config answers 204", r);

    let r = kit
        .call(
            Method::PATCH,
            &format!("/{}", Uuid::new_v4()),
            Some(&patch),
            true,
        )
        .await
        .and_then(|a| {
            expect(&a, &[400, 404], "PATCH of an unknown id")?;
            Kit::error_shape(&a, "404")
        });
    kit.record("PATCH of an unknown id is refused with an error body", r);

    if opts.backups {
        backup_checks(&mut kit, id).await;
    }

    for (rule, what) in [
        ("DELETE /{id} answers 204", "DELETE"),
        (
            "a second DELETE (unknown id) counts as done",
            "second DELETE",
        ),
    ] {
        let r = kit
            .call(Method::DELETE, &format!("/{id}"), None, true)
            .await
            .and_then(|a| expect(&a, &[200, 202, 204], what));
        kit.record(rule, r);
    }
    let start = Instant::now();
    let r = loop {
        match kit
            .call(Method::GET, &format!("/?id={id}"), None, true)
            .await
        {
            Ok(a) if a.body.as_object().is_some_and(|m| m.is_empty()) => break Ok(()),
            Ok(a) if start.elapsed() > opts.ready_timeout => {
                break Err(format!("still reported after delete: {}", a.raw))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => break Err(e),
        }
    };
    kit.record("a deleted id disappears from status", r);
    kit.checks
}

/// The optional backup calls: start, confirmation, removal.
async fn backup_checks(kit: &mut Kit, ms_id: Uuid) {
    let backup = Uuid::new_v4();
    let body = json!({"msId": ms_id, "teamId": 1, "config": {}, "secrets": {}});
    let r = kit
        .call(
            Method::PUT,
            &format!("/backups/{backup}"),
            Some(&body),
            true,
        )
        .await
        .and_then(|a| expect(&a, &[202], "PUT /backups/{id}"));
    kit.record("PUT /backups/{id} starts a backup (202)", r);
    let start = Instant::now();
    let r = loop {
        match kit
            .call(
                Method::POST,
                &format!("/backups/{backup}/status"),
                Some(&body),
                true,
            )
            .await
        {
            Ok(a) if a.status == 200 && a.body["exists"] == json!(true) => break Ok(()),
            Ok(a) if a.status == 200 && a.body.get("exists").is_some_and(Value::is_boolean) => {
                if let Some(e) = a.body.get("error").and_then(Value::as_str) {
                    break Err(format!("the backend reports: {e}"));
                }
                if start.elapsed() > Duration::from_secs(60) {
                    break Err("not confirmed (exists: true) within 60s".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(a) => {
                break Err(format!(
                    "expected 200 {{\"exists\": bool}}, got {} {}",
                    a.status.as_u16(),
                    a.raw
                ))
            }
            Err(e) => break Err(e),
        }
    };
    kit.record(
        "POST /backups/{id}/status confirms it with {\"exists\": true}",
        r,
    );
    let r = kit
        .call(
            Method::DELETE,
            &format!("/backups/{backup}"),
            Some(&body),
            true,
        )
        .await
        .and_then(|a| expect(&a, &[202, 204], "DELETE /backups/{id}"));
    kit.record("DELETE /backups/{id} removes it (202)", r);
    let r = kit
        .call(
            Method::POST,
            &format!("/backups/{backup}/status"),
            Some(&body),
            true,
        )
        .await
        .and_then(|a| {
            if a.body["exists"] == json!(false) {
                Ok(())
            } else {
                Err(format!("a deleted backup still exists: {}", a.raw))
            }
        });
    kit.record("a deleted backup no longer exists", r);
}

/// Prints the report; returns whether every rule passed.
pub fn report(checks: &[Check]) -> bool {
    let mut failed = 0;
    for c in checks {
        match &c.failure {
            None => println!("PASS  {}", c.rule),
            Some(why) => {
                failed += 1;
                println!("FAIL  {}\n      {why}", c.rule);
            }
        }
    }
    println!("{} passed, {} failed", checks.len() - failed, failed);
    failed == 0
}
