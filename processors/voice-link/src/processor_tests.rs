#![allow(clippy::unwrap_used)]

use si_schemas::records::{
    ConsentState, EventSource, LocaleSource, MediaStorageStatus, MessageReceived, Participant,
    RecordingAvailable, StateChange, StoredMedia, TranscriptionEvent,
};

use super::*;

/// 2026-12-03 18:00:00 UTC: 13:00 in New York, 19:00 in Paris.
const T0: i64 = 1_796_320_800_000;
const CH: &str = "CH00000000000000000000000000000001";
const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";
const CALL: &str = "CA00000000000000000000000000000009";

fn settings() -> Settings {
    Settings {
        public_base_url: "https://si.example.com".into(),
        voice_from: None,
        ring_timeout_secs: 25,
        machine_detection: Some("Enable".into()),
        quiet_window: QuietWindow::parse("21:00-08:00").unwrap(),
        default_zone: TimeZone::UTC,
        require_opt_in: false,
        messaging_service_sid: None,
        state_ttl: Duration::from_secs(3600),
    }
}

fn event(n: i64, event_type: ConversationEventType, channel: Channel) -> ConversationEvent {
    ConversationEvent {
        channel,
        source: EventSource::Messaging,
        participant: Some(Participant {
            address: Some(USER.into()),
            channel,
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: "fr".into(),
        locale_source: LocaleSource::PhoneCountry,
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("d-{n}"),
        ..ConversationEvent::adapter(format!("ev-{n}"), CH, "session-1", event_type, n)
    }
}

fn text(n: i64, body: &str) -> ConversationEvent {
    ConversationEvent {
        message: Some(MessageReceived {
            message_sid: format!("SM{n}"),
            index: None,
            author: Some(USER.into()),
            body: Some(body.into()),
            media: Vec::new(),
            attributes_json: None,
            num_segments: Some(1),
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..event(n, ConversationEventType::MessageReceived, Channel::Sms)
    }
}

fn call(
    n: i64,
    status: CallState,
    disclosure: Option<RecordingDisclosure>,
    direction: &str,
) -> ConversationEvent {
    ConversationEvent {
        call: Some(CallEvent {
            call_sid: CALL.into(),
            status,
            direction: Some(direction.into()),
            duration_seconds: (status == CallState::Completed).then_some(42),
            disclosure_accepted: match disclosure {
                Some(RecordingDisclosure::Accepted) => Some(true),
                Some(RecordingDisclosure::Declined | RecordingDisclosure::NoInput) => Some(false),
                _ => None,
            },
            disclosure,
            answered_by: None,
        }),
        ..event(n, ConversationEventType::CallStatusChanged, Channel::Voice)
    }
}

fn command(id: &str, kind: CommandKind, params: &[(&str, &str)]) -> Command {
    Command {
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Command::new(kind, id, CH, "test", T0)
    }
}

fn delivered(operation: &str, kind: OperationKind, sid: &str) -> DeliveryStatus {
    DeliveryStatus {
        operation_id: operation.into(),
        conversation_id: CH.into(),
        outcome: DeliveryOutcome::Accepted,
        twilio_sid: Some(sid.into()),
        segments: None,
        error_code: None,
        error_message: None,
        attempts: 1,
        response_id: None,
        part_index: Some(0),
        part_count: Some(1),
        kind: Some(kind),
        body: None,
        resend_of: None,
        remediation: None,
        at: T0,
        scheduled_at: None,
        compliance_event_id: None,
    }
}

fn opted_out() -> ConsentState {
    ConsentState {
        address: USER.into(),
        channel: Channel::Sms,
        sender_scope: OURS.into(),
        status: ConsentStatus::OptedOut,
        source: ComplianceSource::Keyword,
        decided_at: T0 - 1000,
        updated_at: T0 - 1000,
        event_ref: None,
        keyword: Some("STOP".into()),
    }
}

struct Harness {
    processor: VoiceLinkProcessor,
    store: StateStore<VoiceLinkState>,
}

impl Harness {
    fn new(settings: Settings, consent: Vec<ConsentState>) -> Self {
        let local = GlobalTable::from_entries(
            topics::CONSENT,
            consent.into_iter().map(|c| {
                let key =
                    si_consent_gate::consent_key(c.channel, &c.address, &c.sender_scope).unwrap();
                (key, c)
            }),
        );
        let registry = GlobalTable::from_entries(topics::CONSENT_REGISTRY, []);
        let identity = GlobalTable::from_entries(topics::IDENTITY, []);
        Self {
            processor: VoiceLinkProcessor::new(
                settings,
                ConsentGate::from_tables(local, registry),
                identity,
                VoiceLinkMetrics::unregistered(),
            ),
            store: StateStore::new(Duration::from_secs(3600)),
        }
    }

    fn feed(&mut self, topic: &str, input: VoiceLinkInput, at: i64) -> Vec<Output> {
        self.try_feed(topic, input, at).unwrap()
    }

    fn try_feed(
        &mut self,
        topic: &str,
        input: VoiceLinkInput,
        at: i64,
    ) -> Result<Vec<Output>, ProcessError> {
        self.store.set_now(at);
        let ctx = RecordContext::for_test(topic, at);
        self.processor.process(&ctx, input, &mut self.store)
    }

    fn event(&mut self, event: ConversationEvent, at: i64) -> Vec<Output> {
        self.feed(
            topics::CONVERSATION_EVENTS,
            VoiceLinkInput::Event(Box::new(event)),
            at,
        )
    }

    fn command(&mut self, command: Command, at: i64) -> Vec<Output> {
        self.feed(
            topics::COMMANDS,
            VoiceLinkInput::Command(Box::new(command)),
            at,
        )
    }

    fn deliver(&mut self, status: DeliveryStatus, at: i64) -> Vec<Output> {
        self.feed(
            topics::DELIVERY,
            VoiceLinkInput::Delivery(Box::new(status)),
            at,
        )
    }

    fn tick(&mut self, now: i64) -> Vec<Output> {
        let mut outputs = Vec::new();
        for key in self.store.due_timers(now, usize::MAX) {
            self.store.set_now(now);
            let due_at_ms = self.store.cancel_timer(&key).unwrap();
            let ctx = TimerContext {
                partition: 0,
                key: &key,
                due_at_ms,
                now_ms: now,
            };
            outputs.extend(self.processor.on_timer(&ctx, &mut self.store).unwrap());
        }
        outputs
    }

    fn escalations(&self, outcome: &str) -> u64 {
        self.processor
            .metrics
            .escalations
            .with_label_values(&[outcome])
            .get()
    }
}

fn of<T: si_schemas::AvroRecord + Clone>(outputs: &[Output]) -> Vec<T> {
    outputs
        .iter()
        .filter_map(|o| o.record::<T>())
        .cloned()
        .collect()
}

fn ops(outputs: &[Output]) -> Vec<OutboundOperation> {
    of(outputs)
}

fn texts(outputs: &[Output]) -> Vec<CognitionResponse> {
    of(outputs)
}

fn entries(outputs: &[Output]) -> Vec<TranscriptEntry> {
    of(outputs)
}

fn compliance(outputs: &[Output]) -> Vec<ComplianceEvent> {
    of(outputs)
}

fn statuses(outputs: &[Output]) -> Vec<DeliveryStatus> {
    of(outputs)
}

/// The `COMPLIANCE_RECORDED` events among `outputs`, as
/// (event id, the compliance event it names, key, session).
fn recorded(outputs: &[Output]) -> Vec<(String, String, String, String)> {
    outputs
        .iter()
        .filter(|o| o.topic() == topics::CONVERSATION_EVENTS)
        .filter_map(|o| Some((o.key().to_owned(), o.record::<ConversationEvent>()?)))
        .filter(|(_, e)| e.event_type == ConversationEventType::ComplianceRecorded)
        .map(|(key, e)| {
            (
                e.event_id.clone(),
                e.compliance_record.as_ref().unwrap().event_id.clone(),
                key,
                e.session_id.clone(),
            )
        })
        .collect()
}

/// Every compliance event among `outputs` is named on the conversation's
/// topic, under its session, in the same outputs.
fn assert_recorded(outputs: &[Output], session: &str) {
    let named: Vec<(String, String, String, String)> = compliance(outputs)
        .iter()
        .map(|c| {
            (
                format!("compliance-{}", c.event_id),
                c.event_id.clone(),
                c.conversation_id.clone().unwrap(),
                session.to_owned(),
            )
        })
        .collect();
    assert!(!named.is_empty());
    assert_eq!(recorded(outputs), named);
}

#[test]
fn an_escalation_places_the_call_and_tells_the_user_by_text() {
    let mut h = Harness::new(settings(), Vec::new());
    let out = h.event(text(T0, "Can you call me?"), T0);
    let inbound = entries(&out);
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].sequence, 1);
    assert_eq!(inbound[0].entry_kind, Some(TranscriptEntryKind::Message));
    assert_eq!(inbound[0].text.as_deref(), Some("Can you call me?"));

    let out = h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 10);
    let op = &ops(&out)[0];
    assert_eq!(op.kind, OperationKind::CreateCall);
    assert_eq!(op.operation_id, call_operation_id("cmd-1"));
    assert_eq!(op.to.as_deref(), Some(USER));
    assert_eq!(op.from.as_deref(), Some(OURS), "the conversation's number");
    assert_eq!(op.sender_key, format!("voice:{OURS}"));
    let request = op.call.as_ref().unwrap();
    assert_eq!(
        request.twiml_url,
        format!("https://si.example.com/twilio/voice/answer?conversation={CH}&locale=fr")
    );
    assert_eq!(
        request.status_callback_url.as_deref(),
        Some(
            format!("https://si.example.com/twilio/voice/status?conversation={CH}&locale=fr")
                .as_str()
        )
    );
    assert_eq!(request.timeout_seconds, Some(25));
    assert_eq!(request.machine_detection.as_deref(), Some("Enable"));
    let said = texts(&out);
    assert_eq!(said.len(), 1);
    assert!(
        said[0].text.starts_with("Si vous appelle"),
        "{}",
        said[0].text
    );
    assert_eq!(said[0].session_id, "session-1");
    assert_eq!(statuses(&out)[0].outcome, DeliveryOutcome::Accepted);
    assert_eq!(h.escalations("requested"), 1);

    // The same command again: nothing new.
    let again = h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 20);
    assert!(again.is_empty(), "{again:#?}");
}

