//! Ingress against the real local broker and registry.
//!
//! Requests go to 127.0.0.1 while signatures are made for the public URL
//! `https://si.example.test`, as behind a TLS-terminating proxy.

mod support;

use std::time::Duration;

use si_schemas::records::{TwilioWebhook, WebhookRoute};
use si_schemas::topics;
use support::{Ingress, PUBLIC, form_params, signed_form};

#[tokio::test]
async fn n_signed_webhooks_give_exactly_n_records_with_every_parameter_intact() -> anyhow::Result<()>
{
    let ingress = Ingress::start(&[]).await?;
    let n = 40;
    let mut sent = Vec::new();
    for i in 0..n {
        // Unicode, reserved characters, empty values and repeated names: all must survive.
        let params = form_params(&[
            ("MessageSid", &format!("SM{i:032}")),
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("From", "whatsapp:+14155550100"),
            ("To", "whatsapp:+14155550199"),
            ("Body", &format!("Hola #{i} — ¿qué tal? 👋🏽 a+b=c&d 100%")),
            ("NumMedia", "2"),
            ("MediaUrl0", "https://api.twilio.com/media/ME1?x=1&y=2"),
            ("MediaUrl0", "https://api.twilio.com/media/ME0"),
            ("ProfileName", ""),
        ]);
        let path = if i % 2 == 0 {
            "/twilio/messaging/inbound"
        } else {
            "/twilio/messaging/inbound?source=test&n=1"
        };
        let response = ingress.post_form(path, &params, support::TOKEN).await?;
        assert_eq!(response.status(), 200, "{}", response.text().await?);
        sent.push(params);
    }
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, n, Duration::from_secs(30))
        .await?;
    assert_eq!(records.len(), n);
    let mut received: Vec<_> = records.into_iter().map(|(_, r)| r).collect();
    received.sort_by(|a, b| a.resource_sid.cmp(&b.resource_sid));
    for (params, record) in sent.iter().zip(&received) {
        let got: Vec<(String, String)> = record
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        assert_eq!(&got, params, "parameters preserved byte for byte, in order");
        assert_eq!(record.route, WebhookRoute::MessagingInbound);
        assert_eq!(record.event_type.as_deref(), Some("message.inbound"));
    }
    // Nothing extra arrived: exactly N.
    let extra = ingress
        .env
        .read_raw(topics::WEBHOOKS, n + 1, Duration::from_secs(2))
        .await;
    assert!(extra.is_err(), "more than {n} records on the topic");
    Ok(())
}

