//! The sandbox's Twilio API, control API, rate limit and faults, in-process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use serde_json::Value;
use si_testkit::process::wait_for;
use si_twilio_signature::{self as signature, Algorithm, Payload};
use twilio_sandbox::{Faults, InboundSms, Sandbox, SandboxConfig, SandboxHandle};

const ACCOUNT: &str = "AC11111111111111111111111111111111";
const TOKEN: &str = "sandbox-test-token";
const USER: &str = "+14155550100";
const OURS: &str = "+14155550199";

fn config() -> SandboxConfig {
    SandboxConfig {
        account_sid: ACCOUNT.into(),
        auth_token: TOKEN.into(),
        api_key: Some((
            "SK22222222222222222222222222222222".into(),
            "key-secret".into(),
        )),
        callbacks: false,
        ..SandboxConfig::default()
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(sandbox: &SandboxHandle) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sandbox.base_url(),
        }
    }

    async fn post_as(
        &self,
        path: &str,
        params: &[(&str, &str)],
        user: &str,
        password: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(user, Some(password))
            .header("X-Si-Operation-Id", "op-1")
            .form(params)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    async fn post(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        self.post_as(path, params, ACCOUNT, TOKEN).await
    }

    async fn send_sms(&self, params: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        self.post(&messages_path(), params).await
    }
}

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
}

fn assert_error(got: &(u16, Value), status: u16, code: u64) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert_eq!(got.1["status"], status, "{}", got.1);
    assert_eq!(
        got.1["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn a_message_is_accepted_and_recorded() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let (status, body) = client
        .send_sms(&[("To", USER), ("From", OURS), ("Body", &"a".repeat(161))])
        .await?;
    assert_eq!(status, 201, "{body}");
    let sid = body["sid"].as_str().unwrap_or_default().to_owned();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["num_segments"], "2");
    assert_eq!(body["account_sid"], ACCOUNT);
    assert_eq!(body["to"], USER);

    // With a messaging service instead of From, and an API key.
    let (status, body) = client
        .post_as(
            &messages_path(),
            &[
                ("To", USER),
                ("MessagingServiceSid", "MG1"),
                ("ContentSid", "HX1"),
                ("ContentVariables", r#"{"1":"x"}"#),
            ],
            "SK22222222222222222222222222222222",
            "key-secret",
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "accepted");

    let requests = sandbox.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].seq, 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, messages_path());
    assert_eq!(requests[0].params["To"], USER);
    assert_eq!(requests[0].operation_id.as_deref(), Some("op-1"));
    assert_eq!(requests[0].sender.as_deref(), Some(OURS));
    assert_eq!(requests[0].status, 201);
    assert_eq!(requests[0].sid.as_deref(), Some(sid.as_str()));
    assert_eq!(requests[1].sender.as_deref(), Some("MG1"));
    // Both carried operation id op-1 and both created a message: a duplicate.
    assert_eq!(
        sandbox.duplicates(),
        std::collections::BTreeMap::from([("op-1".to_owned(), 2)])
    );

    // The control API shows the same, and clears.
    let http = reqwest::Client::new();
    let listed: Vec<Value> = http
        .get(format!("{}/_sandbox/requests", sandbox.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["operation_id"], "op-1");
    assert_eq!(listed[0]["params"]["From"], OURS);
    assert_eq!(listed[0]["error_code"], Value::Null);
    let since: Vec<Value> = http
        .get(format!("{}/_sandbox/requests?since=1", sandbox.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(since.len(), 1);
    // The Rust client pages the same way.
    let control = twilio_sandbox::SandboxClient::new(&sandbox.base_url());
    let all = control.requests(None).await?;
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(all[1].sid, requests[1].sid);
    let newer = control.requests(Some(1)).await?;
    assert_eq!(newer.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    assert!(control.requests(Some(2)).await?.is_empty());
    let cleared = http
        .delete(format!("{}/_sandbox/requests", sandbox.base_url()))
        .send()
        .await?;
    assert_eq!(cleared.status(), 204);
    assert!(sandbox.requests().is_empty());
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_credentials_get_20003() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let params = [("To", USER), ("From", OURS), ("Body", "hi")];
    let path = messages_path();
    assert_error(
        &client.post_as(&path, &params, ACCOUNT, "wrong").await?,
        401,
        20003,
    );
    assert_error(
        &client.post_as(&path, &params, "AC0", TOKEN).await?,
        401,
        20003,
    );
    assert_error(
        &client
            .post_as(&path, &params, "SK22222222222222222222222222222222", TOKEN)
            .await?,
        401,
        20003,
    );
    // Another account in the path, with valid credentials.
    assert_error(
        &client
            .post("/2010-04-01/Accounts/AC9/Messages.json", &params)
            .await?,
        401,
        20003,
    );
    // No Authorization header at all, with Twilio's challenge.
    let response = reqwest::Client::new()
        .post(format!("{}{path}", sandbox.base_url()))
        .form(&params)
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await?;
    assert_eq!(body["code"], 20003);
    // Conversations too.
    assert_error(
        &client
            .post_as("/v1/Conversations", &[], ACCOUNT, "wrong")
            .await?,
        401,
        20003,
    );
    let log = sandbox.requests();
    assert_eq!(log.len(), 6);
    assert!(
        log.iter()
            .all(|r| r.status == 401 && r.error_code == Some(20003))
    );
    Ok(())
}

/// Parameters, expected HTTP status, expected Twilio code.
type Case<'a> = (&'a [(&'a str, &'a str)], u16, u64);

#[tokio::test]
async fn missing_and_invalid_parameters_get_twilio_codes() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxConfig {
        invalid_numbers: vec!["+14155550666".into()],
        opted_out_numbers: vec!["+14155550777".into()],
        ..config()
    })
    .await?;
    let client = Client::new(&sandbox);
    let cases: &[Case] = &[
        (&[("From", OURS), ("Body", "hi")], 400, 21604),
        (&[("To", USER), ("Body", "hi")], 400, 21603),
        (&[("To", USER), ("From", OURS)], 400, 21602),
        (&[("To", USER), ("From", OURS), ("Body", "")], 400, 21602),
        (
            &[("To", "4155550100"), ("From", OURS), ("Body", "hi")],
            400,
            21211,
        ),
        (
            &[("To", "+1415"), ("From", OURS), ("Body", "hi")],
            400,
            21211,
        ),
        (
            &[("To", "+15005550001"), ("From", OURS), ("Body", "hi")],
            400,
            21211,
        ),
        (
            &[("To", "+14155550666"), ("From", OURS), ("Body", "hi")],
            400,
            21211,
        ),
        (
            &[
                ("To", "whatsapp:+14155550666"),
                ("From", "whatsapp:+14155550199"),
                ("Body", "hi"),
            ],
            400,
            21211,
        ),
        (
            &[("To", "+15005550004"), ("From", OURS), ("Body", "hi")],
            400,
            21610,
        ),
        (
            &[("To", "+14155550777"), ("From", OURS), ("Body", "hi")],
            400,
            21610,
        ),
        (
            &[("To", USER), ("From", "nope"), ("Body", "hi")],
            400,
            21212,
        ),
        (
            &[
                ("To", USER),
                ("From", OURS),
                ("ContentSid", "HX1"),
                ("ContentVariables", "{x"),
            ],
            400,
            21656,
        ),
    ];
    for (params, status, code) in cases {
        let got = client.send_sms(params).await?;
        assert_error(&got, *status, *code);
    }
    let long = "a".repeat(1601);
    assert_error(
        &client
            .send_sms(&[("To", USER), ("From", OURS), ("Body", &long)])
            .await?,
        400,
        21617,
    );
    // Media alone is a message.
    let (status, _) = client
        .send_sms(&[("To", USER), ("From", OURS), ("MediaUrl", "https://m/1")])
        .await?;
    assert_eq!(status, 201);

    // Calls.
    let calls = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json");
    assert_error(
        &client
            .post(&calls, &[("From", OURS), ("Url", "https://x")])
            .await?,
        400,
        21201,
    );
    assert_error(
        &client
            .post(&calls, &[("To", USER), ("Url", "https://x")])
            .await?,
        400,
        21213,
    );
    assert_error(
        &client.post(&calls, &[("To", USER), ("From", OURS)]).await?,
        400,
        21205,
    );
    assert_error(
        &client
            .post(
                &calls,
                &[("To", "+15005550001"), ("From", OURS), ("Url", "https://x")],
            )
            .await?,
        400,
        21211,
    );
    let (status, call) = client
        .post(
            &calls,
            &[("To", USER), ("From", OURS), ("Url", "https://x")],
        )
        .await?;
    assert_eq!(status, 201);
    assert!(call["sid"].as_str().is_some_and(|s| s.starts_with("CA")));

    // Unknown paths and methods.
    assert_error(
        &client
            .post("/2010-04-01/Accounts/AC1/Nope.json", &[])
            .await?,
        404,
        20404,
    );
    let get = reqwest::Client::new()
        .get(format!("{}{}", sandbox.base_url(), messages_path()))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await?;
    assert_eq!(get.status(), 405);

    // The log has the codes.
    let codes: Vec<Option<u32>> = sandbox.requests().iter().map(|r| r.error_code).collect();
    assert_eq!(codes[0], Some(21604));
    assert_eq!(codes[4], Some(21211));
    Ok(())
}

