//! Voice linkage on the real broker with every stage running (ingress,
//! normalize, consent, the echo responder, segment, egress, voice-link) and
//! the Twilio sandbox playing the calls as Twilio would:
//!
//! - a user texts, Si escalates to a call, the user accepts the recording,
//!   says something, the call ends: `si.transcript.v1` holds, in order and in
//!   one conversation, the text, Si's reply, the call start, the utterance,
//!   the call end and the recording; `si.compliance.v1` holds disclosed and
//!   accepted; the call's `completed` event says the disclosure was played;
//! - a "no" (keypad 2) and silence: nothing recorded or transcribed (no such
//!   verb in the TwiML the call got), a declined compliance event, and a text
//!   saying the conversation continues by text;
//! - a call scheduled 5 s ahead is placed once, not before its time, also
//!   when voice-link is killed with SIGKILL in between;
//! - a user who is texting calls Si: every event of the call carries the
//!   text conversation's id and session, and the transcript has the call.

use std::collections::BTreeMap;
use std::time::Duration;

use si_catalog::{Catalog, keys};
use si_schemas::records::{
    CallState, Command, CommandKind, ComplianceEvent, ComplianceEventKind, ConversationEvent,
    ConversationEventType, Direction, InboundMessage, TranscriptEntry, TranscriptEntryKind,
    TranscriptSpeaker,
};
use si_schemas::topics;
use si_testkit::{StageProcess, TestEnv, free_port, spawn_ready, wait_for};
use twilio_sandbox::{
    CallRecord, GatherAnswer, InboundCall, InboundSms, Sandbox, SandboxConfig, SandboxHandle,
    Speaker,
};

const SI_NUMBER: &str = "+14155550100";
const TOKEN: &str = "voice-test-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);
const STREAM: &str = "wss://agent.example.com/voice";

struct Pipeline {
    env: TestEnv,
    sandbox: SandboxHandle,
    stages: Vec<StageProcess>,
    ingress_url: String,
}

impl Pipeline {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
        let sandbox = Sandbox::start(SandboxConfig {
            auth_token: TOKEN.into(),
            callback_url: Some(ingress_url.clone()),
            ..SandboxConfig::default()
        })
        .await?;
        let base = sandbox.base_url();
        let common = [
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
            ("TWILIO_API_BASE_URL", base.as_str()),
            ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
            ("PUBLIC_BASE_URL", ingress_url.as_str()),
        ];
        let listen = ingress_url.trim_start_matches("http://").to_owned();
        let stages = spawn_ready(
            &env,
            "voice-0",
            &common,
            vec![
                (
                    "si-ingress",
                    vec![
                        ("LISTEN_ADDR", listen.as_str()),
                        ("VOICE_STREAM_URL", STREAM),
                        ("GATHER_TIMEOUT_SECONDS", "2"),
                    ],
                ),
                ("si-normalize", vec![("VISITOR_ID_SECRET", "voice-secret")]),
                ("si-consent", vec![]),
                ("si-echo-responder", vec![]),
                ("si-segment", vec![]),
                ("si-egress", vec![]),
                ("si-voice-link", voice_link_vars()),
            ],
            DEADLINE,
        )
        .await?;
        Ok(Self {
            env,
            sandbox,
            stages,
            ingress_url,
        })
    }

    /// The user texts Si and gets the echo; returns the conversation and
    /// session ids.
    async fn text(&self, user: &str, body: &str) -> anyhow::Result<(String, String)> {
        let posted = self
            .sandbox
            .post_inbound_sms(&InboundSms {
                from: user.into(),
                to: SI_NUMBER.into(),
                body: body.into(),
                ..InboundSms::default()
            })
            .await?;
        anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
        self.received(user, &format!("Echo: {body}")).await?;
        let inbound = self
            .env
            .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == body)
            .await?;
        Ok((inbound.conversation_id, inbound.session_id))
    }

    async fn command(
        &self,
        conversation: &str,
        kind: CommandKind,
        id: &str,
        at: Option<String>,
    ) -> anyhow::Result<()> {
        let command = Command {
            params: at
                .map(|at| BTreeMap::from([("at".to_owned(), at)]))
                .unwrap_or_default(),
            ..Command::new(kind, id, conversation, "e2e", 0)
        };
        self.env
            .produce(topics::COMMANDS, conversation, &command)
            .await
    }

    /// Waits for the (first) call placed to `user`.
    async fn call_to(&self, user: &str) -> anyhow::Result<CallRecord> {
        wait_for(&format!("a call to {user}"), DEADLINE, || async {
            Ok(self.sandbox.calls().into_iter().find(|c| c.to == user))
        })
        .await
    }

    /// Waits until `user` has received a text containing `text`; returns
    /// every text the user received.
    async fn received(&self, user: &str, text: &str) -> anyhow::Result<Vec<String>> {
        wait_for(&format!("a text containing {text:?}"), DEADLINE, || async {
            let sent = sent_to(&self.sandbox, user);
            Ok(sent.iter().any(|b| b.contains(text)).then_some(sent))
        })
        .await
    }

    async fn compliance(
        &self,
        conversation: &str,
        count: usize,
    ) -> anyhow::Result<Vec<ComplianceEvent>> {
        self.env
            .collect::<ComplianceEvent>(
                topics::COMPLIANCE,
                DEADLINE,
                |c| {
                    c.conversation_id.as_deref() == Some(conversation)
                        && c.kind != ComplianceEventKind::OptIn
                },
                |kept| kept.len() >= count,
            )
            .await
    }
}

