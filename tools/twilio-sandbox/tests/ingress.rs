//! The sandbox's signed callbacks and simulated user messages against the real
//! ingress (in-process) on the real local broker: every one accepted and stored.

use std::time::Duration;

use serde_json::Value;
use si_schemas::records::{TwilioWebhook, WebhookRoute};
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;
use twilio_sandbox::{InboundConversationMessage, InboundSms, Sandbox, SandboxConfig};

const PUBLIC: &str = "https://si.example.test";
const ACCOUNT: &str = "AC33333333333333333333333333333333";
const TOKEN: &str = "sandbox-ingress-token";
const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";

async fn start_ingress(env: &TestEnv, shutdown: CancellationToken) -> anyhow::Result<String> {
    let args = [
        "si-ingress",
        "--public-base-url",
        PUBLIC,
        "--twilio-auth-token",
        TOKEN,
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--kafka-bootstrap-servers",
        &env.kafka.bootstrap_servers,
        "--topic-prefix",
        &env.kafka.topic_prefix,
        "--schema-registry-url",
        &env.registry.url,
    ];
    let config = si_ingress::Config::from_args(args)?;
    let running = si_ingress::start(config, shutdown).await?;
    Ok(format!("http://{}", running.addr))
}

#[tokio::test]
async fn ingress_accepts_and_stores_every_callback_and_inbound_message() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let ingress = start_ingress(&env, shutdown).await?;
    let sandbox = Sandbox::start(SandboxConfig {
        account_sid: ACCOUNT.into(),
        auth_token: TOKEN.into(),
        callback_url: Some(ingress.clone()),
        public_url: Some(PUBLIC.into()),
        ..SandboxConfig::default()
    })
    .await?;
    let http = reqwest::Client::new();
    let post = |path: String, params: Vec<(&'static str, String)>| {
        let request = http
            .post(format!("{}{path}", sandbox.base_url()))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&params);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status().is_success(), "{}", response.status());
            Ok::<Value, anyhow::Error>(response.json().await?)
        }
    };

    // A Programmable Messaging reply with the StatusCallback egress would set.
    let sms = post(
        format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json"),
        vec![
            ("To", USER.into()),
            ("From", OURS.into()),
            ("Body", "Echo: ¿qué tal? 👋 & 100%".into()),
            (
                "StatusCallback",
                format!("{PUBLIC}/twilio/messaging/status?operation=op-7"),
            ),
        ],
    )
    .await?;
    // A Conversations message to an SMS participant.
    let conversation = post("/v1/Conversations".into(), vec![]).await?;
    let ch = conversation["sid"].as_str().unwrap_or_default().to_owned();
    post(
        format!("/v1/Conversations/{ch}/Participants"),
        vec![
            ("MessagingBinding.Address", USER.into()),
            ("MessagingBinding.ProxyAddress", OURS.into()),
        ],
    )
    .await?;
    let im = post(
        format!("/v1/Conversations/{ch}/Messages"),
        vec![("Body", "hello".into())],
    )
    .await?;

    // And the user writing in, both ways.
    let inbound = sandbox
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: OURS.into(),
            body: "Hi Si! a+b=c&d 🙂".into(),
            ..InboundSms::default()
        })
        .await?;
    assert_eq!(inbound.status, 200);
    let added = sandbox
        .post_inbound_conversation_message(&InboundConversationMessage {
            conversation_sid: ch.clone(),
            author: USER.into(),
            body: "yo".into(),
            ..InboundConversationMessage::default()
        })
        .await?;
    assert_eq!(added.status, 200);

    // 2 message statuses + 2 delivery updates + 2 inbound = 6 records.
    let records = env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 6, Duration::from_secs(30))
        .await?;
    let callbacks = sandbox.callbacks();
    assert_eq!(callbacks.len(), 4);
    assert!(
        callbacks.iter().all(|c| c.status == Some(200)),
        "{callbacks:?}"
    );
    let find = |route: WebhookRoute, status: &str| {
        records.iter().map(|(_, r)| r).find(|r| {
            r.route == route
                && r.params
                    .iter()
                    .any(|p| (p.name == "MessageStatus" || p.name == "Status") && p.value == status)
        })
    };
    for status in ["sent", "delivered"] {
        let record = find(WebhookRoute::MessagingStatus, status)
            .ok_or_else(|| anyhow::anyhow!("no MessageStatus {status}"))?;
        assert_eq!(record.resource_sid.as_deref(), sms["sid"].as_str());
        assert_eq!(record.query.as_deref(), Some("operation=op-7"));
        let record = find(WebhookRoute::ConversationsPostEvent, status)
            .ok_or_else(|| anyhow::anyhow!("no onDeliveryUpdated {status}"))?;
        assert_eq!(record.event_type.as_deref(), Some("onDeliveryUpdated"));
        assert_eq!(record.resource_sid.as_deref(), im["sid"].as_str());
    }
    let inbound_record = records
        .iter()
        .map(|(_, r)| r)
        .find(|r| r.route == WebhookRoute::MessagingInbound)
        .ok_or_else(|| anyhow::anyhow!("no inbound record"))?;
    assert_eq!(
        inbound_record.resource_sid.as_deref(),
        Some(inbound.sid.as_str())
    );
    let got: Vec<(String, String)> = inbound_record
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    assert_eq!(got, inbound.params, "every parameter intact, in order");
    assert!(records.iter().any(|(_, r)| {
        r.event_type.as_deref() == Some("onMessageAdded")
            && r.resource_sid.as_deref() == Some(added.sid.as_str())
    }));

    // A sandbox with the wrong token is refused by ingress (403), and says so.
    let wrong = Sandbox::start(SandboxConfig {
        account_sid: ACCOUNT.into(),
        auth_token: "not-the-token".into(),
        callback_url: Some(ingress),
        public_url: Some(PUBLIC.into()),
        ..SandboxConfig::default()
    })
    .await?;
    let refused = wrong
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: OURS.into(),
            body: "x".into(),
            ..InboundSms::default()
        })
        .await?;
    assert_eq!(refused.status, 403);
    Ok(())
}