#[tokio::test]
async fn conversations_create_participants_messages_and_close() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let (status, conversation) = client
        .post(
            "/v1/Conversations",
            &[("FriendlyName", "x"), ("MessagingServiceSid", "MG1")],
        )
        .await?;
    assert_eq!(status, 201, "{conversation}");
    let ch = conversation["sid"].as_str().unwrap_or_default().to_owned();
    assert!(ch.starts_with("CH"));
    assert_eq!(conversation["state"], "active");

    let participants = format!("/v1/Conversations/{ch}/Participants");
    let binding = [
        ("MessagingBinding.Address", USER),
        ("MessagingBinding.ProxyAddress", OURS),
    ];
    let (status, participant) = client.post(&participants, &binding).await?;
    assert_eq!(status, 201, "{participant}");
    assert!(
        participant["sid"]
            .as_str()
            .is_some_and(|s| s.starts_with("MB"))
    );
    assert_eq!(participant["messaging_binding"]["address"], USER);
    assert_eq!(participant["messaging_binding"]["type"], "sms");
    // The same pair again: 50416.
    assert_error(&client.post(&participants, &binding).await?, 409, 50416);
    assert_error(&client.post(&participants, &[]).await?, 400, 20001);
    assert_error(
        &client
            .post(
                &participants,
                &[("MessagingBinding.Address", "+15005550001")],
            )
            .await?,
        400,
        21211,
    );

    let messages = format!("/v1/Conversations/{ch}/Messages");
    let (status, message) = client.post(&messages, &[("Body", "hello")]).await?;
    assert_eq!(status, 201, "{message}");
    assert!(message["sid"].as_str().is_some_and(|s| s.starts_with("IM")));
    assert_eq!(message["index"], 0);
    let (_, second) = client
        .post(&messages, &[("Body", "again"), ("Author", "si")])
        .await?;
    assert_eq!(second["index"], 1);
    assert_eq!(second["author"], "si");
    assert_error(
        &client.post(&messages, &[("Author", "si")]).await?,
        400,
        20001,
    );
    // The conversation's sender is its proxy address.
    assert_eq!(
        sandbox
            .requests()
            .last()
            .and_then(|r| r.sender.clone())
            .as_deref(),
        Some(OURS)
    );

    let (status, closed) = client
        .post(&format!("/v1/Conversations/{ch}"), &[("State", "closed")])
        .await?;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["state"], "closed");
    assert_error(
        &client
            .post(&format!("/v1/Conversations/{ch}"), &[("State", "open")])
            .await?,
        400,
        20001,
    );
    // A closed conversation frees the pair.
    let (_, other) = client.post("/v1/Conversations", &[]).await?;
    let other_sid = other["sid"].as_str().unwrap_or_default();
    let (status, _) = client
        .post(
            &format!("/v1/Conversations/{other_sid}/Participants"),
            &binding,
        )
        .await?;
    assert_eq!(status, 201);

    for path in [
        "/v1/Conversations/CHnope",
        "/v1/Conversations/CHnope/Messages",
        "/v1/Conversations/CHnope/Participants",
    ] {
        assert_error(&client.post(path, &[("Body", "x")]).await?, 404, 20404);
    }
    Ok(())
}

