//! Twilio REST: the request each operation kind makes (shapes as Twilio's API
//! defines them, see `../shared/TWILIO.md`), the pooled client, and what
//! Twilio's answer means (accepted, retry, permanent failure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use si_schemas::records::{Channel, OperationKind, OutboundOperation};

use crate::config::TwilioArgs;
use crate::credentials::CredentialStore;

/// Header carrying the operation id with every request (Twilio ignores it; the sandbox records it).
pub const OPERATION_ID_HEADER: &str = "X-Si-Operation-Id";

/// Operation params with this prefix are ours, never sent to Twilio (e.g. `si.purpose`).
pub const INTERNAL_PARAM_PREFIX: &str = "si.";

/// One form-encoded POST to Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioRequest {
    /// Full URL.
    pub url: String,
    /// Form parameters in order; a name may repeat (`MediaUrl`, `StatusCallbackEvent`).
    pub form: Vec<(String, String)>,
}

/// Why an operation cannot be turned into a request (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOperation(pub String);

/// Base URLs, account and status callback, for building requests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Programmable Messaging and Voice base URL.
    pub api_base: String,
    /// Conversations base URL.
    pub conversations_base: String,
    /// Account SID in the Messaging and Voice paths.
    pub account_sid: String,
    /// Status callback for Programmable Messaging sends, if any.
    pub status_callback: Option<String>,
    /// Signs `si-media:` references into URLs Twilio can fetch, if configured.
    pub media: Option<si_runtime::media_url::Signer>,
    /// Where the media of Conversations messages are uploaded
    /// (`{mcs}/v1/Services/{IS}/Media`), when a Conversations Service is set.
    pub mcs_media: Option<String>,
}

impl Endpoints {
    /// From configuration (trailing slashes dropped).
    #[must_use]
    pub fn new(args: &TwilioArgs, media: Option<si_runtime::media_url::Signer>) -> Self {
        Self {
            media,
            api_base: args.api_base_url.trim_end_matches('/').to_owned(),
            conversations_base: args.conversations_base_url.trim_end_matches('/').to_owned(),
            account_sid: args.account_sid.clone(),
            mcs_media: args
                .chat_service_sid
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|service| {
                    format!(
                        "{}/v1/Services/{service}/Media",
                        args.mcs_base_url.trim_end_matches('/')
                    )
                }),
            status_callback: args
                .status_callback_base_url
                .as_deref()
                .filter(|b| !b.is_empty())
                .map(|b| format!("{}/twilio/messaging/status", b.trim_end_matches('/'))),
        }
    }
}

/// The status callback URL of a message: the configured one with the
/// operation's conversation and id, so ingress keys the callbacks by the
/// conversation the message belongs to (whatever its addresses: an SMS
/// fallback of a WhatsApp conversation reports to that conversation) and
/// the report names its operation; and with the W3C `traceparent` of the
/// request, so the delivery reports join the trace of the send.
fn status_callback(base: &str, op: &OutboundOperation, traceparent: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("conversation", &op.conversation_id)
        .append_pair("operation", &op.operation_id);
    if let Some(traceparent) = traceparent {
        query.append_pair(si_runtime::trace::TRACEPARENT, traceparent);
    }
    format!("{base}?{}", query.finish())
}

/// `url` with the request's `traceparent` as one more query parameter, so
/// the call's progress callbacks join the trace of its creation.
fn with_trace(url: &str, traceparent: Option<&str>) -> String {
    match traceparent {
        None => url.to_owned(),
        Some(traceparent) => {
            let pair = form_urlencoded::Serializer::new(String::new())
                .append_pair(si_runtime::trace::TRACEPARENT, traceparent)
                .finish();
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}{pair}")
        }
    }
}

/// An address as Twilio wants it: `whatsapp:+1…` on WhatsApp, plain E.164 otherwise.
fn address(channel: Channel, e164: &str) -> String {
    if channel == Channel::Whatsapp && !e164.starts_with("whatsapp:") {
        format!("whatsapp:{e164}")
    } else {
        e164.to_owned()
    }
}

/// A path segment we put into a URL must be a plain SID-like token.
fn path_sid<'a>(what: &str, value: &'a str) -> Result<&'a str, InvalidOperation> {
    if !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(value)
    } else {
        Err(InvalidOperation(format!(
            "{what} is not a valid Twilio SID for a URL path"
        )))
    }
}

fn required<'a>(what: &str, value: Option<&'a String>) -> Result<&'a str, InvalidOperation> {
    value
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| InvalidOperation(format!("{what} is required")))
}

/// Appends the operation's params (except ours and those already set).
fn extend_params(form: &mut Vec<(String, String)>, op: &OutboundOperation) {
    for (name, value) in &op.params {
        if name.starts_with(INTERNAL_PARAM_PREFIX) || form.iter().any(|(n, _)| n == name) {
            continue;
        }
        form.push((name.clone(), value.clone()));
    }
}

fn push(form: &mut Vec<(String, String)>, name: &str, value: impl Into<String>) {
    form.push((name.to_owned(), value.into()));
}

/// The URL Twilio fetches a media item from: a `si-media:` reference to
/// Si's store becomes a short-lived signed URL (signed now, at each attempt,
/// so a retried send never carries an expired one); any other URL is public
/// and passes unchanged.
fn media_url(
    signer: Option<&si_runtime::media_url::Signer>,
    url: &str,
) -> Result<String, InvalidOperation> {
    let Some(key) = si_runtime::media_url::object_key(url) else {
        return Ok(url.to_owned());
    };
    let signer = signer.ok_or_else(|| {
        InvalidOperation(
            "media names Si's store (si-media:) but MEDIA_PUBLIC_BASE_URL and MEDIA_URL_SECRET are \
             not set"
                .into(),
        )
    })?;
    signer
        .url(key, std::time::SystemTime::now())
        .map_err(InvalidOperation)
}

