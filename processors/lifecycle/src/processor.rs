//! The lifecycle processor: a pure function over (input record or due timer,
//! partition state) on the exactly-once runner. The rules are in the crate
//! docs; the phases are [`LifecyclePhase`].

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use si_catalog::{Catalog, keys};
use si_consent_gate::{
    ConsentGate, EGRESS_RECHECK_REASON, egress_blocked_event_id, twilio_opt_out_event_id,
};
use si_runtime::processor::{
    InputRecord, Output, ProcessError, Processor, RecordContext, TimerContext,
};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::records::{
    ArchivalReason, ArchivalRequest, CallEvent, Channel, CognitionResponse, Command, CommandKind,
    ConversationEvent, ConversationEventType, ConversationState, DeliveryOutcome, DeliveryStatus,
    EventSource, IdentityRecord, InboundMessage, InboundPurpose, LifecyclePhase, LifecycleState,
    OperationKind, OutboundOperation, PM_CONVERSATION_PREFIX, ParticipantBinding, ResponsePurpose,
    StateChange, TranscriptEntry,
};
use si_schemas::{Codec, CodecError, topics};

/// Prefix of every id lifecycle makes (responses, summary requests,
/// operations): lifecycle recognises its own responses on `si.responses.v1` by it.
pub const ID_PREFIX: &str = "lifecycle-";

/// `Command::params` key of a summary the issuer of `CLOSE_CONVERSATION` already has.
pub const SUMMARY_PARAM: &str = "summary";

/// `Command::reason` that marks a close the user asked for (`USER_REQUEST`).
pub const USER_REQUEST_REASON: &str = "USER_REQUEST";

/// Most media references kept per conversation for the archival request.
pub const MAX_MEDIA: usize = 100;

/// Most compliance event ids kept per conversation for the archival request.
pub const MAX_COMPLIANCE_IDS: usize = 1000;

/// Twilio's error for a send to a user who opted out at the carrier.
const TWILIO_OPTED_OUT: i32 = 21610;

/// `params["si.purpose"]` of the operations lifecycle writes itself.
pub const PURPOSE_PARAM: &str = "si.purpose";
/// The value of [`PURPOSE_PARAM`].
pub const PURPOSE: &str = "lifecycle";

/// What the processor is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Quiet time after the last message before the warning.
    pub warn_after: Duration,
    /// Quiet time after the last message before the closure.
    pub close_after: Duration,
    /// How long to wait for the cognition layer's summary.
    pub summary_timeout: Duration,
    /// How long to wait for the closing message's delivery status before
    /// closing at Twilio and archiving anyway.
    pub closing_grace: Duration,
    /// TTL of a conversation's state after its last change.
    pub state_ttl: Duration,
    /// Messaging Service SID to name as sender of a Conversations close when
    /// our own address is not known.
    pub messaging_service_sid: Option<String>,
    /// `retention_class` of the archival requests (`None`: the archive's default).
    pub retention_class: Option<String>,
    /// How conversations Si starts are opened at Twilio.
    pub start_mode: StartMode,
    /// Our address conversations Si starts send from, unless the command names one.
    pub start_from: Option<String>,
    /// The explicit consent policy (`CONSENT_REQUIRE_OPT_IN`): Si starts a
    /// conversation only with users who opted in.
    pub require_opt_in: bool,
    /// How long after lifecycle reads back its own `PARTICIPANT_JOINED` the
    /// opening of a started conversation goes out: segment reads the event
    /// from another topic than the opening and must have handled it first.
    pub opening_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            warn_after: Duration::from_secs(25 * 60),
            close_after: Duration::from_secs(30 * 60),
            summary_timeout: Duration::from_secs(10),
            closing_grace: Duration::from_secs(30),
            state_ttl: Duration::from_secs(7 * 86_400),
            messaging_service_sid: None,
            retention_class: None,
            start_mode: StartMode::Messaging,
            start_from: None,
            require_opt_in: false,
            opening_delay: Duration::from_secs(1),
        }
    }
}

impl Settings {
    /// Cross-field checks, naming the variables.
    ///
    /// # Errors
    /// When the durations contradict each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.warn_after.is_zero() || self.close_after <= self.warn_after {
            return Err(format!(
                "LIFECYCLE_WARN_AFTER ({:?}) must be positive and below LIFECYCLE_CLOSE_AFTER ({:?})",
                self.warn_after, self.close_after
            ));
        }
        if self.summary_timeout.is_zero() || self.closing_grace.is_zero() {
            return Err(
                "LIFECYCLE_SUMMARY_TIMEOUT and LIFECYCLE_CLOSING_GRACE must be positive".into(),
            );
        }
        let longest = self.close_after + self.summary_timeout + self.closing_grace;
        if self.state_ttl <= longest {
            return Err(format!(
                "LIFECYCLE_STATE_TTL ({:?}) must exceed LIFECYCLE_CLOSE_AFTER + \
                 LIFECYCLE_SUMMARY_TIMEOUT + LIFECYCLE_CLOSING_GRACE ({longest:?}): a state \
                 entry takes its timers with it when it expires",
                self.state_ttl
            ));
        }
        Ok(())
    }
}

/// The lifecycle stage's inputs, decoded by topic.
#[derive(Debug, Clone)]
pub enum LifecycleInput {
    /// From `si.conversation.events.v1`: user messages, Twilio closing a conversation.
    Event(Box<ConversationEvent>),
    /// From `si.responses.v1`: Si's replies (activity) and summaries.
    Response(Box<CognitionResponse>),
    /// From `si.commands.v1`: `CLOSE_CONVERSATION`.
    Command(Box<Command>),
    /// From `twilio.delivery.v1`: the closing message went out.
    Delivery(Box<DeliveryStatus>),
    /// From `si.transcript.v1`: the conversation's sequence range.
    Transcript(Box<TranscriptEntry>),
}

