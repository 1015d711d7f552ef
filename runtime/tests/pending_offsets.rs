//! `Transactions::end_pending` against the real broker: the transaction it
//! aborts leaves the group's committed offsets as they were and nothing of it
//! pending, so a read-committed consumer's stable offset fetch answers at once
//! with what was committed before; and it puts an aborted fence on every
//! partition of the stage's outputs (what ends a record an earlier instance
//! left there without a transaction the coordinator knows of).
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test pending_offsets
//! ```

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::Context;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use si_runtime::config::KafkaArgs;
use si_runtime::txn::Transactions;
use si_schemas::records::ArchivalRequest;
use si_schemas::topics;
use si_testkit::TestEnv;

mod common;

/// The (low, high) watermarks of every partition of `topic`, in order.
fn watermarks<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let timeout = Duration::from_secs(5);
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .context("no metadata")?
        .partitions();
    partitions
        .iter()
        .map(|p| Ok(client.fetch_watermarks(topic, p.id(), timeout)?))
        .collect()
}

/// Runs `body` on a blocking thread (the transactional calls block) with
/// the test's broker settings and a group named `group` in its prefix.
async fn on_blocking_thread<T: Send + 'static>(
    env: &TestEnv,
    group: &str,
    body: impl FnOnce(KafkaArgs, String) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let kafka = env.kafka.clone();
    let group = format!("{}{group}", kafka.topic_prefix);
    tokio::task::spawn_blocking(move || body(kafka, group)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_pending_offsets_commits_nothing_and_leaves_nothing_pending() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let topic = env.topic(topics::COMMANDS);
    let committed: Vec<(i32, Offset)> =
        on_blocking_thread(&env, "si-sweep-test", move |kafka, group| {
            let txns = Transactions::init(&kafka, "sweep-test", Duration::from_secs(30))
                .map_err(anyhow::Error::msg)?;
            // What was committed before: offset 7 of partitions 0 and 1.
            let member: BaseConsumer =
                si_runtime::kafka::consumer_config(&kafka, "sweep-test", &group).create()?;
            let metadata = member.group_metadata().unwrap();
            let mut offsets = TopicPartitionList::new();
            for partition in [0, 1] {
                offsets.add_partition_offset(&topic, partition, Offset::Offset(7))?;
            }
            txns.begin()?;
            txns.commit(&offsets, Some(&metadata))?;

            txns.end_pending(&kafka, "sweep-test", &group, Some(&topic), &[])
                .map_err(anyhow::Error::msg)?;

            // A read-committed consumer asks with require_stable: an offset
            // still pending would be an error here, not a late answer.
            let reader: BaseConsumer =
                si_runtime::kafka::consumer_config(&kafka, "sweep-test", &group).create()?;
            let mut asked = TopicPartitionList::new();
            for partition in [0, 1] {
                asked.add_partition(&topic, partition);
            }
            let answer = reader.committed_offsets(asked, Duration::from_secs(10))?;
            answer
                .elements()
                .iter()
                .map(|e| {
                    e.error()?;
                    Ok((e.partition(), e.offset()))
                })
                .collect()
        })
        .await?;
    assert_eq!(
        committed,
        vec![(0, Offset::Offset(7)), (1, Offset::Offset(7))],
        "the sweep changed or left pending the committed offsets"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_partition_gets_an_aborted_fence() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let output = env.topic(topics::ARCHIVAL);
    let watermarks: Vec<(i64, i64)> =
        on_blocking_thread(&env, "si-fence-test", move |kafka, group| {
            let txns = Transactions::init_for_group(
                &kafka,
                "fence-test",
                Duration::from_secs(30),
                &group,
                None,
                std::slice::from_ref(&output),
            )
            .map_err(anyhow::Error::msg)?;
            // The coordinator writes the markers after it answered the abort.
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let marks = watermarks(txns.client(), &output)?;
                if marks.iter().all(|w| *w == (0, 4)) || std::time::Instant::now() > deadline {
                    return Ok(marks);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await?;
    assert!(!watermarks.is_empty());
    // On each partition, from each of the instance's two producers: the
    // fence, then the abort marker that ended it.
    assert!(
        watermarks.iter().all(|w| *w == (0, 4)),
        "two fences and their abort markers on every partition: {watermarks:?}"
    );
    // And nothing a read-committed reader sees.
    let committed = env.read_all::<ArchivalRequest>(topics::ARCHIVAL).await?;
    assert!(committed.is_empty(), "fences visible: {committed:?}");
    Ok(())
}

/// A stage whose fences cannot be written does not start: an earlier
/// instance's leftovers on those partitions would stay. Its start fails
/// within the calls' timeout, and the next instance tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_that_cannot_be_written_fails_the_start() -> anyhow::Result<()> {
    let broker = si_testkit::broker::PrivateBroker::start("fence")?;
    let env = TestEnv::start_on(&broker.bootstrap()).await?;
    let kafka = env.kafka.clone();
    let output = env.topic(topics::ARCHIVAL);
    let group = format!("{}si-fence-test", kafka.topic_prefix);
    let txns = tokio::task::spawn_blocking({
        let kafka = kafka.clone();
        move || Transactions::init(&kafka, "fence-test", Duration::from_secs(3))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    broker.down()?;
    let started = std::time::Instant::now();
    let ended = tokio::task::spawn_blocking(move || {
        txns.end_pending(
            &kafka,
            "fence-test",
            &group,
            None,
            std::slice::from_ref(&output),
        )
    })
    .await?;
    let error = ended.expect_err("fences written to a stopped broker");
    assert!(
        error.contains("fence") && error.contains(&env.topic(topics::ARCHIVAL)),
        "the error names the fence and its topic: {error}"
    );
    // One call's timeout (3 s) to find that out, with room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// What the chaos test's post-mortem reads: a read-uncommitted reader sees
/// the record of an aborted transaction, a read-committed one only the
/// committed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_record_is_read_uncommitted_only() -> anyhow::Result<()> {
    use rdkafka::producer::BaseRecord;

    let env = TestEnv::start().await?;
    let output = env.topic(topics::ARCHIVAL);
    let record = |id: &str| common::archival(id, "c");
    let aborted = env.codec.encode(&output, &record("aborted")).await?;
    let committed = env.codec.encode(&output, &record("committed")).await?;
    on_blocking_thread(&env, "si-uncommitted-test", move |kafka: KafkaArgs, _| {
        let txns = Transactions::init(&kafka, "uncommitted-test", Duration::from_secs(30))
            .map_err(anyhow::Error::msg)?;
        for (payload, commit) in [(aborted, false), (committed, true)] {
            txns.begin()?;
            txns.send(BaseRecord::to(&output).key("c").payload(&payload))?;
            if commit {
                txns.commit(&TopicPartitionList::new(), None)?;
            } else {
                // Written to the log before the abort, as a stage's records
                // are: the high watermark, not the last stable offset a
                // read-committed client is told, counts it.
                let client: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &kafka.bootstrap_servers)
                    .set("isolation.level", "read_uncommitted")
                    .create()?;
                // The topic is new: its metadata and leaders may still be
                // settling, so an error is "not yet", until the deadline.
                let written = || -> anyhow::Result<i64> {
                    Ok(watermarks(client.client(), &output)?
                        .iter()
                        .map(|(_, high)| high)
                        .sum())
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match written() {
                        Ok(n) if n > 0 => break,
                        outcome => anyhow::ensure!(
                            std::time::Instant::now() < deadline,
                            "the record was not written within 30 s: {outcome:?}"
                        ),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                txns.abort()?;
            }
        }
        Ok(())
    })
    .await?;
    let ids = |records: Vec<si_testkit::Located<ArchivalRequest>>| -> Vec<String> {
        records.into_iter().map(|r| r.value.request_id).collect()
    };
    assert_eq!(
        ids(env.read_all_located(topics::ARCHIVAL).await?),
        ["committed"]
    );
    assert_eq!(
        ids(env.read_uncommitted_located(topics::ARCHIVAL).await?),
        ["aborted", "committed"]
    );
    Ok(())
}
