//! Against the real broker and registry: the `si-consent` binary on a fresh
//! topic prefix. A first message is welcomed and forwarded; STOP records
//! OPTED_OUT on `si.consent.v1`, an OPT_OUT compliance event and one
//! confirmation on `twilio.outbound.v1`; a message after STOP reaches nothing
//! but a BLOCKED_INBOUND event; START re-enables. A Twilio 21610 delivery
//! failure records an opt-out too.
//!
//! Revocation by other words: a revocation phrase ("Please stop texting me")
//! gets exactly one confirmation and nothing after; a longer message with a
//! revocation word is forwarded flagged `possible_revocation` and the user
//! keeps being served until they send STOP; the compliance trail has both.
//!
//! The inbound rate limit holds a flooding user's messages back, records the
//! first one and tells the user once, and its account survives a restart of
//! the stage (it is in the state changelog).
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-consent --test stop_flow -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use si_schemas::AvroRecord;
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentState, ConsentStatus,
    ConversationEvent, ConversationEventType, DeliveryOutcome, DeliveryStatus, EventSource,
    InboundMessage, LocaleSource, MessageReceived, OutboundOperation, Participant,
};
use si_schemas::topics;
use si_testkit::TestEnv;

const T0: i64 = 1_795_000_000_000;
const OURS: &str = "+14155550199";

