//! The sending side: one task per sender holds that sender's queue, paces it
//! with the sender's rate limiter and the account-wide concurrency cap, and
//! runs attempts; an attempt re-checks consent, calls Twilio and, when the
//! operation is final, records Twilio's answer in the ledger, encodes the
//! terminal records and hands them to the Kafka loop for commit.
//!
//! Order: within a sender queue an operation is only started when no earlier
//! operation of the same conversation is in flight or waiting for a retry, so
//! a conversation's operations never overtake each other; other
//! conversations of the same sender go on meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rdkafka::producer::FutureRecord;
use si_consent_gate::{ConsentGate, Verdict};
use si_runtime::deferred::{Finished, Output, RecordId};
use si_runtime::mask::Masked;
use si_runtime::polled::{Acks, PolledProducer};
use si_runtime::trace;
use si_schemas::records::{Channel, OperationKind, OutboundOperation, PRIORITY_PARAM, Priority};
use si_schemas::{AvroRecord, Codec, CodecError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::auth::{self, Admit, AuthGate, Hold, Probe};
use crate::circuit::{self, Circuits};
use crate::metrics::EgressMetrics;
use crate::outcome::{Final, terminal};
use crate::pace::{Pacer, Ready};
use crate::rates::{Rates, SendWindow, SenderType};
use crate::twilio::{Answer, Endpoints, Sent, TwilioClient, Upload, build_request_with_media};

/// Params value marking the consent stage's own replies, which pass the re-check.
pub const CONSENT_PURPOSE: &str = "consent";

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The generation of each assigned input partition. A job carries the
/// generation it was read in; once its partition is revoked (or reassigned),
/// its job is dropped before any further attempt.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<HashMap<i32, u64>>>);

impl Live {
    /// Whether `generation` is the current one of `partition`.
    #[must_use]
    pub fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            == Some(&generation)
    }

    /// Marks `partition` assigned in `generation`.
    pub fn assign(&self, partition: i32, generation: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, generation);
    }

    /// Marks `partition` revoked.
    pub fn revoke(&self, partition: i32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&partition);
    }
}

/// One operation read from an input partition.
#[derive(Debug, Clone)]
pub struct Job {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Assignment generation of the partition when read.
    pub generation: u64,
    /// The operation.
    pub op: Arc<OutboundOperation>,
    /// When egress first read it (ms since the epoch).
    pub first_seen: i64,
    /// The operation's span (a child of the record's trace); its wait,
    /// request and retry spans are its children.
    pub span: Span,
    /// The `traceparent` of the operation (its span's context with traces
    /// exported, else the record's): on the status records.
    pub traceparent: Option<String>,
}

/// An operation's end for the Kafka driver: its status, DLQ and compliance
/// records and, when Twilio's answer was written to the ledger, the entry's
/// tombstone (same partition as the operation), all committed with its offset.
#[must_use]
pub fn finished(job: &Job, mut records: Vec<Output>, ledger: Option<(&str, &str)>) -> Finished {
    if let Some((topic, key)) = ledger {
        records.push(Output::tombstone(topic, job.partition, key));
    }
    Finished {
        id: RecordId {
            partition: job.partition,
            offset: job.offset,
            generation: job.generation,
        },
        outputs: records,
    }
}

/// Full names of the topics egress writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `twilio.delivery.v1`.
    pub delivery: String,
    /// `twilio.outbound.dlq.v1`.
    pub dlq: String,
    /// `si.compliance.v1`.
    pub compliance: String,
    /// `twilio.egress.ledger.v1`.
    pub ledger: String,
    /// `si.deadletter.v1`.
    pub dead_letter: String,
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Requests per operation before it is dead-lettered.
    pub max_attempts: u32,
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): exponential with
    /// equal jitter (between half and all of `base × 2^(attempt-1)`, capped);
    /// after a Retry-After, that wait plus the jitter, so the operations
    /// Twilio refused together do not all come back at the same moment.
    #[must_use]
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let half = exp / 2;
        let jitter =
            rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        let jitter = Duration::from_millis(jitter);
        retry_after.map_or(half + jitter, |after| (half + jitter).max(after + jitter))
    }
}

/// Everything attempts need.
pub struct SendContext {
    /// Twilio client.
    pub client: TwilioClient,
    /// The hold every sender respects while Twilio refuses the credentials.
    pub auth: Arc<AuthGate>,
    /// Base URLs and account.
    pub endpoints: Endpoints,
    /// Rate configuration.
    pub rates: Rates,
    /// Account-wide concurrency cap.
    pub semaphore: Arc<Semaphore>,
    /// Consent re-check; `None` only in tests.
    pub gate: Option<ConsentGate>,
    /// Whether the re-check requires an opt-in.
    pub require_opt_in: bool,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Metrics.
    pub metrics: EgressMetrics,
    /// Current partition generations.
    pub live: Live,
    /// Non-transactional producer of ledger entries.
    pub ledger_producer: PolledProducer<Acks>,
    /// Registry codec.
    pub codec: Codec,
    /// Output topics.
    pub topics: Topics,
    /// Where finished operations go.
    pub completions: mpsc::UnboundedSender<Finished>,
    /// Attempts and finishes in progress (the drain waits for zero).
    pub busy: Arc<AtomicUsize>,
    /// Stops starting attempts.
    pub stopping: CancellationToken,
    /// How long an idle sender keeps its task (see `EGRESS_SENDER_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Per-channel circuit breakers (and the settings of the per-sender ones).
    pub circuits: Circuits,
}

