//! Media end to end on the real broker: the sandbox posts a user's MMS with
//! two images and a PDF (served behind HTTP Basic auth, as Twilio serves
//! media), ingress stores the webhook, normalize writes the message with
//! Twilio's URLs, the media stage copies the three items into a local
//! directory store and writes `MEDIA_STORED`, and voice-link puts the message
//! and then its durable references in the transcript. A text sent after the
//! MMS is in the transcript after the MMS's message entry. The objects are in
//! the store with the checksums the events name.
//!
//! ```sh
//! cargo build --bins
//! cargo test -p si-testkit --test media
//! ```

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use si_schemas::records::{
    ConversationEvent, ConversationEventType, MediaStorageStatus, TranscriptEntry,
    TranscriptEntryKind,
};
use si_schemas::topics;
use si_testkit::{TestEnv, free_port, spawn_ready, wait_for};
use twilio_sandbox::{InboundMedia, InboundSms, Sandbox, SandboxConfig};

const SI_NUMBER: &str = "+14155550100";
const USER: &str = "+14155550177";
const TOKEN: &str = "media-e2e-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);

fn item(content_type: &str, bytes: &[u8]) -> InboundMedia {
    InboundMedia {
        content_type: content_type.into(),
        content_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..InboundMedia::default()
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mms_with_two_images_and_a_pdf_is_kept_in_si_storage_and_referenced()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let ingress_url = format!("http://127.0.0.1:{}", free_port()?);
    let sandbox = Sandbox::start(SandboxConfig {
        auth_token: TOKEN.into(),
        callback_url: Some(ingress_url.clone()),
        ..SandboxConfig::default()
    })
    .await?;
    let base = sandbox.base_url();
    let dir = std::env::temp_dir().join(format!("si-media-e2e-{}", uuid::Uuid::new_v4().simple()));
    let store_url = format!("file://{}", dir.display());
    let listen = ingress_url.trim_start_matches("http://").to_owned();
    let common = [
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", sandbox.account_sid()),
        ("TWILIO_API_BASE_URL", base.as_str()),
        ("PUBLIC_BASE_URL", ingress_url.as_str()),
    ];
    let _stages = spawn_ready(
        &env,
        "media-e2e",
        &common,
        vec![
            ("si-ingress", vec![("LISTEN_ADDR", listen.as_str())]),
            ("si-normalize", vec![("VISITOR_ID_SECRET", "media-secret")]),
            (
                "si-media",
                vec![
                    ("MEDIA_STORE_URL", store_url.as_str()),
                    ("TIMER_INTERVAL", "50ms"),
                    ("MEDIA_CHECK_INTERVAL", "50ms"),
                ],
            ),
            ("si-voice-link", vec![("VOICE_QUIET_HOURS", "off")]),
        ],
        DEADLINE,
    )
    .await?;

    let contents: [(&str, Vec<u8>); 3] = [
        ("image/jpeg", b"\xff\xd8\xff\xe0 a jpeg".to_vec()),
        ("image/png", b"\x89PNG\r\n\x1a\n a png".to_vec()),
        ("application/pdf", b"%PDF-1.7 a document".to_vec()),
    ];
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: SI_NUMBER.into(),
            body: "Here are the photos and the form".into(),
            media: contents.iter().map(|(t, b)| item(t, b)).collect(),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
    let message_sid = posted.sid.clone();
    let posted = sandbox
        .post_inbound_sms(&InboundSms {
            from: USER.into(),
            to: SI_NUMBER.into(),
            body: "Did you get them?".into(),
            ..InboundSms::default()
        })
        .await?;
    anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);

    // The canonical events: the message with Twilio's references, then its
    // durable copies.
    let message = env
        .find::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, |e| {
            e.message
                .as_ref()
                .is_some_and(|m| m.message_sid == message_sid)
        })
        .await?;
    assert_eq!(message.message.as_ref().unwrap().media.len(), 3);
    let stored = env
        .find::<ConversationEvent>(topics::CONVERSATION_EVENTS, DEADLINE, |e| {
            e.event_type == ConversationEventType::MediaStored
        })
        .await?;
    let media_stored = stored.media_stored.as_ref().unwrap();
    assert_eq!(stored.conversation_id, message.conversation_id);
    assert_eq!(stored.session_id, message.session_id);
    assert_eq!(media_stored.source_event_id, message.event_id);
    assert_eq!(media_stored.source_sid, message_sid);
    assert_eq!(media_stored.items.len(), 3);
    for ((content_type, bytes), (i, item)) in
        contents.iter().zip(media_stored.items.iter().enumerate())
    {
        assert_eq!(item.status, MediaStorageStatus::Stored, "{item:?}");
        assert_eq!(item.index, i32::try_from(i)?);
        assert_eq!(item.content_type.as_deref(), Some(*content_type));
        assert_eq!(item.size_bytes, Some(i64::try_from(bytes.len())?));
        assert_eq!(item.sha256.as_deref(), Some(hex_sha256(bytes).as_str()));
        assert!(
            item.twilio_sid
                .as_deref()
                .is_some_and(|s| s.starts_with("ME"))
        );
        assert_eq!(
            item.twilio_url.as_ref(),
            message.message.as_ref().unwrap().media[i].url.as_ref()
        );
        // The object is in the store, with those bytes.
        let key = item.object_key.as_deref().unwrap();
        let on_disk = std::fs::read(dir.join(key))?;
        assert_eq!(hex_sha256(&on_disk), hex_sha256(bytes), "{key}");
    }
    assert!(
        sandbox
            .media()
            .iter()
            .all(|m| m.fetches == 1 && m.unauthorized == 0),
        "each item fetched once, with Twilio's auth: {:?}",
        sandbox.media()
    );

    // The transcript: the MMS, the text after it, the durable references
    // (which may come before or after the text, never before the MMS).
    let entries = wait_for("the transcript's three entries", DEADLINE, || async {
        let entries: Vec<TranscriptEntry> = env
            .read_all::<TranscriptEntry>(topics::TRANSCRIPT)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.conversation_id == message.conversation_id)
            .collect();
        Ok((entries.len() >= 3).then_some(entries))
    })
    .await?;
    let kinds: Vec<(Option<TranscriptEntryKind>, Option<&str>)> = entries
        .iter()
        .map(|e| (e.entry_kind, e.text.as_deref()))
        .collect();
    assert_eq!(entries.len(), 3, "{kinds:?}");
    assert_eq!(
        kinds[0],
        (
            Some(TranscriptEntryKind::Message),
            Some("Here are the photos and the form")
        )
    );
    let text = kinds
        .iter()
        .position(|k| k.1 == Some("Did you get them?"))
        .unwrap();
    let refs = entries
        .iter()
        .position(|e| e.entry_kind == Some(TranscriptEntryKind::MediaStored))
        .unwrap();
    assert!(text > 0 && refs > 0);
    let refs = &entries[refs];
    assert_eq!(refs.message_sid.as_deref(), Some(message_sid.as_str()));
    assert_eq!(refs.stored_media, media_stored.items);
    assert!(entries.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
