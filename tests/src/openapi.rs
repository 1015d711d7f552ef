//! Twilio's OpenAPI description (twilio-oai) as the oracle for the shape of
//! our REST requests: the path must be one Twilio describes for POST, every
//! form parameter one its request body declares, every required one present,
//! and every value of an enumerated parameter one of its values. For the
//! sandbox's answers to reads: every field one Twilio's response declares.
//!
//! The description is fetched by `dev/twilio-oai` (the test command runs it)
//! into `.cache/twilio-oai/<version>`; `SI_TWILIO_OAI_DIR` names another
//! directory.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use crate::repo_root;

/// The files the adapter's requests are checked against.
pub const FILES: &[&str] = &["twilio_api_v2010.json", "twilio_conversations_v1.json"];

/// Twilio's OpenAPI description of the APIs the adapter calls.
pub struct TwilioOpenApi {
    specs: Vec<Value>,
}

/// What a request got wrong, in words.
pub type Violations = Vec<String>;

impl TwilioOpenApi {
    /// Loads the description from `SI_TWILIO_OAI_DIR`, or the newest version
    /// `dev/twilio-oai` fetched into `.cache/twilio-oai`.
    ///
    /// # Errors
    /// When the files are missing (run `dev/twilio-oai`) or not JSON.
    pub fn load() -> anyhow::Result<Self> {
        let dir = match std::env::var_os("SI_TWILIO_OAI_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let root = repo_root().join(".cache/twilio-oai");
                let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
                    .with_context(|| {
                        format!(
                            "no Twilio OpenAPI description in {}: run dev/twilio-oai",
                            root.display()
                        )
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                versions.sort();
                versions
                    .pop()
                    .with_context(|| format!("{} is empty: run dev/twilio-oai", root.display()))?
            }
        };
        let specs = FILES
            .iter()
            .map(|f| {
                let path = dir.join(f);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { specs })
    }

    /// Checks a form-encoded POST to `path` (no host, no query) with `form`
    /// (in order, names may repeat) and the headers Twilio describes as
    /// parameters (`X-Twilio-Webhook-Enabled`).
    ///
    /// # Errors
    /// Every violation, in words.
    pub fn check_post(
        &self,
        path: &str,
        form: &[(String, String)],
        headers: &[(String, String)],
    ) -> Result<(), Violations> {
        let Some((spec, operation)) = self.specs.iter().find_map(|spec| {
            let paths = spec.get("paths")?.as_object()?;
            paths
                .iter()
                .find(|(template, _)| matches_template(template, path))
                .and_then(|(_, item)| item.get("post"))
                .map(|op| (spec, op))
        }) else {
            return Err(vec![format!(
                "POST {path}: no such operation in Twilio's description"
            )]);
        };
        let mut violations = Vec::new();
        let schema = operation
            .pointer("/requestBody/content/application~1x-www-form-urlencoded/schema")
            .map(|s| resolve(spec, s));
        let properties = schema
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object);
        for (name, value) in form {
            let Some(property) = properties.and_then(|p| p.get(name)) else {
                violations.push(format!("POST {path}: parameter {name} is not described"));
                continue;
            };
            if let Some(problem) = check_value(spec, property, value) {
                violations.push(format!("POST {path}: {name}={value:?}: {problem}"));
            }
        }
        for required in schema
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !form.iter().any(|(n, _)| n == required) {
                violations.push(format!(
                    "POST {path}: required parameter {required} is missing"
                ));
            }
        }
        let described_headers: Vec<&Value> = operation
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| resolve(spec, p))
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("header"))
            .collect();
        for (name, value) in headers {
            let Some(parameter) = described_headers.iter().find(|p| {
                p.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            }) else {
                violations.push(format!("POST {path}: header {name} is not described"));
                continue;
            };
            if let Some(problem) = parameter
                .get("schema")
                .and_then(|s| check_value(spec, s, value))
            {
                violations.push(format!("POST {path}: header {name}={value:?}: {problem}"));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

impl TwilioOpenApi {
    /// Checks the JSON answer to `GET path` (no host, no query): every field
    /// is one the 200 response of Twilio's description declares, and so is
    /// every field of the objects in its lists and of a list's `meta`.
    ///
    /// # Errors
    /// Every undeclared field, in words; a path Twilio does not describe.
    pub fn check_get_response(&self, path: &str, body: &Value) -> Result<(), Violations> {
        let Some((spec, operation)) = self.specs.iter().find_map(|spec| {
            let paths = spec.get("paths")?.as_object()?;
            paths
                .iter()
                .find(|(template, _)| matches_template(template, path))
                .and_then(|(_, item)| item.get("get"))
                .map(|op| (spec, op))
        }) else {
            return Err(vec![format!(
                "GET {path}: no such operation in Twilio's description"
            )]);
        };
        let Some(schema) = operation
            .pointer("/responses/200/content/application~1json/schema")
            .map(|s| resolve(spec, s))
        else {
            return Err(vec![format!("GET {path}: no JSON 200 response described")]);
        };
        let mut violations = Vec::new();
        undeclared_fields(spec, schema, body, &format!("GET {path}"), &mut violations);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Adds a violation for every field of `body` that `schema` does not declare,
/// looking into arrays of objects and nested objects with declared properties.
fn undeclared_fields(
    spec: &Value,
    schema: &Value,
    body: &Value,
    at: &str,
    violations: &mut Violations,
) {
    let schema = resolve(spec, schema);
    match body {
        Value::Object(fields) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (name, value) in fields {
                match properties.get(name) {
                    Some(property) => {
                        undeclared_fields(
                            spec,
                            property,
                            value,
                            &format!("{at}.{name}"),
                            violations,
                        );
                    }
                    None => violations.push(format!("{at}: field {name} is not described")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    undeclared_fields(spec, item_schema, item, &format!("{at}[]"), violations);
                }
            }
        }
        _ => {}
    }
}

/// Whether `path` fits `template` (`{Name}` matches one non-empty segment).
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else if let Some((before, rest)) = t.split_once('{') {
                // e.g. "{Sid}.json"
                let after = rest.split_once('}').map_or("", |(_, a)| a);
                p.starts_with(before) && p.ends_with(after) && p.len() > before.len() + after.len()
            } else {
                t == p
            }
        })
}

/// Follows a local `$ref`.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    let mut current = value;
    for _ in 0..8 {
        let Some(reference) = current.get("$ref").and_then(Value::as_str) else {
            return current;
        };
        match reference.strip_prefix('#').and_then(|p| spec.pointer(p)) {
            Some(target) => current = target,
            None => return current,
        }
    }
    current
}

