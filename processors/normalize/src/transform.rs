//! The transform: one [`TwilioWebhook`] and the partition's state in, at most
//! one [`ConversationEvent`] (plus participant directory entries) out.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use si_consent_gate::{ANY_SCOPE, ConsentGate, has_consent, sender};
use si_runtime::mask::Masked;
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::records::{
    BoundParticipant, CallEvent, Channel, ComplianceTags, ConsentStatus, ConversationBinding,
    ConversationEvent, ConversationEventType, ConversationState, DeliveryState, DeliveryUpdate,
    EventSource, IdentityRecord, LocaleSource, Location, MediaRef, MessageReceived, NormalizeState,
    NormalizeStateKind, PM_CONVERSATION_PREFIX, Participant, ParticipantBinding, ParticipantChange,
    RecordingAvailable, SeenEvent, StateChange, TranscriptionEvent, TwilioWebhook, WebhookRoute,
    is_programmable_messaging,
};
use si_schemas::topics;

use crate::address::Address;
use si_catalog::locale_of_region;

mod voice;
use crate::ids::{self, AddressHasher};
use crate::params::Params;

/// What the transform needs besides its input.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a Twilio event is remembered for de-duplication.
    pub dedup_window: Duration,
    /// How long a conversation's binding is kept after its last event.
    pub session_ttl: Duration,
    /// Locale when nothing better is known.
    pub default_locale: String,
    /// Conversations authors that are Si (their messages are MESSAGE_SENT).
    pub si_authors: Vec<String>,
    /// Keyed hashing of addresses (visitor ids, messaging conversation ids).
    pub hasher: AddressHasher,
    /// The Messaging Service Programmable Messaging replies go through, as
    /// segment's: the consent scope of the compliance tags.
    pub messaging_service_sid: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            default_locale: "en".into(),
            si_authors: vec!["si".into(), "system".into()],
            hasher: AddressHasher::new(b""),
            messaging_service_sid: None,
        }
    }
}

/// Counters of the transform (no addresses or SIDs as labels).
#[derive(Debug, Clone)]
pub struct NormalizeMetrics {
    /// Events written, by event type.
    pub events: IntCounterVec,
    /// Webhooks that produced no event: `duplicate` or why they were skipped.
    pub dropped: IntCounterVec,
}

impl NormalizeMetrics {
    /// Creates the counters and registers them in `registry`.
    ///
    /// # Errors
    /// When they are registered twice.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new("si_normalize_events_total", "Conversation events written"),
            &["event_type"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "si_normalize_dropped_total",
                "Webhooks that yielded no event (duplicates, pre-events, unknown types)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Self { events, dropped })
    }

    /// Counters registered nowhere (tests, benches).
    ///
    /// # Panics
    /// Never: the definitions are static.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry")
    }
}

/// The normalize processor.
#[derive(Debug, Clone)]
pub struct Normalizer {
    settings: Settings,
    identity: GlobalTable<IdentityRecord>,
    directory: GlobalTable<ParticipantBinding>,
    metrics: NormalizeMetrics,
    /// The consent tables, for the compliance tags; without them the tags
    /// are null ("not evaluated").
    consent: Option<ConsentGate>,
}

/// Which Twilio event a webhook is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MessageAdded,
    DeliveryUpdated,
    ParticipantAdded,
    ParticipantRemoved,
    ConversationAdded,
    ConversationStateUpdated,
    MessagingInbound,
    MessagingStatus,
    CallStatus,
    /// The answer webhook of a call (ingress served the disclosure on it).
    CallAnswer,
    Gather,
    Recording,
    /// A recording transcription (`TranscriptionText`).
    Transcription,
    /// A real-time transcription callback (`TranscriptionEvent`).
    RealtimeTranscription,
}

impl Kind {
    /// The event-type part of the dedup key.
    fn dedup_name(self) -> &'static str {
        match self {
            Self::MessageAdded => "onMessageAdded",
            Self::DeliveryUpdated => "onDeliveryUpdated",
            Self::ParticipantAdded => "onParticipantAdded",
            Self::ParticipantRemoved => "onParticipantRemoved",
            Self::ConversationAdded => "onConversationAdded",
            Self::ConversationStateUpdated => "onConversationStateUpdated",
            Self::MessagingInbound => "MessageInbound",
            Self::MessagingStatus => "MessageStatus",
            Self::CallStatus => "CallStatus",
            Self::CallAnswer => "CallAnswer",
            Self::Gather => "Gather",
            Self::Recording => "RecordingStatus",
            Self::Transcription => "Transcription",
            Self::RealtimeTranscription => "RealtimeTranscription",
        }
    }

    /// The parameter naming the status for status-like events (part of the dedup key).
    fn status_param(self) -> Option<&'static str> {
        match self {
            Self::DeliveryUpdated => Some("Status"),
            Self::ConversationStateUpdated => Some("StateTo"),
            Self::MessagingStatus => Some("MessageStatus"),
            Self::CallStatus => Some("CallStatus"),
            Self::Recording => Some("RecordingStatus"),
            Self::Transcription => Some("TranscriptionStatus"),
            _ => None,
        }
    }
}

/// Why a webhook yields no event (a metric label).
type Skip = &'static str;

fn classify(webhook: &TwilioWebhook, params: &Params) -> Result<Kind, Skip> {
    let event_type = params.get("EventType").or(webhook.event_type.as_deref());
    Ok(match webhook.route {
        WebhookRoute::ConversationsPostEvent => match event_type {
            Some("onMessageAdded") => Kind::MessageAdded,
            Some("onDeliveryUpdated") => Kind::DeliveryUpdated,
            Some("onParticipantAdded") => Kind::ParticipantAdded,
            Some("onParticipantRemoved") => Kind::ParticipantRemoved,
            Some("onConversationAdded") => Kind::ConversationAdded,
            Some("onConversationStateUpdated") => Kind::ConversationStateUpdated,
            _ => return Err("unhandled_conversations_event"),
        },
        WebhookRoute::ConversationsPreEvent => return Err("pre_event"),
        WebhookRoute::MessagingInbound => Kind::MessagingInbound,
        WebhookRoute::MessagingStatus => Kind::MessagingStatus,
        WebhookRoute::VoiceStatus => Kind::CallStatus,
        WebhookRoute::VoiceAnswer => Kind::CallAnswer,
        WebhookRoute::VoiceGather => Kind::Gather,
        WebhookRoute::RecordingStatus => Kind::Recording,
        WebhookRoute::Transcription if params.get("TranscriptionEvent").is_some() => {
            Kind::RealtimeTranscription
        }
        WebhookRoute::Transcription => Kind::Transcription,
        WebhookRoute::Unknown => return Err("unknown_route"),
    })
}

/// The dedup key: the idempotency token when Twilio sent one, else resource SID +
/// event type (+ status for status-like events); the webhook id when there is no SID.
fn dedup_key(webhook: &TwilioWebhook, params: &Params, kind: Kind) -> String {
    let token = webhook
        .idempotency_token
        .as_deref()
        .or_else(|| {
            webhook
                .headers
                .get("i-twilio-idempotency-token")
                .map(String::as_str)
        })
        .filter(|t| !t.trim().is_empty());
    if let Some(token) = token {
        return token.to_owned();
    }
    let sid = match kind {
        // Most specific SID of what the event is about.
        Kind::DeliveryUpdated => params
            .get("DeliveryReceiptSid")
            .or_else(|| params.get("MessageSid")),
        Kind::ParticipantAdded | Kind::ParticipantRemoved => params.get("ParticipantSid"),
        Kind::ConversationAdded | Kind::ConversationStateUpdated => params.get("ConversationSid"),
        Kind::Transcription | Kind::RealtimeTranscription => params.get("TranscriptionSid"),
        _ => None,
    }
    .or(webhook.resource_sid.as_deref())
    .or_else(|| {
        [
            "MessageSid",
            "SmsSid",
            "RecordingSid",
            "CallSid",
            "ParticipantSid",
            "ConversationSid",
        ]
        .iter()
        .find_map(|n| params.get(n))
    });
    let Some(sid) = sid else {
        return format!("webhook:{}", webhook.webhook_id);
    };
    let mut key = format!("{sid}:{}", kind.dedup_name());
    // A status callback names its status `MessageStatus`, older ones only
    // `SmsStatus` (which the event reads too).
    let status = kind.status_param().and_then(|p| params.get(p)).or_else(|| {
        (kind == Kind::MessagingStatus)
            .then(|| params.get("SmsStatus"))
            .flatten()
    });
    if let Some(status) = status {
        key.push(':');
        key.push_str(status);
    }
    if kind == Kind::RealtimeTranscription {
        // One TranscriptionSid covers the whole call: each callback is one
        // event of it, numbered by SequenceId.
        for part in [params.get("TranscriptionEvent"), params.get("SequenceId")] {
            key.push(':');
            key.push_str(part.unwrap_or(""));
        }
    }
    if kind == Kind::Gather {
        // Two gathers on one call differ by what was said.
        let said = params
            .get("SpeechResult")
            .or_else(|| params.get("Digits"))
            .unwrap_or("");
        key.push(':');
        key.push_str(&ids::event_id(said)[..8]);
    }
    key
}

/// The state key of a seen event: `s|` and a 128-bit digest of the dedup key
/// in hex, 34 bytes whatever the key's length (tokens and SID keys run to
/// 40–80 bytes).
#[must_use]
pub fn seen_key(dedup_key: &str) -> String {
    format!("s|{}", ids::dedup_digest(dedup_key))
}

/// The state key of a seen event as releases before the digest wrote it.
/// Such entries are still honoured until they expire (at most the
/// `DEDUP_WINDOW` of that release after the upgrade); then this lookup can go.
fn legacy_seen_key(dedup_key: &str) -> String {
    format!("seen|{dedup_key}")
}

/// The state key of a conversation's session binding.
#[must_use]
pub fn conversation_key(conversation_id: &str) -> String {
    format!("conv|{conversation_id}")
}

/// The session binding kept for a conversation, if any.
fn binding_of(
    state: &StateStore<NormalizeState>,
    conversation_id: &str,
) -> Option<ConversationBinding> {
    state
        .get(&conversation_key(conversation_id))
        .and_then(|s| s.conversation.clone())
}

fn require<'a>(params: &'a Params, name: &str) -> Result<&'a str, ProcessError> {
    params
        .get(name)
        .ok_or_else(|| ProcessError::Invalid(format!("required parameter {name} is missing")))
}

/// The first of `names` the webhook carries (a Messaging callback names some
/// parameters twice: `MessageSid` and the older `SmsSid`), else invalid.
fn require_any<'a>(params: &'a Params, names: &[&str]) -> Result<&'a str, ProcessError> {
    names
        .iter()
        .find_map(|name| params.get(name))
        .ok_or_else(|| {
            ProcessError::Invalid(format!(
                "required parameter {} is missing",
                names.first().copied().unwrap_or_default()
            ))
        })
}

/// Twilio's ISO 8601 times (`2019-12-19T21:17:12.000Z`) in ms; `None` otherwise.
fn parse_time(value: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(value.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// When a Conversations resource last changed: its `DateUpdated`, else its
/// `DateCreated` (ms).
fn last_changed(params: &Params) -> Option<i64> {
    params
        .get("DateUpdated")
        .or_else(|| params.get("DateCreated"))
        .and_then(parse_time)
}

fn upper_symbol(value: &str) -> String {
    value.trim().replace('-', "_").to_ascii_uppercase()
}

fn conversation_state(value: &str) -> ConversationState {
    upper_symbol(value)
        .parse()
        .unwrap_or(ConversationState::Unknown)
}

/// Conversations `Media`: a JSON list of `{Sid, Filename, ContentType, Size}`.
fn conversations_media(params: &Params) -> Result<Vec<MediaRef>, ProcessError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Media {
        sid: Option<String>,
        filename: Option<String>,
        content_type: Option<String>,
        size: Option<i64>,
    }
    let Some(json) = params.get("Media") else {
        return Ok(Vec::new());
    };
    let items: Vec<Media> = serde_json::from_str(json)
        .map_err(|e| ProcessError::Invalid(format!("Media is not a JSON list of media: {e}")))?;
    Ok(items
        .into_iter()
        .map(|m| MediaRef {
            sid: m.sid,
            url: None,
            content_type: m.content_type,
            size_bytes: m.size,
            filename: m.filename,
        })
        .collect())
}

/// Programmable Messaging media: `MediaUrl{N}` and `MediaContentType{N}` (at most 10).
fn messaging_media(params: &Params) -> Vec<MediaRef> {
    let declared = params.number::<usize>("NumMedia");
    (0..declared.unwrap_or(10).min(10))
        .map_while(|i| {
            let url = params.get(&format!("MediaUrl{i}"))?;
            Some(MediaRef {
                sid: None,
                url: Some(url.to_owned()),
                content_type: params
                    .get(&format!("MediaContentType{i}"))
                    .map(str::to_owned),
                size_bytes: None,
                filename: None,
            })
        })
        .collect()
}

/// A shared location (WhatsApp `Latitude`, `Longitude`, `Address`, `Label`):
/// only with both coordinates, each a finite number in its range.
fn messaging_location(params: &Params) -> Option<Location> {
    let degrees = |name: &str, limit: f64| {
        params
            .get(name)?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && d.abs() <= limit)
    };
    Some(Location {
        latitude: degrees("Latitude", 90.0)?,
        longitude: degrees("Longitude", 180.0)?,
        address: given(params, "Address"),
        label: given(params, "Label"),
    })
}

