//! Calls played by the sandbox against a small stand-in for ingress that
//! answers TwiML as ingress does (disclosure + gather; accept → recording,
//! transcription and the agent stream; decline → goodbye and hang up). Every
//! webhook it gets is checked with ingress's own signature verification.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri, header};
use axum::response::IntoResponse;
use serde_json::Value;
use si_twilio_signature::{self as signature, Algorithm, Payload};
use twilio_sandbox::{
    APPLICATION_ERROR, CallOutcomes, CallRecord, GatherAnswer, InboundCall, Outcome, Sandbox,
    SandboxClient, SandboxConfig, SandboxHandle, Speaker,
};

const PUBLIC: &str = "https://si.example.test";
const ACCOUNT: &str = "AC44444444444444444444444444444444";
const TOKEN: &str = "sandbox-calls-token";
const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";
const WAIT: Duration = Duration::from_secs(10);

/// One webhook the stand-in got.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    query: String,
    params: Vec<(String, String)>,
    signed: bool,
}

impl Hook {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Hooks = Arc<Mutex<Vec<Hook>>>;

fn disclosure() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say language="en-US">Hi, this is Si. This call is recorded.</Say><Gather input="dtmf speech" numDigits="1" timeout="6" actionOnEmptyResult="true" action="{PUBLIC}/twilio/voice/gather?conversation=CH1&amp;locale=en" method="POST"><Say language="en-US">Press 1 or say yes to continue, 2 or no to stop.</Say></Gather></Response>"#
    )
}

fn after_choice(accepted: bool) -> String {
    if accepted {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Thank you. Connecting you to Si.</Say><Start><Recording recordingStatusCallback="{PUBLIC}/twilio/voice/recording?conversation=CH1" recordingStatusCallbackEvent="completed"/></Start><Start><Transcription statusCallbackUrl="{PUBLIC}/twilio/voice/transcription?conversation=CH1" track="both_tracks" languageCode="en-US"/></Start><Connect><Stream url="wss://voice.example.test/agent"><Parameter name="conversation" value="CH1"/><Parameter name="locale" value="en"/></Stream></Connect></Response>"#
        )
    } else {
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>No problem, we continue by text message.</Say><Hangup/></Response>"#.to_owned()
    }
}

/// Starts the stand-in for ingress; returns its base URL and what it got.
async fn start_ingress() -> anyhow::Result<(String, Hooks)> {
    let hooks: Hooks = Arc::default();
    let seen = hooks.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let seen = seen.clone();
        async move {
            let params: Vec<(String, String)> =
                form_urlencoded::parse(&body).into_owned().collect();
            let url = format!(
                "{PUBLIC}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            );
            let signed = signature::verify(
                &url,
                Payload::Form(&params),
                headers
                    .get("x-twilio-signature")
                    .and_then(|v| v.to_str().ok()),
                Some(Algorithm::HmacSha1),
                &[TOKEN],
            )
            .is_ok();
            let hook = Hook {
                path: uri.path().to_owned(),
                query: uri.query().unwrap_or_default().to_owned(),
                params,
                signed,
            };
            let twiml = match hook.path.as_str() {
                "/twilio/voice/answer" => Some(disclosure()),
                "/twilio/voice/gather" => {
                    let yes = hook.get("Digits") == Some("1")
                        || hook
                            .get("SpeechResult")
                            .is_some_and(|s| s.to_lowercase().contains("yes"));
                    Some(after_choice(yes))
                }
                "/broken/answer" => Some("<Response><Say>unclosed</Response>".to_owned()),
                _ => None,
            };
            seen.lock().expect("hooks").push(hook);
            match twiml {
                Some(xml) => ([(header::CONTENT_TYPE, "text/xml")], xml).into_response(),
                None => "ok".into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), hooks))
}

async fn sandbox(ingress: &str, outcomes: CallOutcomes) -> anyhow::Result<SandboxHandle> {
    Sandbox::start(SandboxConfig {
        account_sid: ACCOUNT.into(),
        auth_token: TOKEN.into(),
        callback_url: Some(ingress.to_owned()),
        public_url: Some(PUBLIC.into()),
        call_outcomes: outcomes,
        ..SandboxConfig::default()
    })
    .await
}

fn answer_by_default() -> CallOutcomes {
    CallOutcomes {
        default: Some(Outcome::Answer),
        ..CallOutcomes::default()
    }
}

