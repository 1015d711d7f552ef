//! Ingress: form and JSON bodies, the envelope built from a request, and the
//! whole HTTP front (body limit, content types, signatures) without Kafka.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::http::{Request as HttpRequest, StatusCode};
use sha2::Digest as _;
use si_ingress::app::{AppState, ROUTES, Reject, Webhooks, parse_body, parse_form};
use si_ingress::envelope::{Body, Request, envelope, query_param};
use si_ingress::secrets::{SecretStore, WebhookSecrets};
use si_schemas::AvroRecord;
use si_schemas::codec::{decode_datum, encode_datum};
use si_schemas::records::{AvroEnum, TwilioWebhook, WebhookRoute};
use si_twilio_signature::{Algorithm, compute, signing_string};

use super::{Cursor, text};
use crate::engine::Target;

const FORM_WORDS: &[&str] = &[
    "&",
    "=",
    "+",
    "%",
    "%2",
    "%20",
    "%25",
    "%2B",
    "%26",
    "%3D",
    "%E2%82%AC",
    "%F0%9F%98%80",
    "%C3",
    "%FF",
    "%00",
    "%G1",
    "Body=",
    "From=%2B14155550123",
    "To=%2B14155550100",
    "MessageSid=SM0123456789abcdef0123456789abcdef",
    "NumMedia=1",
    "MediaUrl0=",
    "AccountSid=AC00000000000000000000000000000000",
    "ConversationSid=",
    "&&",
    "==",
];

/// `application/x-www-form-urlencoded` bodies, strictly decoded.
pub const FORM: Target = Target {
    name: "ingress_form",
    about: "strict form decoding agrees with the standard decoder when it accepts, refuses only bad escapes and non-UTF-8, round-trips",
    run: form,
    dictionary: FORM_WORDS,
    generate: None,
    max_len: 4096,
};

/// Whether `body` has a `%` not followed by two hex digits.
fn bad_escape(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !body
                .get(i + 1..i + 3)
                .is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Percent-decodes one name or value (with `+` as space), no validation.
fn decode(part: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        let b = part[i];
        if b == b'%'
            && let Some(hex) = part.get(i + 1..i + 3)
            && let Ok(s) = std::str::from_utf8(hex)
            && let Ok(v) = u8::from_str_radix(s, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

fn form(data: &[u8]) {
    match parse_form(data) {
        Ok(params) => {
            let standard: Vec<(String, String)> = form_urlencoded::parse(data)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(params, standard, "strict and standard decoding disagree");
            assert!(
                params.len() <= data.iter().filter(|&&b| b == b'&').count() + 1,
                "more parameters than pairs"
            );
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            assert_eq!(
                parse_form(encoded.as_bytes()).ok().as_ref(),
                Some(&params),
                "re-encoded form does not decode to the same parameters"
            );
        }
        Err(reason) => {
            let not_utf8 = data
                .split(|&b| b == b'&' || b == b'=')
                .any(|part| std::str::from_utf8(&decode(part)).is_err());
            assert!(
                bad_escape(data) || not_utf8,
                "refused a well-formed UTF-8 form: {reason}"
            );
        }
    }
}

const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\u0000",
    "\\ud83d\\ude00",
    "\\ud800",
    "null",
    "true",
    "false",
    "1e999",
    "-0",
    "12345678901234567890",
    "\"EventType\":\"onMessageAdded\"",
    "\"ConversationSid\":\"CH1\"",
    "\"Body\":\"hi\"",
    "{\"a\":{\"b\":[1,2,{}]}}",
];

/// JSON bodies (Conversations webhooks, Event Streams).
pub const JSON: Target = Target {
    name: "ingress_json",
    about: "a JSON body is accepted exactly when it is an object; raw bytes kept; fields are its top-level scalars",
    run: json,
    dictionary: JSON_WORDS,
    generate: None,
    max_len: 4096,
};

fn json(data: &[u8]) {
    let oracle = serde_json::from_slice::<serde_json::Value>(data);
    match parse_body("application/json", data) {
        Ok(Body::Json { raw, fields }) => {
            assert_eq!(raw, data, "raw body changed");
            let Ok(serde_json::Value::Object(object)) = oracle else {
                panic!("accepted a body that is not a JSON object");
            };
            let scalars: BTreeMap<String, String> = object
                .iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k.clone(), s.clone())),
                    serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
                    serde_json::Value::Bool(b) => Some((k.clone(), b.to_string())),
                    _ => None,
                })
                .collect();
            assert_eq!(fields, scalars, "fields are not the top-level scalars");
        }
        Ok(Body::Form(_)) => panic!("JSON parsed as a form"),
        Err(Reject::Malformed(_)) => assert!(
            !matches!(oracle, Ok(serde_json::Value::Object(_))),
            "refused a JSON object"
        ),
        Err(other) => panic!("unexpected refusal {other:?}"),
    }
}

