//! House rules for every `.avsc` under `schemas/avro/`, checked over the parsed
//! JSON so that they hold for files added later:
//!
//! - the file is valid Avro and its top-level type is a record in `si.channel.twilio.v1`;
//! - every named type and every field has a non-empty `doc`;
//! - unions only as `["null", T]` field types with `"default": null` (no unions of
//!   several records: use one optional field per payload kind);
//! - every enum has a `default` symbol (so symbols can be added);
//! - arrays and maps carry a default (`[]`, `{}`);
//! - names: records and enums PascalCase, fields snake_case, symbols SCREAMING_SNAKE_CASE;
//! - `at`/`*_at` fields are `timestamp-millis`, the only logical type in use;
//! - a named type defined in several files is defined identically everywhere.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::Value as Json;

const NAMESPACE: &str = "si.channel.twilio.v1";
const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn avsc_files() -> BTreeMap<String, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro");
    let files: BTreeMap<String, String> = std::fs::read_dir(dir)
        .expect("schemas/avro")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    assert!(!files.is_empty(), "no .avsc files found in {dir}");
    files
}

fn is_pascal(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_snake(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_symbol(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn has_doc(o: &serde_json::Map<String, Json>) -> bool {
    o.get("doc")
        .and_then(Json::as_str)
        .is_some_and(|d| !d.trim().is_empty())
}

fn is_timestamp(t: &Json) -> bool {
    t.get("type") == Some(&Json::from("long"))
        && t.get("logicalType") == Some(&Json::from("timestamp-millis"))
}

struct Lint {
    file: String,
    problems: Vec<String>,
}

impl Lint {
    fn fail(&mut self, at: &str, what: impl std::fmt::Display) {
        self.problems.push(format!("{}: {at}: {what}", self.file));
    }

    fn named(&mut self, o: &serde_json::Map<String, Json>, at: &str) -> String {
        let name = o.get("name").and_then(Json::as_str).unwrap_or("");
        if !is_pascal(name) {
            self.fail(
                at,
                format!("type name `{name}` is not PascalCase (or carries a namespace)"),
            );
        }
        if let Some(ns) = o.get("namespace")
            && ns != NAMESPACE
        {
            self.fail(at, format!("namespace {ns}, expected {NAMESPACE}"));
        }
        if !has_doc(o) {
            self.fail(at, format!("type {name} has no doc"));
        }
        name.to_owned()
    }

    /// A type in any position other than directly as a field's type.
    fn ty(&mut self, t: &Json, at: &str) {
        match t {
            Json::String(name) => {
                if !PRIMITIVES.contains(&name.as_str())
                    && name.contains('.')
                    && !name.starts_with(NAMESPACE)
                {
                    self.fail(at, format!("reference to {name} outside {NAMESPACE}"));
                }
            }
            Json::Array(_) => self.fail(
                at,
                "union outside a field type (only [\"null\", T] fields are allowed)",
            ),
            Json::Object(o) => {
                match o.get("type").and_then(Json::as_str).unwrap_or("") {
                    "record" => {
                        let name = self.named(o, at);
                        let fields = o
                            .get("fields")
                            .and_then(Json::as_array)
                            .cloned()
                            .unwrap_or_default();
                        if fields.is_empty() {
                            self.fail(at, format!("record {name} has no fields"));
                        }
                        let mut seen = Vec::new();
                        for f in &fields {
                            let fname = f
                                .get("name")
                                .and_then(Json::as_str)
                                .unwrap_or("")
                                .to_owned();
                            if seen.contains(&fname) {
                                self.fail(at, format!("{name}.{fname} is defined twice"));
                            }
                            seen.push(fname.clone());
                            self.field(f.as_object().unwrap(), &format!("{name}.{fname}"));
                        }
                    }
                    "enum" => {
                        let name = self.named(o, at);
                        let symbols: Vec<&str> = o["symbols"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_str().unwrap())
                            .collect();
                        for s in &symbols {
                            if !is_symbol(s) {
                                self.fail(
                                    at,
                                    format!("enum {name}: symbol {s} is not SCREAMING_SNAKE_CASE"),
                                );
                            }
                        }
                        match o.get("default").and_then(Json::as_str) {
                        Some(d) if symbols.contains(&d) => {}
                        Some(d) => self.fail(at, format!("enum {name}: default {d} is not a symbol")),
                        None => self.fail(at, format!("enum {name} has no default symbol (needed to add symbols later)")),
                    }
                    }
                    "fixed" => {
                        self.named(o, at);
                    }
                    "array" => self.ty(&o["items"], at),
                    "map" => self.ty(&o["values"], at),
                    base => {
                        if let Some(logical) = o.get("logicalType") {
                            if !is_timestamp(t) {
                                self.fail(at, format!("logical type {logical} on {base}: only long timestamp-millis is in use"));
                            }
                        } else if !PRIMITIVES.contains(&base) {
                            self.fail(at, format!("unexpected type object {t}"));
                        }
                    }
                }
            }
            other => self.fail(at, format!("unexpected type {other}")),
        }
    }

    fn field(&mut self, f: &serde_json::Map<String, Json>, at: &str) {
        let name = f.get("name").and_then(Json::as_str).unwrap_or("");
        if !is_snake(name) {
            self.fail(at, "field name is not snake_case");
        }
        if !has_doc(f) {
            self.fail(at, "field has no doc");
        }
        let t = &f["type"];
        let inner = match t {
            Json::Array(branches) => {
                if branches.len() != 2
                    || branches[0] != "null"
                    || branches[1] == "null"
                    || branches[1].is_array()
                {
                    self.fail(at, format!("union {t}: only [\"null\", T] is allowed"));
                }
                if f.get("default") != Some(&Json::Null) {
                    self.fail(at, "nullable field without \"default\": null");
                }
                let inner = branches.get(1).cloned().unwrap_or(Json::Null);
                self.ty(&inner, at);
                inner
            }
            _ => {
                self.ty(t, at);
                t.clone()
            }
        };
        let kind = inner.get("type").and_then(Json::as_str);
        if matches!(kind, Some("array" | "map")) && !t.is_array() {
            let ok = match kind {
                Some("array") => f.get("default").is_some_and(Json::is_array),
                _ => f.get("default").is_some_and(Json::is_object),
            };
            if !ok {
                self.fail(at, "arrays and maps need a default ([] or {})");
            }
        }
        if (name == "at" || name.ends_with("_at")) && !is_timestamp(&inner) {
            self.fail(at, "`at`/`*_at` fields must be {\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}");
        }
    }
}

#[test]
fn every_avsc_follows_the_house_rules() {
    let mut problems = Vec::new();
    for (file, text) in avsc_files() {
        if let Err(e) = si_schemas::parse_schema(&text) {
            problems.push(format!("{file}: not valid Avro: {e}"));
            continue;
        }
        let json: Json = serde_json::from_str(&text).expect("valid JSON");
        let mut lint = Lint {
            file: file.clone(),
            problems: Vec::new(),
        };
        if json.get("type") != Some(&Json::from("record")) {
            lint.fail("top level", "must be a record");
        }
        if json.get("namespace") != Some(&Json::from(NAMESPACE)) {
            lint.fail(
                "top level",
                format!("must declare \"namespace\": \"{NAMESPACE}\""),
            );
        }
        lint.ty(&json, "top level");
        problems.extend(lint.problems);
    }
    assert!(
        problems.is_empty(),
        "schema rule violations:\n{}",
        problems.join("\n")
    );
}

/// Named type definitions of one file, by simple name.
fn definitions(node: &Json, defs: &mut BTreeMap<String, Json>) {
    match node {
        Json::Object(o) => {
            if matches!(
                o.get("type").and_then(Json::as_str),
                Some("record" | "enum" | "fixed")
            ) {
                let name = o["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .to_owned();
                assert!(
                    !defs.contains_key(&name),
                    "{name} is defined twice in one file"
                );
                defs.insert(name, node.clone());
            }
            o.values().for_each(|v| definitions(v, defs));
        }
        Json::Array(a) => a.iter().for_each(|v| definitions(v, defs)),
        _ => {}
    }
}

/// A definition with every reference replaced by what it refers to and
/// namespaces dropped (all types share one namespace, checked above).
fn expand(node: &Json, defs: &BTreeMap<String, Json>) -> Json {
    match node {
        Json::String(name) if !PRIMITIVES.contains(&name.as_str()) => {
            let simple = name.rsplit('.').next().unwrap();
            defs.get(simple)
                .map_or_else(|| node.clone(), |d| expand(d, defs))
        }
        Json::Object(o) => Json::Object(
            o.iter()
                .filter(|(k, _)| k.as_str() != "namespace")
                .map(|(k, v)| {
                    // Names and docs are strings that are not references.
                    let v = if matches!(
                        k.as_str(),
                        "name" | "doc" | "default" | "symbols" | "logicalType"
                    ) || (k == "type"
                        && v.as_str().is_some_and(|t| {
                            matches!(t, "record" | "enum" | "fixed" | "array" | "map")
                        })) {
                        v.clone()
                    } else {
                        expand(v, defs)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(|v| expand(v, defs)).collect()),
        _ => node.clone(),
    }
}

#[test]
fn shared_types_are_identical_in_every_file() {
    let mut seen: BTreeMap<String, (String, Json)> = BTreeMap::new();
    let mut shared = 0;
    for (file, text) in avsc_files() {
        let json: Json = serde_json::from_str(&text).expect("valid JSON");
        let mut defs = BTreeMap::new();
        definitions(&json, &mut defs);
        for (name, def) in &defs {
            let expanded = expand(def, &defs);
            match seen.get(name) {
                Some((first, other)) => {
                    assert_eq!(
                        &expanded, other,
                        "{name} is defined differently in {file} and {first}: a type shared by two topics must be identical"
                    );
                    shared += 1;
                }
                None => {
                    seen.insert(name.clone(), (file.clone(), expanded));
                }
            }
        }
    }
    // Channel, MediaRef, ConsentStatus… are shared: make sure the check ran.
    assert!(
        shared > 10,
        "expected shared types across files, found {shared}"
    );
}

#[test]
fn compiled_in_schemas_are_the_files() {
    // The macro embeds the file at build time; the records' schemas parse and name their file.
    use si_schemas::AvroRecord;
    use si_schemas::records::*;
    fn check<T: AvroRecord>(files: &BTreeMap<String, String>) -> &'static str {
        assert_eq!(
            files.get(T::SCHEMA_FILE).map(String::as_str),
            Some(T::SCHEMA_JSON),
            "{}",
            T::SCHEMA_FILE
        );
        let _ = T::schema();
        T::SCHEMA_FILE
    }
    let files = avsc_files();
    let mut used = vec![
        check::<TwilioWebhook>(&files),
        check::<ConversationEvent>(&files),
        check::<InboundMessage>(&files),
        check::<CognitionResponse>(&files),
        check::<Command>(&files),
        check::<OutboundOperation>(&files),
        check::<DeliveryStatus>(&files),
        check::<OutboundDeadLetter>(&files),
        check::<EgressLedgerEntry>(&files),
        check::<DeadLetter>(&files),
        check::<ComplianceEvent>(&files),
        check::<ConsentState>(&files),
        check::<IdentityRecord>(&files),
        check::<ParticipantBinding>(&files),
        check::<TranscriptEntry>(&files),
        check::<ArchivalRequest>(&files),
        check::<NormalizeState>(&files),
        check::<SegmentState>(&files),
        check::<ConsentProcessorState>(&files),
        check::<LifecycleState>(&files),
        check::<VoiceLinkState>(&files),
        check::<MediaState>(&files),
    ];
    used.sort_unstable();
    let all: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(used, all, "every .avsc has exactly one typed record");
}
