//! `sictl schemas register` and `sictl schemas check`: the local `.avsc` files
//! against the registry, under each topic's compatibility level.
//!
//! The registry is the authority on compatibility; apache-avro's schema
//! resolution rules are asked too, to name the field that breaks it.

use std::path::Path;

use anyhow::{Context, bail};
use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use si_schemas::{Registry, value_subject};

use crate::topics_file::ResolvedTopic;

/// A topic's value schema as committed.
#[derive(Debug)]
pub struct LocalSchema {
    /// Registry subject (`<topic>-value`).
    pub subject: String,
    /// The `.avsc` file name.
    pub file: String,
    /// Its text.
    pub text: String,
    /// Its parsed form.
    pub parsed: Schema,
    /// The topic's compatibility level.
    pub compatibility: String,
}

/// Reads the value schema of every topic from `dir`.
///
/// # Errors
/// When a file is missing or not valid Avro.
pub fn load(topics: &[ResolvedTopic], dir: &Path) -> anyhow::Result<Vec<LocalSchema>> {
    topics
        .iter()
        .map(|topic| {
            let path = dir.join(&topic.value_schema);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (value schema of {})",
                    path.display(),
                    topic.name
                )
            })?;
            let parsed = Schema::parse_str(&text)
                .with_context(|| format!("{} is not a valid Avro schema", path.display()))?;
            Ok(LocalSchema {
                subject: value_subject(&topic.name),
                file: topic.value_schema.clone(),
                text,
                parsed,
                compatibility: topic.compatibility.clone(),
            })
        })
        .collect()
}

/// Why `new` may not follow `old` versions under `level`, one line per problem,
/// each naming the version and (where Avro's rules say) the field.
///
/// `olds` are the registered versions, oldest first, with their version numbers.
#[must_use]
pub fn incompatibilities(level: &str, new: &Schema, olds: &[(u32, Schema)]) -> Vec<String> {
    let level = level.to_ascii_uppercase();
    let (backward, forward) = match level.trim_end_matches("_TRANSITIVE") {
        "BACKWARD" => (true, false),
        "FORWARD" => (false, true),
        "FULL" => (true, true),
        _ => (false, false),
    };
    let against: &[(u32, Schema)] = if level.ends_with("_TRANSITIVE") {
        olds
    } else {
        olds.last().map_or(&[], std::slice::from_ref)
    };
    let mut problems = Vec::new();
    for (version, old) in against {
        if backward && let Err(e) = SchemaCompatibility::can_read(old, new) {
            problems.push(format!(
                "backward: the new schema cannot read data written with version {version}: {e}"
            ));
        }
        if forward && let Err(e) = SchemaCompatibility::can_read(new, old) {
            problems.push(format!(
                "forward: readers on version {version} cannot read data written with the new schema: {e}"
            ));
        }
    }
    problems
}

/// Whether two schema texts are the same JSON (the registry may re-format; docs and
/// defaults count, unlike Avro's canonical form). A nested named type that repeats its
/// enclosing namespace means the same as one that leaves it out, and registries differ
/// in which they store (Apicurio drops it), so such namespaces are ignored.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(mut a), Ok(mut b)) => {
            drop_inherited_namespaces(&mut a, None);
            drop_inherited_namespaces(&mut b, None);
            a == b
        }
        _ => a.trim() == b.trim(),
    }
}

/// Removes every `namespace` equal to the one its type would inherit anyway.
fn drop_inherited_namespaces(value: &mut serde_json::Value, enclosing: Option<&str>) {
    match value {
        serde_json::Value::Object(object) => {
            let declared = object
                .get("namespace")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let named = matches!(
                object.get("type").and_then(serde_json::Value::as_str),
                Some("record" | "enum" | "fixed" | "error")
            );
            // A dotted name carries its own namespace, which its members inherit.
            let from_name = object
                .get("name")
                .and_then(serde_json::Value::as_str)
                .filter(|_| named)
                .and_then(|name| name.rsplit_once('.'))
                .map(|(namespace, _)| namespace.to_owned());
            if named && declared.is_some() && declared.as_deref() == enclosing {
                object.remove("namespace");
            }
            let inner = from_name
                .or(declared)
                .or_else(|| enclosing.map(str::to_owned));
            for (_, child) in object.iter_mut() {
                drop_inherited_namespaces(child, inner.as_deref());
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                drop_inherited_namespaces(item, enclosing);
            }
        }
        _ => {}
    }
}

/// What the check found for one subject.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing registered yet.
    New,
    /// Identical to the latest registered version.
    Unchanged,
    /// May be registered.
    Compatible,
    /// May not be registered, with the reasons.
    Incompatible(Vec<String>),
}