const CONTENT_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "application/json",
    "Application/JSON;charset=utf-8",
    "",
    "text/plain",
    "multipart/form-data; boundary=x",
    " application/json ",
];

const ENVELOPE_WORDS: &[&str] = &[
    "conversation=",
    "locale=pt-BR",
    "&",
    "=",
    "%",
    "ConversationSid=CH7",
    "From=",
    "From=whatsapp%3A%2B14155550123",
    "To=",
    "CallSid=CA1",
    "MessageStatus=delivered",
    "SmsStatus=",
    "EventType=onMessageAdded",
    "Author=",
    "RecordingSid=RE1",
    "TranscriptionStatus=completed",
    "TranscriptionEvent=transcription-content",
    "{\"ConversationSid\":\"CH1\",\"EventType\":\"onMessageAdded\"}",
    "\"MessageSid\":\"IM1\"",
];

/// The envelope written to `twilio.webhooks.v1`.
pub const ENVELOPE: Target = Target {
    name: "ingress_envelope",
    about: "the envelope keeps the request losslessly, has a key, and encodes and decodes with twilio_webhook.avsc",
    run: envelope_target,
    dictionary: ENVELOPE_WORDS,
    generate: None,
    max_len: 4096,
};

fn envelope_target(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let route = WebhookRoute::ALL[cursor.choose(WebhookRoute::ALL.len())];
    let content_type = CONTENT_TYPES[cursor.choose(CONTENT_TYPES.len())];
    let query = text(cursor.field());
    let query = (!query.is_empty()).then_some(query.as_str());
    let body = cursor.rest();
    let parsed = match parse_body(content_type, body) {
        Ok(parsed) => parsed,
        Err(Reject::UnsupportedMediaType) => {
            let media = content_type.split(';').next().unwrap_or_default().trim();
            assert!(
                !media.eq_ignore_ascii_case("application/json")
                    && !media.eq_ignore_ascii_case("application/x-www-form-urlencoded"),
                "refused a supported content type"
            );
            return;
        }
        Err(_) => return,
    };
    let (key, record) = envelope(Request {
        route,
        body: parsed.clone(),
        query,
        content_type,
        headers: BTreeMap::from([("i-twilio-idempotency-token".to_owned(), "tok".to_owned())]),
        traceparent: None,
        received_at: 1_700_000_000_000,
    });
    assert!(!key.is_empty(), "empty key");
    if let Some(sid) = parsed.get("ConversationSid") {
        assert_eq!(key, sid, "not keyed by the ConversationSid");
    }
    assert_eq!(record.route, route);
    assert_eq!(record.query.as_deref(), query);
    assert_eq!(record.conversation_hint, query_param(query, "conversation"));
    match &parsed {
        Body::Form(params) => {
            let kept: Vec<(String, String)> = record
                .params
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect();
            assert_eq!(&kept, params, "form parameters not kept in order");
            assert!(record.body.is_none());
        }
        Body::Json { .. } => {
            assert_eq!(record.body.as_deref(), Some(body), "JSON body not kept raw");
            assert!(record.params.is_empty());
        }
    }
    let datum = encode_datum(&record).expect("the envelope fits its schema");
    let decoded: TwilioWebhook =
        decode_datum(TwilioWebhook::schema(), &datum).expect("the envelope decodes");
    assert_eq!(decoded, record, "the envelope does not survive Avro");
}

/// The body limit of the webhook service under test.
pub const LIMIT: usize = 2048;
const TOKEN: &str = "fuzz-auth-token";
const BASE: &str = "https://ingress.example.com";

const REQUEST_WORDS: &[&str] = &[
    "Body=hi&From=%2B14155550123&To=%2B14155550100",
    "{\"EventType\":\"onMessageAdded\"}",
    "Digits=1",
    "SpeechResult=yes",
    "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
    "key=k1,algorithm=HMAC_SHA256",
    "algorithm=HMAC_SHA1",
    "algorithm=MD5",
    "?conversation=CH1&locale=es",
    "?bodySHA256=",
];

