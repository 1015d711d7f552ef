//! The voice-link processor: a pure function over (input record or due
//! timer, partition state) on the exactly-once runner. The rules are in the
//! crate docs.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use si_catalog::{Catalog, keys};
use si_consent_gate::{ANY_SCOPE, ConsentGate, Verdict};
use si_runtime::mask::mask_address;
use si_runtime::processor::{
    InputRecord, Output, ProcessError, Processor, RecordContext, TimerContext,
};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::records::{
    CallEvent, CallRequest, CallState, Channel, CognitionResponse, Command, CommandKind,
    ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentStatus, ConversationEvent,
    ConversationEventType, ConversationState, DeliveryOutcome, DeliveryStatus, Direction,
    IdentityRecord, MediaStored, Modality, OperationKind, OutboundOperation, OutboundPartOutcome,
    PendingOutbound, RecordingDisclosure, RecordingRef, ResponsePurpose, ScheduledCall,
    TranscriptEntry, TranscriptEntryKind, TranscriptSpeaker, TranscriptionSpeaker, VoiceLinkCall,
    VoiceLinkState,
};
use si_schemas::{Codec, CodecError, topics};

use crate::schedule::{QuietWindow, local_time_text, user_zones};

/// Prefix of every id voice-link makes (responses, operations, statuses).
pub const ID_PREFIX: &str = "voice-";
/// `Command::params` key: when to call (RFC 3339).
pub const AT_PARAM: &str = "at";
/// `Command::params` key: our number to call from.
pub const FROM_PARAM: &str = "from";
/// `OutboundOperation::params` key naming the call of an `END_CALL`.
pub const CALL_SID_PARAM: &str = "si.call_sid";
/// `params["si.purpose"]` of voice-link's operations.
pub const PURPOSE_PARAM: &str = "si.purpose";
/// The value of [`PURPOSE_PARAM`].
pub const PURPOSE: &str = "voice";
/// Most calls remembered per conversation.
pub const MAX_CALLS: usize = 10;
/// Most outbound messages waiting for their parts per conversation.
pub const MAX_PENDING_OUTBOUND: usize = 100;
/// A call requested for less than this ahead is placed at once.
const SCHEDULE_SLACK_MS: i64 = 1_000;

/// How far ahead a call may be asked for (`params["at"]`): a week. Its
/// conversation stays open until the call.
pub const LONGEST_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest a placed call may wait in egress (its `not_after`, unless the
/// quiet window starts sooner): "Si is calling you now" should hold.
const CALL_MAX_WAIT: Duration = Duration::from_secs(5 * 60);

/// What the processor is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public base URL of ingress (answer and status callback URLs).
    pub public_base_url: String,
    /// Our number calls are placed from, unless the command names one;
    /// `None`: the conversation's number.
    pub voice_from: Option<String>,
    /// Seconds to let the phone ring.
    pub ring_timeout_secs: i32,
    /// Twilio's `MachineDetection` (`Enable`, `DetectMessageEnd`), if any.
    pub machine_detection: Option<String>,
    /// No calls in this local-time window.
    pub quiet_window: Option<QuietWindow>,
    /// Time zone of users whose zone is not known otherwise.
    pub default_zone: TimeZone,
    /// The explicit consent policy (`CONSENT_REQUIRE_OPT_IN`).
    pub require_opt_in: bool,
    /// Messaging Service SID, the consent scope of conversations without a
    /// known number of ours.
    pub messaging_service_sid: Option<String>,
    /// TTL of a conversation's state after its last input.
    pub state_ttl: Duration,
}

/// The inputs, co-partitioned by conversation id.
#[derive(Debug)]
pub enum VoiceLinkInput {
    /// From `si.conversation.events.v1`.
    Event(Box<ConversationEvent>),
    /// From `si.commands.v1`: `ESCALATE_TO_VOICE`, `END_CALL`.
    Command(Box<Command>),
    /// From `twilio.delivery.v1`: operation outcomes.
    Delivery(Box<DeliveryStatus>),
}

impl InputRecord for VoiceLinkInput {
    async fn decode<'a>(
        topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> Result<Self, CodecError> {
        Ok(match topic {
            topics::COMMANDS => Self::Command(Box::new(codec.decode(bytes).await?)),
            topics::DELIVERY => Self::Delivery(Box::new(codec.decode(bytes).await?)),
            _ => Self::Event(Box::new(codec.decode(bytes).await?)),
        })
    }
}

/// Metrics of voice-link (labels never carry addresses, SIDs or ids).
#[derive(Debug, Clone)]
pub struct VoiceLinkMetrics {
    /// Escalations by `outcome`: `requested`, `scheduled`, `connected`,
    /// `declined`, `no_answer`, `busy`, `failed`, `canceled`, `machine`,
    /// `ended`, `blocked`, `refused`.
    pub escalations: IntCounterVec,
    /// Recording answers by `answer`: `disclosed`, `accepted`, `declined`, `no_input`.
    pub recording_consent: IntCounterVec,
    /// Transcript entries written, by `kind`.
    pub transcript: IntCounterVec,
    /// Call duration (seconds, Twilio's CallDuration) of calls that connected.
    pub call_duration: Histogram,
    /// Seconds from placing a call to its answer.
    pub time_to_answer: Histogram,
}

impl VoiceLinkMetrics {
    /// Registers the metrics.
    ///
    /// # Errors
    /// When a metric is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.escalations.clone()))?;
        registry.register(Box::new(metrics.recording_consent.clone()))?;
        registry.register(Box::new(metrics.transcript.clone()))?;
        registry.register(Box::new(metrics.call_duration.clone()))?;
        registry.register(Box::new(metrics.time_to_answer.clone()))?;
        Ok(metrics)
    }

    /// The metrics, not registered anywhere (tests).
    ///
    /// # Panics
    /// Never: the definitions are valid.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn unregistered() -> Self {
        Self {
            escalations: IntCounterVec::new(
                Opts::new(
                    "si_voice_escalations_total",
                    "Escalations to a call, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            recording_consent: IntCounterVec::new(
                Opts::new(
                    "si_voice_recording_consent_total",
                    "Recording disclosures played and the callers' answers",
                ),
                &["answer"],
            )
            .expect("valid metric"),
            transcript: IntCounterVec::new(
                Opts::new(
                    "si_voice_transcript_entries_total",
                    "Transcript entries written, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            call_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "si_voice_call_duration_seconds",
                    "Duration of calls that connected",
                )
                .buckets(vec![
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                ]),
            )
            .expect("valid metric"),
            time_to_answer: Histogram::with_opts(
                HistogramOpts::new(
                    "si_voice_time_to_answer_seconds",
                    "Seconds from placing a call to its answer",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0]),
            )
            .expect("valid metric"),
        }
    }
}

/// The recording answer of a call event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Disclosed,
    Accepted,
    Declined,
    NoInput,
}

impl Answer {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Disclosed => "DISCLOSED",
            Self::Accepted => "ACCEPTED",
            Self::Declined => "DECLINED",
            Self::NoInput => "NO_INPUT",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Disclosed => "disclosed",
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::NoInput => "no_input",
        }
    }
}

fn answer_of(call: &CallEvent) -> Option<Answer> {
    match call.disclosure {
        Some(RecordingDisclosure::Disclosed) => Some(Answer::Disclosed),
        Some(RecordingDisclosure::Accepted) => Some(Answer::Accepted),
        Some(RecordingDisclosure::Declined) => Some(Answer::Declined),
        Some(RecordingDisclosure::NoInput) => Some(Answer::NoInput),
        // Records without the step (older normalize): the boolean.
        Some(RecordingDisclosure::Unknown) | None => match call.disclosure_accepted {
            Some(true) => Some(Answer::Accepted),
            Some(false) => Some(Answer::Declined),
            None => None,
        },
    }
}

