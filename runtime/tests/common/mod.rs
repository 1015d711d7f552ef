//! Shared by the runtime's integration tests.

#![allow(dead_code)] // each test binary uses part of it

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use si_runtime::Readiness;
use si_runtime::metrics::StageMetrics;
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

use si_schemas::records::{
    ArchivalReason, ArchivalRequest, Channel, Command, CommandKind, LifecyclePhase, LifecycleState,
};
use si_schemas::topics;

/// A command `id` for conversation `key` (the tests' input records).
pub fn command(id: &str, key: &str) -> Command {
    Command::new(CommandKind::Unknown, id, key, "test", 0)
}

/// An archival request `id` of conversation `key` (what the tests' stages
/// write to `si.archival.v1`).
pub fn archival(id: &str, key: &str) -> ArchivalRequest {
    ArchivalRequest {
        request_id: id.into(),
        conversation_id: key.into(),
        session_id: "s".into(),
        closed_at: 0,
        reason: ArchivalReason::Command,
        summary: None,
        transcript_topic: topics::TRANSCRIPT.into(),
        first_sequence: None,
        last_sequence: None,
        retention_class: None,
        requested_at: 0,
        opened_at: None,
        media: Vec::new(),
        compliance_event_ids: Vec::new(),
    }
}

/// A placeholder state entry of conversation `key` (the tests' stages only
/// need some state type); `first_sequence` carries a test's counter.
pub fn state_entry(key: &str, first_sequence: Option<i64>) -> LifecycleState {
    LifecycleState {
        conversation_id: key.into(),
        session_id: "s".into(),
        channel: Channel::Sms,
        address: None,
        proxy_address: None,
        locale: "en".into(),
        phase: LifecyclePhase::Open,
        opened_at: 0,
        last_activity_at: 0,
        close_reason: None,
        closing_started_at: None,
        summary_request_id: None,
        summary: None,
        closing_response_id: None,
        first_sequence,
        last_sequence: None,
        media: Vec::new(),
        programmable_messaging: false,
        opening_text: None,
        conversation_sid: None,
        active_call_sid: None,
        compliance_event_ids: Vec::new(),
        call_scheduled_at: None,
    }
}

/// Writes `count` commands of conversation `key` to `si.commands.v1` in one
/// transaction, as a stage upstream would: a commit marker follows them.
pub fn produce_in_a_transaction(env: &TestEnv, key: &str, count: usize) -> anyhow::Result<()> {
    transaction(env, key, count, true)
}

/// Like [`produce_in_a_transaction`], and aborts it: `read_committed`
/// readers see only the abort marker.
pub fn produce_aborted(env: &TestEnv, key: &str, count: usize) -> anyhow::Result<()> {
    transaction(env, key, count, false)
}

fn transaction(env: &TestEnv, key: &str, count: usize, commit: bool) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("transactional.id", env.topic("test-upstream"))
        .create()?;
    producer.init_transactions(timeout)?;
    producer.begin_transaction()?;
    let topic = env.topic(topics::COMMANDS);
    let handle = tokio::runtime::Handle::current();
    for i in 0..count {
        let payload = tokio::task::block_in_place(|| {
            handle.block_on(env.codec.encode(&topic, &command(&format!("c{i}"), key)))
        })?;
        producer
            .send(BaseRecord::to(&topic).key(key).payload(&payload))
            .map_err(|(e, _)| e)?;
    }
    if commit {
        producer.commit_transaction(timeout)?;
    } else {
        // Written first, so that there is something to abort.
        producer.flush(timeout)?;
        producer.abort_transaction(timeout)?;
    }
    Ok(())
}

/// Waits until `group`'s committed offsets on the commands topic reach its
/// end (the test kit puts the topic prefix before the group).
pub async fn wait_committed_to_the_end(env: &TestEnv, group: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (committed, end) =
            si_testkit::throughput::group_progress(env, group, topics::COMMANDS)?;
        if committed == end {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the group's committed offsets stay short of the end: {committed} of {end}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the tests' stages read and write unless a test says otherwise: the
/// commands topic in, `si.archival.v1` out, lifecycle's changelog (whose
/// schema the tests' state uses), records committed as soon as they are
/// drained.
pub fn spec(stage: &'static str) -> StreamSpec {
    StreamSpec {
        stage,
        outputs: vec![topics::ARCHIVAL],
        inputs: vec![topics::COMMANDS],
        changelog: topics::LIFECYCLE_STATE,
        state_ttl: Duration::from_secs(3600),
        batch_linger: Duration::ZERO,
    }
}

/// A stream stage running on the test's runtime, as a pod named `pod`
/// would. Dropping it stops it too: a failed test would otherwise leave the
/// runtime waiting for its loop, forever.
pub struct Stage {
    pub metrics: StageMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), stream::StreamError>>,
}

impl Stage {
    pub fn start<P: Processor + Send + 'static>(
        env: &TestEnv,
        pod: &str,
        args: StreamArgs,
        spec: StreamSpec,
        processor: P,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let metrics = StageMetrics::new(spec.stage);
        let mut kafka = env.kafka.clone();
        kafka.pod_name = pod.into();
        let stream_env = StreamEnv {
            kafka,
            args,
            drain_timeout: Duration::from_secs(10),
            codec: env.codec.clone(),
            metrics: metrics.clone(),
            readiness: Readiness::default(),
        };
        let task = tokio::spawn(stream::run(stream_env, spec, processor, shutdown.clone()));
        Self {
            metrics,
            shutdown,
            task,
        }
    }

    /// Stops the stage as a pod's shutdown does, and waits for its drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A stage that writes nothing and takes its duration over every command:
/// the work such a stage stands for, not a wait on anything.
pub struct WritesNothing(pub Duration);

impl Processor for WritesNothing {
    type Input = Command;
    type State = LifecycleState;

    fn process(
        &mut self,
        _ctx: &RecordContext<'_>,
        _input: Command,
        _state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        std::thread::sleep(self.0);
        Ok(Vec::new())
    }
}
