//! A conversation's whole life on the real broker with every stage running
//! (ingress, normalize, consent, the echo responder, segment, egress,
//! lifecycle with second-long timers) and the Twilio sandbox: the user texts,
//! goes quiet, receives exactly one inactivity warning, then the closing
//! message with the echo responder's summary; one archival request is
//! written; the user's next text opens a new conversation with a new session
//! and is greeted back.
//!
//! Si starting conversations (`START_CONVERSATION`): in messaging mode an
//! opted-out user gets nothing (a BLOCKED status and a compliance event say
//! why) while an opted-in one gets the opening text and their reply joins
//! the started conversation and its session; in Conversations mode the
//! conversation is created, the participant added and the opening sent, in
//! that order, all naming the conversation by its UniqueName.
//!
//! A call scheduled past the idle time (with voice-link running): no
//! warning and no closure before it, which is placed at its time; the
//! closure after it is on the events topic (Programmable Messaging has no
//! Twilio state to report it), and a call asked for then is refused; a
//! closure before a scheduled call's time cancels it.

use std::time::Duration;

use si_catalog::{Catalog, keys};
use std::collections::BTreeMap;

use si_schemas::records::{
    ArchivalReason, ArchivalRequest, Channel, Command, CommandKind, ComplianceEvent,
    ComplianceEventKind, ComplianceSource, ConsentState, ConsentStatus, ConversationEvent,
    ConversationState, DeliveryOutcome, DeliveryStatus, InboundMessage, LifecycleState,
    VoiceLinkState,
};
use si_schemas::topics;
use si_testkit::{StageProcess, TestEnv, free_port, wait_for};
use twilio_sandbox::{RequestRecord, Sandbox, SandboxConfig, SandboxHandle};

const USER: &str = "+14155550124";
const SI_NUMBER: &str = "+14155550100";
const TOKEN: &str = "lifecycle-test-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);
const SUMMARY: &str = "Summary from the echo responder: we said hello.";

/// The texts the sandbox accepted for the user, in order.
fn sent_to_user(sandbox: &SandboxHandle) -> Vec<String> {
    texts_to(sandbox, USER)
        .into_iter()
        .map(|(_, body)| body)
        .collect()
}

async fn say(sandbox: &SandboxHandle, body: &str) -> anyhow::Result<()> {
    say_as(sandbox, USER, body).await
}

/// Waits until the user has received a text containing `text`; returns every
/// text received so far.
async fn received(sandbox: &SandboxHandle, text: &str) -> anyhow::Result<Vec<String>> {
    wait_for(&format!("a text containing {text:?}"), DEADLINE, || async {
        let sent = sent_to_user(sandbox);
        Ok(sent.iter().any(|b| b.contains(text)).then_some(sent))
    })
    .await
}

