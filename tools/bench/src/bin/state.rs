//! `si-state-bench`: normalize's restore time and memory with a large state
//! (`dev/bench-state` builds and runs it).
//!
//! On a topic prefix of its own it fills normalize's changelog
//! (`si.normalize.state.v1`) with the state of `--conversations`
//! conversations (a session binding with one participant each), the calls of
//! some of them, and the seen-event entries a day of `--webhooks-per-day`
//! leaves inside `--dedup-window` at its busiest hour (`--peak-factor` times
//! the average hour), each in the partition its conversation's webhooks go
//! to. It then queues probe webhooks (Twilio retries of seeded events, and
//! new messages of seeded conversations), starts the release `si-normalize`,
//! and measures how long the restore takes (the runner's
//! `si_state_restore_seconds`, and process start to `/readyz`), the resident
//! memory once restored and its peak (`VmHWM`), and checks the probes: every
//! retry dropped, every new message an event with the seeded session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use si_bench::procfs::{hwm_kib, rss_kib};
use si_normalize::ids;
use si_normalize::transform::{conversation_key, seen_key};
use si_schemas::records::{
    BoundParticipant, Channel, ConversationBinding, ConversationEvent, ConversationState,
    NormalizeState, NormalizeStateKind, SeenEvent, TwilioWebhook, WebhookParam, WebhookRoute,
};
use si_schemas::topics as topic;
use si_testkit::{StageProcess, TestEnv};

const DAY_MS: i64 = 86_400_000;
/// normalize's default `SESSION_TTL`.
const SESSION_TTL_MS: i64 = 30 * DAY_MS;
/// How long normalize keeps a call's link (`call|<CallSid>`).
const CALL_TTL_MS: i64 = DAY_MS;

/// Normalize with a large state: restore time and memory.
#[derive(Debug, Parser)]
#[command(name = "si-state-bench", version)]
struct Args {
    /// Conversations in state (one `conv|` entry each).
    #[arg(long, default_value_t = 1_000_000)]
    conversations: usize,
    /// Webhooks a day at that volume (their seen entries live DEDUP_WINDOW).
    #[arg(long, default_value_t = 4_000_000)]
    webhooks_per_day: u64,
    /// The dedup window normalize runs with (DEDUP_WINDOW).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// The busiest hour's traffic over the average hour's.
    #[arg(long, default_value_t = 2.5)]
    peak_factor: f64,
    /// Calls linked in state (`call|` entries), within the last day.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Probe webhooks of each kind (retries, new messages).
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// The memory limit to compare with, MiB (the chart's normalize limit).
    #[arg(long, default_value_t = 512)]
    limit_mib: u64,
    /// Where si-normalize is (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where normalize's log goes.
    #[arg(long, default_value = ".cache/bench/logs")]
    logs: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    bootstrap_servers: String,
}

impl Args {
    /// Seen entries inside the window at the busiest hour.
    fn seen_entries(&self) -> usize {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let n = self.webhooks_per_day as f64 * self.dedup_window.as_secs_f64() / 86_400.0
            * self.peak_factor.max(1.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = n.min(self.webhooks_per_day as f64) as usize;
        n
    }
}

/// Kafka's default partitioner (`murmur2_random` in librdkafka, the Java
/// client's `murmur2`): the partition of `key` among `partitions`.
fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = key.len();
    #[allow(clippy::cast_possible_truncation)]
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    #[allow(clippy::cast_possible_wrap)]
    let positive = (h & 0x7fff_ffff) as i32;
    positive % partitions
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn conversation_sid(i: usize) -> String {
    format!("CH{i:032x}")
}

fn token(i: usize) -> String {
    format!("bench-tok-{i:010}")
}

/// A deterministic spread of `i` over `0..span` (no RNG needed).
fn spread(i: usize, span: i64) -> i64 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    #[allow(clippy::cast_possible_wrap)]
    let x = x as i64;
    x.rem_euclid(span.max(1))
}

