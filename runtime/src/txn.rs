//! A stage's transactional producer and the calls every exactly-once loop
//! makes on it, in one place: both drivers, [`crate::stream`] (records
//! handled in order) and [`crate::deferred`] (records that finish out of
//! order, egress), begin, produce, send the consumer offsets and commit
//! through [`Transactions`], so the protocol and its failure handling are
//! written and tested once.
//!
//! # The protocol
//!
//! A batch is `begin` → `send`s → `commit(offsets, group)`: the consumer
//! offsets go into the transaction with the consumer's group metadata
//! (KIP-447), so a zombie whose partitions moved away can never commit.
//!
//! # Failures
//!
//! - A timed-out `commit_transaction` is called again in place
//!   ([`crate::kafka::retry_transactional`]); aborting instead would conflict
//!   with the call still in progress.
//! - `send_offsets_to_transaction` is called once ([`crate::kafka::send_offsets_once`]).
//! - Any other error is the caller's: [`is_fatal`] says whether the process
//!   must exit (fenced, or fatal to librdkafka), else the caller calls
//!   [`Transactions::abort`] (repeated while the broker is away) and does the
//!   batch again.
//!
//! # A loop stuck in librdkafka
//!
//! Every call is made with a timeout, but after a broker restart the chaos
//! test saw a stage's loop thread stop in a call that never returned (no log
//! line, no session timeout, nothing read for minutes). One such call is
//! known: librdkafka 2.12's `send_offsets_to_transaction` waits for ever
//! when the group coordinator it had cached went away (the coordinator
//! request's timeout is never checked, librdkafka issue 5456); a thread dump
//! of a stage stuck 25 s after the broker was back showed it there. So a
//! watchdog thread exits the process (status 70) in two cases:
//!
//! - a transactional call has not returned [`CALL_GRACE`] after its own
//!   timeout: librdkafka ignored the timeout, and the message names the call;
//! - the loop has not checked in ([`Transactions::beat`], at every turn and
//!   around every transactional call) for [`Transactions::stall_limit`]:
//!   three call timeouts plus 20 s, so never while a call or its retries
//!   still run as designed. (The deferred driver commits on a thread of its
//!   own; its loop checks in only while no transaction is in flight, so a
//!   committer stuck between calls is not hidden by the loop's turns.)
//!
//! The container is restarted, takes its partitions back and resumes from the
//! committed offsets; nothing of the open transaction was committed, and the
//! next instance's `init_transactions` aborts it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::polled::PolledProducer;

/// The key of the records [`Transactions::end_pending`] writes to a stage's
/// output partitions in a transaction it aborts (no value): read-committed
/// readers never see one; a read-uncommitted reader should skip them.
pub const FENCE_KEY: &str = "si-fence";

/// How often a retriable transactional call (a timed-out commit, say) is made
/// again in place before the caller aborts.
pub const TXN_RETRIES: u32 = 5;

/// The longest a transactional call may take before it is retried or the
/// batch aborted. A commit takes milliseconds; a call that takes this long
/// is waiting for a broker that is away. It also sets how soon the watchdog
/// exits a process whose call ignored it ([`CALL_GRACE`] later: 15 s) or
/// whose loop stopped elsewhere ([`Transactions::stall_limit`]: 50 s).
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the thread that exits the process when the loop stalls.
pub const WATCHDOG_THREAD: &str = "si-txn-watchdog";

/// How long past its own timeout a transactional call may run before the
/// watchdog takes it for one that never returns. Generous: librdkafka's
/// calls return within milliseconds of their timeout, and a busy machine
/// only delays that by scheduling.
pub const CALL_GRACE: Duration = Duration::from_secs(5);

/// The transactional id of a stage instance: `<SI_TOPIC_PREFIX>si-<stage>-<POD_NAME>`.
/// Its second producer's is this with [`SECOND_ID_SUFFIX`] (see [`Transactions`]).
#[must_use]
pub fn transactional_id(kafka: &KafkaArgs, stage: &str) -> String {
    format!("{}si-{stage}-{}", kafka.topic_prefix, kafka.pod_name)
}