#[test]
fn an_accepted_call_is_on_the_record_and_in_the_transcript_in_order() {
    let mut h = Harness::new(settings(), Vec::new());
    let mut transcript = entries(&h.event(text(T0, "Call me"), T0));
    h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    // Si's reply, in two parts, accepted by Twilio.
    for (index, part) in ["Sure,", "calling you now."].iter().enumerate() {
        let status = DeliveryStatus {
            response_id: Some("r-1".into()),
            part_index: Some(i32::try_from(index).unwrap()),
            part_count: Some(2),
            body: Some((*part).into()),
            resend_of: None,
            remediation: None,
            ..delivered(
                &format!("r-1-{index}"),
                OperationKind::SendMessage,
                &format!("SM{index}"),
            )
        };
        transcript.extend(entries(&h.deliver(status, T0 + 2)));
    }
    assert!(
        h.deliver(
            delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, CALL),
            T0 + 3
        )
        .is_empty()
    );
    let mut records = Vec::new();
    for (at, ev) in [
        (
            T0 + 4,
            call(T0 + 4, CallState::Ringing, None, "outbound-api"),
        ),
        (
            T0 + 5,
            call(
                T0 + 5,
                CallState::InProgress,
                Some(RecordingDisclosure::Disclosed),
                "outbound-api",
            ),
        ),
        (
            T0 + 6,
            call(
                T0 + 6,
                CallState::InProgress,
                Some(RecordingDisclosure::Accepted),
                "outbound-api",
            ),
        ),
    ] {
        let out = h.event(ev, at);
        transcript.extend(entries(&out));
        records.extend(compliance(&out));
    }
    let utterance = ConversationEvent {
        transcription: Some(TranscriptionEvent {
            call_sid: CALL.into(),
            transcription_sid: Some("GT1".into()),
            text: "I need to move my appointment".into(),
            speaker: TranscriptionSpeaker::User,
            sequence: Some(1),
            is_final: true,
            confidence: Some(0.9),
        }),
        ..event(T0 + 7, ConversationEventType::Transcription, Channel::Voice)
    };
    transcript.extend(entries(&h.event(utterance.clone(), T0 + 7)));
    let interim = ConversationEvent {
        event_id: "ev-interim".into(),
        transcription: Some(TranscriptionEvent {
            is_final: false,
            ..utterance.transcription.clone().unwrap()
        }),
        ..utterance
    };
    assert!(
        entries(&h.event(interim, T0 + 7)).is_empty(),
        "interim text never"
    );
    let end = h.event(
        call(T0 + 8, CallState::Completed, None, "outbound-api"),
        T0 + 8,
    );
    transcript.extend(entries(&end));
    assert!(texts(&end).is_empty(), "a connected call needs no text");
    let recording = ConversationEvent {
        recording: Some(RecordingAvailable {
            recording_sid: "RE1".into(),
            call_sid: CALL.into(),
            url: Some("https://api.twilio.com/rec/RE1".into()),
            status: Some("completed".into()),
            duration_seconds: Some(40),
            channels: Some(1),
        }),
        ..event(
            T0 + 9,
            ConversationEventType::RecordingAvailable,
            Channel::Voice,
        )
    };
    // Twilio reports a recording it could not make as `absent`: nothing to
    // refer to, so no entry.
    let mut absent = recording.clone();
    if let Some(r) = absent.recording.as_mut() {
        r.recording_sid = "RE2".into();
        r.status = Some("absent".into());
        r.url = None;
    }
    absent.event_id = "ev-absent".into();
    assert!(entries(&h.event(absent, T0 + 9)).is_empty());
    transcript.extend(entries(&h.event(recording, T0 + 9)));

    let kinds: Vec<TranscriptEntryKind> =
        transcript.iter().map(|e| e.entry_kind.unwrap()).collect();
    assert_eq!(
        kinds,
        [
            TranscriptEntryKind::Message,
            TranscriptEntryKind::Message,
            TranscriptEntryKind::CallStarted,
            TranscriptEntryKind::Utterance,
            TranscriptEntryKind::CallEnded,
            TranscriptEntryKind::Recording,
        ]
    );
    let sequences: Vec<i64> = transcript.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        transcript[1].text.as_deref(),
        Some("Sure, calling you now.")
    );
    assert_eq!(transcript[1].speaker, TranscriptSpeaker::Si);
    assert_eq!(transcript[1].message_sid.as_deref(), Some("SM0"));
    assert_eq!(transcript[3].speaker, TranscriptSpeaker::User);
    assert_eq!(transcript[4].call_outcome.as_deref(), Some("connected"));
    assert_eq!(transcript[4].call_duration_seconds, Some(42));
    assert_eq!(
        transcript[5].recording.as_ref().unwrap().recording_sid,
        "RE1"
    );
    assert!(
        transcript
            .iter()
            .all(|e| e.conversation_id == CH && e.session_id == "session-1")
    );
    let kinds: Vec<ComplianceEventKind> = records.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ComplianceEventKind::RecordingDisclosed,
            ComplianceEventKind::RecordingAccepted
        ]
    );
    assert!(
        records
            .iter()
            .all(|c| c.conversation_id.as_deref() == Some(CH)
                && c.message_ref.as_deref() == Some(CALL)
                && c.locale.as_deref() == Some("fr"))
    );
    assert_eq!(h.escalations("connected"), 1);
}

