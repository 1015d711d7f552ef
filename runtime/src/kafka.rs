//! Kafka client construction. Every client starts from the same base
//! (bootstrap servers, the `KAFKA_*` pass-through for TLS/SASL, a client id
//! naming the stage and instance), then gets the settings its role needs.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{GroupArgs, KafkaArgs};
use crate::polled::{Acks, PolledProducer};

/// The base client configuration: bootstrap servers, pass-through properties and a client id.
#[must_use]
pub fn client_config(kafka: &KafkaArgs, stage: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("client.id", format!("si-{stage}-{}", kafka.pod_name));
    for (key, value) in kafka.properties() {
        config.set(key, value);
    }
    config
}

/// A producer that never acknowledges what the cluster has not stored: idempotent,
/// `acks=all`, unlimited in-flight retries within `delivery.timeout.ms`.
///
/// Keys are hashed with `murmur2_random`, the Java client's partitioner, so every
/// producer of a co-partitioned topic (ours, and other teams' Java or Python
/// clients writing e.g. `si.responses.v1`) puts one key in the same partition.
///
/// Those are guarantees and always set. The tuning, zstd (what the topics
/// store) at level 1 and `linger.ms` 2, yields to a `KAFKA_COMPRESSION_TYPE`,
/// `KAFKA_COMPRESSION_LEVEL` or `KAFKA_LINGER_MS` pass-through.
///
/// Level 1, not zstd's default 3: librdkafka makes a new compression context
/// for every batch, and at level 3 clearing its tables is most of the cost
/// of a batch of a few records. Level 1's tables are a sixteenth the size;
/// the records are small, so the ratio hardly differs. The level is only
/// ours to choose with our codec: with another one passed, so is its level.
#[must_use]
pub fn durable_producer_config(kafka: &KafkaArgs, stage: &str) -> ClientConfig {
    let mut config = client_config(kafka, stage);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random");
    set_producer_tuning(&mut config, &kafka.properties());
    config
}

/// The tuning of [`durable_producer_config`], each setting unless `passed`
/// (the `KAFKA_*` pass-through) names it.
fn set_producer_tuning(
    config: &mut ClientConfig,
    passed: &std::collections::BTreeMap<String, String>,
) {
    set_unless_passed(config, passed, &[("linger.ms", "2")]);
    if !passed.contains_key("compression.type") {
        set_unless_passed(
            config,
            passed,
            &[("compression.type", "zstd"), ("compression.level", "1")],
        );
    }
}

/// Sets each of `defaults` that `passed` (the `KAFKA_*` pass-through) does
/// not name.
pub(crate) fn set_unless_passed(
    config: &mut ClientConfig,
    passed: &std::collections::BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) {
    for (key, value) in defaults {
        if !passed.contains_key(*key) {
            config.set(*key, *value);
        }
    }
}

/// A consumer that only sees committed transactional data and never commits on its own.
#[must_use]
pub fn consumer_config(kafka: &KafkaArgs, stage: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(kafka, stage);
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    config
}

