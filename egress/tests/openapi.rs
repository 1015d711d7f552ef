//! Conformance: every request egress builds, for every operation kind and
//! its variants, is one Twilio's own OpenAPI description (twilio-oai, fetched
//! by `dev/twilio-oai`) allows: a described POST path, described form
//! parameters only, the required ones present, enumerated values valid.
//! The oracle is shown to catch malformed requests first.
//!
//! ```sh
//! dev/twilio-oai && cargo test -p si-egress --test openapi
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use si_egress::twilio::{Endpoints, build_request, build_request_with_media};
use si_schemas::records::{CallRequest, Channel, OperationKind, OutboundOperation};
use si_testkit::openapi::TwilioOpenApi;

const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";

fn endpoints() -> Endpoints {
    Endpoints {
        api_base: "https://api.twilio.com".into(),
        conversations_base: "https://conversations.twilio.com".into(),
        account_sid: "AC00000000000000000000000000000000".into(),
        status_callback: Some("https://si.example.com/twilio/messaging/status".into()),
        media: Some(si_runtime::media_url::Signer::new(
            "https://si.example.com",
            si_runtime::media_url::UrlKey::new(&"k".repeat(32)).unwrap(),
            std::time::Duration::from_secs(600),
        )),
        mcs_media: Some(
            "https://mcs.us1.twilio.com/v1/Services/IS00000000000000000000000000000000/Media"
                .into(),
        ),
    }
}

fn op(kind: OperationKind) -> OutboundOperation {
    OutboundOperation {
        operation_id: "op-1".into(),
        conversation_id: "CH00000000000000000000000000000001".into(),
        kind,
        channel: Channel::Sms,
        sender_key: format!("sms:{OURS}"),
        to: Some(USER.into()),
        from: Some(OURS.into()),
        messaging_service_sid: None,
        body: Some("hello".into()),
        media_urls: vec![],
        content_sid: None,
        content_variables_json: None,
        response_id: None,
        part_index: 0,
        part_count: 1,
        segments: None,
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::new(),
        created_at: 0,
        not_after: None,
        traceparent: None,
    }
}