/// A WhatsApp parameter that is present and not blank.
fn given(params: &Params, name: &str) -> Option<String> {
    params
        .get(name)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A locale named in Conversations attributes (`{"locale": "es-MX"}`).
fn attribute_locale(attributes: Option<&str>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(attributes?).ok()?;
    ["locale", "language", "lang"]
        .iter()
        .find_map(|k| value.get(k)?.as_str())
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.len() <= 35)
        .map(str::to_owned)
}

/// Who an event is about, before identity resolution.
#[derive(Debug, Clone, Default)]
struct Party {
    address: Option<Address>,
    proxy: Option<Address>,
    participant_sid: Option<String>,
    identity: Option<String>,
    attribute_locale: Option<String>,
}

impl Party {
    fn from_bound(b: &BoundParticipant) -> Self {
        Self {
            address: b.address.as_deref().map(|a| Address {
                channel: b.channel,
                ..Address::parse(a)
            }),
            proxy: b.proxy_address.as_deref().map(Address::parse),
            participant_sid: b.participant_sid.clone(),
            identity: b.identity.clone(),
            attribute_locale: b.locale.clone(),
        }
    }

    fn channel(&self) -> Channel {
        self.address.as_ref().map_or(Channel::Chat, |a| a.channel)
    }

    fn bound(&self) -> BoundParticipant {
        BoundParticipant {
            participant_sid: self.participant_sid.clone(),
            address: self.address.as_ref().and_then(|a| a.e164.clone()),
            channel: self.channel(),
            proxy_address: self.proxy.as_ref().and_then(|p| p.e164.clone()),
            identity: self.identity.clone(),
            locale: self.attribute_locale.clone(),
        }
    }
}

/// Everything kind-specific of an event.
struct Draft {
    event_type: ConversationEventType,
    source: EventSource,
    channel: Option<Channel>,
    conversation_id: String,
    party: Option<Party>,
    occurred_at: Option<i64>,
    message: Option<MessageReceived>,
    delivery: Option<DeliveryUpdate>,
    participant_change: Option<ParticipantChange>,
    state_change: Option<StateChange>,
    call: Option<CallEvent>,
    recording: Option<RecordingAvailable>,
    transcription: Option<TranscriptionEvent>,
    /// What the event does to the conversation's participants.
    membership: Membership,
    /// The session of the conversation when the webhook's context knows it
    /// (a call linked to a text conversation); else the conversation's own.
    session: Option<String>,
    /// The call whose link to the conversation the event renews.
    call_sid: Option<String>,
    /// An earlier event of the call showed its recording disclosure played.
    disclosed_earlier: bool,
}

enum Membership {
    None,
    /// A participant joined (directory entry published).
    Join,
    /// A participant left (directory entry deactivated).
    Leave,
    /// A messaging user seen; joins when not known yet.
    Seen,
}

impl Draft {
    fn new(
        event_type: ConversationEventType,
        source: EventSource,
        conversation_id: String,
    ) -> Self {
        Self {
            event_type,
            source,
            channel: None,
            conversation_id,
            party: None,
            occurred_at: None,
            message: None,
            delivery: None,
            participant_change: None,
            state_change: None,
            call: None,
            recording: None,
            transcription: None,
            membership: Membership::None,
            session: None,
            call_sid: None,
            disclosed_earlier: false,
        }
    }

    /// Whether the call's recording disclosure is known to have been
    /// played: this event is a disclosure step (ingress plays it on every
    /// call a person answers, then asks), a recording or a transcription
    /// (made only after the caller accepted), or an earlier one of the call
    /// was.
    fn recording_disclosed(&self) -> bool {
        self.disclosed_earlier
            || self.call.as_ref().is_some_and(|c| c.disclosure.is_some())
            || self.recording.is_some()
            || self.transcription.is_some()
    }

    /// A Messaging webhook's party: the user, on their channel, and the
    /// number of ours they wrote to (or we wrote from); a user seen.
    fn messaging_user(&mut self, user: Address, proxy: Option<Address>) {
        self.channel = Some(user.channel);
        self.party = Some(Party {
            address: Some(user),
            proxy,
            ..Party::default()
        });
        self.membership = Membership::Seen;
    }
}

impl Normalizer {
    /// A normalizer over the identity table and the participant directory.
    #[must_use]
    pub fn new(
        settings: Settings,
        identity: GlobalTable<IdentityRecord>,
        directory: GlobalTable<ParticipantBinding>,
        metrics: NormalizeMetrics,
    ) -> Self {
        Self {
            settings,
            identity,
            directory,
            metrics,
            consent: None,
        }
    }

    /// The same normalizer, tagging events with the consent the tables of
    /// `gate` hold ([`ComplianceTags`]).
    #[must_use]
    pub fn with_consent(self, gate: ConsentGate) -> Self {
        Self {
            consent: Some(gate),
            ..self
        }
    }

    /// The compliance state known now ([`ComplianceTags`]): the consent of a
    /// participant on SMS or WhatsApp toward the sender it talks to (the
    /// Messaging Service for Programmable Messaging when set, else our
    /// number it wrote to; decisions for every sender count too), and for a
    /// call's events from its first disclosure step, recording or
    /// transcription on that the recording disclosure was played
    /// ([`Draft::recording_disclosed`]). `None` when neither applies, or
    /// without the consent tables.
    fn compliance(
        &self,
        participant: Option<&Participant>,
        draft: &Draft,
    ) -> Option<ComplianceTags> {
        let gate = self.consent.as_ref()?;
        let conversation_id = draft.conversation_id.as_str();
        let recording_disclosed = draft.recording_disclosed().then_some(true);
        let consent_status = participant
            .filter(|p| has_consent(p.channel))
            .and_then(|p| {
                let address = p.address.as_deref()?;
                let scope = sender(
                    p.channel,
                    conversation_id,
                    is_programmable_messaging(conversation_id, draft.source),
                    p.proxy_address.as_deref(),
                    self.settings.messaging_service_sid.as_deref(),
                )
                .map_or_else(|| ANY_SCOPE.to_owned(), |s| s.scope);
                Some(
                    gate.effective(p.channel, address, &scope)
                        .map_or(ConsentStatus::Unknown, |decision| decision.status),
                )
            });
        if consent_status.is_none() && recording_disclosed.is_none() {
            return None;
        }
        Some(ComplianceTags {
            consent_status: consent_status.unwrap_or(ConsentStatus::Unknown),
            recording_disclosed,
        })
    }

    /// The identity record of an address: its own channel's entry, else the
    /// entry of the same number on SMS, then WhatsApp (one number is one person:
    /// a caller is usually the SMS or WhatsApp user of the same number).
    fn identity_of(&self, address: &Address) -> Option<Arc<IdentityRecord>> {
        let e164 = address.e164.as_deref()?;
        [address.channel, Channel::Sms, Channel::Whatsapp]
            .into_iter()
            .find_map(|channel| self.identity.get(&channel.address_key(e164)))
    }

    /// The directory binding of (user, proxy), if any.
    fn directory_binding(
        &self,
        user: &Address,
        proxy: Option<&Address>,
    ) -> Option<Arc<ParticipantBinding>> {
        let e164 = user.e164.as_deref()?;
        let key = format!(
            "{}|{}",
            user.channel.address_key(e164),
            proxy.and_then(|p| p.e164.as_deref()).unwrap_or("")
        );
        self.directory.get(&key)
    }

    /// The session of a conversation Si started: lifecycle bound the pair to
    /// the conversation and the issuer's session in the directory before the
    /// user's first message, so that message joins that session.
    fn directory_session(&self, draft: &Draft) -> Option<String> {
        let party = draft.party.as_ref()?;
        let bound = self.directory_binding(party.address.as_ref()?, party.proxy.as_ref())?;
        (bound.active && bound.conversation_id == draft.conversation_id)
            .then(|| bound.session_id.clone())
    }

    /// The conversation a Twilio ConversationSid is filed under: the id Si
    /// started it under when lifecycle aliased it in the directory
    /// (`alias:<sid>`, active), else the SID itself.
    fn conversation_of_sid(&self, sid: &str) -> String {
        self.directory
            .get(&ParticipantBinding::alias_key(sid))
            .filter(|a| a.active)
            .map_or_else(|| sid.to_owned(), |a| a.conversation_id.clone())
    }

    /// The session Si started an aliased Twilio Conversation with.
    fn alias_session(&self, params: &Params, conversation_id: &str) -> Option<String> {
        let sid = params.get("ConversationSid")?;
        self.directory
            .get(&ParticipantBinding::alias_key(sid))
            .filter(|a| a.active && a.conversation_id == conversation_id)
            .map(|a| a.session_id.clone())
    }

    /// The conversation of a Programmable Messaging webhook; see the crate docs.
    fn messaging_conversation(
        &self,
        webhook: &TwilioWebhook,
        params: &Params,
        user: &Address,
        proxy: Option<&Address>,
    ) -> String {
        if let Some(hint) = webhook
            .conversation_hint
            .as_deref()
            .filter(|h| !h.is_empty())
        {
            return hint.to_owned();
        }
        if let Some(sid) = params.get("ConversationSid") {
            return self.conversation_of_sid(sid);
        }
        let binding = self.directory_binding(user, proxy);
        if let Some(bound) = binding.as_ref().filter(|b| b.active) {
            return bound.conversation_id.clone();
        }
        let (channel, user, proxy) = (
            user.channel.key_prefix(),
            user.e164.as_deref().unwrap_or(&user.bare),
            proxy.map_or("", |p| p.e164.as_deref().unwrap_or(&p.bare)),
        );
        match binding {
            // Lifecycle closed the pair's previous conversation (and marked the
            // binding inactive): the next message starts a new conversation,
            // with a new id and so a new session.
            Some(closed) if closed.conversation_id.starts_with(PM_CONVERSATION_PREFIX) => self
                .settings
                .hasher
                .messaging_conversation_after(channel, user, proxy, closed.updated_at),
            _ => self
                .settings
                .hasher
                .messaging_conversation(channel, user, proxy),
        }
    }

    fn find_party(
        binding: &ConversationBinding,
        sid: Option<&str>,
        address: Option<&Address>,
    ) -> Option<Party> {
        binding
            .participants
            .iter()
            .find(|b| {
                sid.is_some_and(|s| b.participant_sid.as_deref() == Some(s))
                    || address.is_some_and(|a| a.e164.is_some() && b.address == a.e164)
                    || address.is_some_and(|a| {
                        a.e164.is_none() && b.identity.as_deref() == Some(a.bare.as_str())
                    })
            })
            .map(Party::from_bound)
    }

    /// The event a webhook describes, by its family (voice in [`voice`]).
    fn draft(
        &self,
        kind: Kind,
        webhook: &TwilioWebhook,
        params: &Params,
        state: &StateStore<NormalizeState>,
    ) -> Result<Result<Draft, Skip>, ProcessError> {
        let draft = match kind {
            Kind::MessageAdded => self.message_added(params, state)?,
            Kind::DeliveryUpdated => self.delivery_updated(params, state)?,
            Kind::ParticipantAdded | Kind::ParticipantRemoved => {
                self.participant_changed(kind, params, state)?
            }
            Kind::ConversationAdded => self.conversation_added(params)?,
            Kind::ConversationStateUpdated => self.conversation_state_updated(params)?,
            Kind::MessagingInbound => self.messaging_inbound(webhook, params)?,
            Kind::MessagingStatus => self.messaging_status(webhook, params)?,
            Kind::CallStatus
            | Kind::CallAnswer
            | Kind::Gather
            | Kind::Recording
            | Kind::Transcription
            | Kind::RealtimeTranscription => return self.voice_draft(kind, webhook, params, state),
        };
        Ok(Ok(draft))
    }

