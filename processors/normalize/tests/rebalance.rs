//! Against the real broker: two `si-normalize` instances share the webhook
//! partitions. A second instance joining moves partitions (their state is
//! restored from the changelog on the new owner), the first leaving moves them
//! back; throughout, every distinct Twilio event yields exactly one event,
//! and retries of events processed by the other instance are still dropped.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use si_schemas::records::ConversationEvent;
use si_schemas::topics;
use si_testkit::TestEnv;

/// Waits until `count` lines of a child's log satisfy `matches`.
async fn wait_log(
    path: &std::path::Path,
    count: usize,
    matches: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().filter(|l| matches(l)).count() >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{} never logged the expected line {count} times",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_progress(env: &TestEnv, beyond: i64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (done, end) = progress(env)?;
        if done > beyond || done == end {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "no progress within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_instances_without_loss_or_duplicates() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let identities: Vec<_> = identities().into_iter().map(|i| (i.key(), i)).collect();
    produce_all(&env, topics::IDENTITY, &identities).await?;
    let (records, unique) = workload(1_500, 11);
    let thirds: Vec<_> = records.chunks(500).collect();

    produce_all(&env, topics::WEBHOOKS, thirds[0]).await?;
    let mut a = spawn_normalize(&env, "pod-a", "rebalance-a")?;
    wait_progress(&env, 0).await?;

    // A second instance joins while A works: partitions move to B.
    produce_all(&env, topics::WEBHOOKS, thirds[1]).await?;
    let mut b = spawn_normalize(&env, "pod-b", "rebalance-b")?;
    // B owns partitions once it logs a non-empty restored assignment.
    wait_log(&log_path("rebalance-b"), 1, |line| {
        line.contains("state restored") && !line.contains("partitions=[]")
    })
    .await?;
    wait_log(&log_path("rebalance-a"), 1, |line| {
        line.contains("partitions revoked")
    })
    .await?;
    let (before, _) = progress(&env)?;
    wait_progress(&env, before).await?;

    // A leaves gracefully: its partitions move to B, which restores their state.
    produce_all(&env, topics::WEBHOOKS, thirds[2]).await?;
    let status = terminate(&mut a, Duration::from_secs(30))?;
    assert!(status.success(), "A exited with {status}");
    // A's partitions move to B, which restores their state from the changelog.
    wait_log(&log_path("rebalance-b"), 2, |line| {
        line.contains("state restored") && !line.contains("partitions=[]")
    })
    .await?;
    wait_all_committed(&env, Duration::from_secs(120)).await?;
    let status = terminate(&mut b, Duration::from_secs(30))?;
    assert!(status.success(), "B exited with {status}");

    let events =
        by_event_id(read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?)?;
    assert_eq!(events.len(), unique, "one event per distinct Twilio event");
    Ok(())
}
