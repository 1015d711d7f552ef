//! The `si-segment` binary against the real broker and registry: conversation
//! events and responses in, ordered parts out on `twilio.outbound.v1`, a
//! WhatsApp template outside the window, a re-sent response sent once, a
//! BLOCKED_OUTBOUND compliance event for an opted-out user, and a dead letter
//! for a response to a conversation segment never heard of.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-segment --test stage -- --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use si_schemas::records::{
    Channel, CognitionResponse, ComplianceEvent, ComplianceEventKind, ComplianceSource,
    ConsentState, ConsentStatus, ConversationEvent, ConversationEventType, DeadLetter, EventSource,
    LocaleSource, OperationKind, OutboundOperation, Participant, ResponsePurpose, SegmentState,
};
use si_schemas::topics;
use si_testkit::TestEnv;

const TEMPLATE: &str = "HX0123456789abcdef0123456789abcdef";
const H: i64 = 3_600_000;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn inbound(
    conversation: &str,
    channel: Channel,
    user: &str,
    ours: &str,
    at: i64,
) -> ConversationEvent {
    ConversationEvent {
        channel,
        source: EventSource::Messaging,
        participant: Some(Participant {
            address: Some(user.into()),
            channel,
            user_id: None,
            visitor_id: Some("v-test".into()),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(ours.into()),
        }),
        locale: "en-US".into(),
        locale_source: LocaleSource::PhoneCountry,
        webhook_id: format!("w-{conversation}"),
        dedup_key: format!("d-{conversation}"),
        ..ConversationEvent::adapter(
            format!("e-{conversation}"),
            conversation,
            &format!("s-{conversation}"),
            ConversationEventType::MessageReceived,
            at,
        )
    }
}

fn response(id: &str, conversation: &str, text: &str) -> CognitionResponse {
    CognitionResponse {
        response_id: id.into(),
        conversation_id: conversation.into(),
        session_id: format!("s-{conversation}"),
        in_reply_to: None,
        text: text.into(),
        media: Vec::new(),
        locale: None,
        hints: None,
        created_at: now_ms(),
        traceparent: None,
        purpose: ResponsePurpose::Reply,
    }
}

