//! `sictl doctor` against the real local broker and registry (a test prefix
//! with its topics applied and schemas registered) and the in-process Twilio
//! sandbox standing in for Twilio's read-only endpoints.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use si_testkit::{TestEnv, repo_root, wait_for};
use twilio_sandbox::{
    ConversationsWebhooks, MessagingService, PhoneNumber, Sandbox, SandboxConfig, SandboxHandle,
};

const PUBLIC: &str = "https://si.example.test";
const ACCOUNT: &str = "AC0d0c0d0c0d0c0d0c0d0c0d0c0d0c0d";
const TOKEN: &str = "doctor-test-token";
const SMS_NUMBER: &str = "+14155550101";
const SERVICE_NUMBER: &str = "+14155550102";

fn number(phone: &str, sms_url: Option<&str>) -> anyhow::Result<PhoneNumber> {
    Ok(serde_json::from_value(serde_json::json!({
        "phone_number": phone,
        "sms_url": sms_url,
        "voice_url": format!("{PUBLIC}/twilio/voice/answer"),
        "status_callback": format!("{PUBLIC}/twilio/voice/status"),
    }))?)
}

/// A sandbox whose account is set up as the deployment wants it: one number
/// with its own sms_url, one in a Messaging Service, the Conversations webhook.
async fn healthy_twilio() -> anyhow::Result<SandboxHandle> {
    let sandbox = Sandbox::start(SandboxConfig {
        account_sid: ACCOUNT.into(),
        auth_token: TOKEN.into(),
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    sandbox.set_phone_numbers(vec![
        number(
            SMS_NUMBER,
            Some(&format!("{PUBLIC}/twilio/messaging/inbound")),
        )?,
        // In the service: its own sms_url does not apply.
        number(SERVICE_NUMBER, None)?,
    ])?;
    sandbox.set_messaging_services(vec![serde_json::from_value::<MessagingService>(
        serde_json::json!({
            "friendly_name": "Si",
            "inbound_request_url": format!("{PUBLIC}/twilio/messaging/inbound"),
            "status_callback": format!("{PUBLIC}/twilio/messaging/status"),
            "phone_numbers": [SERVICE_NUMBER],
        }),
    )?])?;
    sandbox.set_conversations_webhooks(ConversationsWebhooks {
        post_webhook_url: Some(format!("{PUBLIC}/twilio/conversations/events")),
        filters: sictl::doctor::CONVERSATIONS_FILTERS
            .iter()
            .map(|f| (*f).to_owned())
            .collect(),
        ..ConversationsWebhooks::default()
    })?;
    Ok(sandbox)
}

struct Run {
    ok: bool,
    stdout: String,
}

/// Runs the real binary as an operator would, against `env` and `sandbox`,
/// off the runtime the sandbox serves on.
async fn doctor(
    env: &TestEnv,
    sandbox: &SandboxHandle,
    token: &str,
    args: &[&str],
) -> anyhow::Result<Run> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sictl"));
    for name in [
        "TWILIO_API_KEY_SID",
        "TWILIO_API_KEY_SECRET",
        "TWILIO_CREDENTIALS_DIR",
        "SI_TOPICS_FILE",
        "SI_SCHEMAS_DIR",
    ] {
        command.env_remove(name);
    }
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("SI_REPLICATION_FACTOR", "1")
        .env("PUBLIC_BASE_URL", PUBLIC)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", token)
        .env("TWILIO_API_BASE_URL", sandbox.base_url())
        .env("TWILIO_MESSAGING_BASE_URL", sandbox.base_url())
        .env("TWILIO_CONVERSATIONS_BASE_URL", sandbox.base_url())
        .arg("--topics-file")
        .arg(repo_root().join("topics.yaml"))
        .arg("--schemas-dir")
        .arg(repo_root().join("schemas/avro"))
        .arg("doctor")
        // One item per page: the pages are followed.
        .args(["--page-size", "1", "--timeout", "10s"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running sictl doctor")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code().is_some_and(|code| code <= 1),
        "sictl doctor crashed: {stderr}"
    );
    Ok(Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    })
}

fn checks(json: &str) -> anyhow::Result<Vec<Value>> {
    let report: Value = serde_json::from_str(json.trim()).context("doctor --json output")?;
    Ok(report["checks"].as_array().cloned().unwrap_or_default())
}

/// The FAIL lines of a text report, each with its fix line.
fn failures(stdout: &str) -> Vec<String> {
    let lines: Vec<&str> = stdout.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.starts_with("FAIL"))
        .map(|(i, line)| format!("{line}\n{}", lines.get(i + 1).unwrap_or(&"")))
        .collect()
}

