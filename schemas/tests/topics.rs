//! `topics.yaml` against the schemas, `si_schemas::topics` and the changelog.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use si_schemas::topics;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    defaults: Defaults,
    topics: Vec<Topic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    replication_factor: u32,
    compatibility: String,
    /// Kafka takes config values as strings; a YAML number here fails to parse.
    configs: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topic {
    name: String,
    partitions: u32,
    replication_factor: Option<u32>,
    compatibility: Option<String>,
    key: String,
    value_schema: String,
    configs: BTreeMap<String, String>,
    producers: Vec<String>,
    consumers: Vec<String>,
    description: String,
}

impl Topic {
    fn config<'a>(&'a self, defaults: &'a Defaults, name: &str) -> Option<&'a str> {
        self.configs
            .get(name)
            .or_else(|| defaults.configs.get(name))
            .map(String::as_str)
    }
}

/// Topic-level configs we set; anything else is most likely a typo.
const KNOWN_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.ms",
];

/// Kafka's default max.message.bytes.
const BROKER_MAX_MESSAGE_BYTES: u64 = 1_048_588;

fn root() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/..")
}

fn load() -> TopicsFile {
    let path = format!("{}/topics.yaml", root());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn avsc_files() -> BTreeSet<String> {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/avro"))
        .expect("schemas/avro")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".avsc"))
        .collect()
}

#[test]
fn topics_yaml_names_the_topics_of_topics_rs_in_order() {
    let file = load();
    let names: Vec<&str> = file.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, topics::ALL, "topics.yaml vs si_schemas::topics::ALL");
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate topic names");
}

#[test]
fn every_topic_names_an_existing_schema_and_every_schema_is_used() {
    let file = load();
    let on_disk = avsc_files();
    let mut used = BTreeSet::new();
    for t in &file.topics {
        assert!(
            on_disk.contains(&t.value_schema),
            "{}: value_schema {} is not in schemas/avro",
            t.name,
            t.value_schema
        );
        let text = std::fs::read_to_string(format!(
            "{}/avro/{}",
            env!("CARGO_MANIFEST_DIR"),
            t.value_schema
        ))
        .unwrap();
        assert_eq!(
            topics::value_schema(&t.name),
            Some((t.value_schema.as_str(), text.as_str())),
            "{}: si_schemas::topics::value_schema disagrees with topics.yaml",
            t.name
        );
        used.insert(t.value_schema.clone());
    }
    let unused: Vec<&String> = on_disk.difference(&used).collect();
    assert!(unused.is_empty(), "schemas no topic uses: {unused:?}");
    assert_eq!(topics::value_schema("no.such.topic"), None);
}

