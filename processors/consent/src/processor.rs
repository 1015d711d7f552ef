//! The consent processor: a pure function over (input record, partition state,
//! consent tables) on the exactly-once runner. See the crate docs for the rules.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use si_catalog::{Catalog, keys};
use si_consent_gate::{
    ANY_SCOPE, ConsentGate, consent_key, has_consent, newest, verdict, with_recorded,
};
use si_runtime::mask::mask_address;
use si_runtime::processor::{InputRecord, Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentProcessorState,
    ConsentProcessorStateKind, ConsentState, ConsentStatus, ConversationContact, ConversationEvent,
    ConversationEventType, DeliveryOutcome, DeliveryStatus, InboundMessage, InboundPurpose,
    OperationKind, OutboundOperation, PM_CONVERSATION_PREFIX, RateAccount,
};
use si_schemas::{Codec, CodecError, topics};
use si_segment::{Response, SegmentConfig, Timing, plan};

use crate::keywords::{KeywordKind, Keywords, Matched};
use crate::rate::{Admission, RateLimit};
use crate::revocation::{Action, Revocation, RevocationRules};

/// Twilio error: the recipient opted out (replied STOP at Twilio's level).
pub const TWILIO_OPTED_OUT: i32 = 21610;

/// `params["si.purpose"]` of every reply this stage sends; egress lets them
/// through its consent re-check (the STOP confirmation must go out).
pub const PURPOSE_PARAM: &str = "si.purpose";
/// The value of [`PURPOSE_PARAM`].
pub const PURPOSE: &str = "consent";

/// Whether texting first counts as consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Texting first is consent: the first message is forwarded, with the welcome.
    Implied,
    /// Consent needs an opt-in keyword (YES, START): until then the address is
    /// PENDING and its messages are not forwarded.
    Explicit,
}

/// Which sender scope the stage's decisions are recorded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeMode {
    /// `*`: a STOP to one Si number stops every Si sender.
    Global,
    /// The sender the conversation's replies go out with: the Messaging
    /// Service (`MESSAGING_SERVICE_SID`) for Programmable Messaging when one
    /// is set, else the Si address the user wrote to (`*` when unknown).
    Sender,
}

/// What the processor is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Implied or explicit consent.
    pub policy: Policy,
    /// Scope of recorded decisions.
    pub scope: ScopeMode,
    /// Send the localized STOP confirmation (off when Twilio's Advanced
    /// Opt-Out already replies).
    pub stop_reply: bool,
    /// The keyword lists.
    pub keywords: Keywords,
    /// The revocation phrase rules.
    pub revocation: RevocationRules,
    /// How replies are cut into messages.
    pub segment: SegmentConfig,
    /// How long state entries (decisions, conversation users) are kept after
    /// their last update.
    pub state_ttl: Duration,
    /// The Messaging Service Programmable Messaging replies go out through
    /// (as segment's responses), if any.
    pub messaging_service_sid: Option<String>,
    /// How fast the user of a conversation may write before their messages
    /// are held back from the cognition layer (`None`: no limit).
    pub rate_limit: Option<RateLimit>,
}

/// The default inbound rate limit: 10 messages a minute, bursts of 10.
///
/// # Panics
/// Never: the numbers are valid.
#[must_use]
#[allow(clippy::expect_used)]
pub fn default_rate_limit() -> RateLimit {
    RateLimit::new(10, Duration::from_secs(60), 10).expect("a valid limit")
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy::Implied,
            scope: ScopeMode::Global,
            stop_reply: true,
            keywords: Keywords::default(),
            revocation: RevocationRules::default(),
            segment: SegmentConfig::default(),
            state_ttl: Duration::from_secs(30 * 86_400),
            messaging_service_sid: None,
            rate_limit: Some(default_rate_limit()),
        }
    }
}

/// The consent stage's inputs, decoded by topic.
#[derive(Debug, Clone)]
pub enum ConsentInput {
    /// From `si.conversation.events.v1`.
    Event(Box<ConversationEvent>),
    /// From `twilio.delivery.v1`.
    Delivery(Box<DeliveryStatus>),
}

impl InputRecord for ConsentInput {
    async fn decode<'a>(
        topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> Result<Self, CodecError> {
        if topic == topics::DELIVERY {
            Ok(Self::Delivery(Box::new(codec.decode(bytes).await?)))
        } else {
            Ok(Self::Event(Box::new(codec.decode(bytes).await?)))
        }
    }
}

/// Counters of the consent stage (labels never carry addresses).
#[derive(Debug, Clone)]
pub struct ConsentMetrics {
    /// What happened to inputs: `forwarded`, `blocked_inbound`, `opt_out`
    /// (keyword), `revocation_phrase` (opt-out by a phrase), `possible_revocation`
    /// (flagged and forwarded), `rate_limited` (held back by the inbound rate
    /// limit), `media_rate_limited` (the stored media of such a message), `opt_in`, `help`, `first_contact`,
    /// `twilio_opt_out`, `unattributed_21610`, `reply_failed`,
    /// `media_forwarded`, `media_blocked`; by the user's `channel` (`sms`,
    /// `whatsapp`, `voice`, `chat`, `unknown`: a 21610 whose user is not
    /// known), so opt-out trends can be told apart per channel.
    pub outcomes: IntCounterVec,
}

impl ConsentMetrics {
    /// Registers the counters in `registry`.
    ///
    /// # Errors
    /// When a counter of the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "si_consent_outcomes_total",
                "Consent outcomes: messages forwarded or blocked, keywords, first contacts, Twilio opt-outs, by the user's channel",
            ),
            &["outcome", "channel"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self { outcomes })
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

    fn count(&self, outcome: &str, channel: Channel) {
        self.outcomes
            .with_label_values(&[outcome, channel.key_prefix()])
            .inc();
    }
}

