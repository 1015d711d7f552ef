//! Egress's side of the Kafka driver ([`si_runtime::deferred`]): each record
//! of `twilio.outbound.v1` is an operation, handed to the senders, whose
//! statuses, dead letters, compliance events and ledger tombstone the driver
//! commits with the record's offset once every operation read before it on
//! its partition has ended too (see the driver's documentation).
//!
//! # Ledger
//!
//! On assignment, the partition's ledger (`twilio.egress.ledger.v1`, same
//! partition number) is read to its end: operations Twilio already answered
//! whose status was not committed. When such an operation is read again, it
//! ends with the recorded answer, without a request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use si_runtime::deferred::{Deferred, Output, RecordId, Started};
use si_runtime::metrics::StageMetrics;
use si_runtime::table::EndOfPartitionIsFine;
use si_schemas::Codec;
use si_schemas::records::{DeadLetterErrorKind, EgressLedgerEntry, OutboundOperation};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use crate::metrics::EgressMetrics;
use crate::outcome::Final;
use crate::sender::{Job, Live, Topics, encode_with, now_ms, terminal_records};
use crate::twilio::{Endpoints, build_request};

/// Stage name.
pub const STAGE: &str = "egress";

/// Egress as a [`Deferred`] processor.
pub struct Egress {
    /// Ledger entries of operations Twilio answered whose status is not
    /// committed, by partition and operation id.
    ledgers: BTreeMap<i32, HashMap<String, EgressLedgerEntry>>,
    live: Live,
    topics: Topics,
    restore_config: ClientConfig,
    codec: Codec,
    handle: Handle,
    endpoints: Endpoints,
    metrics: StageMetrics,
    egress_metrics: EgressMetrics,
    jobs: mpsc::UnboundedSender<Job>,
    shutdown: CancellationToken,
}

/// What [`Egress`] is built from.
pub struct EgressParts {
    /// Partition generations shared with the senders.
    pub live: Live,
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
    /// Shutdown.
    pub shutdown: CancellationToken,
}

impl Egress {
    /// Builds the processor (call it on the async runtime: it keeps its handle).
    #[must_use]
    pub fn new(p: EgressParts) -> Self {
        Self {
            ledgers: BTreeMap::new(),
            live: p.live,
            topics: p.topics,
            restore_config: p.restore_config,
            codec: p.codec,
            handle: Handle::current(),
            endpoints: p.endpoints,
            metrics: p.metrics,
            egress_metrics: p.egress_metrics,
            jobs: p.jobs,
            shutdown: p.shutdown,
        }
    }

    /// Ends an operation at once (no request) with its terminal records.
    fn finish_now(
        &self,
        op: &OutboundOperation,
        end: &Final,
        requests: u32,
        ledger_tombstone: Option<(i32, &str)>,
        traceparent: Option<&str>,
    ) -> Result<Started, String> {
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
        let mut records = encoded.map_err(|error| {
            tracing::error!(%error, "terminal records cannot be encoded; stopping");
            format!("encoding terminal records: {error}")
        })?;
        let code = end
            .code()
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.egress_metrics
            .operations
            .with_label_values(&[end.label(), &code])
            .inc();
        if let Some((partition, key)) = ledger_tombstone {
            records.push(Output::tombstone(&self.topics.ledger, partition, key));
        }
        Ok(Started::Finished(records))
    }