/// The consumer that restores a stage's state from its changelog (or
/// egress's ledger): read-committed, to the end of each partition (it
/// reports the end), never committing; its group only names it
/// (`<prefix>si-<stage>-restore`), it is assigned its partitions. It reads
/// as fast as it decodes, so a deep prefetch queue would only add to the
/// peak memory: 16 MiB instead of librdkafka's 64.
#[must_use]
pub fn restore_config(kafka: &KafkaArgs, stage: &str) -> ClientConfig {
    let mut config = client_config(kafka, &format!("{stage}-restore"));
    config
        .set(
            "group.id",
            format!("{}si-{stage}-restore", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", "16384");
    config
}

/// Lets a consumer's fetches wait at the broker for up to `linger`, for a
/// stage that lets its batches linger that long anyway (off the reply path):
/// `fetch.wait.max.ms` = `linger` and a `fetch.min.bytes` (1 MiB) that only a
/// heavy load fills before that. By default a read-committed fetch is
/// answered as soon as any commit upstream makes records readable, and the
/// next one is sent at once, so such a consumer asked the broker once for
/// each upstream commit that touched its inputs; now at most once per
/// `linger` (under load: a stage reading five topics no longer fetches after
/// every one of their transactions). A zero `linger` (the reply path) and a
/// `KAFKA_FETCH_WAIT_MAX_MS` / `KAFKA_FETCH_MIN_BYTES` pass-through leave
/// librdkafka's settings. The wait is at most librdkafka's default, 500 ms,
/// whatever the linger: a fetch held longer at the broker would hold up a
/// rebalance or a rewind as long.
pub fn fetch_lingering(
    config: &mut ClientConfig,
    passed: &std::collections::BTreeMap<String, String>,
    linger: Duration,
) {
    if linger.is_zero() {
        return;
    }
    let wait = linger.as_millis().clamp(1, 500).to_string();
    set_unless_passed(
        config,
        passed,
        &[("fetch.wait.max.ms", &wait), ("fetch.min.bytes", "1048576")],
    );
}

/// Makes `config` (a [`consumer_config`]) a member of a stage's consumer group
/// as `group` says: its session timeout (heartbeats every fifth of it) and,
/// with static membership, `group.instance.id` = `instance_id`. A
/// `KAFKA_SESSION_TIMEOUT_MS` / `KAFKA_HEARTBEAT_INTERVAL_MS` pass-through wins.
pub fn join_group(config: &mut ClientConfig, group: &GroupArgs, instance_id: &str) {
    let session = group.session_timeout.as_millis();
    if config.get("session.timeout.ms").is_none() {
        config.set("session.timeout.ms", session.to_string());
        if config.get("heartbeat.interval.ms").is_none() {
            config.set("heartbeat.interval.ms", (session / 5).max(100).to_string());
        }
    }
    if group.static_membership {
        config.set("group.instance.id", instance_id);
    }
}

/// Watches a group member's librdkafka log for a lost session.
///
/// A static member (`group.instance.id`) whose session times out while the
/// broker is away does not come back reliably in librdkafka 2.12: it rejoins
/// and is either fenced by its own instance id (a fatal error) or waits in the
/// join for ever with no partitions (librdkafka issue 3437; both seen in the
/// chaos test, `tests/e2e/chaos.rs`). So a static member treats a session
/// timeout as fatal: the stage exits and Kubernetes restarts the container
/// under the same pod name, which takes its partitions back at once. A
/// dynamic member rejoins as usual. Every log line is passed on to `tracing`
/// (target `librdkafka`), as rdkafka's own default does.
#[derive(Debug, Default)]
pub struct SessionWatch {
    static_member: bool,
    lost: std::sync::atomic::AtomicBool,
}

impl SessionWatch {
    /// A watch for a member with (`true`) or without static membership.
    #[must_use]
    pub fn new(static_member: bool) -> Self {
        Self {
            static_member,
            lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// For `ClientContext::log`.
    pub fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}");
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
        if self.static_member && fac == "SESSTMOUT" {
            self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The reason to exit, once a static member's session was lost.
    #[must_use]
    pub fn fatal(&self) -> Option<String> {
        self.lost
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| {
                "the consumer group session timed out; as a static member this process exits \
             to be restarted (librdkafka cannot rejoin reliably)"
                    .to_owned()
            })
    }
}

/// How long a stage waits at start for the topics it needs to appear in the
/// cluster's metadata: on a fresh stack a topic created a moment ago (by
/// `sictl topics apply`, or a changelog the stage created itself) may not be
/// listed by every broker yet.
pub const TOPIC_WAIT: Duration = Duration::from_secs(60);

/// The partition count of each of `topics`, asked of the cluster with
/// `lookup` until every one has partitions: a failed request and an empty
/// answer (the topic not, or not yet, in metadata) are both asked again every
/// `step` until `deadline`. The error names the topics still missing.
///
/// # Errors
/// When a topic is still missing at the deadline.
pub fn wait_for_topics(
    topics: &[String],
    deadline: Duration,
    step: Duration,
    mut lookup: impl FnMut(&str) -> KafkaResult<usize>,
) -> Result<Vec<usize>, String> {
    let until = std::time::Instant::now() + deadline;
    let mut counts = vec![0; topics.len()];
    loop {
        let mut last_error = None;
        for (topic, count) in topics.iter().zip(counts.iter_mut()) {
            if *count == 0 {
                match lookup(topic) {
                    Ok(n) => *count = n,
                    Err(error) => last_error = Some(format!("{topic}: {error}")),
                }
            }
        }
        let missing: Vec<&str> = topics
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c == 0)
            .map(|(t, _)| t.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(counts);
        }
        if std::time::Instant::now() >= until {
            return Err(format!(
                "waited {deadline:?} for topic(s) {} to appear in the cluster's metadata (run `sictl topics apply`){}",
                missing.join(", "),
                last_error.map_or_else(String::new, |e| format!("; last error: {e}"))
            ));
        }
        tracing::info!(topics = %missing.join(", "), "waiting for topics to appear in metadata");
        std::thread::sleep(step);
    }
}

/// The positions of `consumer` (full topic name, partition, offset) on the
/// partitions `held` accepts that are past its group's committed offsets.
/// Called when every record read has been committed, such a position has
/// passed only transaction markers and aborted records since: the offset a
/// record's transaction commits is the one after the record, short of the
/// commit marker that follows it. A partition sought back (held back for a
/// restore, rewound) has no position until it is read again.
///
/// # Errors
/// When the positions or the committed offsets cannot be had.
pub(crate) fn positions_past_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    held: impl Fn(&str, i32) -> bool,
    timeout: Duration,
) -> KafkaResult<Vec<(String, i32, i64)>> {
    let position = consumer.position()?;
    let mut asked = TopicPartitionList::new();
    for element in position.elements() {
        if matches!(element.offset(), Offset::Offset(_))
            && held(element.topic(), element.partition())
        {
            asked.add_partition(element.topic(), element.partition());
        }
    }
    if asked.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(asked, timeout)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| {
            let Offset::Offset(at) = position
                .find_partition(element.topic(), element.partition())?
                .offset()
            else {
                return None;
            };
            let done = match element.offset() {
                Offset::Offset(done) => done,
                _ => -1,
            };
            (at > done).then(|| (element.topic().to_owned(), element.partition(), at))
        })
        .collect())
}

