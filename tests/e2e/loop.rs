//! The whole loop on the real broker: a signed inbound SMS goes through ingress,
//! normalize, consent, the echo responder, segment and egress; the Twilio
//! sandbox receives the reply and its delivery callback comes back through
//! ingress and normalize as a DELIVERY_UPDATED event. Then STOP: a cognition
//! response for the conversation is blocked at the consent gate (a
//! BLOCKED_OUTBOUND compliance event, nothing on twilio.outbound.v1), and after
//! START a new response goes through again. A second user writes on WhatsApp
//! and gets the reply there; a third user's number is refused by Twilio
//! (21211, with a message that quotes it). At the end `sictl report --json`
//! counts every message Twilio accepted as sent and delivered, one opt-out and
//! the opt-ins.
//!
//! Every stage exports its spans over OTLP/HTTP to a receiver inside the
//! test: the first text's trace must run as one parent chain from ingress's
//! webhook span through every stage to egress's Twilio request, with the
//! delivery reports of that send joining it, and no span may hold a number.
//!
//! Every stage logs at trace level, as JSON as in production, and egress
//! authenticates with an API key: at the end (after shutdown) no stage's log
//! may hold the Auth Token, the API key secret (as written or in a Basic
//! credential) or any of the four phone numbers unmasked, in any form.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use si_schemas::records::{
    CognitionResponse, ComplianceEvent, ComplianceEventKind, ConsentState, ConsentStatus,
    ConversationEvent, ConversationEventType, DeliveryOutcome, DeliveryState, DeliveryStatus,
    InboundMessage, OutboundOperation,
};
use si_schemas::topics;
use si_testkit::otlp::ancestry;
use si_testkit::{
    LeakDetector, OtlpReceiver, ReceivedSpan, StageProcess, TestEnv, free_port, wait_for,
};
use twilio_sandbox::{
    InboundSms, RequestRecord, Sandbox, SandboxConfig, SandboxHandle, SharedLocation,
};

const USER: &str = "+14155550123";
/// A second user, on WhatsApp.
const WHATSAPP_USER: &str = "+14155550177";
/// A third user, whose number Twilio refuses for sending (21211, a message
/// that quotes the number).
const INVALID_USER: &str = "+14155550188";
const SI_NUMBER: &str = "+14155550100";
const TOKEN: &str = "loop-test-auth-token";
const API_KEY_SID: &str = "SK0000000000000000000000000000loop";
const API_KEY_SECRET: &str = "loop-test-api-key-secret";
const DEADLINE: Duration = Duration::from_secs(60);
/// The price table `sictl report` estimates the cost with.
/// Personal data no stage may log.
const PROFILE_NAME: &str = "Ana Xochitl Quetzal";
const PLACE_ADDRESS: &str = "Plaza de la Constitución, Ciudad de México";

/// `text` as a form parameter's value (Twilio posts webhooks form-encoded).
fn form_encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
const PRICES: &str = "sms:US=0.0083,sms:*=0.05,whatsapp:*=0.005";

/// The Programmable Messaging sends the sandbox accepted for `to`.
fn sent_to(sandbox: &SandboxHandle, to: &str) -> Vec<RequestRecord> {
    sandbox.messages_to(to)
}

/// The Programmable Messaging sends the sandbox accepted for the user.
fn sent_to_user(sandbox: &SandboxHandle) -> Vec<RequestRecord> {
    sent_to(sandbox, USER)
}

async fn say(sandbox: &SandboxHandle, body: &str) -> anyhow::Result<()> {
    sandbox.text(USER, SI_NUMBER, body).await
}

async fn sent_body_containing(
    sandbox: &SandboxHandle,
    text: &str,
) -> anyhow::Result<RequestRecord> {
    wait_for(&format!("a send containing {text:?}"), DEADLINE, || async {
        Ok(sent_to_user(sandbox)
            .into_iter()
            .find(|r| r.params.get("Body").is_some_and(|b| b.contains(text))))
    })
    .await
}

