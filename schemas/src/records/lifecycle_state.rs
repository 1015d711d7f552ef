//! `si.lifecycle.state.v1`: `schemas/avro/lifecycle_state.avsc` (internal changelog of lifecycle).

use serde::{Deserialize, Serialize};

use super::{ArchivalReason, Channel, MediaRef};

/// The lifecycle stage's state of one open conversation, as written to its
/// changelog `si.lifecycle.state.v1` under `conv|<conversation id>`. The
/// entry's state timer says when the next warning, closure step or timeout is
/// due; the entry is deleted once the conversation is archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleState {
    /// The conversation (Twilio ConversationSid, or a `pm-…` id).
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// Channel of the user.
    pub channel: Channel,
    /// The user's address in E.164 without prefix; `None` for chat participants.
    pub address: Option<String>,
    /// Our address the user talks to, E.164 without prefix.
    pub proxy_address: Option<String>,
    /// Locale of the conversation, BCP 47.
    pub locale: String,
    /// Lifecycle phase.
    pub phase: LifecyclePhase,
    /// When lifecycle saw the conversation's first message (ms since the epoch).
    pub opened_at: i64,
    /// Record time of the last message in either direction (ms since the epoch).
    pub last_activity_at: i64,
    /// Why it is closing; `None` while open.
    pub close_reason: Option<ArchivalReason>,
    /// When closure began (ms since the epoch); `None` while open.
    pub closing_started_at: Option<i64>,
    /// `message_id` of the summary request, while SUMMARIZING.
    pub summary_request_id: Option<String>,
    /// The summary for the closing message, once known.
    pub summary: Option<String>,
    /// `response_id` of the closing message, while CLOSING.
    pub closing_response_id: Option<String>,
    /// First `si.transcript.v1` sequence seen.
    pub first_sequence: Option<i64>,
    /// Last `si.transcript.v1` sequence seen.
    pub last_sequence: Option<i64>,
    /// Media the user sent, oldest first, at most 100.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// A Programmable Messaging conversation (nothing to close at Twilio).
    #[serde(default)]
    pub programmable_messaging: bool,
    /// The opening text of a conversation Si started, until lifecycle reads
    /// back its own participant event.
    #[serde(default)]
    pub opening_text: Option<String>,
    /// The ConversationSid of a conversation Si started in Conversations
    /// mode, once created (aliased to the id in the directory).
    #[serde(default)]
    pub conversation_sid: Option<String>,
    /// A call of the conversation still queued, ringing or in progress:
    /// closure hangs it up.
    #[serde(default)]
    pub active_call_sid: Option<String>,
    /// Compliance events recorded about the conversation, oldest first, at
    /// most 1000 (for the archival request).
    #[serde(default)]
    pub compliance_event_ids: Vec<String>,
    /// When a call voice-link scheduled will be placed (or, once it is off,
    /// when voice-link said so): the idle period runs from then at the
    /// earliest.
    #[serde(default)]
    pub call_scheduled_at: Option<i64>,
}

crate::avro_record!(LifecycleState, "lifecycle_state.avsc");

avro_enum! {
    /// Where a conversation is in its lifecycle.
    pub enum LifecyclePhase (default Unknown) {
        /// Active; the timer is the inactivity warning.
        Open = "OPEN",
        /// The warning went out; the timer is the closure.
        Warned = "WARNED",
        /// Closing, waiting for the summary; the timer is the summary timeout.
        Summarizing = "SUMMARIZING",
        /// The closing message went out; waiting for its delivery status.
        Closing = "CLOSING",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
