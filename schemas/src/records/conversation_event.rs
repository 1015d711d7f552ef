//! `si.conversation.events.v1`: `schemas/avro/conversation_event.avsc`.

use serde::{Deserialize, Serialize};

use super::{Channel, ConsentStatus, MediaRef, StoredMedia};

/// Conversation ids of Programmable Messaging start with this: normalize
/// derives them from the user's and our address. Every other conversation id
/// is a Twilio ConversationSid, or the id an issuer chose for a conversation
/// Si started.
pub const PM_CONVERSATION_PREFIX: &str = "pm-";

/// A Twilio webhook normalized into a channel-independent Si conversation
/// event, enriched with identity, session binding, locale and compliance tags.
/// Written by normalize exactly once per distinct Twilio event (Twilio retries
/// are de-duplicated by `dedup_key`). At most one payload field is set, the one
/// `event_type` names (see [`ConversationEventType`]); readers ignore event
/// types and fields they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationEvent {
    /// Deterministic id of the event, derived from `dedup_key`: reprocessing the
    /// same webhook yields the same `event_id`. Use it to de-duplicate.
    pub event_id: String,
    /// The conversation: Twilio ConversationSid (`CH…`), bound 1:1 to
    /// `session_id`. Also the Kafka key.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// What happened.
    pub event_type: ConversationEventType,
    /// Channel the event happened on (the participant's channel for messages,
    /// VOICE for call events).
    pub channel: Channel,
    /// Twilio product that reported the event.
    pub source: EventSource,
    /// When the event happened according to Twilio (ms since the epoch);
    /// `received_at` when Twilio gives no time.
    pub occurred_at: i64,
    /// When ingress received the webhook (ms since the epoch).
    pub received_at: i64,
    /// The participant the event is by or about (message author, joining
    /// participant, caller); `None` when none (e.g. a state change).
    pub participant: Option<Participant>,
    /// Locale to talk to this participant in, BCP 47 (e.g. `en`, `es-MX`); never
    /// empty. `locale_source` says how it was chosen.
    pub locale: String,
    /// How `locale` was chosen.
    pub locale_source: LocaleSource,
    /// Twilio `AccountSid` (`AC…`) the event belongs to.
    pub account_sid: Option<String>,
    /// `webhook_id` of the `twilio.webhooks.v1` record the event was normalized
    /// from (the first one, when Twilio retried).
    pub webhook_id: String,
    /// Key normalize de-duplicated on: the `I-Twilio-Idempotency-Token` when
    /// present, else resource SID + event type (+ status for status callbacks).
    pub dedup_key: String,
    /// W3C Trace Context `traceparent` of the trace this record belongs to.
    pub traceparent: Option<String>,
    /// Compliance state at normalization time: normalize sets it on the events
    /// of a participant on SMS or WhatsApp and on a call's events from its
    /// first disclosure step, recording or transcription on; `None` on other
    /// events, and on the events other stages write.
    pub compliance: Option<ComplianceTags>,
    /// Set for MESSAGE_RECEIVED and MESSAGE_SENT.
    pub message: Option<MessageReceived>,
    /// Set for DELIVERY_UPDATED.
    pub delivery: Option<DeliveryUpdate>,
    /// Set for PARTICIPANT_JOINED and PARTICIPANT_LEFT.
    pub participant_change: Option<ParticipantChange>,
    /// Set for CONVERSATION_STATE_CHANGED, and for CONVERSATION_STARTED when
    /// Twilio reports the initial state.
    pub state_change: Option<StateChange>,
    /// Set for CALL_STATUS_CHANGED.
    pub call: Option<CallEvent>,
    /// Set for RECORDING_AVAILABLE.
    pub recording: Option<RecordingAvailable>,
    /// Set for TRANSCRIPTION.
    pub transcription: Option<TranscriptionEvent>,
    /// Set for COMPLIANCE_RECORDED.
    #[serde(default)]
    pub compliance_record: Option<ComplianceRecordRef>,
    /// Set for MEDIA_STORED.
    #[serde(default)]
    pub media_stored: Option<MediaStored>,
}

