//! `sictl topics apply` against the real local broker.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use si_runtime::KafkaArgs;

/// The repository root (where topics.yaml is).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kafka(prefix: &str) -> KafkaArgs {
    KafkaArgs {
        bootstrap_servers: std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "localhost:9092".into()),
        topic_prefix: prefix.to_owned(),
        pod_name: "test".into(),
    }
}

fn prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Runs the real binary, as an operator would.
fn sictl(prefix: &str, topics_file: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_sictl"))
        .env("SI_TOPIC_PREFIX", prefix)
        .env("SI_REPLICATION_FACTOR", "1")
        .arg("--topics-file")
        .arg(topics_file)
        .args(args)
        .output()
        .context("running sictl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[tokio::test]
async fn apply_twice_then_raise_partitions() -> anyhow::Result<()> {
    let prefix = prefix();
    let file = repo_root().join("topics.yaml");
    let declared = std::fs::read_to_string(&file)?;
    let topic_count = declared.matches("\n  - name: ").count();
    assert!(topic_count >= 15, "topics.yaml lists {topic_count} topics");

    let (ok, first) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok, "{first}");
    assert_eq!(first.matches("create ").count(), topic_count, "{first}");

    let (ok, second) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok, "{second}");
    assert!(
        second.contains("no changes"),
        "second run must change nothing:\n{second}"
    );

    // Raise twilio.webhooks.v1 from its declared count by four.
    let dir = tempdir()?;
    let raised_file = dir.join("topics.yaml");
    let marker = "- name: twilio.webhooks.v1\n    partitions: ";
    let at = declared
        .find(marker)
        .context("twilio.webhooks.v1 in topics.yaml")?
        + marker.len();
    let digits: String = declared[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let declared_partitions: i32 = digits.parse()?;
    let raised = format!(
        "{}{}{}",
        &declared[..at],
        declared_partitions + 4,
        &declared[at + digits.len()..]
    );
    std::fs::write(&raised_file, raised)?;

    let (ok, dry) = sictl(&prefix, &raised_file, &["topics", "apply", "--dry-run"])?;
    assert!(ok, "{dry}");
    let expected = format!(
        "partitions  {prefix}twilio.webhooks.v1 {declared_partitions} -> {}",
        declared_partitions + 4
    );
    assert!(dry.contains(&expected), "{dry}");
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        partition_count(&prefix, "twilio.webhooks.v1").await?,
        declared_partitions
    );

    let (ok, applied) = sictl(&prefix, &raised_file, &["topics", "apply"])?;
    assert!(ok, "{applied}");
    wait_for(|| async {
        Ok(partition_count(&prefix, "twilio.webhooks.v1").await? == declared_partitions + 4)
    })
    .await?;

    let (ok, again) = sictl(&prefix, &raised_file, &["topics", "apply"])?;
    assert!(ok && again.contains("no changes"), "{again}");

    // Going back to the smaller count is reported, never applied.
    let (ok, back) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok, "{back}");
    assert!(back.contains("never removed"), "{back}");
    assert_eq!(
        partition_count(&prefix, "twilio.webhooks.v1").await?,
        declared_partitions + 4
    );
    Ok(())
}

#[tokio::test]
async fn a_partition_cap_is_kept_by_every_apply_that_gives_it() -> anyhow::Result<()> {
    let prefix = prefix();
    let file = repo_root().join("topics.yaml");
    let (ok, out) = sictl(
        &prefix,
        &file,
        &["topics", "apply", "--max-partitions", "2"],
    )?;
    assert!(ok, "{out}");
    // Co-partitioned inputs and changelogs alike, all under the cap.
    for topic in [
        "twilio.webhooks.v1",
        "si.conversation.events.v1",
        "si.normalize.state.v1",
    ] {
        assert_eq!(partition_count(&prefix, topic).await?, 2, "{topic}");
    }
    let (ok, again) = sictl(
        &prefix,
        &file,
        &["topics", "apply", "--max-partitions", "2"],
    )?;
    assert!(ok && again.contains("no changes"), "{again}");
    // Without the cap, the plan would add partitions (moving keys away from
    // their state): a dry run shows it, and nothing is changed.
    let (ok, dry) = sictl(&prefix, &file, &["topics", "apply", "--dry-run"])?;
    assert!(ok, "{dry}");
    assert!(
        dry.contains(&format!("partitions  {prefix}twilio.webhooks.v1 2 -> ")),
        "{dry}"
    );
    let (ok, bad) = sictl(
        &prefix,
        &file,
        &["topics", "apply", "--max-partitions", "0"],
    )?;
    assert!(!ok, "a cap of 0 must be refused:\n{bad}");
    assert!(bad.contains("at least 1"), "{bad}");
    Ok(())
}

#[tokio::test]
async fn drifted_configs_are_corrected_and_other_explicit_configs_kept() -> anyhow::Result<()> {
    let prefix = prefix();
    let file = repo_root().join("topics.yaml");
    let (ok, out) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok, "{out}");

    let topic = format!("{prefix}si.inbound.v1");
    let admin = sictl::topics::admin(&kafka(&prefix))?;
    // A new topic's configs reach describe shortly after creation.
    wait_for(|| async {
        Ok(describe(&admin, &topic)
            .await
            .is_ok_and(|c| c.contains_key("retention.ms")))
    })
    .await?;
    let declared = describe(&admin, &topic).await?;
    let declared_retention = declared
        .get("retention.ms")
        .cloned()
        .context("retention.ms")?;
    // Someone changes retention by hand and adds an undeclared setting.
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("retention.ms", "1000")
        .set("max.message.bytes", "200000")
        .set("min.insync.replicas", "1")
        .set(
            "cleanup.policy",
            declared
                .get("cleanup.policy")
                .map_or("delete", String::as_str),
        )
        .set(
            "compression.type",
            declared
                .get("compression.type")
                .map_or("producer", String::as_str),
        );
    admin.alter_configs([&alter], &AdminOptions::new()).await?;
    wait_for(|| async {
        Ok(describe(&admin, &topic)
            .await?
            .get("retention.ms")
            .map(String::as_str)
            == Some("1000"))
    })
    .await?;

    let (ok, out) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "configs     {topic} retention.ms: 1000 -> {declared_retention}"
        )),
        "{out}"
    );
    wait_for(|| async {
        let now = describe(&admin, &topic).await?;
        Ok(now.get("retention.ms") == Some(&declared_retention)
            && now.get("max.message.bytes").map(String::as_str) == Some("200000"))
    })
    .await?;
    let (ok, out) = sictl(&prefix, &file, &["topics", "apply"])?;
    assert!(ok && out.contains("no changes"), "{out}");
    Ok(())
}

async fn describe(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await?;
    let resource = results
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(resource
        .entries
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect())
}

async fn partition_count(prefix: &str, name: &str) -> anyhow::Result<i32> {
    let topic = format!("{prefix}{name}");
    let admin = sictl::topics::admin(&kafka(prefix))?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(0)))
    })
    .await?
}

async fn wait_for<F, Fut>(mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    si_testkit::wait_for("the condition", Duration::from_secs(20), || {
        let check = condition();
        async move { Ok(check.await?.then_some(())) }
    })
    .await
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sictl-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
