//! `Transactions::end_pending_offsets` against the real broker: the
//! transaction it aborts leaves the group's committed offsets as they were
//! and nothing of it pending, so a read-committed consumer's stable offset
//! fetch answers at once with what was committed before.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test pending_offsets
//! ```

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use si_runtime::txn::Transactions;
use si_schemas::topics;
use si_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_pending_offsets_commits_nothing_and_leaves_nothing_pending() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let kafka = env.kafka.clone();
    let topic = env.topic(topics::COMMANDS);
    let group = format!("{}si-sweep-test", kafka.topic_prefix);
    let committed = tokio::task::spawn_blocking({
        let (kafka, topic, group) = (kafka.clone(), topic.clone(), group.clone());
        move || -> anyhow::Result<Vec<(i32, Offset)>> {
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

            txns.end_pending_offsets(&kafka, "sweep-test", &group, &topic)
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
        }
    })
    .await??;
    assert_eq!(
        committed,
        vec![(0, Offset::Offset(7)), (1, Offset::Offset(7))],
        "the sweep changed or left pending the committed offsets"
    );
    Ok(())
}
