#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use si_schemas::records::{
    CallEvent, CallState, ComplianceEvent, ComplianceEventKind, ComplianceRecordRef,
    ComplianceSource, ConsentState, ConsentStatus, DeliveryOutcome, EventSource, LocaleSource,
    MediaRef, MessageReceived, Participant, StateChange,
};

use super::*;

const T0: i64 = 1_795_000_000_000;
const CH: &str = "CH00000000000000000000000000000001";
const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";
const WARN: i64 = 20_000;
const CLOSE: i64 = 40_000;
const SUMMARY: i64 = 5_000;
const GRACE: i64 = 7_000;

fn settings() -> Settings {
    Settings {
        warn_after: Duration::from_millis(20_000),
        close_after: Duration::from_millis(40_000),
        summary_timeout: Duration::from_millis(5_000),
        closing_grace: Duration::from_millis(7_000),
        state_ttl: Duration::from_secs(3600),
        messaging_service_sid: None,
        retention_class: Some("standard".into()),
        ..Settings::default()
    }
}

fn message(conv: &str, n: i64, media: Vec<MediaRef>) -> ConversationEvent {
    ConversationEvent {
        channel: Channel::Sms,
        source: EventSource::Conversations,
        participant: Some(Participant {
            address: Some(USER.into()),
            channel: Channel::Sms,
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: "es".into(),
        locale_source: LocaleSource::PhoneCountry,
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("d-{n}"),
        message: Some(MessageReceived {
            message_sid: format!("IM{n}"),
            index: None,
            author: Some(USER.into()),
            body: Some("hola".into()),
            media,
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("ev-{n}"),
            conv,
            &format!("session-{conv}"),
            ConversationEventType::MessageReceived,
            n,
        )
    }
}

fn response(
    id: &str,
    conv: &str,
    purpose: ResponsePurpose,
    in_reply_to: Option<&str>,
) -> CognitionResponse {
    CognitionResponse {
        response_id: id.into(),
        conversation_id: conv.into(),
        session_id: format!("session-{conv}"),
        in_reply_to: in_reply_to.map(str::to_owned),
        text: "Hablamos de tu cita del martes.".into(),
        media: Vec::new(),
        locale: None,
        hints: None,
        created_at: 0,
        traceparent: None,
        purpose,
    }
}

fn close_command(conv: &str, reason: Option<&str>, summary: Option<&str>) -> Command {
    Command {
        reason: reason.map(str::to_owned),
        params: summary
            .map(|s| BTreeMap::from([(SUMMARY_PARAM.to_owned(), s.to_owned())]))
            .unwrap_or_default(),
        ..Command::new(CommandKind::CloseConversation, "cmd-1", conv, "test", 0)
    }
}

fn delivery(conv: &str, response_id: &str) -> DeliveryStatus {
    DeliveryStatus {
        operation_id: format!("{response_id}-0"),
        conversation_id: conv.into(),
        outcome: DeliveryOutcome::Accepted,
        twilio_sid: Some("IM9".into()),
        segments: None,
        error_code: None,
        error_message: None,
        attempts: 1,
        response_id: Some(response_id.into()),
        part_index: Some(0),
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

/// The processor, one partition's store, and a wall clock driving timers as
/// the runner does.
struct Harness {
    processor: LifecycleProcessor,
    store: StateStore<LifecycleState>,
}

impl Harness {
    fn new(settings: Settings) -> Self {
        Self::with_directory(settings, Vec::new())
    }

    fn with_directory(settings: Settings, entries: Vec<ParticipantBinding>) -> Self {
        let directory = GlobalTable::from_entries(
            topics::PARTICIPANTS,
            entries.into_iter().map(|b| (b.key(), b)),
        );
        Self {
            processor: LifecycleProcessor::new(
                settings,
                directory,
                LifecycleMetrics::unregistered(),
            ),
            store: StateStore::new(Duration::from_secs(3600)),
        }
    }

    fn feed(
        &mut self,
        topic: &str,
        input: LifecycleInput,
        at: i64,
    ) -> Result<Vec<Output>, ProcessError> {
        self.store.set_now(at);
        let ctx = RecordContext::for_test(topic, at);
        self.processor.process(&ctx, input, &mut self.store)
    }

    fn event(&mut self, event: ConversationEvent, at: i64) -> Vec<Output> {
        self.feed(
            topics::CONVERSATION_EVENTS,
            LifecycleInput::Event(Box::new(event)),
            at,
        )
        .unwrap()
    }

    fn respond(&mut self, response: CognitionResponse, at: i64) -> Vec<Output> {
        self.feed(
            topics::RESPONSES,
            LifecycleInput::Response(Box::new(response)),
            at,
        )
        .unwrap()
    }

    fn command(&mut self, command: Command, at: i64) -> Result<Vec<Output>, ProcessError> {
        self.feed(
            topics::COMMANDS,
            LifecycleInput::Command(Box::new(command)),
            at,
        )
    }

    fn deliver(&mut self, status: DeliveryStatus, at: i64) -> Vec<Output> {
        self.feed(
            topics::DELIVERY,
            LifecycleInput::Delivery(Box::new(status)),
            at,
        )
        .unwrap()
    }

    /// Fires every timer due at `now`, as the runner does.
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

    fn conversation(&self, conv: &str) -> Option<LifecycleState> {
        self.store.get(&conversation_key(conv)).cloned()
    }

    fn timer(&self, conv: &str) -> Option<i64> {
        self.store.timer(&conversation_key(conv))
    }

    fn count(&self, vec: &IntCounterVec, labels: &[&str]) -> u64 {
        vec.with_label_values(labels).get()
    }
}

fn only<'a, T: si_schemas::AvroRecord>(outputs: &'a [Output], topic: &str) -> Vec<&'a T> {
    outputs
        .iter()
        .filter(|o| o.topic() == topic)
        .map(|o| o.record::<T>().unwrap())
        .collect()
}

#[test]
fn a_quiet_conversation_is_warned_once_then_closed_with_the_summary_and_archived() {
    let mut h = Harness::new(settings());
    let picture = MediaRef {
        sid: Some("ME1".into()),
        url: None,
        content_type: Some("image/jpeg".into()),
        size_bytes: None,
        filename: None,
    };
    assert!(
        h.event(message(CH, T0, vec![picture.clone()]), T0)
            .is_empty()
    );
    assert_eq!(h.timer(CH), Some(T0 + WARN));
    assert!(h.tick(T0 + WARN - 1).is_empty(), "not early");

    let warned = h.tick(T0 + WARN);
    let warnings = only::<CognitionResponse>(&warned, topics::RESPONSES);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warned[0].key(), CH);
    assert_eq!(warnings[0].response_id, warning_id(CH, T0));
    assert_eq!(warnings[0].purpose, ResponsePurpose::Reply);
    assert_eq!(warnings[0].locale.as_deref(), Some("es"));
    assert!(
        warnings[0].text.contains('1'),
        "minutes left: {}",
        warnings[0].text
    );
    assert!(!warnings[0].text.contains("{minutes}"));
    assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Warned);
    assert_eq!(h.timer(CH), Some(T0 + CLOSE));
    assert!(
        h.tick(T0 + CLOSE - 1).is_empty(),
        "one warning per idle period"
    );
    // Our own warning coming back on si.responses.v1 is not activity.
    assert!(h.respond(warnings[0].clone(), T0 + WARN + 5).is_empty());
    assert_eq!(h.timer(CH), Some(T0 + CLOSE));

    let closing = h.tick(T0 + CLOSE);
    let requests = only::<InboundMessage>(&closing, topics::INBOUND);
    assert_eq!(requests.len(), 1);
    let request = requests[0];
    assert_eq!(request.purpose, InboundPurpose::SummaryRequest);
    assert_eq!(request.message_id, summary_request_id(CH, T0));
    assert_eq!(request.session_id, format!("session-{CH}"));
    assert_eq!(h.timer(CH), Some(T0 + CLOSE + SUMMARY));

    let summary = response(
        "summary-1",
        CH,
        ResponsePurpose::Summary,
        Some(&request.message_id),
    );
    let sent = h.respond(summary, T0 + CLOSE + 100);
    let closings = only::<CognitionResponse>(&sent, topics::RESPONSES);
    assert_eq!(closings.len(), 1);
    let closing_text = Catalog::builtin().text(keys::CLOSING, "es").text;
    assert_eq!(
        closings[0].text,
        format!("Hablamos de tu cita del martes.\n\n{closing_text}")
    );
    assert_eq!(closings[0].response_id, closing_id(CH, T0));
    assert_eq!(h.count(&h.processor.metrics.summaries, &["received"]), 1);
    assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Closing);
    assert_eq!(h.timer(CH), Some(T0 + CLOSE + 100 + GRACE));

    // Another message's delivery changes nothing; the closing message's ends it.
    assert!(
        h.deliver(delivery(CH, "echo-IM1"), T0 + CLOSE + 150)
            .is_empty()
    );
    let done = h.deliver(delivery(CH, &closing_id(CH, T0)), T0 + CLOSE + 200);
    let ops = only::<OutboundOperation>(&done, topics::OUTBOUND);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].kind, OperationKind::CloseConversation);
    assert_eq!(ops[0].sender_key, format!("sms:{OURS}"));
    assert_eq!(ops[0].operation_id, close_operation_id(CH, T0));
    let bindings = only::<ParticipantBinding>(&done, topics::PARTICIPANTS);
    assert_eq!(bindings.len(), 1);
    assert!(!bindings[0].active);
    assert_eq!(bindings[0].key(), format!("sms:{USER}|{OURS}"));
    // Twilio reports the closure of a Conversations conversation itself.
    assert!(only::<ConversationEvent>(&done, topics::CONVERSATION_EVENTS).is_empty());
    let archived = only::<ArchivalRequest>(&done, topics::ARCHIVAL);
    assert_eq!(archived.len(), 1);
    let a = archived[0];
    assert_eq!(a.request_id, archival_id(CH, T0));
    assert_eq!(a.reason, ArchivalReason::Inactivity);
    assert_eq!(
        a.summary.as_deref(),
        Some("Hablamos de tu cita del martes.")
    );
    assert_eq!(a.opened_at, Some(T0));
    assert_eq!(a.closed_at, T0 + CLOSE + 200);
    assert_eq!(a.media, vec![picture]);
    assert_eq!(a.retention_class.as_deref(), Some("standard"));
    assert!(h.conversation(CH).is_none(), "state dropped after archival");
    assert!(h.store.due_timers(i64::MAX, 10).is_empty(), "no timer left");
    assert_eq!(h.count(&h.processor.metrics.closed, &["inactivity"]), 1);
}

