//! The exactly-once driver for a stage whose records finish out of order:
//! egress, where an operation may wait seconds for its sender's rate, minutes
//! for its retries, while the operations read after it finish first.
//!
//! [`crate::stream`] handles a record completely before it reads the next
//! one; this driver hands each record to a [`Deferred`] processor that either
//! finishes it at once or starts it and reports its [`Finished`] outputs
//! later, from its own tasks, on a channel. Both drivers commit through the
//! same [`Transactions`].
//!
//! # Offsets
//!
//! A partition's records are committed only as a contiguous prefix: one
//! transaction writes the outputs of every finished record up to the first
//! unfinished one, and the offset after the last of them. A record finished
//! beyond an unfinished one waits in memory. So a committed offset never
//! passes an unfinished record, and a record's outputs are committed exactly
//! when its offset is: after a crash the next owner reads again from the
//! first unfinished record, and everything after it that had finished is
//! neither visible nor lost.
//!
//! The offset after a record stops short of the commit marker that follows
//! an upstream transaction's last record. A partition with nothing pending
//! whose position has moved past the group's committed offset (over
//! markers only) has that position committed, in a transaction of offsets
//! alone, once the input has been drained for 5 s since the last commit or
//! an assignment (as in [`crate::stream`]), and on shutdown: a caught-up
//! partition's committed offset is its end.
//!
//! A transaction is committed as soon as the input is drained and a record
//! finished since the last commit (low load: an output is readable at once),
//! and at the latest every `commit_interval` (high load: one transaction for
//! many). A failed commit is aborted and the same outputs go into the next
//! one; the consumer does not rewind, because nothing read is forgotten.
//!
//! The transactions are written by a thread of their own (`si-committer`),
//! one at a time: the loop goes on reading and starting records while one
//! commits, and what finishes meanwhile goes into the next, begun once the
//! one before has ended. So a record read during a commit (5–10 ms on a
//! busy broker) starts at once instead of after it. A prefix leaves the
//! pending records only when its transaction committed, and before
//! partitions are revoked (and on shutdown) the loop waits for the
//! transaction in flight, so the offsets are what they were with the
//! commit in the loop.
//!
//! # Partitions
//!
//! Each assignment of a partition gets a new generation: a record carries the
//! generation it was read in ([`RecordId`]), and a [`Finished`] of an older
//! generation (its partition was revoked meanwhile) is dropped, because the
//! partition's next owner reads that record again. Before partitions are
//! revoked their finished prefix is committed (unless the assignment was
//! lost); [`Deferred::revoked`] then tells the processor to stop their work,
//! and [`Deferred::assigned`] lets it load what it keeps per partition
//! (egress's ledger) before the partition's first record is read.
//!
//! # Backpressure
//!
//! A partition holding `max_pending_per_partition` uncommitted records is
//! paused, and resumed at half of that.
//!
//! # Shutdown
//!
//! No record is read after the token is cancelled; the driver waits, at most
//! `drain_timeout`, until the processor's in-flight count is zero, commits
//! what finished and leaves the group. Records that had not finished are read
//! again by the next owner.
//!
//! # Failures
//!
//! Fenced, a fatal producer error, a failed abort, a lost static-member
//! session, held input partitions none of which fetches
//! ([`crate::fetchwatch`]) or an error of the processor end [`run`] with an
//! error: the process exits and is restarted, and resumes from the committed
//! offsets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use crate::admin::{Readiness, ReadinessCheck};
use crate::config::{GroupArgs, KafkaArgs, declared};
use crate::fetchwatch::FetchWatch;
use crate::metrics::StageMetrics;
use crate::stream::SETTLE_AFTER;
use crate::txn::Transactions;

/// One record a finished input record writes, committed with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Full topic name.
    pub topic: String,
    /// Key.
    pub key: Vec<u8>,
    /// Value; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// The partition, when the key's hash must not choose it.
    pub partition: Option<i32>,
    /// The record's `traceparent` header.
    pub traceparent: Option<String>,
}

impl Output {
    /// A record with a value, partitioned by its key.
    #[must_use]
    pub fn record(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: Some(payload),
            partition: None,
            traceparent,
        }
    }

    /// A tombstone for `key` in `partition` of `topic`.
    #[must_use]
    pub fn tombstone(topic: impl Into<String>, partition: i32, key: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: None,
            partition: Some(partition),
            traceparent: None,
        }
    }
}

