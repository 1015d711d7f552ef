//! Responses per second for 1 KB texts: `cargo bench -p si-segment --bench segment`.
//! Criterion's `thrpt` line is responses per second (one element = one response).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use si_schemas::records::Channel;
use si_segment::{Response, SegmentConfig, Timing, plan};

const TIMING: Timing = Timing {
    now_ms: 1_700_000_000_000,
    last_inbound_ms: Some(1_699_999_000_000),
};

/// About `bytes` bytes of `pieces` repeated, cut at a char boundary.
fn text_of(pieces: &[&str], bytes: usize) -> String {
    let mut text = String::new();
    for piece in pieces.iter().cycle() {
        if text.len() + piece.len() > bytes {
            break;
        }
        text.push_str(piece);
    }
    text
}

fn texts() -> Vec<(&'static str, String)> {
    let gsm = [
        "Your order #4411 ships tomorrow. ",
        "The courier will call before arriving, between 9:00 and 12:00. ",
        "Questions? Reply here or see https://example.com/help?topic=shipping for details.\n\n",
        "Prices in €: 12,50 {incl. VAT}. ",
    ];
    let smart = [
        "It’s “ready” — pick it up at the front desk… ",
        "Don’t forget your ID. ",
    ];
    let ucs2 = [
        "Ваш заказ отправлен завтра. ",
        "😀 Merci beaucoup, ça marche ! ",
        "Θα σας καλέσουμε πριν φτάσουμε. 👍🏽 ",
        "詳細はこちら。https://example.com/ja ",
    ];
    vec![
        ("gsm7", text_of(&gsm, 1024)),
        ("gsm7-after-lookalikes", text_of(&smart, 1024)),
        ("ucs2-mixed", text_of(&ucs2, 1024)),
    ]
}

fn bench(c: &mut Criterion) {
    let default = SegmentConfig::default();
    let mut one_segment = SegmentConfig::default();
    one_segment.sms.max_segments_per_message = Some(1);
    let configs = [
        ("sms-10seg", Channel::Sms, &default),
        ("sms-1seg", Channel::Sms, &one_segment),
        ("whatsapp", Channel::Whatsapp, &default),
    ];
    let mut group = c.benchmark_group("plan-1KB");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for (name, text) in texts() {
        for (config_name, channel, config) in &configs {
            let response = Response::text(&text, *channel);
            let parts = plan(&response, TIMING, config)
                .map(|p| p.parts.len())
                .unwrap_or(0);
            group.bench_function(
                format!("{name}/{config_name} ({} B, {parts} parts)", text.len()),
                |b| {
                    b.iter(|| plan(black_box(&response), TIMING, config));
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