/// Whether an operation is re-checked against consent: a message (but a
/// consent reply), or a call that names the consent it was placed under.
#[must_use]
pub fn needs_consent(op: &OutboundOperation) -> bool {
    consent_subject(op).is_some()
}

/// The channel and sender scope an operation's recipient is checked under,
/// when it is re-checked ([`needs_consent`]).
#[must_use]
pub fn consent_subject(op: &OutboundOperation) -> Option<(Channel, String)> {
    op.to.as_ref()?;
    if let Some((channel, scope)) = si_consent_gate::call_consent(op) {
        return Some((channel, scope.to_owned()));
    }
    let message = matches!(
        op.kind,
        OperationKind::SendMessage | OperationKind::SendConversationMessage
    );
    (message && op.params.get("si.purpose").map(String::as_str) != Some(CONSENT_PURPOSE))
        .then(|| (op.channel, crate::outcome::sender_scope(op)))
}

/// Whether an operation may skip a held queue: an urgent (priority HIGH)
/// WhatsApp message, which delivery remediation can send by SMS instead.
#[must_use]
pub fn is_urgent_with_fallback(op: &OutboundOperation) -> bool {
    op.channel == Channel::Whatsapp
        && op.params.get(PRIORITY_PARAM).map(String::as_str) == Some(Priority::High.as_str())
}

/// Rate cells an operation takes: its SMS segments (Twilio paces long codes
/// per segment), else one.
#[must_use]
pub fn cells(op: &OutboundOperation) -> u32 {
    let message = matches!(
        op.kind,
        OperationKind::SendMessage | OperationKind::SendConversationMessage
    );
    if message && op.channel == Channel::Sms {
        op.segments
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(1)
            .clamp(1, 10)
    } else {
        1
    }
}

/// Encodes with the registry codec, retrying while the registry is unreachable.
async fn encode<T: AvroRecord>(
    ctx: &SendContext,
    topic: &str,
    record: &T,
) -> Result<Vec<u8>, CodecError> {
    encode_with(&ctx.codec, topic, record, &ctx.stopping).await
}