async fn consent_status(env: &TestEnv, want: ConsentStatus) -> anyhow::Result<ConsentState> {
    env.find::<ConsentState>(topics::CONSENT, DEADLINE, |c| {
        c.address == USER && c.status == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_goes_round_the_loop_and_an_opt_out_stops_replies() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        api_key: Some((API_KEY_SID.into(), API_KEY_SECRET.into())),
        invalid_numbers: vec![INVALID_USER.into()],
        ..SandboxConfig::default()
    })
    .await?;
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let base = sandbox.base_url();
    let otlp = OtlpReceiver::start().await?;
    let common = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
        ("LOG_LEVEL", "trace"),
        ("LOG_FORMAT", "json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
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
        ("si-normalize", vec![("VISITOR_ID_SECRET", "loop-secret")]),
        ("si-consent", vec![]),
        ("si-echo-responder", vec![]),
        ("si-segment", vec![("PRICE_TABLE", PRICES)]),
        (
            "si-egress",
            vec![
                ("TWILIO_API_BASE_URL", base.as_str()),
                ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
                ("TWILIO_API_KEY_SID", API_KEY_SID),
                ("TWILIO_API_KEY_SECRET", API_KEY_SECRET),
                ("STATUS_CALLBACK_BASE_URL", ingress_url.as_str()),
            ],
        ),
    ] {
        let vars: Vec<(&str, &str)> = common.iter().copied().chain(extra).collect();
        stages.push(StageProcess::spawn(&env, binary, "loop-0", &vars)?);
    }
    for stage in &mut stages {
        stage.ready(DEADLINE).await?;
    }

    // 1. A user's text reaches cognition (echo) and the reply reaches Twilio.
    say(&sandbox, "Hello Si").await?;
    let reply = sent_body_containing(&sandbox, "Hello Si").await?;
    assert_eq!(
        reply.params.get("From").map(String::as_str),
        Some(SI_NUMBER)
    );
    let inbound = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Hello Si")
        .await?;
    assert!(
        inbound.first_contact,
        "the first message is a first contact"
    );

    // 2. Twilio's delivery callback comes back as a DELIVERY_UPDATED event.
    let sid = reply
        .sid
        .clone()
        .expect("the sandbox returns the message SID");
    let delivered = env
        .find::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, |e| {
            e.event_type == ConversationEventType::DeliveryUpdated
                && e.delivery
                    .as_ref()
                    .is_some_and(|d| d.message_sid == sid && d.status == DeliveryState::Delivered)
        })
        .await?;
    assert_eq!(delivered.conversation_id, inbound.conversation_id);

    // 2a. One trace from ingress's webhook to egress's Twilio request, and
    // the delivery reports of that send in it.
    let trace_id = one_trace_from_webhook_to_twilio(&otlp, &inbound, &reply).await?;

    // 2b. A second user writes on WhatsApp and gets the reply there.
    let whatsapp_user = format!("whatsapp:{WHATSAPP_USER}");
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: whatsapp_user.clone(),
            to: format!("whatsapp:{SI_NUMBER}"),
            body: "Hola Si".into(),
            profile_name: Some(PROFILE_NAME.into()),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    wait_for("the WhatsApp reply", DEADLINE, || async {
        Ok(sent_to(&sandbox, &whatsapp_user)
            .into_iter()
            .find(|r| r.params.get("Body").is_some_and(|b| b.contains("Hola Si"))))
    })
    .await?;
    let hola = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.text == "Hola Si")
        .await?;
    assert_eq!(hola.profile_name.as_deref(), Some(PROFILE_NAME));
    // The same user shares a place: it reaches cognition with no text.
    let place = SharedLocation {
        latitude: 19.4326,
        longitude: -99.1332,
        address: Some(PLACE_ADDRESS.into()),
        label: Some("Zócalo".into()),
    };
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: whatsapp_user.clone(),
            to: format!("whatsapp:{SI_NUMBER}"),
            body: String::new(),
            profile_name: Some(PROFILE_NAME.into()),
            location: Some(place.clone()),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    let shared = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| m.location.is_some())
        .await?;
    let location = shared.location.expect("found by it");
    assert_eq!(
        (location.latitude, location.longitude),
        (place.latitude, place.longitude)
    );
    assert_eq!(location.address, place.address);
    assert_eq!(location.label, place.label);
    assert_eq!(shared.text, "");
    assert_eq!(shared.conversation_id, hola.conversation_id);

    // 2c. A reply to a number Twilio refuses: egress's failure path runs.
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: INVALID_USER.into(),
            to: SI_NUMBER.into(),
            body: "Hi from a landline".into(),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    wait_for("the refused send", DEADLINE, || async {
        Ok(sandbox.requests().into_iter().find(|r| {
            r.path.ends_with("/Messages.json")
                && r.status == 400
                && r.params.get("To").map(String::as_str) == Some(INVALID_USER)
        }))
    })
    .await?;

    // 3. STOP: in force, then a cognition response is blocked at the gate.
    say(&sandbox, "STOP").await?;
    consent_status(&env, ConsentStatus::OptedOut).await?;
    let template = env
        .find::<CognitionResponse>(topics::RESPONSES, DEADLINE, |r| {
            r.in_reply_to.as_deref() == Some(inbound.message_id.as_str())
        })
        .await?;
    let respond = |id: &str, text: &str| CognitionResponse {
        response_id: id.into(),
        text: text.into(),
        in_reply_to: None,
        ..template.clone()
    };
    let key = inbound.conversation_id.clone();
    env.produce(
        topics::RESPONSES,
        &key,
        &respond("r-after-stop", "Are you still there?"),
    )
    .await?;
    let blocked = env
        .find::<ComplianceEvent>(topics::COMPLIANCE, DEADLINE, |c| {
            c.kind == ComplianceEventKind::BlockedOutbound
                && c.message_ref.as_deref() == Some("r-after-stop")
        })
        .await?;
    assert_eq!(blocked.address, USER);

    // 4. START: a new response goes through, and the blocked one never did.
    say(&sandbox, "START").await?;
    consent_status(&env, ConsentStatus::OptedIn).await?;
    env.produce(
        topics::RESPONSES,
        &key,
        &respond("r-after-start", "Welcome back!"),
    )
    .await?;
    sent_body_containing(&sandbox, "Welcome back!").await?;
    // Segment handles one conversation's responses in order, so every operation
    // for r-after-stop would be on twilio.outbound.v1 before r-after-start's.
    let mut outbound = Vec::new();
    env.find::<OutboundOperation>(topics::OUTBOUND, DEADLINE, |op| {
        outbound.push(op.response_id.clone());
        op.response_id.as_deref() == Some("r-after-start")
    })
    .await?;
    assert!(
        !outbound
            .iter()
            .any(|r| r.as_deref() == Some("r-after-stop")),
        "a response to an opted-out user reached twilio.outbound.v1: {outbound:?}"
    );
    assert!(
        !sent_to_user(&sandbox).iter().any(|r| r
            .params
            .get("Body")
            .is_some_and(|b| b.contains("still there"))),
        "the sandbox received a message sent after STOP"
    );

    // 5. `sictl report` over the test's records counts what happened here.
    report_counts_what_the_test_did(&env, &sandbox).await?;

    // 6. Segment's channel metrics count its own replies Twilio accepted
    // (Hello Si and Welcome back! by SMS from our long code, Hola Si and the
    // shared place's echo on WhatsApp; not consent's texts, not the refused
    // one), all delivered.
    let segment = stages
        .iter()
        .find(|s| s.log().to_string_lossy().contains("si-segment"))
        .context("the segment stage")?;
    wait_for("segment's four delivered reports", DEADLINE, || async {
        let delivered = segment
            .metric_sum("si_segment_deliveries_total", &[r#"status="delivered""#])
            .await?;
        Ok((delivered >= 4.0).then_some(()))
    })
    .await?;
    let sum =
        |name: &'static str, labels: &'static [&'static str]| segment.metric_sum(name, labels);
    assert_eq!(sum("si_segment_deliveries_total", &[]).await?, 4.0);
    assert_eq!(
        sum(
            "si_segment_sent_total",
            &[r#"channel="sms""#, r#"sender_class="long_code""#]
        )
        .await?,
        2.0
    );
    assert_eq!(
        sum(
            "si_segment_sent_total",
            &[r#"channel="whatsapp""#, r#"sender_class="whatsapp""#]
        )
        .await?,
        2.0
    );
    assert_eq!(
        sum("si_segment_time_to_delivered_seconds_count", &[]).await?,
        4.0
    );
    assert_eq!(
        sum("si_segment_segments_per_message_count", &[]).await?,
        4.0
    );
    let sms_usd = sum(
        "si_segment_estimated_cost_usd_total",
        &[r#"channel="sms""#, r#"country="US""#],
    )
    .await?;
    let sms_segments = sum("si_segment_segments_per_message_sum", &[r#"channel="sms""#]).await?;
    assert!(
        (sms_usd - 0.0083 * sms_segments).abs() < 1e-9,
        "{sms_usd} for {sms_segments} segments"
    );

    for stage in &mut stages {
        stage.terminate(Duration::from_secs(30))?;
    }
    spans_hold_no_number(&otlp.spans());
    // Log lines written while ingress handled the webhook name its trace.
    let ingress_log = std::fs::read_to_string(stages[0].log())?;
    assert!(
        ingress_log.contains(&format!(r#""trace_id":"{trace_id}""#)),
        "no ingress log line names the trace {trace_id}"
    );
    logs_hold_no_secret_and_no_number(&stages, sandbox.account_sid())
}

/// The trace of the user's first text, as the stages exported it: egress's
/// Twilio request for the reply descends, parent by parent, from ingress's
/// webhook span through normalize, consent, the responder, segment and
/// egress's operation; the status callbacks of that send are children of the
/// request (egress put its context into the callback URL); each processor's
/// transaction links to the record spans it committed; and log lines of
/// that work name the trace.
async fn one_trace_from_webhook_to_twilio(
    otlp: &OtlpReceiver,
    inbound: &InboundMessage,
    reply: &RequestRecord,
) -> anyhow::Result<String> {
    let traceparent = inbound
        .traceparent
        .clone()
        .context("si.inbound.v1 carries no traceparent")?;
    let trace_id = traceparent[3..35].to_owned();
    let callback = reply
        .params
        .get("StatusCallback")
        .context("the reply has no StatusCallback")?;
    let sent = form_urlencoded::parse(callback.split_once('?').map_or("", |(_, q)| q).as_bytes())
        .find(|(name, _)| name == "traceparent")
        .map(|(_, value)| value.into_owned())
        .context("the StatusCallback URL carries no traceparent")?;
    assert_eq!(
        &sent[3..35],
        trace_id,
        "the request to Twilio is in another trace"
    );
    assert_eq!(
        reply.traceparent.as_deref(),
        Some(sent.as_str()),
        "the request's traceparent header is not its StatusCallback's"
    );
    let request_id = sent[36..52].to_owned();
    let trace = wait_for("the trace up to the delivery report", DEADLINE, || async {
        let trace = otlp.trace(&trace_id);
        let report = trace.iter().any(|s| {
            s.service == "si-ingress"
                && s.name == "webhook"
                && s.attribute("si.route") == Some("messaging_status")
                && s.parent_span_id == request_id
        });
        let complete = trace
            .iter()
            .find(|s| s.span_id == request_id)
            .is_some_and(|request| {
                ancestry(&trace, request)
                    .last()
                    .is_some_and(|root| root.name == "webhook" && root.parent_span_id.is_empty())
            });
        Ok((report && complete).then_some(trace))
    })
    .await
    .with_context(|| format!("spans received: {:#?}", otlp.trace(&trace_id)))?;
    let request = trace
        .iter()
        .find(|s| s.span_id == request_id)
        .context("the request span")?;
    assert_eq!(
        (request.service.as_str(), request.name.as_str()),
        ("si-egress", "twilio request")
    );
    assert_eq!(request.attribute("http.response.status_code"), Some("201"));
    let chain: Vec<(&str, &str)> = ancestry(&trace, request)
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        chain,
        [
            ("si-egress", "twilio request"),
            ("si-egress", "operation"),
            ("si-segment", "process"),
            ("si-echo-responder", "process"),
            ("si-consent", "process"),
            ("si-normalize", "process"),
            ("si-ingress", "produce"),
            ("si-ingress", "webhook"),
        ],
        "the parent chain from the Twilio request to the webhook"
    );
    let root = ancestry(&trace, request).last().copied().context("root")?;
    assert_eq!(root.attribute("si.route"), Some("messaging_inbound"));
    assert_eq!(root.attribute("http.response.status_code"), Some("200"));
    assert!(
        trace.iter().any(|s| s.service == "si-ingress"
            && s.name == "verify signature"
            && s.parent_span_id == root.span_id),
        "no signature check span under the webhook"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.service == "si-egress" && s.name == "wait"),
        "no wait span under the operation"
    );
    // Each processor's transaction links to the record spans it committed.
    let all = otlp.spans();
    for stage in ["si-normalize", "si-consent", "si-segment"] {
        let process = trace
            .iter()
            .find(|s| s.service == stage && s.name == "process")
            .with_context(|| format!("{stage}'s process span"))?;
        assert!(
            all.iter().any(|s| s.service == stage
                && s.name == "transaction"
                && s.links
                    .contains(&(trace_id.clone(), process.span_id.clone()))),
            "no transaction of {stage} links to its record"
        );
    }
    Ok(trace_id)
}

/// No exported span attribute holds a phone number.
fn spans_hold_no_number(spans: &[ReceivedSpan]) {
    assert!(!spans.is_empty(), "no span was exported");
    for span in spans {
        for (key, value) in &span.attributes {
            for number in [USER, WHATSAPP_USER, INVALID_USER, SI_NUMBER] {
                assert!(
                    !value.contains(&number[2..]),
                    "{} span {:?} of {} holds a number in {key}: {value}",
                    span.service,
                    span.name,
                    span.trace_id
                );
            }
        }
    }
}

/// `sictl report --json` (the binary, on the test's topics) says the
/// messages Twilio accepted were sent and delivered, one opt-out and the
/// opt-ins the test caused, once egress's statuses and the delivery reports
/// of every accepted message are on their topics.
async fn report_counts_what_the_test_did(
    env: &TestEnv,
    sandbox: &SandboxHandle,
) -> anyhow::Result<()> {
    // What Twilio accepted: every send answered 2xx, by channel.
    let accepted: BTreeMap<String, &'static str> = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/Messages.json") && r.status < 300)
        .filter_map(|r| {
            let channel = if r.params.get("To")?.starts_with("whatsapp:") {
                "whatsapp"
            } else {
                "sms"
            };
            Some((r.sid?, channel))
        })
        .collect();
    let sms = accepted.values().filter(|c| **c == "sms").count();
    let whatsapp = accepted.len() - sms;
    assert!(
        sms >= 4 && whatsapp >= 1,
        "sends seen by the sandbox: {accepted:?}"
    );
    wait_for(
        "egress's ACCEPTED status of every send",
        DEADLINE,
        || async {
            let statuses = env.read_all::<DeliveryStatus>(topics::DELIVERY).await?;
            let sids: BTreeSet<String> = statuses
                .into_iter()
                .filter(|(_, s)| s.outcome == DeliveryOutcome::Accepted && s.remediation.is_none())
                .filter_map(|(_, s)| s.twilio_sid)
                .collect();
            Ok(accepted.keys().all(|sid| sids.contains(sid)).then_some(()))
        },
    )
    .await?;
    wait_for("the delivered report of every send", DEADLINE, || async {
        let events = env
            .read_all::<ConversationEvent>(topics::CONVERSATION_EVENTS)
            .await?;
        let delivered: BTreeSet<String> = events
            .into_iter()
            .filter_map(|(_, e)| e.delivery)
            .filter(|d| d.status == DeliveryState::Delivered)
            .map(|d| d.message_sid)
            .collect();
        Ok(accepted
            .keys()
            .all(|sid| delivered.contains(sid))
            .then_some(()))
    })
    .await?;

    let output = si_testkit::sictl(
        env,
        &["report", "--from", "1h", "--json", "--price-table", PRICES],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "sictl report failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "sictl report --json printed no JSON: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let count = |path: &str| report.pointer(path).and_then(serde_json::Value::as_u64);
    let total = u64::try_from(accepted.len())?;
    assert_eq!(count("/messages/sent"), Some(total), "{report:#}");
    assert_eq!(count("/messages/delivered"), Some(total), "{report:#}");
    assert_eq!(count("/messages/undelivered"), Some(0), "{report:#}");
    assert_eq!(count("/messages/failed"), Some(0), "{report:#}");
    assert_eq!(
        report
            .pointer("/messages/delivery_rate")
            .and_then(serde_json::Value::as_f64),
        Some(1.0)
    );
    assert_eq!(count("/by_channel/sms/sent"), Some(u64::try_from(sms)?));
    assert_eq!(
        count("/by_channel/whatsapp/delivered"),
        Some(u64::try_from(whatsapp)?)
    );
    // One STOP; three users texting first (implied consent) and one START.
    assert_eq!(count("/opt_outs"), Some(1), "{report:#}");
    assert_eq!(count("/opt_ins"), Some(4), "{report:#}");
    // Every number here is in the US: the SMS segments at 0.0083, WhatsApp per message.
    let rows = report["cost"].as_array().context("cost rows")?;
    let segments: u64 = rows
        .iter()
        .filter(|r| r["channel"] == "sms")
        .map(|r| r["segments"].as_u64().unwrap_or(0))
        .sum();
    assert!(rows.iter().all(|r| r["country"] == "US"), "{rows:?}");
    let usd = report["estimated_usd"].as_f64().unwrap_or(0.0);
    let expected =
        0.0083 * f64::from(u32::try_from(segments)?) + 0.005 * f64::from(u32::try_from(whatsapp)?);
    assert!(
        (usd - expected).abs() < 1e-9,
        "{usd} != {expected}: {report:#}"
    );

    let table = si_testkit::sictl(env, &["report", "--from", "1h", "--price-table", PRICES])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("delivery rate") && table.contains("100.0%"),
        "{table}"
    );
    Ok(())
}

/// Every stage's log (start to shutdown, at trace level) is free of
/// credentials and unmasked phone numbers.
fn logs_hold_no_secret_and_no_number(
    stages: &[StageProcess],
    account_sid: &str,
) -> anyhow::Result<()> {
    let detector = LeakDetector::default()
        .secret("the Auth Token", TOKEN, Some(account_sid))
        .secret("the API key secret", API_KEY_SECRET, Some(API_KEY_SID))
        .number("the user's number", USER)
        .secret("the WhatsApp user's profile name", PROFILE_NAME, None)
        .secret(
            "the WhatsApp user's profile name (form-encoded)",
            &form_encoded(PROFILE_NAME),
            None,
        )
        .secret("the shared place's address", PLACE_ADDRESS, None)
        .secret(
            "the shared place's address (form-encoded)",
            &form_encoded(PLACE_ADDRESS),
            None,
        )
        .number("the WhatsApp user's number", WHATSAPP_USER)
        .number("the refused user's number", INVALID_USER)
        .number("Si's number", SI_NUMBER);
    let mut leaks = Vec::new();
    for stage in stages {
        let text = std::fs::read_to_string(stage.log())?;
        // The scan means something only if the stage logged verbosely.
        anyhow::ensure!(
            text.contains(r#""level":"DEBUG""#),
            "{} has no debug line",
            stage.log().display()
        );
        leaks.extend(detector.scan_file(stage.log())?);
    }
    assert!(
        leaks.is_empty(),
        "{} log lines hold a secret or an unmasked number:\n{}",
        leaks.len(),
        leaks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