#[tokio::test]
async fn rejected_requests_write_nothing() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--max-body-bytes", "2048"]).await?;
    let params = form_params(&[
        ("MessageSid", "SM1"),
        ("From", "+14155550100"),
        ("Body", "hi"),
    ]);

    // Oversized: 413.
    let big = form_params(&[("Body", &"x".repeat(4096)), ("From", "+1")]);
    let response = ingress
        .post_form("/twilio/messaging/inbound", &big, support::TOKEN)
        .await?;
    assert_eq!(response.status(), 413);

    // Malformed form (bad percent-encoding), correctly signed over what we can parse: 400.
    let response = ingress
        .post_raw(
            "/twilio/messaging/inbound",
            "application/x-www-form-urlencoded",
            b"Body=%ZZ&From=%2".to_vec(),
            "sig",
        )
        .await?;
    assert_eq!(response.status(), 400);
    assert!(response.text().await?.contains("percent-encoding"));

    // Malformed JSON: 400.
    let response = ingress
        .post_raw(
            "/twilio/conversations/events?bodySHA256=00",
            "application/json",
            b"{\"EventType\":".to_vec(),
            "sig",
        )
        .await?;
    assert_eq!(response.status(), 400);

    // Unknown route: 404. Wrong content type: 415.
    let response = ingress
        .post_form("/twilio/nope", &params, support::TOKEN)
        .await?;
    assert_eq!(response.status(), 404);
    let response = ingress
        .post_raw(
            "/twilio/messaging/inbound",
            "text/plain",
            b"hi".to_vec(),
            "sig",
        )
        .await?;
    assert_eq!(response.status(), 415);

    // Bad signatures: 403 for a wrong token, a tampered parameter, a missing header.
    let response = ingress
        .post_form("/twilio/messaging/inbound", &params, "not-the-token")
        .await?;
    assert_eq!(response.status(), 403);
    let (body, signature) = signed_form(
        &format!("{PUBLIC}/twilio/messaging/inbound"),
        &params,
        support::TOKEN,
    );
    let tampered = body.replacen("hi", "hj", 1);
    let response = ingress
        .post_raw(
            "/twilio/messaging/inbound",
            "application/x-www-form-urlencoded",
            tampered.into_bytes(),
            &signature,
        )
        .await?;
    assert_eq!(response.status(), 403);
    let response = ingress
        .client
        .post(ingress.url("/twilio/messaging/inbound"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    // Signed for one path, sent to another.
    let response = ingress
        .post_raw(
            "/twilio/messaging/status",
            "application/x-www-form-urlencoded",
            body.into_bytes(),
            &signature,
        )
        .await?;
    assert_eq!(response.status(), 403);

    // Then one good webhook: it must be the first and only record on the topic.
    let marker = form_params(&[("MessageSid", "SMmarker"), ("From", "+14155550100")]);
    let response = ingress
        .post_form("/twilio/messaging/inbound", &marker, support::TOKEN)
        .await?;
    assert_eq!(response.status(), 200);
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 1, Duration::from_secs(20))
        .await?;
    assert_eq!(records[0].1.resource_sid.as_deref(), Some("SMmarker"));
    assert!(
        ingress
            .env
            .read_raw(topics::WEBHOOKS, 2, Duration::from_secs(2))
            .await
            .is_err()
    );

    let metrics = ingress.metrics().await?;
    for line in [
        "si_ingress_signature_failures_total{reason=\"mismatch\"} 3",
        "si_ingress_signature_failures_total{reason=\"missing\"} 1",
        "si_ingress_requests_total{outcome=\"too_large\",route=\"messaging_inbound\"} 1",
        "si_ingress_requests_total{outcome=\"not_found\",route=\"none\"} 1",
        "si_ingress_requests_total{outcome=\"accepted\",route=\"messaging_inbound\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn idempotency_token_headers_and_keys_are_kept() -> anyhow::Result<()> {
    let ingress = Ingress::start(&[]).await?;
    let params = form_params(&[
        ("EventType", "onMessageAdded"),
        ("ConversationSid", "CH00000000000000000000000000000007"),
        ("MessageSid", "IM1"),
        ("Author", "+14155550100"),
        ("Body", "hello"),
    ]);
    let url = format!("{PUBLIC}/twilio/conversations/events");
    let (body, signature) = signed_form(&url, &params, support::TOKEN);
    for _ in 0..2 {
        // Twilio retries with the same token.
        let response = ingress
            .client
            .post(ingress.url("/twilio/conversations/events"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .header("i-twilio-idempotency-token", "tok-123")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(response.status(), 200);
    }
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 2, Duration::from_secs(20))
        .await?;
    for (key, record) in records {
        assert_eq!(key.as_deref(), Some("CH00000000000000000000000000000007"));
        assert_eq!(record.idempotency_token.as_deref(), Some("tok-123"));
        assert_eq!(record.event_type.as_deref(), Some("onMessageAdded"));
        assert_eq!(
            record.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(
            !record.headers.contains_key("x-twilio-signature"),
            "the signature is not kept"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_inbound_call_hears_the_prompts_in_the_language_of_the_callers_country()
-> anyhow::Result<()> {
    // The number's webhook names no locale: the caller's country decides
    // (Mexico: Spanish), and the gather's URL carries it on; a country
    // without a listed locale gets DEFAULT_LOCALE.
    let ingress = Ingress::start(&["--voice-stream-url", "wss://voice.example/agent"]).await?;
    let inbound = |country: &str| {
        form_params(&[
            ("CallSid", "CA2"),
            ("From", "+5215555550123"),
            ("To", "+14155550100"),
            ("Direction", "inbound"),
            ("FromCountry", country),
            ("ToCountry", "US"),
        ])
    };
    let response = ingress
        .post_form("/twilio/voice/answer", &inbound("MX"), support::TOKEN)
        .await?;
    let twiml = response.text().await?;
    assert!(twiml.contains("Esta llamada se graba"), "{twiml}");
    assert!(
        twiml.contains("/twilio/voice/gather?locale=es-MX"),
        "{twiml}"
    );
    let response = ingress
        .post_form("/twilio/voice/answer", &inbound("ZZ"), support::TOKEN)
        .await?;
    let twiml = response.text().await?;
    assert!(!twiml.contains("Esta llamada se graba"), "{twiml}");
    assert!(twiml.contains("/twilio/voice/gather?locale=en"), "{twiml}");

    Ok(())
}

#[tokio::test]
async fn voice_answer_and_gather_return_localized_twiml_and_are_stored() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--voice-stream-url", "wss://voice.example/agent"]).await?;
    let call = form_params(&[
        ("CallSid", "CA1"),
        ("From", "+14155550199"),
        ("To", "+5215555550100"),
        ("Direction", "outbound-api"),
    ]);
    let response = ingress
        .post_form(
            "/twilio/voice/answer?conversation=CH42&locale=es-MX",
            &call,
            support::TOKEN,
        )
        .await?;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/xml")
    );
    let twiml = response.text().await?;
    assert!(twiml.contains("Esta llamada se graba"), "{twiml}");
    assert!(
        twiml.contains("/twilio/voice/gather?conversation=CH42&amp;locale=es-MX"),
        "{twiml}"
    );

    // Answered by a machine (machine detection on): no disclosure, no
    // prompt to a greeting, only a hang-up; the webhook is stored all the same.
    let mut machine = call.clone();
    machine.push(("AnsweredBy".into(), "machine_start".into()));
    let response = ingress
        .post_form(
            "/twilio/voice/answer?conversation=CH42&locale=es-MX",
            &machine,
            support::TOKEN,
        )
        .await?;
    assert_eq!(response.status(), 200);
    let twiml = response.text().await?;
    assert!(twiml.ends_with("<Response><Hangup/></Response>"), "{twiml}");

    let mut declined = call.clone();
    declined.push(("Digits".into(), "2".into()));
    let response = ingress
        .post_form(
            "/twilio/voice/gather?conversation=CH42&locale=es-MX",
            &declined,
            support::TOKEN,
        )
        .await?;
    let twiml = response.text().await?;
    assert!(
        twiml.contains("continúa por mensaje de texto") && twiml.contains("<Hangup/>"),
        "{twiml}"
    );

    let mut accepted = call.clone();
    accepted.push(("SpeechResult".into(), "Sí, claro.".into()));
    let response = ingress
        .post_form(
            "/twilio/voice/gather?conversation=CH42&locale=es-MX",
            &accepted,
            support::TOKEN,
        )
        .await?;
    let twiml = response.text().await?;
    assert!(
        twiml.contains("<Start><Recording") && twiml.contains("wss://voice.example/agent"),
        "{twiml}"
    );
    // Real-time transcription starts too; its callbacks come back to our
    // transcription route, signed over the URL we handed Twilio.
    let callback = twiml
        .split("<Transcription statusCallbackUrl=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no <Transcription> in {twiml}"))?
        .replace("&amp;", "&");
    let path = callback
        .strip_prefix(support::PUBLIC)
        .ok_or_else(|| anyhow::anyhow!("{callback} is not under the public base URL"))?;
    assert_eq!(
        path,
        "/twilio/voice/transcription?conversation=CH42&locale=es-MX"
    );
    assert!(twiml.contains("track=\"both_tracks\""), "{twiml}");
    let utterance = form_params(&[
        ("AccountSid", "AC1"),
        ("CallSid", "CA1"),
        ("TranscriptionSid", "GT1"),
        ("Timestamp", "2026-11-22T10:00:01.000Z"),
        ("SequenceId", "2"),
        ("TranscriptionEvent", "transcription-content"),
        ("LanguageCode", "es-MX"),
        ("Track", "inbound_track"),
        (
            "TranscriptionData",
            r#"{"transcript":"Hola, quiero cambiar mi cita","confidence":0.93}"#,
        ),
        ("Final", "true"),
    ]);
    let response = ingress.post_form(path, &utterance, support::TOKEN).await?;
    assert_eq!(response.status(), 200);
    let forged = ingress.post_form(path, &utterance, "not-the-token").await?;
    assert_eq!(forged.status(), 403);

    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 5, Duration::from_secs(20))
        .await?;
    for (key, record) in &records {
        assert_eq!(
            key.as_deref(),
            Some("CH42"),
            "keyed by the conversation our URL carries"
        );
        assert_eq!(record.conversation_hint.as_deref(), Some("CH42"));
    }
    let routes: Vec<_> = records.iter().map(|(_, r)| r.route).collect();
    assert_eq!(
        routes
            .iter()
            .filter(|r| **r == WebhookRoute::VoiceGather)
            .count(),
        2
    );
    assert!(records.iter().any(|(_, r)| {
        r.params
            .iter()
            .any(|p| p.name == "Digits" && p.value == "2")
    }));
    assert!(records.iter().any(|(_, r)| {
        r.route == WebhookRoute::VoiceAnswer
            && r.params
                .iter()
                .any(|p| p.name == "AnsweredBy" && p.value == "machine_start")
    }));
    assert!(records.iter().any(|(_, r)| {
        r.route == WebhookRoute::Transcription
            && r.event_type.as_deref() == Some("transcription.transcription-content")
            && r.resource_sid.as_deref() == Some("GT1")
    }));
    Ok(())
}

#[tokio::test]
async fn pre_event_webhooks_are_allowed_quickly_and_json_bodies_kept_raw() -> anyhow::Result<()> {
    let ingress = Ingress::start(&[]).await?;
    let params = form_params(&[
        ("EventType", "onMessageAdd"),
        ("ConversationSid", "CH1"),
        ("Body", "hi"),
        ("Author", "+1555"),
    ]);
    let started = std::time::Instant::now();
    let response = ingress
        .post_form("/twilio/conversations/pre-event", &params, support::TOKEN)
        .await?;
    assert_eq!(response.status(), 200);
    assert!(
        response.text().await?.is_empty(),
        "an empty 200 allows the action"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let json = br#"{"EventType":"onMessageAdded","ConversationSid":"CH2","MessageSid":"IM2","Body":"caf\u00e9"}"#.to_vec();
    let response = ingress
        .post_json("/twilio/conversations/events", json.clone(), support::TOKEN)
        .await?;
    assert_eq!(response.status(), 200);
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 2, Duration::from_secs(20))
        .await?;
    let stored = records
        .iter()
        .find(|(k, _)| k.as_deref() == Some("CH2"))
        .map(|(_, r)| r);
    assert_eq!(
        stored.and_then(|r| r.body.clone()),
        Some(json),
        "raw body byte for byte"
    );
    Ok(())
}

#[tokio::test]
async fn readiness_reports_kafka_and_schema() -> anyhow::Result<()> {
    let ingress = Ingress::start(&[]).await?;
    support::wait_for(Duration::from_secs(20), || async {
        Ok(ingress.readyz().await? == 200)
    })
    .await?;
    let health = ingress
        .client
        .get(format!("http://{}/healthz", ingress.running.admin_addr))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    Ok(())
}

/// The Auth Token rotation of the credential-compromise playbook: while the
/// new token is primary and the old one secondary, Twilio's webhooks signed
/// with either are accepted and stored (none dropped, whichever token Twilio
/// signs with during its switch), and one signed with a third token is not.
#[tokio::test]
async fn during_a_token_rotation_webhooks_signed_with_either_token_are_kept() -> anyhow::Result<()>
{
    let ingress = Ingress::start(&[]).await?;
    let mut kept = Vec::new();
    for (i, token) in [
        support::TOKEN,
        support::SECONDARY,
        support::TOKEN,
        support::SECONDARY,
    ]
    .iter()
    .enumerate()
    {
        let sid = format!("SM{i:032}");
        let params = form_params(&[
            ("MessageSid", &sid),
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("Body", "during the rotation"),
        ]);
        let response = ingress
            .post_form("/twilio/messaging/inbound", &params, token)
            .await?;
        assert_eq!(response.status(), 200, "signed with token #{i}");
        kept.push(sid);
    }
    let forged = form_params(&[
        ("MessageSid", "SM99999999999999999999999999999999"),
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("Body", "forged"),
    ]);
    let response = ingress
        .post_form("/twilio/messaging/inbound", &forged, "a-leaked-old-token")
        .await?;
    assert_eq!(response.status(), 403);
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, kept.len(), Duration::from_secs(30))
        .await?;
    let mut stored: Vec<String> = records
        .into_iter()
        .filter_map(|(_, r)| r.resource_sid)
        .collect();
    stored.sort();
    assert_eq!(stored, kept, "every webhook of the rotation stored once");
    let extra = ingress
        .env
        .read_raw(topics::WEBHOOKS, kept.len() + 1, Duration::from_secs(2))
        .await;
    assert!(extra.is_err(), "the forged webhook was stored");
    Ok(())
}

/// The rotation again, through the mounted Secret (`TWILIO_CREDENTIALS_DIR`)
/// with no restart: the new token is added as the secondary file and accepted
/// within a reload, then promoted; the old one, removed from the directory, is
/// refused from the next reload on although the environment ingress started
/// with still has it.
#[tokio::test]
async fn a_rotated_secret_in_the_mounted_directory_applies_without_a_restart() -> anyhow::Result<()>
{
    let dir = std::env::temp_dir().join(format!("si-ingress-rotation-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    // The kubelet swaps a Secret's files by renaming new ones over them.
    let write = |file: &str, value: &str| -> anyhow::Result<()> {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    };
    write("auth-token", support::TOKEN)?;
    let dir_arg = dir.to_string_lossy().into_owned();
    let ingress = Ingress::start(&[
        "--twilio-credentials-dir",
        &dir_arg,
        "--twilio-credentials-reload-interval",
        "100ms",
    ])
    .await?;
    let sent = std::sync::atomic::AtomicU32::new(0);
    let post = |token: &'static str| {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let params = form_params(&[
            ("MessageSid", &format!("SM{n:032}")),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("Body", "rotation"),
        ]);
        let ingress = &ingress;
        async move {
            let response = ingress
                .post_form("/twilio/messaging/inbound", &params, token)
                .await?;
            anyhow::Ok(response.status().as_u16())
        }
    };
    const NEW: &str = "the-new-token";
    // The directory holds only the primary: the environment's secondary
    // is not accepted, and the new token not yet.
    assert_eq!(post(support::SECONDARY).await?, 403);
    assert_eq!(post(NEW).await?, 403);
    write("auth-token-secondary", NEW)?;
    support::wait_for(Duration::from_secs(20), || async {
        Ok(post(NEW).await? == 200)
    })
    .await?;
    assert_eq!(
        post(support::TOKEN).await?,
        200,
        "the old one still, mid-rotation"
    );
    // Promoted; the old token gone from the Secret.
    write("auth-token", NEW)?;
    std::fs::remove_file(dir.join("auth-token-secondary"))?;
    support::wait_for(Duration::from_secs(20), || async {
        Ok(post(support::TOKEN).await? == 403)
    })
    .await?;
    assert_eq!(post(NEW).await?, 200);
    let metrics = ingress.metrics().await?;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("si_ingress_secret_reloads_total{result=\"changed\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn every_record_names_a_trace_even_when_twilio_sends_none() -> anyhow::Result<()> {
    let ingress = Ingress::start(&[]).await?;
    let url = format!("{PUBLIC}/twilio/messaging/inbound");
    for (i, traceparent) in [None, Some("00-abc-def-01")].into_iter().enumerate() {
        let params = form_params(&[
            ("MessageSid", &format!("SM{i:032}")),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("Body", "hello"),
        ]);
        let (body, signature) = signed_form(&url, &params, support::TOKEN);
        let mut request = ingress
            .client
            .post(ingress.url("/twilio/messaging/inbound"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        assert_eq!(request.body(body).send().await?.status(), 200);
    }
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 2, Duration::from_secs(20))
        .await?;
    let traces: Vec<String> = records
        .into_iter()
        .map(|(_, r)| r.traceparent.expect("every record names its trace"))
        .collect();
    for traceparent in &traces {
        // A new trace (traces are not exported here): valid, not sampled;
        // a malformed one received is not passed on.
        let context = si_runtime::trace::parse(traceparent)
            .unwrap_or_else(|| panic!("not a W3C traceparent: {traceparent}"));
        assert!(!context.is_sampled(), "{traceparent}");
    }
    assert_ne!(traces[0], traces[1], "two webhooks, one trace");
    Ok(())
}
