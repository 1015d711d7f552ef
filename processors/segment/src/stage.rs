//! The segment stage: `si.conversation.events.v1` + `si.responses.v1` →
//! `twilio.outbound.v1` (+ `si.compliance.v1` for blocked responses), exactly
//! once, on the shared stream runner ([`si_runtime::stream`]).
//!
//! Both inputs are keyed by conversation id and co-partitioned, so the instance
//! that owns partition `p` sees every event and every response of the
//! conversations of `p`, in partition order per topic, with the state of `p`.
//!
//! - An event updates what segment knows about its conversation (state key
//!   `conv|<conversation id>`, kept `CONVERSATION_TTL` after the last relevant
//!   event): its user participants on a text channel (SMS, WhatsApp, chat) with
//!   their address, our address they talk to (proxy address), locale and the
//!   time of their last inbound message (`MESSAGE_RECEIVED.occurred_at`, the
//!   start of the WhatsApp window), and whether Twilio closed it. Events write
//!   nothing else.
//! - A response (`Segmenter::on_response`) is turned into one
//!   [`OutboundOperation`] per part ([`crate::plan`]), in order, keyed by the
//!   sender key, or blocked by the consent gate, or dead-lettered.
//!
//! See the crate README for the exact rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry as MetricsRegistry,
};
use sha2::{Digest, Sha256};
use si_consent_gate::{ConsentGate, Verdict, has_consent};
use si_runtime::mask::mask_address;
use si_runtime::metrics::StageMetrics;
use si_runtime::processor::{
    InputRecord, Output, ProcessError, Processor, RecordContext, TimerContext,
};
use si_runtime::state::StateStore;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::{CommonConfig, Readiness};
use si_schemas::records::{
    Channel, CognitionResponse, ComplianceEvent, ComplianceEventKind, ComplianceSource,
    ConsentState, ConsentStatus, ConversationEvent, ConversationEventType, ConversationState,
    DeadLetter, DeadLetterErrorKind, DeliveryStatus, EventSource, OperationKind, OutboundOperation,
    PM_CONVERSATION_PREFIX, PRIORITY_PARAM, Priority, ResponsePurpose, SeenResponse,
    SegmentConversation, SegmentParticipant, SegmentPending, SegmentState, SegmentStateKind,
};
use si_schemas::{Codec, CodecError, Registry, topics};
use tokio_util::sync::CancellationToken;

use crate::pricing::PriceTable;
use crate::remedy::Policy;
use crate::{Error, Response, SegmentArgs, SegmentConfig, Timing, plan};

mod channel_metrics;
mod remediation;

pub use channel_metrics::final_status;

/// The stage name: consumer group `si-segment`, transactional ids
/// `si-segment-<POD_NAME>`.
pub const STAGE: &str = "segment";

/// Settings of the stage itself (the segmentation settings are [`SegmentArgs`]).
#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// How long a handled response_id is remembered, so that a re-sent
    /// response is delivered once (record time). Keep it at least as long as
    /// si.responses.v1's retention (7 days) so a replay of the topic sends nothing twice.
    #[arg(long, env = "RESPONSE_DEDUP_WINDOW", default_value = "7days", value_parser = humantime::parse_duration)]
    pub response_dedup_window: Duration,

    /// How long a conversation's recipients, sender and last inbound times are
    /// kept after its last event.
    #[arg(long, env = "CONVERSATION_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub conversation_ttl: Duration,

    /// Messaging Service SID (MG...) that Programmable Messaging replies are
    /// sent through (MessagingServiceSid, sender key and consent scope). Unset:
    /// they are sent From our address the user wrote to.
    #[arg(long, env = "MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,

    /// Send only to users who opted in explicitly (no consent entry, PENDING or
    /// UNKNOWN block). Default: only an opt-out blocks (texting first is consent).
    #[arg(long, env = "CONSENT_REQUIRE_OPT_IN", default_value_t = false, action = clap::ArgAction::Set)]
    pub consent_require_opt_in: bool,

    /// Delivery remediation: what to do, by Twilio error code, when a message
    /// fails after Twilio accepted it (or egress could not send it). Rules
    /// `CODE=STEP[,STEP…]` separated by `;`; steps `retry:<delay>[*<n>]`,
    /// `template`, `fallback` (urgent messages only), `give_up`; `*` is the rule
    /// for other codes. Empty: no remediation (nothing is tracked).
    #[arg(long, env = "REMEDIATION_POLICY", default_value = crate::remedy::DEFAULT_POLICY)]
    pub remediation_policy: String,

    /// Most remediation decisions per message (retries, template, fallback).
    #[arg(long, env = "REMEDIATION_MAX", default_value_t = 5)]
    pub remediation_max: u32,

    /// How long a sent message is remembered for remediation: a failure
    /// reported later is only recorded. Twilio's messages expire after their
    /// validity period (4 hours by default), so reports come within it.
    #[arg(long, env = "REMEDIATION_WINDOW", default_value = "6h", value_parser = humantime::parse_duration)]
    pub remediation_window: Duration,

    /// The SMS sender urgent WhatsApp messages fall back to: an E.164 number or
    /// a Messaging Service SID (MG…). Unset: MESSAGING_SERVICE_SID, else the
    /// WhatsApp sender's own number (a number enabled for both).
    #[arg(long, env = "SMS_FALLBACK_FROM")]
    pub sms_fallback_from: Option<String>,

    /// Prices for the estimated cost metric, in USD: `channel:COUNTRY=price`
    /// entries separated by `,`, per SMS segment (`sms`) or WhatsApp message
    /// (`whatsapp`), `*` for other countries, e.g.
    /// `sms:US=0.0083,sms:*=0.05,whatsapp:*=0.005`. An estimate: Twilio's
    /// invoice is the truth (see the README). Empty: no cost is estimated.
    #[arg(long, env = "PRICE_TABLE", default_value = "")]
    pub price_table: String,
}

/// Everything `si-segment` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-segment",
    about = "Cognition responses to ordered, consent-checked Twilio send operations, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner.
    #[command(flatten)]
    pub stream: StreamArgs,
    /// The stage.
    #[command(flatten)]
    pub stage: StageArgs,
    /// Segmentation.
    #[command(flatten)]
    pub segment: SegmentArgs,
}

impl Config {
    /// Cross-field checks and the processor's settings.
    ///
    /// # Errors
    /// With a message naming the variables that are wrong.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.stream
            .validate(self.common.service.drain_timeout)
            .map_err(anyhow::Error::msg)?;
        let segment = self.segment.config()?;
        let s = &self.stage;
        anyhow::ensure!(
            s.response_dedup_window > Duration::ZERO,
            "RESPONSE_DEDUP_WINDOW must be positive"
        );
        anyhow::ensure!(
            s.conversation_ttl > Duration::ZERO,
            "CONVERSATION_TTL must be positive"
        );
        let messaging_service_sid = non_empty(s.messaging_service_sid.as_deref());
        if let Some(sid) = &messaging_service_sid {
            anyhow::ensure!(
                sid.starts_with("MG"),
                "MESSAGING_SERVICE_SID must be a Messaging Service SID (MG...), got {sid:?}"
            );
        }
        let remediation = Policy::parse(&s.remediation_policy, s.remediation_max)
            .map_err(|e| anyhow::anyhow!("REMEDIATION_POLICY: {e}"))?;
        anyhow::ensure!(
            s.remediation_window > Duration::ZERO,
            "REMEDIATION_WINDOW must be positive"
        );
        let sms_fallback_from = non_empty(s.sms_fallback_from.as_deref());
        if let Some(from) = &sms_fallback_from {
            anyhow::ensure!(
                from.starts_with("MG") || si_schemas::records::is_e164(from),
                "SMS_FALLBACK_FROM must be an E.164 number or a Messaging Service SID (MG...), got {from:?}"
            );
        }
        let prices = PriceTable::parse(&s.price_table)?;
        Ok(Settings {
            segment,
            prices,
            dedup_window: s.response_dedup_window,
            conversation_ttl: s.conversation_ttl,
            messaging_service_sid,
            require_opt_in: s.consent_require_opt_in,
            remediation,
            remediation_window: s.remediation_window,
            sms_fallback_from,
        })
    }
}

/// A setting trimmed, `None` when empty.
fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What the processor needs besides its tables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How parts are cut.
    pub segment: SegmentConfig,
    /// Prices of the estimated cost metric.
    pub prices: PriceTable,
    /// How long a handled response id is remembered.
    pub dedup_window: Duration,
    /// How long a conversation is remembered after its last event.
    pub conversation_ttl: Duration,
    /// Messaging Service for Programmable Messaging replies.
    pub messaging_service_sid: Option<String>,
    /// Whether the consent gate requires an explicit opt-in.
    pub require_opt_in: bool,
    /// Delivery remediation.
    pub remediation: Policy,
    /// How long a sent message is remembered for remediation.
    pub remediation_window: Duration,
    /// The SMS sender of fallbacks (E.164 or MG…).
    pub sms_fallback_from: Option<String>,
}

impl Settings {
    /// Defaults of every flag, for tests.
    #[must_use]
    pub fn for_test(segment: SegmentConfig) -> Self {
        Self {
            segment,
            prices: PriceTable::default(),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            conversation_ttl: Duration::from_secs(30 * 24 * 3600),
            messaging_service_sid: None,
            require_opt_in: false,
            remediation: Policy::parse(crate::remedy::DEFAULT_POLICY, 5)
                .unwrap_or_else(|e| unreachable!("the default policy parses: {e}")),
            remediation_window: Duration::from_secs(6 * 3600),
            sms_fallback_from: None,
        }
    }
}

/// A record of either input topic.
#[derive(Debug, Clone)]
pub enum SegmentInput {
    /// From `si.conversation.events.v1`.
    Event(Box<ConversationEvent>),
    /// From `si.responses.v1`.
    Response(Box<CognitionResponse>),
    /// From `twilio.delivery.v1` (egress's statuses, for delivery remediation).
    Status(Box<DeliveryStatus>),
}

impl InputRecord for SegmentInput {
    async fn decode<'a>(
        topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> Result<Self, CodecError> {
        if topic == topics::RESPONSES {
            Ok(Self::Response(Box::new(codec.decode(bytes).await?)))
        } else if topic == topics::DELIVERY {
            Ok(Self::Status(Box::new(codec.decode(bytes).await?)))
        } else {
            Ok(Self::Event(Box::new(codec.decode(bytes).await?)))
        }
    }
}

/// Counters of the stage (no addresses or SIDs in labels).
#[derive(Debug, Clone)]
pub struct SegmentMetrics {
    /// Responses by outcome: `sent`, `template`, `blocked`, `duplicate`,
    /// `unknown_conversation`, `closed_conversation`, `no_sender`, `failed`,
    /// `not_for_user` (a summary for lifecycle).
    pub responses: IntCounterVec,
    /// Operations written, by channel and kind.
    pub parts: IntCounterVec,
    /// SMS segments Twilio bills for the operations written, by encoding: the sum
    /// of the parts' `segments`, each part a message of its own.
    pub sms_segments: IntCounterVec,
    /// Delivery remediation decisions, by action and Twilio error code.
    pub remediations: IntCounterVec,
    /// Channel metrics of the messages segment tracks (below).
    pub delivery: DeliveryMetrics,
}

