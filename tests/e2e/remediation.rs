//! Delivery remediation end to end, on the real broker: ingress, normalize,
//! consent, segment and egress against the Twilio sandbox, which reports
//! configured deliveries as failed in its status callbacks.
//!
//! - A WhatsApp text that fails with 63016 (outside the 24-hour window) is
//!   resent as the approved template and delivered.
//! - An urgent message to a user whose WhatsApp sends fail (63024) is
//!   delivered by SMS.
//! - An urgent message to a user who opted out of SMS, whose WhatsApp sends
//!   fail, gets neither: the fallback is refused by the consent gate and the
//!   chain gives up.

use std::time::Duration;

use anyhow::Context as _;

use si_schemas::records::{
    CognitionResponse, ConsentState, ConsentStatus, DeliveryStatus, InboundMessage,
    OutboundOperation, Priority, RemediationAction, ResponsePurpose, SegmentationHints,
};
use si_schemas::topics;
use si_testkit::{TestEnv, free_port, wait_for};
use twilio_sandbox::{DeliveryFailure, RequestRecord, Sandbox, SandboxConfig, SandboxHandle};

const SI_NUMBER: &str = "+14155550100";
/// WhatsApp free text fails with 63016; the template gets through.
const OUTSIDE_WINDOW: &str = "+14155550131";
/// Every WhatsApp send fails with 63024.
const NO_WHATSAPP: &str = "+14155550132";
/// Every WhatsApp send fails, and the user opted out of SMS.
const OPTED_OUT_OF_SMS: &str = "+14155550133";
const TOKEN: &str = "remediation-test-auth-token";
const TEMPLATE: &str = "HX0123456789abcdef0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(60);

fn wa(number: &str) -> String {
    format!("whatsapp:{number}")
}

async fn say(sandbox: &SandboxHandle, from: &str, to: &str, body: &str) -> anyhow::Result<()> {
    sandbox.text(from, to, body).await
}

/// The messages the sandbox accepted for `to` (as Twilio's `To`).
fn sent_to(sandbox: &SandboxHandle, to: &str) -> Vec<RequestRecord> {
    sandbox.messages_to(to)
}

