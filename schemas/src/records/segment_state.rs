//! `si.segment.state.v1`: `schemas/avro/segment_state.avsc` (internal changelog of segment).

use serde::{Deserialize, Serialize};

use super::Channel;

/// One entry of the segment stage's state store, as written to its changelog
/// `si.segment.state.v1`. Key: `seen|<response_id>` for a response already
/// handled, `conv|<conversation id>` for what segment knows about a
/// conversation. `kind` says which payload field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// Which payload field is set.
    pub kind: SegmentStateKind,
    /// Set for SEEN_RESPONSE.
    pub seen_response: Option<SeenResponse>,
    /// Set for CONVERSATION.
    pub conversation: Option<SegmentConversation>,
    /// Set for PENDING_RESPONSES.
    #[serde(default)]
    pub pending: Option<SegmentPending>,
    /// Set for SENT_OPERATION.
    #[serde(default)]
    pub sent: Option<SegmentSent>,
    /// Set for DELIVERY_REPORT.
    #[serde(default)]
    pub report: Option<SegmentDeliveryReport>,
}

impl SegmentState {
    /// An entry of `kind` with no payload yet.
    #[must_use]
    pub fn empty(kind: SegmentStateKind) -> Self {
        Self {
            kind,
            seen_response: None,
            conversation: None,
            pending: None,
            sent: None,
            report: None,
        }
    }
}

/// A message segment wrote (or a resend of it), kept for delivery remediation
/// (keys `op|<operation id>`, then `sid|<Twilio SID>`; `retry|<operation id>`
/// for a resend waiting for its time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSent {
    /// This attempt's operation id.
    pub operation_id: String,
    /// The chain's first operation.
    pub origin_operation_id: String,
    /// Remediations decided in the chain before this attempt (0: the original).
    pub attempt: i32,
    /// The `OutboundOperation` as written, as JSON.
    pub operation_json: String,
    /// The response asked for priority HIGH.
    #[serde(default)]
    pub urgent: bool,
    /// The SID Twilio gave the attempt, once egress reported it.
    #[serde(default)]
    pub twilio_sid: Option<String>,
    /// Policy steps used per error code (`*` for the default rule).
    #[serde(default)]
    pub steps_used: std::collections::BTreeMap<String, i32>,
    /// For a resend waiting: when it is written (ms since the epoch).
    #[serde(default)]
    pub not_before: Option<i64>,
    /// Record time of egress's ACCEPTED status of the attempt (ms since the
    /// epoch): the start of the time to delivery.
    #[serde(default)]
    pub accepted_at: Option<i64>,
}

/// A final delivery report ahead of egress's status naming its SID (key `dlr|<SID>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDeliveryReport {
    /// The SID the report is about.
    pub message_sid: String,
    /// Delivered or read; false for failed or undelivered.
    #[serde(default)]
    pub delivered: bool,
    /// Twilio's error code.
    pub error_code: Option<i32>,
    /// Twilio's error text.
    pub error_message: Option<String>,
    /// Record time of the report (ms since the epoch).
    pub at: i64,
    /// The report's status in lower case: `delivered`, `read`, `failed` or
    /// `undelivered` (`None`: not recorded).
    #[serde(default)]
    pub status: Option<String>,
}

/// Responses that arrived before any event of their conversation, parked
/// until its first event (key `pending|<conversation id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPending {
    /// The conversation.
    pub conversation_id: String,
    /// Record time of the first parked response (ms since the epoch).
    pub parked_at: i64,
    /// The parked `CognitionResponse` records as JSON, oldest first.
    #[serde(default)]
    pub responses_json: Vec<String>,
}

crate::avro_record!(SegmentState, "segment_state.avsc");

avro_enum! {
    /// Which payload a [`SegmentState`] entry carries.
    pub enum SegmentStateKind (default Unknown) {
        /// A cognition response already handled (`seen_response`).
        SeenResponse = "SEEN_RESPONSE",
        /// A conversation's recipients and sender (`conversation`).
        Conversation = "CONVERSATION",
        /// Responses waiting for their conversation's first event (`pending`).
        PendingResponses = "PENDING_RESPONSES",
        /// A message kept for delivery remediation (`sent`).
        SentOperation = "SENT_OPERATION",
        /// A final delivery report ahead of egress's status (`report`).
        DeliveryReport = "DELIVERY_REPORT",
        /// A symbol newer than this build (the default); ignored.
        Unknown = "UNKNOWN",
    }
}

/// A cognition response segment already handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenResponse {
    /// The `response_id`.
    pub response_id: String,
    /// Timestamp of the record first handled with this id (ms since the epoch).
    pub first_seen_at: i64,
    /// Outbound operations written for it; 0 when blocked.
    pub part_count: i32,
    /// The consent gate blocked it.
    #[serde(default)]
    pub blocked: bool,
}

/// A conversation as segment knows it from `si.conversation.events.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentConversation {
    /// The conversation id.
    pub conversation_id: String,
    /// Locale of the latest user event (BCP 47).
    pub locale: Option<String>,
    /// Twilio reported the conversation CLOSED.
    #[serde(default)]
    pub closed: bool,
    /// Timestamp of the latest event record of the conversation (ms since the epoch).
    pub last_event_at: i64,
    /// The user participants with a text channel, in the order first seen.
    #[serde(default)]
    pub participants: Vec<SegmentParticipant>,
    /// Its events come from Programmable Messaging: replies are Messages API
    /// sends whatever the id looks like (a conversation Si started).
    #[serde(default)]
    pub programmable_messaging: bool,
}

/// A user participant (not Si) of a conversation with a text channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentParticipant {
    /// Channel of the participant's binding.
    pub channel: Channel,
    /// The user's address in E.164 without prefix; `None` for chat identities.
    pub address: Option<String>,
    /// Our address the participant talks to, E.164 without prefix.
    pub proxy_address: Option<String>,
    /// Conversations `Identity` of a chat participant.
    pub identity: Option<String>,
    /// Twilio Participant SID (`MB…`), when known.
    pub participant_sid: Option<String>,
    /// Locale of the participant's latest event, BCP 47.
    pub locale: Option<String>,
    /// When the participant last wrote to us (ms since the epoch): the start of
    /// the WhatsApp 24-hour window.
    pub last_inbound_at: Option<i64>,
}
