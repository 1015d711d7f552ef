//! Exactly-once transcript against the real broker: the `si-voice-link`
//! binary is killed with SIGKILL at random moments while conversations text,
//! escalate to a call, are answered with Si's reply, accept the recording,
//! speak, hang up and get their recording; it is restarted each time under
//! the same pod name (its transactional id fences the killed instance). In
//! the end every conversation's transcript on `si.transcript.v1` has exactly
//! one entry per fact, in order, numbered 1 to 6 without a gap or a repeat;
//! every conversation has exactly one `CREATE_CALL`, one "calling you now"
//! text, one command answer, and one `RECORDING_DISCLOSED` and one
//! `RECORDING_ACCEPTED` on the record.
//!
//! `VOICE_LINK_KILL_TEST_CONVERSATIONS` sets the number of conversations
//! (default 200):
//!
//! ```sh
//! cargo build -p si-voice-link --bins
//! cargo test -p si-voice-link --test exactly_once -- --nocapture
//! ```
//!
//! # Why the order is deterministic
//!
//! voice-link reads three topics; Kafka orders records within a partition of
//! one topic, never across topics. The test therefore produces each
//! conversation's inputs in causal phases, the way the pipeline would:
//!
//! 1. the user's text (events topic); the test waits for its transcript entry
//!    (Si cannot answer a text nor be asked to call before the text is read);
//! 2. Si's two-part reply as egress reports it (delivery topic) and the
//!    `ESCALATE_TO_VOICE` command (commands topic); the test waits for the
//!    reply's transcript entry and for the `CREATE_CALL` (a call rings only
//!    once it was placed);
//! 3. egress's outcome of the `CREATE_CALL` (delivery topic) and the call's
//!    life (events topic: answered with the disclosure, the recording
//!    accepted, an utterance, completed, the recording).
//!
//! The transcript entries of phase 3 all come from the events topic, so their
//! order is the partition order; the Call SID from egress may arrive before or
//! after them, which voice-link handles either way (and which writes no
//! entry). Waves of conversations overlap: phase 3 of one wave runs while the
//! next wave texts.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use si_schemas::AvroRecord;
use si_schemas::records::{
    CallEvent, CallState, Channel, CognitionResponse, Command, CommandKind, ComplianceEvent,
    ComplianceEventKind, ConversationEvent, ConversationEventType, DeliveryOutcome, DeliveryStatus,
    Direction, EventSource, LocaleSource, MessageReceived, OperationKind, OutboundOperation,
    Participant, RecordingAvailable, RecordingDisclosure, TranscriptEntry, TranscriptEntryKind,
    TranscriptSpeaker, TranscriptionEvent, TranscriptionSpeaker,
};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::StageProcess;
use si_voice_link::processor::{call_operation_id, command_status_id};

const KILLS: usize = 7;
const WAVES: usize = 5;
/// Our number: the user texts it, and the call comes from it.
const OURS: &str = "+14155550100";
/// The two parts of Si's reply, as segment split it and Twilio accepted it.
const REPLY: [&str; 2] = ["Sure, I will call you", "in a moment."];
const CALL_SECONDS: i32 = 42;
/// Each phase's wait for voice-link (restarts included).
const PHASE_DEADLINE: Duration = Duration::from_secs(120);

/// What the driver has seen and is doing, for the killer and for failures.
#[derive(Default)]
struct Progress {
    /// Transcript entries the driver has read.
    entries: AtomicUsize,
    /// The phase the driver is in.
    phase: Mutex<String>,
}

impl Progress {
    fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    fn enter(&self, phase: String) {
        *self.phase.lock().unwrap() = phase;
    }

