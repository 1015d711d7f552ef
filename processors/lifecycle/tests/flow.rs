//! Against the real broker and registry: the `si-lifecycle` binary with short
//! timers, the echo responder standing in for cognition, and the test playing
//! egress (a delivery status for the closing message).
//!
//! - A quiet conversation gets exactly one warning, then the closing message
//!   with the echo responder's summary, a `CLOSE_CONVERSATION` operation and
//!   one archival request; its state is gone afterwards.
//! - A reply between the warning and the closure cancels the closure.
//! - The user's next message after the closure, in a new conversation, gets
//!   the welcome-back.
//! - With the responder silent, the closure still happens on time with the
//!   catalog's text, and without a delivery status the closing grace ends it.
//!
//! ```sh
//! cargo build -p si-lifecycle -p si-echo-responder --bins
//! eval "$(dev/stack env)"; cargo test -p si-lifecycle --test flow -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rdkafka::Message;
use si_catalog::{Catalog, keys};
use si_schemas::AvroRecord;
use si_schemas::records::{
    ArchivalReason, ArchivalRequest, Channel, CognitionResponse, ConversationEvent,
    ConversationEventType, DeliveryOutcome, DeliveryStatus, EventSource, InboundMessage,
    InboundPurpose, LocaleSource, MessageReceived, OperationKind, OutboundOperation, Participant,
    ResponsePurpose,
};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::StageProcess;

const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";
const WARN_MS: i64 = 3_000;
const CLOSE_MS: i64 = 6_000;
const SUMMARY_MS: i64 = 2_000;
const GRACE_MS: i64 = 3_000;
const SUMMARY: &str = "Summary from the echo responder: you asked about the weather.";
const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn message(conv: &str, n: u32) -> ConversationEvent {
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
        locale: "en".into(),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: Some("AC1".into()),
        webhook_id: format!("wh-{conv}-{n}"),
        dedup_key: format!("tok-{conv}-{n}"),
        message: Some(MessageReceived {
            message_sid: format!("IM{conv}{n}"),
            index: Some(i64::from(n)),
            author: Some(USER.into()),
            body: Some("What's the weather?".into()),
            media: Vec::new(),
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("{conv}-ev-{n}"),
            conv,
            &format!("session-{conv}"),
            ConversationEventType::MessageReceived,
            now_ms(),
        )
    }
}

fn spawn_lifecycle(env: &TestEnv) -> anyhow::Result<StageProcess> {
    StageProcess::spawn(
        env,
        "si-lifecycle",
        "lifecycle-0",
        &[
            ("LIFECYCLE_WARN_AFTER", "3s"),
            ("LIFECYCLE_CLOSE_AFTER", "6s"),
            ("LIFECYCLE_SUMMARY_TIMEOUT", "2s"),
            ("LIFECYCLE_CLOSING_GRACE", "3s"),
            ("LIFECYCLE_STATE_TTL", "1h"),
            ("TIMER_INTERVAL", "100ms"),
        ],
    )
}

/// Reads `topic` (committed records, from the beginning) until `stop` matches
/// a record; returns every record of key `key` up to and including it.
async fn records_until<T: AvroRecord>(
    env: &TestEnv,
    topic: &str,
    key: &str,
    mut stop: impl FnMut(&T) -> bool,
) -> anyhow::Result<Vec<T>> {
    let consumer = env.consumer(topic).await?;
    let until = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            bail!(
                "no matching record on {topic} within {DEADLINE:?}; {} of key {key}",
                out.len()
            );
        };
        let message = message?;
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        let record: T = env.codec.decode(payload).await?;
        let done = stop(&record);
        out.push(record);
        if done {
            return Ok(out);
        }
    }
}

fn is_warning(r: &CognitionResponse) -> bool {
    r.response_id.starts_with("lifecycle-warning-")
}