#[test]
fn a_reply_between_warning_and_closure_cancels_the_closure() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    assert_eq!(
        only::<CognitionResponse>(&h.tick(T0 + WARN), topics::RESPONSES).len(),
        1
    );
    let back = T0 + WARN + 1_000;
    assert!(h.event(message(CH, back, Vec::new()), back).is_empty());
    assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Open);
    assert!(h.tick(T0 + CLOSE).is_empty(), "the closure is cancelled");
    assert_eq!(h.timer(CH), Some(back + WARN));
    // A new idle period gets its own warning.
    let again = only::<CognitionResponse>(&h.tick(back + WARN), topics::RESPONSES)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].response_id, warning_id(CH, back));
    assert_eq!(
        h.count(&h.processor.metrics.inactivity, &["closure_cancelled"]),
        1
    );
}

#[test]
fn si_replies_are_activity_and_reset_the_timers() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let reply = response("echo-IM1", CH, ResponsePurpose::Reply, Some("IM1"));
    h.respond(reply, T0 + 10_000);
    assert_eq!(h.timer(CH), Some(T0 + 10_000 + WARN));
    // A reply for a conversation lifecycle does not know opens nothing.
    h.respond(response("x", "CH2", ResponsePurpose::Reply, None), T0);
    assert!(h.conversation("CH2").is_none());
}

#[test]
fn a_silent_responder_still_closes_on_time_with_the_catalog_text() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.tick(T0 + WARN);
    h.tick(T0 + CLOSE);
    let closing = h.tick(T0 + CLOSE + SUMMARY);
    let texts = only::<CognitionResponse>(&closing, topics::RESPONSES);
    assert_eq!(texts.len(), 1);
    assert_eq!(
        texts[0].text,
        Catalog::builtin().text(keys::CLOSING, "es").text
    );
    assert_eq!(h.count(&h.processor.metrics.summaries, &["timed_out"]), 1);
    // A late summary is ignored.
    let late = response(
        "late",
        CH,
        ResponsePurpose::Summary,
        Some(&summary_request_id(CH, T0)),
    );
    assert!(h.respond(late, T0 + CLOSE + SUMMARY + 1).is_empty());
    // No delivery status (consent blocked it, say): the grace ends it.
    let done = h.tick(T0 + CLOSE + SUMMARY + GRACE);
    assert_eq!(only::<ArchivalRequest>(&done, topics::ARCHIVAL).len(), 1);
    assert_eq!(only::<OutboundOperation>(&done, topics::OUTBOUND).len(), 1);
    assert!(h.conversation(CH).is_none());
}

#[test]
fn a_user_message_while_summarizing_for_inactivity_cancels_the_closure() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.tick(T0 + WARN);
    h.tick(T0 + CLOSE);
    let back = T0 + CLOSE + 1_000;
    h.event(message(CH, back, Vec::new()), back);
    let c = h.conversation(CH).unwrap();
    assert_eq!(c.phase, LifecyclePhase::Open);
    assert_eq!(c.close_reason, None);
    assert_eq!(h.timer(CH), Some(back + WARN));
    let summary = response(
        "s",
        CH,
        ResponsePurpose::Summary,
        Some(&summary_request_id(CH, T0)),
    );
    assert!(
        h.respond(summary, back + 1).is_empty(),
        "the summary came too late"
    );
}