/// The durable copies of an earlier event's media (`MEDIA_STORED`): one item
/// per media item of the message, in order, or one for a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaStored {
    /// `event_id` of the MESSAGE_RECEIVED or RECORDING_AVAILABLE event.
    pub source_event_id: String,
    /// The message (`SM`/`MM`/`IM`) or recording (`RE`) SID.
    pub source_sid: String,
    /// The call of a recording.
    #[serde(default)]
    pub call_sid: Option<String>,
    /// One per media item, in the source's order.
    #[serde(default)]
    pub items: Vec<StoredMedia>,
}

/// A compliance event about the conversation, by reference (the record is on
/// `si.compliance.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceRecordRef {
    /// The `event_id` of the `ComplianceEvent`.
    pub event_id: String,
    /// Its kind, as the `ComplianceEventKind` symbol.
    pub kind: String,
}

crate::avro_record!(ConversationEvent, "conversation_event.avsc");

impl ConversationEvent {
    /// An event the adapter writes itself, about no webhook (lifecycle's
    /// start and closure, consent's and segment's compliance records, the
    /// media stage's copies): `event_id` is also its `dedup_key`, it happened
    /// and was received at `at`, and every payload is empty. Set the payload
    /// `event_type` names, and what else is known, with struct update syntax.
    #[must_use]
    pub fn adapter(
        event_id: String,
        conversation_id: &str,
        session_id: &str,
        event_type: ConversationEventType,
        at: i64,
    ) -> Self {
        Self {
            dedup_key: event_id.clone(),
            event_id,
            conversation_id: conversation_id.to_owned(),
            session_id: session_id.to_owned(),
            event_type,
            channel: Channel::Unknown,
            source: EventSource::Unknown,
            occurred_at: at,
            received_at: at,
            participant: None,
            locale: String::new(),
            locale_source: LocaleSource::Unknown,
            account_sid: None,
            webhook_id: String::new(),
            traceparent: None,
            compliance: None,
            message: None,
            delivery: None,
            participant_change: None,
            state_change: None,
            call: None,
            recording: None,
            transcription: None,
            compliance_record: None,
            media_stored: None,
        }
    }

    /// Whether the event's conversation is on Programmable Messaging (see
    /// [`is_programmable_messaging`]).
    #[must_use]
    pub fn is_programmable_messaging(&self) -> bool {
        is_programmable_messaging(&self.conversation_id, self.source)
    }

    /// Whether the event is lifecycle opening a Programmable Messaging
    /// conversation (again): its ACTIVE state when it opens one for a user's
    /// message, or the start of one Si started. Such a conversation has no
    /// state at Twilio; lifecycle reports it, in the order it decides it, so a
    /// reader learns of a closure and of a reopening in the order lifecycle
    /// saw them. A Conversations conversation Twilio closed stays closed,
    /// whatever comes late: a new one gets a new SID.
    #[must_use]
    pub fn reopens(&self) -> bool {
        matches!(
            self.event_type,
            ConversationEventType::ConversationStateChanged
                | ConversationEventType::ConversationStarted
        ) && self
            .state_change
            .as_ref()
            .is_some_and(|s| s.state_to == ConversationState::Active)
            && self.is_programmable_messaging()
    }
}

/// Whether a conversation is on Programmable Messaging (not Conversations):
/// normalize's `pm-` ids, and conversations Si started in messaging mode (the
/// issuer's ids; their events come from the Messaging API, `source`
/// MESSAGING).
#[must_use]
pub fn is_programmable_messaging(conversation_id: &str, source: EventSource) -> bool {
    conversation_id.starts_with(PM_CONVERSATION_PREFIX) || source == EventSource::Messaging
}

