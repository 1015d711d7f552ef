//! `twilio.webhooks.v1`: `schemas/avro/twilio_webhook.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One HTTP request Twilio made to ingress, stored losslessly after its
/// signature was verified. Ingress answers Twilio with 2xx only after Kafka
/// acknowledged this record (acks=all). Twilio retries webhooks it got no
/// timely answer for, so the same request can be stored more than once (same
/// `idempotency_token`, new `webhook_id`): readers de-duplicate. Nothing here is
/// interpreted; the normalized view is `si.conversation.events.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwilioWebhook {
    /// Unique id of this stored request: a random UUID (canonical lower-case
    /// text) assigned by ingress. A Twilio retry gets a new `webhook_id`;
    /// `idempotency_token` correlates retries.
    pub webhook_id: String,
    /// When ingress received the request (ingress clock), ms since the epoch.
    pub received_at: i64,
    /// Ingress endpoint that received the request.
    pub route: WebhookRoute,
    /// Twilio's event type as sent (Conversations `EventType`, e.g.
    /// `onMessageAdded`), or a name ingress derives for products that send none
    /// (e.g. `MessageStatus`, `CallStatus`, `RecordingStatus`).
    pub event_type: Option<String>,
    /// Twilio `AccountSid` (`AC…`) of the request, when present.
    pub account_sid: Option<String>,
    /// SID of the resource the webhook is about (the most specific present:
    /// MessageSid, RecordingSid, CallSid, ParticipantSid, ConversationSid).
    pub resource_sid: Option<String>,
    /// Value of the `I-Twilio-Idempotency-Token` header. Twilio repeats it when
    /// retrying the same webhook; with `resource_sid` and `event_type` it is the
    /// de-duplication key.
    pub idempotency_token: Option<String>,
    /// `Content-Type` header as received.
    pub content_type: String,
    /// Every form parameter of the body in arrival order; a name may repeat.
    /// Empty for non-form (JSON) bodies.
    #[serde(default)]
    pub params: Vec<WebhookParam>,
    /// The raw request body, byte for byte, when it is not form-encoded (JSON
    /// webhooks); `None` for form-encoded requests, whose content is in `params`.
    #[serde(default, with = "apache_avro::serde::bytes_opt")]
    pub body: Option<Vec<u8>>,
    /// The raw query string exactly as received, without the leading `?`.
    pub query: Option<String>,
    /// A small allow-list of request headers chosen by ingress, names
    /// lower-cased. Credentials and cookies are never stored.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The conversation id carried by our own callback URLs, when the URL had one.
    pub conversation_hint: Option<String>,
    /// W3C Trace Context `traceparent` of the trace started (or continued) by
    /// ingress for this request.
    pub traceparent: Option<String>,
}

crate::avro_record!(TwilioWebhook, "twilio_webhook.avsc");

/// One name/value pair of a form-encoded Twilio webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookParam {
    /// Parameter name exactly as sent (case preserved), e.g. `MessageSid`,
    /// `MediaUrl0`, `MessagingBinding.Address`.
    pub name: String,
    /// Parameter value, percent-decoded, otherwise exactly as sent (addresses
    /// keep their `whatsapp:` prefix here).
    pub value: String,
}

avro_enum! {
    /// Which ingress endpoint received the request, i.e. which kind of Twilio
    /// webhook it is.
    pub enum WebhookRoute (default Unknown) {
        /// Conversations post-event webhook (`onMessageAdded`, …).
        ConversationsPostEvent = "CONVERSATIONS_POST_EVENT",
        /// Conversations pre-event webhook (`onMessageAdd`, …), answered synchronously.
        ConversationsPreEvent = "CONVERSATIONS_PRE_EVENT",
        /// An incoming Programmable Messaging message.
        MessagingInbound = "MESSAGING_INBOUND",
        /// A Programmable Messaging status callback.
        MessagingStatus = "MESSAGING_STATUS",
        /// A call status callback.
        VoiceStatus = "VOICE_STATUS",
        /// The TwiML request when a call is answered or arrives.
        VoiceAnswer = "VOICE_ANSWER",
        /// The result of a `<Gather>` (digits or speech).
        VoiceGather = "VOICE_GATHER",
        /// A recording status callback.
        RecordingStatus = "RECORDING_STATUS",
        /// A transcription callback.
        Transcription = "TRANSCRIPTION",
        /// None of these, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
