//! The out-of-order driver reads and starts records while a transaction
//! commits: egress's next sends do not wait for the commit of the statuses
//! before them. Here every commit of the stage is held about three seconds
//! (its transactional producers linger 3 s before sending what the
//! transaction wrote), and a record written once the first one finished is
//! started before that first transaction has committed; both outputs are
//! then committed exactly once, in input order.
//!
//! The linger is set through the `KAFKA_*` pass-through, which every
//! client of the process reads from its environment: the test runs itself
//! again as a child process with `KAFKA_LINGER_MS` set.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test deferred_overlap -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use si_runtime::deferred::{
    self, Deferred, DeferredArgs, DeferredEnv, Output, RecordId, Started, Work,
};
use si_runtime::metrics::StageMetrics;
use si_runtime::{GroupArgs, Readiness};
use si_schemas::records::Command;
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const KEY: &str = "conv-1";

/// How long the stage's producers hold a transaction's records.
const LINGER_MS: &str = "3000";

/// Set in the child process, which runs the test itself.
const CHILD: &str = "SI_DEFERRED_OVERLAP_CHILD";

const TEST: &str = "a_record_read_while_a_transaction_commits_starts_before_that_commit_ends";

/// Finishes every record at once, copying it to `si.archival.v1`, and
/// notes each one's payload when it starts.
struct Archiver {
    output: String,
    started: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Deferred for Archiver {
    fn start(&mut self, message: &BorrowedMessage<'_>, _id: RecordId) -> Result<Started, String> {
        let payload = message.payload().unwrap_or_default().to_vec();
        self.started.lock().unwrap().push(payload.clone());
        Ok(Started::Finished(vec![Output::record(
            &self.output,
            KEY,
            payload,
            None,
        )]))
    }

    fn assigned(&mut self, _partition: i32, _generation: u64) -> Result<(), String> {
        Ok(())
    }

    fn revoked(&mut self, _partition: i32) {}
}

/// Returns once `n` records have started (waits at most 60 s).
async fn started(records: &Mutex<Vec<Vec<u8>>>, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    while records.lock().unwrap().len() < n {
        assert!(
            Instant::now() < until,
            "{n} records not started within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_read_while_a_transaction_commits_starts_before_that_commit_ends()
-> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_none() {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["--exact", TEST, "--nocapture"])
            .env("KAFKA_LINGER_MS", LINGER_MS)
            .env(CHILD, "1")
            .status()?;
        assert!(status.success(), "the test in its child process: {status}");
        return Ok(());
    }
    let env = TestEnv::start().await?;
    // The test's own producer: no linger, whatever the environment says.
    let input: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .create()?;
    let input_topic = env.topic(topics::COMMANDS);
    let produce = async |id: &str| -> anyhow::Result<()> {
        let payload = env
            .codec
            .encode(&input_topic, &common::command(id, KEY))
            .await?;
        input
            .send(
                FutureRecord::to(&input_topic).key(KEY).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing {id}: {e}"))?;
        Ok(())
    };

    let records = Arc::new(Mutex::new(Vec::new()));
    let metrics = StageMetrics::new("deferred-overlap-test");
    let (_finish, completions) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let driver_env = DeferredEnv {
        kafka: env.kafka.clone(),
        stage: "deferred-overlap-test",
        input: topics::COMMANDS,
        outputs: vec![topics::ARCHIVAL],
        args: DeferredArgs {
            commit_interval: Duration::from_millis(50),
            max_pending_per_partition: 1000,
            transaction_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(15),
            group: GroupArgs::default(),
        },
        metrics: metrics.clone(),
        readiness: Readiness::default(),
    };
    let work = Work {
        completions,
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let processor = Archiver {
        output: env.topic(topics::ARCHIVAL),
        started: Arc::clone(&records),
    };
    let task = tokio::spawn(deferred::run(driver_env, processor, work, shutdown.clone()));
    // A failed assertion stops the stage too (the runtime waits for its loop).
    let _stop = shutdown.clone().drop_guard();

    produce("c00").await?;
    started(&records, 1).await;
    // c00 finished at its start; once its output is handed to the producer,
    // its transaction is committing, held by the linger.
    let written = metrics.records_out.with_label_values(&[topics::ARCHIVAL]);
    let until = Instant::now() + Duration::from_secs(60);
    while written.get() < 1 {
        assert!(
            Instant::now() < until,
            "c00's transaction not begun within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    produce("c01").await?;
    started(&records, 2).await;
    let committed = metrics.transactions.with_label_values(&["committed"]).get();
    assert_eq!(
        committed, 0,
        "c01 started only after c00's transaction committed"
    );

    // Both committed once, in order.
    let until = Instant::now() + Duration::from_secs(60);
    let outputs = loop {
        let outputs: Vec<String> = env
            .read_all::<Command>(topics::ARCHIVAL)
            .await?
            .into_iter()
            .map(|(_, c)| c.command_id)
            .collect();
        if outputs.len() >= 2 || Instant::now() >= until {
            break outputs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        outputs,
        ["c00", "c01"],
        "each output committed once, in order"
    );
    shutdown.cancel();
    task.await??;
    Ok(())
}