    fn phase(&self) -> String {
        self.phase.lock().unwrap().clone()
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// One conversation's ids: a user texting our number by SMS.
struct Conv {
    i: usize,
    id: String,
    user: String,
    command_id: String,
    response_id: String,
    call_sid: String,
    recording_sid: String,
}

impl Conv {
    fn new(i: usize) -> Self {
        Self {
            i,
            id: format!("CH{i:032}"),
            // A distinct E.164 user per conversation.
            user: format!("+1628555{i:04}"),
            command_id: format!("cmd-{i}"),
            response_id: format!("r-{i}"),
            call_sid: format!("CA{i:032}"),
            recording_sid: format!("RE{i:032}"),
        }
    }

    fn session(&self) -> String {
        format!("session-{}", self.id)
    }

    fn event_id(&self, n: usize) -> String {
        format!("ev-{}-{n}", self.id)
    }

    fn event(&self, n: usize, event_type: ConversationEventType) -> ConversationEvent {
        let channel = if event_type == ConversationEventType::MessageReceived {
            Channel::Sms
        } else {
            Channel::Voice
        };
        ConversationEvent {
            channel,
            source: if channel == Channel::Sms {
                EventSource::Messaging
            } else {
                EventSource::Voice
            },
            participant: Some(Participant {
                address: Some(self.user.clone()),
                channel,
                user_id: None,
                visitor_id: Some(format!("v-{}", self.id)),
                registered: false,
                participant_sid: None,
                identity: None,
                proxy_address: Some(OURS.into()),
            }),
            locale: "en".into(),
            locale_source: LocaleSource::PhoneCountry,
            webhook_id: format!("wh-{}-{n}", self.id),
            dedup_key: format!("d-{}-{n}", self.id),
            ..ConversationEvent::adapter(
                self.event_id(n),
                &self.id,
                &self.session(),
                event_type,
                now_ms(),
            )
        }
    }

    /// Phase 1: the user's text.
    fn text(&self) -> ConversationEvent {
        ConversationEvent {
            message: Some(MessageReceived {
                message_sid: self.message_sid(0),
                index: None,
                author: Some(self.user.clone()),
                body: Some(self.body()),
                media: Vec::new(),
                attributes_json: None,
                num_segments: Some(1),
                location: None,
                profile_name: None,
                button_payload: None,
            }),
            ..self.event(0, ConversationEventType::MessageReceived)
        }
    }

    /// Message SIDs: 0 the user's text, 1 and 2 the parts of Si's reply.
    fn message_sid(&self, n: usize) -> String {
        format!("SM{:031}{n}", self.i)
    }

    fn body(&self) -> String {
        format!("Can you call me about {}?", self.id)
    }

    /// Phase 2: the escalation.
    fn escalate(&self) -> Command {
        Command {
            session_id: Some(self.session()),
            reason: Some("the user asked for a call".into()),
            ..Command::new(
                CommandKind::EscalateToVoice,
                &self.command_id,
                &self.id,
                "exactly-once-test",
                now_ms(),
            )
        }
    }

    fn delivered(&self, operation_id: String, kind: OperationKind, sid: String) -> DeliveryStatus {
        DeliveryStatus {
            operation_id,
            conversation_id: self.id.clone(),
            outcome: DeliveryOutcome::Accepted,
            twilio_sid: Some(sid),
            segments: Some(1),
            error_code: None,
            error_message: None,
            attempts: 1,
            response_id: None,
            part_index: Some(0),
            part_count: Some(1),
            kind: Some(kind),
            body: None,
            resend_of: None,
            remediation: None,
            at: now_ms(),
            scheduled_at: None,
            compliance_event_id: None,
        }
    }

    /// Phase 2: egress's statuses of Si's reply, one per part.
    fn reply_parts(&self) -> Vec<DeliveryStatus> {
        (0..REPLY.len())
            .map(|index| DeliveryStatus {
                response_id: Some(self.response_id.clone()),
                part_index: Some(i32::try_from(index).unwrap()),
                part_count: Some(i32::try_from(REPLY.len()).unwrap()),
                body: Some(REPLY[index].into()),
                resend_of: None,
                remediation: None,
                ..self.delivered(
                    format!("{}:{index}", self.response_id),
                    OperationKind::SendMessage,
                    self.message_sid(index + 1),
                )
            })
            .collect()
    }

    /// Phase 3: egress's outcome of the `CREATE_CALL`.
    fn call_placed(&self) -> DeliveryStatus {
        self.delivered(
            call_operation_id(&self.command_id),
            OperationKind::CreateCall,
            self.call_sid.clone(),
        )
    }

    fn call(
        &self,
        n: usize,
        status: CallState,
        disclosure: Option<RecordingDisclosure>,
    ) -> ConversationEvent {
        ConversationEvent {
            call: Some(CallEvent {
                call_sid: self.call_sid.clone(),
                status,
                direction: Some("outbound-api".into()),
                duration_seconds: (status == CallState::Completed).then_some(CALL_SECONDS),
                disclosure_accepted: (disclosure == Some(RecordingDisclosure::Accepted))
                    .then_some(true),
                disclosure,
                answered_by: None,
            }),
            ..self.event(n, ConversationEventType::CallStatusChanged)
        }
    }

    /// Phase 3: the call's life, in the order normalize writes it.
    fn call_events(&self) -> Vec<ConversationEvent> {
        let utterance = ConversationEvent {
            transcription: Some(TranscriptionEvent {
                call_sid: self.call_sid.clone(),
                transcription_sid: Some(format!("GT{}", &self.call_sid[2..])),
                text: self.utterance(),
                speaker: TranscriptionSpeaker::User,
                sequence: Some(1),
                is_final: true,
                confidence: Some(0.9),
            }),
            ..self.event(3, ConversationEventType::Transcription)
        };
        let recording = ConversationEvent {
            recording: Some(RecordingAvailable {
                recording_sid: self.recording_sid.clone(),
                call_sid: self.call_sid.clone(),
                url: Some(format!(
                    "https://api.twilio.com/2010-04-01/Recordings/{}",
                    self.recording_sid
                )),
                status: Some("completed".into()),
                duration_seconds: Some(CALL_SECONDS - 2),
                channels: Some(1),
            }),
            ..self.event(5, ConversationEventType::RecordingAvailable)
        };
        vec![
            self.call(
                1,
                CallState::InProgress,
                Some(RecordingDisclosure::Disclosed),
            ),
            self.call(
                2,
                CallState::InProgress,
                Some(RecordingDisclosure::Accepted),
            ),
            utterance,
            self.call(4, CallState::Completed, None),
            recording,
        ]
    }

    fn utterance(&self) -> String {
        format!("I need to move my appointment, {}", self.id)
    }

    /// The transcript this conversation must have, in order: entry id, kind,
    /// text.
    fn expected(&self) -> Vec<(String, TranscriptEntryKind, Option<String>)> {
        vec![
            (
                format!("in-{}", self.event_id(0)),
                TranscriptEntryKind::Message,
                Some(self.body()),
            ),
            (
                format!("out-{}", self.response_id),
                TranscriptEntryKind::Message,
                Some(REPLY.join(" ")),
            ),
            (
                format!("call-start-{}", self.call_sid),
                TranscriptEntryKind::CallStarted,
                None,
            ),
            (
                format!("utt-{}", self.event_id(3)),
                TranscriptEntryKind::Utterance,
                Some(self.utterance()),
            ),
            (
                format!("call-end-{}", self.call_sid),
                TranscriptEntryKind::CallEnded,
                None,
            ),
            (
                format!("rec-{}", self.recording_sid),
                TranscriptEntryKind::Recording,
                None,
            ),
        ]
    }
}

fn spawn(env: &TestEnv) -> anyhow::Result<StageProcess> {
    // The same pod name every time: the restarted instance's init_transactions
    // fences the killed one and aborts what it left open at once.
    StageProcess::spawn(
        env,
        "si-voice-link",
        "voice-link-kill",
        &[
            ("PUBLIC_BASE_URL", "http://127.0.0.1:9"),
            ("VOICE_QUIET_HOURS", "off"),
            ("TIMER_INTERVAL", "100ms"),
        ],
    )
}

/// Kills voice-link [`KILLS`] times and restarts it each time; returns the
/// instance left running.
///
/// The moments are random points of the run: each kill waits until the
/// transcript has reached a random number of entries (drawn from the seed,
/// before the last quarter, and past what the previous instance had committed
/// so that the new one has done some work), then a random 0–200 ms more. A
/// kill thus lands mid-traffic: while records are processed, a transaction
/// commits, or the state restores. (Not `ready()` plus a delay: `/readyz`
/// answers 200 before the stage has registered its readiness checks, so
/// "ready" can mean "just started".)
async fn kill_repeatedly(
    env: &TestEnv,
    seed: u64,
    started: Instant,
    progress: &Progress,
    entries_expected: usize,
) -> anyhow::Result<StageProcess> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut points: Vec<usize> = (0..KILLS)
        .map(|_| rng.random_range(1..entries_expected * 3 / 4))
        .collect();
    points.sort_unstable();
    for (kill, point) in (1..=KILLS).zip(points) {
        let mut child = spawn(env)?;
        child.ready(Duration::from_secs(60)).await?;
        // Past the drawn point already (the previous restart caught up):
        // the next entry, or — once every entry is written — right away,
        // which still kills a stage that is idle after a restore.
        let point = point.max(progress.entries() + 1).min(entries_expected);
        let until = Instant::now() + PHASE_DEADLINE;
        while progress.entries() < point {
            if Instant::now() > until {
                bail!(
                    "kill {kill}: the transcript did not reach {point} entries within {PHASE_DEADLINE:?} \
                     ({} seen; the driver is at {:?}); voice-link's counters:\n{}\nits log:\n{}",
                    progress.entries(),
                    progress.phase(),
                    counters(&child).await,
                    child.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A random moment after that point, not a synchronisation.
        let delay = Duration::from_millis(rng.random_range(0..200));
        tokio::time::sleep(delay).await;
        child.kill()?;
        eprintln!(
            "[kill test] SIGKILL {kill} at {point}+ of {entries_expected} transcript entries, +{delay:?} ({:?} in; {} seen then)",
            started.elapsed(),
            progress.entries(),
        );
    }
    let mut last = spawn(env)?;
    last.ready(Duration::from_secs(60)).await?;
    Ok(last)
}

/// The stream runner's counters of a running stage (for failure messages).
async fn counters(stage: &StageProcess) -> String {
    let url = format!("http://{}/metrics", stage.admin_addr());
    match reqwest::get(&url).await {
        Ok(response) => response
            .text()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                [
                    "si_records_in_total",
                    "si_records_out_total",
                    "si_transactions_total",
                    "si_retries_total",
                    "si_assigned_partitions",
                ]
                .iter()
                .any(|m| l.starts_with(m))
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(no metrics: {e})"),
    }
}

/// A read_committed reader following a topic from its beginning.
struct Tail<T> {
    consumer: StreamConsumer,
    topic: &'static str,
    seen: Vec<T>,
}

impl<T: AvroRecord> Tail<T> {
    async fn new(env: &TestEnv, topic: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: env.consumer(topic).await?,
            topic,
            seen: Vec::new(),
        })
    }

    /// Reads on until a record with each key of `want` (by `key`) has been
    /// seen, within `deadline`.
    async fn wait_for_keys(
        &mut self,
        env: &TestEnv,
        what: &str,
        mut want: HashSet<String>,
        key: impl Fn(&T) -> String,
        on_record: impl Fn(usize),
    ) -> anyhow::Result<()> {
        let wanted = want.len();
        for record in &self.seen {
            want.remove(&key(record));
        }
        let until = Instant::now() + PHASE_DEADLINE;
        while !want.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(left, self.consumer.recv()).await else {
                let missing: Vec<_> = want.iter().take(3).collect();
                bail!(
                    "{what}: {} of {wanted} on {} within {PHASE_DEADLINE:?}; missing e.g. {missing:?}",
                    wanted - want.len(),
                    self.topic,
                );
            };
            if let Some(payload) = received?.payload() {
                let record: T = env.codec.decode(payload).await?;
                want.remove(&key(&record));
                self.seen.push(record);
                on_record(self.seen.len());
            }
        }
        Ok(())
    }
}

/// Produces every conversation's inputs, wave by wave, phase by phase (see
/// the top of this file for why), and returns once every conversation's recording
/// is in the transcript.
async fn drive(env: &TestEnv, convs: &[Conv], progress: &Progress) -> anyhow::Result<()> {
    let mut transcript = Tail::<TranscriptEntry>::new(env, topics::TRANSCRIPT).await?;
    let mut outbound = Tail::<OutboundOperation>::new(env, topics::OUTBOUND).await?;
    let count = |n| progress.entries.store(n, Ordering::Relaxed);
    let entry_id = |e: &TranscriptEntry| e.entry_id.clone();
    for (w, wave) in convs.chunks(convs.len().div_ceil(WAVES)).enumerate() {
        // 1. The users text.
        progress.enter(format!("wave {w}: producing the texts"));
        let texts: Vec<_> = wave.iter().map(|c| (c.id.as_str(), c.text())).collect();
        env.produce_all(topics::CONVERSATION_EVENTS, &texts).await?;
        progress.enter(format!("wave {w}: waiting for the texts' entries"));
        let want = wave.iter().map(|c| c.expected()[0].0.clone()).collect();
        transcript
            .wait_for_keys(env, &progress.phase(), want, entry_id, count)
            .await?;
        // 2. Si answers (as egress reports it) and asks for a call.
        progress.enter(format!("wave {w}: producing the replies and commands"));
        let parts: Vec<_> = wave
            .iter()
            .flat_map(|c| c.reply_parts().into_iter().map(|p| (c.id.as_str(), p)))
            .collect();
        env.produce_all(topics::DELIVERY, &parts).await?;
        let commands: Vec<_> = wave.iter().map(|c| (c.id.as_str(), c.escalate())).collect();
        env.produce_all(topics::COMMANDS, &commands).await?;
        progress.enter(format!("wave {w}: waiting for the replies' entries"));
        let want = wave.iter().map(|c| c.expected()[1].0.clone()).collect();
        transcript
            .wait_for_keys(env, &progress.phase(), want, entry_id, count)
            .await?;
        progress.enter(format!("wave {w}: waiting for the CREATE_CALLs"));
        let want = wave
            .iter()
            .map(|c| call_operation_id(&c.command_id))
            .collect();
        outbound
            .wait_for_keys(
                env,
                &progress.phase(),
                want,
                |op| op.operation_id.clone(),
                |_| {},
            )
            .await?;
        // 3. The calls: Twilio's Call SID, then each call's life.
        progress.enter(format!("wave {w}: producing the calls"));
        let placed: Vec<_> = wave
            .iter()
            .map(|c| (c.id.as_str(), c.call_placed()))
            .collect();
        env.produce_all(topics::DELIVERY, &placed).await?;
        let calls: Vec<_> = wave
            .iter()
            .flat_map(|c| c.call_events().into_iter().map(|e| (c.id.as_str(), e)))
            .collect();
        env.produce_all(topics::CONVERSATION_EVENTS, &calls).await?;
    }
    progress.enter("waiting for every recording's entry".into());
    let want = convs.iter().map(|c| c.expected()[5].0.clone()).collect();
    transcript
        .wait_for_keys(env, &progress.phase(), want, entry_id, count)
        .await
}

/// How many records per key, for every key of `ids` (0 when none).
fn counts<'a>(
    ids: impl Iterator<Item = String>,
    seen: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = ids.map(|id| (id, 0)).collect();
    for id in seen {
        *counts.entry(id.to_owned()).or_default() += 1;
    }
    counts
}