/// The state key of a conversation.
#[must_use]
pub fn conversation_key(conversation_id: &str) -> String {
    format!("conv|{conversation_id}")
}

/// The operation id of the call placed for command `command_id`.
#[must_use]
pub fn call_operation_id(command_id: &str) -> String {
    format!("{ID_PREFIX}call-{command_id}")
}

/// The status id (on `twilio.delivery.v1`) answering command `command_id`.
#[must_use]
pub fn command_status_id(command_id: &str) -> String {
    format!("{ID_PREFIX}command-{command_id}")
}

/// Why a command did nothing, for the status record and the counter.
struct Refusal {
    outcome: &'static str,
    reason: String,
    compliance: Option<Output>,
}

/// The voice-link stage's logic.
pub struct VoiceLinkProcessor {
    settings: Settings,
    catalog: &'static Catalog,
    metrics: VoiceLinkMetrics,
    gate: ConsentGate,
    identity: GlobalTable<IdentityRecord>,
}

impl std::fmt::Debug for VoiceLinkProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceLinkProcessor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl VoiceLinkProcessor {
    /// A processor reading consent and identities from these tables.
    #[must_use]
    pub fn new(
        settings: Settings,
        gate: ConsentGate,
        identity: GlobalTable<IdentityRecord>,
        metrics: VoiceLinkMetrics,
    ) -> Self {
        Self {
            settings,
            catalog: Catalog::builtin(),
            metrics,
            gate,
            identity,
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics.escalations.with_label_values(&[outcome]).inc();
    }

    /// Stores the conversation for the state TTL, or until the TTL after
    /// its scheduled call (a call days ahead outlives a quiet conversation).
    fn save(&self, state: &mut StateStore<VoiceLinkState>, conversation: VoiceLinkState) {
        let ahead = conversation.scheduled.as_ref().map_or(0, |s| {
            u64::try_from(s.due_at.saturating_sub(state.now())).unwrap_or(0)
        });
        let ttl = self.settings.state_ttl + Duration::from_millis(ahead);
        state.put_with_ttl(
            conversation_key(&conversation.conversation_id),
            conversation,
            ttl,
        );
    }

    // ------------------------------------------------------------ events

    fn on_event(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Vec<Output> {
        // A compliance event's reference (consent's, segment's, our own read
        // back): nothing for the transcript or the calls, and no state write.
        if event.event_type == ConversationEventType::ComplianceRecorded {
            return Vec::new();
        }
        let now = ctx.timestamp_ms;
        let key = conversation_key(&event.conversation_id);
        let mut conversation = state
            .get(&key)
            .cloned()
            .unwrap_or_else(|| new_conversation(event, now));
        learn(&mut conversation, event);
        conversation.last_activity_at = now;
        if event.reopens() {
            conversation.closed_at = None;
        }
        let mut outputs = Vec::new();
        match event.event_type {
            ConversationEventType::MessageReceived => {
                if let Some(message) = &event.message {
                    let mut entry = entry(
                        &mut conversation,
                        format!("in-{}", event.event_id),
                        TranscriptEntryKind::Message,
                        event.occurred_at,
                    );
                    entry.modality = Modality::Text;
                    entry.direction = Direction::Inbound;
                    entry.speaker = TranscriptSpeaker::User;
                    entry.text.clone_from(&message.body);
                    entry.media.clone_from(&message.media);
                    entry.location.clone_from(&message.location);
                    entry.message_sid = Some(message.message_sid.clone());
                    entry.source_sid = Some(message.message_sid.clone());
                    entry.channel = Some(event.channel);
                    entry.locale = Some(event.locale.clone());
                    outputs.push(self.write(entry));
                }
            }
            ConversationEventType::CallStatusChanged => {
                if let Some(call) = &event.call {
                    outputs.extend(self.on_call(now, event, call, &mut conversation));
                }
            }
            ConversationEventType::RecordingAvailable => {
                // `absent` (or a status in between): there is no recording
                // to refer to.
                if let Some(recording) = event
                    .recording
                    .as_ref()
                    .filter(|r| r.status.as_deref().is_none_or(|s| s == "completed"))
                {
                    let mut entry = entry(
                        &mut conversation,
                        format!("rec-{}", recording.recording_sid),
                        TranscriptEntryKind::Recording,
                        event.occurred_at,
                    );
                    entry.recording = Some(RecordingRef {
                        recording_sid: recording.recording_sid.clone(),
                        url: recording.url.clone(),
                        duration_seconds: recording.duration_seconds,
                    });
                    entry.call_sid = Some(recording.call_sid.clone());
                    entry.source_sid = Some(recording.recording_sid.clone());
                    entry.channel = Some(Channel::Voice);
                    outputs.push(self.write(entry));
                }
            }
            ConversationEventType::MediaStored => {
                if let Some(stored) = &event.media_stored {
                    outputs.push(self.write(media_stored_entry(&mut conversation, event, stored)));
                }
            }
            ConversationEventType::Transcription => {
                if let Some(t) = event.transcription.as_ref().filter(|t| t.is_final) {
                    let mut entry = entry(
                        &mut conversation,
                        format!("utt-{}", event.event_id),
                        TranscriptEntryKind::Utterance,
                        event.occurred_at,
                    );
                    entry.modality = Modality::Voice;
                    (entry.speaker, entry.direction) = match t.speaker {
                        TranscriptionSpeaker::User => (TranscriptSpeaker::User, Direction::Inbound),
                        TranscriptionSpeaker::Agent => (TranscriptSpeaker::Si, Direction::Outbound),
                        TranscriptionSpeaker::Unknown => {
                            (TranscriptSpeaker::Unknown, Direction::Unknown)
                        }
                    };
                    entry.text = Some(t.text.clone());
                    entry.call_sid = Some(t.call_sid.clone());
                    entry.source_sid.clone_from(&t.transcription_sid);
                    entry.channel = Some(Channel::Voice);
                    entry.locale = Some(event.locale.clone());
                    outputs.push(self.write(entry));
                }
            }
            ConversationEventType::ConversationStateChanged
                if event
                    .state_change
                    .as_ref()
                    .is_some_and(|s| s.state_to == ConversationState::Closed) =>
            {
                conversation.closed_at.get_or_insert(now);
                let why = if event.is_programmable_messaging() {
                    "cancelled: the conversation was closed"
                } else {
                    "cancelled: the conversation was closed at Twilio"
                };
                if let Some((_, cancelled)) =
                    self.cancel_scheduled(now, &mut conversation, why, state)
                {
                    outputs.push(cancelled);
                }
            }
            _ => {}
        }
        self.save(state, conversation);
        outputs
    }

    /// A call's status, its recording answer, its start and its end.
    fn on_call(
        &self,
        now: i64,
        event: &ConversationEvent,
        call: &CallEvent,
        conversation: &mut VoiceLinkState,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        let inbound = call.direction.as_deref().is_none_or(|d| d == "inbound");
        let index = find_call(conversation, &call.call_sid, inbound, now, &event.locale);
        if call.status != CallState::Unknown {
            call.status
                .as_str()
                .clone_into(&mut conversation.calls[index].status);
        }
        if conversation.calls[index].outcome.is_some() {
            return outputs; // over (a machine was hung up on): late callbacks
        }
        let machine = call
            .answered_by
            .as_deref()
            .is_some_and(|a| a.starts_with("machine") || a == "fax");
        if machine && !conversation.calls[index].inbound {
            // Answering-machine detection: hang up, and offer the user to
            // continue by text or ask again.
            outputs.push(self.hang_up(
                now,
                conversation,
                format!("{ID_PREFIX}end-machine-{}", call.call_sid),
                call.call_sid.clone(),
            ));
            outputs.extend(self.on_end(now, event, call, "machine", index, conversation));
            return outputs;
        }
        let answer = answer_of(call);
        let connected = matches!(call.status, CallState::InProgress) || answer.is_some();
        if connected && conversation.calls[index].answered_at.is_none() {
            conversation.calls[index].answered_at = Some(now);
            let requested_at = conversation.calls[index].requested_at;
            if !conversation.calls[index].inbound {
                #[allow(clippy::cast_precision_loss)]
                self.metrics
                    .time_to_answer
                    .observe((now - requested_at).max(0) as f64 / 1000.0);
            }
            let mut started = entry(
                conversation,
                format!("call-start-{}", call.call_sid),
                TranscriptEntryKind::CallStarted,
                event.occurred_at,
            );
            started.call_sid = Some(call.call_sid.clone());
            started.source_sid = Some(call.call_sid.clone());
            started.channel = Some(Channel::Voice);
            started.direction = if conversation.calls[index].inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            outputs.push(self.write(started));
        }
        if let Some(answer) = answer {
            outputs.extend(self.on_answer(now, event, call, answer, index, conversation));
        }
        if let Some(outcome) = ended(call.status, &conversation.calls[index]) {
            outputs.extend(self.on_end(now, event, call, outcome, index, conversation));
        }
        outputs
    }

    /// The disclosure was played, or the caller answered it: compliance
    /// events, and a text when the conversation continues by text.
    fn on_answer(
        &self,
        now: i64,
        event: &ConversationEvent,
        call: &CallEvent,
        answer: Answer,
        index: usize,
        conversation: &mut VoiceLinkState,
    ) -> Vec<Output> {
        let previous = conversation.calls[index].disclosure.clone();
        let mut outputs = Vec::new();
        // The disclosure is on the record before the answer, once.
        if previous.is_none() {
            outputs.push(self.compliance(
                event,
                call,
                ComplianceEventKind::RecordingDisclosed,
                Answer::Disclosed,
                conversation,
            ));
            self.metrics
                .recording_consent
                .with_label_values(&[Answer::Disclosed.label()])
                .inc();
        }
        let decided = previous
            .as_deref()
            .is_some_and(|p| p != Answer::Disclosed.as_str());
        if answer == Answer::Disclosed || decided {
            if previous.is_none() {
                conversation.calls[index].disclosure = Some(answer.as_str().to_owned());
            }
            return outputs;
        }
        conversation.calls[index].disclosure = Some(answer.as_str().to_owned());
        self.metrics
            .recording_consent
            .with_label_values(&[answer.label()])
            .inc();
        let kind = if answer == Answer::Accepted {
            ComplianceEventKind::RecordingAccepted
        } else {
            ComplianceEventKind::RecordingDeclined
        };
        outputs.push(self.compliance(event, call, kind, answer, conversation));
        if answer != Answer::Accepted {
            outputs.extend(self.call_text(
                "by-text",
                keys::CALL_CONTINUES_BY_TEXT,
                &call.call_sid,
                conversation,
                index,
                now,
            ));
        }
        outputs
    }

    /// The call ended (or never connected): the end marker, and for a call
    /// Si placed that did not connect, the offer to ask for another call;
    /// for a call hung up before the recording question was answered (a
    /// decline in all but name), the offer to continue by text.
    fn on_end(
        &self,
        now: i64,
        event: &ConversationEvent,
        call: &CallEvent,
        outcome: &'static str,
        index: usize,
        conversation: &mut VoiceLinkState,
    ) -> Vec<Output> {
        conversation.calls[index].outcome = Some(outcome.to_owned());
        let duration = call.duration_seconds.unwrap_or(0);
        let mut outputs = Vec::new();
        let mut end = entry(
            conversation,
            format!("call-end-{}", call.call_sid),
            TranscriptEntryKind::CallEnded,
            event.occurred_at,
        );
        end.call_sid = Some(call.call_sid.clone());
        end.source_sid = Some(call.call_sid.clone());
        end.channel = Some(Channel::Voice);
        end.call_outcome = Some(outcome.to_owned());
        end.call_duration_seconds = Some(duration);
        outputs.push(self.write(end));
        if conversation.calls[index].answered_at.is_some() {
            self.metrics.call_duration.observe(f64::from(duration));
        }
        let placed = !conversation.calls[index].inbound;
        if placed {
            self.count(outcome);
        }
        // Disclosed but never answered: the caller hung up on the question.
        let unanswered = matches!(
            conversation.calls[index].disclosure.as_deref(),
            None | Some("DISCLOSED")
        );
        if outcome == "ended" && unanswered {
            outputs.extend(self.call_text(
                "by-text",
                keys::CALL_CONTINUES_BY_TEXT,
                &call.call_sid,
                conversation,
                index,
                now,
            ));
        }
        if placed && matches!(outcome, "no_answer" | "busy" | "failed" | "machine") {
            outputs.extend(self.call_text(
                "missed",
                keys::CALL_MISSED,
                &call.call_sid,
                conversation,
                index,
                now,
            ));
        }
        tracing::info!(
            conversation_id = %conversation.conversation_id,
            outcome,
            duration,
            "call ended"
        );
        outputs
    }

    fn compliance(
        &self,
        event: &ConversationEvent,
        call: &CallEvent,
        kind: ComplianceEventKind,
        answer: Answer,
        conversation: &VoiceLinkState,
    ) -> Output {
        let address = event
            .participant
            .as_ref()
            .and_then(|p| p.address.clone())
            .or_else(|| conversation.address.clone())
            .unwrap_or_default();
        let record = ComplianceEvent {
            event_id: format!(
                "{ID_PREFIX}{}-{}",
                answer.as_str().to_ascii_lowercase(),
                call.call_sid
            ),
            kind,
            source: ComplianceSource::VoiceIvr,
            address: address.clone(),
            channel: Channel::Voice,
            sender_scope: None,
            conversation_id: Some(conversation.conversation_id.clone()),
            message_ref: Some(call.call_sid.clone()),
            keyword: None,
            locale: Some(event.locale.clone()),
            at: event.occurred_at,
            details: BTreeMap::from([
                ("stage".to_owned(), "voice-link".to_owned()),
                ("answer".to_owned(), answer.as_str().to_owned()),
                ("call_sid".to_owned(), call.call_sid.clone()),
            ]),
        };
        let key = if address.is_empty() {
            conversation.conversation_id.clone()
        } else {
            Channel::Voice.address_key(&address)
        };
        Output::new(topics::COMPLIANCE, key, record)
    }

    // ------------------------------------------------------------ deliveries

    fn on_delivery(
        &self,
        ctx: &RecordContext<'_>,
        status: &DeliveryStatus,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Vec<Output> {
        let now = ctx.timestamp_ms;
        // Segment's remediation records and the resends they lead to repeat a
        // message the transcript already has.
        if status.remediation.is_some() || status.resend_of.is_some() {
            return Vec::new();
        }
        let key = conversation_key(&status.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            return Vec::new();
        };
        let mut outputs = Vec::new();
        match status.kind {
            Some(OperationKind::CreateCall) => {
                outputs.extend(self.on_call_placed(now, status, &mut conversation));
            }
            Some(OperationKind::SendMessage | OperationKind::SendConversationMessage) => {
                if let Some(entry) = outbound_part(&mut conversation, status) {
                    outputs.push(self.write(entry));
                }
            }
            _ => return Vec::new(),
        }
        conversation.last_activity_at = now;
        self.save(state, conversation);
        outputs
    }

    /// Egress's outcome of a `CREATE_CALL`: the Call SID, or a failed call.
    fn on_call_placed(
        &self,
        now: i64,
        status: &DeliveryStatus,
        conversation: &mut VoiceLinkState,
    ) -> Vec<Output> {
        let Some(index) = conversation
            .calls
            .iter()
            .position(|c| c.operation_id.as_deref() == Some(status.operation_id.as_str()))
        else {
            return Vec::new();
        };
        if status.outcome == DeliveryOutcome::Accepted {
            let Some(sid) = status.twilio_sid.clone() else {
                return Vec::new();
            };
            // A status callback may have come first and made its own entry.
            if let Some(early) = conversation.calls.iter().position(|c| {
                c.call_sid.as_deref() == Some(sid.as_str()) && c.operation_id.is_none()
            }) {
                let early = conversation.calls.remove(early);
                let index = conversation
                    .calls
                    .iter()
                    .position(|c| c.operation_id.as_deref() == Some(status.operation_id.as_str()))
                    .unwrap_or_default();
                let placed = &mut conversation.calls[index];
                placed.answered_at = placed.answered_at.or(early.answered_at);
                placed.disclosure = placed.disclosure.take().or(early.disclosure);
                placed.status = early.status;
                placed.outcome = placed.outcome.take().or(early.outcome);
                placed.call_sid = Some(sid);
            } else {
                conversation.calls[index].call_sid = Some(sid);
            }
            return Vec::new();
        }
        if conversation.calls[index].outcome.is_some() {
            return Vec::new();
        }
        // Egress's consent re-check refused it (the user opted out while it
        // waited): it never rang, and there is nobody to text about it.
        let blocked = status.outcome == DeliveryOutcome::Blocked;
        let outcome = if blocked { "blocked" } else { "failed" };
        conversation.calls[index].outcome = Some(outcome.to_owned());
        self.count(outcome);
        let mut end = entry(
            conversation,
            format!("call-end-{}", status.operation_id),
            TranscriptEntryKind::CallEnded,
            status.at,
        );
        end.channel = Some(Channel::Voice);
        end.call_outcome = Some(outcome.to_owned());
        end.call_duration_seconds = Some(0);
        let locale = conversation.calls[index].locale.clone();
        let mut outputs = vec![self.write(end)];
        if blocked {
            return outputs;
        }
        outputs.extend(self.text(
            format!("{ID_PREFIX}missed-{}", status.operation_id),
            conversation,
            keys::CALL_MISSED,
            &locale,
            &[],
            now,
        ));
        outputs
    }

    // ------------------------------------------------------------ commands

    fn on_command(
        &self,
        ctx: &RecordContext<'_>,
        command: &Command,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        match command.kind {
            CommandKind::EscalateToVoice => self.on_escalate(ctx.timestamp_ms, command, state),
            CommandKind::EndCall => Ok(self.on_end_call(ctx.timestamp_ms, command, state)),
            // lifecycle's; a closure also cancels a call scheduled for later
            // (lifecycle hangs up a live one).
            CommandKind::CloseConversation => Ok(self.on_closed(
                ctx.timestamp_ms,
                &command.conversation_id,
                "cancelled: the conversation was closed",
                state,
            )),
            // lifecycle's; an unknown kind is dead-lettered by lifecycle.
            CommandKind::StartConversation | CommandKind::Unknown => Ok(Vec::new()),
        }
    }

    fn on_escalate(
        &self,
        now: i64,
        command: &Command,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let key = conversation_key(&command.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            return Ok(self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "unknown conversation: voice-link has seen no event of it".into(),
                    compliance: None,
                },
            ));
        };
        let seen = conversation
            .calls
            .iter()
            .any(|c| c.command_id.as_deref() == Some(command.command_id.as_str()))
            || conversation
                .scheduled
                .as_ref()
                .is_some_and(|s| s.command_id == command.command_id);
        if seen {
            return Ok(Vec::new()); // a re-sent command
        }
        if conversation.closed_at.is_some() {
            return Ok(self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "the conversation is closed".into(),
                    compliance: None,
                },
            ));
        }
        if conversation
            .calls
            .iter()
            .any(|c| c.outcome.is_none() && c.call_sid.is_some())
        {
            return Ok(self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "a call of the conversation is in progress".into(),
                    compliance: None,
                },
            ));
        }
        let to = command
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .or_else(|| conversation.address.clone());
        let Some(to) = to.filter(|a| is_e164(a)) else {
            return Ok(self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "no phone number to call (the conversation's user has none)".into(),
                    compliance: None,
                },
            ));
        };
        let from = command
            .params
            .get(FROM_PARAM)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| self.settings.voice_from.clone())
            .or_else(|| conversation.proxy_address.clone().filter(|p| is_e164(p)))
            .ok_or_else(|| {
                ProcessError::Invalid(
                    "ESCALATE_TO_VOICE: no number to call from (params[from], VOICE_FROM or the \
                     conversation's number)"
                        .into(),
                )
            })?;
        let locale = command
            .locale
            .clone()
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| conversation.locale.clone());
        if let Some(refusal) = self.consent_refusal(now, command, &conversation, &to, &locale) {
            return Ok(self.refuse(now, command, refusal));
        }
        let requested = match command.params.get(AT_PARAM) {
            None => now,
            Some(at) => at
                .trim()
                .parse::<Timestamp>()
                .map_err(|e| {
                    ProcessError::Invalid(format!(
                        "ESCALATE_TO_VOICE: params[at] {at:?} is not an RFC 3339 time ({e})"
                    ))
                })?
                .as_millisecond()
                .max(now),
        };
        if requested.saturating_sub(now)
            > i64::try_from(LONGEST_AHEAD.as_millis()).unwrap_or(i64::MAX)
        {
            return Ok(self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: format!(
                        "params[at] is more than {} days ahead",
                        LONGEST_AHEAD.as_secs() / 86_400
                    ),
                    compliance: None,
                },
            ));
        }
        let zones = self.zones(&conversation, &to);
        let due = self.settings.quiet_window.map_or(requested, |w| {
            Timestamp::from_millisecond(requested).map_or(requested, |t| {
                w.next_allowed_in_all(t, &zones).as_millisecond()
            })
        });
        let scheduled = ScheduledCall {
            command_id: command.command_id.clone(),
            due_at: due,
            requested_at: now,
            to,
            from,
            locale,
        };
        // A requested time a moment ahead is now; a quiet window's end is not.
        if due <= now || (due == requested && due <= now.saturating_add(SCHEDULE_SLACK_MS)) {
            let mut outputs = self.place(now, &mut conversation, &scheduled);
            outputs.push(self.status(now, command, DeliveryOutcome::Accepted, None));
            self.save(state, conversation);
            return Ok(outputs);
        }
        // The time is told in the zone the user most likely is in.
        self.schedule(now, command, conversation, scheduled, &zones[0], state)
    }

    /// A call due later: held in the state and placed by the timer (exactly
    /// once, also across restarts: the timer is in the changelog), the user
    /// told when in their local time.
    fn schedule(
        &self,
        now: i64,
        command: &Command,
        mut conversation: VoiceLinkState,
        scheduled: ScheduledCall,
        zone: &TimeZone,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let due = scheduled.due_at;
        self.count("scheduled");
        let (Ok(at), Ok(now_ts)) = (
            Timestamp::from_millisecond(due),
            Timestamp::from_millisecond(now),
        ) else {
            return Err(ProcessError::Invalid(
                "ESCALATE_TO_VOICE: time out of range".into(),
            ));
        };
        let time = local_time_text(at, now_ts, zone);
        let zone_name = zone.iana_name().unwrap_or("UTC").to_owned();
        let mut outputs = self.text(
            format!("{ID_PREFIX}scheduled-{}", command.command_id),
            &conversation,
            keys::CALL_SCHEDULED,
            &scheduled.locale,
            &[("{time}", &time), ("{zone}", &zone_name)],
            now,
        );
        outputs.push(Self::delivery_answer(
            now,
            &command.conversation_id,
            command_status_id(&command.command_id),
            DeliveryOutcome::Accepted,
            Some(format!("scheduled for {at}")),
            (Some(due), None),
        ));
        conversation.scheduled = Some(scheduled);
        self.save(state, conversation);
        state.set_timer(&conversation_key(&command.conversation_id), due);
        tracing::info!(
            conversation_id = %command.conversation_id,
            due_at = %at,
            "call scheduled"
        );
        Ok(outputs)
    }

    /// The consent a call to the conversation's user is placed under: their
    /// text channel's, toward the sender they talk to.
    fn consent_subject(&self, conversation: &VoiceLinkState) -> (Channel, String) {
        let channel = match conversation.channel {
            Channel::Whatsapp => Channel::Whatsapp,
            _ => Channel::Sms,
        };
        let scope = conversation
            .proxy_address
            .clone()
            .or_else(|| self.settings.messaging_service_sid.clone())
            .unwrap_or_else(|| ANY_SCOPE.to_owned());
        (channel, scope)
    }

    fn consent_refusal(
        &self,
        now: i64,
        command: &Command,
        conversation: &VoiceLinkState,
        to: &str,
        locale: &str,
    ) -> Option<Refusal> {
        let (channel, scope) = self.consent_subject(conversation);
        let Verdict::Blocked { status, decision } =
            self.gate
                .check(channel, to, &scope, self.settings.require_opt_in)
        else {
            return None;
        };
        let reason = if status == ConsentStatus::OptedOut {
            "the user opted out"
        } else {
            "the user never opted in (explicit consent policy)"
        };
        let mut details = BTreeMap::from([
            ("stage".to_owned(), "voice-link".to_owned()),
            ("command_id".to_owned(), command.command_id.clone()),
            ("issued_by".to_owned(), command.issued_by.clone()),
            ("consent_status".to_owned(), status.as_str().to_owned()),
            ("operation".to_owned(), "CREATE_CALL".to_owned()),
        ]);
        if let Some(d) = &decision {
            details.insert("decision_scope".to_owned(), d.sender_scope.clone());
        }
        let event = ComplianceEvent {
            event_id: format!("{ID_PREFIX}blocked-{}", command.command_id),
            kind: ComplianceEventKind::BlockedOutbound,
            source: decision
                .as_ref()
                .map_or(ComplianceSource::Unknown, |d| d.source),
            address: to.to_owned(),
            channel: Channel::Voice,
            sender_scope: Some(scope),
            conversation_id: Some(conversation.conversation_id.clone()),
            message_ref: Some(command.command_id.clone()),
            keyword: None,
            locale: Some(locale.to_owned()),
            at: now,
            details,
        };
        tracing::info!(
            command_id = %command.command_id,
            to = %mask_address(to),
            "ESCALATE_TO_VOICE refused by the consent gate"
        );
        Some(Refusal {
            outcome: "blocked",
            reason: reason.to_owned(),
            compliance: Some(Output::new(
                topics::COMPLIANCE,
                channel.address_key(to),
                event,
            )),
        })
    }

    /// The `CREATE_CALL` and the "calling you now" text.
    fn place(
        &self,
        now: i64,
        conversation: &mut VoiceLinkState,
        call: &ScheduledCall,
    ) -> Vec<Output> {
        self.count("requested");
        let operation_id = call_operation_id(&call.command_id);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("conversation", &conversation.conversation_id)
            .append_pair("locale", &call.locale)
            .finish();
        let base = self.settings.public_base_url.trim_end_matches('/');
        let mut op = operation(
            operation_id.clone(),
            &conversation.conversation_id,
            OperationKind::CreateCall,
            Channel::Voice.address_key(&call.from),
            now,
        );
        op.to = Some(call.to.clone());
        op.from = Some(call.from.clone());
        op.not_after = Some(self.call_deadline(now, conversation, &call.to));
        // Egress checks the same consent again right before it creates the
        // call: a STOP while the call waits for its turn stops it.
        let (channel, scope) = self.consent_subject(conversation);
        op.params.insert(
            si_consent_gate::CALL_CONSENT_CHANNEL_PARAM.to_owned(),
            channel.key_prefix().to_owned(),
        );
        op.params
            .insert(si_consent_gate::CALL_CONSENT_SCOPE_PARAM.to_owned(), scope);
        op.call = Some(CallRequest {
            twiml_url: format!("{base}/twilio/voice/answer?{query}"),
            status_callback_url: Some(format!("{base}/twilio/voice/status?{query}")),
            record: false,
            timeout_seconds: Some(self.settings.ring_timeout_secs),
            machine_detection: self.settings.machine_detection.clone(),
        });
        conversation.calls.push(VoiceLinkCall {
            call_sid: None,
            operation_id: Some(operation_id),
            command_id: Some(call.command_id.clone()),
            inbound: false,
            requested_at: now,
            answered_at: None,
            disclosure: None,
            status: CallState::Queued.as_str().to_owned(),
            outcome: None,
            locale: call.locale.clone(),
        });
        trim_calls(conversation);
        let mut outputs = vec![Output::new(topics::OUTBOUND, op.sender_key.clone(), op)];
        outputs.extend(self.text(
            format!("{ID_PREFIX}calling-{}", call.command_id),
            conversation,
            keys::CALLING_NOW,
            &call.locale,
            &[],
            now,
        ));
        tracing::info!(
            conversation_id = %conversation.conversation_id,
            to = %mask_address(&call.to),
            "placing a call"
        );
        outputs
    }

    /// Cancels the conversation's call scheduled for later, if it has one
    /// (the caller saves the conversation): the call is kept on the record
    /// as cancelled (a re-sent command is not scheduled again), and its
    /// issuer and lifecycle are told on `twilio.delivery.v1` (FAILED, with
    /// the time it was scheduled for).
    fn cancel_scheduled(
        &self,
        now: i64,
        conversation: &mut VoiceLinkState,
        why: &str,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Option<(ScheduledCall, Output)> {
        let scheduled = conversation.scheduled.take()?;
        state.cancel_timer(&conversation_key(&conversation.conversation_id));
        self.count("canceled");
        tracing::info!(
            conversation_id = %conversation.conversation_id,
            command_id = %scheduled.command_id,
            "scheduled call {why}"
        );
        conversation.calls.push(VoiceLinkCall {
            call_sid: None,
            operation_id: None,
            command_id: Some(scheduled.command_id.clone()),
            inbound: false,
            requested_at: scheduled.requested_at,
            answered_at: None,
            disclosure: None,
            status: CallState::Canceled.as_str().to_owned(),
            outcome: Some("canceled".to_owned()),
            locale: scheduled.locale.clone(),
        });
        trim_calls(conversation);
        let output = Self::delivery_answer(
            now,
            &conversation.conversation_id,
            scheduled_status_id(&scheduled.command_id),
            DeliveryOutcome::Failed,
            Some(format!("the scheduled call is {why}")),
            (Some(scheduled.due_at), None),
        );
        Some((scheduled, output))
    }

    /// A `CLOSE_CONVERSATION` cancels the call scheduled for later; lifecycle
    /// hangs up a live one. The conversation counts as closed only from its
    /// CLOSED event (Twilio's, or lifecycle's for Programmable Messaging): the
    /// events topic orders a closure and a reopening as lifecycle decided
    /// them, the command topic does not.
    fn on_closed(
        &self,
        now: i64,
        conversation_id: &str,
        why: &str,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Vec<Output> {
        let Some(mut conversation) = state.get(&conversation_key(conversation_id)).cloned() else {
            return Vec::new();
        };
        let Some((_, cancelled)) = self.cancel_scheduled(now, &mut conversation, why, state) else {
            return Vec::new();
        };
        self.save(state, conversation);
        vec![cancelled]
    }

    fn on_end_call(
        &self,
        now: i64,
        command: &Command,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Vec<Output> {
        let key = conversation_key(&command.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            return self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "unknown conversation".into(),
                    compliance: None,
                },
            );
        };
        let why = format!("cancelled by END_CALL {}", command.command_id);
        if let Some((scheduled, cancelled)) =
            self.cancel_scheduled(now, &mut conversation, &why, state)
        {
            self.save(state, conversation);
            return vec![
                cancelled,
                self.status(
                    now,
                    command,
                    DeliveryOutcome::Accepted,
                    Some(format!(
                        "the call scheduled by {} is cancelled",
                        scheduled.command_id
                    )),
                ),
            ];
        }
        let live = conversation
            .calls
            .iter()
            .rev()
            .find(|c| c.outcome.is_none())
            .and_then(|c| c.call_sid.clone());
        let Some(call_sid) = live else {
            return self.refuse(
                now,
                command,
                Refusal {
                    outcome: "refused",
                    reason: "no call of the conversation is in progress".into(),
                    compliance: None,
                },
            );
        };
        let end = self.hang_up(
            now,
            &conversation,
            format!("{ID_PREFIX}end-{}", command.command_id),
            call_sid,
        );
        conversation.last_activity_at = now;
        self.save(state, conversation);
        vec![
            end,
            self.status(now, command, DeliveryOutcome::Accepted, None),
        ]
    }

    /// The `END_CALL` of `call_sid`, keyed as the calls of our number are.
    fn hang_up(
        &self,
        now: i64,
        conversation: &VoiceLinkState,
        operation_id: String,
        call_sid: String,
    ) -> Output {
        let from = self
            .settings
            .voice_from
            .clone()
            .or_else(|| conversation.proxy_address.clone())
            .unwrap_or_default();
        let mut op = operation(
            operation_id,
            &conversation.conversation_id,
            OperationKind::EndCall,
            Channel::Voice.address_key(&from),
            now,
        );
        op.params.insert(CALL_SID_PARAM.to_owned(), call_sid);
        Output::new(topics::OUTBOUND, op.sender_key.clone(), op)
    }

    fn refuse(&self, now: i64, command: &Command, refusal: Refusal) -> Vec<Output> {
        self.refuse_as(
            now,
            command,
            command_status_id(&command.command_id),
            None,
            refusal,
        )
    }

    fn refuse_as(
        &self,
        now: i64,
        command: &Command,
        status_id: String,
        scheduled_at: Option<i64>,
        refusal: Refusal,
    ) -> Vec<Output> {
        self.count(refusal.outcome);
        tracing::info!(
            command_id = %command.command_id,
            outcome = refusal.outcome,
            reason = %refusal.reason,
            "command refused"
        );
        let outcome = if refusal.outcome == "blocked" {
            DeliveryOutcome::Blocked
        } else {
            DeliveryOutcome::Failed
        };
        let recorded = refusal
            .compliance
            .as_ref()
            .and_then(Output::record::<ComplianceEvent>)
            .map(|event| event.event_id.clone());
        let mut outputs: Vec<Output> = refusal.compliance.into_iter().collect();
        outputs.push(Self::delivery_answer(
            now,
            &command.conversation_id,
            status_id,
            outcome,
            Some(refusal.reason),
            (scheduled_at, recorded),
        ));
        outputs
    }

    /// The answer to a command's issuer on `twilio.delivery.v1`.
    fn status(
        &self,
        now: i64,
        command: &Command,
        outcome: DeliveryOutcome,
        message: Option<String>,
    ) -> Output {
        Self::delivery_answer(
            now,
            &command.conversation_id,
            command_status_id(&command.command_id),
            outcome,
            message,
            (None, None),
        )
    }

    /// A status on `twilio.delivery.v1` for a command's issuer (and
    /// lifecycle): an answer, or about a call scheduled for `scheduled_at`
    /// (a new time, or why it will not be placed).
    fn delivery_answer(
        now: i64,
        conversation_id: &str,
        status_id: String,
        outcome: DeliveryOutcome,
        message: Option<String>,
        (scheduled_at, compliance_event_id): (Option<i64>, Option<String>),
    ) -> Output {
        let mut status = DeliveryStatus::command_answer(
            status_id,
            conversation_id.to_owned(),
            outcome,
            message,
            now,
        );
        status.scheduled_at = scheduled_at;
        // The refusal's audit record (BLOCKED_OUTBOUND), written with it.
        status.compliance_event_id = compliance_event_id;
        Output::new(topics::DELIVERY, conversation_id.to_owned(), status)
    }

    // ------------------------------------------------------------ helpers

    /// The latest a call placed at `now` may still leave egress: within
    /// [`CALL_MAX_WAIT`], and before the quiet window starts in any of the
    /// user's zones (egress dead-letters it after that, and the user is
    /// told the call did not go through).
    fn call_deadline(&self, now: i64, conversation: &VoiceLinkState, to: &str) -> i64 {
        let wait = i64::try_from(CALL_MAX_WAIT.as_millis()).unwrap_or(i64::MAX);
        let latest = now.saturating_add(wait);
        let quiet = self.settings.quiet_window.and_then(|window| {
            let at = Timestamp::from_millisecond(now).ok()?;
            window.next_quiet_start(at, &self.zones(conversation, to))
        });
        quiet.map_or(latest, |start| latest.min(start.as_millisecond()))
    }

    /// The zones the user may be in (never empty), the likeliest first.
    fn zones(&self, conversation: &VoiceLinkState, to: &str) -> Vec<TimeZone> {
        let identity = conversation.time_zone.clone().or_else(|| {
            [Channel::Sms, Channel::Whatsapp, Channel::Voice]
                .iter()
                .find_map(|c| self.identity.get(&c.address_key(to)))
                .and_then(|r| r.attributes.get("time_zone").cloned())
        });
        user_zones(identity.as_deref(), Some(to), &self.settings.default_zone)
    }

    /// A text to the user on the conversation's channel, through segment
    /// (consent gate, limits, the WhatsApp window) like any reply. None for
    /// a conversation without a text channel.
    /// The catalog's `key` about call `index` in the call's language, its
    /// response id `<prefix><what>-<CallSid>` (one per call and purpose).
    fn call_text(
        &self,
        what: &str,
        key: &str,
        call_sid: &str,
        conversation: &VoiceLinkState,
        index: usize,
        now: i64,
    ) -> Vec<Output> {
        let locale = conversation.calls[index].locale.clone();
        let id = format!("{ID_PREFIX}{what}-{call_sid}");
        self.text(id, conversation, key, &locale, &[], now)
    }

    fn text(
        &self,
        response_id: String,
        conversation: &VoiceLinkState,
        key: &str,
        locale: &str,
        fill: &[(&str, &str)],
        now: i64,
    ) -> Vec<Output> {
        if !matches!(
            conversation.channel,
            Channel::Sms | Channel::Whatsapp | Channel::Chat
        ) {
            return Vec::new();
        }
        let text = self.catalog.text(key, locale);
        let body = fill.iter().fold(text.text.to_owned(), |body, (from, to)| {
            body.replace(from, to)
        });
        let response = CognitionResponse {
            response_id,
            conversation_id: conversation.conversation_id.clone(),
            session_id: conversation.session_id.clone(),
            in_reply_to: None,
            text: body,
            media: Vec::new(),
            locale: Some(locale.to_owned()),
            hints: None,
            created_at: now,
            traceparent: None,
            purpose: ResponsePurpose::Reply,
        };
        vec![Output::new(
            topics::RESPONSES,
            conversation.conversation_id.clone(),
            response,
        )]
    }

    fn write(&self, entry: TranscriptEntry) -> Output {
        let kind = entry.entry_kind.map_or("unknown", |k| match k {
            TranscriptEntryKind::Message => "message",
            TranscriptEntryKind::CallStarted => "call_started",
            TranscriptEntryKind::CallEnded => "call_ended",
            TranscriptEntryKind::Recording => "recording",
            TranscriptEntryKind::Utterance => "utterance",
            TranscriptEntryKind::MediaStored => "media_stored",
            TranscriptEntryKind::Unknown => "unknown",
        });
        self.metrics.transcript.with_label_values(&[kind]).inc();
        Output::new(topics::TRANSCRIPT, entry.conversation_id.clone(), entry)
    }
}

