//! The exactly-once stream runner: consume, transform with a [`Processor`],
//! produce, with Kafka transactions.
//!
//! # The loop
//!
//! One thread per stage instance (started with `spawn_blocking`, so the
//! blocking librdkafka calls never run on an async worker) polls a consumer of
//! the stage's input topics, decodes each record, calls the processor with the
//! state store of the record's partition, encodes the outputs with the
//! [`Codec`] (schema ids looked up, never registered) and hands them to a
//! transactional producer. A transaction is a batch: it begins with the first
//! record after a commit and is committed as soon as the input is drained
//! (nothing more buffered to read), or after `MAX_BATCH` records or
//! `COMMIT_INTERVAL` under load, whichever comes first: low load gets low
//! latency, high load gets batches. A stage off the reply path (lifecycle,
//! voice-link, media) lets a drained batch wait up to its `batch_linger` for
//! more records ([`StreamSpec::batch_linger`], `BATCH_LINGER`), and its
//! consumer's fetches wait at the broker as long
//! ([`crate::kafka::fetch_lingering`]), which spares the broker most of its
//! transactions and fetches under load. A batch whose records wrote
//! nothing anyone waits on ([`Processor::urgent`]: by default, no output
//! at all, such as records the processor ignores or that only change its
//! state; in normalize, delivery statuses too) is not committed on its own:
//! it waits up to `COMMIT_INTERVAL` for a record that writes such outputs,
//! and goes with that one's transaction. Nothing is lost by the wait: read
//! again after a crash, the records do the same again. The commit writes,
//! atomically:
//! the batch's outputs and dead letters, the changelog records of every state
//! key the batch changed, and the consumer offsets (`send_offsets_to_transaction`
//! with the consumer's group metadata). Readers use `read_committed`, so they
//! see all of a batch or none of it.
//!
//! A batch commits, for each partition, the offset after its last record,
//! never past the commit marker that ends every upstream transaction after
//! it: a caught-up stage's committed offsets would stay one short of each
//! partition's end, and `kafka-consumer-groups` and KEDA would count a lag
//! that is not there. So once the input is drained and nothing has been
//! committed for `SETTLE_AFTER` (5 s) since a commit or an assignment, and
//! on shutdown, the loop commits the position of every partition that has
//! moved on past the group's committed offset (over markers and aborted
//! records only) in a transaction of offsets alone (`Core::commit_positions`).
//!
//! # Failures
//!
//! - A poison record (undecodable, schema mismatch, invalid, failed) is
//!   dead-lettered to `si.deadletter.v1` inside the batch (see [`crate::dlq`]);
//!   the loop goes on.
//! - A retriable failure (registry unreachable, our schema not registered yet,
//!   a transaction call that requires an abort, a delivery failure surfacing at
//!   commit): the transaction is aborted, the state stores are rolled back to
//!   the last commit, every assigned partition is rewound (seek) to its
//!   committed offset, and the loop backs off (100 ms doubling to 5 s) and goes
//!   on. Nothing of the aborted batch is visible to `read_committed` readers.
//! - A fatal producer error (fenced by a newer instance, or any error librdkafka
//!   marks fatal) or a failed abort: the runner returns an error and the binary
//!   exits non-zero; Kubernetes restarts it and it resumes from the committed
//!   offsets and changelog.
//!
//! # Timers
//!
//! A processor sets a timer on a state entry ([`StateStore::set_timer`]: a
//! wall-clock time per key, at most one per key). Every `TIMER_INTERVAL` the
//! loop looks for timers due by the wall clock in the stores of its assigned
//! partitions (at most `MAX_BATCH` per tick, earliest first) and, for each,
//! removes the timer from its entry and calls [`Processor::on_timer`] with the
//! store's "now" set to the wall clock. The outputs go into the open
//! transaction like the outputs of a record, and the timer's removal is a state
//! change written to the changelog (header `si-timer-at` carries a timer) in
//! that same transaction.
//!
//! Why a timer fires exactly once: its removal from the state and the outputs
//! of its firing commit atomically. If the transaction commits, the changelog
//! says "no timer" (or the re-armed one), so neither this instance nor the next
//! owner of the partition (which restores the changelog) fires it again. If it
//! aborts (a retriable error, a crash, SIGKILL), nothing of the firing is
//! visible to `read_committed` readers, the store is rolled back (in memory,
//! or by restoring the changelog after a restart) with the timer still set, and
//! it fires again at the next tick. A zombie (an instance whose partitions
//! were moved away by a rebalance it has not noticed) cannot commit a firing
//! either: a transaction that fired timers always sends consumer offsets for
//! the timers' partitions (the current positions, which re-commit what is
//! already committed), so the group coordinator rejects it for its stale
//! generation, exactly as it rejects a zombie's record batch.
//!
//! Timers are late, never early: they fire at the first tick at or after their
//! time, so up to `TIMER_INTERVAL` (plus a commit) after it, and after a
//! restart or rebalance as soon as the partition is restored. Records and
//! timers of a partition are handled one at a time by the same thread, so a
//! processor sees them in a single order.
//!
//! # transactional.id and fencing
//!
//! Each instance has two transactional producers taking turns, with
//! `transactional.id = <SI_TOPIC_PREFIX>si-<stage>-<POD_NAME>` and the same
//! with `_2` (why two: [`crate::txn::Transactions`]), and the consumer
//! group is `<SI_TOPIC_PREFIX>si-<stage>` (the name the Helm chart's KEDA
//! objects watch). Zombie fencing follows KIP-447: offsets are committed through
//! the transaction together with the consumer group metadata (member id and
//! generation), so once a rebalance has moved a partition away, a stale owner's
//! `send_offsets_to_transaction` fails and its transaction can never commit.
//! The transactional id therefore need not follow the partition: a per-pod id
//! is enough, even though Deployment pod names change. The id still matters
//! for fast recovery: a container restarted in the same pod keeps its
//! `POD_NAME`, and its `init_transactions` aborts the transaction the crashed
//! process left open at once. A new pod name leaves that transaction to expire
//! after `TRANSACTION_TIMEOUT`; until then `read_committed` readers of the
//! affected partitions wait (the last stable offset cannot pass it). Keep
//! `TRANSACTION_TIMEOUT` short (default 60 s); it must exceed `COMMIT_INTERVAL`
//! by a wide margin.
//!
//! # Group membership after a crash
//!
//! A crashed instance's partitions wait for its session to expire
//! (`SESSION_TIMEOUT`, default 10 s). With `STATIC_MEMBERSHIP` the consumer's
//! `group.instance.id` is the transactional id, so a process restarted under
//! the same `POD_NAME` replaces the dead member without a rebalance and its
//! `init_transactions` aborts what the dead one left open: it processes again
//! within seconds. A static member does not leave the group on shutdown, so
//! it suits stable names only (see [`crate::config::GroupArgs`]).
//!
//! # Rebalancing and state restore
//!
//! With one input topic the consumer uses the `cooperative-sticky` assignor:
//! a rebalance revokes only the partitions that move, so the other partitions
//! keep their in-memory state and go on processing. With several input topics
//! the runner uses the eager `range` assignor, because state partition `p` must
//! own partition `p` of every (co-partitioned) input, and only `range`
//! guarantees that (`cooperative-sticky` places each topic's partitions on
//! its own). An eager rebalance revokes everything, so the runner parks the
//! revoked stores (committed, or rolled back to the last commit) with their
//! changelog partition's end offset, and when the assignment that follows
//! gives a partition back whose changelog end offset has not moved (nobody
//! else wrote state for it in between), it takes the store back without
//! restoring it. Only partitions that really moved are restored.
//!
//! - Before partitions are revoked (`pre_rebalance`), the open transaction is
//!   committed (or aborted when the assignment was lost), then the revoked
//!   partitions' stores are parked (eager) or dropped (cooperative).
//! - After partitions are assigned (`post_rebalance`), nothing is read in the
//!   callback: the new partitions are paused on the group consumer and
//!   recorded. Before its next poll the loop looks up their changelog end
//!   offsets, takes back parked stores that are still current and gives
//!   empty changelog partitions an empty store (both resumed at once), and
//!   assigns the other changelog partitions to a restore consumer
//!   (`read_committed`, from the beginning to the end offset seen then). The
//!   loop then reads the changelog in slices of at most
//!   `RESTORE_SLICE` (50 ms) between polls of the group consumer, sharing the
//!   thread with the records of partitions already restored; a partition is
//!   resumed as soon as its store is complete, so none of its records is
//!   processed before. The group consumer is therefore polled every few
//!   tens of milliseconds however large the state, and a restore can never
//!   exceed `max.poll.interval.ms` (which used to bound the state size). A
//!   record of a partition not restored yet (fetched before its pause took
//!   effect) is not processed: the partition is sought back to it.
//!
//! `/readyz` reports `starting` until the runner registered `partitions`, and
//! `partitions` not ready until the first assignment is restored. Global
//! tables ([`crate::table`]) have their own checks, registered before [`run`].
//!
//! # Shutdown
//!
//! When the token is cancelled the loop stops polling, commits the open
//! transaction (aborting it if the commit fails) within `DRAIN_TIMEOUT`, and
//! closes the consumer, which leaves the group so its partitions move at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use si_schemas::records::DeadLetterErrorKind;
use si_schemas::{Codec, CodecError, topics};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing::field::Empty;