impl InputRecord for LifecycleInput {
    async fn decode<'a>(
        topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> Result<Self, CodecError> {
        Ok(match topic {
            topics::RESPONSES => Self::Response(Box::new(codec.decode(bytes).await?)),
            topics::COMMANDS => Self::Command(Box::new(codec.decode(bytes).await?)),
            topics::DELIVERY => Self::Delivery(Box::new(codec.decode(bytes).await?)),
            topics::TRANSCRIPT => Self::Transcript(Box::new(codec.decode(bytes).await?)),
            _ => Self::Event(Box::new(codec.decode(bytes).await?)),
        })
    }
}

/// Counters of the lifecycle stage (labels never carry addresses, SIDs or
/// conversation ids). Open conversations are `si_state_entries{stage="lifecycle"}`
/// (one state entry per open conversation).
#[derive(Debug, Clone)]
pub struct LifecycleMetrics {
    /// Conversations opened, by `origin` (`inbound`; `reentry`: the user came
    /// back after a closure and got the welcome-back; `si`: Si started it).
    pub opened: IntCounterVec,
    /// Inactivity warnings sent (`kind` = `warning`), closures cancelled by a
    /// reply (`kind` = `closure_cancelled`).
    pub inactivity: IntCounterVec,
    /// Conversations closed and archived, by `reason` (`inactivity`,
    /// `user_request`, `command`, `twilio_closed`).
    pub closed: IntCounterVec,
    /// Summaries by `outcome`: `received`, `timed_out`, `provided` (with the command).
    pub summaries: IntCounterVec,
    /// Archival requests written.
    pub archival_requests: IntCounter,
    /// Commands by `kind` and `outcome` (`closing`, `unknown_conversation`,
    /// `already_closing`, `ignored`).
    pub commands: IntCounterVec,
    /// `START_CONVERSATION` commands by `outcome`: `started`, `joined` (the
    /// user's active conversation), `refused_opted_out`,
    /// `refused_not_opted_in`, `unknown_user`, `duplicate`.
    pub starts: IntCounterVec,
}

impl LifecycleMetrics {
    /// Registers the counters in `registry`.
    ///
    /// # Errors
    /// When a counter of the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        Ok(Self {
            opened: vec(
                "si_lifecycle_conversations_opened_total",
                "Conversations opened, by origin",
                &["origin"],
            )?,
            inactivity: vec(
                "si_lifecycle_inactivity_total",
                "Inactivity warnings sent and closures cancelled by a reply",
                &["kind"],
            )?,
            closed: vec(
                "si_lifecycle_conversations_closed_total",
                "Conversations closed, by reason",
                &["reason"],
            )?,
            summaries: vec(
                "si_lifecycle_summaries_total",
                "Closing summaries: received from cognition, timed out, provided with the command",
                &["outcome"],
            )?,
            archival_requests: {
                let metric = IntCounter::new(
                    "si_lifecycle_archival_requests_total",
                    "Archival requests written",
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            commands: vec(
                "si_lifecycle_commands_total",
                "Commands handled, by kind and outcome",
                &["kind", "outcome"],
            )?,
            starts: vec(
                "si_lifecycle_starts_total",
                "START_CONVERSATION commands, by outcome",
                &["outcome"],
            )?,
        })
    }

    /// Counters in a registry of their own (tests).
    ///
    /// # Panics
    /// Never: the registry is fresh.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry")
    }
}

/// The state key of a conversation.
#[must_use]
pub fn conversation_key(conversation_id: &str) -> String {
    format!("conv|{conversation_id}")
}

/// The longest a call lasts: Twilio's call time limit (4 hours). A call whose
/// end is not reported keeps its conversation open at most this long after
/// its last status.
pub const LONGEST_CALL: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// The response id of the warning of the idle period that began at
/// `idle_since` (the last message, or a call scheduled later).
#[must_use]
pub fn warning_id(conversation_id: &str, idle_since: i64) -> String {
    format!("{ID_PREFIX}warning-{conversation_id}-{idle_since}")
}

/// The message id of the summary request of the closure of the conversation
/// opened at `opened_at`.
#[must_use]
pub fn summary_request_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}summary-{conversation_id}-{opened_at}")
}

/// The response id of the closing message.
#[must_use]
pub fn closing_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}closing-{conversation_id}-{opened_at}")
}

/// The operation id of the Twilio close.
#[must_use]
pub fn close_operation_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}close-{conversation_id}-{opened_at}")
}

/// The id of the CLOSED event lifecycle writes for a Programmable Messaging
/// conversation (Twilio reports a Conversations one's closure itself).
#[must_use]
pub fn closed_event_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}closed-{conversation_id}-{opened_at}")
}

/// The id of the ACTIVE event lifecycle writes when it opens a Programmable
/// Messaging conversation for a user's message.
#[must_use]
pub fn opened_event_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}opened-{conversation_id}-{opened_at}")
}

/// The archival request id.
#[must_use]
pub fn archival_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}archival-{conversation_id}-{opened_at}")
}

/// Whether a closure for inactivity is waiting for its summary: the
/// closing message has not gone out, so the user (a message, a call) can
/// still call it off.
fn summarizing_for_inactivity(conversation: &LifecycleState) -> bool {
    conversation.phase == LifecyclePhase::Summarizing
        && conversation.close_reason == Some(ArchivalReason::Inactivity)
}