fn binding(i: usize, now: i64, kind_call: bool) -> NormalizeState {
    let last = now - spread(i, if kind_call { DAY_MS / 2 } else { 29 * DAY_MS });
    NormalizeState {
        kind: if kind_call {
            NormalizeStateKind::Call
        } else {
            NormalizeStateKind::Conversation
        },
        seen_event: None,
        conversation: Some(ConversationBinding {
            conversation_id: conversation_sid(i),
            session_id: uuid::Uuid::from_u128(0xbe0c_0000_0000_0000 ^ (i as u128)).to_string(),
            bound_at: last - spread(i + 7, 5 * DAY_MS),
            last_event_at: last,
            state: (!kind_call).then_some(ConversationState::Active),
            participants: vec![BoundParticipant {
                participant_sid: Some(format!("MB{i:032x}")),
                address: Some(format!("+1415{:07}", i % 10_000_000)),
                channel: if i.is_multiple_of(3) {
                    Channel::Sms
                } else {
                    Channel::Whatsapp
                },
                proxy_address: Some("+14155550199".to_owned()),
                identity: None,
                locale: Some("en-US".to_owned()),
            }],
        }),
    }
}

fn seen(t: usize, now: i64, window_ms: i64) -> (NormalizeState, i64) {
    let first = now - spread(t, window_ms * 9 / 10);
    let state = NormalizeState {
        kind: NormalizeStateKind::SeenEvent,
        seen_event: Some(SeenEvent {
            event_id: ids::event_id(&token(t)),
            webhook_id: uuid::Uuid::from_u128(0x5ee0_0000_0000_0000 ^ (t as u128)).to_string(),
            first_seen_at: first,
        }),
        conversation: None,
    };
    (state, first + window_ms)
}

/// Counts failed deliveries.
#[derive(Clone, Default)]
struct Deliveries(Arc<AtomicU64>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
    expires_at: i64,
) -> anyhow::Result<()> {
    let expires = expires_at.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: si_runtime::state::EXPIRES_AT_HEADER,
        value: Some(&expires),
    });
    let mut record = BaseRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload)
        .headers(headers);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
}

struct Seeded {
    records: usize,
    bytes: usize,
    seen: usize,
    took: Duration,
}