use crate::admin::{Readiness, ReadinessCheck};
use crate::config::{GroupArgs, KafkaArgs};
use crate::dlq;
use crate::fetchwatch::FetchWatch;
use crate::metrics::StageMetrics;
use crate::processor::{InputRecord, Output, ProcessError, Processor, RecordContext, TimerContext};
use crate::state::{EXPIRES_AT_HEADER, StateStore, Stored, TIMER_AT_HEADER, TIMER_TRACE_HEADER};
use crate::txn::Transactions;

/// The W3C trace context header carried from inputs to outputs.
pub const TRACEPARENT_HEADER: &str = crate::trace::TRACEPARENT;

/// What a stage reads and where its state lives.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stage name (`normalize`): consumer group `si-<stage>`, transactional id
    /// `si-<stage>-<POD_NAME>`, the `stage` of dead letters.
    pub stage: &'static str,
    /// Input topics as declared in `topics.yaml`; several must be co-partitioned.
    pub inputs: Vec<&'static str>,
    /// The topics the processor writes (those `topics.yaml` names the stage a
    /// producer of; the runner adds the dead letters): at start every
    /// partition of them but the changelog's gets an aborted fence that ends
    /// what an earlier instance left pending there
    /// ([`crate::txn::Transactions::end_pending`]).
    pub outputs: Vec<&'static str>,
    /// The stage's compacted changelog topic, with as many partitions as the inputs.
    pub changelog: &'static str,
    /// Default TTL of state entries.
    pub state_ttl: Duration,
    /// How long a batch may wait for more records once the input is drained
    /// (`BATCH_LINGER` overrides it). Zero for the stages on the reply path:
    /// a drained batch commits at once. A stage off it (lifecycle,
    /// voice-link, media) waits a little, so that under load it makes far
    /// fewer transactions, each a few requests and markers on the broker that
    /// the reply path shares; its consumer's fetches wait as long.
    pub batch_linger: Duration,
}

/// Settings of the stream runner; every stream stage accepts them.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Longest time a transaction stays open under load: a batch is committed
    /// when the input is drained, after this long, or after MAX_BATCH records.
    /// A batch that wrote nothing urgent waits this long for one that does.
    #[arg(long, env = "COMMIT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,

    /// Most input records in one transaction.
    #[arg(long, env = "MAX_BATCH", default_value_t = 2000)]
    pub max_batch: usize,

    /// How long a batch may wait for more records once the input is drained,
    /// from its first record; unset, the stage's own default (0 on the reply
    /// path: commit at once).
    #[arg(long, env = "BATCH_LINGER", value_parser = humantime::parse_duration)]
    pub batch_linger: Option<Duration>,

    /// Kafka `transaction.timeout.ms`: how long the broker keeps a transaction of
    /// a crashed instance open before aborting it (read_committed readers wait
    /// that long). Far above COMMIT_INTERVAL.
    #[arg(long, env = "TRANSACTION_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub transaction_timeout: Duration,

    /// How often expired state entries are deleted (with changelog tombstones).
    #[arg(long, env = "STATE_SWEEP_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub state_sweep_interval: Duration,

    /// How often due state timers are looked for and fired; a timer fires at
    /// most this long (plus a commit) after its time.
    #[arg(long, env = "TIMER_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub timer_interval: Duration,

    /// Consumer-group membership (session timeout, static membership).
    #[command(flatten)]
    pub group: GroupArgs,
}

impl Default for StreamArgs {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(100),
            max_batch: 2000,
            batch_linger: None,
            transaction_timeout: Duration::from_secs(60),
            state_sweep_interval: Duration::from_secs(60),
            timer_interval: Duration::from_secs(1),
            group: GroupArgs::default(),
        }
    }
}

impl StreamArgs {
    /// Cross-field checks, with a message naming the variables.
    ///
    /// # Errors
    /// When the settings contradict each other.
    pub fn validate(&self, drain_timeout: Duration) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("MAX_BATCH must be at least 1".into());
        }
        if self.commit_interval.is_zero() {
            return Err("COMMIT_INTERVAL must be positive".into());
        }
        if self.transaction_timeout < self.commit_interval * 10
            || self.transaction_timeout < Duration::from_secs(1)
        {
            return Err(format!(
                "TRANSACTION_TIMEOUT ({:?}) must be at least 1s and 10 × COMMIT_INTERVAL ({:?})",
                self.transaction_timeout, self.commit_interval
            ));
        }
        if drain_timeout <= self.commit_interval {
            return Err(format!(
                "DRAIN_TIMEOUT ({drain_timeout:?}) must exceed COMMIT_INTERVAL ({:?})",
                self.commit_interval
            ));
        }
        if self.state_sweep_interval.is_zero() {
            return Err("STATE_SWEEP_INTERVAL must be positive".into());
        }
        if self.timer_interval.is_zero() {
            return Err("TIMER_INTERVAL must be positive".into());
        }
        self.group.validate()
    }
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A fatal Kafka error (fenced, or fatal per librdkafka); exit and restart.
    #[error("fatal: {0}")]
    Fatal(String),
    /// Start-up failed (configuration, topics, Kafka unreachable).
    #[error("start-up: {0}")]
    Setup(String),
    /// The drain did not finish within DRAIN_TIMEOUT.
    #[error("shutdown did not finish within {0:?}")]
    DrainTimeout(Duration),
}

impl From<KafkaError> for StreamError {
    fn from(e: KafkaError) -> Self {
        Self::Setup(e.to_string())
    }
}

/// The consumer group of a stage: `<SI_TOPIC_PREFIX>si-<stage>`.
#[must_use]
pub fn group_id(kafka: &KafkaArgs, stage: &str) -> String {
    format!("{}si-{stage}", kafka.topic_prefix)
}

pub use crate::txn::{is_fenced, transactional_id, transactional_producer_config};

/// A header of `message` as UTF-8.
fn header_str<'m, M: Message>(message: &'m M, name: &str) -> Option<&'m str> {
    message.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What went wrong in one step of the loop.