/// What is wrong with `value` for the parameter `schema`, if anything.
fn check_value(spec: &Value, schema: &Value, value: &str) -> Option<String> {
    let schema = resolve(spec, schema);
    let schema = match schema.get("type").and_then(Value::as_str) {
        Some("array") => schema.get("items").map_or(schema, |i| resolve(spec, i)),
        _ => schema,
    };
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.iter().any(|v| v.as_str() == Some(value))
    {
        return Some(format!("not one of {values:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") if value.parse::<i64>().is_err() => Some("not an integer".into()),
        Some("boolean") if !matches!(value, "true" | "false") => Some("not a boolean".into()),
        Some("string")
            if schema.get("format").and_then(Value::as_str) == Some("uri")
                && !(value.starts_with("http://") || value.starts_with("https://")) =>
        {
            Some("not a URI".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        assert!(matches_template(
            "/v1/Conversations/{ConversationSid}/Messages",
            "/v1/Conversations/CH1/Messages"
        ));
        assert!(!matches_template(
            "/v1/Conversations/{ConversationSid}/Messages",
            "/v1/Conversations//Messages"
        ));
        assert!(matches_template(
            "/2010-04-01/Accounts/{AccountSid}/Messages.json",
            "/2010-04-01/Accounts/AC1/Messages.json"
        ));
        assert!(matches_template(
            "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json",
            "/2010-04-01/Accounts/AC1/Calls/CA1.json"
        ));
        assert!(!matches_template(
            "/v1/Conversations",
            "/v1/Conversations/CH1"
        ));
    }
}