#[tokio::test]
async fn a_healthy_deployment_is_all_ok() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = healthy_twilio().await?;

    let run = doctor(&env, &sandbox, TOKEN, &[]).await?;
    assert!(run.ok, "{}", run.stdout);
    assert!(run.stdout.contains(" 0 warn, 0 FAIL"), "{}", run.stdout);
    for line in run.stdout.lines().filter(|l| !l.contains(" ok, ")) {
        assert!(line.starts_with("ok    "), "not ok: {line}\n{}", run.stdout);
    }
    for check in [
        "kafka",
        "topics",
        "registry",
        "schemas",
        "twilio.credentials",
        "twilio.messaging-services",
        "twilio.conversations",
    ] {
        assert!(
            run.stdout.contains(&format!("ok    {check} ")),
            "{check}:\n{}",
            run.stdout
        );
    }
    // Both numbers, each on a page of its own: the second page was followed.
    assert!(
        run.stdout
            .contains(&format!("{SMS_NUMBER} (PN00000000000000000000014155550101): sms_url {PUBLIC}/twilio/messaging/inbound")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "{SERVICE_NUMBER} (PN00000000000000000000014155550102): messages through Messaging Service MG00000000000000000000000000000001"
        )),
        "{}",
        run.stdout
    );

    let json = doctor(&env, &sandbox, TOKEN, &["--json"]).await?;
    assert!(json.ok);
    let listed = checks(&json.stdout)?;
    assert!(listed.len() >= 9, "{}", json.stdout);
    assert!(
        listed
            .iter()
            .all(|c| c["status"] == "ok" && c["fix"].is_null()),
        "{}",
        json.stdout
    );

    // Read-only: Twilio saw reads, never a request.
    assert!(sandbox.requests().is_empty(), "{:?}", sandbox.requests());
    let reads = sandbox.reads();
    assert!(
        reads
            .iter()
            .any(|r| r.path.ends_with("/IncomingPhoneNumbers.json") && r.status == 200),
        "{reads:?}"
    );
    assert!(reads.iter().all(|r| r.method == "GET"));
    Ok(())
}

#[tokio::test]
async fn a_misdirected_number_and_wrong_credentials_fail_with_the_fix() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = healthy_twilio().await?;

    // Someone pointed the number's messages at an old server.
    sandbox.set_phone_numbers(vec![
        number(SMS_NUMBER, Some("https://old.example.test/sms"))?,
        number(SERVICE_NUMBER, None)?,
    ])?;
    let run = doctor(&env, &sandbox, TOKEN, &[]).await?;
    assert!(!run.ok, "a misdirected number must fail:\n{}", run.stdout);
    let failed = failures(&run.stdout);
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  twilio.numbers             {SMS_NUMBER} (PN00000000000000000000014155550101): sms_url is https://old.example.test/sms, expected {PUBLIC}/twilio/messaging/inbound"
        )),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains(&format!(
            "      fix: curl -X POST '{}/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/PN00000000000000000000014155550101.json' -u \"$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN\" --data-urlencode 'SmsUrl={PUBLIC}/twilio/messaging/inbound'",
            sandbox.base_url()
        )),
        "{}",
        failed[0]
    );
    // The number in the service is judged by the service, not its empty sms_url.
    assert!(!run.stdout.contains(&format!(
        "FAIL  twilio.numbers             {SERVICE_NUMBER}"
    )));
    let json = doctor(&env, &sandbox, TOKEN, &["--json"]).await?;
    assert!(!json.ok);
    let failed: Vec<Value> = checks(&json.stdout)?
        .into_iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{}", json.stdout);
    assert_eq!(failed[0]["check"], "twilio.numbers");
    assert_eq!(
        failed[0]["subject"],
        format!("{SMS_NUMBER} (PN00000000000000000000014155550101)")
    );
    assert!(
        failed[0]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("SmsUrl="))
    );

    // Wrong credentials: refused, and no list is read with them.
    sandbox.clear();
    let run = doctor(&env, &sandbox, "not-the-token", &[]).await?;
    assert!(!run.ok, "{}", run.stdout);
    let failed = failures(&run.stdout);
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  twilio.credentials         {ACCOUNT}: {} refuses the Auth Token from the environment (HTTP 401, code 20003",
            sandbox.base_url()
        )),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains("fix: put the account's current Auth Token")
            && failed[0].contains("docs/runbooks/credential-compromise.md"),
        "{}",
        failed[0]
    );
    let reads = sandbox.reads();
    assert_eq!(reads.len(), 1, "only the Account fetch: {reads:?}");
    assert_eq!(reads[0].status, 401);
    Ok(())
}