/// Every stage of the loop with lifecycle on second-long timers (and
/// voice-link, when asked), against the sandbox.
async fn start_loop(
    voice_link: bool,
) -> anyhow::Result<(TestEnv, SandboxHandle, Vec<StageProcess>)> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        ..SandboxConfig::default()
    })
    .await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let mut stages = vec![
        (
            "si-ingress",
            vec![
                ("LISTEN_ADDR", listen.as_str()),
                ("PUBLIC_BASE_URL", ingress_url.as_str()),
            ],
        ),
        (
            "si-normalize",
            vec![("VISITOR_ID_SECRET", "lifecycle-secret")],
        ),
        ("si-consent", vec![]),
        ("si-echo-responder", vec![("ECHO_SUMMARY", SUMMARY)]),
        ("si-segment", vec![]),
        ("si-egress", vec![]),
        (
            "si-lifecycle",
            vec![
                ("LIFECYCLE_WARN_AFTER", "4s"),
                ("LIFECYCLE_CLOSE_AFTER", "8s"),
                ("LIFECYCLE_SUMMARY_TIMEOUT", "5s"),
                ("LIFECYCLE_CLOSING_GRACE", "10s"),
                ("TIMER_INTERVAL", "100ms"),
            ],
        ),
    ];
    if voice_link {
        stages.push((
            "si-voice-link",
            vec![
                ("PUBLIC_BASE_URL", ingress_url.as_str()),
                ("VOICE_QUIET_HOURS", "off"),
                ("TIMER_INTERVAL", "100ms"),
            ],
        ));
    }
    let stages = spawn_all(&env, &sandbox, stages).await?;
    Ok((env, sandbox, stages))
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_warned_closed_with_a_summary_archived_and_welcomed_back() -> anyhow::Result<()> {
    let (env, sandbox, mut stages) = start_loop(false).await?;
    let catalog = Catalog::builtin();
    let warning_start = "Are you still there?";
    let closing = catalog.text(keys::CLOSING, "en").text;

    // A text, its echo; then quiet.
    say(&sandbox, "Hello Si").await?;
    received(&sandbox, "Echo: Hello Si").await?;
    let first = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Hello Si")
        .await?;

    // One warning, then the closing message with the summary, at Twilio.
    let sent = received(&sandbox, closing).await?;
    let warnings = sent.iter().filter(|b| b.starts_with(warning_start)).count();
    assert_eq!(
        warnings, 1,
        "exactly one warning before the closure: {sent:#?}"
    );
    let last = sent.last().map(String::as_str).unwrap_or_default();
    assert_eq!(last, format!("{SUMMARY}\n\n{closing}"), "{sent:#?}");

    // One archival request for the conversation.
    let archived = env
        .find::<ArchivalRequest>(topics::ARCHIVAL, DEADLINE, |a| {
            a.conversation_id == first.conversation_id
        })
        .await?;
    assert_eq!(archived.reason, ArchivalReason::Inactivity);
    assert_eq!(archived.session_id, first.session_id);
    assert_eq!(archived.summary.as_deref(), Some(SUMMARY));
    // It names the compliance events about the conversation (the first
    // contact's opt-in), which are on si.compliance.v1.
    let first_id = archived
        .compliance_event_ids
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no compliance event named: {archived:#?}"))?;
    let named = env
        .find::<ComplianceEvent>(topics::COMPLIANCE, DEADLINE, |e| e.event_id == first_id)
        .await?;
    assert_eq!(
        named.conversation_id.as_deref(),
        Some(first.conversation_id.as_str())
    );

    // The user comes back: a new conversation and session, greeted back.
    say(&sandbox, "I'm back").await?;
    let sent = received(&sandbox, "Echo: I'm back").await?;
    let again = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "I'm back")
        .await?;
    assert_ne!(again.conversation_id, first.conversation_id);
    assert_ne!(again.session_id, first.session_id);
    assert!(!again.first_contact, "consent remembers the user");
    let welcome_back = catalog.text(keys::WELCOME_BACK, "en").text;
    let sent = if sent.iter().any(|b| b == welcome_back) {
        sent
    } else {
        received(&sandbox, welcome_back).await?
    };
    assert_eq!(
        sent.iter().filter(|b| *b == welcome_back).count(),
        1,
        "{sent:#?}"
    );
    let welcome = catalog.text(keys::WELCOME, "en").text;
    assert_eq!(
        sent.iter().filter(|b| *b == welcome).count(),
        1,
        "the first-contact welcome only once: {sent:#?}"
    );

    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}

const OPTED_OUT: &str = "+14155550125";

fn start(command_id: &str, conversation: &str, to: &str, text: &str) -> Command {
    Command {
        session_id: Some(format!("session-{conversation}")),
        address: Some(to.into()),
        channel: Some(Channel::Sms),
        params: BTreeMap::from([("text".to_owned(), text.to_owned())]),
        ..Command::new(
            CommandKind::StartConversation,
            command_id,
            conversation,
            "e2e",
            0,
        )
    }
}

/// Spawns `stages` (binary, extra variables) against `env` and the sandbox,
/// and waits until every one is ready.
async fn spawn_all(
    env: &TestEnv,
    sandbox: &SandboxHandle,
    stages: Vec<(&str, Vec<(&str, &str)>)>,
) -> anyhow::Result<Vec<StageProcess>> {
    let base = sandbox.base_url();
    let common = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
        ("TWILIO_API_BASE_URL", base.as_str()),
        ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
    ];
    si_testkit::spawn_ready(env, "lifecycle-0", &common, stages, DEADLINE).await
}

