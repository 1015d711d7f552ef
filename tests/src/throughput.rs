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

use si_schemas::records::{
    Channel, ComplianceSource, ConsentState, ConsentStatus, ConversationEvent,
    ConversationEventType, EventSource, LocaleSource, MessageReceived, Participant,
};
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

/// Each partition's committed offset of `group` on `topic` (declared name;
/// 0 where it committed none, or without a `group`) and end offset, in
/// partition order.
///
/// # Errors
/// When the broker does not answer within 10 s, or still fails after 10 s
/// of asking again (a topic made a moment ago may have no leader yet).
fn offsets(env: &TestEnv, group: Option<&str>, topic: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match offsets_once(env, group, topic) {
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("[testkit] offsets of {topic}: {e:#}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            done => return done,
        }
    }
}

fn offsets_once(
    env: &TestEnv,
    group: Option<&str>,
    topic: &str,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let full = env.topic(topic);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("enable.auto.commit", "false")
        // Committed offsets of a group with an open transaction would
        // otherwise wait for it (KIP-447 stable offsets).
        .set("isolation.level", "read_uncommitted");
    if let Some(group) = group {
        config.set("group.id", format!("{}{group}", env.kafka.topic_prefix));
    }
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
    let committed = match group {
        Some(_) => consumer.committed_offsets(tpl, timeout)?,
        None => tpl,
    };
    let mut offsets = Vec::with_capacity(partitions);
    for element in committed.elements() {
        let end = consumer
            .fetch_watermarks(&full, element.partition(), timeout)?
            .1;
        let done = match element.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        offsets.push((done, end));
    }
    Ok(offsets)
}

/// The committed offsets of `group` on `topic` (declared name) and the
/// topic's end offsets, each summed over its partitions.
///
/// # Errors
/// When the broker does not answer within 10 s.
pub fn group_progress(env: &TestEnv, group: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    Ok(offsets(env, Some(group), topic)?
        .into_iter()
        .fold((0, 0), |(done, end), (d, e)| (done + d, end + e)))
}

/// The end offset of each partition of `topic` (declared name): what a
/// stage started afterwards is to commit ([`wait_committed`], [`measure`]).
///
/// Taken before the stage starts, because a starting stage writes an
/// aborted fence record to every partition of its outputs
/// (`si_runtime::txn::Transactions::end_pending`), and one that reads a
/// topic it also writes (consent, segment and lifecycle write
/// `si.conversation.events.v1`) never commits past those: no record
/// follows them. The topic's end offset then stays ahead of its committed
/// offsets.
///
/// # Errors
/// When the broker does not answer within 10 s.
pub fn end_offsets(env: &TestEnv, topic: &str) -> anyhow::Result<Vec<i64>> {
    Ok(offsets(env, None, topic)?
        .into_iter()
        .map(|(_, end)| end)
        .collect())
}

/// `group`'s committed offsets on `topic` summed, and whether each
/// partition's has reached `ends`.
fn committed_to(
    env: &TestEnv,
    group: &str,
    topic: &str,
    ends: &[i64],
) -> anyhow::Result<(i64, bool)> {
    let offsets = offsets(env, Some(group), topic)?;
    let done = offsets.iter().map(|(d, _)| d).sum();
    let reached =
        offsets.len() == ends.len() && offsets.iter().zip(ends).all(|((d, _), end)| d >= end);
    Ok((done, reached))
}