/// Channel metrics: what happened to the messages segment wrote, from
/// egress's statuses and the delivery reports (tracked messages only: with
/// `REMEDIATION_POLICY` empty nothing is tracked and these stay at zero).
/// Labels are the channel (`sms`, `whatsapp`, `chat`), the sender class
/// ([`si_consent_gate::SenderClass`]) and the recipient's country: never an
/// address, SID or conversation id.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// Messages Twilio accepted (egress's ACCEPTED), by channel and sender class.
    pub sent: IntCounterVec,
    /// Final delivery reports, by channel, sender class and status
    /// (`delivered`, `read`, `undelivered`, `failed`).
    pub deliveries: IntCounterVec,
    /// From egress's ACCEPTED status to the delivered (or read) report, by
    /// channel (record times).
    pub time_to_delivered: HistogramVec,
    /// Estimated cost of the accepted messages in USD (`PRICE_TABLE`), by
    /// channel and recipient country.
    pub estimated_cost_usd: CounterVec,
    /// Segments per accepted message (Twilio's count), by channel.
    pub segments_per_message: HistogramVec,
}

impl DeliveryMetrics {
    fn new(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let sent = IntCounterVec::new(
            Opts::new(
                "si_segment_sent_total",
                "Messages segment wrote that Twilio accepted (egress's ACCEPTED status), by channel and sender class",
            ),
            &["channel", "sender_class"],
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "si_segment_deliveries_total",
                "Final delivery reports of messages segment wrote, by channel, sender class and status (delivered, read, undelivered, failed)",
            ),
            &["channel", "sender_class", "status"],
        )?;
        let time_to_delivered = HistogramVec::new(
            HistogramOpts::new(
                "si_segment_time_to_delivered_seconds",
                "From egress's ACCEPTED status to the delivered report (record times), by channel",
            )
            .buckets(vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
            ]),
            &["channel"],
        )?;
        let estimated_cost_usd = CounterVec::new(
            Opts::new(
                "si_segment_estimated_cost_usd_total",
                "Estimated cost in USD of the messages Twilio accepted (PRICE_TABLE; an estimate, not the invoice), by channel and recipient country",
            ),
            &["channel", "country"],
        )?;
        let segments_per_message = HistogramVec::new(
            HistogramOpts::new(
                "si_segment_segments_per_message",
                "Segments of each message Twilio accepted (Twilio's count, else segment's), by channel",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]),
            &["channel"],
        )?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(time_to_delivered.clone()))?;
        registry.register(Box::new(estimated_cost_usd.clone()))?;
        registry.register(Box::new(segments_per_message.clone()))?;
        Ok(Self {
            sent,
            deliveries,
            time_to_delivered,
            estimated_cost_usd,
            segments_per_message,
        })
    }
}

impl SegmentMetrics {
    /// Creates the counters and registers them in `registry`.
    ///
    /// # Errors
    /// When they are registered twice.
    pub fn new(registry: &MetricsRegistry) -> prometheus::Result<Self> {
        let responses = IntCounterVec::new(
            Opts::new(
                "si_segment_responses_total",
                "Cognition responses handled, by outcome",
            ),
            &["outcome"],
        )?;
        let parts = IntCounterVec::new(
            Opts::new(
                "si_segment_parts_total",
                "Outbound operations written, by channel and kind",
            ),
            &["channel", "kind"],
        )?;
        let sms_segments = IntCounterVec::new(
            Opts::new(
                "si_segment_sms_segments_total",
                "SMS segments Twilio bills for the operations written (each part counted as its own message), by encoding",
            ),
            &["encoding"],
        )?;
        let remediations = IntCounterVec::new(
            Opts::new(
                "si_segment_remediations_total",
                "Delivery remediation decisions, by action (retry_later, template, fallback, give_up, recovered, blocked) and Twilio error code",
            ),
            &["action", "code"],
        )?;
        registry.register(Box::new(remediations.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(parts.clone()))?;
        registry.register(Box::new(sms_segments.clone()))?;
        let delivery = DeliveryMetrics::new(registry)?;
        Ok(Self {
            responses,
            parts,
            sms_segments,
            remediations,
            delivery,
        })
    }

    /// Counters registered nowhere (tests, benches).
    ///
    /// # Panics
    /// Never: the definitions are static.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn unregistered() -> Self {
        Self::new(&MetricsRegistry::new()).expect("fresh registry")
    }

    fn outcome(&self, outcome: &str) {
        self.responses.with_label_values(&[outcome]).inc();
    }
}

/// The state key of a conversation.
#[must_use]
pub fn conversation_key(conversation_id: &str) -> String {
    format!("conv|{conversation_id}")
}

/// The state key of a handled response.
#[must_use]
pub fn seen_key(response_id: &str) -> String {
    format!("seen|{response_id}")
}

/// The operation id of a part: `<response_id>:<part_index>`.
#[must_use]
pub fn operation_id(response_id: &str, part_index: usize) -> String {
    format!("{response_id}:{part_index}")
}