/// Body, template and media of a message.
fn message_content(
    form: &mut Vec<(String, String)>,
    op: &OutboundOperation,
    media_as_urls: bool,
    media: Option<&si_runtime::media_url::Signer>,
) -> Result<(), InvalidOperation> {
    if let Some(content_sid) = op.content_sid.as_deref().filter(|s| !s.is_empty()) {
        push(form, "ContentSid", content_sid);
        if let Some(vars) = op.content_variables_json.as_deref() {
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(vars).is_err() {
                return Err(InvalidOperation(
                    "content_variables_json is not a JSON object".into(),
                ));
            }
            push(form, "ContentVariables", vars);
        }
    } else if let Some(body) = op.body.as_deref() {
        if body.chars().count() > 1600 {
            return Err(InvalidOperation(
                "body is over 1600 characters (Twilio 21617)".into(),
            ));
        }
        push(form, "Body", body);
    }
    if op.media_urls.len() > 10 {
        return Err(InvalidOperation("more than 10 media URLs".into()));
    }
    if media_as_urls {
        for url in &op.media_urls {
            push(form, "MediaUrl", media_url(media, url)?);
        }
    }
    if !form
        .iter()
        .any(|(n, _)| n == "Body" || n == "ContentSid" || n == "MediaUrl")
        && op.media_urls.is_empty()
    {
        return Err(InvalidOperation(
            "a message needs a body, a content template or media".into(),
        ));
    }
    Ok(())
}

/// The media item of a Conversations message, which egress uploads to the
/// Media Content Service before the message (a Conversations message takes
/// one `MediaSid`, not URLs): `None` for a message without media.
///
/// # Errors
/// More than one item (segment sends each in its own part), an item not in
/// Si's store (only `si-media:` references are fetched: egress fetches no
/// other URL), or the settings the upload needs missing.
pub fn conversation_media<'a>(
    endpoints: &Endpoints,
    op: &'a OutboundOperation,
) -> Result<Option<&'a str>, InvalidOperation> {
    let url = match op.media_urls.as_slice() {
        [] => return Ok(None),
        [url] => url,
        _ => {
            return Err(InvalidOperation(
                "a Conversations message takes one media item (one MediaSid)".into(),
            ));
        }
    };
    let key = si_runtime::media_url::object_key(url).ok_or_else(|| {
        InvalidOperation(
            "Conversations media must be in Si's store (si-media:<key>): egress uploads it to \
             Twilio's Media Content Service and fetches no other URL"
                .into(),
        )
    })?;
    if endpoints.media.is_none() {
        return Err(InvalidOperation(
            "media names Si's store (si-media:) but MEDIA_PUBLIC_BASE_URL and MEDIA_URL_SECRET are \
             not set"
                .into(),
        ));
    }
    if endpoints.mcs_media.is_none() {
        return Err(InvalidOperation(
            "a Conversations message with media needs TWILIO_CHAT_SERVICE_SID (its Media \
             Content Service)"
                .into(),
        ));
    }
    Ok(Some(key))
}

/// `params` name of the call an `END_CALL` hangs up (ours: never sent as a
/// form parameter).
pub const CALL_SID_PARAM: &str = "si.call_sid";

/// The request an operation makes.
///
/// # Errors
/// When the operation lacks what its kind needs, or its kind is unknown.
pub fn build_request(
    endpoints: &Endpoints,
    op: &OutboundOperation,
) -> Result<TwilioRequest, InvalidOperation> {
    build_traced_request(endpoints, op, None)
}

/// The request an operation makes, its status callback URL carrying
/// `traceparent` (the context of the request's span).
///
/// # Errors
/// When the operation lacks what its kind needs, or its kind is unknown.
pub fn build_traced_request(
    endpoints: &Endpoints,
    op: &OutboundOperation,
    traceparent: Option<&str>,
) -> Result<TwilioRequest, InvalidOperation> {
    build_request_with_media(endpoints, op, traceparent, None)
}

/// The request an operation makes, as [`build_traced_request`], with the
/// `MediaSid` of a Conversations message's media once it is uploaded
/// ([`TwilioClient::upload_media`]).
///
/// # Errors
/// When the operation lacks what its kind needs, or its kind is unknown.
pub fn build_request_with_media(
    endpoints: &Endpoints,
    op: &OutboundOperation,
    traceparent: Option<&str>,
    uploaded: Option<&str>,
) -> Result<TwilioRequest, InvalidOperation> {
    let mut form = Vec::new();
    let url = match op.kind {
        OperationKind::SendMessage => send_message(&mut form, endpoints, op, traceparent)?,
        OperationKind::SendConversationMessage => {
            message_content(&mut form, op, false, None)?;
            conversation_media(endpoints, op)?;
            if let Some(media_sid) = uploaded {
                push(&mut form, "MediaSid", media_sid);
            }
            format!(
                "{}/v1/Conversations/{}/Messages",
                endpoints.conversations_base,
                path_sid("conversation_id", &op.conversation_id)?
            )
        }
        OperationKind::CreateConversation => {
            if let Some(service) = op
                .messaging_service_sid
                .as_deref()
                .filter(|s| !s.is_empty())
            {
                push(&mut form, "MessagingServiceSid", service);
            }
            format!("{}/v1/Conversations", endpoints.conversations_base)
        }
        OperationKind::AddParticipant => add_participant(&mut form, endpoints, op)?,
        OperationKind::CloseConversation => {
            push(&mut form, "State", "closed");
            format!(
                "{}/v1/Conversations/{}",
                endpoints.conversations_base,
                path_sid("conversation_id", &op.conversation_id)?
            )
        }
        OperationKind::CreateCall => create_call(&mut form, endpoints, op, traceparent)?,
        OperationKind::EndCall => {
            let call_sid = op.params.get(CALL_SID_PARAM).ok_or_else(|| {
                InvalidOperation(format!("END_CALL needs params[{CALL_SID_PARAM}]"))
            })?;
            push(&mut form, "Status", "completed");
            format!(
                "{}/2010-04-01/Accounts/{}/Calls/{}.json",
                endpoints.api_base,
                path_sid("account sid", &endpoints.account_sid)?,
                path_sid("call sid", call_sid)?
            )
        }
        OperationKind::Unknown => {
            return Err(InvalidOperation(
                "operation kind unknown to this egress version".into(),
            ));
        }
    };
    extend_params(&mut form, op);
    Ok(TwilioRequest { url, form })
}

