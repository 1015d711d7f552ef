//! `START_CONVERSATION`: Si reaches out (see the crate docs for the rules).
//!
//! The command is keyed by the id the issuer chose for the new conversation,
//! so the conversation's state lives in the command's partition from the
//! start. The opening text waits in the state until lifecycle reads back its
//! own `PARTICIPANT_JOINED` event: segment reads the same event topic, and
//! learns the recipient from that event before the text reaches it.

use std::collections::BTreeMap;

use si_catalog::keys;
use si_consent_gate::Verdict;
use si_runtime::mask::mask_address;
use si_runtime::processor::{Output, ProcessError, RecordContext};
use si_runtime::state::StateStore;
use si_schemas::records::{
    Channel, CognitionResponse, Command, ComplianceEvent, ComplianceEventKind, ComplianceSource,
    ConsentStatus, ConversationEvent, ConversationEventType, ConversationState, DeliveryOutcome,
    DeliveryStatus, EventSource, LifecyclePhase, LifecycleState, LocaleSource, OperationKind,
    Participant, ParticipantBinding, ResponsePurpose, StateChange,
};
use si_schemas::topics;

use super::{ID_PREFIX, LifecycleProcessor, conversation_key, millis, operation};

/// `Command::params` key: the Si user to reach (resolved to an address of
/// the command's channel in `si.identity.v1`) when `address` is not set.
pub const USER_PARAM: &str = "user_id";
/// `Command::params` key: the opening text (default: the catalog's welcome).
pub const TEXT_PARAM: &str = "text";
/// `Command::params` key: our address to send from (default `LIFECYCLE_START_FROM`).
pub const FROM_PARAM: &str = "from";

/// Prefix of the events lifecycle writes for a conversation Si started.
pub const START_EVENT_PREFIX: &str = "lifecycle-start-";

/// How lifecycle opens a conversation Si starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StartMode {
    /// Programmable Messaging: just send (the Messages API).
    #[default]
    Messaging,
    /// Twilio Conversations: create the conversation (UniqueName = the
    /// command's conversation id), add the participant, send into it.
    Conversations,
}

/// The operation id / status id of the command `command_id`'s `step`.
#[must_use]
pub fn start_id(step: &str, command_id: &str) -> String {
    format!("{ID_PREFIX}{step}-{command_id}")
}

/// Why a start did not open a conversation, for the status record and the counter.
struct Refusal {
    outcome: &'static str,
    reason: String,
    compliance: Option<Output>,
}

/// A `START_CONVERSATION` checked and resolved: what opening or joining a
/// conversation needs.
struct Start<'a> {
    command: &'a Command,
    now: i64,
    /// The new conversation's id, chosen by the issuer.
    id: &'a str,
    session_id: String,
    channel: Channel,
    /// Our address the conversation is held on.
    from: String,
    /// The user's.
    address: String,
    locale: String,
    /// The opening text.
    text: String,
}