#[test]
fn a_close_command_with_a_summary_closes_at_once_as_the_user_asked() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let out = h
        .command(
            close_command(CH, Some("USER_REQUEST"), Some("Done: booked.")),
            T0 + 1_000,
        )
        .unwrap();
    let texts = only::<CognitionResponse>(&out, topics::RESPONSES);
    assert_eq!(texts.len(), 1);
    assert!(texts[0].text.starts_with("Done: booked.\n\n"));
    assert!(only::<InboundMessage>(&out, topics::INBOUND).is_empty());
    let done = h.deliver(delivery(CH, &closing_id(CH, T0)), T0 + 2_000);
    let archived = only::<ArchivalRequest>(&done, topics::ARCHIVAL);
    assert_eq!(archived[0].reason, ArchivalReason::UserRequest);
    // The issuer re-sends the command: nothing happens twice.
    let again = h
        .command(close_command(CH, None, None), T0 + 3_000)
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(
        h.count(
            &h.processor.metrics.commands,
            &["close_conversation", "unknown_conversation"]
        ),
        1
    );
}

#[test]
fn a_close_command_without_a_summary_asks_for_one_and_a_reply_does_not_cancel_it() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let out = h
        .command(close_command(CH, None, None), T0 + 1_000)
        .unwrap();
    assert_eq!(only::<InboundMessage>(&out, topics::INBOUND).len(), 1);
    h.event(message(CH, T0 + 1_500, Vec::new()), T0 + 1_500);
    let c = h.conversation(CH).unwrap();
    assert_eq!(c.phase, LifecyclePhase::Summarizing);
    assert_eq!(c.close_reason, Some(ArchivalReason::Command));
    assert_eq!(h.timer(CH), Some(T0 + 1_000 + SUMMARY));
}

#[test]
fn programmable_messaging_conversations_are_not_closed_at_twilio_but_have_their_states_written() {
    let mut h = Harness::new(settings());
    let pm = "pm-0123456789abcdef";
    let state_of = |outputs: &[Output]| {
        only::<ConversationEvent>(outputs, topics::CONVERSATION_EVENTS)
            .iter()
            .map(|e| {
                assert_eq!(
                    e.event_type,
                    ConversationEventType::ConversationStateChanged
                );
                assert_eq!(e.source, EventSource::Messaging);
                (e.event_id.clone(), e.state_change.clone().unwrap().state_to)
            })
            .collect::<Vec<_>>()
    };
    // No Twilio state reports a Programmable Messaging conversation's:
    // lifecycle's events do, on the conversation's own partition.
    let opened = h.event(message(pm, T0, Vec::new()), T0);
    assert_eq!(
        state_of(&opened),
        [(opened_event_id(pm, T0), ConversationState::Active)]
    );
    // Its own ACTIVE read back changes nothing (no activity, no timer).
    let own = only::<ConversationEvent>(&opened, topics::CONVERSATION_EVENTS)[0].clone();
    let before = (h.conversation(pm), h.store.timer(&conversation_key(pm)));
    assert!(h.event(own, T0 + 5).is_empty());
    assert_eq!(
        (h.conversation(pm), h.store.timer(&conversation_key(pm))),
        before
    );
    assert!(
        h.event(message(pm, T0 + 1, Vec::new()), T0 + 1).is_empty(),
        "once"
    );
    h.command(close_command(pm, None, Some("s")), T0 + 1)
        .unwrap();
    let done = h.deliver(delivery(pm, &closing_id(pm, T0)), T0 + 2);
    assert!(only::<OutboundOperation>(&done, topics::OUTBOUND).is_empty());
    assert_eq!(only::<ArchivalRequest>(&done, topics::ARCHIVAL).len(), 1);
    assert_eq!(
        state_of(&done),
        [(closed_event_id(pm, T0), ConversationState::Closed)]
    );
    let closed = only::<ConversationEvent>(&done, topics::CONVERSATION_EVENTS)[0].clone();
    assert_eq!(closed.session_id, format!("session-{pm}"));
    assert_eq!(
        closed.state_change.as_ref().unwrap().reason.as_deref(),
        Some("COMMAND")
    );
    // The same id opens a fresh conversation afterwards, with its own ids
    // (the user wrote before normalize read the directory's closed entry):
    // ACTIVE again, after the CLOSED; the CLOSED read back later does not
    // close it.
    let again = h.event(message(pm, T0 + 10, Vec::new()), T0 + 10);
    assert_eq!(
        state_of(&again),
        [(opened_event_id(pm, T0 + 10), ConversationState::Active)]
    );
    assert!(h.event(closed, T0 + 11).is_empty());
    assert_eq!(h.conversation(pm).unwrap().opened_at, T0 + 10);
    assert_ne!(archival_id(pm, T0), archival_id(pm, T0 + 10));
}

#[test]
fn twilio_closing_the_conversation_archives_it_without_a_message() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let closed = ConversationEvent {
        event_type: ConversationEventType::ConversationStateChanged,
        participant: None,
        message: None,
        state_change: Some(StateChange {
            state_from: Some(ConversationState::Active),
            state_to: ConversationState::Closed,
            reason: Some("TIMER".into()),
        }),
        ..message(CH, T0 + 5, Vec::new())
    };
    let out = h.event(closed.clone(), T0 + 5);
    assert_eq!(
        out.len(),
        2,
        "directory entry and archival request: {out:?}"
    );
    let archived = only::<ArchivalRequest>(&out, topics::ARCHIVAL);
    assert_eq!(archived[0].reason, ArchivalReason::TwilioClosed);
    assert!(only::<CognitionResponse>(&out, topics::RESPONSES).is_empty());
    assert!(h.conversation(CH).is_none());
    // Our own close echoing back later finds nothing to do.
    assert!(h.event(closed, T0 + 6).is_empty());
}

#[test]
fn commands_for_others_are_ignored_and_unknown_ones_refused() {
    let mut h = Harness::new(settings());
    let escalate = Command {
        kind: CommandKind::EscalateToVoice,
        ..close_command(CH, None, None)
    };
    assert!(h.command(escalate, T0).unwrap().is_empty());
    // A start without a session to bind is refused as invalid.
    let start = Command {
        kind: CommandKind::StartConversation,
        ..close_command(CH, None, None)
    };
    assert!(matches!(
        h.command(start, T0),
        Err(ProcessError::Invalid(_))
    ));
    let newer = Command {
        kind: CommandKind::Unknown,
        ..close_command(CH, None, None)
    };
    assert!(matches!(
        h.command(newer, T0),
        Err(ProcessError::Invalid(_))
    ));
}

