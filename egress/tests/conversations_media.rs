//! A Conversations message with media: egress fetches the item from Si's
//! store through its signed URL, uploads it to the Media Content Service
//! and names it by its `MediaSid` in the message. An item the store does
//! not have fails the operation, saying so; media that is not in Si's store
//! is refused before anything is sent. Real broker and registry, the
//! in-process sandbox, a stand-in for the media stage's signed-URL listener
//! (it checks the signature as the media stage does), egress as a child
//! process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{Egress, SENDER_NUMBER, op, produce_ops, statuses};
use si_runtime::media_url::{UrlKey, verify};
use si_schemas::records::{Channel, DeliveryOutcome, OperationKind};
use si_testkit::TestEnv;
use twilio_sandbox::{Sandbox, SandboxConfig};

const SECRET: &str = "a-media-url-secret-of-at-least-32-bytes";
const PHOTO: &str = "conversations/CH7/photo.png";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n a photo of the test";

/// The media stage's public listener, as far as egress sees it: signed
/// URLs of the one stored photo.
async fn serve_media(
    State(key): State<Arc<UrlKey>>,
    Path(object): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let checked = verify(
        std::slice::from_ref(&key),
        &object,
        query.get("expires").map(String::as_str),
        query.get("signature").map(String::as_str),
        SystemTime::now(),
    );
    match (checked, object.as_str()) {
        (Err(_), _) => StatusCode::FORBIDDEN.into_response(),
        (Ok(()), PHOTO) => ([(header::CONTENT_TYPE, "image/png")], PNG).into_response(),
        (Ok(()), _) => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_media_is_uploaded_and_sent_by_its_media_sid() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = Sandbox::start(SandboxConfig {
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    // The conversation at Twilio, and its Conversations Service.
    let created = reqwest::Client::new()
        .post(format!("{}/v1/Conversations", sandbox.base_url()))
        .basic_auth(sandbox.account_sid(), Some(sandbox.auth_token()))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let ch = created["sid"].as_str().expect("a conversation").to_owned();
    let service = created["chat_service_sid"].as_str().unwrap().to_owned();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let media_base = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/media/{*object}", axum::routing::get(serve_media))
        .with_state(Arc::new(UrlKey::new(SECRET).unwrap()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let message = |id: &str, media: &str| {
        let mut o = op(id, &ch, SENDER_NUMBER);
        o.kind = OperationKind::SendConversationMessage;
        o.channel = Channel::Sms;
        o.to = None;
        o.from = None;
        o.media_urls = vec![media.to_owned()];
        o
    };
    let ops = vec![
        message("with-photo", &format!("si-media:{PHOTO}")),
        message("gone", "si-media:conversations/CH7/gone.png"),
        message("public-url", "https://example.com/photo.png"),
    ];
    produce_ops(&env, &ops).await?;
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "conversations-media",
        &[
            ("TWILIO_CHAT_SERVICE_SID", &service),
            ("TWILIO_MCS_BASE_URL", &sandbox.base_url()),
            ("MEDIA_PUBLIC_BASE_URL", &media_base),
            ("MEDIA_URL_SECRET", SECRET),
            ("EGRESS_MAX_ATTEMPTS", "2"),
        ],
    )?;
    let by_id = statuses(&env, ops.len(), Duration::from_secs(60)).await?;

    let sent = &by_id["with-photo"];
    assert_eq!(sent.outcome, DeliveryOutcome::Accepted, "{sent:?}");
    let requests = sandbox.requests();
    let posted = requests
        .iter()
        .find(|r| r.operation_id.as_deref() == Some("with-photo") && r.path.ends_with("/Messages"))
        .expect("the message was posted");
    let media_sid = posted
        .params
        .get("MediaSid")
        .expect("named by its MediaSid");
    assert!(
        !posted.params.contains_key("MediaUrl"),
        "no URL: {posted:?}"
    );
    // What Twilio holds under that SID is the stored photo.
    let stored = sandbox
        .media()
        .into_iter()
        .find(|m| &m.sid == media_sid)
        .expect("uploaded");
    assert_eq!(
        (stored.content_type.as_str(), stored.size),
        ("image/png", PNG.len())
    );

    let gone = &by_id["gone"];
    assert_eq!(gone.outcome, DeliveryOutcome::Failed, "{gone:?}");
    assert!(
        gone.error_message
            .as_deref()
            .is_some_and(|m| m.contains("HTTP 404")),
        "{gone:?}"
    );
    let public = &by_id["public-url"];
    assert_eq!(public.outcome, DeliveryOutcome::DeadLettered, "{public:?}");
    assert!(
        public
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("si-media:")),
        "{public:?}"
    );
    // Neither reached Twilio.
    for id in ["gone", "public-url"] {
        assert!(
            !requests
                .iter()
                .any(|r| r.operation_id.as_deref() == Some(id)),
            "{id} was sent"
        );
    }
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}
