//! Conformance: the call requests voice-link's operations become (egress
//! builds them) are ones Twilio's OpenAPI description of the Calls resource
//! allows: create (with the status callback events, ring timeout and
//! answering-machine detection voice-link sets) and the update that ends a
//! call (on command, and on a machine answering).
//!
//! ```sh
//! dev/twilio-oai && cargo test -p si-voice-link --test openapi
//! ```

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::tz::TimeZone;
use si_consent_gate::ConsentGate;
use si_egress::twilio::{Endpoints, build_request};
use si_runtime::processor::{Output, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::records::{
    CallEvent, CallState, Channel, Command, CommandKind, ConversationEvent, ConversationEventType,
    DeliveryOutcome, DeliveryStatus, EventSource, LocaleSource, MessageReceived, OperationKind,
    OutboundOperation, Participant, RecordingDisclosure,
};
use si_schemas::topics;
use si_testkit::openapi::TwilioOpenApi;
use si_voice_link::processor::call_operation_id;
use si_voice_link::{QuietWindow, Settings, VoiceLinkInput, VoiceLinkMetrics, VoiceLinkProcessor};

const CH: &str = "CH00000000000000000000000000000001";

fn call_sid(n: u8) -> String {
    format!("CA0000000000000000000000000000000{n}")
}

fn event(event_type: ConversationEventType, channel: Channel) -> ConversationEvent {
    ConversationEvent {
        channel,
        source: EventSource::Messaging,
        participant: Some(Participant {
            address: Some("+14155550100".into()),
            channel,
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some("+14155550199".into()),
        }),
        locale: "en".into(),
        locale_source: LocaleSource::Default,
        dedup_key: String::new(),
        ..ConversationEvent::adapter(format!("ev-{event_type}"), CH, "session-1", event_type, 0)
    }
}

fn command(id: &str, kind: CommandKind) -> Command {
    Command::new(kind, id, CH, "test", 0)
}

/// Every operation voice-link writes for a placed call a machine answers,
/// a placed call a person answers, and an `END_CALL` command.
fn operations() -> Vec<OutboundOperation> {
    let settings = Settings {
        public_base_url: "https://si.example.com".into(),
        voice_from: None,
        ring_timeout_secs: 25,
        machine_detection: Some("DetectMessageEnd".into()),
        quiet_window: QuietWindow::parse("off").unwrap(),
        default_zone: TimeZone::UTC,
        require_opt_in: false,
        messaging_service_sid: None,
        state_ttl: Duration::from_secs(3600),
    };
    let gate = ConsentGate::from_tables(
        GlobalTable::from_entries(topics::CONSENT, []),
        GlobalTable::from_entries(topics::CONSENT_REGISTRY, []),
    );
    let mut processor = VoiceLinkProcessor::new(
        settings,
        gate,
        GlobalTable::from_entries(topics::IDENTITY, []),
        VoiceLinkMetrics::unregistered(),
    );
    let mut store = StateStore::new(Duration::from_secs(3600));
    let mut feed = |topic: &str, input: VoiceLinkInput| -> Vec<Output> {
        store.set_now(1_000);
        let ctx = RecordContext::for_test(topic, 1_000);
        processor.process(&ctx, input, &mut store).unwrap()
    };
    let mut text = event(ConversationEventType::MessageReceived, Channel::Sms);
    text.message = Some(MessageReceived {
        message_sid: "SM1".into(),
        index: None,
        author: None,
        body: Some("call me".into()),
        media: vec![],
        attributes_json: None,
        num_segments: None,
        location: None,
        profile_name: None,
        button_payload: None,
    });
    let mut outputs = feed(
        topics::CONVERSATION_EVENTS,
        VoiceLinkInput::Event(Box::new(text)),
    );
    for (n, id) in [(1, "cmd-1"), (2, "cmd-2")] {
        outputs.extend(feed(
            topics::COMMANDS,
            VoiceLinkInput::Command(Box::new(command(id, CommandKind::EscalateToVoice))),
        ));
        let placed = DeliveryStatus {
            twilio_sid: Some(call_sid(n)),
            kind: Some(OperationKind::CreateCall),
            ..DeliveryStatus::command_answer(
                call_operation_id(id),
                CH.into(),
                DeliveryOutcome::Accepted,
                None,
                1_000,
            )
        };
        feed(topics::DELIVERY, VoiceLinkInput::Delivery(Box::new(placed)));
        let mut answered = event(ConversationEventType::CallStatusChanged, Channel::Voice);
        answered.call = Some(CallEvent {
            call_sid: call_sid(n),
            status: CallState::InProgress,
            direction: Some("outbound-api".into()),
            duration_seconds: None,
            disclosure_accepted: None,
            disclosure: Some(RecordingDisclosure::Disclosed),
            // The first call reaches a machine, the second a person.
            answered_by: Some(if n == 1 { "machine_start" } else { "human" }.into()),
        });
        outputs.extend(feed(
            topics::CONVERSATION_EVENTS,
            VoiceLinkInput::Event(Box::new(answered)),
        ));
    }
    outputs.extend(feed(
        topics::COMMANDS,
        VoiceLinkInput::Command(Box::new(command("cmd-3", CommandKind::EndCall))),
    ));
    outputs
        .iter()
        .filter_map(|o| o.record::<OutboundOperation>())
        .cloned()
        .collect()
}

#[test]
fn every_call_request_voice_link_causes_is_one_twilio_describes() {
    let operations = operations();
    let kinds: Vec<OperationKind> = operations.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            OperationKind::CreateCall,
            OperationKind::EndCall,
            OperationKind::CreateCall,
            OperationKind::EndCall
        ]
    );
    let endpoints = Endpoints {
        api_base: "https://api.twilio.com".into(),
        conversations_base: "https://conversations.twilio.com".into(),
        account_sid: "AC00000000000000000000000000000000".into(),
        status_callback: None,
        media: None,
        mcs_media: None,
    };
    let oai = TwilioOpenApi::load().unwrap();
    for operation in &operations {
        let request = build_request(&endpoints, operation).unwrap();
        let path = request.url.trim_start_matches("https://api.twilio.com");
        if let Err(violations) = oai.check_post(path, &request.form, &[]) {
            panic!("{:?}: {violations:#?}", operation.kind);
        }
        if operation.kind == OperationKind::CreateCall {
            let events: Vec<&str> = request
                .form
                .iter()
                .filter(|(k, _)| k == "StatusCallbackEvent")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
            let has =
                |name: &str, value: &str| request.form.iter().any(|(k, v)| k == name && v == value);
            assert!(has("MachineDetection", "DetectMessageEnd") && has("Timeout", "25"));
        }
    }
}