#[test]
fn a_declined_recording_continues_the_conversation_by_text() {
    for answer in [RecordingDisclosure::Declined, RecordingDisclosure::NoInput] {
        let mut h = Harness::new(settings(), Vec::new());
        h.event(text(T0, "Call me"), T0);
        h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
        h.deliver(
            delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, CALL),
            T0 + 2,
        );
        let played = h.event(
            call(
                T0 + 3,
                CallState::InProgress,
                Some(RecordingDisclosure::Disclosed),
                "outbound-api",
            ),
            T0 + 3,
        );
        let out = h.event(
            call(T0 + 4, CallState::InProgress, Some(answer), "outbound-api"),
            T0 + 4,
        );
        assert_recorded(&played, "session-1");
        assert_recorded(&out, "session-1");
        // Read back from the conversation's topic, they change nothing.
        for own in of::<ConversationEvent>(&played) {
            assert!(h.event(own, T0 + 4).is_empty());
        }
        let records: Vec<ComplianceEvent> = compliance(&played)
            .into_iter()
            .chain(compliance(&out))
            .collect();
        let kinds: Vec<ComplianceEventKind> = records.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ComplianceEventKind::RecordingDisclosed,
                ComplianceEventKind::RecordingDeclined
            ]
        );
        assert_eq!(records[1].details["answer"], answer.as_str());
        let said = texts(&out);
        assert_eq!(said.len(), 1);
        assert!(said[0].text.contains("par écrit"), "{}", said[0].text);
        let end = h.event(
            call(T0 + 9, CallState::Completed, None, "outbound-api"),
            T0 + 9,
        );
        assert_eq!(entries(&end)[0].call_outcome.as_deref(), Some("declined"));
        assert!(texts(&end).is_empty(), "told once");
        assert_eq!(
            h.processor
                .metrics
                .recording_consent
                .with_label_values(&[if answer == RecordingDisclosure::Declined {
                    "declined"
                } else {
                    "no_input"
                }])
                .get(),
            1
        );
    }
}

