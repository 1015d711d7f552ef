//! `sictl topics apply`: make the cluster match `topics.yaml`. Creates what is
//! missing, raises partition counts, corrects configs that drifted; never deletes,
//! never lowers a partition count.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::RDKafkaErrorCode;

use crate::topics_file::ResolvedTopic;

type Admin = AdminClient<DefaultClientContext>;

/// One change the cluster needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The topic does not exist.
    Create(ResolvedTopic),
    /// The topic has fewer partitions than declared.
    AddPartitions {
        /// Topic name.
        topic: String,
        /// Current count.
        from: i32,
        /// Declared count.
        to: i32,
    },
    /// Declared configs differ from the cluster's.
    AlterConfigs {
        /// Topic name.
        topic: String,
        /// Config name → (current value, declared value).
        drift: BTreeMap<String, (Option<String>, String)>,
        /// The full set to send: AlterConfigs replaces a topic's explicit configs, so
        /// this is every declared config plus the topic's other explicit ones.
        set: BTreeMap<String, String>,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create(t) => write!(
                f,
                "create      {} partitions={} replication={} {}",
                t.name,
                t.partitions,
                t.replication_factor,
                t.configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Self::AddPartitions { topic, from, to } => {
                write!(f, "partitions  {topic} {from} -> {to}")
            }
            Self::AlterConfigs { topic, drift, .. } => write!(
                f,
                "configs     {topic} {}",
                drift
                    .iter()
                    .map(|(k, (old, new))| format!(
                        "{k}: {} -> {new}",
                        old.as_deref().unwrap_or("(unset)")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What `apply` found and would do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Changes to make.
    pub changes: Vec<Change>,
    /// Differences that `apply` will not fix (fewer declared partitions than present,
    /// another replication factor): reported for an operator.
    pub warnings: Vec<String>,
    /// Topics that already match.
    pub unchanged: Vec<String>,
}

/// Connects an admin client.
///
/// # Errors
/// When librdkafka rejects the configuration.
pub fn admin(kafka: &si_runtime::KafkaArgs) -> anyhow::Result<Arc<Admin>> {
    let mut config = si_runtime::kafka::client_config(kafka, "sictl");
    config.set_log_level(RDKafkaLogLevel::Warning);
    Ok(Arc::new(config.create()?))
}

struct Existing {
    partitions: i32,
    replication: i32,
}

async fn existing_topics(
    admin: &Arc<Admin>,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, Existing>> {
    let admin = Arc::clone(admin);
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, timeout)
            .context("fetching cluster metadata")?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let replication = t.partitions().first().map_or(0, |p| p.replicas().len());
                (
                    t.name().to_owned(),
                    Existing {
                        partitions: i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                        replication: i32::try_from(replication).unwrap_or(i32::MAX),
                    },
                )
            })
            .collect())
    })
    .await?
}

/// The topic's configs that were set on it explicitly (not broker defaults).
async fn topic_configs(
    admin: &Admin,
    topic: &str,
) -> anyhow::Result<(HashMap<String, String>, HashMap<String, String>)> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .context("describing topic configs")?;
    let resource = results
        .into_iter()
        .next()
        .context("no config answer")?
        .map_err(|e| anyhow::anyhow!("describing {topic}: {e}"))?;
    let mut effective = HashMap::new();
    let mut explicit = HashMap::new();
    for entry in resource.entries {
        if let Some(value) = entry.value {
            if matches!(entry.source, rdkafka::admin::ConfigSource::DynamicTopic) {
                explicit.insert(entry.name.clone(), value.clone());
            }
            effective.insert(entry.name, value);
        }
    }
    Ok((effective, explicit))
}