/// Where an input record was read, and in which assignment of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The partition's assignment generation when the record was read.
    pub generation: u64,
}

/// A record's end: what it writes.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The record.
    pub id: RecordId,
    /// Its outputs (none is fine: the offset still moves past it).
    pub outputs: Vec<Output>,
}

/// What [`Deferred::start`] did with a record.
#[derive(Debug)]
pub enum Started {
    /// Finished at once, with these outputs.
    Finished(Vec<Output>),
    /// Running: its [`Finished`] comes on the completion channel.
    Running,
}

/// A processor whose records finish out of order.
pub trait Deferred: Send + 'static {
    /// A record read from the input: finish it now, or start it and send its
    /// [`Finished`] (with this `id`) on the completion channel later. Called
    /// once per offset and generation.
    ///
    /// # Errors
    /// A reason to stop the process.
    fn start(&mut self, message: &BorrowedMessage<'_>, id: RecordId) -> Result<Started, String>;

    /// `partition` is assigned with `generation`, before any of its records
    /// is read.
    ///
    /// # Errors
    /// A reason to stop the process.
    fn assigned(&mut self, partition: i32, generation: u64) -> Result<(), String>;

    /// `partition` is revoked: its work should stop (its records are read
    /// again by the next owner).
    fn revoked(&mut self, partition: i32);

    /// After each turn of the loop: records read and not committed, and
    /// partitions paused for backpressure.
    fn backlog(&mut self, _pending: usize, _paused: usize) {}
}

/// The driver's settings.
#[derive(Debug, Clone)]
pub struct DeferredArgs {
    /// The longest time between commits under load.
    pub commit_interval: Duration,
    /// Uncommitted records per partition at which it is paused.
    pub max_pending_per_partition: usize,
    /// `transaction.timeout.ms`; transactional calls time out after it (at most
    /// [`crate::txn::MAX_CALL_TIMEOUT`]).
    pub transaction_timeout: Duration,
    /// How long shutdown waits for in-flight work.
    pub drain_timeout: Duration,
    /// Group membership.
    pub group: GroupArgs,
}

/// What the driver runs with.
pub struct DeferredEnv {
    /// Kafka settings.
    pub kafka: KafkaArgs,
    /// Stage name (transactional id, group id, client ids).
    pub stage: &'static str,
    /// Declared input topic name.
    pub input: &'static str,
    /// The topics the processor writes (as declared in `topics.yaml`),
    /// besides the dead letters, which the driver adds: fenced at start (see
    /// [`crate::txn::Transactions::end_pending`]).
    pub outputs: Vec<&'static str>,
    /// Settings.
    pub args: DeferredArgs,
    /// Stage metrics.
    pub metrics: StageMetrics,
    /// `/readyz`: the driver registers `partitions`, ready after the first assignment.
    pub readiness: Readiness,
}

/// The processor's side of the driver: where its tasks report, and how much
/// work they have in flight (the drain waits for zero).
pub struct Work {
    /// Finished records.
    pub completions: mpsc::UnboundedReceiver<Finished>,
    /// Work that must end before a drain commits (started and not reported).
    pub in_flight: Arc<AtomicUsize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Part {
    generation: u64,
    /// Read and not committed, by offset: `None` while the record runs.
    pending: BTreeMap<i64, Option<Vec<Output>>>,
    paused: bool,
}

impl Part {
    /// The finished prefix: its outputs and the offset after it.
    fn finished_prefix(&self) -> Option<(i64, Vec<&Output>)> {
        let mut next = None;
        let mut outputs = Vec::new();
        for (offset, done) in &self.pending {
            let Some(done) = done else { break };
            outputs.extend(done);
            next = Some(offset + 1);
        }
        next.map(|n| (n, outputs))
    }
}

/// One partition's finished prefix in a transaction.
struct Prefix {
    partition: i32,
    /// The partition's assignment when the prefix was taken.
    generation: u64,
    /// The offset after the prefix: committed with it.
    next: i64,
    /// Input records in the prefix.
    records: usize,
    outputs: Vec<Output>,
}

/// A transaction for the committer thread.
struct Job {
    batch: Vec<Prefix>,
    group: Option<ConsumerGroupMetadata>,
}

/// What became of a [`Job`].
struct Done {
    /// Each prefix's partition, generation and next offset.
    prefixes: Vec<(i32, u64, i64)>,
    records: usize,
    /// How long the transaction took, begin to commit.
    took: Duration,
    result: KafkaResult<()>,
    /// After a failed commit that is not fatal, the abort's outcome.
    abort: Option<KafkaResult<()>>,
}

/// The thread that commits, one transaction at a time in the order handed
/// over, so that the loop goes on reading and starting records while a
/// transaction commits: egress's next sends do not wait for the statuses of
/// the sends before them (a commit takes 5–10 ms on a loaded broker).
/// Exactly-once is the same as committing in the loop: a transaction
/// begins only after the one before it ended, each commits a contiguous
/// prefix per partition, and a prefix leaves the pending records only once
/// its transaction committed.
struct Committer {
    /// `None` once closed: the thread ends after its last job.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    done: std::sync::mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A job was handed over and its [`Done`] not taken yet.
    busy: bool,
}

/// What the committer thread writes with.
struct Writer {
    txns: Arc<Transactions>,
    metrics: StageMetrics,
    input: String,
    prefix: String,
}

/// The committer thread is gone: it panicked, or was closed.
#[derive(Debug, PartialEq, Eq)]
struct Ended;

impl Committer {
    fn start(writer: Writer) -> std::io::Result<Self> {
        Self::spawn(move |job| writer.commit(job))
    }