/// `SEND_MESSAGE`: a Programmable Messaging message; its URL.
fn send_message(
    form: &mut Vec<(String, String)>,
    endpoints: &Endpoints,
    op: &OutboundOperation,
    traceparent: Option<&str>,
) -> Result<String, InvalidOperation> {
    let to = required("to", op.to.as_ref())?;
    push(form, "To", address(op.channel, to));
    if let Some(service) = op
        .messaging_service_sid
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        push(form, "MessagingServiceSid", service);
    } else {
        let from = required("from or messaging_service_sid", op.from.as_ref())?;
        push(form, "From", address(op.channel, from));
    }
    message_content(form, op, true, endpoints.media.as_ref())?;
    if let Some(callback) = &endpoints.status_callback
        && !op.params.contains_key("StatusCallback")
    {
        push(
            form,
            "StatusCallback",
            status_callback(callback, op, traceparent),
        );
    }
    Ok(format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        endpoints.api_base,
        path_sid("account sid", &endpoints.account_sid)?
    ))
}

/// `ADD_PARTICIPANT`: the user's SMS or WhatsApp binding to a conversation; its URL.
fn add_participant(
    form: &mut Vec<(String, String)>,
    endpoints: &Endpoints,
    op: &OutboundOperation,
) -> Result<String, InvalidOperation> {
    let to = required("to", op.to.as_ref())?;
    push(form, "MessagingBinding.Address", address(op.channel, to));
    if let Some(from) = op.from.as_deref().filter(|s| !s.is_empty()) {
        push(
            form,
            "MessagingBinding.ProxyAddress",
            address(op.channel, from),
        );
    } else if !op.params.contains_key("MessagingBinding.ProxyAddress") {
        return Err(InvalidOperation(
            "ADD_PARTICIPANT needs from or params[MessagingBinding.ProxyAddress]".into(),
        ));
    }
    Ok(format!(
        "{}/v1/Conversations/{}/Participants",
        endpoints.conversations_base,
        path_sid("conversation_id", &op.conversation_id)?
    ))
}

/// `CREATE_CALL`: a call to the user, its TwiML and status callbacks
/// carrying `traceparent`; its URL.
fn create_call(
    form: &mut Vec<(String, String)>,
    endpoints: &Endpoints,
    op: &OutboundOperation,
    traceparent: Option<&str>,
) -> Result<String, InvalidOperation> {
    let call = op
        .call
        .as_ref()
        .ok_or_else(|| InvalidOperation("CREATE_CALL needs call".into()))?;
    push(form, "To", required("to", op.to.as_ref())?);
    push(form, "From", required("from", op.from.as_ref())?);
    push(form, "Url", with_trace(&call.twiml_url, traceparent));
    if let Some(callback) = &call.status_callback_url {
        push(form, "StatusCallback", with_trace(callback, traceparent));
        for event in ["initiated", "ringing", "answered", "completed"] {
            push(form, "StatusCallbackEvent", event);
        }
    }
    if call.record {
        push(form, "Record", "true");
    }
    if let Some(timeout) = call.timeout_seconds {
        push(form, "Timeout", timeout.to_string());
    }
    if let Some(detection) = &call.machine_detection {
        push(form, "MachineDetection", detection.clone());
    }
    Ok(format!(
        "{}/2010-04-01/Accounts/{}/Calls.json",
        endpoints.api_base,
        path_sid("account sid", &endpoints.account_sid)?
    ))
}

/// What Twilio's answer means for the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the resource was created or updated.
    Accepted {
        /// The SID of the resource.
        sid: Option<String>,
        /// `num_segments` of a Programmable Messaging message.
        segments: Option<i32>,
        /// HTTP status.
        http_status: u16,
    },
    /// Worth another attempt later (429, 5xx, slow-down codes, network errors).
    Retry {
        /// Twilio's code, if any.
        code: Option<i32>,
        /// HTTP status, if a response arrived.
        http_status: Option<u16>,
        /// Twilio's message or the network error, scrubbed.
        message: String,
        /// Retry-After, when Twilio sent one.
        retry_after: Option<Duration>,
        /// Bad credentials (401/20003): retried at the slowest pace without
        /// spending attempts, so a credentials problem does not burn the queue.
        auth: bool,
    },
    /// Permanent: never retried.
    Permanent {
        /// Twilio's code, if any.
        code: Option<i32>,
        /// HTTP status.
        http_status: u16,
        /// Twilio's message, scrubbed.
        message: String,
    },
}

/// Twilio codes that mean "slow down, try later" although the HTTP status is 4xx.
const SLOW_DOWN_CODES: &[i32] = &[20429, 30001, 21611, 30022, 63018];

