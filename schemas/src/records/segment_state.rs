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