    /// A message added to a conversation: the user's (SMS, WhatsApp, or an
    /// author that is not Si) or Si's own.
    fn message_added(
        &self,
        params: &Params,
        state: &StateStore<NormalizeState>,
    ) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let conversation = self.conversation_of_sid(require(params, "ConversationSid")?);
        let message_sid = require(params, "MessageSid")?.to_owned();
        let binding = binding_of(state, &conversation);
        let author = params.get("Author").map(Address::parse);
        let source = params.get("Source").map(str::to_ascii_uppercase);
        let from_user = match source.as_deref() {
            Some("SMS" | "WHATSAPP") => true,
            _ => author.as_ref().is_some_and(|a| {
                !self
                    .settings
                    .si_authors
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&a.bare))
            }),
        };
        let mut draft = Draft::new(
            if from_user {
                T::MessageReceived
            } else {
                T::MessageSent
            },
            EventSource::Conversations,
            conversation,
        );
        let sid = params.get("ParticipantSid");
        draft.party = if from_user {
            let known = binding
                .as_ref()
                .and_then(|b| Self::find_party(b, sid, author.as_ref()));
            Some(known.unwrap_or_else(|| {
                Party {
                    address: author.clone(),
                    participant_sid: sid.map(str::to_owned),
                    identity: author
                        .as_ref()
                        .filter(|a| !a.is_phone())
                        .map(|a| a.bare.clone()),
                    ..Party::default()
                }
            }))
        } else {
            binding
                .as_ref()
                .and_then(|b| b.participants.first())
                .map(Party::from_bound)
        };
        draft.channel = Some(match source.as_deref() {
            Some("SMS") => Channel::Sms,
            Some("WHATSAPP") => Channel::Whatsapp,
            Some("SDK") if from_user => Channel::Chat,
            _ => draft
                .party
                .as_ref()
                .map_or(Channel::Unknown, Party::channel),
        });
        draft.occurred_at = params.get("DateCreated").and_then(parse_time);
        draft.message = Some(MessageReceived {
            message_sid,
            index: params.number("Index"),
            author: author.map(|a| a.e164.unwrap_or(a.bare)),
            body: params.get("Body").map(str::to_owned),
            media: conversations_media(params)?,
            attributes_json: params.get("Attributes").map(str::to_owned),
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        });
        Ok(draft)
    }

    /// A Conversations message's delivery receipt.
    fn delivery_updated(
        &self,
        params: &Params,
        state: &StateStore<NormalizeState>,
    ) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let conversation = self.conversation_of_sid(require(params, "ConversationSid")?);
        let message_sid = require(params, "MessageSid")?.to_owned();
        let status = require(params, "Status")?;
        let binding = binding_of(state, &conversation);
        let mut draft = Draft::new(T::DeliveryUpdated, EventSource::Conversations, conversation);
        draft.party = binding
            .as_ref()
            .and_then(|b| Self::find_party(b, params.get("ParticipantSid"), None));
        draft.channel = draft.party.as_ref().map(Party::channel);
        draft.occurred_at = last_changed(params);
        draft.delivery = Some(DeliveryUpdate {
            message_sid,
            channel_message_sid: params.get("ChannelMessageSid").map(str::to_owned),
            status: upper_symbol(status)
                .parse()
                .unwrap_or(DeliveryState::Unknown),
            error_code: params.number::<i32>("ErrorCode").filter(|c| *c != 0),
            error_message: params.get("ErrorMessage").map(str::to_owned),
        });
        Ok(draft)
    }

    /// A participant joined or left a conversation.
    fn participant_changed(
        &self,
        kind: Kind,
        params: &Params,
        state: &StateStore<NormalizeState>,
    ) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let conversation = self.conversation_of_sid(require(params, "ConversationSid")?);
        let participant_sid = require(params, "ParticipantSid")?.to_owned();
        let address = params.get("MessagingBinding.Address").map(Address::parse);
        let proxy = params
            .get("MessagingBinding.ProxyAddress")
            .map(Address::parse);
        let identity = params.get("Identity").map(str::to_owned);
        let joined = kind == Kind::ParticipantAdded;
        let mut draft = Draft::new(
            if joined {
                T::ParticipantJoined
            } else {
                T::ParticipantLeft
            },
            EventSource::Conversations,
            conversation,
        );
        let known = binding_of(state, &draft.conversation_id)
            .and_then(|b| Self::find_party(&b, Some(&participant_sid), None));
        let party = Party {
            address: address
                .clone()
                .or_else(|| known.as_ref().and_then(|k| k.address.clone())),
            proxy: proxy
                .clone()
                .or_else(|| known.as_ref().and_then(|k| k.proxy.clone())),
            participant_sid: Some(participant_sid.clone()),
            identity: identity.clone(),
            attribute_locale: attribute_locale(params.get("Attributes"))
                .or_else(|| known.and_then(|k| k.attribute_locale)),
        };
        draft.channel = Some(if party.address.is_none() && identity.is_some() {
            Channel::Chat
        } else {
            party.channel()
        });
        draft.participant_change = Some(ParticipantChange {
            participant_sid,
            identity,
            address: party.address.as_ref().and_then(|a| a.e164.clone()),
            proxy_address: party.proxy.as_ref().and_then(|a| a.e164.clone()),
        });
        draft.party = Some(party);
        draft.occurred_at = params.get("DateCreated").and_then(parse_time);
        draft.membership = if joined {
            Membership::Join
        } else {
            Membership::Leave
        };
        Ok(draft)
    }

    /// A conversation was created.
    fn conversation_added(&self, params: &Params) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let conversation = self.conversation_of_sid(require(params, "ConversationSid")?);
        let mut draft = Draft::new(
            T::ConversationStarted,
            EventSource::Conversations,
            conversation,
        );
        draft.state_change = params.get("State").map(|s| StateChange {
            state_from: None,
            state_to: conversation_state(s),
            reason: None,
        });
        if let Some(address) = params.get("MessagingBinding.Address").map(Address::parse) {
            draft.channel = Some(address.channel);
            draft.party = Some(Party {
                address: Some(address),
                proxy: params
                    .get("MessagingBinding.ProxyAddress")
                    .map(Address::parse),
                ..Party::default()
            });
        }
        draft.occurred_at = params.get("DateCreated").and_then(parse_time);
        Ok(draft)
    }

    /// A conversation's state changed (active, inactive, closed).
    fn conversation_state_updated(&self, params: &Params) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let conversation = self.conversation_of_sid(require(params, "ConversationSid")?);
        let to = require(params, "StateTo")?;
        let mut draft = Draft::new(
            T::ConversationStateChanged,
            EventSource::Conversations,
            conversation,
        );
        draft.state_change = Some(StateChange {
            state_from: params.get("StateFrom").map(conversation_state),
            state_to: conversation_state(to),
            reason: params.get("Reason").map(str::to_owned),
        });
        draft.occurred_at = last_changed(params);
        Ok(draft)
    }

    /// An inbound SMS or WhatsApp message on the Messaging API.
    fn messaging_inbound(
        &self,
        webhook: &TwilioWebhook,
        params: &Params,
    ) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let message_sid = require_any(params, &["MessageSid", "SmsMessageSid"])?.to_owned();
        let user = Address::parse(require(params, "From")?);
        if !user.is_phone() {
            return Err(ProcessError::Invalid(format!(
                "From {} is not a phone address",
                Masked(&user.bare)
            )));
        }
        let proxy = params.get("To").map(Address::parse);
        let conversation = self.messaging_conversation(webhook, params, &user, proxy.as_ref());
        let mut draft = Draft::new(T::MessageReceived, EventSource::Messaging, conversation);
        draft.message = Some(MessageReceived {
            message_sid,
            index: None,
            author: user.e164.clone(),
            body: params.get("Body").map(str::to_owned),
            media: messaging_media(params),
            attributes_json: None,
            num_segments: params.number("NumSegments"),
            location: messaging_location(params),
            profile_name: given(params, "ProfileName"),
            button_payload: given(params, "ButtonPayload"),
        });
        draft.messaging_user(user, proxy);
        Ok(draft)
    }

    /// A status callback of a message sent on the Messaging API (`To` is the user).
    fn messaging_status(
        &self,
        webhook: &TwilioWebhook,
        params: &Params,
    ) -> Result<Draft, ProcessError> {
        use ConversationEventType as T;
        let message_sid = require_any(params, &["MessageSid", "SmsSid"])?.to_owned();
        let status = require_any(params, &["MessageStatus", "SmsStatus"])?;
        // A status callback is about a message we sent: To is the user.
        let user = Address::parse(require(params, "To")?);
        let proxy = params.get("From").map(Address::parse);
        let conversation = self.messaging_conversation(webhook, params, &user, proxy.as_ref());
        let mut draft = Draft::new(T::DeliveryUpdated, EventSource::Messaging, conversation);
        draft.delivery = Some(DeliveryUpdate {
            message_sid,
            channel_message_sid: None,
            status: upper_symbol(status)
                .parse()
                .unwrap_or(DeliveryState::Unknown),
            error_code: params.number::<i32>("ErrorCode").filter(|c| *c != 0),
            error_message: params.get("ErrorMessage").map(str::to_owned),
        });
        draft.messaging_user(user, proxy);
        Ok(draft)
    }

    /// Identity and locale of a party.
    fn resolve(&self, party: &Party) -> (Participant, String, LocaleSource) {
        let identity = party.address.as_ref().and_then(|a| self.identity_of(a));
        let e164 = party.address.as_ref().and_then(|a| a.e164.clone());
        let pseudonym_source = e164
            .clone()
            .or_else(|| party.identity.as_ref().map(|i| format!("chat:{i}")))
            .or_else(|| party.address.as_ref().map(|a| format!("chat:{}", a.bare)));
        let participant = Participant {
            address: e164,
            channel: party.channel(),
            user_id: identity.as_ref().map(|i| i.user_id.clone()),
            visitor_id: if identity.is_some() {
                None
            } else {
                pseudonym_source.map(|s| self.settings.hasher.visitor_id(&s))
            },
            registered: identity.is_some(),
            participant_sid: party.participant_sid.clone(),
            identity: party.identity.clone(),
            proxy_address: party.proxy.as_ref().and_then(|p| p.e164.clone()),
        };
        let (locale, source) = if let Some(l) = &party.attribute_locale {
            (l.clone(), LocaleSource::ParticipantAttribute)
        } else if let Some(l) = identity
            .as_ref()
            .and_then(|i| i.locale.clone())
            .filter(|l| !l.is_empty())
        {
            (l, LocaleSource::Identity)
        } else if let Some(l) = party
            .address
            .as_ref()
            .and_then(|a| a.region.as_deref())
            .and_then(locale_of_region)
        {
            (l.to_owned(), LocaleSource::PhoneCountry)
        } else {
            (self.settings.default_locale.clone(), LocaleSource::Default)
        };
        (participant, locale, source)
    }

    fn directory_entry(
        &self,
        binding: &ConversationBinding,
        participant: &BoundParticipant,
        active: bool,
        now: i64,
    ) -> Option<Output> {
        let address = participant.address.clone()?;
        let mut entry = ParticipantBinding {
            address,
            channel: participant.channel,
            proxy_address: participant.proxy_address.clone(),
            conversation_id: binding.conversation_id.clone(),
            session_id: binding.session_id.clone(),
            participant_sid: participant.participant_sid.clone(),
            active,
            bound_at: binding.bound_at,
            updated_at: now,
            previous_conversation_id: None,
        };
        // A re-entry: the entry this one replaces was a closed conversation.
        entry.previous_conversation_id = self.directory.get(&entry.key()).and_then(|before| {
            if before.conversation_id == entry.conversation_id {
                before.previous_conversation_id.clone()
            } else if before.active {
                None
            } else {
                Some(before.conversation_id.clone())
            }
        });
        Some(Output::new(topics::PARTICIPANTS, entry.key(), entry))
    }
}

impl Processor for Normalizer {
    type Input = TwilioWebhook;
    type State = NormalizeState;

    /// A message's delivery status is on nobody's reply path: it commits
    /// with the next inbound message, or after the commit interval.
    fn urgent(&self, outputs: &[Output]) -> bool {
        outputs.iter().any(|output| {
            output
                .record::<ConversationEvent>()
                .is_none_or(|event| event.event_type != ConversationEventType::DeliveryUpdated)
        })
    }

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        webhook: TwilioWebhook,
        state: &mut StateStore<NormalizeState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let params = Params::of(&webhook).map_err(ProcessError::Invalid)?;
        let kind = match classify(&webhook, &params) {
            Ok(kind) => kind,
            Err(reason) => {
                self.metrics.dropped.with_label_values(&[reason]).inc();
                return Ok(Vec::new());
            }
        };
        let dedup_key = dedup_key(&webhook, &params, kind);
        if self.seen_before(state, &dedup_key, &webhook) {
            self.metrics.dropped.with_label_values(&["duplicate"]).inc();
            return Ok(Vec::new());
        }
        let draft = match self.draft(kind, &webhook, &params, state)? {
            Ok(draft) => draft,
            Err(reason) => {
                self.metrics.dropped.with_label_values(&[reason]).inc();
                return Ok(Vec::new());
            }
        };
        // Times written into records come from the webhook (when ingress received
        // it), never from the record timestamp or the clock: a replay writes the
        // same bytes. The store's TTLs run on the record timestamp.
        let now = webhook.received_at;
        let (binding, directory) = self.bind(&draft, &params, state, now);
        if let Some(call_sid) = &draft.call_sid {
            link_call(state, call_sid, &draft, &binding, now);
        }
        let disclosed_now = draft
            .call_sid
            .clone()
            .filter(|_| draft.recording_disclosed() && !draft.disclosed_earlier);
        let event = self.event(ctx, &webhook, &params, &binding, draft, dedup_key);
        if let Some(call_sid) = disclosed_now {
            self.mark_for(
                state,
                &webhook,
                &event,
                &voice::call_disclosed_key(&call_sid),
                voice::CALL_BINDING_TTL,
            );
        }
        self.remember(state, &webhook, &event, binding);
        if let Some(call) = event.call.as_ref().filter(|c| c.status.has_ended()) {
            self.mark_seen(
                state,
                &webhook,
                &event,
                &voice::call_ended_key(&call.call_sid),
            );
        }
        self.metrics
            .events
            .with_label_values(&[event.event_type.as_str()])
            .inc();
        let key = event.conversation_id.clone();
        let mut outputs = Vec::with_capacity(1 + directory.len());
        outputs.push(Output::new(topics::CONVERSATION_EVENTS, key, event));
        outputs.extend(directory);
        Ok(outputs)
    }
}