/// Classifies an HTTP answer of Twilio.
#[must_use]
pub fn classify(http_status: u16, body: &[u8], retry_after: Option<Duration>) -> Answer {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name));
    if (200..300).contains(&http_status) {
        let sid = field("sid").and_then(|v| v.as_str()).map(str::to_owned);
        let segments = field("num_segments").and_then(|v| match v {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
            _ => None,
        });
        return Answer::Accepted {
            sid,
            segments,
            http_status,
        };
    }
    let code = field("code")
        .and_then(serde_json::Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    let message = si_runtime::dlq::scrub(
        field("message")
            .and_then(|v| v.as_str())
            .unwrap_or("Twilio answered without an error body"),
    );
    let auth = http_status == 401 || code == Some(20003);
    let retriable = http_status == 429
        || http_status >= 500
        || code == Some(20500)
        || code.is_some_and(|c| SLOW_DOWN_CODES.contains(&c))
        || auth;
    if retriable {
        Answer::Retry {
            code,
            http_status: Some(http_status),
            message,
            retry_after,
            auth,
        }
    } else {
        Answer::Permanent {
            code,
            http_status,
            message,
        }
    }
}

/// Twilio's longest `ValidityPeriod`, in seconds (its default, 10 hours).
const LONGEST_VALIDITY: i64 = 36_000;

/// A message with a `not_after` (a WhatsApp reply bound to the 24-hour
/// window, a resend) may not wait in Twilio's queue past it either: the
/// request gets `ValidityPeriod`, the seconds left at `now` (1 to 36,000),
/// unless the operation sets one in its params.
pub fn bound_validity(request: &mut TwilioRequest, op: &OutboundOperation, now: i64) {
    let Some(not_after) = op.not_after else {
        return;
    };
    if op.kind != OperationKind::SendMessage || op.params.contains_key("ValidityPeriod") {
        return;
    }
    let seconds = not_after.saturating_sub(now).saturating_add(999) / 1000;
    request.form.push((
        "ValidityPeriod".to_owned(),
        seconds.clamp(1, LONGEST_VALIDITY).to_string(),
    ));
}