/// What the transactional id of an instance's second producer adds to
/// [`transactional_id`]. `_` never occurs in a pod name (a DNS-1123
/// subdomain), so it cannot be another pod's first id.
pub const SECOND_ID_SUFFIX: &str = "_2";

/// Settings of the transactional producer of a stage instance.
///
/// Tuned for latency, because every hop of the pipeline pays a commit
/// (README, "Where a hop's time goes"; `cargo bench -p si-runtime --bench hop`):
///
/// - `linger.ms` 0: the commit waits for every record to be acknowledged,
///   so a record held back to fill a batch delays the commit by as much. Under
///   load batches still form while earlier requests are in flight.
/// - `retry.backoff.ms` and `retry.backoff.max.ms` 5: a transaction that
///   begins while the markers of the one before are still being written is
///   answered `CONCURRENT_TRANSACTIONS` and asked again after the backoff;
///   librdkafka's 100 ms (doubling up to 1 s) made that the largest part of a
///   hop at 100 msg/s.
///
/// A `KAFKA_LINGER_MS`, `KAFKA_RETRY_BACKOFF_MS` or `KAFKA_RETRY_BACKOFF_MAX_MS`
/// pass-through wins.
#[must_use]
pub fn transactional_producer_config(
    kafka: &KafkaArgs,
    stage: &str,
    transaction_timeout: Duration,
) -> ClientConfig {
    let mut config = crate::kafka::durable_producer_config(kafka, stage);
    config
        .set("transactional.id", transactional_id(kafka, stage))
        .set(
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        );
    crate::kafka::set_unless_passed(
        &mut config,
        &kafka.properties(),
        &[
            ("linger.ms", "0"),
            ("retry.backoff.ms", "5"),
            ("retry.backoff.max.ms", "5"),
        ],
    );
    config
}

/// Whether `error` (from a producer call) means this instance was fenced.
#[must_use]
pub fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// Whether the process must exit after `error`: fenced by a newer instance,
/// or an error librdkafka marks fatal. Anything else is aborted and retried.
#[must_use]
pub fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal()) || is_fenced(error)
}

/// A stage instance's transactional producers: two, with the transactional
/// ids [`transactional_id`] and the same with [`SECOND_ID_SUFFIX`], taking
/// turns, one transaction each.
///
/// Why two: a transaction's commit returns once the coordinator has logged
/// it, and the coordinator then writes the markers. Until they are written,
/// the same transactional id's next `AddPartitionsToTxn` is refused with
/// `CONCURRENT_TRANSACTIONS`, and librdkafka asks again only after a fixed
/// 20 ms (not `retry.backoff.ms`): at 300 msg/s the broker refused a
/// quarter of the pipeline's transactions that way (README, "Where a hop's
/// time goes"). The other producer's id has no transaction in the way, and
/// by its next turn its own markers are long written. Order is kept: a
/// transaction begins only after the one before committed (its records are
/// in the log before the next one's), and a group's offsets committed last
/// in the log win, whatever order the markers complete in.
pub struct Transactions {
    producers: [PolledProducer<Deliveries>; 2],
    /// The index of the producer whose transaction is open, or was last.
    turn: AtomicUsize,
    /// The timeout of each transactional call, in ms (a drain shortens it,
    /// possibly from another thread than the one committing).
    call_timeout_ms: AtomicU64,
    /// What the watchdog watches.
    pulse: Arc<Pulse>,
}

/// The loop's signs of life, shared with its watchdog thread.
struct Pulse {
    epoch: Instant,
    /// When the loop last checked in (ms since `epoch`).
    beat: AtomicU64,
    /// The transactional call in progress, if any.
    call: Mutex<Option<Call>>,
}

/// A librdkafka call in progress.
#[derive(Clone, Copy, Debug)]
struct Call {
    name: &'static str,
    since: Instant,
    timeout: Duration,
}