#[test]
fn transcript_entries_give_the_archived_range_and_keep_the_timer() {
    use si_schemas::records::{Direction, Modality, TranscriptSpeaker};
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    for sequence in [3, 4, 9] {
        let entry = TranscriptEntry {
            entry_id: format!("e{sequence}"),
            conversation_id: CH.into(),
            session_id: "s".into(),
            sequence,
            modality: Modality::Text,
            direction: Direction::Inbound,
            speaker: TranscriptSpeaker::User,
            text: None,
            media: Vec::new(),
            recording: None,
            call_sid: None,
            message_sid: None,
            locale: None,
            at: T0,
            entry_kind: None,
            channel: None,
            call_outcome: None,
            call_duration_seconds: None,
            source_sid: None,
            stored_media: Vec::new(),
            location: None,
        };
        h.feed(
            topics::TRANSCRIPT,
            LifecycleInput::Transcript(Box::new(entry)),
            T0 + 1,
        )
        .unwrap();
    }
    assert_eq!(h.timer(CH), Some(T0 + WARN));
    h.command(close_command(CH, None, Some("s")), T0 + 2)
        .unwrap();
    let done = h.tick(T0 + 2 + GRACE);
    let archived = only::<ArchivalRequest>(&done, topics::ARCHIVAL);
    assert_eq!(
        (archived[0].first_sequence, archived[0].last_sequence),
        (Some(3), Some(9))
    );
}

#[test]
fn settings_are_checked() {
    assert!(settings().validate().is_ok());
    let backwards = Settings {
        warn_after: Duration::from_secs(50),
        ..settings()
    };
    assert!(backwards.validate().is_err());
    let short_ttl = Settings {
        state_ttl: Duration::from_secs(30),
        ..settings()
    };
    assert!(short_ttl.validate().is_err());
}

fn binding(conversation_id: &str, active: bool, previous: Option<&str>) -> ParticipantBinding {
    ParticipantBinding {
        address: USER.into(),
        channel: Channel::Sms,
        proxy_address: Some(OURS.into()),
        conversation_id: conversation_id.into(),
        session_id: "s".into(),
        participant_sid: None,
        active,
        bound_at: T0 - 100_000,
        updated_at: T0 - 1_000,
        previous_conversation_id: previous.map(str::to_owned),
    }
}

#[test]
fn a_user_back_after_a_closure_gets_the_welcome_back_once() {
    let new = "pm-new";
    for directory in [
        vec![binding("pm-old", false, None)],
        vec![binding(new, true, Some("pm-old"))],
    ] {
        let mut h = Harness::with_directory(settings(), directory);
        let out = h.event(message(new, T0, Vec::new()), T0);
        let texts = only::<CognitionResponse>(&out, topics::RESPONSES);
        assert_eq!(texts.len(), 1, "{out:?}");
        assert_eq!(texts[0].response_id, welcome_back_id(new, T0));
        assert_eq!(
            texts[0].text,
            Catalog::builtin().text(keys::WELCOME_BACK, "es").text
        );
        assert!(h.event(message(new, T0 + 1, Vec::new()), T0 + 1).is_empty());
        assert_eq!(h.count(&h.processor.metrics.opened, &["reentry"]), 1);
    }
    // A first contact, or a pair whose conversation is still open elsewhere: no welcome-back.
    for directory in [
        Vec::new(),
        vec![binding("pm-other", true, None)],
        vec![binding(new, true, None)],
    ] {
        let mut h = Harness::with_directory(settings(), directory);
        let out = h.event(message(new, T0, Vec::new()), T0);
        assert!(only::<CognitionResponse>(&out, topics::RESPONSES).is_empty());
        assert_eq!(h.count(&h.processor.metrics.opened, &["inbound"]), 1);
    }
}

// ---- START_CONVERSATION ----

const NEW: &str = "outreach-0001";

fn start_command(params: &[(&str, &str)], address: Option<&str>) -> Command {
    Command {
        session_id: Some("session-new".into()),
        address: address.map(str::to_owned),
        channel: Some(Channel::Sms),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Command::new(
            CommandKind::StartConversation,
            "start-1",
            NEW,
            "session-orchestration",
            0,
        )
    }
}

fn consent(status: ConsentStatus, scope: &str) -> ConsentState {
    ConsentState {
        address: USER.into(),
        channel: Channel::Sms,
        sender_scope: scope.into(),
        status,
        source: ComplianceSource::Keyword,
        decided_at: T0 - 1000,
        updated_at: T0 - 1000,
        event_ref: Some("ev-stop".into()),
        keyword: Some("STOP".into()),
    }
}

fn identity(user_id: &str, channel: Channel, locale: &str) -> IdentityRecord {
    IdentityRecord {
        address: USER.into(),
        channel,
        user_id: user_id.into(),
        display_name: None,
        locale: Some(locale.into()),
        updated_at: T0 - 5000,
        attributes: BTreeMap::new(),
    }
}

impl Harness {
    fn outreach(
        settings: Settings,
        directory: Vec<ParticipantBinding>,
        consent: Vec<ConsentState>,
        identities: Vec<IdentityRecord>,
    ) -> Self {
        let directory = GlobalTable::from_entries(
            topics::PARTICIPANTS,
            directory.into_iter().map(|b| (b.key(), b)),
        );
        let local = GlobalTable::from_entries(
            topics::CONSENT,
            consent.into_iter().map(|c| {
                let key =
                    si_consent_gate::consent_key(c.channel, &c.address, &c.sender_scope).unwrap();
                (key, c)
            }),
        );
        let registry = GlobalTable::from_entries(topics::CONSENT_REGISTRY, []);
        let identity = GlobalTable::from_entries(
            topics::IDENTITY,
            identities
                .into_iter()
                .map(|r| (r.channel.address_key(&r.address), r)),
        );
        Self {
            processor: LifecycleProcessor::new(
                settings,
                directory,
                LifecycleMetrics::unregistered(),
            )
            .with_outreach(ConsentGate::from_tables(local, registry), identity),
            store: StateStore::new(Duration::from_secs(3600)),
        }
    }
}

fn start_settings(mode: StartMode) -> Settings {
    Settings {
        start_mode: mode,
        start_from: Some(OURS.into()),
        ..settings()
    }
}

/// Feeds the outputs' own events on `si.conversation.events.v1` back, as
/// the runner would once they are committed.
fn read_back(h: &mut Harness, outputs: &[Output], at: i64) -> Vec<Output> {
    let events: Vec<ConversationEvent> =
        only::<ConversationEvent>(outputs, topics::CONVERSATION_EVENTS)
            .into_iter()
            .cloned()
            .collect();
    let mut out: Vec<Output> = events.into_iter().flat_map(|e| h.event(e, at)).collect();
    assert!(
        only::<CognitionResponse>(&out, topics::RESPONSES).is_empty(),
        "no opening before segment had its chance to read the event"
    );
    out.extend(h.tick(at + OPENING_DELAY));
    out
}

const OPENING_DELAY: i64 = 1_000;

