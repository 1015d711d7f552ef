//! `si_consumer_lag` against the real broker, on an input written in
//! transactions as every upstream stage writes: it shows the records a
//! stage has yet to read while it reads them, and reaches zero once it has
//! read them all (the commit marker after the last record is not lag). The
//! group's committed offset then reaches the end too (the stage commits its
//! position past the marker), and the next instance reads nothing again,
//! and commits its position past an aborted transaction it reads nothing of.
//!
//! The statistics that carry the lag come every 10 s, so this takes about
//! 40 s.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test consumer_lag -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Stage;
use si_runtime::stream::StreamArgs;
use si_schemas::topics;
use si_testkit::TestEnv;

/// Records in the upstream transaction, and how long the stage takes over
/// each: together longer than the statistics interval, so that a report
/// comes while records wait.
const RECORDS: usize = 30;
const PER_RECORD: Duration = Duration::from_millis(500);

/// The stage under test, as pod `test` (the second instance is that pod
/// restarted); its batches, which write nothing, commit once open 100 ms.
fn start(env: &TestEnv) -> Stage {
    let args = StreamArgs {
        commit_interval: Duration::from_millis(100),
        transaction_timeout: Duration::from_secs(30),
        ..StreamArgs::default()
    };
    Stage::start(
        env,
        "test",
        args,
        common::spec("lag-test"),
        common::WritesNothing(PER_RECORD),
    )
}

/// The exported `si_consumer_lag` series of the commands topic: partition
/// and value.
fn lag(stage: &Stage) -> Vec<(String, f64)> {
    stage
        .metrics
        .registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "si_consumer_lag")
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "topic" && l.value() == topics::COMMANDS)
        })
        .map(|m| {
            let partition = m
                .get_label()
                .iter()
                .find(|l| l.name() == "partition")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            (partition, m.get_gauge().get_value())
        })
        .collect()
}

/// Waits until `partition`'s exported lag satisfies `wanted`; returns it.
async fn lag_until(
    stage: &Stage,
    partition: &str,
    wanted: impl Fn(f64) -> bool,
    within: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + within;
    loop {
        let lag = lag(stage);
        if let Some((_, value)) = lag.iter().find(|(p, v)| p == partition && wanted(*v)) {
            return Ok(*value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("partition {partition}'s lag not as wanted within {within:?}: {lag:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
/// Writes `RECORDS` commands of one conversation in one transaction;
/// returns the partition they went to.
fn produce_in_a_transaction(env: &TestEnv, key: &str) -> anyhow::Result<String> {
    common::produce_in_a_transaction(env, key, RECORDS)?;
    // Where the key went: read back from what the broker holds.
    let ends = si_testkit::throughput::end_offsets(env, topics::COMMANDS)?;
    let partition = ends
        .iter()
        .position(|end| *end > 0)
        .ok_or_else(|| anyhow::anyhow!("no partition holds the records: {ends:?}"))?;
    Ok(partition.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_what_waits_and_not_the_commit_marker() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let partition = produce_in_a_transaction(&env, "conv-lag")?;

    // While the records are read, slowly: some wait.
    let a = start(&env);
    let waiting = lag_until(&a, &partition, |lag| lag > 0.0, Duration::from_secs(40)).await?;
    assert!(
        waiting <= (RECORDS + 1) as f64,
        "more lag than the records and their marker: {waiting}"
    );
    // All read: none left, though the last offset read is a record and the
    // partition ends in its transaction's marker.
    lag_until(&a, &partition, |lag| lag == 0.0, Duration::from_secs(60)).await?;
    // Soon after, the group's committed offset is the end too: the stage
    // committed its position past the marker.
    common::wait_committed_to_the_end(&env, "si-lag-test").await?;
    a.stop().await?;

    // An upstream aborts a transaction (as a restarted stage's fences do):
    // the partition ends in records no reader sees and an abort marker.
    common::produce_aborted(&env, "conv-lag", 3)?;
    // The next instance has nothing to read, and commits the end, though it
    // committed nothing before on that partition.
    let b = start(&env);
    lag_until(&b, &partition, |lag| lag == 0.0, Duration::from_secs(40)).await?;
    common::wait_committed_to_the_end(&env, "si-lag-test").await?;
    // Nothing was read again: the previous instance committed everything.
    assert_eq!(
        b.metrics
            .records_in
            .with_label_values(&[topics::COMMANDS])
            .get(),
        0
    );
    b.stop().await?;
    Ok(())
}