impl LifecycleProcessor {
    /// Opens the conversation the command names, or joins the user's active
    /// one on the same number, unless consent or the identity table refuses;
    /// a command for a conversation already open does nothing.
    pub(super) fn on_start(
        &self,
        ctx: &RecordContext<'_>,
        command: &Command,
        state: &mut StateStore<LifecycleState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let now = ctx.timestamp_ms;
        let (id, session_id, channel) = start_target(command)?;
        if state.get(&conversation_key(id)).is_some() {
            // A re-sent command, or an id already open: nothing new to do.
            self.metrics.starts.with_label_values(&["duplicate"]).inc();
            return Ok(Vec::new());
        }
        let from = self.sender(command)?;
        let (address, identity_locale) = match self.recipient(command, channel)? {
            Ok(found) => found,
            Err(refusal) => return Ok(self.refuse(now, command, id, refusal)),
        };
        let locale = command
            .locale
            .clone()
            .or(identity_locale)
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| si_catalog::DEFAULT_LOCALE.to_owned());
        let text = command
            .params
            .get(TEXT_PARAM)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.catalog.text(keys::WELCOME, &locale).text.to_owned());
        let start = Start {
            command,
            now,
            id,
            session_id,
            channel,
            from,
            address,
            locale,
            text,
        };
        if let Some(joined) = self.join(&start) {
            return Ok(joined);
        }
        if let Some(refusal) = self.consent_refusal(&start) {
            return Ok(self.refuse(now, command, id, refusal));
        }
        Ok(self.open(start, state))
    }

    /// Our address to send from: the command's, else `LIFECYCLE_START_FROM`.
    fn sender(&self, command: &Command) -> Result<String, ProcessError> {
        let from = command
            .params
            .get(FROM_PARAM)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| self.settings.start_from.clone())
            .ok_or_else(|| {
                ProcessError::Invalid(
                    "START_CONVERSATION: no address to send from (params[from] or \
                     LIFECYCLE_START_FROM)"
                        .into(),
                )
            })?;
        if !is_e164(&from) {
            return Err(ProcessError::Invalid(
                "START_CONVERSATION: the sending address is not E.164".into(),
            ));
        }
        Ok(from)
    }

    /// Joining: one active conversation per address and our number, so
    /// when the user has one, the opening text goes into it and the status
    /// names it.
    fn join(&self, start: &Start<'_>) -> Option<Vec<Output>> {
        let directory_key = format!(
            "{}|{}",
            start.channel.address_key(&start.address),
            start.from
        );
        let active = self.directory.get(&directory_key).filter(|b| b.active)?;
        self.metrics.starts.with_label_values(&["joined"]).inc();
        let opening = self.opening(
            &start_id("opening", &start.command.command_id),
            &active.conversation_id,
            &active.session_id,
            start.text.clone(),
            &start.locale,
            start.now,
        );
        let status = self.start_status(
            start.now,
            start.command,
            &active.conversation_id,
            DeliveryOutcome::Accepted,
            Some(format!(
                "joined the active conversation {} of the user",
                active.conversation_id
            )),
        );
        Some(vec![opening, status])
    }

    /// The consent gate's refusal, with its compliance event, when the user
    /// opted out (or never opted in and the policy asks for it).
    fn consent_refusal(&self, start: &Start<'_>) -> Option<Refusal> {
        let Start {
            command,
            channel,
            address,
            ..
        } = start;
        let scope = match self.settings.start_mode {
            StartMode::Messaging => self
                .settings
                .messaging_service_sid
                .clone()
                .unwrap_or_else(|| start.from.clone()),
            StartMode::Conversations => start.from.clone(),
        };
        let Verdict::Blocked { status, decision } =
            self.gate
                .check(*channel, address, &scope, self.settings.require_opt_in)
        else {
            return None;
        };
        let (outcome, reason) = if status == ConsentStatus::OptedOut {
            ("refused_opted_out", "the user opted out")
        } else {
            (
                "refused_not_opted_in",
                "the user never opted in (explicit consent policy)",
            )
        };
        let mut details = BTreeMap::from([
            ("stage".to_owned(), "lifecycle".to_owned()),
            ("command_id".to_owned(), command.command_id.clone()),
            ("issued_by".to_owned(), command.issued_by.clone()),
            ("consent_status".to_owned(), status.as_str().to_owned()),
            (
                "require_opt_in".to_owned(),
                self.settings.require_opt_in.to_string(),
            ),
        ]);
        if let Some(d) = &decision {
            details.insert("decision_scope".to_owned(), d.sender_scope.clone());
            details.insert("decided_at".to_owned(), d.decided_at.to_string());
        }
        let event = ComplianceEvent {
            event_id: start_id("blocked", &command.command_id),
            kind: ComplianceEventKind::BlockedOutbound,
            source: decision
                .as_ref()
                .map_or(ComplianceSource::Unknown, |d| d.source),
            address: address.clone(),
            channel: *channel,
            sender_scope: Some(scope),
            conversation_id: Some(start.id.to_owned()),
            message_ref: Some(command.command_id.clone()),
            keyword: None,
            locale: Some(start.locale.clone()),
            at: start.now,
            details,
        };
        tracing::info!(
            command_id = %command.command_id,
            to = %mask_address(&channel.address_key(address)),
            outcome,
            "START_CONVERSATION refused by the consent gate"
        );
        Some(Refusal {
            outcome,
            reason: reason.to_owned(),
            compliance: Some(Output::new(
                topics::COMPLIANCE,
                channel.address_key(address),
                event,
            )),
        })
    }

    /// A new conversation: (in Conversations mode, its creation at Twilio,)
    /// the directory entry, its `CONVERSATION_STARTED` and
    /// `PARTICIPANT_JOINED` events, the accepted status, and its state with
    /// the opening text waiting for that `PARTICIPANT_JOINED`.
    fn open(&self, start: Start<'_>, state: &mut StateStore<LifecycleState>) -> Vec<Output> {
        self.metrics.starts.with_label_values(&["started"]).inc();
        self.metrics.opened.with_label_values(&["si"]).inc();
        let messaging = self.settings.start_mode == StartMode::Messaging;
        let mut outputs = Vec::with_capacity(6);
        if !messaging {
            outputs.extend(self.conversation_setup(
                start.now,
                start.command,
                start.id,
                start.channel,
                &start.address,
                &start.from,
            ));
        }
        outputs.push(directory_entry(&start));
        outputs.extend(start_events(&start, messaging));
        outputs.push(self.start_status(
            start.now,
            start.command,
            start.id,
            DeliveryOutcome::Accepted,
            None,
        ));
        tracing::info!(
            conversation = %start.id,
            command_id = %start.command.command_id,
            mode = ?self.settings.start_mode,
            "conversation started by Si"
        );
        // No timer yet: reading back PARTICIPANT_JOINED arms the opening's.
        self.save(state, opened(start, messaging));
        outputs
    }

    /// Lifecycle read back its own participant event of a conversation Si
    /// started: segment reads the same topic, so after `opening_delay` (its
    /// processing lag, at most in practice) the opening can go.
    pub(super) fn on_started(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let key = conversation_key(&event.conversation_id);
        let waiting = state.get(&key).is_some_and(|c| c.opening_text.is_some());
        if waiting && state.timer(&key).is_none() {
            let delay = millis(self.settings.opening_delay);
            state.set_timer(&key, ctx.timestamp_ms.saturating_add(delay));
        }
        Vec::new()
    }

    /// Sends the opening of a started conversation; its idle period begins.
    pub(super) fn send_opening(
        &self,
        now: i64,
        mut conversation: LifecycleState,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let Some(text) = conversation.opening_text.take() else {
            return Vec::new();
        };
        let opening = self.opening(
            &format!(
                "{ID_PREFIX}opening-{}-{}",
                conversation.conversation_id, conversation.opened_at
            ),
            &conversation.conversation_id,
            &conversation.session_id,
            text,
            &conversation.locale.clone(),
            now,
        );
        self.activity(now, conversation, state);
        vec![opening]
    }

    /// Twilio created the conversation Si started in Conversations mode:
    /// the directory's alias entry maps its ConversationSid to the id Si
    /// started it under, so normalize files the user's replies (which Twilio
    /// reports by SID) under that id and its session.
    pub(super) fn on_created(
        &self,
        ctx: &RecordContext<'_>,
        delivery: &DeliveryStatus,
        state: &mut StateStore<LifecycleState>,
    ) -> Vec<Output> {
        let key = conversation_key(&delivery.conversation_id);
        let Some(mut conversation) = state.get(&key).cloned() else {
            return Vec::new();
        };
        let (Some(sid), Some(address)) = (
            delivery
                .twilio_sid
                .clone()
                .filter(|_| delivery.outcome == DeliveryOutcome::Accepted),
            conversation.address.clone(),
        ) else {
            return Vec::new();
        };
        if conversation.conversation_sid.as_deref() == Some(sid.as_str()) {
            return Vec::new(); // a repeated status
        }
        let alias = alias_binding(&conversation, &sid, address, true, ctx.timestamp_ms);
        conversation.conversation_sid = Some(sid.clone());
        self.save(state, conversation);
        vec![Output::new(
            topics::PARTICIPANTS,
            ParticipantBinding::alias_key(&sid),
            alias,
        )]
    }

    /// The user's address: the command's, or the user's on the channel in
    /// the identity table (with the user's locale).
    #[allow(clippy::type_complexity)]
    fn recipient(
        &self,
        command: &Command,
        channel: Channel,
    ) -> Result<Result<(String, Option<String>), Refusal>, ProcessError> {
        if let Some(address) = command
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if !is_e164(address) {
                return Err(ProcessError::Invalid(
                    "START_CONVERSATION: address is not E.164".into(),
                ));
            }
            return Ok(Ok((address.to_owned(), None)));
        }
        let Some(user) = command
            .params
            .get(USER_PARAM)
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        else {
            return Err(ProcessError::Invalid(
                "START_CONVERSATION needs address or params[user_id]".into(),
            ));
        };
        Ok(
            match self
                .identity
                .find_first(|r| r.user_id == user && r.channel == channel)
            {
                Some((_, record)) => Ok((record.address.clone(), record.locale.clone())),
                None => Err(Refusal {
                    outcome: "unknown_user",
                    reason: format!(
                        "no {} address for the user in si.identity.v1",
                        channel.key_prefix()
                    ),
                    compliance: None,
                }),
            },
        )
    }

    fn refuse(&self, now: i64, command: &Command, id: &str, refusal: Refusal) -> Vec<Output> {
        self.metrics
            .starts
            .with_label_values(&[refusal.outcome])
            .inc();
        let mut outputs: Vec<Output> = refusal.compliance.into_iter().collect();
        outputs.push(self.start_status(
            now,
            command,
            id,
            DeliveryOutcome::Blocked,
            Some(refusal.reason),
        ));
        outputs
    }

    /// The answer to the issuer on `twilio.delivery.v1`, keyed by the
    /// command's conversation id: `operation_id` `lifecycle-start-<command_id>`.
    fn start_status(
        &self,
        now: i64,
        command: &Command,
        conversation_id: &str,
        outcome: DeliveryOutcome,
        message: Option<String>,
    ) -> Output {
        let status = DeliveryStatus::command_answer(
            start_id("start", &command.command_id),
            conversation_id.to_owned(),
            outcome,
            message,
            now,
        );
        Output::new(topics::DELIVERY, command.conversation_id.clone(), status)
    }

    fn opening(
        &self,
        response_id: &str,
        conversation_id: &str,
        session_id: &str,
        text: String,
        locale: &str,
        now: i64,
    ) -> Output {
        let response = CognitionResponse {
            response_id: response_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            session_id: session_id.to_owned(),
            in_reply_to: None,
            text,
            media: Vec::new(),
            locale: Some(locale.to_owned()),
            hints: None,
            created_at: now,
            traceparent: None,
            purpose: ResponsePurpose::Reply,
        };
        Output::new(topics::RESPONSES, conversation_id.to_owned(), response)
    }

    /// Conversations mode: create the conversation (UniqueName = `id`) and
    /// add the participant, both with the sender key segment uses for the
    /// conversation's messages, so they reach Twilio before the opening text.
    fn conversation_setup(
        &self,
        now: i64,
        command: &Command,
        id: &str,
        channel: Channel,
        address: &str,
        from: &str,
    ) -> Vec<Output> {
        let sender_key = channel.address_key(from);
        let mut create = operation(
            start_id("create", &command.command_id),
            id,
            OperationKind::CreateConversation,
            channel,
            sender_key.clone(),
            now,
        );
        create.params.insert("UniqueName".to_owned(), id.to_owned());
        create
            .messaging_service_sid
            .clone_from(&self.settings.messaging_service_sid);
        let mut add = operation(
            start_id("add", &command.command_id),
            id,
            OperationKind::AddParticipant,
            channel,
            sender_key.clone(),
            now,
        );
        add.to = Some(address.to_owned());
        add.from = Some(from.to_owned());
        vec![
            Output::new(topics::OUTBOUND, sender_key.clone(), create),
            Output::new(topics::OUTBOUND, sender_key, add),
        ]
    }
}