/// [`wait_for_topics`] against the cluster, with a probe client from
/// `config`, blocking (call it from `spawn_blocking`).
///
/// # Errors
/// When the probe cannot be created or a topic is still missing after [`TOPIC_WAIT`].
pub fn topic_partitions(config: &ClientConfig, topics: &[String]) -> Result<Vec<usize>, String> {
    let probe: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    wait_for_topics(topics, TOPIC_WAIT, Duration::from_millis(200), |topic| {
        let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    })
}

/// Waits for `inputs`, `store` and `others` (full names) to exist, as
/// [`topic_partitions`] does, and checks that every input has the partitions
/// of `store`: the topic whose partition `p` keeps the state of the inputs'
/// partition `p` (a stage's changelog, egress's ledger).
///
/// # Errors
/// When a topic is still missing after [`TOPIC_WAIT`], or an input's count
/// differs from the store's.
pub async fn check_co_partitioned(
    config: ClientConfig,
    inputs: Vec<String>,
    store: String,
    others: Vec<String>,
) -> Result<(), String> {
    let topics: Vec<String> = inputs
        .iter()
        .chain([&store])
        .chain(&others)
        .cloned()
        .collect();
    let counts = tokio::task::spawn_blocking(move || topic_partitions(&config, &topics))
        .await
        .map_err(|e| e.to_string())??;
    co_partitioned(&inputs, &store, &counts)
}