async fn remediation(
    env: &TestEnv,
    origin: &str,
    action: RemediationAction,
) -> anyhow::Result<DeliveryStatus> {
    env.find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |s| {
        s.remediation
            .as_ref()
            .is_some_and(|r| r.origin_operation_id == origin && r.action == action)
    })
    .await
    .with_context(|| format!("{action} of {origin}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn response(inbound: &InboundMessage, id: &str, text: &str, urgent: bool) -> CognitionResponse {
    CognitionResponse {
        response_id: id.into(),
        conversation_id: inbound.conversation_id.clone(),
        session_id: inbound.session_id.clone(),
        in_reply_to: Some(inbound.message_id.clone()),
        text: text.into(),
        media: Vec::new(),
        locale: None,
        hints: urgent.then_some(SegmentationHints {
            max_parts: None,
            keep_paragraphs: None,
            priority: Priority::High,
            allow_truncation: None,
        }),
        created_at: now_ms(),
        traceparent: None,
        purpose: ResponsePurpose::Reply,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_deliveries_are_resent_as_template_fall_back_to_sms_or_stop_at_consent()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        delivery_failures: vec![
            DeliveryFailure {
                to: wa(OUTSIDE_WINDOW),
                error_code: 63016,
                status: "undelivered".into(),
                free_text_only: true,
            },
            DeliveryFailure {
                to: wa(NO_WHATSAPP),
                error_code: 63024,
                status: "failed".into(),
                free_text_only: false,
            },
            DeliveryFailure {
                to: wa(OPTED_OUT_OF_SMS),
                error_code: 63024,
                status: "failed".into(),
                free_text_only: false,
            },
        ],
        ..SandboxConfig::default()
    })
    .await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let base = sandbox.base_url();
    let twilio = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
    ];
    let mut stages = si_testkit::spawn_ready(
        &env,
        "remedy-0",
        &twilio,
        vec![
            (
                "si-ingress",
                vec![
                    ("LISTEN_ADDR", listen.as_str()),
                    ("PUBLIC_BASE_URL", ingress_url.as_str()),
                ],
            ),
            ("si-normalize", vec![("VISITOR_ID_SECRET", "remedy-secret")]),
            ("si-consent", vec![]),
            (
                "si-segment",
                vec![("SEGMENT_WHATSAPP_TEMPLATE_SID", TEMPLATE)],
            ),
            (
                "si-egress",
                vec![
                    ("TWILIO_API_BASE_URL", base.as_str()),
                    ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
                    // Reports name the operation's conversation: an SMS fallback
                    // of a WhatsApp conversation reports to that conversation.
                    ("STATUS_CALLBACK_BASE_URL", ingress_url.as_str()),
                ],
            ),
        ],
        DEADLINE,
    )
    .await?;

    // The third user opts out of SMS first.
    say(&sandbox, OPTED_OUT_OF_SMS, SI_NUMBER, "STOP").await?;
    env.find::<ConsentState>(topics::CONSENT, DEADLINE, |c| {
        c.address == OPTED_OUT_OF_SMS && c.status == ConsentStatus::OptedOut
    })
    .await?;

    // Each user writes on WhatsApp; cognition answers through si.responses.v1.
    let mut inbound = Vec::new();
    for user in [OUTSIDE_WINDOW, NO_WHATSAPP, OPTED_OUT_OF_SMS] {
        let text = format!("hello from {user}");
        say(&sandbox, &wa(user), &wa(SI_NUMBER), &text).await?;
        inbound.push(
            env.find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == text)
                .await?,
        );
    }
    let answers = [
        response(&inbound[0], "r-window", "Here is your answer", false),
        response(
            &inbound[1],
            "r-urgent",
            "Your appointment moved to 3pm",
            true,
        ),
        response(
            &inbound[2],
            "r-refused",
            "Your appointment moved to 4pm",
            true,
        ),
    ];
    for answer in &answers {
        env.produce(topics::RESPONSES, &answer.conversation_id, answer)
            .await?;
    }

    // 1. 63016: the template is sent and delivered.
    let decided = remediation(&env, "r-window:0", RemediationAction::ResendAsTemplate).await?;
    assert_eq!(decided.error_code, Some(63016));
    assert_eq!(decided.operation_id, "r-window:0");
    let template = wait_for("the template at the sandbox", DEADLINE, || async {
        Ok(sent_to(&sandbox, &wa(OUTSIDE_WINDOW))
            .into_iter()
            .find(|r| r.params.get("ContentSid").map(String::as_str) == Some(TEMPLATE)))
    })
    .await?;
    assert!(!template.params.contains_key("Body"));
    let recovered = remediation(&env, "r-window:0", RemediationAction::Recovered).await?;
    assert_eq!(recovered.operation_id, "r-window:0#1");
    assert!(recovered.remediation.as_ref().is_some_and(|r| r.terminal));
    // Egress's own status of the resend names the chain.
    let resent = env
        .find::<DeliveryStatus>(topics::DELIVERY, DEADLINE, |s| {
            s.operation_id == "r-window:0#1" && s.remediation.is_none()
        })
        .await?;
    assert_eq!(resent.resend_of.as_deref(), Some("r-window:0"));

    // 2. Urgent, WhatsApp failing: delivered by SMS to the same number.
    remediation(&env, "r-urgent:0", RemediationAction::FallbackChannel).await?;
    let sms = wait_for("the SMS fallback at the sandbox", DEADLINE, || async {
        Ok(sent_to(&sandbox, NO_WHATSAPP).into_iter().next())
    })
    .await?;
    assert_eq!(
        sms.params.get("Body").map(String::as_str),
        Some("Your appointment moved to 3pm")
    );
    assert_eq!(sms.params.get("From").map(String::as_str), Some(SI_NUMBER));
    remediation(&env, "r-urgent:0", RemediationAction::Recovered).await?;

    // 3. Opted out of SMS: the fallback is refused, the chain gives up.
    let gave_up = remediation(&env, "r-refused:0", RemediationAction::GiveUp).await?;
    let reason = gave_up.remediation.map(|r| r.reason).unwrap_or_default();
    assert!(reason.contains("consent"), "{reason}");
    // The decision and a fallback operation would be in one transaction.
    let fallbacks: Vec<String> = env
        .read_all::<OutboundOperation>(topics::OUTBOUND)
        .await?
        .into_iter()
        .map(|(_, op)| op.operation_id)
        .filter(|id| id.starts_with("r-refused:0#"))
        .collect();
    assert!(fallbacks.is_empty(), "{fallbacks:?}");
    assert!(
        !sent_to(&sandbox, OPTED_OUT_OF_SMS)
            .iter()
            .any(|r| r.params.get("Body").is_some_and(|b| b.contains("4pm"))),
        "an SMS reached a user who opted out of SMS"
    );

    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}
