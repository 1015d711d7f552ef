//! Against the real broker: poison records are dead-lettered with their reason
//! while processing goes on; a Twilio retry yields no second event, also when
//! it arrives after a restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use si_schemas::records::{ConversationEvent, DeadLetter, DeadLetterErrorKind, WebhookRoute};
use si_schemas::topics;
use si_testkit::TestEnv;

fn message_added(id: &str, token: &str, message_sid: &str) -> si_schemas::records::TwilioWebhook {
    webhook(
        id,
        WebhookRoute::ConversationsPostEvent,
        Some("onMessageAdded"),
        Some(token),
        &[
            ("EventType", "onMessageAdded"),
            ("ConversationSid", "CH00000000000000000000000000000042"),
            ("MessageSid", message_sid),
            ("Author", "+14155550100"),
            ("Source", "SMS"),
            ("Body", "hello"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_processing_goes_on() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let key = "CH00000000000000000000000000000042";
    // 1. Not Confluent-framed at all.
    produce_bytes(
        &env,
        topics::WEBHOOKS,
        key,
        b"{\"EventType\":\"onMessageAdded\"}",
    )
    .await?;
    // 2. Framed, but the datum is garbage for the registered schema.
    let id = env
        .codec
        .schema_id::<si_schemas::records::TwilioWebhook>(&env.topic(topics::WEBHOOKS))
        .await?;
    let mut corrupt = si_schemas::codec::frame(id, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
    corrupt.truncate(9);
    produce_bytes(&env, topics::WEBHOOKS, key, &corrupt).await?;
    // 3. Decodes, but breaks the contract (a message without MessageSid).
    let invalid = webhook(
        "wh-invalid",
        WebhookRoute::ConversationsPostEvent,
        Some("onMessageAdded"),
        Some("tok-invalid"),
        &[("EventType", "onMessageAdded"), ("ConversationSid", key)],
    );
    produce_all(&env, topics::WEBHOOKS, &[(key.to_owned(), invalid)]).await?;
    // 4. A good record after the bad ones.
    produce_all(
        &env,
        topics::WEBHOOKS,
        &[(key.to_owned(), message_added("wh-good", "tok-good", "IM1"))],
    )
    .await?;

    let mut child = spawn_normalize(&env, "poison", "poison")?;
    wait_all_committed(&env, Duration::from_secs(60)).await?;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "{status}");

    let letters: Vec<DeadLetter> = read_all::<DeadLetter>(&env, topics::DEAD_LETTER)
        .await?
        .into_iter()
        .filter_map(|(_, v)| v)
        .collect();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let mut letters = letters;
    letters.sort_by_key(|l| l.source_offset);
    assert_eq!(letters[0].error_kind, DeadLetterErrorKind::Undecodable);
    assert!(
        letters[0].reason.contains("magic byte"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        letters[0].original_value.as_deref(),
        Some(&b"{\"EventType\":\"onMessageAdded\"}"[..])
    );
    assert_eq!(letters[0].original_key.as_deref(), Some(key.as_bytes()));
    assert_eq!(letters[1].error_kind, DeadLetterErrorKind::Undecodable);
    assert_eq!(letters[1].original_value.as_deref(), Some(&corrupt[..]));
    assert_eq!(letters[2].error_kind, DeadLetterErrorKind::Invalid);
    assert!(
        letters[2].reason.contains("MessageSid"),
        "{}",
        letters[2].reason
    );
    for letter in &letters {
        assert_eq!(letter.stage, "normalize");
        assert_eq!(letter.source_topic, env.topic(topics::WEBHOOKS));
    }
    assert!(
        letters
            .windows(2)
            .all(|w| w[0].source_offset < w[1].source_offset)
    );

    let events =
        by_event_id(read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?)?;
    assert_eq!(
        events.len(),
        1,
        "the good record after the poison ones was processed"
    );
    let event = events.values().next().unwrap();
    assert_eq!(event.webhook_id, "wh-good");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_yields_no_second_event() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let key = "CH00000000000000000000000000000042";
    produce_all(
        &env,
        topics::WEBHOOKS,
        &[
            (key.to_owned(), message_added("wh-1", "tok-1", "IM1")),
            // A retry while running.
            (key.to_owned(), message_added("wh-1-retry", "tok-1", "IM1")),
        ],
    )
    .await?;
    let mut child = spawn_normalize(&env, "dedup", "dedup-1")?;
    wait_all_committed(&env, Duration::from_secs(60)).await?;
    // SIGKILL: the state must come back from the changelog, not from a clean shutdown.
    child.kill()?;
    child.wait()?;

    produce_all(
        &env,
        topics::WEBHOOKS,
        &[
            // The same Twilio event retried after the restart ...
            (key.to_owned(), message_added("wh-1-late", "tok-1", "IM1")),
            // ... and a new one.
            (key.to_owned(), message_added("wh-2", "tok-2", "IM2")),
        ],
    )
    .await?;
    let mut child = spawn_normalize(&env, "dedup", "dedup-2")?;
    wait_all_committed(&env, Duration::from_secs(60)).await?;
    let status = terminate(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "{status}");

    let events =
        by_event_id(read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?)?;
    let mut webhooks: Vec<&str> = events.values().map(|e| e.webhook_id.as_str()).collect();
    webhooks.sort_unstable();
    assert_eq!(
        webhooks,
        ["wh-1", "wh-2"],
        "one event per idempotency token"
    );
    Ok(())
}