/// The steps of [`Normalizer::process`], after the draft.
impl Normalizer {
    /// Whether a webhook with `dedup_key` was normalized before (a Twilio
    /// retry, or ingress's).
    fn seen_before(
        &self,
        state: &StateStore<NormalizeState>,
        dedup_key: &str,
        webhook: &TwilioWebhook,
    ) -> bool {
        let first = state
            .get(&seen_key(dedup_key))
            .or_else(|| state.get(&legacy_seen_key(dedup_key)))
            .and_then(|s| s.seen_event.as_ref());
        if let Some(first) = first {
            tracing::debug!(
                event_id = %first.event_id,
                webhook_id = %webhook.webhook_id,
                "duplicate webhook ignored"
            );
        }
        first.is_some()
    }

    /// The conversation's session binding after the event (found in the
    /// state, else new), with the directory entries its participants' and
    /// state's changes publish.
    fn bind(
        &self,
        draft: &Draft,
        params: &Params,
        state: &StateStore<NormalizeState>,
        now: i64,
    ) -> (ConversationBinding, Vec<Output>) {
        let mut binding = state
            .get(&conversation_key(&draft.conversation_id))
            .and_then(|s| s.conversation.clone())
            .unwrap_or_else(|| ConversationBinding {
                conversation_id: draft.conversation_id.clone(),
                session_id: draft
                    .session
                    .clone()
                    .or_else(|| self.directory_session(draft))
                    .or_else(|| self.alias_session(params, &draft.conversation_id))
                    .unwrap_or_else(|| ids::session_id(&draft.conversation_id)),
                bound_at: now,
                last_event_at: now,
                state: None,
                participants: Vec::new(),
            });
        binding.last_event_at = now;
        let mut directory = Vec::new();
        if let Some(party) = &draft.party {
            let bound = party.bound();
            let position = binding.participants.iter().position(|p| {
                (bound.participant_sid.is_some() && p.participant_sid == bound.participant_sid)
                    || (bound.address.is_some()
                        && p.address == bound.address
                        && p.channel == bound.channel
                        && p.proxy_address == bound.proxy_address)
            });
            match draft.membership {
                Membership::Join => {
                    match position {
                        Some(i) => binding.participants[i] = bound.clone(),
                        None => binding.participants.push(bound.clone()),
                    }
                    let active = binding.state != Some(ConversationState::Closed);
                    directory.extend(self.directory_entry(&binding, &bound, active, now));
                }
                Membership::Leave => {
                    if let Some(i) = position {
                        binding.participants.remove(i);
                    }
                    directory.extend(self.directory_entry(&binding, &bound, false, now));
                }
                Membership::Seen if position.is_none() => {
                    binding.participants.push(bound.clone());
                    directory.extend(self.directory_entry(&binding, &bound, true, now));
                }
                Membership::Seen | Membership::None => {}
            }
        }
        if let Some(change) = &draft.state_change {
            binding.state = Some(change.state_to);
            if change.state_to == ConversationState::Closed {
                for p in &binding.participants {
                    directory.extend(self.directory_entry(&binding, p, false, now));
                }
            }
        } else if draft.event_type == ConversationEventType::ConversationStarted {
            binding.state.get_or_insert(ConversationState::Active);
        }
        (binding, directory)
    }

    /// The canonical event: the draft with the conversation's session, the
    /// participant's identity and the locale (of the event's party, else of
    /// the conversation's first user).
    fn event(
        &self,
        ctx: &RecordContext<'_>,
        webhook: &TwilioWebhook,
        params: &Params,
        binding: &ConversationBinding,
        draft: Draft,
        dedup_key: String,
    ) -> ConversationEvent {
        let subject = draft
            .party
            .clone()
            .or_else(|| binding.participants.first().map(Party::from_bound));
        let (participant, locale, locale_source) = match &subject {
            Some(party) => {
                let (p, l, s) = self.resolve(party);
                (draft.party.as_ref().map(|_| p), l, s)
            }
            None => (
                None,
                self.settings.default_locale.clone(),
                LocaleSource::Default,
            ),
        };
        let channel = draft
            .channel
            .or_else(|| subject.as_ref().map(Party::channel))
            .unwrap_or(Channel::Unknown);
        let compliance = self.compliance(participant.as_ref(), &draft);
        ConversationEvent {
            event_id: ids::event_id(&dedup_key),
            conversation_id: draft.conversation_id,
            session_id: binding.session_id.clone(),
            event_type: draft.event_type,
            channel,
            source: draft.source,
            occurred_at: draft.occurred_at.unwrap_or(webhook.received_at),
            received_at: webhook.received_at,
            participant,
            locale,
            locale_source,
            account_sid: webhook
                .account_sid
                .clone()
                .or_else(|| params.get("AccountSid").map(str::to_owned)),
            webhook_id: webhook.webhook_id.clone(),
            dedup_key,
            // This record's trace context (normalize's span with traces
            // exported), else the one ingress wrote into the envelope.
            traceparent: ctx
                .traceparent
                .map(str::to_owned)
                .or_else(|| webhook.traceparent.clone()),
            compliance,
            message: draft.message,
            delivery: draft.delivery,
            participant_change: draft.participant_change,
            state_change: draft.state_change,
            call: draft.call,
            recording: draft.recording,
            transcription: draft.transcription,
            compliance_record: None,
            media_stored: None,
        }
    }

    /// The state the event leaves: the binding (a closed conversation's
    /// kept only as long as duplicates can still arrive) and the dedup
    /// marker.
    fn remember(
        &self,
        state: &mut StateStore<NormalizeState>,
        webhook: &TwilioWebhook,
        event: &ConversationEvent,
        binding: ConversationBinding,
    ) {
        let conversation_ttl = if binding.state == Some(ConversationState::Closed) {
            self.settings.dedup_window
        } else {
            self.settings.session_ttl
        };
        state.put_with_ttl(
            conversation_key(&event.conversation_id),
            NormalizeState {
                kind: NormalizeStateKind::Conversation,
                seen_event: None,
                conversation: Some(binding),
            },
            conversation_ttl,
        );
        self.mark_seen(state, webhook, event, &event.dedup_key);
    }

    /// Remembers `dedup_key` as seen (with `event`, for the dedup window).
    fn mark_seen(
        &self,
        state: &mut StateStore<NormalizeState>,
        webhook: &TwilioWebhook,
        event: &ConversationEvent,
        dedup_key: &str,
    ) {
        self.mark_for(state, webhook, event, dedup_key, self.settings.dedup_window);
    }

    /// Remembers `key` as seen with `event`, for `ttl`.
    fn mark_for(
        &self,
        state: &mut StateStore<NormalizeState>,
        webhook: &TwilioWebhook,
        event: &ConversationEvent,
        key: &str,
        ttl: Duration,
    ) {
        state.put_with_ttl(
            seen_key(key),
            NormalizeState {
                kind: NormalizeStateKind::SeenEvent,
                seen_event: Some(SeenEvent {
                    event_id: event.event_id.clone(),
                    webhook_id: webhook.webhook_id.clone(),
                    first_seen_at: webhook.received_at,
                }),
                conversation: None,
            },
            ttl,
        );
    }
}