impl Processor for VoiceLinkProcessor {
    type Input = VoiceLinkInput;
    type State = VoiceLinkState;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: VoiceLinkInput,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let outputs = match input {
            VoiceLinkInput::Event(event) => self.on_event(ctx, &event, state),
            VoiceLinkInput::Command(command) => self.on_command(ctx, &command, state)?,
            VoiceLinkInput::Delivery(status) => self.on_delivery(ctx, &status, state),
        };
        Ok(with_recorded(outputs, state, ctx.timestamp_ms))
    }

    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let outputs = self.on_due(ctx, state)?;
        Ok(with_recorded(outputs, state, ctx.now_ms))
    }
}

/// The outputs with, for each compliance event among them, its
/// `COMPLIANCE_RECORDED` on the conversation's topic, under the
/// conversation's session (written in the same transaction): lifecycle names
/// the call's disclosure and the caller's answer, and a refused call, in the
/// conversation's archival request, as it does consent's and segment's.
fn with_recorded(
    outputs: Vec<Output>,
    state: &StateStore<VoiceLinkState>,
    now: i64,
) -> Vec<Output> {
    let session = outputs
        .iter()
        .filter(|o| o.topic() == topics::COMPLIANCE)
        .filter_map(|o| o.record::<ComplianceEvent>())
        .find_map(|e| e.conversation_id.as_deref())
        .and_then(|c| state.get(&conversation_key(c)))
        .map(|c| c.session_id.clone());
    match session {
        Some(session) => si_consent_gate::with_recorded(outputs, &session, now),
        None => outputs,
    }
}