#[tokio::test]
async fn a_missing_topic_fails_with_the_fix() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = healthy_twilio().await?;
    let topic = env.topic("si.inbound.v1");
    let admin = sictl::topics::admin(&env.kafka)?;
    admin
        .delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new())
        .await?;
    wait_for("the topic to be gone", Duration::from_secs(30), || {
        let admin = admin.clone();
        let topic = topic.clone();
        async move {
            let gone = tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(5))
                    .map(|m| m.topics().iter().all(|t| t.name() != topic))
            })
            .await??;
            Ok(gone.then_some(()))
        }
    })
    .await?;

    let run = doctor(&env, &sandbox, TOKEN, &[]).await?;
    assert!(!run.ok, "a missing topic must fail:\n{}", run.stdout);
    let failed = failures(&run.stdout);
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  topics                     {topic}: missing (declared: "
        )),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].ends_with("      fix: sictl topics apply (add --dry-run to see the plan first)"),
        "{}",
        failed[0]
    );
    Ok(())
}

#[tokio::test]
async fn a_service_dropping_messages_fails_and_missing_events_only_warn() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = healthy_twilio().await?;

    // Conversations without onDeliveryUpdated: a warning, the exit code stays 0.
    sandbox.set_conversations_webhooks(ConversationsWebhooks {
        post_webhook_url: Some(format!("{PUBLIC}/twilio/conversations/events")),
        filters: vec![
            "onMessageAdded".into(),
            "onConversationStateUpdated".into(),
            "onParticipantAdded".into(),
        ],
        ..ConversationsWebhooks::default()
    })?;
    let run = doctor(&env, &sandbox, TOKEN, &[]).await?;
    assert!(run.ok, "a warning alone does not fail:\n{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "warn  twilio.conversations       {ACCOUNT}: filters lack onDeliveryUpdated: those events are never sent\n      fix: curl -X POST '{}/v1/Configuration/Webhooks'",
            sandbox.base_url()
        )),
        "{}",
        run.stdout
    );

    // The service's inbound URL cleared: messages to its numbers are dropped.
    sandbox.set_messaging_services(vec![serde_json::from_value::<MessagingService>(
        serde_json::json!({
            "friendly_name": "Si",
            "status_callback": format!("{PUBLIC}/twilio/messaging/status"),
            "phone_numbers": [SERVICE_NUMBER],
        }),
    )?])?;
    let run = doctor(&env, &sandbox, TOKEN, &[]).await?;
    assert!(!run.ok, "{}", run.stdout);
    let failed = failures(&run.stdout);
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  twilio.messaging-services  MG00000000000000000000000000000001 (Si): inbound_request_url is empty: messages to its senders are dropped, expected {PUBLIC}/twilio/messaging/inbound"
        )),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains(&format!(
            "fix: curl -X POST '{}/v1/Services/MG00000000000000000000000000000001' -u \"$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN\" --data-urlencode 'InboundRequestUrl={PUBLIC}/twilio/messaging/inbound' --data-urlencode 'InboundMethod=POST'",
            sandbox.base_url()
        )),
        "{}",
        failed[0]
    );

    // Limited to one number and a service the account lacks, without
    // Conversations: only the unknown service fails, the rest is not read.
    let run = doctor(
        &env,
        &sandbox,
        TOKEN,
        &[
            "--number",
            SMS_NUMBER,
            "--messaging-service",
            "MG00000000000000000000000000000009",
            "--skip-conversations",
        ],
    )
    .await?;
    assert!(
        !run.ok,
        "an unknown service named is a failure:\n{}",
        run.stdout
    );
    assert_eq!(
        failures(&run.stdout),
        [format!(
            "FAIL  twilio.messaging-services  MG00000000000000000000000000000009: not a Messaging Service of account {ACCOUNT}\n      fix: check --messaging-service, or the account (TWILIO_ACCOUNT_SID)"
        )],
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(SERVICE_NUMBER), "{}", run.stdout);
    assert!(
        !run.stdout.contains("twilio.conversations"),
        "{}",
        run.stdout
    );
    Ok(())
}