#[derive(Debug)]
enum Step {
    /// Abort, rewind, back off, go on.
    Retry(&'static str, String),
    /// Exit the process.
    Fatal(String),
}

/// Where a rewind seeks a partition, given its committed offset as fetched:
/// the offset, or the beginning when the group has committed none. A
/// partition's own error (its offsets still pending in a transaction, say)
/// is an error, not "nothing committed": reading from the beginning would do
/// it all again. The caller exits; the next instance's assignment waits for
/// the committed offsets.
fn rewind_offset(committed: Offset, error: KafkaResult<()>) -> Result<Offset, KafkaError> {
    error?;
    Ok(match committed {
        Offset::Offset(o) => Offset::Offset(o),
        _ => Offset::Beginning,
    })
}

fn classify_kafka(call: &'static str, error: &KafkaError) -> Step {
    if crate::txn::is_fatal(error) {
        Step::Fatal(format!("{call}: {error}"))
    } else {
        Step::Retry("transaction", format!("{call}: {error}"))
    }
}

struct Txn {
    started: Instant,
    records: usize,
    /// The batch's span (`transaction`), linked to the traces of its records.
    span: Span,
    links: u32,
    offsets: HashMap<(String, i32), i64>,
    /// Partitions whose timers fired in this transaction.
    timer_partitions: HashSet<i32>,
    /// Whether the batch wrote outputs someone waits on
    /// ([`Processor::urgent`]): only then does a drained batch commit at once.
    urgent: bool,
}

struct Core<P: Processor> {
    stage: &'static str,
    /// How long a drained batch waits for more records (see [`StreamSpec`]).
    batch_linger: Duration,
    /// `COMMIT_INTERVAL`: how long a batch that wrote nothing urgent waits.
    commit_interval: Duration,
    prefix: String,
    inputs: Vec<(&'static str, String)>,
    changelog: String,
    state_ttl: Duration,
    processor: P,
    stores: BTreeMap<i32, StateStore<P::State>>,
    txns: Transactions,
    codec: Codec,
    handle: Handle,
    metrics: StageMetrics,
    txn: Option<Txn>,
    rewind: bool,
    fatal: Option<String>,
    /// Set on a fatal error: nothing may be committed any more.
    poisoned: bool,
    restore_config: ClientConfig,
    /// Partitions assigned (and paused) whose state the loop has not looked
    /// at yet: the rebalance callback only records them.
    to_restore: Vec<i32>,
    /// The restore in progress, if any (see [`Restoring`]).
    restoring: Option<Restoring<P::State>>,
    /// Stores of partitions an eager rebalance revoked, with the changelog
    /// end offset they are complete up to, until the assignment that follows.
    parked: BTreeMap<i32, (StateStore<P::State>, i64)>,
    partitions_ready: ReadinessCheck,
    shutdown: CancellationToken,
    /// Whether a commit or an assignment since the last
    /// [`Core::commit_positions`] may have left positions past the group's
    /// committed offsets, and when the last commit was.
    unsettled: bool,
    last_commit: Instant,
}

/// Longest slice of restoring between two polls of the group consumer.
const RESTORE_SLICE: Duration = Duration::from_millis(50);

/// How long after its last commit a drained stage commits the positions
/// that passed only transaction markers since ([`Core::commit_positions`]):
/// long enough that a stage under load never does (each commit puts it
/// off), short enough for a lag exporter polling every 15 s.
pub(crate) const SETTLE_AFTER: Duration = Duration::from_secs(5);

/// The stores of newly assigned partitions being filled from their changelog
/// partitions, a slice at a time between polls of the group consumer, while
/// those input partitions are paused.
struct Restoring<V> {
    consumer: BaseConsumer<crate::table::EndOfPartitionIsFine>,
    /// Partition → (its store so far, the changelog end offset to reach).
    partitions: BTreeMap<i32, (StateStore<V>, i64)>,
    started: Instant,
    records: u64,
}

impl<P: Processor> Core<P> {
    fn declared(&self, full: &str) -> &'static str {
        self.inputs
            .iter()
            .find(|(_, f)| f == full)
            .map_or("unknown", |(d, _)| *d)
    }

