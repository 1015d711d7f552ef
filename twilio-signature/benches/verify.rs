//! Cost of verifying one webhook signature: a typical inbound SMS form (12
//! parameters) and a JSON body, each checked against two tokens (rotation) and
//! two URL variants in the worst case.
//!
//! `cargo bench -p si-twilio-signature --bench verify`

use criterion::{Criterion, criterion_group, criterion_main};
use si_twilio_signature::{self as signature, Algorithm, Payload};

fn inbound_sms() -> Vec<(String, String)> {
    [
        ("ToCountry", "US"),
        ("SmsMessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("NumMedia", "0"),
        ("SmsSid", "SM0123456789abcdef0123456789abcdef"),
        ("SmsStatus", "received"),
        (
            "Body",
            "Hi Si, can you call me about my appointment tomorrow at 10?",
        ),
        ("To", "+14155550199"),
        ("NumSegments", "1"),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+14155550100"),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect()
}

fn bench(c: &mut Criterion) {
    let url = "https://si.example.com/twilio/messaging/inbound";
    let params = inbound_sms();
    let good = signature::compute(
        Algorithm::HmacSha1,
        "primary-token",
        &signature::signing_string(url, &params),
    );
    let tokens = ["primary-token", "secondary-token"];
    c.bench_function("verify form (12 params, valid)", |b| {
        b.iter(|| {
            signature::verify(
                url,
                Payload::Form(&params),
                Some(&good),
                Some(Algorithm::HmacSha1),
                &tokens,
            )
        });
    });
    c.bench_function(
        "verify form (12 params, invalid: every variant tried)",
        |b| {
            b.iter(|| {
                signature::verify(
                    url,
                    Payload::Form(&params),
                    Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                    Some(Algorithm::HmacSha1),
                    &tokens,
                )
            });
        },
    );
    let body = br#"{"EventType":"onMessageAdded","ConversationSid":"CH0123","MessageSid":"IM0123","Body":"Hi Si","Author":"+14155550100"}"#;
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    };
    let json_url = format!("https://si.example.com/twilio/conversations/events?bodySHA256={hash}");
    let json_sig = signature::compute(Algorithm::HmacSha1, "primary-token", &json_url);
    c.bench_function("verify JSON body (bodySHA256)", |b| {
        b.iter(|| {
            signature::verify(
                &json_url,
                Payload::Raw(body),
                Some(&json_sig),
                Some(Algorithm::HmacSha1),
                &tokens,
            )
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