#[tokio::test]
async fn a_call_is_hung_up_with_status_completed() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let call =
        format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/CA0123456789abcdef0123456789abcdef.json");
    let (status, ended) = client.post(&call, &[("Status", "completed")]).await?;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["status"], "completed");
    assert_eq!(ended["sid"], "CA0123456789abcdef0123456789abcdef");
    assert_error(
        &client.post(&call, &[("Status", "ringing")]).await?,
        400,
        21218,
    );
    assert_error(&client.post(&call, &[]).await?, 400, 20001);
    let nope = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/CAnope.json");
    assert_error(
        &client.post(&nope, &[("Status", "completed")]).await?,
        404,
        20404,
    );
    Ok(())
}

#[tokio::test]
async fn a_conversation_can_be_named_by_its_unique_name_in_every_path() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let (status, created) = client
        .post("/v1/Conversations", &[("UniqueName", "outreach-0001")])
        .await?;
    assert_eq!(status, 201, "{created}");
    let ch = created["sid"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created["unique_name"], "outreach-0001");
    let (status, participant) = client
        .post(
            "/v1/Conversations/outreach-0001/Participants",
            &[
                ("MessagingBinding.Address", USER),
                ("MessagingBinding.ProxyAddress", OURS),
            ],
        )
        .await?;
    assert_eq!(status, 201, "{participant}");
    assert_eq!(participant["conversation_sid"], ch.as_str());
    let (status, message) = client
        .post(
            "/v1/Conversations/outreach-0001/Messages",
            &[("Body", "hi")],
        )
        .await?;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["conversation_sid"], ch.as_str());
    let (status, closed) = client
        .post("/v1/Conversations/outreach-0001", &[("State", "closed")])
        .await?;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["sid"], ch.as_str());
    assert_error(
        &client
            .post(
                "/v1/Conversations/outreach-0002/Messages",
                &[("Body", "hi")],
            )
            .await?,
        404,
        20404,
    );
    Ok(())
}

#[tokio::test]
async fn conversations_media_is_uploaded_then_named_by_its_sid() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let client = Client::new(&sandbox);
    let (status, created) = client.post("/v1/Conversations", &[]).await?;
    assert_eq!(status, 201, "{created}");
    let ch = created["sid"].as_str().unwrap_or_default().to_owned();
    let service = created["chat_service_sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let upload = |content_type: Option<&'static str>, auth: (&'static str, &'static str)| {
        let mut request = reqwest::Client::new()
            .post(format!(
                "{}/v1/Services/{service}/Media",
                sandbox.base_url()
            ))
            .basic_auth(auth.0, Some(auth.1))
            .body(b"\x89PNG not really".to_vec());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };
    assert_error(
        &upload(Some("image/png"), (ACCOUNT, "wrong")).await?,
        401,
        20003,
    );
    assert_error(&upload(None, (ACCOUNT, TOKEN)).await?, 400, 20001);
    let (status, media) = upload(Some("image/png"), (ACCOUNT, TOKEN)).await?;
    assert_eq!(status, 201, "{media}");
    let me = media["sid"].as_str().unwrap_or_default().to_owned();
    assert!(me.starts_with("ME"), "{media}");
    assert_eq!(
        (media["content_type"].as_str(), media["size"].as_u64()),
        (Some("image/png"), Some(15))
    );
    let content = reqwest::get(
        media["links"]["content_direct_temporary"]
            .as_str()
            .unwrap_or_default(),
    )
    .await?
    .bytes()
    .await?;
    assert_eq!(&content[..], b"\x89PNG not really");

    let messages = format!("/v1/Conversations/{ch}/Messages");
    let (status, message) = client.post(&messages, &[("MediaSid", &me)]).await?;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["media"][0]["sid"], me.as_str());
    assert_eq!(message["media"][0]["content_type"], "image/png");
    assert_error(
        &client
            .post(
                &messages,
                &[("MediaSid", "ME00000000000000000000000000000000")],
            )
            .await?,
        404,
        20404,
    );
    Ok(())
}

/// Counts, per sender, the most requests let through in any one-second window.
fn max_per_second(times: &[i64]) -> usize {
    let mut best = 0;
    for (i, start) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|t| **t - start < 1000).count();
        best = best.max(n);
    }
    best
}

