//! Media end to end on the real broker: the sandbox posts a user's MMS with
//! two images and a PDF (served behind HTTP Basic auth, as Twilio serves
//! media), ingress stores the webhook, normalize writes the message with
//! Twilio's URLs, the media stage copies the three items into a local
//! directory store and writes `MEDIA_STORED`, and voice-link puts the message
//! and then its durable references in the transcript. A text sent after the
//! MMS is in the transcript after the MMS's message entry. The objects are in
//! the store with the checksums the events name.
//!
//! Consent forwards the message to the cognition layer and then, as a
//! `MEDIA_STORED` record on `si.inbound.v1`, its durable copies.
//!
//! Then the way back: a response naming one stored image as
//! `si-media:<object key>` goes through segment and egress, Twilio (the
//! sandbox) is given a short-lived signed URL of the media stage's public
//! listener, and fetching it as Twilio would returns the image's bytes; the
//! same URL for another object is refused.
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
    CognitionResponse, ConversationEvent, ConversationEventType, Direction, InboundMessage,
    InboundPurpose, MediaRef, MediaStorageStatus, ResponsePurpose, TranscriptEntry,
    TranscriptEntryKind,
};
use si_schemas::topics;
use si_testkit::{TestEnv, free_port, spawn_ready, wait_for};
use twilio_sandbox::{InboundMedia, InboundSms, Sandbox, SandboxConfig};

const SI_NUMBER: &str = "+14155550100";
const USER: &str = "+14155550177";
const TOKEN: &str = "media-e2e-auth-token";
const DEADLINE: Duration = Duration::from_secs(60);
const URL_KEY: &str = "media-e2e-url-signing-key-of-32-bytes-or-more";

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
    let media_public = format!("127.0.0.1:{}", free_port()?);
    let media_base = format!("http://{media_public}");
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
                    ("MEDIA_URL_SECRET", URL_KEY),
                    ("MEDIA_PUBLIC_ADDR", media_public.as_str()),
                ],
            ),
            ("si-voice-link", vec![("VOICE_QUIET_HOURS", "off")]),
            ("si-consent", vec![]),
            ("si-segment", vec![]),
            (
                "si-egress",
                vec![
                    ("TWILIO_CONVERSATIONS_BASE_URL", base.as_str()),
                    ("MEDIA_PUBLIC_BASE_URL", media_base.as_str()),
                    ("MEDIA_URL_SECRET", URL_KEY),
                ],
            ),
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

    // The cognition layer gets the message, then its durable copies.
    let follow_up = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| {
            m.purpose == InboundPurpose::MediaStored && m.message_id == message_sid
        })
        .await?;
    assert_eq!(follow_up.stored_media, media_stored.items);
    assert!(follow_up.text.is_empty());
    let first = env
        .find::<InboundMessage>(topics::INBOUND, DEADLINE, |m| {
            m.message_id == message_sid && m.purpose == InboundPurpose::UserMessage
        })
        .await?;
    assert_eq!(first.media.len(), 3);

    // The transcript: the MMS, the text after it, the durable references
    // (which may come before or after the text, never before the MMS).
    let entries = wait_for("the transcript's three entries", DEADLINE, || async {
        let entries: Vec<TranscriptEntry> = env
            .read_all::<TranscriptEntry>(topics::TRANSCRIPT)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            // Consent's welcome to the new user is Si's, not the user's.
            .filter(|e| {
                e.conversation_id == message.conversation_id && e.direction != Direction::Outbound
            })
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

    // The way back: Si answers with the PNG it keeps.
    let png = &media_stored.items[1];
    let png_key = png.object_key.clone().unwrap();
    let response = CognitionResponse {
        response_id: "r-media".into(),
        conversation_id: message.conversation_id.clone(),
        session_id: message.session_id.clone(),
        in_reply_to: Some(message_sid.clone()),
        text: "Here is your photo back".into(),
        media: vec![MediaRef {
            url: Some(format!("si-media:{png_key}")),
            content_type: Some("image/png".into()),
            ..MediaRef::default()
        }],
        locale: None,
        hints: None,
        created_at: 0,
        traceparent: None,
        purpose: ResponsePurpose::Reply,
    };
    env.produce(topics::RESPONSES, &message.conversation_id, &response)
        .await?;
    let sent = wait_for("the reply with media at Twilio", DEADLINE, || async {
        Ok(sandbox.requests().into_iter().find(|r| {
            r.path.ends_with("/Messages.json")
                && r.params.get("Body").map(String::as_str) == Some("Here is your photo back")
        }))
    })
    .await?;
    let media_url = sent.params.get("MediaUrl").cloned().unwrap();
    assert!(
        media_url.starts_with(&format!("{media_base}/media/{png_key}?expires=")),
        "{media_url}"
    );
    // Twilio fetches it: the PNG's bytes, typed.
    let fetched = reqwest::get(&media_url).await?;
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        fetched
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(
        hex_sha256(&fetched.bytes().await?),
        png.sha256.clone().unwrap()
    );
    // The signature opens that object only.
    let other_key = media_stored.items[2].object_key.clone().unwrap();
    let other = reqwest::get(media_url.replace(&png_key, &other_key)).await?;
    assert_eq!(other.status(), 403);

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