/// The consent stage's logic.
#[derive(Debug)]
pub struct ConsentProcessor {
    settings: Settings,
    gate: ConsentGate,
    catalog: &'static Catalog,
    metrics: ConsentMetrics,
}

/// The subject of a decision: who, on which channel, toward which scope.
#[derive(Debug, Clone)]
struct Subject {
    address: String,
    channel: Channel,
    scope: String,
    proxy: Option<String>,
}

/// The consent words in a message that a decision rests on: a keyword or a
/// revocation phrase.
#[derive(Debug, Clone)]
struct Said {
    kind: KeywordKind,
    /// As the user sent it (for the decision's and the audit's `keyword`).
    as_sent: String,
    /// `keyword` or the revocation rule's name.
    rule: &'static str,
    /// The folded words that matched.
    matched: String,
    /// The language of the words, when known.
    language: Option<String>,
    /// The locale the reply goes out in.
    reply_locale: String,
}

impl Said {
    fn keyword(m: &Matched, locale: &str) -> Self {
        Self {
            kind: m.kind,
            as_sent: m.as_sent.clone(),
            rule: KEYWORD_RULE,
            matched: m.folded.clone(),
            language: m.language.clone(),
            reply_locale: m.reply_locale(locale),
        }
    }

    fn revocation(r: &Revocation, locale: &str) -> Self {
        Self {
            kind: KeywordKind::OptOut,
            as_sent: r.as_sent.clone(),
            rule: r.rule.name(),
            matched: r.matched.clone(),
            language: Some(r.language.clone()),
            reply_locale: r.reply_locale(locale),
        }
    }

    /// The audit details that say why.
    fn details(&self, version: &str) -> BTreeMap<String, String> {
        let mut details = BTreeMap::from([
            ("rule".to_owned(), self.rule.to_owned()),
            ("matched".to_owned(), self.matched.clone()),
            ("consent_words_version".to_owned(), version.to_owned()),
        ]);
        if let Some(language) = &self.language {
            details.insert("rule_language".into(), language.clone());
        }
        details
    }
}

/// `details.rule` of a keyword.
const KEYWORD_RULE: &str = "keyword";

/// An unchanged conversation contact is written again once this part of
/// `state_ttl` has passed since it was last written (a day of the default
/// 30 days), so it expires at most that much sooner than its conversation's
/// latest message plus the TTL.
const CONTACT_REFRESH_PARTS: i64 = 30;

/// A user message being decided on, with what is known about its sender.
struct Received<'a, 'c> {
    ctx: &'a RecordContext<'c>,
    event: &'a ConversationEvent,
    message_ref: &'a str,
    subject: Subject,
    /// The status in force before this message.
    status: ConsentStatus,
    /// Whether the adapter has any decision of its own for the subject.
    seen: bool,
}

impl Received<'_, '_> {
    fn trigger(&self) -> &str {
        &self.event.event_id
    }

    fn at(&self) -> i64 {
        self.event.occurred_at
    }

    /// The compliance event of `kind` about this message.
    fn compliance(
        &self,
        kind: ComplianceEventKind,
        source: ComplianceSource,
        keyword: Option<&str>,
        reply: Option<&Reply>,
        details: BTreeMap<String, String>,
    ) -> Output {
        ConsentProcessor::compliance(
            kind,
            source,
            &self.subject,
            self.trigger(),
            Some(&self.event.conversation_id),
            Some(self.message_ref),
            keyword,
            self.at(),
            reply,
            details,
        )
    }
}

/// One reply sent, for the audit record.
#[derive(Debug, Default)]
struct Reply {
    outputs: Vec<Output>,
    locale: Option<String>,
    operation_ids: Vec<String>,
    error: Option<String>,
}

