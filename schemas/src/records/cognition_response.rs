//! `si.responses.v1`: `schemas/avro/cognition_response.avsc`.

use serde::{Deserialize, Serialize};

use super::MediaRef;

/// A reply from the cognition layer into a conversation. The adapter applies
/// the consent gate and channel rules (length limits, GSM-7/UCS-2, the WhatsApp
/// 24-hour window), splits the text into messages and sends them.
/// `response_id` is the idempotency key: a response re-sent with the same id is
/// delivered once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CognitionResponse {
    /// Unique id of the response, chosen by the cognition layer (e.g. a UUID).
    pub response_id: String,
    /// Conversation to answer in (`InboundMessage::conversation_id`); the Kafka key.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// `message_id` of the `InboundMessage` this answers; `None` for a proactive message.
    pub in_reply_to: Option<String>,
    /// Reply text, plain (no markup), any length: the adapter splits it to
    /// channel limits. May be empty when `media` is set.
    pub text: String,
    /// Media to attach; each needs a `url` Twilio can fetch.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// Locale of the text, BCP 47; `None` means the conversation's locale.
    pub locale: Option<String>,
    /// How the adapter may split the text; `None` for the defaults.
    pub hints: Option<SegmentationHints>,
    /// When the cognition layer created the response (ms since the epoch).
    pub created_at: i64,
    /// W3C Trace Context `traceparent`, ideally continuing the trace of the
    /// `InboundMessage` answered.
    pub traceparent: Option<String>,
    /// What the response is: a reply for the user, or the summary lifecycle
    /// asked for (never sent to the user as such).
    #[serde(default = "ResponsePurpose::reply")]
    pub purpose: ResponsePurpose,
}

crate::avro_record!(CognitionResponse, "cognition_response.avsc");

/// Guidance from the cognition layer on how the adapter may split a long reply
/// into messages.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SegmentationHints {
    /// Split into at most this many messages; `None` for the channel default.
    pub max_parts: Option<i32>,
    /// Prefer splitting at paragraph boundaries; `None` for the adapter default.
    pub keep_paragraphs: Option<bool>,
    /// Sending priority relative to other outbound work of the same sender.
    #[serde(default)]
    pub priority: Priority,
    /// Whether the adapter may shorten the text (marked with an ellipsis) to
    /// respect `max_parts`; when false or `None` the whole text is sent.
    pub allow_truncation: Option<bool>,
}

avro_enum! {
    /// What a [`CognitionResponse`] is.
    pub enum ResponsePurpose (default Unknown) {
        /// A message for the user: segmented, consent-gated and sent.
        Reply = "REPLY",
        /// The answer to a summary request (`in_reply_to` names it): lifecycle
        /// puts it in the closing message; segment does not send it.
        Summary = "SUMMARY",
        /// A symbol newer than this build (the default); not sent.
        Unknown = "UNKNOWN",
    }
}

impl ResponsePurpose {
    /// The field default: records written before the field existed are replies.
    #[must_use]
    pub const fn reply() -> Self {
        Self::Reply
    }
}

avro_enum! {
    /// Relative urgency of outbound text. A symbol newer than this build reads as NORMAL.
    pub enum Priority (default Normal) {
        /// May wait behind other traffic of the same sender (e.g. follow-ups).
        Low = "LOW",
        /// The default.
        Normal = "NORMAL",
        /// The user is waiting for it.
        High = "HIGH",
    }
}
