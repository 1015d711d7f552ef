//! Exactly-once against the real broker: the `si-normalize` binary is killed
//! with SIGKILL at random moments while it works through a webhook backlog and
//! restarted each time; the committed output holds exactly one event per
//! distinct Twilio event, identical to an uninterrupted run.
//!
//! `NORMALIZE_KILL_TEST_RECORDS` sets the number of webhook records (default
//! 2000). The full run of the issue:
//!
//! ```sh
//! NORMALIZE_KILL_TEST_RECORDS=10000 cargo test -p si-normalize --test exactly_once -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::*;
use rand::{Rng, SeedableRng};
use si_schemas::records::{ConversationEvent, ParticipantBinding};
use si_schemas::topics;
use si_testkit::TestEnv;

const KILLS: usize = 6;

async fn uninterrupted(
    records: &[(String, si_schemas::records::TwilioWebhook)],
) -> anyhow::Result<(
    Vec<(String, Option<ConversationEvent>)>,
    BTreeMap<String, Option<ParticipantBinding>>,
)> {
    let env = TestEnv::start().await?;
    let identities: Vec<_> = identities().into_iter().map(|i| (i.key(), i)).collect();
    produce_all(&env, topics::IDENTITY, &identities).await?;
    produce_all(&env, topics::WEBHOOKS, records).await?;
    let mut child = spawn_normalize(&env, "reference", "reference")?;
    wait_all_committed(&env, Duration::from_secs(120)).await?;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    anyhow::ensure!(status.success(), "reference run exited with {status}");
    let events = read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?;
    let directory = read_all::<ParticipantBinding>(&env, topics::PARTICIPANTS)
        .await?
        .into_iter()
        .collect();
    Ok((events, directory))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_neither_loses_nor_duplicates() -> anyhow::Result<()> {
    let n: usize = std::env::var("NORMALIZE_KILL_TEST_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed = rand::random::<u64>();
    eprintln!("[kill test] {n} records, seed {seed}");
    let (records, unique) = workload(n, seed);

    let env = TestEnv::start().await?;
    let identities: Vec<_> = identities().into_iter().map(|i| (i.key(), i)).collect();
    produce_all(&env, topics::IDENTITY, &identities).await?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let chunks: Vec<_> = records.chunks(n.div_ceil(KILLS + 1)).collect();
    let started = Instant::now();
    let mut kills = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        produce_all(&env, topics::WEBHOOKS, chunk).await?;
        if i == chunks.len() - 1 {
            break;
        }
        // Kill once this instance has committed some work and a random bit more
        // time has passed, so the kill lands anywhere in a batch.
        let (before, _) = progress(&env)?;
        let mut child = spawn_normalize(&env, "kill-test", &format!("kill-{i}"))?;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (done, end) = progress(&env)?;
            if done > before || done == end {
                break;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("si-normalize exited by itself with {status} (see its log)");
            }
            anyhow::ensure!(
                Instant::now() < until,
                "no progress within 60 s of a restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        child.kill().context("SIGKILL")?;
        child.wait()?;
        kills += 1;
        let (done, end) = progress(&env)?;
        eprintln!("[kill test] SIGKILL {kills}: {done} of {end} input records committed");
    }
    assert!(kills >= 5, "only {kills} kills");

    let mut child = spawn_normalize(&env, "kill-test", "kill-final")?;
    wait_all_committed(&env, Duration::from_secs(120)).await?;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "graceful shutdown exited with {status}");
    eprintln!("[kill test] all committed after {:?}", started.elapsed());

    let events =
        by_event_id(read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?)?;
    let dedup_keys: HashSet<&str> = events.values().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(dedup_keys.len(), events.len(), "one event per dedup key");
    assert_eq!(
        events.len(),
        unique,
        "exactly one event per distinct Twilio event ({n} records, {unique} distinct)"
    );

    // Same content as an uninterrupted run of the same input.
    let (reference, reference_directory) = uninterrupted(&records).await?;
    let reference = by_event_id(reference)?;
    assert_eq!(reference.len(), unique);
    let mut differences = 0;
    for (id, expected) in &reference {
        match events.get(id) {
            Some(actual) if actual == expected => {}
            Some(actual) => {
                differences += 1;
                if differences < 3 {
                    eprintln!(
                        "differs:\n  killed:        {actual:?}\n  uninterrupted: {expected:?}"
                    );
                }
            }
            None => {
                differences += 1;
                eprintln!("missing after kills: {id} ({})", expected.dedup_key);
            }
        }
    }
    assert_eq!(differences, 0, "events differ from the uninterrupted run");

    let directory: BTreeMap<String, Option<ParticipantBinding>> =
        read_all::<ParticipantBinding>(&env, topics::PARTICIPANTS)
            .await?
            .into_iter()
            .collect();
    let differing: Vec<&String> = directory
        .keys()
        .chain(reference_directory.keys())
        .filter(|k| directory.get(*k) != reference_directory.get(*k))
        .take(3)
        .collect();
    for key in &differing {
        eprintln!(
            "directory entry differs:\n  killed:        {:?}\n  uninterrupted: {:?}",
            directory.get(*key),
            reference_directory.get(*key)
        );
    }
    assert!(
        differing.is_empty(),
        "the participant directory differs from the uninterrupted run"
    );
    assert!(!directory.is_empty());
    Ok(())
}
