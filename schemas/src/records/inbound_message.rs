//! `si.inbound.v1`: `schemas/avro/inbound_message.avsc`.

use serde::{Deserialize, Serialize};

use super::{Channel, MediaRef, StoredMedia};

/// A user message for the cognition layer, after consent and policy checks
/// passed. Consent keywords (STOP, START, HELP…) and revocation phrases (opt
/// out, please stop…) are answered by the adapter and not forwarded. Exactly one record per user message (processor output,
/// transactional: read with `read_committed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Id of the user's message: the Twilio message SID (`IM…`, `SM…` or `MM…`).
    /// Unique per message: the idempotency key, and the `in_reply_to` of the answer.
    pub message_id: String,
    /// Conversation to answer in (Twilio ConversationSid); the Kafka key.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// Si user id for a registered user; `None` for visitors.
    pub user_id: Option<String>,
    /// Stable pseudonymous id of an unregistered visitor; `None` for registered users.
    pub visitor_id: Option<String>,
    /// True when the sender is a registered Si user (`user_id` is set).
    pub registered: bool,
    /// Channel the user wrote on; the reply goes back on it.
    pub channel: Channel,
    /// Locale to answer in, BCP 47 (e.g. `en`, `es-MX`).
    pub locale: String,
    /// Message text, unmodified; empty for a media-only message.
    pub text: String,
    /// Attached media in order; empty when none.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// When ingress received the message (ms since the epoch).
    pub received_at: i64,
    /// `event_id` of the `si.conversation.events.v1` event this message came from.
    pub event_id: String,
    /// True for the first message ever seen from this address on this channel;
    /// the adapter sends its own welcome and consent notice separately.
    pub first_contact: bool,
    /// True when the message may revoke consent (a revocation word in a
    /// longer message): the user is still opted in; answer, and say how to
    /// opt out (reply STOP) if that is what they meant. The compliance event
    /// `POSSIBLE_REVOCATION` has the matched rule.
    #[serde(default)]
    pub possible_revocation: bool,
    /// W3C Trace Context `traceparent` of the trace this record belongs to.
    pub traceparent: Option<String>,
    /// What is asked of the cognition layer: answer the user, or summarize the
    /// conversation for its closing message.
    #[serde(default = "InboundPurpose::user_message")]
    pub purpose: InboundPurpose,
    /// For purpose `MEDIA_STORED`: the durable copies of the message's media
    /// (or why an item could not be copied); empty otherwise.
    #[serde(default)]
    pub stored_media: Vec<StoredMedia>,
    /// The place, when the user shared a location (WhatsApp).
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

crate::avro_record!(InboundMessage, "inbound_message.avsc");

avro_enum! {
    /// Why the adapter sends an [`InboundMessage`] to the cognition layer.
    pub enum InboundPurpose (default Unknown) {
        /// The user wrote; the answer is sent to the user.
        UserMessage = "USER_MESSAGE",
        /// Lifecycle asks for a final summary of the conversation (text empty);
        /// answer with a `CognitionResponse` of purpose SUMMARY whose
        /// `in_reply_to` is this `message_id`.
        SummaryRequest = "SUMMARY_REQUEST",
        /// The media of an earlier user message (`message_id`) are in Si's
        /// object storage or unavailable (`stored_media`); not to be answered.
        MediaStored = "MEDIA_STORED",
        /// A symbol newer than this build (the default); ignore the record.
        Unknown = "UNKNOWN",
    }
}

impl InboundPurpose {
    /// The field default: records written before the field existed are user messages.
    #[must_use]
    pub const fn user_message() -> Self {
        Self::UserMessage
    }
}
