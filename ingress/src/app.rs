//! The HTTP side: one route per webhook family, each request verified, stored
//! and only then answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Bytes, HttpBody};
use axum::http::header::AsHeaderName;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus::IntGauge;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use si_catalog::Catalog;
use si_runtime::polled::{Acks, PolledProducer};
use si_runtime::trace;
use si_schemas::Codec;
use si_schemas::records::WebhookRoute;
use si_twilio_signature::{self as signature, Algorithm, Payload, SignatureError};
use tokio::sync::Semaphore;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::envelope::{self, Body, KEPT_HEADERS, SIGNATURE_SETTINGS, query_param};
use crate::metrics::Metrics;
use crate::secrets::{SecretStore, WebhookSecrets};
use crate::twiml::{self, VoiceSettings};

/// The signature Twilio sends.
const TWILIO_SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");

/// W3C trace context ([`trace::TRACEPARENT`]).
const TRACEPARENT: HeaderName = HeaderName::from_static(trace::TRACEPARENT);

/// Every webhook endpoint: path and route kind.
pub const ROUTES: &[(&str, WebhookRoute)] = &[
    (
        "/twilio/conversations/events",
        WebhookRoute::ConversationsPostEvent,
    ),
    (
        "/twilio/conversations/pre-event",
        WebhookRoute::ConversationsPreEvent,
    ),
    ("/twilio/messaging/inbound", WebhookRoute::MessagingInbound),
    ("/twilio/messaging/status", WebhookRoute::MessagingStatus),
    ("/twilio/voice/status", WebhookRoute::VoiceStatus),
    ("/twilio/voice/answer", WebhookRoute::VoiceAnswer),
    ("/twilio/voice/gather", WebhookRoute::VoiceGather),
    ("/twilio/voice/recording", WebhookRoute::RecordingStatus),
    ("/twilio/voice/transcription", WebhookRoute::Transcription),
];

/// A metric label for a route.
#[must_use]
pub fn route_label(route: WebhookRoute) -> &'static str {
    match route {
        WebhookRoute::ConversationsPostEvent => "conversations_post_event",
        WebhookRoute::ConversationsPreEvent => "conversations_pre_event",
        WebhookRoute::MessagingInbound => "messaging_inbound",
        WebhookRoute::MessagingStatus => "messaging_status",
        WebhookRoute::VoiceStatus => "voice_status",
        WebhookRoute::VoiceAnswer => "voice_answer",
        WebhookRoute::VoiceGather => "voice_gather",
        WebhookRoute::RecordingStatus => "recording_status",
        WebhookRoute::Transcription => "transcription",
        WebhookRoute::Unknown => "unknown",
    }
}

/// What the handlers share.
pub struct AppState {
    /// Durable producer (idempotent, acks=all).
    pub producer: Arc<PolledProducer<Acks>>,
    /// Encodes the envelope.
    pub codec: Codec,
    /// `twilio.webhooks.v1` with the environment's prefix.
    pub topic: String,
    /// The public base URL signatures are checked against.
    pub public_base_url: String,
    /// The Auth Tokens and webhook shared-key secrets in force.
    pub secrets: Arc<SecretStore>,
    /// Deadline for Kafka's acknowledgement.
    pub produce_timeout: Duration,
    /// Deadline for storing a pre-event webhook.
    pub pre_event_timeout: Duration,
    /// Deadline for a whole request.
    pub request_timeout: Duration,
    /// Voice TwiML settings.
    pub voice: VoiceSettings,
    /// Locale when our URLs carry none.
    pub default_locale: String,
    /// Sheds load past the in-flight limit.
    pub in_flight: Arc<Semaphore>,
    /// Metrics.
    pub metrics: Metrics,
}

