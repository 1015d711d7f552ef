//! State timers against the real broker: a timer set by one runner instance
//! survives its shutdown, fires once in the next instance (restored from the
//! changelog), and does not fire again in a third. Also the batch linger:
//! records arriving within it share one transaction; and records that write
//! nothing anyone waits on (nothing at all, only state, or outputs the
//! processor does not call urgent) wait for the next one that does.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test timers -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Stage;
use rdkafka::Message;
use rdkafka::message::Headers;
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext, TimerContext};
use si_runtime::state::StateStore;
use si_runtime::stream::{StreamArgs, StreamSpec};
use si_schemas::records::{ArchivalRequest, Command, LifecycleState};
use si_schemas::topics;
use si_testkit::TestEnv;

const DELAY_MS: i64 = 8_000;

/// On a command `arm`: keeps an entry with a timer `DELAY_MS` ahead and says
/// `armed-<key>`; on `quiet…`: nothing; on `note…`: keeps an entry, says
/// nothing; on `status…`: says `status-<key>-<command id>`, which is not
/// urgent; on anything else: says `mark-<key>-<command id>`; on the timer:
/// says `fired-<key>`. Everything it says goes to `si.archival.v1`.
struct Alarm;

fn say(key: &str, what: String) -> Output {
    let record = common::archival(&what, key);
    Output::new(topics::ARCHIVAL, key.to_owned(), record)
}

impl Processor for Alarm {
    type Input = Command;
    type State = LifecycleState;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: Command,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let key = input.conversation_id.clone();
        match input.command_id.as_str() {
            "arm" => {
                state.put(key.clone(), common::state_entry(&key, None));
                assert!(state.set_timer(&key, ctx.timestamp_ms + DELAY_MS));
                Ok(vec![say(&key, format!("armed-{key}"))])
            }
            // Ignored: nothing written, no state touched.
            quiet if quiet.starts_with("quiet") => Ok(Vec::new()),
            // State only.
            note if note.starts_with("note") => {
                state.put(key.clone(), common::state_entry(&key, None));
                Ok(Vec::new())
            }
            status if status.starts_with("status") => {
                Ok(vec![say(&key, format!("status-{key}-{status}"))])
            }
            other => Ok(vec![say(&key, format!("mark-{key}-{other}"))]),
        }
    }

    fn urgent(&self, outputs: &[Output]) -> bool {
        outputs.iter().any(|output| {
            output
                .record::<ArchivalRequest>()
                .is_none_or(|said| !said.request_id.starts_with("status-"))
        })
    }

    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        assert!(
            ctx.now_ms >= ctx.due_at_ms,
            "a timer fires late, never early"
        );
        assert_eq!(state.timer(ctx.key), None, "removed before the call");
        Ok(vec![say(ctx.key, format!("fired-{}", ctx.key))])
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn start(env: &TestEnv) -> Stage {
    start_with(env, Duration::from_millis(20), Duration::ZERO)
}

fn start_with(env: &TestEnv, commit_interval: Duration, batch_linger: Duration) -> Stage {
    let args = StreamArgs {
        commit_interval,
        transaction_timeout: Duration::from_secs(30),
        timer_interval: Duration::from_millis(100),
        ..StreamArgs::default()
    };
    let spec = StreamSpec {
        batch_linger,
        ..common::spec("timer-test")
    };
    Stage::start(env, "test", args, spec, Alarm)
}

/// Every `request_id` on `si.archival.v1` (committed) up to and including `last`.
async fn said_until(env: &TestEnv, last: &str) -> anyhow::Result<Vec<String>> {
    Ok(said_with_traces_until(env, last)
        .await?
        .into_iter()
        .map(|(said, _)| said)
        .collect())
}

/// Like [`said_until`], with each record's `traceparent` header.
async fn said_with_traces_until(
    env: &TestEnv,
    last: &str,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let consumer = env.consumer(topics::ARCHIVAL).await?;
    let until = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            anyhow::bail!("{last} not seen within 60 s; seen: {said:?}");
        };
        let message = message?;
        let record: ArchivalRequest = env.codec.decode(message.payload().unwrap()).await?;
        let traceparent = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == si_runtime::trace::TRACEPARENT)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        said.push((record.request_id.clone(), traceparent));
        if record.request_id == last {
            return Ok(said);
        }
    }
}