/// The call's link to its conversation, renewed on every event of the call.
fn link_call(
    state: &mut StateStore<NormalizeState>,
    call_sid: &str,
    draft: &Draft,
    binding: &ConversationBinding,
    now: i64,
) {
    let key = voice::call_key(call_sid);
    let previous = state.get(&key).and_then(|s| s.conversation.clone());
    let participants = match (&draft.party, previous.as_ref()) {
        (Some(party), _) => vec![party.bound()],
        (None, Some(p)) => p.participants.clone(),
        (None, None) => Vec::new(),
    };
    state.put_with_ttl(
        key,
        NormalizeState {
            kind: NormalizeStateKind::Call,
            seen_event: None,
            conversation: Some(ConversationBinding {
                conversation_id: binding.conversation_id.clone(),
                session_id: binding.session_id.clone(),
                bound_at: previous.as_ref().map_or(now, |p| p.bound_at),
                last_event_at: now,
                state: None,
                participants,
            }),
        },
        voice::CALL_BINDING_TTL,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The transform for every event type, with fixtures built from the
    //! parameter names in TWILIO.md. No broker.

    use std::collections::BTreeMap;

    use si_schemas::records::{
        CallState, DeliveryState, LocaleSource, RecordingDisclosure, TranscriptionSpeaker,
        WebhookParam,
    };

    use super::*;

    const T: i64 = 1_795_000_000_000;
    const CH: &str = "CH00000000000000000000000000000001";
    const USER_WA: &str = "whatsapp:+14155550100";
    const PROXY_WA: &str = "whatsapp:+14155550199";

    fn hook(route: WebhookRoute, token: Option<&str>, params: &[(&str, &str)]) -> TwilioWebhook {
        TwilioWebhook {
            webhook_id: format!("wh-{}", token.unwrap_or("none")),
            received_at: T,
            route,
            event_type: params
                .iter()
                .find(|(k, _)| *k == "EventType")
                .map(|(_, v)| (*v).to_owned()),
            account_sid: Some("AC00000000000000000000000000000001".into()),
            resource_sid: None,
            idempotency_token: token.map(str::to_owned),
            content_type: "application/x-www-form-urlencoded".into(),
            params: params
                .iter()
                .map(|(n, v)| WebhookParam {
                    name: (*n).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            body: None,
            query: None,
            headers: BTreeMap::new(),
            conversation_hint: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }
    }

    fn conv(event: &str, token: &str, params: &[(&str, &str)]) -> TwilioWebhook {
        let mut all = vec![("EventType", event), ("ConversationSid", CH)];
        all.extend_from_slice(params);
        hook(WebhookRoute::ConversationsPostEvent, Some(token), &all)
    }

    fn normalizer() -> Normalizer {
        let identity = GlobalTable::from_entries(
            "si.identity.v1",
            [(
                "whatsapp:+14155550100".to_owned(),
                IdentityRecord {
                    address: "+14155550100".into(),
                    channel: Channel::Whatsapp,
                    user_id: "user-1".into(),
                    display_name: None,
                    locale: Some("pt-BR".into()),
                    updated_at: T,
                    attributes: BTreeMap::new(),
                },
            )],
        );
        let directory = GlobalTable::from_entries(
            "si.participants.v1",
            [(
                "sms:+16285550100|+14155550199".to_owned(),
                ParticipantBinding {
                    address: "+16285550100".into(),
                    channel: Channel::Sms,
                    proxy_address: Some("+14155550199".into()),
                    conversation_id: "CH00000000000000000000000000000077".into(),
                    session_id: "s".into(),
                    participant_sid: None,
                    active: true,
                    bound_at: T,
                    updated_at: T,
                    previous_conversation_id: None,
                },
            )],
        );
        let settings = Settings {
            hasher: AddressHasher::new(b"secret"),
            ..Settings::default()
        };
        Normalizer::new(
            settings,
            identity,
            directory,
            NormalizeMetrics::unregistered(),
        )
    }

    struct Run {
        n: Normalizer,
        store: StateStore<NormalizeState>,
    }

    impl Run {
        fn new() -> Self {
            let mut store = StateStore::new(Duration::from_secs(30 * 24 * 3600));
            store.set_now(T);
            Self {
                n: normalizer(),
                store,
            }
        }

        fn outputs(&mut self, webhook: TwilioWebhook) -> Vec<Output> {
            let ctx = RecordContext::for_test(topics::WEBHOOKS, self.store.now());
            self.n.process(&ctx, webhook, &mut self.store).unwrap()
        }

        fn event(&mut self, webhook: TwilioWebhook) -> ConversationEvent {
            let outputs = self.outputs(webhook);
            assert_eq!(outputs[0].topic(), topics::CONVERSATION_EVENTS);
            let event = outputs[0].record::<ConversationEvent>().unwrap().clone();
            assert_eq!(
                outputs[0].key(),
                event.conversation_id,
                "keyed by conversation"
            );
            event
        }

        fn directory(
            &mut self,
            webhook: TwilioWebhook,
        ) -> (ConversationEvent, Vec<ParticipantBinding>) {
            let outputs = self.outputs(webhook);
            let event = outputs[0].record::<ConversationEvent>().unwrap().clone();
            let bindings = outputs[1..]
                .iter()
                .map(|o| {
                    assert_eq!(o.topic(), topics::PARTICIPANTS);
                    let b = o.record::<ParticipantBinding>().unwrap().clone();
                    assert_eq!(o.key(), b.key());
                    b
                })
                .collect();
            (event, bindings)
        }
    }

    fn participant_added(token: &str, sid: &str, address: &str, attributes: &str) -> TwilioWebhook {
        conv(
            "onParticipantAdded",
            token,
            &[
                ("ParticipantSid", sid),
                ("MessagingBinding.Address", address),
                ("MessagingBinding.ProxyAddress", PROXY_WA),
                ("Attributes", attributes),
                ("DateCreated", "2026-11-22T10:00:00.000Z"),
            ],
        )
    }

    #[test]
    fn message_added_by_a_whatsapp_user_is_received_with_identity_media_and_ids() {
        let mut run = Run::new();
        let e = run.event(conv(
            "onMessageAdded",
            "tok-1",
            &[
                ("MessageSid", "IM00000000000000000000000000000001"),
                ("Index", "3"),
                ("Author", USER_WA),
                ("ParticipantSid", "MB1"),
                ("Source", "WHATSAPP"),
                ("Body", " Hola Si 📞 "),
                (
                    "Media",
                    r#"[{"Sid":"ME1","Filename":"a.jpg","ContentType":"image/jpeg","Size":48213}]"#,
                ),
                ("Attributes", "{}"),
                ("DateCreated", "2026-11-22T10:00:00.000Z"),
                ("RetryCount", "0"),
            ],
        ));
        assert_eq!(e.event_type, ConversationEventType::MessageReceived);
        assert_eq!(e.source, EventSource::Conversations);
        assert_eq!(e.channel, Channel::Whatsapp);
        assert_eq!(e.conversation_id, CH);
        assert_eq!(e.session_id, ids::session_id(CH));
        assert_eq!(e.dedup_key, "tok-1");
        assert_eq!(e.event_id, ids::event_id("tok-1"));
        assert_eq!(e.webhook_id, "wh-tok-1");
        assert_eq!(e.received_at, T);
        assert_eq!(e.occurred_at, parse_time("2026-11-22T10:00:00Z").unwrap());
        assert_eq!(
            e.account_sid.as_deref(),
            Some("AC00000000000000000000000000000001")
        );
        assert!(e.traceparent.as_deref().unwrap().starts_with("00-4bf9"));
        let p = e.participant.unwrap();
        assert_eq!(p.address.as_deref(), Some("+14155550100"));
        assert_eq!(p.channel, Channel::Whatsapp);
        assert_eq!(p.user_id.as_deref(), Some("user-1"));
        assert!(p.registered);
        assert_eq!(p.visitor_id, None);
        assert_eq!(
            (e.locale.as_str(), e.locale_source),
            ("pt-BR", LocaleSource::Identity)
        );
        let m = e.message.unwrap();
        assert_eq!(m.message_sid, "IM00000000000000000000000000000001");
        assert_eq!(m.index, Some(3));
        assert_eq!(m.author.as_deref(), Some("+14155550100"));
        assert_eq!(
            m.body.as_deref(),
            Some(" Hola Si 📞 "),
            "body exactly as sent"
        );
        assert_eq!(
            m.media,
            vec![MediaRef {
                sid: Some("ME1".into()),
                url: None,
                content_type: Some("image/jpeg".into()),
                size_bytes: Some(48_213),
                filename: Some("a.jpg".into()),
            }]
        );
        assert!(e.delivery.is_none() && e.call.is_none() && e.state_change.is_none());
    }

    #[test]
    fn message_added_by_si_is_sent_and_about_the_user_of_the_conversation() {
        let mut run = Run::new();
        run.outputs(participant_added(
            "tok-p",
            "MB1",
            "+447700900123",
            r#"{"locale":"en-GB"}"#,
        ));
        let e = run.event(conv(
            "onMessageAdded",
            "tok-2",
            &[
                ("MessageSid", "IM2"),
                ("Author", "si"),
                ("Source", "API"),
                ("Body", "Hello!"),
            ],
        ));
        assert_eq!(e.event_type, ConversationEventType::MessageSent);
        assert_eq!(e.channel, Channel::Sms);
        let p = e.participant.unwrap();
        assert_eq!(p.address.as_deref(), Some("+447700900123"));
        assert_eq!(p.participant_sid.as_deref(), Some("MB1"));
        assert!(!p.registered);
        assert!(p.visitor_id.unwrap().starts_with("v-"));
        assert_eq!(
            (e.locale.as_str(), e.locale_source),
            ("en-GB", LocaleSource::ParticipantAttribute)
        );
        assert_eq!(e.message.unwrap().author.as_deref(), Some("si"));
    }

    #[test]
    fn delivery_updated_carries_status_and_error() {
        let mut run = Run::new();
        run.outputs(participant_added("tok-p", "MB1", USER_WA, "{}"));
        let e = run.event(conv(
            "onDeliveryUpdated",
            "tok-3",
            &[
                ("MessageSid", "IM2"),
                ("ChannelMessageSid", "SM2"),
                ("DeliveryReceiptSid", "DY2"),
                ("ParticipantSid", "MB1"),
                ("Status", "undelivered"),
                ("ErrorCode", "30003"),
            ],
        ));
        assert_eq!(e.event_type, ConversationEventType::DeliveryUpdated);
        assert_eq!(e.channel, Channel::Whatsapp);
        let d = e.delivery.unwrap();
        assert_eq!(d.message_sid, "IM2");
        assert_eq!(d.channel_message_sid.as_deref(), Some("SM2"));
        assert_eq!(d.status, DeliveryState::Undelivered);
        assert_eq!(d.error_code, Some(30003));
        assert_eq!(e.participant.unwrap().user_id.as_deref(), Some("user-1"));
    }

    #[test]
    fn participants_joining_and_leaving_update_the_directory() {
        let mut run = Run::new();
        let (e, bindings) = run.directory(participant_added(
            "tok-a",
            "MB9",
            "whatsapp:+5215512345678",
            r#"{"locale":"es-MX"}"#,
        ));
        assert_eq!(e.event_type, ConversationEventType::ParticipantJoined);
        assert_eq!(e.channel, Channel::Whatsapp);
        let change = e.participant_change.unwrap();
        assert_eq!(change.participant_sid, "MB9");
        assert_eq!(change.address.as_deref(), Some("+5215512345678"));
        assert_eq!(change.proxy_address.as_deref(), Some("+14155550199"));
        assert_eq!(
            (e.locale.as_str(), e.locale_source),
            ("es-MX", LocaleSource::ParticipantAttribute)
        );
        assert_eq!(bindings.len(), 1);
        let b = &bindings[0];
        assert_eq!(b.key(), "whatsapp:+5215512345678|+14155550199");
        assert!(b.active);
        assert_eq!(b.conversation_id, CH);
        assert_eq!(b.session_id, e.session_id);
        assert_eq!(b.participant_sid.as_deref(), Some("MB9"));

        let (left, bindings) = run.directory(conv(
            "onParticipantRemoved",
            "tok-b",
            &[("ParticipantSid", "MB9")],
        ));
        assert_eq!(left.event_type, ConversationEventType::ParticipantLeft);
        assert_eq!(
            left.participant_change.unwrap().address.as_deref(),
            Some("+5215512345678"),
            "known from state"
        );
        assert_eq!(bindings.len(), 1);
        assert!(!bindings[0].active);
        let state = run.store.get(&conversation_key(CH)).unwrap();
        assert!(state.conversation.as_ref().unwrap().participants.is_empty());
    }

    #[test]
    fn conversation_added_and_closed() {
        let mut run = Run::new();
        let e = run.event(conv("onConversationAdded", "tok-c", &[("State", "active")]));
        assert_eq!(e.event_type, ConversationEventType::ConversationStarted);
        assert_eq!(
            e.state_change,
            Some(StateChange {
                state_from: None,
                state_to: ConversationState::Active,
                reason: None
            })
        );
        assert_eq!(
            (e.locale.as_str(), e.locale_source),
            ("en", LocaleSource::Default)
        );
        run.outputs(participant_added("tok-p", "MB1", USER_WA, "{}"));
        let (closed, bindings) = run.directory(conv(
            "onConversationStateUpdated",
            "tok-d",
            &[
                ("StateFrom", "inactive"),
                ("StateTo", "closed"),
                ("Reason", "TIMER"),
            ],
        ));
        assert_eq!(
            closed.event_type,
            ConversationEventType::ConversationStateChanged
        );
        assert_eq!(
            closed.state_change,
            Some(StateChange {
                state_from: Some(ConversationState::Inactive),
                state_to: ConversationState::Closed,
                reason: Some("TIMER".into())
            })
        );
        assert!(closed.participant.is_none(), "a state change is by nobody");
        assert_eq!(
            closed.locale, "pt-BR",
            "the conversation's user decides the locale"
        );
        assert_eq!(bindings.len(), 1);
        assert!(
            !bindings[0].active,
            "closed: the directory entry is inactive"
        );
        // A closed conversation is kept only for the dedup window.
        let expires = run.store.expires_at(&conversation_key(CH)).unwrap();
        assert_eq!(expires, T + 3600 * 1000);
    }

    fn inbound(token: Option<&str>, sid: &str, from: &str) -> TwilioWebhook {
        hook(
            WebhookRoute::MessagingInbound,
            token,
            &[
                ("MessageSid", sid),
                ("AccountSid", "AC1"),
                ("From", from),
                ("To", "+14155550199"),
                ("Body", "hola"),
                ("NumMedia", "2"),
                ("MediaUrl0", "https://api.twilio.com/m/0"),
                ("MediaContentType0", "image/png"),
                ("MediaUrl1", "https://api.twilio.com/m/1"),
                ("MediaContentType1", "audio/ogg"),
                ("NumSegments", "1"),
                ("FromCountry", "MX"),
            ],
        )
    }

    #[test]
    fn after_lifecycle_closed_the_pair_the_next_message_opens_a_new_conversation() {
        let hasher = AddressHasher::new(b"secret");
        let user = "+5215512345678";
        let old = hasher.messaging_conversation("sms", user, "+14155550199");
        let closed = ParticipantBinding {
            address: user.into(),
            channel: Channel::Sms,
            proxy_address: Some("+14155550199".into()),
            conversation_id: old.clone(),
            session_id: ids::session_id(&old),
            participant_sid: None,
            active: false,
            bound_at: T - 60_000,
            updated_at: T - 1_000,
            previous_conversation_id: None,
        };
        let directory = GlobalTable::from_entries("si.participants.v1", [(closed.key(), closed)]);
        let n = Normalizer::new(
            Settings {
                hasher: AddressHasher::new(b"secret"),
                ..Settings::default()
            },
            GlobalTable::from_entries("si.identity.v1", []),
            directory,
            NormalizeMetrics::unregistered(),
        );
        let mut run = Run::new();
        run.n = n;
        let (e, bindings) = run.directory(inbound(Some("tok-r"), "SM9", user));
        assert_ne!(e.conversation_id, old, "not the closed conversation");
        assert_eq!(
            e.conversation_id,
            hasher.messaging_conversation_after("sms", user, "+14155550199", T - 1_000)
        );
        assert_ne!(e.session_id, ids::session_id(&old), "a new session");
        assert_eq!(e.session_id, ids::session_id(&e.conversation_id));
        assert_eq!(bindings.len(), 1);
        assert!(bindings[0].active);
        assert_eq!(bindings[0].conversation_id, e.conversation_id);
        assert_eq!(
            bindings[0].previous_conversation_id.as_deref(),
            Some(old.as_str()),
            "the new entry names the closed conversation (a re-entry)"
        );
    }

    #[test]
    fn a_reply_to_a_conversation_si_started_joins_it_and_its_session() {
        // Lifecycle bound the pair to the issuer's conversation id and session.
        let user = "+5215512345678";
        let started = ParticipantBinding {
            address: user.into(),
            channel: Channel::Sms,
            proxy_address: Some("+14155550199".into()),
            conversation_id: "outreach-0001".into(),
            session_id: "session-from-the-command".into(),
            participant_sid: None,
            active: true,
            bound_at: T - 60_000,
            updated_at: T - 60_000,
            previous_conversation_id: None,
        };
        let directory = GlobalTable::from_entries("si.participants.v1", [(started.key(), started)]);
        let mut run = Run::new();
        run.n = Normalizer::new(
            Settings::default(),
            GlobalTable::from_entries("si.identity.v1", []),
            directory,
            NormalizeMetrics::unregistered(),
        );
        let (e, _) = run.directory(inbound(Some("tok-s"), "SM7", user));
        assert_eq!(e.conversation_id, "outreach-0001");
        assert_eq!(e.session_id, "session-from-the-command");
        let (again, _) = run.directory(inbound(Some("tok-t"), "SM8", user));
        assert_eq!(again.session_id, "session-from-the-command");
    }

    #[test]
    fn a_conversation_si_started_under_another_id_is_filed_under_it() {
        // Lifecycle aliased the ConversationSid Twilio created to the id and
        // session Si started the conversation with.
        let alias = ParticipantBinding {
            address: "+14155550100".into(),
            channel: Channel::Sms,
            proxy_address: Some("+14155550199".into()),
            conversation_id: "outreach-0001".into(),
            session_id: "session-from-the-command".into(),
            participant_sid: Some(CH.into()),
            active: true,
            bound_at: T - 60_000,
            updated_at: T - 50_000,
            previous_conversation_id: None,
        };
        let directory = GlobalTable::from_entries(
            "si.participants.v1",
            [(ParticipantBinding::alias_key(CH), alias)],
        );
        let mut run = Run::new();
        run.n = Normalizer::new(
            Settings::default(),
            GlobalTable::from_entries("si.identity.v1", []),
            directory,
            NormalizeMetrics::unregistered(),
        );
        let e = run.event(conv(
            "onMessageAdded",
            "tok-a",
            &[
                ("MessageSid", "IM1"),
                ("Author", "+14155550100"),
                ("Body", "Thanks!"),
                ("Source", "SMS"),
            ],
        ));
        assert_eq!(e.conversation_id, "outreach-0001");
        assert_eq!(e.session_id, "session-from-the-command");
    }

    #[test]
    fn messaging_inbound_gets_a_derived_conversation_and_a_directory_entry() {
        let mut run = Run::new();
        let (e, bindings) = run.directory(inbound(Some("tok-m"), "SM1", "+5215512345678"));
        assert_eq!(e.event_type, ConversationEventType::MessageReceived);
        assert_eq!(e.source, EventSource::Messaging);
        assert_eq!(e.channel, Channel::Sms);
        assert!(
            e.conversation_id.starts_with("pm-"),
            "{}",
            e.conversation_id
        );
        assert!(!e.conversation_id.contains("5512345678"));
        assert_eq!(
            (e.locale.as_str(), e.locale_source),
            ("es-MX", LocaleSource::PhoneCountry)
        );
        let m = e.message.as_ref().unwrap();
        assert_eq!(m.media.len(), 2);
        assert_eq!(
            m.media[1].url.as_deref(),
            Some("https://api.twilio.com/m/1")
        );
        assert_eq!(m.media[1].content_type.as_deref(), Some("audio/ogg"));
        assert_eq!(m.num_segments, Some(1));
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].key(), "sms:+5215512345678|+14155550199");
        assert_eq!(bindings[0].conversation_id, e.conversation_id);

        // The next message of the pair: same conversation, no new directory entry.
        let (again, bindings) = run.directory(inbound(Some("tok-n"), "SM2", "+5215512345678"));
        assert_eq!(again.conversation_id, e.conversation_id);
        assert_eq!(again.session_id, e.session_id);
        assert!(bindings.is_empty());

        // A status callback for our reply to that user lands in the same conversation.
        let status = run.event(hook(
            WebhookRoute::MessagingStatus,
            None,
            &[
                ("MessageSid", "SM3"),
                ("MessageStatus", "delivered"),
                ("From", "+14155550199"),
                ("To", "+5215512345678"),
            ],
        ));
        assert_eq!(status.event_type, ConversationEventType::DeliveryUpdated);
        assert_eq!(status.conversation_id, e.conversation_id);
        assert_eq!(status.dedup_key, "SM3:MessageStatus:delivered");
        assert_eq!(status.delivery.unwrap().status, DeliveryState::Delivered);
    }

    #[test]
    fn only_a_delivery_status_waits_to_commit_with_the_next_message() {
        let mut run = Run::new();
        let message = run.outputs(inbound(None, "SM1", "+16285550100"));
        assert!(
            run.n.urgent(&message),
            "a user's message is on the reply path"
        );
        let status = run.outputs(hook(
            WebhookRoute::MessagingStatus,
            None,
            &[
                ("MessageSid", "SM3"),
                ("MessageStatus", "delivered"),
                ("From", "+14155550199"),
                ("To", "+16285550100"),
            ],
        ));
        assert!(!status.is_empty(), "the status is written");
        assert!(!run.n.urgent(&status), "but nobody waits on it");
        assert!(!run.n.urgent(&[]), "nor on nothing");
    }

    #[test]
    fn messaging_uses_the_directory_and_the_callback_hint_first() {
        let mut run = Run::new();
        let e = run.event(inbound(None, "SM1", "+16285550100"));
        assert_eq!(e.conversation_id, "CH00000000000000000000000000000077");
        let mut hinted = inbound(None, "SM2", "+16285550100");
        hinted.conversation_hint = Some("CH00000000000000000000000000000099".into());
        assert_eq!(
            run.event(hinted).conversation_id,
            "CH00000000000000000000000000000099"
        );
        let wa = run.event(inbound(None, "SM3", USER_WA));
        assert_eq!(wa.channel, Channel::Whatsapp);
        assert_eq!(wa.participant.unwrap().user_id.as_deref(), Some("user-1"));
    }

    #[test]
    fn a_whatsapp_location_profile_name_and_button_are_carried() {
        let mut run = Run::new();
        let whatsapp = |sid: &str, extra: &[(&str, &str)]| {
            let mut params = vec![
                ("MessageSid", sid),
                ("From", USER_WA),
                ("To", PROXY_WA),
                ("Body", ""),
                ("NumMedia", "0"),
                ("WaId", "14155550100"),
            ];
            params.extend_from_slice(extra);
            hook(WebhookRoute::MessagingInbound, None, &params)
        };
        let shared = run.event(whatsapp(
            "SM10",
            &[
                ("Latitude", "37.7879277"),
                ("Longitude", "-122.4075129"),
                ("Address", "375 Beale St, San Francisco, CA 94105"),
                ("Label", "Twilio HQ"),
                ("ProfileName", "Ana"),
            ],
        ));
        let message = shared.message.unwrap();
        assert_eq!(
            message.location,
            Some(Location {
                latitude: 37.787_927_7,
                longitude: -122.407_512_9,
                address: Some("375 Beale St, San Francisco, CA 94105".into()),
                label: Some("Twilio HQ".into()),
            })
        );
        assert_eq!(message.profile_name.as_deref(), Some("Ana"));
        assert_eq!(message.button_payload, None);

        // A pin without a place; a tapped button.
        let pin = run.event(whatsapp(
            "SM11",
            &[
                ("Latitude", "-33.8688"),
                ("Longitude", "151.2093"),
                ("Label", " "),
            ],
        ));
        let pin = pin.message.unwrap().location.unwrap();
        assert_eq!((pin.address, pin.label), (None, None));
        let tapped = run.event(whatsapp(
            "SM12",
            &[
                ("Body", "Yes, call me"),
                ("ButtonText", "Yes, call me"),
                ("ButtonPayload", "call-yes"),
            ],
        ));
        let tapped = tapped.message.unwrap();
        assert_eq!(tapped.button_payload.as_deref(), Some("call-yes"));
        assert_eq!(tapped.profile_name, None, "not given");

        // Coordinates out of range, not numbers or one missing: no location,
        // the message itself is kept.
        for (n, bad) in [
            [("Latitude", "91"), ("Longitude", "0")],
            [("Latitude", "0"), ("Longitude", "-180.5")],
            [("Latitude", "NaN"), ("Longitude", "0")],
            [("Latitude", "inf"), ("Longitude", "0")],
            [("Latitude", "north"), ("Longitude", "0")],
            [("Latitude", "10"), ("Longitude", "")],
        ]
        .iter()
        .enumerate()
        {
            let sid = format!("SM2{n}");
            let e = run.event(whatsapp(&sid, bad));
            assert_eq!(e.message.unwrap().location, None, "{bad:?}");
        }
        let sms = run
            .event(inbound(None, "SM30", "+16285550100"))
            .message
            .unwrap();
        assert_eq!(
            (sms.location, sms.profile_name, sms.button_payload),
            (None, None, None)
        );
    }

    #[test]
    fn call_status_gather_recording_and_transcription() {
        let mut run = Run::new();
        let mut call = hook(
            WebhookRoute::VoiceStatus,
            None,
            &[
                ("CallSid", "CA1"),
                ("CallStatus", "in-progress"),
                ("Direction", "outbound-api"),
                ("From", "+14155550199"),
                ("To", "+14155550100"),
                ("AnsweredBy", "human"),
            ],
        );
        call.conversation_hint = Some(CH.into());
        let e = run.event(call);
        assert_eq!(e.event_type, ConversationEventType::CallStatusChanged);
        assert_eq!((e.channel, e.source), (Channel::Voice, EventSource::Voice));
        assert_eq!(e.conversation_id, CH);
        assert_eq!(e.dedup_key, "CA1:CallStatus:in-progress");
        let c = e.call.unwrap();
        assert_eq!(
            (c.call_sid.as_str(), c.status),
            ("CA1", CallState::InProgress)
        );
        assert_eq!(c.answered_by.as_deref(), Some("human"));
        // The answer webhook: the disclosure is played to a person, not to a
        // machine (ingress hangs up on those).
        for (answered_by, disclosed) in [("human", true), ("machine_start", false), ("fax", false)]
        {
            let answer = hook(
                WebhookRoute::VoiceAnswer,
                None,
                &[
                    ("CallSid", &format!("CA-{answered_by}")),
                    ("CallStatus", "in-progress"),
                    ("Direction", "outbound-api"),
                    ("From", "+14155550199"),
                    ("To", "+14155550100"),
                    ("AnsweredBy", answered_by),
                ],
            );
            let call = run.event(answer).call.unwrap();
            assert_eq!(
                call.disclosure == Some(RecordingDisclosure::Disclosed),
                disclosed,
                "{answered_by}"
            );
        }
        let p = e.participant.unwrap();
        assert_eq!(
            p.address.as_deref(),
            Some("+14155550100"),
            "the callee of an outbound call"
        );
        assert_eq!(
            p.user_id.as_deref(),
            Some("user-1"),
            "found through the SMS/WhatsApp identity"
        );
        let done = run.event(hook(
            WebhookRoute::VoiceStatus,
            None,
            &[
                ("CallSid", "CA2"),
                ("CallStatus", "no-answer"),
                ("From", "+14155550100"),
                ("CallDuration", "0"),
            ],
        ));
        assert_eq!(
            done.conversation_id, "call-CA2",
            "no hint: the call is its own conversation"
        );
        assert_eq!(done.call.unwrap().status, CallState::NoAnswer);

        let mut gather = hook(
            WebhookRoute::VoiceGather,
            None,
            &[("CallSid", "CA1"), ("Digits", "1")],
        );
        gather.conversation_hint = Some(CH.into());
        let accepted = run.event(gather);
        assert_eq!(
            accepted.event_type,
            ConversationEventType::CallStatusChanged
        );
        assert_eq!(accepted.conversation_id, CH);
        let c = accepted.call.unwrap();
        assert_eq!(c.disclosure, Some(RecordingDisclosure::Accepted));
        assert_eq!(c.disclosure_accepted, Some(true));
        assert_eq!(
            c.status,
            CallState::InProgress,
            "a gather is on a live call"
        );
        assert!(
            accepted.transcription.is_none(),
            "the answer is no utterance"
        );

        let rec = run.event(hook(
            WebhookRoute::RecordingStatus,
            None,
            &[
                ("CallSid", "CA1"),
                ("RecordingSid", "RE1"),
                ("RecordingUrl", "https://api.twilio.com/rec/RE1"),
                ("RecordingStatus", "completed"),
                ("RecordingDuration", "40"),
                ("RecordingChannels", "2"),
            ],
        ));
        assert_eq!(rec.event_type, ConversationEventType::RecordingAvailable);
        let r = rec.recording.unwrap();
        assert_eq!(r.recording_sid, "RE1");
        assert_eq!(r.url.as_deref(), Some("https://api.twilio.com/rec/RE1"));
        assert_eq!((r.duration_seconds, r.channels), (Some(40), Some(2)));

        let tr = run.event(hook(
            WebhookRoute::Transcription,
            None,
            &[
                ("CallSid", "CA1"),
                ("TranscriptionSid", "TR1"),
                ("TranscriptionText", "hello there"),
                ("TranscriptionStatus", "completed"),
                ("RecordingSid", "RE1"),
            ],
        ));
        let t = tr.transcription.unwrap();
        assert_eq!(t.transcription_sid.as_deref(), Some("TR1"));
        assert_eq!(t.text, "hello there");
        assert_eq!(tr.dedup_key, "TR1:Transcription:completed");
    }

    /// A voice webhook of call `CA7` (outbound, on conversation `CH`) with
    /// our URL's query.
    fn voice(route: WebhookRoute, query: &str, params: &[(&str, &str)]) -> TwilioWebhook {
        let mut all = vec![
            ("CallSid", "CA7"),
            ("Direction", "outbound-api"),
            ("From", "+14155550199"),
            ("To", "+14155550100"),
        ];
        all.extend_from_slice(params);
        let mut w = hook(route, None, &all);
        w.query = Some(query.to_owned());
        w.conversation_hint = Some(CH.into());
        w
    }

    fn disclosure(e: &ConversationEvent) -> (Option<RecordingDisclosure>, Option<bool>) {
        assert_eq!(e.event_type, ConversationEventType::CallStatusChanged);
        let c = e.call.as_ref().unwrap();
        (c.disclosure, c.disclosure_accepted)
    }

    #[test]
    fn events_carry_the_consent_in_force_and_whether_the_recording_was_disclosed() {
        use si_schemas::records::{ComplianceSource, ConsentState};
        const MX: &str = "+5215512345678";
        let decision = |address: &str, scope: &str, status, at| {
            let state = ConsentState {
                address: address.into(),
                channel: Channel::Sms,
                sender_scope: scope.into(),
                status,
                source: ComplianceSource::Keyword,
                decided_at: at,
                updated_at: at,
                keyword: None,
                event_ref: None,
            };
            (state.key(), state)
        };
        let gate = || {
            ConsentGate::from_tables(
                GlobalTable::from_entries(
                    "si.consent.v1",
                    [
                        decision(MX, "+14155550199", ConsentStatus::OptedOut, T - 1),
                        decision(MX, ANY_SCOPE, ConsentStatus::OptedIn, T - 20),
                        decision(MX, "MG1", ConsentStatus::Pending, T - 5),
                    ],
                ),
                GlobalTable::from_entries("si.consent.registry.v1", []),
            )
        };
        let tags = |e: &ConversationEvent| {
            let c = e.compliance.as_ref().unwrap();
            (c.consent_status, c.recording_disclosed)
        };
        let mut run = Run::new();
        run.n = normalizer().with_consent(gate());
        // The newest decision for our number or for every sender (not the
        // Messaging Service's, newer still).
        let e = run.event(inbound(Some("tok-c1"), "SM1", MX));
        assert_eq!(tags(&e), (ConsentStatus::OptedOut, None));
        // No decision at all: UNKNOWN, never OPTED_IN.
        let e = run.event(inbound(Some("tok-c2"), "SM2", "+5215512345600"));
        assert_eq!(tags(&e), (ConsentStatus::Unknown, None));

        // Replies through a Messaging Service are checked against its scope,
        // not our number's (newest of all here).
        let mut run = Run::new();
        run.n = Normalizer {
            settings: Settings {
                messaging_service_sid: Some("MG1".into()),
                ..run.n.settings.clone()
            },
            ..normalizer().with_consent(gate())
        };
        let e = run.event(inbound(Some("tok-c3"), "SM3", MX));
        assert_eq!(tags(&e), (ConsentStatus::Pending, None));

        // A call's events say its recording disclosure was played from its
        // first disclosure step (the answer webhook: ingress plays it to a
        // person), recording or transcription on; before, nobody knows.
        let disclosed =
            |e: &ConversationEvent| e.compliance.as_ref().and_then(|c| c.recording_disclosed);
        let q = "conversation=CH00000000000000000000000000000001&locale=en";
        let status = |status| voice(WebhookRoute::VoiceStatus, q, &[("CallStatus", status)]);
        assert_eq!(disclosed(&run.event(status("ringing"))), None);
        let answer = run.event(voice(
            WebhookRoute::VoiceAnswer,
            q,
            &[("CallStatus", "in-progress")],
        ));
        assert_eq!(disclosed(&answer), Some(true));
        assert_eq!(disclosed(&run.event(status("in-progress"))), Some(true));
        // It is remembered in the partition's state, not in the normalizer,
        // and outlives the dedup window (an hour): a call may be longer.
        run.n = Normalizer {
            settings: run.n.settings.clone(),
            ..normalizer().with_consent(gate())
        };
        run.store.set_now(T + 2 * 3600 * 1000);
        let completed = run.event(status("completed"));
        assert_eq!(
            completed.call.as_ref().unwrap().status,
            CallState::Completed
        );
        assert_eq!(disclosed(&completed), Some(true));
        // A day after the disclosure it is forgotten (Twilio ends a call
        // within 24 h).
        run.store.set_now(T + 24 * 3600 * 1000 + 1);
        let late = run.event(status("canceled"));
        assert_eq!(late.call.as_ref().unwrap().status, CallState::Canceled);
        assert_eq!(disclosed(&late), None);
        // A call a machine answered heard no disclosure (ingress hangs up).
        let machine = |route, status| {
            let mut w = hook(
                route,
                None,
                &[
                    ("CallSid", "CA9"),
                    ("CallStatus", status),
                    ("AnsweredBy", "machine_start"),
                    ("Direction", "outbound-api"),
                    ("From", "+14155550199"),
                    ("To", "+14155550100"),
                ],
            );
            w.query = Some(q.to_owned());
            w.conversation_hint = Some(CH.into());
            w
        };
        assert_eq!(
            disclosed(&run.event(machine(WebhookRoute::VoiceAnswer, "in-progress"))),
            None
        );
        assert_eq!(
            disclosed(&run.event(machine(WebhookRoute::VoiceStatus, "completed"))),
            None
        );

        // Without the consent tables nothing is evaluated.
        let mut run = Run::new();
        let e = run.event(inbound(Some("tok-c4"), "SM4", MX));
        assert_eq!(e.compliance, None);
    }

    #[test]
    fn the_answer_webhook_is_the_disclosure_and_does_not_hide_the_answered_status() {
        let mut run = Run::new();
        let q = "conversation=CH00000000000000000000000000000001&locale=en";
        let answer = run.event(voice(
            WebhookRoute::VoiceAnswer,
            q,
            &[("CallStatus", "in-progress")],
        ));
        assert_eq!(
            disclosure(&answer),
            (Some(RecordingDisclosure::Disclosed), None)
        );
        assert_eq!(answer.call.as_ref().unwrap().status, CallState::InProgress);
        assert_eq!(answer.dedup_key, "CA7:CallAnswer");
        // The status callback "answered" has the same CallStatus: another event.
        let answered = run.event(voice(
            WebhookRoute::VoiceStatus,
            q,
            &[("CallStatus", "in-progress")],
        ));
        assert_eq!(disclosure(&answered), (None, None));
        assert_ne!(answered.event_id, answer.event_id);
        assert_eq!(answered.session_id, answer.session_id);
    }

    #[test]
    fn gather_answers_in_english_and_french_decide_the_disclosure_as_ingress_did() {
        use RecordingDisclosure::{Accepted, Declined, NoInput};
        type Said<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Said<'_>, RecordingDisclosure)] = &[
            ("en", &[("Digits", "1")], Accepted),
            ("en", &[("Digits", "2")], Declined),
            (
                "en",
                &[("SpeechResult", "Yes, please."), ("Confidence", "0.9")],
                Accepted,
            ),
            ("en", &[("SpeechResult", "yes... no, actually")], Declined),
            ("en", &[("SpeechResult", "I want to talk")], NoInput),
            ("en", &[("Digits", "7")], NoInput),
            ("en", &[], NoInput),
            ("fr-CA", &[("SpeechResult", "Oui, d’accord")], Accepted),
            ("fr-CA", &[("SpeechResult", "Non merci")], Declined),
            ("fr-CA", &[("SpeechResult", "yes")], NoInput),
            (
                "fr-CA",
                &[("Digits", "1"), ("SpeechResult", "non")],
                Accepted,
            ),
            ("fr-CA", &[], NoInput),
        ];
        for (i, (locale, said, expected)) in cases.iter().enumerate() {
            let mut run = Run::new();
            let query = format!("conversation={CH}&locale={locale}");
            let w = voice(WebhookRoute::VoiceGather, &query, said);
            let digits = said.iter().find(|(k, _)| *k == "Digits").map(|(_, v)| *v);
            let speech = said
                .iter()
                .find(|(k, _)| *k == "SpeechResult")
                .map(|(_, v)| *v);
            let ingress =
                si_catalog::voice::choice(si_catalog::Catalog::builtin(), locale, digits, speech);
            let e = run.event(w);
            let accepted = *expected == Accepted;
            assert_eq!(
                disclosure(&e),
                (Some(*expected), Some(accepted)),
                "case {i}: {locale} {said:?}"
            );
            assert_eq!(
                accepted,
                ingress == si_catalog::voice::Choice::Accept,
                "case {i}: the TwiML ingress served agrees"
            );
            assert_eq!(e.conversation_id, CH);
            assert_eq!(e.channel, Channel::Voice);
        }
    }

    fn realtime(event: &str, track: &str, seq: &str, final_: &str, data: &str) -> TwilioWebhook {
        let mut params = vec![
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("CallSid", "CA7"),
            ("TranscriptionSid", "GT7"),
            ("Timestamp", "2026-11-22T10:00:01.500Z"),
            ("SequenceId", seq),
            ("TranscriptionEvent", event),
            ("LanguageCode", "en-US"),
        ];
        if event == "transcription-content" {
            params.extend([
                ("Track", track),
                ("TranscriptionData", data),
                ("Final", final_),
            ]);
        }
        let mut w = hook(WebhookRoute::Transcription, None, &params);
        w.query = Some(format!("conversation={CH}&locale=en"));
        w.conversation_hint = Some(CH.into());
        w
    }

    #[test]
    fn realtime_transcription_utterances_are_transcription_events_by_speaker() {
        let mut run = Run::new();
        let started = realtime("transcription-started", "", "1", "", "");
        assert!(run.outputs(started).is_empty(), "started: no event");
        let user = run.event(realtime(
            "transcription-content",
            "inbound_track",
            "2",
            "true",
            r#"{"transcript":"I'd like to move my appointment","confidence":0.93}"#,
        ));
        assert_eq!(user.event_type, ConversationEventType::Transcription);
        assert_eq!(
            (user.channel, user.source),
            (Channel::Voice, EventSource::Voice)
        );
        assert_eq!(user.conversation_id, CH);
        assert_eq!(
            user.occurred_at,
            parse_time("2026-11-22T10:00:01.500Z").unwrap()
        );
        assert_eq!(
            user.dedup_key,
            "GT7:RealtimeTranscription:transcription-content:2"
        );
        let t = user.transcription.unwrap();
        assert_eq!(t.call_sid, "CA7");
        assert_eq!(t.transcription_sid.as_deref(), Some("GT7"));
        assert_eq!(t.text, "I'd like to move my appointment");
        assert_eq!(t.speaker, TranscriptionSpeaker::User);
        assert_eq!(
            (t.sequence, t.is_final, t.confidence),
            (Some(2), true, Some(0.93))
        );

        let agent = run.event(realtime(
            "transcription-content",
            "outbound_track",
            "3",
            "true",
            r#"{"transcript":"Sure, which day works for you?"}"#,
        ));
        let t = agent.transcription.unwrap();
        assert_eq!(t.speaker, TranscriptionSpeaker::Agent);
        assert_eq!((t.sequence, t.confidence), (Some(3), None));
        assert_ne!(agent.event_id, user.event_id, "one event per utterance");

        let partial = realtime(
            "transcription-content",
            "inbound_track",
            "4",
            "false",
            r#"{"transcript":"Tues","confidence":0.4}"#,
        );
        assert!(run.outputs(partial).is_empty(), "partial results: no event");
        let empty = realtime(
            "transcription-content",
            "inbound_track",
            "5",
            "true",
            r#"{"transcript":" "}"#,
        );
        assert!(run.outputs(empty).is_empty(), "nothing said: no event");
        let stopped = realtime("transcription-stopped", "", "6", "", "");
        assert!(run.outputs(stopped).is_empty(), "stopped: no event");
        // A retry of an utterance (no idempotency token) is recognised.
        let retry = realtime(
            "transcription-content",
            "inbound_track",
            "2",
            "true",
            r#"{"transcript":"I'd like to move my appointment","confidence":0.93}"#,
        );
        assert!(run.outputs(retry).is_empty(), "duplicate");
        let broken = realtime("transcription-content", "inbound_track", "7", "true", "{");
        let ctx = RecordContext::for_test(topics::WEBHOOKS, T);
        assert!(matches!(
            run.n.process(&ctx, broken, &mut run.store),
            Err(ProcessError::Invalid(m)) if m.contains("TranscriptionData")
        ));
        let dropped = |reason: &str| run.n.metrics.dropped.with_label_values(&[reason]).get();
        assert_eq!(
            (
                dropped("transcription_started"),
                dropped("transcription_partial"),
                dropped("transcription_stopped")
            ),
            (1, 1, 1),
            "skips are counted by reason"
        );
    }

    /// A webhook of an inbound call `call` from `caller` to our number, as
    /// Twilio sends it to the URLs of the number: no conversation in the URL.
    fn inbound_call(
        route: WebhookRoute,
        call: &str,
        caller: &str,
        extra: &[(&str, &str)],
    ) -> TwilioWebhook {
        let mut params = vec![
            ("CallSid", call),
            ("AccountSid", "AC00000000000000000000000000000001"),
        ];
        if matches!(
            route,
            WebhookRoute::VoiceAnswer | WebhookRoute::VoiceGather | WebhookRoute::VoiceStatus
        ) {
            params.extend([
                ("From", caller),
                ("To", "+14155550199"),
                ("Direction", "inbound"),
            ]);
        }
        params.extend_from_slice(extra);
        let mut w = hook(route, None, &params);
        // Ingress's answer TwiML carries the locale (never a conversation) on.
        w.query = (route != WebhookRoute::VoiceAnswer && route != WebhookRoute::VoiceStatus)
            .then(|| "locale=en".to_owned());
        w
    }

    /// Every later webhook of a call, by kind.
    fn rest_of_call(call: &str, caller: &str) -> Vec<TwilioWebhook> {
        vec![
            inbound_call(
                WebhookRoute::VoiceGather,
                call,
                caller,
                &[("CallStatus", "in-progress"), ("SpeechResult", "yes")],
            ),
            inbound_call(
                WebhookRoute::VoiceStatus,
                call,
                caller,
                &[("CallStatus", "completed"), ("CallDuration", "61")],
            ),
            inbound_call(
                WebhookRoute::RecordingStatus,
                call,
                caller,
                &[
                    ("RecordingSid", "RE9"),
                    ("RecordingStatus", "completed"),
                    ("RecordingDuration", "58"),
                ],
            ),
            inbound_call(
                WebhookRoute::Transcription,
                call,
                caller,
                &[
                    ("TranscriptionSid", "GT9"),
                    ("TranscriptionEvent", "transcription-content"),
                    ("SequenceId", "1"),
                    ("Track", "inbound_track"),
                    ("Final", "true"),
                    (
                        "TranscriptionData",
                        r#"{"transcript":"It's about my order","confidence":0.9}"#,
                    ),
                ],
            ),
        ]
    }

    #[test]
    fn an_inbound_call_from_a_texting_number_joins_its_conversation_and_session() {
        let mut run = Run::new();
        let user = "+5215512345678";
        let (text, bindings) = run.directory(inbound(Some("tok-sms"), "SM1", user));
        for b in bindings {
            run.n.directory.apply(b.key(), Some(b));
        }
        // The call's webhooks are keyed by CallSid: another partition, whose
        // state knows nothing of the text conversation.
        let mut other_partition = StateStore::new(Duration::from_secs(30 * 24 * 3600));
        other_partition.set_now(T);
        run.store = other_partition;

        let answer = run.event(inbound_call(
            WebhookRoute::VoiceAnswer,
            "CA9",
            user,
            &[("CallStatus", "ringing")],
        ));
        assert_eq!(answer.conversation_id, text.conversation_id);
        assert_eq!(answer.session_id, text.session_id);
        assert_eq!(
            disclosure(&answer),
            (Some(RecordingDisclosure::Disclosed), None)
        );
        let caller = answer.participant.clone().unwrap();
        assert_eq!(caller.channel, Channel::Voice);
        assert_eq!(
            caller.visitor_id,
            text.participant.clone().unwrap().visitor_id,
            "the same person"
        );

        // Lifecycle closes the text conversation mid-call: the call stays.
        let mut closed = run
            .n
            .directory
            .get("sms:+5215512345678|+14155550199")
            .unwrap()
            .as_ref()
            .clone();
        closed.active = false;
        run.n.directory.apply(closed.key(), Some(closed));

        for w in rest_of_call("CA9", user) {
            let route = w.route;
            let e = run.event(w);
            assert_eq!(e.conversation_id, text.conversation_id, "{route:?}");
            assert_eq!(e.session_id, text.session_id, "{route:?}");
            assert_eq!(
                e.participant.as_ref().and_then(|p| p.visitor_id.clone()),
                caller.visitor_id,
                "{route:?}: about the caller"
            );
            match route {
                WebhookRoute::VoiceGather => {
                    assert_eq!(
                        disclosure(&e),
                        (Some(RecordingDisclosure::Accepted), Some(true))
                    );
                }
                WebhookRoute::Transcription => {
                    assert_eq!(e.transcription.unwrap().speaker, TranscriptionSpeaker::User);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn an_unknown_caller_gets_a_conversation_and_session_of_the_call() {
        let mut run = Run::new();
        let caller = "+447700900123";
        let answer = run.event(inbound_call(
            WebhookRoute::VoiceAnswer,
            "CA10",
            caller,
            &[("CallStatus", "ringing")],
        ));
        assert_eq!(answer.conversation_id, "call-CA10");
        assert_eq!(answer.session_id, ids::session_id("call-CA10"));
        let p = answer.participant.unwrap();
        assert!(!p.registered);
        assert_eq!(
            p.visitor_id.as_deref(),
            Some(AddressHasher::new(b"secret").visitor_id(caller).as_str()),
            "the visitor id texts from the number get"
        );
        assert_eq!(
            (answer.locale.as_str(), answer.locale_source),
            ("en-GB", LocaleSource::PhoneCountry)
        );
        for w in rest_of_call("CA10", caller) {
            let route = w.route;
            let e = run.event(w);
            assert_eq!(
                (e.conversation_id.as_str(), e.session_id.as_str()),
                ("call-CA10", answer.session_id.as_str()),
                "{route:?}"
            );
        }
        // Another call of the same caller is another conversation.
        let again = run.event(inbound_call(
            WebhookRoute::VoiceAnswer,
            "CA11",
            caller,
            &[("CallStatus", "ringing")],
        ));
        assert_eq!(again.conversation_id, "call-CA11");
    }

    #[test]
    fn an_outbound_call_carries_its_conversations_session() {
        // Si started the conversation (lifecycle bound the pair to the
        // issuer's session); voice-link calls the user on it.
        let user = "+5215512345678";
        let started = ParticipantBinding {
            address: user.into(),
            channel: Channel::Whatsapp,
            proxy_address: Some("+14155550199".into()),
            conversation_id: "outreach-0001".into(),
            session_id: "session-from-the-command".into(),
            participant_sid: None,
            active: true,
            bound_at: T - 60_000,
            updated_at: T - 60_000,
            previous_conversation_id: None,
        };
        let mut run = Run::new();
        run.n.directory.apply(started.key(), Some(started));
        let ours = |route: WebhookRoute, extra: &[(&str, &str)]| {
            let mut params = vec![("CallSid", "CA12")];
            if route != WebhookRoute::RecordingStatus && route != WebhookRoute::Transcription {
                params.extend([
                    ("From", "+14155550199"),
                    ("To", user),
                    ("Direction", "outbound-api"),
                ]);
            }
            params.extend_from_slice(extra);
            let mut w = hook(route, None, &params);
            w.query = Some("conversation=outreach-0001&locale=es-MX".into());
            w.conversation_hint = Some("outreach-0001".into());
            w
        };
        let events = [
            ours(WebhookRoute::VoiceStatus, &[("CallStatus", "ringing")]),
            ours(WebhookRoute::VoiceAnswer, &[("CallStatus", "in-progress")]),
            ours(WebhookRoute::VoiceGather, &[("SpeechResult", "Sí, claro")]),
            ours(WebhookRoute::VoiceStatus, &[("CallStatus", "in-progress")]),
            ours(
                WebhookRoute::RecordingStatus,
                &[("RecordingSid", "RE12"), ("RecordingStatus", "completed")],
            ),
            ours(
                WebhookRoute::VoiceStatus,
                &[("CallStatus", "completed"), ("CallDuration", "90")],
            ),
        ];
        let mut disclosures = Vec::new();
        for w in events {
            let e = run.event(w);
            assert_eq!(e.conversation_id, "outreach-0001");
            assert_eq!(e.session_id, "session-from-the-command");
            assert_eq!(
                e.participant.as_ref().unwrap().address.as_deref(),
                Some(user),
                "the callee"
            );
            disclosures.push(e.call.and_then(|c| c.disclosure));
        }
        assert_eq!(
            disclosures,
            [
                None,
                Some(RecordingDisclosure::Disclosed),
                Some(RecordingDisclosure::Accepted),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn seen_events_are_kept_under_a_fixed_size_digest_and_legacy_keys_still_count() {
        let mut run = Run::new();
        run.outputs(inbound(Some("tok-a"), "SM1", "+14155550123"));
        let key = seen_key("tok-a");
        assert_eq!(key.len(), 34, "s| and 32 hex digits: {key}");
        assert!(run.store.get(&key).is_some());
        assert!(run.store.get("seen|tok-a").is_none());
        // An entry an older release wrote (raw dedup key) still drops the retry.
        run.store.put_with_ttl(
            "seen|tok-b",
            NormalizeState {
                kind: NormalizeStateKind::SeenEvent,
                seen_event: Some(SeenEvent {
                    event_id: ids::event_id("tok-b"),
                    webhook_id: "wh-old".into(),
                    first_seen_at: T,
                }),
                conversation: None,
            },
            Duration::from_secs(60),
        );
        assert!(
            run.outputs(inbound(Some("tok-b"), "SM2", "+14155550123"))
                .is_empty(),
            "a legacy entry is a seen event"
        );
    }

    #[test]
    fn retries_yield_one_event_within_the_window() {
        let mut run = Run::new();
        let first = run.outputs(inbound(Some("tok-r"), "SM1", "+14155550123"));
        assert_eq!(first.len(), 2);
        let mut retry = inbound(Some("tok-r"), "SM1", "+14155550123");
        retry.webhook_id = "wh-retry".into();
        assert!(run.outputs(retry).is_empty(), "same idempotency token");
        // Without a token: SID + event type (+ status) is the key.
        let s1 = hook(
            WebhookRoute::MessagingStatus,
            None,
            &[
                ("MessageSid", "SM9"),
                ("MessageStatus", "sent"),
                ("To", "+14155550123"),
            ],
        );
        let events = |outputs: Vec<Output>| {
            outputs
                .iter()
                .filter(|o| o.topic() == topics::CONVERSATION_EVENTS)
                .count()
        };
        assert_eq!(events(run.outputs(s1.clone())), 1);
        assert!(run.outputs(s1).is_empty());
        let s2 = hook(
            WebhookRoute::MessagingStatus,
            None,
            &[
                ("MessageSid", "SM9"),
                ("MessageStatus", "delivered"),
                ("To", "+14155550123"),
            ],
        );
        assert_eq!(
            events(run.outputs(s2)),
            1,
            "another status is another event"
        );
        // Callbacks that name their status only `SmsStatus`: each status is
        // an event of its own too.
        for status in ["sent", "delivered"] {
            let only_sms_status = hook(
                WebhookRoute::MessagingStatus,
                None,
                &[
                    ("SmsSid", "SM8"),
                    ("SmsStatus", status),
                    ("To", "+14155550123"),
                ],
            );
            assert_eq!(events(run.outputs(only_sms_status)), 1, "{status}");
        }
        // After the window the event is new again (and has the same id).
        run.store.set_now(T + 3600 * 1000 + 1);
        let late = run.event(inbound(Some("tok-r"), "SM1", "+14155550123"));
        assert_eq!(late.event_id, ids::event_id("tok-r"));
    }

    #[test]
    fn a_call_status_arriving_after_the_calls_end_is_dropped() {
        let mut run = Run::new();
        let status = |status: &str| {
            hook(
                WebhookRoute::VoiceStatus,
                None,
                &[
                    ("CallSid", "CA7"),
                    ("CallStatus", status),
                    ("From", "+14155550123"),
                    ("To", "+14155550199"),
                    ("Direction", "inbound"),
                ],
            )
        };
        let calls = |outputs: Vec<Output>| -> Vec<CallState> {
            outputs
                .iter()
                .filter(|o| o.topic() == topics::CONVERSATION_EVENTS)
                .filter_map(|o| o.record::<ConversationEvent>())
                .filter_map(|e| e.call.as_ref().map(|c| c.status))
                .collect()
        };
        assert_eq!(calls(run.outputs(status("ringing"))), [CallState::Ringing]);
        assert_eq!(
            calls(run.outputs(status("completed"))),
            [CallState::Completed]
        );
        // `in-progress` was delayed in the network and comes last.
        assert!(calls(run.outputs(status("in-progress"))).is_empty());
        // Another call of the same user is not affected.
        let other = hook(
            WebhookRoute::VoiceStatus,
            None,
            &[
                ("CallSid", "CA8"),
                ("CallStatus", "ringing"),
                ("From", "+14155550123"),
                ("To", "+14155550199"),
                ("Direction", "inbound"),
            ],
        );
        assert_eq!(calls(run.outputs(other)), [CallState::Ringing]);
    }

    #[test]
    fn pre_events_unknown_events_and_invalid_records() {
        let mut run = Run::new();
        let pre = hook(
            WebhookRoute::ConversationsPreEvent,
            Some("t1"),
            &[("EventType", "onMessageAdd"), ("ConversationSid", CH)],
        );
        assert!(run.outputs(pre).is_empty());
        assert!(run.outputs(conv("onUserUpdated", "t2", &[])).is_empty());
        let ctx = RecordContext::for_test(topics::WEBHOOKS, T);
        let missing = hook(
            WebhookRoute::ConversationsPostEvent,
            Some("t3"),
            &[("EventType", "onMessageAdded")],
        );
        assert!(matches!(
            run.n.process(&ctx, missing, &mut run.store),
            Err(ProcessError::Invalid(m)) if m.contains("ConversationSid")
        ));
        let bad_media = conv(
            "onMessageAdded",
            "t4",
            &[("MessageSid", "IM1"), ("Media", "[{")],
        );
        assert!(matches!(
            run.n.process(&ctx, bad_media, &mut run.store),
            Err(ProcessError::Invalid(_))
        ));
        let not_phone = hook(
            WebhookRoute::MessagingInbound,
            Some("t5"),
            &[("MessageSid", "SM1"), ("From", "alice123")],
        );
        match run.n.process(&ctx, not_phone, &mut run.store) {
            Err(ProcessError::Invalid(m)) => assert!(!m.contains("alice123"), "masked: {m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_webhooks_are_read_like_form_ones() {
        let mut run = Run::new();
        let mut w = hook(WebhookRoute::ConversationsPostEvent, Some("tok-j"), &[]);
        w.content_type = "application/json".into();
        w.body = Some(
            format!(
                r#"{{"EventType":"onParticipantAdded","ConversationSid":"{CH}","ParticipantSid":"MB5","MessagingBinding":{{"Address":"+14155550100","ProxyAddress":"+14155550199"}}}}"#
            )
            .into_bytes(),
        );
        let (e, bindings) = run.directory(w);
        assert_eq!(e.event_type, ConversationEventType::ParticipantJoined);
        assert_eq!(bindings[0].key(), "sms:+14155550100|+14155550199");
        assert_eq!(
            e.participant.unwrap().user_id.as_deref(),
            Some("user-1"),
            "the number's WhatsApp identity"
        );
    }
}