/// Encodes with `codec`, retrying retriable failures (until `stop`).
///
/// # Errors
/// A permanent codec error, or a retriable one once `stop` is cancelled.
pub async fn encode_with<T: AvroRecord>(
    codec: &Codec,
    topic: &str,
    record: &T,
    stop: &CancellationToken,
) -> Result<Vec<u8>, CodecError> {
    let mut backoff = si_runtime::backoff::Backoff::brief();
    loop {
        match codec.encode(topic, record).await {
            Ok(bytes) => return Ok(bytes),
            Err(error) if error.is_retriable() && !stop.is_cancelled() => {
                tracing::warn!(%error, topic, "encoding failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The encoded terminal records of `op`.
///
/// # Errors
/// When a record cannot be encoded.
#[allow(clippy::too_many_arguments)]
pub async fn terminal_records(
    codec: &Codec,
    topics: &Topics,
    op: &OutboundOperation,
    end: &Final,
    requests: u32,
    first_seen: i64,
    traceparent: Option<&str>,
    stop: &CancellationToken,
) -> Result<Vec<Output>, CodecError> {
    let t = terminal(op, end, requests, first_seen, now_ms());
    let traceparent = traceparent.map(str::to_owned);
    let mut records = vec![Output::record(
        &topics.delivery,
        op.conversation_id.as_str(),
        encode_with(codec, &topics.delivery, &t.status, stop).await?,
        traceparent.clone(),
    )];
    if let Some(dl) = &t.dead_letter {
        records.push(Output::record(
            &topics.dlq,
            op.sender_key.as_str(),
            encode_with(codec, &topics.dlq, dl, stop).await?,
            traceparent.clone(),
        ));
    }
    if let Some((key, event)) = &t.compliance {
        records.push(Output::record(
            &topics.compliance,
            key.as_str(),
            encode_with(codec, &topics.compliance, event, stop).await?,
            traceparent,
        ));
    }
    Ok(records)
}

/// Ends `job` with `end`: ledger entry (for Twilio's answers), terminal records,
/// completion to the Kafka loop.
async fn finish(ctx: &SendContext, job: &Job, end: Final, requests: u32) {
    let op = &job.op;
    let code = end
        .code()
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    job.span.record("outcome", end.label());
    if !matches!(end, Final::Accepted { .. } | Final::Blocked { .. }) {
        job.span.record("otel.status_code", "ERROR");
    }
    log_failure(op, &end, requests);
    let mut ledger_key = None;
    if let Some(entry) = end.ledger_entry(op, requests, now_ms()) {
        match encode(ctx, &ctx.topics.ledger, &entry).await {
            Ok(payload) => {
                let record = FutureRecord::to(&ctx.topics.ledger)
                    .partition(job.partition)
                    .key(&op.operation_id)
                    .payload(&payload);
                match ctx
                    .ledger_producer
                    .send_acked(record, Duration::from_secs(30))
                    .await
                {
                    Ok(()) => ledger_key = Some(op.operation_id.clone()),
                    Err(error) => tracing::error!(
                        %error,
                        operation_id = %op.operation_id,
                        "ledger write failed; a restart before the commit would resend this operation"
                    ),
                }
            }
            Err(error) => tracing::error!(%error, "ledger entry cannot be encoded"),
        }
    }
    match terminal_records(
        &ctx.codec,
        &ctx.topics,
        op,
        &end,
        requests,
        job.first_seen,
        job.traceparent.as_deref(),
        &ctx.stopping,
    )
    .await
    {
        Ok(records) => {
            ctx.metrics
                .operations
                .with_label_values(&[end.label(), &code])
                .inc();
            let ledger = ledger_key
                .as_deref()
                .map(|k| (ctx.topics.ledger.as_str(), k));
            let _ = ctx.completions.send(finished(job, records, ledger));
        }
        Err(error) => {
            // Not committed: the operation is read again after a restart or
            // rebalance (the ledger entry, if written, prevents a resend).
            tracing::error!(%error, operation_id = %op.operation_id, "terminal records cannot be encoded");
        }
    }
}

/// Logs an operation that did not end accepted, once, at its end: Twilio's
/// code and the masked address, never Twilio's message text (it can quote the
/// number).
fn log_failure(op: &OutboundOperation, end: &Final, requests: u32) {
    let to = op.to.as_deref().map(Masked);
    let kind = op.kind.as_str();
    match end {
        Final::Accepted { .. } => {}
        Final::Failed {
            code, http_status, ..
        } => tracing::warn!(
            operation_id = %op.operation_id, kind, to = ?to.map(|m| m.to_string()),
            error_code = ?code, http_status = ?http_status, requests,
            "Twilio refused the operation"
        ),
        Final::DeadLettered {
            code, http_status, ..
        } => tracing::warn!(
            operation_id = %op.operation_id, kind, to = ?to.map(|m| m.to_string()),
            error_code = ?code, http_status = ?http_status, requests,
            "operation dead-lettered"
        ),
        Final::Blocked { .. } => tracing::info!(
            operation_id = %op.operation_id, kind, to = ?to.map(|m| m.to_string()),
            "operation blocked by the consent re-check"
        ),
    }
}

/// What an attempt reports to its sender task.
#[derive(Debug)]
enum Attempted {
    /// Finished (completion sent or dropped).
    Done,
    /// Try again later.
    Retry(Retry),
}

/// A failed attempt that may be tried again.
#[derive(Debug)]
struct Retry {
    /// Requests made so far, this one included.
    requests: u32,
    code: Option<i32>,
    http_status: Option<u16>,
    message: String,
    /// What Twilio's `Retry-After` asked for.
    retry_after: Option<Duration>,
    /// Twilio refused the credentials (a 401): the attempt does not count.
    auth: bool,
}

impl Retry {
    /// The `si_retries_total` reason.
    fn reason(&self) -> &'static str {
        if self.auth {
            "auth"
        } else if self.http_status == Some(429) || self.code == Some(20429) {
            "rate_limited"
        } else if self.http_status.is_some_and(|s| s >= 500) {
            "server_error"
        } else if self.http_status.is_none() {
            "network"
        } else {
            "slow_down"
        }
    }
}

/// One attempt: consent re-check, request, classification; with what the
/// answer says about Twilio's health for the circuit breakers (`None`: no
/// request, or an answer that says nothing about it). `probe` when the
/// attempt is the one probe of rejected credentials (see [`AuthGate`]).
///
/// `permit` (of `EGRESS_MAX_CONCURRENCY`) is given back as soon as Twilio
/// answers (at the end when no request is made): it caps requests to
/// Twilio, not the ledger write and terminal records after them, which a
/// busy broker can make longer than the request itself.
async fn attempt(
    ctx: &SendContext,
    job: &Job,
    requests: u32,
    window: Option<&SendWindow>,
    probe: Option<Probe>,
    permit: OwnedSemaphorePermit,
) -> (Attempted, Option<bool>) {
    let op = &job.op;
    if let (Some(gate), Some(to), Some((channel, scope))) =
        (&ctx.gate, op.to.as_deref(), consent_subject(op))
        && let Verdict::Blocked { status, decision } =
            gate.check(channel, to, &scope, ctx.require_opt_in)
    {
        let end = Final::Blocked {
            reason: format!("{}: {status}", si_consent_gate::EGRESS_RECHECK_REASON),
            status,
            decision: decision.map(|d| (d.source, d.sender_scope.clone())),
        };
        finish(ctx, job, end, requests).await;
        return (Attempted::Done, None);
    }
    if let Some(window) = window {
        window.admit().await;
    }
    if op.not_after.is_some_and(|not_after| now_ms() > not_after) {
        let end = Final::DeadLettered {
            reason: "not_after passed while waiting for the rate limit".into(),
            code: None,
            http_status: None,
        };
        finish(ctx, job, end, requests).await;
        return (Attempted::Done, None);
    }
    // The Twilio request's span; the request and its status callback URL
    // carry its context (else the operation's trace).
    let request_span = tracing::info_span!(
        "twilio request",
        otel.kind = "client",
        http.request.method = "POST",
        si.operation.kind = op.kind.as_str(),
        si.attempt = requests + 1,
        http.response.status_code = Empty,
        si.twilio.error_code = Empty,
        outcome = Empty,
        otel.status_code = Empty,
    );
    let traceparent = trace::traceparent_of(&request_span, job.traceparent.as_deref());
    // A Conversations message's media goes to the Media Content Service
    // first: the message names it by its MediaSid.
    let uploaded = match ctx
        .client
        .upload_media(&ctx.endpoints, op, &op.operation_id)
        .instrument(request_span.clone())
        .await
    {
        Ok(uploaded) => uploaded,
        Err(failed) => {
            drop(permit);
            return upload_failed(ctx, job, failed, requests, probe, &request_span).await;
        }
    };
    let request = match build_request_with_media(
        &ctx.endpoints,
        op,
        traceparent.as_deref(),
        uploaded.as_deref(),
    ) {
        Ok(mut request) => {
            crate::twilio::bound_validity(&mut request, op, now_ms());
            request
        }
        Err(error) => {
            let end = Final::DeadLettered {
                reason: error.0,
                code: None,
                http_status: None,
            };
            request_span.record("outcome", "not sent");
            finish(ctx, job, end, requests).await;
            return (Attempted::Done, None);
        }
    };
    let requests = requests + 1;
    let kind = op.kind.as_str();
    ctx.metrics.in_flight.inc();
    let Sent {
        answer,
        took,
        generation,
    } = ctx
        .client
        .send(&request, &op.operation_id, traceparent.as_deref())
        .instrument(request_span.clone())
        .await;
    drop(permit);
    ctx.metrics.in_flight.dec();
    record_answer(&request_span, &answer);
    drop(request_span);
    ctx.auth.observe(
        auth::Verdict::of(&answer),
        generation,
        probe,
        Instant::now(),
    );
    ctx.metrics
        .latency
        .with_label_values(&[kind])
        .observe(took.as_secs_f64());
    settle(ctx, job, answer, requests).await
}

/// What a failed upload of a Conversations message's media makes of the
/// operation: dead-lettered when it cannot be sent, else as the answer of
/// Si's store (which says nothing of Twilio's health) or of the Media
/// Content Service (an attempt at Twilio, its 401 seen by the auth gate).
async fn upload_failed(
    ctx: &SendContext,
    job: &Job,
    failed: Upload,
    requests: u32,
    probe: Option<Probe>,
    span: &Span,
) -> (Attempted, Option<bool>) {
    match failed {
        Upload::Invalid(error) => {
            span.record("outcome", "not sent");
            let end = Final::DeadLettered {
                reason: error.0,
                code: None,
                http_status: None,
            };
            finish(ctx, job, end, requests).await;
            (Attempted::Done, None)
        }
        Upload::Store(answer) => {
            // Not Twilio's answer: a probe held goes back unanswered.
            drop(probe);
            record_answer(span, &answer);
            (settle(ctx, job, answer, requests + 1).await.0, None)
        }
        Upload::Twilio(sent) => {
            record_answer(span, &sent.answer);
            ctx.auth.observe(
                auth::Verdict::of(&sent.answer),
                sent.generation,
                probe,
                Instant::now(),
            );
            settle(ctx, job, sent.answer, requests + 1).await
        }
    }
}

/// What Twilio's answer makes of the operation: final (accepted or failed)
/// and finished, or to be retried; and what it says of Twilio's health.
async fn settle(
    ctx: &SendContext,
    job: &Job,
    answer: Answer,
    requests: u32,
) -> (Attempted, Option<bool>) {
    let kind = job.op.kind.as_str();
    let code_label = |code: Option<i32>| code.map_or_else(|| "none".to_owned(), |c| c.to_string());
    match crate::twilio::already_done(job.op.kind, answer) {
        Answer::Accepted { sid, segments, .. } => {
            ctx.metrics
                .requests
                .with_label_values(&[kind, "accepted", "none"])
                .inc();
            finish(ctx, job, Final::Accepted { sid, segments }, requests).await;
            (Attempted::Done, Some(true))
        }
        Answer::Permanent {
            code,
            http_status,
            message,
        } => {
            ctx.metrics
                .requests
                .with_label_values(&[kind, "permanent", &code_label(code)])
                .inc();
            let end = Final::Failed {
                code,
                http_status: Some(i32::from(http_status)),
                message,
            };
            finish(ctx, job, end, requests).await;
            // Twilio answered: the request was wrong, Twilio works.
            (Attempted::Done, Some(true))
        }
        Answer::Retry {
            code,
            http_status,
            message,
            retry_after,
            auth,
        } => {
            ctx.metrics
                .requests
                .with_label_values(&[kind, "retriable", &code_label(code)])
                .inc();
            // 5xx or no answer: Twilio (or the way to it) is failing; 429 and
            // 401 have their own handling.
            let health = (!auth && http_status.is_none_or(|s| s >= 500)).then_some(false);
            (
                Attempted::Retry(Retry {
                    requests,
                    code,
                    http_status,
                    message,
                    retry_after,
                    auth,
                }),
                health,
            )
        }
    }
}

/// What Twilio answered, on the request's span.
fn record_answer(span: &Span, answer: &Answer) {
    match answer {
        Answer::Accepted { http_status, .. } => {
            span.record("http.response.status_code", http_status);
            span.record("outcome", "accepted");
        }
        Answer::Permanent {
            code, http_status, ..
        } => {
            span.record("http.response.status_code", http_status);
            span.record("outcome", "permanent");
            span.record("otel.status_code", "ERROR");
            if let Some(code) = code {
                span.record("si.twilio.error_code", code);
            }
        }
        Answer::Retry {
            code, http_status, ..
        } => {
            if let Some(status) = http_status {
                span.record("http.response.status_code", status);
            }
            span.record("outcome", "retriable");
            span.record("otel.status_code", "ERROR");
            if let Some(code) = code {
                span.record("si.twilio.error_code", code);
            }
        }
    }
}

/// Runs `future` as tracked work: the drain waits until `busy` is zero.
fn spawn_tracked(ctx: &Arc<SendContext>, future: impl Future<Output = ()> + Send + 'static) {
    ctx.busy.fetch_add(1, Ordering::SeqCst);
    let busy = Arc::clone(&ctx.busy);
    tokio::spawn(async move {
        future.await;
        busy.fetch_sub(1, Ordering::SeqCst);
    });
}

/// A sender task as the dispatcher sees it.
struct SenderHandle {
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs handed to the task so far.
    sent: u64,
}

/// A sender task reporting that it has been idle: it had received `received`
/// jobs and holds none.
struct Idle {
    sender_key: String,
    received: u64,
}

/// Routes jobs to per-sender tasks, creating them on first use and reclaiming
/// them once idle.
///
/// Reclaiming is a handshake, so no job is ever sent to a task that is about
/// to end: the idle task reports how many jobs it received; the dispatcher,
/// which alone sends them, drops the task's channel only when that is every
/// job it sent. The task then sees its channel closed with an empty queue and
/// ends. A job for that sender arriving later starts a fresh task.
pub async fn dispatch(ctx: Arc<SendContext>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut senders: HashMap<String, SenderHandle> = HashMap::new();
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<Idle>();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let key = job.op.sender_key.clone();
                let handle = senders.entry(key.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(sender_task(Arc::clone(&ctx), key, rx, idle_tx.clone()));
                    SenderHandle { jobs: tx, sent: 0 }
                });
                handle.sent += 1;
                if let Err(error) = handle.jobs.send(job) {
                    tracing::error!(%error, "sender task gone");
                }
            }
            Some(idle) = idle_rx.recv() => {
                if senders.get(&idle.sender_key).is_some_and(|h| h.sent == idle.received) {
                    senders.remove(&idle.sender_key);
                }
            }
        }
        ctx.metrics
            .senders
            .set(i64::try_from(senders.len()).unwrap_or(i64::MAX));
    }
}