/// `counts` has the inputs' partition counts, then the store's.
fn co_partitioned(inputs: &[String], store: &str, counts: &[usize]) -> Result<(), String> {
    let Some(&expected) = counts.get(inputs.len()) else {
        return Err(format!("no partition count for {store}"));
    };
    match inputs
        .iter()
        .zip(counts)
        .find(|&(_, &count)| count != expected)
    {
        Some((topic, count)) => Err(format!(
            "{topic} has {count} partitions but {store} has {expected}: they must be \
             co-partitioned (partition p of {store} keeps the state of partition p of {topic})"
        )),
        None => Ok(()),
    }
}

/// Creates a producer from `config` whose sends are awaited
/// ([`PolledProducer::send_acked`]), its reports served by a thread of its
/// own.
///
/// # Errors
/// When librdkafka rejects the configuration or the thread cannot start.
pub fn create_producer(config: &ClientConfig) -> anyhow::Result<PolledProducer<Acks>> {
    Ok(PolledProducer::new(config.create_with_context(Acks)?)?)
}

/// Creates an admin client.
///
/// # Errors
/// When librdkafka rejects the configuration.
pub fn create_admin(
    kafka: &KafkaArgs,
    stage: &str,
) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(client_config(kafka, stage).create()?)
}

/// What a metadata request says about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// Broker ids and addresses.
    pub brokers: Vec<(i32, String)>,
    /// The broker that answered the request.
    pub answered_by: String,
    /// The cluster id (KRaft clusters always have one).
    pub cluster_id: Option<String>,
    /// Number of topics visible.
    pub topics: usize,
}

/// Asks the cluster for its metadata (a real round trip), off the async runtime.
///
/// # Errors
/// When no broker answers within `timeout`.
pub async fn cluster_info(kafka: &KafkaArgs, timeout: Duration) -> anyhow::Result<ClusterInfo> {
    let config = client_config(kafka, "probe");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(None, timeout)?;
        Ok(ClusterInfo {
            brokers: metadata
                .brokers()
                .iter()
                .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
                .collect(),
            answered_by: metadata.orig_broker_name().to_owned(),
            cluster_id: consumer.client().fetch_cluster_id(timeout),
            topics: metadata.topics().len(),
        })
    })
    .await?
}

/// Extra attempts at `abort_transaction` while librdkafka answers that it
/// timed out and should be called again (the broker is away): with the
/// transaction call timeout of 10 to 30 s, a broker outage of 5 to 15
/// minutes passes without the process giving up. A stage that exited instead
/// would only come back to the same unreachable broker.
pub const ABORT_ATTEMPTS: u32 = 30;

/// Calls `abort_transaction` (`f`) again while librdkafka says its error is
/// retriable, at most [`ABORT_ATTEMPTS`] extra times. Unlike
/// [`retry_transactional`] an abort is repeated whatever state the
/// transaction is in: only an abort gets a producer out of it.
///
/// # Errors
/// The last error, once it is not retriable or the attempts are spent.
pub fn retry_abort(f: impl Fn() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut tried = 0;
    loop {
        match f() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.is_fatal() && tried < ABORT_ATTEMPTS =>
            {
                tried += 1;
                tracing::warn!(error = %e, attempt = tried, "retrying abort_transaction");
            }
            result => return result,
        }
    }
}

/// `send_offsets_to_transaction` once, never again after it timed out: in
/// librdkafka 2.12 a second call while the group coordinator is away waits
/// for ever (the coordinator request's own timeout is not enforced,
/// librdkafka issue 5456), and once crashed the process in the chaos test. The
/// caller aborts the transaction instead (see [`retry_abort`]) and does the
/// batch again; at worst the abort gives up and the process exits for a
/// clean restart.
///
/// # Errors
/// librdkafka's error.
pub fn send_offsets_once(f: impl FnOnce() -> KafkaResult<()>) -> KafkaResult<()> {
    f()
}