#[test]
fn a_start_in_messaging_mode_binds_the_session_and_sends_the_opening_once_segment_can_route_it() {
    let mut h = Harness::outreach(start_settings(StartMode::Messaging), vec![], vec![], vec![]);
    let out = h
        .command(
            start_command(&[(TEXT_PARAM, "Your order shipped.")], Some(USER)),
            T0,
        )
        .unwrap();
    // No Twilio conversation in messaging mode, and no text before the event is read back.
    assert!(only::<OutboundOperation>(&out, topics::OUTBOUND).is_empty());
    assert!(only::<CognitionResponse>(&out, topics::RESPONSES).is_empty());
    let bindings = only::<ParticipantBinding>(&out, topics::PARTICIPANTS);
    assert_eq!(bindings.len(), 1);
    assert!(bindings[0].active);
    assert_eq!(bindings[0].conversation_id, NEW);
    assert_eq!(bindings[0].session_id, "session-new");
    assert_eq!(bindings[0].proxy_address.as_deref(), Some(OURS));
    let events = only::<ConversationEvent>(&out, topics::CONVERSATION_EVENTS);
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.source == EventSource::Messaging && e.session_id == "session-new")
    );
    let status = only::<DeliveryStatus>(&out, topics::DELIVERY);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].outcome, DeliveryOutcome::Accepted);
    assert_eq!(status[0].operation_id, start_id("start", "start-1"));

    let opened = read_back(&mut h, &out, T0 + 50);
    let texts = only::<CognitionResponse>(&opened, topics::RESPONSES);
    assert_eq!(texts.len(), 1, "one opening: {opened:#?}");
    assert_eq!(texts[0].text, "Your order shipped.");
    assert_eq!(texts[0].conversation_id, NEW);
    assert_eq!(texts[0].session_id, "session-new");
    // Read back again (a replay): nothing more.
    assert!(read_back(&mut h, &out, T0 + 60).is_empty());
    let state = h.conversation(NEW).unwrap();
    assert!(state.programmable_messaging && state.opening_text.is_none());
    assert_eq!(
        h.timer(NEW),
        Some(T0 + 50 + OPENING_DELAY + WARN),
        "the idle period starts with the opening"
    );
    assert_eq!(h.count(&h.processor.metrics.starts, &["started"]), 1);

    // A re-sent command changes nothing.
    let again = h
        .command(
            start_command(&[(TEXT_PARAM, "Your order shipped.")], Some(USER)),
            T0 + 70,
        )
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(h.count(&h.processor.metrics.starts, &["duplicate"]), 1);
}

#[test]
fn a_start_in_conversations_mode_creates_adds_and_then_sends_in_order_on_one_sender() {
    let mut h = Harness::outreach(
        start_settings(StartMode::Conversations),
        vec![],
        vec![],
        vec![],
    );
    let out = h.command(start_command(&[], Some(USER)), T0).unwrap();
    let ops = only::<OutboundOperation>(&out, topics::OUTBOUND);
    let kinds: Vec<_> = ops.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            OperationKind::CreateConversation,
            OperationKind::AddParticipant
        ]
    );
    assert_eq!(
        ops[0].params.get("UniqueName").map(String::as_str),
        Some(NEW)
    );
    assert_eq!(ops[1].to.as_deref(), Some(USER));
    assert_eq!(ops[1].from.as_deref(), Some(OURS));
    assert!(
        ops.iter()
            .all(|o| o.conversation_id == NEW && o.sender_key == "sms:+14155550199")
    );
    let opened = read_back(&mut h, &out, T0 + 10);
    let texts = only::<CognitionResponse>(&opened, topics::RESPONSES);
    assert_eq!(texts.len(), 1);
    // No text given: the catalog's welcome.
    assert_eq!(
        texts[0].text,
        Catalog::builtin().text(keys::WELCOME, "en").text
    );
    // Closing it later closes it at Twilio (not a messaging conversation).
    assert!(!h.conversation(NEW).unwrap().programmable_messaging);
}

#[test]
fn a_start_for_an_opted_out_user_sends_nothing_and_records_why() {
    let mut h = Harness::outreach(
        start_settings(StartMode::Conversations),
        vec![],
        vec![consent(ConsentStatus::OptedOut, OURS)],
        vec![],
    );
    let out = h.command(start_command(&[], Some(USER)), T0).unwrap();
    assert!(only::<OutboundOperation>(&out, topics::OUTBOUND).is_empty());
    assert!(only::<CognitionResponse>(&out, topics::RESPONSES).is_empty());
    assert!(only::<ParticipantBinding>(&out, topics::PARTICIPANTS).is_empty());
    assert!(h.conversation(NEW).is_none());
    let blocked = only::<ComplianceEvent>(&out, topics::COMPLIANCE);
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].kind, ComplianceEventKind::BlockedOutbound);
    assert_eq!(
        blocked[0].details.get("consent_status").map(String::as_str),
        Some("OPTED_OUT")
    );
    assert_eq!(blocked[0].conversation_id.as_deref(), Some(NEW));
    let status = only::<DeliveryStatus>(&out, topics::DELIVERY);
    assert_eq!(status[0].outcome, DeliveryOutcome::Blocked);
    assert!(
        status[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("opted out")
    );
    assert_eq!(
        h.count(&h.processor.metrics.starts, &["refused_opted_out"]),
        1
    );
}

#[test]
fn under_the_explicit_policy_only_an_opted_in_user_is_started() {
    let explicit = Settings {
        require_opt_in: true,
        ..start_settings(StartMode::Messaging)
    };
    let mut never = Harness::outreach(explicit.clone(), vec![], vec![], vec![]);
    let out = never.command(start_command(&[], Some(USER)), T0).unwrap();
    assert_eq!(
        only::<DeliveryStatus>(&out, topics::DELIVERY)[0].outcome,
        DeliveryOutcome::Blocked
    );
    assert_eq!(only::<ComplianceEvent>(&out, topics::COMPLIANCE).len(), 1);
    assert_eq!(
        never.count(&never.processor.metrics.starts, &["refused_not_opted_in"]),
        1
    );

    let mut opted_in = Harness::outreach(
        explicit,
        vec![],
        vec![consent(ConsentStatus::OptedIn, "*")],
        vec![],
    );
    let out = opted_in
        .command(start_command(&[], Some(USER)), T0)
        .unwrap();
    assert_eq!(
        only::<DeliveryStatus>(&out, topics::DELIVERY)[0].outcome,
        DeliveryOutcome::Accepted
    );
}

