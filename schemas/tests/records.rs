//! The typed records against their `.avsc` files: every topic-value type
//! round-trips through Avro binary (fully populated and minimal), carries
//! exactly the schema's fields and enum symbols, and survives schema evolution
//! in both directions (old reader / new data, new reader / old data).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Schema, from_value, to_value};
use serde_json::{Value as Json, json};
use si_schemas::AvroRecord;
use si_schemas::records::*;

const T0: i64 = 1_795_000_000_000; // 2026-11-18T…Z, any fixed instant

fn s(v: &str) -> String {
    v.to_owned()
}

fn some(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

// ------------------------------------------------------------------ fixtures

fn media_full() -> MediaRef {
    MediaRef {
        sid: some("ME0123456789abcdef0123456789abcdef"),
        url: some("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"),
        content_type: some("image/jpeg"),
        size_bytes: Some(123_456),
        filename: some("photo.jpg"),
    }
}

fn media_min() -> MediaRef {
    MediaRef::default()
}

fn webhook_full() -> TwilioWebhook {
    TwilioWebhook {
        webhook_id: s("5b0c1a9e-6a0e-4a53-9d1f-7d7b7c1f2e3a"),
        received_at: T0,
        route: WebhookRoute::ConversationsPostEvent,
        event_type: some("onMessageAdded"),
        account_sid: some("AC00000000000000000000000000000001"),
        resource_sid: some("IM00000000000000000000000000000001"),
        idempotency_token: some("f3c2e1d0-retry-token"),
        content_type: s("application/x-www-form-urlencoded"),
        params: vec![
            WebhookParam {
                name: s("EventType"),
                value: s("onMessageAdded"),
            },
            WebhookParam {
                name: s("Author"),
                value: s("whatsapp:+14155550100"),
            },
            WebhookParam {
                name: s("Body"),
                value: s("Hola, ¿qué tal? 👋"),
            },
            // Repeated names are kept (lossless).
            WebhookParam {
                name: s("MediaUrl"),
                value: s("https://example.com/a"),
            },
            WebhookParam {
                name: s("MediaUrl"),
                value: s("https://example.com/b"),
            },
        ],
        body: Some(br#"{"EventType":"onMessageAdded","Body":"\u00e9"}"#.to_vec()),
        query: some("bodySHA256=0f1e2d&conv=CH1"),
        headers: map(&[
            ("user-agent", "TwilioProxy/1.1"),
            ("i-twilio-idempotency-token", "tok"),
        ]),
        conversation_hint: some("CH00000000000000000000000000000001"),
        traceparent: some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    }
}

fn webhook_min() -> TwilioWebhook {
    TwilioWebhook {
        webhook_id: s("0e6f2b0c-0000-4000-8000-000000000000"),
        received_at: 0,
        route: WebhookRoute::Unknown,
        event_type: None,
        account_sid: None,
        resource_sid: None,
        idempotency_token: None,
        content_type: s(""),
        params: vec![],
        body: None,
        query: None,
        headers: BTreeMap::new(),
        conversation_hint: None,
        traceparent: None,
    }
}

fn participant_full() -> Participant {
    Participant {
        address: some("+14155550100"),
        channel: Channel::Whatsapp,
        user_id: some("user-42"),
        visitor_id: None,
        registered: true,
        participant_sid: some("MB00000000000000000000000000000001"),
        identity: some("si-assistant"),
        proxy_address: some("+14155550199"),
    }
}

fn event_full() -> ConversationEvent {
    ConversationEvent {
        event_id: s("evt-7f3a"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        event_type: ConversationEventType::MessageReceived,
        channel: Channel::Whatsapp,
        source: EventSource::Conversations,
        occurred_at: T0 - 1_500,
        received_at: T0,
        participant: Some(participant_full()),
        locale: s("es-MX"),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: some("AC00000000000000000000000000000001"),
        webhook_id: s("5b0c1a9e-6a0e-4a53-9d1f-7d7b7c1f2e3a"),
        dedup_key: s("f3c2e1d0-retry-token"),
        traceparent: some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        compliance: Some(ComplianceTags {
            consent_status: ConsentStatus::OptedIn,
            recording_disclosed: Some(true),
        }),
        // Every payload is populated here (not realistic, but proves each one round-trips).
        message: Some(MessageReceived {
            message_sid: s("IM00000000000000000000000000000001"),
            index: Some(7),
            author: some("+14155550100"),
            body: some("Hola 👋"),
            media: vec![media_full(), media_min()],
            attributes_json: some(r#"{"locale":"es-MX"}"#),
            num_segments: Some(2),
            location: Some(Location {
                latitude: -33.8688,
                longitude: 151.2093,
                address: some("Bennelong Point, Sydney"),
                label: some("Opera House"),
            }),
            profile_name: some("Ana"),
            button_payload: some("call-yes"),
        }),
        delivery: Some(DeliveryUpdate {
            message_sid: s("IM00000000000000000000000000000002"),
            channel_message_sid: some("SM00000000000000000000000000000002"),
            status: DeliveryState::Undelivered,
            error_code: Some(30_003),
            error_message: some("Unreachable destination handset"),
        }),
        participant_change: Some(ParticipantChange {
            participant_sid: s("MB00000000000000000000000000000001"),
            identity: some("si-assistant"),
            address: some("+14155550100"),
            proxy_address: some("+14155550199"),
        }),
        state_change: Some(StateChange {
            state_from: Some(ConversationState::Active),
            state_to: ConversationState::Inactive,
            reason: some("TIMER"),
        }),
        call: Some(CallEvent {
            call_sid: s("CA00000000000000000000000000000001"),
            status: CallState::NoAnswer,
            direction: some("outbound-api"),
            duration_seconds: Some(0),
            disclosure_accepted: Some(false),
            disclosure: Some(RecordingDisclosure::Declined),
            answered_by: Some("human".into()),
        }),
        recording: Some(RecordingAvailable {
            recording_sid: s("RE00000000000000000000000000000001"),
            call_sid: s("CA00000000000000000000000000000001"),
            url: some("https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1"),
            status: some("completed"),
            duration_seconds: Some(93),
            channels: Some(2),
        }),
        transcription: Some(TranscriptionEvent {
            call_sid: s("CA00000000000000000000000000000001"),
            transcription_sid: some("GT00000000000000000000000000000001"),
            text: s("I'd like to talk to someone"),
            speaker: TranscriptionSpeaker::User,
            sequence: Some(3),
            is_final: true,
            confidence: Some(0.875),
        }),
        compliance_record: Some(ComplianceRecordRef {
            event_id: s("3f2b1c9e-0000-4000-8000-000000000001"),
            kind: s("OPT_OUT"),
        }),
        media_stored: None,
    }
}

fn event_min() -> ConversationEvent {
    ConversationEvent {
        event_id: s("evt-0"),
        conversation_id: s("CH0"),
        session_id: s("sess-0"),
        event_type: ConversationEventType::Unknown,
        channel: Channel::Unknown,
        source: EventSource::Unknown,
        occurred_at: 0,
        received_at: 0,
        participant: None,
        locale: s("en"),
        locale_source: LocaleSource::Default,
        account_sid: None,
        webhook_id: s("w"),
        dedup_key: s("d"),
        traceparent: None,
        compliance: None,
        message: None,
        delivery: None,
        participant_change: None,
        state_change: None,
        call: None,
        recording: None,
        transcription: None,
        compliance_record: None,
        media_stored: None,
    }
}

/// Minimal nested records (all their optionals unset) inside an otherwise minimal event.
fn event_min_payloads() -> ConversationEvent {
    ConversationEvent {
        participant: Some(Participant {
            address: None,
            channel: Channel::Chat,
            user_id: None,
            visitor_id: None,
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: None,
        }),
        compliance: Some(ComplianceTags {
            consent_status: ConsentStatus::Unknown,
            recording_disclosed: None,
        }),
        message: Some(MessageReceived {
            message_sid: s("SM1"),
            index: None,
            author: None,
            body: None,
            media: vec![],
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        delivery: Some(DeliveryUpdate {
            message_sid: s("SM1"),
            channel_message_sid: None,
            status: DeliveryState::Queued,
            error_code: None,
            error_message: None,
        }),
        participant_change: Some(ParticipantChange {
            participant_sid: s("MB1"),
            identity: None,
            address: None,
            proxy_address: None,
        }),
        state_change: Some(StateChange {
            state_from: None,
            state_to: ConversationState::Active,
            reason: None,
        }),
        call: Some(CallEvent {
            call_sid: s("CA1"),
            status: CallState::InProgress,
            direction: None,
            duration_seconds: None,
            disclosure_accepted: None,
            disclosure: None,
            answered_by: None,
        }),
        recording: Some(RecordingAvailable {
            recording_sid: s("RE1"),
            call_sid: s("CA1"),
            url: None,
            status: None,
            duration_seconds: None,
            channels: None,
        }),
        transcription: Some(TranscriptionEvent {
            call_sid: s("CA1"),
            transcription_sid: None,
            text: s(""),
            speaker: TranscriptionSpeaker::Agent,
            sequence: None,
            is_final: false,
            confidence: None,
        }),
        ..event_min()
    }
}

fn inbound_full() -> InboundMessage {
    InboundMessage {
        message_id: s("IM00000000000000000000000000000001"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        user_id: some("user-42"),
        visitor_id: some("vis-9"),
        registered: true,
        channel: Channel::Sms,
        locale: s("en-US"),
        text: s("What's the weather {tomorrow}? €5"),
        media: vec![media_full()],
        received_at: T0,
        event_id: s("evt-7f3a"),
        first_contact: true,
        possible_revocation: true,
        traceparent: some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        purpose: InboundPurpose::SummaryRequest,
        stored_media: Vec::new(),
        location: Some(Location {
            latitude: -33.8688,
            longitude: 151.2093,
            address: some("Bennelong Point, Sydney"),
            label: some("Opera House"),
        }),
        profile_name: some("Ana"),
        button_payload: some("call-yes"),
    }
}

fn inbound_min() -> InboundMessage {
    InboundMessage {
        message_id: s("SM1"),
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        user_id: None,
        visitor_id: None,
        registered: false,
        channel: Channel::Whatsapp,
        locale: s("en"),
        text: s(""),
        media: vec![],
        received_at: 0,
        event_id: s("e"),
        first_contact: false,
        possible_revocation: false,
        traceparent: None,
        purpose: InboundPurpose::UserMessage,
        stored_media: Vec::new(),
        location: None,
        profile_name: None,
        button_payload: None,
    }
}

fn response_full() -> CognitionResponse {
    CognitionResponse {
        response_id: s("resp-1"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        in_reply_to: some("IM00000000000000000000000000000001"),
        text: s("Here is a long answer.\n\nWith paragraphs."),
        media: vec![MediaRef {
            url: some("https://cdn.example.com/chart.png"),
            ..media_min()
        }],
        locale: some("es-MX"),
        hints: Some(SegmentationHints {
            max_parts: Some(3),
            keep_paragraphs: Some(true),
            priority: Priority::High,
            allow_truncation: Some(false),
        }),
        created_at: T0,
        traceparent: some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        purpose: ResponsePurpose::Summary,
    }
}

fn response_min() -> CognitionResponse {
    CognitionResponse {
        response_id: s("r"),
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        in_reply_to: None,
        text: s("ok"),
        media: vec![],
        locale: None,
        hints: None,
        created_at: 0,
        traceparent: None,
        purpose: ResponsePurpose::Reply,
    }
}

fn response_min_hints() -> CognitionResponse {
    CognitionResponse {
        hints: Some(SegmentationHints::default()),
        ..response_min()
    }
}

fn command_full() -> Command {
    Command {
        command_id: s("cmd-1"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: some("sess-1"),
        kind: CommandKind::StartConversation,
        address: some("+14155550100"),
        channel: Some(Channel::Whatsapp),
        locale: some("en"),
        reason: some("appointment reminder"),
        issued_by: s("session-orchestration"),
        issued_at: T0,
        params: map(&[("timeout_seconds", "30")]),
    }
}

fn command_min() -> Command {
    Command {
        command_id: s("cmd-0"),
        conversation_id: s("CH1"),
        session_id: None,
        kind: CommandKind::CloseConversation,
        address: None,
        channel: None,
        locale: None,
        reason: None,
        issued_by: s("ops"),
        issued_at: 0,
        params: BTreeMap::new(),
    }
}

fn outbound_full() -> OutboundOperation {
    OutboundOperation {
        operation_id: s("op-resp-1-0"),
        conversation_id: s("CH00000000000000000000000000000001"),
        kind: OperationKind::CreateCall,
        channel: Channel::Voice,
        sender_key: s("voice:+14155550199"),
        to: some("+14155550100"),
        from: some("+14155550199"),
        messaging_service_sid: some("MG00000000000000000000000000000001"),
        body: some("Part one of the answer"),
        media_urls: vec![
            s("https://cdn.example.com/a.png"),
            s("https://cdn.example.com/b.png"),
        ],
        content_sid: some("HX00000000000000000000000000000001"),
        content_variables_json: some(r#"{"1":"Ana"}"#),
        response_id: some("resp-1"),
        part_index: 1,
        part_count: 3,
        segments: Some(2),
        encoding: Some(TextEncoding::Ucs2),
        template_reason: some("WHATSAPP_WINDOW_CLOSED"),
        call: Some(CallRequest {
            twiml_url: s("https://hooks.example.com/voice/answer?conv=CH1"),
            status_callback_url: some("https://hooks.example.com/voice/status?conv=CH1"),
            record: true,
            timeout_seconds: Some(25),
            machine_detection: some("Enable"),
        }),
        params: map(&[("ValidityPeriod", "600")]),
        created_at: T0,
        not_after: Some(T0 + 60_000),
        traceparent: some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    }
}

fn outbound_min() -> OutboundOperation {
    OutboundOperation {
        operation_id: s("op-0"),
        conversation_id: s("CH1"),
        kind: OperationKind::CloseConversation,
        channel: Channel::Sms,
        sender_key: s("MG1"),
        to: None,
        from: None,
        messaging_service_sid: None,
        body: None,
        media_urls: vec![],
        content_sid: None,
        content_variables_json: None,
        response_id: None,
        part_index: 0,
        part_count: 1,
        segments: None,
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::new(),
        created_at: 0,
        not_after: None,
        traceparent: None,
    }
}

fn outbound_min_call() -> OutboundOperation {
    OutboundOperation {
        call: Some(CallRequest {
            twiml_url: s("https://hooks.example.com/voice/answer"),
            status_callback_url: None,
            record: false,
            timeout_seconds: None,
            machine_detection: None,
        }),
        encoding: Some(TextEncoding::Gsm7),
        ..outbound_min()
    }
}

fn delivery_full() -> DeliveryStatus {
    DeliveryStatus {
        operation_id: s("op-resp-1-0"),
        conversation_id: s("CH00000000000000000000000000000001"),
        outcome: DeliveryOutcome::Failed,
        twilio_sid: some("SM00000000000000000000000000000001"),
        segments: Some(2),
        error_code: Some(21_610),
        error_message: some("Attempt to send to unsubscribed recipient"),
        attempts: 1,
        response_id: some("resp-1"),
        part_index: Some(0),
        part_count: Some(2),
        kind: Some(OperationKind::SendMessage),
        body: Some("Hello".into()),
        resend_of: some("op-resp-1-0"),
        remediation: Some(Remediation {
            origin_operation_id: s("op-resp-1-0"),
            attempt: 2,
            action: RemediationAction::FallbackChannel,
            next_operation_id: some("op-resp-1-0#2"),
            channel: Some(Channel::Sms),
            not_before: Some(T0 + 1),
            terminal: false,
            reason: s("63024: fallback"),
        }),
        at: T0,
        scheduled_at: Some(T0 + 60_000),
        compliance_event_id: some("egress-blocked-op-resp-1-0"),
    }
}

fn delivery_min() -> DeliveryStatus {
    DeliveryStatus {
        operation_id: s("op-0"),
        conversation_id: s("CH1"),
        outcome: DeliveryOutcome::Blocked,
        twilio_sid: None,
        segments: None,
        error_code: None,
        error_message: None,
        attempts: 0,
        response_id: None,
        part_index: None,
        part_count: None,
        kind: None,
        body: None,
        resend_of: None,
        remediation: None,
        at: 0,
        scheduled_at: None,
        compliance_event_id: None,
    }
}

fn outbound_dlq_full() -> OutboundDeadLetter {
    OutboundDeadLetter {
        operation: outbound_full(),
        reason: s("permanent Twilio error 21211: invalid To number"),
        error_code: Some(21_211),
        http_status: Some(400),
        attempts: 1,
        first_attempt_at: T0,
        dead_lettered_at: T0 + 250,
    }
}

fn outbound_dlq_min() -> OutboundDeadLetter {
    OutboundDeadLetter {
        operation: outbound_min(),
        reason: s("not_after passed"),
        error_code: None,
        http_status: None,
        attempts: 0,
        first_attempt_at: 0,
        dead_lettered_at: 0,
    }
}

fn dead_letter_full() -> DeadLetter {
    DeadLetter {
        stage: s("normalize"),
        source_topic: s("twilio.webhooks.v1"),
        source_partition: 11,
        source_offset: 9_007_199_254_740_993,
        reason: s("magic byte is 0x7b, expected 0x00"),
        error_kind: DeadLetterErrorKind::Undecodable,
        original_key: Some(b"CH00000000000000000000000000000001".to_vec()),
        // Arbitrary, non-UTF-8 bytes must survive unchanged.
        original_value: Some(vec![0x00, 0x00, 0x00, 0x00, 0x2a, 0xff, 0xfe, 0x80, 0x00]),
        headers: map(&[("traceparent", "00-4bf9-01"), ("content-type", "avro")]),
        at: T0,
    }
}

fn dead_letter_min() -> DeadLetter {
    DeadLetter {
        stage: s("egress"),
        source_topic: s("twilio.outbound.v1"),
        source_partition: 0,
        source_offset: 0,
        reason: s("x"),
        error_kind: DeadLetterErrorKind::Unknown,
        original_key: None,
        original_value: None,
        headers: BTreeMap::new(),
        at: 0,
    }
}

fn dead_letter_empty_bytes() -> DeadLetter {
    DeadLetter {
        original_key: Some(vec![]),
        original_value: Some(vec![]),
        ..dead_letter_min()
    }
}

fn compliance_full() -> ComplianceEvent {
    ComplianceEvent {
        event_id: s("cmp-1"),
        kind: ComplianceEventKind::OptOut,
        source: ComplianceSource::Keyword,
        address: s("+14155550100"),
        channel: Channel::Sms,
        sender_scope: some("MG00000000000000000000000000000001"),
        conversation_id: some("CH00000000000000000000000000000001"),
        message_ref: some("SM00000000000000000000000000000001"),
        keyword: some("Stop"),
        locale: some("en"),
        at: T0,
        details: map(&[("confirmation_operation_id", "op-9")]),
    }
}

fn compliance_min() -> ComplianceEvent {
    ComplianceEvent {
        event_id: s("cmp-0"),
        kind: ComplianceEventKind::RecordingDeclined,
        source: ComplianceSource::VoiceIvr,
        address: s("+14155550100"),
        channel: Channel::Voice,
        sender_scope: None,
        conversation_id: None,
        message_ref: None,
        keyword: None,
        locale: None,
        at: 0,
        details: BTreeMap::new(),
    }
}

fn consent_full() -> ConsentState {
    ConsentState {
        address: s("+14155550100"),
        channel: Channel::Whatsapp,
        sender_scope: s("*"),
        status: ConsentStatus::OptedOut,
        source: ComplianceSource::TwilioError,
        decided_at: T0 - 10,
        updated_at: T0,
        keyword: some("STOP"),
        event_ref: some("cmp-1"),
    }
}

fn consent_min() -> ConsentState {
    ConsentState {
        address: s("+14155550100"),
        channel: Channel::Sms,
        sender_scope: s("MG1"),
        status: ConsentStatus::Pending,
        source: ComplianceSource::FirstContact,
        decided_at: 0,
        updated_at: 0,
        keyword: None,
        event_ref: None,
    }
}

fn identity_full() -> IdentityRecord {
    IdentityRecord {
        address: s("+14155550100"),
        channel: Channel::Whatsapp,
        user_id: s("user-42"),
        display_name: some("Zoë"),
        locale: some("es-MX"),
        updated_at: T0,
        attributes: map(&[("tier", "gold"), ("timezone", "America/Mexico_City")]),
    }
}

fn identity_min() -> IdentityRecord {
    IdentityRecord {
        address: s("+14155550100"),
        channel: Channel::Sms,
        user_id: s("user-1"),
        display_name: None,
        locale: None,
        updated_at: 0,
        attributes: BTreeMap::new(),
    }
}

fn binding_full() -> ParticipantBinding {
    ParticipantBinding {
        address: s("+14155550100"),
        channel: Channel::Sms,
        proxy_address: some("+14155550199"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        participant_sid: some("MB00000000000000000000000000000001"),
        active: true,
        bound_at: T0 - 86_400_000,
        updated_at: T0,
        previous_conversation_id: some("pm-0123456789abcdef0123456789abcdef"),
    }
}

fn binding_min() -> ParticipantBinding {
    ParticipantBinding {
        address: s("+14155550100"),
        channel: Channel::Chat,
        proxy_address: None,
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        participant_sid: None,
        active: false,
        bound_at: 0,
        updated_at: 0,
        previous_conversation_id: None,
    }
}

fn transcript_full() -> TranscriptEntry {
    TranscriptEntry {
        entry_id: s("tr-1"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        sequence: 42,
        modality: Modality::System,
        direction: Direction::Outbound,
        speaker: TranscriptSpeaker::Si,
        text: some("Recording available"),
        media: vec![media_full()],
        recording: Some(RecordingRef {
            recording_sid: s("RE00000000000000000000000000000001"),
            url: some("https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1"),
            duration_seconds: Some(93),
        }),
        call_sid: some("CA00000000000000000000000000000001"),
        message_sid: some("IM00000000000000000000000000000001"),
        locale: some("en"),
        at: T0,
        entry_kind: Some(TranscriptEntryKind::CallEnded),
        channel: Some(Channel::Voice),
        call_outcome: Some("connected".into()),
        call_duration_seconds: Some(42),
        source_sid: Some("CA1".into()),
        stored_media: Vec::new(),
        location: Some(Location {
            latitude: -33.8688,
            longitude: 151.2093,
            address: some("Bennelong Point, Sydney"),
            label: some("Opera House"),
        }),
    }
}

fn transcript_min() -> TranscriptEntry {
    TranscriptEntry {
        entry_id: s("tr-0"),
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        sequence: 0,
        modality: Modality::Text,
        direction: Direction::Inbound,
        speaker: TranscriptSpeaker::User,
        text: None,
        media: vec![],
        recording: None,
        call_sid: None,
        message_sid: None,
        locale: None,
        at: 0,
        entry_kind: None,
        channel: None,
        call_outcome: None,
        call_duration_seconds: None,
        source_sid: None,
        stored_media: Vec::new(),
        location: None,
    }
}

fn transcript_min_recording() -> TranscriptEntry {
    TranscriptEntry {
        recording: Some(RecordingRef {
            recording_sid: s("RE1"),
            url: None,
            duration_seconds: None,
        }),
        ..transcript_min()
    }
}

fn archival_full() -> ArchivalRequest {
    ArchivalRequest {
        request_id: s("arc-1"),
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        closed_at: T0,
        reason: ArchivalReason::Inactivity,
        summary: some("We talked about your appointment."),
        transcript_topic: s("si.transcript.v1"),
        first_sequence: Some(0),
        last_sequence: Some(42),
        retention_class: some("standard"),
        requested_at: T0 + 5,
        opened_at: Some(T0 - 60_000),
        media: vec![media_full()],
        compliance_event_ids: Vec::new(),
    }
}

fn archival_min() -> ArchivalRequest {
    ArchivalRequest {
        request_id: s("arc-0"),
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        closed_at: 0,
        reason: ArchivalReason::TwilioClosed,
        summary: None,
        transcript_topic: s("si.transcript.v1"),
        first_sequence: None,
        last_sequence: None,
        retention_class: None,
        requested_at: 0,
        opened_at: None,
        media: vec![],
        compliance_event_ids: Vec::new(),
    }
}

// ------------------------------------------------------------------ helpers

/// Encodes through `to_value` → `resolve` → binary, as a producer would.
fn encode_with<T: AvroRecord>(record: &T, schema: &Schema) -> Vec<u8> {
    let value = to_value(record)
        .expect("to_value")
        .resolve(schema)
        .expect("resolve against the schema");
    GenericDatumWriter::builder(schema)
        .build()
        .expect("datum writer")
        .write_value_to_vec(value)
        .expect("encode")
}

/// Decodes binary written with `writer`, resolved into `reader` when given.
fn decode_value(bytes: &[u8], writer: &Schema, reader: Option<&Schema>) -> Value {
    let mut input = bytes;
    let value = GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .expect("datum reader")
        .read_value(&mut input)
        .expect("decode");
    assert!(
        input.is_empty(),
        "{} bytes left after the datum",
        input.len()
    );
    value
}

/// The full round trip of the brief, plus the variants a codec might use.
fn roundtrip<T: AvroRecord + PartialEq + Debug>(record: &T) {
    let schema = T::schema();
    let file = T::SCHEMA_FILE;

    // Every record level of the value has exactly the schema's fields, in order
    // (resolve alone would silently fill a field the Rust type lacks).
    let raw = to_value(record).expect("to_value");
    let json: Json = serde_json::from_str(T::SCHEMA_JSON).expect("schema JSON");
    let mut defs = BTreeMap::new();
    collect_defs(&json, &mut defs);
    assert_same_fields(&raw, &json, &defs, file);

    // to_value → resolve → binary → value (writer = reader) → from_value.
    let bytes = encode_with(record, schema);
    let decoded = decode_value(&bytes, schema, Some(schema));
    let back: T = from_value(&decoded).unwrap_or_else(|e| panic!("{file}: from_value: {e}"));
    assert_eq!(&back, record, "{file}: value round trip");

    // Without a reader schema (what a decoder does when writer == reader).
    let back: T = from_value(&decode_value(&bytes, schema, None)).expect("from_value, writer only");
    assert_eq!(&back, record, "{file}: writer-only round trip");

    // apache-avro's schema-aware serde path (GenericDatumWriter::write_ser, read_deser)
    // must interoperate with the value path in both directions.
    let direct = GenericDatumWriter::builder(schema)
        .build()
        .expect("datum writer")
        .write_ser_to_vec(record)
        .unwrap_or_else(|e| panic!("{file}: write_ser: {e}"));
    // (Not byte-equal in general: the value path keeps map entries in HashMap order.)
    let back: T = from_value(&decode_value(&direct, schema, Some(schema))).expect("from_value");
    assert_eq!(&back, record, "{file}: schema-aware writer, value reader");
    for bytes in [&bytes, &direct] {
        let back: T = GenericDatumReader::builder(schema)
            .build()
            .expect("datum reader")
            .read_deser(&mut bytes.as_slice())
            .unwrap_or_else(|e| panic!("{file}: read_deser: {e}"));
        assert_eq!(&back, record, "{file}: schema-aware reader");
    }
}

fn collect_defs(node: &Json, defs: &mut BTreeMap<String, Json>) {
    match node {
        Json::Object(o) => {
            if let (Some(Json::String(t)), Some(Json::String(name))) =
                (o.get("type"), o.get("name"))
                && matches!(t.as_str(), "record" | "enum" | "fixed")
            {
                defs.insert(name.clone(), node.clone());
            }
            o.values().for_each(|v| collect_defs(v, defs));
        }
        Json::Array(a) => a.iter().for_each(|v| collect_defs(v, defs)),
        _ => {}
    }
}

fn assert_same_fields(value: &Value, schema: &Json, defs: &BTreeMap<String, Json>, at: &str) {
    match (value, schema) {
        (_, Json::String(name)) if defs.contains_key(name.rsplit('.').next().unwrap()) => {
            assert_same_fields(value, &defs[name.rsplit('.').next().unwrap()], defs, at);
        }
        (Value::Union(_, inner), Json::Array(branches)) if **inner != Value::Null => {
            let branch = branches
                .iter()
                .find(|b| b.as_str() != Some("null"))
                .unwrap();
            assert_same_fields(inner, branch, defs, at);
        }
        (Value::Record(fields), Json::Object(o)) if o.get("type") == Some(&json!("record")) => {
            let schema_fields = o["fields"].as_array().unwrap();
            let rust: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            let avro: Vec<&str> = schema_fields
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                rust, avro,
                "{at}: fields of record {} (Rust vs .avsc)",
                o["name"]
            );
            for ((name, v), f) in fields.iter().zip(schema_fields) {
                assert_same_fields(v, &f["type"], defs, &format!("{at}.{name}"));
            }
        }
        (Value::Array(items), Json::Object(o)) if o.get("type") == Some(&json!("array")) => {
            items
                .iter()
                .for_each(|v| assert_same_fields(v, &o["items"], defs, at));
        }
        (Value::Map(items), Json::Object(o)) if o.get("type") == Some(&json!("map")) => {
            items
                .values()
                .for_each(|v| assert_same_fields(v, &o["values"], defs, at));
        }
        (Value::Record(_), other) => panic!("{at}: Rust has a record where the schema has {other}"),
        _ => {}
    }
}

// ------------------------------------------------------------------ round trips

#[test]
fn twilio_webhook_round_trips() {
    roundtrip(&webhook_full());
    roundtrip(&webhook_min());
}

#[test]
fn conversation_event_round_trips() {
    roundtrip(&event_full());
    roundtrip(&event_min());
    roundtrip(&event_min_payloads());
}

#[test]
fn inbound_message_round_trips() {
    roundtrip(&inbound_full());
    roundtrip(&inbound_min());
}

#[test]
fn cognition_response_round_trips() {
    roundtrip(&response_full());
    roundtrip(&response_min());
    roundtrip(&response_min_hints());
}

#[test]
fn command_round_trips() {
    roundtrip(&command_full());
    roundtrip(&command_min());
}

#[test]
fn outbound_operation_round_trips() {
    roundtrip(&outbound_full());
    roundtrip(&outbound_min());
    roundtrip(&outbound_min_call());
}

#[test]
fn delivery_status_round_trips() {
    roundtrip(&delivery_full());
    roundtrip(&delivery_min());
}

#[test]
fn outbound_dead_letter_round_trips() {
    roundtrip(&outbound_dlq_full());
    roundtrip(&outbound_dlq_min());
}

#[test]
fn dead_letter_round_trips() {
    roundtrip(&dead_letter_full());
    roundtrip(&dead_letter_min());
    roundtrip(&dead_letter_empty_bytes());
}

#[test]
fn compliance_event_round_trips() {
    roundtrip(&compliance_full());
    roundtrip(&compliance_min());
}

#[test]
fn consent_state_round_trips() {
    roundtrip(&consent_full());
    roundtrip(&consent_min());
}

#[test]
fn identity_record_round_trips() {
    roundtrip(&identity_full());
    roundtrip(&identity_min());
}

#[test]
fn participant_binding_round_trips() {
    roundtrip(&binding_full());
    roundtrip(&binding_min());
}

#[test]
fn transcript_entry_round_trips() {
    roundtrip(&transcript_full());
    roundtrip(&transcript_min());
    roundtrip(&transcript_min_recording());
}

#[test]
fn archival_request_round_trips() {
    roundtrip(&archival_full());
    roundtrip(&archival_min());
}

fn normalize_state_full() -> NormalizeState {
    NormalizeState {
        kind: NormalizeStateKind::Conversation,
        seen_event: None,
        conversation: Some(ConversationBinding {
            conversation_id: s("CH00000000000000000000000000000001"),
            session_id: s("0b6f2a4e-1c1d-8e2f-9a3b-4c5d6e7f8091"),
            bound_at: T0,
            last_event_at: T0 + 9,
            state: Some(ConversationState::Inactive),
            participants: vec![
                BoundParticipant {
                    participant_sid: some("MB00000000000000000000000000000001"),
                    address: some("+14155550100"),
                    channel: Channel::Whatsapp,
                    proxy_address: some("+14155550199"),
                    identity: None,
                    locale: some("es-MX"),
                },
                BoundParticipant {
                    participant_sid: None,
                    address: None,
                    channel: Channel::Chat,
                    proxy_address: None,
                    identity: some("alice"),
                    locale: None,
                },
            ],
        }),
    }
}

fn normalize_state_seen() -> NormalizeState {
    NormalizeState {
        kind: NormalizeStateKind::SeenEvent,
        seen_event: Some(SeenEvent {
            event_id: s("5f0c-ev"),
            webhook_id: s("wh-1"),
            first_seen_at: T0,
        }),
        conversation: None,
    }
}

fn normalize_state_min() -> NormalizeState {
    NormalizeState {
        kind: NormalizeStateKind::Unknown,
        seen_event: None,
        conversation: Some(ConversationBinding {
            conversation_id: s("pm-1"),
            session_id: s("s"),
            bound_at: 0,
            last_event_at: 0,
            state: None,
            participants: vec![],
        }),
    }
}

#[test]
fn normalize_state_round_trips() {
    roundtrip(&normalize_state_full());
    roundtrip(&normalize_state_seen());
    roundtrip(&normalize_state_min());
    roundtrip(&NormalizeState {
        kind: NormalizeStateKind::Call,
        ..normalize_state_full()
    });
}

#[test]
fn consent_processor_state_round_trips() {
    roundtrip(&ConsentProcessorState {
        kind: ConsentProcessorStateKind::Decision,
        decision: Some(ConsentState {
            address: s("+14155550100"),
            channel: Channel::Sms,
            sender_scope: s("*"),
            status: ConsentStatus::OptedOut,
            source: ComplianceSource::Keyword,
            decided_at: T0,
            updated_at: T0 + 1,
            keyword: some("Stop"),
            event_ref: some("ev-1"),
        }),
        contact: None,
        rate: None,
    });
    roundtrip(&ConsentProcessorState {
        kind: ConsentProcessorStateKind::Contact,
        decision: None,
        contact: Some(ConversationContact {
            conversation_id: s("CH00000000000000000000000000000001"),
            address: s("+14155550100"),
            channel: Channel::Whatsapp,
            proxy_address: some("+14155550199"),
            locale: some("es-MX"),
            last_seen_at: T0,
        }),
        rate: None,
    });
    roundtrip(&ConsentProcessorState {
        kind: ConsentProcessorStateKind::Rate,
        decision: None,
        contact: None,
        rate: Some(RateAccount {
            theoretical_arrival_at: T0 + 54_000,
            limited_since: Some(T0 + 2_000),
            held_back: 3,
        }),
    });
    roundtrip(&ConsentProcessorState {
        kind: ConsentProcessorStateKind::Unknown,
        decision: None,
        contact: None,
        rate: None,
    });
}

fn segment_state_conversation() -> SegmentState {
    SegmentState {
        kind: SegmentStateKind::Conversation,
        seen_response: None,
        conversation: Some(SegmentConversation {
            conversation_id: s("pm-00000000000000000000000000000001"),
            locale: some("es-MX"),
            closed: true,
            last_event_at: T0 + 9,
            participants: vec![
                SegmentParticipant {
                    channel: Channel::Whatsapp,
                    address: some("+14155550100"),
                    proxy_address: some("+14155550199"),
                    identity: None,
                    participant_sid: some("MB00000000000000000000000000000001"),
                    locale: some("es-MX"),
                    last_inbound_at: Some(T0),
                },
                SegmentParticipant {
                    channel: Channel::Chat,
                    address: None,
                    proxy_address: None,
                    identity: some("alice"),
                    participant_sid: None,
                    locale: None,
                    last_inbound_at: None,
                },
            ],
            programmable_messaging: true,
        }),
        pending: None,
        sent: None,
        report: None,
    }
}

fn segment_state_seen() -> SegmentState {
    SegmentState {
        kind: SegmentStateKind::SeenResponse,
        seen_response: Some(SeenResponse {
            response_id: s("r-1"),
            first_seen_at: T0,
            part_count: 3,
            blocked: false,
        }),
        conversation: None,
        pending: Some(SegmentPending {
            conversation_id: s("pm-00000000000000000000000000000009"),
            parked_at: T0,
            responses_json: vec![s("{}")],
        }),
        sent: Some(SegmentSent {
            operation_id: s("r-1:0#1"),
            origin_operation_id: s("r-1:0"),
            attempt: 1,
            operation_json: s("{}"),
            urgent: true,
            twilio_sid: some("SM00000000000000000000000000000001"),
            steps_used: [(s("63016"), 1)].into_iter().collect(),
            not_before: Some(T0 + 60_000),
            accepted_at: Some(T0 + 1_000),
        }),
        report: Some(SegmentDeliveryReport {
            message_sid: s("SM00000000000000000000000000000002"),
            delivered: false,
            error_code: Some(30003),
            error_message: some("Unreachable destination handset"),
            at: T0,
            status: some("undelivered"),
        }),
    }
}

fn voice_link_state_full() -> VoiceLinkState {
    VoiceLinkState {
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        channel: Channel::Sms,
        address: some("+14155550100"),
        proxy_address: some("+14155550199"),
        locale: s("fr"),
        time_zone: some("Europe/Paris"),
        next_sequence: 7,
        last_activity_at: T0,
        scheduled: Some(ScheduledCall {
            command_id: s("cmd-1"),
            due_at: T0 + 5000,
            requested_at: T0,
            to: s("+14155550100"),
            from: s("+14155550199"),
            locale: s("fr"),
        }),
        calls: vec![VoiceLinkCall {
            call_sid: some("CA00000000000000000000000000000003"),
            operation_id: some("voice-call-cmd-1"),
            command_id: some("cmd-1"),
            inbound: false,
            requested_at: T0,
            answered_at: Some(T0 + 1),
            disclosure: some("ACCEPTED"),
            status: s("COMPLETED"),
            outcome: some("connected"),
            locale: s("fr"),
        }],
        outbound: vec![PendingOutbound {
            message_id: s("r-1"),
            part_count: 2,
            parts: vec![OutboundPartOutcome {
                index: 0,
                accepted: true,
                text: some("Bonjour"),
                sid: some("SM1"),
                at: T0,
            }],
        }],
        closed_at: Some(T0 + 9),
    }
}

fn voice_link_state_min() -> VoiceLinkState {
    VoiceLinkState {
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        channel: Channel::Voice,
        address: None,
        proxy_address: None,
        locale: s("en"),
        time_zone: None,
        next_sequence: 1,
        last_activity_at: 0,
        scheduled: None,
        calls: vec![],
        outbound: vec![],
        closed_at: None,
    }
}

fn stored_full() -> StoredMedia {
    StoredMedia {
        index: 1,
        status: MediaStorageStatus::Stored,
        unavailable_reason: None,
        detail: None,
        twilio_sid: some("ME00000000000000000000000000000001"),
        twilio_url: some("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"),
        object_key: some("media/CH1/MM1/1-00ff"),
        content_type: some("image/png"),
        size_bytes: Some(2048),
        sha256: some("00ff"),
        filename: some("cat.png"),
    }
}

fn stored_unavailable() -> StoredMedia {
    StoredMedia {
        index: 2,
        status: MediaStorageStatus::Unavailable,
        unavailable_reason: Some(MediaUnavailableReason::RefusedType),
        detail: some("application/x-msdownload is not allowed"),
        ..StoredMedia::default()
    }
}

#[test]
fn media_stored_events_and_entries_round_trip() {
    let mut event = event_min();
    event.event_type = ConversationEventType::MediaStored;
    event.media_stored = Some(MediaStored {
        source_event_id: s("e-1"),
        source_sid: s("MM1"),
        call_sid: None,
        items: vec![stored_full(), stored_unavailable()],
    });
    roundtrip(&event);
    let mut entry = transcript_min();
    entry.entry_kind = Some(TranscriptEntryKind::MediaStored);
    entry.stored_media = vec![stored_full(), stored_unavailable()];
    roundtrip(&entry);
}

fn media_state_full() -> MediaState {
    MediaState {
        conversation_id: s("CH1"),
        jobs: vec![MediaJob {
            source_event_id: s("e-1"),
            source_sid: s("MM1"),
            call_sid: some("CA1"),
            session_id: s("sess-1"),
            channel: Channel::Sms,
            source: s("MESSAGING"),
            locale: s("en"),
            locale_source: s("DEFAULT"),
            account_sid: some("AC1"),
            webhook_id: s("w-1"),
            dedup_key: s("MM1|MESSAGE_RECEIVED"),
            occurred_at: 1,
            received_at: 2,
            chat_service_sid: some("IS1"),
            items: vec![
                MediaJobItem {
                    sid: some("ME1"),
                    url: some("https://api.twilio.com/m/0"),
                    content_type: some("image/png"),
                    size_bytes: Some(10),
                    filename: some("a.png"),
                },
                MediaJobItem::default(),
            ],
        }],
    }
}

#[test]
fn media_state_round_trips() {
    roundtrip(&media_state_full());
    roundtrip(&MediaState {
        conversation_id: s("CH1"),
        jobs: vec![],
    });
}

#[test]
fn voice_link_state_round_trips() {
    roundtrip(&voice_link_state_full());
    roundtrip(&voice_link_state_min());
}

fn lifecycle_state_full() -> LifecycleState {
    LifecycleState {
        conversation_id: s("CH00000000000000000000000000000001"),
        session_id: s("sess-1"),
        channel: Channel::Whatsapp,
        address: some("+14155550100"),
        proxy_address: some("+14155550199"),
        locale: s("es-MX"),
        phase: LifecyclePhase::Closing,
        opened_at: T0,
        last_activity_at: T0 + 1,
        close_reason: Some(ArchivalReason::UserRequest),
        closing_started_at: Some(T0 + 2),
        summary_request_id: some("lifecycle-summary-1"),
        summary: some("We talked."),
        closing_response_id: some("lifecycle-closing-1"),
        first_sequence: Some(1),
        last_sequence: Some(9),
        media: vec![media_full(), media_min()],
        programmable_messaging: true,
        opening_text: some("Hi, this is Si."),
        conversation_sid: some("CH00000000000000000000000000000002"),
        active_call_sid: some("CA00000000000000000000000000000003"),
        compliance_event_ids: vec![s("c-1"), s("egress-21610-op-1")],
        call_scheduled_at: Some(T0 + 3_600_000),
    }
}

fn lifecycle_state_min() -> LifecycleState {
    LifecycleState {
        conversation_id: s("CH1"),
        session_id: s("sess-1"),
        channel: Channel::Sms,
        address: None,
        proxy_address: None,
        locale: s("en"),
        phase: LifecyclePhase::Open,
        opened_at: 0,
        last_activity_at: 0,
        close_reason: None,
        closing_started_at: None,
        summary_request_id: None,
        summary: None,
        closing_response_id: None,
        first_sequence: None,
        last_sequence: None,
        media: vec![],
        programmable_messaging: false,
        opening_text: None,
        conversation_sid: None,
        active_call_sid: None,
        compliance_event_ids: vec![],
        call_scheduled_at: None,
    }
}

#[test]
fn lifecycle_state_round_trips() {
    roundtrip(&lifecycle_state_full());
    roundtrip(&lifecycle_state_min());
}

#[test]
fn segment_state_round_trips() {
    roundtrip(&segment_state_conversation());
    roundtrip(&segment_state_seen());
}

#[test]
fn every_variant_of_every_enum_round_trips() {
    // Enum-heavy records, once per variant, so a wrong rename cannot hide.
    for &route in WebhookRoute::ALL {
        roundtrip(&TwilioWebhook {
            route,
            ..webhook_min()
        });
    }
    for (i, &event_type) in ConversationEventType::ALL.iter().enumerate() {
        roundtrip(&ConversationEvent {
            event_type,
            channel: nth::<Channel>(i),
            source: nth::<EventSource>(i),
            locale_source: nth::<LocaleSource>(i),
            compliance: Some(ComplianceTags {
                consent_status: nth::<ConsentStatus>(i),
                recording_disclosed: None,
            }),
            delivery: Some(DeliveryUpdate {
                status: nth::<DeliveryState>(i),
                ..event_min_payloads().delivery.unwrap()
            }),
            state_change: Some(StateChange {
                state_from: Some(nth::<ConversationState>(i)),
                state_to: nth::<ConversationState>(i + 1),
                reason: None,
            }),
            call: Some(CallEvent {
                status: nth::<CallState>(i),
                disclosure: Some(nth::<RecordingDisclosure>(i)),
                answered_by: None,
                ..event_min_payloads().call.unwrap()
            }),
            transcription: Some(TranscriptionEvent {
                speaker: nth::<TranscriptionSpeaker>(i),
                ..event_min_payloads().transcription.unwrap()
            }),
            ..event_min()
        });
    }
    for &priority in Priority::ALL {
        roundtrip(&CognitionResponse {
            hints: Some(SegmentationHints {
                priority,
                ..SegmentationHints::default()
            }),
            ..response_min()
        });
    }
    for &kind in CommandKind::ALL {
        roundtrip(&Command {
            kind,
            ..command_min()
        });
    }
    for (i, &kind) in OperationKind::ALL.iter().enumerate() {
        roundtrip(&OutboundOperation {
            kind,
            encoding: Some(nth::<TextEncoding>(i)),
            ..outbound_min()
        });
    }
    for &outcome in DeliveryOutcome::ALL {
        roundtrip(&DeliveryStatus {
            outcome,
            ..delivery_min()
        });
    }
    for (i, &action) in RemediationAction::ALL.iter().enumerate() {
        roundtrip(&DeliveryStatus {
            remediation: Some(Remediation {
                action,
                channel: Some(nth::<Channel>(i)),
                ..delivery_full().remediation.unwrap()
            }),
            ..delivery_min()
        });
    }
    for &error_kind in DeadLetterErrorKind::ALL {
        roundtrip(&DeadLetter {
            error_kind,
            ..dead_letter_min()
        });
    }
    for (i, &kind) in ComplianceEventKind::ALL.iter().enumerate() {
        roundtrip(&ComplianceEvent {
            kind,
            source: nth::<ComplianceSource>(i),
            ..compliance_min()
        });
    }
    for (i, &reason) in ArchivalReason::ALL.iter().enumerate() {
        roundtrip(&ArchivalRequest {
            reason,
            ..archival_min()
        });
        roundtrip(&TranscriptEntry {
            modality: nth::<Modality>(i),
            direction: nth::<Direction>(i),
            speaker: nth::<TranscriptSpeaker>(i),
            ..transcript_min()
        });
    }
}

/// The `i`-th variant of `E`, cycling.
fn nth<E: AvroEnum>(i: usize) -> E {
    E::ALL[i % E::ALL.len()]
}

// ------------------------------------------------------------------ enums vs schemas

/// Every Avro enum of every `.avsc`, by name: (symbols, default).
fn schema_enums() -> BTreeMap<String, (Vec<String>, String)> {
    let mut defs = BTreeMap::new();
    for text in avsc_texts().values() {
        collect_defs(&serde_json::from_str(text).expect("schema JSON"), &mut defs);
    }
    defs.into_iter()
        .filter(|(_, d)| d["type"] == "enum")
        .map(|(name, d)| {
            let symbols = d["symbols"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned());
            (
                name,
                (
                    symbols.collect(),
                    d["default"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect()
}

fn avsc_texts() -> BTreeMap<String, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro");
    std::fs::read_dir(dir)
        .expect("schemas/avro")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

fn enum_matches<E: AvroEnum + serde::Serialize>(
    schema: &BTreeMap<String, (Vec<String>, String)>,
) -> String {
    let (symbols, default) = schema
        .get(E::AVRO_NAME)
        .unwrap_or_else(|| panic!("Rust enum {} has no Avro enum of that name", E::AVRO_NAME));
    let rust: Vec<&str> = E::ALL.iter().map(|v| v.symbol()).collect();
    assert_eq!(
        rust,
        *symbols,
        "{}: Rust variants vs .avsc symbols (same order)",
        E::AVRO_NAME
    );
    assert_eq!(
        E::DEFAULT.symbol(),
        default,
        "{}: default symbol",
        E::AVRO_NAME
    );
    for &v in E::ALL {
        // serde writes the symbol; Display and FromStr agree with it.
        assert_eq!(
            to_value(v).expect("to_value"),
            Value::String(v.symbol().to_owned())
        );
        assert_eq!(v.to_string(), v.symbol());
        assert_eq!(E::from_symbol(v.symbol()), Some(v));
    }
    E::AVRO_NAME.to_owned()
}

#[test]
fn rust_enums_carry_exactly_the_schema_symbols() {
    let schema = schema_enums();
    let covered: Vec<String> = vec![
        enum_matches::<Channel>(&schema),
        enum_matches::<ConsentStatus>(&schema),
        enum_matches::<ComplianceSource>(&schema),
        enum_matches::<WebhookRoute>(&schema),
        enum_matches::<ConversationEventType>(&schema),
        enum_matches::<EventSource>(&schema),
        enum_matches::<LocaleSource>(&schema),
        enum_matches::<DeliveryState>(&schema),
        enum_matches::<ConversationState>(&schema),
        enum_matches::<CallState>(&schema),
        enum_matches::<RecordingDisclosure>(&schema),
        enum_matches::<TranscriptionSpeaker>(&schema),
        enum_matches::<Priority>(&schema),
        enum_matches::<CommandKind>(&schema),
        enum_matches::<OperationKind>(&schema),
        enum_matches::<TextEncoding>(&schema),
        enum_matches::<DeliveryOutcome>(&schema),
        enum_matches::<DeadLetterErrorKind>(&schema),
        enum_matches::<ComplianceEventKind>(&schema),
        enum_matches::<Modality>(&schema),
        enum_matches::<Direction>(&schema),
        enum_matches::<TranscriptSpeaker>(&schema),
        enum_matches::<ArchivalReason>(&schema),
        enum_matches::<NormalizeStateKind>(&schema),
        enum_matches::<ConsentProcessorStateKind>(&schema),
        enum_matches::<SegmentStateKind>(&schema),
        enum_matches::<InboundPurpose>(&schema),
        enum_matches::<ResponsePurpose>(&schema),
        enum_matches::<LifecyclePhase>(&schema),
        enum_matches::<TranscriptEntryKind>(&schema),
        enum_matches::<RemediationAction>(&schema),
        enum_matches::<MediaStorageStatus>(&schema),
        enum_matches::<MediaUnavailableReason>(&schema),
    ];
    let missing: Vec<&String> = schema.keys().filter(|n| !covered.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "Avro enums without a checked Rust enum: {missing:?}"
    );
}

#[test]
fn unknown_symbols_fall_back_to_the_default() {
    // An Avro enum value (what a writer-schema-only decode yields for a newer symbol).
    let channel: Channel = from_value(&Value::Enum(9, s("RCS"))).expect("from_value");
    assert_eq!(channel, Channel::Unknown);
    let priority: Priority = from_value(&Value::Enum(3, s("URGENT"))).expect("from_value");
    assert_eq!(priority, Priority::Normal);
    // Strings (JSON tooling, generic values).
    assert_eq!(
        serde_json::from_str::<Channel>(r#""WHATSAPP""#).unwrap(),
        Channel::Whatsapp
    );
    assert_eq!(
        serde_json::from_str::<Channel>(r#""RCS""#).unwrap(),
        Channel::Unknown
    );
    assert_eq!(
        serde_json::to_string(&CallState::NoAnswer).unwrap(),
        r#""NO_ANSWER""#
    );
    // FromStr is exact.
    assert_eq!(
        "IN_PROGRESS".parse::<CallState>(),
        Ok(CallState::InProgress)
    );
    let err = "in-progress".parse::<CallState>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "`in-progress` is not a symbol of the Avro enum CallState"
    );
}

#[test]
fn keys_follow_the_documented_format() {
    assert_eq!(identity_full().key(), "whatsapp:+14155550100");
    assert_eq!(consent_full().key(), "whatsapp:+14155550100|*");
    assert_eq!(consent_min().key(), "sms:+14155550100|MG1");
    assert_eq!(binding_full().key(), "sms:+14155550100|+14155550199");
    assert_eq!(binding_min().key(), "chat:+14155550100|");
}

// ------------------------------------------------------------------ evolution

/// A plausible next version of a schema: every record gains an optional field,
/// every enum a new symbol.
fn evolve(node: &mut Json) {
    match node {
        Json::Object(o) => {
            match o.get("type").and_then(Json::as_str) {
                Some("record") => o["fields"].as_array_mut().unwrap().push(json!({
                    "name": "added_later", "type": ["null", "string"], "default": null,
                    "doc": "A field added by a later version."
                })),
                Some("enum") => o["symbols"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("ADDED_LATER")),
                _ => {}
            }
            o.values_mut().for_each(evolve);
        }
        Json::Array(a) => a.iter_mut().for_each(evolve),
        _ => {}
    }
}

fn evolved<T: AvroRecord>() -> Schema {
    let mut json: Json = serde_json::from_str(T::SCHEMA_JSON).expect("schema JSON");
    evolve(&mut json);
    Schema::parse(&json).expect("evolved schema parses")
}

/// Old readers read new data, new readers read old data (FULL compatibility).
fn survives_evolution<T: AvroRecord + PartialEq + Debug>(record: &T) {
    let current = T::schema();
    let next = evolved::<T>();
    let file = T::SCHEMA_FILE;
    SchemaCompatibility::mutual_read(current, &next).unwrap_or_else(|e| {
        panic!("{file}: adding optional fields and enum symbols must stay compatible: {e}")
    });

    // New writer (fills the added fields with their defaults), current reader.
    let bytes = encode_with(record, &next);
    let back: T =
        from_value(&decode_value(&bytes, &next, Some(current))).expect("old reader, new data");
    assert_eq!(&back, record, "{file}: current reader of next-version data");
    // The typed records also ignore fields they do not know (writer-schema-only decode).
    let back: T = from_value(&decode_value(&bytes, &next, None)).expect("writer-only, new data");
    assert_eq!(&back, record, "{file}: current types ignore added fields");

    // Current writer, new reader: the added fields read as their defaults.
    let bytes = encode_with(record, current);
    let value = decode_value(&bytes, current, Some(&next));
    let Value::Record(fields) = &value else {
        panic!("{file}: not a record")
    };
    assert_eq!(fields.last().map(|(n, _)| n.as_str()), Some("added_later"));
    let back: T = from_value(&value).expect("new reader, old data");
    assert_eq!(&back, record, "{file}: next-version reader of current data");
}

#[test]
fn every_schema_survives_evolution() {
    survives_evolution(&webhook_full());
    survives_evolution(&event_full());
    survives_evolution(&inbound_full());
    survives_evolution(&response_full());
    survives_evolution(&command_full());
    survives_evolution(&outbound_full());
    survives_evolution(&delivery_full());
    survives_evolution(&outbound_dlq_full());
    survives_evolution(&dead_letter_full());
    survives_evolution(&compliance_full());
    survives_evolution(&consent_full());
    survives_evolution(&identity_full());
    survives_evolution(&binding_full());
    survives_evolution(&transcript_full());
    survives_evolution(&archival_full());
}

#[test]
fn a_newer_enum_symbol_reads_as_the_default() {
    let next = evolved::<ConsentState>();
    let value = to_value(consent_full())
        .expect("to_value")
        .resolve(&next)
        .expect("resolve");
    let Value::Record(mut fields) = value else {
        panic!("not a record")
    };
    for (name, v) in &mut fields {
        match name.as_str() {
            "channel" => *v = Value::Enum(5, s("ADDED_LATER")),
            "status" => *v = Value::Enum(4, s("ADDED_LATER")),
            _ => {}
        }
    }
    let bytes = GenericDatumWriter::builder(&next)
        .build()
        .expect("writer")
        .write_value_to_vec(Value::Record(fields))
        .expect("encode with the newer symbol");

    // Resolving into the current schema applies the enum's Avro default …
    let back: ConsentState =
        from_value(&decode_value(&bytes, &next, Some(ConsentState::schema()))).expect("old reader");
    assert_eq!(
        (back.channel, back.status),
        (Channel::Unknown, ConsentStatus::Unknown)
    );
    assert_eq!(back.address, consent_full().address);
    // … and so does the Rust type when decoded with the writer schema alone.
    let back: ConsentState = from_value(&decode_value(&bytes, &next, None)).expect("writer only");
    assert_eq!(
        (back.channel, back.status),
        (Channel::Unknown, ConsentStatus::Unknown)
    );
}

#[test]
fn a_call_state_is_live_or_ended_or_unknown() {
    use CallState::*;
    let live = [Queued, Ringing, InProgress];
    let ended = [Completed, Busy, Failed, NoAnswer, Canceled];
    for s in live {
        assert!(s.is_live() && !s.has_ended(), "{s:?}");
    }
    for s in ended {
        assert!(s.has_ended() && !s.is_live(), "{s:?}");
    }
    assert!(!Unknown.is_live() && !Unknown.has_ended());
}