/// Checks each local schema against the registry.
///
/// # Errors
/// When the registry cannot be asked or holds a schema that does not parse.
pub async fn check(
    registry: &Registry,
    locals: &[LocalSchema],
) -> anyhow::Result<Vec<(String, Verdict)>> {
    let mut verdicts = Vec::with_capacity(locals.len());
    for local in locals {
        let versions = registry.versions(&local.subject).await?;
        let Some(latest) = versions.last() else {
            verdicts.push((local.subject.clone(), Verdict::New));
            continue;
        };
        let olds = versions
            .iter()
            .map(|v| {
                Schema::parse_str(&v.schema)
                    .map(|s| (v.version, s))
                    .with_context(|| {
                        format!("{} version {} does not parse", local.subject, v.version)
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if same_json(&latest.schema, &local.text) {
            verdicts.push((local.subject.clone(), Verdict::Unchanged));
            continue;
        }
        // The declared level is the policy. Registries disagree on what an unset subject
        // level reports (Apicurio says NONE while the global level applies), so the
        // registry's own setting is only compared, and `register` corrects it.
        let level = local.compatibility.clone();
        let mut problems = incompatibilities(&level, &local.parsed, &olds);
        let registry_says = registry.is_compatible(&local.subject, &local.text).await?;
        if !registry_says && problems.is_empty() {
            problems.push(format!("the registry refuses it under {level}"));
        }
        if problems.is_empty() {
            verdicts.push((local.subject.clone(), Verdict::Compatible));
        } else {
            problems.insert(0, format!("{} under {level}:", local.file));
            verdicts.push((local.subject.clone(), Verdict::Incompatible(problems)));
        }
    }
    Ok(verdicts)
}

/// What registering did to one subject.
#[derive(Debug)]
pub struct Registered {
    /// Subject.
    pub subject: String,
    /// Schema id.
    pub id: u32,
    /// Whether the subject already had this exact schema.
    pub unchanged: bool,
}

/// Checks, then registers every local schema and sets each subject's compatibility level.
///
/// # Errors
/// When any schema is incompatible (nothing is registered then) or the registry fails.
pub async fn register(
    registry: &Registry,
    locals: &[LocalSchema],
) -> anyhow::Result<Vec<Registered>> {
    let verdicts = check(registry, locals).await?;
    let refused: Vec<String> = verdicts
        .iter()
        .filter_map(|(_, v)| match v {
            Verdict::Incompatible(reasons) => Some(reasons.join("\n  ")),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        bail!(
            "nothing registered; incompatible schemas:\n  {}",
            refused.join("\n  ")
        );
    }
    let mut done = Vec::with_capacity(locals.len());
    for (local, (_, verdict)) in locals.iter().zip(&verdicts) {
        // An existing subject gets its level before the new version is judged; a new
        // subject can only get one once it exists on some registries (Apicurio).
        if *verdict != Verdict::New {
            registry
                .set_compatibility(&local.subject, &local.compatibility)
                .await?;
        }
        let id = registry.register(&local.subject, &local.text).await?;
        if *verdict == Verdict::New {
            registry
                .set_compatibility(&local.subject, &local.compatibility)
                .await?;
        }
        done.push(Registered {
            subject: local.subject.clone(),
            id,
            unchanged: *verdict == Verdict::Unchanged,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_enclosing_namespace_is_the_same_schema_and_a_different_one_is_not() {
        let stored = r#"{"type":"record","name":"Outer","namespace":"a.b","fields":[
            {"name":"inner","type":{"type":"record","name":"Inner","fields":[]}}]}"#;
        let repeated = r#"{"type":"record","name":"Outer","namespace":"a.b","fields":[
            {"name":"inner","type":{"type":"record","name":"Inner","namespace":"a.b","fields":[]}}]}"#;
        let moved = r#"{"type":"record","name":"Outer","namespace":"a.b","fields":[
            {"name":"inner","type":{"type":"record","name":"Inner","namespace":"a.c","fields":[]}}]}"#;
        assert!(same_json(stored, repeated));
        assert!(!same_json(stored, moved));
        // The top-level namespace is never dropped.
        assert!(!same_json(
            stored,
            &stored.replace(r#","namespace":"a.b""#, "")
        ));
    }

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#
        ))
        .expect("test schema parses")
    }

    #[test]
    fn removing_a_field_without_default_breaks_forward_and_names_it() {
        let old =
            schema(r#"{"name":"id","type":"string"},{"name":"conversation_id","type":"string"}"#);
        let new = schema(r#"{"name":"id","type":"string"}"#);
        let problems = incompatibilities("FULL_TRANSITIVE", &new, &[(1, old.clone())]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("conversation_id"), "{problems:?}");
        assert!(problems[0].starts_with("forward"), "{problems:?}");
        assert!(incompatibilities("BACKWARD_TRANSITIVE", &new, &[(1, old)]).is_empty());
    }

    #[test]
    fn adding_a_field_without_default_breaks_backward_and_names_it() {
        let old = schema(r#"{"name":"id","type":"string"}"#);
        let new = schema(r#"{"name":"id","type":"string"},{"name":"locale","type":"string"}"#);
        let problems = incompatibilities("BACKWARD", &new, &[(1, old)]);
        assert!(
            problems.iter().any(|p| p.contains("locale")),
            "{problems:?}"
        );
    }

    #[test]
    fn adding_an_optional_field_is_fully_compatible() {
        let old = schema(r#"{"name":"id","type":"string"}"#);
        let new = schema(
            r#"{"name":"id","type":"string"},{"name":"locale","type":["null","string"],"default":null}"#,
        );
        assert!(incompatibilities("FULL_TRANSITIVE", &new, &[(1, old)]).is_empty());
    }

    #[test]
    fn transitive_levels_check_every_version_plain_ones_only_the_latest() {
        let v1 = schema(r#"{"name":"id","type":"string"},{"name":"a","type":"string"}"#);
        let v2 =
            schema(r#"{"name":"id","type":"string"},{"name":"a","type":"string","default":""}"#);
        let new = schema(r#"{"name":"id","type":"string"}"#);
        let olds = [(1, v1), (2, v2)];
        assert!(incompatibilities("FORWARD", &new, &olds).is_empty());
        let transitive = incompatibilities("FORWARD_TRANSITIVE", &new, &olds);
        assert_eq!(transitive.len(), 1, "{transitive:?}");
        assert!(transitive[0].contains("version 1"), "{transitive:?}");
    }
}
