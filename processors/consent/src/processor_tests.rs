//! Unit tests of the consent processor: RecordContext::for_test, a StateStore
//! and in-memory consent tables.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use si_catalog::{Catalog, keys};
use si_consent_gate::{ConsentGate, Verdict};
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentProcessorState,
    ConsentState, ConsentStatus, ConversationEvent, ConversationEventType, DeliveryOutcome,
    DeliveryStatus, EventSource, InboundMessage, LocaleSource, Location, MessageReceived,
    OperationKind, OutboundOperation, Participant, ParticipantChange,
};
use si_schemas::topics;

use super::*;
use crate::keywords::Keywords;

const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";
const CONV: &str = "CH00000000000000000000000000000001";
const T0: i64 = 1_795_000_000_000;

fn event(n: u32, body: Option<&str>, locale: &str) -> ConversationEvent {
    ConversationEvent {
        channel: Channel::Sms,
        source: EventSource::Conversations,
        participant: Some(Participant {
            address: Some(USER.into()),
            channel: Channel::Sms,
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            participant_sid: Some("MB1".into()),
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: locale.into(),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: Some("AC1".into()),
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("tok-{n}"),
        message: Some(MessageReceived {
            message_sid: format!("IM{n}"),
            index: Some(i64::from(n)),
            author: Some(USER.into()),
            body: body.map(str::to_owned),
            media: Vec::new(),
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("ev-{n}"),
            CONV,
            "session-1",
            ConversationEventType::MessageReceived,
            T0 + i64::from(n) * 1_000,
        )
    }
}

fn msg(n: u32, body: &str) -> ConversationEvent {
    event(n, Some(body), "en")
}

fn entry(status: ConsentStatus, source: ComplianceSource, at: i64) -> ConsentState {
    ConsentState {
        address: USER.into(),
        channel: Channel::Sms,
        sender_scope: "*".into(),
        status,
        source,
        decided_at: at,
        updated_at: at,
        keyword: None,
        event_ref: Some(format!("ref-{at}")),
    }
}

fn gate(local: Vec<ConsentState>, registry: Vec<ConsentState>) -> ConsentGate {
    let table = |topic, entries: Vec<ConsentState>| {
        GlobalTable::from_entries(topic, entries.into_iter().map(|e| (e.key(), e)))
    };
    ConsentGate::from_tables(
        table(topics::CONSENT, local),
        table(topics::CONSENT_REGISTRY, registry),
    )
}

struct Harness {
    processor: ConsentProcessor,
    state: StateStore<ConsentProcessorState>,
}

impl Harness {
    fn new(settings: Settings, gate: ConsentGate) -> Self {
        Self {
            processor: ConsentProcessor::new(settings, gate, ConsentMetrics::unregistered()),
            state: StateStore::new(Duration::from_secs(86_400)),
        }
    }

    fn default() -> Self {
        Self::new(Settings::default(), gate(vec![], vec![]))
    }

    fn run(&mut self, input: ConsentInput, ts: i64) -> Result<Vec<Output>, ProcessError> {
        let topic = match input {
            ConsentInput::Event(_) => topics::CONVERSATION_EVENTS,
            ConsentInput::Delivery(_) => topics::DELIVERY,
        };
        self.state.set_now(ts);
        let ctx = RecordContext::for_test(topic, ts);
        self.processor.process(&ctx, input, &mut self.state)
    }

    fn send(&mut self, event: ConversationEvent) -> Out {
        let ts = event.received_at + 5;
        Out(self.run(ConsentInput::Event(Box::new(event)), ts).unwrap())
    }

    fn deliver(&mut self, delivery: DeliveryStatus) -> Out {
        let ts = delivery.at + 5;
        Out(self
            .run(ConsentInput::Delivery(Box::new(delivery)), ts)
            .unwrap())
    }
}

struct Out(Vec<Output>);

impl Out {
    fn of<T: si_schemas::AvroRecord>(&self, topic: &str) -> Vec<&T> {
        self.0
            .iter()
            .filter(|o| o.topic() == topic)
            .map(|o| o.record::<T>().unwrap())
            .collect()
    }
    fn inbound(&self) -> Vec<&InboundMessage> {
        self.of(topics::INBOUND)
    }
    fn consent(&self) -> Vec<&ConsentState> {
        self.of(topics::CONSENT)
    }
    fn compliance(&self) -> Vec<&ComplianceEvent> {
        self.of(topics::COMPLIANCE)
    }
    fn outbound(&self) -> Vec<&OutboundOperation> {
        self.of(topics::OUTBOUND)
    }
    fn kinds(&self) -> Vec<ComplianceEventKind> {
        self.compliance().iter().map(|c| c.kind).collect()
    }
    fn reply_text(&self) -> String {
        self.outbound()
            .iter()
            .filter_map(|o| o.body.clone())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn text(key: &str, locale: &str) -> String {
    // The reply goes through segment's normalization (trimmed; GSM-7 look-alikes).
    let t = Catalog::builtin().text(key, locale).text;
    si_segment::normalize(t, Channel::Sms, true).0
}

fn delivery(op: &str, outcome: DeliveryOutcome, code: Option<i32>, at: i64) -> DeliveryStatus {
    DeliveryStatus {
        operation_id: op.into(),
        conversation_id: CONV.into(),
        outcome,
        twilio_sid: Some("SM1".into()),
        segments: None,
        error_code: code,
        error_message: None,
        attempts: 1,
        response_id: Some("resp-1".into()),
        part_index: Some(0),
        part_count: None,
        kind: None,
        body: None,
        resend_of: None,
        remediation: None,
        at,
        scheduled_at: None,
        compliance_event_id: None,
    }
}

#[test]
fn first_contact_implied_welcomes_records_opt_in_and_forwards() {
    let mut h = Harness::default();
    let out = h.send(msg(1, "hello"));
    let inbound = out.inbound();
    assert_eq!(inbound.len(), 1);
    assert!(inbound[0].first_contact);
    assert_eq!(inbound[0].text, "hello");
    assert_eq!(inbound[0].visitor_id.as_deref(), Some("v-1"));
    assert_eq!(inbound[0].locale, "en");
    assert_eq!(inbound[0].event_id, "ev-1");
    assert_eq!(inbound[0].message_id, "IM1");
    let consent = out.consent();
    assert_eq!(consent.len(), 1);
    assert_eq!(
        (consent[0].status, consent[0].source),
        (ConsentStatus::OptedIn, ComplianceSource::FirstContact)
    );
    assert_eq!(consent[0].key(), "sms:+14155550100|*");
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptIn]);
    assert_eq!(c[0].source, ComplianceSource::FirstContact);
    assert_eq!(c[0].message_ref.as_deref(), Some("IM1"));
    assert_eq!(c[0].locale.as_deref(), Some("en"));
    assert_eq!(
        c[0].event_id,
        compliance_event_id(ComplianceEventKind::OptIn, "ev-1")
    );
    assert_eq!(out.reply_text(), text(keys::WELCOME, "en"));
    let op = out.outbound()[0];
    assert_eq!(
        op.params.get("si.purpose").map(String::as_str),
        Some("consent")
    );
    assert_eq!(op.sender_key, "sms:+14155550199");
    assert_eq!(op.kind, OperationKind::SendConversationMessage);
    assert_eq!(op.to.as_deref(), Some(USER));
    assert_eq!(
        c[0].details.get("confirmation_operation_id"),
        Some(&op.operation_id)
    );
    // The opt-in is named on the conversation's own topic, for its archive.
    let recorded: Vec<&ConversationEvent> = out
        .0
        .iter()
        .filter_map(|o| o.record::<ConversationEvent>())
        .collect();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0]
            .compliance_record
            .as_ref()
            .map(|r| r.event_id.as_str()),
        Some(c[0].event_id.as_str())
    );
    assert_eq!(recorded[0].session_id, msg(1, "hello").session_id);
    // Outputs are keyed as the topics say.
    for o in &out.0 {
        let expected = match o.topic() {
            t if t == topics::INBOUND || t == topics::CONVERSATION_EVENTS => CONV,
            t if t == topics::CONSENT => "sms:+14155550100|*",
            t if t == topics::COMPLIANCE => "sms:+14155550100",
            t if t == topics::OUTBOUND => "sms:+14155550199",
            other => panic!("unexpected topic {other}"),
        };
        assert_eq!(o.key(), expected, "{}", o.topic());
    }

    // The second message is no first contact.
    let out = h.send(msg(2, "how are you"));
    assert_eq!(out.inbound().len(), 1);
    assert!(!out.inbound()[0].first_contact);
    assert!(out.consent().is_empty() && out.compliance().is_empty() && out.outbound().is_empty());
}

#[test]
fn stop_blocks_then_start_reenables() {
    let mut h = Harness::default();
    h.send(msg(1, "hello"));

    let out = h.send(msg(2, "Stop."));
    assert!(out.inbound().is_empty(), "a keyword is never forwarded");
    let consent = out.consent();
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0].status, ConsentStatus::OptedOut);
    assert_eq!(consent[0].source, ComplianceSource::Keyword);
    assert_eq!(consent[0].keyword.as_deref(), Some("Stop"));
    assert_eq!(consent[0].decided_at, T0 + 2_000);
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(c[0].keyword.as_deref(), Some("Stop"));
    assert_eq!(
        consent[0].event_ref.as_deref(),
        Some(c[0].event_id.as_str())
    );
    assert_eq!(out.outbound().len(), 1, "exactly one confirmation");
    assert_eq!(out.reply_text(), text(keys::OPT_OUT_CONFIRMATION, "en"));

    let out = h.send(msg(3, "are you there?"));
    assert!(out.inbound().is_empty());
    assert!(out.outbound().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    assert_eq!(out.compliance()[0].source, ComplianceSource::Keyword);
    assert_eq!(
        out.compliance()[0]
            .details
            .get("consent_status")
            .map(String::as_str),
        Some("OPTED_OUT")
    );

    let out = h.send(msg(4, "START"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedIn);
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptIn]);
    assert_eq!(out.reply_text(), text(keys::OPT_IN_CONFIRMATION, "en"));

    let out = h.send(msg(5, "back again"));
    assert_eq!(out.inbound().len(), 1);
    assert!(!out.inbound()[0].first_contact);

    let count = |outcome: &str| {
        h.processor
            .metrics
            .outcomes
            .with_label_values(&[outcome, "sms"])
            .get()
    };
    assert_eq!(
        [
            count("first_contact"),
            count("opt_out"),
            count("blocked_inbound"),
            count("opt_in"),
            count("forwarded")
        ],
        [1, 1, 1, 1, 2]
    );
}