#[test]
fn an_unanswered_call_ends_with_an_offer_to_continue_by_text() {
    for (status, outcome) in [
        (CallState::NoAnswer, "no_answer"),
        (CallState::Busy, "busy"),
        (CallState::Failed, "failed"),
    ] {
        let mut h = Harness::new(settings(), Vec::new());
        h.event(text(T0, "Call me"), T0);
        h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
        h.deliver(
            delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, CALL),
            T0 + 2,
        );
        h.event(
            call(T0 + 3, CallState::Ringing, None, "outbound-api"),
            T0 + 3,
        );
        let out = h.event(call(T0 + 30, status, None, "outbound-api"), T0 + 30);
        let end = entries(&out);
        assert_eq!(
            end.len(),
            1,
            "no start marker for a call that never connected"
        );
        assert_eq!(end[0].call_outcome.as_deref(), Some(outcome));
        assert_eq!(end[0].call_duration_seconds, Some(0));
        assert!(texts(&out)[0].text.contains("joindre"), "{status:?}");
        assert_eq!(h.escalations(outcome), 1);
    }
}

#[test]
fn twilio_refusing_the_call_is_a_failed_escalation() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me"), T0);
    h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    let refused = DeliveryStatus {
        outcome: DeliveryOutcome::Failed,
        twilio_sid: None,
        error_code: Some(21215),
        ..delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, "")
    };
    let out = h.deliver(refused, T0 + 2);
    assert_eq!(entries(&out)[0].call_outcome.as_deref(), Some("failed"));
    assert_eq!(texts(&out).len(), 1);
    assert_eq!(h.escalations("failed"), 1);
}

#[test]
fn a_call_names_its_consent_for_egress_and_a_block_there_ends_it_without_a_text() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me"), T0);
    let placed = h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    let call = ops(&placed)
        .into_iter()
        .find(|o| o.kind == OperationKind::CreateCall)
        .expect("a call");
    // The user texts us by SMS at our number: egress checks that consent.
    assert_eq!(
        si_consent_gate::call_consent(&call),
        Some((Channel::Sms, OURS))
    );
    // The user said STOP while the call waited in egress: BLOCKED, no ring.
    let blocked = DeliveryStatus {
        outcome: DeliveryOutcome::Blocked,
        twilio_sid: None,
        error_message: Some("consent re-check before sending: OPTED_OUT".into()),
        ..delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, "")
    };
    let out = h.deliver(blocked, T0 + 2);
    assert_eq!(entries(&out)[0].call_outcome.as_deref(), Some("blocked"));
    assert!(
        texts(&out).is_empty(),
        "nothing to text a user who opted out"
    );
    assert_eq!((h.escalations("blocked"), h.escalations("failed")), (1, 0));
}

#[test]
fn no_call_to_a_user_who_opted_out_and_never_silence() {
    let mut h = Harness::new(settings(), vec![opted_out()]);
    h.event(text(T0, "hello"), T0);
    let out = h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    assert!(ops(&out).is_empty());
    assert!(texts(&out).is_empty());
    let blocked = compliance(&out);
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].kind, ComplianceEventKind::BlockedOutbound);
    assert_eq!(blocked[0].details["operation"], "CREATE_CALL");
    assert_recorded(&out, "session-1");
    let status = &statuses(&out)[0];
    assert_eq!(status.outcome, DeliveryOutcome::Blocked);
    assert_eq!(status.operation_id, command_status_id("cmd-1"));
    assert_eq!(
        status.compliance_event_id.as_deref(),
        Some(blocked[0].event_id.as_str()),
        "the answer names its audit record"
    );
    assert_eq!(h.escalations("blocked"), 1);

    // An unknown conversation: a FAILED answer.
    let mut h = Harness::new(settings(), Vec::new());
    let out = h.command(command("cmd-2", CommandKind::EscalateToVoice, &[]), T0);
    let status = &statuses(&out)[0];
    assert_eq!(status.outcome, DeliveryOutcome::Failed);
    assert_eq!(status.compliance_event_id, None);
    assert!(
        status
            .error_message
            .as_deref()
            .unwrap()
            .contains("unknown conversation")
    );
}

