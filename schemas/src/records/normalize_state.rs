//! `si.normalize.state.v1`: `schemas/avro/normalize_state.avsc` (internal changelog of normalize).

use serde::{Deserialize, Serialize};

use super::{Channel, ConversationState};

/// One entry of the normalize stage's state store, as written to its changelog
/// `si.normalize.state.v1`. Key: `seen|<dedup_key>` for a seen Twilio event,
/// `conv|<conversation id>` for a conversation's session binding. `kind` says
/// which payload field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizeState {
    /// Which payload field is set.
    pub kind: NormalizeStateKind,
    /// Set for SEEN_EVENT.
    pub seen_event: Option<SeenEvent>,
    /// Set for CONVERSATION and CALL.
    pub conversation: Option<ConversationBinding>,
}

crate::avro_record!(NormalizeState, "normalize_state.avsc");

avro_enum! {
    /// Which payload a [`NormalizeState`] entry carries.
    pub enum NormalizeStateKind (default Unknown) {
        /// A Twilio event already normalized (`seen_event`).
        SeenEvent = "SEEN_EVENT",
        /// A conversation's session binding and participants (`conversation`).
        Conversation = "CONVERSATION",
        /// The conversation and session a call's events go to, and the
        /// call's user (`conversation`, key `call|<CallSid>`).
        Call = "CALL",
        /// A symbol newer than this build (the default); ignored.
        Unknown = "UNKNOWN",
    }
}

/// A Twilio event normalize already turned into a conversation event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEvent {
    /// `event_id` of the conversation event written for it.
    pub event_id: String,
    /// `webhook_id` of the first webhook record of the event.
    pub webhook_id: String,
    /// Timestamp of the first webhook record of the event (ms since the epoch).
    pub first_seen_at: i64,
}

/// A conversation as normalize knows it: its Si session and its participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationBinding {
    /// The conversation id.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// When normalize first saw the conversation (ms since the epoch).
    pub bound_at: i64,
    /// Timestamp of the latest webhook record of the conversation.
    pub last_event_at: i64,
    /// Latest known Twilio state.
    pub state: Option<ConversationState>,
    /// The user participants (not Si), in the order they joined.
    #[serde(default)]
    pub participants: Vec<BoundParticipant>,
}

/// A user participant of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundParticipant {
    /// Twilio Participant SID (`MB…`), when known.
    pub participant_sid: Option<String>,
    /// Address in E.164 without prefix; `None` for chat identities.
    pub address: Option<String>,
    /// Channel of the participant's binding.
    pub channel: Channel,
    /// Our address the participant talks to, E.164 without prefix.
    pub proxy_address: Option<String>,
    /// Conversations `Identity` of a chat participant.
    pub identity: Option<String>,
    /// Locale from the participant's Conversations attributes, BCP 47.
    pub locale: Option<String>,
}
