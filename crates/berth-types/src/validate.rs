//! Validation at the edge: every failure names the JSON path of the field and the reason, so a 422
//! tells the user exactly what to fix. Secret values are never echoed in a reason.

use serde_json::Value;

use crate::JsonMap;

/// One invalid field: `path` is dotted from the request body's root (`config.version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A request that cannot be accepted as it is; answered with 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", .0.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    pub fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self(vec![FieldError::new(path, reason)])
    }
}

/// Checks a service name against CONTRACTS.md §1:
/// `^(?!\s)[a-zA-Z0-9\-_\s]{0,126}[a-zA-Z0-9\-_]$` (1 to 127 characters, no leading or trailing space).
pub fn service_name(name: &str) -> Result<(), FieldError> {
    let err = |why: &str| Err(FieldError::new("name", why));
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let chars: Vec<char> = name.chars().collect();
    match (chars.first(), chars.last()) {
        (None, _) | (_, None) => err("must not be empty"),
        _ if chars.len() > 127 => err("must be at most 127 characters"),
        (Some(f), _) if f.is_whitespace() => err("must not start with a space"),
        (_, Some(l)) if !allowed(*l) => err("must end with a letter, digit, '-' or '_'"),
        _ if chars
            .iter()
            .any(|c| !(allowed(*c) || c.is_ascii_whitespace())) =>
        {
            err("may contain only letters, digits, '-', '_' and spaces")
        }
        _ => Ok(()),
    }
}

/// Validates `instance` against the JSON Schema `schema`, reporting paths under `prefix`.
/// With `mask_values`, the offending value is left out of the reason (for secrets).
pub fn against_schema(
    schema: &Value,
    instance: &Value,
    prefix: &str,
    mask_values: bool,
) -> Vec<FieldError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldError::new(
                prefix,
                format!("the provider's schema is invalid: {e}"),
            )]
        }
    };
    validator
        .iter_errors(instance)
        .map(|e| {
            let path = join_pointer(prefix, e.instance_path().as_str());
            let reason = if mask_values {
                e.masked().to_string()
            } else {
                e.to_string()
            };
            FieldError::new(path, reason)
        })
        .collect()
}

/// `config` + `/version` -> `config.version`.
fn join_pointer(prefix: &str, pointer: &str) -> String {
    let mut out = prefix.to_owned();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if out.is_empty() {
            out = seg;
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

/// Fills the top-level properties that `schema` gives a `default` for and `obj` leaves out.
pub fn apply_defaults(schema: &Value, obj: &mut JsonMap) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, prop) in props {
            if let Some(default) = prop.get("default") {
                obj.entry(key.clone()).or_insert_with(|| default.clone());
            }
        }
    }
}

/// Enforces `x-update-constraint` (`immutable`, `increase-only`) of the top-level properties of
/// `schema` when `old` becomes `new`.
pub fn update_constraints(
    schema: &Value,
    old: &JsonMap,
    new: &JsonMap,
    prefix: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return errors;
    };
    for (key, prop) in props {
        let constraint = prop.get("x-update-constraint").and_then(Value::as_str);
        let (before, after) = (old.get(key), new.get(key));
        if before == after {
            continue;
        }
        let path = join_pointer(prefix, key);
        match constraint {
            Some("immutable") => errors.push(FieldError::new(
                path,
                "is immutable once the service exists",
            )),
            Some("increase-only") => {
                let (b, a) = (
                    before.and_then(Value::as_f64),
                    after.and_then(Value::as_f64),
                );
                if let (Some(b), Some(a)) = (b, a) {
                    if a < b {
                        errors.push(FieldError::new(
                            path,
                            format!("can only increase (current value {b}, asked {a})"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_contract_pattern() {
        for ok in ["orders-db", "a", "my db_1", "x-"] {
            assert!(service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", " lead", "trail ", "semi;colon", "ünï", &"a".repeat(128)] {
            assert!(service_name(bad).is_err(), "{bad:?}");
        }
        assert!(service_name(&"a".repeat(127)).is_ok());
    }

    #[test]
    fn schema_errors_name_the_field() {
        let schema = json!({"type": "object", "additionalProperties": false,
            "properties": {"version": {"type": "string", "enum": ["17", "16"]}}});
        let errs = against_schema(&schema, &json!({"version": "9"}), "config", false);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "config.version");
        let errs = against_schema(&schema, &json!({"nope": 1}), "config", false);
        assert_eq!(errs[0].path, "config");
        assert!(errs[0].reason.contains("nope"), "{}", errs[0].reason);
    }

    #[test]
    fn masked_secrets_do_not_echo_values() {
        let schema = json!({"type": "object", "properties": {"password": {"type": "string", "minLength": 12}}});
        let errs = against_schema(&schema, &json!({"password": "hunter2"}), "secrets", true);
        assert_eq!(errs[0].path, "secrets.password");
        assert!(!errs[0].reason.contains("hunter2"), "{}", errs[0].reason);
    }

    #[test]
    fn update_constraints_are_enforced() {
        let schema = json!({"properties": {
            "user": {"x-update-constraint": "immutable"},
            "storage": {"x-update-constraint": "increase-only"},
            "free": {}}});
        let old = json!({"user": "a", "storage": 10, "free": 1});
        let old = old.as_object().unwrap();
        let ok = json!({"user": "a", "storage": 20, "free": 2});
        assert!(update_constraints(&schema, old, ok.as_object().unwrap(), "config").is_empty());
        let bad = json!({"user": "b", "storage": 5, "free": 1});
        let errs = update_constraints(&schema, old, bad.as_object().unwrap(), "plan.parameters");
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["plan.parameters.user", "plan.parameters.storage"]);
    }

    #[test]
    fn defaults_fill_only_missing_keys() {
        let schema = json!({"properties": {"a": {"default": 1}, "b": {"default": 2}}});
        let mut obj = json!({"a": 5}).as_object().unwrap().clone();
        apply_defaults(&schema, &mut obj);
        assert_eq!(Value::Object(obj), json!({"a": 5, "b": 2}));
    }
}
