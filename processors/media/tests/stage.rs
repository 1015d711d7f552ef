//! The `si-media` binary against the real broker and registry, with the
//! Twilio sandbox serving the media behind HTTP Basic auth and a local
//! directory as the media store. The test writes the `MESSAGE_RECEIVED`
//! events normalize would write.
//!
//! - A call recording is copied like media (`audio/x-wav`, with its call);
//!   Conversations media named only by SID come through the Media Content
//!   Service (its resource, then the temporary content link).
//! - Unavailable items: one message with a good image, an image over the
//!   item limit, a refused type, a 404, a URL answering 500 every time and
//!   one that answers 500 twice and then the bytes: the good and the retried
//!   items are stored, the others are UNAVAILABLE with their reason, the
//!   failing URLs were fetched exactly `MEDIA_FETCH_ATTEMPTS` times; a
//!   message of another conversation, written after it, is stored before it
//!   (a slow conversation does not hold back another).
//!   With `MEDIA_DELETE_AT_TWILIO` the stored items, and only they, are
//!   deleted at Twilio after their copy.
//! - SIGKILL: messages with media in many conversations while the stage is
//!   killed and restarted; in the end every message has exactly one
//!   `MEDIA_STORED` event, and the store holds exactly one object per item,
//!   with the bytes the sandbox served.
//!
//! ```sh
//! cargo build -p si-media --bins
//! cargo test -p si-media --test stage
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use si_schemas::records::{
    Channel, ConversationEvent, ConversationEventType, EventSource, LocaleSource, MediaRef,
    MediaStorageStatus, MediaUnavailableReason, MessageReceived, RecordingAvailable, StoredMedia,
};
use si_schemas::topics;
use si_testkit::process::StageProcess;
use si_testkit::{TestEnv, wait_for};
use twilio_sandbox::{InboundMedia, InboundSms, Sandbox, SandboxConfig, SandboxHandle};

const TOKEN: &str = "media-test-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);
const CHAT_SERVICE: &str = "IS00000000000000000000000000000000";

fn store_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("si-media-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The broker and registry, and a sandbox whose Auth Token is [`TOKEN`].
async fn env_and_sandbox() -> anyhow::Result<(TestEnv, SandboxHandle)> {
    let env = TestEnv::start().await?;
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        ..SandboxConfig::default()
    })
    .await?;
    Ok((env, sandbox))
}

/// The stage's environment against `sandbox`, storing into `dir`.
fn vars<'a>(sandbox: &'a SandboxHandle, base: &'a str, store: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MEDIA_STORE_URL", store),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", base),
        ("TIMER_INTERVAL", "50ms"),
        ("MEDIA_CHECK_INTERVAL", "50ms"),
        ("MEDIA_FETCH_ATTEMPTS", "3"),
        ("MEDIA_RETRY_BACKOFF", "200ms"),
        ("MEDIA_MAX_ITEM_BYTES", "100000"),
        ("MEDIA_MAX_MESSAGE_BYTES", "1000000"),
    ]
}

/// A `MESSAGE_RECEIVED` with `sms`'s media, as normalize writes it.
fn message_event(conversation: &str, n: usize, sms: &InboundSms) -> ConversationEvent {
    let message_sid = sms.message_sid.clone().unwrap();
    let media = sms
        .media_urls
        .iter()
        .zip(&sms.media_content_types)
        .map(|(url, content_type)| MediaRef {
            sid: None,
            url: Some(url.clone()),
            content_type: Some(content_type.clone()),
            size_bytes: None,
            filename: None,
        })
        .collect();
    ConversationEvent {
        channel: Channel::Sms,
        source: EventSource::Messaging,
        locale: "en".into(),
        locale_source: LocaleSource::Default,
        webhook_id: format!("w-{conversation}-{n}"),
        dedup_key: format!("{message_sid}|MESSAGE_RECEIVED"),
        message: Some(MessageReceived {
            message_sid,
            index: None,
            author: None,
            body: None,
            media,
            attributes_json: None,
            num_segments: None,
            location: None,
            profile_name: None,
            button_payload: None,
        }),
        ..ConversationEvent::adapter(
            format!("ev-{conversation}-{n}"),
            conversation,
            &format!("session-{conversation}"),
            ConversationEventType::MessageReceived,
            1_700_000_000_000,
        )
    }
}

