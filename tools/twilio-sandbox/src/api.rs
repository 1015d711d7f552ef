//! The HTTP side: Twilio's endpoints (one fallback handler that records every
//! request, whatever its path) and the `/_sandbox` control API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;

use crate::account::{self, ConversationsWebhooks, MessagingService, Page, PhoneNumber, Read};
use crate::calls::{
    CallOutcomes, CallRecord, Control, ControlError, GatherAnswer, MAX_LIVE_CALLS, Outcome, Speaker,
};
use crate::player::{self, CallSpec, InboundCall};
use crate::state::{
    CallbackRecord, Conversation, DeliveryFailure, Fault, Faults, Participant, RequestRecord,
    Shared,
};
use crate::twilio::{
    TwilioError, bare_number, is_e164, iso8601, now_ms, num_segments, rfc2822, sid,
};
use crate::webhook::Method as WebhookMethod;
use crate::webhook::{
    CONVERSATIONS_EVENTS_PATH, DEFAULT_CHAT_SERVICE, InboundConversationMessage, InboundSms,
    MESSAGING_STATUS_PATH, conversation_message_params,
};

const API_VERSION: &str = "2010-04-01";
const CONVERSATIONS_BASE: &str = "https://conversations.twilio.com/v1";
/// Twilio's body limit for SMS and WhatsApp.
const MAX_BODY_CHARS: usize = 1600;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/_sandbox/requests",
            get(list_requests).delete(clear_requests),
        )
        .route("/_sandbox/callbacks", get(list_callbacks))
        .route("/_sandbox/reads", get(list_reads))
        .route("/_sandbox/faults", get(get_faults).put(put_faults))
        .route("/_sandbox/rate", get(get_rate).put(put_rate))
        .route("/_sandbox/inbound/sms", post(inbound_sms))
        .route("/_sandbox/inbound/call", post(inbound_call))
        .route("/_sandbox/calls", get(list_calls))
        .route("/_sandbox/calls/{sid}", get(get_call))
        .route("/_sandbox/calls/{sid}/ring", post(ring_call))
        .route("/_sandbox/calls/{sid}/gather", post(gather_call))
        .route("/_sandbox/calls/{sid}/say", post(say_call))
        .route("/_sandbox/calls/{sid}/hangup", post(hang_up_call))
        .route(
            "/_sandbox/delivery-failures",
            get(get_delivery_failures).put(put_delivery_failures),
        )
        .route(
            "/_sandbox/call-outcomes",
            get(get_call_outcomes).put(put_call_outcomes),
        )
        .route(
            "/_sandbox/phone-numbers",
            get(get_phone_numbers).put(put_phone_numbers),
        )
        .route(
            "/_sandbox/messaging-services",
            get(get_messaging_services).put(put_messaging_services),
        )
        .route(
            "/_sandbox/conversations-webhooks",
            get(get_conversations_webhooks).put(put_conversations_webhooks),
        )
        .route("/_sandbox/media", get(list_media))
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}",
            get(get_media).delete(delete_media),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Recordings/{recording}",
            get(get_recording),
        )
        .route(
            "/v1/Services/{service}/Media",
            post(upload_mcs_media).layer(axum::extract::DefaultBodyLimit::max(MAX_MCS_UPLOAD)),
        )
        .route("/v1/Services/{service}/Media/{media}", get(get_mcs_media))
        .route("/_sandbox/mcs/{media}/content", get(get_mcs_content))
        .route(
            "/v1/AuthTokens/Secondary",
            post(create_secondary_token).delete(delete_secondary_token),
        )
        .route("/v1/AuthTokens/Promote", post(promote_token))
        .route("/_sandbox/healthz", get(|| async { "ok" }))
        .fallback(twilio_request)
        .with_state(shared)
}

// ---------------------------------------------------------------- control API

#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn list_requests(State(shared): State<Arc<Shared>>, Query(since): Query<Since>) -> Response {
    axum::Json(shared.requests(since.since)).into_response()
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.clear();
    StatusCode::NO_CONTENT
}

async fn list_reads(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.reads()).into_response()
}

async fn list_callbacks(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.callbacks()).into_response()
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.faults()).into_response()
}

fn control_error(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message.into() })),
    )
        .into_response()
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => return control_error(error.to_string()),
    };
    match shared.set_faults(faults) {
        Ok(()) => axum::Json(shared.faults()).into_response(),
        Err(error) => control_error(error),
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Rate {
    per_sender: Option<u32>,
}

async fn get_rate(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(Rate {
        per_sender: shared.rate(),
    })
    .into_response()
}

async fn put_rate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let rate: Rate = match serde_json::from_slice(&body) {
        Ok(rate) => rate,
        Err(error) => return control_error(error.to_string()),
    };
    match shared.set_rate(rate.per_sender) {
        Ok(()) => axum::Json(rate).into_response(),
        Err(error) => control_error(error),
    }
}

async fn inbound_sms(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let sms: InboundSms = match serde_json::from_slice(&body) {
        Ok(sms) => sms,
        Err(error) => return control_error(error.to_string()),
    };
    let Some(webhooks) = shared.webhooks.as_ref() else {
        return control_error("the sandbox has no callback URL (SANDBOX_CALLBACK_URL)");
    };
    let sms = match shared.add_inbound_media(&sms) {
        Ok(sms) => sms,
        Err(error) => return control_error(error),
    };
    match webhooks.post_inbound_sms(&sms).await {
        Ok(posted) => axum::Json(json!({ "status": posted.status, "message_sid": posted.sid }))
            .into_response(),
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({ "error": format!("{error:#}") })),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- media

async fn list_media(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.media()).into_response()
}

