//! normalize: a webhook envelope's parameters (form pairs or a JSON body,
//! nested objects included) into conversation events.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use si_ingress::envelope::{Body, Request, envelope};
use si_normalize::ids::AddressHasher;
use si_normalize::{NormalizeMetrics, Normalizer, Settings};
use si_runtime::processor::{Output, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::codec::encode_datum;
use si_schemas::records::{
    AvroEnum, Channel, ConversationEvent, IdentityRecord, NormalizeState, ParticipantBinding,
    WebhookRoute,
};
use si_schemas::topics;

use super::{Cursor, text};
use crate::engine::Target;

const WORDS: &[&str] = &[
    "&",
    "=",
    "%2B",
    "Body=",
    "From=%2B14155550123",
    "From=whatsapp%3A%2B14155550100",
    "To=%2B14155550100",
    "To=whatsapp%3A%2B14155550199",
    "Author=",
    "MessageSid=SM1",
    "SmsSid=SM1",
    "ConversationSid=CH00000000000000000000000000000001",
    "ParticipantSid=MB1",
    "EventType=onMessageAdded",
    "EventType=onDeliveryUpdated",
    "EventType=onParticipantAdded",
    "EventType=onParticipantRemoved",
    "EventType=onConversationAdded",
    "EventType=onConversationStateUpdated",
    "StateFrom=active",
    "StateTo=closed",
    "MessageStatus=delivered",
    "MessageStatus=failed",
    "ErrorCode=30003",
    "NumMedia=2",
    "MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F1",
    "MediaContentType0=image%2Fjpeg",
    "CallSid=CA1",
    "CallStatus=completed",
    "Digits=1",
    "SpeechResult=yes",
    "Confidence=0.9",
    "RecordingSid=RE1",
    "RecordingStatus=completed",
    "RecordingUrl=",
    "RecordingDuration=-1",
    "TranscriptionText=",
    "TranscriptionEvent=transcription-content",
    "TranscriptionData=%7B%22transcript%22%3A%22hi%22%7D",
    "Track=inbound_track",
    "Final=true",
    "SequenceId=99999999999999999999",
    "Index=1",
    "FromCountry=BR",
    "ProfileName=Ana",
    "MessagingBinding.Address=",
    "Attributes=%7B%7D",
    "DateCreated=2026-12-03T07%3A00%3A00Z",
    "{\"MessagingBinding\":{\"Address\":\"+14155550123\",\"ProxyAddress\":\"+14155550100\"}}",
    "\"Media\":[{\"Sid\":\"ME1\",\"ContentType\":\"image/png\"}]",
    "\"Index\":1e308",
];

/// normalize's reading of webhooks.
pub const WEBHOOK: Target = Target {
    name: "normalize_webhook",
    about: "any envelope is an event, a drop or an error (dead letter), never a panic; outputs fit their schemas; a redelivered webhook adds no event",
    run: webhook,
    dictionary: WORDS,
    generate: None,
    max_len: 4096,
};

const T0: i64 = 1_700_000_000_000;

fn normalizer() -> Normalizer {
    let identity = IdentityRecord {
        address: "+14155550123".into(),
        channel: Channel::Sms,
        user_id: "user-1".into(),
        display_name: Some("Ana".into()),
        locale: Some("pt-BR".into()),
        updated_at: T0,
        attributes: BTreeMap::new(),
    };
    let binding = ParticipantBinding {
        address: "+14155550123".into(),
        channel: Channel::Sms,
        proxy_address: Some("+14155550100".into()),
        conversation_id: "CH00000000000000000000000000000001".into(),
        session_id: "session-1".into(),
        participant_sid: None,
        active: true,
        bound_at: T0,
        updated_at: T0,
        previous_conversation_id: None,
    };
    Normalizer::new(
        Settings {
            hasher: AddressHasher::new(b"fuzz"),
            ..Settings::default()
        },
        GlobalTable::from_entries(
            topics::IDENTITY,
            [("sms:+14155550123".to_owned(), identity)],
        ),
        GlobalTable::from_entries(
            topics::PARTICIPANTS,
            [("sms:+14155550123|+14155550100".to_owned(), binding)],
        ),
        NormalizeMetrics::unregistered(),
    )
}

thread_local! {
    static NORMALIZER: RefCell<Option<Normalizer>> = const { RefCell::new(None) };
}

fn check(outputs: &[Output]) -> usize {
    let mut events = 0;
    for output in outputs {
        assert!(!output.key().is_empty(), "output without a key");
        if let Some(event) = output.record::<ConversationEvent>() {
            events += 1;
            encode_datum(event).expect("the event fits conversation_event.avsc");
        } else if let Some(binding) = output.record::<ParticipantBinding>() {
            encode_datum(binding).expect("the binding fits participant_binding.avsc");
        } else if !output.is_tombstone() {
            panic!("an output of an unexpected type on {}", output.topic());
        }
    }
    events
}

fn webhook(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let route = WebhookRoute::ALL[cursor.choose(WebhookRoute::ALL.len())];
    let flags = cursor.byte();
    let query = text(cursor.field());
    let query = (!query.is_empty()).then_some(query.as_str());
    let raw = cursor.rest();
    // Whatever ingress could have stored: form pairs (decoded leniently, so
    // more inputs get through) or a raw body.
    let body = if flags & 1 == 0 {
        Body::Form(
            form_urlencoded::parse(raw)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect(),
        )
    } else {
        let fields = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw)
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Body::Json {
            raw: raw.to_vec(),
            fields,
        }
    };
    let content_type = if flags & 1 == 0 {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    let received_at = T0 + i64::from(flags >> 1) * 3_600_000;
    let (_key, mut record) = envelope(Request {
        route,
        body,
        query,
        content_type,
        headers: BTreeMap::new(),
        traceparent: None,
        received_at,
    });
    if flags & 2 != 0 {
        record.idempotency_token = Some(format!("token-{}", flags >> 2));
    }
    NORMALIZER.with(|n| {
        let mut n = n.borrow_mut();
        let normalizer = n.get_or_insert_with(normalizer);
        let mut store = StateStore::<NormalizeState>::new(Duration::from_secs(3600));
        store.set_now(received_at);
        let ctx = RecordContext::for_test(topics::WEBHOOKS, received_at);
        let first = normalizer.process(&ctx, record.clone(), &mut store);
        let Ok(first) = first else { return };
        let events = check(&first);
        // Twilio retries with the same I-Twilio-Idempotency-Token; ingress
        // gives the retry a new envelope id.
        let token = record.idempotency_token.is_some();
        record.webhook_id.push_str("-retry");
        if let Ok(again) = normalizer.process(&ctx, record, &mut store) {
            let repeated = check(&again);
            assert!(
                !token || events == 0 || repeated == 0,
                "a redelivered webhook produced {repeated} more events"
            );
        }
    });
}