/// Compares the declared topics with the cluster.
///
/// # Errors
/// When the cluster cannot be asked.
pub async fn plan(
    admin: &Arc<Admin>,
    topics: &[ResolvedTopic],
    timeout: Duration,
) -> anyhow::Result<Plan> {
    let existing = existing_topics(admin, timeout).await?;
    let mut plan = Plan::default();
    for topic in topics {
        let Some(current) = existing.get(&topic.name) else {
            plan.changes.push(Change::Create(topic.clone()));
            continue;
        };
        let mut changed = false;
        if current.partitions < topic.partitions {
            plan.changes.push(Change::AddPartitions {
                topic: topic.name.clone(),
                from: current.partitions,
                to: topic.partitions,
            });
            changed = true;
        } else if current.partitions > topic.partitions {
            plan.warnings.push(format!(
                "{} has {} partitions, {} are declared (topics.yaml, SI_MAX_PARTITIONS): partitions are never removed",
                topic.name, current.partitions, topic.partitions
            ));
        }
        if current.replication != topic.replication_factor {
            plan.warnings.push(format!(
                "{} has replication factor {}, topics.yaml declares {}: change it with a partition reassignment",
                topic.name, current.replication, topic.replication_factor
            ));
        }
        let (effective, explicit) = topic_configs(admin, &topic.name).await?;
        let drift: BTreeMap<_, _> = topic
            .configs
            .iter()
            .filter(|(key, value)| effective.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), (effective.get(key).cloned(), value.clone())))
            .collect();
        if !drift.is_empty() {
            let mut set: BTreeMap<String, String> = explicit.into_iter().collect();
            set.extend(topic.configs.clone());
            plan.changes.push(Change::AlterConfigs {
                topic: topic.name.clone(),
                drift,
                set,
            });
            changed = true;
        }
        if !changed {
            plan.unchanged.push(topic.name.clone());
        }
    }
    Ok(plan)
}

fn check_results<T>(
    what: &str,
    results: Vec<Result<T, (T, RDKafkaErrorCode)>>,
    tolerate: RDKafkaErrorCode,
) -> anyhow::Result<()>
where
    T: fmt::Display,
{
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .filter(|(_, code)| *code != tolerate)
        .map(|(name, code)| format!("{name}: {code}"))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{what} failed: {}", failures.join("; "))
    }
}

/// Makes the changes of a plan, and returns once the cluster shows them: topic
/// creation and partition changes reach a broker's metadata shortly after the
/// controller accepted them, and a caller (a second `apply`, a producer) must not
/// see the old state.
///
/// # Errors
/// When the cluster refuses a change, or does not show it within `timeout`.
pub async fn apply(admin: &Arc<Admin>, plan: &Plan, timeout: Duration) -> anyhow::Result<()> {
    apply_changes(admin, plan).await?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let pending = not_yet_visible(admin, plan).await?;
        if pending.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "applied, but the cluster does not show it yet after {timeout:?}: {}",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The changes of `plan` the cluster's metadata and configs do not show yet.
async fn not_yet_visible(admin: &Arc<Admin>, plan: &Plan) -> anyhow::Result<Vec<String>> {
    let existing = existing_topics(admin, Duration::from_secs(10)).await?;
    let mut pending = Vec::new();
    for change in &plan.changes {
        match change {
            Change::Create(t)
                if existing
                    .get(&t.name)
                    .is_none_or(|e| e.partitions < t.partitions) =>
            {
                pending.push(t.name.clone());
            }
            Change::AddPartitions { topic, to, .. }
                if existing.get(topic).is_none_or(|e| e.partitions < *to) =>
            {
                pending.push(topic.clone());
            }
            Change::AlterConfigs { topic, drift, .. } => {
                let (effective, _) = topic_configs(admin, topic).await?;
                if drift.iter().any(|(k, (_, v))| effective.get(k) != Some(v)) {
                    pending.push(topic.clone());
                }
            }
            _ => {}
        }
    }
    Ok(pending)
}

async fn apply_changes(admin: &Admin, plan: &Plan) -> anyhow::Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let creates: Vec<NewTopic<'_>> = plan
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::Create(t) => Some(t.configs.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                ),
                |new, (k, v)| new.set(k, v),
            )),
            _ => None,
        })
        .collect();
    if !creates.is_empty() {
        let results = admin.create_topics(&creates, &options).await?;
        // Another instance may have created it in between: that is the wanted state.
        check_results(
            "creating topics",
            results,
            RDKafkaErrorCode::TopicAlreadyExists,
        )?;
    }
    let partitions: Vec<NewPartitions<'_>> = plan
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::AddPartitions { topic, to, .. } => {
                Some(NewPartitions::new(topic, usize::try_from(*to).unwrap_or(1)))
            }
            _ => None,
        })
        .collect();
    if !partitions.is_empty() {
        let results = admin.create_partitions(&partitions, &options).await?;
        check_results("adding partitions", results, RDKafkaErrorCode::NoError)?;
    }
    let alters: Vec<AlterConfig<'_>> = plan
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::AlterConfigs { topic, set, .. } => Some(set.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(topic)),
                |alter, (k, v)| alter.set(k, v),
            )),
            _ => None,
        })
        .collect();
    if !alters.is_empty() {
        let results = admin.alter_configs(&alters, &options).await?;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .map(|(resource, code)| format!("{resource:?}: {code}"))
            .collect();
        if !failures.is_empty() {
            bail!("altering configs failed: {}", failures.join("; "));
        }
    }
    Ok(())
}