/// The event id of a BLOCKED_OUTBOUND compliance event: a UUID from SHA-256
/// of the response id and the recipient, the same on every replay.
#[must_use]
pub fn blocked_event_id(response_id: &str, channel: Channel, address: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"si.segment.blocked_outbound");
    hasher.update([0u8]);
    hasher.update(response_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(channel.address_key(address).as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Where and how a response is sent.
struct Route {
    kind: OperationKind,
    channel: Channel,
    sender_key: String,
    scope: String,
    to: Option<String>,
    from: Option<String>,
    messaging_service_sid: Option<String>,
}

/// A message the consent gate refused: what its BLOCKED_OUTBOUND event names.
struct Refusal<'a> {
    /// The response id (or the operation id of a resend).
    message_ref: &'a str,
    conversation_id: &'a str,
    channel: Channel,
    address: &'a str,
    scope: &'a str,
    locale: Option<&'a str>,
    now: i64,
}

/// The segment processor.
pub struct Segmenter {
    settings: Settings,
    gate: ConsentGate,
    metrics: SegmentMetrics,
}

impl Segmenter {
    /// A processor over `gate` (consent tables) with `settings`.
    #[must_use]
    pub fn new(settings: Settings, gate: ConsentGate, metrics: SegmentMetrics) -> Self {
        Self {
            settings,
            gate,
            metrics,
        }
    }

    /// Learns from a conversation event; writes nothing but state.
    fn on_event(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        if event.conversation_id.is_empty() {
            return Err(ProcessError::Invalid(
                "conversation event without conversation_id".into(),
            ));
        }
        if event.event_type == ConversationEventType::DeliveryUpdated {
            let Some(d) = &event.delivery else {
                return Ok(Vec::new());
            };
            return Ok(self.on_delivery_report(
                ctx.timestamp_ms,
                &d.message_sid,
                d.status,
                d.error_code,
                d.error_message.as_deref(),
                state,
            ));
        }
        let key = conversation_key(&event.conversation_id);
        let existing = conversation_of(state, &key);
        let mut conversation = existing.clone().unwrap_or_else(|| SegmentConversation {
            conversation_id: event.conversation_id.clone(),
            locale: None,
            closed: false,
            last_event_at: ctx.timestamp_ms,
            participants: Vec::new(),
            programmable_messaging: false,
        });
        if event.source == EventSource::Messaging {
            conversation.programmable_messaging = true;
        }
        let relevant = match event.event_type {
            ConversationEventType::MessageReceived => {
                let Some(p) = text_participant(event) else {
                    return Ok(Vec::new());
                };
                let locale = Some(event.locale.clone()).filter(|l| !l.is_empty());
                let entry = upsert(&mut conversation.participants, p);
                entry.last_inbound_at = Some(
                    entry
                        .last_inbound_at
                        .map_or(event.occurred_at, |t| t.max(event.occurred_at)),
                );
                if locale.is_some() {
                    entry.locale.clone_from(&locale);
                    conversation.locale = locale;
                }
                true
            }
            ConversationEventType::ParticipantJoined => {
                let Some(p) = text_participant(event) else {
                    return Ok(Vec::new());
                };
                upsert(&mut conversation.participants, p);
                true
            }
            ConversationEventType::ParticipantLeft => {
                let Some(p) = text_participant(event) else {
                    return Ok(Vec::new());
                };
                let before = conversation.participants.len();
                conversation.participants.retain(|q| !same(q, &p));
                before != conversation.participants.len()
            }
            ConversationEventType::ConversationStarted
            | ConversationEventType::ConversationStateChanged => {
                // CLOSED is final at Twilio (a new conversation gets a new
                // SID). lifecycle's CLOSED of a Programmable Messaging one
                // closes nothing here: no Twilio state refuses its messages,
                // and a message of the user normalized before the closure
                // became known may have opened it again for lifecycle.
                let closing = event
                    .state_change
                    .as_ref()
                    .is_some_and(|s| s.state_to == ConversationState::Closed)
                    && !event.is_programmable_messaging()
                    && !conversation.programmable_messaging;
                if closing {
                    conversation.closed = true;
                }
                closing && existing.is_some()
            }
            _ => false,
        };
        if !relevant {
            return Ok(Vec::new());
        }
        conversation.last_event_at = conversation.last_event_at.max(ctx.timestamp_ms);
        state.put_with_ttl(
            key,
            SegmentState {
                kind: SegmentStateKind::Conversation,
                seen_response: None,
                conversation: Some(conversation),
                pending: None,
                sent: None,
                report: None,
            },
            self.settings.conversation_ttl,
        );
        Ok(self.release(ctx, &event.conversation_id, state))
    }

    /// Keeps a response whose conversation segment has not seen yet, until
    /// the conversation's first event ([`Self::release`]) or for
    /// [`PARK_TIMEOUT_MS`], after which it is dead-lettered.
    ///
    /// A parked response keeps the trace it arrived in (its record's
    /// `traceparent`), so the operations it becomes on release stay in it.
    fn park(
        &self,
        ctx: &RecordContext<'_>,
        response: &CognitionResponse,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let now = ctx.timestamp_ms;
        let key = pending_key(&response.conversation_id);
        let existing = state.get(&key).and_then(|s| s.pending.clone());
        let first = existing.is_none();
        let mut pending = existing.unwrap_or_else(|| SegmentPending {
            conversation_id: response.conversation_id.clone(),
            parked_at: now,
            responses_json: Vec::new(),
        });
        if pending.responses_json.len() >= MAX_PARKED {
            self.metrics.outcome("unknown_conversation");
            return Err(ProcessError::Failed(format!(
                "unknown conversation {}: {MAX_PARKED} responses already wait for its first \
                 si.conversation.events.v1 event",
                response.conversation_id
            )));
        }
        let mut response = response.clone();
        if let Some(traceparent) = ctx.traceparent {
            response.traceparent = Some(traceparent.to_owned());
        }
        let json = serde_json::to_string(&response)
            .map_err(|e| ProcessError::Failed(format!("a response does not park: {e}")))?;
        pending.responses_json.push(json);
        state.put_with_ttl(
            key.clone(),
            SegmentState {
                kind: SegmentStateKind::PendingResponses,
                seen_response: None,
                conversation: None,
                pending: Some(pending),
                sent: None,
                report: None,
            },
            Duration::from_millis(u64::try_from(PARK_TIMEOUT_MS * 2).unwrap_or(u64::MAX)),
        );
        if first {
            state.set_timer(&key, now.saturating_add(PARK_TIMEOUT_MS));
        }
        self.metrics.outcome("parked");
        Ok(Vec::new())
    }

    /// The conversation is known now: its parked responses go through as if
    /// they had just arrived (one that still fails is dead-lettered).
    fn release(
        &self,
        ctx: &RecordContext<'_>,
        conversation_id: &str,
        state: &mut StateStore<SegmentState>,
    ) -> Vec<Output> {
        let key = pending_key(conversation_id);
        let Some(pending) = state.get(&key).and_then(|s| s.pending.clone()) else {
            return Vec::new();
        };
        state.delete(&key);
        let mut outputs = Vec::new();
        for json in &pending.responses_json {
            let response = match serde_json::from_str::<CognitionResponse>(json) {
                Ok(r) => r,
                Err(e) => {
                    outputs.push(parked_dead_letter(
                        conversation_id,
                        json,
                        &format!("a parked response does not read back: {e}"),
                        ctx.timestamp_ms,
                    ));
                    continue;
                }
            };
            match self.on_response(ctx, &response, state) {
                Ok(more) => outputs.extend(
                    more.into_iter()
                        .map(|output| output.in_trace(response.traceparent.clone())),
                ),
                Err(e) => outputs.push(parked_dead_letter(
                    conversation_id,
                    json,
                    &e.to_string(),
                    ctx.timestamp_ms,
                )),
            }
        }
        outputs
    }

    /// Turns a response into operations, a compliance event, or an error
    /// (dead letter).
    fn on_response(
        &self,
        ctx: &RecordContext<'_>,
        response: &CognitionResponse,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        if response.response_id.trim().is_empty() {
            return Err(ProcessError::Invalid("response without response_id".into()));
        }
        if response.conversation_id.is_empty() {
            return Err(ProcessError::Invalid(
                "response without conversation_id".into(),
            ));
        }
        if response.purpose != ResponsePurpose::Reply {
            // A summary for lifecycle (or a purpose newer than this build):
            // never sent to the user as such.
            self.metrics.outcome("not_for_user");
            return Ok(Vec::new());
        }
        let seen = seen_key(&response.response_id);
        if state.get(&seen).is_some() {
            self.metrics.outcome("duplicate");
            tracing::debug!(
                response_id = %response.response_id,
                "response already handled: skipped"
            );
            return Ok(Vec::new());
        }
        let Some(conversation) =
            conversation_of(state, &conversation_key(&response.conversation_id))
        else {
            // The events and the responses of a conversation come from two
            // topics read in no guaranteed order: wait for its first event.
            return self.park(ctx, response, state);
        };
        if conversation.closed {
            self.metrics.outcome("closed_conversation");
            return Err(ProcessError::Failed(format!(
                "conversation {} is closed at Twilio: nothing can be sent to it",
                response.conversation_id
            )));
        }
        let Some(primary) = primary(&conversation.participants) else {
            self.metrics.outcome("no_recipient");
            return Err(ProcessError::Failed(format!(
                "conversation {} has no user participant on SMS, WhatsApp or chat",
                response.conversation_id
            )));
        };
        let route = self
            .route(&conversation, primary)
            .inspect_err(|_| self.metrics.outcome("no_sender"))?;
        let locale = response
            .locale
            .clone()
            .or_else(|| primary.locale.clone())
            .or_else(|| conversation.locale.clone());
        let now = ctx.timestamp_ms;

        let refused = self.refusals(
            response,
            &conversation,
            primary,
            &route,
            locale.as_deref(),
            now,
        );
        if !refused.is_empty() {
            self.metrics.outcome("blocked");
            self.remember(state, &response.response_id, now, 0, true);
            // Named on the conversation's own topic too, for its archive.
            return Ok(si_consent_gate::with_recorded(
                refused,
                &response.session_id,
                now,
            ));
        }
        self.operations(response, primary, &route, locale.as_deref(), now, state)
    }

    /// The consent gate: a BLOCKED_OUTBOUND event for every phone recipient
    /// the message would reach who may not get it (none: it may be sent).
    fn refusals(
        &self,
        response: &CognitionResponse,
        conversation: &SegmentConversation,
        primary: &SegmentParticipant,
        route: &Route,
        locale: Option<&str>,
        now: i64,
    ) -> Vec<Output> {
        let recipients: Vec<&SegmentParticipant> = if route.kind == OperationKind::SendMessage {
            vec![primary]
        } else {
            conversation.participants.iter().collect()
        };
        let mut blocked = Vec::new();
        for p in recipients {
            let Some(address) = p.address.as_deref().filter(|_| has_consent(p.channel)) else {
                continue;
            };
            if let Verdict::Blocked { status, decision } = self.gate.check(
                p.channel,
                address,
                &route.scope,
                self.settings.require_opt_in,
            ) {
                blocked.push(self.blocked_outbound(
                    &Refusal {
                        message_ref: &response.response_id,
                        conversation_id: &response.conversation_id,
                        channel: p.channel,
                        address,
                        scope: &route.scope,
                        locale,
                        now,
                    },
                    status,
                    decision.as_ref(),
                ));
            }
        }
        blocked
    }

    /// The response planned into parts (segmented, or a template where the
    /// channel needs one), each an operation to egress, tracked and counted.
    fn operations(
        &self,
        response: &CognitionResponse,
        primary: &SegmentParticipant,
        route: &Route,
        locale: Option<&str>,
        now: i64,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let request = Response {
            text: &response.text,
            media: &response.media,
            channel: route.channel,
            locale,
            hints: response.hints.as_ref(),
            conversations: route.kind == OperationKind::SendConversationMessage,
        };
        let timing = Timing {
            now_ms: now,
            last_inbound_ms: primary.last_inbound_at,
        };
        let plan = plan(&request, timing, &self.settings.segment).map_err(|e| {
            self.metrics.outcome("failed");
            match e {
                Error::Empty | Error::MediaWithoutUrl { .. } => {
                    ProcessError::Invalid(e.to_string())
                }
                _ => ProcessError::Failed(e.to_string()),
            }
        })?;
        for warning in &plan.warnings {
            tracing::info!(response_id = %response.response_id, warning, "segmentation");
        }
        let template = plan.parts.iter().any(|p| p.content_sid.is_some());
        let mut outputs = Vec::with_capacity(plan.parts.len());
        for part in &plan.parts {
            let mut op = OutboundOperation {
                operation_id: operation_id(&response.response_id, part.index),
                conversation_id: response.conversation_id.clone(),
                kind: route.kind,
                channel: route.channel,
                sender_key: route.sender_key.clone(),
                to: route.to.clone(),
                from: route.from.clone(),
                messaging_service_sid: route.messaging_service_sid.clone(),
                body: None,
                media_urls: Vec::new(),
                content_sid: None,
                content_variables_json: None,
                response_id: Some(response.response_id.clone()),
                part_index: 0,
                part_count: 1,
                segments: None,
                encoding: None,
                template_reason: None,
                call: None,
                params: BTreeMap::new(),
                created_at: now,
                not_after: None,
                traceparent: response.traceparent.clone(),
            };
            part.apply_to(&mut op);
            if let Some(priority) = response
                .hints
                .as_ref()
                .map(|h| h.priority)
                .filter(|p| *p != Priority::Normal)
            {
                op.params
                    .insert(PRIORITY_PARAM.to_owned(), priority.as_str().to_owned());
            }
            let origin = op.operation_id.clone();
            self.track(state, &op, &origin, 0, BTreeMap::new());
            self.metrics
                .parts
                .with_label_values(&[route.channel.key_prefix(), route.kind.as_str()])
                .inc();
            if let (Some(encoding), Some(segments)) = (part.encoding, part.segments) {
                self.metrics
                    .sms_segments
                    .with_label_values(&[encoding.to_schema().as_str()])
                    .inc_by(u64::try_from(segments).unwrap_or(0));
            }
            outputs.push(Output::new(topics::OUTBOUND, route.sender_key.clone(), op));
        }
        self.metrics
            .outcome(if template { "template" } else { "sent" });
        self.remember(
            state,
            &response.response_id,
            now,
            i32::try_from(outputs.len()).unwrap_or(i32::MAX),
            false,
        );
        Ok(outputs)
    }

    /// The BLOCKED_OUTBOUND compliance event of a refused message.
    fn blocked_outbound(
        &self,
        refusal: &Refusal<'_>,
        status: ConsentStatus,
        decision: Option<&Arc<ConsentState>>,
    ) -> Output {
        tracing::info!(
            conversation_id = %refusal.conversation_id,
            message_ref = %refusal.message_ref,
            to = %mask_address(&refusal.channel.address_key(refusal.address)),
            status = %status,
            "message blocked by the consent gate"
        );
        let mut details = BTreeMap::new();
        details.insert("stage".to_owned(), STAGE.to_owned());
        details.insert("consent_status".to_owned(), status.as_str().to_owned());
        details.insert(
            "require_opt_in".to_owned(),
            self.settings.require_opt_in.to_string(),
        );
        if let Some(d) = decision {
            details.insert("decision_scope".to_owned(), d.sender_scope.clone());
            details.insert("decided_at".to_owned(), d.decided_at.to_string());
            if let Some(r) = &d.event_ref {
                details.insert("decision_ref".to_owned(), r.clone());
            }
        }
        let event = ComplianceEvent {
            event_id: blocked_event_id(refusal.message_ref, refusal.channel, refusal.address),
            kind: ComplianceEventKind::BlockedOutbound,
            source: decision.map_or(ComplianceSource::Unknown, |d| d.source),
            address: refusal.address.to_owned(),
            channel: refusal.channel,
            sender_scope: Some(refusal.scope.to_owned()),
            conversation_id: Some(refusal.conversation_id.to_owned()),
            message_ref: Some(refusal.message_ref.to_owned()),
            keyword: None,
            locale: refusal.locale.map(str::to_owned),
            at: refusal.now,
            details,
        };
        Output::new(
            topics::COMPLIANCE,
            refusal.channel.address_key(refusal.address),
            event,
        )
    }

    fn remember(
        &self,
        state: &mut StateStore<SegmentState>,
        response_id: &str,
        now: i64,
        part_count: i32,
        blocked: bool,
    ) {
        state.put_with_ttl(
            seen_key(response_id),
            SegmentState {
                kind: SegmentStateKind::SeenResponse,
                seen_response: Some(SeenResponse {
                    response_id: response_id.to_owned(),
                    first_seen_at: now,
                    part_count,
                    blocked,
                }),
                conversation: None,
                pending: None,
                sent: None,
                report: None,
            },
            self.settings.dedup_window,
        );
    }

    /// Operation kind, channel, addresses, sender key and consent scope.
    fn route(
        &self,
        conversation: &SegmentConversation,
        primary: &SegmentParticipant,
    ) -> Result<Route, ProcessError> {
        let conversation_id = conversation.conversation_id.as_str();
        let channel = primary.channel;
        let mg = self.settings.messaging_service_sid.clone();
        let proxy = primary.proxy_address.clone();
        let no_sender = || {
            ProcessError::Failed(format!(
                "conversation {conversation_id}: our sending address is unknown (no proxy \
                 address seen) and MESSAGING_SERVICE_SID is not set"
            ))
        };
        let pm = conversation_id.starts_with(PM_CONVERSATION_PREFIX)
            || conversation.programmable_messaging;
        // One sender identity per number, as consent's replies use.
        let find_sender = || {
            si_consent_gate::sender(
                channel,
                conversation_id,
                pm,
                proxy.as_deref(),
                mg.as_deref(),
            )
            .ok_or_else(no_sender)
        };
        if pm {
            let Some(to) = primary.address.clone().filter(|_| has_consent(channel)) else {
                return Err(ProcessError::Failed(format!(
                    "conversation {conversation_id}: a Programmable Messaging conversation \
                     needs an SMS or WhatsApp recipient address"
                )));
            };
            let sender = find_sender()?;
            return Ok(Route {
                kind: OperationKind::SendMessage,
                channel,
                sender_key: sender.key,
                scope: sender.scope,
                to: Some(to),
                from: sender.from,
                messaging_service_sid: sender.messaging_service_sid,
            });
        }
        let sender = find_sender()?;
        // Conversations: Twilio sends through the participants' bindings; to/from
        // name the primary recipient and our address for egress's consent re-check.
        let (sender_key, scope) = (sender.key, sender.scope);
        Ok(Route {
            kind: OperationKind::SendConversationMessage,
            channel,
            sender_key,
            scope,
            to: primary.address.clone(),
            from: proxy,
            messaging_service_sid: None,
        })
    }
}

impl Processor for Segmenter {
    type Input = SegmentInput;
    type State = SegmentState;

    /// The cognition layer names a response's trace in its value.
    fn traceparent_in<'a>(&self, input: &'a SegmentInput) -> Option<&'a str> {
        match input {
            SegmentInput::Response(response) => response.traceparent.as_deref(),
            _ => None,
        }
    }

    /// Parked responses whose conversation never showed up are dead-lettered.
    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        if ctx.key.starts_with("retry|") {
            return Ok(self.on_retry_timer(ctx.now_ms, ctx.key, state));
        }
        let Some(pending) = state.get(ctx.key).and_then(|s| s.pending.clone()) else {
            return Ok(Vec::new());
        };
        state.delete(ctx.key);
        let reason = format!(
            "unknown conversation {}: no si.conversation.events.v1 event of it within {} s, so \
             its channel and recipient are unknown",
            pending.conversation_id,
            PARK_TIMEOUT_MS / 1000
        );
        Ok(pending
            .responses_json
            .iter()
            .map(|json| {
                self.metrics.outcome("unknown_conversation");
                parked_dead_letter(&pending.conversation_id, json, &reason, ctx.now_ms)
            })
            .collect())
    }

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: SegmentInput,
        state: &mut StateStore<SegmentState>,
    ) -> Result<Vec<Output>, ProcessError> {
        match input {
            SegmentInput::Event(event) => self.on_event(ctx, &event, state),
            SegmentInput::Response(response) => self.on_response(ctx, &response, state),
            SegmentInput::Status(status) => Ok(self.on_status(ctx.timestamp_ms, &status, state)),
        }
    }
}

