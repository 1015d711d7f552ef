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

    let sictl = |args: Vec<String>| {
        // The binary blocks; keep it off the runtime ingress runs on.
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sictl"))
                .env_remove("TWILIO_AUTH_TOKEN")
                .args(args)
                .output()
                .context("running sictl")
        })
    };
    let simulate = |token: &str, from: &str, extra: &[&str]| {
        let mut args: Vec<String> = [
            "simulate",
            "sms",
            "--from",
            from,
            "--to",
            "+14155550199",
            "--ingress",
            &ingress,
            "--public-url",
            PUBLIC,
            "--auth-token",
            token,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        sictl(args)
    };
    let body = "Hola Si! a+b=c&d 100% 👋";
    let output = simulate(TOKEN, "+14155550100", &["--body", body]).await??;
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
    let sent = record.params.iter().find(|p| p.name == "Body");
    assert_eq!(sent.map(|p| p.value.as_str()), Some(body));

    let refused = simulate("wrong-token", "+14155550100", &["--body", body]).await??;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("403"));

    // A WhatsApp user shares a place.
    let place = [
        "--body",
        "",
        "--profile-name",
        "Ana",
        "--location",
        "-33.8688,151.2093",
        "--location-label",
        "Opera House",
    ];
    let posted = simulate(TOKEN, "whatsapp:+14155550100", &place).await??;
    assert!(
        posted.status.success(),
        "{}",
        String::from_utf8_lossy(&posted.stderr)
    );
    let records = env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 2, Duration::from_secs(30))
        .await?;
    // The two records may be on different partitions: in any order.
    let value = |record: &TwilioWebhook, name: &str| {
        record
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.clone())
    };
    let shared = records
        .iter()
        .map(|(_, r)| r)
        .find(|r| value(r, "From").is_some_and(|f| f.starts_with("whatsapp:")))
        .context("the WhatsApp message")?;
    let param = |name: &str| value(shared, name);
    assert_eq!(param("Latitude").as_deref(), Some("-33.8688"));
    assert_eq!(param("Longitude").as_deref(), Some("151.2093"));
    assert_eq!(param("Label").as_deref(), Some("Opera House"));
    assert_eq!(param("ProfileName").as_deref(), Some("Ana"));
    assert_eq!(param("Address"), None);
    // Coordinates out of range are refused before anything is posted.
    let wrong = [&place[..5], &["91,0"]].concat();
    let refused = simulate(TOKEN, "whatsapp:+14155550100", &wrong).await??;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("latitude"));
    Ok(())
}

#[tokio::test]
async fn a_simulated_call_is_played_against_ingress() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let config = si_ingress::Config::from_args([
        "si-ingress",
        "--public-base-url",
        PUBLIC,
        "--twilio-auth-token",
        TOKEN,
        "--voice-stream-url",
        "wss://voice.example.test/agent",
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
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sictl"))
            .env_remove("TWILIO_AUTH_TOKEN")
            .args([
                "simulate",
                "call",
                "--from",
                "+14155550100",
                "--to",
                "+14155550199",
                "--press",
                "1",
                "--utterance",
                "hello Si",
                "--hangup-after",
                "0s",
                "--ingress",
                &ingress,
                "--public-url",
                PUBLIC,
                "--auth-token",
                TOKEN,
            ])
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("twiml  Gather"), "{stdout}");
    assert!(stdout.contains("twiml  Connect"), "{stdout}");
    assert!(stdout.contains("said   \"hello Si\""), "{stdout}");
    // The call's length is the sandbox's wall clock from answer to hang-up
    // (whole seconds, as Twilio counts them): 0 s here unless the machine is
    // busy, so only its form is checked.
    let last = stdout.trim_end().lines().last().unwrap_or_default();
    let seconds = last
        .strip_prefix("completed (")
        .and_then(|rest| rest.strip_suffix(" s)"));
    assert!(
        seconds.is_some_and(|n| n.parse::<u64>().is_ok()),
        "the call ends completed, with its length: {stdout}"
    );
    assert!(
        !stdout.contains("+14155550100"),
        "numbers are masked: {stdout}"
    );
    // Every webhook ingress got was accepted: answer, gather, status, recording.
    for path in ["answer", "gather", "status", "recording"] {
        assert!(
            stdout.contains(&format!("/twilio/voice/{path}")),
            "{path}: {stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("webhook"))
            .all(|l| l.ends_with("-> 200")),
        "{stdout}"
    );

    // And ingress stored them: the voice answer among them.
    let records = env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 4, Duration::from_secs(30))
        .await?;
    assert!(
        records
            .iter()
            .any(|(_, r)| r.route == WebhookRoute::VoiceAnswer),
        "{records:?}"
    );
    Ok(())
}