fn voice_link_vars() -> Vec<(&'static str, &'static str)> {
    vec![("VOICE_QUIET_HOURS", "off"), ("TIMER_INTERVAL", "100ms")]
}

/// The texts the sandbox accepted for `user`, in order.
fn sent_to(sandbox: &SandboxHandle, user: &str) -> Vec<String> {
    sandbox
        .messages_to(user)
        .into_iter()
        .filter_map(|r| r.params.get("Body").cloned())
        .collect()
}

/// Whether the TwiML the call executed has a `<name>` anywhere.
fn has_verb(call: &CallRecord, name: &str) -> bool {
    fn within(element: &twilio_sandbox::twiml::Element, name: &str) -> bool {
        element.name == name || element.children.iter().any(|c| within(c, name))
    }
    call.steps.iter().any(|s| within(&s.element, name))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_conversation_escalates_to_a_call_and_one_transcript_holds_both()
-> anyhow::Result<()> {
    const USER: &str = "+14155550131";
    let p = Pipeline::start().await?;
    let (conversation, session) = p.text(USER, "Can we talk on the phone?").await?;

    p.command(&conversation, CommandKind::EscalateToVoice, "esc-1", None)
        .await?;
    let calling = Catalog::builtin().text(keys::CALLING_NOW, "en").text;
    p.received(USER, calling).await?;
    let call = p.call_to(USER).await?;
    assert_eq!(call.from, SI_NUMBER, "from the conversation's number");
    let sid = call.sid.clone();
    p.sandbox
        .wait_for_call(&sid, DEADLINE, |c| c.gathering)
        .await?;
    p.sandbox.answer_gather(&sid, GatherAnswer::digits("1"))?;
    let connected = p
        .sandbox
        .wait_for_call(&sid, DEADLINE, |c| c.connected)
        .await?;
    let stream = connected.stream.as_ref().expect("connected to the agent");
    assert_eq!(stream.url, STREAM);
    assert!(has_verb(&connected, "Recording") && has_verb(&connected, "Transcription"));
    p.sandbox
        .say(&sid, Speaker::User, "I need to move my appointment")?;
    p.sandbox
        .wait_for_call(&sid, DEADLINE, |c| !c.utterances.is_empty())
        .await?;
    // Si ends the call on command: egress updates it to completed.
    p.command(&conversation, CommandKind::EndCall, "end-1", None)
        .await?;
    p.sandbox
        .wait_for_call(&sid, DEADLINE, CallRecord::ended)
        .await?;

    let transcript = p
        .env
        .collect::<TranscriptEntry>(
            topics::TRANSCRIPT,
            DEADLINE,
            |e| e.conversation_id == conversation,
            |kept| {
                [
                    TranscriptEntryKind::CallEnded,
                    TranscriptEntryKind::Recording,
                ]
                .iter()
                .all(|k| kept.iter().any(|e| e.entry_kind == Some(*k)))
            },
        )
        .await?;
    let position = |what: &str, found: &dyn Fn(&TranscriptEntry) -> bool| {
        transcript
            .iter()
            .position(found)
            .unwrap_or_else(|| panic!("no {what} in {transcript:#?}"))
    };
    let text = position("inbound text", &|e| {
        e.entry_kind == Some(TranscriptEntryKind::Message)
            && e.speaker == TranscriptSpeaker::User
            && e.text.as_deref() == Some("Can we talk on the phone?")
    });
    let reply = position("Si's reply", &|e| {
        e.speaker == TranscriptSpeaker::Si
            && e.text.as_deref() == Some("Echo: Can we talk on the phone?")
    });
    let start = position("call start", &|e| {
        e.entry_kind == Some(TranscriptEntryKind::CallStarted)
    });
    let utterance = position("utterance", &|e| {
        e.entry_kind == Some(TranscriptEntryKind::Utterance)
            && e.speaker == TranscriptSpeaker::User
            && e.text.as_deref() == Some("I need to move my appointment")
    });
    let end = position("call end", &|e| {
        e.entry_kind == Some(TranscriptEntryKind::CallEnded)
    });
    let recording = position("recording", &|e| {
        e.entry_kind == Some(TranscriptEntryKind::Recording)
    });
    assert!(
        text < reply && reply < start && start < utterance && utterance < end && start < recording,
        "order: {transcript:#?}"
    );
    assert_eq!(transcript[end].call_outcome.as_deref(), Some("connected"));
    assert_eq!(transcript[end].call_sid.as_deref(), Some(sid.as_str()));
    assert!(
        transcript.iter().all(|e| e.session_id == session),
        "one session"
    );
    let sequences: Vec<i64> = transcript.iter().map(|e| e.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {sequences:?}"
    );

    let records = p.compliance(&conversation, 2).await?;
    let kinds: Vec<ComplianceEventKind> = records.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ComplianceEventKind::RecordingDisclosed,
            ComplianceEventKind::RecordingAccepted
        ],
        "{records:#?}"
    );
    // The call's end, whose callback shows no disclosure itself, still says
    // the disclosure was played.
    let completed = |e: &ConversationEvent| {
        e.call
            .as_ref()
            .is_some_and(|c| c.call_sid == sid && c.status == CallState::Completed)
    };
    let ended = p
        .env
        .collect::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, completed, |kept| {
            !kept.is_empty()
        })
        .await?;
    assert_eq!(
        ended[0]
            .compliance
            .as_ref()
            .and_then(|c| c.recording_disclosed),
        Some(true),
        "{ended:#?}"
    );
    assert!(
        records
            .iter()
            .all(|c| c.message_ref.as_deref() == Some(sid.as_str()))
    );
    drop(p.stages);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_or_silent_disclosure_records_nothing_and_the_chat_continues_by_text()
-> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    let by_text = Catalog::builtin()
        .text(keys::CALL_CONTINUES_BY_TEXT, "en")
        .text;
    for (user, answer, said) in [
        ("+14155550132", GatherAnswer::digits("2"), "DECLINED"),
        ("+14155550133", GatherAnswer::silence(), "NO_INPUT"),
    ] {
        let (conversation, _) = p.text(user, &format!("hello from {user}")).await?;
        p.command(
            &conversation,
            CommandKind::EscalateToVoice,
            &format!("esc-{user}"),
            None,
        )
        .await?;
        let call = p.call_to(user).await?;
        p.sandbox
            .wait_for_call(&call.sid, DEADLINE, |c| c.gathering)
            .await?;
        p.sandbox.answer_gather(&call.sid, answer)?;
        let ended = p
            .sandbox
            .wait_for_call(&call.sid, DEADLINE, CallRecord::ended)
            .await?;
        assert!(
            !has_verb(&ended, "Recording") && !has_verb(&ended, "Transcription"),
            "{said}: nothing recorded or transcribed: {:#?}",
            ended.steps
        );
        assert!(ended.recording_sid.is_none() && ended.transcription_sid.is_none());
        p.received(user, by_text).await?;
        let records = p.compliance(&conversation, 2).await?;
        assert_eq!(records[0].kind, ComplianceEventKind::RecordingDisclosed);
        assert_eq!(records[1].kind, ComplianceEventKind::RecordingDeclined);
        assert_eq!(records[1].details["answer"], said);
    }
    drop(p.stages);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_scheduled_ahead_is_placed_once_also_across_a_sigkill() -> anyhow::Result<()> {
    const USER: &str = "+14155550134";
    let mut p = Pipeline::start().await?;
    let (conversation, _) = p.text(USER, "Call me in a few seconds").await?;
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
    p.command(
        &conversation,
        CommandKind::EscalateToVoice,
        "esc-later",
        Some(due.to_string()),
    )
    .await?;
    // Told when; then voice-link dies before the time and comes back.
    p.received(USER, "Si will call you at").await?;
    let voice_link = p.stages.last_mut().expect("voice-link is the last stage");
    voice_link.kill()?;
    let mut vars: Vec<(&str, &str)> = voice_link_vars();
    let base = p.sandbox.base_url();
    vars.extend([
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("PUBLIC_BASE_URL", p.ingress_url.as_str()),
        ("TWILIO_API_BASE_URL", base.as_str()),
    ]);
    let mut restarted = StageProcess::spawn(&p.env, "si-voice-link", "voice-0", &vars)?;
    restarted.ready(DEADLINE).await?;
    let call = p.call_to(USER).await?;
    assert!(
        call.created_ms >= due.as_millisecond(),
        "placed {} ms before its time",
        due.as_millisecond() - call.created_ms
    );
    // Exactly one: wait until voice-link has committed past its timer, then count.
    p.sandbox
        .wait_for_call(&call.sid, DEADLINE, |c| c.gathering)
        .await?;
    let calls = p
        .sandbox
        .calls()
        .into_iter()
        .filter(|c| c.to == USER)
        .count();
    assert_eq!(calls, 1, "placed once");
    drop(restarted);
    drop(p.stages);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_from_a_texting_user_joins_the_conversation() -> anyhow::Result<()> {
    const USER: &str = "+14155550135";
    let p = Pipeline::start().await?;
    let (conversation, session) = p.text(USER, "I'll call you now").await?;
    let sid = p.sandbox.place_inbound_call(&InboundCall {
        from: USER.into(),
        to: SI_NUMBER.into(),
        url: None,
        status_callback: None,
        answers: vec![GatherAnswer::digits("1")],
    })?;
    p.sandbox
        .wait_for_call(&sid, DEADLINE, |c| c.connected)
        .await?;
    p.sandbox.say(&sid, Speaker::User, "Here I am")?;
    p.sandbox
        .wait_for_call(&sid, DEADLINE, |c| !c.utterances.is_empty())
        .await?;
    p.sandbox.hang_up(&sid)?;
    p.sandbox
        .wait_for_call(&sid, DEADLINE, CallRecord::ended)
        .await?;

    // Every event of the call (answer, consent, status, utterance, recording)
    // is filed under the text conversation and its session.
    let of_call = |e: &ConversationEvent| {
        e.call.as_ref().is_some_and(|c| c.call_sid == sid)
            || e.transcription.as_ref().is_some_and(|t| t.call_sid == sid)
            || e.recording.as_ref().is_some_and(|r| r.call_sid == sid)
    };
    let events = p
        .env
        .collect::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, of_call, |kept| {
            kept.iter()
                .any(|e| e.event_type == ConversationEventType::RecordingAvailable)
                && kept
                    .iter()
                    .any(|e| e.event_type == ConversationEventType::Transcription)
        })
        .await?;
    for event in &events {
        assert_eq!(event.conversation_id, conversation, "{event:#?}");
        assert_eq!(event.session_id, session, "{event:#?}");
        // The recording and the recognised speech come only after the
        // disclosure: their compliance tags say so, for the audit.
        if event.recording.is_some() || event.transcription.is_some() {
            assert_eq!(
                event
                    .compliance
                    .as_ref()
                    .and_then(|c| c.recording_disclosed),
                Some(true),
                "{event:#?}"
            );
        }
    }
    let transcript = p
        .env
        .collect::<TranscriptEntry>(
            topics::TRANSCRIPT,
            DEADLINE,
            |e| e.conversation_id == conversation,
            |kept| {
                kept.iter()
                    .any(|e| e.entry_kind == Some(TranscriptEntryKind::CallEnded))
            },
        )
        .await?;
    let started = transcript
        .iter()
        .find(|e| e.entry_kind == Some(TranscriptEntryKind::CallStarted))
        .expect("a call start");
    assert_eq!(started.direction, Direction::Inbound);
    assert!(
        transcript
            .iter()
            .any(|e| e.text.as_deref() == Some("Here I am"))
    );
    drop(p.stages);
    Ok(())
}
