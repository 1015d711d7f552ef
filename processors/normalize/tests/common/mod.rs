//! Shared by the integration tests: a webhook workload, the `si-normalize`
//! binary as a child process, and conditions to wait on (never sleeps).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use si_schemas::AvroRecord;
use si_schemas::records::{Channel, IdentityRecord, TwilioWebhook, WebhookParam, WebhookRoute};
use si_schemas::topics;
use si_testkit::TestEnv;

pub const T0: i64 = 1_795_000_000_000;

fn sid(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:032x}")
}

/// A webhook record as ingress writes it.
pub fn webhook(
    id: &str,
    route: WebhookRoute,
    event_type: Option<&str>,
    token: Option<&str>,
    params: &[(&str, &str)],
) -> TwilioWebhook {
    TwilioWebhook {
        webhook_id: id.to_owned(),
        received_at: T0,
        route,
        event_type: event_type.map(str::to_owned),
        account_sid: Some(sid("AC", 1)),
        resource_sid: None,
        idempotency_token: token.map(str::to_owned),
        content_type: "application/x-www-form-urlencoded".into(),
        params: params
            .iter()
            .map(|(n, v)| WebhookParam {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        body: None,
        query: None,
        headers: BTreeMap::new(),
        conversation_hint: None,
        traceparent: Some(format!("00-{:032x}-{:016x}-01", 7, 9)),
    }
}

/// A mixed workload of `n` webhook records (Conversations, Messaging, voice),
/// about 10 % of them Twilio retries of earlier records (same idempotency
/// token or same SID + status, new webhook_id). Returns (key, record) in
/// production order and the number of distinct Twilio events.
pub fn workload(n: usize, seed: u64) -> (Vec<(String, TwilioWebhook)>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let conversations = (n / 25).max(4);
    let users = (n / 25).max(4);
    let mut out: Vec<(String, TwilioWebhook)> = Vec::with_capacity(n);
    let mut unique = 0;
    for i in 0..n {
        let id = format!("wh-{i}");
        if i > 10 && rng.random_range(0..10) == 0 {
            let (key, original) = out[rng.random_range(0..out.len())].clone();
            out.push((
                key,
                TwilioWebhook {
                    webhook_id: id,
                    received_at: original.received_at + 5_000,
                    ..original
                },
            ));
            continue;
        }
        unique += 1;
        let c = rng.random_range(0..conversations);
        let ch = sid("CH", c);
        let user = format!("+1415555{:04}", c % 10_000);
        let wa_user = format!("whatsapp:{user}");
        let tok = format!("tok-{i}");
        let kind = rng.random_range(0..100);
        let mut record = if kind < 30 {
            webhook(
                &id,
                WebhookRoute::ConversationsPostEvent,
                Some("onMessageAdded"),
                Some(&tok),
                &[
                    ("EventType", "onMessageAdded"),
                    ("ConversationSid", &ch),
                    ("MessageSid", &sid("IM", i)),
                    ("Index", &i.to_string()),
                    ("Author", &wa_user),
                    ("Source", "WHATSAPP"),
                    ("ParticipantSid", &sid("MB", c)),
                    ("Body", &format!("message {i} ¿qué tal? 📞")),
                    ("DateCreated", "2026-11-22T10:00:00.000Z"),
                ],
            )
        } else if kind < 40 {
            webhook(
                &id,
                WebhookRoute::ConversationsPostEvent,
                Some("onDeliveryUpdated"),
                Some(&tok),
                &[
                    ("EventType", "onDeliveryUpdated"),
                    ("ConversationSid", &ch),
                    ("MessageSid", &sid("IM", i)),
                    ("DeliveryReceiptSid", &sid("DY", i)),
                    ("ParticipantSid", &sid("MB", c)),
                    ("Status", "delivered"),
                ],
            )
        } else if kind < 46 {
            webhook(
                &id,
                WebhookRoute::ConversationsPostEvent,
                Some("onParticipantAdded"),
                Some(&tok),
                &[
                    ("EventType", "onParticipantAdded"),
                    ("ConversationSid", &ch),
                    ("ParticipantSid", &sid("MB", i)),
                    ("MessagingBinding.Address", &wa_user),
                    ("MessagingBinding.ProxyAddress", "whatsapp:+14155550199"),
                    ("Attributes", r#"{"locale":"es-MX"}"#),
                ],
            )
        } else if kind < 66 {
            // Programmable Messaging users never appear in Conversations: their
            // conversation is derived from the pair, independent of timing.
            let u = rng.random_range(0..users);
            let from = format!("+1628555{:04}", u % 10_000);
            let mut w = webhook(
                &id,
                WebhookRoute::MessagingInbound,
                None,
                (i % 2 == 0).then_some(tok.as_str()),
                &[
                    ("MessageSid", &sid("SM", i)),
                    ("From", &from),
                    ("To", "+14155550199"),
                    ("Body", &format!("sms {i}")),
                    ("NumMedia", "1"),
                    ("MediaUrl0", "https://api.twilio.com/media/ME1"),
                    ("MediaContentType0", "image/jpeg"),
                    ("NumSegments", "1"),
                ],
            );
            w.resource_sid = Some(sid("SM", i));
            return_key(&mut out, from, w);
            continue;
        } else if kind < 76 {
            let u = rng.random_range(0..users);
            let to = format!("+1628555{:04}", u % 10_000);
            let mut w = webhook(
                &id,
                WebhookRoute::MessagingStatus,
                Some("MessageStatus"),
                None,
                &[
                    ("MessageSid", &sid("SM", i)),
                    ("MessageStatus", "delivered"),
                    ("From", "+14155550199"),
                    ("To", &to),
                ],
            );
            w.resource_sid = Some(sid("SM", i));
            return_key(&mut out, to, w);
            continue;
        } else if kind < 88 {
            let mut w = webhook(
                &id,
                WebhookRoute::VoiceStatus,
                Some("CallStatus"),
                Some(&tok),
                &[
                    ("CallSid", &sid("CA", i)),
                    ("CallStatus", "completed"),
                    ("Direction", "outbound-api"),
                    ("From", "+14155550199"),
                    ("To", &user),
                    ("CallDuration", "42"),
                ],
            );
            w.conversation_hint = Some(ch.clone());
            w
        } else if kind < 94 {
            let mut w = webhook(
                &id,
                WebhookRoute::RecordingStatus,
                Some("RecordingStatus"),
                Some(&tok),
                &[
                    ("CallSid", &sid("CA", c)),
                    ("RecordingSid", &sid("RE", i)),
                    ("RecordingUrl", "https://api.twilio.com/rec/RE1"),
                    ("RecordingStatus", "completed"),
                    ("RecordingDuration", "40"),
                    ("RecordingChannels", "2"),
                ],
            );
            w.conversation_hint = Some(ch.clone());
            w
        } else {
            webhook(
                &id,
                WebhookRoute::ConversationsPostEvent,
                Some("onConversationStateUpdated"),
                Some(&tok),
                &[
                    ("EventType", "onConversationStateUpdated"),
                    ("ConversationSid", &ch),
                    ("StateFrom", "active"),
                    ("StateTo", "inactive"),
                    ("Reason", "TIMER"),
                ],
            )
        };
        record.received_at = T0 + i64::try_from(i).unwrap();
        out.push((ch, record));
    }
    (out, unique)
}

fn return_key(out: &mut Vec<(String, TwilioWebhook)>, key: String, mut record: TwilioWebhook) {
    record.received_at = T0 + i64::try_from(out.len()).unwrap();
    out.push((key, record));
}

/// Identity records for some of the workload's users.
pub fn identities() -> Vec<IdentityRecord> {
    (0..50)
        .map(|c| IdentityRecord {
            address: format!("+1415555{c:04}"),
            channel: Channel::Whatsapp,
            user_id: format!("user-{c}"),
            display_name: None,
            locale: (c % 2 == 0).then(|| "pt-BR".to_owned()),
            updated_at: T0,
            attributes: BTreeMap::new(),
        })
        .collect()
}

/// Produces records concurrently and waits for every acknowledgement.
pub async fn produce_all<T: AvroRecord>(
    env: &TestEnv,
    topic: &str,
    records: &[(String, T)],
) -> anyhow::Result<()> {
    env.produce_all(topic, records).await
}

fn produce_raw_future(
    env: &TestEnv,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    loop {
        match env.producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                std::thread::yield_now();
            }
            Err((e, _)) => bail!("enqueueing to {topic}: {e}"),
        }
    }
}

/// Produces raw bytes (for poison records).
pub async fn produce_bytes(
    env: &TestEnv,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let full = env.topic(topic);
    produce_raw_future(env, &full, key.as_bytes(), payload)?
        .await?
        .map_err(|(e, _)| anyhow::anyhow!("producing to {full}: {e}"))?;
    Ok(())
}

/// The log file of a child started with `log_name`.
pub fn log_path(log_name: &str) -> PathBuf {
    log_dir().join(format!("{log_name}.log"))
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("normalize-tests");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Starts the real `si-normalize` binary on the test's topics.
pub fn spawn_normalize(env: &TestEnv, pod: &str, log_name: &str) -> anyhow::Result<Child> {
    spawn_normalize_with(env, pod, log_name, &[])
}

/// [`spawn_normalize`] with more environment variables (`DEDUP_WINDOW`, ...).
pub fn spawn_normalize_with(
    env: &TestEnv,
    pod: &str,
    log_name: &str,
    vars: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log_path(log_name))?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_si-normalize"));
    command.envs(vars.iter().copied());
    let child = command
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("POD_NAME", pod)
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "info,librdkafka=warn,rdkafka=warn")
        .env("VISITOR_ID_SECRET", "test-secret")
        // The default 45 s would make every restart after SIGKILL wait for the
        // dead member's session to expire; 6 s is the broker's minimum.
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
        .env("TRANSACTION_TIMEOUT", "10s")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting si-normalize")?;
    Ok(child)
}