    /// Starts the thread, which runs `commit` on each job handed over.
    fn spawn(commit: impl Fn(Job) -> Done + Send + 'static) -> std::io::Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (outbox, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(COMMITTER_THREAD.into())
            .spawn(move || {
                for job in inbox {
                    if outbox.send(commit(job)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            busy: false,
        })
    }

    /// Hands `job` to the thread; it is then busy until [`Committer::outcome`]
    /// gives the job's [`Done`].
    fn hand(&mut self, job: Job) -> Result<(), Ended> {
        self.jobs
            .as_ref()
            .ok_or(Ended)?
            .send(job)
            .map_err(|_| Ended)?;
        self.busy = true;
        Ok(())
    }

    /// The outcome of the job the thread is busy with: waits for it when
    /// `wait`, else gives it only when it is already there. `None` when not
    /// busy, or not waiting and not done yet.
    fn outcome(&mut self, wait: bool) -> Option<Result<Done, Ended>> {
        if !self.busy {
            return None;
        }
        let done = if wait {
            self.done.recv().map_err(|_| Ended)
        } else {
            match self.done.try_recv() {
                Ok(done) => Ok(done),
                Err(std::sync::mpsc::TryRecvError::Empty) => return None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(Ended),
            }
        };
        self.busy = false;
        Some(done)
    }

    /// Ends the thread after its last job, and waits for it.
    fn close(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Writes `job`'s outputs and offsets in one transaction; aborts it
    /// when that fails and is not fatal.
    fn commit(&self, job: Job) -> Done {
        let started = Instant::now();
        let records = job.batch.iter().map(|p| p.records).sum();
        let span = tracing::info_span!(
            parent: None,
            "transaction",
            messaging.batch.message_count = records,
            outcome = Empty,
        );
        if crate::trace::exporting() {
            let traces = job
                .batch
                .iter()
                .flat_map(|p| &p.outputs)
                .filter_map(|o| o.traceparent.as_deref());
            for traceparent in traces.take(crate::trace::MAX_LINKS as usize) {
                crate::trace::link(&span, traceparent);
            }
        }
        let _entered = span.enter();
        let result = tracing::info_span!("commit").in_scope(|| self.write(&job));
        let took = started.elapsed();
        span.record(
            "outcome",
            if result.is_ok() {
                "committed"
            } else {
                "aborted"
            },
        );
        let abort = match &result {
            Err(error) if !crate::txn::is_fatal(error) => Some(self.txns.abort()),
            _ => None,
        };
        Done {
            prefixes: job
                .batch
                .iter()
                .map(|p| (p.partition, p.generation, p.next))
                .collect(),
            records,
            took,
            result,
            abort,
        }
    }

    fn write(&self, job: &Job) -> KafkaResult<()> {
        self.txns.begin()?;
        let mut offsets = TopicPartitionList::new();
        for prefix in &job.batch {
            for output in &prefix.outputs {
                let mut record = BaseRecord::<[u8], [u8]>::to(&output.topic).key(&output.key);
                if let Some(payload) = &output.payload {
                    record = record.payload(payload);
                }
                if let Some(partition) = output.partition {
                    record = record.partition(partition);
                }
                if let Some(traceparent) = &output.traceparent {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: crate::trace::TRACEPARENT,
                        value: Some(traceparent.as_str()),
                    }));
                }
                self.txns.send(record)?;
                self.metrics
                    .records_out
                    .with_label_values(&[declared(&self.prefix, &output.topic)])
                    .inc();
            }
            offsets.add_partition_offset(
                &self.input,
                prefix.partition,
                Offset::Offset(prefix.next),
            )?;
        }
        self.txns.commit(&offsets, job.group.as_ref())
    }
}

/// The name of the deferred driver's committer thread.
const COMMITTER_THREAD: &str = "si-committer";

/// The fatal error of a stage whose committer thread is gone.
const COMMITTER_ENDED: &str = "the committer thread ended";

struct Core<D: Deferred> {
    processor: D,
    parts: BTreeMap<i32, Part>,
    next_generation: u64,
    txns: Arc<Transactions>,
    committer: Committer,
    input: String,
    prefix: String,
    metrics: StageMetrics,
    max_pending: usize,
    fatal: Option<String>,
    partitions_ready: ReadinessCheck,
    /// Whether a commit or an assignment since the last
    /// [`Core::commit_positions`] may have left positions past the group's
    /// committed offsets, and when the last commit (or failed read of those
    /// offsets) was: settling waits [`SETTLE_AFTER`] from it.
    unsettled: bool,
    last_commit: Instant,
}

impl<D: Deferred> Core<D> {
    fn on_message(&mut self, message: &BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        let Some(part) = self.parts.get(&partition) else {
            return;
        };
        if part.pending.contains_key(&offset) {
            return;
        }
        let id = RecordId {
            partition,
            offset,
            generation: part.generation,
        };
        let declared = declared(&self.prefix, message.topic()).to_owned();
        self.metrics
            .records_in
            .with_label_values(&[&declared])
            .inc();
        match self.processor.start(message, id) {
            Ok(started) => {
                let done = match started {
                    Started::Finished(outputs) => Some(outputs),
                    Started::Running => None,
                };
                if let Some(part) = self.parts.get_mut(&partition) {
                    part.pending.insert(offset, done);
                }
            }
            Err(fatal) => self.fatal = Some(fatal),
        }
    }

