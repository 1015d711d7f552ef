//! `si.archival.v1`: `schemas/avro/archival_request.avsc`.

use serde::{Deserialize, Serialize};

use super::MediaRef;

/// Asks transcript storage to archive a closed conversation: its entries on
/// `transcript_topic` from `first_sequence` to `last_sequence`, with the closing
/// summary. One per conversation closure, written by lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivalRequest {
    /// Deterministic id, one per conversation closure.
    pub request_id: String,
    /// The closed conversation (Twilio ConversationSid); the Kafka key.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// When the conversation closed (ms since the epoch).
    pub closed_at: i64,
    /// Why it closed.
    pub reason: ArchivalReason,
    /// The final summary given at closure, if any.
    pub summary: Option<String>,
    /// Topic holding the transcript entries (`si.transcript.v1`).
    pub transcript_topic: String,
    /// First transcript sequence of the conversation (inclusive).
    pub first_sequence: Option<i64>,
    /// Last transcript sequence of the conversation (inclusive).
    pub last_sequence: Option<i64>,
    /// Retention policy the archive should apply (e.g. `standard`, `legal-hold`).
    pub retention_class: Option<String>,
    /// When lifecycle requested the archival (ms since the epoch).
    pub requested_at: i64,
    /// When the conversation opened (the first message lifecycle saw).
    pub opened_at: Option<i64>,
    /// Media the user sent in the conversation, oldest first, at most 100.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// `event_id`s of the compliance events recorded about the conversation
    /// while it was open, oldest first, at most 1000.
    #[serde(default)]
    pub compliance_event_ids: Vec<String>,
}

crate::avro_record!(ArchivalRequest, "archival_request.avsc");

avro_enum! {
    /// Why a conversation closed.
    pub enum ArchivalReason (default Unknown) {
        /// Inactivity timeout (after a warning).
        Inactivity = "INACTIVITY",
        /// The user asked to end it.
        UserRequest = "USER_REQUEST",
        /// A CLOSE_CONVERSATION command.
        Command = "COMMAND",
        /// Closed on Twilio's side (timer or API).
        TwilioClosed = "TWILIO_CLOSED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