/// The transactional producer's context: counts the records handed to the
/// producer whose delivery librdkafka has not reported yet, so that a commit
/// waits for the last acknowledgement and is woken by it (the producer's
/// polling thread reports each record once: acknowledged, failed, or purged
/// by an abort).
#[derive(Default)]
pub struct Deliveries {
    outstanding: Mutex<u64>,
    settled: Condvar,
}

impl Deliveries {
    fn outstanding(&self) -> std::sync::MutexGuard<'_, u64> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A record is about to be handed to the producer. Counted before, so
    /// that its report can never come first.
    fn sending(&self) {
        *self.outstanding() += 1;
    }

    /// A record was reported, or the producer did not take it.
    fn settle(&self) {
        let mut outstanding = self.outstanding();
        *outstanding = outstanding.saturating_sub(1);
        if *outstanding == 0 {
            self.settled.notify_all();
        }
    }

    /// Waits until no record is outstanding, at most `timeout`.
    fn wait(&self, timeout: Duration) {
        let outstanding = self.outstanding();
        let _ = self
            .settled
            .wait_timeout_while(outstanding, timeout, |n| *n > 0);
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {
        self.settle();
    }
}

impl Pulse {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            beat: AtomicU64::new(0),
            call: Mutex::new(None),
        }
    }

    fn call(&self) -> std::sync::MutexGuard<'_, Option<Call>> {
        self.call.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the process should exit now, if it should: a call overdue by more
    /// than [`CALL_GRACE`], else no check-in for `limit`.
    fn verdict(&self, now: Instant, limit: Duration) -> Option<String> {
        let call = *self.call();
        if let Some(call) = call {
            let running = now.saturating_duration_since(call.since);
            if running > call.timeout + CALL_GRACE {
                return Some(format!(
                    "{} has not returned {}s after it began (its timeout {}s): librdkafka ignored the timeout",
                    call.name,
                    running.as_secs(),
                    call.timeout.as_secs()
                ));
            }
        }
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        let silent = now
            .saturating_duration_since(self.epoch)
            .saturating_sub(last);
        (silent > limit).then(|| {
            let within = call.map_or(String::new(), |call| format!(" (in {})", call.name));
            format!(
                "the Kafka loop has not moved for {}s{within} (limit {}s): stuck in a librdkafka call",
                silent.as_secs(),
                limit.as_secs()
            )
        })
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The full names of the topics a stage's [`Transactions::end_pending`]
/// fences: its declared `outputs` and the dead-letter topic every driver
/// writes, each once, and not `unfenced` (a full name).
pub(crate) fn fenced_topics(
    kafka: &KafkaArgs,
    outputs: &[&'static str],
    unfenced: Option<&str>,
) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for name in outputs.iter().chain(&[si_schemas::topics::DEAD_LETTER]) {
        let full = kafka.topic(name);
        if !topics.contains(&full) && unfenced != Some(full.as_str()) {
            topics.push(full);
        }
    }
    topics
}

impl Transactions {
    /// Creates the producers of `stage` and calls `init_transactions` on
    /// each, which fences an earlier instance with the same transactional id
    /// and aborts what it left open. Transactional calls time out after
    /// `transaction_timeout`, at most [`MAX_CALL_TIMEOUT`]. Blocks: call it off the async
    /// workers (`spawn_blocking`).
    ///
    /// # Errors
    /// When librdkafka refuses the settings or `init_transactions` fails.
    pub fn init(
        kafka: &KafkaArgs,
        stage: &str,
        transaction_timeout: Duration,
    ) -> Result<Self, String> {
        let first = transactional_id(kafka, stage);
        let second = format!("{first}{SECOND_ID_SUFFIX}");
        let create = |id: &str| -> Result<PolledProducer<Deliveries>, String> {
            let mut config = transactional_producer_config(kafka, stage, transaction_timeout);
            config.set("transactional.id", id);
            let producer: BaseProducer<Deliveries> = config
                .create_with_context(Deliveries::default())
                .map_err(|e| format!("producer: {e}"))?;
            let producer = PolledProducer::new(producer).map_err(|e| format!("producer: {e}"))?;
            producer
                .init_transactions(Duration::from_secs(60))
                .map_err(|e| format!("init_transactions ({id}): {e}"))?;
            Ok(producer)
        };
        let producers = [create(&first)?, create(&second)?];
        tracing::info!(
            transactional_ids = %format_args!("{first}, {second}"),
            "transactional producers ready"
        );
        let txns = Self {
            producers,
            turn: AtomicUsize::new(0),
            call_timeout_ms: AtomicU64::new(millis(transaction_timeout.min(MAX_CALL_TIMEOUT))),
            pulse: Arc::new(Pulse::new()),
        };
        txns.start_watchdog(stage);
        Ok(txns)
    }

    /// [`Transactions::init`], then [`Transactions::end_pending`] for the
    /// consumer `group` of the stage (when it reads a `topic`) and the topics
    /// it writes (`outputs`, full names): what both drivers do before their
    /// consumer joins. Blocks like `init`.
    ///
    /// # Errors
    /// Those of both.
    pub fn init_for_group(
        kafka: &KafkaArgs,
        stage: &str,
        transaction_timeout: Duration,
        group: &str,
        topic: Option<&str>,
        outputs: &[String],
    ) -> Result<Self, String> {
        let txns = Self::init(kafka, stage, transaction_timeout)?;
        txns.end_pending(kafka, stage, group, topic, outputs)?;
        Ok(txns)
    }

    /// Ends what an earlier instance with the same transactional ids left
    /// pending without a transaction the coordinator knows of: for each of
    /// the two producers, one transaction that writes a fence record (key
    /// [`FENCE_KEY`], no value) to every partition of every topic in
    /// `outputs`, adds the offsets of `group` (partition 0 of `topic`, any
    /// offset) when there is a `topic`, and is aborted. The abort markers end, on each of those partitions,
    /// every record and offset commit of this producer still pending there,
    /// whatever its epoch; nothing is committed, and read-committed readers
    /// never see a fence.
    ///
    /// Why: a broker that shuts down while it completes a transaction can
    /// answer the commit and then lose it (the chaos test: after the restart
    /// the coordinator knew nothing of the transaction, and neither its
    /// output records nor its offsets had markers). Such leftovers hang: the
    /// offsets kept every restarted instance waiting for its committed
    /// offsets (a read-committed offset fetch waits while any commit of the
    /// group is pending), and a hanging output record was committed later by
    /// this producer's next commit on its partition, beside the copy the
    /// restarted instance wrote when it did the input again. Aborting both
    /// makes the input's one committed result the one done again. Called
    /// after [`Transactions::init`] and before the consumer joins; it costs
    /// two transactions. Blocks like `init`.
    ///
    /// # Errors
    /// When the producer is fenced or fails fatally, or the abort fails.
    pub fn end_pending(
        &self,
        kafka: &KafkaArgs,
        stage: &str,
        group: &str,
        topic: Option<&str>,
        outputs: &[String],
    ) -> Result<(), String> {
        // Once per producer: each begin takes the other's turn.
        for _ in &self.producers {
            self.begin()
                .map_err(|e| format!("begin_transaction: {e}"))?;
            let fenced = self.send_fences(outputs)?;
            if let Some(topic) = topic {
                self.add_group_offsets(kafka, stage, group, topic)?;
            }
            self.abort()
                .map_err(|e| format!("abort_transaction: {e}"))?;
            tracing::info!(
                partitions = fenced,
                "earlier instances' pending writes ended"
            );
        }
        Ok(())
    }

    /// Writes a fence record to every partition of `outputs`, and waits until
    /// they are written (a partition is in the transaction only then). A
    /// topic the broker does not know has no partitions to fence.
    fn send_fences(&self, outputs: &[String]) -> Result<usize, String> {
        let mut fenced = 0;
        for topic in outputs {
            self.beat();
            let partitions = match self
                .producer()
                .client()
                .fetch_metadata(Some(topic), self.call_timeout())
            {
                Ok(metadata) => metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len()),
                // Unfenced partitions could keep what an earlier instance
                // left there: the start fails, and the next one tries again.
                Err(error) => return Err(format!("no metadata of {topic} to fence it: {error}")),
            };
            for partition in 0..partitions {
                let partition = i32::try_from(partition).map_err(|e| e.to_string())?;
                let record: BaseRecord<'_, str, [u8]> =
                    BaseRecord::to(topic).partition(partition).key(FENCE_KEY);
                self.send(record)
                    .map_err(|e| format!("fence on {topic} [{partition}]: {e}"))?;
                fenced += 1;
            }
        }
        self.beat();
        if !self.wait_delivered() {
            return Err(format!(
                "fences not written within {}s",
                self.call_timeout().as_secs()
            ));
        }
        Ok(fenced)
    }

    /// Adds the offsets of `group` to the open transaction (partition 0 of
    /// `topic`, any offset: the transaction is aborted).
    fn add_group_offsets(
        &self,
        kafka: &KafkaArgs,
        stage: &str,
        group: &str,
        topic: &str,
    ) -> Result<(), String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        // A consumer that never joins: its metadata carries no member id or
        // generation, which the broker accepts for a transactional commit.
        let consumer: BaseConsumer = crate::kafka::consumer_config(kafka, stage, group)
            .create()
            .map_err(|e| format!("consumer: {e}"))?;
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| "no consumer group metadata".to_owned())?;
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(topic, 0, rdkafka::Offset::Offset(0))
            .map_err(|e| format!("offsets: {e}"))?;
        let sent = crate::kafka::send_offsets_once(|| {
            self.call("send_offsets_to_transaction", self.call_timeout(), || {
                self.producer().send_offsets_to_transaction(
                    &offsets,
                    &metadata,
                    self.call_timeout(),
                )
            })
        });
        if let Err(error) = &sent {
            if is_fatal(error) {
                return Err(format!("send_offsets_to_transaction: {error}"));
            }
            tracing::debug!(%error, "offsets of the pending-offsets sweep not sent");
        }
        Ok(())
    }

    /// How long the loop may go without checking in before the process exits.
    #[must_use]
    pub fn stall_limit(&self) -> Duration {
        self.call_timeout() * 3 + Duration::from_secs(20)
    }

    /// The loop is alive: called at every turn and around every call.
    pub fn beat(&self) {
        let now = u64::try_from(self.pulse.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.pulse.beat.store(now, Ordering::Relaxed);
    }

    /// Makes the transactional call `name`, which should return within
    /// `timeout`, under the watchdog's eye.
    fn call<T>(&self, name: &'static str, timeout: Duration, f: impl FnOnce() -> T) -> T {
        self.beat();
        *self.pulse.call() = Some(Call {
            name,
            since: Instant::now(),
            timeout,
        });
        let result = f();
        *self.pulse.call() = None;
        self.beat();
        result
    }

    fn start_watchdog(&self, stage: &str) {
        // Weak: the watchdog ends with its transactions (a stage stopped in
        // a process that goes on, as in tests, must not exit it later).
        let (pulse, limit) = (Arc::downgrade(&self.pulse), self.stall_limit());
        let stage = stage.to_owned();
        let spawned = std::thread::Builder::new()
            .name(WATCHDOG_THREAD.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(pulse) = pulse.upgrade() else { return };
                    if let Some(why) = pulse.verdict(Instant::now(), limit) {
                        let message = format!("si-{stage}: {why}; exiting to be restarted");
                        tracing::error!("{message}");
                        eprintln!("{message}");
                        std::process::exit(70);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no watchdog thread: a stuck loop will not be restarted");
        }
    }

    /// The timeout of each transactional call.
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.load(Ordering::Relaxed))
    }

    /// Shortens the calls' timeout to at most `limit` (a drain's budget).
    pub fn limit_call_timeout(&self, limit: Duration) {
        self.call_timeout_ms
            .fetch_min(millis(limit), Ordering::Relaxed);
    }

    /// Begins a transaction.
    ///
    /// # Errors
    /// librdkafka's.
    pub fn begin(&self) -> KafkaResult<()> {
        self.beat();
        self.turn.fetch_xor(1, Ordering::Relaxed);
        self.producer().begin_transaction()
    }

    /// Hands `record` to the producer, waiting while its queue is full.
    ///
    /// # Errors
    /// librdkafka's, other than a full queue.
    pub fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> KafkaResult<()>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let deliveries = self.producer().context();
        loop {
            deliveries.sending();
            match self.producer().send(record) {
                Ok(()) => return Ok(()),
                Err((error, back)) => {
                    deliveries.settle();
                    if !matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(error);
                    }
                    record = back;
                    // Back-pressure: the background thread is delivering.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    /// Sends `offsets` (when there are any) with the consumer's `group`
    /// metadata and commits the transaction.
    ///
    /// # Errors
    /// librdkafka's: see [`is_fatal`].
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> KafkaResult<()> {
        if offsets.count() > 0 {
            let group = group.ok_or_else(|| {
                KafkaError::Subscription("no consumer group metadata yet".to_owned())
            })?;
            crate::kafka::send_offsets_once(|| {
                self.call("send_offsets_to_transaction", self.call_timeout(), || {
                    self.producer()
                        .send_offsets_to_transaction(offsets, group, self.call_timeout())
                })
            })?;
        }
        self.beat();
        // Nothing outstanding, so commit_transaction's own flush does not wait
        // out a 100 ms poll (see wait_delivered).
        self.wait_delivered();
        crate::kafka::retry_transactional("commit_transaction", TXN_RETRIES, || {
            self.call("commit_transaction", self.call_timeout(), || {
                self.producer().commit_transaction(self.call_timeout())
            })
        })
    }

    /// Waits, at most the call timeout, until every record sent is
    /// acknowledged; whether they all were. Woken by the last report rather
    /// than polling. Called before `commit_transaction`, which flushes
    /// first: rust-rdkafka's flush waits in 100 ms polls of an event queue
    /// that the producer's own thread is already serving, so a record
    /// still outstanding added 100 ms to a commit. librdkafka's own count
    /// (what the flush looks at) drops just after the report is handled, so
    /// it is waited for too, briefly.
    fn wait_delivered(&self) -> bool {
        let deadline = Instant::now() + self.call_timeout();
        let deliveries = self.producer().context();
        while self.producer().in_flight_count() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            deliveries.wait(deadline - now);
            if self.producer().in_flight_count() > 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        true
    }

    /// The producer whose transaction is open, or was last.
    fn producer(&self) -> &PolledProducer<Deliveries> {
        &self.producers[self.turn.load(Ordering::Relaxed)]
    }

    /// A producer's client (metadata and watermark requests).
    #[must_use]
    pub fn client(&self) -> &rdkafka::client::Client<Deliveries> {
        self.producer().client()
    }

    /// Aborts the open transaction once, best effort, after a fatal error: the
    /// broker aborts it anyway when it times out or the next instance with
    /// this transactional id starts.
    pub fn abort_once(&self) {
        let _ = self.call("abort_transaction", self.call_timeout(), || {
            self.producer().abort_transaction(self.call_timeout())
        });
    }

    /// Aborts the open transaction, again while the broker is away (see
    /// [`crate::kafka::retry_abort`]).
    ///
    /// # Errors
    /// The last error: the process should exit.
    pub fn abort(&self) -> KafkaResult<()> {
        crate::kafka::retry_abort(|| {
            self.call("abort_transaction", self.call_timeout(), || {
                self.producer().abort_transaction(self.call_timeout())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waiting_for_deliveries_is_woken_by_the_last_one() {
        let deliveries = Arc::new(Deliveries::default());
        deliveries.sending();
        deliveries.sending();
        deliveries.settle();
        // One still outstanding: the wait lasts its whole timeout.
        let started = Instant::now();
        deliveries.wait(Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(*deliveries.outstanding(), 1);

        let reporter = Arc::clone(&deliveries);
        let report = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            reporter.settle();
        });
        let started = Instant::now();
        deliveries.wait(Duration::from_secs(30));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the report, not the timeout"
        );
        assert_eq!(*deliveries.outstanding(), 0);
        report.join().expect("reporter");
        // A report too many (never expected) does not wrap the count.
        deliveries.settle();
        assert_eq!(*deliveries.outstanding(), 0);
    }

    #[test]
    fn a_stage_fences_its_outputs_and_dead_letters_once_each_and_not_what_it_leaves_out() {
        use si_schemas::topics;
        let kafka = KafkaArgs {
            bootstrap_servers: "x:9092".into(),
            topic_prefix: "p.".into(),
            pod_name: "pod-0".into(),
        };
        let outputs = [
            topics::INBOUND,
            topics::DEAD_LETTER,
            topics::INBOUND,
            topics::CONVERSATION_EVENTS,
        ];
        assert_eq!(
            fenced_topics(
                &kafka,
                &outputs,
                Some(&kafka.topic(topics::CONVERSATION_EVENTS))
            ),
            [
                kafka.topic(topics::INBOUND),
                kafka.topic(topics::DEAD_LETTER)
            ]
        );
        assert_eq!(
            fenced_topics(&kafka, &[], None),
            [kafka.topic(topics::DEAD_LETTER)]
        );
    }

    #[test]
    fn a_stage_instance_has_its_own_transactional_id() {
        let kafka = KafkaArgs {
            bootstrap_servers: "x:9092".into(),
            topic_prefix: String::new(),
            pod_name: "pod-0".into(),
        };
        let config = transactional_producer_config(&kafka, "consent", Duration::from_secs(60));
        assert_eq!(config.get("transactional.id"), Some("si-consent-pod-0"));
    }

    #[test]
    fn only_fencing_and_fatal_errors_end_the_process() {
        assert!(is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced
        )));
        assert!(is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::InvalidProducerEpoch
        )));
        assert!(!is_fatal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::RequestTimedOut
        )));
        assert!(!is_fatal(&KafkaError::Subscription("no metadata".into())));
    }

    #[test]
    fn the_watchdog_exits_on_a_call_past_its_timeout_or_a_loop_that_stopped() {
        let limit = Duration::from_secs(50);
        let pulse = Pulse::new();
        let start = pulse.epoch;
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(
            pulse.verdict(at(49), limit),
            None,
            "no call, and within the limit"
        );

        let call = |name| Call {
            name,
            since: at(40),
            timeout: Duration::from_secs(10),
        };
        pulse.beat.store(40_000, Ordering::Relaxed);
        *pulse.call() = Some(call("send_offsets_to_transaction"));
        assert_eq!(
            pulse.verdict(at(40) + Duration::from_secs(10) + CALL_GRACE, limit),
            None,
            "a call may run its timeout and the grace"
        );
        let overdue = pulse
            .verdict(at(56), limit)
            .expect("a call 16 s into a 10 s timeout is overdue");
        assert!(
            overdue.starts_with(
                "send_offsets_to_transaction has not returned 16s after it began (its timeout 10s)"
            ),
            "{overdue}"
        );

        // A call with a long timeout still ends at the loop's stall limit,
        // and the message names it.
        *pulse.call() = Some(Call {
            timeout: Duration::from_secs(600),
            ..call("commit_transaction")
        });
        assert_eq!(pulse.verdict(at(90), limit), None);
        let stalled = pulse.verdict(at(91), limit).expect("51 s without a beat");
        assert!(
            stalled.starts_with(
                "the Kafka loop has not moved for 51s (in commit_transaction) (limit 50s)"
            ),
            "{stalled}"
        );

        *pulse.call() = None;
        pulse.beat.store(91_000, Ordering::Relaxed);
        assert_eq!(
            pulse.verdict(at(92), limit),
            None,
            "the loop checked in again"
        );
    }
}