    fn on_finished(&mut self, done: Finished) {
        if let Some(part) = self.parts.get_mut(&done.id.partition)
            && part.generation == done.id.generation
            && let Some(slot) = part.pending.get_mut(&done.id.offset)
        {
            *slot = Some(done.outputs);
        }
    }

    fn backpressure<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (p, part) in &mut self.parts {
            if !part.paused && part.pending.len() >= self.max_pending {
                part.paused = true;
                pause.add_partition(&self.input, *p);
            } else if part.paused && part.pending.len() <= self.max_pending / 2 {
                part.paused = false;
                resume.add_partition(&self.input, *p);
            }
        }
        if pause.count() > 0
            && let Err(error) = consumer.pause(&pause)
        {
            tracing::warn!(%error, "pause failed");
        }
        if resume.count() > 0
            && let Err(error) = consumer.resume(&resume)
        {
            tracing::warn!(%error, "resume failed");
        }
        let pending = self.parts.values().map(|p| p.pending.len()).sum();
        let paused = self.parts.values().filter(|p| p.paused).count();
        self.processor.backlog(pending, paused);
    }

    /// Hands every partition's finished prefix (of `only`, when given) to
    /// the committer, unless it is still busy with the transaction before;
    /// whether it was handed over (nothing finished: nothing to hand).
    fn start_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        only: Option<&[i32]>,
    ) -> bool {
        if self.committer.busy {
            return false;
        }
        let batch: Vec<Prefix> = self
            .parts
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o.contains(p)))
            .filter_map(|(p, part)| {
                part.finished_prefix().map(|(next, outputs)| Prefix {
                    partition: *p,
                    generation: part.generation,
                    next,
                    records: part.pending.range(..next).count(),
                    outputs: outputs.into_iter().cloned().collect(),
                })
            })
            .collect();
        self.send(consumer, batch)
    }

    /// Commits, in a transaction of offsets alone, the position of every
    /// partition with nothing pending that is past the group's committed
    /// offset ([`crate::kafka::positions_past_committed`]), as
    /// [`crate::stream`] does once its input has been drained for
    /// [`SETTLE_AFTER`]. Whether it started one.
    fn commit_positions<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        if self.committer.busy {
            return false;
        }
        let ahead = match crate::kafka::positions_past_committed(
            consumer,
            |topic, partition| {
                topic == self.input
                    && self
                        .parts
                        .get(&partition)
                        .is_some_and(|part| part.pending.is_empty())
            },
            self.txns.call_timeout(),
        ) {
            Ok(ahead) => ahead,
            Err(error) => {
                // Asked again once SETTLE_AFTER has passed once more.
                tracing::warn!(%error, "reading the committed offsets failed; trying again later");
                self.metrics
                    .retries
                    .with_label_values(&["transaction"])
                    .inc();
                self.last_commit = Instant::now();
                return false;
            }
        };
        self.unsettled = false;
        let batch: Vec<Prefix> = ahead
            .into_iter()
            .filter_map(|(_, partition, next)| {
                Some(Prefix {
                    partition,
                    generation: self.parts.get(&partition)?.generation,
                    next,
                    records: 0,
                    outputs: Vec::new(),
                })
            })
            .collect();
        self.send(consumer, batch)
    }

    /// Hands `batch` to the committer; whether it took it.
    fn send<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, batch: Vec<Prefix>) -> bool {
        if batch.is_empty() {
            return false;
        }
        let job = Job {
            batch,
            group: consumer.group_metadata(),
        };
        if self.committer.hand(job).is_ok() {
            true
        } else {
            self.fatal = Some(COMMITTER_ENDED.into());
            false
        }
    }

    /// Takes the outcome of the transaction the committer is busy with:
    /// waits for it when `wait`, else only when it is already there.
    fn settle(&mut self, wait: bool) {
        let Some(done) = self.committer.outcome(wait) else {
            return;
        };
        let Ok(done) = done else {
            self.fatal = Some(COMMITTER_ENDED.into());
            return;
        };
        match done.result {
            Ok(()) => {
                for (p, generation, next) in &done.prefixes {
                    if let Some(part) = self.parts.get_mut(p)
                        && part.generation == *generation
                    {
                        part.pending = part.pending.split_off(next);
                    }
                }
                self.unsettled = true;
                self.last_commit = Instant::now();
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics.commit_seconds.observe(done.took.as_secs_f64());
                #[allow(clippy::cast_precision_loss)]
                self.metrics.batch_records.observe(done.records as f64);
            }
            Err(error) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                if crate::txn::is_fatal(&error) {
                    self.fatal = Some(format!("transaction: {error}"));
                    return;
                }
                tracing::warn!(%error, "commit failed; aborted, the same records go into the next transaction");
                self.metrics
                    .retries
                    .with_label_values(&["transaction"])
                    .inc();
                if let Some(Err(abort)) = done.abort {
                    self.fatal = Some(format!("abort_transaction: {abort}"));
                }
            }
        }
    }

    /// Commits every partition's finished prefix (of `only`) now: after the
    /// transaction the committer is busy with, and waiting for its own.
    fn commit_now<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, only: Option<&[i32]>) {
        self.settle(true);
        if self.fatal.is_none() && self.start_commit(consumer, only) {
            self.settle(true);
        }
    }

    fn on_revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.input)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect();
        // The transaction in flight may hold records of these partitions:
        // its outcome is taken before they go.
        self.settle(true);
        if !consumer.assignment_lost() && self.fatal.is_none() {
            self.commit_now(consumer, Some(&revoked));
        }
        for p in &revoked {
            self.parts.remove(p);
            self.processor.revoked(*p);
        }
        self.metrics
            .assigned_partitions
            .set(i64::try_from(self.parts.len()).unwrap_or(0));
        tracing::info!(?revoked, "partitions revoked");
    }

    fn on_assign(&mut self, tpl: &TopicPartitionList) {
        // A partition may end in markers past the group's commit: looked at
        // once drained (`commit_positions`).
        self.unsettled = true;
        for element in tpl.elements_for_topic(&self.input) {
            let p = element.partition();
            let generation = self.next_generation;
            self.next_generation += 1;
            self.txns.beat();
            if let Err(fatal) = self.processor.assigned(p, generation) {
                self.fatal = Some(fatal);
                return;
            }
            tracing::info!(partition = p, generation, "partition assigned");
            self.parts.insert(
                p,
                Part {
                    generation,
                    pending: BTreeMap::new(),
                    paused: false,
                },
            );
        }
        self.partitions_ready.set(true);
        self.metrics
            .assigned_partitions
            .set(i64::try_from(self.parts.len()).unwrap_or(0));
    }
}