#[test]
fn a_repeated_stop_is_audited_but_neither_recorded_nor_answered_again() {
    let mut h = Harness::default();
    h.send(msg(1, "STOP"));
    let out = h.send(msg(2, "stop"));
    assert!(out.consent().is_empty());
    assert!(out.outbound().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(
        out.compliance()[0]
            .details
            .get("already_opted_out")
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn the_stop_confirmation_can_be_turned_off() {
    let settings = Settings {
        stop_reply: false,
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let out = h.send(msg(1, "STOP"));
    assert!(out.outbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    assert_eq!(
        out.compliance()[0].locale,
        None,
        "no confirmation, no locale"
    );
}

#[test]
fn help_is_answered_even_when_opted_out_and_changes_nothing() {
    let mut h = Harness::default();
    h.send(msg(1, "hi"));
    let out = h.send(msg(2, " help? "));
    assert!(out.inbound().is_empty() && out.consent().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::Help]);
    assert_eq!(out.compliance()[0].keyword.as_deref(), Some("help"));
    assert_eq!(out.reply_text(), text(keys::HELP, "en"));

    h.send(msg(3, "STOP"));
    let out = h.send(msg(4, "INFO"));
    assert_eq!(out.kinds(), vec![ComplianceEventKind::Help]);
    assert_eq!(out.reply_text(), text(keys::HELP, "en"));
    assert!(out.consent().is_empty());
}

#[test]
fn look_alikes_are_ordinary_messages() {
    let mut h = Harness::default();
    h.send(msg(1, "hi"));
    for (n, body) in [
        "Stop by tomorrow",
        "cancel my order",
        "The end of the movie was great",
    ]
    .into_iter()
    .enumerate()
    {
        let out = h.send(msg(2 + u32::try_from(n).unwrap(), body));
        assert_eq!(out.inbound().len(), 1, "{body}");
        assert!(!out.inbound()[0].possible_revocation, "{body}");
        assert!(
            out.consent().is_empty() && out.compliance().is_empty(),
            "{body}"
        );
        assert!(out.outbound().is_empty(), "{body}");
    }
}

fn detail<'a>(event: &'a ComplianceEvent, key: &str) -> Option<&'a str> {
    event.details.get(key).map(String::as_str)
}

#[test]
fn a_full_width_stop_opts_out() {
    let mut h = Harness::default();
    h.send(msg(1, "hello"));
    let out = h.send(msg(2, "ＳＴＯＰ"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    assert_eq!(out.consent()[0].keyword.as_deref(), Some("ＳＴＯＰ"));
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(detail(c[0], "rule"), Some("keyword"));
    assert_eq!(detail(c[0], "matched"), Some("stop"));
    assert_eq!(out.outbound().len(), 1);
}

#[test]
fn a_french_opt_out_on_an_english_number_is_answered_in_french() {
    let mut h = Harness::default();
    h.send(event(1, Some("bonjour"), "en-US"));
    let out = h.send(event(2, Some("ARRÊT"), "en-US"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    let c = out.compliance();
    assert_eq!(c[0].kind, ComplianceEventKind::OptOut);
    assert_eq!(c[0].locale.as_deref(), Some("fr"));
    assert_eq!(detail(c[0], "rule_language"), Some("fr"));
    assert_eq!(detail(c[0], "matched"), Some("arret"));
    assert_eq!(out.reply_text(), text(keys::OPT_OUT_CONFIRMATION, "fr"));
}

#[test]
fn a_revocation_phrase_opts_out_with_one_confirmation() {
    let mut h = Harness::default();
    h.send(msg(1, "hello"));
    let out = h.send(msg(2, "Please stop texting me!"));
    assert!(
        out.inbound().is_empty(),
        "a revocation phrase is not forwarded"
    );
    let consent = out.consent();
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0].status, ConsentStatus::OptedOut);
    assert_eq!(
        consent[0].keyword.as_deref(),
        Some("Please stop texting me")
    );
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(c[0].source, ComplianceSource::Keyword);
    assert_eq!(c[0].keyword.as_deref(), Some("Please stop texting me"));
    assert_eq!(detail(c[0], "rule"), Some("revocation_phrase"));
    assert_eq!(detail(c[0], "matched"), Some("please stop texting me"));
    assert_eq!(detail(c[0], "rule_language"), Some("en"));
    assert_eq!(
        detail(c[0], "consent_words_version"),
        Some(RevocationRules::default().version())
    );
    assert_eq!(out.outbound().len(), 1, "exactly one confirmation");
    assert_eq!(out.reply_text(), text(keys::OPT_OUT_CONFIRMATION, "en"));
    let count = |outcome: &str| {
        h.processor
            .metrics
            .outcomes
            .with_label_values(&[outcome, "sms"])
            .get()
    };
    assert_eq!(count("revocation_phrase"), 1);

    // Nothing more goes out; a second phrase is audited, not answered.
    let out = h.send(msg(3, "unsubscribe me"));
    assert!(out.outbound().is_empty() && out.consent().is_empty());
    assert_eq!(
        detail(out.compliance()[0], "already_opted_out"),
        Some("true")
    );
    let out = h.send(msg(4, "hello?"));
    assert!(out.inbound().is_empty() && out.outbound().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
}

#[test]
fn a_spanish_phrase_is_answered_in_spanish() {
    let mut h = Harness::default();
    h.send(event(1, Some("hola"), "en-US"));
    let out = h.send(event(2, Some("No me escriban más, por favor"), "en-US"));
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    assert_eq!(out.compliance()[0].locale.as_deref(), Some("es"));
    assert_eq!(out.reply_text(), text(keys::OPT_OUT_CONFIRMATION, "es"));
}

#[test]
fn a_longer_message_with_a_revocation_word_is_flagged_and_forwarded() {
    let mut h = Harness::default();
    h.send(msg(1, "hello"));
    let body = "Thanks for the recipe. Can you stop sending me reminders every morning?";
    let out = h.send(msg(2, body));
    let inbound = out.inbound();
    assert_eq!(inbound.len(), 1, "forwarded to cognition");
    assert!(inbound[0].possible_revocation);
    assert_eq!(inbound[0].text, body, "unmodified");
    assert!(out.consent().is_empty(), "no decision");
    assert!(out.outbound().is_empty(), "the adapter does not answer");
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::PossibleRevocation]);
    assert_eq!(c[0].source, ComplianceSource::Keyword);
    assert_eq!(c[0].keyword.as_deref(), Some("stop sending"));
    assert_eq!(c[0].message_ref.as_deref(), Some("IM2"));
    assert_eq!(detail(c[0], "rule"), Some("revocation_near_messages"));
    assert_eq!(detail(c[0], "consent_status"), Some("OPTED_IN"));
    assert_eq!(detail(c[0], "action"), Some("forwarded_flagged"));
    assert_eq!(
        c[0].event_id,
        compliance_event_id(ComplianceEventKind::PossibleRevocation, "ev-2")
    );

    // Still opted in: the next message is ordinary.
    let out = h.send(msg(3, "what's for dinner?"));
    assert_eq!(out.inbound().len(), 1);
    assert!(!out.inbound()[0].possible_revocation);
    assert!(out.compliance().is_empty());

    // Until they confirm with STOP.
    let out = h.send(msg(4, "STOP"));
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    assert_eq!(out.outbound().len(), 1);
}

#[test]
fn a_short_revocation_about_that_is_flagged_not_acted_on() {
    let mut h = Harness::default();
    h.send(msg(1, "remind me to call mum at 5"));
    let out = h.send(msg(2, "Cancel that"));
    assert_eq!(out.inbound().len(), 1);
    assert!(out.inbound()[0].possible_revocation);
    assert!(out.consent().is_empty() && out.outbound().is_empty());
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::PossibleRevocation]);
    assert_eq!(detail(c[0], "rule"), Some("revocation_contextual"));
    assert_eq!(c[0].keyword.as_deref(), Some("cancel that"));
}

#[test]
fn a_flagged_message_of_an_opted_out_user_is_blocked_with_the_rule() {
    let mut h = Harness::default();
    h.send(msg(1, "STOP"));
    let out = h.send(msg(2, "why do you still send me messages, stop texting me"));
    assert!(out.inbound().is_empty());
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    assert_eq!(detail(c[0], "rule"), Some("revocation_clause"));
    assert_eq!(detail(c[0], "matched"), Some("stop texting me"));
}

#[test]
fn a_flagged_first_message_is_welcomed_and_forwarded_flagged() {
    let mut h = Harness::default();
    let out = h.send(msg(1, "hi, who is this? please stop texting me at night"));
    assert_eq!(out.inbound().len(), 1);
    assert!(out.inbound()[0].first_contact && out.inbound()[0].possible_revocation);
    assert_eq!(
        out.kinds(),
        vec![
            ComplianceEventKind::OptIn,
            ComplianceEventKind::PossibleRevocation
        ]
    );
    assert_eq!(out.reply_text(), text(keys::WELCOME, "en"));
}

#[test]
fn explicit_policy_holds_messages_until_yes() {
    let settings = Settings {
        policy: Policy::Explicit,
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let out = h.send(msg(1, "hello"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::Pending);
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    assert_eq!(out.compliance()[0].source, ComplianceSource::FirstContact);
    assert_eq!(out.reply_text(), text(keys::CONSENT_REQUEST, "en"));

    let out = h.send(msg(2, "hello??"));
    assert!(out.inbound().is_empty());
    assert!(out.outbound().is_empty(), "the request is not repeated");
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);

    let out = h.send(msg(3, "Yes!"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedIn);
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptIn]);
    assert_eq!(out.reply_text(), text(keys::OPT_IN_CONFIRMATION, "en"));

    let out = h.send(msg(4, "what's the weather"));
    assert_eq!(out.inbound().len(), 1);
}

#[test]
fn an_opt_in_keyword_as_first_message_is_welcomed() {
    let mut h = Harness::new(
        Settings {
            policy: Policy::Explicit,
            ..Settings::default()
        },
        gate(vec![], vec![]),
    );
    let out = h.send(msg(1, "START"));
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedIn);
    assert_eq!(out.reply_text(), text(keys::WELCOME, "en"));
    assert!(out.inbound().is_empty());
}