fn is_closing(r: &CognitionResponse) -> bool {
    r.response_id.starts_with("lifecycle-closing-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_conversations_are_warned_once_and_closed_with_the_summary_unless_the_user_replies()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut lifecycle = spawn_lifecycle(&env)?;
    let mut echo = StageProcess::spawn(
        &env,
        "si-echo-responder",
        "echo-0",
        &[("ECHO_SUMMARY", SUMMARY)],
    )?;
    lifecycle.ready(DEADLINE).await?;
    echo.ready(DEADLINE).await?;

    let quiet = "CH00000000000000000000000000000a01";
    let replying = "CH00000000000000000000000000000b02";
    let opened = now_ms();
    env.produce(topics::CONVERSATION_EVENTS, quiet, &message(quiet, 1))
        .await?;
    env.produce(topics::CONVERSATION_EVENTS, replying, &message(replying, 1))
        .await?;

    // The replying user answers the warning.
    let warned =
        records_until::<CognitionResponse>(&env, topics::RESPONSES, replying, is_warning).await?;
    assert_eq!(warned.iter().filter(|r| is_warning(r)).count(), 1);
    let replied = now_ms();
    env.produce(topics::CONVERSATION_EVENTS, replying, &message(replying, 2))
        .await?;

    // The quiet one: one warning, then the closing message with the summary.
    let responses =
        records_until::<CognitionResponse>(&env, topics::RESPONSES, quiet, is_closing).await?;
    let warnings: Vec<_> = responses.iter().filter(|r| is_warning(r)).collect();
    assert_eq!(warnings.len(), 1, "{responses:#?}");
    assert!(warnings[0].created_at >= opened + WARN_MS, "warned early");
    assert_eq!(warnings[0].purpose, ResponsePurpose::Reply);
    let closing = responses.last().unwrap();
    let closing_text = Catalog::builtin().text(keys::CLOSING, "en").text;
    assert_eq!(closing.text, format!("{SUMMARY}\n\n{closing_text}"));
    assert!(closing.created_at >= opened + CLOSE_MS, "closed early");
    let request = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| {
            m.conversation_id == quiet && m.purpose == InboundPurpose::SummaryRequest
        })
        .await?;
    assert_eq!(request.session_id, format!("session-{quiet}"));

    // Egress reports the closing message: lifecycle closes at Twilio and archives.
    let status = DeliveryStatus {
        operation_id: format!("{}-0", closing.response_id),
        conversation_id: quiet.into(),
        outcome: DeliveryOutcome::Accepted,
        twilio_sid: Some("IM900".into()),
        segments: Some(1),
        error_code: None,
        error_message: None,
        attempts: 1,
        response_id: Some(closing.response_id.clone()),
        part_index: Some(0),
        part_count: None,
        kind: None,
        body: None,
        resend_of: None,
        remediation: None,
        at: now_ms(),
        scheduled_at: None,
        compliance_event_id: None,
    };
    env.produce(topics::DELIVERY, quiet, &status).await?;
    let sender = format!("sms:{OURS}");
    let close = env
        .find::<OutboundOperation>(topics::OUTBOUND, DEADLINE, |op| {
            op.conversation_id == quiet && op.kind == OperationKind::CloseConversation
        })
        .await?;
    assert_eq!(close.sender_key, sender);
    let archived = env
        .find::<ArchivalRequest>(topics::ARCHIVAL, DEADLINE, |a| a.conversation_id == quiet)
        .await?;
    assert_eq!(archived.reason, ArchivalReason::Inactivity);
    assert_eq!(archived.summary.as_deref(), Some(SUMMARY));
    assert_eq!(archived.opened_at.map(|t| t >= opened), Some(true));

    // The replying conversation's second warning (a later timer of the same
    // instance, past the quiet one's closure) is out.
    let after_reply = records_until::<CognitionResponse>(&env, topics::RESPONSES, replying, |r| {
        is_warning(r) && r.created_at > warned[0].created_at
    })
    .await?;
    // Exactly one archival request: a marker produced now is read after
    // everything lifecycle committed before.
    let marker = ArchivalRequest {
        request_id: "marker".into(),
        ..archived.clone()
    };
    env.produce(topics::ARCHIVAL, quiet, &marker).await?;
    let archival = records_until::<ArchivalRequest>(&env, topics::ARCHIVAL, quiet, |a| {
        a.request_id == "marker"
    })
    .await?;
    assert_eq!(
        archival.len(),
        2,
        "one archival request, then the marker: {archival:#?}"
    );

    // The reply cancelled the closure: a new idle period with its own warning,
    // and no summary request before the new idle period's end.
    assert!(
        !after_reply.iter().any(is_closing),
        "the replying conversation was closed: {after_reply:#?}"
    );
    let inbound_marker = InboundMessage {
        message_id: "marker".into(),
        conversation_id: replying.into(),
        purpose: InboundPurpose::UserMessage,
        ..request.clone()
    };
    env.produce(topics::INBOUND, replying, &inbound_marker)
        .await?;
    let to_cognition = records_until::<InboundMessage>(&env, topics::INBOUND, replying, |m| {
        m.message_id == "marker"
    })
    .await?;
    let early: Vec<_> = to_cognition
        .iter()
        .filter(|m| m.purpose == InboundPurpose::SummaryRequest)
        .filter(|m| m.received_at < replied + CLOSE_MS)
        .collect();
    assert!(
        early.is_empty(),
        "the conversation that replied was closed as if it had not: {early:#?}"
    );

    // The user writes again: Twilio opens a new conversation; lifecycle
    // greets the user back (once) instead of treating it as a first contact.
    let again = "CH00000000000000000000000000000a05";
    env.produce(topics::CONVERSATION_EVENTS, again, &message(again, 1))
        .await?;
    let welcomed = records_until::<CognitionResponse>(&env, topics::RESPONSES, again, |r| {
        r.response_id.starts_with("lifecycle-welcome-back-")
    })
    .await?;
    assert_eq!(
        welcomed.last().unwrap().text,
        Catalog::builtin().text(keys::WELCOME_BACK, "en").text
    );
    assert_eq!(
        welcomed.last().unwrap().session_id,
        format!("session-{again}")
    );

    lifecycle.terminate(Duration::from_secs(30))?;
    echo.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_responder_delays_the_closure_by_the_summary_timeout_only() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut lifecycle = spawn_lifecycle(&env)?;
    lifecycle.ready(DEADLINE).await?;
    let conv = "CH00000000000000000000000000000c03";
    let opened = now_ms();
    env.produce(topics::CONVERSATION_EVENTS, conv, &message(conv, 1))
        .await?;

    let responses =
        records_until::<CognitionResponse>(&env, topics::RESPONSES, conv, is_closing).await?;
    let closing = responses.last().unwrap();
    assert_eq!(
        closing.text,
        Catalog::builtin().text(keys::CLOSING, "en").text,
        "the catalog text alone"
    );
    let due = opened + CLOSE_MS + SUMMARY_MS;
    assert!(
        closing.created_at >= due,
        "closed before the summary timeout"
    );
    assert!(
        closing.created_at < due + 5_000,
        "closed {} ms after the summary timeout",
        closing.created_at - due
    );
    // No delivery status comes (no egress here): the closing grace ends it.
    let archived = env
        .find::<ArchivalRequest>(topics::ARCHIVAL, DEADLINE, |a| a.conversation_id == conv)
        .await?;
    assert!(archived.closed_at >= closing.created_at + GRACE_MS);
    assert_eq!(archived.summary, None);
    lifecycle.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sictl_command_close_closes_at_once_with_the_given_summary() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut lifecycle = spawn_lifecycle(&env)?;
    lifecycle.ready(DEADLINE).await?;
    let conv = "CH00000000000000000000000000000d04";
    let opened = now_ms();
    env.produce(topics::CONVERSATION_EVENTS, conv, &message(conv, 1))
        .await?;
    // Once lifecycle holds the conversation (its warning is out), close it by hand.
    records_until::<CognitionResponse>(&env, topics::RESPONSES, conv, is_warning).await?;
    let sictl = si_testkit::process::stage_binary("sictl")?;
    let output = std::process::Command::new(sictl)
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .args([
            "command",
            "close",
            "--conversation",
            conv,
            "--reason",
            "USER_REQUEST",
            "--summary",
            "You booked Tuesday at 10.",
        ])
        .output()?;
    assert!(
        output.status.success(),
        "sictl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let responses =
        records_until::<CognitionResponse>(&env, topics::RESPONSES, conv, is_closing).await?;
    let closing = responses.last().unwrap();
    assert!(closing.text.starts_with("You booked Tuesday at 10.\n\n"));
    assert!(
        closing.created_at < opened + CLOSE_MS,
        "closed on command, not by inactivity"
    );
    let archived = env
        .find::<ArchivalRequest>(topics::ARCHIVAL, DEADLINE, |a| a.conversation_id == conv)
        .await?;
    assert_eq!(archived.reason, ArchivalReason::UserRequest);
    assert_eq!(
        archived.summary.as_deref(),
        Some("You booked Tuesday at 10.")
    );
    lifecycle.terminate(Duration::from_secs(30))?;
    Ok(())
}