/// Waits until `group` has committed every record of `topic` below `ends`
/// ([`end_offsets`], taken before the stage started).
///
/// # Errors
/// When it has not within `deadline`.
pub async fn wait_committed(
    env: &TestEnv,
    group: &str,
    topic: &str,
    ends: &[i64],
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let (done, reached) = committed_to(env, group, topic, ends)?;
        if reached {
            return Ok(());
        }
        if Instant::now() > until {
            let end: i64 = ends.iter().sum();
            bail!("{group} committed {done} of {end} records of {topic} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures `stage` (consumer group `si-<stage>`) on the records of `input`
/// below `ends` ([`end_offsets`], taken before it started) from the moment
/// it first commits one until it has committed them all. The stage must be
/// running already, with nothing of `input` committed yet; `alive` is asked
/// at every look whether it still runs.
///
/// # Errors
/// When `alive` fails, or the stage makes no progress within 120 s or does
/// not finish within 600 s.
pub async fn measure(
    env: &TestEnv,
    stage: &str,
    input: &str,
    ends: &[i64],
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Drained> {
    let group = format!("si-{stage}");
    let started = Instant::now();
    let (first_done, first_at) = loop {
        alive()?;
        let (done, _) = committed_to(env, &group, input, ends)?;
        if done > 0 {
            break (done, Instant::now());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{stage} committed nothing of {input} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let until = Instant::now() + Duration::from_secs(600);
    let done = loop {
        alive()?;
        let (done, reached) = committed_to(env, &group, input, ends)?;
        if reached {
            break done;
        }
        if Instant::now() > until {
            let end: i64 = ends.iter().sum();
            bail!("{stage} committed {done} of {end} records of {input} within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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

/// Our number in the benchmarks' conversations.
pub const OURS: &str = "+14155550199";

/// Bench user `n`'s number.
#[must_use]
pub fn user(n: usize) -> String {
    format!("+1415{:07}", 6_000_000 + n)
}

/// Text `n` of a workload where `users` users write round-robin, one SMS
/// conversation each (`sms-bench-<user>`), at `at`: the event normalize makes
/// of an inbound SMS, keyed by its conversation.
#[must_use]
pub fn sms_text(n: usize, users: usize, at: i64) -> (String, ConversationEvent) {
    let u = n % users.max(1);
    let conversation = format!("sms-bench-{u}");
    let event = ConversationEvent {
        channel: Channel::Sms,
        source: EventSource::Messaging,
        participant: Some(Participant {
            address: Some(user(u)),
            channel: Channel::Sms,
            user_id: None,
            visitor_id: Some(format!("v-{u}")),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: "en-US".into(),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: Some("AC0123456789abcdef0123456789abcdef".into()),
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("SM{n:032}"),
        message: Some(MessageReceived {
            message_sid: format!("SM{n:032}"),
            index: None,
            author: Some(user(u)),
            body: Some(format!("hello Si, message {n}")),
            media: Vec::new(),
            attributes_json: None,
            num_segments: Some(1),
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("ev-{n}"),
            &conversation,
            &format!("s-{u}"),
            ConversationEventType::MessageReceived,
            at,
        )
    };
    (conversation, event)
}

/// The number of records a benchmark writes: `var` from the environment, else `default`.
#[must_use]
pub fn records_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs the stage binary at `path` (consumer group `si-<stage>`) over the
/// records already on `input` and measures it; stops it afterwards. Its log
/// goes to `log` and its tail into the error when it fails.
///
/// # Errors
/// When it cannot start, stalls, or does not stop cleanly.
pub async fn run_stage(
    env: &TestEnv,
    path: &Path,
    stage: &str,
    input: &str,
    vars: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<Drained> {
    let ends = end_offsets(env, input)?;
    let mut process = spawn_stage(env, path, vars, log)?;
    let measured = measure(env, stage, input, &ends, || match process.exited()? {
        Some(status) => bail!("{stage} exited with {status}"),
        None => Ok(()),
    })
    .await;
    let drained = match measured {
        Ok(d) => d,
        Err(e) => bail!("{e:#}\n{}", process.log_tail(30)),
    };
    process.terminate(Duration::from_secs(30))?;
    Ok(drained)
}

/// The text workload of the stages that read `si.conversation.events.v1`:
/// `users` users, opted in on `si.consent.v1`, write `n` texts round-robin
/// ([`sms_text`]); then the stage binary at `path` (group `si-<stage>`, with
/// the environment `vars`, its log in `log`) runs over them and is measured
/// ([`run_stage`]).
///
/// # Errors
/// When writing fails or the stage does.
pub async fn texts_through(
    env: &TestEnv,
    (path, stage, vars): (&Path, &str, &[(&str, &str)]),
    n: usize,
    users: usize,
    log: &Path,
) -> anyhow::Result<Drained> {
    let now = now_ms();
    opt_in_all(env, (0..users).map(user), Channel::Sms, now).await?;
    let events: Vec<_> = (0..n).map(|i| sms_text(i, users, now)).collect();
    env.produce_all(topics::CONVERSATION_EVENTS, &events)
        .await?;
    eprintln!("[throughput] {n} texts of {users} users written");
    run_stage(env, path, stage, topics::CONVERSATION_EVENTS, vars, log).await
}