#[test]
fn replies_fall_back_to_the_default_language() {
    for (locale, used) in [("de", "en"), ("pt-BR", "en"), ("es-MX", "es"), ("fr", "fr")] {
        let mut h = Harness::default();
        let out = h.send(event(1, Some("hola"), locale));
        assert_eq!(out.reply_text(), text(keys::WELCOME, used), "{locale}");
        assert_eq!(
            out.compliance()[0].locale.as_deref(),
            Some(used),
            "{locale}"
        );
        let out = h.send(event(2, Some("STOP"), locale));
        assert_eq!(
            out.reply_text(),
            text(keys::OPT_OUT_CONFIRMATION, used),
            "{locale}"
        );
        assert_eq!(out.compliance()[0].locale.as_deref(), Some(used));
    }
}

#[test]
fn locale_keywords_apply() {
    let mut h = Harness::default();
    h.send(event(1, Some("hola"), "es-MX"));
    let out = h.send(event(2, Some("Ayuda"), "es-MX"));
    assert_eq!(out.kinds(), vec![ComplianceEventKind::Help]);
    assert_eq!(out.reply_text(), text(keys::HELP, "es"));

    let settings = Settings {
        keywords: Keywords::parse_extra("es:opt_out=BAJA").unwrap(),
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let out = h.send(event(1, Some("baja"), "es-MX"));
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
}

#[test]
fn a_newer_local_stop_beats_an_older_registry_opt_in() {
    // The registry's opt-in (t0 + 500) is older than the STOP (t0 + 2000).
    let registry = vec![entry(
        ConsentStatus::OptedIn,
        ComplianceSource::Registry,
        T0 + 500,
    )];
    let mut h = Harness::new(Settings::default(), gate(vec![], registry));
    h.send(msg(1, "hi"));
    h.send(msg(2, "STOP"));
    let out = h.send(msg(3, "hello?"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);

    // Also when the STOP is only in the consent table (another partition made it).
    let local = vec![entry(
        ConsentStatus::OptedOut,
        ComplianceSource::Keyword,
        T0 + 2_000,
    )];
    let registry = vec![entry(
        ConsentStatus::OptedIn,
        ComplianceSource::Registry,
        T0 + 500,
    )];
    let mut h = Harness::new(Settings::default(), gate(local, registry));
    let out = h.send(msg(3, "hello?"));
    assert!(out.inbound().is_empty());
    assert!(out.outbound().is_empty(), "a known address gets no welcome");
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
}

#[test]
fn a_newer_registry_opt_in_beats_an_older_local_stop() {
    // The registry's opt-in (t0 + 2500, e.g. on Si's website) is newer than the STOP (t0 + 2000).
    let registry = vec![entry(
        ConsentStatus::OptedIn,
        ComplianceSource::Registry,
        T0 + 2_500,
    )];
    let mut h = Harness::new(Settings::default(), gate(vec![], registry));
    h.send(msg(1, "hi"));
    h.send(msg(2, "STOP"));
    let out = h.send(msg(3, "hello again"));
    assert_eq!(out.inbound().len(), 1);

    // And a newer registry opt-out beats an older local opt-in.
    let registry = vec![entry(
        ConsentStatus::OptedOut,
        ComplianceSource::Registry,
        T0 + 1_500,
    )];
    let mut h = Harness::new(Settings::default(), gate(vec![], registry));
    let local_first = h.send(msg(0, "hi"));
    assert!(
        local_first.inbound().is_empty(),
        "the registry opt-out is in force"
    );
    let out = h.send(msg(3, "hello again"));
    assert!(out.inbound().is_empty());
    assert_eq!(out.compliance()[0].source, ComplianceSource::Registry);
}

#[test]
fn a_registry_opt_out_blocks_the_first_contact_without_a_welcome() {
    let registry = vec![entry(
        ConsentStatus::OptedOut,
        ComplianceSource::Registry,
        T0,
    )];
    let mut h = Harness::new(Settings::default(), gate(vec![], registry));
    let out = h.send(msg(1, "hello"));
    assert!(out.inbound().is_empty() && out.outbound().is_empty() && out.consent().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    // START still re-enables.
    let out = h.send(msg(2, "start"));
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedIn);
    let out = h.send(msg(3, "hello"));
    assert_eq!(out.inbound().len(), 1);
}

#[test]
fn a_registry_opt_in_counts_under_the_explicit_policy() {
    let registry = vec![entry(
        ConsentStatus::OptedIn,
        ComplianceSource::Registry,
        T0,
    )];
    let settings = Settings {
        policy: Policy::Explicit,
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], registry));
    let out = h.send(msg(1, "hello"));
    assert_eq!(out.inbound().len(), 1);
    assert!(out.inbound()[0].first_contact);
    assert_eq!(
        out.consent()[0].decided_at,
        T0,
        "mirrors the registry's decision time"
    );
    assert_eq!(out.reply_text(), text(keys::WELCOME, "en"));
}