impl AppState {
    /// A state whose Kafka and schema registry are never reached (nothing
    /// listens on port 9): a request refused before storing touches neither,
    /// and one that gets as far as storing fails there (its produce deadline
    /// a few ms). For tests and fuzzing of the front door.
    ///
    /// # Panics
    /// When librdkafka cannot create a producer.
    #[doc(hidden)]
    #[must_use]
    pub fn offline(public_base_url: &str, auth_token: &str) -> Self {
        let producer = si_runtime::kafka::create_producer(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .set("log_level", "0"),
        )
        .expect("a producer needs no broker to be created");
        let registry = si_schemas::registry::Registry::new(
            si_schemas::registry::RegistryConfig::new("http://127.0.0.1:9"),
        )
        .expect("a registry client needs no registry to be created");
        Self {
            producer: Arc::new(producer),
            codec: Codec::new(registry),
            topic: "offline.twilio.webhooks.v1".to_owned(),
            public_base_url: public_base_url.to_owned(),
            secrets: Arc::new(SecretStore::fixed(WebhookSecrets {
                auth_tokens: vec![auth_token.to_owned()],
                shared_secrets: Vec::new(),
            })),
            produce_timeout: Duration::from_millis(5),
            pre_event_timeout: Duration::from_millis(5),
            request_timeout: Duration::from_secs(5),
            voice: VoiceSettings {
                public_base_url: public_base_url.to_owned(),
                stream_url: None,
                gather_timeout_secs: 5,
            },
            default_locale: "en-US".to_owned(),
            in_flight: Arc::new(Semaphore::new(64)),
            metrics: Metrics::register(&prometheus::Registry::new())
                .expect("a new registry has no metric registered twice"),
        }
    }
}

/// Why a request is not accepted. The answer never reveals internals.
#[derive(Debug)]
pub enum Reject {
    /// Body over the limit.
    TooLarge,
    /// Body cannot be read as its content type says.
    Malformed(String),
    /// Neither a form nor JSON.
    UnsupportedMediaType,
    /// Signature refused.
    Forbidden(SignatureError),
    /// Kafka did not acknowledge in time: Twilio should retry.
    Unavailable,
    /// Too many requests in flight.
    Overloaded,
    /// The whole request took too long.
    Timeout,
}

impl Reject {
    fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
        }
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let retry_later = |message: &'static str| {
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        };
        match self {
            Self::TooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
            }
            Self::Malformed(reason) => (
                StatusCode::BAD_REQUEST,
                format!("malformed request: {reason}\n"),
            )
                .into_response(),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected application/x-www-form-urlencoded or application/json\n",
            )
                .into_response(),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "invalid signature\n").into_response(),
            Self::Unavailable => retry_later("webhook not stored, retry later\n"),
            Self::Overloaded => retry_later("overloaded, retry later\n"),
            Self::Timeout => retry_later("timed out, retry later\n"),
        }
    }
}

/// Every webhook endpoint as one service: a request is admitted (its
/// declared body size, the in-flight limit, the request deadline), routed by
/// its path among [`ROUTES`], then verified, stored and answered.
///
/// Not an axum `Router`: with nine POST routes and nothing else, its
/// routing table, the boxed middleware and the extractors cost more per
/// webhook than the work they route to is worth (each clones the service
/// stack, the `Uri` or the `HeaderMap`). The request is taken whole and its
/// body read within `max_body_bytes` here.
#[derive(Clone)]
pub struct Webhooks {
    state: Arc<AppState>,
    max_body_bytes: usize,
}

impl Webhooks {
    /// The webhook endpoints on `state`, bodies limited to `max_body_bytes`.
    #[must_use]
    pub fn new(state: Arc<AppState>, max_body_bytes: usize) -> Self {
        Self {
            state,
            max_body_bytes,
        }
    }

