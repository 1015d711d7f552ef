//! The Kafka side of egress: one blocking thread polls `twilio.outbound.v1`,
//! hands operations to the senders, and commits finished operations'
//! records together with the consumer offsets in Kafka transactions.
//!
//! # Offsets
//!
//! Operations of one partition finish out of order (different senders and
//! conversations, retries). A partition's finished operations are committed
//! only as a contiguous prefix: the transaction writes their statuses, dead
//! letters, compliance events and ledger tombstones, and the offset after the
//! last of them. An operation finished beyond an unfinished one waits in
//! memory. So a committed offset never passes an unfinished operation, and an
//! operation's status is committed exactly when its offset is.
//!
//! # Ledger
//!
//! On assignment, the partition's ledger (`twilio.egress.ledger.v1`, same
//! partition number) is read to its end: operations Twilio already answered
//! whose status was not committed. When such an operation is read again, it
//! ends with the recorded answer, without a request.
//!
//! # Backpressure
//!
//! A partition holding EGRESS_MAX_PENDING_PER_PARTITION operations is paused,
//! and resumed at half of that.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use si_runtime::admin::ReadinessCheck;
use si_runtime::kafka::{retry_abort, retry_transactional, send_offsets_once};
use si_runtime::metrics::StageMetrics;
use si_schemas::Codec;
use si_schemas::records::{DeadLetterErrorKind, EgressLedgerEntry, OutboundOperation};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use crate::metrics::EgressMetrics;
use crate::outcome::Final;
use crate::sender::{
    Completion, Encoded, Job, Live, Topics, encode_with, now_ms, terminal_records,
};
use crate::twilio::{Endpoints, build_request};

/// Stage name.
pub const STAGE: &str = "egress";

/// How often a retriable transactional call (a timed-out commit, say) is made
/// again in place before the transaction is aborted.
const TXN_RETRIES: u32 = 5;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Part {
    generation: u64,
    /// Read and not committed, by offset: `None` while the operation runs.
    pending: BTreeMap<i64, Option<Completion>>,
    /// Twilio's answers whose status is not committed, by operation id.
    ledger: HashMap<String, EgressLedgerEntry>,
    paused: bool,
}

/// State shared by the loop and the rebalance callbacks.
pub struct Core {
    parts: BTreeMap<i32, Part>,
    producer: ThreadedProducer<DefaultProducerContext>,
    live: Live,
    next_generation: u64,
    input: String,
    topics: Topics,
    restore_config: ClientConfig,
    codec: Codec,
    handle: Handle,
    endpoints: Endpoints,
    metrics: StageMetrics,
    egress_metrics: EgressMetrics,
    jobs: mpsc::UnboundedSender<Job>,
    call_timeout: Duration,
    max_pending: usize,
    fatal: Option<String>,
    partitions_ready: ReadinessCheck,
    shutdown: CancellationToken,
}

/// What the loop needs to build its [`Core`].
pub struct CoreParts {
    /// The initialised transactional producer.
    pub producer: ThreadedProducer<DefaultProducerContext>,
    /// Partition generations shared with the senders.
    pub live: Live,
    /// Full input topic name.
    pub input: String,
    /// Output topics.
    pub topics: Topics,
    /// Client config for ledger restores.
    pub restore_config: ClientConfig,
    /// Codec.
    pub codec: Codec,
    /// Request validation.
    pub endpoints: Endpoints,
    /// Stage metrics.
    pub metrics: StageMetrics,
    /// Egress metrics.
    pub egress_metrics: EgressMetrics,
    /// Jobs to the senders.
    pub jobs: mpsc::UnboundedSender<Job>,
    /// Timeout of transactional calls.
    pub call_timeout: Duration,
    /// Backpressure bound per partition.
    pub max_pending: usize,
    /// `/readyz` check, set after the first assignment.
    pub partitions_ready: ReadinessCheck,
    /// Shutdown.
    pub shutdown: CancellationToken,
}