impl VoiceLinkProcessor {
    /// A scheduled call is due: consent again (it may have changed), then
    /// the call.
    fn on_due(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<VoiceLinkState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let Some(mut conversation) = state.get(ctx.key).cloned() else {
            return Ok(Vec::new());
        };
        let Some(scheduled) = conversation.scheduled.take() else {
            return Ok(Vec::new());
        };
        let now = ctx.now_ms;
        // A timer that fired late may have run into the quiet window.
        let zones = self.zones(&conversation, &scheduled.to);
        let due = self.settings.quiet_window.map_or(now, |window| {
            Timestamp::from_millisecond(now).map_or(now, |t| {
                window.next_allowed_in_all(t, &zones).as_millisecond()
            })
        });
        if due > now {
            // Put off again: the issuer and lifecycle learn the new time.
            let output = Self::delivery_answer(
                now,
                &conversation.conversation_id,
                format!("{ID_PREFIX}deferred-{}-{due}", scheduled.command_id),
                DeliveryOutcome::Accepted,
                Some("deferred to the end of the quiet window".to_owned()),
                (Some(due), None),
            );
            conversation.scheduled = Some(ScheduledCall {
                due_at: due,
                ..scheduled
            });
            self.save(state, conversation);
            state.set_timer(ctx.key, due);
            return Ok(vec![output]);
        }
        let command = Command {
            address: Some(scheduled.to.clone()),
            locale: Some(scheduled.locale.clone()),
            ..Command::new(
                CommandKind::EscalateToVoice,
                &scheduled.command_id,
                &conversation.conversation_id,
                "voice-link",
                scheduled.requested_at,
            )
        };
        if let Some(refusal) = self.consent_refusal(
            now,
            &command,
            &conversation,
            &scheduled.to,
            &scheduled.locale,
        ) {
            self.save(state, conversation);
            // The command was answered ACCEPTED when it was scheduled: this
            // answer has an id of its own, and the time it was scheduled for.
            let status_id = scheduled_status_id(&scheduled.command_id);
            return Ok(self.refuse_as(now, &command, status_id, Some(scheduled.due_at), refusal));
        }
        let outputs = self.place(now, &mut conversation, &scheduled);
        self.save(state, conversation);
        Ok(outputs)
    }
}