    /// Answers one request.
    ///
    /// Before a byte of the body is read: 413 at once when the declared
    /// `Content-Length` is above the body limit (the limit alone would wait
    /// for a body the client may never send), 503 past the in-flight limit;
    /// then the request deadline bounds the rest.
    pub async fn answer<B>(&self, request: Request<B>) -> Response
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let state = &*self.state;
        let route = ROUTES
            .iter()
            .find(|(path, _)| *path == request.uri().path())
            .map(|(_, route)| *route);
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > self.max_body_bytes)) {
            state.metrics.refused(
                route.map_or("none", route_label),
                Reject::TooLarge.outcome(),
            );
            return Reject::TooLarge.into_response();
        }
        let Ok(_permit) = state.in_flight.try_acquire() else {
            state.metrics.refused("any", Reject::Overloaded.outcome());
            return Reject::Overloaded.into_response();
        };
        let _counted = Counted::new(&state.metrics.in_flight);
        let answered = tokio::time::timeout(state.request_timeout, async {
            match route {
                Some(route) if request.method() == Method::POST => {
                    handle(state, route, request, self.max_body_bytes).await
                }
                Some(route) => {
                    state
                        .metrics
                        .refused(route_label(route), "method_not_allowed");
                    let mut response =
                        (StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed\n").into_response();
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                    response
                }
                None => {
                    state.metrics.refused("none", "not_found");
                    (StatusCode::NOT_FOUND, "no webhook endpoint here\n").into_response()
                }
            }
        })
        .await;
        answered.unwrap_or_else(|_| {
            state.metrics.refused("any", Reject::Timeout.outcome());
            Reject::Timeout.into_response()
        })
    }
}

/// Counts a request in `si_ingress_in_flight` for as long as it lives,
/// also when its future is dropped unfinished (the client went away, or the
/// drain ended), as its in-flight permit is given back then.
struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle<B>(
    state: &AppState,
    route: WebhookRoute,
    request: Request<B>,
    max_body_bytes: usize,
) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let webhook = webhook_trace(route, &parts.uri, &parts.headers);
    let span = webhook.span.clone();
    async {
        let body = read_body(body, max_body_bytes).await;
        respond(state, route, &parts.uri, &parts.headers, body, &webhook).await
    }
    .instrument(span)
    .await
}

/// The body, whole, when it is within `max_body_bytes` (counted as it
/// arrives: a `Content-Length` can understate it, chunks declare none).
async fn read_body<B>(body: B, max_body_bytes: usize) -> Result<Bytes, Reject>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, max_body_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Reject::TooLarge),
        Err(error) => Err(Reject::Malformed(format!("cannot read the body: {error}"))),
    }
}

/// One webhook's span, and the traceparent its record carries when that is
/// known from the start.
struct WebhookTrace {
    /// With exported spans, the webhook's server span; without, none: a
    /// span nobody exports would only cost the JSON log layer (it formats
    /// every span's fields when the span opens, 3–5 µs a webhook), and the
    /// few lines written for a webhook name its route and trace themselves.
    span: Span,
    /// Without exported spans: the request's valid `traceparent`, else a new
    /// trace. `None` when spans are exported: the record then carries the
    /// produce span's context.
    traceparent: Option<String>,
}

impl WebhookTrace {
    /// The trace id the webhook's log lines name, when known without the
    /// span (spans not exported; exported, the span names it).
    fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(trace::trace_id)
    }
}

/// The span of one webhook, when spans are exported: a new trace, or a
/// child of the context the request names: its `traceparent` header, else (a
/// status callback of a message egress sent) the `traceparent` egress put
/// into the callback URL, so the delivery report joins the trace of the send
/// it reports on.
fn webhook_trace(route: WebhookRoute, uri: &Uri, headers: &HeaderMap) -> WebhookTrace {
    if !trace::exporting() {
        let traceparent = received_traceparent(headers).map_or_else(trace::fresh, str::to_owned);
        return WebhookTrace {
            span: Span::none(),
            traceparent: Some(traceparent),
        };
    }
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = uri.path(),
        si.route = route_label(route),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        trace_id = Empty,
    );
    let from_header = received_traceparent(headers);
    let from_url = query_param(uri.query(), trace::TRACEPARENT);
    trace::continue_from(&span, from_header.or(from_url.as_deref()));
    if let (Some(_), Some(sent)) = (from_header, &from_url) {
        trace::link(&span, sent);
    }
    WebhookTrace {
        span,
        traceparent: None,
    }
}

fn received_traceparent(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, TRACEPARENT).filter(|t| trace::parse(t).is_some())
}

