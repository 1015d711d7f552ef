//! Throughput of one stage binary against the real broker: the records are
//! written first, then the stage starts with its own defaults (transactions
//! on, `COMMIT_INTERVAL`, `MAX_BATCH`) and the rate is measured from its first
//! commit to the commit of the last input record, read from the consumer
//! group's committed offsets. Start-up, group join and state restore are
//! excluded and reported apart. Used by the stages' `throughput` benchmarks.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use si_schemas::records::{Channel, ComplianceSource, ConsentState, ConsentStatus};
use si_schemas::topics;

use crate::TestEnv;
use crate::process::StageProcess;

/// What a drained backlog measured.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Input records committed between the first commit and the last.
    pub records: i64,
    /// Time between them.
    pub elapsed: Duration,
    /// From the start of the process to its first commit.
    pub startup: Duration,
}

impl Drained {
    /// Input records per second.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The committed offsets of `group` on `topic` (declared name) and the
/// topic's end offsets, each summed over its partitions.
///
/// # Errors
/// When the broker does not answer within 10 s.
pub fn group_progress(env: &TestEnv, group: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    let full = env.topic(topic);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("group.id", format!("{}{group}", env.kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        // Committed offsets of a group with an open transaction would
        // otherwise wait for it (KIP-447 stable offsets).
        .set("isolation.level", "read_uncommitted");
    let consumer: BaseConsumer = config.create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&full), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&full, i32::try_from(p)?);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let (mut done, mut end) = (0, 0);
    for element in committed.elements() {
        end += consumer
            .fetch_watermarks(&full, element.partition(), timeout)?
            .1;
        if let Offset::Offset(o) = element.offset() {
            done += o;
        }
    }
    Ok((done, end))
}

/// Waits until `group` has committed every record of `topic`.
///
/// # Errors
/// When it has not within `deadline`.
pub async fn wait_committed(
    env: &TestEnv,
    group: &str,
    topic: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let (done, end) = group_progress(env, group, topic)?;
        if done >= end {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{group} committed {done} of {end} records of {topic} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures `stage` (consumer group `si-<stage>`) on the records of `input`
/// from the moment it first commits one until it has committed them all. The
/// stage must be running already, with nothing of `input` committed yet.
///
/// # Errors
/// When it makes no progress within 120 s or does not finish within 600 s.
pub async fn measure(env: &TestEnv, stage: &str, input: &str) -> anyhow::Result<Drained> {
    let group = format!("si-{stage}");
    let started = Instant::now();
    let (first_done, first_at) = loop {
        let (done, _) = group_progress(env, &group, input)?;
        if done > 0 {
            break (done, Instant::now());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{stage} committed nothing of {input} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    wait_committed(env, &group, input, Duration::from_secs(600)).await?;
    let (done, _) = group_progress(env, &group, input)?;
    Ok(Drained {
        records: done - first_done,
        elapsed: first_at.elapsed(),
        startup: first_at - started,
    })
}

/// Starts the stage binary at `path` as pod `bench` with its own defaults and
/// `vars`, logging to `log`.
///
/// # Errors
/// When it cannot be started.
pub fn spawn_stage(
    env: &TestEnv,
    path: &Path,
    vars: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<StageProcess> {
    StageProcess::spawn_at(env, path, "bench", vars, log)
}

/// Every one of `addresses` opted in on `si.consent.v1` for every sender
/// (scope `*`), as of `now_ms`: their first message is no first contact, so a
/// benchmark measures the path every later message takes (no welcome).
///
/// # Errors
/// When a record is not written.
pub async fn opt_in_all(
    env: &TestEnv,
    addresses: impl IntoIterator<Item = String>,
    channel: Channel,
    now_ms: i64,
) -> anyhow::Result<()> {
    let records: Vec<(String, ConsentState)> = addresses
        .into_iter()
        .map(|address| {
            let state = ConsentState {
                address,
                channel,
                sender_scope: "*".to_owned(),
                status: ConsentStatus::OptedIn,
                source: ComplianceSource::Api,
                decided_at: now_ms,
                updated_at: now_ms,
                keyword: None,
                event_ref: Some("si-bench".to_owned()),
            };
            (state.key(), state)
        })
        .collect();
    env.produce_all(topics::CONSENT, &records).await
}