use si_schemas::records::is_e164;

/// The directory entry of a conversation Si started on `start.from`.
fn directory_entry(start: &Start<'_>) -> Output {
    let binding = ParticipantBinding {
        address: start.address.clone(),
        channel: start.channel,
        proxy_address: Some(start.from.clone()),
        conversation_id: start.id.to_owned(),
        session_id: start.session_id.clone(),
        participant_sid: None,
        active: true,
        bound_at: start.now,
        updated_at: start.now,
        previous_conversation_id: None,
    };
    Output::new(topics::PARTICIPANTS, binding.key(), binding)
}

/// The started conversation's `CONVERSATION_STARTED` and
/// `PARTICIPANT_JOINED`, with ids derived from the command's.
fn start_events(start: &Start<'_>, messaging: bool) -> [Output; 2] {
    let command = start.command;
    let participant = Participant {
        address: Some(start.address.clone()),
        channel: start.channel,
        user_id: command.params.get(USER_PARAM).cloned(),
        visitor_id: None,
        registered: command.params.contains_key(USER_PARAM),
        participant_sid: None,
        identity: None,
        proxy_address: Some(start.from.clone()),
    };
    let event = |step: &str, event_type, state_change| {
        let id = format!("{START_EVENT_PREFIX}{step}-{}", command.command_id);
        let event = ConversationEvent {
            channel: start.channel,
            source: if messaging {
                EventSource::Messaging
            } else {
                EventSource::Conversations
            },
            participant: Some(participant.clone()),
            locale: start.locale.clone(),
            locale_source: if command.locale.is_some() {
                LocaleSource::Default
            } else {
                LocaleSource::Identity
            },
            state_change,
            ..ConversationEvent::adapter(id, start.id, &start.session_id, event_type, start.now)
        };
        Output::new(topics::CONVERSATION_EVENTS, start.id.to_owned(), event)
    };
    [
        event(
            "started",
            ConversationEventType::ConversationStarted,
            Some(StateChange {
                state_from: None,
                state_to: ConversationState::Active,
                reason: Some("START_CONVERSATION".into()),
            }),
        ),
        event("joined", ConversationEventType::ParticipantJoined, None),
    ]
}