#[tokio::test]
async fn the_per_sender_rate_answers_429_with_20429() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxConfig {
        rate_per_sender: Some(5),
        ..config()
    })
    .await?;
    let client = Client::new(&sandbox);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let got = client
            .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
            .await?;
        if got.0 == 429 {
            assert_error(&got, 429, 20429);
        }
        statuses.push(got.0);
    }
    // Another sender has its own budget.
    let (other, _) = client
        .send_sms(&[("To", USER), ("MessagingServiceSid", "MG9"), ("Body", "hi")])
        .await?;
    assert_eq!(other, 201);
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    assert!(statuses.contains(&429), "{statuses:?}");
    // Twelve quick requests span at most a couple of windows.
    assert!((5..=10).contains(&accepted), "{statuses:?}");
    let times: Vec<i64> = sandbox
        .requests()
        .iter()
        .filter(|r| r.status == 201 && r.sender.as_deref() == Some(OURS))
        .map(|r| r.at_ms)
        .collect();
    assert!(max_per_second(&times) <= 5, "{times:?}");

    // Lifted through the control API.
    let response = reqwest::Client::new()
        .put(format!("{}/_sandbox/rate", sandbox.base_url()))
        .json(&serde_json::json!({ "per_sender": null }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    for _ in 0..10 {
        let (status, _) = client
            .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
            .await?;
        assert_eq!(status, 201);
    }
    let bad = reqwest::Client::new()
        .put(format!("{}/_sandbox/rate", sandbox.base_url()))
        .json(&serde_json::json!({ "per_sender": 0 }))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    sandbox.set_rate(Some(1))?;
    let (first, _) = client
        .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
        .await?;
    let (second, _) = client
        .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
        .await?;
    assert_eq!((first, second), (201, 429));
    Ok(())
}

#[tokio::test]
async fn injected_faults_follow_their_rates() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxConfig {
        seed: 7,
        ..config()
    })
    .await?;
    let response = reqwest::Client::new()
        .put(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(&serde_json::json!({ "error_5xx_rate": 0.3, "rate_429": 0.1, "drop_rate": 0.1 }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(sandbox.faults().error_5xx_rate, 0.3);
    let client = Client::new(&sandbox);
    let n = 400;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let outcome = match client
            .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
            .await
        {
            Ok((status, body)) => {
                if status >= 400 {
                    let code = body["code"].as_u64().unwrap_or_default();
                    assert_eq!(
                        (status, code),
                        if status == 500 {
                            (500, 20500)
                        } else {
                            (429, 20429)
                        }
                    );
                }
                status.to_string()
            }
            // A dropped connection: no answer.
            Err(error) => {
                assert!(error.chain().any(|e| e.is::<reqwest::Error>()), "{error:#}");
                "dropped".to_owned()
            }
        };
        *counts.entry(outcome).or_default() += 1;
    }
    let share = |k: &str| counts.get(k).copied().unwrap_or_default() as f64 / f64::from(n);
    assert!((0.22..0.38).contains(&share("500")), "{counts:?}");
    assert!((0.05..0.15).contains(&share("429")), "{counts:?}");
    assert!((0.05..0.15).contains(&share("dropped")), "{counts:?}");
    assert!((0.42..0.58).contains(&share("201")), "{counts:?}");
    // The log agrees, and a dropped request did create its message.
    let log = sandbox.requests();
    assert_eq!(log.len(), n as usize);
    let dropped: Vec<_> = log.iter().filter(|r| r.status == 0).collect();
    assert_eq!(dropped.len(), counts["dropped"]);
    assert!(dropped.iter().all(|r| r.injected && r.sid.is_some()));
    assert_eq!(
        log.iter().filter(|r| r.status == 500 && r.injected).count(),
        counts["500"]
    );

    // Same seed, same faults.
    let again = Sandbox::start(SandboxConfig {
        seed: 7,
        faults: Faults {
            error_5xx_rate: 0.3,
            rate_429: 0.1,
            drop_rate: 0.1,
            latency_ms: 0,
        },
        ..config()
    })
    .await?;
    let client = Client::new(&again);
    for _ in 0..40 {
        let _ = client
            .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
            .await;
    }
    let first: Vec<u16> = log.iter().take(40).map(|r| r.status).collect();
    let second: Vec<u16> = again.requests().iter().map(|r| r.status).collect();
    assert_eq!(first, second);

    // Invalid faults are refused.
    let bad = reqwest::Client::new()
        .put(format!("{}/_sandbox/faults", again.base_url()))
        .json(&serde_json::json!({ "error_5xx_rate": 1.5 }))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let unknown = reqwest::Client::new()
        .put(format!("{}/_sandbox/faults", again.base_url()))
        .json(&serde_json::json!({ "error_rate": 0.5 }))
        .send()
        .await?;
    assert_eq!(unknown.status(), 400);
    assert!(
        again
            .set_faults(Faults {
                error_5xx_rate: 0.6,
                rate_429: 0.6,
                ..Faults::default()
            })
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn latency_delays_answers() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    sandbox.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    })?;
    let client = Client::new(&sandbox);
    let started = std::time::Instant::now();
    let (status, _) = client
        .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
        .await?;
    assert_eq!(status, 201);
    assert!(started.elapsed() >= Duration::from_millis(200));
    Ok(())
}

/// Path, parameters, and whether the signature was valid.
type Received = (String, Vec<(String, String)>, bool);

/// A stand-in receiver that checks each callback's signature with si-ingress's
/// validator, for the public URL it was signed for.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// The Auth Token signatures are checked with.
    token: Arc<Mutex<String>>,
}

const PUBLIC: &str = "https://si.example.test";