impl Core {
    /// Builds the core.
    #[must_use]
    pub fn new(p: CoreParts) -> Self {
        Self {
            parts: BTreeMap::new(),
            producer: p.producer,
            live: p.live,
            next_generation: 1,
            input: p.input,
            topics: p.topics,
            restore_config: p.restore_config,
            codec: p.codec,
            handle: Handle::current(),
            endpoints: p.endpoints,
            metrics: p.metrics,
            egress_metrics: p.egress_metrics,
            jobs: p.jobs,
            call_timeout: p.call_timeout,
            max_pending: p.max_pending,
            fatal: None,
            partitions_ready: p.partitions_ready,
            shutdown: p.shutdown,
        }
    }

    fn depth(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    /// Ends an operation at once (no request): encodes its records on the spot.
    fn complete_now(
        &mut self,
        partition: i32,
        offset: i64,
        records: Vec<Encoded>,
        ledger_key: Option<String>,
    ) {
        if let Some(part) = self.parts.get_mut(&partition) {
            let generation = part.generation;
            part.pending.insert(
                offset,
                Some(Completion {
                    partition,
                    offset,
                    generation,
                    records,
                    ledger_key,
                }),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_now(
        &mut self,
        partition: i32,
        offset: i64,
        op: &OutboundOperation,
        end: &Final,
        requests: u32,
        ledger_key: Option<String>,
        traceparent: Option<&str>,
    ) {
        let encoded = self.handle.block_on(terminal_records(
            &self.codec,
            &self.topics,
            op,
            end,
            requests,
            now_ms(),
            traceparent,
            &self.shutdown,
        ));
        match encoded {
            Ok(records) => {
                let code = end
                    .code()
                    .map_or_else(|| "none".to_owned(), |c| c.to_string());
                self.egress_metrics
                    .operations
                    .with_label_values(&[end.label(), &code])
                    .inc();
                self.complete_now(partition, offset, records, ledger_key);
            }
            Err(error) => {
                tracing::error!(%error, "terminal records cannot be encoded; stopping");
                self.fatal = Some(format!("encoding terminal records: {error}"));
            }
        }
    }

    fn on_message<M: Message>(&mut self, message: &M) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(part) = self.parts.get(&partition) else {
            return;
        };
        if part.pending.contains_key(&offset) {
            return;
        }
        self.metrics
            .records_in
            .with_label_values(&[si_schemas::topics::OUTBOUND])
            .inc();
        let received = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == si_runtime::trace::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        let decoded = match message.payload() {
            None => Err("tombstone on twilio.outbound.v1".to_owned()),
            Some(payload) => {
                let mut backoff = si_runtime::backoff::Backoff::brief();
                loop {
                    match self
                        .handle
                        .block_on(self.codec.decode::<OutboundOperation>(payload))
                    {
                        Ok(op) => break Ok(op),
                        Err(error) if error.is_retriable() && !self.shutdown.is_cancelled() => {
                            tracing::warn!(%error, partition, offset, "decoding failed; retrying");
                            std::thread::sleep(backoff.next_delay());
                        }
                        Err(error) if error.is_retriable() => return,
                        Err(error) => break Err(error.to_string()),
                    }
                }
            }
        };
        let op = match decoded {
            Ok(op) => op,
            Err(reason) => {
                tracing::warn!(partition, offset, %reason, "undecodable operation dead-lettered");
                let kind = if message.payload().is_none() {
                    DeadLetterErrorKind::Invalid
                } else {
                    DeadLetterErrorKind::Undecodable
                };
                let record = si_runtime::dlq::dead_letter(STAGE, message, kind, &reason, now_ms());
                self.metrics
                    .dead_letters
                    .with_label_values(&[kind.as_str()])
                    .inc();
                let topic = self.topics.dead_letter.clone();
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                match self.handle.block_on(encode_with(
                    &self.codec,
                    &topic,
                    &record,
                    &self.shutdown,
                )) {
                    Ok(payload) => self.complete_now(
                        partition,
                        offset,
                        vec![Encoded {
                            topic,
                            key,
                            payload,
                            traceparent: received,
                        }],
                        None,
                    ),
                    Err(error) => self.fatal = Some(format!("encoding a dead letter: {error}")),
                }
                return;
            }
        };
        let first_seen = now_ms();
        // The operation's span, a child of the record's trace (the header,
        // else the operation's own `traceparent` field).
        let received = received.or_else(|| op.traceparent.clone());
        let span = tracing::info_span!(
            parent: None,
            "operation",
            si.operation.kind = op.kind.as_str(),
            si.channel = op.channel.key_prefix(),
            messaging.kafka.partition = partition,
            messaging.kafka.offset = offset,
            outcome = Empty,
            otel.status_code = Empty,
            trace_id = Empty,
        );
        si_runtime::trace::continue_from(&span, received.as_deref());
        let traceparent = si_runtime::trace::traceparent_of(&span, received.as_deref());
        si_runtime::trace::record_trace_id(&span, traceparent.as_deref());
        let _entered = span.enter();
        let ledgered = self
            .parts
            .get_mut(&partition)
            .and_then(|p| p.ledger.remove(&op.operation_id));
        if let Some(entry) = ledgered {
            self.egress_metrics.ledger_hits.inc();
            tracing::info!(operation_id = %op.operation_id, "ending with the ledger's answer; not sending again");
            let end = Final::from_ledger(&entry);
            let requests = u32::try_from(entry.attempts).unwrap_or(0);
            span.record("outcome", "ledger");
            self.finish_now(
                partition,
                offset,
                &op,
                &end,
                requests,
                Some(entry.operation_id),
                traceparent.as_deref(),
            );
            return;
        }
        if let Err(error) = build_request(&self.endpoints, &op) {
            let end = Final::DeadLettered {
                reason: format!("invalid operation: {}", error.0),
                code: None,
                http_status: None,
            };
            span.record("outcome", end.label());
            span.record("otel.status_code", "ERROR");
            self.finish_now(
                partition,
                offset,
                &op,
                &end,
                0,
                None,
                traceparent.as_deref(),
            );
            return;
        }
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        part.pending.insert(offset, None);
        let job = Job {
            partition,
            offset,
            generation: part.generation,
            op: Arc::new(op),
            first_seen,
            span: span.clone(),
            traceparent,
        };
        if self.jobs.send(job).is_err() {
            self.fatal = Some("the sender tasks stopped".into());
        }
    }

    fn on_completion(&mut self, done: Completion) {
        if let Some(part) = self.parts.get_mut(&done.partition)
            && part.generation == done.generation
            && let Some(slot) = part.pending.get_mut(&done.offset)
        {
            *slot = Some(done);
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
        let paused = self.parts.values().filter(|p| p.paused).count();
        self.egress_metrics
            .paused_partitions
            .set(i64::try_from(paused).unwrap_or(i64::MAX));
        self.egress_metrics
            .queue_depth
            .set(i64::try_from(self.depth()).unwrap_or(i64::MAX));
    }

    /// Commits every partition's finished prefix (of `only`, when given).
    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, only: Option<&[i32]>) {
        let mut batch: Vec<(i32, i64, Vec<Completion>)> = Vec::new();
        for (p, part) in &self.parts {
            if only.is_some_and(|o| !o.contains(p)) {
                continue;
            }
            let done: Vec<Completion> = part.pending.values().map_while(Clone::clone).collect();
            if let Some(last) = done.last() {
                batch.push((*p, last.offset + 1, done));
            }
        }
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let span = tracing::info_span!(
            parent: None,
            "transaction",
            si.stage = STAGE,
            messaging.batch.message_count = batch.iter().map(|(_, _, done)| done.len()).sum::<usize>(),
            outcome = Empty,
        );
        if si_runtime::trace::exporting() {
            let traces = batch
                .iter()
                .flat_map(|(_, _, done)| done)
                .filter_map(|c| c.records.first().and_then(|r| r.traceparent.as_deref()));
            for traceparent in traces.take(si_runtime::trace::MAX_LINKS as usize) {
                si_runtime::trace::link(&span, traceparent);
            }
        }
        let _entered = span.enter();
        let committed =
            tracing::info_span!("commit").in_scope(|| self.commit_batch(consumer, &batch));
        span.record(
            "outcome",
            if committed.is_ok() {
                "committed"
            } else {
                "aborted"
            },
        );
        match committed {
            Ok(()) => {
                let mut records = 0u64;
                for (p, next, done) in &batch {
                    records += done.len() as u64;
                    if let Some(part) = self.parts.get_mut(p) {
                        part.pending = part.pending.split_off(next);
                    }
                }
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                #[allow(clippy::cast_precision_loss)]
                self.metrics.batch_records.observe(records as f64);
            }
            Err(error) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                let fatal = matches!(&error, KafkaError::Transaction(e) if e.is_fatal())
                    || si_runtime::stream::is_fenced(&error);
                if fatal {
                    self.fatal = Some(format!("transaction: {error}"));
                    return;
                }
                tracing::warn!(%error, "commit failed; aborting and retrying at the next interval");
                let aborted = retry_abort(|| self.producer.abort_transaction(self.call_timeout));
                if let Err(abort) = aborted {
                    self.fatal = Some(format!("abort_transaction: {abort}"));
                }
            }
        }
    }

    fn commit_batch<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        batch: &[(i32, i64, Vec<Completion>)],
    ) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        let mut offsets = TopicPartitionList::new();
        for (p, next, done) in batch {
            for completion in done {
                for record in &completion.records {
                    let mut base = BaseRecord::to(&record.topic)
                        .key(record.key.as_str())
                        .payload(record.payload.as_slice());
                    if let Some(traceparent) = &record.traceparent {
                        base = base.headers(OwnedHeaders::new().insert(Header {
                            key: si_runtime::trace::TRACEPARENT,
                            value: Some(traceparent.as_str()),
                        }));
                    }
                    self.send(base)?;
                    let declared = record
                        .topic
                        .rsplit_once("twilio.")
                        .map_or(record.topic.as_str(), |(_, rest)| rest);
                    self.metrics
                        .records_out
                        .with_label_values(&[declared])
                        .inc();
                }
                if let Some(key) = &completion.ledger_key {
                    self.send(
                        BaseRecord::<str, [u8]>::to(&self.topics.ledger)
                            .partition(*p)
                            .key(key.as_str()),
                    )?;
                }
            }
            offsets.add_partition_offset(&self.input, *p, Offset::Offset(*next))?;
        }
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| KafkaError::Subscription("no consumer group metadata".into()))?;
        send_offsets_once(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, self.call_timeout)
        })?;
        // Nothing outstanding, so commit_transaction's own flush does not
        // wait out a 100 ms poll (see si_runtime::kafka::wait_delivered).
        si_runtime::kafka::wait_delivered(&self.producer, self.call_timeout);
        retry_transactional("commit_transaction", TXN_RETRIES, || {
            self.producer.commit_transaction(self.call_timeout)
        })
    }

    fn send(&self, mut record: BaseRecord<'_, str, [u8]>) -> Result<(), KafkaError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
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
        if !consumer.assignment_lost() && self.fatal.is_none() {
            self.commit(consumer, Some(&revoked));
        }
        for p in &revoked {
            self.parts.remove(p);
            self.live.revoke(*p);
        }
        tracing::info!(?revoked, "partitions revoked");
    }

    fn on_assign(&mut self, tpl: &TopicPartitionList) {
        for element in tpl.elements_for_topic(&self.input) {
            let p = element.partition();
            let ledger = match restore_ledger(
                &self.restore_config,
                &self.topics.ledger,
                p,
                &self.codec,
                &self.handle,
            ) {
                Ok(ledger) => ledger,
                Err(error) => {
                    self.fatal = Some(format!("restoring ledger partition {p}: {error:#}"));
                    return;
                }
            };
            let generation = self.next_generation;
            self.next_generation += 1;
            tracing::info!(
                partition = p,
                ledger_entries = ledger.len(),
                "partition assigned"
            );
            self.parts.insert(
                p,
                Part {
                    generation,
                    pending: BTreeMap::new(),
                    ledger,
                    paused: false,
                },
            );
            self.live.assign(p, generation);
        }
        self.partitions_ready.set(true);
        self.metrics
            .assigned_partitions
            .set(i64::try_from(self.parts.len()).unwrap_or(0));
    }
}