#[test]
fn twilio_21610_records_an_opt_out() {
    let mut h = Harness::default();
    h.send(msg(1, "hi"));
    let out = h.deliver(delivery(
        "op-1",
        DeliveryOutcome::Failed,
        Some(21_610),
        T0 + 9_000,
    ));
    let consent = out.consent();
    assert_eq!(consent.len(), 1);
    assert_eq!(
        (consent[0].status, consent[0].source),
        (ConsentStatus::OptedOut, ComplianceSource::TwilioError)
    );
    assert_eq!(consent[0].decided_at, T0 + 9_000);
    let c = out.compliance();
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(c[0].source, ComplianceSource::TwilioError);
    assert_eq!(c[0].message_ref.as_deref(), Some("op-1"));
    assert_eq!(
        c[0].details.get("twilio_error_code").map(String::as_str),
        Some("21610")
    );
    assert!(out.outbound().is_empty());

    // Once opted out, further 21610s change nothing; messages are blocked.
    let out = h.deliver(delivery(
        "op-2",
        DeliveryOutcome::Failed,
        Some(21_610),
        T0 + 9_500,
    ));
    assert!(out.0.is_empty());
    let out = h.send(msg(10, "hello"));
    assert!(out.inbound().is_empty());
}

#[test]
fn other_delivery_outcomes_and_unknown_conversations_are_ignored() {
    let mut h = Harness::default();
    let out = h.deliver(delivery("op-0", DeliveryOutcome::Failed, Some(21_610), T0));
    assert!(out.0.is_empty(), "no user known for the conversation");
    h.send(msg(1, "hi"));
    for (outcome, code) in [
        (DeliveryOutcome::Failed, Some(30_003)),
        (DeliveryOutcome::Failed, None),
        (DeliveryOutcome::Accepted, None),
        (DeliveryOutcome::Blocked, Some(21_610)),
    ] {
        let out = h.deliver(delivery("op-x", outcome, code, T0 + 5_000));
        assert!(out.0.is_empty(), "{outcome:?} {code:?}");
    }
}