async fn start_receiver() -> anyhow::Result<(Receiver, String)> {
    let receiver = Receiver {
        got: Arc::default(),
        token: Arc::new(Mutex::new(TOKEN.to_owned())),
    };
    let store = receiver.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let store = store.clone();
        async move {
            let params: Vec<(String, String)> =
                form_urlencoded::parse(&body).into_owned().collect();
            let url = format!(
                "{PUBLIC}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            );
            let token = store
                .token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let valid = signature::verify(
                &url,
                Payload::Form(&params),
                headers
                    .get("x-twilio-signature")
                    .and_then(|v| v.to_str().ok()),
                Some(Algorithm::HmacSha1),
                &[token.as_str()],
            )
            .is_ok();
            let path = uri.path().to_owned();
            store
                .got
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((path, params, valid));
            if valid { "" } else { "forbidden" }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((receiver, url))
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A sandbox posting callbacks to `url`, signed for [`PUBLIC`].
async fn calling_back_to(url: &str) -> anyhow::Result<SandboxHandle> {
    Sandbox::start(SandboxConfig {
        callbacks: true,
        callback_url: Some(url.to_owned()),
        public_url: Some(PUBLIC.into()),
        ..config()
    })
    .await
}

#[tokio::test]
async fn after_a_promotion_webhooks_are_signed_with_the_new_primary() -> anyhow::Result<()> {
    let (receiver, url) = start_receiver().await?;
    let sandbox = calling_back_to(&url).await?;
    let client = Client::new(&sandbox);
    let sms = |body: &str| InboundSms {
        from: USER.into(),
        to: OURS.into(),
        body: body.into(),
        ..InboundSms::default()
    };
    sandbox.post_inbound_sms(&sms("before")).await?;
    let (status, created) = client.post("/v1/AuthTokens/Secondary", &[]).await?;
    assert_eq!(status, 201, "{created}");
    let new = created["secondary_auth_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sandbox.post_inbound_sms(&sms("during")).await?;
    let (status, promoted) = client.post("/v1/AuthTokens/Promote", &[]).await?;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["auth_token"], new.as_str());
    // The old token is refused from now on; the new one signs.
    assert_error(
        &client.post("/v1/AuthTokens/Promote", &[]).await?,
        401,
        20003,
    );
    *receiver
        .token
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = new.clone();
    sandbox.post_inbound_sms(&sms("after")).await?;
    let got: Vec<(String, bool)> = receiver
        .received()
        .iter()
        .map(|(_, p, valid)| (param(p, "Body").unwrap_or_default().to_owned(), *valid))
        .collect();
    assert_eq!(
        got,
        [
            ("before".to_owned(), true),
            ("during".to_owned(), true),
            ("after".to_owned(), true)
        ],
        "the primary signs until the promotion, the promoted token after it"
    );
    Ok(())
}

#[tokio::test]
async fn callbacks_are_signed_for_the_public_url() -> anyhow::Result<()> {
    let (receiver, url) = start_receiver().await?;
    let sandbox = calling_back_to(&url).await?;
    let client = Client::new(&sandbox);
    // One with the StatusCallback egress sets (public URL, with a query), one without.
    let (_, first) = client
        .send_sms(&[
            ("To", USER),
            ("From", OURS),
            ("Body", "hi"),
            (
                "StatusCallback",
                &format!("{PUBLIC}/twilio/messaging/status?op=op-1"),
            ),
        ])
        .await?;
    let (_, second) = client
        .send_sms(&[("To", USER), ("MessagingServiceSid", "MG1"), ("Body", "hi")])
        .await?;
    // A conversation message to an SMS participant.
    let (_, conversation) = client.post("/v1/Conversations", &[]).await?;
    let ch = conversation["sid"].as_str().unwrap_or_default().to_owned();
    let (_, participant) = client
        .post(
            &format!("/v1/Conversations/{ch}/Participants"),
            &[
                ("MessagingBinding.Address", USER),
                ("MessagingBinding.ProxyAddress", OURS),
            ],
        )
        .await?;
    let (_, message) = client
        .post(
            &format!("/v1/Conversations/{ch}/Messages"),
            &[("Body", "hey")],
        )
        .await?;

    let got = wait_for("six callbacks", Duration::from_secs(10), || {
        let received = receiver.received();
        async move { Ok((received.len() >= 6).then_some(received)) }
    })
    .await?;
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|(_, _, valid)| *valid), "{got:?}");
    let statuses = |sid: &str| -> Vec<String> {
        got.iter()
            .filter(|(_, p, _)| param(p, "MessageSid") == Some(sid))
            .filter_map(|(_, p, _)| {
                param(p, "MessageStatus")
                    .or_else(|| param(p, "Status"))
                    .map(str::to_owned)
            })
            .collect()
    };
    let first_sid = first["sid"].as_str().unwrap_or_default();
    assert_eq!(statuses(first_sid), ["sent", "delivered"]);
    assert_eq!(
        statuses(second["sid"].as_str().unwrap_or_default()),
        ["sent", "delivered"]
    );
    let message_sid = message["sid"].as_str().unwrap_or_default();
    assert_eq!(statuses(message_sid), ["sent", "delivered"]);
    for (path, params, _) in &got {
        match param(params, "MessageSid") {
            Some(sid) if sid == first_sid => {
                assert_eq!(path, "/twilio/messaging/status");
                assert_eq!(param(params, "To"), Some(USER));
                assert_eq!(param(params, "From"), Some(OURS));
                assert_eq!(param(params, "AccountSid"), Some(ACCOUNT));
                assert_eq!(param(params, "SmsStatus"), param(params, "MessageStatus"));
            }
            Some(sid) if sid == message_sid => {
                assert_eq!(path, "/twilio/conversations/events");
                assert_eq!(param(params, "EventType"), Some("onDeliveryUpdated"));
                assert_eq!(param(params, "ConversationSid"), Some(ch.as_str()));
                assert_eq!(param(params, "ParticipantSid"), participant["sid"].as_str());
                assert!(param(params, "ChannelMessageSid").is_some_and(|s| s.starts_with("SM")));
                assert!(param(params, "DeliveryReceiptSid").is_some_and(|s| s.starts_with("DY")));
            }
            _ => assert_eq!(path, "/twilio/messaging/status"),
        }
    }
    let records = sandbox.callbacks();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.status == Some(200)));
    assert!(records.iter().any(|r| r.signed_url
        == format!("{PUBLIC}/twilio/messaging/status?op=op-1")
        && r.url == format!("{url}/twilio/messaging/status?op=op-1")));

    // A simulated user message, both kinds.
    let posted = sandbox
        .post_inbound_sms(&twilio_sandbox::InboundSms {
            from: USER.into(),
            to: OURS.into(),
            body: "Hola 👋 a+b=c&d".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(posted.status, 200);
    let posted_conv = sandbox
        .post_inbound_conversation_message(&twilio_sandbox::InboundConversationMessage {
            conversation_sid: ch.clone(),
            author: USER.into(),
            body: "yo".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(posted_conv.status, 200);
    let received = receiver.received();
    let (path, params, valid) = &received[6];
    assert!(valid);
    assert_eq!(path, "/twilio/messaging/inbound");
    assert_eq!(param(params, "Body"), Some("Hola 👋 a+b=c&d"));
    assert_eq!(param(params, "MessageSid"), Some(posted.sid.as_str()));
    let (path, params, valid) = &received[7];
    assert!(valid);
    assert_eq!(path, "/twilio/conversations/events");
    assert_eq!(param(params, "EventType"), Some("onMessageAdded"));
    assert_eq!(param(params, "Source"), Some("SMS"));
    assert_eq!(param(params, "ParticipantSid"), participant["sid"].as_str());

    // Through the control API too.
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/_sandbox/inbound/sms", sandbox.base_url()))
        .json(&serde_json::json!({ "from": USER, "to": OURS, "body": "via control" }))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["status"], 200);
    assert!(
        answer["message_sid"]
            .as_str()
            .is_some_and(|s| s.starts_with("SM"))
    );
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_a_callback_url_inbound_simulation_is_an_error() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let result = sandbox
        .post_inbound_sms(&twilio_sandbox::InboundSms {
            from: USER.into(),
            to: OURS.into(),
            body: "x".into(),
            ..Default::default()
        })
        .await;
    assert!(result.is_err());
    assert!(
        Sandbox::start(SandboxConfig {
            rate_per_sender: Some(0),
            ..config()
        })
        .await
        .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_senders_never_exceed_the_rate_in_any_second() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxConfig {
        rate_per_sender: Some(10),
        ..config()
    })
    .await?;
    let base = sandbox.base_url();
    // Eight workers push until 25 messages were accepted (about 2.5 windows).
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let accepted = accepted.clone();
        let client = Client {
            http: reqwest::Client::new(),
            base: base.clone(),
        };
        workers.push(tokio::spawn(async move {
            while accepted.load(std::sync::atomic::Ordering::SeqCst) < 25 {
                let (status, _) = client
                    .send_sms(&[("To", USER), ("From", OURS), ("Body", "hi")])
                    .await?;
                if status == 201 {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Pace a little so the test does not spin the CPU.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let log = sandbox.requests();
    let times: Vec<i64> = log
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.at_ms)
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert!(max_per_second(&sorted) <= 10, "{sorted:?}");
    assert!(log.iter().any(|r| r.error_code == Some(20429)));
    Ok(())
}

#[tokio::test]
async fn a_configured_delivery_failure_reports_undelivered_with_its_code() -> anyhow::Result<()> {
    let (receiver, url) = start_receiver().await?;
    let wa_user = format!("whatsapp:{USER}");
    let sandbox = Sandbox::start(SandboxConfig {
        callbacks: true,
        callback_url: Some(url.clone()),
        public_url: Some(PUBLIC.into()),
        delivery_failures: vec![twilio_sandbox::DeliveryFailure {
            to: wa_user.clone(),
            error_code: 63016,
            status: "undelivered".into(),
            free_text_only: true,
        }],
        ..config()
    })
    .await?;
    let client = Client::new(&sandbox);
    let wa_ours = format!("whatsapp:{OURS}");
    let (_, text) = client
        .send_sms(&[("To", &wa_user), ("From", &wa_ours), ("Body", "hi")])
        .await?;
    let (_, template) = client
        .send_sms(&[
            ("To", &wa_user),
            ("From", &wa_ours),
            ("ContentSid", "HX0123456789abcdef0123456789abcdef"),
        ])
        .await?;
    let got = wait_for("four callbacks", Duration::from_secs(10), || {
        let received = receiver.received();
        async move { Ok((received.len() >= 4).then_some(received)) }
    })
    .await?;
    let ends = |sid: &str| -> Vec<(String, Option<String>)> {
        got.iter()
            .filter(|(_, p, _)| param(p, "MessageSid") == Some(sid))
            .map(|(_, p, _)| {
                (
                    param(p, "MessageStatus").unwrap_or_default().to_owned(),
                    param(p, "ErrorCode").map(str::to_owned),
                )
            })
            .collect()
    };
    assert_eq!(
        ends(text["sid"].as_str().unwrap_or_default()),
        [
            ("sent".to_owned(), None),
            ("undelivered".to_owned(), Some("63016".to_owned()))
        ]
    );
    assert_eq!(
        ends(template["sid"].as_str().unwrap_or_default()),
        [("sent".to_owned(), None), ("delivered".to_owned(), None)],
        "a template is delivered outside the window"
    );

    // The control API replaces them, and refuses a bad status.
    let http = reqwest::Client::new();
    let put = |body: Value| {
        http.put(format!("{}/_sandbox/delivery-failures", sandbox.base_url()))
            .json(&body)
            .send()
    };
    let bad = put(serde_json::json!([{"to": USER, "error_code": 30003, "status": "lost"}])).await?;
    assert_eq!(bad.status().as_u16(), 400);
    let ok =
        put(serde_json::json!([{"to": USER, "error_code": 30003, "status": "failed"}])).await?;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(sandbox.delivery_failures()[0].error_code, 30003);
    assert_eq!(sandbox.delivery_failures()[0].status, "failed");
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_account_fetch_checks_auth_and_answers_twilios_shape() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config()).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}.json", sandbox.base_url());
    let get = |user: &'static str, password: &'static str| {
        let request = http.get(&url).basic_auth(user, Some(password));
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };

    let (status, account) = get(ACCOUNT, TOKEN).await?;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["sid"], ACCOUNT);
    assert_eq!(account["status"], "active");
    assert_eq!(account["type"], "Full");
    assert_eq!(
        account["uri"],
        format!("/2010-04-01/Accounts/{ACCOUNT}.json")
    );
    assert!(account["subresource_uris"]["messages"].is_string());
    assert!(
        !account.to_string().contains(TOKEN),
        "the sandbox never echoes the token"
    );
    let (status, _) = get("SK22222222222222222222222222222222", "key-secret").await?;
    assert_eq!(status, 200, "the API key is accepted too");

    assert_error(&get(ACCOUNT, "wrong").await?, 401, 20003);
    let other = http
        .get(format!(
            "{}/2010-04-01/Accounts/AC99999999999999999999999999999999.json",
            sandbox.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await?;
    assert_eq!(other.status(), 401, "another account");
    let post = http
        .post(&url)
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await?;
    assert_eq!(post.status(), 405);

    // Reads have their own log: the request log stays what operations did.
    assert!(sandbox.requests().is_empty());
    let reads = sandbox.reads();
    let statuses: Vec<u16> = reads.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 401, 401, 405]);
    let listed: Vec<Value> = http
        .get(format!("{}/_sandbox/reads", sandbox.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed.len(), 5);
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_account_setup_is_listed_in_twilios_shapes_with_paging() -> anyhow::Result<()> {
    use twilio_sandbox::{ConversationsWebhooks, MessagingService, PhoneNumber};
    let sandbox = Sandbox::start(config()).await?;
    let http = reqwest::Client::new();
    let base = sandbox.base_url();
    let number = |n: &str, sms_url: &str| -> anyhow::Result<PhoneNumber> {
        Ok(serde_json::from_value(serde_json::json!({
            "phone_number": n,
            "sms_url": sms_url,
            "voice_url": "https://si.example.test/twilio/voice/answer",
        }))?)
    };
    sandbox.set_phone_numbers(vec![
        number(
            "+14155550101",
            "https://si.example.test/twilio/messaging/inbound",
        )?,
        number("+14155550102", "https://old.example.test/sms")?,
        number("+14155550103", "")?,
    ])?;
    let get = |url: String, user: &'static str, password: &'static str| {
        let request = http.get(url).basic_auth(user, Some(password));
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };
    let numbers_path = format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json");
    let (status, page) = get(format!("{base}{numbers_path}?PageSize=2"), ACCOUNT, TOKEN).await?;
    assert_eq!(status, 200, "{page}");
    let listed = page["incoming_phone_numbers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "{page}");
    assert_eq!(listed[0]["phone_number"], "+14155550101");
    assert_eq!(listed[0]["sid"], "PN00000000000000000000014155550101");
    assert_eq!(listed[0]["account_sid"], ACCOUNT);
    assert_eq!(
        listed[0]["sms_url"],
        "https://si.example.test/twilio/messaging/inbound"
    );
    assert_eq!(listed[0]["sms_method"], "POST");
    assert_eq!(listed[1]["sms_url"], "https://old.example.test/sms");
    assert_eq!(page["page_size"], 2);
    assert_eq!(page["start"], 0);
    assert_eq!(page["end"], 1);
    let next = page["next_page_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(next, format!("{numbers_path}?PageSize=2&Page=1"));
    let (_, second) = get(format!("{base}{next}"), ACCOUNT, TOKEN).await?;
    assert_eq!(
        second["incoming_phone_numbers"][0]["phone_number"],
        "+14155550103"
    );
    assert_eq!(second["incoming_phone_numbers"][0]["sms_url"], "");
    assert_eq!(second["next_page_uri"], Value::Null);
    assert_eq!(
        second["previous_page_uri"],
        format!("{numbers_path}?PageSize=2&Page=0")
    );

    // The key works too; wrong credentials and another account do not.
    let (status, _) = get(
        format!("{base}{numbers_path}"),
        "SK22222222222222222222222222222222",
        "key-secret",
    )
    .await?;
    assert_eq!(status, 200);
    assert_error(
        &get(format!("{base}{numbers_path}"), ACCOUNT, "wrong").await?,
        401,
        20003,
    );
    let (status, _) = get(
        format!("{base}/2010-04-01/Accounts/AC99999999999999999999999999999999/IncomingPhoneNumbers.json"),
        ACCOUNT,
        TOKEN,
    )
    .await?;
    assert_eq!(status, 401);
    assert_error(
        &get(format!("{base}{numbers_path}?PageSize=0"), ACCOUNT, TOKEN).await?,
        400,
        20001,
    );

    // Messaging Services and their numbers, through the control API.
    let services = serde_json::json!([{
        "friendly_name": "Si",
        "inbound_request_url": "https://si.example.test/twilio/messaging/inbound",
        "status_callback": "https://si.example.test/twilio/messaging/status",
        "phone_numbers": ["+14155550101"],
    }, {"friendly_name": "Other"}]);
    let put = http
        .put(format!("{base}/_sandbox/messaging-services"))
        .json(&services)
        .send()
        .await?;
    assert_eq!(put.status(), 200);
    let stored: Vec<MessagingService> = put.json().await?;
    assert_eq!(
        stored[0].sid.as_deref(),
        Some("MG00000000000000000000000000000001")
    );
    let (status, page) = get(format!("{base}/v1/Services?PageSize=1"), ACCOUNT, TOKEN).await?;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["services"][0]["inbound_request_url"],
        "https://si.example.test/twilio/messaging/inbound"
    );
    assert_eq!(page["services"][0]["use_inbound_webhook_on_number"], false);
    assert_eq!(page["meta"]["key"], "services");
    let next = page["meta"]["next_page_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        next,
        format!("{base}/v1/Services?PageSize=1&Page=1"),
        "absolute, followable"
    );
    let (_, second) = get(next, ACCOUNT, TOKEN).await?;
    assert_eq!(second["services"][0]["friendly_name"], "Other");
    assert_eq!(second["meta"]["next_page_url"], Value::Null);
    let (status, numbers) = get(
        format!("{base}/v1/Services/MG00000000000000000000000000000001/PhoneNumbers"),
        ACCOUNT,
        TOKEN,
    )
    .await?;
    assert_eq!(status, 200, "{numbers}");
    assert_eq!(
        numbers["phone_numbers"][0]["sid"],
        "PN00000000000000000000014155550101"
    );
    assert_eq!(
        numbers["phone_numbers"][0]["service_sid"],
        "MG00000000000000000000000000000001"
    );
    assert_error(
        &get(
            format!("{base}/v1/Services/MGnope/PhoneNumbers"),
            ACCOUNT,
            TOKEN,
        )
        .await?,
        404,
        20404,
    );
    let bad = http
        .put(format!("{base}/_sandbox/phone-numbers"))
        .json(&serde_json::json!([{"phone_number": "4155550100"}]))
        .send()
        .await?;
    assert_eq!(bad.status(), 400, "not E.164");

    // Conversations webhooks.
    sandbox.set_conversations_webhooks(ConversationsWebhooks {
        post_webhook_url: Some("https://si.example.test/twilio/conversations/events".into()),
        filters: vec!["onMessageAdded".into()],
        ..ConversationsWebhooks::default()
    })?;
    let (status, webhooks) =
        get(format!("{base}/v1/Configuration/Webhooks"), ACCOUNT, TOKEN).await?;
    assert_eq!(status, 200, "{webhooks}");
    assert_eq!(
        webhooks["post_webhook_url"],
        "https://si.example.test/twilio/conversations/events"
    );
    assert_eq!(webhooks["pre_webhook_url"], Value::Null);
    assert_eq!(webhooks["method"], "POST");
    assert_eq!(webhooks["target"], "webhook");
    assert_eq!(webhooks["filters"], serde_json::json!(["onMessageAdded"]));

    // A write to a read is refused; all of them are reads, none a request.
    let post = http
        .post(format!("{base}/v1/Configuration/Webhooks"))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await?;
    assert_eq!(post.status(), 405);
    assert!(sandbox.requests().is_empty());
    assert_eq!(sandbox.reads().len(), 12);
    sandbox.shutdown().await;
    Ok(())
}

/// The reads answer with Twilio's field names: every field is one Twilio's
/// OpenAPI description declares (the 2010 API and Conversations; Messaging's
/// description is not among the files `dev/twilio-oai` keeps).
#[tokio::test]
async fn the_reads_use_the_field_names_of_twilios_description() -> anyhow::Result<()> {
    use twilio_sandbox::{ConversationsWebhooks, PhoneNumber};
    let oai = si_testkit::openapi::TwilioOpenApi::load()?;
    let sandbox = Sandbox::start(config()).await?;
    sandbox.set_phone_numbers(vec![serde_json::from_value::<PhoneNumber>(
        serde_json::json!({
            "phone_number": "+14155550101",
            "sms_url": "https://si.example.test/twilio/messaging/inbound",
            "voice_url": "https://si.example.test/twilio/voice/answer",
        }),
    )?])?;
    sandbox.set_conversations_webhooks(ConversationsWebhooks {
        post_webhook_url: Some("https://si.example.test/twilio/conversations/events".into()),
        filters: vec!["onMessageAdded".into()],
        ..ConversationsWebhooks::default()
    })?;
    let http = reqwest::Client::new();
    for path in [
        format!("/2010-04-01/Accounts/{ACCOUNT}.json"),
        format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json"),
        "/v1/Configuration/Webhooks".to_owned(),
    ] {
        let body: Value = http
            .get(format!("{}{path}", sandbox.base_url()))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await?
            .json()
            .await?;
        if let Err(violations) = oai.check_get_response(&path, &body) {
            panic!("{path}: {violations:#?}\n{body:#}");
        }
    }
    // The oracle would notice a field of our own invention.
    let invented = serde_json::json!({"incoming_phone_numbers": [{"sms_url": "", "smsUrl": ""}]});
    let path = format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json");
    assert_eq!(
        oai.check_get_response(&path, &invented),
        Err(vec![format!(
            "GET {path}.incoming_phone_numbers[]: field smsUrl is not described"
        )])
    );
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_client_sets_the_account_setup_over_http() -> anyhow::Result<()> {
    use twilio_sandbox::{ConversationsWebhooks, MessagingService, PhoneNumber, SandboxClient};
    let sandbox = Sandbox::start(config()).await?;
    let client = SandboxClient::new(&sandbox.base_url());
    let numbers: Vec<PhoneNumber> = serde_json::from_value(
        serde_json::json!([{"phone_number": "+14155550107", "sms_method": "GET"}]),
    )?;
    let stored = client.set_phone_numbers(&numbers).await?;
    assert_eq!(
        stored[0].sid.as_deref(),
        Some("PN00000000000000000000014155550107")
    );
    assert_eq!(sandbox.phone_numbers(), stored);
    let refused: Vec<PhoneNumber> = serde_json::from_value(
        serde_json::json!([{"phone_number": "+14155550107", "sms_method": "PUT"}]),
    )?;
    let error = client
        .set_phone_numbers(&refused)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("400")),
        "{error:?}"
    );
    assert_eq!(
        sandbox.phone_numbers(),
        stored,
        "a refused setup changes nothing"
    );

    let services: Vec<MessagingService> = serde_json::from_value(
        serde_json::json!([{"sid": "MG0123456789abcdef0123456789abcdef", "use_inbound_webhook_on_number": true}]),
    )?;
    let stored = client.set_messaging_services(&services).await?;
    assert_eq!(stored, services);
    assert_eq!(sandbox.messaging_services(), services);

    let webhooks = ConversationsWebhooks {
        pre_webhook_url: Some("https://elsewhere.example.test/pre".into()),
        target: "flex".into(),
        ..ConversationsWebhooks::default()
    };
    assert_eq!(
        client.set_conversations_webhooks(&webhooks).await?,
        webhooks
    );
    assert_eq!(sandbox.conversations_webhooks(), webhooks);
    sandbox.shutdown().await;
    Ok(())
}