#[test]
fn every_topic_is_fully_specified() {
    let file = load();
    let d = &file.defaults;
    assert_eq!(d.compatibility, "FULL_TRANSITIVE");
    let mut problems = Vec::new();
    let mut fail = |t: &Topic, what: String| problems.push(format!("{}: {what}", t.name));
    for t in &file.topics {
        let parts: Vec<&str> = t.name.split('.').collect();
        if !(matches!(parts.first(), Some(&"si" | &"twilio"))
            && parts
                .last()
                .is_some_and(|v| v.starts_with('v') && v[1..].parse::<u32>().is_ok())
            && t.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.'))
        {
            fail(t, "name must be (si|twilio).<lower-case words>.v<N>".into());
        }
        if t.partitions == 0 {
            fail(t, "partitions must be > 0".into());
        }
        let rf = t.replication_factor.unwrap_or(d.replication_factor);
        if rf != 3 {
            fail(
                t,
                format!(
                    "replication_factor {rf}: production is 3 (local dev overrides at apply time)"
                ),
            );
        }
        let min_isr: u32 = t
            .config(d, "min.insync.replicas")
            .unwrap_or("1")
            .parse()
            .unwrap();
        if !(2..rf).contains(&min_isr) {
            fail(
                t,
                format!("min.insync.replicas {min_isr} must be >= 2 and < replication_factor {rf}"),
            );
        }
        let compat = t.compatibility.as_deref().unwrap_or(&d.compatibility);
        if compat != "FULL_TRANSITIVE" {
            fail(
                t,
                format!("compatibility {compat}, expected FULL_TRANSITIVE"),
            );
        }
        for (name, text) in [("key", &t.key), ("description", &t.description)] {
            if text.trim().len() < 10 {
                fail(t, format!("{name} must say something"));
            }
        }
        if t.producers.is_empty() || t.consumers.is_empty() {
            fail(t, "producers and consumers must be listed".into());
        }
        for name in t.configs.keys().chain(d.configs.keys()) {
            if !KNOWN_CONFIGS.contains(&name.as_str()) {
                fail(t, format!("unknown topic config {name}"));
            }
        }
        let retention: i64 = match t.configs.get("retention.ms").map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                fail(t, "retention.ms must be set explicitly (a number)".into());
                continue;
            }
        };
        match t.configs.get("cleanup.policy").map(String::as_str) {
            Some("compact") => {
                if retention != -1 {
                    fail(
                        t,
                        "a compacted table keeps its entries: retention.ms -1".into(),
                    );
                }
                for c in ["min.compaction.lag.ms", "delete.retention.ms"] {
                    if !t.configs.contains_key(c) {
                        fail(t, format!("compacted topics set {c}"));
                    }
                }
            }
            Some("delete") => {
                if retention <= 0 {
                    fail(t, "delete topics need a finite retention.ms".into());
                }
            }
            other => fail(
                t,
                format!("cleanup.policy must be delete or compact, not {other:?}"),
            ),
        }
        for (k, v) in &t.configs {
            let numeric = k.ends_with(".ms") || k.ends_with(".bytes") || k == "min.insync.replicas";
            if numeric && v.parse::<i64>().is_err() {
                fail(t, format!("{k} = {v:?} is not a number"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "topics.yaml problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn partitioning_fits_the_keys() {
    let file = load();
    let by_name: BTreeMap<&str, &Topic> =
        file.topics.iter().map(|t| (t.name.as_str(), t)).collect();
    let partitions = |name: &str| by_name[name].partitions;

    // Conversation-keyed topics that processors join on one partition's local
    // state must have the same partition count (co-partitioned).
    let co_partitioned = [
        topics::WEBHOOKS,
        topics::CONVERSATION_EVENTS,
        topics::INBOUND,
        topics::RESPONSES,
        topics::COMMANDS,
        topics::DELIVERY,
        topics::TRANSCRIPT,
    ];
    for name in co_partitioned {
        assert_eq!(
            partitions(name),
            partitions(topics::CONVERSATION_EVENTS),
            "{name} must be co-partitioned"
        );
    }
    // A DLQ replay lands on the same sender partition.
    assert_eq!(
        partitions(topics::OUTBOUND_DLQ),
        partitions(topics::OUTBOUND)
    );
    // Both consent tables are read side by side with the same keys.
    assert_eq!(
        partitions(topics::CONSENT),
        partitions(topics::CONSENT_REGISTRY)
    );
    assert_eq!(
        by_name[topics::CONSENT].value_schema,
        by_name[topics::CONSENT_REGISTRY].value_schema
    );
}

#[test]
fn retention_and_sizes_keep_their_promises() {
    let file = load();
    let d = &file.defaults;
    let by_name: BTreeMap<&str, &Topic> =
        file.topics.iter().map(|t| (t.name.as_str(), t)).collect();
    let retention = |name: &str| -> i64 { by_name[name].configs["retention.ms"].parse().unwrap() };
    let day: i64 = 86_400_000;

    // Compliance audit log: 7 years.
    assert!(
        retention(topics::COMPLIANCE) >= 2557 * day,
        "si.compliance.v1 keeps 7 years"
    );
    for name in [
        topics::CONSENT,
        topics::CONSENT_REGISTRY,
        topics::IDENTITY,
        topics::PARTICIPANTS,
    ] {
        assert_eq!(
            by_name[name].configs["cleanup.policy"], "compact",
            "{name} is a compacted table"
        );
    }

    // The dead-letter topic carries any input record plus an envelope.
    let max_bytes = |t: &Topic| -> u64 {
        t.config(d, "max.message.bytes")
            .map_or(BROKER_MAX_MESSAGE_BYTES, |v| v.parse().unwrap())
    };
    let dlq = max_bytes(by_name[topics::DEAD_LETTER]);
    for t in &file.topics {
        if t.name != topics::DEAD_LETTER {
            assert!(
                dlq > max_bytes(t),
                "si.deadletter.v1 max.message.bytes must exceed {}'s",
                t.name
            );
        }
    }
}

#[test]
fn the_changelog_lists_every_topic_and_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/CHANGELOG.md");
    let changelog = std::fs::read_to_string(path).expect("schemas/CHANGELOG.md");
    for name in topics::ALL {
        assert!(
            changelog.contains(&format!("`{name}`")),
            "CHANGELOG.md does not mention `{name}`"
        );
    }
    for file in avsc_files() {
        assert!(
            changelog.contains(&format!("`{file}`")),
            "CHANGELOG.md does not mention `{file}`"
        );
    }
    assert!(changelog.contains("FULL_TRANSITIVE"));
}

#[test]
fn the_writers_table_is_the_producers_of_topics_yaml() {
    let file = load();
    for (producer, written) in topics::WRITERS {
        let listed: BTreeSet<&str> = file
            .topics
            .iter()
            .filter(|t| t.producers.iter().any(|p| p == producer))
            .map(|t| t.name.as_str())
            .collect();
        let declared: BTreeSet<&str> = written.iter().copied().collect();
        assert_eq!(declared, listed, "topics written by {producer}");
    }
    // Every stage of this repository that writes in transactions is in the table.
    for stage in [
        "normalize",
        "consent",
        "segment",
        "lifecycle",
        "voice-link",
        "media",
        "egress",
    ] {
        assert!(
            !topics::written_by(stage).is_empty(),
            "{stage} missing from WRITERS"
        );
    }
}
