//! `sictl command start|escalate|close` against the real local broker and
//! registry: each writes one command on `si.commands.v1`, keyed by its
//! conversation, prints its ids and where its outcome will be, and a refused
//! command writes nothing and says why.

mod support;

use si_schemas::records::{Channel, Command, CommandKind};
use si_schemas::topics;
use si_testkit::TestEnv;

/// `sictl command args…` against `env`; its stdout as JSON.
fn issue(env: &TestEnv, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let (ok, out, err) = support::sictl(env, &[&["command"], args].concat())?;
    anyhow::ensure!(ok, "sictl command {args:?} failed: {err}");
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test]
async fn commands_are_written_keyed_by_conversation_and_a_refused_one_writes_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;

    // Refused: not an RFC 3339 time. Nothing is written.
    let (ok, _, err) = support::sictl(
        &env,
        &[
            "command",
            "escalate",
            "--conversation",
            "CH1",
            "--at",
            "soon",
        ],
    )?;
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");

    let started = issue(
        &env,
        &[
            "start",
            "--address",
            "+14155550100",
            "--channel",
            "whatsapp",
            "--conversation",
            "si-cli-test",
            "--text",
            "  Hello from Si  ",
        ],
    )?;
    assert_eq!(started["conversation_id"], "si-cli-test", "{started}");
    assert_eq!(started["session_id"], "session-si-cli-test", "{started}");
    assert!(
        started["status"]
            .as_str()
            .is_some_and(|s| s.ends_with("operation_id lifecycle-start-<command_id>")),
        "{started}"
    );
    let escalated = issue(
        &env,
        &[
            "escalate",
            "--conversation",
            "CH2",
            "--at",
            "2026-12-03T18:30:00+01:00",
        ],
    )?;
    assert!(escalated.get("session_id").is_none(), "{escalated}");
    assert!(
        escalated["status"]
            .as_str()
            .is_some_and(|s| s.ends_with("operation_id voice-command-<command_id>")),
        "{escalated}"
    );
    let closed = issue(
        &env,
        &["close", "--conversation", "CH3", "--summary", "Done."],
    )?;
    assert!(closed.get("status").is_none(), "{closed}");

    // Each was acknowledged before sictl answered: all there is, now.
    let written = env.read_all::<Command>(topics::COMMANDS).await?;
    assert_eq!(written.len(), 3, "{written:?}");
    // Keyed by conversation, so partitions apart: found by key.
    let keyed = |conversation: &str| {
        written
            .iter()
            .find(|(key, _)| key == conversation)
            .map(|(_, command)| command.clone())
            .ok_or_else(|| anyhow::anyhow!("no command keyed {conversation}: {written:?}"))
    };
    let start = keyed("si-cli-test")?;
    assert_eq!(start.kind, CommandKind::StartConversation);
    assert_eq!(
        start.command_id,
        started["command_id"].as_str().unwrap_or("")
    );
    assert_eq!(start.channel, Some(Channel::Whatsapp));
    assert_eq!(start.address.as_deref(), Some("+14155550100"));
    assert_eq!(
        start.params.get("text").map(String::as_str),
        Some("Hello from Si")
    );

    let escalate = keyed("CH2")?;
    assert_eq!(escalate.kind, CommandKind::EscalateToVoice);
    assert_eq!(
        escalate.params.get("at").map(String::as_str),
        Some("2026-12-03T17:30:00Z")
    );
    let close = keyed("CH3")?;
    assert_eq!(close.kind, CommandKind::CloseConversation);
    assert_eq!(
        close.command_id,
        closed["command_id"].as_str().unwrap_or("")
    );
    assert_eq!(
        close.params.get("summary").map(String::as_str),
        Some("Done.")
    );
    Ok(())
}
