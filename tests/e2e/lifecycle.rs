//! A conversation's whole life on the real broker with every stage running
//! (ingress, normalize, consent, the echo responder, segment, egress,
//! lifecycle with second-long timers) and the Twilio sandbox: the user texts,
//! goes quiet, receives exactly one inactivity warning, then the closing
//! message with the echo responder's summary; one archival request is
//! written; the user's next text opens a new conversation with a new session
//! and is greeted back.

use std::time::Duration;

use si_catalog::{Catalog, keys};
use si_schemas::records::{ArchivalReason, ArchivalRequest, InboundMessage};
use si_schemas::topics;
use si_testkit::{StageProcess, TestEnv, free_port, wait_for};
use twilio_sandbox::{InboundSms, RequestRecord, Sandbox, SandboxConfig, SandboxHandle};

const USER: &str = "+14155550124";
const SI_NUMBER: &str = "+14155550100";
const TOKEN: &str = "lifecycle-test-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);
const SUMMARY: &str = "Summary from the echo responder: we said hello.";

/// The texts the sandbox accepted for the user, in order.
fn sent_to_user(sandbox: &SandboxHandle) -> Vec<String> {
    sandbox
        .requests()
        .into_iter()
        .filter(|r: &RequestRecord| {
            r.path.ends_with("/Messages.json")
                && r.status < 300
                && r.params.get("To").map(String::as_str) == Some(USER)
        })
        .filter_map(|r| r.params.get("Body").cloned())
        .collect()
}

async fn say(sandbox: &SandboxHandle, body: &str) -> anyhow::Result<()> {
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: SI_NUMBER.into(),
            body: body.into(),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    Ok(())
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

#[tokio::test(flavor = "multi_thread")]
async fn quiet_warned_closed_with_a_summary_archived_and_welcomed_back() -> anyhow::Result<()> {
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
    let twilio = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
    ];
    let mut stages = Vec::new();
    for (binary, extra) in [
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
        (
            "si-egress",
            vec![
                ("TWILIO_API_BASE_URL", base.as_str()),
                ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
            ],
        ),
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
    ] {
        let vars: Vec<(&str, &str)> = twilio.iter().copied().chain(extra).collect();
        stages.push(StageProcess::spawn(&env, binary, "lifecycle-0", &vars)?);
    }
    for stage in &mut stages {
        stage.ready(DEADLINE).await?;
    }
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