/// Creates a call as egress does; returns its SID.
async fn create_call(
    sandbox: &SandboxHandle,
    url: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut form = vec![
        ("To", USER),
        ("From", OURS),
        ("Url", url),
        (
            "StatusCallback",
            "https://si.example.test/twilio/voice/status?op=1",
        ),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
        ("StatusCallbackEvent", "completed"),
    ];
    if !extra.iter().any(|(name, _)| *name == "Timeout") {
        form.push(("Timeout", "20"));
    }
    form.extend_from_slice(extra);
    let response = reqwest::Client::new()
        .post(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
            sandbox.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 201, "{}", response.status());
    let body: Value = response.json().await?;
    Ok(body["sid"].as_str().unwrap_or_default().to_owned())
}

async fn end_call(sandbox: &SandboxHandle, sid: &str, status: &str) -> anyhow::Result<u16> {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json",
            sandbox.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("Status", status)])
        .send()
        .await?;
    Ok(response.status().as_u16())
}

async fn ended(sandbox: &SandboxHandle, sid: &str) -> anyhow::Result<CallRecord> {
    sandbox.wait_for_call(sid, WAIT, CallRecord::ended).await
}

fn hooks_at(hooks: &Hooks, path: &str) -> Vec<Hook> {
    hooks
        .lock()
        .expect("hooks")
        .iter()
        .filter(|h| h.path == path)
        .cloned()
        .collect()
}

/// Waits until `count` webhooks reached `path` (the closing ones follow the
/// record's end).
async fn wait_hooks(hooks: &Hooks, path: &str, count: usize) -> anyhow::Result<Vec<Hook>> {
    si_testkit::process::wait_for(&format!("{count} webhooks at {path}"), WAIT, || async {
        let got = hooks_at(hooks, path);
        Ok((got.len() >= count).then_some(got))
    })
    .await
}