/// The trace context of the command that arms the timer.
const ARM_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_survives_a_restart_and_fires_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let key = "conv-1";

    // Instance A arms the timer and stops before it is due.
    let a = start(&env);
    let armed_at = now_ms();
    env.produce_traced(
        topics::COMMANDS,
        key,
        &common::command("arm", key),
        ARM_TRACE,
    )
    .await?;
    let said = said_until(&env, &format!("armed-{key}")).await?;
    assert_eq!(said, vec![format!("armed-{key}")]);
    a.stop().await?;
    assert!(
        now_ms() < armed_at + DELAY_MS,
        "instance A ran past the timer's time: the test would not test a restart"
    );

    // Instance B restores the entry with its timer and fires it, once, in
    // the trace of the command that armed it (kept in the changelog).
    let b = start(&env);
    let traced = said_with_traces_until(&env, &format!("fired-{key}")).await?;
    assert_eq!(
        traced.last().and_then(|(_, t)| t.as_deref()),
        Some(ARM_TRACE),
        "the timer's output is not in the trace of the record that set it: {traced:?}"
    );
    let said: Vec<String> = traced.into_iter().map(|(s, _)| s).collect();
    assert!(now_ms() >= armed_at + DELAY_MS, "fired early");
    env.produce(topics::COMMANDS, key, &common::command("m1", key))
        .await?;
    let said_b = said_until(&env, &format!("mark-{key}-m1")).await?;
    b.stop().await?;
    assert_eq!(said.len() + 1, said_b.len(), "{said_b:?}");

    // Instance C restores the entry without the timer: nothing fires again.
    // (C checks timers in the loop iteration that restored the partition, so
    // a timer wrongly restored would fire before C handles m3.)
    let c = start(&env);
    env.produce(topics::COMMANDS, key, &common::command("m2", key))
        .await?;
    said_until(&env, &format!("mark-{key}-m2")).await?;
    env.produce(topics::COMMANDS, key, &common::command("m3", key))
        .await?;
    let all = said_until(&env, &format!("mark-{key}-m3")).await?;
    c.stop().await?;
    let fired = all.iter().filter(|s| s.starts_with("fired-")).count();
    assert_eq!(fired, 1, "fired {fired} times: {all:?}");
    assert_eq!(
        all,
        vec![
            format!("armed-{key}"),
            format!("fired-{key}"),
            format!("mark-{key}-m1"),
            format!("mark-{key}-m2"),
            format!("mark-{key}-m3"),
        ]
    );
    Ok(())
}

/// Five commands 30 ms apart, through a runner with `batch_linger` (and a
/// commit interval far above it): how many transactions carried them.
async fn transactions_for_five(batch_linger: Duration) -> anyhow::Result<u64> {
    let env = TestEnv::start().await?;
    let key = "conv-batch";
    let runner = start_with(&env, Duration::from_secs(2), batch_linger);
    // The runner is in its group once a first command went through.
    env.produce(topics::COMMANDS, key, &common::command("warm", key))
        .await?;
    said_until(&env, &format!("mark-{key}-warm")).await?;
    let before = runner.metrics.batch_records.get_sample_count();
    for i in 0..5 {
        env.produce(
            topics::COMMANDS,
            key,
            &common::command(&format!("b{i}"), key),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let said = said_until(&env, &format!("mark-{key}-b4")).await?;
    assert_eq!(said.len(), 6, "every command once: {said:?}");
    let transactions = runner.metrics.batch_records.get_sample_count() - before;
    runner.stop().await?;
    Ok(transactions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_within_the_batch_linger_share_one_transaction() -> anyhow::Result<()> {
    // With a 1 s linger the five (120 ms from first to last) are one batch.
    let lingering = transactions_for_five(Duration::from_secs(1)).await?;
    assert_eq!(
        lingering, 1,
        "five records within the linger: one transaction"
    );
    // Without one, a drained batch commits at once: several transactions.
    let eager = transactions_for_five(Duration::ZERO).await?;
    assert!(
        eager >= 2,
        "no linger, yet {eager} transaction(s) for records 30 ms apart"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_write_nothing_urgent_commit_with_the_next_that_does() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let key = "conv-quiet";
    // No linger: a drained batch that writes commits at once.
    let runner = start_with(&env, Duration::from_secs(2), Duration::ZERO);
    env.produce(topics::COMMANDS, key, &common::command("warm", key))
        .await?;
    said_until(&env, &format!("mark-{key}-warm")).await?;
    let before = runner.metrics.batch_records.get_sample_count();
    // An ignored command, a state-only one and one whose output is not
    // urgent, 30 ms apart (each its own drained batch), then one that is
    // answered.
    for command in ["quiet0", "note1", "status2"] {
        env.produce(topics::COMMANDS, key, &common::command(command, key))
            .await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    env.produce(topics::COMMANDS, key, &common::command("after", key))
        .await?;
    let said = said_until(&env, &format!("mark-{key}-after")).await?;
    // The answer is readable, so its transaction committed: with it, the
    // offsets, state and output of the three before.
    let (committed, end) =
        si_testkit::throughput::group_progress(&env, "si-timer-test", topics::COMMANDS)?;
    let transactions = runner.metrics.batch_records.get_sample_count() - before;
    runner.stop().await?;
    assert_eq!(
        said,
        vec![
            format!("mark-{key}-warm"),
            format!("status-{key}-status2"),
            format!("mark-{key}-after")
        ],
        "the not-urgent output is written, in order"
    );
    assert_eq!(
        transactions, 1,
        "three commands nobody waits on and an answered one: one transaction"
    );
    assert_eq!(committed, end, "every command's offset committed");
    Ok(())
}