/// The whole front door, Kafka left out.
pub const REQUEST: Target = Target {
    name: "ingress_request",
    about: "over the body limit is 413 (declared or not); nothing is 2xx unless stored; bad signatures are 403; unknown paths 404",
    run: request,
    dictionary: REQUEST_WORDS,
    generate: None,
    max_len: 3 * LIMIT,
};

struct Front {
    runtime: tokio::runtime::Runtime,
    webhooks: Webhooks,
}

fn front() -> Front {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let webhooks = runtime.block_on(async {
        // Kafka is never reached: a request that gets as far as storing
        // its envelope fails there, and must then not be acknowledged.
        let mut state = AppState::offline(BASE, TOKEN);
        state.secrets = Arc::new(SecretStore::fixed(WebhookSecrets {
            auth_tokens: vec![TOKEN.to_owned()],
            shared_secrets: vec!["fuzz-shared-key".to_owned()],
        }));
        let state = Arc::new(state);
        Webhooks::new(state, LIMIT)
    });
    Front { runtime, webhooks }
}

thread_local! {
    static FRONT: RefCell<Option<Front>> = const { RefCell::new(None) };
}

fn request(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let route = cursor.choose(ROUTES.len() + 1);
    let path = ROUTES.get(route).map_or("/twilio/nowhere", |(p, _)| *p);
    let flags = cursor.byte();
    let content_type = CONTENT_TYPES[cursor.choose(CONTENT_TYPES.len())];
    let query = text(cursor.field());
    let header = cursor.field().to_vec();
    let mut body = cursor.rest().to_vec();
    if flags & 0x10 != 0 {
        // Past the limit: repeat the body (or pad it).
        let unit = if body.is_empty() {
            b"A=1&".to_vec()
        } else {
            body.clone()
        };
        while body.len() <= LIMIT {
            body.extend_from_slice(&unit);
        }
    }
    let mut uri = path.to_owned();
    // Signed: what Twilio would send for this body (JSON with bodySHA256).
    let signed = flags & 0x07 == 0;
    let json = content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/json");
    if signed && json {
        uri.push_str("?bodySHA256=");
        uri.push_str(&hex::encode(sha2::Sha256::digest(&body)));
    } else if !query.is_empty()
        && query.bytes().all(|b| b.is_ascii_graphic())
        && !query.contains('#')
    {
        uri.push('?');
        uri.push_str(query.trim_start_matches('?'));
    }
    let signature = if signed {
        let params = match parse_body(content_type, &body) {
            Ok(Body::Form(params)) => params,
            _ => Vec::new(),
        };
        Some(compute(
            Algorithm::HmacSha1,
            TOKEN,
            &signing_string(&format!("{BASE}{uri}"), &params),
        ))
    } else {
        String::from_utf8(header).ok()
    };
    let mut builder = HttpRequest::post(&uri).header("content-type", content_type);
    if let Some(signature) = signature.as_deref() {
        builder = builder.header("x-twilio-signature", signature);
    }
    match flags >> 5 {
        // Declared truthfully.
        0..=3 => builder = builder.header("content-length", body.len()),
        // Declared too small: the limit must count the bytes, not the header.
        4 => builder = builder.header("content-length", body.len().min(LIMIT / 2)),
        // Declared huge.
        5 => builder = builder.header("content-length", u64::MAX),
        // Not declared (chunked).
        _ => {}
    }
    let Ok(http) = builder.body(HttpBody::from(body.clone())) else {
        return; // a header value axum refuses to build: not a request
    };
    let declared = http
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let status = FRONT.with(|front| {
        let mut front = front.borrow_mut();
        let front = front.get_or_insert_with(front_init);
        front.runtime.block_on(front.webhooks.answer(http)).status()
    });
    assert!(
        !status.is_success(),
        "answered {status} without storing the webhook"
    );
    let declared_over = declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > LIMIT));
    let over = body.len() > LIMIT || declared_over;
    if route >= ROUTES.len() && !declared_over {
        // No endpoint: answered before the body is read.
        assert_eq!(status, StatusCode::NOT_FOUND);
        return;
    }
    if over {
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "a body over the limit got {status}"
        );
        return;
    }
    let allowed: &[StatusCode] = if signed {
        // Verified, then storing fails (no Kafka): 503 so Twilio retries.
        &[
            StatusCode::BAD_REQUEST,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::SERVICE_UNAVAILABLE,
        ]
    } else {
        &[
            StatusCode::BAD_REQUEST,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::FORBIDDEN,
        ]
    };
    assert!(
        allowed.contains(&status),
        "status {status} (signed: {signed})"
    );
}

fn front_init() -> Front {
    front()
}
