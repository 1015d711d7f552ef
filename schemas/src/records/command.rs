//! `si.commands.v1`: `schemas/avro/command.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Channel;

/// An instruction to the adapter about one conversation, from session
/// orchestration, the cognition layer or an operator. `command_id` is the
/// idempotency key: a command re-sent with the same id is executed once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unique id chosen by the issuer (e.g. a UUID).
    pub command_id: String,
    /// Conversation the command is about (Twilio ConversationSid); the Kafka key.
    /// For START_CONVERSATION, where no ConversationSid exists yet, an id chosen
    /// by the issuer that the adapter uses as the new conversation's UniqueName.
    pub conversation_id: String,
    /// Si session: the one to bind for START_CONVERSATION; otherwise optional.
    pub session_id: Option<String>,
    /// What to do.
    pub kind: CommandKind,
    /// E.164 address to contact (START_CONVERSATION, or ESCALATE_TO_VOICE to a
    /// number other than the participant's).
    pub address: Option<String>,
    /// Channel for START_CONVERSATION.
    pub channel: Option<Channel>,
    /// Locale for messages and voice prompts, BCP 47; `None` for the conversation's locale.
    pub locale: Option<String>,
    /// Free-text reason, for audit and the closing summary.
    pub reason: Option<String>,
    /// Who issued the command (service name or operator id), for audit.
    pub issued_by: String,
    /// When the command was issued (ms since the epoch).
    pub issued_at: i64,
    /// Extra options for the command kind; unknown names are ignored.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

crate::avro_record!(Command, "command.avsc");

impl Command {
    /// A command of `kind` with its id, conversation, issuer and time, and
    /// nothing else: no session, address, channel, locale, reason or params.
    /// Set those the kind needs with struct update syntax.
    #[must_use]
    pub fn new(
        kind: CommandKind,
        command_id: impl Into<String>,
        conversation_id: impl Into<String>,
        issued_by: impl Into<String>,
        issued_at: i64,
    ) -> Self {
        Self {
            command_id: command_id.into(),
            conversation_id: conversation_id.into(),
            session_id: None,
            kind,
            address: None,
            channel: None,
            locale: None,
            reason: None,
            issued_by: issued_by.into(),
            issued_at,
            params: BTreeMap::new(),
        }
    }
}

avro_enum! {
    /// What a [`Command`] asks for.
    pub enum CommandKind (default Unknown) {
        /// Call the conversation's user and link the call to the conversation
        /// (recording disclosure first).
        EscalateToVoice = "ESCALATE_TO_VOICE",
        /// Open a conversation with `address` on `channel` (proactive outreach;
        /// consent is checked).
        StartConversation = "START_CONVERSATION",
        /// Close the conversation (final summary and archival follow).
        CloseConversation = "CLOSE_CONVERSATION",
        /// Hang up the conversation's active call (voice-link).
        EndCall = "END_CALL",
        /// A symbol newer than this build (the default); dead-lettered.
        Unknown = "UNKNOWN",
    }
}
