//! Against the real broker: normalize's de-duplication state survives a
//! restart (a Twilio retry after it yields nothing), and it expires: a retry
//! past `DEDUP_WINDOW` (record time) is an event again, and the expired
//! entry is deleted from memory and tombstoned in the changelog by the sweep.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use si_normalize::transform::seen_key;
use si_schemas::records::{ConversationEvent, TwilioWebhook, WebhookRoute};
use si_schemas::topics;
use si_testkit::{TestEnv, wait_for};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn message(id: &str, token: &str, n: usize) -> (String, TwilioWebhook) {
    let ch = format!("CH{n:032x}");
    let record = webhook(
        id,
        WebhookRoute::ConversationsPostEvent,
        Some("onMessageAdded"),
        Some(token),
        &[
            ("EventType", "onMessageAdded"),
            ("ConversationSid", &ch),
            ("MessageSid", &format!("IM{n:032x}")),
            ("Author", "whatsapp:+14155550100"),
            ("Source", "WHATSAPP"),
            ("Body", "hello"),
        ],
    );
    (ch, record)
}

/// Produces `record` with the Kafka timestamp `at` (the store's clock).
async fn produce_at(
    env: &TestEnv,
    (key, record): &(String, TwilioWebhook),
    at: i64,
) -> anyhow::Result<()> {
    let topic = env.topic(topics::WEBHOOKS);
    let payload = env.codec.encode(&topic, record).await?;
    env.producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(&payload)
                .timestamp(at),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    Ok(())
}

async fn events(env: &TestEnv, count: usize) -> anyhow::Result<Vec<ConversationEvent>> {
    env.collect::<ConversationEvent>(
        topics::CONVERSATION_EVENTS,
        Duration::from_secs(60),
        |_| true,
        |kept| kept.len() >= count,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_holds_across_a_restart_and_expires_after_the_window() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let vars = [("DEDUP_WINDOW", "10m"), ("STATE_SWEEP_INTERVAL", "1s")];
    let now = now_ms();
    let window = 10 * 60 * 1000;

    // An event, and an event whose window has already passed by the wall
    // clock (its record is 15 minutes old): the sweep deletes that one.
    let a = message("wh-a", "tok-a", 1);
    let old = message("wh-old", "tok-old", 2);
    produce_at(&env, &a, now).await?;
    produce_at(&env, &old, now - window - 5 * 60 * 1000).await?;
    let mut first = spawn_normalize_with(&env, "state-1", "state-1", &vars)?;
    let got = events(&env, 2).await?;
    assert_eq!(got.len(), 2);

    // The sweep tombstones the old entry in the changelog, and only that one.
    let changelog = env.topic(topics::NORMALIZE_STATE);
    let old_key = seen_key("tok-old");
    let a_key = seen_key("tok-a");
    let tombstones = wait_for(
        "the expired entry's tombstone",
        Duration::from_secs(30),
        || {
            let (env, changelog, old_key) = (&env, &changelog, &old_key);
            async move {
                let records = read_raw(env, changelog)?;
                let dead: Vec<String> = records
                    .iter()
                    .filter(|(_, payload)| payload.is_none())
                    .map(|(key, _)| key.clone())
                    .collect();
                Ok(dead.contains(old_key).then_some(dead))
            }
        },
    )
    .await?;
    assert!(
        !tombstones.contains(&a_key),
        "a live entry was deleted: {tombstones:?}"
    );

    // Restart as another pod (state restored from the changelog only).
    first.kill()?;
    first.wait()?;
    let mut second = spawn_normalize_with(&env, "state-2", "state-2", &vars)?;
    // A retry of A within its window: nothing. A new event B: one event.
    let retry_a = (
        a.0.clone(),
        TwilioWebhook {
            webhook_id: "wh-a-retry".into(),
            ..a.1.clone()
        },
    );
    produce_at(&env, &retry_a, now + 60_000).await?;
    let b = message("wh-b", "tok-b", 3);
    produce_at(&env, &b, now + 60_000).await?;
    // A retry of A past its window (record time): an event again, same id.
    let late_a = (
        a.0.clone(),
        TwilioWebhook {
            webhook_id: "wh-a-late".into(),
            ..a.1.clone()
        },
    );
    produce_at(&env, &late_a, now + window + 1).await?;
    let got = events(&env, 4).await?;
    let ids: Vec<&str> = got.iter().map(|e| e.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        !ids.contains(&"wh-a-retry"),
        "the retry after the restart was not dropped: {ids:?}"
    );
    assert!(
        ids.contains(&"wh-b") && ids.contains(&"wh-a-late"),
        "{ids:?}"
    );
    let id_of = |webhook: &str| {
        got.iter()
            .find(|e| e.webhook_id == webhook)
            .map(|e| e.event_id.clone())
    };
    assert_eq!(
        id_of("wh-a-late"),
        id_of("wh-a"),
        "a replayed event keeps its id"
    );
    // Nothing more comes (the retry is not just late): once the input is all
    // committed, the output holds those four events and no other.
    wait_for("all input committed", Duration::from_secs(30), || {
        let env = &env;
        async move {
            let (done, end) = progress(env)?;
            Ok((done == end).then_some(()))
        }
    })
    .await?;
    let all = env
        .read_all::<ConversationEvent>(topics::CONVERSATION_EVENTS)
        .await?;
    assert_eq!(all.len(), 4, "{all:?}");
    terminate(&mut second, Duration::from_secs(30))?;
    Ok(())
}

/// Every record of `topic` (read_uncommitted is fine: normalize is stopped
/// or idle), key and payload.
fn read_raw(env: &TestEnv, topic: &str) -> anyhow::Result<Vec<(String, Option<Vec<u8>>)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("group.id", format!("{}raw", env.kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, i32::try_from(p)?, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let mut ended = 0;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while ended < partitions {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "{topic} not read within 20 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            )),
        }
    }
    Ok(out)
}
