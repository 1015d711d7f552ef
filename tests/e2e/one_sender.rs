//! One sender identity per number, end to end (issue 14): with a Messaging
//! Service configured, consent's replies (the welcome, HELP, the STOP
//! confirmation) and segment's responses to the same user carry the same
//! sender key, so they share one `twilio.outbound.v1` partition and one
//! limiter at egress: the sandbox receives them in the order they were
//! written, paced by that one limiter (1 message per second here), where two
//! keys would have let them through side by side.

use std::time::Duration;

use si_schemas::records::{
    CognitionResponse, ComplianceEvent, ConsentState, ConsentStatus, DeliveryOutcome,
    DeliveryStatus, InboundMessage, OutboundOperation,
};
use si_schemas::topics;
use si_testkit::{TestEnv, free_port, wait_for};
use twilio_sandbox::{InboundSms, RequestRecord, Sandbox, SandboxConfig, SandboxHandle};

const USER: &str = "+14155550144";
const SI_NUMBER: &str = "+14155550100";
const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
const TOKEN: &str = "one-sender-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);

async fn say(sandbox: &SandboxHandle, body: &str) -> anyhow::Result<()> {
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: SI_NUMBER.into(),
            body: body.into(),
            messaging_service_sid: Some(SERVICE.into()),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    Ok(())
}

fn sent_to_user(sandbox: &SandboxHandle) -> Vec<RequestRecord> {
    let mut sent: Vec<RequestRecord> = sandbox
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/Messages.json")
                && r.status < 300
                && r.params.get("To").map(String::as_str) == Some(USER)
        })
        .collect();
    sent.sort_by_key(|r| r.seq);
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_replies_and_responses_share_one_sender_and_its_order() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        ..SandboxConfig::default()
    })
    .await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let base = sandbox.base_url();
    let common = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
        ("MESSAGING_SERVICE_SID", SERVICE),
    ];
    let mut stages = si_testkit::spawn_ready(
        &env,
        "one-0",
        &common,
        vec![
            (
                "si-ingress",
                vec![
                    ("LISTEN_ADDR", listen.as_str()),
                    ("PUBLIC_BASE_URL", ingress_url.as_str()),
                ],
            ),
            ("si-normalize", vec![("VISITOR_ID_SECRET", "one-sender")]),
            ("si-consent", vec![]),
            ("si-echo-responder", vec![]),
            ("si-segment", vec![]),
            (
                "si-egress",
                vec![
                    ("TWILIO_API_BASE_URL", base.as_str()),
                    ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
                    // One message a second for the service: a shared limiter shows.
                    ("EGRESS_RATE_MESSAGING_SERVICE", "1"),
                    ("EGRESS_RATE_HEADROOM", "1"),
                ],
            ),
        ],
        DEADLINE,
    )
    .await?;

    // First contact: the welcome (consent) and the echo (segment) together;
    // then cognition answers twice more and the user sends STOP at once
    // (the answers still queued then are blocked by egress's re-check).
    say(&sandbox, "Hello Si").await?;
    let inbound = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Hello Si")
        .await?;
    let template = env
        .find::<CognitionResponse>(topics::RESPONSES, DEADLINE, |r| {
            r.in_reply_to.as_deref() == Some(inbound.message_id.as_str())
        })
        .await?;
    wait_for("the echo at the sandbox", DEADLINE, || async {
        Ok(sent_to_user(&sandbox)
            .into_iter()
            .find(|r| r.params.get("Body").is_some_and(|b| b.contains("Hello Si"))))
    })
    .await?;
    for (id, text) in [("r-1", "First answer"), ("r-2", "Second answer")] {
        let response = CognitionResponse {
            response_id: id.into(),
            text: text.into(),
            in_reply_to: None,
            ..template.clone()
        };
        env.produce(topics::RESPONSES, &inbound.conversation_id, &response)
            .await?;
    }
    say(&sandbox, "STOP").await?;
    env.find::<ConsentState>(topics::CONSENT, DEADLINE, |c| {
        c.address == USER && c.status == ConsentStatus::OptedOut
    })
    .await?;

    // Everything written for the user, in topic order, once consent wrote the
    // welcome and the STOP confirmation and segment handled r-2 (sent, or
    // blocked after the STOP).
    let written = wait_for("the user's operations", DEADLINE, || async {
        let written: Vec<(String, OutboundOperation)> = env
            .read_all::<OutboundOperation>(topics::OUTBOUND)
            .await?
            .into_iter()
            .filter(|(_, op)| op.to.as_deref() == Some(USER))
            .collect();
        let replies = written
            .iter()
            .filter(|(_, op)| op.params.contains_key("si.purpose"))
            .count();
        let r2_sent = written
            .iter()
            .any(|(_, op)| op.response_id.as_deref() == Some("r-2"));
        let r2_blocked = env
            .read_all::<ComplianceEvent>(topics::COMPLIANCE)
            .await?
            .iter()
            .any(|(_, c)| c.message_ref.as_deref() == Some("r-2"));
        Ok((replies >= 2 && (r2_sent || r2_blocked)).then_some(written))
    })
    .await?;
    let keys: Vec<&str> = written.iter().map(|(key, _)| key.as_str()).collect();
    assert!(
        keys.iter().all(|k| *k == SERVICE),
        "one sender key for the user's messages: {keys:?}"
    );
    assert!(
        written.iter().all(|(_, op)| op.sender_key == SERVICE
            && op.messaging_service_sid.as_deref() == Some(SERVICE)),
        "consent's and segment's operations name the same service"
    );
    let purposes: Vec<bool> = written
        .iter()
        .map(|(_, op)| op.params.contains_key("si.purpose"))
        .collect();
    assert!(
        purposes.contains(&true) && purposes.contains(&false),
        "both consent's replies and segment's responses: {purposes:?}"
    );

    // Each ends with one status; those Twilio accepted reached the sandbox in
    // the order written, one limiter apart (egress's consent re-check blocks
    // the ones still queued when the STOP came in).
    let statuses = wait_for("a status for each", DEADLINE, || async {
        let statuses: Vec<DeliveryStatus> = env
            .read_all::<DeliveryStatus>(topics::DELIVERY)
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| {
                written
                    .iter()
                    .any(|(_, op)| op.operation_id == s.operation_id)
            })
            .collect();
        Ok((statuses.len() >= written.len()).then_some(statuses))
    })
    .await?;
    let accepted = |id: &str| {
        statuses
            .iter()
            .any(|s| s.operation_id == id && s.outcome == DeliveryOutcome::Accepted)
    };
    let ids: Vec<String> = written
        .iter()
        .map(|(_, op)| op.operation_id.clone())
        .filter(|id| accepted(id))
        .collect();
    assert!(
        ids.len() >= 3,
        "welcome, echo and the confirmation at least: {statuses:?}"
    );
    let sent = sent_to_user(&sandbox);
    let order: Vec<String> = sent.iter().filter_map(|r| r.operation_id.clone()).collect();
    assert_eq!(order, ids, "the sandbox's order is the topic's");
    for pair in sent.windows(2) {
        let gap = pair[1].at_ms - pair[0].at_ms;
        // Two limiters would send both at once; one at 1/s spaces them ~1 s.
        assert!(gap >= 500, "two sends {gap} ms apart: {sent:?}");
    }
    eprintln!(
        "[one sender] {} messages for one user under {SERVICE}, gaps {:?} ms",
        sent.len(),
        sent.windows(2)
            .map(|p| p[1].at_ms - p[0].at_ms)
            .collect::<Vec<_>>()
    );
    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}
