//! State across an eager rebalance, against the real broker: a stage with
//! two co-partitioned inputs (so the `range` assignor, which revokes every
//! partition on each rebalance) keeps the stores of the partitions that stay
//! with it, without reading their changelog again, while the joining
//! instance restores the partitions that moved; counts kept in state go on
//! from where they were on both sides.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test eager_rebalance -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Stage;
use rdkafka::Message;
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::stream::{StreamArgs, StreamSpec};
use si_schemas::records::{ArchivalRequest, Command, LifecycleState};
use si_schemas::topics;
use si_testkit::{TestEnv, wait_for};

const KEYS: usize = 24;

/// Counts the commands of each key in state (`first_sequence`) and says
/// `<key>-<count>` on `si.archival.v1`.
struct Counter;

impl Processor for Counter {
    type Input = Command;
    type State = LifecycleState;

    fn process(
        &mut self,
        _ctx: &RecordContext<'_>,
        input: Command,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let key = input.conversation_id;
        let count = state.get(&key).and_then(|s| s.first_sequence).unwrap_or(0) + 1;
        state.put(key.clone(), common::state_entry(&key, Some(count)));
        let record = common::archival(&format!("{key}-{count}"), &key);
        Ok(vec![Output::new(topics::ARCHIVAL, key, record)])
    }
}

fn start(env: &TestEnv, pod: &str) -> Stage {
    let mut args = StreamArgs {
        commit_interval: Duration::from_millis(20),
        transaction_timeout: Duration::from_secs(10),
        ..StreamArgs::default()
    };
    args.group.session_timeout = Duration::from_secs(6);
    let spec = StreamSpec {
        // Two co-partitioned inputs: the eager `range` assignor. Nothing is
        // written to the second one.
        inputs: vec![topics::COMMANDS, topics::DELIVERY],
        ..common::spec("eager-test")
    };
    Stage::start(env, pod, args, spec, Counter)
}

/// Waits until `si.archival.v1` (committed) holds every one of `expected`.
async fn said(env: &TestEnv, expected: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let consumer = env.consumer(topics::ARCHIVAL).await?;
    let until = Instant::now() + Duration::from_secs(90);
    let mut all = Vec::new();
    let mut missing = expected.clone();
    while !missing.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            anyhow::bail!("not said within 90 s: {missing:?}");
        };
        let message = message?;
        let record: ArchivalRequest = env.codec.decode(message.payload().unwrap()).await?;
        missing.remove(&record.request_id);
        all.push(record.request_id);
    }
    Ok(all)
}

fn round(n: usize) -> BTreeSet<String> {
    (0..KEYS).map(|k| format!("key-{k}-{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_rebalance_restores_only_the_partitions_that_moved() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let a = start(&env, "pod-a");
    for k in 0..KEYS {
        let key = format!("key-{k}");
        env.produce(topics::COMMANDS, &key, &common::command("c1", &key))
            .await?;
    }
    said(&env, &round(1)).await?;

    // B joins: everything is revoked from A and half of it given back.
    let b = start(&env, "pod-b");
    wait_for("B restored its share", Duration::from_secs(60), || {
        let (a, b) = (&a.metrics, &b.metrics);
        async move {
            let split = a.assigned_partitions.get() > 0 && b.assigned_partitions.get() > 0;
            Ok((split && b.restore_seconds.get_sample_count() > 0).then_some(()))
        }
    })
    .await?;
    for k in 0..KEYS {
        let key = format!("key-{k}");
        env.produce(topics::COMMANDS, &key, &common::command("c2", &key))
            .await?;
    }
    let all = said(&env, &round(2)).await?;
    assert_eq!(
        all.len(),
        2 * KEYS,
        "each key counted once per command, on both instances: {all:?}"
    );
    let b_restored = b.metrics.restored_records.get();
    let a_restores = a.metrics.restore_seconds.get_sample_count();
    let a_restored = a.metrics.restored_records.get();
    b.stop().await?;
    a.stop().await?;
    assert!(
        b_restored > 0,
        "the joining instance restored the partitions it took over"
    );
    assert_eq!(
        (a_restores, a_restored),
        (0, 0),
        "A read its changelog again for partitions it kept"
    );
    Ok(())
}