fn spawn_segment(env: &TestEnv) -> anyhow::Result<Child> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("segment-tests");
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("stage.log"))?;
    Command::new(env!("CARGO_BIN_EXE_si-segment"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("POD_NAME", "segment-test")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "info,librdkafka=warn,rdkafka=warn")
        .env("TRANSACTION_TIMEOUT", "10s")
        .env("SEGMENT_WHATSAPP_TEMPLATE_SID", TEMPLATE)
        .env("SEGMENT_WHATSAPP_TEMPLATE_VARIABLES", r#"{"1":"Si"}"#)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting si-segment")
}

fn terminate(child: &mut Child, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > until {
            child.kill()?;
            bail!("si-segment did not stop within {deadline:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_responses_in_ordered_parts_out() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let now = now_ms();
    let sms = "pm-00000000000000000000000000000001";
    let whatsapp = "pm-00000000000000000000000000000002";
    let opted_out = "pm-00000000000000000000000000000003";
    let (sms_user, whatsapp_user, stop_user) = ("+14155550101", "+14155550102", "+14155550103");
    let ours = "+14155550199";

    let stop = ConsentState {
        address: stop_user.into(),
        channel: Channel::Sms,
        sender_scope: "*".into(),
        status: ConsentStatus::OptedOut,
        source: ComplianceSource::Keyword,
        decided_at: now - H,
        updated_at: now - H,
        keyword: Some("STOP".into()),
        event_ref: None,
    };
    env.produce(topics::CONSENT, &stop.key(), &stop).await?;
    for event in [
        inbound(sms, Channel::Sms, sms_user, ours, now - 60_000),
        // The WhatsApp user last wrote 30 hours ago: the window is closed.
        inbound(
            whatsapp,
            Channel::Whatsapp,
            whatsapp_user,
            ours,
            now - 30 * H,
        ),
        inbound(opted_out, Channel::Sms, stop_user, ours, now - 60_000),
    ] {
        env.produce(
            topics::CONVERSATION_EVENTS,
            &event.conversation_id.clone(),
            &event,
        )
        .await?;
    }

    let mut child = spawn_segment(&env)?;
    let result = async {
        // The events are in segment's state (its changelog) before any response.
        env.read::<SegmentState>(topics::SEGMENT_STATE, 3, Duration::from_secs(90))
            .await
            .context("segment did not learn the conversations")?;

        let long = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(60);
        for (key, r) in [
            (sms, response("r-long", sms, &long)),
            (sms, response("r-long", sms, &long)), // re-sent by an at-least-once producer
            (sms, response("r-short", sms, "Anything else?")),
            (whatsapp, response("r-wa", whatsapp, "Hello again")),
            (opted_out, response("r-stop", opted_out, "Hi")),
            ("CHunknown", response("r-unknown", "CHunknown", "Hi")),
        ] {
            env.produce(topics::RESPONSES, key, &r).await?;
        }

        let compliance = env
            .read::<ComplianceEvent>(topics::COMPLIANCE, 1, Duration::from_secs(60))
            .await?;
        let (key, event) = &compliance[0];
        assert_eq!(key.as_deref(), Some(format!("sms:{stop_user}").as_str()));
        assert_eq!(event.kind, ComplianceEventKind::BlockedOutbound);
        assert_eq!(event.message_ref.as_deref(), Some("r-stop"));

        let dead = env
            .read::<DeadLetter>(topics::DEAD_LETTER, 1, Duration::from_secs(60))
            .await?;
        assert_eq!(dead[0].1.stage, "segment");
        assert!(
            dead[0].1.reason.contains("unknown conversation"),
            "{}",
            dead[0].1.reason
        );

        // 3 + 1 SMS parts (the re-sent response adds none) and 1 template.
        let ops = env
            .read::<OutboundOperation>(topics::OUTBOUND, 5, Duration::from_secs(60))
            .await?;
        let mut by_sender: BTreeMap<String, Vec<OutboundOperation>> = BTreeMap::new();
        for (key, op) in ops {
            assert_eq!(key.as_deref(), Some(op.sender_key.as_str()));
            by_sender.entry(op.sender_key.clone()).or_default().push(op);
        }
        let sms_ops = &by_sender[&format!("sms:{ours}")];
        let ids: Vec<&str> = sms_ops.iter().map(|o| o.operation_id.as_str()).collect();
        assert_eq!(ids, ["r-long:0", "r-long:1", "r-long:2", "r-short:0"]);
        for (i, op) in sms_ops[..3].iter().enumerate() {
            assert_eq!(op.kind, OperationKind::SendMessage);
            assert_eq!((op.part_index, op.part_count), (i32::try_from(i)?, 3));
            assert_eq!(op.to.as_deref(), Some(sms_user));
            assert_eq!(op.from.as_deref(), Some(ours));
            let body = op.body.as_deref().unwrap();
            assert!(body.starts_with(&format!("({}/3) ", i + 1)), "{body}");
            assert!(op.segments.is_some() && op.encoding.is_some());
        }
        let wa = &by_sender[&format!("whatsapp:{ours}")];
        assert_eq!(wa.len(), 1);
        assert_eq!(wa[0].content_sid.as_deref(), Some(TEMPLATE));
        assert_eq!(
            wa[0].template_reason.as_deref(),
            Some("WHATSAPP_WINDOW_CLOSED")
        );
        assert_eq!(wa[0].body, None);
        assert_eq!(wa[0].to.as_deref(), Some(whatsapp_user));
        anyhow::Ok(())
    }
    .await;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    result?;
    assert!(status.success(), "graceful shutdown exited with {status}");
    Ok(())
}
