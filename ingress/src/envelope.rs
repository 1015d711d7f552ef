//! The lossless record of a webhook on `twilio.webhooks.v1`, and its Kafka key.

use std::collections::BTreeMap;

use axum::http::{HeaderName, header};
use si_schemas::records::{TwilioWebhook, WebhookParam, WebhookRoute};

/// Headers worth keeping. Everything else, including the signature, is dropped.
pub const KEPT_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("i-twilio-idempotency-token"),
    header::USER_AGENT,
    HeaderName::from_static("x-home-region"),
    HeaderName::from_static("x-twilio-webhook-retry-count"),
    SIGNATURE_SETTINGS,
];

/// Selects the signature's algorithm (HMAC-SHA256 with a shared key).
pub const SIGNATURE_SETTINGS: HeaderName =
    HeaderName::from_static("x-twilio-webhooks-signature-settings");

/// The body of a request, as parsed.
#[derive(Debug, Clone)]
pub enum Body {
    /// Form parameters in arrival order.
    Form(Vec<(String, String)>),
    /// A JSON object (kept raw; `fields` are its top-level string values, for routing).
    Json {
        /// The raw body.
        raw: Vec<u8>,
        /// Top-level string (and number) fields.
        fields: BTreeMap<String, String>,
    },
}

impl Body {
    /// The first value of a parameter (form) or top-level field (JSON).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        match self {
            Self::Form(params) => params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            Self::Json { fields, .. } => fields.get(name).map(String::as_str),
        }
        .filter(|v| !v.is_empty())
    }
}

/// The first value of `name` in a raw query string.
#[must_use]
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// What the envelope says the event is. Conversations name theirs (`EventType`);
/// for the other products the name includes the status, so that two callbacks
/// about the same resource (sent, then delivered) are different events.
#[must_use]
pub fn event_type(route: WebhookRoute, body: &Body) -> Option<String> {
    let with_status = |prefix: &str, param: &str| {
        Some(match body.get(param) {
            Some(status) => format!("{prefix}.{}", status.to_ascii_lowercase()),
            None => prefix.to_owned(),
        })
    };
    match route {
        WebhookRoute::ConversationsPostEvent | WebhookRoute::ConversationsPreEvent => {
            body.get("EventType").map(str::to_owned)
        }
        WebhookRoute::MessagingInbound => Some("message.inbound".to_owned()),
        WebhookRoute::MessagingStatus => with_status("message.status", "MessageStatus")
            .or_else(|| with_status("message.status", "SmsStatus")),
        WebhookRoute::VoiceStatus => with_status("call.status", "CallStatus"),
        WebhookRoute::VoiceAnswer => Some("call.answer".to_owned()),
        WebhookRoute::VoiceGather => Some("call.gather".to_owned()),
        WebhookRoute::RecordingStatus => with_status("recording.status", "RecordingStatus"),
        // Recording transcriptions report a TranscriptionStatus, real-time
        // transcriptions a TranscriptionEvent (transcription-content, ...).
        WebhookRoute::Transcription => match body.get("TranscriptionStatus") {
            Some(_) => with_status("transcription", "TranscriptionStatus"),
            None => with_status("transcription", "TranscriptionEvent"),
        },
        WebhookRoute::Unknown => None,
    }
}

/// The SID of the resource the webhook is about.
#[must_use]
pub fn resource_sid(route: WebhookRoute, body: &Body) -> Option<String> {
    let first = |names: &[&str]| names.iter().find_map(|n| body.get(n)).map(str::to_owned);
    match route {
        WebhookRoute::ConversationsPostEvent | WebhookRoute::ConversationsPreEvent => {
            first(&["MessageSid", "ParticipantSid", "ConversationSid"])
        }
        WebhookRoute::MessagingInbound | WebhookRoute::MessagingStatus => {
            first(&["MessageSid", "SmsSid"])
        }
        WebhookRoute::RecordingStatus => first(&["RecordingSid", "CallSid"]),
        WebhookRoute::Transcription => first(&["TranscriptionSid", "CallSid"]),
        WebhookRoute::VoiceStatus
        | WebhookRoute::VoiceAnswer
        | WebhookRoute::VoiceGather
        | WebhookRoute::Unknown => first(&["CallSid"]),
    }
}