/// Where the conversation's idle period begins: its last message, or the
/// call scheduled for it when that is later.
fn idle_since(conversation: &LifecycleState) -> i64 {
    conversation
        .call_scheduled_at
        .map_or(conversation.last_activity_at, |due| {
            due.max(conversation.last_activity_at)
        })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn reason_label(reason: ArchivalReason) -> &'static str {
    match reason {
        ArchivalReason::Inactivity => "inactivity",
        ArchivalReason::UserRequest => "user_request",
        ArchivalReason::Command => "command",
        ArchivalReason::TwilioClosed => "twilio_closed",
        ArchivalReason::Unknown => "unknown",
    }
}

/// The response id of the welcome-back of a conversation opened at `opened_at`.
#[must_use]
pub fn welcome_back_id(conversation_id: &str, opened_at: i64) -> String {
    format!("{ID_PREFIX}welcome-back-{conversation_id}-{opened_at}")
}

/// The lifecycle stage's logic.
pub struct LifecycleProcessor {
    settings: Settings,
    catalog: &'static Catalog,
    metrics: LifecycleMetrics,
    directory: GlobalTable<ParticipantBinding>,
    gate: ConsentGate,
    identity: GlobalTable<IdentityRecord>,
}

impl std::fmt::Debug for LifecycleProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleProcessor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LifecycleProcessor {
    /// A processor with `settings` over the participant directory, counting into `metrics`.
    #[must_use]
    pub fn new(
        settings: Settings,
        directory: GlobalTable<ParticipantBinding>,
        metrics: LifecycleMetrics,
    ) -> Self {
        Self {
            settings,
            catalog: Catalog::builtin(),
            metrics,
            directory,
            gate: ConsentGate::from_tables(
                GlobalTable::from_entries(topics::CONSENT, []),
                GlobalTable::from_entries(topics::CONSENT_REGISTRY, []),
            ),
            identity: GlobalTable::from_entries(topics::IDENTITY, []),
        }
    }

    /// Checks consent for `START_CONVERSATION` with `gate` and resolves user
    /// ids in `identity` (without them: nobody has consented or is known).
    #[must_use]
    pub fn with_outreach(
        mut self,
        gate: ConsentGate,
        identity: GlobalTable<IdentityRecord>,
    ) -> Self {
        self.gate = gate;
        self.identity = identity;
        self
    }

    /// Whether the first message of `conversation` comes from a user whose
    /// previous conversation through the same number was closed: the
    /// directory entry of the pair is the closed one (inactive), or already
    /// the new one naming the closed one (normalize wrote it first).
    fn is_reentry(&self, conversation: &LifecycleState) -> bool {
        let Some(address) = conversation.address.as_deref() else {
            return false;
        };
        let key = format!(
            "{}|{}",
            conversation.channel.address_key(address),
            conversation.proxy_address.as_deref().unwrap_or("")
        );
        self.directory.get(&key).is_some_and(|b| {
            if b.conversation_id == conversation.conversation_id {
                b.previous_conversation_id.is_some()
            } else {
                !b.active
            }
        })
    }

    /// Stores the conversation for the state TTL, or until the TTL after
    /// the call scheduled for it (a call days ahead keeps it open).
    fn save(&self, state: &mut StateStore<LifecycleState>, conversation: LifecycleState) {
        let ahead = conversation.call_scheduled_at.map_or(0, |due| {
            u64::try_from(due.saturating_sub(state.now())).unwrap_or(0)
        });
        state.put_with_ttl(
            conversation_key(&conversation.conversation_id),
            conversation,
            self.settings.state_ttl + Duration::from_millis(ahead),
        );
    }

    /// Saves `conversation` with its timer at `at`.
    fn save_with_timer(
        &self,
        state: &mut StateStore<LifecycleState>,
        conversation: LifecycleState,
        at: i64,
    ) {
        let key = conversation_key(&conversation.conversation_id);
        self.save(state, conversation);
        state.set_timer(&key, at);
    }

