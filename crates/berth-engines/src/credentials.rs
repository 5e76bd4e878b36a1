//! The environment variables applications use to reach a service (CONTRACTS.md §5).

use berth_types::JsonMap;
use serde_json::Value;

/// Builds the variables of a service of provider `provider` from its `details` and secrets.
/// With a `prefix` other than `DEFAULT`, every name gets `<PREFIX>_` in front; `DEFAULT` yields
/// both the prefixed and the bare names. Unknown providers get `<PREFIX>_HOST`/`_PORT` from details.
pub fn env_vars(
    provider: &str,
    details: &JsonMap,
    config: &JsonMap,
    secrets: &JsonMap,
    prefix: Option<&str>,
) -> Vec<(String, String)> {
    let s = |m: &JsonMap, k: &str| match m.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let host = s(details, "hostname");
    let port = s(details, "port");
    let bare: Vec<(&str, String)> = match provider {
        "postgres" => {
            let user = s(config, "userName");
            let db = s(config, "databaseName");
            let pw = s(secrets, "userPassword");
            vec![
                (
                    "DATABASE_URL",
                    format!(
                        "postgresql://{}:{}@{host}:{port}/{}",
                        pct(&user),
                        pct(&pw),
                        pct(&db)
                    ),
                ),
                ("PGHOST", host),
                ("PGPORT", port),
                ("PGUSER", user),
                ("PGPASSWORD", pw),
                ("PGDATABASE", db),
            ]
        }
        "redis" => {
            let pw = s(secrets, "password");
            vec![
                // `default:` rather than the bare `:pass@` form: redis-cli 7.0 (Debian 12) sends
                // `AUTH "" pass` for an empty user name and fails; every client accepts this one.
                (
                    "REDIS_URL",
                    format!("redis://default:{}@{host}:{port}/0", pct(&pw)),
                ),
                ("REDIS_HOST", host),
                ("REDIS_PORT", port),
                ("REDIS_PASSWORD", pw),
            ]
        }
        "s3" => vec![
            ("S3_ENDPOINT", s(details, "endpoint")),
            ("S3_BUCKET", s(details, "bucket")),
            (
                "AWS_ACCESS_KEY_ID",
                crate::garage::access_key_id(&s(secrets, "secretAccessKey")),
            ),
            ("AWS_SECRET_ACCESS_KEY", s(secrets, "secretAccessKey")),
            ("S3_REGION", s(details, "region")),
        ],
        _ => vec![("HOST", host), ("PORT", port)],
    };
    let prefix = prefix.unwrap_or("DEFAULT").to_ascii_uppercase();
    let mut out = Vec::new();
    if prefix == "DEFAULT" {
        out.extend(bare.iter().map(|(k, v)| (k.to_string(), v.clone())));
    }
    out.extend(bare.into_iter().map(|(k, v)| (format!("{prefix}_{k}"), v)));
    out
}

/// Percent-encodes what a URL's userinfo or path segment cannot carry as is.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn postgres_variables_with_and_without_prefix() {
        let details = m(json!({"hostname": "127.0.0.1", "port": 30001}));
        let config = m(json!({"userName": "app", "databaseName": "orders"}));
        let secrets = m(json!({"userPassword": "p@ss/word"}));
        let vars = env_vars("postgres", &details, &config, &secrets, None);
        assert_eq!(
            vars[0],
            (
                "DATABASE_URL".into(),
                "postgresql://app:p%40ss%2Fword@127.0.0.1:30001/orders".into()
            )
        );
        assert!(vars.contains(&("DEFAULT_PGPORT".into(), "30001".into())));
        let vars = env_vars("postgres", &details, &config, &secrets, Some("orders"));
        assert_eq!(vars.len(), 6);
        assert!(vars.iter().all(|(k, _)| k.starts_with("ORDERS_")));
    }

    #[test]
    fn redis_url_has_the_password() {
        let details = m(json!({"hostname": "127.0.0.1", "port": 30002}));
        let vars = env_vars(
            "redis",
            &details,
            &JsonMap::new(),
            &m(json!({"password": "abc"})),
            None,
        );
        assert_eq!(vars[0].1, "redis://default:abc@127.0.0.1:30002/0");
    }
}