#[test]
fn a_start_by_user_id_resolves_the_address_and_locale_of_the_channel() {
    let mut h = Harness::outreach(
        start_settings(StartMode::Messaging),
        vec![],
        vec![],
        vec![
            identity("u-9", Channel::Whatsapp, "fr-CA"),
            identity("u-7", Channel::Sms, "es"),
        ],
    );
    let out = h
        .command(start_command(&[(USER_PARAM, "u-7")], None), T0)
        .unwrap();
    let bindings = only::<ParticipantBinding>(&out, topics::PARTICIPANTS);
    assert_eq!(bindings[0].address, USER);
    let opened = read_back(&mut h, &out, T0 + 10);
    let texts = only::<CognitionResponse>(&opened, topics::RESPONSES);
    assert_eq!(
        texts[0].text,
        Catalog::builtin().text(keys::WELCOME, "es").text
    );

    // A user with no address on the channel: refused, nothing sent.
    let mut unknown = Harness::outreach(
        start_settings(StartMode::Messaging),
        vec![],
        vec![],
        vec![identity("u-9", Channel::Whatsapp, "fr-CA")],
    );
    let out = unknown
        .command(start_command(&[(USER_PARAM, "u-9")], None), T0)
        .unwrap();
    assert_eq!(out.len(), 1, "only the status: {out:#?}");
    assert_eq!(
        only::<DeliveryStatus>(&out, topics::DELIVERY)[0].outcome,
        DeliveryOutcome::Blocked
    );
    assert_eq!(
        unknown.count(&unknown.processor.metrics.starts, &["unknown_user"]),
        1
    );
}

#[test]
fn a_start_for_a_user_with_an_active_conversation_joins_it() {
    let active = ParticipantBinding {
        active: true,
        ..binding("pm-existing", true, None)
    };
    let mut h = Harness::outreach(
        start_settings(StartMode::Conversations),
        vec![active],
        vec![],
        vec![],
    );
    let out = h
        .command(
            start_command(&[(TEXT_PARAM, "One more thing.")], Some(USER)),
            T0,
        )
        .unwrap();
    assert!(
        only::<OutboundOperation>(&out, topics::OUTBOUND).is_empty(),
        "no second conversation"
    );
    assert!(only::<ConversationEvent>(&out, topics::CONVERSATION_EVENTS).is_empty());
    let texts = only::<CognitionResponse>(&out, topics::RESPONSES);
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].conversation_id, "pm-existing");
    assert_eq!(texts[0].text, "One more thing.");
    let status = only::<DeliveryStatus>(&out, topics::DELIVERY);
    assert_eq!(status[0].conversation_id, "pm-existing");
    assert!(h.conversation(NEW).is_none());
    assert_eq!(h.count(&h.processor.metrics.starts, &["joined"]), 1);
}

#[test]
fn malformed_starts_are_invalid() {
    let mut h = Harness::outreach(
        Settings {
            start_from: None,
            ..settings()
        },
        vec![],
        vec![],
        vec![],
    );
    // No sending address anywhere.
    assert!(matches!(
        h.command(start_command(&[], Some(USER)), T0),
        Err(ProcessError::Invalid(_))
    ));
    // Not E.164; neither address nor user; a voice start.
    let mut h = Harness::outreach(start_settings(StartMode::Messaging), vec![], vec![], vec![]);
    assert!(matches!(
        h.command(start_command(&[], Some("4155550100")), T0),
        Err(ProcessError::Invalid(_))
    ));
    assert!(matches!(
        h.command(start_command(&[], None), T0),
        Err(ProcessError::Invalid(_))
    ));
    let voice = Command {
        channel: Some(Channel::Voice),
        ..start_command(&[], Some(USER))
    };
    assert!(matches!(
        h.command(voice, T0),
        Err(ProcessError::Invalid(_))
    ));
}

#[test]
fn once_twilio_created_a_started_conversation_its_sid_is_aliased_until_closure() {
    let mut h = Harness::outreach(
        start_settings(StartMode::Conversations),
        vec![],
        vec![],
        vec![],
    );
    let out = h.command(start_command(&[], Some(USER)), T0).unwrap();
    read_back(&mut h, &out, T0 + 10);
    let created = DeliveryStatus {
        operation_id: start_id("create", "start-1"),
        conversation_id: NEW.into(),
        outcome: DeliveryOutcome::Accepted,
        twilio_sid: Some(CH.into()),
        segments: None,
        error_code: None,
        error_message: None,
        attempts: 1,
        response_id: None,
        part_index: None,
        part_count: None,
        kind: None,
        body: None,
        resend_of: None,
        remediation: None,
        at: T0 + 20,
        scheduled_at: None,
        compliance_event_id: None,
    };
    let out = h.deliver(created.clone(), T0 + 20);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key(), format!("alias:{CH}"));
    let alias = out[0].record::<ParticipantBinding>().unwrap();
    assert!(alias.active);
    assert_eq!(alias.conversation_id, NEW);
    assert_eq!(alias.session_id, "session-new");
    assert_eq!(
        h.conversation(NEW).unwrap().conversation_sid.as_deref(),
        Some(CH)
    );
    assert!(h.deliver(created, T0 + 30).is_empty(), "a repeated status");
    assert_eq!(
        h.timer(NEW),
        Some(T0 + 10 + OPENING_DELAY + WARN),
        "the idle timer is kept"
    );

    // Closure releases the alias with the pair.
    let closing = h
        .command(close_command(NEW, None, Some("Done.")), T0 + 40)
        .unwrap();
    let response = only::<CognitionResponse>(&closing, topics::RESPONSES)[0]
        .response_id
        .clone();
    let finished = h.deliver(delivery(NEW, &response), T0 + 50);
    let entries: Vec<(&str, bool)> = finished
        .iter()
        .filter(|o| o.topic() == topics::PARTICIPANTS)
        .map(|o| (o.key(), o.record::<ParticipantBinding>().unwrap().active))
        .collect();
    assert_eq!(
        entries,
        [
            ("sms:+14155550100|+14155550199", false),
            (&*format!("alias:{CH}"), false)
        ]
    );
    assert_eq!(
        only::<OutboundOperation>(&finished, topics::OUTBOUND)[0].kind,
        OperationKind::CloseConversation
    );
}

fn call_event(conv: &str, n: i64, call_sid: &str, status: CallState) -> ConversationEvent {
    ConversationEvent {
        event_type: ConversationEventType::CallStatusChanged,
        message: None,
        call: Some(CallEvent {
            call_sid: call_sid.into(),
            status,
            direction: Some("inbound".into()),
            duration_seconds: None,
            disclosure_accepted: None,
            disclosure: None,
            answered_by: None,
        }),
        ..message(conv, n, Vec::new())
    }
}

/// Closes `conv` with a given summary and returns what its release wrote.
fn close_now(h: &mut Harness, conv: &str, at: i64) -> Vec<Output> {
    let closing = h
        .command(close_command(conv, None, Some("Done.")), at)
        .unwrap();
    let response = only::<CognitionResponse>(&closing, topics::RESPONSES)[0]
        .response_id
        .clone();
    h.deliver(delivery(conv, &response), at + 10)
}