avro_enum! {
    /// What happened; decides which payload field of [`ConversationEvent`] is set.
    pub enum ConversationEventType (default Unknown) {
        /// The user sent a message (`message`).
        MessageReceived = "MESSAGE_RECEIVED",
        /// A message by Si was added to the conversation (`message`).
        MessageSent = "MESSAGE_SENT",
        /// Delivery status of a message Si sent (`delivery`).
        DeliveryUpdated = "DELIVERY_UPDATED",
        /// A participant joined (`participant_change`).
        ParticipantJoined = "PARTICIPANT_JOINED",
        /// A participant left (`participant_change`).
        ParticipantLeft = "PARTICIPANT_LEFT",
        /// A conversation was created (`state_change` when Twilio reports a state).
        ConversationStarted = "CONVERSATION_STARTED",
        /// Active/inactive/closed (`state_change`); for a Programmable
        /// Messaging conversation, lifecycle writes ACTIVE when it opens it for
        /// a user's message and CLOSED when it closes it.
        ConversationStateChanged = "CONVERSATION_STATE_CHANGED",
        /// A call linked to the conversation changed status (`call`).
        CallStatusChanged = "CALL_STATUS_CHANGED",
        /// A call recording is ready (`recording`).
        RecordingAvailable = "RECORDING_AVAILABLE",
        /// Text recognised on a call (`transcription`).
        Transcription = "TRANSCRIPTION",
        /// The adapter recorded a compliance event about the conversation
        /// (`compliance_record`).
        ComplianceRecorded = "COMPLIANCE_RECORDED",
        /// The media stage copied an earlier event's media into Si's object
        /// storage, or found them unavailable (`media_stored`).
        MediaStored = "MEDIA_STORED",
        /// Not classified, or a symbol newer than this build (the default); skip it.
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Twilio product that reported the event.
    pub enum EventSource (default Unknown) {
        /// Conversations webhooks.
        Conversations = "CONVERSATIONS",
        /// Programmable Messaging inbound messages and status callbacks.
        Messaging = "MESSAGING",
        /// Programmable Voice callbacks (calls, gathers, recordings, transcriptions).
        Voice = "VOICE",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// A conversation participant, resolved against the Identity Service (`si.identity.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Participant address in E.164 without any `whatsapp:` prefix; `None` for
    /// participants without a phone address (chat identities).
    pub address: Option<String>,
    /// Channel of the participant's binding.
    pub channel: Channel,
    /// Si user id when the Identity Service knows the address; `None` for visitors.
    pub user_id: Option<String>,
    /// Stable pseudonymous id for an address the Identity Service does not know,
    /// the same across conversations; `None` for registered users.
    pub visitor_id: Option<String>,
    /// True when the Identity Service knows the address (`user_id` is set).
    pub registered: bool,
    /// Twilio Participant SID (`MB…`) in the conversation, when known.
    pub participant_sid: Option<String>,
    /// Conversations `Identity` of a chat participant, when set.
    pub identity: Option<String>,
    /// Our address the participant talks to (Twilio number or WhatsApp sender),
    /// E.164 without prefix.
    pub proxy_address: Option<String>,
}

avro_enum! {
    /// How the locale was chosen, in order of precedence.
    pub enum LocaleSource (default Unknown) {
        /// A locale in the participant's Conversations attributes.
        ParticipantAttribute = "PARTICIPANT_ATTRIBUTE",
        /// The user's locale from the Identity Service.
        Identity = "IDENTITY",
        /// Derived from the phone number's country calling code.
        PhoneCountry = "PHONE_COUNTRY",
        /// The configured default locale.
        Default = "DEFAULT",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// A message added to the conversation: sent by the user (MESSAGE_RECEIVED) or
/// by Si and reported back by Twilio (MESSAGE_SENT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceived {
    /// Twilio message SID: `IM…` (Conversations) or `SM…`/`MM…` (Programmable Messaging).
    pub message_sid: String,
    /// Position of the message in the conversation (Conversations `Index`);
    /// `None` for Programmable Messaging.
    pub index: Option<i64>,
    /// Conversations `Author` (an identity, or an address normalized to E.164
    /// without prefix).
    pub author: Option<String>,
    /// Message text exactly as sent (not trimmed, keywords not interpreted);
    /// `None` for media-only messages.
    pub body: Option<String>,
    /// Attached media in order; empty when none.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// Conversations message `Attributes`: the JSON text as sent.
    pub attributes_json: Option<String>,
    /// Number of SMS segments (Programmable Messaging `NumSegments`), when reported.
    pub num_segments: Option<i32>,
    /// The place, when the message shares a location (WhatsApp).
    #[serde(default)]
    pub location: Option<super::Location>,
    /// The sender's WhatsApp profile name (`ProfileName`). Personal data:
    /// never logged.
    #[serde(default)]
    pub profile_name: Option<String>,
    /// The payload of the quick-reply button the user tapped (`ButtonPayload`).
    #[serde(default)]
    pub button_payload: Option<String>,
}

avro_enum! {
    /// Delivery state of a message as Twilio reports it (its lower-case values in upper case).
    pub enum DeliveryState (default Unknown) {
        /// `queued`.
        Queued = "QUEUED",
        /// `sending`.
        Sending = "SENDING",
        /// `sent`: handed to the carrier or WhatsApp.
        Sent = "SENT",
        /// `delivered`.
        Delivered = "DELIVERED",
        /// `read`: read receipt (e.g. WhatsApp).
        Read = "READ",
        /// `failed`.
        Failed = "FAILED",
        /// `undelivered`.
        Undelivered = "UNDELIVERED",
        /// `accepted` (Messaging Service).
        Accepted = "ACCEPTED",
        /// `scheduled`.
        Scheduled = "SCHEDULED",
        /// `canceled`.
        Canceled = "CANCELED",
        /// Any other value, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// A delivery receipt or status callback for a message Si sent (Conversations
/// `onDeliveryUpdated` or a Programmable Messaging status callback). Twilio
/// sends these at least once and not necessarily in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryUpdate {
    /// Message the status is about: `IM…` (Conversations) or `SM…`/`MM…`.
    pub message_sid: String,
    /// The channel's message SID (e.g. `SM…` of the SMS) when Conversations reports it.
    pub channel_message_sid: Option<String>,
    /// Reported delivery state.
    pub status: DeliveryState,
    /// Twilio error code (e.g. 30003 unreachable, 30007 carrier filtered).
    pub error_code: Option<i32>,
    /// Error description, when Twilio gives one.
    pub error_message: Option<String>,
}

/// A participant joined or left the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantChange {
    /// Twilio Participant SID (`MB…`).
    pub participant_sid: String,
    /// Conversations `Identity`, for chat participants.
    pub identity: Option<String>,
    /// `MessagingBinding.Address` in E.164 without prefix; `None` for chat participants.
    pub address: Option<String>,
    /// `MessagingBinding.ProxyAddress` (our number or WhatsApp sender) in E.164 without prefix.
    pub proxy_address: Option<String>,
}

avro_enum! {
    /// Twilio Conversations state.
    pub enum ConversationState (default Unknown) {
        /// `active`.
        Active = "ACTIVE",
        /// `inactive`: reactivates on a new message.
        Inactive = "INACTIVE",
        /// `closed`: final at Twilio; a Programmable Messaging conversation,
        /// whose states lifecycle writes, can be ACTIVE again after it.
        Closed = "CLOSED",
        /// Any other value, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// A change of the conversation's state (Conversations
/// `onConversationStateUpdated`, or the initial state of a new conversation),
/// or lifecycle opening or closing a Programmable Messaging conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// Previous state (`StateFrom`); `None` when there is none (a new conversation).
    pub state_from: Option<ConversationState>,
    /// New state (`StateTo`).
    pub state_to: ConversationState,
    /// Twilio's `Reason` for the change (e.g. a timer or an API call), when
    /// given; for lifecycle's ACTIVE, `MESSAGE_RECEIVED`; for its CLOSED, the
    /// archival reason.
    pub reason: Option<String>,
}

avro_enum! {
    /// Call status from Twilio `CallStatus`, hyphens as underscores.
    pub enum CallState (default Unknown) {
        /// `queued`.
        Queued = "QUEUED",
        /// `ringing`.
        Ringing = "RINGING",
        /// `in-progress`.
        InProgress = "IN_PROGRESS",
        /// `completed`.
        Completed = "COMPLETED",
        /// `busy`.
        Busy = "BUSY",
        /// `failed`.
        Failed = "FAILED",
        /// `no-answer`.
        NoAnswer = "NO_ANSWER",
        /// `canceled`.
        Canceled = "CANCELED",
        /// Any other value, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

impl CallState {
    /// Whether the call is over (completed, busy, failed, no answer,
    /// canceled): Twilio reports nothing more of it.
    #[must_use]
    pub const fn has_ended(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Busy | Self::Failed | Self::NoAnswer | Self::Canceled
        )
    }

    /// Whether the call is queued, ringing or in progress.
    #[must_use]
    pub const fn is_live(self) -> bool {
        matches!(self, Self::Queued | Self::Ringing | Self::InProgress)
    }
}

/// A status change of a call linked to the conversation (escalation to voice,
/// or an inbound call from a participant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEvent {
    /// Twilio Call SID (`CA…`).
    pub call_sid: String,
    /// Call status.
    pub status: CallState,
    /// Twilio call `Direction` as sent: `inbound`, `outbound-api` or `outbound-dial`.
    pub direction: Option<String>,
    /// Call duration in seconds (`CallDuration`), set once the call completed.
    pub duration_seconds: Option<i32>,
    /// Whether the caller accepted the recording disclosure; `None` until asked.
    pub disclosure_accepted: Option<bool>,
    /// The recording-disclosure step this event reports; `None` for status
    /// callbacks that are not about the disclosure.
    #[serde(default)]
    pub disclosure: Option<RecordingDisclosure>,
    /// Twilio's `AnsweredBy` (answering-machine detection), when requested.
    #[serde(default)]
    pub answered_by: Option<String>,
}

avro_enum! {
    /// Where a call is in the recording disclosure.
    pub enum RecordingDisclosure (default Unknown) {
        /// The disclosure and the consent prompt were played (the answer
        /// webhook ingress served them on).
        Disclosed = "DISCLOSED",
        /// The caller accepted (keypad 1 or a yes word): recording and
        /// real-time transcription start.
        Accepted = "ACCEPTED",
        /// The caller declined (keypad 2 or a no word; a no word wins): nothing
        /// is recorded or transcribed and the call ends.
        Declined = "DECLINED",
        /// No usable answer (silence, another key, unrecognised speech):
        /// treated as a decline.
        NoInput = "NO_INPUT",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// A call recording changed status (usually: completed and ready to fetch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingAvailable {
    /// Twilio Recording SID (`RE…`).
    pub recording_sid: String,
    /// Call the recording belongs to (`CA…`).
    pub call_sid: String,
    /// `RecordingUrl`; fetching it requires the Twilio account's credentials.
    pub url: Option<String>,
    /// `RecordingStatus` as sent: `in-progress`, `completed` or `absent`.
    pub status: Option<String>,
    /// `RecordingDuration` in seconds.
    pub duration_seconds: Option<i32>,
    /// `RecordingChannels` (1 mono, 2 dual-channel).
    pub channels: Option<i32>,
}

avro_enum! {
    /// Who spoke on the call.
    pub enum TranscriptionSpeaker (default Unknown) {
        /// The caller.
        User = "USER",
        /// Si's voice agent.
        Agent = "AGENT",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// Text recognised on a call (speech input of a `<Gather>`, a transcription
/// callback, or a turn of Si's voice agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionEvent {
    /// Call the text was spoken on (`CA…`).
    pub call_sid: String,
    /// Twilio transcription SID, when the text comes from a Twilio transcription.
    pub transcription_sid: Option<String>,
    /// The recognised text.
    pub text: String,
    /// Who spoke.
    pub speaker: TranscriptionSpeaker,
    /// Order of the utterance within the call, when the source numbers utterances.
    pub sequence: Option<i64>,
    /// False for an interim result that a later final result replaces; only
    /// final results enter the transcript.
    pub is_final: bool,
    /// Recognition confidence from 0.0 to 1.0, when reported.
    pub confidence: Option<f64>,
}

/// Compliance state known when the event was normalized, for audit and
/// analytics. The authoritative consent state is `si.consent.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceTags {
    /// Consent of the participant's address in force when the event was
    /// normalized, toward the sender it talks to (a STOP's own event still has
    /// the earlier status); UNKNOWN when none is known or for a call.
    pub consent_status: ConsentStatus,
    /// For calls: true on every event of a call from the first that shows
    /// its recording disclosure was played (a disclosure step, a recording,
    /// transcribed speech) on; `None` when not applicable, before that event,
    /// or on a call that never played it.
    pub recording_disclosed: Option<bool>,
}