struct Entry {
    job: Job,
    /// Requests made so far.
    requests: u32,
    /// Attempts that count toward the limit (auth failures do not).
    counted: u32,
    ready_at: Option<Instant>,
    in_flight: bool,
    /// The span of the wait before the next attempt (order, retry delay,
    /// rate limit, concurrency cap), a child of the operation's.
    wait: Option<Span>,
}

/// The span of an operation's wait for its next attempt: the first, or a
/// retry after `reason` with `delay`.
fn wait_span(job: &Job, retry: Option<(&'static str, Duration)>) -> Span {
    let (reason, delay_ms) = retry.map_or(("", 0), |(reason, delay)| {
        (reason, u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    });
    tracing::info_span!(
        parent: &job.span,
        "wait",
        si.retry = retry.is_some(),
        si.retry.reason = reason,
        si.retry.delay_ms = delay_ms,
        si.limiter_wait_ms = Empty,
    )
}

/// The first entry that may start now, and the earliest time a waiting one may.
fn pick(queue: &VecDeque<Entry>, now: Instant) -> (Option<usize>, Option<Instant>) {
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut wake: Option<Instant> = None;
    for (i, entry) in queue.iter().enumerate() {
        let conversation = entry.job.op.conversation_id.as_str();
        if blocked.contains(conversation) {
            continue;
        }
        if entry.in_flight {
            blocked.insert(conversation);
            continue;
        }
        if let Some(at) = entry.ready_at
            && at > now
        {
            blocked.insert(conversation);
            wake = Some(wake.map_or(at, |w| w.min(at)));
            continue;
        }
        return (Some(i), wake);
    }
    (None, wake)
}

/// Ends `entry` without a further request: its terminal records are
/// written by a task of its own, which the drain waits for.
fn end_entry(ctx: &Arc<SendContext>, entry: Entry, end: Final) {
    let c = Arc::clone(ctx);
    let span = entry.job.span.clone();
    spawn_tracked(
        ctx,
        async move { finish(&c, &entry.job, end, entry.requests).await }.instrument(span),
    );
}

/// A failed attempt of `queue[i]`: tried again after its backoff (a 401
/// waits at the shared gate instead), or dead-lettered once its retries are
/// spent or the backoff would pass its `not_after`.
fn on_retry(ctx: &Arc<SendContext>, queue: &mut VecDeque<Entry>, i: usize, retry: Retry) {
    let reason = retry.reason();
    let entry = &mut queue[i];
    entry.in_flight = false;
    entry.requests = retry.requests;
    if !retry.auth {
        entry.counted += 1;
    }
    let delay = if retry.auth {
        Duration::ZERO
    } else {
        ctx.retry.delay(entry.counted, retry.retry_after)
    };
    let deadline_passes = entry.job.op.not_after.is_some_and(|not_after| {
        now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)) > not_after
    });
    if entry.counted < ctx.retry.max_attempts && !deadline_passes {
        ctx.metrics.retries.with_label_values(&[reason]).inc();
        entry.ready_at = Some(Instant::now() + delay);
        entry.wait = Some(wait_span(&entry.job, Some((reason, delay))));
        return;
    }
    let why = if deadline_passes {
        "not_after passes before the next retry"
    } else {
        "retries exhausted"
    };
    if let Some(entry) = queue.remove(i) {
        let end = Final::DeadLettered {
            reason: format!(
                "{why} after {} requests; last error: {}",
                retry.requests, retry.message
            ),
            code: retry.code,
            http_status: retry.http_status.map(i32::from),
        };
        end_entry(ctx, entry, end);
    }
}

