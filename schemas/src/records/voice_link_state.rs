//! `si.voicelink.state.v1`: `schemas/avro/voice_link_state.avsc` (internal changelog of voice-link).

use serde::{Deserialize, Serialize};

use super::Channel;

/// The voice-link stage's state of one conversation, under
/// `conv|<conversation id>`; the entry's timer is a scheduled call's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceLinkState {
    /// The conversation.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// The conversation's text channel (VOICE when it began with a call).
    pub channel: Channel,
    /// The user's phone number, E.164 without prefix.
    pub address: Option<String>,
    /// Our number the user texts, E.164 without prefix.
    pub proxy_address: Option<String>,
    /// Locale of the conversation, BCP 47.
    pub locale: String,
    /// The user's IANA time zone from the identity record, when known.
    pub time_zone: Option<String>,
    /// Sequence number of the next transcript entry (from 1, never back).
    pub next_sequence: i64,
    /// Record time of the last input about the conversation (ms since the epoch).
    pub last_activity_at: i64,
    /// A scheduled call, if any.
    pub scheduled: Option<ScheduledCall>,
    /// Recent calls, oldest first.
    #[serde(default)]
    pub calls: Vec<VoiceLinkCall>,
    /// Outbound messages waiting for the rest of their parts' outcomes.
    #[serde(default)]
    pub outbound: Vec<PendingOutbound>,
    /// When voice-link learnt that the conversation is closed (its CLOSED
    /// event, Twilio's or lifecycle's; ms since the epoch): an
    /// `ESCALATE_TO_VOICE` after it is refused.
    /// Cleared when lifecycle opens a Programmable Messaging conversation
    /// again (its ACTIVE event, or Si starting it).
    #[serde(default)]
    pub closed_at: Option<i64>,
}

crate::avro_record!(VoiceLinkState, "voice_link_state.avsc");

/// An escalation waiting for its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledCall {
    /// The `ESCALATE_TO_VOICE` command.
    pub command_id: String,
    /// When the call is placed (ms since the epoch).
    pub due_at: i64,
    /// When the command was read (ms since the epoch).
    pub requested_at: i64,
    /// The number to call, E.164.
    pub to: String,
    /// Our number to call from, E.164.
    pub from: String,
    /// Locale of the call's prompts and texts.
    pub locale: String,
}

/// A call of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceLinkCall {
    /// Twilio's Call SID, once known.
    pub call_sid: Option<String>,
    /// The `CREATE_CALL` operation, for a call voice-link placed.
    pub operation_id: Option<String>,
    /// The `ESCALATE_TO_VOICE` command, for a call voice-link placed.
    pub command_id: Option<String>,
    /// True when the user called.
    #[serde(default)]
    pub inbound: bool,
    /// When requested or first seen (ms since the epoch).
    pub requested_at: i64,
    /// When it connected (ms since the epoch).
    pub answered_at: Option<i64>,
    /// The recording answer (`DISCLOSED`, `ACCEPTED`, `DECLINED`, `NO_INPUT`).
    pub disclosure: Option<String>,
    /// The last Twilio call status seen (a `CallState` symbol).
    pub status: String,
    /// How it ended; `None` while live.
    pub outcome: Option<String>,
    /// Locale of the call.
    pub locale: String,
}

/// An outbound message whose parts' outcomes are still coming in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOutbound {
    /// The response id, or the operation id.
    pub message_id: String,
    /// Parts of the message.
    pub part_count: i32,
    /// Outcomes so far.
    #[serde(default)]
    pub parts: Vec<OutboundPartOutcome>,
}

/// The outcome of one part of an outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundPartOutcome {
    /// The part's index.
    pub index: i32,
    /// Twilio accepted it.
    pub accepted: bool,
    /// The text as sent.
    pub text: Option<String>,
    /// Twilio's message SID.
    pub sid: Option<String>,
    /// When egress reached the outcome (ms since the epoch).
    pub at: i64,
}
