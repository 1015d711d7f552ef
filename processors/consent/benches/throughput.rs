//! Events per second through the real `si-consent` binary (release build)
//! against the real broker and registry, with transactions on and every
//! setting at its default (`COMMIT_INTERVAL`, `MAX_BATCH`). Needs the local
//! stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-consent --bench throughput                 # 40,000 messages
//! CONSENT_BENCH_RECORDS=100000 cargo bench -p si-consent --bench throughput
//! ```
//!
//! The workload is the path every message after the first takes: 2,000 users
//! opted in on `si.consent.v1`, each writing texts round-robin (one
//! conversation each), so every event is checked against the user's consent
//! and forwarded to `si.inbound.v1`. The events are written first; the rate is
//! measured from consent's first commit to the commit of the last event
//! (`si_testkit::throughput`), and every event's forward is checked.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use si_schemas::records::{
    Channel, ConversationEvent, ConversationEventType, EventSource, InboundMessage, LocaleSource,
    MessageReceived, Participant,
};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::throughput::{measure, opt_in_all, spawn_stage, wait_committed};

const USERS: usize = 2_000;
const OURS: &str = "+14155550199";

fn user(n: usize) -> String {
    format!("+1415{:07}", 6_000_000 + n)
}

fn text(n: usize, at: i64) -> (String, ConversationEvent) {
    let u = n % USERS;
    let conversation = format!("sms-bench-{u}");
    let event = ConversationEvent {
        event_id: format!("ev-{n}"),
        conversation_id: conversation.clone(),
        session_id: format!("s-{u}"),
        event_type: ConversationEventType::MessageReceived,
        channel: Channel::Sms,
        source: EventSource::Messaging,
        occurred_at: at,
        received_at: at,
        participant: Some(Participant {
            address: Some(user(u)),
            channel: Channel::Sms,
            user_id: None,
            visitor_id: Some(format!("v-{u}")),
            registered: false,
            participant_sid: None,
            identity: None,
            proxy_address: Some(OURS.into()),
        }),
        locale: "en-US".into(),
        locale_source: LocaleSource::PhoneCountry,
        account_sid: Some("AC0123456789abcdef0123456789abcdef".into()),
        webhook_id: format!("wh-{n}"),
        dedup_key: format!("SM{n:032}"),
        traceparent: None,
        compliance: None,
        message: Some(MessageReceived {
            message_sid: format!("SM{n:032}"),
            index: None,
            author: Some(user(u)),
            body: Some(format!("hello Si, message {n}")),
            media: Vec::new(),
            attributes_json: None,
            num_segments: Some(1),
        }),
        delivery: None,
        participant_change: None,
        state_change: None,
        call: None,
        recording: None,
        transcription: None,
        compliance_record: None,
        media_stored: None,
    };
    (conversation, event)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benchmarks: this one needs the stack, so it lists nothing.
        return Ok(());
    }
    let n: usize = std::env::var("CONSENT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let env = TestEnv::start().await?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    opt_in_all(&env, (0..USERS).map(user), Channel::Sms, now).await?;
    let events: Vec<_> = (0..n).map(|i| text(i, now)).collect();
    env.produce_all(topics::CONVERSATION_EVENTS, &events)
        .await?;
    eprintln!("[throughput] {n} events written");

    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("consent-throughput.log");
    let mut stage = spawn_stage(&env, Path::new(env!("CARGO_BIN_EXE_si-consent")), &[], &log)?;
    let drained = measure(&env, "consent", topics::CONVERSATION_EVENTS).await;
    let drained = match drained {
        Ok(d) => d,
        Err(e) => anyhow::bail!("{e:#}\n{}", stage.log_tail(30)),
    };
    wait_committed(
        &env,
        "si-consent",
        topics::CONVERSATION_EVENTS,
        Duration::from_secs(60),
    )
    .await?;
    stage.terminate(Duration::from_secs(30))?;

    let forwarded = env.read_all::<InboundMessage>(topics::INBOUND).await?;
    anyhow::ensure!(
        forwarded.len() == n,
        "{} records on si.inbound.v1 for {n} messages (log: {})",
        forwarded.len(),
        log.display()
    );
    println!(
        "consent throughput: {:.0} events/s with transactions on: {} events in {:.2?} after a start-up of {:.2?}; {} forwarded to si.inbound.v1",
        drained.per_second(),
        drained.records,
        drained.elapsed,
        drained.startup,
        forwarded.len(),
    );
    Ok(())
}