fn statuses(hooks: &[Hook]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| h.get("CallStatus").unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_accepted_call_goes_through_disclosure_recording_transcription_and_hangs_up()
-> anyhow::Result<()> {
    let (ingress, hooks) = start_ingress().await?;
    let sandbox = sandbox(&ingress, answer_by_default()).await?;
    let sid = create_call(
        &sandbox,
        &format!("{PUBLIC}/twilio/voice/answer?conversation=CH1"),
        &[],
    )
    .await?;

    let gathering = sandbox.wait_for_call(&sid, WAIT, |c| c.gathering).await?;
    assert_eq!(gathering.status, "in-progress");
    assert_eq!(
        gathering.heard,
        [
            "Hi, this is Si. This call is recorded.",
            "Press 1 or say yes to continue, 2 or no to stop."
        ]
    );
    sandbox.answer_gather(&sid, GatherAnswer::digits("1"))?;
    let connected = sandbox.wait_for_call(&sid, WAIT, |c| c.connected).await?;
    let stream = connected.stream.clone().expect("the agent stream");
    assert_eq!(stream.url, "wss://voice.example.test/agent");
    assert_eq!(
        stream.parameters,
        [
            ("conversation".to_owned(), "CH1".to_owned()),
            ("locale".to_owned(), "en".to_owned())
        ]
    );
    let verbs: Vec<&str> = connected
        .steps
        .iter()
        .map(|s| s.element.name.as_str())
        .collect();
    assert_eq!(verbs, ["Say", "Gather", "Say", "Start", "Start", "Connect"]);

    sandbox.say(&sid, Speaker::User, "What's my balance?")?;
    sandbox.say(&sid, Speaker::Si, "Your balance is 12 dollars.")?;
    sandbox
        .wait_for_call(&sid, WAIT, |c| c.utterances.len() == 2)
        .await?;
    // Hung up through the REST API, as egress does.
    assert_eq!(end_call(&sandbox, &sid, "completed").await?, 200);
    let call = ended(&sandbox, &sid).await?;
    assert_eq!(call.status, "completed");
    assert!(call.errors.is_empty(), "{:?}", call.errors);
    assert!(call.utterances.iter().all(|u| u.transcribed));

    // Status callbacks: Twilio's order, numbered, signed.
    let status = wait_hooks(&hooks, "/twilio/voice/status", 4).await?;
    assert_eq!(
        statuses(&status),
        ["initiated", "ringing", "in-progress", "completed"]
    );
    for (i, hook) in status.iter().enumerate() {
        assert!(hook.signed, "{hook:?}");
        assert_eq!(hook.query, "op=1");
        assert_eq!(hook.get("SequenceNumber"), Some(i.to_string().as_str()));
        assert_eq!(hook.get("CallSid"), Some(sid.as_str()));
        assert_eq!(hook.get("AccountSid"), Some(ACCOUNT));
        assert_eq!(hook.get("Direction"), Some("outbound-api"));
        assert_eq!(hook.get("CallbackSource"), Some("call-progress-events"));
        assert_eq!(hook.get("ApiVersion"), Some("2010-04-01"));
        assert_eq!(hook.get("From"), Some(OURS));
        assert_eq!(hook.get("To"), Some(USER));
        assert!(hook.get("Timestamp").is_some());
        assert_eq!(hook.get("AnsweredBy"), None, "no machine detection asked");
    }
    assert!(status[3].get("CallDuration").is_some() && status[3].get("Duration").is_some());
    assert_eq!(status[0].get("CallDuration"), None);

    // The answer URL, fetched signed with the voice request parameters.
    let answer = &hooks_at(&hooks, "/twilio/voice/answer")[0];
    assert!(answer.signed);
    assert_eq!(answer.query, "conversation=CH1");
    assert_eq!(answer.get("CallStatus"), Some("in-progress"));
    assert_eq!(answer.get("Caller"), Some(OURS));
    assert_eq!(answer.get("Called"), Some(USER));
    // The gather's action got the digit.
    let gather = &hooks_at(&hooks, "/twilio/voice/gather")[0];
    assert!(gather.signed);
    assert_eq!(gather.query, "conversation=CH1&locale=en");
    assert_eq!(gather.get("Digits"), Some("1"));
    assert_eq!(gather.get("SpeechResult"), None);

    // Recording completed after the hang-up.
    let recording = &wait_hooks(&hooks, "/twilio/voice/recording", 1).await?[0];
    assert!(recording.signed);
    assert_eq!(recording.get("RecordingStatus"), Some("completed"));
    assert_eq!(recording.get("CallSid"), Some(sid.as_str()));
    assert_eq!(recording.get("RecordingSid"), call.recording_sid.as_deref());
    assert!(
        recording
            .get("RecordingUrl")
            .is_some_and(|u| u.ends_with(call.recording_sid.as_deref().unwrap_or("?")))
    );
    assert_eq!(recording.get("RecordingChannels"), Some("1"));
    assert_eq!(
        recording.get("RecordingSource"),
        Some("StartCallRecordingTwiML")
    );
    assert!(recording.get("RecordingDuration").is_some());

    // Transcription: started, one content per utterance, stopped.
    let transcription = wait_hooks(&hooks, "/twilio/voice/transcription", 4).await?;
    let events: Vec<&str> = transcription
        .iter()
        .map(|h| h.get("TranscriptionEvent").unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        [
            "transcription-started",
            "transcription-content",
            "transcription-content",
            "transcription-stopped"
        ]
    );
    for (i, hook) in transcription.iter().enumerate() {
        assert!(hook.signed);
        assert_eq!(hook.get("SequenceId"), Some((i + 1).to_string().as_str()));
        assert_eq!(
            hook.get("TranscriptionSid"),
            call.transcription_sid.as_deref()
        );
        assert_eq!(hook.get("CallSid"), Some(sid.as_str()));
    }
    let content = &transcription[1];
    assert_eq!(content.get("Track"), Some("inbound_track"));
    assert_eq!(content.get("Final"), Some("true"));
    assert_eq!(content.get("LanguageCode"), Some("en-US"));
    let data: Value = serde_json::from_str(content.get("TranscriptionData").unwrap_or("{}"))?;
    assert_eq!(data["transcript"], "What's my balance?");
    assert!(data["confidence"].as_f64().is_some());
    assert_eq!(transcription[2].get("Track"), Some("outbound_track"));

    // Once over, the call takes no more controls, and the REST API says so.
    assert!(sandbox.hang_up(&sid).is_err());
    assert_eq!(end_call(&sandbox, &sid, "completed").await?, 400);
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn gather_answers_reach_the_action_with_twilios_parameters() -> anyhow::Result<()> {
    let (ingress, hooks) = start_ingress().await?;
    let sandbox = sandbox(&ingress, answer_by_default()).await?;
    let url = format!("{PUBLIC}/twilio/voice/answer");

    // 2: declined, the document hangs up.
    let declined = create_call(&sandbox, &url, &[]).await?;
    sandbox.answer_gather(&declined, GatherAnswer::digits("2"))?;
    let call = ended(&sandbox, &declined).await?;
    assert_eq!(call.status, "completed");
    assert_eq!(
        call.heard.last().map(String::as_str),
        Some("No problem, we continue by text message.")
    );
    assert_eq!(
        call.steps.last().map(|s| s.element.name.as_str()),
        Some("Hangup")
    );
    assert!(call.recording_sid.is_none());

    // A phrase.
    let spoken = create_call(&sandbox, &url, &[]).await?;
    sandbox.answer_gather(
        &spoken,
        GatherAnswer {
            speech: Some("Yes, please".into()),
            confidence: Some(0.81),
            ..GatherAnswer::default()
        },
    )?;
    sandbox
        .wait_for_call(&spoken, WAIT, |c| c.connected)
        .await?;
    sandbox.hang_up(&spoken)?;
    assert_eq!(ended(&sandbox, &spoken).await?.status, "completed");

    // Silence: actionOnEmptyResult sends the empty result.
    let silent = create_call(&sandbox, &url, &[]).await?;
    sandbox.answer_gather(&silent, GatherAnswer::silence())?;
    ended(&sandbox, &silent).await?;

    let gathers = hooks_at(&hooks, "/twilio/voice/gather");
    let of = |sid: &str| {
        gathers
            .iter()
            .find(|h| h.get("CallSid") == Some(sid))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no gather action for {sid}"))
    };
    let two = of(&declined)?;
    assert!(two.signed);
    assert_eq!(two.get("Digits"), Some("2"));
    let phrase = of(&spoken)?;
    assert_eq!(phrase.get("SpeechResult"), Some("Yes, please"));
    assert_eq!(phrase.get("Confidence"), Some("0.81"));
    assert_eq!(phrase.get("Digits"), None);
    let nothing = of(&silent)?;
    assert!(nothing.signed);
    assert_eq!(nothing.get("Digits"), None);
    assert_eq!(nothing.get("SpeechResult"), None);
    assert_eq!(nothing.get("CallStatus"), Some("in-progress"));
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unparseable_twiml_is_an_error_and_the_call_ends() -> anyhow::Result<()> {
    let (ingress, hooks) = start_ingress().await?;
    let sandbox = sandbox(&ingress, answer_by_default()).await?;
    let sid = create_call(&sandbox, &format!("{PUBLIC}/broken/answer"), &[]).await?;
    let call = ended(&sandbox, &sid).await?;
    assert_eq!(call.status, "completed");
    assert_eq!(call.errors.len(), 1, "{:?}", call.errors);
    assert_eq!(call.errors[0].code, 12100);
    assert_eq!(call.heard, [APPLICATION_ERROR]);
    let status = wait_hooks(&hooks, "/twilio/voice/status", 4).await?;
    assert_eq!(
        status.last().and_then(|h| h.get("CallStatus")),
        Some("completed")
    );

    // An answer URL that is not there: 11200.
    let missing = create_call(&sandbox, "http://127.0.0.1:9/nowhere", &[]).await?;
    let call = ended(&sandbox, &missing).await?;
    assert_eq!(call.errors.first().map(|e| e.code), Some(11200));
    // And the control API shows the errors.
    let client = SandboxClient::new(&sandbox.base_url());
    let shown = client.call(&sid).await?.expect("kept");
    assert_eq!(shown.errors[0].code, 12100);
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_answer_busy_failed_and_machine_outcomes() -> anyhow::Result<()> {
    let (ingress, hooks) = start_ingress().await?;
    // No default: every call rings until told.
    let sandbox = sandbox(&ingress, CallOutcomes::default()).await?;
    let url = format!("{PUBLIC}/twilio/voice/answer");
    for (outcome, status) in [
        (Outcome::NoAnswer, "no-answer"),
        (Outcome::Busy, "busy"),
        (Outcome::Failed, "failed"),
    ] {
        let sid = create_call(&sandbox, &url, &[]).await?;
        sandbox
            .wait_for_call(&sid, WAIT, |c| c.status == "ringing")
            .await?;
        sandbox.ring(&sid, outcome)?;
        let call = ended(&sandbox, &sid).await?;
        assert_eq!(call.status, status);
        assert!(call.answered_ms.is_none() && call.steps.is_empty());
        let last = si_testkit::process::wait_for("the final callback", WAIT, || async {
            Ok(hooks_at(&hooks, "/twilio/voice/status")
                .into_iter()
                .filter(|h| h.get("CallSid") == Some(sid.as_str()))
                .find(|h| h.get("CallStatus") == Some(status)))
        })
        .await?;
        assert_eq!(last.get("CallDuration"), Some("0"));
        assert_eq!(
            last.get("SequenceNumber"),
            Some("2"),
            "after initiated and ringing"
        );
    }
    // Nobody answers before the Timeout.
    let sid = create_call(&sandbox, &url, &[("Timeout", "1")]).await?;
    assert_eq!(ended(&sandbox, &sid).await?.status, "no-answer");

    // A machine answers: AnsweredBy, and its gather hears silence.
    sandbox.set_call_outcomes(CallOutcomes {
        by_number: [(USER.to_owned(), Outcome::Machine)].into(),
        ..CallOutcomes::default()
    });
    let sid = create_call(&sandbox, &url, &[("MachineDetection", "Enable")]).await?;
    let call = ended(&sandbox, &sid).await?;
    assert_eq!(call.answered_by.as_deref(), Some("machine_start"));
    let answered = hooks_at(&hooks, "/twilio/voice/status")
        .into_iter()
        .find(|h| {
            h.get("CallSid") == Some(sid.as_str()) && h.get("CallStatus") == Some("in-progress")
        })
        .ok_or_else(|| anyhow::anyhow!("no answered callback"))?;
    assert_eq!(answered.get("AnsweredBy"), Some("machine_start"));
    let gather = hooks_at(&hooks, "/twilio/voice/gather")
        .into_iter()
        .find(|h| h.get("CallSid") == Some(sid.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no gather action"))?;
    assert_eq!(gather.get("Digits"), None);
    assert_eq!(gather.get("AnsweredBy"), Some("machine_start"));

    // A ringing call canceled through the REST API.
    sandbox.set_call_outcomes(CallOutcomes::default());
    let sid = create_call(&sandbox, &url, &[]).await?;
    sandbox
        .wait_for_call(&sid, WAIT, |c| c.status == "ringing")
        .await?;
    assert_eq!(end_call(&sandbox, &sid, "canceled").await?, 200);
    assert_eq!(ended(&sandbox, &sid).await?.status, "canceled");
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_inbound_call_through_the_control_api() -> anyhow::Result<()> {
    let (ingress, hooks) = start_ingress().await?;
    let sandbox = sandbox(&ingress, answer_by_default()).await?;
    let client = SandboxClient::new(&sandbox.base_url());
    let sid = client
        .place_inbound_call(&InboundCall {
            from: USER.into(),
            to: OURS.into(),
            answers: vec![GatherAnswer::speech("yes")],
            ..InboundCall::default()
        })
        .await?;
    client.wait_for_call(&sid, WAIT, |c| c.connected).await?;
    client.say(&sid, Speaker::User, "hello").await?;
    client
        .wait_for_call(&sid, WAIT, |c| !c.utterances.is_empty())
        .await?;
    client.hang_up(&sid).await?;
    let call = client.wait_for_call(&sid, WAIT, CallRecord::ended).await?;
    assert_eq!(call.direction, "inbound");
    assert!(client.calls().await?.iter().any(|c| c.sid == sid));

    let answer = &hooks_at(&hooks, "/twilio/voice/answer")[0];
    assert!(answer.signed);
    assert_eq!(answer.get("Direction"), Some("inbound"));
    assert_eq!(answer.get("CallStatus"), Some("ringing"));
    assert_eq!(answer.get("From"), Some(USER));
    // The countries of the numbers (ingress picks the call's locale by them).
    assert_eq!(answer.get("FromCountry"), Some("US"));
    assert_eq!(answer.get("CallerCountry"), Some("US"));
    assert_eq!(answer.get("ToCountry"), Some("US"));
    // The number's status callback gets completed only.
    let status = wait_hooks(&hooks, "/twilio/voice/status", 1).await?;
    assert_eq!(statuses(&status), ["completed"]);
    wait_hooks(&hooks, "/twilio/voice/recording", 1).await?;

    // Outcomes through the client.
    let outcomes = CallOutcomes {
        default: None,
        by_number: [(USER.to_owned(), Outcome::Busy)].into(),
    };
    client.set_call_outcomes(&outcomes).await?;
    assert_eq!(client.call_outcomes().await?, outcomes);
    assert!(client.call("CAnope").await?.is_none());
    sandbox.shutdown().await;
    Ok(())
}