#[test]
fn a_participant_joining_is_enough_to_attribute_21610() {
    let mut h = Harness::default();
    let mut joined = event(1, None, "en");
    joined.event_type = ConversationEventType::ParticipantJoined;
    joined.message = None;
    joined.participant_change = Some(ParticipantChange {
        participant_sid: "MB1".into(),
        identity: None,
        address: Some(USER.into()),
        proxy_address: Some(OURS.into()),
    });
    assert!(h.send(joined).0.is_empty());
    let out = h.deliver(delivery(
        "op-1",
        DeliveryOutcome::Failed,
        Some(21_610),
        T0 + 9_000,
    ));
    assert_eq!(out.consent()[0].address, USER);
}

#[test]
fn chat_messages_are_forwarded_without_consent() {
    let mut h = Harness::default();
    let mut e = msg(1, "STOP");
    e.channel = Channel::Chat;
    if let Some(p) = e.participant.as_mut() {
        p.channel = Channel::Chat;
        p.address = None;
        p.identity = Some("user-1".into());
    }
    let out = h.send(e);
    assert_eq!(out.inbound().len(), 1);
    assert_eq!(out.inbound()[0].channel, Channel::Chat);
    assert!(out.consent().is_empty() && out.compliance().is_empty());
}

#[test]
fn sender_scope_and_programmable_messaging_replies() {
    let settings = Settings {
        scope: ScopeMode::Sender,
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let mut e = msg(1, "STOP");
    e.conversation_id = "pm-0123".into();
    e.channel = Channel::Whatsapp;
    if let Some(p) = e.participant.as_mut() {
        p.channel = Channel::Whatsapp;
    }
    let out = h.send(e);
    assert_eq!(out.consent()[0].key(), "whatsapp:+14155550100|+14155550199");
    let op = out.outbound()[0];
    assert_eq!(op.kind, OperationKind::SendMessage);
    assert_eq!(op.sender_key, "whatsapp:+14155550199");
    assert_eq!(op.channel, Channel::Whatsapp);
    assert_eq!(op.from.as_deref(), Some(OURS));
    assert!(
        op.not_after.is_some(),
        "WhatsApp free text is bound to the window"
    );
    // Opt-out trends per channel.
    let opt_outs = |channel: &str| {
        h.processor
            .metrics
            .outcomes
            .with_label_values(&["opt_out", channel])
            .get()
    };
    assert_eq!((opt_outs("whatsapp"), opt_outs("sms")), (1, 0));
}

#[test]
fn a_reply_goes_out_through_the_sender_segment_uses() {
    const MG: &str = "MG0123456789abcdef0123456789abcdef";
    let settings = Settings {
        messaging_service_sid: Some(MG.into()),
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let mut e = msg(1, "STOP");
    e.conversation_id = "pm-0123".into();
    let out = h.send(e.clone());
    let op = out.outbound()[0];
    // The same sender key as segment's responses for this conversation, so
    // the confirmation and the replies share one partition and one limiter.
    let segment_sender =
        si_consent_gate::sender(Channel::Sms, &e.conversation_id, true, Some(OURS), Some(MG))
            .unwrap();
    assert_eq!(op.sender_key, segment_sender.key);
    assert_eq!(op.sender_key, MG);
    assert_eq!(op.messaging_service_sid.as_deref(), Some(MG));
    assert_eq!(op.from, None);
    // A Conversations conversation sends through our address as before.
    let mut h = Harness::new(
        Settings {
            messaging_service_sid: Some(MG.into()),
            ..Settings::default()
        },
        gate(vec![], vec![]),
    );
    let out = h.send(msg(2, "STOP"));
    assert_eq!(out.outbound()[0].sender_key, format!("sms:{OURS}"));
}

#[test]
fn sender_scope_with_a_messaging_service_records_the_opt_out_for_the_service() {
    // The user wrote to one of the service's numbers; the replies go out
    // through the service, so the STOP must stop what the gate checks there.
    const MG: &str = "MG0123456789abcdef0123456789abcdef";
    let settings = Settings {
        scope: ScopeMode::Sender,
        messaging_service_sid: Some(MG.into()),
        ..Settings::default()
    };
    let mut h = Harness::new(settings, gate(vec![], vec![]));
    let mut e = msg(1, "STOP");
    e.conversation_id = "pm-0123".into();
    let out = h.send(e.clone());
    let decision = out.consent()[0].clone();
    assert_eq!(decision.key(), format!("sms:{USER}|{MG}"));
    assert_eq!(decision.status, ConsentStatus::OptedOut);

    let sender =
        si_consent_gate::sender(Channel::Sms, &e.conversation_id, true, Some(OURS), Some(MG))
            .unwrap();
    let segments_gate = gate(vec![decision], vec![]);
    assert!(matches!(
        segments_gate.check(Channel::Sms, USER, &sender.scope, false),
        Verdict::Blocked { .. }
    ));
    // The user's next message is not forwarded either.
    let mut next = msg(2, "hello again");
    next.conversation_id = e.conversation_id;
    assert!(h.send(next).inbound().is_empty());

    // A conversation Si started in messaging mode has lifecycle's id, not a
    // `pm-` one; its user's messages come from the Messaging API.
    let mut h = Harness::new(
        Settings {
            scope: ScopeMode::Sender,
            messaging_service_sid: Some(MG.into()),
            ..Settings::default()
        },
        gate(vec![], vec![]),
    );
    let mut started = msg(3, "STOP");
    started.conversation_id = "si-0123".into();
    started.source = EventSource::Messaging;
    let out = h.send(started);
    assert_eq!(out.consent()[0].key(), format!("sms:{USER}|{MG}"));
    let confirmation = out.outbound()[0];
    assert_eq!(confirmation.kind, OperationKind::SendMessage);
    assert_eq!(confirmation.messaging_service_sid.as_deref(), Some(MG));
}

#[test]
fn without_a_sender_address_the_decision_still_counts() {
    let mut h = Harness::default();
    let mut e = msg(1, "STOP");
    if let Some(p) = e.participant.as_mut() {
        p.proxy_address = None;
    }
    let out = h.send(e);
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
    assert!(out.outbound().is_empty());
    assert!(
        out.compliance()[0]
            .details
            .contains_key("confirmation_error")
    );
}

#[test]
fn replays_yield_identical_ids() {
    let ids = || {
        let mut h = Harness::default();
        let mut all = Vec::new();
        for (n, body) in [(1, "hi"), (2, "STOP"), (3, "x"), (4, "START")] {
            let out = h.send(msg(n, body));
            all.extend(out.compliance().iter().map(|c| c.event_id.clone()));
            all.extend(out.outbound().iter().map(|o| o.operation_id.clone()));
        }
        all
    };
    let first = ids();
    assert_eq!(first, ids());
    let unique: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(unique.len(), first.len());
}

#[test]
fn bad_input_is_invalid() {
    let mut h = Harness::default();
    let mut no_message = msg(1, "hi");
    no_message.message = None;
    let err = h
        .run(ConsentInput::Event(Box::new(no_message)), T0)
        .unwrap_err();
    assert!(matches!(err, ProcessError::Invalid(_)), "{err}");

    let mut no_address = msg(2, "hi");
    if let Some(p) = no_address.participant.as_mut() {
        p.address = None;
    }
    let err = h
        .run(ConsentInput::Event(Box::new(no_address)), T0)
        .unwrap_err();
    assert!(matches!(err, ProcessError::Invalid(_)), "{err}");
    assert!(!err.to_string().contains(USER), "no raw number in errors");

    let mut no_participant = msg(3, "hi");
    no_participant.participant = None;
    assert!(
        h.run(ConsentInput::Event(Box::new(no_participant)), T0)
            .is_err()
    );
}

#[test]
fn other_event_types_produce_nothing() {
    let mut h = Harness::default();
    let mut e = msg(1, "STOP");
    e.event_type = ConversationEventType::MessageSent;
    assert!(h.send(e).0.is_empty());
}

#[test]
fn state_entries_are_written_for_decisions_and_contacts() {
    let mut h = Harness::default();
    h.send(msg(1, "STOP"));
    let decision = h
        .state
        .get(&decision_key("sms:+14155550100|*"))
        .and_then(|s| s.decision.clone())
        .unwrap();
    assert_eq!(decision.status, ConsentStatus::OptedOut);
    let contact = h
        .state
        .get(&contact_key(CONV))
        .and_then(|s| s.contact.clone())
        .unwrap();
    assert_eq!(contact.address, USER);
    assert_eq!(contact.proxy_address.as_deref(), Some(OURS));
}

#[test]
fn an_unchanged_contact_is_written_again_only_once_a_thirtieth_of_its_ttl_has_passed() {
    let mut h = Harness::default();
    let ttl = i64::try_from(Settings::default().state_ttl.as_millis()).unwrap();
    let expiry = |h: &Harness| h.state.expires_at(&contact_key(CONV)).unwrap();
    let at = |n: u32, received_at: i64, locale: &str| ConversationEvent {
        received_at,
        ..event(n, Some("hello"), locale)
    };
    let t0 = msg(1, "hello").received_at;
    h.send(at(1, t0, "en"));
    let first = expiry(&h);
    assert_eq!(first, t0 + 5 + ttl);

    // An hour later, the same user and locale: not written again.
    h.send(at(2, t0 + 3_600_000, "en"));
    assert_eq!(expiry(&h), first);

    // A changed locale is written at once.
    let t3 = t0 + 7_200_000;
    h.send(at(3, t3, "es"));
    assert_eq!(expiry(&h), t3 + 5 + ttl);
    let contact = h.state.get(&contact_key(CONV)).unwrap().contact.clone();
    assert_eq!(contact.unwrap().locale.as_deref(), Some("es"));

    // Unchanged again, but more than a day (a thirtieth of 30 days) after
    // its last write: written again, so it lives on with its conversation.
    let t4 = t3 + ttl / 30 + 1;
    h.send(at(4, t4, "es"));
    assert_eq!(expiry(&h), t4 + 5 + ttl);
}

fn media_stored(n: u32, source_sid: &str, call_sid: Option<&str>) -> ConversationEvent {
    use si_schemas::records::{MediaStorageStatus, MediaStored, StoredMedia};
    ConversationEvent {
        event_id: format!("media-ev-{n}"),
        event_type: ConversationEventType::MediaStored,
        participant: None,
        message: None,
        media_stored: Some(MediaStored {
            source_event_id: format!("ev-{n}"),
            source_sid: source_sid.into(),
            call_sid: call_sid.map(str::to_owned),
            items: vec![StoredMedia {
                index: 0,
                status: MediaStorageStatus::Stored,
                object_key: Some(format!("media/{CONV}/{source_sid}/0-abc")),
                content_type: Some("image/png".into()),
                ..StoredMedia::default()
            }],
        }),
        ..event(n, None, "en")
    }
}

#[test]
fn stored_media_follow_their_message_to_the_cognition_layer_while_forwarded() {
    let mut h = Harness::default();
    assert_eq!(h.send(msg(1, "a photo")).inbound().len(), 1);
    let out = h.send(media_stored(1, "IM1", None));
    let inbound = out.inbound();
    assert_eq!(inbound.len(), 1, "{:?}", out.0);
    assert_eq!(inbound[0].purpose, InboundPurpose::MediaStored);
    assert_eq!(inbound[0].message_id, "IM1");
    assert_eq!(inbound[0].event_id, "media-ev-1");
    assert!(inbound[0].text.is_empty());
    assert_eq!(inbound[0].stored_media.len(), 1);
    assert_eq!(
        inbound[0].stored_media[0].object_key.as_deref(),
        Some("media/CH00000000000000000000000000000001/IM1/0-abc")
    );
    assert!(out.outbound().is_empty() && out.consent().is_empty());
    // A call recording's copy is the call's: not forwarded.
    assert!(
        h.send(media_stored(2, "RE1", Some("CA1")))
            .inbound()
            .is_empty()
    );
    // Opted out: the user's messages are blocked, their media copies too.
    h.send(msg(3, "STOP"));
    assert!(h.send(media_stored(3, "IM3", None)).inbound().is_empty());
}

#[test]
fn a_shared_location_profile_name_and_button_reach_cognition() {
    let mut h = Harness::default();
    let place = Location {
        latitude: 48.8584,
        longitude: 2.2945,
        address: Some("Champ de Mars, Paris".into()),
        label: Some("Tour Eiffel".into()),
    };
    let mut shared = event(1, None, "en");
    let message = shared.message.as_mut().unwrap();
    message.location = Some(place.clone());
    message.profile_name = Some("Ana".into());
    message.button_payload = Some("call-yes".into());
    let out = h.send(shared);
    let inbound = out.inbound();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].text, "");
    assert_eq!(inbound[0].location, Some(place));
    assert_eq!(inbound[0].profile_name.as_deref(), Some("Ana"));
    assert_eq!(inbound[0].button_payload.as_deref(), Some("call-yes"));
}