/// The id of the status of a scheduled call that does not take place: the
/// ESCALATE_TO_VOICE was answered ACCEPTED when it was scheduled.
fn scheduled_status_id(command_id: &str) -> String {
    format!("{ID_PREFIX}scheduled-{command_id}")
}

/// A conversation voice-link sees for the first time.
fn new_conversation(event: &ConversationEvent, now: i64) -> VoiceLinkState {
    VoiceLinkState {
        conversation_id: event.conversation_id.clone(),
        session_id: event.session_id.clone(),
        channel: event.channel,
        address: None,
        proxy_address: None,
        locale: event.locale.clone(),
        time_zone: None,
        next_sequence: 1,
        last_activity_at: now,
        scheduled: None,
        calls: Vec::new(),
        outbound: Vec::new(),
        closed_at: None,
    }
}

/// What an event tells about where the user is reached. A text channel wins
/// over VOICE (texts go to the text channel).
fn learn(conversation: &mut VoiceLinkState, event: &ConversationEvent) {
    if conversation.session_id.is_empty() {
        conversation.session_id.clone_from(&event.session_id);
    }
    let texting = matches!(
        event.channel,
        Channel::Sms | Channel::Whatsapp | Channel::Chat
    );
    if texting && conversation.channel != event.channel {
        conversation.channel = event.channel;
    }
    if texting || conversation.channel == Channel::Voice {
        if let Some(participant) = &event.participant {
            if participant.address.is_some() {
                conversation.address.clone_from(&participant.address);
            }
            if participant.proxy_address.is_some() {
                conversation
                    .proxy_address
                    .clone_from(&participant.proxy_address);
            }
        }
        if !event.locale.is_empty() && event.event_type == ConversationEventType::MessageReceived {
            conversation.locale.clone_from(&event.locale);
        }
    }
}