/// The Kafka key: the ConversationSid, else the conversation id our own callback
/// URLs carry, else, for every voice webhook (call status, answer, gather,
/// recording, transcription), the CallSid, else the user's address (the sender
/// of inbound traffic, the recipient of status callbacks), else the resource
/// SID. normalize re-keys by conversation.
///
/// Voice by CallSid: an inbound call's callbacks carry no conversation (Twilio
/// calls the number's URLs, and ingress answers before normalize linked the
/// call), and recording and transcription callbacks carry no caller either.
/// The CallSid is the one thing all of them carry, so one call's webhooks stay
/// in one partition, in order, where normalize keeps the call's link to its
/// conversation.
#[must_use]
pub fn key(route: WebhookRoute, body: &Body, conversation_hint: Option<&str>) -> String {
    if let Some(sid) = body.get("ConversationSid") {
        return sid.to_owned();
    }
    if let Some(hint) = conversation_hint {
        return hint.to_owned();
    }
    let user = match route {
        WebhookRoute::VoiceStatus
        | WebhookRoute::VoiceAnswer
        | WebhookRoute::VoiceGather
        | WebhookRoute::RecordingStatus
        | WebhookRoute::Transcription => body.get("CallSid"),
        WebhookRoute::MessagingStatus => body.get("To"),
        _ => body.get("From").or_else(|| body.get("Author")),
    };
    user.map(str::to_owned)
        .or_else(|| resource_sid(route, body))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Everything known about one request.
#[derive(Debug)]
pub struct Request<'a> {
    /// Which endpoint.
    pub route: WebhookRoute,
    /// The parsed body (moved into the envelope, not copied).
    pub body: Body,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// Content-Type as sent.
    pub content_type: &'a str,
    /// Kept headers (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// W3C trace context, if the caller sent one.
    pub traceparent: Option<String>,
    /// Milliseconds since the epoch.
    pub received_at: i64,
}