async fn respond(
    state: &AppState,
    route: WebhookRoute,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, Reject>,
    webhook: &WebhookTrace,
) -> Response {
    let span = &webhook.span;
    let started = Instant::now();
    let result = accept(state, route, uri, headers, body, webhook).await;
    match result {
        Ok(response) => {
            state.metrics.accepted(route);
            record_status(span, &response);
            tracing::debug!(
                route = route_label(route),
                trace_id = webhook.trace_id(),
                elapsed_ms = started.elapsed().as_millis(),
                "webhook stored"
            );
            response
        }
        Err(reject) => {
            state.metrics.refused(route_label(route), reject.outcome());
            match &reject {
                Reject::Forbidden(reason) => {
                    state
                        .metrics
                        .signature_failures
                        .with_label_values(&[reason.label()])
                        .inc();
                    tracing::warn!(
                        route = route_label(route),
                        trace_id = webhook.trace_id(),
                        reason = reason.label(),
                        "signature refused"
                    );
                }
                Reject::Unavailable => {
                    tracing::warn!(
                        route = route_label(route),
                        trace_id = webhook.trace_id(),
                        "webhook not stored; answered 503"
                    );
                }
                other => tracing::info!(
                    route = route_label(route),
                    trace_id = webhook.trace_id(),
                    outcome = other.outcome(),
                    "request refused"
                ),
            }
            let response = reject.into_response();
            record_status(span, &response);
            response
        }
    }
}

/// The response's status on the webhook's span, for its trace (log lines
/// say the outcome themselves).
fn record_status(span: &Span, response: &Response) {
    if trace::exporting() {
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// A header's value, when it is visible ASCII. Pass a [`HeaderName`]
/// (`header::*`, or a constant made with `from_static`): a `&str` would be
/// parsed into one at every lookup.
fn header_str(headers: &HeaderMap, name: impl AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes `application/x-www-form-urlencoded` strictly: invalid percent-encoding
/// or bytes that are not UTF-8 are malformed (never replaced).
///
/// # Errors
/// Why the body is malformed.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    use std::borrow::Cow;
    // One allocation for most parts: the decoded bytes become the String.
    let decode = |part: &[u8]| -> Result<String, String> {
        let mut at = 0;
        while let Some(offset) = part[at..].iter().position(|&b| b == b'%') {
            let escape_at = at + offset;
            let digits = part
                .get(escape_at + 1..escape_at + 3)
                .ok_or_else(|| "truncated percent-encoding".to_owned())?;
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!("bad percent-encoding at byte {escape_at}"));
            }
            at = escape_at + 3;
        }
        let spaced: Cow<[u8]> = if part.contains(&b'+') {
            Cow::Owned(
                part.iter()
                    .map(|&b| if b == b'+' { b' ' } else { b })
                    .collect(),
            )
        } else {
            Cow::Borrowed(part)
        };
        let decoded: Cow<[u8]> = if at > 0 {
            // An escape was found: `at` moved past it.
            Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
        } else {
            spaced
        };
        String::from_utf8(decoded.into_owned()).map_err(|_| "not UTF-8".to_owned())
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Parses a request body by its `Content-Type`: a strict form, or a JSON object
/// (kept raw, with its top-level scalar fields for routing). The body limit is
/// that of [`Webhooks`]; this sees bodies that are within it.
///
/// # Errors
/// [`Reject::Malformed`] or [`Reject::UnsupportedMediaType`].
pub fn parse_body(content_type: &str, bytes: &[u8]) -> Result<Body, Reject> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => {
            parse_form(bytes).map(Body::Form).map_err(Reject::Malformed)
        }
        "application/json" => {
            let value: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| Reject::Malformed(format!("invalid JSON: {e}")))?;
            let object = value
                .as_object()
                .ok_or_else(|| Reject::Malformed("JSON body is not an object".to_owned()))?;
            let fields = object
                .iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k.clone(), s.clone())),
                    serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
                    serde_json::Value::Bool(b) => Some((k.clone(), b.to_string())),
                    _ => None,
                })
                .collect();
            Ok(Body::Json {
                raw: bytes.to_vec(),
                fields,
            })
        }
        "" => Err(Reject::Malformed("missing Content-Type".to_owned())),
        _ => Err(Reject::UnsupportedMediaType),
    }
}

