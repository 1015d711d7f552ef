//! Topic names, one constant per topic of `topics.yaml` (the full specification:
//! partitions, retention, keys, producers and consumers live there; a test checks
//! that this file and `topics.yaml` agree).
//!
//! Values are Avro in the Confluent wire format, registered under the subject
//! `<topic>-value` ([`crate::value_subject`]); keys are plain UTF-8 strings.

use crate::AvroRecord;
use crate::records::{
    ArchivalRequest, CognitionResponse, Command, ComplianceEvent, ConsentProcessorState,
    ConsentState, ConversationEvent, DeadLetter, DeliveryStatus, EgressLedgerEntry, IdentityRecord,
    InboundMessage, LifecycleState, MediaState, NormalizeState, OutboundDeadLetter,
    OutboundOperation, ParticipantBinding, SegmentState, TranscriptEntry, TwilioWebhook,
    VoiceLinkState,
};

/// Raw Twilio webhooks as received by ingress ([`TwilioWebhook`]); key: the
/// ConversationSid, else the conversation id of our callback URL, else the sender address.
pub const WEBHOOKS: &str = "twilio.webhooks.v1";
/// Normalized conversation events ([`ConversationEvent`]); key: conversation id.
pub const CONVERSATION_EVENTS: &str = "si.conversation.events.v1";
/// User messages for the cognition layer ([`InboundMessage`]); key: conversation id.
pub const INBOUND: &str = "si.inbound.v1";
/// Replies from the cognition layer ([`CognitionResponse`]); key: conversation id.
pub const RESPONSES: &str = "si.responses.v1";
/// Commands: escalate to voice, start or close a conversation ([`Command`]); key: conversation id.
pub const COMMANDS: &str = "si.commands.v1";
/// Twilio REST operations for egress ([`OutboundOperation`]); key: sender key.
pub const OUTBOUND: &str = "twilio.outbound.v1";
/// Terminal outcome of every outbound operation ([`DeliveryStatus`]); key: conversation id.
pub const DELIVERY: &str = "twilio.delivery.v1";
/// Outbound operations egress gave up on ([`OutboundDeadLetter`]); key: sender key.
pub const OUTBOUND_DLQ: &str = "twilio.outbound.dlq.v1";
/// Internal: egress's dedup ledger, compacted, co-partitioned with [`OUTBOUND`]
/// ([`EgressLedgerEntry`]); key: operation id.
pub const EGRESS_LEDGER: &str = "twilio.egress.ledger.v1";
/// Records a stage could not decode or process ([`DeadLetter`]); key: the original key.
pub const DEAD_LETTER: &str = "si.deadletter.v1";
/// Compliance audit log ([`ComplianceEvent`]); key: `<channel>:<E.164>`.
pub const COMPLIANCE: &str = "si.compliance.v1";
/// Consent table written by the consent stage, compacted ([`ConsentState`]);
/// key: `<channel>:<E.164>|<sender scope>`.
pub const CONSENT: &str = "si.consent.v1";
/// Consent table fed by the upstream Consent Registry, compacted ([`ConsentState`]);
/// key: `<channel>:<E.164>|<sender scope>`.
pub const CONSENT_REGISTRY: &str = "si.consent.registry.v1";
/// Identity table fed by the upstream Identity Service, compacted ([`IdentityRecord`]);
/// key: `<channel>:<E.164>`.
pub const IDENTITY: &str = "si.identity.v1";
/// Participant directory, compacted ([`ParticipantBinding`]);
/// key: `<channel>:<E.164>|<proxy address>`.
pub const PARTICIPANTS: &str = "si.participants.v1";
/// Unified text and voice transcript ([`TranscriptEntry`]); key: conversation id.
pub const TRANSCRIPT: &str = "si.transcript.v1";
/// Archival requests for closed conversations ([`ArchivalRequest`]); key: conversation id.
pub const ARCHIVAL: &str = "si.archival.v1";
/// Internal: the state changelog of normalize, compacted, co-partitioned with
/// [`WEBHOOKS`] ([`NormalizeState`]); key: `seen|<dedup_key>` or `conv|<conversation id>`.
pub const NORMALIZE_STATE: &str = "si.normalize.state.v1";
/// Internal: the state changelog of consent, compacted, co-partitioned with
/// [`CONVERSATION_EVENTS`] and [`DELIVERY`] ([`ConsentProcessorState`]); key:
/// `d|<channel>:<E.164>|<sender scope>` or `c|<conversation id>`.
pub const CONSENT_STATE: &str = "si.consent.state.v1";
/// Internal: the state changelog of segment, compacted, co-partitioned with
/// [`CONVERSATION_EVENTS`] and [`RESPONSES`] ([`SegmentState`]); key:
/// `seen|<response_id>` or `conv|<conversation id>`.
pub const SEGMENT_STATE: &str = "si.segment.state.v1";
/// Internal: the state changelog of lifecycle, compacted, co-partitioned with
/// [`CONVERSATION_EVENTS`], [`RESPONSES`], [`COMMANDS`], [`DELIVERY`] and
/// [`TRANSCRIPT`] ([`LifecycleState`]); key: `conv|<conversation id>`.
pub const LIFECYCLE_STATE: &str = "si.lifecycle.state.v1";
/// Internal: the state changelog of voice-link, compacted, co-partitioned with
/// [`CONVERSATION_EVENTS`], [`COMMANDS`] and [`DELIVERY`] ([`VoiceLinkState`]);
/// key: `conv|<conversation id>`.
pub const VOICE_LINK_STATE: &str = "si.voicelink.state.v1";
/// Internal: the state changelog of the media stage, compacted,
/// co-partitioned with [`CONVERSATION_EVENTS`] ([`MediaState`]); key:
/// `conv|<conversation id>`.
pub const MEDIA_STATE: &str = "si.media.state.v1";