#[test]
fn a_scheduled_call_is_placed_once_at_its_time() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me in a bit"), T0);
    let at = Timestamp::from_millisecond(T0 + 5_000).unwrap().to_string();
    let out = h.command(
        command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
        T0 + 1,
    );
    assert!(ops(&out).is_empty(), "not yet");
    let said = texts(&out);
    assert!(
        said[0].text.contains("10:00") && said[0].text.contains("America/Los_Angeles"),
        "{}",
        said[0].text
    );
    assert_eq!(h.store.timer(&conversation_key(CH)), Some(T0 + 5_000));
    assert!(h.tick(T0 + 4_999).is_empty());
    let placed = h.tick(T0 + 5_000);
    assert_eq!(ops(&placed).len(), 1);
    assert_eq!(ops(&placed)[0].operation_id, call_operation_id("cmd-1"));
    // 10:00 in Los Angeles: the call may wait five minutes in egress, no more.
    assert_eq!(ops(&placed)[0].not_after, Some(T0 + 5_000 + 300_000));
    assert!(h.tick(T0 + 60_000).is_empty(), "once");
    // Re-sent after it was placed: still once.
    assert!(
        h.command(
            command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
            T0 + 6_000
        )
        .is_empty()
    );
}

#[test]
fn a_call_in_the_quiet_window_moves_to_its_end_and_the_user_is_told() {
    let mut h = Harness::new(settings(), Vec::new());
    let french = |n| ConversationEvent {
        participant: Some(Participant {
            address: Some("+33612345678".into()),
            ..text(n, "x").participant.unwrap()
        }),
        ..text(n, "Appelez-moi")
    };
    // 22:30 in Paris.
    let now = T0 + 210 * 60 * 1000;
    h.event(french(now), now);
    let out = h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), now);
    assert!(ops(&out).is_empty(), "not at night");
    let said = texts(&out);
    assert!(
        said[0].text.contains("08:00") && said[0].text.contains("Europe/Paris"),
        "{}",
        said[0].text
    );
    let due = h.store.timer(&conversation_key(CH)).unwrap();
    assert_eq!(
        Timestamp::from_millisecond(due).unwrap().to_string(),
        "2026-12-04T07:00:00Z"
    );
    assert!(h.tick(due - 1).is_empty());
    let out = h.tick(due);
    assert_eq!(ops(&out)[0].to.as_deref(), Some("+33612345678"));
}

#[test]
fn a_scheduled_call_whose_timer_fires_in_the_quiet_window_waits_for_its_end() {
    let mut h = Harness::new(settings(), Vec::new());
    let french = |n| ConversationEvent {
        participant: Some(Participant {
            address: Some("+33612345678".into()),
            ..text(n, "x").participant.unwrap()
        }),
        ..text(n, "Appelez-moi à 20h55")
    };
    h.event(french(T0), T0);
    // 20:55 in Paris.
    let at = Timestamp::from_millisecond(T0 + 115 * 60 * 1000)
        .unwrap()
        .to_string();
    h.command(
        command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
        T0 + 1,
    );
    // The stage was down: the timer fires at 21:10, in the quiet window.
    let late = T0 + 130 * 60 * 1000;
    let put_off = h.tick(late);
    assert!(ops(&put_off).is_empty(), "not at night");
    let due = h.store.timer(&conversation_key(CH)).unwrap();
    // The new time is told (to the issuer, and to lifecycle).
    let told = &statuses(&put_off)[0];
    assert_eq!(
        (told.outcome, told.scheduled_at),
        (DeliveryOutcome::Accepted, Some(due))
    );
    assert_eq!(
        Timestamp::from_millisecond(due).unwrap().to_string(),
        "2026-12-04T07:00:00Z"
    );
    let placed = h.tick(due);
    assert_eq!(ops(&placed).len(), 1);
    // Placed at 08:00 in Paris: it may wait five minutes.
    assert_eq!(ops(&placed)[0].not_after, Some(due + 300_000));

    // Placed at 20:58 in Paris: it may not leave after 21:00.
    let mut h = Harness::new(settings(), Vec::new());
    let now = T0 + 118 * 60 * 1000;
    h.event(french(now), now);
    let out = h.command(command("cmd-2", CommandKind::EscalateToVoice, &[]), now);
    assert_eq!(ops(&out)[0].not_after, Some(T0 + 120 * 60 * 1000));
}

