//! The model of `topics.yaml`: every topic with its partitions, replication,
//! configs, key, value schema and compatibility.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicsFile {
    /// Values every topic inherits.
    #[serde(default)]
    pub defaults: Defaults,
    /// The topics.
    pub topics: Vec<TopicSpec>,
}

/// Values every topic inherits unless it sets its own.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Defaults {
    /// Replication factor.
    pub replication_factor: Option<i32>,
    /// Schema registry compatibility level.
    pub compatibility: Option<String>,
    /// Kafka topic configs.
    #[serde(default, deserialize_with = "configs_without_duplicates")]
    pub configs: BTreeMap<String, serde_norway::Value>,
}

/// One topic as declared.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicSpec {
    /// Topic name, without any environment prefix.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor (else the default).
    pub replication_factor: Option<i32>,
    /// Kafka topic configs (merged over the defaults).
    #[serde(default, deserialize_with = "configs_without_duplicates")]
    pub configs: BTreeMap<String, serde_norway::Value>,
    /// What the key is.
    #[serde(default)]
    pub key: String,
    /// The value schema file in the schemas directory.
    pub value_schema: String,
    /// Compatibility level (else the default).
    pub compatibility: Option<String>,
}

/// A topic with defaults applied and an environment's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTopic {
    /// Full name (with prefix).
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic configs as strings.
    pub configs: BTreeMap<String, String>,
    /// Value schema file name.
    pub value_schema: String,
    /// Compatibility level.
    pub compatibility: String,
}

/// How an environment deviates from the file without editing it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Put before every topic name.
    pub prefix: String,
    /// Replication factor for every topic (local development: 1). `min.insync.replicas`
    /// is lowered to fit it.
    pub replication_factor: Option<i32>,
    /// At most this many partitions per topic (a small cluster). Every
    /// transaction writes a marker to each partition it wrote to, so on one
    /// or a few brokers fewer partitions mean fewer markers and lower latency;
    /// they also cap how many replicas of a stage get work. Topics declared
    /// with fewer keep theirs; co-partitioned topics, declared alike, stay
    /// alike.
    pub max_partitions: Option<i32>,
}

/// A config map, refusing a key given twice (a plain `BTreeMap` would keep the
/// last one silently; YAML's own `Mapping` refuses duplicates).
fn configs_without_duplicates<'de, D>(
    deserializer: D,
) -> Result<BTreeMap<String, serde_norway::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    serde_norway::Mapping::deserialize(deserializer)?
        .into_iter()
        .map(|(key, value)| match key {
            serde_norway::Value::String(key) => Ok((key, value)),
            other => Err(D::Error::custom(format!(
                "topic config names must be strings, found {other:?}"
            ))),
        })
        .collect()
}

fn yaml_to_string(value: &serde_norway::Value) -> anyhow::Result<String> {
    Ok(match value {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        other => bail!("topic config values must be scalars, found {other:?}"),
    })
}

impl TopicsFile {
    /// Reads and validates a topics file.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or declares a topic twice.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: Self =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut seen = std::collections::HashSet::new();
        for topic in &file.topics {
            if !seen.insert(&topic.name) {
                bail!("{}: topic {} is declared twice", path.display(), topic.name);
            }
            if topic.partitions < 1 {
                bail!(
                    "{}: topic {} needs at least one partition",
                    path.display(),
                    topic.name
                );
            }
        }
        Ok(file)
    }

    /// Every topic with defaults and overrides applied.
    ///
    /// # Errors
    /// When a config value is not a scalar, no replication factor is known or
    /// the partition cap is below one.
    pub fn resolve(&self, overrides: &Overrides) -> anyhow::Result<Vec<ResolvedTopic>> {
        if let Some(max) = overrides.max_partitions
            && max < 1
        {
            bail!("the partition cap must be at least 1, not {max}");
        }
        self.topics
            .iter()
            .map(|topic| {
                let mut configs = BTreeMap::new();
                for (key, value) in self.defaults.configs.iter().chain(&topic.configs) {
                    configs.insert(key.clone(), yaml_to_string(value)?);
                }
                let replication_factor = overrides
                    .replication_factor
                    .or(topic.replication_factor)
                    .or(self.defaults.replication_factor)
                    .with_context(|| format!("topic {}: no replication_factor", topic.name))?;
                if let Some(min_isr) = configs.get_mut("min.insync.replicas") {
                    let wanted: i32 = min_isr
                        .parse()
                        .with_context(|| format!("topic {}: min.insync.replicas", topic.name))?;
                    *min_isr = wanted.min(replication_factor).to_string();
                }
                Ok(ResolvedTopic {
                    name: format!("{}{}", overrides.prefix, topic.name),
                    partitions: overrides
                        .max_partitions
                        .map_or(topic.partitions, |max| topic.partitions.min(max)),
                    replication_factor,
                    configs,
                    value_schema: topic.value_schema.clone(),
                    compatibility: topic
                        .compatibility
                        .clone()
                        .or_else(|| self.defaults.compatibility.clone())
                        .unwrap_or_else(|| "FULL_TRANSITIVE".to_owned()),
                })
            })
            .collect()
    }
}