fn limited(messages: u32, period: Duration, burst: u32) -> Harness {
    Harness::new(
        Settings {
            rate_limit: Some(RateLimit::new(messages, period, burst).unwrap()),
            ..Settings::default()
        },
        gate(vec![], vec![]),
    )
}

#[test]
fn a_flooding_user_is_held_back_told_once_and_keywords_still_count() {
    // Two a minute, bursts of two; the test's messages are a second apart.
    let mut h = limited(2, Duration::from_secs(60), 2);
    assert_eq!(h.send(msg(1, "hello")).inbound().len(), 1, "first contact");
    assert_eq!(h.send(msg(2, "are you there")).inbound().len(), 1);

    // The third within the burst's tolerance is held back: recorded once,
    // with a notice in the user's language, and nothing to cognition.
    let out = h.send(event(3, Some("hola?"), "es-MX"));
    assert!(out.inbound().is_empty(), "held back");
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    let c = out.compliance()[0];
    assert_eq!(c.source, ComplianceSource::RateLimit);
    assert_eq!(c.message_ref.as_deref(), Some("IM3"));
    assert_eq!(
        c.event_id,
        compliance_event_id(ComplianceEventKind::BlockedInbound, "ev-3")
    );
    let detail = |k: &str| c.details.get(k).map(String::as_str);
    assert_eq!(detail("reason"), Some("rate_limited"));
    assert_eq!(detail("rate_limit"), Some("2/1m"));
    assert_eq!(detail("burst"), Some("2"));
    assert_eq!(detail("consent_status"), Some("OPTED_IN"));
    // Two messages at 1 s and 2 s took 30 s of allowance each, the burst
    // forgives 30: the next message passes at 31 s, 28 s after this one.
    assert_eq!(detail("retry_after_ms"), Some("28000"));
    assert_eq!(out.reply_text(), text(keys::RATE_LIMITED, "es"));
    let op = out.outbound()[0];
    assert_eq!(op.to.as_deref(), Some(USER));
    assert_eq!(
        op.params.get(PURPOSE_PARAM).map(String::as_str),
        Some(PURPOSE)
    );
    assert_eq!(
        detail("confirmation_operation_id"),
        Some(op.operation_id.as_str())
    );

    // The next ones are only counted.
    let out = h.send(msg(4, "hello??"));
    assert!(out.0.is_empty(), "{:?}", out.0);
    let counted = h
        .processor
        .metrics
        .outcomes
        .with_label_values(&["rate_limited", "sms"])
        .get();
    assert_eq!(counted, 2);

    // A keyword is never held back.
    let out = h.send(msg(5, "STOP"));
    assert_eq!(out.kinds(), vec![ComplianceEventKind::OptOut]);
    assert_eq!(out.consent()[0].status, ConsentStatus::OptedOut);
}