    fn begin(&mut self) -> Result<(), Step> {
        if self.txn.is_none() {
            self.txns
                .begin()
                .map_err(|e| classify_kafka("begin_transaction", &e))?;
            let span = tracing::info_span!(
                parent: None,
                "transaction",
                si.stage = self.stage,
                messaging.batch.message_count = Empty,
                outcome = Empty,
            );
            self.txn = Some(Txn {
                started: Instant::now(),
                records: 0,
                span,
                links: 0,
                offsets: HashMap::new(),
                timer_partitions: HashSet::new(),
                urgent: false,
            });
        }
        Ok(())
    }

    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        partition: Option<i32>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), Step> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.txns
            .send(record)
            .map_err(|error| classify_kafka("produce", &error))
    }

    fn encode_blocking<T: si_schemas::AvroRecord>(
        &self,
        topic: &str,
        record: &T,
    ) -> Result<Vec<u8>, CodecError> {
        self.handle.block_on(self.codec.encode(topic, record))
    }

    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        kind: DeadLetterErrorKind,
        reason: &str,
    ) -> Result<(), Step> {
        let record = dlq::dead_letter(self.stage, message, kind, reason, now_ms());
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            kind = %kind,
            reason = %record.reason,
            "record dead-lettered"
        );
        let topic = format!("{}{}", self.prefix, topics::DEAD_LETTER);
        let bytes = match self.encode_blocking(&topic, &record) {
            Ok(bytes) => bytes,
            Err(e) if e.is_retriable() => return Err(Step::Retry("registry", e.to_string())),
            Err(e) => return Err(Step::Fatal(format!("a dead letter does not encode: {e}"))),
        };
        self.send(
            &topic,
            message.key().unwrap_or_default(),
            Some(&bytes),
            None,
            None,
        )?;
        self.metrics
            .dead_letters
            .with_label_values(&[kind.as_str()])
            .inc();
        Ok(())
    }

    fn classify_decode_error(&self, error: &CodecError, payload: &[u8]) -> DeadLetterErrorKind {
        match error {
            CodecError::Avro(_) => {
                // Readable with its writer schema, but not as our type: a schema mismatch.
                if self
                    .handle
                    .block_on(self.codec.decode_value(payload))
                    .is_ok()
                {
                    DeadLetterErrorKind::SchemaMismatch
                } else {
                    DeadLetterErrorKind::Undecodable
                }
            }
            _ => DeadLetterErrorKind::Undecodable,
        }
    }

    fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), Step> {
        let full_topic = message.topic();
        let topic = self.declared(full_topic);
        let partition = message.partition();
        let received = header_str(message, TRACEPARENT_HEADER);
        let named = crate::trace::known_trace_id(received);
        // The record's span: a child of the trace the record belongs to.
        let span = tracing::info_span!(
            "process",
            si.stage = self.stage,
            messaging.destination.name = topic,
            messaging.kafka.partition = partition,
            messaging.kafka.offset = message.offset(),
            trace_id = named,
        );
        crate::trace::continue_from(&span, received);
        self.process_in(message, topic, received, named, &span)
    }

    fn process_in(
        &mut self,
        message: &BorrowedMessage<'_>,
        topic: &'static str,
        received: Option<&str>,
        named: Option<&str>,
        span: &Span,
    ) -> Result<(), Step> {
        let full_topic = message.topic();
        let partition = message.partition();
        self.begin()?;
        if let Some(txn) = self.txn.as_mut() {
            txn.offsets
                .insert((full_topic.to_owned(), partition), message.offset() + 1);
            txn.records += 1;
        }
        self.metrics.records_in.with_label_values(&[topic]).inc();
        let Some(payload) = message.payload() else {
            let _entered = span.enter();
            return self.dead_letter(
                message,
                DeadLetterErrorKind::Invalid,
                "null value (tombstone) on an input topic",
            );
        };
        let input = match self
            .handle
            .block_on(P::Input::decode(topic, payload, &self.codec))
        {
            Ok(input) => input,
            Err(e) if e.is_retriable() => return Err(Step::Retry("registry", e.to_string())),
            Err(e) => {
                let _entered = span.enter();
                let kind = self.classify_decode_error(&e, payload);
                return self.dead_letter(message, kind, &e.to_string());
            }
        };
        // A record without the header may name its trace in its value (the
        // cognition layer's responses do).
        let received = received.or_else(|| {
            let inner = self.processor.traceparent_in(&input);
            crate::trace::continue_from(span, inner);
            inner
        });
        let _entered = span.enter();
        let traceparent = crate::trace::traceparent_of(span, received);
        crate::trace::record_trace_id_unless_named(span, named, traceparent.as_deref());
        if let Some(txn) = self.txn.as_mut()
            && txn.links < crate::trace::MAX_LINKS
            && let Some(context) = crate::trace::context_of(span)
        {
            crate::trace::link_context(&txn.span, &context);
            txn.links += 1;
        }
        let traceparent = traceparent.as_deref();
        let timestamp_ms = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let ctx = RecordContext {
            topic,
            partition,
            offset: message.offset(),
            key: message.key(),
            timestamp_ms,
            traceparent,
        };
        let Some(store) = self.stores.get_mut(&partition) else {
            return Err(Step::Fatal(format!("no state for partition {partition}")));
        };
        store.set_now(timestamp_ms);
        store.set_trace(traceparent);
        let savepoint = store.savepoint();
        let outputs = match self.processor.process(&ctx, input, store) {
            Ok(outputs) => outputs,
            Err(error) => {
                store.rollback_to(savepoint);
                let kind = match error {
                    ProcessError::Invalid(_) => DeadLetterErrorKind::Invalid,
                    ProcessError::Failed(_) => DeadLetterErrorKind::ProcessingFailed,
                };
                return self.dead_letter(message, kind, &error.to_string());
            }
        };
        match self.emit(&outputs, traceparent)? {
            None => Ok(()),
            Some(reason) => {
                if let Some(store) = self.stores.get_mut(&partition) {
                    store.rollback_to(savepoint);
                }
                self.dead_letter(message, DeadLetterErrorKind::ProcessingFailed, &reason)
            }
        }
    }

    /// Encodes `outputs` and sends them into the open transaction. Returns the
    /// reason when an output does not encode (nothing is sent then).
    fn emit(
        &mut self,
        outputs: &[Output],
        traceparent: Option<&str>,
    ) -> Result<Option<String>, Step> {
        let mut encoded = Vec::with_capacity(outputs.len());
        for output in outputs {
            let full = format!("{}{}", self.prefix, output.topic());
            let bytes = match output.value() {
                None => None,
                Some(value) => match self.handle.block_on(value.encode(&self.codec, &full)) {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.is_retriable() => {
                        return Err(Step::Retry("registry", e.to_string()));
                    }
                    Err(e) => {
                        return Ok(Some(format!(
                            "an output for {} does not encode: {e}",
                            output.topic()
                        )));
                    }
                },
            };
            encoded.push((full, bytes));
        }
        for (output, (full, bytes)) in outputs.iter().zip(&encoded) {
            let headers = output.trace().or(traceparent).map(|tp| {
                OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(tp),
                })
            });
            self.send(
                full,
                output.key().as_bytes(),
                bytes.as_deref(),
                None,
                headers,
            )?;
            self.metrics
                .records_out
                .with_label_values(&[output.topic()])
                .inc();
        }
        // Only outputs that were sent make the batch urgent (not ones that
        // failed to encode and left a dead letter instead).
        if self.processor.urgent(outputs)
            && let Some(txn) = self.txn.as_mut()
        {
            txn.urgent = true;
        }
        Ok(None)
    }

    /// Fires the timers due by the wall clock, at most `limit`; returns how
    /// many fired (see the module docs).
    fn fire_timers(&mut self, limit: usize) -> Result<usize, Step> {
        let now = now_ms();
        let mut due: Vec<(i32, String)> = Vec::new();
        for (partition, store) in &self.stores {
            let left = limit.saturating_sub(due.len());
            due.extend(
                store
                    .due_timers(now, left)
                    .into_iter()
                    .map(|key| (*partition, key)),
            );
        }
        if due.is_empty() {
            return Ok(0);
        }
        self.begin()?;
        let fired = due.len();
        for (partition, key) in due {
            let Some(store) = self.stores.get_mut(&partition) else {
                continue;
            };
            store.set_now(now);
            let cause = store.timer_trace(&key).map(str::to_owned);
            let Some(due_at_ms) = store.cancel_timer(&key) else {
                continue;
            };
            // The timer's span joins the trace of the record that set it.
            let named = crate::trace::known_trace_id(cause.as_deref());
            let span = tracing::info_span!(
                "timer",
                si.stage = self.stage,
                si.timer.due_at_ms = due_at_ms,
                trace_id = named,
            );
            crate::trace::continue_from(&span, cause.as_deref());
            let _entered = span.enter();
            let traceparent = crate::trace::traceparent_of(&span, cause.as_deref());
            crate::trace::record_trace_id_unless_named(&span, named, traceparent.as_deref());
            store.set_trace(traceparent.as_deref());
            if let Some(txn) = self.txn.as_mut() {
                txn.timer_partitions.insert(partition);
            }
            let savepoint = store.savepoint();
            let ctx = TimerContext {
                partition,
                key: &key,
                due_at_ms,
                now_ms: now,
            };
            let failure = match self.processor.on_timer(&ctx, store) {
                Ok(outputs) => self.emit(&outputs, traceparent.as_deref())?,
                Err(error) => Some(error.to_string()),
            };
            let outcome = if let Some(reason) = failure {
                if let Some(store) = self.stores.get_mut(&partition) {
                    store.rollback_to(savepoint);
                }
                tracing::error!(partition, %reason, "a timer failed; it is dropped");
                "failed"
            } else {
                "fired"
            };
            self.metrics.timers.with_label_values(&[outcome]).inc();
        }
        Ok(fired)
    }

    fn due(&self, args: &StreamArgs) -> bool {
        self.txn.as_ref().is_some_and(|t| {
            t.records >= args.max_batch || t.started.elapsed() >= args.commit_interval
        })
    }

    /// How long the next poll may wait: with a transaction open, until the
    /// batch has lingered (not at all by default: an empty answer means the
    /// input is drained and the batch commits at once); otherwise up to
    /// 100 ms, so the loop still checks timers, the sweep and shutdown.
    fn poll_timeout(&self) -> Duration {
        if self.restoring.is_some() || !self.to_restore.is_empty() {
            return Duration::ZERO;
        }
        match &self.txn {
            Some(txn) => self.linger().saturating_sub(txn.started.elapsed()),
            None => Duration::from_millis(100),
        }
    }

    /// How long a drained batch waits for more records: its `batch_linger`
    /// when it wrote outputs someone waits on; otherwise the commit interval.
    fn linger(&self) -> Duration {
        if self.txn.as_ref().is_some_and(|t| t.urgent) {
            self.batch_linger
        } else {
            self.commit_interval
        }
    }

    /// Whether a drained batch has waited long enough to commit.
    fn lingered(&self) -> bool {
        self.txn
            .as_ref()
            .is_some_and(|t| t.started.elapsed() >= self.linger())
    }

    /// Writes the changelog, sends the offsets and commits.
    fn commit(&mut self, consumer: &BaseConsumer<StreamContext<P>>) -> Result<(), Step> {
        let Some(txn) = self.txn.as_ref() else {
            return Ok(());
        };
        let started = Instant::now();
        let records = txn.records;
        let commit_span =
            tracing::info_span!(parent: &txn.span, "commit", changelog_writes = Empty);
        let _entered = commit_span.enter();
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &txn.offsets {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| Step::Fatal(e.to_string()))?;
        }
        if !txn.timer_partitions.is_empty() {
            self.add_timer_offsets(consumer, &txn.timer_partitions, &mut offsets)?;
        }
        let mut writes = 0u64;
        for (partition, store) in &self.stores {
            for (key, value) in store.packed_changes() {
                match value {
                    Some(Stored {
                        value,
                        expires_at,
                        timer_at,
                        timer_trace,
                    }) => {
                        let datum = value
                            .map_err(|e| Step::Fatal(format!("state does not encode: {e}")))?;
                        let framed = self
                            .handle
                            .block_on(self.codec.frame_datum::<P::State>(&self.changelog, &datum));
                        let bytes = match framed {
                            Ok(bytes) => bytes,
                            Err(e) if e.is_retriable() => {
                                return Err(Step::Retry("registry", e.to_string()));
                            }
                            Err(e) => {
                                return Err(Step::Fatal(format!("state does not encode: {e}")));
                            }
                        };
                        let expires = expires_at.to_string();
                        let mut headers = OwnedHeaders::new().insert(Header {
                            key: EXPIRES_AT_HEADER,
                            value: Some(&expires),
                        });
                        if let Some(at) = timer_at {
                            headers = headers.insert(Header {
                                key: TIMER_AT_HEADER,
                                value: Some(&at.to_string()),
                            });
                            if let Some(trace) = &timer_trace {
                                headers = headers.insert(Header {
                                    key: TIMER_TRACE_HEADER,
                                    value: Some(trace),
                                });
                            }
                        }
                        self.send(
                            &self.changelog,
                            key.as_bytes(),
                            Some(&bytes),
                            Some(*partition),
                            Some(headers),
                        )?;
                    }
                    None => {
                        self.send(
                            &self.changelog,
                            key.as_bytes(),
                            None,
                            Some(*partition),
                            None,
                        )?;
                    }
                }
                writes += 1;
            }
        }
        self.txns
            .commit(&offsets, consumer.group_metadata().as_ref())
            .map_err(|error| classify_kafka("commit", &error))?;
        self.unsettled |= offsets.count() > 0;
        self.last_commit = Instant::now();
        for store in self.stores.values_mut() {
            store.commit();
        }
        commit_span.record("changelog_writes", writes);
        if let Some(txn) = self.txn.take() {
            txn.span
                .record("messaging.batch.message_count", records)
                .record("outcome", "committed");
        }
        self.metrics.changelog_writes.inc_by(writes);
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        #[allow(clippy::cast_precision_loss)]
        self.metrics.batch_records.observe(records as f64);
        self.update_state_gauge();
        Ok(())
    }

    /// Commits, in a transaction of offsets alone, the position of every
    /// input partition past the group's committed offset while the input is
    /// drained and no transaction is open
    /// ([`crate::kafka::positions_past_committed`]). Then the group's
    /// committed offsets reach the end of a caught-up partition, as
    /// `kafka-consumer-groups` and KEDA's lag see it, rather than stopping
    /// one short of the commit marker that ends every upstream transaction.
    fn commit_positions(&mut self, consumer: &BaseConsumer<StreamContext<P>>) -> Result<(), Step> {
        let ahead = crate::kafka::positions_past_committed(
            consumer,
            |_, partition| self.stores.contains_key(&partition),
            self.txns.call_timeout(),
        )
        .map_err(|e| Step::Retry("transaction", format!("positions: {e}")))?;
        // Only now: a failed read is tried again after the backoff.
        self.unsettled = false;
        if ahead.is_empty() {
            return Ok(());
        }
        self.begin()?;
        if let Some(txn) = self.txn.as_mut() {
            txn.offsets.extend(
                ahead
                    .into_iter()
                    .map(|(topic, partition, at)| ((topic, partition), at)),
            );
        }
        self.commit(consumer)
    }

    /// Whether the loop is to [`Core::commit_positions`] now: a commit left positions
    /// to look at, [`SETTLE_AFTER`] ago, and nothing is open or pending.
    fn positions_due(&self, drained: bool) -> bool {
        drained
            && self.unsettled
            && self.txn.is_none()
            && !self.rewind
            && self.last_commit.elapsed() >= SETTLE_AFTER
    }

    /// Adds, for every input partition whose timers fired and which has no
    /// record in the transaction, its current position: re-committing it
    /// changes nothing, but makes the group coordinator check this instance's
    /// generation, so a zombie's firing never commits.
    fn add_timer_offsets(
        &self,
        consumer: &BaseConsumer<StreamContext<P>>,
        partitions: &HashSet<i32>,
        offsets: &mut TopicPartitionList,
    ) -> Result<(), Step> {
        let position = consumer
            .position()
            .map_err(|e| Step::Retry("transaction", format!("position: {e}")))?;
        let mut missing = TopicPartitionList::new();
        for element in position.elements() {
            if !partitions.contains(&element.partition())
                || offsets
                    .find_partition(element.topic(), element.partition())
                    .is_some()
            {
                continue;
            }
            match element.offset() {
                Offset::Offset(o) => offsets
                    .add_partition_offset(element.topic(), element.partition(), Offset::Offset(o))
                    .map_err(|e| Step::Fatal(e.to_string()))?,
                _ => {
                    missing.add_partition(element.topic(), element.partition());
                }
            }
        }
        if offsets.count() == 0 && missing.count() > 0 {
            // Nothing consumed here since the assignment: the committed offsets.
            let committed = consumer
                .committed_offsets(missing, self.txns.call_timeout())
                .map_err(|e| Step::Retry("transaction", format!("committed offsets: {e}")))?;
            for element in committed.elements() {
                if let Offset::Offset(o) = element.offset() {
                    offsets
                        .add_partition_offset(
                            element.topic(),
                            element.partition(),
                            Offset::Offset(o),
                        )
                        .map_err(|e| Step::Fatal(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// Aborts the open transaction and rolls the stores back to the last commit.
    fn abort(&mut self) -> Result<(), Step> {
        if let Some(txn) = self.txn.take() {
            txn.span.record("outcome", "aborted");
            let _entered = txn.span.enter();
            self.txns
                .abort()
                .map_err(|e| Step::Fatal(format!("abort_transaction: {e}")))?;
            self.metrics
                .transactions
                .with_label_values(&["aborted"])
                .inc();
        }
        for store in self.stores.values_mut() {
            store.rollback_to(0);
        }
        self.rewind = true;
        Ok(())
    }

    /// Seeks every assigned partition back to its committed offset.
    fn rewind(&mut self, consumer: &BaseConsumer<StreamContext<P>>) -> Result<(), Step> {
        let assignment = consumer
            .assignment()
            .map_err(|e| Step::Fatal(format!("assignment: {e}")))?;
        if assignment.count() > 0 {
            let committed = consumer
                .committed_offsets(assignment, self.txns.call_timeout())
                .map_err(|e| Step::Fatal(format!("committed offsets: {e}")))?;
            for element in committed.elements() {
                let offset = rewind_offset(element.offset(), element.error()).map_err(|e| {
                    Step::Fatal(format!(
                        "committed offset of {} [{}]: {e}",
                        element.topic(),
                        element.partition()
                    ))
                })?;
                consumer
                    .seek(
                        element.topic(),
                        element.partition(),
                        offset,
                        self.txns.call_timeout(),
                    )
                    .map_err(|e| {
                        Step::Fatal(format!(
                            "rewinding {} [{}]: {e}",
                            element.topic(),
                            element.partition()
                        ))
                    })?;
            }
        }
        self.rewind = false;
        Ok(())
    }

    /// Deletes expired state entries (their tombstones go into the open transaction).
    fn sweep(&mut self) -> Result<(), Step> {
        let now = now_ms();
        if !self.stores.values().any(|s| s.has_expired(now)) {
            return Ok(());
        }
        self.begin()?;
        let mut expired = 0;
        for store in self.stores.values_mut() {
            expired += store.expire(now);
        }
        self.metrics.state_expired.inc_by(expired as u64);
        tracing::debug!(expired, "expired state entries");
        Ok(())
    }

    fn update_state_gauge(&self) {
        let entries: usize = self.stores.values().map(StateStore::len).sum();
        self.metrics
            .state_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The changelog offsets of partition `p`: (low, high watermark).
    fn changelog_offsets(&self, p: i32) -> Result<(i64, i64), Step> {
        retry_metadata(|| {
            self.txns
                .client()
                .fetch_watermarks(&self.changelog, p, self.txns.call_timeout())
        })
        .map_err(|e| Step::Fatal(format!("changelog watermarks of [{p}]: {e}")))
    }

    /// The input partitions `partitions` of every input topic.
    fn input_partitions(
        &self,
        partitions: impl IntoIterator<Item = i32> + Clone,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (_, full) in &self.inputs {
            for p in partitions.clone() {
                tpl.add_partition(full, p);
            }
        }
        tpl
    }

    /// Makes the state of newly assigned `partitions` (paused on the group
    /// consumer) available: a store an eager rebalance parked is taken back
    /// when its changelog partition has not changed since (nobody else wrote
    /// to it), an empty changelog partition gives an empty store (both are
    /// resumed at once), and every other partition is restored a slice at a
    /// time between polls ([`Self::restore_slice`]) and resumed once its
    /// store is complete.
    fn start_restore(
        &mut self,
        consumer: &BaseConsumer<StreamContext<P>>,
        partitions: &[i32],
    ) -> Result<(), Step> {
        let mut to_restore = Vec::new();
        let mut reused = Vec::new();
        for &p in partitions {
            let (low, high) = self.changelog_offsets(p)?;
            match self.parked.remove(&p) {
                Some((store, end)) if end == high => {
                    self.stores.insert(p, store);
                    reused.push(p);
                }
                _ if high <= low => {
                    self.stores.insert(p, StateStore::new(self.state_ttl));
                }
                _ => to_restore.push((p, high)),
            }
        }
        // Parked stores that did not come back belong to someone else now.
        self.parked.clear();
        if !reused.is_empty() {
            tracing::info!(partitions = ?reused, "state kept: the changelog did not change while unassigned");
        }
        let ready: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !to_restore.iter().any(|(q, _)| q == p))
            .collect();
        if !ready.is_empty() {
            consumer
                .resume(&self.input_partitions(ready.iter().copied()))
                .map_err(|e| Step::Fatal(format!("resuming partitions: {e}")))?;
        }
        if to_restore.is_empty() {
            self.update_state_gauge();
            if self.restoring.is_none() {
                self.partitions_ready.set(true);
            }
            return Ok(());
        }
        if self.restoring.is_none() {
            let consumer: BaseConsumer<crate::table::EndOfPartitionIsFine> = self
                .restore_config
                .create_with_context(crate::table::EndOfPartitionIsFine)
                .map_err(|e| Step::Fatal(format!("restore consumer: {e}")))?;
            self.restoring = Some(Restoring {
                consumer,
                partitions: BTreeMap::new(),
                started: Instant::now(),
                records: 0,
            });
        }
        let Some(restoring) = self.restoring.as_mut() else {
            return Ok(());
        };
        let mut assignment = TopicPartitionList::new();
        for &(p, high) in &to_restore {
            restoring
                .partitions
                .insert(p, (StateStore::new(self.state_ttl), high));
            assignment
                .add_partition_offset(&self.changelog, p, Offset::Beginning)
                .map_err(|e| Step::Fatal(e.to_string()))?;
        }
        restoring
            .consumer
            .incremental_assign(&assignment)
            .map_err(|e| Step::Fatal(format!("assigning the changelog: {e}")))?;
        tracing::info!(partitions = ?to_restore.iter().map(|(p, _)| p).collect::<Vec<_>>(), "restoring state");
        Ok(())
    }

    /// Reads the changelog of the partitions being restored for at most
    /// [`RESTORE_SLICE`]; hands each complete store over and resumes its
    /// partition. The group consumer is polled between slices, so a restore
    /// of any size never holds up the group (`max.poll.interval.ms`).
    fn restore_slice(&mut self, consumer: &BaseConsumer<StreamContext<P>>) -> Result<(), Step> {
        let Some(mut restoring) = self.restoring.take() else {
            return Ok(());
        };
        let until = Instant::now() + RESTORE_SLICE;
        let mut done = Vec::new();
        while Instant::now() < until && done.len() < restoring.partitions.len() {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            match restoring.consumer.poll(Duration::from_millis(10)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => done.push(p),
                Some(Err(error)) => {
                    tracing::warn!(%error, "changelog consumer error during restore");
                }
                Some(Ok(message)) => {
                    let p = message.partition();
                    restoring.records += 1;
                    let value = match message.payload() {
                        None => None,
                        Some(bytes) => {
                            let header = |name: &str| {
                                message.headers().and_then(|h| {
                                    h.iter()
                                        .find(|h| h.key == name)
                                        .and_then(|h| h.value)
                                        .and_then(|v| std::str::from_utf8(v).ok())
                                        .and_then(|v| v.parse::<i64>().ok())
                                })
                            };
                            let expires_at = header(EXPIRES_AT_HEADER).unwrap_or(i64::MAX);
                            let timer_at = header(TIMER_AT_HEADER);
                            let timer_trace =
                                header_str(&message, TIMER_TRACE_HEADER).map(str::to_owned);
                            match self.state_datum(bytes)? {
                                Some(value) => Some(Stored {
                                    value,
                                    expires_at,
                                    timer_at,
                                    timer_trace,
                                }),
                                None => {
                                    tracing::error!(
                                        partition = p,
                                        offset = message.offset(),
                                        "changelog record does not decode; skipped"
                                    );
                                    continue;
                                }
                            }
                        }
                    };
                    if let Some((store, high)) = restoring.partitions.get_mut(&p) {
                        store.restore_packed(message.key().unwrap_or_default(), value);
                        if message.offset() + 1 >= *high {
                            done.push(p);
                        }
                    }
                }
            }
        }
        let mut complete = Vec::new();
        let mut finished = TopicPartitionList::new();
        for p in done {
            if let Some((store, _)) = restoring.partitions.remove(&p) {
                self.stores.insert(p, store);
                complete.push(p);
                finished.add_partition(&self.changelog, p);
            }
        }
        if !complete.is_empty() {
            let _ = restoring.consumer.incremental_unassign(&finished);
            consumer
                .resume(&self.input_partitions(complete.iter().copied()))
                .map_err(|e| Step::Fatal(format!("resuming restored partitions: {e}")))?;
            tracing::debug!(partitions = ?complete, "partitions restored");
        }
        if restoring.partitions.is_empty() {
            let entries: usize = self.stores.values().map(StateStore::len).sum();
            let packed: usize = self.stores.values().map(StateStore::packed_bytes).sum();
            self.metrics.restored_records.inc_by(restoring.records);
            self.metrics
                .restore_seconds
                .observe(restoring.started.elapsed().as_secs_f64());
            self.update_state_gauge();
            self.partitions_ready.set(true);
            tracing::info!(
                records = restoring.records,
                entries,
                packed_bytes = packed,
                elapsed_ms = restoring.started.elapsed().as_millis(),
                "state restored"
            );
        } else {
            self.restoring = Some(restoring);
        }
        Ok(())
    }

    /// A record of a partition whose store is not complete (fetched before
    /// its pause took effect, or never restored): pause the partition and
    /// seek back to the record, so it is read again once the partition is
    /// restored and resumed.
    fn hold_back(
        &mut self,
        consumer: &BaseConsumer<StreamContext<P>>,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), Step> {
        let p = message.partition();
        consumer
            .pause(&self.input_partitions([p]))
            .map_err(|e| Step::Fatal(format!("pausing [{p}]: {e}")))?;
        consumer
            .seek(
                message.topic(),
                p,
                Offset::Offset(message.offset()),
                self.txns.call_timeout(),
            )
            .map_err(|e| Step::Fatal(format!("seeking back [{p}]: {e}")))?;
        let known = self.to_restore.contains(&p)
            || self
                .restoring
                .as_ref()
                .is_some_and(|r| r.partitions.contains_key(&p));
        if !known {
            self.partitions_ready.set(false);
            self.to_restore.push(p);
        }
        Ok(())
    }

    /// A changelog value as the store keeps it (the bare datum in the state's
    /// own schema), retrying while the registry is unreachable; `None` when
    /// it does not decode.
    fn state_datum(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>, Step> {
        let mut backoff = crate::backoff::Backoff::brief();
        loop {
            match self
                .handle
                .block_on(self.codec.own_datum::<P::State>(bytes))
            {
                Ok(value) => return Ok(Some(value)),
                Err(e) if e.is_retriable() => {
                    if self.shutdown.is_cancelled() {
                        return Err(Step::Fatal("shutdown during state restore".into()));
                    }
                    tracing::warn!(error = %e, "registry unavailable during restore; retrying");
                    std::thread::sleep(backoff.next_delay());
                }
                Err(e) => {
                    tracing::error!(error = %e, "changelog value does not decode");
                    return Ok(None);
                }
            }
        }
    }

    /// After a fatal error the open transaction may hold the offset of a record
    /// that was not fully processed: it must never commit. Abort it (best
    /// effort; the broker aborts it anyway when the transaction times out or the
    /// next instance with this transactional id starts).
    fn poison(&mut self) {
        self.poisoned = true;
        if self.txn.take().is_some() {
            self.txns.abort_once();
        }
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<StreamContext<P>>, tpl: &TopicPartitionList) {
        if self.txn.is_some() && !self.poisoned {
            let result = if consumer.assignment_lost() {
                tracing::warn!("assignment lost: aborting the open transaction");
                self.abort()
            } else {
                self.commit(consumer).or_else(|step| match step {
                    Step::Retry(_, message) => {
                        tracing::warn!(%message, "commit before revocation failed; aborting");
                        self.abort()
                    }
                    fatal @ Step::Fatal(_) => Err(fatal),
                })
            };
            if let Err(Step::Fatal(message) | Step::Retry(_, message)) = result {
                self.fatal = Some(message);
            }
        }
        let revoked: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        for element in tpl.elements() {
            let topic = self.declared(element.topic());
            let _ = self
                .metrics
                .consumer_lag
                .remove_label_values(&[topic, &element.partition().to_string()]);
        }
        // An eager rebalance revokes every partition and then assigns most of
        // them back: keep the stores (committed, or rolled back to the last
        // commit) with their changelog end offset, and take them back in
        // `start_restore` when nobody wrote to the changelog in between.
        // Not when the process is about to exit (a static member whose
        // session timed out): each park asks the broker for an end offset,
        // and with the broker away that was a second per partition before
        // the restart.
        let park = self.fatal.is_none()
            && !self.poisoned
            && consumer.context().session.fatal().is_none()
            && !matches!(
                consumer.rebalance_protocol(),
                RebalanceProtocol::Cooperative
            );
        let mut kept = Vec::new();
        for p in &revoked {
            let Some(store) = self.stores.remove(p) else {
                continue;
            };
            if park && !store.is_dirty() {
                // One short request, no retries: the callback must stay short,
                // and a store not parked is only restored again.
                let timeout = self.txns.call_timeout().min(Duration::from_secs(1));
                match self
                    .txns
                    .client()
                    .fetch_watermarks(&self.changelog, *p, timeout)
                {
                    Ok((_, end)) => {
                        self.parked.insert(*p, (store, end));
                        kept.push(*p);
                    }
                    Err(error) => {
                        tracing::warn!(partition = p, %error, "revoked store dropped");
                    }
                }
            }
        }
        self.to_restore.retain(|p| !revoked.contains(p));
        if let Some(restoring) = self.restoring.as_mut() {
            let mut stop = TopicPartitionList::new();
            for p in &revoked {
                if restoring.partitions.remove(p).is_some() {
                    stop.add_partition(&self.changelog, *p);
                }
            }
            if stop.count() > 0 {
                let _ = restoring.consumer.incremental_unassign(&stop);
            }
            if restoring.partitions.is_empty() {
                self.restoring = None;
            }
        }
        self.update_state_gauge();
        tracing::info!(partitions = ?revoked, parked = ?kept, "partitions revoked");
    }

    fn on_assign(&mut self, consumer: &BaseConsumer<StreamContext<P>>, tpl: &TopicPartitionList) {
        // A partition may end in markers past the group's commit (an
        // upstream's, or a previous owner's fences): looked at once drained.
        self.unsettled = true;
        let new: Vec<i32> = tpl
            .elements()
            .iter()
            .map(|e| e.partition())
            .filter(|p| {
                !self.stores.contains_key(p)
                    && !self.to_restore.contains(p)
                    && !self
                        .restoring
                        .as_ref()
                        .is_some_and(|r| r.partitions.contains_key(p))
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        tracing::info!(partitions = ?new, "partitions assigned");
        if new.is_empty() {
            // Parked stores that did not come back belong to someone else now.
            self.parked.clear();
        } else {
            // Nothing is read here: the loop looks at them before its next
            // poll (`start_restore`); until then they are paused.
            self.partitions_ready.set(false);
            if let Err(error) = consumer.pause(&self.input_partitions(new.iter().copied())) {
                self.fatal = Some(format!("pausing assigned partitions: {error}"));
                return;
            }
            self.to_restore.extend(new);
        }
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        self.metrics
            .assigned_partitions
            .set(i64::try_from(assigned).unwrap_or(0));
        self.update_state_gauge();
        if self.restoring.is_none() && self.to_restore.is_empty() {
            self.partitions_ready.set(true);
        }
    }
}

/// The consumer's context: rebalance callbacks and statistics.
struct StreamContext<P: Processor> {
    core: Arc<Mutex<Core<P>>>,
    session: crate::kafka::SessionWatch,
    fetch: FetchWatch,
}

impl<P: Processor> ClientContext for StreamContext<P> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.session.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let restoring = {
            let core = lock(&self.core);
            core.restoring.is_some() || !core.to_restore.is_empty()
        };
        if let Some(fatal) = self.fetch.observe(&statistics, restoring) {
            lock(&self.core).fatal = Some(fatal);
        }
    }
}

impl<P: Processor> ConsumerContext for StreamContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => lock(&self.core).on_revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.core).on_assign(consumer, tpl);
        }
    }
}

/// Everything [`run`] needs besides the processor.
#[derive(Debug, Clone)]
pub struct StreamEnv {
    /// Kafka settings (bootstrap, prefix, pod name, pass-through).
    pub kafka: KafkaArgs,
    /// Runner settings.
    pub args: StreamArgs,
    /// Graceful shutdown budget.
    pub drain_timeout: Duration,
    /// Registry codec.
    pub codec: Codec,
    /// Metrics of the stage.
    pub metrics: StageMetrics,
    /// Readiness of the stage (the runner adds `partitions`, then calls
    /// [`Readiness::started`]: register any other check before calling [`run`]).
    pub readiness: Readiness,
}

/// Retries a metadata call that fails transiently (leaders moving, a broker
/// restarting) for up to 10 s.
fn retry_metadata<T>(f: impl Fn() -> KafkaResult<T>) -> KafkaResult<T> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < until => {
                tracing::debug!(%error, "metadata call failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Runs `processor` over the spec's inputs until `shutdown`, exactly once.
///
/// # Errors
/// [`StreamError::Setup`] when start-up fails, [`StreamError::Fatal`] on a fatal
/// Kafka error (exit non-zero), [`StreamError::DrainTimeout`] when shutdown overran.
pub async fn run<P: Processor>(
    env: StreamEnv,
    spec: StreamSpec,
    processor: P,
    shutdown: CancellationToken,
) -> Result<(), StreamError> {
    let StreamEnv {
        kafka,
        args,
        drain_timeout,
        codec,
        metrics,
        readiness,
    } = env;
    args.validate(drain_timeout).map_err(StreamError::Setup)?;
    if spec.inputs.is_empty() {
        return Err(StreamError::Setup("a stream needs an input topic".into()));
    }
    let partitions_ready = readiness.check("partitions");
    // The last check a stream stage registers: from here on /readyz reports
    // what is pending instead of `starting`.
    readiness.started();
    let stage = spec.stage;
    let inputs: Vec<(&'static str, String)> =
        spec.inputs.iter().map(|t| (*t, kafka.topic(t))).collect();
    let changelog = kafka.topic(spec.changelog);

    // Co-partitioning: the changelog has exactly the partitions of every input.
    crate::kafka::check_co_partitioned(
        crate::kafka::client_config(&kafka, &format!("{stage}-probe")),
        inputs.iter().map(|(_, full)| full.clone()).collect(),
        changelog.clone(),
        Vec::new(),
    )
    .await
    .map_err(StreamError::Setup)?;

    let txns =
        init_transactions(&kafka, &spec, &inputs, &changelog, args.transaction_timeout).await?;
    tracing::info!(group = %group_id(&kafka, stage), "consumer group");

    let restore_config = crate::kafka::restore_config(&kafka, stage);

    let batch_linger = args.batch_linger.unwrap_or(spec.batch_linger);
    let core = Arc::new(Mutex::new(Core {
        stage,
        batch_linger,
        commit_interval: args.commit_interval,
        prefix: kafka.topic_prefix.clone(),
        inputs: inputs.clone(),
        changelog,
        state_ttl: spec.state_ttl,
        processor,
        stores: BTreeMap::new(),
        txns,
        codec,
        handle: Handle::current(),
        metrics: metrics.clone(),
        txn: None,
        rewind: false,
        fatal: None,
        poisoned: false,
        restore_config,
        to_restore: Vec::new(),
        restoring: None,
        parked: BTreeMap::new(),
        partitions_ready,
        shutdown: shutdown.clone(),
        unsettled: false,
        last_commit: Instant::now(),
    }));

    let consumer = create_consumer(&kafka, &args, stage, &inputs, batch_linger, &core, metrics)?;
    let input_names: Vec<String> = inputs.iter().map(|(_, f)| f.clone()).collect();
    let loop_shutdown = shutdown.clone();
    let task = tokio::task::spawn_blocking(move || {
        stream_loop(
            &consumer,
            &core,
            &input_names,
            &args,
            drain_timeout,
            &loop_shutdown,
        )
    });
    join_loop(task, &shutdown, drain_timeout).await
}

/// The transactional producers; `init_transactions` fences an earlier
/// instance with the same transactional ids and aborts what it left open,
/// and `end_pending` ends what it left pending outside a transaction.
async fn init_transactions(
    kafka: &KafkaArgs,
    spec: &StreamSpec,
    inputs: &[(&'static str, String)],
    changelog: &str,
    transaction_timeout: Duration,
) -> Result<Transactions, StreamError> {
    let (kafka, stage) = (kafka.clone(), spec.stage);
    let group = group_id(&kafka, stage);
    let topic = inputs.first().map(|(_, full)| full.clone());
    // Not the changelog: what an earlier instance left pending there is
    // followed by this instance's own writes of the same keys (it does the
    // same input again, from the same committed state), and a fence there
    // would move every partition's end offset, so that each start made the
    // other instances restore the stores they parked in an eager rebalance
    // (see `on_revoke`).
    let outputs = crate::txn::fenced_topics(&kafka, &spec.outputs, Some(changelog));
    tokio::task::spawn_blocking(move || {
        Transactions::init_for_group(
            &kafka,
            stage,
            transaction_timeout,
            &group,
            topic.as_deref(),
            &outputs,
        )
    })
    .await
    .map_err(|e| StreamError::Setup(e.to_string()))?
    .map_err(StreamError::Setup)
}

/// The stage's read-committed consumer in its group, its context watching
/// the session, the fetches and the rebalances (which go to `core`).
fn create_consumer<P: Processor>(
    kafka: &KafkaArgs,
    args: &StreamArgs,
    stage: &'static str,
    inputs: &[(&'static str, String)],
    batch_linger: Duration,
    core: &Arc<Mutex<Core<P>>>,
    metrics: StageMetrics,
) -> Result<BaseConsumer<StreamContext<P>>, StreamError> {
    let mut consumer_config = crate::kafka::consumer_config(kafka, stage, &group_id(kafka, stage));
    consumer_config
        .set(
            "statistics.interval.ms",
            crate::fetchwatch::STATISTICS_INTERVAL_MS,
        )
        .set("enable.partition.eof", "false");
    crate::kafka::fetch_lingering(&mut consumer_config, &kafka.properties(), batch_linger);
    crate::kafka::join_group(
        &mut consumer_config,
        &args.group,
        &transactional_id(kafka, stage),
    );
    if inputs.len() > 1 {
        consumer_config.set("partition.assignment.strategy", "range");
    }
    let context = StreamContext {
        core: Arc::clone(core),
        session: crate::kafka::SessionWatch::new(args.group.static_membership),
        fetch: FetchWatch::new(
            inputs.iter().map(|(_, full)| full.clone()).collect(),
            &kafka.topic_prefix,
            metrics,
        ),
    };
    consumer_config
        .create_with_context(context)
        .map_err(|e| StreamError::Setup(format!("consumer: {e}")))
}

/// Waits for the loop's thread; once `shutdown` is cancelled, for at most
/// the drain budget and a margin for closing the consumer.
async fn join_loop(
    task: tokio::task::JoinHandle<Result<(), StreamError>>,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> Result<(), StreamError> {
    tokio::pin!(task);
    tokio::select! {
        joined = &mut task => joined.map_err(|e| StreamError::Fatal(e.to_string()))?,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(drain_timeout + Duration::from_secs(5), &mut task).await {
                Ok(joined) => joined.map_err(|e| StreamError::Fatal(e.to_string()))?,
                Err(_) => Err(StreamError::DrainTimeout(drain_timeout)),
            }
        }
    }
}

fn stream_loop<P: Processor>(
    consumer: &BaseConsumer<StreamContext<P>>,
    core: &Mutex<Core<P>>,
    inputs: &[String],
    args: &StreamArgs,
    drain_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let result = consume(consumer, core, args, drain_timeout, shutdown);
    if result.is_err() {
        // The consumer is closed after this returns; its revoke callback must
        // not commit what a fatal error interrupted.
        lock(core).poison();
    }
    result
}

fn consume<P: Processor>(
    consumer: &BaseConsumer<StreamContext<P>>,
    core: &Mutex<Core<P>>,
    args: &StreamArgs,
    drain_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let mut backoff = crate::backoff::Backoff::brief();
    let mut last_sweep = Instant::now();
    let mut last_timers = Instant::now();
    let mut last_restore = Instant::now();
    let mut drained = true;
    while !shutdown.is_cancelled() {
        {
            let mut c = lock(core);
            c.txns.beat();
            if let Some(message) = c.fatal.take() {
                return Err(StreamError::Fatal(message));
            }
            if c.rewind {
                c.rewind(consumer).map_err(fatal_error)?;
            }
            if !c.to_restore.is_empty() {
                let partitions = std::mem::take(&mut c.to_restore);
                c.start_restore(consumer, &partitions)
                    .map_err(fatal_error)?;
            }
            // Restoring shares the thread with processing: a slice whenever
            // the input is drained, else every other RESTORE_SLICE.
            if c.restoring.is_some() && (drained || last_restore.elapsed() >= RESTORE_SLICE * 2) {
                c.restore_slice(consumer).map_err(fatal_error)?;
                last_restore = Instant::now();
            }
        }
        if let Some(message) = consumer.context().session.fatal() {
            return Err(StreamError::Fatal(message));
        }
        let timeout = lock(core).poll_timeout();
        let polled = consumer.poll(timeout);
        // Nothing buffered: the batch so far is all there is to commit.
        drained = polled.is_none();
        let mut c = lock(core);
        if let Some(message) = c.fatal.take() {
            return Err(StreamError::Fatal(message));
        }
        let mut step = match &polled {
            None | Some(Err(KafkaError::PartitionEOF(_))) => Ok(()),
            Some(Ok(message)) if !c.stores.contains_key(&message.partition()) => {
                c.hold_back(consumer, message).map_err(fatal_error)?;
                Ok(())
            }
            Some(Ok(message)) => c.process(message),
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                return Err(StreamError::Fatal(format!("consumer: {code}")));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "consumer error");
                Ok(())
            }
        };
        if step.is_ok() && last_timers.elapsed() >= args.timer_interval {
            step = c.fire_timers(args.max_batch).map(|fired| {
                // A full batch means more may be due: look again at once.
                if fired < args.max_batch {
                    last_timers = Instant::now();
                }
            });
        }
        if step.is_ok() && last_sweep.elapsed() >= args.state_sweep_interval {
            last_sweep = Instant::now();
            step = c.sweep();
        }
        if step.is_ok() && (c.due(args) || (drained && c.lingered())) {
            step = c.commit(consumer);
        }
        if step.is_ok() && c.positions_due(drained) {
            step = c.commit_positions(consumer);
        }
        match step {
            Ok(()) => backoff.reset(),
            Err(Step::Fatal(message)) => return Err(StreamError::Fatal(message)),
            Err(Step::Retry(reason, message)) => {
                tracing::warn!(reason, %message, "aborting the batch; it will be retried");
                c.metrics.retries.with_label_values(&[reason]).inc();
                c.abort().map_err(fatal_error)?;
                c.rewind(consumer).map_err(fatal_error)?;
                drop(c);
                let until = Instant::now() + backoff.next_delay();
                // Backing off (at most 5 s, far below max.poll.interval.ms); the
                // shutdown token is checked every 20 ms.
                while Instant::now() < until && !shutdown.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    drain(consumer, core, drain_timeout)
}

fn fatal_error(step: Step) -> StreamError {
    match step {
        Step::Fatal(message) | Step::Retry(_, message) => StreamError::Fatal(message),
    }
}

/// Whether a commit on shutdown went through; one that failed and can be
/// retried is aborted (the next owner does the batch again).
fn on_shutdown<P: Processor>(
    c: &mut Core<P>,
    committed: Result<(), Step>,
) -> Result<bool, StreamError> {
    match committed {
        Ok(()) => Ok(true),
        Err(Step::Fatal(message)) => Err(StreamError::Fatal(message)),
        Err(Step::Retry(_, message)) => {
            tracing::warn!(%message, "commit on shutdown failed; aborting");
            c.abort().map_err(fatal_error)?;
            Ok(false)
        }
    }
}

fn drain<P: Processor>(
    consumer: &BaseConsumer<StreamContext<P>>,
    core: &Mutex<Core<P>>,
    drain_timeout: Duration,
) -> Result<(), StreamError> {
    {
        let mut c = lock(core);
        c.txns.limit_call_timeout(drain_timeout);
        if c.txn.is_some() {
            let committed = c.commit(consumer);
            if on_shutdown(&mut c, committed)? {
                tracing::info!("open transaction committed on shutdown");
            }
        }
        // The next owner of a partition then starts at its end, and the
        // group's lag reads zero meanwhile.
        if c.txn.is_none() && !c.rewind && c.unsettled {
            let settled = c.commit_positions(consumer);
            on_shutdown(&mut c, settled)?;
        }
    }
    // Leaving the group: the revoke callback runs here with nothing left to commit.
    consumer.unsubscribe();
    let until = Instant::now() + drain_timeout;
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("stream stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewind_starts_over_only_where_nothing_was_committed() {
        use rdkafka::error::RDKafkaErrorCode;
        assert_eq!(
            rewind_offset(Offset::Offset(42), Ok(())).ok(),
            Some(Offset::Offset(42))
        );
        assert_eq!(
            rewind_offset(Offset::Invalid, Ok(())).ok(),
            Some(Offset::Beginning)
        );
        let unstable = KafkaError::OffsetFetch(RDKafkaErrorCode::UnstableOffsetCommit);
        assert!(rewind_offset(Offset::Invalid, Err(unstable)).is_err());
    }

    #[test]
    fn ids_follow_the_documented_scheme() {
        let kafka = KafkaArgs {
            bootstrap_servers: "x:9092".into(),
            topic_prefix: "staging.".into(),
            pod_name: "si-normalize-7d9f-abcde".into(),
        };
        assert_eq!(group_id(&kafka, "normalize"), "staging.si-normalize");
        assert_eq!(
            transactional_id(&kafka, "normalize"),
            "staging.si-normalize-si-normalize-7d9f-abcde"
        );
        let config = transactional_producer_config(&kafka, "normalize", Duration::from_secs(30));
        assert_eq!(config.get("transaction.timeout.ms"), Some("30000"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn settings_are_checked_against_each_other() {
        let ok = StreamArgs::default();
        assert!(ok.validate(Duration::from_secs(20)).is_ok());
        let short_txn = StreamArgs {
            transaction_timeout: Duration::from_millis(500),
            ..StreamArgs::default()
        };
        assert!(short_txn.validate(Duration::from_secs(20)).is_err());
        let no_batch = StreamArgs {
            max_batch: 0,
            ..StreamArgs::default()
        };
        assert!(no_batch.validate(Duration::from_secs(20)).is_err());
        assert!(ok.validate(Duration::from_millis(50)).is_err());
    }
}