/// SIGTERM, then waits for the exit status.
pub fn terminate(
    child: &mut Child,
    deadline: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
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
            bail!("si-normalize did not stop within {deadline:?} of SIGTERM");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Committed offsets of the normalize group and end offsets of the webhook topic,
/// summed over partitions. Metadata errors right after topic creation (leaders
/// still moving) are retried for up to 10 s.
pub fn progress(env: &TestEnv) -> anyhow::Result<(i64, i64)> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match progress_once(env) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() < until => {
                eprintln!("[progress] retrying: {e}");
                std::thread::park_timeout(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn progress_once(env: &TestEnv) -> anyhow::Result<(i64, i64)> {
    si_testkit::throughput::group_progress(env, "si-normalize", topics::WEBHOOKS)
}

/// Waits until the normalize group has committed every input record.
pub async fn wait_all_committed(env: &TestEnv, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let (done, end) = progress(env)?;
        if done == end {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("normalize committed {done} of {end} input records within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every committed record of `topic` (read_committed, to the end of every partition).
pub async fn read_all<T: AvroRecord>(
    env: &TestEnv,
    topic: &str,
) -> anyhow::Result<Vec<(String, Option<T>)>> {
    let full = env.topic(topic);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("group.id", format!("{}reader-all", env.kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(&full), Duration::from_secs(10))?;
    let partitions = metadata.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    let mut pending = std::collections::HashSet::new();
    for p in 0..partitions {
        let p = i32::try_from(p)?;
        tpl.add_partition_offset(&full, p, Offset::Beginning)?;
        pending.insert(p);
    }
    consumer.assign(&tpl)?;
    let mut raw = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        anyhow::ensure!(
            Instant::now() < until,
            "reading {full} to its end took over 60 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => bail!("reading {full}: {e}"),
            Some(Ok(m)) => raw.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            )),
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    for (key, payload) in raw {
        let value = match payload {
            Some(bytes) => Some(env.codec.decode::<T>(&bytes).await?),
            None => None,
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Events by event_id; fails on a duplicate event_id.
pub fn by_event_id(
    events: Vec<(String, Option<si_schemas::records::ConversationEvent>)>,
) -> anyhow::Result<HashMap<String, si_schemas::records::ConversationEvent>> {
    let mut out = HashMap::with_capacity(events.len());
    for (key, event) in events {
        let event = event.context("a tombstone on the events topic")?;
        anyhow::ensure!(
            key == event.conversation_id,
            "event keyed by {key}, not its conversation"
        );
        if let Some(previous) = out.insert(event.event_id.clone(), event) {
            bail!(
                "event {} (dedup key {}) written twice",
                previous.event_id,
                previous.dedup_key
            );
        }
    }
    Ok(out)
}