/// Every topic, in the order of `topics.yaml`.
pub const ALL: &[&str] = &[
    WEBHOOKS,
    CONVERSATION_EVENTS,
    INBOUND,
    RESPONSES,
    COMMANDS,
    OUTBOUND,
    DELIVERY,
    OUTBOUND_DLQ,
    EGRESS_LEDGER,
    DEAD_LETTER,
    COMPLIANCE,
    CONSENT,
    CONSENT_REGISTRY,
    IDENTITY,
    PARTICIPANTS,
    TRANSCRIPT,
    ARCHIVAL,
    NORMALIZE_STATE,
    CONSENT_STATE,
    SEGMENT_STATE,
    LIFECYCLE_STATE,
    VOICE_LINK_STATE,
    MEDIA_STATE,
];

/// The topics each transactional stage of this repository writes, under the
/// producer names of `topics.yaml` (a test holds the two together). A stage
/// fences all of them when it starts (`si_runtime::txn::Transactions::end_pending`).
pub const WRITERS: &[(&str, &[&str])] = &[
    (
        "normalize",
        &[
            CONVERSATION_EVENTS,
            DEAD_LETTER,
            PARTICIPANTS,
            NORMALIZE_STATE,
        ],
    ),
    (
        "consent",
        &[
            CONVERSATION_EVENTS,
            INBOUND,
            OUTBOUND,
            DEAD_LETTER,
            COMPLIANCE,
            CONSENT,
            CONSENT_STATE,
        ],
    ),
    (
        "segment",
        &[
            CONVERSATION_EVENTS,
            OUTBOUND,
            DELIVERY,
            DEAD_LETTER,
            COMPLIANCE,
            SEGMENT_STATE,
        ],
    ),
    (
        "lifecycle",
        &[
            CONVERSATION_EVENTS,
            INBOUND,
            RESPONSES,
            OUTBOUND,
            DELIVERY,
            DEAD_LETTER,
            COMPLIANCE,
            PARTICIPANTS,
            ARCHIVAL,
            LIFECYCLE_STATE,
        ],
    ),
    (
        "voice-link",
        &[
            CONVERSATION_EVENTS,
            RESPONSES,
            OUTBOUND,
            DELIVERY,
            DEAD_LETTER,
            COMPLIANCE,
            TRANSCRIPT,
            VOICE_LINK_STATE,
        ],
    ),
    ("media", &[CONVERSATION_EVENTS, MEDIA_STATE]),
    (
        "egress",
        &[
            DELIVERY,
            OUTBOUND_DLQ,
            EGRESS_LEDGER,
            DEAD_LETTER,
            COMPLIANCE,
        ],
    ),
    ("dev echo responder", &[RESPONSES]),
];

/// The topics `producer` (a name of [`WRITERS`]) writes; empty for another.
#[must_use]
pub fn written_by(producer: &str) -> &'static [&'static str] {
    WRITERS
        .iter()
        .find(|(name, _)| *name == producer)
        .map_or(&[], |(_, topics)| topics)
}

/// The value schema of a topic of [`ALL`]: `(file name under schemas/avro/, .avsc text)`;
/// `None` for a topic this crate does not know.
#[must_use]
pub fn value_schema(topic: &str) -> Option<(&'static str, &'static str)> {
    fn of<T: AvroRecord>() -> Option<(&'static str, &'static str)> {
        Some((T::SCHEMA_FILE, T::SCHEMA_JSON))
    }
    match topic {
        WEBHOOKS => of::<TwilioWebhook>(),
        CONVERSATION_EVENTS => of::<ConversationEvent>(),
        INBOUND => of::<InboundMessage>(),
        RESPONSES => of::<CognitionResponse>(),
        COMMANDS => of::<Command>(),
        OUTBOUND => of::<OutboundOperation>(),
        DELIVERY => of::<DeliveryStatus>(),
        OUTBOUND_DLQ => of::<OutboundDeadLetter>(),
        EGRESS_LEDGER => of::<EgressLedgerEntry>(),
        DEAD_LETTER => of::<DeadLetter>(),
        COMPLIANCE => of::<ComplianceEvent>(),
        CONSENT | CONSENT_REGISTRY => of::<ConsentState>(),
        IDENTITY => of::<IdentityRecord>(),
        PARTICIPANTS => of::<ParticipantBinding>(),
        TRANSCRIPT => of::<TranscriptEntry>(),
        ARCHIVAL => of::<ArchivalRequest>(),
        NORMALIZE_STATE => of::<NormalizeState>(),
        CONSENT_STATE => of::<ConsentProcessorState>(),
        SEGMENT_STATE => of::<SegmentState>(),
        LIFECYCLE_STATE => of::<LifecycleState>(),
        VOICE_LINK_STATE => of::<VoiceLinkState>(),
        MEDIA_STATE => of::<MediaState>(),
        _ => None,
    }
}
