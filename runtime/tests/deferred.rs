//! The out-of-order driver against the real broker: records that finish out
//! of order are committed only as a contiguous prefix, so an instance that
//! stops with one record unfinished commits the records before it and nothing
//! after it, and the next instance starts again at that record: every input
//! ends with exactly one output, in input order. And a drained input's
//! committed offset reaches the end, past the last commit marker.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test deferred -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use si_runtime::deferred::{
    self, Deferred, DeferredArgs, DeferredEnv, Finished, Output, RecordId, Started, Work,
};
use si_runtime::metrics::StageMetrics;
use si_runtime::{GroupArgs, Readiness};
use si_schemas::records::Command;
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Each record started: where it was read, and its value.
type StartedRecords = Arc<Mutex<Vec<(RecordId, Vec<u8>)>>>;

const KEY: &str = "conv-1";

/// Starts every record and leaves finishing it to the test.
struct Held {
    started: StartedRecords,
}

impl Deferred for Held {
    fn start(&mut self, message: &BorrowedMessage<'_>, id: RecordId) -> Result<Started, String> {
        let payload = message.payload().unwrap_or_default().to_vec();
        self.started.lock().unwrap().push((id, payload));
        Ok(Started::Running)
    }

    fn assigned(&mut self, _partition: i32, _generation: u64) -> Result<(), String> {
        Ok(())
    }

    fn revoked(&mut self, _partition: i32) {}
}

struct Instance {
    started: StartedRecords,
    finish: mpsc::UnboundedSender<Finished>,
    output: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(env: &TestEnv) -> Instance {
    let started = Arc::new(Mutex::new(Vec::new()));
    let (finish, completions) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let driver_env = DeferredEnv {
        kafka: env.kafka.clone(),
        stage: "deferred-test",
        input: topics::COMMANDS,
        outputs: vec![topics::ARCHIVAL],
        args: DeferredArgs {
            commit_interval: Duration::from_millis(50),
            max_pending_per_partition: 1000,
            transaction_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            group: GroupArgs::default(),
        },
        metrics: StageMetrics::new("deferred-test"),
        readiness: Readiness::default(),
    };
    let work = Work {
        completions,
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let processor = Held {
        started: Arc::clone(&started),
    };
    let task = tokio::spawn(deferred::run(driver_env, processor, work, shutdown.clone()));
    Instance {
        started,
        finish,
        output: env.topic(topics::ARCHIVAL),
        shutdown,
        task,
    }
}

impl Instance {
    /// The records started so far, once there are `n` (waits at most 60 s).
    async fn started(&self, env: &TestEnv, n: usize) -> Vec<(RecordId, String)> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let so_far = self.started.lock().unwrap().clone();
            if so_far.len() >= n {
                let mut out = Vec::new();
                for (id, payload) in so_far {
                    let command: Command = env.codec.decode(&payload).await.unwrap();
                    out.push((id, command.command_id));
                }
                return out;
            }
            assert!(
                Instant::now() < until,
                "{} of {n} records started within 60 s",
                so_far.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Finishes a record: its output is the input record, copied to
    /// `si.archival.v1` under the same key (one partition, so the topic's
    /// order is the commit order).
    fn finish(&self, id: RecordId) {
        let payload = self
            .started
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.clone())
            .unwrap();
        let output = Output::record(&self.output, KEY, payload, None);
        self.finish
            .send(Finished {
                id,
                outputs: vec![output],
            })
            .unwrap();
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await?
    }
}

/// A test that fails stops the driver too: the runtime would otherwise wait
/// for its loop at the end of the test, forever.
impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn committed_outputs(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    Ok(env
        .read_all::<Command>(topics::ARCHIVAL)
        .await?
        .into_iter()
        .map(|(_, c)| c.command_id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_finished_after_an_unfinished_one_is_committed_only_with_it() -> anyhow::Result<()>
{
    let env = TestEnv::start().await?;
    let ids: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    // One key: one partition, so the records' order is the offsets' order.
    for id in &ids {
        env.produce(topics::COMMANDS, KEY, &common::command(id, KEY))
            .await?;
    }

    // Instance A finishes every record but c05, newest first, and stops.
    let a = start(&env);
    let started = a.started(&env, ids.len()).await;
    assert_eq!(
        started.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ids,
        "each record started once, in order"
    );
    for (id, command) in started.iter().rev() {
        if command != "c05" {
            a.finish(*id);
        }
    }
    a.stop().await?;
    assert_eq!(
        committed_outputs(&env).await?,
        ids[..5],
        "only the finished prefix before c05 is committed"
    );

    // Instance B starts again at c05 and finishes everything, odd ones first.
    let b = start(&env);
    let started = b.started(&env, ids.len() - 5).await;
    assert_eq!(
        started.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ids[5..],
        "the next instance reads again from the first unfinished record"
    );
    for parity in [1, 0] {
        for (n, (id, _)) in started.iter().enumerate() {
            if n % 2 == parity {
                b.finish(*id);
            }
        }
    }
    // Committed as soon as the last one finished: no stop needed to see it.
    let until = Instant::now() + Duration::from_secs(60);
    let mut outputs = committed_outputs(&env).await?;
    while outputs.len() < ids.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        outputs = committed_outputs(&env).await?;
    }
    b.stop().await?;
    assert_eq!(
        committed_outputs(&env).await?,
        ids,
        "every record exactly once, in input order"
    );
    Ok(())
}

/// On an input written in transactions, as egress's is, the group's
/// committed offset reaches the end once every record is finished: the
/// driver commits its position past the commit marker that follows the
/// last record, which the record's own commit stops short of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_input_is_committed_past_its_last_commit_marker() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    common::produce_in_a_transaction(&env, KEY, 5)?;
    let a = start(&env);
    for (id, _) in a.started(&env, 5).await {
        a.finish(id);
    }
    common::wait_committed_to_the_end(&env, "si-deferred-test").await?;
    a.stop().await?;
    Ok(())
}