/// Twilio's refusal to hang up a call that is no longer live (21220, invalid
/// call state) or no longer there (404): the call is over, which is what
/// `END_CALL` wanted, for instance after the user hung up first or after a
/// retry of a hang-up whose answer was lost. Every other answer as it is.
#[must_use]
pub fn already_done(kind: OperationKind, answer: Answer) -> Answer {
    match answer {
        Answer::Permanent {
            code, http_status, ..
        } if kind == OperationKind::EndCall
            && (code == Some(21220) || code == Some(20404) || http_status == 404) =>
        {
            Answer::Accepted {
                sid: None,
                segments: None,
                http_status,
            }
        }
        answer => answer,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored; the backoff applies).
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// The pooled HTTPS client with credentials and timeouts.
#[derive(Clone, Debug)]
pub struct TwilioClient {
    http: reqwest::Client,
    credentials: Arc<CredentialStore>,
}

/// The most a Conversations message's media item may weigh: WhatsApp's
/// limit for a document (SMS participants get less: Twilio scales images for
/// MMS).
pub const MAX_CONVERSATION_MEDIA_BYTES: usize = 16 * 1024 * 1024;

/// Why a Conversations message's media was not uploaded.
#[derive(Debug)]
pub enum Upload {
    /// The operation cannot be sent as it is.
    Invalid(InvalidOperation),
    /// Si's store did not give it: says nothing of Twilio.
    Store(Answer),
    /// The Media Content Service's answer.
    Twilio(Sent),
}

/// A request's answer, how long it took and the generation of the
/// credentials it was made with.
#[derive(Debug)]
pub struct Sent {
    /// What Twilio's answer means.
    pub answer: Answer,
    /// From sending to the last byte of the answer.
    pub took: Duration,
    /// See [`crate::credentials::Current::generation`].
    pub generation: u64,
}

impl TwilioClient {
    /// Builds the client; every request takes the store's current credentials.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(args: &TwilioArgs, credentials: Arc<CredentialStore>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(args.request_timeout)
            .connect_timeout(args.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("si-egress/", env!("CARGO_PKG_VERSION")))
            // Twilio's API does not redirect; a redirected POST would be
            // re-sent as a GET (as the official libraries, follow none).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, credentials })
    }

    /// Sends one request, with the W3C `traceparent` of its span when it
    /// has one; every failure is an [`Answer`] (network errors are retriable).
    pub async fn send(
        &self,
        request: &TwilioRequest,
        operation_id: &str,
        traceparent: Option<&str>,
    ) -> Sent {
        let (builder, generation) = self.authenticated(self.http.post(&request.url));
        let started = Instant::now();
        let mut builder = builder.header(OPERATION_ID_HEADER, operation_id);
        if let Some(traceparent) = traceparent {
            builder = builder.header(si_runtime::trace::TRACEPARENT, traceparent);
        }
        let answer = answer_of(builder.form(&request.form).send().await).await;
        Sent {
            answer,
            took: started.elapsed(),
            generation,
        }
    }

    /// `builder` with HTTP Basic auth of the credentials in force, and their
    /// generation.
    fn authenticated(&self, builder: reqwest::RequestBuilder) -> (reqwest::RequestBuilder, u64) {
        let current = self.credentials.current();
        let credentials = &current.credentials;
        let builder = builder.basic_auth(&credentials.user, Some(&credentials.password));
        (builder, current.generation)
    }

    /// Uploads the media item of a Conversations message to the Media
    /// Content Service: fetched from Si's store through its signed URL
    /// (without Twilio's credentials), then posted as it is with its content
    /// type. `Ok(None)` for an operation that has none; `Ok(Some(sid))` the
    /// `MediaSid` to send it with. Each attempt uploads again (an upload
    /// whose message fails is an orphan Twilio keeps, harmless).
    ///
    /// # Errors
    /// [`Upload::Invalid`] for an operation that cannot be sent,
    /// [`Upload::Store`] when Si's store does not give the item (an answer
    /// that says nothing of Twilio's health), [`Upload::Twilio`] with the
    /// Media Content Service's answer when it does not take it.
    pub async fn upload_media(
        &self,
        endpoints: &Endpoints,
        op: &OutboundOperation,
        operation_id: &str,
    ) -> Result<Option<String>, Upload> {
        if op.kind != OperationKind::SendConversationMessage {
            return Ok(None);
        }
        let Some(key) = conversation_media(endpoints, op).map_err(Upload::Invalid)? else {
            return Ok(None);
        };
        let (Some(signer), Some(mcs)) = (&endpoints.media, &endpoints.mcs_media) else {
            return Ok(None); // conversation_media checked both
        };
        let url = signer
            .url(key, std::time::SystemTime::now())
            .map_err(|e| Upload::Invalid(InvalidOperation(e)))?;
        let (content_type, bytes) = self.fetch_stored(&url).await.map_err(Upload::Store)?;
        let (builder, generation) = self.authenticated(self.http.post(mcs));
        let started = Instant::now();
        let sent = builder
            .header(OPERATION_ID_HEADER, operation_id)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await;
        let answer = answer_of(sent).await;
        match answer {
            Answer::Accepted { sid: Some(sid), .. } if sid.starts_with("ME") => Ok(Some(sid)),
            Answer::Accepted { http_status, .. } => Err(Upload::Twilio(Sent {
                answer: Answer::Retry {
                    code: None,
                    http_status: Some(http_status),
                    message: "the Media Content Service answered without a media SID".into(),
                    retry_after: None,
                    auth: false,
                },
                took: started.elapsed(),
                generation,
            })),
            answer => Err(Upload::Twilio(Sent {
                answer,
                took: started.elapsed(),
                generation,
            })),
        }
    }

    /// A media item from Si's store (its signed URL): its content type and
    /// bytes, at most [`MAX_CONVERSATION_MEDIA_BYTES`].
    async fn fetch_stored(&self, url: &str) -> Result<(String, Vec<u8>), Answer> {
        let failed = |http_status: Option<u16>, message: String| Answer::Retry {
            code: None,
            http_status,
            message,
            retry_after: None,
            auth: false,
        };
        let mut response = self.http.get(url).send().await.map_err(|e| {
            failed(
                None,
                format!("fetching the media from Si's store: {}", error_kind(&e)),
            )
        })?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let message = format!("Si's store answered HTTP {status} for the media item");
            // Gone or refused (an expired signature is signed anew at the
            // next attempt, so 403 is not the signature's age): final.
            return Err(if matches!(status, 403 | 404 | 410) {
                Answer::Permanent {
                    code: None,
                    http_status: status,
                    message,
                }
            } else {
                failed(Some(status), message)
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            failed(
                Some(status),
                format!("reading the media from Si's store: {}", error_kind(&e)),
            )
        })? {
            if body.len() + chunk.len() > MAX_CONVERSATION_MEDIA_BYTES {
                return Err(Answer::Permanent {
                    code: None,
                    http_status: status,
                    message: format!("the media item is over {MAX_CONVERSATION_MEDIA_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((content_type, body))
    }

    /// An authenticated GET of `url` (the health check): the HTTP status, or
    /// what kept the request from an answer; and the credentials generation.
    pub async fn get_status(&self, url: &str) -> (Result<u16, &'static str>, u64) {
        let (builder, generation) = self.authenticated(self.http.get(url));
        let result = builder.send().await;
        let status = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the connection goes back to the pool.
                match response.bytes().await {
                    Ok(_) => Ok(status),
                    Err(error) => Err(error_kind(&error)),
                }
            }
            Err(error) => Err(error_kind(&error)),
        };
        (status, generation)
    }
}

/// What Twilio's answer to a request means; every failure is an [`Answer`]
/// (network errors are retriable). A success whose body cannot be read is
/// done, its SID lost: another attempt would create the message (or call)
/// twice.
async fn answer_of(sent: Result<reqwest::Response, reqwest::Error>) -> Answer {
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            return Answer::Retry {
                code: None,
                http_status: None,
                message: format!("request to Twilio failed: {}", error_kind(&error)),
                retry_after: None,
                auth: false,
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    match response.bytes().await {
        Ok(body) => classify(status, &body, retry_after),
        Err(_) if (200..300).contains(&status) => Answer::Accepted {
            sid: None,
            segments: None,
            http_status: status,
        },
        Err(error) => Answer::Retry {
            code: None,
            http_status: Some(status),
            message: format!("reading Twilio's answer: {}", error_kind(&error)),
            retry_after,
            auth: false,
        },
    }
}

/// A description of a reqwest error without the URL (which holds the account SID).
fn error_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect error"
    } else if error.is_body() || error.is_decode() {
        "body error"
    } else if error.is_request() {
        "request error"
    } else {
        "error"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use si_schemas::records::CallRequest;

    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            api_base: "https://api.twilio.com".into(),
            conversations_base: "https://conversations.twilio.com".into(),
            account_sid: "AC123".into(),
            status_callback: Some("https://si.example.com/twilio/messaging/status".into()),
            media: None,
            mcs_media: None,
        }
    }

    /// [`endpoints`] signing `si-media:` references with `secret`.
    fn signed_endpoints(secret: &str) -> Endpoints {
        use si_runtime::media_url::{Signer, UrlKey};
        Endpoints {
            media: Some(Signer::new(
                "https://si.example.com",
                UrlKey::new(secret).unwrap(),
                Duration::from_secs(600),
            )),
            ..endpoints()
        }
    }

    pub(crate) fn op(kind: OperationKind) -> OutboundOperation {
        OutboundOperation {
            operation_id: "op-1".into(),
            conversation_id: "CH0123".into(),
            kind,
            channel: Channel::Sms,
            sender_key: "sms:+14155550199".into(),
            to: Some("+14155550100".into()),
            from: Some("+14155550199".into()),
            messaging_service_sid: None,
            body: Some("hello".into()),
            media_urls: vec![],
            content_sid: None,
            content_variables_json: None,
            response_id: None,
            part_index: 0,
            part_count: 1,
            segments: Some(1),
            encoding: None,
            template_reason: None,
            call: None,
            params: BTreeMap::new(),
            created_at: 0,
            not_after: None,
            traceparent: None,
        }
    }

    fn pairs(form: &[(String, String)]) -> Vec<(&str, &str)> {
        form.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    #[test]
    fn a_message_with_not_after_may_not_wait_at_twilio_past_it() {
        let validity = |kind, not_after: Option<i64>, params: &[(&str, &str)], now| {
            let mut o = op(kind);
            o.not_after = not_after;
            o.params = params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut r = TwilioRequest {
                url: String::new(),
                form: Vec::new(),
            };
            bound_validity(&mut r, &o, now);
            r.form
                .iter()
                .find(|(n, _)| n == "ValidityPeriod")
                .map(|(_, v)| v.clone())
        };
        let send = OperationKind::SendMessage;
        assert_eq!(
            validity(send, Some(61_500), &[], 1_000).as_deref(),
            Some("61")
        );
        assert_eq!(validity(send, Some(500), &[], 1_000).as_deref(), Some("1"));
        let far = 1_000 + 100_000 * 1000;
        assert_eq!(
            validity(send, Some(far), &[], 1_000).as_deref(),
            Some("36000")
        );
        assert_eq!(validity(send, None, &[], 1_000), None);
        assert_eq!(
            validity(send, Some(61_500), &[("ValidityPeriod", "30")], 1_000),
            None,
            "the operation's own wins (it is sent from its params)"
        );
        assert_eq!(
            validity(OperationKind::CreateCall, Some(61_500), &[], 1_000),
            None
        );
    }

    #[test]
    fn a_hang_up_of_a_call_already_over_is_done() {
        let refused = |code, http_status| Answer::Permanent {
            code,
            http_status,
            message: "no".into(),
        };
        for (code, status) in [(Some(21220), 400), (Some(20404), 404), (None, 404)] {
            assert!(
                matches!(
                    already_done(OperationKind::EndCall, refused(code, status)),
                    Answer::Accepted { sid: None, .. }
                ),
                "{code:?} {status}"
            );
            // Only a hang-up: a message or a call that was refused was not sent.
            for kind in [OperationKind::SendMessage, OperationKind::CreateCall] {
                assert!(matches!(
                    already_done(kind, refused(code, status)),
                    Answer::Permanent { .. }
                ));
            }
        }
        assert!(matches!(
            already_done(OperationKind::EndCall, refused(Some(20003), 401)),
            Answer::Permanent { .. }
        ));
    }

    /// A client of a one-request server that answers `response` (raw HTTP)
    /// and closes the connection.
    async fn answered(response: &'static str) -> Answer {
        use clap::Parser;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            twilio: TwilioArgs,
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/2010-04-01/Accounts/AC1/Messages.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut request).await;
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        let args = Cli::parse_from(["egress", "--account-sid", "AC1"]).twilio;
        let credentials = crate::credentials::Credentials {
            user: "AC1".into(),
            password: "token".into(),
            kind: crate::credentials::Kind::AuthToken,
            other_token: None,
        };
        let store = CredentialStore::load(crate::credentials::Source {
            account_sid: "AC1".into(),
            dir: None,
            env: Ok(credentials),
        })
        .await
        .unwrap();
        let client = TwilioClient::new(&args, Arc::new(store)).unwrap();
        let request = TwilioRequest {
            url,
            form: vec![("Body".into(), "hi".into())],
        };
        client.send(&request, "op-1", None).await.answer
    }

    #[tokio::test]
    async fn a_created_resource_whose_answer_breaks_off_is_not_created_again() {
        // Twilio said 201 and the body broke off: the message exists, so
        // another attempt would send it twice.
        let answer =
            answered("HTTP/1.1 201 Created\r\nContent-Length: 500\r\n\r\n{\"sid\": \"SM").await;
        assert!(
            matches!(
                answer,
                Answer::Accepted {
                    sid: None,
                    http_status: 201,
                    ..
                }
            ),
            "{answer:?}"
        );
        // A 503 that breaks off is still worth another attempt.
        let answer =
            answered("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 500\r\n\r\n{").await;
        assert!(matches!(answer, Answer::Retry { .. }), "{answer:?}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let answer = answered(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(
            matches!(
                answer,
                Answer::Permanent {
                    http_status: 302,
                    ..
                }
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn the_status_callback_carries_the_trace_of_the_request() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r =
            build_traced_request(&endpoints(), &op(OperationKind::SendMessage), Some(tp)).unwrap();
        let callback = r
            .form
            .iter()
            .find(|(n, _)| n == "StatusCallback")
            .map(|(_, v)| v.as_str())
            .unwrap();
        assert_eq!(
            callback,
            format!(
                "https://si.example.com/twilio/messaging/status?conversation=CH0123&operation=op-1&traceparent={tp}"
            )
        );
    }

    #[test]
    fn call_progress_callbacks_carry_the_trace_of_the_request() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut o = op(OperationKind::CreateCall);
        o.call = Some(CallRequest {
            twiml_url: "https://si/twilio/voice/answer?c=CH1".into(),
            status_callback_url: Some("https://si/twilio/voice/status?conversation=CH1".into()),
            record: false,
            timeout_seconds: None,
            machine_detection: None,
        });
        let param = |r: &TwilioRequest, name: &str| {
            r.form
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let traced = build_traced_request(&endpoints(), &o, Some(tp)).unwrap();
        assert_eq!(
            param(&traced, "StatusCallback").as_deref(),
            Some(
                format!("https://si/twilio/voice/status?conversation=CH1&traceparent={tp}")
                    .as_str()
            )
        );
        // The TwiML webhook too: the call's answer continues the trace.
        assert_eq!(
            param(&traced, "Url").as_deref(),
            Some(format!("https://si/twilio/voice/answer?c=CH1&traceparent={tp}").as_str())
        );
        let plain = build_request(&endpoints(), &o).unwrap();
        assert_eq!(
            param(&plain, "StatusCallback").as_deref(),
            Some("https://si/twilio/voice/status?conversation=CH1")
        );
        assert_eq!(
            param(&plain, "Url").as_deref(),
            Some("https://si/twilio/voice/answer?c=CH1")
        );
    }

    #[test]
    fn conversations_media_is_one_item_of_si_s_store_with_its_upload_configured() {
        let secret = "s".repeat(32);
        let mut o = op(OperationKind::SendConversationMessage);
        o.media_urls = vec!["si-media:out/CH1/chart.png".into()];
        let refused = |endpoints: &Endpoints, o: &OutboundOperation| {
            build_request(endpoints, o).unwrap_err().0
        };
        assert!(refused(&endpoints(), &o).contains("MEDIA_URL_SECRET"));
        let signed = signed_endpoints(&secret);
        assert!(refused(&signed, &o).contains("TWILIO_CHAT_SERVICE_SID"));
        let ready = Endpoints {
            mcs_media: Some("https://mcs.example/v1/Services/IS1/Media".into()),
            ..signed
        };
        assert_eq!(
            conversation_media(&ready, &o).unwrap(),
            Some("out/CH1/chart.png")
        );
        // Checked before the upload; sent with the MediaSid after it.
        let r = build_request(&ready, &o).unwrap();
        assert!(
            !r.form
                .iter()
                .any(|(n, _)| n == "MediaUrl" || n == "MediaSid")
        );
        let r = build_request_with_media(&ready, &o, None, Some("ME1")).unwrap();
        assert!(r.form.contains(&("MediaSid".into(), "ME1".into())));
        let mut two = o.clone();
        two.media_urls.push("si-media:out/CH1/other.png".into());
        assert!(refused(&ready, &two).contains("one media item"));
        let mut public = o.clone();
        public.media_urls = vec!["https://cdn.example.com/a.png".into()];
        assert!(refused(&ready, &public).contains("si-media:"));
        // A message of media alone is a message.
        let mut bare = o;
        bare.body = None;
        assert!(build_request(&ready, &bare).is_ok());
    }

    #[test]
    fn media_in_sis_store_becomes_a_signed_url_and_public_media_passes() {
        use si_runtime::media_url::{self, UrlKey};
        let secret = "k".repeat(32);
        let mut o = op(OperationKind::SendMessage);
        o.media_urls = vec![
            "si-media:out/CH1/chart.png".into(),
            "https://cdn.example.com/a.png".into(),
        ];
        // Not configured: a clear error, nothing sent.
        let err = build_request(&endpoints(), &o).unwrap_err();
        assert!(err.0.contains("MEDIA_URL_SECRET"), "{err}");
        let signed = signed_endpoints(&secret);
        let r = build_request(&signed, &o).unwrap();
        let urls: Vec<&str> = r
            .form
            .iter()
            .filter(|(n, _)| n == "MediaUrl")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[1], "https://cdn.example.com/a.png");
        let url = reqwest::Url::parse(urls[0]).unwrap();
        assert_eq!(url.path(), "/media/out/CH1/chart.png");
        let q = |name: &str| {
            url.query_pairs()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.into_owned())
        };
        let keys = [UrlKey::new(&secret).unwrap()];
        let now = std::time::SystemTime::now();
        let check = |at| {
            media_url::verify(
                &keys,
                "out/CH1/chart.png",
                q("expires").as_deref(),
                q("signature").as_deref(),
                at,
            )
        };
        assert_eq!(check(now), Ok(()));
        assert_eq!(
            check(now + Duration::from_secs(601)),
            Err(media_url::Refused::Expired)
        );
    }

    #[test]
    fn programmable_messaging_send() {
        let mut o = op(OperationKind::SendMessage);
        o.media_urls = vec!["https://m/1.png".into(), "https://m/2.png".into()];
        o.params.insert("ValidityPeriod".into(), "600".into());
        o.params.insert("si.purpose".into(), "consent".into());
        let r = build_request(&endpoints(), &o).unwrap();
        assert_eq!(
            r.url,
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
        );
        assert_eq!(
            pairs(&r.form),
            vec![
                ("To", "+14155550100"),
                ("From", "+14155550199"),
                ("Body", "hello"),
                ("MediaUrl", "https://m/1.png"),
                ("MediaUrl", "https://m/2.png"),
                (
                    "StatusCallback",
                    "https://si.example.com/twilio/messaging/status?conversation=CH0123&operation=op-1"
                ),
                ("ValidityPeriod", "600"),
            ]
        );
    }

    #[test]
    fn whatsapp_template_through_a_messaging_service() {
        let mut o = op(OperationKind::SendMessage);
        o.channel = Channel::Whatsapp;
        o.messaging_service_sid = Some("MG1".into());
        o.content_sid = Some("HX1".into());
        o.content_variables_json = Some(r#"{"1":"Ana"}"#.into());
        let r = build_request(&endpoints(), &o).unwrap();
        assert_eq!(
            &pairs(&r.form)[..4],
            &[
                ("To", "whatsapp:+14155550100"),
                ("MessagingServiceSid", "MG1"),
                ("ContentSid", "HX1"),
                ("ContentVariables", r#"{"1":"Ana"}"#),
            ]
        );
        assert!(
            !r.form.iter().any(|(n, _)| n == "Body"),
            "a template sends no Body"
        );
        o.content_variables_json = Some("[1]".into());
        assert!(build_request(&endpoints(), &o).is_err());
    }

    #[test]
    fn conversations_calls() {
        let r = build_request(&endpoints(), &op(OperationKind::SendConversationMessage)).unwrap();
        assert_eq!(
            r.url,
            "https://conversations.twilio.com/v1/Conversations/CH0123/Messages"
        );
        assert_eq!(pairs(&r.form), vec![("Body", "hello")]);

        let mut create = op(OperationKind::CreateConversation);
        create.messaging_service_sid = Some("MG1".into());
        create.params.insert("FriendlyName".into(), "Si".into());
        let r = build_request(&endpoints(), &create).unwrap();
        assert_eq!(r.url, "https://conversations.twilio.com/v1/Conversations");
        assert_eq!(
            pairs(&r.form),
            vec![("MessagingServiceSid", "MG1"), ("FriendlyName", "Si")]
        );

        let mut add = op(OperationKind::AddParticipant);
        add.channel = Channel::Whatsapp;
        let r = build_request(&endpoints(), &add).unwrap();
        assert_eq!(
            r.url,
            "https://conversations.twilio.com/v1/Conversations/CH0123/Participants"
        );
        assert_eq!(
            pairs(&r.form),
            vec![
                ("MessagingBinding.Address", "whatsapp:+14155550100"),
                ("MessagingBinding.ProxyAddress", "whatsapp:+14155550199"),
            ]
        );

        let r = build_request(&endpoints(), &op(OperationKind::CloseConversation)).unwrap();
        assert_eq!(
            r.url,
            "https://conversations.twilio.com/v1/Conversations/CH0123"
        );
        assert_eq!(pairs(&r.form), vec![("State", "closed")]);
    }

    #[test]
    fn calls() {
        let mut o = op(OperationKind::CreateCall);
        o.channel = Channel::Voice;
        o.call = Some(CallRequest {
            twiml_url: "https://si/twilio/voice/answer?c=CH1".into(),
            status_callback_url: Some("https://si/twilio/voice/status".into()),
            record: true,
            timeout_seconds: Some(20),
            machine_detection: Some("Enable".into()),
        });
        let r = build_request(&endpoints(), &o).unwrap();
        assert_eq!(
            r.url,
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls.json"
        );
        let f = pairs(&r.form);
        assert!(f.contains(&("Url", "https://si/twilio/voice/answer?c=CH1")));
        assert_eq!(
            f.iter()
                .filter(|(n, _)| *n == "StatusCallbackEvent")
                .count(),
            4
        );
        assert!(f.contains(&("Record", "true")));
        assert!(f.contains(&("Timeout", "20")));
        assert!(f.contains(&("MachineDetection", "Enable")));
        o.call = None;
        assert!(build_request(&endpoints(), &o).is_err());
    }

    #[test]
    fn ending_a_call_posts_completed_to_the_call() {
        let mut o = op(OperationKind::EndCall);
        o.channel = Channel::Voice;
        o.body = None;
        o.params.insert(
            CALL_SID_PARAM.into(),
            "CA0123456789abcdef0123456789abcdef".into(),
        );
        let r = build_request(&endpoints(), &o).unwrap();
        assert_eq!(
            r.url,
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls/CA0123456789abcdef0123456789abcdef.json"
        );
        assert_eq!(pairs(&r.form), vec![("Status", "completed")]);
        o.params.insert(CALL_SID_PARAM.into(), "../Messages".into());
        assert!(build_request(&endpoints(), &o).is_err(), "not a SID");
        o.params.clear();
        assert!(build_request(&endpoints(), &o).is_err(), "no call named");
    }

    #[test]
    fn invalid_operations_are_refused() {
        let mut o = op(OperationKind::SendMessage);
        o.to = None;
        assert!(build_request(&endpoints(), &o).is_err());
        let mut o = op(OperationKind::SendMessage);
        o.body = None;
        assert!(build_request(&endpoints(), &o).is_err());
        let mut o = op(OperationKind::SendMessage);
        o.body = Some("x".repeat(1601));
        assert!(
            build_request(&endpoints(), &o)
                .unwrap_err()
                .0
                .contains("21617")
        );
        let mut o = op(OperationKind::SendConversationMessage);
        o.conversation_id = "../Accounts".into();
        assert!(build_request(&endpoints(), &o).is_err());
        let mut o = op(OperationKind::SendConversationMessage);
        o.media_urls = vec!["https://m/1.png".into()];
        assert!(build_request(&endpoints(), &o).is_err());
        assert!(build_request(&endpoints(), &op(OperationKind::Unknown)).is_err());
    }

    #[test]
    fn answers_are_classified() {
        let ok = classify(201, br#"{"sid":"SM1","num_segments":"2"}"#, None);
        assert_eq!(
            ok,
            Answer::Accepted {
                sid: Some("SM1".into()),
                segments: Some(2),
                http_status: 201
            }
        );
        let invalid = classify(
            400,
            br#"{"code":21211,"message":"Invalid 'To' Phone Number: +14155550100","status":400}"#,
            None,
        );
        match invalid {
            Answer::Permanent { code, message, .. } => {
                assert_eq!(code, Some(21211));
                assert!(!message.contains("4155550100"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(429, br#"{"code":20429}"#, Some(Duration::from_secs(2))),
            Answer::Retry {
                code: Some(20429),
                retry_after: Some(_),
                auth: false,
                ..
            }
        ));
        assert!(matches!(
            classify(503, b"oops", None),
            Answer::Retry { code: None, .. }
        ));
        assert!(matches!(
            classify(400, br#"{"code":30001}"#, None),
            Answer::Retry { .. }
        ));
        assert!(matches!(
            classify(401, br#"{"code":20003}"#, None),
            Answer::Retry { auth: true, .. }
        ));
        for code in [21610, 21614, 21617, 21408, 30004] {
            let body = format!(r#"{{"code":{code}}}"#);
            assert!(
                matches!(
                    classify(400, body.as_bytes(), None),
                    Answer::Permanent { .. }
                ),
                "{code}"
            );
        }
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