/// Reads ledger partition `p` to its end (read_committed): value = answer, tombstone = committed.
fn restore_ledger(
    config: &ClientConfig,
    topic: &str,
    p: i32,
    codec: &Codec,
    handle: &Handle,
) -> anyhow::Result<HashMap<String, EgressLedgerEntry>> {
    let consumer: BaseConsumer = config.create()?;
    let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
    let mut out = HashMap::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        anyhow::ensure!(Instant::now() < until, "ledger restore timed out");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => tracing::warn!(%error, "ledger restore"),
            Some(Ok(message)) => {
                let Some(key) = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                else {
                    continue;
                };
                match message.payload() {
                    None => {
                        out.remove(&key);
                    }
                    Some(payload) => {
                        match handle.block_on(codec.decode::<EgressLedgerEntry>(payload)) {
                            Ok(entry) => {
                                out.insert(key, entry);
                            }
                            Err(error) => tracing::warn!(%error, "ledger entry skipped"),
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Consumer context: rebalances go through the core.
pub struct EgressContext {
    /// The shared core.
    pub core: Arc<Mutex<Core>>,
    /// A static member's lost session ends the loop (see `SessionWatch`).
    pub session: si_runtime::kafka::SessionWatch,
}

impl ClientContext for EgressContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.session.log(level, fac, log_message);
    }
}

impl ConsumerContext for EgressContext {
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

/// Loop settings.
#[derive(Debug, Clone, Copy)]
pub struct LoopArgs {
    /// Commit interval.
    pub commit_interval: Duration,
    /// Drain budget on shutdown.
    pub drain_timeout: Duration,
}

/// The blocking loop: poll, hand out, collect completions, commit; drain on shutdown.
///
/// # Errors
/// On a fatal Kafka error.
pub fn run_loop(
    consumer: &BaseConsumer<EgressContext>,
    core: &Arc<Mutex<Core>>,
    completions: &mut mpsc::UnboundedReceiver<Completion>,
    busy: &AtomicUsize,
    args: LoopArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let input = lock(core).input.clone();
    consumer.subscribe(&[&input])?;
    let mut last_commit = Instant::now();
    let mut completed = false;
    while !shutdown.is_cancelled() {
        if let Some(fatal) = lock(core).fatal.take() {
            anyhow::bail!(fatal);
        }
        if let Some(fatal) = consumer.context().session.fatal() {
            anyhow::bail!(fatal);
        }
        let polled = consumer.poll(Duration::from_millis(10));
        let mut c = lock(core);
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
        while let Ok(done) = completions.try_recv() {
            c.on_completion(done);
            completed = true;
        }
        c.backpressure(consumer);
        // Commit as soon as the input is drained and something finished (low
        // load: a status is readable at once), at the latest every
        // COMMIT_INTERVAL (high load: one transaction for many).
        if (completed && drained) || last_commit.elapsed() >= args.commit_interval {
            c.commit(consumer, None);
            last_commit = Instant::now();
            completed = false;
        }
    }
    // Drain: no new attempts start; wait for those running, commit what finished.
    let until = Instant::now() + args.drain_timeout;
    while busy.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        let mut c = lock(core);
        while let Ok(done) = completions.try_recv() {
            c.on_completion(done);
        }
    }
    {
        let mut c = lock(core);
        while let Ok(done) = completions.try_recv() {
            c.on_completion(done);
        }
        c.commit(consumer, None);
        if let Some(fatal) = c.fatal.take() {
            anyhow::bail!(fatal);
        }
    }
    consumer.unsubscribe();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("egress stopped");
    Ok(())
}