fn assert_once(what: &str, counts: &BTreeMap<String, usize>) {
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(
        wrong.is_empty(),
        "{what}: not exactly one each, e.g. {wrong:?}"
    );
}

/// The conversation's transcript is exactly what it should be.
fn check_transcript(conv: &Conv, entries: &[&TranscriptEntry]) {
    let expected = conv.expected();
    let got: Vec<(&str, Option<TranscriptEntryKind>, i64)> = entries
        .iter()
        .map(|e| (e.entry_id.as_str(), e.entry_kind, e.sequence))
        .collect();
    let want: Vec<(&str, Option<TranscriptEntryKind>, i64)> = expected
        .iter()
        .zip(1..)
        .map(|((id, kind, _), sequence)| (id.as_str(), Some(*kind), sequence))
        .collect();
    assert_eq!(
        got, want,
        "{}: transcript (entry id, kind, sequence)",
        conv.id
    );
    for (entry, (_, _, text)) in entries.iter().zip(&expected) {
        assert_eq!(entry.conversation_id, conv.id);
        assert_eq!(entry.session_id, conv.session(), "{}", entry.entry_id);
        if text.is_some() {
            assert_eq!(&entry.text, text, "{}", entry.entry_id);
        }
    }
    let [inbound, reply, started, utterance, ended, recording] = entries else {
        unreachable!("six entries, checked above");
    };
    assert_eq!(
        (inbound.direction, inbound.speaker),
        (Direction::Inbound, TranscriptSpeaker::User)
    );
    assert_eq!(
        (reply.direction, reply.speaker),
        (Direction::Outbound, TranscriptSpeaker::Si)
    );
    assert_eq!(started.direction, Direction::Outbound, "a call Si placed");
    assert_eq!(started.call_sid.as_deref(), Some(conv.call_sid.as_str()));
    assert_eq!(utterance.speaker, TranscriptSpeaker::User);
    assert_eq!(
        ended.call_outcome.as_deref(),
        Some("connected"),
        "{}",
        conv.id
    );
    assert_eq!(ended.call_duration_seconds, Some(CALL_SECONDS));
    assert_eq!(
        recording
            .recording
            .as_ref()
            .map(|r| r.recording_sid.as_str()),
        Some(conv.recording_sid.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_neither_skips_nor_repeats_a_transcript_entry()
-> anyhow::Result<()> {
    let n: usize = std::env::var("VOICE_LINK_KILL_TEST_CONVERSATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = rand::random::<u64>();
    eprintln!("[kill test] {n} conversations in {WAVES} waves, {KILLS} kills, seed {seed}");
    let env = TestEnv::start().await?;
    let convs: Vec<Conv> = (0..n).map(Conv::new).collect();
    let progress = Progress::default();

    let started = Instant::now();
    let (mut last, ()) = tokio::try_join!(
        kill_repeatedly(&env, seed, started, &progress, 6 * n),
        drive(&env, &convs, &progress),
    )?;
    let complete = started.elapsed();
    last.terminate(Duration::from_secs(30))?;
    eprintln!("[kill test] {n} transcripts complete after {complete:?}, {KILLS} SIGKILLs");

    // The transcript: per conversation, exactly the six entries, in order.
    let transcript = env.read_all::<TranscriptEntry>(topics::TRANSCRIPT).await?;
    let mut ids = HashSet::new();
    let repeated: Vec<&str> = transcript
        .iter()
        .map(|(_, e)| e.entry_id.as_str())
        .filter(|id| !ids.insert(*id))
        .take(5)
        .collect();
    assert!(repeated.is_empty(), "entries written twice: {repeated:?}");
    let mut by_conversation: HashMap<&str, Vec<&TranscriptEntry>> = HashMap::new();
    for (key, entry) in &transcript {
        assert_eq!(key, &entry.conversation_id, "keyed by conversation");
        by_conversation
            .entry(entry.conversation_id.as_str())
            .or_default()
            .push(entry);
    }
    for conv in &convs {
        check_transcript(
            conv,
            by_conversation
                .get(conv.id.as_str())
                .map_or(&[], Vec::as_slice),
        );
    }
    assert_eq!(transcript.len(), 6 * n, "no entry for anything else");

    // One call placed per conversation, as one record.
    let operations = env.read_all::<OutboundOperation>(topics::OUTBOUND).await?;
    assert_once(
        "CREATE_CALL",
        &counts(
            convs.iter().map(|c| call_operation_id(&c.command_id)),
            operations
                .iter()
                .filter(|(_, op)| op.kind == OperationKind::CreateCall)
                .map(|(_, op)| op.operation_id.as_str()),
        ),
    );
    assert_eq!(operations.len(), n, "nothing else on twilio.outbound.v1");
    let by_id: HashMap<&str, &OutboundOperation> = operations
        .iter()
        .map(|(_, op)| (op.operation_id.as_str(), op))
        .collect();
    for conv in &convs {
        let op = by_id[call_operation_id(&conv.command_id).as_str()];
        assert_eq!(op.conversation_id, conv.id);
        assert_eq!(op.to.as_deref(), Some(conv.user.as_str()));
        assert_eq!(op.from.as_deref(), Some(OURS), "the conversation's number");
    }

    // "Si is calling you now", once; no other text.
    let responses = env.read_all::<CognitionResponse>(topics::RESPONSES).await?;
    assert_once(
        "calling-now texts",
        &counts(
            convs
                .iter()
                .map(|c| format!("voice-calling-{}", c.command_id)),
            responses.iter().map(|(_, r)| r.response_id.as_str()),
        ),
    );
    assert_eq!(responses.len(), n, "nothing else on si.responses.v1");

    // One answer per command (voice-link's records on twilio.delivery.v1).
    let statuses = env.read_all::<DeliveryStatus>(topics::DELIVERY).await?;
    let answers: Vec<&DeliveryStatus> = statuses
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.operation_id.starts_with("voice-"))
        .collect();
    assert_once(
        "command answers",
        &counts(
            convs.iter().map(|c| command_status_id(&c.command_id)),
            answers.iter().map(|s| s.operation_id.as_str()),
        ),
    );
    assert!(
        answers
            .iter()
            .all(|s| s.outcome == DeliveryOutcome::Accepted)
    );

    // The recording consent on the record: disclosed and accepted, once each.
    let compliance = env.read_all::<ComplianceEvent>(topics::COMPLIANCE).await?;
    for kind in [
        ComplianceEventKind::RecordingDisclosed,
        ComplianceEventKind::RecordingAccepted,
    ] {
        assert_once(
            &format!("{kind:?}"),
            &counts(
                convs.iter().map(|c| c.id.clone()),
                compliance
                    .iter()
                    .filter(|(_, e)| e.kind == kind)
                    .filter_map(|(_, e)| e.conversation_id.as_deref()),
            ),
        );
    }
    assert_eq!(compliance.len(), 2 * n, "nothing else on si.compliance.v1");
    let calls: HashMap<&str, &str> = convs
        .iter()
        .map(|c| (c.id.as_str(), c.call_sid.as_str()))
        .collect();
    assert!(compliance.iter().all(|(_, e)| {
        e.conversation_id
            .as_deref()
            .and_then(|c| calls.get(c))
            .is_some_and(|sid| e.message_ref.as_deref() == Some(*sid))
    }));
    Ok(())
}