/// What an attempt reports back to its sender's task: the job's id, its
/// channel, the outcome and the circuit breakers' verdict on Twilio's health.
type Done = ((u64, i64), Channel, Attempted, Option<bool>);

/// One sender's operations: its queue in arrival order, its circuit breaker
/// and what the attempts it starts share.
struct Lane {
    ctx: Arc<SendContext>,
    queue: VecDeque<Entry>,
    breaker: circuit::Breaker,
    /// The channel of the last operation started, whose breaker the lane forgets at its end.
    channel: Option<Channel>,
    window: Option<Arc<SendWindow>>,
    sender_type: &'static str,
    done: mpsc::UnboundedSender<Done>,
    /// Twilio asked this sender to slow down (429, 20429, or a queue or rate
    /// limit code): nothing of its queue starts before this.
    slowed_until: Option<Instant>,
}

impl Lane {
    /// The operation to start next and when to look again, once the circuit
    /// breakers and `not_after` have had their say; `None` when they ended
    /// an operation instead, and the queue is to be looked at again at once.
    fn next(&mut self, now: Instant) -> Option<(Option<usize>, Option<Instant>)> {
        let ctx = &self.ctx;
        self.queue
            .retain(|e| e.in_flight || ctx.live.is_current(e.job.partition, e.job.generation));
        let (mut picked, mut wake) = pick(&self.queue, now);
        if let Some(until) = self.slowed_until.filter(|until| *until > now) {
            // Held, an operation still ends at its `not_after`.
            let expired = self.queue.iter().position(|e| {
                !e.in_flight
                    && e.job
                        .op
                        .not_after
                        .is_some_and(|not_after| now_ms() > not_after)
            });
            if let Some(i) = expired {
                self.end(
                    i,
                    "not_after passed while Twilio asked the sender to slow down",
                );
                return None;
            }
            picked = None;
            wake = Some(wake.map_or(until, |w| w.min(until)));
        }
        // While Twilio fails, hold the queue; an urgent WhatsApp message goes
        // to delivery remediation (its SMS fallback).
        if let Some(i) = picked {
            let op_channel = self.queue[i].job.op.channel;
            if let circuit::Admit::WaitUntil(until) =
                ctx.circuits.check(&self.breaker, op_channel, now)
            {
                let urgent = self
                    .queue
                    .iter()
                    .position(|e| !e.in_flight && is_urgent_with_fallback(&e.job.op));
                if let Some(u) = urgent {
                    self.end(
                        u,
                        "circuit open: Twilio requests for this sender or channel are failing; \
                         an urgent message is handed to delivery remediation (its fallback channel)",
                    );
                    return None;
                }
                picked = None;
                wake = Some(wake.map_or(until, |w| w.min(until)));
            }
        }
        if let Some(i) = picked
            && let Some(not_after) = self.queue[i].job.op.not_after
            && now_ms() > not_after
        {
            self.end(i, "not_after passed before the operation could be sent");
            return None;
        }
        Some((picked, wake))
    }