#[test]
fn end_call_hangs_up_the_live_call_or_cancels_a_scheduled_one() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me"), T0);
    h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    h.deliver(
        delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, CALL),
        T0 + 2,
    );
    h.event(
        call(
            T0 + 3,
            CallState::InProgress,
            Some(RecordingDisclosure::Accepted),
            "outbound-api",
        ),
        T0 + 3,
    );
    let out = h.command(command("cmd-2", CommandKind::EndCall, &[]), T0 + 4);
    let end = &ops(&out)[0];
    assert_eq!(end.kind, OperationKind::EndCall);
    assert_eq!(end.params[CALL_SID_PARAM], CALL);
    assert_eq!(end.sender_key, format!("voice:{OURS}"));

    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me"), T0);
    let at = Timestamp::from_millisecond(T0 + 60_000)
        .unwrap()
        .to_string();
    h.command(
        command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
        T0 + 1,
    );
    let out = h.command(command("cmd-2", CommandKind::EndCall, &[]), T0 + 2);
    assert!(ops(&out).is_empty());
    let answers = statuses(&out);
    let status = |id: &str| answers.iter().find(|s| s.operation_id == id).unwrap();
    assert_eq!(
        status("voice-command-cmd-2").outcome,
        DeliveryOutcome::Accepted
    );
    // The escalation's issuer (and lifecycle) learn the call is off.
    let off = status("voice-scheduled-cmd-1");
    assert_eq!(
        (off.outcome, off.scheduled_at),
        (DeliveryOutcome::Failed, Some(T0 + 60_000))
    );
    assert!(h.tick(T0 + 60_000).is_empty(), "cancelled");
    // Re-sent, the cancelled escalation is not scheduled again.
    let again = h.command(
        command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
        T0 + 3,
    );
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(h.store.timer(&conversation_key(CH)), None);
}

#[test]
fn an_inbound_call_joins_the_conversation_transcript() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "I'll call you"), T0);
    // The answer webhook: the disclosure was played (and never answered).
    let out = h.event(
        call(
            T0 + 1,
            CallState::InProgress,
            Some(RecordingDisclosure::Disclosed),
            "inbound",
        ),
        T0 + 1,
    );
    let started = entries(&out);
    assert_eq!(
        started[0].entry_kind,
        Some(TranscriptEntryKind::CallStarted)
    );
    assert_eq!(started[0].direction, Direction::Inbound);
    assert_eq!(started[0].sequence, 2);
    let out = h.event(
        call(T0 + 60, CallState::Completed, None, "inbound"),
        T0 + 60,
    );
    assert_eq!(entries(&out)[0].call_outcome.as_deref(), Some("ended"));
    // The user hung up before answering the recording question: as after a
    // decline, the conversation continues by text.
    let said = texts(&out);
    assert_eq!(said.len(), 1, "no missed-call offer, only the text one");
    assert_eq!(said[0].response_id, format!("{ID_PREFIX}by-text-{CALL}"));
    // The conversation's texts still go to SMS.
    let state = h.store.get(&conversation_key(CH)).unwrap();
    assert_eq!(state.channel, Channel::Sms);
    assert_eq!(state.address.as_deref(), Some(USER));
}

#[test]
fn a_response_with_a_failed_part_records_what_twilio_accepted() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "hi"), T0);
    let part = |index: i32, outcome| DeliveryStatus {
        outcome,
        response_id: Some("r-1".into()),
        part_index: Some(index),
        part_count: Some(2),
        body: (outcome == DeliveryOutcome::Accepted).then(|| format!("part {index}")),
        resend_of: None,
        remediation: None,
        ..delivered(&format!("r-1-{index}"), OperationKind::SendMessage, "SM1")
    };
    assert!(entries(&h.deliver(part(1, DeliveryOutcome::Failed), T0 + 1)).is_empty());
    let done = entries(&h.deliver(part(0, DeliveryOutcome::Accepted), T0 + 2));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].text.as_deref(), Some("part 0"));
    // A repeated status is not a second entry.
    assert!(entries(&h.deliver(part(0, DeliveryOutcome::Accepted), T0 + 3)).is_empty());
    // Every part failed: no entry.
    let none = DeliveryStatus {
        response_id: Some("r-2".into()),
        part_count: Some(1),
        outcome: DeliveryOutcome::Failed,
        ..delivered("r-2-0", OperationKind::SendMessage, "")
    };
    assert!(entries(&h.deliver(none, T0 + 4)).is_empty());
}

#[test]
fn an_answering_machine_is_hung_up_on_and_the_user_offered_text() {
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me"), T0);
    h.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    h.deliver(
        delivered(&call_operation_id("cmd-1"), OperationKind::CreateCall, CALL),
        T0 + 2,
    );
    let mut machine = call(
        T0 + 3,
        CallState::InProgress,
        Some(RecordingDisclosure::Disclosed),
        "outbound-api",
    );
    if let Some(c) = machine.call.as_mut() {
        c.answered_by = Some("machine_start".into());
    }
    let out = h.event(machine, T0 + 3);
    let hang_up = &ops(&out)[0];
    assert_eq!(hang_up.kind, OperationKind::EndCall);
    assert_eq!(hang_up.params[CALL_SID_PARAM], CALL);
    let end = entries(&out);
    assert_eq!(end.len(), 1, "no start marker for a machine: {end:#?}");
    assert_eq!(end[0].call_outcome.as_deref(), Some("machine"));
    assert!(texts(&out)[0].text.contains("joindre"));
    assert!(compliance(&out).is_empty(), "nobody heard the disclosure");
    // The machine's silence and the completed callback change nothing.
    let late = h.event(
        call(
            T0 + 9,
            CallState::InProgress,
            Some(RecordingDisclosure::NoInput),
            "outbound-api",
        ),
        T0 + 9,
    );
    assert!(late.is_empty(), "{late:#?}");
    assert!(
        h.event(
            call(T0 + 10, CallState::Completed, None, "outbound-api"),
            T0 + 10
        )
        .is_empty()
    );
    assert_eq!(h.escalations("machine"), 1);
}