    fn on_event(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        if event.conversation_id.is_empty() {
            return Err(ProcessError::Invalid(
                "conversation event without conversation_id".into(),
            ));
        }
        let key = conversation_key(&event.conversation_id);
        let existing = state.get(&key).cloned();
        match event.event_type {
            ConversationEventType::MessageReceived => {
                Ok(self.on_user_message(ctx, event, existing, state))
            }
            ConversationEventType::ParticipantJoined
                if event.event_id.starts_with(START_EVENT_PREFIX) =>
            {
                Ok(self.on_started(ctx, event, state))
            }
            ConversationEventType::ComplianceRecorded => {
                if let (Some(conversation), Some(record)) =
                    (existing, event.compliance_record.as_ref())
                {
                    self.remember_compliance(conversation, &record.event_id, state);
                }
                Ok(Vec::new())
            }
            ConversationEventType::CallStatusChanged => {
                if let (Some(conversation), Some(call)) = (existing, event.call.as_ref()) {
                    self.on_call(ctx.timestamp_ms, conversation, call, state);
                }
                Ok(Vec::new())
            }
            ConversationEventType::ConversationStateChanged
            | ConversationEventType::ConversationStarted => {
                let closed = event
                    .state_change
                    .as_ref()
                    .is_some_and(|s| s.state_to == ConversationState::Closed);
                match existing {
                    // Closed at Twilio (its timer, the console, the API): nothing
                    // can be sent any more; archive and forget. lifecycle's own
                    // CLOSED event of a Programmable Messaging conversation
                    // comes back after its state is gone, unless the user
                    // wrote in it again meanwhile (normalize had not yet read
                    // the directory's closed entry): that opened it again.
                    Some(mut conversation) if closed && !event.event_id.starts_with(ID_PREFIX) => {
                        conversation.close_reason = Some(ArchivalReason::TwilioClosed);
                        Ok(self.finish(ctx.timestamp_ms, conversation, false, state))
                    }
                    _ => Ok(Vec::new()),
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    fn on_user_message(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        existing: Option<LifecycleState>,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let now = ctx.timestamp_ms;
        let participant = event.participant.as_ref();
        let media = event
            .message
            .as_ref()
            .map(|m| m.media.clone())
            .unwrap_or_default();
        let opened = existing.is_none();
        let mut conversation = existing.unwrap_or_else(|| LifecycleState {
            conversation_id: event.conversation_id.clone(),
            session_id: event.session_id.clone(),
            channel: event.channel,
            address: None,
            proxy_address: None,
            locale: event.locale.clone(),
            phase: LifecyclePhase::Open,
            opened_at: now,
            last_activity_at: now,
            close_reason: None,
            closing_started_at: None,
            summary_request_id: None,
            summary: None,
            closing_response_id: None,
            first_sequence: None,
            last_sequence: None,
            media: Vec::new(),
            programmable_messaging: event.is_programmable_messaging(),
            opening_text: None,
            conversation_sid: None,
            active_call_sid: None,
            compliance_event_ids: Vec::new(),
            call_scheduled_at: None,
        });
        if let Some(p) = participant {
            if p.address.is_some() {
                conversation.address.clone_from(&p.address);
                conversation.channel = p.channel;
            }
            if p.proxy_address.is_some() {
                conversation.proxy_address.clone_from(&p.proxy_address);
            }
        }
        if !event.locale.is_empty() {
            conversation.locale.clone_from(&event.locale);
        }
        for item in media {
            if conversation.media.len() < MAX_MEDIA {
                conversation.media.push(item);
            }
        }
        let mut outputs = Vec::new();
        if opened && conversation.programmable_messaging {
            outputs.push(Self::state_event(
                opened_event_id(&conversation.conversation_id, now),
                now,
                &conversation,
                ConversationState::Active,
                "MESSAGE_RECEIVED",
            ));
        }
        if opened {
            let reentry = self.is_reentry(&conversation);
            let origin = if reentry { "reentry" } else { "inbound" };
            self.metrics.opened.with_label_values(&[origin]).inc();
            if reentry {
                outputs.push(self.welcome_back(now, &conversation));
            }
        }
        match conversation.phase {
            LifecyclePhase::Summarizing if summarizing_for_inactivity(&conversation) => {
                // The user came back before the closing message went out.
                self.cancel_inactivity_closure(&mut conversation);
                self.activity(now, conversation, state);
            }
            LifecyclePhase::Summarizing | LifecyclePhase::Closing => {
                // Closing on request, or the closing message is out: the
                // message still belongs to this conversation's record.
                self.save(state, conversation);
            }
            LifecyclePhase::Open | LifecyclePhase::Warned | LifecyclePhase::Unknown => {
                if conversation.phase == LifecyclePhase::Warned {
                    self.metrics
                        .inactivity
                        .with_label_values(&["closure_cancelled"])
                        .inc();
                }
                self.activity(now, conversation, state);
            }
        }
        outputs
    }

    /// The short welcome-back of a user who comes back after a closure.
    fn welcome_back(&self, now: i64, conversation: &LifecycleState) -> Output {
        let text = self.catalog.text(keys::WELCOME_BACK, &conversation.locale);
        let response = CognitionResponse {
            response_id: welcome_back_id(&conversation.conversation_id, conversation.opened_at),
            conversation_id: conversation.conversation_id.clone(),
            session_id: conversation.session_id.clone(),
            in_reply_to: None,
            text: text.text.to_owned(),
            media: Vec::new(),
            locale: Some(text.locale.to_owned()),
            hints: None,
            created_at: now,
            traceparent: None,
            purpose: ResponsePurpose::Reply,
        };
        Output::new(
            topics::RESPONSES,
            conversation.conversation_id.clone(),
            response,
        )
    }

    /// A message in either direction at `at`: a new idle period.
    fn activity(
        &self,
        at: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) {
        conversation.phase = LifecyclePhase::Open;
        conversation.last_activity_at = conversation.last_activity_at.max(at);
        self.rearm(conversation, state);
    }

    /// voice-link scheduled a call for later (its answer to the
    /// `ESCALATE_TO_VOICE`, or a new time for it): the idle period runs from
    /// the call's time, so the user is neither warned nor closed on before
    /// the call they asked for, and a closure for inactivity not yet
    /// announced is called off.
    fn on_call_scheduled(
        &self,
        due: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) {
        conversation.call_scheduled_at = Some(due);
        if summarizing_for_inactivity(&conversation) {
            self.cancel_inactivity_closure(&mut conversation);
        }
        if conversation.phase == LifecyclePhase::Warned {
            conversation.phase = LifecyclePhase::Open;
        }
        self.rearm(conversation, state);
    }

    /// voice-link says the call scheduled for `due` will not take place
    /// (cancelled, or refused at its time): it kept the conversation busy
    /// until `now`, and the idle period runs from then.
    fn on_call_off(
        &self,
        now: i64,
        due: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) {
        if conversation.call_scheduled_at != Some(due) {
            return; // another time has been set since
        }
        conversation.call_scheduled_at = Some(due.min(now));
        self.rearm(conversation, state);
    }

    /// Saves an open conversation with the timer its idle period gives it:
    /// the warning while OPEN, the closure once WARNED (a conversation whose
    /// opening is still to go out keeps that timer).
    fn rearm(&self, conversation: LifecycleState, state: &mut StateStore<LifecycleState>) {
        let after = match conversation.phase {
            LifecyclePhase::Open => self.settings.warn_after,
            LifecyclePhase::Warned => self.settings.close_after,
            _ => return self.save(state, conversation),
        };
        if conversation.opening_text.is_some() {
            return self.save(state, conversation);
        }
        let at = idle_since(&conversation).saturating_add(millis(after));
        self.save_with_timer(state, conversation, at);
    }

    /// The user (or a call) is back before the closing message went out.
    fn cancel_inactivity_closure(&self, conversation: &mut LifecycleState) {
        self.metrics
            .inactivity
            .with_label_values(&["closure_cancelled"])
            .inc();
        conversation.phase = LifecyclePhase::Open;
        conversation.close_reason = None;
        conversation.closing_started_at = None;
        conversation.summary_request_id = None;
        conversation.summary = None;
    }

    fn on_response(
        &self,
        ctx: &RecordContext<'_>,
        response: &CognitionResponse,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        if response.response_id.starts_with(ID_PREFIX) {
            return Vec::new(); // our own warning or closing message
        }
        let key = conversation_key(&response.conversation_id);
        let Some(conversation) = state.get(&key).cloned() else {
            return Vec::new();
        };
        match response.purpose {
            ResponsePurpose::Summary => {
                let answers = conversation.phase == LifecyclePhase::Summarizing
                    && response.in_reply_to.is_some()
                    && response.in_reply_to == conversation.summary_request_id;
                if !answers {
                    return Vec::new(); // late, or for another closure
                }
                self.metrics
                    .summaries
                    .with_label_values(&["received"])
                    .inc();
                let mut conversation = conversation;
                conversation.summary =
                    Some(response.text.trim().to_owned()).filter(|s| !s.is_empty());
                self.send_closing(ctx.timestamp_ms, conversation, state)
            }
            ResponsePurpose::Reply => {
                if matches!(
                    conversation.phase,
                    LifecyclePhase::Open | LifecyclePhase::Warned
                ) {
                    self.activity(ctx.timestamp_ms, conversation, state);
                }
                Vec::new()
            }
            ResponsePurpose::Unknown => Vec::new(),
        }
    }

    fn on_command(
        &self,
        ctx: &RecordContext<'_>,
        command: &Command,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let count = |kind: &str, outcome: &str| {
            self.metrics
                .commands
                .with_label_values(&[kind, outcome])
                .inc();
        };
        match command.kind {
            CommandKind::CloseConversation => {}
            CommandKind::EscalateToVoice | CommandKind::EndCall => {
                // voice-link's: lifecycle reads what became of a call from
                // voice-link's statuses on twilio.delivery.v1.
                return Ok(Vec::new());
            }
            CommandKind::StartConversation => return self.on_start(ctx, command, state),
            CommandKind::Unknown => {
                return Err(ProcessError::Invalid(
                    "a command kind newer than this build".into(),
                ));
            }
        }
        if command.conversation_id.is_empty() {
            return Err(ProcessError::Invalid(
                "CLOSE_CONVERSATION without conversation_id".into(),
            ));
        }
        let key = conversation_key(&command.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            // Already closed (a re-sent command), or never seen by lifecycle.
            count("close_conversation", "unknown_conversation");
            return Ok(Vec::new());
        };
        if !matches!(
            conversation.phase,
            LifecyclePhase::Open | LifecyclePhase::Warned
        ) {
            if conversation.phase == LifecyclePhase::Summarizing {
                // An explicit close: a reply no longer cancels it.
                conversation.close_reason = Some(close_reason(command));
                self.save(state, conversation);
            }
            count("close_conversation", "already_closing");
            return Ok(Vec::new());
        }
        count("close_conversation", "closing");
        conversation.close_reason = Some(close_reason(command));
        conversation.closing_started_at = Some(ctx.timestamp_ms);
        let summary = command
            .params
            .get(SUMMARY_PARAM)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(summary) = summary {
            self.metrics
                .summaries
                .with_label_values(&["provided"])
                .inc();
            conversation.summary = Some(summary);
            return Ok(self.send_closing(ctx.timestamp_ms, conversation, state));
        }
        Ok(self.request_summary(ctx.timestamp_ms, conversation, state))
    }

    fn on_delivery(
        &self,
        ctx: &RecordContext<'_>,
        delivery: &DeliveryStatus,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        if delivery.operation_id.starts_with(CREATE_OPERATION_PREFIX) {
            return self.on_created(ctx, delivery, state);
        }
        if let Some(due) = delivery.scheduled_at {
            // voice-link's word on a call scheduled for later.
            if let Some(conversation) = state
                .get(&conversation_key(&delivery.conversation_id))
                .cloned()
            {
                if delivery.outcome == DeliveryOutcome::Accepted {
                    self.on_call_scheduled(due, conversation, state);
                } else {
                    self.on_call_off(ctx.timestamp_ms, due, conversation, state);
                }
            }
            // A scheduled call refused for consent names its BLOCKED_OUTBOUND.
            if let Some(id) = &delivery.compliance_event_id
                && let Some(conversation) = state
                    .get(&conversation_key(&delivery.conversation_id))
                    .cloned()
            {
                self.remember_compliance(conversation, id, state);
            }
            return Vec::new();
        }
        // A compliance event was recorded with this outcome (egress's
        // carrier opt-out, 21610, or its consent re-check's block): the
        // status names it. Statuses written before `compliance_event_id`
        // existed are recognised by their code or reason.
        let recorded = delivery
            .compliance_event_id
            .clone()
            .or_else(|| match delivery.outcome {
                DeliveryOutcome::Failed if delivery.error_code == Some(TWILIO_OPTED_OUT) => {
                    Some(twilio_opt_out_event_id(&delivery.operation_id))
                }
                DeliveryOutcome::Blocked
                    if delivery
                        .error_message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(EGRESS_RECHECK_REASON)) =>
                {
                    Some(egress_blocked_event_id(&delivery.operation_id))
                }
                _ => None,
            });
        if let Some(id) = recorded
            && let Some(conversation) = state
                .get(&conversation_key(&delivery.conversation_id))
                .cloned()
        {
            self.remember_compliance(conversation, &id, state);
        }
        let Some(response_id) = delivery.response_id.as_deref() else {
            return Vec::new();
        };
        let key = conversation_key(&delivery.conversation_id);
        let Some(conversation) = state.get(&key).cloned() else {
            return Vec::new();
        };
        // Egress reports each part of the closing message once; the first
        // report means segment has queued every part ahead of anything we
        // write now for the same sender.
        if conversation.phase == LifecyclePhase::Closing
            && conversation.closing_response_id.as_deref() == Some(response_id)
        {
            return self.finish(ctx.timestamp_ms, conversation, true, state);
        }
        Vec::new()
    }

    /// A call of the conversation changed status: remember the one still
    /// active (closure hangs it up); a live call is activity, and so is its
    /// end (the idle period starts when the call ends, not when it began).
    /// Like a message of the user, a call that goes live before the closing
    /// message of an inactivity closure went out calls the closure off: the
    /// user escalated while cognition was summarizing, and is not hung up
    /// on for being idle.
    fn on_call(
        &self,
        now: i64,
        mut conversation: LifecycleState,
        call: &CallEvent,
        state: &mut StateStore<LifecycleState>,
    ) {
        let live = call.status.is_live();
        let ended =
            !live && conversation.active_call_sid.as_deref() == Some(call.call_sid.as_str());
        if live {
            conversation.active_call_sid = Some(call.call_sid.clone());
        } else if ended {
            conversation.active_call_sid = None;
        }
        if live && summarizing_for_inactivity(&conversation) {
            self.cancel_inactivity_closure(&mut conversation);
        }
        if (live || ended)
            && matches!(
                conversation.phase,
                LifecyclePhase::Open | LifecyclePhase::Warned
            )
        {
            self.activity(now, conversation, state);
        } else {
            self.save(state, conversation);
        }
    }

    /// Names a compliance event recorded about the conversation in its
    /// archival request (once; at most [`MAX_COMPLIANCE_IDS`]).
    fn remember_compliance(
        &self,
        mut conversation: LifecycleState,
        event_id: &str,
        state: &mut StateStore<LifecycleState>,
    ) {
        if conversation.compliance_event_ids.len() >= MAX_COMPLIANCE_IDS
            || conversation
                .compliance_event_ids
                .iter()
                .any(|e| e == event_id)
        {
            return;
        }
        conversation.compliance_event_ids.push(event_id.to_owned());
        // Keeps the entry's timer (put keeps it).
        self.save(state, conversation);
    }

    fn on_transcript(&self, entry: &TranscriptEntry, state: &mut StateStore<LifecycleState>) {
        let key = conversation_key(&entry.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            return;
        };
        let first = conversation
            .first_sequence
            .map_or(entry.sequence, |s| s.min(entry.sequence));
        let last = conversation
            .last_sequence
            .map_or(entry.sequence, |s| s.max(entry.sequence));
        conversation.first_sequence = Some(first);
        conversation.last_sequence = Some(last);
        // Keeps the entry's timer (put keeps it).
        self.save(state, conversation);
    }

    /// Asks cognition for a summary and waits at most the summary timeout.
    fn request_summary(
        &self,
        now: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let id = summary_request_id(&conversation.conversation_id, conversation.opened_at);
        let request = InboundMessage {
            message_id: id.clone(),
            conversation_id: conversation.conversation_id.clone(),
            session_id: conversation.session_id.clone(),
            user_id: None,
            visitor_id: None,
            registered: false,
            channel: conversation.channel,
            locale: conversation.locale.clone(),
            text: String::new(),
            media: Vec::new(),
            received_at: now,
            event_id: id.clone(),
            first_contact: false,
            possible_revocation: false,
            traceparent: None,
            purpose: InboundPurpose::SummaryRequest,
            stored_media: Vec::new(),
            location: None,
            profile_name: None,
            button_payload: None,
        };
        let key = conversation.conversation_id.clone();
        conversation.phase = LifecyclePhase::Summarizing;
        conversation.summary_request_id = Some(id);
        let deadline = now.saturating_add(millis(self.settings.summary_timeout));
        self.save_with_timer(state, conversation, deadline);
        vec![Output::new(topics::INBOUND, key, request)]
    }

    /// Sends the closing message (summary, if any, and the re-entry text)
    /// through segment, like any reply, and waits for its delivery status.
    fn send_closing(
        &self,
        now: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let closing = self.catalog.text(keys::CLOSING, &conversation.locale);
        let text = match conversation.summary.as_deref() {
            Some(summary) => format!("{summary}\n\n{}", closing.text),
            None => closing.text.to_owned(),
        };
        let id = closing_id(&conversation.conversation_id, conversation.opened_at);
        let response = CognitionResponse {
            response_id: id.clone(),
            conversation_id: conversation.conversation_id.clone(),
            session_id: conversation.session_id.clone(),
            in_reply_to: None,
            text,
            media: Vec::new(),
            locale: Some(closing.locale.to_owned()),
            hints: None,
            created_at: now,
            traceparent: None,
            purpose: ResponsePurpose::Reply,
        };
        let key = conversation.conversation_id.clone();
        conversation.phase = LifecyclePhase::Closing;
        conversation.closing_response_id = Some(id);
        conversation.summary_request_id = None;
        let deadline = now.saturating_add(millis(self.settings.closing_grace));
        self.save_with_timer(state, conversation, deadline);
        vec![Output::new(topics::RESPONSES, key, response)]
    }

    /// Releases the conversation: the Twilio close (Conversations, unless
    /// Twilio closed it), the directory entry deactivated, the archival
    /// request, and the state dropped.
    fn finish(
        &self,
        now: i64,
        conversation: LifecycleState,
        close_at_twilio: bool,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let reason = conversation.close_reason.unwrap_or(ArchivalReason::Unknown);
        let mut outputs = Vec::new();
        let messaging = conversation.programmable_messaging
            || conversation
                .conversation_id
                .starts_with(PM_CONVERSATION_PREFIX);
        if let Some(call_sid) = conversation.active_call_sid.as_deref() {
            match self.end_call_operation(now, &conversation, call_sid) {
                Some(op) => outputs.push(Output::new(topics::OUTBOUND, op.sender_key.clone(), op)),
                None => tracing::warn!(
                    conversation = %conversation.conversation_id,
                    "no number of ours known to end the conversation's call"
                ),
            }
        }
        if close_at_twilio && !messaging {
            match self.close_operation(now, &conversation) {
                Some(op) => outputs.push(Output::new(topics::OUTBOUND, op.sender_key.clone(), op)),
                None => tracing::warn!(
                    conversation = %conversation.conversation_id,
                    "no sender known to close the conversation at Twilio (set MESSAGING_SERVICE_SID)"
                ),
            }
        }
        if let Some(address) = conversation.address.clone() {
            let binding = ParticipantBinding {
                address: address.clone(),
                channel: conversation.channel,
                proxy_address: conversation.proxy_address.clone(),
                conversation_id: conversation.conversation_id.clone(),
                session_id: conversation.session_id.clone(),
                participant_sid: None,
                active: false,
                bound_at: conversation.opened_at,
                updated_at: now,
                previous_conversation_id: None,
            };
            outputs.push(Output::new(topics::PARTICIPANTS, binding.key(), binding));
            if let Some(sid) = conversation.conversation_sid.as_deref() {
                let alias = start::alias_binding(&conversation, sid, address, false, now);
                outputs.push(Output::new(
                    topics::PARTICIPANTS,
                    ParticipantBinding::alias_key(sid),
                    alias,
                ));
            }
        }
        if messaging {
            outputs.push(Self::state_event(
                closed_event_id(&conversation.conversation_id, conversation.opened_at),
                now,
                &conversation,
                ConversationState::Closed,
                reason.as_str(),
            ));
        }
        let request = ArchivalRequest {
            request_id: archival_id(&conversation.conversation_id, conversation.opened_at),
            conversation_id: conversation.conversation_id.clone(),
            session_id: conversation.session_id.clone(),
            closed_at: now,
            reason,
            summary: conversation.summary.clone(),
            transcript_topic: topics::TRANSCRIPT.to_owned(),
            first_sequence: conversation.first_sequence,
            last_sequence: conversation.last_sequence,
            retention_class: self.settings.retention_class.clone(),
            requested_at: now,
            opened_at: Some(conversation.opened_at),
            media: conversation.media.clone(),
            compliance_event_ids: conversation.compliance_event_ids.clone(),
        };
        outputs.push(Output::new(
            topics::ARCHIVAL,
            conversation.conversation_id.clone(),
            request,
        ));
        state.delete(&conversation_key(&conversation.conversation_id));
        self.metrics
            .closed
            .with_label_values(&[reason_label(reason)])
            .inc();
        self.metrics.archival_requests.inc();
        tracing::info!(
            conversation = %conversation.conversation_id,
            reason = reason_label(reason),
            "conversation closed and archived"
        );
        outputs
    }

    /// A state of a Programmable Messaging conversation, which has none at
    /// Twilio to report it: ACTIVE when lifecycle opens it for a user's
    /// message, CLOSED when it closes it. Session orchestration and voice-link
    /// learn of both on the conversation's own partition, in the order
    /// lifecycle decided them (voice-link cancels a call scheduled for later
    /// at the closure, and refuses one asked for until the conversation is
    /// open again).
    fn state_event(
        id: String,
        now: i64,
        c: &LifecycleState,
        state_to: ConversationState,
        reason: &str,
    ) -> Output {
        let event = ConversationEvent {
            channel: c.channel,
            source: EventSource::Messaging,
            locale: c.locale.clone(),
            state_change: Some(StateChange {
                state_from: None,
                state_to,
                reason: Some(reason.to_owned()),
            }),
            ..ConversationEvent::adapter(
                id,
                &c.conversation_id,
                &c.session_id,
                ConversationEventType::ConversationStateChanged,
                now,
            )
        };
        Output::new(
            topics::CONVERSATION_EVENTS,
            c.conversation_id.clone(),
            event,
        )
    }

    /// The `CLOSE_CONVERSATION` operation, sent with the sender key segment
    /// uses for the conversation's messages (so it queues behind them).
    fn close_operation(&self, now: i64, c: &LifecycleState) -> Option<OutboundOperation> {
        let sender_key = match (c.channel, c.proxy_address.as_deref()) {
            (Channel::Chat, _) => format!("{}:{}", Channel::Chat.key_prefix(), c.conversation_id),
            (_, Some(proxy)) => c.channel.address_key(proxy),
            (_, None) => self.settings.messaging_service_sid.clone()?,
        };
        Some(operation(
            close_operation_id(&c.conversation_id, c.opened_at),
            &c.conversation_id,
            OperationKind::CloseConversation,
            c.channel,
            sender_key,
            now,
        ))
    }

    /// `END_CALL` for the conversation's live call, from our number.
    fn end_call_operation(
        &self,
        now: i64,
        c: &LifecycleState,
        call_sid: &str,
    ) -> Option<OutboundOperation> {
        let ours = c.proxy_address.as_deref()?;
        let mut op = operation(
            format!("{ID_PREFIX}end-call-{}-{}", c.conversation_id, c.opened_at),
            &c.conversation_id,
            OperationKind::EndCall,
            Channel::Voice,
            Channel::Voice.address_key(ours),
            now,
        );
        op.params
            .insert(CALL_SID_PARAM.to_owned(), call_sid.to_owned());
        Some(op)
    }

    fn warning_text(&self, locale: &str) -> (String, String) {
        let text = self.catalog.text(keys::INACTIVITY_WARNING, locale);
        let left = self.settings.close_after - self.settings.warn_after;
        let minutes = left.as_secs().div_ceil(60).max(1);
        (
            text.text.replace("{minutes}", &minutes.to_string()),
            text.locale.to_owned(),
        )
    }
}

/// `params` name of the call an `END_CALL` hangs up (egress reads it).
pub const CALL_SID_PARAM: &str = "si.call_sid";

/// An operation of lifecycle's own (`params["si.purpose"]` = `lifecycle`).
pub(crate) fn operation(
    operation_id: String,
    conversation_id: &str,
    kind: OperationKind,
    channel: Channel,
    sender_key: String,
    now: i64,
) -> OutboundOperation {
    OutboundOperation {
        operation_id,
        conversation_id: conversation_id.to_owned(),
        kind,
        channel,
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

fn close_reason(command: &Command) -> ArchivalReason {
    if command
        .reason
        .as_deref()
        .is_some_and(|r| r.trim().eq_ignore_ascii_case(USER_REQUEST_REASON))
    {
        ArchivalReason::UserRequest
    } else {
        ArchivalReason::Command
    }
}

impl Processor for LifecycleProcessor {
    type Input = LifecycleInput;
    type State = LifecycleState;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: LifecycleInput,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        match input {
            LifecycleInput::Event(event) => self.on_event(ctx, &event, state),
            LifecycleInput::Response(response) => Ok(self.on_response(ctx, &response, state)),
            LifecycleInput::Command(command) => self.on_command(ctx, &command, state),
            LifecycleInput::Delivery(delivery) => Ok(self.on_delivery(ctx, &delivery, state)),
            LifecycleInput::Transcript(entry) => {
                self.on_transcript(&entry, state);
                Ok(Vec::new())
            }
        }
    }

    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let Some(mut conversation) = state.get(ctx.key).cloned() else {
            return Ok(Vec::new());
        };
        let now = ctx.now_ms;
        if conversation.opening_text.is_some() {
            // A started conversation: the opening's delay is over.
            return Ok(self.send_opening(now, conversation, state));
        }
        if matches!(
            conversation.phase,
            LifecyclePhase::Open | LifecyclePhase::Warned
        ) && conversation.active_call_sid.is_some()
            && now
                < conversation
                    .last_activity_at
                    .saturating_add(millis(LONGEST_CALL))
        {
            // The user is on a call with Si: no "still there?" and no
            // closure while it lasts. Its end is activity (`on_call`); a
            // call whose end never arrives stops counting after the longest
            // call Twilio places.
            let again = now.saturating_add(millis(self.settings.warn_after));
            self.save_with_timer(state, conversation, again);
            return Ok(Vec::new());
        }
        match conversation.phase {
            LifecyclePhase::Open => {
                let idle_since = idle_since(&conversation);
                let warn_at = idle_since.saturating_add(millis(self.settings.warn_after));
                if now < warn_at {
                    state.set_timer(ctx.key, warn_at);
                    return Ok(Vec::new());
                }
                let (text, locale) = self.warning_text(&conversation.locale);
                let warning = CognitionResponse {
                    response_id: warning_id(&conversation.conversation_id, idle_since),
                    conversation_id: conversation.conversation_id.clone(),
                    session_id: conversation.session_id.clone(),
                    in_reply_to: None,
                    text,
                    media: Vec::new(),
                    locale: Some(locale),
                    hints: None,
                    created_at: now,
                    traceparent: None,
                    purpose: ResponsePurpose::Reply,
                };
                self.metrics
                    .inactivity
                    .with_label_values(&["warning"])
                    .inc();
                let key = conversation.conversation_id.clone();
                let close_at = idle_since.saturating_add(millis(self.settings.close_after));
                conversation.phase = LifecyclePhase::Warned;
                self.save_with_timer(state, conversation, close_at);
                Ok(vec![Output::new(topics::RESPONSES, key, warning)])
            }
            LifecyclePhase::Warned => {
                let close_at =
                    idle_since(&conversation).saturating_add(millis(self.settings.close_after));
                if now < close_at {
                    state.set_timer(ctx.key, close_at);
                    return Ok(Vec::new());
                }
                conversation.close_reason = Some(ArchivalReason::Inactivity);
                conversation.closing_started_at = Some(now);
                Ok(self.request_summary(now, conversation, state))
            }
            LifecyclePhase::Summarizing => {
                self.metrics
                    .summaries
                    .with_label_values(&["timed_out"])
                    .inc();
                Ok(self.send_closing(now, conversation, state))
            }
            LifecyclePhase::Closing => Ok(self.finish(now, conversation, true, state)),
            LifecyclePhase::Unknown => Err(ProcessError::Failed(
                "a lifecycle phase newer than this build".into(),
            )),
        }
    }
}

#[path = "start.rs"]
mod start;
pub use start::{FROM_PARAM, START_EVENT_PREFIX, StartMode, TEXT_PARAM, USER_PARAM, start_id};

/// Operation ids of the `CREATE_CONVERSATION` of a start begin with this.
const CREATE_OPERATION_PREFIX: &str = "lifecycle-create-";

#[cfg(test)]
#[path = "processor_tests.rs"]
mod tests;