fn message(conv: &str, user: &str, n: i64, body: &str) -> ConversationEvent {
    ConversationEvent {
        channel: Channel::Sms,
        source: EventSource::Conversations,
        participant: Some(Participant {
            address: Some(user.into()),
            channel: Channel::Sms,
            user_id: Some("user-1".into()),
            visitor_id: None,
            registered: true,
            participant_sid: Some("MB1".into()),
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: "en-US".into(),
        locale_source: LocaleSource::Identity,
        account_sid: Some("AC1".into()),
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("tok-{conv}-{n}"),
        message: Some(MessageReceived {
            message_sid: format!("IM{n:032}"),
            index: Some(n),
            author: Some(user.into()),
            body: Some(body.into()),
            media: Vec::new(),
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("{conv}-ev-{n}"),
            conv,
            &format!("session-{conv}"),
            ConversationEventType::MessageReceived,
            T0 + n * 1_000,
        )
    }
}

fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("consent-tests");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}.log"))
}

fn spawn_consent(env: &TestEnv, name: &str) -> anyhow::Result<Child> {
    spawn_consent_with(env, name, &[])
}

fn spawn_consent_with(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(name))?;
    Command::new(env!("CARGO_BIN_EXE_si-consent"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("POD_NAME", name)
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "info,librdkafka=warn,rdkafka=warn")
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
        .env("TRANSACTION_TIMEOUT", "10s")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting si-consent")
}

fn terminate(child: &mut Child, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > until {
            child.kill()?;
            bail!("si-consent did not stop within {deadline:?} of SIGTERM");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Waits until `topic` holds records satisfying `done`, or fails after `deadline`.
async fn wait_for<T: AvroRecord>(
    env: &TestEnv,
    topic: &str,
    child: &mut Child,
    deadline: Duration,
    done: impl Fn(&[(String, T)]) -> bool,
) -> anyhow::Result<Vec<(String, T)>> {
    let until = Instant::now() + deadline;
    loop {
        let records = env.read_all::<T>(topic).await?;
        if done(&records) {
            return Ok(records);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "si-consent exited with {status} (see the logs in {:?})",
                log_path("any").parent()
            );
        }
        if Instant::now() > until {
            bail!(
                "{topic}: condition not met within {deadline:?} ({} records)",
                records.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_blocks_and_start_reenables_against_the_broker() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let user = "+14155550100";
    let conv = "CH00000000000000000000000000000001";
    let mut child = spawn_consent(&env, "stop-flow")?;
    let result = async {
        for (n, body) in [
            (1, "hello"),
            (2, "STOP"),
            (3, "are you there?"),
            (4, "Start"),
            (5, "back again"),
        ] {
            env.produce(
                topics::CONVERSATION_EVENTS,
                conv,
                &message(conv, user, n, body),
            )
            .await?;
        }
        let deadline = Duration::from_secs(90);
        let compliance =
            wait_for::<ComplianceEvent>(&env, topics::COMPLIANCE, &mut child, deadline, |r| {
                r.len() >= 4
            })
            .await?;
        let kinds: Vec<_> = compliance.iter().map(|(_, c)| (c.kind, c.source)).collect();
        assert_eq!(
            kinds,
            vec![
                (ComplianceEventKind::OptIn, ComplianceSource::FirstContact),
                (ComplianceEventKind::OptOut, ComplianceSource::Keyword),
                (
                    ComplianceEventKind::BlockedInbound,
                    ComplianceSource::Keyword
                ),
                (ComplianceEventKind::OptIn, ComplianceSource::Keyword),
            ]
        );
        assert!(compliance.iter().all(|(k, _)| k == "sms:+14155550100"));
        assert_eq!(compliance[1].1.keyword.as_deref(), Some("STOP"));
        assert_eq!(
            compliance[2].1.message_ref.as_deref(),
            Some(format!("IM{:032}", 3).as_str())
        );

        let consent = wait_for::<ConsentState>(&env, topics::CONSENT, &mut child, deadline, |r| {
            r.len() >= 3
        })
        .await?;
        let statuses: Vec<_> = consent.iter().map(|(_, c)| c.status).collect();
        assert_eq!(
            statuses,
            vec![
                ConsentStatus::OptedIn,
                ConsentStatus::OptedOut,
                ConsentStatus::OptedIn
            ]
        );
        assert!(consent.iter().all(|(k, _)| k == "sms:+14155550100|*"));

        let inbound =
            wait_for::<InboundMessage>(&env, topics::INBOUND, &mut child, deadline, |r| {
                r.len() >= 2
            })
            .await?;
        let texts: Vec<_> = inbound
            .iter()
            .map(|(_, m)| (m.text.as_str(), m.first_contact))
            .collect();
        assert_eq!(
            texts,
            vec![("hello", true), ("back again", false)],
            "nothing after STOP, no keywords"
        );

        let outbound =
            wait_for::<OutboundOperation>(&env, topics::OUTBOUND, &mut child, deadline, |r| {
                r.len() >= 3
            })
            .await?;
        let purposes: BTreeMap<_, _> = outbound
            .iter()
            .map(|(_, o)| (o.operation_id.clone(), o.params.get("si.purpose").cloned()))
            .collect();
        assert!(purposes.values().all(|p| p.as_deref() == Some("consent")));
        assert!(
            outbound
                .iter()
                .all(|(k, o)| k == "sms:+14155550199" && o.to.as_deref() == Some(user))
        );
        let confirmation = sms_text(si_catalog::keys::OPT_OUT_CONFIRMATION, "en-US");
        let confirmations = outbound
            .iter()
            .filter(|(_, o)| o.body.as_deref() == Some(confirmation.as_str()))
            .count();
        assert_eq!(confirmations, 1, "exactly one STOP confirmation");

        // A Twilio 21610 on another conversation, once its user is known.
        let conv2 = "CH00000000000000000000000000000002";
        let user2 = "+14155550111";
        env.produce(
            topics::CONVERSATION_EVENTS,
            conv2,
            &message(conv2, user2, 10, "hi"),
        )
        .await?;
        wait_for::<ConsentState>(&env, topics::CONSENT, &mut child, deadline, |r| {
            r.iter().any(|(_, c)| c.address == user2)
        })
        .await?;
        let failed = DeliveryStatus {
            operation_id: "op-21610".into(),
            conversation_id: conv2.into(),
            outcome: DeliveryOutcome::Failed,
            twilio_sid: None,
            segments: None,
            error_code: Some(21_610),
            error_message: Some("Attempt to send to unsubscribed recipient".into()),
            attempts: 1,
            response_id: Some("resp-1".into()),
            part_index: Some(0),
            part_count: None,
            kind: None,
            body: None,
            resend_of: None,
            remediation: None,
            at: T0 + 20_000,
            scheduled_at: None,
            compliance_event_id: None,
        };
        env.produce(topics::DELIVERY, conv2, &failed).await?;
        let consent = wait_for::<ConsentState>(&env, topics::CONSENT, &mut child, deadline, |r| {
            r.iter()
                .any(|(_, c)| c.address == user2 && c.status == ConsentStatus::OptedOut)
        })
        .await?;
        let last = &consent.iter().rfind(|(_, c)| c.address == user2).unwrap().1;
        assert_eq!(last.source, ComplianceSource::TwilioError);
        let compliance = env.read_all::<ComplianceEvent>(topics::COMPLIANCE).await?;
        assert!(
            compliance
                .iter()
                .any(|(_, c)| c.kind == ComplianceEventKind::OptOut
                    && c.source == ComplianceSource::TwilioError
                    && c.message_ref.as_deref() == Some("op-21610"))
        );
        anyhow::Ok(())
    }
    .await;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    result?;
    assert!(status.success(), "graceful shutdown exited with {status}");
    Ok(())
}

/// The compliance events about `address`, in order.
fn trail(records: &[(String, ComplianceEvent)], address: &str) -> Vec<ComplianceEvent> {
    records
        .iter()
        .filter(|(_, c)| c.address == address)
        .map(|(_, c)| c.clone())
        .collect()
}

/// The catalog's text `key` in `locale` as consent sends it by SMS.
fn sms_text(key: &str, locale: &str) -> String {
    let text = si_catalog::Catalog::builtin().text(key, locale).text;
    si_segment::normalize(text, Channel::Sms, true).0
}

fn opt_out_confirmation(locale: &str) -> String {
    sms_text(si_catalog::keys::OPT_OUT_CONFIRMATION, locale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_phrases_opt_out_and_longer_messages_are_flagged_against_the_broker()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let mut child = spawn_consent(&env, "revocation-flow")?;
    // A: a revocation phrase. B: a longer message, then STOP. C: French on a +1 number.
    let (conv_a, user_a) = ("CH000000000000000000000000000000A1", "+14155550121");
    let (conv_b, user_b) = ("CH000000000000000000000000000000B1", "+14155550122");
    let (conv_c, user_c) = ("CH000000000000000000000000000000C1", "+14155550123");
    let flagged_text = "Thanks for the recipe. Can you stop sending me reminders every morning?";
    let result = async {
        let script: &[(&str, &str, i64, &str)] = &[
            (conv_a, user_a, 1, "hello"),
            (conv_a, user_a, 2, "Please stop texting me!"),
            (conv_a, user_a, 3, "are you still there?"),
            (conv_b, user_b, 1, "hi"),
            (conv_b, user_b, 2, flagged_text),
            (conv_b, user_b, 3, "and what about dessert?"),
            (conv_b, user_b, 4, "STOP"),
            (conv_b, user_b, 5, "hello?"),
            (conv_c, user_c, 1, "bonjour"),
            (conv_c, user_c, 2, "ARRÊT"),
        ];
        for (conv, user, n, body) in script {
            env.produce(
                topics::CONVERSATION_EVENTS,
                conv,
                &message(conv, user, *n, body),
            )
            .await?;
        }
        let deadline = Duration::from_secs(90);
        let compliance =
            wait_for::<ComplianceEvent>(&env, topics::COMPLIANCE, &mut child, deadline, |r| {
                r.len() >= 9
            })
            .await?;
        let kinds = |address: &str| -> Vec<(ComplianceEventKind, Option<String>)> {
            trail(&compliance, address)
                .into_iter()
                .map(|c| (c.kind, c.details.get("rule").cloned()))
                .collect()
        };
        let rule = |r: &str| Some(r.to_owned());

        // A: the phrase opted out at once; the message after it is blocked.
        assert_eq!(
            kinds(user_a),
            vec![
                (ComplianceEventKind::OptIn, None),
                (ComplianceEventKind::OptOut, rule("revocation_phrase")),
                (ComplianceEventKind::BlockedInbound, None),
            ]
        );
        let a = trail(&compliance, user_a);
        assert_eq!(a[1].keyword.as_deref(), Some("Please stop texting me"));
        assert_eq!(
            a[1].details.get("matched").map(String::as_str),
            Some("please stop texting me")
        );

        // B: flagged and served, then STOP.
        assert_eq!(
            kinds(user_b),
            vec![
                (ComplianceEventKind::OptIn, None),
                (
                    ComplianceEventKind::PossibleRevocation,
                    rule("revocation_near_messages")
                ),
                (ComplianceEventKind::OptOut, rule("keyword")),
                (ComplianceEventKind::BlockedInbound, None),
            ]
        );
        let b = trail(&compliance, user_b);
        assert_eq!(b[1].keyword.as_deref(), Some("stop sending"));
        assert_eq!(
            b[1].message_ref.as_deref(),
            Some(format!("IM{:032}", 2).as_str())
        );

        // C: ARRÊT is an opt-out in an en-US conversation, confirmed in French.
        assert_eq!(
            kinds(user_c),
            vec![
                (ComplianceEventKind::OptIn, None),
                (ComplianceEventKind::OptOut, rule("keyword")),
            ]
        );
        assert_eq!(trail(&compliance, user_c)[1].locale.as_deref(), Some("fr"));

        let inbound =
            wait_for::<InboundMessage>(&env, topics::INBOUND, &mut child, deadline, |r| {
                r.len() >= 5
            })
            .await?;
        let forwarded = |conv: &str| -> Vec<(String, bool)> {
            inbound
                .iter()
                .filter(|(k, _)| k == conv)
                .map(|(_, m)| (m.text.clone(), m.possible_revocation))
                .collect()
        };
        assert_eq!(
            forwarded(conv_a),
            vec![("hello".to_owned(), false)],
            "nothing reaches cognition after the phrase"
        );
        assert_eq!(
            forwarded(conv_b),
            vec![
                ("hi".to_owned(), false),
                (flagged_text.to_owned(), true),
                ("and what about dessert?".to_owned(), false),
            ],
            "flagged to cognition, served until STOP"
        );
        assert_eq!(forwarded(conv_c), vec![("bonjour".to_owned(), false)]);

        // B stayed opted in until the STOP: its decisions are the welcome's and the STOP's.
        let consent = wait_for::<ConsentState>(&env, topics::CONSENT, &mut child, deadline, |r| {
            r.len() >= 6
        })
        .await?;
        let decisions = |address: &str| -> Vec<(ConsentStatus, Option<String>)> {
            consent
                .iter()
                .filter(|(_, c)| c.address == address)
                .map(|(_, c)| (c.status, c.keyword.clone()))
                .collect()
        };
        assert_eq!(
            decisions(user_b),
            vec![
                (ConsentStatus::OptedIn, None),
                (ConsentStatus::OptedOut, Some("STOP".to_owned())),
            ]
        );
        assert_eq!(
            decisions(user_a),
            vec![
                (ConsentStatus::OptedIn, None),
                (
                    ConsentStatus::OptedOut,
                    Some("Please stop texting me".to_owned())
                ),
            ]
        );

        // Replies: per user the welcome and exactly one confirmation, nothing else.
        let outbound =
            wait_for::<OutboundOperation>(&env, topics::OUTBOUND, &mut child, deadline, |r| {
                r.len() >= 6
            })
            .await?;
        let bodies = |user: &str| -> Vec<String> {
            outbound
                .iter()
                .filter(|(_, o)| o.to.as_deref() == Some(user))
                .filter_map(|(_, o)| o.body.clone())
                .collect()
        };
        for (user, locale) in [(user_a, "en-US"), (user_b, "en-US"), (user_c, "fr")] {
            let sent = bodies(user);
            assert_eq!(
                sent.len(),
                2,
                "{user}: the welcome and one confirmation: {sent:?}"
            );
            let confirmation = opt_out_confirmation(locale);
            assert_eq!(
                sent.iter().filter(|b| **b == confirmation).count(),
                1,
                "{user}: exactly one confirmation in {locale}: {sent:?}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    result?;
    assert!(status.success(), "graceful shutdown exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_a_flood_back_across_a_restart() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let user = "+14155550122";
    let conv = "CH00000000000000000000000000000003";
    // Two messages per ten minutes, bursts of two: the account outlives the
    // restart by minutes.
    let limit = [("CONSENT_RATE_LIMIT", "2/10m"), ("CONSENT_RATE_BURST", "2")];
    let mut child = spawn_consent_with(&env, "rate-limit", &limit)?;
    let deadline = Duration::from_secs(90);
    let first = async {
        for (n, body) in [(1, "hello"), (2, "one more")] {
            let event = message(conv, user, n, body);
            env.produce(topics::CONVERSATION_EVENTS, conv, &event)
                .await?;
        }
        wait_for::<InboundMessage>(&env, topics::INBOUND, &mut child, deadline, |r| {
            r.len() >= 2
        })
        .await
    }
    .await;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    first?;
    assert!(status.success(), "graceful shutdown exited with {status}");

    // A new process restores the account from the changelog.
    let mut child = spawn_consent_with(&env, "rate-limit", &limit)?;
    let result = async {
        for (n, body) in [(3, "hello?"), (4, "HELLO??"), (5, "help")] {
            let event = message(conv, user, n, body);
            env.produce(topics::CONVERSATION_EVENTS, conv, &event)
                .await?;
        }
        // HELP is answered (keywords are never held back); its answer is
        // the last output, so everything before it is readable by then.
        let help = sms_text(si_catalog::keys::HELP, "en-US");
        let outbound =
            wait_for::<OutboundOperation>(&env, topics::OUTBOUND, &mut child, deadline, |r| {
                r.iter()
                    .any(|(_, o)| o.body.as_deref() == Some(help.as_str()))
            })
            .await?;
        let notice = sms_text(si_catalog::keys::RATE_LIMITED, "en-US");
        let notices = outbound
            .iter()
            .filter(|(_, o)| o.body.as_deref() == Some(notice.as_str()))
            .count();
        assert_eq!(notices, 1, "the user is told once");

        let inbound = env.read_all::<InboundMessage>(topics::INBOUND).await?;
        let texts: Vec<_> = inbound.iter().map(|(_, m)| m.text.as_str()).collect();
        assert_eq!(texts, ["hello", "one more"], "nothing after the burst");

        let compliance = env.read_all::<ComplianceEvent>(topics::COMPLIANCE).await?;
        let held: Vec<_> = compliance
            .iter()
            .filter(|(_, c)| c.source == ComplianceSource::RateLimit)
            .collect();
        assert_eq!(held.len(), 1, "the first held back message is recorded");
        assert_eq!(held[0].1.kind, ComplianceEventKind::BlockedInbound);
        assert_eq!(
            held[0].1.message_ref.as_deref(),
            Some(format!("IM{:032}", 3).as_str())
        );
        assert_eq!(
            held[0].1.details.get("rate_limit").map(String::as_str),
            Some("2/10m")
        );
        anyhow::Ok(())
    }
    .await;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    result?;
    assert!(status.success(), "graceful shutdown exited with {status}");
    Ok(())
}