#[test]
fn a_flood_is_told_once_and_a_new_one_after_the_allowance_is_whole_again() {
    let mut h = limited(2, Duration::from_secs(60), 2);
    let at = |n: u32, secs: i64| {
        let mut e = msg(n, "hi");
        e.received_at = T0 + secs * 1_000;
        e.occurred_at = e.received_at;
        e
    };
    for (n, secs) in [(1, 0), (2, 1)] {
        assert_eq!(h.send(at(n, secs)).inbound().len(), 1);
    }
    assert_eq!(h.send(at(3, 2)).kinds().len(), 1, "held back, recorded");
    assert!(h.send(at(4, 10)).0.is_empty(), "held back, counted");
    // 30 s after the first: one message's worth of allowance is back. The
    // flood goes on: the next one is held back without a second notice.
    let out = h.send(at(5, 30));
    assert_eq!(out.inbound().len(), 1, "forwarded again");
    assert!(out.compliance().is_empty());
    let out = h.send(at(6, 31));
    assert!(out.0.is_empty(), "the same flood: told once");
    // Its state is the conversation's account, written with the decision.
    let account = h
        .state
        .get(&rate_key(CONV))
        .and_then(|e| e.rate.clone())
        .unwrap();
    assert_eq!(account.limited_since, Some(T0 + 2_000));
    assert_eq!(account.held_back, 3);
    assert_eq!(account.theoretical_arrival_at, T0 + 90_000);
    // The allowance is whole again at 90 s, the flood over an interval
    // later; the account is kept an hour longer (the store's time runs
    // ahead of receive times in a backlog), and a new flood after that is
    // recorded and told anew.
    assert_eq!(
        h.state.expires_at(&rate_key(CONV)),
        Some(T0 + 31_005 + 59_000 + 30_000 + 3_600_000)
    );
    for n in 7..9 {
        assert_eq!(h.send(at(n, 200)).inbound().len(), 1);
    }
    let out = h.send(at(9, 201));
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    assert_eq!(out.outbound().len(), 1, "told again");
}