/// Consumer context: rebalances go through the core; statistics to the fetch watch.
struct DeferredContext<D: Deferred> {
    core: Arc<Mutex<Core<D>>>,
    session: crate::kafka::SessionWatch,
    fetch: FetchWatch,
}

impl<D: Deferred> ClientContext for DeferredContext<D> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.session.log(level, fac, log_message);
    }

    // A partition's state is loaded in the rebalance callback, before any
    // statistics of it are served: never restoring here.
    fn stats(&self, statistics: Statistics) {
        if let Some(fatal) = self.fetch.observe(&statistics, false) {
            lock(&self.core).fatal = Some(fatal);
        }
    }
}

impl<D: Deferred> ConsumerContext for DeferredContext<D> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => lock(&self.core).on_revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.core).on_assign(tpl);
        }
    }
}

/// Runs `processor` over `env.input` until `shutdown`, committing each
/// partition's finished prefix exactly once.
///
/// # Errors
/// When start-up fails, or on a fatal error (fenced, a fatal producer error, a
/// failed abort, a lost static session, an error of the processor).
pub async fn run<D: Deferred>(
    env: DeferredEnv,
    processor: D,
    work: Work,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let DeferredEnv {
        kafka,
        stage,
        input,
        outputs,
        args,
        metrics,
        readiness,
    } = env;
    let txns = {
        let (kafka, timeout) = (kafka.clone(), args.transaction_timeout);
        let (group, topic) = (crate::stream::group_id(&kafka, stage), kafka.topic(input));
        let outputs = crate::txn::fenced_topics(&kafka, &outputs, None);
        tokio::task::spawn_blocking(move || {
            Transactions::init_for_group(&kafka, stage, timeout, &group, Some(&topic), &outputs)
        })
        .await?
        .map_err(anyhow::Error::msg)?
    };
    let partitions_ready = readiness.check("partitions");
    // The last check: /readyz now reports what is pending.
    readiness.started();
    let (input_topic, metrics_for_lag) = (kafka.topic(input), metrics.clone());
    let txns = Arc::new(txns);
    let committer = Committer::start(Writer {
        txns: Arc::clone(&txns),
        metrics: metrics.clone(),
        input: kafka.topic(input),
        prefix: kafka.topic_prefix.clone(),
    })?;
    let core = Arc::new(Mutex::new(Core {
        processor,
        parts: BTreeMap::new(),
        next_generation: 1,
        txns,
        committer,
        input: kafka.topic(input),
        prefix: kafka.topic_prefix.clone(),
        metrics,
        max_pending: args.max_pending_per_partition,
        fatal: None,
        partitions_ready,
        unsettled: false,
        last_commit: Instant::now(),
    }));
    let group = crate::stream::group_id(&kafka, stage);
    let mut config = crate::kafka::consumer_config(&kafka, stage, &group);
    config.set("enable.partition.eof", "false").set(
        "statistics.interval.ms",
        crate::fetchwatch::STATISTICS_INTERVAL_MS,
    );
    crate::kafka::join_group(
        &mut config,
        &args.group,
        &crate::txn::transactional_id(&kafka, stage),
    );
    let consumer: BaseConsumer<DeferredContext<D>> =
        config.create_with_context(DeferredContext {
            core: Arc::clone(&core),
            session: crate::kafka::SessionWatch::new(args.group.static_membership),
            fetch: FetchWatch::new(vec![input_topic], &kafka.topic_prefix, metrics_for_lag),
        })?;
    tracing::info!(%group, "consumer group");
    tokio::task::spawn_blocking(move || {
        let result = drive(&consumer, &core, work, &args, &shutdown);
        drop(consumer);
        lock(&core).committer.close();
        result
    })
    .await?
}