/// The index of the call `call_sid` in the conversation, adding it when new
/// (an inbound call, or a placed one whose callback came before egress's
/// outcome).
fn find_call(
    conversation: &mut VoiceLinkState,
    call_sid: &str,
    inbound: bool,
    now: i64,
    locale: &str,
) -> usize {
    if let Some(i) = conversation
        .calls
        .iter()
        .position(|c| c.call_sid.as_deref() == Some(call_sid))
    {
        return i;
    }
    if !inbound {
        // The one placed call still waiting for its SID.
        let waiting: Vec<usize> = conversation
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.inbound && c.call_sid.is_none() && c.outcome.is_none())
            .map(|(i, _)| i)
            .collect();
        if let [only] = waiting[..] {
            conversation.calls[only].call_sid = Some(call_sid.to_owned());
            return only;
        }
    }
    conversation.calls.push(VoiceLinkCall {
        call_sid: Some(call_sid.to_owned()),
        operation_id: None,
        command_id: None,
        inbound,
        requested_at: now,
        answered_at: None,
        disclosure: None,
        status: CallState::Unknown.as_str().to_owned(),
        outcome: None,
        locale: if locale.is_empty() {
            conversation.locale.clone()
        } else {
            locale.to_owned()
        },
    });
    trim_calls(conversation);
    conversation.calls.len() - 1
}