#[test]
fn the_account_lives_through_a_backlog() {
    // The stage reads a minute's flood ten minutes late: the records are
    // on time, the wall clock the store is swept by is ten minutes ahead,
    // and the sweep runs between the messages. The account is still there
    // for the flood's later messages.
    let mut h = limited(2, Duration::from_secs(60), 2);
    let late = 600_000;
    let mut forwarded = 0;
    for n in 1..=20u32 {
        let mut e = msg(n, "spam");
        e.received_at = T0 + i64::from(n) * 1_000;
        e.occurred_at = e.received_at;
        h.state.expire(e.received_at + late);
        forwarded += h.send(e).inbound().len();
    }
    assert_eq!(forwarded, 2, "the burst only, as without the backlog");
}

#[test]
fn without_a_rate_limit_nothing_is_held_back_or_stored() {
    let mut h = Harness::new(
        Settings {
            rate_limit: None,
            ..Settings::default()
        },
        gate(vec![], vec![]),
    );
    for n in 1..30 {
        let mut e = msg(n, "spam");
        e.received_at = T0;
        assert_eq!(h.send(e).inbound().len(), 1, "message {n}");
    }
    assert!(h.state.get(&rate_key(CONV)).is_none());
}

#[test]
fn the_default_limit_lets_a_fast_typist_through() {
    // Ten messages in ten seconds, then one every six: all forwarded.
    let mut h = Harness::default();
    for n in 1..=10 {
        assert_eq!(h.send(msg(n, "typing fast")).inbound().len(), 1, "{n}");
    }
    for n in 11..=30u32 {
        let mut e = msg(n, "steady");
        e.received_at = T0 + 60_000 + i64::from(n) * 6_000;
        assert_eq!(h.send(e).inbound().len(), 1, "{n}");
    }
}

#[test]
fn a_possible_revocation_is_never_held_back_and_held_media_stay_back() {
    let mut h = limited(1, Duration::from_secs(600), 1);
    assert_eq!(h.send(msg(1, "hello")).inbound().len(), 1);
    // Over the limit, but it may revoke consent: forwarded, flagged, audited.
    let out = h.send(msg(2, "I want you to stop texting me about the sale"));
    assert_eq!(out.inbound().len(), 1);
    assert!(out.inbound()[0].possible_revocation);
    assert_eq!(out.kinds(), vec![ComplianceEventKind::PossibleRevocation]);
    // An image over the limit: held back, and so are its stored copies.
    let mut image = msg(3, "look");
    image.message.as_mut().unwrap().media = vec![si_schemas::records::MediaRef {
        sid: None,
        url: Some("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/IM3/Media/ME1".into()),
        content_type: Some("image/png".into()),
        size_bytes: None,
        filename: None,
    }];
    let out = h.send(image);
    assert!(out.inbound().is_empty());
    assert_eq!(out.kinds(), vec![ComplianceEventKind::BlockedInbound]);
    let out = h.send(media_stored(3, "IM3", None));
    assert!(out.inbound().is_empty(), "held back with its message");
    let out = h.send(media_stored(1, "IM1", None));
    assert_eq!(
        out.inbound().len(),
        1,
        "a forwarded message's media follow it"
    );
    assert_eq!(out.inbound()[0].purpose, InboundPurpose::MediaStored);
}