/// Fills the changelog; returns what it wrote.
async fn seed(env: &TestEnv, args: &Args, partitions: i32) -> anyhow::Result<Seeded> {
    let changelog = env.topic(topic::NORMALIZE_STATE);
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> =
        si_runtime::kafka::durable_producer_config(&env.kafka, "state-bench")
            .set("linger.ms", "50")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "500000")
            .create_with_context(deliveries.clone())?;
    let started = Instant::now();
    let now = now_ms();
    let window_ms = i64::try_from(args.dedup_window.as_millis())?;
    let n = args.conversations;
    let part = |i: usize| murmur2_partition(conversation_sid(i).as_bytes(), partitions);
    let mut records = 0;
    let mut bytes = 0;
    for i in 0..n {
        let state = binding(i, now, false);
        let last = state.conversation.as_ref().map_or(now, |c| c.last_event_at);
        let payload = env.codec.encode(&changelog, &state).await?;
        let key = conversation_key(&conversation_sid(i));
        send(
            &producer,
            &changelog,
            part(i),
            &key,
            &payload,
            last + SESSION_TTL_MS,
        )?;
        records += 1;
        bytes += payload.len() + key.len();
        if i.is_multiple_of(200_000) {
            eprintln!("[state-bench] {i} conversations written");
        }
    }
    for c in 0..args.calls.min(n) {
        let i = c * (n / args.calls.max(1)).max(1) % n;
        let state = binding(i, now, true);
        let last = state.conversation.as_ref().map_or(now, |c| c.last_event_at);
        let payload = env.codec.encode(&changelog, &state).await?;
        let key = format!("call|CA{c:032x}");
        send(
            &producer,
            &changelog,
            part(i),
            &key,
            &payload,
            last + CALL_TTL_MS,
        )?;
        records += 1;
        bytes += payload.len() + key.len();
    }
    let seen_n = args.seen_entries();
    for t in 0..seen_n {
        let (state, expires) = seen(t, now, window_ms);
        let payload = env.codec.encode(&changelog, &state).await?;
        let key = seen_key(&token(t));
        send(&producer, &changelog, part(t % n), &key, &payload, expires)?;
        records += 1;
        bytes += payload.len() + key.len();
        if t.is_multiple_of(200_000) {
            eprintln!("[state-bench] {t} seen events written");
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("flushing the changelog")?;
    let failed = deliveries.0.load(Ordering::Relaxed);
    ensure!(failed == 0, "{failed} changelog records were not delivered");
    Ok(Seeded {
        records,
        bytes,
        seen: seen_n,
        took: started.elapsed(),
    })
}

fn webhook(id: &str, tok: &str, ch: &str, i: usize, now: i64) -> TwilioWebhook {
    let params = [
        ("EventType", "onMessageAdded".to_owned()),
        ("ConversationSid", ch.to_owned()),
        ("MessageSid", format!("IM{:032x}", i)),
        ("Author", format!("whatsapp:+1415{:07}", i % 10_000_000)),
        ("Source", "WHATSAPP".to_owned()),
        ("ParticipantSid", format!("MB{i:032x}")),
        ("Body", "probe".to_owned()),
    ];
    TwilioWebhook {
        webhook_id: id.to_owned(),
        received_at: now,
        route: WebhookRoute::ConversationsPostEvent,
        event_type: Some("onMessageAdded".to_owned()),
        account_sid: Some(format!("AC{:032x}", 1)),
        resource_sid: None,
        idempotency_token: Some(tok.to_owned()),
        content_type: "application/x-www-form-urlencoded".into(),
        params: params
            .into_iter()
            .map(|(name, value)| WebhookParam {
                name: name.to_owned(),
                value,
            })
            .collect(),
        body: None,
        query: None,
        headers: std::collections::BTreeMap::new(),
        conversation_hint: None,
        traceparent: None,
    }
}

/// Queues the probes: retries of seeded events (tokens whose conversation is
/// `t % n`) and new messages of seeded conversations. Returns the expected
/// session of every probed conversation.
async fn probe(
    env: &TestEnv,
    args: &Args,
    seen_n: usize,
) -> anyhow::Result<HashMap<String, String>> {
    let n = args.conversations;
    let now = now_ms();
    let mut expected = HashMap::new();
    for k in 0..args.probes.min(seen_n) {
        let t = k * (seen_n / args.probes.max(1)).max(1);
        let i = t % n;
        let ch = conversation_sid(i);
        env.produce(
            topic::WEBHOOKS,
            &ch,
            &webhook(&format!("retry-{k}"), &token(t), &ch, i, now),
        )
        .await?;
    }
    for k in 0..args.probes.min(n) {
        let i = (k * 7_919 + 13) % n;
        let ch = conversation_sid(i);
        let tok = format!("bench-new-{k}");
        env.produce(
            topic::WEBHOOKS,
            &ch,
            &webhook(&format!("new-{k}"), &tok, &ch, i, now),
        )
        .await?;
        let session = binding(i, now, false)
            .conversation
            .map(|c| c.session_id)
            .unwrap_or_default();
        expected.insert(ch, session);
    }
    Ok(expected)
}

fn status_kib(pid: u32, field: fn(&str) -> Option<u64>) -> Option<u64> {
    field(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.conversations > 0, "--conversations must be positive");
    let env = TestEnv::start_named(&args.bootstrap_servers, "statebench").await?;
    let partitions = {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &env.kafka.bootstrap_servers)
            .create()?;
        let changelog = env.topic(topic::NORMALIZE_STATE);
        let metadata = rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            Some(&changelog),
            Duration::from_secs(10),
        )?;
        i32::try_from(
            metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len()),
        )?
    };
    ensure!(partitions > 0, "the changelog has no partitions");
    eprintln!(
        "[state-bench] prefix {}: {} conversations, {} calls, {} seen events, {partitions} partitions",
        env.kafka.topic_prefix,
        args.conversations,
        args.calls,
        args.seen_entries()
    );
    let seeded = seed(&env, &args, partitions).await?;
    eprintln!(
        "[state-bench] changelog written: {} records, {:.0} MiB, in {:.1?}",
        seeded.records,
        mib(seeded.bytes as u64 / 1024),
        seeded.took
    );
    let expected = probe(&env, &args, seeded.seen).await?;

    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .to_path_buf(),
    };
    std::fs::create_dir_all(&args.logs)?;
    let log = args.logs.join("state-bench-normalize.log");
    let window = humantime::format_duration(args.dedup_window).to_string();
    let started = Instant::now();
    let mut normalize = StageProcess::spawn_at(
        &env,
        &bin_dir.join("si-normalize"),
        "state-bench",
        &[
            ("DEDUP_WINDOW", window.as_str()),
            ("VISITOR_ID_SECRET", "state-bench"),
            ("LOG_FORMAT", "text"),
        ],
        &log,
    )?;
    let pid = normalize.pid().context("normalize is not running")?;
    normalize.ready(Duration::from_secs(600)).await?;
    let ready_after = started.elapsed();
    let restore_seconds = normalize
        .metric_sum("si_state_restore_seconds_sum", &[])
        .await?;
    let restored = normalize
        .metric_sum("si_state_restored_records_total", &[])
        .await?;

    // The probes: exactly the new messages come out, with the seeded sessions.
    let events = env
        .collect::<ConversationEvent>(
            topic::CONVERSATION_EVENTS,
            Duration::from_secs(120),
            |_| true,
            |kept| kept.len() >= expected.len(),
        )
        .await?;
    let rss_restored = status_kib(pid, rss_kib).unwrap_or(0);
    let peak = status_kib(pid, hwm_kib).unwrap_or(0);
    let mut wrong = 0;
    for event in &events {
        let ok = event.webhook_id.starts_with("new-")
            && expected.get(&event.conversation_id) == Some(&event.session_id);
        if !ok {
            wrong += 1;
            eprintln!(
                "[state-bench] unexpected event {} of {} (session {})",
                event.webhook_id, event.conversation_id, event.session_id
            );
        }
    }
    let duplicates = normalize
        .metric_sum("si_normalize_dropped_total", &["reason=\"duplicate\""])
        .await?;
    normalize.terminate(Duration::from_secs(30))?;

    println!(
        "### normalize with {} conversations in state\n",
        args.conversations
    );
    println!("| | |");
    println!("|---|---|");
    println!(
        "| changelog | {} records ({} conversations, {} calls, {} seen events: {} webhooks/day, DEDUP_WINDOW {window}, busiest hour ×{}), {:.0} MiB |",
        seeded.records,
        args.conversations,
        args.calls.min(args.conversations),
        seeded.seen,
        args.webhooks_per_day,
        args.peak_factor,
        mib(seeded.bytes as u64 / 1024)
    );
    println!(
        "| restore (si_state_restore_seconds, all {partitions} partitions) | {restore_seconds:.1} s, {restored} records |"
    );
    println!(
        "| process start to ready | {:.1} s |",
        ready_after.as_secs_f64()
    );
    println!("| RSS once restored | {:.0} MiB |", mib(rss_restored));
    println!(
        "| peak RSS (VmHWM) | {:.0} MiB (limit {} MiB) |",
        mib(peak),
        args.limit_mib
    );
    println!(
        "| probes | {} retries of seeded events dropped (duplicates counted: {duplicates}), {} new messages with the seeded session, {wrong} wrong |",
        args.probes.min(seeded.seen),
        events.len() - wrong
    );
    ensure!(wrong == 0, "{wrong} probe events are wrong");
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let dropped = duplicates as usize;
    ensure!(
        dropped >= args.probes.min(seeded.seen),
        "only {dropped} retries of seeded events were dropped"
    );
    Ok(())
}