/// Keeps the newest [`MAX_CALLS`] calls.
fn trim_calls(conversation: &mut VoiceLinkState) {
    let excess = conversation.calls.len().saturating_sub(MAX_CALLS);
    conversation.calls.drain(..excess);
}

/// How a call ended, the first time its status says it did.
fn ended(status: CallState, call: &VoiceLinkCall) -> Option<&'static str> {
    if call.outcome.is_some() {
        return None;
    }
    Some(match status {
        CallState::Completed => match call.disclosure.as_deref() {
            Some("ACCEPTED") => "connected",
            Some("DECLINED" | "NO_INPUT") => "declined",
            _ if call.answered_at.is_some() => "ended",
            _ => "no_answer",
        },
        CallState::Busy => "busy",
        CallState::NoAnswer => "no_answer",
        CallState::Failed => "failed",
        CallState::Canceled => "canceled",
        _ => return None,
    })
}

/// The `MEDIA_STORED` entry: the durable copies of an earlier message's media
/// or of a recording, naming the source as the earlier entry does.
fn media_stored_entry(
    conversation: &mut VoiceLinkState,
    event: &ConversationEvent,
    stored: &MediaStored,
) -> TranscriptEntry {
    let mut entry = entry(
        conversation,
        format!("media-{}", stored.source_event_id),
        TranscriptEntryKind::MediaStored,
        event.occurred_at,
    );
    entry.stored_media.clone_from(&stored.items);
    entry.source_sid = Some(stored.source_sid.clone());
    if let Some(call_sid) = &stored.call_sid {
        entry.call_sid = Some(call_sid.clone());
        entry.channel = Some(Channel::Voice);
        entry.recording = Some(RecordingRef {
            recording_sid: stored.source_sid.clone(),
            url: stored.items.first().and_then(|i| i.twilio_url.clone()),
            duration_seconds: None,
        });
    } else {
        entry.message_sid = Some(stored.source_sid.clone());
        entry.channel = Some(event.channel);
        entry.modality = Modality::Text;
        entry.direction = Direction::Inbound;
    }
    entry
}