fn png(bytes: &[u8]) -> InboundMedia {
    InboundMedia {
        content_type: "image/png".into(),
        content_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..InboundMedia::default()
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every object under `dir` (the local store's files), relative, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if !path.to_string_lossy().contains('#') {
                // (`name#n` is the local store's staging file of a write a
                // kill interrupted; never visible as an object.)
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every `MEDIA_STORED` event on the events topic, in read order.
async fn media_stored(env: &TestEnv) -> anyhow::Result<Vec<ConversationEvent>> {
    Ok(env
        .read_all::<ConversationEvent>(topics::CONVERSATION_EVENTS)
        .await?
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.event_type == ConversationEventType::MediaStored)
        .collect())
}

fn items_of(event: &ConversationEvent) -> &[StoredMedia] {
    &event.media_stored.as_ref().unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_items_are_marked_with_the_reason_and_never_hold_back_another_conversation()
-> anyhow::Result<()> {
    let (env, sandbox) = env_and_sandbox().await?;
    let base = sandbox.base_url();
    let dir = store_dir("limits");
    let store = format!("file://{}", dir.display());
    let mut limits_vars = vars(&sandbox, &base, &store);
    limits_vars.push(("MEDIA_DELETE_AT_TWILIO", "true"));
    limits_vars.push(("TWILIO_MCS_BASE_URL", &base));
    limits_vars.push(("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE));
    let mut stage = StageProcess::spawn(&env, "si-media", "media-0", &limits_vars)?;
    stage.ready(DEADLINE).await?;

    let good = b"a small png".to_vec();
    let slow = sandbox.add_inbound_media(&InboundSms {
        media: vec![
            png(&good),
            InboundMedia {
                content_type: "image/jpeg".into(),
                size: Some(200_000),
                ..InboundMedia::default()
            },
            InboundMedia {
                content_type: "application/x-msdownload".into(),
                size: Some(10),
                ..InboundMedia::default()
            },
            InboundMedia {
                content_type: "image/gif".into(),
                status: Some(404),
                ..InboundMedia::default()
            },
            InboundMedia {
                content_type: "image/gif".into(),
                status: Some(500),
                ..InboundMedia::default()
            },
            InboundMedia {
                content_type: "application/pdf".into(),
                size: Some(3000),
                fail_first: 2,
                ..InboundMedia::default()
            },
        ],
        ..InboundSms::default()
    })?;
    let quick = sandbox.add_inbound_media(&InboundSms {
        media: vec![png(b"another conversation")],
        ..InboundSms::default()
    })?;
    env.produce(
        topics::CONVERSATION_EVENTS,
        "CH-slow",
        &message_event("CH-slow", 1, &slow),
    )
    .await?;
    env.produce(
        topics::CONVERSATION_EVENTS,
        "CH-quick",
        &message_event("CH-quick", 1, &quick),
    )
    .await?;
    // A call recording the caller accepted, as normalize reports it.
    let recording_sid = format!("RE{}", uuid::Uuid::new_v4().simple());
    let recording_url = sandbox.add_recording(&recording_sid);
    let mut recording = message_event("CH-call", 1, &quick);
    recording.event_type = ConversationEventType::RecordingAvailable;
    recording.message = None;
    recording.dedup_key = format!("{recording_sid}|RECORDING_AVAILABLE");
    recording.recording = Some(RecordingAvailable {
        recording_sid: recording_sid.clone(),
        call_sid: "CA00000000000000000000000000000001".into(),
        url: Some(recording_url.clone()),
        status: Some("completed".into()),
        duration_seconds: Some(4),
        channels: Some(1),
    });
    env.produce(topics::CONVERSATION_EVENTS, "CH-call", &recording)
        .await?;
    // Conversations media: only a Media SID, fetched through the Media
    // Content Service of the chat service.
    let chat_bytes = b"a photo sent in a Conversation".to_vec();
    let chat_message = format!("IM{}", uuid::Uuid::new_v4().simple());
    let (_, chat_sids) =
        sandbox.add_conversation_media(CHAT_SERVICE, &chat_message, &[png(&chat_bytes)])?;
    let mut chat = message_event(
        "CH-chat",
        1,
        &InboundSms {
            message_sid: Some(chat_message.clone()),
            ..InboundSms::default()
        },
    );
    chat.source = EventSource::Conversations;
    chat.message.as_mut().unwrap().media = vec![MediaRef {
        sid: Some(chat_sids[0].clone()),
        url: None,
        content_type: Some("image/png".into()),
        size_bytes: Some(i64::try_from(chat_bytes.len())?),
        filename: Some("file-0".into()),
    }];
    env.produce(topics::CONVERSATION_EVENTS, "CH-chat", &chat)
        .await?;

    // The quick conversation's media are stored while the slow one's are
    // still being retried (about 2 s of backoff).
    let first = wait_for(
        "the quick conversation's MEDIA_STORED",
        DEADLINE,
        || async {
            let events = media_stored(&env).await?;
            Ok(events
                .iter()
                .any(|e| e.conversation_id == "CH-quick")
                .then_some(events))
        },
    )
    .await?;
    assert!(
        first.iter().all(|e| e.conversation_id != "CH-slow"),
        "a slow conversation held back another"
    );
    let events = wait_for("the four MEDIA_STORED events", DEADLINE, || async {
        let events = media_stored(&env).await?;
        Ok((events.len() >= 4).then_some(events))
    })
    .await?;
    assert_eq!(events.len(), 4, "{events:?}");
    let chat_item = &items_of(
        events
            .iter()
            .find(|e| e.conversation_id == "CH-chat")
            .unwrap(),
    )[0];
    assert_eq!(
        chat_item.status,
        MediaStorageStatus::Stored,
        "{chat_item:?}"
    );
    assert_eq!(chat_item.twilio_sid.as_ref(), Some(&chat_sids[0]));
    assert_eq!(
        chat_item.sha256.as_deref(),
        Some(sha256(&chat_bytes).as_str())
    );
    assert_eq!(chat_item.filename.as_deref(), Some("file-0"));
    let call = events
        .iter()
        .find(|e| e.conversation_id == "CH-call")
        .unwrap();
    let call_stored = call.media_stored.as_ref().unwrap();
    assert_eq!(call_stored.source_sid, recording_sid);
    assert_eq!(
        call_stored.call_sid.as_deref(),
        Some("CA00000000000000000000000000000001")
    );
    let audio = &call_stored.items[0];
    assert_eq!(audio.status, MediaStorageStatus::Stored, "{audio:?}");
    assert_eq!(audio.content_type.as_deref(), Some("audio/x-wav"));
    assert_eq!(audio.size_bytes, Some(4096));
    assert_eq!(audio.twilio_sid.as_deref(), Some(recording_sid.as_str()));
    let slow_event = events
        .iter()
        .find(|e| e.conversation_id == "CH-slow")
        .unwrap();
    assert_eq!(slow_event.conversation_id, "CH-slow");
    let stored = slow_event.media_stored.as_ref().unwrap();
    assert_eq!(stored.source_event_id, "ev-CH-slow-1");
    assert_eq!(&stored.source_sid, slow.message_sid.as_ref().unwrap());
    let items = items_of(slow_event);
    let summary: Vec<(MediaStorageStatus, Option<MediaUnavailableReason>)> = items
        .iter()
        .map(|i| (i.status, i.unavailable_reason))
        .collect();
    use MediaStorageStatus::{Stored, Unavailable};
    use MediaUnavailableReason as R;
    assert_eq!(
        summary,
        [
            (Stored, None),
            (Unavailable, Some(R::TooLarge)),
            (Unavailable, Some(R::RefusedType)),
            (Unavailable, Some(R::NotFound)),
            (Unavailable, Some(R::FetchFailed)),
            (Stored, None),
        ]
    );
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.index, i32::try_from(i)?);
        assert_eq!(item.twilio_url.as_ref(), Some(&slow.media_urls[i]));
        assert!(
            item.twilio_sid
                .as_deref()
                .is_some_and(|s| s.starts_with("ME"))
        );
        if item.status == Unavailable {
            assert!(
                item.detail.is_some() && item.object_key.is_none(),
                "{item:?}"
            );
        }
    }
    assert_eq!(items[0].sha256.as_deref(), Some(sha256(&good).as_str()));
    assert_eq!(items[0].size_bytes, Some(i64::try_from(good.len())?));
    assert_eq!(items[5].content_type.as_deref(), Some("application/pdf"));
    assert_eq!(items[5].size_bytes, Some(3000));
    assert!(items[4].detail.as_deref().unwrap().contains("HTTP 500"));
    assert!(items[4].detail.as_deref().unwrap().contains("3 attempts"));
    // Bounded retries: the failing URLs were fetched exactly 3 times, the
    // refused type never (its declared type was refused), the large one once.
    let fetches: BTreeMap<String, u32> = sandbox
        .media()
        .into_iter()
        .map(|m| (m.sid, m.fetches))
        .collect();
    let sid = |i: usize| slow.media_urls[i].rsplit('/').next().unwrap().to_owned();
    assert_eq!(fetches[&sid(1)], 1);
    assert_eq!(fetches[&sid(2)], 0);
    assert_eq!(fetches[&sid(3)], 3);
    assert_eq!(fetches[&sid(4)], 3);
    assert_eq!(fetches[&sid(5)], 3);
    assert!(
        sandbox.media().iter().all(|m| m.unauthorized == 0),
        "every fetch was authenticated"
    );
    // MEDIA_DELETE_AT_TWILIO: what was copied is deleted at Twilio, the rest not.
    let deleted: BTreeMap<String, bool> = sandbox
        .media()
        .into_iter()
        .map(|m| (m.sid, m.deleted))
        .collect();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(deleted[&sid(i)], item.status == Stored, "item {i}");
    }
    // The store holds the stored items under their keys, and nothing else.
    let on_disk = files(&dir);
    let expected: BTreeSet<String> = events
        .iter()
        .flat_map(|e| items_of(e).iter().filter_map(|i| i.object_key.clone()))
        .collect();
    assert_eq!(on_disk.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(on_disk[items[0].object_key.as_ref().unwrap()], good);
    stage.terminate(DEADLINE)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_neither_stores_twice_nor_loses_an_item() -> anyhow::Result<()> {
    const CONVERSATIONS: usize = 40;
    const KILLS: usize = 3;
    let (env, sandbox) = env_and_sandbox().await?;
    let base = sandbox.base_url();
    let dir = store_dir("kill");
    let store = format!("file://{}", dir.display());
    let vars = vars(&sandbox, &base, &store);
    let mut stage = StageProcess::spawn(&env, "si-media", "media-0", &vars)?;
    stage.ready(DEADLINE).await?;

    // Two messages per conversation, two items each; the second item answers
    // 500 once, so copies take a retry and kills land mid-copy.
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut events = Vec::new();
    for c in 0..CONVERSATIONS {
        for n in 0..2 {
            let first = format!("conversation {c} message {n} item 0").into_bytes();
            let second = format!("conversation {c} message {n} item 1, a pdf").into_bytes();
            let sms = sandbox.add_inbound_media(&InboundSms {
                media: vec![
                    png(&first),
                    InboundMedia {
                        content_type: "application/pdf".into(),
                        content_base64: Some(
                            base64::engine::general_purpose::STANDARD.encode(&second),
                        ),
                        fail_first: 1,
                        ..InboundMedia::default()
                    },
                ],
                ..InboundSms::default()
            })?;
            let conversation = format!("CH-kill-{c}");
            let event = message_event(&conversation, n, &sms);
            expected.insert(event.event_id.clone(), vec![first, second]);
            events.push(event);
        }
    }
    let total = events.len();
    let per_kill = total / (KILLS + 1);
    for (i, chunk) in events.chunks(per_kill).enumerate() {
        for event in chunk {
            env.produce(topics::CONVERSATION_EVENTS, &event.conversation_id, event)
                .await?;
        }
        if i < KILLS {
            // Kill once the stage is busy with this chunk's copies.
            let fetched = sandbox.media().iter().map(|m| m.fetches).sum::<u32>();
            wait_for("copies under way", DEADLINE, || async {
                Ok(
                    (sandbox.media().iter().map(|m| m.fetches).sum::<u32>() > fetched)
                        .then_some(()),
                )
            })
            .await?;
            stage.kill()?;
            stage = StageProcess::spawn(&env, "si-media", "media-0", &vars)?;
            stage.ready(DEADLINE).await?;
        }
    }

    let stored = wait_for(
        "a MEDIA_STORED per message",
        Duration::from_secs(120),
        || async {
            let events = media_stored(&env).await?;
            let sources: BTreeSet<String> = events
                .iter()
                .map(|e| e.media_stored.as_ref().unwrap().source_event_id.clone())
                .collect();
            Ok((sources.len() >= total).then_some(events))
        },
    )
    .await?;
    // Exactly one per message (a committed read: nothing of an aborted
    // transaction shows), every item stored with the bytes served.
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    for e in &stored {
        *by_source
            .entry(e.media_stored.as_ref().unwrap().source_event_id.clone())
            .or_default() += 1;
    }
    let repeated: Vec<_> = by_source.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "MEDIA_STORED written twice: {repeated:?}"
    );
    assert_eq!(by_source.len(), total);
    let on_disk = files(&dir);
    let mut keys = BTreeSet::new();
    for e in &stored {
        let source = &e.media_stored.as_ref().unwrap().source_event_id;
        for (item, bytes) in items_of(e).iter().zip(&expected[source]) {
            assert_eq!(item.status, MediaStorageStatus::Stored, "{item:?}");
            let key = item.object_key.clone().unwrap();
            assert_eq!(item.sha256.as_deref(), Some(sha256(bytes).as_str()));
            assert_eq!(on_disk.get(&key), Some(bytes), "{key}");
            keys.insert(key);
        }
    }
    assert_eq!(keys.len(), total * 2);
    assert_eq!(
        on_disk.len(),
        total * 2,
        "the store holds exactly one object per item"
    );
    // In order within a conversation.
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &stored {
        let source = &e.media_stored.as_ref().unwrap().source_event_id;
        if let Some(previous) = last.insert(&e.conversation_id, source) {
            assert!(previous < source.as_str(), "{previous} after {source}");
        }
    }
    stage.terminate(DEADLINE)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes `value` to `dir/name` the way the kubelet swaps a Secret's
/// files: a new file renamed over the old one.
fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, value)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Produces a message with one image in `conversation` and waits for its
/// item's outcome.
async fn copy_one(
    env: &TestEnv,
    sandbox: &SandboxHandle,
    conversation: &str,
    bytes: &'static [u8],
) -> anyhow::Result<MediaStorageStatus> {
    let sms = sandbox.add_inbound_media(&InboundSms {
        media: vec![png(bytes)],
        ..InboundSms::default()
    })?;
    let event = message_event(conversation, 1, &sms);
    env.produce(topics::CONVERSATION_EVENTS, conversation, &event)
        .await?;
    wait_for(conversation, DEADLINE, || async {
        Ok(media_stored(env)
            .await?
            .iter()
            .find(|e| e.conversation_id == conversation)
            .map(|e| items_of(e)[0].status))
    })
    .await
}

/// A media stage reading its credentials from a mounted Secret whose
/// `auth-token` is revoked (the environment has the right one), against a
/// sandbox with [`TOKEN`].
struct MountedSecret {
    env: TestEnv,
    sandbox: SandboxHandle,
    stage: StageProcess,
    store: PathBuf,
    secrets: PathBuf,
}

impl MountedSecret {
    async fn start(name: &str, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (env, sandbox) = env_and_sandbox().await?;
        let base = sandbox.base_url();
        let store = store_dir(name);
        let store_url = format!("file://{}", store.display());
        let secrets = store_dir(&format!("{name}-secret"));
        write_secret(&secrets, "auth-token", "a-revoked-token\n")?;
        let secrets_dir = secrets.to_string_lossy().into_owned();
        let mut stage_vars = vars(&sandbox, &base, &store_url);
        stage_vars.push(("TWILIO_CREDENTIALS_DIR", &secrets_dir));
        stage_vars.extend_from_slice(extra);
        let mut stage =
            StageProcess::spawn(&env, "si-media", &format!("media-{name}"), &stage_vars)?;
        stage.ready(DEADLINE).await?;
        Ok(Self {
            env,
            sandbox,
            stage,
            store,
            secrets,
        })
    }

    async fn copy(
        &self,
        conversation: &str,
        bytes: &'static [u8],
    ) -> anyhow::Result<MediaStorageStatus> {
        copy_one(&self.env, &self.sandbox, conversation, bytes).await
    }

    /// The stage's log holds no secret; it stops and its files go.
    fn finish(mut self) -> anyhow::Result<()> {
        let log = std::fs::read_to_string(self.stage.log())?;
        assert!(!log.contains(TOKEN) && !log.contains("a-revoked-token"));
        self.stage.terminate(DEADLINE)?;
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_dir_all(&self.secrets);
        Ok(())
    }
}

#[tokio::test]
async fn a_rotated_token_in_the_mounted_secret_is_used_without_a_restart() -> anyhow::Result<()> {
    let t = MountedSecret::start(
        "rotation",
        &[
            ("TWILIO_CREDENTIALS_RELOAD_INTERVAL", "100ms"),
            ("MEDIA_FETCH_ATTEMPTS", "1"),
        ],
    )
    .await?;
    assert_eq!(
        t.copy("CH-before", b"before the rotation").await?,
        MediaStorageStatus::Unavailable,
        "the file's revoked token, not the environment's"
    );

    write_secret(&t.secrets, "auth-token", &format!("{TOKEN}\n"))?;
    wait_for("the reload", DEADLINE, || async {
        let log = std::fs::read_to_string(t.stage.log())?;
        Ok(log.contains("Twilio credentials changed").then_some(()))
    })
    .await?;
    assert_eq!(
        t.copy("CH-after", b"after the rotation").await?,
        MediaStorageStatus::Stored
    );
    t.finish()
}

/// Mid-rotation: the primary in the Secret is revoked, the secondary is the
/// new token. The scheduled reload is an hour away, so only the refused
/// download can make the stage read the Secret again; it does within a
/// second, takes the secondary, and the next attempt is stored.
#[tokio::test]
async fn a_refused_download_reloads_the_secret_at_once_and_takes_the_secondary_token()
-> anyhow::Result<()> {
    let t = MountedSecret::start(
        "prompt",
        &[
            ("TWILIO_CREDENTIALS_RELOAD_INTERVAL", "1h"),
            // Attempts 2 s apart: the reload (at most once a second) comes
            // between.
            ("MEDIA_FETCH_ATTEMPTS", "3"),
            ("MEDIA_RETRY_BACKOFF", "2s"),
            ("MEDIA_RETRY_BACKOFF_MAX", "2s"),
        ],
    )
    .await?;
    // Written after start: the stage loaded the revoked primary alone.
    write_secret(&t.secrets, "auth-token-secondary", &format!("{TOKEN}\n"))?;

    assert_eq!(
        t.copy("CH-prompt", b"mid-rotation").await?,
        MediaStorageStatus::Stored
    );
    let refused: u32 = t.sandbox.media().iter().map(|m| m.unauthorized).sum();
    assert_eq!(refused, 1, "one attempt with the revoked primary");
    let reloads = |result: &'static str| {
        let stage = &t.stage;
        async move {
            stage
                .metric_sum(
                    "si_media_twilio_credential_reloads_total",
                    &[&format!("result=\"{result}\"")],
                )
                .await
        }
    };
    assert_eq!(reloads("changed").await?, 1.0);
    assert_eq!(reloads("error").await?, 0.0);
    let log = std::fs::read_to_string(t.stage.log())?;
    assert!(
        log.contains("secondary auth token"),
        "the log names the kind"
    );
    t.finish()
}