async fn accept(
    state: &AppState,
    route: WebhookRoute,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, Reject>,
    webhook: &WebhookTrace,
) -> Result<Response, Reject> {
    let bytes = body?;
    let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or_default();
    let parsed = parse_body(content_type, &bytes)?;

    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let public_url = format!("{}{path_and_query}", state.public_base_url);
    let settings = header_str(headers, SIGNATURE_SETTINGS);
    let algorithm = Algorithm::from_settings_header(settings);
    let in_force = state.secrets.current();
    let secrets = if signature::signed_with_shared_key(settings) {
        &in_force.shared_secrets
    } else {
        &in_force.auth_tokens
    };
    let payload = match &parsed {
        Body::Form(params) => Payload::Form(params),
        Body::Json { raw, .. } => Payload::Raw(raw),
    };
    trace::exported(|| tracing::info_span!("verify signature"))
        .in_scope(|| {
            signature::verify(
                &public_url,
                payload,
                header_str(headers, TWILIO_SIGNATURE),
                algorithm,
                secrets,
            )
        })
        .map_err(Reject::Forbidden)?;

    let query = uri.query();
    let kept: BTreeMap<String, String> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            header_str(headers, name).map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let produce = trace::exported(|| {
        tracing::info_span!(
            "produce",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %state.topic,
        )
    });
    // The record carries the produce span's context (with traces exported),
    // else the request's own traceparent, else a new trace.
    let traceparent = webhook.traceparent.clone().unwrap_or_else(|| {
        let traceparent = trace::traceparent_of(&produce, received_traceparent(headers))
            .unwrap_or_else(trace::fresh);
        trace::record_trace_id(&webhook.span, Some(&traceparent));
        traceparent
    });
    // The answer is made while the body is ours (the envelope takes it);
    // Twilio gets it once the webhook is stored. Its callbacks continue this
    // webhook's trace.
    let callbacks = trace::traceparent_of(&webhook.span, None);
    let answer = answer(state, route, query, &parsed, callbacks.as_deref());
    let received_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let (key, record) = envelope::envelope(envelope::Request {
        route,
        body: parsed,
        query,
        content_type,
        headers: kept,
        traceparent: Some(traceparent.clone()),
        received_at,
    });

    let deadline = if route == WebhookRoute::ConversationsPreEvent {
        state.pre_event_timeout
    } else {
        state.produce_timeout
    };
    store(state, &key, &record, &traceparent, deadline)
        .instrument(produce)
        .await?;
    Ok(answer)
}

/// Writes the envelope and waits for Kafka's acknowledgement (acks=all), within `deadline`.
async fn store(
    state: &AppState,
    key: &str,
    record: &si_schemas::records::TwilioWebhook,
    traceparent: &str,
    deadline: Duration,
) -> Result<(), Reject> {
    let started = Instant::now();
    let stored = tokio::time::timeout(deadline, async {
        let payload = state
            .codec
            .encode(&state.topic, record)
            .await
            .map_err(|error| {
                tracing::error!(
                    %error,
                    trace_id = trace::trace_id(traceparent),
                    "cannot encode the webhook envelope"
                );
            })?;
        let headers = OwnedHeaders::new().insert(Header {
            key: trace::TRACEPARENT,
            value: Some(traceparent),
        });
        let kafka_record = FutureRecord::to(&state.topic)
            .key(key)
            .payload(&payload)
            .headers(headers);
        state
            .producer
            .send_acked(kafka_record, deadline)
            .await
            .map_err(|error| {
                tracing::warn!(
                    %error,
                    trace_id = trace::trace_id(traceparent),
                    "Kafka did not acknowledge the webhook"
                );
            })
    })
    .await;
    match stored {
        Ok(Ok(())) => {
            state
                .metrics
                .produce_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok(())
        }
        Ok(Err(())) => Err(Reject::Unavailable),
        Err(_) => {
            tracing::warn!(
                deadline_ms = deadline.as_millis(),
                trace_id = trace::trace_id(traceparent),
                "Kafka acknowledgement past the deadline"
            );
            Err(Reject::Unavailable)
        }
    }
}

fn twiml_response(xml: impl Into<axum::body::Body>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        xml.into(),
    )
        .into_response()
}