#[test]
fn a_call_still_live_at_closure_is_hung_up_and_one_that_ended_is_not() {
    const CALL: &str = "CA00000000000000000000000000000001";
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.event(
        call_event(CH, T0 + 5_000, CALL, CallState::InProgress),
        T0 + 5_000,
    );
    let state = h.conversation(CH).unwrap();
    assert_eq!(state.active_call_sid.as_deref(), Some(CALL));
    assert_eq!(
        h.timer(CH),
        Some(T0 + 5_000 + WARN),
        "a live call is activity"
    );
    let released = close_now(&mut h, CH, T0 + 6_000);
    let ops = only::<OutboundOperation>(&released, topics::OUTBOUND);
    let kinds: Vec<_> = ops.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [OperationKind::EndCall, OperationKind::CloseConversation]
    );
    assert_eq!(
        ops[0].params.get(CALL_SID_PARAM).map(String::as_str),
        Some(CALL)
    );
    assert_eq!(ops[0].sender_key, format!("voice:{OURS}"));
    assert_eq!(ops[0].channel, Channel::Voice);

    // A call that completed before the closure is left alone.
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.event(
        call_event(CH, T0 + 1_000, CALL, CallState::Ringing),
        T0 + 1_000,
    );
    h.event(
        call_event(CH, T0 + 2_000, CALL, CallState::Completed),
        T0 + 2_000,
    );
    assert_eq!(h.conversation(CH).unwrap().active_call_sid, None);
    let released = close_now(&mut h, CH, T0 + 3_000);
    let kinds: Vec<_> = only::<OutboundOperation>(&released, topics::OUTBOUND)
        .iter()
        .map(|o| o.kind)
        .collect();
    assert_eq!(kinds, [OperationKind::CloseConversation]);
}

#[test]
fn a_long_call_is_activity_until_it_ends() {
    const CALL: &str = "CA00000000000000000000000000000002";
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let start = T0 + 1_000;
    h.event(call_event(CH, start, CALL, CallState::InProgress), start);
    // The call goes on well past the warning's and the closure's times.
    for at in [start + WARN, start + CLOSE, start + 10 * CLOSE] {
        let out = h.tick(at);
        assert!(
            out.is_empty(),
            "nothing while the call lasts, at {at}: {out:?}"
        );
        assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Open);
    }
    // Its end starts the idle period.
    let end = start + 10 * CLOSE + 500;
    h.event(call_event(CH, end, CALL, CallState::Completed), end);
    assert_eq!(h.timer(CH), Some(end + WARN));
    assert!(h.tick(end + WARN - 1).is_empty());
    let warned = h.tick(end + WARN);
    assert_eq!(
        only::<CognitionResponse>(&warned, topics::RESPONSES).len(),
        1
    );

    // A call whose end never arrives counts only as long as the longest call.
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.event(call_event(CH, start, CALL, CallState::InProgress), start);
    let longest = i64::try_from(LONGEST_CALL.as_millis()).unwrap();
    let mut at = start + WARN;
    while at < start + longest {
        assert!(h.tick(at).is_empty(), "still on the call at {at}");
        at += 30 * 60 * 1000;
    }
    let warned = h.tick(start + longest + WARN);
    assert_eq!(
        only::<CognitionResponse>(&warned, topics::RESPONSES).len(),
        1
    );
}

#[test]
fn the_archival_request_names_the_compliance_events_recorded_about_the_conversation() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let recorded = |conv: &str, n: i64, id: &str| ConversationEvent {
        event_id: format!("compliance-{id}"),
        event_type: ConversationEventType::ComplianceRecorded,
        message: None,
        participant: None,
        compliance_record: Some(ComplianceRecordRef {
            event_id: id.into(),
            kind: "BLOCKED_OUTBOUND".into(),
        }),
        media_stored: None,
        ..message(conv, n, Vec::new())
    };
    h.event(recorded(CH, T0 + 1, "c-1"), T0 + 1);
    h.event(recorded(CH, T0 + 2, "c-1"), T0 + 2); // replayed: named once
    assert_eq!(h.timer(CH), Some(T0 + WARN), "a record is not activity");
    // The carrier refused a send with 21610: egress recorded an opt-out.
    let refused = DeliveryStatus {
        outcome: DeliveryOutcome::Failed,
        error_code: Some(21610),
        twilio_sid: None,
        ..delivery(CH, "r-9")
    };
    h.deliver(refused, T0 + 3);
    // Egress's consent re-check blocked a send: it recorded the block. A
    // BLOCKED status of anyone else (a refused command) names nothing.
    let blocked = |operation: &str, reason: &str| DeliveryStatus {
        outcome: DeliveryOutcome::Blocked,
        error_message: Some(reason.into()),
        twilio_sid: None,
        ..delivery(CH, operation)
    };
    h.deliver(
        blocked("r-10", "consent re-check before sending: OPTED_OUT"),
        T0 + 3,
    );
    h.deliver(blocked("r-11", "the user opted out"), T0 + 3);
    // A status naming its audit record (compliance_event_id): that id,
    // whatever the reason says.
    h.deliver(
        DeliveryStatus {
            compliance_event_id: Some("named-by-the-status".into()),
            ..blocked("r-12", "blocked")
        },
        T0 + 3,
    );
    // Another conversation's record is not this one's.
    h.event(recorded("CH-other", T0 + 4, "c-2"), T0 + 4);
    let released = close_now(&mut h, CH, T0 + 5);
    let archival = only::<ArchivalRequest>(&released, topics::ARCHIVAL);
    assert_eq!(
        archival[0].compliance_event_ids,
        [
            "c-1",
            "egress-21610-r-9-0",
            "egress-blocked-r-10-0",
            "named-by-the-status"
        ]
    );
}

/// voice-link's answer to an `ESCALATE_TO_VOICE` it scheduled for `due`.
fn scheduled_answer(conv: &str, command_id: &str, due: i64) -> DeliveryStatus {
    let mut answer = DeliveryStatus::command_answer(
        format!("voice-command-{command_id}"),
        conv.into(),
        DeliveryOutcome::Accepted,
        Some("scheduled".into()),
        0,
    );
    answer.scheduled_at = Some(due);
    answer
}

/// voice-link's word that the call scheduled for `due` will not take place.
fn call_off(conv: &str, command_id: &str, due: i64) -> DeliveryStatus {
    let mut status = DeliveryStatus::command_answer(
        format!("voice-scheduled-{command_id}"),
        conv.into(),
        DeliveryOutcome::Failed,
        Some("the scheduled call is cancelled".into()),
        0,
    );
    status.scheduled_at = Some(due);
    status
}

