//! `sictl simulate sms` against the real ingress (in-process) on the real local
//! broker: the signed webhook is accepted and stored; a wrong token is refused.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use si_schemas::records::{TwilioWebhook, WebhookRoute};
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

const PUBLIC: &str = "https://si.example.test";
const TOKEN: &str = "sictl-simulate-token";

#[tokio::test]
async fn a_simulated_sms_is_accepted_and_stored() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let config = si_ingress::Config::from_args([
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
    ])?;
    let running = si_ingress::start(config, shutdown).await?;
    let ingress = format!("http://{}", running.addr);

    let simulate = |token: &str| {
        let ingress = ingress.clone();
        let token = token.to_owned();
        // The binary blocks; keep it off the runtime ingress runs on.
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sictl"))
                .env_remove("TWILIO_AUTH_TOKEN")
                .args([
                    "simulate",
                    "sms",
                    "--from",
                    "+14155550100",
                    "--to",
                    "+14155550199",
                    "--body",
                    "Hola Si! a+b=c&d 100% 👋",
                    "--ingress",
                    &ingress,
                    "--public-url",
                    PUBLIC,
                    "--auth-token",
                    &token,
                ])
                .output()
                .context("running sictl")
        })
    };
    let output = simulate(TOKEN).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(answer["status"], 200);
    let sid = answer["message_sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let records = env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 1, Duration::from_secs(30))
        .await?;
    let record = &records[0].1;
    assert_eq!(record.route, WebhookRoute::MessagingInbound);
    assert_eq!(record.resource_sid.as_deref(), Some(sid.as_str()));
    let body = record.params.iter().find(|p| p.name == "Body");
    assert_eq!(
        body.map(|p| p.value.as_str()),
        Some("Hola Si! a+b=c&d 100% 👋")
    );

    let refused = simulate("wrong-token").await??;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("403"));
    Ok(())
}
