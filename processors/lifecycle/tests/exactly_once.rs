//! Exactly-once timers against the real broker: the `si-lifecycle` binary is
//! killed with SIGKILL at random moments while conversations go quiet, get
//! their warning, time out waiting for a summary, and close; it is restarted
//! each time. In the end every conversation has exactly one warning, one
//! summary request, one closing message, one Twilio close and one archival
//! request: none missing, none repeated.
//!
//! `LIFECYCLE_KILL_TEST_CONVERSATIONS` sets the number of conversations
//! (default 200). The full run of the issue:
//!
//! ```sh
//! cargo build -p si-lifecycle --bins
//! LIFECYCLE_KILL_TEST_CONVERSATIONS=500 cargo test -p si-lifecycle --test exactly_once -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use si_schemas::records::{
    ArchivalRequest, Channel, CognitionResponse, ConversationEvent, ConversationEventType,
    EventSource, InboundMessage, InboundPurpose, LocaleSource, MessageReceived, OperationKind,
    OutboundOperation, Participant,
};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::StageProcess;

const KILLS: usize = 6;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn conversation_id(i: usize) -> String {
    format!("CH{i:032}")
}

fn first_message(i: usize, conv: &str) -> ConversationEvent {
    ConversationEvent {
        channel: Channel::Whatsapp,
        source: EventSource::Conversations,
        participant: Some(Participant {
            // One user per conversation (Twilio: one active conversation per
            // address and proxy address).
            address: Some(format!("+1415{i:07}")),
            channel: Channel::Whatsapp,
            user_id: Some("u-1".into()),
            visitor_id: None,
            registered: true,
            participant_sid: None,
            identity: None,
            proxy_address: Some("+14155550199".into()),
        }),
        locale: "fr".into(),
        locale_source: LocaleSource::Identity,
        webhook_id: format!("wh-{conv}"),
        dedup_key: format!("d-{conv}"),
        message: Some(MessageReceived {
            message_sid: format!("IM-{conv}"),
            index: Some(0),
            author: None,
            body: Some("bonjour".into()),
            media: Vec::new(),
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("{conv}-ev"),
            conv,
            &format!("session-{conv}"),
            ConversationEventType::MessageReceived,
            now_ms(),
        )
    }
}

fn spawn(env: &TestEnv) -> anyhow::Result<StageProcess> {
    // The same pod name every time: the restarted instance's init_transactions
    // aborts what the killed one left open at once.
    StageProcess::spawn(
        env,
        "si-lifecycle",
        "lifecycle-kill",
        &[
            ("LIFECYCLE_WARN_AFTER", "2s"),
            ("LIFECYCLE_CLOSE_AFTER", "4s"),
            ("LIFECYCLE_SUMMARY_TIMEOUT", "1s"),
            ("LIFECYCLE_CLOSING_GRACE", "1s"),
            ("LIFECYCLE_STATE_TTL", "1h"),
            ("TIMER_INTERVAL", "50ms"),
        ],
    )
}

/// `si_state_timers_total{outcome="fired"}` of a running stage.
async fn timers_fired(stage: &StageProcess) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://{}/metrics", stage.admin_addr()))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("si_state_timers_total") && l.contains(r#"outcome="fired""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Waits until `stage` has fired a timer; returns how many it had fired.
async fn wait_for_firing(stage: &StageProcess) -> anyhow::Result<u64> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let fired = timers_fired(stage).await.unwrap_or(0);
        if fired > 0 {
            return Ok(fired);
        }
        anyhow::ensure!(
            Instant::now() < until,
            "no timer fired within 60 s of a restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many records per conversation id, for every conversation of `ids`.
fn per_conversation<'a>(
    ids: &[String],
    seen: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = ids.iter().map(|c| (c.clone(), 0)).collect();
    for conv in seen {
        *counts.entry(conv.to_owned()).or_default() += 1;
    }
    counts
}

fn assert_once(what: &str, counts: &BTreeMap<String, usize>) {
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(
        wrong.is_empty(),
        "{what}: not exactly one per conversation, e.g. {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_neither_skips_nor_repeats_a_warning_or_a_closure()
-> anyhow::Result<()> {
    let n: usize = std::env::var("LIFECYCLE_KILL_TEST_CONVERSATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = rand::random::<u64>();
    eprintln!("[kill test] {n} conversations, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await?;
    let ids: Vec<String> = (0..n).map(conversation_id).collect();
    let chunks: Vec<&[String]> = ids.chunks(n.div_ceil(KILLS)).collect();

    let started = Instant::now();
    for (i, chunk) in chunks.iter().enumerate() {
        // New conversations arrive while earlier ones warn and close.
        for conv in *chunk {
            let index = ids.iter().position(|c| c == conv).unwrap();
            env.produce(
                topics::CONVERSATION_EVENTS,
                conv,
                &first_message(index, conv),
            )
            .await?;
        }
        let mut child = spawn(&env)?;
        // Once this instance fires timers, a random moment later: between
        // records, inside a batch of firings, or during a commit.
        child.ready(Duration::from_secs(60)).await?;
        let fired = wait_for_firing(&child).await?;
        let moment = Duration::from_millis(rng.random_range(0..1_500));
        tokio::time::sleep(moment).await;
        child.kill()?;
        eprintln!(
            "[kill test] SIGKILL {} {moment:?} after its first firing ({fired} fired then; {:?} in)",
            i + 1,
            started.elapsed()
        );
    }

    let mut last = spawn(&env)?;
    last.ready(Duration::from_secs(60)).await?;
    // Every conversation archived (each archival request is a closure's last output).
    let consumer = env.consumer(topics::ARCHIVAL).await?;
    let mut archived = HashSet::new();
    let until = Instant::now() + Duration::from_secs(180);
    while archived.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            bail!(
                "{} of {n} conversations archived within 180 s",
                archived.len()
            );
        };
        let message = message?;
        let request: ArchivalRequest = env.codec.decode(message.payload().unwrap()).await?;
        archived.insert(request.conversation_id);
    }
    last.terminate(Duration::from_secs(30))?;
    eprintln!("[kill test] all archived after {:?}", started.elapsed());

    let responses = env.read_all::<CognitionResponse>(topics::RESPONSES).await?;
    let warnings = per_conversation(
        &ids,
        responses
            .iter()
            .filter(|(_, r)| r.response_id.starts_with("lifecycle-warning-"))
            .map(|(_, r)| r.conversation_id.as_str()),
    );
    assert_once("warnings", &warnings);
    let closings = per_conversation(
        &ids,
        responses
            .iter()
            .filter(|(_, r)| r.response_id.starts_with("lifecycle-closing-"))
            .map(|(_, r)| r.conversation_id.as_str()),
    );
    assert_once("closing messages", &closings);
    let requests = env.read_all::<InboundMessage>(topics::INBOUND).await?;
    assert_once(
        "summary requests",
        &per_conversation(
            &ids,
            requests
                .iter()
                .filter(|(_, m)| m.purpose == InboundPurpose::SummaryRequest)
                .map(|(_, m)| m.conversation_id.as_str()),
        ),
    );
    let operations = env.read_all::<OutboundOperation>(topics::OUTBOUND).await?;
    assert_once(
        "Twilio closes",
        &per_conversation(
            &ids,
            operations
                .iter()
                .filter(|(_, op)| op.kind == OperationKind::CloseConversation)
                .map(|(_, op)| op.conversation_id.as_str()),
        ),
    );
    let archival = env.read_all::<ArchivalRequest>(topics::ARCHIVAL).await?;
    assert_once(
        "archival requests",
        &per_conversation(
            &ids,
            archival.iter().map(|(_, a)| a.conversation_id.as_str()),
        ),
    );
    assert_eq!(responses.len(), 2 * n, "nothing else on si.responses.v1");
    assert_eq!(archival.len(), n);
    Ok(())
}