/// Builds the envelope and its key.
#[must_use]
pub fn envelope(request: Request<'_>) -> (String, TwilioWebhook) {
    let Request {
        route,
        body,
        query,
        content_type,
        headers,
        traceparent,
        received_at,
    } = request;
    let conversation_hint = query_param(query, "conversation");
    let key = key(route, &body, conversation_hint.as_deref());
    let event_type = event_type(route, &body);
    let account_sid = body.get("AccountSid").map(str::to_owned);
    let resource_sid = resource_sid(route, &body);
    let (params, body) = match body {
        Body::Form(params) => (
            params
                .into_iter()
                .map(|(name, value)| WebhookParam { name, value })
                .collect(),
            None,
        ),
        Body::Json { raw, .. } => (Vec::new(), Some(raw)),
    };
    let record = TwilioWebhook {
        webhook_id: uuid::Uuid::new_v4().to_string(),
        received_at,
        route,
        event_type,
        account_sid,
        resource_sid,
        idempotency_token: headers.get("i-twilio-idempotency-token").cloned(),
        content_type: content_type.to_owned(),
        params,
        body,
        query: query.map(str::to_owned),
        headers,
        conversation_hint,
        traceparent,
    };
    (key, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Body {
        Body::Form(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn keys_prefer_the_conversation_then_our_hint_then_the_user() {
        let conv = form(&[("ConversationSid", "CH1"), ("From", "+1555")]);
        assert_eq!(
            key(WebhookRoute::ConversationsPostEvent, &conv, Some("CH9")),
            "CH1"
        );
        let inbound = form(&[
            ("MessageSid", "SM1"),
            ("From", "whatsapp:+1555"),
            ("To", "+1999"),
        ]);
        assert_eq!(
            key(WebhookRoute::MessagingInbound, &inbound, None),
            "whatsapp:+1555"
        );
        assert_eq!(
            key(WebhookRoute::MessagingInbound, &inbound, Some("CH9")),
            "CH9"
        );
        let status = form(&[("MessageSid", "SM1"), ("From", "+1999"), ("To", "+1555")]);
        assert_eq!(key(WebhookRoute::MessagingStatus, &status, None), "+1555");
        let call = form(&[
            ("CallSid", "CA1"),
            ("From", "+1999"),
            ("To", "+1555"),
            ("Direction", "outbound-api"),
        ]);
        assert_eq!(key(WebhookRoute::VoiceStatus, &call, Some("CH9")), "CH9");
        // Without our conversation: every webhook of one call by its CallSid.
        assert_eq!(key(WebhookRoute::VoiceStatus, &call, None), "CA1");
        assert_eq!(key(WebhookRoute::VoiceAnswer, &call, None), "CA1");
        assert_eq!(key(WebhookRoute::VoiceGather, &call, None), "CA1");
        let recording = form(&[("CallSid", "CA1"), ("RecordingSid", "RE1")]);
        assert_eq!(key(WebhookRoute::RecordingStatus, &recording, None), "CA1");
        let transcription = form(&[("CallSid", "CA1"), ("TranscriptionSid", "GT1")]);
        assert_eq!(
            key(WebhookRoute::Transcription, &transcription, None),
            "CA1"
        );
        assert_eq!(
            key(
                WebhookRoute::RecordingStatus,
                &form(&[("RecordingSid", "RE1")]),
                None
            ),
            "RE1"
        );
    }

    #[test]
    fn event_types_carry_the_status_outside_conversations() {
        let status = form(&[("MessageSid", "SM1"), ("MessageStatus", "Delivered")]);
        assert_eq!(
            event_type(WebhookRoute::MessagingStatus, &status).as_deref(),
            Some("message.status.delivered")
        );
        let conv = form(&[("EventType", "onMessageAdded")]);
        assert_eq!(
            event_type(WebhookRoute::ConversationsPostEvent, &conv).as_deref(),
            Some("onMessageAdded")
        );
        let call = form(&[("CallSid", "CA1"), ("CallStatus", "in-progress")]);
        assert_eq!(
            event_type(WebhookRoute::VoiceStatus, &call).as_deref(),
            Some("call.status.in-progress")
        );
        let realtime = form(&[
            ("CallSid", "CA1"),
            ("TranscriptionSid", "GT1"),
            ("TranscriptionEvent", "transcription-content"),
        ]);
        assert_eq!(
            event_type(WebhookRoute::Transcription, &realtime).as_deref(),
            Some("transcription.transcription-content")
        );
        let recorded = form(&[
            ("TranscriptionSid", "TR1"),
            ("TranscriptionStatus", "completed"),
        ]);
        assert_eq!(
            event_type(WebhookRoute::Transcription, &recorded).as_deref(),
            Some("transcription.completed")
        );
    }

    #[test]
    fn the_envelope_keeps_every_parameter_in_order_including_repeats() {
        let body = form(&[
            ("MediaUrl0", "a"),
            ("Body", ""),
            ("MediaUrl0", "b"),
            ("From", "+1555"),
        ]);
        let (key, record) = envelope(Request {
            route: WebhookRoute::MessagingInbound,
            body,
            query: Some("conversation=CH7&x=1"),
            content_type: "application/x-www-form-urlencoded",
            headers: BTreeMap::from([("i-twilio-idempotency-token".to_owned(), "tok".to_owned())]),
            traceparent: None,
            received_at: 5,
        });
        assert_eq!(key, "CH7");
        let names: Vec<_> = record
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("MediaUrl0", "a"),
                ("Body", ""),
                ("MediaUrl0", "b"),
                ("From", "+1555")
            ]
        );
        assert_eq!(record.conversation_hint.as_deref(), Some("CH7"));
        assert_eq!(record.idempotency_token.as_deref(), Some("tok"));
        assert_eq!(record.query.as_deref(), Some("conversation=CH7&x=1"));
        assert!(record.body.is_none());
    }

    #[test]
    fn json_bodies_are_kept_raw() {
        let raw = br#"{"EventType":"onMessageAdded","ConversationSid":"CH1","MessageSid":"IM1"}"#
            .to_vec();
        let fields = BTreeMap::from([
            ("EventType".to_owned(), "onMessageAdded".to_owned()),
            ("ConversationSid".to_owned(), "CH1".to_owned()),
            ("MessageSid".to_owned(), "IM1".to_owned()),
        ]);
        let body = Body::Json {
            raw: raw.clone(),
            fields,
        };
        let (key, record) = envelope(Request {
            route: WebhookRoute::ConversationsPostEvent,
            body,
            query: None,
            content_type: "application/json",
            headers: BTreeMap::new(),
            traceparent: Some("00-abc-def-01".into()),
            received_at: 1,
        });
        assert_eq!(key, "CH1");
        assert_eq!(record.body, Some(raw));
        assert!(record.params.is_empty());
        assert_eq!(record.resource_sid.as_deref(), Some("IM1"));
        assert_eq!(record.event_type.as_deref(), Some("onMessageAdded"));
    }
}