/// The blocking loop: poll, start, collect what finished, commit; drain on shutdown.
fn drive<D: Deferred>(
    consumer: &BaseConsumer<DeferredContext<D>>,
    core: &Mutex<Core<D>>,
    mut work: Work,
    args: &DeferredArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let input = lock(core).input.clone();
    consumer.subscribe(&[&input])?;
    let mut last_commit = Instant::now();
    let mut finished = false;
    while !shutdown.is_cancelled() {
        if let Some(fatal) = lock(core).fatal.take() {
            anyhow::bail!(fatal);
        }
        if let Some(fatal) = consumer.context().session.fatal() {
            anyhow::bail!(fatal);
        }
        let polled = consumer.poll(Duration::from_millis(10));
        let mut c = lock(core);
        c.settle(false);
        // While the committer is busy, its calls are what the watchdog
        // watches: one stuck there must not be hidden by the loop's turns.
        if !c.committer.busy {
            c.txns.beat();
        }
        match &polled {
            Some(Ok(message)) => c.on_message(message),
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                anyhow::bail!("consumer: {code}");
            }
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            None => {}
        }
        let drained = polled.is_none();
        drop(polled);
        while let Ok(done) = work.completions.try_recv() {
            c.on_finished(done);
            finished = true;
        }
        c.backpressure(consumer);
        if drained && !finished && c.unsettled && c.last_commit.elapsed() >= SETTLE_AFTER {
            c.commit_positions(consumer);
        }
        // While the committer is busy the loop goes on; what finished
        // meanwhile goes into the next transaction, begun once it is free.
        if ((finished && drained) || last_commit.elapsed() >= args.commit_interval)
            && !c.committer.busy
        {
            c.start_commit(consumer, None);
            last_commit = Instant::now();
            finished = false;
        }
    }
    // Drain: no record is read any more; wait for the work in flight, commit what finished.
    let until = Instant::now() + args.drain_timeout;
    while work.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        let mut c = lock(core);
        c.txns.beat();
        while let Ok(done) = work.completions.try_recv() {
            c.on_finished(done);
        }
    }
    {
        let mut c = lock(core);
        c.txns.limit_call_timeout(args.drain_timeout);
        while let Ok(done) = work.completions.try_recv() {
            c.on_finished(done);
        }
        c.commit_now(consumer, None);
        if c.fatal.is_none() && c.commit_positions(consumer) {
            c.settle(true);
        }
        if let Some(fatal) = c.fatal.take() {
            anyhow::bail!(fatal);
        }
    }
    consumer.unsubscribe();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: i64) -> Vec<Output> {
        vec![Output::record("t", n.to_string(), vec![], None)]
    }

    fn job() -> Job {
        Job {
            batch: Vec::new(),
            group: None,
        }
    }

    #[test]
    fn a_committer_gives_back_each_outcome_once() {
        let mut committer = Committer::spawn(|_| Done {
            prefixes: vec![(0, 1, 7)],
            records: 3,
            took: Duration::ZERO,
            result: Ok(()),
            abort: None,
        })
        .expect("spawned");
        assert!(committer.outcome(true).is_none(), "nothing handed over yet");
        committer.hand(job()).expect("the thread takes the job");
        let done = committer
            .outcome(true)
            .expect("busy")
            .expect("the thread lives");
        assert_eq!((done.prefixes, done.records), (vec![(0, 1, 7)], 3));
        assert!(!committer.busy);
        assert!(committer.outcome(false).is_none(), "taken already");
        committer.close();
        assert_eq!(committer.hand(job()), Err(Ended), "closed");
    }

    #[test]
    fn a_committer_whose_thread_panicked_says_it_ended() {
        let mut committer =
            Committer::spawn(|_| panic!("an injected panic in a commit")).expect("spawned");
        committer.hand(job()).expect("the thread takes the job");
        assert!(
            matches!(committer.outcome(true), Some(Err(Ended))),
            "the panic ends the thread, and the job has no outcome"
        );
        assert!(
            !committer.busy,
            "nothing is awaited from a thread that is gone"
        );
        assert_eq!(
            committer.hand(job()),
            Err(Ended),
            "no thread takes another job"
        );
    }

    #[test]
    fn only_the_finished_prefix_is_committed() {
        let mut part = Part {
            generation: 1,
            pending: BTreeMap::new(),
            paused: false,
        };
        assert!(part.finished_prefix().is_none(), "nothing read");
        part.pending.insert(10, None);
        part.pending.insert(11, Some(out(11)));
        assert!(
            part.finished_prefix().is_none(),
            "11 finished, but 10 still runs"
        );
        part.pending.insert(10, Some(vec![]));
        part.pending.insert(12, None);
        part.pending.insert(13, Some(out(13)));
        let (next, outputs) = part.finished_prefix().expect("10 and 11 finished");
        assert_eq!(next, 12, "the offset after 11, never past the running 12");
        assert_eq!(outputs, out(11).iter().collect::<Vec<_>>());
    }
}
