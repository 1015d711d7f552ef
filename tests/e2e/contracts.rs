//! The Avro contracts hold against an independent implementation: records the
//! Rust codec writes are read by Confluent's own Python client (its
//! `AvroDeserializer` and `SchemaRegistryClient`) against the same registry, and
//! records that client writes are read by the Rust codec. Both through the real
//! broker and the real registry.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use si_schemas::AvroRecord;
use si_schemas::records::*;
use si_schemas::topics;
use si_testkit::{TestEnv, python, repo_root};

fn conversation_event(n: u32) -> ConversationEvent {
    ConversationEvent {
        event_id: format!("ev-{n}"),
        conversation_id: "CH00000000000000000000000000000001".into(),
        session_id: "sess-7f3a".into(),
        event_type: ConversationEventType::MessageReceived,
        channel: Channel::Whatsapp,
        source: EventSource::Conversations,
        occurred_at: 1_795_000_000_123,
        received_at: 1_795_000_000_456,
        participant: Some(Participant {
            address: Some("+14155550100".into()),
            channel: Channel::Whatsapp,
            user_id: None,
            visitor_id: Some("vis-0c1d".into()),
            registered: false,
            participant_sid: Some("MB00000000000000000000000000000001".into()),
            identity: None,
            proxy_address: Some("+14155550199".into()),
        }),
        locale: "es-MX".into(),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: Some("AC00000000000000000000000000000001".into()),
        webhook_id: "wh-1".into(),
        dedup_key: "IM0001:onMessageAdded".into(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        compliance: Some(ComplianceTags {
            consent_status: ConsentStatus::OptedIn,
            recording_disclosed: None,
        }),
        message: Some(MessageReceived {
            message_sid: "IM00000000000000000000000000000001".into(),
            index: Some(3),
            author: Some("whatsapp:+14155550100".into()),
            body: Some("Hola Si — ¿puedes llamarme? 📞".into()),
            media: vec![MediaRef {
                sid: Some("ME00000000000000000000000000000001".into()),
                url: None,
                content_type: Some("image/jpeg".into()),
                size_bytes: Some(48_213),
                filename: Some("receipt.jpg".into()),
            }],
            attributes_json: Some(r#"{"locale":"es-MX"}"#.into()),
            num_segments: Some(1),
            location: Some(Location {
                latitude: 19.432_608,
                longitude: -99.133_209,
                address: Some("Plaza de la Constitución".into()),
                label: None,
            }),
            profile_name: Some("Ana".into()),
            button_payload: Some("call-yes".into()),
        }),
        delivery: None,
        participant_change: None,
        state_change: None,
        call: None,
        recording: None,
        transcription: Some(TranscriptionEvent {
            call_sid: "CA00000000000000000000000000000001".into(),
            transcription_sid: None,
            text: "partial".into(),
            speaker: TranscriptionSpeaker::User,
            sequence: Some(9),
            is_final: false,
            confidence: Some(0.875),
        }),
        compliance_record: None,
        media_stored: None,
    }
}

fn webhook() -> TwilioWebhook {
    TwilioWebhook {
        webhook_id: "wh-json-1".into(),
        received_at: 1_795_000_000_789,
        route: WebhookRoute::ConversationsPostEvent,
        event_type: Some("onMessageAdded".into()),
        account_sid: Some("AC00000000000000000000000000000001".into()),
        resource_sid: Some("IM00000000000000000000000000000001".into()),
        idempotency_token: Some("tok-1".into()),
        content_type: "application/json".into(),
        params: vec![
            WebhookParam {
                name: "MediaUrl0".into(),
                value: "https://a/1".into(),
            },
            WebhookParam {
                name: "MediaUrl0".into(),
                value: "https://a/2".into(),
            },
        ],
        body: Some(vec![0, 159, 146, 150, b'{', b'}', 255]),
        query: Some("bodySHA256=abc&conversation=CH1".into()),
        headers: BTreeMap::from([("i-twilio-idempotency-token".into(), "tok-1".into())]),
        conversation_hint: Some("CH1".into()),
        traceparent: None,
    }
}

fn oracle(args: &[&str], stdin: Option<String>) -> anyhow::Result<String> {
    let mut child = Command::new(python()?)
        .arg(repo_root().join("tests/python/confluent_client.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the Confluent Python client")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "confluent client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn oracle_args<'a>(env: &'a TestEnv, command: &'a str, topic: &'a str) -> Vec<&'a str> {
    vec![
        command,
        "--topic",
        topic,
        "--bootstrap",
        &env.kafka.bootstrap_servers,
        "--registry",
        &env.registry.url,
    ]
}

/// Rust writes; Confluent's Python client reads the same data.
async fn rust_to_confluent<T: AvroRecord + Serialize>(
    env: &TestEnv,
    topic: &str,
    records: &[T],
) -> anyhow::Result<()> {
    for (i, record) in records.iter().enumerate() {
        env.produce(topic, &format!("key-{i}"), record).await?;
    }
    let full = env.topic(topic);
    let count = records.len().to_string();
    let mut args = oracle_args(env, "consume", &full);
    args.extend(["--count", &count]);
    let out = oracle(&args, None)?;
    let mut decoded: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    decoded.sort_by_key(|line| line["key"].as_str().map(str::to_owned));
    assert_eq!(decoded.len(), records.len());
    for (i, (line, record)) in decoded.iter().zip(records).enumerate() {
        assert_eq!(line["key"], format!("key-{i}"));
        assert_eq!(
            line["value"],
            serde_json::to_value(record)?,
            "record {i} of {topic}"
        );
    }
    Ok(())
}

/// Confluent's Python client writes; the Rust codec reads the same typed records.
async fn confluent_to_rust<T: AvroRecord + Serialize + PartialEq + std::fmt::Debug>(
    env: &TestEnv,
    topic: &str,
    records: &[T],
) -> anyhow::Result<()> {
    let full = env.topic(topic);
    let schema = repo_root().join("schemas/avro").join(T::SCHEMA_FILE);
    let schema = schema.to_str().context("schema path")?.to_owned();
    let mut args = oracle_args(env, "produce", &full);
    args.extend(["--schema", &schema]);
    let input = records
        .iter()
        .enumerate()
        .map(|(i, r)| Ok(serde_json::json!({"key": format!("py-{i}"), "value": r}).to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join("\n");
    oracle(&args, Some(input))?;
    let mut read = env
        .read::<T>(topic, records.len(), Duration::from_secs(30))
        .await?;
    read.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, ((key, decoded), record)) in read.iter().zip(records).enumerate() {
        assert_eq!(key.as_deref(), Some(format!("py-{i}").as_str()));
        assert_eq!(decoded, record, "record {i} of {topic}");
    }
    Ok(())
}

#[tokio::test]
async fn rust_codec_records_decode_in_confluents_client() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut minimal = conversation_event(2);
    minimal.participant = None;
    minimal.message = None;
    minimal.transcription = None;
    minimal.compliance = None;
    minimal.traceparent = None;
    minimal.account_sid = None;
    rust_to_confluent(
        &env,
        topics::CONVERSATION_EVENTS,
        &[conversation_event(1), minimal],
    )
    .await?;
    rust_to_confluent(&env, topics::WEBHOOKS, &[webhook()]).await
}

#[tokio::test]
async fn confluent_client_records_decode_in_the_rust_codec() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    confluent_to_rust(&env, topics::CONVERSATION_EVENTS, &[conversation_event(3)]).await?;
    let mut no_body = webhook();
    no_body.body = None;
    no_body.params.clear();
    confluent_to_rust(&env, topics::WEBHOOKS, &[webhook(), no_body]).await
}

#[tokio::test]
async fn an_unregistered_schema_is_a_clear_error_not_a_silent_registration() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let error = env
        .codec
        .encode(
            &format!("{}not.a.topic", env.kafka.topic_prefix),
            &webhook(),
        )
        .await
        .expect_err("no subject for that topic");
    assert!(
        error.to_string().contains("sictl schemas register"),
        "{error}"
    );
    assert!(error.is_retriable());
    Ok(())
}