    /// Dead-letters the queue's entry `i` before any request of it.
    fn end(&mut self, i: usize, reason: &str) {
        if let Some(entry) = self.queue.remove(i) {
            let end = Final::DeadLettered {
                reason: reason.into(),
                code: None,
                http_status: None,
            };
            end_entry(&self.ctx, entry, end);
        }
    }

    /// When a sender held by refused credentials looks again: at the probe's
    /// time, or when the operation it would start passes its `not_after`.
    fn held_wake(
        &self,
        probe_at: Option<Instant>,
        picked: Option<usize>,
        now: Instant,
    ) -> Option<Instant> {
        let expiry = picked
            .and_then(|i| self.queue[i].job.op.not_after)
            .map(|not_after| {
                let left = u64::try_from(not_after.saturating_sub(now_ms())).unwrap_or(0);
                now + Duration::from_millis(left + 1)
            });
        match (probe_at, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An attempt ended: its breakers learn of Twilio's health, and the
    /// operation leaves the queue or waits for its retry.
    fn on_done(&mut self, (id, op_channel, attempted, health): Done) {
        self.ctx
            .circuits
            .record(&mut self.breaker, op_channel, Instant::now(), health);
        let Some(i) = self
            .queue
            .iter()
            .position(|e| (e.job.generation, e.job.offset) == id)
        else {
            return;
        };
        match attempted {
            Attempted::Done => {
                self.queue.remove(i);
            }
            Attempted::Retry(retry) => {
                if matches!(retry.reason(), "rate_limited" | "slow_down") {
                    self.slow_down(retry.retry_after);
                }
                on_retry(&self.ctx, &mut self.queue, i, retry);
            }
        }
    }

    /// Twilio refused a request of this sender as too many or too fast: the
    /// whole queue waits its `Retry-After` (else the first backoff step; at
    /// most `EGRESS_RETRY_MAX`), not only the refused operation, so the
    /// sender slows down instead of sending the rest of its queue into the
    /// same refusal.
    fn slow_down(&mut self, retry_after: Option<Duration>) {
        let pause = retry_after
            .unwrap_or(self.ctx.retry.base)
            .min(self.ctx.retry.max);
        let until = Instant::now() + pause;
        if self.slowed_until.is_none_or(|current| current < until) {
            tracing::info!(
                sender_type = self.sender_type,
                pause_ms =
                    u64::try_from(until.saturating_duration_since(Instant::now()).as_millis())
                        .unwrap_or(u64::MAX),
                "Twilio asked the sender to slow down: its queue waits"
            );
            self.slowed_until = Some(until);
        }
    }

    /// Starts an attempt of entry `i`, whose cells and permit the pacer gave.
    fn start(&mut self, i: usize, Ready { permit, waited }: Ready) {
        let ctx = &self.ctx;
        ctx.metrics
            .limiter_wait
            .with_label_values(&[self.sender_type])
            .observe(waited.as_secs_f64());
        let entry = &mut self.queue[i];
        if !ctx
            .live
            .is_current(entry.job.partition, entry.job.generation)
        {
            return;
        }
        let probe = match ctx.auth.admit(Instant::now()) {
            Admit::Open => None,
            Admit::Probe(probe) => Some(probe),
            // Another sender's request was refused meanwhile: the cells are
            // spent, the operation waits at the gate.
            Admit::Held => return,
        };
        entry.in_flight = true;
        if let Some(wait) = entry.wait.take() {
            wait.record(
                "si.limiter_wait_ms",
                u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            );
        }
        let job = entry.job.clone();
        let requests = entry.requests;
        let op_channel = job.op.channel;
        self.channel = Some(op_channel);
        ctx.circuits
            .begin(&mut self.breaker, op_channel, Instant::now());
        let (c, done, window) = (Arc::clone(ctx), self.done.clone(), self.window.clone());
        let span = job.span.clone();
        spawn_tracked(
            ctx,
            async move {
                let (attempted, health) =
                    attempt(&c, &job, requests, window.as_deref(), probe, permit).await;
                let _ = done.send(((job.generation, job.offset), op_channel, attempted, health));
            }
            .instrument(span),
        );
    }

    /// The lane ends: its sender's breaker is forgotten.
    fn close(&self) {
        self.ctx.circuits.forget(&self.breaker, self.channel);
    }
}

async fn sender_task(
    ctx: Arc<SendContext>,
    sender_key: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    idle: mpsc::UnboundedSender<Idle>,
) {
    let idle_after = ctx.idle_timeout.max(ctx.rates.period(&sender_key) * 2);
    let mut received: u64 = 0;
    let mut last_activity = Instant::now();
    let mut idle_reported = false;
    let mut pacer = Pacer::new(ctx.rates.limiter(&sender_key), Arc::clone(&ctx.semaphore));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut lane = Lane {
        ctx: Arc::clone(&ctx),
        queue: VecDeque::new(),
        breaker: ctx.circuits.sender_breaker(),
        channel: None,
        window: SendWindow::new(&ctx.rates, &sender_key).map(Arc::new),
        sender_type: SenderType::of(&sender_key).label(),
        done: done_tx,
        slowed_until: None,
    };
    let mut jobs_open = true;
    let mut auth_changes = ctx.auth.subscribe();
    loop {
        let now = Instant::now();
        let Some((picked, wake)) = lane.next(now) else {
            continue;
        };
        if !jobs_open && lane.queue.is_empty() {
            lane.close();
            return;
        }
        let stopping = ctx.stopping.is_cancelled();
        // While Twilio refuses the credentials nothing starts, except the
        // probe; a held operation still ends at its `not_after`. Held: when
        // to look again, if ever.
        let held = match ctx.auth.hold(now) {
            Hold::Open => None,
            Hold::Until(probe_at) => Some(lane.held_wake(probe_at, picked, now)),
        };
        let held_wake = held.flatten();
        let held_sleep =
            tokio::time::sleep_until(held_wake.unwrap_or(now + Duration::from_secs(3600)).into());
        let cells = picked.map_or(1, |i| cells(&lane.queue[i].job.op));
        let sleep =
            tokio::time::sleep_until(wake.unwrap_or(now + Duration::from_secs(3600)).into());
        let may_idle = lane.queue.is_empty() && jobs_open && !idle_reported && pacer.is_settled();
        let idle_at = tokio::time::sleep_until((last_activity + idle_after).into());
        tokio::select! {
            job = jobs.recv(), if jobs_open => match job {
                Some(job) => {
                    received += 1;
                    idle_reported = false;
                    last_activity = Instant::now();
                    let wait = Some(wait_span(&job, None));
                    lane.queue.push_back(Entry { job, requests: 0, counted: 0, ready_at: None, in_flight: false, wait });
                }
                None => jobs_open = false,
            },
            () = idle_at, if may_idle => {
                idle_reported = true;
                let _ = idle.send(Idle { sender_key: sender_key.clone(), received });
            },
            Some(done) = done_rx.recv() => {
                last_activity = Instant::now();
                lane.on_done(done);
            },
            () = sleep, if wake.is_some() => {},
            Ok(()) = auth_changes.changed() => {},
            () = held_sleep, if picked.is_some() && held_wake.is_some() => {},
            ready = pacer.ready(cells), if picked.is_some() && !stopping && held.is_none() => {
                let Some(ready) = ready else {
                    lane.close();
                    return;
                };
                if let Some(i) = picked {
                    lane.start(i, ready);
                }
            },
            () = ctx.stopping.cancelled(), if !stopping => {},
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_retry_is_counted_under_the_reason_of_its_failure() {
        let retry = |auth, http_status, code| Retry {
            requests: 1,
            code,
            http_status,
            message: String::new(),
            retry_after: None,
            auth,
        };
        let cases = [
            (retry(true, Some(401), Some(20003)), "auth"),
            (retry(false, Some(429), Some(20429)), "rate_limited"),
            (retry(false, Some(400), Some(20429)), "rate_limited"),
            (retry(false, Some(503), None), "server_error"),
            (retry(false, Some(500), Some(20500)), "server_error"),
            (retry(false, None, None), "network"),
            (retry(false, Some(400), Some(30001)), "slow_down"),
        ];
        for (retry, reason) in cases {
            assert_eq!(retry.reason(), reason, "{retry:?}");
        }
    }

    fn op(conversation: &str) -> OutboundOperation {
        OutboundOperation {
            operation_id: "x".into(),
            conversation_id: conversation.into(),
            kind: OperationKind::SendMessage,
            channel: Channel::Sms,
            sender_key: "sms:+14155550199".into(),
            to: Some("+14155550100".into()),
            from: Some("+14155550199".into()),
            messaging_service_sid: None,
            body: Some("hi".into()),
            media_urls: vec![],
            content_sid: None,
            content_variables_json: None,
            response_id: None,
            part_index: 0,
            part_count: 1,
            segments: Some(3),
            encoding: None,
            template_reason: None,
            call: None,
            params: BTreeMap::new(),
            created_at: 0,
            not_after: None,
            traceparent: None,
        }
    }

    fn entry(conversation: &str, offset: i64) -> Entry {
        Entry {
            job: Job {
                partition: 0,
                offset,
                generation: 1,
                op: Arc::new(op(conversation)),
                first_seen: 0,
                span: Span::none(),
                traceparent: None,
            },
            requests: 0,
            counted: 0,
            ready_at: None,
            in_flight: false,
            wait: None,
        }
    }

    #[test]
    fn a_waiting_conversation_is_not_overtaken() {
        let now = Instant::now();
        let mut q: VecDeque<Entry> = [entry("A", 0), entry("A", 1), entry("B", 2)].into();
        assert_eq!(pick(&q, now), (Some(0), None));
        q[0].ready_at = Some(now + Duration::from_secs(1));
        let (picked, wake) = pick(&q, now);
        assert_eq!(picked, Some(2), "A's second op must wait for A's first");
        assert_eq!(wake, Some(now + Duration::from_secs(1)));
        q[2].in_flight = true;
        assert_eq!(pick(&q, now).0, None);
        assert_eq!(pick(&q, now + Duration::from_secs(2)).0, Some(0));
        q[0].ready_at = None;
        q[0].in_flight = true;
        assert_eq!(
            pick(&q, now).0,
            None,
            "in flight blocks the conversation too"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d1 = policy.delay(1, None);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d4 = policy.delay(4, None);
            assert!(
                d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800),
                "{d4:?}"
            );
            assert!(policy.delay(30, None) <= Duration::from_secs(2));
            let after = policy.delay(1, Some(Duration::from_secs(3)));
            assert!(
                after >= Duration::from_secs(3) && after <= Duration::from_millis(3_050),
                "{after:?}"
            );
        }
        // Spread past the Retry-After, not all at once.
        let spread: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| policy.delay(2, Some(Duration::from_secs(3))))
            .collect();
        assert!(spread.len() > 5, "{spread:?}");
    }

    #[test]
    fn consent_and_cells() {
        let mut o = op("A");
        assert!(needs_consent(&o));
        assert_eq!(cells(&o), 3);
        o.params.insert("si.purpose".into(), CONSENT_PURPOSE.into());
        assert!(!needs_consent(&o));
        let mut close = op("A");
        close.kind = OperationKind::CloseConversation;
        assert!(!needs_consent(&close));
        // A call under the consent voice-link placed it with: that channel
        // and scope; a call naming none is not re-checked.
        let mut call = op("A");
        call.kind = OperationKind::CreateCall;
        call.channel = Channel::Voice;
        assert!(!needs_consent(&call));
        call.params.insert(
            si_consent_gate::CALL_CONSENT_CHANNEL_PARAM.into(),
            "whatsapp".into(),
        );
        call.params.insert(
            si_consent_gate::CALL_CONSENT_SCOPE_PARAM.into(),
            "+14155550199".into(),
        );
        assert_eq!(
            consent_subject(&call),
            Some((Channel::Whatsapp, "+14155550199".to_owned()))
        );
        assert_eq!(cells(&close), 1);
        let mut wa = op("A");
        wa.channel = Channel::Whatsapp;
        assert_eq!(cells(&wa), 1);
    }

    #[test]
    fn live_generations() {
        let live = Live::default();
        live.assign(3, 7);
        assert!(live.is_current(3, 7));
        assert!(!live.is_current(3, 6));
        live.revoke(3);
        assert!(!live.is_current(3, 7));
    }
}