#[tokio::test(flavor = "multi_thread")]
async fn si_starts_a_conversation_only_with_a_user_who_may_be_reached() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        ..SandboxConfig::default()
    })
    .await?;
    // The second user opted out earlier.
    let stop = ConsentState {
        address: OPTED_OUT.into(),
        channel: Channel::Sms,
        sender_scope: "*".into(),
        status: ConsentStatus::OptedOut,
        source: ComplianceSource::Keyword,
        decided_at: 1,
        updated_at: 1,
        keyword: Some("STOP".into()),
        event_ref: None,
    };
    env.produce(topics::CONSENT, &stop.key(), &stop).await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let mut stages = spawn_all(
        &env,
        &sandbox,
        vec![
            (
                "si-ingress",
                vec![
                    ("LISTEN_ADDR", listen.as_str()),
                    ("PUBLIC_BASE_URL", ingress_url.as_str()),
                ],
            ),
            ("si-normalize", vec![("VISITOR_ID_SECRET", "start-secret")]),
            ("si-consent", vec![]),
            ("si-echo-responder", vec![]),
            ("si-segment", vec![]),
            ("si-egress", vec![]),
            (
                "si-lifecycle",
                vec![
                    ("LIFECYCLE_START_FROM", SI_NUMBER),
                    ("TIMER_INTERVAL", "100ms"),
                ],
            ),
        ],
    )
    .await?;

    let refused = start("cmd-out", "outreach-out", OPTED_OUT, "Your order shipped.");
    env.produce(topics::COMMANDS, &refused.conversation_id, &refused)
        .await?;
    let opening = "Hi, this is Si: your order shipped. Any questions?";
    let started = start("cmd-in", "outreach-in", USER, opening);
    env.produce(topics::COMMANDS, &started.conversation_id, &started)
        .await?;

    // The refusal: a status for the issuer and the audit record, nothing sent.
    let status = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "lifecycle-start-cmd-out"
        })
        .await?;
    assert_eq!(status.outcome, DeliveryOutcome::Blocked, "{status:#?}");
    let audit = env
        .find::<ComplianceEvent>(topics::COMPLIANCE, DEADLINE, |e| {
            e.message_ref.as_deref() == Some("cmd-out")
        })
        .await?;
    assert_eq!(audit.kind, ComplianceEventKind::BlockedOutbound);
    assert_eq!(audit.address, OPTED_OUT);

    // The start: the opening reaches the user from our number.
    let sent = received(&sandbox, opening).await?;
    assert_eq!(sent, [opening], "the opening first and alone");
    let status = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "lifecycle-start-cmd-in"
        })
        .await?;
    assert_eq!(status.outcome, DeliveryOutcome::Accepted);

    // The user's reply joins the started conversation and its session.
    say(&sandbox, "Where is it now?").await?;
    received(&sandbox, "Echo: Where is it now?").await?;
    let reply = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Where is it now?")
        .await?;
    assert_eq!(reply.conversation_id, "outreach-in");
    assert_eq!(reply.session_id, "session-outreach-in");

    let to_opted_out = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.params.get("To").map(String::as_str) == Some(OPTED_OUT))
        .count();
    assert_eq!(to_opted_out, 0, "nothing reached the opted-out user");

    // normalize tags each user's message with the consent in force: the
    // opted-out user writing is on the record as opted out.
    say_as(&sandbox, OPTED_OUT, "Hello?").await?;
    let written = env
        .find::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, |e| {
            e.message
                .as_ref()
                .is_some_and(|m| m.body.as_deref() == Some("Hello?"))
        })
        .await?;
    assert_eq!(
        written.compliance.map(|c| c.consent_status),
        Some(ConsentStatus::OptedOut)
    );
    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn in_conversations_mode_a_start_creates_adds_and_sends_in_that_order() -> anyhow::Result<()>
{
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        ..SandboxConfig::default()
    })
    .await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let mut stages = spawn_all(
        &env,
        &sandbox,
        vec![
            (
                "si-ingress",
                vec![
                    ("LISTEN_ADDR", listen.as_str()),
                    ("PUBLIC_BASE_URL", ingress_url.as_str()),
                ],
            ),
            ("si-normalize", vec![("VISITOR_ID_SECRET", "start-secret")]),
            ("si-consent", vec![]),
            ("si-segment", vec![]),
            ("si-egress", vec![]),
            (
                "si-lifecycle",
                vec![
                    ("LIFECYCLE_START_MODE", "conversations"),
                    ("LIFECYCLE_START_FROM", SI_NUMBER),
                ],
            ),
        ],
    )
    .await?;
    let opening = "Hi, this is Si. Your appointment is tomorrow at 10.";
    let command = start("cmd-conv", "outreach-conv", USER, opening);
    env.produce(topics::COMMANDS, &command.conversation_id, &command)
        .await?;
    let requests = wait_for("the opening at Twilio", DEADLINE, || async {
        let requests: Vec<RequestRecord> = sandbox
            .requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect();
        Ok(requests
            .iter()
            .any(|r| r.path.ends_with("/Messages"))
            .then_some(requests))
    })
    .await?;
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/Conversations",
            "/v1/Conversations/outreach-conv/Participants",
            "/v1/Conversations/outreach-conv/Messages",
        ],
        "{requests:#?}"
    );
    assert_eq!(
        requests[0].params.get("UniqueName").map(String::as_str),
        Some("outreach-conv")
    );
    assert_eq!(
        requests[1]
            .params
            .get("MessagingBinding.Address")
            .map(String::as_str),
        Some(USER)
    );
    assert_eq!(
        requests[1]
            .params
            .get("MessagingBinding.ProxyAddress")
            .map(String::as_str),
        Some(SI_NUMBER)
    );
    assert_eq!(
        requests[2].params.get("Body").map(String::as_str),
        Some(opening)
    );
    // Each one as Twilio's OpenAPI description allows.
    let oai = si_testkit::openapi::TwilioOpenApi::load()?;
    for request in &requests {
        oai.check_post(&request.path, &request.all_params, &[])
            .map_err(|violations| anyhow::anyhow!("{violations:#?}"))?;
    }

    // The user answers; Twilio reports it under the ConversationSid it
    // created, and the message is filed under the started id and session.
    let created = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "lifecycle-create-cmd-conv"
        })
        .await?;
    let sid = created.twilio_sid.clone().unwrap_or_default();
    assert!(sid.starts_with("CH"), "{created:#?}");
    let posted = sandbox
        .post_inbound_conversation_message(&twilio_sandbox::InboundConversationMessage {
            conversation_sid: sid,
            author: USER.into(),
            body: "See you then".into(),
            ..twilio_sandbox::InboundConversationMessage::default()
        })
        .await?;
    assert_eq!(posted.status, 200);
    let reply = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "See you then")
        .await?;
    assert_eq!(reply.conversation_id, "outreach-conv");
    assert_eq!(reply.session_id, "session-outreach-conv");
    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}