fn path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Every kind, with the variants that change the form.
fn operations() -> Vec<(&'static str, OutboundOperation)> {
    let mut all = Vec::new();
    let mut sms = op(OperationKind::SendMessage);
    // A public URL and one of Si's store (sent signed).
    sms.media_urls = vec![
        "https://m.example.com/1.png".into(),
        "si-media:out/CH1/chart.png".into(),
    ];
    sms.params.insert("ValidityPeriod".into(), "600".into());
    sms.params.insert("si.purpose".into(), "consent".into());
    all.push(("SMS with media and a validity period", sms));
    let mut service = op(OperationKind::SendMessage);
    service.channel = Channel::Whatsapp;
    service.messaging_service_sid = Some("MG00000000000000000000000000000001".into());
    service.from = None;
    service.body = None;
    service.content_sid = Some("HX00000000000000000000000000000001".into());
    service.content_variables_json = Some(r#"{"1":"Ana"}"#.into());
    all.push(("WhatsApp template through a messaging service", service));
    let mut conversation = op(OperationKind::SendConversationMessage);
    conversation.to = None;
    conversation.from = None;
    all.push(("Conversations message", conversation));
    let mut template = op(OperationKind::SendConversationMessage);
    template.body = None;
    template.content_sid = Some("HX00000000000000000000000000000001".into());
    template.content_variables_json = Some(r#"{"1":"Ana"}"#.into());
    all.push(("Conversations template", template));
    // What lifecycle writes for START_CONVERSATION and closure.
    let mut create = op(OperationKind::CreateConversation);
    create.body = None;
    create.to = None;
    create.from = None;
    create.messaging_service_sid = Some("MG00000000000000000000000000000001".into());
    create
        .params
        .insert("UniqueName".into(), "outreach-0001".into());
    create
        .params
        .insert("si.purpose".into(), "lifecycle".into());
    all.push(("create a conversation with a UniqueName", create));
    let mut add = op(OperationKind::AddParticipant);
    add.body = None;
    all.push(("add the SMS participant", add));
    let mut add_whatsapp = op(OperationKind::AddParticipant);
    add_whatsapp.channel = Channel::Whatsapp;
    add_whatsapp.body = None;
    all.push(("add a WhatsApp participant", add_whatsapp));
    let mut close = op(OperationKind::CloseConversation);
    close.body = None;
    close.to = None;
    close.from = None;
    all.push(("close a conversation", close));
    let mut call = op(OperationKind::CreateCall);
    call.channel = Channel::Voice;
    call.body = None;
    call.call = Some(CallRequest {
        twiml_url: "https://si.example.com/twilio/voice/answer?conversation=CH1".into(),
        status_callback_url: Some("https://si.example.com/twilio/voice/status".into()),
        record: true,
        timeout_seconds: Some(30),
        machine_detection: Some("Enable".into()),
    });
    all.push(("a call with every option", call));
    let mut end = op(OperationKind::EndCall);
    end.channel = Channel::Voice;
    end.body = None;
    end.params.insert(
        si_egress::twilio::CALL_SID_PARAM.into(),
        "CA00000000000000000000000000000001".into(),
    );
    all.push(("end a call", end));
    all
}

#[test]
fn the_oracle_refuses_malformed_requests() {
    let oai = TwilioOpenApi::load().unwrap();
    let messages = "/2010-04-01/Accounts/AC1/Messages.json";
    let ok = strings(&[("To", USER), ("From", OURS), ("Body", "hi")]);
    assert_eq!(oai.check_post(messages, &ok, &[]), Ok(()));
    let misspelt = strings(&[("To", USER), ("Frm", OURS), ("Body", "hi")]);
    let violations = oai.check_post(messages, &misspelt, &[]).unwrap_err();
    assert!(violations[0].contains("Frm"), "{violations:?}");
    let no_to = strings(&[("From", OURS), ("Body", "hi")]);
    let violations = oai.check_post(messages, &no_to, &[]).unwrap_err();
    assert!(
        violations
            .iter()
            .any(|v| v.contains("required parameter To")),
        "{violations:?}"
    );
    let bad_enum = strings(&[("To", USER), ("Body", "hi"), ("ScheduleType", "sometime")]);
    let violations = oai.check_post(messages, &bad_enum, &[]).unwrap_err();
    assert!(violations[0].contains("ScheduleType"), "{violations:?}");
    let bad_flag = strings(&[
        ("To", USER),
        ("From", OURS),
        ("Url", "https://x.example.com/"),
        ("Record", "yes"),
    ]);
    let calls = "/2010-04-01/Accounts/AC1/Calls.json";
    let violations = oai.check_post(calls, &bad_flag, &[]).unwrap_err();
    assert!(violations[0].contains("Record"), "{violations:?}");
    let state = strings(&[("State", "open")]);
    assert!(
        oai.check_post("/v1/Conversations/CH1", &state, &[])
            .is_err()
    );
    assert!(oai.check_post("/v1/Nope", &[], &[]).is_err());
    let header = strings(&[("X-Twilio-Webhook-Enabled", "maybe")]);
    assert!(
        oai.check_post(
            "/v1/Conversations/CH1/Messages",
            &strings(&[("Body", "x")]),
            &header
        )
        .is_err()
    );
}

#[test]
fn every_request_egress_builds_is_one_twilio_describes() {
    let oai = TwilioOpenApi::load().unwrap();
    let mut failures = Vec::new();
    for (what, operation) in operations() {
        let request =
            build_request(&endpoints(), &operation).unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Err(violations) = oai.check_post(path(&request.url), &request.form, &[]) {
            failures.push(format!("{what}: {violations:#?}"));
        }
    }
    // A Conversations message with its media uploaded: named by MediaSid.
    let mut media = op(OperationKind::SendConversationMessage);
    media.to = None;
    media.from = None;
    media.media_urls = vec!["si-media:out/CH1/chart.png".into()];
    let request = build_request_with_media(
        &endpoints(),
        &media,
        None,
        Some("ME00000000000000000000000000000001"),
    )
    .unwrap();
    assert!(request.form.iter().any(|(n, _)| n == "MediaSid"));
    if let Err(violations) = oai.check_post(path(&request.url), &request.form, &[]) {
        failures.push(format!("Conversations message with media: {violations:#?}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