/// The locale of the user's country on a call (Twilio's `FromCountry`, else
/// `CallerCountry`; on a call we placed, `ToCountry`, else `CalledCountry`),
/// when the call's URL names none: an inbound call's number webhook carries
/// no locale, and a caller from Mexico hears the recording disclosure and the
/// prompt in Spanish, as normalize's phone-country step would pick for their
/// texts. `None` when Twilio gave no country or it has no listed locale.
fn caller_locale(body: &Body) -> Option<&'static str> {
    let outbound = body
        .get("Direction")
        .is_some_and(|d| d.starts_with("outbound"));
    let (country, fallback) = if outbound {
        ("ToCountry", "CalledCountry")
    } else {
        ("FromCountry", "CallerCountry")
    };
    [country, fallback]
        .into_iter()
        .filter_map(|name| body.get(name).filter(|c| !c.is_empty()))
        .find_map(si_catalog::locale_of_region)
}

/// The answer Twilio gets once the webhook is stored.
fn answer(
    state: &AppState,
    route: WebhookRoute,
    query: Option<&str>,
    body: &Body,
    traceparent: Option<&str>,
) -> Response {
    let voice = |reply: &dyn Fn(&Catalog, twiml::Carried<'_>, &str) -> String| {
        let conversation = query_param(query, "conversation");
        let locale = query_param(query, "locale")
            .or_else(|| caller_locale(body).map(str::to_owned))
            .unwrap_or_else(|| state.default_locale.clone());
        let carried = twiml::Carried {
            conversation: conversation.as_deref(),
            locale: &locale,
            traceparent,
        };
        twiml_response(reply(Catalog::builtin(), carried, &locale))
    };
    match route {
        // No TwiML reply: Si answers through the API.
        WebhookRoute::MessagingInbound => {
            twiml_response("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")
        }
        WebhookRoute::VoiceAnswer if twiml::answered_by_machine(body.get("AnsweredBy")) => {
            twiml_response(twiml::hang_up())
        }
        WebhookRoute::VoiceAnswer => {
            voice(&|catalog, carried, _| twiml::answer(&state.voice, catalog, carried))
        }
        WebhookRoute::VoiceGather => voice(&|catalog, carried, locale| {
            let choice = twiml::choice(
                catalog,
                locale,
                body.get("Digits"),
                body.get("SpeechResult"),
            );
            twiml::after_choice(&state.voice, catalog, carried, choice)
        }),
        // Conversations pre-event: an empty 200 allows the action unchanged.
        _ => StatusCode::OK.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use si_runtime::test_log::Lines;

    use super::*;

    async fn refused(traceparent: Option<&str>) -> serde_json::Value {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let mut request = Request::post("/twilio/messaging/inbound")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(TWILIO_SIGNATURE, "bm90IGEgc2lnbmF0dXJl");
        if let Some(traceparent) = traceparent {
            request = request.header(TRACEPARENT, traceparent);
        }
        let request = request
            .body(axum::body::Body::from("From=%2B14155550100&Body=hi"))
            .expect("request");
        let response = Webhooks::new(
            Arc::new(AppState::offline("https://si.example", "token")),
            64 * 1024,
        )
        .answer(request)
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let text = lines.text();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "signature refused")
            .unwrap_or_else(|| panic!("no refusal logged: {text}"))
    }

    #[tokio::test]
    async fn a_refused_webhook_is_logged_with_its_route_and_trace() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let line = refused(Some(traceparent)).await;
        assert_eq!(line["route"], "messaging_inbound");
        assert_eq!(line["reason"], "mismatch");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        // Without a traceparent the webhook starts a trace, and names it.
        let line = refused(None).await;
        let trace_id = line["trace_id"].as_str().expect("a trace id");
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            !line.to_string().contains("+14155550100"),
            "no address in the line: {line}"
        );
    }

    /// The answer to an inbound message signed under `algorithm` with
    /// `secret`, with `settings` as `X-Twilio-Webhooks-Signature-Settings`,
    /// by an ingress whose Auth Token is `token` and shared key `shared`.
    /// Offline: a request whose signature holds gets 503 (nothing stores
    /// it), a refused one 403.
    async fn signed_answer(
        settings: Option<&str>,
        algorithm: Algorithm,
        secret: &str,
    ) -> StatusCode {
        let base = "https://si.example";
        let path = "/twilio/messaging/inbound";
        let params =
            [("Body", "hi"), ("From", "+14155550100")].map(|(n, v)| (n.to_owned(), v.to_owned()));
        let signed = signature::compute(
            algorithm,
            secret,
            &signature::signing_string(&format!("{base}{path}"), &params),
        );
        let mut request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(TWILIO_SIGNATURE, signed);
        if let Some(settings) = settings {
            request = request.header(SIGNATURE_SETTINGS, settings);
        }
        let request = request
            .body(axum::body::Body::from("Body=hi&From=%2B14155550100"))
            .expect("request");
        let state = AppState {
            secrets: Arc::new(SecretStore::fixed(WebhookSecrets {
                auth_tokens: vec!["token".to_owned()],
                shared_secrets: vec!["shared".to_owned()],
            })),
            ..AppState::offline(base, "token")
        };
        Webhooks::new(Arc::new(state), 64 * 1024)
            .answer(request)
            .await
            .status()
    }

    #[tokio::test]
    async fn the_settings_header_means_the_shared_key_whatever_hmac_it_names() {
        use Algorithm::{HmacSha1, HmacSha256};
        const HELD: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
        const REFUSED: StatusCode = StatusCode::FORBIDDEN;
        let sha1 = Some("key=webhooks_sharedkey_1,algorithm=HMAC_SHA1");
        let sha256 = Some("key=webhooks_sharedkey_1,algorithm=HMAC_SHA256");
        let unnamed = Some("key=webhooks_sharedkey_1");
        let cases = [
            (None, HmacSha1, "token", HELD),
            (None, HmacSha1, "shared", REFUSED),
            (sha1, HmacSha1, "shared", HELD),
            (sha1, HmacSha1, "token", REFUSED),
            (unnamed, HmacSha1, "shared", HELD),
            (unnamed, HmacSha1, "token", REFUSED),
            (sha256, HmacSha256, "shared", HELD),
            (sha256, HmacSha256, "token", REFUSED),
            (sha256, HmacSha1, "shared", REFUSED),
            (
                Some("key=k,algorithm=HMAC_MD5"),
                HmacSha1,
                "shared",
                REFUSED,
            ),
        ];
        for (settings, algorithm, secret, expected) in cases {
            assert_eq!(
                signed_answer(settings, algorithm, secret).await,
                expected,
                "{settings:?} {algorithm:?} {secret}"
            );
        }
    }

    /// A form POST to `path` whose body arrives as `chunks`, without a
    /// Content-Length.
    fn streamed_form(
        path: &str,
        chunks: [Result<Bytes, std::io::Error>; 2],
    ) -> Request<axum::body::Body> {
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from_stream(futures::stream::iter(chunks)))
            .expect("request")
    }

    #[tokio::test]
    async fn only_a_post_to_a_webhook_path_is_handled() {
        let state = Arc::new(AppState::offline("https://si.example", "token"));
        let webhooks = Webhooks::new(Arc::clone(&state), 64 * 1024);
        let count = |route: &str, outcome: &str| {
            state
                .metrics
                .requests
                .with_label_values(&[route, outcome])
                .get()
        };
        let get = Request::get("/twilio/messaging/inbound")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = webhooks.answer(get).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        assert_eq!(count("messaging_inbound", "method_not_allowed"), 1);
        let nowhere = Request::post("/twilio/nowhere")
            .body(axum::body::Body::from("A=1"))
            .expect("request");
        assert_eq!(
            webhooks.answer(nowhere).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(count("none", "not_found"), 1);
        // A body over the limit without a Content-Length: counted as it
        // arrives, refused 413 before anything is verified.
        let oversized = streamed_form(
            "/twilio/messaging/status",
            [
                Ok(Bytes::from(vec![b'A'; 40 * 1024])),
                Ok(Bytes::from(vec![b'B'; 40 * 1024])),
            ],
        );
        assert_eq!(
            webhooks.answer(oversized).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(count("messaging_status", "too_large"), 1);
        // A body broken off midway (the client's connection failed): 400.
        let broken = streamed_form(
            "/twilio/messaging/inbound",
            [
                Ok(Bytes::from_static(b"From=%2B1415")),
                Err(std::io::Error::other("connection reset")),
            ],
        );
        assert_eq!(
            webhooks.answer(broken).await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(count("messaging_inbound", "malformed"), 1);
        assert_eq!(state.metrics.in_flight.get(), 0, "every slot given back");
    }

    #[tokio::test]
    async fn a_request_given_up_midway_is_no_longer_in_flight() {
        use futures::FutureExt as _;
        let state = Arc::new(AppState::offline("https://si.example", "token"));
        let webhooks = Webhooks::new(Arc::clone(&state), 64 * 1024);
        let permits = state.in_flight.available_permits();
        // A body that never arrives: the answer waits for it, and is
        // dropped there, as hyper drops it when the client goes away.
        let waiting = Request::post("/twilio/messaging/inbound")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::io::Error>,
            >()))
            .expect("request");
        assert!(webhooks.answer(waiting).now_or_never().is_none());
        assert_eq!(state.metrics.in_flight.get(), 0);
        assert_eq!(state.in_flight.available_permits(), permits);
    }

    #[test]
    fn forms_decode_strictly() {
        assert_eq!(
            parse_form(b"A=1&B=x+y%2Bz&C=&D").expect("valid"),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x y+z".to_owned()),
                ("C".to_owned(), String::new()),
                ("D".to_owned(), String::new())
            ]
        );
        assert_eq!(parse_form(b"Body=%E2%82%AC").expect("euro")[0].1, "€");
        assert!(parse_form(b"Body=%FF").is_err(), "not UTF-8");
        assert!(parse_form(b"Body=%G1").is_err(), "bad escape");
        assert!(parse_form(b"Body=abc%2").is_err(), "truncated escape");
        assert!(parse_form(b"Body=%").is_err(), "lone percent");
        assert_eq!(
            parse_form(b"Body=100%25").expect("escaped percent")[0].1,
            "100%"
        );
        // Each way a part is decoded: as it is, spaces only, escapes only, both.
        assert_eq!(parse_form(b"Body=a+b").expect("spaces")[0].1, "a b");
        assert_eq!(parse_form(b"Body=a%20b").expect("escape")[0].1, "a b");
        assert_eq!(parse_form(b"Body=a+%C3%A9").expect("both")[0].1, "a é");
        assert!(parse_form(b"Body=\xff").is_err(), "raw, not UTF-8");
        assert!(parse_form(b"Body=a+\xff").is_err(), "spaced, not UTF-8");
        assert!(parse_form(b"B\xffdy=a").is_err(), "a name, not UTF-8");
    }

    #[test]
    fn bodies_by_content_type() {
        assert!(matches!(
            parse_body("application/x-www-form-urlencoded; charset=UTF-8", b"A=1"),
            Ok(Body::Form(_))
        ));
        assert!(matches!(
            parse_body("application/json", br#"{"A":"1","N":2}"#),
            Ok(Body::Json { .. })
        ));
        assert!(matches!(
            parse_body("application/json", b"{not json"),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            parse_body("application/json", b"[1,2]"),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            parse_body("text/plain", b"x"),
            Err(Reject::UnsupportedMediaType)
        ));
        assert!(matches!(parse_body("", b"x"), Err(Reject::Malformed(_))));
    }

    #[test]
    fn a_calls_locale_is_the_users_country_on_either_side() {
        let locale = |form: &[u8]| caller_locale(&Body::Form(parse_form(form).expect("a form")));
        assert_eq!(
            locale(b"Direction=inbound&FromCountry=MX&ToCountry=US"),
            Some("es-MX")
        );
        assert_eq!(
            locale(b"Direction=outbound-api&FromCountry=US&ToCountry=FR"),
            Some("fr-FR")
        );
        // An empty or unlisted country gives way to the other parameter.
        assert_eq!(
            locale(b"Direction=inbound&FromCountry=&CallerCountry=BR"),
            Some("pt-BR")
        );
        assert_eq!(locale(b"Direction=inbound&FromCountry=ZZ"), None);
        assert_eq!(locale(b"Direction=inbound"), None);
    }
}