/// Calls a transactional producer API again in place while librdkafka says its
/// error is retriable and needs no abort, at most `attempts` extra times. A
/// timed-out `commit_transaction` must be retried this way: aborting instead
/// conflicts with the call still in progress (`send_offsets_to_transaction`
/// is the exception: see [`send_offsets_once`]). Other errors are returned at
/// once.
///
/// # Errors
/// The last error, once it is not retriable or the attempts are spent.
pub fn retry_transactional(
    call: &str,
    attempts: u32,
    f: impl Fn() -> KafkaResult<()>,
) -> KafkaResult<()> {
    let mut tried = 0;
    loop {
        match f() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable()
                    && !e.txn_requires_abort()
                    && !e.is_fatal()
                    && tried < attempts =>
            {
                tried += 1;
                tracing::warn!(call, error = %e, attempt = tried, "retrying transactional call");
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaArgs {
        KafkaArgs {
            bootstrap_servers: "x:9092".into(),
            topic_prefix: String::new(),
            pod_name: "pod-0".into(),
        }
    }

    #[test]
    fn only_a_static_member_treats_a_lost_session_as_fatal() {
        use rdkafka::config::RDKafkaLogLevel;
        let dynamic = SessionWatch::new(false);
        let static_member = SessionWatch::new(true);
        for watch in [&dynamic, &static_member] {
            watch.log(
                RDKafkaLogLevel::Warning,
                "HEARTBEAT",
                "group is rebalancing",
            );
            assert_eq!(watch.fatal(), None);
            watch.log(
                RDKafkaLogLevel::Warning,
                "SESSTMOUT",
                "Consumer group session timed out (in join-state steady)",
            );
        }
        assert_eq!(dynamic.fatal(), None);
        assert!(static_member.fatal().is_some());
    }

    #[test]
    fn tuning_defaults_yield_to_the_pass_through_and_guarantees_do_not() {
        let config = durable_producer_config(&kafka(), "egress");
        assert_eq!(config.get("linger.ms"), Some("2"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("compression.level"), Some("1"));
        assert_eq!(config.get("acks"), Some("all"));

        // As `client_config` leaves it: the pass-through already set.
        let passed_through = |passed: &[(&str, &str)]| {
            let passed: std::collections::BTreeMap<String, String> = passed
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut config = ClientConfig::new();
            for (key, value) in &passed {
                config.set(key, value);
            }
            set_producer_tuning(&mut config, &passed);
            config
        };
        let config = passed_through(&[("linger.ms", "50"), ("compression.level", "5")]);
        assert_eq!(config.get("linger.ms"), Some("50"), "the pass-through wins");
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("compression.level"), Some("5"));

        // Another codec's levels are its own (snappy has only 0): none is set.
        let config = passed_through(&[("compression.type", "snappy")]);
        assert_eq!(config.get("compression.type"), Some("snappy"));
        assert_eq!(config.get("compression.level"), None);
        assert_eq!(config.get("linger.ms"), Some("2"));
    }

    #[test]
    fn only_a_lingering_stage_fetches_in_batches_and_the_pass_through_wins() {
        let none = std::collections::BTreeMap::new();
        let mut reply_path = consumer_config(&kafka(), "consent", "si-consent");
        fetch_lingering(&mut reply_path, &none, Duration::ZERO);
        assert_eq!(reply_path.get("fetch.wait.max.ms"), None);
        assert_eq!(reply_path.get("fetch.min.bytes"), None);

        let mut lingering = consumer_config(&kafka(), "lifecycle", "si-lifecycle");
        fetch_lingering(&mut lingering, &none, Duration::from_millis(50));
        assert_eq!(lingering.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(lingering.get("fetch.min.bytes"), Some("1048576"));

        let passed = [("fetch.min.bytes".to_owned(), "1".to_owned())].into();
        let mut mine = consumer_config(&kafka(), "lifecycle", "si-lifecycle");
        mine.set("fetch.min.bytes", "1");
        fetch_lingering(&mut mine, &passed, Duration::from_millis(50));
        assert_eq!(
            mine.get("fetch.min.bytes"),
            Some("1"),
            "the pass-through wins"
        );
        assert_eq!(mine.get("fetch.wait.max.ms"), Some("50"));

        let mut long = consumer_config(&kafka(), "lifecycle", "si-lifecycle");
        fetch_lingering(&mut long, &none, Duration::from_secs(5));
        assert_eq!(long.get("fetch.wait.max.ms"), Some("500"), "capped");
    }

    #[test]
    fn a_group_member_gets_the_session_timeout_and_static_id_asked_for() {
        let mut dynamic = consumer_config(&kafka(), "egress", "si-egress");
        join_group(&mut dynamic, &GroupArgs::default(), "si-egress-pod-0");
        assert_eq!(dynamic.get("session.timeout.ms"), Some("10000"));
        assert_eq!(dynamic.get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(dynamic.get("group.instance.id"), None);

        let mut fixed = consumer_config(&kafka(), "egress", "si-egress");
        fixed.set("session.timeout.ms", "6000");
        let group = GroupArgs {
            session_timeout: Duration::from_secs(30),
            static_membership: true,
        };
        join_group(&mut fixed, &group, "si-egress-pod-0");
        assert_eq!(
            fixed.get("session.timeout.ms"),
            Some("6000"),
            "the pass-through wins"
        );
        assert_eq!(fixed.get("group.instance.id"), Some("si-egress-pod-0"));
    }

    #[test]
    fn topics_are_looked_up_again_until_they_appear() {
        let topics = vec!["a".to_owned(), "b".to_owned()];
        let mut asked = Vec::new();
        let mut b_answers = vec![
            Ok(0),
            Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
            )),
            Ok(3),
        ]
        .into_iter();
        let counts = wait_for_topics(&topics, Duration::from_secs(5), Duration::ZERO, |t| {
            asked.push(t.to_owned());
            if t == "a" {
                Ok(3)
            } else {
                b_answers.next().unwrap_or(Ok(0))
            }
        });
        assert_eq!(counts, Ok(vec![3, 3]));
        // `a` once; `b` after an empty answer and an error.
        assert_eq!(asked, ["a", "b", "b", "b"]);
    }

    #[test]
    fn a_topic_that_never_appears_fails_at_the_deadline_naming_it() {
        let topics = vec!["present".to_owned(), "si.echo.state.v1".to_owned()];
        let started = std::time::Instant::now();
        let result = wait_for_topics(
            &topics,
            Duration::from_millis(200),
            Duration::from_millis(10),
            |t| Ok(usize::from(t == "present")),
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        let error = result.expect_err("still missing");
        assert!(
            error.contains("si.echo.state.v1") && !error.contains("present,"),
            "{error}"
        );
    }

    #[test]
    fn a_session_timeout_the_broker_refuses_is_refused_at_start() {
        let short = GroupArgs {
            session_timeout: Duration::from_secs(2),
            ..GroupArgs::default()
        };
        assert!(
            short
                .validate()
                .is_err_and(|e| e.contains("SESSION_TIMEOUT"))
        );
        assert!(GroupArgs::default().validate().is_ok());
    }

    #[test]
    fn an_input_partitioned_unlike_its_store_is_named() {
        let inputs = ["in.a".to_owned(), "in.b".to_owned()];
        assert_eq!(co_partitioned(&inputs, "state", &[12, 12, 12, 3]), Ok(()));
        let error = co_partitioned(&inputs, "state", &[12, 6, 12]).expect_err("6 is not 12");
        assert!(
            error.starts_with("in.b has 6 partitions but state has 12"),
            "{error}"
        );
        let error = co_partitioned(&inputs[..1], "state", &[12, 3]).expect_err("12 is not 3");
        assert!(co_partitioned(&inputs, "state", &[12, 12]).is_err());
        assert!(
            error.starts_with("in.a has 12 partitions but state has 3"),
            "{error}"
        );
    }
}