fn uuid_of(domain: &str, value: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update([0u8]);
    hasher.update(value.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The deterministic `event_id` of the compliance event of `kind` caused by
/// `trigger` (a conversation event id or an operation id).
#[must_use]
pub fn compliance_event_id(kind: ComplianceEventKind, trigger: &str) -> String {
    uuid_of("si.compliance", &format!("{}|{trigger}", kind.as_str()))
}

/// The deterministic `operation_id` of part `part` of the reply `purpose` to `trigger`.
#[must_use]
pub fn reply_operation_id(purpose: &str, trigger: &str, part: usize) -> String {
    uuid_of("si.consent.reply", &format!("{purpose}|{trigger}|{part}"))
}

/// The `traceparent` a record written for `event` carries in its value: this
/// stage's own (a child of the event's), else the event's.
fn trace_of(ctx: &RecordContext<'_>, event: &ConversationEvent) -> Option<String> {
    ctx.traceparent
        .map(str::to_owned)
        .or_else(|| event.traceparent.clone())
}

/// State key of a decision.
#[must_use]
pub fn decision_key(consent_key: &str) -> String {
    format!("d|{consent_key}")
}

/// State key of a conversation's user.
#[must_use]
pub fn contact_key(conversation_id: &str) -> String {
    format!("c|{conversation_id}")
}

/// State key of a conversation's inbound rate account.
#[must_use]
pub fn rate_key(conversation_id: &str) -> String {
    format!("r|{conversation_id}")
}

/// State key of a message with media the rate limit held back.
#[must_use]
pub fn held_key(message_sid: &str) -> String {
    format!("h|{message_sid}")
}

/// A state entry of the rate limit: a conversation's account, or (`None`)
/// the marker of a held-back message with media.
fn rate_entry(rate: Option<RateAccount>) -> ConsentProcessorState {
    ConsentProcessorState {
        kind: ConsentProcessorStateKind::Rate,
        decision: None,
        contact: None,
        rate,
    }
}

/// How long a held-back message with media is remembered, so its
/// `MEDIA_STORED` follow-up (the media stage's copies, usually seconds
/// later) is held back too.
const HELD_MEDIA_TTL: Duration = Duration::from_secs(86_400);

impl ConsentProcessor {
    /// A processor over `gate` (the adapter's and the registry's consent tables).
    #[must_use]
    pub fn new(settings: Settings, gate: ConsentGate, metrics: ConsentMetrics) -> Self {
        Self {
            settings,
            gate,
            catalog: Catalog::builtin(),
            metrics,
        }
    }

    /// The scope a decision of the conversation's user is kept under: `*`,
    /// or with `CONSENT_SCOPE=sender` the scope of the sender the
    /// conversation's replies go out with ([`si_consent_gate::sender`]), the
    /// one segment's and egress's gate checks. With `MESSAGING_SERVICE_SID`
    /// that is the Messaging Service, whichever of its numbers the user
    /// wrote to: Twilio applies an opt-out to the whole service too.
    fn scope_for(
        &self,
        channel: Channel,
        conversation_id: &str,
        programmable_messaging: bool,
        proxy: Option<&str>,
    ) -> String {
        if self.settings.scope == ScopeMode::Global {
            return ANY_SCOPE.to_owned();
        }
        si_consent_gate::sender(
            channel,
            conversation_id,
            programmable_messaging,
            proxy,
            self.settings.messaging_service_sid.as_deref(),
        )
        .map(|sender| sender.scope)
        .filter(|scope| !scope.is_empty())
        .unwrap_or_else(|| ANY_SCOPE.to_owned())
    }

    /// The stage's own decisions for the subject (its scope and `*`).
    fn own_decisions(
        &self,
        subject: &Subject,
        state: &StateStore<ConsentProcessorState>,
    ) -> Vec<ConsentState> {
        let mut scopes = vec![subject.scope.as_str()];
        if subject.scope != ANY_SCOPE {
            scopes.push(ANY_SCOPE);
        }
        scopes
            .into_iter()
            .filter_map(|scope| consent_key(subject.channel, &subject.address, scope))
            .filter_map(|key| state.get(&decision_key(&key)))
            .filter_map(|entry| entry.decision.clone())
            .collect()
    }

    /// The decision in force and whether the adapter has any decision of its own
    /// (state or `si.consent.v1`) for the subject.
    fn effective(
        &self,
        subject: &Subject,
        state: &StateStore<ConsentProcessorState>,
    ) -> (Option<ConsentState>, bool) {
        let own = self.own_decisions(subject, state);
        let table = self
            .gate
            .effective(subject.channel, &subject.address, &subject.scope);
        let mut seen = !own.is_empty();
        if !seen {
            let mut scopes = vec![subject.scope.as_str()];
            if subject.scope != ANY_SCOPE {
                scopes.push(ANY_SCOPE);
            }
            seen = scopes.into_iter().any(|scope| {
                consent_key(subject.channel, &subject.address, scope)
                    .is_some_and(|key| self.gate.local().get(&key).is_some())
            });
        }
        let mut all = own;
        all.extend(table.map(|d| (*d).clone()));
        (newest(all.iter()).cloned(), seen)
    }

    /// Records a decision: state, `si.consent.v1`.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        subject: &Subject,
        status: ConsentStatus,
        source: ComplianceSource,
        decided_at: i64,
        keyword: Option<&str>,
        event_ref: &str,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Option<Output> {
        let decision = ConsentState {
            address: subject.address.clone(),
            channel: subject.channel,
            sender_scope: subject.scope.clone(),
            status,
            source,
            decided_at,
            updated_at: state.now(),
            keyword: keyword.map(str::to_owned),
            event_ref: Some(event_ref.to_owned()),
        };
        let key = consent_key(subject.channel, &subject.address, &subject.scope)?;
        state.put_with_ttl(
            decision_key(&key),
            ConsentProcessorState {
                kind: ConsentProcessorStateKind::Decision,
                decision: Some(decision.clone()),
                contact: None,
                rate: None,
            },
            self.settings.state_ttl,
        );
        tracing::info!(
            address = %mask_address(&subject.address),
            channel = %subject.channel,
            scope = %subject.scope,
            status = %status,
            source = %source,
            "consent decision"
        );
        Some(Output::new(topics::CONSENT, key, decision))
    }

    /// The reply `text_key` in `locale` to the user of `event`, cut into operations.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        subject: &Subject,
        text_key: &str,
        locale: &str,
        purpose: &str,
    ) -> Reply {
        let text = self.catalog.text(text_key, locale);
        let Some(proxy) = subject.proxy.as_deref().filter(|p| !p.is_empty()) else {
            self.metrics.count("reply_failed", subject.channel);
            return Reply {
                error: Some("no sender address known for the conversation".into()),
                ..Reply::default()
            };
        };
        let response = Response {
            locale: Some(text.locale),
            ..Response::text(text.text, subject.channel)
        };
        let timing = Timing {
            now_ms: ctx.timestamp_ms,
            last_inbound_ms: Some(event.received_at),
        };
        let planned = match plan(&response, timing, &self.settings.segment) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.count("reply_failed", subject.channel);
                return Reply {
                    error: Some(format!("planning the reply: {e}")),
                    ..Reply::default()
                };
            }
        };
        let programmable_messaging = event.is_programmable_messaging();
        let kind = if programmable_messaging {
            OperationKind::SendMessage
        } else {
            OperationKind::SendConversationMessage
        };
        // The sender segment uses for the same conversation: one per number.
        let Some(sender) = si_consent_gate::sender(
            subject.channel,
            &event.conversation_id,
            programmable_messaging,
            Some(proxy),
            self.settings.messaging_service_sid.as_deref(),
        ) else {
            self.metrics.count("reply_failed", subject.channel);
            return Reply {
                error: Some("no sender known for the conversation".into()),
                ..Reply::default()
            };
        };
        let sender_key = sender.key.clone();
        let mut reply = Reply {
            locale: Some(text.locale.to_owned()),
            ..Reply::default()
        };
        for part in &planned.parts {
            let operation_id = reply_operation_id(purpose, &event.event_id, part.index);
            let mut op = OutboundOperation {
                operation_id: operation_id.clone(),
                conversation_id: event.conversation_id.clone(),
                kind,
                channel: subject.channel,
                sender_key: sender_key.clone(),
                to: Some(subject.address.clone()),
                from: sender.from.clone(),
                messaging_service_sid: sender.messaging_service_sid.clone(),
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
                created_at: ctx.timestamp_ms,
                not_after: None,
                traceparent: trace_of(ctx, event),
            };
            part.apply_to(&mut op);
            reply
                .outputs
                .push(Output::new(topics::OUTBOUND, sender_key.clone(), op));
            reply.operation_ids.push(operation_id);
        }
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn compliance(
        kind: ComplianceEventKind,
        source: ComplianceSource,
        subject: &Subject,
        trigger: &str,
        conversation_id: Option<&str>,
        message_ref: Option<&str>,
        keyword: Option<&str>,
        at: i64,
        reply: Option<&Reply>,
        mut details: BTreeMap<String, String>,
    ) -> Output {
        if let Some(reply) = reply {
            if !reply.operation_ids.is_empty() {
                details.insert(
                    "confirmation_operation_id".into(),
                    reply.operation_ids.join(","),
                );
            }
            if let Some(error) = &reply.error {
                details.insert("confirmation_error".into(), error.clone());
            }
        }
        let event = ComplianceEvent {
            event_id: compliance_event_id(kind, trigger),
            kind,
            source,
            address: subject.address.clone(),
            channel: subject.channel,
            sender_scope: Some(subject.scope.clone()),
            conversation_id: conversation_id.map(str::to_owned),
            message_ref: message_ref.map(str::to_owned),
            keyword: keyword.map(str::to_owned),
            locale: reply.and_then(|r| r.locale.clone()),
            at,
            details,
        };
        Output::new(
            topics::COMPLIANCE,
            subject.channel.address_key(&subject.address),
            event,
        )
    }

    fn remember_contact(
        &self,
        event: &ConversationEvent,
        state: &mut StateStore<ConsentProcessorState>,
    ) {
        let Some(participant) = &event.participant else {
            return;
        };
        let channel = channel_of(event);
        let address = match event.event_type {
            ConversationEventType::MessageReceived => participant.address.clone(),
            ConversationEventType::ParticipantJoined => event
                .participant_change
                .as_ref()
                .and_then(|c| c.address.clone())
                .or_else(|| participant.address.clone()),
            _ => None,
        };
        let Some(address) = address.filter(|a| !a.is_empty()) else {
            return;
        };
        if !has_consent(channel) {
            return;
        }
        let proxy = participant.proxy_address.clone().or_else(|| {
            event
                .participant_change
                .as_ref()
                .and_then(|c| c.proxy_address.clone())
        });
        let key = contact_key(&event.conversation_id);
        let contact = ConversationContact {
            conversation_id: event.conversation_id.clone(),
            address,
            channel,
            proxy_address: proxy,
            locale: Some(event.locale.clone()),
            last_seen_at: state.now(),
        };
        if self.contact_is_current(&key, &contact, state) {
            return;
        }
        state.put_with_ttl(
            key,
            ConsentProcessorState {
                kind: ConsentProcessorStateKind::Contact,
                decision: None,
                contact: Some(contact),
                rate: None,
            },
            self.settings.state_ttl,
        );
    }

    /// Whether the stored contact of a conversation already says what
    /// `contact` says and was written less than `state_ttl /
    /// CONTACT_REFRESH_PARTS` ago; then it is not written again. Otherwise
    /// every message of a conversation would put a changelog partition (a
    /// produce request, the broker's verification of it and a commit marker)
    /// into consent's transaction on the reply path.
    fn contact_is_current(
        &self,
        key: &str,
        contact: &ConversationContact,
        state: &StateStore<ConsentProcessorState>,
    ) -> bool {
        let Some(stored) = state.get(key).and_then(|s| s.contact.as_ref()) else {
            return false;
        };
        let same = stored.conversation_id == contact.conversation_id
            && stored.address == contact.address
            && stored.channel == contact.channel
            && stored.proxy_address == contact.proxy_address
            && stored.locale == contact.locale;
        let ttl = i64::try_from(self.settings.state_ttl.as_millis()).unwrap_or(i64::MAX);
        let refresh_after = ttl / CONTACT_REFRESH_PARTS;
        same && state
            .expires_at(key)
            .is_some_and(|at| at.saturating_sub(state.now()) > ttl - refresh_after)
    }

    fn forward(
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        first_contact: bool,
        possible_revocation: bool,
    ) -> Option<Output> {
        let message = event.message.as_ref()?;
        let participant = event.participant.as_ref();
        let inbound = InboundMessage {
            message_id: message.message_sid.clone(),
            conversation_id: event.conversation_id.clone(),
            session_id: event.session_id.clone(),
            user_id: participant.and_then(|p| p.user_id.clone()),
            visitor_id: participant.and_then(|p| p.visitor_id.clone()),
            registered: participant.is_some_and(|p| p.registered),
            channel: channel_of(event),
            locale: event.locale.clone(),
            text: message.body.clone().unwrap_or_default(),
            media: message.media.clone(),
            received_at: event.received_at,
            event_id: event.event_id.clone(),
            first_contact,
            possible_revocation,
            traceparent: trace_of(ctx, event),
            purpose: InboundPurpose::UserMessage,
            stored_media: Vec::new(),
            location: message.location.clone(),
            profile_name: message.profile_name.clone(),
            button_payload: message.button_payload.clone(),
        };
        Some(Output::new(
            topics::INBOUND,
            event.conversation_id.clone(),
            inbound,
        ))
    }

    /// The media stage's durable copies of a message's media go to the
    /// cognition layer as a follow-up of that message (purpose
    /// `MEDIA_STORED`), so it never needs Twilio's credentials to see them;
    /// only when the conversation's messages are forwarded now (a user whose
    /// messages are blocked by the decision in force gets nothing
    /// forwarded). Recordings are the call's, not the cognition layer's.
    fn forward_media(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &StateStore<ConsentProcessorState>,
    ) -> Option<Output> {
        let stored = event.media_stored.as_ref()?;
        if stored.call_sid.is_some() || stored.items.is_empty() {
            return None;
        }
        if state.get(&held_key(&stored.source_sid)).is_some() {
            // Its message was held back by the rate limit.
            self.metrics.count("media_rate_limited", event.channel);
            return None;
        }
        let contact = state
            .get(&contact_key(&event.conversation_id))
            .and_then(|entry| entry.contact.clone());
        let channel = contact.as_ref().map_or(event.channel, |c| c.channel);
        if has_consent(channel) {
            // A phone channel: the decision in force for the user's address.
            let contact = contact?;
            let subject = Subject {
                scope: self.scope_for(
                    channel,
                    &event.conversation_id,
                    event.is_programmable_messaging(),
                    contact.proxy_address.as_deref(),
                ),
                address: contact.address.clone(),
                channel,
                proxy: contact.proxy_address.clone(),
            };
            let (current, _) = self.effective(&subject, state);
            let require_opt_in = self.settings.policy == Policy::Explicit;
            if !verdict(current.map(std::sync::Arc::new), require_opt_in).is_allowed() {
                self.metrics.count("media_blocked", channel);
                return None;
            }
        }
        self.metrics.count("media_forwarded", channel);
        let inbound = InboundMessage {
            message_id: stored.source_sid.clone(),
            conversation_id: event.conversation_id.clone(),
            session_id: event.session_id.clone(),
            user_id: None,
            visitor_id: None,
            registered: false,
            channel,
            locale: event.locale.clone(),
            text: String::new(),
            media: Vec::new(),
            received_at: event.received_at,
            event_id: event.event_id.clone(),
            first_contact: false,
            possible_revocation: false,
            traceparent: trace_of(ctx, event),
            purpose: InboundPurpose::MediaStored,
            stored_media: stored.items.clone(),
            location: None,
            profile_name: None,
            button_payload: None,
        };
        Some(Output::new(
            topics::INBOUND,
            event.conversation_id.clone(),
            inbound,
        ))
    }

    fn on_event(
        &self,
        ctx: &RecordContext<'_>,
        event: &ConversationEvent,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Result<Vec<Output>, ProcessError> {
        self.remember_contact(event, state);
        if event.event_type == ConversationEventType::MediaStored {
            return Ok(self.forward_media(ctx, event, state).into_iter().collect());
        }
        if event.event_type != ConversationEventType::MessageReceived {
            return Ok(Vec::new());
        }
        let message = event.message.as_ref().ok_or_else(|| {
            ProcessError::Invalid(format!(
                "MESSAGE_RECEIVED event {} without a message",
                event.event_id
            ))
        })?;
        let channel = channel_of(event);
        if !has_consent(channel) {
            // Chat has no phone address and no consent state; voice is consented on the call.
            self.metrics.count("forwarded", channel);
            return Ok(Self::forward(ctx, event, false, false)
                .into_iter()
                .collect());
        }
        let participant = event.participant.as_ref().ok_or_else(|| {
            ProcessError::Invalid(format!(
                "{channel} message {} without a participant",
                message.message_sid
            ))
        })?;
        let address = participant
            .address
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ProcessError::Invalid(format!(
                    "{channel} message {} without a participant address",
                    message.message_sid
                ))
            })?;
        let subject = Subject {
            scope: self.scope_for(
                channel,
                &event.conversation_id,
                event.is_programmable_messaging(),
                participant.proxy_address.as_deref(),
            ),
            address,
            channel,
            proxy: participant.proxy_address.clone(),
        };
        let (current, seen) = self.effective(&subject, state);
        let (said, flagged) = self.classify(message.body.as_deref().unwrap_or_default(), event);
        let received = Received {
            ctx,
            event,
            message_ref: message.message_sid.as_str(),
            subject,
            status: current
                .as_ref()
                .map_or(ConsentStatus::Unknown, |d| d.status),
            seen,
        };
        Ok(match said {
            Some(said) => match said.kind {
                KeywordKind::OptOut => self.opt_out(&received, &said, state),
                KeywordKind::OptIn => self.opt_in(&received, &said, state),
                KeywordKind::Help => self.help(&received, &said),
            },
            None if !seen && received.status != ConsentStatus::OptedOut => {
                self.first_contact(&received, current.as_ref(), flagged.as_ref(), state)
            }
            None => self.other_message(&received, current, flagged.as_ref(), state),
        })
    }

    /// The consent words in `body`: a keyword or a revocation phrase to act
    /// on, else a revocation to flag.
    fn classify(
        &self,
        body: &str,
        event: &ConversationEvent,
    ) -> (Option<Said>, Option<Revocation>) {
        let locale = event.locale.as_str();
        if let Some(keyword) = self.settings.keywords.classify(body, locale) {
            return (Some(Said::keyword(&keyword, locale)), None);
        }
        match self.settings.revocation.assess(body, locale) {
            Some(r) if r.action() == Action::OptOut => (Some(Said::revocation(&r, locale)), None),
            flagged => (None, flagged),
        }
    }

    /// An opt-out keyword or revocation phrase.
    fn opt_out(
        &self,
        received: &Received<'_, '_>,
        said: &Said,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        self.metrics.count(
            if said.rule == KEYWORD_RULE {
                "opt_out"
            } else {
                "revocation_phrase"
            },
            received.subject.channel,
        );
        let mut out = Vec::new();
        let trigger = received.trigger();
        let id = compliance_event_id(ComplianceEventKind::OptOut, trigger);
        let changed = received.status != ConsentStatus::OptedOut;
        let mut details = said.details(self.settings.revocation.version());
        if changed {
            out.extend(self.decide(
                &received.subject,
                ConsentStatus::OptedOut,
                ComplianceSource::Keyword,
                received.at(),
                Some(&said.as_sent),
                &id,
                state,
            ));
        } else {
            details.insert("already_opted_out".into(), "true".into());
        }
        let reply = (changed && self.settings.stop_reply).then(|| {
            self.reply(
                received.ctx,
                received.event,
                &received.subject,
                keys::OPT_OUT_CONFIRMATION,
                &said.reply_locale,
                "opt_out",
            )
        });
        out.push(received.compliance(
            ComplianceEventKind::OptOut,
            ComplianceSource::Keyword,
            Some(&said.as_sent),
            reply.as_ref(),
            details,
        ));
        out.extend(reply.into_iter().flat_map(|r| r.outputs));
        out
    }

    /// An opt-in keyword.
    fn opt_in(
        &self,
        received: &Received<'_, '_>,
        said: &Said,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        self.metrics.count("opt_in", received.subject.channel);
        let mut out = Vec::new();
        let id = compliance_event_id(ComplianceEventKind::OptIn, received.trigger());
        let mut details = said.details(self.settings.revocation.version());
        if received.status == ConsentStatus::OptedIn {
            details.insert("already_opted_in".into(), "true".into());
        } else {
            out.extend(self.decide(
                &received.subject,
                ConsentStatus::OptedIn,
                ComplianceSource::Keyword,
                received.at(),
                Some(&said.as_sent),
                &id,
                state,
            ));
        }
        let text_key = if received.seen {
            keys::OPT_IN_CONFIRMATION
        } else {
            keys::WELCOME
        };
        let reply = self.reply(
            received.ctx,
            received.event,
            &received.subject,
            text_key,
            &said.reply_locale,
            "opt_in",
        );
        out.push(received.compliance(
            ComplianceEventKind::OptIn,
            ComplianceSource::Keyword,
            Some(&said.as_sent),
            Some(&reply),
            details,
        ));
        out.extend(reply.outputs);
        out
    }

    /// A help keyword: answered, also to opted-out users; nothing recorded.
    fn help(&self, received: &Received<'_, '_>, said: &Said) -> Vec<Output> {
        self.metrics.count("help", received.subject.channel);
        let reply = self.reply(
            received.ctx,
            received.event,
            &received.subject,
            keys::HELP,
            &said.reply_locale,
            "help",
        );
        let mut details = said.details(self.settings.revocation.version());
        details.insert("consent_status".into(), received.status.to_string());
        let mut out = vec![received.compliance(
            ComplianceEventKind::Help,
            ComplianceSource::Keyword,
            Some(&said.as_sent),
            Some(&reply),
            details,
        )];
        out.extend(reply.outputs);
        out
    }

    /// Any other message of a known address: forwarded (flagged when it may
    /// revoke consent) or blocked by the decision in force.
    fn other_message(
        &self,
        received: &Received<'_, '_>,
        current: Option<ConsentState>,
        flagged: Option<&Revocation>,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        let in_force = current.map(std::sync::Arc::new);
        let require_opt_in = self.settings.policy == Policy::Explicit;
        if verdict(in_force.clone(), require_opt_in).is_allowed() {
            return self.forward_within_limit(received, false, received.status, flagged, state);
        }
        self.metrics
            .count("blocked_inbound", received.subject.channel);
        let mut details = BTreeMap::from([("consent_status".into(), received.status.to_string())]);
        if let Some(reference) = in_force.as_ref().and_then(|d| d.event_ref.clone()) {
            details.insert("decision_ref".into(), reference);
        }
        if let Some(flag) = flagged {
            details.extend(flag_details(flag, self.settings.revocation.version()));
        }
        let source = in_force
            .as_ref()
            .map_or(ComplianceSource::Unknown, |d| d.source);
        vec![received.compliance(
            ComplianceEventKind::BlockedInbound,
            source,
            None,
            None,
            details,
        )]
    }

    /// The first message from an address the adapter has no decision for.
    fn first_contact(
        &self,
        received: &Received<'_, '_>,
        registry: Option<&ConsentState>,
        flagged: Option<&Revocation>,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        let (ctx, event, subject) = (received.ctx, received.event, &received.subject);
        let trigger = event.event_id.as_str();
        let message_ref = event.message.as_ref().map(|m| m.message_sid.as_str());
        let conv = Some(event.conversation_id.as_str());
        let at = event.occurred_at;
        let mut out = Vec::new();
        self.metrics.count("first_contact", subject.channel);
        let registry_opt_in = registry.filter(|d| d.status == ConsentStatus::OptedIn);
        if registry_opt_in.is_some() || self.settings.policy == Policy::Implied {
            // Texting first is consent (or the registry already has it, in which
            // case the decision mirrors the registry's time and adds nothing newer).
            let id = compliance_event_id(ComplianceEventKind::OptIn, trigger);
            let decided_at = registry_opt_in.map_or(at, |d| d.decided_at);
            out.extend(self.decide(
                subject,
                ConsentStatus::OptedIn,
                ComplianceSource::FirstContact,
                decided_at,
                None,
                &id,
                state,
            ));
            let reply = self.reply(ctx, event, subject, keys::WELCOME, &event.locale, "welcome");
            let mut details = BTreeMap::from([(
                "policy".into(),
                policy_name(self.settings.policy).to_owned(),
            )]);
            if let Some(reference) = registry_opt_in.and_then(|d| d.event_ref.clone()) {
                details.insert("registry_ref".into(), reference);
            }
            out.push(Self::compliance(
                ComplianceEventKind::OptIn,
                ComplianceSource::FirstContact,
                subject,
                trigger,
                conv,
                message_ref,
                None,
                at,
                Some(&reply),
                details,
            ));
            out.extend(reply.outputs);
            let status = ConsentStatus::OptedIn;
            out.extend(self.forward_within_limit(received, true, status, flagged, state));
        } else {
            self.metrics.count("blocked_inbound", subject.channel);
            let id = compliance_event_id(ComplianceEventKind::BlockedInbound, trigger);
            out.extend(self.decide(
                subject,
                ConsentStatus::Pending,
                ComplianceSource::FirstContact,
                at,
                None,
                &id,
                state,
            ));
            let reply = self.reply(
                ctx,
                event,
                subject,
                keys::CONSENT_REQUEST,
                &event.locale,
                "consent_request",
            );
            let mut details = BTreeMap::from([
                ("policy".into(), "explicit".into()),
                ("reason".into(), "consent_required".into()),
            ]);
            if let Some(flag) = flagged {
                details.extend(flag_details(flag, self.settings.revocation.version()));
            }
            out.push(Self::compliance(
                ComplianceEventKind::BlockedInbound,
                ComplianceSource::FirstContact,
                subject,
                trigger,
                conv,
                message_ref,
                None,
                at,
                Some(&reply),
                details,
            ));
            out.extend(reply.outputs);
        }
        out
    }

    /// A message the consent in force lets through: forwarded to the
    /// cognition layer (with its `possible_revocation` audit), unless the
    /// inbound rate limit holds it back. `status` is the consent it is
    /// forwarded under.
    fn forward_within_limit(
        &self,
        received: &Received<'_, '_>,
        first_contact: bool,
        status: ConsentStatus,
        flagged: Option<&Revocation>,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        // A message that may revoke consent is never held back: it is
        // forwarded flagged, for the cognition layer to clarify, and charged
        // to the account like any message.
        if flagged.is_some() {
            self.charge(received, state);
        } else if let Some(held) = self.hold_back(received, status, state) {
            return held;
        }
        let (event, subject) = (received.event, &received.subject);
        self.metrics.count("forwarded", subject.channel);
        let mut out: Vec<Output> =
            Self::forward(received.ctx, event, first_contact, flagged.is_some())
                .into_iter()
                .collect();
        out.extend(self.possible_revocation(event, subject, flagged, status));
        out
    }

    /// Charges a message forwarded whatever the rate to its conversation's
    /// account.
    fn charge(&self, received: &Received<'_, '_>, state: &mut StateStore<ConsentProcessorState>) {
        let Some(limit) = self.settings.rate_limit else {
            return;
        };
        let key = rate_key(&received.event.conversation_id);
        let at = received.event.received_at;
        let account = limit.charge(state.get(&key).and_then(|e| e.rate.as_ref()), at);
        let ttl = limit.keep_for(&account, at);
        state.put_with_ttl(key, rate_entry(Some(account)), ttl);
    }

    /// The inbound rate limit's say on a message about to be forwarded: its
    /// conversation's account is updated either way; `None` to forward it,
    /// else what holding it back records. The first message held back in a
    /// flood gets a `BLOCKED_INBOUND` (source `RATE_LIMIT`) and a notice to
    /// the user in their language; the rest are counted.
    fn hold_back(
        &self,
        received: &Received<'_, '_>,
        status: ConsentStatus,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Option<Vec<Output>> {
        let limit = self.settings.rate_limit?;
        let event = received.event;
        let key = rate_key(&event.conversation_id);
        let account = state.get(&key).and_then(|entry| entry.rate.as_ref());
        let at = event.received_at;
        let admission = limit.admit(account, at);
        let put = |state: &mut StateStore<ConsentProcessorState>, account: RateAccount| {
            let ttl = limit.keep_for(&account, at);
            state.put_with_ttl(key.clone(), rate_entry(Some(account)), ttl);
        };
        let (first, retry_at) = match admission {
            Admission::Forward(account) => {
                put(state, account);
                return None;
            }
            Admission::HoldBack {
                account,
                first,
                retry_at,
            } => {
                put(state, account);
                (first, retry_at)
            }
        };
        let channel = received.subject.channel;
        self.metrics.count("rate_limited", channel);
        // Its media's MEDIA_STORED follow-up is held back with it.
        if event.message.as_ref().is_some_and(|m| !m.media.is_empty()) {
            state.put_with_ttl(
                held_key(received.message_ref),
                rate_entry(None),
                HELD_MEDIA_TTL,
            );
        }
        if !first {
            return Some(Vec::new());
        }
        tracing::info!(
            address = %mask_address(&received.subject.address),
            channel = %channel,
            conversation_id = %event.conversation_id,
            rate_limit = %limit,
            burst = limit.burst(),
            "inbound rate limit: the conversation's messages are held back"
        );
        let reply = self.reply(
            received.ctx,
            event,
            &received.subject,
            keys::RATE_LIMITED,
            &event.locale,
            "rate_limited",
        );
        let details = BTreeMap::from([
            ("reason".to_owned(), "rate_limited".to_owned()),
            ("rate_limit".to_owned(), limit.to_string()),
            ("burst".to_owned(), limit.burst().to_string()),
            ("consent_status".to_owned(), status.to_string()),
            (
                "retry_after_ms".to_owned(),
                retry_at.saturating_sub(at).to_string(),
            ),
        ]);
        let mut out = vec![received.compliance(
            ComplianceEventKind::BlockedInbound,
            ComplianceSource::RateLimit,
            None,
            Some(&reply),
            details,
        )];
        out.extend(reply.outputs);
        Some(out)
    }

    /// The audit record of a message forwarded with `possible_revocation`.
    fn possible_revocation(
        &self,
        event: &ConversationEvent,
        subject: &Subject,
        flagged: Option<&Revocation>,
        status: ConsentStatus,
    ) -> Option<Output> {
        let flag = flagged?;
        self.metrics.count("possible_revocation", subject.channel);
        tracing::info!(
            address = %mask_address(&subject.address),
            channel = %subject.channel,
            rule = %flag.rule,
            language = %flag.language,
            "possible revocation forwarded to cognition, flagged"
        );
        let mut details = flag_details(flag, self.settings.revocation.version());
        details.insert("consent_status".into(), status.to_string());
        details.insert("action".into(), "forwarded_flagged".into());
        Some(Self::compliance(
            ComplianceEventKind::PossibleRevocation,
            ComplianceSource::Keyword,
            subject,
            &event.event_id,
            Some(&event.conversation_id),
            event.message.as_ref().map(|m| m.message_sid.as_str()),
            Some(&flag.as_sent),
            event.occurred_at,
            None,
            details,
        ))
    }

    fn on_delivery(
        &self,
        delivery: &DeliveryStatus,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Vec<Output> {
        if delivery.outcome != DeliveryOutcome::Failed
            || delivery.error_code != Some(TWILIO_OPTED_OUT)
        {
            return Vec::new();
        }
        let Some(contact) = state
            .get(&contact_key(&delivery.conversation_id))
            .and_then(|s| s.contact.clone())
        else {
            self.metrics.count("unattributed_21610", Channel::Unknown);
            tracing::warn!(
                conversation_id = %delivery.conversation_id,
                operation_id = %delivery.operation_id,
                "Twilio 21610 for a conversation whose user is not known: opt-out not recorded"
            );
            return Vec::new();
        };
        let subject = Subject {
            scope: self.scope_for(
                contact.channel,
                &delivery.conversation_id,
                // The refused send was a Programmable Messaging one.
                delivery.conversation_id.starts_with(PM_CONVERSATION_PREFIX)
                    || delivery.kind == Some(OperationKind::SendMessage),
                contact.proxy_address.as_deref(),
            ),
            address: contact.address,
            channel: contact.channel,
            proxy: contact.proxy_address,
        };
        let (current, _) = self.effective(&subject, state);
        if current.is_some_and(|d| d.status == ConsentStatus::OptedOut) {
            return Vec::new();
        }
        self.metrics.count("twilio_opt_out", subject.channel);
        let trigger = delivery.operation_id.as_str();
        let id = compliance_event_id(ComplianceEventKind::OptOut, trigger);
        let mut out = Vec::new();
        out.extend(self.decide(
            &subject,
            ConsentStatus::OptedOut,
            ComplianceSource::TwilioError,
            delivery.at,
            None,
            &id,
            state,
        ));
        let mut details =
            BTreeMap::from([("twilio_error_code".into(), TWILIO_OPTED_OUT.to_string())]);
        if let Some(sid) = &delivery.twilio_sid {
            details.insert("twilio_sid".into(), sid.clone());
        }
        out.push(Self::compliance(
            ComplianceEventKind::OptOut,
            ComplianceSource::TwilioError,
            &subject,
            trigger,
            Some(&delivery.conversation_id),
            Some(&delivery.operation_id),
            None,
            delivery.at,
            None,
            details,
        ));
        out
    }
}

/// The audit details of a flagged (not acted on) revocation.
fn flag_details(flag: &Revocation, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("rule".to_owned(), flag.rule.name().to_owned()),
        ("matched".to_owned(), flag.matched.clone()),
        ("rule_language".to_owned(), flag.language.clone()),
        ("consent_words_version".to_owned(), version.to_owned()),
    ])
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Implied => "implied",
        Policy::Explicit => "explicit",
    }
}

/// The participant's channel, else the event's.
fn channel_of(event: &ConversationEvent) -> Channel {
    event
        .participant
        .as_ref()
        .map(|p| p.channel)
        .filter(|c| *c != Channel::Unknown)
        .unwrap_or(event.channel)
}

impl Processor for ConsentProcessor {
    type Input = ConsentInput;
    type State = ConsentProcessorState;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: ConsentInput,
        state: &mut StateStore<ConsentProcessorState>,
    ) -> Result<Vec<Output>, ProcessError> {
        match input {
            // Compliance events about the conversation are also named on
            // its own topic (COMPLIANCE_RECORDED), for its archive.
            ConsentInput::Event(event) => self
                .on_event(ctx, &event, state)
                .map(|outputs| with_recorded(outputs, &event.session_id, ctx.timestamp_ms)),
            ConsentInput::Delivery(delivery) => Ok(self.on_delivery(&delivery, state)),
        }
    }
}

#[cfg(test)]
#[path = "processor_tests.rs"]
mod tests;