/// The state of a conversation Si just started: open, its opening text
/// waiting to be sent.
fn opened(start: Start<'_>, messaging: bool) -> LifecycleState {
    LifecycleState {
        conversation_id: start.id.to_owned(),
        session_id: start.session_id,
        channel: start.channel,
        address: Some(start.address),
        proxy_address: Some(start.from),
        locale: start.locale,
        phase: LifecyclePhase::Open,
        opened_at: start.now,
        last_activity_at: start.now,
        close_reason: None,
        closing_started_at: None,
        summary_request_id: None,
        summary: None,
        closing_response_id: None,
        first_sequence: None,
        last_sequence: None,
        media: Vec::new(),
        programmable_messaging: messaging,
        opening_text: Some(start.text),
        conversation_sid: None,
        active_call_sid: None,
        compliance_event_ids: Vec::new(),
        call_scheduled_at: None,
    }
}

/// The command's conversation id, session and channel, each required.
fn start_target(command: &Command) -> Result<(&str, String, Channel), ProcessError> {
    let id = command.conversation_id.trim();
    if id.is_empty() {
        return Err(ProcessError::Invalid(
            "START_CONVERSATION without conversation_id (the id of the new conversation)".into(),
        ));
    }
    let session_id = command
        .session_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ProcessError::Invalid(
                "START_CONVERSATION without session_id (the Si session to bind)".into(),
            )
        })?
        .to_owned();
    let channel = command.channel.unwrap_or(Channel::Sms);
    if !matches!(channel, Channel::Sms | Channel::Whatsapp) {
        return Err(ProcessError::Invalid(format!(
            "START_CONVERSATION on {channel:?}: only SMS and WHATSAPP can be started"
        )));
    }
    Ok((id, session_id, channel))
}

/// The directory's alias entry of `sid` for `conversation`.
pub(super) fn alias_binding(
    conversation: &LifecycleState,
    sid: &str,
    address: String,
    active: bool,
    now: i64,
) -> ParticipantBinding {
    ParticipantBinding {
        address,
        channel: conversation.channel,
        proxy_address: conversation.proxy_address.clone(),
        conversation_id: conversation.conversation_id.clone(),
        session_id: conversation.session_id.clone(),
        participant_sid: Some(sid.to_owned()),
        active,
        bound_at: conversation.opened_at,
        updated_at: now,
        previous_conversation_id: None,
    }
}
