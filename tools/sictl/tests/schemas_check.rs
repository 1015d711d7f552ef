//! `sictl schemas register` and `sictl schemas check` against the real registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// The repository root (where topics.yaml is).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sictl(prefix: &str, schemas_dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_sictl"))
        .env("SI_TOPIC_PREFIX", prefix)
        .arg("--topics-file")
        .arg(repo_root().join("topics.yaml"))
        .arg("--schemas-dir")
        .arg(schemas_dir)
        .args(args)
        .output()
        .context("running sictl")?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

fn prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A copy of the committed schemas with `edit` applied to one file.
fn variant(file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<PathBuf> {
    let source = repo_root().join("schemas/avro");
    let dir = std::env::temp_dir().join(format!("schemas-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let path = dir.join(file);
    let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(&mut schema);
    std::fs::write(&path, serde_json::to_string_pretty(&schema)?)?;
    Ok(dir)
}

fn fields(schema: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    schema["fields"].as_array_mut().expect("a record schema")
}

#[test]
fn committed_schemas_register_and_check_clean() -> anyhow::Result<()> {
    let prefix = prefix();
    let committed = repo_root().join("schemas/avro");

    let (ok, out) = sictl(&prefix, &committed, &["schemas", "check"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "new         {prefix}si.conversation.events.v1-value"
        )),
        "{out}"
    );

    let (ok, out) = sictl(&prefix, &committed, &["schemas", "register"])?;
    assert!(ok, "{out}");
    assert!(out.contains("registered"), "{out}");

    let (ok, out) = sictl(&prefix, &committed, &["schemas", "check"])?;
    assert!(ok, "{out}");
    assert!(
        !out.contains("INCOMPATIBLE") && out.contains("unchanged"),
        "{out}"
    );

    let (ok, out) = sictl(&prefix, &committed, &["schemas", "register"])?;
    assert!(
        ok && out.contains("unchanged") && !out.contains("registered "),
        "{out}"
    );
    Ok(())
}

#[test]
fn removing_a_field_without_default_fails_and_names_it() -> anyhow::Result<()> {
    let prefix = prefix();
    let (ok, out) = sictl(
        &prefix,
        &repo_root().join("schemas/avro"),
        &["schemas", "register"],
    )?;
    assert!(ok, "{out}");

    let removed = variant("conversation_event.avsc", |schema| {
        fields(schema).retain(|f| f["name"] != "session_id");
    })?;
    let (ok, out) = sictl(&prefix, &removed, &["schemas", "check"])?;
    assert!(!ok, "a removed required field must fail the check:\n{out}");
    assert!(out.contains("INCOMPATIBLE"), "{out}");
    assert!(
        out.contains("'session_id'"),
        "the offending field is named:\n{out}"
    );
    assert!(out.contains("conversation_event.avsc"), "{out}");

    // Register refuses it too, and registers nothing.
    let (ok, out) = sictl(&prefix, &removed, &["schemas", "register"])?;
    assert!(!ok && out.contains("session_id"), "{out}");
    Ok(())
}

#[test]
fn adding_a_field_without_default_fails_and_an_optional_one_passes() -> anyhow::Result<()> {
    let prefix = prefix();
    let (ok, out) = sictl(
        &prefix,
        &repo_root().join("schemas/avro"),
        &["schemas", "register"],
    )?;
    assert!(ok, "{out}");

    let required = variant("inbound_message.avsc", |schema| {
        fields(schema).push(serde_json::json!({"name": "mood", "type": "string", "doc": "x"}));
    })?;
    let (ok, out) = sictl(&prefix, &required, &["schemas", "check"])?;
    assert!(!ok && out.contains("'mood'"), "{out}");

    let optional = variant("inbound_message.avsc", |schema| {
        fields(schema).push(
            serde_json::json!({"name": "mood", "type": ["null", "string"], "default": null, "doc": "x"}),
        );
    })?;
    let (ok, out) = sictl(&prefix, &optional, &["schemas", "check"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("compatible  {prefix}si.inbound.v1-value")),
        "{out}"
    );
    Ok(())
}