/// Where the repository's `topics.yaml` and `schemas/avro` are by default: next to the
/// current directory or one of its parents, else the image's `/etc/si`.
#[must_use]
pub fn default_path(relative: &str, installed: &str) -> PathBuf {
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(relative);
        if candidate.exists() {
            return candidate;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    PathBuf::from(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
defaults:
  replication_factor: 3
  compatibility: FULL_TRANSITIVE
  configs: {min.insync.replicas: "2"}
topics:
  - name: a.v1
    partitions: 12
    configs: {retention.ms: 604800000, cleanup.policy: delete}
    value_schema: a.avsc
  - name: b.v1
    partitions: 3
    replication_factor: 2
    compatibility: BACKWARD
    value_schema: b.avsc
"#;

    #[test]
    fn defaults_and_overrides_resolve() -> anyhow::Result<()> {
        let file: TopicsFile = serde_norway::from_str(SAMPLE)?;
        let plain = file.resolve(&Overrides::default())?;
        assert_eq!(plain[0].replication_factor, 3);
        assert_eq!(plain[0].configs["retention.ms"], "604800000");
        assert_eq!(plain[0].configs["min.insync.replicas"], "2");
        assert_eq!(plain[1].replication_factor, 2);
        assert_eq!(plain[1].compatibility, "BACKWARD");

        let local = file.resolve(&Overrides {
            prefix: "dev.".into(),
            replication_factor: Some(1),
            max_partitions: None,
        })?;
        assert_eq!(local[0].name, "dev.a.v1");
        assert_eq!(local[0].replication_factor, 1);
        assert_eq!(
            local[0].configs["min.insync.replicas"], "1",
            "lowered to fit rf=1"
        );
        Ok(())
    }

    #[test]
    fn a_partition_cap_lowers_only_the_topics_above_it() -> anyhow::Result<()> {
        let file: TopicsFile = serde_norway::from_str(SAMPLE)?;
        let partitions = |max| -> anyhow::Result<Vec<i32>> {
            Ok(file
                .resolve(&Overrides {
                    max_partitions: max,
                    ..Overrides::default()
                })?
                .iter()
                .map(|t| t.partitions)
                .collect())
        };
        assert_eq!(partitions(None)?, [12, 3]);
        assert_eq!(partitions(Some(6))?, [6, 3]);
        assert_eq!(partitions(Some(1))?, [1, 1]);
        assert_eq!(partitions(Some(100))?, [12, 3]);
        let err = partitions(Some(0)).expect_err("a cap of 0 partitions");
        assert!(err.to_string().contains("at least 1"), "{err}");
        Ok(())
    }

    #[test]
    fn duplicate_keys_are_refused() {
        // A key given twice is a mistake (the second would silently win).
        let twice_in_configs = "topics:\n  - name: a.v1\n    partitions: 1\n    configs: {retention.ms: 1, retention.ms: 2}\n    value_schema: a.avsc\n";
        let twice_in_topic = "topics:\n  - name: a.v1\n    partitions: 1\n    partitions: 2\n    value_schema: a.avsc\n";
        for text in [twice_in_configs, twice_in_topic] {
            let err = serde_norway::from_str::<TopicsFile>(text)
                .expect_err("a duplicate key must not parse");
            assert!(err.to_string().contains("duplicate"), "{err}");
        }
    }
}
