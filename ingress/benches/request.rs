//! Cost of ingress's own work on one webhook, the network and Kafka apart:
//! parsing a typical inbound-SMS form (12 parameters), building its envelope,
//! and encoding that as Avro. `throughput` measures the whole webhook.
//!
//! `cargo bench -p si-ingress --bench request`

use std::collections::BTreeMap;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use si_ingress::app::parse_form;
use si_ingress::envelope::{self, Body};
use si_schemas::records::WebhookRoute;

/// As Twilio sends it: spaces as `+`, reserved characters escaped.
const INBOUND_SMS: &[u8] = b"ToCountry=US&SmsMessageSid=SM0123456789abcdef0123456789abcdef\
&NumMedia=0&SmsSid=SM0123456789abcdef0123456789abcdef&SmsStatus=received\
&Body=Hi+Si%2C+can+you+call+me+about+my+appointment+tomorrow+at+10%3F\
&To=%2B14155550199&NumSegments=1&MessageSid=SM0123456789abcdef0123456789abcdef\
&AccountSid=AC0123456789abcdef0123456789abcdef&From=%2B14155550100&ApiVersion=2010-04-01";

fn bench(c: &mut Criterion) {
    c.bench_function("parse form (12 params)", |b| {
        b.iter(|| parse_form(INBOUND_SMS).expect("a valid form"));
    });
    let body = Body::Form(parse_form(INBOUND_SMS).expect("a valid form"));
    let request = || envelope::Request {
        route: WebhookRoute::MessagingInbound,
        body: body.clone(),
        query: Some("locale=en-US"),
        content_type: "application/x-www-form-urlencoded",
        headers: BTreeMap::from([(
            "i-twilio-idempotency-token".to_owned(),
            "0123456789abcdef".to_owned(),
        )]),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        received_at: 1_764_900_000_000,
    };
    c.bench_function("build the envelope", |b| {
        b.iter_batched(request, envelope::envelope, BatchSize::SmallInput);
    });
    let (_, record) = envelope::envelope(request());
    c.bench_function("encode the envelope (Avro datum)", |b| {
        b.iter(|| si_schemas::codec::encode_datum(&record).expect("it fits its schema"));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
