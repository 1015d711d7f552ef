//! `si.participants.v1`: `schemas/avro/participant_binding.avsc`.

use serde::{Deserialize, Serialize};

use super::Channel;

/// Directory entry binding a user address, through one of our proxy
/// addresses, to its conversation and Si session. An entry of a compacted
/// table keyed `<channel>:<E.164>|<proxy address>` (empty proxy part when
/// `proxy_address` is `None`); a tombstone removes the binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantBinding {
    /// The user's address in E.164 without prefix.
    pub address: String,
    /// Channel of the address.
    pub channel: Channel,
    /// Our address the user talks to, E.164 without prefix.
    pub proxy_address: Option<String>,
    /// The bound conversation (Twilio ConversationSid).
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// Twilio Participant SID (`MB…`) of the user in the conversation, when known.
    pub participant_sid: Option<String>,
    /// False once the conversation is closed.
    pub active: bool,
    /// When the address was bound to this conversation (ms since the epoch).
    pub bound_at: i64,
    /// When this entry was written (ms since the epoch).
    pub updated_at: i64,
    /// The conversation the address was bound to through this proxy before
    /// this one, when that one had been closed (a re-entry); `None` otherwise.
    pub previous_conversation_id: Option<String>,
}

crate::avro_record!(ParticipantBinding, "participant_binding.avsc");

impl ParticipantBinding {
    /// The Kafka key of this entry: `<channel>:<E.164>|<proxy address>`.
    #[must_use]
    pub fn key(&self) -> String {
        format!(
            "{}|{}",
            self.channel.address_key(&self.address),
            self.proxy_address.as_deref().unwrap_or("")
        )
    }

    /// The key of the alias entry of a Twilio Conversation Si started under
    /// another id (its UniqueName): `alias:<ConversationSid>`. The entry's
    /// `conversation_id` and `session_id` are the ones Si started it with.
    #[must_use]
    pub fn alias_key(conversation_sid: &str) -> String {
        format!("alias:{conversation_sid}")
    }
}