#[test]
fn stored_media_follow_their_message_in_the_transcript() {
    let mut h = Harness::new(settings(), Vec::new());
    let mut mms = text(1, "a photo");
    mms.message.as_mut().unwrap().media = vec![si_schemas::records::MediaRef {
        url: Some("https://api.twilio.com/m/ME1".into()),
        ..si_schemas::records::MediaRef::default()
    }];
    let first = entries(&h.event(mms, T0));
    let later = entries(&h.event(text(2, "did you get it?"), T0 + 1));
    let item = StoredMedia {
        status: MediaStorageStatus::Stored,
        object_key: Some("media/CH1/SM1/0-ab".into()),
        sha256: Some("ab".into()),
        ..StoredMedia::default()
    };
    let stored = ConversationEvent {
        media_stored: Some(MediaStored {
            source_event_id: "ev-1".into(),
            source_sid: "SM1".into(),
            call_sid: None,
            items: vec![item.clone()],
        }),
        ..event(3, ConversationEventType::MediaStored, Channel::Sms)
    };
    let refs = entries(&h.event(stored.clone(), T0 + 2));
    assert_eq!(refs.len(), 1);
    let entry = &refs[0];
    assert_eq!(entry.entry_kind, Some(TranscriptEntryKind::MediaStored));
    assert_eq!(entry.entry_id, "media-ev-1");
    assert_eq!(entry.message_sid.as_deref(), Some("SM1"));
    assert_eq!(entry.stored_media, vec![item]);
    assert_eq!(entry.direction, Direction::Inbound);
    // The message entry came first and carried Twilio's reference; the text
    // after it was never held back.
    assert!(first[0].sequence < later[0].sequence && later[0].sequence < entry.sequence);
    assert_eq!(first[0].media.len(), 1);
    // A recording's copy names the call and the recording.
    let recording = ConversationEvent {
        media_stored: Some(MediaStored {
            source_event_id: "ev-rec".into(),
            source_sid: "RE1".into(),
            call_sid: Some(CALL.into()),
            items: vec![StoredMedia::default()],
        }),
        ..event(4, ConversationEventType::MediaStored, Channel::Voice)
    };
    let rec = entries(&h.event(recording, T0 + 3));
    assert_eq!(rec[0].call_sid.as_deref(), Some(CALL));
    assert_eq!(rec[0].recording.as_ref().unwrap().recording_sid, "RE1");
    assert_eq!(rec[0].message_sid, None);
}

#[test]
fn a_scheduled_call_is_answered_with_its_time_and_cancelled_by_the_conversations_closure() {
    let at_ms = T0 + 60_000;
    let at = Timestamp::from_millisecond(at_ms).unwrap().to_string();
    let escalate = || command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]);

    // The answer says when the call will be placed (lifecycle keeps the
    // conversation open until then); an immediate call's does not.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me in a minute"), T0);
    let out = h.command(escalate(), T0 + 1);
    assert_eq!(statuses(&out)[0].scheduled_at, Some(at_ms));
    let mut now = Harness::new(settings(), Vec::new());
    now.event(text(T0, "Call me"), T0);
    let out = now.command(command("cmd-1", CommandKind::EscalateToVoice, &[]), T0 + 1);
    assert_eq!(ops(&out).len(), 1);
    assert_eq!(statuses(&out)[0].scheduled_at, None);

    // The conversation is closed before the call's time: no call, and the
    // escalation's issuer is told.
    let closed = h.command(
        command("cmd-2", CommandKind::CloseConversation, &[]),
        T0 + 2,
    );
    let off = &statuses(&closed)[0];
    assert_eq!(off.operation_id, "voice-scheduled-cmd-1");
    assert_eq!(
        (off.outcome, off.scheduled_at),
        (DeliveryOutcome::Failed, Some(at_ms))
    );
    assert_eq!(h.store.timer(&conversation_key(CH)), None);
    assert!(ops(&h.tick(at_ms)).is_empty(), "cancelled by the closure");
    assert_eq!(h.escalations("canceled"), 1);

    // Twilio closing the conversation cancels it too.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me in a minute"), T0);
    h.command(escalate(), T0 + 1);
    let closed = ConversationEvent {
        state_change: Some(StateChange {
            state_from: Some(ConversationState::Active),
            state_to: ConversationState::Closed,
            reason: None,
        }),
        ..event(
            T0 + 2,
            ConversationEventType::ConversationStateChanged,
            Channel::Sms,
        )
    };
    let out = h.event(closed, T0 + 2);
    assert_eq!(statuses(&out)[0].scheduled_at, Some(at_ms));
    assert!(
        ops(&h.tick(at_ms)).is_empty(),
        "cancelled by Twilio's closure"
    );

    // Another state change leaves it.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me in a minute"), T0);
    h.command(escalate(), T0 + 1);
    let inactive = ConversationEvent {
        state_change: Some(StateChange {
            state_from: Some(ConversationState::Active),
            state_to: ConversationState::Inactive,
            reason: None,
        }),
        ..event(
            T0 + 2,
            ConversationEventType::ConversationStateChanged,
            Channel::Sms,
        )
    };
    h.event(inactive, T0 + 2);
    assert_eq!(ops(&h.tick(at_ms)).len(), 1, "placed at its time");
}

#[test]
fn a_shared_location_is_in_the_transcript() {
    let mut h = Harness::new(settings(), Vec::new());
    let place = si_schemas::records::Location {
        latitude: 40.4168,
        longitude: -3.7038,
        address: None,
        label: Some("Puerta del Sol".into()),
    };
    let mut shared = text(T0, "");
    shared.message.as_mut().unwrap().location = Some(place.clone());
    let out = h.event(shared, T0);
    let written = entries(&out);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].location, Some(place));
    let plain = entries(&h.event(text(T0 + 1, "hi"), T0 + 1));
    assert_eq!(plain[0].location, None);
}