#[test]
fn a_call_scheduled_for_later_keeps_the_conversation_open_until_it() {
    const CALL: &str = "CA00000000000000000000000000000003";
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    // The user asked for a call in the evening; it is due the next morning.
    let due = T0 + 10 * CLOSE;
    h.deliver(scheduled_answer(CH, "esc-1", due), T0 + 100);
    assert_eq!(h.conversation(CH).unwrap().call_scheduled_at, Some(due));
    assert_eq!(h.timer(CH), Some(due + WARN));
    for at in [T0 + WARN, T0 + CLOSE, due - 1] {
        let out = h.tick(at);
        assert!(out.is_empty(), "nothing before the call, at {at}: {out:?}");
        assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Open);
    }
    // The call takes place; its end starts the idle period.
    h.event(call_event(CH, due, CALL, CallState::InProgress), due);
    let end = due + 60_000;
    h.event(call_event(CH, end, CALL, CallState::Completed), end);
    assert!(h.tick(end + WARN - 1).is_empty());
    let warned = h.tick(end + WARN);
    let warnings = only::<CognitionResponse>(&warned, topics::RESPONSES);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].response_id, warning_id(CH, end));

    // Scheduled after the warning went out: the warning's closure is off.
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    assert_eq!(h.tick(T0 + WARN).len(), 1, "the warning");
    h.deliver(scheduled_answer(CH, "esc-2", due), T0 + WARN + 100);
    assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Open);
    assert!(h.tick(T0 + CLOSE).is_empty(), "not closed before the call");
    // A call that never happens (refused at its time, say): the idle period
    // runs from its time, warning first.
    let warned = h.tick(due + WARN);
    assert_eq!(
        only::<CognitionResponse>(&warned, topics::RESPONSES)[0].response_id,
        warning_id(CH, due)
    );
    assert!(h.tick(due + CLOSE - 1).is_empty());
    let closing = h.tick(due + CLOSE);
    assert_eq!(
        only::<InboundMessage>(&closing, topics::INBOUND).len(),
        1,
        "summary requested"
    );
}

#[test]
fn a_call_called_off_starts_the_idle_period_then() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let due = T0 + 10 * CLOSE;
    h.deliver(scheduled_answer(CH, "esc-1", due), T0 + 100);
    // Cancelled long after the last message: the user is not warned and
    // closed on at once, the idle period starts at the cancellation.
    let off = T0 + 5 * CLOSE;
    h.deliver(call_off(CH, "esc-1", due), off);
    assert_eq!(h.conversation(CH).unwrap().call_scheduled_at, Some(off));
    assert_eq!(h.timer(CH), Some(off + WARN));
    assert!(h.tick(off + WARN - 1).is_empty());
    let warned = h.tick(off + WARN);
    assert_eq!(
        only::<CognitionResponse>(&warned, topics::RESPONSES)[0].response_id,
        warning_id(CH, off)
    );

    // Word about an earlier time than the one in force changes nothing
    // (the call was set again since).
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.deliver(scheduled_answer(CH, "esc-1", due), T0 + 100);
    h.deliver(scheduled_answer(CH, "esc-2", due + 1_000), T0 + 200);
    h.deliver(call_off(CH, "esc-1", due), T0 + 300);
    assert_eq!(
        h.conversation(CH).unwrap().call_scheduled_at,
        Some(due + 1_000)
    );
}

/// Cognition's summary answering the request a closure for inactivity sent.
fn late_summary(summarizing: &[Output]) -> CognitionResponse {
    let request = only::<InboundMessage>(summarizing, topics::INBOUND)[0].clone();
    response(
        "sum-1",
        CH,
        ResponsePurpose::Summary,
        Some(&request.message_id),
    )
}

#[test]
fn a_call_scheduled_while_closing_for_inactivity_calls_the_closure_off() {
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.tick(T0 + WARN);
    let summarizing = h.tick(T0 + CLOSE);
    assert_eq!(
        only::<InboundMessage>(&summarizing, topics::INBOUND).len(),
        1
    );
    assert_eq!(
        h.conversation(CH).unwrap().phase,
        LifecyclePhase::Summarizing
    );
    let due = T0 + 10 * CLOSE;
    h.deliver(scheduled_answer(CH, "esc-1", due), T0 + CLOSE + 10);
    let state = h.conversation(CH).unwrap();
    assert_eq!(
        (state.phase, state.close_reason),
        (LifecyclePhase::Open, None)
    );
    assert_eq!(h.timer(CH), Some(due + WARN));
    // The summary arriving late no longer closes it.
    let late = late_summary(&summarizing);
    assert!(h.respond(late, T0 + CLOSE + 20).is_empty());
    assert_eq!(h.conversation(CH).unwrap().phase, LifecyclePhase::Open);
}

#[test]
fn a_call_live_while_closing_for_inactivity_calls_the_closure_off() {
    const CALL: &str = "CA00000000000000000000000000000003";
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    h.tick(T0 + WARN);
    let summarizing = h.tick(T0 + CLOSE);
    assert_eq!(
        h.conversation(CH).unwrap().phase,
        LifecyclePhase::Summarizing
    );
    // The user escalated while cognition summarized: the call rings, then
    // is answered.
    let ringing = T0 + CLOSE + 10;
    h.event(call_event(CH, ringing, CALL, CallState::Ringing), ringing);
    let state = h.conversation(CH).unwrap();
    assert_eq!(
        (state.phase, state.close_reason),
        (LifecyclePhase::Open, None)
    );
    h.event(
        call_event(CH, ringing + 5_000, CALL, CallState::InProgress),
        ringing + 5_000,
    );
    assert_eq!(h.timer(CH), Some(ringing + 5_000 + WARN));
    // The summary arriving late neither closes it nor hangs up the call.
    let late = late_summary(&summarizing);
    assert!(h.respond(late, ringing + 6_000).is_empty());
    let state = h.conversation(CH).unwrap();
    assert_eq!(
        (state.phase, state.active_call_sid.as_deref()),
        (LifecyclePhase::Open, Some(CALL))
    );

    // A closure on request goes on: the call is hung up when it is done.
    let mut h = Harness::new(settings());
    h.event(message(CH, T0, Vec::new()), T0);
    let closing = h
        .command(close_command(CH, None, None), T0 + 1_000)
        .unwrap();
    assert!(only::<CognitionResponse>(&closing, topics::RESPONSES).is_empty());
    assert_eq!(
        h.conversation(CH).unwrap().phase,
        LifecyclePhase::Summarizing
    );
    h.event(
        call_event(CH, T0 + 2_000, CALL, CallState::InProgress),
        T0 + 2_000,
    );
    assert_eq!(
        h.conversation(CH).unwrap().phase,
        LifecyclePhase::Summarizing,
        "asked for, not idle"
    );
}

#[test]
fn a_scheduled_call_days_ahead_keeps_the_state_past_its_ttl() {
    let mut h = Harness::new(settings()); // state TTL one hour
    h.event(message(CH, T0, Vec::new()), T0);
    let due = T0 + 3 * 24 * 3_600_000;
    h.deliver(scheduled_answer(CH, "esc-1", due), T0 + 100);
    h.store.set_now(T0 + 2 * 3_600_000);
    assert!(
        h.conversation(CH).is_some(),
        "kept until the call, not dropped after the TTL"
    );
}