/// A media URL: the bytes (Twilio redirects to its storage; the sandbox
/// answers directly), behind HTTP Basic auth when `media_auth` is on. The
/// `.json` form would be the Media resource, which the sandbox does not keep.
async fn get_media(
    State(shared): State<Arc<Shared>>,
    Path((account, message, media)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_media(
        &shared,
        &headers,
        &account,
        &message,
        &media,
        &format!("/Messages/{message}/Media/{media}"),
    )
}

/// A stored media item or recording, behind HTTP Basic auth when the sandbox
/// asks for it (`SANDBOX_MEDIA_AUTH`); 404 naming `resource` when unknown.
fn serve_media(
    shared: &Shared,
    headers: &HeaderMap,
    account: &str,
    message: &str,
    media: &str,
    resource: &str,
) -> Response {
    let authorized =
        !shared.config.media_auth || authenticate(shared, headers, Some(account)).is_ok();
    match shared.fetch_media(message, media, authorized) {
        None => TwilioError::not_found(resource).into_response(),
        Some(crate::media::Served::Status(401)) => TwilioError::authenticate().into_response(),
        Some(crate::media::Served::Status(code)) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Some(crate::media::Served::Content(content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
    }
}

/// A recording's audio (`RecordingUrl`, optionally with `.wav`), behind HTTP
/// Basic auth like media.
async fn get_recording(
    State(shared): State<Arc<Shared>>,
    Path((account, recording)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if recording.ends_with(".json") {
        // The Recording resource itself is not kept.
        return TwilioError::not_found(&format!("/Recordings/{recording}")).into_response();
    }
    let recording = recording.strip_suffix(".wav").unwrap_or(&recording);
    serve_media(
        &shared,
        &headers,
        &account,
        "",
        recording,
        &format!("/Recordings/{recording}"),
    )
}

/// The Media Content Service's resource of a Conversations media item
/// (HTTP Basic, as at Twilio), with its temporary content link.
async fn get_mcs_media(
    State(shared): State<Arc<Shared>>,
    Path((service, media)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if authenticate(&shared, &headers, None).is_err() {
        return TwilioError::authenticate().into_response();
    }
    match shared.mcs_resource(&service, &media) {
        Some(resource) => axum::Json(resource).into_response(),
        None => {
            TwilioError::not_found(&format!("/v1/Services/{service}/Media/{media}")).into_response()
        }
    }
}

/// The largest upload the sandbox's Media Content Service takes.
const MAX_MCS_UPLOAD: usize = 32 * 1024 * 1024;

/// `POST /v1/Services/{IS}/Media`: an upload (the body is the content, its
/// `Content-Type` the media's); 201 with the media's JSON, whose SID a
/// Conversations message names as `MediaSid`.
async fn upload_mcs_media(
    State(shared): State<Arc<Shared>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if authenticate(&shared, &headers, None).is_err() {
        return TwilioError::authenticate().into_response();
    }
    let Some(content_type) = header_str(&headers, header::CONTENT_TYPE.as_str()) else {
        return TwilioError::bad_request(20001, "Content-Type is required").into_response();
    };
    if body.is_empty() {
        return TwilioError::bad_request(20001, "the media is empty").into_response();
    }
    match shared.upload_media(&service, content_type, body.to_vec()) {
        Some(resource) => (StatusCode::CREATED, axum::Json(resource)).into_response(),
        None => TwilioError::server_error().into_response(),
    }
}

/// The temporary content link of Conversations media (no auth: the link is the key).
async fn get_mcs_content(State(shared): State<Arc<Shared>>, Path(media): Path<String>) -> Response {
    match shared.fetch_mcs_content(&media) {
        None => TwilioError::not_found(&format!("/_sandbox/mcs/{media}/content")).into_response(),
        Some(crate::media::Served::Status(code)) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Some(crate::media::Served::Content(content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
    }
}

/// `DELETE …/Media/{ME}.json`: 204, and the item answers 404 from then on.
async fn delete_media(
    State(shared): State<Arc<Shared>>,
    Path((account, message, media)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let media = media.strip_suffix(".json").unwrap_or(&media);
    let authorized = authenticate(&shared, &headers, Some(&account)).is_ok();
    match shared.delete_media(&message, media, authorized) {
        None => {
            TwilioError::not_found(&format!("/Messages/{message}/Media/{media}")).into_response()
        }
        Some(401) => TwilioError::authenticate().into_response(),
        Some(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

// ---------------------------------------------------------------- calls

async fn inbound_call(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let call: InboundCall = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => return control_error(error.to_string()),
    };
    match player::place_inbound(&shared, &call) {
        Ok(call_sid) => (
            StatusCode::CREATED,
            axum::Json(json!({ "call_sid": call_sid })),
        )
            .into_response(),
        Err(error) => control_error(format!("{error:#}")),
    }
}

async fn list_calls(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.calls.list()).into_response()
}

fn no_call(error: &ControlError) -> Response {
    let status = match error {
        ControlError::NotFound => StatusCode::NOT_FOUND,
        ControlError::Ended => StatusCode::CONFLICT,
        ControlError::Busy => StatusCode::TOO_MANY_REQUESTS,
    };
    (status, axum::Json(json!({ "error": error.to_string() }))).into_response()
}

async fn get_call(State(shared): State<Arc<Shared>>, Path(sid): Path<String>) -> Response {
    match shared.calls.get(&sid) {
        Some(call) => axum::Json(call).into_response(),
        None => no_call(&ControlError::NotFound),
    }
}

/// Hands `control` to the call and answers with its record.
fn steer(shared: &Shared, sid: &str, control: Control) -> Response {
    match shared.calls.send(sid, control) {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(shared.calls.get(sid))).into_response(),
        Err(error) => no_call(&error),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ring {
    outcome: Outcome,
}

async fn ring_call(
    State(shared): State<Arc<Shared>>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Ring>(&body) {
        Ok(ring) => steer(&shared, &sid, Control::Ring(ring.outcome)),
        Err(error) => control_error(error.to_string()),
    }
}

async fn gather_call(
    State(shared): State<Arc<Shared>>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Response {
    let body = if body.is_empty() { &b"{}"[..] } else { &body };
    match serde_json::from_slice::<GatherAnswer>(body) {
        Ok(answer) => steer(&shared, &sid, Control::Gather(answer)),
        Err(error) => control_error(error.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Say {
    speaker: Speaker,
    text: String,
}

async fn say_call(
    State(shared): State<Arc<Shared>>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Say>(&body) {
        Ok(say) => steer(&shared, &sid, Control::Say(say.speaker, say.text)),
        Err(error) => control_error(error.to_string()),
    }
}

async fn hang_up_call(State(shared): State<Arc<Shared>>, Path(sid): Path<String>) -> Response {
    steer(&shared, &sid, Control::HangUp)
}

async fn get_delivery_failures(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.delivery_failures()).into_response()
}

async fn put_delivery_failures(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<DeliveryFailure>>(&body) {
        Ok(failures) => {
            if let Some(error) = failures.iter().find_map(|f| f.validate().err()) {
                return control_error(error);
            }
            shared.set_delivery_failures(failures);
            axum::Json(shared.delivery_failures()).into_response()
        }
        Err(error) => control_error(error.to_string()),
    }
}

async fn get_call_outcomes(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.calls.outcomes()).into_response()
}

async fn put_call_outcomes(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<CallOutcomes>(&body) {
        Ok(outcomes) => {
            shared.calls.set_outcomes(outcomes);
            axum::Json(shared.calls.outcomes()).into_response()
        }
        Err(error) => control_error(error.to_string()),
    }
}

// ---------------------------------------------------------------- account setup

async fn get_phone_numbers(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.phone_numbers()).into_response()
}

async fn put_phone_numbers(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<PhoneNumber>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|numbers| shared.set_phone_numbers(numbers))
    {
        Ok(()) => axum::Json(shared.phone_numbers()).into_response(),
        Err(error) => control_error(error),
    }
}

async fn get_messaging_services(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.messaging_services()).into_response()
}

async fn put_messaging_services(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<MessagingService>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|services| shared.set_messaging_services(services))
    {
        Ok(()) => axum::Json(shared.messaging_services()).into_response(),
        Err(error) => control_error(error),
    }
}

async fn get_conversations_webhooks(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.conversations_webhooks()).into_response()
}

async fn put_conversations_webhooks(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ConversationsWebhooks>(&body)
        .map_err(|e| e.to_string())
        .and_then(|webhooks| shared.set_conversations_webhooks(webhooks))
    {
        Ok(()) => axum::Json(shared.conversations_webhooks()).into_response(),
        Err(error) => control_error(error),
    }
}

// ---------------------------------------------------------------- Twilio API

/// The endpoints the sandbox serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Messages { account: String },
    Calls { account: String },
    UpdateCall { account: String, sid: String },
    CreateConversation,
    UpdateConversation(String),
    ConversationMessages(String),
    Participants(String),
}

impl Endpoint {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match segments.as_slice() {
            [API_VERSION, "Accounts", account, "Messages.json"] => Some(Self::Messages {
                account: (*account).to_owned(),
            }),
            [API_VERSION, "Accounts", account, "Calls.json"] => Some(Self::Calls {
                account: (*account).to_owned(),
            }),
            [API_VERSION, "Accounts", account, "Calls", call] => {
                call.strip_suffix(".json").map(|sid| Self::UpdateCall {
                    account: (*account).to_owned(),
                    sid: sid.to_owned(),
                })
            }
            ["v1", "Conversations"] => Some(Self::CreateConversation),
            ["v1", "Conversations", sid] => Some(Self::UpdateConversation((*sid).to_owned())),
            ["v1", "Conversations", sid, "Messages"] => {
                Some(Self::ConversationMessages((*sid).to_owned()))
            }
            ["v1", "Conversations", sid, "Participants"] => {
                Some(Self::Participants((*sid).to_owned()))
            }
            _ => None,
        }
    }

    fn account(&self) -> Option<&str> {
        match self {
            Self::Messages { account }
            | Self::Calls { account }
            | Self::UpdateCall { account, .. } => Some(account),
            _ => None,
        }
    }
}

/// The request's form parameters.
struct Form {
    all: Vec<(String, String)>,
    first: BTreeMap<String, String>,
}

impl Form {
    fn parse(body: &[u8]) -> Self {
        let all: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let mut first = BTreeMap::new();
        for (name, value) in &all {
            first.entry(name.clone()).or_insert_with(|| value.clone());
        }
        Self { all, first }
    }

    /// A parameter's first value, `None` when absent or empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.first
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.all
            .iter()
            .filter(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A signed webhook to post after answering.
struct Callback {
    signed_url: String,
    params: Vec<(String, String)>,
}

/// What a processed request produced.
struct Created {
    status: StatusCode,
    body: Value,
    sid: String,
    callbacks: Vec<Callback>,
    /// A created call to play, with its inbox.
    play: Option<(CallSpec, mpsc::Receiver<Control>)>,
}

async fn twilio_request(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = shared.next_seq();
    let at_ms = now_ms();
    if let Some(read) = Read::parse(uri.path()) {
        return serve_read(&shared, &method, &headers, &uri, &read, seq, at_ms);
    }
    let form = Form::parse(&body);
    let endpoint = Endpoint::parse(uri.path());
    let sender = endpoint
        .as_ref()
        .and_then(|endpoint| sender_of(&shared, endpoint, &form));
    let mut record = RequestRecord {
        seq,
        at_ms,
        method: method.to_string(),
        path: uri.path().to_owned(),
        params: form.first.clone(),
        all_params: form.all.clone(),
        operation_id: header_str(&headers, "x-si-operation-id").map(str::to_owned),
        traceparent: header_str(&headers, "traceparent").map(str::to_owned),
        sender: sender.clone(),
        status: 0,
        error_code: None,
        sid: None,
        injected: false,
    };

    let mut drop_connection = false;
    let result = async {
        let endpoint = endpoint.ok_or_else(|| TwilioError::not_found(uri.path()))?;
        if method != Method::POST {
            return Err(TwilioError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                20004,
                "Method not allowed",
            ));
        }
        authenticate(&shared, &headers, endpoint.account())?;
        let (fault, latency) = shared.draw_fault();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault {
            Fault::ServerError => {
                record.injected = true;
                return Err(TwilioError::server_error());
            }
            Fault::TooMany => {
                record.injected = true;
                return Err(TwilioError::too_many_requests());
            }
            Fault::Drop => drop_connection = true,
            Fault::None => {}
        }
        if limited(&endpoint)
            && let Some(sender) = &sender
        {
            record.at_ms = shared
                .admit(sender)
                .ok_or_else(TwilioError::too_many_requests)?;
        }
        execute(&shared, &endpoint, &form, &headers)
    }
    .await;

    let response = match result {
        Ok(created) => {
            record.status = created.status.as_u16();
            record.sid = Some(created.sid.clone());
            if !created.callbacks.is_empty() {
                schedule_callbacks(&shared, created.callbacks);
            }
            if let Some((spec, inbox)) = created.play {
                player::spawn(&shared, spec, inbox);
            }
            (created.status, axum::Json(created.body)).into_response()
        }
        Err(error) => {
            record.status = error.status.as_u16();
            record.error_code = Some(error.code);
            tracing::debug!(
                seq,
                code = error.code,
                status = error.status.as_u16(),
                "twilio request refused"
            );
            error.into_response()
        }
    };
    if drop_connection {
        record.status = 0;
        record.injected = true;
        shared.record(record);
        // Unwinding out of the handler ends hyper's connection task: the client
        // sees the connection closed without an answer. `resume_unwind` skips
        // the panic hook, so nothing is printed.
        std::panic::resume_unwind(Box::new("si-twilio-sandbox: injected dropped connection"));
    }
    shared.record(record);
    response
}

/// A read-only request (`GET` of the Account resource, the phone numbers,
/// the Messaging Services and their numbers, the Conversations webhooks):
/// auth checked as for every request, Twilio's JSON shapes and list
/// envelopes. Kept in the reads log, not the request log (which holds what
/// operations did); no faults are drawn.
fn serve_read(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    read: &Read,
    seq: u64,
    at_ms: i64,
) -> Response {
    let result = if *method == Method::GET {
        authenticate(shared, headers, read.account())
            .and_then(|()| read_json(shared, headers, uri, read))
    } else {
        Err(TwilioError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            20004,
            "Method not allowed",
        ))
    };
    let (status, error_code) = match &result {
        Ok(_) => (StatusCode::OK, None),
        Err(error) => (error.status, Some(error.code)),
    };
    shared.record_read(RequestRecord {
        seq,
        at_ms,
        method: method.to_string(),
        path: uri.path().to_owned(),
        params: form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        all_params: Vec::new(),
        operation_id: None,
        traceparent: header_str(headers, "traceparent").map(str::to_owned),
        sender: None,
        status: status.as_u16(),
        error_code,
        sid: match (read, &result) {
            (Read::Account(account), Ok(_)) => Some(account.clone()),
            _ => None,
        },
        injected: false,
    });
    match result {
        Ok(body) => (status, axum::Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

fn read_json(
    shared: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
    read: &Read,
) -> Result<Value, TwilioError> {
    let account = shared.config.account_sid.as_str();
    // v1 lists link their pages absolutely: on the sandbox's own address.
    let own_base = || {
        format!(
            "http://{}",
            header_str(headers, header::HOST.as_str()).unwrap_or("127.0.0.1")
        )
    };
    Ok(match read {
        Read::Account(_) => account_json(shared),
        Read::PhoneNumbers(_) => {
            let page = Page::from_query(uri.query())?;
            let numbers: Vec<Value> = shared
                .phone_numbers()
                .iter()
                .map(|n| account::phone_number_json(account, n))
                .collect();
            account::v2010_list(uri.path(), "incoming_phone_numbers", page, &numbers)
        }
        Read::Services => {
            let page = Page::from_query(uri.query())?;
            let services: Vec<Value> = shared
                .messaging_services()
                .iter()
                .map(|s| account::service_json(account, s))
                .collect();
            account::v1_list(&own_base(), uri.path(), "services", page, &services)
        }
        Read::ServicePhoneNumbers(sid) => {
            let page = Page::from_query(uri.query())?;
            let service = shared
                .messaging_services()
                .into_iter()
                .find(|s| s.sid.as_deref() == Some(sid.as_str()))
                .ok_or_else(|| TwilioError::not_found(uri.path()))?;
            let known = shared.phone_numbers();
            let numbers: Vec<Value> = service
                .phone_numbers
                .iter()
                .map(|n| account::service_number_json(account, sid, n, &known))
                .collect();
            account::v1_list(&own_base(), uri.path(), "phone_numbers", page, &numbers)
        }
        Read::ConversationsWebhooks => {
            account::conversations_webhooks_json(account, &shared.conversations_webhooks())
        }
    })
}

/// Twilio's Account resource for the sandbox's account. The real one
/// carries the Auth Token; the sandbox never echoes a secret.
fn account_json(shared: &Shared) -> Value {
    let account = &shared.config.account_sid;
    let base = format!("/{API_VERSION}/Accounts/{account}");
    let created = rfc2822(0);
    let mut subresources = serde_json::Map::new();
    for (name, path) in [
        ("calls", "Calls"),
        ("messages", "Messages"),
        ("recordings", "Recordings"),
        ("incoming_phone_numbers", "IncomingPhoneNumbers"),
        ("keys", "Keys"),
        ("balance", "Balance"),
        ("usage", "Usage"),
    ] {
        subresources.insert(name.to_owned(), json!(format!("{base}/{path}.json")));
    }
    json!({
        "auth_token": "(not shown by the sandbox)",
        "date_created": created,
        "date_updated": created,
        "friendly_name": "Si sandbox account",
        "owner_account_sid": account,
        "sid": account,
        "status": "active",
        "subresource_uris": subresources,
        "type": "Full",
        "uri": format!("{base}.json"),
    })
}

/// A token resource of the Accounts API (`/v1/AuthTokens/...`).
fn token_resource(shared: &Shared, path: &str, field: &str, token: &str) -> serde_json::Value {
    let now = iso8601(now_ms());
    json!({
        "account_sid": shared.config.account_sid,
        field: token,
        "date_created": now,
        "date_updated": now,
        "url": format!("https://accounts.twilio.com{path}"),
    })
}

/// `POST /v1/AuthTokens/Secondary`: a new secondary Auth Token, which
/// authenticates API requests from now on.
async fn create_secondary_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(error) = authenticate(&shared, &headers, None) {
        return error.into_response();
    }
    let token = shared.tokens.create_secondary();
    let path = "/v1/AuthTokens/Secondary";
    let body = token_resource(&shared, path, "secondary_auth_token", &token);
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// `DELETE /v1/AuthTokens/Secondary`: revokes the secondary Auth Token.
async fn delete_secondary_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(error) = authenticate(&shared, &headers, None) {
        return error.into_response();
    }
    if shared.tokens.delete_secondary() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        TwilioError::not_found("/v1/AuthTokens/Secondary").into_response()
    }
}

/// `POST /v1/AuthTokens/Promote`: the secondary becomes the primary (and
/// signs webhooks from now on); the old primary is revoked at once.
async fn promote_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(error) = authenticate(&shared, &headers, None) {
        return error.into_response();
    }
    match shared.tokens.promote() {
        Some(token) => {
            let body = token_resource(&shared, "/v1/AuthTokens/Promote", "auth_token", &token);
            axum::Json(body).into_response()
        }
        None => TwilioError::bad_request(20001, "There is no secondary Auth Token to promote")
            .into_response(),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Requests that send something are rate limited.
fn limited(endpoint: &Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Messages { .. } | Endpoint::Calls { .. } | Endpoint::ConversationMessages(_)
    )
}

fn sender_of(shared: &Shared, endpoint: &Endpoint, form: &Form) -> Option<String> {
    match endpoint {
        Endpoint::Messages { .. } => form
            .get("From")
            .or_else(|| form.get("MessagingServiceSid"))
            .map(str::to_owned),
        Endpoint::Calls { .. } => form.get("From").map(str::to_owned),
        Endpoint::UpdateCall { .. } => None,
        Endpoint::CreateConversation => form.get("MessagingServiceSid").map(str::to_owned),
        Endpoint::Participants(_) => form.get("MessagingBinding.ProxyAddress").map(str::to_owned),
        Endpoint::ConversationMessages(sid) | Endpoint::UpdateConversation(sid) => Some(
            shared
                .conversation(sid)
                .map_or_else(|| sid.clone(), |c| c.sender()),
        ),
    }
}

/// HTTP Basic with the Account SID and Auth Token, or an API key SID and secret;
/// the account in the path must be ours.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    path_account: Option<&str>,
) -> Result<(), TwilioError> {
    let credentials = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|value| {
            let (scheme, encoded) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| STANDARD.decode(encoded.trim()).ok())?
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .ok_or_else(TwilioError::authenticate)?;
    let (user, password) = credentials
        .split_once(':')
        .ok_or_else(TwilioError::authenticate)?;
    let equal = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
    let config = &shared.config;
    let by_token = equal(user, &config.account_sid) & shared.tokens.accepts(password);
    let by_key = config
        .api_key
        .as_ref()
        .is_some_and(|(key, secret)| equal(user, key) & equal(password, secret));
    if !(by_token || by_key) {
        return Err(TwilioError::authenticate());
    }
    if path_account.is_some_and(|account| account != config.account_sid) {
        return Err(TwilioError::authenticate());
    }
    Ok(())
}

fn execute(
    shared: &Shared,
    endpoint: &Endpoint,
    form: &Form,
    headers: &HeaderMap,
) -> Result<Created, TwilioError> {
    match endpoint {
        Endpoint::Messages { .. } => create_message(shared, form),
        Endpoint::Calls { .. } => create_call(shared, form),
        Endpoint::UpdateCall { sid, .. } => update_call(shared, sid, form),
        Endpoint::CreateConversation => create_conversation(shared, form),
        Endpoint::UpdateConversation(sid) => update_conversation(shared, sid, form),
        Endpoint::ConversationMessages(sid) => {
            let webhook_enabled = header_str(headers, "x-twilio-webhook-enabled")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            conversation_message(shared, sid, form, webhook_enabled)
        }
        Endpoint::Participants(sid) => add_participant(shared, sid, form),
    }
}

/// Refuses a `To` that is malformed, invalid or opted out. Like Twilio, the
/// 21211 message quotes the number as given: a client must not log it.
fn check_to(shared: &Shared, to: &str) -> Result<(), TwilioError> {
    let bare = bare_number(to);
    if !is_e164(to) || shared.invalid.contains(bare) || shared.invalid.contains(to) {
        return Err(TwilioError::bad_request(
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if shared.opted_out.contains(bare) || shared.opted_out.contains(to) {
        return Err(TwilioError::bad_request(
            21610,
            "Attempt to send to unsubscribed recipient",
        ));
    }
    Ok(())
}

/// A short code (3 to 8 digits) or an E.164 address.
fn valid_from(from: &str) -> bool {
    is_e164(from) || ((3..=8).contains(&from.len()) && from.bytes().all(|b| b.is_ascii_digit()))
}

fn create_message(shared: &Shared, form: &Form) -> Result<Created, TwilioError> {
    let to = form
        .get("To")
        .ok_or_else(|| TwilioError::bad_request(21604, "A 'To' phone number is required."))?;
    let from = form.get("From");
    let service = form.get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return Err(TwilioError::bad_request(
            21603,
            "A 'From' phone number is required.",
        ));
    }
    let body = form.get("Body");
    let media = form.values("MediaUrl");
    let content = form.get("ContentSid");
    if body.is_none() && media.is_empty() && content.is_none() {
        return Err(TwilioError::bad_request(21602, "Message body is required."));
    }
    if body.is_some_and(|b| b.chars().count() > MAX_BODY_CHARS) {
        return Err(TwilioError::bad_request(
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    if let Some(variables) = form.get("ContentVariables")
        && serde_json::from_str::<serde_json::Map<String, Value>>(variables).is_err()
    {
        return Err(TwilioError::bad_request(
            21656,
            "The ContentVariables Parameter is invalid.",
        ));
    }
    if let Some(from) = from
        && !valid_from(from)
    {
        return Err(TwilioError::bad_request(
            21212,
            "The 'From' number is not a valid phone number, shortcode, or alphanumeric sender ID.",
        ));
    }
    check_to(shared, to)?;

    let account = &shared.config.account_sid;
    let message_sid = sid("SM");
    let now = rfc2822(now_ms());
    let segments = body.map_or(1, num_segments);
    let status = if from.is_some() { "queued" } else { "accepted" };
    let body_json = json!({
        "account_sid": account,
        "api_version": API_VERSION,
        "body": body.unwrap_or_default(),
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": media.len().to_string(),
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": message_sid,
        "status": status,
        "subresource_uris": {
            "media": format!("/{API_VERSION}/Accounts/{account}/Messages/{message_sid}/Media.json"),
        },
        "to": to,
        "uri": format!("/{API_VERSION}/Accounts/{account}/Messages/{message_sid}.json"),
    });

    let target = form.get("StatusCallback").map(str::to_owned).or_else(|| {
        shared
            .webhooks
            .as_ref()
            .map(|w| format!("{}{MESSAGING_STATUS_PATH}", w.public_base()))
    });
    let failure = shared.delivery_failure(to, content.is_some());
    let last = failure.as_ref().map_or("delivered", |f| f.status.as_str());
    let callbacks = match (shared.config.callbacks, target) {
        (true, Some(signed_url)) => ["sent", last]
            .iter()
            .map(|status| {
                let mut params =
                    message_status_params(account, &message_sid, to, from, service, status);
                if let Some(f) = failure.as_ref().filter(|_| *status == last) {
                    params.push(("ErrorCode".to_owned(), f.error_code.to_string()));
                }
                Callback {
                    signed_url: signed_url.clone(),
                    params,
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Created {
        status: StatusCode::CREATED,
        body: body_json,
        sid: message_sid,
        callbacks,
        play: None,
    })
}

/// A Programmable Messaging status callback, as Twilio posts it.
fn message_status_params(
    account: &str,
    message_sid: &str,
    to: &str,
    from: Option<&str>,
    service: Option<&str>,
    status: &str,
) -> Vec<(String, String)> {
    let mut params = vec![
        ("SmsSid".to_owned(), message_sid.to_owned()),
        ("SmsStatus".to_owned(), status.to_owned()),
        ("MessageStatus".to_owned(), status.to_owned()),
        ("To".to_owned(), to.to_owned()),
    ];
    if let Some(service) = service {
        params.push(("MessagingServiceSid".to_owned(), service.to_owned()));
    }
    params.push(("MessageSid".to_owned(), message_sid.to_owned()));
    params.push(("AccountSid".to_owned(), account.to_owned()));
    if let Some(from) = from {
        params.push(("From".to_owned(), from.to_owned()));
    }
    params.push(("ApiVersion".to_owned(), API_VERSION.to_owned()));
    params
}

fn create_call(shared: &Shared, form: &Form) -> Result<Created, TwilioError> {
    let to = form
        .get("To")
        .ok_or_else(|| TwilioError::bad_request(21201, "No 'To' number is specified"))?;
    let from = form
        .get("From")
        .ok_or_else(|| TwilioError::bad_request(21213, "No 'From' number is specified"))?;
    if form.get("Url").is_none()
        && form.get("Twiml").is_none()
        && form.get("ApplicationSid").is_none()
    {
        return Err(TwilioError::bad_request(
            21205,
            "Url parameter is required.",
        ));
    }
    check_to(shared, to)?;
    if shared.calls.live() >= MAX_LIVE_CALLS {
        return Err(TwilioError::too_many_requests());
    }
    let timeout_secs = match form.get("Timeout") {
        None => 60,
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| TwilioError::bad_request(21216, "Timeout must be a number of seconds"))?,
    };
    let account = &shared.config.account_sid;
    let call_sid = sid("CA");
    let now = rfc2822(now_ms());
    // Twilio takes the events as repeated parameters or space-separated.
    let events = form
        .values("StatusCallbackEvent")
        .iter()
        .flat_map(|v| v.split([' ', ',']))
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let method = |name: &str| match form.get(name) {
        Some(m) if m.eq_ignore_ascii_case("GET") => WebhookMethod::Get,
        _ => WebhookMethod::Post,
    };
    let spec = CallSpec {
        sid: call_sid.clone(),
        from: from.to_owned(),
        to: to.to_owned(),
        direction: "outbound-api",
        url: form.get("Url").map(str::to_owned),
        method: method("Method"),
        twiml: form.get("Twiml").map(str::to_owned),
        status_callback: form.get("StatusCallback").map(str::to_owned),
        events,
        timeout_secs,
        machine_detection: form
            .get("MachineDetection")
            .is_some_and(|m| !m.eq_ignore_ascii_case("none")),
        record: form
            .get("Record")
            .is_some_and(|r| r.eq_ignore_ascii_case("true"))
            .then(|| form.get("RecordingStatusCallback").map(str::to_owned)),
    };
    let record = CallRecord::new(&call_sid, spec.direction, from, to, spec.url.as_deref());
    // Calls play when the sandbox posts callbacks at all.
    let play = shared
        .calls
        .insert(record, shared.config.callbacks)
        .map(|inbox| (spec, inbox));
    Ok(Created {
        status: StatusCode::CREATED,
        body: json!({
            "account_sid": account,
            "api_version": API_VERSION,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "from": from,
            "parent_call_sid": null,
            "sid": call_sid,
            "status": "queued",
            "to": to,
            "uri": format!("/{API_VERSION}/Accounts/{account}/Calls/{call_sid}.json"),
        }),
        sid: call_sid,
        callbacks: Vec::new(),
        play,
    })
}

/// Hangs up (`Status=completed`) or cancels (`Status=canceled`) a call. A
/// call the sandbox plays ends (its closing callbacks follow); one it does not
/// know is taken as in progress if its SID is well-formed.
fn update_call(shared: &Shared, call_sid: &str, form: &Form) -> Result<Created, TwilioError> {
    let account = &shared.config.account_sid;
    let uri = format!("/{API_VERSION}/Accounts/{account}/Calls/{call_sid}.json");
    if !(call_sid.len() == 34 && call_sid.starts_with("CA")) {
        return Err(TwilioError::not_found(&uri));
    }
    let status = match form.get("Status") {
        Some(status @ ("completed" | "canceled")) => status,
        Some(_) => {
            return Err(TwilioError::bad_request(
                21218,
                "Invalid Status: use completed or canceled",
            ));
        }
        None => {
            return Err(TwilioError::bad_request(
                20001,
                "Status, Url or Twiml is required to update a call",
            ));
        }
    };
    if let Some(call) = shared.calls.get(call_sid) {
        if call.ended() {
            return Err(TwilioError::bad_request(
                21220,
                "Call is not in-progress. Cannot redirect.",
            ));
        }
        // A call that is only kept (callbacks off) just ends.
        match shared.calls.send(call_sid, Control::End(status.to_owned())) {
            Ok(()) => {}
            Err(ControlError::Ended) => {
                shared.calls.update(call_sid, |r| {
                    r.status = status.to_owned();
                    r.ended_ms = Some(now_ms());
                    r.duration_secs = Some(0);
                });
            }
            Err(ControlError::NotFound | ControlError::Busy) => {
                return Err(TwilioError::server_error());
            }
        }
    }
    let now = rfc2822(now_ms());
    Ok(Created {
        status: StatusCode::OK,
        body: json!({
            "account_sid": account,
            "api_version": API_VERSION,
            "date_updated": now,
            "sid": call_sid,
            "status": status,
            "uri": uri,
        }),
        sid: call_sid.to_owned(),
        callbacks: Vec::new(),
        play: None,
    })
}

fn conversation_json(shared: &Shared, c: &Conversation) -> Value {
    let url = format!("{CONVERSATIONS_BASE}/Conversations/{}", c.sid);
    json!({
        "account_sid": shared.config.account_sid,
        "attributes": c.attributes,
        "chat_service_sid": c.chat_service_sid,
        "date_created": iso8601(c.created_ms),
        "date_updated": iso8601(c.updated_ms),
        "friendly_name": c.friendly_name,
        "messaging_service_sid": c.messaging_service_sid,
        "sid": c.sid,
        "state": c.state,
        "timers": {},
        "unique_name": c.unique_name,
        "url": url,
        "links": {
            "participants": format!("{url}/Participants"),
            "messages": format!("{url}/Messages"),
            "webhooks": format!("{url}/Webhooks"),
        },
    })
}

fn missing(name: &str) -> TwilioError {
    TwilioError::bad_request(
        20001,
        format!("Missing required parameter {name} in the post body"),
    )
}

fn check_state(state: Option<&str>) -> Result<(), TwilioError> {
    match state {
        None | Some("active" | "inactive" | "closed") => Ok(()),
        Some(_) => Err(TwilioError::bad_request(20001, "Invalid parameter State")),
    }
}

fn create_conversation(shared: &Shared, form: &Form) -> Result<Created, TwilioError> {
    check_state(form.get("State"))?;
    let now = now_ms();
    let conversation = Conversation {
        sid: sid("CH"),
        chat_service_sid: DEFAULT_CHAT_SERVICE.to_owned(),
        messaging_service_sid: form.get("MessagingServiceSid").map(str::to_owned),
        friendly_name: form.get("FriendlyName").map(str::to_owned),
        unique_name: form.get("UniqueName").map(str::to_owned),
        attributes: form.get("Attributes").unwrap_or("{}").to_owned(),
        state: form.get("State").unwrap_or("active").to_owned(),
        created_ms: now,
        updated_ms: now,
        participants: Vec::new(),
        next_index: 0,
    };
    let body = conversation_json(shared, &conversation);
    let sid = conversation.sid.clone();
    shared.insert_conversation(conversation);
    Ok(Created {
        status: StatusCode::CREATED,
        body,
        sid,
        callbacks: Vec::new(),
        play: None,
    })
}

fn conversation_path(sid: &str) -> String {
    format!("/v1/Conversations/{sid}")
}

fn update_conversation(shared: &Shared, sid: &str, form: &Form) -> Result<Created, TwilioError> {
    check_state(form.get("State"))?;
    let (conversation, ()) = shared
        .update_conversation(sid, |c| {
            if let Some(state) = form.get("State") {
                c.state = state.to_owned();
            }
            if let Some(name) = form.get("FriendlyName") {
                c.friendly_name = Some(name.to_owned());
            }
            if let Some(attributes) = form.get("Attributes") {
                c.attributes = attributes.to_owned();
            }
            c.updated_ms = now_ms();
        })
        .ok_or_else(|| TwilioError::not_found(&conversation_path(sid)))?;
    Ok(Created {
        status: StatusCode::OK,
        body: conversation_json(shared, &conversation),
        sid: conversation.sid.clone(),
        callbacks: Vec::new(),
        play: None,
    })
}

fn conversation_message(
    shared: &Shared,
    sid: &str,
    form: &Form,
    webhook_enabled: bool,
) -> Result<Created, TwilioError> {
    let body = form.get("Body");
    let media = form.get("MediaSid");
    let content = form.get("ContentSid");
    // The path may name the conversation by its UniqueName.
    let sid = &shared
        .conversation(sid)
        .ok_or_else(|| TwilioError::not_found(&conversation_path(sid)))?
        .sid;
    if body.is_none() && media.is_none() && content.is_none() {
        return Err(missing("Body"));
    }
    // The media must have been uploaded to the conversation's service.
    let media_json = match media {
        None => serde_json::Value::Null,
        Some(media_sid) => {
            let service = shared
                .conversation(sid)
                .map(|c| c.chat_service_sid)
                .unwrap_or_default();
            let resource = shared.mcs_resource(&service, media_sid).ok_or_else(|| {
                TwilioError::not_found(&format!("/v1/Services/{service}/Media/{media_sid}"))
            })?;
            json!([{
                "sid": media_sid,
                "content_type": resource["content_type"],
                "size": resource["size"],
                "filename": null,
            }])
        }
    };
    let (conversation, index) = shared
        .update_conversation(sid, |c| {
            let index = c.next_index;
            c.next_index += 1;
            // A new message reactivates an inactive conversation.
            if c.state == "inactive" {
                c.state = "active".to_owned();
            }
            c.updated_ms = now_ms();
            index
        })
        .ok_or_else(|| TwilioError::not_found(&conversation_path(sid)))?;
    let account = &shared.config.account_sid;
    let message_sid = crate::twilio::sid("IM");
    let author = form.get("Author").unwrap_or("system");
    let now = now_ms();
    let url = format!("{CONVERSATIONS_BASE}/Conversations/{sid}/Messages/{message_sid}");
    let body_json = json!({
        "account_sid": account,
        "attributes": form.get("Attributes").unwrap_or("{}"),
        "author": author,
        "body": body,
        "chat_service_sid": conversation.chat_service_sid,
        "content_sid": content,
        "conversation_sid": sid,
        "date_created": iso8601(now),
        "date_updated": iso8601(now),
        "delivery": null,
        "index": index,
        "media": media_json,
        "participant_sid": null,
        "sid": message_sid,
        "url": url,
        "links": {
            "delivery_receipts": format!("{url}/Receipts"),
            "channel_metadata": format!("{url}/ChannelMetadata"),
        },
    });

    let mut callbacks = Vec::new();
    if let Some(webhooks) = shared.webhooks.as_ref().filter(|_| shared.config.callbacks) {
        let signed_url = format!("{}{CONVERSATIONS_EVENTS_PATH}", webhooks.public_base());
        if webhook_enabled {
            let (_, params) = conversation_message_params(
                account,
                &InboundConversationMessage {
                    conversation_sid: sid.to_owned(),
                    author: author.to_owned(),
                    body: body.unwrap_or_default().to_owned(),
                    participant_sid: None,
                    messaging_service_sid: conversation.messaging_service_sid.clone(),
                    chat_service_sid: Some(conversation.chat_service_sid.clone()),
                    index: Some(index),
                    message_sid: Some(message_sid.clone()),
                    media_json: None,
                },
            );
            let params = params
                .into_iter()
                .map(|(n, v)| {
                    if n == "Source" {
                        (n, "API".to_owned())
                    } else {
                        (n, v)
                    }
                })
                .collect();
            callbacks.push(Callback {
                signed_url: signed_url.clone(),
                params,
            });
        }
        for participant in conversation
            .participants
            .iter()
            .filter(|p| p.address.is_some())
        {
            let channel_message_sid = crate::twilio::sid("SM");
            let receipt_sid = crate::twilio::sid("DY");
            for status in ["sent", "delivered"] {
                callbacks.push(Callback {
                    signed_url: signed_url.clone(),
                    params: delivery_params(
                        account,
                        &conversation,
                        &message_sid,
                        &channel_message_sid,
                        &receipt_sid,
                        &participant.sid,
                        status,
                    ),
                });
            }
        }
    }
    Ok(Created {
        status: StatusCode::CREATED,
        body: body_json,
        sid: message_sid,
        callbacks,
        play: None,
    })
}

/// Conversations `onDeliveryUpdated`, as Twilio posts it.
fn delivery_params(
    account: &str,
    conversation: &Conversation,
    message_sid: &str,
    channel_message_sid: &str,
    receipt_sid: &str,
    participant_sid: &str,
    status: &str,
) -> Vec<(String, String)> {
    let now = iso8601(now_ms());
    let mut params = Vec::new();
    let mut add = |name: &str, value: &str| params.push((name.to_owned(), value.to_owned()));
    add("EventType", "onDeliveryUpdated");
    add("AccountSid", account);
    add("ChatServiceSid", &conversation.chat_service_sid);
    add("ConversationSid", &conversation.sid);
    if let Some(service) = &conversation.messaging_service_sid {
        add("MessagingServiceSid", service);
    }
    add("MessageSid", message_sid);
    add("ChannelMessageSid", channel_message_sid);
    add("DeliveryReceiptSid", receipt_sid);
    add("ParticipantSid", participant_sid);
    add("Status", status);
    add("ErrorCode", "0");
    add("DateCreated", &now);
    add("DateUpdated", &now);
    add("RetryCount", "0");
    params
}

fn add_participant(shared: &Shared, sid: &str, form: &Form) -> Result<Created, TwilioError> {
    // The path may name the conversation by its UniqueName.
    let sid = &shared
        .conversation(sid)
        .ok_or_else(|| TwilioError::not_found(&conversation_path(sid)))?
        .sid;
    let address = form.get("MessagingBinding.Address");
    let proxy = form.get("MessagingBinding.ProxyAddress");
    let identity = form.get("Identity");
    if address.is_none() && identity.is_none() {
        return Err(missing("Identity or MessagingBinding.Address"));
    }
    if let Some(address) = address {
        if !is_e164(address) {
            return Err(TwilioError::bad_request(
                20001,
                "Invalid parameter MessagingBinding.Address",
            ));
        }
        check_to(shared, address)?;
        if let Some(proxy) = proxy
            && let Some(existing) = shared.binding_in_use(address, proxy)
        {
            return Err(TwilioError::new(
                StatusCode::CONFLICT,
                50416,
                format!(
                    "A binding for this participant and proxy address already exists in Conversation {existing}"
                ),
            ));
        }
    }
    let participant = Participant {
        sid: crate::twilio::sid("MB"),
        identity: identity.map(str::to_owned),
        address: address.map(str::to_owned),
        proxy_address: proxy.map(str::to_owned),
    };
    let (conversation, ()) = shared
        .update_conversation(sid, |c| {
            c.participants.push(participant.clone());
            c.updated_ms = now_ms();
        })
        .ok_or_else(|| TwilioError::not_found(&conversation_path(sid)))?;
    let now = iso8601(now_ms());
    let url = format!(
        "{CONVERSATIONS_BASE}/Conversations/{sid}/Participants/{}",
        participant.sid
    );
    let binding = address.map(|address| {
        json!({
            "type": if address.starts_with("whatsapp:") { "whatsapp" } else { "sms" },
            "address": address,
            "proxy_address": proxy,
        })
    });
    Ok(Created {
        status: StatusCode::CREATED,
        body: json!({
            "account_sid": shared.config.account_sid,
            "attributes": form.get("Attributes").unwrap_or("{}"),
            "chat_service_sid": conversation.chat_service_sid,
            "conversation_sid": sid,
            "date_created": now,
            "date_updated": now,
            "identity": identity,
            "last_read_message_index": null,
            "messaging_binding": binding,
            "role_sid": null,
            "sid": participant.sid,
            "url": url,
        }),
        sid: participant.sid,
        callbacks: Vec::new(),
        play: None,
    })
}

/// Posts the callbacks in order, in the background, recording each outcome.
fn schedule_callbacks(shared: &Arc<Shared>, callbacks: Vec<Callback>) {
    let poster = shared.poster.clone();
    let task_shared = shared.clone();
    let stop = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        let post_all = async {
            for callback in callbacks {
                let result = poster
                    .post_signed(&callback.signed_url, &callback.params)
                    .await;
                let (status, error) = match result {
                    Ok(status) => (Some(status), None),
                    Err(error) => (None, Some(format!("{error:#}"))),
                };
                if let Some(error) = &error {
                    tracing::warn!(error, "callback not delivered");
                }
                task_shared.record_callback(CallbackRecord {
                    seq: 0,
                    at_ms: now_ms(),
                    url: poster.post_url_for(&callback.signed_url),
                    signed_url: callback.signed_url,
                    params: callback.params,
                    status,
                    error,
                });
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = post_all => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("/2010-04-01/Accounts/AC1/Messages.json"),
            Some(Endpoint::Messages {
                account: "AC1".into()
            })
        );
        assert_eq!(
            Endpoint::parse("/2010-04-01/Accounts/AC1/Calls.json"),
            Some(Endpoint::Calls {
                account: "AC1".into()
            })
        );
        assert_eq!(
            Endpoint::parse("/v1/Conversations"),
            Some(Endpoint::CreateConversation)
        );
        assert_eq!(
            Endpoint::parse("/v1/Conversations/CH1"),
            Some(Endpoint::UpdateConversation("CH1".into()))
        );
        assert_eq!(
            Endpoint::parse("/v1/Conversations/CH1/Messages"),
            Some(Endpoint::ConversationMessages("CH1".into()))
        );
        assert_eq!(
            Endpoint::parse("/v1/Conversations/CH1/Participants"),
            Some(Endpoint::Participants("CH1".into()))
        );
        assert_eq!(Endpoint::parse("/2010-04-01/Accounts/AC1/Other.json"), None);
        assert_eq!(Endpoint::parse("/"), None);
    }

    #[test]
    fn repeated_form_values_are_all_kept() {
        let form = Form::parse(b"MediaUrl=a&MediaUrl=b&Body=&To=%2B1");
        assert_eq!(form.values("MediaUrl"), ["a", "b"]);
        assert_eq!(form.get("Body"), None);
        assert_eq!(form.get("To"), Some("+1"));
    }
}