/// How long a response waits for its conversation's first event.
pub const PARK_TIMEOUT_MS: i64 = 30_000;
/// Most responses parked per conversation.
pub const MAX_PARKED: usize = 100;

/// State key of a conversation's parked responses.
#[must_use]
pub fn pending_key(conversation_id: &str) -> String {
    format!("pending|{conversation_id}")
}

/// The dead letter of a parked response (no Kafka coordinates: it was
/// consumed, then parked; the response is in the header `si-response-json`).
fn parked_dead_letter(conversation_id: &str, json: &str, reason: &str, now: i64) -> Output {
    let record = DeadLetter {
        stage: STAGE.to_owned(),
        source_topic: topics::RESPONSES.to_owned(),
        source_partition: -1,
        source_offset: -1,
        reason: reason.to_owned(),
        error_kind: DeadLetterErrorKind::ProcessingFailed,
        original_key: Some(conversation_id.as_bytes().to_vec()),
        original_value: None,
        headers: BTreeMap::from([("si-response-json".to_owned(), json.to_owned())]),
        at: now,
    };
    tracing::warn!(conversation_id, %reason, "parked response dead-lettered");
    Output::new(topics::DEAD_LETTER, conversation_id.to_owned(), record)
}

fn conversation_of(state: &StateStore<SegmentState>, key: &str) -> Option<SegmentConversation> {
    state
        .get(key)
        .filter(|s| s.kind == SegmentStateKind::Conversation)
        .and_then(|s| s.conversation.clone())
}

/// The event's participant when it is a user on a text channel.
fn text_participant(event: &ConversationEvent) -> Option<SegmentParticipant> {
    let p = event.participant.as_ref()?;
    if !matches!(p.channel, Channel::Sms | Channel::Whatsapp | Channel::Chat) {
        return None;
    }
    let change = event.participant_change.as_ref();
    let address = p
        .address
        .clone()
        .or_else(|| change.and_then(|c| c.address.clone()));
    let identity = p
        .identity
        .clone()
        .or_else(|| change.and_then(|c| c.identity.clone()));
    if address.is_none() && identity.is_none() {
        return None;
    }
    Some(SegmentParticipant {
        channel: p.channel,
        address,
        proxy_address: p
            .proxy_address
            .clone()
            .or_else(|| change.and_then(|c| c.proxy_address.clone())),
        identity,
        participant_sid: p
            .participant_sid
            .clone()
            .or_else(|| change.map(|c| c.participant_sid.clone())),
        locale: None,
        last_inbound_at: None,
    })
}

/// Whether two entries are the same participant: same channel and address
/// (phone) or identity (chat).
fn same(a: &SegmentParticipant, b: &SegmentParticipant) -> bool {
    a.channel == b.channel
        && match (&a.address, &b.address) {
            (Some(x), Some(y)) => x == y,
            (None, None) => a.identity.is_some() && a.identity == b.identity,
            _ => false,
        }
}

/// Adds `p` or merges what it knows into the existing entry; returns the entry.
fn upsert(
    participants: &mut Vec<SegmentParticipant>,
    p: SegmentParticipant,
) -> &mut SegmentParticipant {
    let index = match participants.iter().position(|q| same(q, &p)) {
        Some(i) => {
            let q = &mut participants[i];
            if p.proxy_address.is_some() {
                q.proxy_address = p.proxy_address;
            }
            if p.identity.is_some() {
                q.identity = p.identity;
            }
            if p.participant_sid.is_some() {
                q.participant_sid = p.participant_sid;
            }
            i
        }
        None => {
            participants.push(p);
            participants.len() - 1
        }
    };
    &mut participants[index]
}

/// The recipient a response is planned for: the participant who wrote last,
/// else the first one seen.
fn primary(participants: &[SegmentParticipant]) -> Option<&SegmentParticipant> {
    participants
        .iter()
        .enumerate()
        .max_by_key(|(i, p)| (p.last_inbound_at, std::cmp::Reverse(*i)))
        .map(|(_, p)| p)
}

/// Runs segment until `shutdown`: admin listener, consent tables, then the stream.
///
/// # Errors
/// On invalid configuration, when Kafka or the registry cannot be set up, and on
/// fatal stream errors (the process should exit non-zero and be restarted).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let metrics = StageMetrics::new(STAGE);
    let readiness = Readiness::default();
    si_runtime::with_admin(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        &shutdown.clone(),
        run_stream(&config, settings, metrics, readiness, shutdown),
    )
    .await
}