    /// Decodes an operation: `Ok(None)` when shutdown interrupted a retry.
    fn decode(&self, message: &BorrowedMessage<'_>) -> Result<Option<OutboundOperation>, String> {
        let Some(payload) = message.payload() else {
            return Err("tombstone on twilio.outbound.v1".to_owned());
        };
        let mut backoff = si_runtime::backoff::Backoff::brief();
        loop {
            match self
                .handle
                .block_on(self.codec.decode::<OutboundOperation>(payload))
            {
                Ok(op) => return Ok(Some(op)),
                Err(error) if error.is_retriable() && !self.shutdown.is_cancelled() => {
                    tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "decoding failed; retrying");
                    std::thread::sleep(backoff.next_delay());
                }
                Err(error) if error.is_retriable() => return Ok(None),
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Dead-letters an undecodable record.
    fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        traceparent: Option<String>,
    ) -> Result<Started, String> {
        tracing::warn!(partition = message.partition(), offset = message.offset(), %reason, "undecodable operation dead-lettered");
        let kind = if message.payload().is_none() {
            DeadLetterErrorKind::Invalid
        } else {
            DeadLetterErrorKind::Undecodable
        };
        let record = si_runtime::dlq::dead_letter(STAGE, message, kind, reason, now_ms());
        self.metrics
            .dead_letters
            .with_label_values(&[kind.as_str()])
            .inc();
        let topic = &self.topics.dead_letter;
        let payload = self
            .handle
            .block_on(encode_with(&self.codec, topic, &record, &self.shutdown))
            .map_err(|error| format!("encoding a dead letter: {error}"))?;
        let key = message.key().unwrap_or_default().to_vec();
        Ok(Started::Finished(vec![Output::record(
            topic.as_str(),
            key,
            payload,
            traceparent,
        )]))
    }
}

impl Deferred for Egress {
    fn start(&mut self, message: &BorrowedMessage<'_>, id: RecordId) -> Result<Started, String> {
        let received = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == si_runtime::trace::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        let op = match self.decode(message) {
            Ok(Some(op)) => op,
            // Shutting down: the driver reads no further; the record is read again.
            Ok(None) => return Ok(Started::Running),
            Err(reason) => return self.dead_letter(message, &reason, received),
        };
        let first_seen = now_ms();
        // The operation's span, a child of the record's trace (the header,
        // else the operation's own `traceparent` field).
        let received = received.or_else(|| op.traceparent.clone());
        let named = si_runtime::trace::known_trace_id(received.as_deref());
        let span = tracing::info_span!(
            parent: None,
            "operation",
            si.operation.kind = op.kind.as_str(),
            si.channel = op.channel.key_prefix(),
            messaging.kafka.partition = id.partition,
            messaging.kafka.offset = id.offset,
            outcome = Empty,
            otel.status_code = Empty,
            trace_id = named,
        );
        si_runtime::trace::continue_from(&span, received.as_deref());
        let traceparent = si_runtime::trace::traceparent_of(&span, received.as_deref());
        si_runtime::trace::record_trace_id_unless_named(&span, named, traceparent.as_deref());
        let _entered = span.enter();
        let ledgered = self
            .ledgers
            .get_mut(&id.partition)
            .and_then(|l| l.remove(&op.operation_id));
        if let Some(entry) = ledgered {
            self.egress_metrics.ledger_hits.inc();
            tracing::info!(operation_id = %op.operation_id, "ending with the ledger's answer; not sending again");
            let end = Final::from_ledger(&entry);
            let requests = u32::try_from(entry.attempts).unwrap_or(0);
            span.record("outcome", "ledger");
            return self.finish_now(
                &op,
                &end,
                requests,
                Some((id.partition, &entry.operation_id)),
                traceparent.as_deref(),
            );
        }
        if let Err(error) = build_request(&self.endpoints, &op) {
            let end = Final::DeadLettered {
                reason: format!("invalid operation: {}", error.0),
                code: None,
                http_status: None,
            };
            span.record("outcome", end.label());
            span.record("otel.status_code", "ERROR");
            return self.finish_now(&op, &end, 0, None, traceparent.as_deref());
        }
        let job = Job {
            partition: id.partition,
            offset: id.offset,
            generation: id.generation,
            op: Arc::new(op),
            first_seen,
            span: span.clone(),
            traceparent,
        };
        self.jobs
            .send(job)
            .map_err(|_| "the sender tasks stopped".to_owned())?;
        Ok(Started::Running)
    }

    fn assigned(&mut self, partition: i32, generation: u64) -> Result<(), String> {
        let ledger = restore_ledger(
            &self.restore_config,
            &self.topics.ledger,
            partition,
            &self.codec,
            &self.handle,
        )
        .map_err(|error| format!("restoring ledger partition {partition}: {error:#}"))?;
        tracing::info!(partition, ledger_entries = ledger.len(), "ledger restored");
        self.ledgers.insert(partition, ledger);
        self.live.assign(partition, generation);
        Ok(())
    }

    fn revoked(&mut self, partition: i32) {
        self.ledgers.remove(&partition);
        self.live.revoke(partition);
    }

    fn backlog(&mut self, pending: usize, paused: usize) {
        self.egress_metrics
            .paused_partitions
            .set(i64::try_from(paused).unwrap_or(i64::MAX));
        self.egress_metrics
            .queue_depth
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
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
    let consumer: BaseConsumer<EndOfPartitionIsFine> =
        config.create_with_context(EndOfPartitionIsFine)?;
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