/// `user` texts Si.
async fn say_as(sandbox: &SandboxHandle, user: &str, body: &str) -> anyhow::Result<()> {
    sandbox.text(user, SI_NUMBER, body).await
}

/// The texts the sandbox accepted for `user`: when, and what.
fn texts_to(sandbox: &SandboxHandle, user: &str) -> Vec<(i64, String)> {
    sandbox
        .messages_to(user)
        .into_iter()
        .filter_map(|r| Some((r.at_ms, r.params.get("Body")?.clone())))
        .collect()
}

fn voice_command(
    kind: CommandKind,
    id: &str,
    conversation: &str,
    params: &[(&str, String)],
) -> Command {
    Command {
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..Command::new(kind, id, conversation, "e2e", 0)
    }
}

/// Waits until voice-link and lifecycle have read the conversation's first
/// event (their states hold it): the commands that follow come on another
/// topic, read in no guaranteed order with the events.
async fn known_to_voice_link_and_lifecycle(
    env: &TestEnv,
    conversation: &str,
) -> anyhow::Result<()> {
    env.find::<VoiceLinkState>(topics::VOICE_LINK_STATE, DEADLINE, |s| {
        s.conversation_id == conversation
    })
    .await?;
    env.find::<LifecycleState>(topics::LIFECYCLE_STATE, DEADLINE, |s| {
        s.conversation_id == conversation
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_call_keeps_its_conversation_open_and_a_closure_cancels_one()
-> anyhow::Result<()> {
    const WAITING: &str = "+14155550126";
    const CLOSING: &str = "+14155550127";
    let (env, sandbox, mut stages) = start_loop(true).await?;
    let catalog = Catalog::builtin();
    let warning_start = "Are you still there?";
    let closing = catalog.text(keys::CLOSING, "en").text;
    let conversation_of = |text: &'static str| {
        let env = &env;
        async move {
            env.find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == text)
                .await
                .map(|m| m.conversation_id)
        }
    };

    // A call 12 s ahead, past the idle time before closure (8 s).
    say_as(&sandbox, WAITING, "Call me in a bit").await?;
    let waiting = conversation_of("Call me in a bit").await?;
    known_to_voice_link_and_lifecycle(&env, &waiting).await?;
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(12);
    let escalate = voice_command(
        CommandKind::EscalateToVoice,
        "esc-waiting",
        &waiting,
        &[("at", due.to_string())],
    );
    env.produce(topics::COMMANDS, &waiting, &escalate).await?;
    let answer = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "voice-command-esc-waiting"
        })
        .await?;
    assert_eq!(answer.scheduled_at, Some(due.as_millisecond()));
    let call = wait_for("the scheduled call", DEADLINE, || async {
        Ok(sandbox.calls().into_iter().find(|c| c.to == WAITING))
    })
    .await?;
    assert!(
        call.created_ms >= due.as_millisecond(),
        "placed before its time"
    );
    let before: Vec<_> = texts_to(&sandbox, WAITING)
        .into_iter()
        .filter(|(at, body)| {
            *at < call.created_ms && (body.starts_with(warning_start) || body.contains(closing))
        })
        .collect();
    assert!(
        before.is_empty(),
        "warned or closed before the call: {before:#?}"
    );
    // After the call, the idle period runs as ever: warned, then closed.
    sandbox.hang_up(&call.sid)?;
    wait_for("the closing message after the call", DEADLINE, || async {
        Ok(texts_to(&sandbox, WAITING)
            .iter()
            .any(|(_, b)| b.contains(closing))
            .then_some(()))
    })
    .await?;
    // No Twilio state reports a Programmable Messaging closure: lifecycle's
    // event does, and voice-link then refuses a call.
    let of_waiting = waiting.as_str();
    let state_event = |state: ConversationState| {
        env.find::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, move |e| {
            e.conversation_id == of_waiting
                && e.state_change.as_ref().is_some_and(|s| s.state_to == state)
        })
    };
    let opened = state_event(ConversationState::Active).await?;
    assert!(
        opened.event_id.starts_with("lifecycle-opened-"),
        "{opened:#?}"
    );
    let ended = state_event(ConversationState::Closed).await?;
    assert!(
        ended.event_id.starts_with("lifecycle-closed-"),
        "{ended:#?}"
    );
    let asked = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Call me in a bit")
        .await?;
    assert_eq!(ended.session_id, asked.session_id);
    // voice-link has read it (its state says so) before the command comes:
    // the two are on different topics, read in no guaranteed order.
    env.find::<VoiceLinkState>(topics::VOICE_LINK_STATE, DEADLINE, |s| {
        s.conversation_id == waiting && s.closed_at.is_some()
    })
    .await?;
    let again = voice_command(CommandKind::EscalateToVoice, "esc-after", &waiting, &[]);
    env.produce(topics::COMMANDS, &waiting, &again).await?;
    let refused = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "voice-command-esc-after"
        })
        .await?;
    assert_eq!(refused.outcome, DeliveryOutcome::Failed);
    assert_eq!(
        refused.error_message.as_deref(),
        Some("the conversation is closed")
    );
    assert_eq!(
        sandbox.calls().iter().filter(|c| c.to == WAITING).count(),
        1,
        "no call after the closure"
    );

    // Closed before its scheduled call's time: the call is cancelled.
    say_as(&sandbox, CLOSING, "Call me later").await?;
    let closed = conversation_of("Call me later").await?;
    known_to_voice_link_and_lifecycle(&env, &closed).await?;
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    let escalate = voice_command(
        CommandKind::EscalateToVoice,
        "esc-closing",
        &closed,
        &[("at", later.to_string())],
    );
    env.produce(topics::COMMANDS, &closed, &escalate).await?;
    env.find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
        d.operation_id == "voice-command-esc-closing"
    })
    .await?;
    let close = voice_command(
        CommandKind::CloseConversation,
        "close-closing",
        &closed,
        &[("summary", "Done.".to_owned())],
    );
    env.produce(topics::COMMANDS, &closed, &close).await?;
    let off = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |d| {
            d.operation_id == "voice-scheduled-esc-closing"
        })
        .await?;
    assert_eq!(off.outcome, DeliveryOutcome::Failed);
    assert_eq!(off.scheduled_at, Some(later.as_millisecond()));
    env.find::<ArchivalRequest>(topics::ARCHIVAL, DEADLINE, |a| a.conversation_id == closed)
        .await?;

    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}