/// A new transcript entry of the conversation, with the next sequence number.
fn entry(
    conversation: &mut VoiceLinkState,
    entry_id: String,
    kind: TranscriptEntryKind,
    at: i64,
) -> TranscriptEntry {
    let sequence = conversation.next_sequence;
    conversation.next_sequence += 1;
    TranscriptEntry {
        entry_id,
        conversation_id: conversation.conversation_id.clone(),
        session_id: conversation.session_id.clone(),
        sequence,
        modality: Modality::System,
        direction: Direction::Unknown,
        speaker: TranscriptSpeaker::System,
        text: None,
        media: Vec::new(),
        recording: None,
        call_sid: None,
        message_sid: None,
        locale: Some(conversation.locale.clone()),
        at,
        entry_kind: Some(kind),
        channel: None,
        call_outcome: None,
        call_duration_seconds: None,
        source_sid: None,
        stored_media: Vec::new(),
        location: None,
    }
}

/// One part's outcome of an outbound message; the message's entry once
/// every part has one and Twilio accepted at least one.
fn outbound_part(
    conversation: &mut VoiceLinkState,
    status: &DeliveryStatus,
) -> Option<TranscriptEntry> {
    let message_id = status
        .response_id
        .clone()
        .unwrap_or_else(|| status.operation_id.clone());
    let part_count = status.part_count.unwrap_or(1).max(1);
    let index = status.part_index.unwrap_or(0);
    let position = match conversation
        .outbound
        .iter()
        .position(|p| p.message_id == message_id)
    {
        Some(p) => p,
        None => {
            if conversation.outbound.len() >= MAX_PENDING_OUTBOUND {
                conversation.outbound.remove(0);
            }
            conversation.outbound.push(PendingOutbound {
                message_id: message_id.clone(),
                part_count,
                parts: Vec::new(),
            });
            conversation.outbound.len() - 1
        }
    };
    let pending = &mut conversation.outbound[position];
    if pending.parts.iter().any(|p| p.index == index) {
        return None; // a repeated status
    }
    pending.parts.push(OutboundPartOutcome {
        index,
        accepted: status.outcome == DeliveryOutcome::Accepted,
        text: status.body.clone(),
        sid: status.twilio_sid.clone(),
        at: status.at,
    });
    if i32::try_from(pending.parts.len()).unwrap_or(i32::MAX) < pending.part_count {
        return None;
    }
    let mut done = conversation.outbound.remove(position);
    done.parts.sort_by_key(|p| p.index);
    let accepted: Vec<&OutboundPartOutcome> = done.parts.iter().filter(|p| p.accepted).collect();
    let first = accepted.first()?;
    let text: Vec<&str> = accepted.iter().filter_map(|p| p.text.as_deref()).collect();
    let channel = conversation.channel;
    let mut entry = entry(
        conversation,
        format!("out-{message_id}"),
        TranscriptEntryKind::Message,
        first.at,
    );
    entry.modality = Modality::Text;
    entry.direction = Direction::Outbound;
    entry.speaker = TranscriptSpeaker::Si;
    entry.text = (!text.is_empty()).then(|| join_parts(&text));
    entry.message_sid.clone_from(&first.sid);
    entry.source_sid.clone_from(&first.sid);
    entry.channel = Some(channel);
    Some(entry)
}

/// The parts of a message as one text: segment splits at whitespace and
/// drops it, so parts are joined with one space (or the newline a part
/// already ends with).
fn join_parts(parts: &[&str]) -> String {
    let mut text = String::new();
    for part in parts {
        if !text.is_empty() && !text.ends_with(char::is_whitespace) {
            text.push(' ');
        }
        text.push_str(part);
    }
    text
}

fn operation(
    operation_id: String,
    conversation_id: &str,
    kind: OperationKind,
    sender_key: String,
    now: i64,
) -> OutboundOperation {
    OutboundOperation {
        operation_id,
        conversation_id: conversation_id.to_owned(),
        kind,
        channel: Channel::Voice,
        sender_key,
        to: None,
        from: None,
        messaging_service_sid: None,
        body: None,
        media_urls: Vec::new(),
        content_sid: None,
        content_variables_json: None,
        response_id: None,
        part_index: 0,
        part_count: 1,
        segments: None,
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::from([(PURPOSE_PARAM.to_owned(), PURPOSE.to_owned())]),
        created_at: now,
        not_after: None,
        traceparent: None,
    }
}

use si_schemas::records::is_e164;

#[cfg(test)]
#[path = "processor_tests.rs"]
mod tests;