#[test]
fn a_call_asked_for_more_than_a_week_ahead_is_refused() {
    // Asked for more than a week ahead: refused.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Call me next month"), T0);
    let far = Timestamp::from_millisecond(T0 + 8 * 24 * 3_600_000)
        .unwrap()
        .to_string();
    let out = h.command(
        command("cmd-1", CommandKind::EscalateToVoice, &[(AT_PARAM, &far)]),
        T0 + 1,
    );
    assert_eq!(statuses(&out)[0].outcome, DeliveryOutcome::Failed);
    assert!(
        statuses(&out)[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("7 days")
    );
    assert_eq!(h.store.timer(&conversation_key(CH)), None);
}

fn closed_event(n: i64, source: EventSource) -> ConversationEvent {
    state_event(n, source, ConversationState::Closed)
}

fn state_event(n: i64, source: EventSource, state_to: ConversationState) -> ConversationEvent {
    ConversationEvent {
        source,
        participant: None,
        state_change: Some(StateChange {
            state_from: None,
            state_to,
            reason: None,
        }),
        ..event(
            n,
            ConversationEventType::ConversationStateChanged,
            Channel::Sms,
        )
    }
}

#[test]
fn an_escalation_for_a_closed_conversation_is_refused_until_lifecycle_opens_it_again() {
    let escalate = |id: &str| command(id, CommandKind::EscalateToVoice, &[]);
    let refused = |out: &[Output]| {
        let answers = statuses(out);
        assert!(ops(out).is_empty(), "no call: {out:?}");
        assert_eq!(answers.len(), 1, "{out:?}");
        assert_eq!(answers[0].outcome, DeliveryOutcome::Failed);
        assert_eq!(
            answers[0].error_message.as_deref(),
            Some("the conversation is closed")
        );
    };
    let conversations = |e: ConversationEvent| ConversationEvent {
        source: EventSource::Conversations,
        ..e
    };

    // Closed at Twilio: final, whatever comes late.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(conversations(text(T0, "Hi")), T0);
    h.event(closed_event(T0 + 1, EventSource::Conversations), T0 + 1);
    refused(&h.command(escalate("cmd-1"), T0 + 2));
    h.event(conversations(text(T0 + 3, "late")), T0 + 3);
    let active = state_event(
        T0 + 3,
        EventSource::Conversations,
        ConversationState::Active,
    );
    h.event(active, T0 + 3);
    refused(&h.command(escalate("cmd-2"), T0 + 4));
    assert_eq!(h.escalations("refused"), 2);

    // A CLOSE_CONVERSATION is not the closure: lifecycle may not act on it,
    // and the command topic is not ordered with lifecycle's events.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(conversations(text(T0, "Hi")), T0);
    h.command(
        command("cmd-0", CommandKind::CloseConversation, &[]),
        T0 + 1,
    );
    assert_eq!(ops(&h.command(escalate("cmd-1"), T0 + 2)).len(), 1);

    // Programmable Messaging (the events' source MESSAGING): lifecycle's
    // CLOSED event cancels a call asked for while the closing message went
    // out, and closes the conversation until lifecycle opens it again (its
    // ACTIVE event), not merely when a message of the user comes.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Hi"), T0);
    let at_ms = T0 + 60_000;
    let at = Timestamp::from_millisecond(at_ms).unwrap().to_string();
    h.command(
        command("cmd-0", CommandKind::EscalateToVoice, &[(AT_PARAM, &at)]),
        T0 + 1,
    );
    let out = h.event(closed_event(T0 + 1, EventSource::Messaging), T0 + 1);
    let off = &statuses(&out)[0];
    assert_eq!(off.operation_id, "voice-scheduled-cmd-0");
    assert_eq!(
        (off.outcome, off.scheduled_at),
        (DeliveryOutcome::Failed, Some(at_ms))
    );
    assert!(ops(&h.tick(at_ms)).is_empty(), "cancelled by the closure");
    refused(&h.command(escalate("cmd-1"), T0 + 2));
    h.event(text(T0 + 3, "Back again"), T0 + 3);
    refused(&h.command(escalate("cmd-2"), T0 + 3));
    h.event(
        state_event(T0 + 4, EventSource::Messaging, ConversationState::Active),
        T0 + 4,
    );
    let out = h.command(escalate("cmd-3"), T0 + 4);
    assert_eq!(ops(&out).len(), 1, "placed: {out:?}");
    assert_eq!(statuses(&out)[0].outcome, DeliveryOutcome::Accepted);

    // Si starting it again (START_CONVERSATION's CONVERSATION_STARTED) opens
    // it too.
    let mut h = Harness::new(settings(), Vec::new());
    h.event(text(T0, "Hi"), T0);
    h.event(closed_event(T0 + 1, EventSource::Messaging), T0 + 1);
    refused(&h.command(escalate("cmd-1"), T0 + 2));
    let started = ConversationEvent {
        event_type: ConversationEventType::ConversationStarted,
        ..state_event(T0 + 3, EventSource::Messaging, ConversationState::Active)
    };
    h.event(started, T0 + 3);
    assert_eq!(ops(&h.command(escalate("cmd-2"), T0 + 4)).len(), 1);
}