async fn run_stream(
    config: &Config,
    settings: Settings,
    metrics: StageMetrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kafka = &config.common.kafka;
    let registry = Registry::new(config.common.registry.config())?;
    let codec = Codec::new(registry);
    let gate = ConsentGate::start(
        kafka,
        STAGE,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await
    .context("starting the consent tables")?;
    // Processing waits for the consent tables: a response gated against a
    // half-loaded table could reach someone who opted out.
    tokio::select! {
        () = gate.loaded() => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    let segment_metrics = SegmentMetrics::new(metrics.registry())?;
    let conversation_ttl = settings.conversation_ttl;
    let processor = Segmenter::new(settings, gate, segment_metrics);
    let env = StreamEnv {
        kafka: kafka.clone(),
        args: config.stream.clone(),
        drain_timeout: config.common.service.drain_timeout,
        codec,
        metrics,
        readiness,
    };
    let spec = StreamSpec {
        stage: STAGE,
        outputs: topics::written_by("segment").to_vec(),
        inputs: vec![
            topics::CONVERSATION_EVENTS,
            topics::RESPONSES,
            topics::DELIVERY,
        ],
        changelog: topics::SEGMENT_STATE,
        state_ttl: conversation_ttl,
        batch_linger: Duration::ZERO,
    };
    stream::run(env, spec, processor, shutdown).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use si_runtime::table::GlobalTable;
    use si_schemas::records::{
        ConsentState, ConsentStatus, DeliveryOutcome, DeliveryState, DeliveryUpdate, EventSource,
        LocaleSource, MediaRef, Participant, RESEND_OF_PARAM, RemediationAction, SegmentationHints,
        StateChange, TextEncoding,
    };

    use super::*;
    use crate::WINDOW_CLOSED_REASON;
    use crate::config::WhatsappTemplate;

    const USER: &str = "+14155550100";
    const OURS: &str = "+14155550199";
    const H: i64 = 3_600_000;
    const T0: i64 = 1_763_800_000_000;
    const PM: &str = "pm-0123456789abcdef0123456789abcdef";
    const CH: &str = "CH0123456789abcdef0123456789abcdef";

    fn participant(channel: Channel) -> Participant {
        Participant {
            address: Some(USER.into()),
            channel,
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(OURS.into()),
        }
    }

    fn event(
        conversation: &str,
        event_type: ConversationEventType,
        participant: Option<Participant>,
        at: i64,
    ) -> ConversationEvent {
        ConversationEvent {
            channel: participant.as_ref().map_or(Channel::Unknown, |p| p.channel),
            source: EventSource::Messaging,
            participant,
            locale: "en-US".into(),
            locale_source: LocaleSource::PhoneCountry,
            webhook_id: format!("w-{at}"),
            dedup_key: format!("d-{at}"),
            ..ConversationEvent::adapter(format!("e-{at}"), conversation, "s-1", event_type, at)
        }
    }

    fn inbound(conversation: &str, channel: Channel, at: i64) -> ConversationEvent {
        event(
            conversation,
            ConversationEventType::MessageReceived,
            Some(participant(channel)),
            at,
        )
    }

    fn response(id: &str, conversation: &str, text: &str) -> CognitionResponse {
        CognitionResponse {
            response_id: id.into(),
            conversation_id: conversation.into(),
            session_id: "s-1".into(),
            in_reply_to: None,
            text: text.into(),
            media: Vec::new(),
            locale: None,
            hints: None,
            created_at: T0,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            purpose: ResponsePurpose::Reply,
        }
    }

    fn consent(scope: &str, status: ConsentStatus, at: i64) -> (String, ConsentState) {
        let entry = ConsentState {
            address: USER.into(),
            channel: Channel::Sms,
            sender_scope: scope.into(),
            status,
            source: ComplianceSource::Keyword,
            decided_at: at,
            updated_at: at,
            keyword: Some("STOP".into()),
            event_ref: Some("c-1".into()),
        };
        (entry.key(), entry)
    }

    fn gate(local: Vec<(String, ConsentState)>) -> ConsentGate {
        ConsentGate::from_tables(
            GlobalTable::from_entries(topics::CONSENT, local),
            GlobalTable::from_entries(topics::CONSENT_REGISTRY, Vec::new()),
        )
    }

    fn config() -> SegmentConfig {
        SegmentConfig {
            whatsapp_template: Some(WhatsappTemplate {
                content_sid: "HX0123456789abcdef0123456789abcdef".into(),
                variables_json: r#"{"1":"Si"}"#.into(),
            }),
            ..SegmentConfig::default()
        }
    }

    struct Harness {
        processor: Segmenter,
        state: StateStore<SegmentState>,
        metrics: SegmentMetrics,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(Settings::for_test(config()), gate(Vec::new()))
        }

        fn with(settings: Settings, gate: ConsentGate) -> Self {
            let metrics = SegmentMetrics::unregistered();
            Self {
                processor: Segmenter::new(settings, gate, metrics.clone()),
                state: StateStore::new(Duration::from_secs(30 * 24 * 3600)),
                metrics,
            }
        }

        fn feed(&mut self, input: SegmentInput, at: i64) -> Result<Vec<Output>, ProcessError> {
            let topic = match input {
                SegmentInput::Event(_) => topics::CONVERSATION_EVENTS,
                SegmentInput::Response(_) => topics::RESPONSES,
                SegmentInput::Status(_) => topics::DELIVERY,
            };
            self.state.set_now(at);
            self.processor
                .process(&RecordContext::for_test(topic, at), input, &mut self.state)
        }

        fn event(&mut self, event: ConversationEvent) {
            let at = event.occurred_at;
            let out = self.feed(SegmentInput::Event(Box::new(event)), at).unwrap();
            assert!(out.is_empty(), "events write no records");
        }

        fn respond(
            &mut self,
            response: CognitionResponse,
            at: i64,
        ) -> Result<Vec<Output>, ProcessError> {
            self.feed(SegmentInput::Response(Box::new(response)), at)
        }

        fn ops(&mut self, response: CognitionResponse, at: i64) -> Vec<OutboundOperation> {
            let out = self.respond(response, at).unwrap();
            out.iter()
                .map(|o| {
                    assert_eq!(o.topic(), topics::OUTBOUND);
                    let op = o.record::<OutboundOperation>().unwrap().clone();
                    assert_eq!(o.key(), op.sender_key, "keyed by sender_key");
                    op
                })
                .collect()
        }

        fn outcome(&self, outcome: &str) -> u64 {
            self.metrics.responses.with_label_values(&[outcome]).get()
        }
    }

    #[test]
    fn whatsapp_more_than_24_hours_after_the_last_inbound_is_a_template() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let late = h.ops(response("r-late", PM, "Hello again!"), T0 + 25 * H);
        assert_eq!(late.len(), 1);
        let op = &late[0];
        assert_eq!(op.kind, OperationKind::SendMessage);
        assert_eq!(op.channel, Channel::Whatsapp);
        assert_eq!(op.body, None);
        assert_eq!(
            op.content_sid.as_deref(),
            Some("HX0123456789abcdef0123456789abcdef")
        );
        assert_eq!(op.content_variables_json.as_deref(), Some(r#"{"1":"Si"}"#));
        assert_eq!(op.template_reason.as_deref(), Some(WINDOW_CLOSED_REASON));
        assert_eq!((op.part_index, op.part_count), (0, 1));
        assert_eq!(op.sender_key, format!("whatsapp:{OURS}"));
        assert_eq!(h.outcome("template"), 1);

        // Exactly 24 h is closed too; 1 ms before it is open.
        let at_24h = h.ops(response("r-24h", PM, "Hi"), T0 + 24 * H);
        assert!(at_24h[0].content_sid.is_some());
        let inside = h.ops(response("r-in", PM, "Hi"), T0 + 24 * H - 1);
        assert_eq!(inside[0].body.as_deref(), Some("Hi"));
        assert_eq!(inside[0].content_sid, None);
        assert_eq!(
            inside[0].not_after,
            Some(T0 + 24 * H),
            "not sent after the close"
        );
    }

    #[test]
    fn whatsapp_within_the_window_is_free_text_and_a_new_inbound_reopens_it() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let ops = h.ops(response("r-1", PM, "Sure, here you go."), T0 + H);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].body.as_deref(), Some("Sure, here you go."));
        assert_eq!(ops[0].template_reason, None);
        assert_eq!(ops[0].encoding, None, "no SMS encoding on WhatsApp");

        // The user writes again two days later: free text again.
        h.event(inbound(PM, Channel::Whatsapp, T0 + 48 * H));
        let ops = h.ops(response("r-2", PM, "Welcome back."), T0 + 49 * H);
        assert_eq!(ops[0].body.as_deref(), Some("Welcome back."));
        // An older inbound event replayed late does not move the window back.
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let ops = h.ops(response("r-3", PM, "Still open."), T0 + 50 * H);
        assert_eq!(ops[0].body.as_deref(), Some("Still open."));
    }

    #[test]
    fn whatsapp_user_who_never_wrote_gets_the_template() {
        let mut h = Harness::new();
        let mut joined = event(
            CH,
            ConversationEventType::ParticipantJoined,
            Some(participant(Channel::Whatsapp)),
            T0,
        );
        joined.source = EventSource::Conversations;
        h.event(joined);
        let ops = h.ops(response("r-1", CH, "Hello"), T0 + 1);
        assert_eq!(ops[0].kind, OperationKind::SendConversationMessage);
        assert!(ops[0].content_sid.is_some());
    }

    #[test]
    fn a_conversation_si_started_in_messaging_mode_is_sent_as_messages_whatever_its_id() {
        // Lifecycle names the conversation with the issuer's id and reports
        // the participant with source MESSAGING.
        let started = "outreach-0001";
        let mut h = Harness::new();
        h.event(event(
            started,
            ConversationEventType::ParticipantJoined,
            Some(participant(Channel::Sms)),
            T0,
        ));
        let ops = h.ops(response("r-1", started, "Your order shipped."), T0 + 1);
        assert_eq!(ops[0].kind, OperationKind::SendMessage);
        assert_eq!(ops[0].to.as_deref(), Some(USER));
        assert_eq!(ops[0].from.as_deref(), Some(OURS));
        assert_eq!(ops[0].conversation_id, started);

        // The same id reported by Conversations is a Conversations message.
        let mut h = Harness::new();
        let mut joined = event(
            started,
            ConversationEventType::ParticipantJoined,
            Some(participant(Channel::Sms)),
            T0,
        );
        joined.source = EventSource::Conversations;
        h.event(joined);
        let ops = h.ops(response("r-1", started, "Your order shipped."), T0 + 1);
        assert_eq!(ops[0].kind, OperationKind::SendConversationMessage);
    }

    #[test]
    fn parts_come_in_order_numbered_with_deterministic_ids() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Sms, T0));
        let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(60);
        let ops = h.ops(response("r-long", PM, &text), T0 + 1000);
        let n = ops.len();
        assert!(n >= 3, "{n} parts");
        for (i, op) in ops.iter().enumerate() {
            assert_eq!(op.operation_id, format!("r-long:{i}"));
            assert_eq!(op.response_id.as_deref(), Some("r-long"));
            assert_eq!(op.part_index, i32::try_from(i).unwrap());
            assert_eq!(op.part_count, i32::try_from(n).unwrap());
            assert_eq!(op.kind, OperationKind::SendMessage);
            assert_eq!(op.channel, Channel::Sms);
            assert_eq!(op.sender_key, format!("sms:{OURS}"));
            assert_eq!(op.to.as_deref(), Some(USER));
            assert_eq!(op.from.as_deref(), Some(OURS));
            assert_eq!(op.messaging_service_sid, None);
            assert_eq!(op.encoding, Some(TextEncoding::Gsm7));
            assert!(op.segments.unwrap() >= 1);
            assert_eq!(op.created_at, T0 + 1000);
            assert!(op.traceparent.is_some());
            let body = op.body.as_deref().unwrap();
            assert!(body.starts_with(&format!("({}/{n}) ", i + 1)), "{body}");
        }
        // Reassembled without numbering: the text.
        let joined: Vec<String> = ops
            .iter()
            .map(|o| {
                let b = o.body.as_deref().unwrap();
                b[b.find(") ").unwrap() + 2..].to_owned()
            })
            .collect();
        assert_eq!(joined.join(" "), text.trim());
        assert_eq!(
            h.metrics
                .parts
                .with_label_values(&["sms", "SEND_MESSAGE"])
                .get(),
            n as u64
        );
    }

    #[test]
    fn a_re_sent_response_id_is_sent_once() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Sms, T0));
        assert_eq!(h.ops(response("r-1", PM, "Once."), T0 + 1).len(), 1);
        let again = h
            .respond(response("r-1", PM, "Once."), T0 + 60_000)
            .unwrap();
        assert!(again.is_empty());
        assert_eq!(h.outcome("duplicate"), 1);
        let seen = h.state.get(&seen_key("r-1")).unwrap();
        assert_eq!(seen.kind, SegmentStateKind::SeenResponse);
        assert_eq!(seen.seen_response.as_ref().unwrap().part_count, 1);
        // Remembered for the dedup window, then forgotten.
        assert_eq!(
            h.state.expires_at(&seen_key("r-1")),
            Some(T0 + 1 + 7 * 24 * H)
        );
        let much_later = T0 + 1 + 7 * 24 * H;
        h.event(inbound(PM, Channel::Sms, much_later));
        assert_eq!(h.ops(response("r-1", PM, "Once."), much_later + 1).len(), 1);
    }

    #[test]
    fn an_opted_out_user_gets_nothing_and_a_blocked_outbound_event_is_written() {
        let local = vec![consent("*", ConsentStatus::OptedOut, T0 - 1000)];
        let mut h = Harness::with(Settings::for_test(config()), gate(local));
        h.event(inbound(PM, Channel::Sms, T0));
        let mut r = response("r-1", PM, "Hello");
        r.locale = Some("es-MX".into());
        let out = h.respond(r.clone(), T0 + 5).unwrap();
        assert_eq!(out.len(), 2, "the audit event and its reference");
        assert_eq!(out[0].topic(), topics::COMPLIANCE);
        assert_eq!(out[0].key(), format!("sms:{USER}"));
        // Named on the conversation's own topic, for its archive.
        assert_eq!(out[1].topic(), topics::CONVERSATION_EVENTS);
        assert_eq!(out[1].key(), PM);
        let recorded = out[1].record::<ConversationEvent>().unwrap();
        assert_eq!(
            recorded.event_type,
            ConversationEventType::ComplianceRecorded
        );
        assert_eq!(
            recorded
                .compliance_record
                .as_ref()
                .map(|r| r.event_id.clone()),
            Some(blocked_event_id("r-1", Channel::Sms, USER))
        );
        let event = out[0].record::<ComplianceEvent>().unwrap();
        assert_eq!(event.kind, ComplianceEventKind::BlockedOutbound);
        assert_eq!(event.source, ComplianceSource::Keyword);
        assert_eq!(event.address, USER);
        assert_eq!(event.channel, Channel::Sms);
        assert_eq!(event.sender_scope.as_deref(), Some(OURS));
        assert_eq!(event.conversation_id.as_deref(), Some(PM));
        assert_eq!(event.message_ref.as_deref(), Some("r-1"));
        assert_eq!(event.locale.as_deref(), Some("es-MX"));
        assert_eq!(event.at, T0 + 5);
        assert_eq!(event.details["consent_status"], "OPTED_OUT");
        assert_eq!(event.event_id, blocked_event_id("r-1", Channel::Sms, USER));
        assert_ne!(event.event_id, blocked_event_id("r-2", Channel::Sms, USER));
        assert_eq!(h.outcome("blocked"), 1);
        // Re-sent: nothing at all, not even a second audit entry.
        assert!(h.respond(r, T0 + 6).unwrap().is_empty());
    }

    #[test]
    fn the_gate_uses_the_sender_scope_and_newest_decision() {
        // Opted out of another sender only: allowed from ours.
        let local = vec![consent("+15005550006", ConsentStatus::OptedOut, T0 - 10)];
        let mut h = Harness::with(Settings::for_test(config()), gate(local));
        h.event(inbound(PM, Channel::Sms, T0));
        assert_eq!(h.ops(response("r-1", PM, "Hi"), T0 + 1).len(), 1);

        // Opted out of ours, then opted in again later (newest wins).
        let local = vec![
            consent(OURS, ConsentStatus::OptedOut, T0 - 10),
            consent("*", ConsentStatus::OptedIn, T0 - 5),
        ];
        let mut h = Harness::with(Settings::for_test(config()), gate(local));
        h.event(inbound(PM, Channel::Sms, T0));
        assert_eq!(h.ops(response("r-1", PM, "Hi"), T0 + 1).len(), 1);
    }

    #[test]
    fn require_opt_in_blocks_users_without_a_decision() {
        let mut settings = Settings::for_test(config());
        settings.require_opt_in = true;
        let mut h = Harness::with(settings, gate(Vec::new()));
        h.event(inbound(PM, Channel::Sms, T0));
        let out = h.respond(response("r-1", PM, "Hi"), T0 + 1).unwrap();
        let event = out[0].record::<ComplianceEvent>().unwrap();
        assert_eq!(event.details["consent_status"], "UNKNOWN");
        assert_eq!(event.source, ComplianceSource::Unknown);
    }

    #[test]
    fn a_response_ahead_of_its_conversation_waits_for_it_or_is_dead_lettered() {
        let mut h = Harness::new();
        // The response arrives in its own trace (the cognition layer's).
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = RecordContext {
            traceparent: Some(trace),
            ..RecordContext::for_test(topics::RESPONSES, T0)
        };
        h.state.set_now(T0);
        let parked = h
            .processor
            .process(
                &ctx,
                SegmentInput::Response(Box::new(response("r-1", PM, "Hi"))),
                &mut h.state,
            )
            .unwrap();
        assert!(parked.is_empty());
        assert_eq!(h.outcome("parked"), 1);
        assert!(h.state.get(&seen_key("r-1")).is_none(), "not handled yet");
        // The conversation's first event releases it.
        let event = inbound(PM, Channel::Sms, T0 + 5);
        let released = h
            .feed(SegmentInput::Event(Box::new(event)), T0 + 5)
            .unwrap();
        let ops: Vec<&OutboundOperation> = released
            .iter()
            .filter_map(|o| o.record::<OutboundOperation>())
            .collect();
        assert_eq!(ops.len(), 1, "{released:#?}");
        assert_eq!(ops[0].body.as_deref(), Some("Hi"));
        // Released by the event, it stays in the response's trace, not the
        // event's.
        assert!(
            released.iter().all(|o| o.trace() == Some(trace)),
            "{released:#?}"
        );
        assert_eq!(ops[0].traceparent.as_deref(), Some(trace));
        assert!(h.state.get(&pending_key(PM)).is_none());
        assert!(h.state.get(&seen_key("r-1")).is_some());

        // A conversation that never shows up: dead-lettered after the park timeout.
        assert!(
            h.respond(response("r-2", CH, "Hi"), T0 + 10)
                .unwrap()
                .is_empty()
        );
        let key = pending_key(CH);
        assert!(
            h.state
                .due_timers(T0 + 9 + PARK_TIMEOUT_MS, usize::MAX)
                .is_empty()
        );
        let due = h.state.due_timers(T0 + 10 + PARK_TIMEOUT_MS, usize::MAX);
        assert_eq!(due, vec![key.clone()]);
        let due_at_ms = h.state.cancel_timer(&key).unwrap();
        let ctx = TimerContext {
            partition: 0,
            key: &key,
            due_at_ms,
            now_ms: T0 + 10 + PARK_TIMEOUT_MS,
        };
        let dead = h.processor.on_timer(&ctx, &mut h.state).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].topic(), topics::DEAD_LETTER);
        let letter = dead[0].record::<DeadLetter>().unwrap();
        assert!(
            letter.reason.contains("unknown conversation"),
            "{}",
            letter.reason
        );
        assert!(letter.headers["si-response-json"].contains("r-2"));
        assert_eq!(h.outcome("unknown_conversation"), 1);
        assert!(h.state.get(&key).is_none());
    }

    #[test]
    fn bad_responses_are_dead_lettered_with_a_reason() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Sms, T0));
        let err = h.respond(response(" ", PM, "Hi"), T0 + 1).unwrap_err();
        assert!(matches!(err, ProcessError::Invalid(_)));
        let err = h.respond(response("r-1", PM, "  "), T0 + 1).unwrap_err();
        assert!(matches!(err, ProcessError::Invalid(m) if m.contains("nothing to send")));
        let mut r = response("r-2", PM, "See this");
        r.media = vec![MediaRef::default()];
        let err = h.respond(r, T0 + 1).unwrap_err();
        assert!(matches!(err, ProcessError::Invalid(m) if m.contains("no URL")));

        // WhatsApp outside the window without a template configured.
        let mut h = Harness::with(
            Settings::for_test(SegmentConfig::default()),
            gate(Vec::new()),
        );
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let err = h
            .respond(response("r-3", PM, "Hi"), T0 + 30 * H)
            .unwrap_err();
        assert!(matches!(err, ProcessError::Failed(m) if m.contains("template")));
    }

    #[test]
    fn a_summary_for_lifecycle_is_not_sent_to_the_user() {
        let mut h = Harness::new();
        h.event(inbound("CH1", Channel::Sms, 1_000));
        let summary = CognitionResponse {
            purpose: ResponsePurpose::Summary,
            in_reply_to: Some("lifecycle-summary-1".into()),
            ..response("r-sum", "CH1", "We talked about the weather.")
        };
        assert!(h.ops(summary, 2_000).is_empty());
        assert_eq!(h.outcome("not_for_user"), 1);
        assert_eq!(h.ops(response("r-1", "CH1", "hi"), 3_000).len(), 1);
    }

    #[test]
    fn a_conversation_closed_at_twilio_gets_nothing_and_a_messaging_one_closed_by_lifecycle_does() {
        let closed = |conversation: &str, source, at| ConversationEvent {
            source,
            state_change: Some(StateChange {
                state_from: None,
                state_to: ConversationState::Closed,
                reason: None,
            }),
            ..event(
                conversation,
                ConversationEventType::ConversationStateChanged,
                None,
                at,
            )
        };
        let refused = |h: &mut Harness, id: &str, conversation: &str, at| {
            let err = h.respond(response(id, conversation, "Hi"), at).unwrap_err();
            assert!(matches!(err, ProcessError::Failed(m) if m.contains("is closed")));
        };
        // Closed at Twilio: final, whatever comes late.
        let mut h = Harness::new();
        let mut joined = event(
            CH,
            ConversationEventType::ParticipantJoined,
            Some(participant(Channel::Sms)),
            T0,
        );
        joined.source = EventSource::Conversations;
        h.event(joined);
        h.event(closed(CH, EventSource::Conversations, T0 + 1));
        refused(&mut h, "r-1", CH, T0 + 2);
        let mut late = inbound(CH, Channel::Sms, T0 + 3);
        late.source = EventSource::Conversations;
        h.event(late);
        refused(&mut h, "r-2", CH, T0 + 4);
        assert_eq!(h.outcome("closed_conversation"), 2);

        // Programmable Messaging, closed by lifecycle: no Twilio state
        // refuses its messages, and a message of the user may have opened it
        // again before its closure was written.
        let pm = "pm-1";
        h.event(inbound(pm, Channel::Sms, T0));
        h.event(closed(pm, EventSource::Messaging, T0 + 1));
        assert_eq!(h.ops(response("r-3", pm, "Still here"), T0 + 2).len(), 1);
    }

    #[test]
    fn conversations_send_to_the_conversation_and_pm_through_the_messaging_service() {
        let mut h = Harness::new();
        let mut joined = event(
            CH,
            ConversationEventType::ParticipantJoined,
            Some(participant(Channel::Sms)),
            T0,
        );
        joined.source = EventSource::Conversations;
        h.event(joined);
        let ops = h.ops(response("r-1", CH, "Hi"), T0 + 1);
        assert_eq!(ops[0].kind, OperationKind::SendConversationMessage);
        assert_eq!(ops[0].conversation_id, CH);
        assert_eq!(ops[0].sender_key, format!("sms:{OURS}"));
        assert_eq!(ops[0].to.as_deref(), Some(USER));

        let mut settings = Settings::for_test(config());
        settings.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into());
        let mut h = Harness::with(settings, gate(Vec::new()));
        let mut p = participant(Channel::Sms);
        p.proxy_address = None;
        h.event(event(
            PM,
            ConversationEventType::MessageReceived,
            Some(p),
            T0,
        ));
        let ops = h.ops(response("r-1", PM, "Hi"), T0 + 1);
        assert_eq!(ops[0].kind, OperationKind::SendMessage);
        assert_eq!(ops[0].sender_key, "MG0123456789abcdef0123456789abcdef");
        assert_eq!(
            ops[0].messaging_service_sid.as_deref(),
            Some("MG0123456789abcdef0123456789abcdef")
        );
        assert_eq!(ops[0].from, None);
    }

    #[test]
    fn no_sending_address_and_no_messaging_service_is_dead_lettered() {
        let mut h = Harness::new();
        let mut p = participant(Channel::Sms);
        p.proxy_address = None;
        h.event(event(
            PM,
            ConversationEventType::MessageReceived,
            Some(p),
            T0,
        ));
        let err = h.respond(response("r-1", PM, "Hi"), T0 + 1).unwrap_err();
        assert!(matches!(err, ProcessError::Failed(m) if m.contains("MESSAGING_SERVICE_SID")));
    }

    #[test]
    fn chat_participants_get_their_larger_limit_unnumbered() {
        let mut h = Harness::new();
        let chat = Participant {
            address: None,
            channel: Channel::Chat,
            identity: Some("ana@example.com".into()),
            proxy_address: None,
            ..participant(Channel::Chat)
        };
        let mut e = event(CH, ConversationEventType::MessageReceived, Some(chat), T0);
        e.source = EventSource::Conversations;
        h.event(e);
        let text = "word ".repeat(2000);
        let ops = h.ops(response("r-1", CH, &text), T0 + 1);
        assert_eq!(ops.len(), 1, "10 000 bytes fit one chat message");
        assert_eq!(ops[0].channel, Channel::Chat);
        assert_eq!(ops[0].sender_key, format!("chat:{CH}"));
        assert_eq!(ops[0].segments, None);
    }

    #[test]
    fn participants_who_left_are_forgotten_and_the_last_writer_is_the_recipient() {
        let mut h = Harness::new();
        h.event(inbound(CH, Channel::Sms, T0));
        let mut other = participant(Channel::Whatsapp);
        other.address = Some("+14155550111".into());
        h.event(event(
            CH,
            ConversationEventType::MessageReceived,
            Some(other.clone()),
            T0 + 10,
        ));
        let ops = h.ops(response("r-1", CH, "Hi"), T0 + 20);
        assert_eq!(ops[0].channel, Channel::Whatsapp);
        assert_eq!(ops[0].to.as_deref(), Some("+14155550111"));
        h.event(event(
            CH,
            ConversationEventType::ParticipantLeft,
            Some(other),
            T0 + 30,
        ));
        let ops = h.ops(response("r-2", CH, "Hi"), T0 + 40);
        assert_eq!(ops[0].channel, Channel::Sms);
        assert_eq!(ops[0].to.as_deref(), Some(USER));
    }

    #[test]
    fn irrelevant_events_write_no_state() {
        let mut h = Harness::new();
        h.event(event(PM, ConversationEventType::DeliveryUpdated, None, T0));
        let mut voice = inbound("call-CA1", Channel::Voice, T0);
        voice.event_type = ConversationEventType::CallStatusChanged;
        h.event(voice);
        assert!(h.state.is_empty());
        let err = h
            .feed(
                SegmentInput::Event(Box::new(inbound("", Channel::Sms, T0))),
                T0,
            )
            .unwrap_err();
        assert!(matches!(err, ProcessError::Invalid(_)));
    }

    // ------------------------------------------------------- remediation

    fn accepted(op: &OutboundOperation, sid: &str) -> SegmentInput {
        SegmentInput::Status(Box::new(DeliveryStatus {
            operation_id: op.operation_id.clone(),
            conversation_id: op.conversation_id.clone(),
            outcome: DeliveryOutcome::Accepted,
            twilio_sid: Some(sid.into()),
            segments: None,
            error_code: None,
            error_message: None,
            attempts: 1,
            response_id: op.response_id.clone(),
            part_index: Some(op.part_index),
            part_count: Some(op.part_count),
            kind: Some(op.kind),
            body: op.body.clone(),
            resend_of: op.params.get(RESEND_OF_PARAM).cloned(),
            remediation: None,
            at: T0,
            scheduled_at: None,
            compliance_event_id: None,
        }))
    }

    fn report(
        conversation: &str,
        sid: &str,
        status: DeliveryState,
        code: Option<i32>,
    ) -> SegmentInput {
        let mut e = event(
            conversation,
            ConversationEventType::DeliveryUpdated,
            None,
            T0,
        );
        e.delivery = Some(DeliveryUpdate {
            message_sid: sid.into(),
            channel_message_sid: None,
            status,
            error_code: code,
            error_message: code.map(|c| format!("error {c} for {USER}")),
        });
        SegmentInput::Event(Box::new(e))
    }

    fn urgent(mut r: CognitionResponse) -> CognitionResponse {
        r.hints = Some(SegmentationHints {
            max_parts: None,
            keep_paragraphs: None,
            priority: Priority::High,
            allow_truncation: None,
        });
        r
    }

    fn split(out: &[Output]) -> (Vec<DeliveryStatus>, Vec<OutboundOperation>) {
        let statuses = out
            .iter()
            .filter(|o| o.topic() == topics::DELIVERY)
            .map(|o| o.record::<DeliveryStatus>().unwrap().clone())
            .collect();
        let ops = out
            .iter()
            .filter(|o| o.topic() == topics::OUTBOUND)
            .map(|o| o.record::<OutboundOperation>().unwrap().clone())
            .collect();
        (statuses, ops)
    }

    /// A user writes on `channel`, `response` is sent as SM1 and reported
    /// undelivered with `code`: the message and what segment wrote then.
    fn failed_once(
        h: &mut Harness,
        channel: Channel,
        response: CognitionResponse,
        code: i32,
    ) -> (OutboundOperation, Vec<Output>) {
        h.event(inbound(PM, channel, T0));
        let op = h.ops(response, T0 + 10).remove(0);
        assert!(h.feed(accepted(&op, "SM1"), T0 + 20).unwrap().is_empty());
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(code)),
                T0 + 30,
            )
            .unwrap();
        (op, out)
    }

    #[test]
    fn what_a_report_leads_to_stays_in_the_messages_trace() {
        // The report arrives in a trace of its own (Conversations receipts
        // carry none of ours); the resend it causes is in the message's.
        let mut h = Harness::new();
        let (op, out) = failed_once(&mut h, Channel::Sms, response("r-1", PM, "Hi"), 30003);
        assert!(op.traceparent.is_some());
        assert!(!out.is_empty());
        assert!(
            out.iter().all(|o| o.trace() == op.traceparent.as_deref()),
            "{out:#?}"
        );
    }

    #[test]
    fn whatsapp_63016_is_resent_as_the_template_and_its_delivery_ends_the_chain() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        assert!(op.content_sid.is_none());
        assert!(h.feed(accepted(&op, "SM1"), T0 + 20).unwrap().is_empty());
        // Twilio reports it undelivered: outside the window.
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(63016)),
                T0 + 30,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert_eq!(statuses.len(), 1);
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::ResendAsTemplate);
        assert_eq!(r.origin_operation_id, "r-1:0");
        assert_eq!(r.next_operation_id.as_deref(), Some("r-1:0#1"));
        assert!(!r.terminal);
        assert_eq!(statuses[0].operation_id, "r-1:0");
        assert_eq!(statuses[0].outcome, DeliveryOutcome::Failed);
        assert_eq!(statuses[0].error_code, Some(63016));
        assert!(
            !statuses[0].error_message.as_deref().unwrap().contains(USER),
            "Twilio's text is scrubbed"
        );
        assert_eq!(ops.len(), 1);
        let template = &ops[0];
        assert_eq!(template.operation_id, "r-1:0#1");
        assert_eq!(
            template.content_sid.as_deref(),
            Some("HX0123456789abcdef0123456789abcdef")
        );
        assert!(template.body.is_none());
        assert_eq!(template.params[RESEND_OF_PARAM], "r-1:0");
        assert_eq!(
            template.sender_key, op.sender_key,
            "same sender, same partition"
        );
        // A repeated report of the first attempt does nothing more.
        assert!(
            h.feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(63016)),
                T0 + 31
            )
            .unwrap()
            .iter()
            .all(|o| o.topic() != topics::OUTBOUND)
        );
        // The template is delivered: the chain ends RECOVERED.
        assert!(
            h.feed(accepted(template, "SM2"), T0 + 40)
                .unwrap()
                .is_empty()
        );
        let out = h
            .feed(report(PM, "SM2", DeliveryState::Delivered, None), T0 + 50)
            .unwrap();
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty());
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::Recovered);
        assert!(r.terminal);
        assert_eq!(statuses[0].operation_id, "r-1:0#1");
        assert_eq!(statuses[0].resend_of.as_deref(), Some("r-1:0"));
        assert!(
            h.state.get(&remediation::sid_key("SM2")).is_none(),
            "forgotten"
        );
    }

    #[test]
    fn an_urgent_whatsapp_message_falls_back_to_sms_and_a_normal_one_gives_up() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h
            .ops(urgent(response("r-1", PM, "Your code is 1234")), T0 + 10)
            .remove(0);
        assert_eq!(op.params[PRIORITY_PARAM], "HIGH");
        h.feed(accepted(&op, "SM1"), T0 + 20).unwrap();
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Failed, Some(63024)),
                T0 + 30,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert_eq!(
            statuses[0].remediation.as_ref().unwrap().action,
            RemediationAction::FallbackChannel
        );
        assert_eq!(
            statuses[0].remediation.as_ref().unwrap().channel,
            Some(Channel::Sms)
        );
        let sms = &ops[0];
        assert_eq!(sms.channel, Channel::Sms);
        assert_eq!(sms.kind, OperationKind::SendMessage);
        assert_eq!(sms.to.as_deref(), Some(USER));
        assert_eq!(sms.from.as_deref(), Some(OURS));
        assert_eq!(sms.sender_key, format!("sms:{OURS}"));
        assert_eq!(sms.body.as_deref(), Some("Your code is 1234"));
        assert_eq!(sms.segments, Some(1));
        assert_eq!(sms.operation_id, "r-1:0#1");

        let op = h.ops(response("r-2", PM, "Later"), T0 + 40).remove(0);
        h.feed(accepted(&op, "SM3"), T0 + 50).unwrap();
        let out = h
            .feed(
                report(PM, "SM3", DeliveryState::Failed, Some(63024)),
                T0 + 60,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty());
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::GiveUp);
        assert!(r.terminal);
        assert!(r.reason.contains("not urgent"), "{}", r.reason);
    }

    #[test]
    fn a_fallback_to_an_sms_opted_out_user_is_blocked() {
        let local = vec![consent("*", ConsentStatus::OptedOut, T0 - 1000)];
        let mut h = Harness::with(Settings::for_test(config()), gate(local));
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h
            .ops(urgent(response("r-1", PM, "Urgent")), T0 + 10)
            .remove(0);
        h.feed(accepted(&op, "SM1"), T0 + 20).unwrap();
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Failed, Some(63024)),
                T0 + 30,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty(), "no SMS to an opted-out user");
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::GiveUp);
        assert!(r.reason.contains("consent"), "{}", r.reason);
        let blocked = out
            .iter()
            .find(|o| o.topic() == topics::COMPLIANCE)
            .and_then(|o| o.record::<ComplianceEvent>())
            .unwrap();
        assert_eq!(blocked.kind, ComplianceEventKind::BlockedOutbound);
        assert_eq!(blocked.channel, Channel::Sms);
    }

    #[test]
    fn a_transient_failure_is_retried_on_a_timer_with_the_consent_gate_again() {
        let mut h = Harness::new();
        let (_, out) = failed_once(&mut h, Channel::Sms, response("r-1", PM, "Hello"), 30001);
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty(), "nothing before the delay");
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::RetryLater);
        assert_eq!(r.not_before, Some(T0 + 30 + 60_000));
        let key = remediation::retry_key("r-1:0#1");
        assert!(h.state.due_timers(T0 + 30 + 59_999, usize::MAX).is_empty());
        assert_eq!(
            h.state.due_timers(T0 + 30 + 60_000, usize::MAX),
            vec![key.clone()]
        );
        let due_at_ms = h.state.cancel_timer(&key).unwrap();
        let ctx = TimerContext {
            partition: 0,
            key: &key,
            due_at_ms,
            now_ms: T0 + 30 + 60_000,
        };
        let out = h.processor.on_timer(&ctx, &mut h.state).unwrap();
        let (_, ops) = split(&out);
        assert_eq!(ops[0].operation_id, "r-1:0#1");
        assert_eq!(ops[0].body.as_deref(), Some("Hello"));
        assert_eq!(ops[0].params[RESEND_OF_PARAM], "r-1:0");
        // Three retries (the default rule for 30001), then it gives up.
        let mut last = ops[0].clone();
        for n in 2..=4 {
            h.feed(accepted(&last, &format!("SM{n}")), T0).unwrap();
            let out = h
                .feed(
                    report(
                        PM,
                        &format!("SM{n}"),
                        DeliveryState::Undelivered,
                        Some(30001),
                    ),
                    T0,
                )
                .unwrap();
            let (statuses, _) = split(&out);
            let r = statuses[0].remediation.clone().unwrap();
            if n == 4 {
                assert_eq!(r.action, RemediationAction::GiveUp, "{}", r.reason);
                break;
            }
            assert_eq!(r.action, RemediationAction::RetryLater);
            let key = remediation::retry_key(&format!("r-1:0#{n}"));
            let due_at_ms = h.state.cancel_timer(&key).unwrap();
            let ctx = TimerContext {
                partition: 0,
                key: &key,
                due_at_ms,
                now_ms: due_at_ms,
            };
            last = split(&h.processor.on_timer(&ctx, &mut h.state).unwrap())
                .1
                .remove(0);
        }
    }

    #[test]
    fn a_retry_that_would_come_after_not_after_gives_up_instead() {
        // A WhatsApp reply sent 30 s before the window closes may not be
        // sent after it: a retry a minute later is no retry.
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h
            .ops(response("r-1", PM, "Hello"), T0 + 24 * H - 30_000)
            .remove(0);
        assert_eq!(op.not_after, Some(T0 + 24 * H));
        h.feed(accepted(&op, "SM1"), T0 + 24 * H - 25_000).unwrap();
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(30001)),
                T0 + 24 * H - 20_000,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty());
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::GiveUp);
        assert!(r.terminal);
        assert!(r.reason.contains("not_after passes first"), "{}", r.reason);
        assert!(h.state.due_timers(i64::MAX, usize::MAX).is_empty());
    }

    #[test]
    fn a_retry_due_after_the_user_opted_out_is_blocked_and_ends_the_chain() {
        let mut h = Harness::new();
        let (_, out) = failed_once(&mut h, Channel::Sms, response("r-1", PM, "Hello"), 30001);
        let r = split(&out).0[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::RetryLater);
        // STOP arrives before the retry's time.
        let (key, entry) = consent("*", ConsentStatus::OptedOut, T0 + 40);
        h.processor.gate.local().apply(key, Some(entry));

        let key = remediation::retry_key("r-1:0#1");
        let due_at_ms = h.state.cancel_timer(&key).unwrap();
        let ctx = TimerContext {
            partition: 0,
            key: &key,
            due_at_ms,
            now_ms: due_at_ms,
        };
        let out = h.processor.on_timer(&ctx, &mut h.state).unwrap();
        let (statuses, ops) = split(&out);
        assert!(ops.is_empty(), "nothing sent to an opted-out user");
        let r = statuses[0].remediation.clone().unwrap();
        assert_eq!(r.action, RemediationAction::GiveUp);
        assert!(r.terminal);
        assert_eq!(r.reason, "the consent gate refused the resend");
        let blocked = out
            .iter()
            .find(|o| o.topic() == topics::COMPLIANCE)
            .and_then(|o| o.record::<ComplianceEvent>())
            .unwrap();
        assert_eq!(blocked.kind, ComplianceEventKind::BlockedOutbound);
    }

    #[test]
    fn a_failure_report_ahead_of_egress_status_waits_for_it() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        assert!(
            h.feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(63016)),
                T0 + 15
            )
            .unwrap()
            .is_empty()
        );
        let out = h.feed(accepted(&op, "SM1"), T0 + 20).unwrap();
        let (statuses, ops) = split(&out);
        assert_eq!(
            statuses[0].remediation.as_ref().unwrap().action,
            RemediationAction::ResendAsTemplate
        );
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn a_resend_delivered_before_egress_status_is_read_still_recovers() {
        let mut h = Harness::new();
        let (_, out) = failed_once(
            &mut h,
            Channel::Whatsapp,
            response("r-1", PM, "Hello"),
            63016,
        );
        let template = split(&out).1.remove(0);
        assert!(
            h.feed(report(PM, "SM2", DeliveryState::Delivered, None), T0 + 40)
                .unwrap()
                .is_empty()
        );
        let out = h.feed(accepted(&template, "SM2"), T0 + 50).unwrap();
        let (statuses, _) = split(&out);
        assert_eq!(
            statuses[0].remediation.as_ref().unwrap().action,
            RemediationAction::Recovered
        );
        assert!(h.state.get(&remediation::early_key("SM2")).is_none());
    }

    #[test]
    fn egress_failures_are_remedied_and_remediation_records_are_not() {
        let mut h = Harness::new();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h
            .ops(urgent(response("r-1", PM, "Hello")), T0 + 10)
            .remove(0);
        let SegmentInput::Status(mut failed) = accepted(&op, "SM1") else {
            unreachable!()
        };
        failed.outcome = DeliveryOutcome::DeadLettered;
        failed.twilio_sid = None;
        let out = h
            .feed(SegmentInput::Status(failed.clone()), T0 + 20)
            .unwrap();
        let (statuses, ops) = split(&out);
        assert_eq!(
            statuses[0].remediation.as_ref().unwrap().action,
            RemediationAction::FallbackChannel
        );
        assert_eq!(ops[0].channel, Channel::Sms);
        // Its own records come back on its input: ignored.
        let again = SegmentInput::Status(Box::new(statuses[0].clone()));
        assert!(h.feed(again, T0 + 21).unwrap().is_empty());
        assert_eq!(
            h.metrics
                .remediations
                .with_label_values(&["fallback", "none"])
                .get(),
            1
        );
    }

    #[test]
    fn without_a_policy_nothing_is_tracked() {
        let mut settings = Settings::for_test(config());
        settings.remediation = crate::remedy::Policy::parse("", 5).unwrap();
        let mut h = Harness::with(settings, gate(Vec::new()));
        h.event(inbound(PM, Channel::Sms, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        assert!(
            h.state
                .get(&remediation::op_key(&op.operation_id))
                .is_none()
        );
        assert!(h.feed(accepted(&op, "SM1"), T0 + 20).unwrap().is_empty());
    }

    // --------------------------------------------------- channel metrics

    const PRICES: &str = "sms:US=0.0083,sms:*=0.05,whatsapp:*=0.005";

    fn priced() -> Harness {
        let mut settings = Settings::for_test(config());
        settings.prices = crate::pricing::PriceTable::parse(PRICES).unwrap();
        Harness::with(settings, gate(Vec::new()))
    }

    fn accepted_with(op: &OutboundOperation, sid: &str, segments: i32) -> SegmentInput {
        let SegmentInput::Status(mut status) = accepted(op, sid) else {
            unreachable!()
        };
        status.segments = Some(segments);
        SegmentInput::Status(status)
    }

    impl Harness {
        fn deliveries(&self, channel: &str, class: &str, status: &str) -> u64 {
            self.metrics
                .delivery
                .deliveries
                .with_label_values(&[channel, class, status])
                .get()
        }

        fn sent(&self, channel: &str, class: &str) -> u64 {
            self.metrics
                .delivery
                .sent
                .with_label_values(&[channel, class])
                .get()
        }

        fn cost(&self, channel: &str, country: &str) -> f64 {
            self.metrics
                .delivery
                .estimated_cost_usd
                .with_label_values(&[channel, country])
                .get()
        }
    }

    #[test]
    fn an_accepted_sms_counts_as_sent_with_its_segments_and_cost_and_its_delivery_once() {
        let mut h = priced();
        h.event(inbound(PM, Channel::Sms, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        assert_eq!(op.sender_key, format!("sms:{OURS}"));
        assert_eq!(h.sent("sms", "long_code"), 0, "written is not yet sent");
        h.feed(accepted_with(&op, "SM1", 3), T0 + 1_000).unwrap();
        assert_eq!(h.sent("sms", "long_code"), 1);
        let segments = h
            .metrics
            .delivery
            .segments_per_message
            .with_label_values(&["sms"]);
        assert_eq!(segments.get_sample_count(), 1);
        assert!(
            (segments.get_sample_sum() - 3.0).abs() < 1e-9,
            "Twilio's count"
        );
        assert!((h.cost("sms", "US") - 3.0 * 0.0083).abs() < 1e-9);

        h.feed(
            report(PM, "SM1", DeliveryState::Delivered, None),
            T0 + 3_500,
        )
        .unwrap();
        assert_eq!(h.deliveries("sms", "long_code", "delivered"), 1);
        let time = h
            .metrics
            .delivery
            .time_to_delivered
            .with_label_values(&["sms"]);
        assert_eq!(time.get_sample_count(), 1);
        assert!(
            (time.get_sample_sum() - 2.5).abs() < 1e-9,
            "accepted to delivered"
        );
        // A later read receipt is not a second final report.
        h.feed(report(PM, "SM1", DeliveryState::Read, None), T0 + 9_000)
            .unwrap();
        assert_eq!(h.deliveries("sms", "long_code", "read"), 0);
        assert_eq!(time.get_sample_count(), 1);
        // Non-final reports and unknown SIDs count nothing.
        h.feed(report(PM, "SM9", DeliveryState::Sent, None), T0 + 9_500)
            .unwrap();
        h.feed(
            report(PM, "SM8", DeliveryState::Delivered, None),
            T0 + 9_600,
        )
        .unwrap();
        assert_eq!(h.deliveries("sms", "long_code", "delivered"), 1);
    }

    #[test]
    fn failures_and_resends_are_counted_by_status_and_each_accepted_attempt_costs() {
        let mut h = priced();
        h.event(inbound(PM, Channel::Whatsapp, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        h.feed(accepted(&op, "SM1"), T0 + 20).unwrap();
        let out = h
            .feed(
                report(PM, "SM1", DeliveryState::Undelivered, Some(63016)),
                T0 + 30,
            )
            .unwrap();
        let (statuses, ops) = split(&out);
        assert_eq!(h.deliveries("whatsapp", "whatsapp", "undelivered"), 1);
        // segment's remediation record is not an accepted message.
        let own = SegmentInput::Status(Box::new(statuses[0].clone()));
        h.feed(own, T0 + 31).unwrap();
        assert_eq!(h.sent("whatsapp", "whatsapp"), 1);
        // The template resend: sent again, and its delivery ends the chain.
        h.feed(accepted(&ops[0], "SM2"), T0 + 40).unwrap();
        assert_eq!(h.sent("whatsapp", "whatsapp"), 2);
        assert!(
            (h.cost("whatsapp", "US") - 2.0 * 0.005).abs() < 1e-9,
            "per message"
        );
        h.feed(report(PM, "SM2", DeliveryState::Read, None), T0 + 1_040)
            .unwrap();
        assert_eq!(h.deliveries("whatsapp", "whatsapp", "read"), 1);
        let time = h
            .metrics
            .delivery
            .time_to_delivered
            .with_label_values(&["whatsapp"]);
        assert_eq!(
            time.get_sample_count(),
            1,
            "the failure has no time to delivered"
        );
        assert!((time.get_sample_sum() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_report_ahead_of_egress_status_is_counted_with_its_own_status() {
        let mut h = priced();
        h.event(inbound(PM, Channel::Sms, T0));
        let first = h.ops(response("r-1", PM, "One"), T0 + 10).remove(0);
        let second = h.ops(response("r-2", PM, "Two"), T0 + 11).remove(0);
        h.feed(
            report(PM, "SM1", DeliveryState::Failed, Some(30008)),
            T0 + 15,
        )
        .unwrap();
        h.feed(report(PM, "SM2", DeliveryState::Delivered, None), T0 + 16)
            .unwrap();
        assert_eq!(h.sent("sms", "long_code"), 0);
        h.feed(accepted(&first, "SM1"), T0 + 20).unwrap();
        h.feed(accepted(&second, "SM2"), T0 + 21).unwrap();
        assert_eq!(h.sent("sms", "long_code"), 2);
        assert_eq!(h.deliveries("sms", "long_code", "failed"), 1);
        assert_eq!(h.deliveries("sms", "long_code", "delivered"), 1);
        let time = h
            .metrics
            .delivery
            .time_to_delivered
            .with_label_values(&["sms"]);
        assert_eq!(time.get_sample_count(), 1);
        assert!(
            time.get_sample_sum().abs() < 1e-9,
            "a report ahead counts as at once"
        );
    }

    #[test]
    fn a_messaging_service_is_its_own_sender_class_and_no_price_means_no_cost() {
        let mut settings = Settings::for_test(config());
        settings.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into());
        let mut h = Harness::with(settings, gate(Vec::new()));
        h.event(inbound(PM, Channel::Sms, T0));
        let op = h.ops(response("r-1", PM, "Hello"), T0 + 10).remove(0);
        h.feed(accepted(&op, "SM1"), T0 + 20).unwrap();
        assert_eq!(h.sent("sms", "messaging_service"), 1);
        assert_eq!(h.sent("sms", "long_code"), 0);
        assert!(h.cost("sms", "US").abs() < f64::EPSILON);
        let segments = h
            .metrics
            .delivery
            .segments_per_message
            .with_label_values(&["sms"]);
        assert!(
            (segments.get_sample_sum() - 1.0).abs() < 1e-9,
            "the part's own count"
        );
    }
}
